"""rcnn.core.resnet: separability indices against loop oracles, the variants' structure, the data readers, a short study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rcnn.core.resnet import (NORMS, PATHS, SHORTCUTS, MyResNet, ResidualBlock, ResNetConfig, balanced_subset,
                              class_separability_index, load_data, make_digits, nearest_other, parse_variant,
                              read_cifar_batch, separability_index)
from rcnn.core.resnet.cli import main
from rcnn.core.resnet.model import inner_width, make_norm
from rcnn.errors import DataError

# --------------------------------------------------------------------------- oracles: plain loops, float64


def si_loop(x: np.ndarray, y: np.ndarray) -> float:
    x = x.reshape(len(x), -1).astype(np.float64)
    hits = 0
    for i in range(len(x)):
        best, best_j = math.inf, -1
        for j in range(len(x)):
            if j != i:
                d = math.sqrt(float(((x[i] - x[j]) ** 2).sum()))
                if d < best:
                    best, best_j = d, j
        hits += int(y[best_j] == y[i])
    return hits / len(x)


def csi_loop(x: np.ndarray, y: np.ndarray) -> float:
    x = x.reshape(len(x), -1).astype(np.float64)
    classes = sorted(set(y.tolist()))
    centres = {c: x[y == c].mean(0) for c in classes}
    hits = 0
    for i in range(len(x)):
        nearest = min(classes, key=lambda c: float(((x[i] - centres[c]) ** 2).sum()))
        hits += int(nearest == y[i])
    return hits / len(x)


@pytest.mark.parametrize("seed", range(4))
def test_si_and_csi_equal_the_loop_oracles_on_random_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((70, 2, 3)).astype(np.float32)  # flattened to D = 6
    y = rng.integers(0, 3, 70)
    x[y == 1] += 0.7  # partly separable, so the values are neither 0 nor 1
    si, csi = si_loop(x, y), csi_loop(x, y)
    assert 0.2 < si < 0.95 and 0.2 < csi < 0.95
    assert separability_index(x, y, chunk=16) == si
    assert class_separability_index(x, y, chunk=16) == csi
    assert separability_index(torch.from_numpy(x), torch.from_numpy(y)) == si  # tensors too


def test_si_is_one_for_well_separated_clusters_and_about_one_over_k_for_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 100
    y = np.repeat(np.arange(4), 50)
    x = centres[y] + rng.standard_normal((200, 16))
    assert separability_index(x, y) == 1.0
    assert class_separability_index(x, y) == 1.0
    k, n = 4, 4000
    noise = rng.standard_normal((n, 8))
    labels = rng.permutation(np.repeat(np.arange(k), n // k))
    assert abs(separability_index(noise, labels, chunk=512) - 1 / k) < 0.03


def test_chunked_equals_unchunked_exactly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((333, 40)).astype(np.float32)
    y = rng.integers(0, 5, 333)
    whole = nearest_other(x, chunk=len(x))
    for chunk in (1, 7, 100, 332):
        assert torch.equal(nearest_other(x, chunk=chunk), whole), chunk
        assert separability_index(x, y, chunk=chunk) == separability_index(x, y, chunk=len(x))
        assert class_separability_index(x, y, chunk=chunk) == class_separability_index(x, y, chunk=len(x))
    brute = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    np.fill_diagonal(brute, np.inf)
    assert (whole.numpy() == brute.argmin(1)).mean() == 1.0


def test_duplicates_count_as_neighbours_but_never_the_sample_itself():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.1, 5.0]])
    assert nearest_other(x).tolist() == [1, 0, 3, 2]
    assert separability_index(x, np.array([0, 1, 2, 2])) == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        separability_index(x[:1], np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        separability_index(x, np.array([0, 1]))


def test_balanced_subset_takes_the_same_number_from_each_class():
    y = np.array([0] * 100 + [1] * 60 + [2] * 40)
    idx = balanced_subset(y, 0.3, seed=0)
    assert np.bincount(y[idx]).tolist() == [20, 20, 20]  # round(0.3 · 200 / 3) = 20 each
    assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
    assert np.bincount(y[balanced_subset(y, 1.0)]).tolist() == [40, 40, 40]  # capped by the smallest class
    assert not np.array_equal(balanced_subset(y, 0.3, seed=1), idx)
    with pytest.raises(ValueError):
        balanced_subset(y, 0.0)


# --------------------------------------------------------------------------- the network's variants


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("paths", PATHS)
def test_every_variant_runs_forward_and_backward(norm, shortcut, paths):
    torch.manual_seed(0)
    model = MyResNet(ResNetConfig(norm=norm, shortcut=shortcut, paths=paths, width=8, blocks=(1, 1)))
    x = torch.rand(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    kinds = {type(m) for m in model.modules()}
    assert (nn.BatchNorm2d in kinds) == (norm == "batch")
    assert (nn.GroupNorm in kinds) == (norm in ("group", "layer"))


def test_the_plain_network_has_no_skip():
    torch.manual_seed(0)
    same = dict(c_in=8, c_out=8, stride=1, norm="batch", paths=1)
    with_skip, plain = ResidualBlock(shortcut="identity", **same).eval(), ResidualBlock(shortcut="none", **same).eval()
    plain.load_state_dict(with_skip.state_dict())  # the same weights: identity has no parameters
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(with_skip(x), nn.functional.elu(with_skip.body(x) + x))
    torch.testing.assert_close(plain(x), nn.functional.elu(plain.body(x)))
    assert plain.shortcut is None
    # whole networks: the plain one, given the residual one's weights, computes something else
    net = MyResNet(ResNetConfig(width=8, blocks=(2, 1))).eval()
    plain_net = MyResNet(ResNetConfig(width=8, blocks=(2, 1), shortcut="none")).eval()
    missing, unexpected = plain_net.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(".shortcut." in k for k in unexpected) and unexpected  # only the projection is extra
    x = torch.rand(2, 3, 32, 32)
    assert (net(x) - plain_net(x)).abs().max() > 1e-3
    conv1x1 = MyResNet(ResNetConfig(width=8, blocks=(2, 1), shortcut="conv1x1"))
    assert all(isinstance(b.shortcut, nn.Sequential) for b in (conv1x1.block1, conv1x1.block2, conv1x1.block3))
    assert isinstance(net.block1.shortcut, nn.Identity) and isinstance(net.block3.shortcut, nn.Sequential)


@pytest.mark.parametrize("paths", [2, 4])
def test_paths_use_grouped_convolutions_at_about_the_same_parameter_count(paths):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    one, many = MyResNet(ResNetConfig(paths=1)), MyResNet(ResNetConfig(paths=paths))
    groups = {m.groups for m in many.modules() if isinstance(m, nn.Conv2d)}
    assert groups == {1, paths}
    assert {m.groups for m in one.modules() if isinstance(m, nn.Conv2d)} == {1}
    assert abs(count(many) / count(one) - 1) < 0.15, (count(many), count(one))
    assert count(many) != count(one)  # a different network, not the same one renamed
    assert inner_width(16, 16, 4) % 4 == 0 and inner_width(16, 16, 1) == 16


def test_group_norm_with_one_group_is_layer_norm_over_chw():
    torch.manual_seed(0)
    gn, ln = make_norm("layer", 6), nn.LayerNorm([6, 5, 7])
    with torch.no_grad():
        gn.weight.copy_(torch.randn(6))
        gn.bias.copy_(torch.randn(6))
        ln.weight.copy_(gn.weight[:, None, None].expand(6, 5, 7))
        ln.bias.copy_(gn.bias[:, None, None].expand(6, 5, 7))
    x = torch.randn(4, 6, 5, 7) * 3 + 1
    torch.testing.assert_close(gn(x), ln(x), rtol=1e-5, atol=1e-5)
    group = make_norm("group", 16, 8)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 8
    assert make_norm("group", 12, 8).num_groups == 4  # a divisor of the channels


def test_configs_refuse_bad_values_with_the_allowed_set():
    with pytest.raises(ValueError, match="valid norms are none, batch, group, layer"):
        ResNetConfig(norm="instance")
    with pytest.raises(ValueError, match="paths"):
        ResNetConfig(paths=3)
    assert parse_variant("layer-none-p4") == {"norm": "layer", "shortcut": "none", "paths": 4}
    assert ResNetConfig(**parse_variant("group-conv1x1-p2")).variant == "group-conv1x1-p2"
    with pytest.raises(ValueError, match="NORM-SHORTCUT-pPATHS"):
        parse_variant("batch-identity")


# --------------------------------------------------------------------------- data


def write_cifar(root: Path, n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small CIFAR-10 binary distribution: n records per file; returns the test batch's (labels, RGB planes)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        planes = rng.integers(0, 256, (n, 3 * 1024)).astype(np.uint8)
        np.concatenate([labels[:, None], planes], 1).tofile(root / name)
    (root / "batches.meta.txt").write_text("\n".join(f"class{k}" for k in range(10)) + "\n\n")
    return labels, planes


def test_cifar_binary_records_are_label_then_rgb_planes(tmp_path):
    labels, planes = write_cifar(tmp_path / "cifar-10-batches-bin")
    d = load_data(tmp_path)  # the parent of cifar-10-batches-bin works too
    assert d.source == "cifar10-bin" and d.classes == [f"class{k}" for k in range(10)]
    assert d.train.images.shape == (20, 3, 32, 32) and d.test.images.dtype == np.uint8
    assert d.test.labels.tolist() == labels.tolist()
    assert np.array_equal(d.test.images[2, 0].ravel(), planes[2, :1024])  # red plane, row by row
    assert np.array_equal(d.test.images[2, 2, 31], planes[2, 2048 + 31 * 32:])  # last row of the blue plane
    assert load_data(tmp_path / "cifar-10-batches-bin").train.images.shape[0] == 20


def test_broken_cifar_files_give_one_line_errors(tmp_path):
    write_cifar(tmp_path / "c")
    test_batch = tmp_path / "c" / "test_batch.bin"
    test_batch.write_bytes(test_batch.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"test_batch.bin has 12287 bytes, not a whole number of 3073-byte"):
        load_data(tmp_path / "c")
    bad = np.zeros(3073, np.uint8)
    bad[0] = 12
    bad.tofile(tmp_path / "bad.bin")
    with pytest.raises(DataError, match="label 12"):
        read_cifar_batch(tmp_path / "bad.bin")
    (tmp_path / "c" / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="not found.*data_batch_3.bin"):
        load_data(tmp_path / "c")


def test_imagefolder_and_generated_digits(tmp_path):
    out = make_digits(tmp_path / "digits", limit=60, seed=1)
    d = load_data(out)
    assert d.source == "imagefolder" and d.classes == [str(k) for k in range(10)]
    assert len(d.train) + len(d.test) == 60 and np.bincount(d.test.labels).tolist() == [2] + [1] * 9  # 20% of each digit (8, 6, 7, 5, 4, ...), at least one
    assert d.train.images.shape[1:] == (3, 32, 32)
    assert set(np.unique(d.train.labels)) <= set(range(10))
    # one tree without train/ and test/: split by a seeded fraction, per class
    from PIL import Image

    for k in range(12):
        path = tmp_path / "tree" / ("a" if k % 2 else "b") / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (k * 20, 0, 0)).save(path)
    tree = load_data(tmp_path / "tree")
    assert tree.classes == ["a", "b"] and (len(tree.train), len(tree.test)) == (10, 2)
    Image.new("RGB", (31, 32)).save(tmp_path / "tree" / "a" / "odd.png")
    with pytest.raises(DataError, match="odd.png is 31x32, not 32x32"):
        load_data(tmp_path / "tree")


def test_cli_refuses_data_that_is_neither_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert "neither a cifar-10-batches-bin folder" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--variant", "batch"])
    assert res.exit_code == 2 and "NORM-SHORTCUT-pPATHS" in res.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("x")
    write_cifar(tmp_path / "cifar")
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "cifar"), "--out", str(tmp_path / "taken")])
    assert res.exit_code == 1 and "rcnn did not write" in res.output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "x"


def test_help_defaults_are_the_library_defaults():
    from rcnn.cli import LibraryOption, library_default

    checked = 0
    for name, cmd in main.commands.items():
        res = CliRunner().invoke(main, [name, "--help"], terminal_width=10_000)
        assert res.exit_code == 0
        for p in cmd.params:
            if isinstance(p, LibraryOption):
                default = library_default(p.source, p.name)
                text = (p.opts if default else p.secondary_opts)[0].lstrip("-") if p.is_flag else str(default)
                assert f"[default: {text}" in " ".join(res.output.split()), (name, p.opts)
                assert p.default is None
                checked += 1
    assert checked >= 16


# --------------------------------------------------------------------------- a short study, end to end


@pytest.mark.slow
def test_a_short_run_learns_and_its_last_hidden_layer_separates_better_than_the_input(tmp_path):
    data = make_digits(tmp_path / "digits", limit=TRAIN_IMAGES, seed=0)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(run), *TRAIN_ARGS, "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "report.json").read_text())
    assert report["test_accuracy"] > 0.5, report  # chance: 0.1
    history = json.loads((run / "history.json").read_text())
    assert report["best_val_accuracy"] == max(h["val_accuracy"] for h in history)
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    # the kept weights are the best epoch's: the loaded model scores the reported test accuracy
    from rcnn.core.resnet import load_run
    from rcnn.core.resnet.train import evaluate_accuracy

    model, cfg = load_run(run)
    d = load_data(data)
    _, acc = evaluate_accuracy(model, torch.from_numpy(d.test.images), torch.from_numpy(d.test.labels))
    assert acc == report["test_accuracy"]
    res = CliRunner().invoke(main, ["separability", str(run), "--fraction", "0.5", "-q", "--compare", str(tmp_path / "cmp.png")])
    assert res.exit_code == 0, res.output
    table = json.loads((run / "separability.json").read_text())
    rows = {r["layer"]: r for r in table["layers"]}
    assert list(rows) == model.layer_names() and rows["input"]["features"] == 3 * 32 * 32
    assert rows["pool"]["si_test"] > rows["input"]["si_test"] + 0.1, rows
    assert rows["pool"]["si_train"] > rows["input"]["si_train"], rows
    assert (run / "separability.csv").read_text().startswith("layer,features,si_train,csi_train,si_test,csi_test")
    assert (run / "separability.png").stat().st_size > 1000 and (tmp_path / "cmp.png").stat().st_size > 1000
    assert "| pool |" in res.output


TRAIN_IMAGES = 0  # all 1,797 digits: 1,292 to train on, 145 to validate, 360 to test
TRAIN_ARGS = ["--width", "8", "--blocks", "1,1,1", "--epochs", "5", "--batch-size", "32", "--lr", "3e-3", "--device", "cpu"]
