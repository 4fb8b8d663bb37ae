# mypy: ignore-errors
# (Triton kernels: their arguments are typed by Triton's specialisation, not by annotations.)
"""The ``@triton.jit`` kernels of the ``"torch-triton"`` kernel implementation.

Three kernels implement the full-size passes of the kernel contract
(:mod:`dsnt_core.kernels.contract`) with the semantics of the array-API passes
(:mod:`dsnt_core.kernels.array_api`); the host side, the custom operators and the choice of
block sizes are in :mod:`dsnt_torch.triton_kernels`.

Layout. The logits come as a contiguous (N, D, H, W) tensor in their own dtype (16-bit ones
are converted to float32 as they are loaded); a 2-D heatmap has D = 1, a 1-D one D = H = 1.
The R = D * H rows of W logits of a heatmap are read as tiles of [BLOCK_R rows, BLOCK_W
columns]. Coordinates: x along W, y along H, z along D. Everything is accumulated in the
dtype of the outputs (float32, or float64 for float64 logits).

* `softmax_statistics_kernel`: one program per heatmap, one sweep over its rows with an
  online maximum (Milakov & Gimelshein): the running sums (total, ``sum e * (u - m)`` for the
  entropy, and the column sums, kept in registers as one [BLOCK_W] vector since a whole row
  is one tile row) are rescaled by ``exp(m_old - m_new)`` whenever the maximum grows. Each
  row's sum goes to a scratch buffer with the maximum it is relative to; a short second loop
  over those D * H numbers (no logits) turns them into the y and z marginals. The JS mixture
  sums need ``P = exp(u - m) / total`` with the final ``m`` and total: when the heatmap is one
  tile (``SINGLE_TILE``), the tile kept in registers gives them with no second read; otherwise
  a second sweep reads the logits again (from L2 for heatmaps that stay there).
* `softmax_moments_kernel`: one program per heatmap, one sweep, no marginals: the online
  maximum and the rescaled sums ``sum e``, ``sum e * x``, ``sum e * y``, ``sum e * z``; the
  coordinates come from the tile's indices. Rows of any width (the columns are tiled too).
* `gradient_map_kernel`: one program per tile (a heatmap's block of rows and columns): one
  read of the logits, one write of ``P * (a_x + a_y + a_z + e(P, Q)) / T``.

NaN and ``+inf`` are not tested for: they turn the sums into NaN, and every result of the
heatmap derives from its sums (the maximum may drop a NaN, as ``max`` does on GPUs, but the
sums never do). A heatmap of ``-inf`` has a total of 0 and is uniform with ``lse = 0``.

Reductions go through `_sum` and `_max`: compiled, they are ``tl.sum`` and ``tl.max``;
under Triton's interpreter (``INTERPRETED``, a constexpr the host sets) they are
``tl.reduce`` with the combine functions that the interpreter evaluates with NumPy. The host
loads a second copy of this module with the interpreter switched on for CPU tensors, so that
the interpreter is chosen per call, even in a process that imported Triton without it.
"""

import triton
import triton.language as tl


@triton.jit
def _sum(x, axis, INTERPRETED: tl.constexpr):
    """``tl.sum``, or the reduction the interpreter evaluates with NumPy."""
    if INTERPRETED:
        result = tl.reduce(x, axis, tl.standard._sum_combine)
    else:
        result = tl.sum(x, axis)
    return result


@triton.jit
def _max(x, axis, INTERPRETED: tl.constexpr):
    """``tl.max``, or the reduction the interpreter evaluates with NumPy."""
    if INTERPRETED:
        result = tl.reduce(x, axis, tl.standard._elementwise_max)
    else:
        result = tl.max(x, axis)
    return result


@triton.jit
def _reciprocal_temperature(hi, mid, lo, dtype: tl.constexpr):
    """``1 / T`` in ``dtype`` from its three float32 parts (exact in float64: float arguments are float32)."""
    return (tl.full([], hi, dtype) + tl.full([], mid, dtype)) + tl.full([], lo, dtype)


@triton.jit
def _floor(x, lowest):
    """``max(x, lowest)`` that keeps NaN (``tl.maximum`` may drop it on GPUs)."""
    return tl.where(x < lowest, lowest, x)


@triton.jit
def _row_factors(fy_ptr, fz_ptr, rows, row_ok, H, NDIM: tl.constexpr):
    """``fy[y] * fz[z]`` of each row (z = row // H, y = row % H); 1 for the missing axes."""
    if NDIM == 1:
        result = tl.where(row_ok, 1.0, 0.0)
    elif NDIM == 2:
        result = tl.load(fy_ptr + rows, mask=row_ok, other=0.0)
    else:
        result = tl.load(fy_ptr + rows % H, mask=row_ok, other=0.0) * tl.load(
            fz_ptr + rows // H, mask=row_ok, other=0.0
        )
    return result


@triton.jit
def _mixture_sums(
    u,
    ok,
    rows,
    row_ok,
    fx,
    fy_ptr,
    fz_ptr,
    H,
    ref,
    inv_total,
    has_mass,
    uniform,
    tiny,
    NDIM: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """``sum M log M`` and ``sum P log M`` over one tile, ``M = (P + Q) / 2``, ``log`` floored at ``tiny``."""
    p = tl.where(has_mass, tl.exp(u - ref) * inv_total, uniform)
    p = tl.where(ok, p, 0.0)
    q = fx[None, :] * _row_factors(fy_ptr, fz_ptr, rows, row_ok, H, NDIM)[:, None]
    m = 0.5 * (p + q)
    log_m = tl.log(_floor(m, tiny))
    return _sum(m * log_m, None, INTERPRETED), _sum(p * log_m, None, INTERPRETED)


@triton.jit
def softmax_statistics_kernel(
    logits_ptr,
    lse_ptr,
    mx_ptr,
    my_ptr,
    mz_ptr,
    rows_ptr,
    neg_entropy_ptr,
    m_log_m_ptr,
    p_log_m_ptr,
    fx_ptr,
    fy_ptr,
    fz_ptr,
    inv_t_hi,
    inv_t_mid,
    inv_t_lo,
    D,
    H,
    W,
    NDIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    ENTROPY: tl.constexpr,
    MIXTURE: tl.constexpr,
    TINY: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Log-sum-exp, marginals and (optionally) ``sum P log P`` and the JS sums of one heatmap.

    ``rows_ptr`` is a (2, N, R) scratch buffer: each row's sum of ``exp(u - m_row)`` and its
    ``m_row``. The factors ``fx, fy, fz`` of ``Q`` are (N, W), (N, H), (N, D) (read with
    ``MIXTURE`` only; ``fy`` from ``NDIM >= 2``, ``fz`` for ``NDIM == 3``).
    """
    NEG_INF: tl.constexpr = float("-inf")
    acc = lse_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    num = tl.num_programs(0).to(tl.int64)
    R = D * H
    inv_t = _reciprocal_temperature(inv_t_hi, inv_t_mid, inv_t_lo, acc)
    base = logits_ptr + n * R * W
    cols = tl.arange(0, BLOCK_W)
    col_ok = cols < W
    rows0 = tl.arange(0, BLOCK_R)

    peak = tl.full([], NEG_INF, acc)  # running maximum
    total = tl.full([], 0.0, acc)  # sum exp(u - ref), ref = peak (0 while peak = -inf)
    shifted = tl.full([], 0.0, acc)  # sum exp(u - ref) * (u - ref)
    columns = tl.full([BLOCK_W], 0.0, acc)  # sum over rows of exp(u - ref)
    kept = tl.full([BLOCK_R, BLOCK_W], NEG_INF, acc)  # the tile, when it is the whole heatmap
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + rows0
        row_ok = rows < R
        ok = row_ok[:, None] & col_ok[None, :]
        u = tl.load(base + rows[:, None] * W + cols[None, :], mask=ok, other=NEG_INF).to(acc) * inv_t
        new_peak = tl.maximum(peak, _max(u, None, INTERPRETED))
        ref = tl.where(new_peak == NEG_INF, 0.0, new_peak)
        alpha = tl.exp(peak - ref)  # 0 while the old peak is -inf
        e = tl.exp(u - ref)
        row_totals = _sum(e, 1, INTERPRETED)
        if NDIM >= 2:
            tl.store(rows_ptr + n * R + rows, row_totals, mask=row_ok)
            tl.store(rows_ptr + (num + n) * R + rows, tl.full([BLOCK_R], 0.0, acc) + ref, mask=row_ok)
        columns = columns * alpha + _sum(e, 0, INTERPRETED)
        if ENTROPY:
            old_shift = tl.where(peak == NEG_INF, 0.0, peak - ref)
            terms = tl.where(u == NEG_INF, 0.0, e * (u - ref))
            shifted = alpha * (shifted + old_shift * total) + _sum(terms, None, INTERPRETED)
        total = total * alpha + _sum(row_totals, 0, INTERPRETED)
        peak = new_peak
        if SINGLE_TILE:
            kept = u

    ref = tl.where(peak == NEG_INF, 0.0, peak)
    has_mass = total != 0.0  # False only for a heatmap of -inf; NaN stays NaN below
    safe_total = tl.where(has_mass, total, 1.0)
    log_total = tl.log(safe_total)
    inv_total = tl.where(has_mass, 1.0 / safe_total, 0.0)
    size = tl.full([], 1.0, acc) * R * W
    tl.store(lse_ptr + n, ref + log_total)
    tl.store(
        mx_ptr + n * W + cols, tl.where(has_mass, columns * inv_total, 1.0 / (tl.full([], 1.0, acc) * W)), mask=col_ok
    )
    if ENTROPY:
        tl.store(neg_entropy_ptr + n, tl.where(has_mass, shifted * inv_total - log_total, -tl.log(size)))

    if NDIM >= 2:  # the y (and z) marginals from the row sums
        tl.debug_barrier()  # the row sums were stored by other threads of the program
        hs = tl.arange(0, BLOCK_H)
        h_ok = hs < H
        ds0 = tl.arange(0, BLOCK_D)
        y_sums = tl.full([BLOCK_H], 0.0, acc)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + ds0
            d_ok = ds < D
            grid_ok = d_ok[:, None] & h_ok[None, :]
            index = ds[:, None] * H + hs[None, :]
            sums = tl.load(rows_ptr + n * R + index, mask=grid_ok, other=0.0)
            row_refs = tl.load(rows_ptr + (num + n) * R + index, mask=grid_ok, other=0.0)
            mass = sums * tl.exp(row_refs - ref) * inv_total
            y_sums += _sum(mass, 0, INTERPRETED)
            if NDIM == 3:
                z = tl.where(has_mass, _sum(mass, 1, INTERPRETED), 1.0 / (tl.full([], 1.0, acc) * D))
                tl.store(mz_ptr + n * D + ds, z, mask=d_ok)
        y = tl.where(has_mass, y_sums, 1.0 / (tl.full([], 1.0, acc) * H))
        tl.store(my_ptr + n * H + hs, y, mask=h_ok)

    if MIXTURE:
        tiny = tl.full([], TINY, acc)
        uniform = 1.0 / size
        fx = tl.load(fx_ptr + n * W + cols, mask=col_ok, other=0.0)
        fy_row = fy_ptr + n * H
        fz_row = fz_ptr + n * D
        m_log_m = tl.full([], 0.0, acc)
        p_log_m = tl.full([], 0.0, acc)
        if SINGLE_TILE:  # the whole heatmap is still in registers: no second read
            row_ok = rows0 < R
            ok = row_ok[:, None] & col_ok[None, :]
            m_log_m, p_log_m = _mixture_sums(
                kept,
                ok,
                rows0,
                row_ok,
                fx,
                fy_row,
                fz_row,
                H,
                ref,
                inv_total,
                has_mass,
                uniform,
                tiny,
                NDIM,
                INTERPRETED,
            )
        else:  # a second sweep, now that the maximum and the total are known
            for r0 in range(0, R, BLOCK_R):
                rows = r0 + rows0
                row_ok = rows < R
                ok = row_ok[:, None] & col_ok[None, :]
                u = tl.load(base + rows[:, None] * W + cols[None, :], mask=ok, other=NEG_INF).to(acc) * inv_t
                mm, pm = _mixture_sums(
                    u,
                    ok,
                    rows,
                    row_ok,
                    fx,
                    fy_row,
                    fz_row,
                    H,
                    ref,
                    inv_total,
                    has_mass,
                    uniform,
                    tiny,
                    NDIM,
                    INTERPRETED,
                )
                m_log_m += mm
                p_log_m += pm
        tl.store(m_log_m_ptr + n, m_log_m)
        tl.store(p_log_m_ptr + n, p_log_m)


@triton.jit
def softmax_moments_kernel(
    logits_ptr,
    lse_ptr,
    mu_ptr,
    inv_t_hi,
    inv_t_mid,
    inv_t_lo,
    D,
    H,
    W,
    NDIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Log-sum-exp and expected pixel-centre coordinates (x, y[, z]) of one heatmap, in one sweep."""
    NEG_INF: tl.constexpr = float("-inf")
    acc = lse_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    R = D * H
    inv_t = _reciprocal_temperature(inv_t_hi, inv_t_mid, inv_t_lo, acc)
    base = logits_ptr + n * R * W
    width = tl.full([], 1.0, acc) * W
    height = tl.full([], 1.0, acc) * H
    depth = tl.full([], 1.0, acc) * D
    rows0 = tl.arange(0, BLOCK_R)
    cols0 = tl.arange(0, BLOCK_W)

    peak = tl.full([], NEG_INF, acc)
    total = tl.full([], 0.0, acc)
    sum_x = tl.full([], 0.0, acc)
    sum_y = tl.full([], 0.0, acc)
    sum_z = tl.full([], 0.0, acc)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + rows0
        row_ok = rows < R
        # pixel centres (2 i + 1 - n) / n of each row's y and z
        grid_y = ((2 * (rows % H) + 1 - H).to(acc)) / height
        grid_z = ((2 * (rows // H) + 1 - D).to(acc)) / depth
        for c0 in range(0, W, BLOCK_W):
            cols = c0 + cols0
            col_ok = cols < W
            ok = row_ok[:, None] & col_ok[None, :]
            u = tl.load(base + rows[:, None] * W + cols[None, :], mask=ok, other=NEG_INF).to(acc) * inv_t
            new_peak = tl.maximum(peak, _max(u, None, INTERPRETED))
            ref = tl.where(new_peak == NEG_INF, 0.0, new_peak)
            alpha = tl.exp(peak - ref)
            e = tl.exp(u - ref)
            grid_x = ((2 * cols + 1 - W).to(acc)) / width
            row_totals = _sum(e, 1, INTERPRETED)
            total = total * alpha + _sum(row_totals, 0, INTERPRETED)
            sum_x = sum_x * alpha + _sum(_sum(e, 0, INTERPRETED) * grid_x, 0, INTERPRETED)
            if NDIM >= 2:
                sum_y = sum_y * alpha + _sum(row_totals * grid_y, 0, INTERPRETED)
            if NDIM == 3:
                sum_z = sum_z * alpha + _sum(row_totals * grid_z, 0, INTERPRETED)
            peak = new_peak

    ref = tl.where(peak == NEG_INF, 0.0, peak)
    has_mass = total != 0.0
    safe_total = tl.where(has_mass, total, 1.0)
    inv_total = tl.where(has_mass, 1.0 / safe_total, 0.0)  # a heatmap of -inf is uniform: mean 0
    tl.store(lse_ptr + n, ref + tl.log(safe_total))
    tl.store(mu_ptr + n * NDIM, sum_x * inv_total)
    if NDIM >= 2:
        tl.store(mu_ptr + n * NDIM + 1, sum_y * inv_total)
    if NDIM == 3:
        tl.store(mu_ptr + n * NDIM + 2, sum_z * inv_total)


@triton.jit
def gradient_map_kernel(
    logits_ptr,
    grad_ptr,
    lse_ptr,
    ax_ptr,
    ay_ptr,
    az_ptr,
    coef_ptr,
    fx_ptr,
    fy_ptr,
    fz_ptr,
    inv_t_hi,
    inv_t_mid,
    inv_t_lo,
    D,
    H,
    W,
    row_blocks,
    col_blocks,
    NDIM: tl.constexpr,
    KIND: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    LOG_P_FLOOR: tl.constexpr,
    TINY: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """``P * (a_x[x] + a_y[y] + a_z[z] + e) / T`` on one tile, ``P = exp(u - lse)``.

    ``e`` is 0 (``KIND`` 0), ``coef * log P`` (``KIND`` 1, KL) or
    ``coef * (log P - log(max(P + Q, tiny))) / 2`` (``KIND`` 2, JS), ``log P`` floored at
    ``LOG_P_FLOOR``. Per-axis vectors (N, n_k), per-heatmap numbers (N,).
    """
    acc = grad_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    tiles = row_blocks * col_blocks
    n = pid // tiles
    tile = pid % tiles
    R = D * H
    rows = (tile // col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tile % col_blocks) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < R
    col_ok = cols < W
    ok = row_ok[:, None] & col_ok[None, :]
    offsets = n * R * W + rows[:, None] * W + cols[None, :]
    inv_t = _reciprocal_temperature(inv_t_hi, inv_t_mid, inv_t_lo, acc)

    u = tl.load(logits_ptr + offsets, mask=ok, other=0.0).to(acc) * inv_t
    lse = tl.load(lse_ptr + n)
    row_terms = tl.full([BLOCK_R], 0.0, acc)
    if NDIM == 2:
        row_terms = tl.load(ay_ptr + n * H + rows, mask=row_ok, other=0.0)
    if NDIM == 3:
        row_terms = tl.load(ay_ptr + n * H + rows % H, mask=row_ok, other=0.0) + tl.load(
            az_ptr + n * D + rows // H, mask=row_ok, other=0.0
        )
    inner = tl.load(ax_ptr + n * W + cols, mask=col_ok, other=0.0)[None, :] + row_terms[:, None]
    if KIND == 0:
        p = tl.exp(u - lse)
    else:
        log_p = _floor(u - lse, LOG_P_FLOOR)
        p = tl.exp(log_p)
        coef = tl.load(coef_ptr + n)
        if KIND == 1:
            inner += coef * log_p
        else:
            q = (
                tl.load(fx_ptr + n * W + cols, mask=col_ok, other=0.0)[None, :]
                * _row_factors(fy_ptr + n * H, fz_ptr + n * D, rows, row_ok, H, NDIM)[:, None]
            )
            log_twice_m = tl.log(_floor(p + q, tl.full([], TINY, acc)))
            inner += (0.5 * coef) * (log_p - log_twice_m)
    tl.store(grad_ptr + offsets, p * inner * inv_t, mask=ok)
