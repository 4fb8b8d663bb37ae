// Native CPU versions of the two full-size passes of dsnt_core._heatmap_passes.
//
// Same arguments and results as the array-API passes (see that module for the math); the
// rules themselves stay in dsnt_core._fused_rules. Each heatmap is handled by one thread in
// one or two sweeps while it sits in the L1/L2 cache, with the exp and log of ATen's
// vectorised math (at::vec: SLEEF's log, and ATen's polynomial exp_u20, which flushes results
// below the smallest normal float to zero instead of taking the slow path for subnormal
// numbers; NaN is handled per heatmap instead, see below). Heatmaps come as (N, D, H, W) contiguous tensors: 2-D
// heatmaps have D = 1, 1-D heatmaps D = H = 1. Coordinates: x along W, y along H, z along D.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;

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

struct Layout {
  int64_t n, d, h, w;
  int64_t size() const { return d * h * w; }
};

Layout layout_of(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 4 && logits.is_contiguous() && logits.device().is_cpu(),
              "native passes need contiguous (N, D, H, W) CPU logits");
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3)};
}

int64_t grain_for(const Layout& l) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(l.size(), 1)); }

template <typename T>
T heatmap_max(const T* x, int64_t size) {
  using Vec = Vectorized<T>;
  Vec best(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + Vec::size() <= size; j += Vec::size()) best = at::vec::maximum(best, Vec::loadu(x + j));
  T peak = lane_max(best);
  for (; j < size; ++j) {
    if (std::isnan(x[j])) return x[j];
    peak = std::max(peak, x[j]);
  }
  return peak;
}

// lse, the marginals along x (W), y (H), z (D), (with entropy) sum P log P and
// (with mixture) sum M log M and sum P log M for M = (P + fx fy fz) / 2. For the mixture
// sums, exp(u - peak) is kept in a per-thread scratch heatmap, so P costs no second exp.
template <typename T>
std::vector<at::Tensor> statistics_impl(const at::Tensor& logits, double inv_temperature, bool entropy,
                                        bool mixture, const at::Tensor& fx, const at::Tensor& fy,
                                        const at::Tensor& fz) {
  using Vec = Vectorized<T>;
  const Layout l = layout_of(logits);
  auto options = logits.options();
  at::Tensor lse = at::empty({l.n}, options);
  at::Tensor neg_entropy = at::empty({l.n}, options);
  at::Tensor mx = at::empty({l.n, l.w}, options), my = at::empty({l.n, l.h}, options);
  at::Tensor mz = at::empty({l.n, l.d}, options);
  at::Tensor m_log_m = at::empty({l.n}, options), p_log_m = at::empty({l.n}, options);
  const T* data = logits.data_ptr<T>();
  T *mm_p = m_log_m.data_ptr<T>(), *pm_p = p_log_m.data_ptr<T>();
  const T* fx_p = mixture ? fx.data_ptr<T>() : nullptr;
  const T* fy_p = mixture ? fy.data_ptr<T>() : nullptr;
  const T* fz_p = mixture ? fz.data_ptr<T>() : nullptr;
  const T tiny = std::numeric_limits<T>::min();
  T* lse_p = lse.data_ptr<T>();
  T* ent_p = neg_entropy.data_ptr<T>();
  T* mx_p = mx.data_ptr<T>();
  T* my_p = my.data_ptr<T>();
  T* mz_p = mz.data_ptr<T>();
  const T inv_t = static_cast<T>(inv_temperature);
  const T lowest = std::numeric_limits<T>::lowest();
  const int64_t rows = l.d * l.h;

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    std::vector<T> columns(l.w), row_totals(rows), scratch(mixture ? l.size() : 0);
    for (int64_t i = begin; i < end; ++i) {
      const T* x = data + i * l.size();
      const T peak = heatmap_max(x, l.size()) * inv_t;
      // sum M log M and sum P log M, P = scale * scratch (or uniform, for an all -inf heatmap).
      auto mixture_sums = [&](bool uniform, T scale) {
        const Vec v_scale(scale), v_half(T(0.5)), v_tiny(tiny), v_uniform(T(1) / l.size());
        Vec acc_mm(0), acc_pm(0);
        T mm = 0, pm = 0;
        for (int64_t z = 0; z < l.d; ++z) {
          for (int64_t y = 0; y < l.h; ++y) {
            const int64_t offset = (z * l.h + y) * l.w;
            const T* gx = fx_p + i * l.w;
            const T gyz = fy_p[i * l.h + y] * fz_p[i * l.d + z];
            const Vec v_gyz(gyz);
            int64_t j = 0;
            for (; j + Vec::size() <= l.w; j += Vec::size()) {
              const Vec p = uniform ? v_uniform : Vec::loadu(scratch.data() + offset + j) * v_scale;
              const Vec m = v_half * (p + Vec::loadu(gx + j) * v_gyz);
              const Vec log_m = fast_log(at::vec::maximum(m, v_tiny));
              acc_mm = acc_mm + m * log_m;
              acc_pm = acc_pm + p * log_m;
            }
            for (; j < l.w; ++j) {
              const T p = uniform ? T(1) / l.size() : scratch[offset + j] * scale;
              const T m = T(0.5) * (p + gx[j] * gyz);
              const T log_m = std::log(std::max(m, tiny));
              mm += m * log_m;
              pm += p * log_m;
            }
          }
        }
        mm_p[i] = mm + lane_sum(acc_mm);
        pm_p[i] = pm + lane_sum(acc_pm);
      };
      if (std::isinf(peak) && peak < 0) {  // every logit is -inf: uniform, lse = 0
        if (mixture) mixture_sums(true, T(0));
        lse_p[i] = 0;
        ent_p[i] = -std::log(static_cast<T>(l.size()));
        std::fill(mx_p + i * l.w, mx_p + (i + 1) * l.w, T(1) / l.w);
        std::fill(my_p + i * l.h, my_p + (i + 1) * l.h, T(1) / l.h);
        std::fill(mz_p + i * l.d, mz_p + (i + 1) * l.d, T(1) / l.d);
        continue;
      }
      if (poisoned(peak)) {
        const T nan = std::numeric_limits<T>::quiet_NaN();
        lse_p[i] = ent_p[i] = mm_p[i] = pm_p[i] = nan;
        std::fill(mx_p + i * l.w, mx_p + (i + 1) * l.w, nan);
        std::fill(my_p + i * l.h, my_p + (i + 1) * l.h, nan);
        std::fill(mz_p + i * l.d, mz_p + (i + 1) * l.d, nan);
        continue;
      }
      std::fill(columns.begin(), columns.end(), T(0));
      const Vec v_inv(inv_t), v_peak(peak), v_lowest(lowest);
      T shift_sum = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = x + r * l.w;
        Vec acc(0), ent(0);
        int64_t j = 0;
        for (; j + Vec::size() <= l.w; j += Vec::size()) {
          const Vec shifted = Vec::loadu(row + j) * v_inv - v_peak;
          const Vec e = fast_exp(shifted);
          if (mixture) e.store(scratch.data() + r * l.w + j);
          acc = acc + e;
          (Vec::loadu(columns.data() + j) + e).store(columns.data() + j);
          if (entropy) ent = ent + e * at::vec::maximum(shifted, v_lowest);
        }
        T total = lane_sum(acc), shift = entropy ? lane_sum(ent) : T(0);
        for (; j < l.w; ++j) {
          const T shifted = row[j] * inv_t - peak;
          const T e = std::exp(shifted);
          if (mixture) scratch[r * l.w + j] = e;
          total += e;
          columns[j] += e;
          if (entropy) shift += e * std::max(shifted, lowest);
        }
        row_totals[r] = total;
        shift_sum += shift;
      }
      T total = 0;
      for (int64_t r = 0; r < rows; ++r) total += row_totals[r];
      const T inv_total = T(1) / total, log_total = std::log(total);
      lse_p[i] = peak + log_total;
      ent_p[i] = shift_sum * inv_total - log_total;
      if (mixture) mixture_sums(false, inv_total);
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
  return {lse, mx, my, mz, neg_entropy, m_log_m, p_log_m};
}

// P * (ax[x] + ay[y] + az[z] + e) / T; e = 0 (mode 0), coef log P (mode 1, KL) or
// coef (log P - log(P + fx fy fz)) / 2 (mode 2, JS), with log P floored at -1e4 (LOG_P_FLOOR
// of the array-API passes: exp of it is 0, and coef * log P stays finite).
template <typename T>
at::Tensor gradient_impl(const at::Tensor& logits, double inv_temperature, const at::Tensor& lse,
                         const at::Tensor& ax, const at::Tensor& ay, const at::Tensor& az, int64_t mode,
                         const at::Tensor& coef, const at::Tensor& fx, const at::Tensor& fy, const at::Tensor& fz) {
  using Vec = Vectorized<T>;
  const Layout l = layout_of(logits);
  at::Tensor grad = at::empty_like(logits);
  const T* data = logits.data_ptr<T>();
  T* out = grad.data_ptr<T>();
  const T *lse_p = lse.data_ptr<T>(), *ax_p = ax.data_ptr<T>(), *ay_p = ay.data_ptr<T>(), *az_p = az.data_ptr<T>();
  const T* coef_p = mode ? coef.data_ptr<T>() : nullptr;
  const T* fx_p = mode == 2 ? fx.data_ptr<T>() : nullptr;
  const T* fy_p = mode == 2 ? fy.data_ptr<T>() : nullptr;
  const T* fz_p = mode == 2 ? fz.data_ptr<T>() : nullptr;
  const T inv_t = static_cast<T>(inv_temperature);
  const T log_p_floor = T(-1e4), tiny = std::numeric_limits<T>::min();

  at::parallel_for(0, l.n, grain_for(l), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    for (int64_t i = begin; i < end; ++i) {
      const T* x = data + i * l.size();
      T* g = out + i * l.size();
      const T* a_x = ax_p + i * l.w;
      const T shift = lse_p[i];
      if (poisoned(shift)) {
        std::fill(g, g + l.size(), std::numeric_limits<T>::quiet_NaN());
        continue;
      }
      const T c = mode == 1 ? coef_p[i] : mode == 2 ? T(0.5) * coef_p[i] : T(0);
      const Vec v_inv(inv_t), v_shift(shift), v_floor(log_p_floor), v_tiny(tiny), v_c(c);
      for (int64_t z = 0; z < l.d; ++z) {
        for (int64_t y = 0; y < l.h; ++y) {
          const int64_t offset = (z * l.h + y) * l.w;
          const T base = ay_p[i * l.h + y] + az_p[i * l.d + z];
          const T gyz = mode == 2 ? fy_p[i * l.h + y] * fz_p[i * l.d + z] : T(0);
          const Vec v_base(base), v_gyz(gyz);
          int64_t j = 0;
          for (; j + Vec::size() <= l.w; j += Vec::size()) {
            Vec log_p = Vec::loadu(x + offset + j) * v_inv - v_shift;
            Vec inner = Vec::loadu(a_x + j) + v_base;
            Vec p;
            if (mode == 0) {
              p = fast_exp(log_p);
            } else {
              log_p = at::vec::maximum(log_p, v_floor);
              p = fast_exp(log_p);
              if (mode == 1) {
                inner = inner + v_c * log_p;
              } else {
                const Vec twice_m = p + Vec::loadu(fx_p + i * l.w + j) * v_gyz;
                inner = inner + v_c * (log_p - fast_log(at::vec::maximum(twice_m, v_tiny)));
              }
            }
            (p * inner * v_inv).store(g + offset + j);
          }
          for (; j < l.w; ++j) {
            T log_p = x[offset + j] * inv_t - shift;
            T inner = a_x[j] + base;
            T p;
            if (mode == 0) {
              p = std::exp(log_p);
            } else {
              log_p = std::max(log_p, log_p_floor);
              p = std::exp(log_p);
              if (mode == 1) {
                inner += c * log_p;
              } else {
                inner += c * (log_p - std::log(std::max(p + fx_p[i * l.w + j] * gyz, tiny)));
              }
            }
            g[offset + j] = p * inner * inv_t;
          }
        }
      }
    }
  });
  return grad;
}

}  // namespace

std::vector<at::Tensor> softmax_statistics(const at::Tensor& logits, double inv_temperature, bool entropy,
                                           bool mixture, const at::Tensor& fx, const at::Tensor& fy,
                                           const at::Tensor& fz) {
  std::vector<at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_statistics", [&] {
    result = statistics_impl<scalar_t>(logits, inv_temperature, entropy, mixture, fx, fy, fz);
  });
  return result;
}

at::Tensor gradient_map(const at::Tensor& logits, double inv_temperature, const at::Tensor& lse, const at::Tensor& ax,
                        const at::Tensor& ay, const at::Tensor& az, int64_t mode, const at::Tensor& coef,
                        const at::Tensor& fx, const at::Tensor& fy, const at::Tensor& fz) {
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "gradient_map", [&] {
    result = gradient_impl<scalar_t>(logits, inv_temperature, lse, ax, ay, az, mode, coef, fx, fy, fz);
  });
  return result;
}
