// Implicit-GEMM convolutions on Hopper's warpgroup tensor cores (wgmma.mma_async, sm_90a):
// the same GEMM as conv_igemm.cu's conv_igemm (forward, and the data gradient of stride 1 and
// stride 2 through the sub-pixel classes; see there for the tap table and the epilogue), with
// the operands in shared memory read by the tensor cores themselves instead of by ldmatrix.
//
// A CTA is WG warpgroups (128 threads each) over BM = 128 * WG output positions by BN
// channels; warpgroup g owns rows 128 g .. 128 g + 127 as two m64 halves, each
// wgmma.m64nBNk16 a K step of 16. K goes 64 channels a stage: one 128-byte row of 16-bit values
// per position (A) and per output channel (B), stored with the 128-byte swizzle (16-byte chunk
// c of row r at chunk c ^ (r % 8)) that the matrix descriptors name, so the tensor cores'
// reads of 8 rows hit distinct banks. Every thread gathers its rows' chunks with cp.async
// (zero-filled outside the image), STAGES deep; the copies are made visible to the tensor
// cores (async proxy) by fence.proxy.async before the barrier that releases a stage.
//
// Output and statistics are the same as conv_igemm's, and in the same order within a
// warpgroup's 128 rows whatever BN, WG or STAGES a measurement picks (one stats chunk per
// warpgroup: rows summed per thread, over lanes by shuffles, then over the 4 warps in order).
// Needs C % 64 == 0, F % 8 == 0.
//
// Pipelining. WG_INFLIGHT 0 (the default; conv_igemm.py passes -DWG_INFLIGHT) waits for each K
// step's wgmma group before the next step's barrier. With 1, conv_wgmma and conv_wgrad_wg leave
// one group running across it, so the tensor cores need not idle between steps; the stage
// that group reads is then free a step later, so loads run STAGES - 2 steps ahead instead of
// STAGES - 1. The products and their order are the same either way (the bits do not change).
// Measured on the H100 (ResNet-18 b512 fp16, each side tuned, 2026-12-07): forward and data
// gradient the same within 1%, weight gradients 12-25% slower with 1, the eager step 10.53
// against 10.17 ms: the steps wait on their operand copies, not on the tensor cores.
#include "igemm.cuh"

#ifndef WG_INFLIGHT
#define WG_INFLIGHT 0
#endif

// K-major operand, 128-byte swizzle: start address, leading offset 16 bytes (unused when
// swizzled), 8-row groups 1024 bytes apart, layout type 1 (bits 62-63)
__device__ __forceinline__ unsigned long long wg_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
__device__ __forceinline__ unsigned wg_swz(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// Pins registers in place across the wgmma region (CUTLASS's warpgroup_fence_operand): without
// it the compiler may move their zeroing or copies in between a group's issue and its wait,
// and ptxas then serialises the groups (C7515) that WG_INFLIGHT means to overlap
template <int N> __device__ __forceinline__ void wg_fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}
template <int M, int N> __device__ __forceinline__ void wg_fence_regs(float (&r)[M][N]) {
#pragma unroll
    for (int a = 0; a < M; ++a) wg_fence_regs(r[a]);
}
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// acc = 0, pinned in place for the wgmma region (wg_fence_regs)
template <int M, int N> __device__ __forceinline__ void wg_zero(float (&acc)[M][N]) {
#pragma unroll
    for (int a = 0; a < M; ++a)
#pragma unroll
        for (int c = 0; c < N; ++c) acc[a][c] = 0.f;
    wg_fence_regs(acc);
}
// The dynamic shared memory's first 1024-byte boundary (the 128-byte swizzle pattern follows
// address bits 7-9): its shared-window address, and its generic pointer
__device__ __forceinline__ unsigned char* swizzle_base(unsigned char* raw_smem, unsigned& base) {
    const unsigned raw = smem_addr(raw_smem);
    base = (raw + 1023u) & ~1023u;
    return raw_smem + (base - raw);
}

// The accumulator operands: WG_D* list d[] as "+f" outputs, WG_R<n> their placeholders %0..%(n-1);
// then the two descriptors, scale-d (1: accumulate) and the transpose immediate (TR, for both).
#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
    "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_D32(i) WG_D8(i), WG_D8(i + 8), WG_D8(i + 16), WG_D8(i + 24)
#define WG_D64 WG_D32(0), WG_D32(32)
#define WG_D96 WG_D32(0), WG_D32(32), WG_D32(64)
#define WG_D48 WG_D32(0), WG_D8(32), WG_D8(40)
#define WG_R32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_R64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_R48 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define WG_R96 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define WGMMA_ASM(N, TY, R, D, DA, DB, SC, TRI)                                                       \
    asm volatile("{ .reg .pred p; setp.ne.b32 p, " SC ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " {" R "}, " DA ", " DB ", p, 1, 1, " \
                 TRI ", " TRI "; }\n" : D : "l"(da), "l"(db), "n"(1), "n"(TR))

// tf32 (KIND 2): k8 (32 bytes of a 128-byte row, as f16's k16) and no transpose immediates:
// tf32 operands must be K-major
#define WGMMA_TF32_ASM(N, R, D, DA, DB, SC)                                                           \
    asm volatile("{ .reg .pred p; setp.ne.b32 p, " SC ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" N "k8.f32.tf32.tf32 {" R "}, " DA ", " DB ", p, 1, 1; }\n" \
                 : D : "l"(da), "l"(db), "n"(1))

// d (64 x N fp32, N / 2 per thread) += A (64 x 16, descriptor da) * B (16 x N, descriptor db)
// (tf32: 64 x 8 by 8 x N, the same 32 bytes a row); TR = 1: both operands MN-major (the weight
// gradient's, whose K is the positions; 16-bit only)
template <int KIND, int TR>
__device__ __forceinline__ void wgmma_n64(float (&d)[32], unsigned long long da, unsigned long long db) {
    static_assert(KIND != 2 || TR == 0, "tf32 operands are K-major");
    if constexpr (KIND == 0) WGMMA_ASM("64", "f16", WG_R32, WG_D32(0), "%32", "%33", "%34", "%35");
    else if constexpr (KIND == 1) WGMMA_ASM("64", "bf16", WG_R32, WG_D32(0), "%32", "%33", "%34", "%35");
    else WGMMA_TF32_ASM("64", WG_R32, WG_D32(0), "%32", "%33", "%34");
}
template <int KIND, int TR>
__device__ __forceinline__ void wgmma_n128(float (&d)[64], unsigned long long da, unsigned long long db) {
    static_assert(KIND != 2 || TR == 0, "tf32 operands are K-major");
    if constexpr (KIND == 0) WGMMA_ASM("128", "f16", WG_R64, WG_D64, "%64", "%65", "%66", "%67");
    else if constexpr (KIND == 1) WGMMA_ASM("128", "bf16", WG_R64, WG_D64, "%64", "%65", "%66", "%67");
    else WGMMA_TF32_ASM("128", WG_R64, WG_D64, "%64", "%65", "%66");
}
template <int KIND, int TR>
__device__ __forceinline__ void wgmma_n192(float (&d)[96], unsigned long long da, unsigned long long db) {
    static_assert(KIND != 2 || TR == 0, "tf32 operands are K-major");
    if constexpr (KIND == 0) WGMMA_ASM("192", "f16", WG_R96, WG_D96, "%96", "%97", "%98", "%99");
    else if constexpr (KIND == 1) WGMMA_ASM("192", "bf16", WG_R96, WG_D96, "%96", "%97", "%98", "%99");
    else WGMMA_TF32_ASM("192", WG_R96, WG_D96, "%96", "%97", "%98");
}

template <int KIND, int BN, int TR = 0>
__device__ __forceinline__ void wgmma_tile(float (&d)[BN / 2], unsigned long long da, unsigned long long db) {
    static_assert(BN == 64 || BN == 128 || BN == 192, "wgmma tiles of 64, 128 or 192 columns");
    if constexpr (BN == 64) wgmma_n64<KIND, TR>(d, da, db);
    else if constexpr (BN == 128) wgmma_n128<KIND, TR>(d, da, db);
    else wgmma_n192<KIND, TR>(d, da, db);
}

// One K step of 64 channels (tf32: 32) of a warpgroup's 128 rows (two m64 halves at sa, sa + 8
// KB) by BN channels (sb), both K-major 128-byte-swizzled stages: four k16 (k8) wgmma per half,
// one group
template <int KIND, int BN>
__device__ __forceinline__ void wg_kstep(float (&acc)[2][BN / 2], unsigned sa, unsigned sb) {
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        wgmma_tile<KIND, BN>(acc[0], wg_desc(sa + kk * 32), wg_desc(sb + kk * 32));
        wgmma_tile<KIND, BN>(acc[1], wg_desc(sa + 64 * 128 + kk * 32), wg_desc(sb + kk * 32));
    }
    wg_commit();
}

// d (64 x N fp32) += A (64 x 16 from registers: each warp's 16 rows as ldmatrix_x4 leaves them,
// the layout of mma.sync m16n8k16's A) * B (16 x N, K-major descriptor db)
#define WGMMA_RS_ASM(N, TY, R, D, A, DB, SC)                                                              \
    asm volatile("{ .reg .pred p; setp.ne.b32 p, " SC ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." TY " {" R "}, {" A "}, " DB       \
                 ", p, 1, 1, 0; }\n" : D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1))
// tf32: 64 x 8 of A, (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4) per warp: what ldmatrix_x4
// leaves from the same 16-byte row addresses as f16's
#define WGMMA_RS_TF32_ASM(N, R, D, A, DB, SC)                                                             \
    asm volatile("{ .reg .pred p; setp.ne.b32 p, " SC ", 0;\n"                                            \
                 "wgmma.mma_async.sync.aligned.m64n" N "k8.f32.tf32.tf32 {" R "}, {" A "}, " DB           \
                 ", p, 1, 1; }\n" : D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1))
template <int KIND, int BN>
__device__ __forceinline__ void wgmma_rs_tile(float (&d)[BN / 2], const unsigned (&a)[4], unsigned long long db) {
    static_assert(BN == 64 || BN == 128 || (BN == 96 && KIND == 2), "register-A wgmma tiles of 64 or 128 columns (tf32: or 96)");
    if constexpr (BN == 96) {       // the tf32 weight gradient of a 32-channel 3x3 (288 columns)
        WGMMA_RS_TF32_ASM("96", WG_R48, WG_D48, "%48, %49, %50, %51", "%52", "%53");
    } else if constexpr (BN == 64) {
        if constexpr (KIND == 0) WGMMA_RS_ASM("64", "f16", WG_R32, WG_D32(0), "%32, %33, %34, %35", "%36", "%37");
        else if constexpr (KIND == 1) WGMMA_RS_ASM("64", "bf16", WG_R32, WG_D32(0), "%32, %33, %34, %35", "%36", "%37");
        else WGMMA_RS_TF32_ASM("64", WG_R32, WG_D32(0), "%32, %33, %34, %35", "%36", "%37");
    } else {
        if constexpr (KIND == 0) WGMMA_RS_ASM("128", "f16", WG_R64, WG_D64, "%64, %65, %66, %67", "%68", "%69");
        else if constexpr (KIND == 1) WGMMA_RS_ASM("128", "bf16", WG_R64, WG_D64, "%64, %65, %66, %67", "%68", "%69");
        else WGMMA_RS_TF32_ASM("128", WG_R64, WG_D64, "%64, %65, %66, %67", "%68", "%69");
    }
}

// ------------------------------------------------------------------ the warpgroup kernels' epilogue
// What conv_wgmma and conv_halo do once their K loop is done (every operand copy waited for and
// the CTA synchronised, so the output tile may reuse the operand buffers at smem): + bias, ReLU,
// rounded to 16 bits, staged in shared memory and stored 16 bytes a thread to the rows'
// offsets out_row (plus add's values there where add is not null, as conv_igemm's); with
// stats, each warpgroup's 128 rows also write one chunk of per-channel
// mean and squared deviations of the rounded outputs (chunk blockIdx.x * WG + wg).
// Two consecutive stored values (channels f, f + 1) as fp32
template <int KIND> __device__ __forceinline__ void st_pair(const elem_t<KIND>* p, float& v0, float& v1) {
    if constexpr (KIND == 2) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        v0 = v.x; v1 = v.y;
    } else {
        const unsigned v = *reinterpret_cast<const unsigned*>(p);
        v0 = u16_to_f<KIND>((u16)(v & 0xffffu)); v1 = u16_to_f<KIND>((u16)(v >> 16));
    }
}

template <int KIND, int BN, int WG>
__device__ __forceinline__ void wg_epilogue(float (&acc)[2][BN / 2], unsigned char* smem, const long long* out_row,
                                            float (&red_s)[WG][2][4][BN], elem_t<KIND>* __restrict__ y, int m0, int M,
                                            int f0, int F, const float* __restrict__ bias, int relu,
                                            float* __restrict__ stats, const elem_t<KIND>* __restrict__ add) {
    typedef elem_t<KIND> T;
    constexpr int NTHR = 128 * WG, BM = 128 * WG, NT = BN / 8, LDO = BN + IG_PAD;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wl = warp & 3;
    // thread (warp wl of warpgroup wg, lane g * 4 + t4) holds, for half a and n8 block b,
    // rows 128 wg + 64 a + 16 wl + g (+ 8) and columns 8 b + 2 t4 (+ 1): acc[a][4 b + 2 h + e]
    T* Cs = reinterpret_cast<T*>(smem);               // [BM][LDO]
    const int g = lane >> 2, t4 = lane & 3;
    float csum[NT][2];
#pragma unroll
    for (int b = 0; b < NT; ++b) csum[b][0] = csum[b][1] = 0.f;
#pragma unroll
    for (int a = 0; a < 2; ++a) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int r = wg * 128 + a * 64 + wl * 16 + g + h * 8;
            bool live = m0 + r < M;
#pragma unroll
            for (int b = 0; b < NT; ++b) {
                int col = b * 8 + 2 * t4, f = f0 + col;
                float v0 = acc[a][4 * b + 2 * h], v1 = acc[a][4 * b + 2 * h + 1];
                T h0, h1;
                ig_stage_pair<KIND>(v0, v1, bias, f, F, relu, Cs + r * LDO + col, h0, h1);
                if (live) { csum[b][0] += st_to_f<KIND>(h0); csum[b][1] += st_to_f<KIND>(h1); }
            }
        }
    }
    __syncthreads();
    ig_store_tile<KIND, BM, BN, NTHR>(Cs, out_row, y, f0, F, tid, add);
    if (stats == nullptr) return;
    // per warpgroup (one 128-row chunk): mean and squared deviations per channel of the rounded
    // outputs of its live rows, in a fixed order; the deviations re-read the staged tile
    const int rows_wg = max(0, min(128, M - m0 - wg * 128));
    column_sums_to_shared<NT>(csum, red_s[wg][0][wl], lane);
    __syncthreads();
    float mean[NT][2];
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            int col = b * 8 + 2 * t4 + e;
            float s_ = 0.f;
#pragma unroll
            for (int q = 0; q < 4; ++q) s_ += red_s[wg][0][q][col];
            mean[b][e] = s_ / max(rows_wg, 1);
            csum[b][e] = 0.f;
        }
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int r = wg * 128 + a * 64 + wl * 16 + g + h * 8;
            if (m0 + r >= M) continue;
#pragma unroll
            for (int b = 0; b < NT; ++b) {
                float d0, d1;
                st_pair<KIND>(Cs + r * LDO + b * 8 + 2 * t4, d0, d1);
                d0 -= mean[b][0];
                d1 -= mean[b][1];
                csum[b][0] += d0 * d0;
                csum[b][1] += d1 * d1;
            }
        }
    column_sums_to_shared<NT>(csum, red_s[wg][1][wl], lane);
    __syncthreads();
    if (rows_wg == 0) return;
    const int chunk = blockIdx.x * WG + wg;
    for (int col = tid & 127; col < BN; col += 128) {
        int f = f0 + col;
        if (f >= F) continue;
        float s1 = 0.f, s2 = 0.f;
        for (int q = 0; q < 4; ++q) { s1 += red_s[wg][0][q][col]; s2 += red_s[wg][1][q][col]; }
        stats[(long long)(chunk * 2) * F + f] = s1 / rows_wg;
        stats[(long long)(chunk * 2 + 1) * F + f] = s2;
    }
}

// grid: (ceil(M / BM), ceil(F / BN), classes); block: 128 * WG threads; dynamic shared
// memory: 1024 (alignment) + max(STAGES * (BM + BN) * 128, BM * (BN + IG_PAD) * 2) bytes.
template <int KIND, int BN, int WG, int STAGES>
__global__ void __launch_bounds__(128 * WG)
conv_wgmma(const elem_t<KIND>* __restrict__ x, const elem_t<KIND>* __restrict__ wp, elem_t<KIND>* __restrict__ y,
           const int* __restrict__ taps, int N, int H, int W, int C, int F, int OHc, int OWc, int s,
           int OHo, int OWo, int os, const float* __restrict__ bias, int relu, float* __restrict__ stats,
           const elem_t<KIND>* __restrict__ add) {
    constexpr int EPC = 16 / sizeof(elem_t<KIND>);   // values a 16-byte chunk
    constexpr int NTHR = 128 * WG, BM = 128 * WG, BK = 8 * EPC;
    constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + B_BYTES;
    constexpr int RSTEP = NTHR / 8;                   // rows between one thread's chunks
    constexpr int A_PER = BM / RSTEP, B_PER = (BN + RSTEP - 1) / RSTEP;
    constexpr int NACC = BN / 2;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    unsigned char* smem = swizzle_base(smem_raw, base);
    __shared__ int tap_off[9], tap_w[9], tap_dh[9], tap_dw[9];
    __shared__ int ntaps_s, wrow_s;
    __shared__ long long out_row[BM];
    __shared__ float red_s[WG][2][4][BN];

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wg = warp >> 2;
    const int z = blockIdx.z, ph = z >> 1, pw = z & 1;
    const int M = N * OHc * OWc;
    const int m0 = blockIdx.x * BM, f0 = blockIdx.y * BN;
    ig_setup<BM, NTHR>(taps + z * IG_TAPS_STRIDE, tap_off, tap_w, tap_dh, tap_dw, &ntaps_s, &wrow_s, out_row, tid, m0, M,
                       W, C, F, OHc, OWc, OHo, OWo, os, ph, pw);
    __syncthreads();
    const int ntaps = ntaps_s;
    const int KT = ntaps * (C / BK);

    // this thread's chunk kc of rows r0 + RSTEP * i (A: positions, B: output channels); all its
    // rows share r0 % 8, so one swizzled chunk offset serves them all
    const int kc = tid & 7, r0 = tid >> 3;
    const unsigned dst0 = (unsigned)(r0 * 128 + ((kc ^ (r0 & 7)) << 4));
    int a_off[A_PER];
    unsigned a_mask[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        int m = m0 + r0 + i * RSTEP;
        a_mask[i] = 0u;
        a_off[i] = 0;
        if (m < M) {
            int n = m / (OHc * OWc), rem = m - n * (OHc * OWc), ii = rem / OWc, jj = rem - ii * OWc;
            int hi = ii * s, wj = jj * s;
            a_off[i] = ((n * H + hi) * W + wj) * C + kc * EPC;
            for (int t = 0; t < ntaps; ++t) {
                int ih = hi + tap_dh[t], iw = wj + tap_dw[t];
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) a_mask[i] |= 1u << t;
            }
        }
    }
    int b_off[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int rr = r0 + i * RSTEP, f = f0 + rr;
        b_off[i] = (rr < BN && f < F) ? f * wrow_s + kc * EPC : -1;
    }

    float acc[2][NACC];
    wg_zero(acc);

    int lt = 0, lc = 0;        // the load iterator: tap, channel block
    auto load = [&](int buf) {
        const unsigned sa = base + buf * STAGE, sb = sa + A_BYTES;
        const int toff = tap_off[lt] + lc, woff = tap_w[lt] + lc;
        const unsigned bit = 1u << lt;
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            bool ok = (a_mask[i] & bit) != 0u;
            cp_async16(sa + dst0 + i * RSTEP * 128, ok ? x + (a_off[i] + toff) : x, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            if (r0 + i * RSTEP < BN) {
                bool ok = b_off[i] >= 0;
                cp_async16(sb + dst0 + i * RSTEP * 128, ok ? wp + (b_off[i] + woff) : wp, ok ? 16 : 0);
            }
        }
        lc += BK;
        if (lc >= C) { lc = 0; ++lt; }
    };

    constexpr int AHEAD = STAGES - 1 - WG_INFLIGHT;     // stages loaded ahead of the one computed
    static_assert(AHEAD >= 1, "STAGES too small for WG_INFLIGHT");
#pragma unroll
    for (int st = 0; st < AHEAD; ++st) {
        if (st < KT) load(st);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<AHEAD - 1>();
        fence_async_shared();
        __syncthreads();           // stage kt landed for every thread; step kt - 1 - WG_INFLIGHT's group is done
        const unsigned sa = base + (kt % STAGES) * STAGE + wg * 128 * 128, sb = base + (kt % STAGES) * STAGE + A_BYTES;
        wg_kstep<KIND, BN>(acc, sa, sb);
        if (kt + AHEAD < KT) load((kt + AHEAD) % STAGES);    // the stage that finished group read
        cp_async_commit();
        wg_wait<WG_INFLIGHT>();
        wg_fence_regs(acc);
    }
    wg_wait<0>();
    wg_fence_regs(acc);
    cp_async_wait<0>();
    __syncthreads();        // every warp is done with the operand buffers: they take the output tile

    wg_epilogue<KIND, BN, WG>(acc, smem, out_row, red_s, y, m0, M, f0, F, bias, relu, stats, add);
}

// ------------------------------------------------------------------ conv_tma (stride 1, TMA loads)
// conv_wgmma's GEMM for the forward of a k x k convolution of any stride s and padding p, and the
// data gradient of a stride-1 one whose padding keeps the size or of a stride-2 one (3x3 padding
// 1, 1x1 padding 0: per sub-pixel class z = blockIdx.z, a stride-1 gather over dY with taps in
// [-1, 1], read through a 3x3 padding-1 map with pad = 1, written every os = 2 rows and columns
// from (ph, pw) as conv_wgmma's classes), with the operands brought in by the copy engine
// (TMA, cp.async.bulk.tensor) instead of one cp.async per 16 bytes per thread: conv_wgmma spends
// more issue slots on its gathers' addresses and bounds tests than the tensor cores need to
// consume them (64 channels: 128 rows x 8 chunks a K step). One thread issues, per K step,
//   A: an im2col load per warpgroup, 128 positions x 64 channels, from the input's tensor map
//      (N, H, W, C) whose box of filter bases runs from -p to H-1+p-(k-1) (W alike) every s:
//      the copy engine walks the CTA's output positions in order (W, then H, then images) from
//      base (j s - p, i s - p) at the tap's offset (dh + p, dw + p) and fills what falls outside
//      the image, or past the batch, with zeros;
//   B: a tiled load of BN rows x 64 channels of the packed weights (F, taps * C);
// both with the 128-byte swizzle conv_wgmma writes by hand, so the tensor cores read the same
// tiles, and the products, their order and the epilogue are conv_wgmma's: the same bits.
// A stage's arrival is an mbarrier with the stage's byte count; a stage is refilled after the
// barrier that follows every warpgroup's wait for the group that read it, as in conv_wgmma.
// grid: (ceil(M / BM), ceil(F / BN)); block 128 * WG; dynamic shared memory as conv_wgmma's.
struct __align__(64) TensorMap { unsigned long long v[16]; };   // CUtensorMap, made by the host

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    asm volatile("{ .reg .pred p;\n"
                 "WAIT_%=: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAIT_%=; }" :: "r"(bar), "r"(parity) : "memory");
}
// one arrival (the issuing thread's) per stage barrier, made visible to the copy engine; the
// caller synchronises before any thread waits on them
template <int STAGES> __device__ __forceinline__ void mbar_init_stages(unsigned long long (&full)[STAGES]) {
#pragma unroll
    for (int st = 0; st < STAGES; ++st) mbar_init(smem_addr(&full[st]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// 128 positions x 64 channels of an (N, H, W, C) tensor map in im2col mode: filter base (w, h)
// of image n, channels c.., at tap offsets (ow, oh)
__device__ __forceinline__ void tma_im2col(unsigned dst, const TensorMap* tm, unsigned bar, int c, int w, int h, int n,
                                           unsigned short ow, unsigned short oh) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%3, %4, %5, %6}], [%2], {%7, %8};"
                 :: "r"(dst), "l"(tm), "r"(bar), "r"(c), "r"(w), "r"(h), "r"(n), "h"(ow), "h"(oh) : "memory");
}
// a box of a 2-D tensor map at (column k, row r)
__device__ __forceinline__ void tma_tile2d(unsigned dst, const TensorMap* tm, unsigned bar, int k, int r) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%3, %4}], [%2];" :: "r"(dst), "l"(tm), "r"(bar), "r"(k), "r"(r) : "memory");
}
// One stage of a TMA weight gradient (conv_wgrad_tma, conv_wgrad_tf32), arriving on bar: the AW
// positions from m onward (AW = a 128-byte row of the storage type) as MA tiled loads of dY seen
// as (M, F), AW channels f each, at sa, and NA im2col loads of X, AW columns each at their tap
// (kh, kw) as offsets, right after them
template <int MA, int NA, int AW>
__device__ __forceinline__ void wgrad_tma_stage(unsigned sa, unsigned bar, const TensorMap* tm_dy, const TensorMap* tm_x,
                                                int m, int HWo, int OW, int C, int KW, int s, int p, int f0, int n0) {
    constexpr int ATOM = AW * 128;
    const unsigned sb = sa + MA * ATOM;
    mbar_expect_tx(bar, (unsigned)((MA + NA) * ATOM));
    const int n = m / HWo, rem = m - n * HWo, oh = rem / OW, ow = rem - oh * OW;
#pragma unroll
    for (int j = 0; j < MA; ++j) tma_tile2d(sa + j * ATOM, tm_dy, bar, f0 + j * AW, m);
#pragma unroll
    for (int j = 0; j < NA; ++j) {
        const int col = n0 + j * AW, tp = col / C, kh = tp / KW, kw = tp - kh * KW;
        tma_im2col(sb + j * ATOM, tm_x, bar, col - tp * C, ow * s - p, oh * s - p, n, (unsigned short)kw,
                   (unsigned short)kh);
    }
}

template <int KIND, int BN, int WG, int STAGES>
__global__ void __launch_bounds__(128 * WG)
conv_tma(const __grid_constant__ TensorMap tm_x, const __grid_constant__ TensorMap tm_w, elem_t<KIND>* __restrict__ y,
         const int* __restrict__ taps, int N, int H, int W, int C, int F, int OH, int OW, int s, int pad, int OHo,
         int OWo, int os, const float* __restrict__ bias, int relu, float* __restrict__ stats,
         const elem_t<KIND>* __restrict__ add) {
    constexpr int NTHR = 128 * WG, BM = 128 * WG, BK = 128 / sizeof(elem_t<KIND>);   // channels a 128-byte row
    constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE = A_BYTES + B_BYTES;
    constexpr int NACC = BN / 2;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    unsigned char* smem = swizzle_base(smem_raw, base);
    __shared__ __align__(8) unsigned long long full[STAGES];
    __shared__ int tap_off[9], tap_w[9], tap_dh[9], tap_dw[9];
    __shared__ int ntaps_s, wrow_s;
    __shared__ long long out_row[BM];
    __shared__ float red_s[WG][2][4][BN];

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wg = warp >> 2;
    const int HW = OH * OW, M = N * HW;
    const int m0 = blockIdx.x * BM, f0 = blockIdx.y * BN;
    const int z = blockIdx.z, ph = z >> 1, pw = z & 1;
    if (tid == 0) mbar_init_stages(full);
    ig_setup<BM, NTHR>(taps + z * IG_TAPS_STRIDE, tap_off, tap_w, tap_dh, tap_dw, &ntaps_s, &wrow_s, out_row, tid, m0,
                       M, W, C, F, OH, OW, OHo, OWo, os, ph, pw);
    __syncthreads();
    const int KT = ntaps_s * (C / BK);
    // warpgroups whose 128 rows start inside the batch load them; the rest compute on whatever
    // the stage holds and store nothing (out_row -1)
    const int live = min(WG, (M - m0 + 127) / 128);
    const unsigned tx = (unsigned)(live * 128 * 128 + B_BYTES);

    float acc[2][NACC];
    wg_zero(acc);

    int lt = 0, lc = 0;        // the load iterator (thread 0's): tap, channel block
    auto load = [&](int buf) {
        const unsigned sa = base + buf * STAGE, sb = sa + A_BYTES, bar = smem_addr(&full[buf]);
        mbar_expect_tx(bar, tx);
        const unsigned short ow = (unsigned short)(tap_dw[lt] + pad), oh = (unsigned short)(tap_dh[lt] + pad);
        for (int g = 0; g < live; ++g) {
            int m = m0 + g * 128, n = m / HW, rem = m - n * HW, i = rem / OW, j = rem - i * OW;
            tma_im2col(sa + g * 128 * 128, &tm_x, bar, lc, j * s - pad, i * s - pad, n, ow, oh);
        }
        tma_tile2d(sb, &tm_w, bar, tap_w[lt] + lc, f0);
        lc += BK;
        if (lc >= C) { lc = 0; ++lt; }
    };

    constexpr int AHEAD = STAGES - 1;
    if (tid == 0)
        for (int st = 0; st < AHEAD && st < KT; ++st) load(st);
    for (int kt = 0; kt < KT; ++kt) {
        const int buf = kt % STAGES;
        mbar_wait(smem_addr(&full[buf]), (unsigned)((kt / STAGES) & 1));
        __syncthreads();           // every warpgroup's wait for step kt - 1's group is done: its stage is free
        const unsigned sa = base + buf * STAGE + wg * 128 * 128, sb = base + buf * STAGE + A_BYTES;
        wg_kstep<KIND, BN>(acc, sa, sb);
        if (tid == 0 && kt + AHEAD < KT) load((kt + AHEAD) % STAGES);
        wg_wait<0>();
        wg_fence_regs(acc);
    }
    __syncthreads();        // every warp is done with the operand buffers: they take the output tile

    wg_epilogue<KIND, BN, WG>(acc, smem, out_row, red_s, y, m0, M, f0, F, bias, relu, stats, add);
}

// ------------------------------------------------------------------ conv_halo (3x3, stride 1)
// conv_wgmma's GEMM for a 3x3 convolution of stride 1 and padding 1 (the forward, and the data
// gradient of such a convolution, whose taps are the same nine shifts) over C channels, a
// multiple of 64. A CTA's BM = 128 * WG output positions are either TR = BM / W whole rows of
// one image or NI = BM / (H * W) whole images, so the input they read is, per image, those
// rows and one more above and below, W + 2 columns wide (zeros outside the image and past the
// batch). That halo, NI x (TR + 2) x (W + 2) positions of C channels, is copied into shared
// memory once (a position's 2C bytes and 16 of padding, so that ldmatrix's 8 rows fall on
// distinct banks), and each K step, a tap (dh, dw) and 64 of the channels, reads it shifted by
// (dh, dw): A comes from registers (ldmatrix from the halo), B (the step's BN x 64 weights, as
// conv_wgmma's B) through a STAGES-deep cp.async ring. conv_wgmma gathers every tap's rows
// from L2 again: 9 times the input a tile reads, against the halo's (TR + 2) (W + 2) / (TR W)
// (1.4 for layer1's 4 rows of 32). The K steps come in conv_wgmma's order (tap, then channel
// block), with its epilogue and statistics chunks: the two give the same bits.
// grid: (ceil(M / BM), ceil(F / BN)); block 128 * WG; dynamic shared memory (halo_smem() in
// conv_igemm.py): 1024 (alignment) + the halo rounded up to 1024 + STAGES * BN * 128, at least
// the output tile.
template <int KIND, int BN, int WG, int STAGES>
__global__ void __launch_bounds__(128 * WG)
conv_halo(const elem_t<KIND>* __restrict__ x, const elem_t<KIND>* __restrict__ wp, elem_t<KIND>* __restrict__ y,
          const int* __restrict__ taps, int N, int H, int W, int C, int F, const float* __restrict__ bias, int relu,
          float* __restrict__ stats, const elem_t<KIND>* __restrict__ add) {
    constexpr int EPC = 16 / sizeof(elem_t<KIND>);   // values a 16-byte chunk
    constexpr int NTHR = 128 * WG, BM = 128 * WG, BK = 8 * EPC;
    constexpr int RSTEP = NTHR / 8, B_PER = (BN + RSTEP - 1) / RSTEP, NACC = BN / 2;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    unsigned char* smem = swizzle_base(smem_raw, base);
    __shared__ int tap_off[9], tap_w[9], tap_dh[9], tap_dw[9];
    __shared__ int ntaps_s, wrow_s;
    __shared__ long long out_row[BM];
    __shared__ float red_s[WG][2][4][BN];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wl = warp & 3;
    const int HW = H * W, M = N * HW;
    const int m0 = blockIdx.x * BM, f0 = blockIdx.y * BN;
    ig_setup<BM, NTHR>(taps, tap_off, tap_w, tap_dh, tap_dw, &ntaps_s, &wrow_s, out_row, tid, m0, M, W, C, F, H, W, H,
                       W, 1, 0, 0);
    const int TR = min(H, BM / W), HC = W + 2, HI = (TR + 2) * HC;   // rows a tile's image; halo columns, positions an image
    const int NI = BM / (TR * W), CH = C / EPC, PITCH = 16 * CH + 16;   // images a tile; 16-byte chunks, bytes a position
    const unsigned halo = base, bring = base + ((NI * HI * PITCH + 1023) & ~1023);

    // the halo: position (i, hr, hc) is input (n0 + i, r0 - 1 + hr, hc - 1)
    const int n0 = m0 / HW, r0 = (m0 - n0 * HW) / W;
    for (int q = tid; q < NI * HI * CH; q += NTHR) {
        const int pos = q / CH, ch = q - pos * CH, i = pos / HI, hp = pos - i * HI, hr = hp / HC, hc = hp - hr * HC;
        const int n = n0 + i, ih = r0 - 1 + hr, iw = hc - 1;
        const bool ok = n < N && ih >= 0 && ih < H && iw >= 0 && iw < W;
        cp_async16(halo + pos * PITCH + ch * 16, ok ? x + (((long long)n * H + ih) * W + iw) * C + ch * EPC : x,
                   ok ? 16 : 0);
    }
    __syncthreads();                                     // the tap tables (ig_setup)
    const int CB = C / BK, KT = ntaps_s * CB;

    // B: this thread's chunk kc of output-channel rows rb0 + RSTEP * i, swizzled as conv_wgmma's
    const int kc = tid & 7, rb0 = tid >> 3;
    const unsigned dst0 = (unsigned)(rb0 * 128 + ((kc ^ (rb0 & 7)) << 4));
    int b_off[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int rr = rb0 + i * RSTEP, f = f0 + rr;
        b_off[i] = (rr < BN && f < F) ? f * wrow_s + kc * EPC : -1;
    }
    auto load_b = [&](int kt, int buf) {                 // step kt = tap kt / CB, channel block kt % CB
        const unsigned sb = bring + buf * (BN * 128);
        const int t = kt / CB, woff = tap_w[t] + (kt - t * CB) * BK;
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            if (rb0 + i * RSTEP < BN) {
                bool ok = b_off[i] >= 0;
                cp_async16(sb + dst0 + i * RSTEP * 128, ok ? wp + (b_off[i] + woff) : wp, ok ? 16 : 0);
            }
        }
    };
    // no group in flight here: A comes from registers, and with two register sets alternating
    // ptxas still serialised the groups (C7513, NVRTC 12.9), so every step waits for its group
    constexpr int AHEAD = STAGES - 1;                  // weight stages loaded ahead of the one computed
    load_b(0, 0);
    cp_async_commit();                                   // group 0: the halo and step 0's weights
#pragma unroll
    for (int st = 1; st < AHEAD; ++st) {
        if (st < KT) load_b(st, st);
        cp_async_commit();
    }

    // A: this lane's ldmatrix row of each m64 half at tap (0, 0), channel block 0; k half (lane >> 4) * 8
    unsigned a_addr[2];
#pragma unroll
    for (int a = 0; a < 2; ++a) {
        const int r = wg * 128 + a * 64 + wl * 16 + (lane & 15), i = r / (TR * W), rr = r - i * TR * W;
        const int tr = rr / W, col = rr - tr * W;
        a_addr[a] = halo + (i * HI + (tr + 1) * HC + col + 1) * PITCH + (lane >> 4) * 16;
    }

    float acc[2][NACC];
    wg_zero(acc);

    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<AHEAD - 1>();
        fence_async_shared();
        __syncthreads();           // the halo and step kt's weights landed; step kt - 1's buffer is free
        const unsigned sb = bring + (kt % STAGES) * (BN * 128);
        const int t = kt / CB;
        const int shift = (tap_dh[t] * HC + tap_dw[t]) * PITCH + (kt - t * CB) * 128;
        unsigned af[2][4][4];
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) ldmatrix_x4(af[a][kk], a_addr[a] + shift + kk * 32);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            wgmma_rs_tile<KIND, BN>(acc[0], af[0][kk], wg_desc(sb + kk * 32));
            wgmma_rs_tile<KIND, BN>(acc[1], af[1][kk], wg_desc(sb + kk * 32));
        }
        wg_commit();
        if (kt + AHEAD < KT) load_b(kt + AHEAD, (kt + AHEAD) % STAGES);
        cp_async_commit();
        wg_wait<0>();
        wg_fence_regs(acc);
    }
    cp_async_wait<0>();
    __syncthreads();

    wg_epilogue<KIND, BN, WG>(acc, smem, out_row, red_s, y, m0, M, f0, F, bias, relu, stats, add);
}

// ------------------------------------------------------------------ conv_wgrad_wg (weight gradient)
// conv_igemm.cu's conv_wgrad on warpgroup mma: ws[z][f][col] = sum over the positions m of chunk
// z of dY[m, f] * X[n, oh*s - p + kh, ow*s - p + kw, c], col = (kh*KW + kw) * C + c. Here K is
// the positions, so both operands sit in shared memory MN-major (transposed for the mma): per
// stage 64 positions, each a 128-byte swizzled row of one 64-wide atom of f (A) or of columns
// (B); atoms 8 KB apart (the descriptors' leading offset), 8-position groups 1024 bytes apart.
// C % 64 == 0, so a 64-column atom never straddles two taps. A CTA computes BM channels by BN
// columns with WG warpgroups, each over BM / WG of the channels (BM / (64 WG) m64 halves) and
// all BN columns, so the B atoms a stage copies (the gathered input, 9 times the input for a
// 3x3) serve WG times the channels: fewer bytes from L2 per FLOP than one warpgroup's tile.
// grid: (ceil(F / BM), K / BN, chunks); block 128 * WG; dynamic shared memory
// 1024 + STAGES * (BM + BN) * 128 bytes.
template <int BYTES> __device__ __forceinline__ unsigned long long wg_desc_mn(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(BYTES >> 4) << 16) | (64ull << 32) |
           (1ull << 62);
}

// A weight-gradient tile's fp32 partials to out (F, K): thread (warp wl of warpgroup wg, lane
// g * 4 + t4) holds rows (f) 64 (wg MW + a) + 16 wl + g (+ 8), columns 8 b + 2 t4 (+ 1)
template <int MW, int BN>
__device__ __forceinline__ void wgrad_store_partials(const float (&acc)[MW][BN / 2], float* __restrict__ out, int F,
                                                     int K, int f0, int n0, int wg, int wl, int lane) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int a = 0; a < MW; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int f = f0 + (wg * MW + a) * 64 + wl * 16 + g + h * 8;
            if (f >= F) continue;
#pragma unroll
            for (int b = 0; b < BN / 8; ++b) {
                const int col = n0 + b * 8 + 2 * t4;
                *reinterpret_cast<float2*>(out + (long long)f * K + col) =
                    make_float2(acc[a][4 * b + 2 * h], acc[a][4 * b + 2 * h + 1]);
            }
        }
}

template <int KIND, int BM, int BN, int STAGES, int WG>
__global__ void __launch_bounds__(128 * WG)
conv_wgrad_wg(const u16* __restrict__ dy, const u16* __restrict__ x, float* __restrict__ ws, int N, int H, int W,
              int C, int F, int OH, int OW, int KW, int s, int p, int chunk, int K,
              unsigned long long mul_hw, int sh_hw, unsigned long long mul_w, int sh_w) {
    constexpr int BK = 64, ATOM = 64 * 128;           // positions a stage; bytes per 64-wide atom
    constexpr int MA = BM / 64, NA = BN / 64;         // atoms of A (m64 halves) and of B
    constexpr int MW = MA / WG;                       // A atoms (m64 halves) a warpgroup multiplies
    constexpr int NTHR = 128 * WG, RSTEP = NTHR / 8, RPER = BK / RSTEP;    // a thread's rows: r0 + RSTEP i
    static_assert(MW * WG == MA && RPER * RSTEP == BK, "BM a multiple of 64 WG");
    constexpr int A_BYTES = BM * 128, STAGE = (BM + BN) * 128;
    constexpr int NACC = BN / 2;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    swizzle_base(smem_raw, base);

    const int tid = threadIdx.x, lane = tid & 31, wl = (tid >> 5) & 3, wg = tid >> 7;
    const int M = N * OH * OW, HWo = OH * OW;
    const int f0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int mlo = blockIdx.z * chunk, mhi = min(M, mlo + chunk);
    const int KT = mhi > mlo ? (mhi - mlo + BK - 1) / BK : 0;

    // this thread's 16-byte chunk kc of rows (positions) r0 + RSTEP i, i < RPER, in every atom
    // (RSTEP a multiple of 8: one swizzled offset serves them all)
    const int kc = tid & 7, r0 = tid >> 3;
    const unsigned dst0 = (unsigned)(r0 * 128 + ((kc ^ (r0 & 7)) << 4));
    int b_kh[NA], b_kw[NA], b_c[NA];
#pragma unroll
    for (int j = 0; j < NA; ++j) {
        int col = n0 + j * 64, t = col / C;
        b_c[j] = col - t * C + kc * 8;
        b_kh[j] = t / KW;
        b_kw[j] = t - b_kh[j] * KW;
    }

    float acc[MW][NACC];
    wg_zero(acc);

    auto load = [&](int buf, int kt) {
        const unsigned sa = base + buf * STAGE, sb = sa + A_BYTES;
#pragma unroll
        for (int i = 0; i < RPER; ++i) {
            const int r = r0 + RSTEP * i, m = mlo + kt * BK + r;
            const bool live = m < mhi;
#pragma unroll
            for (int j = 0; j < MA; ++j) {
                const int f = f0 + j * 64 + kc * 8;
                const bool ok = live && f < F;
                cp_async16(sa + j * ATOM + dst0 + i * RSTEP * 128, ok ? dy + ((long long)m * F + f) : dy, ok ? 16 : 0);
            }
            int n = 0, oh = 0, ow = 0;
            if (live) { n = fdiv(m, mul_hw, sh_hw); int rem = m - n * HWo; oh = fdiv(rem, mul_w, sh_w); ow = rem - oh * OW; }
#pragma unroll
            for (int j = 0; j < NA; ++j) {
                const int ih = oh * s - p + b_kh[j], iw = ow * s - p + b_kw[j];
                const bool ok = live && ih >= 0 && ih < H && iw >= 0 && iw < W;
                cp_async16(sb + j * ATOM + dst0 + i * RSTEP * 128,
                           ok ? x + ((long long)((n * H + ih) * W + iw) * C + b_c[j]) : x, ok ? 16 : 0);
            }
        }
    };

    constexpr int AHEAD = STAGES - 1 - WG_INFLIGHT;     // stages loaded ahead of the one computed
    static_assert(AHEAD >= 1, "STAGES too small for WG_INFLIGHT");
#pragma unroll
    for (int st = 0; st < AHEAD; ++st) {
        if (st < KT) load(st, st);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<AHEAD - 1>();
        fence_async_shared();
        __syncthreads();
        const unsigned sa = base + (kt % STAGES) * STAGE, sb = sa + A_BYTES;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)          // 16 positions: two 8-row groups, 2048 bytes
#pragma unroll
            for (int a = 0; a < MW; ++a)
                wgmma_tile<KIND, BN, 1>(acc[a], wg_desc_mn<ATOM>(sa + (wg * MW + a) * ATOM + kk * 2048),
                                        wg_desc_mn<ATOM>(sb + kk * 2048));
        wg_commit();
        if (kt + AHEAD < KT) load((kt + AHEAD) % STAGES, kt + AHEAD);
        cp_async_commit();
        wg_wait<WG_INFLIGHT>();
        wg_fence_regs(acc);
    }
    wg_wait<0>();
    wg_fence_regs(acc);
    cp_async_wait<0>();
    wgrad_store_partials<MW, BN>(acc, ws + (long long)blockIdx.z * F * K, F, K, f0, n0, wg, wl, lane);
}

// ------------------------------------------------------------------ conv_wgrad_tma (weight gradient, TMA loads)
// conv_wgrad_wg's GEMM and stage layout with the operands brought in by the copy engine: per
// stage of 64 positions (chunks start at multiples of 64, so a stage never reads into the next
// chunk's positions), one thread issues
//   A: MA tiled loads of dY seen as (M, F): 64 positions x 64 channels f each, zeros past M and F;
//   B: NA im2col loads of X (N, H, W, C), 64 positions x 64 channels each, at the atom's tap
//      (kh, kw) as offsets: filter bases (ow*s - p, oh*s - p) walk the box from -p to
//      H-1+p-(k-1) with the convolution's stride (W alike), zeros outside the image and past
//      the batch;
// 128-byte swizzled rows as conv_wgrad_wg writes them, so the products, their order and the
// partials are conv_wgrad_wg's: the same bits. Synchronisation as conv_tma's.
// grid: (ceil(F / BM), K / BN, chunks); block 128 * WG; dynamic shared memory as conv_wgrad_wg's.
template <int KIND, int BM, int BN, int STAGES, int WG>
__global__ void __launch_bounds__(128 * WG)
conv_wgrad_tma(const __grid_constant__ TensorMap tm_dy, const __grid_constant__ TensorMap tm_x, float* __restrict__ ws,
               int N, int C, int F, int OH, int OW, int KW, int s, int p, int chunk, int K) {
    constexpr int BK = 64, ATOM = 64 * 128;
    constexpr int MA = BM / 64, NA = BN / 64, MW = MA / WG;
    static_assert(MW * WG == MA, "BM a multiple of 64 WG");
    constexpr int A_BYTES = BM * 128, STAGE = (BM + BN) * 128;
    constexpr int NACC = BN / 2;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    swizzle_base(smem_raw, base);
    __shared__ __align__(8) unsigned long long full[STAGES];

    const int tid = threadIdx.x, lane = tid & 31, wl = (tid >> 5) & 3, wg = tid >> 7;
    const int M = N * OH * OW, HWo = OH * OW;
    const int f0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int mlo = blockIdx.z * chunk, mhi = min(M, mlo + chunk);
    const int KT = mhi > mlo ? (mhi - mlo + BK - 1) / BK : 0;
    if (tid == 0) mbar_init_stages(full);
    __syncthreads();

    float acc[MW][NACC];
    wg_zero(acc);

    auto load = [&](int buf, int kt) {
        wgrad_tma_stage<MA, NA, 64>(base + buf * STAGE, smem_addr(&full[buf]), &tm_dy, &tm_x, mlo + kt * BK, HWo, OW, C,
                                    KW, s, p, f0, n0);
    };

    constexpr int AHEAD = STAGES - 1;
    if (tid == 0)
        for (int st = 0; st < AHEAD && st < KT; ++st) load(st, st);
    for (int kt = 0; kt < KT; ++kt) {
        const int buf = kt % STAGES;
        mbar_wait(smem_addr(&full[buf]), (unsigned)((kt / STAGES) & 1));
        __syncthreads();
        const unsigned sa = base + buf * STAGE, sb = sa + A_BYTES;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int a = 0; a < MW; ++a)
                wgmma_tile<KIND, BN, 1>(acc[a], wg_desc_mn<ATOM>(sa + (wg * MW + a) * ATOM + kk * 2048),
                                        wg_desc_mn<ATOM>(sb + kk * 2048));
        wg_commit();
        if (tid == 0 && kt + AHEAD < KT) load((kt + AHEAD) % STAGES, kt + AHEAD);
        wg_wait<0>();
        wg_fence_regs(acc);
    }

    wgrad_store_partials<MW, BN>(acc, ws + (long long)blockIdx.z * F * K, F, K, f0, n0, wg, wl, lane);
}

// ------------------------------------------------------------------ conv_wgrad_tf32 (weight gradient, fp32 storage)
// conv_wgrad_tma's GEMM for fp32 activations with tf32 products. wgmma takes tf32 operands
// K-major only, and here K is the positions, along which neither dY nor X is contiguous; so the
// copy engine lands conv_wgrad_tma's MN-major tiles (per stage of BK positions, one 128-byte
// swizzled row per position of each 32-wide atom: dY's channels f, X's columns) and four warps
// multiply them with mma.sync m16n8k8 (tf32), fragments read by 32-bit shared loads.
// Both operands are rounded to tf32 (to nearest) in registers, as cuDNN's weight gradients do;
// the wgmma forward and data gradient read their activations straight from shared memory, so
// the tensor cores truncate those (their packed weights are rounded by pack_weights).
// Bank conflicts: a fragment's 8 rows (or 8 columns) g are mapped to the atom's values
// (g & 3) + 16 (g >> 2) + 4 q, i.e. the two 16-byte chunks q and q + 4 of each position's row;
// the 4 positions a fragment load spans have their chunks XORed with 4 distinct values below 4
// by the swizzle, so the 32 lanes hit 32 banks. m16 tile I of the CTA takes q = 2 (I & 1) + (row
// >= 8) of atom I >> 1; n8 tile J takes q = J & 3 of atom J >> 2.
// CTA: WM x (NW / WM) warps over BM channels by BN columns; grid (ceil(F / BM), K / BN, chunks);
// block 32 * NW; dynamic shared memory 1024 + STAGES * (BM + BN) * 128 bytes (BK = 32 positions).
// A warp's TM x TN tile reads (TM + TN) * 8 words a k8 step for TM * TN / 128 mma: a 64 x 32 tile
// 1.5 32-bit loads a mma, a 64 x 64 one 1; the loads, not the mma, bound the smaller tiles.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int BM, int BN, int WM, int STAGES, int NW>
__global__ void __launch_bounds__(32 * NW)
conv_wgrad_tf32(const __grid_constant__ TensorMap tm_dy, const __grid_constant__ TensorMap tm_x, float* __restrict__ ws,
                int N, int C, int F, int OH, int OW, int KW, int s, int p, int chunk, int K) {
    constexpr int BK = 32, ATOM = BK * 128;          // positions a stage; bytes of a 32-wide atom's stage
    constexpr int MA = BM / 32, NA = BN / 32;
    constexpr int A_BYTES = MA * ATOM, STAGE = (MA + NA) * ATOM;
    constexpr int WN = NW / WM, TM = BM / WM, TN = BN / WN, MT = TM / 16, NT = TN / 8;
    static_assert(WM * WN == NW && TM % 16 == 0 && TN % 8 == 0 && BM % 32 == 0 && BN % 32 == 0, "tile shape");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    const unsigned char* smem = swizzle_base(smem_raw, base);
    __shared__ __align__(8) unsigned long long full[STAGES];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp / WN, wn = warp - wm * WN;
    const int g = lane >> 2, t = lane & 3;
    const int M = N * OH * OW, HWo = OH * OW;
    const int f0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int mlo = blockIdx.z * chunk, mhi = min(M, mlo + chunk);
    const int KT = mhi > mlo ? (mhi - mlo + BK - 1) / BK : 0;
    if (tid == 0) mbar_init_stages(full);
    __syncthreads();

    // this lane's byte offsets in a stage: A tile i's rows g (h 0) and g + 8 (h 1) at positions
    // t (e 0) and t + 4 (e 1) of a k8 step; B tile j's column g at positions t, t + 4
    int a_off[MT][2][2], b_off[NT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i) {
        const int I = wm * MT + i;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int r = t + 4 * e, q = 2 * (I & 1) + h + 4 * (g >> 2);
                a_off[i][h][e] = (I >> 1) * ATOM + r * 128 + ((q ^ r) << 4) + (g & 3) * 4;
            }
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int J = wn * NT + j;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int r = t + 4 * e, q = (J & 3) + 4 * (g >> 2);
            b_off[j][e] = A_BYTES + (J >> 2) * ATOM + r * 128 + ((q ^ r) << 4) + (g & 3) * 4;
        }
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

    auto load = [&](int buf, int kt) {
        wgrad_tma_stage<MA, NA, 32>(base + buf * STAGE, smem_addr(&full[buf]), &tm_dy, &tm_x, mlo + kt * BK, HWo, OW, C,
                                    KW, s, p, f0, n0);
    };

    constexpr int AHEAD = STAGES - 1;
    if (tid == 0)
        for (int st = 0; st < AHEAD && st < KT; ++st) load(st, st);
    for (int kt = 0; kt < KT; ++kt) {
        const int buf = kt % STAGES;
        mbar_wait(smem_addr(&full[buf]), (unsigned)((kt / STAGES) & 1));
        __syncthreads();           // every warp is done reading step kt - 1's stage: the copy engine may refill it
        if (tid == 0 && kt + AHEAD < KT) {
            fence_async_shared();  // those generic-proxy reads before the async-proxy writes
            load((kt + AHEAD) % STAGES, kt + AHEAD);
        }
        const unsigned char* st = smem + buf * STAGE;
#pragma unroll
        for (int kk = 0; kk < BK / 8; ++kk) {
            unsigned af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int e = 0; e < 2; ++e)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        af[i][2 * e + h] = tf32_round(*reinterpret_cast<const unsigned*>(st + a_off[i][h][e] + kk * 1024));
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    bf[j][e] = tf32_round(*reinterpret_cast<const unsigned*>(st + b_off[j][e] + kk * 1024));
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) mma_tf32(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }

    // acc[i][j][2 h + e]: row g + 8 h, column 2 t + e of tile (i, j), mapped as the fragments were
    float* out = ws + (long long)blockIdx.z * F * K;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
        const int I = wm * MT + i;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int f = f0 + (I >> 1) * 32 + 4 * (2 * (I & 1) + h) + (g & 3) + 16 * (g >> 2);
            if (f >= F) continue;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int J = wn * NT + j;
                const int col = n0 + (J >> 2) * 32 + 4 * (J & 3) + 2 * (t & 1) + 16 * (t >> 1);
                *reinterpret_cast<float2*>(out + (long long)f * K + col) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
        }
    }
}

// ------------------------------------------------------------------ conv_wgrad_tfwg (tf32 weight gradient on wgmma)
// conv_wgrad_tf32's GEMM and stages (the copy engine lands 32 positions a stage, MN-major:
// 128-byte swizzled rows of 32 channels f of dY and of 32 columns of X) with wgmma's tf32 form,
// which reads its operands K-major only (K is the positions). So:
//   A (dY^T, 64 channels a warpgroup's m64 tile): from registers (the register-operand wgmma),
//     each warp loading its fragments with conv_wgrad_tf32's conflict-free map and its rows
//     (the channel order f(I, g, h) below, undone by the store);
//   B (X, BN columns): transposed once per stage into a K-major, 128-byte-swizzled buffer of
//     BN rows of 32 positions (row n's 16-byte chunk rq, positions 4 rq .. 4 rq + 3, at chunk
//     rq ^ (n % 8)), each warp moving 32 columns of 4 positions at a time: its 32-bit loads hit
//     32 banks (one position row, the 32 columns' chunks permuted by the swizzle) and its 16-byte
//     stores 8 distinct chunks a quarter-warp.
// Both are rounded to tf32 (to nearest) on the way, as conv_wgrad_tf32 rounds. Stage k + 1's
// transpose runs, into the other of two buffers, while stage k's wgmma group does; a staging
// buffer is free once its dY fragments and (a step earlier) its X are read, so all STAGES of
// them are in flight. WGN warpgroups split the BN columns (BN / WGN each); every warpgroup
// multiplies all BM channels (BM / 64 m64 tiles).
// grid: (ceil(F / BM), K / BN, chunks); block 128 * WGN; dynamic shared memory
// 1024 + STAGES * (BM + BN) * 128 + 2 * BN * 128 bytes.
template <int BM, int BN, int WGN, int STAGES>
__global__ void __launch_bounds__(128 * WGN)
conv_wgrad_tfwg(const __grid_constant__ TensorMap tm_dy, const __grid_constant__ TensorMap tm_x, float* __restrict__ ws,
                int N, int C, int F, int OH, int OW, int KW, int s, int p, int chunk, int K) {
    constexpr int BK = 32, ATOM = BK * 128;          // positions a stage; bytes of a 32-wide atom's stage
    constexpr int MA = BM / 32, NA = BN / 32, MW = BM / 64, NWG = BN / WGN;
    constexpr int A_BYTES = MA * ATOM, STAGE = (MA + NA) * ATOM, T_BYTES = BN * 128;
    constexpr int TASKS = BN / (16 * WGN);           // (32 columns, 4 positions) pieces a warp transposes a stage
    static_assert(BM % 64 == 0 && (NWG == 64 || NWG == 96 || NWG == 128) && NWG * WGN == BN && TASKS * 16 * WGN == BN,
                  "tile shape");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned base;
    unsigned char* smem = swizzle_base(smem_raw, base);
    __shared__ __align__(8) unsigned long long full[STAGES];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wl = warp & 3, wgi = warp >> 2;
    const int g = lane >> 2, t = lane & 3;
    const int M = N * OH * OW, HWo = OH * OW;
    const int f0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int mlo = blockIdx.z * chunk, mhi = min(M, mlo + chunk);
    const int KT = mhi > mlo ? (mhi - mlo + BK - 1) / BK : 0;
    if (tid == 0) mbar_init_stages(full);
    __syncthreads();

    // A fragment (m64 tile a, this warp's m16 rows I = 4 a + wl): rows g (h 0), g + 8 (h 1) at
    // positions t (e 0), t + 4 (e 1) of a k8 step, as conv_wgrad_tf32's a_off
    int a_off[MW][2][2];
#pragma unroll
    for (int a = 0; a < MW; ++a) {
        const int I = 4 * a + wl;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int r = t + 4 * e, q = 2 * (I & 1) + h + 4 * (g >> 2);
                a_off[a][h][e] = (I >> 1) * ATOM + r * 128 + ((q ^ r) << 4) + (g & 3) * 4;
            }
    }

    float acc[MW][NWG / 2];
    wg_zero(acc);

    auto load = [&](int buf, int kt) {
        wgrad_tma_stage<MA, NA, 32>(base + buf * STAGE, smem_addr(&full[buf]), &tm_dy, &tm_x, mlo + kt * BK, HWo, OW, C,
                                    KW, s, p, f0, n0);
    };
    // stage kt's X into transpose buffer kt % 2, once its copy has landed
    auto transpose = [&](int kt) {
        const int buf = kt % STAGES;
        mbar_wait(smem_addr(&full[buf]), (unsigned)((kt / STAGES) & 1));
        const unsigned char* xs = smem + buf * STAGE + A_BYTES + (lane & 3) * 4;
        unsigned char* tb = smem + STAGES * STAGE + (kt & 1) * T_BYTES;
#pragma unroll
        for (int u = 0; u < TASKS; ++u) {
            const int task = warp + 4 * WGN * u, j = task >> 3, rq = task & 7, n = 32 * j + lane;
            unsigned v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = 4 * rq + i;
                v[i] = tf32_round(*reinterpret_cast<const unsigned*>(xs + j * ATOM + r * 128 + (((lane >> 2) ^ (r & 7)) << 4)));
            }
            *reinterpret_cast<uint4*>(tb + n * 128 + ((rq ^ (n & 7)) << 4)) = make_uint4(v[0], v[1], v[2], v[3]);
        }
    };

    if (tid == 0)
        for (int st = 0; st < STAGES && st < KT; ++st) load(st, st);
    if (KT > 0) transpose(0);
    fence_async_shared();          // the transposes' generic-proxy stores before the tensor cores' reads
    __syncthreads();
    for (int kt = 0; kt < KT; ++kt) {
        const int buf = kt % STAGES;
        const unsigned char* st = smem + buf * STAGE;
        unsigned af[MW][4][4];
#pragma unroll
        for (int a = 0; a < MW; ++a)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                for (int e = 0; e < 2; ++e)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        af[a][kk][2 * e + h] = tf32_round(*reinterpret_cast<const unsigned*>(st + a_off[a][h][e] + kk * 1024));
        const unsigned tb = base + STAGES * STAGE + (kt & 1) * T_BYTES + wgi * NWG * 128;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int a = 0; a < MW; ++a) wgmma_rs_tile<2, NWG>(acc[a], af[a][kk], wg_desc(tb + kk * 32));
        wg_commit();
        if (kt + 1 < KT) {
            transpose(kt + 1);
            fence_async_shared();
        }
        wg_wait<0>();
        wg_fence_regs(acc);
        __syncthreads();           // stage kt's operands read, transpose kt + 1 written: buffer buf may be refilled
        if (tid == 0 && kt + STAGES < KT) {
            fence_async_shared();  // the generic-proxy reads of buf before the copy engine's writes
            load(buf, kt + STAGES);
        }
    }

    // acc[a][4 b + 2 h + e]: row g + 8 h of warp wl's 16 in m64 tile a, column 8 b + 2 t + e of
    // this warpgroup's NWG
    float* out = ws + (long long)blockIdx.z * F * K;
#pragma unroll
    for (int a = 0; a < MW; ++a) {
        const int I = 4 * a + wl;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int f = f0 + (I >> 1) * 32 + 4 * (2 * (I & 1) + h) + (g & 3) + 16 * (g >> 2);
            if (f >= F) continue;
#pragma unroll
            for (int b = 0; b < NWG / 8; ++b) {
                const int col = n0 + wgi * NWG + 8 * b + 2 * t;
                *reinterpret_cast<float2*>(out + (long long)f * K + col) = make_float2(acc[a][4 * b + 2 * h], acc[a][4 * b + 2 * h + 1]);
            }
        }
    }
}
