// CUDA C versions of the softmax_moments, softmax_statistics and gradient_map passes of
// dsnt-core's kernel contract (dsnt_core/kernels/contract.py), for CuPy arrays.
//
// Same arguments and results as the array-API passes (dsnt_core/kernels/array_api.py, which
// has the math); the rules stay in dsnt_core.ops. backends/dsnt_cupy/cuda_kernels.py compiles
// this file with NVRTC through cupy.RawModule, one module per input type, and launches it.
//
// Nothing is #included: NVRTC has no C library headers (<math.h>...) and, unless told where,
// no CUDA include path either, so <cuda_fp16.h> and <cuda_bf16.h> are not used. 16-bit
// inputs are read as their bits (dsnt::float16, dsnt::bfloat16) and widened exactly to float.
// The CUDA math functions (expf, logf, exp, log...) are built into NVRTC.
//
// Layout. Logits are (N, S) contiguous: N heatmaps of S = D * H * W elements, x along W (the
// fastest axis), y along H, z along D; 1-D heatmaps have H = D = 1, 2-D ones D = 1, and
// `ndim` says which axes exist. Per-axis vectors are (N, n) contiguous (n = W, H or D) and
// per-heatmap numbers (N,), all in the accumulation type A: float for 16- and 32-bit inputs,
// double for double. The results are in A as well. Offsets inside one heatmap are int (the
// caller keeps S at most 2^30), offsets of a heatmap in the batch are long long.
//
// Semantics shared with the array-API passes: u = logits / T; a heatmap whose logits are all
// -inf is uniform with lse = 0; a NaN or +inf logit makes its heatmap's results NaN; the JS
// sums floor log M at the smallest normal number; gradient_map floors log P at -1e4.

// --------------------------------------------------------------------------------- types

namespace dsnt {

struct float16 {
  unsigned short bits;
};
struct bfloat16 {
  unsigned short bits;
};

// The accumulation type of each input type.
template <typename T>
struct Accumulator;
template <>
struct Accumulator<float16> {
  typedef float type;
};
template <>
struct Accumulator<bfloat16> {
  typedef float type;
};
template <>
struct Accumulator<float> {
  typedef float type;
};
template <>
struct Accumulator<double> {
  typedef double type;
};

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(bfloat16 v) { return __uint_as_float(static_cast<unsigned int>(v.bits) << 16); }
__device__ __forceinline__ float widen(float16 v) {
#if defined(__CUDA_ARCH__)
  float result;
  asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(v.bits));
  return result;
#elif defined(DSNT_HOST_EMULATION)  // tests/: this file run on the CPU
  return dsnt_host_half_to_float(v.bits);
#else  // nvcc's host pass: device code is never called there
  return 0.0f;
#endif
}

// Constants and math of the accumulation types.
template <typename A>
struct Math;

template <>
struct Math<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float nan() { return __int_as_float(0x7fffffff); }
  static __device__ __forceinline__ float lowest() { return -3.40282346638528859812e+38f; }
  static __device__ __forceinline__ float tiny() { return 1.17549435082228750797e-38f; }  // smallest normal
  static __device__ __forceinline__ float exp(float v) { return expf(v); }
  static __device__ __forceinline__ float log(float v) { return logf(v); }
  static __device__ __forceinline__ float max(float a, float b) { return fmaxf(a, b); }  // ignores NaN
};

template <>
struct Math<double> {
  static __device__ __forceinline__ double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
  static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
  static __device__ __forceinline__ double lowest() { return -1.7976931348623157e+308; }
  static __device__ __forceinline__ double tiny() { return 2.2250738585072014e-308; }
  static __device__ __forceinline__ double exp(double v) { return ::exp(v); }
  static __device__ __forceinline__ double log(double v) { return ::log(v); }
  static __device__ __forceinline__ double max(double a, double b) { return fmax(a, b); }
};

// max(a, floor) that keeps a NaN `a` (as the array API's maximum does; fmax would drop it).
template <typename A>
__device__ __forceinline__ A floor_at(A a, A floor) {
  return a < floor ? floor : a;
}

// A NaN or +inf logit poisons its heatmap.
template <typename A>
__device__ __forceinline__ bool poisons(A u) {
  return u != u || u == Math<A>::inf();
}

// Which elementwise term gradient_map adds (dsnt_core.kernels.DivergenceKind, or none).
enum DivergenceKind { kNone = 0, kKL = 1, kJS = 2 };

// Every launch uses at most this many threads, a multiple of 32. The statistics and moments
// kernels declare at least one resident block per SM, so that ptxas may use up to 128
// registers (the double versions need about 96; capped at 64 they spill).
constexpr int kMaxThreads = 512;
constexpr int kItems = 4;         // logits each thread loads per tile of the statistics and moments
constexpr int kGradientItems = 4;  // logits each thread of gradient_map handles
constexpr unsigned int kFullWarp = 0xffffffffu;

// ------------------------------------------------------------------- element positions

// Where an element lies: its flat index in the heatmap and its x, y, z. Threads visit the
// elements idx, idx + step, idx + 2 step...: advance() steps without dividing (a division
// by a runtime number costs tens of instructions, more than the rest of the element's work).
struct Position {
  int idx, x, y, z;
};

// The position of flat index idx (one division each for x, y, z: done once per thread).
__device__ __forceinline__ Position position_of(int idx, int W, int H) {
  const int row = idx / W;
  const int z = row / H;
  return Position{idx, idx - row * W, row - z * H, z};
}

// Steps of `step` elements, split into whole planes, rows and columns.
struct Stride {
  int step, x, y, z;
};

__device__ __forceinline__ Stride stride_of(int step, int W, int H) {
  const Position p = position_of(step, W, H);
  return Stride{step, p.x, p.y, p.z};
}

// p.idx += s.step, keeping x < W and y < H (one carry each: s.x < W and s.y < H).
__device__ __forceinline__ void advance(Position& p, const Stride& s, int W, int H) {
  p.idx += s.step;
  p.x += s.x;
  const int carry_x = p.x >= W;
  p.x -= carry_x * W;
  p.y += s.y + carry_x;
  const int carry_y = p.y >= H;
  p.y -= carry_y * H;
  p.z += s.z + carry_y;
}

// ------------------------------------------------------------------------ reductions

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = Math<A>::max(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// The sum of v over the block, returned to every thread. scratch: 32 values of shared
// memory. Every warp reduces the 32 partial sums itself, so no barrier is needed to hand the
// result out; the barrier at the end lets the caller use scratch again at once.
template <typename A>
__device__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = warp_sum(lane < warps ? scratch[lane] : A(0));
  __syncthreads();
  return v;
}

// The maximum of v over the block (NaN ignored), returned to every thread.
template <typename A>
__device__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = warp_max(lane < warps ? scratch[lane] : -Math<A>::inf());
  __syncthreads();
  return v;
}

// Segmented inclusive sum over the lanes of a warp, whose 32 lanes hold 32 consecutive
// elements: `offset` is the lane's position inside its segment (its x inside a row, or y * W
// + x inside a plane), so lane L - d belongs to the same segment exactly when d <= offset.
// The last lane of a segment then holds the segment's sum. Five shuffles, for any W.
template <typename A>
__device__ __forceinline__ A segment_sum(A v, int offset) {
  const int lane = threadIdx.x & 31;
  for (int d = 1; d < 32; d <<= 1) {
    const A other = __shfl_up_sync(kFullWarp, v, d);
    if (lane >= d && d <= offset) v += other;
  }
  return v;
}

}  // namespace dsnt

// The dynamic shared memory of a launch (the host emulation in tests/ defines its own).
#ifndef DSNT_DYNAMIC_SHARED
#define DSNT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ----------------------------------------------------------------------- the statistics

// One block per heatmap (blockIdx.x = n): lse, the marginals along x, y, z, and on request
// sum P log P (entropy != 0) and sum M log M, sum P log M for M = (P + fx fy fz) / 2
// (mixture != 0; fx, fy, fz are (N, W), (N, H), (N, D)).
//
// The block sweeps the heatmap once in tiles of blockDim.x * kItems elements with a
// block-wide reference `ref` (the running maximum of u). Every thread keeps its own sums of
// e = exp(u - ref) and e * (u - ref); the marginals are accumulated in shared memory (W + H
// + D values): x by shared atomics (the lanes of a warp hold consecutive elements, so
// distinct x: no contention), y and z by a segmented warp sum first, so that a warp adds one
// value per row (or plane) it touches instead of 32 to the same address. When a tile holds a
// larger u (one barrier with a vote finds out), the block agrees on the new maximum and
// rescales everything accumulated so far by exp(ref - new) (Milakov & Gimelshein's online
// softmax). The JS sums need the final lse inside a log, so they take a second sweep, right
// after the first: the block reads its own heatmap again, from L1/L2 for heatmaps of usual
// sizes.
//
// Dynamic shared memory: (W + H + D + 32) * sizeof(A) bytes.
template <typename T>
__global__ void __launch_bounds__(dsnt::kMaxThreads, 1)
    dsnt_statistics(const T* __restrict__ logits, const int W, const int H, const int D, const int ndim,
                    const typename dsnt::Accumulator<T>::type inv_t, const int entropy, const int mixture,
                    const typename dsnt::Accumulator<T>::type* __restrict__ fx,
                    const typename dsnt::Accumulator<T>::type* __restrict__ fy,
                    const typename dsnt::Accumulator<T>::type* __restrict__ fz,
                    typename dsnt::Accumulator<T>::type* __restrict__ lse,
                    typename dsnt::Accumulator<T>::type* __restrict__ mx,
                    typename dsnt::Accumulator<T>::type* __restrict__ my,
                    typename dsnt::Accumulator<T>::type* __restrict__ mz,
                    typename dsnt::Accumulator<T>::type* __restrict__ neg_entropy,
                    typename dsnt::Accumulator<T>::type* __restrict__ m_log_m,
                    typename dsnt::Accumulator<T>::type* __restrict__ p_log_m) {
  typedef typename dsnt::Accumulator<T>::type A;
  typedef dsnt::Math<A> M;
  using dsnt::kItems;
  DSNT_DYNAMIC_SHARED(dsnt_shared);
  A* const acc = reinterpret_cast<A*>(dsnt_shared);  // marginal sums: x [0, W), y [W, W + H), z [W + H, W + H + D)
  A* const acc_y = acc + W;
  A* const acc_z = acc + W + H;
  A* const scratch = acc + W + H + D;  // 32 values for the block reductions

  const int S = W * H * D, margins = W + H + D, lane = threadIdx.x & 31;
  const long long n = blockIdx.x;
  const T* const x = logits + n * S;
  const dsnt::Stride stride = dsnt::stride_of(blockDim.x, W, H);
  for (int i = threadIdx.x; i < margins; i += blockDim.x) acc[i] = A(0);

  A ref = -M::inf();        // the block's reference: the running maximum of u (the same in every thread)
  A sum = 0, shifted = 0;   // this thread's sum of e and of e * (u - ref)
  int poisoned = 0;
  dsnt::Position p = dsnt::position_of(threadIdx.x, W, H);
  for (int start = 0; start < S; start += blockDim.x * kItems) {
    const dsnt::Position first = p;  // positions are stepped through again below: fewer registers than keeping them
    A u[kItems];
    A local = -M::inf();
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      u[k] = p.idx < S ? dsnt::widen(x[p.idx]) * inv_t : -M::inf();
      poisoned |= dsnt::poisons(u[k]);
      local = M::max(local, u[k]);
      dsnt::advance(p, stride, W, H);
    }
    // The vote's barrier also orders the zeroing above (first tile) or the previous tile's
    // atomics (later ones) before any rescaling or adding.
    if (__syncthreads_or(local > ref)) {
      const A peak = dsnt::block_max(local, scratch);
      if (ref != -M::inf()) {  // something to rescale (ref < peak, so no inf - inf)
        const A scale = M::exp(ref - peak);
        for (int i = threadIdx.x; i < margins; i += blockDim.x) acc[i] *= scale;
        shifted = scale * (shifted + sum * (ref - peak));
        sum *= scale;
      }
      ref = peak;
      __syncthreads();  // the rescaled marginals before anyone adds to them
    }
    if (ref == -M::inf()) continue;  // only -inf (or NaN) so far: nothing to add
    dsnt::Position at = first;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const A e = M::exp(u[k] - ref);  // 0 at -inf logits and past the end (u = -inf there)
      const bool inside = at.idx < S;
      sum += e;
      if (entropy) shifted += e * dsnt::floor_at(u[k] - ref, M::lowest());
      if (inside) atomicAdd(acc + at.x, e);
      if (ndim >= 2) {
        const A row = dsnt::segment_sum(e, at.x);
        if (inside && (at.x == W - 1 || lane == 31)) atomicAdd(acc_y + at.y, row);
      }
      if (ndim == 3) {
        const int offset = at.y * W + at.x;
        const A plane = dsnt::segment_sum(e, offset);
        if (inside && (offset == W * H - 1 || lane == 31)) atomicAdd(acc_z + at.z, plane);
      }
      dsnt::advance(at, stride, W, H);
    }
  }
  // block_sum's barriers also end every atomic of the sweep.
  const A total = dsnt::block_sum(sum, scratch);
  const A shift_total = entropy ? dsnt::block_sum(shifted, scratch) : A(0);
  poisoned = __syncthreads_or(poisoned);

  A* const out_x = mx + n * W;
  A* const out_y = my + n * H;
  A* const out_z = mz + n * D;
  if (poisoned) {
    const A nan = M::nan();
    for (int i = threadIdx.x; i < W; i += blockDim.x) out_x[i] = nan;
    for (int i = threadIdx.x; ndim >= 2 && i < H; i += blockDim.x) out_y[i] = nan;
    for (int i = threadIdx.x; ndim == 3 && i < D; i += blockDim.x) out_z[i] = nan;
    if (threadIdx.x == 0) {
      lse[n] = nan;
      if (entropy) neg_entropy[n] = nan;
      if (mixture) m_log_m[n] = p_log_m[n] = nan;
    }
    return;
  }
  const bool uniform = ref == -M::inf();  // every logit is -inf
  const A inv_total = uniform ? A(0) : A(1) / total;
  const A log_total = uniform ? A(0) : M::log(total);
  for (int i = threadIdx.x; i < W; i += blockDim.x) out_x[i] = uniform ? A(1) / A(W) : acc[i] * inv_total;
  for (int i = threadIdx.x; ndim >= 2 && i < H; i += blockDim.x) out_y[i] = uniform ? A(1) / A(H) : acc_y[i] * inv_total;
  for (int i = threadIdx.x; ndim == 3 && i < D; i += blockDim.x) out_z[i] = uniform ? A(1) / A(D) : acc_z[i] * inv_total;
  if (threadIdx.x == 0) {
    lse[n] = uniform ? A(0) : ref + log_total;
    if (entropy) neg_entropy[n] = uniform ? -M::log(A(S)) : shift_total * inv_total - log_total;
  }
  if (!mixture) return;

  // Second sweep: P = exp(u - ref) / total (or 1 / S), Q = fx fy fz, M = (P + Q) / 2.
  const A* const gx = fx + n * W;
  const A* const gy = fy + n * H;
  const A* const gz = fz + n * D;
  A mm = 0, pm = 0;
  for (dsnt::Position q = dsnt::position_of(threadIdx.x, W, H); q.idx < S; dsnt::advance(q, stride, W, H)) {
    const A prob = uniform ? A(1) / A(S) : M::exp(dsnt::widen(x[q.idx]) * inv_t - ref) * inv_total;
    A target = gx[q.x];
    if (ndim >= 2) target *= gy[q.y];
    if (ndim == 3) target *= gz[q.z];
    const A mixed = A(0.5) * (prob + target);
    const A log_mixed = M::log(dsnt::floor_at(mixed, M::tiny()));
    mm += mixed * log_mixed;
    pm += prob * log_mixed;
  }
  mm = dsnt::block_sum(mm, scratch);
  pm = dsnt::block_sum(pm, scratch);
  if (threadIdx.x == 0) {
    m_log_m[n] = mm;
    p_log_m[n] = pm;
  }
}

// -------------------------------------------------------------------------- the moments

// One block per heatmap: lse and the expected coordinates mu (N, ndim), x first, for
// soft_argmax's forward pass. No marginals are needed, so every thread runs its own online
// softmax (its own running maximum, sums of e, e * x, e * y, e * z with the pixel indices x,
// y, z) with no barrier in the sweep; the block combines the threads' sums at the end. The
// expected index E[x] gives the expected pixel-centre coordinate (2 E[x] + 1 - W) / W.
//
// Dynamic shared memory: 32 * sizeof(A) bytes.
template <typename T>
__global__ void __launch_bounds__(dsnt::kMaxThreads, 1)
    dsnt_moments(const T* __restrict__ logits, const int W, const int H, const int D, const int ndim,
                 const typename dsnt::Accumulator<T>::type inv_t, typename dsnt::Accumulator<T>::type* __restrict__ lse,
                 typename dsnt::Accumulator<T>::type* __restrict__ mu) {
  typedef typename dsnt::Accumulator<T>::type A;
  typedef dsnt::Math<A> M;
  using dsnt::kItems;
  DSNT_DYNAMIC_SHARED(dsnt_shared);
  A* const scratch = reinterpret_cast<A*>(dsnt_shared);

  const int S = W * H * D;
  const long long n = blockIdx.x;
  const T* const x = logits + n * S;
  const dsnt::Stride stride = dsnt::stride_of(blockDim.x, W, H);
  A peak = -M::inf(), sum = 0, sum_x = 0, sum_y = 0, sum_z = 0;  // this thread's
  int poisoned = 0;
  dsnt::Position p = dsnt::position_of(threadIdx.x, W, H);
  for (int start = 0; start < S; start += blockDim.x * kItems) {
    dsnt::Position at = p;
    A u[kItems];
    A local = -M::inf();
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      u[k] = p.idx < S ? dsnt::widen(x[p.idx]) * inv_t : -M::inf();
      poisoned |= dsnt::poisons(u[k]);
      local = M::max(local, u[k]);
      dsnt::advance(p, stride, W, H);
    }
    if (local > peak) {
      if (peak != -M::inf()) {
        const A scale = M::exp(peak - local);
        sum *= scale;
        sum_x *= scale;
        sum_y *= scale;
        sum_z *= scale;
      }
      peak = local;
    }
    if (peak == -M::inf()) continue;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const A e = M::exp(u[k] - peak);  // 0 at -inf logits and past the end
      sum += e;
      sum_x += e * A(at.x);
      if (ndim >= 2) sum_y += e * A(at.y);
      if (ndim == 3) sum_z += e * A(at.z);
      dsnt::advance(at, stride, W, H);
    }
  }
  poisoned = __syncthreads_or(poisoned);
  const A ref = dsnt::block_max(peak, scratch);
  const A scale = peak == -M::inf() ? A(0) : M::exp(peak - ref);
  const A total = dsnt::block_sum(sum * scale, scratch);
  const A total_x = dsnt::block_sum(sum_x * scale, scratch);
  const A total_y = ndim >= 2 ? dsnt::block_sum(sum_y * scale, scratch) : A(0);
  const A total_z = ndim == 3 ? dsnt::block_sum(sum_z * scale, scratch) : A(0);
  if (threadIdx.x != 0) return;
  A* const out = mu + n * ndim;
  if (poisoned) {
    lse[n] = M::nan();
    for (int k = 0; k < ndim; ++k) out[k] = M::nan();
  } else if (ref == -M::inf()) {  // every logit is -inf: uniform, centred
    lse[n] = A(0);
    for (int k = 0; k < ndim; ++k) out[k] = A(0);
  } else {
    const A inv_total = A(1) / total;
    lse[n] = ref + M::log(total);
    out[0] = (A(2) * (total_x * inv_total) + A(1 - W)) / A(W);
    if (ndim >= 2) out[1] = (A(2) * (total_y * inv_total) + A(1 - H)) / A(H);
    if (ndim == 3) out[2] = (A(2) * (total_z * inv_total) + A(1 - D)) / A(D);
  }
}

// --------------------------------------------------------------------- the gradient map

// P * (ax[x] + ay[y] + az[z] + e) / T with P = exp(u - lse), e = 0 (kNone), coef log P (kKL)
// or coef (log P - log(P + fx fy fz)) / 2 (kJS), log P floored at -1e4 (LOG_P_FLOOR of the
// array-API passes: exp of it is 0, and coef * log P stays finite).
//
// Elementwise: one read, one write. Block b handles chunk b % chunks (blockDim.x *
// kGradientItems consecutive elements) of heatmap b / chunks, so the per-heatmap numbers are
// read once per block and a small batch of large heatmaps still fills the GPU. Each thread
// loads its kGradientItems logits first, then computes and stores them.
//
// No dynamic shared memory.
template <typename T, int kKind>
__global__ void __launch_bounds__(dsnt::kMaxThreads)
    dsnt_gradient_map(const T* __restrict__ logits, const int W, const int H, const int D, const int ndim,
                      const int chunks, const typename dsnt::Accumulator<T>::type inv_t,
                      const typename dsnt::Accumulator<T>::type* __restrict__ lse,
                      const typename dsnt::Accumulator<T>::type* __restrict__ ax,
                      const typename dsnt::Accumulator<T>::type* __restrict__ ay,
                      const typename dsnt::Accumulator<T>::type* __restrict__ az,
                      const typename dsnt::Accumulator<T>::type* __restrict__ coef,
                      const typename dsnt::Accumulator<T>::type* __restrict__ fx,
                      const typename dsnt::Accumulator<T>::type* __restrict__ fy,
                      const typename dsnt::Accumulator<T>::type* __restrict__ fz,
                      typename dsnt::Accumulator<T>::type* __restrict__ grad) {
  typedef typename dsnt::Accumulator<T>::type A;
  typedef dsnt::Math<A> M;
  using dsnt::kGradientItems;
  const int S = W * H * D;
  const long long n = blockIdx.x / chunks;
  const int chunk = static_cast<int>(blockIdx.x - n * chunks);
  const T* const x = logits + n * S;
  A* const g = grad + n * S;
  const A* const a_x = ax + n * W;
  const A* const a_y = ay + n * H;
  const A* const a_z = az + n * D;
  const A shift = lse[n];
  const A c = kKind == dsnt::kKL ? coef[n] : kKind == dsnt::kJS ? A(0.5) * coef[n] : A(0);

  const dsnt::Stride stride = dsnt::stride_of(blockDim.x, W, H);
  dsnt::Position p = dsnt::position_of(chunk * blockDim.x * kGradientItems + threadIdx.x, W, H);
  A u[kGradientItems];
  dsnt::Position at[kGradientItems];
#pragma unroll
  for (int k = 0; k < kGradientItems; ++k) {
    at[k] = p;
    u[k] = p.idx < S ? dsnt::widen(x[p.idx]) * inv_t : A(0);
    dsnt::advance(p, stride, W, H);
  }
#pragma unroll
  for (int k = 0; k < kGradientItems; ++k) {
    if (at[k].idx >= S) break;
    A log_p = u[k] - shift;
    A inner = a_x[at[k].x];
    if (ndim >= 2) inner += a_y[at[k].y];
    if (ndim == 3) inner += a_z[at[k].z];
    A prob;
    if (kKind == dsnt::kNone) {
      prob = M::exp(log_p);
    } else {
      log_p = dsnt::floor_at(log_p, A(-1.0e4));
      prob = M::exp(log_p);
      if (kKind == dsnt::kKL) {
        inner += c * log_p;
      } else {
        A target = fx[n * W + at[k].x];
        if (ndim >= 2) target *= fy[n * H + at[k].y];
        if (ndim == 3) target *= fz[n * D + at[k].z];
        inner += c * (log_p - M::log(dsnt::floor_at(prob + target, M::tiny())));
      }
    }
    g[at[k].idx] = prob * inner * inv_t;
  }
}
