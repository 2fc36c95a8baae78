// What the tensor-core convolution files share (conv_igemm.cu: mma.sync, sm_75+; conv_wgmma.cu:
// wgmma, sm_90a): 16-bit storage as raw bits, the cp.async wrappers, the epilogue's column sums,
// the tap-table layout.
#pragma once
#include "common.cuh"

typedef unsigned short u16;

// ------------------------------------------------------------------ 16-bit conversions
template <int KIND> __device__ __forceinline__ float u16_to_f(u16 v);
template <> __device__ __forceinline__ float u16_to_f<0>(u16 v) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;
}
template <> __device__ __forceinline__ float u16_to_f<1>(u16 v) { return __uint_as_float(((unsigned)v) << 16); }
template <int KIND> __device__ __forceinline__ u16 f_to_u16(float f);
template <> __device__ __forceinline__ u16 f_to_u16<0>(float f) {
    u16 v; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(v) : "f"(f)); return v;
}
template <> __device__ __forceinline__ u16 f_to_u16<1>(float f) {   // round to nearest even; NaN stays NaN
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

// ------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// 16 bytes global -> shared, asynchronously; src_bytes 0 fills the 16 bytes with zeros
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }


// A warp's per-thread column values v[b][e] (column b*8 + 2*(lane&3) + e of its NT n8 tiles)
// summed over the 8 lanes holding each column (lane bits 2..4, by shuffles in a fixed order)
// and written to out[column] by the lanes of row 0.
template <int NT>
__device__ __forceinline__ void column_sums_to_shared(float (&v)[NT][2], float* out, int lane) {
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) v[b][e] += __shfl_xor_sync(0xffffffffu, v[b][e], o);
    if ((lane >> 2) == 0)
#pragma unroll
        for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int e = 0; e < 2; ++e) out[b * 8 + 2 * (lane & 3) + e] = v[b][e];
}

#define IG_PAD 8            // halves of padding per shared-memory row
#define IG_TAPS_STRIDE 32   // ints per class in the tap table: count, 9 * (dh, dw, idx), the layer's KH*KW

// q = n / d for 0 <= n < 2^31 by a multiply: mul = ceil(2^sh / d), sh = 32 + ceil(log2 d)
// (conv_igemm.py's fast_divisor makes the pair)
__device__ __forceinline__ int fdiv(int n, unsigned long long mul, int sh) {
    return (int)(((unsigned long long)(unsigned)n * mul) >> sh);
}
