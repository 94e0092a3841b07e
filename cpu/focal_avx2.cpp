// AVX2 inner loops of the CPU focal loss (see focal_avx2.h); formulas as in focal_loss.cpp.
// Only this file is compiled for AVX2 (function attributes), so the library still loads on
// CPUs without it.

#include "focal_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#include <cmath>

#pragma GCC push_options
#pragma GCC target("avx2,fma")
extern "C" {
__m256 Sleef_expf8_u10avx2(__m256);    // exported by libtorch_cpu
__m256 Sleef_log1pf8_u10avx2(__m256);  // exported by libtorch_cpu
}

namespace detlite::avx2 {
namespace {

// Per lane: p = sigmoid(x), 1 - p, ce (BCE against s), q ** gamma with q = p.
struct Lanes {
  __m256 p, one_minus_p, ce, mod;
};

inline Lanes lanes(__m256 x, const Negative& k) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 e = Sleef_expf8_u10avx2(_mm256_or_ps(x, sign));  // exp(-|x|)
  const __m256 log1p_e = Sleef_log1pf8_u10avx2(e);
  const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
  const __m256 e_inv = _mm256_mul_ps(e, inv);
  const __m256 non_negative = _mm256_cmp_ps(x, zero, _CMP_GE_OQ);
  Lanes l;
  l.p = _mm256_blendv_ps(e_inv, inv, non_negative);
  l.one_minus_p = _mm256_blendv_ps(inv, e_inv, non_negative);
  const __m256 relu_x = _mm256_max_ps(x, zero);
  l.ce = _mm256_add_ps(_mm256_fnmadd_ps(x, _mm256_set1_ps(k.s), relu_x), log1p_e);
  if (k.square) {
    l.mod = _mm256_mul_ps(l.p, l.p);
  } else {  // p ** gamma = exp(-gamma * softplus(-x)), softplus(-x) = relu(-x) + log1p(e)
    const __m256 softplus_neg = _mm256_add_ps(_mm256_sub_ps(relu_x, x), log1p_e);
    l.mod = Sleef_expf8_u10avx2(_mm256_mul_ps(_mm256_set1_ps(-k.gamma), softplus_neg));
  }
  return l;
}

// The scalar form of one negative element, for the tails.
inline float scalar_loss(float x, const Negative& k, bool grad) {
  const float e = std::exp(-std::fabs(x)), log1p_e = std::log1p(e), inv = 1.0f / (1.0f + e);
  const float p = x >= 0 ? inv : e * inv, one_minus_p = x >= 0 ? e * inv : inv;
  const float relu_x = x > 0 ? x : 0.0f, relu_neg_x = x < 0 ? -x : 0.0f;
  const float ce = relu_x - x * k.s + log1p_e;
  const float mod = k.square ? p * p : std::exp(-k.gamma * (relu_neg_x + log1p_e));
  if (!grad) return k.alpha * mod * ce;
  return k.alpha * mod * (k.gamma * one_minus_p * ce + p - k.s);
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

}  // namespace

bool available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

float loss_sum(const float* row, int64_t n, const Negative& k) {
  __m256 acc = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const Lanes l = lanes(_mm256_loadu_ps(row + c), k);
    acc = _mm256_fmadd_ps(l.mod, l.ce, acc);
  }
  float sum = horizontal_sum(acc) * k.alpha;
  for (; c < n; ++c) sum += scalar_loss(row[c], k, false);
  return sum;
}

void grad(const float* row, float* out, int64_t n, const Negative& k, float scale) {
  const __m256 factor = _mm256_set1_ps(scale * k.alpha), gamma = _mm256_set1_ps(k.gamma);
  const __m256 s = _mm256_set1_ps(k.s);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const Lanes l = lanes(_mm256_loadu_ps(row + c), k);
    // alpha * p**gamma * (gamma * (1 - p) * ce + p - s)
    const __m256 inner =
        _mm256_fmadd_ps(_mm256_mul_ps(gamma, l.one_minus_p), l.ce, _mm256_sub_ps(l.p, s));
    _mm256_storeu_ps(out + c, _mm256_mul_ps(factor, _mm256_mul_ps(l.mod, inner)));
  }
  for (; c < n; ++c) out[c] = scale * scalar_loss(row[c], k, true);
}

}  // namespace detlite::avx2
#pragma GCC pop_options

#else  // no AVX2 build: the scalar loops of focal_loss.cpp always run

namespace detlite::avx2 {
bool available() { return false; }
float loss_sum(const float*, int64_t, const Negative&) { return 0.0f; }
void grad(const float*, float*, int64_t, const Negative&, float) {}
}  // namespace detlite::avx2

#endif
