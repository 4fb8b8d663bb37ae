"""Parity with the peers: what dsntnn and kornia offer, on every backend (issue 15).

linear_expectation, l1_loss, mse_loss, sharpen_heatmaps, pixel units (``units="pixels"``), any
number of spatial axes in the composed functions, per-point and per-axis ``sigma``, and the
``distance=`` of the composed loss: values against plain NumPy references (float64), the peers
where they have the feature, 16-bit dtypes, devices, and gradients against finite differences
and against autodiff of the written-out formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _support import AUTODIFF, REGULARIZERS, central_differences, dtype_name

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

RNG = np.random.default_rng(15)
SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 5), 4: (2, 3, 4, 5), 5: (2, 2, 3, 2, 3)}
LEADING = (2, 3)


# ------------------------------------------------------------------------------- NumPy references


def along(vector, k, ndim):
    """A 1-D vector of spatial axis ``-1 - k`` (x first) shaped to broadcast against (*spatial)."""
    shape = [1] * ndim
    shape[ndim - 1 - k] = vector.shape[-1]
    return vector.reshape((*vector.shape[:-1], *shape))


def grid(n, units="normalized"):
    j = np.arange(n, dtype=np.float64)
    return j if units == "pixels" else (2 * j + 1 - n) / n


def ref_softmax(z, ndim):
    flat = z.reshape(*z.shape[: z.ndim - ndim], -1)
    e = np.exp(flat - flat.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).reshape(z.shape)


def spatial_axes(ndim):
    return tuple(range(-ndim, 0))


def ref_expectation(p, values, ndim):
    """``E[values_k]`` with 1-D ``values`` in (x, y, ...) order, over the full grid (no marginals)."""
    return np.stack([np.sum(p * along(v, k, ndim), axis=spatial_axes(ndim)) for k, v in enumerate(values)], -1)


def ref_dsnt(p, ndim, units="normalized"):
    spatial = p.shape[-ndim:]
    return ref_expectation(p, [grid(spatial[-1 - k], units) for k in range(ndim)], ndim)


def ref_variance(p, ndim, units="normalized"):
    spatial, mu = p.shape[-ndim:], ref_dsnt(p, ndim, units)
    out = []
    for k in range(ndim):
        centred = along(grid(spatial[-1 - k], units), k, ndim) - mu[..., k].reshape(mu.shape[:-1] + (1,) * ndim)
        out.append(np.sum(p * centred**2, axis=spatial_axes(ndim)))
    return np.stack(out, -1)


def ref_log_gaussian(means, size, sigma):
    """log G for a per-point, per-axis ``sigma`` (broadcast to means.shape), each factor normalised."""
    ndim = len(size)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), means.shape)
    lead = means.shape[:-1]
    total = 0.0
    for k in range(ndim):
        n = size[-1 - k]
        std = (2 * sigma[..., k] / n)[..., None]
        logit = -0.5 * ((grid(n) - means[..., k : k + 1]) / std) ** 2
        logit = (
            logit
            - np.log(np.exp(logit - logit.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logit.max(-1, keepdims=True)
        )
        total = total + logit.reshape(lead + tuple(n if a == ndim - 1 - k else 1 for a in range(ndim)))
    return total


def ref_kl(p, log_g, ndim):
    safe = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * (np.log(safe) - log_g), 0.0), axis=spatial_axes(ndim))


def ref_js(p, log_g, ndim):
    g = np.exp(log_g)
    m = 0.5 * (p + g)
    return 0.5 * ref_kl(p, np.log(m), ndim) + 0.5 * ref_kl(g, np.log(m), ndim)


def ref_var_reg(p, sigma, ndim):
    spatial = p.shape[-ndim:]
    scale = np.asarray([(spatial[-1 - k] / 2) ** 2 for k in range(ndim)])
    return np.sum((ref_variance(p, ndim) * scale - np.asarray(sigma) ** 2) ** 2, -1)


def heatmaps_for(ndim, seed=0, scale=1.5):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(*LEADING, *SPATIAL[ndim]))
    return z, ref_softmax(z, ndim)


# ------------------------------------------------------------------ values on every backend, any ndim


@pytest.mark.parametrize("ndim", [1, 2, 3, 4, 5])
def test_composed_functions_match_references_for_any_number_of_spatial_axes(backend, ndim):
    z_np, p_np = heatmaps_for(ndim, seed=ndim)
    spatial = SPATIAL[ndim]
    target_np = RNG.uniform(-0.6, 0.6, size=(*LEADING, ndim))
    sigma_np = RNG.uniform(0.8, 2.0, size=(*LEADING, ndim))
    z, p, t, s = (backend.asarray(a) for a in (z_np, p_np, target_np, sigma_np))
    values_np = [RNG.normal(size=spatial[-1 - k]) for k in range(ndim)]
    values = [backend.asarray(v) for v in values_np]

    def results(z, p, t, s, values):
        return {
            "flat_softmax": dsnt_core.flat_softmax(z, ndim=ndim),
            "relu": dsnt_core.normalize_heatmaps(z, ndim=ndim, method="relu"),
            "dsnt": dsnt_core.dsnt(p, ndim=ndim),
            "dsnt pixels": dsnt_core.dsnt(p, ndim=ndim, units="pixels"),
            "variance": dsnt_core.heatmap_variance(p, ndim=ndim),
            "variance pixels": dsnt_core.heatmap_variance(p, ndim=ndim, units="pixels"),
            "linear_expectation": dsnt_core.linear_expectation(p, values),
            "linear_expectation ndim": dsnt_core.linear_expectation(p, values, ndim=ndim),
            "sharpen": dsnt_core.sharpen_heatmaps(p, 3.0, ndim=ndim),
            "gaussian sigma array": dsnt_core.gaussian_heatmaps(t, spatial, s),
            "gaussian": dsnt_core.gaussian_heatmaps(t, spatial, 1.3),
            "kl": dsnt_core.kl_regularizer(p, t, s),
            "js": dsnt_core.js_regularizer(p, t, s),
            "var sigma array": dsnt_core.variance_regularizer(p, s, ndim=ndim),
            "var": dsnt_core.variance_regularizer(p, 1.5, ndim=ndim),
            "composed loss": composed_dsnt_loss(z, t, ndim=ndim, sigma=s),
        }

    log_g = ref_log_gaussian(target_np, spatial, sigma_np)
    expected = {
        "flat_softmax": p_np,
        "relu": _relu_ref(z_np, ndim),
        "dsnt": ref_dsnt(p_np, ndim),
        "dsnt pixels": ref_dsnt(p_np, ndim, "pixels"),
        "variance": ref_variance(p_np, ndim),
        "variance pixels": ref_variance(p_np, ndim, "pixels"),
        "linear_expectation": ref_expectation(p_np, values_np, ndim),
        "linear_expectation ndim": ref_expectation(p_np, values_np, ndim),
        "sharpen": p_np**3.0 / np.sum(p_np**3.0, axis=spatial_axes(ndim), keepdims=True),
        "gaussian sigma array": np.exp(log_g),
        "gaussian": np.exp(ref_log_gaussian(target_np, spatial, 1.3)),
        "kl": ref_kl(p_np, log_g, ndim),
        "js": ref_js(p_np, log_g, ndim),
        "var sigma array": ref_var_reg(p_np, sigma_np, ndim),
        "var": ref_var_reg(p_np, 1.5, ndim),
        "composed loss": _composed_ref(z_np, target_np, sigma_np, ndim),
    }
    got = backend.jit(results)(z, p, t, s, values)  # jax.jit for JAX: one compilation
    assert set(got) == set(expected)
    for name, result in got.items():
        backend.assert_close(result, expected[name], like=z, rtol=1e-9, atol=1e-12, err_msg=name)


def _relu_ref(z, ndim):
    r = np.maximum(z, 0)
    return r / r.sum(axis=spatial_axes(ndim), keepdims=True)


def _composed_ref(z, target, sigma, ndim):
    p = ref_softmax(z, ndim)
    distance = np.sqrt(np.sum((ref_dsnt(p, ndim) - target) ** 2, -1))
    return np.mean(distance + ref_js(p, ref_log_gaussian(target, z.shape[-ndim:], sigma), ndim))


def test_point_losses_follow_dsntnn_definitions(backend):
    pred_np, target_np = RNG.normal(size=(*LEADING, 3)), RNG.normal(size=(*LEADING, 3))
    pred, target = backend.asarray(pred_np), backend.asarray(target_np)
    diff = pred_np - target_np
    backend.assert_close(dsnt_core.l1_loss(pred, target), np.abs(diff).mean(-1), like=pred)  # a mean, not a sum
    backend.assert_close(dsnt_core.mse_loss(pred, target), (diff**2).mean(-1), like=pred)
    backend.assert_close(dsnt_core.euclidean_loss(pred, target), np.sqrt((diff**2).sum(-1)), like=pred)


@pytest.mark.parametrize("distance", ["euclidean", "l1", "mse"])
def test_composed_loss_distance(backend, distance):
    z_np, p_np = heatmaps_for(2, seed=3)
    target_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 2))
    mask_np = np.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    z, t, m = backend.asarray(z_np), backend.asarray(target_np), backend.asarray(mask_np)
    diff = ref_dsnt(p_np, 2) - target_np
    per_point = {"euclidean": np.sqrt((diff**2).sum(-1)), "l1": np.abs(diff).mean(-1), "mse": (diff**2).mean(-1)}
    var = ref_var_reg(p_np, 1.0, 2)
    expected = np.sum((per_point[distance] + 0.5 * var) * mask_np) / mask_np.sum()
    result = composed_dsnt_loss(z, t, mask=m, distance=distance, regularizer="var", reg_weight=0.5)
    backend.assert_close(result, expected, like=z)


def test_linear_expectation_takes_values_per_heatmap(backend):
    _, p_np = heatmaps_for(2, seed=4)
    x_np, y_np = RNG.normal(size=(LEADING[1], 6)), RNG.normal(size=(*LEADING, 5))  # (L, W) and (B, L, H)
    p = backend.asarray(p_np)
    result = dsnt_core.linear_expectation(p, [backend.asarray(x_np), backend.asarray(y_np)])
    expected = np.empty((*LEADING, 2))
    for b in range(LEADING[0]):
        for i in range(LEADING[1]):
            expected[b, i] = ref_expectation(p_np[b, i], [x_np[i], y_np[b, i]], 2)
    backend.assert_close(result, expected, like=p)


def test_sigma_broadcasts_per_point_and_per_axis(backend):
    target_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 2))
    _, p_np = heatmaps_for(2, seed=5)
    t, p = backend.asarray(target_np), backend.asarray(p_np)
    for sigma_np in (np.asarray([1.2, 0.7]), np.asarray(1.1), RNG.uniform(0.6, 2, size=(LEADING[1], 1))):
        s = backend.asarray(sigma_np)
        log_g = ref_log_gaussian(target_np, (5, 6), sigma_np)
        backend.assert_close(dsnt_core.gaussian_heatmaps(t, (5, 6), s), np.exp(log_g), like=t)
        backend.assert_close(dsnt_core.js_regularizer(p, t, s), ref_js(p_np, log_g, 2), like=p, rtol=1e-9)
    # an array of equal sigmas gives what the Python number gives
    backend.assert_close(
        dsnt_core.kl_regularizer(p, t, backend.asarray(np.full(2, 1.4))), dsnt_core.kl_regularizer(p, t, 1.4)
    )


# ---------------------------------------------------------------------------------------- pixel units


def _one_hot_rows(n):
    return np.eye(n)  # row j: all mass on pixel j; ndim=1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.backends("numpy", "torch", "jax")
def test_pixel_units_are_exact_at_pixel_centres(backend, dtype):
    if backend.name == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    for n in (1, 3, 5, 7, 64, 200, 255):
        heatmaps = backend.asarray(_one_hot_rows(n), dtype)
        coords = dsnt_core.dsnt(heatmaps, ndim=1, units="pixels")
        assert dtype_name(coords.dtype) == dtype
        expected = backend.to_numpy(backend.asarray(np.arange(n, dtype=np.float64)[:, None], dtype))  # j rounded once
        np.testing.assert_array_equal(backend.to_numpy(coords), expected, err_msg=f"n={n}")
    # 2-D, the case: a 16-bit heatmap peaked on pixel (0, 0) of a 5x5 grid gives exactly (0, 0)
    peaked = np.zeros((5, 5))
    peaked[0, 0] = 1.0
    np.testing.assert_array_equal(backend.to_numpy(dsnt_core.dsnt(backend.asarray(peaked, dtype), units="pixels")), 0)


@pytest.mark.backends("numpy", "torch", "jax")
def test_converting_float32_moments_to_pixels_is_exact_at_pixel_zero(backend):
    """The helper of the fused path: ``normalized_to_pixel`` of the float32 moments, before the 16-bit cast.

    Exact at pixel 0 where float32 division is correctly rounded (NumPy, PyTorch); XLA's CPU
    division is not (an ulp off for some ``n``), which leaves about ``n * 2**-23`` pixels.
    """
    exact = backend.name != "jax"
    for n in (3, 5, 7, 63, 100, 257, 1000, 4093):
        grid = dsnt_core.normalized_linspace(n, xp=backend.xp, dtype=backend.dtype("float32"), device=backend.device)
        pixels = backend.to_numpy(dsnt_core.normalized_to_pixel(backend.xp.reshape(grid, (n, 1)), (n,)))[:, 0]
        if exact:
            assert pixels[0] == 0.0, n
        np.testing.assert_allclose(pixels, np.arange(n), atol=n * 2.0**-22, err_msg=str(n))


def test_pixel_linspace_and_the_conversions_round_trip(backend):
    px = dsnt_core.pixel_linspace(6, xp=backend.xp, dtype=backend.dtype("float64"), device=backend.device)
    backend.assert_close(px, np.arange(6.0), dtype="float64")
    normalized = dsnt_core.normalized_linspace(6, xp=backend.xp, dtype=backend.dtype("float64"), device=backend.device)
    coords = backend.xp.stack([normalized, backend.xp.flip(normalized, axis=0)], axis=-1)
    back = dsnt_core.normalized_to_pixel(coords, (6, 6))
    backend.assert_close(dsnt_core.pixel_to_normalized(back, (6, 6)), coords, atol=1e-15)
    # more than 3 axes are fine in the conversions too
    c4 = backend.asarray(RNG.uniform(-1, 1, size=(3, 4)))
    backend.assert_close(
        dsnt_core.pixel_to_normalized(dsnt_core.normalized_to_pixel(c4, (2, 3, 4, 5)), (2, 3, 4, 5)), c4
    )


# --------------------------------------------------------------------------------------- 16-bit dtypes


def _every_new_result(p, t, s, values, ndim):
    return {
        "dsnt pixels": dsnt_core.dsnt(p, ndim=ndim, units="pixels"),
        "variance pixels": dsnt_core.heatmap_variance(p, ndim=ndim, units="pixels"),
        "linear_expectation": dsnt_core.linear_expectation(p, values),
        "sharpen": dsnt_core.sharpen_heatmaps(p, 2.0, ndim=ndim),
        "gaussian sigma array": dsnt_core.gaussian_heatmaps(t, tuple(p.shape[-ndim:]), s),
        "kl sigma array": dsnt_core.kl_regularizer(p, t, s),
        "js sigma array": dsnt_core.js_regularizer(p, t, s),
        "var sigma array": dsnt_core.variance_regularizer(p, s, ndim=ndim),
        "l1": dsnt_core.l1_loss(t, t * 0.5),
        "mse": dsnt_core.mse_loss(t, t * 0.5),
        "confidence peak": dsnt_core.heatmap_confidence(p, ndim=ndim),
        "confidence spread": dsnt_core.heatmap_confidence(p, ndim=ndim, method="spread"),
        "confidence entropy": dsnt_core.heatmap_confidence(p, ndim=ndim, method="entropy"),
    }


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("ndim", [2, 4])
@pytest.mark.backends("numpy", "torch", "jax")
def test_dtype_in_is_dtype_out_with_float32_accumulation(backend, dtype, ndim):
    if backend.name == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    _, p_np = heatmaps_for(ndim, seed=6)
    t_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, ndim))
    s_np = RNG.uniform(0.8, 1.5, size=(*LEADING, ndim))
    values_np = [RNG.normal(size=SPATIAL[ndim][-1 - k]) for k in range(ndim)]

    def inputs(name):
        return (
            backend.asarray(p_np, name),
            backend.asarray(t_np, name),
            backend.asarray(s_np, name),
            [backend.asarray(v, name) for v in values_np],
        )

    every = backend.jit(lambda p, t, s, v: _every_new_result(p, t, s, v, ndim))
    low = every(*inputs(dtype))
    # the reference: the same inputs, rounded to the dtype, computed in float64
    rounded = [backend.to_numpy(a) for a in inputs(dtype)[:3]]
    values_rounded = [backend.to_numpy(v) for v in inputs(dtype)[3]]
    reference = every(*(backend.asarray(a) for a in rounded), [backend.asarray(v) for v in values_rounded])
    tolerance = {"float16": 2e-3, "bfloat16": 1.6e-2, "float64": 1e-12}[dtype]
    for name, result in low.items():
        assert dtype_name(result.dtype) == dtype, name
        expected = backend.to_numpy(reference[name])
        np.testing.assert_allclose(
            backend.to_numpy(result), expected, rtol=tolerance, atol=tolerance * np.abs(expected).max(), err_msg=name
        )


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.backends("array_api_strict")
def test_results_stay_on_array_api_strict_extra_device(backend):
    device = backend.xp.Device("device1")
    _, p_np = heatmaps_for(3, seed=7)
    t_np, s_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 3)), RNG.uniform(0.8, 1.5, size=(*LEADING, 3))
    values = [backend.asarray(RNG.normal(size=n), device=device) for n in reversed(SPATIAL[3])]
    p, t, s = (backend.asarray(a, device=device) for a in (p_np, t_np, s_np))
    for name, result in _every_new_result(p, t, s, values, 3).items():
        assert result.device == device, name
    assert dsnt_core.pixel_linspace(4, xp=backend.xp, device=device, dtype=backend.xp.float64).device == device
    assert composed_dsnt_loss(p, t, ndim=3, sigma=s, distance="l1").device == device


@pytest.mark.backends("jax")
def test_results_stay_on_the_jax_device_and_jit(backend):
    import jax

    device = jax.devices()[-1]
    _, p_np = heatmaps_for(4, seed=8)
    t_np, s_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 4)), RNG.uniform(0.8, 1.5, size=(*LEADING, 4))
    values_np = [RNG.normal(size=n) for n in reversed(SPATIAL[4])]
    args = [backend.asarray(a, device=device) for a in (p_np, t_np, s_np)]
    values = [backend.asarray(v, device=device) for v in values_np]
    eager = _every_new_result(*args, values, 4)
    jitted = jax.jit(lambda p, t, s, v: _every_new_result(p, t, s, v, 4))(*args, values)
    for name, result in eager.items():
        assert result.devices() == {device}, name
        backend.assert_close(jitted[name], result, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.backends("torch")
def test_torch_compile_fullgraph(backend):
    torch = backend.library
    torch._dynamo.reset()
    _, p_np = heatmaps_for(2, seed=9)
    t_np, s_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 2)), RNG.uniform(0.8, 1.5, size=(*LEADING, 2))
    values = [backend.asarray(RNG.normal(size=n)) for n in (6, 5)]
    p, t, s = (backend.asarray(a) for a in (p_np, t_np, s_np))

    def everything(p, t, s, v0, v1):
        return tuple(_every_new_result(p, t, s, [v0, v1], 2).values())

    compiled = torch.compile(everything, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(p, t, s, *values), everything(p, t, s, *values)):
        backend.assert_close(got, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------ gradients


def _gradient_cases():
    """(id, function of (x, fixed...), x, fixed NumPy arrays, written-out form for autodiff or None)."""
    _, p2 = heatmaps_for(2, seed=10)
    p2 = p2[:1, :2]
    _, p4 = heatmaps_for(4, seed=11)
    p4 = p4[:1, :1]
    t2 = RNG.uniform(-0.5, 0.5, size=(1, 2, 2))
    s2 = RNG.uniform(0.7, 1.6, size=(1, 2, 2))
    values = [RNG.normal(size=6), RNG.normal(size=5)]

    def sharpen_written_out(xp, p):
        q = p**2.5
        return q / xp.sum(q, axis=(-2, -1), keepdims=True)

    def expectation_written_out(xp, p, vx, vy):
        return xp.stack([xp.sum(p * vx, axis=(-2, -1)), xp.sum(p * vy[:, None], axis=(-2, -1))], axis=-1)

    return [
        ("sharpen", lambda p: dsnt_core.sharpen_heatmaps(p, 2.5), p2, (), sharpen_written_out),
        ("sharpen 4-D", lambda p: dsnt_core.sharpen_heatmaps(p, 2.5, ndim=4), p4, (), None),
        (
            "linear_expectation heatmaps",
            lambda p, vx, vy: dsnt_core.linear_expectation(p, [vx, vy]),
            p2,
            tuple(values),
            expectation_written_out,
        ),
        (
            "linear_expectation values",
            lambda vx, p, vy: dsnt_core.linear_expectation(p, [vx, vy]),
            values[0],
            (p2, values[1]),
            None,
        ),
        ("dsnt pixels 4-D", lambda p: dsnt_core.dsnt(p, ndim=4, units="pixels"), p4, (), None),
        ("variance 4-D", lambda p: dsnt_core.heatmap_variance(p, ndim=4), p4, (), None),
        ("gaussian means", lambda t, s: dsnt_core.gaussian_heatmaps(t, (5, 6), s), t2, (s2,), None),
        ("gaussian sigma", lambda s, t: dsnt_core.gaussian_heatmaps(t, (5, 6), s), s2, (t2,), None),
        ("kl sigma", lambda s, p, t: dsnt_core.kl_regularizer(p, t, s), s2, (p2, t2), None),
        ("js sigma", lambda s, p, t: dsnt_core.js_regularizer(p, t, s), s2, (p2, t2), None),
        ("js heatmaps", lambda p, t, s: dsnt_core.js_regularizer(p, t, s), p2, (t2, s2), None),
        ("var sigma", lambda s, p: dsnt_core.variance_regularizer(p, s), s2, (p2,), None),
        ("var sigma per axis", lambda s, p: dsnt_core.variance_regularizer(p, s), s2[0, 0], (p2,), None),
        ("l1", lambda a, b: dsnt_core.l1_loss(a, b), t2, (t2[::-1] * 0.3,), None),
        ("mse", lambda a, b: dsnt_core.mse_loss(a, b), t2, (t2 * 0.3,), None),
        ("confidence spread", lambda p: dsnt_core.heatmap_confidence(p, method="spread"), p2, (), None),
        ("confidence entropy", lambda p: dsnt_core.heatmap_confidence(p, method="entropy"), p2, (), None),
        (
            "composed l1 loss, sigma array",
            lambda z, t, s: composed_dsnt_loss(z, t, sigma=s, distance="l1", regularizer="kl"),
            np.log(p2),
            (t2, s2),
            None,
        ),
    ]


GRADIENT_CASES = _gradient_cases()


@pytest.mark.backends(*AUTODIFF)
@pytest.mark.parametrize("case", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_gradients_match_finite_differences_and_autodiff_of_the_written_out_form(backend, case):
    _, fn, x_np, fixed_np, written_out = case
    x_np = np.array(x_np, dtype=np.float64)
    fixed = [backend.asarray(a) for a in fixed_np]
    out_np = fn(x_np, *fixed_np)
    cotangent_np = np.random.default_rng(1).normal(size=np.shape(out_np))
    value, grad = backend.value_and_grad(
        lambda x: fn(x, *fixed), backend.asarray(x_np), cotangent=backend.asarray(cotangent_np)
    )
    backend.assert_close(value, out_np, rtol=1e-10, atol=1e-13)
    expected = central_differences(lambda x: fn(x, *fixed_np), x_np, cotangent_np)
    backend.assert_close(grad, expected, like=value, shape=x_np.shape, rtol=1e-6, atol=1e-7)
    if written_out is not None:
        _, reference = backend.value_and_grad(
            lambda x: written_out(backend.xp, x, *fixed), backend.asarray(x_np), cotangent=backend.asarray(cotangent_np)
        )
        backend.assert_close(grad, reference, rtol=1e-10, atol=1e-13)


@pytest.mark.backends(*AUTODIFF)
def test_sharpen_and_confidence_gradients_are_finite_at_zero_mass(backend):
    p_np = np.zeros((2, 4, 4))
    p_np[0, 1, 2], p_np[1] = 1.0, 1 / 16
    for fn in (
        lambda p: dsnt_core.sharpen_heatmaps(p, 3.0),
        lambda p: dsnt_core.heatmap_confidence(p, method="spread"),
        lambda p: dsnt_core.heatmap_confidence(p, method="entropy"),
        lambda p: dsnt_core.heatmap_confidence(p, method="peak"),
    ):
        _, grad = backend.value_and_grad(lambda p, fn=fn: backend.xp.sum(fn(p)), backend.asarray(p_np))
        assert np.isfinite(backend.to_numpy(grad)).all()


# ---------------------------------------------------------------------------------------------- peers


@pytest.mark.backends("torch", gpu=False)  # the peers as references on the CPU
class TestAgainstDsntnn:
    @property
    def dsntnn(self):
        return pytest.importorskip("dsntnn", reason="dsntnn is not installed (test extra)")

    @pytest.mark.parametrize("ndim", [1, 2, 3, 4])
    def test_any_number_of_spatial_axes(self, backend, ndim):
        dsntnn = self.dsntnn
        z_np, _ = heatmaps_for(ndim, seed=20 + ndim)
        z = backend.asarray(z_np)
        heatmaps = dsntnn.flat_softmax(z)
        target = backend.asarray(RNG.uniform(-0.6, 0.6, size=(*LEADING, ndim)))
        sigma = 1.2 * ndim**0.5  # keeps the Gaussian above dsntnn's 1e-24 epsilon
        size = tuple(z.shape[2:])
        backend.assert_close(dsnt_core.flat_softmax(z, ndim=ndim), heatmaps)
        backend.assert_close(dsnt_core.dsnt(heatmaps, ndim=ndim), dsntnn.dsnt(heatmaps))
        backend.assert_close(
            dsnt_core.dsnt(heatmaps, ndim=ndim, units="pixels"), dsntnn.dsnt(heatmaps, normalized_coordinates=False)
        )
        backend.assert_close(dsnt_core.gaussian_heatmaps(target, size, sigma), dsntnn.make_gauss(target, size, sigma))
        backend.assert_close(
            dsnt_core.js_regularizer(heatmaps, target, sigma), dsntnn.js_reg_losses(heatmaps, target, sigma), rtol=1e-9
        )
        backend.assert_close(
            dsnt_core.kl_regularizer(heatmaps, target, sigma), dsntnn.kl_reg_losses(heatmaps, target, sigma), rtol=1e-9
        )
        backend.assert_close(
            dsnt_core.variance_regularizer(heatmaps, sigma, ndim=ndim),
            dsntnn.variance_reg_losses(heatmaps, sigma),
            rtol=1e-9,
        )
        pixels = dsntnn.normalized_to_pixel_coordinates(target, size)
        backend.assert_close(dsnt_core.normalized_to_pixel(target, size), pixels)
        backend.assert_close(
            dsnt_core.pixel_to_normalized(pixels, size), dsntnn.pixel_to_normalized_coordinates(pixels, size)
        )

    def test_linear_expectation_takes_the_values_in_reverse_order(self, backend):
        torch, dsntnn = backend.library, self.dsntnn
        _, p_np = heatmaps_for(3, seed=30)
        p = backend.asarray(p_np)
        values_array_order = [backend.asarray(RNG.normal(size=n)) for n in SPATIAL[3]]  # dsntnn's: (D, H, W)
        theirs = dsntnn.linear_expectation(p, values_array_order)  # (z, y, x)
        ours = dsnt_core.linear_expectation(p, values_array_order[::-1])  # ours: (x, y, z)
        backend.assert_close(ours, torch.flip(theirs, (-1,)))

    def test_point_losses(self, backend):
        dsntnn = self.dsntnn
        a, b = backend.asarray(RNG.normal(size=(*LEADING, 2))), backend.asarray(RNG.normal(size=(*LEADING, 2)))
        backend.assert_close(dsnt_core.l1_loss(a, b), dsntnn.l1_losses(a, b))
        backend.assert_close(dsnt_core.mse_loss(a, b), dsntnn.mse_losses(a, b))
        backend.assert_close(dsnt_core.euclidean_loss(a, b), dsntnn.euclidean_losses(a, b))

    def test_sharpen_heatmaps_as_dsntnn_master(self, backend):
        """dsntnn's ``sharpen_heatmaps`` (after 0.5.4, not on PyPI): its own test case, and its formula."""
        torch = backend.library
        inp = torch.tensor(
            [
                [
                    [
                        [0.0, 0.0, 0.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.1, 0.0],
                        [0.1, 0.0, 0.0, 0.6, 0.1],
                        [0.0, 0.0, 0.0, 0.1, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0],
                    ]
                ]
            ],
            dtype=torch.float64,
        )
        coords = dsnt_core.dsnt(dsnt_core.sharpen_heatmaps(inp, 6.0))
        backend.assert_close(coords, np.asarray([[[0.399983, 0.0]]]), like=inp, atol=1e-6)
        powered = inp**6
        reference = powered / powered.flatten(2).sum(-1)[..., None, None]
        backend.assert_close(dsnt_core.sharpen_heatmaps(inp, 6.0), reference)


@pytest.mark.backends("torch", gpu=False)
class TestAgainstKornia:
    @property
    def kornia(self):
        pytest.importorskip("kornia", reason="kornia is not installed (test extra)")
        import kornia.geometry.subpix
        import kornia.losses

        return kornia

    def test_pixel_expectations(self, backend):
        subpix = self.kornia.geometry.subpix
        z = backend.asarray(RNG.normal(scale=2.0, size=(2, 3, 5, 7)))
        heatmaps = subpix.spatial_softmax2d(z)
        backend.assert_close(
            dsnt_core.dsnt(heatmaps, units="pixels"),
            subpix.spatial_expectation2d(heatmaps, normalized_coordinates=False),
        )
        backend.assert_close(
            dsnt_core.dsnt(dsnt_core.flat_softmax(z, temperature=0.5), units="pixels"),
            subpix.spatial_soft_argmax2d(z, temperature=0.5, normalized_coordinates=False),
        )

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
    def test_pixel_zero_in_16_bit_like_kornia(self, backend, dtype):
        subpix = self.kornia.geometry.subpix
        for h, w in ((5, 5), (3, 7), (64, 48)):
            peaked = np.zeros((1, 1, h, w))
            peaked[0, 0, 0, 0] = 1.0
            p = backend.asarray(peaked, dtype)
            theirs = subpix.spatial_expectation2d(p, normalized_coordinates=False)
            backend.assert_close(dsnt_core.dsnt(p, units="pixels"), theirs, rtol=0, atol=0)
            backend.assert_close(theirs, np.zeros((1, 1, 2)), like=p, rtol=0, atol=0)

    @pytest.mark.parametrize("normalized_coordinates", [False, True])
    def test_render_gaussian2d_with_per_axis_std_and_its_gradients(self, backend, normalized_coordinates):
        torch, subpix = backend.library, self.kornia.geometry.subpix
        size = (9, 12)
        h, w = size
        mean_np = (
            RNG.uniform(2, 6, size=(2, 3, 2)) if not normalized_coordinates else RNG.uniform(-0.5, 0.5, size=(2, 3, 2))
        )
        std_np = (
            RNG.uniform(0.8, 2.5, size=(2, 3, 2))
            if not normalized_coordinates
            else RNG.uniform(0.2, 0.5, size=(2, 3, 2))
        )
        mean, std = backend.asarray(mean_np).requires_grad_(), backend.asarray(std_np).requires_grad_()
        theirs = subpix.render_gaussian2d(mean, std, size, normalized_coordinates=normalized_coordinates)
        if normalized_coordinates:  # kornia's corner grid: pixel = (c + 1) (n - 1) / 2, std scales by (n - 1) / 2
            half = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
            pixel_mean, pixel_std = dsnt_core.normalized_to_pixel(mean, size, align_corners=True), std * half
        else:
            pixel_mean, pixel_std = mean, std
        ours = dsnt_core.gaussian_heatmaps(dsnt_core.pixel_to_normalized(pixel_mean, size), size, pixel_std)
        backend.assert_close(ours, theirs.detach(), like=theirs, rtol=1e-10, atol=1e-14)
        cotangent = backend.asarray(RNG.normal(size=ours.shape))
        grads_ours = torch.autograd.grad(ours, (mean, std), cotangent)
        grads_theirs = torch.autograd.grad(theirs, (mean, std), cotangent)
        for got, expected in zip(grads_ours, grads_theirs):
            backend.assert_close(got, expected, rtol=1e-8, atol=1e-12)

    def test_conv_soft_argmax2d_on_tiling_windows_is_the_documented_recipe(self, backend):
        torch, subpix = backend.library, self.kornia.geometry.subpix
        x = backend.asarray(RNG.normal(scale=3.0, size=(2, 3, 6, 8)))
        kh, kw = 3, 4
        b, c, h, w = x.shape
        windows = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 1, 2, 4, 3, 5)
        local = dsnt_core.dsnt(dsnt_core.flat_softmax(windows, temperature=0.7), units="pixels")
        origin_x = torch.arange(w // kw, dtype=x.dtype) * kw
        origin_y = torch.arange(h // kh, dtype=x.dtype) * kh
        coords = local + torch.stack(torch.broadcast_tensors(origin_x[None, :], origin_y[:, None]), -1)
        theirs = subpix.conv_soft_argmax2d(x, (kh, kw), (kh, kw), (0, 0), temperature=0.7, normalized_coordinates=False)
        backend.assert_close(coords.permute(0, 1, 4, 2, 3), theirs, rtol=1e-10, atol=1e-12)

    def test_divergence_losses(self, backend):
        losses = self.kornia.losses
        _, p_np = heatmaps_for(2, seed=40)
        p = backend.asarray(p_np)
        t = backend.asarray(RNG.uniform(-0.4, 0.4, size=(*LEADING, 2)))
        s = backend.asarray(RNG.uniform(1.0, 1.6, size=(*LEADING, 2)))
        gauss = dsnt_core.gaussian_heatmaps(t, (5, 6), s)
        backend.assert_close(
            dsnt_core.js_regularizer(p, t, s), losses.js_div_loss_2d(p, gauss, reduction="none"), rtol=1e-9
        )
        backend.assert_close(
            dsnt_core.kl_regularizer(p, t, s), losses.kl_div_loss_2d(gauss, p, reduction="none"), rtol=1e-9
        )


# -------------------------------------------------------------------------------------------- errors


Z4 = np.zeros((2, 3, 2, 3, 4, 5))
HM = np.full((2, 3, 4, 5), 1 / 20)
T = np.zeros((2, 3, 2))

BAD_CALLS = [
    (
        "fused ndim 4 names the composed route",
        lambda: dsnt_core.soft_argmax(Z4, ndim=4),
        ValueError,
        r"ndim must be 1, 2 or 3, got 4: the fused soft_argmax and dsnt_loss take at most 3 spatial axes.*"
        r"dsnt\(flat_softmax\(logits, ndim=4\), ndim=4\).*composed_dsnt_loss",
    ),
    (
        "fused loss ndim 5",
        lambda: dsnt_core.dsnt_loss(Z4, np.zeros((2, 3, 5)), ndim=5),
        ValueError,
        r"got 5: the fused",
    ),
    ("composed ndim 0", lambda: dsnt_core.dsnt(HM, ndim=0), ValueError, r"ndim must be a positive int.*got 0"),
    ("composed ndim float", lambda: dsnt_core.sharpen_heatmaps(HM, 2.0, ndim=2.0), TypeError, r"ndim must be an int"),
    (
        "too few axes 4-D",
        lambda: dsnt_core.flat_softmax(HM, ndim=5),
        ValueError,
        r"logits must have at least ndim=5 axes \(\.\.\., S5, S4, D, H, W\), got shape \(2, 3, 4, 5\)",
    ),
    ("units", lambda: dsnt_core.dsnt(HM, units="px"), ValueError, r"units must be one of \['normalized', 'pixels'\]"),
    ("units corners", lambda: dsnt_core.dsnt(HM, units="pixels", align_corners=True), ValueError, r"align_corners"),
    ("alpha", lambda: dsnt_core.sharpen_heatmaps(HM, 0.0), ValueError, r"alpha must be positive and finite, got 0.0"),
    ("alpha type", lambda: dsnt_core.sharpen_heatmaps(HM, "2"), TypeError, r"alpha must be a positive finite"),
    (
        "values type",
        lambda: dsnt_core.linear_expectation(HM, np.zeros((2, 5))),
        TypeError,
        r"values must be a sequence",
    ),
    (
        "values count",
        lambda: dsnt_core.linear_expectation(HM, [np.zeros(5), np.zeros(4)], ndim=3),
        ValueError,
        r"values must hold ndim=3 arrays .* got 2",
    ),
    (
        "values length",
        lambda: dsnt_core.linear_expectation(HM, [np.zeros(4), np.zeros(4)]),
        ValueError,
        r"values\[0\] must have shape \(5,\) or \(\.\.\., 5\).*got shape \(4,\)",
    ),
    (
        "values leading shape",
        lambda: dsnt_core.linear_expectation(HM, [np.zeros((4, 5)), np.zeros(4)]),
        ValueError,
        r"values\[0\] must have shape \(5,\).*broadcast against \(2, 3\).*got shape \(4, 5\)",
    ),
    (
        "values dtype",
        lambda: dsnt_core.linear_expectation(HM, [np.zeros(5, int), np.zeros(4)]),
        TypeError,
        r"values\[0\] must have a real floating dtype",
    ),
    (
        "values list",
        lambda: dsnt_core.linear_expectation(HM, [[0.0] * 5, np.zeros(4)]),
        TypeError,
        r"values\[0\] must be an array",
    ),
    (
        "sigma shape",
        lambda: dsnt_core.gaussian_heatmaps(T, (4, 5), np.ones(3)),
        ValueError,
        r"sigma must be a positive Python number or an array broadcastable to \(2, 3, 2\) "
        r"\(the shape of means.*got shape \(3,\)",
    ),
    (
        "sigma too many axes",
        lambda: dsnt_core.js_regularizer(HM, T, np.ones((1, 2, 3, 2))),
        ValueError,
        r"broadcastable to \(2, 3, 2\) \(the shape of target.*got shape \(1, 2, 3, 2\)",
    ),
    (
        "sigma int array",
        lambda: dsnt_core.kl_regularizer(HM, T, np.ones(2, dtype=int)),
        TypeError,
        r"sigma must be .* real floating array, got dtype int64",
    ),
    (
        "sigma list",
        lambda: dsnt_core.variance_regularizer(HM, [1.0, 1.0]),
        TypeError,
        r"sigma must be a positive Python number or a real floating array.*got list",
    ),
    (
        "sigma number still checked",
        lambda: dsnt_core.gaussian_heatmaps(T, (4, 5), -1.0),
        ValueError,
        r"sigma must be positive and finite, got -1.0",
    ),
    (
        "l1 shapes",
        lambda: dsnt_core.l1_loss(np.zeros((2, 2)), np.zeros((3, 2))),
        ValueError,
        r"pred and target must have the same shape",
    ),
    (
        "mse dtype",
        lambda: dsnt_core.mse_loss(np.zeros(2, int), np.zeros(2)),
        TypeError,
        r"pred must have a real floating dtype",
    ),
    (
        "distance",
        lambda: composed_dsnt_loss(HM, T, distance="l2"),
        ValueError,
        r"distance must be one of \['euclidean', 'l1', 'mse'\], got 'l2'",
    ),
    (
        "size empty",
        lambda: dsnt_core.gaussian_heatmaps(np.zeros(0), (), 1.0),
        ValueError,
        r"size must hold one or more positive ints",
    ),
    ("pixel_linspace n", lambda: dsnt_core.pixel_linspace(0), ValueError, r"n must be at least 1, got 0"),
]


@pytest.mark.parametrize(("call", "exception", "pattern"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_named_in_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


@pytest.mark.backends("torch")
def test_sigma_from_another_library_is_refused(backend):
    with pytest.raises(TypeError, match=r"same library, got means is numpy, sigma is torch"):
        dsnt_core.gaussian_heatmaps(T, (4, 5), backend.asarray(np.ones(2)))


def test_composed_loss_covers_what_the_fused_loss_does_not(backend):
    """ndim > 3 and sigma arrays go through the composed loss; it agrees with the fused one where both run."""
    z_np, _ = heatmaps_for(2, seed=50)
    t_np = RNG.uniform(-0.5, 0.5, size=(*LEADING, 2))
    z, t = backend.asarray(z_np), backend.asarray(t_np)
    backend.assert_close(
        composed_dsnt_loss(z, t, sigma=backend.asarray(np.full(2, 1.3))), dsnt_core.dsnt_loss(z, t, sigma=1.3)
    )
    z4 = backend.asarray(heatmaps_for(4, seed=51)[0])
    loss = composed_dsnt_loss(z4, backend.asarray(RNG.uniform(-0.5, 0.5, size=(*LEADING, 4))), ndim=4)
    assert math.isfinite(float(backend.to_numpy(loss)))


# ------------------------------------------------------------------------------------ symbolic sizes


def _deployable(p, t, s):
    return (
        dsnt_core.dsnt(p, units="pixels"),
        dsnt_core.gaussian_heatmaps(t, tuple(p.shape[-2:]), s),
        dsnt_core.js_regularizer(p, t, s),
        dsnt_core.sharpen_heatmaps(p, 2.0),
        dsnt_core.heatmap_confidence(p, method="entropy"),
    )


def _deployment_inputs(backend, h, w, seed):
    rng = np.random.default_rng(seed)
    p = ref_softmax(rng.normal(size=(2, 3, h, w)), 2)
    return [
        backend.asarray(a, "float32") for a in (p, rng.uniform(-0.5, 0.5, (2, 3, 2)), rng.uniform(0.8, 2, (2, 3, 2)))
    ]


@pytest.mark.backends("torch")
def test_torch_export_with_dynamic_sizes(backend):
    torch = backend.library

    class Module(torch.nn.Module):
        def forward(self, p, t, s):
            return _deployable(p, t, s)

    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    exported = torch.export.export(
        Module(), tuple(_deployment_inputs(backend, 5, 6, 0)), dynamic_shapes=({2: h, 3: w}, None, None)
    )
    other = _deployment_inputs(backend, 7, 9, 1)
    for got, expected in zip(exported.module()(*other), _deployable(*other)):
        backend.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.backends("jax")
def test_jax_export_with_symbolic_sizes(backend):
    import jax
    from jax import export

    h, w = export.symbolic_shape("h, w")
    shapes = [(2, 3, h, w), (2, 3, 2), (2, 3, 2)]
    platform = "cuda" if backend.device.platform == "gpu" else backend.device.platform  # the entry's, not the default's
    exported = export.export(jax.jit(_deployable), platforms=[platform])(
        *(jax.ShapeDtypeStruct(s, backend.xp.float32) for s in shapes)
    )
    other = _deployment_inputs(backend, 7, 9, 1)
    for got, expected in zip(exported.call(*other), _deployable(*other)):
        backend.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "l1", "mse"])
@pytest.mark.parametrize("regularizer", [*REGULARIZERS])
def test_the_fused_loss_takes_every_distance_and_matches_the_composed_form(backend, distance, regularizer):
    """dsnt_loss(distance=...) against composed_dsnt_loss: value, and gradient where autodiff exists."""
    rng = np.random.default_rng(11)
    values = rng.normal(size=(2, 3, 7, 6))
    target_values = rng.uniform(-0.8, 0.8, size=(2, 3, 2))
    logits, target = backend.asarray(values), backend.asarray(target_values)
    options = dict(distance=distance, regularizer=regularizer, sigma=1.0, temperature=0.8)
    fused = dsnt_core.dsnt_loss(logits, target, **options)
    composed = composed_dsnt_loss(logits, target, **options)
    np.testing.assert_allclose(backend.to_numpy(fused), backend.to_numpy(composed), rtol=1e-10, atol=1e-12)
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(np.asarray(values), np.asarray(target_values), **options)
    np.testing.assert_allclose(loss, backend.to_numpy(composed), rtol=1e-10, atol=1e-12)
    if backend.name == "torch":
        import torch

        z = torch.tensor(values, requires_grad=True, device=backend.device)
        t = torch.tensor(target_values, device=backend.device)
        (fused_grad,) = torch.autograd.grad(dsnt_core.dsnt_loss(z, t, **options), z)
        z = torch.tensor(values, requires_grad=True, device=backend.device)
        (composed_grad,) = torch.autograd.grad(composed_dsnt_loss(z, t, **options), z)
        backend.assert_close(fused_grad, composed_grad, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad, backend.to_numpy(composed_grad), rtol=1e-9, atol=1e-12)


def test_an_unknown_distance_is_refused_by_name():
    with pytest.raises(ValueError, match=r"distance must be one of \['euclidean', 'l1', 'mse'\], got 'cosine'"):
        dsnt_core.dsnt_loss(np.zeros((1, 4, 4)), np.zeros((1, 2)), distance="cosine")
