"""The PyTorch-only measurements: bytes kept for backward, the compiled kernels, the size sweep."""

from __future__ import annotations

import math

import dsnt_core

from .candidate import SOFT_ARGMAX_FWD_BWD, STEP_FWD, STEP_FWD_BWD, Candidate, floor
from .kernels import ARRAY_API, TORCH_COMPILE, TORCH_NATIVE, kernels_available, use_kernels
from .memory import saved_bytes
from .passes import NATIVE_PASSES, PassCount, count_passes
from .peers import dsntnn_candidates, dsntnn_step
from .results import Group
from .timing import time_call, time_interleaved
from .torch_candidates import dsnt_core_candidates
from .torch_problem import torch_problem


def saved_bytes_ratios(shape: tuple[int, ...], *, with_peers: bool) -> dict[str, float]:
    """Bytes autograd keeps for a JS step's backward, in multiples of the logits' bytes, per implementation."""
    problem = torch_problem(shape)
    steps = [
        Candidate("ours", STEP_FWD, problem.forward_with_graph(problem.ours_step)),
        Candidate("array-api", STEP_FWD, problem.forward_with_graph(problem.ours_step), ARRAY_API),
        Candidate("naive", STEP_FWD, problem.forward_with_graph(problem.naive_step)),
    ]
    if kernels_available(TORCH_NATIVE):
        steps.append(Candidate("native", STEP_FWD, problem.forward_with_graph(problem.ours_step), TORCH_NATIVE))
    if with_peers:
        steps.append(Candidate("dsntnn", STEP_FWD, problem.forward_with_graph(dsntnn_step(problem.target))))
    logits_bytes = problem.logits.numel() * problem.logits.element_size()
    return {step.implementation: saved_bytes(step) / logits_bytes for step in steps}


def compiled_group(shape: tuple[int, ...], repeats: int, *, with_peers: bool) -> tuple[float, Group]:
    """The opt-in compiled kernels: the first call (compilation) and their steady state against dsntnn.

    Returns
    -------
    tuple
        Seconds of the first compiled training step after a reset of ``torch._dynamo``, and the
        interleaved group of the floor, the compiled step and soft-argmax (fwd+bwd) and dsntnn's.
    """
    import torch

    problem = torch_problem(shape)
    step, coords = (
        Candidate("compiled", STEP_FWD_BWD, problem.forward_backward(problem.ours_step), TORCH_COMPILE),
        Candidate("compiled", SOFT_ARGMAX_FWD_BWD, problem.coords_backward(problem.ours_coords), TORCH_COMPILE),
    )
    candidates = [floor(problem.forward(torch.exp)), step, coords]
    if with_peers:
        dsntnn = {candidate.kind: candidate for candidate in dsntnn_candidates(problem)}
        candidates += [dsntnn[STEP_FWD_BWD], dsntnn[SOFT_ARGMAX_FWD_BWD]]
    torch._dynamo.reset()
    first_call = time_call(step)
    return first_call, Group("torch", str(tuple(shape)), time_interleaved(candidates, repeats))


def size_sweep(
    sweep: list[tuple[int, ...]], repeats: int, *, with_peers: bool = False
) -> dict[int, dict[Candidate, float]]:
    """The training step (fwd+bwd) by number of logits: dsnt-core with no switch, on the array-API and,
    where they build, native kernels, and with ``with_peers`` dsntnn's."""
    native = kernels_available(TORCH_NATIVE)
    result = {}
    for shape in sweep:
        problem = torch_problem(shape)
        steps = dsnt_core_candidates(problem, "ours", None) + dsnt_core_candidates(problem, "array-api", ARRAY_API)
        if native:
            steps += dsnt_core_candidates(problem, "native", TORCH_NATIVE)
        if with_peers:
            steps += dsntnn_candidates(problem)
        result[math.prod(shape)] = time_interleaved([s for s in steps if s.kind == STEP_FWD_BWD], repeats)
    return result


def pass_counts(shape: tuple[int, ...], *, with_peers: bool) -> dict[str, dict[str, PassCount]]:
    """Heatmap-sized reads and writes of ``soft_argmax`` and the JS step (fwd+bwd), per implementation.

    Counted for PyTorch operations (`count_passes`); the native kernels' are the known ones
    (`NATIVE_PASSES`), for "native" and, where the native kernels are its choice, "ours".
    """
    problem = torch_problem(shape)
    numel = problem.logits.numel()
    native = kernels_available(TORCH_NATIVE)
    candidates = {c.kind: c for c in dsnt_core_candidates(problem, "array-api", ARRAY_API)}
    runs: dict[str, dict[str, Candidate]] = {"array-api": candidates}
    runs["naive"] = {
        SOFT_ARGMAX_FWD_BWD: Candidate("naive", SOFT_ARGMAX_FWD_BWD, problem.coords_backward(problem.naive_coords)),
        STEP_FWD_BWD: Candidate("naive", STEP_FWD_BWD, problem.forward_backward(problem.naive_step)),
    }
    if with_peers:
        runs["dsntnn"] = {c.kind: c for c in dsntnn_candidates(problem)}
    result: dict[str, dict[str, PassCount]] = {}
    default_is_native = native and dsnt_core.kernels.select_kernels(problem.logits).name == TORCH_NATIVE
    if default_is_native:
        result["ours"] = dict(NATIVE_PASSES)
    if native:
        result["native"] = dict(NATIVE_PASSES)
    for implementation, kinds in runs.items():
        result[implementation] = {}
        for kind in (SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD):
            candidate = kinds[kind]
            with use_kernels(candidate.kernels):
                result[implementation][kind] = count_passes(candidate.run, numel)
    if not default_is_native:
        result = {"ours": result["array-api"]} | result
    return result
