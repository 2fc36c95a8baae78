"""Every layer's backward and the loss against central finite differences in float64."""
import numpy as np
import pytest

from scratch_nn import layers, losses

TOL = 1e-6


def numeric_grad(f, arr, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of arr, which is
    perturbed in place (a numpy or device array); returns a host array."""
    g = np.zeros(arr.shape)
    for i in np.ndindex(*arr.shape):
        old = float(arr[i])
        arr[i] = old + eps
        fp = f()
        arr[i] = old - eps
        fm = f()
        arr[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def check_layer(be, layer, x, seed=0):
    """L = sum(forward(x) * u) for a fixed random u; compare dL/dx and dL/dparams."""
    x = be.asarray(x)
    y = layer.forward(x)
    u = be.asarray(np.random.default_rng(seed).standard_normal(y.shape))
    layer.zero_grad()
    dx = be.to_host(layer.backward(u))

    def loss():
        return float((be.to_host(layer.forward(x)) * be.to_host(u)).sum())

    assert _rel(numeric_grad(loss, x), dx) < TOL, "input gradient"
    for name, p in layer.named_parameters():
        assert _rel(numeric_grad(loss, p.data), be.to_host(p.grad)) < TOL, f"gradient of {name}"


def _rel(num, ana):
    return np.linalg.norm(num - ana) / max(np.linalg.norm(num), np.linalg.norm(ana), 1e-300)


def rng_x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("k,stride,pad,bias", [(3, 1, 1, True), (3, 2, 1, False), (3, 1, 0, True),
                                               (1, 2, 0, False), (2, 2, 0, True), (3, 2, 0, True)])
def test_conv2d(be, rng, k, stride, pad, bias):
    layer = layers.Conv2d(be, 3, 4, k, stride, pad, bias=bias, rng=rng, dtype="float64")
    check_layer(be, layer, rng_x((2, 3, 7, 7)))


def test_linear(be, rng):
    check_layer(be, layers.Linear(be, 6, 5, rng=rng, dtype="float64"), rng_x((4, 6)))
    check_layer(be, layers.Linear(be, 6, 5, bias=False, rng=rng, dtype="float64"), rng_x((4, 6)))
    check_layer(be, layers.Linear(be, 6, 5, relu=True, rng=rng, dtype="float64"), rng_x((4, 6)))


def test_conv2d_with_fused_relu(be, rng):
    check_layer(be, layers.Conv2d(be, 3, 4, 3, 1, 1, relu=True, rng=rng, dtype="float64"), rng_x((2, 3, 5, 5)))


def test_batchnorm_train(be):
    bn = layers.BatchNorm2d(be, 3, dtype="float64")
    r = np.random.default_rng(3)
    bn.weight.data[...] = be.asarray(r.uniform(0.5, 1.5, 3))
    bn.bias.data[...] = be.asarray(r.standard_normal(3))
    check_layer(be, bn, rng_x((4, 3, 3, 3)) * 2 + 1)


def test_relu(be):
    check_layer(be, layers.ReLU(be), rng_x((2, 3, 4, 4)))


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_maxpool(be, k, stride, pad):
    check_layer(be, layers.MaxPool2d(be, k, stride, pad), rng_x((2, 2, 6, 6)))


def test_global_avgpool(be):
    check_layer(be, layers.GlobalAvgPool2d(be), rng_x((2, 3, 4, 4)))


def test_flatten_and_sequential(be, rng):
    net = layers.Sequential(be, layers.Conv2d(be, 2, 3, 3, 1, 1, rng=rng, dtype="float64"), layers.ReLU(be),
                            layers.Flatten(be), layers.Linear(be, 3 * 4 * 4, 5, rng=rng, dtype="float64"))
    check_layer(be, net, rng_x((2, 2, 4, 4)))


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (3, 5, 2)])
def test_basic_block(be, rng, cin, cout, stride):
    block = layers.BasicBlock(be, cin, cout, stride, rng=rng, dtype="float64")
    assert (block.downsample is not None) == (stride != 1 or cin != cout)
    check_layer(be, block, rng_x((3, cin, 6, 6)))


def test_dropout_train_mask_and_eval_identity(be):
    d = layers.Dropout(be, 0.5, seed=0)
    x = be.asarray(rng_x((4, 50)))
    y = be.to_host(d.forward(x))
    kept = y != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(y[kept], 2 * be.to_host(x)[kept])
    g = be.to_host(d.backward(be.asarray(np.ones((4, 50)))))
    np.testing.assert_array_equal(g, 2.0 * kept)
    d.eval()
    assert d.forward(x) is x


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(be, smoothing):
    r = np.random.default_rng(5)
    logits = r.standard_normal((6, 10)) * 3
    labels = be.asarray(r.integers(0, 10, 6))
    lg = be.asarray(logits)
    loss, d = losses.softmax_cross_entropy(lg, labels, smoothing, backend=be)
    num = numeric_grad(lambda: float(losses.softmax_cross_entropy(lg, labels, smoothing, backend=be)[0]),
                       lg)
    assert _rel(num, be.to_host(d)) < TOL


def test_softmax_cross_entropy_is_stable_and_matches_definition():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, d = losses.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(float(loss)) and np.isfinite(d).all()
    np.testing.assert_allclose(float(loss), (0.0 + np.log(3.0)) / 2)
    loss_s, _ = losses.softmax_cross_entropy(logits, np.array([0, 2]), label_smoothing=0.3)
    logp = np.array([[0.0, -1000.0, -2000.0], [-np.log(3)] * 3])
    ref = np.mean([(0.7 * -logp[i, t] + 0.3 * -logp[i].mean()) for i, t in enumerate([0, 2])])
    np.testing.assert_allclose(float(loss_s), ref)


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError):
        losses.softmax_cross_entropy(np.zeros((4, 10)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError):
        losses.softmax_cross_entropy(np.zeros((4, 10)), np.zeros(4, dtype=int), label_smoothing=1.0)
