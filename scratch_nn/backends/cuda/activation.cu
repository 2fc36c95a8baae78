// Bias and ReLU: the epilogues of the im2col convolution (channel-major) and of Linear
// (row-major), and ReLU's backward.
#include "common.cuh"

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

// ------------------------------------------------------------------ ReLU backward
template <class T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, long long n) {
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n; q += (long long)gridDim.x * blockDim.x)
        dx[q] = to_a(y[q]) > 0 ? dy[q] : (T)0;
}
