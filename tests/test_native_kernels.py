"""The ``"torch-native"`` kernels (C++ passes) against the array-API passes, under the same rules.

Every test runs under ``use_kernels("torch-native")`` through the ``kernels`` fixture (skipped
with the build error where the extension cannot be built); the references are computed inside
``with dsnt_core.use_kernels("array-api"):``.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _support import DIVERGENCES, REGULARIZERS, assert_within_the_memory_budget, fused_results
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import logits_arrays, targets_for

import dsnt_core
from dsnt_core.kernels import Kernels

pytestmark = [pytest.mark.backends("torch", gpu=False), pytest.mark.kernels("torch-native")]  # CPU kernels


def _compare(backend, logits, target, cotangent, *, rtol, atol, tolerances=None, **options):
    """The fused results under the native kernels (checked to be the ones that ran) against the array-API ones.

    ``tolerances`` maps a result's name ("loss grad"...) to its own ``(rtol, atol)``.
    """
    generic = fused_results(backend, logits, target, cotangent, kernels="array-api", **options)
    native = fused_results(backend, logits, target, cotangent, **options)
    assert native.kernels.name == "torch-native" and generic.kernels.name == "array-api"
    for (name, ours), (_, reference) in zip(native.items(), generic.items()):
        name_rtol, name_atol = (tolerances or {}).get(name, (rtol, atol))
        backend.assert_close(ours, reference, rtol=name_rtol, atol=name_atol, err_msg=name)
    return native, generic


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    regularizer=st.sampled_from(REGULARIZERS),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    use_mask=st.booleans(),
    sigma=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_native_passes_match_the_array_api_passes_in_float64(
    backend, kernels, data, case, regularizer, temperature, use_mask, sigma
):
    values, ndim = case
    batch = values.shape[: values.ndim - ndim]
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if data.draw(st.booleans(), label="a heatmap of -inf"):
        flat[0] = -np.inf
    if flat.size > 1 and data.draw(st.booleans(), label="some -inf logits"):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    target_np = data.draw(targets_for(values.shape, ndim))
    cotangent = backend.asarray(data.draw(targets_for(values.shape, ndim, limit=2.0)))
    mask = backend.asarray(np.arange(int(np.prod(batch))).reshape(batch) % 3 != 1) if use_mask else None
    options = dict(ndim=ndim, temperature=temperature, sigma=sigma, regularizer=regularizer, reg_weight=0.7, mask=mask)
    logits, target = backend.asarray(values), backend.asarray(target_np)
    # At coordinates equal to the target the Euclidean term has a kink: which side of it a
    # rounding error lands on decides the gradient, so such cases prove nothing.
    with dsnt_core.use_kernels("array-api"):
        coords = backend.to_numpy(dsnt_core.soft_argmax(logits, ndim=ndim, temperature=temperature))
    assume(bool(np.all(np.linalg.norm(coords - target_np, axis=-1) > 1e-6)))
    _compare(backend, logits, target, cotangent, rtol=1e-9, atol=1e-11, **options)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("shape,ndim", [((4, 5, 64, 48), 2), ((2, 3, 8, 16, 16), 3), ((6, 70), 1)])
def test_native_passes_match_in_float32_at_realistic_sizes(backend, kernels, regularizer, shape, ndim):
    rng = np.random.default_rng(1)
    logits = backend.asarray(rng.normal(size=shape) * 4, "float32")
    target = backend.asarray(rng.uniform(-0.8, 0.8, size=(*shape[: len(shape) - ndim], ndim)), "float32")
    cotangent = backend.asarray(rng.normal(size=target.shape), "float32")
    options = dict(ndim=ndim, temperature=1.0, sigma=1.0, regularizer=regularizer, reg_weight=1.0)
    # The gradient's tolerance scales with its largest entry, which only the reference knows.
    with dsnt_core.use_kernels("array-api"):
        reference_grad = backend.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, target, **options), logits)[1]
    scale = float(np.abs(backend.to_numpy(reference_grad)).max())
    tolerances = {"loss grad": (1e-3, 1e-4 * scale)}
    _compare(backend, logits, target, cotangent, rtol=1e-4, atol=1e-6, tolerances=tolerances, **options)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_passes_take_16_bit_logits_and_answer_in_their_dtype(backend, kernels, dtype):
    rng = np.random.default_rng(2)
    logits = backend.asarray(rng.normal(size=(3, 4, 16, 16)), dtype)
    target = backend.asarray(np.zeros((3, 4, 2)), dtype)
    assert dsnt_core.kernels.select_kernels(logits) is kernels
    loss, grad = backend.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, target), logits)
    quantized = backend.to_numpy(logits)  # the exact values the 16-bit logits hold
    reference_loss, reference_grad = dsnt_core.dsnt_loss_value_and_grad(quantized, np.zeros((3, 4, 2)))
    backend.assert_close(loss, reference_loss, dtype=dtype, rtol=2e-2, atol=0)
    backend.assert_close(grad, reference_grad, like=logits, rtol=1e-7, atol=2e-2 * np.abs(reference_grad).max())


def test_a_nan_heatmap_gives_nan_there_and_leaves_the_others_alone(backend, kernels):
    logits_np = np.random.default_rng(3).normal(size=(2, 3, 16, 16))
    logits_np[0, 1, 4, 5] = np.nan
    logits_np[1, 2, 0, 0] = np.inf
    logits = backend.asarray(logits_np)
    assert dsnt_core.kernels.select_kernels(logits) is kernels
    coords, grad = backend.value_and_grad(dsnt_core.soft_argmax, logits, cotangent=backend.xp.ones((2, 3, 2)))
    poisoned = np.zeros((2, 3), dtype=bool)
    poisoned[0, 1] = poisoned[1, 2] = True
    assert np.isnan(backend.to_numpy(coords)[poisoned]).all() and np.isnan(backend.to_numpy(grad)[poisoned]).all()
    with dsnt_core.use_kernels("array-api"):
        clean = dsnt_core.soft_argmax(backend.asarray(logits_np[~poisoned]))
    backend.assert_close(coords[backend.asarray(~poisoned)], clean)
    assert np.isfinite(backend.to_numpy(grad)[~poisoned]).all()


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_native_kernels_keep_at_most_the_logits_bytes_for_backward(backend, kernels, regularizer):
    logits = backend.asarray(np.random.default_rng(4).normal(size=(4, 5, 16, 16)), "float32").requires_grad_()
    target = backend.asarray(np.random.default_rng(5).uniform(-0.5, 0.5, size=(4, 5, 2)), "float32")
    assert dsnt_core.kernels.select_kernels(logits) is kernels

    def loss(z):
        return dsnt_core.dsnt_loss(z, target, regularizer=regularizer)

    assert_within_the_memory_budget(loss, logits, heatmap_bytes=16 * 16 * 4)
    assert_within_the_memory_budget(dsnt_core.soft_argmax, logits, heatmap_bytes=16 * 16 * 4)


def test_non_contiguous_logits_and_transforms_fall_back_or_agree(backend, kernels):
    torch = backend.library
    rng = np.random.default_rng(6)
    logits = backend.asarray(rng.normal(size=(3, 16, 12, 5))).permute(0, 3, 2, 1)  # (3, 5, 12, 16), not contiguous
    target = backend.asarray(rng.uniform(-0.5, 0.5, size=(3, 5, 2)))
    loss = dsnt_core.dsnt_loss(logits, target)
    per_sample = torch.func.vmap(lambda z, t: dsnt_core.dsnt_loss(z, t))(logits, target)
    grads = torch.func.grad(lambda z: dsnt_core.dsnt_loss(z, target))(logits)
    with dsnt_core.use_kernels("array-api"):
        backend.assert_close(loss, dsnt_core.dsnt_loss(logits, target))
        backend.assert_close(grads, torch.func.grad(lambda z: dsnt_core.dsnt_loss(z, target))(logits))
    backend.assert_close(per_sample.mean(), loss)


def test_double_backward_works_with_native_passes_on(backend, kernels):
    logits = backend.asarray(np.random.default_rng(7).normal(size=(2, 3, 8, 8)))
    target = backend.asarray(np.zeros((2, 3, 2)))
    ours = backend.penalty_gradient(lambda z: dsnt_core.dsnt_loss(z, target), logits)
    with dsnt_core.use_kernels("array-api"):
        backend.assert_close(ours, backend.penalty_gradient(lambda z: dsnt_core.dsnt_loss(z, target), logits))


def _counting(name, method, calls, *, method_of_a_class=True):
    """``method`` (or, with ``method_of_a_class=False``, a function) that records ``name`` in ``calls`` first."""

    def counted(self, *args, **kwargs):
        calls.append(name)
        return method(self, *args, **kwargs)

    def counted_function(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)

    return counted if method_of_a_class else counted_function


def test_the_native_passes_are_used_when_chosen(backend, kernels, monkeypatch):
    """Whatever passes the rules call, the native kernels' own ones run, forward and backward.

    Their own passes, or the extension's whole rules (``NativeKernels.wrap_rule``).
    """
    contract = {name for name, value in vars(Kernels).items() if inspect.isfunction(value)}
    own = sorted(contract & set(vars(type(kernels))) - {"unavailable_reason", "applies_to", "wrap_rule"})
    calls = []
    for name in own:
        monkeypatch.setattr(type(kernels), name, _counting(name, getattr(type(kernels), name), calls))
    from dsnt_torch import native

    extension = native.extension()
    for name in native.WHOLE_RULES:
        monkeypatch.setattr(extension, name, _counting(name, getattr(extension, name), calls, method_of_a_class=False))
    logits = backend.asarray(np.random.default_rng(8).normal(size=(2, 2, 8, 8)))
    target = backend.asarray(np.zeros((2, 2, 2)))
    for loss in (lambda z: dsnt_core.soft_argmax(z).sum(), lambda z: dsnt_core.dsnt_loss(z, target)):
        z = logits.clone().requires_grad_()
        value = loss(z)
        forward_calls = len(calls)
        value.backward()
        assert forward_calls > 0 and len(calls) > forward_calls, (own, calls)
    with dsnt_core.use_kernels("array-api"):
        seen = len(calls)
        backend.value_and_grad(lambda z: dsnt_core.soft_argmax(z).sum(), logits)
    assert len(calls) == seen


@pytest.mark.parametrize("regularizer", DIVERGENCES)
def test_native_gradients_stay_finite_at_minus_inf_logits_with_large_weights(backend, kernels, regularizer):
    logits_np = np.random.default_rng(9).normal(size=(1, 2, 8, 8))
    logits_np[0, 1, :3] = -np.inf
    logits = backend.asarray(logits_np)
    target = backend.asarray([[[0.2, -0.1], [-0.3, 0.4]]])
    cotangent = backend.asarray(np.ones((1, 2, 2)))
    options = dict(ndim=2, temperature=1.0, sigma=1.0, regularizer=regularizer, reg_weight=9.0)
    native, _ = _compare(backend, logits, target, cotangent, rtol=1e-9, atol=1e-11, **options)
    grad = backend.to_numpy(native.loss_grad)
    assert np.isfinite(grad).all() and (grad[0, 1, :3] == 0).all()
