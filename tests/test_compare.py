"""Issue 24: proposals of a trained model (`rcnn propose --model`) and the family side by side
(`rcnn pipeline --arch rcnn,fast,...`).

No registered architecture proposes regions yet, so a fake one does: a copy of Fast R-CNN's registry entry whose
``proposer`` is :func:`fake_proposer` below, and a copy of a tiny Fast R-CNN model folder that names it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
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
