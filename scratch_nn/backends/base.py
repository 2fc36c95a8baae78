"""The backend seam: the reference kernels, written once against `self.xp`.

Layers never touch an array library directly for their hot paths; they call these methods.
A backend subclass sets `xp` and overrides only the kernels it makes faster (numba: parallel
CPU loops; cupy: fused CUDA kernels). Every kernel here is vectorised: no Python loops over
images or pixels, only over kernel offsets (at most kh*kw iterations) or parameter lists.

Conventions follow PyTorch: NCHW activations, (out, in, kh, kw) conv weights.
"""
import math


def check_dx_add(add, need_dx):
    """conv2d_backward_into's add goes into the input gradient, which must then be computed."""
    if add is not None and not need_dx:
        raise ValueError("conv2d_backward_into adds to the input gradient: it needs need_dx=True")


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says what to install or use."""


class Backend:
    name = "base"
    xp = None
    default_dtype = "float32"
    supported_dtypes = ("float32", "float64")

    def __init__(self, threads=None):
        self.threads = threads

    # ------------------------------------------------------------------ arrays
    def asarray(self, a, dtype=None):
        """Host (numpy) or device array -> this backend's array."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """This backend's array -> numpy array (a copy-free view where possible)."""
        return a

    def synchronize(self):
        """Wait for queued device work; a no-op on CPU backends."""

    def check_dtype(self, dtype):
        name = self.xp.dtype(dtype).name
        if name not in self.supported_dtypes:
            raise ValueError(f"backend {self.name!r} supports dtypes {self.supported_dtypes}, not {name!r}")
        return self.xp.dtype(name)

    def rng(self, seed):
        """A random generator living where this backend's arrays live."""
        return self.xp.random.default_rng(seed)

    def describe(self):
        """A small dict for config.json."""
        return {"name": self.name, "threads": self.threads}

    # ------------------------------------------------------------------ GEMM
    def gemm(self, a, b):
        """a @ b through the array library's BLAS (every GEMM goes through here, so a
        profile can tell BLAS time from the rest)."""
        return self.xp.matmul(a, b)

    # ------------------------------------------------------------------ convolution
    def _as_strided(self, a, shape, strides):
        return self.xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)

    @staticmethod
    def conv_output_size(size, k, stride, pad):
        out = (size + 2 * pad - k) // stride + 1
        if out <= 0:
            raise ValueError(f"kernel {k} with stride {stride} and padding {pad} does not fit input size {size}")
        return out

    def im2col(self, x, kh, kw, stride, pad):
        """(N, C, H, W) -> cols (C*kh*kw, N*OH*OW).

        Channel-major rows keep the copy's inner loop running along an image row, and make
        the forward GEMM's output (F, N*OH*OW) one cheap transpose away from NCHW.
        """
        xp = self.xp
        n, c, h, w = x.shape
        oh = self.conv_output_size(h, kh, stride, pad)
        ow = self.conv_output_size(w, kw, stride, pad)
        if pad:
            x = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        s = x.strides
        win = self._as_strided(x, (c, kh, kw, n, oh, ow),
                               (s[1], s[2], s[3], s[0], s[2] * stride, s[3] * stride))
        return xp.ascontiguousarray(win).reshape(c * kh * kw, n * oh * ow), oh, ow

    def col2im(self, cols, x_shape, kh, kw, stride, pad, oh, ow):
        """Adjoint of im2col: scatter-add (C*kh*kw, N*OH*OW) back onto (N, C, H, W).

        Accumulates in cols' own channel-major (C, N, H, W) order, so the kh*kw adds stream
        through memory, and transposes to NCHW once at the end."""
        xp = self.xp
        n, c, h, w = x_shape
        dxp = xp.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
        d6 = cols.reshape(c, kh, kw, n, oh, ow)
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += d6[:, i, j]
        return xp.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + w].transpose(1, 0, 2, 3))

    # A convolution is an im2col GEMM. When a whole batch's columns fit COLS_BYTES they are made
    # once and kept for the weight gradient (the fastest way when memory allows); otherwise the
    # batch goes in slices whose columns fit, and the weight gradient rebuilds them a slice at a
    # time. Keeping every convolution's columns cost ResNet-18 at batch 512 about 11 GB (9x
    # each 3x3 input, three times torch's whole footprint); at batch 64 every one of them fits.
    # Measured on the 2-core Xeon (numpy, ResNet-18, batch 64): the data gradient as a
    # convolution of dy with the flipped kernel (im2col of dy + GEMM) was slower than GEMM +
    # col2im, so col2im stays.
    COLS_BYTES = 256 * 2**20

    def conv_slices(self, n, rows, positions, itemsize, budget=None):
        """[(lo, hi)] batch slices whose (rows, images * positions) columns fit `budget` bytes
        (default COLS_BYTES)."""
        budget = self.COLS_BYTES if budget is None else budget
        step = max(1, min(n, budget // max(1, rows * positions * itemsize)))
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def record_conv_algorithm(self, w, x_shape, stride, pad, algorithm):
        """Note which algorithm ran this convolution shape (conv_algorithms)."""
        f, c, kh, kw = w.shape
        if not hasattr(self, "_conv_algorithms"):
            self._conv_algorithms = {}
        self._conv_algorithms[f"{c}->{f} {kh}x{kw} stride {stride} pad {pad} on {x_shape[2]}x{x_shape[3]}"] = algorithm

    def conv_algorithms(self):
        """The algorithm each convolution shape ran with so far, shape -> algorithm (a run's
        summary.json keeps it: the choice is made per shape as the layers first run)."""
        return dict(getattr(self, "_conv_algorithms", {}))

    def describe_convolution(self):
        return {"algorithm": "im2col GEMM; columns kept for the weight gradient when a batch's fit in "
                             f"{self.COLS_BYTES >> 20} MB, else batch slices that fit, rebuilt in backward",
                "data_gradient": "GEMM + col2im, per slice"}

    def _conv_out(self, ym, b, relu, out):
        """out (n, F, OH, OW) = the GEMM result ym (F, n*OH*OW) (+ b, ReLU)."""
        n, f, oh, ow = out.shape
        y = ym.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
        if b is None:
            out[...] = y
        else:
            self.xp.add(y, b.reshape(1, f, 1, 1), out=out)
        if relu:
            self.xp.maximum(out, 0, out=out)      # NaN passes, as in torch

    def _conv_grad_rows(self, dy, y):
        """(dym (F, n*OH*OW) contiguous, db (F,)) of a slice dy (n, F, OH, OW), masked by the
        forward output y > 0 where the conv's ReLU was fused (y not None)."""
        g = self.relu_backward(dy, y) if y is not None else dy
        f = dy.shape[1]
        dym = self.xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(f, -1)
        return dym, dym.sum(axis=1)

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        """y = conv(x, w) + b, then ReLU if `relu` (a ReLU fused into the conv).
        Returns (y, cache) where cache is what backward needs."""
        f, c, kh, kw = w.shape
        n, _, h, wd = x.shape
        oh, ow = self.conv_output_size(h, kh, stride, pad), self.conv_output_size(wd, kw, stride, pad)
        out = self.xp.empty((n, f, oh, ow), dtype=x.dtype)
        wm = w.reshape(f, -1)
        slices = self.conv_slices(n, c * kh * kw, oh * ow, x.dtype.itemsize)
        cols = None
        for lo, hi in slices:
            cols, _, _ = self.im2col(x[lo:hi], kh, kw, stride, pad)
            self._conv_out(self.gemm(wm, cols), b, relu, out[lo:hi])
        kept = cols if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, stride, pad, "im2col GEMM")
        return out, (x, kept, stride, pad, oh, ow, out if relu else None)

    def conv2d_backward(self, dy, cache, w, need_dx=True):
        """Returns (dx or None, dw, db) for dy (N, F, OH, OW)."""
        xp = self.xp
        x, kept, stride, pad, oh, ow, relu_out = cache
        f, c, kh, kw = w.shape
        n = x.shape[0]
        wm = w.reshape(f, -1)
        slices = [(0, n)] if kept is not None else self.conv_slices(n, c * kh * kw, oh * ow, x.dtype.itemsize)
        dx = xp.empty(x.shape, dtype=dy.dtype) if need_dx and len(slices) > 1 else None
        dw = db = None
        for lo, hi in slices:
            dym, dbs = self._conv_grad_rows(dy[lo:hi], relu_out[lo:hi] if relu_out is not None else None)
            cols = kept if kept is not None else self.im2col(x[lo:hi], kh, kw, stride, pad)[0]
            dws = self.gemm(dym, cols.T)
            del cols
            dw, db = (dws, dbs) if dw is None else (dw + dws, db + dbs)
            if need_dx:
                dxs = self.col2im(self.gemm(wm.T, dym), x[lo:hi].shape, kh, kw, stride, pad, oh, ow)
                if dx is None:
                    dx = dxs
                else:
                    dx[lo:hi] = dxs
        return dx, dw.reshape(w.shape), db

    def conv2d_backward_into(self, dy, cache, w, wgrad, bgrad, need_dx=True, add=None):
        """conv2d_backward that adds dw (and db) into the parameters' gradient buffers and
        returns dx: what the layers call, so a backend can accumulate inside its GEMM. With
        add (dx's shape), returns dx + add (a residual block's other input gradient), which a
        backend may add in the data-gradient kernel itself."""
        check_dx_add(add, need_dx)
        dx, dw, db = self.conv2d_backward(dy, cache, w, need_dx=need_dx)
        wgrad += dw
        if bgrad is not None:
            bgrad += db
        return self.add_(dx, add) if add is not None else dx

    # ------------------------------------------------------------------ linear
    def linear_forward(self, x, w, b, relu=False):
        y = self.gemm(x, w.T)
        if b is not None:
            y += b
        return self.relu_forward(y) if relu else y

    def linear_backward(self, dy, x, w, need_dx=True):
        dx = self.gemm(dy, w) if need_dx else None
        return dx, self.gemm(dy.T, x), dy.sum(axis=0)

    def linear_backward_into(self, dy, x, w, wgrad, bgrad, need_dx=True):
        """linear_backward that adds into the gradient buffers and returns dx."""
        dx, dw, db = self.linear_backward(dy, x, w, need_dx=need_dx)
        wgrad += dw
        if bgrad is not None:
            bgrad += db
        return dx

    # ------------------------------------------------------------------ batch norm
    # BN may carry what follows it in the graph: y = relu?(BN(x) + residual?). The reference
    # composes the pieces; a backend fuses them into one pass over memory.
    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        """Normalise with batch statistics. Returns (y, mean, biased var, cache). With
        running=(running_mean, running_var, momentum), also update those in place as
        nn.BatchNorm2d does (a GPU backend does it inside its statistics kernel)."""
        xp = self.xp
        c = x.shape[1]
        m = x.size // c
        bshape = (1, c, 1, 1)
        mean = x.mean(axis=(0, 2, 3))
        xc = x - mean.reshape(bshape)
        var = xp.einsum("nchw,nchw->c", xc, xc) / m
        invstd = 1.0 / xp.sqrt(var + eps)
        xhat = xc
        xhat *= invstd.reshape(bshape)
        y = xhat * gamma.reshape(bshape)
        y += beta.reshape(bshape)
        y = self._residual_relu(y, relu, residual)
        self._update_running_stats(running, mean, var, m)
        return y, mean, var, (xhat, invstd, gamma, y if relu else None, residual is not None)

    @staticmethod
    def _update_running_stats(running, mean, var, m):
        """running = mom*batch + (1-mom)*running, with the unbiased batch variance."""
        if running is None:
            return
        run_mean, run_var, mom = running
        run_mean *= 1.0 - mom
        run_mean += mom * mean
        run_var *= 1.0 - mom
        run_var += (mom * m / (m - 1)) * var

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, relu=False, residual=None):
        c = x.shape[1]
        scale = gamma / self.xp.sqrt(running_var + eps)
        shift = beta - running_mean * scale
        y = x * scale.reshape(1, c, 1, 1) + shift.reshape(1, c, 1, 1)
        return self._residual_relu(y, relu, residual)

    def _residual_relu(self, y, relu, residual):
        if residual is not None:
            y += residual
        return self.relu_forward(y) if relu else y

    def batchnorm_backward(self, dy, cache):
        """Returns (dx, dgamma, dbeta, dresidual): dresidual is the gradient at the residual
        added in forward (None if none was)."""
        xp = self.xp
        xhat, invstd, gamma, relu_out, has_residual = cache
        if relu_out is not None:
            dy = self.relu_backward(dy, relu_out)
        c = dy.shape[1]
        m = dy.size // c
        bshape = (1, c, 1, 1)
        dbeta = dy.sum(axis=(0, 2, 3))
        dgamma = xp.einsum("nchw,nchw->c", dy, xhat)
        # dx = gamma*invstd/m * (m*dy - dbeta - xhat*dgamma), arranged to make few temporaries
        dx = xhat * (-dgamma / m).reshape(bshape)
        dx += dy
        dx -= (dbeta / m).reshape(bshape)
        dx *= (gamma * invstd).reshape(bshape)
        return dx, dgamma, dbeta, (dy if has_residual else None)

    def batchnorm_backward_into(self, dy, cache, wgrad, bgrad):
        """batchnorm_backward that adds dgamma and dbeta into the parameters' gradients and
        returns (dx, dresidual): what the layer calls, so a backend can add in its own kernel."""
        dx, dgamma, dbeta, dres = self.batchnorm_backward(dy, cache)
        wgrad += dgamma
        bgrad += dbeta
        return dx, dres

    def add_(self, a, b):
        """a += b in place (a residual block's two input gradients); returns a."""
        a += b
        return a

    # ------------------------------------------------------------------ activations
    def relu_forward(self, x):
        return self.xp.maximum(x, 0)

    def relu_backward(self, dy, y):
        return dy * (y > 0)   # 10x faster in NumPy than where() with a scalar

    # ------------------------------------------------------------------ pooling
    def _pool_views(self, xp_, k, stride, oh, ow):
        """The k*k strided views (N, C, OH, OW) of a padded input, one per window offset,
        in row-major window order."""
        return [xp_[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] for i in range(k) for j in range(k)]

    def maxpool2d_forward(self, x, k, stride, pad):
        """Max over k x k windows as k*k - 1 elementwise maxima of strided views. The index
        of the max (ties: the first offset in row-major window order, as in PyTorch) is
        built with elementwise uint8 arithmetic, which is ~5x faster in NumPy than masked
        assignment. Returns (y, cache)."""
        xp = self.xp
        n, c, h, w = x.shape
        oh = self.conv_output_size(h, k, stride, pad)
        ow = self.conv_output_size(w, k, stride, pad)
        if pad:
            x = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-xp.inf)
        views = self._pool_views(x, k, stride, oh, ow)
        y = xp.maximum(views[0], views[1]) if len(views) > 1 else views[0].copy()
        for v in views[2:]:
            xp.maximum(y, v, out=y)
        idx_dtype = xp.uint8 if k * k <= 255 else xp.int32
        idx = xp.zeros(y.shape, dtype=idx_dtype)
        taken = views[0] == y
        for o, v in enumerate(views[1:], start=1):
            first = (v == y) & ~taken
            taken |= first
            idx += first * idx_dtype(o)
        return y, (idx, (n, c, h, w), k, stride, pad)

    def maxpool2d_backward(self, dy, cache):
        xp = self.xp
        idx, (n, c, h, w), k, stride, pad = cache
        oh, ow = dy.shape[2:]
        overlap = stride < k
        covered = not (overlap or pad) and h == k * oh and w == k * ow
        dxp = (xp.empty if covered else xp.zeros)((n, c, h + 2 * pad, w + 2 * pad), dtype=dy.dtype)
        for o, view in enumerate(self._pool_views(dxp, k, stride, oh, ow)):
            if overlap:
                view += dy * (idx == o)
            else:  # each input element lies in at most one window: write, don't accumulate
                xp.multiply(dy, idx == o, out=view)
        if pad:
            dxp = xp.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + w])
        return dxp

    def global_avgpool_forward(self, x):
        return x.mean(axis=(2, 3))

    def global_avgpool_backward(self, dy, x_shape):
        n, c, h, w = x_shape
        dx = self.xp.empty(x_shape, dtype=dy.dtype)
        dx[...] = (dy * (1.0 / (h * w))).reshape(n, c, 1, 1)
        return dx

    # ------------------------------------------------------------------ loss
    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0):
        """Mean cross-entropy over the batch. Returns (loss as a 0-d array, dlogits)."""
        xp = self.xp
        n, k = logits.shape
        z = logits - logits.max(axis=1, keepdims=True)
        lse = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        rows = xp.arange(n)
        nll = -logp[rows, labels]
        if label_smoothing:
            per = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
        else:
            per = nll
        loss = per.mean()
        grad = xp.exp(logp)
        if label_smoothing:
            grad -= label_smoothing / k
        grad[rows, labels] -= 1.0 - label_smoothing
        grad *= 1.0 / n
        return loss, grad

    # ------------------------------------------------------------------ parameter storage
    # The optimizer hands each parameter group here once. A backend may move the group into
    # one flat buffer (p.data and p.grad become views) so that updates and zeroing take one
    # launch per group; the reference keeps one array per parameter.
    def pack_parameters(self, params):
        """Optionally re-home a group's Parameters' data and grad arrays (in place)."""

    def params_changed(self):
        """Parameters were overwritten from outside the optimizer (load_state_dict): a backend
        that keeps derived copies (the fp16 mode's half weights) refreshes them."""

    def flat_grads(self, params):
        """What a data-parallel step all-reduces for a group: its one flat gradient buffer
        where pack_parameters made one, else each parameter's gradient (the reference)."""
        return [p.grad for p in params]

    def grads_ready_on(self, stream):
        """Make `stream` (a collective's) wait for gradient work queued beside the caller's
        stream; the reference runs everything in order, so nothing to wait for."""

    def zeros_like_params(self, arrays):
        """Zeroed optimizer state shaped like `arrays` (one per parameter of a group)."""
        return [self.xp.zeros_like(a) for a in arrays]

    def zero_(self, arrays):
        for a in arrays:
            a.fill(0)

    def set_hyper(self, key, values):
        """Where an update reads step-dependent scalars from device memory, write them there
        (a GPU backend; see cuda_graph.py). The reference passes them as arguments."""

    # ------------------------------------------------------------------ optimizer updates
    # Each takes whole lists so a backend can fuse all parameters into few launches.
    def sgd_update(self, params, grads, bufs, *, lr, momentum, dampening, nesterov, weight_decay, first_step,
                   hyper_key=None):
        """In-place SGD as torch.optim.SGD (weight decay added to the gradient)."""
        for p, g, buf in zip(params, grads, bufs):
            d = g + weight_decay * p if weight_decay else g
            if momentum:
                if first_step:
                    buf[...] = d
                else:
                    buf *= momentum
                    buf += (1.0 - dampening) * d
                d = d + momentum * buf if nesterov else buf
            p -= lr * d

    def adam_update(self, params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                    weight_decay, decoupled, hyper_key=None):
        """In-place Adam (decoupled=False, L2 added to the gradient) or AdamW, as torch.optim."""
        xp = self.xp
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
            if weight_decay and decoupled:
                p *= 1.0 - lr * weight_decay
            elif weight_decay:
                g = g + weight_decay * p
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * g * g
            denom = xp.sqrt(v)
            denom /= bc2_sqrt
            denom += eps
            p -= (lr / bc1) * (m / denom)
