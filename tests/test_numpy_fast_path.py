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
