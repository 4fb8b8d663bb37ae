"""The other PyTorch libraries timed against dsnt-core: dsntnn (the reference) and kornia."""

from __future__ import annotations

from typing import Any

from .candidate import SOFT_ARGMAX_FWD, SOFT_ARGMAX_FWD_BWD, STEP_FWD, STEP_FWD_BWD, Candidate
from .config import SIGMA
from .torch_problem import LogitsFunction, TorchProblem


def dsntnn_step(target: Any) -> LogitsFunction:
    """dsntnn's JS training loss towards ``target``, as a function of the logits."""
    import dsntnn

    def step(z: Any) -> Any:
        heatmaps = dsntnn.flat_softmax(z)
        losses = dsntnn.euclidean_losses(dsntnn.dsnt(heatmaps), target)
        return dsntnn.average_loss(losses + dsntnn.js_reg_losses(heatmaps, target, SIGMA))

    return step


def dsntnn_candidates(problem: TorchProblem) -> list[Candidate]:
    """dsntnn's soft-argmax and JS step, forward and forward+backward."""
    import dsntnn

    def coords(z: Any) -> Any:
        return dsntnn.dsnt(dsntnn.flat_softmax(z))

    step = dsntnn_step(problem.target)
    return [
        Candidate("dsntnn", SOFT_ARGMAX_FWD, problem.forward(coords)),
        Candidate("dsntnn", SOFT_ARGMAX_FWD_BWD, problem.coords_backward(coords)),
        Candidate("dsntnn", STEP_FWD, problem.forward(step)),
        Candidate("dsntnn", STEP_FWD_BWD, problem.forward_backward(step)),
    ]


def kornia_candidates(problem: TorchProblem) -> list[Candidate]:
    """kornia's soft-argmax and a kornia JS step, forward+backward (2-D only).

    kornia's grid puts -1 and 1 on the corner pixels rather than inside them: the values
    differ from dsnt-core's, the cost (what is measured) does not.

    Raises
    ------
    ImportError
        If kornia is not installed.
    """
    import kornia
    import torch

    subpix = kornia.geometry.subpix
    height, width = problem.logits.shape[-2:]
    std = torch.tensor([2 * SIGMA / (width - 1), 2 * SIGMA / (height - 1)], device=problem.target.device)
    std = std.expand_as(problem.target)

    def step(z: Any) -> Any:
        heatmaps = subpix.spatial_softmax2d(z)
        coords = subpix.spatial_expectation2d(heatmaps)
        gauss = subpix.render_gaussian2d(problem.target, std, (height, width))
        euclidean = torch.linalg.vector_norm(coords - problem.target, dim=-1).mean()
        return euclidean + kornia.losses.js_div_loss_2d(heatmaps, gauss)

    return [
        Candidate("kornia", SOFT_ARGMAX_FWD_BWD, problem.coords_backward(subpix.spatial_soft_argmax2d)),
        Candidate("kornia", STEP_FWD_BWD, problem.forward_backward(step)),
    ]
