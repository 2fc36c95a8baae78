"""scratch_nn and torch_impl compute the same function: one state dict loaded on both sides
gives the same logits, gradients, BN statistics and parameters after optimizer steps."""
import numpy as np
import pytest

from scratch_nn import backends, losses, models, optim

from tests.helpers import rel_err

torch = pytest.importorskip("torch")
import torch_impl  # noqa: E402

# (logits, gradients) relative tolerances per dtype, from the foundation issue.
TOL = {"float32": (1e-4, 1e-3), "float64": (1e-10, 1e-8)}
BATCH = {"cnn": 8, "resnet18": 4}
# float32 gradients of a ReLU net are only as well defined as the input keeps every
# pre-activation away from the kink: a unit within float32 rounding of zero (~1e-6 of its
# layer's RMS) flips its mask in one implementation and not another, which moves a small
# batch's input gradient by 1e-4 to 1e-2 (seen on every implementation, torch included, in a
# scan of 60 seeds). The batches below are ones where no implementation flips a unit:
# test_batches_are_clear_of_relu_kinks checks that, per backend, by comparing float32 with
# float64 gradients (1e-6 apart without a flip). A new backend that flips one here needs a
# new seed that no implementation flips on.
DATA_SEED = {"cnn": 0, "resnet18": 12}
NO_FLIP = 1e-4


@pytest.fixture(autouse=True)
def torch_threads():
    """torch's float32 rounding on the CPU depends on how many threads split its reductions, and
    the float32 bounds below compare against one such rounding: pin it, whatever an earlier
    test in this process left (experiments.run --threads N sets it process-wide). Two threads
    is what the bounds were set with, on the 2-core CI machine; on one thread torch's float32
    resnet18 happens to land nearer its float64 run and the relative bound fails."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def make_pair(be, name, dtype, seed=0):
    net = models.build(name, backend=be, seed=seed, dtype=dtype)
    tnet = torch_impl.models.build(name, dtype=getattr(torch, dtype))
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return net, tnet


def batch(name, dtype, seed=None):
    r = np.random.default_rng(DATA_SEED[name] if seed is None else seed)
    x = r.standard_normal((BATCH[name], 3, 32, 32)).astype(dtype)
    y = r.integers(0, 10, BATCH[name])
    return x, y


def scratch_step(be, net, x, y):
    xb = be.asarray(x)
    logits = net.forward(xb)
    loss, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be)
    dx = net.backward(d)
    return be.to_host(logits), float(loss), be.to_host(dx)


def torch_step(tnet, x, y):
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = tnet(xt)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    return logits.detach().numpy(), float(loss.detach()), xt.grad.numpy()


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_batches_are_clear_of_relu_kinks(be, name):
    grads = {}
    for dtype in ("float32", "float64"):
        net, tnet = make_pair(be, name, dtype)
        x, y = batch(name, dtype)
        net.train()
        tnet.train()
        grads[dtype] = scratch_step(be, net, x, y)[2], torch_step(tnet, x, y)[2]
    assert rel_err(grads["float32"][0], grads["float64"][0]) < NO_FLIP, f"{be.name} flips a ReLU mask on this batch"
    assert rel_err(grads["float32"][1], grads["float64"][1]) < NO_FLIP, "torch flips a ReLU mask on this batch"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_forward_backward_match(be, name, dtype):
    tol_out, tol_grad = TOL[dtype]
    net, tnet = make_pair(be, name, dtype)
    x, y = batch(name, dtype)

    # train mode: logits, loss, input gradient, every parameter gradient, BN statistics
    net.train(); tnet.train()
    net.zero_grad(); tnet.zero_grad()
    logits, loss, dx = scratch_step(be, net, x, y)
    tlogits, tloss, tdx = torch_step(tnet, x, y)
    assert rel_err(logits, tlogits) < tol_out
    assert abs(loss - tloss) / abs(tloss) < tol_out
    assert rel_err(dx, tdx) < tol_grad
    tparams = dict(tnet.named_parameters())
    for k, p in net.named_parameters():
        assert rel_err(be.to_host(p.grad), tparams[k].grad.numpy()) < tol_grad, k
    tsd = tnet.state_dict()
    for k, v in net.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert rel_err(v, tsd[k].numpy()) < tol_out, k

    # eval mode uses the (now updated) running statistics
    net.eval(); tnet.eval()
    with torch.no_grad():
        tlogits = tnet(torch.from_numpy(x)).numpy()
    assert rel_err(be.to_host(net.forward(be.asarray(x))), tlogits) < tol_out


def make_optimizers(kind, net, tnet):
    if kind == "sgd":
        hp = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        return optim.SGD(net.parameters(), **hp), torch.optim.SGD(tnet.parameters(), **hp)
    if kind == "adam":
        hp = dict(lr=1e-3, weight_decay=5e-4)
        return optim.Adam(net.parameters(), **hp), torch.optim.Adam(tnet.parameters(), **hp)
    hp = dict(lr=1e-3, weight_decay=1e-2)
    return optim.AdamW(net.parameters(), **hp), torch.optim.AdamW(tnet.parameters(), **hp)


def five_steps(be, name, kind, dtype, with_torch64=False):
    """Five optimizer steps on the same five batches on both sides (and, optionally, on a
    float64 torch twin: the float32 noise floor). Returns the state dicts after them."""
    net, tnet = make_pair(be, name, dtype)
    before = net.state_dict()
    opt, topt = make_optimizers(kind, net, tnet)
    runs = [(net, opt, True), (tnet, topt, False)]
    if with_torch64:
        t64 = torch_impl.models.build(name, dtype=torch.float64)
        t64.load_state_dict(tnet.state_dict())
        runs.append((t64, make_optimizers(kind, net, t64)[1], False))
    for step in range(5):
        x, y = batch(name, dtype, seed=100 + step)
        for model, o, scratch in runs:
            o.zero_grad()
            if scratch:
                scratch_step(be, model, x, y)
            else:
                torch_step(model, x.astype(np.float64) if model is not tnet else x, y)
            o.step()
    return before, net.state_dict(), [{k: v.numpy() for k, v in m.state_dict().items()} for m, _, s in runs[1:]]


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_five_steps_float64(be, name, kind):
    before, after, (tsd,) = five_steps(be, name, kind, "float64")
    for k, v in after.items():
        assert rel_err(v, tsd[k]) < 1e-8, k
        assert "num_batches" in k or not np.array_equal(v, before[k]), f"{k} did not move"


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_five_steps_float32(be, name, kind):
    """Every entry within 1e-3 of torch's, except where float32 itself cannot say that much:
    five steps of a ResNet on batches of four amplify rounding (ReLU masks that flip at the
    kink, near-cancelling BN-bias gradients), and torch's own float32 run then lies 1e-3..1e-1
    from its float64 run on many tensors. There the scratch run must be no further from torch
    float32 than twice that floor; float64 (test above) shows the arithmetic is the same."""
    _, after, (tsd, t64) = five_steps(be, name, kind, "float32", with_torch64=True)
    relaxed = []
    for k, v in after.items():
        floor = rel_err(tsd[k], t64[k])
        err = rel_err(v, tsd[k])
        if floor < 1e-3 / 2:
            assert err < 1e-3, (k, err)
        else:
            relaxed.append(k)
            assert err < 2 * floor, (k, err, floor)
    if name == "cnn":
        assert not relaxed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_winograd_4x4_mode_follows_torch(dtype):
    """The numba backend's opt-in F(4x4, 3x3) mode on every ResNet-18 3x3 stride-1 layer: five
    SGD steps as torch's in float64 (1e-8), and in float32 within test_five_steps_float32's
    bounds. (Its float32 forward is not held to test_forward_backward_match's 1e-5-scale bounds:
    F(4x4) rounds about 20x coarser, why it is not the default; numba_backend.py.)"""
    be = backends.get("numba", winograd="4x4")
    assert be.winograd_tile(np.zeros((64, 64, 3, 3)), (4, 64, 32, 32), 1, 1) == 4
    _, after, runs = five_steps(be, "resnet18", "sgd", dtype, with_torch64=dtype == "float32")
    tsd = runs[0]
    for k, v in after.items():
        if dtype == "float64":
            assert rel_err(v, tsd[k]) < 1e-8, k
        else:
            floor = rel_err(tsd[k], runs[1][k])
            assert rel_err(v, tsd[k]) < max(1e-3, 2 * floor), k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_fused_winograd_follows_torch(dtype, monkeypatch):
    """numba's fused F(2x2) (layer1 and layer2 of ResNet-18) runs at the parity batch of four
    only where every thread may take few slices, as 16 threads at batch 64 do not: forced here,
    the same forward and backward bounds as every backend, and five SGD steps as torch's."""
    from scratch_nn.backends import numba_backend as NB

    if "numba" not in backends.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(NB, "FUSED_MIN_SLICES_PER_THREAD", 0)
    be = backends.get("numba")
    if be._fused_step(2, BATCH["resnet18"], 64, 64, 32, 32, np.dtype(dtype)) == 0:
        pytest.skip("no CBLAS callable from numba's threads here: nothing runs fused")
    test_forward_backward_match(be, "resnet18", dtype)
    assert "fused" in be.conv_algorithms()["64->64 3x3 stride 1 pad 1 on 32x32"]
    if dtype == "float64":
        test_five_steps_float64(be, "resnet18", "sgd")
    else:
        test_five_steps_float32(be, "resnet18", "sgd")
