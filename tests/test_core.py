"""rcnn.core against PyTorch autograd, in float64: forward values and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rcnn.core import (FC, GD, MSE, Adam, BinaryCrossEntropy, Conv2D, Flatten, Linear, MaxPool2D, Model, ReLU, Sigmoid,
                       Softmax, SoftmaxCrossEntropy, Tanh)
from rcnn.core.naive import conv2d_backward_naive, conv2d_forward_naive

RTOL = 1e-6


def close(a, b) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert err < RTOL, f"relative error {err}"


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a.transpose(0, 3, 1, 2), requires_grad=True)


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("init", ["random", "xavier", "he"])
def test_fc_matches_torch(n, init):
    rng = np.random.default_rng(0)
    layer = FC(7, 3, init=init, seed=1)
    layer.params["b"] = rng.standard_normal(3)
    x, g = rng.standard_normal((n, 7)), rng.standard_normal((n, 3))
    y = layer.forward(x)
    dx = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["W"], requires_grad=True)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    yt = xt @ wt + bt
    yt.backward(torch.tensor(g))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(layer.grads["W"], wt.grad.numpy())
    close(layer.grads["b"], bt.grad.numpy())


def test_initialisers_have_the_documented_scale():
    for init, std in (("random", 0.01), ("xavier", np.sqrt(2 / (400 + 300))), ("he", np.sqrt(2 / 400))):
        w = FC(400, 300, init=init, seed=0).params["W"]
        assert w.std() == pytest.approx(std, rel=0.02) and abs(w.mean()) < 3 * std / np.sqrt(w.size) * 3
        assert np.all(FC(400, 300, init=init).params["b"] == 0)
    with pytest.raises(ValueError, match="'init=glorot'"):
        FC(3, 2, init="glorot")


CONV_CASES = [
    # (N, H, W, C_in, C_out, kernel, stride, padding)
    (2, 7, 7, 3, 4, 3, 1, 0),
    (1, 8, 9, 2, 3, 3, 2, 1),
    (3, 9, 7, 2, 5, (3, 2), (2, 1), (2, 1)),
    (2, 6, 6, 1, 2, 1, 1, 0),
    (2, 7, 8, 3, 2, 3, 1, "same"),
    (2, 9, 8, 2, 3, 4, 3, "same"),
    (1, 5, 5, 2, 2, 5, 1, 0),
    (2, 10, 10, 2, 2, 3, 3, 0),  # stride leaves rows/columns no window reaches
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    n, h, w, cin, cout, k, s, p = case
    rng = np.random.default_rng(1)
    layer = Conv2D(cin, cout, k, stride=s, padding=p, init="xavier", seed=2)
    layer.params["b"] = rng.standard_normal(cout)
    x = rng.standard_normal((n, h, w, cin))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)

    xt = nchw(x)
    wt = torch.tensor(layer.params["W"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    (pt, pb), (pl, pr) = layer.pad
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=layer.stride)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    close(y, nhwc(yt))
    close(dx, nhwc(xt.grad))
    close(layer.grads["W"], wt.grad.numpy().transpose(2, 3, 1, 0))
    close(layer.grads["b"], bt.grad.numpy())
    if p == "same" and layer.stride == (1, 1):
        assert y.shape[1:3] == x.shape[1:3]


@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_conv2d_matches_naive_loops(case):
    n, h, w, cin, cout, k, s, p = case
    rng = np.random.default_rng(3)
    layer = Conv2D(cin, cout, k, stride=s, padding=p, seed=4)
    x = rng.standard_normal((n, h, w, cin))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    close(y, conv2d_forward_naive(x, layer.params["W"], layer.params["b"], layer.stride, layer.padding))
    ndx, ndw, ndb = conv2d_backward_naive(x, layer.params["W"], g, layer.stride, layer.padding)
    close(dx, ndx)
    close(layer.grads["W"], ndw)
    close(layer.grads["b"], ndb)


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("kernel,stride,shape", [(2, None, (2, 8, 8, 3)), (3, 2, (1, 9, 7, 2)), (2, 1, (3, 5, 6, 2)),
                                                 ((3, 2), (1, 2), (2, 7, 8, 1)), (2, None, (1, 7, 7, 2))])
def test_pooling_matches_torch(mode, kernel, stride, shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    layer = MaxPool2D(kernel, stride, mode=mode)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    xt = nchw(x)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    yt = fn(xt, kernel, stride if stride is not None else kernel)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    close(y, nhwc(yt))
    close(dx, nhwc(xt.grad))


def test_max_pool_ties_send_gradient_to_one_input():
    x = np.ones((1, 2, 2, 1))
    layer = MaxPool2D(2)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 1, 1)))
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0


def test_flatten_roundtrip():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    f = Flatten()
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(f.backward(y), x)


# ----------------------------------------------------------------------------- activations and losses


@pytest.mark.parametrize("ours,theirs", [(Sigmoid, torch.sigmoid), (ReLU, torch.relu), (Tanh, torch.tanh),
                                         (Linear, lambda t: t * 1.0), (Softmax, lambda t: torch.softmax(t, dim=-1))])
@pytest.mark.parametrize("shape", [(1, 5), (4, 6), (2, 3, 3, 2)])
def test_activations_match_torch(ours, theirs, shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape) * 3
    x.flat[0] = 40.0  # large values must not overflow
    layer = ours()
    y = layer.forward(x)
    g = rng.standard_normal(shape)
    dx = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(g))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())


@pytest.mark.parametrize("n", [1, 7])
def test_binary_cross_entropy_matches_torch(n):
    rng = np.random.default_rng(7)
    p, y = rng.uniform(0.05, 0.95, (n, 3)), rng.integers(0, 2, (n, 3)).astype(float)
    loss = BinaryCrossEntropy()
    pt = torch.tensor(p, requires_grad=True)
    lt = F.binary_cross_entropy(pt, torch.tensor(y))
    lt.backward()
    close(loss(p, y), lt.item())
    close(loss.grad(p, y), pt.grad.numpy())


@pytest.mark.parametrize("n", [1, 7])
def test_mse_matches_torch(n):
    rng = np.random.default_rng(8)
    o, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
    ot = torch.tensor(o, requires_grad=True)
    lt = F.mse_loss(ot, torch.tensor(y))
    lt.backward()
    close(MSE()(o, y), lt.item())
    close(MSE().grad(o, y), ot.grad.numpy())


@pytest.mark.parametrize("n", [1, 6])
def test_softmax_cross_entropy_matches_torch(n):
    rng = np.random.default_rng(9)
    z, y = rng.standard_normal((n, 4)) * 3, rng.integers(0, 4, n)
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt, torch.tensor(y))
    lt.backward()
    loss = SoftmaxCrossEntropy()
    close(loss(z, y), lt.item())
    close(loss.grad(z, y), zt.grad.numpy())
    onehot = np.eye(4)[y]
    close(loss(z, onehot), lt.item())
    with pytest.raises(ValueError, match="class indices"):
        loss(z, np.full(n, 4))


def test_sigmoid_then_bce_through_model_matches_torch():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 2, (5, 1)).astype(float)
    m = Model([("fc", FC(4, 1, seed=0)), ("sig", Sigmoid())], "binary_cross_entropy", GD(0.1))
    m.forward(x)
    loss = m.backward(y)
    wt = torch.tensor(m["fc"].params["W"], requires_grad=True)
    lt = F.binary_cross_entropy(torch.sigmoid(torch.tensor(x) @ wt), torch.tensor(y))
    lt.backward()
    close(loss, lt.item())
    close(m["fc"].grads["W"], wt.grad.numpy())


# ----------------------------------------------------------------------------- optimisers


def test_gd_and_adam_match_torch():
    rng = np.random.default_rng(11)
    for ours, theirs in ((GD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
                         (Adam(0.01, 0.9, 0.99, 1e-8), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8))):
        p = rng.standard_normal((3, 2))
        pt = torch.tensor(p.copy(), requires_grad=True)
        opt = theirs([pt])
        for step in range(5):
            g = rng.standard_normal((3, 2))
            ours.step([p], [g])
            pt.grad = torch.tensor(g)
            opt.step()
            close(p, pt.detach().numpy())


# ----------------------------------------------------------------------------- model


def small_cnn(seed: int = 0) -> Model:
    return Model([
        ("conv", Conv2D(1, 4, 3, padding="same", seed=seed)),
        ("relu", ReLU()),
        ("pool", MaxPool2D(2)),
        ("flat", Flatten()),
        ("fc", FC(4 * 4 * 4, 3, init="xavier", seed=seed)),
    ], SoftmaxCrossEntropy(), Adam(0.01))


def test_model_gradient_matches_torch_end_to_end():
    rng = np.random.default_rng(12)
    m = small_cnn()
    x, y = rng.standard_normal((4, 8, 8, 1)), rng.integers(0, 3, 4)
    m.forward(x)
    loss = m.backward(y)
    conv_w = torch.tensor(m["conv"].params["W"].transpose(3, 2, 0, 1), requires_grad=True)
    fc_w = torch.tensor(m["fc"].params["W"], requires_grad=True)
    h = F.max_pool2d(torch.relu(F.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)), conv_w, padding=1)), 2)
    z = h.permute(0, 2, 3, 1).reshape(4, -1) @ fc_w  # NHWC flatten order
    lt = F.cross_entropy(z, torch.tensor(y))
    lt.backward()
    close(loss, lt.item())
    close(m["conv"].grads["W"], conv_w.grad.numpy().transpose(2, 3, 1, 0))
    close(m["fc"].grads["W"], fc_w.grad.numpy())


def test_train_reduces_loss_and_returns_history():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((64, 8, 8, 1))
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(int) + (x[:, :, :4].mean(axis=(1, 2, 3)) > 0).astype(int)
    m = small_cnn()
    hist = m.train(x, y, epochs=15, batch_size=16, validation=(x[:16], y[:16]))
    assert len(hist["train"]) == 15 and len(hist["validation"]) == 15
    assert hist["train"][-1] < 0.6 * hist["train"][0]


def test_save_load_roundtrip_predicts_identically(tmp_path):
    rng = np.random.default_rng(14)
    m = small_cnn(seed=3)
    m.train(rng.standard_normal((16, 8, 8, 1)), rng.integers(0, 3, 16), epochs=2, batch_size=8)
    path = m.save(tmp_path / "m.npz")
    back = Model.load(path)
    x = rng.standard_normal((5, 8, 8, 1))
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    assert [n for n, _ in back.layers] == [n for n, _ in m.layers]
    # the file holds only numeric arrays: it loads with pickle disabled
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_load_refuses_pickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __architecture__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        Model.load(path)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'mode=median'"):
        MaxPool2D(2, mode="median")
    with pytest.raises(ValueError, match="'padding=full'"):
        Conv2D(1, 1, 3, padding="full")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        FC(4, 2).forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="3 channels"):
        Conv2D(3, 2, 3).forward(np.zeros((1, 5, 5, 2)))
    with pytest.raises(ValueError, match="'loss=hinge'"):
        Model([FC(2, 1)], "hinge")
    with pytest.raises(ValueError, match="does not fit"):
        Conv2D(1, 1, 5).forward(np.zeros((1, 3, 3, 1)))


# ----------------------------------------------------------------------------- real tasks


@pytest.mark.parametrize("task,metric,minimum", [("breast_cancer", "accuracy", 0.95), ("diabetes", "r2", 0.40), ("digits", "accuracy", 0.95)])
def test_examples_reach_their_targets(task, metric, minimum, capsys):
    from rcnn.core.examples import main

    assert main([task]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = last.split()
    assert name == metric and float(value) >= minimum, last


def test_examples_usage():
    from rcnn.core.examples import main

    assert main(["mnist"]) == 2


def test_float32_layers_stay_float32_and_roundtrip(tmp_path):
    rng = np.random.default_rng(15)
    m = Model([("conv", Conv2D(1, 2, 3, padding=1, seed=0, dtype="float32")), ("flat", Flatten()),
               ("fc", FC(2 * 5 * 5, 2, seed=0, dtype="float32"))], SoftmaxCrossEntropy(), Adam(0.01))
    x = rng.standard_normal((3, 5, 5, 1)).astype(np.float32)
    out = m.forward(x)
    assert out.dtype == np.float32
    m.backward(np.array([0, 1, 0]))
    assert m["conv"].grads["W"].dtype == np.float32
    back = Model.load(m.save(tmp_path / "m.npz"))
    assert back["fc"].params["W"].dtype == np.float32
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
