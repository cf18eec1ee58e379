// Grain's CUDA kernels for the paged KV cache (grain-model/src/paged_device.rs launches them).
//
// The cache of one layer is `(slots, kv_heads, head_dim)` with `slot = block * block_size + i`;
// a sequence's block table maps its position p to block `table[p / block_size]`.
//
// - write_slots_*: store the new keys (or values) of a flat batch, `(t, kv_heads · head_dim)`,
//   at their slots, one launch per layer for every sequence of the step.
// - paged_attn_part_*: decode attention read through the block tables, split over the context
//   ("flash decoding"): one thread block per (partition of `part` positions, query head, row);
//   the host picks `part` (at most MAX_PART) so that small batches still fill the GPU.
//   It writes the partition's un-normalised output, its max score and its sum of exponentials.
// - paged_attn_reduce_*: merges a row's partitions into the softmax-weighted output.
//
// Scores, softmax and sums are in f32 whatever the storage type (f32, f16, bf16).
#include "common.cuh"

#define MAX_HD 256  // largest head_dim supported (checked on the host)
#define MAX_PART 256  // most context positions per partition
#define WARPS 4     // warps per thread block of paged_attn_part
#define UNROLL 4    // positions a warp reads at once (independent loads in flight)

template <typename T>
__device__ void write_slots(const T *__restrict__ src, T *__restrict__ cache,
                            const uint32_t *__restrict__ slots, uint32_t row_elems,
                            uint64_t total) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t r = i / row_elems, e = i % row_elems;
    cache[(uint64_t)slots[r] * row_elems + e] = src[i];
  }
}

// Slot of position p in a block table.
__device__ __forceinline__ uint64_t slot_of(const uint32_t *table, int p, int block_size) {
  return (uint64_t)table[p / block_size] * block_size + p % block_size;
}

template <typename T>
__device__ void attn_part(const T *__restrict__ q, const T *__restrict__ kc,
                          const T *__restrict__ vc, const uint32_t *__restrict__ tables,
                          const uint32_t *__restrict__ ctx, float *__restrict__ part_out,
                          float *__restrict__ part_max, float *__restrict__ part_sum, int nh,
                          int nkv, int hd, int block_size, int max_blocks, int nparts, int part_len,
                          float scale) {
  __shared__ float qs[MAX_HD];
  __shared__ float sc[MAX_PART];
  __shared__ float acc_s[WARPS][MAX_HD];
  __shared__ float red[WARPS];
  const int part = blockIdx.x, head = blockIdx.y, row = blockIdx.z;
  const int n = (int)ctx[row];
  const int p0 = part * part_len;
  const uint64_t idx = ((uint64_t)row * nh + head) * nparts + part;
  if (p0 >= n) {  // past this row's context: an empty partition
    if (threadIdx.x == 0) {
      part_max[idx] = -INFINITY;
      part_sum[idx] = 0.f;
    }
    return;
  }
  const int p1 = min(n, p0 + part_len);
  const int len = p1 - p0;
  const int kvh = head / (nh / nkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int d = threadIdx.x; d < hd; d += blockDim.x)
    qs[d] = to_float(q[((uint64_t)row * nh + head) * hd + d]) * scale;
  __syncthreads();
  const uint32_t *table = tables + (uint64_t)row * max_blocks;
  const uint64_t stride = (uint64_t)nkv * hd, off = (uint64_t)kvh * hd;

  // Scores: each warp takes UNROLL consecutive positions at a time; lanes split head_dim.
  for (int base = p0 + warp * UNROLL; base < p1; base += WARPS * UNROLL) {
    const T *k[UNROLL];
    float s[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      // Past the end: re-read the last valid position, and drop the result below.
      k[u] = kc + slot_of(table, min(base + u, p1 - 1), block_size) * stride + off;
      s[u] = 0.f;
    }
    for (int d = lane; d < hd; d += 32) {
      const float qd = qs[d];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) s[u] += qd * to_float(k[u][d]);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const float t = warp_sum(s[u]);
      if (lane == 0 && base + u < p1) sc[base + u - p0] = t;
    }
  }
  __syncthreads();

  // Softmax over the partition (its max and sum go to the reduce kernel).
  float m = -INFINITY;
  for (int i = threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, sc[i]);
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < WARPS; ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float sum = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const float e = expf(sc[i] - m);
    sc[i] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) sum += red[w];

  // Weighted values: the same split of positions over warps; lane j holds dims j, j + 32, ...
  float acc[MAX_HD / 32];
#pragma unroll
  for (int j = 0; j < MAX_HD / 32; ++j) acc[j] = 0.f;
  for (int base = p0 + warp * UNROLL; base < p1; base += WARPS * UNROLL) {
    const T *v[UNROLL];
    float w[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = base + u;
      v[u] = vc + slot_of(table, min(p, p1 - 1), block_size) * stride + off;
      w[u] = p < p1 ? sc[p - p0] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < MAX_HD / 32; ++j) {
      const int d = lane + 32 * j;
      if (d < hd) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) acc[j] += w[u] * to_float(v[u][d]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < MAX_HD / 32; ++j) {
    const int d = lane + 32 * j;
    if (d < hd) acc_s[warp][d] = acc[j];
  }
  __syncthreads();
  float *o = part_out + idx * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) t += acc_s[w][d];
    o[d] = t;
  }
  if (threadIdx.x == 0) {
    part_max[idx] = m;
    part_sum[idx] = sum;
  }
}

template <typename T>
__device__ void attn_reduce(const float *__restrict__ part_out, const float *__restrict__ part_max,
                            const float *__restrict__ part_sum, const uint32_t *__restrict__ ctx,
                            T *__restrict__ out, int nh, int hd, int nparts, int part_len) {
  const int head = blockIdx.x, row = blockIdx.y;
  const int used = min(nparts, ((int)ctx[row] + part_len - 1) / part_len);
  const uint64_t base = ((uint64_t)row * nh + head) * nparts;
  float gm = -INFINITY;
  for (int i = 0; i < used; ++i) gm = fmaxf(gm, part_max[base + i]);
  float total = 0.f;
  for (int i = 0; i < used; ++i) total += part_sum[base + i] * expf(part_max[base + i] - gm);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  T *o = out + ((uint64_t)row * nh + head) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < used; ++i)
      acc += part_out[(base + i) * hd + d] * expf(part_max[base + i] - gm);
    o[d] = from_float<T>(acc * inv);
  }
}

#define GRAIN_PAGED_KERNELS(T, NAME)                                                             \
  extern "C" __global__ void write_slots_##NAME(const T *src, T *cache, const uint32_t *slots,    \
                                                uint32_t row_elems, uint64_t total) {             \
    write_slots<T>(src, cache, slots, row_elems, total);                                         \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(WARPS * 32) paged_attn_part_##NAME(               \
      const T *q, const T *kc, const T *vc, const uint32_t *tables, const uint32_t *ctx,          \
      float *part_out, float *part_max, float *part_sum, int nh, int nkv, int hd, int block_size, \
      int max_blocks, int nparts, int part_len, float scale) {                                   \
    attn_part<T>(q, kc, vc, tables, ctx, part_out, part_max, part_sum, nh, nkv, hd, block_size,  \
                 max_blocks, nparts, part_len, scale);                                           \
  }                                                                                              \
  extern "C" __global__ void paged_attn_reduce_##NAME(const float *part_out,                     \
                                                      const float *part_max,                     \
                                                      const float *part_sum, const uint32_t *ctx, \
                                                      T *out, int nh, int hd, int nparts,        \
                                                      int part_len) {                            \
    attn_reduce<T>(part_out, part_max, part_sum, ctx, out, nh, hd, nparts, part_len);            \
  }

GRAIN_PAGED_KERNELS(float, f32)
GRAIN_PAGED_KERNELS(__half, f16)
GRAIN_PAGED_KERNELS(__nv_bfloat16, bf16)
