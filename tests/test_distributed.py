"""Distributed training (``rcnn.distributed``): torchrun's environment, the launcher's command line, and
DistributedDataParallel on two CPU (gloo) processes against one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rcnn import distributed as D
from rcnn.cli import main
from rcnn.fast import FastConfig, roi_loss, roi_loss_sums, train_fast_model
from tests.conftest import FAST_TINY

TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- pure parts


def test_only_torchrun_with_several_processes_makes_a_run_distributed():
    assert D.launched_by_torchrun({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "RANK": "1"})
    assert not D.launched_by_torchrun({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "1"})  # torchrun, one process
    assert not D.launched_by_torchrun({"WORLD_SIZE": "4", "RANK": "2"})  # a stray SLURM / Kubernetes environment
    assert not D.launched_by_torchrun({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "two"})
    assert not D.launched_by_torchrun({})


def test_worker_device():
    assert D.worker_device("cuda", 1, True) == "cuda:1"
    assert D.worker_device("auto", 3, True) == "cuda:3"
    assert D.worker_device("auto", 3, False) == "cpu"
    assert D.worker_device("cpu", 1, True) == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        D.worker_device("cuda", 0, False)
    with pytest.raises(ValueError, match="each worker takes cuda:LOCAL_RANK"):
        D.worker_device("cuda:1", 0, True)


def test_blocks_cover_the_range_in_order():
    blocks = [D.Dist(r, 3).block(10) for r in range(3)]
    assert [len(b) for b in blocks] == [4, 3, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(10))
    np.testing.assert_array_equal(D.Dist().block(5), np.arange(5))


@pytest.mark.parametrize("spec, kind, ids", [
    ("cuda:0,1", "cuda", (0, 1)), ("0,1,3", "cuda", (0, 1, 3)), ("cuda:2,cuda:0", "cuda", (2, 0)),
    ("cpu,cpu", "cpu", (0, 1)), ("cpu, cpu, cpu", "cpu", (0, 1, 2)),
])
def test_parse_device_list(spec, kind, ids):
    assert D.parse_device_list(spec) == D.DeviceList(kind, ids)


def test_parse_device_list_single_devices_and_errors():
    for one in (None, "cpu", "cuda", "cuda:1", "auto"):
        assert D.parse_device_list(one) is None
    for bad in ("cuda:0,cpu", "cuda:0,x", "gpu:0,1", "0,,1"):
        with pytest.raises(ValueError, match="is invalid"):
            D.parse_device_list(bad)
    with pytest.raises(ValueError, match="names a GPU twice"):
        D.parse_device_list("cuda:1,1")


def test_torchrun_command_rewrites_the_device():
    args = ["--out", "m", "--device", "cuda:0,1", "--epochs", "3", "--", "crops"]
    cmd = D.torchrun_command(args, D.DeviceList("cuda", (0, 1)), python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rcnn.cli", "train",
                   "--out", "m", "--device", "cuda", "--epochs", "3", "--", "crops"]
    cmd = D.torchrun_command(["--device=cpu,cpu,cpu", "x"], D.DeviceList("cpu", (0, 1, 2)), python="py")
    assert cmd[5] == "3" and cmd[-2:] == ["--device=cpu", "x"]


def test_visible_devices_are_numbered_within_the_current_ones():
    assert D.visible_devices([0, 1], None) == "0,1"
    assert D.visible_devices([1, 2], "4,5,7") == "5,7"


def test_train_device_list_launches_torchrun_with_the_same_settings(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(D, "launch", lambda args, devices: seen.update(args=args, devices=devices) or 0)
    crops = tmp_path / "crops"
    crops.mkdir()
    r = CliRunner().invoke(main, ["train", str(crops), "--out", str(tmp_path / "m"), "--device", "cpu,cpu", "--epochs", "3",
                                  "--lr", "0.002", "--no-hflip", "--fine-tune", "--resume"])
    assert r.exit_code == 0, r.output
    assert seen["devices"] == D.DeviceList("cpu", (0, 1))
    # in the command's parameter order; the defaults are left to the workers
    assert seen["args"] == ["--out", str(tmp_path / "m"), "--fine-tune", "--epochs", "3", "--lr", "0.002", "--no-hflip",
                            "--device", "cpu,cpu", "--resume", "--", str(crops)]
    cmd = D.torchrun_command(seen["args"], seen["devices"], python="py")
    assert cmd[cmd.index("--device") + 1] == "cpu"


def test_device_list_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    crops = tmp_path / "crops"
    crops.mkdir()
    r = CliRunner().invoke(main, ["train", str(crops), "--out", str(tmp_path / "m"), "--device", "cuda:0,1"])
    assert r.exit_code == 2 and "this machine has no CUDA GPU" in r.output and "Traceback" not in r.output
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(main, ["train", str(crops), "--out", str(tmp_path / "m"), "--device", "cpu,cpu"])
    assert r.exit_code == 2 and "under torchrun give --device cuda or cpu" in r.output
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    r = CliRunner().invoke(main, ["train", str(crops), "--out", str(tmp_path / "m"), "--device", "cpu,cpu"])
    assert r.exit_code == 2 and "torchrun (torch.distributed.run) is not found" in r.output


def test_roi_loss_sums_over_the_totals_are_roi_loss():
    g = torch.Generator().manual_seed(1)
    logits, regression = torch.randn(12, 3, generator=g), torch.randn(12, 12, generator=g)
    labels, targets = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 0, 1, 0]), torch.randn(12, 4, generator=g)
    for weight in (None, torch.tensor([1.0, 2.0, 0.5])):
        cls, box = roi_loss(logits, regression, labels, targets, weight)
        # split in two uneven parts, as two processes would hold them
        parts = [roi_loss_sums(logits[s], regression[s], labels[s], targets[s], weight) for s in (slice(0, 5), slice(5, 12))]
        totals = parts[0][2] + parts[1][2]
        torch.testing.assert_close((parts[0][0] + parts[1][0]) / totals[0], cls)
        torch.testing.assert_close((parts[0][1] + parts[1][1]) / totals[1], box)


def test_images_per_step_must_split_over_the_processes(synth_parsed, synth_props, tmp_path):
    from rcnn.fast import train_fast
    from rcnn.parse import Dataset
    from rcnn.propose import ProposalSet

    ds = Dataset.load(synth_parsed)
    with pytest.raises(ValueError, match="must be a multiple of the 2 processes"):
        train_fast(ds.split("train"), list(ds.classes), ProposalSet.load(synth_props), FastConfig(**FAST_TINY, images_per_step=3),
                   progress=False, dist=D.Dist(0, 2, 0, torch.device("cpu")))
    with pytest.raises(ValueError, match="exceeds the .* training images"):
        train_fast_model(synth_parsed, synth_props, tmp_path / "m", FastConfig(**FAST_TINY, images_per_step=99), progress=False,
                         echo=lambda _: None)


# --------------------------------------------------------------------------- two gloo processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fast_worker(rank: int, world: int, port: int, parsed: str, props: str, outs: list[str], settings: dict) -> None:
    """One torchrun-like worker: torchrun's environment, then the library call every rank makes."""
    os.environ.update(TORCHELASTIC_RUN_ID="test", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # each rank is given its own --out so that the test can see which ranks wrote one
    report = train_fast_model(parsed, props, outs[rank], FastConfig(**settings), progress=False, echo=lambda _: None)
    assert (report is not None) == (rank == 0)


@pytest.mark.slow
def test_fast_rcnn_ddp_on_two_processes_equals_one_process(synth_parsed, synth_props, tmp_path):
    """Two gloo processes, each taking one of a step's two images, train the weights one process does."""
    import torch.multiprocessing as mp

    settings = {**FAST_TINY, "epochs": 2, "images_per_step": 2}
    one = tmp_path / "one"
    torch.manual_seed(123)  # the library seeds itself: the global state must not matter
    single = train_fast_model(synth_parsed, synth_props, one, FastConfig(**settings), progress=False, echo=lambda _: None)
    outs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_fast_worker, args=(2, free_port(), str(synth_parsed), str(synth_props), outs, settings), nprocs=2)
    assert not Path(outs[1]).exists()  # only rank 0 writes a model folder
    a = torch.load(one / "model.pt", weights_only=True)
    b = torch.load(Path(outs[0]) / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    ddp = __import__("json").loads((Path(outs[0]) / "report.json").read_text())
    assert ddp["processes"] == 2 and ddp["best_epoch"] == single["best_epoch"]
    assert ddp["history"][0]["train_cls_loss"] == pytest.approx(single["history"][0]["train_cls_loss"], abs=1e-5)
    # and training did move the weights: the comparison is not of two untouched initialisations
    init = __import__("rcnn.fast", fromlist=["build_net"]).build_net(FastConfig(**settings), len(a["roi_heads.box_predictor.cls_score.bias"]))
    assert not torch.allclose(init.state_dict()["roi_heads.box_predictor.cls_score.weight"], a["roi_heads.box_predictor.cls_score.weight"])


def test_images_per_step_one_keeps_the_per_image_loop(monkeypatch, synth_parsed, synth_props, tmp_path):
    """The default (one image per step, one process) trains through the per-image step, not the batched one."""
    from rcnn import fast

    calls = []
    monkeypatch.setattr(fast, "sample_regions", lambda *a, **k: calls.append(1))
    train_fast_model(synth_parsed, synth_props, tmp_path / "m", FastConfig(**{**FAST_TINY, "epochs": 1}), progress=False,
                     echo=lambda _: None)
    assert not calls


# SGD (the default): features extracted in other batches, or on other thread counts (torchrun sets OMP_NUM_THREADS=1),
# differ in the last bits (~1e-6), and Adam's division by sqrt(v) blows such differences up in near-zero gradients
CLASSIC = dict(backbone="efficientnet_lite0", weights="none", epochs=3, batch_size=32, optimizer="sgd", lr=1e-2)


@pytest.mark.slow
def test_rcnn_train_device_cpu_cpu_splits_the_features_and_trains_like_one_process(synth_crops, tmp_path):
    """``rcnn train --device cpu,cpu`` (torchrun, two gloo processes): each extracts half the features,
    rank 0 trains the head; the features, weights and model folder are one process's."""
    from rcnn.train import TrainConfig, train

    one = tmp_path / "one"
    train(synth_crops, one, TrainConfig(**CLASSIC), progress=False)
    two = tmp_path / "two"
    args = ["train", str(synth_crops), "--out", str(two), "--device", "cpu,cpu", "--backbone", "efficientnet_lite0",
            "--weights", "none", "--epochs", "3", "--batch-size", "32", "--optimizer", "sgd", "--lr", "0.01"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # no file of another rank
    [f1], [f2] = sorted((one / "cache").glob("*.npy")), sorted((two / "cache").glob("*.npy"))
    assert f1.name == f2.name
    np.testing.assert_allclose(np.load(f2), np.load(f1), atol=1e-5, rtol=0)
    a, b = torch.load(one / "model.pt", weights_only=True), torch.load(two / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    r1 = __import__("json").loads((one / "report.json").read_text())
    r2 = __import__("json").loads((two / "report.json").read_text())
    assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=1e-5) and r2["best_epoch"] == r1["best_epoch"]


def _classic_worker(rank: int, world: int, port: int, crops: str, outs: list[str], settings: dict, resume: bool) -> None:
    os.environ.update(TORCHELASTIC_RUN_ID="test", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from rcnn.train import TrainConfig, train

    report = train(crops, outs[rank], TrainConfig(**settings), resume=resume, progress=False)
    assert (report is not None) == (rank == 0)


@pytest.mark.slow
def test_fine_tuning_under_ddp_resumes_every_rank_from_rank_0s_checkpoint(synth_crops, tmp_path):
    """The fine-tuned path steps on both processes; on resume rank 1, whose own --out is empty, gets rank 0's checkpoint."""
    import torch.multiprocessing as mp

    settings = {**CLASSIC, "freeze_backbone": False, "epochs": 1, "batch_size": 8, "input_size": 32}
    outs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_classic_worker, args=(2, free_port(), str(synth_crops), outs, settings, False), nprocs=2)
    first = torch.load(Path(outs[0]) / "checkpoint.pt", weights_only=False)
    mp.spawn(_classic_worker, args=(2, free_port(), str(synth_crops), outs, {**settings, "epochs": 2}, True), nprocs=2)
    assert not Path(outs[1]).exists()
    history = (Path(outs[0]) / "history.csv").read_text().splitlines()
    assert len(history) == 3  # epoch 1, then epoch 2 after the resume
    second = torch.load(Path(outs[0]) / "checkpoint.pt", weights_only=False)
    assert second["epoch"] == 2 and first["epoch"] == 1
    assert not torch.equal(first["net"]["head.1.weight"], second["net"]["head.1.weight"])


def test_fast_device_list_needs_images_per_step_that_splits(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "launch", lambda args, devices: pytest.fail("launched"))
    parsed = tmp_path / "parsed.json"
    parsed.write_text("{}")
    r = CliRunner().invoke(main, ["train", str(parsed), "--proposals", str(tmp_path), "--out", str(tmp_path / "m"),
                                  "--device", "cpu,cpu"])
    assert r.exit_code == 2 and "--images-per-step 1 does not split over 2 processes" in r.output
