"""The benchmark suite behind ``dsnt bench``: dsnt-core against dsntnn, kornia and naive code.

The machines this runs on are shared and noisy, so every figure is a ratio inside one run:
the candidates of one (library, shape) group are timed in interleaved repetitions and the
minimum of each is kept. Two references: dsntnn (speed-up over it) and the "exp floor", the
time of one ``exp`` over the same array in the same library.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

SHAPES = {
    "pose (32, 17, 64, 64)": (32, 17, 64, 64),
    "whole-body (8, 133, 64, 48)": (8, 133, 64, 48),
    "3-D (4, 17, 16, 64, 64)": (4, 17, 16, 64, 64),
    "many small (256, 1, 32, 32)": (256, 1, 32, 32),
}
SWEEP = [(8, 17, n, n) for n in (16, 32, 64, 128, 256)]
SIGMA = 1.0


def time_interleaved(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Minimum wall time of each candidate over ``repeats`` interleaved rounds (after a warm-up)."""
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------------- torch


def native_available() -> bool:
    """Whether dsnt_torch's native CPU kernels can be built (or loaded) here."""
    import dsnt_torch

    try:
        dsnt_torch.build_native_kernels()
    except RuntimeError:
        return False
    return True


def _with_native_kernels(enabled: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with dsnt_torch's native kernels switched on or off (a flag: no cost)."""
    import dsnt_torch

    def run() -> Any:
        dsnt_torch.use_native_kernels(enabled)
        try:
            return fn()
        finally:
            dsnt_torch.use_native_kernels(False)

    return run


def eager(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` on the array-API passes (the default)."""
    return _with_native_kernels(False, fn)


def native(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` on the native CPU passes (``dsnt_torch.use_native_kernels``)."""
    return _with_native_kernels(True, fn)


def _torch_candidates(
    shape: tuple[int, ...], with_peers: bool, device: str = "cpu"
) -> tuple[dict[str, Callable], Any]:
    import torch

    ndim = len(shape) - 2
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).to(device)
    target = (torch.rand((*shape[:2], ndim), generator=generator) * 1.6 - 0.8).to(device)
    cotangent = torch.randn((*shape[:2], ndim), generator=generator).to(device)

    def fwd_bwd(loss_fn: Callable) -> Callable[[], Any]:
        def run() -> Any:
            z = logits.detach().requires_grad_()
            loss_fn(z).backward()

        return run

    def coords_bwd(coords_fn: Callable) -> Callable[[], Any]:
        def run() -> Any:
            z = logits.detach().requires_grad_()
            coords_fn(z).backward(cotangent)

        return run

    def ours_step(z):
        return dsnt_core.dsnt_loss(z, target, sigma=SIGMA, regularizer="js", ndim=ndim)

    def naive_step(z):
        return composed_dsnt_loss(z, target, sigma=SIGMA, regularizer="js", ndim=ndim)

    def naive_coords(z):
        return dsnt_core.dsnt(dsnt_core.flat_softmax(z, ndim=ndim), ndim=ndim)

    candidates: dict[str, Callable] = {
        "exp floor": lambda: torch.exp(logits),
        "ours soft_argmax fwd": eager(lambda: dsnt_core.soft_argmax(logits, ndim=ndim)),
        "ours soft_argmax fwd+bwd": eager(coords_bwd(lambda z: dsnt_core.soft_argmax(z, ndim=ndim))),
        "ours step fwd": eager(lambda: ours_step(logits)),
        "ours step fwd+bwd": eager(fwd_bwd(ours_step)),
    }
    if device == "cpu" and native_available():
        candidates |= {
            "native soft_argmax fwd": native(lambda: dsnt_core.soft_argmax(logits, ndim=ndim)),
            "native soft_argmax fwd+bwd": native(coords_bwd(lambda z: dsnt_core.soft_argmax(z, ndim=ndim))),
            "native step fwd": native(lambda: ours_step(logits)),
            "native step fwd+bwd": native(fwd_bwd(ours_step)),
        }
    candidates |= {
        "naive soft_argmax fwd+bwd": coords_bwd(naive_coords),
        "naive step fwd+bwd": fwd_bwd(naive_step),
    }
    if with_peers:
        import dsntnn

        def dsntnn_step(z):
            heatmaps = dsntnn.flat_softmax(z)
            losses = dsntnn.euclidean_losses(dsntnn.dsnt(heatmaps), target)
            return dsntnn.average_loss(losses + dsntnn.js_reg_losses(heatmaps, target, SIGMA))

        candidates["dsntnn soft_argmax fwd"] = lambda: dsntnn.dsnt(dsntnn.flat_softmax(logits))
        candidates["dsntnn soft_argmax fwd+bwd"] = coords_bwd(lambda z: dsntnn.dsnt(dsntnn.flat_softmax(z)))
        candidates["dsntnn step fwd"] = lambda: dsntnn_step(logits)
        candidates["dsntnn step fwd+bwd"] = fwd_bwd(dsntnn_step)
        if ndim == 2:
            try:
                candidates.update(_kornia_candidates(logits, target, fwd_bwd, coords_bwd))
            except ImportError:
                pass
    return candidates, (logits, target, ours_step, naive_step)


def _kornia_candidates(logits: Any, target: Any, fwd_bwd: Callable, coords_bwd: Callable) -> dict[str, Callable]:
    """kornia's soft-argmax and a kornia JS step (its corner grid; the cost is what matters)."""
    import kornia
    import torch

    subpix = kornia.geometry.subpix
    height, width = logits.shape[-2:]
    std = torch.tensor([2 * SIGMA / (width - 1), 2 * SIGMA / (height - 1)]).expand_as(target)

    def kornia_step(z):
        heatmaps = subpix.spatial_softmax2d(z)
        coords = subpix.spatial_expectation2d(heatmaps)
        gauss = subpix.render_gaussian2d(target, std, (height, width))
        euclidean = torch.linalg.vector_norm(coords - target, dim=-1).mean()
        return euclidean + kornia.losses.js_div_loss_2d(heatmaps, gauss)

    return {
        "kornia soft_argmax fwd+bwd": coords_bwd(lambda z: subpix.spatial_soft_argmax2d(z)),
        "kornia step fwd+bwd": fwd_bwd(kornia_step),
    }


def saved_bytes(loss_fn: Callable, logits: Any) -> int:
    """Bytes of the tensors autograd keeps for backward, the logits included once."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    z = logits.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(z)
    return sum(storages.values())


def _torch_compiled_step(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Opt-in compiled kernels: first-call time and the steady-state step against eager."""
    import dsnt_torch
    import torch

    candidates, _ = _torch_candidates(shape, with_peers=_available("dsntnn"))
    result: dict[str, float] = {}
    dsnt_torch.use_compiled_kernels(True)
    try:
        torch._dynamo.reset()
        start = time.perf_counter()
        candidates["ours step fwd+bwd"]()
        result["first call (s)"] = time.perf_counter() - start
        names = {
            "exp floor": "exp floor",
            "compiled step fwd+bwd": "ours step fwd+bwd",
            "compiled soft_argmax fwd+bwd": "ours soft_argmax fwd+bwd",
            "dsntnn step fwd+bwd": "dsntnn step fwd+bwd",
            "dsntnn soft_argmax fwd+bwd": "dsntnn soft_argmax fwd+bwd",
        }
        times = time_interleaved({k: candidates[v] for k, v in names.items() if v in candidates}, repeats)
    finally:
        dsnt_torch.use_compiled_kernels(False)
    result.update(times)
    return result


# --------------------------------------------------------------------------------- GPU
# Timed only where a GPU exists; every candidate ends with a device synchronisation.


def _synchronized(fn: Callable[[], Any], synchronize: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        fn()
        synchronize()

    return run


def _torch_cuda_candidates(shape: tuple[int, ...], with_peers: bool) -> dict[str, Callable]:
    import torch

    candidates, _ = _torch_candidates(shape, with_peers=with_peers, device="cuda")
    return {name: _synchronized(fn, torch.cuda.synchronize) for name, fn in candidates.items()}


def _cupy_candidates(shape: tuple[int, ...]) -> dict[str, Callable]:
    import cupy

    ndim = len(shape) - 2
    rng = np.random.default_rng(0)
    logits = cupy.asarray(rng.normal(size=shape).astype(np.float32))
    target = cupy.asarray(rng.uniform(-0.8, 0.8, size=(*shape[:2], ndim)).astype(np.float32))
    candidates = {
        "exp floor": lambda: cupy.exp(logits),
        "ours soft_argmax fwd": lambda: dsnt_core.soft_argmax(logits, ndim=ndim),
        "ours step fwd": lambda: dsnt_core.dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim),
        "ours step fwd+bwd": lambda: dsnt_core.dsnt_loss_value_and_grad(logits, target, sigma=SIGMA, ndim=ndim),
        "naive step fwd": lambda: composed_dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim),
    }
    return {name: _synchronized(fn, cupy.cuda.Device().synchronize) for name, fn in candidates.items()}


def _gpu_libraries() -> list[str]:
    """``torch-cuda`` and ``cupy`` where a GPU is usable (none on the CI machines)."""
    found = []
    if _available("torch"):
        import torch

        if torch.cuda.is_available():
            found.append("torch-cuda")
    if _available("cupy"):
        from dsnt_cupy import gpu_available

        if gpu_available():
            found.append("cupy")
    return found


# --------------------------------------------------------------------------------- jax


def _jax_candidates(shape: tuple[int, ...]) -> dict[str, Callable]:
    import jax
    import jax.numpy as jnp

    ndim = len(shape) - 2
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)
    target = jnp.asarray(rng.uniform(-0.8, 0.8, size=(*shape[:2], ndim)), dtype=jnp.float32)

    def ready(fn: Callable) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(fn(logits))

    ours = jax.jit(jax.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, target, sigma=SIGMA, ndim=ndim)))
    naive = jax.jit(jax.value_and_grad(lambda z: composed_dsnt_loss(z, target, sigma=SIGMA, ndim=ndim)))
    return {
        "exp floor": ready(jax.jit(jnp.exp)),
        "ours soft_argmax fwd": ready(jax.jit(lambda z: dsnt_core.soft_argmax(z, ndim=ndim))),
        "ours soft_argmax fwd+bwd": ready(jax.jit(jax.grad(lambda z: dsnt_core.soft_argmax(z, ndim=ndim).sum()))),
        "ours step fwd+bwd": ready(ours),
        "naive step fwd+bwd": ready(naive),
    }


# ------------------------------------------------------------------------------- numpy


def _numpy_candidates(shape: tuple[int, ...]) -> dict[str, Callable]:
    ndim = len(shape) - 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape).astype(np.float32)
    target = rng.uniform(-0.8, 0.8, size=(*shape[:2], ndim)).astype(np.float32)
    return {
        "exp floor": lambda: np.exp(logits),
        "ours soft_argmax fwd": lambda: dsnt_core.soft_argmax(logits, ndim=ndim),
        "ours step fwd": lambda: dsnt_core.dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim),
        "ours step fwd+bwd": lambda: dsnt_core.dsnt_loss_value_and_grad(logits, target, sigma=SIGMA, ndim=ndim),
        "naive step fwd": lambda: composed_dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim),
    }


# ----------------------------------------------------------------------------- the run


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_suite(
    output_dir: str | Path = "benchmarks/results",
    *,
    quick: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    sweep: list[tuple[int, ...]] | None = None,
    repeats: int | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every benchmark, write ``results.json``, ``results.md`` and ``results.png``."""
    shapes = shapes or ({"pose (32, 17, 64, 64)": SHAPES["pose (32, 17, 64, 64)"]} if quick else SHAPES)
    sweep = sweep if sweep is not None else ([] if quick else SWEEP)
    repeats = repeats or (5 if quick else 25)
    results: dict[str, Any] = {"groups": [], "sweep": {}, "compiled": {}, "saved_bytes": {}, "environment": {}}
    libraries = [lib for lib in ("torch", "jax", "numpy") if _available(lib)]
    if "torch" in libraries:
        import torch

        torch.set_num_threads(2)
        results["environment"]["torch"] = torch.__version__
    peers = _available("dsntnn")
    results["environment"].update(numpy=np.__version__, repeats=repeats, threads=2)
    if "torch" in libraries:
        start = time.perf_counter()
        if native_available():
            results["native_first_call"] = time.perf_counter() - start

    for label, shape in shapes.items():
        for library in libraries + _gpu_libraries():
            if library == "torch":
                candidates, _ = _torch_candidates(shape, with_peers=peers)
            elif library == "torch-cuda":
                candidates = _torch_cuda_candidates(shape, with_peers=peers)
            elif library == "cupy":
                candidates = _cupy_candidates(shape)
            elif library == "jax":
                candidates = _jax_candidates(shape)
            else:
                candidates = _numpy_candidates(shape)
            times = time_interleaved(candidates, repeats)
            results["groups"].append({"library": library, "shape": label, "times": times})
            print_fn(f"{library:<6}{label:<30}" + "  ".join(f"{k}={v * 1e3:.2f}ms" for k, v in times.items()))

    if "torch" in libraries:
        shape = next(iter(shapes.values()))
        _, (logits, target, ours_step, naive_step) = _torch_candidates(shape, with_peers=False)
        measured = {"ours": ours_step, "naive": naive_step}
        if native_available():
            measured["native"] = lambda z: native(lambda: ours_step(z))()
        if peers:
            import dsntnn

            def dsntnn_step(z):
                heatmaps = dsntnn.flat_softmax(z)
                losses = dsntnn.euclidean_losses(dsntnn.dsnt(heatmaps), target)
                return dsntnn.average_loss(losses + dsntnn.js_reg_losses(heatmaps, target, SIGMA))

            measured["dsntnn"] = dsntnn_step
        logits_bytes = logits.numel() * logits.element_size()
        results["saved_bytes"] = {name: saved_bytes(fn, logits) / logits_bytes for name, fn in measured.items()} | {
            "shape": str(tuple(shape))
        }
        results["compiled"] = _torch_compiled_step(shape, repeats) | {"shape": str(tuple(shape))}
        print_fn(f"compiled: {results['compiled']}")
        for shape_ in sweep:
            candidates, _ = _torch_candidates(shape_, with_peers=False)
            steps = {k: candidates[k] for k in ("ours step fwd+bwd", "native step fwd+bwd") if k in candidates}
            results["sweep"][str(math.prod(shape_))] = time_interleaved(steps, repeats)
        results["sweep_exponent"] = sweep_exponents(results["sweep"])
        results["sweep_exponent_large"] = sweep_exponents(results["sweep"], last=3)

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "results.md").write_text(markdown_report(results))
    try:
        write_chart(results, output / "results.png")
    except ImportError:
        print_fn("matplotlib is not installed: no chart (pip install 'dsnt-core[demo]')")
    print_fn(markdown_report(results))
    return results


def sweep_exponents(sweep: dict[str, dict[str, float]], last: int | None = None) -> dict[str, float]:
    """Fitted exponent ``a`` of ``time ~ size ** a`` per candidate of the size sweep.

    With ``last``, the fit uses only the ``last`` largest sizes, where the per-element work
    outweighs the fixed cost of a call.
    """
    points = list(sweep.items())[-last:] if last else list(sweep.items())
    if len(points) < 2:
        return {}
    sizes = np.log([float(size) for size, _ in points])
    names = points[0][1].keys()
    return {name: float(np.polyfit(sizes, np.log([t[name] for _, t in points]), 1)[0]) for name in names}


def markdown_report(results: dict[str, Any]) -> str:
    """The results as markdown tables: times, multiples of the exp floor, speed-ups over dsntnn."""
    lines = [
        "| library | shape | candidate | time (ms) | x exp floor | speed-up over dsntnn |",
        "|---|---|---|---:|---:|---:|",
    ]
    for group in results["groups"]:
        times = group["times"]
        for name, seconds in times.items():
            if name == "exp floor":
                continue
            kind = name.split(" ", 1)[1] if " " in name else name
            dsntnn_name = f"dsntnn {kind}"
            speedup = f"{times[dsntnn_name] / seconds:.2f}x" if dsntnn_name in times else "-"
            lines.append(
                f"| {group['library']} | {group['shape']} | {name} | {seconds * 1e3:.2f} | "
                f"{seconds / times['exp floor']:.1f} | {speedup} |"
            )
    naive_ratios = [
        f"{group['shape']} {group['times']['naive step fwd+bwd'] / group['times']['ours step fwd+bwd']:.2f}x"
        for group in results["groups"]
        if group["library"] == "jax" and "naive step fwd+bwd" in group["times"]
    ]
    if naive_ratios:
        lines += ["", "JAX `jit(value_and_grad(dsnt_loss))`, speed-up over the naive composition under jit: "]
        lines[-1] += ", ".join(naive_ratios) + "."
    saved = results.get("saved_bytes") or {}
    if saved:
        lines += [
            "",
            f"Bytes kept for backward by a JS training step on {saved['shape']}, in multiples of the logits:",
            "",
        ]
        lines += ["| implementation | saved bytes / logits bytes |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in saved.items() if k != "shape"]
    compiled = results.get("compiled") or {}
    if compiled:
        lines += [
            "",
            f"Opt-in compiled kernels (`dsnt_torch.use_compiled_kernels()`) on {compiled['shape']}, one interleaved "
            f"group; the first call took {compiled['first call (s)']:.1f} s (compilation):",
            "",
            "| candidate | time (ms) | x exp floor | speed-up over dsntnn |",
            "|---|---:|---:|---:|",
        ]
        for name, seconds in compiled.items():
            if name in ("shape", "first call (s)", "exp floor"):
                continue
            reference = "dsntnn " + name.split(" ", 1)[1]
            speedup = f"{compiled[reference] / seconds:.2f}x" if reference in compiled else "-"
            lines.append(f"| {name} | {seconds * 1e3:.2f} | {seconds / compiled['exp floor']:.1f} | {speedup} |")
    sweep = results.get("sweep") or {}
    if sweep:
        names = list(next(iter(sweep.values())))
        lines += [
            "",
            "Size sweep (torch, shapes (8, 17, n, n)), time in ms and the fitted exponent of time ~ (B*K*H*W)^a"
            " over all sizes and over the three largest:",
            "",
            "| B*K*H*W | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(names),
        ]
        lines += [f"| {size} | " + " | ".join(f"{t[n] * 1e3:.2f}" for n in names) + " |" for size, t in sweep.items()]
        for key, label in (("sweep_exponent", "a, all sizes"), ("sweep_exponent_large", "a, three largest")):
            exponents = results.get(key) or {}
            lines.append(f"| {label} | " + " | ".join(f"{exponents.get(n, float('nan')):.2f}" for n in names) + " |")
    native_build = results.get("native_first_call")
    if native_build is not None:
        lines += [
            "",
            f"Native kernels (`dsnt_torch.use_native_kernels()`): built or loaded from PyTorch's extension cache in "
            f"{native_build:.1f} s on the first call of this run.",
        ]
    return "\n".join(lines) + "\n"


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Bar chart of time over the exp floor for the training step, per library and shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for group in results["groups"]:
        times = group["times"]
        for name in times:
            if "step fwd+bwd" in name:
                rows.append(
                    (
                        f"{group['library']}\n{group['shape'].split(' (')[0]}",
                        name.split(" ")[0],
                        times[name] / times["exp floor"],
                    )
                )
    labels = sorted({r[0] for r in rows}, key=lambda s: [r[0] for r in rows].index(s))
    series = sorted({r[1] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels)), 4))
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        values = [next((r[2] for r in rows if r[0] == label and r[1] == name), 0.0) for label in labels]
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("time / exp floor (lower is better)")
    ax.set_title("JS training step, forward + backward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
