"""The NumPy group: dsnt-core's explicit-gradient entry points against the naive composition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

from .candidate import SOFT_ARGMAX_FWD, STEP_FWD, STEP_FWD_BWD, Candidate, floor
from .config import SIGMA


def random_inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits of ``shape`` (batch, points, *spatial) and targets (batch, points, ndim), seed 0."""
    ndim = len(shape) - 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape).astype(np.float32)
    target = rng.uniform(-0.8, 0.8, size=(*shape[:2], ndim)).astype(np.float32)
    return logits, target


def explicit_gradient_candidates(exp: Callable[[Any], Any], logits: Any, target: Any) -> list[Candidate]:
    """The floor (``exp`` of the logits), dsnt-core forward and value-and-gradient, and the naive step forward.

    For the libraries without autodiff, whose arrays dsnt-core differentiates itself.
    """
    ndim = len(logits.shape) - 2

    def value_and_grad() -> Any:
        return dsnt_core.dsnt_loss_value_and_grad(logits, target, sigma=SIGMA, ndim=ndim)

    return [
        floor(lambda: exp(logits)),
        Candidate("ours", SOFT_ARGMAX_FWD, lambda: dsnt_core.soft_argmax(logits, ndim=ndim)),
        Candidate("ours", STEP_FWD, lambda: dsnt_core.dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim)),
        Candidate("ours", STEP_FWD_BWD, value_and_grad),
        Candidate("naive", STEP_FWD, lambda: composed_dsnt_loss(logits, target, sigma=SIGMA, ndim=ndim)),
    ]


def numpy_candidates(shape: tuple[int, ...]) -> list[Candidate]:
    """The ``numpy`` group of ``shape``."""
    return explicit_gradient_candidates(np.exp, *random_inputs(shape))
