"""Deployment routes: tracing, export and compilation with symbolic sizes, and forward-mode AD in PyTorch.

Each route is exported or traced at one input size and then run at another (batch, heatmap count,
height and width all different), and compared with eager execution:

* ``torch.jit.trace`` (sizes are 0-d tensors while tracing) and ``torch.jit.save``/``load``;
* ONNX, with the TorchScript exporter (``dynamo=False``) and the ``torch.export`` one
  (``dynamo=True``), run in onnxruntime;
* ``torch.export`` (sizes are ``SymInt``), strict and non-strict, and ``torch.export.save``/``load``;
* ``jax.export`` with symbolic ``(b, k, h, w)`` (sizes are dimension expressions), serialised too;
* ``torch.compile(dynamic=True, fullgraph=True)`` with no graph break, the temperature and sigma
  traced as symbolic floats;
* ``torch.fx.symbolic_trace`` (the core's functions are leaf calls);
* ``torch.jit.script``: a clear error naming the supported routes;
* ``torch.func.jacfwd``, ``torch.func.hessian`` and ``torch.autograd.forward_ad`` against reverse
  mode and the composed form.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'dsnt-core[torch]')")
from dsnt_torch import DSNTHead, DSNTLoss  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:DeprecationWarning")

REGULARIZERS = ("js", "kl", "var", None)
# Sizes to export or trace at, and a second set to run at: every axis differs (and none is 2, the
# number of coordinates, which dynamo's duck sizing would tie to it).
TRACED_SHAPE, OTHER_SHAPE = (3, 4, 16, 12), (5, 6, 9, 20)
EXPORTABLE_REGULARIZERS = ("var", None, "js")


class Model(torch.nn.Module):
    """A small network ending in a DSNT head (coordinates, and heatmaps in pixel units too)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = DSNTHead(in_channels=8, num_points=TRACED_SHAPE[1], temperature=0.7)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coords = self.head(torch.relu(self.features(images)))
        # A size read from the input's shape goes into the core: symbolic when traced.
        return dsnt_core.normalized_to_pixel(coords, images.shape[-2:])


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    batch, _, height, width = shape
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _loss_inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator), torch.rand(*shape[:2], 2, generator=generator) * 1.6 - 0.8


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    return Model().eval()


def _eager(fn, *inputs):
    with torch.no_grad():
        return fn(*inputs)


# ------------------------------------------------------------------------------------ torch.jit.trace


def test_jit_trace_of_a_model_with_dsnt_head_follows_the_input_size(model):
    images = _images(TRACED_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no size read as a constant
        traced = torch.jit.trace(model, images)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)  # plain tensor operations, no Python call recorded
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for shape in (TRACED_SHAPE, OTHER_SHAPE):
        other = _images(shape, seed=1)
        expected = _eager(model, other)
        torch.testing.assert_close(_eager(traced, other), expected)
        torch.testing.assert_close(_eager(loaded, other), expected)


def test_jit_trace_of_a_head_returning_heatmaps_follows_the_input_size():
    head = DSNTHead(temperature=0.5, return_heatmaps=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(head, _loss_inputs(TRACED_SHAPE)[0])
    logits = _loss_inputs(OTHER_SHAPE, seed=1)[0]
    for actual, expected in zip(traced(logits), head(logits)):
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("regularizer", [*EXPORTABLE_REGULARIZERS, "kl"])
def test_jit_trace_of_the_loss_follows_the_input_size_and_keeps_gradients(regularizer):
    loss = DSNTLoss(regularizer=regularizer, sigma=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(loss, _loss_inputs(TRACED_SHAPE))
    logits, target = _loss_inputs(OTHER_SHAPE, seed=1)
    z = logits.clone().requires_grad_()
    value = traced(z, target)
    (grad,) = torch.autograd.grad(value, z)
    z_eager = logits.clone().requires_grad_()
    expected = loss(z_eager, target)
    (expected_grad,) = torch.autograd.grad(expected, z_eager)
    # The traced loss is differentiated through its recorded operations, the eager one by the fused rule.
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- ONNX


def _run_onnx(path, images: torch.Tensor) -> np.ndarray:
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: images.numpy()})[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_with_dynamic_batch_and_size_matches_eager(model, dynamo, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    images = _images(TRACED_SHAPE)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if dynamo:
            pytest.importorskip("onnxscript", reason="onnxscript is not installed (the dynamo exporter needs it)")
            dims = {0: torch.export.Dim("b"), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")}
            torch.onnx.export(model, (images,), path, dynamo=True, dynamic_shapes={"images": dims}, verbose=False)
        else:
            warnings.simplefilter("error", torch.jit.TracerWarning)  # no size read as a constant
            torch.onnx.export(
                model,
                (images,),
                path,
                dynamo=False,
                input_names=["images"],
                output_names=["coords"],
                dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}},
            )
    for shape in (TRACED_SHAPE, OTHER_SHAPE):
        other = _images(shape, seed=1)
        expected = _eager(model, other).numpy()
        np.testing.assert_allclose(_run_onnx(path, other), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ torch.export


def _dims():
    from torch.export import Dim

    return Dim("b", min=1, max=64), Dim("k", min=1, max=64), Dim("h", min=2, max=512), Dim("w", min=2, max=512)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_torch_export_with_dynamic_batch_and_size_matches_eager_and_saves(model, strict, tmp_path):
    b, _, h, w = _dims()
    exported = torch.export.export(
        model, (_images(TRACED_SHAPE),), dynamic_shapes={"images": {0: b, 2: h, 3: w}}, strict=strict
    )
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    loaded = torch.export.load(path)
    for shape in (TRACED_SHAPE, OTHER_SHAPE):
        other = _images(shape, seed=1)
        expected = _eager(model, other)
        torch.testing.assert_close(_eager(exported.module(), other), expected)
        torch.testing.assert_close(_eager(loaded.module(), other), expected)


@pytest.mark.parametrize("regularizer", EXPORTABLE_REGULARIZERS)
@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_torch_export_of_the_loss_follows_the_input_size(regularizer, strict):
    b, k, h, w = _dims()
    loss = DSNTLoss(regularizer=regularizer, sigma=1.5)
    exported = torch.export.export(
        loss, _loss_inputs(TRACED_SHAPE), dynamic_shapes=({0: b, 1: k, 2: h, 3: w}, {0: b, 1: k}), strict=strict
    )
    inputs = _loss_inputs(OTHER_SHAPE, seed=1)
    torch.testing.assert_close(_eager(exported.module(), *inputs), _eager(loss, *inputs))


# -------------------------------------------------------------------------------------------- jax.export


def _jax():
    jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'dsnt-core[jax]')")
    return jax, jax.numpy


def _jax_export_matches_eager(fn, make_inputs, specs):
    jax, _ = _jax()
    exported = jax.export.export(jax.jit(fn))(*specs)
    restored = jax.export.deserialize(exported.serialize())
    for shape in (TRACED_SHAPE, OTHER_SHAPE):
        inputs = make_inputs(shape)
        expected = np.asarray(fn(*inputs))
        np.testing.assert_allclose(np.asarray(exported.call(*inputs)), expected, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(np.asarray(restored.call(*inputs)), expected, rtol=1e-6, atol=1e-12)


def test_jax_export_with_symbolic_batch_and_size_matches_eager():
    jax, jnp = _jax()
    (spec,) = jax.export.symbolic_args_specs((np.zeros(TRACED_SHAPE, np.float32),), "b, k, h, w")

    def coords_in_pixels(logits):
        coords = dsnt_core.soft_argmax(logits, temperature=0.7)
        return dsnt_core.normalized_to_pixel(coords, logits.shape[-2:])

    _jax_export_matches_eager(
        coords_in_pixels, lambda shape: (jnp.asarray(_loss_inputs(shape, seed=1)[0].numpy()),), (spec,)
    )


@pytest.mark.parametrize("regularizer", EXPORTABLE_REGULARIZERS)
def test_jax_export_of_the_loss_with_symbolic_sizes_matches_eager(regularizer):
    jax, jnp = _jax()
    b, k, h, w = jax.export.symbolic_shape("b, k, h, w")
    dtype = jnp.float32
    specs = (jax.ShapeDtypeStruct((b, k, h, w), dtype), jax.ShapeDtypeStruct((b, k, 2), dtype))

    def loss(logits, target):
        return dsnt_core.dsnt_loss(logits, target, regularizer=regularizer, sigma=1.5)

    def make_inputs(shape):
        return tuple(jnp.asarray(a.numpy(), dtype=dtype) for a in _loss_inputs(shape, seed=1))

    _jax_export_matches_eager(loss, make_inputs, specs)


def test_traced_sigma_and_weight_pass_the_checks_under_jax_jit():
    jax, jnp = _jax()
    logits, target = (jnp.asarray(a.numpy()) for a in _loss_inputs(TRACED_SHAPE))

    def loss(sigma, reg_weight):
        return dsnt_core.dsnt_loss(logits, target, sigma=sigma, reg_weight=reg_weight)

    np.testing.assert_allclose(jax.jit(loss)(1.5, 0.3), loss(1.5, 0.3), rtol=1e-6)
    # Concrete bad values are still refused, with the argument named.
    with pytest.raises(ValueError, match="sigma must be positive and finite, got -1.5"):
        loss(-1.5, 0.3)


# ---------------------------------------------------------------------------------------- torch.compile


def _soft_argmax(logits, temperature):
    return dsnt_core.soft_argmax(logits, temperature=temperature)


def _loss(logits, target, temperature, sigma, reg_weight, regularizer):
    return dsnt_core.dsnt_loss(
        logits, target, temperature=temperature, sigma=sigma, reg_weight=reg_weight, regularizer=regularizer
    )


@pytest.mark.parametrize("operation", ["soft_argmax", "dsnt_loss var", "dsnt_loss js"])
def test_torch_compile_dynamic_fullgraph_has_no_graph_break_and_matches_eager(operation):
    from torch._dynamo.testing import CompileCounterWithBackend

    name, _, regularizer = operation.partition(" ")

    def fn(logits, target, temperature, sigma):
        if name == "soft_argmax":
            return _soft_argmax(logits, temperature).sum()
        return _loss(logits, target, temperature, sigma, 0.5, regularizer)

    logits, target = _loss_inputs(TRACED_SHAPE)
    fn(logits, target, 0.7, 1.5)  # eager first: the adapters and kernel caches are loaded outside the trace
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(logits.requires_grad_(), target, 0.7, 1.5)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend=counter)
    compilations = []
    for shape, temperature, sigma in [(TRACED_SHAPE, 0.7, 1.5), (OTHER_SHAPE, 1.3, 2.5)]:
        logits, target = _loss_inputs(shape, seed=1)
        z = logits.clone().requires_grad_()
        value = compiled(z, target, temperature, sigma)
        (grad,) = torch.autograd.grad(value, z)
        compilations.append(counter.frame_count)
        z_eager = logits.clone().requires_grad_()
        expected = fn(z_eager, target, temperature, sigma)
        (expected_grad,) = torch.autograd.grad(expected, z_eager)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(grad, expected_grad)
    # Sizes, temperature and sigma are symbolic: the second call (every size and number changed)
    # compiles nothing new.
    assert compilations[1] == compilations[0], compilations


# ----------------------------------------------------------------------------------------------- torch.fx


def test_fx_symbolic_trace_keeps_the_core_as_leaf_calls(model):
    head = DSNTHead(in_channels=3, num_points=4, return_heatmaps=True)
    graph_module = torch.fx.symbolic_trace(head)
    targets = {node.target for node in graph_module.graph.nodes if node.op == "call_function"}
    assert {dsnt_core.soft_argmax, dsnt_core.flat_softmax} <= targets
    for shape in (TRACED_SHAPE, OTHER_SHAPE):
        images = _images(shape, seed=1)
        for actual, expected in zip(_eager(graph_module, images), _eager(head, images)):
            torch.testing.assert_close(actual, expected)
    loss = DSNTLoss(regularizer="kl")
    traced_loss = torch.fx.symbolic_trace(loss)
    inputs = _loss_inputs(OTHER_SHAPE)
    torch.testing.assert_close(traced_loss(*inputs), loss(*inputs))


def test_fx_symbolic_trace_through_the_core_says_how_to_trace_around_it():
    class Direct(torch.nn.Module):
        def forward(self, logits):
            return dsnt_core.soft_argmax(logits)

    with pytest.raises(TypeError, match=r"logits is a torch\.fx Proxy.*torch\.fx\.wrap"):
        torch.fx.symbolic_trace(Direct())


# ------------------------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("module", [DSNTHead(), DSNTLoss()], ids=["DSNTHead", "DSNTLoss"])
def test_torch_jit_script_refuses_with_the_supported_routes(module):
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

    for scripted in (module, Wrapper()):
        with pytest.raises(RuntimeError, match=r"cannot be compiled by TorchScript.*torch\.export\.export"):
            torch.jit.script(scripted)


# ------------------------------------------------------------------------------------ forward-mode AD


def _logits64(shape=(2, 5, 4), seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_jacfwd_and_hessian_of_soft_argmax_match_reverse_mode_and_the_composed_form():
    logits = _logits64()
    weights = torch.tensor([[0.3, -1.2], [0.8, 0.5]], dtype=torch.float64)

    def fused(z):
        return dsnt_core.soft_argmax(z, temperature=0.7)

    def composed(z):
        return dsnt_core.dsnt(dsnt_core.flat_softmax(z, temperature=0.7))

    torch.testing.assert_close(torch.func.jacfwd(fused)(logits), torch.func.jacrev(fused)(logits))
    torch.testing.assert_close(torch.func.jacfwd(fused)(logits), torch.func.jacrev(composed)(logits))
    hessian = torch.func.hessian(lambda z: (fused(z) * weights).sum())(logits)
    expected = torch.func.hessian(lambda z: (composed(z) * weights).sum())(logits)
    torch.testing.assert_close(hessian, expected)
    assert hessian.abs().max() > 0.01  # not trivially zero
    reverse_over_forward = torch.func.jacrev(torch.func.jacfwd(lambda z: (fused(z) * weights).sum()))(logits)
    torch.testing.assert_close(reverse_over_forward, expected)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_jacfwd_and_hessian_of_dsnt_loss_match_the_composed_form(regularizer):
    logits = _logits64()
    target = torch.tensor([[0.4, -0.3], [-0.6, 0.1]], dtype=torch.float64)
    mask = torch.tensor([1.0, 0.5], dtype=torch.float64)
    options = {"regularizer": regularizer, "sigma": 0.8, "temperature": 0.7, "reg_weight": 0.3, "mask": mask}

    def fused(z):
        return dsnt_core.dsnt_loss(z, target, **options)

    def composed(z):
        return composed_dsnt_loss(z, target, **options)

    torch.testing.assert_close(torch.func.jacfwd(fused)(logits), torch.func.jacrev(composed)(logits))
    expected = torch.func.hessian(composed)(logits)
    torch.testing.assert_close(torch.func.hessian(fused)(logits), expected)  # forward over reverse
    # Reverse over forward: the JVP rules recompute their residuals, so they differentiate again.
    torch.testing.assert_close(torch.func.jacrev(torch.func.jacfwd(fused))(logits), expected)


@pytest.mark.xfail(
    strict=True,
    reason="PyTorch: nested jacfwd through any autograd.Function with a jvp gives zero higher "
    "derivatives (pytorch/pytorch#197867); torch.func.hessian (forward over reverse) is right",
)
def test_forward_over_forward_through_the_fused_loss():
    logits = _logits64()
    target = torch.tensor([[0.4, -0.3], [-0.6, 0.1]], dtype=torch.float64)
    expected = torch.func.hessian(lambda z: composed_dsnt_loss(z, target))(logits)
    actual = torch.func.jacfwd(torch.func.jacfwd(lambda z: dsnt_core.dsnt_loss(z, target)))(logits)
    torch.testing.assert_close(actual, expected)


def test_forward_ad_dual_numbers_match_the_composed_jvp():
    import torch.autograd.forward_ad as forward_ad

    logits, tangent = _logits64(seed=1), _logits64(seed=2)
    target = torch.tensor([[0.4, -0.3], [-0.6, 0.1]], dtype=torch.float64)
    cases = [
        (lambda z: dsnt_core.soft_argmax(z), lambda z: dsnt_core.dsnt(dsnt_core.flat_softmax(z))),
        (lambda z: dsnt_core.dsnt_loss(z, target), lambda z: composed_dsnt_loss(z, target)),
    ]
    for fused, composed in cases:
        z = logits.clone().requires_grad_()
        with forward_ad.dual_level():
            out = fused(forward_ad.make_dual(z, tangent))
            actual = forward_ad.unpack_dual(out).tangent
        _, expected = torch.func.jvp(composed, (logits,), (tangent,))
        torch.testing.assert_close(actual, expected)
        # Reverse mode through the tangent: a Hessian-vector product for the loss.
        (actual_hvp,) = torch.autograd.grad(actual.sum(), z)
        z_composed = logits.clone().requires_grad_()
        _, expected_tangent = torch.func.jvp(composed, (z_composed,), (tangent,))
        (expected_hvp,) = torch.autograd.grad(expected_tangent.sum(), z_composed)
        torch.testing.assert_close(actual_hvp, expected_hvp)


def test_vmap_of_the_fused_operations_still_works():
    logits = _logits64(shape=(3, 2, 5, 4))
    target = torch.zeros(3, 2, 2, dtype=torch.float64)
    batched = torch.func.vmap(lambda z, t: dsnt_core.dsnt_loss(z, t))(logits, target)
    looped = torch.stack([dsnt_core.dsnt_loss(z, t) for z, t in zip(logits, target)])
    torch.testing.assert_close(batched, looped)
    grads = torch.func.vmap(torch.func.grad(lambda z: dsnt_core.soft_argmax(z).sum()))(logits)
    torch.testing.assert_close(grads[1], torch.func.grad(lambda z: dsnt_core.soft_argmax(z).sum())(logits[1]))


# ------------------------------------------------------------------------------------- concrete checks


@pytest.mark.parametrize("bad", [math.inf, math.nan, -0.5, 0.0])
def test_concrete_bad_temperatures_are_still_refused(bad):
    with pytest.raises(ValueError, match=f"temperature must be positive and finite, got {bad}"):
        dsnt_core.soft_argmax(torch.zeros(1, 4, 4), temperature=bad)


@pytest.mark.parametrize(("n", "error", "message"), [(0, ValueError, "at least 1, got 0"), (2.0, TypeError, "float")])
def test_concrete_bad_sizes_are_still_refused(n, error, message):
    with pytest.raises(error, match=message):
        dsnt_core.normalized_linspace(n)


def test_log_size_stays_in_the_traced_program():
    """``_arrays.log_size``: ``log(n)`` of a symbolic size, for kernels (their entropy term) to use."""
    from array_api_compat import torch as xp

    from dsnt_core._arrays import log_size

    class LogPixels(torch.nn.Module):
        def forward(self, logits):
            return logits.sum() * 0 + log_size(xp, logits.shape[-1] * logits.shape[-2], logits)

    _, _, h, w = _dims()
    exported = torch.export.export(LogPixels(), (torch.zeros(TRACED_SHAPE),), dynamic_shapes=({2: h, 3: w},))
    other = torch.zeros(*TRACED_SHAPE[:2], *OTHER_SHAPE[2:])  # another height and width
    torch.testing.assert_close(exported.module()(other), torch.tensor(math.log(9 * 20)))
    assert log_size(xp, 180, other) == math.log(180)  # concrete: a Python float, as before
