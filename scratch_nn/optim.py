"""Optimizers (SGD, Adam, AdamW) with torch.optim's update rules, and learning-rate schedules.

Optimizers take parameters or torch-style parameter groups (a list of dicts with "params"
and per-group overrides such as weight_decay), and run the update kernels of the backend that
owns the parameters. Schedules are plain functions of the step, shared by both
implementations so that scratch and torch runs see the same learning rate at every step.
"""
import math


class Optimizer:
    defaults = {}

    def __init__(self, params, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown options {sorted(unknown)}")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            group = dict(self.defaults, **hyper)
            group.update(g)
            group["params"] = list(group["params"])
            self._validate(group)
            self.param_groups.append(group)
        self.backend = self.param_groups[0]["params"][0].backend
        for g in self.param_groups:   # a GPU backend moves each group into one flat buffer
            self.backend.pack_parameters(g["params"])
        self.state = {}          # id(param) -> dict of state arrays
        self.step_count = 0

    def _validate(self, group):
        if group["lr"] < 0:
            raise ValueError("learning rate must be >= 0")
        if group.get("weight_decay", 0.0) < 0:
            raise ValueError("weight_decay must be >= 0")

    @property
    def lr(self):
        return self.param_groups[0]["lr"]

    def set_lr(self, lr):
        for g in self.param_groups:
            g["lr"] = lr

    def zero_grad(self):
        for g in self.param_groups:
            self.backend.zero_([p.grad for p in g["params"]])

    def _group_state(self, g, name):
        """State `name` of every parameter of group g, allocated for the whole group at once
        (one flat buffer on a GPU backend)."""
        ps = g["params"]
        if name not in self.state.get(id(ps[0]), {}):
            for p, arr in zip(ps, self.backend.zeros_like_params([p.data for p in ps])):
                self.state.setdefault(id(p), {})[name] = arr
        return [self.state[id(p)][name] for p in ps]

    def step(self, amp_state=None):
        """One update of every group. amp_state (from amp.GradScaler.step) makes the update
        kernels unscale the gradients, or skip when they overflowed."""
        self.step_count += 1
        extra = {} if amp_state is None else {"amp_state": amp_state}
        for i, g in enumerate(self.param_groups):
            self._update(g, (type(self).__name__, i), extra)

    def push_hyper(self):
        """Write the next step's learning rate (and bias corrections) where a device-side update
        reads them: what a replayed CUDA graph needs before each replay, since the Python update
        code does not run then. Call it after step_count has been advanced."""
        for i, g in enumerate(self.param_groups):
            self.backend.set_hyper((type(self).__name__, i), self._hyper(g))

    # --- checkpoints: state arrays in parameter order, on the host
    def state_dict(self):
        be = self.backend
        flat = [p for g in self.param_groups for p in g["params"]]
        return {"step_count": self.step_count,
                "lr": [g["lr"] for g in self.param_groups],
                "state": [{k: be.to_host(v).copy() for k, v in self.state.get(id(p), {}).items()} for p in flat]}

    def load_state_dict(self, sd):
        flat = [p for g in self.param_groups for p in g["params"]]
        if len(sd["state"]) != len(flat):
            raise ValueError("optimizer state does not match the parameter list")
        self.step_count = sd["step_count"]
        for g, lr in zip(self.param_groups, sd["lr"]):
            g["lr"] = lr
        self.state = {}
        by_param = dict(zip(map(id, flat), sd["state"]))
        for g in self.param_groups:   # state is allocated group by group, as step() does
            for name in by_param[id(g["params"][0])]:
                for p, arr in zip(g["params"], self._group_state(g, name)):
                    arr[...] = self.backend.asarray(by_param[id(p)][name])


class SGD(Optimizer):
    """torch.optim.SGD: d = g + wd*p; buf = momentum*buf + (1-dampening)*d (buf = d at the
    first step); d = d + momentum*buf if nesterov else buf; p -= lr*d."""
    defaults = dict(lr=0.01, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError("momentum must be >= 0")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening 0")

    def _hyper(self, g):
        return (g["lr"],)

    def _update(self, g, key, extra):
        ps = g["params"]
        bufs = self._group_state(g, "momentum_buffer") if g["momentum"] else [None] * len(ps)
        self.backend.sgd_update([p.data for p in ps], [p.grad for p in ps], bufs,
                                lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"],
                                nesterov=g["nesterov"], weight_decay=g["weight_decay"],
                                first_step=self.step_count == 1, hyper_key=key, **extra)


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient)."""
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    decoupled = False

    def _hyper(self, g):
        b1, b2 = g["betas"]
        return g["lr"], 1.0 - b1 ** self.step_count, math.sqrt(1.0 - b2 ** self.step_count)

    def _update(self, g, key, extra):
        ps = g["params"]
        self.backend.adam_update([p.data for p in ps], [p.grad for p in ps],
                                 self._group_state(g, "exp_avg"), self._group_state(g, "exp_avg_sq"),
                                 step=self.step_count, lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                                 eps=g["eps"], weight_decay=g["weight_decay"], decoupled=self.decoupled,
                                 hyper_key=key, **extra)


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay, p *= 1 - lr*wd before the Adam step."""
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    decoupled = True


# ---------------------------------------------------------------------- schedules
# A schedule maps a 0-based step index to a learning rate.

def constant(base_lr):
    return lambda step: base_lr


def multi_step(base_lr, milestones, gamma=0.1):
    """lr * gamma**k after k milestones (in steps) have passed, as torch's MultiStepLR."""
    ms = sorted(milestones)
    return lambda step: base_lr * gamma ** sum(step >= m for m in ms)


def cosine(base_lr, total_steps, min_lr=0.0):
    """Cosine decay from base_lr to min_lr over total_steps, as CosineAnnealingLR."""
    total = max(1, total_steps)
    return lambda step: min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def linear_warmup(schedule, warmup_steps, start_factor=0.0):
    """Ramp linearly from start_factor*lr to the wrapped schedule over warmup_steps."""
    def lr(step):
        if step < warmup_steps:
            f = start_factor + (1.0 - start_factor) * (step + 1) / warmup_steps
            return schedule(step) * f
        return schedule(step)
    return lr


def one_cycle(max_lr, total_steps, pct_start=0.25, div_factor=25.0, final_div_factor=1e4):
    """Linear warm-up from max_lr/div_factor to max_lr over pct_start of the run, then linear
    decay to max_lr/(div_factor*final_div_factor) (one-cycle with linear phases)."""
    total = max(2, total_steps)
    peak = max(1, int(round(pct_start * total)))
    start, end = max_lr / div_factor, max_lr / (div_factor * final_div_factor)

    def lr(step):
        step = min(step, total - 1)
        if step < peak:
            return start + (max_lr - start) * step / peak
        return max_lr + (end - max_lr) * (step - peak) / max(1, total - 1 - peak)
    return lr


SCHEDULES = ("constant", "multistep", "cosine", "onecycle")


def make_schedule(name, base_lr, total_steps, warmup_steps=0, milestones=(0.5, 0.75), gamma=0.1):
    """Build a schedule by name. Multi-step milestones are fractions of the run."""
    if name == "constant":
        s = constant(base_lr)
    elif name == "multistep":
        s = multi_step(base_lr, [int(f * total_steps) for f in milestones], gamma)
    elif name == "cosine":
        s = cosine(base_lr, total_steps - warmup_steps)
        if warmup_steps:
            inner = s
            s = lambda step: inner(max(0, step - warmup_steps))  # noqa: E731
    elif name == "onecycle":
        return one_cycle(base_lr, total_steps)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return linear_warmup(s, warmup_steps) if warmup_steps else s
