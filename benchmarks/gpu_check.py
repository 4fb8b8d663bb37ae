"""The one-shot GPU check: the GPU test matrix, the sync check and the GPU benchmarks, in one run.

Run it on a machine with an NVIDIA GPU, with that machine's own torch, JAX and CuPy::

    python benchmarks/gpu_check.py --output gpu-check      # or: bash benchmarks/gpu_check.sh

It writes ``gpu_check.md`` and ``gpu_check.json`` to the output folder. Without a GPU every
GPU part is skipped with its reason and the run still succeeds (CI runs it that way).

1. The GPU test matrix: the GPU tests of the kernel test files, and the GPU entries of the
   cross-backend ``backend`` fixture (``torch-cuda``: torch on ``cuda``, ``jax-gpu``: JAX on
   its GPU, ``cupy``), selected with ``-k "torch-cuda or jax-gpu or cupy or gpu"``.
2. The sync check: a JS training step (forward and backward) under
   ``torch.cuda.set_sync_debug_mode("error")``, on the automatic kernels (Triton on CUDA)
   and on the array-API kernels.
3. Benchmarks, timed with CUDA events, medians of interleaved repetitions: the fused
   forward and backward as a fraction of a device-to-device copy's bandwidth on inputs of at
   least 256 MB (4 bytes per element forward, 8 backward, float32), and the JS step against
   dsntnn and the array-API kernels on (32, 17, 64, 64) and (8, 17, 256, 256).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GPU_TEST_FILES = [
    # the kernels' own GPU tests (test_gpu_*, test_on_the_gpu_*, *_on_a_gpu)
    "tests/test_triton_kernels.py",
    "tests/test_pallas_kernels.py",
    "tests/test_cuda_kernels.py",
    # the cross-backend suite on the GPU entries of the backend fixture
    "tests/test_devices.py",
    "tests/test_properties.py",
    "tests/test_gradients.py",
    "tests/test_numerics.py",
    "tests/test_nan_semantics.py",
    "tests/test_parity.py",
    "tests/test_transforms.py",
    "tests/test_confidence.py",
    "tests/test_errors.py",
    "tests/test_flax.py",
]
GPU_SELECTION = "torch-cuda or jax-gpu or cupy or gpu"
"""The ``-k`` expression of the GPU matrix: the GPU entries of the backend fixture and the kernels' GPU tests."""
SHAPES = {"pose (32, 17, 64, 64)": (32, 17, 64, 64), "large (8, 17, 256, 256)": (8, 17, 256, 256)}
BANDWIDTH_SHAPE = (64, 17, 256, 256)  # 71 M float32 elements: 285 MB


def _torch_cuda() -> Any | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def _gpu_reasons() -> dict[str, str | None]:
    """Why each GPU entry of the test matrix cannot run here (``None``: it can)."""
    reasons: dict[str, str | None] = {}
    if importlib.util.find_spec("torch") is None:
        reasons["torch-cuda"] = "torch is not installed"
    else:
        reasons["torch-cuda"] = None if _torch_cuda() is not None else "torch.cuda.is_available() is false"
    if importlib.util.find_spec("jax") is None:
        reasons["jax-gpu"] = "jax is not installed"
    else:
        import jax

        try:
            jax.devices("gpu")
            reasons["jax-gpu"] = None
        except RuntimeError:
            reasons["jax-gpu"] = "jax.devices('gpu') finds none"
    if importlib.util.find_spec("cupy") is None:
        reasons["cupy"] = "cupy is not installed"
    else:
        from dsnt_cupy import gpu_available

        reasons["cupy"] = None if gpu_available() else "cupy sees no GPU"
    return reasons


def environment() -> dict[str, Any]:
    """Versions and devices of the libraries this machine has."""
    info: dict[str, Any] = {"python": platform.python_version()}
    for name in ("torch", "jax", "cupy", "triton"):
        if importlib.util.find_spec(name) is not None:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
    torch = _torch_cuda()
    info["gpu"] = torch.cuda.get_device_name() if torch is not None else None
    info["gpu_entries"] = {name: reason or "runs" for name, reason in _gpu_reasons().items()}
    return info


def run_gpu_tests(limit_s: float) -> dict[str, Any]:
    """The GPU test matrix (pytest, ``-k GPU_SELECTION``), within ``limit_s`` seconds.

    Skipped, with each entry's reason, where none of torch-cuda, jax-gpu and cupy can run; the
    entries that cannot run are skipped inside the run with their reasons.
    """
    reasons = _gpu_reasons()
    if all(reasons.values()):
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        return {"skipped": f"no CUDA GPU is usable here ({why})"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", GPU_SELECTION]
    command += GPU_TEST_FILES
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as error:
        tail = (error.stdout or b"")[-4000:] if isinstance(error.stdout, bytes) else (error.stdout or "")[-4000:]
        return {"timed_out_after_s": limit_s, "tail": str(tail)}
    return {
        "returncode": result.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "",
        "tail": result.stdout[-6000:],
    }


def sync_check() -> dict[str, Any]:
    """A JS training step under ``torch.cuda.set_sync_debug_mode("error")``, per kernel implementation."""
    torch = _torch_cuda()
    if torch is None:
        return {"skipped": "no CUDA GPU is usable here"}
    import dsnt_core

    results: dict[str, Any] = {}
    for kernels in ("auto", "array-api", "torch-triton"):
        logits = torch.randn(8, 17, 64, 64, device="cuda", requires_grad=True)
        target = torch.rand(8, 17, 2, device="cuda") * 1.6 - 0.8
        torch.cuda.synchronize()
        try:
            with dsnt_core.use_kernels(kernels):
                dsnt_core.dsnt_loss(logits, target)  # warm-up: compilation may sync
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    dsnt_core.dsnt_loss(logits, target).backward()
                    dsnt_core.soft_argmax(logits).sum().backward()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            results[kernels] = "no host synchronisation"
        except Exception as error:  # the error names the syncing operation
            results[kernels] = f"{type(error).__name__}: {error}"
    return results


def _cuda_time(torch: Any, fn: Callable[[], Any], repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` with CUDA events, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def bandwidth() -> dict[str, Any]:
    """Fused forward and backward against a device-to-device copy of the same bytes."""
    torch = _torch_cuda()
    if torch is None:
        return {"skipped": "no CUDA GPU is usable here"}
    import dsnt_core

    logits = torch.randn(*BANDWIDTH_SHAPE, device="cuda")
    target = torch.rand(*BANDWIDTH_SHAPE[:2], 2, device="cuda") * 1.6 - 0.8
    nbytes = logits.numel() * logits.element_size()
    copy_ms = _cuda_time(torch, lambda: logits.clone())
    copy_bandwidth = 2 * nbytes / copy_ms / 1e6  # read + write, GB/s
    results: dict[str, Any] = {"input_mb": round(nbytes / 1e6), "copy_gb_per_s": round(copy_bandwidth)}
    for kernels in ("auto", "array-api"):
        with dsnt_core.use_kernels(kernels):
            forward_ms = _cuda_time(torch, lambda: dsnt_core.soft_argmax(logits))
            z = logits.detach().requires_grad_()
            ct = torch.ones(*BANDWIDTH_SHAPE[:2], 2, device="cuda")

            def backward(z: Any = z, ct: Any = ct) -> None:
                z.grad = None
                dsnt_core.soft_argmax(z).backward(ct)

            both_ms = _cuda_time(torch, backward)
            loss_ms = _cuda_time(torch, lambda z=z: dsnt_core.dsnt_loss(z, target).backward())
        results[kernels] = {
            "soft_argmax_forward_fraction_of_copy": round(nbytes / forward_ms / 1e6 / copy_bandwidth, 3),
            "soft_argmax_backward_fraction_of_copy": round(
                2 * nbytes / max(both_ms - forward_ms, 1e-6) / 1e6 / copy_bandwidth, 3
            ),
            "js_step_ms": round(loss_ms, 3),
        }
    return results


def speedups() -> dict[str, Any]:
    """The JS training step on CUDA: dsnt-core's automatic and array-API kernels against dsntnn."""
    torch = _torch_cuda()
    if torch is None:
        return {"skipped": "no CUDA GPU is usable here"}
    import dsnt_core

    results: dict[str, Any] = {}
    for label, shape in SHAPES.items():
        logits = torch.randn(*shape, device="cuda", requires_grad=True)
        target = torch.rand(*shape[:2], 2, device="cuda") * 1.6 - 0.8
        candidates: dict[str, Callable[[], Any]] = {}
        for kernels in ("auto", "array-api"):

            def ours(kernels: str = kernels, logits: Any = logits, target: Any = target) -> None:
                with dsnt_core.use_kernels(kernels):
                    dsnt_core.dsnt_loss(logits, target).backward()

            candidates[f"dsnt-core {kernels}"] = ours
        if importlib.util.find_spec("dsntnn") is not None:
            import dsntnn

            def theirs(logits: Any = logits, target: Any = target) -> None:
                heatmaps = dsntnn.flat_softmax(logits)
                coords = dsntnn.dsnt(heatmaps)
                regularizer = dsntnn.js_reg_losses(heatmaps, target, sigma_t=1.0)
                losses = dsntnn.euclidean_losses(coords, target) + regularizer
                dsntnn.average_loss(losses).backward()

            candidates["dsntnn"] = theirs
        times = {name: _cuda_time(torch, fn) for name, fn in candidates.items()}
        reference = times.get("dsntnn")
        results[label] = {
            name: {"ms": round(ms, 3), "speedup_over_dsntnn": round(reference / ms, 2) if reference else None}
            for name, ms in times.items()
        }
    return results


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page."""
    lines = ["# GPU check", "", f"Environment: `{json.dumps(report['environment'])}`", ""]
    for section in ("tests", "sync", "bandwidth", "speedups"):
        lines += [f"## {section}", "", "```", json.dumps(report[section], indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check and write the report.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (``--output FOLDER``, ``--test-limit SECONDS``); ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        0 when every part that ran passed (skipped parts count as passed), 1 otherwise.
    """
    parser = argparse.ArgumentParser(description="The one-shot GPU check of dsnt-core.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu", help="report folder")
    parser.add_argument("--test-limit", type=float, default=300.0, help="seconds for the GPU tests")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": environment(),
        "tests": run_gpu_tests(args.test_limit),
        "sync": sync_check(),
        "bandwidth": bandwidth(),
        "speedups": speedups(),
    }
    (args.output / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.output / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    tests_ok = report["tests"].get("returncode", 0) == 0 and "timed_out_after_s" not in report["tests"]
    sync = report["sync"]
    sync_ok = "skipped" in sync or all(value == "no host synchronisation" for value in sync.values())
    return 0 if tests_ok and sync_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
