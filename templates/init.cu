// Parameters made on the GPU: random ones drawn as lancet's host generator draws them
// (compiler/src/weights.rs): SplitMix64 streams keyed by the seed, the tensor's name and its
// 64 Ki-element chunk; Box-Muller pairs in f32; and a checkpoint's tensors widened from their
// stored dtype. FP8 weights, from either, are quantized with their own per-tensor scale
// amax / max_finite. Not a generated kernel: one fixed program, compiled once, after the
// storage types and conversions of numerics.cuh (the runtime puts that first).

typedef unsigned long long u64;

#define CHUNK 65536ull
#define GOLDEN 0x9E3779B97F4A7C15ull
#define CHUNK_MIX 0xD6E8FEB86659FD93ull

// The k-th output (k >= 1) of a SplitMix64 stream that starts at `state`.
__device__ __forceinline__ u64 splitmix(u64 state, u64 k) {
    u64 z = state + k * GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1], as the host computes it (53 bits, then rounded to f32).
__device__ __forceinline__ float uniform(u64 bits) {
    return float(double((bits >> 11) + 1) / 9007199254740992.0);
}

// Element i of the Normal(0, std) tensor whose stream key is `key`.
__device__ __forceinline__ float normal_at(u64 key, u64 i, float std) {
    const u64 chunk = i / CHUNK, j = i % CHUNK, pair = j / 2;
    const u64 state = key ^ (chunk * CHUNK_MIX);
    const float u1 = uniform(splitmix(state, 2 * pair + 1));
    const float u2 = uniform(splitmix(state, 2 * pair + 2));
    const float r = sqrtf(-2.0f * logf(u1)) * std;
    float s, c;
    sincosf(6.28318530717958647692f * u2, &s, &c);
    return r * ((j & 1) ? s : c);
}

template <typename T>
__device__ __forceinline__ void normal(T* __restrict__ out, u64 n, u64 key, float std) {
    for (u64 i = u64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += u64(gridDim.x) * blockDim.x)
        out[i] = from_f32<T>(normal_at(key, i, std));
}

extern "C" __global__ void normal_f32(float* out, u64 n, u64 key, float std) { normal(out, n, key, std); }
extern "C" __global__ void normal_bf16(__nv_bfloat16* out, u64 n, u64 key, float std) { normal(out, n, key, std); }
extern "C" __global__ void normal_f16(__half* out, u64 n, u64 key, float std) { normal(out, n, key, std); }

// amax of x into *amax_bits (the bits of a non-negative float order as unsigned integers, so an
// integer atomicMax is a float max). *amax_bits must start at 0.
extern "C" __global__ void amax_f32(const float* __restrict__ x, u64 n, unsigned* amax_bits) {
    float m = 0.0f;
    for (u64 i = u64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += u64(gridDim.x) * blockDim.x)
        m = fmaxf(m, fabsf(x[i]));
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    if ((threadIdx.x & 31) == 0) atomicMax(amax_bits, __float_as_uint(m));
}

// x / scale rounded to the FP8 type (saturating), scale = amax / max_finite (1 when amax is 0),
// written to *scale_out for the weight's scale parameter.
template <typename T>
__device__ __forceinline__ void quantize(const float* __restrict__ x, u64 n, const unsigned* amax_bits,
                                         float max_finite, T* __restrict__ out, float* scale_out) {
    const float amax = __uint_as_float(*amax_bits);
    const float scale = amax > 0.0f ? __fdiv_rn(amax, max_finite) : 1.0f;
    const u64 start = u64(blockIdx.x) * blockDim.x + threadIdx.x;
    if (start == 0) *scale_out = scale;
    for (u64 i = start; i < n; i += u64(gridDim.x) * blockDim.x) out[i] = from_f32<T>(__fdiv_rn(x[i], scale));
}

extern "C" __global__ void quantize_e4m3(const float* x, u64 n, const unsigned* amax_bits, __nv_fp8_e4m3* out,
                                         float* scale_out) {
    quantize(x, n, amax_bits, 448.0f, out, scale_out);
}
extern "C" __global__ void quantize_e5m2(const float* x, u64 n, const unsigned* amax_bits, __nv_fp8_e5m2* out,
                                         float* scale_out) {
    quantize(x, n, amax_bits, 57344.0f, out, scale_out);
}

// A checkpoint's bf16 or f16 tensor widened to f32 (the FP8 quantization's input).
extern "C" __global__ void widen_bf16(const __nv_bfloat16* __restrict__ in, u64 n, float* __restrict__ out) {
    for (u64 i = u64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += u64(gridDim.x) * blockDim.x)
        out[i] = to_f32(in[i]);
}
extern "C" __global__ void widen_f16(const __half* __restrict__ in, u64 n, float* __restrict__ out) {
    for (u64 i = u64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += u64(gridDim.x) * blockDim.x)
        out[i] = to_f32(in[i]);
}
