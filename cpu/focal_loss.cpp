// CPU kernels of detlite::sigmoid_focal_loss and detlite::sigmoid_focal_loss_backward.
//
// The formulas and their derivation are in detlite/ops/focal_loss.py. One pass over the logits,
// nothing of size [B, A, C] besides the backward's output: per anchor, the classes other than
// its label go through a branch-free negative-only loop (which the compiler vectorises), the one
// positive element is added on its own, and ignored anchors are skipped. Work is split into
// fixed tasks of kAnchorsPerTask anchors of one image, run by at::parallel_for; the forward
// sums each task in double and the tasks of an image in order, so results do not depend on the
// number of threads. gamma == 2 (EfficientDet's) takes q * q instead of exp(gamma * log q).
// For float logits on AVX2 machines the negative loops run 8 lanes at a time (focal_avx2.cpp).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "focal_avx2.h"

namespace detlite {
namespace {

constexpr int64_t kIgnore = -2;
constexpr int64_t kAnchorsPerTask = 64;

// Per-call constants in the accumulation type (float, or double for double logits).
template <typename acc_t>
struct Focal {
  acc_t alpha_pos, alpha_neg, s_pos, s_neg, gamma;
  bool square;  // gamma == 2

  Focal(double alpha, double gamma_, double smoothing)
      : alpha_pos(alpha), alpha_neg(1.0 - alpha), s_pos(1.0 - 0.5 * smoothing),
        s_neg(0.5 * smoothing), gamma(gamma_), square(gamma_ == 2.0) {}

  // q ** gamma, from q itself or from log q = -softplus(+-x) = -(relu(+-x) + log1p(e)).
  inline acc_t modulating(acc_t q, acc_t relu_signed, acc_t log1p_e) const {
    return square ? q * q : std::exp(-gamma * (relu_signed + log1p_e));
  }

  // Loss (grad = false) or d loss / dx (grad = true) of one element with target `positive`.
  inline acc_t element(acc_t x, bool positive, bool grad) const {
    const acc_t e = std::exp(-std::abs(x));
    const acc_t log1p_e = std::log1p(e);
    const acc_t inv = acc_t(1) / (acc_t(1) + e);
    const acc_t p = x >= 0 ? inv : e * inv;           // sigmoid(x)
    const acc_t one_minus_p = x >= 0 ? e * inv : inv;  // sigmoid(-x)
    const acc_t relu_x = x > 0 ? x : acc_t(0), relu_neg_x = x < 0 ? -x : acc_t(0);
    const acc_t s = positive ? s_pos : s_neg;
    const acc_t ce = relu_x - x * s + log1p_e;
    const acc_t q = positive ? one_minus_p : p;
    const acc_t mod = modulating(q, positive ? relu_x : relu_neg_x, log1p_e);
    const acc_t alpha_t = positive ? alpha_pos : alpha_neg;
    if (!grad) return alpha_t * mod * ce;
    const acc_t p_t = positive ? p : one_minus_p;
    const acc_t signed_gamma = positive ? -gamma : gamma;
    return alpha_t * mod * (signed_gamma * p_t * ce + p - s);
  }
};

avx2::Negative negative_constants(const Focal<float>& f) {
  return {f.alpha_neg, f.s_neg, f.gamma, f.square};
}

// Summed negative-only loss of row[begin, end): 8 lanes at a time for float on AVX2 machines.
template <typename scalar_t, typename acc_t>
acc_t negative_sum(const scalar_t* row, int64_t begin, int64_t end, const Focal<acc_t>& f) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (avx2::available()) return avx2::loss_sum(row + begin, end - begin, negative_constants(f));
  }
  acc_t sum = 0;
  for (int64_t c = begin; c < end; ++c) sum += f.element(static_cast<acc_t>(row[c]), false, false);
  return sum;
}

template <typename scalar_t, typename acc_t>
void negative_grad(const scalar_t* row, scalar_t* out, int64_t begin, int64_t end,
                   const Focal<acc_t>& f, acc_t scale) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (avx2::available())
      return avx2::grad(row + begin, out + begin, end - begin, negative_constants(f), scale);
  }
  for (int64_t c = begin; c < end; ++c)
    out[c] = static_cast<scalar_t>(scale * f.element(static_cast<acc_t>(row[c]), false, true));
}

int64_t tasks_per_image(int64_t anchors) { return (anchors + kAnchorsPerTask - 1) / kAnchorsPerTask; }

template <typename scalar_t>
void forward_kernel(const at::Tensor& logits, const at::Tensor& labels, const Focal<at::opmath_type<scalar_t>>& f,
                    at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = logits.size(0), anchors = logits.size(1), classes = logits.size(2);
  const int64_t per_image = tasks_per_image(anchors);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* label = labels.const_data_ptr<int64_t>();
  std::vector<double> partial(batch * per_image, 0.0);
  at::parallel_for(0, batch * per_image, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / per_image, a0 = (task % per_image) * kAnchorsPerTask;
      double sum = 0;
      for (int64_t a = a0; a < std::min(a0 + kAnchorsPerTask, anchors); ++a) {
        const int64_t t = label[b * anchors + a];
        if (t == kIgnore) continue;
        const scalar_t* row = x + (b * anchors + a) * classes;
        const bool has_positive = t >= 0 && t < classes;
        const int64_t split = has_positive ? t : classes;
        acc_t row_sum = negative_sum(row, 0, split, f);
        if (has_positive) {
          row_sum += f.element(static_cast<acc_t>(row[t]), true, false);
          row_sum += negative_sum(row, t + 1, classes, f);
        }
        sum += row_sum;
      }
      partial[task] = sum;
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    double total = 0;
    for (int64_t j = 0; j < per_image; ++j) total += partial[b * per_image + j];
    if (out.scalar_type() == at::kDouble) out.mutable_data_ptr<double>()[b] = total;
    else out.mutable_data_ptr<float>()[b] = static_cast<float>(total);
  }
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
                     const Focal<at::opmath_type<scalar_t>>& f, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = logits.size(0), anchors = logits.size(1), classes = logits.size(2);
  const int64_t per_image = tasks_per_image(anchors);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* label = labels.const_data_ptr<int64_t>();
  const acc_t* g = grad.const_data_ptr<acc_t>();
  scalar_t* dx = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, batch * per_image, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / per_image, a0 = (task % per_image) * kAnchorsPerTask;
      for (int64_t a = a0; a < std::min(a0 + kAnchorsPerTask, anchors); ++a) {
        const int64_t t = label[b * anchors + a], offset = (b * anchors + a) * classes;
        if (t == kIgnore) {
          std::fill(dx + offset, dx + offset + classes, scalar_t(0));
          continue;
        }
        negative_grad(x + offset, dx + offset, 0, classes, f, g[b]);
        if (t >= 0 && t < classes)
          dx[offset + t] = static_cast<scalar_t>(g[b] * f.element(static_cast<acc_t>(x[offset + t]), true, true));
      }
    }
  });
}

void check_focal(const char* op, const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": logits must be a CPU tensor");
  checks::focal(op, logits, labels);
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& logits_in, const at::Tensor& labels_in,
                                  double alpha, double gamma, double label_smoothing) {
  check_focal("detlite::sigmoid_focal_loss", logits_in, labels_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  at::Tensor out = at::zeros({logits.size(0)}, logits.options().dtype(acc_type(logits)));
  if (logits.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "focal_cpu", [&] {
    const Focal<at::opmath_type<scalar_t>> f(alpha, gamma, label_smoothing);
    forward_kernel<scalar_t>(logits, labels, f, out);
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                           const at::Tensor& labels_in, double alpha,
                                           double gamma, double label_smoothing) {
  constexpr const char* op = "detlite::sigmoid_focal_loss_backward";
  check_focal(op, logits_in, labels_in);
  checks::focal_grad(op, grad_in, logits_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  const at::Tensor grad = grad_in.to(acc_type(logits)).contiguous();
  at::Tensor out = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "focal_bw_cpu", [&] {
    const Focal<at::opmath_type<scalar_t>> f(alpha, gamma, label_smoothing);
    backward_kernel<scalar_t>(grad, logits, labels, f, out);
  });
  return out;
}

}  // namespace
}  // namespace detlite

TORCH_LIBRARY_IMPL(detlite, CPU, m) {
  m.impl("sigmoid_focal_loss", TORCH_FN(detlite::sigmoid_focal_loss_cpu));
  m.impl("sigmoid_focal_loss_backward", TORCH_FN(detlite::sigmoid_focal_loss_backward_cpu));
}
