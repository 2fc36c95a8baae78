// BatchNorm: per-channel partial sums (no atomics: one partial per chunk), the statistics
// and coefficients from them, the apply (with residual and ReLU) and its backward.
#include "common.cuh"

// ------------------------------------------------------------------ per-channel partial sums
// One partial per (chunk, channel) of two sums over x (C, M):
//   MODE 0 (BN forward):  sum(x - x[c, 0]) and sum((x - x[c, 0])^2)  (shifted: no cancellation)
//   MODE 1 (BN backward): sum(g) and sum(g * (x - mean[c]))  with g = relu ? dy * (y > 0) : dy
// grid: (S, C); block: 256 threads (a power of two).
template <class T, int MODE>
__global__ void channel_sums(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ y,
                             const typename Acc<T>::type* __restrict__ mean, int M,
                             typename Acc<T>::type* __restrict__ part1, typename Acc<T>::type* __restrict__ part2) {
    typedef typename Acc<T>::type A;
    __shared__ A sh1[256], sh2[256];
    int c = blockIdx.y, S = gridDim.x, bd = blockDim.x;
    long long base = (long long)c * M;
    int chunk = (M + S - 1) / S;
    int lo = blockIdx.x * chunk, hi = min(M, lo + chunk);
    A s1 = 0, s2 = 0;
    A shift = MODE == 0 ? to_a(x[base]) : mean[c];
    int q = lo + threadIdx.x;
    // four independent loads per iteration keep enough bytes in flight to reach bandwidth
    for (; q + 3 * bd < hi; q += 4 * bd) {
        A v[4], g[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            v[u] = to_a(x[base + q + u * bd]);
            if (MODE == 1) g[u] = to_a(dy[base + q + u * bd]);
            if (MODE == 1 && y && !(to_a(y[base + q + u * bd]) > 0)) g[u] = 0;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (MODE == 0) { A d = v[u] - shift; s1 += d; s2 += d * d; }
            else { s1 += g[u]; s2 += g[u] * (v[u] - shift); }
        }
    }
    for (; q < hi; q += bd) {
        if (MODE == 0) {
            A d = to_a(x[base + q]) - shift;
            s1 += d; s2 += d * d;
        } else {
            A g = to_a(dy[base + q]);
            if (y && !(to_a(y[base + q]) > 0)) g = 0;
            s1 += g;
            s2 += g * (to_a(x[base + q]) - shift);
        }
    }
    sh1[threadIdx.x] = s1; sh2[threadIdx.x] = s2;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) { sh1[threadIdx.x] += sh1[threadIdx.x + w]; sh2[threadIdx.x] += sh2[threadIdx.x + w]; }
        __syncthreads();
    }
    if (threadIdx.x == 0) { part1[c * S + blockIdx.x] = sh1[0]; part2[c * S + blockIdx.x] = sh2[0]; }
}

// ------------------------------------------------------------------ batch norm (+ residual, ReLU)
// Forward statistics from the partials; updates the running statistics as nn.BatchNorm2d
// (unbiased variance: var * unbias, unbias = n / (n - 1) for the n values behind the statistics) and leaves y = x*scale + shift's coefficients. One thread per channel.
// Statistics, parameters and coefficients are fp32 whatever T is (float/double: their own type P).
template <class T, class P>
__global__ void bn_stats(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ p1,
                         const typename Acc<T>::type* __restrict__ p2, int C, int S, int M,
                         const P* __restrict__ gamma, const P* __restrict__ beta, P* __restrict__ run_mean,
                         P* __restrict__ run_var, double eps, double momentum, double unbias,
                         typename Acc<T>::type* __restrict__ mean_out, typename Acc<T>::type* __restrict__ invstd_out,
                         P* __restrict__ scale, P* __restrict__ shift, P* __restrict__ batch_mean, P* __restrict__ batch_var) {
    typedef typename Acc<T>::type A;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    A s1 = 0, s2 = 0;
    for (int i = 0; i < S; ++i) { s1 += p1[c * S + i]; s2 += p2[c * S + i]; }
    A d = s1 / M;
    A mean = to_a(x[(long long)c * M]) + d;
    A var = s2 / M - d * d;
    if (var < 0) var = 0;
    A invstd = (A)1 / sqrt(var + (A)eps);
    mean_out[c] = mean; invstd_out[c] = invstd;
    batch_mean[c] = (P)mean; batch_var[c] = (P)var;
    run_mean[c] = (P)((1 - momentum) * (double)run_mean[c] + momentum * (double)mean);
    run_var[c] = (P)((1 - momentum) * (double)run_var[c] + momentum * (double)var * unbias);
    A sc = (A)gamma[c] * invstd;
    scale[c] = (P)sc; shift[c] = (P)((A)beta[c] - mean * sc);
}

// y = relu?(x*scale[c] + shift[c] + residual?), all (C, M). grid: (ceil(M / block), C).
template <class T, class P>
__global__ void bn_apply(const T* __restrict__ x, const T* __restrict__ res, const P* __restrict__ scale,
                         const P* __restrict__ shift, T* __restrict__ y, int M, int relu) {
    typedef typename Acc<T>::type A;
    int c = blockIdx.y;
    A sc = (A)scale[c], sh = (A)shift[c];
    long long base = (long long)c * M;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < M; q += gridDim.x * blockDim.x) {
        A v = to_a(x[base + q]) * sc + sh;
        if (res) v += to_a(res[base + q]);
        if (relu) v = v > 0 ? v : (v != v ? v : (A)0);
        y[base + q] = from_a_t<T>(v);
    }
}

// Backward coefficients from the partials: dbeta = sum g, dgamma = invstd * sum g*(x - mean), and
// dx = a*g + b*x + d with a = gamma*invstd, b = -a*invstd*dgamma/M, d = -a*dbeta/M - b*mean.
template <class T, class P>
__global__ void bn_grad_coeffs(const typename Acc<T>::type* __restrict__ p1, const typename Acc<T>::type* __restrict__ p2,
                               int C, int S, int M, const P* __restrict__ gamma, const typename Acc<T>::type* __restrict__ mean,
                               const typename Acc<T>::type* __restrict__ invstd, P* __restrict__ dgamma, P* __restrict__ dbeta,
                               typename Acc<T>::type* __restrict__ coef, int accumulate) {
    typedef typename Acc<T>::type A;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    A s1 = 0, s2 = 0;
    for (int i = 0; i < S; ++i) { s1 += p1[c * S + i]; s2 += p2[c * S + i]; }
    A is = invstd[c];
    A dg = s2 * is;
    dbeta[c] = (P)(accumulate ? (A)dbeta[c] + s1 : s1);     // accumulate: straight into the gradients
    dgamma[c] = (P)(accumulate ? (A)dgamma[c] + dg : dg);
    A a = (A)gamma[c] * is;
    A b = -a * is * dg / M;
    coef[3 * c] = a; coef[3 * c + 1] = b; coef[3 * c + 2] = -a * s1 / M - b * mean[c];
}

// dx = a*g + b*x + d with g = relu ? dy*(y > 0) : dy; dres = g where the forward added a residual.
template <class T>
__global__ void bn_backward_apply(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                                  const typename Acc<T>::type* __restrict__ coef, T* __restrict__ dx, T* __restrict__ dres, int M) {
    typedef typename Acc<T>::type A;
    int c = blockIdx.y;
    A a = coef[3 * c], b = coef[3 * c + 1], d = coef[3 * c + 2];
    long long base = (long long)c * M;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < M; q += gridDim.x * blockDim.x) {
        A g = to_a(dy[base + q]);
        if (y && !(to_a(y[base + q]) > 0)) g = 0;
        dx[base + q] = from_a_t<T>(a * g + b * to_a(x[base + q]) + d);
        if (dres) dres[base + q] = from_a_t<T>(g);
    }
}
