"""Kernel implementations of the fused operations, their typed contract and the switch between them.

* :mod:`.contract`: the `Kernels` protocol (the four full-size passes), the records they
  exchange with the rules, and the memory budget;
* :mod:`.array_api`: `ArrayAPIKernels`, the default for every library;
* :mod:`.numpy_fast`: `NumPyKernels`, chosen automatically for NumPy arrays;
* :mod:`.registry`: `use_kernels`, `available_kernels` and the selection for a call.

Adapters add implementations through the ``dsnt_core.kernels`` entry-point group.
"""

from .array_api import ArrayAPIKernels
from .contract import (
    Divergence,
    DivergenceKind,
    Kernels,
    LossResiduals,
    SoftArgmaxResiduals,
    SoftmaxStatistics,
)
from .numpy_fast import NumPyKernels
from .registry import (
    KernelInfo,
    array_api_kernels,
    available_kernels,
    current_kernels,
    get_kernels,
    select_kernels,
    set_default_kernels,
    use_kernels,
)

__all__ = [
    "ArrayAPIKernels",
    "Divergence",
    "DivergenceKind",
    "KernelInfo",
    "Kernels",
    "LossResiduals",
    "NumPyKernels",
    "SoftArgmaxResiduals",
    "SoftmaxStatistics",
    "array_api_kernels",
    "available_kernels",
    "current_kernels",
    "get_kernels",
    "select_kernels",
    "set_default_kernels",
    "use_kernels",
]
