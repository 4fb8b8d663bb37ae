"""Per-keypoint confidence scores from heatmaps: how sure the network is that a point is there."""

from __future__ import annotations

from .._arrays import like_input, log_size, safe_where_positive, spatial_axes, spatial_size, to_compute
from .._backends import is_symbolic_size, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import CONFIDENCE_METHODS, check_choice, check_ndim, check_spatial
from .dsnt import coordinate_grids, marginals, moments


def _peak(xp: Namespace, p: Array, ndim: int) -> Array:
    return xp.max(p, axis=spatial_axes(ndim))


def _spread(xp: Namespace, p: Array, ndim: int) -> Array:
    """``1 / (1 + s)`` with ``s`` the root-mean-square standard deviation in pixels."""
    _, variances = moments(xp, marginals(xp, p, ndim), coordinate_grids(xp, p, ndim, units="pixels"))
    mean_variance = xp.mean(variances, axis=-1)
    positive = mean_variance > 0  # double where: a zero (not NaN) gradient for a single-pixel heatmap
    rms = xp.where(positive, xp.sqrt(safe_where_positive(xp, mean_variance, 1.0)), 0.0 * mean_variance)
    return 1.0 / (1.0 + rms)


def _entropy(xp: Namespace, p: Array, ndim: int) -> Array:
    """``1 - H(P) / log(N)``: 1 for one pixel, 0 for the uniform heatmap."""
    p_log_p = xp.where(p > 0, p * xp.log(safe_where_positive(xp, p, 1.0)), 0.0 * p)  # 0 log 0 = 0; NaN stays NaN
    entropy = -xp.sum(p_log_p, axis=spatial_axes(ndim))
    shape = tuple(p.shape[-ndim:])
    if not any(is_symbolic_size(n) for n in shape) and spatial_size(p, ndim) == 1:
        return 1.0 + 0.0 * entropy  # a single pixel: certain (0 / log 1 taken as 0)
    return 1.0 - entropy / log_size(xp, spatial_size(p, ndim), entropy)


_SCORES = {"peak": _peak, "spread": _spread, "entropy": _entropy}


def heatmap_confidence(heatmaps: ArrayT, /, *, ndim: int = 2, method: str = "peak") -> ArrayT:
    """A confidence score per heatmap (per keypoint), to threshold for visibility.

    DSNT heads predict a coordinate for every point, visible or not; how concentrated the
    heatmap is tells how sure the network is. Each method gives a score in [0, 1], higher is
    more confident, and 1 for a heatmap with all its mass on one pixel:

    * ``"peak"``: the largest probability, ``max P``. The uniform heatmap gives ``1 / N`` (``N``
      pixels); a heatmap trained towards a Gaussian of ``sigma`` pixels peaks near that
      Gaussian's own peak, about ``1 / (2 pi sigma^2)`` in 2-D (0.16 for ``sigma = 1``), which
      makes a natural scale: threshold at a fraction of it, e.g. half of
      ``gaussian_heatmaps(centre, size, sigma).max()``.
    * ``"spread"``: ``1 / (1 + s)`` with ``s = sqrt(mean_k Var_k)`` the root-mean-square
      standard deviation of the heatmap **in pixels**. Independent of the heatmap size: to
      accept points whose heatmap is at most ``s_max`` pixels wide, threshold at
      ``1 / (1 + s_max)``; a heatmap matching a target Gaussian of ``sigma`` pixels scores
      about ``1 / (1 + sigma)``. Two separate modes far apart give a large ``s``, hence a low
      score (the mean between them is not a good coordinate).
    * ``"entropy"``: ``1 - H(P) / log(N)``, the normalised negative entropy: 0 for the uniform
      heatmap, whatever its size; it sees multimodality but not distance (two sharp modes
      score high however far apart they are).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps (e.g. from `flat_softmax`).
    ndim : int
        Number of spatial axes, any number from 1.
    method : {"peak", "spread", "entropy"}
        The score, as above.

    Returns
    -------
    array of shape (...)
        One score per heatmap, in the heatmaps' dtype (16-bit inputs are computed in
        float32); differentiable (usable as an auxiliary loss), and NaN for a heatmap with a NaN.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> sharp = np.zeros((5, 5))
    >>> sharp[2, 3] = 1.0
    >>> flat = np.full((5, 5), 1 / 25)
    >>> heatmaps = np.stack([sharp, flat])
    >>> dsnt_core.heatmap_confidence(heatmaps).tolist()
    [1.0, 0.04]
    >>> dsnt_core.heatmap_confidence(heatmaps, method="spread").round(3).tolist()
    [1.0, 0.414]
    >>> visible = dsnt_core.heatmap_confidence(heatmaps, method="spread") >= 1 / (1 + 1.0)  # at most 1 px wide
    >>> visible.tolist()
    [True, False]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    check_choice(method, "method", CONFIDENCE_METHODS)
    p = to_compute(xp, heatmaps)
    return like_input(xp, _SCORES[method](xp, p, ndim), heatmaps)
