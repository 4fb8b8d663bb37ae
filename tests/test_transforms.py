"""Every public function under jax.jit, torch.compile(fullgraph=True) and the vmap transforms."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close

import dsnt_core

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(size=(2, 3, 6, 5))
TARGET = RNG.uniform(-0.8, 0.8, size=(2, 3, 2))
MASK = np.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])

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
    "normalized_linspace": lambda z, t, m, xp: dsnt_core.normalized_linspace(5, xp=xp, dtype=z.dtype) + z[0, 0, 0],
}


def test_every_public_function_is_covered():
    assert set(PUBLIC_CALLS) == set(dsnt_core.__all__)


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_under_jax_jit(name):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    call = PUBLIC_CALLS[name]
    args = (jnp.asarray(LOGITS), jnp.asarray(TARGET), jnp.asarray(MASK))
    eager = call(*args, jnp)
    jitted = jax.jit(lambda z, t, m: call(z, t, m, jnp))(*args)
    assert_close(np.asarray(jitted), np.asarray(eager), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_under_torch_compile_fullgraph(name):
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    torch._dynamo.reset()
    call = PUBLIC_CALLS[name]
    args = (torch.from_numpy(LOGITS), torch.from_numpy(TARGET), torch.from_numpy(MASK))
    compiled = torch.compile(lambda z, t, m: call(z, t, m, xp), fullgraph=True, backend="aot_eager")
    assert_close(compiled(*args).numpy(), call(*args, xp).numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("regularizer", ["js", "var"])
def test_fused_training_step_under_torch_compile_with_inductor(regularizer):
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    target = torch.from_numpy(TARGET)

    def step(z):
        loss = dsnt_core.dsnt_loss(z, target, regularizer=regularizer)
        (grad,) = torch.autograd.grad(loss, z)
        return loss, grad

    compiled_loss = torch.compile(lambda z: dsnt_core.dsnt_loss(z, target, regularizer=regularizer), fullgraph=True)
    z = torch.from_numpy(LOGITS).requires_grad_()
    loss = compiled_loss(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected_loss, expected_grad = step(torch.from_numpy(LOGITS).requires_grad_())
    assert_close(loss.detach().numpy(), expected_loss.detach().numpy(), rtol=1e-12)
    assert_close(grad.numpy(), expected_grad.numpy(), rtol=1e-10, atol=1e-14)


def test_torch_func_grad_and_vmap():
    torch = pytest.importorskip("torch")
    from torch.func import grad, vmap

    logits, target = torch.from_numpy(LOGITS), torch.from_numpy(TARGET)
    per_sample = vmap(grad(lambda z, t: dsnt_core.dsnt_loss(z, t)))(logits, target)
    for i in range(logits.shape[0]):
        z = logits[i].clone().requires_grad_()
        (expected,) = torch.autograd.grad(dsnt_core.dsnt_loss(z, target[i]), z)
        assert_close(per_sample[i].numpy(), expected.numpy(), rtol=1e-10, atol=1e-14)
    coords = vmap(lambda z: dsnt_core.soft_argmax(z))(logits)
    assert_close(coords.numpy(), dsnt_core.soft_argmax(logits).numpy(), rtol=1e-12)


def test_jax_vmap_grad_and_value_and_grad():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    logits, target = jnp.asarray(LOGITS), jnp.asarray(TARGET)
    per_sample = jax.jit(jax.vmap(jax.grad(lambda z, t: dsnt_core.dsnt_loss(z, t))))(logits, target)
    value, whole = jax.value_and_grad(lambda z: dsnt_core.dsnt_loss(z[:1], target[:1]))(logits)
    assert_close(np.asarray(per_sample[0]), np.asarray(whole[0]), rtol=1e-10, atol=1e-14)
    coords = jax.vmap(lambda z: dsnt_core.soft_argmax(z))(logits)
    assert_close(np.asarray(coords), np.asarray(dsnt_core.soft_argmax(logits)), rtol=1e-12)
    assert np.isfinite(float(value))


def test_opt_in_compiled_kernels_give_the_eager_results():
    torch = pytest.importorskip("torch")
    import dsnt_torch

    target = torch.from_numpy(TARGET)

    def loss_and_grads():
        z = torch.from_numpy(LOGITS).requires_grad_()
        loss = dsnt_core.dsnt_loss(z, target, regularizer="js")
        coords = dsnt_core.soft_argmax(z)
        (grad,) = torch.autograd.grad(loss + coords.sum(), z)
        return loss.detach().numpy(), grad.numpy()

    eager = loss_and_grads()
    dsnt_torch.use_compiled_kernels(True)
    try:
        compiled = loss_and_grads()
    finally:
        dsnt_torch.use_compiled_kernels(False)
    assert_close(compiled[0], eager[0], rtol=1e-12)
    assert_close(compiled[1], eager[1], rtol=1e-9, atol=1e-14)
