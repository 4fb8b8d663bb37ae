"""DSNT itself: expected pixel-centre coordinates and variances of heatmaps, via marginals.

Also `linear_expectation`, the expectation of any per-axis values (dsntnn's), of which `dsnt`
is the case of the coordinate grids. Any number of spatial axes (``ndim >= 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._arrays import like_input, spatial_axes, to_compute, to_dtype
from .._backends import device_of, is_symbolic_size, namespace_of
from .._typing import Array, ArrayT, DType, Namespace
from .._validation import UNITS, broadcasts_to, check_choice, check_floating, check_ndim, check_spatial
from .grids import normalized_linspace, pixel_linspace


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
    xp: Namespace,
    heatmaps: Array,
    ndim: int,
    *,
    align_corners: bool = False,
    dtype: DType = None,
    units: str = "normalized",
) -> list[Array]:
    """1-D coordinate grids of the spatial axes in (x, y[, z]) order, in ``dtype`` (default ``heatmaps``').

    ``units="pixels"`` gives ``arange(n)`` (`pixel_linspace`), exact integers; pass a dtype of
    32 bits or more for it (`to_compute` of 16-bit heatmaps does).
    """
    dtype = heatmaps.dtype if dtype is None else dtype
    device = device_of(heatmaps)
    if units == "pixels":
        return [pixel_linspace(heatmaps.shape[-1 - k], dtype=dtype, device=device, xp=xp) for k in range(ndim)]
    return [
        normalized_linspace(heatmaps.shape[-1 - k], dtype=dtype, device=device, xp=xp, align_corners=align_corners)
        for k in range(ndim)
    ]


def check_units(units: object, align_corners: bool) -> str:
    """Validate ``units`` (``"normalized"`` or ``"pixels"``); ``align_corners`` applies to normalised units only."""
    check_choice(units, "units", UNITS)
    if units == "pixels" and align_corners:
        raise ValueError(
            "align_corners=True chooses a normalised grid; it has no meaning with units='pixels' "
            "(pixel j is at j in both conventions): leave align_corners=False"
        )
    return str(units)


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


def dsnt(heatmaps: ArrayT, /, *, ndim: int = 2, align_corners: bool = False, units: str = "normalized") -> ArrayT:
    """Differentiable spatial to numerical transform: the expected coordinate of each heatmap.

    Computes ``[<P, X>, <P, Y>(, <P, Z>)]`` from the marginals of ``P`` (no full-size
    coordinate grid is built).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps (non-negative, summing to one over the last ``ndim`` axes).
    ndim : int
        Number of spatial axes, any number from 1 (dsntnn takes any too).
    align_corners : bool
        Corner convention (kornia) instead of pixel centres (the paper, dsntnn); normalised
        units only.
    units : {"normalized", "pixels"}
        ``"normalized"``: pixel centres in (-1, 1) (or the corner grid). ``"pixels"``: pixel ``j``
        at ``j``, computed from the grid ``arange(n)`` in float32 or wider (kornia's
        ``normalized_coordinates=False``), so a heatmap peaked on a pixel gives that pixel
        exactly, in bfloat16 too; converting normalised results with `normalized_to_pixel`
        afterwards rounds twice in 16-bit dtypes.

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
    >>> dsnt_core.dsnt(heatmap, units="pixels").tolist()
    [3.0, 1.0]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    units = check_units(units, align_corners)
    p = to_compute(xp, heatmaps)
    grids = coordinate_grids(xp, p, ndim, align_corners=align_corners, units=units)
    margins = marginals(xp, p, ndim)
    coords = expected_coordinates(xp, margins, grids)
    return like_input(xp, coords, heatmaps)


def heatmap_variance(heatmaps: ArrayT, /, *, ndim: int = 2, units: str = "normalized") -> ArrayT:
    """Variance of the coordinate along each axis, in normalised units squared (or pixels squared).

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps.
    ndim : int
        Number of spatial axes, any number from 1.
    units : {"normalized", "pixels"}
        Normalised units squared, or pixels squared (``(n / 2) ** 2`` times more along an axis
        of ``n`` pixels; computed from the pixel grid).

    Returns
    -------
    array of shape (..., ndim)
        ``Var[x], Var[y](, Var[z])``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> heatmap = np.zeros((1, 4))
    >>> heatmap[0, 1:3] = 0.5  # two pixels 0.5 apart in normalised units
    >>> dsnt_core.heatmap_variance(heatmap).tolist()
    [0.0625, 0.0]
    >>> dsnt_core.heatmap_variance(heatmap, units="pixels").tolist()
    [0.25, 0.0]
    """
    xp = namespace_of(heatmaps=heatmaps)
    ndim = check_ndim(ndim, max_ndim=None)
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    units = check_units(units, False)
    p = to_compute(xp, heatmaps)
    _, variances = moments(xp, marginals(xp, p, ndim), coordinate_grids(xp, p, ndim, units=units))
    return like_input(xp, variances, heatmaps)


def linear_expectation(heatmaps: ArrayT, values: Sequence[Array], /, *, ndim: int | None = None) -> ArrayT:
    """Expectation of arbitrary per-axis values under each heatmap (dsntnn's ``linear_expectation``).

    ``E_k = sum_j m_k[j] * values[k][j]`` with ``m_k`` the marginal of the heatmap along the
    axis of ``values[k]``. `dsnt` is the case ``values = [x grid, y grid(, z grid)]``.

    Parameters
    ----------
    heatmaps : array of shape (..., *spatial)
        Normalised heatmaps.
    values : sequence of arrays
        One array per spatial axis in **(x, y[, z]) order** (the order of `dsnt`'s output; the
        reverse of dsntnn's, which lists them in array-axis order (..., H, W)). ``values[k]`` has
        shape (n_k,) with ``n_k`` the length of spatial axis ``-1 - k`` (W for x, H for y), or
        (..., n_k) whose leading axes broadcast against the heatmaps' leading axes (values per
        heatmap). They are used in float32 or wider: 16-bit values are cast up, wider ones
        are cast to the heatmaps' accumulation dtype.
    ndim : int, optional
        Number of spatial axes, any number from 1; ``len(values)`` when omitted, and it must
        equal ``len(values)`` when given.

    Returns
    -------
    array of shape (..., ndim)
        The expectations in (x, y[, z]) order, in the heatmaps' dtype; differentiable with
        respect to both the heatmaps and the values.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> heatmap = np.zeros((2, 3))
    >>> heatmap[1, 2] = 1.0  # row 1, column 2
    >>> x_values, y_values = np.asarray([10.0, 20.0, 30.0]), np.asarray([-1.0, 1.0])
    >>> dsnt_core.linear_expectation(heatmap, [x_values, y_values]).tolist()
    [30.0, 1.0]
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            "values must be a sequence of arrays, one per spatial axis in (x, y[, z]) order, "
            f"got {type(values).__name__}"
        )
    arrays = {f"values[{k}]": v for k, v in enumerate(values)}
    xp = namespace_of(heatmaps=heatmaps, **arrays)
    ndim = check_ndim(len(values) if ndim is None else ndim, max_ndim=None)
    if len(values) != ndim:
        raise ValueError(f"values must hold ndim={ndim} arrays (one per spatial axis, x first), got {len(values)}")
    check_spatial(xp, heatmaps, "heatmaps", ndim)
    p = to_compute(xp, heatmaps)
    leading = tuple(heatmaps.shape[: heatmaps.ndim - ndim])
    vectors = []
    for k, v in enumerate(values):
        name, n = f"values[{k}]", heatmaps.shape[-1 - k]
        check_floating(xp, v, name)
        if v.ndim < 1 or not _length_matches(v.shape[-1], n) or not broadcasts_to(tuple(v.shape[:-1]), leading):
            raise ValueError(
                f"{name} must have shape ({n},) or (..., {n}) with leading axes that broadcast against "
                f"{leading} (heatmaps of shape {tuple(heatmaps.shape)}, axis {-1 - k} for coordinate {k}), "
                f"got shape {tuple(v.shape)}"
            )
        vectors.append(to_dtype(xp, v, p.dtype))
    return like_input(xp, expected_coordinates(xp, marginals(xp, p, ndim), vectors), heatmaps)


def _length_matches(actual: object, expected: object) -> bool:
    return is_symbolic_size(actual) or is_symbolic_size(expected) or actual == expected
