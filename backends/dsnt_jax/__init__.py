"""JAX adapter: the core's fused rules registered with ``jax.custom_jvp``.

A JVP rule (rather than a VJP) keeps forward mode (``jax.jacfwd``, ``jax.jvp``) working;
the tangent map is wrapped in ``jax.checkpoint``, so that reverse mode keeps only the
logits and small per-heatmap residuals and recomputes the softmax in the backward pass.
``dsnt_core.soft_argmax`` and ``dsnt_core.dsnt_loss`` route JAX arrays here on their own.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from dsnt_core import _fused_rules as rules
from dsnt_core.composed import composed_dsnt_loss

xp = jnp


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _soft_argmax(logits: jax.Array, ndim: int, temperature: float) -> jax.Array:
    return rules.soft_argmax_forward(xp, logits, ndim, temperature)[0]


@_soft_argmax.defjvp
def _soft_argmax_jvp(ndim: int, temperature: float, primals: tuple, tangents: tuple) -> tuple:
    (logits,), (tangent,) = primals, tangents
    coords, residuals = rules.soft_argmax_forward(xp, logits, ndim, temperature)

    def tangent_map(z: jax.Array, res: dict, dz: jax.Array) -> jax.Array:
        return rules.soft_argmax_jvp(xp, z, res, dz, ndim, temperature)

    return coords, jax.checkpoint(tangent_map)(logits, residuals, tangent)


def _composed(logits: jax.Array, target: jax.Array, mask: Any, options: rules.LossOptions) -> Any:
    return composed_dsnt_loss(logits, target, mask=mask, **options.as_kwargs())


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _dsnt_loss(logits: jax.Array, target: jax.Array, mask: Any, options: rules.LossOptions) -> Any:
    loss, _ = rules.dsnt_loss_forward(xp, logits, target, mask, options)
    return loss.astype(logits.dtype)


def _is_zero(tangent: Any) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _dsnt_loss_jvp(options: rules.LossOptions, primals: tuple, tangents: tuple) -> tuple:
    logits, target, mask = primals
    d_logits, d_target, d_mask = tangents
    loss, residuals = rules.dsnt_loss_forward(xp, logits, target, mask, options)
    loss = loss.astype(logits.dtype)
    out = jnp.zeros_like(loss)
    if not _is_zero(d_logits):

        def tangent_map(z: jax.Array, t: jax.Array, m: Any, res: dict, dz: jax.Array) -> jax.Array:
            grad = rules.dsnt_loss_backward(xp, z, t, m, res, jnp.ones((), z.dtype), options)
            return jnp.sum(grad * dz).astype(z.dtype)

        out = out + jax.checkpoint(tangent_map)(logits, target, mask, residuals, d_logits)
    # The target (and a float mask) rarely need a gradient; when they do, differentiate
    # the composed form with respect to them only.
    if not _is_zero(d_target):
        _, t_out = jax.jvp(lambda t: _composed(logits, t, mask, options), (target,), (d_target,))
        out = out + t_out.astype(out.dtype)
    if mask is not None and not _is_zero(d_mask):
        _, m_out = jax.jvp(lambda m: _composed(logits, target, m, options), (mask,), (d_mask,))
        out = out + m_out.astype(out.dtype)
    return loss, out


_dsnt_loss.defjvp(_dsnt_loss_jvp, symbolic_zeros=True)


def soft_argmax(logits: jax.Array, *, ndim: int, temperature: float) -> jax.Array:
    """Fused soft-argmax with the core's gradient rule (inputs already validated)."""
    return _soft_argmax(logits, ndim, temperature)


def dsnt_loss(logits: jax.Array, target: jax.Array, mask: Any, options: rules.LossOptions) -> Any:
    """Fused DSNT loss with the core's gradient rule (inputs already validated)."""
    return _dsnt_loss(logits, target, mask, options)


__all__ = ["dsnt_loss", "soft_argmax"]
