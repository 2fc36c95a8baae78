// Implicit-GEMM convolutions on tensor cores, channels-last (NHWC), with no im2col buffer:
// each CTA gathers its operand tiles straight from the activation into shared memory.
//
// Storage is 16-bit: KIND 0 = IEEE half, KIND 1 = bfloat16, both held as raw `unsigned short`
// (no header needed under NVRTC; conversions below), fp32 accumulation in the mma.
//
// conv_igemm: Y[m, f] = sum_{t, c} A[m, (t, c)] * Wp[f, (idx_t, c)], one GEMM of
//   M = N * OHc * OWc output positions by F channels, K = taps * C, where tap t of the
//   table `taps` reads the input at (i * s + dh_t, j * s + dw_t) (zero outside). The same
//   kernel is
//   - the forward convolution: taps (kh - p, kw - p), stride s, weights packed [F][kh*KW+kw][C];
//   - the data gradient of a stride-1 convolution: taps (p - kh, p - kw) over dY, stride 1,
//     weights packed [C][kh*KW+kw][F];
//   - the data gradient of a stride-2 convolution, one launch with gridDim.z = 4 sub-pixel
//     classes (ph, pw): output position (2i + ph, 2j + pw) takes only the taps whose parity
//     matches, (ph + p - kh) / 2 (an empty tap list writes zeros).
//   The table holds, per class z, 32 ints: the tap count, (dh, dw, idx) per tap, and at [28] the
//   layer's KH * KW (the packed weights' row length is that times C).
// conv_wgrad: dW[f, (t, c)] = sum_m dY[m, f] * X_t[m, c] over a chunk of positions per
//   blockIdx.z, written as fp32 partials ws[z][f][t*C + c]; wgrad_reduce sums the chunks in
//   index order (no atomics: a run repeats bitwise) into the (F, C, KH, KW) gradient.
//
// Tensor cores: mma.sync m16n8k16 (sm_80+) or two m16n8k8 (sm_75, fp16 only), fragments by
// ldmatrix from padded shared-memory rows (8 halves of padding: ldmatrix's 8 rows fall on
// distinct banks). ASYNC: cp.async multi-stage pipeline (sm_80+), out-of-range chunks
// zero-filled by the copy itself; otherwise (sm_75) global loads into registers, stored to the
// other of two shared buffers while the tensor cores work on the first.
#include "igemm.cuh"

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d (16x8 fp32) += a (16x16, row) * b (16x8, col). a: 4 regs as ldmatrix_x4 leaves them
// ((g, k 0-7), (g+8, k 0-7), (g, k 8-15), (g+8, k 8-15)); b: 2 regs (k 0-7, k 8-15).
template <int KIND, bool SM80>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if (SM80) {
        if (KIND == 0)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
        else
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {    // sm_75: the same product as two k8 steps (fp16 only)
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(b0));
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[2]), "r"(a[3]), "r"(b1));
    }
}

// ------------------------------------------------------------------ conv_igemm (forward, data gradient)
// grid: (ceil(M / BM), ceil(F / BN), classes); block: WM * WN warps; dynamic shared memory:
// the larger of STAGES (ASYNC) or 2 buffers of (BM + BN) * (BK + IG_PAD) halves and the output
// tile, BM * (BN + IG_PAD) halves. Needs C % BK == 0, BK % 16 == 0, F % 8 == 0.
// Each thread's rows are fixed for the whole K loop: their input offset and, per tap, whether
// the tap falls inside the image (a bit mask) are computed once; the K loop walks (tap,
// channel block) with two counters, so a 16-byte chunk costs an add and a mask test.
// Epilogue: + bias[f] (fp32, may be null), ReLU if relu, rounded to 16 bits, staged through
// shared memory and stored 16 bytes a thread at (n, i * os + ph, j * os + pw) of the
// (N, OHo, OWo, F) output (plus add's value there, where add is not null: a data gradient
// summed with the residual block's other one); with stats non-null (forward, one class), each CTA also writes the
// mean and the sum of squared deviations of its rows' rounded outputs per channel:
// stats[(blockIdx.x * 2 + {0, 1}) * F + f].
template <int KIND, int BM, int BN, int BK, int WM, int WN, int STAGES, bool ASYNC>
__global__ void __launch_bounds__(WM * WN * 32)
conv_igemm(const u16* __restrict__ x, const u16* __restrict__ wp, u16* __restrict__ y,
           const int* __restrict__ taps, int N, int H, int W, int C, int F, int OHc, int OWc, int s,
           int OHo, int OWo, int os, const float* __restrict__ bias, int relu, float* __restrict__ stats,
           const u16* __restrict__ add) {
    constexpr int NTHR = WM * WN * 32;
    constexpr int LDS = BK + IG_PAD;                  // halves per operand row in shared memory
    constexpr int LDO = BN + IG_PAD;                  // halves per output-tile row
    constexpr int KCH = BK / 8;                       // 16-byte chunks per operand row
    constexpr int A_PER = BM * KCH / NTHR;            // A chunks per thread per stage
    constexpr int B_PER = (BN * KCH + NTHR - 1) / NTHR;
    constexpr int WTM = BM / WM, WTN = BN / WN;       // warp tile
    constexpr int MT = WTM / 16, NT = WTN / 8;        // mma tiles per warp
    constexpr int NBUF = ASYNC ? STAGES : 2;
    static_assert(BM * KCH % NTHR == 0 && NTHR % KCH == 0, "A chunks must split evenly over the threads");
    static_assert(NT % 2 == 0 && WTM % 16 == 0, "warp tiles of whole 16x16 fragments");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* As = reinterpret_cast<u16*>(smem_raw);               // [NBUF][BM][LDS]
    u16* Bs = As + NBUF * BM * LDS;                            // [NBUF][BN][LDS]
    __shared__ int tap_off[9], tap_w[9], tap_dh[9], tap_dw[9];
    __shared__ int ntaps_s, wrow_s;
    __shared__ long long out_row[BM];
    __shared__ float red_s[2][WM][BN];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int z = blockIdx.z, ph = z >> 1, pw = z & 1;
    const int M = N * OHc * OWc;
    const int m0 = blockIdx.x * BM, f0 = blockIdx.y * BN;
    ig_setup<BM, NTHR>(taps + z * IG_TAPS_STRIDE, tap_off, tap_w, tap_dh, tap_dw, &ntaps_s, &wrow_s, out_row, tid, m0, M,
                       W, C, F, OHc, OWc, OHo, OWo, os, ph, pw);
    __syncthreads();
    const int ntaps = ntaps_s;
    const int KT = ntaps * (C / BK);

    const int kc = tid % KCH;
    long long a_off[A_PER];
    unsigned a_mask[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        int m = m0 + tid / KCH + i * (NTHR / KCH);
        a_mask[i] = 0u;
        a_off[i] = 0;
        if (m < M) {
            int n = m / (OHc * OWc), rem = m - n * (OHc * OWc), ii = rem / OWc, jj = rem - ii * OWc;
            int hi = ii * s, wj = jj * s;
            a_off[i] = ((long long)(n * H + hi) * W + wj) * C + kc * 8;
            for (int t = 0; t < ntaps; ++t) {
                int ih = hi + tap_dh[t], iw = wj + tap_dw[t];
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) a_mask[i] |= 1u << t;
            }
        }
    }
    long long b_off[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int q = tid + i * NTHR, f = f0 + q / KCH;
        b_off[i] = (q < BN * KCH && f < F) ? (long long)f * wrow_s + (q % KCH) * 8 : -1;
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

    auto compute = [&](int buf) {
        const u16* as = As + buf * BM * LDS;
        const u16* bs = Bs + buf * BN * LDS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[MT][4], bf[NT][2];
#pragma unroll
            for (int a = 0; a < MT; ++a) {
                int row = wm * WTM + a * 16 + (lane & 15);
                ldmatrix_x4(af[a], smem_addr(as + row * LDS + kk + (lane >> 4) * 8));
            }
#pragma unroll
            for (int b = 0; b < NT; b += 2) {
                int row = wn * WTN + b * 8 + (lane & 7) + ((lane >> 4) << 3);
                unsigned r[4];
                ldmatrix_x4(r, smem_addr(bs + row * LDS + kk + ((lane >> 3) & 1) * 8));
                bf[b][0] = r[0]; bf[b][1] = r[1]; bf[b + 1][0] = r[2]; bf[b + 1][1] = r[3];
            }
#pragma unroll
            for (int a = 0; a < MT; ++a)
#pragma unroll
                for (int b = 0; b < NT; ++b) mma16816<KIND, ASYNC || KIND == 1>(acc[a][b], af[a], bf[b][0], bf[b][1]);
        }
    };

    // the load iterator: tap lt, channel block lc (advanced after each stage's loads)
    int lt = 0, lc = 0;
    auto advance = [&]() { lc += BK; if (lc >= C) { lc = 0; ++lt; } };
    if (ASYNC) {
        auto load = [&](int buf) {
            u16* as = As + buf * BM * LDS;
            u16* bs = Bs + buf * BN * LDS;
            const int toff = tap_off[lt] + lc, woff = tap_w[lt] + lc;
            const unsigned bit = 1u << lt;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                bool ok = (a_mask[i] & bit) != 0u;
                const u16* src = ok ? x + (a_off[i] + toff) : x;
                cp_async16(smem_addr(as + (tid / KCH + i * (NTHR / KCH)) * LDS + kc * 8), src, ok ? 16 : 0);
            }
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BN * KCH) {
                    bool ok = b_off[i] >= 0;
                    cp_async16(smem_addr(bs + (q / KCH) * LDS + (q % KCH) * 8), ok ? wp + (b_off[i] + woff) : wp,
                               ok ? 16 : 0);
                }
            }
            advance();
        };
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) {
            if (st < KT) load(st);
            cp_async_commit();
        }
        for (int kt = 0; kt < KT; ++kt) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            if (kt + STAGES - 1 < KT) load((kt + STAGES - 1) % STAGES);
            cp_async_commit();
            compute(kt % STAGES);
        }
        cp_async_wait<0>();
    } else {
        uint4 ra[A_PER], rb[B_PER];
        auto fetch = [&]() {
            const int toff = tap_off[lt] + lc, woff = tap_w[lt] + lc;
            const unsigned bit = 1u << lt;
#pragma unroll
            for (int i = 0; i < A_PER; ++i)
                ra[i] = (a_mask[i] & bit) ? *reinterpret_cast<const uint4*>(x + (a_off[i] + toff)) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int i = 0; i < B_PER; ++i)
                rb[i] = b_off[i] >= 0 ? *reinterpret_cast<const uint4*>(wp + (b_off[i] + woff)) : make_uint4(0, 0, 0, 0);
            advance();
        };
        auto store = [&](int buf) {
            u16* as = As + buf * BM * LDS;
            u16* bs = Bs + buf * BN * LDS;
#pragma unroll
            for (int i = 0; i < A_PER; ++i)
                *reinterpret_cast<uint4*>(as + (tid / KCH + i * (NTHR / KCH)) * LDS + kc * 8) = ra[i];
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BN * KCH) *reinterpret_cast<uint4*>(bs + (q / KCH) * LDS + (q % KCH) * 8) = rb[i];
            }
        };
        if (KT > 0) { fetch(); store(0); }
        __syncthreads();
        for (int kt = 0; kt < KT; ++kt) {
            if (kt + 1 < KT) fetch();
            compute(kt & 1);
            if (kt + 1 < KT) store((kt + 1) & 1);
            __syncthreads();
        }
    }
    __syncthreads();        // every warp is done with the operand buffers: they take the output tile

    // ---------------------------------------------------------------- epilogue
    u16* Cs = reinterpret_cast<u16*>(smem_raw);           // [BM][LDO]
    const int g = lane >> 2, t4 = lane & 3;
    float csum[NT][2];
#pragma unroll
    for (int b = 0; b < NT; ++b) csum[b][0] = csum[b][1] = 0.f;
#pragma unroll
    for (int a = 0; a < MT; ++a) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int r = wm * WTM + a * 16 + g + h * 8;
            bool live = m0 + r < M;
#pragma unroll
            for (int b = 0; b < NT; ++b) {
                int col = wn * WTN + b * 8 + 2 * t4, f = f0 + col;
                float v0 = acc[a][b][2 * h], v1 = acc[a][b][2 * h + 1];
                u16 h0, h1;
                ig_stage_pair<KIND>(v0, v1, bias, f, F, relu, Cs + r * LDO + col, h0, h1);
                // the statistics see the stored values, of live rows only
                acc[a][b][2 * h] = live ? u16_to_f<KIND>(h0) : 0.f;
                acc[a][b][2 * h + 1] = live ? u16_to_f<KIND>(h1) : 0.f;
                csum[b][0] += acc[a][b][2 * h];
                csum[b][1] += acc[a][b][2 * h + 1];
            }
        }
    }
    __syncthreads();
    ig_store_tile<KIND, BM, BN, NTHR>(Cs, out_row, y, f0, F, tid, add);
    if (stats == nullptr) return;
    // per-channel mean and squared deviations of this CTA's rows, in a fixed order: lanes of
    // one column (same t4) by shuffles, then the WM warp rows through shared memory
    const int rows_cta = min(BM, M - m0);
    column_sums_to_shared<NT>(csum, red_s[0][wm] + wn * WTN, lane);
    __syncthreads();
    float mean[NT][2];
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            int col = wn * WTN + b * 8 + 2 * t4 + e;
            float s_ = 0.f;
            for (int q = 0; q < WM; ++q) s_ += red_s[0][q][col];
            mean[b][e] = s_ / rows_cta;
        }
    float dev[NT][2];
#pragma unroll
    for (int b = 0; b < NT; ++b) dev[b][0] = dev[b][1] = 0.f;
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (m0 + wm * WTM + a * 16 + g + h * 8 >= M) continue;
#pragma unroll
            for (int b = 0; b < NT; ++b)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float d = acc[a][b][2 * h + e] - mean[b][e];
                    dev[b][e] += d * d;
                }
        }
    column_sums_to_shared<NT>(dev, red_s[1][wm] + wn * WTN, lane);
    __syncthreads();
    for (int col = tid; col < BN; col += NTHR) {
        int f = f0 + col;
        if (f >= F) continue;
        float s1 = 0.f, s2 = 0.f;
        for (int q = 0; q < WM; ++q) { s1 += red_s[0][q][col]; s2 += red_s[1][q][col]; }
        stats[(long long)(blockIdx.x * 2) * F + f] = s1 / rows_cta;
        stats[(long long)(blockIdx.x * 2 + 1) * F + f] = s2;
    }
}

// ------------------------------------------------------------------ conv_wgrad
// ws[z][f][col] = sum over the positions m of chunk z of dY[m, f] * X[n, oh*s - p + kh, ow*s - p + kw, c]
// with col = t * C + c (t = kh * KW + kw) over K = taps * C columns, a CTA tile of BN columns
// possibly spanning taps. grid: (ceil(F / BM), K / BN, chunks); dynamic shared memory:
// NBUF * 32 * ((BM + IG_PAD) + (BN + IG_PAD)) halves. Needs K % BN == 0, C % 8 == 0, F % 8 == 0.
// A thread's columns are fixed; its rows (positions) advance 32 a stage, decoded by fdiv.
template <int KIND, int BM, int BN, int WM, int WN, int STAGES, bool ASYNC>
__global__ void __launch_bounds__(WM * WN * 32)
conv_wgrad(const u16* __restrict__ dy, const u16* __restrict__ x, float* __restrict__ ws, int N, int H, int W,
           int C, int F, int OH, int OW, int KW, int s, int p, int chunk, int K,
           unsigned long long mul_hw, int sh_hw, unsigned long long mul_w, int sh_w) {
    constexpr int NTHR = WM * WN * 32;
    constexpr int BK = 32;                            // positions per stage
    constexpr int LDA = BM + IG_PAD, LDB = BN + IG_PAD;
    constexpr int ACH = BM / 8, BCH = BN / 8;         // 16-byte chunks per row
    constexpr int A_PER = (BK * ACH + NTHR - 1) / NTHR, B_PER = (BK * BCH + NTHR - 1) / NTHR;
    constexpr int WTM = BM / WM, WTN = BN / WN;
    constexpr int MT = WTM / 16, NT = WTN / 8;
    constexpr int NBUF = ASYNC ? STAGES : 2;
    static_assert(NT % 2 == 0 && WTM % 16 == 0, "warp tiles of whole 16x16 fragments");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* As = reinterpret_cast<u16*>(smem_raw);       // [NBUF][BK][LDA]: rows = positions, cols = f
    u16* Bs = As + NBUF * BK * LDA;                   // [NBUF][BK][LDB]: rows = positions, cols = (t, c)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int M = N * OH * OW, HWo = OH * OW;
    const int f0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int mlo = blockIdx.z * chunk, mhi = min(M, mlo + chunk);
    const int KT = mhi > mlo ? (mhi - mlo + BK - 1) / BK : 0;

    // this thread's B columns: tap and channel fixed for the whole loop
    int b_kh[B_PER], b_kw[B_PER], b_c[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int col = n0 + ((tid + i * NTHR) % BCH) * 8;
        int t = col / C;
        b_c[i] = col - t * C;
        b_kh[i] = t / KW;
        b_kw[i] = t - b_kh[i] * KW;
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

    auto a_src = [&](int i, int kt, bool& ok) -> const u16* {
        int q = tid + i * NTHR, r = q / ACH, cc = q - r * ACH;
        int m = mlo + kt * BK + r, f = f0 + cc * 8;
        ok = q < BK * ACH && m < mhi && f < F;
        return ok ? dy + ((long long)m * F + f) : dy;
    };
    auto b_src = [&](int i, int kt, bool& ok) -> const u16* {
        int q = tid + i * NTHR, r = q / BCH;
        int m = mlo + kt * BK + r;
        ok = false;
        if (q < BK * BCH && m < mhi) {
            int n = fdiv(m, mul_hw, sh_hw), rem = m - n * HWo, oh = fdiv(rem, mul_w, sh_w), ow = rem - oh * OW;
            int ih = oh * s - p + b_kh[i], iw = ow * s - p + b_kw[i];
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
                ok = true;
                return x + ((long long)((n * H + ih) * W + iw) * C + b_c[i]);
            }
        }
        return x;
    };

    auto compute = [&](int buf) {
        const u16* as = As + buf * BK * LDA;
        const u16* bs = Bs + buf * BK * LDB;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[MT][4], bf[NT][2];
            const int q = lane >> 3, r8 = lane & 7;
#pragma unroll
            for (int a = 0; a < MT; ++a) {   // A = dY^T: ldmatrix.trans over rows of positions
                int col = wm * WTM + a * 16 + (q & 1) * 8;
                int row = kk + (q >> 1) * 8 + r8;
                ldmatrix_x4_trans(af[a], smem_addr(as + row * LDA + col));
            }
#pragma unroll
            for (int b = 0; b < NT; b += 2) {
                int col = wn * WTN + b * 8 + (q >> 1) * 8;
                int row = kk + (q & 1) * 8 + r8;
                unsigned r[4];
                ldmatrix_x4_trans(r, smem_addr(bs + row * LDB + col));
                bf[b][0] = r[0]; bf[b][1] = r[1]; bf[b + 1][0] = r[2]; bf[b + 1][1] = r[3];
            }
#pragma unroll
            for (int a = 0; a < MT; ++a)
#pragma unroll
                for (int b = 0; b < NT; ++b) mma16816<KIND, ASYNC || KIND == 1>(acc[a][b], af[a], bf[b][0], bf[b][1]);
        }
    };

    if (ASYNC) {
        // A_PER / B_PER are compile-time: fully unrolled, the per-chunk tap arrays stay in registers
        auto load = [&](int buf, int kt) {
            u16* as = As + buf * BK * LDA;
            u16* bs = Bs + buf * BK * LDB;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BK * ACH) {
                    bool ok; const u16* src = a_src(i, kt, ok);
                    cp_async16(smem_addr(as + (q / ACH) * LDA + (q % ACH) * 8), src, ok ? 16 : 0);
                }
            }
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BK * BCH) {
                    bool ok; const u16* src = b_src(i, kt, ok);
                    cp_async16(smem_addr(bs + (q / BCH) * LDB + (q % BCH) * 8), src, ok ? 16 : 0);
                }
            }
        };
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) {
            if (st < KT) load(st, st);
            cp_async_commit();
        }
        for (int kt = 0; kt < KT; ++kt) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            int nk = kt + STAGES - 1;
            if (nk < KT) load(nk % STAGES, nk);
            cp_async_commit();
            compute(kt % STAGES);
        }
        cp_async_wait<0>();
    } else {
        uint4 ra[A_PER], rb[B_PER];
        auto fetch = [&](int kt) {
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                bool ok; const u16* src = a_src(i, kt, ok);
                ra[i] = ok ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                bool ok; const u16* src = b_src(i, kt, ok);
                rb[i] = ok ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
            }
        };
        auto store = [&](int buf) {
            u16* as = As + buf * BK * LDA;
            u16* bs = Bs + buf * BK * LDB;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BK * ACH) *reinterpret_cast<uint4*>(as + (q / ACH) * LDA + (q % ACH) * 8) = ra[i];
            }
#pragma unroll
            for (int i = 0; i < B_PER; ++i) {
                int q = tid + i * NTHR;
                if (q < BK * BCH) *reinterpret_cast<uint4*>(bs + (q / BCH) * LDB + (q % BCH) * 8) = rb[i];
            }
        };
        if (KT > 0) { fetch(0); store(0); }
        __syncthreads();
        for (int kt = 0; kt < KT; ++kt) {
            if (kt + 1 < KT) fetch(kt + 1);
            compute(kt & 1);
            if (kt + 1 < KT) store((kt + 1) & 1);
            __syncthreads();
        }
    }

    // partials: ws[z][f][col]; a thread holds (rows g / g+8 = f, cols 2*t4, +1)
    const int g = lane >> 2, t4 = lane & 3;
    float* out = ws + (long long)blockIdx.z * F * K;
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int f = f0 + wm * WTM + a * 16 + g + h * 8;
            if (f >= F) continue;
#pragma unroll
            for (int b = 0; b < NT; ++b) {
                int col = n0 + wn * WTN + b * 8 + 2 * t4;
                *reinterpret_cast<float2*>(out + (long long)f * K + col) = make_float2(acc[a][b][2 * h], acc[a][b][2 * h + 1]);
            }
        }
}

// The most taps (KH * KW) a convolution here may have: pack_weights' and wgrad_reduce's
// shared-memory tiles are sized for it (conv_igemm.py refuses larger kernels).
constexpr int MAX_TAPS = 72;

// dw (F, Creal, KH, KW) fp32 (+)= sum_z ws[z][f][t * C + c] for c < Creal, the chunks added in
// index order (so any chunking of the launch gives the same bits). A block per output channel f
// and 32 input channels c0..: warp w sums taps w, w + warps, ... (lane = channel; 8 chunks' loads
// in flight), then the tile's (c, t) values go out as one contiguous run of dw, where a thread
// per partial wrote 4 bytes at a stride of KH * KW. grid: (ceil(Creal / 32), F); block: 32 *
// min(taps, 32). ResNet-18 b512 fp16 on the H100: 0.267 -> 0.233 ms a step.
__global__ void wgrad_reduce(const float* __restrict__ ws, float* __restrict__ dw, int chunks, int F, int C,
                             int Creal, int taps, int accumulate) {
    __shared__ float sm[MAX_TAPS * 32];
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, c0 = blockIdx.x * 32, f = blockIdx.y;
    const long long K = (long long)taps * C, total = (long long)F * K;
    for (int t = threadIdx.x >> 5; t < taps; t += warps) {
        float s_ = 0.f;
        if (c0 + lane < C) {
            const float* p = ws + (long long)f * K + (long long)t * C + c0 + lane;
            int z = 0;
            for (; z + 8 <= chunks; z += 8) {
                float a[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) a[i] = p[(long long)(z + i) * total];
#pragma unroll
                for (int i = 0; i < 8; ++i) s_ += a[i];
            }
            for (; z < chunks; ++z) s_ += p[(long long)z * total];
        }
        sm[t * 32 + lane] = s_;
    }
    __syncthreads();
    const int nc = min(32, Creal - c0);
    float* out = dw + ((long long)f * Creal + c0) * taps;
    for (int i = threadIdx.x; i < nc * taps; i += blockDim.x) {
        const int cc = i / taps, t = i - cc * taps;
        out[i] = accumulate ? out[i] + sm[t * 32 + cc] : sm[t * 32 + cc];
    }
}

// ------------------------------------------------------------------ weight packing
// fp32 master weights (F, C, KH, KW) -> the storage type (16-bit, or fp32 rounded to tf32 for KIND 2) as
// (F, KH*KW, Cp) (forward: rows of K per output channel, channels zero-padded to Cp) or
// (C, KH*KW, F) (data gradient: the GEMM's rows are the input channels). A transpose, so each
// block moves one tile through shared memory and both the fp32 reads and the packed writes are
// contiguous runs (a thread per packed element read fp32 values 4 bytes at a stride of KH*KW).
// Forward tile: output channel f, input channels c0..c0+31, every tap; (f, c0.., :) is one run
// of 32*taps values, written as taps runs of 32 channels. grid: (ceil(Cp / 32), F).
// Data-gradient tile: output channels f0..f0+31 x input channels c0..c0+ct-1 (ct*taps <= MAX_TAPS);
// each f's (c0.., :) is one run of ct*taps values, written as ct*taps runs of 32 f.
// grid: (ceil(F / 32), ceil(C / ct)). block: 256.

template <int KIND>
__global__ void __launch_bounds__(256)
pack_weights(const float* __restrict__ w, elem_t<KIND>* __restrict__ out, int F, int C, int taps, int Cp,
             int for_dgrad, int ct) {
    __shared__ float s[32 * (MAX_TAPS + 1)];     // a data-gradient tile's 32 rows of ct * taps <= MAX_TAPS (+1)
    if (!for_dgrad) {
        const int f = blockIdx.y, c0 = blockIdx.x * 32, len = max(0, min(32, C - c0)) * taps;
        const float* src = w + ((long long)f * C + c0) * taps;
        for (int i = threadIdx.x; i < len; i += blockDim.x) s[i] = src[i];        // s[c * taps + t]
        __syncthreads();
        for (int j = threadIdx.x; j < 32 * taps; j += blockDim.x) {
            const int t = j >> 5, cl = j & 31, c = c0 + cl;     // lanes along c: stride taps, odd or 1
            if (c < Cp) out[((long long)f * taps + t) * Cp + c] = f_to_operand<KIND>(c < C ? s[cl * taps + t] : 0.f);
        }
    } else {
        const int f0 = blockIdx.x * 32, c0 = blockIdx.y * ct, nf = min(32, F - f0), len = min(ct, C - c0) * taps;
        const int row = ct * taps + 1;                          // odd: a warp's 32 f rows on distinct banks
        for (int i = threadIdx.x; i < nf * len; i += blockDim.x) {
            const int fl = i / len, r = i - fl * len;
            s[fl * row + r] = w[((long long)(f0 + fl) * C + c0) * taps + r];
        }
        __syncthreads();
        for (int j = threadIdx.x; j < 32 * len; j += blockDim.x) {
            const int fl = j & 31, ctp = j >> 5;                // ctp = (c - c0) * taps + t
            if (fl < nf) out[((long long)c0 * taps + ctp) * F + f0 + fl] = f_to_operand<KIND>(s[fl * row + ctp]);
        }
    }
}

// The network's input: fp32 NCHW -> NHWC in the storage type with Cp >= C channels (zeros
// beyond C; fp32 rounded to tf32: it only feeds the stem's products), so that the stem's
// channels are a multiple of the K step. One thread per output.
template <int KIND>
__global__ void nchw_to_nhwc(const float* __restrict__ x, elem_t<KIND>* __restrict__ out, int N, int C, int HW,
                             int Cp) {
    long long total = (long long)N * HW * Cp;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        int n = (int)(q / ((long long)HW * Cp)), r = (int)(q - (long long)n * HW * Cp), hw = r / Cp, c = r - hw * Cp;
        out[q] = c < C ? f_to_operand<KIND>(x[((long long)n * C + c) * HW + hw]) : f_to_st<KIND>(0.f);
    }
}
