"""Stability for huge and -inf logits, exact zeros, 16-bit dtypes and edge shapes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _support import assert_close, make_backend
from hypothesis import given
from strategies import logits_arrays

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

REGULARIZERS = ["js", "kl", "var", None]
AUTODIFF = ["torch", "jax"]


def value_and_grad(backend, fn, logits):
    """Loss and gradient in the backend's own autodiff (or the explicit entry point for NumPy)."""
    if backend.name == "torch":
        z = logits.detach().clone().requires_grad_()
        value = fn(z)
        (grad,) = __import__("torch").autograd.grad(value, z)
        return backend.to_numpy(value.detach()), backend.to_numpy(grad)
    import jax

    value, grad = jax.jit(jax.value_and_grad(fn))(logits)
    return np.asarray(value, dtype=np.float64), np.asarray(grad, dtype=np.float64)


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_huge_and_minus_inf_logits_give_finite_exact_results(name, regularizer):
    backend = make_backend(name)
    logits = np.full((2, 3, 6, 7), -1e4, dtype=np.float32)
    logits[..., 2, 5] = 1e4
    logits[0, 0, :, :3] = -np.inf  # masked pixels
    z = backend.asarray(logits, "float32")
    coords = backend.to_numpy(dsnt_core.soft_argmax(z))
    assert_close(coords, np.broadcast_to([(2 * 5 + 1 - 7) / 7, (2 * 2 + 1 - 6) / 6], coords.shape), atol=1e-6)
    target = backend.asarray(np.zeros((2, 3, 2)), "float32")
    value, grad = value_and_grad(backend, lambda a: dsnt_core.dsnt_loss(a, target, regularizer=regularizer), z)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (grad[0, 0, :, :3] == 0).all()


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_minus_inf_pixels_are_excluded_exactly(regularizer):
    rng = np.random.default_rng(2)
    visible = rng.normal(size=(2, 6, 4))
    padded = np.concatenate([visible, np.full((2, 6, 3), -np.inf)], axis=-1)
    coords_visible = dsnt_core.soft_argmax(visible)
    coords_padded = dsnt_core.soft_argmax(padded)
    # x is re-expressed on the wider grid: pixel j has centre (2j + 1 - n) / n.
    pixels = dsnt_core.normalized_to_pixel(coords_visible, (6, 4))
    assert_close(coords_padded, dsnt_core.pixel_to_normalized(pixels, (6, 7)), atol=1e-12)
    _, grad = dsnt_core.dsnt_loss_value_and_grad(padded, np.zeros((2, 2)), regularizer=regularizer)
    assert np.isfinite(grad).all() and (grad[..., 4:] == 0).all()


@pytest.mark.parametrize("name", ["numpy", *AUTODIFF])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_an_all_minus_inf_heatmap_is_uniform_with_zero_gradient(name, regularizer):
    backend = make_backend(name)
    logits = np.zeros((2, 5, 5))
    logits[1] = -np.inf
    z, t = backend.asarray(logits), backend.asarray(np.full((2, 2), 0.3))
    coords = backend.to_numpy(dsnt_core.soft_argmax(z))
    assert_close(coords[1], [0.0, 0.0])
    heatmaps = backend.to_numpy(dsnt_core.flat_softmax(z))
    assert_close(heatmaps[1], np.full((5, 5), 1 / 25))
    fused = backend.to_numpy(dsnt_core.dsnt_loss(z, t, regularizer=regularizer))
    composed = backend.to_numpy(composed_dsnt_loss(z, t, regularizer=regularizer))
    assert_close(fused, composed, rtol=1e-12)
    if name == "numpy":
        _, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, regularizer=regularizer)
    else:
        _, grad = value_and_grad(backend, lambda a: dsnt_core.dsnt_loss(a, t, regularizer=regularizer), z)
    assert np.isfinite(grad).all() and (grad[1] == 0).all()


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_regularizers_of_heatmaps_with_exact_zeros_are_finite(name, dtype):
    backend = make_backend(name)
    one_hot = np.zeros((2, 8, 8))
    one_hot[:, 3, 4] = 1.0
    target = backend.asarray(np.zeros((2, 2)), dtype)
    for regularizer in (dsnt_core.kl_regularizer, dsnt_core.js_regularizer):

        def total(h, regularizer=regularizer):
            return backend.xp.sum(regularizer(h, target, 0.5))

        value, grad = value_and_grad(backend, total, backend.asarray(one_hot, dtype))
        assert np.isfinite(value) and np.isfinite(grad).all()
    # Gaussians far from the target underflow to exact zeros in 16 bits: still finite.
    far = dsnt_core.gaussian_heatmaps(backend.asarray(np.full((2, 2), 0.9), dtype), (8, 8), 0.3)
    assert np.isfinite(backend.to_numpy(dsnt_core.js_regularizer(far, target, 0.3))).all()
    assert np.isfinite(backend.to_numpy(dsnt_core.kl_regularizer(far, target, 0.3))).all()


TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.mark.parametrize("name", AUTODIFF)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@given(data=logits_arrays(ndim=2, min_side=2, max_side=12))
def test_16_bit_inputs_compute_in_float32_and_keep_their_dtype(name, dtype, data):
    backend = make_backend(name)
    logits, _ = data
    z = backend.asarray(logits, dtype)
    quantized = backend.to_numpy(z)  # the exact values the 16-bit array holds
    # A target outside the grid keeps away from the kink of the Euclidean norm at distance 0.
    target = np.broadcast_to(np.asarray([1.5, -1.5]), (*logits.shape[:-2], 2)).copy()
    coords = backend.jit(lambda a: dsnt_core.soft_argmax(a))(z)
    loss = backend.jit(lambda a: dsnt_core.dsnt_loss(a, backend.asarray(target, dtype)))(z)
    assert str(coords.dtype).endswith(dtype) and str(loss.dtype).endswith(dtype)
    reference_coords = dsnt_core.soft_argmax(quantized)
    reference_loss = dsnt_core.dsnt_loss(quantized, target)
    tol = TOLERANCE[dtype]
    assert_close(backend.to_numpy(coords), reference_coords, rtol=tol, atol=tol)
    assert_close(backend.to_numpy(loss), reference_loss, rtol=tol, atol=tol)
    _, grad = value_and_grad(backend, lambda a: dsnt_core.dsnt_loss(a, backend.asarray(target, dtype)), z)
    _, reference_grad = dsnt_core.dsnt_loss_value_and_grad(quantized, target)
    assert_close(grad, reference_grad, rtol=4 * tol, atol=4 * tol * np.abs(reference_grad).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64_keep_their_dtype(backend, dtype):
    z = backend.asarray(np.zeros((2, 4, 4)), dtype)
    t = backend.asarray(np.zeros((2, 2)), dtype)
    for result in (
        dsnt_core.soft_argmax(z),
        dsnt_core.dsnt_loss(z, t),
        dsnt_core.dsnt_loss_value_and_grad(z, t)[1],
        dsnt_core.gaussian_heatmaps(t, (4, 4), 1.0),
        dsnt_core.js_regularizer(dsnt_core.flat_softmax(z), t, 1.0),
    ):
        assert str(result.dtype).endswith(dtype)


def test_jax_without_x64_computes_in_float32():
    pytest.importorskip("jax")
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
    env = {**__import__("os").environ, "JAX_ENABLE_X64": "0"}
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
        coords = backend.to_numpy(dsnt_core.soft_argmax(z, ndim=ndim))
        loss, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, ndim=ndim, regularizer=regularizer)
        assert coords.shape == target_np.shape, label
        assert np.isfinite(backend.to_numpy(loss)) and np.isfinite(backend.to_numpy(grad)).all(), label
        assert_close(
            backend.to_numpy(loss),
            backend.to_numpy(composed_dsnt_loss(z, t, ndim=ndim, regularizer=regularizer)),
            rtol=1e-10,
            atol=1e-12,
        )
    one_by_one = backend.to_numpy(dsnt_core.soft_argmax(backend.asarray(np.zeros((3, 1, 1)))))
    assert_close(one_by_one, np.zeros((3, 2)))


def test_512_by_512_heatmaps(backend):
    logits = np.full((2, 512, 512), -30.0, dtype=np.float32)
    logits[0, 100, 400] = 30.0
    logits[1, 511, 0] = 30.0
    z = backend.asarray(logits, "float32")
    coords = backend.to_numpy(dsnt_core.soft_argmax(z))
    expected = np.asarray([[(801 - 512) / 512, (201 - 512) / 512], [(1 - 512) / 512, (1023 - 512) / 512]])
    assert_close(coords, expected, atol=1e-5)
    _, grad = dsnt_core.dsnt_loss_value_and_grad(z, backend.asarray(np.zeros((2, 2)), "float32"))
    assert np.isfinite(backend.to_numpy(grad)).all()


@pytest.mark.parametrize("regularizer", ["kl", "js"])
def test_divergence_gradients_stay_finite_at_minus_inf_logits_with_large_weights(regularizer):
    """``coef * log P`` at ``P = 0``: a floor at the most negative float overflowed for coef > 1."""
    logits = np.random.default_rng(5).normal(size=(1, 1, 6, 6))
    logits[0, 0, :2] = -np.inf
    target = np.asarray([[[0.2, -0.1]]])
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, regularizer=regularizer, reg_weight=5.0)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert np.all(grad[0, 0, :2] == 0.0)
    finite = logits.copy()
    finite[0, 0, :2] = -1e3  # P underflows to 0 there too: the same gradient elsewhere
    _, grad_finite = dsnt_core.dsnt_loss_value_and_grad(finite, target, regularizer=regularizer, reg_weight=5.0)
    np.testing.assert_allclose(grad, grad_finite, rtol=1e-10, atol=1e-14)
