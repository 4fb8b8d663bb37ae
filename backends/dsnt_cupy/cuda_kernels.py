"""The ``"cupy-cuda"`` kernels: CUDA C passes for CuPy arrays, compiled with NVRTC on first use.

The CUDA source (``dsnt_kernels.cu``, next to this file) implements the ``softmax_moments``,
``softmax_statistics`` and ``gradient_map`` passes of the kernel contract
(:mod:`dsnt_core.kernels.contract`); the rules of :mod:`dsnt_core.ops` run unchanged on top of
them. It is compiled by ``cupy.RawModule`` (NVRTC) the first time an input type is used on a
device, one module per input type (float16, bfloat16, float32, float64), and CuPy caches the
binary on disk, so later processes load it at once.

What each kernel does (the ``.cu`` file has the details):

* ``dsnt_statistics``: one thread block per heatmap sweeps it once in tiles, with an online
  maximum that the whole block shares (rescaling the sums so far when a tile raises it) and the
  marginals accumulated in shared memory; the Jensen-Shannon sums take a second sweep of the
  block's own heatmap, which it has just read (so it comes from cache for usual sizes);
* ``dsnt_moments``: one block per heatmap, every thread with its own online maximum, combined at
  the end: ``lse`` and the expected coordinates, with no barrier inside the sweep;
* ``dsnt_gradient_map``: elementwise, one read and one write, a few blocks per heatmap.

Every allocation and launch happens inside ``with cupy.cuda.Device(logits.device):``, on the
current stream, with no host synchronisation. Heatmaps too large for these kernels (more than
2^30 elements, or marginals beyond 48 KiB of shared memory) fall back to the array-API passes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import array_api_compat
import numpy as np

from dsnt_core.kernels import ArrayAPIKernels, Divergence, DivergenceKind, SoftArgmaxResiduals, SoftmaxStatistics

SOURCE_PATH = Path(__file__).with_name("dsnt_kernels.cu")
COMPILE_OPTIONS = ("--std=c++17",)
"""NVRTC options of the module (CuPy adds ``-arch``, ``-ftz=true`` and ``--device-as-default-execution-space``)."""

TEMPLATE_TYPES = {"float16": "dsnt::float16", "bfloat16": "dsnt::bfloat16", "float32": "float", "float64": "double"}
"""The kernels' template argument for each input dtype (by NumPy name)."""
DIVERGENCE_KINDS = {None: "dsnt::kNone", DivergenceKind.KL: "dsnt::kKL", DivergenceKind.JS: "dsnt::kJS"}
"""The ``gradient_map`` kernel's template argument for each divergence (``None``: none)."""

MAX_THREADS = 512  # kMaxThreads of the source: threads of one block at most, a multiple of 32
ITEMS = 4  # kItems: logits each thread loads per tile of the statistics and moments kernels
GRADIENT_ITEMS = 4  # kGradientItems: logits each thread of the gradient map handles
GRADIENT_THREADS = 256
MAX_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block may use without opting in
MAX_HEATMAP_SIZE = 2**30  # offsets inside a heatmap are 32-bit ints in the kernels
MAX_BLOCKS = 2**31 - 1  # grid size limit along x


def source() -> str:
    """The CUDA C source of the kernels.

    Returns
    -------
    str
        The text of ``dsnt_kernels.cu``.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import source
    >>> "dsnt_statistics" in source()
    True
    """
    return _source()


@functools.cache
def _source() -> str:
    return SOURCE_PATH.read_text()


def statistics_kernel(type_name: str) -> str:
    """Name expression of the statistics kernel for one input type.

    Parameters
    ----------
    type_name : str
        A key of `TEMPLATE_TYPES` (``"float32"``...).

    Returns
    -------
    str
        What ``cupy.RawModule.get_function`` takes.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import statistics_kernel
    >>> statistics_kernel("float16")
    'dsnt_statistics<dsnt::float16>'
    """
    return f"dsnt_statistics<{TEMPLATE_TYPES[type_name]}>"


def moments_kernel(type_name: str) -> str:
    """Name expression of the moments kernel for one input type.

    Parameters
    ----------
    type_name : str
        A key of `TEMPLATE_TYPES`.

    Returns
    -------
    str
        What ``cupy.RawModule.get_function`` takes.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import moments_kernel
    >>> moments_kernel("float64")
    'dsnt_moments<double>'
    """
    return f"dsnt_moments<{TEMPLATE_TYPES[type_name]}>"


def gradient_kernel(type_name: str, kind: DivergenceKind | None) -> str:
    """Name expression of the gradient-map kernel for one input type and divergence.

    Parameters
    ----------
    type_name : str
        A key of `TEMPLATE_TYPES`.
    kind : DivergenceKind or None
        The elementwise term; ``None`` for none.

    Returns
    -------
    str
        What ``cupy.RawModule.get_function`` takes.

    Examples
    --------
    >>> from dsnt_core.kernels import DivergenceKind
    >>> from dsnt_cupy.cuda_kernels import gradient_kernel
    >>> gradient_kernel("bfloat16", DivergenceKind.JS)
    'dsnt_gradient_map<dsnt::bfloat16, dsnt::kJS>'
    """
    return f"dsnt_gradient_map<{TEMPLATE_TYPES[type_name]}, {DIVERGENCE_KINDS[kind]}>"


def kernel_names(type_name: str) -> tuple[str, ...]:
    """Every kernel of one input type's module: the ``name_expressions`` it is compiled with.

    Parameters
    ----------
    type_name : str
        A key of `TEMPLATE_TYPES`.

    Returns
    -------
    tuple of str
        Statistics, moments, and the gradient map for each divergence.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import kernel_names
    >>> len(kernel_names("float32"))
    5
    """
    return (
        statistics_kernel(type_name),
        moments_kernel(type_name),
        *(gradient_kernel(type_name, kind) for kind in DIVERGENCE_KINDS),
    )


def _nvrtc() -> Any:
    """CuPy's NVRTC bindings (``cupy_backends.cuda.libs.nvrtc``; ``cupy.cuda.nvrtc`` in older releases)."""
    try:
        return importlib.import_module("cupy_backends.cuda.libs.nvrtc")
    except ImportError:
        return importlib.import_module("cupy.cuda.nvrtc")


def nvrtc_options(architecture: int) -> tuple[str, ...]:
    """NVRTC's options for one GPU architecture: the module's and those ``cupy.RawModule`` adds.

    Parameters
    ----------
    architecture : int
        Compute capability as a number: 90 for ``sm_90`` (H100), 80 for ``sm_80`` (A100).

    Returns
    -------
    tuple of str
        The options, ``--gpu-architecture=sm_<architecture>`` last.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import nvrtc_options
    >>> nvrtc_options(90)[-1]
    '--gpu-architecture=sm_90'
    """
    cupy_options = ("-ftz=true", "--device-as-default-execution-space", f"--gpu-architecture=sm_{architecture}")
    return (*COMPILE_OPTIONS, *cupy_options)


def compile_for_architecture(architecture: int, type_names: Sequence[str] = tuple(TEMPLATE_TYPES)) -> dict[str, Any]:
    """Compile the source with NVRTC for a GPU architecture, with no GPU or driver needed.

    The options are `nvrtc_options` (the module's plus those CuPy adds); handy to check a change
    to the source on any machine with CuPy, whose NVRTC binding it uses. (The tests compile the
    same source with the same options through NVRTC's C library directly, with no CuPy.)

    Parameters
    ----------
    architecture : int
        Compute capability as a number: 90 for ``sm_90`` (H100), 80 for ``sm_80`` (A100).
    type_names : sequence of str
        The input types to instantiate (keys of `TEMPLATE_TYPES`); all of them by default.

    Returns
    -------
    dict
        ``"cubin"`` (bytes), ``"lowered_names"`` (each name expression's mangled name),
        ``"log"`` (NVRTC's messages, warnings included) and ``"version"`` (NVRTC's).

    Raises
    ------
    RuntimeError
        With NVRTC's log, if the source does not compile.
    """
    nvrtc = _nvrtc()
    names = [name for type_name in type_names for name in kernel_names(type_name)]
    options = nvrtc_options(architecture)
    program = nvrtc.createProgram(source(), "dsnt_kernels.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise RuntimeError(f"NVRTC could not compile dsnt_kernels.cu: {error}\n{log}") from None
        return {
            "cubin": nvrtc.getCUBIN(program),
            "lowered_names": {name: nvrtc.getLoweredName(program, name) for name in names},
            "log": nvrtc.getProgramLog(program),
            "version": nvrtc.getVersion(),
        }
    finally:
        nvrtc.destroyProgram(program)


# ------------------------------------------------------------------------------ availability


@functools.cache
def _unavailable_reason() -> str | None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install 'dsnt-core[cupy]')"
    try:
        _nvrtc().getVersion()
    except Exception as error:  # a missing library raises a loader error of cuda-pathfinder's own
        return (
            f"NVRTC, which compiles the CUDA kernels, cannot be loaded ({type(error).__name__}: {error}); "
            "install the NVRTC wheel of CuPy's CUDA major (nvidia-cuda-nvrtc-cu12, or nvidia-cuda-nvrtc for CUDA 13)"
        )
    from dsnt_cupy import gpu_available

    if not gpu_available():
        return "no CUDA GPU is usable"
    return None


# ------------------------------------------------------------------------------ launching


class Runtime(Protocol):
    """Where the kernels run: CuPy on a GPU, or (in the tests) an emulation on the CPU."""

    @property
    def xp(self) -> Any:
        """The array module of the arrays (``cupy``; NumPy for the emulation)."""
        ...

    def device(self, array: Any) -> contextlib.AbstractContextManager[Any]:
        """The context in which to allocate and launch for ``array`` (its device)."""
        ...

    def launch(
        self, kernel: str, type_name: str, grid: int, block: int, args: tuple[Any, ...], shared_mem: int
    ) -> None:
        """Launch ``kernel`` (a name expression for input type ``type_name``): ``grid`` blocks of ``block`` threads."""
        ...


@functools.cache
def _module(type_name: str) -> Any:
    import cupy

    return cupy.RawModule(code=source(), options=COMPILE_OPTIONS, name_expressions=kernel_names(type_name))


@functools.cache
def _function(device_id: int, type_name: str, kernel: str) -> Any:
    """The kernel as compiled for one device (the current one: ``get_function`` compiles the module there)."""
    return _module(type_name).get_function(kernel)


class CuPyRuntime:
    """Launches with CuPy on the current stream of the array's device.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import CuPyRuntime
    >>> hasattr(CuPyRuntime(), "launch")
    True
    """

    @property
    def xp(self) -> Any:
        """The ``cupy`` module."""
        import cupy

        return cupy

    def device(self, array: Any) -> contextlib.AbstractContextManager[Any]:
        """``cupy.cuda.Device(array.device)``: allocations and launches land on the array's GPU."""
        import cupy

        return cupy.cuda.Device(array.device)

    def launch(
        self, kernel: str, type_name: str, grid: int, block: int, args: tuple[Any, ...], shared_mem: int
    ) -> None:
        """Launch on the current device and stream (compiling the module for the device the first time)."""
        import cupy

        _function(cupy.cuda.Device().id, type_name, kernel)((grid,), (block,), args, shared_mem=shared_mem)


class _Layout(NamedTuple):
    """The logits as (N, D, H, W) heatmaps, and the dtypes of the launch."""

    batch: tuple[int, ...]
    n: int
    w: int
    h: int
    d: int
    ndim: int
    type_name: str
    accumulator: Any  # numpy dtype of the accumulation and the results

    @property
    def size(self) -> int:
        return self.w * self.h * self.d

    @property
    def statistics_shared_bytes(self) -> int:
        """Dynamic shared memory of the statistics kernel: the marginal sums and 32 for reductions."""
        return (self.w + self.h + self.d + 32) * int(self.accumulator.itemsize)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The lengths of the existing axes, x first."""
        return (self.w, self.h, self.d)[: self.ndim]


def _layout(logits: Any, ndim: int) -> _Layout | None:
    """The layout of ``logits``, or ``None`` where the kernels cannot take them (empty, too large)."""
    type_name = logits.dtype.name
    if type_name not in TEMPLATE_TYPES:
        return None
    spatial = tuple(int(s) for s in logits.shape[logits.ndim - ndim :])
    batch = tuple(int(s) for s in logits.shape[: logits.ndim - ndim])
    w = spatial[-1]
    h = spatial[-2] if ndim >= 2 else 1
    d = spatial[-3] if ndim == 3 else 1
    n = math.prod(batch)
    accumulator = np.dtype(np.float64 if type_name == "float64" else np.float32)
    layout = _Layout(batch, n, w, h, d, ndim, type_name, accumulator)
    if n == 0 or layout.size == 0 or layout.size > MAX_HEATMAP_SIZE or n > MAX_BLOCKS:
        return None
    return layout


def _reduction_threads(size: int) -> int:
    """Threads per block for a one-block-per-heatmap sweep: about two tiles per heatmap, 32 to 512."""
    threads = 32
    while threads < MAX_THREADS and threads * ITEMS * 2 < size:
        threads *= 2
    return threads


def _gradient_launch(size: int) -> tuple[int, int]:
    """``(threads, chunks per heatmap)`` of the gradient map."""
    threads = min(GRADIENT_THREADS, 32 * math.ceil(size / (32 * GRADIENT_ITEMS)))
    return threads, math.ceil(size / (threads * GRADIENT_ITEMS))


def _per_heatmap(xp: Any, value: Any, layout: _Layout, length: int | None) -> Any:
    """A per-heatmap number (``length=None``: (N,)) or vector ((N, length)), contiguous, accumulation dtype."""
    shape = layout.batch if length is None else (*layout.batch, length)
    flat = xp.broadcast_to(xp.asarray(value), shape).reshape((layout.n,) if length is None else (layout.n, length))
    return xp.ascontiguousarray(flat.astype(layout.accumulator, copy=False))


class CudaKernels(ArrayAPIKernels):
    """CUDA C passes for CuPy arrays: one read of the logits forward, one read and one write backward.

    Compiled with NVRTC (``cupy.RawModule``) the first time an input type is used on a device,
    and cached by CuPy on disk. Chosen automatically for CuPy arrays of a floating dtype
    (float16, bfloat16, float32, float64) when NVRTC and a GPU are there;
    `unavailable_reason` says what is missing otherwise.

    Parameters
    ----------
    runtime : Runtime, optional
        Where the kernels run; CuPy (`CuPyRuntime`) by default. The tests pass an emulation
        that runs the same CUDA source on the CPU.

    Examples
    --------
    >>> from dsnt_cupy.cuda_kernels import KERNELS
    >>> KERNELS.name, KERNELS.libraries, KERNELS.automatic
    ('cupy-cuda', ('cupy',), True)
    """

    name = "cupy-cuda"
    description = "CuPy on NVIDIA GPUs: CUDA C passes compiled with NVRTC, one read of the logits forward"
    libraries = ("cupy",)
    automatic = True

    def __init__(self, runtime: Runtime | None = None) -> None:
        self._runtime: Runtime = CuPyRuntime() if runtime is None else runtime

    def unavailable_reason(self) -> str | None:
        """Why the kernels cannot run here: no CuPy, no NVRTC, or no usable GPU; ``None`` when they can.

        Returns
        -------
        str or None
            The reason.
        """
        return _unavailable_reason()

    def applies_to(self, logits: Any) -> bool:
        """CuPy arrays of a floating dtype, where the kernels can run.

        Parameters
        ----------
        logits : array
            The logits of a call.

        Returns
        -------
        bool
            Whether this implementation runs that call.
        """
        return (
            array_api_compat.is_cupy_array(logits)
            and getattr(logits.dtype, "name", None) in TEMPLATE_TYPES
            and _unavailable_reason() is None
        )

    def coordinate_grids(self, xp: Any, logits: Any, ndim: int) -> tuple[Any, ...]:
        """The array-API grids, made on the logits' device.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).

        Returns
        -------
        tuple of array
            One 1-D grid of length n_k per axis, x first.
        """
        with self._runtime.device(logits):
            return super().coordinate_grids(xp, logits, ndim)

    def softmax_moments(self, xp: Any, logits: Any, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """One sweep per heatmap: log-sum-exp and expected coordinates (the ``dsnt_moments`` kernel).

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.

        Returns
        -------
        SoftArgmaxResiduals
            ``lse`` and ``mu`` of ``P = softmax(logits / T)``, in the compute dtype.
        """
        layout = _layout(logits, ndim)
        if layout is None:
            return super().softmax_moments(xp, logits, ndim, temperature)
        rt, a = self._runtime, layout.accumulator
        with rt.device(logits):
            cp = rt.xp
            x = cp.ascontiguousarray(logits)
            lse = cp.empty((layout.n,), dtype=a)
            mu = cp.empty((layout.n, ndim), dtype=a)
            args = (x, *self._sizes(layout), a.type(1.0 / temperature), lse, mu)
            threads = _reduction_threads(layout.size)
            rt.launch(moments_kernel(layout.type_name), layout.type_name, layout.n, threads, args, 32 * a.itemsize)
        return SoftArgmaxResiduals(lse.reshape(layout.batch), mu.reshape((*layout.batch, ndim)))

    def softmax_statistics(
        self,
        xp: Any,
        logits: Any,
        ndim: int,
        temperature: float,
        *,
        entropy: bool = False,
        mixture: Sequence[Any] | None = None,
    ) -> SoftmaxStatistics:
        """One sweep per heatmap (two with ``mixture``): the ``dsnt_statistics`` kernel.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.
        entropy : bool
            Also compute ``neg_entropy``.
        mixture : sequence of array, optional
            The 1-D factors of ``Q``, x first: also compute ``m_log_m`` and ``p_log_m``.

        Returns
        -------
        SoftmaxStatistics
            The statistics of ``P = softmax(logits / T)``; the fields not asked for are ``None``.
        """
        layout = _layout(logits, ndim)
        if layout is None or layout.statistics_shared_bytes > MAX_SHARED_BYTES:
            return super().softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        rt, a = self._runtime, layout.accumulator
        with rt.device(logits):
            cp = rt.xp
            x = cp.ascontiguousarray(logits)
            lse = cp.empty((layout.n,), dtype=a)
            margins = [cp.empty((layout.n, length), dtype=a) for length in layout.lengths]
            neg_entropy = cp.empty((layout.n,), dtype=a) if entropy else None
            sums = (cp.empty((layout.n,), dtype=a), cp.empty((layout.n,), dtype=a)) if mixture is not None else None
            factors = [] if mixture is None else self._vectors(cp, mixture, layout)
            args = (
                x,
                *self._sizes(layout),
                a.type(1.0 / temperature),
                np.int32(entropy),
                np.int32(mixture is not None),
                *self._padded(factors, lse),  # lse stands in for what the kernel will not touch
                lse,
                *self._padded(margins, lse),
                lse if neg_entropy is None else neg_entropy,
                *((lse, lse) if sums is None else sums),
            )
            threads = _reduction_threads(layout.size)
            kernel = statistics_kernel(layout.type_name)
            rt.launch(kernel, layout.type_name, layout.n, threads, args, layout.statistics_shared_bytes)

        def batched(value: Any) -> Any:
            return None if value is None else value.reshape(layout.batch)

        return SoftmaxStatistics(
            lse=lse.reshape(layout.batch),
            margins=tuple(m.reshape((*layout.batch, m.shape[1])) for m in margins),
            neg_entropy=batched(neg_entropy),
            m_log_m=None if sums is None else batched(sums[0]),
            p_log_m=None if sums is None else batched(sums[1]),
        )

    def gradient_map(
        self,
        xp: Any,
        logits: Any,
        lse: Any,
        per_axis: Sequence[Any],
        divergence: Divergence | None,
        ndim: int,
        temperature: float,
    ) -> Any:
        """One read and one write: the ``dsnt_gradient_map`` kernel.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits``.
        logits : array of shape (..., *spatial)
            Unnormalised heatmaps; the last ``ndim`` axes are spatial.
        lse : array
            Log-sum-exp of ``logits / T`` (the batch shape), from the forward pass.
        per_axis : sequence of array
            One vector of shape (..., n_k) per axis, x first.
        divergence : Divergence or None
            The elementwise term ``e``; ``None`` for none.
        ndim : int
            Number of spatial axes (1, 2 or 3).
        temperature : float
            Softmax temperature ``T``.

        Returns
        -------
        array of the shape of ``logits``
            ``P * (outer_sum(per_axis) + e) / T``, in the compute dtype.
        """
        layout = _layout(logits, ndim)
        threads, chunks = _gradient_launch(1 if layout is None else layout.size)
        if layout is None or layout.n * chunks > MAX_BLOCKS:
            return super().gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        rt, a = self._runtime, layout.accumulator
        kind = None if divergence is None else divergence.kind
        with rt.device(logits):
            cp = rt.xp
            x = cp.ascontiguousarray(logits)
            shift = _per_heatmap(cp, lse, layout, None)
            vectors = self._vectors(cp, per_axis, layout)
            coef = shift if divergence is None else _per_heatmap(cp, divergence.coef, layout, None)
            js = divergence is not None and divergence.kind is DivergenceKind.JS
            factors = self._vectors(cp, divergence.factors, layout) if divergence is not None and js else []
            grad = cp.empty(tuple(logits.shape), dtype=a)
            args = (
                x,
                *self._sizes(layout),
                np.int32(chunks),
                a.type(1.0 / temperature),
                shift,
                *self._padded(vectors, shift),
                coef,
                *self._padded(factors, shift),
                grad,
            )
            rt.launch(gradient_kernel(layout.type_name, kind), layout.type_name, layout.n * chunks, threads, args, 0)
        return grad

    @staticmethod
    def _sizes(layout: _Layout) -> tuple[Any, ...]:
        """``W, H, D, ndim`` as the kernels take them."""
        return tuple(np.int32(v) for v in (layout.w, layout.h, layout.d, layout.ndim))

    @staticmethod
    def _vectors(cp: Any, vectors: Sequence[Any], layout: _Layout) -> list[Any]:
        """Per-axis vectors (x first) as (N, n_k) contiguous arrays."""
        return [_per_heatmap(cp, v, layout, length) for v, length in zip(vectors, layout.lengths)]

    @staticmethod
    def _padded(vectors: Sequence[Any], filler: Any) -> Iterator[Any]:
        """The vectors for x, y, z: ``filler`` for the axes there are none for (never read)."""
        for k in range(3):
            yield vectors[k] if k < len(vectors) else filler


KERNELS = CudaKernels()
"""The instance registered under ``dsnt_core.kernels`` as ``"cupy-cuda"``."""
