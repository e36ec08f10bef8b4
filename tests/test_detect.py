from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.detect import DetectConfig, next_run_dir, score_regions, select_detections
from rcnn.io import load_rgb
from rcnn.model import load_model
from rcnn.parse import Dataset

CLASSES = ["background", "cat", "dog"]


def test_select_detections_nms_is_class_wise():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [0, 0, 100, 100], [300, 300, 400, 400]], np.float32)
    scores = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [0.6, 0.4, 0.0]], np.float32)
    dets = select_detections(boxes, scores, CLASSES, DetectConfig(threshold=0.5, nms_iou=0.3))
    assert [(d.label, d.score) for d in dets] == [("cat", 0.9), ("dog", 0.7)]  # box 1 suppressed, box 3 below threshold
    dets = select_detections(boxes, scores, CLASSES, DetectConfig(threshold=0.35, nms_iou=0.3, max_detections=2))
    assert [d.score for d in dets] == [0.9, 0.7]
    assert select_detections(np.zeros((0, 4)), np.zeros((0, 3)), CLASSES, DetectConfig(threshold=0.3)) == []


def test_no_nms_would_keep_every_box():
    """The reference pipeline's fault: dozens of boxes on one object. NMS leaves one."""
    rng = np.random.default_rng(0)
    boxes = np.array([[100, 100, 200, 200]], np.float32) + rng.uniform(-5, 5, (40, 4)).astype(np.float32)
    scores = np.column_stack([np.full(40, 0.05), rng.uniform(0.85, 0.95, 40)]).astype(np.float32)
    dets = select_detections(boxes, scores, ["background", "cat"], DetectConfig(threshold=0.8))
    assert len(dets) == 1 and dets[0].score == pytest.approx(scores[:, 1].max(), abs=1e-5)


def test_run_folders_are_numbered_and_created(tmp_path):
    assert next_run_dir(tmp_path) == tmp_path / "predict"
    assert next_run_dir(tmp_path) == tmp_path / "predict2"
    (tmp_path / "predict4").mkdir()  # someone else's folder is skipped, never shared
    assert next_run_dir(tmp_path) == tmp_path / "predict3"
    assert next_run_dir(tmp_path) == tmp_path / "predict5"
    assert all((tmp_path / n / ".rcnn.json").is_file() for n in ("predict", "predict2", "predict3", "predict5"))


def test_concurrent_runs_never_share_a_folder(tmp_path):
    """Issue 9.5: check-then-create let two runs started together both write `predict`."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: next_run_dir(tmp_path), range(32)))
    assert len(set(dirs)) == 32


def test_batched_scores_equal_one_region_at_a_time(synth_model, synth_parsed):
    model = load_model(synth_model)
    ds = Dataset.load(synth_parsed)
    image = load_rgb(ds.images[1].path)
    boxes = np.array([[10, 10, 80, 90], [50, 40, 200, 180], [0, 0, 320, 240], [100, 100, 140, 130]], np.float32)
    batched, deltas = score_regions(model, image, boxes, batch_size=32)
    single = np.concatenate([score_regions(model, image, boxes[i : i + 1], batch_size=1)[0] for i in range(len(boxes))])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert deltas.shape == (4, 3, 4)


def test_detect_cli_writes_run_folder_and_skips_bad_images(tmp_path, synth_model, synth_data):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.jpg").write_bytes(b"not an image")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(images), "--out", str(run), "--save-xml", "--threshold", "0.3"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "broken.jpg" in res.output and "skipped" in res.output
    assert "results saved to" in res.output
    dets = json.loads((run / "detections.json").read_text())
    assert isinstance(dets, list)
    for d in dets:
        assert {"image_id", "category_id", "bbox", "score"} <= set(d)
        assert len(d["bbox"]) == 4 and d["bbox"][2] > 0 and d["bbox"][3] > 0
    assert len(list(run.glob("*.jpg"))) == 3 and len(list((run / "labels").glob("*.xml"))) == 3
    assert (run / "detections.csv").read_text().startswith("image,label,score")


def test_detect_cli_missing_input_is_one_line(tmp_path, synth_model):
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(tmp_path / "nope*.jpg"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "no such file, folder or pattern" in res.output


def test_evaluate_cli_contract(tmp_path, synth_model, synth_parsed, synth_data):
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(synth_data / "JPEGImages"), "--out", str(run), "--no-images"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["evaluate", str(run / "detections.json"), str(synth_parsed), "--split", "test"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "evaluation.json").read_text())
    assert 0.0 <= report["map50_95"] <= report["map50"] <= 1.0
    assert report["n_images"] == 3
    assert (run / "evaluation.pr.png").is_file()


def test_box_regression_moves_boxes_by_the_class_deltas():
    boxes = np.array([[10, 10, 50, 50]], np.float32)
    scores = np.array([[0.1, 0.9, 0.0]], np.float32)
    deltas = np.zeros((1, 3, 4), np.float32)
    deltas[0, 1] = [0.25, 0.0, np.log(2), 0.0]  # the cat column: shift right by a quarter width, double the width
    deltas[0, 2] = [5, 5, 5, 5]  # the dog column must not be used
    (d,) = select_detections(boxes, scores, CLASSES, DetectConfig(threshold=0.3), deltas, (200, 200))
    np.testing.assert_allclose(d.box, [0, 10, 80, 50], atol=1e-3)  # centre 30 -> 40, width 40 -> 80
    (d,) = select_detections(boxes, scores, CLASSES, DetectConfig(threshold=0.3, box_regression=False), deltas, (200, 200))
    assert d.box == [10, 10, 50, 50]


def test_detection_settings_resolve_by_architecture():
    assert DetectConfig().resolved("rcnn").threshold == 0.3 and DetectConfig().resolved("rcnn").score_proposals == 500
    assert DetectConfig().resolved("fast").threshold == 0.05 and DetectConfig().resolved("fast").score_proposals == 2000
    given = DetectConfig(threshold=0.5, score_proposals=10)
    assert given.resolved("fast") == given.resolved("rcnn") == given
    with pytest.raises(ValueError, match="resolved"):
        select_detections(np.zeros((1, 4)), np.zeros((1, 3)), CLASSES, DetectConfig())


def test_box_voting_averages_overlapping_boxes_by_score():
    from rcnn.detect import vote_boxes

    boxes = np.array([[0, 0, 100, 100], [10, 0, 110, 100], [0, 0, 90, 100], [300, 300, 400, 400]], np.float32)
    scores = np.array([0.6, 0.3, 0.1, 0.9], np.float32)
    labels = np.array([0, 0, 1, 0])
    out = vote_boxes(boxes, scores, labels, np.array([3, 0]), 0.5)
    np.testing.assert_allclose(out[0], boxes[3])  # nothing overlaps it
    # box 2 is another class; box 1 overlaps box 0 at IoU 0.82: (0.6 * b0 + 0.3 * b1) / 0.9
    np.testing.assert_allclose(out[1], (0.6 * boxes[0] + 0.3 * boxes[1]) / 0.9, rtol=1e-5)
    assert vote_boxes(boxes, scores, labels, np.zeros(0, np.int64), 0.5).shape == (0, 4)


def test_unavailable_device_is_a_usage_error(synth_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(tmp_path), "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA GPU" in res.output
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(tmp_path), "--device", "tpu"])
    assert res.exit_code == 2 and "'device=tpu' is invalid" in res.output


def test_evaluate_runs_a_model_folder(tmp_path, synth_model, synth_parsed):
    out = tmp_path / "eval" / "report.json"
    res = CliRunner().invoke(main, ["evaluate", str(synth_model), str(synth_parsed), "--split", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "eval" / "report_detect" / "detections.json").is_file()  # its own folder, never --out's
    report = json.loads(out.read_text())
    assert report["n_images"] == 3 and 0.0 <= report["map50"] <= 1.0
    assert json.loads(res.output.strip().splitlines()[-2]) == {"map50": report["map50"], "map50_95": report["map50_95"]}


def test_draw_detections_draws_class_coloured_labelled_boxes():
    from rcnn.detect import PALETTE, Detection, draw_detections

    image = np.full((240, 320, 3), 90, np.uint8)
    dets = [Detection("cat", 0.87, [10.0, 20.0, 120.0, 150.0]), Detection("dog", 0.5, [150.5, 60.0, 300.0, 200.0])]
    out = draw_detections(image, dets, CLASSES)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 90).all()  # the input is not drawn on
    assert tuple(out[80, 10]) == PALETTE[1] and tuple(out[130, 150]) == PALETTE[2]  # left edges, in each class's colour
    assert tuple(out[100, 60]) == (90, 90, 90)  # inside the box: untouched
    labels = out[20:35, 10:60]
    assert (labels.min(axis=2) > 200).any()  # white label text on the box colour
    empty = draw_detections(image, [], CLASSES)
    assert np.array_equal(empty, image) and empty is not image
