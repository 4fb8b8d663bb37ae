"""The ``"jax-pallas"`` kernels: the passes of the kernel contract as Pallas (Triton) GPU kernels.

Two Pallas kernels replace the full-size passes of :mod:`dsnt_core.kernels.array_api`:

* **statistics** (``softmax_statistics`` and ``softmax_moments``): grid ``(N,)``, one program
  per heatmap. The heatmap is seen as ``(R, W)`` (``R = D * H`` rows along x) and read once,
  tile by tile, with a running maximum and sums rescaled whenever it grows (Milakov &
  Gimelshein, 2018): the total ``sum e``, ``sum e * (u - max)`` for the entropy, the column
  sums (the x marginal, kept in registers) and the moments ``sum e * X_k``. Each tile's row
  sums (the y and z marginals once regrouped) are written with the maximum they are relative
  to; an epilogue of ``R`` numbers per heatmap rescales them by ``exp(max_t - max) / sum e``.
  The Jensen-Shannon sums ``sum M log M`` and ``sum P log M`` need ``lse`` first: a heatmap
  that fits one tile gets them from the tile still in registers, a larger one reads its
  logits a second time.
* **gradient map**: grid ``(N, tiles)``, one program per tile: one read of the logits, one
  write of ``P * (a_x[x] + a_y[y] + a_z[z] + e) / T``.

Tiles hold ``block`` elements (4096 by default) as ``(rows, next_pow2(W))``; a single row
wider than a block (1-D heatmaps) is tiled along x instead, its marginal written tile by tile
and rescaled in the epilogue. Heatmaps with several rows wider than a block are left to the
inherited array-API passes. Statistics are in float32 for 16-bit logits and in float64 for
float64 logits; NaN or ``+inf`` poisons only its own heatmap, and a heatmap of ``-inf`` is
uniform with ``lse = 0`` (as in :mod:`dsnt_core.kernels.contract`).

The adapter's rules never differentiate a pass for first derivatives (reverse or forward
mode), so those run on the kernels alone. Second derivatives do differentiate the passes:
each pass is a ``jax.custom_jvp`` whose tangents come from the array-API passes.

On a GPU the kernels lower through Pallas' Triton backend (``plgpu.CompilerParams``, whatever
``jax_pallas_use_mosaic_gpu`` says). Anywhere else they run in Pallas' interpreter once the
interpret switch is on (`set_interpret`, or ``DSNT_PALLAS_INTERPRET=1`` in the environment):
slow, for tests on machines without a GPU.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from dsnt_core.kernels import ArrayAPIKernels, Divergence, DivergenceKind, SoftArgmaxResiduals, SoftmaxStatistics
from dsnt_core.kernels.array_api import LOG_P_FLOOR

_PALLAS_MISSING: str | None = None
"""Why Pallas' Triton backend cannot be used with this JAX, or ``None``."""
try:
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
except ImportError as _error:  # a JAX without Pallas' Triton backend
    pl = plgpu = None  # type: ignore[assignment]
    _PALLAS_MISSING = f"jax.experimental.pallas.triton cannot be imported: {_error}"
else:
    _missing = [name for name in ("CompilerParams", "load", "store") if not hasattr(plgpu, name)]
    if _missing:
        _PALLAS_MISSING = f"jax {jax.__version__}: jax.experimental.pallas.triton has no {', '.join(_missing)}"

BLOCK = 4096
"""Elements per tile (a power of two): 16 KiB of float32, 32 registers a thread with 8 warps."""

TRITON_CALL_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi", "triton_kernel_call")
"""Custom-call targets of Pallas' Triton lowering (jaxlib <= 0.10.2, and later versions)."""

_SCALARS = 16
"""Slots for the per-heatmap numbers of the statistics kernel, in this order (then unused ones):"""
_LSE, _TOTAL, _PEAK, _NEG_ENTROPY, _M_LOG_M, _P_LOG_M, _MU_X = range(7)
"""``lse``, ``sum exp(u - peak)``, the peak, ``sum P log P``, the JS sums, and ``mu`` (3 slots)."""

_interpret = os.environ.get("DSNT_PALLAS_INTERPRET", "0") == "1"


def set_interpret(on: bool) -> bool:
    """Run the kernels in Pallas' interpreter (any device, slow) or compiled for the GPU.

    With the interpreter on, `PallasKernels.applies_to` takes every JAX array. Set it before
    tracing: functions already jitted keep the kernels they were traced with. The starting
    value is ``DSNT_PALLAS_INTERPRET=1`` in the environment (off otherwise).

    Parameters
    ----------
    on : bool
        Whether to interpret.

    Returns
    -------
    bool
        The previous setting.

    Examples
    --------
    >>> from dsnt_jax import pallas_kernels
    >>> previous = pallas_kernels.set_interpret(True)
    >>> pallas_kernels.interpreting()
    True
    >>> _ = pallas_kernels.set_interpret(previous)
    """
    global _interpret
    previous, _interpret = _interpret, bool(on)
    return previous


def interpreting() -> bool:
    """Whether the interpret switch is on (see `set_interpret`).

    Returns
    -------
    bool
        The switch.

    Examples
    --------
    >>> import os
    >>> from dsnt_jax import pallas_kernels
    >>> pallas_kernels.interpreting() == (os.environ.get("DSNT_PALLAS_INTERPRET") == "1")
    True
    """
    return _interpret


def _gpu_backend() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def _on_gpu(logits: Any) -> bool:
    """Whether a JAX array lives on a GPU; a tracer has no device: the default backend decides."""
    try:
        devices = logits.devices()
    except Exception:  # tracers (jit, vmap, grad): concretization errors of several kinds
        return jax.default_backend() == "gpu"
    return bool(devices) and all(device.platform == "gpu" for device in devices)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# ------------------------------------------------------------------------------ the tiling


@dataclass(frozen=True)
class _Tiling:
    """How the heatmaps are cut: (N, R, W) with R = D * H rows, tiles of (br, bw) elements."""

    n: int
    d: int
    h: int
    w: int
    br: int
    bw: int
    wide: bool
    """Tiles run along x (a single row wider than a block) rather than down the rows."""

    @property
    def r(self) -> int:
        return self.d * self.h

    @property
    def size(self) -> int:
        return self.r * self.w

    @property
    def tiles(self) -> int:
        return -(-self.w // self.bw) if self.wide else -(-self.r // self.br)

    @property
    def num_warps(self) -> int:
        return int(min(8, max(1, self.br * self.bw // 512)))


def _tiling(shape: tuple[int, ...], ndim: int, block: int) -> _Tiling | None:
    """The tiling of logits of ``shape``, or ``None`` where these kernels do not apply."""
    if not all(type(size) is int for size in shape):  # symbolic sizes (jax.export): grids must be static
        return None
    spatial = shape[len(shape) - ndim :]
    n = math.prod(shape[: len(shape) - ndim])
    d, h, w = (1,) * (3 - ndim) + tuple(int(s) for s in spatial)
    if n == 0 or d * h * w == 0:
        return None
    bw = _next_pow2(w)
    if bw <= block:
        return _Tiling(n, d, h, w, br=min(_next_pow2(d * h), block // bw), bw=bw, wide=False)
    if d * h == 1:
        return _Tiling(n, d, h, w, br=1, bw=block, wide=True)
    return None


def _tile(tiling: _Tiling, i: Any) -> tuple[Any, Any, Any, Any]:
    """Row and column indices of tile ``i`` and which of them lie inside the heatmap."""
    if tiling.wide:
        rows = jnp.arange(1, dtype=jnp.int32)
        cols = i * tiling.bw + jnp.arange(tiling.bw, dtype=jnp.int32)
    else:
        rows = i * tiling.br + jnp.arange(tiling.br, dtype=jnp.int32)
        cols = jnp.arange(tiling.bw, dtype=jnp.int32)
    return rows, cols, rows < tiling.r, cols < tiling.w


def _row_y(rows: Any, tiling: _Tiling) -> Any:
    """The y index of each row (rows run over z, then y)."""
    return lax.rem(rows, jnp.int32(tiling.h))


def _row_z(rows: Any, tiling: _Tiling) -> Any:
    """The z index of each row."""
    return lax.div(rows, jnp.int32(tiling.h))


def _load_tile(ref: Any, rows: Any, cols: Any, row_ok: Any, col_ok: Any, dtype: Any, temperature: float) -> Any:
    """``logits / T`` of one tile in the compute dtype, ``-inf`` outside the heatmap."""
    valid = row_ok[:, None] & col_ok[None, :]
    u = plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=valid, other=-jnp.inf).astype(dtype)
    return u / temperature if temperature != 1.0 else u


def _typed(value: float, dtype: Any) -> Any:
    """A 0-d constant of ``dtype``.

    Inside the kernels every ``where`` takes arrays, never Python numbers: the Triton
    lowering of ``select_n`` gives a weakly typed literal the type of the condition (``i1``),
    and the Triton module then fails to verify.
    """
    return jnp.full((), value, dtype)


def _floor(x: Any, low: float) -> Any:
    """``max(x, low)`` keeping NaN (Triton's ``max`` would drop it)."""
    return jnp.where(x < low, _typed(low, x.dtype), x)


def _store_first(ref: Any, values: Any, count: int) -> None:
    """Store the first ``count`` entries of a power-of-two vector into a 1-D ref."""
    index = jnp.arange(values.shape[0], dtype=jnp.int32)
    plgpu.store(ref.at[index], values, mask=index < count)


# ------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class _StatisticsConfig:
    tiling: _Tiling
    temperature: float
    dtype: str
    """The compute dtype."""
    entropy: bool
    mixture: bool
    margins: bool
    """Write the marginals (``softmax_statistics``); ``softmax_moments`` needs none."""
    moments: bool
    interpret: bool


def _statistics_kernel(*refs: Any, c: _StatisticsConfig) -> None:
    """One heatmap: the online sweep, then (with a mixture) the Jensen-Shannon sums."""
    t, dtype = c.tiling, jnp.dtype(c.dtype)
    refs_left: list[Any] = list(refs)
    logits_ref = refs_left.pop(0)
    absent: list[Any] = [None] * 4
    fx_ref, fy_ref, fz_ref = [refs_left.pop(0) for _ in range(3)] if c.mixture else absent[:3]
    scalars_ref = refs_left.pop(0)
    xraw_ref, xmax_ref, rraw_ref, rmax_ref = refs_left if c.margins else absent
    lowest, tiny = float(jnp.finfo(dtype).min), float(jnp.finfo(dtype).smallest_normal)

    def zero() -> Any:
        return jnp.zeros((), dtype)

    def sweep_tile(i: Any, carry: tuple) -> tuple[tuple, tuple]:
        m, s, a, x_acc, sx, sy, sz, bad = carry
        rows, cols, row_ok, col_ok = _tile(t, i)
        u = _load_tile(logits_ref, rows, cols, row_ok, col_ok, dtype, c.temperature)
        poison = jnp.isnan(u) | (u == jnp.inf)
        bad = jnp.maximum(bad, jnp.max(jnp.where(poison, _typed(1, dtype), zero())))
        u = jnp.where(poison, _typed(-jnp.inf, dtype), u)  # the heatmap ends NaN; keep the sweep finite meanwhile
        m_new = jnp.maximum(m, jnp.max(u))
        reference = jnp.where(m_new == -jnp.inf, zero(), m_new)
        alpha = jnp.where(m == -jnp.inf, jnp.ones((), dtype), jnp.exp(m - m_new))
        shifted = u - reference
        e = jnp.exp(shifted)
        col_sums, row_sums = jnp.sum(e, axis=0), jnp.sum(e, axis=1)
        if c.entropy:  # sum e * (u - reference), moved to the new reference
            moved = jnp.where(s > 0, (m - m_new) * s, zero())
            a = alpha * (a + moved) + jnp.sum(e * jnp.maximum(shifted, lowest))
        if c.moments:
            x_grid = (2 * cols + 1 - t.w).astype(dtype) / t.w
            y_grid = (2 * _row_y(rows, t) + 1 - t.h).astype(dtype) / t.h
            z_grid = (2 * _row_z(rows, t) + 1 - t.d).astype(dtype) / t.d
            sx = alpha * sx + jnp.sum(col_sums * x_grid)
            sy = alpha * sy + jnp.sum(row_sums * y_grid)
            sz = alpha * sz + jnp.sum(row_sums * z_grid)
        s = alpha * s + jnp.sum(row_sums)
        if c.margins:  # this tile's sums, with the maximum they are relative to
            if t.wide:  # the x marginal itself
                max_ref = xmax_ref
                plgpu.store(xraw_ref.at[cols], col_sums, mask=col_ok)
            else:  # the row sums; the x marginal stays in registers
                max_ref = rmax_ref
                x_acc = alpha * x_acc + col_sums
                plgpu.store(rraw_ref.at[rows], row_sums, mask=row_ok)
            plgpu.store(max_ref.at[jnp.full((1,), i, jnp.int32)], jnp.full((1,), m_new, dtype))
        return (m_new, s, a, x_acc, sx, sy, sz, bad), (u, rows, cols, row_ok, col_ok)

    def sweep(i: Any, carry: tuple) -> tuple:
        return sweep_tile(i, carry)[0]

    # The running maximum, sum e, sum e (u - max), the column sums, the moments, the poison flag.
    carry = (jnp.full((), -jnp.inf, dtype), zero(), zero(), jnp.zeros((t.bw,), dtype), zero(), zero(), zero(), zero())
    if t.tiles > 1:
        carry, only_tile = lax.fori_loop(0, t.tiles, sweep, carry), None
    else:  # the whole heatmap in one tile, kept for the JS sums
        carry, only_tile = sweep_tile(0, carry)
    m, s, a, x_acc, sx, sy, sz, bad = carry

    has_mass, poisoned = s > 0, bad > 0
    one = _typed(1, dtype)
    inv_s = jnp.where(has_mass, 1 / jnp.where(has_mass, s, one), zero())
    log_s = jnp.log(jnp.where(has_mass, s, one))
    lse = jnp.where(has_mass, jnp.where(m == -jnp.inf, zero(), m) + log_s, zero())
    values = {_LSE: lse, _TOTAL: s, _PEAK: m}
    if c.entropy:
        values[_NEG_ENTROPY] = jnp.where(has_mass, a * inv_s - log_s, _typed(-math.log(t.size), dtype))
    if c.moments:
        for k, total in enumerate((sx, sy, sz)):
            values[_MU_X + k] = total * inv_s  # 0 for a uniform heatmap, as for a symmetric grid
    if c.mixture:

        def js_sums(u: Any, rows: Any, cols: Any, row_ok: Any, col_ok: Any) -> tuple[Any, Any]:
            valid = row_ok[:, None] & col_ok[None, :]
            p = jnp.where(has_mass, jnp.exp(u - lse), _typed(1 / t.size, dtype))
            p = jnp.where(valid, p, zero())
            fx = plgpu.load(fx_ref.at[cols], mask=col_ok, other=0.0).astype(dtype)
            fy = plgpu.load(fy_ref.at[_row_y(rows, t)], mask=row_ok, other=0.0).astype(dtype)
            fz = plgpu.load(fz_ref.at[_row_z(rows, t)], mask=row_ok, other=0.0).astype(dtype)
            mix = 0.5 * (p + fx[None, :] * (fy * fz)[:, None])
            log_mix = jnp.log(_floor(mix, tiny))
            return jnp.sum(mix * log_mix), jnp.sum(p * log_mix)

        def again(i: Any, sums: tuple) -> tuple:
            rows, cols, row_ok, col_ok = _tile(t, i)
            u = _load_tile(logits_ref, rows, cols, row_ok, col_ok, dtype, c.temperature)
            mm, pm = js_sums(u, rows, cols, row_ok, col_ok)
            return sums[0] + mm, sums[1] + pm

        if only_tile is None:  # a second read of the logits: the sums need lse
            m_log_m, p_log_m = lax.fori_loop(0, t.tiles, again, (zero(), zero()))
        else:
            m_log_m, p_log_m = js_sums(*only_tile)
        values[_M_LOG_M], values[_P_LOG_M] = m_log_m, p_log_m

    slot = jnp.arange(_SCALARS, dtype=jnp.int32)
    scalars = jnp.zeros((_SCALARS,), dtype)
    for k, value in values.items():
        scalars = jnp.where(slot == k, jnp.where(poisoned, _typed(jnp.nan, dtype), value), scalars)
    scalars_ref[...] = scalars
    if c.margins:  # the sums kept in registers, relative to the final maximum
        last = jnp.full((1,), m, dtype)
        if t.wide:
            rraw_ref[...] = jnp.full((1,), s, dtype)
            rmax_ref[...] = last
        else:
            _store_first(xraw_ref, x_acc, t.w)
            xmax_ref[...] = last


def _heatmap_spec(t: _Tiling) -> Any:
    return pl.BlockSpec((None, t.r, t.w), lambda n, *_: (n, 0, 0))


def _row_spec(length: int) -> Any:
    return pl.BlockSpec((None, length), lambda n, *_: (n, 0))


def _per_axis(vectors: Sequence[Any], t: _Tiling, batch: tuple, dtype: Any, fill: float) -> list[Any]:
    """Per-axis vectors (x, y[, z]) as (N, n_k) arrays; missing axes get ``fill``."""
    lengths = (t.w, t.h, t.d)
    result = []
    for k, length in enumerate(lengths):
        if k < len(vectors):
            vector = jnp.broadcast_to(jnp.asarray(vectors[k]), (*batch, length))
            result.append(jnp.reshape(vector, (t.n, length)).astype(dtype))
        else:
            result.append(jnp.full((t.n, 1), fill, dtype))
    return result


@functools.partial(jax.jit, static_argnames=("c",))
def _statistics_call(logits: Any, factors: tuple, *, c: _StatisticsConfig) -> tuple:
    """The statistics kernel on (N, R, W) logits: (scalars, x marginal, y marginal, z marginal)."""
    t, dtype = c.tiling, jnp.dtype(c.dtype)
    in_specs = [_heatmap_spec(t)] + [_row_spec(length) for length in (t.w, t.h, t.d)] * c.mixture
    out_specs, out_shape = [_row_spec(_SCALARS)], [jax.ShapeDtypeStruct((t.n, _SCALARS), dtype)]
    if c.margins:
        x_tiles, r_tiles = (t.tiles, 1) if t.wide else (1, t.tiles)
        for length in (t.w, x_tiles, t.r, r_tiles):
            out_specs.append(_row_spec(length))
            out_shape.append(jax.ShapeDtypeStruct((t.n, length), dtype))
    outputs = pl.pallas_call(
        functools.partial(_statistics_kernel, c=c),
        grid=(t.n,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=t.num_warps),
        interpret=c.interpret,
        name="dsnt_softmax_statistics",
    )(logits, *factors)
    scalars = outputs[0]
    if not c.margins:
        return scalars, None, None, None
    x_raw, x_max, r_raw, r_max = outputs[1:]
    total, peak = scalars[:, _TOTAL : _TOTAL + 1], scalars[:, _PEAK : _PEAK + 1]
    has_mass, poisoned = total > 0, jnp.isnan(scalars[:, _LSE : _LSE + 1])
    inv_total = 1 / jnp.where(has_mass, total, 1)

    def rescale(raw: Any, maxima: Any, per_tile: int) -> Any:
        """Sums relative to their tile's maximum as probabilities: ``raw * exp(max - peak) / total``."""
        length = raw.shape[1]
        spread = jnp.repeat(maxima, per_tile, axis=1, total_repeat_length=maxima.shape[1] * per_tile)
        return raw * jnp.exp(spread[:, :length] - peak) * inv_total

    def margin(values: Any, length: int) -> Any:
        """Uniform for a heatmap of -inf, NaN for a poisoned one."""
        return jnp.where(poisoned, jnp.nan, jnp.where(has_mass, values, 1.0 / length)).astype(dtype)

    rows = jnp.reshape(rescale(r_raw, r_max, t.r if t.wide else t.br), (t.n, t.d, t.h))
    x_margin = margin(rescale(x_raw, x_max, t.bw), t.w)
    return scalars, x_margin, margin(jnp.sum(rows, axis=1), t.h), margin(jnp.sum(rows, axis=2), t.d)


# ---------------------------------------------------------------------------- gradient map


@dataclass(frozen=True)
class _GradientConfig:
    tiling: _Tiling
    temperature: float
    dtype: str
    kind: DivergenceKind | None
    interpret: bool


def _gradient_kernel(*refs: Any, c: _GradientConfig) -> None:
    """One tile: ``P * (a_x[x] + a_y[y] + a_z[z] + e) / T``, one read and one write."""
    t, dtype = c.tiling, jnp.dtype(c.dtype)
    logits_ref, lse_ref, coef_ref, ax_ref, ay_ref, az_ref, *rest = refs
    fx_ref, fy_ref, fz_ref, out_ref = rest if c.kind is DivergenceKind.JS else (None, None, None, rest[0])
    rows, cols, row_ok, col_ok = _tile(t, pl.program_id(1))
    u = _load_tile(logits_ref, rows, cols, row_ok, col_ok, dtype, c.temperature)
    lse = lse_ref[...]
    y_index, z_index = _row_y(rows, t), _row_z(rows, t)

    def along_x(ref: Any) -> Any:  # (1, bw)
        return plgpu.load(ref.at[cols], mask=col_ok, other=0.0)[None, :]

    def along_rows(ref_y: Any, ref_z: Any, combine: Any) -> Any:  # (br, 1)
        y = plgpu.load(ref_y.at[y_index], mask=row_ok, other=0.0)
        return combine(y, plgpu.load(ref_z.at[z_index], mask=row_ok, other=0.0))[:, None]

    inner = along_x(ax_ref) + along_rows(ay_ref, az_ref, jnp.add)
    if c.kind is None:
        p = jnp.exp(u - lse)
    else:  # log P floored as the array-API passes do, so that 0 * log P stays 0 at -inf logits
        log_p = _floor(u - lse, LOG_P_FLOOR)
        p = jnp.exp(log_p)
        coef = coef_ref[...]
        if c.kind is DivergenceKind.KL:
            inner = inner + coef * log_p
        else:
            twice_m = p + along_x(fx_ref) * along_rows(fy_ref, fz_ref, jnp.multiply)
            log_twice_m = jnp.log(_floor(twice_m, float(jnp.finfo(dtype).smallest_normal)))
            inner = inner + (0.5 * coef) * (log_p - log_twice_m)
    grad = p * inner
    if c.temperature != 1.0:
        grad = grad / c.temperature
    poisoned = jnp.isnan(lse) | (lse == jnp.inf)  # NaN throughout, as the array-API passes give
    grad = jnp.where(poisoned, _typed(jnp.nan, dtype), grad)
    valid = row_ok[:, None] & col_ok[None, :]
    plgpu.store(out_ref.at[rows[:, None], cols[None, :]], grad.astype(out_ref.dtype), mask=valid)


@functools.partial(jax.jit, static_argnames=("c",))
def _gradient_call(logits: Any, lse: Any, coef: Any, vectors: tuple, *, c: _GradientConfig) -> Any:
    t, dtype = c.tiling, jnp.dtype(c.dtype)
    scalar_spec = pl.BlockSpec((None,), lambda n, i: (n,))
    lengths = (t.w, t.h, t.d) * (2 if c.kind is DivergenceKind.JS else 1)
    return pl.pallas_call(
        functools.partial(_gradient_kernel, c=c),
        grid=(t.n, t.tiles),
        in_specs=[_heatmap_spec(t), scalar_spec, scalar_spec, *(_row_spec(length) for length in lengths)],
        out_specs=_heatmap_spec(t),
        out_shape=jax.ShapeDtypeStruct((t.n, t.r, t.w), dtype),
        compiler_params=plgpu.CompilerParams(num_warps=t.num_warps),
        interpret=c.interpret,
        name="dsnt_gradient_map",
    )(logits, lse, coef, *vectors)


# ------------------------------------------------------------------------------ the class


_REFERENCE = ArrayAPIKernels()
"""The array-API passes: the derivatives of the kernels' results (see `_with_reference_derivatives`)."""


def _with_reference_derivatives(run: Any, reference: Any, *arrays: Any) -> Any:
    """``run(*arrays)``, differentiated (forward or reverse) as ``reference(*arrays)`` is.

    The adapter's rules never differentiate a pass at first order; second-order derivatives
    (a Hessian-vector product, the gradient of a gradient's norm) do, and Pallas kernels
    with loops and masked loads have no JVP. ``reference`` computes the same results with
    the array-API passes, so the results come from the kernels and their tangents from the
    array-API code.
    """

    @jax.custom_jvp
    def kernel(*arrays: Any) -> Any:
        return run(*arrays)

    @kernel.defjvp
    def kernel_jvp(primals: tuple, tangents: tuple) -> tuple:
        return run(*primals), jax.jvp(reference, primals, tangents)[1]

    return kernel(*arrays)


def _compute_dtype(dtype: Any) -> str:
    dtype = jnp.dtype(dtype)
    return "float32" if dtype.itemsize < 4 else dtype.name


class PallasKernels(ArrayAPIKernels):
    """Pallas (Triton) GPU passes for JAX arrays: one read of the logits forward, one read and write backward.

    Chosen automatically for JAX arrays on a GPU (tracers under ``jit``, ``grad`` and ``vmap``
    included). Inside the JAX adapter's ``custom_jvp`` they run under ``jit``, ``vmap``,
    ``grad`` and ``jvp`` with no other code; second derivatives take their tangents from the
    array-API passes. Shapes the kernels do not take (symbolic sizes, several rows wider than
    a tile) go to the inherited array-API passes. With the interpret switch on
    (`set_interpret`) they run on any device in Pallas' interpreter.

    Parameters
    ----------
    block : int
        Elements per tile, a power of two; heatmaps larger than one tile are swept tile by tile.
    interpret : bool, optional
        Interpret (``True``) or compile for the GPU (``False``) whatever the module's switch
        says; ``None`` (the default) follows the switch.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from dsnt_jax.pallas_kernels import PallasKernels
    >>> kernels = PallasKernels(interpret=True)
    >>> stats = kernels.softmax_statistics(jnp, jnp.zeros((1, 2, 4)), 2, 1.0, entropy=True)
    >>> round(float(stats.lse[0]), 6), stats.margins[0].tolist(), round(float(stats.neg_entropy[0]), 6)
    (2.079442, [[0.25, 0.25, 0.25, 0.25]], -2.079442)
    """

    name = "jax-pallas"
    description = "JAX on GPU: Pallas (Triton) kernels, one read of the logits forward, one read and write backward"
    libraries = ("jax",)
    automatic = True

    def __init__(self, block: int = BLOCK, *, interpret: bool | None = None) -> None:
        if block < 1 or block & (block - 1):
            raise ValueError(f"block must be a power of two, got {block}")
        self.block = block
        self.interpret = interpret

    def __repr__(self) -> str:
        return f"PallasKernels(block={self.block}, interpret={self.interpret})"

    def _interpreting(self) -> bool:
        return _interpret if self.interpret is None else self.interpret

    def unavailable_reason(self) -> str | None:
        """Why the kernels cannot run here: no Pallas, or no GPU backend in jax and the interpreter off.

        Returns
        -------
        str or None
            The reason, or ``None`` when they can run.
        """
        if _PALLAS_MISSING is not None:
            return _PALLAS_MISSING
        if self._interpreting() or _gpu_backend():
            return None
        return (
            "no GPU backend in jax (install jax[cuda13] on a machine with an NVIDIA GPU); "
            "set DSNT_PALLAS_INTERPRET=1 to run the kernels in Pallas' interpreter instead"
        )

    def applies_to(self, logits: Any) -> bool:
        """Floating JAX arrays and tracers on a GPU; any floating JAX array with the interpreter on.

        Parameters
        ----------
        logits : array
            The logits of a call.

        Returns
        -------
        bool
            Whether these kernels run that call.
        """
        if _PALLAS_MISSING is not None or not isinstance(logits, jax.Array):
            return False
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            return False
        return self._interpreting() or _on_gpu(logits)

    def _tiling(self, logits: Any, ndim: int) -> _Tiling | None:
        return _tiling(tuple(logits.shape), ndim, self.block)

    def softmax_moments(self, xp: Any, logits: Any, ndim: int, temperature: float) -> SoftArgmaxResiduals:
        """Log-sum-exp and expected coordinates from one read of each heatmap.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits`` (JAX).
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
        tiling = self._tiling(logits, ndim)
        if tiling is None:
            return super().softmax_moments(xp, logits, ndim, temperature)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        config = _StatisticsConfig(
            tiling,
            float(temperature),
            _compute_dtype(logits.dtype),
            entropy=False,
            mixture=False,
            margins=False,
            moments=True,
            interpret=self._interpreting(),
        )

        def run(logits: Any) -> SoftArgmaxResiduals:
            scalars, *_ = _statistics_call(jnp.reshape(logits, (tiling.n, tiling.r, tiling.w)), (), c=config)
            lse = jnp.reshape(scalars[:, _LSE], batch)
            return SoftArgmaxResiduals(lse, jnp.reshape(scalars[:, _MU_X : _MU_X + ndim], (*batch, ndim)))

        def reference(logits: Any) -> SoftArgmaxResiduals:
            return _REFERENCE.softmax_moments(jnp, logits, ndim, temperature)

        return _with_reference_derivatives(run, reference, logits)

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
        """Log-sum-exp, marginals, entropy and the JS sums from one read of each heatmap.

        A heatmap larger than one tile is read twice for the JS sums (they need ``lse``).

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits`` (JAX).
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
        tiling = self._tiling(logits, ndim)
        if tiling is None:
            return super().softmax_statistics(xp, logits, ndim, temperature, entropy=entropy, mixture=mixture)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        dtype = _compute_dtype(logits.dtype)
        config = _StatisticsConfig(
            tiling,
            float(temperature),
            dtype,
            entropy=bool(entropy),
            mixture=mixture is not None,
            margins=True,
            moments=False,
            interpret=self._interpreting(),
        )

        def run(logits: Any, *mixture: Any) -> SoftmaxStatistics:
            factors = tuple(_per_axis(mixture, tiling, batch, dtype, 1.0)) if config.mixture else ()
            scalars, *margins = _statistics_call(jnp.reshape(logits, (tiling.n, tiling.r, tiling.w)), factors, c=config)

            def field(k: int) -> Any:
                return jnp.reshape(scalars[:, k], batch)

            return SoftmaxStatistics(
                lse=field(_LSE),
                margins=tuple(jnp.reshape(m, (*batch, m.shape[1])) for m in margins[:ndim]),
                neg_entropy=field(_NEG_ENTROPY) if entropy else None,
                m_log_m=field(_M_LOG_M) if config.mixture else None,
                p_log_m=field(_P_LOG_M) if config.mixture else None,
            )

        def reference(logits: Any, *mixture: Any) -> SoftmaxStatistics:
            factors = list(mixture) if config.mixture else None
            return _REFERENCE.softmax_statistics(jnp, logits, ndim, temperature, entropy=entropy, mixture=factors)

        return _with_reference_derivatives(run, reference, logits, *(mixture or ()))

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
        """``P * (outer_sum(per_axis) + e) / T``: one read of the logits, one write of the map.

        Parameters
        ----------
        xp : namespace
            The array namespace of ``logits`` (JAX).
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
        tiling = self._tiling(logits, ndim)
        if tiling is None:
            return super().gradient_map(xp, logits, lse, per_axis, divergence, ndim, temperature)
        batch = tuple(logits.shape[: logits.ndim - ndim])
        dtype = _compute_dtype(logits.dtype)
        kind = None if divergence is None else divergence.kind
        config = _GradientConfig(tiling, float(temperature), dtype, kind, self._interpreting())
        arrays = (logits, lse, *per_axis)
        if divergence is not None:
            arrays += (divergence.coef, *divergence.factors)

        def split(arrays: tuple) -> tuple[Any, Any, list, Divergence | None]:
            logits, lse, *rest = arrays
            if kind is None:
                return logits, lse, rest, None
            coef, *factors = rest[ndim:]
            return logits, lse, rest[:ndim], Divergence(kind, coef, tuple(factors))

        def run(*arrays: Any) -> Any:
            logits, lse, per_axis, divergence = split(arrays)
            vectors = _per_axis(per_axis, tiling, batch, dtype, 0.0)
            coef = jnp.zeros((tiling.n,), dtype)
            if divergence is not None:
                coef = jnp.reshape(jnp.broadcast_to(jnp.asarray(divergence.coef), batch), (tiling.n,)).astype(dtype)
                if kind is DivergenceKind.JS:
                    vectors += _per_axis(divergence.factors, tiling, batch, dtype, 1.0)
            lse_flat = jnp.reshape(jnp.broadcast_to(jnp.asarray(lse), batch), (tiling.n,)).astype(dtype)
            heatmaps = jnp.reshape(logits, (tiling.n, tiling.r, tiling.w))
            return jnp.reshape(_gradient_call(heatmaps, lse_flat, coef, tuple(vectors), c=config), logits.shape)

        def reference(*arrays: Any) -> Any:
            logits, lse, per_axis, divergence = split(arrays)
            return _REFERENCE.gradient_map(jnp, logits, lse, per_axis, divergence, ndim, temperature)

        return _with_reference_derivatives(run, reference, *arrays)


KERNELS = PallasKernels()
"""The instance to register: ``jax-pallas = "dsnt_jax.pallas_kernels:KERNELS"``."""

__all__ = ["PallasKernels", "interpreting", "set_interpret"]
