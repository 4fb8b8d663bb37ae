"""Properties of the core that must hold on every backend, with shapes, dtypes and values drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _support import NORMALIZATION_METHODS, REGULARIZERS
from hypothesis import given
from hypothesis import strategies as st
from strategies import logits_arrays, targets_for

import dsnt_core


def one_hot(shape, index):
    heatmap = np.zeros(shape)
    heatmap[index] = 1.0
    return heatmap


@given(
    data=logits_arrays(),
    method=st.sampled_from(NORMALIZATION_METHODS),
    temperature=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_normalized_heatmaps_are_distributions(backend, data, method, temperature):
    logits, ndim = data
    z = backend.asarray(logits)
    heatmaps = dsnt_core.normalize_heatmaps(z, ndim=ndim, method=method, temperature=temperature)
    assert (backend.to_numpy(heatmaps) >= 0).all()
    total = backend.xp.sum(heatmaps, axis=tuple(range(-ndim, 0)))
    backend.assert_close(total, np.ones(logits.shape[: logits.ndim - ndim]), like=z)
    reference = dsnt_core.normalize_heatmaps(logits, ndim=ndim, method=method, temperature=temperature)
    backend.assert_close(heatmaps, reference, like=z, rtol=1e-10, atol=1e-14)


@given(data=logits_arrays(), shift=st.floats(-50, 50))
def test_softmax_is_shift_invariant(backend, data, shift):
    logits, ndim = data
    z = backend.asarray(logits)
    shifted = dsnt_core.flat_softmax(backend.asarray(logits + shift), ndim=ndim)
    backend.assert_close(shifted, dsnt_core.flat_softmax(z, ndim=ndim), like=z, rtol=1e-9, atol=1e-12)


@given(data=st.data(), ndim=st.integers(1, 3))
def test_one_hot_heatmap_gives_its_pixel_centre(backend, data, ndim):
    spatial = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    index = tuple(data.draw(st.integers(0, n - 1)) for n in spatial)
    heatmap = backend.asarray(one_hot(spatial, index))
    expected = [(2 * i + 1 - n) / n for i, n in zip(reversed(index), reversed(spatial))]
    backend.assert_close(dsnt_core.dsnt(heatmap, ndim=ndim), np.asarray(expected), like=heatmap, atol=1e-15)


@given(data=logits_arrays())
def test_dsnt_stays_inside_the_open_square(backend, data):
    logits, ndim = data
    coords = dsnt_core.soft_argmax(backend.asarray(logits), ndim=ndim)
    assert tuple(coords.shape) == (*logits.shape[: logits.ndim - ndim], ndim)
    assert (np.abs(backend.to_numpy(coords)) < 1).all()


@given(data=st.data())
def test_shifting_a_heatmap_shifts_the_coordinate(backend, data):
    width = data.draw(st.integers(2, 12))
    k = data.draw(st.integers(1, width - 1))
    weights = data.draw(st.lists(st.floats(0.01, 1.0), min_size=width - k, max_size=width - k))
    base = np.zeros((3, width))
    base[1, : width - k] = weights
    base /= base.sum()
    shifted = np.roll(base, k, axis=1)
    a = dsnt_core.dsnt(backend.asarray(base))
    b = dsnt_core.dsnt(backend.asarray(shifted))
    backend.assert_close(b - a, np.asarray([2 * k / width, 0.0]), atol=1e-12)


@given(data=logits_arrays(), axis=st.integers(0, 2))
def test_flipping_an_axis_negates_that_coordinate(backend, data, axis):
    logits, ndim = data
    axis = axis % ndim
    flipped = np.flip(logits, axis=logits.ndim - 1 - axis).copy()
    a = backend.to_numpy(dsnt_core.soft_argmax(backend.asarray(logits), ndim=ndim))
    expected = a.copy()
    expected[..., axis] = -expected[..., axis]
    backend.assert_close(dsnt_core.soft_argmax(backend.asarray(flipped), ndim=ndim), expected, atol=1e-12)


@given(data=logits_arrays(ndim=2))
def test_transposing_swaps_x_and_y(backend, data):
    logits, _ = data
    a = backend.to_numpy(dsnt_core.soft_argmax(backend.asarray(logits)))
    b = dsnt_core.soft_argmax(backend.asarray(np.swapaxes(logits, -1, -2).copy()))
    backend.assert_close(b, a[..., ::-1], atol=1e-12)


@given(data=logits_arrays())
def test_leading_axes_are_independent(backend, data):
    logits, ndim = data
    if logits.ndim == ndim:
        logits = logits[None]
    stack = dsnt_core.soft_argmax(backend.asarray(logits), ndim=ndim)
    first = backend.to_numpy(dsnt_core.soft_argmax(backend.asarray(logits[:1].copy()), ndim=ndim))
    perturbed = logits.copy()
    perturbed[1:] = perturbed[1:] * 2.0 - 1.0
    again = dsnt_core.soft_argmax(backend.asarray(perturbed), ndim=ndim)
    backend.assert_close(stack[:1, ...], first, atol=1e-12)
    backend.assert_close(again[:1, ...], first, atol=1e-12)


@given(data=st.data(), sigma=st.floats(0.3, 3.0))
def test_divergences_are_bounded_and_vanish_at_the_target(backend, data, sigma):
    logits, ndim = data.draw(logits_arrays(min_side=2))
    target = data.draw(targets_for(logits.shape, ndim))
    heatmaps = dsnt_core.flat_softmax(backend.asarray(logits), ndim=ndim)
    t = backend.asarray(target)
    kl = backend.to_numpy(dsnt_core.kl_regularizer(heatmaps, t, sigma))
    js = backend.to_numpy(dsnt_core.js_regularizer(heatmaps, t, sigma))
    assert (kl >= -1e-12).all()
    assert ((js >= -1e-12) & (js <= math.log(2) + 1e-12)).all()
    gauss = dsnt_core.gaussian_heatmaps(t, logits.shape[-ndim:], sigma)
    backend.assert_close(dsnt_core.kl_regularizer(gauss, t, sigma), np.zeros(kl.shape), like=t, atol=1e-12)
    backend.assert_close(dsnt_core.js_regularizer(gauss, t, sigma), np.zeros(js.shape), like=t, atol=1e-12)


@given(data=st.data())
def test_gaussian_dsnt_is_its_mean_away_from_the_borders(backend, data):
    ndim = data.draw(st.integers(1, 3))
    size = tuple(data.draw(st.lists(st.integers(24, 40), min_size=ndim, max_size=ndim)))
    sigma = data.draw(st.floats(1.0, 2.0))  # below ~1 pixel, sampling biases the mean
    # Keep the mean 5 sigma (in pixels) from every border: the truncated tails are negligible.
    margin = [1 - 2 * (5 * sigma + 1) / n for n in reversed(size)]
    means = np.asarray([data.draw(st.floats(-m, m)) for m in margin])
    gauss = dsnt_core.gaussian_heatmaps(backend.asarray(means), size, sigma)
    backend.assert_close(dsnt_core.dsnt(gauss, ndim=ndim), means, atol=1e-6)
    variance = dsnt_core.heatmap_variance(gauss, ndim=ndim)
    backend.assert_close(variance, np.asarray([(2 * sigma / n) ** 2 for n in reversed(size)]), rtol=1e-2)


@given(data=st.data(), regularizer=st.sampled_from(REGULARIZERS))
def test_results_agree_with_numpy_on_the_array_api_kernels(backend, data, regularizer):
    """Every backend against one reference: NumPy arrays through the array-API kernels (so that the
    NumPy backend, on its own kernels by default, is compared with the other implementation)."""
    logits, ndim = data.draw(logits_arrays(min_side=2))
    target = data.draw(targets_for(logits.shape, ndim))
    options = dict(ndim=ndim, regularizer=regularizer, sigma=1.0)
    with dsnt_core.use_kernels("array-api"):
        reference_coords = dsnt_core.soft_argmax(logits, ndim=ndim)
        reference_loss = dsnt_core.dsnt_loss(logits, target, **options)
    z, t = backend.asarray(logits), backend.asarray(target)
    backend.assert_close(dsnt_core.soft_argmax(z, ndim=ndim), reference_coords, like=z, rtol=1e-10, atol=1e-12)
    backend.assert_close(dsnt_core.dsnt_loss(z, t, **options), reference_loss, like=z, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_conversions_round_trip(backend, align_corners):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 9, size=(4, 3, 2))
    size = (10, 7)
    normalized = dsnt_core.pixel_to_normalized(backend.asarray(pixels), size, align_corners=align_corners)
    back = dsnt_core.normalized_to_pixel(normalized, size, align_corners=align_corners)
    backend.assert_close(back, pixels, atol=1e-12)
    centre = dsnt_core.pixel_to_normalized(backend.asarray(np.asarray([3.0, 4.5])), size)
    backend.assert_close(centre, np.asarray([0.0, 0.0]), atol=1e-15)


def test_normalized_linspace_matches_both_conventions(backend):
    device = backend.device if backend.gpu else None  # the library's default device on the CPU entries
    centres = dsnt_core.normalized_linspace(4, xp=backend.xp, device=device)
    corners = dsnt_core.normalized_linspace(5, xp=backend.xp, align_corners=True, device=device)
    default = backend.xp.__array_namespace_info__().default_dtypes()["real floating"]
    backend.assert_close(centres, np.asarray([-0.75, -0.25, 0.25, 0.75]), dtype=default, atol=1e-15)
    backend.assert_close(corners, np.linspace(-1, 1, 5), dtype=default, atol=1e-15)
    single = dsnt_core.normalized_linspace(1, xp=backend.xp, align_corners=True, device=device)
    backend.assert_close(single, np.asarray([0.0]), dtype=default)
