"""NumPy kernels: the ``softmax_moments`` pass as one ``exp`` and one matrix product per block.

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

The other passes are the array-API ones. This implementation is chosen automatically for
NumPy arrays.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._arrays import spatial_size
from .._typing import Array, Namespace
from ..ops.grids import normalized_linspace
from .array_api import ArrayAPIKernels
from .contract import SoftArgmaxResiduals

BLOCK_BYTES = 1 << 20  # about one core's L2 cache on current x86 servers


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
    """``result = exp(flat) @ matrix`` for the cache-sized blocks this thread takes."""
    buffer = _block_buffer(min(block, flat.shape[0]), flat.shape[1], flat.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # per thread: overflow is detected afterwards
        while (index := blocks.take()) is not None:
            start, stop = index * block, min((index + 1) * block, flat.shape[0])
            exp_block = buffer[: stop - start]
            np.exp(flat[start:stop], out=exp_block)
            np.matmul(exp_block, matrix, out=result[start:stop])


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


class NumPyKernels(ArrayAPIKernels):
    """The array-API passes with a blocked, multi-threaded ``softmax_moments`` for NumPy arrays.

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
    description = "NumPy: blocked unshifted exp and one matrix product per block, on up to 4 cores"
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
