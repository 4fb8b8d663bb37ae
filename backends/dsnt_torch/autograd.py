"""The PyTorch adapter: the core's gradient rules as ``torch.autograd.Function``s.

Registered in the ``dsnt_core.adapters`` entry-point group, so ``dsnt_core.soft_argmax``
and ``dsnt_core.dsnt_loss`` route torch tensors here with validated inputs and the kernel
implementation chosen for the call. The functions use the ``setup_context`` form with
``generate_vmap_rule = True``, so they work with ``torch.func.grad``, ``torch.func.vmap``
and ``torch.compile(fullgraph=True)``. Only the logits (and the small target, mask and
per-heatmap residuals) are saved for backward. Double backward is supported: when the
backward pass itself is differentiated (``create_graph=True``), the residuals are
recomputed from the logits with grad enabled, on the array-API kernels.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from array_api_compat import torch as xp

from dsnt_core.composed import composed_dsnt_loss
from dsnt_core.kernels import Kernels, LossResiduals, SoftArgmaxResiduals, array_api_kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import soft_argmax_backward, soft_argmax_forward


class SoftArgmaxFunction(torch.autograd.Function):
    """``soft_argmax`` with the core's rule; outputs (coords, lse, mu), the last two not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, ndim: int, temperature: float, kernels: Kernels) -> Any:
        coords, residuals = kernels.wrap_rule(soft_argmax_forward)(xp, logits, ndim, temperature, kernels)
        mu = cast(torch.Tensor, residuals.mu)
        return coords, residuals.lse, mu.clone() if mu is coords else mu

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, ndim, temperature, kernels = inputs
        _, lse, mu = output
        ctx.mark_non_differentiable(lse, mu)
        ctx.save_for_backward(logits, lse, mu)
        ctx.ndim, ctx.temperature, ctx.kernels = ndim, temperature, kernels

    @staticmethod
    def backward(ctx: Any, grad_coords: torch.Tensor, _lse: Any, _mu: Any) -> Any:
        logits, lse, mu = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiating the backward pass: residuals must depend on logits
            kernels = array_api_kernels()
            _, residuals = soft_argmax_forward(xp, logits, ctx.ndim, ctx.temperature, kernels)
            grad = soft_argmax_backward(xp, logits, residuals, grad_coords, ctx.ndim, ctx.temperature, kernels)
        else:
            kernels = ctx.kernels
            residuals = SoftArgmaxResiduals(lse, mu)
            rule = kernels.wrap_rule(soft_argmax_backward)
            grad = rule(xp, logits, residuals, grad_coords, ctx.ndim, ctx.temperature, kernels)
        return grad, None, None, None


def _kept_field(options: LossOptions) -> str | None:
    """The optional `LossResiduals` field that the regulariser of ``options`` sets."""
    return {"var": "var", "kl": "divergence", "js": "divergence"}.get(options.regularizer or "")


class DsntLossFunction(torch.autograd.Function):
    """``dsnt_loss`` with the core's rule; outputs (loss, lse, mu[, var or divergence])."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor, target: torch.Tensor, mask: Any, options: LossOptions, kernels: Kernels
    ) -> Any:
        loss, residuals = kernels.wrap_rule(dsnt_loss_forward)(xp, logits, target, mask, options, kernels)
        field = _kept_field(options)
        kept = () if field is None else (getattr(residuals, field),)
        return (cast(torch.Tensor, loss).to(logits.dtype), residuals.lse, residuals.mu, *kept)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, target, mask, options, kernels = inputs
        residuals = output[1:]
        ctx.mark_non_differentiable(*residuals)
        ctx.has_mask = mask is not None
        ctx.save_for_backward(logits, target, *((mask,) if ctx.has_mask else ()), *residuals)
        ctx.options, ctx.kernels = options, kernels

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_residual_grads: Any) -> Any:
        saved = list(ctx.saved_tensors)
        logits, target = saved[0], saved[1]
        mask = saved[2] if ctx.has_mask else None
        lse, mu, *kept = saved[3 if ctx.has_mask else 2 :]
        options: LossOptions = ctx.options
        if torch.is_grad_enabled():  # double backward: residuals and rule stay differentiable
            kernels = array_api_kernels()
            _, residuals = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
            grad = dsnt_loss_backward(xp, logits, target, mask, residuals, grad_loss, options, kernels)
        else:
            kernels = ctx.kernels
            field = _kept_field(options)
            residuals = LossResiduals(lse, mu, **({} if field is None else {field: kept[0]}))
            rule = kernels.wrap_rule(dsnt_loss_backward)
            grad = rule(xp, logits, target, mask, residuals, grad_loss, options, kernels)
        return grad, None, None, None, None


def soft_argmax(logits: torch.Tensor, *, ndim: int, temperature: float, kernels: Kernels) -> torch.Tensor:
    """Fused soft-argmax with the core's gradient rule (inputs already validated).

    Examples
    --------
    >>> import torch
    >>> import dsnt_core
    >>> from dsnt_torch import autograd
    >>> logits = torch.zeros(1, 4, 4, requires_grad=True)
    >>> autograd.soft_argmax(logits, ndim=2, temperature=1.0, kernels=dsnt_core.kernels.array_api_kernels())
    tensor([[0., 0.]], grad_fn=<SoftArgmaxFunctionBackward>)
    """
    coords, _, _ = SoftArgmaxFunction.apply(logits, ndim, temperature, kernels)
    return coords


def dsnt_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: Any, options: LossOptions, *, kernels: Kernels
) -> torch.Tensor:
    """Fused DSNT loss with the core's gradient rule (inputs already validated).

    A target or mask that requires a gradient takes the composed (unfused) path, so that
    its gradient is exact too.
    """
    if target.requires_grad or (mask is not None and mask.requires_grad):
        return composed_dsnt_loss(logits, target, mask=mask, **options.as_kwargs())
    return DsntLossFunction.apply(logits, target, mask, options, kernels)[0]
