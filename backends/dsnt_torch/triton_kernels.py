"""The ``"torch-triton"`` kernels: Triton passes for PyTorch tensors on a GPU.

The kernels themselves are in :mod:`dsnt_torch.triton_source` (its docstring describes what
each program computes); this module chooses block sizes, lays the arguments out, registers
the passes as PyTorch custom operators (``torch.library.triton_op`` with the kernels wrapped
by ``torch.library.wrap_triton``, so that ``torch.compile`` and ``torch.export`` see the
kernels instead of an opaque call) and implements the kernel contract on top of them.

Traffic per pass, for logits of B bytes: ``softmax_moments`` reads them once;
``softmax_statistics`` reads them once, and a second time for the JS sums when a heatmap
does not fit in one tile (8192 elements, each axis rounded up to a power of two);
``gradient_map`` reads them once and writes the gradient once.

On the CPU the same kernels run in Triton's interpreter (NumPy, slow: for tests). The
interpreter is chosen per call, for CPU tensors, from a second copy of
:mod:`dsnt_torch.triton_source` loaded with the interpreter switched on, so it does not
matter whether ``TRITON_INTERPRET=1`` was set before Triton was first imported. The
implementation applies to CPU tensors only when ``TRITON_INTERPRET=1`` is set.
"""

import contextlib
import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch

from dsnt_core.kernels import (
    ArrayAPIKernels,
    Divergence,
    DivergenceKind,
    SoftArgmaxResiduals,
    SoftmaxStatistics,
    current_kernels,
)
from dsnt_core.kernels.array_api import LOG_P_FLOOR

try:
    import triton  # type: ignore[import-untyped,import-not-found,unused-ignore]
except Exception as error:  # not installed, or a broken installation
    triton = None
    _IMPORT_ERROR: str | None = f"triton cannot be imported ({type(error).__name__}: {error}); pip install triton"
else:
    _IMPORT_ERROR = None if hasattr(torch.library, "triton_op") else "torch.library.triton_op needs torch >= 2.6"

SOURCE = Path(__file__).with_name("triton_source.py")
"""The file of the ``@triton.jit`` kernels."""

MAX_ROW = 8192
"""Longest row, and longest column, that `softmax_statistics` takes: the column sums of a
heatmap stay in registers, and so do the y marginal's sums. Longer ones (1-D heatmaps of
more than 8192 elements, say) use the array-API pass."""
SINGLE_TILE = 8192
"""Heatmaps up to this many elements (rounded up to powers of two per axis) are one tile in
`softmax_statistics`: the JS sums then need no second read."""
STATISTICS_TILE = 4096
"""Elements per tile of `softmax_statistics` for larger heatmaps."""
MOMENTS_TILE = 4096
"""Elements per tile of `softmax_moments`."""
GRADIENT_TILE = 2048
"""Elements per program of `gradient_map`."""
FIXUP_TILE = 2048
"""Elements per tile of the loop that turns row sums into the y and z marginals."""
_INT32 = 2**31 - 1
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KINDS = {None: 0, DivergenceKind.KL: 1, DivergenceKind.JS: 2}


# ------------------------------------------------------------------ the kernel modules


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set: CPU tensors may then go through the kernels.

    Returns
    -------
    bool
        The environment variable's state now.

    Examples
    --------
    >>> import os
    >>> from dsnt_torch.triton_kernels import interpreter_requested
    >>> interpreter_requested() == (os.environ.get("TRITON_INTERPRET") == "1")
    True
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def _interpreter(on: bool) -> Iterator[None]:
    """Triton's interpreter switch set to ``on`` while the kernels are decorated."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs.runtime, "scope"):
        with knobs.runtime.scope():
            knobs.runtime.interpret = on
            yield
        return
    previous = os.environ.get("TRITON_INTERPRET")  # Triton before the knobs: the variable itself
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_load_lock = threading.Lock()


def _load_copy(interpreted: bool) -> ModuleType:
    """A private copy of `triton_source` whose kernels are decorated with the interpreter on or off."""
    name = f"dsnt_torch._triton_source_{'interpreted' if interpreted else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, SOURCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the Triton kernels from {SOURCE}")
    module = importlib.util.module_from_spec(spec)
    with _load_lock, _interpreter(interpreted):
        spec.loader.exec_module(module)
    return module


def is_interpreted(module: ModuleType) -> bool:
    """Whether the kernels of ``module`` run in Triton's interpreter (else they are compiled).

    Parameters
    ----------
    module : module
        `dsnt_torch.triton_source` or a copy of it.

    Returns
    -------
    bool
        ``True`` when its kernels are not ``triton.JITFunction`` objects.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import compiled_source, is_interpreted
    >>> is_interpreted(compiled_source())
    False
    """
    return not isinstance(module.softmax_statistics_kernel, triton.runtime.jit.JITFunction)


@functools.cache
def interpreted_source() -> ModuleType:
    """The kernels decorated for Triton's interpreter (CPU tensors).

    Returns
    -------
    module
        A copy of `dsnt_torch.triton_source` loaded with the interpreter on.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import interpreted_source, is_interpreted
    >>> is_interpreted(interpreted_source())
    True
    """
    return _load_copy(interpreted=True)


@functools.cache
def compiled_source() -> ModuleType:
    """The kernels as ``triton.JITFunction`` objects, for a GPU (and for ahead-of-time compilation).

    `dsnt_torch.triton_source` itself, unless the process set ``TRITON_INTERPRET=1`` before
    importing Triton (then a copy loaded with the interpreter off).

    Returns
    -------
    module
        The kernels, compiled on their first launch.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import compiled_source
    >>> type(compiled_source().gradient_map_kernel).__name__
    'JITFunction'
    """
    from . import triton_source

    return _load_copy(interpreted=False) if is_interpreted(triton_source) else triton_source


def _source_for(tensor: torch.Tensor) -> ModuleType:
    """The kernels for ``tensor``: interpreted for real CPU tensors, else the GPU ones.

    Fake tensors (``torch.compile``'s and ``torch.export``'s tracing) take the compiled
    kernels whatever their device: the tracer records the launch through ``wrap_triton``
    without running it, which the interpreter cannot do. Real GPU tensors take
    `dsnt_torch.triton_source` as imported, interpreted if the process asked for the
    interpreter before importing Triton.
    """
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(tensor):
        return compiled_source()
    if tensor.device.type == "cpu":
        return interpreted_source()
    from . import triton_source

    return triton_source


def _launch(
    source: ModuleType, name: str, grid: tuple[int, ...], args: Sequence[Any], meta: dict[str, Any], num_warps: int
) -> None:
    kernel = getattr(source, name)
    if is_interpreted(source):
        # NumPy warns at log(0), inf - inf and the maximum of an all-NaN tile, which the kernels expect.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel[grid](*args, **meta, INTERPRETED=True)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **meta, INTERPRETED=False, num_warps=num_warps)


# ------------------------------------------------------------------------- block sizes


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _warps(elements: int) -> int:
    """Warps per program for a tile of ``elements``: about 8 to 16 elements per thread."""
    return 1 if elements <= 256 else 2 if elements <= 512 else 4 if elements <= 2048 else 8


def statistics_blocks(d: int, h: int, w: int) -> dict[str, Any]:
    """Tile sizes of `softmax_statistics` for (D, H, W) heatmaps.

    Parameters
    ----------
    d, h, w : int
        The heatmaps' depth, height and width (1 for missing axes).

    Returns
    -------
    dict
        ``BLOCK_R``, ``BLOCK_W`` (a whole row), ``BLOCK_D``, ``BLOCK_H`` (the row-sum loop),
        ``SINGLE_TILE`` and ``num_warps``.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import statistics_blocks
    >>> blocks = statistics_blocks(1, 64, 64)
    >>> blocks["BLOCK_R"], blocks["BLOCK_W"], blocks["SINGLE_TILE"]
    (64, 64, True)
    >>> statistics_blocks(1, 256, 256)["BLOCK_R"]
    16
    """
    block_w = _pow2(w)
    rows = d * h
    if _pow2(rows) * block_w <= SINGLE_TILE:
        block_r, single = _pow2(rows), True
    else:
        block_r, single = max(1, STATISTICS_TILE // block_w), False
    block_h = _pow2(h)
    block_d = max(1, min(_pow2(d), FIXUP_TILE // block_h))
    return dict(
        BLOCK_R=block_r,
        BLOCK_W=block_w,
        BLOCK_D=block_d,
        BLOCK_H=block_h,
        SINGLE_TILE=single,
        num_warps=_warps(block_r * block_w),
    )


def moments_blocks(d: int, h: int, w: int) -> dict[str, Any]:
    """Tile sizes of `softmax_moments` (rows of any width: the columns are tiled too).

    Parameters
    ----------
    d, h, w : int
        The heatmaps' depth, height and width (1 for missing axes).

    Returns
    -------
    dict
        ``BLOCK_R``, ``BLOCK_W`` and ``num_warps``.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import moments_blocks
    >>> moments_blocks(1, 1, 100_000)["BLOCK_W"]
    4096
    """
    block_w = min(_pow2(w), MOMENTS_TILE)
    block_r = max(1, min(_pow2(d * h), MOMENTS_TILE // block_w))
    return dict(BLOCK_R=block_r, BLOCK_W=block_w, num_warps=_warps(block_r * block_w))


def gradient_blocks(d: int, h: int, w: int) -> dict[str, Any]:
    """Tile sizes of `gradient_map`: one program per tile of a heatmap.

    Parameters
    ----------
    d, h, w : int
        The heatmaps' depth, height and width (1 for missing axes).

    Returns
    -------
    dict
        ``BLOCK_R``, ``BLOCK_W``, ``row_blocks``, ``col_blocks`` and ``num_warps``.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import gradient_blocks
    >>> blocks = gradient_blocks(1, 64, 48)
    >>> blocks["BLOCK_R"], blocks["BLOCK_W"], blocks["row_blocks"], blocks["col_blocks"]
    (32, 64, 2, 1)
    """
    block_w = min(_pow2(w), 1024)
    block_r = max(1, min(_pow2(d * h), GRADIENT_TILE // block_w))
    return dict(
        BLOCK_R=block_r,
        BLOCK_W=block_w,
        row_blocks=-(-(d * h) // block_r),
        col_blocks=-(-w // block_w),
        num_warps=_warps(block_r * block_w),
    )


# ------------------------------------------------------------------ the custom operators


def split_float(value: float) -> tuple[float, float, float]:
    """Three float32 numbers whose sum (in float64) is ``value``: how a float64 scalar reaches a kernel.

    Triton passes Python floats to kernels as float32 (its interpreter too), so ``1 / T`` would
    lose precision for float64 logits; the kernels add the three parts up in their dtype.

    Parameters
    ----------
    value : float
        A finite float.

    Returns
    -------
    tuple of float
        ``(hi, mid, lo)``, each exactly representable in float32.

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import split_float
    >>> parts = split_float(1 / 3)
    >>> (parts[0] + parts[1]) + parts[2] == 1 / 3
    True
    """
    hi = float(np.float32(value))
    mid = float(np.float32(value - hi))
    return hi, mid, float(np.float32(value - hi - mid))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


def _statistics_impl(
    logits: torch.Tensor,
    fx: torch.Tensor | None,
    fy: torch.Tensor | None,
    fz: torch.Tensor | None,
    inv_temperature: float,
    ndim: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d, h, w = logits.shape
    acc = _compute_dtype(logits.dtype)
    mixture = fx is not None
    lse = torch.empty((n,), dtype=acc, device=logits.device)
    mx = torch.empty((n, w), dtype=acc, device=logits.device)
    my = torch.empty((n, h), dtype=acc, device=logits.device) if ndim >= 2 else lse.new_empty((0,))
    mz = torch.empty((n, d), dtype=acc, device=logits.device) if ndim == 3 else lse.new_empty((0,))
    rows = torch.empty((2, n, d * h), dtype=acc, device=logits.device) if ndim >= 2 else lse
    neg_entropy = torch.empty_like(lse) if entropy else lse.new_empty((0,))
    m_log_m = torch.empty_like(lse) if mixture else lse.new_empty((0,))
    p_log_m = torch.empty_like(lse) if mixture else lse.new_empty((0,))
    blocks = statistics_blocks(d, h, w)
    num_warps = blocks.pop("num_warps")
    # Pointers a configuration never reads get a tensor that exists (lse).
    args: list[Any] = [logits, lse, mx, my if ndim >= 2 else lse, mz if ndim == 3 else lse, rows]
    args += [neg_entropy if entropy else lse, m_log_m if mixture else lse, p_log_m if mixture else lse]
    args += [lse if t is None else t for t in (fx, fy, fz)]
    args += [*split_float(inv_temperature), d, h, w]
    meta = dict(NDIM=ndim, ENTROPY=entropy, MIXTURE=mixture, TINY=_tiny(acc), **blocks)
    _launch(_source_for(logits), "softmax_statistics_kernel", (n,), args, meta, num_warps)
    return lse, mx, my, mz, neg_entropy, m_log_m, p_log_m


def _moments_impl(logits: torch.Tensor, inv_temperature: float, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, d, h, w = logits.shape
    acc = _compute_dtype(logits.dtype)
    lse = torch.empty((n,), dtype=acc, device=logits.device)
    mu = torch.empty((n, ndim), dtype=acc, device=logits.device)
    blocks = moments_blocks(d, h, w)
    num_warps = blocks.pop("num_warps")
    args: list[Any] = [logits, lse, mu, *split_float(inv_temperature), d, h, w]
    _launch(_source_for(logits), "softmax_moments_kernel", (n,), args, dict(NDIM=ndim, **blocks), num_warps)
    return lse, mu


def _gradient_impl(
    logits: torch.Tensor,
    lse: torch.Tensor,
    ax: torch.Tensor,
    ay: torch.Tensor | None,
    az: torch.Tensor | None,
    coef: torch.Tensor | None,
    fx: torch.Tensor | None,
    fy: torch.Tensor | None,
    fz: torch.Tensor | None,
    inv_temperature: float,
    ndim: int,
    kind: int,
) -> torch.Tensor:
    n, d, h, w = logits.shape
    acc = _compute_dtype(logits.dtype)
    grad = torch.empty(logits.shape, dtype=acc, device=logits.device)
    blocks = gradient_blocks(d, h, w)
    num_warps = blocks.pop("num_warps")
    row_blocks, col_blocks = blocks.pop("row_blocks"), blocks.pop("col_blocks")
    args: list[Any] = [logits, grad, lse, ax, *(lse if t is None else t for t in (ay, az, coef, fx, fy, fz))]
    args += [*split_float(inv_temperature), d, h, w, row_blocks, col_blocks]
    meta = dict(NDIM=ndim, KIND=kind, LOG_P_FLOOR=LOG_P_FLOOR, TINY=_tiny(acc), **blocks)
    _launch(_source_for(logits), "gradient_map_kernel", (n * row_blocks * col_blocks,), args, meta, num_warps)
    return grad


class Operators(NamedTuple):
    """The passes as PyTorch custom operators (``torch.ops.dsnt_triton.*``), made by ``torch.library.triton_op``.

    Parameters
    ----------
    softmax_statistics : callable
        ``(logits (N, D, H, W), fx, fy, fz, inv_temperature, ndim, entropy)`` to ``(lse, mx, my,
        mz, neg_entropy, m_log_m, p_log_m)``; the factors of ``Q`` are ``None`` without the JS
        sums, results not asked for are empty.
    softmax_moments : callable
        ``(logits, inv_temperature, ndim)`` to ``(lse (N,), mu (N, ndim))``.
    gradient_map : callable
        ``(logits, lse, ax, ay, az, coef, fx, fy, fz, inv_temperature, ndim, kind)`` to the
        gradient (N, D, H, W); ``kind`` 0 (none), 1 (KL) or 2 (JS).

    Examples
    --------
    >>> from dsnt_torch.triton_kernels import operators
    >>> operators().softmax_moments.__class__.__name__
    'CustomOpDef'
    """

    softmax_statistics: Any
    softmax_moments: Any
    gradient_map: Any


_operators: list[Operators] = []
_operators_lock = threading.Lock()


def operators() -> Operators:
    """The custom operators, registered on first use (registering imports parts of ``torch._inductor``: about 1 s).

    Returns
    -------
    Operators
        The three passes as operators.

    Raises
    ------
    RuntimeError
        If Triton or ``torch.library.triton_op`` is missing.

    Examples
    --------
    >>> import torch
    >>> from dsnt_torch.triton_kernels import operators
    >>> operators().softmax_statistics is operators().softmax_statistics
    True
    """
    if not _operators:
        if _IMPORT_ERROR is not None:
            raise RuntimeError(_IMPORT_ERROR)
        with _operators_lock:
            if not _operators:
                register = torch.library.triton_op
                _operators.append(
                    Operators(
                        register("dsnt_triton::softmax_statistics", mutates_args=())(_statistics_impl),
                        register("dsnt_triton::softmax_moments", mutates_args=())(_moments_impl),
                        register("dsnt_triton::gradient_map", mutates_args=())(_gradient_impl),
                    )
                )
    return _operators[0]


if _IMPORT_ERROR is None and (torch.cuda.is_available() or interpreter_requested()):
    operators()  # now, so that a first call under torch.compile does not trace the registration


# ------------------------------------------------------------------------------ the passes


def _heatmaps(logits: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N, D, H, W) contiguous view (or copy) in the logits' own dtype, detached; missing axes have length 1."""
    spatial = tuple(logits.shape[logits.ndim - ndim :])
    return logits.detach().reshape(-1, *((1,) * (3 - ndim)), *spatial).contiguous()


def _per_heatmap(vectors: Sequence[Any], batch: tuple[int, ...], n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-axis vectors (x, y[, z]), each broadcasting against (..., n_k), as (N, n_k) contiguous tensors."""
    return [
        torch.broadcast_to(v, (*batch, v.shape[-1])).reshape(n, v.shape[-1]).to(dtype).contiguous() for v in vectors
    ]


def _per_heatmap_numbers(values: Any, batch: tuple[int, ...], n: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-heatmap numbers (``lse``, ``coef``) as an (N,) contiguous tensor."""
    return torch.broadcast_to(values, batch).reshape(n).to(dtype).contiguous()


def _three(vectors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return [*vectors, *((None,) * (3 - len(vectors)))]


def _fits(logits: torch.Tensor, ndim: int) -> bool:
    """Whether the kernels take these shapes (else the array-API passes run): no empty batch, int32 offsets."""
    spatial = logits.shape[logits.ndim - ndim :]
    size = 1
    for length in spatial:
        size *= int(length)
    return logits.numel() > 0 and size <= _INT32 and logits.numel() // size <= _INT32


class TritonKernels(ArrayAPIKernels):
    """Triton passes for PyTorch tensors on a GPU: one read forward, one read and one write backward.

    ``softmax_moments`` and ``softmax_statistics`` run one program per heatmap that sweeps it
    once with an online maximum; ``gradient_map`` runs one program per tile. 16-bit logits
    are read as they are and accumulated in float32; float64 stays float64. The passes are
    PyTorch custom operators (``torch.ops.dsnt_triton.*``, made with
    ``torch.library.triton_op``), so ``torch.compile(fullgraph=True)`` keeps them in its
    graph. Chosen automatically for CUDA tensors when Triton is installed; tensors inside
    ``torch.func`` transforms take the array-API passes. With ``TRITON_INTERPRET=1`` they also
    run CPU tensors, in Triton's interpreter (slow: for tests).

    Examples
    --------
    >>> import torch
    >>> from dsnt_torch.triton_kernels import KERNELS
    >>> KERNELS.name, KERNELS.libraries
    ('torch-triton', ('torch',))
    >>> KERNELS.applies_to(torch.zeros(2, 8, 8, dtype=torch.int64))
    False
    """

    name = "torch-triton"
    description = "PyTorch on GPUs: Triton kernels, one read of the logits forward, one read and one write backward"
    libraries = ("torch",)
    automatic = True

    def unavailable_reason(self) -> str | None:
        """Why the kernels cannot run here: no Triton (or a torch without ``triton_op``), or no GPU.

        Returns
        -------
        str or None
            The reason, or ``None`` when they can run.
        """
        if _IMPORT_ERROR is not None:
            return _IMPORT_ERROR
        if not torch.cuda.is_available() and not interpreter_requested():
            return (
                "no CUDA device (with TRITON_INTERPRET=1 the kernels run CPU tensors in Triton's interpreter, "
                "slowly, for tests)"
            )
        return None

    def applies_to(self, logits: Any) -> bool:
        """Floating-point tensors on a CUDA device, not in ``torch.func``; CPU tensors under the interpreter.

        CPU tensors go through the Triton interpreter only when ``TRITON_INTERPRET=1`` is set
        and these kernels were chosen by name (``use_kernels("torch-triton")``): the
        interpreter is far too slow to be an automatic choice.

        Parameters
        ----------
        logits : Any
            The logits of a call.

        Returns
        -------
        bool
            Whether these passes can take them.
        """
        if _IMPORT_ERROR is not None or not isinstance(logits, torch.Tensor) or logits.dtype not in _FLOATS:
            return False
        device = logits.device.type
        interpreted = device == "cpu" and interpreter_requested() and current_kernels() == self.name
        if not (device == "cuda" or interpreted):
            return False
        return torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(logits)

    def softmax_moments(self, xp: Any, logits: Any, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """Log-sum-exp and expected coordinates in one sweep per heatmap (no marginals).

        Parameters
        ----------
        xp : namespace
            The array namespace (unused: the tensors are torch's).
        logits : torch.Tensor
            Logits (..., *spatial).
        ndim : int
            Number of spatial axes.
        temperature : float
            Softmax temperature.

        Returns
        -------
        SoftArgmaxResiduals
            ``lse`` (batch shape) and ``mu`` (..., ndim), in the compute dtype.
        """
        if not _fits(logits, ndim):
            return super().softmax_moments(xp, logits, ndim, temperature)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        lse, mu = operators().softmax_moments(_heatmaps(logits, ndim), 1.0 / temperature, ndim)
        return SoftArgmaxResiduals(lse.reshape(batch), mu.reshape((*batch, ndim)))

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
        """Log-sum-exp, marginals, and on request ``sum P log P`` and the JS sums, one program per heatmap.

        Parameters
        ----------
        xp : namespace
            The array namespace (unused: the tensors are torch's).
        logits : torch.Tensor
            Logits (..., *spatial).
        ndim : int
            Number of spatial axes.
        temperature : float
            Softmax temperature.
        entropy : bool
            Also compute ``sum P log P``.
        mixture : sequence of torch.Tensor, optional
            The 1-D factors of ``Q`` (x first), for ``sum M log M`` and ``sum P log M``.

        Returns
        -------
        SoftmaxStatistics
            The statistics in the compute dtype.
        """
        spatial = tuple(logits.shape[logits.ndim - ndim :])
        too_long = _pow2(spatial[-1]) > MAX_ROW or (ndim >= 2 and _pow2(spatial[-2]) > MAX_ROW)
        if too_long or not _fits(logits, ndim):
            return super().softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        u = _heatmaps(logits, ndim)
        factors: list[torch.Tensor | None] = [None, None, None]
        if mixture is not None:
            factors = _three(_per_heatmap(mixture, batch, u.shape[0], _compute_dtype(u.dtype)))
        lse, mx, my, mz, neg_entropy, m_log_m, p_log_m = operators().softmax_statistics(
            u, *factors, 1.0 / temperature, ndim, entropy
        )
        margins = tuple(m.reshape((*batch, m.shape[-1])) for m in (mx, my, mz)[:ndim])
        return SoftmaxStatistics(
            lse=lse.reshape(batch),
            margins=margins,
            neg_entropy=neg_entropy.reshape(batch) if entropy else None,
            m_log_m=m_log_m.reshape(batch) if mixture is not None else None,
            p_log_m=p_log_m.reshape(batch) if mixture is not None else None,
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
        """``P * (outer_sum(per_axis) + e) / T`` in one read and one write of the logits' size.

        Parameters
        ----------
        xp : namespace
            The array namespace (unused: the tensors are torch's).
        logits : torch.Tensor
            Logits (..., *spatial).
        lse : torch.Tensor
            Log-sum-exp per heatmap.
        per_axis : sequence of torch.Tensor
            Per-axis terms (x first), each broadcasting against (..., n_k).
        divergence : Divergence, optional
            The elementwise KL or JS term.
        ndim : int
            Number of spatial axes.
        temperature : float
            Softmax temperature.

        Returns
        -------
        torch.Tensor
            The gradient map, shaped like ``logits``, in the compute dtype.
        """
        if not _fits(logits, ndim):
            return super().gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        u = _heatmaps(logits, ndim)
        n, acc = u.shape[0], _compute_dtype(u.dtype)
        axes = _three(_per_heatmap(per_axis, batch, n, acc))
        coef: torch.Tensor | None = None
        factors: list[torch.Tensor | None] = [None, None, None]
        if divergence is not None:
            coef = _per_heatmap_numbers(divergence.coef, batch, n, acc)
            if divergence.kind is DivergenceKind.JS:
                factors = _three(_per_heatmap(divergence.factors, batch, n, acc))
        grad = operators().gradient_map(
            u,
            _per_heatmap_numbers(lse, batch, n, acc),
            *axes,
            coef,
            *factors,
            1.0 / temperature,
            ndim,
            _KINDS[None if divergence is None else divergence.kind],
        )
        return grad.reshape(logits.shape)


KERNELS = TritonKernels()
"""The instance registered in the ``dsnt_core.kernels`` entry-point group."""
