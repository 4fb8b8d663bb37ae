// Native CPU versions of the softmax_statistics and gradient_map passes of the kernel contract
// (dsnt_core/kernels/contract.py).
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
// (N,) tensors, all contiguous, on the CPU and in the dtype of the heatmaps. The module at the
// end (built by torch.utils.cpp_extension.load_inline from backends/dsnt_torch/native.py)
// checks every argument against that before any pass runs.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::vec::Vectorized;

// Which elementwise term gradient_map adds: dsnt_core.kernels.DivergenceKind, or none.
enum class DivergenceKind { kNone, kKL, kJS };

// ------------------------------------------------------------------------ vector helpers

template <typename T>
T lane_sum(const Vectorized<T>& v) {
  alignas(64) T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T total = 0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) total += lanes[i];
  return total;
}

template <typename T>
T lane_max(const Vectorized<T>& v) {
  alignas(64) T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T best = lanes[0];
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) {
    if (std::isnan(lanes[i])) return lanes[i];
    best = std::max(best, lanes[i]);
  }
  return best;
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

// exp_u20 clamps its argument, so it would turn NaN into a finite number: every pass checks
// each heatmap's peak (forward) or log-sum-exp (backward) and writes NaN for the whole
// heatmap when it is NaN or +inf, as the array-API passes do.
template <typename T>
Vectorized<T> fast_exp(const Vectorized<T>& v) {
  return v.exp_u20();
}

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

// The heatmaps: a contiguous 4-D (N, D, H, W) CPU tensor of float32 or float64.
Layout check_heatmaps(const char* pass, const at::Tensor& logits) {
  TORCH_CHECK(logits.device().is_cpu(), pass, ": logits must be a CPU tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 4, pass, ": logits must be 4-D (N, D, H, W), got shape ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, pass,
              ": logits must be float32 or float64, got ", dtype_name(logits.scalar_type()));
  TORCH_CHECK(logits.is_contiguous(), pass, ": logits must be contiguous, got shape ", logits.sizes(),
              " with strides ", logits.strides());
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3)};
}

// A per-heatmap argument: the given shape, and the device and dtype of the logits, contiguous.
void check_like_logits(const char* pass, const std::string& name, const at::Tensor& tensor,
                       at::IntArrayRef expected_shape, const char* shape_meaning, const at::Tensor& logits) {
  TORCH_CHECK(tensor.device().is_cpu(), pass, ": ", name, " must be a CPU tensor, got device ", tensor.device());
  TORCH_CHECK(tensor.sizes() == expected_shape, pass, ": ", name, " must have shape ", expected_shape, " = ",
              shape_meaning, ", got ", tensor.sizes());
  TORCH_CHECK(tensor.scalar_type() == logits.scalar_type(), pass, ": ", name, " must have the dtype of logits (",
              dtype_name(logits.scalar_type()), "), got ", dtype_name(tensor.scalar_type()));
  TORCH_CHECK(tensor.is_contiguous(), pass, ": ", name, " must be contiguous, got strides ", tensor.strides());
}

// Per-axis vectors, x first: (N, W), (N, H), (N, D).
void check_per_axis(const char* pass, const char* name, const std::vector<at::Tensor>& vectors, const Layout& l,
                    const at::Tensor& logits) {
  TORCH_CHECK(vectors.size() == 3, pass, ": ", name, " must hold 3 tensors (x, y, z), got ", vectors.size());
  for (int k = 0; k < 3; ++k) {
    check_like_logits(pass, std::string(name) + "[" + std::to_string(k) + "] (" + kAxisNames[k] + ")", vectors[k],
                      {l.n, l.axis(k)}, kAxisShapes[k], logits);
  }
}

// Per-heatmap numbers: (N,).
void check_per_heatmap(const char* pass, const char* name, const at::Tensor& values, const Layout& l,
                       const at::Tensor& logits) {
  check_like_logits(pass, name, values, {l.n}, "(N,)", logits);
}

int64_t grain_for(const Layout& l) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(l.size(), 1)); }

// ---------------------------------------------------------------------------- the passes

template <typename T>
T heatmap_max(const T* x, int64_t size) {
  using Vec = Vectorized<T>;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  Vec best(neg_inf);
  for_each_vector<T>(size, [&](int64_t j, int64_t count) { best = at::vec::maximum(best, load(x + j, count, neg_inf)); });
  return lane_max(best);
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
  at::Tensor grad = at::empty_like(logits);
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
}
