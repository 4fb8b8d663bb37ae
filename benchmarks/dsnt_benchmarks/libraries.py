"""Which array libraries the suite times here, and the candidates of each library's group."""

from __future__ import annotations

import importlib.util

from .candidate import Candidate
from .cupy_candidates import cupy_candidates
from .jax_candidates import jax_candidates
from .numpy_candidates import numpy_candidates
from .torch_candidates import torch_cpu_candidates, torch_cuda_candidates


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def cpu_libraries() -> list[str]:
    """``torch``, ``jax`` and ``numpy``, those installed, in report order."""
    return [library for library in ("torch", "jax", "numpy") if installed(library)]


def gpu_libraries() -> list[str]:
    """``torch-cuda`` and ``cupy`` where a GPU is usable (none on the CI machines)."""
    found = []
    if installed("torch"):
        import torch

        if torch.cuda.is_available():
            found.append("torch-cuda")
    if installed("cupy"):
        from dsnt_cupy import gpu_available

        if gpu_available():
            found.append("cupy")
    return found


def group_candidates(library: str, shape: tuple[int, ...], *, with_peers: bool) -> list[Candidate]:
    """The candidates of the ``library`` group of ``shape``; ``with_peers`` adds dsntnn and kornia (torch)."""
    if library == "torch":
        return torch_cpu_candidates(shape, with_peers=with_peers)
    if library == "torch-cuda":
        return torch_cuda_candidates(shape, with_peers=with_peers)
    if library == "cupy":
        return cupy_candidates(shape)
    if library == "jax":
        return jax_candidates(shape)
    if library == "numpy":
        return numpy_candidates(shape)
    raise ValueError(f"unknown library {library!r}")
