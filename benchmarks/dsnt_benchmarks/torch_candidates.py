"""The PyTorch groups: dsnt-core on its default and native kernels, the naive composition, dsntnn and kornia."""

from __future__ import annotations

from dataclasses import replace

from .candidate import SOFT_ARGMAX_FWD, SOFT_ARGMAX_FWD_BWD, STEP_FWD, STEP_FWD_BWD, Candidate, floor
from .kernels import ARRAY_API, TORCH_NATIVE, kernels_available
from .peers import dsntnn_candidates, kornia_candidates
from .timing import synchronized
from .torch_problem import TorchProblem, torch_problem


def dsnt_core_candidates(problem: TorchProblem, implementation: str, kernels: str | None) -> list[Candidate]:
    """dsnt-core's soft-argmax and JS step, forward and forward+backward, on the kernel set ``kernels``.

    ``kernels=None`` leaves the choice to dsnt-core: the default path, with no switch.
    """
    return [
        Candidate(implementation, SOFT_ARGMAX_FWD, problem.forward(problem.ours_coords), kernels),
        Candidate(implementation, SOFT_ARGMAX_FWD_BWD, problem.coords_backward(problem.ours_coords), kernels),
        Candidate(implementation, STEP_FWD, problem.forward(problem.ours_step), kernels),
        Candidate(implementation, STEP_FWD_BWD, problem.forward_backward(problem.ours_step), kernels),
    ]


def torch_candidates(problem: TorchProblem, *, with_peers: bool) -> list[Candidate]:
    """The group of one shape, in report order.

    The exp floor; dsnt-core with no switch ("ours": the kernels dsnt-core picks by itself,
    the native ones for CPU tensors where they build), on the native kernels by name
    ("native", CPU only) and on the array-API kernels ("array-api", forward+backward only);
    the naive composition; with ``with_peers``, dsntnn and (2-D, where installed) kornia.
    """
    import torch

    candidates = [floor(problem.forward(torch.exp))]
    candidates += dsnt_core_candidates(problem, "ours", None)
    if problem.logits.device.type == "cpu" and kernels_available(TORCH_NATIVE):
        candidates += dsnt_core_candidates(problem, "native", TORCH_NATIVE)
    array_api = dsnt_core_candidates(problem, "array-api", ARRAY_API)
    candidates += [c for c in array_api if c.kind in (SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD)]
    candidates += [
        Candidate("naive", SOFT_ARGMAX_FWD_BWD, problem.coords_backward(problem.naive_coords)),
        Candidate("naive", STEP_FWD_BWD, problem.forward_backward(problem.naive_step)),
    ]
    if with_peers:
        candidates += dsntnn_candidates(problem)
        if problem.ndim == 2:
            try:
                candidates += kornia_candidates(problem)
            except ImportError:
                pass
    return candidates


def torch_cpu_candidates(shape: tuple[int, ...], *, with_peers: bool) -> list[Candidate]:
    """The ``torch`` group of ``shape``."""
    return torch_candidates(torch_problem(shape), with_peers=with_peers)


def torch_cuda_candidates(shape: tuple[int, ...], *, with_peers: bool) -> list[Candidate]:
    """The ``torch-cuda`` group of ``shape``: every candidate ends with a device synchronisation."""
    import torch

    candidates = torch_candidates(torch_problem(shape, device="cuda"), with_peers=with_peers)
    return [replace(c, run=synchronized(c.run, torch.cuda.synchronize)) for c in candidates]
