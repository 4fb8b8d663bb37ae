"""DSNT itself: expected pixel-centre coordinates and variances of heatmaps, via marginals."""

from __future__ import annotations

from .._arrays import like_input, spatial_axes, to_compute
from .._backends import device_of, namespace_of
from .._typing import Array, ArrayT, DType, Namespace
from .._validation import check_ndim, check_spatial
from .grids import normalized_linspace


def marginals(xp: Namespace, heatmaps: Array, ndim: int) -> list[Array]:
    """Marginal distributions along each spatial axis, in (x, y[, z]) order.

    Entry ``k`` has shape (..., n_k) where n_k is the length of spatial axis ``-1 - k``.
    """
    axes = spatial_axes(ndim)
    result = []
    for k in range(ndim):
        kept = -1 - k
        others = tuple(a for a in axes if a != kept)
        result.append(xp.sum(heatmaps, axis=others) if others else heatmaps)
    return result


def coordinate_grids(
    xp: Namespace, heatmaps: Array, ndim: int, *, align_corners: bool = False, dtype: DType = None
) -> list[Array]:
    """1-D coordinate grids of the spatial axes in (x, y[, z]) order, in ``dtype`` (default ``heatmaps``')."""
    return [
        normalized_linspace(
            heatmaps.shape[-1 - k],
            dtype=heatmaps.dtype if dtype is None else dtype,
            device=device_of(heatmaps),
            xp=xp,
            align_corners=align_corners,
        )
        for k in range(ndim)
    ]


def expected_coordinates(xp: Namespace, margins: list[Array], grids: list[Array]) -> Array:
    """Means (..., ndim) of the coordinate under each marginal, (x, y[, z]) order."""
    return xp.stack([xp.sum(m * g, axis=-1) for m, g in zip(margins, grids)], axis=-1)


def moments(xp: Namespace, margins: list[Array], grids: list[Array]) -> tuple[Array, Array]:
    """Means and variances (..., ndim) of the coordinate under each marginal."""
    means = [xp.sum(m * g, axis=-1) for m, g in zip(margins, grids)]
    variances = []
    for m, g, mean in zip(margins, grids, means):
        centred = g - mean[..., None]
        variances.append(xp.sum(m * (centred * centred), axis=-1))
    return xp.stack(means, axis=-1), xp.stack(variances, axis=-1)


def dsnt(heatmaps: ArrayT, /, *, ndim: int = 2, align_corners: bool = False) -> ArrayT:
    """Differentiable spatial to numerical transform: the expected coordinate of each heatmap.

    Computes ``[<P, X>, <P, Y>(, <P, Z>)]`` from the marginals of ``P`` (no full-size
    coordinate grid is built).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps (non-negative, summing to one over the last ``ndim`` axes).
    ndim : int
        Number of spatial axes (1, 2 or 3).
    align_corners : bool
        Corner convention (kornia) instead of pixel centres (the paper, dsntnn).

    Returns
    -------
    array of shape (..., ndim)
        Coordinates in (x, y[, z]) order: the reverse of the spatial axes.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> heatmap = np.zeros((4, 4))
    >>> heatmap[1, 3] = 1.0  # row 1, column 3
    >>> dsnt_core.dsnt(heatmap).tolist()
    [0.75, -0.25]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    p = to_compute(xp, heatmaps)
    grids = coordinate_grids(xp, p, ndim, align_corners=align_corners)
    margins = marginals(xp, p, ndim)
    coords = expected_coordinates(xp, margins, grids)
    return like_input(xp, coords, heatmaps)


def heatmap_variance(heatmaps: ArrayT, /, *, ndim: int = 2) -> ArrayT:
    """Variance of the coordinate along each axis, in normalised units squared.

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps.
    ndim : int
        Number of spatial axes (1, 2 or 3).

    Returns
    -------
    array of shape (..., ndim)
        ``Var[x], Var[y](, Var[z])``; multiply by ``(n / 2) ** 2`` for pixel units.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> heatmap = np.zeros((1, 4))
    >>> heatmap[0, 1:3] = 0.5  # two pixels 0.5 apart in normalised units
    >>> dsnt_core.heatmap_variance(heatmap).tolist()
    [0.0625, 0.0]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    p = to_compute(xp, heatmaps)
    _, variances = moments(xp, marginals(xp, p, ndim), coordinate_grids(xp, p, ndim))
    return like_input(xp, variances, heatmaps)
