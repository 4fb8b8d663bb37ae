"""The kernel contract: the full-size passes that every kernel implementation supplies.

The rules of the fused operations (:mod:`dsnt_core.ops.soft_argmax`,
:mod:`dsnt_core.ops.dsnt_loss`) do all their per-heatmap arithmetic themselves and touch
arrays of heatmap size only through the four passes of a `Kernels` implementation:

* ``coordinate_grids``: the pixel-centre grid of each spatial axis (an implementation may
  cache it);
* ``softmax_moments``: log-sum-exp and expected coordinates of ``P = softmax(logits / T)``,
  all that the ``soft_argmax`` forward needs;
* ``softmax_statistics``: log-sum-exp and marginals of ``P``, and on request the negative
  entropy and the sums of the Jensen-Shannon divergence to a separable ``Q``
  (`SoftmaxStatistics`), in one sweep;
* ``gradient_map``: ``P * (sum_k a_k[x_k] + e(P, Q)) / T``, the gradient of every rule,
  where ``e`` is the elementwise term of a `Divergence`.

Memory budget
-------------
Between the forward and the backward pass an implementation keeps at most the bytes of the
logits, and chooses what: the logits themselves (the backward recomputes
``P = exp(logits / T - lse)``, one more ``exp`` pass), the normalised heatmap ``P`` (the
``soft_argmax`` backward becomes one pass with no ``exp``), or, for a scalar loss, the
gradient itself, computed in the forward pass when the logits require a gradient (the
backward multiplies it by the incoming scalar). Per-heatmap numbers (`SoftArgmaxResiduals`,
`LossResiduals`) are kept on top of that. Double backward and forward-mode differentiation
must keep working, through a fallback if need be. Every implementation shipped today keeps
the logits.

Semantics every implementation shares: the statistics are in the compute dtype (float32
for 16-bit inputs, else the input's); a heatmap whose logits are all ``-inf`` is uniform,
with ``lse = 0`` so that ``exp(u - lse) = 0`` gives it a zero gradient; a NaN or ``+inf``
in a heatmap makes that heatmap's results NaN and leaves the others alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from .._typing import Array, Namespace

Rule = TypeVar("Rule", bound=Callable[..., object])


class DivergenceKind(enum.Enum):
    """Which divergence's elementwise gradient term `Kernels.gradient_map` adds.

    Examples
    --------
    >>> from dsnt_core.kernels import DivergenceKind
    >>> DivergenceKind("js")
    <DivergenceKind.JS: 'js'>
    """

    KL = "kl"
    """``coef * log P``: the gradient of ``KL(P || Q)`` with fixed ``Q``, up to the constant."""
    JS = "js"
    """``coef * log(P / M) / 2`` with ``M = (P + Q) / 2``: the gradient of ``JS(P, Q)``."""


class Divergence(NamedTuple):
    """The elementwise part of a gradient map.

    Parameters
    ----------
    kind : DivergenceKind
        Which divergence.
    coef : array
        Its coefficient per heatmap (the batch shape).
    factors : tuple of array, optional
        The separable ``Q``'s 1-D factors in (x, y[, z]) order, each broadcasting against
        (..., n_k) (JS only).

    Examples
    --------
    >>> import numpy as np
    >>> from dsnt_core.kernels import Divergence, DivergenceKind
    >>> Divergence(DivergenceKind.KL, np.ones(3)).factors
    ()
    """

    kind: DivergenceKind
    coef: Array
    factors: tuple[Array, ...] = ()


class SoftmaxStatistics(NamedTuple):
    """Per-heatmap statistics of ``P = softmax(logits / T)`` from `Kernels.softmax_statistics`.

    The optional fields are ``None`` unless asked for.

    Parameters
    ----------
    lse : array
        Log-sum-exp of ``logits / T`` (the batch shape).
    margins : tuple of array
        The marginals of ``P``, x first; ``margins[k]`` has the shape (..., n_k).
    neg_entropy : array, optional
        ``sum P log P``.
    m_log_m : array, optional
        ``sum M log M`` for ``M = (P + Q) / 2``.
    p_log_m : array, optional
        ``sum P log M``.

    Examples
    --------
    >>> import numpy as np
    >>> from array_api_compat import numpy as xp
    >>> from dsnt_core.kernels import array_api_kernels
    >>> stats = array_api_kernels().softmax_statistics(xp, np.zeros((1, 2, 4)), 2, 1.0, entropy=True)
    >>> stats.neg_entropy.round(6).tolist(), stats.m_log_m is None
    ([-2.079442], True)
    """

    lse: Array
    margins: tuple[Array, ...]
    neg_entropy: Array | None = None
    m_log_m: Array | None = None
    p_log_m: Array | None = None


class SoftArgmaxResiduals(NamedTuple):
    """What the ``soft_argmax`` rules keep besides the logits: log-sum-exp and coordinates.

    Parameters
    ----------
    lse : array
        Log-sum-exp of ``logits / T`` (the batch shape).
    mu : array of shape (..., ndim)
        The expected coordinates, x first.

    Examples
    --------
    >>> import numpy as np
    >>> from array_api_compat import numpy as xp
    >>> from dsnt_core.kernels import array_api_kernels
    >>> residuals = array_api_kernels().softmax_moments(xp, np.zeros((1, 4, 4)), 2, 1.0)
    >>> residuals.lse.round(6).tolist(), residuals.mu.tolist()
    ([2.772589], [[0.0, 0.0]])
    """

    lse: Array
    mu: Array


class LossResiduals(NamedTuple):
    """What the ``dsnt_loss`` rules keep besides the logits, target and mask.

    Parameters
    ----------
    lse : array
        Log-sum-exp of ``logits / T`` (the batch shape).
    mu : array of shape (..., ndim)
        The expected coordinates, x first.
    var : array of shape (..., ndim), optional
        The coordinate variances; set for the variance regulariser only.
    divergence : array, optional
        ``KL(P || Q)`` for the KL regulariser, ``KL(P || M)`` for JS; ``None`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from dsnt_core.kernels import LossResiduals
    >>> LossResiduals(np.zeros(3), np.zeros((3, 2))).var is None
    True
    """

    lse: Array
    mu: Array
    var: Array | None = None
    divergence: Array | None = None


@runtime_checkable
class Kernels(Protocol):
    """A kernel implementation: the four full-size passes and what the switch needs to know.

    Subclass `dsnt_core.kernels.ArrayAPIKernels` to replace some passes and inherit the
    others. Register a new implementation in the ``dsnt_core.kernels`` entry-point group
    (name = what ``dsnt_core.use_kernels`` takes, value = the instance).

    Examples
    --------
    >>> from dsnt_core.kernels import Kernels, get_kernels
    >>> isinstance(get_kernels("numpy"), Kernels)
    True
    """

    name: str
    """What ``dsnt_core.use_kernels`` calls it, e.g. ``"array-api"``."""
    description: str
    """One line for ``dsnt_core.available_kernels()``."""
    libraries: tuple[str, ...]
    """The array libraries it serves (``"numpy"``, ``"torch"``...; empty for all)."""
    automatic: bool
    """Whether it is chosen by default (``"auto"``) for the arrays it applies to."""

    def unavailable_reason(self) -> str | None:
        """Why it cannot run on this machine (a missing compiler, library or device).

        Returns
        -------
        str or None
            The reason, or ``None`` when it can run.
        """
        ...

    def applies_to(self, logits: Array) -> bool:
        """Whether it can take these logits (library, device, dtype, tracing state); cheap.

        Parameters
        ----------
        logits : array
            The logits of a call.

        Returns
        -------
        bool
            Whether this implementation runs that call.
        """
        ...

    def wrap_rule(self, rule: Rule) -> Rule:
        """The rule as this implementation runs it (e.g. compiled); the identity by default.

        Parameters
        ----------
        rule : callable
            A forward or backward rule of the fused operations.

        Returns
        -------
        callable
            A function with the same signature.
        """
        ...

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
        ...

    def softmax_moments(self, xp: Namespace, logits: Array, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """Log-sum-exp (batch shape) and expected coordinates (..., ndim), in the compute dtype.

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
            ``lse`` and ``mu`` of ``P = softmax(logits / T)``.
        """
        ...

    def softmax_heatmap(
        self, xp: Namespace, logits: Array, ndim: int, temperature: float
    ) -> tuple[SoftArgmaxResiduals, Array]:
        """`softmax_moments` and the normalised heatmap ``P`` itself, in the logits' dtype.

        What the ``soft_argmax`` rules keep for the backward pass instead of the logits (the
        same bytes): the backward then needs no ``exp`` (`heatmap_gradient`).

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
        residuals : SoftArgmaxResiduals
            ``lse`` and ``mu`` of ``P``, in the compute dtype.
        heatmap : array of the logits' shape and dtype
            ``P = softmax(logits / T)``; 0 for an all ``-inf`` heatmap (its coordinates are
            the centre, 0, as for the uniform heatmap it stands for, and its gradient is 0).
        """
        ...

    def heatmap_gradient(
        self,
        xp: Namespace,
        heatmap: Array,
        per_axis: Sequence[Array],
        elementwise: Array | None,
        ndim: int,
        temperature: float,
    ) -> Array:
        """``P * (outer_sum(per_axis) + elementwise) / T`` from a kept heatmap ``P``: no ``exp``.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``heatmap``.
        heatmap : array of shape (..., *spatial)
            ``P``, as `softmax_heatmap` made it.
        per_axis : sequence of arrays
            ``a_k`` broadcasting against (..., n_k), x first.
        elementwise : array of the heatmap's shape, optional
            A full-size term (the cotangent of ``P`` itself, in double backward); ``None`` for none.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.

        Returns
        -------
        array of the heatmap's shape
            The gradient with respect to the logits, in the compute dtype.
        """
        ...

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
        """`SoftmaxStatistics` of the logits, in one sweep.

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
        ...

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
        """``P * (outer_sum(per_axis) + e) / T`` in the compute dtype, ``P = exp(logits / T - lse)``.

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
            The gradient map.
        """
        ...
