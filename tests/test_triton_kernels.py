"""The ``"torch-triton"`` kernels against the array-API passes, in Triton's interpreter on the CPU.

The kernels run CPU tensors through the interpreter whatever the process did first: they are
loaded a second time with the interpreter switched on (`triton_kernels.interpreted_source`),
so these tests need no ``TRITON_INTERPRET=1`` and do not care whether another test module
imported Triton before. One test runs a subprocess with ``TRITON_INTERPRET=1`` set from the
start, the other way round. The GPU side is checked by compiling every kernel, for every
dtype and constexpr combination the passes launch, to PTX and a cubin for sm_90 (no GPU
needed), and by tracing ``torch.compile`` down to the graph Inductor would get.
"""

from __future__ import annotations

import concurrent.futures
import doctest
import functools
import importlib.util
import itertools
import math
import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import logits_arrays, targets_for

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed (pip install 'dsnt-core[torch]')", allow_module_level=True)
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

import torch
from array_api_compat import torch as xp
from dsnt_torch import autograd as adapter
from dsnt_torch import triton_kernels as tk

import dsnt_core
from dsnt_core.kernels import Divergence, DivergenceKind, array_api_kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.gaussian import log_gaussian_factors
from dsnt_core.ops.soft_argmax import soft_argmax_backward, soft_argmax_forward

if tk._IMPORT_ERROR is not None:
    pytest.skip(f"the Triton kernels cannot run here: {tk._IMPORT_ERROR}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TRITON = tk.KERNELS
REFERENCE = array_api_kernels()
REGULARIZERS = ("js", "kl", "var", None)
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOLERANCES = {  # (rtol, atol relative to the largest magnitude of the reference)
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1e-4, 1e-5),  # the same 16-bit values on both sides, both accumulated in float32
    torch.float16: (1e-4, 1e-5),
}


GPU_TOLERANCES = {  # a GPU's float32 exp and log are approximate (ex2.approx, lg2.approx): a few ulp more
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-4, 2e-5),
    torch.bfloat16: (2e-4, 2e-5),
    torch.float16: (2e-4, 2e-5),
}
requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the kernels are checked in Triton's interpreter and compiled for sm_90 instead",
)


def _assert_close(actual, expected, dtype, what, tolerances=TOLERANCES):
    if expected is None:
        assert actual is None, what
        return
    assert actual.dtype == expected.dtype, f"{what}: {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.device == expected.device, f"{what}: {actual.device} != {expected.device}"
    rtol, atol = tolerances[dtype]
    a, b = actual.double().cpu().numpy(), expected.double().cpu().numpy()
    finite = b[np.isfinite(b)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale, err_msg=what)  # NaN must match NaN


def _mixture(values: torch.Tensor, ndim: int, target: np.ndarray, sigma: float) -> list[torch.Tensor]:
    """The JS rule's factors of ``Q``: normalised discrete Gaussians at ``target``, in the compute dtype."""
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    spatial = tuple(values.shape[values.ndim - ndim :])
    logs = log_gaussian_factors(xp, torch.as_tensor(target, dtype=dtype, device=values.device), spatial, sigma)
    return [torch.exp(f) for f in logs]


def _compare_every_pass(logits, ndim, temperature, factors, per_axis, coef, dtype, tolerances=TOLERANCES):
    """Every pass of the contract, with every option, Triton against array-API."""
    check = functools.partial(_assert_close, tolerances=tolerances)
    for entropy, mixture in ((False, None), (True, None), (True, factors)):
        got = TRITON.softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        want = REFERENCE.softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        options = f"entropy={entropy}, mixture={mixture is not None}"
        check(got.lse, want.lse, dtype, f"lse ({options})")
        assert len(got.margins) == ndim
        for k in range(ndim):
            check(got.margins[k], want.margins[k], dtype, f"margin {k} ({options})")
        for field in ("neg_entropy", "m_log_m", "p_log_m"):
            check(getattr(got, field), getattr(want, field), dtype, f"{field} ({options})")
    got, want = (
        TRITON.softmax_moments(xp, logits, ndim, temperature),
        REFERENCE.softmax_moments(xp, logits, ndim, temperature),
    )
    check(got.lse, want.lse, dtype, "moments lse")
    check(got.mu, want.mu, dtype, "moments mu")
    lse = want.lse
    divergences = (
        None,
        Divergence(DivergenceKind.KL, coef),
        Divergence(DivergenceKind.JS, coef, tuple(factors)),
    )
    for divergence in divergences:
        kind = None if divergence is None else divergence.kind.value
        got = TRITON.gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        want = REFERENCE.gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        check(got, want, dtype, f"gradient map ({kind})")


@st.composite
def pass_cases(draw, max_side=7):
    """Logits with -inf heatmaps, scattered -inf, a NaN or +inf heatmap, and everything the passes take."""
    values, ndim = draw(logits_arrays(max_side=max_side, scale=20.0))
    values = values.copy()
    spatial = values.shape[values.ndim - ndim :]
    flat = values.reshape(-1, *spatial)
    if draw(st.booleans()):
        flat[0] = -np.inf
    if flat.size > 1 and draw(st.booleans()):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    poison = draw(st.sampled_from([None, np.nan, np.inf]))
    if poison is not None:
        where = draw(st.integers(0, flat[0].size - 1))
        flat[-1].reshape(-1)[where] = poison
    target = draw(targets_for(values.shape, ndim))
    sigma = draw(st.sampled_from([0.5, 1.0, 2.0]))
    temperature = draw(st.sampled_from([1.0, 0.6, 2.5]))
    seed = draw(st.integers(0, 2**16))
    return values, ndim, target, sigma, temperature, seed


def _run_pass_case(case, dtype):
    values, ndim, target, sigma, temperature, seed = case
    logits = torch.as_tensor(values).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    generator = torch.Generator().manual_seed(seed)
    batch = tuple(logits.shape[: logits.ndim - ndim])
    factors = _mixture(logits, ndim, target, sigma)
    per_axis = [torch.randn((*batch, logits.shape[-1 - k]), generator=generator, dtype=compute) for k in range(ndim)]
    coef = torch.rand(batch, generator=generator, dtype=compute) * 3
    _compare_every_pass(logits, ndim, temperature, factors, per_axis, coef, dtype)


@settings(max_examples=30)
@given(case=pass_cases())
def test_every_pass_matches_the_array_api_passes_in_float64(case):
    _run_pass_case(case, torch.float64)


@settings(max_examples=15)
@given(case=pass_cases())
def test_every_pass_matches_the_array_api_passes_in_float32(case):
    _run_pass_case(case, torch.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@settings(max_examples=8)
@given(case=pass_cases())
def test_every_pass_takes_16_bit_logits_and_answers_in_float32(dtype, case):
    _run_pass_case(case, DTYPES[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "shape,ndim",
    [
        ((2, 256, 256), 2),  # 65536 elements: 16 tiles of 16 rows, the JS sums in a second sweep
        ((1, 2, 16, 32, 48), 3),  # 3-D, several tiles; y and z marginals from the row sums
        ((3, 5000), 1),  # one long row, one tile
        ((2, 20000), 1),  # longer than a row may be: statistics fall back, moments tile the columns
        ((1, 9000, 3), 2),  # taller than a column may be: statistics fall back, the others loop over rows
    ],
)
def test_heatmaps_larger_than_one_block(shape, ndim, dtype):
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(shape, generator=generator, dtype=torch.float64) * 4).to(DTYPES[dtype])
    logits.reshape(-1, *shape[len(shape) - ndim :])[0, ..., :3] = -math.inf  # some -inf in the first heatmap
    # the peak in the last tile, so that the running maximum moves and the sums are rescaled
    logits.reshape(-1, math.prod(shape[len(shape) - ndim :]))[:, -1] = 30.0
    batch = shape[: len(shape) - ndim]
    target = torch.rand((*batch, ndim), generator=generator, dtype=torch.float64).numpy() * 1.6 - 0.8
    compute = logits.dtype
    factors = _mixture(logits, ndim, target, 1.5)
    per_axis = [torch.randn((*batch, shape[-1 - k]), generator=generator, dtype=compute) for k in range(ndim)]
    coef = torch.rand(batch, generator=generator, dtype=compute)
    _compare_every_pass(logits, ndim, 0.8, factors, per_axis, coef, DTYPES[dtype])
    blocks = tk.statistics_blocks(*(1,) * (3 - ndim), *shape[len(shape) - ndim :])
    if ndim > 1:
        assert not blocks["SINGLE_TILE"]  # this test is about the loop


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_minus_inf_nan_and_inf_heatmaps(ndim, dtype):
    """An all -inf heatmap is uniform with lse 0 and a zero gradient; NaN and +inf poison only their heatmap."""
    shape = (4, *(5, 6, 7)[3 - ndim :])
    generator = torch.Generator().manual_seed(ndim)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64).to(DTYPES[dtype])
    logits[0] = -math.inf
    logits[1].view(-1)[2] = math.nan
    logits[2].view(-1)[-1] = math.inf
    spatial = shape[1:]
    compute = torch.float64 if dtype == "float64" else torch.float32
    stats = TRITON.softmax_statistics(
        xp, logits, ndim, 1.0, entropy=True, mixture=_mixture(logits, ndim, np.zeros((4, ndim)), 1.0)
    )
    assert stats.lse.dtype == compute
    assert stats.lse[0] == 0 and torch.isnan(stats.lse[1:3]).all() and torch.isfinite(stats.lse[3])
    for k, margin in enumerate(stats.margins):
        torch.testing.assert_close(margin[0], torch.full((spatial[-1 - k],), 1 / spatial[-1 - k], dtype=compute))
        assert torch.isnan(margin[1:3]).all() and torch.isfinite(margin[3]).all()
    assert stats.neg_entropy[0] == pytest.approx(-math.log(math.prod(spatial)), rel=1e-6)
    for value in (stats.neg_entropy, stats.m_log_m, stats.p_log_m):
        assert torch.isnan(value[1:3]).all() and torch.isfinite(value[[0, 3]]).all()
    moments = TRITON.softmax_moments(xp, logits, ndim, 1.0)
    assert moments.lse[0] == 0 and (moments.mu[0] == 0).all() and torch.isnan(moments.mu[1:3]).all()
    per_axis = [torch.ones((4, spatial[-1 - k]), dtype=compute) for k in range(ndim)]
    factors = tuple(torch.full((4, spatial[-1 - k]), 0.1, dtype=compute) for k in range(ndim))
    for divergence in (
        None,
        Divergence(DivergenceKind.KL, torch.full((4,), 5.0, dtype=compute)),
        Divergence(DivergenceKind.JS, torch.full((4,), 5.0, dtype=compute), factors),
    ):
        grad = TRITON.gradient_map(xp, logits, stats.lse, per_axis, divergence, ndim, 1.0)
        assert (grad[0] == 0).all()
        assert torch.isnan(grad[1:3]).all()
        assert torch.isfinite(grad[3]).all()
        if divergence is not None:  # the clean heatmap alone, for comparison
            divergence = divergence._replace(coef=divergence.coef[3:], factors=tuple(f[3:] for f in divergence.factors))
        alone = REFERENCE.gradient_map(xp, logits[3:], stats.lse[3:], [p[3:] for p in per_axis], divergence, ndim, 1.0)
        torch.testing.assert_close(grad[3], alone[0])


# --------------------------------------------------------------- the rules, end to end


def _rules(kernels, logits, target, cotangent, mask, options):
    """soft_argmax and dsnt_loss, forward and backward, through the core's rules with ``kernels``."""
    ndim, temperature = options.ndim, options.temperature
    coords, residuals = soft_argmax_forward(xp, logits, ndim, temperature, kernels)
    coords_grad = soft_argmax_backward(xp, logits, residuals, cotangent, ndim, temperature, kernels)
    loss, loss_residuals = dsnt_loss_forward(xp, logits, target, mask, options, kernels)
    loss_grad = dsnt_loss_backward(xp, logits, target, mask, loss_residuals, torch.ones_like(loss), options, kernels)
    kept = [loss_residuals.lse, loss_residuals.mu, loss_residuals.var, loss_residuals.divergence]
    return [coords, residuals.lse, residuals.mu, coords_grad, loss, *kept, loss_grad]


NAMES = ["coords", "lse", "mu", "coords grad", "loss", "loss lse", "loss mu", "var", "divergence", "loss grad"]


@settings(max_examples=20)
@given(
    data=st.data(),
    case=logits_arrays(max_side=8, scale=20.0),
    regularizer=st.sampled_from(REGULARIZERS),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    use_mask=st.booleans(),
    sigma=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_the_rules_agree_with_the_array_api_kernels_in_float64(data, case, regularizer, temperature, use_mask, sigma):
    values, ndim = case
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if data.draw(st.booleans(), label="a heatmap of -inf"):
        flat[0] = -np.inf
    if flat.size > 1 and data.draw(st.booleans(), label="some -inf logits"):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    batch = values.shape[: values.ndim - ndim]
    logits = torch.as_tensor(values)
    target = torch.as_tensor(data.draw(targets_for(values.shape, ndim)))
    cotangent = torch.as_tensor(data.draw(targets_for(values.shape, ndim, limit=2.0)))
    mask = torch.as_tensor(np.arange(math.prod(batch)).reshape(batch) % 3 != 1) if use_mask else None
    options = LossOptions(ndim=ndim, temperature=temperature, sigma=sigma, regularizer=regularizer, reg_weight=0.7)
    want = _rules(REFERENCE, logits, target, cotangent, mask, options)
    # At coordinates equal to the target the Euclidean term has a kink: which side of it a
    # rounding error lands on decides the gradient, so such cases prove nothing.
    assume(bool(torch.all(torch.linalg.vector_norm(want[0] - target, dim=-1) > 1e-6)))
    got = _rules(TRITON, logits, target, cotangent, mask, options)
    for name, a, b in zip(NAMES, got, want):
        _assert_close(a, b, torch.float64, name)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("shape,ndim", [((4, 5, 40, 36), 2), ((2, 3, 6, 16, 16), 3), ((6, 70), 1)])
def test_the_rules_agree_in_float32_at_realistic_sizes_with_a_mask(regularizer, shape, ndim):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=generator) * 4
    batch = shape[: len(shape) - ndim]
    target = torch.rand((*batch, ndim), generator=generator) * 1.6 - 0.8
    cotangent = torch.randn(target.shape, generator=generator)
    mask = torch.rand(batch, generator=generator) > 0.3
    options = LossOptions(ndim=ndim, temperature=0.7, sigma=1.0, regularizer=regularizer, reg_weight=1.0)
    got = _rules(TRITON, logits, target, cotangent, mask, options)
    want = _rules(REFERENCE, logits, target, cotangent, mask, options)
    for name, a, b in zip(NAMES, got, want):
        _assert_close(a, b, torch.float32, name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_autograd_through_the_adapter_matches(regularizer, dtype):
    """``dsnt_torch``'s autograd functions with these kernels: values and gradients, in the logits' dtype."""
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 3, 12, 10, generator=generator) * 3).to(DTYPES[dtype])
    target = (torch.rand(2, 3, 2, generator=generator) * 1.6 - 0.8).to(logits.dtype)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    options = LossOptions(ndim=2, temperature=1.3, sigma=1.0, regularizer=regularizer, reg_weight=0.5)
    results = []
    for kernels in (TRITON, REFERENCE):
        z = logits.detach().clone().requires_grad_()
        loss = adapter.dsnt_loss(z, target, mask, options, kernels=kernels)
        (loss_grad,) = torch.autograd.grad(loss, z)
        z = logits.detach().clone().requires_grad_()
        coords = adapter.soft_argmax(z, ndim=2, temperature=1.3, kernels=kernels)
        (coords_grad,) = torch.autograd.grad(coords, z, torch.ones_like(coords))
        results.append((loss.detach(), loss_grad, coords.detach(), coords_grad))
    for name, a, b in zip(("loss", "loss grad", "coords", "coords grad"), *results):
        assert a.dtype == logits.dtype, name
        tolerance = {"float64": 1e-10, "float32": 1e-5}.get(dtype, 1e-2)  # 16-bit: rounded to the dtype at the end
        scale = max(1.0, float(b.double().abs().max()))
        torch.testing.assert_close(a.double(), b.double(), rtol=tolerance, atol=tolerance * scale, msg=name)


# ------------------------------------------------------- choice, availability, registration


def test_applies_to_cuda_tensors_and_to_cpu_tensors_only_with_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.zeros(2, 4, 4)
    assert not TRITON.applies_to(cpu)
    assert not TRITON.applies_to(np.zeros((2, 4, 4)))
    assert not TRITON.applies_to(torch.zeros(2, 4, 4, device="meta"))
    if not torch.cuda.is_available():
        assert "no CUDA device" in TRITON.unavailable_reason()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert TRITON.unavailable_reason() is None
    assert not TRITON.applies_to(cpu), "the interpreter must never be an automatic choice"
    with dsnt_core.use_kernels("torch-triton"):
        assert TRITON.applies_to(cpu)
        assert TRITON.applies_to(cpu.to(torch.bfloat16)) and TRITON.applies_to(cpu.double())
        assert not TRITON.applies_to(cpu.long())
        seen = []
        torch.func.vmap(lambda z: seen.append(TRITON.applies_to(z)) or z.sum())(cpu)
        assert seen == [False]  # inside functorch transforms: the array-API passes


def test_the_passes_are_registered_custom_operators():
    for name in ("softmax_statistics", "softmax_moments", "gradient_map"):
        assert hasattr(torch.ops.dsnt_triton, name)
    u = torch.randn(4, 1, 6, 5)
    fx, fy = torch.rand(4, 5), torch.rand(4, 6)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    # test_aot_dispatch_dynamic runs the traced kernels: that needs a GPU (Triton's driver).
    cases = [
        (tk.operators().softmax_statistics, (u, fx, fy, None, 0.7, 2, True)),
        (tk.operators().softmax_statistics, (u.double(), None, None, None, 1.0, 2, False)),
        (tk.operators().softmax_moments, (u.half(), 0.5, 2)),
        (
            tk.operators().gradient_map,
            (u, torch.rand(4), torch.rand(4, 5), torch.rand(4, 6), None, torch.rand(4), fx, fy, None, 0.5, 2, 2),
        ),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args, test_utils=checks)
        assert set(result.values()) == {"SUCCESS"}, result


def _loss_and_coords(logits, target):
    options = LossOptions(ndim=2, temperature=1.0, sigma=1.0, regularizer="js", reg_weight=1.0)
    loss = adapter.dsnt_loss(logits, target, None, options, kernels=TRITON)
    coords = adapter.soft_argmax(logits, ndim=2, temperature=1.0, kernels=TRITON)
    return loss + coords.sum()


def test_torch_compile_fullgraph_keeps_the_operators(monkeypatch):
    """Dynamo traces everything, the operators included, in one graph (run here in the interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 2) - 0.5
    ops = []

    def backend(graph_module, example_inputs):
        for module in graph_module.modules():  # the autograd functions' forward and backward are subgraphs
            if isinstance(module, torch.fx.GraphModule):
                ops.extend(str(node.target) for node in module.graph.nodes if node.op == "call_function")
        return graph_module

    tk.operators()  # registered at import with a GPU or TRITON_INTERPRET=1 set, else on first use: here, eagerly
    torch._dynamo.reset()
    compiled = torch.compile(_loss_and_coords, fullgraph=True, backend=backend)
    value = compiled(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert any("dsnt_triton.softmax_statistics" in op for op in ops), ops
    assert any("dsnt_triton.softmax_moments" in op for op in ops), ops
    assert sum("dsnt_triton.gradient_map" in op for op in ops) == 2, ops  # both backward passes
    expected = _loss_and_coords(logits, target)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_torch_compile_hands_inductor_the_triton_kernels():
    """AOTAutograd decomposes the operators into Triton kernel nodes, forward and backward (not run: no GPU)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    joint = []

    class Captured(Exception):
        pass

    def partition(joint_module, *args, **kwargs):
        joint.append(joint_module)
        raise Captured

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 2) - 0.5
    tk.operators()
    torch._dynamo.reset()
    compiled = torch.compile(
        _loss_and_coords, fullgraph=True, backend=aot_autograd(fw_compiler=lambda gm, _: gm, partition_fn=partition)
    )
    with warnings.catch_warnings(), pytest.raises(Exception) as raised:
        warnings.simplefilter("ignore")
        compiled(logits, target)
    assert joint, f"the joint graph was not captured: {raised.value!r}"
    kernels = [
        kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__
        for node in joint[0].graph.nodes
        if "TritonKernelWrapper" in type(node.target).__name__
    ]
    assert sorted(set(kernels)) == ["gradient_map_kernel", "softmax_moments_kernel", "softmax_statistics_kernel"]
    assert kernels.count("gradient_map_kernel") == 2  # one per backward: soft_argmax and dsnt_loss


def test_the_interpreter_is_chosen_per_call_and_set_before_import_works_too():
    """A process with TRITON_INTERPRET=1 from the start: interpreted kernels, JIT ones for compilation."""
    script = textwrap.dedent(
        """
        import torch
        from array_api_compat import torch as xp
        import dsnt_core
        from dsnt_core.kernels import array_api_kernels
        from dsnt_torch import triton_kernels as tk, triton_source
        assert tk.is_interpreted(triton_source) and not tk.is_interpreted(tk.compiled_source())
        assert not tk.KERNELS.applies_to(torch.zeros(3, 3))  # never automatic on the CPU
        dsnt_core.use_kernels("torch-triton")
        assert tk.KERNELS.unavailable_reason() is None and tk.KERNELS.applies_to(torch.zeros(3, 3))
        logits = torch.randn(3, 5, 6, dtype=torch.float64)
        got = tk.KERNELS.softmax_moments(xp, logits, 2, 1.0)
        want = array_api_kernels().softmax_moments(xp, logits, 2, 1.0)
        torch.testing.assert_close(got.mu, want.mu)
        print("ok")
        """
    )
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_the_module_copies_are_interpreted_or_compiled():
    assert tk.is_interpreted(tk.interpreted_source())
    assert not tk.is_interpreted(tk.compiled_source())
    assert tk.interpreted_source() is tk.interpreted_source()


@pytest.mark.parametrize("module", ["dsnt_torch.triton_kernels"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------- compiling for a real GPU

TARGET = ("cuda", 90, 32)  # sm_90 (H100, H200), warp size 32
SHAPES = {1: [(1, 1, 700)], 2: [(1, 40, 36), (1, 256, 256)], 3: [(6, 16, 16), (8, 64, 64)]}
"""Spatial shapes (D, H, W) per ndim: for `softmax_statistics`, one that is a single tile and one that is not."""
FLAGS = [(False, False), (True, False), (True, True)]
"""(entropy, mixture) of ``softmax_statistics``: no regulariser or var, KL, JS."""
FULL_MATRIX = os.environ.get("DSNT_TRITON_FULL_COMPILE", "0") == "1"
"""Compile every 16-bit configuration too (120 compilations instead of 68)."""


def _configurations(kernel_name):
    """(ndim, (D, H, W), constexprs) of every configuration the pass launches (block sizes from one shape)."""
    for ndim in (1, 2, 3):
        if kernel_name == "softmax_statistics_kernel":
            for shape, (entropy, mixture) in itertools.product(SHAPES[ndim], FLAGS):
                yield ndim, shape, dict(tk.statistics_blocks(*shape), ENTROPY=entropy, MIXTURE=mixture)
        elif kernel_name == "softmax_moments_kernel":
            yield ndim, SHAPES[ndim][-1], tk.moments_blocks(*SHAPES[ndim][-1])
        else:
            for kind in (0, 1, 2):  # no divergence, KL, JS
                blocks = tk.gradient_blocks(*SHAPES[ndim][-1])
                del blocks["row_blocks"], blocks["col_blocks"]
                yield ndim, SHAPES[ndim][-1], dict(blocks, KIND=kind, LOG_P_FLOOR=-1.0e4)
    # 1x1x1 heatmaps: every size a constant
    if kernel_name == "softmax_statistics_kernel":
        yield 3, (1, 1, 1), dict(tk.statistics_blocks(1, 1, 1), ENTROPY=True, MIXTURE=True)
    elif kernel_name == "softmax_moments_kernel":
        yield 3, (1, 1, 1), tk.moments_blocks(1, 1, 1)
    else:
        blocks = tk.gradient_blocks(1, 1, 1)
        del blocks["row_blocks"], blocks["col_blocks"]
        yield 3, (1, 1, 1), dict(blocks, KIND=2, LOG_P_FLOOR=-1.0e4)


def _job(kernel, logits_dtype, ndim, shape, constexprs):
    """One compilation, specialised as a launch specialises it: sizes of 1 are constants, pointers aligned."""
    accumulate = torch.float64 if logits_dtype == torch.float64 else torch.float32
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
    constants = dict(constexprs, NDIM=ndim, INTERPRETED=False)
    num_warps = constants.pop("num_warps")
    if "TINY" in kernel.arg_names:
        constants["TINY"] = tk._tiny(accumulate)
    constants.update({name: 1 for name, size in zip("DHW", shape) if size == 1})
    signature, aligned = {}, []
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + names[logits_dtype if name == "logits_ptr" else accumulate]
            aligned.append(index)
        else:  # the parts of 1 / T are float32, sizes int32
            signature[name] = "fp32" if name.startswith("inv_t_") else "i32"
    missing = set(kernel.arg_names) - set(signature)
    assert not missing, missing
    return dict(
        kernel=kernel.fn.__name__,
        signature=signature,
        constants=constants,
        aligned=aligned,
        num_warps=num_warps,
        target=TARGET,
        shape=shape,
    )


def _compile_jobs():
    """Every constexpr combination in float32 and float64 (the two accumulation dtypes); the 16-bit
    loads in each kernel's fullest configurations (3-D, JS), or everywhere with ``FULL_MATRIX``."""
    source = tk.compiled_source()
    jobs = []
    for kernel_name in ("softmax_statistics_kernel", "softmax_moments_kernel", "gradient_map_kernel"):
        kernel = getattr(source, kernel_name)
        for ndim, shape, constexprs in _configurations(kernel_name):
            fullest = (
                ndim == 3 and shape != (1, 1, 1) and constexprs.get("MIXTURE", True) and constexprs.get("KIND", 2) == 2
            )
            for dtype in DTYPES.values():
                if dtype in (torch.float32, torch.float64) or fullest or FULL_MATRIX:
                    jobs.append(_job(kernel, dtype, ndim, shape, constexprs))
    return jobs


def test_every_kernel_configuration_compiles_for_sm90():
    """PTX and a cubin for sm_90, for the dtype and constexpr combinations the passes launch (no GPU needed)."""
    from _triton_compile import compile_job

    jobs = _compile_jobs()
    kernels = {job["kernel"] for job in jobs}
    assert kernels == {"softmax_statistics_kernel", "softmax_moments_kernel", "gradient_map_kernel"}
    single = {job["constants"]["SINGLE_TILE"] for job in jobs if job["kernel"] == "softmax_statistics_kernel"}
    assert single == {True, False}
    context = multiprocessing.get_context("spawn")  # workers import Triton only, never torch
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        results = list(pool.map(compile_job, jobs))
    failures = [(job["kernel"], job["signature"]["logits_ptr"], job["constants"], why) for job, why in results if why]
    assert not failures, failures
    assert len(results) == len(jobs) >= 68


# ------------------------------------------------------------------- on a GPU, when there is one


@requires_cuda
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(
    "shape,ndim",
    [
        ((5, 9, 7), 2),
        ((4, 7, 64, 48), 2),
        ((2, 256, 256), 2),
        ((2, 4, 5, 6), 3),
        ((2, 3, 16, 32, 48), 3),
        ((6, 70), 1),
        ((3, 5000), 1),
    ],
)
def test_on_the_gpu_every_pass_matches_the_array_api_passes(shape, ndim, dtype):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 4
    flat = logits.reshape(-1, *shape[len(shape) - ndim :])
    if flat.shape[0] >= 4:  # a heatmap of -inf, one with a NaN, one with +inf
        flat[0] = -math.inf
        flat[1].view(-1)[1] = math.nan
        flat[2].view(-1)[-1] = math.inf
    logits = logits.to(DTYPES[dtype]).cuda()
    batch = shape[: len(shape) - ndim]
    compute = torch.float64 if dtype == "float64" else torch.float32
    target = torch.rand((*batch, ndim), generator=generator, dtype=torch.float64).numpy() * 1.6 - 0.8
    factors = _mixture(logits, ndim, target, 1.0)
    per_axis = [torch.randn((*batch, shape[-1 - k]), generator=generator, dtype=compute).cuda() for k in range(ndim)]
    coef = torch.rand(batch, generator=generator, dtype=compute).cuda()
    _compare_every_pass(logits, ndim, 0.8, factors, per_axis, coef, DTYPES[dtype], GPU_TOLERANCES)


@requires_cuda
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_on_the_gpu_torch_compile_with_inductor_matches_eager(regularizer):
    generator = torch.Generator().manual_seed(6)
    logits = (torch.randn(4, 5, 32, 24, generator=generator) * 3).cuda()
    target = (torch.rand(4, 5, 2, generator=generator) * 1.6 - 0.8).cuda()
    options = LossOptions(ndim=2, temperature=0.9, sigma=1.0, regularizer=regularizer, reg_weight=0.5)

    def step(z):
        return adapter.dsnt_loss(z, target, None, options, kernels=TRITON)

    results = []
    for function in (step, torch.compile(step, fullgraph=True)):
        z = logits.clone().requires_grad_()
        value = function(z)
        (grad,) = torch.autograd.grad(value, z)
        results.append((value.detach(), grad))
    (value, grad), (compiled_value, compiled_grad) = results
    torch.testing.assert_close(compiled_value, value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, grad, rtol=1e-4, atol=1e-6)


@requires_cuda
def test_on_the_gpu_the_operators_pass_every_opcheck():
    u = torch.randn(4, 1, 6, 5, device="cuda")
    fx, fy = torch.rand(4, 5, device="cuda"), torch.rand(4, 6, device="cuda")
    cases = [
        (tk.operators().softmax_statistics, (u, fx, fy, None, 0.7, 2, True)),
        (tk.operators().softmax_moments, (u.half(), 0.5, 2)),
        (
            tk.operators().gradient_map,
            (
                u,
                torch.rand(4, device="cuda"),
                torch.rand(4, 5, device="cuda"),
                torch.rand(4, 6, device="cuda"),
                None,
                torch.rand(4, device="cuda"),
                fx,
                fy,
                None,
                0.5,
                2,
                2,
            ),
        ),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, result
