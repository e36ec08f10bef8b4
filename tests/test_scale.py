"""Scaling out (rcnn.scale): --shard K/N into one folder equals one run; Ray tasks equal the local path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn import crop as crop_mod
from rcnn import detect as detect_mod
from rcnn import propose as propose_mod
from rcnn.cli import main
from rcnn.crop import CropConfig, crop_dataset, load_shard
from rcnn.errors import MissingDependencyError
from rcnn.parse import Dataset, parse_dataset
from rcnn.propose import ProposeConfig, propose_dataset
from rcnn.scale import import_ray, parse_shard, shard_of

PROPOSE = ProposeConfig(max_side=160, max_proposals=300)
PROPOSE_FLAGS = ["--max-side", "160", "--max-proposals", "300", "--workers", "1"]
CROP = CropConfig(size=32, context=2, neg_per_image=8)
QUIET = dict(echo=lambda _: None, warn=lambda _: None)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parsed synthetic dataset of 6 small images (records saved to parsed.json)."""
    from rcnn.synth import make_dataset

    root = tmp_path_factory.mktemp("scale")
    data = make_dataset(root / "data", images=6, seed=5, width=192, height=144)
    parsed = root / "parsed.json"
    parse_dataset(data).save(parsed)
    return parsed


@pytest.fixture(scope="module")
def small_props(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scale_props")
    propose_dataset(Dataset.load(small), out, PROPOSE, workers=1, progress=False, **QUIET)
    return out


@pytest.fixture(scope="module")
def small_model(small: Path, small_props: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rcnn.fast import FastConfig, train_fast_model

    from .conftest import FAST_TINY

    out = tmp_path_factory.mktemp("scale_model")
    train_fast_model(small, small_props, out, FastConfig(**FAST_TINY), progress=False, echo=lambda _: None)
    return out


def with_corrupt_image(parsed: Path, tmp: Path) -> tuple[Path, str]:
    """A copy of the dataset's images and records in which one image is not an image; returns (parsed, its id)."""
    ds = Dataset.load(parsed)
    shutil.copytree(Path(ds.images[0].path).parent, tmp / "images")
    d = json.loads(parsed.read_text())
    for rec in d["images"]:
        rec["path"] = str(tmp / "images" / Path(rec["path"]).name)
    bad = d["images"][2]
    Path(bad["path"]).write_bytes(b"not an image")
    out = tmp / "parsed.json"
    out.write_text(json.dumps(d))
    return out, bad["id"]


def counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    """Replace ``module.name`` by a wrapper that records its first argument on each call."""
    calls: list[object] = []
    real = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def npy_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "boxes").glob("*.npy"))}


# ----------------------------------------------------------------------------- shards


def test_parse_shard_accepts_k_of_n_and_names_the_bad_value():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3/4 ") == (3, 4) and parse_shard(None) is None
    for bad in ("3/2", "2/2", "-1/2", "x", "1", "1/0", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="0 <= K < N"):
            parse_shard(bad)


def test_shards_partition_the_items_by_sorted_index_whatever_their_order():
    items = [f"img{i:02d}.jpg" for i in range(11)]
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(items))
    shards = [shard_of(shuffled, (k, 3)) for k in range(3)]
    assert sorted(x for s in shards for x in s) == items  # every item in exactly one shard
    assert [sorted(s) for s in shards] == [items[k::3] for k in range(3)]  # index in sorted order, mod N
    assert shards[0] == [x for x in shuffled if x in items[0::3]]  # the given order is kept
    assert shard_of(shuffled, None) == shuffled and shard_of([], (0, 2)) == []


def test_bad_shard_values_are_one_line_usage_errors(small, tmp_path):
    for bad in ("3/2", "x"):
        res = CliRunner().invoke(main, ["propose", str(small), "--out", str(tmp_path / "p"), "--shard", bad])
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert f"'--shard {bad}' is invalid; give K/N with integers 0 <= K < N" in res.output
    assert not (tmp_path / "p").exists()


def test_propose_shards_into_one_folder_equal_one_run(small, tmp_path, monkeypatch):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run = CliRunner().invoke(main, ["propose", str(small), "--out", str(single), *PROPOSE_FLAGS])
    assert run.exit_code == 0, run.output
    for k in range(2):
        res = CliRunner().invoke(main, ["propose", str(small), "--out", str(sharded), "--shard", f"{k}/2", *PROPOSE_FLAGS])
        assert res.exit_code == 0, res.output
        assert json.loads((sharded / f"report-shard-{k}-of-2.json").read_text())["images"] == 3
    assert not (sharded / "report.json").exists()  # a shard writes only its own report
    assert npy_bytes(sharded) == npy_bytes(single) and len(npy_bytes(single)) == 6  # byte-identical boxes

    calls = counting(monkeypatch, propose_mod, "selective_search")
    res = CliRunner().invoke(main, ["propose", str(small), "--out", str(sharded), *PROPOSE_FLAGS])
    assert res.exit_code == 0, res.output
    assert calls == []  # the final run computes nothing the shards did
    a, b = (json.loads((d / "report.json").read_text()) for d in (single, sharded))
    for key in ("recall50", "recall70", "proposals_per_image", "images", "per_class", "recall50_at"):
        assert a[key] == b[key], key
    assert (b["computed"], b["reused"]) == (0, 6)


def test_a_killed_shard_rerun_computes_only_its_missing_images(small, tmp_path, monkeypatch):
    out = tmp_path / "p"
    ds = Dataset.load(small)
    for k in range(2):
        propose_dataset(ds, out, PROPOSE, workers=1, progress=False, shard=(k, 2), **QUIET)
    mine = shard_of(ds.images, (0, 2), key=lambda a: a.path)
    lost = mine[1].id
    for ext in (".npy", ".json"):
        (out / "boxes" / f"{lost}{ext}").unlink()  # as a shard killed before it wrote this image
    before = {p.name: p.stat().st_mtime_ns for p in (out / "boxes").iterdir()}
    calls = counting(monkeypatch, propose_mod, "_propose_worker")
    report = propose_dataset(ds, out, PROPOSE, workers=1, progress=False, shard=(0, 2), **QUIET)
    assert calls == [mine[1].path] and (report["computed"], report["reused"]) == (1, 2)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "boxes").iterdir()}
    assert {n: t for n, t in after.items() if not n.startswith(lost)} == before  # no other file was touched


def test_crop_shards_into_one_folder_equal_one_run(small, small_props, tmp_path, monkeypatch):
    ds = Dataset.load(small)
    single = crop_dataset(ds, small_props, tmp_path / "single", CROP, split="all", progress=False, warn=lambda _: None)
    out = tmp_path / "sharded"
    for k in range(2):
        r = crop_dataset(ds, small_props, out, CROP, split="all", progress=False, warn=lambda _: None, shard=(k, 2))
        assert r["images"] == 3 and r["computed"] == 3
    assert not (out / "index.csv").exists() and not (out / "meta.json").exists()
    lost = shard_of(ds.images, (1, 2), key=lambda a: a.path)[0].id
    (out / "shards" / f"{lost}.npz").unlink()
    calls = counting(monkeypatch, crop_mod, "crop_image")
    final = crop_dataset(ds, small_props, out, CROP, split="all", progress=False, warn=lambda _: None)
    assert [a.id for a in calls] == [lost]  # only what is missing
    assert (tmp_path / "single" / "index.csv").read_bytes() == (out / "index.csv").read_bytes()
    for key in ("regions", "kept", "class_weights", "ignored", "background_not_sampled"):
        assert final[key] == single[key], key
    a, b = (json.loads((d / "meta.json").read_text()) for d in (tmp_path / "single", out))
    assert a == b
    for p in sorted((tmp_path / "single" / "shards").glob("*.npz")):
        x, y = load_shard(p), load_shard(out / "shards" / p.name)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_detect_shards_and_merge_equal_one_run(small, small_props, small_model, tmp_path, monkeypatch):
    images = sorted(str(p) for p in Path(Dataset.load(small).images[0].path).parent.glob("*.jpg"))
    common = ["--proposals", str(small_props), "--threshold", "0.0", "--save-txt"]
    res = CliRunner().invoke(main, ["detect", str(small_model), *images, "--out", str(tmp_path / "single"), *common])
    assert res.exit_code == 0, res.output
    run = tmp_path / "sharded"
    for k in range(2):
        res = CliRunner().invoke(main, ["detect", str(small_model), *images, "--out", str(run), "--shard", f"{k}/2", *common])
        assert res.exit_code == 0, res.output
        assert f"shard {k}/2: 3 images" in res.output
    assert not (run / "detections.json").exists()  # the shards wrote only their images' files
    assert len(list((run / "parts").glob("*.json"))) == 6 + 1 and len(list(run.glob("*.jpg"))) == 6

    lost = Path(shard_of(images, (1, 2))[0]).stem
    (run / "parts" / f"{lost}.json").unlink()  # as a shard killed before it finished this image
    calls = counting(monkeypatch, detect_mod, "detect_image")
    res = CliRunner().invoke(main, ["detect", "--merge", str(run)])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1  # the model ran on the missing image only
    single = json.loads((tmp_path / "single" / "detections.json").read_text())
    assert json.loads((run / "detections.json").read_text()) == single and len(single) > 0
    assert (run / "detections.csv").read_text() == (tmp_path / "single" / "detections.csv").read_text()
    for p in (tmp_path / "single" / "labels").glob("*.txt"):
        assert (run / "labels" / p.name).read_text() == p.read_text()

    calls.clear()  # a second merge has nothing to compute: the model is not even loaded
    monkeypatch.setattr("rcnn.model.load_model", lambda *a, **k: pytest.fail("merge loaded the model"))
    assert CliRunner().invoke(main, ["detect", "--merge", str(run)]).exit_code == 0 and calls == []


def test_detect_shard_refuses_a_folder_of_other_settings_and_merge_needs_shards(small, small_props, small_model, tmp_path):
    images = [str(p) for p in sorted(Path(Dataset.load(small).images[0].path).parent.glob("*.jpg"))]
    run = tmp_path / "r"
    base = ["detect", str(small_model), *images, "--out", str(run), "--proposals", str(small_props)]
    assert CliRunner().invoke(main, [*base, "--shard", "0/3", "--no-images"]).exit_code == 0
    res = CliRunner().invoke(main, [*base, "--shard", "1/3", "--threshold", "0.9", "--no-images"])
    assert res.exit_code == 1 and "holds detection shards of another model, settings or inputs" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["detect", "--merge", str(empty)])
    assert res.exit_code == 1 and "not a detection run folder" in res.output
    res = CliRunner().invoke(main, ["detect", "--merge", str(run), str(small_model)])
    assert res.exit_code == 2 and "--merge RUN takes no MODEL_DIR" in res.output
    res = CliRunner().invoke(main, ["detect", str(small_model), *images, "--shard", "0/2"])
    assert res.exit_code == 2 and "--shard needs --out" in res.output


def test_concurrent_shards_claim_one_new_folder(small, tmp_path):
    """Two shard processes started together into one new folder: neither refuses it, together they equal one run."""
    import subprocess
    import sys

    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "rcnn.cli", "propose", str(small), "--out", str(out), *PROPOSE_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([*cmd, "--shard", f"{k}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len(npy_bytes(out)) == 6 and not list((out / "boxes").glob(".*"))  # no temporary file left behind


# ----------------------------------------------------------------------------- Ray


def test_missing_ray_is_one_line(small, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    for args in (["propose", str(small), "--out", str(tmp_path / "p")], ["pipeline", str(small), "--out", str(tmp_path / "q")]):
        res = CliRunner().invoke(main, [*args, "--ray"])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.strip() == "Error: --ray needs Ray, which is not installed: pip install 'rcnn[ray]'"
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # the library says the same
    with pytest.raises(MissingDependencyError, match=r"pip install 'rcnn\[ray\]'"):
        import_ray()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster of 2 CPUs for this module's Ray tests (rcnn uses a session already open)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for attempt in range(3):  # Ray gives its processes 30 s to start: a busy machine can miss that once
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_local_proposals_crops_and_detections_and_reports_a_corrupt_image(
        ray_local, small, small_model, tmp_path):
    parsed, bad = with_corrupt_image(small, tmp_path)
    ds = Dataset.load(parsed)
    warned: dict[str, list[str]] = {"local": [], "ray": []}
    reports = {}
    # local: 2 spawned workers, not this process, where the module's Ray session has threads that call libc
    # rand() and so reorder selective search's regions now and then (CI, 2026-12-04: synth_0004 differed)
    for how, ray in (("local", None), ("ray", "local")):
        reports[how] = propose_dataset(ds, tmp_path / f"p_{how}", PROPOSE, workers=2, progress=False, ray=ray,
                                       echo=lambda _: None, warn=warned[how].append)
    assert npy_bytes(tmp_path / "p_ray") == npy_bytes(tmp_path / "p_local") and len(npy_bytes(tmp_path / "p_ray")) == 5
    assert reports["ray"]["failed"] == reports["local"]["failed"] and bad in reports["ray"]["failed"][0]
    assert warned["ray"] == warned["local"] and "cannot read image" in warned["ray"][0]
    for key in ("recall50", "recall70", "proposals_per_image"):
        assert reports["ray"][key] == reports["local"][key]

    good = Dataset([a for a in ds.images if a.id != bad], ds.classes)
    for how, ray in (("local", None), ("ray", "local")):
        crop_dataset(good, tmp_path / "p_local", tmp_path / f"c_{how}", CROP, split="all", progress=False,
                     warn=lambda _: None, ray=ray)
    assert (tmp_path / "c_ray" / "index.csv").read_bytes() == (tmp_path / "c_local" / "index.csv").read_bytes()

    from rcnn.detect import DetectConfig, detect
    from rcnn.model import load_model

    model = load_model(small_model, "cpu")
    images = sorted(Path(ds.images[0].path).parent.glob("*.jpg"))
    config = DetectConfig(threshold=0.0, propose=PROPOSE)
    for how, ray in (("local", None), ("ray", "local")):
        warned[how].clear()
        detect(model, images, tmp_path / f"d_{how}", config, echo=lambda _: None, warn=warned[how].append, ray=ray)
    local, remote = (json.loads((tmp_path / f"d_{h}" / "detections.json").read_text()) for h in ("local", "ray"))
    assert len(remote) == len(local) > 0
    # the same detections; a Ray task's network runs on 1 thread, which can change a score's last rounded digit
    assert [(d["image_id"], d["file_name"], d["category"]) for d in remote] == [(d["image_id"], d["file_name"], d["category"]) for d in local]
    np.testing.assert_allclose([d["bbox"] for d in remote], [d["bbox"] for d in local], atol=0.02)
    np.testing.assert_allclose([d["score"] for d in remote], [d["score"] for d in local], atol=2e-5)
    assert warned["ray"] == warned["local"] and len(warned["ray"]) == 1 and bad in warned["ray"][0]
    summary = json.loads((tmp_path / "d_ray" / "summary.json").read_text())
    assert summary["images"] == 5 and len(summary["failed"]) == 1

    res = CliRunner().invoke(main, ["propose", str(parsed), "--out", str(tmp_path / "p_cli"), "--ray", "local",
                                    *PROPOSE_FLAGS])
    assert res.exit_code == 0 and "skipped" in res.output, res.output
    assert npy_bytes(tmp_path / "p_cli") == npy_bytes(tmp_path / "p_local")


def test_ray_option_takes_an_optional_address(monkeypatch, small, tmp_path):
    """--ray alone means a local cluster; --ray ADDRESS is passed on as given."""
    seen: list[str | None] = []
    for args, want in ((["--ray"], "local"), (["--ray", "auto"], "auto"), (["--ray", "10.0.0.1:6379"], "10.0.0.1:6379"), ([], None)):
        seen.clear()
        monkeypatch.setattr(propose_mod, "propose_dataset", lambda *a, **k: seen.append(k.get("ray")) or {})
        monkeypatch.setattr(propose_mod, "format_report", lambda r: "")
        res = CliRunner().invoke(main, ["propose", str(small), "--out", str(tmp_path / "p"), *args])
        assert res.exit_code == 0, res.output
        assert seen == [want]


def _square_or_fail(shared: int, item: int) -> int:
    """A task for the Ray tests: item 2's worker process dies, item 3 raises (a bug), others are squared plus shared."""
    if item == 2:
        os._exit(1)
    if item == 3:
        raise ArithmeticError("a bug in the task")
    return item * item + shared


@pytest.mark.slow
def test_ray_retries_a_dead_worker_then_reports_that_item_and_raises_a_task_bug(ray_local):
    from rcnn.scale import ray_tasks

    results: dict[int, int] = {}
    errors: dict[int, str] = {}
    ray_tasks(_square_or_fail, 10, [1, 2, 4], results.__setitem__, on_error=errors.__setitem__, max_retries=1)
    assert results == {1: 11, 4: 26}
    assert list(errors) == [2] and "failed 2 times" in errors[2]  # retried once, then reported
    with pytest.raises(ArithmeticError, match="a bug in the task"):  # the task's own exception, not retried
        ray_tasks(_square_or_fail, 0, [3], results.__setitem__, on_error=errors.__setitem__)


def test_pipeline_takes_a_ray_address():
    from rcnn.pipeline import PipelineConfig

    assert PipelineConfig().ray is None and PipelineConfig().with_settings(ray="auto").ray == "auto"
    assert "--ray [ADDRESS]" in CliRunner().invoke(main, ["pipeline", "--help"]).output
