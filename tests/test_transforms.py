"""Every public function under jax.jit, torch.compile(fullgraph=True) and the vmap transforms."""

from __future__ import annotations

import numpy as np
import pytest
from _support import ARRAY_FUNCTIONS

import dsnt_core

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(size=(2, 3, 6, 5))
TARGET = RNG.uniform(-0.8, 0.8, size=(2, 3, 2))
MASK = np.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def _device(z):
    """The logits' device for torch (whose default stays the CPU); ``None`` for JAX (the fixture sets its default)."""
    return z.device if type(z).__module__.startswith("torch") else None


# Each entry maps (logits, target, mask, namespace) to one public function's result.
PUBLIC_CALLS = {
    "normalize_heatmaps": lambda z, t, m, xp: dsnt_core.normalize_heatmaps(z, method="sigmoid"),
    "flat_softmax": lambda z, t, m, xp: dsnt_core.flat_softmax(z, temperature=0.5),
    "dsnt": lambda z, t, m, xp: dsnt_core.dsnt(dsnt_core.flat_softmax(z)),
    "heatmap_variance": lambda z, t, m, xp: dsnt_core.heatmap_variance(dsnt_core.flat_softmax(z)),
    "soft_argmax": lambda z, t, m, xp: dsnt_core.soft_argmax(z),
    "soft_argmax_vjp": lambda z, t, m, xp: dsnt_core.soft_argmax_vjp(z, t),
    "gaussian_heatmaps": lambda z, t, m, xp: dsnt_core.gaussian_heatmaps(t, (6, 5), 1.0),
    "euclidean_loss": lambda z, t, m, xp: dsnt_core.euclidean_loss(dsnt_core.soft_argmax(z), t),
    "average_loss": lambda z, t, m, xp: dsnt_core.average_loss(xp.sum(z, axis=(-1, -2)), mask=m),
    "variance_regularizer": lambda z, t, m, xp: dsnt_core.variance_regularizer(dsnt_core.flat_softmax(z), 1.0),
    "kl_regularizer": lambda z, t, m, xp: dsnt_core.kl_regularizer(dsnt_core.flat_softmax(z), t, 1.0),
    "js_regularizer": lambda z, t, m, xp: dsnt_core.js_regularizer(dsnt_core.flat_softmax(z), t, 1.0),
    "dsnt_loss": lambda z, t, m, xp: dsnt_core.dsnt_loss(z, t, mask=m),
    "dsnt_loss_value_and_grad": lambda z, t, m, xp: dsnt_core.dsnt_loss_value_and_grad(z, t, mask=m)[1],
    "pixel_to_normalized": lambda z, t, m, xp: dsnt_core.pixel_to_normalized(t, (6, 5)),
    "normalized_to_pixel": lambda z, t, m, xp: dsnt_core.normalized_to_pixel(t, (6, 5)),
    "normalized_linspace": lambda z, t, m, xp: (
        dsnt_core.normalized_linspace(5, xp=xp, dtype=z.dtype, device=_device(z)) + z[0, 0, 0]
    ),
    "pixel_linspace": lambda z, t, m, xp: (
        dsnt_core.pixel_linspace(5, xp=xp, dtype=z.dtype, device=_device(z)) + z[0, 0, 0]
    ),
    "linear_expectation": lambda z, t, m, xp: dsnt_core.linear_expectation(
        dsnt_core.flat_softmax(z),
        [
            dsnt_core.pixel_linspace(5, xp=xp, dtype=z.dtype, device=_device(z)),
            dsnt_core.pixel_linspace(6, xp=xp, dtype=z.dtype, device=_device(z)),
        ],
    ),
    "heatmap_confidence": lambda z, t, m, xp: dsnt_core.heatmap_confidence(dsnt_core.flat_softmax(z), method="spread"),
    "sharpen_heatmaps": lambda z, t, m, xp: dsnt_core.sharpen_heatmaps(dsnt_core.flat_softmax(z), 2.0),
    "l1_loss": lambda z, t, m, xp: dsnt_core.l1_loss(dsnt_core.soft_argmax(z), t),
    "mse_loss": lambda z, t, m, xp: dsnt_core.mse_loss(dsnt_core.soft_argmax(z), t),
}


def _inputs(backend):
    return backend.asarray(LOGITS), backend.asarray(TARGET), backend.asarray(MASK)


def test_every_public_function_is_covered():
    assert set(PUBLIC_CALLS) == set(ARRAY_FUNCTIONS)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_under_jax_jit(backend, name):
    call = PUBLIC_CALLS[name]
    args = _inputs(backend)
    eager = call(*args, backend.xp)
    jitted = backend.jit(lambda z, t, m: call(z, t, m, backend.xp))(*args)
    backend.assert_close(jitted, eager, rtol=1e-12, atol=1e-14)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_under_torch_compile_fullgraph(backend, name):
    torch = backend.library
    torch._dynamo.reset()
    call = PUBLIC_CALLS[name]
    args = _inputs(backend)
    compiled = torch.compile(lambda z, t, m: call(z, t, m, backend.xp), fullgraph=True, backend="aot_eager")
    backend.assert_close(compiled(*args), call(*args, backend.xp), rtol=1e-12, atol=1e-14)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("regularizer", ["js", "var"])
def test_fused_training_step_under_torch_compile_with_inductor(backend, regularizer):
    torch = backend.library
    torch._dynamo.reset()
    logits, target, _ = _inputs(backend)

    def loss_fn(z):
        return dsnt_core.dsnt_loss(z, target, regularizer=regularizer)

    loss, grad = backend.value_and_grad(torch.compile(loss_fn, fullgraph=True), logits)
    expected_loss, expected_grad = backend.value_and_grad(loss_fn, logits)
    backend.assert_close(loss, expected_loss, rtol=1e-12)
    backend.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.backends("torch")
def test_torch_func_grad_and_vmap(backend):
    from torch.func import grad, vmap

    logits, target, _ = _inputs(backend)
    per_sample = vmap(grad(lambda z, t: dsnt_core.dsnt_loss(z, t)))(logits, target)
    for i in range(logits.shape[0]):
        _, expected = backend.value_and_grad(lambda z, i=i: dsnt_core.dsnt_loss(z, target[i]), logits[i])
        backend.assert_close(per_sample[i], expected, rtol=1e-10, atol=1e-14)
    coords = vmap(lambda z: dsnt_core.soft_argmax(z))(logits)
    backend.assert_close(coords, dsnt_core.soft_argmax(logits), rtol=1e-12)


@pytest.mark.backends("jax")
def test_jax_vmap_grad_and_value_and_grad(backend):
    import jax

    logits, target, _ = _inputs(backend)
    per_sample = jax.jit(jax.vmap(jax.grad(lambda z, t: dsnt_core.dsnt_loss(z, t))))(logits, target)
    value, whole = backend.value_and_grad(lambda z: dsnt_core.dsnt_loss(z[:1], target[:1]), logits)
    backend.assert_close(per_sample[0], whole[0], rtol=1e-10, atol=1e-14)
    backend.assert_close(whole[1:], np.zeros((1, 3, 6, 5)), like=logits)  # the other sample takes no part
    coords = jax.vmap(lambda z: dsnt_core.soft_argmax(z))(logits)
    backend.assert_close(coords, dsnt_core.soft_argmax(logits), rtol=1e-12)
    assert np.isfinite(float(value))
