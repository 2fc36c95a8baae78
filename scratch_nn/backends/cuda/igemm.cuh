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

// The warpgroup kernels' storage type per KIND: 0 half and 1 bfloat16 as raw 16 bits, 2 fp32
// (tf32 products: the tensor cores read the upper 19 bits of each fp32 operand). st_to_f /
// f_to_st convert a stored value to and from fp32 (identity for fp32 storage).
template <int KIND> struct Elem { typedef u16 T; };
template <> struct Elem<2> { typedef float T; };
template <int KIND> using elem_t = typename Elem<KIND>::T;
template <int KIND> __device__ __forceinline__ float st_to_f(elem_t<KIND> v) {
    if constexpr (KIND == 2) return v; else return u16_to_f<KIND>(v);
}
template <int KIND> __device__ __forceinline__ elem_t<KIND> f_to_st(float f) {
    if constexpr (KIND == 2) return f; else return f_to_u16<KIND>(f);
}
// fp32 bits rounded to tf32 (10 mantissa bits, to nearest, ties away: cuBLAS's and cuDNN's
// rounding; the tensor cores themselves drop the low 13 bits), still as fp32 bits
__device__ __forceinline__ unsigned tf32_round(unsigned bits) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(__uint_as_float(bits)));
    return r;
}
// what a packing kernel or the input conversion stores: 16-bit rounding, or fp32 rounded to tf32
// (operands that only ever feed tensor-core products)
template <int KIND> __device__ __forceinline__ elem_t<KIND> f_to_operand(float f) {
    if constexpr (KIND == 2) return __uint_as_float(tf32_round(__float_as_uint(f))); else return f_to_u16<KIND>(f);
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
// four 8x8 16-bit matrices from shared memory, lanes 8j..8j+7 giving matrix j's row addresses
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}


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

// What conv_igemm and conv_wgmma set up before their K loops: class z's tap table `tz` in
// shared memory (per tap the input offset of its (dh, dw), its weight-row offset; the tap
// count; the packed weights' row length) and each of the CTA's BM output rows' offset in the
// (N, OHo, OWo, F) output (-1 past M). The caller synchronises.
template <int BM, int NTHR>
__device__ __forceinline__ void ig_setup(const int* __restrict__ tz, int* tap_off, int* tap_w, int* tap_dh, int* tap_dw,
                                         int* ntaps_s, int* wrow_s, long long* out_row, int tid, int m0, int M, int W,
                                         int C, int F, int OHc, int OWc, int OHo, int OWo, int os, int ph, int pw) {
    if (tid < 9) {
        int dh = tz[1 + 3 * tid], dw = tz[2 + 3 * tid];
        tap_dh[tid] = dh; tap_dw[tid] = dw;
        tap_off[tid] = (dh * W + dw) * C;
        tap_w[tid] = tz[3 + 3 * tid] * C;
    }
    if (tid == 0) { *ntaps_s = tz[0]; *wrow_s = tz[28] * C; }
    for (int r = tid; r < BM; r += NTHR) {
        int m = m0 + r;
        long long o = -1;
        if (m < M) {
            int n = m / (OHc * OWc), rem = m - n * (OHc * OWc), ii = rem / OWc, jj = rem - ii * OWc;
            o = ((long long)(n * OHo + ii * os + ph) * OWo + jj * os + pw) * F;
        }
        out_row[r] = o;
    }
}

// The epilogue's store: the staged BM x BN output tile (rows of BN + IG_PAD values) to its
// rows' offsets in y, 16 bytes a thread, channels past F and rows past M (offset -1) skipped.
// With add (the same layout as y; may be null) each value is y + add, added in fp32 and rounded
// again: a residual block's two input gradients summed as add_nhwc would, without its pass.
template <int KIND, int BM, int BN, int NTHR>
__device__ __forceinline__ void ig_store_tile(const elem_t<KIND>* Cs, const long long* out_row, elem_t<KIND>* __restrict__ y,
                                              int f0, int F, int tid, const elem_t<KIND>* __restrict__ add) {
    typedef elem_t<KIND> T;
    constexpr int EPC = 16 / sizeof(T), OCH = BN / EPC, LDO = BN + IG_PAD;   // values a 16-byte chunk
    for (int q = tid; q < BM * OCH; q += NTHR) {
        int r = q / OCH, cc = q - r * OCH, f = f0 + cc * EPC;
        long long o = out_row[r];
        if (o >= 0 && f < F) {
            uint4 v = *reinterpret_cast<const uint4*>(Cs + r * LDO + cc * EPC);
            if (add) {
                uint4 a = *reinterpret_cast<const uint4*>(add + o + f);
                T* pv = reinterpret_cast<T*>(&v);
                const T* pa = reinterpret_cast<const T*>(&a);
#pragma unroll
                for (int e = 0; e < EPC; ++e) pv[e] = f_to_st<KIND>(st_to_f<KIND>(pv[e]) + st_to_f<KIND>(pa[e]));
            }
            *reinterpret_cast<uint4*>(y + o + f) = v;
        }
    }
}

// One epilogue pair (channels f, f + 1 of a row): + bias (fp32, may be null), ReLU (a NaN
// stays), rounded to the storage type (h0, h1) and staged as one pair at dst.
template <int KIND>
__device__ __forceinline__ void ig_stage_pair(float v0, float v1, const float* __restrict__ bias, int f, int F, int relu,
                                              elem_t<KIND>* dst, elem_t<KIND>& h0, elem_t<KIND>& h1) {
    if (bias && f < F) { v0 += bias[f]; v1 += bias[f + 1]; }
    if (relu) { v0 = v0 > 0.f ? v0 : (v0 != v0 ? v0 : 0.f); v1 = v1 > 0.f ? v1 : (v1 != v1 ? v1 : 0.f); }
    h0 = f_to_st<KIND>(v0);
    h1 = f_to_st<KIND>(v1);
    if constexpr (KIND == 2) *reinterpret_cast<float2*>(dst) = make_float2(h0, h1);
    else *reinterpret_cast<unsigned*>(dst) = (unsigned)h0 | ((unsigned)h1 << 16);
}
