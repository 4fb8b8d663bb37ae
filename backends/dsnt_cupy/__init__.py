"""CuPy support: CuPy arrays run through the array-API core on their GPU, with no host round trip.

CuPy has no autodiff, so training uses the explicit gradient entry points
``dsnt_core.soft_argmax_vjp`` and ``dsnt_core.dsnt_loss_value_and_grad``. Arrays move
between CuPy, PyTorch and JAX without copies through DLPack::

    logits_torch = torch.from_dlpack(logits_cupy)
    logits_cupy = cupy.from_dlpack(logits_torch)
    logits_jax = jax.dlpack.from_dlpack(logits_cupy)
"""

from __future__ import annotations

from dsnt_core import dsnt_loss_value_and_grad, soft_argmax, soft_argmax_vjp


def gpu_available() -> bool:
    """Whether CuPy is installed and sees at least one usable GPU.

    Returns
    -------
    bool
        ``True`` when CuPy arrays can be made here.

    Examples
    --------
    >>> import dsnt_cupy
    >>> isinstance(dsnt_cupy.gpu_available(), bool)
    True
    """
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDARuntimeError / driver errors on GPU-less machines
        return False


__all__ = ["dsnt_loss_value_and_grad", "gpu_available", "soft_argmax", "soft_argmax_vjp"]
