"""Per-keypoint confidence (``heatmap_confidence``) and the new options of ``dsnt_torch.DSNTHead``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _support import dtype_name

import dsnt_core

METHODS = ("peak", "spread", "entropy")


def one_hot(shape, index):
    heatmap = np.zeros(shape)
    heatmap[index] = 1.0
    return heatmap


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_all_mass_on_one_pixel_scores_one_and_the_uniform_heatmap_its_floor(backend, ndim):
    spatial = (4, 3, 5, 2)[:ndim]
    n = math.prod(spatial)
    heatmaps = np.stack([one_hot(spatial, (1,) * ndim), np.full(spatial, 1 / n)])
    h = backend.asarray(heatmaps)
    rms_uniform = math.sqrt(np.mean([(m * m - 1) / 12 for m in spatial]))  # a uniform axis of m pixels
    expected = {"peak": [1.0, 1 / n], "spread": [1.0, 1 / (1 + rms_uniform)], "entropy": [1.0, 0.0]}
    for method in METHODS:
        scores = dsnt_core.heatmap_confidence(h, ndim=ndim, method=method)
        backend.assert_close(scores, expected[method], like=h, atol=1e-12, err_msg=method)


def test_a_single_pixel_heatmap_is_certain(backend):
    h = backend.asarray(np.ones((3, 1, 1)))
    for method in METHODS:
        backend.assert_close(dsnt_core.heatmap_confidence(h, method=method), np.ones(3), like=h, err_msg=method)


def test_scores_fall_as_the_heatmap_widens(backend):
    centre = backend.asarray(np.zeros((6, 2)))
    sigmas = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    heatmaps = dsnt_core.gaussian_heatmaps(centre, (33, 33), backend.asarray(np.repeat(sigmas, 2).reshape(6, 2)))
    for method in METHODS:
        scores = backend.to_numpy(dsnt_core.heatmap_confidence(heatmaps, method=method))
        assert (np.diff(scores) < 0).all(), (method, scores)
    spread = backend.to_numpy(dsnt_core.heatmap_confidence(heatmaps, method="spread"))
    # a heatmap of sigma pixels scores 1 / (1 + sigma): the documented threshold rule
    np.testing.assert_allclose(spread[1:], 1 / (1 + np.asarray(sigmas[1:])), rtol=1e-3)
    peak = backend.to_numpy(dsnt_core.heatmap_confidence(heatmaps))
    np.testing.assert_allclose(peak[2:], 1 / (2 * np.pi * np.asarray(sigmas[2:]) ** 2), rtol=2e-3)  # 2-D Gaussian peak


def test_spread_sees_two_distant_modes_and_entropy_does_not(backend):
    two_modes = np.zeros((1, 16, 16))
    two_modes[0, 2, 2] = two_modes[0, 13, 13] = 0.5
    close_modes = np.zeros((1, 16, 16))
    close_modes[0, 7, 7] = close_modes[0, 7, 8] = 0.5
    h = backend.asarray(np.concatenate([two_modes, close_modes]))
    spread = backend.to_numpy(dsnt_core.heatmap_confidence(h, method="spread"))
    entropy = backend.to_numpy(dsnt_core.heatmap_confidence(h, method="entropy"))
    np.testing.assert_allclose(
        spread, [1 / (1 + 5.5), 1 / (1 + math.sqrt(0.125))]
    )  # std 5.5 px per axis; 0.5 px in x only
    np.testing.assert_allclose(entropy[0], entropy[1])  # entropy cannot tell the distance


def test_nan_is_never_hidden(backend):
    h = np.full((2, 4, 4), 1 / 16)
    h[0, 1, 1] = np.nan
    scores = {m: backend.to_numpy(dsnt_core.heatmap_confidence(backend.asarray(h), method=m)) for m in METHODS}
    for method, values in scores.items():
        assert np.isnan(values[0]) and np.isfinite(values[1]), method


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.backends("torch", "jax")
def test_sixteen_bit(backend, dtype):
    heatmaps = dsnt_core.gaussian_heatmaps(backend.asarray(np.zeros((3, 2))), (16, 16), 1.5)
    for method in METHODS:
        low = dsnt_core.heatmap_confidence(backend.asarray(backend.to_numpy(heatmaps), dtype), method=method)
        assert dtype_name(low.dtype) == dtype
        expected = backend.to_numpy(dsnt_core.heatmap_confidence(heatmaps, method=method))
        np.testing.assert_allclose(backend.to_numpy(low), expected, rtol=2e-2, err_msg=method)


def test_bad_method_and_shapes():
    with pytest.raises(ValueError, match=r"method must be one of \['peak', 'spread', 'entropy'\], got 'max'"):
        dsnt_core.heatmap_confidence(np.ones((4, 4)) / 16, method="max")
    with pytest.raises(ValueError, match=r"heatmaps must have at least ndim=3 axes"):
        dsnt_core.heatmap_confidence(np.ones((4, 4)) / 16, ndim=3)
    with pytest.raises(TypeError, match=r"heatmaps must have a real floating dtype"):
        dsnt_core.heatmap_confidence(np.ones((4, 4), dtype=int))


# ------------------------------------------------------------------------------- the torch head


@pytest.mark.backends("torch")
class TestTorchHead:
    def test_outputs_in_order(self, backend):
        torch = backend.library
        from dsnt_torch import DSNTHead

        logits = torch.randn(2, 3, 8, 9, dtype=torch.float64, device=backend.device)
        coords, heatmaps, scores = DSNTHead(return_heatmaps=True, return_confidence=True, confidence="entropy")(logits)
        backend.assert_close(coords, dsnt_core.soft_argmax(logits))
        backend.assert_close(heatmaps, dsnt_core.flat_softmax(logits))
        backend.assert_close(scores, dsnt_core.heatmap_confidence(heatmaps, method="entropy"))
        coords_only, peak = DSNTHead(return_confidence=True)(logits)
        backend.assert_close(peak, heatmaps.amax(dim=(-2, -1)))
        assert isinstance(DSNTHead()(logits), torch.Tensor)

    def test_pixel_units_with_gradients(self, backend):
        torch = backend.library
        from dsnt_torch import DSNTHead

        logits = torch.randn(2, 3, 8, 9, dtype=torch.float64, requires_grad=True, device=backend.device)
        coords = DSNTHead(units="pixels")(logits)
        expected = dsnt_core.dsnt(dsnt_core.flat_softmax(logits), units="pixels")
        backend.assert_close(coords, expected.detach(), like=logits, rtol=1e-12, atol=1e-12)
        cotangent = torch.randn_like(coords)
        (grad,) = torch.autograd.grad(coords, logits, cotangent)
        (reference,) = torch.autograd.grad(expected, logits, cotangent)
        backend.assert_close(grad, reference, rtol=1e-10, atol=1e-13)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
    def test_pixel_units_are_exact_at_pixel_centres_in_16_bit(self, backend, dtype):
        torch = backend.library
        from dsnt_torch import DSNTHead

        for h, w in ((5, 5), (3, 7), (17, 12), (64, 48)):
            logits = torch.full((h * w, h, w), -1e4, device=backend.device)
            index = torch.arange(h * w, device=backend.device)
            logits[index, index // w, index % w] = 0.0  # heatmap k peaked on pixel k
            coords = DSNTHead(units="pixels")(logits.to(backend.dtype(dtype)))
            assert dtype_name(coords.dtype) == dtype
            expected = torch.stack([index % w, index // w], -1).to(backend.dtype(dtype))
            assert torch.equal(coords, expected), (h, w)

    def test_options_are_checked(self, backend):
        from dsnt_torch import DSNTHead

        with pytest.raises(ValueError, match=r"units must be one of \['normalized', 'pixels'\], got 'px'"):
            DSNTHead(units="px")
        with pytest.raises(ValueError, match=r"confidence must be one of \['peak', 'spread', 'entropy'\]"):
            DSNTHead(confidence="max")

    def test_export_and_fx_trace(self, backend):
        torch = backend.library
        from dsnt_torch import DSNTHead

        head = DSNTHead(in_channels=4, num_points=3, units="pixels", return_confidence=True, confidence="spread")
        head = head.to(backend.device)
        x = torch.randn(2, 4, 8, 8, device=backend.device)
        expected = head(x)
        exported = torch.export.export(head, (x,))
        for got, want in zip(exported.module()(x), expected):
            backend.assert_close(got, want, rtol=1e-6, atol=1e-6)
        traced = torch.fx.symbolic_trace(head)
        for got, want in zip(traced(x), expected):
            backend.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- the documentation's code

DOC_PAGES = ("concepts.md", "migrating.md")


def _doc_blocks():
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in DOC_PAGES:
        for index, block in enumerate(re.findall(r"```python\n(.*?)```", (docs / page).read_text(), flags=re.S)):
            yield pytest.param(block, id=f"{page}-{index}")


@pytest.mark.parametrize("code", list(_doc_blocks()))
def test_documented_code_runs(code):
    """The python blocks of the pages this work documents (tests/test_docs.py runs README and getting-started)."""
    import importlib.util
    import re

    for module in re.findall(r"^\s*(?:import|from) (\w+)", code, flags=re.M):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    exec(compile(code, "<docs>", "exec"), {})
