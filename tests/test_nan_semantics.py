"""NaN and infinity semantics of the heatmap operations, property-tested on every backend and kernel.

The contract (docs/concepts.md, "NaN and infinities"):

* a NaN anywhere in a heatmap's logits makes that heatmap NaN: its softmax, its coordinates,
  its gradient, and so its loss terms and the total loss; the other heatmaps are unaffected
  (the same values and gradients as without the NaN);
* a ``+inf`` logit does the same;
* a heatmap whose logits are all ``-inf`` is uniform (coordinates at the centre, a finite loss)
  and gets a zero gradient; single ``-inf`` entries are pixels of probability 0.

Checked for `soft_argmax` (and its gradient), `flat_softmax`, `dsnt_loss` with every regulariser
(its gradient from the library's autodiff, or `dsnt_loss_value_and_grad`) and
`dsnt_loss_value_and_grad` itself, on NumPy, array-api-strict, PyTorch and JAX, under each kernel
implementation that serves them ("array-api", "numpy", "torch-native" where it builds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dsnt_core

pytestmark = [
    pytest.mark.backends("numpy", "array_api_strict", "torch", "jax"),
    pytest.mark.kernels("array-api", "numpy", "torch-native"),
    # NumPy warns about the NaN it is asked to propagate.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

REGULARIZERS = ("js", "kl", "var", None)
CLOSE = {"rtol": 1e-9, "atol": 1e-12}
# (shape, ndim): 1-, 2- and 3-D heatmaps, a single-pixel one among them. A few fixed shapes keep
# JAX's per-shape compilations cached across examples (values, holes and poison are drawn).
SHAPES = (((3, 5), 1), ((3, 1, 1), 2), ((3, 4, 3), 2), ((2, 2, 3, 2), 3))


@st.composite
def heatmap_stacks(draw):
    """(logits, ndim, index): finite float64 logits, some pixels ``-inf``, and one heatmap's index.

    Every heatmap keeps at least one finite logit.
    """
    shape, ndim = draw(st.sampled_from(SHAPES))
    count = shape[0]
    logits = draw(hnp.arrays(np.float64, shape, elements=st.floats(-30, 30, width=64)))
    holes = draw(hnp.arrays(np.bool_, shape))
    holes.reshape(count, -1)[:, 0] = False
    logits[holes] = -math.inf
    return logits, ndim, draw(st.integers(0, count - 1))


@st.composite
def poisoned_stacks(draw):
    """(clean, poisoned, ndim, index): ``poisoned`` has a NaN or ``+inf`` at one pixel of heatmap ``index``."""
    logits, ndim, index = draw(heatmap_stacks())
    pixel = tuple(draw(st.integers(0, n - 1)) for n in logits.shape[1:])
    poisoned = logits.copy()
    poisoned[(index, *pixel)] = draw(st.sampled_from([math.nan, math.inf]))
    return logits, poisoned, ndim, index


def _others(array: np.ndarray, index: int) -> np.ndarray:
    return np.delete(array, index, axis=0)


def _coords_and_grad(backend, logits, ndim, cotangent):
    """``soft_argmax`` and the gradient of ``sum(cotangent * coords)``: autodiff where the library has it."""
    z, ct = backend.asarray(logits), backend.asarray(cotangent)
    if backend.autodiff:
        coords, grad = backend.value_and_grad(lambda x: dsnt_core.soft_argmax(x, ndim=ndim), z, cotangent=ct, jit=False)
    else:
        coords, grad = dsnt_core.soft_argmax(z, ndim=ndim), dsnt_core.soft_argmax_vjp(z, ct, ndim=ndim)
    return backend.to_numpy(coords), backend.to_numpy(grad)


def _loss_and_grads(backend, logits, target, ndim, regularizer):
    """The loss and its gradient, from `dsnt_loss_value_and_grad` and (where there is one) from autodiff."""
    z, t = backend.asarray(logits), backend.asarray(target)
    options = {"ndim": ndim, "regularizer": regularizer, "sigma": 0.7}
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(z, t, **options)
    results = [("dsnt_loss_value_and_grad", backend.to_numpy(loss), backend.to_numpy(grad))]
    if backend.autodiff:
        loss, grad = backend.value_and_grad(lambda x: dsnt_core.dsnt_loss(x, t, **options), z, jit=False)
        results.append(("autodiff of dsnt_loss", backend.to_numpy(loss), backend.to_numpy(grad)))
    return results


@given(data=poisoned_stacks(), seed=st.integers(0, 2**16))
def test_a_nan_or_inf_logit_makes_only_its_heatmap_nan_in_soft_argmax(backend, kernels, data, seed):
    clean, poisoned, ndim, index = data
    cotangent = np.random.default_rng(seed).normal(size=(clean.shape[0], ndim))
    coords, grad = _coords_and_grad(backend, poisoned, ndim, cotangent)
    clean_coords, clean_grad = _coords_and_grad(backend, clean, ndim, cotangent)
    assert np.isnan(coords[index]).all(), f"coordinates of the poisoned heatmap: {coords[index]}"
    assert np.isnan(grad[index]).all(), "the gradient of the poisoned heatmap must be NaN everywhere"
    np.testing.assert_allclose(_others(coords, index), _others(clean_coords, index), **CLOSE)
    np.testing.assert_allclose(_others(grad, index), _others(clean_grad, index), **CLOSE)
    assert np.isfinite(_others(grad, index)).all()


@given(data=poisoned_stacks())
def test_a_nan_or_inf_logit_makes_only_its_heatmap_nan_in_flat_softmax(backend, kernels, data):
    clean, poisoned, ndim, index = data
    heatmaps = backend.to_numpy(dsnt_core.flat_softmax(backend.asarray(poisoned), ndim=ndim))
    clean_heatmaps = backend.to_numpy(dsnt_core.flat_softmax(backend.asarray(clean), ndim=ndim))
    assert np.isnan(heatmaps[index]).all()
    np.testing.assert_allclose(_others(heatmaps, index), _others(clean_heatmaps, index), **CLOSE)


@given(data=poisoned_stacks(), regularizer=st.sampled_from(REGULARIZERS), seed=st.integers(0, 2**16))
def test_a_nan_or_inf_logit_makes_the_loss_nan_and_only_its_heatmaps_gradient(
    backend, kernels, data, regularizer, seed
):
    clean, poisoned, ndim, index = data
    target = np.random.default_rng(seed).uniform(-0.9, 0.9, size=(clean.shape[0], ndim))
    clean_results = _loss_and_grads(backend, clean, target, ndim, regularizer)
    for (route, loss, grad), (_, clean_loss, clean_grad) in zip(
        _loss_and_grads(backend, poisoned, target, ndim, regularizer), clean_results
    ):
        assert np.isnan(loss), f"{route}: the total loss must be NaN, got {loss}"
        assert np.isfinite(clean_loss), f"{route}: the clean loss must be finite, got {clean_loss}"
        assert np.isnan(grad[index]).all(), f"{route}: the poisoned heatmap's gradient must be NaN everywhere"
        np.testing.assert_allclose(_others(grad, index), _others(clean_grad, index), err_msg=route, **CLOSE)


def _with_heatmap(logits: np.ndarray, index: int, value: float) -> np.ndarray:
    result = logits.copy()
    result[index] = value
    return result


@given(data=heatmap_stacks(), seed=st.integers(0, 2**16))
def test_an_all_minus_inf_heatmap_is_uniform_with_a_zero_gradient_in_soft_argmax(backend, kernels, data, seed):
    logits, ndim, index = data
    cotangent = np.random.default_rng(seed).normal(size=(logits.shape[0], ndim))
    coords, grad = _coords_and_grad(backend, _with_heatmap(logits, index, -math.inf), ndim, cotangent)
    clean_coords, clean_grad = _coords_and_grad(backend, logits, ndim, cotangent)
    np.testing.assert_allclose(coords[index], np.zeros(ndim), atol=1e-12)  # the centre: a uniform heatmap
    assert (grad[index] == 0).all(), f"the all -inf heatmap's gradient must be 0, got {grad[index]}"
    np.testing.assert_allclose(_others(coords, index), _others(clean_coords, index), **CLOSE)
    np.testing.assert_allclose(_others(grad, index), _others(clean_grad, index), **CLOSE)


@given(data=heatmap_stacks())
def test_an_all_minus_inf_heatmap_is_uniform_in_flat_softmax(backend, kernels, data):
    logits, ndim, index = data
    heatmaps = backend.to_numpy(
        dsnt_core.flat_softmax(backend.asarray(_with_heatmap(logits, index, -math.inf)), ndim=ndim)
    )
    np.testing.assert_allclose(heatmaps[index], np.full(logits.shape[1:], 1 / math.prod(logits.shape[1:])))
    assert np.isfinite(heatmaps).all()
    assert (heatmaps[np.isneginf(logits) & (np.arange(logits.shape[0]) != index).reshape(-1, *[1] * ndim)] == 0).all()


@given(data=heatmap_stacks(), regularizer=st.sampled_from(REGULARIZERS), seed=st.integers(0, 2**16))
def test_an_all_minus_inf_heatmap_has_a_finite_loss_and_a_zero_gradient(backend, kernels, data, regularizer, seed):
    logits, ndim, index = data
    target = np.random.default_rng(seed).uniform(-0.9, 0.9, size=(logits.shape[0], ndim))
    # A uniform heatmap has the same loss whether it comes from all -inf or all 0 logits.
    uniform = _loss_and_grads(backend, _with_heatmap(logits, index, 0.0), target, ndim, regularizer)
    for (route, loss, grad), (_, uniform_loss, uniform_grad) in zip(
        _loss_and_grads(backend, _with_heatmap(logits, index, -math.inf), target, ndim, regularizer), uniform
    ):
        assert np.isfinite(loss), f"{route}: the loss must be finite, got {loss}"
        np.testing.assert_allclose(loss, uniform_loss, err_msg=route, **CLOSE)
        assert (grad[index] == 0).all(), f"{route}: the all -inf heatmap's gradient must be 0, got {grad[index]}"
        np.testing.assert_allclose(_others(grad, index), _others(uniform_grad, index), err_msg=route, **CLOSE)
        holes = np.isneginf(_others(logits, index))
        assert (_others(grad, index)[holes] == 0).all(), f"{route}: a -inf pixel must get a zero gradient"
