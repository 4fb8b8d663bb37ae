"""The benchmark suite behind ``dsnt bench``: dsnt-core against dsntnn, kornia and naive code.

The machines this runs on are shared and noisy, so every figure is a ratio inside one run:
the candidates of one (library, shape) group are timed in interleaved repetitions and the
minimum of each is kept. Two references: dsntnn (speed-up over it) and the "exp floor", the
time of one ``exp`` over the same array in the same library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .chart import write_chart
from .kernels import TORCH_NATIVE, kernels_available
from .libraries import cpu_libraries, gpu_libraries, group_candidates, installed
from .report import markdown_report, passes_table
from .results import Group, SuiteResults, TorchStudies, compiled_json
from .timing import time_interleaved
from .torch_studies import compiled_group, pass_counts, saved_bytes_ratios, size_sweep


def run_suite(
    output_dir: str | Path = "benchmarks/results",
    *,
    quick: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    sweep: list[tuple[int, ...]] | None = None,
    repeats: int | None = None,
    libraries: list[str] | None = None,
    studies: bool = True,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every benchmark, write ``results.json``, ``results.md`` and ``results.png``.

    Parameters
    ----------
    output_dir
        Where the three files go (created if missing).
    quick
        Only the pose shape, no size sweep, 5 rounds instead of 25.
    shapes
        The groups' shapes by label, instead of `config.SHAPES`.
    sweep
        The shapes of the torch size sweep, instead of `config.SWEEP`.
    repeats
        The number of interleaved rounds.
    libraries
        Only these of the installed CPU libraries (``"torch"``, ``"jax"``, ``"numpy"``) and GPU
        groups (``"torch-cuda"``, ``"cupy"``), instead of all.
    studies
        Also the PyTorch studies (saved bytes, pass counts, compiled kernels, size sweep);
        ``False`` skips them (the size sweep too).
    print_fn
        Receives the progress lines and the report.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    shapes = shapes or ({config.QUICK_SHAPE: config.SHAPES[config.QUICK_SHAPE]} if quick else config.SHAPES)
    sweep = sweep if sweep is not None else ([] if quick else config.SWEEP)
    repeats = repeats or (config.QUICK_REPEATS if quick else config.REPEATS)
    chosen = [library for library in cpu_libraries() + gpu_libraries() if libraries is None or library in libraries]
    with_peers = installed("dsntnn")
    environment, native_first_call = _prepare(uses_torch=installed("torch"), repeats=repeats)

    groups = []
    for label, shape in shapes.items():
        for library in chosen:
            times = time_interleaved(group_candidates(library, shape, with_peers=with_peers), repeats)
            groups.append(Group(library, label, times))
            print_fn(f"{library:<6}{label:<30}" + "  ".join(f"{c.name}={t * 1e3:.2f}ms" for c, t in times.items()))

    torch_studies = None
    if studies and "torch" in chosen:
        shape = next(iter(shapes.values()))
        ratios = saved_bytes_ratios(shape, with_peers=with_peers)
        passes = pass_counts(shape, with_peers=with_peers)
        print_fn("\n".join(passes_table(passes, str(tuple(shape)))))
        first_call, compiled = compiled_group(shape, repeats, with_peers=with_peers)
        print_fn(f"compiled: {compiled_json(first_call, compiled)}")
        swept = size_sweep(sweep, repeats, with_peers=with_peers)
        torch_studies = TorchStudies(str(tuple(shape)), ratios, first_call, compiled, swept, passes)

    results = SuiteResults(groups, environment, native_first_call, torch_studies)
    _write(results, Path(output_dir), print_fn)
    return results.to_json()


def _prepare(*, uses_torch: bool, repeats: int) -> tuple[dict[str, Any], float | None]:
    """Set PyTorch's threads; the environment record and the seconds to build or load the native kernels."""
    environment: dict[str, Any] = {}
    native_first_call = None
    if uses_torch:
        import torch

        torch.set_num_threads(config.THREADS)
        environment["torch"] = torch.__version__
    environment.update(numpy=np.__version__, repeats=repeats, threads=config.THREADS)
    if uses_torch:
        start = time.perf_counter()
        if kernels_available(TORCH_NATIVE):
            native_first_call = time.perf_counter() - start
    return environment, native_first_call


def _write(results: SuiteResults, output: Path, print_fn: Callable[[str], None]) -> None:
    """Write ``results.json``, ``results.md`` and (with matplotlib) ``results.png``; print the report."""
    report = markdown_report(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results.to_json(), indent=2))
    (output / "results.md").write_text(report)
    try:
        write_chart(results.groups, output / "results.png")
    except ImportError:
        print_fn("matplotlib is not installed: no chart (pip install 'dsnt-core[demo]')")
    print_fn(report)
