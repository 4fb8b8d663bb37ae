"""The PyTorch inputs of one shape, the losses timed on them, and the forward+backward wrappers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

from .config import SIGMA

#: A loss or coordinates as a function of the logits.
LogitsFunction = Callable[[Any], Any]


@dataclass(frozen=True)
class TorchProblem:
    """Random logits (B, K, *spatial), targets and coordinate cotangents (B, K, ndim), seed 0.

    Create with `torch_problem`.
    """

    logits: Any
    target: Any
    cotangent: Any
    ndim: int

    def ours_step(self, z: Any) -> Any:
        """The fused JS training loss of dsnt-core on logits ``z``."""
        return dsnt_core.dsnt_loss(z, self.target, sigma=SIGMA, regularizer="js", ndim=self.ndim)

    def naive_step(self, z: Any) -> Any:
        """The same loss composed of dsnt-core's building blocks (``composed_dsnt_loss``)."""
        return composed_dsnt_loss(z, self.target, sigma=SIGMA, regularizer="js", ndim=self.ndim)

    def ours_coords(self, z: Any) -> Any:
        """dsnt-core's fused ``soft_argmax`` of ``z``."""
        return dsnt_core.soft_argmax(z, ndim=self.ndim)

    def naive_coords(self, z: Any) -> Any:
        """``dsnt(flat_softmax(z))``: the same coordinates, unfused."""
        return dsnt_core.dsnt(dsnt_core.flat_softmax(z, ndim=self.ndim), ndim=self.ndim)

    def forward(self, fn: LogitsFunction) -> Callable[[], Any]:
        """``fn`` of the logits, without gradient tracking."""
        return lambda: fn(self.logits)

    def forward_backward(self, loss_fn: LogitsFunction) -> Callable[[], None]:
        """The loss of fresh leaf logits and its backward pass."""

        def run() -> None:
            z = self.logits.detach().requires_grad_()
            loss_fn(z).backward()

        return run

    def forward_with_graph(self, loss_fn: LogitsFunction) -> Callable[[], Any]:
        """The loss of fresh leaf logits (sharing the logits' storage), its graph recorded for a backward."""

        def run() -> Any:
            return loss_fn(self.logits.detach().requires_grad_())

        return run

    def coords_backward(self, coords_fn: LogitsFunction) -> Callable[[], None]:
        """The coordinates of fresh leaf logits and their backward pass with the fixed cotangent."""

        def run() -> None:
            z = self.logits.detach().requires_grad_()
            coords_fn(z).backward(self.cotangent)

        return run


def torch_problem(shape: tuple[int, ...], device: str = "cpu") -> TorchProblem:
    """The inputs for ``shape`` (batch, points, *spatial), drawn on the CPU then moved to ``device``."""
    import torch

    ndim = len(shape) - 2
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).to(device)
    target = (torch.rand((*shape[:2], ndim), generator=generator) * 1.6 - 0.8).to(device)
    cotangent = torch.randn((*shape[:2], ndim), generator=generator).to(device)
    return TorchProblem(logits, target, cotangent, ndim)
