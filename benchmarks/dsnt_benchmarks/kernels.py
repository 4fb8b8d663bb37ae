"""The kernel switch around a timed call, and whether a kernel implementation can run here.

Both go through the library's own switch, ``dsnt_core.use_kernels`` and
``dsnt_core.available_kernels``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import dsnt_core

ARRAY_API = "array-api"
TORCH_NATIVE = "torch-native"
TORCH_COMPILE = "torch-compile"


def use_kernels(name: str | None) -> AbstractContextManager[object]:
    """A context that runs dsnt-core on the kernel implementation ``name`` and restores the previous one.

    Parameters
    ----------
    name
        A name ``dsnt_core.use_kernels`` takes; ``None`` leaves the choice alone.

    Examples
    --------
    >>> with use_kernels(None):
    ...     pass
    """
    if name is None:
        return nullcontext()
    return dsnt_core.use_kernels(name)


def kernels_available(name: str) -> bool:
    """Whether the implementation ``name`` can run here (the native kernels are built or loaded on the first ask)."""
    return any(record.name == name and record.available for record in dsnt_core.available_kernels())
