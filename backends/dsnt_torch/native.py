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

import functools
import hashlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from array_api_compat import torch as torch_namespace

from dsnt_core.kernels import ArrayAPIKernels, Divergence, DivergenceKind, SoftArgmaxResiduals, SoftmaxStatistics

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

    def coordinate_grids(self, xp: Any, logits: Any, ndim: int) -> tuple[Any, ...]:
        """The array-API grids, cached per shape and dtype."""
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
        return _grids(tuple(logits.shape[logits.ndim - ndim :]), dtype)

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
