"""Results stay on the input's device: array-api-strict's extra device, torch meta tensors, JAX."""

from __future__ import annotations

import numpy as np
import pytest

import dsnt_core


def every_public_result(z, t, m, xp):
    """One call of each public function on logits ``z``, targets ``t`` and mask ``m``."""
    heatmaps = dsnt_core.flat_softmax(z)
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
        "normalized_linspace": dsnt_core.normalized_linspace(
            5, xp=xp, dtype=z.dtype, device=__import__("array_api_compat").device(z)
        ),
    }


def test_array_api_strict_extra_device_is_kept():
    xp = pytest.importorskip("array_api_strict")
    device = xp.Device("device1")
    rng = np.random.default_rng(0)
    z = xp.asarray(rng.normal(size=(2, 3, 4, 5)), device=device)
    t = xp.asarray(rng.uniform(-0.5, 0.5, size=(2, 3, 2)), device=device)
    m = xp.asarray(np.ones((2, 3), dtype=bool), device=device)
    results = every_public_result(z, t, m, xp)
    assert set(results) == set(dsnt_core.__all__)
    for name, result in results.items():
        assert result.device == device, name


def test_torch_meta_tensors_propagate_shapes():
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    z = torch.empty(2, 3, 4, 5, device="meta")
    t = torch.empty(2, 3, 2, device="meta")
    m = torch.empty(2, 3, device="meta")
    results = every_public_result(z, t, m, xp)
    expected_shapes = {"dsnt_loss": (), "average_loss": (), "normalized_linspace": (5,)}
    for name, result in results.items():
        assert result.device.type == "meta", name
        if name in expected_shapes:
            assert tuple(result.shape) == expected_shapes[name], name
    assert tuple(results["soft_argmax"].shape) == (2, 3, 2)
    assert tuple(results["dsnt_loss_value_and_grad"].shape) == (2, 3, 4, 5)
    logits = torch.empty(2, 3, 4, 5, device="meta", requires_grad=True)
    dsnt_core.dsnt_loss(logits, t).backward()
    assert logits.grad.device.type == "meta" and logits.grad.shape == logits.shape


def test_jax_results_stay_on_the_input_device():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    device = jax.devices()[-1]
    z = jax.device_put(jnp.zeros((2, 3, 4, 5)), device)
    t = jax.device_put(jnp.zeros((2, 3, 2)), device)
    m = jax.device_put(jnp.ones((2, 3)), device)
    for name, result in every_public_result(z, t, m, jnp).items():
        assert result.devices() == {device}, name
