"""The entries of the ``backend`` fixture: the GPU ones, their skip reasons, and what the markers pick."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
from _support import BACKEND_NAMES, GPU_BACKENDS, LIBRARIES, library_of, skip_reason
from conftest import _backend_choice


def _choice(*names, **options):
    """What ``@pytest.mark.backends(*names, **options)`` picks."""
    marker = pytest.mark.backends(*names, **options).mark
    definition = SimpleNamespace(get_closest_marker=lambda name: marker, nodeid="test_x")
    return _backend_choice(SimpleNamespace(definition=definition))


def test_every_library_has_its_entry_and_the_gpu_entries_their_library():
    assert set(LIBRARIES) <= set(BACKEND_NAMES) and set(GPU_BACKENDS) <= set(BACKEND_NAMES)
    libraries = [library_of(name) for name in ("torch-cuda", "jax-gpu", "cupy", "torch")]
    assert libraries == ["torch", "jax", "cupy", "torch"]


def test_a_library_picks_its_gpu_entry_unless_gpu_is_false():
    assert _choice("torch") == ("torch", "torch-cuda")
    assert _choice("torch", "jax") == ("torch", "jax", "torch-cuda", "jax-gpu")
    assert _choice("torch", "jax", gpu=False) == ("torch", "jax")
    assert _choice("numpy", "cupy", gpu=False) == ("numpy",)
    assert _choice("torch-cuda") == ("torch-cuda",)
    assert _choice("numpy") == ("numpy",)
    for wrong in [("tensorflow",), ()]:
        with pytest.raises(pytest.UsageError):
            _choice(*wrong)
    with pytest.raises(pytest.UsageError):
        _choice("torch", cpu=True)
    with pytest.raises(pytest.UsageError):
        _choice("cupy", gpu=False)  # picks nothing


def test_the_gpu_entries_say_why_they_cannot_run_here():
    if importlib.util.find_spec("torch") is not None:
        import torch

        reason = skip_reason("torch-cuda")
        assert (reason is None) == torch.cuda.is_available()
        assert reason is None or reason.startswith("no CUDA GPU is usable: torch.cuda.is_available() is False")
    if importlib.util.find_spec("jax") is not None:
        import jax

        reason = skip_reason("jax-gpu")
        try:
            has_gpu = bool(jax.devices("gpu"))
        except RuntimeError:
            has_gpu = False
        assert (reason is None) == has_gpu
        assert reason is None or reason.startswith("no GPU is usable by JAX")


@pytest.mark.backends("torch", "jax")
def test_arrays_are_made_on_the_entry_device_and_come_back(backend):
    array = backend.asarray(np.arange(6.0).reshape(2, 3))
    assert backend.name == library_of(backend.entry)
    if backend.device is not None:
        import array_api_compat

        assert array_api_compat.device(array) == backend.device
    np.testing.assert_array_equal(backend.to_numpy(array), np.arange(6.0).reshape(2, 3))
    backend.assert_close(backend.xp.sum(array, axis=-1), [3.0, 12.0], like=array)
