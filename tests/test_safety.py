"""Issue 9: a user's files are never touched, caches are never stale, a model folder is never half-written.

Each test names the numbered item of the issue it guards; tests/test_hostile.py runs the wider corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rcnn import model as model_mod
from rcnn import train as train_mod
from rcnn.cli import main
from rcnn.crop import CropConfig, crop_dataset
from rcnn.errors import DataError
from rcnn.model import ModelConfig, load_model
from rcnn.parse import Dataset
from rcnn.propose import ProposeConfig, propose_dataset
from rcnn.train import TrainConfig, train


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1: outputs never replace inputs


def test_detect_into_the_image_folder_is_refused(tmp_path, synth_model, synth_data):
    images = shutil.copytree(synth_data / "JPEGImages", tmp_path / "imgs")
    (images / "detections.csv").write_text("the user's own file\n")
    before = hashes(images)
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(images), "--out", str(images)])
    assert res.exit_code == 1 and "already holds files that rcnn did not write" in res.output
    assert hashes(images) == before


def test_detect_never_writes_over_its_own_input_in_a_run_folder(tmp_path, synth_model, synth_data):
    run = tmp_path / "run"
    src = sorted((synth_data / "JPEGImages").glob("*.jpg"))[:1]
    assert CliRunner().invoke(main, ["detect", str(synth_model), str(src[0]), "--out", str(run)]).exit_code == 0
    annotated = run / src[0].name
    before = hashes(run)
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(annotated), "--out", str(run)])
    assert res.exit_code == 1 and "would replace the input image" in res.output
    assert hashes(run) == before


def test_evaluate_of_a_model_never_writes_beside_the_images(tmp_path, synth_model, synth_parsed, synth_data, monkeypatch):
    """Run from inside an image folder with --out report.json, it used to write annotated images over the test images."""
    ds = Dataset.load(synth_parsed)
    folder = Path(ds.split("test")[0].path).parent
    before = hashes(folder)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for a in ds.split("test"):  # the test images, copied into the working folder by name
        shutil.copy(a.path, work / Path(a.path).name)
    monkeypatch.chdir(work)
    images_before = hashes(work)
    res = CliRunner().invoke(main, ["evaluate", str(synth_model), str(synth_parsed), "--out", "report.json"])
    assert res.exit_code == 0, res.output
    after = hashes(work)
    assert {k: after[k] for k in images_before} == images_before
    assert (work / "report_detect" / "detections.json").is_file() and (work / "report.json").is_file()
    assert hashes(folder) == before


def test_single_file_outputs_are_never_a_users_file(tmp_path, synth_data, synth_parsed):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    res = CliRunner().invoke(main, ["parse", str(synth_data), "--out", str(mine)])
    assert res.exit_code == 1 and "was not written by this rcnn command" in res.output and mine.read_text() == '{"mine": true}'
    xml = next((synth_data / "Annotations").glob("*.xml"))
    before = xml.read_bytes()
    res = CliRunner().invoke(main, ["parse", str(synth_data), "--out", str(xml)])
    assert res.exit_code == 1 and xml.read_bytes() == before
    ours = tmp_path / "parsed.json"
    for _ in range(2):  # our own file is rewritten
        assert CliRunner().invoke(main, ["parse", str(synth_data), "--out", str(ours)]).exit_code == 0


def test_one_commands_file_is_not_another_commands_output(tmp_path, synth_model, synth_parsed):
    """An rcnn file of another kind (a model config, region-set metadata) is as much off limits as a user's."""
    folder = shutil.copytree(synth_model, tmp_path / "m")
    before = hashes(folder)
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["detect", str(folder), str(Path(Dataset.load(synth_parsed).images[0].path)),
                                     "--out", str(run), "--no-images"]).exit_code == 0
    for out in (folder / "config.json", folder / "new.json"):
        res = CliRunner().invoke(main, ["evaluate", str(run / "detections.json"), str(synth_parsed), "--out", str(out)])
        assert res.exit_code == 1, res.output
    res = CliRunner().invoke(main, ["parse", str(Path(synth_parsed).parent), "--out", str(folder / "config.json")])
    assert res.exit_code != 0
    assert hashes(folder) == before


# ----------------------------------------------------------------------------- 2: caches keyed on what they were built from


def test_crop_rebuilds_shards_when_proposals_or_annotations_change(tmp_path, synth_parsed):
    ds = Dataset.load(synth_parsed)
    props, crops = tmp_path / "props", tmp_path / "crops"
    cfg = CropConfig(size=32, context=2, neg_per_image=4)
    propose_dataset(ds, props, ProposeConfig(max_side=120), split="train", workers=1, progress=False)
    first = crop_dataset(ds, props, crops, cfg, progress=False)
    assert first["reused_images"] == 0
    assert crop_dataset(ds, props, crops, cfg, progress=False)["reused_images"] == first["images"]
    # other proposal settings into the same folder: every shard is rebuilt
    propose_dataset(ds, props, ProposeConfig(max_side=160), split="train", workers=1, progress=False)
    again = crop_dataset(ds, props, crops, cfg, progress=False)
    assert again["reused_images"] == 0
    assert json.loads((crops / "meta.json").read_text())["propose"]["max_side"] == 160
    # an edited annotation: only that image's shard is rebuilt, and it holds the new labels
    edited = next(a for a in ds.split("train") if a.objects)
    edited.objects = edited.objects[:1]
    edited.objects[0].box = [0.0, 0.0, 30.0, 30.0]
    third = crop_dataset(ds, props, crops, cfg, progress=False)
    assert third["reused_images"] == first["images"] - 1
    shard = np.load(crops / "shards" / f"{edited.id}.npz")
    assert (shard["boxes"][0] == [0, 0, 30, 30]).all()  # the ground-truth box comes first


def test_an_interrupted_crop_is_refused_by_train(tmp_path, synth_parsed, synth_props, monkeypatch):
    from rcnn import crop as crop_mod

    ds = Dataset.load(synth_parsed)
    crops = tmp_path / "crops"
    crop_dataset(ds, synth_props, crops, CropConfig(size=32, context=2, neg_per_image=4), progress=False)
    train_mod.RegionSet.load(crops)
    calls = []
    real = crop_mod.crop_image

    def dies_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(crop_mod, "crop_image", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        crop_dataset(ds, synth_props, crops, CropConfig(size=32, context=2, neg_per_image=20), progress=False)
    with pytest.raises(DataError, match="meta.json"):
        train_mod.RegionSet.load(crops)  # two shards are new, the metadata was of the old set: refused
    monkeypatch.undo()
    crop_dataset(ds, synth_props, crops, CropConfig(size=32, context=2, neg_per_image=20), progress=False)
    meta = json.loads((crops / "meta.json").read_text())
    # a shard swapped in from elsewhere does not match the metadata's key
    first, second = (crops / "shards" / f"{i}.npz" for i in meta["images"][:2])
    first.write_bytes(second.read_bytes())
    with pytest.raises(DataError, match="does not belong to"):
        train_mod.RegionSet.load(crops)


def test_two_trainings_into_one_folder_cannot_overlap(tmp_path, synth_crops):
    from rcnn.io import folder_lock, output_dir

    out = output_dir(tmp_path / "m", "model")
    with folder_lock(out, "rcnn train"):
        with pytest.raises(DataError, match="in use by another rcnn train"):
            train(synth_crops, out, TrainConfig(weights="none", epochs=1), progress=False)


def test_crop_refuses_another_datasets_proposals(tmp_path, synth_parsed, synth_props):
    ds = Dataset.load(synth_parsed)
    other = tmp_path / "other.jpg"
    img = ds.split("train")[0]
    other.write_bytes(Path(ds.split("test")[0].path).read_bytes())
    img.path = str(other)  # same id, another picture
    with pytest.raises(DataError, match="were not computed from"):
        crop_dataset(ds, synth_props, tmp_path / "crops", progress=False)


# ----------------------------------------------------------------------------- 3: delete only what carries our marker


def test_propose_and_crop_refuse_a_folder_they_did_not_write(tmp_path, synth_parsed, synth_props):
    user = tmp_path / "mine"
    (user / "boxes").mkdir(parents=True)
    (user / "settings.json").write_text('{"config": {"mode": "mine"}}')
    (user / "boxes" / "keep.npy").write_bytes(b"precious")
    before = hashes(user)
    for args in (["propose", str(synth_parsed), "--out", str(user)], ["crop", str(synth_parsed), str(synth_props), "--out", str(user)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and "rcnn did not write" in res.output, res.output
        assert hashes(user) == before
    # another kind of rcnn folder is refused too
    res = CliRunner().invoke(main, ["crop", str(synth_parsed), str(synth_props), "--out", str(synth_props)])
    assert res.exit_code == 1 and "holds rcnn proposals output" in res.output


# ----------------------------------------------------------------------------- 4: a model folder is old or new, never half


def _scores(folder: Path, crops: np.ndarray) -> np.ndarray:
    return load_model(folder).scores(crops)


def test_interrupted_commit_keeps_the_old_model(tmp_path, synth_model, synth_crops, monkeypatch):
    folder = shutil.copytree(synth_model, tmp_path / "m")
    crops = train_mod.RegionSet.load(synth_crops).crops(np.arange(6))
    old = _scores(folder, crops)
    config = ModelConfig.load(folder)
    net = load_model(folder).net

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod, "write_json", crash)  # dies after staging, before config.json
    for p in net.parameters():
        p.data.add_(1.0)
    state = net.state_dict()
    with pytest.raises(KeyboardInterrupt):
        model_mod.commit_model(folder, config, {"model.pt": lambda p: model_mod.torch.save(state, p)})
    assert (folder / "model.pt.next").exists()
    np.testing.assert_allclose(_scores(folder, crops), old, atol=1e-6)  # the old model, complete
    monkeypatch.undo()


def test_commit_interrupted_after_config_loads_the_new_model(tmp_path, synth_model, synth_crops, monkeypatch):
    folder = shutil.copytree(synth_model, tmp_path / "m")
    crops = train_mod.RegionSet.load(synth_crops).crops(np.arange(6))
    config = ModelConfig.load(folder)
    net = load_model(folder).net
    with model_mod.torch.no_grad():
        net.head[-1].bias.add_(5.0)
    state = net.state_dict()
    monkeypatch.setattr(model_mod, "finish_commit", lambda *a, **k: None)  # dies after config.json, before the renames
    model_mod.commit_model(folder, config, {"model.pt": lambda p: model_mod.torch.save(state, p)})
    monkeypatch.undo()
    new = _scores(folder, crops)
    assert (folder / "model.pt.next").exists()
    model_mod.finish_commit(folder, ModelConfig.load(folder))  # what the next `rcnn train` does first
    assert not (folder / "model.pt.next").exists()
    np.testing.assert_allclose(_scores(folder, crops), new, atol=1e-6)


def test_a_changed_model_pt_is_refused_not_used(tmp_path, synth_model):
    folder = shutil.copytree(synth_model, tmp_path / "m")
    other = ModelConfig.load(folder)
    shutil.copy(folder / "model.pt", tmp_path / "keep.pt")
    state = model_mod.torch.load(folder / "model.pt", weights_only=True)
    state["bbox.bias"] = state["bbox.bias"] + 1
    model_mod.torch.save(state, folder / "model.pt")
    with pytest.raises(DataError, match="does not match config.json"):
        load_model(folder)
    assert other.files["model.pt"]


def test_interrupted_resume_leaves_the_model_folder_as_it_was(tmp_path, synth_crops, monkeypatch):
    cfg = dict(backbone="efficientnet_lite0", weights="none", batch_size=32, optimizer="adam")
    out = tmp_path / "m"
    train(synth_crops, out, TrainConfig(epochs=2, **cfg), progress=False)
    before = {k: v for k, v in hashes(out).items() if not k.startswith(("checkpoint", "cache"))}
    real = train_mod.train_one_epoch

    def dies_at_epoch_4(run, epoch):
        if epoch == 4:
            raise KeyboardInterrupt
        return real(run, epoch)

    monkeypatch.setattr("rcnn.arch.rcnn.train.train_one_epoch", dies_at_epoch_4)  # where the classic epoch lives
    with pytest.raises(KeyboardInterrupt):
        train(synth_crops, out, TrainConfig(epochs=5, **cfg), resume=True, progress=False)
    after = {k: v for k, v in hashes(out).items() if not k.startswith(("checkpoint", "cache"))}
    assert after == before  # model.pt, config.json, report.json, history.csv: all still the 2-epoch model
    load_model(out)
    monkeypatch.undo()
    report = train(synth_crops, out, TrainConfig(epochs=5, **cfg), resume=True, progress=False)
    assert report["epochs"] == 5 and len((out / "history.csv").read_text().splitlines()) == 6


# ----------------------------------------------------------------------------- 6: every input its own output


def test_same_stems_get_their_own_outputs(tmp_path, synth_model, synth_data):
    src = sorted((synth_data / "JPEGImages").glob("*.jpg"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(src[0], tmp_path / "a" / "x.jpg")
    from PIL import Image

    Image.open(src[1]).save(tmp_path / "a" / "x.png")
    shutil.copy(src[2], tmp_path / "b" / "x.jpg")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["detect", str(synth_model), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(run),
                                    "--save-xml", "--threshold", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    names = [p["output"] for p in summary["per_image"]]
    assert len(set(names)) == 3
    assert sorted(p.stem for p in run.glob("*.jpg")) == sorted(names)
    assert sorted(p.stem for p in (run / "labels").glob("*.xml")) == sorted(names)


def test_detect_finds_proposals_by_image_content_not_name(tmp_path, synth_parsed, synth_props, synth_model):
    from rcnn.propose import ProposalSet

    ds = Dataset.load(synth_parsed)
    a, b = ds.images[0], ds.images[1]
    renamed = tmp_path / f"{Path(b.path).stem}.jpg"  # b's name, a's picture
    shutil.copy(a.path, renamed)
    pset = ProposalSet.load(synth_props)
    np.testing.assert_array_equal(pset.find(renamed), pset.boxes(a.id))
    unknown = tmp_path / "new.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(unknown)
    assert pset.find(unknown) is None


# ----------------------------------------------------------------------------- 7: reserved class names in model folders


@pytest.mark.parametrize("classes", ["abc", ["background"], ["cat", "dog"], ["background", "cat", "Background"], ["background", "cat", "cat"]])
def test_model_config_classes_are_validated(classes):
    d = {"classes": classes, "backbone": "efficientnet_lite0", "input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(ValueError, match="classes"):
        ModelConfig.from_json(d)


# ----------------------------------------------------------------------------- 8: pool workers die with their parent


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("PPid:")), None)
        if ppid == pid:
            out.append(int(status.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_killed_propose_leaves_no_workers(tmp_path):
    from rcnn.parse import parse_dataset
    from rcnn.synth import make_dataset

    data = make_dataset(tmp_path / "big", images=6, seed=1, width=1600, height=1200)
    parsed = tmp_path / "parsed.json"
    parse_dataset(data).save(parsed)
    proc = subprocess.Popen([sys.executable, "-m", "rcnn.cli", "propose", str(parsed), "--out", str(tmp_path / "p"),
                             "--workers", "2", "--mode", "quality", "--max-side", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]
    assert workers, "no pool worker started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return "Z"


# ----------------------------------------------------------------------------- 9: bounded memory for huge images


def test_huge_images_are_warped_from_a_bounded_copy(monkeypatch):
    """The float copy of the image is made once, of at most MAX_WARP_SIDE on the long side."""
    from rcnn import crop as crop_mod

    monkeypatch.setattr(crop_mod, "MAX_WARP_SIDE", 256)
    seen = []
    real = crop_mod.roi_align

    def spy(img, *a, **k):
        seen.append((img.data_ptr(), tuple(img.shape)))
        return real(img, *a, **k)

    monkeypatch.setattr(crop_mod, "roi_align", spy)
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))  # 1024 x 1536
    boxes = np.array([[0, 0, 1536, 1024], [160, 320, 800, 960]] * 80, np.float32)
    small = crop_mod.warp_regions(image, boxes, 32, 0, chunk=64)
    assert {s for _, s in seen} == {(1, 3, 171, 256)} and len({p for p, _ in seen}) == 1  # one copy, 3 chunks
    monkeypatch.setattr(crop_mod, "MAX_WARP_SIDE", 4096)
    full = crop_mod.warp_regions(image, boxes[:2], 32, 0)
    assert np.abs(small[:2].astype(int) - full.astype(int)).mean() < 8  # the same crops, up to resampling


# ----------------------------------------------------------------------------- 11, 15: one line, on stderr, non-zero when nothing worked


def test_an_unwritable_output_is_one_line(tmp_path, synth_data, monkeypatch):
    import rcnn.io as io_mod

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "x.json"))

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", denied)
    res = CliRunner().invoke(main, ["parse", str(synth_data), "--out", str(tmp_path / "ro" / "x.json")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == f"Error: {tmp_path / 'ro' / 'x.json'}: Permission denied"


def test_propose_exits_non_zero_when_no_image_could_be_read(tmp_path, synth_parsed):
    d = json.loads(synth_parsed.read_text())
    for k, a in enumerate(d["images"][:2]):
        bad = tmp_path / f"bad{k}.jpg"
        bad.write_bytes(b"not an image")
        a["path"] = str(bad)
    d["images"] = d["images"][:2]
    parsed = tmp_path / "parsed.json"
    parsed.write_text(json.dumps(d))
    res = CliRunner().invoke(main, ["propose", str(parsed), "--out", str(tmp_path / "p"), "--workers", "1"])
    assert res.exit_code == 1
    assert "bad0.jpg" in res.stderr and "no proposals could be computed" in res.stderr
