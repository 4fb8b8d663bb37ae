"""The fused gradient rules against autodiff of the composition and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from _support import (
    AUTODIFF,
    NO_AUTODIFF,
    REGULARIZERS,
    assert_within_the_memory_budget,
    make_backend,
    saved_tensor_bytes,
)
from hypothesis import given
from hypothesis import strategies as st

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss


@st.composite
def loss_case(draw):
    """float64 logits, targets, an optional float mask and the loss options."""
    ndim = draw(st.integers(1, 3))
    leading = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    spatial = tuple(draw(st.lists(st.integers(2, 7), min_size=ndim, max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    logits = rng.normal(scale=draw(st.floats(0.1, 4.0)), size=(*leading, *spatial))
    target = rng.uniform(-0.9, 0.9, size=(*leading, ndim))
    mask = (rng.uniform(size=leading) < 0.6).astype(np.float64) if draw(st.booleans()) else None
    options = dict(
        ndim=ndim,
        regularizer=draw(st.sampled_from(REGULARIZERS)),
        sigma=draw(st.floats(0.5, 2.5)),
        reg_weight=draw(st.floats(0.0, 2.0)),
        temperature=draw(st.sampled_from([0.5, 1.0, 2.0])),
    )
    return logits, target, mask, options


def _arrays(backend, logits, target, mask):
    return backend.asarray(logits), backend.asarray(target), None if mask is None else backend.asarray(mask)


@pytest.mark.backends(*AUTODIFF)
@given(case=loss_case())
def test_fused_loss_gradient_equals_autodiff_of_the_composition(backend, case):
    logits, target, mask, options = case
    z, t, m = _arrays(backend, logits, target, mask)
    fused = backend.value_and_grad(lambda a: dsnt_core.dsnt_loss(a, t, mask=m, **options), z)
    composed = backend.value_and_grad(lambda a: composed_dsnt_loss(a, t, mask=m, **options), z)
    backend.assert_close(fused[0], composed[0])
    backend.assert_close(fused[1], composed[1], like=z, rtol=1e-8, atol=1e-12)
    if backend.name == "jax":  # forward mode goes through the JVP rule itself
        import jax

        forward = jax.jit(jax.jacfwd(lambda a: dsnt_core.dsnt_loss(a, t, mask=m, **options)))(z)
        backend.assert_close(forward, composed[1], rtol=1e-8, atol=1e-12)


@pytest.mark.backends("numpy")
@given(case=loss_case())
def test_loss_gradient_matches_central_finite_differences(backend, case):
    logits, target, mask, options = case
    z, t, m = _arrays(backend, logits, target, mask)
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, mask=m, **options)
    backend.assert_close(loss, dsnt_core.dsnt_loss(z, t, mask=m, **options), rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        direction = rng.normal(size=logits.shape)
        plus = dsnt_core.dsnt_loss(backend.asarray(logits + h * direction), t, mask=m, **options)
        minus = dsnt_core.dsnt_loss(backend.asarray(logits - h * direction), t, mask=m, **options)
        numeric = (plus - minus) / (2 * h)
        backend.assert_close(backend.xp.sum(grad * backend.asarray(direction)), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.backends(*NO_AUTODIFF)
@given(case=loss_case())
def test_each_heatmap_gradient_sums_to_zero(backend, case):
    logits, target, mask, options = case
    z, t, m = _arrays(backend, logits, target, mask)
    spatial = tuple(range(-options["ndim"], 0))
    _, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, mask=m, **options)
    coords_grad = dsnt_core.soft_argmax_vjp(z, t, ndim=options["ndim"])
    zeros = np.zeros(target.shape[:-1])
    backend.assert_close(backend.xp.sum(grad, axis=spatial), zeros, atol=1e-12)
    backend.assert_close(backend.xp.sum(coords_grad, axis=spatial), zeros, atol=1e-12)


@pytest.mark.backends(*NO_AUTODIFF)
@given(case=loss_case())
def test_explicit_gradient_entry_points_equal_framework_gradients(backend, case):
    reference = make_backend("torch")  # the framework whose autograd gives the expected gradients
    logits, target, mask, options = case
    z, t, m = _arrays(backend, logits, target, mask)
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, mask=m, **options)
    tz, tt, tm = _arrays(reference, logits, target, mask)
    expected = reference.value_and_grad(lambda a: dsnt_core.dsnt_loss(a, tt, mask=tm, **options), tz)
    backend.assert_close(loss, expected[0], like=z)
    backend.assert_close(grad, expected[1], like=z, rtol=1e-8, atol=1e-12)
    cotangent = np.random.default_rng(1).normal(size=target.shape)
    coords_options = dict(ndim=options["ndim"], temperature=options["temperature"])
    vjp = dsnt_core.soft_argmax_vjp(z, backend.asarray(cotangent), **coords_options)
    expected_vjp = reference.value_and_grad(
        lambda a: dsnt_core.soft_argmax(a, **coords_options), tz, cotangent=reference.asarray(cotangent)
    )[1]
    backend.assert_close(vjp, expected_vjp, like=z, rtol=1e-8, atol=1e-12)


@pytest.mark.backends("jax")
@given(case=loss_case())
def test_soft_argmax_jacobians_equal_autodiff_of_the_composition(backend, case):
    import jax

    logits, _, _, options = case
    ndim, temperature = options["ndim"], options["temperature"]
    z = backend.asarray(logits)

    def fused(a):
        return dsnt_core.soft_argmax(a, ndim=ndim, temperature=temperature)

    def composed(a):
        return dsnt_core.dsnt(dsnt_core.flat_softmax(a, ndim=ndim, temperature=temperature), ndim=ndim)

    expected = jax.jit(jax.jacrev(composed))(z)
    backend.assert_close(jax.jit(jax.jacrev(fused))(z), expected, rtol=1e-8, atol=1e-12)
    backend.assert_close(jax.jit(jax.jacfwd(fused))(z), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.backends(*AUTODIFF)
def test_second_derivatives_equal_the_composition(backend):
    """A gradient penalty differentiates the gradient: PyTorch's double backward, JAX's grad of grad."""
    rng = np.random.default_rng(5)
    logits = backend.asarray(rng.normal(size=(2, 3, 6, 5)))
    target = backend.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)))
    for regularizer in REGULARIZERS:
        options = dict(regularizer=regularizer)
        fused = backend.penalty_gradient(lambda z, o=options: dsnt_core.dsnt_loss(z, target, **o), logits)
        composed = backend.penalty_gradient(lambda z, o=options: composed_dsnt_loss(z, target, **o), logits)
        backend.assert_close(fused, composed, like=logits, rtol=1e-7, atol=1e-12, err_msg=str(regularizer))


@pytest.mark.backends(*AUTODIFF)
def test_target_gradients_are_exact_when_asked_for(backend):
    rng = np.random.default_rng(6)
    logits, target = backend.asarray(rng.normal(size=(2, 3, 6, 5))), backend.asarray(rng.uniform(-0.8, 0.8, (2, 3, 2)))
    fused = backend.value_and_grad(lambda t: dsnt_core.dsnt_loss(logits, t), target)
    composed = backend.value_and_grad(lambda t: composed_dsnt_loss(logits, t), target)
    backend.assert_close(fused[1], composed[1], like=target)
    backend.assert_close(fused[0], composed[0])


# ----------------------------------------------------------------------------- memory


@pytest.mark.backends("torch")
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_torch_keeps_at_most_the_logits_bytes_for_backward(backend, regularizer):
    rng = np.random.default_rng(7)
    logits = backend.asarray(rng.normal(size=(4, 5, 16, 16)), "float32").requires_grad_()
    target = backend.asarray(rng.uniform(-0.5, 0.5, size=(4, 5, 2)), "float32")
    heatmap_bytes = 16 * 16 * 4
    assert_within_the_memory_budget(
        lambda z: dsnt_core.dsnt_loss(z, target, regularizer=regularizer), logits, heatmap_bytes
    )
    assert_within_the_memory_budget(lambda z: dsnt_core.soft_argmax(z), logits, heatmap_bytes)
    # The composed form, for contrast, keeps several heatmap-sized tensors: the hook sees them.
    composed = saved_tensor_bytes(lambda z: composed_dsnt_loss(z, target, regularizer="js"), logits)
    assert sum(size for size in composed if size >= heatmap_bytes) >= 2 * logits.numel() * 4


@pytest.mark.backends("jax")
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_jax_residuals_hold_nothing_of_heatmap_size_besides_the_logits(backend, regularizer):
    saved_residuals = pytest.importorskip("jax._src.ad_checkpoint").saved_residuals
    logits = backend.asarray(np.ones((2, 3, 8, 8)))
    target = backend.asarray(np.zeros((2, 3, 2)))
    for fn in (
        lambda z: dsnt_core.dsnt_loss(z, target, regularizer=regularizer),
        lambda z: dsnt_core.soft_argmax(z).sum(),
    ):
        residuals = saved_residuals(fn, logits)
        large = [(aval, source) for aval, source in residuals if aval.size >= 64]
        assert large and all("argument" in source for _, source in large), large
