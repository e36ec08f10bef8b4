"""rcnn.core against PyTorch autograd, in float64: forward values and every gradient."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable

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


# ----------------------------------------------------------------------------- model files


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A .npy header promising an array of ``shape``, without the data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # a duplicate name is one of the cases
        for name, data in members.items() if isinstance(members, dict) else members:
            zf.writestr(name, data)
    return buf.getvalue()


def arch_array(arch: object) -> np.ndarray:
    return np.frombuffer(json.dumps(arch).encode(), dtype=np.uint8)


def model_file(edit: Callable[[dict, dict], None] | None = None) -> bytes:
    """The bytes of ``small_cnn`` saved, after ``edit(architecture, arrays)`` (which may set
    ``arrays["__architecture__"]`` itself)."""
    m = small_cnn()
    arch, arrays = m.architecture(), {f"{n}/{k}": v for n, layer in m.layers for k, v in layer.params.items()}
    if edit is not None:
        edit(arch, arrays)
    arrays.setdefault("__architecture__", arch_array(arch))
    return zip_bytes({f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})


def spec(arch: dict, name: str) -> dict:
    return next(s for s in arch["layers"] if s["name"] == name)


def edit_config(name: str, key: str, value: object) -> Callable[[dict, dict], None]:
    return lambda a, z: spec(a, name)["config"].__setitem__(key, value)


def raw_architecture(data: bytes) -> Callable[[dict, dict], None]:
    return lambda a, z: z.__setitem__("__architecture__", np.frombuffer(data, dtype=np.uint8))


def load_error(tmp_path, data: bytes) -> str:
    """Model.load's message for a file of ``data``, checked to be one line naming the file."""
    path = tmp_path / "bad model.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        Model.load(path)
    message = str(err.value)
    assert f"'{path}'" in message and "\n" not in message, message
    return message


UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "unpickled"


class Unpicklable:
    """Unpickling this records it: a loader that unpickles would leave a trace."""

    def __reduce__(self):
        return _record_unpickling, ()


MALFORMED: dict[str, Callable[[], bytes]] = {
    # the archive
    "not a zip": lambda: b"this is not a zip archive",
    "empty file": lambda: b"",
    "truncated in half": lambda: model_file()[: len(model_file()) // 2],
    "truncated tail": lambda: model_file()[:-10],
    "a bare .npy": lambda: npy_bytes(np.zeros(3)),
    "member not .npy": lambda: zip_bytes({"__architecture__.npy": npy_bytes(arch_array({})), "readme.txt": b"hi"}),
    "duplicate member": lambda: zip_bytes([("__architecture__.npy", npy_bytes(arch_array({})))] * 2),
    "garbage .npy header": lambda: zip_bytes({"__architecture__.npy": b"\x93NUMPY garbage"}),
    # the architecture
    "no architecture": lambda: zip_bytes({"fc/W.npy": npy_bytes(np.zeros((2, 2)))}),
    "pickled architecture": lambda: zip_bytes({"__architecture__.npy": npy_bytes(np.array([Unpicklable()], dtype=object))}),
    "architecture not bytes": lambda: model_file(lambda a, z: z.__setitem__("__architecture__", np.zeros(3))),
    "architecture not utf-8": lambda: model_file(raw_architecture(b"\xff\xfe{}")),
    "architecture not json": lambda: model_file(raw_architecture(b"{layers: [")),
    "architecture nested too deeply": lambda: model_file(raw_architecture(b"[" * 100_000)),
    "architecture not a dict": lambda: model_file(raw_architecture(b"[1, 2]")),
    "unknown format": lambda: model_file(lambda a, z: a.__setitem__("format", "rcnn-core-model-v0")),
    "architecture lacks loss": lambda: model_file(lambda a, z: a.pop("loss")),
    "architecture has unknown key": lambda: model_file(lambda a, z: a.__setitem__("metrics", [])),
    "layers not a list": lambda: model_file(lambda a, z: a.__setitem__("layers", {"fc": {}})),
    # layer specs
    "layer spec not a dict": lambda: model_file(lambda a, z: a["layers"].__setitem__(1, "relu")),
    "layer spec lacks config": lambda: model_file(lambda a, z: spec(a, "fc").pop("config")),
    "layer spec lacks type": lambda: model_file(lambda a, z: spec(a, "fc").pop("type")),
    "layer spec lacks name": lambda: model_file(lambda a, z: a["layers"][1].pop("name")),
    "layer name not a string": lambda: model_file(lambda a, z: a["layers"][1].__setitem__("name", ["relu"])),
    "duplicate layer names": lambda: model_file(lambda a, z: spec(a, "relu").__setitem__("name", "flat")),
    "unknown layer type": lambda: model_file(lambda a, z: spec(a, "relu").__setitem__("type", "LSTM")),
    "layer type not a string": lambda: model_file(lambda a, z: spec(a, "relu").__setitem__("type", ["ReLU"])),
    "config not a dict": lambda: model_file(lambda a, z: spec(a, "fc").__setitem__("config", [64, 3])),
    # configs
    "unknown config key": lambda: model_file(edit_config("fc", "bias", False)),
    "config key params": lambda: model_file(edit_config("fc", "params", {})),
    "config for an argument-less layer": lambda: model_file(edit_config("relu", "inplace", True)),
    "missing config key": lambda: model_file(lambda a, z: spec(a, "fc")["config"].pop("out_features")),
    "infinite size": lambda: model_file(edit_config("fc", "in_features", float("inf"))),
    "NaN seed": lambda: model_file(edit_config("fc", "seed", float("nan"))),
    "NaN inside a list": lambda: model_file(edit_config("conv", "kernel_size", [3, float("nan")])),
    "negative size": lambda: model_file(edit_config("fc", "out_features", -3)),
    "zero size": lambda: model_file(edit_config("fc", "in_features", 0)),
    "fractional size": lambda: model_file(edit_config("fc", "in_features", 64.5)),
    "boolean size": lambda: model_file(edit_config("conv", "in_channels", True)),
    "string size": lambda: model_file(edit_config("fc", "in_features", "64")),
    "zero kernel": lambda: model_file(edit_config("conv", "kernel_size", [0, 3])),
    "three-sided kernel": lambda: model_file(edit_config("pool", "kernel_size", [2, 2, 2])),
    "unknown padding": lambda: model_file(edit_config("conv", "padding", "full")),
    "negative seed": lambda: model_file(edit_config("fc", "seed", -1)),
    "unknown init": lambda: model_file(edit_config("fc", "init", "glorot")),
    "integer dtype": lambda: model_file(edit_config("fc", "dtype", "int64")),
    "unknown dtype": lambda: model_file(edit_config("fc", "dtype", "float1024")),
    "pooling mode not a string": lambda: model_file(edit_config("pool", "mode", ["max"])),
    # arrays
    "missing array": lambda: model_file(lambda a, z: z.pop("fc/W")),
    "extra array of a layer": lambda: model_file(lambda a, z: z.__setitem__("fc/extra", np.zeros(3))),
    "array of no layer": lambda: model_file(lambda a, z: z.__setitem__("ghost/W", np.zeros(3))),
    "shape mismatch": lambda: model_file(lambda a, z: z.__setitem__("fc/W", z["fc/W"].T.copy())),
    "integer array": lambda: model_file(lambda a, z: z.__setitem__("fc/b", z["fc/b"].astype(np.int64))),
    "float32 array in a float64 layer": lambda: model_file(lambda a, z: z.__setitem__("fc/b", z["fc/b"].astype(np.float32))),
    "pickled object array": lambda: model_file(lambda a, z: z.__setitem__("fc/b", np.array([Unpicklable()] * 3, dtype=object))),
    "truncated array data": lambda: zip_bytes({"__architecture__.npy": npy_bytes(arch_array({})), "fc/W.npy": npy_header((64, 3)) + b"\0" * 8}),
    # loss and optimizer
    "unknown loss": lambda: model_file(lambda a, z: a.__setitem__("loss", "hinge")),
    "loss not a string": lambda: model_file(lambda a, z: a.__setitem__("loss", ["mse"])),
    "unknown optimizer": lambda: model_file(lambda a, z: a["optimizer"].__setitem__("type", "sgd")),
    "optimizer not a dict": lambda: model_file(lambda a, z: a.__setitem__("optimizer", "adam")),
    "optimizer lacks config": lambda: model_file(lambda a, z: a["optimizer"].pop("config")),
    "optimizer config not a dict": lambda: model_file(lambda a, z: a["optimizer"].__setitem__("config", [0.01])),
    "optimizer unknown key": lambda: model_file(lambda a, z: a["optimizer"]["config"].__setitem__("momentum", 0.9)),
    "optimizer negative lr": lambda: model_file(lambda a, z: a["optimizer"]["config"].__setitem__("lr", -1)),
    "optimizer NaN lr": lambda: model_file(lambda a, z: a["optimizer"]["config"].__setitem__("lr", float("nan"))),
    "optimizer lr a string (TypeError)": lambda: model_file(lambda a, z: a["optimizer"]["config"].__setitem__("lr", "fast")),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_model_files_raise_one_line_value_errors_naming_the_file(tmp_path, case):
    UNPICKLED.clear()
    load_error(tmp_path, MALFORMED[case]())
    assert not UNPICKLED


@pytest.mark.parametrize("case,fragment", [
    ("missing array", "layer 'fc' (FC) declares W of shape (64, 3) but the file has none"),
    ("shape mismatch", "layer 'fc' (FC) declares W of shape (64, 3) but the file has shape (3, 64)"),
    ("integer array", "layer 'fc' (FC) declares b as float64 but the file has int64"),
    ("unknown config key", "layer 'fc' (FC) has unknown config key(s) 'bias'"),
    ("zero kernel", "layer 'conv' (Conv2D)"),
    ("extra array of a layer", "layer 'fc' (FC) has no parameter for the array 'fc/extra'"),
    ("pickled object array", "array 'fc/b' is a pickled object array"),
])
def test_model_file_errors_name_the_layer(tmp_path, case, fragment):
    assert fragment in load_error(tmp_path, MALFORMED[case]())


def test_corrupted_model_files_raise_only_value_errors(tmp_path):
    """Random byte damage anywhere in a good file: ValueError naming the file, or a clean load."""
    good, rng, path = model_file(), np.random.default_rng(0), tmp_path / "m.npz"
    for _ in range(300):
        data = bytearray(good)
        pos = int(rng.integers(len(data)))
        if rng.random() < 0.5:
            data[pos] ^= int(rng.integers(1, 256))
        else:
            del data[pos : pos + int(rng.integers(1, 64))]
        path.write_bytes(bytes(data))
        try:
            Model.load(path)
        except ValueError as e:
            assert f"'{path}'" in str(e) and "\n" not in str(e), str(e)


def huge_fc_file(with_arrays: bool) -> bytes:
    """A file of a few hundred bytes declaring FC(10000, 10000): W alone would be 800 MB."""
    arch = {"format": "rcnn-core-model-v1", "loss": "mse", "optimizer": {"type": "adam", "config": {}},
            "layers": [{"name": "fc1", "type": "FC", "config": {"in_features": 10_000, "out_features": 10_000}}]}
    members = {"__architecture__.npy": npy_bytes(arch_array(arch))}
    if with_arrays:  # headers promising the full arrays, with almost no data behind them
        members["fc1/W.npy"] = npy_header((10_000, 10_000)) + b"\0" * 64
        members["fc1/b.npy"] = npy_header((10_000,)) + b"\0" * 64
    return zip_bytes(members)


@pytest.mark.parametrize("with_arrays", [False, True])
def test_load_checks_declared_sizes_before_allocating(tmp_path, with_arrays):
    data = huge_fc_file(with_arrays)
    assert len(data) < 2000
    tracemalloc.start()
    try:
        message = load_error(tmp_path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"loading a {len(data)}-byte file peaked at {peak / 2**20:.0f} MiB"
    expected = "is truncated" if with_arrays else "layer 'fc1' (FC) declares W of shape (10000, 10000) but the file has none"
    assert expected in message


def test_load_reads_each_array_once_and_draws_no_initial_weights(tmp_path):
    m = Model([("fc", FC(1000, 1000, seed=0))], "mse")
    path = m.save(tmp_path / "m.npz")
    tracemalloc.start()
    try:
        back = Model.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    nbytes = m["fc"].params["W"].nbytes
    # the parameters and their gradient buffers, not also random weights and copies
    assert peak < 2.5 * nbytes, f"peak {peak / nbytes:.1f} x the weights"
    np.testing.assert_array_equal(back["fc"].params["W"], m["fc"].params["W"])


def test_param_shapes_check_configs_without_allocating():
    assert FC.param_shapes(10**6, 10**6) == {"W": (10**6, 10**6), "b": (10**6,)}
    assert Conv2D.param_shapes(3, 8, (5, 3)) == {"W": (5, 3, 3, 8), "b": (8,)}
    assert MaxPool2D.param_shapes(2) == {} and ReLU.param_shapes() == {}
    with pytest.raises(ValueError, match="'in_features=0'"):
        FC.param_shapes(0, 3)
    with pytest.raises(ValueError, match="'dtype='int32''"):
        FC.param_shapes(2, 3, dtype="int32")
    layer = FC(3, 2, params={"W": np.ones((3, 2)), "b": np.zeros(2)})
    np.testing.assert_array_equal(layer.params["W"], np.ones((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        FC(3, 2, params={"W": np.ones((2, 3)), "b": np.zeros(2)})


def test_concurrent_saves_do_not_clobber_each_other(tmp_path, monkeypatch):
    barrier = threading.Barrier(2, timeout=30)
    savez = np.savez

    def savez_together(f, **arrays):
        barrier.wait()  # both saves have created their temporary files before either writes
        savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez_together)
    path, models, errors = tmp_path / "m.npz", [small_cnn(seed=1), small_cnn(seed=2)], []

    def save(m: Model) -> None:
        try:
            m.save(path)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    back = Model.load(path)
    assert any(np.array_equal(back["fc"].params["W"], m["fc"].params["W"]) for m in models)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = small_cnn(seed=1).save(tmp_path / "m.npz")
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        small_cnn(seed=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_model_gets_the_usual_permissions(tmp_path):
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    path = small_cnn().save(tmp_path / "m.npz")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


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
