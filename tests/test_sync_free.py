"""No host synchronisation on the training path: nothing copied from the host, nothing read back.

On a GPU, ``torch.asarray(<Python number or list>, device=cuda)`` copies from pageable host
memory and waits, and ``.item()``, ``bool(tensor)`` or ``.tolist()`` wait for the device. The
tests run every public function forward and backward on ``meta`` tensors (a device without
data, standing in for a GPU) under a ``TorchFunctionMode`` that records each call of that
kind. On a GPU machine, ``benchmarks/gpu_check.py`` runs the same calls under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

import dsnt_core

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed (pip install 'dsnt-core[torch]')", allow_module_level=True)

import array_api_compat.torch
import torch
from torch.overrides import TorchFunctionMode

HOST_DATA_FACTORIES = {torch.asarray, torch.tensor, torch.as_tensor, torch.from_numpy}
HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
}


class HostTraffic(TorchFunctionMode):
    """Records every call that would copy host data to the device or read device data on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in HOST_DATA_FACTORIES and args and not isinstance(args[0], torch.Tensor):
            self.calls.append(f"{getattr(func, '__name__', func)}(<host data>)")
        elif func in HOST_READS:
            self.calls.append(getattr(func, "__name__", str(func)))
        elif func in (torch.Tensor.to, torch.Tensor.copy_):
            devices = [a.type if isinstance(a, torch.device) else a for a in (*args[1:], kwargs.get("device"))]
            if any(str(d).startswith("cpu") for d in devices if d is not None):
                self.calls.append(f"{func.__name__} to the host")
        return func(*args, **kwargs)


def _inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, 3, 8, 6, dtype=dtype, device="meta", requires_grad=True)
    target = torch.zeros(2, 3, 2, dtype=dtype, device="meta")
    mask = torch.ones(2, 3, dtype=torch.bool, device="meta")
    return logits, target, mask


def _every_call() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]]:
    """Each public array function of the core, forward and (where differentiable) backward."""
    calls: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]] = {
        "soft_argmax": lambda z, t, m: dsnt_core.soft_argmax(z, temperature=0.5).sum().backward(),
        "soft_argmax_vjp": lambda z, t, m: dsnt_core.soft_argmax_vjp(z.detach(), t),
        "dsnt_loss_value_and_grad": lambda z, t, m: dsnt_core.dsnt_loss_value_and_grad(z.detach(), t, mask=m),
        "flat_softmax": lambda z, t, m: dsnt_core.flat_softmax(z).sum().backward(),
        "normalize_heatmaps": lambda z, t, m: dsnt_core.normalize_heatmaps(z, method="relu").sum().backward(),
        "dsnt": lambda z, t, m: dsnt_core.dsnt(dsnt_core.flat_softmax(z)).sum().backward(),
        "heatmap_variance": lambda z, t, m: dsnt_core.heatmap_variance(dsnt_core.flat_softmax(z)).sum().backward(),
        "gaussian_heatmaps": lambda z, t, m: dsnt_core.gaussian_heatmaps(t, (8, 6), 1.0),
        "euclidean_loss": lambda z, t, m: dsnt_core.euclidean_loss(dsnt_core.soft_argmax(z), t).sum().backward(),
        "average_loss": lambda z, t, m: dsnt_core.average_loss(z.sum((-1, -2)), mask=m).backward(),
        "pixel_to_normalized": lambda z, t, m: dsnt_core.pixel_to_normalized(t, (8, 6)),
        "normalized_to_pixel": lambda z, t, m: dsnt_core.normalized_to_pixel(t, (8, 6)),
        "normalized_linspace": lambda z, t, m: dsnt_core.normalized_linspace(
            8, device=z.device, dtype=z.dtype, xp=array_api_compat.torch
        ),
    }
    for regularizer in ("js", "kl", "var", None):
        calls[f"dsnt_loss[{regularizer}]"] = lambda z, t, m, r=regularizer: dsnt_core.dsnt_loss(
            z, t, regularizer=r, mask=m, temperature=0.7
        ).backward()
    regularizers = {"js_regularizer": dsnt_core.js_regularizer, "kl_regularizer": dsnt_core.kl_regularizer}
    for name, regularizer in regularizers.items():
        calls[name] = lambda z, t, m, f=regularizer: f(dsnt_core.flat_softmax(z), t, 1.0).sum().backward()
    calls["variance_regularizer"] = lambda z, t, m: (
        dsnt_core.variance_regularizer(dsnt_core.flat_softmax(z), 1.0).sum().backward()
    )
    return calls


@pytest.mark.parametrize("name", sorted(_every_call()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_no_host_copy_or_read_forward_and_backward(name, dtype):
    logits, target, mask = _inputs(dtype)
    traffic = HostTraffic()
    with traffic:
        _every_call()[name](logits, target, mask)
    assert traffic.calls == [], f"{name} synchronises with the host: {traffic.calls}"


def test_the_watch_sees_what_it_must():
    """The mode itself: a host list copied to the device and a value read back are both caught."""
    logits, _, _ = _inputs()
    traffic = HostTraffic()
    with traffic:
        torch.asarray([1.0, 2.0], device="meta")
        torch.tensor(3.0, device="meta")
        torch.zeros(1).item()
        with pytest.raises(NotImplementedError):  # recorded, then refused: a meta tensor has no data
            logits.to("cpu")
    assert len(traffic.calls) == 4, traffic.calls


def test_the_gpu_check_runs_cleanly_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.py skips every GPU part with its reason and still writes its report."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for minutes (run benchmarks/gpu_check.sh)")
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for section in ("tests", "sync", "bandwidth", "speedups"):
        assert "no CUDA GPU" in report[section]["skipped"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
