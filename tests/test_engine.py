"""The training loop every architecture uses (``rcnn.engine``), against plain PyTorch written out by hand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rcnn.engine import Best, commit_trained, precision_recall, read_checkpoint, save_checkpoint, train_one_epoch
from rcnn.errors import DataError, TrainingError
from rcnn.model import ModelConfig, load_model


def batches(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(n)]


def test_train_one_epoch_is_the_plain_loop():
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, 2, 0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 2, 0.5)

    def loss_of(batch):
        loss = nn.functional.cross_entropy(a(batch[0]), batch[1])
        return loss, loss, (loss.item(), len(batch[1]))

    sums = train_one_epoch(opt_a, iter(batches()), loss_of, epoch=1, sched=sched)
    expected = np.zeros(2)
    for x, y in batches():  # the oracle: the loop written out
        loss = nn.functional.cross_entropy(b(x), y)
        expected += (loss.item(), len(y))
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
        sched_b.step()
    np.testing.assert_array_equal(sums, expected)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_non_finite_loss_stops_before_the_step_and_says_where():
    net = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []

    def loss_of(batch):
        seen.append(batch)
        loss = net(batch[0]).sum() * (float("nan") if len(seen) == 3 else 0.0)
        return loss, loss, (0.0,)

    with pytest.raises(TrainingError, match=r"^the training loss became nan at epoch 7, batch 3; lower --lr"):
        train_one_epoch(opt, iter(batches()), loss_of, epoch=7)
    assert len(seen) == 3  # it stopped there
    with pytest.raises(TrainingError, match=r"at epoch 7; lower --lr"):  # steps without batch numbers
        train_one_epoch(opt, iter(batches()), lambda b: (net(b[0]).sum() * float("inf"),) * 2 + ((0.0,),), epoch=7,
                        name_batches=False)
    for k, v in net.state_dict().items():  # zero losses stepped nothing, the nan one was refused
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_best_keeps_a_copy_of_the_lowest_epoch_only():
    net = nn.Linear(2, 1)
    best = Best()
    assert best.offer(0.5, 1, net) and not best.offer(0.7, 2, net) and not best.offer(0.5, 3, net)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)  # training goes on: the kept weights do not move
    assert (best.best_val_loss, best.best_epoch) == (0.5, 1)
    torch.testing.assert_close(best.best_net["weight"], kept["weight"], rtol=0, atol=0)
    assert best.offer(0.1, 4, net) and best.best_epoch == 4


def test_a_later_epoch_within_the_tolerance_of_the_lowest_is_kept():
    net = nn.Linear(2, 1)
    losses = [-0.70, -0.9174, -0.8977, -0.9149, -0.89, -0.85]  # minus validation mAPs, as Faster R-CNN offers them
    best = Best()
    kept = [best.offer(v, e, net, ties_to_later=True, tolerance=0.02) for e, v in enumerate(losses, 1)]
    # each later epoch is measured against the lowest seen (0.9174), not against the last kept one: no drift
    assert kept == [True, True, True, True, False, False] and best.best_epoch == 4 and best.lowest == -0.9174
    assert best.best_val_loss == -0.9149
    strict = Best()
    assert [strict.offer(v, e, net, ties_to_later=True) for e, v in enumerate(losses, 1)] == [True, True, False, False, False, False]


def test_precision_recall_against_counting():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # rows true, columns predicted; class 2 never seen
    precision, recall = precision_recall(cm, ["bg", "a", "b"])
    assert precision == {"bg": round(5 / 7, 4), "a": 0.75, "b": 0.0}
    assert recall == {"bg": round(5 / 6, 4), "a": 0.6, "b": 0.0}


def test_commit_trained_writes_the_report_files_and_the_record(tmp_path: Path, synth_model: Path):
    model = load_model(synth_model, "cpu")
    config = ModelConfig.load(synth_model)
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "seconds": 0.1}]
    (tmp_path / "a").mkdir()
    commit_trained(tmp_path / "a", config, model.net.state_dict(), {"k": 1}, history)
    (tmp_path / "b").mkdir()
    commit_trained(tmp_path / "b", ModelConfig.load(synth_model), model.net.state_dict(), {"k": 2})
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"model.pt", "report.json", "history.csv", "curves.png", "config.json"}
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"model.pt", "report.json", "config.json"}
    assert json.loads((tmp_path / "b" / "report.json").read_text()) == {"k": 2}
    assert set(json.loads((tmp_path / "a" / "config.json").read_text())["files"]) == {
        "model.pt", "report.json", "history.csv", "curves.png"}
    load_model(tmp_path / "b", "cpu")  # a complete model folder


@dataclass
class Settings:
    lr: float = 0.1
    epochs: int = 3


def test_a_checkpoint_resumes_only_with_the_same_settings(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(DataError, match="nothing to resume"):
        read_checkpoint(path, Settings())
    ckpt = {"net": {}, "optimizer": {}, "epoch": 2, "best_val_loss": 0.3, "best_epoch": 1, "history": [],
            "config": {"lr": 0.1, "epochs": 3}}
    save_checkpoint(path, ckpt)
    assert read_checkpoint(path, Settings(epochs=9), free=("epochs",))["epoch"] == 2  # how long may change
    with pytest.raises(DataError, match="settings differ"):
        read_checkpoint(path, Settings(lr=0.2), free=("epochs",))
    save_checkpoint(path, {"net": {}})
    with pytest.raises(DataError, match="not a training checkpoint"):
        read_checkpoint(path, Settings())
