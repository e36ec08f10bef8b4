from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from rcnn.cli import main
from rcnn.crop import CropConfig
from rcnn.detect import DetectConfig
from rcnn.pipeline import PipelineConfig, StageTimer
from rcnn.train import TrainConfig

METRICS_KEYS = {"format", "map50", "map50_95", "ap50", "proposal_recall50", "proposal_recall70", "scored_proposal_recall50",
                "n_test_images", "n_train_images", "val_recall", "val_precision", "detect_seconds_per_image",
                "detect_seconds_per_image_with_proposals", "model_mb", "seconds", "arch", "backbone", "config"}


def test_pipeline_on_layout_without_imagesets(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data / "Annotations", data / "annotations")
    shutil.copytree(synth_data / "JPEGImages", data / "images")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["pipeline", str(data), "--out", str(out), "--arch", "rcnn", "--epochs", "3", "--size", "64",
                                    "--neg-per-image", "16", "--max-side", "200", "--test-fraction", "0.25", "--optimizer", "adam"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == METRICS_KEYS and m["format"] == "rcnn-metrics-v1" and m["backbone"] == "efficientnet_lite0"
    assert m["arch"] == "rcnn" and m["config"]["arch"] == "rcnn"
    assert m["config"]["train"]["optimizer"] == "adam" and m["config"]["crop"]["size"] == 64
    assert "propose" not in m["config"]["detect"] and m["config"]["detect"]["score_proposals"] == 500
    assert m["config"]["detect"]["threshold"] == 0.3  # resolved for the architecture
    assert m["n_test_images"] == 3  # 25% of 12 images, deterministic split
    assert set(m["seconds"]) == {"parse", "propose", "crop", "train", "detect", "evaluate", "total"}
    assert m["seconds"]["total"] >= sum(v for k, v in m["seconds"].items() if k != "total") - 0.1
    assert m["n_train_images"] == 9 and 0.0 <= m["scored_proposal_recall50"] <= m["proposal_recall50"]
    assert 0.0 <= m["map50_95"] <= m["map50"] <= 1.0 and m["proposal_recall50"] > 0.8
    assert (out / "detect" / "detections.json").is_file() and (out / "pr_curve.png").is_file()
    assert "Traceback" not in res.output
    # the classic trainer has no images to fit post-processing on: the pipeline fits it on the ones it held out
    model = json.loads((out / "model" / "config.json").read_text())
    held_out = json.loads((out / "model" / "report.json").read_text())["val_images"]
    assert model["postprocess"]["images"] == len(held_out) >= 1 and "post-processing fitted on" in res.output
    assert (m["config"]["detect"]["nms_iou"], m["config"]["detect"]["vote_iou"]) == (
        model["nms_iou"], model["vote_iou"] if model["vote"] else 0.0)  # what ran: the model's


@pytest.mark.parametrize("arch", [None, "fast"])
def test_the_default_pipeline_is_faster_and_fast_is_one_option_away(tmp_path, synth_data, arch):
    """No --arch: Faster R-CNN, which runs no propose stage; --arch fast: selective search, then Fast R-CNN."""
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["pipeline", str(synth_data), "--out", str(out), "--epochs", "4", "--image-size", "160",
                                    "--test-fraction", "0.25", *(["--arch", arch, "--max-side", "200"] if arch else [])])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    expected = arch or "faster"
    assert set(m) == METRICS_KEYS and m["arch"] == expected and m["config"]["arch"] == expected
    assert m["config"]["train"]["image_size"] == 160 and m["config"]["train"]["epochs"] == 4 and "crop" not in m["config"]
    stages = {"parse", "train", "detect", "evaluate", "total"} | ({"propose"} if arch else set())
    assert set(m["seconds"]) == stages
    assert not (out / "crops").exists() and (out / "proposals").exists() == bool(arch)
    assert set(m["ap50"]) == {"disc", "square"} and 0.0 <= m["map50_95"] <= m["map50"] <= 1.0
    assert m["map50"] > 0.5, m  # discs and squares on noise: learnt in 4 epochs from ImageNet features
    model = json.loads((out / "model" / "config.json").read_text())
    assert model["arch"] == expected and model["postprocess"]["images"] >= 1  # fitted by the trainer
    assert m["config"]["detect"]["nms_iou"] == model["nms_iou"]


def test_pipeline_bad_folder_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["pipeline", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no VOC layout" in res.output


@pytest.mark.parametrize("arch, warned", [(None, True), ("faster", True), ("fast", False), ("fast,faster", False)])
def test_selective_search_options_are_named_as_ignored_for_an_architecture_without_it(tmp_path, arch, warned):
    args = ["pipeline", str(tmp_path), "--out", str(tmp_path / "o"), "--max-side", "200", "--workers", "1"]
    res = CliRunner().invoke(main, [*args, *(["--arch", arch] if arch else [])])
    assert res.exit_code == 1 and "no VOC layout" in res.output  # the warning comes first, then the run
    line = "warning: --max-side set selective search, which --arch faster does not run"  # --workers: the report uses it
    assert (line in res.output) == warned, res.output
    quiet = CliRunner().invoke(main, ["pipeline", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "warning" not in quiet.output


def test_settings_are_routed_to_the_stage_with_that_field():
    c = PipelineConfig().with_settings(epochs=3, size=64, device="cpu", threshold=0.5, workers=1, hflip=None)
    assert c.train == TrainConfig(epochs=3, device="cpu") and c.crop == CropConfig(size=64)
    assert c.detect == DetectConfig(threshold=0.5, device="cpu") and c.workers == 1
    assert PipelineConfig().with_settings() == PipelineConfig()
    with pytest.raises(ValueError, match="unknown pipeline setting.*epoch"):
        PipelineConfig().with_settings(epoch=3)
    with pytest.raises(ValueError, match="'threshold=2"):  # each stage config validates its own fields
        PipelineConfig().with_settings(threshold=2.0)


def test_stage_timer_announces_and_times_each_stage(monkeypatch):
    from types import SimpleNamespace

    clock = iter([100.0, 101.0, 103.5, 104.0, 110.25])  # start, parse in and out, propose in, the total
    monkeypatch.setattr("rcnn.pipeline.time", SimpleNamespace(perf_counter=lambda: next(clock)))
    lines: list[str] = []
    timer = StageTimer(lines.append)
    with timer.stage("parse"):
        pass
    with pytest.raises(KeyError), timer.stage("propose"):
        raise KeyError("boom")  # a failing stage is not recorded as finished
    assert lines == ["\n== parse ==", "\n== propose =="]
    assert timer.total() == {"parse": 2.5, "total": 10.25}
