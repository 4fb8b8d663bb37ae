"""PyTorch adapter: the core's fused gradient rules as ``torch.autograd.Function``s, plus modules.

``dsnt_core.soft_argmax`` and ``dsnt_core.dsnt_loss`` route torch tensors here on their own;
import this package directly only for the ``torch.nn.Module`` conveniences.
"""

from ._autograd import build_native_kernels, dsnt_loss, soft_argmax, use_compiled_kernels, use_native_kernels
from .modules import DSNTHead, DSNTLoss

__all__ = [
    "DSNTHead",
    "DSNTLoss",
    "build_native_kernels",
    "dsnt_loss",
    "soft_argmax",
    "use_compiled_kernels",
    "use_native_kernels",
]
