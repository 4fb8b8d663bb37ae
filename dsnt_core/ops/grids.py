"""Coordinate grids and conversions between pixel and normalised coordinates."""

from __future__ import annotations

from typing import Any

from .._arrays import like_input, size_arange, size_array, size_like, to_compute
from .._backends import is_symbolic_size, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import check_floating, check_size


def normalized_linspace(
    n: int,
    *,
    dtype: Any = None,
    device: Any = None,
    xp: Namespace | None = None,
    align_corners: bool = False,
) -> Array:
    """Normalised coordinates of the ``n`` pixels along one axis.

    With ``align_corners=False`` (the DSNT paper's convention) the values are the pixel
    centres ``(2 j + 1 - n) / n`` for ``j = 0 .. n-1``, strictly inside (-1, 1).
    With ``align_corners=True`` (kornia's convention) they run from -1 to 1 inclusive;
    a single pixel sits at 0.

    Parameters
    ----------
    n : int
        Number of pixels, at least 1. It may be symbolic (a ``torch.SymInt``, a 0-d tensor
        under ``torch.jit.trace``, a JAX dimension expression): the grid is then built from
        ``arange(n)`` inside the traced program and follows the input's size.
    dtype : dtype, optional
        Floating dtype of the result; the namespace's default float when omitted.
    device : device, optional
        Device of the result.
    xp : namespace, optional
        Array namespace to build with; NumPy (through array-api-compat) when omitted.
    align_corners : bool
        Use the corner convention instead of pixel centres.

    Returns
    -------
    array of shape (n,)
        The coordinates in increasing order.

    Examples
    --------
    >>> import dsnt_core
    >>> dsnt_core.normalized_linspace(4).tolist()
    [-0.75, -0.25, 0.25, 0.75]
    >>> dsnt_core.normalized_linspace(3, align_corners=True).tolist()
    [-1.0, 0.0, 1.0]
    """
    symbolic = is_symbolic_size(n)
    if not symbolic:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
    if xp is None:
        from array_api_compat import numpy as numpy_namespace

        xp = numpy_namespace
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    index = size_arange(xp, n, dtype=dtype, device=device)
    if symbolic:  # no Python branch on n: (2 j - (n - 1)) / max(n - 1, 1) is 0 for a single pixel
        size = size_array(xp, n, dtype=dtype, device=device)
        if align_corners:
            return (2.0 * index - (size - 1.0)) / xp.maximum(size - 1.0, xp.ones_like(size))
        return (2.0 * index + (1.0 - size)) / size
    if align_corners:
        return index * (2.0 / (n - 1)) - 1.0 if n > 1 else index
    return (2.0 * index + (1.0 - n)) / n


def pixel_linspace(n: int, *, dtype: Any = None, device: Any = None, xp: Namespace | None = None) -> Array:
    """Pixel coordinates of the ``n`` pixels along one axis: ``arange(n)``, pixel ``j`` at ``j``.

    The grid of ``units="pixels"`` (kornia's ``normalized_coordinates=False``): exact integers,
    so an expectation taken with it is exact at pixel centres. Build it in float32 or wider
    (float16 holds integers exactly up to 2048 only, bfloat16 up to 256).

    Parameters
    ----------
    n : int
        Number of pixels, at least 1; it may be symbolic, as in `normalized_linspace`.
    dtype : dtype, optional
        Floating dtype of the result; the namespace's default float when omitted.
    device : device, optional
        Device of the result.
    xp : namespace, optional
        Array namespace to build with; NumPy (through array-api-compat) when omitted.

    Returns
    -------
    array of shape (n,)
        ``0, 1, ..., n - 1``.

    Examples
    --------
    >>> import dsnt_core
    >>> dsnt_core.pixel_linspace(4).tolist()
    [0.0, 1.0, 2.0, 3.0]
    """
    if not is_symbolic_size(n):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
    if xp is None:
        from array_api_compat import numpy as numpy_namespace

        xp = numpy_namespace
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    return size_arange(xp, n, dtype=dtype, device=device)


def _sizes_along_coordinates(xp: Namespace, coords: Array, size: tuple[int, ...]) -> Array:
    """``size`` reversed into (x, y[, z]) order as an array matching ``coords``."""
    return xp.stack([size_like(xp, n, coords) for n in reversed(size)])


def pixels_per_normalized_unit(xp: Namespace, like: Array, size: tuple[int, ...]) -> Array:
    """``n_k / 2`` per coordinate (x, y[, z] order) as an array matching ``like``: the derivative of
    `normalized_means_to_pixels`, which turns a pixel-unit cotangent into a normalised one."""
    return _sizes_along_coordinates(xp, like, size) / 2.0


def pixel_to_normalized(coords: ArrayT, /, size: Any, *, align_corners: bool = False) -> ArrayT:
    """Convert pixel coordinates (pixel ``j`` has its centre at ``j``) to normalised ones.

    Parameters
    ----------
    coords : array of shape (..., ndim)
        Pixel coordinates in (x, y[, z]) order.
    size : sequence of int
        Heatmap size in array-axis order (..., H, W), as dsntnn.
    align_corners : bool
        Target the corner convention (``-1`` and ``1`` at the outer pixel centres).

    Returns
    -------
    array of shape (..., ndim)
        Normalised coordinates, same library, device and dtype as ``coords``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.pixel_to_normalized(np.asarray([0.0, 3.0]), (4, 4)).tolist()
    [-0.75, 0.75]
    """
    xp = namespace_of(coords=coords)
    check_floating(xp, coords, "coords")
    size = check_size(size, "size", expected_len=coords.shape[-1], max_len=None)
    c = to_compute(xp, coords)
    n = _sizes_along_coordinates(xp, c, size)
    if align_corners:
        normalized = xp.where(n > 1, 2.0 * c / xp.maximum(n - 1.0, xp.ones_like(n)) - 1.0, 0.0 * c)
        return like_input(xp, normalized, coords)
    # (2 j + 1 - n) / n: the same rounding as the grid of normalized_linspace.
    return like_input(xp, (2.0 * c + (1.0 - n)) / n, coords)


def normalized_to_pixel(coords: ArrayT, /, size: Any, *, align_corners: bool = False) -> ArrayT:
    """Convert normalised coordinates to pixel coordinates; the inverse of `pixel_to_normalized`.

    Parameters
    ----------
    coords : array of shape (..., ndim)
        Normalised coordinates in (x, y[, z]) order.
    size : sequence of int
        Heatmap size in array-axis order (..., H, W).
    align_corners : bool
        Read ``coords`` in the corner convention.

    Returns
    -------
    array of shape (..., ndim)
        Pixel coordinates, same library, device and dtype as ``coords``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.normalized_to_pixel(np.asarray([-0.75, 0.75]), (4, 4)).tolist()
    [0.0, 3.0]
    """
    xp = namespace_of(coords=coords)
    check_floating(xp, coords, "coords")
    size = check_size(size, "size", expected_len=coords.shape[-1], max_len=None)
    return like_input(
        xp, normalized_means_to_pixels(xp, to_compute(xp, coords), size, align_corners=align_corners), coords
    )


def normalized_means_to_pixels(
    xp: Namespace, coords: Array, size: tuple[int, ...], *, align_corners: bool = False
) -> Array:
    """Normalised coordinates (..., ndim) to pixels, in ``coords``' own dtype, with no checks.

    The helper for fused operations: convert the moments kept in the accumulation dtype
    (float32 for 16-bit logits) *before* the cast to the output dtype. ``n * c + (n - 1)``
    (rather than ``(c + 1) * n - 1``) recovers the grid values of `normalized_linspace` closely
    in float32: pixel 0 of every ``n`` up to 4096 comes back as exactly 0 where float32 division
    is correctly rounded (NumPy, PyTorch; XLA divides by a constant through its reciprocal, an ulp
    off at times, which leaves about ``n * 1e-7`` px), and every pixel after the rounding to a
    16-bit dtype. For exact results in every dtype take the expectation of the pixel grid
    (`pixel_linspace`) instead. The derivative is ``n_k / 2`` per axis (``(n_k - 1) / 2`` for the
    corner convention): multiply a pixel-unit cotangent by it for the normalised one.
    """
    n = _sizes_along_coordinates(xp, coords, size)
    if align_corners:
        return (coords + 1.0) * (n - 1.0) / 2.0
    return (n * coords + (n - 1.0)) / 2.0
