"""Optimizer update rules against torch.optim on identical gradients (no model in between),
and the learning-rate schedules."""
import math

import numpy as np
import pytest

from scratch_nn import layers, optim

from tests.helpers import rel_err

torch = pytest.importorskip("torch")

SHAPES = [(16, 8, 3, 3), (16,), (10, 32)]


def twin_params(be, seed=0):
    r = np.random.default_rng(seed)
    host = [r.standard_normal(s) for s in SHAPES]
    ps = [layers.Parameter(be.asarray(h.copy()), be) for h in host]
    ts = [torch.tensor(h, requires_grad=True) for h in host]
    return ps, ts


CASES = {
    "sgd": (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    "sgd-momentum-wd": (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4)),
    "sgd-nesterov": (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    "sgd-dampening": (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5)),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=1e-2)),
    "adam-wd": (optim.Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_rule_matches_torch(be, case):
    ours, theirs, hp = CASES[case]
    ps, ts = twin_params(be)
    opt, topt = ours(ps, **hp), theirs(ts, **hp)
    r = np.random.default_rng(1)
    for _ in range(7):
        grads = [r.standard_normal(s) for s in SHAPES]
        for p, t, g in zip(ps, ts, grads):
            p.grad[...] = be.asarray(g)
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ps, ts):
        assert rel_err(be.to_host(p.data), t.detach().numpy()) < 1e-12


def test_param_groups_override_weight_decay(be):
    ps, ts = twin_params(be)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt = optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}], **hp)
    topt = torch.optim.SGD([{"params": ts[:1]}, {"params": ts[1:], "weight_decay": 0.0}], **hp)
    for p, t in zip(ps, ts):
        p.grad.fill(1.0)
        t.grad = torch.ones_like(t)
    opt.step(); topt.step()
    for p, t in zip(ps, ts):
        assert rel_err(be.to_host(p.data), t.detach().numpy()) < 1e-12


def test_optimizer_state_round_trip(be):
    ps, _ = twin_params(be)
    opt = optim.Adam(ps, lr=1e-2)
    for p in ps:
        p.grad.fill(0.5)
    opt.step()
    sd = opt.state_dict()
    ps2, _ = twin_params(be)
    opt2 = optim.Adam(ps2, lr=1e-2)
    opt2.load_state_dict(sd)
    for p, p2 in zip(ps, ps2):
        p2.data[...] = p.data
    for o, params in ((opt, ps), (opt2, ps2)):
        for p in params:
            p.grad.fill(-0.25)
        o.step()
    for p, p2 in zip(ps, ps2):
        np.testing.assert_array_equal(be.to_host(p.data), be.to_host(p2.data))


def test_bad_hyperparameters_are_refused(be):
    ps, _ = twin_params(be)
    with pytest.raises(ValueError):
        optim.SGD(ps, lr=-1)
    with pytest.raises(ValueError):
        optim.SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(TypeError):
        optim.SGD(ps, lr=0.1, betas=(0.9, 0.99))
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)


# ---------------------------------------------------------------------- schedules

def torch_lrs(sched_fn, steps, lr=0.1):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sched = sched_fn(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_matches_torch():
    s = optim.multi_step(0.1, [3, 7], gamma=0.5)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 7], gamma=0.5), 10)
    np.testing.assert_allclose([s(i) for i in range(10)], ref, rtol=1e-12)


def test_cosine_matches_torch():
    s = optim.cosine(0.1, 20, min_lr=0.001)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20, eta_min=0.001), 20)
    np.testing.assert_allclose([s(i) for i in range(20)], ref, rtol=1e-9)


def test_one_cycle_is_linear_up_then_down():
    s = optim.one_cycle(0.4, 100, pct_start=0.25)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert max(lrs) == pytest.approx(0.4) and int(np.argmax(lrs)) == 25
    assert np.all(np.diff(lrs[:26]) > 0) and np.all(np.diff(lrs[25:]) < 0)
    assert np.allclose(np.diff(lrs[:26]), np.diff(lrs[:26])[0])   # linear phases
    assert lrs[-1] == pytest.approx(0.4 / 25 / 1e4)


def test_warmup_then_schedule():
    s = optim.make_schedule("cosine", 0.1, 110, warmup_steps=10)
    assert s(0) == pytest.approx(0.01) and s(9) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1) and s(109) < 0.001
    assert optim.make_schedule("constant", 0.3, 10)(7) == 0.3
    with pytest.raises(ValueError):
        optim.make_schedule("exponential", 0.1, 10)


def test_set_lr_applies_to_every_group(be):
    ps, _ = twin_params(be)
    opt = optim.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1)
    opt.set_lr(0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02] and math.isclose(opt.lr, 0.02)
