"""Stability for huge and -inf logits, exact zeros, 16-bit dtypes and edge shapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _support import AUTODIFF, DIVERGENCES, REGULARIZERS, dtype_name
from hypothesis import given
from strategies import logits_arrays

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss


def _loss_value_and_grad(backend, logits, target, **options):
    """``dsnt_loss`` and its gradient: the library's autodiff, or the explicit entry point without one."""
    if backend.autodiff:
        return backend.value_and_grad(lambda a: dsnt_core.dsnt_loss(a, target, **options), logits)
    return dsnt_core.dsnt_loss_value_and_grad(logits, target, **options)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_huge_and_minus_inf_logits_give_finite_exact_results(backend, regularizer):
    logits = np.full((2, 3, 6, 7), -1e4, dtype=np.float32)
    logits[..., 2, 5] = 1e4
    logits[0, 0, :, :3] = -np.inf  # masked pixels
    z = backend.asarray(logits, "float32")
    expected = np.broadcast_to([(2 * 5 + 1 - 7) / 7, (2 * 2 + 1 - 6) / 6], (2, 3, 2))
    backend.assert_close(dsnt_core.soft_argmax(z), expected, like=z, atol=1e-6)
    target = backend.asarray(np.zeros((2, 3, 2)), "float32")
    value, grad = _loss_value_and_grad(backend, z, target, regularizer=regularizer)
    assert dtype_name(value.dtype) == dtype_name(grad.dtype) == "float32"
    assert np.isfinite(backend.to_numpy(value)) and np.isfinite(backend.to_numpy(grad)).all()
    assert (backend.to_numpy(grad)[0, 0, :, :3] == 0).all()


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_minus_inf_pixels_are_excluded_exactly(backend, regularizer):
    rng = np.random.default_rng(2)
    visible = rng.normal(size=(2, 6, 4))
    padded = backend.asarray(np.concatenate([visible, np.full((2, 6, 3), -np.inf)], axis=-1))
    coords_visible = dsnt_core.soft_argmax(backend.asarray(visible))
    # x is re-expressed on the wider grid: pixel j has centre (2j + 1 - n) / n.
    pixels = dsnt_core.normalized_to_pixel(coords_visible, (6, 4))
    expected = dsnt_core.pixel_to_normalized(pixels, (6, 7))
    backend.assert_close(dsnt_core.soft_argmax(padded), expected, atol=1e-12)
    _, grad = _loss_value_and_grad(backend, padded, backend.asarray(np.zeros((2, 2))), regularizer=regularizer)
    grad = backend.to_numpy(grad)
    assert np.isfinite(grad).all() and (grad[..., 4:] == 0).all()


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_an_all_minus_inf_heatmap_is_uniform_with_zero_gradient(backend, regularizer):
    logits = np.zeros((2, 5, 5))
    logits[1] = -np.inf
    z, t = backend.asarray(logits), backend.asarray(np.full((2, 2), 0.3))
    backend.assert_close(dsnt_core.soft_argmax(z)[1, ...], np.zeros(2))
    backend.assert_close(dsnt_core.flat_softmax(z)[1, ...], np.full((5, 5), 1 / 25))
    fused = dsnt_core.dsnt_loss(z, t, regularizer=regularizer)
    backend.assert_close(fused, composed_dsnt_loss(z, t, regularizer=regularizer), rtol=1e-12)
    _, grad = _loss_value_and_grad(backend, z, t, regularizer=regularizer)
    if backend.autodiff:
        _, coords_grad = backend.value_and_grad(dsnt_core.soft_argmax, z, cotangent=t)
    else:
        coords_grad = dsnt_core.soft_argmax_vjp(z, t)
    for name, gradient in (("loss", grad), ("coordinates", coords_grad)):
        gradient = backend.to_numpy(gradient)
        assert np.isfinite(gradient).all() and (gradient[1] == 0).all(), name


@pytest.mark.backends(*AUTODIFF)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_regularizers_of_heatmaps_with_exact_zeros_are_finite(backend, dtype):
    one_hot = np.zeros((2, 8, 8))
    one_hot[:, 3, 4] = 1.0
    target = backend.asarray(np.zeros((2, 2)), dtype)
    for regularizer in (dsnt_core.kl_regularizer, dsnt_core.js_regularizer):

        def total(h, regularizer=regularizer):
            return backend.xp.sum(regularizer(h, target, 0.5))

        value, grad = backend.value_and_grad(total, backend.asarray(one_hot, dtype))
        assert np.isfinite(backend.to_numpy(value)) and np.isfinite(backend.to_numpy(grad)).all()
    # Gaussians far from the target underflow to exact zeros in 16 bits: still finite.
    far = dsnt_core.gaussian_heatmaps(backend.asarray(np.full((2, 2), 0.9), dtype), (8, 8), 0.3)
    assert np.isfinite(backend.to_numpy(dsnt_core.js_regularizer(far, target, 0.3))).all()
    assert np.isfinite(backend.to_numpy(dsnt_core.kl_regularizer(far, target, 0.3))).all()


TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.mark.backends(*AUTODIFF)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@given(data=logits_arrays(ndim=2, min_side=2, max_side=12))
def test_16_bit_inputs_compute_in_float32_and_keep_their_dtype(backend, dtype, data):
    logits, _ = data
    z = backend.asarray(logits, dtype)
    quantized = backend.to_numpy(z)  # the exact values the 16-bit array holds
    # A target outside the grid keeps away from the kink of the Euclidean norm at distance 0.
    target = np.broadcast_to(np.asarray([1.5, -1.5]), (*logits.shape[:-2], 2)).copy()
    t = backend.asarray(target, dtype)
    coords = backend.jit(lambda a: dsnt_core.soft_argmax(a))(z)
    tol = TOLERANCE[dtype]
    backend.assert_close(coords, dsnt_core.soft_argmax(quantized), like=z, rtol=tol, atol=tol)
    loss, grad = backend.value_and_grad(lambda a: dsnt_core.dsnt_loss(a, t), z)
    reference_loss, reference_grad = dsnt_core.dsnt_loss_value_and_grad(quantized, target)
    backend.assert_close(loss, reference_loss, like=z, rtol=tol, atol=tol)
    backend.assert_close(grad, reference_grad, like=z, rtol=4 * tol, atol=4 * tol * np.abs(reference_grad).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64_keep_their_dtype(backend, dtype):
    z = backend.asarray(np.zeros((2, 4, 4)), dtype)
    t = backend.asarray(np.zeros((2, 2)), dtype)
    uniform = np.full((2, 4, 4), 1 / 16)
    expected = {
        "soft_argmax": (dsnt_core.soft_argmax(z), np.zeros((2, 2))),
        "dsnt_loss": (dsnt_core.dsnt_loss(z, t), dsnt_core.dsnt_loss(np.zeros((2, 4, 4)), np.zeros((2, 2)))),
        "gradient": (
            dsnt_core.dsnt_loss_value_and_grad(z, t)[1],
            dsnt_core.dsnt_loss_value_and_grad(np.zeros((2, 4, 4)), np.zeros((2, 2)))[1],
        ),
        "gaussian_heatmaps": (
            dsnt_core.gaussian_heatmaps(t, (4, 4), 1.0),
            dsnt_core.gaussian_heatmaps(np.zeros((2, 2)), (4, 4), 1.0),
        ),
        "js_regularizer": (
            dsnt_core.js_regularizer(dsnt_core.flat_softmax(z), t, 1.0),
            dsnt_core.js_regularizer(uniform, np.zeros((2, 2)), 1.0),
        ),
    }
    tolerance = 1e-6 if dtype == "float32" else 1e-12
    for name, (result, reference) in expected.items():
        backend.assert_close(result, reference, like=z, rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.backends("jax", gpu=False)  # a subprocess on JAX's defaults
def test_jax_without_x64_computes_in_float32(backend):
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, dsnt_core
        assert not jax.config.jax_enable_x64
        z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 16, 16)), dtype=jnp.float32)
        t = jnp.zeros((2, 3, 2))
        loss, grad = jax.jit(jax.value_and_grad(lambda a: dsnt_core.dsnt_loss(a, t)))(z)
        ref_loss, ref_grad = dsnt_core.dsnt_loss_value_and_grad(np.asarray(z, np.float64), np.zeros((2, 3, 2)))
        assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
        print("ok")
        """
    )
    env = {**os.environ, "JAX_ENABLE_X64": "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_edge_shapes(backend, regularizer):
    cases = {
        "1x1": np.zeros((3, 1, 1)),
        "1xN": np.random.default_rng(0).normal(size=(3, 1, 9)),
        "empty leading": np.zeros((0, 4, 5, 5)),
        "3-D volume": np.random.default_rng(1).normal(size=(2, 5, 6, 7)),
    }
    for label, logits in cases.items():
        ndim = 3 if label == "3-D volume" else 2
        target_np = np.zeros((*logits.shape[: logits.ndim - ndim], ndim))
        z, t = backend.asarray(logits), backend.asarray(target_np)
        options = dict(ndim=ndim, regularizer=regularizer)
        # NumPy's results (array-API kernels) are the reference for every backend.
        with dsnt_core.use_kernels("array-api"):
            reference_coords = dsnt_core.soft_argmax(logits, ndim=ndim)
            reference_grad = dsnt_core.dsnt_loss_value_and_grad(logits, target_np, **options)[1]
        backend.assert_close(dsnt_core.soft_argmax(z, ndim=ndim), reference_coords, like=z, err_msg=label)
        loss, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, **options)
        assert np.isfinite(backend.to_numpy(loss)) and np.isfinite(backend.to_numpy(grad)).all(), label
        backend.assert_close(grad, reference_grad, like=z, err_msg=label)
        composed = composed_dsnt_loss(z, t, **options)
        backend.assert_close(loss, composed, like=z, rtol=1e-10, atol=1e-12, err_msg=label)
    backend.assert_close(dsnt_core.soft_argmax(backend.asarray(np.zeros((3, 1, 1)))), np.zeros((3, 2)))


def test_512_by_512_heatmaps(backend):
    logits = np.full((2, 512, 512), -30.0, dtype=np.float32)
    logits[0, 100, 400] = 30.0
    logits[1, 511, 0] = 30.0
    z = backend.asarray(logits, "float32")
    expected = np.asarray([[(801 - 512) / 512, (201 - 512) / 512], [(1 - 512) / 512, (1023 - 512) / 512]])
    backend.assert_close(dsnt_core.soft_argmax(z), expected, like=z, atol=1e-5)
    _, grad = dsnt_core.dsnt_loss_value_and_grad(z, backend.asarray(np.zeros((2, 2)), "float32"))
    assert np.isfinite(backend.to_numpy(grad)).all()


@pytest.mark.parametrize("regularizer", DIVERGENCES)
def test_divergence_gradients_stay_finite_at_minus_inf_logits_with_large_weights(backend, regularizer):
    """``coef * log P`` at ``P = 0``: a floor at the most negative float overflowed for coef > 1."""
    logits = np.random.default_rng(5).normal(size=(1, 1, 6, 6))
    logits[0, 0, :2] = -np.inf
    target = backend.asarray([[[0.2, -0.1]]])
    options = dict(regularizer=regularizer, reg_weight=5.0)
    loss, grad = _loss_value_and_grad(backend, backend.asarray(logits), target, **options)
    assert np.isfinite(backend.to_numpy(loss)) and np.all(np.isfinite(backend.to_numpy(grad)))
    assert np.all(backend.to_numpy(grad)[0, 0, :2] == 0.0)
    finite = logits.copy()
    finite[0, 0, :2] = -1e3  # P underflows to 0 there too: the same gradient elsewhere
    _, grad_finite = _loss_value_and_grad(backend, backend.asarray(finite), target, **options)
    backend.assert_close(grad, grad_finite, rtol=1e-10, atol=1e-14)
