"""NumPy kernels: blocked, multi-threaded passes that keep their working set in the cache.

The array-API pass (:meth:`ArrayAPIKernels.softmax_moments`) needs a max, a
subtraction, an ``exp`` and several reductions, each a full pass over the heatmaps. NumPy
runs each of those as its own loop, so the forward costs about four times one ``exp``. Here:

* the heatmaps are processed in blocks that fit in the L2 cache, with ``exp`` written into
  a reused buffer (``out=``, which the array API does not have), shared by the calling
  thread and helper threads, as many as the process has cores (up to four in all; NumPy
  releases the GIL in ``exp`` and ``matmul``), like the other libraries' CPU kernels;
* the mass and the first moments of a block come from one matrix product with the
  ``(size, 1 + ndim)`` matrix of columns ``[1, x, y(, z)]`` (BLAS reads the block once);
* the max is not subtracted. ``exp(u)`` is used as it is wherever that is exact to the
  dtype's precision: the heatmap's total mass must be finite and at least
  ``sqrt(smallest normal)``, so the largest term, and every term that matters next to it,
  is a normal number. Other heatmaps (huge logits, all ``-inf``, mass that underflows,
  NaN) are recomputed by the generic shifted path, so the results agree with it to
  rounding for every input.

``softmax_statistics`` and ``gradient_map`` (the ``dsnt_loss`` rules) run in blocks of
256 KiB too, on the same queue of blocks: per block one shifted ``exp`` (and for JS one
``log``) into per-thread scratch buffers kept between calls, in-place sweeps with ``out=``
for the rest, and the row and column sums as matrix products with a vector of ones.
Heatmaps with a non-finite peak (all ``-inf``, NaN, ``+inf``) are recomputed by the
array-API pass, and an array temperature takes the array-API passes. The other passes are
the array-API ones. This implementation is chosen automatically for NumPy arrays.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .._arrays import spatial_size
from .._typing import Array, Namespace
from ..ops.grids import normalized_linspace
from .array_api import LOG_P_FLOOR, ArrayAPIKernels
from .contract import Divergence, DivergenceKind, SoftArgmaxResiduals, SoftmaxStatistics

BLOCK_BYTES = 1 << 20  # about one core's L2 cache on current x86 servers
#: Blocks of the statistics and gradient passes (three block-sized buffers at once): 1 MiB measured
#: about 12% faster than 256 KiB on (32, 17, 64, 64) float32, 2 cores; smaller where that leaves a
#: thread with fewer than two blocks.
PASS_BLOCK_BYTES = 1 << 20


@functools.lru_cache(maxsize=32)
def moment_matrix(spatial: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Columns ``[1, x, y(, z)]`` of the pixel-centre grid, rows in C order over ``spatial``."""
    ndim = len(spatial)
    columns = [np.ones(spatial, dtype=dtype)]
    for k in range(ndim):
        axis = ndim - 1 - k  # x runs along the last axis
        line = np.asarray(normalized_linspace(spatial[axis], dtype=dtype, xp=np), dtype=dtype)
        shape = [1] * ndim
        shape[axis] = spatial[axis]
        columns.append(np.broadcast_to(np.reshape(line, shape), spatial))
    matrix = np.stack([np.reshape(c, (-1,)) for c in columns], axis=1)
    matrix.setflags(write=False)
    return matrix


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """The helper threads of this process (made on first use, once per size)."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="dsnt-numpy")
        return pool


def _forget_pools_after_fork() -> None:
    """In a forked child the parent's threads do not exist: start with no pool and a fresh lock.

    A pool inherited across ``fork`` believes its idle threads are still there and would
    wait for them forever (a DataLoader worker, a ``multiprocessing`` fork child).
    """
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)

_scratch = threading.local()


def _block_buffer(rows: int, size: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch block, kept between calls: a fresh one would be a fresh mapping
    (page faults) once the allocator has handed large blocks back to the system."""
    nbytes = rows * size * dtype.itemsize
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _scratch.buffer = np.empty(max(nbytes, BLOCK_BYTES), dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(rows, size)


class _BlockQueue:
    """Hands out block indices to the threads that share one call (a lock, not the GIL)."""

    def __init__(self, count: int) -> None:
        self._next, self._count, self._lock = 0, count, threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._count:
                return None
            self._next += 1
            return self._next - 1


def _moments_of_blocks(
    flat: np.ndarray, matrix: np.ndarray, result: np.ndarray, blocks: _BlockQueue, block: int
) -> None:
    """``result = exp(flat) @ matrix`` for the cache-sized blocks this thread takes.

    One matrix-vector product per column of ``matrix`` (a handful): BLAS's matrix-matrix
    product with so few columns spawns its own threads, which fight this pool's (2.8x one
    ``exp`` against 1.1x on (32, 17, 64, 64) float32, 2 cores).
    """
    buffer = _block_buffer(min(block, flat.shape[0]), flat.shape[1], flat.dtype)
    columns = [np.ascontiguousarray(matrix[:, k]) for k in range(matrix.shape[1])]
    with np.errstate(over="ignore", invalid="ignore"):  # per thread: overflow is detected afterwards
        while (index := blocks.take()) is not None:
            start, stop = index * block, min((index + 1) * block, flat.shape[0])
            exp_block = buffer[: stop - start]
            np.exp(flat[start:stop], out=exp_block)
            for k, column in enumerate(columns):
                result[start:stop, k] = exp_block @ column


def _unshifted_moments(flat: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``exp(flat) @ matrix``; rows whose ``exp`` overflowed hold ``inf``/NaN.

    The calling thread works through the blocks itself, and helper threads take blocks from
    the same queue as soon as they are running: a helper that wakes late (an idle virtual CPU
    can take a while) costs nothing but its share of the speed-up.
    """
    rows, size = flat.shape
    block = max(1, BLOCK_BYTES // (size * flat.itemsize))
    result = np.empty((rows, matrix.shape[1]), dtype=flat.dtype)
    blocks = _BlockQueue(-(-rows // block))
    helpers = min(4, usable_cores(), rows // (2 * block)) - 1  # at least two blocks per thread
    pending = []
    if helpers > 0:
        pool = _thread_pool(helpers)
        pending = [pool.submit(_moments_of_blocks, flat, matrix, result, blocks, block) for _ in range(helpers)]
    _moments_of_blocks(flat, matrix, result, blocks, block)
    for job in pending:
        job.result()
    return result


# ------------------------------------------------------- the statistics and gradient passes


def _number(temperature: object) -> bool:
    """A Python number: the blocked passes take those (an array temperature takes the array-API passes)."""
    return isinstance(temperature, (int, float)) and not isinstance(temperature, bool)


def _per_heatmap_rows(vectors: Sequence[Array], batch: tuple[int, ...], n: int) -> list[np.ndarray]:
    """Per-axis vectors (..., n_k), x first, as (N, n_k) arrays (views where they have the batch shape)."""
    rows = []
    for vector in vectors:
        array = np.asarray(vector)
        rows.append(np.reshape(np.broadcast_to(array, (*batch, array.shape[-1])), (n, array.shape[-1])))
    return rows


def _axis_view(rows: np.ndarray, k: int) -> np.ndarray:
    """Rows (r, n_k) of axis ``k`` (x, y, z) broadcasting against (r, D, H, W)."""
    if k == 0:
        return rows[:, None, None, :]
    if k == 1:
        return rows[:, None, :, None]
    return rows[:, :, None, None]


class _Scratch(threading.local):
    """Per-thread block buffers, kept between calls: fresh ones would be fresh pages."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, str], np.ndarray] = {}

    def get(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = math.prod(shape)
        buffer = self.buffers.get((slot, dtype.str))
        if buffer is None or buffer.size < count:
            buffer = self.buffers[(slot, dtype.str)] = np.empty(max(count, 1), dtype=dtype)
        return buffer[:count].reshape(shape)


_block_scratch = _Scratch()


def _run_blocks(n: int, rows: int, work: Callable[[slice], None]) -> None:
    """``work`` on each block of ``rows`` heatmaps, by the calling thread and helpers taking blocks from one queue."""
    blocks = _BlockQueue(-(-n // rows))

    def worker() -> None:
        with np.errstate(all="ignore"):  # per thread: -inf logits and NaN heatmaps are handled afterwards
            while (index := blocks.take()) is not None:
                work(slice(index * rows, min((index + 1) * rows, n)))

    helpers = min(4, usable_cores(), n // (2 * rows)) - 1  # at least two blocks per thread
    pending = [_thread_pool(helpers).submit(worker) for _ in range(helpers)] if helpers > 0 else []
    worker()
    for job in pending:
        job.result()


@dataclass(frozen=True)
class _Heatmaps:
    """The logits as (N, D, H, W) in the compute dtype (a view where they are contiguous already)."""

    array: np.ndarray
    batch: tuple[int, ...]
    spatial: tuple[int, ...]
    ndim: int

    @classmethod
    def of(cls, logits: Array, ndim: int) -> _Heatmaps:
        array = np.asarray(logits)
        spatial, batch = tuple(array.shape[array.ndim - ndim :]), tuple(array.shape[: array.ndim - ndim])
        compute = np.float64 if array.dtype == np.float64 else np.float32
        four_d = np.reshape(np.asarray(array, dtype=compute), (-1, *((1,) * (3 - ndim)), *spatial))
        return cls(np.ascontiguousarray(four_d), batch, spatial, ndim)

    @property
    def n(self) -> int:
        return self.array.shape[0]

    @property
    def size(self) -> int:
        return math.prod(self.spatial)

    def rows_per_block(self) -> int:
        """Heatmaps per block: about `PASS_BLOCK_BYTES`, and at least two blocks per thread."""
        by_bytes = PASS_BLOCK_BYTES // (self.size * self.array.itemsize)
        return max(1, min(by_bytes, self.n // (2 * min(4, usable_cores()))))


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` per heatmap of two contiguous (r, D, H, W) blocks, without a temporary."""
    rows = a.shape[0]
    a2, b2 = np.reshape(a, (rows, -1)), np.reshape(b, (rows, -1))
    if hasattr(np, "vecdot"):  # NumPy 2: a vectorised loop, about 2.5x faster than einsum here
        return np.vecdot(a2, b2)
    return np.einsum("ij,ij->i", a2, b2)


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(n, dtype=dtype)
    ones.setflags(write=False)
    return ones


def _sums_along_rows_and_x(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per heatmap of a (r, D, H, W) block: the sums along each row (r, D, H) and along x (r, W).

    Matrix products with a vector of ones: NumPy's reductions over short axes loop per row
    (several times slower than BLAS here).
    """
    r, depth, height, width = e.shape
    rows = np.matmul(np.reshape(e, (r * depth * height, width)), _ones(width, e.dtype))
    along_x = np.matmul(_ones(depth * height, e.dtype), np.reshape(e, (r, depth * height, width)))
    return np.reshape(rows, (r, depth, height)), along_x


def _outer_product_into(out: np.ndarray, factors: list[np.ndarray], sl: slice) -> np.ndarray:
    """``out = fx fy (fz)`` for the heatmaps of block ``sl`` (out: (r, D, H, W)): one sweep for 1-D and 2-D."""
    if len(factors) == 1:
        np.copyto(out, _axis_view(factors[0][sl], 0))
        return out
    across = _axis_view(factors[1][sl], 1)
    if len(factors) == 3:
        across = across * _axis_view(factors[2][sl], 2)  # (r, D, H, 1): small
    return np.multiply(_axis_view(factors[0][sl], 0), across, out=out)


def blocked_statistics(
    maps: _Heatmaps, temperature: float, *, entropy: bool, mixture: Sequence[Array] | None
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Flat (N,) statistics of `NumPyKernels.softmax_statistics`, and each heatmap's peak (non-finite: redo)."""
    array, n, dtype = maps.array, maps.n, maps.array.dtype
    depth, height, width = array.shape[1:]
    peaks, lse = np.empty(n, dtype), np.empty(n, dtype)
    along_x, along_rows = np.empty((n, width), dtype), np.empty((n, depth, height), dtype)
    neg_entropy = np.empty(n, dtype) if entropy else None
    m_log_m = p_log_m = None
    factors = None if mixture is None else _per_heatmap_rows(mixture, maps.batch, n)
    if factors is not None:
        m_log_m, p_log_m = np.empty(n, dtype), np.empty(n, dtype)
    lowest, tiny = np.finfo(dtype).min, np.finfo(dtype).smallest_normal

    def work(sl: slice) -> None:
        u = array[sl]
        shifted, e = _block_scratch.get(0, u.shape, dtype), _block_scratch.get(1, u.shape, dtype)
        if temperature != 1.0:
            u = np.divide(u, dtype.type(temperature), out=shifted)
        peak = np.max(np.reshape(u, (u.shape[0], -1)), axis=1)
        peaks[sl] = peak
        peak = np.where(np.isfinite(peak), peak, 0)
        np.subtract(u, peak[:, None, None, None], out=shifted)
        np.exp(shifted, out=e)
        rows, sums_x = _sums_along_rows_and_x(e)
        total = np.sum(sums_x, axis=1)
        inv_total, log_total = 1.0 / total, np.log(total)
        lse[sl] = peak + log_total
        along_x[sl] = sums_x * inv_total[:, None]
        along_rows[sl] = rows * inv_total[:, None, None]
        if neg_entropy is not None:
            np.maximum(shifted, lowest, out=shifted)
            neg_entropy[sl] = _row_dots(e, shifted) * inv_total - log_total
        if factors is not None and m_log_m is not None and p_log_m is not None:
            p = np.multiply(e, inv_total[:, None, None, None], out=e)
            m = _outer_product_into(_block_scratch.get(2, u.shape, dtype), factors, sl)
            np.add(m, p, out=m)
            np.multiply(m, dtype.type(0.5), out=m)
            log_m = np.log(np.maximum(m, tiny, out=shifted), out=shifted)
            m_log_m[sl] = _row_dots(m, log_m)
            p_log_m[sl] = _row_dots(p, log_m)

    _run_blocks(n, maps.rows_per_block(), work)
    margins = [along_x, np.sum(along_rows, axis=1), np.sum(along_rows, axis=2)][: maps.ndim]
    return lse, margins, neg_entropy, m_log_m, p_log_m, peaks


def blocked_gradient(
    maps: _Heatmaps, lse: Array, per_axis: Sequence[Array], divergence: Divergence | None, temperature: float
) -> np.ndarray:
    """The gradient map of `NumPyKernels.gradient_map` as (N, D, H, W), in the compute dtype."""
    array, n, dtype = maps.array, maps.n, maps.array.dtype
    grad = np.empty(array.shape, dtype)
    shift = np.reshape(np.broadcast_to(np.asarray(lse, dtype=dtype), maps.batch), (n,))
    axes = _per_heatmap_rows(per_axis, maps.batch, n)
    coef = factors = None
    if divergence is not None:
        coef = np.reshape(np.broadcast_to(np.asarray(divergence.coef, dtype=dtype), maps.batch), (n,))
        if divergence.kind is DivergenceKind.JS:
            factors = _per_heatmap_rows(divergence.factors, maps.batch, n)
            coef = coef * dtype.type(0.5)
    tiny, floor = np.finfo(dtype).smallest_normal, dtype.type(LOG_P_FLOOR)

    def work(sl: slice) -> None:
        u, g = array[sl], grad[sl]
        log_p, p = _block_scratch.get(0, u.shape, dtype), _block_scratch.get(1, u.shape, dtype)
        if temperature != 1.0:
            u = np.divide(u, dtype.type(temperature), out=log_p)
        np.subtract(u, shift[sl, None, None, None], out=log_p)
        if divergence is not None:
            np.maximum(log_p, floor, out=log_p)
        np.exp(log_p, out=p)
        if len(axes) > 1:
            np.add(_axis_view(axes[0][sl], 0), _axis_view(axes[1][sl], 1), out=g)
        else:
            np.copyto(g, _axis_view(axes[0][sl], 0))
        if len(axes) > 2:
            np.add(g, _axis_view(axes[2][sl], 2), out=g)
        if coef is not None:
            term = _block_scratch.get(2, u.shape, dtype)
            if factors is None:  # KL: coef log P
                np.multiply(log_p, coef[sl, None, None, None], out=term)
            else:  # JS: coef / 2 (log P - log(P + Q))
                _outer_product_into(term, factors, sl)
                np.add(term, p, out=term)
                np.log(np.maximum(term, tiny, out=term), out=term)
                np.subtract(log_p, term, out=term)
                np.multiply(term, coef[sl, None, None, None], out=term)
            np.add(g, term, out=g)
        np.multiply(g, p, out=g)
        if temperature != 1.0:
            np.divide(g, dtype.type(temperature), out=g)

    _run_blocks(n, maps.rows_per_block(), work)
    return grad


class NumPyKernels(ArrayAPIKernels):
    """Blocked, multi-threaded ``softmax_moments``, ``softmax_statistics`` and ``gradient_map`` for NumPy arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from array_api_compat import numpy as xp
    >>> from dsnt_core.kernels import NumPyKernels
    >>> residuals = NumPyKernels().softmax_moments(xp, np.zeros((1, 3, 3)), 2, 1.0)
    >>> residuals.lse.round(6).tolist(), np.allclose(residuals.mu, 0.0)
    ([2.197225], True)
    """

    name = "numpy"
    description = "NumPy: cache-sized blocks (exp, matrix products, in-place sweeps), on up to 4 cores"
    libraries = ("numpy",)
    automatic = True

    def applies_to(self, logits: Array) -> bool:
        """Whether it can take these logits: NumPy arrays.

        Parameters
        ----------
        logits : array
            The logits of a call.

        Returns
        -------
        bool
            Whether ``logits`` is a NumPy array.
        """
        return isinstance(logits, np.ndarray)

    def softmax_moments(self, xp: Namespace, logits: Array, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """Log-sum-exp and expected coordinates from one ``exp`` and one matrix product per block.

        The array-API pass takes the heatmaps that the unshifted sum cannot represent exactly.

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
        array = np.asarray(logits)  # applies_to: a NumPy array already
        spatial = tuple(array.shape[array.ndim - ndim :])
        batch = tuple(array.shape[: array.ndim - ndim])
        compute = np.float64 if array.dtype == np.float64 else np.float32
        flat = np.reshape(np.asarray(array, dtype=compute), (-1, spatial_size(array, ndim)))
        if temperature != 1.0:
            flat = flat / compute(temperature)
        if flat.shape[0] == 0 or flat.shape[1] == 0:
            return super().softmax_moments(xp, logits, ndim, temperature)
        sums = _unshifted_moments(flat, moment_matrix(spatial, np.dtype(compute)))
        total = sums[:, 0]
        exact = (total >= math.sqrt(np.finfo(compute).smallest_normal)) & (total < np.inf)
        mu = sums[:, 1:] / np.where(exact, total, 1.0)[:, None]
        lse = np.log(np.where(exact, total, 1.0))
        if not exact.all():
            redo = super().softmax_moments(xp, np.reshape(array, (-1, *spatial))[~exact], ndim, temperature)
            mu[~exact] = np.asarray(redo.mu)
            lse[~exact] = np.asarray(redo.lse)
        return SoftArgmaxResiduals(np.reshape(lse, batch), np.reshape(mu, (*batch, ndim)))

    def softmax_statistics(
        self,
        xp: Namespace,
        logits: Array,
        ndim: int,
        temperature: float,
        *,
        entropy: bool = False,
        mixture: Sequence[Array] | None = None,
    ) -> SoftmaxStatistics:
        """The statistics in cache-sized blocks: per block one shifted ``exp`` and a few in-place sweeps.

        Heatmaps with a non-finite peak (all ``-inf``, NaN, ``+inf``) are recomputed by the
        array-API pass, as is everything for an array temperature.

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
        if not _number(temperature) or not isinstance(logits, np.ndarray) or 0 in logits.shape:
            return super().softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        maps = _Heatmaps.of(logits, ndim)
        lse, margins, neg_entropy, m_log_m, p_log_m, peaks = blocked_statistics(
            maps, temperature, entropy=entropy, mixture=mixture
        )
        redo = ~np.isfinite(peaks)
        if redo.any():
            flat_mixture = (
                None if mixture is None else [m[redo] for m in _per_heatmap_rows(mixture, maps.batch, maps.n)]
            )
            redone = super().softmax_statistics(
                xp,
                np.reshape(logits, (-1, *maps.spatial))[redo],
                ndim,
                temperature,
                entropy=entropy,
                mixture=flat_mixture,
            )
            lse[redo] = redone.lse
            for margin, redone_margin in zip(margins, redone.margins):
                margin[redo] = redone_margin
            for ours, theirs in (
                (neg_entropy, redone.neg_entropy),
                (m_log_m, redone.m_log_m),
                (p_log_m, redone.p_log_m),
            ):
                if ours is not None:
                    ours[redo] = theirs
        batch = maps.batch

        def batched(value: np.ndarray | None) -> np.ndarray | None:
            return None if value is None else np.reshape(value, batch)

        return SoftmaxStatistics(
            np.reshape(lse, batch),
            tuple(np.reshape(m, (*batch, m.shape[-1])) for m in margins),
            batched(neg_entropy),
            batched(m_log_m),
            batched(p_log_m),
        )

    def gradient_map(
        self,
        xp: Namespace,
        logits: Array,
        lse: Array,
        per_axis: Sequence[Array],
        divergence: Divergence | None,
        ndim: int,
        temperature: float,
    ) -> Array:
        """The gradient map in cache-sized blocks: one ``exp`` (and for JS one ``log``) and in-place sweeps per block.

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
            The gradient map, in the compute dtype.
        """
        if not _number(temperature) or not isinstance(logits, np.ndarray) or 0 in logits.shape:
            return super().gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        maps = _Heatmaps.of(logits, ndim)
        return np.reshape(blocked_gradient(maps, lse, per_axis, divergence, temperature), logits.shape)
