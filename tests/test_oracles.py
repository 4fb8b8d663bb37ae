"""Differential tests against the peers: dsntnn (same conventions) and kornia (corner grid)."""

from __future__ import annotations

import numpy as np
import pytest
from _support import assert_close
from hypothesis import given
from hypothesis import strategies as st

import dsnt_core

torch = pytest.importorskip("torch", reason="the oracles are PyTorch libraries")
dsntnn = pytest.importorskip("dsntnn", reason="dsntnn is not installed (test extra)")


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
def test_heatmaps_coordinates_and_gaussians_match_dsntnn(case):
    logits, target, _, ndim, sigma = case
    heatmaps = dsntnn.flat_softmax(logits)
    assert_close(dsnt_core.flat_softmax(logits, ndim=ndim).numpy(), heatmaps.numpy())
    assert_close(dsnt_core.dsnt(heatmaps, ndim=ndim).numpy(), dsntnn.dsnt(heatmaps).numpy())
    assert_close(dsnt_core.soft_argmax(logits, ndim=ndim).numpy(), dsntnn.dsnt(heatmaps).numpy())
    size = tuple(logits.shape[2:])
    assert_close(
        dsnt_core.gaussian_heatmaps(target, size, sigma).numpy(),
        dsntnn.make_gauss(target, size, sigma).numpy(),
    )
    assert_close(
        dsnt_core.gaussian_heatmaps(target, size, sigma, normalize=False).numpy(),
        dsntnn.make_gauss(target, size, sigma, normalize=False).numpy(),
    )


@given(case=oracle_case())
def test_losses_and_regularizers_match_dsntnn(case):
    logits, target, mask, ndim, sigma = case
    heatmaps = dsntnn.flat_softmax(logits)
    coords = dsntnn.dsnt(heatmaps)
    assert_close(dsnt_core.euclidean_loss(coords, target).numpy(), dsntnn.euclidean_losses(coords, target).numpy())
    pairs = [
        (dsnt_core.js_regularizer(heatmaps, target, sigma), dsntnn.js_reg_losses(heatmaps, target, sigma)),
        (dsnt_core.kl_regularizer(heatmaps, target, sigma), dsntnn.kl_reg_losses(heatmaps, target, sigma)),
        (
            dsnt_core.variance_regularizer(heatmaps, sigma, ndim=ndim),
            dsntnn.variance_reg_losses(heatmaps, sigma),
        ),
    ]
    for ours, theirs in pairs:
        assert_close(ours.numpy(), theirs.numpy(), rtol=1e-9, atol=1e-12)
    losses = dsntnn.euclidean_losses(coords, target)
    assert_close(dsnt_core.average_loss(losses, mask=mask).numpy(), dsntnn.average_loss(losses, mask).numpy())
    assert_close(dsnt_core.average_loss(losses).numpy(), dsntnn.average_loss(losses).numpy())


REGULARIZERS = {
    "js": lambda h, t, s: dsntnn.js_reg_losses(h, t, s),
    "kl": lambda h, t, s: dsntnn.kl_reg_losses(h, t, s),
    "var": lambda h, t, s: dsntnn.variance_reg_losses(h, s),
    None: lambda h, t, s: 0.0,
}


@given(case=oracle_case(), regularizer=st.sampled_from(["js", "kl", "var", None]), use_mask=st.booleans())
def test_dsnt_loss_and_its_gradient_match_dsntnn(case, regularizer, use_mask):
    logits, target, mask, ndim, sigma = case
    mask = mask if use_mask else None
    ours_logits = logits.clone().requires_grad_()
    ours = dsnt_core.dsnt_loss(
        ours_logits, target, sigma=sigma, regularizer=regularizer, reg_weight=0.5, mask=mask, ndim=ndim
    )
    (ours_grad,) = torch.autograd.grad(ours, ours_logits)
    theirs_logits = logits.clone().requires_grad_()
    heatmaps = dsntnn.flat_softmax(theirs_logits)
    per_point = dsntnn.euclidean_losses(dsntnn.dsnt(heatmaps), target) + 0.5 * REGULARIZERS[regularizer](
        heatmaps, target, sigma
    )
    theirs = dsntnn.average_loss(per_point, mask)
    (theirs_grad,) = torch.autograd.grad(theirs, theirs_logits)
    assert_close(ours.detach().numpy(), theirs.detach().numpy())
    assert_close(ours_grad.numpy(), theirs_grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 3)])
def test_pixel_conversions_match_dsntnn(size):
    coords = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, size=(3, 2)))
    assert_close(
        dsnt_core.normalized_to_pixel(coords, size).numpy(),
        dsntnn.normalized_to_pixel_coordinates(coords, size).numpy(),
    )
    assert_close(
        dsnt_core.pixel_to_normalized(coords, size).numpy(),
        dsntnn.pixel_to_normalized_coordinates(coords, size).numpy(),
    )


class TestKornia:
    """kornia uses corner-aligned coordinates and KL(target || pred); 0.9 divides by the temperature."""

    @pytest.fixture(autouse=True)
    def kornia(self):
        return pytest.importorskip("kornia", reason="kornia is not installed (test extra)")

    @given(case=oracle_case(ndim=2), temperature=st.floats(0.2, 5.0))
    def test_soft_argmax_with_the_corner_convention(self, kornia, case, temperature):
        logits = case[0]
        if min(logits.shape[-2:]) < 2:
            return
        subpix = kornia.geometry.subpix
        heatmaps = subpix.spatial_softmax2d(logits, temperature=temperature)
        ours = dsnt_core.flat_softmax(logits, temperature=temperature)
        assert_close(ours.numpy(), heatmaps.numpy())
        assert_close(
            dsnt_core.dsnt(ours, align_corners=True).numpy(),
            subpix.spatial_expectation2d(heatmaps, normalized_coordinates=True).numpy(),
        )
        # The conventions differ by a factor n / (n - 1) per axis.
        w, h = logits.shape[-1], logits.shape[-2]
        scale = torch.tensor([w / (w - 1), h / (h - 1)], dtype=torch.float64)
        assert_close((dsnt_core.dsnt(ours) * scale).numpy(), subpix.spatial_expectation2d(heatmaps).numpy())

    @given(case=oracle_case(ndim=2))
    def test_gaussians_and_divergences(self, kornia, case):
        logits, target, _, _, sigma = case
        size = tuple(logits.shape[-2:])
        pixel_means = dsnt_core.normalized_to_pixel(target, size)
        corner_means = dsnt_core.pixel_to_normalized(pixel_means, size, align_corners=True)
        corner_std = torch.tensor([2 * sigma / (size[1] - 1), 2 * sigma / (size[0] - 1)], dtype=torch.float64)
        theirs = kornia.geometry.subpix.render_gaussian2d(corner_means, corner_std.expand_as(corner_means), size)
        ours = dsnt_core.gaussian_heatmaps(target, size, sigma)
        assert_close(ours.numpy(), theirs.numpy(), rtol=1e-9, atol=1e-12)
        heatmaps = dsnt_core.flat_softmax(logits)
        losses = kornia.losses
        assert_close(
            dsnt_core.js_regularizer(heatmaps, target, sigma).numpy(),
            losses.js_div_loss_2d(heatmaps, ours, reduction="none").numpy(),
            atol=1e-12,
        )
        # kornia's kl_div_loss_2d(pred, target) is KL(target || pred): swap the arguments.
        assert_close(
            dsnt_core.kl_regularizer(heatmaps, target, sigma).numpy(),
            losses.kl_div_loss_2d(ours, heatmaps, reduction="none").numpy(),
            atol=1e-12,
        )
