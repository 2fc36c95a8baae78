"""Model structure, parameter counts, initialisation statistics and state dicts."""
import numpy as np
import pytest

from scratch_nn import backends, models

torch = pytest.importorskip("torch")
import torch_impl  # noqa: E402


@pytest.mark.parametrize("name,count", [("cnn", 210_998), ("resnet18", 11_173_962)])
def test_parameter_counts(be, name, count):
    assert models.build(name, backend=be).num_parameters() == count
    assert sum(p.numel() for p in torch_impl.models.build(name).parameters()) == count


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_state_dict_keys_shapes_dtypes_equal_torch(name):
    sd = models.build(name).state_dict()
    tsd = torch_impl.models.build(name).state_dict()
    assert list(sd) == list(tsd)
    for k, v in sd.items():
        assert tuple(v.shape) == tuple(tsd[k].shape), k
        assert v.dtype == tsd[k].numpy().dtype, k
    if name == "resnet18":
        assert "layer2.0.downsample.0.weight" in sd and "layer1.0.downsample.0.weight" not in sd
        assert sd["conv1.weight"].shape == (64, 3, 3, 3)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_round_trip_scratch_torch_scratch_is_exact(be, name):
    net = models.build(name, backend=be, seed=3)
    sd = net.state_dict()
    sd["bn1.running_mean" if name == "resnet18" else "fc2.bias"] += 0.5   # not a fresh-init value
    tnet = torch_impl.models.build(name)
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    back = models.build(name, backend=be, seed=99)
    back.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    out = back.state_dict()
    assert list(out) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(out[k], sd[k])
        assert out[k].dtype == sd[k].dtype


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_fresh_weights_have_torch_statistics(name):
    """Same init rules: per tensor, the std of fresh scratch and torch weights agree."""
    sd = models.build(name, seed=0).state_dict()
    torch.manual_seed(0)
    tsd = torch_impl.models.build(name).state_dict()
    for k, v in sd.items():
        if v.dtype.kind != "f" or v.size < 64:
            continue
        s, t = float(v.std()), float(tsd[k].numpy().std())
        if t == 0:
            assert s == 0, k
        else:
            assert abs(s - t) / t < 0.15, (k, s, t)
        # both means are ~0; allow 6 standard errors of their difference
        assert abs(float(v.mean()) - float(tsd[k].numpy().mean())) < 6 * t * np.sqrt(2 / v.size) + 1e-6, k


def test_same_seed_same_weights_and_float64():
    a = models.build("cnn", seed=5).state_dict()
    b = models.build("cnn", seed=5).state_dict()
    c = models.build("cnn", seed=6).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    d = models.build("cnn", seed=5, dtype="float64").state_dict()
    assert d["conv1.weight"].dtype == np.float64
    np.testing.assert_allclose(d["conv1.weight"], a["conv1.weight"], rtol=1e-6)


def test_load_state_dict_rejects_mismatches():
    net = models.build("cnn")
    sd = net.state_dict()
    bad = dict(sd)
    del bad["fc2.bias"]
    with pytest.raises(KeyError, match="fc2.bias"):
        net.load_state_dict(bad)
    bad = dict(sd, **{"fc2.bias": np.zeros(11, np.float32)})
    with pytest.raises(ValueError, match="fc2.bias"):
        net.load_state_dict(bad)


def test_train_eval_modes_and_batchnorm_counters(be):
    net = models.build("resnet18", backend=be)
    x = be.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    net.eval()
    assert not any(m.training for _, m in net.named_modules())
    net.forward(x)
    assert int(net.state_dict()["bn1.num_batches_tracked"]) == 0
    net.train()
    net.forward(x)
    sd = net.state_dict()
    assert int(sd["bn1.num_batches_tracked"]) == 1
    assert not np.allclose(sd["bn1.running_mean"], 0)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="resnet18"):
        models.build("vgg")
    with pytest.raises(ValueError, match="numpy"):
        backends.get("tpu")
    with pytest.raises(ValueError):
        models.build("cnn", dtype="float16")


def test_backward_without_input_grad_gives_same_parameter_grads(be):
    from scratch_nn import losses

    x = be.asarray(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    y = be.asarray(np.arange(4))
    grads = []
    for input_grad in (True, False):
        net = models.build("cnn", backend=be, seed=1)
        _, d = losses.softmax_cross_entropy(net.forward(x), y, backend=be)
        dx = net.backward(d, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([be.to_host(p.grad) for p in net.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
