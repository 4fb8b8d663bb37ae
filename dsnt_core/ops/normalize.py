"""Turning logits into heatmaps: non-negative arrays that sum to one over the spatial axes."""

from __future__ import annotations

import math
from typing import cast

from .._arrays import like_input, nonzero_or, safe_where_positive, spatial_axes, spatial_size, to_compute
from .._backends import namespace_of
from .._temperature import check_temperature, divide_by_temperature, is_array_value, per_heatmap
from .._typing import Array, ArrayT, Namespace
from .._validation import (
    NORMALIZATION_METHODS,
    check_choice,
    check_ndim,
    check_positive_finite,
    check_spatial,
)


def _normalize_weights(xp: Namespace, weights: Array, ndim: int) -> Array:
    """Divide non-negative weights by their sum; a heatmap with no mass becomes uniform.

    The weights are first scaled by their maximum, so huge values cannot overflow the sum.
    A NaN or infinite weight makes its heatmap NaN.
    """
    axes = spatial_axes(ndim)
    peak = xp.max(weights, axis=axes, keepdims=True)
    scaled = weights / safe_where_positive(xp, peak, 1.0)
    total = xp.sum(scaled, axis=axes, keepdims=True)
    uniform = 1.0 / spatial_size(weights, ndim)
    return xp.where(total == 0, uniform, scaled / nonzero_or(xp, total, 1.0))


def shifted_exp(xp: Namespace, log_weights: Array, ndim: int) -> tuple[Array, Array, Array]:
    """``(peak, shifted, exp(shifted))`` with ``shifted = log_weights - peak``.

    ``peak`` is the maximum over the spatial axes (kept dims), replaced by 0 for a heatmap
    that is entirely ``-inf`` so that no ``-inf - -inf`` NaN appears. A heatmap with a NaN
    keeps a NaN peak (and a ``+inf`` one gives ``inf - inf``), so it comes out NaN.
    """
    peak = xp.max(log_weights, axis=spatial_axes(ndim), keepdims=True)
    peak = xp.where(peak == -math.inf, xp.zeros_like(peak), peak)
    shifted = log_weights - peak
    return peak, shifted, xp.exp(shifted)


def _softmax(xp: Namespace, log_weights: Array, ndim: int) -> Array:
    _, _, exp_shifted = shifted_exp(xp, log_weights, ndim)
    total = xp.sum(exp_shifted, axis=spatial_axes(ndim), keepdims=True)
    uniform = 1.0 / spatial_size(log_weights, ndim)
    return xp.where(total == 0, uniform, exp_shifted / nonzero_or(xp, total, 1.0))


def _log_sigmoid(xp: Namespace, x: Array) -> Array:
    """``log(sigmoid(x))`` without overflow: ``min(x, 0) - log1p(exp(-|x|))``."""
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def normalize_heatmaps(
    logits: ArrayT, /, *, ndim: int = 2, method: str = "softmax", temperature: float | Array = 1.0
) -> ArrayT:
    """Normalise logits into heatmaps that are non-negative and sum to one per heatmap.

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised scores; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes, any number from 1.
    method : {"softmax", "abs", "relu", "sigmoid"}
        The DSNT paper's four choices. ``"softmax"`` exponentiates (stable for huge or
        ``-inf`` logits); the others apply ``abs``, ``max(x, 0)`` or the logistic sigmoid
        and divide by the sum.
    temperature : float or array
        The logits are divided by ``temperature`` first (it has no effect for ``"abs"``
        and ``"relu"``, which are scale-invariant). kornia 0.9 divides by its
        ``temperature`` too (some older kornia releases multiplied by it). A positive
        number, or a positive floating array broadcastable to ``logits.shape[:-ndim]`` (one
        per heatmap or fewer; differentiable), checked for its shape and dtype only.

    Returns
    -------
    array of the same shape and dtype as ``logits``
        A heatmap whose weights are all zero (all ``-inf`` logits for softmax, all
        non-positive ones for relu) comes back uniform, never NaN. float16 and bfloat16
        inputs are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> p = dsnt_core.normalize_heatmaps(np.asarray([[0.0, 0.0], [0.0, np.log(5.0)]]))
    >>> p.round(3).tolist()
    [[0.125, 0.125], [0.125, 0.625]]
    """
    xp = namespace_of(logits=logits, temperature=cast(Array, temperature) if is_array_value(temperature) else None)
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, logits, "logits", ndim)
    check_choice(method, "method", NORMALIZATION_METHODS)
    checked = check_temperature(xp, temperature, tuple(logits.shape[: logits.ndim - ndim]))
    z = to_compute(xp, logits)
    z = divide_by_temperature(z, per_heatmap(xp, checked, ndim, z.dtype))
    if method == "softmax":
        heatmaps = _softmax(xp, z, ndim)
    elif method == "sigmoid":
        heatmaps = _softmax(xp, _log_sigmoid(xp, z), ndim)
    elif method == "abs":
        heatmaps = _normalize_weights(xp, xp.abs(z), ndim)
    else:
        heatmaps = _normalize_weights(xp, xp.maximum(z, xp.zeros_like(z)), ndim)
    return like_input(xp, heatmaps, logits)


def flat_softmax(logits: ArrayT, /, *, ndim: int = 2, temperature: float | Array = 1.0) -> ArrayT:
    """Softmax over the last ``ndim`` axes taken together (dsntnn's ``flat_softmax``).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised scores; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes, any number from 1.
    temperature : float or array
        Softmax temperature: ``softmax(logits / temperature)``; a number or an array, as in
        `normalize_heatmaps`.

    Returns
    -------
    array of the same shape and dtype as ``logits``
        Heatmaps: non-negative, summing to one over the spatial axes.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.flat_softmax(np.zeros((1, 2, 2))).tolist()
    [[[0.25, 0.25], [0.25, 0.25]]]
    """
    return normalize_heatmaps(logits, ndim=ndim, method="softmax", temperature=temperature)


def sharpen_heatmaps(heatmaps: ArrayT, /, alpha: float, *, ndim: int = 2) -> ArrayT:
    """Raise heatmaps to the power ``alpha`` and renormalise them (dsntnn's ``sharpen_heatmaps``).

    ``P ** alpha / sum(P ** alpha)`` over the spatial axes: ``alpha > 1`` moves mass towards
    the mode, so ``dsnt(sharpen_heatmaps(P, 6))`` approximates the mode rather than the mean
    (Romero et al., "FlowCap", eq. 1); ``alpha = 1`` only renormalises. Computed as
    ``softmax(alpha * log P)`` with ``log 0 = -inf``: no underflow to 0/0 for large ``alpha``
    (dsntnn divides the powers directly), and a heatmap with no mass comes back uniform.

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Non-negative heatmaps (normalised or not).
    alpha : float
        Sharpness, a positive finite number.
    ndim : int
        Number of spatial axes, any number from 1.

    Returns
    -------
    array of the same shape and dtype as ``heatmaps``
        Normalised heatmaps. The gradient is 0 at pixels where ``P = 0`` (the derivative of
        ``P ** alpha`` there for ``alpha > 1``).

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> p = np.asarray([[0.1, 0.2, 0.7]])
    >>> dsnt_core.sharpen_heatmaps(p, 2.0).round(4).tolist()
    [[0.0185, 0.0741, 0.9074]]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    alpha = check_positive_finite(alpha, "alpha")
    p = to_compute(xp, heatmaps)
    positive = p > 0
    log_p = xp.log(safe_where_positive(xp, p, 1.0))  # double where: no NaN gradient at P = 0
    no_mass = xp.where(xp.isnan(p), p, xp.full_like(p, -math.inf))  # a NaN stays NaN: it never hides
    scaled = xp.where(positive, alpha * log_p, no_mass)
    return like_input(xp, _softmax(xp, scaled, ndim), heatmaps)
