"""The JAX Pallas (Triton) kernels against the array-API passes, run in Pallas' interpreter on the CPU.

Every pass is compared with `ArrayAPIKernels` on the same inputs (float64 tightly, float32
and bfloat16 at their precision); the fused loss and its gradient through the JAX adapter;
and the kernels are lowered for CUDA on this machine: the exported module must hold the
Triton calls, their Triton modules must verify, and Triton must compile them for sm_90.
"""

from __future__ import annotations

import doctest
import functools
import importlib.util
import os
import re
import tempfile
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import logits_arrays, targets_for

from dsnt_core.kernels import Divergence, DivergenceKind, array_api_kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import soft_argmax_backward, soft_argmax_forward

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install 'dsnt-core[jax]')", allow_module_level=True)

import jax
import jax.numpy as jnp
from dsnt_jax import adapter, pallas_kernels
from dsnt_jax.pallas_kernels import TRITON_CALL_TARGETS, PallasKernels

if pallas_kernels._PALLAS_MISSING is not None:
    pytest.skip(pallas_kernels._PALLAS_MISSING, allow_module_level=True)

REFERENCE = array_api_kernels()
INTERPRETED = PallasKernels(interpret=True)
"""The default tiles (4096 elements): small heatmaps fit one tile."""
SMALL_TILES = PallasKernels(8, interpret=True)
"""Tiles of 8 elements: the small heatmaps of the property tests span many tiles."""
TINY_TILES = PallasKernels(2, interpret=True)
REGULARIZERS = ("js", "kl", "var", None)


def _assert_close(actual, expected, rtol, atol, what):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _batch_and_spatial(shape, ndim):
    return tuple(shape[: len(shape) - ndim]), tuple(shape[len(shape) - ndim :])


@functools.partial(jax.jit, static_argnames=("kernels", "ndim", "temperature"))
def _every_pass(logits, mixture, per_axis, coef, *, kernels, ndim, temperature):
    """Every pass of ``kernels`` in one compiled function (one compilation per shape, not six)."""
    stats = kernels.softmax_statistics(jnp, logits, ndim, temperature, entropy=True, mixture=mixture)
    plain = kernels.softmax_statistics(jnp, logits, ndim, temperature)
    moments = kernels.softmax_moments(jnp, logits, ndim, temperature)
    divergences = {
        "none": None,
        "kl": Divergence(DivergenceKind.KL, coef),
        "js": Divergence(DivergenceKind.JS, coef, tuple(mixture)),
    }
    grads = {
        name: kernels.gradient_map(jnp, logits, stats.lse, per_axis, divergence, ndim, temperature)
        for name, divergence in divergences.items()
    }
    return stats, plain, moments, grads


def _check_passes(kernels, logits, ndim, temperature, *, rng, rtol, atol):
    """Every pass of ``kernels`` against the array-API passes on the same logits."""
    batch, spatial = _batch_and_spatial(logits.shape, ndim)
    compute = jnp.float32 if jnp.dtype(logits.dtype).itemsize < 4 else logits.dtype
    mixture = [jnp.asarray(rng.uniform(0.0, 1.0, (*batch, n)), compute) for n in reversed(spatial)]
    per_axis = [jnp.asarray(rng.normal(size=(*batch, n)), compute) for n in reversed(spatial)]
    coef = jnp.asarray(rng.uniform(0.1, 2.0, batch), compute)
    arguments = dict(ndim=ndim, temperature=temperature)
    ours, plain, moments, grads = _every_pass(logits, mixture, per_axis, coef, kernels=kernels, **arguments)
    theirs, _, expected, expected_grads = _every_pass(logits, mixture, per_axis, coef, kernels=REFERENCE, **arguments)
    for name in ("lse", "neg_entropy", "m_log_m", "p_log_m"):
        assert getattr(ours, name).dtype == compute, name
        _assert_close(getattr(ours, name), getattr(theirs, name), rtol, atol, name)
    assert len(ours.margins) == ndim
    for k, (a, b) in enumerate(zip(ours.margins, theirs.margins)):
        assert a.dtype == compute
        _assert_close(a, b, rtol, atol, f"margin {k}")
    assert plain.neg_entropy is None and plain.m_log_m is None and plain.p_log_m is None
    _assert_close(plain.lse, theirs.lse, rtol, atol, "lse without entropy")
    _assert_close(moments.lse, expected.lse, rtol, atol, "moments lse")
    _assert_close(moments.mu, expected.mu, rtol, atol, "moments mu")
    for name, grad in grads.items():
        reference = expected_grads[name]
        assert grad.dtype == compute and grad.shape == logits.shape
        scale = float(np.nanmax(np.abs(np.asarray(reference, np.float64)), initial=0.0))
        _assert_close(grad, reference, rtol, atol * max(scale, 1.0), f"gradient map ({name})")
    return ours, grads


# ------------------------------------------------------------------------------ the passes


@settings(max_examples=6)
@given(
    data=st.data(),
    case=logits_arrays(max_side=6, scale=20.0),
    implementation=st.sampled_from([INTERPRETED, SMALL_TILES, TINY_TILES]),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
)
def test_every_pass_matches_the_array_api_passes_in_float64(data, case, implementation, temperature):
    values, ndim = case
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if data.draw(st.booleans(), label="a heatmap of -inf"):
        flat[0] = -np.inf
    if flat.size > 1 and data.draw(st.booleans(), label="some -inf logits"):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    if flat.shape[0] > 1 and data.draw(st.booleans(), label="a NaN or +inf heatmap"):
        flat[-1].reshape(-1)[-1] = data.draw(st.sampled_from([np.nan, np.inf]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    _check_passes(implementation, jnp.asarray(values), ndim, temperature, rng=rng, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "shape,ndim,implementation,dtype",
    [
        ((2, 3, 64, 64), 2, INTERPRETED, "float32"),  # one tile each
        ((2, 256, 256), 2, INTERPRETED, "bfloat16"),  # 16 tiles of 16 rows
        ((2, 3, 6, 20, 24), 3, INTERPRETED, "float32"),  # 3-D: 120 rows of 32 (padded) columns in one tile
        ((2, 10000), 1, INTERPRETED, "float32"),  # 1-D wider than a tile: tiled along x
        ((4, 33, 17), 2, PallasKernels(64, interpret=True), "bfloat16"),
    ],
)
def test_every_pass_matches_at_realistic_sizes(shape, ndim, implementation, dtype):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=shape) * 4, dtype)
    # Both sides compute in float32 from the same (rounded) logits: only the order of the sums differs.
    _check_passes(implementation, logits, ndim, 0.8, rng=rng, rtol=1e-4, atol=1e-6)


# 1-D with tiles of 2: tiled along x; 2-D in one tile; 3-D in tiles of one row.
@pytest.mark.parametrize("ndim,implementation", [(1, TINY_TILES), (2, INTERPRETED), (3, SMALL_TILES)])
def test_poisoned_and_empty_heatmaps_stay_in_their_own_heatmap(ndim, implementation):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(5, *(5, 4, 3)[:ndim])) * 3
    values[1] = -np.inf  # uniform, lse = 0
    values[2].reshape(-1)[1] = np.nan
    values[3].reshape(-1)[-1] = np.inf
    values[4].reshape(-1)[::2] = -np.inf
    stats, grads = _check_passes(implementation, jnp.asarray(values), ndim, 1.3, rng=rng, rtol=1e-9, atol=1e-12)
    lse, neg_entropy = np.asarray(stats.lse), np.asarray(stats.neg_entropy)
    assert lse[1] == 0.0 and np.isclose(neg_entropy[1], -np.log(values[1].size))
    assert np.isnan(lse[2:4]).all() and np.isnan(neg_entropy[2:4]).all()
    assert np.isfinite(lse[[0, 1, 4]]).all() and np.isfinite(neg_entropy[[0, 1, 4]]).all()
    for margin in stats.margins:
        margin = np.asarray(margin)
        assert np.isnan(margin[2:4]).all() and np.isfinite(margin[[0, 1, 4]]).all()
        np.testing.assert_allclose(margin[1], 1.0 / margin.shape[-1])
    for grad in map(np.asarray, grads.values()):
        assert (grad[1] == 0).all() and np.isnan(grad[2:4]).all() and np.isfinite(grad[[0, 4]]).all()


def test_16_bit_logits_give_float32_statistics():
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8)), jnp.float16)
    stats = SMALL_TILES.softmax_statistics(jnp, logits, 2, 1.0, entropy=True)
    assert stats.lse.dtype == stats.margins[0].dtype == stats.neg_entropy.dtype == jnp.float32
    grad = SMALL_TILES.gradient_map(jnp, logits, stats.lse, [jnp.ones((2, 8))] * 2, None, 2, 1.0)
    assert grad.dtype == jnp.float32


def test_heatmaps_with_rows_wider_than_a_tile_fall_back_to_the_array_api_passes():
    kernels = PallasKernels(4, interpret=True)
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 9)))
    assert pallas_kernels._tiling(logits.shape, 2, 4) is None
    _check_passes(kernels, logits, 2, 1.0, rng=np.random.default_rng(5), rtol=1e-12, atol=1e-14)


def test_symbolic_shapes_fall_back_to_the_array_api_passes():
    (batch,) = jax.export.symbolic_shape("b")
    options = LossOptions(ndim=2, regularizer="js")

    def loss(kernels):
        return jax.jit(jax.value_and_grad(lambda z, t: adapter.dsnt_loss(z, t, None, options, kernels=kernels)))

    shapes = (jax.ShapeDtypeStruct((batch, 6, 5), jnp.float64), jax.ShapeDtypeStruct((batch, 2), jnp.float64))
    exported = jax.export.export(loss(INTERPRETED))(*shapes)
    logits = jnp.asarray(np.random.default_rng(11).normal(size=(3, 6, 5)))
    target = jnp.full((3, 2), 0.2)
    for what, a, b in zip(("loss", "gradient"), exported.call(logits, target), loss(REFERENCE)(logits, target)):
        _assert_close(a, b, 1e-12, 1e-14, what)


# --------------------------------------------------------------- the rules, end to end


def _loss_and_grad(kernels, logits, target, mask, options):
    return jax.jit(jax.value_and_grad(lambda z: adapter.dsnt_loss(z, target, mask, options, kernels=kernels)))(logits)


@pytest.mark.parametrize(
    "regularizer,shape,ndim,temperature,implementation,masked",
    [
        ("js", (2, 3, 9, 7), 2, 1.0, INTERPRETED, True),
        ("kl", (2, 2, 4, 5, 6), 3, 0.7, SMALL_TILES, False),
        ("var", (3, 40), 1, 2.0, SMALL_TILES, True),
        (None, (2, 3, 9, 7), 2, 1.0, TINY_TILES, False),
    ],
)
def test_loss_and_gradient_through_the_adapter_match_the_array_api_kernels(
    regularizer, shape, ndim, temperature, implementation, masked
):
    rng = np.random.default_rng(6)
    batch, _ = _batch_and_spatial(shape, ndim)
    logits = jnp.asarray(rng.normal(size=shape) * 3)
    target = jnp.asarray(rng.uniform(-0.8, 0.8, (*batch, ndim)))
    mask = jnp.asarray(np.arange(int(np.prod(batch))).reshape(batch) % 3 != 1) if masked else None
    options = LossOptions(ndim=ndim, temperature=temperature, sigma=1.2, regularizer=regularizer, reg_weight=0.7)
    loss, grad = _loss_and_grad(implementation, logits, target, mask, options)
    expected_loss, expected_grad = _loss_and_grad(REFERENCE, logits, target, mask, options)
    _assert_close(loss, expected_loss, 1e-10, 1e-12, "loss")
    _assert_close(grad, expected_grad, 1e-8, 1e-11, "gradient")
    np.testing.assert_allclose(np.sum(np.asarray(grad), axis=tuple(range(-ndim, 0))), 0.0, atol=1e-12)


@functools.partial(jax.jit, static_argnames=("kernels", "options"))
def _rules(logits, target, cotangent, *, kernels, options):
    """Both fused operations' forward and backward rules, called directly with ``kernels``."""
    ndim, temperature = options.ndim, options.temperature
    coords, residuals = soft_argmax_forward(jnp, logits, ndim, temperature, kernels)
    coords_grad = soft_argmax_backward(jnp, logits, residuals, cotangent, ndim, temperature, kernels)
    loss, loss_residuals = dsnt_loss_forward(jnp, logits, target, None, options, kernels)
    loss_grad = dsnt_loss_backward(jnp, logits, target, None, loss_residuals, jnp.ones(()), options, kernels)
    return coords, coords_grad, loss, loss_grad


@settings(max_examples=4)
@given(
    data=st.data(),
    case=logits_arrays(max_side=6, scale=10.0),
    regularizer=st.sampled_from(REGULARIZERS),
    temperature=st.sampled_from([1.0, 0.5]),
)
def test_the_rules_run_on_the_pallas_passes(data, case, regularizer, temperature):
    values, ndim = case
    target = jnp.asarray(data.draw(targets_for(values.shape, ndim)))
    cotangent = jnp.asarray(data.draw(targets_for(values.shape, ndim, limit=2.0)))
    logits = jnp.asarray(values)
    options = LossOptions(ndim=ndim, temperature=temperature, sigma=1.0, regularizer=regularizer, reg_weight=0.5)
    expected = _rules(logits, target, cotangent, kernels=REFERENCE, options=options)
    # At coordinates equal to the target the Euclidean term has a kink: such cases prove nothing.
    assume(bool(jnp.all(jnp.linalg.norm(expected[0] - target, axis=-1) > 1e-6)))
    ours = _rules(logits, target, cotangent, kernels=SMALL_TILES, options=options)
    for what, a, b in zip(("coords", "coords grad", "loss", "loss grad"), ours, expected):
        _assert_close(a, b, 1e-9, 1e-11, what)


def test_vmap_and_forward_mode_go_through_the_kernels():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(3, 2, 6, 5)))
    target = jnp.asarray(rng.uniform(-0.5, 0.5, (3, 2, 2)))
    tangent = jnp.asarray(rng.normal(size=logits.shape))
    options = LossOptions(ndim=2, regularizer="js")

    @functools.partial(jax.jit, static_argnames="kernels")
    def transformed(logits, target, tangent, *, kernels):
        losses = jax.vmap(lambda z, t: adapter.dsnt_loss(z, t, None, options, kernels=kernels))(logits, target)
        coords = jax.vmap(lambda z: adapter.soft_argmax(z, ndim=2, temperature=1.0, kernels=kernels))(logits)
        loss = lambda z: adapter.dsnt_loss(z, target, None, options, kernels=kernels)  # noqa: E731
        return losses, coords, jax.jvp(loss, (logits,), (tangent,))[1]

    ours = transformed(logits, target, tangent, kernels=SMALL_TILES)
    expected = transformed(logits, target, tangent, kernels=REFERENCE)
    for what, a, b in zip(("vmap loss", "vmap coords", "jvp"), ours, expected):
        _assert_close(a, b, 1e-9, 1e-11, what)


class _Unreachable:
    def __getattr__(self, name):
        raise AssertionError(f"the array-API passes were used ({name})")


def test_first_derivatives_use_the_kernels_alone(monkeypatch):
    monkeypatch.setattr(pallas_kernels, "_REFERENCE", _Unreachable())
    rng = np.random.default_rng(9)
    logits, tangent = jnp.asarray(rng.normal(size=(2, 5, 4))), jnp.asarray(rng.normal(size=(2, 5, 4)))
    target, options = jnp.full((2, 2), 0.1), LossOptions(ndim=2, regularizer="js")

    def loss(z):
        return adapter.dsnt_loss(z, target, None, options, kernels=SMALL_TILES)

    @jax.jit
    def first_order(logits, tangent):
        coords_grad = jax.grad(lambda z: jnp.sum(adapter.soft_argmax(z, ndim=2, temperature=1.0, kernels=SMALL_TILES)))(
            logits
        )
        return jax.value_and_grad(loss)(logits), coords_grad, jax.jvp(loss, (logits,), (tangent,))

    first_order(logits, tangent)


def test_second_derivatives_take_their_tangents_from_the_array_api_passes():
    rng = np.random.default_rng(10)
    logits, tangent = jnp.asarray(rng.normal(size=(2, 5, 4))), jnp.asarray(rng.normal(size=(2, 5, 4)))
    target, options = jnp.full((2, 2), 0.1), LossOptions(ndim=2, regularizer="js")

    @functools.partial(jax.jit, static_argnames="kernels")
    def second_order(logits, tangent, *, kernels):
        def loss(z):
            return adapter.dsnt_loss(z, target, None, options, kernels=kernels)

        hvp = jax.jvp(jax.grad(loss), (logits,), (tangent,))[1]
        grad_of_norm = jax.grad(lambda z: jnp.sum(jax.grad(loss)(z) ** 2))(logits)
        coords_hessian = jax.hessian(
            lambda z: jnp.sum(adapter.soft_argmax(z, ndim=2, temperature=1.0, kernels=kernels))
        )(logits)
        return hvp, grad_of_norm, coords_hessian

    ours = second_order(logits, tangent, kernels=SMALL_TILES)
    expected = second_order(logits, tangent, kernels=REFERENCE)
    for what, a, b in zip(("hvp", "grad of grad", "hessian"), ours, expected):
        _assert_close(a, b, 1e-9, 1e-12, what)


def test_bfloat16_loss_and_gradient_are_close_to_float64():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 3, 16, 16)) * 2
    target = rng.uniform(-0.6, 0.6, (2, 3, 2))
    options = LossOptions(ndim=2, regularizer="js")
    low = jnp.asarray(logits, jnp.bfloat16)
    loss, grad = _loss_and_grad(INTERPRETED, low, jnp.asarray(target, jnp.bfloat16), None, options)
    assert loss.dtype == grad.dtype == jnp.bfloat16
    exact_loss, exact_grad = _loss_and_grad(REFERENCE, low.astype(jnp.float64), jnp.asarray(target), None, options)
    np.testing.assert_allclose(float(loss), float(exact_loss), rtol=2e-2)
    scale = float(jnp.max(jnp.abs(exact_grad)))
    np.testing.assert_allclose(np.asarray(grad, np.float64), np.asarray(exact_grad), atol=2e-2 * scale)


# ---------------------------------------------------------------- selection and switches


def test_applies_to_jax_arrays_on_a_gpu_or_with_the_interpreter_on():
    kernels = PallasKernels()
    logits = jnp.zeros((2, 4, 4))
    on_gpu = jax.default_backend() == "gpu"
    previous = pallas_kernels.set_interpret(False)
    try:
        assert kernels.applies_to(logits) is on_gpu
        assert not kernels.applies_to(np.zeros((2, 4, 4)))
        assert (kernels.unavailable_reason() is None) is on_gpu
        pallas_kernels.set_interpret(True)
        assert pallas_kernels.interpreting() and kernels.unavailable_reason() is None
        assert kernels.applies_to(logits) and not kernels.applies_to(jnp.zeros((2, 4, 4), jnp.int32))
        seen = []
        jax.jit(lambda z: seen.append(kernels.applies_to(z)) or z)(logits)  # a tracer
        assert seen == [True]
    finally:
        pallas_kernels.set_interpret(previous)
    assert PallasKernels(interpret=True).applies_to(logits)


def test_the_instance_to_register():
    kernels = pallas_kernels.KERNELS
    assert (kernels.name, kernels.libraries, kernels.automatic) == ("jax-pallas", ("jax",), True)
    assert isinstance(hash(kernels), int) and kernels.interpret is None
    with pytest.raises(ValueError, match="power of two"):
        PallasKernels(12)


def test_docstring_examples_run():
    result = doctest.testmod(pallas_kernels, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------- compiled, on a real GPU

ON_GPU = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="no GPU backend in jax: the compiled kernels need an NVIDIA GPU"
)


@ON_GPU
@pytest.mark.parametrize(
    "shape,ndim,dtype",
    [((4, 17, 64, 64), 2, "float32"), ((2, 3, 256, 256), 2, "bfloat16"), ((3, 5, 16, 16, 16), 3, "float32"),
     ((5, 20000), 1, "float32"), ((2, 7, 5, 9), 2, "float64")],
)  # fmt: skip
def test_compiled_kernels_match_the_array_api_passes_on_a_gpu(shape, ndim, dtype):
    rng = np.random.default_rng(12)
    values = rng.normal(size=shape) * 4
    flat = values.reshape(-1, *shape[len(shape) - ndim :])
    flat[0], flat[1].reshape(-1)[3], flat[2].reshape(-1)[-1] = -np.inf, np.nan, np.inf
    tight = dtype == "float64"
    _check_passes(
        PallasKernels(interpret=False), jnp.asarray(values, dtype), ndim, 0.8, rng=rng,
        rtol=1e-9 if tight else 2e-4, atol=1e-12 if tight else 1e-6,
    )  # fmt: skip


@ON_GPU
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_compiled_loss_and_gradient_match_on_a_gpu(regularizer):
    rng = np.random.default_rng(13)
    logits = jnp.asarray(rng.normal(size=(8, 17, 64, 48)) * 3, jnp.float32)
    target = jnp.asarray(rng.uniform(-0.8, 0.8, (8, 17, 2)), jnp.float32)
    options = LossOptions(ndim=2, temperature=0.9, regularizer=regularizer)
    loss, grad = _loss_and_grad(PallasKernels(interpret=False), logits, target, None, options)
    expected_loss, expected_grad = _loss_and_grad(REFERENCE, logits, target, None, options)
    _assert_close(loss, expected_loss, 1e-5, 1e-7, "loss")
    _assert_close(grad, expected_grad, 1e-3, 1e-4 * float(jnp.max(jnp.abs(expected_grad))), "gradient")


# ----------------------------------------------------------- lowering for a real GPU target


def _triton_modules(function, *args):
    """Lower ``function`` for CUDA: its StableHLO text and the Triton modules (name, bytecode, warps) in it."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir

    captured, custom_call = [], mlir.custom_call

    def spy(call_target_name, *rest, backend_config=None, **options):
        if call_target_name in TRITON_CALL_TARGETS and isinstance(backend_config, dict) and "ir" in backend_config:
            warps = ir.IntegerAttr(backend_config["num_warps"]).value
            captured.append((backend_config["name"].value, backend_config["ir"].value_bytes, warps))
        return custom_call(call_target_name, *rest, backend_config=backend_config, **options)

    checks = [jax.export.DisabledSafetyCheck.custom_call(target) for target in TRITON_CALL_TARGETS]
    with mock.patch.object(mlir, "custom_call", spy):
        exported = jax.export.export(jax.jit(function), platforms=["cuda"], disabled_checks=checks)(*args)
    return exported.mlir_module(), captured


COMPILE_CASES = [
    ((4, 17, 64, 64), 2, "float32", "js"),
    ((2, 3, 256, 256), 2, "float32", "kl"),
    ((3, 8, 16, 16), 3, "bfloat16", "var"),
    ((5, 20000), 1, "float32", "js"),
    ((2, 7, 5, 9), 2, "float16", None),
]


@pytest.mark.parametrize("shape,ndim,dtype,regularizer", COMPILE_CASES)
def test_the_kernels_lower_for_cuda_and_compile_with_triton(shape, ndim, dtype, regularizer):
    from jax._src.lib.mlir import ir
    from jax._src.pallas.triton import lowering

    kernels = PallasKernels(interpret=False)
    batch, _ = _batch_and_spatial(shape, ndim)
    logits = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    target = jax.ShapeDtypeStruct((*batch, ndim), jnp.dtype(dtype))
    options = LossOptions(ndim=ndim, temperature=0.8, regularizer=regularizer)

    def step(z, t):
        loss, grad = jax.value_and_grad(lambda z: adapter.dsnt_loss(z, t, None, options, kernels=kernels))(z)
        return loss, grad, adapter.soft_argmax(z, ndim=ndim, temperature=1.0, kernels=kernels)

    text, modules = _triton_modules(step, logits, target)
    assert sum(text.count(call) for call in TRITON_CALL_TARGETS) == 3
    if not modules:
        pytest.skip(f"the Triton calls of jaxlib {jax.__version__} do not carry their Triton module to verify")
    names = sorted(name for name, _, _ in modules)
    assert names == ["dsnt_gradient_map", "dsnt_softmax_statistics", "dsnt_softmax_statistics"]
    sources = []
    for name, bytecode, warps in modules:
        with lowering._new_ir_context():
            source = ir.Module.parse(bytecode).operation.get_asm()  # parsing verifies the Triton module
        assert "tt.func" in source and "tt.load" in source and "tt.store" in source, name
        sources.append((name, source, warps))
    if importlib.util.find_spec("triton") is None:
        pytest.skip("the Triton modules verify; triton is not installed, so they were not compiled to PTX")
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Triton's notices about its own defaults
        for index, (name, source, warps) in enumerate(sources):
            path = os.path.join(folder, f"{name}_{index}.ttir")
            with open(path, "w") as file:
                file.write(source)
            try:
                compiled = triton.compile(path, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            except RuntimeError as error:
                if "Parse MLIR file failed" not in str(error):
                    raise
                pytest.skip(f"triton {triton.__version__} cannot read the Triton dialect of jaxlib {jax.__version__}")
            assert ".entry" in compiled.asm["ptx"] and compiled.asm["cubin"], name


@pytest.mark.parametrize("use_mosaic_gpu", [True, False])
def test_the_triton_lowering_is_chosen_whatever_the_mosaic_gpu_switch_says(use_mosaic_gpu):
    previous = jax.config.jax_pallas_use_mosaic_gpu
    jax.config.update("jax_pallas_use_mosaic_gpu", use_mosaic_gpu)
    try:
        kernels = PallasKernels(interpret=False)
        text, modules = _triton_modules(
            lambda z: kernels.softmax_moments(jnp, z, 2, 1.0).mu, jax.ShapeDtypeStruct((3, 32, 32), jnp.float32)
        )
    finally:
        jax.config.update("jax_pallas_use_mosaic_gpu", previous)
    assert [name for name, _, _ in modules] == ["dsnt_softmax_statistics"]
    targets = set(re.findall(r"custom_call @([^(\s]+)\(", text))
    assert targets and targets <= set(TRITON_CALL_TARGETS)  # no Mosaic GPU call
