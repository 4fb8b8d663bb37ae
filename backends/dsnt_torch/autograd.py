"""The PyTorch adapter: the core's gradient rules as ``torch.autograd.Function``s.

Registered in the ``dsnt_core.adapters`` entry-point group, so ``dsnt_core.soft_argmax``
and ``dsnt_core.dsnt_loss`` route torch tensors here with validated inputs and the kernel
implementation chosen for the call. The functions use the ``setup_context`` form with
``generate_vmap_rule = True``, so they work with ``torch.func.grad``, ``torch.func.vmap``
and ``torch.compile(fullgraph=True)``. Only the logits (and the small target, mask and
per-heatmap residuals) are saved for backward. Double backward is supported: when the
backward pass itself is differentiated (``create_graph=True``, or forward mode over it as
in ``torch.func.hessian``), the residuals are recomputed from the logits with grad enabled,
on the array-API kernels.

Forward mode (``torch.func.jacfwd``, ``torch.func.hessian``, ``torch.autograd.forward_ad``)
has its own rules (``jvp``): the core's `soft_argmax_jvp`, and for the loss ``<grad, dz>``
with the gradient of `dsnt_loss_backward`. They recompute the residuals from the logits on the
array-API kernels, so that a JVP can be differentiated again (forward over forward, reverse
over forward). ``torch.compile`` cannot trace an ``autograd.Function`` that defines
``jvp`` (a graph break), so each operation has two classes: the reverse-mode one
(`SoftArgmaxReverseFunction`, `DsntLossReverseFunction`), which compiled code gets, and a
subclass that adds the forward-mode rule (`SoftArgmaxFunction`, `DsntLossFunction`), which
eager code gets.

Under ``torch.jit.trace`` (and the TorchScript ONNX exporter, which traces) the forward
pass is recorded as plain tensor operations instead: a traced ``autograd.Function`` would be
a Python call that neither ``torch.jit.save`` nor the ONNX exporter can keep.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from array_api_compat import torch as xp

from dsnt_core._temperature import per_heatmap, tangent_with_temperature, temperature_cotangent
from dsnt_core.composed import composed_dsnt_loss
from dsnt_core.kernels import Kernels, LossResiduals, SoftArgmaxResiduals, array_api_kernels
from dsnt_core.kernels.array_api import scaled_logits
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import (
    expected_coordinates_of,
    soft_argmax_backward,
    soft_argmax_backward_from_heatmap,
    soft_argmax_forward,
    soft_argmax_forward_keeping_heatmap,
    soft_argmax_jvp,
)


def _has_forward_tangent(tensor: Any) -> bool:
    """Whether ``tensor`` is a tensor that carries a forward-mode tangent (``torch.autograd.forward_ad``)."""
    return isinstance(tensor, torch.Tensor) and torch.autograd.forward_ad.unpack_dual(tensor).tangent is not None


def _differentiating_backward(logits: torch.Tensor) -> bool:
    """Whether the backward pass is itself being differentiated (reverse or forward mode).

    Then its residuals must be recomputed from the logits, so that they carry derivatives.
    """
    return torch.is_grad_enabled() or _has_forward_tangent(logits)


def _saved_temperature(ctx: Any, temperature: Any) -> tuple[torch.Tensor, ...]:
    """The temperature among the tensors to save (a tensor), or kept on ``ctx`` (a number)."""
    ctx.temperature_is_tensor = isinstance(temperature, torch.Tensor)
    ctx.temperature = None if ctx.temperature_is_tensor else temperature
    return (temperature,) if ctx.temperature_is_tensor else ()


def _restored_temperature(ctx: Any, saved: list[torch.Tensor]) -> Any:
    """The temperature saved by `_saved_temperature` (the last saved tensor when it is one)."""
    return saved.pop() if ctx.temperature_is_tensor else ctx.temperature


def _logits_tangent(logits: torch.Tensor, d_logits: Any, temperature: Any, d_temperature: Any, ndim: int) -> Any:
    """The logits' tangent that includes a temperature tangent (``tangent_with_temperature``)."""
    if d_temperature is None or not isinstance(temperature, torch.Tensor):
        return d_logits if d_logits is not None else torch.zeros_like(logits)
    return tangent_with_temperature(xp, logits, d_logits, temperature, d_temperature, ndim)


class SoftArgmaxReverseFunction(torch.autograd.Function):
    """``soft_argmax`` with the core's reverse-mode rule; outputs (coords, lse, mu), the last two not differentiable.

    Inputs ``(logits, ndim, temperature, kernels, units)``; a tensor temperature gets its gradient too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, ndim: int, temperature: Any, kernels: Kernels, units: str) -> Any:
        rule = kernels.wrap_rule(soft_argmax_forward)
        coords, residuals = rule(xp, logits, ndim, temperature, kernels, units=units)
        mu = cast(torch.Tensor, residuals.mu)
        return coords, residuals.lse, mu.clone() if mu is coords else mu

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, ndim, temperature, kernels, units = inputs
        _, lse, mu = output
        ctx.mark_non_differentiable(lse, mu)
        ctx.save_for_backward(logits, lse, mu, *_saved_temperature(ctx, temperature))
        ctx.ndim, ctx.kernels, ctx.units = ndim, kernels, units

    @staticmethod
    def backward(ctx: Any, grad_coords: torch.Tensor, _lse: Any, _mu: Any) -> Any:
        saved = list(ctx.saved_tensors)
        temperature = _restored_temperature(ctx, saved)
        logits, lse, mu = saved
        ndim, units = ctx.ndim, ctx.units
        if _differentiating_backward(logits):  # residuals must depend on the logits
            kernels = array_api_kernels()
            _, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels)
            grad = soft_argmax_backward(xp, logits, residuals, grad_coords, ndim, temperature, kernels, units=units)
        else:
            kernels = ctx.kernels
            residuals = SoftArgmaxResiduals(lse, mu)
            rule = kernels.wrap_rule(soft_argmax_backward)
            grad = rule(xp, logits, residuals, grad_coords, ndim, temperature, kernels, units=units)
        grad_temperature = None
        if ctx.temperature_is_tensor and ctx.needs_input_grad[2]:
            scaled = scaled_logits(xp, logits, per_heatmap(xp, temperature, ndim, residuals.mu.dtype))
            grad_temperature = temperature_cotangent(xp, grad, scaled, temperature, ndim)
        return grad, None, grad_temperature, None, None


class SoftArgmaxFunction(SoftArgmaxReverseFunction):
    """`SoftArgmaxReverseFunction` with the forward-mode rule `soft_argmax_jvp` too."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        SoftArgmaxReverseFunction.setup_context(ctx, inputs, output)
        # The same tensors as for backward: torch.func's generated vmap rule expects one set.
        temperature = inputs[2]
        ctx.save_for_forward(inputs[0], *output[1:], *((temperature,) if ctx.temperature_is_tensor else ()))

    @staticmethod
    def jvp(ctx: Any, d_logits: Any, _ndim: None, d_temperature: Any, _kernels: None, _units: None) -> Any:
        saved = list(ctx.saved_tensors)
        temperature = _restored_temperature(ctx, saved)
        logits = saved[0]
        tangent = _logits_tangent(logits, d_logits, temperature, d_temperature, ctx.ndim)
        # Residuals recomputed from the logits: the JVP stays differentiable with respect to them.
        _, residuals = soft_argmax_forward(xp, logits, ctx.ndim, temperature, array_api_kernels())
        d_coords = soft_argmax_jvp(xp, logits, residuals, tangent, ctx.ndim, temperature, units=ctx.units)
        return d_coords, None, None


class SoftArgmaxKeepingHeatmapFunction(torch.autograd.Function):
    """``soft_argmax`` keeping ``P`` (the logits' bytes) instead of the logits: a backward with no ``exp``.

    Outputs (coords, mu, P): ``mu`` is not differentiable; ``P`` is, so that differentiating
    the backward pass again (``create_graph=True``) flows through the kept ``P`` into this
    function's own backward, as for any saved output. Used for eager reverse mode only
    (forward mode, ``torch.func`` transforms and ``torch.compile`` take the other classes), so
    it has the ``forward(ctx, ...)`` form: no ``setup_context``, whose presence makes every
    ``apply`` bind its arguments through ``inspect.signature``. A tensor temperature gets its
    gradient from ``log P``.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, ndim: int, temperature: Any, kernels: Kernels, units: str) -> Any:
        rule = kernels.wrap_rule(soft_argmax_forward_keeping_heatmap)
        coords, residuals, heatmap = rule(xp, logits, ndim, temperature, kernels, units=units)
        mu = cast(torch.Tensor, residuals.mu)
        mu = mu.clone() if mu is coords else mu
        ctx.mark_non_differentiable(mu)
        ctx.set_materialize_grads(False)  # no full-size zeros for the unused cotangent of P
        ctx.save_for_backward(heatmap, mu, *_saved_temperature(ctx, temperature))
        ctx.ndim, ctx.kernels, ctx.units = ndim, kernels, units
        return coords, mu, heatmap

    @staticmethod
    def backward(ctx: Any, grad_coords: torch.Tensor | None, _mu: Any, grad_heatmap: torch.Tensor | None) -> Any:
        saved = list(ctx.saved_tensors)
        temperature = _restored_temperature(ctx, saved)
        heatmap, mu = saved
        if grad_coords is None:
            grad_coords = torch.zeros_like(mu)
        rule = ctx.kernels.wrap_rule(soft_argmax_backward_from_heatmap)
        kernels = ctx.kernels
        if torch.is_grad_enabled():  # differentiated again: mu must depend on the kept P
            rule, kernels = soft_argmax_backward_from_heatmap, array_api_kernels()
            mu = expected_coordinates_of(xp, heatmap, ctx.ndim)
        grad = rule(xp, heatmap, mu, grad_coords, grad_heatmap, ctx.ndim, temperature, kernels, units=ctx.units)
        grad_temperature = None
        if ctx.temperature_is_tensor and ctx.needs_input_grad[2]:
            log_p = torch.log(heatmap.to(mu.dtype))
            grad_temperature = temperature_cotangent(xp, grad, log_p, temperature, ctx.ndim)
        return grad, None, grad_temperature, None, None


def _keeps_heatmap(logits: torch.Tensor) -> bool:
    """Whether ``soft_argmax`` may keep ``P`` for backward: eager reverse mode on plain tensors."""
    return (
        torch.is_grad_enabled()
        and logits.requires_grad
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(logits)
        and not _has_forward_tangent(logits)
    )


def _kept_field(options: LossOptions) -> str | None:
    """The optional `LossResiduals` field that the regulariser of ``options`` sets."""
    return {"var": "var", "kl": "divergence", "js": "divergence"}.get(options.regularizer or "")


class DsntLossReverseFunction(torch.autograd.Function):
    """``dsnt_loss`` with the core's reverse-mode rule; outputs (loss, lse, mu[, var or divergence]).

    Inputs ``(logits, target, mask, temperature, sigma, options, kernels)``: ``temperature`` and
    ``sigma`` are the array fields of the options (`LossOptions.arrays_split`) or ``None``; a
    tensor temperature gets its gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor,
        target: torch.Tensor,
        mask: Any,
        temperature: Any,
        sigma: Any,
        options: LossOptions,
        kernels: Kernels,
    ) -> Any:
        options = options.with_arrays(temperature, sigma)
        loss, residuals = kernels.wrap_rule(dsnt_loss_forward)(xp, logits, target, mask, options, kernels)
        field = _kept_field(options)
        kept = () if field is None else (getattr(residuals, field),)
        return (cast(torch.Tensor, loss).to(logits.dtype), residuals.lse, residuals.mu, *kept)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, target, mask, temperature, sigma, options, kernels = inputs
        residuals = output[1:]
        ctx.mark_non_differentiable(*residuals)
        optional = (mask, temperature, sigma)
        ctx.present, ctx.n_residuals = tuple(value is not None for value in optional), len(residuals)
        ctx.save_for_backward(logits, target, *(value for value in optional if value is not None), *residuals)
        ctx.options, ctx.kernels = options, kernels

    @staticmethod
    def _unpack(ctx: Any) -> tuple[torch.Tensor, torch.Tensor, Any, LossOptions, LossResiduals]:
        """The saved logits, target, mask, options (arrays put back) and residuals."""
        saved = list(ctx.saved_tensors)
        logits, target = saved[0], saved[1]
        rest = iter(saved[2:])
        mask, temperature, sigma = (next(rest) if present else None for present in ctx.present)
        lse, mu, *kept = rest
        options: LossOptions = ctx.options.with_arrays(temperature, sigma)
        field = _kept_field(options)
        residuals = LossResiduals(lse, mu, **({} if field is None else {field: kept[0]}))
        return logits, target, mask, options, residuals

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_residual_grads: Any) -> Any:
        logits, target, mask, options, saved_residuals = DsntLossReverseFunction._unpack(ctx)
        if _differentiating_backward(logits):  # residuals and rule stay differentiable
            kernels = array_api_kernels()
            _, residuals = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
            grad = dsnt_loss_backward(xp, logits, target, mask, residuals, grad_loss, options, kernels)
        else:
            kernels, residuals = ctx.kernels, saved_residuals
            rule = kernels.wrap_rule(dsnt_loss_backward)
            grad = rule(xp, logits, target, mask, residuals, grad_loss, options, kernels)
        grad_temperature = None
        temperature = options.temperature
        if isinstance(temperature, torch.Tensor) and ctx.needs_input_grad[3]:
            scaled = scaled_logits(xp, logits, per_heatmap(xp, temperature, options.ndim, residuals.mu.dtype))
            grad_temperature = temperature_cotangent(xp, grad, scaled, temperature, options.ndim)
        return grad, None, None, grad_temperature, None, None, None


class DsntLossFunction(DsntLossReverseFunction):
    """`DsntLossReverseFunction` with a forward-mode rule too: ``d loss = <dL/dz, dz>``."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        DsntLossReverseFunction.setup_context(ctx, inputs, output)
        logits, target, *optional = inputs[:5]
        # The same tensors as for backward: torch.func's generated vmap rule expects one set.
        ctx.save_for_forward(logits, target, *(value for value in optional if value is not None), *output[1:])

    @staticmethod
    def jvp(
        ctx: Any, d_logits: Any, _d_target: Any, _d_mask: Any, d_temperature: Any, _d_sigma: Any, *_static: None
    ) -> Any:
        # d loss = <dL/dz, dz>, with the gradient from the backward rule; the residuals are
        # recomputed from the logits on the array-API kernels, so that the result can be
        # differentiated again. A temperature tangent moves the logits' tangent
        # (tangent_with_temperature). The target, mask and sigma get no tangent here:
        # dsnt_loss takes the composed path when one of them requires a gradient.
        logits, target, mask, options, _ = DsntLossReverseFunction._unpack(ctx)
        kernels = array_api_kernels()
        _, residuals = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
        one = torch.ones((), dtype=residuals.mu.dtype, device=logits.device)
        grad = dsnt_loss_backward(xp, logits, target, mask, residuals, one, options, kernels)
        tangent = _logits_tangent(logits, d_logits, options.temperature, d_temperature, options.ndim)
        compute = residuals.mu.dtype
        d_loss = torch.sum(cast(torch.Tensor, grad).to(compute) * tangent.to(compute)).to(logits.dtype)
        return (d_loss, *(None for _ in range(ctx.n_residuals)))


def soft_argmax(
    logits: torch.Tensor, *, ndim: int, temperature: Any, kernels: Kernels, units: str = "normalized"
) -> torch.Tensor:
    """Fused soft-argmax with the core's gradient rule (inputs already validated).

    Examples
    --------
    >>> import torch
    >>> import dsnt_core
    >>> from dsnt_torch import autograd
    >>> logits = torch.zeros(1, 4, 4, requires_grad=True)
    >>> autograd.soft_argmax(logits, ndim=2, temperature=1.0, kernels=dsnt_core.kernels.array_api_kernels())
    tensor([[0., 0.]], grad_fn=<SoftArgmaxKeepingHeatmapFunctionBackward>)
    """
    if torch.jit.is_tracing():  # recorded as tensor operations (see the module's docstring)
        coords, _ = soft_argmax_forward(xp, logits, ndim, temperature, array_api_kernels(), units=units)
        return cast(torch.Tensor, coords)
    if _keeps_heatmap(logits) and not _has_forward_tangent(temperature):
        coords, _, _ = SoftArgmaxKeepingHeatmapFunction.apply(logits, ndim, temperature, kernels, units)
        return cast(torch.Tensor, coords)
    function = SoftArgmaxReverseFunction if torch.compiler.is_compiling() else SoftArgmaxFunction
    coords, _, _ = function.apply(logits, ndim, temperature, kernels, units)
    return coords


def dsnt_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: Any, options: LossOptions, *, kernels: Kernels
) -> torch.Tensor:
    """Fused DSNT loss with the core's gradient rule (inputs already validated).

    A target, mask or sigma that requires a gradient takes the composed (unfused) path, so
    that its gradient is exact too; a tensor temperature gets its gradient from the fused rule.
    """
    static, temperature, sigma = options.arrays_split()
    if any(isinstance(value, torch.Tensor) and value.requires_grad for value in (target, mask, sigma)):
        return composed_dsnt_loss(logits, target, mask=mask, **options.as_kwargs())
    if torch.jit.is_tracing():  # recorded as tensor operations (see the module's docstring)
        loss, _ = dsnt_loss_forward(xp, logits, target, mask, options, array_api_kernels())
        return cast(torch.Tensor, loss).to(logits.dtype)
    function = DsntLossReverseFunction if torch.compiler.is_compiling() else DsntLossFunction
    return function.apply(logits, target, mask, temperature, sigma, static, kernels)[0]
