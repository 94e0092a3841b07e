// CUDA kernels of the detlite operators, registered for the CUDA dispatch key.
//
// The operators themselves (schemas, fake implementations, autograd, reference kernels) are
// defined in Python (detlite/ops); this library is loaded after them with
// torch.ops.load_library and only adds `TORCH_LIBRARY_IMPL(detlite, CUDA, m)`. Here: input
// checks, device guard, allocation, sorting (ATen), then the launchers in the .cu files on the
// current stream.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "../cpu/checks.h"
#include "kernels.h"

namespace detlite {
namespace {

cuda::Float float_kind(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::Float::f32;
    case at::kHalf:
      return cuda::Float::f16;
    case at::kBFloat16:
      return cuda::Float::bf16;
    case at::kDouble:
      return cuda::Float::f64;
    default:
      break;
  }
  TORCH_CHECK(false, op, ": logits must be float32, float16, bfloat16 or float64, got ",
              t.scalar_type());
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_focal(const char* op, const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.is_cuda(), op, ": logits must be a CUDA tensor");
  checks::focal(op, logits, labels);
  TORCH_CHECK(logits.size(1) * logits.size(2) < std::numeric_limits<int32_t>::max(), op,
              ": A * C must be below 2^31 per image, got ", logits.size(1), " * ", logits.size(2));
  TORCH_CHECK(logits.size(0) <= 65535, op, ": at most 65535 images per call, got ",
              logits.size(0));
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& logits_in, const at::Tensor& labels_in,
                                   double alpha, double gamma, double label_smoothing) {
  constexpr const char* op = "detlite::sigmoid_focal_loss";
  check_focal(op, logits_in, labels_in);
  const cuda::Float logits_kind = float_kind(logits_in, op);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  // The kernels read int64 labels (int32 ones are widened: [B, A] is small next to [B, A, C]).
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  const int64_t batch = logits.size(0), anchors = logits.size(1), classes = logits.size(2);
  const auto options = logits.options().dtype(acc_type(logits));
  if (batch == 0 || anchors * classes == 0) return at::zeros({batch}, options);

  const int blocks = cuda::focal_loss_blocks_per_image(anchors * classes);
  at::Tensor partials = at::empty({batch, blocks}, options);
  C10_CUDA_CHECK(cuda::focal_loss_forward(
      logits_kind, logits.const_data_ptr(), labels.const_data_ptr<int64_t>(), batch, anchors,
      classes, alpha, gamma, label_smoothing, partials.mutable_data_ptr(), blocks,
      c10::cuda::getCurrentCUDAStream()));
  return partials.sum(1);  // a fixed-order reduction: deterministic
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                            const at::Tensor& labels_in, double alpha,
                                            double gamma, double label_smoothing) {
  constexpr const char* op = "detlite::sigmoid_focal_loss_backward";
  check_focal(op, logits_in, labels_in);
  checks::focal_grad(op, grad_in, logits_in);
  const cuda::Float logits_kind = float_kind(logits_in, op);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  // The kernels read int64 labels (int32 ones are widened: [B, A] is small next to [B, A, C]).
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  const at::Tensor grad = grad_in.to(acc_type(logits)).contiguous();
  at::Tensor grad_logits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  const int64_t batch = logits.size(0), anchors = logits.size(1), classes = logits.size(2);
  if (grad_logits.numel() == 0) return grad_logits;

  const int blocks = cuda::focal_loss_blocks_per_image(anchors * classes);
  C10_CUDA_CHECK(cuda::focal_loss_backward(
      logits_kind, grad.const_data_ptr(), logits.const_data_ptr(),
      labels.const_data_ptr<int64_t>(), batch, anchors, classes, alpha, gamma, label_smoothing,
      grad_logits.mutable_data_ptr(), blocks, c10::cuda::getCurrentCUDAStream()));
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor> batched_nms_cuda(const at::Tensor& boxes,
                                                    const at::Tensor& scores,
                                                    const at::Tensor& classes,
                                                    double iou_threshold, int64_t max_det) {
  constexpr const char* op = "detlite::batched_nms";
  TORCH_CHECK(boxes.is_cuda(), op, ": boxes must be a CUDA tensor");
  checks::nms(boxes, scores, classes, max_det);
  const int64_t batch = boxes.size(0), num = boxes.size(1);
  // The select kernel keeps one bit per candidate in shared memory (48 KiB).
  TORCH_CHECK(num <= 64 * 6144, op, ": at most 393216 candidates per image, got ", num);
  TORCH_CHECK(batch <= 65535, op, ": at most 65535 images per call, got ", batch);

  c10::cuda::CUDAGuard guard(boxes.device());
  const auto long_options = scores.options().dtype(at::kLong);
  at::Tensor keep = at::full({batch, max_det}, -1, long_options);
  at::Tensor count = at::zeros({batch}, long_options);
  if (batch == 0 || num == 0 || max_det == 0) return {keep, count};

  // Visiting order: score descending, equal scores by lower index (stable sort).
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true)).contiguous();
  const at::Tensor sorted_boxes =
      boxes.to(at::kDouble).gather(1, order.unsqueeze(2).expand({batch, num, 4})).contiguous();
  const at::Tensor sorted_classes = classes.to(at::kLong).gather(1, order).contiguous();
  const int64_t words = (num + 63) / 64;
  at::Tensor mask = at::empty({batch, num, words}, long_options);
  C10_CUDA_CHECK(cuda::batched_nms(
      sorted_boxes.const_data_ptr<double>(), sorted_classes.const_data_ptr<int64_t>(),
      order.const_data_ptr<int64_t>(), batch, num, iou_threshold, max_det,
      reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()),
      keep.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>(),
      c10::cuda::getCurrentCUDAStream()));
  return {keep, count};
}

}  // namespace
}  // namespace detlite

TORCH_LIBRARY_IMPL(detlite, CUDA, m) {
  m.impl("sigmoid_focal_loss", TORCH_FN(detlite::sigmoid_focal_loss_cuda));
  m.impl("sigmoid_focal_loss_backward", TORCH_FN(detlite::sigmoid_focal_loss_backward_cuda));
  m.impl("batched_nms", TORCH_FN(detlite::batched_nms_cuda));
}
