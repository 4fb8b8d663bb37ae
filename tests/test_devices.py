"""Results stay on the input's device: array-api-strict's extra device, torch meta tensors, JAX."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from _support import ARRAY_FUNCTIONS
from array_api_compat import numpy as numpy_namespace

import dsnt_core


def every_public_result(z, t, m, xp):
    """One call of each public array function on logits ``z``, targets ``t`` and mask ``m``."""
    heatmaps = dsnt_core.flat_softmax(z)
    device = array_api_compat.device(z)
    return {
        "normalize_heatmaps": dsnt_core.normalize_heatmaps(z, method="relu"),
        "flat_softmax": heatmaps,
        "dsnt": dsnt_core.dsnt(heatmaps),
        "heatmap_variance": dsnt_core.heatmap_variance(heatmaps),
        "soft_argmax": dsnt_core.soft_argmax(z),
        "soft_argmax_vjp": dsnt_core.soft_argmax_vjp(z, t),
        "gaussian_heatmaps": dsnt_core.gaussian_heatmaps(t, (4, 5), 1.0),
        "euclidean_loss": dsnt_core.euclidean_loss(t, t),
        "average_loss": dsnt_core.average_loss(dsnt_core.euclidean_loss(t, t), mask=m),
        "variance_regularizer": dsnt_core.variance_regularizer(heatmaps, 1.0),
        "kl_regularizer": dsnt_core.kl_regularizer(heatmaps, t, 1.0),
        "js_regularizer": dsnt_core.js_regularizer(heatmaps, t, 1.0),
        "dsnt_loss": dsnt_core.dsnt_loss(z, t, mask=m),
        "dsnt_loss_value_and_grad": dsnt_core.dsnt_loss_value_and_grad(z, t, mask=m)[1],
        "pixel_to_normalized": dsnt_core.pixel_to_normalized(t, (4, 5)),
        "normalized_to_pixel": dsnt_core.normalized_to_pixel(t, (4, 5)),
        "normalized_linspace": dsnt_core.normalized_linspace(5, xp=xp, dtype=z.dtype, device=device),
        "pixel_linspace": dsnt_core.pixel_linspace(5, xp=xp, dtype=z.dtype, device=device),
        "linear_expectation": dsnt_core.linear_expectation(
            heatmaps,
            [
                dsnt_core.pixel_linspace(5, xp=xp, dtype=z.dtype, device=device),
                dsnt_core.pixel_linspace(4, xp=xp, dtype=z.dtype, device=device),
            ],
        ),
        "heatmap_confidence": dsnt_core.heatmap_confidence(heatmaps),
        "sharpen_heatmaps": dsnt_core.sharpen_heatmaps(heatmaps, 2.0),
        "l1_loss": dsnt_core.l1_loss(t, 0.5 * t),
        "mse_loss": dsnt_core.mse_loss(t, 0.5 * t),
    }


def _expected_on_numpy():
    """The same calls on NumPy arrays: the values every device must give."""
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(2, 3, 4, 5)), rng.uniform(-0.5, 0.5, size=(2, 3, 2))
    return z, t, every_public_result(z, t, np.ones((2, 3), dtype=bool), numpy_namespace)


def test_every_public_function_is_covered():
    assert set(every_public_result(*_expected_on_numpy()[:2], None, numpy_namespace)) == set(ARRAY_FUNCTIONS)


def _check_on_device(backend, device):
    z_np, t_np, expected = _expected_on_numpy()
    z, t = backend.asarray(z_np, device=device), backend.asarray(t_np, device=device)
    m = backend.asarray(np.ones((2, 3), dtype=bool), device=device)
    for name, result in every_public_result(z, t, m, backend.xp).items():
        backend.assert_close(result, expected[name], like=z, device=device, rtol=1e-10, atol=1e-14, err_msg=name)


@pytest.mark.backends("array_api_strict")
def test_array_api_strict_extra_device_is_kept(backend):
    _check_on_device(backend, backend.xp.Device("device1"))


@pytest.mark.backends("jax")
def test_jax_results_stay_on_the_input_device(backend):
    import jax

    _check_on_device(backend, jax.devices()[-1])


@pytest.mark.backends("torch", gpu=False)
def test_torch_meta_tensors_propagate_shapes(backend):
    torch = backend.library
    z = torch.empty(2, 3, 4, 5, device="meta", dtype=torch.float64)
    t = torch.empty(2, 3, 2, device="meta", dtype=torch.float64)
    m = torch.empty(2, 3, device="meta", dtype=torch.float64)
    _, _, expected = _expected_on_numpy()
    for name, result in every_public_result(z, t, m, backend.xp).items():
        assert result.device.type == "meta", name
        assert result.dtype == torch.float64, name
        assert tuple(result.shape) == np.shape(expected[name]), name
    logits = torch.empty(2, 3, 4, 5, device="meta", requires_grad=True)
    dsnt_core.dsnt_loss(logits, t.float()).backward()
    assert logits.grad.device.type == "meta" and logits.grad.shape == logits.shape
