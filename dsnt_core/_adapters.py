"""Find the framework adapter (autodiff registration) for an array, without importing frameworks."""

from __future__ import annotations

import sys
from types import ModuleType

import array_api_compat


def adapter_for(x: object) -> ModuleType | None:
    """The adapter package that registers the fused gradient rules for ``x``'s framework.

    Returns ``None`` for libraries without autodiff (NumPy, CuPy, Dask, array-api-strict):
    those use the core's forward pass and its explicit gradient entry points.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        import dsnt_torch

        return dsnt_torch
    if "jax" in sys.modules and array_api_compat.is_jax_array(x):
        import dsnt_jax

        return dsnt_jax
    return None
