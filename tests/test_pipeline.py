from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from rcnn.cli import main


def test_pipeline_on_layout_without_imagesets(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data / "Annotations", data / "annotations")
    shutil.copytree(synth_data / "JPEGImages", data / "images")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["pipeline", str(data), "--out", str(out), "--epochs", "3", "--size", "64",
                                    "--neg-per-image", "16", "--max-side", "200", "--test-fraction", "0.25", "--optimizer", "adam"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert {"map50", "map50_95", "proposal_recall50", "n_test_images", "seconds"} <= set(m)
    assert m["n_test_images"] == 3  # 25% of 12 images, deterministic split
    assert set(m["seconds"]) >= {"parse", "propose", "crop", "train", "detect", "evaluate"}
    assert 0.0 <= m["map50_95"] <= m["map50"] <= 1.0 and m["proposal_recall50"] > 0.8
    assert (out / "detect" / "detections.json").is_file() and (out / "pr_curve.png").is_file()
    assert "Traceback" not in res.output


def test_pipeline_bad_folder_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["pipeline", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no VOC layout" in res.output
