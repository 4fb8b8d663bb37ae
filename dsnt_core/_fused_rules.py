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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ._array_utils import (
    Array,
    Namespace,
    device_of,
    safe_where_positive,
    spatial_axes,
    spatial_size,
    to_compute,
    to_dtype,
)
from .expectation import coordinate_grids, expected_coordinates, marginals, moments
from .gaussian import log_gaussian_factors, outer_product, outer_sum
from .losses import _norm
from .normalization import shifted_exp


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


def _scaled_logits(xp: Namespace, logits: Array, temperature: float) -> Array:
    z = to_compute(xp, logits)
    return z / temperature if temperature != 1.0 else z


def _floor(xp: Namespace, x: Array) -> Array:
    """Replace ``-inf`` by the most negative finite value, so that ``0 * x`` stays 0."""
    return xp.maximum(x, xp.asarray(xp.finfo(x.dtype).min, dtype=x.dtype, device=device_of(x)))


def _softmax_statistics(xp: Namespace, u: Array, ndim: int) -> dict[str, Any]:
    """One pass over scaled logits ``u``: log-sum-exp and the marginals of ``softmax(u)``.

    A heatmap whose logits are all ``-inf`` is treated as uniform in the forward values; its
    ``lse`` is 0, so the backward pass (``exp(u - lse) = 0``) gives it a zero gradient.
    """
    peak, shifted, exp_shifted = shifted_exp(xp, u, ndim)
    raw_margins = marginals(xp, exp_shifted, ndim)
    total = xp.sum(raw_margins[0], axis=-1)  # from a marginal: no extra pass over the heatmaps
    has_mass = total > 0
    inv_total = xp.where(has_mass, 1.0 / safe_where_positive(xp, total, 1.0), 0.0 * total)
    margins = []
    for k, margin in enumerate(raw_margins):
        uniform = 1.0 / u.shape[-1 - k]
        margins.append(xp.where(has_mass[..., None], margin * inv_total[..., None], uniform))
    log_total = xp.log(safe_where_positive(xp, total, 1.0))
    lse = xp.reshape(peak, total.shape) + log_total
    return {
        "shifted": shifted,
        "exp_shifted": exp_shifted,
        "has_mass": has_mass,
        "inv_total": inv_total,
        "log_total": log_total,
        "margins": margins,
        "lse": lse,
    }


def _keep_spatial(x: Array, ndim: int, xp: Namespace) -> Array:
    """Per-heatmap values (...,) reshaped to broadcast against (..., *spatial)."""
    return xp.reshape(x, (*x.shape, *((1,) * ndim)))


def recompute_softmax(xp: Namespace, u: Array, lse: Array, ndim: int) -> Array:
    """``P = exp(u - lse)`` from the scaled logits and the saved log-sum-exp."""
    return xp.exp(u - _keep_spatial(lse, ndim, xp))


# --------------------------------------------------------------------------- soft_argmax


def soft_argmax_forward(xp: Namespace, logits: Array, ndim: int, temperature: float) -> tuple[Array, dict[str, Array]]:
    """Coordinates of ``softmax(logits / T)`` (input dtype) and the residuals for its rules."""
    u = _scaled_logits(xp, logits, temperature)
    stats = _softmax_statistics(xp, u, ndim)
    grids = coordinate_grids(xp, u, ndim)
    coords = expected_coordinates(xp, stats["margins"], grids)
    return to_dtype(xp, coords, logits.dtype), {"lse": stats["lse"], "mu": coords}


def soft_argmax_backward(
    xp: Namespace,
    logits: Array,
    residuals: dict[str, Array],
    cotangent: Array,
    ndim: int,
    temperature: float,
) -> Array:
    """Vector-Jacobian product: ``d <cotangent, coords> / d logits`` in the logits' dtype."""
    u = _scaled_logits(xp, logits, temperature)
    p = recompute_softmax(xp, u, residuals["lse"], ndim)
    ct = to_dtype(xp, cotangent, u.dtype)
    grids = coordinate_grids(xp, u, ndim)
    # <G, P> = sum_k ct_k mu_k is folded into the x factor: one full-size pass fewer.
    per_axis = [ct[..., k : k + 1] * grids[k] for k in range(ndim)]
    per_axis[0] = per_axis[0] - xp.sum(ct * residuals["mu"], axis=-1)[..., None]
    grad = p * outer_sum(xp, per_axis)
    if temperature != 1.0:
        grad = grad / temperature
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
    u = _scaled_logits(xp, logits, temperature)
    p = recompute_softmax(xp, u, residuals["lse"], ndim)
    weighted = p * to_dtype(xp, tangent, u.dtype)
    grids = coordinate_grids(xp, u, ndim)
    total = xp.sum(weighted, axis=spatial_axes(ndim))
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


def _variance_scale(xp: Namespace, u: Array, ndim: int) -> Array:
    """``(n_k / 2) ** 2`` per axis, (x, y[, z]) order: normalised to pixel variance units."""
    return xp.asarray([(u.shape[-1 - k] / 2.0) ** 2 for k in range(ndim)], dtype=u.dtype, device=device_of(u))


def _tiny(xp: Namespace, x: Array) -> Array:
    return xp.asarray(xp.finfo(x.dtype).smallest_normal, dtype=x.dtype, device=device_of(x))


def dsnt_loss_forward(
    xp: Namespace, logits: Array, target: Array, mask: Array | None, options: LossOptions
) -> tuple[Array, dict[str, Array]]:
    """Scalar loss (compute dtype) and the per-heatmap residuals of its gradient rule."""
    ndim = options.ndim
    u = _scaled_logits(xp, logits, options.temperature)
    t = to_dtype(xp, target, u.dtype)
    stats = _softmax_statistics(xp, u, ndim)
    margins = stats["margins"]
    mu, var = moments(xp, margins, coordinate_grids(xp, u, ndim))
    weights = point_weights(xp, mask, tuple(t.shape[:-1]), u)
    per_point = _norm(xp, mu - t)
    residuals = {"lse": stats["lse"], "mu": mu}
    if options.regularizer == "var":
        error = var * _variance_scale(xp, u, ndim) - options.sigma**2
        per_point = per_point + options.reg_weight * xp.sum(error * error, axis=-1)
        residuals["var"] = var
    elif options.regularizer in ("kl", "js"):
        size = tuple(u.shape[-ndim:])
        log_factors = log_gaussian_factors(xp, t, size, options.sigma)
        expected_shift = (
            xp.sum(stats["exp_shifted"] * _floor(xp, stats["shifted"]), axis=spatial_axes(ndim)) * stats["inv_total"]
        )
        uniform_neg_entropy = -math.log(spatial_size(u, ndim))
        neg_entropy = xp.where(stats["has_mass"], expected_shift - stats["log_total"], uniform_neg_entropy)
        cross = sum(xp.sum(m * lg, axis=-1) for m, lg in zip(margins, log_factors))
        if options.regularizer == "kl":
            divergence = neg_entropy - cross
            residuals["divergence"] = divergence
        else:
            p = xp.where(
                _keep_spatial(stats["has_mass"], ndim, xp),
                stats["exp_shifted"] * _keep_spatial(stats["inv_total"], ndim, xp),
                1.0 / spatial_size(u, ndim),
            )
            factors = [xp.exp(lg) for lg in log_factors]
            m = 0.5 * (p + outer_product(xp, factors))
            log_m = xp.log(xp.maximum(m, _tiny(xp, m)))
            axes = spatial_axes(ndim)
            gaussian_neg_entropy = sum(xp.sum(f * lg, axis=-1) for f, lg in zip(factors, log_factors))
            divergence = 0.5 * (neg_entropy + gaussian_neg_entropy - 2.0 * xp.sum(m * log_m, axis=axes))
            residuals["divergence"] = neg_entropy - xp.sum(p * log_m, axis=axes)  # KL(P || M)
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
) -> Array:
    """Gradient of ``cotangent * loss`` with respect to the logits, in the logits' dtype."""
    ndim = options.ndim
    u = _scaled_logits(xp, logits, options.temperature)
    t = to_dtype(xp, target, u.dtype)
    divergence = options.regularizer in ("kl", "js")
    if divergence:  # log P is needed too; floored so that 0 * log P stays 0 at -inf logits
        log_p = _floor(xp, u - _keep_spatial(residuals["lse"], ndim, xp))
        p = xp.exp(log_p)
    else:
        p = recompute_softmax(xp, u, residuals["lse"], ndim)
    grids = coordinate_grids(xp, u, ndim)
    mu = residuals["mu"]
    scale = to_dtype(xp, cotangent, u.dtype) * point_weights(xp, mask, tuple(t.shape[:-1]), u)

    diff = mu - t
    distance = _norm(xp, diff)
    mean_coef = diff * (scale / safe_where_positive(xp, distance, 1.0))[..., None]
    per_axis = [mean_coef[..., k : k + 1] * grids[k] for k in range(ndim)]
    const = xp.sum(mean_coef * mu, axis=-1)

    reg_scale = scale * options.reg_weight
    elementwise = None
    if options.regularizer == "var":
        var = residuals["var"]
        pixel_scale = _variance_scale(xp, u, ndim)
        var_coef = 2.0 * (var * pixel_scale - options.sigma**2) * pixel_scale * reg_scale[..., None]
        for k in range(ndim):
            centred = grids[k] - mu[..., k : k + 1]
            per_axis[k] = per_axis[k] + var_coef[..., k : k + 1] * centred * centred
        const = const + xp.sum(var_coef * var, axis=-1)
    elif divergence:
        log_factors = log_gaussian_factors(xp, t, tuple(u.shape[-ndim:]), options.sigma)
        coef = _keep_spatial(reg_scale, ndim, xp)
        if options.regularizer == "kl":
            for k in range(ndim):
                per_axis[k] = per_axis[k] - reg_scale[..., None] * log_factors[k]
            elementwise = coef * log_p
            const = const + reg_scale * residuals["divergence"]
        else:
            # G_P = log(P / M) / 2 with log M = log(P + G) - log 2; the log 2 joins the constant.
            twice_m = p + outer_product(xp, [xp.exp(lg) for lg in log_factors])
            elementwise = (0.5 * coef) * (log_p - xp.log(xp.maximum(twice_m, _tiny(xp, twice_m))))
            const = const + 0.5 * reg_scale * (residuals["divergence"] - math.log(2.0))
    # Per-heatmap constants are folded into the x factor: one full-size pass fewer.
    per_axis[0] = per_axis[0] - const[..., None]
    inner = outer_sum(xp, per_axis)
    if elementwise is not None:
        inner = inner + elementwise
    grad = p * inner
    if options.temperature != 1.0:
        grad = grad / options.temperature
    return to_dtype(xp, grad, logits.dtype)
