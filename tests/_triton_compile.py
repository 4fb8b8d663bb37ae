"""Ahead-of-time compilation of the Triton kernels for a GPU target, in worker processes.

Used by ``test_triton_kernels.py``: each job compiles one kernel configuration with
``triton.compile(ASTSource(...), target=GPUTarget(...))``, which needs no GPU. Workers import
Triton and the kernels' source file only (no torch), so that they start quickly.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

SOURCE = Path(__file__).resolve().parents[1] / "backends" / "dsnt_torch" / "triton_source.py"


@functools.cache
def kernels() -> ModuleType:
    """``triton_source`` loaded with the interpreter off, whatever ``TRITON_INTERPRET`` says."""
    import triton

    spec = importlib.util.spec_from_file_location("_triton_source_for_compilation", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        spec.loader.exec_module(module)
    return module


def compile_job(job: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Compile ``job`` (kernel, signature, constants, attrs, num_warps, target); ``""`` or what went wrong."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(kernels(), job["kernel"])
    attrs = {(index,): [["tt.divisibility", 16]] for index in job["aligned"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Triton 3.9 warns that its fp-fusion default will change
            compiled = triton.compile(
                ASTSource(kernel, job["signature"], job["constants"], attrs),
                target=GPUTarget(*job["target"]),
                options={"num_warps": job["num_warps"]},
            )
    except Exception as error:  # reported with the job that failed
        return job, f"{type(error).__name__}: {error}"
    ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
    arch = f".target sm_{job['target'][1]}"
    if arch not in ptx or f".entry {job['kernel']}" not in ptx:
        return job, f"no PTX entry for {job['kernel']} on {arch}"
    if len(cubin) == 0:
        return job, "no cubin"
    return job, ""
