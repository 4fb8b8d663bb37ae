"""``dsnt demo``: the same synthetic heatmaps through every installed array library."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

import dsnt_core


def _numpy_like(name: str) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]:
    """(to_array, to_numpy) for a library, raising ``RuntimeError`` with a reason if unusable."""
    if name == "numpy":
        return (lambda a: a), np.asarray
    if importlib.util.find_spec(name.split(".")[0]) is None:
        extra = {"torch": "torch", "jax": "jax", "cupy": "cupy", "dask.array": "test"}.get(name, "test")
        raise RuntimeError(f"not installed (pip install 'dsnt-core[{extra}]')")
    if name == "torch":
        import torch

        return torch.from_numpy, lambda a: a.detach().numpy()
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        return jax.numpy.asarray, np.asarray
    if name == "cupy":
        from dsnt_cupy import gpu_available

        if not gpu_available():
            raise RuntimeError("installed, but no CUDA GPU is usable here")
        import cupy

        return cupy.asarray, cupy.asnumpy
    if name == "dask.array":
        import dask.array as da

        return (lambda a: da.from_array(a, chunks=(1,) + a.shape[1:])), lambda a: np.asarray(a.compute())
    import array_api_strict as xp

    return xp.asarray, lambda a: np.asarray(a)


def _gradient(name: str, logits: Any, target: Any) -> Any:
    """d loss / d logits through the library's own autodiff where it has one."""
    if name == "torch":
        import torch

        z = logits.clone().requires_grad_()
        (grad,) = torch.autograd.grad(dsnt_core.dsnt_loss(z, target), z)
        return grad
    if name == "jax":
        import jax

        return jax.grad(lambda z: dsnt_core.dsnt_loss(z, target))(logits)
    return dsnt_core.dsnt_loss_value_and_grad(logits, target)[1]


def run_demo(seed: int = 0, print_fn: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo; returns the largest difference from NumPy per library that ran."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(-0.7, 0.7, size=(2, 3, 2))
    logits = 4.0 * np.log(dsnt_core.gaussian_heatmaps(target, (16, 16), 1.5) + 1e-3) + rng.normal(
        scale=0.5, size=(2, 3, 16, 16)
    )
    print_fn("dsnt-core demo: 2 x 3 heatmaps of 16 x 16, float64, JS regulariser (sigma = 1 pixel)")
    print_fn(f"target of point (0, 0): {np.round(target[0, 0], 4).tolist()}")
    header = f"{'library':<18}{'coords of point (0, 0)':<26}{'loss':>10}{'|grad|':>10}{'max diff vs NumPy':>20}"
    print_fn(header)
    print_fn("-" * len(header))
    reference: tuple[np.ndarray, ...] | None = None
    differences: dict[str, float] = {}
    skipped: list[str] = []
    for name in ("numpy", "array_api_strict", "torch", "jax", "cupy", "dask.array"):
        try:
            to_array, to_numpy = _numpy_like(name)
        except RuntimeError as reason:
            skipped.append(f"{name}: {reason}")
            continue
        z, t = to_array(logits), to_array(target)
        coords = to_numpy(dsnt_core.soft_argmax(z))
        loss = np.asarray(to_numpy(dsnt_core.dsnt_loss(z, t)))
        grad = to_numpy(_gradient(name, z, t))
        results = (coords, loss, grad)
        if reference is None:
            reference = results
        difference = max(float(np.max(np.abs(a - b))) for a, b in zip(results, reference))
        differences[name] = difference
        print_fn(
            f"{name:<18}{str(np.round(coords[0, 0], 4).tolist()):<26}{float(loss):>10.5f}"
            f"{float(np.linalg.norm(grad)):>10.5f}{difference:>20.2e}"
        )
    agree = all(d < 1e-10 for d in differences.values())
    print_fn(f"\nall {len(differences)} libraries agree to 1e-10: {'yes' if agree else 'NO'}")
    for line in skipped:
        print_fn(f"skipped {line}")
    return differences
