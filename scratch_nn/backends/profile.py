"""Where a training step's time goes, kernel by kernel.

    with KernelProfile(be) as prof:
        for _ in range(5): step()
    print(prof.table())

Every public kernel method of one backend instance is wrapped for the duration; times are
exclusive (a conv's im2col and GEMMs are charged to `im2col` and `gemm`, not to the conv),
and the backend is synchronised around each call so device kernels are charged correctly.
"""
import time

KERNELS = ("gemm", "gemm_batched", "im2col", "col2im", "conv2d_forward", "conv2d_backward", "conv2d_backward_into",
           "linear_forward", "linear_backward", "linear_backward_into",
           "batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward", "batchnorm_backward_into",
           "relu_forward", "relu_backward", "maxpool2d_forward", "maxpool2d_backward",
           "global_avgpool_forward", "global_avgpool_backward", "softmax_cross_entropy",
           "sgd_update", "adam_update", "_im2col", "_partials")


class KernelProfile:
    def __init__(self, backend, kernels=KERNELS):
        self.be = backend
        self.kernels = [k for k in kernels if hasattr(backend, k)]
        self.seconds = {}
        self.calls = {}
        self._stack = []          # [name, child seconds] of the calls in progress
        self._t0 = None
        self.total = 0.0

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            self.be.synchronize()
            self._stack.append([name, 0.0])
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.be.synchronize()
                dt = time.perf_counter() - t
                _, child = self._stack.pop()
                self.seconds[name] = self.seconds.get(name, 0.0) + dt - child
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._stack:
                    self._stack[-1][1] += dt
        return timed

    def __enter__(self):
        for k in self.kernels:
            setattr(self.be, k, self._wrap(k, getattr(self.be, k)))
        self.be.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.be.synchronize()
        self.total += time.perf_counter() - self._t0
        for k in self.kernels:
            delattr(self.be, k)        # the class's method shows through again
        return False

    def table(self, steps=1):
        """Milliseconds per step for each kernel, largest first, and the part outside kernels."""
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        inside = sum(self.seconds.values())
        lines = [f"{'kernel':26s} {'ms/step':>9s} {'share':>7s} {'calls/step':>10s}"]
        for name, s in rows:
            lines.append(f"{name:26s} {1e3 * s / steps:9.2f} {100 * s / self.total:6.1f}% {self.calls[name] / steps:10.1f}")
        other = self.total - inside
        lines.append(f"{'(outside kernels)':26s} {1e3 * other / steps:9.2f} {100 * other / self.total:6.1f}%")
        lines.append(f"{'total':26s} {1e3 * self.total / steps:9.2f}")
        return "\n".join(lines)
