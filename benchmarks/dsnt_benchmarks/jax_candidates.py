"""The JAX group: jitted dsnt-core against the naive composition under the same ``jit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

from .candidate import SOFT_ARGMAX_FWD, SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD, Candidate, floor
from .config import SIGMA


def jax_candidates(shape: tuple[int, ...]) -> list[Candidate]:
    """The ``jax`` group of ``shape`` (float32, drawn by NumPy with seed 0); every call blocks until ready."""
    import jax
    import jax.numpy as jnp

    ndim = len(shape) - 2
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)
    target = jnp.asarray(rng.uniform(-0.8, 0.8, size=(*shape[:2], ndim)), dtype=jnp.float32)

    def ready(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(fn(logits))

    def ours_coords(z: Any) -> Any:
        return dsnt_core.soft_argmax(z, ndim=ndim)

    ours = jax.jit(jax.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, target, sigma=SIGMA, ndim=ndim)))
    naive = jax.jit(jax.value_and_grad(lambda z: composed_dsnt_loss(z, target, sigma=SIGMA, ndim=ndim)))
    return [
        floor(ready(jax.jit(jnp.exp))),
        Candidate("ours", SOFT_ARGMAX_FWD, ready(jax.jit(ours_coords))),
        Candidate("ours", SOFT_ARGMAX_FWD_BWD, ready(jax.jit(jax.grad(lambda z: ours_coords(z).sum())))),
        Candidate("ours", STEP_FWD_BWD, ready(ours)),
        Candidate("naive", STEP_FWD_BWD, ready(naive)),
    ]
