"""The NumPy soft-argmax fast path (unshifted blocked exp + matmul) against the generic rule."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import numpy as xp
from hypothesis import given
from hypothesis import strategies as st
from strategies import logits_arrays

import dsnt_core
from dsnt_core import _fused_rules, _numpy_kernels


def _generic(namespace, logits, ndim, temperature):
    return _fused_rules.soft_argmax_forward(namespace, logits, ndim, temperature)


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=30.0),
    temperature=st.sampled_from([1.0, 0.3, 4.0]),
    dtype=st.sampled_from(["float64", "float32", "float16"]),
    extreme=st.sampled_from([None, 1e4, 95.0, -200.0, -np.inf, np.nan]),
)
def test_fast_path_equals_the_generic_rule(data, case, temperature, dtype, extreme, monkeypatch):
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
    monkeypatch.setattr(_numpy_kernels, "BLOCK_BYTES", block_rows * flat[0].size * np.dtype(dtype).itemsize)
    logits = values.astype(dtype)
    coords, residuals = _numpy_kernels.soft_argmax_forward(xp, logits, ndim, temperature)
    expected, expected_residuals = _generic(xp, logits, ndim, temperature)
    assert coords.dtype == logits.dtype and coords.shape == expected.shape
    tolerance = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3}[dtype]
    np.testing.assert_allclose(coords.astype(float), expected.astype(float), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(residuals["lse"], expected_residuals["lse"], rtol=tolerance, atol=tolerance)


def test_public_functions_take_the_fast_path_and_stay_exact():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 7, 32, 24)) * 3
    logits[0, 0] += 500.0  # too large for the unshifted sum: recomputed
    coords = dsnt_core.soft_argmax(logits)
    expected, _ = _generic(xp, logits, 2, 1.0)
    np.testing.assert_allclose(coords, expected, rtol=1e-12, atol=1e-12)
    cotangent = rng.normal(size=coords.shape)
    grad = dsnt_core.soft_argmax_vjp(logits, cotangent)
    _, residuals = _generic(xp, logits, 2, 1.0)
    expected_grad = _fused_rules.soft_argmax_backward(xp, logits, residuals, cotangent, 2, 1.0)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(0, 4, 4), (3, 0, 5)])
def test_empty_batches_and_heatmaps_go_to_the_generic_rule(shape):
    logits = np.zeros(shape)
    if shape[1] == 0:
        with pytest.raises(ValueError):
            dsnt_core.soft_argmax(logits)
    else:
        assert dsnt_core.soft_argmax(logits).shape == (0, 2)
