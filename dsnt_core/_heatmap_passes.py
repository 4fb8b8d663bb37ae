"""The full-size passes of the fused rules, in array-API code.

:mod:`dsnt_core._fused_rules` does all of its per-heatmap arithmetic itself and touches
arrays of heatmap size only through two functions here, and takes its coordinate grids
from a third, :func:`coordinate_grids` (which a backend may cache):

* :func:`softmax_statistics`: log-sum-exp, marginals (and the negative entropy, and the
  sums of the Jensen-Shannon divergence to a separable ``Q``) of ``softmax(logits / T)``;
* :func:`gradient_map`: ``P * (sum_k a_k[x_k] + e(P, Q)) / T``, the gradient of every rule.

A backend may supply its own implementation of the same three functions (same names,
arguments and results) to run the rules on native kernels; see ``dsnt_torch._native``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import expectation
from ._array_utils import (
    Array,
    Namespace,
    compute_dtype,
    device_of,
    safe_where_positive,
    spatial_axes,
    spatial_size,
    to_compute,
)
from .expectation import marginals
from .gaussian import outer_product, outer_sum
from .normalization import shifted_exp


@dataclass(frozen=True)
class Divergence:
    """The elementwise part of a gradient: ``coef * log P`` (KL) or ``coef * log(P / M) / 2`` (JS).

    ``coef`` has the batch shape; ``factors`` are the separable ``Q``'s 1-D factors in
    (x, y[, z]) order (JS only).
    """

    kind: str
    coef: Array
    factors: tuple[Array, ...] = ()


def coordinate_grids(xp: Namespace, logits: Array, ndim: int) -> list[Array]:
    """Pixel-centre grids of the spatial axes, (x, y[, z]) order, in the logits' compute dtype."""
    return expectation.coordinate_grids(xp, logits, ndim, dtype=compute_dtype(xp, logits.dtype))


def scaled_logits(xp: Namespace, logits: Array, temperature: float) -> Array:
    """``logits / T`` in the compute dtype."""
    z = to_compute(xp, logits)
    return z / temperature if temperature != 1.0 else z


def floor_at_lowest(xp: Namespace, x: Array) -> Array:
    """Replace ``-inf`` by the most negative finite value, so that ``0 * x`` stays 0."""
    return xp.maximum(x, xp.asarray(xp.finfo(x.dtype).min, dtype=x.dtype, device=device_of(x)))


LOG_P_FLOOR = -1.0e4
"""Floor for ``log P`` in the gradient map: ``exp`` of it is 0 in every float dtype, so no
entry with ``P > 0`` changes, and ``coef * log P`` stays finite for any sane coefficient
(the most negative float would overflow to ``-inf`` for ``coef > 1``, and ``0 * -inf`` is NaN)."""


def keep_spatial(xp: Namespace, x: Array, ndim: int) -> Array:
    """Per-heatmap values (...,) reshaped to broadcast against (..., *spatial)."""
    return xp.reshape(x, (*x.shape, *((1,) * ndim)))


def tiny(xp: Namespace, x: Array) -> Array:
    """The smallest normal number of ``x``'s dtype, on its device."""
    return xp.asarray(xp.finfo(x.dtype).smallest_normal, dtype=x.dtype, device=device_of(x))


def softmax_statistics(
    xp: Namespace,
    logits: Array,
    ndim: int,
    temperature: float,
    *,
    entropy: bool = False,
    mixture: list[Array] | None = None,
) -> dict[str, Any]:
    """Log-sum-exp and the marginals of ``P = softmax(logits / T)``, in one pass.

    Returns a dict with ``lse`` (batch shape) and ``margins`` (list of (..., n_k), x first);
    with ``entropy=True``, ``neg_entropy`` (``sum P log P``); with ``mixture`` (the 1-D
    factors of a separable ``Q``, x first), ``m_log_m`` and ``p_log_m``: ``sum M log M`` and
    ``sum P log M`` for ``M = (P + Q) / 2``. A heatmap whose logits are all ``-inf`` is
    treated as uniform, with ``lse = 0`` so that ``exp(u - lse) = 0`` gives it a zero
    gradient. Other keys are private to the implementation that made the dict.
    """
    u = scaled_logits(xp, logits, temperature)
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
    stats = {
        "lse": xp.reshape(peak, total.shape) + log_total,
        "margins": margins,
        "has_mass": has_mass,
        "exp_shifted": exp_shifted,
        "inv_total": inv_total,
    }
    if entropy:
        expected_shift = xp.sum(exp_shifted * floor_at_lowest(xp, shifted), axis=spatial_axes(ndim)) * inv_total
        stats["neg_entropy"] = xp.where(has_mass, expected_shift - log_total, -math.log(spatial_size(u, ndim)))
    if mixture is not None:
        p = xp.where(
            keep_spatial(xp, has_mass, ndim),
            exp_shifted * keep_spatial(xp, inv_total, ndim),
            1.0 / spatial_size(u, ndim),
        )
        m = 0.5 * (p + outer_product(xp, mixture))
        log_m = xp.log(xp.maximum(m, tiny(xp, m)))
        stats["m_log_m"] = xp.sum(m * log_m, axis=spatial_axes(ndim))
        stats["p_log_m"] = xp.sum(p * log_m, axis=spatial_axes(ndim))
    return stats


def gradient_map(
    xp: Namespace,
    logits: Array,
    lse: Array,
    per_axis: list[Array],
    divergence: Divergence | None,
    ndim: int,
    temperature: float,
) -> Array:
    """``P * (outer_sum(per_axis) + e) / T`` with ``P = exp(logits / T - lse)``, compute dtype.

    ``per_axis[k]`` broadcasts against (..., n_k); ``e`` is the elementwise term of
    ``divergence`` (none when it is None).
    """
    u = scaled_logits(xp, logits, temperature)
    inner = outer_sum(xp, per_axis)
    if divergence is None:
        p = xp.exp(u - keep_spatial(xp, lse, ndim))
    else:  # log P is needed too; floored (LOG_P_FLOOR) so that 0 * log P stays 0 at -inf logits
        log_p = u - keep_spatial(xp, lse, ndim)
        log_p = xp.maximum(log_p, xp.asarray(LOG_P_FLOOR, dtype=log_p.dtype, device=device_of(log_p)))
        p = xp.exp(log_p)
        coef = keep_spatial(xp, divergence.coef, ndim)
        if divergence.kind == "kl":
            inner = inner + coef * log_p
        else:
            twice_m = p + outer_product(xp, list(divergence.factors))
            inner = inner + (0.5 * coef) * (log_p - xp.log(xp.maximum(twice_m, tiny(xp, twice_m))))
    grad = p * inner
    return grad / temperature if temperature != 1.0 else grad
