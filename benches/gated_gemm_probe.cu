// The gated GEMM kernel on its own, for tuning it on the GPU machine without a Rust toolchain:
// `lancet compile --dump-kernels DIR [--gated-epilogue registers|staged]` writes the generated
// kernel, and this host program (built there with nvcc) includes it, checks it against a naive
// kernel on shapes with partial tiles, and times it at the headline's MLP shape.
// benches/device.sh group `probe` builds and runs it:
//
//   nvcc -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a \
//        -DKERNEL_FILE='"DIR/gated_gemm_silu_<hash>.cu"' -DKERNEL=gated_gemm_silu_<hash> \
//        benches/gated_gemm_probe.cu -lcuda -o probe
//
// The kernel must be the SiLU / bf16 / e4m3 variant (what the Llama presets generate), with
// clusters of 1 or 2 (its CLUSTER) and either epilogue. Prints one line per shape; exits
// non-zero when a check fails. Outputs are poisoned (e4m3 NaN) first.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include KERNEL_FILE

#define CHECK(x)                                                                                \
    do {                                                                                        \
        cudaError_t e = (x);                                                                    \
        if (e != cudaSuccess) {                                                                 \
            std::printf("%s failed at line %d: %s\n", #x, __LINE__, cudaGetErrorString(e));    \
            std::exit(2);                                                                       \
        }                                                                                       \
    } while (0)

// The same arithmetic one output at a time, summing the products in f32 in order (the kernel's
// tensor cores sum differently; the check's tolerance allows for it).
__global__ void reference(const u8* x, const u8* w, float ab, float inv_out, int m, int f, int k, float* h_out,
                          u8* q_out) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x, row = blockIdx.y;
    if (col >= f) return;
    auto e4m3 = [](u8 b) {
        unsigned pair;
        asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(pair) : "h"((u16)b));
        float v;
        asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"((u16)pair));
        return v;
    };
    float g = 0.0f, u = 0.0f;
    for (int i = 0; i < k; ++i) {
        const float xv = e4m3(x[(long long)row * k + i]);
        g += xv * e4m3(w[(long long)col * k + i]);
        u += xv * e4m3(w[(long long)(f + col) * k + i]);
    }
    float gate = g * ab, up = u * ab;
    round_mid(gate, up);
    float a = gate_act(gate), unused = 0.0f;
    round_mid(a, unused);
    float h = a * up;
    round_mid(h, unused);
    h_out[(long long)row * f + col] = h;
    q_out[(long long)row * f + col] = u8(to_fp8x2(h * inv_out, 0.0f));
}

// The descriptor the runtime encodes (runtime/src/exec/gated_gemm.rs): e4m3 rows of k bytes, read
// in boxes of BK bytes × `box_rows` rows with the 128-byte swizzle.
static CUtensorMap tensor_map(const void* base, int rows, int k, int box_rows) {
    CUtensorMap map;
    cuuint64_t dims[2] = {(cuuint64_t)k, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)k};
    cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows}, element_strides[2] = {1, 1};
    CUresult r = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims,
                                        strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        std::printf("cuTensorMapEncodeTiled failed: %d\n", (int)r);
        std::exit(2);
    }
    return map;
}

static float e4m3_to_float(u8 b) {
    const int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
    if (exp == 15 && man == 7) return NAN;
    const float v = exp == 0 ? std::ldexp(man / 8.0f, -6) : std::ldexp(1.0f + man / 8.0f, exp - 7);
    return sign ? -v : v;
}

// Checks one shape (and times it when `runs` > 0); returns whether the check passed.
static bool probe(int m, int f, int k, int runs) {
    std::mt19937 rng(m * 7919 + f * 31 + k);
    std::uniform_int_distribution<int> byte(0, 255);
    auto random_e4m3 = [&](size_t n) {
        std::vector<u8> v(n);
        for (auto& b : v) {
            do b = (u8)byte(rng);
            while ((b & 0x7F) == 0x7F || ((b >> 3) & 15) > 9);  // finite, |v| < 2^3
        }
        return v;
    };
    const std::vector<u8> hx = random_e4m3((size_t)m * k), hw = random_e4m3((size_t)2 * f * k);
    const float x_scale = 0.5f, w_scale = 0.25f / std::sqrt((float)k);
    u8 *x, *w, *q, *q_ref;
    float *h, *scales, *amax;
    CHECK(cudaMalloc(&x, hx.size()));
    CHECK(cudaMalloc(&w, hw.size()));
    CHECK(cudaMalloc(&q, (size_t)m * f));
    CHECK(cudaMalloc(&q_ref, (size_t)m * f));
    CHECK(cudaMalloc(&h, (size_t)m * f * 4));
    CHECK(cudaMalloc(&scales, 16));
    CHECK(cudaMalloc(&amax, 4));
    CHECK(cudaMemcpy(x, hx.data(), hx.size(), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(w, hw.data(), hw.size(), cudaMemcpyHostToDevice));

    // The reference first, for max |h| and so the output scale a calibration would choose.
    const dim3 ref_grid((f + 127) / 128, m);
    reference<<<ref_grid, 128>>>(x, w, x_scale * w_scale, 1.0f, m, f, k, h, q_ref);
    CHECK(cudaDeviceSynchronize());
    std::vector<float> hh((size_t)m * f);
    CHECK(cudaMemcpy(hh.data(), h, hh.size() * 4, cudaMemcpyDeviceToHost));
    float want_amax = 0.0f;
    for (float v : hh) want_amax = std::max(want_amax, std::fabs(v));
    const float out_scale = want_amax > 0.0f ? want_amax / 448.0f : 1.0f;
    reference<<<ref_grid, 128>>>(x, w, x_scale * w_scale, 1.0f / out_scale, m, f, k, h, q_ref);
    const float host_scales[3] = {x_scale, w_scale, out_scale};
    CHECK(cudaMemcpy(scales, host_scales, sizeof host_scales, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(q, 0xFF, (size_t)m * f));  // e4m3 NaN: an unwritten element shows
    CHECK(cudaMemset(amax, 0, 4));

    const CUtensorMap x_map = tensor_map(x, m, k, BM), w_map = tensor_map(w, 2 * f, k, BN);
    const int smem = SMEM_BYTES;
    CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    // As the runtime sizes it: one CTA per SM, or as many clusters as are resident at once.
    int resident = 0;
    if (CLUSTER == 1) {
        CHECK(cudaDeviceGetAttribute(&resident, cudaDevAttrMultiProcessorCount, 0));
    } else {
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(CLUSTER);
        config.blockDim = dim3(384);
        config.dynamicSmemBytes = smem;
        CHECK(cudaOccupancyMaxActiveClusters(&resident, KERNEL, &config));
    }
    const int groups = (((m + BM - 1) / BM + CLUSTER - 1) / CLUSTER) * ((f + BN - 1) / BN);
    const int grid = std::min(std::max(resident, 1), groups) * CLUSTER;
    const TmaMap& xm = reinterpret_cast<const TmaMap&>(x_map);
    const TmaMap& wm = reinterpret_cast<const TmaMap&>(w_map);
    auto launch = [&] { KERNEL<<<grid, 384, smem>>>(xm, wm, scales, scales + 1, scales + 2, q, amax, m, f, k); };
    launch();
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());

    std::vector<u8> got((size_t)m * f), want((size_t)m * f);
    CHECK(cudaMemcpy(got.data(), q, got.size(), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(want.data(), q_ref, want.size(), cudaMemcpyDeviceToHost));
    float got_amax = 0.0f;
    CHECK(cudaMemcpy(&got_amax, amax, 4, cudaMemcpyDeviceToHost));
    // Checked against the reference's own e4m3 output: the two differ only where the order of
    // the sums moves a value across a rounding boundary (a wrong tile would be off by ~1).
    // Against the exact h, the e4m3 rounding alone costs a few 1e-2: printed, not checked.
    double err = 0.0, norm = 0.0, err_exact = 0.0, norm_exact = 0.0;
    size_t nan = 0, differ = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double a = e4m3_to_float(got[i]) * out_scale, b = e4m3_to_float(want[i]) * out_scale;
        if (std::isnan(a)) {
            ++nan;
            continue;
        }
        differ += got[i] != want[i];
        err += (a - b) * (a - b);
        norm += b * b;
        err_exact += (a - hh[i]) * (a - hh[i]);
        norm_exact += (double)hh[i] * hh[i];
    }
    const double rel = std::sqrt(err / std::max(norm, 1e-30));
    const double rel_exact = std::sqrt(err_exact / std::max(norm_exact, 1e-30));
    const bool ok = nan == 0 && rel < 2e-2 && std::fabs(got_amax - want_amax) <= 1e-2f * want_amax;
    std::printf("m %5d f %5d k %5d: rel L2 %.3e vs the reference (bound 2e-2; %.3e vs exact h), %.3f %% of "
                "bytes differ, %zu unwritten, amax %.5g (reference %.5g)  %s\n",
                m, f, k, rel, rel_exact, 100.0 * differ / got.size(), nan, got_amax, want_amax,
                ok ? "PASS" : "FAIL");

    if (ok && runs > 0) {
        cudaEvent_t start, end;
        CHECK(cudaEventCreate(&start));
        CHECK(cudaEventCreate(&end));
        for (int i = 0; i < 10; ++i) launch();
        std::vector<float> ms;
        for (int i = 0; i < runs; ++i) {
            CHECK(cudaEventRecord(start));
            launch();
            CHECK(cudaEventRecord(end));
            CHECK(cudaEventSynchronize(end));
            float t = 0.0f;
            CHECK(cudaEventElapsedTime(&t, start, end));
            ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        const double median = ms[ms.size() / 2];
        std::printf("  timed: median %.4f ms (min %.4f, max %.4f) over %d runs, %.0f TFLOP/s (2·m·2f·k)\n", median,
                    ms.front(), ms.back(), runs, 2.0 * m * 2.0 * f * k / (median * 1e9));
    }
    cudaFree(x), cudaFree(w), cudaFree(q), cudaFree(q_ref), cudaFree(h), cudaFree(scales), cudaFree(amax);
    return ok;
}

int main() {
    // (m, f, k, timed runs): partial tiles in every dimension, then the headline's MLP.
    const int shapes[][4] = {
        {200, 200, 96, 0}, {130, 130, 256, 0}, {128, 128, 128, 0}, {300, 384, 512, 0}, {4096, 8192, 2048, 100},
    };
    int failed = 0;
    for (const auto& s : shapes) failed += !probe(s[0], s[1], s[2], s[3]);
    return failed == 0 ? 0 : 1;
}
