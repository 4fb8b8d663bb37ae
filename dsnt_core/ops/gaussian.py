"""Separable discrete Gaussian targets on the pixel-centre grid."""

from __future__ import annotations

from typing import Any

from .._arrays import exp_clamped, like_input, outer_product, to_compute
from .._backends import device_of, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import check_floating, check_positive_finite, check_size
from .grids import normalized_linspace


def _logsumexp_last(xp: Namespace, x: Array) -> Array:
    peak = xp.max(x, axis=-1, keepdims=True)
    # Clamped: terms near the subnormal range change nothing next to the peak's exp(0) = 1.
    return peak + xp.log(xp.sum(exp_clamped(xp, x - peak), axis=-1, keepdims=True))


def log_gaussian_factors(
    xp: Namespace, means: Array, size: tuple[int, ...], sigma: float, *, normalize: bool = True
) -> list[Array]:
    """Log of the 1-D Gaussian factors, in (x, y[, z]) order, each of shape (..., n_k).

    The standard deviation along an axis of ``n`` pixels is ``2 * sigma / n`` in normalised
    units. With ``normalize`` each factor is a log-probability vector (it sums to one after
    ``exp``), so ``log G = sum_k log g_k`` exactly, finite even far from the mean.
    """
    ndim = len(size)
    factors = []
    for k in range(ndim):
        n = size[-1 - k]
        grid = normalized_linspace(n, dtype=means.dtype, device=device_of(means), xp=xp)
        std = 2.0 * sigma / n
        offset = grid - means[..., k : k + 1]
        logit = (offset * offset) * (-0.5 / (std * std))
        factors.append(logit - _logsumexp_last(xp, logit) if normalize else logit)
    return factors


def gaussian_heatmaps(means: ArrayT, /, size: Any, sigma: float, *, normalize: bool = True) -> ArrayT:
    """Discrete Gaussians centred on ``means``, one heatmap per point.

    Parameters
    ----------
    means : array of shape (..., ndim)
        Centres in normalised coordinates, (x, y[, z]) order.
    size : sequence of int
        Heatmap size in array-axis order (..., H, W); its length is ``ndim``.
    sigma : float
        Standard deviation in pixels (dsntnn's convention); in normalised units it is
        ``2 * sigma / n`` along an axis of ``n`` pixels.
    normalize : bool
        Scale each heatmap to sum to one (default). Otherwise the peak value is
        ``exp(0) = 1`` at the mean.

    Returns
    -------
    array of shape (..., *size)
        Built separably from 1-D factors: O(H + W) work per heatmap before the final
        outer product.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> g = dsnt_core.gaussian_heatmaps(np.zeros(2), (5, 5), 1.0)
    >>> round(float(g.sum()), 12), float(abs(dsnt_core.dsnt(g)).max()) < 1e-12
    (1.0, True)
    """
    xp = namespace_of(means=means)
    check_floating(xp, means, "means")
    if means.ndim < 1:
        raise ValueError(f"means must have shape (..., ndim), got shape {tuple(means.shape)}")
    size = check_size(size, "size", expected_len=means.shape[-1])
    sigma = check_positive_finite(sigma, "sigma")
    mu = to_compute(xp, means)
    factors = [xp.exp(f) for f in log_gaussian_factors(xp, mu, size, sigma, normalize=normalize)]
    return like_input(xp, outer_product(xp, factors), means)
