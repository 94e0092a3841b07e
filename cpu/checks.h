// Input checks shared by the CPU and CUDA kernels of the detlite ops (the Python fake
// implementations check the same, for traced calls); messages name the op and the culprit.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace detlite::checks {

inline void index_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
              " must be int64 or int32, got ", t.scalar_type());
}

// logits [B, A, C] floating point, labels [B, A] int64/int32 on the same device.
inline void focal(const char* op, const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be [B, A, C], got ", logits.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == logits.size(0) &&
                  labels.size(1) == logits.size(1),
              op, ": labels must be [B, A] = [", logits.size(0), ", ", logits.size(1), "], got ",
              labels.sizes());
  TORCH_CHECK(labels.device() == logits.device(), op, ": logits on ", logits.device(),
              " but labels on ", labels.device());
  index_dtype(labels, op, "labels");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op,
              ": logits must be float32, float16, bfloat16 or float64, got ", logits.scalar_type());
}

// The backward's grad: [B], on the logits' device.
inline void focal_grad(const char* op, const at::Tensor& grad, const at::Tensor& logits) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == logits.size(0), op, ": grad must be [B] = [",
              logits.size(0), "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == logits.device(), op, ": grad on ", grad.device(),
              " but logits on ", logits.device());
}

// boxes [B, K, 4] and scores [B, K] floating point, classes [B, K] int64/int32, one device.
inline void nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& classes,
                int64_t max_det) {
  constexpr const char* op = "detlite::batched_nms";
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, op, ": boxes must be [B, K, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == boxes.size(0) &&
                  scores.size(1) == boxes.size(1),
              op, ": scores must be [B, K] = [", boxes.size(0), ", ", boxes.size(1), "], got ",
              scores.sizes());
  TORCH_CHECK(classes.sizes() == scores.sizes(), op, ": classes must be [B, K] = [",
              boxes.size(0), ", ", boxes.size(1), "], got ", classes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()) && at::isFloatingType(scores.scalar_type()),
              op, ": boxes and scores must be floating point, got ", boxes.scalar_type(), " and ",
              scores.scalar_type());
  index_dtype(classes, op, "classes");
  TORCH_CHECK(scores.device() == boxes.device() && classes.device() == boxes.device(), op,
              ": boxes, scores, classes on different devices (", boxes.device(), ", ",
              scores.device(), ", ", classes.device(), ")");
  TORCH_CHECK(max_det >= 0, op, ": max_det must be >= 0, got ", max_det);
}

}  // namespace detlite::checks
