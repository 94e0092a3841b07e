// The negative-only inner loops of the CPU focal loss for float logits, 8 lanes at a time with
// AVX2 + FMA and the vectorised exp / log1p that libtorch_cpu exports (SLEEF, 1 ulp). Chosen at
// run time (`avx2_available`); elsewhere (no AVX2, aarch64) the scalar loops run.
#pragma once

#include <cstdint>

namespace detlite::avx2 {

bool available();

// Constants of the negative elements (t = 0).
struct Negative {
  float alpha, s, gamma;
  bool square;  // gamma == 2
};

// sum over c in [0, n) of the loss of row[c] as a negative.
float loss_sum(const float* row, int64_t n, const Negative& k);

// out[c] = scale * d loss / d row[c] as a negative, c in [0, n).
void grad(const float* row, float* out, int64_t n, const Negative& k, float scale);

}  // namespace detlite::avx2
