"""The fused gradient rules against autodiff of the composition and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close, make_backend
from hypothesis import given
from hypothesis import strategies as st

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

REGULARIZERS = ["js", "kl", "var", None]


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


def torch_grad(fn, logits, *args):
    import torch

    z = torch.from_numpy(logits).requires_grad_()
    value = fn(z, *args)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach().numpy(), grad.numpy()


@given(case=loss_case())
def test_torch_fused_loss_gradient_equals_autograd_of_the_composition(case):
    torch = pytest.importorskip("torch")
    logits, target, mask, options = case
    t = torch.from_numpy(target)
    m = None if mask is None else torch.from_numpy(mask)
    fused = torch_grad(lambda z: dsnt_core.dsnt_loss(z, t, mask=m, **options), logits)
    composed = torch_grad(lambda z: composed_dsnt_loss(z, t, mask=m, **options), logits)
    assert_close(fused[0], composed[0])
    assert_close(fused[1], composed[1], rtol=1e-8, atol=1e-12)


@given(case=loss_case())
def test_jax_fused_loss_gradient_equals_autodiff_of_the_composition(case):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    logits, target, mask, options = case
    t = jnp.asarray(target)
    m = None if mask is None else jnp.asarray(mask)
    # Under jit: one compilation per case instead of one per primitive.
    fused = jax.jit(jax.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, t, mask=m, **options)))(jnp.asarray(logits))
    composed = jax.jit(jax.value_and_grad(lambda z: composed_dsnt_loss(z, t, mask=m, **options)))(jnp.asarray(logits))
    assert_close(np.asarray(fused[0]), np.asarray(composed[0]))
    assert_close(np.asarray(fused[1]), np.asarray(composed[1]), rtol=1e-8, atol=1e-12)
    forward = jax.jit(jax.jacfwd(lambda z: dsnt_core.dsnt_loss(z, t, mask=m, **options)))(jnp.asarray(logits))
    assert_close(np.asarray(forward), np.asarray(composed[1]), rtol=1e-8, atol=1e-12)


@given(case=loss_case())
def test_loss_gradient_matches_central_finite_differences(case):
    logits, target, mask, options = case
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, mask=mask, **options)
    rng = np.random.default_rng(0)
    for _ in range(3):
        direction = rng.normal(size=logits.shape)
        h = 1e-5
        plus = dsnt_core.dsnt_loss(logits + h * direction, target, mask=mask, **options)
        minus = dsnt_core.dsnt_loss(logits - h * direction, target, mask=mask, **options)
        numeric = (plus - minus) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-5, atol=1e-8)


@given(case=loss_case())
def test_each_heatmap_gradient_sums_to_zero(case):
    logits, target, mask, options = case
    _, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, mask=mask, **options)
    sums = grad.sum(axis=tuple(range(-options["ndim"], 0)))
    np.testing.assert_allclose(sums, 0.0, atol=1e-12)
    coords_grad = dsnt_core.soft_argmax_vjp(logits, target, ndim=options["ndim"])
    np.testing.assert_allclose(coords_grad.sum(axis=tuple(range(-options["ndim"], 0))), 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
@given(case=loss_case())
def test_explicit_gradient_entry_points_equal_framework_gradients(name, case):
    torch = pytest.importorskip("torch")
    backend = make_backend(name)
    logits, target, mask, options = case
    m = None if mask is None else backend.asarray(mask)
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(backend.asarray(logits), backend.asarray(target), mask=m, **options)
    t, tm = torch.from_numpy(target), None if mask is None else torch.from_numpy(mask)
    expected = torch_grad(lambda z: dsnt_core.dsnt_loss(z, t, mask=tm, **options), logits)
    assert_close(backend.to_numpy(loss), expected[0])
    assert_close(backend.to_numpy(grad), expected[1], rtol=1e-8, atol=1e-12)
    cotangent = np.random.default_rng(1).normal(size=target.shape)
    vjp = dsnt_core.soft_argmax_vjp(
        backend.asarray(logits),
        backend.asarray(cotangent),
        ndim=options["ndim"],
        temperature=options["temperature"],
    )
    z = torch.from_numpy(logits).requires_grad_()
    coords = dsnt_core.soft_argmax(z, ndim=options["ndim"], temperature=options["temperature"])
    (expected_vjp,) = torch.autograd.grad(coords, z, torch.from_numpy(cotangent))
    assert_close(backend.to_numpy(vjp), expected_vjp.numpy(), rtol=1e-8, atol=1e-12)


@given(case=loss_case())
def test_soft_argmax_jacobians_equal_autodiff_of_the_composition(case):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    logits, _, _, options = case
    ndim, temperature = options["ndim"], options["temperature"]
    z = jnp.asarray(logits)

    def fused(a):
        return dsnt_core.soft_argmax(a, ndim=ndim, temperature=temperature)

    def composed(a):
        return dsnt_core.dsnt(dsnt_core.flat_softmax(a, ndim=ndim, temperature=temperature), ndim=ndim)

    expected = np.asarray(jax.jit(jax.jacrev(composed))(z))
    assert_close(np.asarray(jax.jit(jax.jacrev(fused))(z)), expected, rtol=1e-8, atol=1e-12)
    assert_close(np.asarray(jax.jit(jax.jacfwd(fused))(z)), expected, rtol=1e-8, atol=1e-12)


def test_torch_double_backward_equals_the_composition():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 6, 5))
    target = torch.from_numpy(rng.uniform(-0.8, 0.8, size=(2, 3, 2)))

    def gradient_penalty(loss_fn):
        z = torch.from_numpy(logits).requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(z), z, create_graph=True)
        (second,) = torch.autograd.grad((grad**2).sum(), z)
        return second.numpy()

    for regularizer in REGULARIZERS:
        fused = gradient_penalty(lambda z, r=regularizer: dsnt_core.dsnt_loss(z, target, regularizer=r))
        composed = gradient_penalty(lambda z, r=regularizer: composed_dsnt_loss(z, target, regularizer=r))
        assert_close(fused, composed, rtol=1e-7, atol=1e-12)


def test_target_gradients_are_exact_when_asked_for():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(6)
    logits, target = rng.normal(size=(2, 3, 6, 5)), rng.uniform(-0.8, 0.8, size=(2, 3, 2))
    t = torch.from_numpy(target).requires_grad_()
    (torch_grad_t,) = torch.autograd.grad(dsnt_core.dsnt_loss(torch.from_numpy(logits), t), t)
    t2 = torch.from_numpy(target).requires_grad_()
    (expected,) = torch.autograd.grad(composed_dsnt_loss(torch.from_numpy(logits), t2), t2)
    assert_close(torch_grad_t.numpy(), expected.numpy())
    jax_grad_t = jax.grad(lambda tt: dsnt_core.dsnt_loss(jax.numpy.asarray(logits), tt))(jax.numpy.asarray(target))
    assert_close(np.asarray(jax_grad_t), expected.numpy())


# ----------------------------------------------------------------------------- memory


def _saved_tensor_sizes(loss_fn, logits):
    """Bytes of every tensor that autograd saves for backward, other than the logits' own storage."""
    import torch

    saved = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits)
    return saved


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_torch_saves_nothing_of_heatmap_size_besides_the_logits(regularizer):
    torch = pytest.importorskip("torch")
    logits = torch.randn(4, 5, 16, 16, requires_grad=True)
    target = torch.rand(4, 5, 2) - 0.5
    heatmap_bytes = 16 * 16 * 4
    saved = _saved_tensor_sizes(lambda z: dsnt_core.dsnt_loss(z, target, regularizer=regularizer), logits)
    assert all(size < heatmap_bytes for size in saved), saved
    coords_saved = _saved_tensor_sizes(lambda z: dsnt_core.soft_argmax(z), logits)
    assert all(size < heatmap_bytes for size in coords_saved), coords_saved
    # The composed form, for contrast, keeps several heatmap-sized tensors.
    composed = _saved_tensor_sizes(lambda z: composed_dsnt_loss(z, target, regularizer="js"), logits)
    assert sum(size >= logits.numel() * 4 for size in composed) >= 2


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_jax_residuals_hold_nothing_of_heatmap_size_besides_the_logits(regularizer):
    jax = pytest.importorskip("jax")
    saved_residuals = pytest.importorskip("jax._src.ad_checkpoint").saved_residuals
    logits = jax.numpy.ones((2, 3, 8, 8))
    target = jax.numpy.zeros((2, 3, 2))
    for fn in (
        lambda z: dsnt_core.dsnt_loss(z, target, regularizer=regularizer),
        lambda z: dsnt_core.soft_argmax(z).sum(),
    ):
        residuals = saved_residuals(fn, logits)
        large = [(aval, source) for aval, source in residuals if aval.size >= 64]
        assert all("argument" in source for _, source in large), large
