"""Namespace, dtype and device helpers shared by every module of the core."""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat

Array = Any
Namespace = Any


def _library_name(x: object) -> str:
    """Name of the array library of ``x``, e.g. ``"torch"`` or ``"jax"`` (tracers included)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    return array_api_compat.array_namespace(x).__name__.rsplit(".", 1)[-1]


def is_array(x: object) -> bool:
    """Whether ``x`` is an array of a library that array-api-compat knows."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return True
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def namespace_of(**arrays: Array) -> Namespace:
    """Array namespace shared by the named arrays (``None`` values are ignored).

    Raises
    ------
    TypeError
        If an argument is not an array, or if the arrays come from different libraries.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    for name, value in given.items():
        if not is_array(value):
            raise TypeError(
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or any array-API "
                f"array), got {type(value).__name__}"
            )
    libraries = {name: _library_name(a) for name, a in given.items()}
    if len(set(libraries.values())) > 1:
        listed = ", ".join(f"{name} is {lib}" for name, lib in libraries.items())
        raise TypeError(
            f"all arrays of one call must come from the same library, got {listed}; "
            "convert them first (e.g. with xp.asarray or DLPack)"
        )
    first = next(iter(given.values()))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(first, torch.Tensor):
        # Resolved directly: keeps torch.compile's tracer out of array-api-compat's caches.
        from array_api_compat import torch as torch_namespace

        return torch_namespace
    return array_api_compat.array_namespace(*given.values())


def device_of(x: Array) -> Any:
    """Device of ``x`` as the array API defines it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device
    return array_api_compat.device(x)


def is_low_precision(xp: Namespace, dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than 32 bits (float16, bfloat16)."""
    return xp.finfo(dtype).bits < 32


def compute_dtype(xp: Namespace, dtype: Any) -> Any:
    """Dtype in which to accumulate: float32 for 16-bit floats, else ``dtype`` itself."""
    return xp.float32 if is_low_precision(xp, dtype) else dtype


def to_compute(xp: Namespace, x: Array) -> Array:
    """``x`` cast to its accumulation dtype (a no-op for float32 and float64)."""
    target = compute_dtype(xp, x.dtype)
    return x if x.dtype == target else xp.astype(x, target)


def to_dtype(xp: Namespace, x: Array, dtype: Any) -> Array:
    """``x`` cast to ``dtype`` when it differs."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def spatial_axes(ndim: int) -> tuple[int, ...]:
    """The last ``ndim`` axes, as negative indices."""
    return tuple(range(-ndim, 0))


def spatial_size(x: Array, ndim: int) -> int:
    """Number of elements in one heatmap of ``x``."""
    return math.prod(x.shape[-ndim:])


def expand_to_axis(xp: Namespace, vector: Array, axis_from_end: int, ndim: int) -> Array:
    """Reshape ``vector`` of shape (..., n) so that n lies on spatial axis ``axis_from_end``.

    ``axis_from_end`` is 1 for the last axis (x), 2 for the one before (y), 3 for z; the
    other spatial axes get length 1, so the result broadcasts against (..., *spatial).
    """
    trailing = (1,) * (axis_from_end - 1)
    leading = (1,) * (ndim - axis_from_end)
    shape = (*vector.shape[:-1], *leading, vector.shape[-1], *trailing)
    return xp.reshape(vector, shape)


def safe_where_positive(xp: Namespace, x: Array, fallback: float) -> Array:
    """``x`` where ``x > 0``, ``fallback`` elsewhere: the inner half of a double ``where``."""
    return xp.where(x > 0, x, xp.asarray(fallback, dtype=x.dtype, device=device_of(x)))


def exp_clamped(xp: Namespace, x: Array) -> Array:
    """``exp(max(x, log(smallest normal) + 1))``: never a subnormal result (NaN stays NaN).

    Subnormal results send ``exp`` (and the products that use them) down a path about 30x
    slower on x86 CPUs; for the log-Gaussian factors of the losses (logits down to about
    -1000) that path cost more than the rest of a training step. Entries that small (about
    ``3e-38`` in float32) never matter next to a heatmap's peak.
    """
    cutoff = math.log(xp.finfo(x.dtype).smallest_normal) + 1.0
    return xp.exp(xp.maximum(x, xp.asarray(cutoff, dtype=x.dtype, device=device_of(x))))
