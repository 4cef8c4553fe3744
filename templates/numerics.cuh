// Storage types of bf16, f16 and FP8 and their conversions to and from f32, rounding exactly as
// the reference interpreter does; shared by the generated kernels (through common.cu.tera) and
// the weight program (init.cu). Plain CUDA, no template syntax.
//
// No CUDA headers: cuda_bf16.h, cuda_fp16.h and cuda_fp8.h are ~23,000 lines that NVRTC parsed
// for every kernel, 50-90 ms of a 150-300 ms compile. The kernels need only storage types and
// scalar conversions, so they are defined here, with the headers' type names (the generated code
// and its tests use them) and the very instructions the headers emit: the same rounding, and for
// sm_80 to sm_90a the same machine code. Math intrinsics (__frcp_rn, __expf, erff,
// __shfl_xor_sync, ...) are NVRTC's own and need no header. The FP8 conversions are instructions
// of sm_89 and newer (ptxas says so on an older target; lancet's FP8 GEMMs need sm_89 anyway).

typedef long long i64;

// Storage only: the bits as memory holds them, with the headers' sizes and alignments, so a
// Pack of them is one vector access.
struct alignas(2) __nv_bfloat16 { unsigned short __x; };
struct alignas(2) __half { unsigned short __x; };
struct alignas(1) __nv_fp8_e4m3 { unsigned char __x; };
struct alignas(1) __nv_fp8_e5m2 { unsigned char __x; };
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2, "16-bit storage");
static_assert(sizeof(__nv_fp8_e4m3) == 1 && sizeof(__nv_fp8_e5m2) == 1, "8-bit storage");

// Plain (not volatile) asm, as in the headers, so unused conversions fold away.
__device__ __forceinline__ float to_f32(float x) { return x; }
// bf16 is the top half of an f32: Hopper has an instruction for it, older GPUs move the bits.
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
    float f;
#if __CUDA_ARCH__ >= 900
    asm("cvt.f32.bf16 %0, %1;" : "=f"(f) : "h"(x.__x));
#else
    asm("mov.b32 %0, {0, %1};" : "=f"(f) : "h"(x.__x));
#endif
    return f;
}
__device__ __forceinline__ float to_f32(__half x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.__x));
    return f;
}
// FP8 widens exactly to f16 (the low half of an f16x2 pair), and f16 to f32.
__device__ __forceinline__ float to_f32(__nv_fp8_e4m3 x) {
    unsigned int pair;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(pair) : "h"((unsigned short)x.__x));
    return to_f32(__half{(unsigned short)pair});
}
__device__ __forceinline__ float to_f32(__nv_fp8_e5m2 x) {
    unsigned int pair;
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(pair) : "h"((unsigned short)x.__x));
    return to_f32(__half{(unsigned short)pair});
}
__device__ __forceinline__ float to_f32(int x) { return float(x); }
__device__ __forceinline__ float to_f32(long long x) { return float(x); }

// Round to nearest even.
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    __nv_bfloat16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.__x) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) {
    __half r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.__x) : "f"(x));
    return r;
}
// FP8 conversions saturate to the largest finite value (satfinite), never to NaN; NaN stays NaN.
// The instruction converts a pair: x goes to the low byte, 0 to the high one (discarded).
template <> __device__ __forceinline__ __nv_fp8_e4m3 from_f32<__nv_fp8_e4m3>(float x) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(pair) : "f"(x), "f"(0.0f));
    return __nv_fp8_e4m3{(unsigned char)pair};
}
template <> __device__ __forceinline__ __nv_fp8_e5m2 from_f32<__nv_fp8_e5m2>(float x) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(pair) : "f"(x), "f"(0.0f));
    return __nv_fp8_e5m2{(unsigned char)pair};
}
template <> __device__ __forceinline__ int from_f32<int>(float x) { return int(truncf(x)); }
template <> __device__ __forceinline__ long long from_f32<long long>(float x) { return (long long)truncf(x); }

// x as stored in T: what the unfused graph would have written to memory between two ops.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }
