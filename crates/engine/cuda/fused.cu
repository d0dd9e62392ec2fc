// The decoder's fused CUDA kernels (launched from src/model/fused/cuda.rs). Each replaces a run of
// candle ops that would each be a launch, an allocation and a pass over memory:
//   add_rms_norm   residual add + the next RMSNorm                       (2 ops -> 1)
//   rope_qkv       bias add, RoPE, head split and the KV-cache write      (~10 ops -> 1)
//   attn_partial   attention of one new position over the cache, per     (~6 ops -> 2)
//   attn_combine     chunk of positions, then the chunks merged (flash-decoding)
//   causal_softmax a prompt's scaled, causally masked softmax             (3 ops + a host mask -> 1)
//   silu_mul       SwiGLU's silu(gate) * up                              (2 ops -> 1)
// Arithmetic is in f32 whatever the storage type; results are rounded once, when stored.
// Every kernel is instantiated for f32, bf16 and f16 (suffixes _f32, _bf16, _f16).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

// x rounded to T and back: where candle stores an intermediate, so do we.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_float(from_float<T>(x)); }

struct Add {
    static constexpr float identity = 0.f;
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
    static constexpr float identity = -INFINITY;
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The reduction over the warp, returned to every lane.
template <typename Op> __device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = Op()(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The reduction over the block (blockDim.x a multiple of 32), returned to every thread.
template <typename Op> __device__ float block_reduce(float v) {
    __shared__ float partials[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce<Op>(v);
    if (lane == 0) partials[warp] = v;
    __syncthreads();
    v = warp_reduce<Op>(lane < warps ? partials[lane] : Op::identity);
    __syncthreads();  // partials may be reused by the caller's next reduction
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<Add>(v); }
__device__ __forceinline__ float block_sum(float v) { return block_reduce<Add>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<Max>(v); }

// One block per row. out holds two (rows, n) matrices: first x + h, then rmsnorm(x + h) * w.
template <typename T>
__device__ void add_rms_norm(const T* x, const T* h, const T* w, T* out, int rows, int n, float eps) {
    const size_t row = blockIdx.x;
    const T* xr = x + row * n;
    const T* hr = h + row * n;
    T* sum = out + row * n;
    T* normed = out + (size_t)rows * n + row * n;
    float squares = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const T s = from_float<T>(to_float(xr[i]) + to_float(hr[i]));
        sum[i] = s;
        squares += to_float(s) * to_float(s);
    }
    const float scale = rsqrtf(block_sum(squares) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        normed[i] = from_float<T>(to_float(sum[i]) * scale * to_float(w[i]));
}

// q, k, v: the projections of n new positions, (n, heads * d) and (n, kv_heads * d) rows, without
// their biases. Block (slot, row): slots [0, heads) are query heads, written rotated to
// q_out (heads, n, d); then kv_heads key heads, written rotated to the cache at position
// start + row; then kv_heads value heads, written as they are. The caches are (kv_heads, capacity, d).
// RoPE in the "neox" layout: element i pairs with i + d/2. Threads: d/2.
template <typename T>
__device__ void rope_qkv(const T* q, const T* k, const T* v, const T* bq, const T* bk, const T* bv,
                         int has_bias, const T* cos, const T* sin, T* q_out, T* k_cache, T* v_cache,
                         int heads, int kv_heads, int d, int n, int start, int capacity) {
    const int slot = blockIdx.x, row = blockIdx.y, i = threadIdx.x, half = d / 2;
    if (i >= half) return;
    const size_t pos = (size_t)start + row;
    const T *src, *bias;
    T* dst;
    bool rotate = true;
    if (slot < heads) {
        src = q + (size_t)row * heads * d + (size_t)slot * d;
        bias = bq + (size_t)slot * d;
        dst = q_out + ((size_t)slot * n + row) * d;
    } else if (slot < heads + kv_heads) {
        const int head = slot - heads;
        src = k + (size_t)row * kv_heads * d + (size_t)head * d;
        bias = bk + (size_t)head * d;
        dst = k_cache + ((size_t)head * capacity + pos) * d;
    } else {
        const int head = slot - heads - kv_heads;
        src = v + (size_t)row * kv_heads * d + (size_t)head * d;
        bias = bv + (size_t)head * d;
        dst = v_cache + ((size_t)head * capacity + pos) * d;
        rotate = false;
    }
    float a = to_float(src[i]), b = to_float(src[i + half]);
    if (has_bias) {
        a = round_to<T>(a + to_float(bias[i]));
        b = round_to<T>(b + to_float(bias[i + half]));
    }
    if (rotate) {
        const float c = to_float(cos[pos * half + i]), s = to_float(sin[pos * half + i]);
        const float ra = a * c - b * s, rb = b * c + a * s;
        a = ra;
        b = rb;
    }
    dst[i] = from_float<T>(a);
    dst[i + half] = from_float<T>(b);
}

// Decode attention, flash-decoding style. Grid (kv_heads, chunks), 4 warps per block: block
// (kvh, c) takes cache positions [c * ATTN_CHUNK, (c + 1) * ATTN_CHUNK) for the `group` query
// heads that share KV head kvh, so each key and value is read once for all of them. Each warp
// walks every 4th position with an online softmax; the warps are merged through shared memory
// and the block writes, per query head, its chunk's (max, sum of exp, unnormalized output) to
// partial (heads, chunks, d + 2) in f32. Lane l holds elements l, l + 32, ... of a head (LANES
// of them, d <= 32 * LANES); q is (heads, d) and `scale` (1/sqrt(d)) multiplies it.
#define ATTN_CHUNK 64
#define ATTN_WARPS 4
#define ATTN_MAX_GROUP 8

template <typename T, int LANES>
__device__ void attn_partial(const T* q, const T* k_cache, const T* v_cache, float* partial, float scale,
                             int group, int d, int total, int capacity, int chunks) {
    __shared__ float s_max[ATTN_WARPS][ATTN_MAX_GROUP];
    __shared__ float s_sum[ATTN_WARPS][ATTN_MAX_GROUP];
    __shared__ float s_out[ATTN_WARPS][ATTN_MAX_GROUP][32 * LANES];
    const int kvh = blockIdx.x, chunk = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float qv[ATTN_MAX_GROUP][LANES], mx[ATTN_MAX_GROUP], sum[ATTN_MAX_GROUP], out[ATTN_MAX_GROUP][LANES];
#pragma unroll
    for (int g = 0; g < ATTN_MAX_GROUP; ++g) {
        mx[g] = -INFINITY;
        sum[g] = 0.f;
#pragma unroll
        for (int j = 0; j < LANES; ++j) {
            const int e = j * 32 + lane;
            qv[g][j] = (g < group && e < d) ? scale * to_float(q[(size_t)(kvh * group + g) * d + e]) : 0.f;
            out[g][j] = 0.f;
        }
    }
    const T* keys = k_cache + (size_t)kvh * capacity * d;
    const T* values = v_cache + (size_t)kvh * capacity * d;
    const int begin = chunk * ATTN_CHUNK, end = min(begin + ATTN_CHUNK, total);
    for (int p = begin + warp; p < end; p += ATTN_WARPS) {
        float kv[LANES], vv[LANES];
#pragma unroll
        for (int j = 0; j < LANES; ++j) {
            const int e = j * 32 + lane;
            kv[j] = e < d ? to_float(keys[(size_t)p * d + e]) : 0.f;
            vv[j] = e < d ? to_float(values[(size_t)p * d + e]) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < ATTN_MAX_GROUP; ++g) {
            if (g >= group) break;
            float dot = 0.f;
#pragma unroll
            for (int j = 0; j < LANES; ++j) dot += qv[g][j] * kv[j];
            dot = warp_sum(dot);
            const float m = fmaxf(mx[g], dot);
            const float rescale = __expf(mx[g] - m), weight = __expf(dot - m);
            sum[g] = sum[g] * rescale + weight;
#pragma unroll
            for (int j = 0; j < LANES; ++j) out[g][j] = out[g][j] * rescale + weight * vv[j];
            mx[g] = m;
        }
    }
#pragma unroll
    for (int g = 0; g < ATTN_MAX_GROUP; ++g) {
        if (g >= group) break;
        if (lane == 0) {
            s_max[warp][g] = mx[g];
            s_sum[warp][g] = sum[g];
        }
#pragma unroll
        for (int j = 0; j < LANES; ++j) s_out[warp][g][j * 32 + lane] = out[g][j];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * d; idx += blockDim.x) {
        const int g = idx / d, e = idx % d;
        float m = -INFINITY;
        for (int w = 0; w < ATTN_WARPS; ++w) m = fmaxf(m, s_max[w][g]);
        float total_sum = 0.f, total_out = 0.f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (s_max[w][g] == -INFINITY) continue;  // a warp that had no position
            const float weight = __expf(s_max[w][g] - m);
            total_sum += s_sum[w][g] * weight;
            total_out += s_out[w][g][e] * weight;
        }
        float* dst = partial + ((size_t)(kvh * group + g) * chunks + chunk) * (d + 2);
        dst[e] = total_out;
        if (e == 0) {
            dst[d] = m;
            dst[d + 1] = total_sum;
        }
    }
}

// One block per query head, d threads: merges the chunks' partial results into out (heads * d).
template <typename T>
__device__ void attn_combine(const float* partial, T* out, int chunks, int d) {
    const int head = blockIdx.x, e = threadIdx.x;
    if (e >= d) return;
    const float* base = partial + (size_t)head * chunks * (d + 2);
    float m = -INFINITY;
    for (int c = 0; c < chunks; ++c) m = fmaxf(m, base[(size_t)c * (d + 2) + d]);
    float total_sum = 0.f, total_out = 0.f;
    for (int c = 0; c < chunks; ++c) {
        const float* part = base + (size_t)c * (d + 2);
        const float scale = __expf(part[d] - m);
        total_sum += part[d + 1] * scale;
        total_out += part[e] * scale;
    }
    out[(size_t)head * d + e] = from_float<T>(total_out / total_sum);
}

// Causal softmax of a prompt's attention scores: one block per row of scores (rows, total), where
// row r is query r % n of the prompt's n new positions, at position start + r % n, and sees keys
// 0 ..= start + r % n. `scale` multiplies the scores; masked keys get probability 0. Replaces
// candle's scale, mask upload and add, and softmax: three passes over the scores and a host mask.
template <typename T>
__device__ void causal_softmax(const T* scores, T* out, int n, int start, int total, float scale) {
    const size_t row = blockIdx.x;
    const T* in = scores + row * total;
    T* dst = out + row * total;
    const int visible = min(total, start + (int)(row % n) + 1);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, to_float(in[j]) * scale);
    m = block_max(m);
    float sum = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += __expf(to_float(in[j]) * scale - m);
    const float inv = 1.f / block_sum(sum);
    for (int j = threadIdx.x; j < total; j += blockDim.x)
        dst[j] = from_float<T>(j < visible ? __expf(to_float(in[j]) * scale - m) * inv : 0.f);
}

template <typename T>
__device__ void silu_mul(const T* gate, const T* up, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]);
        out[i] = from_float<T>(g / (1.f + __expf(-g)) * to_float(up[i]));
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                           \
    extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, const T* h, const T* w, T* out, int rows, \
                                                     int n, float eps) {                                 \
        add_rms_norm<T>(x, h, w, out, rows, n, eps);                                                     \
    }                                                                                                    \
    extern "C" __global__ void rope_qkv_##SUFFIX(                                                         \
        const T* q, const T* k, const T* v, const T* bq, const T* bk, const T* bv, int has_bias,         \
        const T* cos, const T* sin, T* q_out, T* k_cache, T* v_cache, int heads, int kv_heads, int d,    \
        int n, int start, int capacity) {                                                                \
        rope_qkv<T>(q, k, v, bq, bk, bv, has_bias, cos, sin, q_out, k_cache, v_cache, heads, kv_heads, d, \
                    n, start, capacity);                                                                 \
    }                                                                                                    \
    extern "C" __global__ void attn_partial_32_##SUFFIX(const T* q, const T* k, const T* v, float* p,      \
                                                        float scale, int group, int d, int total, int cap, int chunks) { \
        attn_partial<T, 1>(q, k, v, p, scale, group, d, total, cap, chunks);                                    \
    }                                                                                                    \
    extern "C" __global__ void attn_partial_64_##SUFFIX(const T* q, const T* k, const T* v, float* p,      \
                                                        float scale, int group, int d, int total, int cap, int chunks) { \
        attn_partial<T, 2>(q, k, v, p, scale, group, d, total, cap, chunks);                                    \
    }                                                                                                    \
    extern "C" __global__ void attn_partial_128_##SUFFIX(const T* q, const T* k, const T* v, float* p,     \
                                                         float scale, int group, int d, int total, int cap, int chunks) { \
        attn_partial<T, 4>(q, k, v, p, scale, group, d, total, cap, chunks);                                    \
    }                                                                                                    \
    extern "C" __global__ void attn_combine_##SUFFIX(const float* partial, T* out, int chunks, int d) {   \
        attn_combine<T>(partial, out, chunks, d);                                                        \
    }                                                                                                    \
    extern "C" __global__ void causal_softmax_##SUFFIX(const T* scores, T* out, int n, int start, int total, \
                                                       float scale) {                                    \
        causal_softmax<T>(scores, out, n, start, total, scale);                                          \
    }                                                                                                    \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gate, const T* up, T* out, size_t n) {          \
        silu_mul<T>(gate, up, out, n);                                                                   \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
INSTANTIATE(__half, f16)
