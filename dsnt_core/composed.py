"""The unfused composition normalise -> DSNT -> losses: the fallback for gradients the fused path does not give.

It is what a user would write by hand; the fused path must agree with it. It serves as the
PyTorch fallback when the target itself requires a gradient, and as the naive baseline in
tests and benchmarks. It also covers what the fused path does not: any number of spatial axes,
and gradients with respect to the target, the mask or ``sigma`` in PyTorch.
"""

from __future__ import annotations

from ._arrays import like_input
from ._backends import namespace_of
from ._typing import Array, ArrayT
from ._validation import DISTANCES, check_choice
from .ops.dsnt import dsnt
from .ops.losses import average_loss, euclidean_loss, l1_loss, mse_loss
from .ops.normalize import flat_softmax
from .ops.regularizers import js_regularizer, kl_regularizer, variance_regularizer

_DISTANCE_LOSSES = {"euclidean": euclidean_loss, "l1": l1_loss, "mse": mse_loss}


def composed_dsnt_loss(
    logits: ArrayT,
    target: Array,
    /,
    *,
    sigma: float | Array = 1.0,
    regularizer: str | None = "js",
    reg_weight: float = 1.0,
    mask: Array | None = None,
    ndim: int = 2,
    temperature: float | Array = 1.0,
    distance: str = "euclidean",
) -> ArrayT:
    """`dsnt_core.dsnt_loss` written as a chain of full-size operations.

    ``distance`` chooses the per-point coordinate loss: ``"euclidean"`` (`euclidean_loss`, the
    paper's and the fused loss's), ``"l1"`` (`l1_loss`) or ``"mse"`` (`mse_loss`), both averaged
    over the coordinates as in dsntnn. ``ndim`` may be any number from 1, and ``sigma`` an
    array broadcastable to ``target.shape``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> from dsnt_core.composed import composed_dsnt_loss
    >>> rng = np.random.default_rng(1)
    >>> logits, target = rng.normal(size=(2, 8, 8)), rng.uniform(-0.5, 0.5, size=(2, 2))
    >>> bool(np.isclose(composed_dsnt_loss(logits, target), dsnt_core.dsnt_loss(logits, target)))
    True
    >>> float(composed_dsnt_loss(logits, target, distance="mse", regularizer=None)) > 0
    True
    """
    check_choice(distance, "distance", DISTANCES)
    heatmaps = flat_softmax(logits, ndim=ndim, temperature=temperature)
    losses: Array = _DISTANCE_LOSSES[distance](dsnt(heatmaps, ndim=ndim), target)
    if regularizer == "js":
        losses = losses + reg_weight * js_regularizer(heatmaps, target, sigma)
    elif regularizer == "kl":
        losses = losses + reg_weight * kl_regularizer(heatmaps, target, sigma)
    elif regularizer == "var":
        losses = losses + reg_weight * variance_regularizer(heatmaps, sigma, ndim=ndim)
    return like_input(namespace_of(logits=logits), average_loss(losses, mask=mask), logits)
