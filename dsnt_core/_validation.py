"""Argument checks: shapes, dtypes and Python options only, so that jit tracing is unaffected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._typing import Array, Namespace

NORMALIZATION_METHODS = ("softmax", "abs", "relu", "sigmoid")
REGULARIZERS = ("js", "kl", "var", None)


def check_ndim(ndim: object) -> int:
    """Validate the number of spatial axes (1, 2 or 3)."""
    if isinstance(ndim, bool) or not isinstance(ndim, int):
        raise TypeError(f"ndim must be an int (1, 2 or 3), got {type(ndim).__name__}")
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    return ndim


def check_positive_finite(value: object, name: str) -> float:
    """Validate a positive, finite Python number such as ``sigma`` or ``temperature``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive finite Python number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def check_nonnegative_finite(value: object, name: str) -> float:
    """Validate a non-negative, finite Python number such as ``reg_weight``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite Python number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return float(value)


def check_choice(value: object, name: str, choices: Sequence[Any]) -> Any:
    """Validate an option that must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_floating(xp: Namespace, x: Array, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float16, bfloat16, float32 or float64), got {x.dtype}"
        )


def check_spatial(xp: Namespace, x: Array, name: str, ndim: int) -> None:
    """Validate a heatmap-like array: floating, with at least ``ndim`` axes, none of them empty."""
    check_floating(xp, x, name)
    if x.ndim < ndim:
        raise ValueError(
            f"{name} must have at least ndim={ndim} axes (..., {_spatial_names(ndim)}), got shape {tuple(x.shape)}"
        )
    if any(n == 0 for n in x.shape[-ndim:]):
        raise ValueError(f"{name} must have non-empty spatial axes, got shape {tuple(x.shape)}")


def check_coordinates(xp: Namespace, coords: Array, name: str, heatmaps: Array, ndim: int, heatmaps_name: str) -> None:
    """Validate coordinates of shape (..., ndim) that belong to heatmaps of shape (..., *spatial)."""
    check_floating(xp, coords, name)
    expected = (*heatmaps.shape[: heatmaps.ndim - ndim], ndim)
    if tuple(coords.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {expected} to match {heatmaps_name} of shape "
            f"{tuple(heatmaps.shape)} with ndim={ndim}, got {tuple(coords.shape)}"
        )


def check_mask(xp: Namespace, mask: Array | None, expected_shape: tuple[int, ...]) -> None:
    """Validate an optional mask of per-point weights (boolean, integer or floating)."""
    if mask is None:
        return
    if not xp.isdtype(mask.dtype, ("bool", "integral", "real floating")):
        raise TypeError(f"mask must have a bool, integer or real floating dtype, got {mask.dtype}")
    if tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(f"mask must have shape {tuple(expected_shape)}, got {tuple(mask.shape)}")


def check_size(size: object, name: str, expected_len: int | None = None) -> tuple[int, ...]:
    """Validate a spatial size: a sequence of 1 to 3 positive ints in array-axis order."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,)
    if not isinstance(size, Sequence) or not all(isinstance(n, int) and not isinstance(n, bool) for n in size):
        raise TypeError(f"{name} must be a sequence of ints in array-axis order (..., H, W), got {size!r}")
    size = tuple(size)
    if not 1 <= len(size) <= 3 or any(n <= 0 for n in size):
        raise ValueError(f"{name} must hold 1 to 3 positive ints, got {size}")
    if expected_len is not None and len(size) != expected_len:
        raise ValueError(
            f"{name} must have {expected_len} entries to match the last axis of the coordinates, got {size}"
        )
    return size


def _spatial_names(ndim: int) -> str:
    return ", ".join(("D", "H", "W")[3 - ndim :])
