"""Issue 24: proposals of a trained model (`rcnn propose --model`) and the family side by side
(`rcnn pipeline --arch rcnn,fast,...`).

No registered architecture proposes regions yet, so a fake one does: a copy of Fast R-CNN's registry entry whose
``proposer`` is :func:`fake_proposer` below, and a copy of a tiny Fast R-CNN model folder that names it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn.arch import ARCHS
from rcnn.cli import main
from rcnn.io import load_rgb
from rcnn.parse import Dataset
from rcnn.propose import ProposalSet, ProposeConfig, recall

FAKE = "fakeprop"  # the fake architecture's registry name
CALLS: list[tuple[int, int]] = []  # (image height, n) of each fake_proposer call


def fake_proposer(model: object, image: np.ndarray, n: int) -> np.ndarray:
    """Boxes that depend on the image's pixels only (as a network's would), best first: deterministic, float32."""
    CALLS.append((image.shape[0], n))
    h, w = image.shape[:2]
    rng = np.random.default_rng(int(image[::7, ::7].sum()) % 100_003)
    xy = rng.uniform(0, [w * 0.7, h * 0.7], size=(40, 2))
    wh = rng.uniform(8, [w * 0.5, h * 0.5], size=(40, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
    return boxes.astype(np.float32)[:n]


@pytest.fixture
def fake_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered architecture whose models propose regions (Fast R-CNN's entry with a proposer)."""
    spec = dataclasses.replace(ARCHS["fast"], name=FAKE, proposer=f"{__name__}:fake_proposer", proposer_max=25)
    monkeypatch.setitem(ARCHS, FAKE, spec)
    CALLS.clear()
    return FAKE


@pytest.fixture
def proposer_model(fast_model: Path, fake_arch: str, tmp_path: Path) -> Path:
    """A copy of the tiny Fast R-CNN model folder whose config names the fake architecture."""
    folder = tmp_path / "proposer"
    shutil.copytree(fast_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "arch": fake_arch}))
    return folder


def test_propose_with_a_model_writes_its_boxes_and_their_recall(proposer_model, synth_parsed, tmp_path):
    out = tmp_path / "props"
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(out), "--model", str(proposer_model),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ds = Dataset.load(synth_parsed)
    pset = ProposalSet.load(out)
    expected = {a.id: fake_proposer(None, load_rgb(a.path), 25) for a in ds.images}  # proposer_max of the fake
    assert pset.ids == sorted(expected)
    for image_id, boxes in expected.items():
        np.testing.assert_array_equal(pset.boxes(image_id), boxes)
        assert pset.seconds(image_id) is not None
    report = json.loads((out / "report.json").read_text())
    covered, total = recall([a.boxes() for a in ds.images], list(expected.values()), 0.5)
    assert report["recall50"] == round(covered / total, 4) and report["images"] == len(ds.images)
    assert set(report["per_class"]) == set(ds.classes)
    # the proposals name their model: its folder and key, what a model trained on them records
    assert pset.config.model == str(proposer_model.resolve()) and pset.config.model_key
    assert pset.config.max_proposals == 25 and report["config"]["model"] == pset.config.model
    # a re-run reuses every image; --max-proposals is the proposer's n
    CALLS.clear()
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(out), "--model", str(proposer_model)])
    assert res.exit_code == 0 and CALLS == [], res.output
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(tmp_path / "p5"), "--split", "test",
                                    "--model", str(proposer_model), "--max-proposals", "5"])
    assert res.exit_code == 0 and {n for _, n in CALLS} == {5}, res.output
    assert ProposalSet.load(tmp_path / "p5").config.max_proposals == 5


def test_propose_with_a_model_without_proposer_is_one_line(fast_model, synth_parsed, tmp_path):
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(tmp_path / "p"), "--model", str(fast_model)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"model {fast_model} (arch fast) cannot propose regions" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_propose_with_a_model_refuses_selective_search_options(proposer_model, synth_parsed, tmp_path):
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(tmp_path / "p"), "--model",
                                    str(proposer_model), "--mode", "quality"])
    assert res.exit_code == 2 and "--mode is for selective search" in res.output, res.output
    res = CliRunner().invoke(main, ["propose", str(synth_parsed), "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert res.exit_code == 2 and "--device is where the --model runs" in res.output, res.output


def test_selective_search_settings_and_keys_are_unchanged_by_the_model_fields():
    """Folders proposed before the model fields existed keep their settings and keys (no recompute)."""
    import hashlib

    config = ProposeConfig(max_side=200)
    before = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("model", "model_key")}
    assert config.to_json() == before
    assert config.key() == hashlib.sha1(repr(sorted(before.items())).encode()).hexdigest()[:12]  # the key's formula then
    assert ProposeConfig(model="m", model_key="k").key() != ProposeConfig().key()
    with pytest.raises(ValueError, match="'model=m' and 'model_key=' go together"):
        ProposeConfig(model="m")


def test_a_model_trained_on_learned_proposals_detects_with_its_proposer(proposer_model, synth_parsed, tmp_path,
                                                                        monkeypatch):
    """Fast R-CNN trained on a model's proposals records them, and detection asks that model, not selective search."""
    from rcnn import propose as propose_mod
    from rcnn.detect import DetectConfig, detect
    from rcnn.fast import FastConfig, train_fast_model
    from rcnn.model import load_model
    from rcnn.proposer import propose_with_model
    from tests.conftest import FAST_TINY

    ds = Dataset.load(synth_parsed)
    props = tmp_path / "props"
    propose_with_model(ds, props, proposer_model, device="cpu", progress=False, echo=lambda _: None)
    out = tmp_path / "fast"
    train_fast_model(synth_parsed, props, out, FastConfig(**{**FAST_TINY, "epochs": 1}), progress=False, echo=lambda _: None)
    model = load_model(out, "cpu")
    assert model.config.propose == ProposalSet.load(props).config and model.config.propose.model

    def no_selective_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("selective search ran")

    monkeypatch.setattr(propose_mod, "selective_search", no_selective_search)
    monkeypatch.setattr("rcnn.proposer.selective_search", no_selective_search)
    CALLS.clear()
    image = ds.split("test")[0]
    results = detect(model, [image.path], tmp_path / "run", DetectConfig(device="cpu"), save_images=False,
                     echo=lambda _: None)
    assert CALLS == [(image.height, 25)] and results[0].n_proposals == 25
    # the proposer model changed since: a new process (its cache empty) says so instead of using other proposals
    config = json.loads((proposer_model / "config.json").read_text())
    (proposer_model / "config.json").write_text(json.dumps({**config, "dropout": 0.3}))
    from rcnn import proposer as proposer_mod
    from rcnn.errors import DataError
    from rcnn.proposer import propose_image

    proposer_mod._proposer.cache_clear()
    with pytest.raises(DataError, match="changed since the proposals were made"):
        propose_image(load_rgb(image.path), model.config.propose, "cpu")


# --------------------------------------------------------------------------- the family side by side


def tiny_family_config() -> object:
    """The fastest settings other tests use: random backbones, one or two epochs, small images and crops."""
    from rcnn.crop import CropConfig
    from rcnn.detect import DetectConfig
    from rcnn.fast import FastConfig
    from rcnn.pipeline import PipelineConfig
    from rcnn.train import TrainConfig
    from tests.conftest import FAST_TINY

    return PipelineConfig(workers=1, report=False, propose=ProposeConfig(max_side=200, max_proposals=300),
                          crop=CropConfig(size=48, context=4, neg_per_image=8), train=TrainConfig(weights="none", epochs=2, batch_size=32),
                          fast=FastConfig(**{**FAST_TINY, "epochs": 1}), detect=DetectConfig(device="cpu"))


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """``rcnn.compare.run_family`` of rcnn and fast on 24 synthetic images."""
    from rcnn.compare import run_family
    from rcnn.synth import make_dataset

    data = make_dataset(tmp_path_factory.mktemp("data"), images=24, seed=0)
    out = tmp_path_factory.mktemp("family") / "run"
    result = run_family(data, out, tiny_family_config(), ["rcnn", "fast"], echo=lambda _: None, warn=lambda _: None)
    return out, result


def test_the_family_runs_each_architecture_into_its_folder_and_compares(family):
    out, result = family
    compare = json.loads((out / "compare.json").read_text())
    assert compare == result.to_json() and compare["format"] == "rcnn-compare-v1"
    assert [row["arch"] for row in compare["archs"]] == ["rcnn", "fast"]
    for row in compare["archs"]:
        run = out / row["arch"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["arch"] == row["arch"] and (run / "model" / "config.json").is_file()
        for key in ("map50", "map50_95", "ap50", "proposal_recall50", "model_mb", "backbone", "seconds"):
            assert row[key] == metrics[key], key
        assert row["train_seconds"] == metrics["seconds"]["train"]
        # detection's seconds per image include the proposals: the propose stage's of the test images
        assert row["detect_seconds_per_image"] == metrics["detect_seconds_per_image_with_proposals"]
        assert metrics["detect_seconds_per_image_with_proposals"] > metrics["detect_seconds_per_image"]
        assert row["proposal_recall50"] is not None and row["model_mb"] > 0
        # each run folder is self-contained for `rcnn evaluate` / `rcnn report`: its parse and its detections
        assert (run / "parsed.json").read_bytes() == (out / "parsed.json").read_bytes()
        assert (run / "detect" / "detections.json").is_file() and not (run / "proposals").exists()
    rcnn, fast = (json.loads((out / name / "metrics.json").read_text()) for name in ("rcnn", "fast"))
    # one parse and one propose stage: the same split and the same proposals, hence the same recall
    n_test = len(Dataset.load(out / "parsed.json").split("test"))
    assert rcnn["n_test_images"] == fast["n_test_images"] == compare["test_images"] == n_test > 0
    assert rcnn["proposal_recall50"] == fast["proposal_recall50"]
    assert set(rcnn["seconds"]) == {"parse", "propose", "crop", "train", "detect", "evaluate", "total"}
    assert rcnn["seconds"]["propose"] == fast["seconds"]["propose"] == compare["seconds"]["propose"]
    table = (out / "compare.md").read_text()
    assert "| arch | mAP@0.5 |" in table and "AP50 disc" in table and "detect s/image (with proposals)" in table
    for row in compare["archs"]:
        assert f"| {row['arch']} | {row['map50']:.3f} | {row['map50_95']:.3f} |" in table


def test_an_unknown_or_repeated_name_in_the_list_is_a_one_line_usage_error(tmp_path, synth_data):
    choices = list(ARCHS)  # the registry's names, in its order
    for value, message in (("rcnn,nope", "'nope' is not one of " + ", ".join(f"'{n}'" for n in choices)),
                           ("fast,fast", "names fast twice"), (",", f"names none of {', '.join(choices)}")):
        res = CliRunner().invoke(main, ["pipeline", str(synth_data), "--out", str(tmp_path / "r"), "--arch", value])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "r").exists()


def test_one_name_is_the_single_run_of_today(tmp_path, synth_data):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["pipeline", str(synth_data), "--out", str(out), "--arch", "fast", "--weights", "none",
                                    "--epochs", "1", "--image-size", "64", "--max-side", "200", "--max-proposals", "300",
                                    "--workers", "1", "--device", "cpu", "--no-report"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == "fast" and (out / "proposals" / "boxes").is_dir() and (out / "model").is_dir()
    assert not (out / "compare.json").exists() and not (out / "fast").exists()
    assert metrics["detect_seconds_per_image_with_proposals"] > metrics["detect_seconds_per_image"] > 0


def test_a_list_runs_the_family_with_the_options_given(tmp_path, synth_data, monkeypatch):
    from rcnn.compare import Comparison

    seen: dict[str, object] = {}

    def fake_family(data, out, config, archs, echo, warn):
        seen.update(data=data, out=out, config=config, archs=archs)
        return Comparison(str(data), ["disc", "square"], 3, 9, [], {"total": 1.0})

    monkeypatch.setattr("rcnn.compare.run_family", fake_family)
    res = CliRunner().invoke(main, ["pipeline", str(synth_data), "--out", str(tmp_path / "r"), "--arch", "rcnn, fast",
                                    "--epochs", "2", "--size", "48"])
    assert res.exit_code == 0, res.output
    assert seen["archs"] == ["rcnn", "fast"] and seen["out"] == tmp_path / "r"
    config = seen["config"]
    assert config.train.epochs == config.fast.epochs == 2 and config.crop.size == 48  # every architecture's settings
    assert "| arch | mAP@0.5 |" in res.output and str(tmp_path / "r" / "compare.json") in res.output


# --------------------------------------------------------------------------- an architecture that proposes its own

OWN = "fakeown"  # a fake architecture without a propose stage: its models find their own regions (as Faster R-CNN's)
OWN_MODEL: list[Path] = []  # the trained folder its fake trainer copies


def own_fit(source: object, out: Path, settings: object, proposals: object = None, echo: object = print,
            **kwargs: object) -> dict[str, object]:
    """The fake architecture's trainer: the tiny Fast R-CNN model, renamed."""
    assert proposals is None  # no propose stage, no stored proposals
    shutil.copytree(OWN_MODEL[0], out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "arch": OWN}))
    return json.loads((out / "report.json").read_text())


def own_detector(model: object, image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Its regions (the fake proposer's) and their scores, from one call."""
    boxes = fake_proposer(model, image, n)
    probs, deltas = model.spec.part("scorer")(model, image, boxes, 0)
    return boxes, probs, deltas


def test_an_architecture_that_proposes_its_own_is_compared_with_its_proposals(fast_model, tmp_path, monkeypatch):
    from rcnn.compare import run_family
    from rcnn.synth import make_dataset

    spec = dataclasses.replace(ARCHS["fast"], name=OWN, stages=(), proposals=False, trainer=f"{__name__}:own_fit",
                               detector=f"{__name__}:own_detector", proposer=f"{__name__}:fake_proposer", proposer_max=30)
    monkeypatch.setitem(ARCHS, OWN, spec)
    monkeypatch.setattr(sys.modules[__name__], "OWN_MODEL", [fast_model])
    data = make_dataset(tmp_path / "data", images=24, seed=0)
    out = tmp_path / "run"
    result = run_family(data, out, tiny_family_config(), ["fast", OWN], echo=lambda _: None, warn=lambda _: None)
    metrics = json.loads((out / OWN / "metrics.json").read_text())
    test = Dataset.load(out / "parsed.json").split("test")
    boxes = [fake_proposer(None, load_rgb(a.path), 30) for a in test]
    covered, total = recall([a.boxes() for a in test], boxes, 0.5)
    assert metrics["proposal_recall50"] == round(covered / total, 4)  # its own proposals' recall, on the test split
    assert "propose" not in metrics["seconds"] and "propose" in json.loads((out / "fast" / "metrics.json").read_text())["seconds"]
    # detection proposes: its seconds per image already include the proposals
    assert metrics["detect_seconds_per_image_with_proposals"] >= metrics["detect_seconds_per_image"] > 0
    row = result.archs[1]
    assert row["arch"] == OWN and row["proposal_recall50"] == metrics["proposal_recall50"]
    assert row["detect_seconds_per_image"] == metrics["detect_seconds_per_image_with_proposals"]


def test_make_pipeline_passes_the_list_through(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    stamp = tmp_path / "installed"  # newer than pyproject.toml: make sees nothing to install
    stamp.touch()
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([make, "-n", "-s", "pipeline", f"STAMP={stamp}", "PYTHON=py", "ARCH=rcnn,fast"], cwd=root,
                         text=True, capture_output=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "rcnn.cli pipeline" in ln)
    assert line.split()[-2:] == ["--arch", "rcnn,fast"]
