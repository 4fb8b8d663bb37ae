"""The ``"torch-native"`` kernels' whole rules (``NativeKernels.wrap_rule``) against the rules of ``dsnt_core.ops``.

For the plain case (numbers for the temperature and sigma, float32 or float64 logits) the
native kernels run the ``soft_argmax`` and ``dsnt_loss`` forward and backward rules whole in
C++, per-heatmap arithmetic included. Here each whole rule is compared with the rule of
``dsnt_core.ops`` on the same kernels (the native passes) and with the array-API native_kernels, for
every regulariser, distance, mask, dimension and dtype, with all ``-inf`` and NaN heatmaps;
calls that are not plain must run the rule itself. The extension's cache of heatmap-sized
output buffers must hand out independent buffers. The module is skipped with the reason
where the extension cannot be built.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dsnt_core
from dsnt_core.kernels import array_api_kernels, get_kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import (
    soft_argmax_backward,
    soft_argmax_backward_from_heatmap,
    soft_argmax_forward,
)

torch = pytest.importorskip("torch")
native = pytest.importorskip("dsnt_torch.native")
xp = pytest.importorskip("array_api_compat.torch")

REGULARIZERS = [None, "var", "kl", "js"]
DISTANCES = ["euclidean", "l1", "mse"]
SHAPES = [((3, 4, 9, 7), 2), ((2, 3, 5, 6, 4), 3), ((5, 11), 1), ((2, 1, 8, 8), 2)]


@pytest.fixture(scope="module")
def native_kernels():
    """The native kernels; the module is skipped where the extension cannot be built."""
    reason = native.NativeKernels().unavailable_reason()
    if reason is not None:
        pytest.skip(f"the native extension cannot be built here: {reason}")
    return get_kernels("torch-native")


@pytest.fixture
def whole_rule_calls(monkeypatch, native_kernels):
    """The names of the extension's whole rules called during the test, in order."""
    calls: list[str] = []
    module = native.extension()
    for name in native.WHOLE_RULES:
        function = getattr(module, name)

        def counted(*args, _function=function, _name=name, **kwargs):
            calls.append(_name)
            return _function(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def _logits(shape, ndim, dtype, seed=0):
    """Random logits with one all ``-inf`` heatmap and a few ``-inf`` logits elsewhere."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape) * 3
    flat = values.reshape(-1, *shape[len(shape) - ndim :])
    flat[0] = -np.inf
    if flat.shape[0] > 1:
        flat[1].reshape(-1)[::3] = -np.inf
    return torch.tensor(values, dtype=dtype)


def _close(ours, reference, dtype, what):
    assert ours.dtype == reference.dtype and ours.shape == reference.shape, what
    rtol, atol = (1e-11, 1e-12) if dtype == torch.float64 else (2e-4, 2e-5)
    finite = reference[~torch.isnan(reference)].abs()
    scale = max(float(finite.max()) if finite.numel() else 0.0, 1.0)
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=atol * scale, equal_nan=True, msg=what)


def _loss_cases():
    for (shape, ndim), regularizer, distance in itertools.product(SHAPES, REGULARIZERS, DISTANCES):
        yield shape, ndim, regularizer, distance


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape,ndim,regularizer,distance", list(_loss_cases()))
def test_the_whole_loss_rules_match_the_rules_of_dsnt_core(
    native_kernels, whole_rule_calls, dtype, shape, ndim, regularizer, distance
):
    logits = _logits(shape, ndim, dtype)
    batch = shape[: len(shape) - ndim]
    rng = np.random.default_rng(1)
    target = torch.tensor(rng.uniform(-0.8, 0.8, size=(*batch, ndim)), dtype=dtype)
    cotangent = torch.tensor(0.7, dtype=dtype)
    for mask, temperature in [(None, 1.0), (torch.arange(int(np.prod(batch))).reshape(batch) % 3 != 1, 0.6)]:
        options = LossOptions(
            ndim=ndim, temperature=temperature, sigma=0.8, regularizer=regularizer, reg_weight=0.7, distance=distance
        )
        whole_calls = len(whole_rule_calls)
        loss, residuals = native_kernels.wrap_rule(dsnt_loss_forward)(xp, logits, target, mask, options, native_kernels)
        grad = native_kernels.wrap_rule(dsnt_loss_backward)(
            xp, logits, target, mask, residuals, cotangent, options, native_kernels
        )
        assert whole_rule_calls[whole_calls:] == ["loss_forward", "loss_backward"]
        for reference_kernels in (native_kernels, array_api_kernels()):  # the same passes, and the array-API ones
            ref_loss, ref_residuals = dsnt_loss_forward(xp, logits, target, mask, options, reference_kernels)
            ref_grad = dsnt_loss_backward(
                xp, logits, target, mask, ref_residuals, cotangent, options, reference_kernels
            )
            _close(loss, ref_loss, dtype, "loss")
            _close(grad, ref_grad, dtype, "grad")
            for field, value in residuals._asdict().items():
                reference = getattr(ref_residuals, field)
                assert (value is None) == (reference is None), field
                if value is not None:
                    _close(value, reference, dtype, field)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape,ndim", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_the_whole_soft_argmax_rules_match_the_rules_of_dsnt_core(
    native_kernels, whole_rule_calls, dtype, shape, ndim, temperature
):
    logits = _logits(shape, ndim, dtype, seed=2)
    batch = shape[: len(shape) - ndim]
    cotangent = torch.tensor(np.random.default_rng(3).normal(size=(*batch, ndim)), dtype=dtype)
    coords, residuals = native_kernels.wrap_rule(soft_argmax_forward)(xp, logits, ndim, temperature, native_kernels)
    grad = native_kernels.wrap_rule(soft_argmax_backward)(
        xp, logits, residuals, cotangent, ndim, temperature, native_kernels
    )
    assert whole_rule_calls == ["soft_argmax_forward", "soft_argmax_backward"]
    for reference_kernels in (native_kernels, array_api_kernels()):
        ref_coords, ref_residuals = soft_argmax_forward(xp, logits, ndim, temperature, reference_kernels)
        ref_grad = soft_argmax_backward(xp, logits, ref_residuals, cotangent, ndim, temperature, reference_kernels)
        _close(coords, ref_coords, dtype, "coords")
        _close(residuals.lse, ref_residuals.lse, dtype, "lse")
        _close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,ndim", SHAPES)
def test_the_whole_backward_from_the_kept_heatmap_matches_the_rule(
    native_kernels, whole_rule_calls, dtype, shape, ndim
):
    logits = _logits(shape, ndim, dtype, seed=4)
    batch = shape[: len(shape) - ndim]
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    cotangent = torch.tensor(np.random.default_rng(5).normal(size=(*batch, ndim)), dtype=dtype)
    _, heatmap = native_kernels.softmax_heatmap(xp, logits, ndim, 0.6)
    mu = torch.tensor(np.random.default_rng(6).uniform(-0.5, 0.5, size=(*batch, ndim)), dtype=compute)
    rule = native_kernels.wrap_rule(soft_argmax_backward_from_heatmap)
    grad = rule(xp, heatmap, mu, cotangent, None, ndim, 0.6, native_kernels)
    assert whole_rule_calls == ["soft_argmax_backward_from_heatmap"]
    reference = soft_argmax_backward_from_heatmap(xp, heatmap, mu, cotangent, None, ndim, 0.6, native_kernels)
    _close(grad, reference, compute if dtype == compute else dtype, "grad")
    # A cotangent of P too (double backward): the rule itself.
    heatmap_cotangent = torch.ones_like(heatmap)
    rule(xp, heatmap, mu, cotangent, heatmap_cotangent, ndim, 0.6, native_kernels)
    assert whole_rule_calls == ["soft_argmax_backward_from_heatmap"]


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_a_nan_heatmap_makes_the_loss_nan_and_stays_in_its_heatmap(
    native_kernels, whole_rule_calls, regularizer, distance
):
    logits = torch.tensor(np.random.default_rng(7).normal(size=(2, 3, 8, 8)))
    logits[0, 1, 2, 3] = float("nan")
    logits[1, 2, 0, 0] = float("inf")
    target = torch.zeros(2, 3, 2, dtype=torch.float64)
    options = LossOptions(regularizer=regularizer, distance=distance)
    loss, residuals = native_kernels.wrap_rule(dsnt_loss_forward)(xp, logits, target, None, options, native_kernels)
    grad = native_kernels.wrap_rule(dsnt_loss_backward)(
        xp, logits, target, None, residuals, torch.tensor(1.0).double(), options, native_kernels
    )
    assert whole_rule_calls == ["loss_forward", "loss_backward"]
    poisoned = torch.zeros(2, 3, dtype=torch.bool)
    poisoned[0, 1] = poisoned[1, 2] = True
    assert torch.isnan(loss) and torch.isnan(grad[poisoned]).all() and torch.isfinite(grad[~poisoned]).all()
    ref_residuals = dsnt_loss_forward(xp, logits, target, None, options, array_api_kernels())[1]
    reference = dsnt_loss_backward(
        xp, logits, target, None, ref_residuals, torch.tensor(1.0).double(), options, array_api_kernels()
    )
    _close(grad, reference, torch.float64, "grad")


def test_calls_that_are_not_plain_run_the_rule_itself(native_kernels, whole_rule_calls):
    logits = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    target = torch.zeros(2, 3, 2, dtype=torch.float64)
    # 16-bit logits, a tensor temperature, logits that record a gradient here: the rule.
    dsnt_loss_forward_rule = native_kernels.wrap_rule(dsnt_loss_forward)
    dsnt_loss_forward_rule(xp, logits.half(), target.half(), None, LossOptions(), native_kernels)
    assert (
        native._fast_soft_argmax_forward(xp, logits, 2, torch.tensor(1.5, dtype=torch.float64), native_kernels) is None
    )
    assert native._fast_soft_argmax_forward(xp, logits, 2, 1.5, array_api_kernels()) is None
    with torch.enable_grad():
        z = logits.clone().requires_grad_()
        dsnt_loss_forward_rule(xp, z, target, None, LossOptions(), native_kernels)
    assert whole_rule_calls == []
    # Other rules pass through unchanged.
    assert native_kernels.wrap_rule(dsnt_core.soft_argmax) is dsnt_core.soft_argmax


def test_keyword_arguments_other_than_the_defaults_run_the_rule_itself(native_kernels):
    seen: list[str] = []

    def rule(a, b, *, units="normalized"):
        seen.append(f"rule {units}")
        return a + b

    def fast(a, b):
        seen.append("fast")
        return a * b

    whole = native._WholeRule(rule, fast)
    assert whole(2, 3) == 6 and whole(2, 3, units="normalized") == 6
    assert whole(2, 3, units="pixels") == 5
    assert seen == ["fast", "fast", "rule pixels"]


def test_end_to_end_training_step_uses_the_whole_rules(native_kernels, whole_rule_calls):
    logits = torch.randn(4, 5, 16, 12, requires_grad=True)
    target = torch.rand(4, 5, 2) * 1.6 - 0.8
    with dsnt_core.use_kernels("torch-native"):
        dsnt_core.dsnt_loss(logits, target).backward()
        with torch.no_grad():
            dsnt_core.soft_argmax(logits)
    native_grad = logits.grad.clone()
    assert whole_rule_calls == ["loss_forward", "loss_backward", "soft_argmax_forward"]
    logits.grad = None
    with dsnt_core.use_kernels("array-api"):
        dsnt_core.dsnt_loss(logits, target).backward()
    _close(native_grad, logits.grad, torch.float32, "grad")


def test_cached_output_buffers_are_independent_and_released(native_kernels):
    """Heatmap-sized outputs (1 MiB and more) reuse returned buffers; live ones never share one."""
    ext = native.extension()
    logits = torch.randn(4, 16, 64, 64, dtype=torch.float64)  # 2 MiB
    u = native._heatmaps(logits, 2)
    lse, mu, first = ext.softmax_heatmap(u, ndim=2, inv_temperature=1.0)
    _, _, second = ext.softmax_heatmap(u + 1.0, ndim=2, inv_temperature=1.0)
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first, second)  # softmax is shift-invariant
    pointer = second.data_ptr()
    del second
    _, _, third = ext.softmax_heatmap(u, ndim=2, inv_temperature=1.0)
    assert third.data_ptr() == pointer  # the returned buffer, reused
    torch.testing.assert_close(third, first)
    third.mul_(2.0)  # an ordinary tensor: in-place operations, resizing
    torch.testing.assert_close(third, 2.0 * first)
    assert third.untyped_storage().resizable()
    third.resize_(2 * third.numel())
    third[-1] = 1.0
    del third
    ext.release_cached_buffers()
    _, _, fourth = ext.softmax_heatmap(u, ndim=2, inv_temperature=1.0)
    torch.testing.assert_close(fourth, first)
