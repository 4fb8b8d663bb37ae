"""The PyTorch adapter's native C++ passes against the array-API passes, under the same rules."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import logits_arrays, targets_for

import dsnt_core

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed (pip install 'dsnt-core[torch]')", allow_module_level=True)

import dsnt_torch
import torch
from dsnt_torch import _native


def _build_failure() -> str | None:
    try:
        dsnt_torch.build_native_kernels()
    except RuntimeError as error:
        return str(error)
    return None


BUILD_FAILURE = _build_failure()
pytestmark = pytest.mark.skipif(BUILD_FAILURE is not None, reason=f"native kernels unavailable: {BUILD_FAILURE}")

REGULARIZERS = ("js", "kl", "var", None)


@pytest.fixture
def native():
    """Switch the native passes on for one test and back off afterwards."""
    dsnt_torch.use_native_kernels(True)
    yield
    dsnt_torch.use_native_kernels(False)


def _run(logits, target, cotangent, *, native, mask=None, **options):
    """Coordinates, their VJP, the loss and its gradient, with or without the native passes."""
    dsnt_torch.use_native_kernels(native)
    try:
        z = logits.detach().clone().requires_grad_()
        coords = dsnt_core.soft_argmax(z, ndim=options["ndim"], temperature=options["temperature"])
        coords.backward(cotangent)
        coords_grad = z.grad
        z = logits.detach().clone().requires_grad_()
        loss = dsnt_core.dsnt_loss(z, target, mask=mask, **options)
        loss.backward()
        return coords.detach(), coords_grad, loss.detach(), z.grad
    finally:
        dsnt_torch.use_native_kernels(False)


def _assert_same(generic, native, rtol, atol):
    for name, a, b in zip(("coords", "coords grad", "loss", "loss grad"), generic, native):
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(b.double().numpy(), a.double().numpy(), rtol=rtol, atol=atol, err_msg=name)


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    regularizer=st.sampled_from(REGULARIZERS),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    use_mask=st.booleans(),
    sigma=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_native_passes_match_the_array_api_passes_in_float64(data, case, regularizer, temperature, use_mask, sigma):
    values, ndim = case
    batch = values.shape[: values.ndim - ndim]
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if data.draw(st.booleans(), label="a heatmap of -inf"):
        flat[0] = -np.inf
    if flat.size > 1 and data.draw(st.booleans(), label="some -inf logits"):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    logits = torch.as_tensor(values)
    target = torch.as_tensor(data.draw(targets_for(values.shape, ndim)))
    cotangent = torch.as_tensor(data.draw(targets_for(values.shape, ndim, limit=2.0)))
    mask = torch.as_tensor(np.arange(int(np.prod(batch))).reshape(batch) % 3 != 1) if use_mask else None
    options = dict(ndim=ndim, temperature=temperature, sigma=sigma, regularizer=regularizer, reg_weight=0.7)
    generic = _run(logits, target, cotangent, native=False, mask=mask, **options)
    # At coordinates equal to the target the Euclidean term has a kink: which side of it a
    # rounding error lands on decides the gradient, so such cases prove nothing.
    assume(bool(torch.all(torch.linalg.vector_norm(generic[0] - target, dim=-1) > 1e-6)))
    fast = _run(logits, target, cotangent, native=True, mask=mask, **options)
    _assert_same(generic, fast, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("shape,ndim", [((4, 5, 64, 48), 2), ((2, 3, 8, 16, 16), 3), ((6, 70), 1)])
def test_native_passes_match_in_float32_at_realistic_sizes(regularizer, shape, ndim):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=generator) * 4
    target = torch.rand((*shape[: len(shape) - ndim], ndim), generator=generator) * 1.6 - 0.8
    cotangent = torch.randn(target.shape, generator=generator)
    options = dict(ndim=ndim, temperature=1.0, sigma=1.0, regularizer=regularizer, reg_weight=1.0)
    generic = _run(logits, target, cotangent, native=False, **options)
    fast = _run(logits, target, cotangent, native=True, **options)
    scale = float(generic[3].abs().max())
    _assert_same(generic[:3], fast[:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast[3].numpy(), generic[3].numpy(), rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_passes_take_16_bit_logits_and_answer_in_their_dtype(native, dtype):
    logits = torch.randn(3, 4, 16, 16).to(getattr(torch, dtype)).requires_grad_()
    target = torch.zeros(3, 4, 2, dtype=logits.dtype)
    loss = dsnt_core.dsnt_loss(logits, target)
    loss.backward()
    assert loss.dtype == logits.grad.dtype == logits.dtype
    reference = dsnt_core.dsnt_loss_value_and_grad(logits.detach().float().double().numpy(), target.double().numpy())
    np.testing.assert_allclose(float(loss.detach()), float(reference[0]), rtol=2e-2)
    np.testing.assert_allclose(logits.grad.double().numpy(), reference[1], atol=2e-2 * np.abs(reference[1]).max())


def test_a_nan_heatmap_gives_nan_there_and_leaves_the_others_alone(native):
    logits = torch.randn(2, 3, 16, 16)
    logits[0, 1, 4, 5] = float("nan")
    logits[1, 2, 0, 0] = float("inf")
    z = logits.clone().requires_grad_()
    coords = dsnt_core.soft_argmax(z)
    coords.backward(torch.ones_like(coords))
    poisoned = torch.zeros(2, 3, dtype=torch.bool)
    poisoned[0, 1] = poisoned[1, 2] = True
    assert torch.isnan(coords[poisoned]).all() and torch.isnan(z.grad[poisoned]).all()
    dsnt_torch.use_native_kernels(False)
    clean = dsnt_core.soft_argmax(logits[~poisoned])
    torch.testing.assert_close(coords[~poisoned].detach(), clean)


def test_native_saves_nothing_of_heatmap_size_besides_the_logits(native):
    logits = torch.randn(4, 5, 16, 16, requires_grad=True)
    target = torch.rand(4, 5, 2) - 0.5
    saved = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dsnt_core.dsnt_loss(logits, target).backward()
    assert all(size < 16 * 16 for size in saved), saved


def test_non_contiguous_logits_and_transforms_fall_back_or_agree(native):
    logits = torch.randn(3, 16, 12, 5).permute(0, 3, 2, 1)  # (3, 5, 12, 16), not contiguous
    target = torch.rand(3, 5, 2) - 0.5
    loss = dsnt_core.dsnt_loss(logits, target)
    per_sample = torch.func.vmap(lambda z, t: dsnt_core.dsnt_loss(z, t))(logits, target)
    grads = torch.func.grad(lambda z: dsnt_core.dsnt_loss(z, target))(logits)
    dsnt_torch.use_native_kernels(False)
    torch.testing.assert_close(loss, dsnt_core.dsnt_loss(logits, target))
    torch.testing.assert_close(per_sample.mean(), loss)
    torch.testing.assert_close(grads, torch.func.grad(lambda z: dsnt_core.dsnt_loss(z, target))(logits))


def test_double_backward_works_with_native_passes_on(native):
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(2, 3, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(dsnt_core.dsnt_loss(logits, target), logits, create_graph=True)
    (hessian_vector,) = torch.autograd.grad(grad.sum(), logits)
    dsnt_torch.use_native_kernels(False)
    (grad_ref,) = torch.autograd.grad(dsnt_core.dsnt_loss(logits, target), logits, create_graph=True)
    (hessian_vector_ref,) = torch.autograd.grad(grad_ref.sum(), logits)
    torch.testing.assert_close(hessian_vector, hessian_vector_ref)


def test_the_native_passes_are_used_when_switched_on(native, monkeypatch):
    calls = []
    original = _native.gradient_map
    monkeypatch.setattr(_native, "gradient_map", lambda *a, **k: calls.append(1) or original(*a, **k))
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    dsnt_core.soft_argmax(logits).sum().backward()
    assert calls == [1]
    dsnt_torch.use_native_kernels(False)
    logits.grad = None
    dsnt_core.soft_argmax(logits).sum().backward()
    assert calls == [1]


@pytest.mark.parametrize("regularizer", ["kl", "js"])
def test_native_gradients_stay_finite_at_minus_inf_logits_with_large_weights(regularizer):
    logits = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    logits[0, 1, :3] = float("-inf")
    target = torch.tensor([[[0.2, -0.1], [-0.3, 0.4]]], dtype=torch.float64)
    cotangent = torch.ones(1, 2, 2, dtype=torch.float64)
    options = dict(ndim=2, temperature=1.0, sigma=1.0, regularizer=regularizer, reg_weight=9.0)
    generic = _run(logits, target, cotangent, native=False, **options)
    fast = _run(logits, target, cotangent, native=True, **options)
    assert torch.isfinite(fast[3]).all() and (fast[3][0, 1, :3] == 0).all()
    _assert_same(generic, fast, rtol=1e-9, atol=1e-11)
