// Pooling: the CNN's 2x2 max-pool and ResNet's global average pool, each forward beside its
// backward.
#include "common.cuh"

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
