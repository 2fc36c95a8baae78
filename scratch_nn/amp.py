"""Dynamic loss scaling for the fp16 mixed-precision mode, with torch.amp.GradScaler's rules.

Float16 gradients underflow below 6e-8, so the loss gradient is multiplied by a large scale
S before backward and the optimizer divides it out. When a gradient overflows (inf/NaN) the
step is skipped and S halves; after `growth_interval` good steps in a row S doubles.

    scaler = amp.GradScaler(be)
    loss, dlogits = losses.softmax_cross_entropy(logits, y, backend=be, scaler=scaler)
    net.backward(dlogits)
    scaler.step(opt)          # check, unscale + update (or skip), adjust S

Unlike torch's GradScaler, which reads found_inf on the host every step, the whole decision
lives in device memory (scale, found_inf, growth tracker) and is taken by the kernels: a step
never synchronises, and a captured CUDA graph replays it with the scale moving on.
One difference follows: a skipped step still advances the host's step counter (Adam's bias
correction, the schedule), where torch leaves the optimizer's counter where it was.
"""


class GradScaler:
    def __init__(self, backend, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        if not hasattr(backend, "amp_state"):
            raise ValueError(f"loss scaling runs on backend 'cupy' (precision fp16), not {backend.name!r}")
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("GradScaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
                             "growth_interval >= 1")
        self.be = backend
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = int(growth_interval)
        self.state = backend.amp_state(init_scale)   # [scale, found_inf, growth_tracker]

    @property
    def scale(self):
        """The current loss scale (a host read: a device sync)."""
        return float(self.be.to_host(self.state)[0])

    def step(self, optimizer):
        """Check every gradient for inf/NaN, then update (unscaling) or skip, then adjust the scale."""
        self.be.amp_check([[p.grad for p in g["params"]] for g in optimizer.param_groups], self.state)
        optimizer.step(amp_state=self.state)
        self.be.amp_update(self.state, self.growth_factor, self.backoff_factor, self.growth_interval)

    def state_dict(self):
        s = self.be.to_host(self.state)
        return {"scale": float(s[0]), "growth_tracker": int(s[2])}

    def load_state_dict(self, sd):
        import numpy as np

        self.state[...] = self.be.asarray(np.array([sd["scale"], 0.0, sd["growth_tracker"]], np.float32))
