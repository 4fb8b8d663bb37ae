"""The default kernel implementation: the full-size passes in array-API code, for every library."""

from __future__ import annotations

from collections.abc import Sequence

from .._arrays import (
    compute_dtype,
    keep_spatial,
    log_size,
    nonzero_or,
    outer_product,
    outer_sum,
    scalar_like,
    spatial_axes,
    spatial_size,
    to_compute,
    to_dtype,
)
from .._temperature import Temperature, divide_by_temperature
from .._typing import Array, Namespace
from ..ops import dsnt as expectation
from ..ops.normalize import shifted_exp
from .contract import Divergence, DivergenceKind, Rule, SoftArgmaxResiduals, SoftmaxStatistics

LOG_P_FLOOR = -1.0e4
"""Floor for ``log P`` in the gradient map: ``exp`` of it is 0 in every float dtype, so no
entry with ``P > 0`` changes, and ``coef * log P`` stays finite for any sane coefficient
(the most negative float would overflow to ``-inf`` for ``coef > 1``, and ``0 * -inf`` is NaN)."""


def scaled_logits(xp: Namespace, logits: Array, temperature: Temperature) -> Array:
    """``logits / T`` in the compute dtype (``T`` a number, or an array per heatmap)."""
    return divide_by_temperature(to_compute(xp, logits), temperature)


def _floor_at_lowest(xp: Namespace, x: Array) -> Array:
    """Replace ``-inf`` by the most negative finite value, so that ``0 * x`` stays 0."""
    return xp.maximum(x, scalar_like(xp, float(xp.finfo(x.dtype).min), x))


def _log_floored_at_tiny(xp: Namespace, x: Array) -> Array:
    """``log(max(x, smallest normal))``: finite for ``x = 0``."""
    return xp.log(xp.maximum(x, scalar_like(xp, float(xp.finfo(x.dtype).smallest_normal), x)))


class ArrayAPIKernels:
    """The passes in array-API code: every library, every device, every transform.

    Each pass is a handful of full-size operations (a max, an ``exp``, reductions); a
    subclass may replace any of them and inherit the rest.

    Examples
    --------
    >>> import numpy as np
    >>> from array_api_compat import numpy as xp
    >>> from dsnt_core.kernels import ArrayAPIKernels
    >>> stats = ArrayAPIKernels().softmax_statistics(xp, np.zeros((1, 2, 4)), 2, 1.0)
    >>> float(stats.lse[0]), stats.margins[0].tolist()
    (2.0794415416798357, [[0.25, 0.25, 0.25, 0.25]])
    """

    name = "array-api"
    description = "array-API passes: every library, device and transform (the default)"
    libraries: tuple[str, ...] = ()
    automatic = True

    def unavailable_reason(self) -> str | None:
        """Why it cannot run on this machine: never, it needs nothing beyond the array's own library.

        Returns
        -------
        None
            Always.
        """
        return None

    def applies_to(self, logits: Array) -> bool:
        """Whether it can take these logits: every array can.

        Parameters
        ----------
        logits : array
            The logits of a call.

        Returns
        -------
        bool
            Always ``True``.
        """
        return True

    def wrap_rule(self, rule: Rule) -> Rule:
        """The rule as it is.

        Parameters
        ----------
        rule : callable
            A forward or backward rule of the fused operations.

        Returns
        -------
        callable
            ``rule`` itself.
        """
        return rule

    def coordinate_grids(self, xp: Namespace, logits: Array, ndim: int) -> tuple[Array, ...]:
        """Pixel-centre grids of the spatial axes, (x, y[, z]) order, in the logits' compute dtype.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).

        Returns
        -------
        tuple of array
            One 1-D grid of length n_k per axis, x first.
        """
        return tuple(expectation.coordinate_grids(xp, logits, ndim, dtype=compute_dtype(xp, logits.dtype)))

    def softmax_moments(self, xp: Namespace, logits: Array, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """Log-sum-exp and expected coordinates, from the marginals of `softmax_statistics`.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.

        Returns
        -------
        SoftArgmaxResiduals
            ``lse`` and ``mu`` of ``P = softmax(logits / T)``, in the compute dtype.
        """
        stats = self.softmax_statistics(xp, logits, ndim, temperature)
        mu = expectation.expected_coordinates(xp, list(stats.margins), list(self.coordinate_grids(xp, logits, ndim)))
        return SoftArgmaxResiduals(stats.lse, mu)

    def softmax_heatmap(
        self, xp: Namespace, logits: Array, ndim: int, temperature: float
    ) -> tuple[SoftArgmaxResiduals, Array]:
        """Log-sum-exp, expected coordinates and ``P`` itself, from one shifted ``exp``.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps.
        ndim : int
            Number of spatial axes.
        temperature : float
            Softmax temperature.

        Returns
        -------
        residuals : SoftArgmaxResiduals
            ``lse`` and ``mu``, in the compute dtype.
        heatmap : array
            ``P`` in the logits' dtype.
        """
        u = scaled_logits(xp, logits, temperature)
        peak, _, exp_shifted = shifted_exp(xp, u, ndim)
        total = xp.sum(exp_shifted, axis=spatial_axes(ndim))
        has_mass = total != 0  # False only for an all -inf heatmap; NaN stays NaN
        inv_total = xp.where(has_mass, 1.0 / nonzero_or(xp, total, 1.0), 0.0 * total)
        # An all -inf heatmap keeps P = 0 (inv_total is 0): coordinates 0 as for the uniform
        # heatmap it stands for, and a zero gradient.
        p = exp_shifted * keep_spatial(xp, inv_total, ndim)
        grids = list(self.coordinate_grids(xp, logits, ndim))
        mu = expectation.expected_coordinates(xp, expectation.marginals(xp, p, ndim), grids)
        lse = xp.reshape(peak, total.shape) + xp.log(nonzero_or(xp, total, 1.0))
        return SoftArgmaxResiduals(lse, mu), to_dtype(xp, p, logits.dtype)

    def heatmap_gradient(
        self,
        xp: Namespace,
        heatmap: Array,
        per_axis: Sequence[Array],
        elementwise: Array | None,
        ndim: int,
        temperature: float,
    ) -> Array:
        """``P * (outer_sum(per_axis) + elementwise) / T``: two full-size operations, no ``exp``.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``heatmap``.
        heatmap : array of shape (..., *spatial)
            The kept ``P``.
        per_axis : sequence of arrays
            ``a_k``, x first.
        elementwise : array, optional
            A full-size term added to the sum.
        ndim : int
            Number of spatial axes.
        temperature : float
            Softmax temperature.

        Returns
        -------
        array
            The gradient in the compute dtype.
        """
        inner = outer_sum(xp, per_axis)
        if elementwise is not None:
            inner = inner + to_compute(xp, elementwise)
        grad = to_compute(xp, heatmap) * inner
        return divide_by_temperature(grad, temperature)

    def softmax_statistics(
        self,
        xp: Namespace,
        logits: Array,
        ndim: int,
        temperature: float,
        *,
        entropy: bool = False,
        mixture: Sequence[Array] | None = None,
    ) -> SoftmaxStatistics:
        """Log-sum-exp and marginals (and entropy and JS sums on request) from one shifted ``exp``.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.
        entropy : bool
            Also compute ``neg_entropy``.
        mixture : sequence of array, optional
            The 1-D factors of ``Q``, x first: also compute ``m_log_m`` and ``p_log_m``.

        Returns
        -------
        SoftmaxStatistics
            The statistics of ``P = softmax(logits / T)``; the fields not asked for are ``None``.
        """
        u = scaled_logits(xp, logits, temperature)
        peak, shifted, exp_shifted = shifted_exp(xp, u, ndim)
        raw_margins = expectation.marginals(xp, exp_shifted, ndim)
        total = xp.sum(raw_margins[0], axis=-1)  # from a marginal: no extra pass over the heatmaps
        has_mass = total != 0  # False only for an all -inf heatmap; NaN (a NaN or +inf logit) stays NaN below
        inv_total = xp.where(has_mass, 1.0 / nonzero_or(xp, total, 1.0), 0.0 * total)
        margins = tuple(
            xp.where(has_mass[..., None], margin * inv_total[..., None], 1.0 / u.shape[-1 - k])
            for k, margin in enumerate(raw_margins)
        )
        log_total = xp.log(nonzero_or(xp, total, 1.0))
        lse = xp.reshape(peak, total.shape) + log_total
        neg_entropy = m_log_m = p_log_m = None
        if entropy:
            expected_shift = xp.sum(exp_shifted * _floor_at_lowest(xp, shifted), axis=spatial_axes(ndim)) * inv_total
            neg_entropy = xp.where(has_mass, expected_shift - log_total, -log_size(xp, spatial_size(u, ndim), total))
        if mixture is not None:
            p = xp.where(
                keep_spatial(xp, has_mass, ndim),
                exp_shifted * keep_spatial(xp, inv_total, ndim),
                1.0 / spatial_size(u, ndim),
            )
            m = 0.5 * (p + outer_product(xp, mixture))
            log_m = _log_floored_at_tiny(xp, m)
            m_log_m = xp.sum(m * log_m, axis=spatial_axes(ndim))
            p_log_m = xp.sum(p * log_m, axis=spatial_axes(ndim))
        return SoftmaxStatistics(lse, margins, neg_entropy, m_log_m, p_log_m)

    def gradient_map(
        self,
        xp: Namespace,
        logits: Array,
        lse: Array,
        per_axis: Sequence[Array],
        divergence: Divergence | None,
        ndim: int,
        temperature: float,
    ) -> Array:
        """``P * (outer_sum(per_axis) + e) / T``, with ``log P`` floored at `LOG_P_FLOOR` for the divergences.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        lse : array
            Log-sum-exp of ``logits / T`` (the batch shape), from the forward pass.
        per_axis : sequence of array
            One vector of shape (..., n_k) per axis, x first.
        divergence : Divergence or None
            The elementwise term ``e``; ``None`` for none.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.

        Returns
        -------
        array of the shape of ``logits``
            The gradient map, in the compute dtype.
        """
        u = scaled_logits(xp, logits, temperature)
        inner = outer_sum(xp, per_axis)
        if divergence is None:
            p = xp.exp(u - keep_spatial(xp, lse, ndim))
        else:  # log P is needed too; floored so that 0 * log P stays 0 at -inf logits
            log_p = xp.maximum(u - keep_spatial(xp, lse, ndim), scalar_like(xp, LOG_P_FLOOR, u))
            p = xp.exp(log_p)
            coef = keep_spatial(xp, divergence.coef, ndim)
            if divergence.kind is DivergenceKind.KL:
                inner = inner + coef * log_p
            else:
                log_twice_m = _log_floored_at_tiny(xp, p + outer_product(xp, divergence.factors))
                inner = inner + (0.5 * coef) * (log_p - log_twice_m)
        grad = p * inner
        return divide_by_temperature(grad, temperature)
