"""The Flax modules of ``dsnt_jax.flax_modules``: DSNTHead and DSNTLoss under jit and grad."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax is not installed (pip install 'dsnt-core[jax]')")
pytest.importorskip("flax", reason="flax is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from dsnt_jax import flax_modules  # noqa: E402
from dsnt_jax.flax_modules import DSNTHead, DSNTLoss  # noqa: E402

import dsnt_core  # noqa: E402
from dsnt_core.composed import composed_dsnt_loss  # noqa: E402

pytestmark = pytest.mark.backends("jax")

RNG = np.random.default_rng(5)


def test_head_on_logits_under_jit(backend):
    logits = backend.asarray(RNG.normal(size=(2, 3, 6, 7)))
    head = DSNTHead(return_heatmaps=True, return_confidence=True, confidence="spread")
    params = head.init(jax.random.key(0), logits)
    assert params == {} or not jax.tree_util.tree_leaves(params)  # no convolution, no parameters
    coords, heatmaps, scores = jax.jit(head.apply)(params, logits)

    def written_out(z):
        p = dsnt_core.flat_softmax(z)
        return dsnt_core.dsnt(p), p, dsnt_core.heatmap_confidence(p, method="spread")

    for got, expected in zip((coords, heatmaps, scores), jax.jit(written_out)(logits)):
        backend.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert isinstance(jax.jit(DSNTHead().apply)({}, logits), jax.Array)


def _head_with_conv(ndim=2):
    head = DSNTHead(num_points=3, ndim=ndim)
    features = jnp.asarray(RNG.normal(size=(2, *(5, 6, 4)[:ndim], 8)))  # channels-last
    params = head.init(jax.random.key(1), features)
    return head, params, features


def _written_out(params, features, ndim=2):
    """The head by hand: the 1x1 convolution as an einsum over the channels, then soft_argmax."""
    conv = params["params"]["to_logits"]
    kernel = conv["kernel"].reshape(conv["kernel"].shape[-2:])
    logits = jnp.einsum("...c,cp->...p", features, kernel) + conv["bias"]
    logits = jnp.moveaxis(logits, -1, 1)
    return logits, dsnt_core.dsnt(dsnt_core.flat_softmax(logits, ndim=ndim), ndim=ndim)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_head_with_convolution_matches_the_written_out_form(backend, ndim):
    head, params, features = _head_with_conv(ndim)
    coords = jax.jit(head.apply)(params, features)
    _, expected = _written_out(params, features, ndim)
    backend.assert_close(coords, expected, rtol=1e-10, atol=1e-12)
    assert coords.shape == (2, 3, ndim)


def test_training_step_gradients_equal_autodiff_of_the_composition(backend):
    import flax.linen as nn

    class Model(nn.Module):
        """A 1x1 convolution to logits, then the DSNT loss: a training step of a Flax user."""

        @nn.compact
        def __call__(self, x, target, mask):
            logits = jnp.moveaxis(nn.Conv(3, (1, 1), name="to_logits")(x), -1, 1)
            return DSNTLoss(sigma=1.5, regularizer="js", reg_weight=0.7)(logits, target, mask)

    head, params, features = _head_with_conv()
    target = jnp.asarray(RNG.uniform(-0.5, 0.5, size=(2, 3, 2)))
    mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])

    def composed(p):
        logits, _ = _written_out(p, features)
        return composed_dsnt_loss(logits, target, mask=mask, sigma=1.5, regularizer="js", reg_weight=0.7)

    step = jax.jit(jax.value_and_grad(lambda p: Model().apply(p, features, target, mask)))
    value, grads = step(params)
    expected_value, expected_grads = jax.jit(jax.value_and_grad(composed))(params)
    backend.assert_close(value, expected_value, rtol=1e-12)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
        backend.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the head's coordinates, differentiated with respect to its parameters
    cotangent = jnp.asarray(RNG.normal(size=(2, 3, 2)))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(cotangent * head.apply(p, features))))(params)
    expected_grads = jax.grad(lambda p: jnp.sum(cotangent * _written_out(p, features)[1]))(params)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
        backend.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_loss_module_is_dsnt_loss_and_differentiates_under_jit(backend):
    logits = backend.asarray(RNG.normal(size=(2, 3, 6, 7)))
    target = backend.asarray(RNG.uniform(-0.5, 0.5, size=(2, 3, 2)))
    for regularizer in ("js", "var"):
        loss = DSNTLoss(sigma=1.2, regularizer=regularizer, temperature=0.5)
        value, grad = jax.jit(jax.value_and_grad(lambda z, loss=loss: loss.apply({}, z, target)))(logits)
        options = dict(sigma=1.2, regularizer=regularizer, temperature=0.5)
        composed = jax.jit(jax.value_and_grad(lambda z, options=options: composed_dsnt_loss(z, target, **options)))
        expected_value, expected = composed(logits)
        backend.assert_close(value, expected_value, rtol=1e-12)
        backend.assert_close(grad, expected, rtol=1e-8, atol=1e-12)


def test_pixel_units(backend):
    logits = backend.asarray(RNG.normal(scale=3.0, size=(2, 3, 6, 7)))

    def written_out(z):
        return jnp.sum(dsnt_core.dsnt(dsnt_core.flat_softmax(z), units="pixels") ** 2)

    value, grad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(DSNTHead(units="pixels").apply({}, z) ** 2)))(logits)
    expected_value, reference = jax.jit(jax.value_and_grad(written_out))(logits)
    backend.assert_close(value, expected_value, rtol=1e-12)
    backend.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    peaked = jnp.full((5 * 6, 5, 6), -1e4, dtype=jnp.bfloat16)
    index = np.arange(30)
    peaked = peaked.at[index, index // 6, index % 6].set(0.0)
    low = jax.jit(DSNTHead(units="pixels").apply)({}, peaked)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(low, dtype=np.float64), np.stack([index % 6, index // 6], -1))


def test_vmap_over_a_batch(backend):
    logits = backend.asarray(RNG.normal(size=(4, 3, 6, 7)))
    head = DSNTHead(return_confidence=True)
    coords, scores = jax.jit(jax.vmap(lambda z: head.apply({}, z)))(logits)
    expected_coords, expected_scores = jax.jit(head.apply)({}, logits)
    backend.assert_close(coords, expected_coords, rtol=1e-12)
    backend.assert_close(scores, expected_scores, rtol=1e-12)


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"ndim must be 1, 2 or 3, got 4"):
        DSNTHead(ndim=4)
    with pytest.raises(ValueError, match=r"units must be one of"):
        DSNTHead(units="px")
    with pytest.raises(ValueError, match=r"confidence must be one of"):
        DSNTHead(confidence="max")
    with pytest.raises(ValueError, match=r"regularizer must be one of"):
        DSNTLoss(regularizer="l2")


@pytest.mark.parametrize("name", ["DSNTHead", "DSNTLoss", "DSNTHead.__call__", "DSNTLoss.__call__"])
def test_numpydoc(name):
    """The modules are not in a package's ``__all__`` that tests/test_static_checks.py validates: checked here."""
    from numpydoc.validate import validate

    excluded = {"ES01", "SA01"} | ({"EX01"} if "." in name else set())
    errors = [e for e in validate(f"dsnt_jax.flax_modules.{name}")["errors"] if e[0] not in excluded]
    assert not errors, errors


def test_docstring_examples_run():
    result = doctest.testmod(flax_modules, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
