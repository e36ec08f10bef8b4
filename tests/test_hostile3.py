"""Hostile inputs, round three (issue 25): names that escape their folder, clusters that never answer, and the rest.

The contract of the writers, checked from outside: given a dataset or parsed file whose image ids or class names
hold ``../`` or an absolute path, every command either refuses it with one line naming the value (exit != 0) or
writes only inside its output folder; no file outside it is created, changed or deleted (:func:`outside_changes`
hashes the whole temporary tree but the output folder, before and after). Escaping names point back into the
test's own temporary folder, so that a failing run damages nothing else.

Hangs (an unreachable Ray cluster, a FIFO) run in a subprocess with a timeout; the rest run in-process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from rcnn.cli import main
from tests.conftest import voc_xml

REPO = Path(__file__).resolve().parents[1]
DETECT_FAST = ("--device", "cpu", "--max-side", "100", "--detect-proposals", "40")
BOUND_S = 60.0  # the contract: an unreachable cluster is one line within 60 s


# --------------------------------------------------------------------------- checking


def tree_state(root: Path, skip: Path) -> dict[str, str]:
    """sha256 and mtime of every file, the target of every link and "dir" for every folder under ``root``, but ``skip``."""
    state: dict[str, str] = {}
    skip_s = str(skip)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == skip_s or dirpath.startswith(skip_s + os.sep):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if p == skip_s:
                continue
            if os.path.islink(p):
                state[p] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                state[p] = "dir"
            elif os.path.isfile(p):
                state[p] = f"{hashlib.sha256(Path(p).read_bytes()).hexdigest()} {os.stat(p).st_mtime_ns}"
            else:
                state[p] = "special"
    return state


def outside_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths created, changed or deleted (one line each)."""
    out = [f"created {p}" for p in sorted(set(after) - set(before))]
    out += [f"changed {p}" for p in sorted(p for p in before if p in after and before[p] != after[p])]
    out += [f"deleted {p}" for p in sorted(set(before) - set(after))]
    return out


def last_line(res: Result) -> str:
    text = (res.stderr or "") if res.stderr.strip() else res.output
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def invoke(args: list[str], cwd: Path) -> Result:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def run_contained(root: Path, out: Path, args: list[str], token: str, setup: Callable[[], Any] | None = None) -> Result:
    """Run ``rcnn args`` and check the contract: no change under ``root`` outside ``out``; a refusal is one line naming ``token``."""
    before = tree_state(root, out)
    res = invoke(args, root)
    after = tree_state(root, out)
    assert res.exception is None or isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}\n{res.output}"
    assert "Traceback" not in res.output + (res.stderr or "")
    changes = outside_changes(before, after)
    assert not changes, f"rcnn {' '.join(map(str, args[:1]))} wrote outside {out}: {changes[:5]}\n{res.output[-1500:]}"
    if res.exit_code != 0:
        assert token in last_line(res), f"refused without naming {token!r}: {last_line(res)!r}"
    return res


# --------------------------------------------------------------------------- inputs


def parsed_dict(synth_parsed: Path) -> dict[str, Any]:
    return json.loads(synth_parsed.read_text())


def escaping_id(kind: str, root: Path, token: str) -> str:
    """An image id or class name that leaves its folder: ``../`` enough times to climb out of any output folder
    nested <= 5 deep under ``root`` (and land inside it), or an absolute path under ``root``."""
    if kind == "relative":
        return "../../../../../" + token
    return str(root / "abs" / token)


def parsed_with_ids(synth_parsed: Path, dst: Path, rename: dict[str, str]) -> Path:
    d = parsed_dict(synth_parsed)
    for a in d["images"]:
        a["id"] = rename.get(a["id"], a["id"])
    dst.write_text(json.dumps(d))
    return dst


def deep(root: Path, name: str) -> Path:
    """An output folder five levels under ``root`` (``../`` x5 from its subfolder lands inside ``root``); its parent is made."""
    (root / "w1" / "w2" / "w3").mkdir(parents=True, exist_ok=True)
    return root / "w1" / "w2" / "w3" / name


def first_ids(synth_parsed: Path, split: str = "train", n: int = 1) -> list[str]:
    return [a["id"] for a in parsed_dict(synth_parsed)["images"] if a["split"] == split][:n]


KINDS = ["relative", "absolute"]


# --------------------------------------------------------------------------- ids from a hand-edited parsed file


@pytest.mark.parametrize("kind", KINDS)
def test_propose_keeps_an_escaping_image_id_inside_boxes(kind: str, synth_parsed: Path, tmp_path: Path):
    token = "pwn_propose"
    bad = escaping_id(kind, tmp_path, token)
    parsed = parsed_with_ids(synth_parsed, tmp_path / "parsed.json", {first_ids(synth_parsed)[0]: bad})
    (tmp_path / "abs").mkdir()
    out = deep(tmp_path, "props")
    run_contained(tmp_path, out, ["propose", parsed, "--out", out, "--workers", "1", "--max-side", "60", "--split", "train"],
                  token)


@pytest.mark.parametrize("kind", KINDS)
def test_show_keeps_an_escaping_image_id_inside_images(kind: str, synth_parsed: Path, tmp_path: Path):
    token = "pwn_show"
    bad = escaping_id(kind, tmp_path, token)
    parsed = parsed_with_ids(synth_parsed, tmp_path / "parsed.json", {first_ids(synth_parsed)[0]: bad})
    (tmp_path / "abs").mkdir()
    out = deep(tmp_path, "show")
    run_contained(tmp_path, out, ["show", parsed, "--out", out, "--split", "train"], token)


def props_for(synth_parsed: Path, synth_props: Path, dst: Path, old: str, new: str) -> Path:
    """A copy of the proposals fixture whose boxes of image ``old`` are also found under the id ``new``
    (``boxes/<new>.npy``, which may lie outside the copy: that is where the reader looks)."""
    shutil.copytree(synth_props, dst)
    for ext in (".npy", ".json"):
        target = Path(os.path.normpath(dst / "boxes" / f"{new}{ext}")) if not os.path.isabs(new) else Path(f"{new}{ext}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dst / "boxes" / f"{old}{ext}", target)
    return dst


@pytest.mark.parametrize("kind", KINDS)
def test_crop_keeps_an_escaping_image_id_inside_shards(kind: str, synth_parsed: Path, synth_props: Path, tmp_path: Path):
    token = "pwn_crop"
    good = first_ids(synth_parsed)[0]
    bad = escaping_id(kind, tmp_path, token)
    parsed = parsed_with_ids(synth_parsed, tmp_path / "parsed.json", {good: bad})
    props = props_for(synth_parsed, synth_props, deep(tmp_path, "props"), good, bad)
    out = deep(tmp_path, "crops")
    run_contained(tmp_path, out, ["crop", parsed, props, "--out", out, "--size", "32", "--context", "2",
                                  "--neg-per-image", "4"], token)


@pytest.mark.parametrize("kind", KINDS)
def test_crop_dataset_keeps_an_escaping_image_id_inside_shards(kind: str, synth_parsed: Path, synth_props: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The library writer itself (the CLI finds no proposals under such an id: ``boxes/*.npy`` stems hold no ``/``)."""
    from rcnn.crop import CropConfig, crop_dataset
    from rcnn.errors import RcnnError
    from rcnn.parse import Dataset
    from rcnn.propose import ProposalSet

    token = "pwn_cropapi"
    good = first_ids(synth_parsed)[0]
    bad = escaping_id(kind, tmp_path, token)
    (tmp_path / "abs").mkdir()
    parsed = parsed_with_ids(synth_parsed, tmp_path / "parsed.json", {good: bad})
    props = props_for(synth_parsed, synth_props, deep(tmp_path, "props"), good, bad)
    pset = ProposalSet.load(props)
    pset.ids.append(bad)  # as if boxes/ held it
    monkeypatch.setattr(ProposalSet, "load", classmethod(lambda cls, folder: pset))
    out = deep(tmp_path, "crops")
    before = tree_state(tmp_path, out)
    try:
        crop_dataset(Dataset.load(parsed), props, out, CropConfig(size=32, context=2, neg_per_image=4), progress=False)
    except (RcnnError, ValueError) as e:
        assert token in str(e) and "\n" not in str(e).strip(), str(e)
    assert outside_changes(before, tree_state(tmp_path, out)) == []


# --------------------------------------------------------------------------- class names from every format, through crop


def voc_with_class(dst: Path, synth_data: Path, name: str) -> Path:
    (dst / "Annotations").mkdir(parents=True)
    (dst / "JPEGImages").mkdir()
    for k, img in enumerate(sorted((synth_data / "JPEGImages").glob("*.jpg"))[:4]):
        shutil.copyfile(img, dst / "JPEGImages" / img.name)
        from PIL import Image

        with Image.open(img) as im:
            size = im.size
        (dst / "Annotations" / f"{img.stem}.xml").write_text(voc_xml(img.name, [(name, 10, 10, 70, 70)], size=size))
    return dst


def coco_with_class(dst: Path, synth_data: Path, name: str) -> Path:
    (dst / "images").mkdir(parents=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": name}]}
    for k, img in enumerate(sorted((synth_data / "JPEGImages").glob("*.jpg"))[:4], start=1):
        shutil.copyfile(img, dst / "images" / img.name)
        coco["images"].append({"id": k, "file_name": img.name})
        coco["annotations"].append({"id": k, "image_id": k, "category_id": 1, "bbox": [10, 10, 60, 60], "iscrowd": 0})
    (dst / "annotations").mkdir()
    (dst / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return dst


def yolo_with_class(dst: Path, synth_data: Path, name: str) -> Path:
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    for img in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:4]:
        shutil.copyfile(img, dst / "images" / img.name)
        (dst / "labels" / f"{img.stem}.txt").write_text("0 0.3 0.3 0.3 0.3\n")
    (dst / "classes.txt").write_text(name + "\n")
    return dst


FORMATS = {"voc": voc_with_class, "coco": coco_with_class, "yolo": yolo_with_class}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_class_name_that_escapes_never_leaves_the_imagefolder(fmt: str, kind: str, synth_data: Path, tmp_path: Path):
    """parse (each format) -> propose -> crop --format imagefolder: the class folder stays inside; or a one-line refusal."""
    token = f"pwn_class_{fmt}"
    bad = escaping_id(kind, tmp_path, token)
    (tmp_path / "abs").mkdir()
    ds = FORMATS[fmt](tmp_path / "ds", synth_data, bad)
    parsed = tmp_path / "parsed" / "parsed.json"
    res = run_contained(tmp_path, parsed.parent, ["parse", ds, "--out", parsed], token)
    if res.exit_code != 0:
        return  # refused, naming the value
    d = json.loads(parsed.read_text())
    for a in d["images"]:
        a["split"] = "train"
    parsed.write_text(json.dumps(d))
    props = deep(tmp_path, "props")
    res = run_contained(tmp_path, props, ["propose", parsed, "--out", props, "--workers", "1", "--max-side", "60"], token)
    if res.exit_code != 0:
        return
    out = deep(tmp_path, "crops")
    run_contained(tmp_path, out, ["crop", parsed, props, "--out", out, "--size", "32", "--context", "2",
                                  "--neg-per-image", "2", "--format", "imagefolder"], token)


# --------------------------------------------------------------------------- detect: crops by class, merge, links


def model_with_classes(synth_model: Path, dst: Path, rename: Callable[[str], str]) -> Path:
    shutil.copytree(synth_model, dst, ignore=shutil.ignore_patterns("cache"))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["classes"] = [c if c == "background" else rename(c) for c in cfg["classes"]]
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst


@pytest.mark.parametrize("kind", KINDS)
def test_detect_save_crop_keeps_an_escaping_class_inside_crops(kind: str, synth_model: Path, synth_data: Path, tmp_path: Path):
    token = "pwn_detect"
    (tmp_path / "abs").mkdir()
    model = model_with_classes(synth_model, tmp_path / "model", lambda c: escaping_id(kind, tmp_path, f"{token}_{c}"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for img in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copyfile(img, imgs / img.name)
    out = deep(tmp_path, "run")
    res = run_contained(tmp_path, out, ["detect", model, imgs, "--out", out, "--save-crop", "--threshold", "0.01",
                                        *DETECT_FAST], token)
    if res.exit_code == 0:
        assert any((out / "crops").rglob("*.jpg")), "no crops written: the test proves nothing"


def test_detect_merge_refuses_a_plan_whose_names_escape(synth_model: Path, synth_data: Path, tmp_path: Path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for img in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copyfile(img, imgs / img.name)
    run = deep(tmp_path, "run")
    res = invoke(["detect", synth_model, imgs, "--out", run, "--shard", "0/1", "--save-txt", *DETECT_FAST], tmp_path)
    assert res.exit_code == 0, res.output
    plan = json.loads((run / "parts" / "plan.json").read_text())
    plan["names"] = ["../../../../pwn_merge", plan["names"][1]]
    (run / "parts" / "plan.json").write_text(json.dumps(plan))
    for p in (run / "parts").glob("*.json"):
        if p.name != "plan.json":
            p.unlink()  # the images are detected again, under the plan's names
    run_contained(tmp_path, run, ["detect", "--merge", run], "pwn_merge")


@pytest.mark.parametrize("what", ["file", "folder"])
def test_propose_never_writes_through_a_link_left_in_boxes(what: str, synth_parsed: Path, tmp_path: Path):
    """A link in ``boxes/`` (to a user's file, or ``boxes`` itself to a user's folder) is replaced or refused, never followed."""
    out = tmp_path / "props"
    args = ["propose", synth_parsed, "--out", out, "--workers", "1", "--max-side", "60", "--split", "test"]
    assert invoke(args, tmp_path).exit_code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    image_id = first_ids(synth_parsed, "test")[0]
    if what == "file":
        for ext in (".npy", ".json"):
            (victim / f"mine{ext}").write_text("the user's file\n")
            (out / "boxes" / f"{image_id}{ext}").unlink()
            (out / "boxes" / f"{image_id}{ext}").symlink_to(victim / f"mine{ext}")
    else:
        shutil.rmtree(out / "boxes")
        (out / "boxes").symlink_to(victim)
    before = tree_state(tmp_path, out)
    res = invoke([*args, "--max-side", "50"], tmp_path)  # other settings: every image is proposed again
    assert "Traceback" not in res.output
    assert outside_changes(before, tree_state(tmp_path, out)) == []
    if res.exit_code != 0:
        assert "boxes" in last_line(res), last_line(res)


# --------------------------------------------------------------------------- YOLO data.yaml leaving its dataset


def test_yolo_yaml_split_outside_the_dataset_is_refused(synth_data: Path, tmp_path: Path):
    other = tmp_path / "other"
    (other / "images" / "train").mkdir(parents=True)
    (other / "labels" / "train").mkdir(parents=True)
    for img in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copyfile(img, other / "images" / "train" / img.name)
        (other / "labels" / "train" / f"{img.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "data.yaml").write_text("path: .\ntrain: ../other/images/train\nnames: [disc]\n")
    res = invoke(["parse", ds, "--out", tmp_path / "parsed.json"], tmp_path)
    assert res.exit_code != 0, f"read images from outside the dataset: {res.output[-500:]}"
    assert "../other/images/train" in last_line(res), last_line(res)


# --------------------------------------------------------------------------- an unreachable Ray cluster


def run_bounded(args: list[str], cwd: Path, timeout: float = BOUND_S, module: str = "rcnn.cli") -> tuple[int | None, str, float]:
    """``python -m module args`` in a new session; killed (with its children) after ``timeout`` s: (exit, stdout+stderr, s)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RCNN_DEBUG", None)
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        code: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        code = None
    return code, out.decode("utf-8", "replace") + err.decode("utf-8", "replace"), time.perf_counter() - t


RAY_ADDRESSES = ["127.0.0.1:1", "no-such-host.invalid:6379"]


def ray_args(command: str, tmp: Path, synth_parsed: Path, synth_props: Path, synth_model: Path, synth_data: Path) -> list[str]:
    if command == "propose":
        return ["propose", synth_parsed, "--out", tmp / "props"]
    if command == "crop":
        return ["crop", synth_parsed, synth_props, "--out", tmp / "crops"]
    if command == "detect":
        return ["detect", synth_model, synth_data / "JPEGImages", "--out", tmp / "run", "--device", "cpu"]
    return ["pipeline", synth_data, "--out", tmp / "pipe", "--epochs", "1", "--device", "cpu"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
@pytest.mark.parametrize("address", RAY_ADDRESSES)
@pytest.mark.parametrize("command", ["propose", "crop", "detect", "pipeline"])
def test_an_unreachable_ray_cluster_is_one_line_within_a_minute(command: str, address: str, synth_parsed: Path,
                                                                 synth_props: Path, synth_model: Path, synth_data: Path,
                                                                 tmp_path: Path):
    args = [*ray_args(command, tmp_path, synth_parsed, synth_props, synth_model, synth_data), "--ray", address]
    code, text, seconds = run_bounded(args, tmp_path)
    assert code is not None, f"rcnn {command} --ray {address} still running after {seconds:.0f} s"
    assert code != 0 and "Traceback" not in text, text[-1500:]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert address in lines[-1] and len(lines[-1]) < 400, lines[-3:]


NOT_RAY = """
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(5)  # answers TCP, never speaks Ray
from rcnn.scale import ray_cluster
t = time.perf_counter()
try:
    with ray_cluster(f"127.0.0.1:{srv.getsockname()[1]}", timeout=5):
        print("CONNECTED")
except Exception as e:
    print("RAISED", type(e).__name__, e)
print("SECONDS", round(time.perf_counter() - t, 1))
"""


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_ray_cluster_gives_up_on_a_port_that_answers_but_is_not_ray_within_its_timeout(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", NOT_RAY], capture_output=True, text=True, timeout=90, cwd=tmp_path, env=env)
    assert "RAISED RcnnError cannot connect to the Ray cluster at 127.0.0.1:" in p.stdout, p.stdout + p.stderr[-1000:]
    assert "within 5 s" in p.stdout, p.stdout  # the timeout given reached the connection (bounded by run's 90 s)


def test_ray_cluster_refuses_a_timeout_that_is_not_positive():
    pytest.importorskip("ray")
    from rcnn.scale import RAY_TIMEOUT, ray_cluster

    assert RAY_TIMEOUT == 30.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ray_timeout"):
            with ray_cluster("127.0.0.1:1", timeout=bad):
                pass


# --------------------------------------------------------------------------- the residual-network study


def test_resnet_train_on_a_fifo_named_like_a_cifar_batch_is_one_line(tmp_path: Path):
    data = tmp_path / "cifar"
    data.mkdir()
    (data / "test_batch.bin").write_bytes(bytes(3073))
    os.mkfifo(data / "data_batch_1.bin")
    os.mkfifo(tmp_path / "data_batch_2.bin")
    for target in (data, tmp_path / "data_batch_2.bin"):
        code, text, seconds = run_bounded(["train", "--data", target, "--out", tmp_path / "run", "--epochs", "1",
                                           "--device", "cpu"], tmp_path, timeout=60, module="rcnn.core.resnet")
        assert code is not None, f"hung on {target} ({seconds:.0f} s)"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert code != 0 and "Traceback" not in text and target.name in lines[-1], lines[-3:]


INVALID_SETTINGS = [
    ("--variant", ""),  # silently the default variant
    ("--variant", " "),
    ("--variant", "batch-identity-p1-batch-identity-p1"),
    ("--variant", "bätch-identity-p1"),
    ("--variant", "batch-identity-p１"),  # a full-width digit
    ("--blocks", ""),
    ("--blocks", "2,,2"),
    ("--blocks", "-1"),
    ("--blocks", "0"),
    ("--blocks", "２,２"),  # full-width digits: int() takes them
    ("--blocks", "2_0"),  # int() takes the underscore
    ("--blocks", "1000000"),  # a million blocks: would train for hours
    ("--blocks", "1,1,1,1,1,1,1,1,1,1,1,1"),  # 12 stages: 32 px halved 11 times, 65,536 channels
]


@pytest.mark.parametrize("option,value", INVALID_SETTINGS, ids=[f"{o}={v!r}" for o, v in INVALID_SETTINGS])
def test_resnet_train_refuses_invalid_settings_before_any_work(option: str, value: str, tmp_path: Path):
    from rcnn.core.resnet.cli import main as resnet_main

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    out = tmp_path / "run"
    res = CliRunner().invoke(resnet_main, ["train", "--data", str(data), "--out", str(out), option, value, "--epochs", "1"])
    text = (res.stderr or "") + res.output
    assert res.exit_code == 2, f"{option} {value!r}: exit {res.exit_code}: {text[-500:]}"
    assert option.lstrip("-") in last_line(res), last_line(res)
    assert not out.exists()


def tiny_resnet_run(tmp_path: Path) -> Path:
    from rcnn.core.resnet.cli import main as resnet_main
    from rcnn.core.resnet.data import make_digits

    data = make_digits(tmp_path / "digits", limit=60, seed=0)
    run = tmp_path / "run"
    res = CliRunner().invoke(resnet_main, ["train", "--data", str(data), "--out", str(run), "--width", "4", "--blocks", "1",
                                           "--epochs", "1", "--batch-size", "32", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    return run


@pytest.mark.parametrize("where", ["own-plot", "missing-folder", "through-missing-folder"])
def test_separability_compare_that_cannot_be_written_touches_no_run_file_first(where: str, tmp_path: Path):
    """``--compare`` at the run's own plot is refused before the work; a missing folder is created or refused first."""
    from rcnn.core.resnet.cli import main as resnet_main

    run = tiny_resnet_run(tmp_path)
    args = ["separability", str(run), "--fraction", "1", "-q", "--device", "cpu"]
    assert CliRunner().invoke(resnet_main, args).exit_code == 0
    compare = {"own-plot": run / "separability.png", "missing-folder": tmp_path / "no" / "such" / "cmp.png",
               "through-missing-folder": tmp_path / "gone" / ".." / "cmp.png"}[where]
    before = tree_state(run, tmp_path / "nothing")
    res = CliRunner().invoke(resnet_main, [*args, "--compare", str(compare)])
    assert "Traceback" not in res.output
    if res.exit_code != 0 or where == "own-plot":
        assert res.exit_code != 0 and compare.name in last_line(res), last_line(res)
        assert tree_state(run, tmp_path / "nothing") == before, "the run's files were rewritten before failing"
    else:
        assert Path(os.path.normpath(compare)).stat().st_size > 1000


# --------------------------------------------------------------------------- ONNX bound to its graph, not its metadata


def detections_of(run: Path) -> list[dict[str, Any]]:
    d = json.loads((run / "detections.json").read_text())
    return d if isinstance(d, list) else d["detections"]


def test_runtime_auto_never_uses_an_onnx_graph_of_another_model(synth_model: Path, synth_data: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = tmp_path / "model"
    shutil.copytree(synth_model, model, ignore=shutil.ignore_patterns("cache", "model.onnx"))
    res = invoke(["export", model], tmp_path)
    assert res.exit_code == 0, res.output
    proto = onnx.load(str(model / "model.onnx"))
    for init in proto.graph.initializer:  # another model's weights, this model's metadata
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[..., ::-1]) * 0.5, init.name))
    onnx.save(proto, str(model / "model.onnx"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copyfile(sorted((synth_data / "JPEGImages").glob("*.jpg"))[1], imgs / "x.jpg")
    got = {}
    for runtime in ("torch", "auto"):
        out = tmp_path / f"run_{runtime}"
        res = invoke(["detect", model, imgs, "--out", out, "--runtime", runtime, "--threshold", "0.05", *DETECT_FAST], tmp_path)
        assert res.exit_code == 0, res.output
        got[runtime] = [(d["category"], round(d["score"], 3)) for d in detections_of(out)]
    assert got["torch"], "no detections: the test proves nothing"
    assert got["auto"] == got["torch"]


# --------------------------------------------------------------------------- one output name per image and frame


def test_an_image_and_a_video_frame_never_share_an_output_name(synth_model: Path, synth_data: Path, tmp_path: Path):
    from tests.test_video import write_video
    from rcnn.io import load_rgb

    src = sorted((synth_data / "JPEGImages").glob("*.jpg"))
    inp = tmp_path / "inputs"
    inp.mkdir()
    shutil.copyfile(src[0], inp / "clip_0.jpg")
    write_video(inp / "clip.mp4", [load_rgb(p) for p in src[1:3]])
    run = tmp_path / "run"
    res = invoke(["detect", synth_model, inp, "--out", run, "--save-txt", "--save-conf", "--threshold", "0.01", *DETECT_FAST],
                 tmp_path)
    assert res.exit_code == 0, res.output
    labels = sorted(p.name for p in (run / "labels").glob("*.txt"))
    frames = 2
    assert len(labels) == 1 + frames, f"3 inputs (an image, {frames} frames) but label files {labels}"


# --------------------------------------------------------------------------- names with spaces, unicode and newlines


def test_names_with_spaces_and_unicode_work_through_every_command(synth_model: Path, synth_data: Path, tmp_path: Path):
    ds = tmp_path / "my data ü"
    (ds / "Annotations").mkdir(parents=True)
    (ds / "JPEGImages").mkdir()
    from PIL import Image

    stems = ["a photo", "фото 写真", "ünï cödé", "e\u0301 x"]
    for stem, img in zip(stems, sorted((synth_data / "JPEGImages").glob("*.jpg"))):
        shutil.copyfile(img, ds / "JPEGImages" / f"{stem}.jpg")
        with Image.open(img) as im:
            size = im.size
        (ds / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("disc class", 10, 10, 70, 70)], size=size))
    out = tmp_path / "out ü"
    steps = [
        ["parse", ds, "--out", out / "parsed.json"],
        ["show", out / "parsed.json", "--out", out / "show", "--split", "all"],
        ["propose", out / "parsed.json", "--out", out / "props", "--workers", "1", "--max-side", "60"],
        ["crop", out / "parsed.json", out / "props", "--out", out / "crops", "--size", "32", "--context", "2",
         "--neg-per-image", "2", "--format", "imagefolder", "--split", "all"],
        ["detect", synth_model, ds / "JPEGImages", "--out", out / "run", "--save-txt", "--save-crop", "--save-xml", *DETECT_FAST],
        ["evaluate", out / "run" / "detections.json", out / "parsed.json", "--out", out / "eval.json", "--split", "all"],
    ]
    for args in steps:
        res = invoke(args, tmp_path)
        assert res.exit_code == 0, f"rcnn {args[0]}: exit {res.exit_code}: {last_line(res)}"
    assert len(list((out / "show" / "images").glob("*.jpg"))) == 4


def test_split_files_that_list_ids_with_spaces_keep_those_images(synth_data: Path, tmp_path: Path):
    """VOC ``ImageSets/Main/*.txt`` lines are ``id`` or ``id flag``; a whole line that is an annotation's id is that id."""
    ds = tmp_path / "ds"
    (ds / "Annotations").mkdir(parents=True)
    (ds / "JPEGImages").mkdir()
    (ds / "ImageSets" / "Main").mkdir(parents=True)
    from PIL import Image

    stems = ["a photo", "фото 写真", "ünï cödé", "plain"]
    for stem, img in zip(stems, sorted((synth_data / "JPEGImages").glob("*.jpg"))):
        shutil.copyfile(img, ds / "JPEGImages" / f"{stem}.jpg")
        with Image.open(img) as im:
            size = im.size
        (ds / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("disc", 10, 10, 70, 70)], size=size))
    (ds / "ImageSets" / "Main" / "train.txt").write_text("a photo\nфото 写真\n")
    (ds / "ImageSets" / "Main" / "test.txt").write_text("ünï cödé\nplain\n")
    res = invoke(["parse", ds, "--out", tmp_path / "parsed.json"], tmp_path)
    assert res.exit_code == 0, last_line(res)
    splits = {a["id"]: a["split"] for a in json.loads((tmp_path / "parsed.json").read_text())["images"]}
    assert splits == {"a photo": "train", "фото 写真": "train", "ünï cödé": "test", "plain": "test"}, splits


def test_a_newline_in_an_image_name_is_refused_in_one_line_or_works(synth_data: Path, tmp_path: Path):
    ds = tmp_path / "ds"
    (ds / "Annotations").mkdir(parents=True)
    (ds / "JPEGImages").mkdir()
    from PIL import Image

    for stem, img in zip(["good", "new\nline"], sorted((synth_data / "JPEGImages").glob("*.jpg"))):
        shutil.copyfile(img, ds / "JPEGImages" / f"{stem}.jpg")
        with Image.open(img) as im:
            size = im.size
        (ds / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("disc", 10, 10, 70, 70)], size=size))
    parsed = tmp_path / "parsed.json"
    res = invoke(["parse", ds, "--out", parsed], tmp_path)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for args in (["show", parsed, "--out", tmp_path / "show", "--split", "all"],
                 ["propose", parsed, "--out", tmp_path / "props", "--workers", "1", "--max-side", "60"]):
        if not parsed.exists():
            break
        res = invoke(args, tmp_path)
        assert "Traceback" not in res.output
        assert res.exit_code == 0 or "line" in last_line(res) or "new" in last_line(res), last_line(res)


# --------------------------------------------------------------------------- rcnn.core.Model.load


def test_core_model_load_of_a_pickled_object_array_is_one_line_through_the_cli_wrapper(tmp_path: Path):
    """No ``rcnn`` command loads an ``rcnn.core`` model today; every one is wrapped in ``handle_errors``, which must turn
    ``ModelFileError`` into one line (exit 2) naming the file, without running the pickle."""
    import click

    from rcnn.cli import handle_errors
    from rcnn.core import Model
    from tests.hostile import core_corpus

    path = core_corpus(tmp_path / "files")["core-pickled-array"]

    @click.command()
    @handle_errors
    def load() -> None:
        Model.load(path)

    res = CliRunner().invoke(load, [])
    assert res.exit_code == 2 and path.name in last_line(res) and "Traceback" not in res.output, res.output
    assert len([ln for ln in ((res.stderr or "") + res.output).splitlines() if ln.strip() and "Usage" not in ln
                and "--help" not in ln]) <= 2
    assert not list(tmp_path.rglob("PWNED"))



@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
@pytest.mark.parametrize("command", ["propose", "pipeline"])
def test_ray_timeout_option_reaches_the_cluster_connection(command: str, synth_parsed: Path, synth_props: Path,
                                                           synth_model: Path, synth_data: Path, tmp_path: Path):
    import socket

    with socket.socket() as srv:  # answers TCP, never speaks Ray: only the timeout ends the wait
        srv.bind(("127.0.0.1", 0))
        srv.listen(5)
        address = f"127.0.0.1:{srv.getsockname()[1]}"
        args = [*ray_args(command, tmp_path, synth_parsed, synth_props, synth_model, synth_data), "--ray", address,
                "--ray-timeout", "3"]
        code, text, seconds = run_bounded(args, tmp_path)
    assert code is not None and code != 0, text[-1500:]
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    assert address in last and "within 3 s" in last, last
