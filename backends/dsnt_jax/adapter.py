"""The JAX adapter: the core's fused rules registered with ``jax.custom_jvp``.

A JVP rule (rather than a VJP) keeps forward mode (``jax.jacfwd``, ``jax.jvp``) working;
the tangent map is wrapped in ``jax.checkpoint``, so that reverse mode keeps only the
logits and small per-heatmap residuals and recomputes the softmax in the backward pass.
Registered in the ``dsnt_core.adapters`` entry-point group, so ``dsnt_core.soft_argmax``
and ``dsnt_core.dsnt_loss`` route JAX arrays here with validated inputs and the kernel
implementation chosen for the call (a static argument: it is part of the jit cache key).
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from dsnt_core._temperature import is_array_value, tangent_with_temperature
from dsnt_core.composed import composed_dsnt_loss
from dsnt_core.kernels import Kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import soft_argmax_forward, soft_argmax_jvp

xp = jnp


def _is_zero(tangent: Any) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _soft_argmax(logits: jax.Array, ndim: int, temperature: float, kernels: Kernels, units: str) -> jax.Array:
    coords, _ = soft_argmax_forward(xp, logits, ndim, temperature, kernels, units=units)
    return cast(jax.Array, coords)


@_soft_argmax.defjvp
def _soft_argmax_jvp(
    ndim: int, temperature: float, kernels: Kernels, units: str, primals: tuple, tangents: tuple
) -> tuple:
    (logits,), (tangent,) = primals, tangents
    coords, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels, units=units)

    def tangent_map(z: jax.Array, res: Any, dz: jax.Array) -> jax.Array:
        return cast(jax.Array, soft_argmax_jvp(xp, z, res, dz, ndim, temperature, units=units))

    return coords, jax.checkpoint(tangent_map)(logits, residuals, tangent)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _soft_argmax_array_temperature(
    logits: jax.Array, temperature: jax.Array, ndim: int, kernels: Kernels, units: str
) -> jax.Array:
    coords, _ = soft_argmax_forward(xp, logits, ndim, temperature, kernels, units=units)
    return cast(jax.Array, coords)


def _soft_argmax_array_temperature_jvp(
    ndim: int, kernels: Kernels, units: str, primals: tuple, tangents: tuple
) -> tuple:
    logits, temperature = primals
    d_logits, d_temperature = (None if _is_zero(t) else t for t in tangents)
    coords, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels, units=units)
    if d_logits is None and d_temperature is None:
        return coords, jnp.zeros_like(coords)

    def tangent_map(z: jax.Array, t: jax.Array, res: Any, dz: Any, dt: Any) -> jax.Array:
        moved = dz if dt is None else tangent_with_temperature(xp, z, dz, t, dt, ndim)
        return cast(jax.Array, soft_argmax_jvp(xp, z, res, moved, ndim, t, units=units))

    return coords, jax.checkpoint(tangent_map)(logits, temperature, residuals, d_logits, d_temperature)


_soft_argmax_array_temperature.defjvp(_soft_argmax_array_temperature_jvp, symbolic_zeros=True)


def _composed(logits: jax.Array, target: jax.Array, mask: Any, options: LossOptions) -> Any:
    return composed_dsnt_loss(logits, target, mask=mask, **options.as_kwargs())


@partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _dsnt_loss(
    logits: jax.Array, target: jax.Array, mask: Any, temperature: Any, sigma: Any, static: LossOptions, kernels: Kernels
) -> Any:
    options = static.with_arrays(temperature, sigma)
    loss, _ = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
    return cast(jax.Array, loss).astype(logits.dtype)


def _dsnt_loss_jvp(static: LossOptions, kernels: Kernels, primals: tuple, tangents: tuple) -> tuple:
    logits, target, mask, temperature, sigma = primals
    d_logits, d_target, d_mask, d_temperature, d_sigma = (None if _is_zero(t) else t for t in tangents)
    options = static.with_arrays(temperature, sigma)
    computed, residuals = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
    loss = cast(jax.Array, computed).astype(logits.dtype)
    out = jnp.zeros_like(loss)
    if d_logits is not None or (temperature is not None and d_temperature is not None):

        def tangent_map(z: jax.Array, t: jax.Array, m: Any, temp: Any, sig: Any, res: Any, dz: Any, dt: Any) -> Any:
            opts = static.with_arrays(temp, sig)
            moved = dz if dt is None else tangent_with_temperature(xp, z, dz, temp, dt, static.ndim)
            grad = dsnt_loss_backward(xp, z, t, m, res, jnp.ones((), z.dtype), opts, kernels)
            return jnp.sum(cast(jax.Array, grad) * cast(jax.Array, moved)).astype(z.dtype)

        arguments = (logits, target, mask, temperature, sigma, residuals, d_logits, d_temperature)
        out = out + jax.checkpoint(tangent_map)(*arguments)
    # The target, a float mask and sigma rarely need a gradient; when they do, differentiate
    # the composed form with respect to them only.
    for name, primal, tangent in (("target", target, d_target), ("mask", mask, d_mask), ("sigma", sigma, d_sigma)):
        if primal is None or tangent is None:
            continue

        def composed_of(value: Any, name: str = name) -> Any:
            given = {"target": target, "mask": mask, "sigma": sigma, name: value}
            return _composed(logits, given["target"], given["mask"], options.with_arrays(None, given["sigma"]))

        _, partial_out = jax.jvp(composed_of, (primal,), (tangent,))
        out = out + partial_out.astype(out.dtype)
    return loss, out


_dsnt_loss.defjvp(_dsnt_loss_jvp, symbolic_zeros=True)


def soft_argmax(
    logits: jax.Array, *, ndim: int, temperature: Any, kernels: Kernels, units: str = "normalized"
) -> jax.Array:
    """Fused soft-argmax with the core's gradient rule (inputs already validated).

    Parameters
    ----------
    logits : jax.Array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float or jax.Array
        Softmax temperature: a number (static), or an array broadcastable to the leading shape
        (differentiable).
    kernels : Kernels
        The kernel implementation for the call.
    units : {"normalized", "pixels"}
        The units of the coordinates.

    Returns
    -------
    jax.Array of shape (..., ndim)
        Coordinates in (x, y[, z]) order, in the logits' dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from dsnt_jax import adapter
    >>> from dsnt_core.kernels import array_api_kernels
    >>> adapter.soft_argmax(jnp.zeros((1, 4, 4)), ndim=2, temperature=1.0, kernels=array_api_kernels()).tolist()
    [[0.0, 0.0]]
    """
    if is_array_value(temperature):
        return _soft_argmax_array_temperature(logits, temperature, ndim, kernels, units)
    return _soft_argmax(logits, ndim, temperature, kernels, units)


def dsnt_loss(logits: jax.Array, target: jax.Array, mask: Any, options: LossOptions, *, kernels: Kernels) -> Any:
    """Fused DSNT loss with the core's gradient rule (inputs already validated).

    Parameters
    ----------
    logits : jax.Array of shape (..., *spatial)
        Unnormalised heatmaps, one per point; the last ``ndim`` axes are spatial.
    target : jax.Array of shape (..., ndim)
        Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
    mask : jax.Array of shape (...) or None
        Boolean or float weights of the points.
    options : LossOptions
        The loss's static options (``sigma``, ``regularizer``...).
    kernels : Kernels
        The kernel implementation for the call.

    Returns
    -------
    jax.Array
        The 0-d loss, in the logits' dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from dsnt_jax import adapter
    >>> from dsnt_core.kernels import array_api_kernels
    >>> from dsnt_core.ops.dsnt_loss import LossOptions
    >>> logits, target = jnp.zeros((1, 4, 4)), jnp.zeros((1, 2))  # uniform heatmap, centred target
    >>> float(adapter.dsnt_loss(logits, target, None, LossOptions(regularizer=None), kernels=array_api_kernels()))
    0.0
    """
    static, temperature, sigma = options.arrays_split()
    return _dsnt_loss(logits, target, mask, temperature, sigma, static, kernels)


__all__ = ["dsnt_loss", "soft_argmax"]
