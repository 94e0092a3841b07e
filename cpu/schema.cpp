// The schemas of the detlite:: operators (semantics in detlite/ops/*.py).
//
// Defined here, in the library, so that a process that imports only torch can load
// libdetlite_ops.so and run a graph calling the ops (an AOTInductor package; the C++ example
// in examples/). The Python package defines the same schemas itself when no library is loaded;
// tests/test_ops_build.py checks that the two agree.

#include <torch/library.h>

TORCH_LIBRARY(detlite, m) {
  m.def(
      "sigmoid_focal_loss(Tensor logits, Tensor labels, float alpha, float gamma, "
      "float label_smoothing) -> Tensor");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, float alpha, "
      "float gamma, float label_smoothing) -> Tensor");
  m.def(
      "batched_nms(Tensor boxes, Tensor scores, Tensor classes, float iou_threshold, "
      "int max_det) -> (Tensor keep, Tensor count)");
}
