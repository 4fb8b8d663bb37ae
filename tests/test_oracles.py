"""Differential tests against the peers: dsntnn (same conventions) and kornia (corner grid)."""

from __future__ import annotations

import numpy as np
import pytest
from _support import REGULARIZERS
from hypothesis import given
from hypothesis import strategies as st

import dsnt_core

torch = pytest.importorskip("torch", reason="the oracles are PyTorch libraries")
dsntnn = pytest.importorskip("dsntnn", reason="dsntnn is not installed (test extra)")

# Results are torch tensors checked against the peers' tensors: library, dtype, device, shape, values.
# The peers' tensors are made on the CPU (the references), so the GPU entry is left out.
pytestmark = pytest.mark.backends("torch", gpu=False)


@st.composite
def oracle_case(draw, ndim=None):
    """float64 logits (B, L, *spatial), rectangular, targets (B, L, ndim) and a mask (B, L)."""
    ndim = draw(st.integers(1, 3)) if ndim is None else ndim
    batch, points = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(2, 9), min_size=ndim, max_size=ndim)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(scale=draw(st.floats(0.1, 6.0)), size=(batch, points, *spatial)))
    target = torch.from_numpy(rng.uniform(-0.9, 0.9, size=(batch, points, ndim)))
    mask = torch.from_numpy((rng.uniform(size=(batch, points)) < 0.7).astype(np.float64))
    # sigma >= 1.2 * sqrt(ndim) pixels keeps the Gaussian above 1e-14 on these grids: below
    # that, dsntnn's log(q + 1e-24) departs from the exact log that dsnt-core uses.
    return logits, target, mask, ndim, draw(st.floats(1.2 * ndim**0.5, 3.5))


@given(case=oracle_case())
def test_heatmaps_coordinates_and_gaussians_match_dsntnn(backend, case):
    logits, target, _, ndim, sigma = case
    heatmaps = dsntnn.flat_softmax(logits)
    backend.assert_close(dsnt_core.flat_softmax(logits, ndim=ndim), heatmaps)
    backend.assert_close(dsnt_core.dsnt(heatmaps, ndim=ndim), dsntnn.dsnt(heatmaps))
    backend.assert_close(dsnt_core.soft_argmax(logits, ndim=ndim), dsntnn.dsnt(heatmaps))
    size = tuple(logits.shape[2:])
    backend.assert_close(
        dsnt_core.gaussian_heatmaps(target, size, sigma),
        dsntnn.make_gauss(target, size, sigma),
    )
    backend.assert_close(
        dsnt_core.gaussian_heatmaps(target, size, sigma, normalize=False),
        dsntnn.make_gauss(target, size, sigma, normalize=False),
    )


@given(case=oracle_case())
def test_losses_and_regularizers_match_dsntnn(backend, case):
    logits, target, mask, ndim, sigma = case
    heatmaps = dsntnn.flat_softmax(logits)
    coords = dsntnn.dsnt(heatmaps)
    backend.assert_close(dsnt_core.euclidean_loss(coords, target), dsntnn.euclidean_losses(coords, target))
    pairs = [
        (dsnt_core.js_regularizer(heatmaps, target, sigma), dsntnn.js_reg_losses(heatmaps, target, sigma)),
        (dsnt_core.kl_regularizer(heatmaps, target, sigma), dsntnn.kl_reg_losses(heatmaps, target, sigma)),
        (
            dsnt_core.variance_regularizer(heatmaps, sigma, ndim=ndim),
            dsntnn.variance_reg_losses(heatmaps, sigma),
        ),
    ]
    for ours, theirs in pairs:
        backend.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    losses = dsntnn.euclidean_losses(coords, target)
    backend.assert_close(dsnt_core.average_loss(losses, mask=mask), dsntnn.average_loss(losses, mask))
    backend.assert_close(dsnt_core.average_loss(losses), dsntnn.average_loss(losses))


DSNTNN_REGULARIZERS = {
    "js": lambda h, t, s: dsntnn.js_reg_losses(h, t, s),
    "kl": lambda h, t, s: dsntnn.kl_reg_losses(h, t, s),
    "var": lambda h, t, s: dsntnn.variance_reg_losses(h, s),
    None: lambda h, t, s: 0.0,
}


@given(case=oracle_case(), regularizer=st.sampled_from(REGULARIZERS), use_mask=st.booleans())
def test_dsnt_loss_and_its_gradient_match_dsntnn(backend, case, regularizer, use_mask):
    logits, target, mask, ndim, sigma = case
    mask = mask if use_mask else None
    options = dict(sigma=sigma, regularizer=regularizer, reg_weight=0.5, mask=mask, ndim=ndim)
    ours, ours_grad = backend.value_and_grad(lambda z: dsnt_core.dsnt_loss(z, target, **options), logits)

    def dsntnn_loss(z):
        heatmaps = dsntnn.flat_softmax(z)
        regularization = DSNTNN_REGULARIZERS[regularizer](heatmaps, target, sigma)
        return dsntnn.average_loss(dsntnn.euclidean_losses(dsntnn.dsnt(heatmaps), target) + 0.5 * regularization, mask)

    theirs, theirs_grad = backend.value_and_grad(dsntnn_loss, logits)
    backend.assert_close(ours, theirs, like=logits)
    backend.assert_close(ours_grad, theirs_grad, like=logits, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 3)])
def test_pixel_conversions_match_dsntnn(backend, size):
    coords = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, size=(3, 2)))
    backend.assert_close(
        dsnt_core.normalized_to_pixel(coords, size),
        dsntnn.normalized_to_pixel_coordinates(coords, size),
    )
    backend.assert_close(
        dsnt_core.pixel_to_normalized(coords, size),
        dsntnn.pixel_to_normalized_coordinates(coords, size),
    )


class TestKornia:
    """kornia uses corner-aligned coordinates and KL(target || pred); 0.9 divides by the temperature."""

    @pytest.fixture(autouse=True)
    def kornia(self):
        return pytest.importorskip("kornia", reason="kornia is not installed (test extra)")

    @given(case=oracle_case(ndim=2), temperature=st.floats(0.2, 5.0))
    def test_soft_argmax_with_the_corner_convention(self, backend, kornia, case, temperature):
        logits = case[0]
        if min(logits.shape[-2:]) < 2:
            return
        subpix = kornia.geometry.subpix
        heatmaps = subpix.spatial_softmax2d(logits, temperature=temperature)
        ours = dsnt_core.flat_softmax(logits, temperature=temperature)
        backend.assert_close(ours, heatmaps)
        backend.assert_close(
            dsnt_core.dsnt(ours, align_corners=True),
            subpix.spatial_expectation2d(heatmaps, normalized_coordinates=True),
        )
        # The conventions differ by a factor n / (n - 1) per axis.
        w, h = logits.shape[-1], logits.shape[-2]
        scale = torch.tensor([w / (w - 1), h / (h - 1)], dtype=torch.float64)
        backend.assert_close((dsnt_core.dsnt(ours) * scale), subpix.spatial_expectation2d(heatmaps))

    @given(case=oracle_case(ndim=2))
    def test_gaussians_and_divergences(self, backend, kornia, case):
        logits, target, _, _, sigma = case
        size = tuple(logits.shape[-2:])
        pixel_means = dsnt_core.normalized_to_pixel(target, size)
        corner_means = dsnt_core.pixel_to_normalized(pixel_means, size, align_corners=True)
        corner_std = torch.tensor([2 * sigma / (size[1] - 1), 2 * sigma / (size[0] - 1)], dtype=torch.float64)
        theirs = kornia.geometry.subpix.render_gaussian2d(corner_means, corner_std.expand_as(corner_means), size)
        ours = dsnt_core.gaussian_heatmaps(target, size, sigma)
        backend.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
        heatmaps = dsnt_core.flat_softmax(logits)
        losses = kornia.losses
        backend.assert_close(
            dsnt_core.js_regularizer(heatmaps, target, sigma),
            losses.js_div_loss_2d(heatmaps, ours, reduction="none"),
            atol=1e-12,
        )
        # kornia's kl_div_loss_2d(pred, target) is KL(target || pred): swap the arguments.
        backend.assert_close(
            dsnt_core.kl_regularizer(heatmaps, target, sigma),
            losses.kl_div_loss_2d(ours, heatmaps, reduction="none"),
            atol=1e-12,
        )
