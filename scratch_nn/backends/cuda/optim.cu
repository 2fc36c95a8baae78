// Optimizer updates over flat parameter arenas, and the fp16 mode's dynamic loss scaling.
#include "common.cuh"

// ------------------------------------------------------------------ optimizer updates (flat arenas)
// hyper[0] is the learning rate, read from device memory so a captured CUDA graph follows
// the schedule. In the fp16 mode two more pointers are set:
//   amp_state [scale, found_inf, growth_tracker]: the update divides the gradient by the loss
//     scale, or leaves everything untouched when amp_check found an inf/NaN (a skipped step,
//     as torch's GradScaler skips optimizer.step());
//   p16: the 16-bit copy (p16_kind 0 half, 1 bfloat16) of the parameters that forward and
//     backward read, rewritten here so that it never needs a pass of its own.
__global__ void set_scalars(double* __restrict__ out, double a, double b, double c) {
    out[0] = a; out[1] = b; out[2] = c;
}

template <class P>
__global__ void sgd_update(P* __restrict__ p, const P* __restrict__ g, P* __restrict__ buf, long long n,
                           const double* __restrict__ hyper, double momentum, double dampening, int nesterov,
                           double weight_decay, int first_step, const float* __restrict__ amp_state,
                           void* __restrict__ p16, int p16_kind) {
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
        if (p16) store16(p16, q, (float)np_, p16_kind);
    }
}

// hyper: [lr, bias_correction1, sqrt(bias_correction2)] for this step.
template <class P>
__global__ void adam_update(P* __restrict__ p, const P* __restrict__ g, P* __restrict__ m, P* __restrict__ v, long long n,
                            const double* __restrict__ hyper, double beta1, double beta2, double eps,
                            double weight_decay, int decoupled, const float* __restrict__ amp_state,
                            void* __restrict__ p16, int p16_kind) {
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
        if (p16) store16(p16, q, (float)np_, p16_kind);
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
