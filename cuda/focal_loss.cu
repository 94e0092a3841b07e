// CUDA kernels of detlite::sigmoid_focal_loss and detlite::sigmoid_focal_loss_backward.
//
// The formulas (and their derivation) are in detlite/ops/focal_loss.py; `_element_terms` there
// evaluates the same expressions in the same order (the bulk reference kernels reach the same
// values through torch's sigmoid/softplus/pow). Each thread reads one logit at a time
// (float16/bfloat16 converted to float), works in float (double for double logits), and the
// forward pass reduces in registers and shared memory to one partial sum per thread block. No
// [B, A, C] temporary exists: the forward writes B x blocks partial sums, the backward writes
// only its output. The block partition is fixed for a shape, so results are deterministic.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace detlite::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kIgnore = -2;
constexpr int kElementsPerThread = 8;  // target work per thread before adding blocks
constexpr int kMaxBlocksPerImage = 1024;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ double load(const double* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

// Per-call constants, converted once from the op's double arguments.
template <typename acc_t>
struct Focal {
  acc_t alpha_pos, alpha_neg;  // alpha_t for t = 1 / t = 0
  acc_t s_pos, s_neg;          // smoothed BCE target for t = 1 / t = 0
  acc_t gamma;

  Focal(double alpha, double gamma_, double smoothing)
      : alpha_pos(static_cast<acc_t>(alpha)),
        alpha_neg(static_cast<acc_t>(1.0 - alpha)),
        s_pos(static_cast<acc_t>(1.0 - 0.5 * smoothing)),
        s_neg(static_cast<acc_t>(0.5 * smoothing)),
        gamma(static_cast<acc_t>(gamma_)) {}

  // Shared by loss and gradient: exp(-|x|), log1p of it, q**gamma, the smoothed target, ce.
  struct Terms {
    acc_t e, modulating, s, ce, alpha_t;
  };

  __device__ __forceinline__ Terms terms(acc_t x, bool positive) const {
    const acc_t zero = 0;
    Terms t;
    t.e = exp_(-abs_(x));
    const acc_t log1p_e = log1p_(t.e);
    const acc_t relu_x = x > zero ? x : zero;
    const acc_t relu_neg_x = -x > zero ? -x : zero;
    // -log(q): q = 1 - p for a positive (softplus(x)), q = p for a negative (softplus(-x)).
    const acc_t neg_log_q = positive ? relu_x + log1p_e : relu_neg_x + log1p_e;
    t.modulating = exp_(gamma * -neg_log_q);
    t.s = positive ? s_pos : s_neg;
    t.ce = (relu_x - x * t.s) + log1p_e;
    t.alpha_t = positive ? alpha_pos : alpha_neg;
    return t;
  }

  __device__ __forceinline__ acc_t loss(acc_t x, bool positive) const {
    const Terms t = terms(x, positive);
    return t.alpha_t * t.modulating * t.ce;
  }

  __device__ __forceinline__ acc_t grad(acc_t x, bool positive) const {
    const Terms t = terms(x, positive);
    const acc_t r = acc_t(1) / (acc_t(1) + t.e);
    const bool nonneg = x >= acc_t(0);
    const acc_t p = nonneg ? r : t.e * r;
    const acc_t one_minus_p = nonneg ? t.e * r : r;
    const acc_t p_t = positive ? p : one_minus_p;
    const acc_t signed_gamma = positive ? -gamma : gamma;
    return t.alpha_t * t.modulating * (signed_gamma * p_t * t.ce + (p - t.s));
  }
};

// Sum over the block; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : T(0);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// grid (blocks_per_image, B). Within an image, element i is (anchor i / C, class i % C); the
// caller guarantees A * C < 2^31 so 32-bit arithmetic cannot overflow.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    focal_forward_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ labels,
                         uint32_t anchors, uint32_t classes,
                         Focal<typename Acc<scalar_t>::type> focal,
                         typename Acc<scalar_t>::type* __restrict__ partials) {
  using acc_t = typename Acc<scalar_t>::type;
  const uint32_t per_image = anchors * classes;
  const int64_t image = blockIdx.y;
  const scalar_t* x = logits + image * per_image;
  const int64_t* image_labels = labels + image * anchors;
  acc_t sum = 0;
  for (uint32_t i = blockIdx.x * kThreads + threadIdx.x; i < per_image;
       i += gridDim.x * kThreads) {
    const uint32_t anchor = i / classes;
    const int64_t label = image_labels[anchor];
    if (label == kIgnore) continue;
    const int64_t cls = static_cast<int64_t>(i - anchor * classes);
    sum += focal.loss(load(x + i), label == cls);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[image * gridDim.x + blockIdx.x] = sum;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    focal_backward_kernel(const typename Acc<scalar_t>::type* __restrict__ grad,
                          const scalar_t* __restrict__ logits,
                          const int64_t* __restrict__ labels, uint32_t anchors, uint32_t classes,
                          Focal<typename Acc<scalar_t>::type> focal,
                          scalar_t* __restrict__ grad_logits) {
  using acc_t = typename Acc<scalar_t>::type;
  const uint32_t per_image = anchors * classes;
  const int64_t image = blockIdx.y;
  const int64_t base = image * per_image;
  const int64_t* image_labels = labels + image * anchors;
  const acc_t scale = grad[image];
  for (uint32_t i = blockIdx.x * kThreads + threadIdx.x; i < per_image;
       i += gridDim.x * kThreads) {
    const uint32_t anchor = i / classes;
    const int64_t label = image_labels[anchor];
    acc_t g = 0;
    if (label != kIgnore) {
      const int64_t cls = static_cast<int64_t>(i - anchor * classes);
      g = focal.grad(load(logits + base + i), label == cls) * scale;
    }
    store(grad_logits + base + i, g);
  }
}

struct Forward {
  template <typename scalar_t>
  static void run(const void* logits, const int64_t* labels, int64_t batch, int64_t anchors,
                  int64_t classes, double alpha, double gamma, double smoothing, void* partials,
                  int blocks, cudaStream_t stream) {
    using acc_t = typename Acc<scalar_t>::type;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch));
    focal_forward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(logits), labels, static_cast<uint32_t>(anchors),
        static_cast<uint32_t>(classes), Focal<acc_t>(alpha, gamma, smoothing),
        static_cast<acc_t*>(partials));
  }
};

struct Backward {
  template <typename scalar_t>
  static void run(const void* grad, const void* logits, const int64_t* labels, int64_t batch,
                  int64_t anchors, int64_t classes, double alpha, double gamma, double smoothing,
                  void* grad_logits, int blocks, cudaStream_t stream) {
    using acc_t = typename Acc<scalar_t>::type;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch));
    focal_backward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const acc_t*>(grad), static_cast<const scalar_t*>(logits), labels,
        static_cast<uint32_t>(anchors), static_cast<uint32_t>(classes),
        Focal<acc_t>(alpha, gamma, smoothing), static_cast<scalar_t*>(grad_logits));
  }
};

// Runs Launch::run<scalar_t>(args...) for the runtime type, then reports the launch status.
template <typename Launch, typename... Args>
cudaError_t dispatch(Float logits_type, Args... args) {
  switch (logits_type) {
    case Float::f32:
      Launch::template run<float>(args...);
      break;
    case Float::f16:
      Launch::template run<__half>(args...);
      break;
    case Float::bf16:
      Launch::template run<__nv_bfloat16>(args...);
      break;
    case Float::f64:
      Launch::template run<double>(args...);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

int focal_loss_blocks_per_image(int64_t elements_per_image) {
  const int64_t per_block = int64_t{kThreads} * kElementsPerThread;
  int64_t blocks = (elements_per_image + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocksPerImage) blocks = kMaxBlocksPerImage;
  return static_cast<int>(blocks);
}

cudaError_t focal_loss_forward(Float logits_type, const void* logits, const int64_t* labels,
                               int64_t batch, int64_t anchors, int64_t classes, double alpha,
                               double gamma, double label_smoothing, void* partials,
                               int blocks_per_image, cudaStream_t stream) {
  return dispatch<Forward>(logits_type, logits, labels, batch, anchors, classes, alpha, gamma,
                           label_smoothing, partials, blocks_per_image, stream);
}

cudaError_t focal_loss_backward(Float logits_type, const void* grad, const void* logits,
                                const int64_t* labels, int64_t batch, int64_t anchors,
                                int64_t classes, double alpha, double gamma,
                                double label_smoothing, void* grad_logits, int blocks_per_image,
                                cudaStream_t stream) {
  return dispatch<Backward>(logits_type, grad, logits, labels, batch, anchors, classes, alpha,
                            gamma, label_smoothing, grad_logits, blocks_per_image, stream);
}

}  // namespace detlite::cuda
