"""Small array helpers of the core: dtypes, spatial axes, broadcasting and safe elementwise maps.

Everything here takes the namespace ``xp`` first and uses only the array API standard.
Constants are made on the input's device with ``full`` (never copied from the host).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from ._backends import device_of
from ._typing import Array, ArrayT, DType, Namespace


def is_low_precision(xp: Namespace, dtype: DType) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than 32 bits (float16, bfloat16)."""
    return xp.finfo(dtype).bits < 32


def compute_dtype(xp: Namespace, dtype: DType) -> DType:
    """Dtype in which to accumulate: float32 for 16-bit floats, else ``dtype`` itself."""
    return xp.float32 if is_low_precision(xp, dtype) else dtype


def to_compute(xp: Namespace, x: Array) -> Array:
    """``x`` cast to its accumulation dtype (a no-op for float32 and float64)."""
    return to_dtype(xp, x, compute_dtype(xp, x.dtype))


def to_dtype(xp: Namespace, x: Array, dtype: DType) -> Array:
    """``x`` cast to ``dtype`` when it differs."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def like_input(xp: Namespace, result: Array, like: ArrayT) -> ArrayT:
    """``result`` in ``like``'s dtype: what a public function returns for the input ``like``.

    Typed as ``like``'s own array type, since results stay in the input's library.
    """
    return cast(ArrayT, to_dtype(xp, result, like.dtype))


def scalar_like(xp: Namespace, value: float, like: Array) -> Array:
    """A 0-d array holding ``value`` with ``like``'s dtype, on its device (filled there)."""
    return xp.full((), value, dtype=like.dtype, device=device_of(like))


def spatial_axes(ndim: int) -> tuple[int, ...]:
    """The last ``ndim`` axes, as negative indices."""
    return tuple(range(-ndim, 0))


def spatial_size(x: Array, ndim: int) -> int:
    """Number of elements in one heatmap of ``x``."""
    return math.prod(x.shape[-ndim:])


def keep_spatial(xp: Namespace, x: Array, ndim: int) -> Array:
    """Per-heatmap values (...,) reshaped to broadcast against (..., *spatial)."""
    return xp.reshape(x, (*x.shape, *((1,) * ndim)))


def expand_to_axis(xp: Namespace, vector: Array, axis_from_end: int, ndim: int) -> Array:
    """Reshape ``vector`` of shape (..., n) so that n lies on spatial axis ``axis_from_end``.

    ``axis_from_end`` is 1 for the last axis (x), 2 for the one before (y), 3 for z; the
    other spatial axes get length 1, so the result broadcasts against (..., *spatial).
    """
    trailing = (1,) * (axis_from_end - 1)
    leading = (1,) * (ndim - axis_from_end)
    shape = (*vector.shape[:-1], *leading, vector.shape[-1], *trailing)
    return xp.reshape(vector, shape)


def outer_product(xp: Namespace, factors: Sequence[Array]) -> Array:
    """Combine per-axis factors (x, y[, z] order) into (..., *spatial) by broadcasting products."""
    ndim = len(factors)
    result = expand_to_axis(xp, factors[0], 1, ndim)
    for k in range(1, ndim):
        result = result * expand_to_axis(xp, factors[k], k + 1, ndim)
    return result


def outer_sum(xp: Namespace, factors: Sequence[Array]) -> Array:
    """Combine per-axis factors (x, y[, z] order) into (..., *spatial) by broadcasting sums."""
    ndim = len(factors)
    result = expand_to_axis(xp, factors[0], 1, ndim)
    for k in range(1, ndim):
        result = result + expand_to_axis(xp, factors[k], k + 1, ndim)
    return result


def safe_where_positive(xp: Namespace, x: Array, fallback: float) -> Array:
    """``x`` where ``x > 0``, ``fallback`` elsewhere: the inner half of a double ``where``."""
    return xp.where(x > 0, x, scalar_like(xp, fallback, x))


def nonzero_or(xp: Namespace, x: Array, fallback: float) -> Array:
    """``x`` where ``x != 0``, ``fallback`` where it is 0; NaN stays NaN (a double-``where`` half)."""
    return xp.where(x != 0, x, scalar_like(xp, fallback, x))


def exp_clamped(xp: Namespace, x: Array) -> Array:
    """``exp(max(x, log(smallest normal) + 1))``: never a subnormal result (NaN stays NaN).

    Subnormal results send ``exp`` (and the products that use them) down a path about 30x
    slower on x86 CPUs; for the log-Gaussian factors of the losses (logits down to about
    -1000) that path cost more than the rest of a training step. Entries that small (about
    ``3e-38`` in float32) never matter next to a heatmap's peak.
    """
    cutoff = math.log(xp.finfo(x.dtype).smallest_normal) + 1.0
    return xp.exp(xp.maximum(x, scalar_like(xp, cutoff, x)))


def euclidean_norm(xp: Namespace, diff: Array) -> Array:
    """Euclidean norm over the last axis, with a zero (not NaN) gradient at the origin."""
    squared = xp.sum(diff * diff, axis=-1)
    return xp.where(squared > 0, xp.sqrt(safe_where_positive(xp, squared, 1.0)), 0.0 * squared)
