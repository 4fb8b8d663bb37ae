"""Separable discrete Gaussian targets on the pixel-centre grid, with one sigma, or one per point and axis."""

from __future__ import annotations

from typing import Any, cast

from .._arrays import exp_clamped, like_input, outer_product, size_like, to_compute, to_dtype
from .._backends import device_of, is_symbolic_size, is_traced_number, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import check_floating, check_sigma, check_size
from .grids import normalized_linspace


def _logsumexp_last(xp: Namespace, x: Array) -> Array:
    peak = xp.max(x, axis=-1, keepdims=True)
    # Clamped: terms near the subnormal range change nothing next to the peak's exp(0) = 1.
    return peak + xp.log(xp.sum(exp_clamped(xp, x - peak), axis=-1, keepdims=True))


def sigma_argument(sigma: object) -> Array | None:
    """``sigma`` when it is an array to check against the other arrays' library, else ``None``.

    A traced number (a 0-d JAX tracer passed through ``jit``) is a number for the checks.
    """
    if is_traced_number(sigma) or not (hasattr(sigma, "shape") and hasattr(sigma, "dtype")):
        return None
    return cast(Array, sigma)


def sigma_array(xp: Namespace, sigma: float | Array, like: Array) -> float | Array:
    """``sigma`` ready for `log_gaussian_factors`: a Python number as it is, an array in ``like``'s dtype."""
    if isinstance(sigma, (int, float)) or not hasattr(sigma, "shape"):
        return sigma
    return to_dtype(xp, sigma, like.dtype)


def _is_number(sigma: object) -> bool:
    """A Python number, a traced one, or a 0-d array: one standard deviation for every point and axis."""
    return isinstance(sigma, (int, float)) or not hasattr(sigma, "shape") or len(sigma.shape) == 0


def _axis_sigma(xp: Namespace, sigma: Array, k: int) -> Array:
    """The standard deviations (..., 1) of axis ``k`` (x first) from ``sigma`` of shape (..., 1 or ndim)."""
    return sigma if sigma.shape[-1] == 1 else sigma[..., k : k + 1]


def log_gaussian_factors(
    xp: Namespace, means: Array, size: tuple[int, ...], sigma: float | Array, *, normalize: bool = True
) -> list[Array]:
    """Log of the 1-D Gaussian factors, in (x, y[, z]) order, each of shape (..., n_k).

    The standard deviation along an axis of ``n`` pixels is ``2 * sigma / n`` in normalised
    units. ``sigma`` is a Python number (or a 0-d array), or an array (..., 1 or ndim) from
    `sigma_array`: one standard deviation per point and axis, x first. With ``normalize`` each
    factor is a log-probability vector (it sums to one after ``exp``), so
    ``log G = sum_k log g_k`` exactly, finite even far from the mean.
    """
    ndim = len(size)
    factors = []
    for k in range(ndim):
        n = size[-1 - k]
        grid = normalized_linspace(n, dtype=means.dtype, device=device_of(means), xp=xp)
        offset = grid - means[..., k : k + 1]
        if _is_number(sigma):
            std = 2.0 * sigma / n
            logit = (offset * offset) * (-0.5 / (std * std))
        else:
            axis_sigma = _axis_sigma(xp, cast(Array, sigma), k)
            if is_symbolic_size(n):  # 2 sigma / n with n in the traced program
                std_k = axis_sigma / (size_like(xp, n, axis_sigma) / 2.0)
            else:
                std_k = axis_sigma * (2.0 / n)
            logit = (offset * offset) * (-0.5) / (std_k * std_k)
        factors.append(logit - _logsumexp_last(xp, logit) if normalize else logit)
    return factors


def gaussian_heatmaps(means: ArrayT, /, size: Any, sigma: float | Array, *, normalize: bool = True) -> ArrayT:
    """Discrete Gaussians centred on ``means``, one heatmap per point.

    Parameters
    ----------
    means : array of shape (..., ndim)
        Centres in normalised coordinates, (x, y[, z]) order.
    size : sequence of int
        Heatmap size in array-axis order (..., H, W); its length is ``ndim`` (any number from 1).
    sigma : float or array
        Standard deviation in pixels (dsntnn's convention); in normalised units it is
        ``2 * sigma / n`` along an axis of ``n`` pixels. A positive number, or an array
        broadcastable to ``means.shape`` (..., ndim): one per point and axis in (x, y[, z])
        order, as kornia's ``render_gaussian2d`` takes ``std``; differentiable in PyTorch and
        JAX. Only its shape and dtype are checked: non-positive values give NaN or inf.
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
    >>> wide_in_x = dsnt_core.gaussian_heatmaps(np.zeros(2), (33, 33), np.asarray([2.0, 1.0]))
    >>> dsnt_core.heatmap_variance(wide_in_x, units="pixels").round(6).tolist()
    [4.0, 1.0]
    """
    xp = namespace_of(means=means, sigma=sigma_argument(sigma))
    check_floating(xp, means, "means")
    if means.ndim < 1:
        raise ValueError(f"means must have shape (..., ndim), got shape {tuple(means.shape)}")
    size = check_size(size, "size", expected_len=means.shape[-1], max_len=None)
    checked = check_sigma(xp, sigma, tuple(means.shape), "means")
    mu = to_compute(xp, means)
    factors = [xp.exp(f) for f in log_gaussian_factors(xp, mu, size, sigma_array(xp, checked, mu), normalize=normalize)]
    return like_input(xp, outer_product(xp, factors), means)
