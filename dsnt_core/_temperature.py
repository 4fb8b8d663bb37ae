"""A softmax temperature that is a Python number or an array (a learnable temperature).

An array temperature holds one value per heatmap, or fewer that broadcast (a scalar, one per
point): its shape broadcasts to the logits' leading shape ``logits.shape[:-ndim]``. The rules
take it in that shape and hand the kernels its per-heatmap form: reshaped to
``T.shape + (1,) * ndim`` in the compute dtype, so that ``logits / T`` broadcasts. Its
gradient comes from the logits' gradient ``g``: ``dL/dT = -sum(g * logits / T)`` per heatmap
(``-sum(g * log P)`` too, since ``g`` sums to 0), summed over the heatmaps that share a value.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from ._arrays import scalar_like, spatial_axes, to_dtype
from ._typing import Array, DType, Namespace
from ._validation import broadcasts_to, check_positive_finite

Temperature = Any
"""``float | Array``: a Python number, or an array in the per-heatmap form (see the module)."""


def is_array_value(value: object) -> bool:
    """Whether an option such as ``temperature`` or ``sigma`` is an array (a JAX tracer included), not a number.

    Python numbers and ``torch.SymFloat``/``SymInt`` (numbers under ``torch.compile``) are
    numbers; nothing else is asked of them (``hasattr`` on a symbolic number breaks a graph).
    """
    if isinstance(value, (int, float)):
        return False
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, (torch.SymFloat, torch.SymInt)):
        return False
    return hasattr(value, "shape") and hasattr(value, "dtype")


def is_unit_temperature(temperature: object) -> bool:
    """Whether dividing by ``temperature`` can be skipped: the Python number 1."""
    return not is_array_value(temperature) and temperature == 1.0


def divide_by_temperature(x: Array, temperature: Temperature) -> Array:
    """``x / temperature``, skipped for the number 1."""
    return x if is_unit_temperature(temperature) else x / temperature


def check_temperature(xp: Namespace, temperature: object, leading_shape: tuple[Any, ...]) -> Temperature:
    """Validate ``temperature``: a positive finite number, or a real floating array broadcastable to ``leading_shape``.

    ``leading_shape`` is the logits' shape without the spatial axes (one temperature per
    heatmap at most). An array is checked for its dtype and shape only (its values may be a
    traced program's); it must be positive, as a number must.
    """
    if not is_array_value(temperature):
        return check_positive_finite(temperature, "temperature")
    array = cast(Array, temperature)
    if not xp.isdtype(array.dtype, "real floating"):
        raise TypeError(
            f"temperature must be a positive Python number or a real floating array, got dtype {array.dtype}"
        )
    if not broadcasts_to(tuple(array.shape), tuple(leading_shape)):
        raise ValueError(
            f"temperature must be a positive Python number or an array broadcastable to {tuple(leading_shape)} "
            f"(the logits' shape without the spatial axes: at most one per heatmap), got shape {tuple(array.shape)}"
        )
    return array


def per_heatmap(xp: Namespace, temperature: Temperature, ndim: int, dtype: DType) -> Temperature:
    """An array temperature reshaped to broadcast against (..., *spatial), in ``dtype``; a number unchanged."""
    if not is_array_value(temperature):
        return temperature
    return to_dtype(xp, xp.reshape(temperature, (*temperature.shape, *((1,) * ndim))), dtype)


def per_point(xp: Namespace, temperature: Temperature, dtype: DType) -> Temperature:
    """An array temperature reshaped to broadcast against per-point values (..., ndim), in ``dtype``."""
    if not is_array_value(temperature):
        return temperature
    return to_dtype(xp, xp.reshape(temperature, (*temperature.shape, 1)), dtype)


def temperature_cotangent(xp: Namespace, grad: Array, scaled_logits: Array, temperature: Array, ndim: int) -> Array:
    """``dL/dT`` in the shape and dtype of ``temperature``, from the logits' gradient ``grad``.

    ``-sum(grad * u)`` over each heatmap, with ``u = logits / T`` (or ``log P``: the gradient
    of a heatmap sums to 0), then summed over the heatmaps that share a temperature. Pixels
    with ``u = -inf`` have ``P = 0`` for every ``T`` and contribute 0.
    """
    grad = to_dtype(xp, grad, scaled_logits.dtype)
    per_heatmap_value = -xp.sum(grad * _finite_or_zero(xp, scaled_logits), axis=spatial_axes(ndim))
    return to_dtype(xp, sum_to_shape(xp, per_heatmap_value, tuple(temperature.shape)), temperature.dtype)


def tangent_with_temperature(
    xp: Namespace, logits: Array, d_logits: Array | None, temperature: Array, d_temperature: Array, ndim: int
) -> Array:
    """The logits' tangent that moves ``logits / T`` as ``(d_logits, d_temperature)`` together do.

    ``d(z / T) = (dz - z dT / T) / T``: the rules' JVP with ``dz - z dT / T`` in place of ``dz``.
    Pixels with ``z = -inf`` get 0 (their ``P`` is 0 for every ``T``).
    """
    ratio = xp.reshape(d_temperature / temperature, (*temperature.shape, *((1,) * ndim)))
    shift = _finite_or_zero(xp, logits) * to_dtype(xp, ratio, logits.dtype)
    return -shift if d_logits is None else d_logits - shift


def _finite_or_zero(xp: Namespace, x: Array) -> Array:
    """``x`` with ``-inf`` replaced by 0 *before* any product, so that no derivative meets ``0 * inf``."""
    return xp.where(x == -xp.inf, scalar_like(xp, 0.0, x), x)


def sum_to_shape(xp: Namespace, x: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``x`` over the axes along which an array of ``shape`` was broadcast to ``x.shape``."""
    extra = x.ndim - len(shape)
    if extra:
        x = xp.sum(x, axis=tuple(range(extra)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, x.shape)) if n == 1 and m != 1)
    return xp.sum(x, axis=axes, keepdims=True) if axes else x
