// The projections of a one-row decode step (grain-model/src/fused_cuda.rs launches them):
// y (1, n) = x (1, k) · wᵀ with w (n, k) row-major, the layout of candle's Linear weight. Such a
// step reads every weight once for two flops, so it is bound by memory bandwidth.
//
// gemv_<dtype>: one warp per output column. Its lanes stream the column's weight row in 16-byte
// loads, four in flight per lane, marked evict-first (each weight is read once per step), and
// take x's matching 16 bytes through the read-only cache, where x stays. Sums are f32, reduced
// across the warp and rounded to T once.
//
// Measured on an H200 (docs/gpu.md, 7B shapes, bf16): 3.5-4.0 TB/s on q|k|v and gate|up, and a
// batch-1 decode step's kernels 3 % faster than with cuBLAS's products (which add a split-K
// reduction for the 4096-wide outputs). For two or more rows cuBLAS is faster (a version of this
// kernel for up to 16 rows lost to it from two rows on), so the launcher takes one row only.
//
// Requires k * sizeof(T) and both operands' offsets to be multiples of 16 bytes (checked by the
// launcher).
#include "common.cuh"

// A 16-byte vector of T, as f32.
template <typename T> struct Lanes;

template <> struct Lanes<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void unpack(uint4 v, float *f) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
};

// Two bf16 per 32-bit word, the first in the low half: a bf16 is the high half of its f32.
template <> struct Lanes<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(uint4 v, float *f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};

template <> struct Lanes<__half> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(uint4 v, float *f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &w[i], sizeof h);
      const float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
};

#define GEMV_IN_FLIGHT 4 // 16-byte weight loads in flight per lane

template <typename T>
__device__ void gemv(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y, int n,
                     int k) {
  constexpr int N = Lanes<T>::N;
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (col >= n) return;
  const int kv = k / N; // 16-byte vectors per row
  const uint4 *xv = reinterpret_cast<const uint4 *>(x);
  const uint4 *wv = reinterpret_cast<const uint4 *>(w) + (uint64_t)col * kv;
  float acc = 0.f;
  for (int base = lane; base < kv; base += 32 * GEMV_IN_FLIGHT) {
    uint4 wq[GEMV_IN_FLIGHT];
#pragma unroll
    for (int u = 0; u < GEMV_IN_FLIGHT; ++u) {
      const int i = base + u * 32;
      wq[u] = i < kv ? __ldcs(wv + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < GEMV_IN_FLIGHT; ++u) {
      const int i = base + u * 32;
      if (i < kv) {
        float wf[N], xf[N];
        Lanes<T>::unpack(wq[u], wf);
        Lanes<T>::unpack(__ldg(xv + i), xf);
#pragma unroll
        for (int e = 0; e < N; ++e) acc = fmaf(wf[e], xf[e], acc);
      }
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) y[col] = from_float<T>(acc);
}

#define GEMV(TN, T)                                                                                \
  extern "C" __global__ void __launch_bounds__(256) gemv_##TN(const T *x, const T *w, T *y, int n, \
                                                              int k) {                             \
    gemv<T>(x, w, y, n, k);                                                                        \
  }

GEMV(f32, float)
GEMV(bf16, __nv_bfloat16)
GEMV(f16, __half)
