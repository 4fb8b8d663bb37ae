"""Native CPU passes for the fused rules: a C++ extension built on first use (opt-in).

The extension (``native_passes.cpp``, next to this file) implements the two full-size
passes of :mod:`dsnt_core._heatmap_passes` with ATen's vectorised math, one heatmap per
task while it is in cache. The rules of :mod:`dsnt_core._fused_rules` run unchanged on top
of it. It is compiled with ``torch.utils.cpp_extension`` the first time it is needed (a C++
compiler and ``ninja`` are required; about 30 s on two cores) and cached on disk by PyTorch
(``TORCH_EXTENSIONS_DIR``), so later processes load it in well under a second.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dsnt_core import _heatmap_passes as generic_passes
from dsnt_core._heatmap_passes import Divergence

SOURCE = Path(__file__).with_name("native_passes.cpp")
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def _compiler_flags() -> list[str]:
    """Vector flags matching the capability ATen itself dispatches to on this CPU, and OpenMP."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _FLAGS.get(capability)
    if flags is None:
        return ["-O3", "-fopenmp"]
    return ["-O3", "-fopenmp", *flags, f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]


@functools.cache
def extension() -> ModuleType:
    """The compiled extension (built and cached on the first call).

    Raises
    ------
    RuntimeError
        If it cannot be built (no C++ compiler, no ``ninja``, ...).
    """
    from torch.utils.cpp_extension import load_inline

    capability = torch.backends.cpu.get_cpu_capability().lower()
    try:
        return load_inline(
            name=f"dsnt_native_passes_{capability}",
            cpp_sources=[SOURCE.read_text()],
            functions=["softmax_statistics", "gradient_map"],
            extra_cflags=_compiler_flags(),
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


def applicable(logits: torch.Tensor) -> bool:
    """Whether ``logits`` can go through the native passes.

    Plain CPU tensors of a floating dtype, outside ``torch.compile`` tracing and functorch
    transforms (``vmap``, ``grad``), whose wrapped tensors have no data pointer.
    """
    return (
        logits.device.type == "cpu"
        and logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(logits)
        and available()
    )


# ------------------------------------------------------------------------------ the passes
# Same names, arguments and results as dsnt_core._heatmap_passes.


def _heatmaps(logits: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N, D, H, W) contiguous view (or copy) in the compute dtype; missing axes have length 1."""
    spatial = tuple(logits.shape[logits.ndim - ndim :])
    u = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return u.reshape(-1, *((1,) * (3 - ndim)), *spatial).contiguous()


def _per_heatmap(vectors: list[torch.Tensor], u: torch.Tensor, batch: tuple, fill: float) -> list[torch.Tensor]:
    """Per-axis vectors (x, y[, z]) as (N, n) contiguous tensors; missing axes get ``fill``."""
    n, lengths = u.shape[0], (u.shape[3], u.shape[2], u.shape[1])
    result = []
    for k, length in enumerate(lengths):
        if k < len(vectors):
            result.append(torch.broadcast_to(vectors[k], (*batch, length)).reshape(n, length))
        else:
            result.append(torch.full((n, 1), fill, dtype=u.dtype))
    return [v.to(u.dtype).contiguous() for v in result]


@functools.lru_cache(maxsize=64)
def _grids(spatial: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    from array_api_compat import torch as xp

    with torch.inference_mode(False):  # ordinary tensors, even when first asked for under inference mode
        shaped = torch.empty((), dtype=dtype).expand(spatial)  # shape and dtype only, no storage
        return tuple(generic_passes.coordinate_grids(xp, shaped, len(spatial)))


def coordinate_grids(xp: Any, logits: torch.Tensor, ndim: int) -> list[torch.Tensor]:
    """Native :func:`dsnt_core._heatmap_passes.coordinate_grids`: the same CPU grids, cached."""
    dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    return list(_grids(tuple(logits.shape[logits.ndim - ndim :]), dtype))


def softmax_statistics(
    xp: Any,
    logits: torch.Tensor,
    ndim: int,
    temperature: float,
    *,
    entropy: bool = False,
    mixture: list[torch.Tensor] | None = None,
) -> dict:
    """Native :func:`dsnt_core._heatmap_passes.softmax_statistics`."""
    batch = tuple(logits.shape[: logits.ndim - ndim])
    u = _heatmaps(logits, ndim)
    fx, fy, fz = _per_heatmap(mixture, u, batch, 1.0) if mixture is not None else (u, u, u)
    results = extension().softmax_statistics(u, 1.0 / temperature, entropy, mixture is not None, fx, fy, fz)
    lse, mx, my, mz, neg_entropy, m_log_m, p_log_m = results
    stats = {"lse": lse.reshape(batch), "margins": [m.reshape((*batch, m.shape[1])) for m in (mx, my, mz)[:ndim]]}
    if entropy:
        stats["neg_entropy"] = neg_entropy.reshape(batch)
    if mixture is not None:
        stats["m_log_m"], stats["p_log_m"] = m_log_m.reshape(batch), p_log_m.reshape(batch)
    return stats


def gradient_map(
    xp: Any,
    logits: torch.Tensor,
    lse: torch.Tensor,
    per_axis: list[torch.Tensor],
    divergence: Divergence | None,
    ndim: int,
    temperature: float,
) -> torch.Tensor:
    """Native :func:`dsnt_core._heatmap_passes.gradient_map`."""
    u = _heatmaps(logits, ndim)
    batch = tuple(logits.shape[: logits.ndim - ndim])
    ax, ay, az = _per_heatmap(per_axis, u, batch, 0.0)
    mode = 0 if divergence is None else {"kl": 1, "js": 2}[divergence.kind]
    if divergence is None:
        coef, fx, fy, fz = ax, ax, ax, ax  # unused by mode 0
    else:
        coef = divergence.coef.reshape(-1).to(u.dtype).contiguous()
        fx, fy, fz = _per_heatmap(list(divergence.factors), u, batch, 1.0) if mode == 2 else (ax, ax, ax)
    flat_lse = lse.reshape(-1).to(u.dtype).contiguous()
    grad = extension().gradient_map(u, 1.0 / temperature, flat_lse, ax, ay, az, mode, coef, fx, fy, fz)
    return grad.reshape(logits.shape)

