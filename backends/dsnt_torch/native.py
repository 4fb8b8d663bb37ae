"""The ``"torch-native"`` kernels: C++ CPU passes, the automatic choice for CPU tensors, built on first use.

The extension (``native_passes.cpp``, next to this file) implements the ``softmax_statistics``,
``gradient_map``, ``softmax_heatmap`` and ``heatmap_gradient`` passes of the kernel contract
(:mod:`dsnt_core.kernels.contract`) with ATen's vectorised math, one heatmap per task while it
is in cache. The rules of
:mod:`dsnt_core.ops` run unchanged on top of it. It is compiled with
``torch.utils.cpp_extension`` the first time it is needed (a C++ compiler and ``ninja`` are
required; about 30 s on two cores) and cached on disk by PyTorch
(``TORCH_EXTENSIONS_DIR``), so later processes load it in well under a second. A build
says so on standard error before it starts. ``DSNT_TORCH_NATIVE=0`` in the environment (or
``dsnt_core.use_kernels("array-api")``) keeps CPU tensors on the array-API passes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from array_api_compat import torch as torch_namespace

from dsnt_core.kernels import (
    ArrayAPIKernels,
    Divergence,
    DivergenceKind,
    LossResiduals,
    SoftArgmaxResiduals,
    SoftmaxStatistics,
)
from dsnt_core.kernels.contract import Rule
from dsnt_core.ops import dsnt_loss as loss_rules
from dsnt_core.ops import soft_argmax as soft_argmax_rules

SOURCE = Path(__file__).with_name("native_passes.cpp")
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],  # F16C: ATen's AVX2 float16 conversions need it, as its own build has
}


def _compiler_flags() -> list[str]:
    """Vector flags matching the capability ATen itself dispatches to on this CPU, and OpenMP."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _FLAGS.get(capability)
    if flags is None:
        return ["-O3", "-fopenmp"]
    return ["-O3", "-fopenmp", *flags, f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]


def _extension_name(source: str, flags: list[str]) -> str:
    """The CPU capability and a digest of the source and flags: one build folder per version.

    ``load_inline`` notices a changed source only within one process; across processes that
    share PyTorch's extension cache (an older checkout, a test run beside this one), two
    sources under one name would rebuild over each other, and one could load the other's
    module while that build is under way.
    """
    digest = hashlib.sha256("\0".join([source, *flags]).encode()).hexdigest()[:12]
    return f"dsnt_native_passes_{torch.backends.cpu.get_cpu_capability().lower()}_{digest}"


def _built(name: str) -> bool:
    """Whether PyTorch's extension cache already holds a build of ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    try:
        folder = Path(_get_build_directory(name, verbose=False))
    except Exception:  # a private helper of torch: if it changes, assume a build is needed
        return False
    return any(folder.glob(f"{name}*.so")) or any(folder.glob(f"{name}*.pyd"))


@functools.cache
def extension() -> ModuleType:
    """The compiled extension (built and cached on the first call).

    Raises
    ------
    RuntimeError
        If it cannot be built (no C++ compiler, no ``ninja``, ...).
    """
    from torch.utils.cpp_extension import load_inline

    source, flags = SOURCE.read_text(), _compiler_flags()
    name = _extension_name(source, flags)
    if not _built(name):
        print(
            "dsnt-core: building the native CPU kernels for PyTorch, once per machine (about 30 s; later "
            "processes load them from PyTorch's extension cache). DSNT_TORCH_NATIVE=0 or "
            'dsnt_core.use_kernels("array-api") skips them.',
            file=sys.stderr,
            flush=True,
        )
    try:
        return load_inline(
            name=name,
            cpp_sources=[source],  # defines its own module: the four passes and DivergenceKind
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],  # at::parallel_for runs on ATen's OpenMP pool
            verbose=False,
        )
    except Exception as error:  # the build tools report many kinds of failure
        raise RuntimeError(f"could not build dsnt-core's native CPU kernels: {error}") from error


@functools.cache
def available() -> bool:
    """Whether the extension could be built here (warns once with the reason if not)."""
    try:
        extension()
    except RuntimeError as error:
        warnings.warn(f"{error}; using the array-API passes instead", RuntimeWarning, stacklevel=3)
        return False
    return True


def applicable(logits: Any) -> bool:
    """Whether ``logits`` can go through the native passes.

    Plain CPU tensors of a floating dtype, outside ``torch.compile`` tracing and functorch
    transforms (``vmap``, ``grad``), whose wrapped tensors have no data pointer.
    """
    return (
        isinstance(logits, torch.Tensor)
        and logits.device.type == "cpu"
        and logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(logits)
        and available()
    )


# ------------------------------------------------------------------------------ the passes


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit floats, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _heatmaps(logits: torch.Tensor, ndim: int, *, keep_dtype: bool = False) -> torch.Tensor:
    """(N, D, H, W) contiguous view (or copy); missing axes have length 1.

    In the compute dtype, or with ``keep_dtype`` in the logits' own (the passes that take 16-bit heatmaps).
    """
    spatial = tuple(logits.shape[logits.ndim - ndim :])
    u = logits if keep_dtype else logits.to(_compute_dtype(logits.dtype))
    return u.reshape(-1, *((1,) * (3 - ndim)), *spatial).contiguous()


def _per_heatmap(
    vectors: Sequence[Any], u: torch.Tensor, batch: tuple, fill: float, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """Per-axis vectors (x, y[, z]) as (N, n) contiguous tensors in ``dtype`` (``u``'s if None); missing: ``fill``."""
    dtype = u.dtype if dtype is None else dtype
    n, lengths = u.shape[0], (u.shape[3], u.shape[2], u.shape[1])
    result = []
    for k, length in enumerate(lengths):
        if k < len(vectors):
            vector = vectors[k]
            if vector.shape != (*batch, length):  # skipped in the common case: a few microseconds a call
                vector = torch.broadcast_to(vector, (*batch, length))
            result.append(vector.reshape(n, length).to(dtype).contiguous())
        else:
            result.append(torch.full((n, 1), fill, dtype=dtype))
    return result


def _per_heatmap_numbers(values: Any, u: torch.Tensor, batch: tuple) -> torch.Tensor:
    """Per-heatmap numbers (``lse``, ``coef``) as an (N,) contiguous tensor in the compute dtype."""
    return torch.broadcast_to(values, batch).reshape(u.shape[0]).to(u.dtype).contiguous()


@functools.cache
def _native_kinds() -> dict[DivergenceKind | None, Any]:
    """The extension's ``DivergenceKind`` for each contract kind (``None``: no divergence)."""
    kinds = extension().DivergenceKind
    return {None: kinds.NONE, DivergenceKind.KL: kinds.KL, DivergenceKind.JS: kinds.JS}


@functools.lru_cache(maxsize=64)
def _grids(spatial: tuple[int, ...], dtype: torch.dtype) -> tuple[Any, ...]:
    with torch.inference_mode(False):  # ordinary tensors, even when first asked for under inference mode
        shaped = torch.empty((), dtype=dtype).expand(spatial)  # shape and dtype only, no storage
        return ArrayAPIKernels().coordinate_grids(torch_namespace, shaped, len(spatial))


# ------------------------------------------------------------- whole rules, for the plain case

_WIDE = (torch.float32, torch.float64)
_STORED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The extension's functions that run a whole rule (the others are passes).
WHOLE_RULES = (
    "soft_argmax_forward",
    "soft_argmax_backward",
    "soft_argmax_backward_from_heatmap",
    "loss_forward",
    "loss_backward",
)
#: The options of ``LossOptions`` that the extension's loss rules take; another option takes
#: the rules of ``dsnt_core.ops`` unless it has its default value.
_LOSS_OPTIONS = frozenset({"ndim", "temperature", "sigma", "regularizer", "reg_weight", "distance"})


def _is_number(value: Any) -> bool:
    """A positive finite Python number (not a bool, not an array): a plain temperature or sigma."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _plain_tensor(value: Any, dtype: torch.dtype) -> bool:
    """A CPU tensor of ``dtype`` outside ``torch.func`` transforms that no gradient is recorded for here."""
    return (
        isinstance(value, torch.Tensor)
        and value.dtype == dtype
        and value.device.type == "cpu"
        and not torch._C._functorch.is_functorch_wrapped_tensor(value)
        and not (value.requires_grad and torch.is_grad_enabled())
    )


def _plain_logits(logits: Any, ndim: Any, kernels: Any, temperature: Any) -> bool:
    """Float32 or float64 logits the extension's rules take, with a number for the temperature."""
    return (
        isinstance(kernels, NativeKernels)
        and isinstance(ndim, int)
        and 1 <= ndim <= 3
        and isinstance(logits, torch.Tensor)
        and logits.dtype in _WIDE
        and logits.ndim >= ndim
        and logits.numel() > 0
        and _plain_tensor(logits, logits.dtype)
        and _is_number(temperature)
    )


def _per_point(values: Any, batch: tuple, ndim: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(..., ndim) values (target, mu, cotangent) as (N, ndim) contiguous ones in ``dtype``; None if not plain."""
    if not isinstance(values, torch.Tensor) or not _plain_tensor(values, values.dtype):
        return None
    if values.shape != (*batch, ndim):
        values = torch.broadcast_to(values, (*batch, ndim))
    return values.reshape(-1, ndim).to(dtype).contiguous()


def _per_heatmap_lse(values: Any, batch: tuple, dtype: torch.dtype) -> torch.Tensor | None:
    """Per-heatmap numbers of the batch shape (``lse``, a divergence) as an (N,) tensor; None if not plain."""
    if not isinstance(values, torch.Tensor) or not _plain_tensor(values, dtype) or tuple(values.shape) != batch:
        return None
    return values.reshape(-1).contiguous()


@functools.lru_cache(maxsize=64)
def _all_grids(spatial: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """The rules' grids (x, y, z) as the extension takes them: a missing axis is the one value 0."""
    grids = list(_grids(spatial, dtype))
    with torch.inference_mode(False):
        return [g.contiguous() for g in grids] + [torch.zeros(1, dtype=dtype) for _ in range(3 - len(grids))]


def _fast_soft_argmax_forward(
    xp: Any, logits: Any, ndim: Any, temperature: Any, kernels: Any
) -> tuple[Any, SoftArgmaxResiduals] | None:
    """`soft_argmax_forward` as one call: ``lse`` and ``mu`` from one sweep (None where not plain)."""
    if not _plain_logits(logits, ndim, kernels, temperature):
        return None
    batch, spatial = tuple(logits.shape[: logits.ndim - ndim]), tuple(logits.shape[logits.ndim - ndim :])
    u = _heatmaps(logits, ndim)
    lse, mu = extension().soft_argmax_forward(u, _all_grids(spatial, logits.dtype), ndim, 1.0 / temperature)
    mu = mu.reshape((*batch, ndim))
    return mu, SoftArgmaxResiduals(lse.reshape(batch), mu)


def _fast_soft_argmax_backward(
    xp: Any, logits: Any, residuals: Any, cotangent: Any, ndim: Any, temperature: Any, kernels: Any
) -> Any | None:
    """`soft_argmax_backward` as one call: the per-axis vectors and the gradient map in C++."""
    if not _plain_logits(logits, ndim, kernels, temperature) or not isinstance(residuals, SoftArgmaxResiduals):
        return None
    dtype = logits.dtype
    batch, spatial = tuple(logits.shape[: logits.ndim - ndim]), tuple(logits.shape[logits.ndim - ndim :])
    lse, mu = _per_heatmap_lse(residuals.lse, batch, dtype), _per_point(residuals.mu, batch, ndim, dtype)
    ct = _per_point(cotangent, batch, ndim, dtype)
    if lse is None or mu is None or ct is None:
        return None
    u, grids, inv_temperature = _heatmaps(logits, ndim), _all_grids(spatial, dtype), 1.0 / temperature
    grad = extension().soft_argmax_backward(u, grids, lse, mu, ct, ndim, inv_temperature)
    return grad.reshape(logits.shape)


def _fast_soft_argmax_backward_from_heatmap(
    xp: Any,
    heatmap: Any,
    mu: Any,
    cotangent: Any,
    heatmap_cotangent: Any,
    ndim: Any,
    temperature: Any,
    kernels: Any,
) -> Any | None:
    """`soft_argmax_backward_from_heatmap` without a cotangent of ``P``, as one call."""
    if heatmap_cotangent is not None or not isinstance(kernels, NativeKernels) or not _is_number(temperature):
        return None
    if not (isinstance(ndim, int) and 1 <= ndim <= 3 and isinstance(heatmap, torch.Tensor) and heatmap.numel() > 0):
        return None
    if heatmap.ndim < ndim or not _plain_tensor(heatmap, heatmap.dtype) or heatmap.dtype not in _STORED:
        return None
    compute = _compute_dtype(heatmap.dtype)
    batch, spatial = tuple(heatmap.shape[: heatmap.ndim - ndim]), tuple(heatmap.shape[heatmap.ndim - ndim :])
    mu_flat, ct = _per_point(mu, batch, ndim, compute), _per_point(cotangent, batch, ndim, compute)
    if mu_flat is None or ct is None:
        return None
    grad = extension().soft_argmax_backward_from_heatmap(
        _heatmaps(heatmap, ndim, keep_dtype=True), _all_grids(spatial, compute), mu_flat, ct, ndim, 1.0 / temperature
    )
    return grad.reshape(heatmap.shape).to(heatmap.dtype)


def _loss_arguments(
    logits: Any, target: Any, mask: Any, options: Any, kernels: Any
) -> tuple[tuple, dict[str, Any]] | None:
    """The extension's arguments shared by both loss rules for a plain call (None where not plain).

    Plain: float32 or float64 logits, numbers for the temperature and sigma, a regulariser
    and distance the extension knows, and every other option at its default.
    """
    if not isinstance(options, loss_rules.LossOptions):
        return None
    fields = dataclasses.fields(options)
    if any(f.name not in _LOSS_OPTIONS and getattr(options, f.name) != f.default for f in fields):
        return None
    ndim, temperature, sigma = options.ndim, options.temperature, options.sigma
    if not _plain_logits(logits, ndim, kernels, temperature) or not _is_number(sigma):
        return None
    regularizers, distances = _native_loss_choices()
    regularizer, distance = regularizers.get(options.regularizer), distances.get(options.distance)
    if regularizer is None or distance is None or not isinstance(options.reg_weight, (int, float)):
        return None
    dtype = logits.dtype
    batch, spatial = tuple(logits.shape[: logits.ndim - ndim]), tuple(logits.shape[logits.ndim - ndim :])
    t = _per_point(target, batch, ndim, dtype)
    if t is None:
        return None
    weights = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or not _plain_tensor(mask, mask.dtype):
            return None
        w = mask.to(dtype)  # dsnt_loss.point_weights: mask / max(sum(mask), 1)
        w = w / torch.clamp_min(torch.sum(w), 1.0)
        weights = torch.broadcast_to(w, batch).reshape(-1).contiguous()
    arguments = dict(
        grids=_all_grids(spatial, dtype),
        ndim=ndim,
        inv_temperature=1.0 / temperature,
        sigma=float(sigma),
        regularizer=regularizer,
        reg_weight=float(options.reg_weight),
        distance=distance,
    )
    return (_heatmaps(logits, ndim), t, weights), arguments


@functools.cache
def _native_loss_choices() -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The extension's ``Regularizer`` and ``Distance`` for each option value the rules take."""
    module = extension()
    regularizers = {None: module.Regularizer.NONE, "var": module.Regularizer.VAR}
    regularizers |= {"kl": module.Regularizer.KL, "js": module.Regularizer.JS}
    distances = {"euclidean": module.Distance.EUCLIDEAN, "l1": module.Distance.L1, "mse": module.Distance.MSE}
    return regularizers, distances


def _fast_loss_forward(
    xp: Any, logits: Any, target: Any, mask: Any, options: Any, kernels: Any
) -> tuple[Any, LossResiduals] | None:
    """`dsnt_loss_forward` as one call: the statistics pass and every per-heatmap number in C++."""
    prepared = _loss_arguments(logits, target, mask, options, kernels)
    if prepared is None:
        return None
    (u, t, weights), arguments = prepared
    loss, lse, mu, kept = extension().loss_forward(u, t, weights, **arguments)
    batch = tuple(logits.shape[: logits.ndim - options.ndim])
    residuals = LossResiduals(lse.reshape(batch), mu.reshape((*batch, options.ndim)))
    if options.regularizer == "var":
        residuals = residuals._replace(var=kept.reshape((*batch, options.ndim)))
    elif options.regularizer is not None:
        residuals = residuals._replace(divergence=kept.reshape(batch))
    return loss, residuals


def _fast_loss_backward(
    xp: Any, logits: Any, target: Any, mask: Any, residuals: Any, cotangent: Any, options: Any, kernels: Any
) -> Any | None:
    """`dsnt_loss_backward` as one call: the per-axis vectors and the gradient map in C++."""
    if not isinstance(residuals, LossResiduals) or not isinstance(cotangent, torch.Tensor) or cotangent.ndim != 0:
        return None
    prepared = _loss_arguments(logits, target, mask, options, kernels)
    if prepared is None or not _plain_tensor(cotangent, cotangent.dtype):
        return None
    (u, t, weights), arguments = prepared
    batch, ndim, dtype = tuple(logits.shape[: logits.ndim - options.ndim]), options.ndim, logits.dtype
    mu = _per_point(residuals.mu, batch, ndim, dtype)
    kept: torch.Tensor | None = None
    if options.regularizer == "var":
        kept = _per_point(residuals.var, batch, ndim, dtype)
    elif options.regularizer is not None:
        kept = _per_heatmap_lse(residuals.divergence, batch, dtype)
    lse = _per_heatmap_lse(residuals.lse, batch, dtype)
    if lse is None or mu is None or (kept is not None) != (options.regularizer is not None):
        return None
    grad = extension().loss_backward(u, t, weights, lse=lse, mu=mu, kept=kept, cotangent=float(cotangent), **arguments)
    return grad.reshape(logits.shape)


#: The rules of ``dsnt_core.ops`` that the extension runs whole, and how.
_FAST_RULES: dict[Callable[..., Any], Callable[..., Any]] = {
    soft_argmax_rules.soft_argmax_forward: _fast_soft_argmax_forward,
    soft_argmax_rules.soft_argmax_backward: _fast_soft_argmax_backward,
    soft_argmax_rules.soft_argmax_backward_from_heatmap: _fast_soft_argmax_backward_from_heatmap,
    loss_rules.dsnt_loss_forward: _fast_loss_forward,
    loss_rules.dsnt_loss_backward: _fast_loss_backward,
}


class _WholeRule:
    """A rule of ``dsnt_core.ops`` that runs as one call of the extension in the plain case.

    The plain case: the rule's positional arguments only (keyword-only ones at their
    defaults), and what the fast version accepts (it answers None otherwise); every other
    call runs the rule itself, so arguments the rules gain later (an array temperature,
    ``units``) keep their meaning.
    """

    def __init__(self, rule: Callable[..., Any], fast: Callable[..., Any]) -> None:
        self.rule, self.fast = rule, fast
        parameters = inspect.signature(rule).parameters.values()
        self.positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
        self.defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
        functools.update_wrapper(self, rule)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == self.positional and all(
            name in self.defaults and type(value) is type(self.defaults[name]) and value == self.defaults[name]
            for name, value in kwargs.items()
        ):
            result = self.fast(*args)
            if result is not None:
                return result
        return self.rule(*args, **kwargs)


@functools.cache
def _whole_rule(rule: Callable[..., Any]) -> Callable[..., Any]:
    fast = _FAST_RULES.get(rule)
    return rule if fast is None else _WholeRule(rule, fast)


class NativeKernels(ArrayAPIKernels):
    """C++ CPU passes for torch tensors: each heatmap reduced and differentiated while in cache.

    The fastest path on CPU (see the benchmarks page), with ATen's vectorised ``exp`` and
    ``log``, and the automatic choice for CPU tensors outside ``torch.compile`` and
    ``torch.func`` transforms (those take the array-API passes). Compiled with
    ``torch.utils.cpp_extension`` the first time it is needed (a C++ compiler and ``ninja``,
    about 30 s on two cores, announced on standard error) and cached on disk by PyTorch. If
    the build fails, a warning says why once and the array-API passes run instead.
    ``DSNT_TORCH_NATIVE=0`` in the environment makes them opt-in.

    Examples
    --------
    >>> import dsnt_core
    >>> info = {k.name: k for k in dsnt_core.available_kernels()}["torch-native"]
    >>> info.libraries
    ('torch',)
    """

    name = "torch-native"
    description = "PyTorch CPU: C++ passes, one cache-resident sweep per heatmap (built once, about 30 s)"
    libraries = ("torch",)
    automatic = os.environ.get("DSNT_TORCH_NATIVE", "") != "0"

    def unavailable_reason(self) -> str | None:
        """The build error, or ``None`` once the extension is built or loaded."""
        try:
            extension()
        except RuntimeError as error:
            return str(error)
        return None

    def applies_to(self, logits: Any) -> bool:
        """Plain CPU tensors of a floating dtype outside tracing and ``torch.func`` transforms."""
        return applicable(logits)

    def wrap_rule(self, rule: Rule) -> Rule:
        """The whole rule in C++ for plain calls (numbers for temperature and sigma, float32 or float64).

        ``soft_argmax_forward``, ``soft_argmax_backward``, ``soft_argmax_backward_from_heatmap``,
        ``dsnt_loss_forward`` and ``dsnt_loss_backward`` run their per-heatmap arithmetic in the
        extension too, around the same passes; any other call, and any other rule, runs the
        rule of ``dsnt_core.ops`` on the native passes.
        """
        return cast(Rule, _whole_rule(rule))

    def coordinate_grids(self, xp: Any, logits: Any, ndim: int) -> tuple[Any, ...]:
        """The array-API grids, cached per shape and dtype."""
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
        return _grids(tuple(logits.shape[logits.ndim - ndim :]), dtype)

    def softmax_moments(self, xp: Any, logits: Any, ndim: int, temperature: Any) -> SoftArgmaxResiduals:
        """One sweep per heatmap: log-sum-exp and the expected coordinates, nothing written."""
        if not _is_number(temperature):
            return super().softmax_moments(xp, logits, ndim, temperature)
        batch, spatial = tuple(logits.shape[: logits.ndim - ndim]), tuple(logits.shape[logits.ndim - ndim :])
        u = _heatmaps(logits, ndim)
        lse, mu = extension().soft_argmax_forward(u, _all_grids(spatial, u.dtype), ndim, 1.0 / temperature)
        return SoftArgmaxResiduals(lse.reshape(batch), mu.reshape((*batch, ndim)))

    def softmax_statistics(
        self,
        xp: Any,
        logits: Any,
        ndim: int,
        temperature: float,
        *,
        entropy: bool = False,
        mixture: Sequence[Any] | None = None,
    ) -> SoftmaxStatistics:
        """One sweep per heatmap: log-sum-exp, marginals, entropy and the JS sums."""
        if not _is_number(temperature):  # an array temperature: the array-API pass
            return super().softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        u = _heatmaps(logits, ndim)
        factors = None if mixture is None else _per_heatmap(mixture, u, batch, 1.0)
        # Flat (N, ...) results in the field order of SoftmaxStatistics; None where not asked for.
        lse, margins, neg_entropy, m_log_m, p_log_m = extension().softmax_statistics(
            u, inv_temperature=1.0 / temperature, entropy=entropy, mixture=factors
        )

        def batched(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.reshape(batch)

        return SoftmaxStatistics(
            lse=lse.reshape(batch),
            margins=tuple(m.reshape((*batch, m.shape[1])) for m in margins[:ndim]),
            neg_entropy=batched(neg_entropy),
            m_log_m=batched(m_log_m),
            p_log_m=batched(p_log_m),
        )

    def softmax_heatmap(self, xp: Any, logits: Any, ndim: int, temperature: float) -> tuple[SoftArgmaxResiduals, Any]:
        """Per heatmap, one ``exp`` sweep and one that writes ``P`` (in the logits' dtype) and sums ``mu``."""
        if not _is_number(temperature):
            return super().softmax_heatmap(xp, logits, ndim, temperature)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        u = _heatmaps(logits, ndim, keep_dtype=True)
        lse, mu, heatmap = extension().softmax_heatmap(u, ndim=ndim, inv_temperature=1.0 / temperature)
        return SoftArgmaxResiduals(lse.reshape(batch), mu.reshape((*batch, ndim))), heatmap.reshape(logits.shape)

    def heatmap_gradient(
        self,
        xp: Any,
        heatmap: Any,
        per_axis: Sequence[Any],
        elementwise: Any | None,
        ndim: int,
        temperature: float,
    ) -> Any:
        """One read of ``P``, one write: ``P * (outer_sum(per_axis) + elementwise) / T``, no ``exp``."""
        if not _is_number(temperature):
            return super().heatmap_gradient(xp, heatmap, per_axis, elementwise, ndim, temperature)
        batch = tuple(heatmap.shape[: heatmap.ndim - ndim])
        p = _heatmaps(heatmap, ndim, keep_dtype=True)
        compute = _compute_dtype(heatmap.dtype)
        extra = None
        if elementwise is not None:
            extra = torch.broadcast_to(elementwise, heatmap.shape).to(compute).reshape(p.shape).contiguous()
        grad = extension().heatmap_gradient(
            p,
            per_axis=_per_heatmap(per_axis, p, batch, 0.0, compute),
            elementwise=extra,
            ndim=ndim,
            inv_temperature=1.0 / temperature,
        )
        return grad.reshape(heatmap.shape)

    def gradient_map(
        self,
        xp: Any,
        logits: Any,
        lse: Any,
        per_axis: Sequence[Any],
        divergence: Divergence | None,
        ndim: int,
        temperature: float,
    ) -> Any:
        """One sweep per heatmap: ``P * (outer_sum(per_axis) + e) / T``."""
        if not _is_number(temperature):
            return super().gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        u = _heatmaps(logits, ndim)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        coef = factors = None
        if divergence is not None:
            coef = _per_heatmap_numbers(divergence.coef, u, batch)
            if divergence.factors:  # JS only
                factors = _per_heatmap(divergence.factors, u, batch, 1.0)
        grad = extension().gradient_map(
            u,
            inv_temperature=1.0 / temperature,
            lse=_per_heatmap_numbers(lse, u, batch),
            per_axis=_per_heatmap(per_axis, u, batch, 0.0),
            kind=_native_kinds()[None if divergence is None else divergence.kind],
            coef=coef,
            factors=factors,
        )
        return grad.reshape(logits.shape)


KERNELS = NativeKernels()
