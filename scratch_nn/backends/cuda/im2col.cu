// The im2col convolution's data movement: columns from an input and, for the data gradient,
// their adjoint (col2im). The layout (activations channel-major, (C, N, H, W)) is explained
// in cuda_kernels.py; the GEMMs between them run in cuBLAS.
#include "common.cuh"

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
