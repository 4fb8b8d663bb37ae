"""Argument checks: shapes, dtypes and Python options only, so that jit tracing is unaffected.

Values are checked only when they are concrete. A size that a tracer hands over (a
``torch.SymInt``, a 0-d tensor under ``torch.jit.trace``, a JAX dimension expression) and a
traced number (``torch.SymFloat``, a JAX tracer) pass through unchecked: comparing them
would read their values (a constant in a ``torch.jit.trace``, an error under ``jax.export``),
and the traced program checks shapes itself when it runs. See ``_backends.is_symbolic_size``.
Inside ``torch.compile`` a SymInt or SymFloat passes for an ``int`` or ``float``; there the
checks are comparisons, which become guards of the compiled graph, never graph breaks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from ._backends import is_symbolic_size, is_traced_number
from ._typing import Array, Namespace

NORMALIZATION_METHODS = ("softmax", "abs", "relu", "sigmoid")
REGULARIZERS = ("js", "kl", "var", None)
DISTANCES = ("euclidean", "l1", "mse")
"""Per-point distances between predicted and target coordinates (dsntnn's three losses)."""
UNITS = ("normalized", "pixels")
"""Units of coordinates: normalised (pixel centres in (-1, 1)) or pixels (pixel ``j`` at ``j``)."""
CONFIDENCE_METHODS = ("peak", "spread", "entropy")
"""The scores of `dsnt_core.heatmap_confidence`."""


FUSED_MAX_NDIM = 3
"""The most spatial axes the fused operations (``soft_argmax``, ``dsnt_loss``) take."""


def check_ndim(ndim: object, max_ndim: int | None = FUSED_MAX_NDIM) -> int:
    """Validate the number of spatial axes: 1 to ``max_ndim`` (the fused operations), or any ``ndim >= 1``.

    The fused operations keep the default ``max_ndim=3``; the composed functions (``dsnt``,
    ``flat_softmax``, the regularisers...) pass ``max_ndim=None`` and take any number of
    spatial axes, as dsntnn does.

    ``ndim`` steers Python control flow, so a symbolic size (``target.shape[-1]`` under a
    tracer) is made concrete: ``torch.compile`` and ``torch.export`` specialise it (a guard),
    ``torch.jit.trace`` reads its value, and a JAX dimension expression, which has none, is a
    ``TypeError``.
    """
    if is_symbolic_size(ndim):
        ndim = _concrete_int(ndim, "ndim")
    if max_ndim is None:
        if isinstance(ndim, bool) or not isinstance(ndim, int):
            raise TypeError(f"ndim must be an int (1 or more), got {type(ndim).__name__}")
        if ndim < 1:
            raise ValueError(f"ndim must be a positive int (the number of spatial axes), got {ndim}")
        return ndim
    allowed = ", ".join(str(n) for n in range(1, max_ndim)) + f" or {max_ndim}"
    if isinstance(ndim, bool) or not isinstance(ndim, int):
        raise TypeError(f"ndim must be an int ({allowed}), got {type(ndim).__name__}")
    if ndim > max_ndim:
        raise ValueError(
            f"ndim must be {allowed}, got {ndim}: the fused soft_argmax and dsnt_loss take at most {max_ndim} "
            f"spatial axes; for more, compose them: dsnt(flat_softmax(logits, ndim={ndim}), ndim={ndim}) for the "
            "coordinates, dsnt_core.composed.composed_dsnt_loss for the loss (any ndim >= 1, more memory)"
        )
    if ndim < 1:
        raise ValueError(f"ndim must be {allowed}, got {ndim}")
    return ndim


def _concrete_int(n: object, name: str) -> int:
    """The value of a symbolic size that must be concrete (it steers Python control flow)."""
    try:
        return int(cast(Any, n))
    except Exception as error:  # a JAX dimension expression, a torch.fx Proxy
        raise TypeError(
            f"{name} must be a concrete int (it decides the program's structure), got the symbolic size {n!r}"
        ) from error


def check_positive_finite(value: object, name: str) -> float:
    """Validate a positive, finite Python number such as ``sigma`` or ``temperature``.

    A traced number (``torch.SymFloat``, a JAX tracer) is returned unchecked: it stands for
    a float whose value the traced program does not know yet. Inside ``torch.compile`` a
    symbolic float looks like a ``float``; the check is then made of comparisons only,
    which become guards of the compiled graph (no graph break).
    """
    if is_traced_number(value):
        return cast(float, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive finite Python number, got {type(value).__name__}")
    if not 0 < value < math.inf:  # comparisons only (no math.isfinite): traceable by torch.compile
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return _as_float(value)


def check_sigma(xp: Namespace, sigma: object, coords_shape: tuple[Any, ...], coords_name: str) -> float | Array:
    """Validate ``sigma``: a positive finite Python number, or a floating array broadcastable to ``coords_shape``.

    ``coords_shape`` is (..., ndim): one standard deviation per point and axis, in pixels.
    A traced number passes unchecked (as in `check_positive_finite`); an array is checked for
    its dtype and shape only (its values are the traced program's).
    """
    if is_traced_number(sigma) or (isinstance(sigma, (int, float)) and not isinstance(sigma, bool)):
        return check_positive_finite(sigma, "sigma")
    if not _is_array_like(sigma):
        raise TypeError(
            f"sigma must be a positive Python number or a real floating array broadcastable to {tuple(coords_shape)}, "
            f"got {type(sigma).__name__}"
        )
    array = cast(Array, sigma)
    if not xp.isdtype(array.dtype, "real floating"):
        raise TypeError(f"sigma must be a positive Python number or a real floating array, got dtype {array.dtype}")
    if not broadcasts_to(tuple(array.shape), tuple(coords_shape)):
        raise ValueError(
            f"sigma must be a positive Python number or an array broadcastable to {tuple(coords_shape)} "
            f"(the shape of {coords_name}: one value per point and axis, x first), got shape {tuple(array.shape)}"
        )
    return array


def _is_array_like(value: object) -> bool:
    """An array with a shape and a dtype (not a Python number)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def broadcasts_to(shape: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` (symbolic entries are not compared)."""
    if len(shape) > len(target):
        return False
    for n, m in zip(reversed(shape), reversed(target)):
        if is_symbolic_size(n) or is_symbolic_size(m):
            continue
        if n != 1 and n != m:
            return False
    return True


def check_nonnegative_finite(value: object, name: str) -> float:
    """Validate a non-negative, finite Python number such as ``reg_weight`` (a traced one passes unchecked)."""
    if is_traced_number(value):
        return cast(float, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite Python number, got {type(value).__name__}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return _as_float(value)


def _as_float(value: float) -> float:
    """``value`` as a float; a float is returned as it is.

    Under ``torch.compile(dynamic=True)`` a Python float argument is traced as a symbolic
    float that passes ``isinstance(value, float)``; ``float()`` of it would specialise the
    compiled graph on its value, so it is left alone.
    """
    return value if type(value) is float else float(value)


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
    if any(not is_symbolic_size(n) and n == 0 for n in x.shape[-ndim:]):
        raise ValueError(f"{name} must have non-empty spatial axes, got shape {tuple(x.shape)}")


def check_coordinates(xp: Namespace, coords: Array, name: str, heatmaps: Array, ndim: int, heatmaps_name: str) -> None:
    """Validate coordinates of shape (..., ndim) that belong to heatmaps of shape (..., *spatial)."""
    check_floating(xp, coords, name)
    expected = (*heatmaps.shape[: heatmaps.ndim - ndim], ndim)
    if not shapes_match(tuple(coords.shape), expected):
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
    if not shapes_match(tuple(mask.shape), tuple(expected_shape)):
        raise ValueError(f"mask must have shape {tuple(expected_shape)}, got {tuple(mask.shape)}")


def _is_size(n: object) -> bool:
    """A concrete int (not a bool) or a symbolic size."""
    return (isinstance(n, int) and not isinstance(n, bool)) or is_symbolic_size(n)


def shapes_match(actual: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    """Whether two shapes agree: same length, and equal entries wherever both are concrete.

    Symbolic entries are not compared (that would specialise a trace); the traced program
    checks them when it runs.
    """
    if len(actual) != len(expected):
        return False
    return all(a is e or is_symbolic_size(a) or is_symbolic_size(e) or a == e for a, e in zip(actual, expected))


def check_size(
    size: object, name: str, expected_len: int | None = None, max_len: int | None = FUSED_MAX_NDIM
) -> tuple[int, ...]:
    """Validate a spatial size: 1 to ``max_len`` positive ints (any number for ``None``) in array-axis order.

    Entries may be symbolic sizes (``x.shape[-2:]`` under a tracer); only concrete ones are
    checked for positivity.
    """
    if _is_size(size):
        size = (size,)
    if not isinstance(size, Sequence) or not all(_is_size(n) for n in size):
        raise TypeError(f"{name} must be a sequence of ints in array-axis order (..., H, W), got {size!r}")
    size = tuple(size)
    if max_len is None:
        if not size or any(not is_symbolic_size(n) and n <= 0 for n in size):
            raise ValueError(f"{name} must hold one or more positive ints, got {size}")
    elif not 1 <= len(size) <= max_len or any(not is_symbolic_size(n) and n <= 0 for n in size):
        raise ValueError(f"{name} must hold 1 to {max_len} positive ints, got {size}")
    if expected_len is not None and not is_symbolic_size(expected_len) and len(size) != expected_len:
        raise ValueError(
            f"{name} must have {expected_len} entries to match the last axis of the coordinates, got {size}"
        )
    return size


def _spatial_names(ndim: int) -> str:
    """``"H, W"`` for 2 axes, ``"D, H, W"`` for 3, ``"S4, D, H, W"`` for 4 (extra axes numbered from the last)."""
    extra = [f"S{k}" for k in range(ndim, 3, -1)]
    return ", ".join((*extra, *("D", "H", "W")[max(3 - ndim, 0) :]))
