"""The NumPy kernels (unshifted blocked exp + matmul) against the array-API kernels, under the same rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import logits_arrays

import dsnt_core
from dsnt_core.kernels import ArrayAPIKernels, NumPyKernels, numpy_fast, select_kernels
from dsnt_core.ops.soft_argmax import soft_argmax_backward, soft_argmax_forward

pytestmark = pytest.mark.backends("numpy")


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=30.0),
    temperature=st.sampled_from([1.0, 0.3, 4.0]),
    dtype=st.sampled_from(["float64", "float32", "float16"]),
    extreme=st.sampled_from([None, 1e4, 95.0, -200.0, -np.inf, np.nan]),
)
def test_fast_path_equals_the_generic_rule(backend, data, case, temperature, dtype, extreme, monkeypatch):
    """Including heatmaps it must hand back: overflowing, underflowing, all -inf, NaN."""
    values, ndim = case
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if extreme is not None:
        row = data.draw(st.integers(0, flat.shape[0] - 1), label="heatmap")
        if np.isnan(extreme):
            flat[row].reshape(-1)[0] = np.nan
        else:
            flat[row] = flat[row] + extreme if np.isfinite(extreme) else extreme
    block_rows = data.draw(st.integers(1, 4), label="heatmaps per block")
    monkeypatch.setattr(numpy_fast, "BLOCK_BYTES", block_rows * flat[0].size * np.dtype(dtype).itemsize)
    logits = backend.asarray(values, dtype)
    coords, residuals = soft_argmax_forward(backend.xp, logits, ndim, temperature, NumPyKernels())
    expected, expected_residuals = soft_argmax_forward(backend.xp, logits, ndim, temperature, ArrayAPIKernels())
    tolerance = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3}[dtype]
    backend.assert_close(coords, expected, like=logits, rtol=tolerance, atol=tolerance)
    compute = "float64" if dtype == "float64" else "float32"  # the statistics' dtype: float32 for 16 bits
    for name in ("lse", "mu"):
        ours, reference = getattr(residuals, name), getattr(expected_residuals, name)
        backend.assert_close(ours, reference, dtype=compute, rtol=tolerance, atol=tolerance, err_msg=name)


def test_public_functions_take_the_fast_path_and_stay_exact(backend):
    rng = np.random.default_rng(3)
    logits = backend.asarray(rng.normal(size=(5, 7, 32, 24)) * 3)
    logits[0, 0] += 500.0  # too large for the unshifted sum: recomputed
    assert type(select_kernels(logits)) is NumPyKernels
    generic = ArrayAPIKernels()
    expected, residuals = soft_argmax_forward(backend.xp, logits, 2, 1.0, generic)
    backend.assert_close(dsnt_core.soft_argmax(logits), expected, rtol=1e-12, atol=1e-12)
    cotangent = backend.asarray(rng.normal(size=expected.shape))
    expected_grad = soft_argmax_backward(backend.xp, logits, residuals, cotangent, 2, 1.0, generic)
    backend.assert_close(dsnt_core.soft_argmax_vjp(logits, cotangent), expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(0, 4, 4), (3, 0, 5)])
def test_empty_batches_and_heatmaps_go_to_the_generic_rule(backend, shape):
    logits = backend.asarray(np.zeros(shape))
    if shape[1] == 0:
        with pytest.raises(ValueError, match="non-empty spatial axes"):
            dsnt_core.soft_argmax(logits)
    else:
        backend.assert_close(dsnt_core.soft_argmax(logits), np.zeros((0, 2)))
        _, residuals = soft_argmax_forward(backend.xp, logits, 2, 1.0, NumPyKernels())
        backend.assert_close(residuals.lse, np.zeros((0,)))


# ------------------------------------------------------- the statistics and gradient passes


def _mixture_factors(rng, batch, spatial):
    """Normalised positive 1-D factors (x first) of a separable ``Q``, some of them tiny."""
    factors = []
    for n in reversed(spatial):
        factor = rng.uniform(0.0, 1.0, size=(*batch, n)) ** 8 + 1e-30
        factors.append(factor / factor.sum(axis=-1, keepdims=True))
    return factors


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=30.0),
    temperature=st.sampled_from([1.0, 0.3, 4.0]),
    dtype=st.sampled_from(["float64", "float32"]),
    extreme=st.sampled_from([None, 1e4, -200.0, -np.inf, np.nan, np.inf, "some -inf"]),
    kind=st.sampled_from([None, "kl", "js"]),
)
def test_blocked_statistics_and_gradient_equal_the_array_api_passes(
    backend, data, case, temperature, dtype, extreme, kind, monkeypatch
):
    """Every block size, and the heatmaps they hand back (non-finite peaks), against the array-API passes."""
    from dsnt_core.kernels import Divergence, DivergenceKind

    values, ndim = case
    values = values.copy()
    spatial, batch = values.shape[values.ndim - ndim :], values.shape[: values.ndim - ndim]
    flat = values.reshape(-1, *spatial)
    if extreme is not None:
        row = data.draw(st.integers(0, flat.shape[0] - 1), label="heatmap")
        if extreme == "some -inf":
            flat[row].reshape(-1)[::2] = -np.inf
        elif np.isnan(extreme) or extreme == np.inf:
            flat[row].reshape(-1)[0] = extreme
        else:
            flat[row] = flat[row] + extreme if np.isfinite(extreme) else extreme
    block_rows = data.draw(st.integers(1, 4), label="heatmaps per block")
    monkeypatch.setattr(numpy_fast, "BLOCK_BYTES", block_rows * flat[0].size * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    logits = backend.asarray(values, dtype)
    mixture = [backend.asarray(f, dtype) for f in _mixture_factors(rng, batch, spatial)]
    tolerance = 1e-10 if dtype == "float64" else 2e-4
    ours = NumPyKernels().softmax_statistics(backend.xp, logits, ndim, temperature, entropy=True, mixture=mixture)
    reference = ArrayAPIKernels().softmax_statistics(
        backend.xp, logits, ndim, temperature, entropy=True, mixture=mixture
    )
    for name in ("lse", "neg_entropy", "m_log_m", "p_log_m"):
        backend.assert_close(
            getattr(ours, name), getattr(reference, name), rtol=tolerance, atol=tolerance, err_msg=name
        )
    for ours_margin, reference_margin in zip(ours.margins, reference.margins):
        backend.assert_close(ours_margin, reference_margin, rtol=tolerance, atol=tolerance, err_msg="margins")
    per_axis = [backend.asarray(rng.normal(size=(*batch, n)), dtype) for n in reversed(spatial)]
    divergence = None
    if kind is not None:
        coef = backend.asarray(rng.uniform(0.1, 3.0, size=batch), dtype)
        divergence = Divergence(DivergenceKind(kind), coef, tuple(mixture) if kind == "js" else ())
    lse = reference.lse
    grad = NumPyKernels().gradient_map(backend.xp, logits, lse, per_axis, divergence, ndim, temperature)
    expected = ArrayAPIKernels().gradient_map(backend.xp, logits, lse, per_axis, divergence, ndim, temperature)
    scale = max(float(np.nanmax(np.abs(expected), initial=0.0)), 1.0)
    backend.assert_close(grad, expected, rtol=tolerance, atol=tolerance * scale, err_msg="gradient map")


@pytest.mark.parametrize("regularizer", [None, "var", "kl", "js"])
@pytest.mark.parametrize("shape,ndim", [((4, 5, 16, 12), 2), ((2, 3, 4, 8, 8), 3), ((6, 40), 1)])
def test_value_and_grad_takes_the_blocked_passes_and_equals_the_array_api_kernels(backend, regularizer, shape, ndim):
    rng = np.random.default_rng(5)
    logits = backend.asarray(rng.normal(size=shape) * 3)
    target = backend.asarray(rng.uniform(-0.8, 0.8, size=(*shape[: len(shape) - ndim], ndim)))
    options = dict(ndim=ndim, regularizer=regularizer, sigma=0.8, temperature=0.7)
    assert type(select_kernels(logits)) is NumPyKernels
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, **options)
    with dsnt_core.use_kernels("array-api"):
        expected_loss, expected_grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, **options)
    backend.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    backend.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
