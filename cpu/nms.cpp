// CPU kernel of detlite::batched_nms (semantics in detlite/ops/nms.py).
//
// Per image, in parallel over images: a stable sort of the candidates by score (descending,
// NaN first as in torch.sort), then greedy selection in that order against the kept candidates
// of the same class only, stopping at max_det kept. A candidate is compared with at most
// max_det kept boxes, so an image costs O(K log K + K * max_det) and no K x K matrix exists.
// IoU is computed in double exactly as torchvision's CPU nms does.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include "checks.h"

namespace detlite {
namespace {

struct Box {
  double x1, y1, x2, y2, area;
};

// IoU > threshold, with torchvision's arithmetic (inter / (area_i + area_j - inter)).
bool overlaps(const Box& a, const Box& b, double threshold) {
  const double w = std::max(0.0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  const double h = std::max(0.0, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  const double inter = w * h;
  return inter / (a.area + b.area - inter) > threshold;
}

// Visiting order: score descending, NaN before every number, ties by lower index.
std::vector<int64_t> visiting_order(const double* scores, int64_t num) {
  std::vector<int64_t> order(num);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [scores](int64_t i, int64_t j) {
    const double a = scores[i], b = scores[j];
    return (std::isnan(a) && !std::isnan(b)) || a > b;
  });
  return order;
}

// Kept candidates of one image, written to keep_row; returns their number.
int64_t nms_image(const double* boxes, const double* scores, const int64_t* classes, int64_t num,
                  double threshold, int64_t max_det, int64_t* keep_row) {
  std::vector<Box> kept_boxes;
  std::vector<int64_t> kept_classes;
  kept_boxes.reserve(max_det);
  kept_classes.reserve(max_det);
  int64_t count = 0;
  for (const int64_t i : visiting_order(scores, num)) {
    const double* c = boxes + 4 * i;
    const Box box{c[0], c[1], c[2], c[3], (c[2] - c[0]) * (c[3] - c[1])};
    bool suppressed = false;
    for (size_t k = 0; k < kept_boxes.size() && !suppressed; ++k)
      suppressed = kept_classes[k] == classes[i] && overlaps(kept_boxes[k], box, threshold);
    if (suppressed) continue;
    kept_boxes.push_back(box);
    kept_classes.push_back(classes[i]);
    keep_row[count++] = i;
    if (count == max_det) break;
  }
  return count;
}

std::tuple<at::Tensor, at::Tensor> batched_nms_cpu(const at::Tensor& boxes_in,
                                                   const at::Tensor& scores_in,
                                                   const at::Tensor& classes_in,
                                                   double iou_threshold, int64_t max_det) {
  TORCH_CHECK(boxes_in.device().is_cpu(), "detlite::batched_nms: boxes must be a CPU tensor");
  checks::nms(boxes_in, scores_in, classes_in, max_det);
  const int64_t batch = boxes_in.size(0), num = boxes_in.size(1);
  const auto long_options = scores_in.options().dtype(at::kLong);
  at::Tensor keep = at::full({batch, max_det}, -1, long_options);
  at::Tensor count = at::zeros({batch}, long_options);
  if (batch == 0 || num == 0 || max_det == 0) return {keep, count};
  // float -> double keeps every value and so the order of scores exactly.
  const at::Tensor boxes = boxes_in.to(at::kDouble).contiguous();
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const at::Tensor classes = classes_in.to(at::kLong).contiguous();
  const double* b = boxes.const_data_ptr<double>();
  const double* s = scores.const_data_ptr<double>();
  const int64_t* c = classes.const_data_ptr<int64_t>();
  int64_t* k = keep.mutable_data_ptr<int64_t>();
  int64_t* n = count.mutable_data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i)
      n[i] = nms_image(b + 4 * num * i, s + num * i, c + num * i, num, iou_threshold, max_det,
                       k + max_det * i);
  });
  return {keep, count};
}

}  // namespace
}  // namespace detlite

TORCH_LIBRARY_IMPL(detlite, CPU, m) {
  m.impl("batched_nms", TORCH_FN(detlite::batched_nms_cpu));
}
