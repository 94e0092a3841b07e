// CUDA kernels of detlite::batched_nms: bitmask NMS, every image of the batch at once, on the
// device from start to end (no host synchronisation, fixed-size output).
//
// Candidates arrive sorted (register.cpp sorts scores per image, stable, descending) with boxes
// in double. Two kernels:
//   1. nms_mask_kernel: tile (row block, column block, image); thread r of the tile sets bit c of
//      mask[b, row, column block] when the two candidates share a class, column > row and
//      IoU > threshold. Only the upper triangle of tiles is computed (and ever read).
//   2. nms_select_kernel: one thread block per image walks the rows in order, 64 at a time,
//      keeping a row unless a kept row's bit removed it; the kept rows of a tile then OR their
//      masks into the removal words of later tiles (threads split the words). It stops once
//      max_det rows are kept, so it touches at most max_det mask rows.
// IoU is computed exactly as torchvision's CPU kernel does (same operations, same order, IEEE
// double without fused multiply-add), so the reference kernel in detlite/ops/nms.py and this one
// keep the same candidates.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace detlite::cuda {
namespace {

constexpr int kTile = 64;  // candidates per tile = bits per mask word
constexpr int kSelectThreads = 128;

__device__ __forceinline__ double max_(double a, double b) { return a < b ? b : a; }
__device__ __forceinline__ double min_(double a, double b) { return b < a ? b : a; }

__device__ __forceinline__ double area(const double* box) {
  return __dmul_rn(__dsub_rn(box[2], box[0]), __dsub_rn(box[3], box[1]));
}

__device__ __forceinline__ bool overlaps(const double* a, double area_a, const double* b,
                                         double area_b, double threshold) {
  const double w = max_(0.0, __dsub_rn(min_(a[2], b[2]), max_(a[0], b[0])));
  const double h = max_(0.0, __dsub_rn(min_(a[3], b[3]), max_(a[1], b[1])));
  const double inter = __dmul_rn(w, h);
  const double iou = __ddiv_rn(inter, __dsub_rn(__dadd_rn(area_a, area_b), inter));
  return iou > threshold;
}

__global__ void __launch_bounds__(kTile)
    nms_mask_kernel(const double* __restrict__ boxes, const int64_t* __restrict__ classes,
                    int num, int words, double threshold, unsigned long long* __restrict__ mask) {
  const int col_tile = blockIdx.x;
  const int row_tile = blockIdx.y;
  if (col_tile < row_tile) return;
  const int64_t image = blockIdx.z;
  const int rows = min(num - row_tile * kTile, kTile);
  const int cols = min(num - col_tile * kTile, kTile);

  __shared__ double col_boxes[kTile][4];
  __shared__ double col_areas[kTile];
  __shared__ int64_t col_classes[kTile];
  const double* image_boxes = boxes + image * num * 4;
  const int64_t* image_classes = classes + image * num;
  if (threadIdx.x < cols) {
    const int j = col_tile * kTile + threadIdx.x;
    for (int k = 0; k < 4; ++k) col_boxes[threadIdx.x][k] = image_boxes[j * 4 + k];
    col_areas[threadIdx.x] = area(col_boxes[threadIdx.x]);
    col_classes[threadIdx.x] = image_classes[j];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;

  const int i = row_tile * kTile + threadIdx.x;
  double box[4];
  for (int k = 0; k < 4; ++k) box[k] = image_boxes[i * 4 + k];
  const double box_area = area(box);
  const int64_t cls = image_classes[i];
  unsigned long long bits = 0;
  for (int c = col_tile == row_tile ? threadIdx.x + 1 : 0; c < cols; ++c) {
    if (col_classes[c] == cls && overlaps(box, box_area, col_boxes[c], col_areas[c], threshold)) {
      bits |= 1ULL << c;
    }
  }
  mask[(image * num + i) * words + col_tile] = bits;
}

__global__ void __launch_bounds__(kSelectThreads)
    nms_select_kernel(const unsigned long long* __restrict__ mask,
                      const int64_t* __restrict__ order, int num, int words, int64_t max_det,
                      int64_t* __restrict__ keep, int64_t* __restrict__ count) {
  extern __shared__ unsigned long long removed[];  // one bit per candidate of this image
  const int64_t image = blockIdx.x;
  const unsigned long long* image_mask = mask + image * num * words;
  for (int w = threadIdx.x; w < words; w += blockDim.x) removed[w] = 0;
  __syncthreads();

  // Every thread runs the same sequential walk (same loads, same decisions); thread 0 writes.
  int64_t kept = 0;
  for (int tile = 0; tile < words && kept < max_det; ++tile) {
    unsigned long long live = ~removed[tile];
    unsigned long long kept_bits = 0;
    const int rows = min(num - tile * kTile, kTile);
    for (int r = 0; r < rows && kept < max_det; ++r) {
      if ((live >> r) & 1ULL) {
        const int i = tile * kTile + r;
        kept_bits |= 1ULL << r;
        if (threadIdx.x == 0) keep[image * max_det + kept] = order[image * num + i];
        ++kept;
        live &= ~image_mask[static_cast<int64_t>(i) * words + tile];
      }
    }
    for (int w = tile + 1 + threadIdx.x; w < words; w += blockDim.x) {
      unsigned long long acc = removed[w];
      for (unsigned long long bits = kept_bits; bits != 0; bits &= bits - 1) {
        const int r = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= image_mask[static_cast<int64_t>(tile * kTile + r) * words + w];
      }
      removed[w] = acc;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) count[image] = kept;
}

}  // namespace

cudaError_t batched_nms(const double* boxes, const int64_t* classes, const int64_t* order,
                        int64_t batch, int64_t num, double iou_threshold, int64_t max_det,
                        unsigned long long* mask, int64_t* keep, int64_t* count,
                        cudaStream_t stream) {
  const int words = static_cast<int>((num + kTile - 1) / kTile);
  const dim3 mask_grid(static_cast<unsigned>(words), static_cast<unsigned>(words),
                       static_cast<unsigned>(batch));
  nms_mask_kernel<<<mask_grid, kTile, 0, stream>>>(boxes, classes, static_cast<int>(num), words,
                                                   iou_threshold, mask);
  const size_t shared = sizeof(unsigned long long) * static_cast<size_t>(words);
  nms_select_kernel<<<static_cast<unsigned>(batch), kSelectThreads, shared, stream>>>(
      mask, order, static_cast<int>(num), words, max_det, keep, count);
  return cudaGetLastError();
}

}  // namespace detlite::cuda
