// The channels-last (NHWC) layers around the tensor-core convolutions: BatchNorm (statistics,
// apply with residual and ReLU, backward), a convolution's bias gradient, the CNN's 2x2
// max-pool and ResNet's global average pool, each forward beside its backward. An activation
// is (M, C) row-major with M = N*H*W: channel c of row m at m*C + c. No atomics: every
// reduction writes one partial per chunk and a second kernel adds them in index order.
#include "common.cuh"

// ------------------------------------------------------------------ BatchNorm statistics
// Per chunk of rows: the mean and the sum of squared deviations of each channel, the layout
// the convolution's epilogue writes (stats[(chunk * 2 + {0, 1}) * C + c]), for BatchNorm inputs
// whose statistics no convolution made. grid: (chunks); block: 256 = 8 row lanes x 32 channel
// lanes, channels strided over blockDim.x's 32 lanes, rows over the chunk.
template <class T>
__global__ void nhwc_stats(const T* __restrict__ x, int M, int C, int rows, float* __restrict__ stats) {
    __shared__ float sh[8][32];
    const int lo = blockIdx.x * rows, hi = min(M, lo + rows), cnt = hi - lo;
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5;
    for (int c0 = 0; c0 < C; c0 += 32) {
        int c = c0 + lc;
        float s = 0.f;
        if (c < C)
            for (int m = lo + lr; m < hi; m += 8) s += to_a(x[(long long)m * C + c]);
        sh[lr][lc] = s;
        __syncthreads();
        float mean = 0.f;
        for (int i = 0; i < 8; ++i) mean += sh[i][lc];
        mean /= cnt;
        __syncthreads();
        float d2 = 0.f;
        if (c < C)
            for (int m = lo + lr; m < hi; m += 8) { float d = to_a(x[(long long)m * C + c]) - mean; d2 += d * d; }
        sh[lr][lc] = d2;
        __syncthreads();
        if (lr == 0 && c < C) {
            float t = 0.f;
            for (int i = 0; i < 8; ++i) t += sh[i][lc];
            stats[(long long)(blockIdx.x * 2) * C + c] = mean;
            stats[(long long)(blockIdx.x * 2 + 1) * C + c] = t;
        }
        __syncthreads();
    }
}

// Merging the chunks' (mean, M2) (Chan et al.'s pairwise update, in double), in two launches
// so that a layer1 BatchNorm's 4096 chunks are not one lane's long chain of divisions:
// bn_merge_partial merges groups of `per_group` chunks, bn_merge_stats merges the groups, each
// lane in turn and then the lanes in order, so the result does not depend on scheduling.
__device__ __forceinline__ void chan_merge(double& n, double& mean, double& m2, double nb, double mb, double qb) {
    if (nb == 0) return;
    double tot = n + nb, d = mb - mean;
    mean += d * nb / tot;
    m2 += qb + d * d * n * nb / tot;
    n = tot;
}

// the 8 lanes' (n, mean, m2) of each of 32 channels merged in lane order into lane 0's
__device__ __forceinline__ void merge_lanes(double& n, double& mean, double& m2, int lr, int lc) {
    __shared__ double sn[8][32], sm[8][32], sq[8][32];
    sn[lr][lc] = n; sm[lr][lc] = mean; sq[lr][lc] = m2;
    __syncthreads();
    n = 0; mean = 0; m2 = 0;
    if (lr == 0)
        for (int q = 0; q < 8; ++q) chan_merge(n, mean, m2, sn[q][lc], sm[q][lc], sq[q][lc]);
}

// part[(g * 3 + {0, 1, 2}) * C + c] = (count, mean, M2) of chunks [g * per_group, (g + 1) *
// per_group); chunk i holds min(rows, M - (i % per_rank) * rows) rows (with synchronised
// BatchNorm the chunks are every rank's, per_rank each over M rows).
// grid: (ceil(C / 32), groups); block 256 = 8 chunk lanes x 32 channels.
__global__ void bn_merge_partial(const float* __restrict__ stats, int chunks, int per_rank, int rows, int M, int C,
                                 int per_group, double* __restrict__ part) {
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5, c = blockIdx.x * 32 + lc, g = blockIdx.y;
    const int hi = min(chunks, (g + 1) * per_group);
    double n = 0, mean = 0, m2 = 0;
    if (c < C)
        for (int i = g * per_group + lr; i < hi; i += 8)
            chan_merge(n, mean, m2, min(rows, M - (i % per_rank) * rows), stats[(long long)(2 * i) * C + c],
                       stats[(long long)(2 * i + 1) * C + c]);
    merge_lanes(n, mean, m2, lr, lc);
    if (lr != 0 || c >= C) return;
    part[(long long)(3 * g) * C + c] = n;
    part[(long long)(3 * g + 1) * C + c] = mean;
    part[(long long)(3 * g + 2) * C + c] = m2;
}

// The groups merged, then as bn_stats: running statistics updated as nn.BatchNorm2d (unbiased
// variance), y = x*scale + shift's coefficients. grid: (ceil(C / 32)); block 256.
template <class P>
__global__ void bn_merge_stats(const double* __restrict__ part, int groups, int C,
                               const P* __restrict__ gamma, const P* __restrict__ beta, P* __restrict__ run_mean,
                               P* __restrict__ run_var, double eps, double momentum, double unbias,
                               float* __restrict__ mean_out, float* __restrict__ invstd_out, P* __restrict__ scale,
                               P* __restrict__ shift, P* __restrict__ batch_mean, P* __restrict__ batch_var) {
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5, c = blockIdx.x * 32 + lc;
    double n = 0, mean = 0, m2 = 0;
    if (c < C)
        for (int g = lr; g < groups; g += 8)
            chan_merge(n, mean, m2, part[(long long)(3 * g) * C + c], part[(long long)(3 * g + 1) * C + c],
                       part[(long long)(3 * g + 2) * C + c]);
    merge_lanes(n, mean, m2, lr, lc);
    if (lr != 0 || c >= C) return;
    double var = m2 / n;
    float invstd = (float)(1.0 / sqrt(var + eps));
    mean_out[c] = (float)mean; invstd_out[c] = invstd;
    batch_mean[c] = (P)mean; batch_var[c] = (P)var;
    run_mean[c] = (P)((1 - momentum) * (double)run_mean[c] + momentum * mean);
    run_var[c] = (P)((1 - momentum) * (double)run_var[c] + momentum * var * unbias);
    float sc = (float)gamma[c] * invstd;
    scale[c] = (P)sc; shift[c] = (P)((float)beta[c] - (float)mean * sc);
}

// 8 consecutive stored values (16 bytes of 16-bit ones, 32 of fp32) <-> floats
template <class T> __device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
    constexpr int W = sizeof(T) * 8 / 16;          // 16-byte words
    uint4 u[W];
#pragma unroll
    for (int i = 0; i < W; ++i) u[i] = reinterpret_cast<const uint4*>(p)[i];
    const T* e = reinterpret_cast<const T*>(u);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = to_a(e[i]);
}
template <class T> __device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
    constexpr int W = sizeof(T) * 8 / 16;
    uint4 u[W];
    T* e = reinterpret_cast<T*>(u);
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = from_a_t<T>(v[i]);
#pragma unroll
    for (int i = 0; i < W; ++i) reinterpret_cast<uint4*>(p)[i] = u[i];
}

// Whether a BatchNorm's ReLU passes x: bn_apply_nhwc's value before the residual, rounded to T
// as it stores it, is positive. Without a residual the backward recomputes the ReLU's mask
// from x with this instead of reading y (one 16-bit read fewer per value, the same bits).
__device__ __forceinline__ float bn_affine(float x, float sc, float sh) { return __fmaf_rn(x, sc, sh); }
template <class T> __device__ __forceinline__ bool relu_passes(float x, float sc, float sh) {
    return to_a(from_a_t<T>(bn_affine(x, sc, sh))) > 0.f;
}

// y = relu?(x*scale[c] + shift[c] + residual?) over (M, C), C % 8 == 0, fewer than 2^31
// values: a thread takes 8 consecutive ones (one 16-byte load of each operand).
template <class T, class P>
__global__ void bn_apply_nhwc(const T* __restrict__ x, const T* __restrict__ res, const P* __restrict__ scale,
                              const P* __restrict__ shift, T* __restrict__ y, long long total, int C, int relu) {
    const int vecs = (int)(total >> 3);
    for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vecs; v += gridDim.x * blockDim.x) {
        int q = v << 3, c = q % C;
        float a[8], r[8];
        load8(x + q, a);
        if (res) load8(res + q, r);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float t = bn_affine(a[i], (float)scale[c + i], (float)shift[c + i]);
            if (res) t += r[i];
            if (relu) t = t > 0.f ? t : (t != t ? t : 0.f);
            a[i] = t;
        }
        store8(y + q, a);
    }
}

// a += b (a residual block's two input gradients), 8 values a thread; total % 8 == 0
template <class T>
__global__ void add_nhwc(T* __restrict__ a, const T* __restrict__ b, long long total) {
    const long long vecs = total >> 3;
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < vecs; v += (long long)gridDim.x * blockDim.x) {
        float x[8], y[8];
        load8(a + 8 * v, x);
        load8(b + 8 * v, y);
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] += y[i];
        store8(a + 8 * v, x);
    }
}

// ------------------------------------------------------------------ BatchNorm backward
// Per chunk of rows: part1[c * S + i] = sum g, part2[c * S + i] = sum g * (x - mean[c]), with
// g = relu ? dy * (y > 0) : dy (the layout bn_grad_coeffs_nhwc reads); with sc (scale) and sh
// (shift) instead of y, the mask is relu_passes(x) (a BatchNorm + ReLU without a residual).
// x may be null (a bias gradient: part1 only). C % 8 == 0. grid: (S); block 256: a thread takes 8 channels (16-byte
// loads) of every R-th row, R = 256 / (C / 8) rows in flight (channel groups beyond 256 * 8 in
// further rounds); the R row lanes are then added in order through shared memory.
template <class T>
__global__ void __launch_bounds__(256)
bn_bwd_sums_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                 const float* __restrict__ sc, const float* __restrict__ sh,
                 const float* __restrict__ mean, int M, int C, int rows, float* __restrict__ part1,
                 float* __restrict__ part2) {
    constexpr int NT = 256;
    __shared__ float sh1[NT * 8], sh2[NT * 8];
    const int S = gridDim.x, lo = blockIdx.x * rows, hi = min(M, lo + rows);
    const int V = C >> 3, VW = min(V, NT), R = NT / VW;
    const int tid = threadIdx.x, r = tid / VW;
    for (int v0 = 0; v0 < V; v0 += VW) {
        const int v = v0 + tid % VW, c0 = v * 8;
        float s1[8], s2[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) s1[i] = s2[i] = 0.f;
        if (r < R && v < V) {
            float mu[8], a_[8], b_[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                mu[i] = x ? mean[c0 + i] : 0.f;
                a_[i] = sc ? sc[c0 + i] : 0.f;
                b_[i] = sc ? sh[c0 + i] : 0.f;
            }
            for (int m = lo + r; m < hi; m += R) {
                const long long q = (long long)m * C + c0;
                float g[8], xv[8];
                load8(dy + q, g);
                if (x) load8(x + q, xv);
                if (y) {
                    float yv[8];
                    load8(y + q, yv);
#pragma unroll
                    for (int i = 0; i < 8; ++i) if (!(yv[i] > 0.f)) g[i] = 0.f;
                } else if (sc) {
#pragma unroll
                    for (int i = 0; i < 8; ++i) if (!relu_passes<T>(xv[i], a_[i], b_[i])) g[i] = 0.f;
                }
#pragma unroll
                for (int i = 0; i < 8; ++i) s1[i] += g[i];
                if (x) {
#pragma unroll
                    for (int i = 0; i < 8; ++i) s2[i] += g[i] * (xv[i] - mu[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) { sh1[tid * 8 + i] = s1[i]; sh2[tid * 8 + i] = s2[i]; }
        __syncthreads();
        for (int t = tid; t < VW * 8; t += NT) {       // t = (vector lane, channel within it)
            const int vl = t >> 3, c = (v0 + vl) * 8 + (t & 7);
            if (v0 + vl >= V) continue;
            float a1 = 0.f, a2 = 0.f;
            for (int rr = 0; rr < R; ++rr) { a1 += sh1[(rr * VW + vl) * 8 + (t & 7)]; a2 += sh2[(rr * VW + vl) * 8 + (t & 7)]; }
            part1[(long long)c * S + blockIdx.x] = a1;
            if (part2) part2[(long long)c * S + blockIdx.x] = a2;
        }
        __syncthreads();
    }
}

// dx = a*g + b*x + d (coef[3c..3c+2] from bn_grad_coeffs), g = relu ? dy*(y > 0) : dy (or,
// with sc and sh instead of y, dy where relu_passes(x)); dres = g where the forward added a residual. 8 values a thread, as bn_apply_nhwc.
template <class T>
__global__ void bn_bwd_apply_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                                  const float* __restrict__ sc, const float* __restrict__ sh,
                                  const float* __restrict__ coef, T* __restrict__ dx, T* __restrict__ dres,
                                  long long total, int C) {
    const int vecs = (int)(total >> 3);
    for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vecs; v += gridDim.x * blockDim.x) {
        int q = v << 3, c = q % C;
        float g[8], xv[8], yv[8];
        load8(dy + q, g);
        load8(x + q, xv);
        if (y) {
            load8(y + q, yv);
#pragma unroll
            for (int i = 0; i < 8; ++i) if (!(yv[i] > 0.f)) g[i] = 0.f;
        } else if (sc) {
#pragma unroll
            for (int i = 0; i < 8; ++i) if (!relu_passes<T>(xv[i], sc[c + i], sh[c + i])) g[i] = 0.f;
        }
        if (dres) store8(dres + q, g);
#pragma unroll
        for (int i = 0; i < 8; ++i) xv[i] = coef[3 * (c + i)] * g[i] + coef[3 * (c + i) + 1] * xv[i] + coef[3 * (c + i) + 2];
        store8(dx + q, xv);
    }
}

// sum_i p[i] for i < S by the whole block (blockDim.x a power of two): strided partial sums,
// then a fixed tree over shared memory, so the order never depends on scheduling
__device__ __forceinline__ float block_sum(const float* __restrict__ p, int S, float* sh) {
    float a = 0.f;
    for (int i = threadIdx.x; i < S; i += blockDim.x) a += p[i];
    sh[threadIdx.x] = a;
    __syncthreads();
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// BatchNorm backward coefficients from bn_bwd_sums_nhwc's partials, as bn_grad_coeffs, each
// channel's S partials (contiguous) summed by one block. grid: (C); block 256.
__global__ void bn_grad_coeffs_nhwc(const float* __restrict__ p1, const float* __restrict__ p2, int C, int S, int M,
                                    const float* __restrict__ gamma, const float* __restrict__ mean,
                                    const float* __restrict__ invstd, float* __restrict__ dgamma,
                                    float* __restrict__ dbeta, float* __restrict__ coef, int accumulate) {
    __shared__ float sh[256];
    const int c = blockIdx.x;
    const float s1 = block_sum(p1 + (long long)c * S, S, sh), s2 = block_sum(p2 + (long long)c * S, S, sh);
    if (threadIdx.x != 0) return;
    float is = invstd[c], dg = s2 * is;
    dbeta[c] = accumulate ? dbeta[c] + s1 : s1;
    dgamma[c] = accumulate ? dgamma[c] + dg : dg;
    float a = gamma[c] * is, b = -a * is * dg / M;
    coef[3 * c] = a; coef[3 * c + 1] = b; coef[3 * c + 2] = -a * s1 / M - b * mean[c];
}

// out[c] (+)= sum_i part[c * S + i] (a bias gradient from bn_bwd_sums_nhwc). grid: (C); block 256.
__global__ void sum_partials(const float* __restrict__ part, int S, int C, float* __restrict__ out, int accumulate) {
    __shared__ float sh[256];
    const int c = blockIdx.x;
    const float s = block_sum(part + (long long)c * S, S, sh);
    if (threadIdx.x == 0) out[c] = accumulate ? out[c] + s : s;
}

// ------------------------------------------------------------------ 2x2 max-pool, stride 2 (NHWC)
// Ties and NaN as torch: the first maximum in row-major window order; a NaN wins. Forward
// writes y (N, H/2, W/2, C) and idx, the window offset 0..3; backward reads dy through its
// NCHW strides (whatever layout a Flatten's backward left) and writes dx NHWC. One thread per
// pooled value.
// q -> (n, oh, ow, c) of an (N, OH, OW, C) output
__device__ __forceinline__ void pooled_index(long long q, int OH, int OW, int C, int& n, int& oh, int& ow, int& c) {
    c = (int)(q % C);
    long long p = q / C;
    ow = (int)(p % OW);
    oh = (int)((p / OW) % OH);
    n = (int)(p / ((long long)OW * OH));
}

template <class T>
__global__ void maxpool2x2_nhwc_forward(const T* __restrict__ x, T* __restrict__ y, unsigned char* __restrict__ idx,
                                        int N, int H, int W, int C) {
    int OH = H / 2, OW = W / 2;
    long long total = (long long)N * OH * OW * C;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        int n, oh, ow, c;
        pooled_index(q, OH, OW, C, n, oh, ow, c);
        const T* src = x + (((long long)n * H + 2 * oh) * W + 2 * ow) * C + c;
        float best = to_f(src[0]); int bi = 0;
        for (int o = 1; o < 4; ++o) {
            float v = to_f(src[((o >> 1) * W + (o & 1)) * (long long)C]);
            if (best != best) break;
            if (v > best || v != v) { best = v; bi = o; }
        }
        y[q] = src[((bi >> 1) * W + (bi & 1)) * (long long)C];
        idx[q] = (unsigned char)bi;
    }
}

template <class T>
__global__ void maxpool2x2_nhwc_backward(const T* __restrict__ dy, long long sn, long long sc, long long sh, long long sw,
                                         const unsigned char* __restrict__ idx, T* __restrict__ dx, int N, int H, int W,
                                         int C) {
    int OH = H / 2, OW = W / 2;
    long long total = (long long)N * OH * OW * C;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        int n, oh, ow, c;
        pooled_index(q, OH, OW, C, n, oh, ow, c);
        T g = dy[n * sn + c * sc + oh * sh + ow * sw];
        int bi = idx[q];
        T* dst = dx + (((long long)n * H + 2 * oh) * W + 2 * ow) * C + c;
        for (int o = 0; o < 4; ++o) dst[((o >> 1) * W + (o & 1)) * (long long)C] = o == bi ? g : (T)0;
    }
}

// ------------------------------------------------------------------ global average pool (NHWC <-> (N, C))
template <class T>
__global__ void avgpool_nhwc_forward(const T* __restrict__ x, T* __restrict__ y, int N, int HW, int C) {
    int q = blockIdx.x * blockDim.x + threadIdx.x;     // q = n*C + c: coalesced over c
    if (q >= N * C) return;
    int n = q / C, c = q - n * C;
    const T* src = x + (long long)n * HW * C + c;
    float s = 0.f;
    for (int i = 0; i < HW; ++i) s += to_a(src[(long long)i * C]);
    y[q] = from_a_t<T>(s / HW);
}

template <class T>
__global__ void avgpool_nhwc_backward(const T* __restrict__ dy, T* __restrict__ dx, int N, int HW, int C) {
    long long total = (long long)N * HW * C;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        int c = (int)(q % C);
        int n = (int)(q / ((long long)HW * C));
        dx[q] = from_a_t<T>(to_a(dy[(long long)n * C + c]) / HW);
    }
}
