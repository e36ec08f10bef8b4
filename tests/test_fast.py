"""Fast R-CNN (``--arch fast``): its parts against torchvision's, and training → model folder → detect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rcnn.boxes import decode
from rcnn.cli import main
from rcnn.fast import (FastConfig, build_net, cache_image, class_weight_tensor, flip_boxes, hard_negative_pool, roi_loss,
                       step_loss, train_fast_model)
from rcnn.model import ModelConfig, load_model

TINY = dict(weights="none", image_size=64, max_image_size=96, epochs=2, rois_per_image=16, hidden=32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_net(FastConfig(**TINY), n_classes=3).eval()


def test_predict_deltas_decode_like_torchvision_boxcoder(net):
    """Our (dx, dy, dw, dh) with unit weights + rcnn.boxes.decode must give torchvision's decoded boxes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)
    boxes = np.array([[2, 3, 40, 30], [10, 10, 70, 45], [0, 0, 80, 50]], np.float32)
    with torch.no_grad():
        for p in net.roi_heads.box_predictor.parameters():  # non-zero deltas
            p.normal_(0, 0.05)
    probs, deltas = net.predict(image, boxes)
    assert probs.shape == (3, 3) and deltas.shape == (3, 3, 4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    # the reference: torchvision's BoxCoder (weights 10, 10, 5, 5) on the raw regression, in resized pixels
    x, size = net.prepare(image)
    scale = torch.tensor([size[1] / 80, size[0] / 50] * 2)
    with torch.no_grad():
        _, regression = net.roi_outputs(net.late(net.early(x)), [torch.from_numpy(boxes) * scale], [size])
        ref = net.roi_heads.box_coder.decode(regression, [torch.from_numpy(boxes) * scale]) / scale  # [N, C, 4]
    ours = decode(np.repeat(boxes, 3, 0), deltas.reshape(-1, 4)).reshape(3, 3, 4)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-3)


def test_predict_without_boxes(net):
    probs, deltas = net.predict(np.zeros((20, 30, 3), np.uint8), np.zeros((0, 4), np.float32))
    assert probs.shape == (0, 3) and deltas.shape == (0, 3, 4)


def test_roi_loss_matches_torchvision_fastrcnn_loss():
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    g = torch.Generator().manual_seed(0)
    logits, regression = torch.randn(10, 3, generator=g), torch.randn(10, 12, generator=g)
    labels, targets = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 0]), torch.randn(10, 4, generator=g)
    ours = roi_loss(logits, regression, labels, targets, None)
    ref = fastrcnn_loss(logits, regression, [labels], [targets])
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])
    weighted = roi_loss(logits, regression, labels, targets, torch.tensor([1.0, 2.0, 0.5]))[0]
    torch.testing.assert_close(weighted, torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 0.5])))


def test_hard_negative_pool_keeps_iou_from_the_low_bound():
    from torchvision.ops import box_iou

    gt = torch.tensor([[10.0, 10, 50, 50]])
    props = torch.tensor([[10.0, 10, 50, 50], [30, 30, 70, 70], [45, 45, 90, 90], [60, 60, 99, 99]])
    kept = hard_negative_pool(props, gt, 0.1)
    iou = box_iou(props, gt)[:, 0]
    assert torch.equal(kept, props[iou >= 0.1]) and len(kept) == 2
    assert torch.equal(hard_negative_pool(props, gt[:0], 0.1), props)  # no objects: every proposal


def test_flip_boxes_mirrors_and_is_its_own_inverse():
    b = torch.tensor([[2.0, 3, 10, 20], [0, 0, 100, 5]])
    f = flip_boxes(b, 100.0)
    assert torch.equal(f, torch.tensor([[90.0, 3, 98, 20], [0, 0, 100, 5]]))
    assert torch.equal(flip_boxes(f, 100.0), b)


def test_cached_flip_is_the_mirrored_image(net):
    """The cached mirror features are those of the mirrored image, and step losses are finite."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    props = np.array([[0, 0, 30, 30], [5, 5, 40, 40], [40, 30, 64, 48]], np.float32)
    s = cache_image(net, image, "a", props, np.array([[4, 4, 36, 36]], np.float32), np.array([1]), FastConfig(**TINY))
    x, _ = net.prepare(np.ascontiguousarray(image[:, ::-1]))
    torch.testing.assert_close(s.features[1].float(), net.early(x).half().float())
    assert len(s.proposals) == 2  # the third overlaps the object at IoU < 0.1
    net.train()
    for flip in (False, True):
        cls, box = step_loss(net, s, flip, None, torch.device("cpu"))
        assert torch.isfinite(cls) and torch.isfinite(box) and cls > 0
    net.eval()


def test_class_weights_inverse_frequency():
    w = class_weight_tensor("auto", [torch.tensor([1, 1, 1, 2])], 3)
    assert w[0] == 1 and torch.isclose(w[1:].mean(), torch.tensor(1.0)) and torch.isclose(w[2] / w[1], torch.tensor(3.0))
    assert class_weight_tensor("none", [torch.tensor([1])], 2) is None


def test_config_is_validated():
    with pytest.raises(ValueError, match="image_size"):
        FastConfig(image_size=900, max_image_size=800)
    with pytest.raises(ValueError, match="backbone"):
        FastConfig(backbone="resnet9000")
    with pytest.raises(ValueError, match="class_weights"):
        FastConfig(class_weights="1,2")


def test_train_writes_a_model_folder_detect_knows(fast_model: Path, synth_parsed: Path, tmp_path: Path):
    """(``fast_model`` is the session fixture of conftest.py: TINY with 3 epochs.)"""
    cfg = ModelConfig.load(fast_model)
    assert cfg.arch == "fast" and cfg.classes[0] == "background" and cfg.max_size == 96 and cfg.input_size == 64
    report = json.loads((fast_model / "report.json").read_text())
    assert report["arch"] == "fast" and len(report["history"]) == 3 and 1 <= report["best_epoch"] <= 3
    assert set(report["val_recall"]) == set(cfg.classes)
    model = load_model(fast_model, "cpu")
    assert model.arch == "fast"
    from rcnn.parse import Dataset

    image = Dataset.load(synth_parsed).images[0].path
    res = CliRunner().invoke(main, ["detect", str(fast_model), image, "--out", str(tmp_path / "run"), "--threshold", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # every stored proposal is scored (up to 2000) by a fast model
    assert summary["per_image"][0]["proposals"] > 0 and summary["config"]["score_proposals"] == 2000
    assert summary["config"]["threshold"] == 0  # given; without it, 0.05 for a fast model
    dets = json.loads((tmp_path / "run" / "detections.json").read_text())
    assert dets and all(d["category"] in cfg.classes[1:] for d in dets)


def test_training_keeps_the_frozen_stages_statistics(fast_model: Path):
    """Caching the frozen stages runs them in eval mode: their BatchNorm statistics stay those the network was
    built with (here weights=none: mean 0, variance 1), so training features are what detection computes."""
    cfg = ModelConfig.load(fast_model)
    trained = load_model(fast_model, "cpu").net
    fresh = build_net(FastConfig(**{**TINY, "image_size": cfg.input_size, "max_image_size": cfg.max_size}), len(cfg.classes))
    frozen = [(n, b) for n, b in trained.named_buffers() if n.startswith("stages.") and int(n.split(".")[1]) < 3
              and n.endswith(("running_mean", "running_var"))]
    assert frozen
    ref = dict(fresh.named_buffers())
    for name, buf in frozen:
        torch.testing.assert_close(buf, ref[name], rtol=0, atol=0, msg=name)


def test_train_cli_picks_the_arch_from_its_input(synth_parsed: Path, synth_props: Path, synth_crops: Path, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(synth_parsed), "--out", str(tmp_path / "m"), "--proposals", str(synth_props),
                               "--weights", "none", "--image-size", "64", "--max-image-size", "96", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert ModelConfig.load(tmp_path / "m").arch == "fast"
    # a parsed file without proposals, rcnn-only options, and a crops folder with --arch fast: usage errors
    for args in (["--arch", "fast"], ["--arch", "fast", "--proposals", str(synth_props), "--patience", "3"],
                 ["--arch", "rcnn"]):
        res = runner.invoke(main, ["train", str(synth_parsed), "--out", str(tmp_path / "m2"), *args])
        assert res.exit_code == 2 and "Traceback" not in res.output, (args, res.output)
    res = runner.invoke(main, ["train", str(synth_crops), "--out", str(tmp_path / "m3"), "--arch", "fast",
                               "--proposals", str(synth_props)])
    assert res.exit_code == 2 and "parsed dataset file" in res.output
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_fast_proposals_must_come_from_the_images(synth_parsed: Path, synth_props: Path, tmp_path: Path):
    import shutil

    from rcnn.errors import DataError

    props = tmp_path / "props"
    shutil.copytree(synth_props, props)
    rec = next((props / "boxes").glob("*.json"))
    d = json.loads(rec.read_text())
    rec.write_text(json.dumps({**d, "image_sha1": "0" * 40}))
    with pytest.raises(DataError, match="were not computed from"):
        train_fast_model(synth_parsed, props, tmp_path / "m", FastConfig(**TINY), progress=False)


def test_evaluate_runs_a_fast_model_folder(fast_model: Path, synth_parsed: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", str(fast_model), str(synth_parsed), "--split", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert 0.0 <= report["map50"] <= 1.0 and set(report["ap50"]) == {"disc", "square"}
    summary = json.loads((tmp_path / "eval_detect" / "summary.json").read_text())
    assert summary["images"] == 3 and summary["failed"] == []


@pytest.mark.parametrize("per_step", [1, 2])
def test_a_diverging_loss_stops_with_a_message(per_step: int, synth_parsed: Path, synth_props: Path, tmp_path: Path):
    """Both training loops (one image a step; several, as the distributed one) refuse a non-finite loss."""
    from rcnn.errors import TrainingError

    config = FastConfig(**{**TINY, "epochs": 3, "lr": 1e30, "images_per_step": per_step})
    with pytest.raises(TrainingError, match=r"the training loss became (nan|inf) at epoch \d; lower --lr"):
        train_fast_model(synth_parsed, synth_props, tmp_path / "m", config, progress=False, echo=lambda _: None)
    assert not (tmp_path / "m" / "model.pt").exists()
