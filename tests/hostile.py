"""A corpus of hostile inputs for every ``rcnn`` command (issue 9).

Plain functions, no test code: :func:`build_case` writes one case's inputs under a
folder and returns its :class:`Case` (the argv to run, with the paths filled in, and
what the run must do); :func:`build_corpus` writes them all. ``tests/test_hostile.py``
runs each case and checks the issue's contract:

* a bad input gives exit code != 0 (or a per-file line on stderr with the run going on),
  one line naming the file or value, and no ``Traceback``;
* no command modifies or deletes a file it did not create: the hash of every file
  that existed before a run is unchanged after it.

Cases are built from the session fixtures of ``tests/conftest.py`` (a synthetic VOC
dataset, its parsed records, proposals, region set and a trained model), reached
through :class:`Inputs` so that only the fixtures a case needs get built. Fixture
folders are only ever read: every case that damages one damages its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import voc_xml

EXPECTS = ("fail", "partial", "ok", "safe")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
GiB = 1 << 30


@dataclass
class Case:
    """One hostile run of the CLI.

    ``expect``:
        * ``fail``: exit code != 0 and the last line of stderr (stdout when stderr is empty) contains ``names``;
        * ``partial``: the bad part is reported: some line of stderr contains ``names``; any exit code;
        * ``ok``: not bad input at all (a trap for a wrong implementation): exit code 0 and ``check`` passes;
        * ``safe``: refusing is right and so is going on, as long as no file that was there is touched;
          a refusal (exit != 0) must end with a line containing ``names``.

    Every case also requires: no ``Traceback`` in stdout or stderr, no timeout, no ``PWNED`` file
    (see :class:`Evil`), and every file that existed before the run unchanged (except under ``owned``).
    """

    name: str
    args: list[str]  # argv after ``rcnn``
    expect: str
    names: str | None  # what the one-line error must contain: the bad file's name or the bad value
    also: list[str] = field(default_factory=list)  # substrings that must each appear somewhere on stderr
    process: bool = False  # run in a subprocess (needed for hangs, memory bombs and code-running pickles)
    timeout: float = 120.0  # seconds, for subprocess runs
    mem_limit: int | None = None  # bytes of address space (RLIMIT_AS) for subprocess runs
    cwd: Path | None = None  # working directory of the run; None: an empty folder of the case
    check: Callable[[], str | None] | None = None  # an extra check: returns what is wrong, or None
    # folders of rcnn's own earlier output given as --out: the command may rewrite the files in them
    owned: list[Path] = field(default_factory=list)
    slow: bool = False  # run only with RCNN_SLOW_HOSTILE=1

    def __post_init__(self) -> None:
        if self.expect not in EXPECTS:
            raise ValueError(f"'expect={self.expect}' is invalid; valid values are {', '.join(EXPECTS)}")


class Inputs:
    """The conftest fixtures a case is built from, fetched on first use through ``get(kind)``.

    ``kind`` is one of :attr:`KINDS`; ``get("model")`` returns the ``synth_model`` folder.
    """

    KINDS = ("data", "parsed", "props", "crops", "model")

    def __init__(self, get: Callable[[str], Path]) -> None:
        self._get = get
        self.used: dict[str, Path] = {}

    def __getattr__(self, kind: str) -> Path:
        if kind not in Inputs.KINDS:
            raise AttributeError(kind)
        if kind not in self.used:
            self.used[kind] = Path(self._get(kind))
        return self.used[kind]

    def roots(self) -> list[Path]:
        """The fixture files and folders used so far (to be hashed: they must never change)."""
        return list(self.used.values())


# --------------------------------------------------------------------------- registry

Builder = Callable[[Path, Inputs], Case]
BUILDERS: dict[str, Builder] = {}
HEAVY: set[str] = set()  # cases that start a subprocess importing torch (~5 s each)


def register(name: str, fn: Callable[..., Case], heavy: bool = False, **kwargs: Any) -> None:
    if name in BUILDERS:
        raise ValueError(f"case {name} registered twice")
    BUILDERS[name] = lambda folder, inp: replace(fn(folder, inp, **kwargs), name=name)
    if heavy:
        HEAVY.add(name)


def case(name: str, heavy: bool = False) -> Callable[[Callable[..., Case]], Callable[..., Case]]:
    def deco(fn: Callable[..., Case]) -> Callable[..., Case]:
        register(name, fn, heavy=heavy)
        return fn
    return deco


def case_names() -> list[str]:
    return list(BUILDERS)


def build_case(name: str, folder: Path, inputs: Inputs) -> Case:
    """Write the inputs of case ``name`` under ``folder`` (created) and return the case."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = BUILDERS[name](folder, inputs)
    if c.cwd is None:
        c.cwd = folder / "cwd"
        c.cwd.mkdir(exist_ok=True)
    return c


def build_corpus(folder: Path, inputs: Inputs) -> list[Case]:
    """Every case, each in its own subfolder of ``folder``."""
    return [build_case(n, Path(folder) / n, inputs) for n in BUILDERS]


# --------------------------------------------------------------------------- helpers


class Evil:
    """Unpickling this runs ``touch PWNED`` in the working directory: a loader must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch PWNED",))


def evil_pickle() -> bytes:
    import pickle

    return pickle.dumps({"net": Evil(), "config": {}, "epoch": 1}, protocol=2)


def evil_torch_file(path: Path, obj: Any = None, legacy: bool = False) -> Path:
    """A ``torch.save`` file (zip, or the legacy format) whose pickle runs ``touch PWNED`` when loaded
    without ``weights_only`` (checked: ``torch.load(path, weights_only=False)`` creates the file)."""
    import torch

    torch.save(obj if obj is not None else {"backbone.weight": Evil()}, path, _use_new_zipfile_serialization=not legacy)
    return path


def random_bytes(n: int = 4096, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def truncated(path: Path, fraction: float = 0.5) -> bytes:
    data = Path(path).read_bytes()
    return data[: max(1, int(len(data) * fraction))]


def synth_images(inp: Inputs) -> list[Path]:
    return sorted((inp.data / "JPEGImages").glob("*.jpg"))


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def mini_voc(dst: Path, inp: Inputs, n: int = 3, split_files: bool = False) -> Path:
    """A VOC dataset of the first ``n`` synthetic images (no ImageSets unless ``split_files``)."""
    (dst / "Annotations").mkdir(parents=True, exist_ok=True)
    (dst / "JPEGImages").mkdir(parents=True, exist_ok=True)
    ids = []
    for img in synth_images(inp)[:n]:
        shutil.copyfile(img, dst / "JPEGImages" / img.name)
        shutil.copyfile(inp.data / "Annotations" / f"{img.stem}.xml", dst / "Annotations" / f"{img.stem}.xml")
        ids.append(img.stem)
    if split_files:
        (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (dst / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
        (dst / "ImageSets" / "Main" / "test.txt").write_text(ids[-1] + "\n")
    return dst


def copy_tree(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip) if skip else None, symlinks=True)
    return dst


def model_copy(inp: Inputs, dst: Path) -> Path:
    """A copy of the trained model folder, without its feature cache."""
    return copy_tree(inp.model, dst, skip=("cache",))


def parsed_json(inp: Inputs) -> dict[str, Any]:
    return json.loads(inp.parsed.read_text())


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def user_folder(path: Path, files: dict[str, str | bytes]) -> Path:
    """A folder of the user's own files (relative name -> content)."""
    for rel, content in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return path


def first_test_record(inp: Inputs) -> dict[str, Any]:
    """The first test-split record of the parsed fixture."""
    return next(a for a in parsed_json(inp)["images"] if a["split"] == "test")


def good_detection(inp: Inputs) -> dict[str, Any]:
    rec = first_test_record(inp)
    x1, y1, x2, y2 = rec["objects"][0]["box"] if rec["objects"] else (10, 10, 60, 60)
    label = rec["objects"][0]["label"] if rec["objects"] else parsed_json(inp)["classes"][0]
    return {"image_id": 1, "file_name": rec["path"], "category": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9}


def count_outputs(run: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in run.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


# --------------------------------------------------------------------------- parse

def parse_args(data: Path, folder: Path, *extra: str) -> list[str]:
    return ["parse", str(data), "--out", str(folder / "parsed.json"), *extra]


def parse_bad_file(folder: Path, inp: Inputs, stem: str | bytes, xml: str | bytes | None, image: Any = "copy",
                   expect: str = "partial", names: str | None = None, extra: tuple[str, ...] = (), **kw: Any) -> Case:
    """Three good images plus one bad annotation ``stem``.xml (stem may be bytes: a non-UTF-8 name).

    ``image``: "copy" (a good image named ``stem``.jpg), bytes (the image file's content),
    "dir" (a folder named ``stem``.jpg) or None (no image).
    """
    ds = mini_voc(folder / "ds", inp)
    ann, imgs = ds / "Annotations", ds / "JPEGImages"
    s = os.fsdecode(stem)
    if xml is not None:
        p = ann / f"{s}.xml"
        p.write_bytes(xml.encode() if isinstance(xml, str) else xml)
    if image == "copy":
        shutil.copyfile(synth_images(inp)[3], imgs / f"{s}.jpg")
    elif image == "dir":
        (imgs / f"{s}.jpg").mkdir()
        (imgs / f"{s}.jpg" / "inside.txt").write_text("a folder, not an image\n")
    elif isinstance(image, bytes):
        (imgs / f"{s}.jpg").write_bytes(image)
    return Case("", parse_args(ds, folder, *extra), expect, names if names is not None else f"{s}.xml", process=True, **kw)


def synth_xml(inp: Inputs, stem: str, objects: list[tuple], size: tuple | None = None) -> str:
    """VOC XML for ``stem``.jpg (a copy of a synthetic image); ``size`` defaults to the image's true size."""
    return voc_xml(f"{stem}.jpg", objects, size=size or image_size(synth_images(inp)[3]))


@case("parse-broken-xml")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "broken", "<annotation><filename>broken.jpg</filename><object><name>disc")


@case("parse-billion-laughs")
def _(folder: Path, inp: Inputs) -> Case:
    ents = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)]
    xml = ('<?xml version="1.0"?>\n<!DOCTYPE annotation [\n' + "\n".join(ents) + "\n]>\n"
           "<annotation><filename>laughs.jpg</filename><object><name>&lol9;</name>"
           "<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>60</ymax></bndbox></object></annotation>")
    return parse_bad_file(folder, inp, "laughs", xml, timeout=60)


@case("parse-external-entity")
def _(folder: Path, inp: Inputs) -> Case:
    xml = ('<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
           "<annotation><filename>xxe.jpg</filename><object><name>&xxe;</name>"
           "<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>60</ymax></bndbox></object></annotation>")
    return parse_bad_file(folder, inp, "xxe", xml)


@case("parse-deep-nesting")
def _(folder: Path, inp: Inputs) -> Case:
    xml = "<annotation><filename>deep.jpg</filename>" + "<a>" * 100_000 + "</a>" * 100_000 + "</annotation>"
    return parse_bad_file(folder, inp, "deep", xml)


@case("parse-root-not-annotation")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "rootless", "<html><filename>rootless.jpg</filename><body/></html>")


@case("parse-xml-bad-encoding")
def _(folder: Path, inp: Inputs) -> Case:
    xml = b'<?xml version="1.0" encoding="utf-8"?><annotation><filename>enc.jpg</filename><object><name>\xff\xfe\xfa</name></object></annotation>'
    return parse_bad_file(folder, inp, "enc", xml)


@case("parse-xml-is-folder")
def _(folder: Path, inp: Inputs) -> Case:
    c = parse_bad_file(folder, inp, "subdir", None)
    (folder / "ds" / "Annotations" / "subdir.xml").mkdir()
    return c


@case("parse-fifo-xml")
def _(folder: Path, inp: Inputs) -> Case:
    c = parse_bad_file(folder, inp, "x", None, timeout=30)
    os.mkfifo(folder / "ds" / "Annotations" / "x.xml")
    return c


@case("parse-xml-name-not-utf8")
def _(folder: Path, inp: Inputs) -> Case:
    # b"odd\xff.xml": a file name that is not valid UTF-8; its content is broken XML, so it must be reported
    return parse_bad_file(folder, inp, b"odd\xff", "<annotation><filename>", image=None, names="odd")


@case("parse-missing-image")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "ghost", synth_xml(inp, "ghost", [("disc", 10, 10, 60, 60)]), image=None)


@case("parse-image-truncated-jpeg")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "trunc", synth_xml(inp, "trunc", [("disc", 10, 10, 60, 60)]),
                          image=truncated(synth_images(inp)[3], 0.4))


@case("parse-image-random-bytes")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "noise", synth_xml(inp, "noise", [("disc", 10, 10, 60, 60)]), image=random_bytes())


@case("parse-image-zero-bytes")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "zero", synth_xml(inp, "zero", [("disc", 10, 10, 60, 60)]), image=b"")


@case("parse-image-is-folder")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "imgdir", synth_xml(inp, "imgdir", [("disc", 10, 10, 60, 60)]), image="dir")


@case("parse-degenerate-box")
def _(folder: Path, inp: Inputs) -> Case:
    # xmax < xmin, and a zero-height box
    return parse_bad_file(folder, inp, "degen", synth_xml(inp, "degen", [("disc", 60, 10, 40, 50), ("square", 10, 30, 50, 29)]))


for _tag, _value in (("inf", "inf"), ("nan", "nan"), ("1e400", "1e400"), ("neg-1e400", "-1e400"), ("string", "left"),
                     ("empty", ""), ("hex", "0x1A")):
    register(f"parse-box-{_tag}", lambda folder, inp, value: parse_bad_file(
        folder, inp, "box", synth_xml(inp, "box", [("disc", 10, value, 60, 60)])), value=_value)


for _tag, _size in (("inf", ("inf", 240)), ("nan", ("nan", "nan")), ("1e400", ("1e400", 240)),
                    ("huge", (100_000_000, 100_000_000)), ("negative", (-320, -240)), ("string", ("wide", "tall"))):
    register(f"parse-size-{_tag}", lambda folder, inp, size: parse_bad_file(
        folder, inp, "sized", synth_xml(inp, "sized", [("disc", 10, 10, 60, 60)], size=size)), size=_size)


@case("parse-class-background")
def _(folder: Path, inp: Inputs) -> Case:
    # "background" is class 0 of every region set: an object with that name must not pass silently
    return parse_bad_file(folder, inp, "bgclass", synth_xml(inp, "bgclass", [("background", 10, 10, 60, 60)]),
                          names="background")


@case("parse-filename-traversal")
def _(folder: Path, inp: Inputs) -> Case:
    xml = voc_xml("../../../../../../etc/passwd", [("disc", 10, 10, 60, 60)], size=(320, 240))
    return parse_bad_file(folder, inp, "traversal", xml, image=None)


@case("parse-imagesets-not-utf8")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp, split_files=True)
    (ds / "ImageSets" / "Main" / "train.txt").write_bytes(b"synth_0000\n\xff\xfe\xfa\x80\nsynth_0001\n")
    return Case("", parse_args(ds, folder), "partial", "train.txt", process=True)


@case("parse-strict")
def _(folder: Path, inp: Inputs) -> Case:
    return parse_bad_file(folder, inp, "broken", "<annotation><filename>", image=None, expect="fail", extra=("--strict",))


@case("parse-all-files-bad")
def _(folder: Path, inp: Inputs) -> Case:
    ds = folder / "alldata"
    (ds / "Annotations").mkdir(parents=True)
    (ds / "JPEGImages").mkdir()
    (ds / "Annotations" / "lonely.xml").write_text("<annotation>")
    return Case("", parse_args(ds, folder), "fail", "alldata", also=["lonely.xml"], process=True)


@case("parse-empty-annotations")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    for p in (ds / "Annotations").iterdir():
        p.unlink()
    return Case("", parse_args(ds, folder), "fail", "Annotations", process=True)


@case("parse-data-is-file")
def _(folder: Path, inp: Inputs) -> Case:
    f = user_folder(folder, {"somefile.txt": "not a dataset\n"}) / "somefile.txt"
    return Case("", parse_args(f, folder), "fail", "somefile.txt", process=True)


@case("parse-data-missing")
def _(folder: Path, inp: Inputs) -> Case:
    return Case("", parse_args(folder / "nowhere", folder), "fail", "nowhere", process=True)


@case("parse-out-unwritable")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    if os.geteuid() == 0:  # root ignores permissions: a path under a regular file cannot be written either
        user_folder(folder, {"blocker.txt": "the user's file\n"})
        out, names = folder / "blocker.txt" / "out.json", "blocker.txt"
    else:
        ro = folder / "readonly_dir"
        ro.mkdir()
        (ro / "keep.txt").write_text("the user's file\n")
        ro.chmod(0o555)
        out, names = ro / "out.json", "readonly_dir"
    return Case("", ["parse", str(ds), "--out", str(out)], "fail", names, process=True)


@case("parse-out-is-input-xml")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    return Case("", ["parse", str(ds), "--out", str(ds / "Annotations" / "synth_0000.xml")], "fail", "synth_0000.xml", process=True)


@case("parse-out-is-input-image")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    return Case("", ["parse", str(ds), "--out", str(ds / "JPEGImages" / "synth_0001.jpg")], "fail", "synth_0001.jpg", process=True)


@case("parse-out-is-user-json")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    user_folder(folder, {"notes.json": '{"my": "notes"}\n'})
    return Case("", ["parse", str(ds), "--out", str(folder / "notes.json")], "fail", "notes.json", process=True)


@case("parse-out-is-folder")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    user_folder(folder / "outdir", {"keep.txt": "the user's file\n"})
    return Case("", ["parse", str(ds), "--out", str(folder / "outdir")], "fail", "outdir", process=True)


@case("parse-classes-empty")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    return Case("", parse_args(ds, folder, "--classes", " , "), "fail", "classes", process=True)


# --------------------------------------------------------------------------- parse: COCO and YOLO (issue 12)
# In-process (fast), except the YAML cases that a wrong loader would turn into running code or eating memory.

def mini_coco(dst: Path, inp: Inputs, n: int = 3, extra: list[dict[str, Any]] | None = None,
              bad_json: str | bytes | None = None) -> Path:
    """A COCO dataset of the first ``n`` synthetic images (``annotations/instances_train.json``, ``images/``); ``extra``
    image entries (with their annotations under ``"anns"``) are added; ``bad_json`` is written as ``instances_test.json``."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]}
    for k, img in enumerate(synth_images(inp)[:n], start=1):
        shutil.copyfile(img, dst / "images" / img.name)
        coco["images"].append({"id": k, "file_name": img.name})
        coco["annotations"].append({"id": k, "image_id": k, "category_id": 1, "bbox": [10, 10, 40, 40], "iscrowd": 0})
    for e in extra or []:
        e = dict(e)
        for a in e.pop("anns", []):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": e["id"], **a})
        coco["images"].append(e)
    write_json(dst / "annotations" / "instances_train.json", coco)
    if bad_json is not None:
        p = dst / "annotations" / "instances_test.json"
        p.write_bytes(bad_json.encode() if isinstance(bad_json, str) else bad_json)
    return dst


def mini_yolo(dst: Path, inp: Inputs, n: int = 3, yaml_text: str | None = None, label: str | bytes | None = None) -> Path:
    """A YOLO dataset of the first ``n`` synthetic images in ``images/train`` with one good line each; ``label`` replaces
    the last image's label file; ``yaml_text`` replaces the ``data.yaml``."""
    (dst / "images" / "train").mkdir(parents=True, exist_ok=True)
    (dst / "labels" / "train").mkdir(parents=True, exist_ok=True)
    imgs = synth_images(inp)[:n]
    for img in imgs:
        shutil.copyfile(img, dst / "images" / "train" / img.name)
        (dst / "labels" / "train" / f"{img.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    if label is not None:
        p = dst / "labels" / "train" / f"{imgs[-1].stem}.txt"
        p.write_bytes(label.encode() if isinstance(label, str) else label)
    (dst / "data.yaml").write_text(yaml_text if yaml_text is not None else "path: .\ntrain: images/train\nnames: [disc, square]\n")
    return dst


@case("parse-coco-broken-json")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_coco(folder / "ds", inp, bad_json='{"images": [{"id": 1, "file_name": ')
    return Case("", parse_args(ds, folder), "partial", "instances_test.json")


@case("parse-coco-json-not-utf8")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_coco(folder / "ds", inp, bad_json=b'{"images": ["\xff\xfe"], "annotations": [], "categories": []}')
    return Case("", parse_args(ds, folder), "partial", "instances_test.json")


@case("parse-coco-file-is-a-list")
def _(folder: Path, inp: Inputs) -> Case:
    f = write_json(folder / "listed.json", [{"images": []}])
    return Case("", parse_args(f, folder), "fail", "listed.json")


@case("parse-coco-nan-bbox")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_coco(folder / "ds", inp)
    p = ds / "annotations" / "instances_train.json"
    d = json.loads(p.read_text())
    d["annotations"][0]["bbox"][0] = float("nan")  # json.dumps writes NaN, which is not JSON
    write_json(p, d)
    return Case("", parse_args(ds, folder), "fail", "instances_train.json")


@case("parse-coco-missing-image")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_coco(folder / "ds", inp, extra=[{"id": 99, "file_name": "ghost.jpg", "anns": [{"category_id": 1, "bbox": [1, 1, 9, 9]}]}])
    return Case("", parse_args(ds, folder), "partial", "ghost.jpg")


@case("parse-coco-bad-entries")
def _(folder: Path, inp: Inputs) -> Case:
    img = synth_images(inp)[5].name
    ds = mini_coco(folder / "ds", inp, extra=[{"id": 7, "file_name": img, "anns": [
        {"category_id": 1, "bbox": ["x", 1, 9, 9]}, {"category_id": 42, "bbox": [1, 1, 9, 9]}]}])
    shutil.copyfile(synth_images(inp)[5], ds / "images" / img)
    p = ds / "annotations" / "instances_train.json"
    d = json.loads(p.read_text())
    d["annotations"].append({"id": 500, "image_id": 12345, "category_id": 1, "bbox": [1, 1, 5, 5]})
    write_json(p, d)
    return Case("", parse_args(ds, folder), "partial", "not 4 finite numbers", also=["category_id 42", "image_id 12345"])


@case("parse-coco-traversal-file-name")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_coco(folder / "ds", inp, extra=[{"id": 9, "file_name": "../../../../../../etc/passwd"}])
    return Case("", parse_args(ds, folder), "partial", "passwd")


@case("parse-yolo-yaml-python-tag")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, yaml_text="train: images/train\nnames: !!python/object/apply:os.system ['touch PWNED']\n")
    return Case("", parse_args(ds, folder), "fail", "data.yaml", process=True)  # a wrong loader would run the tag


@case("parse-yolo-yaml-alias-bomb")
def _(folder: Path, inp: Inputs) -> Case:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    ds = mini_yolo(folder / "ds", inp, yaml_text="\n".join(lines + ["names: *i", "train: *i"]) + "\n")
    return Case("", parse_args(ds, folder), "fail", "names", process=True, timeout=60, mem_limit=2 * GiB)


@case("parse-yolo-yaml-url")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, yaml_text="path: https://example.com/data\ntrain: images/train\nnames: [disc]\n")
    return Case("", parse_args(ds, folder), "fail", "https://example.com/data")


@case("parse-yolo-yaml-broken")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, yaml_text="train: [images/train\nnames: {0: disc\n")
    return Case("", parse_args(ds, folder), "fail", "data.yaml")


@case("parse-yolo-split-folder-missing")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, yaml_text="train: images/train\nval: images/nowhere\nnames: [disc]\n")
    return Case("", parse_args(ds, folder), "fail", "nowhere")


@case("parse-yolo-label-garbage")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, label="0 0.5 0.5\nhello world\n7 0.5 0.5 0.1 0.1\n0 inf 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1 0.2\n")
    return Case("", parse_args(ds, folder), "partial", f"{synth_images(inp)[2].stem}.txt")


@case("parse-yolo-label-random-bytes")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp, label=random_bytes(2048))
    return Case("", parse_args(ds, folder), "partial", f"{synth_images(inp)[2].stem}.txt")


@case("parse-yolo-image-corrupt")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp)
    (ds / "images" / "train" / "broken.jpg").write_bytes(truncated(synth_images(inp)[3], 0.3))
    return Case("", parse_args(ds, folder), "partial", "broken.jpg")


@case("parse-yolo-no-class-names")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_yolo(folder / "ds", inp)
    (ds / "data.yaml").unlink()
    return Case("", parse_args(ds, folder), "fail", "classes.txt")


@case("parse-format-ambiguous")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp)
    mini_yolo(ds, inp)
    return Case("", parse_args(ds, folder), "fail", "--format")


# --------------------------------------------------------------------------- propose

def propose_args(parsed: Path, out: Path, *extra: str) -> list[str]:
    return ["propose", str(parsed), "--out", str(out), "--workers", "1", "--max-side", "100", *extra]


def bad_parsed(folder: Path, name: str, content: Any) -> Path:
    p = folder / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def parsed_with(inp: Inputs, folder: Path, name: str, bad: dict[str, Any] | Any, keep: int = 1) -> Path:
    """The parsed fixture cut to ``keep`` good records plus one ``bad`` record (a dict is merged into a copy)."""
    d = parsed_json(inp)
    good = d["images"][:keep]
    rec = {**d["images"][keep], **bad} if isinstance(bad, dict) else bad
    d["images"] = good + [rec]
    return bad_parsed(folder, name, d)


@case("propose-parsed-is-list")
def _(folder: Path, inp: Inputs) -> Case:
    p = bad_parsed(folder, "listed.json", [1, 2, 3])
    return Case("", propose_args(p, folder / "props"), "fail", "listed.json")


@case("propose-parsed-garbage")
def _(folder: Path, inp: Inputs) -> Case:
    p = bad_parsed(folder, "garbage.json", "{{{ not json")
    return Case("", propose_args(p, folder / "props"), "fail", "garbage.json")


@case("propose-parsed-not-utf8")
def _(folder: Path, inp: Inputs) -> Case:
    p = bad_parsed(folder, "latin.json", b'{"images": [], "root": "\xe9\xff"}')
    return Case("", propose_args(p, folder / "props"), "fail", "latin.json")


@case("propose-parsed-record-wrong-types")
def _(folder: Path, inp: Inputs) -> Case:
    p = parsed_with(inp, folder, "wrongtypes.json", {"id": 5, "path": 7, "width": "wide", "height": None, "objects": "none"})
    return Case("", propose_args(p, folder / "props"), "partial", "wrongtypes.json")


@case("propose-parsed-record-is-list")
def _(folder: Path, inp: Inputs) -> Case:
    p = parsed_with(inp, folder, "reclist.json", [1, 2, 3])
    return Case("", propose_args(p, folder / "props"), "partial", "reclist.json")


@case("propose-parsed-images-not-list")
def _(folder: Path, inp: Inputs) -> Case:
    d = parsed_json(inp)
    d["images"] = 5
    p = bad_parsed(folder, "imagesint.json", d)
    return Case("", propose_args(p, folder / "props"), "fail", "imagesint.json")


@case("propose-parsed-box-strings")
def _(folder: Path, inp: Inputs) -> Case:
    p = parsed_with(inp, folder, "boxstr.json", {"objects": [{"label": "disc", "box": ["a", "b", "c", "d"]}]})
    return Case("", propose_args(p, folder / "props"), "partial", "boxstr.json")


@case("propose-parsed-box-nan")
def _(folder: Path, inp: Inputs) -> Case:
    d = parsed_json(inp)
    d["images"] = d["images"][:2]
    d["images"][1]["objects"] = [{"label": d["classes"][0], "box": [float("nan"), 0.0, float("inf"), 10.0]}]
    p = folder / "boxnan.json"
    p.write_text(json.dumps(d))  # writes NaN and Infinity, which are not JSON
    return Case("", propose_args(p, folder / "props"), "partial", "boxnan.json")


@case("propose-image-missing")
def _(folder: Path, inp: Inputs) -> Case:
    p = parsed_with(inp, folder, "parsed.json", {"id": "gone", "path": str(folder / "gone.jpg")})
    return Case("", propose_args(p, folder / "props"), "partial", "gone.jpg")


@case("propose-image-corrupt")
def _(folder: Path, inp: Inputs) -> Case:
    (folder / "noise.jpg").write_bytes(random_bytes())
    p = parsed_with(inp, folder, "parsed.json", {"id": "noise", "path": str(folder / "noise.jpg")})
    return Case("", propose_args(p, folder / "props"), "partial", "noise.jpg")


@case("propose-out-user-folder")
def _(folder: Path, inp: Inputs) -> Case:
    mine = user_folder(folder / "mine", {"settings.json": '{"theme": "dark"}\n', "notes.txt": "my notes\n",
                                          "boxes/readme.txt": "my boxes\n", "report.json": '{"mine": true}\n'})
    return Case("", propose_args(inp.parsed, mine, "--split", "test"), "safe", "mine")


@case("propose-out-settings-list")
def _(folder: Path, inp: Inputs) -> Case:
    # the --out folder is rcnn's own (a copy of a proposals folder): recomputing into it is fine, silently is not
    props = copy_tree(inp.props, folder / "props")
    (props / "settings.json").write_text("[1, 2]\n")
    return Case("", propose_args(inp.parsed, props, "--split", "test"), "partial", "settings.json", owned=[props])


@case("propose-out-is-file")
def _(folder: Path, inp: Inputs) -> Case:
    user_folder(folder, {"props.txt": "the user's file\n"})
    return Case("", propose_args(inp.parsed, folder / "props.txt"), "fail", "props.txt")


# --------------------------------------------------------------------------- crop

def crop_args(parsed: Path, props: Path, out: Path, *extra: str) -> list[str]:
    return ["crop", str(parsed), str(props), "--out", str(out), "--size", "32", "--context", "2", "--neg-per-image", "4", *extra]


def first_train_id(inp: Inputs) -> str:
    return next(a["id"] for a in parsed_json(inp)["images"] if a["split"] == "train")


@case("crop-props-settings-list")
def _(folder: Path, inp: Inputs) -> Case:
    props = copy_tree(inp.props, folder / "props")
    (props / "settings.json").write_text("[1, 2]\n")
    return Case("", crop_args(inp.parsed, props, folder / "crops"), "fail", "settings.json")


@case("crop-props-settings-missing")
def _(folder: Path, inp: Inputs) -> Case:
    props = copy_tree(inp.props, folder / "props")
    (props / "settings.json").unlink()
    return Case("", crop_args(inp.parsed, props, folder / "crops"), "fail", "settings.json")


@case("crop-props-other-ids")
def _(folder: Path, inp: Inputs) -> Case:
    props = copy_tree(inp.props, folder / "otherprops")
    for p in sorted((props / "boxes").glob("*.npy")):
        p.rename(p.with_name("other_" + p.name))
    return Case("", crop_args(inp.parsed, props, folder / "crops"), "fail", "otherprops")


@case("crop-props-other-dataset")
def _(folder: Path, inp: Inputs) -> Case:
    """Proposals of another dataset whose images have the same ids (synth_0000, ...) but other content and size."""
    from rcnn.parse import parse_dataset
    from rcnn.propose import ProposeConfig, propose_dataset
    from rcnn.synth import make_dataset

    other = make_dataset(folder / "other", images=len(synth_images(inp)), seed=97, width=200, height=150)
    (folder / "otherprops").mkdir()
    propose_dataset(parse_dataset(other), folder / "otherprops", ProposeConfig(max_side=100), workers=1, progress=False)
    return Case("", crop_args(inp.parsed, folder / "otherprops", folder / "crops"), "fail", "otherprops")


def broken_npy(folder: Path, inp: Inputs, content: Callable[[Path], bytes]) -> Case:
    props = copy_tree(inp.props, folder / "props")
    npy = props / "boxes" / f"{first_train_id(inp)}.npy"
    npy.write_bytes(content(npy))
    return Case("", crop_args(inp.parsed, props, folder / "crops"), "partial", npy.name)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


register("crop-props-npy-garbage", broken_npy, content=lambda p: random_bytes(512))
register("crop-props-npy-truncated", broken_npy, content=lambda p: truncated(p, 0.3))
register("crop-props-npy-wrong-shape", broken_npy, content=lambda p: _npy_bytes(np.arange(7, dtype=np.float32)))
register("crop-props-npy-nan", broken_npy, content=lambda p: _npy_bytes(np.array([[np.nan, 0, np.inf, 50], [5, 5, 40, 40]], np.float32)))
register("crop-props-npy-object", broken_npy, content=lambda p: _npy_bytes(np.array([Evil()], dtype=object)))


@case("crop-parsed-is-list")
def _(folder: Path, inp: Inputs) -> Case:
    p = bad_parsed(folder, "listed.json", [[1, 2], {"images": []}])
    return Case("", crop_args(p, inp.props, folder / "crops"), "fail", "listed.json")


@case("crop-out-user-folder")
def _(folder: Path, inp: Inputs) -> Case:
    mine = user_folder(folder / "mine", {"settings.json": '{"theme": "dark"}\n', "notes.txt": "my notes\n",
                                          "shards/readme.txt": "my shards\n", "index.csv": "my,table\n",
                                          "meta.json": '{"mine": true}\n'})
    return Case("", crop_args(inp.parsed, inp.props, mine), "safe", "mine")


# --------------------------------------------------------------------------- train

TRAIN_FAST = ("--backbone", "efficientnet_lite0", "--epochs", "1", "--batch-size", "32")


def train_args(crops: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(crops), "--out", str(out), *extra]


def crops_copy(folder: Path, inp: Inputs) -> Path:
    return copy_tree(inp.crops, folder / "crops", skip=("imagefolder",))


def first_shard(crops: Path) -> Path:
    meta = json.loads((crops / "meta.json").read_text())
    return crops / "shards" / f"{meta['images'][0]}.npz"


@case("train-meta-missing")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    (crops / "meta.json").unlink()
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "fail", "meta.json")


@case("train-meta-is-list")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    (crops / "meta.json").write_text("[1, 2, 3]\n")
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "fail", "meta.json")


@case("train-meta-missing-keys")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    meta = json.loads((crops / "meta.json").read_text())
    for k in ("images", "classes", "counts"):
        meta.pop(k, None)
    write_json(crops / "meta.json", meta)
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "fail", "meta.json")


@case("train-meta-classes-string")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    meta = json.loads((crops / "meta.json").read_text())
    meta["classes"] = "abc"
    write_json(crops / "meta.json", meta)
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "fail", "meta.json")


@case("train-shards-missing")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    shutil.rmtree(crops / "shards")
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "fail", "shards")


@case("train-shard-garbage")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    shard = first_shard(crops)
    shard.write_bytes(random_bytes(2048))
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "partial", shard.name)


@case("train-shard-truncated")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    shard = first_shard(crops)
    shard.write_bytes(truncated(shard, 0.5))
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "partial", shard.name)


@case("train-shard-wrong-arrays")
def _(folder: Path, inp: Inputs) -> Case:
    crops = crops_copy(folder, inp)
    shard = first_shard(crops)
    with open(shard, "wb") as f:  # labels out of range, offsets past the data
        np.savez(f, data=np.zeros(10, np.uint8), offsets=np.array([0, 5, 500]), boxes=np.zeros((2, 4), np.float32),
                 labels=np.array([7, -3]), ious=np.zeros(2, np.float32), targets=np.zeros((2, 4), np.float32),
                 n_ignored=np.array(0), n_unsampled=np.array(0))
    return Case("", train_args(crops, folder / "model", *TRAIN_FAST), "partial", shard.name)


@case("train-input-size-huge", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return Case("", train_args(inp.crops, folder / "model", *TRAIN_FAST, "--input-size", "100000"), "fail", "100000",
                process=True, mem_limit=8 * GiB)


@case("train-out-user-folder")
def _(folder: Path, inp: Inputs) -> Case:
    mine = user_folder(folder / "mine", {"model.pt": b"my own weights", "config.json": '{"mine": true}\n',
                                          "notes.txt": "my notes\n", "cache/readme.txt": "my cache\n"})
    return Case("", train_args(inp.crops, mine, *TRAIN_FAST), "safe", "mine")


def resume_case(folder: Path, inp: Inputs, content: Callable[[Path], bytes] | None, **kw: Any) -> Case:
    """A copy of the trained model folder whose checkpoint.pt is replaced; ``train --resume`` with its settings."""
    model = model_copy(inp, folder / "model")
    ckpt = model / "checkpoint.pt"
    if content is not None:
        ckpt.write_bytes(content(ckpt))
    # the settings synth_model was trained with (tests/conftest.py), one more epoch
    args = train_args(inp.crops, model, "--backbone", "efficientnet_lite0", "--epochs", "9", "--optimizer", "adam",
                      "--lr", "0.003", "--batch-size", "32", "--resume")
    return Case("", args, "fail", "checkpoint.pt", **kw)


register("train-resume-empty", resume_case, content=lambda p: b"")
register("train-resume-truncated", resume_case, content=lambda p: truncated(p, 0.5))
register("train-resume-random", resume_case, content=lambda p: random_bytes(8192))


@case("train-resume-malicious-torch-file", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    def make(p: Path) -> bytes:
        evil_torch_file(p, {"net": Evil(), "optimizer": {}, "epoch": 1, "config": {}})
        return p.read_bytes()
    return resume_case(folder, inp, make, process=True)


@case("train-resume-malicious-pickle", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return resume_case(folder, inp, lambda p: evil_pickle(), process=True)  # the test also checks no PWNED file appears


@case("train-resume-other-classes")
def _(folder: Path, inp: Inputs) -> Case:
    """A well-formed checkpoint of a model with 5 classes, saved with the same training settings."""
    import torch

    from rcnn.backbones import build_backbone
    from rcnn.model import RegionClassifier
    from rcnn.train import TrainConfig

    c = resume_case(folder, inp, None)
    ckpt = folder / "model" / "checkpoint.pt"
    old = torch.load(ckpt, map_location="cpu", weights_only=True)
    net = RegionClassifier(build_backbone("efficientnet_lite0", "none"), 5)
    opt = torch.optim.Adam([p for p in net.parameters()], lr=3e-3)
    cfg = old.get("config") if isinstance(old, dict) else None
    cfg = cfg or {**TrainConfig().__dict__, "backbone": "efficientnet_lite0", "epochs": 8, "optimizer": "adam", "lr": 3e-3, "batch_size": 32}
    new = {**old, "net": net.state_dict(), "optimizer": opt.state_dict(), "config": cfg}
    torch.save(new, ckpt)
    return c


# --------------------------------------------------------------------------- detect

DETECT_FAST = ("--device", "cpu", "--max-side", "100", "--detect-proposals", "40")


def detect_args(model: Path, inputs: list[Path] | Path, out: Path | None, *extra: str) -> list[str]:
    ins = [inputs] if isinstance(inputs, Path) else inputs
    return ["detect", str(model), *map(str, ins), *(["--out", str(out)] if out is not None else []), *DETECT_FAST, *extra]


def one_image_folder(folder: Path, inp: Inputs, name: str = "imgs", n: int = 1) -> Path:
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    for img in synth_images(inp)[:n]:
        shutil.copyfile(img, d / img.name)
    return d


def forge_digests(json_path: Path, old: bytes, new: bytes) -> None:
    """Wherever ``json_path`` records a digest (sha1, sha256 or md5, hex) of ``old``, put that of ``new``:
    an attacker who replaces a file can rewrite the checksum beside it too."""
    import hashlib

    swap = {hashlib.new(a, old).hexdigest(): hashlib.new(a, new).hexdigest() for a in ("sha1", "sha256", "md5")}

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return swap.get(v, v) if isinstance(v, str) else v

    json_path.write_text(json.dumps(fix(json.loads(json_path.read_text())), indent=1))


def broken_model_pt(folder: Path, inp: Inputs, make: Callable[[Path], None], forge: bool = False, **kw: Any) -> Case:
    """A model folder copy whose model.pt is replaced by ``make``; with ``forge`` its digest in config.json is updated."""
    model = model_copy(inp, folder / "model")
    pt = model / "model.pt"
    old = pt.read_bytes()
    make(pt)
    if forge:
        forge_digests(model / "config.json", old, pt.read_bytes())
    return Case("", detect_args(model, one_image_folder(folder, inp), folder / "run"), "fail", "model.pt", **kw)


def _replace_with_dir(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "data.pkl").write_bytes(b"")


register("detect-model-pt-empty", broken_model_pt, make=lambda p: p.write_bytes(b""))
register("detect-model-pt-truncated", broken_model_pt, make=lambda p: p.write_bytes(truncated(p, 0.5)))
register("detect-model-pt-random", broken_model_pt, make=lambda p: p.write_bytes(random_bytes(8192)))
register("detect-model-pt-folder", broken_model_pt, make=_replace_with_dir)
register("detect-model-pt-empty-forged-digest", broken_model_pt, make=lambda p: p.write_bytes(b""), forge=True)
register("detect-model-pt-truncated-forged-digest", broken_model_pt, make=lambda p: p.write_bytes(truncated(p, 0.5)), forge=True)
register("detect-model-pt-random-forged-digest", broken_model_pt, make=lambda p: p.write_bytes(random_bytes(8192)), forge=True)


@case("detect-model-pt-malicious", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return broken_model_pt(folder, inp, lambda p: (p.unlink(), evil_torch_file(p)), process=True)


@case("detect-model-pt-malicious-plain-pickle", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return broken_model_pt(folder, inp, lambda p: p.write_bytes(evil_pickle()), process=True)


@case("detect-model-pt-malicious-forged-digest", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return broken_model_pt(folder, inp, lambda p: (p.unlink(), evil_torch_file(p)), forge=True, process=True)


@case("detect-model-pt-malicious-legacy-forged-digest", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    return broken_model_pt(folder, inp, lambda p: (p.unlink(), evil_torch_file(p, legacy=True)), forge=True, process=True)


@case("detect-model-pt-other-classes-forged-digest")
def _(folder: Path, inp: Inputs) -> Case:
    """A well-formed state dict of a 5-class network, with its digest recorded: config.json says 3 classes."""
    import torch

    from rcnn.backbones import build_backbone
    from rcnn.model import RegionClassifier

    net = RegionClassifier(build_backbone(json.loads((inp.model / "config.json").read_text())["backbone"], "none"), 5)
    return broken_model_pt(folder, inp, lambda p: torch.save(net.state_dict(), p), forge=True)


def broken_config(folder: Path, inp: Inputs, edit: Callable[[dict[str, Any]], Any], expect: str = "fail",
                  names: str = "config.json", **kw: Any) -> Case:
    model = model_copy(inp, folder / "model")
    cfg = json.loads((model / "config.json").read_text())
    new = edit(cfg)
    write_json(model / "config.json", cfg if new is None else new)
    return Case("", detect_args(model, one_image_folder(folder, inp), folder / "run"), expect, names, **kw)


def _del(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        del cfg[key]
    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.__setitem__(key, value)


register("detect-config-is-list", broken_config, edit=lambda cfg: [cfg])
register("detect-config-missing-input-size", broken_config, edit=_del("input_size"))
register("detect-config-missing-backbone", broken_config, edit=_del("backbone"))
register("detect-config-classes-string", broken_config, edit=_set("classes", "abc"))
register("detect-config-classes-only-background", broken_config, edit=_set("classes", ["background"]))
register("detect-config-classes-duplicates", broken_config, edit=lambda cfg: cfg.__setitem__("classes", [cfg["classes"][0]] * len(cfg["classes"])))
register("detect-config-short-mean", broken_config, edit=_set("mean", [0.5]))
register("detect-config-std-zero", broken_config, edit=_set("std", [0.0, 0.0, 0.0]))
register("detect-config-input-size-string", broken_config, edit=lambda cfg: cfg.__setitem__("input_size", str(cfg["input_size"])))
register("detect-config-input-size-zero", broken_config, edit=_set("input_size", 0))
register("detect-config-unknown-key", broken_config, edit=_set("nms_typo", 0.9), expect="partial", names="nms_typo")
register("detect-config-propose-garbage", broken_config, edit=_set("propose", {"mode": "best", "max_side": -5}))
register("detect-config-input-size-huge", broken_config, heavy=True, edit=_set("input_size", 100_000), process=True,
         mem_limit=8 * GiB)


@case("detect-model-folder-empty")
def _(folder: Path, inp: Inputs) -> Case:
    (folder / "emptymodel").mkdir()
    return Case("", detect_args(folder / "emptymodel", one_image_folder(folder, inp), folder / "run"), "fail", "emptymodel")


@case("detect-input-missing")
def _(folder: Path, inp: Inputs) -> Case:
    return Case("", detect_args(inp.model, folder / "nowhere.jpg", folder / "run"), "fail", "nowhere.jpg")


@case("detect-input-folder-without-images")
def _(folder: Path, inp: Inputs) -> Case:
    d = user_folder(folder / "noimages", {"readme.txt": "no images here\n", "data.csv": "a,b\n"})
    return Case("", detect_args(inp.model, d, folder / "run"), "fail", "noimages")


@case("detect-input-corrupt-only")
def _(folder: Path, inp: Inputs) -> Case:
    d = user_folder(folder / "corrupt", {"broken.jpg": random_bytes(), "empty.png": b"",
                                         "half.jpg": truncated(synth_images(inp)[0], 0.3)})
    # nothing can succeed: exit != 0; each file named on stderr
    return Case("", detect_args(inp.model, d, folder / "run"), "fail", None, also=["broken.jpg", "empty.png", "half.jpg"])


@case("detect-input-one-corrupt")
def _(folder: Path, inp: Inputs) -> Case:
    d = one_image_folder(folder, inp)
    (d / "broken.jpg").write_bytes(random_bytes())
    return Case("", detect_args(inp.model, d, folder / "run"), "partial", "broken.jpg")


@case("detect-out-is-input-folder")
def _(folder: Path, inp: Inputs) -> Case:
    d = one_image_folder(folder, inp, "imgs", n=2)
    return Case("", detect_args(inp.model, d, d), "fail", "imgs")


@case("detect-out-holds-user-csv")
def _(folder: Path, inp: Inputs) -> Case:
    run = user_folder(folder / "userrun", {"detections.csv": "my,own,table\n1,2,3\n", "summary.json": '{"mine": 1}\n'})
    return Case("", detect_args(inp.model, one_image_folder(folder, inp), run), "safe", "userrun")


@case("detect-same-stems")
def _(folder: Path, inp: Inputs) -> Case:
    """a/x.jpg, a/x.png and b/x.jpg: three images, three annotated outputs and three XML files."""
    src = synth_images(inp)
    multi = folder / "multi"
    (multi / "a").mkdir(parents=True)
    (multi / "b").mkdir()
    shutil.copyfile(src[0], multi / "a" / "x.jpg")
    with Image.open(src[1]) as im:
        im.save(multi / "a" / "x.png")
    shutil.copyfile(src[2], multi / "b" / "x.jpg")
    run = folder / "run"

    def check() -> str | None:
        images = count_outputs(run, IMAGE_SUFFIXES)
        xmls = count_outputs(run, (".xml",))
        if len(images) != 3 or len(xmls) != 3:
            return (f"expected 3 annotated images and 3 XML files, got {len(images)} images "
                    f"{[str(p.relative_to(run)) for p in images]} and {len(xmls)} XML {[str(p.relative_to(run)) for p in xmls]}")
        return None

    return Case("", detect_args(inp.model, multi, run, "--save-xml"), "ok", None, check=check)


@case("detect-proposals-settings-list")
def _(folder: Path, inp: Inputs) -> Case:
    props = copy_tree(inp.props, folder / "props")
    (props / "settings.json").write_text("[1, 2]\n")
    return Case("", detect_args(inp.model, one_image_folder(folder, inp), folder / "run", "--proposals", str(props)),
                "fail", "settings.json")


def huge_png(path: Path, side: int = 8000) -> Path:
    """A ``side`` x ``side`` RGB PNG (a smooth gradient: compresses fast)."""
    row = np.linspace(0, 255, side, dtype=np.float32)
    arr = np.empty((side, side, 3), np.uint8)
    arr[..., 0] = row[None, :]
    arr[..., 1] = row[:, None]
    arr[..., 2] = 128
    Image.fromarray(arr).save(path, compress_level=1)
    return path


@case("detect-huge-png", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    d = folder / "big"
    d.mkdir()
    huge_png(d / "huge.png")
    return Case("", detect_args(inp.model, d, folder / "run", "--no-images"), "safe", "huge.png", process=True,
                mem_limit=12 * GiB, timeout=600, slow=True)


# --------------------------------------------------------------------------- evaluate

def evaluate_args(dets: Path, parsed: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(dets), str(parsed), "--out", str(out), *extra]


def dets_case(folder: Path, inp: Inputs, content: Callable[[Inputs], Any], expect: str = "partial") -> Case:
    p = folder / "dets.json"
    c = content(inp)
    if isinstance(c, bytes):
        p.write_bytes(c)
    else:
        p.write_text(c if isinstance(c, str) else json.dumps(c))
    return Case("", evaluate_args(p, inp.parsed, folder / "report.json"), expect, "dets.json")


def _with_bad(bad: Callable[[dict[str, Any]], Any]) -> Callable[[Inputs], Any]:
    return lambda inp: [good_detection(inp), bad(good_detection(inp))]


register("evaluate-dets-not-json", dets_case, content=lambda inp: "detections: none {", expect="fail")
register("evaluate-dets-not-utf8", dets_case, content=lambda inp: b'[{"file_name": "\xff\xfe"}]', expect="fail")
register("evaluate-dets-dict-without-detections", dets_case, content=lambda inp: {"results": [good_detection(inp)]}, expect="fail")
register("evaluate-dets-number", dets_case, content=lambda inp: "42", expect="fail")
register("evaluate-dets-record-is-list", dets_case, content=_with_bad(lambda d: [1, 2, 3, 4]))
register("evaluate-dets-bbox-non-numeric", dets_case, content=_with_bad(lambda d: {**d, "bbox": ["a", "b", "c", "d"]}))
register("evaluate-dets-bbox-three-numbers", dets_case, content=_with_bad(lambda d: {**d, "bbox": [1, 2, 3]}))
register("evaluate-dets-bbox-not-list", dets_case, content=_with_bad(lambda d: {**d, "bbox": 5}))
register("evaluate-dets-score-string", dets_case, content=_with_bad(lambda d: {**d, "score": "high"}))
register("evaluate-dets-category-not-string", dets_case, content=_with_bad(lambda d: {**d, "category": ["disc"]}))
register("evaluate-dets-file-name-number", dets_case, content=_with_bad(lambda d: {**d, "file_name": 12.5, "image_id": None}))


@case("evaluate-parsed-garbage")
def _(folder: Path, inp: Inputs) -> Case:
    dets = write_json(folder / "dets.json", [good_detection(inp)])
    bad = bad_parsed(folder, "parsed_bad.json", b"\x00\x01 binary")
    return Case("", evaluate_args(dets, bad, folder / "report.json"), "fail", "parsed_bad.json")


@case("evaluate-detections-user-folder")
def _(folder: Path, inp: Inputs) -> Case:
    mine = user_folder(folder / "userfolder", {"notes.txt": "my notes\n", "photo.jpg": random_bytes(256)})
    return Case("", ["evaluate", str(mine), str(inp.parsed), "--device", "cpu"], "fail", "userfolder")


@case("evaluate-model-in-image-folder")
def _(folder: Path, inp: Inputs) -> Case:
    """``evaluate MODEL PARSED --out report.json`` run from inside the folder of the images: none may change."""
    ds = copy_tree(inp.data, folder / "ds")
    d = parsed_json(inp)
    src, dst = str(inp.data.resolve()), str(ds.resolve())
    for a in d["images"]:
        a["path"] = a["path"].replace(src, dst)
        a["annotation"] = a.get("annotation", "").replace(src, dst)
    d["root"] = str(d.get("root", "")).replace(src, dst)
    parsed = write_json(folder / "parsed.json", d)
    model = model_copy(inp, folder / "model")
    return Case("", ["evaluate", str(model), str(parsed), "--out", "report.json", "--device", "cpu",
                     "--detect-proposals", "40"], "safe", None, cwd=ds / "JPEGImages")


@case("evaluate-out-is-user-file")
def _(folder: Path, inp: Inputs) -> Case:
    dets = write_json(folder / "dets.json", [good_detection(inp)])
    user_folder(folder, {"report.json": '{"my": "report"}\n'})
    return Case("", evaluate_args(dets, inp.parsed, folder / "report.json"), "fail", "report.json")


@case("evaluate-out-is-detections")
def _(folder: Path, inp: Inputs) -> Case:
    dets = write_json(folder / "dets.json", [good_detection(inp)])
    return Case("", evaluate_args(dets, inp.parsed, dets), "fail", "dets.json")


@case("evaluate-out-is-parsed")
def _(folder: Path, inp: Inputs) -> Case:
    dets = write_json(folder / "dets.json", [good_detection(inp)])
    parsed = copy_tree(inp.parsed.parent, folder / "parsedcopy") / inp.parsed.name
    return Case("", evaluate_args(dets, parsed, parsed), "fail", inp.parsed.name)


# --------------------------------------------------------------------------- synth, pipeline, demo

PIPELINE_FAST = ("--backbone", "efficientnet_lite0", "--epochs", "1", "--size", "48", "--workers", "1", "--max-side", "100",
                 "--detect-proposals", "40", "--neg-per-image", "4", "--device", "cpu")


@case("synth-out-user-folder")
def _(folder: Path, inp: Inputs) -> Case:
    src = synth_images(inp)[5]
    mine = user_folder(folder / "mine", {"Annotations/synth_0000.xml": "<annotation>my own</annotation>\n",
                                         "JPEGImages/synth_0000.jpg": src.read_bytes(),
                                         "ImageSets/Main/train.txt": "my_split\n", "notes.txt": "my notes\n"})
    return Case("", ["synth", str(mine), "--images", "2"], "safe", "mine")


@case("synth-out-is-file")
def _(folder: Path, inp: Inputs) -> Case:
    user_folder(folder, {"target.txt": "the user's file\n"})
    return Case("", ["synth", str(folder / "target.txt"), "--images", "2"], "fail", "target.txt")


@case("synth-images-zero")
def _(folder: Path, inp: Inputs) -> Case:
    return Case("", ["synth", str(folder / "s"), "--images", "0"], "fail", "--images")


@case("pipeline-out-user-folder", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    ds = copy_tree(inp.data, folder / "ds")
    mine = user_folder(folder / "mine", {"metrics.json": '{"my": "metrics"}\n', "parsed.json": '{"mine": 1}\n',
                                         "detect/readme.txt": "my notes\n"})
    return Case("", ["pipeline", str(ds), "--out", str(mine), *PIPELINE_FAST], "safe", "mine", process=True, timeout=300)


@case("pipeline-out-is-data")
def _(folder: Path, inp: Inputs) -> Case:
    ds = mini_voc(folder / "ds", inp, n=8, split_files=True)  # the user's own dataset (not written by rcnn)
    return Case("", ["pipeline", str(ds), "--out", str(ds), *PIPELINE_FAST], "fail", "ds")


@case("pipeline-data-all-bad")
def _(folder: Path, inp: Inputs) -> Case:
    ds = folder / "alldata"
    (ds / "Annotations").mkdir(parents=True)
    (ds / "JPEGImages").mkdir()
    (ds / "Annotations" / "lonely.xml").write_text("<annotation>")
    return Case("", ["pipeline", str(ds), "--out", str(folder / "run"), *PIPELINE_FAST], "fail", "alldata", also=["lonely.xml"])


@case("demo-out-user-folder", heavy=True)
def _(folder: Path, inp: Inputs) -> Case:
    """A folder of the user's whose data/ looks like a dataset: the demo must not adopt it, nor write beside it."""
    src = synth_images(inp)[0]
    mine = user_folder(folder / "mine", {"data/Annotations/holiday.xml": voc_xml("holiday.jpg", [("disc", 10, 10, 60, 60)], (320, 240)),
                                         "data/JPEGImages/holiday.jpg": src.read_bytes(), "notes.txt": "my notes\n"})
    return Case("", ["demo", "--out", str(mine), "--images", "10"], "safe", "mine", process=True, timeout=600)


# --------------------------------------------------------------------------- names that leave their folder (issue 25)
# Each escaping name points back into the case folder: a wrong implementation writes there, and the check sees it.

def created_outside(folder: Path, out: Path) -> Callable[[], str | None]:
    """A check: no file or folder appeared under ``folder`` but inside ``out`` since this call (the end of the build)."""
    def listing() -> set[str]:
        cwd = folder / "cwd"  # made after the build, as the run's working directory
        return {str(p) for p in folder.rglob("*") if not any(x == p or x in p.parents for x in (out, cwd))}

    before = listing()
    return lambda: (f"wrote outside {out.name}: {sorted(new)[:3]}" if (new := listing() - before) else None)


def deep_out(folder: Path, name: str) -> Path:
    """An output folder four levels down: ``../`` x4 from one of its subfolders stays inside ``folder``."""
    parent = folder / "d1" / "d2" / "d3"
    parent.mkdir(parents=True, exist_ok=True)
    return parent / name


ESCAPES = {"relative": "../../../../pwn25", "absolute": None}  # None: an absolute path under the case folder


def escape(folder: Path, tag: str) -> str:
    return ESCAPES[tag] or str(folder / "pwn25")


def parsed_with_id(inp: Inputs, folder: Path, new_id: str) -> Path:
    """The parsed fixture with its first training image's id replaced by ``new_id``."""
    d = parsed_json(inp)
    rec = next(a for a in d["images"] if a["split"] == "train")
    rec["id"] = new_id
    return write_json(folder / "parsed.json", d)


def parsed_with_class(inp: Inputs, folder: Path, new_name: str) -> Path:
    """The parsed fixture with its first class renamed ``new_name`` (everywhere it is used)."""
    d = parsed_json(inp)
    old = d["classes"][0]
    d["classes"][0] = new_name
    for a in d["images"]:
        for o in a["objects"]:
            o["label"] = new_name if o["label"] == old else o["label"]
    return write_json(folder / "parsed.json", d)


for _tag in ESCAPES:
    def _propose(folder: Path, inp: Inputs, tag: str) -> Case:
        out = deep_out(folder, "props")
        args = propose_args(parsed_with_id(inp, folder, escape(folder, tag)), out, "--split", "train")
        return Case("", args, "safe", "pwn25", check=created_outside(folder, out))

    def _show(folder: Path, inp: Inputs, tag: str) -> Case:
        out = deep_out(folder, "show")
        args = ["show", str(parsed_with_id(inp, folder, escape(folder, tag))), "--out", str(out), "--split", "train"]
        return Case("", args, "safe", "pwn25", check=created_outside(folder, out))

    def _crop_class(folder: Path, inp: Inputs, tag: str) -> Case:
        out = deep_out(folder, "crops")
        args = crop_args(parsed_with_class(inp, folder, escape(folder, tag)), inp.props, out, "--format", "imagefolder")
        return Case("", args, "safe", "pwn25", check=created_outside(folder, out))

    register(f"propose-parsed-id-escapes-{_tag}", _propose, tag=_tag)
    register(f"show-parsed-id-escapes-{_tag}", _show, tag=_tag)
    register(f"crop-imagefolder-class-escapes-{_tag}", _crop_class, tag=_tag)


@case("propose-boxes-folder-is-a-link")
def _(folder: Path, inp: Inputs) -> Case:
    """``boxes`` of an earlier run replaced by a link to the user's folder: never written through."""
    out = copy_tree(inp.props, folder / "props")
    mine = user_folder(folder / "mine", {"notes.txt": "my notes\n"})
    shutil.rmtree(out / "boxes")
    (out / "boxes").symlink_to(mine, target_is_directory=True)
    check = created_outside(folder, out)
    return Case("", propose_args(inp.parsed, out, "--max-side", "90"), "safe", "boxes", owned=[out],
                check=lambda: check() or (f"wrote into the linked folder: {sorted(p.name for p in mine.iterdir())[:3]}"
                                          if set(p.name for p in mine.iterdir()) != {"notes.txt"} else None))


@case("parse-yolo-yaml-split-outside")
def _(folder: Path, inp: Inputs) -> Case:
    mini_yolo(folder / "other", inp)  # images beside the dataset, not in it
    ds = folder / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "data.yaml").write_text("path: .\ntrain: ../other/images/train\nnames: [disc, square]\n")
    return Case("", parse_args(ds, folder), "fail", "../other/images/train")


for _cmd in ("propose", "crop"):
    for _addr in ("127.0.0.1:1", "no-such-host.invalid:6379"):
        def _ray(folder: Path, inp: Inputs, cmd: str, addr: str) -> Case:
            args = (propose_args(inp.parsed, folder / "props") if cmd == "propose"
                    else crop_args(inp.parsed, inp.props, folder / "crops"))
            return Case("", [*args, "--ray", addr], "fail", addr, process=True, timeout=60)

        register(f"{_cmd}-ray-unreachable-{_addr.split(':')[0]}", _ray, heavy=True, cmd=_cmd, addr=_addr)


# cases expected to fail until a fix lands (strict xfail in test_hostile.py); issue 25's are all fixed
XFAIL: set[str] = set()


# --------------------------------------------------------------------------- rcnn.core


CORE_CASES = ("core-fc-huge-no-arrays", "core-fc-negative", "core-arch-not-json", "core-arch-is-list", "core-truncated",
              "core-pickled-array")
SLOW_CASES = ("detect-huge-png",)


def core_corpus(folder: Path) -> dict[str, Path]:
    """``.npz`` model files that :meth:`rcnn.core.Model.load` must refuse with ValueError, quickly."""
    from rcnn.core import FC, GD, Model

    folder.mkdir(parents=True, exist_ok=True)
    small = Model([("fc", FC(2, 2, seed=0))], "mse", GD(0.1))
    arch = small.architecture()

    def npz(name: str, arrays: dict[str, np.ndarray]) -> Path:
        p = folder / name
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        return p

    def arch_bytes(a: Any) -> np.ndarray:
        return np.frombuffer(json.dumps(a).encode(), dtype=np.uint8)

    huge = json.loads(json.dumps(arch))
    huge["layers"][0]["config"].update(in_features=100_000, out_features=100_000)
    out = {"core-fc-huge-no-arrays": npz("huge.npz", {"__architecture__": arch_bytes(huge)})}
    neg = json.loads(json.dumps(arch))
    neg["layers"][0]["config"].update(in_features=-3)
    out["core-fc-negative"] = npz("negative.npz", {"__architecture__": arch_bytes(neg)})
    out["core-arch-not-json"] = npz("notjson.npz", {"__architecture__": np.frombuffer(b"\xff{{", np.uint8)})
    out["core-arch-is-list"] = npz("archlist.npz", {"__architecture__": arch_bytes([1, 2])})
    good = folder / "good.npz"
    small.save(good)
    (folder / "truncated.npz").write_bytes(truncated(good, 0.5))
    out["core-truncated"] = folder / "truncated.npz"
    out["core-pickled-array"] = npz("pickled.npz", {"__architecture__": arch_bytes(arch), "fc/W": np.array([Evil()], dtype=object)})
    good.unlink()
    return out


def is_special(path: Path) -> bool:
    """A FIFO, socket or device: never open it to hash it."""
    mode = os.lstat(path).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


__all__ = ["Case", "Inputs", "BUILDERS", "HEAVY", "SLOW_CASES", "XFAIL", "CORE_CASES", "DETECT_FAST", "build_case", "build_corpus",
           "case_names", "core_corpus", "huge_png", "is_special", "Evil"]
