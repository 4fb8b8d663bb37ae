"""Array temperatures and sigmas (learnable), and pixel-unit coordinates, through the fused rules.

* ``temperature`` may be an array broadcastable to the logits' leading shape: the fused
  ``soft_argmax``, ``dsnt_loss`` and ``dsnt_loss_value_and_grad`` agree with the composed form
  ``flat_softmax(logits / T)`` on every library, and PyTorch and JAX get the temperature's
  gradient from the fused rules (reverse and forward mode), checked against autodiff of the
  composed form and against finite differences in float64;
* ``sigma`` may be an array broadcastable to the target's shape in ``dsnt_loss``, with a
  gradient where the framework has autodiff;
* ``soft_argmax(units="pixels")`` equals ``dsnt(flat_softmax(x), units="pixels")`` and is exact
  at pixel centres in bfloat16.
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import central_differences

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

RNG = np.random.default_rng(20261126)
REGULARIZERS = ("js", "kl", "var", None)

# (logits shape, temperature shape): a scalar, one per point, one per heatmap, broadcast over points
TEMPERATURE_CASES = [((2, 3, 5, 6), ()), ((2, 3, 5, 6), (3,)), ((2, 3, 4, 7), (2, 3)), ((2, 3, 6), (2, 1))]


def _logits(shape):
    return RNG.normal(scale=2.0, size=shape)


def _temperature(shape):
    return RNG.uniform(0.4, 2.5, size=shape)


def _reference_coords(xp, logits, temperature, ndim, units="normalized"):
    """The composed form: ``dsnt(flat_softmax(logits / T))``."""
    scaled = logits / xp.reshape(temperature, (*temperature.shape, *((1,) * ndim)))
    return dsnt_core.dsnt(dsnt_core.flat_softmax(scaled, ndim=ndim), ndim=ndim, units=units)


@pytest.mark.backends("numpy", "array_api_strict", "torch", "jax")
@pytest.mark.parametrize(("shape", "t_shape"), TEMPERATURE_CASES)
@pytest.mark.parametrize("units", ["normalized", "pixels"])
def test_soft_argmax_with_an_array_temperature_is_the_composed_form(backend, shape, t_shape, units):
    ndim = len(shape) - 2
    logits, temperature = backend.asarray(_logits(shape)), backend.asarray(_temperature(t_shape))
    coords = dsnt_core.soft_argmax(logits, ndim=ndim, temperature=temperature, units=units)
    expected = _reference_coords(backend.xp, logits, temperature, ndim, units)
    backend.assert_close(coords, backend.to_numpy(expected), atol=1e-12, dtype="float64")
    # ... and flat_softmax takes the same array
    per_heatmap = (*t_shape, *((1,) * ndim))
    backend.assert_close(
        dsnt_core.flat_softmax(logits, ndim=ndim, temperature=temperature),
        backend.to_numpy(dsnt_core.flat_softmax(logits / backend.xp.reshape(temperature, per_heatmap), ndim=ndim)),
        atol=1e-14,
    )


@pytest.mark.backends("numpy", "array_api_strict", "torch", "jax")
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_dsnt_loss_with_array_temperature_and_sigma_is_the_composed_form(backend, regularizer):
    logits = backend.asarray(_logits((2, 3, 6, 5)))
    target = backend.asarray(RNG.uniform(-0.7, 0.7, size=(2, 3, 2)))
    temperature = backend.asarray(_temperature((3,)))
    sigma = backend.asarray(RNG.uniform(0.8, 2.0, size=(3, 2)))  # per point and axis
    options = dict(regularizer=regularizer, temperature=temperature, sigma=sigma)
    loss = dsnt_core.dsnt_loss(logits, target, **options)
    expected = composed_dsnt_loss(logits, target, **options)
    backend.assert_close(loss, backend.to_numpy(expected), atol=1e-12)
    if not backend.autodiff:
        value, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, **options)
        backend.assert_close(value, backend.to_numpy(expected), atol=1e-12)
        # the logits' gradient against central differences of the composed form
        z = backend.to_numpy(logits)
        numeric = central_differences(
            lambda x: float(backend.to_numpy(composed_dsnt_loss(backend.asarray(x), target, **options))), z
        )
        np.testing.assert_allclose(backend.to_numpy(grad), numeric, atol=1e-7)


# ----------------------------------------------------------------------------- gradients


def _torch_grads(fn, *arrays):
    import torch

    inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True)
    return value.detach().numpy(), [g.numpy() for g in grads]


def _jax_grads(fn, *arrays):
    import jax
    import jax.numpy as jnp

    inputs = [jnp.asarray(a) for a in arrays]
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(inputs)))))(*inputs)
    return np.asarray(value), [np.asarray(g) for g in grads]


GRADS = {"torch": _torch_grads, "jax": _jax_grads}


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize(("shape", "t_shape"), TEMPERATURE_CASES)
@pytest.mark.parametrize("units", ["normalized", "pixels"])
def test_soft_argmax_gradients_reach_the_temperature(library, shape, t_shape, units):
    pytest.importorskip(library)
    ndim = len(shape) - 2
    logits, temperature = _logits(shape), _temperature(t_shape)
    weights = RNG.normal(size=(*shape[:2], ndim))

    w = _native(library, weights)

    def fused(z, t):
        return (dsnt_core.soft_argmax(z, ndim=ndim, temperature=t, units=units) * w).sum()

    def composed(z, t):
        from array_api_compat import array_namespace

        return (_reference_coords(array_namespace(z), z, t, ndim, units) * w).sum()

    value, grads = GRADS[library](fused, logits, temperature)
    expected_value, expected = GRADS[library](composed, logits, temperature)
    np.testing.assert_allclose(value, expected_value, atol=1e-12)
    for got, want in zip(grads, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-11)
    # the temperature's gradient against central differences of the fused forward
    numeric = central_differences(
        lambda t: float(np.asarray(fused(_native(library, logits), _native(library, t)))), temperature
    )
    np.testing.assert_allclose(grads[1], numeric, atol=1e-7)


def _native(library, array):
    if library == "torch":
        import torch

        return torch.tensor(array)
    import jax.numpy as jnp

    return jnp.asarray(array)


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("distance", ["euclidean", "l1", "mse"])
def test_dsnt_loss_gradients_reach_temperature_and_sigma(library, regularizer, distance):
    pytest.importorskip(library)
    logits, target = _logits((2, 3, 5, 6)), RNG.uniform(-0.7, 0.7, size=(2, 3, 2))
    temperature, sigma = _temperature((2, 3)), RNG.uniform(0.8, 2.0, size=(3, 1))  # sigma per point

    def fused(z, t, s):
        return dsnt_core.dsnt_loss(
            z, _native(library, target), temperature=t, sigma=s, regularizer=regularizer, distance=distance
        )

    def composed(z, t, s):
        return composed_dsnt_loss(
            z, _native(library, target), temperature=t, sigma=s, regularizer=regularizer, distance=distance
        )

    value, grads = GRADS[library](fused, logits, temperature, sigma)
    expected_value, expected = GRADS[library](composed, logits, temperature, sigma)
    np.testing.assert_allclose(value, expected_value, atol=1e-12)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, atol=1e-11)
    if regularizer in ("js", "kl", "var"):
        assert np.abs(grads[2]).max() > 0  # sigma matters to these losses


def test_torch_fused_path_keeps_the_temperature_gradient_within_the_memory_budget():
    torch = pytest.importorskip("torch")
    from _support import saved_tensor_bytes

    logits = torch.randn(4, 5, 32, 32, dtype=torch.float64)
    temperature = torch.rand(5, dtype=torch.float64) + 0.5
    target = torch.rand(4, 5, 2, dtype=torch.float64) - 0.5
    for fn in (
        lambda z, t: dsnt_core.soft_argmax(z, temperature=t).sum(),
        lambda z, t: dsnt_core.dsnt_loss(z, target, temperature=t),
    ):
        saved = saved_tensor_bytes(fn, logits, temperature)
        heatmap_sized = [n for n in saved if n >= logits.numel()]
        assert sum(heatmap_sized) <= logits.numel() * logits.element_size(), saved


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_forward_mode_along_the_temperature(library):
    pytest.importorskip(library)
    logits, temperature = _logits((2, 3, 5, 4)), _temperature((3,))
    target = RNG.uniform(-0.6, 0.6, size=(2, 3, 2))
    if library == "torch":
        import torch
        from torch.func import jacfwd

        z, t = torch.tensor(logits), torch.tensor(temperature)
        fused = jacfwd(lambda t: dsnt_core.dsnt_loss(z, torch.tensor(target), temperature=t))(t)
        composed = jacfwd(lambda t: composed_dsnt_loss(z, torch.tensor(target), temperature=t))(t)
        coords = jacfwd(lambda t: dsnt_core.soft_argmax(z, temperature=t))(t)
        coords_composed = jacfwd(lambda t: _reference_coords(torch, z, t, 2))(t)
    else:
        import jax
        import jax.numpy as jnp

        z, t = jnp.asarray(logits), jnp.asarray(temperature)
        fused = jax.jacfwd(lambda t: dsnt_core.dsnt_loss(z, jnp.asarray(target), temperature=t))(t)
        composed = jax.jacfwd(lambda t: composed_dsnt_loss(z, jnp.asarray(target), temperature=t))(t)
        coords = jax.jacfwd(lambda t: dsnt_core.soft_argmax(z, temperature=t))(t)
        coords_composed = jax.jacfwd(lambda t: _reference_coords(jnp, z, t, 2))(t)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(composed), atol=1e-11)
    np.testing.assert_allclose(np.asarray(coords), np.asarray(coords_composed), atol=1e-11)


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_minus_inf_logits_give_a_finite_temperature_gradient(library):
    pytest.importorskip(library)
    logits = _logits((2, 2, 4, 5))
    logits[0, 0, :, :2] = -np.inf  # masked pixels
    logits[1, 1] = -np.inf  # a heatmap with no mass: uniform for every temperature
    temperature, target = _temperature((2,)), RNG.uniform(-0.5, 0.5, size=(2, 2, 2))
    _, grads = GRADS[library](
        lambda z, t: dsnt_core.dsnt_loss(z, _native(library, target), temperature=t), logits, temperature
    )
    _, coord_grads = GRADS[library](lambda z, t: dsnt_core.soft_argmax(z, temperature=t).sum(), logits, temperature)
    for grad in (*grads, *coord_grads):
        assert np.isfinite(grad).all()
    assert (grads[0][0, 0, :, :2] == 0).all() and (grads[0][1, 1] == 0).all()


# -------------------------------------------------------------------------------- units


@pytest.mark.backends("numpy", "array_api_strict", "torch", "jax")
def test_soft_argmax_in_pixels_vjp_matches_the_composed_gradient(backend):
    if backend.autodiff:
        pytest.skip("the explicit vjp entry point is for libraries without autodiff")
    logits = _logits((2, 3, 4, 6))
    cotangent = RNG.normal(size=(2, 3, 2))
    grad = dsnt_core.soft_argmax_vjp(backend.asarray(logits), backend.asarray(cotangent), units="pixels")

    def objective(z):
        coords = dsnt_core.dsnt(dsnt_core.flat_softmax(z), units="pixels")
        return float((coords * cotangent).sum())

    backend.assert_close(grad, central_differences(objective, logits), atol=1e-7)


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize("n", [3, 5, 64, 257])
def test_pixel_coordinates_are_exact_at_pixel_centres_in_bfloat16(library, n):
    pytest.importorskip(library)
    logits = np.full((n, 1, n), -1e4, dtype=np.float32)
    logits[np.arange(n), 0, np.arange(n)] = 0.0  # heatmap j peaked on pixel j
    if library == "torch":
        import torch

        z = torch.tensor(logits).to(torch.bfloat16)
    else:
        import jax.numpy as jnp

        z = jnp.asarray(logits).astype(jnp.bfloat16)
    coords = dsnt_core.soft_argmax(z, units="pixels")
    assert coords.dtype == z.dtype
    x = np.asarray(coords[:, 0].astype(np.float32) if library == "jax" else coords[:, 0].float())
    expected = np.asarray(np.arange(n), dtype=np.float32)
    if library == "torch":  # correctly rounded float32 division: exact
        np.testing.assert_array_equal(x, expected.astype(np.float32))
    else:  # XLA's CPU division can be an ulp off: the pixel after rounding to bfloat16
        np.testing.assert_allclose(x, expected, atol=max(n * 2.0**-22, 2.0 ** (np.floor(np.log2(max(n - 1, 1))) - 7)))


# --------------------------------------------------------------------------------- errors


def test_bad_temperature_and_units_are_rejected_with_the_shapes():
    logits = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"temperature must be .* broadcastable to \(2, 3\).*got shape \(4,\)"):
        dsnt_core.soft_argmax(logits, temperature=np.ones(4))
    with pytest.raises(TypeError, match="temperature must be .* real floating array, got dtype int64"):
        dsnt_core.dsnt_loss(logits, np.zeros((2, 3, 2)), temperature=np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"sigma must be .* broadcastable to \(2, 3, 2\).*got shape \(3, 3\)"):
        dsnt_core.dsnt_loss(logits, np.zeros((2, 3, 2)), sigma=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"units must be one of \['normalized', 'pixels'\], got 'px'"):
        dsnt_core.soft_argmax(logits, units="px")
    with pytest.raises(ValueError, match="temperature must be positive and finite, got 0"):
        dsnt_core.flat_softmax(logits, temperature=0)


# ---------------------------------------------------------------------------------- heads


def test_torch_head_learns_its_temperature_through_the_fused_rule():
    torch = pytest.importorskip("torch")
    from dsnt_torch import DSNTHead

    torch.manual_seed(0)
    head = DSNTHead(in_channels=4, num_points=3, temperature=2.0, learn_temperature=True).double()
    features = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    weights = torch.randn(2, 3, 2, dtype=torch.float64)
    (head(features) * weights).sum().backward()
    # the same head written out: exp(log T) per point, the composed softmax and dsnt
    log_t = head.log_temperature.detach().clone().requires_grad_()
    logits = head.to_logits(features)
    scaled = logits / torch.exp(log_t)[:, None, None]
    (dsnt_core.dsnt(dsnt_core.flat_softmax(scaled)) * weights).sum().backward()
    assert head.log_temperature.shape == (3,)
    np.testing.assert_allclose(head.log_temperature.grad.numpy(), log_t.grad.numpy(), atol=1e-12)
    assert torch.allclose(torch.exp(head.log_temperature), torch.full((3,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature must be positive and finite, got -1"):
        DSNTHead(temperature=-1.0)


def test_flax_head_learns_its_temperature_through_the_fused_rule():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax", reason="flax extra")
    import jax.numpy as jnp
    from dsnt_jax.flax_modules import DSNTHead

    head = DSNTHead(num_points=3, temperature=0.5, learn_temperature=True)
    features = jnp.asarray(RNG.normal(size=(2, 6, 7, 4)))
    weights = jnp.asarray(RNG.normal(size=(2, 3, 2)))
    params = head.init(jax.random.key(0), features)
    grads = jax.grad(lambda p: (head.apply(p, features) * weights).sum())(params)["params"]

    def written_out(log_t):
        conv = params["params"]["to_logits"]
        logits = jnp.moveaxis(features @ conv["kernel"][0, 0] + conv["bias"], -1, 1)
        scaled = logits / jnp.exp(log_t)[:, None, None]
        return (dsnt_core.dsnt(dsnt_core.flat_softmax(scaled)) * weights).sum()

    expected = jax.grad(written_out)(params["params"]["log_temperature"])
    np.testing.assert_allclose(np.asarray(grads["log_temperature"]), np.asarray(expected), atol=1e-12)


@pytest.mark.parametrize("distance", ["l1", "mse"])
def test_loss_modules_take_the_distance(distance):
    torch = pytest.importorskip("torch")
    from dsnt_torch import DSNTLoss

    logits = torch.tensor(_logits((2, 3, 6, 5)), requires_grad=True)
    target = torch.tensor(RNG.uniform(-0.7, 0.7, size=(2, 3, 2)))
    loss = DSNTLoss(sigma=1.5, regularizer="kl", distance=distance)(logits, target)
    expected = composed_dsnt_loss(logits, target, sigma=1.5, regularizer="kl", distance=distance)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"distance must be one of \['euclidean', 'l1', 'mse'\], got 'l2'"):
        DSNTLoss(distance="l2")
    if pytest.importorskip("flax", reason="flax extra") is not None:
        import jax.numpy as jnp
        from dsnt_jax.flax_modules import DSNTLoss as LinenLoss

        value = LinenLoss(sigma=1.5, regularizer="kl", distance=distance).apply(
            {}, jnp.asarray(logits.detach().numpy()), jnp.asarray(target.numpy())
        )
        np.testing.assert_allclose(np.asarray(value), expected.item(), atol=1e-12)
