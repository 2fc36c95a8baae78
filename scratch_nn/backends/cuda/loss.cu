// The loss: softmax cross-entropy with label smoothing, forward and gradient in one kernel.
#include "common.cuh"

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
