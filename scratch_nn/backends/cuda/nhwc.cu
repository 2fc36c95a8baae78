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

// Merge the chunks' (mean, M2) (Chan et al., in two sums: the count-weighted mean, then each
// chunk's M2 plus its count times its squared distance to that mean), then as bn_stats:
// running statistics updated as nn.BatchNorm2d (unbiased variance), y = x*scale + shift's
// coefficients. Chunk i holds min(rows, M - (i % per_rank) * rows) rows: with synchronised
// BatchNorm the chunks are every rank's, per_rank each over M rows. grid: (ceil(C / 32));
// block 256 = 8 chunk lanes x 32 channels; each sum goes lane by lane, then over the 8 lanes in
// order, so the result does not depend on scheduling.
template <class P>
__global__ void bn_merge_stats(const float* __restrict__ stats, int chunks, int per_rank, int rows, int M, int C,
                               const P* __restrict__ gamma, const P* __restrict__ beta, P* __restrict__ run_mean,
                               P* __restrict__ run_var, double eps, double momentum, double unbias,
                               float* __restrict__ mean_out, float* __restrict__ invstd_out, P* __restrict__ scale,
                               P* __restrict__ shift, P* __restrict__ batch_mean, P* __restrict__ batch_var) {
    __shared__ double sh[8][32], shn[8][32];
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5, c = blockIdx.x * 32 + lc;
    double n = 0, s1 = 0;
    if (c < C)
        for (int i = lr; i < chunks; i += 8) {
            double nb = min(rows, M - (i % per_rank) * rows);
            n += nb;
            s1 += nb * stats[(long long)(2 * i) * C + c];
        }
    sh[lr][lc] = s1; shn[lr][lc] = n;
    __syncthreads();
    double tot = 0, sum = 0;
    for (int q = 0; q < 8; ++q) { tot += shn[q][lc]; sum += sh[q][lc]; }
    const double mean = tot > 0 ? sum / tot : 0;
    __syncthreads();
    double m2 = 0;
    if (c < C)
        for (int i = lr; i < chunks; i += 8) {
            double nb = min(rows, M - (i % per_rank) * rows), d = stats[(long long)(2 * i) * C + c] - mean;
            m2 += stats[(long long)(2 * i + 1) * C + c] + nb * d * d;
        }
    sh[lr][lc] = m2;
    __syncthreads();
    if (lr != 0 || c >= C) return;
    m2 = 0;
    for (int q = 0; q < 8; ++q) m2 += sh[q][lc];
    double var = m2 / tot;
    float invstd = (float)(1.0 / sqrt(var + eps));
    mean_out[c] = (float)mean; invstd_out[c] = invstd;
    batch_mean[c] = (P)mean; batch_var[c] = (P)var;
    run_mean[c] = (P)((1 - momentum) * (double)run_mean[c] + momentum * mean);
    run_var[c] = (P)((1 - momentum) * (double)run_var[c] + momentum * var * unbias);
    float sc = (float)gamma[c] * invstd;
    scale[c] = (P)sc; shift[c] = (P)((float)beta[c] - (float)mean * sc);
}

// 8 consecutive 16-bit values (16 bytes) <-> floats
template <class T> __device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = to_a(e[i]);
}
template <class T> __device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = from_a_t<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = u;
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
            float t = a[i] * (float)scale[c + i] + (float)shift[c + i];
            if (res) t += r[i];
            if (relu) t = t > 0.f ? t : (t != t ? t : 0.f);
            a[i] = t;
        }
        store8(y + q, a);
    }
}

// ------------------------------------------------------------------ BatchNorm backward
// Per chunk of rows: part1[c * S + i] = sum g, part2[c * S + i] = sum g * (x - mean[c]), with
// g = relu ? dy * (y > 0) : dy (the layout bn_grad_coeffs reads). x may be null (a bias
// gradient: part1 only). grid: (S); block 256 = 8 row lanes x 32 channel lanes.
template <class T>
__global__ void bn_bwd_sums_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                                 const float* __restrict__ mean, int M, int C, int rows, float* __restrict__ part1,
                                 float* __restrict__ part2) {
    __shared__ float sh1[8][32], sh2[8][32];
    const int S = gridDim.x, lo = blockIdx.x * rows, hi = min(M, lo + rows);
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5;
    for (int c0 = 0; c0 < C; c0 += 32) {
        int c = c0 + lc;
        float s1 = 0.f, s2 = 0.f;
        if (c < C) {
            float mu = x ? mean[c] : 0.f;
            for (int m = lo + lr; m < hi; m += 8) {
                long long q = (long long)m * C + c;
                float g = to_a(dy[q]);
                if (y && !(to_a(y[q]) > 0.f)) g = 0.f;
                s1 += g;
                if (x) s2 += g * (to_a(x[q]) - mu);
            }
        }
        sh1[lr][lc] = s1; sh2[lr][lc] = s2;
        __syncthreads();
        if (lr == 0 && c < C) {
            float t1 = 0.f, t2 = 0.f;
            for (int i = 0; i < 8; ++i) { t1 += sh1[i][lc]; t2 += sh2[i][lc]; }
            part1[(long long)c * S + blockIdx.x] = t1;
            if (part2) part2[(long long)c * S + blockIdx.x] = t2;
        }
        __syncthreads();
    }
}

// dx = a*g + b*x + d (coef[3c..3c+2] from bn_grad_coeffs), g = relu ? dy*(y > 0) : dy;
// dres = g where the forward added a residual. 8 values a thread, as bn_apply_nhwc.
template <class T>
__global__ void bn_bwd_apply_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
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
        }
        if (dres) store8(dres + q, g);
#pragma unroll
        for (int i = 0; i < 8; ++i) xv[i] = coef[3 * (c + i)] * g[i] + coef[3 * (c + i) + 1] * xv[i] + coef[3 * (c + i) + 2];
        store8(dx + q, xv);
    }
}

// BatchNorm backward coefficients from bn_bwd_sums_nhwc's partials, as bn_grad_coeffs but with
// the S partials of each channel summed in parallel in a fixed order (8 lanes, then in turn).
// grid: (ceil(C / 32)); block 256 = 8 partial lanes x 32 channels.
__global__ void bn_grad_coeffs_nhwc(const float* __restrict__ p1, const float* __restrict__ p2, int C, int S, int M,
                                    const float* __restrict__ gamma, const float* __restrict__ mean,
                                    const float* __restrict__ invstd, float* __restrict__ dgamma,
                                    float* __restrict__ dbeta, float* __restrict__ coef, int accumulate) {
    __shared__ float sh1[8][32], sh2[8][32];
    const int lc = threadIdx.x & 31, lr = threadIdx.x >> 5, c = blockIdx.x * 32 + lc;
    float a1 = 0.f, a2 = 0.f;
    if (c < C)
        for (int i = lr; i < S; i += 8) { a1 += p1[(long long)c * S + i]; a2 += p2[(long long)c * S + i]; }
    sh1[lr][lc] = a1; sh2[lr][lc] = a2;
    __syncthreads();
    if (lr != 0 || c >= C) return;
    float s1 = 0.f, s2 = 0.f;
    for (int q = 0; q < 8; ++q) { s1 += sh1[q][lc]; s2 += sh2[q][lc]; }
    float is = invstd[c], dg = s2 * is;
    dbeta[c] = accumulate ? dbeta[c] + s1 : s1;
    dgamma[c] = accumulate ? dgamma[c] + dg : dg;
    float a = gamma[c] * is, b = -a * is * dg / M;
    coef[3 * c] = a; coef[3 * c + 1] = b; coef[3 * c + 2] = -a * s1 / M - b * mean[c];
}

// out[c] (+)= sum_i part[c * S + i], in index order (a bias gradient from bn_bwd_sums_nhwc).
__global__ void sum_partials(const float* __restrict__ part, int S, int C, float* __restrict__ out, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.f;
    for (int i = 0; i < S; ++i) s += part[(long long)c * S + i];
    out[c] = accumulate ? out[c] + s : s;
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
