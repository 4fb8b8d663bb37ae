"""Backends for the cross-backend suite: create arrays in each library and read them back."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "jax", "cupy")


@dataclass(frozen=True)
class Backend:
    """One array library as the tests see it."""

    name: str
    xp: Any

    def asarray(self, values: Any, dtype: str | None = None) -> Any:
        array = np.asarray(values)
        dtype = dtype or (str(array.dtype) if array.dtype.kind in "fb" else "float64")
        if self.name == "torch":
            import torch

            return torch.as_tensor(np.asarray(array, dtype="float64" if dtype == "bfloat16" else array.dtype)).to(
                getattr(torch, dtype)
            )
        if self.name == "jax":
            import jax.numpy as jnp

            return jnp.asarray(array).astype(getattr(jnp, dtype))
        return self.xp.asarray(np.asarray(array, dtype=dtype))

    def jit(self, fn: Any) -> Any:
        """``jax.jit(fn)`` for JAX (one compilation instead of one per primitive), else ``fn``."""
        if self.name == "jax":
            import jax

            return jax.jit(fn)
        return fn

    def to_numpy(self, array: Any) -> np.ndarray:
        if self.name == "torch":
            return array.detach().to("cpu").double().numpy() if array.is_floating_point() else array.numpy()
        if self.name == "cupy":
            return array.get()
        if self.name == "jax" and str(array.dtype) in ("bfloat16", "float16"):
            return np.asarray(array.astype("float32"), dtype=np.float64)
        if self.name == "array_api_strict":
            return np.asarray(array.__array__() if hasattr(array, "__array__") else array)
        return np.asarray(array, dtype=np.float64) if np.asarray(array).dtype.kind == "f" else np.asarray(array)


def skip_reason(name: str) -> str | None:
    """Why a backend cannot run here, or ``None`` when it can."""
    module = {"array_api_strict": "array_api_strict"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        return f"{name} is not installed (pip install 'dsnt-core[{name}]' or the test extra)"
    if name == "cupy":
        from dsnt_cupy import gpu_available

        if not gpu_available():
            return "cupy is installed but no CUDA GPU is usable on this machine"
    return None


def make_backend(name: str) -> Backend:
    reason = skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    if name == "numpy":
        from array_api_compat import numpy as xp
    elif name == "torch":
        from array_api_compat import torch as xp
    elif name == "cupy":
        from array_api_compat import cupy as xp
    elif name == "jax":
        import jax.numpy as xp
    else:
        import array_api_strict as xp
    return Backend(name, xp)


def assert_close(actual: np.ndarray, expected: np.ndarray, *, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)
