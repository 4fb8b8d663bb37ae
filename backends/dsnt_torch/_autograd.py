"""``torch.autograd.Function`` wrappers over :mod:`dsnt_core._fused_rules`.

The functions use the ``setup_context`` form with ``generate_vmap_rule = True``, so they
work with ``torch.func.grad``, ``torch.func.vmap`` and ``torch.compile(fullgraph=True)``.
Only the logits (and the small target, mask and per-heatmap residuals) are saved for
backward. Double backward is supported: when the backward pass itself is differentiated
(``create_graph=True``), the residuals are recomputed from the logits with grad enabled.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from array_api_compat import torch as xp

from dsnt_core import _fused_rules as rules
from dsnt_core.composed import composed_dsnt_loss

from . import _native

_compiled_kernels = os.environ.get("DSNT_TORCH_COMPILE", "0") == "1"
_native_kernels = os.environ.get("DSNT_TORCH_NATIVE", "0") == "1"


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the fused forward and backward rules through ``torch.compile`` (opt-in).

    On CPU this fuses each rule into a few C++ loops (about 3x faster than eager for a
    JS training step), at the price of a compilation on the first call for every new
    shape, dtype and option set (several seconds). Also enabled by the environment
    variable ``DSNT_TORCH_COMPILE=1``. Inside a ``torch.compile``-d region the eager rules
    are used and compiled with the rest of the graph.

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_compiled_kernels(False)  # the default: eager, no compilation
    """
    global _compiled_kernels
    _compiled_kernels = bool(enabled)


def use_native_kernels(enabled: bool = True) -> None:
    """Run the full-size passes of the fused rules on native C++ CPU kernels (opt-in).

    The fastest path on CPU (see the benchmarks page): each heatmap is reduced and
    differentiated in one or two cache-resident sweeps with ATen's vectorised ``exp`` and
    ``log``. The kernels are compiled with ``torch.utils.cpp_extension`` the first time they
    are needed (a C++ compiler and ``ninja`` are required, about 30 s on two cores) and cached
    on disk by PyTorch, so later processes load them in well under a second; call
    `build_native_kernels` to pay that cost up front. Used for CPU tensors outside
    ``torch.compile`` and ``torch.func`` transforms (those take the array-API rules); if
    the build fails, a ``RuntimeWarning`` says why and the array-API rules are used. Also
    enabled by the environment variable ``DSNT_TORCH_NATIVE=1``; takes precedence over
    `use_compiled_kernels` on CPU.

    Examples
    --------
    >>> import dsnt_torch
    >>> dsnt_torch.use_native_kernels(False)  # the default: array-API rules, nothing compiled
    """
    global _native_kernels
    _native_kernels = bool(enabled)


def build_native_kernels() -> None:
    """Build (or load from PyTorch's cache) the native CPU kernels now.

    Raises
    ------
    RuntimeError
        If they cannot be built here, with the compiler's reason.
    """
    _native.extension()


@functools.cache
def _compiled(rule: Any) -> Any:
    return torch.compile(rule, dynamic=False)


def _kernel(rule: Any, logits: torch.Tensor) -> Any:
    """``rule`` with the passes for ``logits``: native, compiled or the array-API ones."""
    if _native_kernels and _native.applicable(logits):
        return functools.partial(rule, passes=_native)
    if _compiled_kernels and not torch.compiler.is_compiling():
        return _compiled(rule)
    return rule


class _SoftArgmax(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, ndim: int, temperature: float) -> Any:
        coords, residuals = _kernel(rules.soft_argmax_forward, logits)(xp, logits, ndim, temperature)
        mu = residuals["mu"]
        return coords, residuals["lse"], mu.clone() if mu is coords else mu

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, ndim, temperature = inputs
        _, lse, mu = output
        ctx.mark_non_differentiable(lse, mu)
        ctx.save_for_backward(logits, lse, mu)
        ctx.ndim, ctx.temperature = ndim, temperature

    @staticmethod
    def backward(ctx: Any, grad_coords: torch.Tensor, _lse: Any, _mu: Any) -> Any:
        logits, lse, mu = ctx.saved_tensors
        residuals = {"lse": lse, "mu": mu}
        if torch.is_grad_enabled():  # differentiating the backward pass: residuals must depend on logits
            _, residuals = rules.soft_argmax_forward(xp, logits, ctx.ndim, ctx.temperature)
            grad = rules.soft_argmax_backward(xp, logits, residuals, grad_coords, ctx.ndim, ctx.temperature)
        else:
            grad = _kernel(rules.soft_argmax_backward, logits)(
                xp, logits, residuals, grad_coords, ctx.ndim, ctx.temperature
            )
        return grad, None, None


def _residual_keys(options: rules.LossOptions) -> tuple[str, ...]:
    extra = {"var": ("var",), "kl": ("divergence",), "js": ("divergence",)}
    return ("lse", "mu", *extra.get(options.regularizer, ()))


class _DsntLoss(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, target: torch.Tensor, mask: Any, options: rules.LossOptions) -> Any:
        loss, residuals = _kernel(rules.dsnt_loss_forward, logits)(xp, logits, target, mask, options)
        return (loss.to(logits.dtype), *(residuals[k] for k in _residual_keys(options)))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        logits, target, mask, options = inputs
        residuals = output[1:]
        ctx.mark_non_differentiable(*residuals)
        ctx.has_mask = mask is not None
        ctx.save_for_backward(logits, target, *((mask,) if ctx.has_mask else ()), *residuals)
        ctx.options = options

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_residual_grads: Any) -> Any:
        saved = list(ctx.saved_tensors)
        logits, target = saved[0], saved[1]
        mask = saved[2] if ctx.has_mask else None
        keys = _residual_keys(ctx.options)
        residuals = dict(zip(keys, saved[3 if ctx.has_mask else 2 :]))
        if torch.is_grad_enabled():  # double backward: residuals and rule stay differentiable
            _, residuals = rules.dsnt_loss_forward(xp, logits, target, mask, ctx.options)
            grad = rules.dsnt_loss_backward(xp, logits, target, mask, residuals, grad_loss, ctx.options)
        else:
            grad = _kernel(rules.dsnt_loss_backward, logits)(
                xp, logits, target, mask, residuals, grad_loss, ctx.options
            )
        return grad, None, None, None


def soft_argmax(logits: torch.Tensor, *, ndim: int, temperature: float) -> torch.Tensor:
    """Fused soft-argmax with the core's gradient rule (inputs already validated)."""
    coords, _, _ = _SoftArgmax.apply(logits, ndim, temperature)
    return coords


def dsnt_loss(logits: torch.Tensor, target: torch.Tensor, mask: Any, options: rules.LossOptions) -> torch.Tensor:
    """Fused DSNT loss with the core's gradient rule (inputs already validated).

    A target or mask that requires a gradient takes the composed (unfused) path, so that
    its gradient is exact too.
    """
    if target.requires_grad or (mask is not None and mask.requires_grad):
        return composed_dsnt_loss(logits, target, mask=mask, **options.as_kwargs())
    return _DsntLoss.apply(logits, target, mask, options)[0]
