"""``soft_argmax``: the expected coordinates of ``softmax(logits / T)``, fused, with its rules.

The rules (for ``P = softmax(z / T)``, ``mu_k = <P, X_k>``):

* forward: ``lse`` and ``mu`` from the ``softmax_moments`` pass;
* backward: ``d <ct, mu> / dz = P * (sum_k ct_k X_k - <ct, mu>) / T``, one ``gradient_map``;
* forward mode: ``d mu = (<P * dz, X_k> - mu_k <P, dz>) / T``.

Two ways to stay within the memory budget (the logits' bytes): keep the logits (the backward
recomputes ``P``: `soft_argmax_forward`, `soft_argmax_backward`), or keep ``P`` itself (the
backward needs no ``exp``: `soft_argmax_forward_keeping_heatmap`,
`soft_argmax_backward_from_heatmap`, whose backward also takes a cotangent of ``P``, so that
a framework can differentiate the backward pass again through the kept ``P``).

Torch tensors and JAX arrays go to their adapters, which register these rules with their
autodiff; other libraries get the forward here and `soft_argmax_vjp` for training.
"""

from __future__ import annotations

from typing import cast

from .._arrays import compute_dtype, keep_spatial, like_input, spatial_axes, to_compute, to_dtype
from .._backends import adapter_for, namespace_of
from .._temperature import (
    Temperature,
    check_temperature,
    divide_by_temperature,
    is_array_value,
    per_heatmap,
    per_point,
)
from .._typing import Array, ArrayT, Namespace
from .._validation import UNITS, check_choice, check_coordinates, check_ndim, check_spatial
from ..kernels import Kernels, SoftArgmaxResiduals, array_api_kernels, select_kernels
from ..kernels.array_api import scaled_logits
from .dsnt import marginals
from .grids import normalized_means_to_pixels, pixels_per_normalized_unit


def _for_kernels(xp: Namespace, temperature: Temperature, like: Array, ndim: int) -> Temperature:
    """The temperature as the kernels take it: a number, or an array per heatmap in the compute dtype."""
    return per_heatmap(xp, temperature, ndim, compute_dtype(xp, like.dtype))


def coordinates_in_units(xp: Namespace, mu: Array, spatial: tuple[int, ...], units: str, dtype: object) -> Array:
    """The normalised means ``mu`` (compute dtype) in ``units``, cast to ``dtype`` last (one rounding)."""
    if units == "pixels":
        mu = normalized_means_to_pixels(xp, mu, spatial)
    return to_dtype(xp, mu, dtype)


def cotangent_in_normalized_units(xp: Namespace, cotangent: Array, spatial: tuple[int, ...], units: str) -> Array:
    """A cotangent of coordinates in ``units`` as one of the normalised means (``* n_k / 2`` for pixels)."""
    if units == "pixels":
        return cotangent * pixels_per_normalized_unit(xp, cotangent, spatial)
    return cotangent


def soft_argmax_forward(
    xp: Namespace,
    logits: Array,
    ndim: int,
    temperature: Temperature,
    kernels: Kernels,
    *,
    units: str = "normalized",
) -> tuple[Array, SoftArgmaxResiduals]:
    """Coordinates of ``softmax(logits / T)`` in ``units`` and the logits' dtype, and the residuals of the rules.

    The residuals' ``mu`` stays in normalised units (the compute dtype).
    """
    residuals = kernels.softmax_moments(xp, logits, ndim, _for_kernels(xp, temperature, logits, ndim))
    return coordinates_in_units(xp, residuals.mu, tuple(logits.shape[-ndim:]), units, logits.dtype), residuals


def soft_argmax_backward(
    xp: Namespace,
    logits: Array,
    residuals: SoftArgmaxResiduals,
    cotangent: Array,
    ndim: int,
    temperature: Temperature,
    kernels: Kernels,
    *,
    units: str = "normalized",
) -> Array:
    """Vector-Jacobian product ``d <cotangent, coords> / d logits``, in the logits' dtype."""
    mu = residuals.mu
    ct = cotangent_in_normalized_units(xp, to_dtype(xp, cotangent, mu.dtype), tuple(logits.shape[-ndim:]), units)
    grids = kernels.coordinate_grids(xp, logits, ndim)
    # <G, P> = sum_k ct_k mu_k is folded into the x factor: one full-size pass fewer.
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    per_axis[0] = per_axis[0] - xp.sum(ct * mu, axis=-1)[..., None]
    grad = kernels.gradient_map(
        xp, logits, residuals.lse, per_axis, None, ndim, _for_kernels(xp, temperature, logits, ndim)
    )
    return to_dtype(xp, grad, logits.dtype)


def soft_argmax_forward_keeping_heatmap(
    xp: Namespace,
    logits: Array,
    ndim: int,
    temperature: Temperature,
    kernels: Kernels,
    *,
    units: str = "normalized",
) -> tuple[Array, SoftArgmaxResiduals, Array]:
    """`soft_argmax_forward`, and ``P`` in the logits' dtype to keep for the backward pass."""
    residuals, heatmap = kernels.softmax_heatmap(xp, logits, ndim, _for_kernels(xp, temperature, logits, ndim))
    coords = coordinates_in_units(xp, residuals.mu, tuple(logits.shape[-ndim:]), units, logits.dtype)
    return coords, residuals, heatmap


def soft_argmax_backward_from_heatmap(
    xp: Namespace,
    heatmap: Array,
    mu: Array,
    cotangent: Array,
    heatmap_cotangent: Array | None,
    ndim: int,
    temperature: Temperature,
    kernels: Kernels,
    *,
    units: str = "normalized",
) -> Array:
    """Vector-Jacobian product from the kept ``P``: ``d (<ct, coords> + <ct_P, P>) / d logits``.

    ``P * (sum_k ct_k X_k + ct_P - <ct, mu> - <ct_P, P>) / T``, in the heatmap's dtype.
    """
    ct = cotangent_in_normalized_units(xp, to_dtype(xp, cotangent, mu.dtype), tuple(heatmap.shape[-ndim:]), units)
    grids = kernels.coordinate_grids(xp, heatmap, ndim)
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    const = xp.sum(ct * mu, axis=-1)
    if heatmap_cotangent is not None:
        weighted = to_dtype(xp, heatmap_cotangent, mu.dtype) * to_dtype(xp, heatmap, mu.dtype)
        const = const + xp.sum(weighted, axis=spatial_axes(ndim))
    per_axis[0] = per_axis[0] - const[..., None]
    grad = kernels.heatmap_gradient(
        xp, heatmap, per_axis, heatmap_cotangent, ndim, _for_kernels(xp, temperature, heatmap, ndim)
    )
    return to_dtype(xp, grad, heatmap.dtype)


def expected_coordinates_of(xp: Namespace, heatmap: Array, ndim: int) -> Array:
    """``mu`` of a normalised heatmap, in its compute dtype (differentiable in every framework)."""
    p = to_compute(xp, heatmap)
    grids = array_api_kernels().coordinate_grids(xp, p, ndim)
    return xp.stack([xp.sum(m * g, axis=-1) for m, g in zip(marginals(xp, p, ndim), grids)], axis=-1)


def soft_argmax_jvp(
    xp: Namespace,
    logits: Array,
    residuals: SoftArgmaxResiduals,
    tangent: Array,
    ndim: int,
    temperature: Temperature,
    *,
    units: str = "normalized",
) -> Array:
    """Jacobian-vector product: the change of the coordinates along ``tangent`` (array-API code)."""
    u = scaled_logits(xp, logits, _for_kernels(xp, temperature, logits, ndim))
    p = xp.exp(u - keep_spatial(xp, residuals.lse, ndim))
    weighted = p * to_dtype(xp, tangent, u.dtype)
    total = xp.sum(weighted, axis=spatial_axes(ndim))
    grids = array_api_kernels().coordinate_grids(xp, logits, ndim)
    coords = [xp.sum(m * g, axis=-1) for m, g in zip(marginals(xp, weighted, ndim), grids)]
    result = divide_by_temperature(
        xp.stack(coords, axis=-1) - residuals.mu * total[..., None], per_point(xp, temperature, u.dtype)
    )
    if units == "pixels":
        result = result * pixels_per_normalized_unit(xp, result, tuple(logits.shape[-ndim:]))
    return to_dtype(xp, result, logits.dtype)


def _check(logits: Array, ndim: object, temperature: object, units: object) -> tuple[Namespace, int, Temperature, str]:
    """Validated ``(xp, ndim, temperature, units)``."""
    xp = namespace_of(logits=logits, temperature=cast(Array, temperature) if is_array_value(temperature) else None)
    ndim = check_ndim(ndim)
    check_spatial(xp, logits, "logits", ndim)
    checked = check_temperature(xp, temperature, tuple(logits.shape[: logits.ndim - ndim]))
    return xp, ndim, checked, str(check_choice(units, "units", UNITS))


def kernels_for(logits: Array, temperature: Temperature) -> Kernels:
    """The kernel implementation for a call: the array-API passes take an array temperature, the others numbers."""
    return array_api_kernels() if is_array_value(temperature) else select_kernels(logits)


def soft_argmax(
    logits: ArrayT, /, *, ndim: int = 2, temperature: float | Array = 1.0, units: str = "normalized"
) -> ArrayT:
    """Expected coordinates of ``softmax(logits / temperature)``: ``dsnt(flat_softmax(logits))``.

    Fused: nothing of heatmap size but the logits is kept for the backward pass. Differentiable in PyTorch
    and JAX (through their adapters), with respect to an array ``temperature`` too; for other
    libraries see `soft_argmax_vjp`.

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float or array
        Softmax temperature: a positive number, or a positive floating array broadcastable to
        ``logits.shape[:-ndim]`` (one per heatmap or fewer; learnable in PyTorch and JAX). An
        array is checked for its shape and dtype only.
    units : {"normalized", "pixels"}
        Normalised pixel-centre coordinates, or pixels (pixel ``j`` at ``j``), converted from
        the float32-or-wider moments before the cast to the logits' dtype.

    Returns
    -------
    array of shape (..., ndim)
        Coordinates in (x, y[, z]) order, same library, device and dtype as ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> logits = np.full((1, 3, 3), -1e4)
    >>> logits[0, 2, 0] = 0.0  # bottom-left pixel
    >>> dsnt_core.soft_argmax(logits).round(6).tolist()
    [[-0.666667, 0.666667]]
    >>> dsnt_core.soft_argmax(logits, units="pixels").round(6).tolist()
    [[0.0, 2.0]]
    """
    xp, ndim, temperature, units = _check(logits, ndim, temperature, units)
    kernels = kernels_for(logits, temperature)
    adapter = adapter_for(logits)
    if adapter is not None:
        coords = adapter.soft_argmax(logits, ndim=ndim, temperature=temperature, kernels=kernels, units=units)
        return like_input(xp, coords, logits)
    coords, _ = soft_argmax_forward(xp, logits, ndim, temperature, kernels, units=units)
    return like_input(xp, coords, logits)


def soft_argmax_vjp(
    logits: ArrayT,
    cotangent: Array,
    /,
    *,
    ndim: int = 2,
    temperature: float | Array = 1.0,
    units: str = "normalized",
) -> ArrayT:
    """Gradient of ``sum(cotangent * soft_argmax(logits))`` with respect to ``logits``.

    For libraries without autodiff (NumPy, CuPy, array-api-strict, Dask).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    cotangent : array of shape (..., ndim)
        Gradient of the objective with respect to the coordinates (in ``units``).
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float or array
        Softmax temperature, as in `soft_argmax`.
    units : {"normalized", "pixels"}
        The units of the coordinates, as in `soft_argmax`.

    Returns
    -------
    array of the same shape and dtype as ``logits``
        The gradient; each heatmap's gradient sums to 0.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> grad = dsnt_core.soft_argmax_vjp(np.zeros((1, 4, 4)), np.asarray([[1.0, 0.0]]))
    >>> abs(float(grad.sum())) < 1e-12, float(grad[0, 0, 3]) > 0
    (True, True)
    """
    xp, ndim, temperature, units = _check(logits, ndim, temperature, units)
    namespace_of(logits=logits, cotangent=cotangent)
    check_coordinates(xp, cotangent, "cotangent", logits, ndim, "logits")
    kernels = kernels_for(logits, temperature)
    _, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels)
    grad = soft_argmax_backward(xp, logits, residuals, cotangent, ndim, temperature, kernels, units=units)
    return like_input(xp, grad, logits)
