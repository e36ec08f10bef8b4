"""bench/quality.py, the dev suite: its pure parts (dataset discovery, the dev split, settings, the table) without a
real pipeline run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from rcnn.parse import parse_dataset
from rcnn.synth import make_dataset

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import quality  # noqa: E402

LINE = re.compile(r"^(\S+) map50=(\d\.\d{3}) map50_95=(\d\.\d{3})(?: |$)")  # the contract's per-dataset line
SUITE = re.compile(r"^suite mean map50=(\d\.\d{3}) map50_95=(\d\.\d{3})(?: |$)")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets folder: two synthetic datasets (one with a val.txt), and folders and files that are not datasets."""
    root = tmp_path_factory.mktemp("datasets")
    make_dataset(root / "discs", images=12, seed=1)
    make_dataset(root / "cells", images=16, seed=2)
    train = (root / "cells" / "ImageSets" / "Main" / "train.txt").read_text().split()
    (root / "cells" / "ImageSets" / "Main" / "val.txt").write_text("\n".join(train[:5]) + "\n")
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not a dataset")
    (root / ".cache").mkdir()
    (root / "LICENSE").write_text("a file")
    return root


def test_discovery_finds_every_dataset_folder_and_only_those(datasets: Path):
    assert quality.discover(datasets) == ["cells", "discs"]
    make_dataset(datasets / "boxes", images=10, seed=3)  # a new one is picked up without a code change
    try:
        assert quality.discover(datasets) == ["boxes", "cells", "discs"]
    finally:
        import shutil

        shutil.rmtree(datasets / "boxes")


@pytest.mark.parametrize("name", ["discs", "cells"])
def test_the_dev_split_is_the_train_split_cut_by_a_fixed_rule(datasets: Path, name: str):
    full = parse_dataset(datasets / name)
    train_ids = sorted(a.id for a in full.split("train"))
    test_ids = {a.id for a in full.split("test")}
    dev = common.dev_split(datasets / name)
    dev_train, dev_test = [a.id for a in dev.split("train")], [a.id for a in dev.split("test")]
    assert not set(dev_train) & set(dev_test) and sorted(dev_train + dev_test) == train_ids  # a cut of the train split
    assert not (set(dev_train) | set(dev_test)) & test_ids and test_ids  # the test split is never used
    val = datasets / name / "ImageSets" / "Main" / "val.txt"
    expected = sorted(set(val.read_text().split())) if val.is_file() else train_ids[3::4]
    assert sorted(dev_test) == expected and dev_train
    again = common.dev_split(datasets / name)
    assert [(a.id, a.split) for a in again.images] == [(a.id, a.split) for a in dev.images]  # the same every time


def test_the_real_dev_splits_never_touch_a_test_image():
    if not common.DATASETS.is_dir():
        pytest.skip(f"{common.DATASETS} is not present")
    for name in quality.discover(common.DATASETS):
        test_ids = {a.id for a in parse_dataset(common.DATASETS / name).split("test")}
        dev = common.dev_split(common.DATASETS / name)
        assert dev.split("test") and dev.split("train") and not {a.id for a in dev.images} & test_ids, name


def test_settings_values_and_seeds_are_parsed():
    assert [quality.parse_value(v) for v in ("12", "0.4", "true", "False", "efficientnet_lite0", "1e-3")] == \
        [12, 0.4, True, False, "efficientnet_lite0", 0.001]
    assert quality.parse_settings(["epochs=12", "nms_iou = 0.4", "hflip=false"]) == {"epochs": 12, "nms_iou": 0.4, "hflip": False}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        quality.parse_settings(["epochs"])
    assert quality.parse_seeds(None) == [0] and quality.parse_seeds(["0,1", "2", "1"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="integers"):
        quality.parse_seeds(["a"])


def test_settings_reach_the_stage_with_that_field():
    c = quality.pipeline_config("fast", {"epochs": 12, "nms_iou": 0.4, "hflip_tta": True}, 3)
    assert c.arch == "fast" and c.fast.epochs == c.train.epochs == 12 and c.detect.nms_iou == 0.4 and c.detect.hflip_tta
    assert c.seed == c.fast.seed == c.propose.seed == 3 and c.report is False  # the suite's own setting
    assert quality.pipeline_config("rcnn", {"report": True}, 0).report is True  # a --set wins over the suite's
    for bad, message in (({"epoch": 3}, "unknown pipeline setting"), ({"nms_iou": 2.0}, "nms_iou"), ({"seed": 1}, "--seeds")):
        with pytest.raises(ValueError, match=message):
            quality.pipeline_config("fast", bad, 0)


def run(name: str, seed: int, map50: float, map50_95: float, ap50: dict) -> quality.Run:
    return quality.Run(name, seed, map50, map50_95, ap50, 100.0 + seed, 200.0, 120, 40, f"/tmp/{name}")


def test_the_table_has_the_contract_lines():
    runs = {"raccoon": [run("raccoon", 0, 0.9, 0.45, {"raccoon": 0.9}), run("raccoon", 1, 0.8, 0.35, {"raccoon": 0.8})],
            "bccd": [run("bccd", 0, 0.6, 0.3, {"rbc": 0.5, "wbc": 0.7, "platelets": None}),
                     run("bccd", 1, 0.6, 0.3, {"rbc": 0.5, "wbc": 0.7, "platelets": None})]}
    summary = quality.summarise(runs)
    raccoon, bccd = summary["datasets"]["raccoon"], summary["datasets"]["bccd"]
    assert raccoon["map50"] == pytest.approx(0.85) and raccoon["map50_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert bccd["ap50"] == {"rbc": 0.5, "wbc": 0.7, "platelets": None}
    line = quality.dataset_line("raccoon", raccoon)
    assert LINE.match(line).groups() == ("raccoon", "0.850", "0.400")
    assert line == "raccoon map50=0.850 map50_95=0.400 map50_sd=0.071 map50_95_sd=0.071 seeds=2 train_s=100 ap50[raccoon]=0.850"
    assert quality.dataset_line("bccd", bccd).endswith("ap50[rbc]=0.500 ap50[wbc]=0.700 ap50[platelets]=-")
    assert quality.suite_line(summary["suite"]) == "suite mean map50=0.725 map50_95=0.350 datasets=2"
    one = quality.summarise({"raccoon": runs["raccoon"][:1]})["datasets"]["raccoon"]
    assert "_sd" not in quality.dataset_line("raccoon", one)  # one seed: no spread to show


def test_main_runs_every_dataset_and_seed_and_writes_the_json(datasets: Path, tmp_path: Path, monkeypatch, capsys):
    seen = []

    def fake_run(name, folder, out, config):
        seen.append((name, config.seed, config.arch, config.fast.epochs, out))
        return run(name, config.seed, 0.5 + 0.1 * config.seed, 0.25, {"disc": 0.5})

    monkeypatch.setattr(quality, "run_one", fake_run)
    code = quality.main(["--data", str(datasets), "--seeds", "0,1", "--set", "epochs=2", "--out", str(tmp_path / "q")])
    assert code == 0
    assert [(n, s, a, e) for n, s, a, e, _ in seen] == [("cells", 0, "faster", 2), ("cells", 1, "faster", 2),
                                                         ("discs", 0, "faster", 2), ("discs", 1, "faster", 2)]
    assert seen[0][4] == tmp_path / "q" / "cells" / "seed-0"
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines if LINE.match(ln) and not ln.startswith("suite")]
    assert [LINE.match(ln).groups() for ln in table] == [("cells", "0.550", "0.250"), ("discs", "0.550", "0.250")]
    assert SUITE.match(lines[-1]).groups() == ("0.550", "0.250")
    data = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert data["seeds"] == [0, 1] and data["settings"] == {"epochs": 2} and data["suite"]["map50"] == pytest.approx(0.55)
    assert len(data["datasets"]["cells"]["runs"]) == 2


def test_main_refuses_bad_input_in_one_line(datasets: Path, tmp_path: Path, capsys):
    for argv, message in ((["--datasets", "nope"], "names no dataset"), (["--set", "bogus=1"], "unknown pipeline setting"),
                          (["--arch", "nope"], "arch=nope"), (["--data", str(tmp_path / "none")], "no datasets folder")):
        assert quality.main(["--data", str(datasets), "--out", str(tmp_path / "q"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_one_real_run_on_a_synthetic_dataset(tmp_path: Path, capsys):
    """End to end, tiny: the pipeline runs on the dev split (a Dataset, not a folder to parse) and the table follows."""
    root = tmp_path / "datasets"
    make_dataset(root / "synth", images=12, seed=4)
    tiny = ["weights=none", "image_size=64", "max_image_size=96", "epochs=1", "hidden=32", "rois_per_image=16",
            "max_side=200", "workers=1", "device=cpu"]
    code = quality.main(["--data", str(root), "--out", str(tmp_path / "q"), *(a for s in tiny for a in ("--set", s))])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert LINE.match(lines[-2]).group(1) == "synth" and SUITE.match(lines[-1])
    metrics = json.loads((tmp_path / "q" / "synth" / "seed-0" / "metrics.json").read_text())
    dev = common.dev_split(root / "synth")
    assert metrics["n_test_images"] == len(dev.split("test")) and metrics["n_train_images"] == len(dev.split("train"))
    assert metrics["config"]["train"]["epochs"] == 1 and (tmp_path / "q" / "synth" / "seed-0.log").is_file()
