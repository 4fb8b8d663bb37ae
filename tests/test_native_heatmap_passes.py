"""The native ``softmax_heatmap`` and ``heatmap_gradient`` passes against the array-API ones.

Each pass is called directly on both implementations (``dsnt_core.kernels.array_api_kernels()``
and ``"torch-native"``) for 1-, 2- and 3-D heatmaps in float64, float32, bfloat16 and float16,
with temperatures other than 1, heatmaps that are all ``-inf`` (uniform, ``lse = 0``), hold a
NaN or a ``+inf`` (NaN throughout), and with and without the ``elementwise`` term; then
``dsnt_core.soft_argmax`` end to end (forward, backward, double backward), which keeps ``P``
for eager reverse mode. The module is skipped with the reason where the extension cannot be
built.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import logits_arrays

import dsnt_core
from dsnt_core.kernels import array_api_kernels, get_kernels

torch = pytest.importorskip("torch")
native = pytest.importorskip("dsnt_torch.native")
xp = pytest.importorskip("array_api_compat.torch")

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPUTE = {torch.float64: torch.float64, torch.float32: torch.float32, torch.bfloat16: torch.float32}
COMPUTE[torch.float16] = torch.float32
TEMPERATURES = [1.0, 0.6, 2.5]


@pytest.fixture(scope="module", autouse=True)
def _extension_built():
    """Skip the module where the extension cannot be built (the build happens here, not at collection)."""
    reason = native.NativeKernels().unavailable_reason()
    if reason is not None:
        pytest.skip(f"the native extension cannot be built here: {reason}")


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for results computed in ``dtype``'s compute dtype.

    ``atol`` is relative to the largest reference entry, or to 1 where that is smaller: the
    natural scale of ``P`` and of coordinates (a ``mu`` that should be 0 comes out as 1e-17).
    """
    return (1e-12, 1e-13) if dtype == torch.float64 else (2e-5, 2e-6)


def _assert_close(ours, reference, dtype, what, *, stored=False):
    """NaN where the reference is NaN, else within ``dtype``'s tolerances (one rounding of ``dtype`` if ``stored``)."""
    assert ours.dtype == reference.dtype, f"{what}: dtype {ours.dtype}, expected {reference.dtype}"
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)}, expected {tuple(reference.shape)}"
    rtol, atol = _tolerances(dtype)
    if stored and dtype in (torch.bfloat16, torch.float16):
        rtol = 2.0 * torch.finfo(dtype).eps  # P is rounded to 16 bits once; float32 differences may flip it
    finite = reference[~torch.isnan(reference)].double().abs()
    scale = max(float(finite.max()) if finite.numel() else 1.0, 1.0)
    torch.testing.assert_close(
        ours.double(), reference.double(), rtol=rtol, atol=atol * scale, equal_nan=True, msg=what
    )


def _special_logits(data, values: np.ndarray, ndim: int) -> np.ndarray:
    """``values`` with, on hypothesis' choice, a heatmap of -inf, one holding a NaN, one a +inf, and scattered -inf."""
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    n = flat.shape[0]
    if data.draw(st.booleans(), label="scattered -inf logits") and flat[0].size > 1:
        flat.reshape(n, -1)[:, :: max(2, flat[0].size // 3)] = -np.inf
    special = data.draw(st.lists(st.sampled_from(["-inf heatmap", "nan", "+inf"]), max_size=3, unique=True))
    for index, kind in enumerate(special[:n]):
        heatmap = flat[n - 1 - index].reshape(-1)
        if kind == "-inf heatmap":
            heatmap[:] = -np.inf
        else:
            heatmap[data.draw(st.integers(0, heatmap.size - 1), label=f"where {kind}")] = (
                np.nan if kind == "nan" else np.inf
            )
    return values


def _logits(data, case, dtype_name: str):
    values, ndim = case
    return torch.tensor(_special_logits(data, values, ndim)).to(DTYPES[dtype_name]), ndim


# ---------------------------------------------------------------------------- the passes


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    dtype_name=st.sampled_from(list(DTYPES)),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_softmax_heatmap_matches_the_array_api_pass(data, case, dtype_name, temperature):
    logits, ndim = _logits(data, case, dtype_name)
    dtype = logits.dtype
    (reference, p_reference) = array_api_kernels().softmax_heatmap(xp, logits, ndim, temperature)
    (ours, p_ours) = get_kernels("torch-native").softmax_heatmap(xp, logits, ndim, temperature)
    assert p_ours.dtype == dtype and p_ours.shape == logits.shape
    assert ours.lse.dtype == ours.mu.dtype == COMPUTE[dtype]
    _assert_close(ours.lse, reference.lse, dtype, "lse")
    _assert_close(ours.mu, reference.mu, dtype, "mu")
    _assert_close(p_ours, p_reference, dtype, "P", stored=True)


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    dtype_name=st.sampled_from(list(DTYPES)),
    temperature=st.sampled_from(TEMPERATURES),
    with_elementwise=st.booleans(),
    broadcast_per_axis=st.booleans(),
)
def test_heatmap_gradient_matches_the_array_api_pass(
    data, case, dtype_name, temperature, with_elementwise, broadcast_per_axis
):
    logits, ndim = _logits(data, case, dtype_name)
    dtype, compute = logits.dtype, COMPUTE[logits.dtype]
    _, heatmap = array_api_kernels().softmax_heatmap(xp, logits, ndim, temperature)  # one P for both
    batch, spatial = logits.shape[: logits.ndim - ndim], logits.shape[logits.ndim - ndim :]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    per_axis = []
    for k in range(ndim):
        shape = (spatial[-1 - k],) if broadcast_per_axis else (*batch, spatial[-1 - k])
        per_axis.append(torch.tensor(rng.normal(size=shape) * 2, dtype=compute))
    elementwise = torch.tensor(rng.normal(size=logits.shape)).to(dtype) if with_elementwise else None
    reference = array_api_kernels().heatmap_gradient(xp, heatmap, per_axis, elementwise, ndim, temperature)
    ours = get_kernels("torch-native").heatmap_gradient(xp, heatmap, per_axis, elementwise, ndim, temperature)
    _assert_close(ours, reference, dtype, "gradient")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape,ndim", [((4, 5, 64, 48), 2), ((2, 3, 8, 16, 16), 3), ((6, 70), 1), ((3, 1, 1), 2)])
def test_both_passes_match_at_realistic_sizes(dtype_name, shape, ndim):
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=shape) * 4).to(DTYPES[dtype_name])
    (reference, p_reference) = array_api_kernels().softmax_heatmap(xp, logits, ndim, 0.7)
    (ours, p_ours) = get_kernels("torch-native").softmax_heatmap(xp, logits, ndim, 0.7)
    for what, a, b, stored in [("lse", ours.lse, reference.lse, False), ("mu", ours.mu, reference.mu, False)]:
        _assert_close(a, b, logits.dtype, what, stored=stored)
    _assert_close(p_ours, p_reference, logits.dtype, "P", stored=True)
    compute = COMPUTE[logits.dtype]
    batch = shape[: len(shape) - ndim]
    per_axis = [torch.tensor(rng.normal(size=(*batch, shape[-1 - k])), dtype=compute) for k in range(ndim)]
    elementwise = torch.tensor(rng.normal(size=shape)).to(logits.dtype)
    for extra in (None, elementwise):
        reference_grad = array_api_kernels().heatmap_gradient(xp, p_reference, per_axis, extra, ndim, 0.7)
        grad = get_kernels("torch-native").heatmap_gradient(xp, p_reference, per_axis, extra, ndim, 0.7)
        _assert_close(grad, reference_grad, logits.dtype, f"gradient, elementwise {extra is not None}")


def test_special_heatmaps_give_zero_or_nan_results_and_leave_the_others_alone():
    logits = torch.randn(5, 3, 4, dtype=torch.float64)
    logits[0] = -torch.inf
    logits[1, 2, 1] = torch.nan
    logits[2, 0, 3] = torch.inf
    logits[3, 1] = -torch.inf  # a row of -inf in an ordinary heatmap
    residuals, heatmap = get_kernels("torch-native").softmax_heatmap(xp, logits, 2, 1.5)
    assert float(residuals.lse[0]) == 0.0
    # All -inf: the kept P is 0 (coordinates 0, as for the uniform heatmap it stands for; zero gradient).
    assert torch.equal(heatmap[0], torch.zeros((3, 4), dtype=torch.float64))
    assert torch.equal(residuals.mu[0], torch.zeros(2, dtype=torch.float64))
    for poisoned in (1, 2):
        assert torch.isnan(residuals.lse[poisoned]) and torch.isnan(residuals.mu[poisoned]).all()
        assert torch.isnan(heatmap[poisoned]).all()
    assert not torch.isnan(heatmap[3:]).any() and torch.equal(heatmap[3, 1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(heatmap[3:].sum(dim=(-1, -2)), torch.ones(2, dtype=torch.float64))
    per_axis = [torch.ones(5, 4, dtype=torch.float64), torch.ones(5, 3, dtype=torch.float64)]
    grad = get_kernels("torch-native").heatmap_gradient(xp, heatmap, per_axis, None, 2, 1.5)
    assert torch.isnan(grad[1:3]).all() and not torch.isnan(grad[[0, 3, 4]]).any()
    assert torch.equal(grad[0], torch.zeros((3, 4), dtype=torch.float64))


def test_the_extension_checks_its_arguments():
    ext = native.extension()
    heatmap = torch.rand(2, 1, 3, 4)
    per_axis = [torch.rand(2, 4), torch.rand(2, 3), torch.rand(2, 1)]
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        ext.softmax_heatmap(torch.rand(2, 1, 4, 3).transpose(-1, -2), ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="logits must be float16, bfloat16, float32 or float64, got int64"):
        ext.softmax_heatmap(torch.zeros(2, 1, 3, 4, dtype=torch.int64), ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="must have D = 1"):
        ext.softmax_heatmap(torch.rand(2, 2, 3, 4), ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="ndim must be 1, 2 or 3"):
        ext.softmax_heatmap(heatmap, ndim=4, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="inv_temperature must be positive and finite"):
        ext.softmax_heatmap(heatmap, ndim=2, inv_temperature=0.0)
    with pytest.raises(RuntimeError, match=r"per_axis\[1\] \(y\) must have shape \[2, 3\]"):
        ext.heatmap_gradient(heatmap, [per_axis[0], torch.rand(2, 4), per_axis[2]], None, ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match=r"per_axis\[0\] \(x\) must have the compute dtype of heatmap \(float32\)"):
        ext.heatmap_gradient(heatmap.bfloat16(), [v.bfloat16() for v in per_axis], None, ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="elementwise must have shape"):
        ext.heatmap_gradient(heatmap, per_axis, torch.rand(2, 1, 3, 3), ndim=2, inv_temperature=1.0)
    with pytest.raises(RuntimeError, match="elementwise must have the dtype of heatmap"):
        ext.heatmap_gradient(
            heatmap, per_axis, torch.rand(2, 1, 3, 4, dtype=torch.float64), ndim=2, inv_temperature=1.0
        )


# ------------------------------------------------------------------------------ end to end


def _soft_argmax_results(logits, ndim, temperature, cotangent, kernels):
    """Coordinates and their gradient (backward with ``cotangent``) under ``kernels``."""
    z = logits.detach().clone().requires_grad_()
    with dsnt_core.use_kernels(kernels):
        coords = dsnt_core.soft_argmax(z, ndim=ndim, temperature=temperature)
        coords.backward(cotangent)
    return coords.detach(), z.grad


def _counting(monkeypatch, calls):
    """Record in ``calls`` each call of the native heatmap passes (with whether ``elementwise`` was given)."""
    cls = native.NativeKernels
    forward, backward = cls.softmax_heatmap, cls.heatmap_gradient

    def softmax_heatmap(self, *args, **kwargs):
        calls.append("softmax_heatmap")
        return forward(self, *args, **kwargs)

    def heatmap_gradient(self, xp_, heatmap, per_axis, elementwise, *args, **kwargs):
        calls.append("heatmap_gradient" + ("+elementwise" if elementwise is not None else ""))
        return backward(self, xp_, heatmap, per_axis, elementwise, *args, **kwargs)

    monkeypatch.setattr(cls, "softmax_heatmap", softmax_heatmap)
    monkeypatch.setattr(cls, "heatmap_gradient", heatmap_gradient)


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    dtype_name=st.sampled_from(list(DTYPES)),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_soft_argmax_forward_and_backward_match_the_array_api_kernels(data, case, dtype_name, temperature):
    logits, ndim = _logits(data, case, dtype_name)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    cotangent = torch.tensor(rng.normal(size=(*logits.shape[: logits.ndim - ndim], ndim))).to(logits.dtype)
    coords, grad = _soft_argmax_results(logits, ndim, temperature, cotangent, "torch-native")
    reference_coords, reference_grad = _soft_argmax_results(logits, ndim, temperature, cotangent, "array-api")
    _assert_close(coords, reference_coords, logits.dtype, "coords", stored=True)
    _assert_close(grad, reference_grad, logits.dtype, "grad", stored=True)


def test_soft_argmax_runs_the_native_heatmap_passes(monkeypatch):
    calls: list[str] = []
    _counting(monkeypatch, calls)
    whole = native.extension().soft_argmax_backward_from_heatmap

    def whole_rule(*args, **kwargs):  # the backward rule run whole by NativeKernels.wrap_rule, where it is asked
        calls.append("heatmap_gradient")
        return whole(*args, **kwargs)

    monkeypatch.setattr(native.extension(), "soft_argmax_backward_from_heatmap", whole_rule)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    with dsnt_core.use_kernels("torch-native"):
        dsnt_core.soft_argmax(logits).backward(torch.ones(2, 3, 2))
    assert calls == ["softmax_heatmap", "heatmap_gradient"]


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("shape,ndim,temperature", [((2, 3, 6, 5), 2, 1.0), ((2, 4, 3, 5), 3, 0.6), ((3, 9), 1, 2.5)])
def test_double_backward_matches_and_differentiates_through_the_native_heatmap_gradient(
    monkeypatch, dtype_name, shape, ndim, temperature
):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(11)
    logits = torch.tensor(rng.normal(size=shape) * 3, dtype=dtype)
    weights = torch.tensor(rng.normal(size=(*shape[: len(shape) - ndim], ndim)), dtype=dtype)
    direction = torch.tensor(rng.normal(size=shape), dtype=dtype)

    def second_order(kernels):
        z = logits.clone().requires_grad_()
        with dsnt_core.use_kernels(kernels):
            coords = dsnt_core.soft_argmax(z, ndim=ndim, temperature=temperature)
            (grad,) = torch.autograd.grad((coords * weights).sum(), z, create_graph=True)
            (grad * direction).sum().backward()
        return grad.detach(), z.grad

    calls: list[str] = []
    _counting(monkeypatch, calls)
    grad, hessian_vector = second_order("torch-native")
    assert "heatmap_gradient+elementwise" in calls  # the cotangent of the kept P, natively
    reference_grad, reference_hessian_vector = second_order("array-api")
    _assert_close(grad, reference_grad, dtype, "grad")
    _assert_close(hessian_vector, reference_hessian_vector, dtype, "Hessian-vector product")
