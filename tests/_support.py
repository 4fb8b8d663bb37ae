"""The helpers of the test suite, each written once.

* `Backend`: one array library on one device as the tests see it (an entry of the ``backend``
  fixture: the CPU entries and the GPU ones, ``torch-cuda``, ``jax-gpu``, ``cupy``): make arrays
  on its device, read them back, ``jit``, the autodiff helpers (`Backend.value_and_grad`,
  `Backend.penalty_gradient`) and `Backend.assert_close`, the suite's one assertion on a
  library's result;
* `assert_close`: that assertion for any array (namespace, dtype, device, shape and values);
* `fused_results`: the fused operations and their gradients on one backend, under a kernel choice;
* `saved_tensor_bytes`, `assert_within_the_memory_budget`: what PyTorch's autograd keeps for the
  backward pass, and the budget of the kernel contract (the logits' bytes);
* `run_in_thread`: a call in a fresh thread (kernel choices are per thread);
* `kernels_skip_reason`, `skip_reason`: why a kernel implementation or a backend entry cannot run here;
  `library_of`: the library of a backend entry;
* `SHIPPED_PACKAGES`, `package_modules`: the packages of the wheel and their modules, found on disk;
* constants: `BACKEND_NAMES` (the fixture's entries), `LIBRARIES`, `GPU_BACKENDS`, `NO_AUTODIFF`,
  `REGULARIZERS` and `NORMALIZATION_METHODS` (the library's own), `DIVERGENCES`,
  `ARRAY_FUNCTIONS` (``dsnt_core.__all__`` without the kernel switch), `KERNEL_NAMES`, `AUTODIFF`.

The ``backend`` and ``kernels`` fixtures and the markers that choose their parameters live in
``conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np
import pytest
from array_api_compat import numpy as numpy_namespace

import dsnt_core
from dsnt_core._validation import NORMALIZATION_METHODS, REGULARIZERS
from dsnt_core.kernels import get_kernels, select_kernels
from dsnt_core.kernels.registry import AUTO, kernel_names

ROOT = Path(__file__).resolve().parents[1]

LIBRARIES = ("numpy", "array_api_strict", "torch", "jax", "cupy")
"""Every array library of the ``backend`` fixture: a ``backends`` marker names them."""
GPU_BACKENDS = {"torch-cuda": "torch", "jax-gpu": "jax", "cupy": "cupy"}
"""The entries of the ``backend`` fixture whose arrays live on a GPU, and their libraries."""
BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda", "jax-gpu")
"""Every entry of the ``backend`` fixture, in its order: each library on the CPU (CuPy: its GPU),
then torch on a CUDA device and JAX on its GPU."""
AUTODIFF = ("torch", "jax")
"""The libraries with their own autodiff: ``@pytest.mark.backends(*AUTODIFF)``."""
NO_AUTODIFF = tuple(name for name in LIBRARIES if name not in AUTODIFF)
"""The libraries that train through ``soft_argmax_vjp`` and ``dsnt_loss_value_and_grad``."""

KERNEL_NAMES = tuple(name for name in kernel_names() if name != AUTO)
"""Every kernel implementation ``use_kernels`` accepts (names only: nothing is loaded)."""

DIVERGENCES = tuple(r for r in REGULARIZERS if r in ("kl", "js"))
"""The regularisers that are divergences to the target Gaussian (a ``log P`` in their gradient)."""

NOT_ARRAY_FUNCTIONS = frozenset({"use_kernels", "available_kernels"})
"""Public names of ``dsnt_core`` that take no arrays: the kernel switch and its listing."""
ARRAY_FUNCTIONS = tuple(sorted(set(dsnt_core.__all__) - NOT_ARRAY_FUNCTIONS))
"""Every public array function: the tests that cover "every public function" cover these."""

__all__ = [
    "ARRAY_FUNCTIONS",
    "AUTODIFF",
    "BACKEND_NAMES",
    "DIVERGENCES",
    "GPU_BACKENDS",
    "KERNEL_NAMES",
    "LIBRARIES",
    "NORMALIZATION_METHODS",
    "NO_AUTODIFF",
    "REGULARIZERS",
    "ROOT",
    "SHIPPED_PACKAGES",
    "Backend",
    "assert_close",
    "central_differences",
    "assert_within_the_memory_budget",
    "dtype_name",
    "fused_results",
    "kernels_skip_reason",
    "library_of",
    "make_backend",
    "package_modules",
    "run_in_thread",
    "saved_tensor_bytes",
    "skip_reason",
    "to_numpy",
]

_MODULES = {"numpy": "numpy", "array_api_strict": "array_api_strict", "torch": "torch", "jax": "jax", "cupy": "cupy"}


# --------------------------------------------------------------------------------- reading arrays


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for NumPy's, PyTorch's (``torch.float32``), JAX's and array-api-strict's float32."""
    return str(dtype).rsplit(".", 1)[-1]


def to_numpy(array: Any) -> np.ndarray:
    """Any library's array (or a Python number or list) as a NumPy array; floats as float64."""
    if array_api_compat.is_torch_array(array):
        array = array.detach().to("cpu")
        array = array.double() if array.is_floating_point() else array
        return array.numpy()
    if array_api_compat.is_cupy_array(array):
        array = array.get()
    elif _is_array(array) and array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(array)):
        xp = array_api_compat.array_namespace(array)
        array = np.asarray(array.to_device(xp.__array_namespace_info__().default_device()))
    elif array_api_compat.is_jax_array(array) and dtype_name(array.dtype) in ("bfloat16", "float16"):
        array = array.astype("float32")
    result = np.asarray(array)
    return result.astype(np.float64) if result.dtype.kind == "f" else result


def _is_array(value: Any) -> bool:
    """Arrays of any library, NumPy scalars included (a NumPy reduction's result); Python numbers not."""
    return array_api_compat.is_array_api_obj(value) and type(value) not in (int, float, bool, complex)


def assert_close(
    actual: Any,
    expected: Any,
    *,
    like: Any = None,
    namespace: Any = None,
    dtype: Any = None,
    device: Any = None,
    shape: tuple[int, ...] | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    err_msg: str = "",
) -> None:
    """Assert that ``actual`` is the array it should be and holds values close to ``expected``.

    Checked, besides the values: the array namespace (``actual`` comes from the right library),
    the dtype, the device and the exact shape (no broadcasting). Each expectation is taken from,
    in order: the keyword itself (``dtype="float32"``), ``like`` (typically the input of the
    call: a result has its library, dtype and device), ``expected`` when it is an array (of any
    library), and the default (NumPy's namespace and CPU; no dtype check for Python numbers).
    ``expected`` may be an array of any library, a NumPy array or Python numbers.
    """
    reference = like if like is not None else (expected if _is_array(expected) else None)
    label = f"{err_msg}: " if err_msg else ""
    if namespace is None:
        namespace = numpy_namespace if reference is None else array_api_compat.array_namespace(reference)
    assert _is_array(actual), f"{label}expected an array of {namespace.__name__}, got {type(actual).__name__}"
    found = array_api_compat.array_namespace(actual)
    assert found is namespace, f"{label}result is an array of {found.__name__}, expected {namespace.__name__}"
    if dtype is None and reference is not None:
        dtype = reference.dtype
    if dtype is not None:
        assert dtype_name(actual.dtype) == dtype_name(dtype), f"{label}dtype {actual.dtype}, expected {dtype}"
    if device is None:
        same_library = reference is not None and array_api_compat.array_namespace(reference) is namespace
        device = array_api_compat.device(reference if same_library else namespace.asarray(0.0))
    found_device = array_api_compat.device(actual)
    assert found_device == device, f"{label}result is on {found_device}, expected {device}"
    if shape is None:
        shape = tuple(expected.shape) if _is_array(expected) else np.shape(expected)
    assert tuple(actual.shape) == tuple(shape), f"{label}shape {tuple(actual.shape)}, expected {tuple(shape)}"
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=err_msg)


# ---------------------------------------------------------------------------------------- backends


def library_of(name: str) -> str:
    """The library of a ``backend`` entry: ``"torch"`` for ``"torch"`` and ``"torch-cuda"``."""
    return GPU_BACKENDS.get(name, name)


def _torch_cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return f"no CUDA GPU is usable: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    return None


def _jax_gpu_reason() -> str | None:
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError as error:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"no GPU is usable by JAX: jax.devices('gpu') raised {message!r} (jax[cuda12] on a GPU machine has one)"
    return None


def skip_reason(name: str) -> str | None:
    """Why a backend entry (a library, or a GPU entry such as ``"torch-cuda"``) cannot run here, or ``None``."""
    library = library_of(name)
    if importlib.util.find_spec(_MODULES[library]) is None:
        extra = "test" if library == "array_api_strict" else library
        return f"{library} is not installed (pip install 'dsnt-core[{extra}]')"
    if name == "cupy":
        from dsnt_cupy import gpu_available

        if not gpu_available():
            return "cupy is installed but no CUDA GPU is usable on this machine"
    if name == "torch-cuda":
        return _torch_cuda_reason()
    if name == "jax-gpu":
        return _jax_gpu_reason()
    return None


def _entry_device(name: str) -> Any:
    """The device an entry puts its arrays on; ``None``: the library's own default (NumPy, array-api-strict, CuPy)."""
    if name == "torch":
        import torch

        return torch.device("cpu")
    if name == "torch-cuda":
        import torch

        return torch.device("cuda", torch.cuda.current_device())
    if name in ("jax", "jax-gpu"):
        import jax

        return jax.devices("gpu" if name == "jax-gpu" else "cpu")[0]
    return None


@dataclass(frozen=True)
class Backend:
    """One entry of the ``backend`` fixture: an array library (``xp``, its array-API namespace) on a device.

    ``name`` is the library (``"torch"`` for both ``"torch"`` and ``"torch-cuda"``), so that a
    test's branches on the library hold on every device; ``entry`` is the fixture's entry
    (``"torch-cuda"``) and ``device`` the device its arrays are made on (``None``: the
    library's default, for NumPy, array-api-strict and CuPy). `Backend.asarray` puts arrays
    there, `Backend.assert_close` checks that results are there, `Backend.to_numpy` brings
    them back to the host.
    """

    name: str
    xp: Any
    entry: str = ""
    device: Any = None

    def __post_init__(self) -> None:
        if not self.entry:
            object.__setattr__(self, "entry", self.name)

    def __repr__(self) -> str:
        return f"Backend({self.entry})"

    @property
    def gpu(self) -> bool:
        """Whether the entry's arrays live on a GPU."""
        return self.entry in GPU_BACKENDS

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """What the test runs inside: JAX's default device set to the entry's (``jax.default_device``).

        JAX places arrays made without a device (``jnp.zeros``, constants under ``jit``) on its
        default device, a GPU wherever one is usable: the ``"jax"`` entry stays on the CPU and
        ``"jax-gpu"`` on the GPU, as users of each get. PyTorch's default device is left alone
        (the CPU): library code that made a tensor without ``device=`` fails on the
        ``"torch-cuda"`` entry as it would for users.
        """
        if self.name == "jax" and self.device is not None:
            import jax

            return jax.default_device(self.device)
        return contextlib.nullcontext()

    @property
    def library(self) -> Any:
        """The library's own module (``numpy``, ``torch``, ``jax``...), for what the standard lacks."""
        return importlib.import_module(_MODULES[self.name])

    @property
    def autodiff(self) -> bool:
        return self.name in AUTODIFF

    def dtype(self, name: str) -> Any:
        """The dtype called ``name`` (``"bfloat16"`` too, where the library has it)."""
        if self.name == "jax":
            import jax.numpy as jnp

            return getattr(jnp, name)
        return getattr(self.xp, name, None) or getattr(self.library, name)

    def asarray(self, values: Any, dtype: str | None = None, device: Any = None) -> Any:
        """A fresh array of this library from NumPy values, on ``device`` (the entry's by default).

        ``dtype`` by name, floating by default.
        """
        array = np.asarray(values)
        name = dtype or (array.dtype.name if array.dtype.kind in "fb" else "float64")
        device = self.device if device is None else device
        if self.name == "torch":
            import torch

            source = torch.tensor(array.astype(np.float64) if name == "bfloat16" else array)
            return source.to(dtype=self.dtype(name), device=device)
        if self.name == "jax":
            import jax

            result = self.xp.asarray(array, dtype=self.dtype(name))
            return result if device is None else jax.device_put(result, device)
        converted = np.asarray(array, dtype=name)
        if self.name == "cupy":
            return self.xp.asarray(converted)
        return self.xp.asarray(converted, device=device)

    def to_numpy(self, array: Any) -> np.ndarray:
        return to_numpy(array)

    def assert_close(self, actual: Any, expected: Any, **options: Any) -> None:
        """`assert_close` with this backend's namespace: ``actual`` must be an array of this library.

        ``actual`` must be on the entry's device too, unless the call names another (``device=``).
        """
        if self.device is not None:
            options.setdefault("device", self.device)
        assert_close(actual, expected, namespace=self.xp, **options)

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``jax.jit(fn)`` for JAX (one compilation instead of one per primitive), else ``fn``."""
        if self.name == "jax":
            import jax

            return jax.jit(fn)
        return fn

    def value_and_grad(
        self, fn: Callable[[Any], Any], x: Any, *, cotangent: Any = None, jit: bool = True
    ) -> tuple[Any, Any]:
        """``fn(x)`` and the gradient of ``sum(cotangent * fn(x))`` (of ``fn(x)`` if scalar) in this library's autodiff.

        Both come back as arrays of the library (detached for PyTorch); JAX runs under ``jax.jit``
        unless ``jit`` is false.
        """
        if self.name == "torch":
            import torch

            z = x.detach().clone().requires_grad_()
            value = fn(z)
            (grad,) = torch.autograd.grad(value, z, cotangent)
            return value.detach(), grad
        if self.name == "jax":
            import jax

            def value_and_vjp(a: Any, ct: Any) -> tuple[Any, Any]:
                value, pullback = jax.vjp(fn, a)
                (grad,) = pullback(self.xp.ones_like(value) if ct is None else ct)
                return value, grad

            return (jax.jit(value_and_vjp) if jit else value_and_vjp)(x, cotangent)
        raise ValueError(f"{self.name} has no autodiff: use dsnt_core's explicit gradient entry points")

    def penalty_gradient(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """The gradient of ``sum(grad(fn)(x) ** 2)``: the gradient of ``fn`` differentiated again.

        A gradient penalty, as in WGAN-GP; for PyTorch, a double backward (``create_graph=True``).
        """
        if self.name == "torch":
            import torch

            z = x.detach().clone().requires_grad_()
            (grad,) = torch.autograd.grad(fn(z), z, create_graph=True)
            (second,) = torch.autograd.grad((grad**2).sum(), z)
            return second
        if self.name == "jax":
            import jax

            return jax.jit(jax.grad(lambda z: self.xp.sum(jax.grad(fn)(z) ** 2)))(x)
        raise ValueError(f"{self.name} has no autodiff")


def make_backend(name: str) -> Backend:
    """The `Backend` of the entry ``name``; skips the test, with the reason, where it cannot run."""
    reason = skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    library = library_of(name)
    if library == "numpy":
        from array_api_compat import numpy as xp
    elif library == "torch":
        from array_api_compat import torch as xp
    elif library == "cupy":
        from array_api_compat import cupy as xp
    elif library == "jax":
        import jax.numpy as xp
    else:
        import array_api_strict as xp
    return Backend(library, xp, name, _entry_device(name))


# ----------------------------------------------------------------------------------------- kernels


def central_differences(
    fn: Callable[[np.ndarray], Any], x: np.ndarray, cotangent: Any = 1.0, eps: float = 1e-6
) -> np.ndarray:
    """Central differences of ``sum(cotangent * fn(x))`` with respect to the NumPy array ``x`` (a copy is stepped)."""
    x = np.array(x, copy=True)
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(cotangent * np.asarray(fn(x)))
        flat[i] = old - eps
        down = np.sum(cotangent * np.asarray(fn(x)))
        flat[i] = old
        out[i] = (up - down) / (2 * eps)
    return grad


def run_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new thread: its result, or its exception raised here.

    A new thread has made no kernel choice of its own, so ``run_in_thread(current_kernels)`` is
    the process-wide default; and a plain ``use_kernels(name)`` made there ends with the thread.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive(), f"{fn} did not finish in its thread"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def kernels_skip_reason(name: str) -> str | None:
    """Why the kernel implementation ``name`` cannot run here (not loadable, not built...), or ``None``."""
    try:
        implementation = get_kernels(name)
    except Exception as error:  # an adapter whose framework is missing fails to import
        return f"kernels {name!r} cannot be loaded here: {type(error).__name__}: {error}"
    reason = implementation.unavailable_reason()
    return None if reason is None else f"kernels {name!r} are unavailable here: {reason}"


@dataclass(frozen=True)
class FusedResults:
    """`fused_results`: the fused operations' values and gradients, and the implementation that ran."""

    coords: Any
    coords_grad: Any
    loss: Any
    loss_grad: Any
    kernels: Any

    def items(self) -> Iterator[tuple[str, Any]]:
        yield from (("coords", self.coords), ("coords grad", self.coords_grad))
        yield from (("loss", self.loss), ("loss grad", self.loss_grad))


def fused_results(
    backend: Backend,
    logits: Any,
    target: Any,
    cotangent: Any,
    *,
    kernels: str | None = None,
    mask: Any = None,
    **options: Any,
) -> FusedResults:
    """``soft_argmax`` and its VJP along ``cotangent``, ``dsnt_loss`` and its gradient, on one backend.

    Autodiff backends differentiate with their own autodiff, the others call the explicit
    gradient entry points. ``kernels`` names an implementation to run under (a
    ``with dsnt_core.use_kernels(...)`` block around the calls); ``options`` are those of
    ``dsnt_loss`` (``ndim`` and ``temperature`` go to ``soft_argmax`` too).
    """
    ndim, temperature = options.get("ndim", 2), options.get("temperature", 1.0)

    def coords_of(z: Any) -> Any:
        return dsnt_core.soft_argmax(z, ndim=ndim, temperature=temperature)

    def loss_of(z: Any) -> Any:
        return dsnt_core.dsnt_loss(z, target, mask=mask, **options)

    with contextlib.nullcontext() if kernels is None else dsnt_core.use_kernels(kernels):
        used = select_kernels(logits)
        if backend.autodiff:
            coords, coords_grad = backend.value_and_grad(coords_of, logits, cotangent=cotangent)
            loss, loss_grad = backend.value_and_grad(loss_of, logits)
        else:
            coords = coords_of(logits)
            coords_grad = dsnt_core.soft_argmax_vjp(logits, cotangent, ndim=ndim, temperature=temperature)
            loss, loss_grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, mask=mask, **options)
    return FusedResults(coords, coords_grad, loss, loss_grad, used)


# ------------------------------------------------------------------------------------------ memory


def saved_tensor_bytes(fn: Callable[..., Any], *inputs: Any) -> list[int]:
    """Bytes of each storage that PyTorch's autograd keeps for backward while ``fn(*inputs)`` runs.

    Each storage counts once, the inputs' own included (logits kept as they are cost their bytes
    once, however many views of them are saved).
    """
    import torch

    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    return list(kept.values())


def assert_within_the_memory_budget(fn: Callable[[Any], Any], logits: Any, heatmap_bytes: int) -> None:
    """What ``fn(logits)`` keeps for backward: at most the logits' bytes in heatmap-sized tensors
    (the logits themselves, or ``P`` instead), and only per-heatmap numbers besides."""
    saved = saved_tensor_bytes(fn, logits)
    large = [size for size in saved if size >= heatmap_bytes]
    assert saved, "nothing was saved for backward: the hook saw nothing"
    assert sum(large) <= logits.numel() * logits.element_size(), f"kept for backward (bytes): {sorted(saved)}"


# ----------------------------------------------------------------------------------------- sources


def _shipped_packages() -> dict[str, Path]:
    """The wheel's packages (``[tool.hatch.build.targets.wheel] packages`` of pyproject.toml): name -> folder."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pytest depends on tomli before Python 3.11
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return {Path(folder).name: ROOT / folder for folder in folders}


SHIPPED_PACKAGES = _shipped_packages()
"""Every package the wheel ships, by import name: dsnt_core, the adapters, the apps, the benchmarks."""


def package_modules(package: str) -> dict[str, Path]:
    """Every module of a shipped package, found on disk (nothing is imported): dotted name -> file."""
    folder = SHIPPED_PACKAGES[package]
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        modules[".".join((package, *parts))] = path
    return modules
