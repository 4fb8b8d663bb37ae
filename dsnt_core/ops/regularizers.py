"""Heatmap regularisers per point, composed from the building blocks, in dsntnn's units.

The definitions and units match dsntnn, so that it is a direct oracle:

* ``variance_regularizer`` compares the heatmap variance in *pixel* units with
  ``sigma ** 2`` and sums the squared errors over the axes. The paper's form uses
  normalised units, ``Var_norm = Var_px * (2 / n) ** 2``; the two differ by the constant
  factor ``(n / 2) ** 4`` per axis.
* ``kl_regularizer`` is ``KL(heatmap || Gaussian)`` and ``js_regularizer`` the
  Jensen-Shannon divergence, both in nats, against a Gaussian of ``sigma`` pixels centred
  on the target. ``0 * log 0`` is taken as 0 exactly, with no epsilon, in every dtype.

``sigma`` is a Python number, or an array broadcastable to (..., ndim): one standard deviation
per point and axis (x first), differentiable in PyTorch and JAX. Any number of spatial axes.
"""

from __future__ import annotations

from .._arrays import like_input, outer_sum, safe_where_positive, scalar_like, size_like, spatial_axes, to_compute
from .._backends import is_symbolic_size, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import (
    check_coordinates,
    check_floating,
    check_ndim,
    check_sigma,
    check_spatial,
)
from .dsnt import coordinate_grids, marginals, moments
from .gaussian import log_gaussian_factors, sigma_argument, sigma_array


def pixel_variance_scale(xp: Namespace, spatial: tuple[int, ...], like: Array) -> Array:
    """``(n_k / 2) ** 2`` per axis in (x, y[, z]) order: normalised variances to pixel units."""
    return xp.stack([_half_squared(xp, n, like) for n in reversed(spatial)])


def _half_squared(xp: Namespace, n: int, like: Array) -> Array:
    """``(n / 2) ** 2`` as a 0-d array like ``like``; ``n`` may be a symbolic size."""
    if is_symbolic_size(n):
        half = size_like(xp, n, like) / 2.0
        return half * half
    return scalar_like(xp, (n / 2.0) ** 2, like)


def _regularizer_inputs(heatmaps: Array, target: Array, sigma: float | Array) -> tuple[Namespace, int, float | Array]:
    xp = namespace_of(heatmaps=heatmaps, target=target, sigma=sigma_argument(sigma))
    check_floating(xp, target, "target")
    if target.ndim < 1:
        raise ValueError(f"target must have shape (..., ndim), got shape {tuple(target.shape)}")
    ndim = check_ndim(target.shape[-1], max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    check_coordinates(xp, target, "target", heatmaps, ndim, "heatmaps")
    return xp, ndim, check_sigma(xp, sigma, tuple(target.shape), "target")


def _x_log_x_over_y(xp: Namespace, x: Array, log_x: Array, log_y: Array) -> Array:
    """``x * (log_x - log_y)`` with ``0 * log 0 = 0`` and a finite gradient there."""
    safe_log_x = xp.where(x > 0, log_x, xp.zeros_like(log_x))
    safe_log_y = xp.where(x > 0, log_y, xp.zeros_like(log_y))
    return x * (safe_log_x - safe_log_y)


def _safe_log(xp: Namespace, x: Array) -> Array:
    return xp.where(x > 0, xp.log(safe_where_positive(xp, x, 1.0)), xp.zeros_like(x))


def _log_gaussian(xp: Namespace, target: Array, size: tuple[int, ...], sigma: float | Array) -> Array:
    return outer_sum(xp, log_gaussian_factors(xp, target, size, sigma_array(xp, sigma, target)))


def kl_regularizer(heatmaps: ArrayT, target: Array, /, sigma: float | Array) -> ArrayT:
    """``KL(heatmap || N(target, sigma^2))`` per point, in nats (dsntnn's ``kl_reg_losses``).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps; ``ndim`` is taken from ``target.shape[-1]``.
    target : array of shape (..., ndim)
        Target coordinates (normalised), the centres of the Gaussians.
    sigma : float or array
        Standard deviation of the target Gaussian in pixels: a positive number, or an array
        broadcastable to ``target.shape`` (one per point and axis, x first).

    Returns
    -------
    array of shape (...)
        Non-negative, 0 when the heatmap equals the Gaussian. Uses the exact log of the
        separable Gaussian, so it stays finite far from the target.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> mu = np.zeros((1, 2))
    >>> g = dsnt_core.gaussian_heatmaps(mu, (8, 8), 1.0)
    >>> float(dsnt_core.kl_regularizer(g, mu, 1.0)[0]) < 1e-12
    True
    """
    xp, ndim, sigma = _regularizer_inputs(heatmaps, target, sigma)
    p = to_compute(xp, heatmaps)
    log_g = _log_gaussian(xp, to_compute(xp, target), tuple(p.shape[-ndim:]), sigma)
    kl = xp.sum(_x_log_x_over_y(xp, p, _safe_log(xp, p), log_g), axis=spatial_axes(ndim))
    return like_input(xp, kl, heatmaps)


def js_regularizer(heatmaps: ArrayT, target: Array, /, sigma: float | Array) -> ArrayT:
    """Jensen-Shannon divergence between heatmaps and Gaussians, per point, in nats.

    ``JS(P, G) = KL(P || M) / 2 + KL(G || M) / 2`` with ``M = (P + G) / 2``
    (dsntnn's ``js_reg_losses``); it lies in ``[0, ln 2]``.

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps; ``ndim`` is taken from ``target.shape[-1]``.
    target : array of shape (..., ndim)
        Target coordinates (normalised), the centres of the Gaussians.
    sigma : float or array
        Standard deviation of the target Gaussian in pixels: a positive number, or an array
        broadcastable to ``target.shape`` (one per point and axis, x first).

    Returns
    -------
    array of shape (...)
        In ``[0, ln 2]``; 0 when the heatmap equals the Gaussian.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> mu = np.zeros((1, 2))
    >>> far = dsnt_core.gaussian_heatmaps(np.full((1, 2), 0.9), (8, 8), 0.5)
    >>> 0.0 < float(dsnt_core.js_regularizer(far, mu, 0.5)[0]) <= float(np.log(2))
    True
    """
    xp, ndim, sigma = _regularizer_inputs(heatmaps, target, sigma)
    p = to_compute(xp, heatmaps)
    log_g = _log_gaussian(xp, to_compute(xp, target), tuple(p.shape[-ndim:]), sigma)
    g = xp.exp(log_g)
    m = 0.5 * (p + g)
    log_m = _safe_log(xp, m)
    terms = _x_log_x_over_y(xp, p, _safe_log(xp, p), log_m) + _x_log_x_over_y(xp, g, log_g, log_m)
    js = 0.5 * xp.sum(terms, axis=spatial_axes(ndim))
    return like_input(xp, js, heatmaps)


def variance_regularizer(heatmaps: ArrayT, /, sigma: float | Array, *, ndim: int = 2) -> ArrayT:
    """Squared error between heatmap variances and ``sigma ** 2``, in pixel units, per point.

    ``sum_k (Var_k * (n_k / 2) ** 2 - sigma_k ** 2) ** 2`` (dsntnn's ``variance_reg_losses``).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps.
    sigma : float or array
        Target standard deviation in pixels: a positive number, or an array broadcastable to
        (..., ndim) with ``...`` the heatmaps' leading axes (one per point and axis, x first).
    ndim : int
        Number of spatial axes, any number from 1.

    Returns
    -------
    array of shape (...)
        Non-negative; 0 when the variance along every axis is ``sigma ** 2`` pixels squared.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> g = dsnt_core.gaussian_heatmaps(np.zeros(2), (64, 64), 2.0)
    >>> float(dsnt_core.variance_regularizer(g, 2.0)) < 1e-12
    True
    """
    xp = namespace_of(heatmaps=heatmaps, sigma=sigma_argument(sigma))
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    points = (*heatmaps.shape[: heatmaps.ndim - ndim], ndim)
    checked = check_sigma(xp, sigma, points, "the coordinates (..., ndim) of the heatmaps")
    p = to_compute(xp, heatmaps)
    _, variances = moments(xp, marginals(xp, p, ndim), coordinate_grids(xp, p, ndim))
    target_sigma = sigma_array(xp, checked, p)
    error = variances * pixel_variance_scale(xp, tuple(p.shape[-ndim:]), p) - target_sigma * target_sigma
    return like_input(xp, xp.sum(error * error, axis=-1), heatmaps)
