"""Per-point coordinate losses (Euclidean, L1, MSE) and their average over the points (dsntnn's definitions)."""

from __future__ import annotations

from .._arrays import euclidean_norm, like_input, to_compute
from .._backends import is_symbolic_size, namespace_of
from .._typing import Array, ArrayT, Namespace
from .._validation import check_floating, check_mask, shapes_match


def euclidean_loss(pred: ArrayT, target: Array, /) -> ArrayT:
    """Euclidean distance between predicted and target coordinates, per point.

    Parameters
    ----------
    pred, target : arrays of shape (..., ndim)
        Predicted and target coordinates.

    Returns
    -------
    array of shape (...)
        Its gradient at ``pred == target`` is 0, not NaN.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.euclidean_loss(np.asarray([[0.3, 0.4]]), np.zeros((1, 2))).tolist()
    [0.5]
    """
    xp = _check_pair(pred, target)
    return like_input(xp, euclidean_norm(xp, to_compute(xp, pred) - to_compute(xp, target)), pred)


def _check_pair(pred: Array, target: Array) -> Namespace:
    xp = namespace_of(pred=pred, target=target)
    check_floating(xp, pred, "pred")
    check_floating(xp, target, "target")
    if not shapes_match(tuple(pred.shape), tuple(target.shape)):
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim < 1:
        raise ValueError("pred must have shape (..., ndim), got a 0-d array")
    return xp


def l1_loss(pred: ArrayT, target: Array, /) -> ArrayT:
    """Mean absolute error over the coordinate axis, per point (dsntnn's ``l1_losses``).

    ``mean_k |pred_k - target_k|``: dsntnn *averages* over the ndim coordinates (it does not
    sum them), so it is the L1 distance divided by ``ndim``.

    Parameters
    ----------
    pred, target : arrays of shape (..., ndim)
        Predicted and target coordinates.

    Returns
    -------
    array of shape (...)
        The per-point losses, in ``pred``'s dtype (16-bit inputs are computed in float32).
        Its gradient at ``pred == target`` is 0.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.l1_loss(np.asarray([[0.3, -0.4]]), np.zeros((1, 2))).tolist()
    [0.35]
    """
    xp = _check_pair(pred, target)
    diff = to_compute(xp, pred) - to_compute(xp, target)
    return like_input(xp, xp.mean(xp.abs(diff), axis=-1), pred)


def mse_loss(pred: ArrayT, target: Array, /) -> ArrayT:
    """Mean squared error over the coordinate axis, per point (dsntnn's ``mse_losses``).

    ``mean_k (pred_k - target_k) ** 2``: dsntnn *averages* over the ndim coordinates, so it is
    the squared Euclidean distance divided by ``ndim``.

    Parameters
    ----------
    pred, target : arrays of shape (..., ndim)
        Predicted and target coordinates.

    Returns
    -------
    array of shape (...)
        The per-point losses, in ``pred``'s dtype (16-bit inputs are computed in float32).

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> dsnt_core.mse_loss(np.asarray([[0.3, -0.4]]), np.zeros((1, 2))).round(12).tolist()
    [0.125]
    """
    xp = _check_pair(pred, target)
    diff = to_compute(xp, pred) - to_compute(xp, target)
    return like_input(xp, xp.mean(diff * diff, axis=-1), pred)


def average_loss(losses: ArrayT, /, *, mask: Array | None = None) -> ArrayT:
    """Mean of per-point losses over the points that ``mask`` keeps.

    Parameters
    ----------
    losses : array of shape (...)
        Per-point losses, e.g. from `euclidean_loss`.
    mask : array of shape (...), optional
        Boolean or float weights; the result is ``sum(losses * mask) / max(sum(mask), 1)``
        (dsntnn's ``average_loss``), so an empty mask gives 0.

    Returns
    -------
    0-d array
        The mean, same library, device and dtype as ``losses``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> float(dsnt_core.average_loss(np.asarray([1.0, 3.0]), mask=np.asarray([True, False])))
    1.0
    """
    xp = namespace_of(losses=losses, mask=mask)
    check_floating(xp, losses, "losses")
    if mask is None:
        empty = any(not is_symbolic_size(n) and n == 0 for n in losses.shape)  # symbolic: never compared
        return like_input(xp, xp.sum(losses) if empty else xp.mean(losses), losses)
    check_mask(xp, mask, tuple(losses.shape))
    weights = xp.astype(mask, losses.dtype)
    total = xp.sum(weights)
    return like_input(xp, xp.sum(losses * weights) / xp.maximum(total, xp.ones_like(total)), losses)
