"""The cupy backend against torch on the same GPU, and its GPU-only features (precision modes,
CUDA graphs, flat parameter arenas). Skipped where no GPU is visible; the shared correctness
suite (gradcheck, torch parity on the CPU, models) also runs on cupy there, via conftest's
`be` fixture.

Run on a GPU machine with: python -m pytest -q tests/gpu (and SCRATCH_NN_SM75=1 for the
T4's code paths and refusals: the sm_75 kernel variants, no tf32 or bf16)
"""
import numpy as np
import pytest

from scratch_nn import backends, losses, models, optim

from tests.helpers import rel_err

try:
    GPU = backends.get("cupy")
except backends.BackendUnavailable as e:
    pytest.skip(f"no GPU backend here: {e}", allow_module_level=True)

torch = pytest.importorskip("torch")
import torch_impl  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA GPU", allow_module_level=True)

from experiments.train.adapters import OptimSpec, make_adapter, set_torch_cuda_precision  # noqa: E402

BATCH = {"cnn": 16, "resnet18": 8}


def pair(name, dtype="float32", precision="fp32", seed=0):
    be = backends.get("cupy", precision=precision)
    net = models.build(name, backend=be, seed=seed, dtype=dtype)
    set_torch_cuda_precision(precision)
    tnet = torch_impl.models.build(name, dtype=getattr(torch, dtype))
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return be, net, tnet.cuda()


def data(name, seed, dtype="float32", n=None):
    n = n or BATCH[name]
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 3, 32, 32)).astype(dtype), r.integers(0, 10, n)


def step_both(be, net, tnet, x, y):
    logits = net.forward(be.asarray(x))
    loss, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be)
    net.backward(d, input_grad=False)
    tl = tnet(torch.from_numpy(x).cuda())
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(y).cuda())
    tloss.backward()
    return be.to_host(logits), float(loss), tl.detach().cpu().numpy(), float(tloss)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_fp32_matches_torch_cuda(name):
    """Strict fp32 on both sides: logits within 1e-4, every gradient within 1e-3 relative."""
    be, net, tnet = pair(name)
    net.train(); tnet.train()
    x, y = data(name, seed=3)
    logits, loss, tlogits, tloss = step_both(be, net, tnet, x, y)
    assert rel_err(logits, tlogits) < 1e-4
    assert abs(loss - tloss) < 1e-4 * abs(tloss)
    tp = dict(tnet.named_parameters())
    for k, p in net.named_parameters():
        assert rel_err(be.to_host(p.grad), tp[k].grad.cpu().numpy()) < 1e-3, k
    tsd = tnet.state_dict()
    for k, v in net.state_dict().items():
        assert rel_err(v, tsd[k].cpu().numpy()) < 1e-5, k     # running statistics, counters
    net.eval(); tnet.eval()
    with torch.no_grad():
        te = tnet(torch.from_numpy(x).cuda()).cpu().numpy()
    assert rel_err(be.to_host(net.forward(be.asarray(x))), te) < 1e-4


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_parameters_after_steps_match_torch_cuda(name, kind):
    """Four optimizer steps on both sides. Where float32 itself cannot say 1e-3 (small-batch
    ResNet steps amplify rounding; see test_torch_parity.test_five_steps_float32), the scratch
    run must be no further from torch than twice torch's own float32-to-float64 distance."""
    be, net, tnet = pair(name)
    t64 = torch_impl.models.build(name, dtype=torch.float64).cuda()
    t64.load_state_dict(tnet.state_dict())
    if kind == "sgd":
        hp = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        make = lambda ps: torch.optim.SGD(ps, **hp)  # noqa: E731
        opt = optim.SGD(net.parameters(), **hp)
    else:
        hp = dict(lr=1e-3, weight_decay=1e-2)
        make = lambda ps: torch.optim.AdamW(ps, **hp)  # noqa: E731
        opt = optim.AdamW(net.parameters(), **hp)
    topt, t64opt = make(tnet.parameters()), make(t64.parameters())
    before = net.state_dict()
    for s in range(4):
        x, y = data(name, seed=10 + s, n=32)   # batches of 32: small ones make 4 steps chaotic
        opt.zero_grad(); topt.zero_grad(); t64opt.zero_grad()
        step_both(be, net, tnet, x, y)
        torch.nn.functional.cross_entropy(t64(torch.from_numpy(x).double().cuda()),
                                          torch.from_numpy(y).cuda()).backward()
        opt.step(); topt.step(); t64opt.step()
    tsd, t64sd = tnet.state_dict(), t64.state_dict()
    for k, v in net.state_dict().items():
        ref = tsd[k].cpu().numpy()
        floor = rel_err(ref, t64sd[k].cpu().numpy())
        err = rel_err(v, ref)
        assert err < max(1e-3, 2 * floor), (k, err, floor)
        assert "num_batches" in k or not np.array_equal(v, before[k]), f"{k} did not move"


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_float64_matches_numpy_reference(name):
    """The GPU kernels compute the reference's function: float64 on both, 1e-10 apart."""
    gpu = backends.get("cupy")
    ref = backends.get("numpy")
    x, y = data(name, seed=5, dtype="float64")
    outs = []
    for be in (gpu, ref):
        net = models.build(name, backend=be, seed=1, dtype="float64")
        logits = net.forward(be.asarray(x))
        loss, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be)
        dx = net.backward(d)
        outs.append([be.to_host(logits), float(loss), be.to_host(dx)]
                    + [be.to_host(p.grad) for _, p in net.named_parameters()])
    for a, b in zip(*outs):
        assert rel_err(a, b) < 1e-10


def test_tf32_matches_torch_tf32():
    """TF32 GEMMs round operands to 10 mantissa bits: logits agree with torch's TF32 run to
    about 1e-3 (each side is ~3e-4 from fp32)."""
    be = backends.get("cupy")
    major = int(be.describe()["compute_capability"].split(".")[0])
    if major < 8:
        with pytest.raises(backends.BackendUnavailable, match="tf32"):
            backends.get("cupy", precision="tf32")
        return
    be, net, tnet = pair("resnet18", precision="tf32")
    net.train(); tnet.train()
    x, y = data("resnet18", seed=3)
    logits, _, tlogits, _ = step_both(be, net, tnet, x, y)
    assert rel_err(logits, tlogits) < 1e-2
    set_torch_cuda_precision("fp32")


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_tf32_is_as_close_to_fp32_as_torch_tf32(name):
    """One tf32 step (channels-last implicit GEMM on an H100 / H200, fp32 activations, tf32
    products): scratch's logits and gradients are no further from torch fp32 than three times
    torch tf32's (cuDNN's and cuBLAS's tf32) own distance from it."""
    be = backends.get("cupy")
    major, minor = map(int, be.describe()["compute_capability"].split("."))
    if major < 8:
        pytest.skip("tf32 needs compute capability 8.0+")
    be = backends.get("cupy", precision="tf32")
    assert be.layout == ("nhwc" if (major, minor) == (9, 0) else "cnhw")
    net = models.build(name, backend=be, seed=0)
    sd = {k: torch.from_numpy(v) for k, v in net.state_dict().items()}
    tnets = {}
    for prec in ("fp32", "tf32"):
        set_torch_cuda_precision(prec)
        t = torch_impl.models.build(name).cuda().to(memory_format=torch.channels_last)
        t.load_state_dict(sd)
        x, y = data(name, seed=3, n=32)
        logits = t(torch.from_numpy(x).cuda())
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).cuda()).backward()
        tnets[prec] = (t, logits.detach().cpu().numpy())
    set_torch_cuda_precision("fp32")
    logits = net.forward(be.asarray(x))
    _, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be)
    net.backward(d, input_grad=False)
    ref, t32 = tnets["fp32"][1], tnets["tf32"][1]
    e_s, e_t = rel_err(be.to_host(logits), ref), rel_err(t32, ref)
    print(f"{name} logits: scratch tf32 {e_s:.2e}, torch tf32 {e_t:.2e} from fp32")
    assert e_s < 3 * e_t + 1e-5
    g32, gtf = dict(tnets["fp32"][0].named_parameters()), dict(tnets["tf32"][0].named_parameters())
    for k, p in net.named_parameters():
        r = g32[k].grad.cpu().numpy()
        e_s, e_t = rel_err(be.to_host(p.grad), r), rel_err(gtf[k].grad.cpu().numpy(), r)
        assert e_s < 3 * e_t + 1e-5, (k, e_s, e_t)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_cuda_graph_replays_the_eager_step(name):
    """Captured and replayed steps give the same parameters as eager steps, with a learning
    rate that changes every step (read from device memory by the replayed update)."""
    spec = OptimSpec("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    runs = []
    for graph in (False, True):
        ad = make_adapter("scratch", model=name, backend="cupy", optimizer=spec, seed=0, cuda_graph=graph)
        losses_seen = []
        for s in range(6):
            ad.set_lr(0.05 * (1 - s / 10))
            x, y = data(name, seed=20 + s)
            losses_seen.append(float(ad.train_step(*ad.to_device(x, y))))
        runs.append((ad.state_dict(), losses_seen))
    (eager, l_eager), (graphed, l_graph) = runs
    assert np.allclose(l_eager, l_graph, rtol=1e-5)
    for k in eager:
        assert rel_err(graphed[k], eager[k]) < 1e-5, k
    if name == "resnet18":
        assert int(graphed["bn1.num_batches_tracked"]) == 6


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_arrays_come_from_cudas_stream_ordered_pool_where_asked_and_captures_need_cupys(precision):
    """allocator='async' installs CUDA's stream-ordered pool and says so; a CUDA-graph capture
    refuses such a backend and names the fix; allocator='pool' (what --cuda-graph builds)
    allocates from CuPy's pool; the pools' held bytes count both."""
    import cupy

    from scratch_nn.backends import gpu_allocator
    from scratch_nn.cuda_graph import CapturedStep

    be = backends.get("cupy", precision=precision, allocator="async")
    assert be.allocator == "async" and be.describe()["allocator"] == "async"
    assert backends.get("cupy", precision=precision, allocator="auto").allocator == "async"   # these GPUs have it
    before = gpu_allocator.held_bytes(cupy)
    big = be.xp.empty(64 << 20, dtype=np.uint8)
    assert isinstance(big.data.mem, cupy.cuda.memory.MemoryAsync)
    assert gpu_allocator.held_bytes(cupy) >= before + (64 << 20) or before >= 64 << 20
    net = models.build("cnn", backend=be, seed=0)
    opt = optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="allocator='pool'"):
        CapturedStep(be, net, opt, lambda x, y: None)
    pooled = backends.get("cupy", precision=precision, allocator="pool")
    assert pooled.allocator == "pool"
    assert not isinstance(pooled.xp.empty(1024, dtype=np.uint8).data.mem, cupy.cuda.memory.MemoryAsync)
    with pytest.raises(ValueError, match="not one of: auto, async, pool"):
        backends.get("cupy", precision=precision, allocator="cudaMalloc")
    backends.get("cupy")            # the suite's other tests: the default again


def test_parameters_live_in_one_arena_per_group():
    be = backends.get("cupy")
    net = models.build("resnet18", backend=be, seed=0)
    sd = net.state_dict()
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ps = net.parameters()
    assert be._flat([p.data for p in ps]) is not None
    assert be._flat([p.grad for p in ps]) is not None
    for k, v in net.state_dict().items():        # packing moved the values, not changed them
        assert np.array_equal(v, sd[k]), k
    opt.step()
    assert be._flat(opt._group_state(opt.param_groups[0], "momentum_buffer")) is not None


def test_cublas_enums_match_cupys():
    from cupy_backends.cuda.libs import cublas
    from cupy.cuda import runtime

    from scratch_nn.backends import cublas_gemm as g

    assert (g.OP_N, g.OP_T) == (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T)
    assert g.COMPUTE_32F == cublas.CUBLAS_COMPUTE_32F
    assert g.COMPUTE_32F_FAST_TF32 == cublas.CUBLAS_COMPUTE_32F_FAST_TF32
    assert g.COMPUTE_64F == cublas.CUBLAS_COMPUTE_64F
    assert g.CUDA_R[np.dtype(np.float32)] == runtime.CUDA_R_32F
    assert g.CUDA_R[np.dtype(np.float16)] == runtime.CUDA_R_16F


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_layouts_and_accumulate(dtype):
    """Every operand layout the layers use (C-contiguous and transposed views), against numpy
    in float64; accumulate adds into the output."""
    be = backends.get("cupy")
    r = np.random.default_rng(0)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for m, k, n in [(7, 5, 3), (64, 576, 300), (1, 9, 4)]:
        a = r.standard_normal((m, k)).astype(dtype)
        b = r.standard_normal((k, n)).astype(dtype)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for ga in (be.asarray(a), be.asarray(np.ascontiguousarray(a.T)).T):
            for gb in (be.asarray(b), be.asarray(np.ascontiguousarray(b.T)).T):
                assert rel_err(be.to_host(be.gemm(ga, gb)), ref) < tol
        out = be.asarray(np.ones((m, n), dtype))
        be.gemm(be.asarray(a), be.asarray(b), out=out, accumulate=True)
        assert rel_err(be.to_host(out), ref + 1) < tol


def test_precision_modes_are_checked():
    with pytest.raises(ValueError, match="precision"):
        backends.get("cupy", precision="fp8")
    with pytest.raises(ValueError, match="GPU mode"):
        make_adapter("scratch", model="cnn", backend="numpy", precision="tf32")


# ---------------------------------------------------------------------- fp16 / bf16 mixed precision
HALVES = ["fp16", "bf16"]
TORCH_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _half_backend(precision):
    try:
        return backends.get("cupy", precision=precision)
    except backends.BackendUnavailable as e:     # bf16 below compute capability 8.0, or no ml_dtypes
        pytest.skip(str(e))


def _autocast_pair(name, seed=0, precision="fp16"):
    """scratch fp16 / bf16, and torch fp32 plus an identical torch copy run under autocast."""
    be = _half_backend(precision)
    net = models.build(name, backend=be, seed=seed)
    set_torch_cuda_precision("fp32")
    sd = {k: torch.from_numpy(v) for k, v in net.state_dict().items()}
    t32, t16 = (torch_impl.models.build(name).cuda() for _ in range(2))
    t32.load_state_dict(sd)
    t16.load_state_dict(sd)
    return be, net, t32, t16


def _torch_step(tnet, x, y, amp, scale, dtype=torch.float16):
    with torch.autocast("cuda", dtype=dtype, enabled=amp):
        logits = tnet(torch.from_numpy(x).cuda())
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).cuda())
    (loss * scale).backward()
    return logits.float().detach().cpu().numpy()


@pytest.mark.parametrize("precision", HALVES)
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_half_is_as_close_to_fp32_as_torch_autocast(name, precision):
    """One step in fp16 / bf16 mixed precision (the channels-last tensor-core path): scratch's
    logits and (unscaled) gradients are no further from torch fp32 than three times torch
    autocast's own distance from it."""
    from scratch_nn import amp

    be, net, t32, t16 = _autocast_pair(name, precision=precision)
    scale = 1024.0 if precision == "fp16" else 1.0
    scaler = amp.GradScaler(be, init_scale=scale) if precision == "fp16" else None
    x, y = data(name, seed=3, n=32)
    logits = net.forward(be.asarray(x))
    assert logits.dtype == be.half and be.layout == "nhwc"
    _, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be, scaler=scaler)
    net.backward(d, input_grad=False)
    ref = _torch_step(t32, x, y, False, scale)
    auto = _torch_step(t16, x, y, True, scale, TORCH_HALF[precision])
    e_s, e_t = rel_err(be.to_host(logits).astype(np.float32), ref), rel_err(auto, ref)
    print(f"{name} logits: scratch {precision} {e_s:.2e}, torch autocast {e_t:.2e} from fp32")
    assert e_s < 3 * e_t + 1e-4
    g32, g16 = dict(t32.named_parameters()), dict(t16.named_parameters())
    worst = []
    for k, p in net.named_parameters():
        r = g32[k].grad.cpu().numpy()
        # both sides' gradients carry the loss scale here (scratch unscales inside the update)
        e_s, e_t = rel_err(be.to_host(p.grad), r), rel_err(g16[k].grad.float().cpu().numpy(), r)
        worst.append((e_s / max(e_t, 1e-4), k, e_s, e_t))
        assert e_s < 3 * e_t + 1e-4, (k, e_s, e_t)
    print("worst gradient ratio:", max(worst))


def _assert_states_as_close_as_autocast(net, t32, t16):
    """Every scratch parameter and buffer within 3x of torch autocast's distance from torch fp32."""
    s32, s16 = t32.state_dict(), t16.state_dict()
    for k, v in net.state_dict().items():
        if "num_batches" in k:
            continue
        r = s32[k].cpu().numpy()
        e_s, e_t = rel_err(v, r), rel_err(s16[k].float().cpu().numpy(), r)
        assert e_s < 3 * e_t + 1e-5, (k, e_s, e_t)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_bf16_training_follows_torch_autocast(name):
    """Four SGD steps in bf16 on both sides (no loss scaling, as torch's bf16 autocast): the
    scratch parameters stay as close to torch fp32's as torch autocast's do (3x)."""
    be, net, t32, t16 = _autocast_pair(name, precision="bf16")
    hp = dict(lr=0.02, momentum=0.9, weight_decay=5e-4)
    opt, o32, o16 = optim.SGD(net.parameters(), **hp), torch.optim.SGD(t32.parameters(), **hp), \
        torch.optim.SGD(t16.parameters(), **hp)
    for s in range(4):
        x, y = data(name, seed=40 + s, n=32)
        opt.zero_grad(); o32.zero_grad(); o16.zero_grad()
        _, d = losses.softmax_cross_entropy(net.forward(be.asarray(x)), be.asarray(y), backend=be)
        net.backward(d, input_grad=False)
        opt.step()
        _torch_step(t32, x, y, False, 1.0)
        o32.step()
        _torch_step(t16, x, y, True, 1.0, torch.bfloat16)
        o16.step()
    _assert_states_as_close_as_autocast(net, t32, t16)
    w = net.parameters()[0]      # the bf16 weight copy the GEMMs read follows the update
    assert np.array_equal(be.to_host(be._w(w.data)).astype(np.float32),
                          be.to_host(w.data).astype(be.half).astype(np.float32))


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_fp16_training_follows_torch_autocast(name):
    """Four SGD steps with dynamic loss scaling on both sides (GradScaler's defaults): the
    scratch parameters stay as close to torch fp32's as torch autocast's do (3x)."""
    from scratch_nn import amp

    be, net, t32, t16 = _autocast_pair(name)
    hp = dict(lr=0.02, momentum=0.9, weight_decay=5e-4)
    opt, o32, o16 = optim.SGD(net.parameters(), **hp), torch.optim.SGD(t32.parameters(), **hp), \
        torch.optim.SGD(t16.parameters(), **hp)
    scaler, tscaler = amp.GradScaler(be), torch.amp.GradScaler("cuda")
    for s in range(4):
        x, y = data(name, seed=40 + s, n=32)
        opt.zero_grad(); o32.zero_grad(); o16.zero_grad()
        logits = net.forward(be.asarray(x))
        _, d = losses.softmax_cross_entropy(logits, be.asarray(y), backend=be, scaler=scaler)
        net.backward(d, input_grad=False)
        scaler.step(opt)
        _torch_step(t32, x, y, False, 1.0)
        o32.step()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(t16(torch.from_numpy(x).cuda()), torch.from_numpy(y).cuda())
        tscaler.scale(loss).backward()
        tscaler.step(o16)
        tscaler.update()
    assert scaler.scale == tscaler.get_scale()
    _assert_states_as_close_as_autocast(net, t32, t16)


def test_loss_scaler_skips_overflowing_steps_and_adapts():
    """A scale that overflows half leaves every parameter as it was and halves; after
    growth_interval good steps the scale doubles; the half weight copy follows the update."""
    from scratch_nn import amp

    be = backends.get("cupy", precision="fp16")
    net = models.build("cnn", backend=be, seed=0)
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = amp.GradScaler(be, init_scale=2.0 ** 40, growth_interval=2)
    x, y = data("cnn", seed=1)

    def step():
        opt.zero_grad()
        _, d = losses.softmax_cross_entropy(net.forward(be.asarray(x)), be.asarray(y), backend=be, scaler=scaler)
        net.backward(d, input_grad=False)
        scaler.step(opt)

    before = net.state_dict()
    step()
    assert scaler.scale == 2.0 ** 39
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k]), k
    scaler.load_state_dict({"scale": 256.0, "growth_tracker": 0})
    step()
    assert scaler.scale == 256.0
    step()
    assert scaler.scale == 512.0
    w = net.parameters()[0]
    assert np.array_equal(be.to_host(be._w(w.data)), be.to_host(w.data).astype(np.float16))
    assert not np.array_equal(net.state_dict()["conv1.weight"], before["conv1.weight"])


@pytest.mark.parametrize("precision", HALVES + ["tf32"])
@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_half_cuda_graph_replays_the_eager_step(name, precision):
    _half_backend(precision)
    spec = OptimSpec("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    runs = []
    for graph in (False, True):
        ad = make_adapter("scratch", model=name, backend="cupy", optimizer=spec, seed=0, precision=precision,
                          cuda_graph=graph)
        seen = [float(ad.train_step(*ad.to_device(*data(name, seed=20 + s)))) for s in range(5)]
        runs.append((ad.state_dict(), seen, ad.scaler.scale if ad.scaler else None))
    (eager, l_e, s_e), (graphed, l_g, s_g) = runs
    assert np.allclose(l_e, l_g, rtol=1e-3) and s_e == s_g
    for k in eager:
        assert rel_err(graphed[k], eager[k]) < 1e-3, k


def test_torch_fp16_cuda_graph_replays_the_eager_step():
    """torch's captured fp16 step (fused SGD, GradScaler's found_inf on the GPU, autocast without
    its weight cache) follows its eager step, the loss scale included. The cnn: resnet18 at batch
    8 amplified the fused and foreach optimizers' rounding to 7% in conv1 within 7 steps."""
    spec = OptimSpec("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    runs = []
    for graph in (False, True):
        ad = make_adapter("torch", model="cnn", device="cuda", optimizer=spec, seed=0, precision="fp16",
                          cuda_graph=graph)
        seen = [float(ad.train_step(*ad.to_device(*data("cnn", seed=20 + s)))) for s in range(7)]
        runs.append((ad.state_dict(), seen, ad.scaler.get_scale(), ad.graph))
    (eager, l_e, s_e, _), (graphed, l_g, s_g, g) = runs
    assert g is not None and s_e == s_g
    np.testing.assert_allclose(l_g, l_e, rtol=1e-2)
    for k in eager:
        if eager[k].dtype.kind == "f":
            assert rel_err(graphed[k], eager[k]) < 1e-2, k
    set_torch_cuda_precision("fp32")


def test_torch_adam_cuda_graph_replays_the_eager_step():
    """The seed recipe's ResNet-18 optimizer, Adam, captured: its step count must live on the
    GPU (capturable), or the capture is refused (what the study's torch-best probe hit)."""
    spec = OptimSpec("adam", lr=1e-3)
    runs = []
    for graph in (False, True):
        ad = make_adapter("torch", model="cnn", device="cuda", optimizer=spec, seed=0, precision="fp32",
                          cuda_graph=graph)
        seen = [float(ad.train_step(*ad.to_device(*data("cnn", seed=20 + s)))) for s in range(6)]
        runs.append((ad.state_dict(), seen, ad.graph))
    (eager, l_e, _), (graphed, l_g, g) = runs
    assert g is not None
    np.testing.assert_allclose(l_g, l_e, rtol=1e-4)
    # capturable Adam does its arithmetic on device scalars: the weights after 6 steps differ
    # by 1.4e-4 (measured on the H200), a wrong step count or a missed update by far more
    for k in eager:
        if eager[k].dtype.kind == "f":
            assert rel_err(graphed[k], eager[k]) < 1e-3, k


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_graph_follows_a_changing_learning_rate(precision):
    """The fast recipe's optimizer (SGD, nesterov, weight decay) under a learning rate that
    changes every step, captured: the graph reads lr from device memory, so its replays follow
    the schedule as the eager steps do (a float lr would replay the captured value)."""
    spec = OptimSpec("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    lrs = [0.01 * (s + 1) for s in range(8)]
    runs = []
    for graph in (False, True):
        ad = make_adapter("torch", model="cnn", device="cuda", optimizer=spec, seed=0, precision=precision,
                          cuda_graph=graph)
        seen = []
        for s, lr in enumerate(lrs):
            ad.set_lr(lr)
            seen.append(float(ad.train_step(*ad.to_device(*data("cnn", seed=40 + s)))))
        runs.append((ad.state_dict(), seen, ad.graph))
    (eager, l_e, _), (graphed, l_g, g) = runs
    assert g is not None
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(l_g, l_e, rtol=tol)
    for k in eager:
        if eager[k].dtype.kind == "f":
            assert rel_err(graphed[k], eager[k]) < tol, k
    set_torch_cuda_precision("fp32")


def test_fp16_channel_major_layout_still_matches_torch_autocast():
    """layout="cnhw" keeps the im2col fp16 path (for measuring against the tensor-core one)."""
    be = backends.get("cupy", precision="fp16", layout="cnhw")
    assert be.layout == "cnhw"
    net = models.build("resnet18", backend=be, seed=0)
    t32 = torch_impl.models.build("resnet18").cuda()
    t32.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    t16 = torch_impl.models.build("resnet18").cuda()
    t16.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    set_torch_cuda_precision("fp32")
    x, y = data("resnet18", seed=5, n=16)
    logits = be.to_host(net.forward(be.asarray(x))).astype(np.float32)
    ref, auto = _torch_step(t32, x, y, False, 1.0), _torch_step(t16, x, y, True, 1.0)
    assert rel_err(logits, ref) < 3 * rel_err(auto, ref) + 1e-4


def test_the_sm75_switch_runs_the_t4_paths_and_refusals(monkeypatch):
    """SCRATCH_NN_SM75=1: tf32 and bf16 are refused as on a T4 (one line saying why and what to
    use), and fp16 runs the register-staged kernels with m16n8k8 tensor-core steps (the whole
    suite runs under the switch too: SCRATCH_NN_SM75=1 python -m pytest tests/gpu)."""
    from scratch_nn.backends.cupy_backend import PrecisionUnavailable

    monkeypatch.setenv("SCRATCH_NN_SM75", "1")
    for p in ("tf32", "bf16"):
        with pytest.raises(PrecisionUnavailable, match="compute capability 8.0") as e:
            backends.get("cupy", precision=p)
        assert "\n" not in str(e.value) and "fp16" in str(e.value)
    be75 = backends.get("cupy", precision="fp16")
    assert not be75.async_copy and be75.describe()["sm75_variant"]


@pytest.mark.parametrize("precision", HALVES + ["tf32"])
def test_a_half_run_repeats_bitwise(precision):
    """Two fresh runs of three resnet18 steps end bitwise equal: the tile each convolution
    measures fastest may differ between them, but no sum's order depends on it (fixed chunks of
    the weight gradient and of the BatchNorm statistics, no atomics)."""
    _half_backend(precision)
    spec = OptimSpec("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    states = []
    for _ in range(2):
        ad = make_adapter("scratch", model="resnet18", backend="cupy", optimizer=spec, seed=0, precision=precision)
        for s_ in range(3):
            ad.train_step(*ad.to_device(*data("resnet18", seed=60 + s_, n=32)))
        states.append(ad.state_dict())
    for k in states[0]:
        assert np.array_equal(states[0][k], states[1][k]), k


def test_torch_refuses_bf16_below_compute_capability_8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    with pytest.raises(ValueError, match="bf16 needs a GPU of compute capability 8.0"):
        set_torch_cuda_precision("bf16")


def test_batchnorm_takes_the_convolution_statistics_only_right_after_it():
    """The BatchNorm after a convolution merges the statistics its epilogue wrote; given any
    other input it computes them itself, and both give torch's batch statistics."""
    be = _half_backend("fp16")
    r = np.random.default_rng(2)
    x = be.asarray(r.standard_normal((8, 64, 16, 16)).astype(np.float32)).astype(np.float16)
    w = be.asarray((r.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32))
    gamma, beta = be.xp.ones(64, dtype=np.float32), be.xp.zeros(64, dtype=np.float32)
    xin = be._view(be._nhwc(x))
    y, _ = be.conv2d_forward(xin, w, None, 1, 1)
    assert be._stats is not None
    _, m1, v1, _ = be.batchnorm_forward_train(y, gamma, beta, 1e-5)
    assert be._stats is None                       # taken
    _, m2, v2, _ = be.batchnorm_forward_train(y, gamma, beta, 1e-5)   # now computed from y
    yt = torch.from_numpy(be.to_host(y).astype(np.float32)).double()
    tm, tv = yt.mean(dim=(0, 2, 3)).numpy(), yt.var(dim=(0, 2, 3), unbiased=False).numpy()
    for m, v in ((m1, v1), (m2, v2)):
        assert rel_err(be.to_host(m), tm) < 1e-4 and rel_err(be.to_host(v), tv) < 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_batchnorm_relu_backward_recomputes_the_mask_bit_for_bit(precision):
    """Without a residual the channels-last BatchNorm + ReLU backward tests x * scale + shift,
    rounded as the forward stored it, instead of reading y: the same gradients bit for bit as
    from y's mask, here with a channel whose outputs sit at the rounding edge of zero."""
    be = _half_backend(precision)
    r = np.random.default_rng(5)
    c = 64
    x = be._view(be.conv.to_nhwc(be.asarray(r.standard_normal((8, c, 8, 8)).astype(np.float32)), c))
    gamma = be.asarray(r.uniform(0.5, 1.5, c).astype(np.float32))
    gamma[0] = 2e-8                                # outputs of order 1e-8: fp16 rounds many to zero
    beta = be.asarray((0.3 * r.standard_normal(c)).astype(np.float32))
    beta[0] = 0.0
    dy = be.conv.to_nhwc(be.asarray(r.standard_normal((8, c, 8, 8)).astype(np.float32)), c)
    y, _, _, cache = be.batchnorm_forward_train(x, gamma, beta, 1e-5, relu=True)
    assert cache[4][0] is None and cache[4][1] is not None       # no y kept for the mask
    yb = be._nhwc(y)
    from_y = cache[:4] + ((yb, None),) + cache[5:]
    out = []
    for cch in (cache, from_y):
        dg, db = be.xp.full(c, np.nan, np.float32), be.xp.full(c, np.nan, np.float32)
        dx, _ = be._bn_backward(be._view(dy), cch, dg, db, False)
        out.append((be.to_host(dx), be.to_host(dg), be.to_host(db)))
    for a, b in zip(*out):
        assert np.isfinite(a.astype(np.float32)).all()
        assert a.tobytes() == b.tobytes()
    y0 = be.to_host(y)[:, 0].astype(np.float32)
    assert (y0 == 0).any() and (y0 > 0).any()


def test_fp16_needs_float32_master_weights():
    be = backends.get("cupy", precision="fp16")
    with pytest.raises(ValueError, match="float32 master"):
        models.build("cnn", backend=be, dtype="float64")


def test_half_gemm_accumulates_into_float32():
    be = backends.get("cupy")
    r = np.random.default_rng(0)
    a, b = r.standard_normal((64, 300)).astype(np.float16), r.standard_normal((300, 48)).astype(np.float16)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    out = be.asarray(np.ones((64, 48), np.float32))
    be.gemm(be.asarray(a), be.asarray(np.ascontiguousarray(b.T)).T, out=out, accumulate=True)
    assert rel_err(be.to_host(out), ref + 1) < 1e-5
    assert be.gemm(be.asarray(a), be.asarray(b)).dtype == np.float16


def test_convolution_split_over_the_batch_matches_the_whole(monkeypatch):
    """Rebuilding im2col columns in backward, a batch slice at a time (column blocks of the
    output and strided GEMM operands), gives what keeping them does."""
    from scratch_nn.backends import cupy_backend

    r = np.random.default_rng(0)
    x = r.standard_normal((10, 16, 12, 12)).astype(np.float32)
    w = r.standard_normal((24, 16, 3, 3)).astype(np.float32)
    b = r.standard_normal(24).astype(np.float32)
    dy = r.standard_normal((10, 24, 6, 6)).astype(np.float32)
    monkeypatch.setattr(cupy_backend, "COLS_BUDGET", 3 * 16 * 9 * 36 * 4)    # slices of 3 images
    # "auto" (tf32's default) rebuilds columns larger than KEEP_COLS_BYTES: these are 1 byte more
    monkeypatch.setattr(cupy_backend, "KEEP_COLS_BYTES", 10 * 16 * 9 * 36 * 4 - 1)
    outs = []
    for recompute in (False, True, "auto"):
        be = backends.get("cupy", recompute_cols=recompute)
        gx, gw, gb = be.asarray(x), be.asarray(w), be.asarray(b)
        assert len(be._batch_slices(gx, 3, 2, 6, 6)) == (1 if recompute is False else 4)
        y, cache = be.conv2d_forward(gx, gw, gb, 2, 1, relu=True)
        dx, dw, db = be.conv2d_backward(be.asarray(dy), cache, gw)
        outs.append([be.to_host(a) for a in (y, dx, dw, db)])
    for other in outs[1:]:
        for a, b_ in zip(outs[0], other):
            assert rel_err(a, b_) < 1e-6


def test_gemm_reads_and_writes_column_blocks():
    be = backends.get("cupy")
    r = np.random.default_rng(1)
    a = be.asarray(r.standard_normal((8, 5)).astype(np.float32))
    big = be.asarray(r.standard_normal((5, 30)).astype(np.float32))
    out = be.xp.zeros((8, 30), dtype=np.float32)
    be.gemm(a, big[:, 10:20], out=out[:, 10:20])
    ref = be.to_host(a) @ be.to_host(big)[:, 10:20]
    assert rel_err(be.to_host(out)[:, 10:20], ref) < 1e-5
    assert not be.to_host(out)[:, :10].any() and not be.to_host(out)[:, 20:].any()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_split_weight_gradient_matches_one_gemm(dtype):
    """A small dW over a long reduction runs as batched GEMMs over K slices plus a summing GEMV
    (and accumulates); float16 operands write float32, as the fp16 mode's gradients."""
    be = backends.get("cupy")
    r = np.random.default_rng(3)
    dy = r.standard_normal((16, 65536)).astype(dtype)
    cols = r.standard_normal((27, 65536)).astype(dtype)
    out_dtype = np.float32 if dtype == "float16" else dtype
    ref = dy.astype(np.float64) @ cols.astype(np.float64).T + 1
    out = be.asarray(np.ones((16, 27), out_dtype))
    be._wgrad_call(be.asarray(dy), be.asarray(cols), out, True)(be._gemm)
    assert rel_err(be.to_host(out), ref) < (1e-12 if dtype == "float64" else 1e-5)
