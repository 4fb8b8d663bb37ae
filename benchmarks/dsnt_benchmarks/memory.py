"""What autograd keeps for the backward pass of a PyTorch candidate."""

from __future__ import annotations

from typing import Any

from .candidate import Candidate
from .timing import call


def saved_bytes(candidate: Candidate) -> int:
    """Bytes of the storages autograd saves for backward while ``candidate`` runs, each counted once.

    ``candidate`` builds a graph from leaf logits that share the logits' storage (see
    ``TorchProblem.forward_with_graph``), so the logits count once if they are saved at all.
    """
    import torch

    storages: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        call(candidate)
    return sum(storages.values())
