"""COCO detection JSON (``instances_*.json``) read into the records of :mod:`rcnn.records`.

* Boxes: COCO's ``bbox`` is [x, y, w, h] in 0-based pixels; it becomes (x, y, x + w, y + h), clipped and checked
  by :func:`rcnn.formats.common.checked_box` as VOC boxes are.
* ``iscrowd`` 1 regions become ``difficult`` objects (neither required nor penalised by ``rcnn evaluate``, as VOC's
  difficult ones). Categories are taken by name; an image's id is the stem of its ``file_name``.
* Layout: a COCO file given directly, or a folder with ``annotations/instances_<split>.json`` (else the ``.json``
  files of the folder and of ``annotations/`` that look like COCO). The split comes from the file name
  (``instances_train2017.json`` -> train, see :func:`rcnn.formats.common.split_name` and
  :func:`rcnn.formats.common.assign_splits`); files without a split in their name get the seeded random split.
* Images: ``file_name`` is looked up under ``--images``, else ``DATA/images/<split>/``, ``DATA/<split>/``,
  ``DATA/images/``, ``DATA/`` and the JSON's own folder; the first that holds it wins.
* A file that cannot be read or is not COCO is skipped with one error line; a bad entry inside (an annotation of
  an unknown image or category, a bbox that is not 4 finite numbers) is skipped with a warning.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DataError
from ..records import Annotation, Object, Problem
from ..safe_read import (
    display_path,
    file_kind,
    image_size,
    is_dir,
    is_utf8,
    one_line,
    open_regular,
    quote,
    read_regular,
    reason,
    resolve_path,
)
from .common import ReadResult, assign_splits, checked_box, checked_folder, collect, split_name

MAX_JSON_BYTES = 2 * 1024**3  # COCO 2017's instances_train2017.json is 448 MiB
PEEK_BYTES = 1 << 20  # how much of an arbitrary .json is read to tell whether it is COCO


def _looks_like_coco(path: Path) -> bool:
    """A JSON object whose first MiB names an ``"images"`` key and that no rcnn command wrote (they carry a format tag)."""
    if file_kind(path) != "file":
        return False
    try:
        with open_regular(path) as f:
            head = f.read(PEEK_BYTES)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"images"' in head and b'"rcnn-' not in head


def find_json_files(data: Path) -> list[Path]:
    """The COCO files of the dataset folder ``data``: ``annotations/instances_*.json``, else the COCO-looking
    ``*.json`` of ``data`` and ``data/annotations``."""
    if not is_dir(data):
        return []
    ann = data / "annotations"
    instances = sorted(p for p in ann.glob("instances_*.json") if file_kind(p) == "file") if is_dir(ann) else []
    if instances:
        return instances
    found = sorted(data.glob("*.json")) + (sorted(ann.glob("*.json")) if is_dir(ann) else [])
    return [p for p in found if _looks_like_coco(p)]


def file_split(path: Path) -> str:
    """The split part of a COCO file name: ``instances_val2017.json`` -> ``val2017``, ``train.json`` -> ``train``."""
    stem = path.stem
    return stem[len("instances_"):] if stem.startswith("instances_") else stem


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_coco(path: Path) -> dict[str, Any]:
    """The parsed JSON object of a COCO detection file, its top-level lists checked.

    Raises:
        DataError: one line: the file cannot be read, is not JSON, or lacks ``images`` / ``annotations`` / ``categories`` lists.
    """
    try:
        raw = read_regular(path, MAX_JSON_BYTES)
    except OSError as e:
        raise DataError(f"cannot read: {reason(e)}") from None
    try:
        d = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"not valid JSON: {one_line(e, 200)}") from None
    if not isinstance(d, dict):
        raise DataError(f"not a COCO detection file: the top level is a {type(d).__name__}, not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(f"not a COCO detection file: {key!r} must be a list, got {quote(d.get(key))}")
    return d


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _key(v: Any) -> int | str | None:
    """An image or category id as a dict key: an integer or a string (JSON allows both)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return None
    return v


def _categories(d: dict[str, Any], name: str, problems: list[Problem]) -> dict[int | str, str]:
    cats: dict[int | str, str] = {}
    for k, c in enumerate(d["categories"]):
        cid = _key(c.get("id")) if isinstance(c, dict) else None
        label = c.get("name") if isinstance(c, dict) else None
        if cid is None or not isinstance(label, str) or not label.strip() or not is_utf8(label):
            problems.append(Problem(name, f"categories[{k}] needs an integer 'id' and a 'name', got {quote(c)}; skipped"))
            continue
        cats[cid] = label.strip()
    return cats


def _image_entries(d: dict[str, Any], name: str, problems: list[Problem]) -> dict[int | str, dict[str, Any]]:
    entries: dict[int | str, dict[str, Any]] = {}
    for k, im in enumerate(d["images"]):
        iid = _key(im.get("id")) if isinstance(im, dict) else None
        fname = im.get("file_name") if isinstance(im, dict) else None
        if iid is None or not isinstance(fname, str) or not fname.strip():
            problems.append(Problem(name, f"images[{k}] needs an 'id' and a 'file_name', got {quote(im)}; skipped"))
        elif iid in entries:
            problems.append(Problem(name, f"images[{k}] repeats the image id {iid!r}; skipped"))
        else:
            entries[iid] = im
    return entries


def _group_annotations(d: dict[str, Any], images: dict[int | str, Any], cats: dict[int | str, str], name: str,
                       problems: list[Problem]) -> dict[int | str, list[dict[str, Any]]]:
    """image id -> its annotations, in file order; annotations of unknown images or categories are reported and left out."""
    grouped: dict[int | str, list[dict[str, Any]]] = defaultdict(list)
    for k, a in enumerate(d["annotations"]):
        if not isinstance(a, dict):
            problems.append(Problem(name, f"annotations[{k}] is a {type(a).__name__}, not an object; skipped"))
            continue
        where = f"annotation {quote(a.get('id', k))}"
        iid, cid = _key(a.get("image_id")), _key(a.get("category_id"))
        if iid not in images:
            problems.append(Problem(name, f"{where} refers to image_id {quote(a.get('image_id'))}, which is not in 'images'; skipped"))
        elif cid not in cats:
            problems.append(Problem(name, f"{where} has category_id {quote(a.get('category_id'))}, which is not in 'categories'; skipped"))
        else:
            grouped[iid].append(a)
    return grouped


def _image_path(file_name: str, folders: list[Path]) -> tuple[Path | None, str]:
    """Find ``file_name`` (a relative path without ``..``; else only its last part is used) in the first folder holding it."""
    rel = PurePosixPath(file_name.replace("\\", "/"))
    tries = [Path(rel.name)]
    if not rel.is_absolute() and ".." not in rel.parts and len(rel.parts) > 1:
        tries.insert(0, Path(*rel.parts))
    unusable = ""
    for folder in folders:
        for t in tries:
            kind = file_kind(folder / t)
            if kind == "file":
                return folder / t, ""
            if kind is not None and not unusable:
                unusable = f"image {display_path(folder / t)} is {kind}" + ("" if kind.startswith(("unreadable", "unusable")) else ", not a regular file")
    where = ", ".join(display_path(f) for f in folders) or "no folder"
    return None, unusable or f"image {file_name!r} not found in {where}"


def _record(im: dict[str, Any], anns: list[dict[str, Any]], cats: dict[int | str, str], json_path: Path,
            folders: list[Path], classes: list[str] | None) -> tuple[Annotation | None, list[Problem]]:
    """One image entry and its annotations as an :class:`Annotation` (split left empty)."""
    name = display_path(json_path)
    fname = im["file_name"]
    problems: list[Problem] = []

    def fail(msg: str) -> tuple[None, list[Problem]]:
        problems.append(Problem(name, f"image {fname!r}: {msg}; skipped", "error"))
        return None, problems

    path, why = _image_path(fname, folders)
    if path is None:
        return fail(why)
    size, why = image_size(path)
    if size is None:
        return fail(why)
    width, height = size
    if _number(im.get("width")) and _number(im.get("height")) and (int(im["width"]), int(im["height"])) != (width, height):
        problems.append(Problem(name, f"image {fname!r}: width x height {int(im['width'])}x{int(im['height'])} differs from "
                                      f"the image's {width}x{height}; using the image's"))
    objects = []
    for a in anns:
        label = cats[a["category_id"]]
        if classes is not None and label not in classes:
            continue
        where = f"annotation {quote(a.get('id'))} ({one_line(label, 60)}) of {fname!r}"
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            problems.append(Problem(name, f"{where} has bbox {quote(bbox)}, not 4 finite numbers [x, y, width, height]; skipped"))
            continue
        x, y, w, h = (float(v) for v in bbox)
        box = checked_box((x, y, x + w, y + h), width, height, where, bbox, name, problems)
        if box is None:
            continue
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):
            problems.append(Problem(name, f"{where} has iscrowd {quote(crowd)} (expected 0 or 1); treated as 0"))
            crowd = 0
        objects.append(Object(label, box, difficult=bool(crowd)))
    ann = Annotation(id=PurePosixPath(fname.replace("\\", "/")).stem, path=resolve_path(path), width=int(width),
                     height=int(height), split="", objects=objects, annotation=resolve_path(json_path))
    if not (is_utf8(ann.path) and is_utf8(ann.annotation)):
        return fail(f"the path of the image ({display_path(ann.path)}) is not valid UTF-8; rename it")
    return ann, problems


def image_folders(base: Path, json_path: Path, split: str, images_dir: Path | None) -> list[Path]:
    """Where the images of one COCO file may be, in the order they are tried."""
    if images_dir is not None:
        return [images_dir]
    folders = [base / "images" / split, base / split, base / "images", base, json_path.parent]
    unique = []
    for f in folders:
        if is_dir(f) and f not in unique:
            unique.append(f)
    return unique


def read_coco_file(json_path: Path, folders: list[Path], classes: list[str] | None, progress: bool = False
                   ) -> tuple[list[tuple[Annotation | None, list[Problem]]], list[Problem]]:
    """Every image of one COCO file: ``([(record or None, its problems), ...], problems of the file itself)``."""
    from tqdm import tqdm

    name = display_path(json_path)
    try:
        d = load_coco(json_path)
    except DataError as e:
        return [], [Problem(name, f"{e}; skipped", "error")]
    problems: list[Problem] = []
    cats = _categories(d, name, problems)
    entries = _image_entries(d, name, problems)
    grouped = _group_annotations(d, entries, cats, name, problems)
    out = [_record(im, grouped.get(iid, []), cats, json_path, folders, classes)
           for iid, im in tqdm(entries.items(), desc=f"parse {json_path.name}", unit="image", disable=None if progress else True, leave=False)]
    return out, problems


def read_coco(data: Path, images_dir: str | Path | None, classes: list[str] | None, strict: bool, progress: bool
              ) -> ReadResult:
    """A COCO dataset (a file or a folder, see the module's docstring): (records, id -> split or None, problems, root).

    Raises:
        DataError: no COCO file is found, ``images_dir`` is unusable, or the files mix named and unnamed splits.
    """
    is_file = file_kind(data) == "file"
    files = [data] if is_file else find_json_files(data)
    if not files:
        raise DataError(f"no COCO annotation file in {display_path(data)}: looked for annotations/instances_*.json "
                        "and *.json files with 'images', 'annotations' and 'categories'")
    base = data.parent if is_file else data
    root = checked_folder(base)
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None:
        checked_folder(images_dir)
    named = {f: split_name(file_split(f)) for f in files}
    unnamed = [f for f, s in named.items() if s is None]
    if unnamed and len(unnamed) < len(files):
        raise DataError(f"cannot tell the split of {display_path(unnamed[0])}: name the files instances_train.json, "
                        "instances_val.json, instances_test.json")
    images: list[Annotation] = []
    problems: list[Problem] = []
    listed: dict[str, list[str]] = {}
    for f in files:
        records, file_problems = read_coco_file(f, image_folders(base, f, file_split(f), images_dir), classes, progress)
        collect(None, file_problems, images, problems, strict)
        start = len(images)
        for ann, probs in records:
            collect(ann, probs, images, problems, strict)
        listed.setdefault(file_split(f), []).extend(a.id for a in images[start:])
    return images, None if unnamed else assign_splits(listed), problems, root
