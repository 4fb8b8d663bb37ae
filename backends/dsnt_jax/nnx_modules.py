"""Flax NNX modules (``flax.nnx``): a DSNT head and the DSNT loss, mirroring ``dsnt_torch``'s.

The NNX counterparts of `dsnt_jax.flax_modules` (``flax.linen``): the same options and
results, with NNX's eager, stateful modules (parameters live on the module; ``nnx.jit`` and
``nnx.grad`` transform them). Like ``flax.nnx.Conv``, the head's optional 1x1 convolution takes
channels-last features (batch, *spatial, in_features) and gives one logit map per point,
(batch, num_points, *spatial). Requires ``flax`` (the ``flax`` extra): import this module
explicitly.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dsnt_core import dsnt_loss
from dsnt_core._validation import (
    CONFIDENCE_METHODS,
    DISTANCES,
    REGULARIZERS,
    UNITS,
    check_choice,
    check_ndim,
    check_nonnegative_finite,
    check_positive_finite,
)

from ._head import head_outputs

__all__ = ["DSNTHead", "DSNTLoss"]


class DSNTHead(nnx.Module):
    """Turn features or logits into coordinates (and optionally the heatmaps and confidence scores).

    Parameters
    ----------
    in_features : int, optional
        With ``num_points``: a 1x1 convolution (``nnx.Conv``) first maps channels-last features
        of ``in_features`` channels to one logit map per point (as in the DSNT paper).
    num_points : int, optional
        Number of points (output channels of the convolution; the number of learnt
        temperatures with ``learn_temperature``).
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
        Coordinates normalised to (-1, 1) (pixel centres), or in pixels (pixel ``j`` at ``j``),
        exact at pixel centres in bfloat16 too.
    return_confidence : bool
        Also return one score per point, `dsnt_core.heatmap_confidence` of the heatmaps.
    confidence : {"peak", "spread", "entropy"}
        Which score ``return_confidence`` gives.
    rngs : nnx.Rngs, optional
        Random streams for the convolution's initial weights (needed with ``in_features``).

    Raises
    ------
    ValueError
        If ``in_features`` and ``num_points`` are not given together (or the convolution has no
        ``rngs``), ``ndim`` is not 1, 2 or 3, ``temperature`` is not positive, or ``units`` or
        ``confidence`` is not one of its choices.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from dsnt_jax.nnx_modules import DSNTHead
    >>> head = DSNTHead(8, 3, return_confidence=True, learn_temperature=True, rngs=nnx.Rngs(0))
    >>> coords, scores = nnx.jit(lambda model, x: model(x))(head, jnp.ones((2, 16, 16, 8)))
    >>> coords.shape, scores.shape, head.log_temperature.value.shape
    ((2, 3, 2), (2, 3), (3,))
    """

    def __init__(
        self,
        in_features: int | None = None,
        num_points: int | None = None,
        *,
        ndim: int = 2,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        return_heatmaps: bool = False,
        units: str = "normalized",
        return_confidence: bool = False,
        confidence: str = "peak",
        rngs: nnx.Rngs | None = None,
    ) -> None:
        self.ndim = check_ndim(ndim)
        self.temperature = check_positive_finite(temperature, "temperature")
        self.units = check_choice(units, "units", UNITS)
        self.confidence = check_choice(confidence, "confidence", CONFIDENCE_METHODS)
        self.return_heatmaps, self.return_confidence = return_heatmaps, return_confidence
        if (in_features is None) != (num_points is None):
            raise ValueError(f"in_features and num_points must be given together, got {in_features} and {num_points}")
        conv = log_temperature = None
        if in_features is not None and num_points is not None:
            if rngs is None:
                raise ValueError("rngs (an nnx.Rngs) must be given for the convolution's initial weights")
            conv = nnx.Conv(in_features, num_points, kernel_size=(1,) * self.ndim, rngs=rngs)
        if learn_temperature:
            shape = (num_points,) if num_points is not None else ()
            log_temperature = nnx.Param(jnp.full(shape, math.log(temperature)))
        # Data attributes (state that NNX transforms carry), present or not.
        self.to_logits: nnx.Conv | None = nnx.data(conv)
        self.log_temperature: nnx.Param | None = nnx.data(log_temperature)

    def current_temperature(self) -> Any:
        """The softmax temperature: the number given, or ``exp(log_temperature)`` when learnt.

        Returns
        -------
        float or jax.Array
            The temperature the next call uses.
        """
        return self.temperature if self.log_temperature is None else jnp.exp(self.log_temperature.value)

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        """The coordinates of ``x`` (and its heatmaps, its confidence scores, when asked for).

        Parameters
        ----------
        x : jax.Array
            Channels-last features (batch, *spatial, in_features) when the head has a
            convolution, else logits (..., *spatial).

        Returns
        -------
        coords : jax.Array of shape (..., ndim)
            Coordinates in (x, y[, z]) order, one per logit map, normalised or in pixels (``units``).
        heatmaps : jax.Array
            The normalised heatmaps, of the logits' shape; only with ``return_heatmaps``.
        confidence : jax.Array of shape (...)
            One score per logit map in [0, 1]; only with ``return_confidence``.
        """
        logits = x if self.to_logits is None else jnp.moveaxis(self.to_logits(x), -1, -(self.ndim + 1))
        return head_outputs(
            logits,
            ndim=self.ndim,
            temperature=self.current_temperature(),
            units=self.units,
            return_heatmaps=self.return_heatmaps,
            confidence=self.confidence if self.return_confidence else None,
        )


class DSNTLoss(nnx.Module):
    """The DSNT loss from logits, `dsnt_core.dsnt_loss`, as an NNX module (it has no parameters).

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
        The per-point coordinate loss.

    Raises
    ------
    ValueError
        If an option is out of its range or not one of its choices.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dsnt_jax.nnx_modules import DSNTLoss
    >>> loss = DSNTLoss(sigma=1.0)
    >>> grad = jax.jit(jax.grad(lambda z: loss(z, jnp.zeros((2, 3, 2)))))(jnp.zeros((2, 3, 16, 16)))
    >>> grad.shape
    (2, 3, 16, 16)
    """

    def __init__(
        self,
        *,
        sigma: float = 1.0,
        regularizer: str | None = "js",
        reg_weight: float = 1.0,
        ndim: int = 2,
        temperature: float = 1.0,
        distance: str = "euclidean",
    ) -> None:
        self.options: dict[str, Any] = dict(
            sigma=check_positive_finite(sigma, "sigma"),
            regularizer=check_choice(regularizer, "regularizer", REGULARIZERS),
            reg_weight=check_nonnegative_finite(reg_weight, "reg_weight"),
            ndim=check_ndim(ndim),
            temperature=check_positive_finite(temperature, "temperature"),
            distance=check_choice(distance, "distance", DISTANCES),
        )

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
        return dsnt_loss(logits, target, mask=mask, **self.options)
