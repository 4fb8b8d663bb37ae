"""JAX adapter: ``dsnt_core.soft_argmax`` and ``dsnt_core.dsnt_loss`` differentiable under ``jax.grad``.

JAX arrays reach :mod:`dsnt_jax.adapter` through the ``dsnt_core.adapters`` entry point;
nothing here needs to be imported by hand.
"""

from .adapter import dsnt_loss, soft_argmax

__all__ = ["dsnt_loss", "soft_argmax"]
