"""The ``"cupy-cuda"`` kernels (``backends/dsnt_cupy/dsnt_kernels.cu``): compiled, emulated on the CPU, run on a GPU.

The development and CI machines have no GPU, so the CUDA source is checked in three layers:

* **compilation**: NVRTC compiles every instantiation for sm_90 and sm_80 with the options
  ``cupy.RawModule`` will use on the GPU machines, called through its C library
  (``tests/_nvrtc.py``, the ``nvidia-cuda-nvrtc-cu12`` wheel of the ``test`` extra: no CuPy, no
  GPU); CUDA 13's ``nvcc`` too where it is on the PATH, with no register spills. Skipped only
  where NVRTC or nvcc is missing; a source that does not compile fails with NVRTC's log;
* **emulation**: the same source, built for the CPU with ``tests/cuda_host_emulation.cpp`` (each
  thread block as real threads meeting at real barriers, warps exchanging values for their
  shuffles), runs behind the real Python glue (`CudaKernels` with an emulated runtime that also
  checks every launch: block size, shared memory, argument types and layouts). Every pass and the
  rules of ``soft_argmax`` and ``dsnt_loss`` are compared with `ArrayAPIKernels`;
* **GPU**: CuPy arrays on a GPU, the same comparisons; skipped with "no CUDA GPU is usable".
"""

from __future__ import annotations

import contextlib
import ctypes
import doctest
import importlib.util
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import _nvrtc
import numpy as np
import pytest
from array_api_compat import numpy as xp_numpy
from dsnt_cupy import cuda_kernels, gpu_available
from dsnt_cupy.cuda_kernels import KERNELS, TEMPLATE_TYPES, CudaKernels
from hypothesis import given
from hypothesis import strategies as st
from strategies import logits_arrays

from dsnt_core.kernels import Divergence, DivergenceKind, array_api_kernels
from dsnt_core.ops.dsnt_loss import LossOptions, dsnt_loss_backward, dsnt_loss_forward
from dsnt_core.ops.soft_argmax import soft_argmax_backward, soft_argmax_forward

ROOT = Path(__file__).resolve().parents[1]
EMULATION_SOURCE = Path(__file__).with_name("cuda_host_emulation.cpp")
REGULARIZERS = (None, "var", "kl", "js")
KINDS = (None, DivergenceKind.KL, DivergenceKind.JS)
REFERENCE = array_api_kernels()

try:
    import ml_dtypes

    BFLOAT16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with JAX
    BFLOAT16 = None


# -------------------------------------------------------------------------------- compilation


def _nvrtc_skip_reason() -> str | None:
    """Why NVRTC's C library cannot be loaded here (``tests/_nvrtc.py``), or ``None``."""
    try:
        _nvrtc.version()
    except _nvrtc.NvrtcUnavailable as error:
        return str(error)
    return None


def _kernel_names() -> list[str]:
    return [name for type_name in TEMPLATE_TYPES for name in cuda_kernels.kernel_names(type_name)]


def _compile(architecture: int) -> _nvrtc.Compiled:
    """The kernels' source compiled as ``cupy.RawModule`` compiles it, every instantiation; fails with the log."""
    reason = _nvrtc_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        return _nvrtc.compile_program(
            cuda_kernels.source(), "dsnt_kernels.cu", cuda_kernels.nvrtc_options(architecture), _kernel_names()
        )
    except _nvrtc.CompileError as error:
        pytest.fail(f"dsnt_kernels.cu does not compile for sm_{architecture}:\n{error.log}", pytrace=False)


@pytest.mark.parametrize("architecture", [90, 80])
def test_every_instantiation_compiles_with_nvrtc(architecture):
    result = _compile(architecture)
    assert result.cubin[:4] == b"\x7fELF" and len(result.cubin) > 10_000
    assert f".target sm_{architecture}" in result.ptx
    names = _kernel_names()
    assert len(names) == 20 and set(result.lowered_names) == set(names)
    assert all(lowered.startswith("_Z") for lowered in result.lowered_names.values())
    assert "warning" not in result.log.lower(), result.log


def test_the_compile_check_fails_on_a_source_that_does_not_compile():
    reason = _nvrtc_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    broken = cuda_kernels.source().replace("dsnt_statistics(", "dsnt_statistics(undeclared_type u, ", 1)
    with pytest.raises(_nvrtc.CompileError) as error:
        _nvrtc.compile_program(broken, "dsnt_kernels.cu", cuda_kernels.nvrtc_options(90), _kernel_names())
    assert "undeclared_type" in error.value.log and "error" in error.value.log


def test_cupys_nvrtc_binding_gives_the_same_kernels():
    # compile_for_architecture (the library's own check, through CuPy's binding) against the C library.
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed: compile_for_architecture uses CuPy's NVRTC binding")
    try:
        cuda_kernels._nvrtc().getVersion()
    except Exception as error:
        pytest.skip(f"CuPy's NVRTC binding cannot load NVRTC ({type(error).__name__}: {error})")
    ours = cuda_kernels.compile_for_architecture(90)
    assert ours["cubin"][:4] == b"\x7fELF"
    assert ours["lowered_names"] == _compile(90).lowered_names


def test_the_source_needs_no_header():
    # NVRTC has no C library headers and, unless told where, no CUDA include path.
    assert not re.search(r"^\s*#\s*include", cuda_kernels.source(), flags=re.MULTILINE)


def test_nvcc_compiles_every_instantiation_without_spilling(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH")
    # Taking each kernel's address instantiates it, as NVRTC's name expressions do.
    addresses = [
        f"(const void*)&{name}" for type_name in TEMPLATE_TYPES for name in cuda_kernels.kernel_names(type_name)
    ]
    source = tmp_path / "check.cu"
    source.write_text(
        cuda_kernels.source() + "\n__device__ const void* dsnt_instances[] = {" + ", ".join(addresses) + "};\n"
    )
    command = [
        nvcc,
        "-cubin",
        "-arch=sm_90",
        "-std=c++17",
        "-Xptxas",
        "-v",
        "-o",
        str(tmp_path / "c.cubin"),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    spills = re.findall(r"(\d+) bytes spill stores", result.stderr)
    assert len(spills) == 20 and set(spills) == {"0"}, result.stderr


# ---------------------------------------------------------------------------------- emulation

_FAMILIES = {"dsnt_statistics": 18, "dsnt_moments": 8, "dsnt_gradient_map": 16}  # parameters of each kernel
_TYPE_CODES = {name: code for code, name in enumerate(TEMPLATE_TYPES)}
_KIND_CODES = {"dsnt::kNone": 0, "dsnt::kKL": 1, "dsnt::kJS": 2}


class EmulatedRuntime:
    """`cuda_kernels.Runtime` on NumPy arrays: launches the CPU build of the CUDA source.

    Every launch is checked as a GPU would need it to be right: block size, shared memory,
    grid, the dtype of every scalar (a float64 passed for a float parameter would be read as
    garbage) and the layout and dtype of every array.
    """

    xp = np

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library
        self.launches: list[str] = []

    def device(self, array: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def launch(self, kernel: str, type_name: str, grid: int, block: int, args: tuple, shared_mem: int) -> None:
        family = kernel.split("<")[0]
        assert len(args) == _FAMILIES[family], kernel
        assert block % 32 == 0 and 32 <= block <= cuda_kernels.MAX_THREADS, block
        assert 0 <= shared_mem <= cuda_kernels.MAX_SHARED_BYTES and 1 <= grid <= cuda_kernels.MAX_BLOCKS
        accumulator = np.float64 if type_name == "float64" else np.float32
        logits = args[0]
        assert logits.dtype.name == type_name and logits.flags.c_contiguous
        for arg in args[1:]:
            if isinstance(arg, np.ndarray):
                assert arg.dtype == accumulator and arg.flags.c_contiguous, (kernel, arg.dtype, arg.flags)
            else:
                assert type(arg) in (np.int32, accumulator), (kernel, type(arg))
        self.launches.append(kernel)
        sizes = [int(v) for v in args[1:5]]  # W, H, D, ndim
        self._check_sizes(family, kernel, grid, args, *sizes)
        code = _TYPE_CODES[type_name]
        pointer = ctypes.c_void_p(logits.ctypes.data)

        def pointers(arrays: tuple) -> Any:
            return (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))

        if family == "dsnt_statistics":
            inv_t, entropy, mixture = float(args[5]), int(args[6]), int(args[7])
            status = self.library.dsnt_emulate_statistics(
                code, grid, block, shared_mem, pointer, *sizes, inv_t, entropy, mixture, pointers(args[8:])
            )
        elif family == "dsnt_moments":
            status = self.library.dsnt_emulate_moments(
                code,
                grid,
                block,
                shared_mem,
                pointer,
                *sizes,
                float(args[5]),
                *(ctypes.c_void_p(a.ctypes.data) for a in args[6:]),
            )
        else:
            kind = _KIND_CODES[kernel.split(", ")[1].rstrip(">")]
            status = self.library.dsnt_emulate_gradient_map(
                code, kind, grid, block, pointer, *sizes, int(args[5]), float(args[6]), pointers(args[7:])
            )
        assert status == 0

    @staticmethod
    def _check_sizes(family: str, kernel: str, grid: int, args: tuple, w: int, h: int, d: int, ndim: int) -> None:
        """Every array the kernel will touch holds exactly what it reads or writes (no overrun on a GPU)."""
        n = grid // int(args[5]) if family == "dsnt_gradient_map" else grid
        axes = (w, h if ndim >= 2 else None, d if ndim == 3 else None)  # None: the kernel never touches it

        def expect(array: np.ndarray, count: int | None) -> None:
            assert count is None or array.size == n * count, (kernel, array.shape, n, count)

        expect(args[0], w * h * d)
        if family == "dsnt_statistics":
            entropy, mixture = int(args[6]), int(args[7])
            for array, length in zip(args[8:11], axes):
                expect(array, length if mixture else None)
            expect(args[11], 1)
            for array, length in zip(args[12:15], axes):
                expect(array, length)
            expect(args[15], 1 if entropy else None)
            expect(args[16], 1 if mixture else None)
            expect(args[17], 1 if mixture else None)
        elif family == "dsnt_moments":
            expect(args[6], 1)
            expect(args[7], ndim)
        else:
            divergence = "kNone" not in kernel
            js = "kJS" in kernel
            expect(args[7], 1)
            for array, length in zip(args[8:11], axes):
                expect(array, length)
            expect(args[11], 1 if divergence else None)
            for array, length in zip(args[12:15], axes):
                expect(array, length if js else None)
            expect(args[15], w * h * d)


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> ctypes.CDLL:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build the CPU emulation of the CUDA kernels")
    library = tmp_path_factory.mktemp("cuda_emulation") / "libdsnt_cuda_emulation.so"
    command = [
        compiler, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wno-unknown-pragmas",
        "-I", str(ROOT / "backends" / "dsnt_cupy"), str(EMULATION_SOURCE), "-o", str(library),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the CPU emulation of dsnt_kernels.cu does not build:\n{result.stderr}"
    handle = ctypes.CDLL(str(library))
    int_, uint, size, double = ctypes.c_int, ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_double
    pointer = ctypes.c_void_p
    sizes = [int_] * 4  # W, H, D, ndim
    launch = [uint, uint]  # grid, block
    handle.dsnt_emulate_statistics.argtypes = [int_, *launch, size, pointer, *sizes, double, int_, int_, pointer]
    handle.dsnt_emulate_moments.argtypes = [int_, *launch, size, pointer, *sizes, double, pointer, pointer]
    handle.dsnt_emulate_gradient_map.argtypes = [int_, int_, *launch, pointer, *sizes, int_, double, pointer]
    return handle


@pytest.fixture
def emulated(emulation) -> CudaKernels:
    """`CudaKernels` whose launches run the CPU build of the CUDA source on NumPy arrays."""
    return CudaKernels(runtime=EmulatedRuntime(emulation))


def _close(actual, expected, *, rtol=1e-9, atol=1e-11, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def _assert_statistics_close(ours, reference, **tolerance):
    for field in ("lse", "neg_entropy", "m_log_m", "p_log_m"):
        mine, theirs = getattr(ours, field), getattr(reference, field)
        assert (mine is None) == (theirs is None), field
        if mine is not None:
            assert mine.shape == theirs.shape and mine.dtype == theirs.dtype, field
            _close(mine, theirs, what=field, **tolerance)
    assert len(ours.margins) == len(reference.margins)
    for k, (mine, theirs) in enumerate(zip(ours.margins, reference.margins)):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        _close(mine, theirs, what=f"margin {k}", **tolerance)


def _with_minus_inf(data, values, ndim):
    """Some cases get a heatmap of -inf, some a scatter of -inf logits."""
    values = values.copy()
    flat = values.reshape(-1, *values.shape[values.ndim - ndim :])
    if data.draw(st.booleans(), label="a heatmap of -inf"):
        flat[0] = -np.inf
    if flat.size > 1 and data.draw(st.booleans(), label="some -inf logits"):
        flat.reshape(-1)[:: max(2, flat.size // 3)] = -np.inf
    return values


def _factors(rng, batch, lengths, *, zeros=True):
    """Positive separable factors, x first, with a few exact zeros (the log floor)."""
    result = []
    for n in lengths:
        f = rng.uniform(0.0, 1.0, size=(*batch, n))
        if zeros:
            f[f < 0.15] = 0.0
        result.append(f)
    return result


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=30.0),
    temperature=st.sampled_from([1.0, 0.7, 3.0]),
    entropy=st.booleans(),
    mixture=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_statistics_match_the_array_api_pass(emulated, data, case, temperature, entropy, mixture, seed):
    values, ndim = case
    logits = _with_minus_inf(data, values, ndim)
    batch, lengths = logits.shape[: logits.ndim - ndim], logits.shape[::-1][:ndim]
    factors = _factors(np.random.default_rng(seed), batch, lengths) if mixture else None
    ours = emulated.softmax_statistics(xp_numpy, logits, ndim, temperature, entropy=entropy, mixture=factors)
    reference = REFERENCE.softmax_statistics(xp_numpy, logits, ndim, temperature, entropy=entropy, mixture=factors)
    _assert_statistics_close(ours, reference)
    assert emulated._runtime.launches[-1].startswith("dsnt_statistics<double>")


@given(data=st.data(), case=logits_arrays(max_side=9, scale=30.0), temperature=st.sampled_from([1.0, 0.7, 3.0]))
def test_moments_match_the_array_api_pass(emulated, data, case, temperature):
    values, ndim = case
    logits = _with_minus_inf(data, values, ndim)
    emulated._runtime.launches.clear()  # hypothesis runs every example with the same fixture
    ours = emulated.softmax_moments(xp_numpy, logits, ndim, temperature)
    reference = REFERENCE.softmax_moments(xp_numpy, logits, ndim, temperature)
    assert ours.mu.shape == reference.mu.shape and ours.lse.shape == reference.lse.shape
    _close(ours.lse, reference.lse, what="lse")
    _close(ours.mu, reference.mu, atol=1e-10, what="mu")
    assert emulated._runtime.launches == ["dsnt_moments<double>"]


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=30.0),
    kind=st.sampled_from(KINDS),
    temperature=st.sampled_from([1.0, 0.7, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_gradient_map_matches_the_array_api_pass(emulated, data, case, kind, temperature, seed):
    values, ndim = case
    logits = _with_minus_inf(data, values, ndim)
    rng = np.random.default_rng(seed)
    batch, lengths = logits.shape[: logits.ndim - ndim], logits.shape[::-1][:ndim]
    lse = REFERENCE.softmax_statistics(xp_numpy, logits, ndim, temperature).lse
    per_axis = [rng.normal(size=(*batch, n)) for n in lengths]
    divergence = None
    if kind is not None:
        coef = rng.normal(size=batch) * 3.0
        factors = tuple(_factors(rng, batch, lengths)) if kind is DivergenceKind.JS else ()
        divergence = Divergence(kind, coef, factors)
    ours = emulated.gradient_map(xp_numpy, logits, lse, per_axis, divergence, ndim, temperature)
    reference = REFERENCE.gradient_map(xp_numpy, logits, lse, per_axis, divergence, ndim, temperature)
    assert ours.shape == logits.shape and ours.dtype == reference.dtype
    _close(ours, reference, what="gradient map")


def _rules(kernels, logits, target, cotangent, options, mask):
    """The fused rules' results: soft_argmax forward and backward, dsnt_loss forward and backward."""
    coords, residuals = soft_argmax_forward(xp_numpy, logits, options.ndim, options.temperature, kernels)
    coords_grad = soft_argmax_backward(
        xp_numpy, logits, residuals, cotangent, options.ndim, options.temperature, kernels
    )
    loss, loss_residuals = dsnt_loss_forward(xp_numpy, logits, target, mask, options, kernels)
    ones = np.ones((), dtype=loss.dtype)
    loss_grad = dsnt_loss_backward(xp_numpy, logits, target, mask, loss_residuals, ones, options, kernels)
    return {"coords": coords, "coords grad": coords_grad, "loss": loss, "loss grad": loss_grad}


@given(
    data=st.data(),
    case=logits_arrays(max_side=9, scale=20.0),
    regularizer=st.sampled_from(REGULARIZERS),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    sigma=st.sampled_from([0.5, 1.0, 2.0]),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_rules_agree_with_the_array_api_passes(
    emulated, data, case, regularizer, temperature, sigma, use_mask, seed
):
    values, ndim = case
    logits = _with_minus_inf(data, values, ndim)
    batch = logits.shape[: logits.ndim - ndim]
    rng = np.random.default_rng(seed)
    target = rng.uniform(-0.9, 0.9, size=(*batch, ndim))
    cotangent = rng.normal(size=(*batch, ndim))
    mask = (np.arange(math.prod(batch)).reshape(batch) % 3 != 1) if use_mask else None
    options = LossOptions(ndim=ndim, temperature=temperature, sigma=sigma, regularizer=regularizer, reg_weight=0.7)
    emulated._runtime.launches.clear()
    ours = _rules(emulated, logits, target, cotangent, options, mask)
    reference = _rules(REFERENCE, logits, target, cotangent, options, mask)
    # Where a point's coordinates meet its target the Euclidean term has a kink, and rounding
    # picks the side: compare the gradients only away from it.
    away = np.linalg.norm(reference["coords"] - target, axis=-1) > 1e-6
    for name in ours:
        assert ours[name].shape == reference[name].shape, name
        if name == "loss grad" and not away.all():
            continue
        _close(ours[name], reference[name], what=name)
    assert {k.split("<")[0] for k in emulated._runtime.launches} == {
        "dsnt_moments",
        "dsnt_statistics",
        "dsnt_gradient_map",
    }


@pytest.mark.parametrize(
    "shape,ndim",
    [((2, 70, 70), 2), ((1, 256, 256), 2), ((2, 3, 33, 45), 2), ((2, 5, 9, 37), 3), ((3, 1000), 1), ((2, 31, 1), 2)],
)
def test_heatmaps_larger_than_a_tile_with_rising_peaks(emulated, shape, ndim):
    # Logits that rise along the sweep force a rescale at nearly every tile.
    rng = np.random.default_rng(sum(shape))
    size = math.prod(shape[len(shape) - ndim :])
    ramp = np.linspace(0.0, 40.0, size).reshape(shape[len(shape) - ndim :])
    logits = ramp + rng.normal(size=shape)
    batch, lengths = shape[: len(shape) - ndim], shape[::-1][:ndim]
    factors = _factors(rng, batch, lengths, zeros=False)
    ours = emulated.softmax_statistics(xp_numpy, logits, ndim, 1.3, entropy=True, mixture=factors)
    _assert_statistics_close(
        ours, REFERENCE.softmax_statistics(xp_numpy, logits, ndim, 1.3, entropy=True, mixture=factors)
    )
    moments = emulated.softmax_moments(xp_numpy, logits, ndim, 1.3)
    reference = REFERENCE.softmax_moments(xp_numpy, logits, ndim, 1.3)
    _close(moments.lse, reference.lse)
    _close(moments.mu, reference.mu, atol=1e-10)
    assert len(emulated._runtime.launches) == 2


def test_a_nan_or_inf_poisons_its_heatmap_only(emulated):
    logits = np.random.default_rng(3).normal(size=(2, 3, 16, 16))
    logits[0, 1, 4, 5] = np.nan
    logits[1, 2, 0, 0] = np.inf
    logits[1, 0] = -np.inf
    logits[1, 0, 3, 3] = np.nan  # NaN wins over an all -inf heatmap
    logits[0, 0] = -np.inf  # uniform
    poisoned = np.zeros((2, 3), dtype=bool)
    poisoned[0, 1] = poisoned[1, 2] = poisoned[1, 0] = True
    factors = _factors(np.random.default_rng(4), (2, 3), (16, 16))
    stats = emulated.softmax_statistics(xp_numpy, logits, 2, 1.0, entropy=True, mixture=factors)
    for field in (stats.lse, stats.neg_entropy, stats.m_log_m, stats.p_log_m, *stats.margins):
        values = np.asarray(field)
        assert np.isnan(values[poisoned]).all() and np.isfinite(values[~poisoned]).all()
    assert stats.lse[0, 0] == 0.0 and np.allclose(stats.margins[0][0, 0], 1 / 16)
    moments = emulated.softmax_moments(xp_numpy, logits, 2, 1.0)
    assert np.isnan(moments.mu[poisoned]).all() and np.isfinite(moments.mu[~poisoned]).all()
    assert moments.lse[0, 0] == 0.0 and (moments.mu[0, 0] == 0.0).all()
    per_axis = [np.ones((2, 3, 16)), np.ones((2, 3, 16))]
    for kind in KINDS:
        divergence = (
            None
            if kind is None
            else Divergence(kind, np.full((2, 3), 2.0), tuple(factors) if kind is DivergenceKind.JS else ())
        )
        grad = emulated.gradient_map(xp_numpy, logits, stats.lse, per_axis, divergence, 2, 1.0)
        assert np.isnan(grad[poisoned]).all() and np.isfinite(grad[~poisoned]).all(), kind
        assert (grad[0, 0] == 0.0).all(), kind  # all -inf: exp(u - lse) = 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_16_and_32_bit_logits_give_float32_results(emulated, dtype):
    if dtype == "bfloat16" and BFLOAT16 is None:
        pytest.skip("ml_dtypes is not installed: NumPy has no bfloat16")
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(3, 4, 12, 20)) * 4).astype(BFLOAT16 if dtype == "bfloat16" else dtype)
    exact = logits.astype(np.float32)  # the values the narrow logits hold, which the reference computes on
    factors = [f.astype(np.float32) for f in _factors(rng, (3, 4), (20, 12))]
    ours = emulated.softmax_statistics(xp_numpy, logits, 2, 0.8, entropy=True, mixture=factors)
    reference = REFERENCE.softmax_statistics(xp_numpy, exact, 2, 0.8, entropy=True, mixture=factors)
    _assert_statistics_close(ours, reference, rtol=2e-5, atol=1e-6)
    moments = emulated.softmax_moments(xp_numpy, logits, 2, 0.8)
    assert moments.mu.dtype == np.float32 and moments.lse.dtype == np.float32
    _close(moments.mu, REFERENCE.softmax_moments(xp_numpy, exact, 2, 0.8).mu, rtol=2e-5, atol=1e-6)
    per_axis = [rng.normal(size=(3, 4, 20)).astype(np.float32), rng.normal(size=(3, 4, 12)).astype(np.float32)]
    divergence = Divergence(DivergenceKind.JS, np.full((3, 4), 0.5, np.float32), tuple(factors))
    grad = emulated.gradient_map(xp_numpy, logits, reference.lse, per_axis, divergence, 2, 0.8)
    expected = REFERENCE.gradient_map(xp_numpy, exact, reference.lse, per_axis, divergence, 2, 0.8)
    assert grad.dtype == np.float32
    _close(grad, expected, rtol=2e-5, atol=1e-6 * np.abs(expected).max())
    assert emulated._runtime.launches[0] == f"dsnt_statistics<{TEMPLATE_TYPES[dtype]}>"


def test_strided_and_broadcast_inputs_are_laid_out_for_the_kernels(emulated):
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(3, 10, 7, 4)).transpose(0, 3, 2, 1)  # (3, 4, 7, 10), not contiguous
    lse = REFERENCE.softmax_statistics(xp_numpy, logits, 2, 1.0).lse
    per_axis = [rng.normal(size=(1, 4, 10)), rng.normal(size=(7,))]  # broadcast against the batch
    divergence = Divergence(DivergenceKind.JS, np.float64(0.3), (rng.uniform(size=(10,)), rng.uniform(size=(3, 1, 7))))
    grad = emulated.gradient_map(xp_numpy, logits, lse, per_axis, divergence, 2, 1.0)
    _close(grad, REFERENCE.gradient_map(xp_numpy, logits, lse, per_axis, divergence, 2, 1.0))


def test_heatmaps_beyond_the_kernels_limits_take_the_array_api_passes(emulated):
    logits = np.random.default_rng(7).normal(size=(2, 6200))  # 6200 + 32 doubles of marginals: over 48 KiB
    stats = emulated.softmax_statistics(xp_numpy, logits, 1, 1.0)
    _assert_statistics_close(stats, REFERENCE.softmax_statistics(xp_numpy, logits, 1, 1.0))
    assert emulated._runtime.launches == []
    emulated.softmax_moments(xp_numpy, logits, 1, 1.0)  # no marginals in shared memory: the kernel runs
    empty = np.zeros((0, 4, 4))
    assert emulated.softmax_moments(xp_numpy, empty, 2, 1.0).mu.shape == (0, 2)
    assert emulated._runtime.launches == ["dsnt_moments<double>"]


def test_launch_shapes():
    assert cuda_kernels._reduction_threads(1) == 32 and cuda_kernels._reduction_threads(65536) == 512
    for size in (1, 31, 32, 33, 1000, 4096, 65536):
        threads, chunks = cuda_kernels._gradient_launch(size)
        assert threads % 32 == 0 and 32 <= threads <= cuda_kernels.GRADIENT_THREADS
        assert (
            (chunks - 1) * threads * cuda_kernels.GRADIENT_ITEMS
            < size
            <= chunks * threads * cuda_kernels.GRADIENT_ITEMS
        )


# -------------------------------------------------------------------- what runs on any machine


def test_the_instance_says_what_it_is_and_why_it_cannot_run_here():
    assert KERNELS.name == "cupy-cuda" and KERNELS.libraries == ("cupy",) and KERNELS.automatic
    reason = KERNELS.unavailable_reason()
    if gpu_available() and _nvrtc_skip_reason() is None:
        assert reason is None
    else:
        assert reason is not None and ("GPU" in reason or "NVRTC" in reason or "CuPy" in reason)
    assert not KERNELS.applies_to(np.zeros((2, 4, 4)))


def test_docstring_examples():
    result = doctest.testmod(cuda_kernels, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------------------------ the GPU

gpu = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU is usable")


@pytest.fixture
def cupy_kernels():
    reason = KERNELS.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy
    from array_api_compat import cupy as xp

    return cupy, xp


def _gpu_dtypes():
    names = ["float64", "float32", "float16"]
    return [
        *names,
        pytest.param("bfloat16", marks=pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes is not installed")),
    ]


def _tolerance(dtype):
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 1e-6}


@gpu
@pytest.mark.parametrize("dtype", _gpu_dtypes())
@pytest.mark.parametrize("shape,ndim", [((4, 5, 64, 48), 2), ((2, 3, 8, 16, 16), 3), ((6, 70), 1), ((2, 256, 256), 2)])
def test_gpu_passes_match_the_array_api_passes(cupy_kernels, dtype, shape, ndim):
    cupy, xp = cupy_kernels
    rng = np.random.default_rng(8)
    host = rng.normal(size=shape) * 4
    host.reshape(-1, *shape[len(shape) - ndim :])[0] = -np.inf
    try:
        logits = cupy.asarray(host.astype(BFLOAT16 if dtype == "bfloat16" else dtype))
    except Exception as error:  # a CuPy without bfloat16 arrays
        pytest.skip(f"CuPy cannot hold {dtype} arrays: {error}")
    exact = logits.astype(cupy.float32 if dtype != "float64" else cupy.float64)
    assert KERNELS.applies_to(logits)
    batch, lengths = shape[: len(shape) - ndim], shape[::-1][:ndim]
    factors = [cupy.asarray(f, dtype=exact.dtype) for f in _factors(rng, batch, lengths)]
    tolerance = _tolerance(dtype)
    ours = KERNELS.softmax_statistics(xp, logits, ndim, 0.8, entropy=True, mixture=factors)
    reference = REFERENCE.softmax_statistics(xp, exact, ndim, 0.8, entropy=True, mixture=factors)
    for field in ("lse", "neg_entropy", "m_log_m", "p_log_m"):
        _close(getattr(ours, field).get(), getattr(reference, field).get(), what=field, **tolerance)
    for mine, theirs in zip(ours.margins, reference.margins):
        _close(mine.get(), theirs.get(), what="margins", **tolerance)
    moments = KERNELS.softmax_moments(xp, logits, ndim, 0.8)
    _close(moments.mu.get(), REFERENCE.softmax_moments(xp, exact, ndim, 0.8).mu.get(), **tolerance)
    per_axis = [cupy.asarray(rng.normal(size=(*batch, n)), dtype=exact.dtype) for n in lengths]
    coef = cupy.full(batch, 0.7, dtype=exact.dtype)
    for kind in KINDS:
        divergence = (
            None if kind is None else Divergence(kind, coef, tuple(factors) if kind is DivergenceKind.JS else ())
        )
        grad = KERNELS.gradient_map(xp, logits, reference.lse, per_axis, divergence, ndim, 0.8)
        expected = REFERENCE.gradient_map(xp, exact, reference.lse, per_axis, divergence, ndim, 0.8).get()
        assert grad.dtype == exact.dtype and grad.shape == logits.shape and grad.device == logits.device
        _close(grad.get(), expected, rtol=tolerance["rtol"], atol=tolerance["atol"] * max(1.0, np.abs(expected).max()))


@gpu
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_gpu_rules_agree_with_the_array_api_passes(cupy_kernels, regularizer):
    cupy, xp = cupy_kernels
    rng = np.random.default_rng(9)
    logits = cupy.asarray(rng.normal(size=(3, 4, 24, 20)) * 3)
    target = cupy.asarray(rng.uniform(-0.8, 0.8, size=(3, 4, 2)))
    cotangent = cupy.asarray(rng.normal(size=(3, 4, 2)))
    options = LossOptions(ndim=2, temperature=1.2, sigma=1.0, regularizer=regularizer, reg_weight=0.7)

    def rules(kernels):
        coords, residuals = soft_argmax_forward(xp, logits, 2, 1.2, kernels)
        coords_grad = soft_argmax_backward(xp, logits, residuals, cotangent, 2, 1.2, kernels)
        loss, loss_residuals = dsnt_loss_forward(xp, logits, target, None, options, kernels)
        loss_grad = dsnt_loss_backward(xp, logits, target, None, loss_residuals, xp.ones_like(loss), options, kernels)
        return [coords, coords_grad, loss, loss_grad]

    for mine, theirs in zip(rules(KERNELS), rules(REFERENCE)):
        _close(mine.get(), theirs.get())


@gpu
def test_gpu_passes_do_not_synchronise_with_the_host(cupy_kernels):
    cupy, xp = cupy_kernels
    import cupyx

    logits = cupy.asarray(np.random.default_rng(10).normal(size=(4, 5, 32, 32)), dtype=cupy.float32)
    factors = [cupy.full((4, 5, 32), 1 / 32, dtype=cupy.float32)] * 2
    KERNELS.softmax_statistics(xp, logits, 2, 1.0, entropy=True, mixture=factors)  # compiles (and loads) first
    cupy.cuda.Device().synchronize()
    with cupyx.allow_synchronize(False):
        stats = KERNELS.softmax_statistics(xp, logits, 2, 1.0, entropy=True, mixture=factors)
        KERNELS.gradient_map(xp, logits, stats.lse, factors, None, 2, 1.0)
        KERNELS.softmax_moments(xp, logits, 2, 1.0)


@gpu
def test_gpu_arrays_on_another_device_stay_there(cupy_kernels):
    cupy, xp = cupy_kernels
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU only: no other device to put the arrays on")
    with cupy.cuda.Device(1):
        logits = cupy.asarray(np.random.default_rng(11).normal(size=(2, 3, 16, 16)))
    with cupy.cuda.Device(0):
        stats = KERNELS.softmax_statistics(xp, logits, 2, 1.0, entropy=True)
        grad = KERNELS.gradient_map(xp, logits, stats.lse, list(stats.margins), None, 2, 1.0)
        grids = KERNELS.coordinate_grids(xp, logits, 2)
    assert stats.lse.device.id == 1 and grad.device.id == 1 and all(g.device.id == 1 for g in grids)
    with cupy.cuda.Device(1):
        _close(stats.lse.get(), REFERENCE.softmax_statistics(xp, logits, 2, 1.0).lse.get())


@gpu
def test_gpu_public_gradients_run_on_the_cuda_kernels_once_registered(cupy_kernels):
    cupy, _ = cupy_kernels
    import dsnt_core
    from dsnt_core.kernels.registry import kernel_names

    if "cupy-cuda" not in kernel_names():
        pytest.skip("the cupy-cuda kernels are not registered in the dsnt_core.kernels entry points")
    rng = np.random.default_rng(12)
    logits = cupy.asarray(rng.normal(size=(2, 3, 20, 16)) * 3)
    target = cupy.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)))
    cotangent = cupy.asarray(rng.normal(size=(2, 3, 2)))

    def public():
        loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, regularizer="js")
        return [loss, grad, dsnt_core.soft_argmax(logits), dsnt_core.soft_argmax_vjp(logits, cotangent)]

    with dsnt_core.use_kernels("cupy-cuda"):
        assert dsnt_core.kernels.select_kernels(logits).name == "cupy-cuda"
        ours = public()
    with dsnt_core.use_kernels("array-api"):
        reference = public()
    for mine, theirs in zip(ours, reference):
        _close(mine.get(), theirs.get())
