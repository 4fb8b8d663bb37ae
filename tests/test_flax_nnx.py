"""The Flax NNX modules of ``dsnt_jax.nnx_modules``: DSNTHead and DSNTLoss under nnx.jit and nnx.grad."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax is not installed (pip install 'dsnt-core[jax]')")
pytest.importorskip("flax", reason="flax is not installed (pip install 'dsnt-core[flax]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from dsnt_jax.nnx_modules import DSNTHead, DSNTLoss  # noqa: E402
from flax import nnx  # noqa: E402

import dsnt_core  # noqa: E402
from dsnt_core.composed import composed_dsnt_loss  # noqa: E402

pytestmark = pytest.mark.backends("jax")

RNG = np.random.default_rng(11)


def test_head_on_logits_matches_the_written_out_form(backend):
    logits = backend.asarray(RNG.normal(size=(2, 3, 6, 7)))
    head = DSNTHead(return_heatmaps=True, return_confidence=True, confidence="entropy", units="pixels")
    coords, heatmaps, scores = nnx.jit(lambda model, z: model(z))(head, logits)
    p = dsnt_core.flat_softmax(logits)
    for got, expected in zip(
        (coords, heatmaps, scores),
        (dsnt_core.dsnt(p, units="pixels"), p, dsnt_core.heatmap_confidence(p, method="entropy")),
    ):
        backend.assert_close(got, backend.to_numpy(expected), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_head_with_convolution_and_learnt_temperature_trains_like_the_written_out_head(backend, ndim):
    head = DSNTHead(4, 3, ndim=ndim, temperature=1.5, learn_temperature=True, rngs=nnx.Rngs(0))
    features = backend.asarray(RNG.normal(size=(2, *(5, 6, 4)[:ndim], 4)))  # channels-last
    weights = backend.asarray(RNG.normal(size=(2, 3, ndim)))
    grads = nnx.grad(lambda model: jnp.sum(model(features) * weights))(head)

    kernel = head.to_logits.kernel.value.reshape(4, 3)
    bias = head.to_logits.bias.value

    def written_out(kernel, bias, log_t):
        logits = jnp.moveaxis(jnp.einsum("...c,cp->...p", features, kernel) + bias, -1, 1)
        scaled = logits / jnp.reshape(jnp.exp(log_t), (3,) + (1,) * ndim)
        return jnp.sum(dsnt_core.dsnt(dsnt_core.flat_softmax(scaled, ndim=ndim), ndim=ndim) * weights)

    expected = jax.grad(written_out, argnums=(0, 1, 2))(kernel, bias, head.log_temperature.value)
    got = (grads.to_logits.kernel.value.reshape(4, 3), grads.to_logits.bias.value, grads.log_temperature.value)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-12)
    np.testing.assert_allclose(np.asarray(head.current_temperature()), 1.5)


@pytest.mark.parametrize("distance", ["euclidean", "l1", "mse"])
def test_loss_is_dsnt_loss_under_jit_and_grad(backend, distance):
    logits = backend.asarray(RNG.normal(size=(2, 3, 8, 8)))
    target = backend.asarray(RNG.uniform(-0.7, 0.7, size=(2, 3, 2)))
    loss = DSNTLoss(sigma=1.5, regularizer="kl", reg_weight=0.5, distance=distance)
    value, grad = jax.jit(jax.value_and_grad(lambda z: loss(z, target)))(logits)
    options = dict(sigma=1.5, regularizer="kl", reg_weight=0.5, distance=distance)
    expected_value, expected_grad = jax.value_and_grad(lambda z: composed_dsnt_loss(z, target, **options))(logits)
    backend.assert_close(value, backend.to_numpy(expected_value), atol=1e-12)
    backend.assert_close(grad, backend.to_numpy(expected_grad), atol=1e-12)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="in_features and num_points must be given together, got 4 and None"):
        DSNTHead(4)
    with pytest.raises(ValueError, match=r"rngs \(an nnx.Rngs\) must be given"):
        DSNTHead(4, 3)
    with pytest.raises(ValueError, match=r"units must be one of \['normalized', 'pixels'\], got 'px'"):
        DSNTHead(units="px")
    with pytest.raises(ValueError, match="temperature must be positive and finite, got 0"):
        DSNTHead(temperature=0.0)
    with pytest.raises(ValueError, match=r"distance must be one of \['euclidean', 'l1', 'mse'\], got 'l2'"):
        DSNTLoss(distance="l2")
