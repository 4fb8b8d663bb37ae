"""PyTorch adapter: the core's gradient rules as ``torch.autograd.Function``s, kernels and modules.

``dsnt_core.soft_argmax`` and ``dsnt_core.dsnt_loss`` route torch tensors here on their own
(the ``dsnt_core.adapters`` entry point names :mod:`dsnt_torch.autograd`); import this package
directly for the ``torch.nn.Module`` conveniences. Its kernel implementations
(``"torch-native"``, ``"torch-compile"``) are chosen with ``dsnt_core.use_kernels``.
"""

from __future__ import annotations

from dsnt_core.kernels import set_default_kernels

from . import native
from .modules import DSNTHead, DSNTLoss


def use_native_kernels(enabled: bool = True) -> None:
    """Choose the native CPU kernels for the whole process, or go back to the automatic choice.

    The same as ``dsnt_core.kernels.set_default_kernels("torch-native")``, or ``"auto"`` when
    ``enabled`` is false (`dsnt_core.use_kernels` chooses for one thread or one block).

    Parameters
    ----------
    enabled : bool
        Choose them, or the automatic choice.

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_native_kernels(False)  # the default: the automatic choice
    """
    set_default_kernels("torch-native" if enabled else "auto")


def use_compiled_kernels(enabled: bool = True) -> None:
    """Choose the ``torch.compile`` kernels for the whole process, or go back to the automatic choice.

    The same as ``dsnt_core.kernels.set_default_kernels("torch-compile")``, or ``"auto"`` when
    ``enabled`` is false (`dsnt_core.use_kernels` chooses for one thread or one block).

    Parameters
    ----------
    enabled : bool
        Choose them, or the automatic choice.

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_compiled_kernels(False)  # the default: the automatic choice
    """
    set_default_kernels("torch-compile" if enabled else "auto")


def build_native_kernels() -> None:
    """Build (or load from PyTorch's cache) the native CPU kernels now.

    Raises
    ------
    RuntimeError
        If they cannot be built here, with the compiler's reason.

    Examples
    --------
    >>> import dsnt_torch
    >>> try:
    ...     dsnt_torch.build_native_kernels()  # about 30 s the first time on a machine
    ... except RuntimeError:  # no C++ compiler here: the automatic choice stays
    ...     pass
    ... else:
    ...     dsnt_torch.use_native_kernels()
    >>> dsnt_torch.use_native_kernels(False)  # back to the automatic choice
    """
    native.extension()


__all__ = ["DSNTHead", "DSNTLoss", "build_native_kernels", "use_compiled_kernels", "use_native_kernels"]
