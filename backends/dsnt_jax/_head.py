"""What the Flax heads (``flax.linen`` and ``flax.nnx``) compute from the logits, written once."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dsnt_core import dsnt, flat_softmax, heatmap_confidence, soft_argmax


def _pixel_soft_argmax(logits: jax.Array, ndim: int, temperature: Any) -> jax.Array:
    """``soft_argmax`` in pixels: the expectation of the pixel grid ``arange(n)``, in float32 or wider.

    The composed route (``flat_softmax``, then ``dsnt(..., units="pixels")``): XLA turns a
    division by a constant into a multiplication by its reciprocal, so the normalised grid of
    the fused ``soft_argmax`` can be an ulp off, and its conversion to pixels would leave about
    ``n * 1e-7`` pixels at pixel centres; the pixel grid is exact.
    """
    wide = logits if logits.dtype in (jnp.float32, jnp.float64) else logits.astype(jnp.float32)
    heatmaps = flat_softmax(wide, ndim=ndim, temperature=temperature)
    return dsnt(heatmaps, ndim=ndim, units="pixels").astype(logits.dtype)


def head_outputs(
    logits: jax.Array,
    *,
    ndim: int,
    temperature: Any,
    units: str,
    return_heatmaps: bool,
    confidence: str | None,
) -> jax.Array | tuple[jax.Array, ...]:
    """The coordinates of ``logits``, then the heatmaps and the confidence scores where asked for.

    Parameters
    ----------
    logits : jax.Array of shape (..., *spatial)
        One logit map per point.
    ndim : int
        Number of spatial axes.
    temperature : float or jax.Array
        Softmax temperature (an array: one per point or fewer, differentiable).
    units : {"normalized", "pixels"}
        Units of the coordinates.
    return_heatmaps : bool
        Also return the normalised heatmaps.
    confidence : {"peak", "spread", "entropy"} or None
        Also return this score per point.

    Returns
    -------
    jax.Array or tuple of jax.Array
        ``coords``, or ``(coords, [heatmaps], [scores])``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from dsnt_jax._head import head_outputs
    >>> coords, scores = head_outputs(
    ...     jnp.zeros((1, 4, 4)), ndim=2, temperature=1.0, units="pixels", return_heatmaps=False, confidence="peak"
    ... )
    >>> coords.tolist(), scores.tolist()
    ([[1.5, 1.5]], [0.0625])
    """
    if units == "pixels":
        coords = _pixel_soft_argmax(logits, ndim, temperature)
    else:
        coords = soft_argmax(logits, ndim=ndim, temperature=temperature)
    if not (return_heatmaps or confidence is not None):
        return coords
    heatmaps = flat_softmax(logits, ndim=ndim, temperature=temperature)
    outputs = [coords, heatmaps] if return_heatmaps else [coords]
    if confidence is not None:
        outputs.append(heatmap_confidence(heatmaps, ndim=ndim, method=confidence))
    return tuple(outputs)
