"""PyTorch adapter: the core's gradient rules as ``torch.autograd.Function``s, kernels and modules.

``dsnt_core.soft_argmax`` and ``dsnt_core.dsnt_loss`` route torch tensors here on their own
(the ``dsnt_core.adapters`` entry point names :mod:`dsnt_torch.autograd`); import this package
directly for the ``torch.nn.Module`` conveniences. Its kernel implementations
(``"torch-native"``, ``"torch-compile"``) are chosen with ``dsnt_core.use_kernels``.
"""

from __future__ import annotations

import dsnt_core

from . import native
from .modules import DSNTHead, DSNTLoss


def use_native_kernels(enabled: bool = True) -> None:
    """Alias of ``dsnt_core.use_kernels("torch-native")`` (``"auto"`` when ``enabled`` is false).

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_native_kernels(False)  # the default: the automatic choice
    """
    dsnt_core.use_kernels("torch-native" if enabled else "auto")


def use_compiled_kernels(enabled: bool = True) -> None:
    """Alias of ``dsnt_core.use_kernels("torch-compile")`` (``"auto"`` when ``enabled`` is false).

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_compiled_kernels(False)  # the default: the automatic choice
    """
    dsnt_core.use_kernels("torch-compile" if enabled else "auto")


def build_native_kernels() -> None:
    """Build (or load from PyTorch's cache) the native CPU kernels now.

    Raises
    ------
    RuntimeError
        If they cannot be built here, with the compiler's reason.
    """
    native.extension()


__all__ = ["DSNTHead", "DSNTLoss", "build_native_kernels", "use_compiled_kernels", "use_native_kernels"]
