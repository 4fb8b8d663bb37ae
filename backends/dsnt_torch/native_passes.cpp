// Native CPU versions of the softmax_statistics, gradient_map, softmax_heatmap and
// heatmap_gradient passes of the kernel contract (dsnt_core/kernels/contract.py).
//
// Same arguments and results as the array-API passes (dsnt_core/kernels/array_api.py, which
// has the math); the rules themselves stay in dsnt_core.ops. Each heatmap is handled by one
// thread in one or two sweeps while it sits in the L1/L2 cache, with the exp and log of ATen's
// vectorised math (at::vec: SLEEF's log, and ATen's polynomial exp_u20, which flushes results
// below the smallest normal float to zero instead of taking the slow path for subnormal
// numbers; NaN is handled per heatmap instead, see below).
//
// Heatmaps come as (N, D, H, W) contiguous tensors: 2-D heatmaps have D = 1, 1-D heatmaps
// D = H = 1. Coordinates: x along W, y along H, z along D. Per-axis vectors come as (N, n)
// tensors, n the length of their axis (so (N, 1) for a missing one), per-heatmap numbers as
// (N,) tensors, all contiguous, on the CPU and in the compute dtype of the heatmaps (their own
// dtype: softmax_statistics and gradient_map take float32 and float64 heatmaps only;
// softmax_heatmap and heatmap_gradient also take float16 and bfloat16 ones, read and written
// in that dtype, with float32 arithmetic and results). The module at the end (built by
// torch.utils.cpp_extension.load_inline from backends/dsnt_torch/native.py) checks every
// argument against that before any pass runs.

#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/alloc_cpu.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using at::vec::Vectorized;

// Which elementwise term gradient_map adds: dsnt_core.kernels.DivergenceKind, or none.
enum class DivergenceKind { kNone, kKL, kJS };

// ------------------------------------------------------------------------ vector helpers

// The sum of the lanes, pairwise: log2(lanes) dependent adds instead of one per lane.
template <typename T>
T lane_sum(const Vectorized<T>& v) {
  constexpr int64_t lanes = Vectorized<T>::size();
  alignas(64) T values[lanes];
  v.store(values);
  for (int64_t width = lanes / 2; width > 0; width /= 2) {
    for (int64_t i = 0; i < width; ++i) values[i] += values[i + width];
  }
  return values[0];
}

// The largest lane, or NaN if a lane is NaN; pairwise, as lane_sum.
template <typename T>
T lane_max(const Vectorized<T>& v) {
  constexpr int64_t lanes = Vectorized<T>::size();
  alignas(64) T values[lanes];
  v.store(values);
  for (int64_t width = lanes / 2; width > 0; width /= 2) {
    for (int64_t i = 0; i < width; ++i) {
      const T a = values[i], b = values[i + width];
      values[i] = std::isnan(a) ? a : (std::isnan(b) || b > a) ? b : a;
    }
  }
  return values[0];
}

// Calls body(j, count) for j = 0, lanes, 2 lanes, ... below length, count being the number of
// elements left from j, at most one vector. Every loop over a row has this one body: full
// vectors get count = lanes, a compile-time constant, so that the partial loads and stores
// below compile to plain ones there; the remainder, if any, is one partial vector.
template <typename T, typename Body>
inline void for_each_vector(int64_t length, const Body& body) {
  constexpr int64_t lanes = Vectorized<T>::size();
  int64_t j = 0;
  for (; j + lanes <= length; j += lanes) body(j, lanes);
  if (j < length) body(j, length - j);
}

// f(std::integral_constant<int, k>) for k = 0 .. K - 1, unrolled.
template <typename F, int... k>
inline void unrolled_impl(const F& f, std::integer_sequence<int, k...>) {
  (f(std::integral_constant<int, k>{}), ...);
}
template <int K, typename F>
inline void unrolled(const F& f) {
  unrolled_impl(f, std::make_integer_sequence<int, K>{});
}

// for_each_vector with K vectors per iteration: body(j, count, slot), slot the vector's place
// in its group of K (a std::integral_constant; 0 for the vectors after the last full group).
// A sum or maximum over a loop otherwise waits for each add to finish before the next: with K
// accumulators, one per slot, K of them run at once.
template <typename T, int K, typename Body>
inline void for_each_vector_interleaved(int64_t length, const Body& body) {
  constexpr int64_t lanes = Vectorized<T>::size();
  int64_t j = 0;
  for (; j + K * lanes <= length; j += K * lanes) {
    unrolled<K>([&](auto slot) { body(j + slot() * lanes, lanes, slot); });
  }
  for (; j + lanes <= length; j += lanes) body(j, lanes, std::integral_constant<int, 0>{});
  if (j < length) body(j, length - j, std::integral_constant<int, 0>{});
}

// Independent accumulators for for_each_vector_interleaved, and their combination.
constexpr int kAccumulators = 4;
template <typename T>
using Accumulators = std::array<Vectorized<T>, kAccumulators>;

template <typename T>
Vectorized<T> combined_sum(const Accumulators<T>& acc) {
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// The first count elements at ptr, the other lanes set to fill (nothing read past count).
template <typename T>
inline Vectorized<T> load(const T* ptr, int64_t count, T fill = T(0)) {
  using Vec = Vectorized<T>;
  if (count == Vec::size()) return Vec::loadu(ptr);
  return Vec::set(Vec(fill), Vec::loadu(ptr, count), count);
}

// The first count lanes of v, the others zero.
template <typename T>
inline Vectorized<T> first_lanes(const Vectorized<T>& v, int64_t count) {
  using Vec = Vectorized<T>;
  return count == Vec::size() ? v : Vec::set(Vec(T(0)), v, count);
}

// Heatmaps stored in 16 bits are computed in float32: the compute type of storage type S.
template <typename S>
using compute_t = at::opmath_type<S>;

// The first n elements of src (float16 or bfloat16) as float32 at dst.
template <typename S>
void widen(const S* src, float* dst, int64_t n) {
  using Stored = Vectorized<S>;
  constexpr int64_t lanes = Stored::size(), half = Vectorized<float>::size();
  for_each_vector<S>(n, [&](int64_t j, int64_t count) {
    const Stored v = count == lanes ? Stored::loadu(src + j) : Stored::loadu(src + j, count);
    const auto [low, high] = at::vec::convert_to_float<S>(v);
    low.store(dst + j, std::min(count, half));
    if (count > half) high.store(dst + j + half, count - half);
  });
}

// The first n elements of src (float32) rounded to S (float16 or bfloat16) at dst, to nearest
// even as Tensor.to does.
template <typename S>
void narrow(const float* src, S* dst, int64_t n) {
  constexpr int64_t half = Vectorized<float>::size();
  for_each_vector<S>(n, [&](int64_t j, int64_t count) {
    const Vectorized<float> low = load(src + j, std::min(count, half));
    const Vectorized<float> high = count > half ? load(src + j + half, count - half) : Vectorized<float>(0.0f);
    at::vec::convert_from_float<S>(low, high).store(dst + j, count);
  });
}

// exp_u20 clamps its argument, so it would turn NaN into a finite number: every pass checks
// each heatmap's peak (forward) or log-sum-exp (backward) and writes NaN for the whole
// heatmap when it is NaN or +inf, as the array-API passes do.
template <typename T>
Vectorized<T> fast_exp(const Vectorized<T>& v) {
  return v.exp_u20();
}

#if defined(CPU_CAPABILITY_AVX512)
// With AVX-512, float: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in two steps
// (Cody and Waite), exp(r) = 1 + r + r^2 q(r) with Cephes' expf polynomial (about 1 ulp on
// |r| <= ln 2 / 2), and 2^n applied by scalef, which underflows to 0 (flushed, as exp_u20
// does, by the tasks' FTZ mode) and overflows to +inf without range checks. Arguments below
// -104 (where exp is 0 in float) are clamped there, so that -inf gives 0 and not NaN; a NaN
// argument gives 0 too (the passes check NaN per heatmap, see above). Two thirds of the
// instructions of exp_u20, and more accurate.
template <>
Vectorized<float> fast_exp<float>(const Vectorized<float>& v) {
  const __m512 x = _mm512_max_ps(v, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 q = _mm512_set1_ps(1.9875691500e-4f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.3981999507e-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.3334519073e-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1665795894e-2f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666665459e-1f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return Vectorized<float>(_mm512_scalef_ps(y, n));
}
#endif

// log for arguments that are positive normal numbers (the passes clamp them to at least the
// smallest normal first). SLEEF's log by default; with AVX-512, float uses the exponent and
// mantissa instructions and log(m) = 2 atanh((m - 1) / (m + 1)) for m in [0.75, 1.5), a
// series whose first omitted term is below 4e-9: about 1 ulp, at half the cost.
template <typename T>
Vectorized<T> fast_log(const Vectorized<T>& v) {
  return v.log();
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
Vectorized<float> fast_log<float>(const Vectorized<float>& v) {
  const __m512 x = v;
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 mantissa = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  __m512 exponent = _mm512_getexp_ps(x);
  const __mmask16 upper = _mm512_cmp_ps_mask(mantissa, _mm512_set1_ps(1.5f), _CMP_GE_OQ);
  mantissa = _mm512_mask_mul_ps(mantissa, upper, mantissa, _mm512_set1_ps(0.5f));
  exponent = _mm512_mask_add_ps(exponent, upper, exponent, one);
  const __m512 s = _mm512_div_ps(_mm512_sub_ps(mantissa, one), _mm512_add_ps(mantissa, one));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 series = _mm512_fmadd_ps(s2, _mm512_set1_ps(2.0f / 9.0f), _mm512_set1_ps(2.0f / 7.0f));
  series = _mm512_fmadd_ps(s2, series, _mm512_set1_ps(2.0f / 5.0f));
  series = _mm512_fmadd_ps(s2, series, _mm512_set1_ps(2.0f / 3.0f));
  series = _mm512_fmadd_ps(s2, series, _mm512_set1_ps(2.0f));
  return Vectorized<float>(_mm512_fmadd_ps(exponent, _mm512_set1_ps(0.693147180559945309f), _mm512_mul_ps(s, series)));
}
#endif

template <typename T>
bool poisoned(T value) {
  return std::isnan(value) || (std::isinf(value) && value > 0);
}

// Subnormal intermediates (products of two tiny Gaussian factors, say) cost a microcode
// assist each on x86; every task runs with flush-to-zero and denormals-are-zero set, and
// puts the thread's previous mode back when it ends. Values that small never matter next
// to a heatmap's peak.
class FlushSubnormals {
 public:
#if defined(__SSE2__)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// --------------------------------------------------------------------- argument checks

struct Layout {
  int64_t n, d, h, w;
  int64_t size() const { return d * h * w; }
  // Length of spatial axis k: x (W), y (H), z (D).
  int64_t axis(int k) const { return k == 0 ? w : k == 1 ? h : d; }
};

// Name and shape of the per-axis vectors, x first.
constexpr std::array<const char*, 3> kAxisNames = {"x", "y", "z"};
constexpr std::array<const char*, 3> kAxisShapes = {"(N, W)", "(N, H)", "(N, D)"};

const char* kind_name(DivergenceKind kind) {
  switch (kind) {
    case DivergenceKind::kNone:
      return "NONE";
    case DivergenceKind::kKL:
      return "KL";
    case DivergenceKind::kJS:
      return "JS";
  }
  return "unknown";
}

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(type);
  }
}

bool is_16_bit(at::ScalarType type) { return type == at::kHalf || type == at::kBFloat16; }

// The dtype of the per-heatmap arguments and results: float32 for 16-bit heatmaps.
at::ScalarType compute_type(at::ScalarType type) { return is_16_bit(type) ? at::kFloat : type; }

// The heatmaps (named name): a contiguous 4-D (N, D, H, W) CPU tensor of float32 or float64,
// or with allow_16_bit float16 or bfloat16 too.
Layout check_heatmaps(const char* pass, const at::Tensor& logits, const char* name = "logits",
                      bool allow_16_bit = false) {
  TORCH_CHECK(logits.device().is_cpu(), pass, ": ", name, " must be a CPU tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 4, pass, ": ", name, " must be 4-D (N, D, H, W), got shape ", logits.sizes());
  const at::ScalarType type = logits.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || (allow_16_bit && is_16_bit(type)), pass, ": ", name,
              allow_16_bit ? " must be float16, bfloat16, float32 or float64, got " : " must be float32 or float64, got ",
              dtype_name(type));
  TORCH_CHECK(logits.is_contiguous(), pass, ": ", name, " must be contiguous, got shape ", logits.sizes(),
              " with strides ", logits.strides());
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3)};
}

// softmax_heatmap and heatmap_gradient: ndim spatial axes, the others of length 1, none empty;
// a positive finite 1 / T.
void check_spatial(const char* pass, const char* name, const Layout& l, int64_t ndim, double inv_temperature) {
  TORCH_CHECK(ndim >= 1 && ndim <= 3, pass, ": ndim must be 1, 2 or 3, got ", ndim);
  TORCH_CHECK((ndim >= 3 || l.d == 1) && (ndim >= 2 || l.h == 1), pass, ": ", name,
              " of ndim = ", ndim, " must have D = 1", ndim == 1 ? " and H = 1" : "", ", got shape ",
              at::IntArrayRef({l.n, l.d, l.h, l.w}));
  TORCH_CHECK(l.size() > 0, pass, ": ", name, " must have non-empty spatial axes, got shape ",
              at::IntArrayRef({l.n, l.d, l.h, l.w}));
  TORCH_CHECK(std::isfinite(inv_temperature) && inv_temperature > 0, pass,
              ": inv_temperature must be positive and finite, got ", inv_temperature);
}

// A tensor argument: the given shape and dtype, on the CPU, contiguous.
void check_tensor(const char* pass, const std::string& name, const at::Tensor& tensor, at::IntArrayRef expected_shape,
                  const char* shape_meaning, at::ScalarType dtype, const char* dtype_meaning) {
  TORCH_CHECK(tensor.device().is_cpu(), pass, ": ", name, " must be a CPU tensor, got device ", tensor.device());
  TORCH_CHECK(tensor.sizes() == expected_shape, pass, ": ", name, " must have shape ", expected_shape, " = ",
              shape_meaning, ", got ", tensor.sizes());
  TORCH_CHECK(tensor.scalar_type() == dtype, pass, ": ", name, " must have ", dtype_meaning, " (", dtype_name(dtype),
              "), got ", dtype_name(tensor.scalar_type()));
  TORCH_CHECK(tensor.is_contiguous(), pass, ": ", name, " must be contiguous, got strides ", tensor.strides());
}

// A per-heatmap argument: the given shape, and the device and compute dtype of the heatmaps
// (named heatmaps_name; their own dtype for float32 and float64), contiguous.
void check_like_logits(const char* pass, const std::string& name, const at::Tensor& tensor,
                       at::IntArrayRef expected_shape, const char* shape_meaning, const at::Tensor& logits,
                       const char* heatmaps_name = "logits") {
  const std::string meaning =
      std::string(is_16_bit(logits.scalar_type()) ? "the compute dtype of " : "the dtype of ") + heatmaps_name;
  check_tensor(pass, name, tensor, expected_shape, shape_meaning, compute_type(logits.scalar_type()), meaning.c_str());
}

// Per-axis vectors, x first: (N, W), (N, H), (N, D).
void check_per_axis(const char* pass, const char* name, const std::vector<at::Tensor>& vectors, const Layout& l,
                    const at::Tensor& logits, const char* heatmaps_name = "logits") {
  TORCH_CHECK(vectors.size() == 3, pass, ": ", name, " must hold 3 tensors (x, y, z), got ", vectors.size());
  for (int k = 0; k < 3; ++k) {
    check_like_logits(pass, std::string(name) + "[" + std::to_string(k) + "] (" + kAxisNames[k] + ")", vectors[k],
                      {l.n, l.axis(k)}, kAxisShapes[k], logits, heatmaps_name);
  }
}

// Per-heatmap numbers: (N,).
void check_per_heatmap(const char* pass, const char* name, const at::Tensor& values, const Layout& l,
                       const at::Tensor& logits) {
  check_like_logits(pass, name, values, {l.n}, "(N,)", logits);
}

int64_t grain_for(const Layout& l) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(l.size(), 1)); }

// ------------------------------------------------------------------ heatmap-sized outputs

// The passes' heatmap-sized outputs (P, the gradient) come from a small cache of buffers that
// earlier outputs of the same size have given back. A fresh buffer of that size is a fresh
// mapping of zeroed pages from the system for glibc's malloc (always above 32 MiB, its largest
// mmap threshold, and often below), and touching it costs a page fault per 4 KiB: more than the
// pass itself for (8, 17, 256, 256) float32 logits (35.6 MB: 14 ms of faults against 3 ms of
// work on the development machine). A training loop asks for the same sizes at every step,
// so the buffer of the last step's gradient serves the next one. At most kCachedBuffers
// buffers are kept (the most recently returned ones); release_cached_buffers() frees them.
class BufferCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;  // smaller buffers come from malloc's free lists
  static constexpr size_t kCachedBuffers = 4;

  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();  // never destroyed: tensors may be freed at exit
    return *cache;
  }

  void* take(size_t bytes) {
    if (bytes == 0) return nullptr;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
        if (it->first == bytes) {
          void* ptr = it->second;
          free_.erase(std::next(it).base());
          return ptr;
        }
      }
    }
    return c10::alloc_cpu(bytes);
  }

  void give(void* ptr, size_t bytes) {
    if (bytes < kMinBytes) {
      c10::free_cpu(ptr);
      return;
    }
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      free_.emplace_back(bytes, ptr);
      while (free_.size() > kCachedBuffers) {
        evicted.push_back(free_.front().second);
        free_.erase(free_.begin());
      }
    }
    for (void* p : evicted) c10::free_cpu(p);
  }

  void release() {
    std::vector<std::pair<size_t, void*>> released;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      released.swap(free_);
    }
    for (const auto& entry : released) c10::free_cpu(entry.second);
  }

  // In a forked child the mutex may have been held by a thread that does not exist there.
  void after_fork_in_child() { new (&mutex_) std::mutex(); }

 private:
  BufferCache() {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, [] { BufferCache::instance().after_fork_in_child(); });
#endif
  }
  std::mutex mutex_;
  std::vector<std::pair<size_t, void*>> free_;  // (bytes, buffer), most recently returned last
};

// The allocator of heatmap-sized outputs: buffers from the cache, given back to it when their
// storage is freed. Tensors made with it are ordinary CPU tensors (resizable too: a resize asks
// this allocator again).
struct CachedBuffer {
  void* data;
  size_t bytes;
};

void give_back_to_cache(void* context) {
  const auto* buffer = static_cast<CachedBuffer*>(context);
  BufferCache::instance().give(buffer->data, buffer->bytes);
  delete buffer;
}

class CachingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* data = BufferCache::instance().take(bytes);
    return {data, new CachedBuffer{data, bytes}, &give_back_to_cache, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

// An uninitialised contiguous tensor of this shape and options; heatmap-sized ones from the cache.
at::Tensor heatmap_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t count = 1;
  for (const int64_t s : sizes) count *= s;
  const at::ScalarType type = c10::typeMetaToScalarType(options.dtype());
  if (static_cast<size_t>(count) * c10::elementSize(type) < BufferCache::kMinBytes) return at::empty(sizes, options);
  static CachingAllocator* allocator = new CachingAllocator();  // never destroyed, as the cache
  return at::detail::empty_generic(sizes, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), type, std::nullopt);
}

// ---------------------------------------------------------------------------- the passes

template <typename T>
T heatmap_max(const T* x, int64_t size) {
  using Vec = Vectorized<T>;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  Accumulators<T> best;
  best.fill(Vec(neg_inf));
  for_each_vector_interleaved<T, kAccumulators>(size, [&](int64_t j, int64_t count, auto slot) {
    best[slot] = at::vec::maximum(best[slot], load(x + j, count, neg_inf));
  });
  // at::vec::maximum propagates NaN, and lane_max finds it.
  return lane_max(at::vec::maximum(at::vec::maximum(best[0], best[1]), at::vec::maximum(best[2], best[3])));
}

// In the field order of dsnt_core.kernels.SoftmaxStatistics: lse (N,), the marginals along x,
// y, z ((N, W), (N, H), (N, D)), and sum P log P, sum M log M, sum P log M ((N,) each, None
// unless asked for).
using Statistics = std::tuple<at::Tensor, std::tuple<at::Tensor, at::Tensor, at::Tensor>, std::optional<at::Tensor>,
                              std::optional<at::Tensor>, std::optional<at::Tensor>>;

// lse, the marginals along x (W), y (H), z (D), (with entropy) sum P log P and (with
// mixture = (fx, fy, fz)) sum M log M and sum P log M for M = (P + fx fy fz) / 2. For the
// mixture sums, exp(u - peak) is kept in a per-thread scratch heatmap, so P costs no second exp.
template <typename T>
Statistics statistics_impl(const at::Tensor& logits, const Layout& l, double inv_temperature, bool entropy,
                           const std::optional<std::vector<at::Tensor>>& mixture) {
  using Vec = Vectorized<T>;
  const bool with_mixture = mixture.has_value();
  const auto options = logits.options();
  at::Tensor lse = at::empty({l.n}, options);
  at::Tensor mx = at::empty({l.n, l.w}, options), my = at::empty({l.n, l.h}, options);
  at::Tensor mz = at::empty({l.n, l.d}, options);
  std::optional<at::Tensor> neg_entropy, m_log_m, p_log_m;
  if (entropy) neg_entropy = at::empty({l.n}, options);
  if (with_mixture) {
    m_log_m = at::empty({l.n}, options);
    p_log_m = at::empty({l.n}, options);
  }

  const T* data = logits.data_ptr<T>();
  T* lse_p = lse.data_ptr<T>();
  T* mx_p = mx.data_ptr<T>();
  T* my_p = my.data_ptr<T>();
  T* mz_p = mz.data_ptr<T>();
  T* ent_p = entropy ? neg_entropy->data_ptr<T>() : nullptr;
  T* mm_p = with_mixture ? m_log_m->data_ptr<T>() : nullptr;
  T* pm_p = with_mixture ? p_log_m->data_ptr<T>() : nullptr;
  const T* fx_p = with_mixture ? (*mixture)[0].data_ptr<T>() : nullptr;
  const T* fy_p = with_mixture ? (*mixture)[1].data_ptr<T>() : nullptr;
  const T* fz_p = with_mixture ? (*mixture)[2].data_ptr<T>() : nullptr;
  const T inv_t = static_cast<T>(inv_temperature);
  const T tiny = std::numeric_limits<T>::min(), lowest = std::numeric_limits<T>::lowest();
  const int64_t rows = l.d * l.h;

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    std::vector<T> columns(l.w), row_totals(rows), scratch(with_mixture ? l.size() : 0);
    for (int64_t i = begin; i < end; ++i) {
      const T* x = data + i * l.size();
      const T peak = heatmap_max(x, l.size()) * inv_t;
      // sum M log M and sum P log M with P = scale * scratch.
      auto mixture_sums = [&](T scale) {
        const Vec v_scale(scale), v_half(T(0.5)), v_tiny(tiny);
        const T* gx = fx_p + i * l.w;
        Vec acc_mm(0), acc_pm(0);
        for (int64_t z = 0; z < l.d; ++z) {
          for (int64_t y = 0; y < l.h; ++y) {
            const T* p_row = scratch.data() + (z * l.h + y) * l.w;
            const Vec v_gyz(fy_p[i * l.h + y] * fz_p[i * l.d + z]);
            // Lanes past the row end have p = 0 and m = 0, adding nothing.
            for_each_vector<T>(l.w, [&](int64_t j, int64_t count) {
              const Vec p = load(p_row + j, count) * v_scale;
              const Vec m = v_half * (p + load(gx + j, count) * v_gyz);
              const Vec log_m = fast_log(at::vec::maximum(m, v_tiny));
              acc_mm = acc_mm + m * log_m;
              acc_pm = acc_pm + p * log_m;
            });
          }
        }
        mm_p[i] = lane_sum(acc_mm);
        pm_p[i] = lane_sum(acc_pm);
      };
      if (std::isinf(peak) && peak < 0) {  // every logit is -inf: uniform, lse = 0
        lse_p[i] = 0;
        std::fill(mx_p + i * l.w, mx_p + (i + 1) * l.w, T(1) / l.w);
        std::fill(my_p + i * l.h, my_p + (i + 1) * l.h, T(1) / l.h);
        std::fill(mz_p + i * l.d, mz_p + (i + 1) * l.d, T(1) / l.d);
        if (entropy) ent_p[i] = -std::log(static_cast<T>(l.size()));
        if (with_mixture) {
          std::fill(scratch.begin(), scratch.end(), T(1));
          mixture_sums(T(1) / l.size());
        }
        continue;
      }
      if (poisoned(peak)) {
        const T nan = std::numeric_limits<T>::quiet_NaN();
        lse_p[i] = nan;
        std::fill(mx_p + i * l.w, mx_p + (i + 1) * l.w, nan);
        std::fill(my_p + i * l.h, my_p + (i + 1) * l.h, nan);
        std::fill(mz_p + i * l.d, mz_p + (i + 1) * l.d, nan);
        if (entropy) ent_p[i] = nan;
        if (with_mixture) mm_p[i] = pm_p[i] = nan;
        continue;
      }
      std::fill(columns.begin(), columns.end(), T(0));
      const Vec v_inv(inv_t), v_peak(peak), v_lowest(lowest);
      T shift_sum = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = x + r * l.w;
        Vec acc(0), ent(0);
        for_each_vector<T>(l.w, [&](int64_t j, int64_t count) {
          const Vec shifted = load(row + j, count) * v_inv - v_peak;
          const Vec e = first_lanes(fast_exp(shifted), count);  // 0 past the row end
          if (with_mixture) e.store(scratch.data() + r * l.w + j, count);
          acc = acc + e;
          (load(columns.data() + j, count) + e).store(columns.data() + j, count);
          if (entropy) ent = ent + e * at::vec::maximum(shifted, v_lowest);
        });
        row_totals[r] = lane_sum(acc);
        if (entropy) shift_sum += lane_sum(ent);
      }
      T total = 0;
      for (int64_t r = 0; r < rows; ++r) total += row_totals[r];
      const T inv_total = T(1) / total, log_total = std::log(total);
      lse_p[i] = peak + log_total;
      if (entropy) ent_p[i] = shift_sum * inv_total - log_total;
      if (with_mixture) mixture_sums(inv_total);
      for (int64_t j = 0; j < l.w; ++j) mx_p[i * l.w + j] = columns[j] * inv_total;
      for (int64_t y = 0; y < l.h; ++y) {
        T s = 0;
        for (int64_t z = 0; z < l.d; ++z) s += row_totals[z * l.h + y];
        my_p[i * l.h + y] = s * inv_total;
      }
      for (int64_t z = 0; z < l.d; ++z) {
        T s = 0;
        for (int64_t y = 0; y < l.h; ++y) s += row_totals[z * l.h + y];
        mz_p[i * l.d + z] = s * inv_total;
      }
    }
  });
  return {lse, {mx, my, mz}, neg_entropy, m_log_m, p_log_m};
}

// P * (ax[x] + ay[y] + az[z] + e) / T; e = 0 (kNone), coef log P (kKL) or
// coef (log P - log(P + fx fy fz)) / 2 (kJS), with log P floored at -1e4 (LOG_P_FLOOR of the
// array-API passes: exp of it is 0, and coef * log P stays finite).
template <typename T, DivergenceKind kind>
at::Tensor gradient_impl(const at::Tensor& logits, const Layout& l, double inv_temperature, const at::Tensor& lse,
                         const std::vector<at::Tensor>& per_axis, const std::optional<at::Tensor>& coef,
                         const std::optional<std::vector<at::Tensor>>& factors) {
  using Vec = Vectorized<T>;
  at::Tensor grad = heatmap_output(logits.sizes(), logits.options());
  const T* data = logits.data_ptr<T>();
  T* out = grad.data_ptr<T>();
  const T* lse_p = lse.data_ptr<T>();
  const T *ax_p = per_axis[0].data_ptr<T>(), *ay_p = per_axis[1].data_ptr<T>(), *az_p = per_axis[2].data_ptr<T>();
  const T* coef_p = kind != DivergenceKind::kNone ? coef->data_ptr<T>() : nullptr;
  const T* fx_p = kind == DivergenceKind::kJS ? (*factors)[0].data_ptr<T>() : nullptr;
  const T* fy_p = kind == DivergenceKind::kJS ? (*factors)[1].data_ptr<T>() : nullptr;
  const T* fz_p = kind == DivergenceKind::kJS ? (*factors)[2].data_ptr<T>() : nullptr;
  const T inv_t = static_cast<T>(inv_temperature);
  const T log_p_floor = T(-1e4), tiny = std::numeric_limits<T>::min();

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    for (int64_t i = begin; i < end; ++i) {
      const T* x = data + i * l.size();
      T* g = out + i * l.size();
      const T* a_x = ax_p + i * l.w;
      const T* f_x = kind == DivergenceKind::kJS ? fx_p + i * l.w : nullptr;
      const T shift = lse_p[i];
      if (poisoned(shift)) {
        std::fill(g, g + l.size(), std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      const T c = kind == DivergenceKind::kKL ? coef_p[i] : kind == DivergenceKind::kJS ? T(0.5) * coef_p[i] : T(0);
      const Vec v_inv(inv_t), v_shift(shift), v_floor(log_p_floor), v_tiny(tiny), v_c(c);
      for (int64_t z = 0; z < l.d; ++z) {
        for (int64_t y = 0; y < l.h; ++y) {
          const int64_t offset = (z * l.h + y) * l.w;
          const Vec v_base(ay_p[i * l.h + y] + az_p[i * l.d + z]);
          const Vec v_gyz(kind == DivergenceKind::kJS ? fy_p[i * l.h + y] * fz_p[i * l.d + z] : T(0));
          // Lanes past the row end compute whatever they compute; only count lanes are stored.
          for_each_vector<T>(l.w, [&](int64_t j, int64_t count) {
            Vec log_p = load(x + offset + j, count) * v_inv - v_shift;
            Vec inner = load(a_x + j, count) + v_base;
            Vec p;
            if constexpr (kind == DivergenceKind::kNone) {
              p = fast_exp(log_p);
            } else {
              log_p = at::vec::maximum(log_p, v_floor);
              p = fast_exp(log_p);
              if constexpr (kind == DivergenceKind::kKL) {
                inner = inner + v_c * log_p;
              } else {
                const Vec twice_m = p + load(f_x + j, count) * v_gyz;
                inner = inner + v_c * (log_p - fast_log(at::vec::maximum(twice_m, v_tiny)));
              }
            }
            (p * inner * v_inv).store(g + offset + j, count);
          });
        }
      }
    }
  });
  return grad;
}

// Heatmaps up to this size (in their own dtype) have the next one prefetched by softmax_heatmap.
constexpr int64_t kPrefetchBytes = 64 * 1024;

// A hint to fetch the cache line at ptr, to read it or to write it (no-op where unsupported).
template <bool for_write, typename T>
inline void prefetch(const T* ptr) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(ptr, for_write ? 1 : 0, 3);
#else
  (void)ptr;
#endif
}

// Pixel-centre coordinates (2j + 1 - n) / n of an axis of length n, in T (rounded once).
template <typename T>
std::vector<T> pixel_centres(int64_t n) {
  std::vector<T> grid(n);
  for (int64_t j = 0; j < n; ++j) grid[j] = static_cast<T>(static_cast<double>(2 * j + 1 - n) / static_cast<double>(n));
  return grid;
}

// lse (N,), mu (N, ndim) (x, y[, z]) and P = softmax(logits / T) in the logits' dtype S, with
// lse and mu in the compute type. Per heatmap: the peak; exp(u - peak) and its total in one
// sweep; then one sweep that scales it to P, writes P and sums P, P x, P y and P z. The exp goes
// straight into the output for float32 and float64; 16-bit heatmaps are widened into a
// per-thread float32 scratch heatmap first and P is rounded to S row by row.
template <typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_heatmap_impl(const at::Tensor& logits, const Layout& l,
                                                                    int64_t ndim, double inv_temperature) {
  using T = compute_t<S>;
  using Vec = Vectorized<T>;
  constexpr bool widened = !std::is_same_v<S, T>;
  const auto compute = logits.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor heatmap = heatmap_output({l.n, l.d, l.h, l.w}, logits.options());
  at::Tensor lse = at::empty({l.n}, compute), mu = at::empty({l.n, ndim}, compute);
  const S* data = logits.data_ptr<S>();
  S* out = heatmap.data_ptr<S>();
  T* lse_p = lse.data_ptr<T>();
  T* mu_p = mu.data_ptr<T>();
  const std::vector<T> gx = pixel_centres<T>(l.w), gy = pixel_centres<T>(l.h), gz = pixel_centres<T>(l.d);
  const T inv_t = static_cast<T>(inv_temperature);
  const int64_t size = l.size();

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    std::vector<T> scratch(widened ? size : 0);
    for (int64_t i = begin; i < end; ++i) {
      S* p_out = out + i * size;
      // exp(u - peak), then P, in the compute type: the output itself, or the scratch.
      T* e = nullptr;
      const T* x = nullptr;
      if constexpr (widened) {
        widen(data + i * size, scratch.data(), size);
        x = e = scratch.data();
      } else {
        x = data + i * size;
        e = p_out;
      }
      T* mu_i = mu_p + i * ndim;
      const T peak = heatmap_max(x, size) * inv_t;
      T total;
      if (std::isinf(peak) && peak < 0) {  // every logit is -inf: P kept as 0 (coordinates 0, zero gradient), lse = 0
        std::fill(p_out, p_out + size, static_cast<S>(0));
        std::fill(mu_i, mu_i + ndim, T(0));
        lse_p[i] = 0;
        continue;
      } else if (poisoned(peak)) {  // a NaN or +inf logit: NaN throughout
        const T nan = std::numeric_limits<T>::quiet_NaN();
        std::fill(p_out, p_out + size, static_cast<S>(nan));
        std::fill(mu_i, mu_i + ndim, nan);
        lse_p[i] = nan;
        continue;
      } else {
        const Vec v_inv(inv_t), v_peak(peak);
        Accumulators<T> acc;
        acc.fill(Vec(0));
        // The next heatmap's logits and output, fetched into the cache while this sweep
        // computes (the max sweep would wait for them otherwise): 5-10% for small heatmaps,
        // nothing or worse for those that no longer fit in L2 beside the current one.
        const bool ahead = i + 1 < end && size * static_cast<int64_t>(sizeof(S)) <= kPrefetchBytes;
        const S* next_x = ahead ? data + (i + 1) * size : nullptr;
        const S* next_out = ahead ? p_out + size : nullptr;
        // Flat over the heatmap (in place for 16-bit): only the last vector is partial.
        for_each_vector_interleaved<T, kAccumulators>(size, [&](int64_t j, int64_t count, auto slot) {
          if (next_x != nullptr) {
            prefetch<false>(next_x + j);
            prefetch<true>(next_out + j);
          }
          const Vec v = first_lanes(fast_exp(load(x + j, count) * v_inv - v_peak), count);
          v.store(e + j, count);
          acc[slot] = acc[slot] + v;
        });
        total = lane_sum(combined_sum(acc));
        lse_p[i] = peak + std::log(total);
      }
      // P = e / total, written in place; its moments from the same loads. Lanes past a row's
      // end load 0 and add nothing.
      const Vec v_scale(T(1) / total);
      Accumulators<T> acc_x;
      acc_x.fill(Vec(0));
      Vec acc_y(0), acc_z(0);
      for (int64_t z = 0; z < l.d; ++z) {
        Vec plane(0);
        for (int64_t y = 0; y < l.h; ++y) {
          const int64_t offset = (z * l.h + y) * l.w;
          T* row = e + offset;
          Accumulators<T> row_acc;
          row_acc.fill(Vec(0));
          for_each_vector_interleaved<T, kAccumulators>(l.w, [&](int64_t j, int64_t count, auto slot) {
            const Vec p = load(row + j, count) * v_scale;
            p.store(row + j, count);
            row_acc[slot] = row_acc[slot] + p;
            acc_x[slot] = at::vec::fmadd(p, load(gx.data() + j, count), acc_x[slot]);
          });
          if constexpr (widened) narrow(row, p_out + offset, l.w);
          const Vec row_sum = combined_sum(row_acc);
          acc_y = at::vec::fmadd(row_sum, Vec(gy[y]), acc_y);
          plane = plane + row_sum;
        }
        acc_z = at::vec::fmadd(plane, Vec(gz[z]), acc_z);
      }
      const std::array<T, 3> moments = {lane_sum(combined_sum(acc_x)), lane_sum(acc_y), lane_sum(acc_z)};
      std::copy(moments.begin(), moments.begin() + ndim, mu_i);
    }
  });
  return {lse, mu, heatmap};
}

// P * (((ax[x] + ay[y]) + az[z]) + elementwise) / T in the compute type, from P stored in S
// (16-bit rows are widened into a per-thread row first): one read of P, one write, no exp.
template <typename S>
at::Tensor heatmap_gradient_impl(const at::Tensor& heatmap, const Layout& l, const std::vector<at::Tensor>& per_axis,
                                 const std::optional<at::Tensor>& elementwise, double inv_temperature) {
  using T = compute_t<S>;
  using Vec = Vectorized<T>;
  constexpr bool widened = !std::is_same_v<S, T>;
  at::Tensor grad = heatmap_output({l.n, l.d, l.h, l.w}, heatmap.options().dtype(c10::CppTypeToScalarType<T>::value));
  const S* data = heatmap.data_ptr<S>();
  T* out = grad.data_ptr<T>();
  const T *ax_p = per_axis[0].data_ptr<T>(), *ay_p = per_axis[1].data_ptr<T>(), *az_p = per_axis[2].data_ptr<T>();
  const T* el_p = elementwise ? elementwise->data_ptr<T>() : nullptr;
  const T inv_t = static_cast<T>(inv_temperature);
  const int64_t size = l.size();

  auto run = [&](auto with_elementwise) {
    constexpr bool kElementwise = decltype(with_elementwise)::value;
    at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
      const FlushSubnormals flush;
      std::vector<T> widened_row(widened ? l.w : 0);
      const Vec v_inv(inv_t);
      for (int64_t i = begin; i < end; ++i) {
        const T* a_x = ax_p + i * l.w;
        for (int64_t z = 0; z < l.d; ++z) {
          const Vec v_az(az_p[i * l.d + z]);
          for (int64_t y = 0; y < l.h; ++y) {
            const int64_t offset = i * size + (z * l.h + y) * l.w;
            const T* p_row = nullptr;
            if constexpr (widened) {
              widen(data + offset, widened_row.data(), l.w);
              p_row = widened_row.data();
            } else {
              p_row = data + offset;
            }
            const Vec v_ay(ay_p[i * l.h + y]);
            // Lanes past the row end compute whatever they compute; only count lanes are stored.
            for_each_vector<T>(l.w, [&](int64_t j, int64_t count) {
              Vec inner = (load(a_x + j, count) + v_ay) + v_az;
              if constexpr (kElementwise) inner = inner + load(el_p + offset + j, count);
              (load(p_row + j, count) * inner * v_inv).store(out + offset + j, count);
            });
          }
        }
      }
    });
  };
  if (el_p != nullptr) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
  return grad;
}

// ------------------------------------------------------------ whole rules, for the plain case
//
// The soft_argmax and dsnt_loss rules of dsnt_core.ops (soft_argmax.py, dsnt_loss.py) for the
// plain case: a number for the temperature and sigma, float32 or float64 heatmaps. The
// per-heatmap arithmetic of the rules (Gaussian factors, moments, distance, regulariser,
// the per-axis vectors and constants of the gradient) is done here, around the passes
// above, so that a forward or backward rule is one call: no small tensor operations, each
// with its dispatch cost, around the one or two full-size sweeps. native.py runs these
// through Kernels.wrap_rule and takes the rules of dsnt_core.ops for every other case.
// grids = (gx, gy, gz) are the rules' pixel-centre grids (coordinate_grids) in the heatmaps'
// dtype, a missing axis as the one value 0.

// The regulariser and distance of a LossOptions (dsnt_core.ops.dsnt_loss).
enum class Regularizer { kNone, kVariance, kKL, kJS };
enum class Distance { kEuclidean, kL1, kMSE };

template <typename T>
struct Grids {
  std::array<const T*, 3> axis;
  std::array<int64_t, 3> n;
};

void check_grids(const char* pass, const std::vector<at::Tensor>& grids, const Layout& l, const at::Tensor& logits) {
  TORCH_CHECK(grids.size() == 3, pass, ": grids must hold 3 tensors (x, y, z), got ", grids.size());
  for (int k = 0; k < 3; ++k) {
    check_like_logits(pass, std::string("grids[") + std::to_string(k) + "] (" + kAxisNames[k] + ")", grids[k],
                      {l.axis(k)}, "(n,), the length of its axis", logits);
  }
}

template <typename T>
Grids<T> grids_of(const std::vector<at::Tensor>& grids, const Layout& l) {
  return {{grids[0].data_ptr<T>(), grids[1].data_ptr<T>(), grids[2].data_ptr<T>()}, {l.w, l.h, l.d}};
}

// (N, n_k) per axis k = x, y, z: the lengths of the axes (1 for a missing one).
std::vector<at::Tensor> per_axis_tensors(const Layout& l, const at::TensorOptions& options) {
  return {at::empty({l.n, l.w}, options), at::empty({l.n, l.h}, options), at::empty({l.n, l.d}, options)};
}

template <typename T>
std::array<T*, 3> pointers(std::vector<at::Tensor>& tensors) {
  return {tensors[0].data_ptr<T>(), tensors[1].data_ptr<T>(), tensors[2].data_ptr<T>()};
}

// lse (N,) and mu (N, ndim) of P = softmax(logits / T), in the heatmaps' dtype: the
// softmax_moments pass. Per heatmap the peak, then one exp sweep that sums exp, exp x, and
// per row exp for y and z; nothing is written but the results. An all -inf heatmap is
// uniform (lse = 0, mu the mean of the grids), a NaN or +inf logit makes its results NaN.
template <typename T>
std::tuple<at::Tensor, at::Tensor> moments_impl(const at::Tensor& logits, const Layout& l, int64_t ndim,
                                                double inv_temperature, const Grids<T>& g) {
  using Vec = Vectorized<T>;
  at::Tensor lse = at::empty({l.n}, logits.options()), mu = at::empty({l.n, ndim}, logits.options());
  const T* data = logits.data_ptr<T>();
  T* lse_p = lse.data_ptr<T>();
  T* mu_p = mu.data_ptr<T>();
  const T inv_t = static_cast<T>(inv_temperature);
  const int64_t size = l.size();
  const T *gx = g.axis[0], *gy = g.axis[1], *gz = g.axis[2];

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    for (int64_t i = begin; i < end; ++i) {
      const T* x = data + i * size;
      T* mu_i = mu_p + i * ndim;
      const T peak = heatmap_max(x, size) * inv_t;
      if (std::isinf(peak) && peak < 0) {  // every logit is -inf: uniform, lse = 0
        lse_p[i] = 0;
        for (int64_t k = 0; k < ndim; ++k) {
          T s = 0;
          for (int64_t j = 0; j < g.n[k]; ++j) s += g.axis[k][j] / static_cast<T>(g.n[k]);
          mu_i[k] = s;
        }
        continue;
      }
      if (poisoned(peak)) {
        const T nan = std::numeric_limits<T>::quiet_NaN();
        lse_p[i] = nan;
        std::fill(mu_i, mu_i + ndim, nan);
        continue;
      }
      const Vec v_inv(inv_t), v_peak(peak);
      Accumulators<T> acc_x;
      acc_x.fill(Vec(0));
      Vec acc_y(0), acc_z(0), acc_total(0);
      for (int64_t z = 0; z < l.d; ++z) {
        Vec plane(0);
        for (int64_t y = 0; y < l.h; ++y) {
          const T* row = x + (z * l.h + y) * l.w;
          Accumulators<T> row_acc;
          row_acc.fill(Vec(0));
          for_each_vector_interleaved<T, kAccumulators>(l.w, [&](int64_t j, int64_t count, auto slot) {
            const Vec e = first_lanes(fast_exp(load(row + j, count) * v_inv - v_peak), count);  // 0 past the end
            row_acc[slot] = row_acc[slot] + e;
            acc_x[slot] = at::vec::fmadd(e, load(gx + j, count), acc_x[slot]);
          });
          const Vec row_sum = combined_sum(row_acc);
          acc_y = at::vec::fmadd(row_sum, Vec(gy[y]), acc_y);
          plane = plane + row_sum;
        }
        acc_z = at::vec::fmadd(plane, Vec(gz[z]), acc_z);
        acc_total = acc_total + plane;
      }
      const T total = lane_sum(acc_total), inv_total = T(1) / total;
      lse_p[i] = peak + std::log(total);
      const std::array<T, 3> moments = {lane_sum(combined_sum(acc_x)), lane_sum(acc_y), lane_sum(acc_z)};
      for (int64_t k = 0; k < ndim; ++k) mu_i[k] = moments[k] * inv_total;
    }
  });
  (void)gz;
  return {lse, mu};
}

// The per-axis vectors of the soft_argmax backward rule: a_x = ct_x gx - (<ct, mu> + extra),
// a_y = ct_y gy, a_z = ct_z gz ((N, 1) zeros for a missing axis).
template <typename T>
std::vector<at::Tensor> soft_argmax_per_axis(const at::Tensor& mu, const at::Tensor& cotangent, const Grids<T>& g,
                                             const Layout& l, int64_t ndim) {
  std::vector<at::Tensor> per_axis = per_axis_tensors(l, mu.options());
  const std::array<T*, 3> a = pointers<T>(per_axis);
  const T* mu_p = mu.data_ptr<T>();
  const T* ct_p = cotangent.data_ptr<T>();
  for (int64_t i = 0; i < l.n; ++i) {
    const T* mu_i = mu_p + i * ndim;
    const T* ct_i = ct_p + i * ndim;
    T c = 0;
    for (int64_t k = 0; k < ndim; ++k) c += ct_i[k] * mu_i[k];
    for (int k = 0; k < 3; ++k) {
      T* a_k = a[k] + i * g.n[k];
      if (k < ndim) {
        for (int64_t j = 0; j < g.n[k]; ++j) a_k[j] = ct_i[k] * g.axis[k][j];
      } else {
        a_k[0] = 0;
      }
    }
    for (int64_t j = 0; j < g.n[0]; ++j) a[0][i * g.n[0] + j] -= c;
  }
  return per_axis;
}

// log g_k (normalised 1-D Gaussian factors of sigma pixels at t, x first) for one point, and
// with f the factors g_k = exp(max(log g_k, cutoff)) themselves: ops.gaussian.log_gaussian_factors
// and _arrays.exp_clamped. A missing axis gets log g = 0, g = 1.
template <typename T>
void gaussian_factors(const T* t, int64_t ndim, const Grids<T>& g, double sigma, const std::array<T*, 3>& lg,
                      const std::array<T*, 3>* f) {
  const T cutoff = static_cast<T>(std::log(static_cast<double>(std::numeric_limits<T>::min())) + 1.0);
  for (int k = 0; k < 3; ++k) {
    if (k >= ndim) {
      lg[k][0] = 0;
      if (f != nullptr) (*f)[k][0] = 1;
      continue;
    }
    const int64_t n = g.n[k];
    const double std_dev = 2.0 * sigma / static_cast<double>(n);
    const T coef = static_cast<T>(-0.5 / (std_dev * std_dev));
    T peak = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      const T offset = g.axis[k][j] - t[k];
      lg[k][j] = (offset * offset) * coef;
      peak = std::max(peak, lg[k][j]);
    }
    using Vec = Vectorized<T>;
    const Vec v_cutoff(cutoff), v_peak(peak);
    Vec acc(0);
    for_each_vector<T>(n, [&](int64_t j, int64_t count) {
      acc = acc + first_lanes(fast_exp(at::vec::maximum(load(lg[k] + j, count) - v_peak, v_cutoff)), count);
    });
    const Vec v_log_norm(peak + std::log(lane_sum(acc)));
    for_each_vector<T>(n, [&](int64_t j, int64_t count) {
      const Vec log_factor = load(lg[k] + j, count) - v_log_norm;
      log_factor.store(lg[k] + j, count);
      if (f != nullptr) fast_exp(at::vec::maximum(log_factor, v_cutoff)).store((*f)[k] + j, count);
    });
  }
}

// (N, n_k) tensors of log g_k and, for JS, g_k, for every point (target (N, ndim)).
template <typename T>
std::pair<std::vector<at::Tensor>, std::optional<std::vector<at::Tensor>>> target_gaussians(
    const at::Tensor& target, const Grids<T>& g, const Layout& l, int64_t ndim, double sigma, bool with_factors) {
  std::vector<at::Tensor> log_factors = per_axis_tensors(l, target.options());
  std::optional<std::vector<at::Tensor>> factors;
  if (with_factors) factors = per_axis_tensors(l, target.options());
  const std::array<T*, 3> lg = pointers<T>(log_factors);
  std::array<T*, 3> f{};
  if (factors) f = pointers<T>(*factors);
  const T* t = target.data_ptr<T>();
  const bool with_f = factors.has_value();
  at::parallel_for(0, l.n, std::max<int64_t>(1, 4096 / (l.w + l.h + l.d)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const std::array<T*, 3> lg_i = {lg[0] + i * l.w, lg[1] + i * l.h, lg[2] + i * l.d};
      std::array<T*, 3> f_i{};
      if (with_f) f_i = {f[0] + i * l.w, f[1] + i * l.h, f[2] + i * l.d};
      gaussian_factors(t + i * ndim, ndim, g, sigma, lg_i, with_f ? &f_i : nullptr);
    }
  });
  return {log_factors, factors};
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

// The per-point coordinate loss of diff = mu - target: dsnt_loss._point_distance.
template <typename T>
T point_distance(const T* diff, int64_t ndim, Distance distance) {
  T s = 0;
  for (int64_t k = 0; k < ndim; ++k) s += distance == Distance::kL1 ? std::abs(diff[k]) : diff[k] * diff[k];
  if (distance == Distance::kEuclidean) return s > 0 ? std::sqrt(s) : s * T(0);  // NaN stays NaN
  return s / static_cast<T>(ndim);
}

// d distance / d mu: dsnt_loss._distance_gradient.
template <typename T>
void distance_gradient(const T* diff, int64_t ndim, Distance distance, T* out) {
  if (distance == Distance::kEuclidean) {
    const T norm = point_distance(diff, ndim, distance);
    const T denominator = norm > 0 ? norm : T(1);
    for (int64_t k = 0; k < ndim; ++k) out[k] = diff[k] / denominator;
  } else if (distance == Distance::kL1) {
    for (int64_t k = 0; k < ndim; ++k) {
      const T sign = std::isnan(diff[k]) ? diff[k] : static_cast<T>((diff[k] > 0) - (diff[k] < 0));
      out[k] = sign / static_cast<T>(ndim);
    }
  } else {
    const T two_over_ndim = static_cast<T>(2.0 / static_cast<double>(ndim));
    for (int64_t k = 0; k < ndim; ++k) out[k] = diff[k] * two_over_ndim;
  }
}

// (n_k / 2)^2: regularizers.pixel_variance_scale.
template <typename T>
T pixel_scale(int64_t n) {
  const double half = static_cast<double>(n) / 2.0;
  return static_cast<T>(half * half);
}

using LossForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>>;

// dsnt_loss_forward: the loss (0-d), lse (N,), mu (N, ndim) and the kept residual (var (N, ndim)
// for the variance regulariser, the divergence (N,) for KL and JS, None otherwise).
template <typename T>
LossForward loss_forward_impl(const at::Tensor& logits, const Layout& l, const at::Tensor& target,
                              const std::optional<at::Tensor>& weights, const Grids<T>& g, int64_t ndim,
                              double inv_temperature, double sigma, Regularizer regularizer, double reg_weight,
                              Distance distance) {
  const bool divergence = regularizer == Regularizer::kKL || regularizer == Regularizer::kJS;
  std::vector<at::Tensor> log_factors;
  std::optional<std::vector<at::Tensor>> factors;
  if (divergence) {
    std::tie(log_factors, factors) =
        target_gaussians<T>(target, g, l, ndim, sigma, regularizer == Regularizer::kJS);
  }
  const Statistics stats = statistics_impl<T>(logits, l, inv_temperature, divergence, factors);
  const auto& margins = std::get<1>(stats);
  const std::array<const T*, 3> m = {std::get<0>(margins).data_ptr<T>(), std::get<1>(margins).data_ptr<T>(),
                                     std::get<2>(margins).data_ptr<T>()};
  at::Tensor mu = at::empty({l.n, ndim}, logits.options());
  std::optional<at::Tensor> kept;
  if (regularizer == Regularizer::kVariance) kept = at::empty({l.n, ndim}, logits.options());
  if (divergence) kept = at::empty({l.n}, logits.options());
  T* mu_p = mu.data_ptr<T>();
  T* kept_p = kept ? kept->data_ptr<T>() : nullptr;
  const T* t_p = target.data_ptr<T>();
  const T* w_p = weights ? weights->data_ptr<T>() : nullptr;
  const T mean_weight = static_cast<T>(1.0 / static_cast<double>(std::max<int64_t>(l.n, 1)));
  const T* ent_p = divergence ? std::get<2>(stats)->data_ptr<T>() : nullptr;
  const T* mm_p = regularizer == Regularizer::kJS ? std::get<3>(stats)->data_ptr<T>() : nullptr;
  const T* pm_p = regularizer == Regularizer::kJS ? std::get<4>(stats)->data_ptr<T>() : nullptr;
  std::array<const T*, 3> lg{}, f{};
  if (divergence) lg = {log_factors[0].data_ptr<T>(), log_factors[1].data_ptr<T>(), log_factors[2].data_ptr<T>()};
  if (factors) f = {(*factors)[0].data_ptr<T>(), (*factors)[1].data_ptr<T>(), (*factors)[2].data_ptr<T>()};
  const T sigma_squared = static_cast<T>(sigma * sigma), weight = static_cast<T>(reg_weight);

  double loss = 0;
  for (int64_t i = 0; i < l.n; ++i) {
    T* mu_i = mu_p + i * ndim;
    std::array<T, 3> var{}, diff{};
    for (int64_t k = 0; k < ndim; ++k) {
      const T* m_k = m[k] + i * g.n[k];
      mu_i[k] = dot(m_k, g.axis[k], g.n[k]);
      T v = 0;
      for (int64_t j = 0; j < g.n[k]; ++j) {
        const T centred = g.axis[k][j] - mu_i[k];
        v += m_k[j] * (centred * centred);
      }
      var[k] = v;
      diff[k] = mu_i[k] - t_p[i * ndim + k];
    }
    T per_point = point_distance(diff.data(), ndim, distance);
    if (regularizer != Regularizer::kNone) {
      T term = 0;
      if (regularizer == Regularizer::kVariance) {
        for (int64_t k = 0; k < ndim; ++k) {
          const T error = var[k] * pixel_scale<T>(g.n[k]) - sigma_squared;
          term += error * error;
          kept_p[i * ndim + k] = var[k];
        }
      } else if (regularizer == Regularizer::kKL) {
        T cross = 0;
        for (int64_t k = 0; k < ndim; ++k) cross += dot(m[k] + i * g.n[k], lg[k] + i * g.n[k], g.n[k]);
        term = ent_p[i] - cross;
        kept_p[i] = term;
      } else {
        T gaussian_neg_entropy = 0;
        for (int64_t k = 0; k < ndim; ++k) gaussian_neg_entropy += dot(f[k] + i * g.n[k], lg[k] + i * g.n[k], g.n[k]);
        term = T(0.5) * (ent_p[i] + gaussian_neg_entropy - T(2) * mm_p[i]);
        kept_p[i] = ent_p[i] - pm_p[i];
      }
      per_point = per_point + weight * term;
    }
    loss += static_cast<double>((w_p != nullptr ? w_p[i] : mean_weight) * per_point);
  }
  return {at::scalar_tensor(static_cast<T>(loss), logits.options()), std::get<0>(stats), mu, kept};
}

// dsnt_loss_backward: the gradient of cotangent * loss with respect to the logits (N, D, H, W).
template <typename T>
at::Tensor loss_backward_impl(const at::Tensor& logits, const Layout& l, const at::Tensor& target,
                              const std::optional<at::Tensor>& weights, const Grids<T>& g, const at::Tensor& lse,
                              const at::Tensor& mu, const std::optional<at::Tensor>& kept, double cotangent,
                              int64_t ndim, double inv_temperature, double sigma, Regularizer regularizer,
                              double reg_weight, Distance distance) {
  const bool divergence = regularizer == Regularizer::kKL || regularizer == Regularizer::kJS;
  std::vector<at::Tensor> log_factors;
  std::optional<std::vector<at::Tensor>> factors;
  if (divergence) {
    std::tie(log_factors, factors) =
        target_gaussians<T>(target, g, l, ndim, sigma, regularizer == Regularizer::kJS);
  }
  std::vector<at::Tensor> per_axis = per_axis_tensors(l, logits.options());
  const std::array<T*, 3> a = pointers<T>(per_axis);
  std::optional<at::Tensor> coef;
  if (divergence) coef = at::empty({l.n}, logits.options());
  T* coef_p = coef ? coef->data_ptr<T>() : nullptr;
  const T* mu_p = mu.data_ptr<T>();
  const T* kept_p = kept ? kept->data_ptr<T>() : nullptr;
  const T* t_p = target.data_ptr<T>();
  const T* w_p = weights ? weights->data_ptr<T>() : nullptr;
  const T mean_weight = static_cast<T>(1.0 / static_cast<double>(std::max<int64_t>(l.n, 1)));
  std::array<const T*, 3> lg{};
  if (divergence) lg = {log_factors[0].data_ptr<T>(), log_factors[1].data_ptr<T>(), log_factors[2].data_ptr<T>()};
  const T ct = static_cast<T>(cotangent), sigma_squared = static_cast<T>(sigma * sigma);
  const T weight = static_cast<T>(reg_weight), log_two = static_cast<T>(std::log(2.0));

  for (int64_t i = 0; i < l.n; ++i) {
    const T* mu_i = mu_p + i * ndim;
    const T scale = ct * (w_p != nullptr ? w_p[i] : mean_weight);
    std::array<T, 3> diff{}, mean_coef{};
    for (int64_t k = 0; k < ndim; ++k) diff[k] = mu_i[k] - t_p[i * ndim + k];
    distance_gradient(diff.data(), ndim, distance, mean_coef.data());
    T c = 0;
    for (int k = 0; k < 3; ++k) {
      T* a_k = a[k] + i * g.n[k];
      if (k >= ndim) {
        a_k[0] = 0;
        continue;
      }
      const T coef_k = mean_coef[k] * scale;
      for (int64_t j = 0; j < g.n[k]; ++j) a_k[j] = coef_k * g.axis[k][j];
      c += coef_k * mu_i[k];
    }
    const T scale_reg = scale * weight;
    if (regularizer == Regularizer::kVariance) {
      for (int64_t k = 0; k < ndim; ++k) {
        const T var = kept_p[i * ndim + k], ps = pixel_scale<T>(g.n[k]);
        const T var_coef = T(2) * (var * ps - sigma_squared) * ps * scale_reg;
        T* a_k = a[k] + i * g.n[k];
        for (int64_t j = 0; j < g.n[k]; ++j) {
          const T centred = g.axis[k][j] - mu_i[k];
          a_k[j] += var_coef * centred * centred;
        }
        c += var_coef * var;
      }
    } else if (regularizer == Regularizer::kKL) {
      for (int64_t k = 0; k < ndim; ++k) {
        T* a_k = a[k] + i * g.n[k];
        const T* lg_k = lg[k] + i * g.n[k];
        for (int64_t j = 0; j < g.n[k]; ++j) a_k[j] -= scale_reg * lg_k[j];
      }
      coef_p[i] = scale_reg;
      c += scale_reg * kept_p[i];
    } else if (regularizer == Regularizer::kJS) {
      coef_p[i] = scale_reg;
      c += T(0.5) * scale_reg * (kept_p[i] - log_two);
    }
    for (int64_t j = 0; j < g.n[0]; ++j) a[0][i * g.n[0] + j] -= c;
  }
  switch (regularizer) {
    case Regularizer::kKL:
      return gradient_impl<T, DivergenceKind::kKL>(logits, l, inv_temperature, lse, per_axis, coef, std::nullopt);
    case Regularizer::kJS:
      return gradient_impl<T, DivergenceKind::kJS>(logits, l, inv_temperature, lse, per_axis, coef, factors);
    default:
      return gradient_impl<T, DivergenceKind::kNone>(logits, l, inv_temperature, lse, per_axis, std::nullopt,
                                                     std::nullopt);
  }
}

// ------------------------------------------------------------------------ entry points

Statistics softmax_statistics(const at::Tensor& logits, double inv_temperature, bool entropy,
                              const std::optional<std::vector<at::Tensor>>& mixture) {
  constexpr const char* pass = "softmax_statistics";
  const Layout l = check_heatmaps(pass, logits);
  if (mixture) check_per_axis(pass, "mixture", *mixture, l, logits);
  Statistics result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    result = statistics_impl<scalar_t>(logits, l, inv_temperature, entropy, mixture);
  });
  return result;
}

at::Tensor gradient_map(const at::Tensor& logits, double inv_temperature, const at::Tensor& lse,
                        const std::vector<at::Tensor>& per_axis, DivergenceKind kind,
                        const std::optional<at::Tensor>& coef, const std::optional<std::vector<at::Tensor>>& factors) {
  constexpr const char* pass = "gradient_map";
  const Layout l = check_heatmaps(pass, logits);
  check_per_heatmap(pass, "lse", lse, l, logits);
  check_per_axis(pass, "per_axis", per_axis, l, logits);
  const bool divergence = kind != DivergenceKind::kNone;
  TORCH_CHECK(coef.has_value() == divergence, pass, ": coef must be a tensor for KL and JS and None for NONE, got ",
              coef.has_value() ? "a tensor" : "None", " for ", kind_name(kind));
  if (coef) check_per_heatmap(pass, "coef", *coef, l, logits);
  TORCH_CHECK(factors.has_value() == (kind == DivergenceKind::kJS), pass,
              ": factors must be a list of tensors for JS and None for NONE and KL, got ",
              factors.has_value() ? "a list" : "None", " for ", kind_name(kind));
  if (factors) check_per_axis(pass, "factors", *factors, l, logits);

  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    switch (kind) {
      case DivergenceKind::kNone:
        result = gradient_impl<scalar_t, DivergenceKind::kNone>(logits, l, inv_temperature, lse, per_axis, coef, factors);
        break;
      case DivergenceKind::kKL:
        result = gradient_impl<scalar_t, DivergenceKind::kKL>(logits, l, inv_temperature, lse, per_axis, coef, factors);
        break;
      case DivergenceKind::kJS:
        result = gradient_impl<scalar_t, DivergenceKind::kJS>(logits, l, inv_temperature, lse, per_axis, coef, factors);
        break;
    }
  });
  TORCH_CHECK(result.defined(), pass, ": unknown divergence kind ", static_cast<int>(kind));
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_heatmap(const at::Tensor& logits, int64_t ndim,
                                                               double inv_temperature) {
  constexpr const char* pass = "softmax_heatmap";
  const Layout l = check_heatmaps(pass, logits, "logits", /*allow_16_bit=*/true);
  check_spatial(pass, "logits", l, ndim, inv_temperature);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), pass, [&] {
    result = softmax_heatmap_impl<scalar_t>(logits, l, ndim, inv_temperature);
  });
  return result;
}

at::Tensor heatmap_gradient(const at::Tensor& heatmap, const std::vector<at::Tensor>& per_axis,
                            const std::optional<at::Tensor>& elementwise, int64_t ndim, double inv_temperature) {
  constexpr const char* pass = "heatmap_gradient";
  const Layout l = check_heatmaps(pass, heatmap, "heatmap", /*allow_16_bit=*/true);
  check_spatial(pass, "heatmap", l, ndim, inv_temperature);
  check_per_axis(pass, "per_axis", per_axis, l, heatmap, "heatmap");
  if (elementwise) {
    check_like_logits(pass, "elementwise", *elementwise, heatmap.sizes(), "(N, D, H, W), the shape of heatmap",
                      heatmap, "heatmap");
  }
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmap.scalar_type(), pass, [&] {
    result = heatmap_gradient_impl<scalar_t>(heatmap, l, per_axis, elementwise, inv_temperature);
  });
  return result;
}

// (N, ndim) per-point arguments (target, mu, cotangent, var) and their checks.
void check_per_point(const char* pass, const char* name, const at::Tensor& tensor, const Layout& l, int64_t ndim,
                     const at::Tensor& logits) {
  check_like_logits(pass, name, tensor, {l.n, ndim}, "(N, ndim)", logits);
}

std::tuple<at::Tensor, at::Tensor> soft_argmax_forward(const at::Tensor& logits, const std::vector<at::Tensor>& grids,
                                                       int64_t ndim, double inv_temperature) {
  constexpr const char* pass = "soft_argmax_forward";
  const Layout l = check_heatmaps(pass, logits);
  check_spatial(pass, "logits", l, ndim, inv_temperature);
  check_grids(pass, grids, l, logits);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    result = moments_impl<scalar_t>(logits, l, ndim, inv_temperature, grids_of<scalar_t>(grids, l));
  });
  return result;
}

at::Tensor soft_argmax_backward(const at::Tensor& logits, const std::vector<at::Tensor>& grids, const at::Tensor& lse,
                                const at::Tensor& mu, const at::Tensor& cotangent, int64_t ndim,
                                double inv_temperature) {
  constexpr const char* pass = "soft_argmax_backward";
  const Layout l = check_heatmaps(pass, logits);
  check_spatial(pass, "logits", l, ndim, inv_temperature);
  check_grids(pass, grids, l, logits);
  check_per_heatmap(pass, "lse", lse, l, logits);
  check_per_point(pass, "mu", mu, l, ndim, logits);
  check_per_point(pass, "cotangent", cotangent, l, ndim, logits);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    const auto per_axis = soft_argmax_per_axis<scalar_t>(mu, cotangent, grids_of<scalar_t>(grids, l), l, ndim);
    result = gradient_impl<scalar_t, DivergenceKind::kNone>(logits, l, inv_temperature, lse, per_axis, std::nullopt,
                                                            std::nullopt);
  });
  return result;
}

at::Tensor soft_argmax_backward_from_heatmap(const at::Tensor& heatmap, const std::vector<at::Tensor>& grids,
                                             const at::Tensor& mu, const at::Tensor& cotangent, int64_t ndim,
                                             double inv_temperature) {
  constexpr const char* pass = "soft_argmax_backward_from_heatmap";
  const Layout l = check_heatmaps(pass, heatmap, "heatmap", /*allow_16_bit=*/true);
  check_spatial(pass, "heatmap", l, ndim, inv_temperature);
  check_grids(pass, grids, l, heatmap);
  check_per_point(pass, "mu", mu, l, ndim, heatmap);
  check_per_point(pass, "cotangent", cotangent, l, ndim, heatmap);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmap.scalar_type(), pass, [&] {
    using T = compute_t<scalar_t>;
    const auto per_axis = soft_argmax_per_axis<T>(mu, cotangent, grids_of<T>(grids, l), l, ndim);
    result = heatmap_gradient_impl<scalar_t>(heatmap, l, per_axis, std::nullopt, inv_temperature);
  });
  return result;
}

// The arguments every loss rule shares.
void check_loss_arguments(const char* pass, const at::Tensor& logits, const Layout& l, const at::Tensor& target,
                          const std::optional<at::Tensor>& weights, const std::vector<at::Tensor>& grids,
                          int64_t ndim, double inv_temperature, double sigma) {
  check_spatial(pass, "logits", l, ndim, inv_temperature);
  check_grids(pass, grids, l, logits);
  check_per_point(pass, "target", target, l, ndim, logits);
  if (weights) check_per_heatmap(pass, "weights", *weights, l, logits);
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0, pass, ": sigma must be positive and finite, got ", sigma);
}

LossForward loss_forward(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weights,
                         const std::vector<at::Tensor>& grids, int64_t ndim, double inv_temperature, double sigma,
                         Regularizer regularizer, double reg_weight, Distance distance) {
  constexpr const char* pass = "loss_forward";
  const Layout l = check_heatmaps(pass, logits);
  check_loss_arguments(pass, logits, l, target, weights, grids, ndim, inv_temperature, sigma);
  LossForward result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    result = loss_forward_impl<scalar_t>(logits, l, target, weights, grids_of<scalar_t>(grids, l), ndim,
                                         inv_temperature, sigma, regularizer, reg_weight, distance);
  });
  return result;
}

at::Tensor loss_backward(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weights,
                         const std::vector<at::Tensor>& grids, const at::Tensor& lse, const at::Tensor& mu,
                         const std::optional<at::Tensor>& kept, double cotangent, int64_t ndim, double inv_temperature,
                         double sigma, Regularizer regularizer, double reg_weight, Distance distance) {
  constexpr const char* pass = "loss_backward";
  const Layout l = check_heatmaps(pass, logits);
  check_loss_arguments(pass, logits, l, target, weights, grids, ndim, inv_temperature, sigma);
  check_per_heatmap(pass, "lse", lse, l, logits);
  check_per_point(pass, "mu", mu, l, ndim, logits);
  const bool needs_kept = regularizer != Regularizer::kNone;
  TORCH_CHECK(kept.has_value() == needs_kept, pass, ": kept must be ",
              needs_kept ? "the forward pass's var or divergence" : "None without a regulariser");
  if (regularizer == Regularizer::kVariance) check_per_point(pass, "kept (var)", *kept, l, ndim, logits);
  if (needs_kept && regularizer != Regularizer::kVariance) check_per_heatmap(pass, "kept (divergence)", *kept, l, logits);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), pass, [&] {
    result = loss_backward_impl<scalar_t>(logits, l, target, weights, grids_of<scalar_t>(grids, l), lse, mu, kept,
                                          cotangent, ndim, inv_temperature, sigma, regularizer, reg_weight, distance);
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dsnt-core's native CPU passes (backends/dsnt_torch/native_passes.cpp)";
  py::enum_<DivergenceKind>(m, "DivergenceKind", "The elementwise term of gradient_map: none, KL or JS.")
      .value("NONE", DivergenceKind::kNone)
      .value("KL", DivergenceKind::kKL)
      .value("JS", DivergenceKind::kJS);
  m.def("softmax_statistics", &softmax_statistics,
        "(lse, (mx, my, mz), neg_entropy, m_log_m, p_log_m) of (N, D, H, W) logits; the last three None "
        "unless entropy is true or mixture = [fx, fy, fz] is given.",
        py::arg("logits"), py::arg("inv_temperature"), py::arg("entropy"), py::arg("mixture"));
  m.def("gradient_map", &gradient_map,
        "P * (ax + ay + az + e) / T for (N, D, H, W) logits, e given by kind, coef and factors = [fx, fy, fz].",
        py::arg("logits"), py::arg("inv_temperature"), py::arg("lse"), py::arg("per_axis"), py::arg("kind"),
        py::arg("coef"), py::arg("factors"));
  m.def("softmax_heatmap", &softmax_heatmap,
        "(lse, mu, P) of (N, D, H, W) logits: lse (N,) and mu (N, ndim) in the compute dtype, "
        "P = softmax(logits / T) in the logits' dtype and shape.",
        py::arg("logits"), py::arg("ndim"), py::arg("inv_temperature"));
  m.def("heatmap_gradient", &heatmap_gradient,
        "P * (ax + ay + az + elementwise) / T for an (N, D, H, W) heatmap P, in the compute dtype; "
        "per_axis = [ax, ay, az], elementwise None or of P's shape.",
        py::arg("heatmap"), py::arg("per_axis"), py::arg("elementwise"), py::arg("ndim"),
        py::arg("inv_temperature"));
  py::enum_<Regularizer>(m, "Regularizer", "The regulariser of the loss rules: none, var, kl or js.")
      .value("NONE", Regularizer::kNone)
      .value("VAR", Regularizer::kVariance)
      .value("KL", Regularizer::kKL)
      .value("JS", Regularizer::kJS);
  py::enum_<Distance>(m, "Distance", "The per-point distance of the loss rules: euclidean, l1 or mse.")
      .value("EUCLIDEAN", Distance::kEuclidean)
      .value("L1", Distance::kL1)
      .value("MSE", Distance::kMSE);
  m.def("release_cached_buffers", [] { BufferCache::instance().release(); },
        "Free the buffers kept for the next heatmap-sized outputs.");
  m.def("soft_argmax_forward", &soft_argmax_forward,
        "(lse, mu) of (N, D, H, W) float32/float64 logits, grids = [gx, gy, gz]: the soft_argmax forward rule.",
        py::arg("logits"), py::arg("grids"), py::arg("ndim"), py::arg("inv_temperature"));
  m.def("soft_argmax_backward", &soft_argmax_backward,
        "The soft_argmax backward rule from the logits, lse (N,), mu and cotangent (N, ndim).", py::arg("logits"),
        py::arg("grids"), py::arg("lse"), py::arg("mu"), py::arg("cotangent"), py::arg("ndim"),
        py::arg("inv_temperature"));
  m.def("soft_argmax_backward_from_heatmap", &soft_argmax_backward_from_heatmap,
        "The soft_argmax backward rule from a kept P (any float dtype), mu and cotangent (N, ndim).",
        py::arg("heatmap"), py::arg("grids"), py::arg("mu"), py::arg("cotangent"), py::arg("ndim"),
        py::arg("inv_temperature"));
  m.def("loss_forward", &loss_forward,
        "(loss, lse, mu, kept) of the dsnt_loss forward rule; weights (N,) or None for the mean.", py::arg("logits"),
        py::arg("target"), py::arg("weights"), py::arg("grids"), py::arg("ndim"), py::arg("inv_temperature"),
        py::arg("sigma"), py::arg("regularizer"), py::arg("reg_weight"), py::arg("distance"));
  m.def("loss_backward", &loss_backward, "The gradient of cotangent * loss of the dsnt_loss backward rule.",
        py::arg("logits"), py::arg("target"), py::arg("weights"), py::arg("grids"), py::arg("lse"), py::arg("mu"),
        py::arg("kept"), py::arg("cotangent"), py::arg("ndim"), py::arg("inv_temperature"), py::arg("sigma"),
        py::arg("regularizer"), py::arg("reg_weight"), py::arg("distance"));
}
