"""How many heatmap-sized reads and writes a call makes: counted for PyTorch operations, known for C++ kernels.

A "pass" is one full-size sweep over memory: reading a tensor of the logits' size (or more),
or writing one. Operations of PyTorch are counted as they run (a `TorchDispatchMode` sees every
ATen operation, forward and backward); a C++ kernel's sweeps are invisible there, so the native
kernels' counts are the known ones of ``backends/dsnt_torch/native_passes.cpp``: each heatmap is
read from memory once per rule and the sweeps after the first run while it sits in the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .candidate import SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD

#: Operations that allocate without writing (``empty``), or that neither read nor write data.
_NO_DATA = ("aten::empty", "aten::empty_like", "aten::empty_strided", "aten::set_", "aten::resize_")


@dataclass(frozen=True)
class PassCount:
    """Heatmap-sized reads and writes of one call.

    Parameters
    ----------
    reads
        Tensors of at least the logits' size read by an operation (an input counts once per operation).
    writes
        Tensors of at least the logits' size written (an output, or an input changed in place).
    counted
        Whether they were counted while the call ran (``False``: known from the kernels' code).

    Examples
    --------
    >>> PassCount(2, 1, counted=False).label
    '2 reads + 1 writes (known)'
    """

    reads: int
    writes: int
    counted: bool = True

    @property
    def label(self) -> str:
        """``"R reads + W writes"``, with ``(known)`` for counts that were not measured."""
        return f"{self.reads} reads + {self.writes} writes" + ("" if self.counted else " (known)")


#: The native kernels' passes (``torch-native``), from the C++ code: ``soft_argmax`` keeps ``P``
#: (forward: read the logits, write ``P``; backward: read ``P``, write the gradient); the JS
#: step's forward reads the logits once (max, ``exp``, marginals, entropy and mixture sums, all
#: per heatmap in cache) and its backward reads them again and writes the gradient.
NATIVE_PASSES = {
    SOFT_ARGMAX_FWD_BWD: PassCount(2, 2, counted=False),
    STEP_FWD_BWD: PassCount(2, 1, counted=False),
}


def count_passes(run: Callable[[], Any], numel: int) -> PassCount:
    """The heatmap-sized reads and writes of the PyTorch operations that ``run`` makes, forward and backward.

    Parameters
    ----------
    run
        The call (for instance a candidate's ``run``), with logits of ``numel`` elements.
    numel
        The number of logits: tensors with at least that many elements, in storage of at least
        that many elements, are heatmap-sized (an expanded small tensor is not).

    Returns
    -------
    PassCount
        The counts; views and allocations count nothing.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def heatmap_sized(value: Any) -> bool:
        return (
            isinstance(value, torch.Tensor)
            and value.numel() >= numel
            and value.untyped_storage().nbytes() >= numel * value.element_size()
        )

    counts = {"reads": 0, "writes": 0}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            schema = func._schema
            aliases = [r.alias_info for r in schema.returns if r.alias_info is not None]
            if schema.name in _NO_DATA or any(not a.is_write for a in aliases):  # allocations and views
                return out
            inputs = torch.utils._pytree.tree_leaves((args, kwargs))
            outputs = torch.utils._pytree.tree_leaves(out)
            counts["reads"] += sum(heatmap_sized(t) for t in inputs)
            counts["writes"] += sum(heatmap_sized(t) for t in outputs)
            return out

    with Counter():
        run()
    return PassCount(counts["reads"], counts["writes"])
