// Types and conversions every kernel file shares (included once by the loader).
// T is the storage type (float, double, __half, or bf16_t for bfloat16); A the type sums are
// kept in (double for double, float otherwise), so 16-bit activations are reduced in fp32, as
// cuDNN and autocast do.
#pragma once
#include <cuda_fp16.h>

// bfloat16 as its raw bits (no cuda_bf16.h needed: NVRTC's include path may not have it);
// conversions round to nearest even and keep NaN a NaN
struct bf16_t {
    unsigned short x;
    bf16_t() = default;
    __device__ __forceinline__ bf16_t(float f) {
        unsigned u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) x = (unsigned short)((u >> 16) | 0x40);
        else x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    __device__ __forceinline__ bf16_t(int v) : bf16_t((float)v) {}
    __device__ __forceinline__ operator float() const { return __uint_as_float(((unsigned)x) << 16); }
};

template <class T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

template <class T> __device__ __forceinline__ float to_f(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_a(double v) { return v; }
__device__ __forceinline__ float to_a(float v) { return v; }
__device__ __forceinline__ float to_a(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_a(bf16_t v) { return (float)v; }
// storage <- accumulation type (float -> half / bfloat16 rounds to nearest)
template <class T, class A> __device__ __forceinline__ T from_a_t(A v) { return (T)v; }
template <> __device__ __forceinline__ __half from_a_t<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16_t from_a_t<bf16_t, float>(float v) { return bf16_t(v); }

// a 16-bit copy of fp32 parameters (the optimizers rewrite it): kind 0 half, 1 bfloat16
__device__ __forceinline__ void store16(void* p16, long long q, float v, int kind) {
    if (kind) reinterpret_cast<bf16_t*>(p16)[q] = bf16_t(v);
    else reinterpret_cast<__half*>(p16)[q] = __float2half_rn(v);
}
