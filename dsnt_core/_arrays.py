"""Small array helpers of the core: dtypes, spatial axes, broadcasting and safe elementwise maps.

Everything here takes the namespace ``xp`` first and uses only the array API standard.
Constants are made on the input's device with ``full`` (never copied from the host).
Sizes may be symbolic (``_backends.is_symbolic_size``): the helpers that take sizes build
arrays from them without reading their values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from ._backends import device_of, is_symbolic_size, is_torch_tensor, traced_by_torch_compile, traced_size_arange
from ._typing import Array, ArrayT, Device, DType, Namespace


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


def size_array(xp: Namespace, n: int, *, dtype: DType, device: Device) -> Array:
    """A 0-d array holding the size ``n`` (concrete or symbolic) in ``dtype`` on ``device``.

    A symbolic size stays symbolic: a SymInt and a JAX dimension expression fill the array
    inside the traced program, and a size tensor of ``torch.jit.trace`` is cast, so that the
    trace follows the input's shape instead of recording the value seen while tracing.
    """
    if is_torch_tensor(n):  # a 0-d size tensor under torch.jit.trace
        return cast(Array, cast(Any, n).to(dtype=dtype, device=device))
    return xp.full((), n if is_symbolic_size(n) else float(n), dtype=dtype, device=device)


def size_arange(xp: Namespace, n: int, *, dtype: DType, device: Device) -> Array:
    """``arange(n)`` in ``dtype`` on ``device``, for a concrete or symbolic size ``n``."""
    if is_torch_tensor(n):  # a 0-d size tensor under torch.jit.trace
        return traced_size_arange(cast(Array, n), dtype=dtype, device=device)
    return xp.arange(n, dtype=dtype, device=device)


def size_like(xp: Namespace, n: int, like: Array) -> Array:
    """`size_array` with ``like``'s dtype and device."""
    return size_array(xp, n, dtype=like.dtype, device=device_of(like))


def log_size(xp: Namespace, n: int, like: Array) -> float | Array:
    """``log(n)`` for a size ``n``: a Python float when ``n`` is concrete, else a 0-d array like ``like``.

    ``math.log`` of a symbolic size would read its value: a guard on it under
    ``torch.compile``/``torch.export``, a constant under ``torch.jit.trace``, a ``TypeError``
    under ``jax.export``. Inside ``torch.compile`` (and strict ``torch.export``) a SymInt
    passes for an ``int``, so there the log is always taken in the traced program.
    """
    if is_symbolic_size(n) or traced_by_torch_compile():
        return cast(Array, xp.log(size_like(xp, n, like)))
    return math.log(n)


def is_concrete_shape(shape: Sequence[object]) -> bool:
    """Whether no entry of ``shape`` is symbolic."""
    return not any(is_symbolic_size(n) for n in shape)


def mean_weights(xp: Namespace, shape: tuple[int, ...], like: Array) -> Array:
    """An array of ``shape`` filled with ``1 / count`` (``count`` = its number of entries, at least 1).

    With a symbolic ``shape`` the count is divided inside the traced program (an empty
    array needs no guard: it has no entries to fill).
    """
    count = math.prod(shape)
    if is_concrete_shape(shape):
        return xp.full(shape, 1.0 / max(count, 1), dtype=like.dtype, device=device_of(like))
    return xp.ones(shape, dtype=like.dtype, device=device_of(like)) / size_like(xp, count, like)


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
