"""CUDA C++ kernels of the cupy backend: each forward beside its backward.

Layout. The cupy backend keeps activations channel-major in memory, (C, N, H, W), and hands
the layers NCHW-shaped views of it (`buf.transpose(1, 0, 2, 3)`). A convolution's GEMM
W (F, C*k*k) @ cols (C*k*k, N*OH*OW) then writes its output straight into that layout, the
backward GEMMs read dy with no transpose, and every channel's values lie contiguous, which
is what BatchNorm's per-channel reductions want. Kernels that take "CNHW" arrays take them
contiguous; im2col and the max-pool also read NCHW (the data batch) through (n, c) strides.
The max-pool writes its output NCHW (a following Flatten then needs no copy) and its input
gradient CNHW (what the convolution before it consumes).

Templates: T is the storage type (float, double, or __half for the fp16 mode) and A the type
sums are kept in (double for double, float otherwise), so fp16 activations are reduced in
fp32, as cuDNN and torch's autocast do.

Grids: per-channel kernels put the channel on blockIdx.y and cover the channel's M = N*H*W
values along x, so no thread divides by the channel stride; reductions split a channel into
blockIdx.x chunks and write one partial per chunk (no atomics: results do not depend on
scheduling), and a finalize kernel of one thread per channel combines them.
"""

SOURCE = r"""
#include <cuda_fp16.h>

template <class T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

template <class T> __device__ __forceinline__ float to_f(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_a(double v) { return v; }
__device__ __forceinline__ float to_a(float v) { return v; }
__device__ __forceinline__ float to_a(__half v) { return __half2float(v); }
// storage <- accumulation type (float -> half rounds to nearest)
template <class T, class A> __device__ __forceinline__ T from_a_t(A v) { return (T)v; }
template <> __device__ __forceinline__ __half from_a_t<__half, float>(float v) { return __float2half_rn(v); }

// ------------------------------------------------------------------ im2col / col2im
// cols[(c*k + i)*k + j][(n*OH + oh)*OW + ow] = x[n, c, oh*s - p + i, ow*s - p + j] (0 outside).
// grid: (ceil(N*OH*OW / block), C); a thread takes one output position of one channel and
// writes its k*k taps (one index decomposition for k*k values; each tap's row is written
// coalesced across the warp). x's element (n, c, h, w) is at n*sn + c*sc + h*W + w.
template <class T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, int N, int H, int W,
                       long long sn, long long sc, int k, int s, int p, int OH, int OW) {
    int c = blockIdx.y;
    int np = N * OH * OW;
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= np) return;
    int n = q / (OH * OW), rem = q - n * OH * OW, oh = rem / OW, ow = rem - oh * OW;
    const T* xc = x + c * sc + n * sn;
    T* out = cols + (long long)c * k * k * np + q;
    int h0 = oh * s - p, w0 = ow * s - p;
    for (int i = 0; i < k; ++i) {
        int h = h0 + i;
        bool hin = h >= 0 && h < H;
        for (int j = 0; j < k; ++j) {
            int w = w0 + j;
            out[(long long)(i * k + j) * np] = (hin && w >= 0 && w < W) ? xc[h * W + w] : (T)0;
        }
    }
}

// The adjoint, as a gather (each input element sums the column entries that copied it):
// dx (C, N, H, W) with channel stride dx_cs (N*H*W, or more when dx is a batch slice of a
// larger buffer). grid: (ceil(N*H*W / block), C).
template <class T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx, int N, int H, int W,
                       int k, int s, int p, int OH, int OW, long long dx_cs) {
    typedef typename Acc<T>::type A;
    int c = blockIdx.y;
    int m = N * H * W, np = N * OH * OW;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < m; q += gridDim.x * blockDim.x) {
        int n = q / (H * W), rem = q - n * H * W, h = rem / W, w = rem - h * W;
        A acc = 0;
        if (s == 1) {
            for (int i = 0; i < k; ++i) {
                int oh = h + p - i;
                if (oh < 0 || oh >= OH) continue;
                for (int j = 0; j < k; ++j) {
                    int ow = w + p - j;
                    if (ow < 0 || ow >= OW) continue;
                    acc += to_a(dcols[(long long)((c * k + i) * k + j) * np + (n * OH + oh) * OW + ow]);
                }
            }
            dx[c * dx_cs + q] = from_a_t<T>(acc);
            continue;
        }
        for (int i = 0; i < k; ++i) {
            int hh = h + p - i;
            if (hh < 0 || hh % s) continue;
            int oh = hh / s;
            if (oh >= OH) continue;
            for (int j = 0; j < k; ++j) {
                int ww = w + p - j;
                if (ww < 0 || ww % s) continue;
                int ow = ww / s;
                if (ow >= OW) continue;
                acc += to_a(dcols[(long long)((c * k + i) * k + j) * np + (n * OH + oh) * OW + ow]);
            }
        }
        dx[c * dx_cs + q] = from_a_t<T>(acc);
    }
}

// ------------------------------------------------------------------ conv epilogue (the CNN's convs)
// y (F, M) += b[f], then ReLU if relu. grid: (ceil(M / block), F). b is a parameter (P).
template <class T, class P>
__global__ void bias_relu(T* __restrict__ y, const P* __restrict__ b, int M, int relu) {
    typedef typename Acc<T>::type A;
    int f = blockIdx.y;
    A bias = b ? (A)b[f] : (A)0;
    T* row = y + (long long)f * M;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < M; q += gridDim.x * blockDim.x) {
        A v = to_a(row[q]) + bias;
        row[q] = from_a_t<T>(relu ? (v > 0 ? v : (v != v ? v : (A)0)) : v);
    }
}

// Linear layers: y (N, F) row-major += b[f], then ReLU if relu. One thread per value.
template <class T, class P>
__global__ void bias_rows(T* __restrict__ y, const P* __restrict__ b, long long total, int F, int relu) {
    typedef typename Acc<T>::type A;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        A v = to_a(y[q]) + (b ? (A)b[q % F] : (A)0);
        y[q] = from_a_t<T>(relu ? (v > 0 ? v : (v != v ? v : (A)0)) : v);
    }
}

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

// ------------------------------------------------------------------ ReLU backward
template <class T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, long long n) {
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n; q += (long long)gridDim.x * blockDim.x)
        dx[q] = to_a(y[q]) > 0 ? dy[q] : (T)0;
}

// ------------------------------------------------------------------ 2x2 max-pool, stride 2
// Ties and NaN as torch: the first maximum in row-major window order; a NaN wins.
// Forward reads x (n, c) planes at n*sn + c*sc (a CNHW buffer's NCHW view, or NCHW) and writes
// y and idx (the window offset 0..3) NCHW-contiguous, which is what a following Flatten wants
// as it is; backward reads dy planes at any (n, c) strides and writes dx channel-major (C, N, H, W),
// what the convolution before it consumes. One thread per pooled value.
template <class T>
__global__ void maxpool2x2_forward(const T* __restrict__ x, long long sn, long long sc, T* __restrict__ y,
                                   unsigned char* __restrict__ idx, int N, int C, int H, int W) {
    int OH = H / 2, OW = W / 2;
    long long total = (long long)N * C * OH * OW;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        long long pl = q / (OH * OW);            // n*C + c
        int rem = (int)(q - pl * OH * OW), oh = rem / OW, ow = rem - oh * OW;
        int n = (int)(pl / C), c = (int)(pl - (long long)n * C);
        const T* src = x + n * sn + c * sc + (2 * oh) * W + 2 * ow;
        float best = to_f(src[0]); int bi = 0;
        for (int o = 1; o < 4; ++o) {
            float v = to_f(src[(o >> 1) * W + (o & 1)]);
            if (best != best) break;
            if (v > best || v != v) { best = v; bi = o; }
        }
        y[q] = src[(bi >> 1) * W + (bi & 1)];
        idx[q] = (unsigned char)bi;
    }
}

template <class T>
__global__ void maxpool2x2_backward(const T* __restrict__ dy, long long dsn, long long dsc,
                                    const unsigned char* __restrict__ idx, T* __restrict__ dx, int N, int C, int H, int W) {
    int OH = H / 2, OW = W / 2;
    long long total = (long long)N * C * OH * OW;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        long long pl = q / (OH * OW);            // c*N + n: dx's plane
        int rem = (int)(q - pl * OH * OW), oh = rem / OW, ow = rem - oh * OW;
        int c = (int)(pl / N), n = (int)(pl - (long long)c * N);
        T g = dy[n * dsn + c * dsc + oh * OW + ow];
        int bi = idx[(((long long)n * C + c) * OH + oh) * OW + ow];
        T* dst = dx + pl * H * W + (2 * oh) * W + 2 * ow;
        for (int o = 0; o < 4; ++o) dst[(o >> 1) * W + (o & 1)] = o == bi ? g : (T)0;
    }
}

// ------------------------------------------------------------------ global average pool (CNHW <-> (N, C))
template <class T>
__global__ void global_avgpool_forward(const T* __restrict__ x, T* __restrict__ y, int N, int C, int HW) {
    typedef typename Acc<T>::type A;
    int q = blockIdx.x * blockDim.x + threadIdx.x;   // q = n*C + c, the output's own order
    if (q >= N * C) return;
    int n = q / C, c = q - n * C;
    const T* src = x + ((long long)c * N + n) * HW;
    A s = 0;
    for (int i = 0; i < HW; ++i) s += to_a(src[i]);
    y[q] = from_a_t<T>(s / HW);
}

template <class T>
__global__ void global_avgpool_backward(const T* __restrict__ dy, T* __restrict__ dx, int N, int C, int HW) {
    long long total = (long long)C * N * HW;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        long long cn = q / HW;
        int c = (int)(cn / N), n = (int)(cn - (long long)c * N);
        dx[q] = from_a_t<T>(to_a(dy[n * C + c]) / HW);
    }
}

// ------------------------------------------------------------------ softmax cross-entropy
// One block of 256 threads; a thread per row (strided). loss[0] = mean over rows, computed in
// the accumulation type; dlogits = (softmax - onehot_smoothed) * scale / N, where scale is the
// fp16 mode's loss scale read from device memory (amp_state[0]; null: 1). Labels out of range give NaN.
template <class T>
__global__ void softmax_xent(const T* __restrict__ logits, const long long* __restrict__ labels, int N, int K,
                             double smoothing, T* __restrict__ dlogits, typename Acc<T>::type* __restrict__ loss, const float* __restrict__ amp_state) {
    typedef typename Acc<T>::type A;
    __shared__ A sh[256];
    A total = 0;
    A loss_scale = amp_state ? (A)amp_state[0] : (A)1;
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        const T* z = logits + (long long)r * K;
        long long t = labels[r];
        A mx = to_a(z[0]);
        for (int k = 1; k < K; ++k) { A v = to_a(z[k]); mx = (v > mx || v != v) ? v : mx; }
        A se = 0, sz = 0;
        for (int k = 0; k < K; ++k) { A v = to_a(z[k]) - mx; se += exp(v); sz += v; }
        A lse = log(se);
        bool ok = t >= 0 && t < K;
        A nll = ok ? -(to_a(z[t]) - mx - lse) : (A)nan("");
        A per = smoothing ? (A)((1 - smoothing) * nll - smoothing * (sz / K - lse)) : nll;
        total += per;
        for (int k = 0; k < K; ++k) {
            A g = exp(to_a(z[k]) - mx - lse) - (A)(smoothing / K) - (k == t ? (A)(1 - smoothing) : (A)0);
            dlogits[(long long)r * K + k] = from_a_t<T>(g * loss_scale / N);
        }
    }
    sh[threadIdx.x] = total;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] = sh[0] / N;
}

// ------------------------------------------------------------------ optimizer updates (flat arenas)
// hyper[0] is the learning rate, read from device memory so a captured CUDA graph follows
// the schedule. In the fp16 mode two more pointers are set:
//   amp_state [scale, found_inf, growth_tracker]: the update divides the gradient by the loss
//     scale, or leaves everything untouched when amp_check found an inf/NaN (a skipped step,
//     as torch's GradScaler skips optimizer.step());
//   p16: the half copy of the parameters that forward and backward read, rewritten here so
//     that it never needs a pass of its own.
__global__ void set_scalars(double* __restrict__ out, double a, double b, double c) {
    out[0] = a; out[1] = b; out[2] = c;
}

template <class P>
__global__ void sgd_update(P* __restrict__ p, const P* __restrict__ g, P* __restrict__ buf, long long n,
                           const double* __restrict__ hyper, double momentum, double dampening, int nesterov,
                           double weight_decay, int first_step, const float* __restrict__ amp_state,
                           __half* __restrict__ p16) {
    if (amp_state && amp_state[1] != 0.0f) return;
    P lr = (P)hyper[0];
    P inv_scale = amp_state ? (P)(1.0f / amp_state[0]) : (P)1;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n; q += (long long)gridDim.x * blockDim.x) {
        P d = amp_state ? g[q] * inv_scale : g[q];
        if (weight_decay != 0) d += (P)weight_decay * p[q];
        if (momentum != 0) {
            P b = first_step ? d : (P)momentum * buf[q] + (P)(1 - dampening) * d;
            buf[q] = b;
            d = nesterov ? d + (P)momentum * b : b;
        }
        P np_ = p[q] - lr * d;
        p[q] = np_;
        if (p16) p16[q] = __float2half_rn((float)np_);
    }
}

// hyper: [lr, bias_correction1, sqrt(bias_correction2)] for this step.
template <class P>
__global__ void adam_update(P* __restrict__ p, const P* __restrict__ g, P* __restrict__ m, P* __restrict__ v, long long n,
                            const double* __restrict__ hyper, double beta1, double beta2, double eps,
                            double weight_decay, int decoupled, const float* __restrict__ amp_state,
                            __half* __restrict__ p16) {
    if (amp_state && amp_state[1] != 0.0f) return;
    P lr = (P)hyper[0], bc1 = (P)hyper[1], bc2s = (P)hyper[2];
    P inv_scale = amp_state ? (P)(1.0f / amp_state[0]) : (P)1;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n; q += (long long)gridDim.x * blockDim.x) {
        P gq = amp_state ? g[q] * inv_scale : g[q], pq = p[q];
        if (weight_decay != 0) {
            if (decoupled) pq *= (P)1 - lr * (P)weight_decay;
            else gq += (P)weight_decay * pq;
        }
        P mq = (P)beta1 * m[q] + (P)(1 - beta1) * gq;
        P vq = (P)beta2 * v[q] + (P)(1 - beta2) * gq * gq;
        m[q] = mq; v[q] = vq;
        P np_ = pq - (lr / bc1) * (mq / (sqrt(vq) / bc2s + (P)eps));
        p[q] = np_;
        if (p16) p16[q] = __float2half_rn((float)np_);
    }
}

// ------------------------------------------------------------------ dynamic loss scaling (fp16 mode)
// amp_check: found_inf = 1 if any gradient is inf or NaN (any thread may write the same 1).
template <class P>
__global__ void amp_check(const P* __restrict__ g, long long n, float* __restrict__ amp_state) {
    bool bad = false;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n; q += (long long)gridDim.x * blockDim.x)
        bad |= !isfinite(g[q]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) amp_state[1] = 1.0f;
}

// After the updates, as GradScaler.update(): back off on a skipped step, grow after `interval`
// good steps in a row; clears found_inf for the next step. One thread.
__global__ void amp_update(float* __restrict__ amp_state, float growth, float backoff, int interval) {
    if (amp_state[1] != 0.0f) {
        amp_state[0] *= backoff;
        amp_state[2] = 0.0f;
    } else {
        amp_state[2] += 1.0f;
        if (amp_state[2] >= (float)interval) { amp_state[0] *= growth; amp_state[2] = 0.0f; }
    }
    amp_state[1] = 0.0f;
}
"""

# (C++ type of the storage, C++ type of the parameters/statistics) per mode
STORAGE = {"float32": ("float", "float"), "float64": ("double", "double"), "float16": ("__half", "float")}

_TEMPLATES_T = ["im2col", "col2im", "relu_backward", "maxpool2x2_forward",
                "maxpool2x2_backward", "global_avgpool_forward", "global_avgpool_backward", "softmax_xent",
                "bn_backward_apply"]
_TEMPLATES_TP = ["bias_relu", "bias_rows", "bn_stats", "bn_apply", "bn_grad_coeffs"]
_TEMPLATES_P = ["sgd_update", "adam_update", "amp_check"]
_PLAIN = ["set_scalars", "amp_update"]


def name_expressions(storage):
    t, p = STORAGE[storage]
    names = [f"{k}<{t}>" for k in _TEMPLATES_T]
    names += [f"channel_sums<{t}, {m}>" for m in (0, 1)]
    names += [f"{k}<{t}, {p}>" for k in _TEMPLATES_TP]
    names += [f"{k}<{p}>" for k in _TEMPLATES_P]
    return names + _PLAIN


class Kernels:
    """The compiled kernels for one storage type: k("im2col") -> cupy RawKernel function."""

    def __init__(self, storage):
        import cupy

        self.storage = storage
        self.t, self.p = STORAGE[storage]
        self._names = name_expressions(storage)
        self.module = cupy.RawModule(code=SOURCE, options=("--std=c++17",), name_expressions=self._names)
        self._cache = {}

    def __call__(self, name, *template_args):
        key = (name,) + template_args
        fn = self._cache.get(key)
        if fn is None:
            if name in _PLAIN:
                expr = name
            elif name in _TEMPLATES_TP:
                expr = f"{name}<{self.t}, {self.p}>"
            elif name in _TEMPLATES_P:
                expr = f"{name}<{self.p}>"
            elif template_args:
                expr = f"{name}<{self.t}, {', '.join(map(str, template_args))}>"
            else:
                expr = f"{name}<{self.t}>"
            fn = self._cache[key] = self.module.get_function(expr)
        return fn
