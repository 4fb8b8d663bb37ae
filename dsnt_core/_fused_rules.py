"""Fused softmax + DSNT (+ loss) forward passes and their gradient rules, written once.

Every framework adapter calls these functions; none of them keeps anything of heatmap size
between the forward and the backward pass except the logits themselves. The forward pass
returns small per-heatmap residuals (log-sum-exp, means, variances, a divergence), and the
backward pass recomputes ``P = exp(z / T - lse)`` from the logits.

For ``P = softmax(z / T)`` and a scalar ``L(P)`` with ``G = dL/dP`` the rule is
``dL/dz = P * (G - <G, P>) / T``. The pieces of ``G`` used here:

* a mean ``mu_k = <P, X_k>``: ``G = X_k``;
* a variance ``var_k = <P, (X_k - mu_k)^2>`` (through ``mu_k`` too): ``G = (X_k - mu_k)^2``;
* ``KL(P || Q)`` with fixed ``Q``: ``G = log P - log Q`` (+1, which the rule cancels);
* ``JS(P, Q)`` with ``M = (P + Q) / 2``: ``G = log(P / M) / 2``.

``<G, P>`` of each piece is a per-heatmap number from the forward pass (``mu_k``,
``var_k``, the KL, half of ``KL(P || M)``), so the backward pass is a single elementwise map
over the logits.

Everything of heatmap size goes through ``passes`` (:mod:`dsnt_core._heatmap_passes` by
default, the array-API implementation); a backend can pass its own native passes, and the
rules here stay the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import _heatmap_passes as generic_passes
from ._array_utils import (
    Array,
    Namespace,
    compute_dtype,
    device_of,
    exp_clamped,
    safe_where_positive,
    spatial_axes,
    to_dtype,
)
from ._heatmap_passes import Divergence
from .expectation import expected_coordinates, marginals, moments
from .gaussian import log_gaussian_factors
from .losses import _norm


@dataclass(frozen=True)
class LossOptions:
    """Static options of the fused loss (hashable, so JAX can treat them as static)."""

    ndim: int = 2
    temperature: float = 1.0
    sigma: float = 1.0
    regularizer: str | None = "js"
    reg_weight: float = 1.0

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of ``dsnt_loss`` and ``composed_dsnt_loss``."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- soft_argmax


def soft_argmax_forward(
    xp: Namespace, logits: Array, ndim: int, temperature: float, *, passes: ModuleType = generic_passes
) -> tuple[Array, dict[str, Array]]:
    """Coordinates of ``softmax(logits / T)`` (input dtype) and the residuals for its rules."""
    stats = passes.softmax_statistics(xp, logits, ndim, temperature)
    coords = expected_coordinates(xp, stats["margins"], passes.coordinate_grids(xp, logits, ndim))
    return to_dtype(xp, coords, logits.dtype), {"lse": stats["lse"], "mu": coords}


def soft_argmax_backward(
    xp: Namespace,
    logits: Array,
    residuals: dict[str, Array],
    cotangent: Array,
    ndim: int,
    temperature: float,
    *,
    passes: ModuleType = generic_passes,
) -> Array:
    """Vector-Jacobian product: ``d <cotangent, coords> / d logits`` in the logits' dtype."""
    mu = residuals["mu"]
    ct = to_dtype(xp, cotangent, mu.dtype)
    grids = passes.coordinate_grids(xp, logits, ndim)
    # <G, P> = sum_k ct_k mu_k is folded into the x factor: one full-size pass fewer.
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    per_axis[0] = per_axis[0] - xp.sum(ct * mu, axis=-1)[..., None]
    grad = passes.gradient_map(xp, logits, residuals["lse"], per_axis, None, ndim, temperature)
    return to_dtype(xp, grad, logits.dtype)


def soft_argmax_jvp(
    xp: Namespace,
    logits: Array,
    residuals: dict[str, Array],
    tangent: Array,
    ndim: int,
    temperature: float,
) -> Array:
    """Jacobian-vector product: the change of the coordinates along ``tangent``."""
    u = generic_passes.scaled_logits(xp, logits, temperature)
    p = xp.exp(u - generic_passes.keep_spatial(xp, residuals["lse"], ndim))
    weighted = p * to_dtype(xp, tangent, u.dtype)
    total = xp.sum(weighted, axis=spatial_axes(ndim))
    grids = generic_passes.coordinate_grids(xp, logits, ndim)
    coords = [xp.sum(m * g, axis=-1) for m, g in zip(marginals(xp, weighted, ndim), grids)]
    result = xp.stack(coords, axis=-1) - residuals["mu"] * total[..., None]
    if temperature != 1.0:
        result = result / temperature
    return to_dtype(xp, result, logits.dtype)


# ------------------------------------------------------------------------------ dsnt_loss


def point_weights(xp: Namespace, mask: Array | None, shape: tuple[int, ...], like: Array) -> Array:
    """Weight of each point in the average: ``mask / max(sum(mask), 1)`` or ``1 / count``."""
    if mask is None:
        return xp.full(shape, 1.0 / max(math.prod(shape), 1), dtype=like.dtype, device=device_of(like))
    weights = xp.astype(mask, like.dtype)
    total = xp.sum(weights)
    return weights / xp.maximum(total, xp.ones_like(total))


def _variance_scale(xp: Namespace, logits: Array, ndim: int, like: Array) -> Array:
    """``(n_k / 2) ** 2`` per axis, (x, y[, z]) order: normalised to pixel variance units."""
    scale = [(logits.shape[-1 - k] / 2.0) ** 2 for k in range(ndim)]
    return xp.asarray(scale, dtype=like.dtype, device=device_of(like))


def dsnt_loss_forward(
    xp: Namespace,
    logits: Array,
    target: Array,
    mask: Array | None,
    options: LossOptions,
    *,
    passes: ModuleType = generic_passes,
) -> tuple[Array, dict[str, Array]]:
    """Scalar loss (compute dtype) and the per-heatmap residuals of its gradient rule."""
    ndim, temperature = options.ndim, options.temperature
    t = to_dtype(xp, target, compute_dtype(xp, logits.dtype))
    log_factors = factors = None
    if options.regularizer in ("kl", "js"):
        log_factors = log_gaussian_factors(xp, t, tuple(logits.shape[-ndim:]), options.sigma)
        if options.regularizer == "js":
            factors = [exp_clamped(xp, lg) for lg in log_factors]
    stats = passes.softmax_statistics(
        xp, logits, ndim, temperature, entropy=log_factors is not None, mixture=factors
    )
    margins = stats["margins"]
    mu, var = moments(xp, margins, passes.coordinate_grids(xp, logits, ndim))
    weights = point_weights(xp, mask, tuple(t.shape[:-1]), mu)
    per_point = _norm(xp, mu - t)
    residuals = {"lse": stats["lse"], "mu": mu}
    if options.regularizer == "var":
        error = var * _variance_scale(xp, logits, ndim, mu) - options.sigma**2
        per_point = per_point + options.reg_weight * xp.sum(error * error, axis=-1)
        residuals["var"] = var
    elif log_factors is not None:
        neg_entropy = stats["neg_entropy"]
        if factors is None:  # KL(P || Q)
            divergence = neg_entropy - sum(xp.sum(m * lg, axis=-1) for m, lg in zip(margins, log_factors))
            residuals["divergence"] = divergence
        else:
            gaussian_neg_entropy = sum(xp.sum(f * lg, axis=-1) for f, lg in zip(factors, log_factors))
            divergence = 0.5 * (neg_entropy + gaussian_neg_entropy - 2.0 * stats["m_log_m"])
            residuals["divergence"] = neg_entropy - stats["p_log_m"]  # KL(P || M)
        per_point = per_point + options.reg_weight * divergence
    return xp.sum(weights * per_point), residuals


def dsnt_loss_backward(
    xp: Namespace,
    logits: Array,
    target: Array,
    mask: Array | None,
    residuals: dict[str, Array],
    cotangent: Array,
    options: LossOptions,
    *,
    passes: ModuleType = generic_passes,
) -> Array:
    """Gradient of ``cotangent * loss`` with respect to the logits, in the logits' dtype."""
    ndim = options.ndim
    mu = residuals["mu"]
    t = to_dtype(xp, target, mu.dtype)
    grids = passes.coordinate_grids(xp, logits, ndim)
    scale = to_dtype(xp, cotangent, mu.dtype) * point_weights(xp, mask, tuple(t.shape[:-1]), mu)

    diff = mu - t
    distance = _norm(xp, diff)
    mean_coef = diff * (scale / safe_where_positive(xp, distance, 1.0))[..., None]
    per_axis = [mean_coef[..., k : k + 1] * grids[k] for k in range(ndim)]
    const = xp.sum(mean_coef * mu, axis=-1)

    reg_scale = scale * options.reg_weight
    divergence = None
    if options.regularizer == "var":
        var = residuals["var"]
        pixel_scale = _variance_scale(xp, logits, ndim, mu)
        var_coef = 2.0 * (var * pixel_scale - options.sigma**2) * pixel_scale * reg_scale[..., None]
        for k in range(ndim):
            centred = grids[k] - mu[..., k : k + 1]
            per_axis[k] = per_axis[k] + var_coef[..., k : k + 1] * centred * centred
        const = const + xp.sum(var_coef * var, axis=-1)
    elif options.regularizer in ("kl", "js"):
        # Recomputed from the target (cheap, 1-D), so that nothing but the logits and a few
        # numbers per heatmap is kept between the passes.
        log_factors = log_gaussian_factors(xp, t, tuple(logits.shape[-ndim:]), options.sigma)
        if options.regularizer == "kl":
            for k in range(ndim):
                per_axis[k] = per_axis[k] - reg_scale[..., None] * log_factors[k]
            divergence = Divergence("kl", reg_scale)
            const = const + reg_scale * residuals["divergence"]
        else:
            # G_P = log(P / M) / 2 with log M = log(P + G) - log 2; the log 2 joins the constant.
            divergence = Divergence("js", reg_scale, tuple(exp_clamped(xp, lg) for lg in log_factors))
            const = const + 0.5 * reg_scale * (residuals["divergence"] - math.log(2.0))
    # Per-heatmap constants are folded into the x factor: one full-size pass fewer.
    per_axis[0] = per_axis[0] - const[..., None]
    grad = passes.gradient_map(xp, logits, residuals["lse"], per_axis, divergence, ndim, options.temperature)
    return to_dtype(xp, grad, logits.dtype)
