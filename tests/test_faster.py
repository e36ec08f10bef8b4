"""Faster R-CNN (``--arch faster``): a tiny one trains on synthetic data, its RPN learns, detection runs without
selective search, and its model folder, CLI and torchrun paths behave as the other architectures'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rcnn.arch.faster.config import FasterConfig
from rcnn.arch.faster.train import train_faster_model
from rcnn.cli import main
from rcnn.detect import DetectConfig, detect
from rcnn.evaluate import evaluate, load_detections, voc_map50
from rcnn.model import load_model
from rcnn.parse import Dataset, parse_dataset

# ImageNet weights (offline), small images: the RPN and head learn the synthetic shapes in seconds
TINY = dict(val_fraction=0.25, image_size=160, max_image_size=224, epochs=6, rois_per_image=32, hidden=64, rpn_pre_nms_test=200,
            rpn_post_nms_test=200, rpn_pre_nms_train=300, rpn_post_nms_train=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    from rcnn.synth import make_dataset

    root = tmp_path_factory.mktemp("faster")
    ds = parse_dataset(make_dataset(root / "data", images=40, seed=5), test_fraction=0.25, seed=0)
    ds.save(root / "parsed.json")
    return ds, root / "parsed.json"


@pytest.fixture(scope="module")
def trained(data: tuple[Dataset, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "m"
    report = train_faster_model(data[1], out, FasterConfig(**TINY), progress=False, echo=lambda _: None)
    return out, report


def test_tiny_faster_rcnn_learns_proposals_and_detections(data, trained, tmp_path, monkeypatch):
    ds, _ = data
    folder, report = trained
    first, last = report["history"][0], report["history"][-1]
    # the RPN's losses fall (objectness from ~ln 2 for an untrained head), and the head's
    assert last["train_rpn_objectness"] < 0.5 * first["train_rpn_objectness"]
    assert last["train_rpn_box_loss"] < first["train_rpn_box_loss"]
    assert last["train_cls_loss"] < first["train_cls_loss"]
    maps = [h["val_map50"] for h in report["history"]]
    assert report["arch"] == "faster" and report["best_epoch"] == len(maps) - int(np.argmax(maps[::-1]))  # ties: the later

    def no_selective_search(*args, **kwargs):
        raise AssertionError("a faster model must not run selective search")

    monkeypatch.setattr("rcnn.proposer.selective_search", no_selective_search)
    model = load_model(folder, "cpu")
    test = [a.path for a in ds.split("test")]
    detect(model, test, tmp_path / "run", DetectConfig(), echo=lambda _: None)
    ev = evaluate(load_detections(tmp_path / "run" / "detections.json"), ds, "test")
    # chance is ~0 (random boxes almost never reach IoU 0.5 with the right class); the shapes are easy
    assert ev["map50"] >= 0.6, ev["ap50"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["score_proposals"] == 1000 and summary["config"]["runtime"] == "torch"


def test_rpn_proposals_cover_the_objects(data, trained):
    """The learned proposals find the test objects far better than the untrained network's (recall@0.5 of the first
    20, against torchvision's IoU; measured 0.55 against 0.10)."""
    from dataclasses import replace

    from torchvision.ops import box_iou

    from rcnn.arch.faster.network import FasterRCNN
    from rcnn.io import load_rgb

    ds, _ = data
    model = load_model(trained[0], "cpu")
    torch.manual_seed(0)
    untrained = replace(model, net=FasterRCNN(FasterConfig(**TINY), len(model.classes)).eval())

    def recall(m) -> float:
        best = []
        for a in ds.split("test"):
            boxes = m.spec.part("proposer")(m, load_rgb(a.path), 20)
            assert boxes.shape[1] == 4 and len(boxes) <= 20
            best.append(box_iou(torch.from_numpy(a.boxes()), torch.from_numpy(boxes)).max(1).values)
        return float((torch.cat(best) >= 0.5).float().mean())

    learned, before = recall(model), recall(untrained)
    assert learned >= 0.45 and learned >= before + 0.3, (learned, before)


def test_the_model_folder_reloads_the_same_network(trained, data):
    folder, _ = trained
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "faster" and config["train"]["anchor_sizes"] == list(FasterConfig().anchor_sizes)
    a, b = load_model(folder, "cpu"), load_model(folder, "cpu")
    image = (np.random.default_rng(0).random((120, 150, 3)) * 255).astype(np.uint8)
    for x, y in zip(a.net.detect(image, 50), b.net.detect(image, 50)):
        np.testing.assert_array_equal(x, y)


def test_voc_map50_matches_the_file_evaluation(data, trained, tmp_path):
    """The in-memory mAP training validates with equals `rcnn evaluate`'s on the same detections."""
    ds, _ = data
    detect(load_model(trained[0], "cpu"), [a.path for a in ds.split("test")], tmp_path / "run", echo=lambda _: None)
    dets = load_detections(tmp_path / "run" / "detections.json")
    classes = list(ds.classes)
    per_image, truths = [], []
    for a in ds.split("test"):
        mine = [d for d in dets if Path(d["file_name"]).stem == Path(a.path).stem]
        per_image.append((np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)], np.float32).reshape(-1, 4),
                          np.array([d["score"] for d in mine]), np.array([classes.index(d["category"]) + 1 for d in mine])))
        truths.append((a.boxes(), np.array([classes.index(o.label) + 1 for o in a.objects])))
    assert voc_map50(per_image, truths, len(classes) + 1) == pytest.approx(evaluate(dets, ds, "test")["map50"], abs=1e-4)


def test_cli_errors_are_one_line(data, trained, tmp_path):
    _, parsed = data
    r = CliRunner().invoke(main, ["train", str(parsed), "--arch", "faster", "--out", str(tmp_path / "m"),
                                  "--proposals", str(tmp_path)])
    assert r.exit_code == 2 and "--arch faster trains from a parsed dataset file" in r.output
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 48)).save(image)
    r = CliRunner().invoke(main, ["detect", str(trained[0]), str(image), "--out", str(tmp_path / "run"), "--runtime", "onnx"])
    assert r.exit_code != 0 and "--runtime onnx is not available for --arch faster" in r.output
    assert "Traceback" not in r.output
    for extra in (["--mode", "quality"], ["--max-side", "300"], ["--proposals", str(tmp_path)]):
        r = CliRunner().invoke(main, ["detect", str(trained[0]), str(image), "--out", str(tmp_path / "run2"), *extra])
        assert r.exit_code == 2 and f"{extra[0]} is for selective search; a faster model" in r.output, r.output
        assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("bad", [{"anchor_sizes": []}, {"anchor_ratios": [0.0]}, {"rpn_fg_iou": 0.2, "rpn_bg_iou": 0.3},
                                 {"rpn_batch": 0}, {"gt_jitter": -1}, {"gt_jitter_scale": 1.0}])
def test_bad_settings_are_refused(bad, trained, tmp_path):
    with pytest.raises(ValueError):
        FasterConfig(**bad)
    # and in a model folder's config.json: one line naming the file
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["train"].update(bad)
    (folder / "config.json").write_text(json.dumps(config))
    r = CliRunner().invoke(main, ["detect", str(folder), str(folder), "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "config.json" in r.output and "Traceback" not in r.output


def _faster_worker(rank: int, world: int, port: int, parsed: str, outs: list[str], settings: dict) -> None:
    os.environ.update(TORCHELASTIC_RUN_ID="test", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    report = train_faster_model(parsed, outs[rank], FasterConfig(**settings), progress=False, echo=lambda _: None)
    assert (report is not None) == (rank == 0)


@pytest.mark.slow
def test_faster_ddp_on_two_processes_equals_one_process(synth_parsed, tmp_path):
    """Two gloo processes, each taking one of a step's two images, train the weights one process does."""
    import torch.multiprocessing as mp

    from tests.test_distributed import free_port

    # one epoch: the best epoch is picked by the validation mAP of three images, whose ties last-bit differences of
    # the two runs' arithmetic may break differently
    settings = {**TINY, "weights": "none", "epochs": 1, "images_per_step": 2, "image_size": 64, "max_image_size": 96}
    single = train_faster_model(synth_parsed, tmp_path / "one", FasterConfig(**settings), progress=False, echo=lambda _: None)
    outs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_faster_worker, args=(2, free_port(), str(synth_parsed), outs, settings), nprocs=2)
    assert not Path(outs[1]).exists()
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(Path(outs[0]) / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    ddp = json.loads((Path(outs[0]) / "report.json").read_text())
    assert ddp["processes"] == 2 and ddp["history"][0]["train_rpn_objectness"] == pytest.approx(
        single["history"][0]["train_rpn_objectness"], abs=1e-5)
    # and training moved the RPN: the comparison is not of two untouched initialisations (seeded as training seeds)
    from rcnn.arch.faster.network import FasterRCNN

    torch.manual_seed(0)
    init = FasterRCNN(FasterConfig(**settings), len(a["roi_heads.box_predictor.cls_score.bias"])).state_dict()
    assert not torch.allclose(init["rpn.head.cls_logits.weight"], a["rpn.head.cls_logits.weight"])


def test_propose_with_a_faster_model_writes_its_rpn_proposals(data, trained, tmp_path):
    """`rcnn propose PARSED --model FASTER` stores the RPN's boxes as selective search's, with their recall."""
    from rcnn.io import load_rgb
    from rcnn.propose import ProposalSet, recall

    ds, parsed = data
    out = tmp_path / "props"
    r = CliRunner().invoke(main, ["propose", str(parsed), "--out", str(out), "--model", str(trained[0]), "--split", "test",
                                  "--max-proposals", "50"])
    assert r.exit_code == 0, r.output
    pset, model = ProposalSet.load(out), load_model(trained[0], "cpu")
    images = ds.split("test")
    expected = [model.net.propose(load_rgb(a.path), 50) for a in images]
    for a, boxes in zip(images, expected):
        np.testing.assert_allclose(pset.boxes(a.id), boxes, atol=1e-3)
    covered, total = recall([a.boxes() for a in images], expected, 0.5)
    assert json.loads((out / "report.json").read_text())["recall50"] == pytest.approx(covered / total, abs=1e-4)


def test_the_family_compares_fast_and_faster_on_one_split(synth_data, tmp_path):
    """`rcnn pipeline --arch fast,faster`: faster runs no propose stage, its proposal recall is its own RPN's and its
    detection seconds (with proposals) are its scoring seconds; compare.json carries both rows."""
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["pipeline", str(synth_data), "--out", str(out), "--arch", "fast,faster", "--epochs", "2",
                                  "--image-size", "128", "--no-report", "--max-side", "200", "--workers", "1"])
    assert r.exit_code == 0, r.output
    compare = json.loads((out / "compare.json").read_text())
    assert [row["arch"] for row in compare["archs"]] == ["fast", "faster"]
    faster = json.loads((out / "faster" / "metrics.json").read_text())
    assert faster["arch"] == "faster" and "propose" not in faster["seconds"]
    assert faster["detect_seconds_per_image_with_proposals"] == faster["detect_seconds_per_image"]
    assert 0.0 <= faster["proposal_recall50"] <= 1.0
    row = compare["archs"][1]
    assert row["map50"] == faster["map50"] and row["detect_seconds_per_image"] == faster["detect_seconds_per_image"]


def test_jittered_boxes_stay_within_the_stated_bounds():
    from torchvision.ops import box_iou

    from rcnn.arch.faster.train import jittered_boxes

    torch.manual_seed(0)
    gt = torch.tensor([[100.0, 100.0, 300.0, 250.0], [10.0, 10.0, 40.0, 30.0]])
    boxes = jittered_boxes(gt, 500, 0.1, (400, 500))
    assert boxes.shape == (1000, 4)
    own = box_iou(boxes, gt)[torch.arange(1000), torch.arange(2).repeat_interleave(500)]  # each copy vs its own box
    # centre moved by <= 0.1 of a side and sides scaled by [0.9, 1.1]: IoU >= (0.9 - 0.1) / 1.1 per axis, squared ...
    assert own.min() >= ((0.8 / 1.1) ** 2) - 1e-6 and own.max() < 1.0
    # ... and a spread of overlaps, not one box repeated
    assert own.std() > 0.02
    wh = boxes[:, 2:] - boxes[:, :2]
    ref = (gt[:, 2:] - gt[:, :2]).repeat_interleave(500, 0)
    assert ((wh / ref) >= 0.9 - 1e-5).all() and ((wh / ref) <= 1.1 + 1e-5).all()
    clipped = jittered_boxes(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), 200, 0.5, (40, 40))
    assert clipped.min() >= 0 and clipped[:, 2:].max() <= 40
    assert jittered_boxes(gt, 0, 0.1, (400, 500)).shape == (0, 4)
    assert jittered_boxes(gt[:0], 5, 0.1, (400, 500)).shape == (0, 4)


def test_a_parsed_file_without_objects_is_a_one_line_error_for_the_default(synth_parsed, tmp_path):
    """`rcnn train PARSED` (Faster R-CNN, the default) on a file whose images have no objects: one line, exit 1."""
    data = json.loads(synth_parsed.read_text())
    for image in data["images"]:
        image["objects"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(data))
    r = CliRunner().invoke(main, ["train", str(empty), "--out", str(tmp_path / "m"), "--epochs", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == "Error: training needs at least 2 images with objects in the parsed file's train split; got 0"
    assert not (tmp_path / "m" / "config.json").exists() and not (tmp_path / "m" / "model.pt").exists()  # no model
