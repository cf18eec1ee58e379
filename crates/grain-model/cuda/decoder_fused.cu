// Fused elementwise kernels of the decoder layer on CUDA (grain-model/src/fused_cuda.rs launches
// them). Each replaces a chain of candle ops, so a decode step issues fewer launches:
//
// - qkv_rope_*: splits the stacked q|k|v projection, applies RoPE (rotate-half form, as
//   candle's rope_thd) to q and k, writes k and v into the layer's paged cache at each row's slot,
//   and returns [q (t, nh, hd) | k (t, nkv, hd) | v (t, nkv, hd)] as one flat buffer. Replaces
//   three copies, two RoPE launches and two slot writes.
// - silu_mul_*: SwiGLU of a stacked gate|up projection, silu(gate) * up. Replaces two launches
//   (and their strided reads).
// - add_rms_*: the residual add and the next RMSNorm: s = x + d (rounded to T, as an add would),
//   y = s * rsqrt(mean(s^2) + eps) * w. Replaces two launches. Rows of up to 8192 columns.
// - causal_softmax_*: the causal softmax of one query block's prefill attention scores, the mask
//   computed from the row's position. Replaces the cast to f32, the additive mask, the softmax
//   and the cast back: one pass over the scores instead of four.
//
// Arithmetic is in f32; results are rounded to T once.
#include "common.cuh"

// One thread block per (head of q|k|v, row); threads over the first half of head_dim.
template <typename T>
__device__ void qkv_rope(const T *__restrict__ qkv, const T *__restrict__ cos,
                         const T *__restrict__ sin, const uint32_t *__restrict__ slots,
                         T *__restrict__ out, T *__restrict__ kc, T *__restrict__ vc, int t, int nh,
                         int nkv, int hd) {
  const int h = blockIdx.x, r = blockIdx.y, half = hd / 2;
  const uint64_t width = (uint64_t)(nh + 2 * nkv) * hd;
  const T *src = qkv + r * width + (uint64_t)h * hd;
  T *q_out = out;
  T *k_out = out + (uint64_t)t * nh * hd;
  T *v_out = k_out + (uint64_t)t * nkv * hd;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    if (h < nh + nkv) {
      const float c = to_float(cos[(uint64_t)r * half + i]);
      const float s = to_float(sin[(uint64_t)r * half + i]);
      const float x1 = to_float(src[i]), x2 = to_float(src[i + half]);
      const T o1 = from_float<T>(x1 * c - x2 * s), o2 = from_float<T>(x1 * s + x2 * c);
      if (h < nh) {
        T *d = q_out + ((uint64_t)r * nh + h) * hd;
        d[i] = o1;
        d[i + half] = o2;
      } else {
        const int kh = h - nh;
        T *d = k_out + ((uint64_t)r * nkv + kh) * hd;
        T *c2 = kc + ((uint64_t)slots[r] * nkv + kh) * hd;
        d[i] = o1;
        d[i + half] = o2;
        c2[i] = o1;
        c2[i + half] = o2;
      }
    } else {
      const int vh = h - nh - nkv;
      const T a = src[i], b = src[i + half];
      T *d = v_out + ((uint64_t)r * nkv + vh) * hd;
      T *c2 = vc + ((uint64_t)slots[r] * nkv + vh) * hd;
      d[i] = a;
      d[i + half] = b;
      c2[i] = a;
      c2[i + half] = b;
    }
  }
}

template <typename T>
__device__ void silu_mul(const T *__restrict__ gu, T *__restrict__ out, uint32_t inter,
                         uint64_t total) {
  for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t r = e / inter, j = e % inter;
    const float g = to_float(gu[r * 2 * inter + j]);
    const float u = to_float(gu[r * 2 * inter + inter + j]);
    out[e] = from_float<T>(g / (1.f + expf(-g)) * u);
  }
}

// One thread block per row, at most ADD_RMS_PER_THREAD columns per thread (the launcher sizes
// the block). Each thread keeps its columns' sums in registers, so a row's loads go out together
// and the normalisation needs no second read: a loop with a global round trip per column stride
// took 13 us for one 4096-wide row on an H200, most of a decode step's elementwise time.
#define ADD_RMS_PER_THREAD 8
template <typename T>
__device__ void add_rms(const T *__restrict__ x, const T *__restrict__ d, const T *__restrict__ w,
                        T *__restrict__ sum_out, T *__restrict__ norm_out, int cols, float eps) {
  __shared__ float partial[32];
  const uint64_t base = (uint64_t)blockIdx.x * cols;
  float s[ADD_RMS_PER_THREAD];
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < ADD_RMS_PER_THREAD; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    s[i] = 0.f;
    if (c < cols) {
      const T v = from_float<T>(to_float(x[base + c]) + to_float(d[base + c]));
      sum_out[base + c] = v;
      s[i] = to_float(v);
      acc += s[i] * s[i];
    }
  }
  acc = warp_sum(acc);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  acc = warp_sum(lane < warps ? partial[lane] : 0.f);
  const float scale = rsqrtf(acc / cols + eps);
#pragma unroll
  for (int i = 0; i < ADD_RMS_PER_THREAD; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (c < cols) norm_out[base + c] = from_float<T>(scale * s[i] * to_float(w[c]));
  }
}

// `v` reduced over the thread block (blockDim.x a multiple of 32); every thread gets the result.
template <bool MAX> __device__ __forceinline__ float block_reduce(float v, float *scratch) {
  v = MAX ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  __syncthreads(); // a previous reduction may still be reading `scratch`
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : (MAX ? -INFINITY : 0.f);
  return MAX ? warp_max(v) : warp_sum(v);
}

// One thread block per row of scores `(kv heads, queries · group, cols)`. Row r is query
// (r % rows_per_head) / group of the block (the query heads sharing a KV head are adjacent rows),
// which sees keys 0 .. first + query - 1 (first = cached positions + the block's first query + 1).
// Keys past those get probability 0.
template <typename T>
__device__ void causal_softmax(const T *__restrict__ scores, T *__restrict__ probs, int cols,
                               int rows_per_head, int group, int first) {
  __shared__ float scratch[32];
  const uint64_t base = (uint64_t)blockIdx.x * cols;
  const int query = (int)(blockIdx.x % rows_per_head) / group;
  const int visible = min(cols, first + query);
  float m = -INFINITY;
  for (int c = threadIdx.x; c < visible; c += blockDim.x) m = fmaxf(m, to_float(scores[base + c]));
  m = block_reduce<true>(m, scratch);
  float sum = 0.f;
  for (int c = threadIdx.x; c < visible; c += blockDim.x) sum += expf(to_float(scores[base + c]) - m);
  const float inv = 1.f / block_reduce<false>(sum, scratch);
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    probs[base + c] = from_float<T>(c < visible ? expf(to_float(scores[base + c]) - m) * inv : 0.f);
}

#define GRAIN_FUSED_KERNELS(T, NAME)                                                             \
  extern "C" __global__ void qkv_rope_##NAME(const T *qkv, const T *cos, const T *sin,          \
                                             const uint32_t *slots, T *out, T *kc, T *vc, int t,  \
                                             int nh, int nkv, int hd) {                          \
    qkv_rope<T>(qkv, cos, sin, slots, out, kc, vc, t, nh, nkv, hd);                              \
  }                                                                                              \
  extern "C" __global__ void silu_mul_##NAME(const T *gu, T *out, uint32_t inter,                \
                                             uint64_t total) {                                   \
    silu_mul<T>(gu, out, inter, total);                                                          \
  }                                                                                              \
  extern "C" __global__ void add_rms_##NAME(const T *x, const T *d, const T *w, T *sum_out,      \
                                            T *norm_out, int cols, float eps) {                  \
    add_rms<T>(x, d, w, sum_out, norm_out, cols, eps);                                           \
  }                                                                                              \
  extern "C" __global__ void causal_softmax_##NAME(const T *scores, T *probs, int cols,          \
                                                   int rows_per_head, int group, int first) {    \
    causal_softmax<T>(scores, probs, cols, rows_per_head, group, first);                         \
  }

GRAIN_FUSED_KERNELS(float, f32)
GRAIN_FUSED_KERNELS(__half, f16)
GRAIN_FUSED_KERNELS(__nv_bfloat16, bf16)
