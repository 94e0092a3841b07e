// Launchers of the detlite CUDA kernels, callable without ATen.
//
// The .cu files include only CUDA headers, so nvcc never parses torch's headers (which keeps the
// build short); register.cpp (compiled by the host compiler) does the tensor checks, allocation
// and dtype selection, and passes raw pointers and the current stream here. Every launcher
// returns the status of its launch (cudaGetLastError after the last kernel).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace detlite::cuda {

enum class Float { f32, f16, bf16, f64 };

// Number of thread blocks per image used by the focal-loss kernels (and so the width of the
// partial-sum buffer the forward kernel fills).
int focal_loss_blocks_per_image(int64_t elements_per_image);

// logits [B, A, C] of logits_type, labels [B, A] int64, both contiguous.
// partials[b, j] (float, or double for f64 logits) = loss summed over the j-th share of image b.
cudaError_t focal_loss_forward(Float logits_type, const void* logits, const int64_t* labels,
                               int64_t batch, int64_t anchors, int64_t classes, double alpha,
                               double gamma, double label_smoothing, void* partials,
                               int blocks_per_image, cudaStream_t stream);

// grad_logits[b, a, c] = grad[b] * d loss[b] / d logits[b, a, c], in the logits' type; grad is
// float (double for f64 logits).
cudaError_t focal_loss_backward(Float logits_type, const void* grad, const void* logits,
                                const int64_t* labels, int64_t batch, int64_t anchors,
                                int64_t classes, double alpha, double gamma,
                                double label_smoothing, void* grad_logits, int blocks_per_image,
                                cudaStream_t stream);

// Class-aware NMS on candidates already in visiting order (score descending, ties by index):
// boxes [B, K, 4] double, classes [B, K] int64, order [B, K] int64 (original index of each
// sorted candidate). mask is scratch of B * K * ceil(K / 64) words. keep [B, max_det] must be
// pre-filled with -1; count [B] is written.
cudaError_t batched_nms(const double* boxes, const int64_t* classes, const int64_t* order,
                        int64_t batch, int64_t num, double iou_threshold, int64_t max_det,
                        unsigned long long* mask, int64_t* keep, int64_t* count,
                        cudaStream_t stream);

}  // namespace detlite::cuda
