"""``dsnt_loss``: the DSNT training loss from logits, fused, with its gradient rules.

For ``P = softmax(z / T)`` and a scalar ``L(P)`` with ``G = dL/dP`` the rule is
``dL/dz = P * (G - <G, P>) / T``. The pieces of ``G``, one per term of the loss:

* the Euclidean error through ``mu_k = <P, X_k>``: ``G = sum_k c_k X_k``;
* the variance regulariser through ``var_k = <P, (X_k - mu_k)^2>``: ``G = sum_k c_k (X_k - mu_k)^2``;
* ``KL(P || Q)`` with a fixed Gaussian ``Q``: ``G = log P - log Q`` (+1, which the rule cancels);
* ``JS(P, Q)`` with ``M = (P + Q) / 2``: ``G = log(P / M) / 2``.

``<G, P>`` of each piece is a per-heatmap number from the forward pass (``mu_k``,
``var_k``, the KL, ``KL(P || M)``), kept as `LossResiduals`, so the backward pass is one
``gradient_map`` over the logits. Each regulariser has its own forward and backward
function below; the heatmap-sized work goes through the kernel implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._arrays import (
    compute_dtype,
    euclidean_norm,
    exp_clamped,
    like_input,
    mean_weights,
    safe_where_positive,
    to_dtype,
)
from .._backends import adapter_for, namespace_of
from .._temperature import check_temperature, is_array_value, per_heatmap
from .._typing import Array, ArrayT, Namespace
from .._validation import (
    DISTANCES,
    REGULARIZERS,
    check_choice,
    check_coordinates,
    check_mask,
    check_ndim,
    check_nonnegative_finite,
    check_sigma,
    check_spatial,
)
from ..kernels import Divergence, DivergenceKind, Kernels, LossResiduals, SoftmaxStatistics
from .dsnt import moments
from .gaussian import log_gaussian_factors
from .regularizers import pixel_variance_scale
from .soft_argmax import kernels_for


@dataclass(frozen=True)
class LossOptions:
    """Options of the fused loss; hashable (JAX treats them as static) when no field is an array.

    ``temperature`` and ``sigma`` may be arrays (a learnable temperature, per-point or per-axis
    standard deviations): the rules take them as they are; the adapters carry them across the
    framework's differentiation boundary as inputs of their own (`with_arrays_split`).
    """

    ndim: int = 2
    temperature: Any = 1.0
    """``float | Array``: a number, or an array broadcastable to the leading shape."""
    sigma: Any = 1.0
    """``float | Array``: a number, or an array broadcastable to the target's shape."""
    regularizer: str | None = "js"
    reg_weight: float = 1.0
    distance: str = "euclidean"

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of ``dsnt_loss`` and ``composed_dsnt_loss``."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def arrays_split(self) -> tuple[LossOptions, Any, Any]:
        """``(static, temperature, sigma)``: the options with array fields replaced by 1.0, and those arrays (or None).

        ``static`` is hashable; `with_arrays` puts the arrays back.
        """
        temperature = self.temperature if is_array_value(self.temperature) else None
        sigma = self.sigma if is_array_value(self.sigma) else None
        static = dataclasses.replace(
            self,
            temperature=1.0 if temperature is not None else self.temperature,
            sigma=1.0 if sigma is not None else self.sigma,
        )
        return static, temperature, sigma

    def with_arrays(self, temperature: Any, sigma: Any) -> LossOptions:
        """The options with the arrays of `arrays_split` put back (``None``: keep the field)."""
        changes = {name: value for name, value in (("temperature", temperature), ("sigma", sigma)) if value is not None}
        return dataclasses.replace(self, **changes) if changes else self


def point_weights(xp: Namespace, mask: Array | None, shape: tuple[int, ...], like: Array) -> Array:
    """Weight of each point in the average: ``mask / max(sum(mask), 1)`` or ``1 / count``."""
    if mask is None:
        return mean_weights(xp, shape, like)
    weights = xp.astype(mask, like.dtype)
    total = xp.sum(weights)
    return weights / xp.maximum(total, xp.ones_like(total))


@dataclass(frozen=True)
class _Gaussian:
    """The target Gaussian ``Q`` as 1-D factors, x first: logs (KL, JS) and values (JS)."""

    log_factors: list[Array]
    factors: list[Array] | None


def _target_gaussian(xp: Namespace, target: Array, spatial: tuple[int, ...], options: LossOptions) -> _Gaussian | None:
    if options.regularizer not in ("kl", "js"):
        return None
    log_factors = log_gaussian_factors(xp, target, spatial, _sigma(xp, options, target))
    factors = [exp_clamped(xp, lg) for lg in log_factors] if options.regularizer == "js" else None
    return _Gaussian(log_factors, factors)


def _sigma(xp: Namespace, options: LossOptions, like: Array) -> Any:
    """``options.sigma``: a number, or its array in ``like``'s dtype."""
    sigma = options.sigma
    return to_dtype(xp, sigma, like.dtype) if is_array_value(sigma) else sigma


def _present(value: Array | None, what: str) -> Array:
    """``value``, which the forward pass of the same regulariser always sets."""
    if value is None:
        raise RuntimeError(f"internal error: {what} is missing from the forward pass's results")
    return value


def _point_distance(xp: Namespace, diff: Array, distance: str) -> Array:
    """The per-point coordinate loss of ``diff = mu - target``: dsntnn's definitions."""
    if distance == "l1":
        return xp.mean(xp.abs(diff), axis=-1)
    if distance == "mse":
        return xp.mean(diff * diff, axis=-1)
    return euclidean_norm(xp, diff)


def _distance_gradient(xp: Namespace, diff: Array, distance: str) -> Array:
    """``d distance / d mu`` (..., ndim): ``diff / |diff|`` (0 at 0), ``sign(diff) / ndim``, ``2 diff / ndim``."""
    ndim = diff.shape[-1]
    if distance == "l1":
        return xp.sign(diff) / ndim
    if distance == "mse":
        return diff * (2.0 / ndim)
    return diff / safe_where_positive(xp, euclidean_norm(xp, diff), 1.0)[..., None]


def _dot_last(xp: Namespace, a: list[Array], b: list[Array]) -> Array:
    """``sum_k sum_i a_k[..., i] * b_k[..., i]``: a separable inner product from 1-D factors."""
    return sum(xp.sum(x * y, axis=-1) for x, y in zip(a, b))


# ------------------------------------------------------------------ forward, per regulariser


@dataclass(frozen=True)
class _ForwardInputs:
    xp: Namespace
    stats: SoftmaxStatistics
    mu: Array
    var: Array
    spatial: tuple[int, ...]
    gaussian: _Gaussian | None
    options: LossOptions


def _variance_forward(f: _ForwardInputs) -> tuple[Array, LossResiduals]:
    error = f.var * pixel_variance_scale(f.xp, f.spatial, f.mu) - _sigma(f.xp, f.options, f.mu) ** 2
    return f.xp.sum(error * error, axis=-1), LossResiduals(f.stats.lse, f.mu, var=f.var)


def _kl_forward(f: _ForwardInputs) -> tuple[Array, LossResiduals]:
    log_factors = f.gaussian.log_factors if f.gaussian is not None else []
    kl = _present(f.stats.neg_entropy, "neg_entropy") - _dot_last(f.xp, list(f.stats.margins), log_factors)
    return kl, LossResiduals(f.stats.lse, f.mu, divergence=kl)


def _js_forward(f: _ForwardInputs) -> tuple[Array, LossResiduals]:
    stats = f.stats
    factors = f.gaussian.factors if f.gaussian is not None and f.gaussian.factors is not None else []
    log_factors = f.gaussian.log_factors if f.gaussian is not None else []
    neg_entropy = _present(stats.neg_entropy, "neg_entropy")
    gaussian_neg_entropy = _dot_last(f.xp, factors, log_factors)
    js = 0.5 * (neg_entropy + gaussian_neg_entropy - 2.0 * _present(stats.m_log_m, "m_log_m"))
    kl_p_m = neg_entropy - _present(stats.p_log_m, "p_log_m")
    return js, LossResiduals(stats.lse, f.mu, divergence=kl_p_m)


_FORWARD: dict[str, Callable[[_ForwardInputs], tuple[Array, LossResiduals]]] = {
    "var": _variance_forward,
    "kl": _kl_forward,
    "js": _js_forward,
}


def dsnt_loss_forward(
    xp: Namespace, logits: Array, target: Array, mask: Array | None, options: LossOptions, kernels: Kernels
) -> tuple[Array, LossResiduals]:
    """Scalar loss (compute dtype) and the per-heatmap residuals of its gradient rule."""
    ndim, spatial = options.ndim, tuple(logits.shape[-options.ndim :])
    t = to_dtype(xp, target, compute_dtype(xp, logits.dtype))
    gaussian = _target_gaussian(xp, t, spatial, options)
    stats = kernels.softmax_statistics(
        xp,
        logits,
        ndim,
        per_heatmap(xp, options.temperature, ndim, t.dtype),
        entropy=gaussian is not None,
        mixture=None if gaussian is None else gaussian.factors,
    )
    mu, var = moments(xp, list(stats.margins), list(kernels.coordinate_grids(xp, logits, ndim)))
    per_point = _point_distance(xp, mu - t, options.distance)
    residuals = LossResiduals(stats.lse, mu)
    if options.regularizer is not None:
        inputs = _ForwardInputs(xp, stats, mu, var, spatial, gaussian, options)
        term, residuals = _FORWARD[options.regularizer](inputs)
        per_point = per_point + options.reg_weight * term
    return xp.sum(point_weights(xp, mask, tuple(t.shape[:-1]), mu) * per_point), residuals


# ----------------------------------------------------------------- backward, per regulariser


@dataclass
class _GradientTerms:
    """``G - <G, P>`` being assembled: per-axis vectors, a per-heatmap constant, a divergence."""

    per_axis: list[Array]
    const: Array
    divergence: Divergence | None = None


@dataclass(frozen=True)
class _BackwardInputs:
    xp: Namespace
    residuals: LossResiduals
    target: Array
    grids: tuple[Array, ...]
    spatial: tuple[int, ...]
    scale: Array
    """Per-point factor of the regulariser's gradient: cotangent * point weight * reg_weight."""
    options: LossOptions


def _variance_backward(b: _BackwardInputs, terms: _GradientTerms) -> None:
    xp, mu, var = b.xp, b.residuals.mu, _present(b.residuals.var, "var")
    pixel_scale = pixel_variance_scale(xp, b.spatial, mu)
    var_coef = 2.0 * (var * pixel_scale - _sigma(xp, b.options, mu) ** 2) * pixel_scale * b.scale[..., None]
    for k in range(b.options.ndim):
        centred = b.grids[k] - mu[..., k : k + 1]
        terms.per_axis[k] = terms.per_axis[k] + var_coef[..., k : k + 1] * centred * centred
    terms.const = terms.const + xp.sum(var_coef * var, axis=-1)


def _kl_backward(b: _BackwardInputs, terms: _GradientTerms) -> None:
    # Recomputed from the target (cheap, 1-D), so that nothing but the logits and a few
    # numbers per heatmap is kept between the passes.
    log_factors = log_gaussian_factors(b.xp, b.target, b.spatial, _sigma(b.xp, b.options, b.target))
    for k in range(b.options.ndim):
        terms.per_axis[k] = terms.per_axis[k] - b.scale[..., None] * log_factors[k]
    terms.divergence = Divergence(DivergenceKind.KL, b.scale)
    terms.const = terms.const + b.scale * _present(b.residuals.divergence, "divergence")


def _js_backward(b: _BackwardInputs, terms: _GradientTerms) -> None:
    # G = log(P / M) / 2 with log M = log(P + Q) - log 2; the log 2 joins the constant.
    log_factors = log_gaussian_factors(b.xp, b.target, b.spatial, _sigma(b.xp, b.options, b.target))
    factors = tuple(exp_clamped(b.xp, lg) for lg in log_factors)
    terms.divergence = Divergence(DivergenceKind.JS, b.scale, factors)
    terms.const = terms.const + 0.5 * b.scale * (_present(b.residuals.divergence, "divergence") - math.log(2.0))


_BACKWARD: dict[str, Callable[[_BackwardInputs, _GradientTerms], None]] = {
    "var": _variance_backward,
    "kl": _kl_backward,
    "js": _js_backward,
}


def dsnt_loss_backward(
    xp: Namespace,
    logits: Array,
    target: Array,
    mask: Array | None,
    residuals: LossResiduals,
    cotangent: Array,
    options: LossOptions,
    kernels: Kernels,
) -> Array:
    """Gradient of ``cotangent * loss`` with respect to the logits, in the logits' dtype."""
    ndim, spatial, mu = options.ndim, tuple(logits.shape[-options.ndim :]), residuals.mu
    t = to_dtype(xp, target, mu.dtype)
    grids = kernels.coordinate_grids(xp, logits, ndim)
    scale = to_dtype(xp, cotangent, mu.dtype) * point_weights(xp, mask, tuple(t.shape[:-1]), mu)

    diff = mu - t
    mean_coef = _distance_gradient(xp, diff, options.distance) * scale[..., None]
    terms = _GradientTerms([mean_coef[..., k : k + 1] * grids[k] for k in range(ndim)], xp.sum(mean_coef * mu, axis=-1))
    if options.regularizer is not None:
        inputs = _BackwardInputs(xp, residuals, t, grids, spatial, scale * options.reg_weight, options)
        _BACKWARD[options.regularizer](inputs, terms)
    # Per-heatmap constants are folded into the x factor: one full-size pass fewer.
    per_axis = [terms.per_axis[0] - terms.const[..., None], *terms.per_axis[1:]]
    temperature = per_heatmap(xp, options.temperature, ndim, mu.dtype)
    grad = kernels.gradient_map(xp, logits, residuals.lse, per_axis, terms.divergence, ndim, temperature)
    return to_dtype(xp, grad, logits.dtype)


# ------------------------------------------------------------------------------ public API


def _check(
    logits: Array,
    target: Array,
    mask: Array | None,
    *,
    sigma: Any,
    regularizer: Any,
    reg_weight: Any,
    ndim: Any,
    temperature: Any,
    distance: Any = "euclidean",
) -> tuple[Namespace, LossOptions]:
    arrays = {name: value for name, value in (("temperature", temperature), ("sigma", sigma)) if is_array_value(value)}
    xp = namespace_of(logits=logits, target=target, mask=mask, **arrays)
    ndim = check_ndim(ndim)
    check_spatial(xp, logits, "logits", ndim)
    check_coordinates(xp, target, "target", logits, ndim, "logits")
    check_mask(xp, mask, tuple(target.shape[:-1]))
    options = LossOptions(
        ndim=ndim,
        temperature=check_temperature(xp, temperature, tuple(logits.shape[: logits.ndim - ndim])),
        sigma=check_sigma(xp, sigma, tuple(target.shape), "target"),
        regularizer=check_choice(regularizer, "regularizer", REGULARIZERS),
        reg_weight=check_nonnegative_finite(reg_weight, "reg_weight"),
        distance=check_choice(distance, "distance", DISTANCES),
    )
    return xp, options


def dsnt_loss(
    logits: ArrayT,
    target: Array,
    /,
    *,
    sigma: float | Array = 1.0,
    regularizer: str | None = "js",
    reg_weight: float = 1.0,
    mask: Array | None = None,
    ndim: int = 2,
    temperature: float | Array = 1.0,
    distance: str = "euclidean",
) -> ArrayT:
    """The DSNT training loss from logits: mean Euclidean error plus a heatmap regulariser.

    ``average(euclidean_loss(soft_argmax(logits), target) + reg_weight * reg, mask)``, with
    the regulariser one of `js_regularizer`, `kl_regularizer` (against a Gaussian of
    ``sigma`` pixels at the target) or `variance_regularizer`. Fused: nothing of heatmap
    size is kept for the backward pass except the logits. The target gets no gradient in
    the fused path (PyTorch falls back to the composed form when it requires one).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps, one per point; the last ``ndim`` axes are spatial.
    target : array of shape (..., ndim)
        Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
    sigma : float or array
        Target standard deviation of the heatmaps, in pixels: a number, or a floating array
        broadcastable to ``target.shape`` (per point and axis, x first). PyTorch takes the
        composed path when it requires a gradient; JAX differentiates it too.
    regularizer : {"js", "kl", "var", None}
        Which regulariser to add (JS worked best in the paper).
    reg_weight : float
        Its weight (the paper's lambda).
    mask : array of shape (...), optional
        Boolean or float weights of the points; masked-out points contribute nothing.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float or array
        Softmax temperature: a number, or a positive floating array broadcastable to
        ``logits.shape[:-ndim]``, differentiable through the fused rules in PyTorch and JAX.
    distance : {"euclidean", "l1", "mse"}
        The per-point coordinate loss: `euclidean_loss` (the paper's), `l1_loss` or `mse_loss`.

    Returns
    -------
    0-d array
        The loss, same library, device and dtype as ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2, 3, 16, 16))
    >>> target = rng.uniform(-0.8, 0.8, size=(2, 3, 2))
    >>> float(dsnt_core.dsnt_loss(logits, target, sigma=1.0)) > 0
    True
    """
    options = dict(sigma=sigma, regularizer=regularizer, reg_weight=reg_weight, ndim=ndim, temperature=temperature)
    options["distance"] = distance
    xp, checked = _check(logits, target, mask, **options)
    kernels = kernels_for(logits, checked.temperature)
    adapter = adapter_for(logits)
    if adapter is not None:
        return like_input(xp, adapter.dsnt_loss(logits, target, mask, checked, kernels=kernels), logits)
    loss, _ = dsnt_loss_forward(xp, logits, target, mask, checked, kernels)
    return like_input(xp, loss, logits)


def dsnt_loss_value_and_grad(
    logits: ArrayT,
    target: Array,
    /,
    *,
    sigma: float | Array = 1.0,
    regularizer: str | None = "js",
    reg_weight: float = 1.0,
    mask: Array | None = None,
    ndim: int = 2,
    temperature: float | Array = 1.0,
    distance: str = "euclidean",
) -> tuple[ArrayT, ArrayT]:
    """`dsnt_loss` and its gradient with respect to the logits, for libraries without autodiff.

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps, one per point; the last ``ndim`` axes are spatial.
    target : array of shape (..., ndim)
        Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
    sigma : float or array
        Target standard deviation of the heatmaps, in pixels: a number, or a floating array
        broadcastable to ``target.shape`` (per point and axis, x first). PyTorch takes the
        composed path when it requires a gradient; JAX differentiates it too.
    regularizer : {"js", "kl", "var", None}
        Which regulariser to add.
    reg_weight : float
        Its weight.
    mask : array of shape (...), optional
        Boolean or float weights of the points.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float or array
        Softmax temperature: a number, or a positive floating array broadcastable to
        ``logits.shape[:-ndim]``, differentiable through the fused rules in PyTorch and JAX.
    distance : {"euclidean", "l1", "mse"}
        The per-point coordinate loss: `euclidean_loss` (the paper's), `l1_loss` or `mse_loss`.

    Returns
    -------
    loss : 0-d array
        The loss, as `dsnt_loss` computes it, in the logits' dtype.
    grad : array of the same shape and dtype as ``logits``
        Its gradient with respect to ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> logits = np.zeros((1, 1, 8, 8))
    >>> loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, np.asarray([[[0.5, 0.0]]]))
    >>> grad.shape, abs(float(grad.sum())) < 1e-12
    ((1, 1, 8, 8), True)
    """
    options = dict(sigma=sigma, regularizer=regularizer, reg_weight=reg_weight, ndim=ndim, temperature=temperature)
    options["distance"] = distance
    xp, checked = _check(logits, target, mask, **options)
    kernels = kernels_for(logits, checked.temperature)
    loss, residuals = dsnt_loss_forward(xp, logits, target, mask, checked, kernels)
    grad = dsnt_loss_backward(xp, logits, target, mask, residuals, xp.ones_like(loss), checked, kernels)
    return like_input(xp, loss, logits), like_input(xp, grad, logits)
