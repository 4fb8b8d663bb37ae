"""Flax (``flax.linen``) modules: a DSNT head and the DSNT loss, mirroring ``dsnt_torch``'s.

They call the core's fused operations, so ``jax.jit``, ``jax.grad`` and ``jax.vmap`` go through
the JAX adapter's rules (``dsnt_jax.adapter``). Flax lays features out channels-last: the
head's optional 1x1 convolution takes features of shape (batch, *spatial, in_features), as
``flax.linen.Conv`` does, and gives one logit map per point, (batch, num_points, *spatial).
Requires ``flax`` (not a dependency of ``dsnt_jax`` itself): import this module explicitly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsnt_core import dsnt_loss
from dsnt_core._validation import (
    CONFIDENCE_METHODS,
    DISTANCES,
    REGULARIZERS,
    UNITS,
    check_choice,
    check_ndim,
    check_positive_finite,
)

from ._head import head_outputs

__all__ = ["DSNTHead", "DSNTLoss"]


class DSNTHead(nn.Module):
    """Turn features or logits into coordinates (and optionally the heatmaps and confidence scores).

    The Flax counterpart of ``dsnt_torch.DSNTHead``, with the same options.

    Parameters
    ----------
    num_points : int, optional
        When given, a 1x1 convolution (``flax.linen.Conv``) first maps channels-last features
        (batch, *spatial, in_features) to one logit map per point, moved to
        (batch, num_points, *spatial). Without it the input is the logits (..., *spatial).
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature (the initial value when ``learn_temperature``).
    learn_temperature : bool
        Make the temperature a parameter ``log_temperature`` (used as ``exp(log_temperature)``,
        positive by construction), one per point when ``num_points`` is given, else one for
        all; its gradient comes from the fused rules.
    return_heatmaps : bool
        Also return the normalised heatmaps.
    units : {"normalized", "pixels"}
        Coordinates normalised to (-1, 1) (pixel centres), or in pixels (pixel ``j`` at ``j``):
        the expectation of the pixel grid in float32 or wider, exact at pixel centres in
        bfloat16 too (through ``flat_softmax`` and ``dsnt``, not the fused ``soft_argmax``).
    return_confidence : bool
        Also return one score per point, `dsnt_core.heatmap_confidence` of the heatmaps.
    confidence : {"peak", "spread", "entropy"}
        Which score ``return_confidence`` gives.
    parent, name : optional
        Flax's own fields of every ``linen.Module`` (the enclosing module, the name in it).

    Raises
    ------
    ValueError
        If ``ndim`` is not 1, 2 or 3, or ``units`` or ``confidence`` is not one of its choices.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dsnt_jax.flax_modules import DSNTHead
    >>> head = DSNTHead(num_points=3, return_confidence=True)
    >>> features = jnp.ones((2, 16, 16, 8))  # channels-last, as flax.linen.Conv
    >>> params = head.init(jax.random.key(0), features)
    >>> coords, scores = jax.jit(head.apply)(params, features)
    >>> coords.shape, scores.shape
    ((2, 3, 2), (2, 3))
    """

    num_points: int | None = None
    ndim: int = 2
    temperature: float = 1.0
    learn_temperature: bool = False
    return_heatmaps: bool = False
    units: str = "normalized"
    return_confidence: bool = False
    confidence: str = "peak"

    def __post_init__(self) -> None:
        check_ndim(self.ndim)
        check_positive_finite(self.temperature, "temperature")
        check_choice(self.units, "units", UNITS)
        check_choice(self.confidence, "confidence", CONFIDENCE_METHODS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        """The coordinates of ``x`` (and its heatmaps, its confidence scores, when asked for).

        Parameters
        ----------
        x : jax.Array
            Channels-last features (batch, *spatial, in_features) when the head has a
            convolution (``num_points``), else logits (..., *spatial).

        Returns
        -------
        coords : jax.Array of shape (..., ndim)
            Coordinates in (x, y[, z]) order, one per logit map, normalised or in pixels (``units``).
        heatmaps : jax.Array
            The normalised heatmaps, of the logits' shape; only with ``return_heatmaps``.
        confidence : jax.Array of shape (...)
            One score per logit map in [0, 1]; only with ``return_confidence``.
        """
        logits = x
        if self.num_points is not None:
            conv = nn.Conv(self.num_points, kernel_size=(1,) * self.ndim, name="to_logits")
            logits = jnp.moveaxis(conv(x), -1, -(self.ndim + 1))
        temperature: Any = self.temperature
        if self.learn_temperature:
            shape = (self.num_points,) if self.num_points is not None else ()
            initial = math.log(self.temperature)
            log_temperature = self.param("log_temperature", lambda _key, shape: jnp.full(shape, initial), shape)
            temperature = jnp.exp(log_temperature)
        return head_outputs(
            logits,
            ndim=self.ndim,
            temperature=temperature,
            units=self.units,
            return_heatmaps=self.return_heatmaps,
            confidence=self.confidence if self.return_confidence else None,
        )


class DSNTLoss(nn.Module):
    """The DSNT loss from logits, `dsnt_core.dsnt_loss`, as a Flax module (it has no parameters).

    The Flax counterpart of ``dsnt_torch.DSNTLoss``.

    Parameters
    ----------
    sigma : float
        Target standard deviation of the heatmaps, in pixels.
    regularizer : {"js", "kl", "var", None}
        Which regulariser to add.
    reg_weight : float
        Its weight.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.
    distance : {"euclidean", "l1", "mse"}
        The per-point coordinate loss (dsntnn's definitions).
    parent, name : optional
        Flax's own fields of every ``linen.Module`` (the enclosing module, the name in it).

    Raises
    ------
    ValueError
        If ``ndim`` is not 1, 2 or 3, or ``regularizer`` or ``distance`` is not one of its choices.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dsnt_jax.flax_modules import DSNTLoss
    >>> loss = DSNTLoss(sigma=1.0, regularizer="js")
    >>> logits, target = jnp.zeros((2, 3, 16, 16)), jnp.zeros((2, 3, 2))
    >>> grad = jax.jit(jax.grad(lambda z: loss.apply({}, z, target)))(logits)
    >>> grad.shape
    (2, 3, 16, 16)
    """

    sigma: float = 1.0
    regularizer: str | None = "js"
    reg_weight: float = 1.0
    ndim: int = 2
    temperature: float = 1.0
    distance: str = "euclidean"

    def __post_init__(self) -> None:
        check_ndim(self.ndim)
        check_choice(self.regularizer, "regularizer", REGULARIZERS)
        check_choice(self.distance, "distance", DISTANCES)
        super().__post_init__()

    def __call__(self, logits: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> Any:
        """The loss of ``logits`` against ``target``.

        Parameters
        ----------
        logits : jax.Array of shape (..., *spatial)
            Unnormalised heatmaps, one per point; the last ``ndim`` axes are spatial.
        target : jax.Array of shape (..., ndim)
            Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
        mask : jax.Array of shape (...), optional
            Boolean or float weights of the points.

        Returns
        -------
        jax.Array
            The 0-d loss, in the logits' dtype.
        """
        return dsnt_loss(
            logits,
            target,
            mask=mask,
            sigma=self.sigma,
            regularizer=self.regularizer,
            reg_weight=self.reg_weight,
            ndim=self.ndim,
            temperature=self.temperature,
            distance=self.distance,
        )
