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

from .._arrays import keep_spatial, like_input, spatial_axes, to_compute, to_dtype
from .._backends import adapter_for, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import check_coordinates, check_ndim, check_positive_finite, check_spatial
from ..kernels import Kernels, SoftArgmaxResiduals, array_api_kernels, select_kernels
from ..kernels.array_api import scaled_logits
from .dsnt import marginals


def soft_argmax_forward(
    xp: Namespace, logits: Array, ndim: int, temperature: float, kernels: Kernels
) -> tuple[Array, SoftArgmaxResiduals]:
    """Coordinates of ``softmax(logits / T)`` in the logits' dtype, and the residuals of the rules."""
    residuals = kernels.softmax_moments(xp, logits, ndim, temperature)
    return to_dtype(xp, residuals.mu, logits.dtype), residuals


def soft_argmax_backward(
    xp: Namespace,
    logits: Array,
    residuals: SoftArgmaxResiduals,
    cotangent: Array,
    ndim: int,
    temperature: float,
    kernels: Kernels,
) -> Array:
    """Vector-Jacobian product ``d <cotangent, coords> / d logits``, in the logits' dtype."""
    mu = residuals.mu
    ct = to_dtype(xp, cotangent, mu.dtype)
    grids = kernels.coordinate_grids(xp, logits, ndim)
    # <G, P> = sum_k ct_k mu_k is folded into the x factor: one full-size pass fewer.
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    per_axis[0] = per_axis[0] - xp.sum(ct * mu, axis=-1)[..., None]
    grad = kernels.gradient_map(xp, logits, residuals.lse, per_axis, None, ndim, temperature)
    return to_dtype(xp, grad, logits.dtype)


def soft_argmax_forward_keeping_heatmap(
    xp: Namespace, logits: Array, ndim: int, temperature: float, kernels: Kernels
) -> tuple[Array, SoftArgmaxResiduals, Array]:
    """`soft_argmax_forward`, and ``P`` in the logits' dtype to keep for the backward pass."""
    residuals, heatmap = kernels.softmax_heatmap(xp, logits, ndim, temperature)
    return to_dtype(xp, residuals.mu, logits.dtype), residuals, heatmap


def soft_argmax_backward_from_heatmap(
    xp: Namespace,
    heatmap: Array,
    mu: Array,
    cotangent: Array,
    heatmap_cotangent: Array | None,
    ndim: int,
    temperature: float,
    kernels: Kernels,
) -> Array:
    """Vector-Jacobian product from the kept ``P``: ``d (<ct, coords> + <ct_P, P>) / d logits``.

    ``P * (sum_k ct_k X_k + ct_P - <ct, mu> - <ct_P, P>) / T``, in the heatmap's dtype.
    """
    ct = to_dtype(xp, cotangent, mu.dtype)
    grids = kernels.coordinate_grids(xp, heatmap, ndim)
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    const = xp.sum(ct * mu, axis=-1)
    if heatmap_cotangent is not None:
        weighted = to_dtype(xp, heatmap_cotangent, mu.dtype) * to_dtype(xp, heatmap, mu.dtype)
        const = const + xp.sum(weighted, axis=spatial_axes(ndim))
    per_axis[0] = per_axis[0] - const[..., None]
    grad = kernels.heatmap_gradient(xp, heatmap, per_axis, heatmap_cotangent, ndim, temperature)
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
    temperature: float,
) -> Array:
    """Jacobian-vector product: the change of the coordinates along ``tangent`` (array-API code)."""
    u = scaled_logits(xp, logits, temperature)
    p = xp.exp(u - keep_spatial(xp, residuals.lse, ndim))
    weighted = p * to_dtype(xp, tangent, u.dtype)
    total = xp.sum(weighted, axis=spatial_axes(ndim))
    grids = array_api_kernels().coordinate_grids(xp, logits, ndim)
    coords = [xp.sum(m * g, axis=-1) for m, g in zip(marginals(xp, weighted, ndim), grids)]
    result = xp.stack(coords, axis=-1) - residuals.mu * total[..., None]
    if temperature != 1.0:
        result = result / temperature
    return to_dtype(xp, result, logits.dtype)


def _check(logits: Array, ndim: int, temperature: float) -> tuple[Namespace, int, float]:
    xp = namespace_of(logits=logits)
    ndim = check_ndim(ndim)
    check_spatial(xp, logits, "logits", ndim)
    return xp, ndim, check_positive_finite(temperature, "temperature")


def soft_argmax(logits: ArrayT, /, *, ndim: int = 2, temperature: float = 1.0) -> ArrayT:
    """Expected coordinates of ``softmax(logits / temperature)``: ``dsnt(flat_softmax(logits))``.

    Fused: nothing of heatmap size but the logits is kept for the backward pass. Differentiable in PyTorch
    and JAX (through their adapters); for other libraries see `soft_argmax_vjp`.

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.

    Returns
    -------
    array of shape (..., ndim)
        Normalised pixel-centre coordinates in (x, y[, z]) order, same library, device and
        dtype as ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> logits = np.full((1, 3, 3), -1e4)
    >>> logits[0, 2, 0] = 0.0  # bottom-left pixel
    >>> dsnt_core.soft_argmax(logits).round(6).tolist()
    [[-0.666667, 0.666667]]
    """
    xp, ndim, temperature = _check(logits, ndim, temperature)
    kernels = select_kernels(logits)
    adapter = adapter_for(logits)
    if adapter is not None:
        return like_input(xp, adapter.soft_argmax(logits, ndim=ndim, temperature=temperature, kernels=kernels), logits)
    coords, _ = soft_argmax_forward(xp, logits, ndim, temperature, kernels)
    return like_input(xp, coords, logits)


def soft_argmax_vjp(logits: ArrayT, cotangent: Array, /, *, ndim: int = 2, temperature: float = 1.0) -> ArrayT:
    """Gradient of ``sum(cotangent * soft_argmax(logits))`` with respect to ``logits``.

    For libraries without autodiff (NumPy, CuPy, array-api-strict, Dask).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    cotangent : array of shape (..., ndim)
        Gradient of the objective with respect to the coordinates.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.

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
    xp, ndim, temperature = _check(logits, ndim, temperature)
    namespace_of(logits=logits, cotangent=cotangent)
    check_coordinates(xp, cotangent, "cotangent", logits, ndim, "logits")
    kernels = select_kernels(logits)
    _, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels)
    return like_input(xp, soft_argmax_backward(xp, logits, residuals, cotangent, ndim, temperature, kernels), logits)
