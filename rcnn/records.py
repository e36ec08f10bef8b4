"""The records of a parsed dataset (the output of ``rcnn parse``, the input of every later stage).

:class:`Dataset` holds one :class:`Annotation` per image (its :class:`Object` boxes are (x1, y1, x2, y2) in
pixels), the class names and the :class:`Problem` s met while reading. :meth:`Dataset.save` writes it as one
JSON file tagged :data:`FORMAT`; :meth:`Dataset.load` reads one back, checking every field
(:func:`dataset_from_json`), so a hand-edited or foreign file fails with one line naming the bad record.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .io import write_json
from .safe_read import display_path, is_utf8, one_line, quote, read_regular, reason

SPLITS = ("train", "test")
FORMAT = "rcnn-parsed-v1"  # the format tag of a parsed dataset file
# Class names taken by the implicit background class (index 0 in later stages). A VOC class with one
# of these names (compared case-insensitively, ignoring surrounding underscores) would merge with it.
RESERVED_CLASSES = ("background", "__background__")


def is_reserved_class(name: str) -> bool:
    """Whether ``name`` is taken by the implicit background class (see :data:`RESERVED_CLASSES`)."""
    return name.strip().strip("_").lower() in {c.strip("_") for c in RESERVED_CLASSES}


# --------------------------------------------------------------------------- names that become paths
#
# Image ids and class names become file and folder names (boxes/<id>.npy, images/<id>.jpg, shards/<id>.npz,
# imagefolder/<class>/). One rule says which names stay inside the folder they are joined to; the readers
# and Dataset.load refuse the others where they enter, and every writer joins names through safe_child.


def escaping_name(name: str) -> bool:
    """Whether ``name``, joined to a folder, could leave it: an absolute path, a ``..`` part or a NUL."""
    parts = name.replace(os.sep, "/").split("/")
    return name.startswith(("/", os.sep)) or os.path.isabs(name) or ".." in parts or "\0" in name


def check_name(name: str, what: str) -> str:
    """``name`` when it stays inside the folder it is joined to (see :func:`escaping_name`).

    Raises:
        DataError: one line naming ``what`` (e.g. "image id") and the whole value.
    """
    if escaping_name(name):
        raise DataError(f"{what} {name!r} would leave its output folder (an absolute path, a '..' part or a NUL); "
                        "rename it")
    return name


def check_names(names: list[str], what: str) -> list[str]:
    """``names``, after :func:`check_name` on each (a writer's check before it writes anything).

    Raises:
        DataError: naming the first that escapes.
    """
    for name in names:
        check_name(name, what)
    return names


def safe_child(folder: str | os.PathLike, name: str, suffix: str = "", what: str = "name") -> Path:
    """``folder/<name><suffix>``, checked to stay inside ``folder``, following no link out of it.

    Raises:
        DataError: ``name`` escapes (:func:`check_name`), ``folder`` is a link, or the path resolves outside ``folder``.
    """
    folder = Path(folder)
    path = folder / f"{check_name(name, what)}{suffix}"
    if folder.is_symlink():
        raise DataError(f"{folder} is a link; rcnn writes no output through links (remove it)")
    real_folder = os.path.realpath(folder)
    real_parent = os.path.realpath(path.parent)
    if real_parent != real_folder and not real_parent.startswith(real_folder.rstrip(os.sep) + os.sep):
        raise DataError(f"{what} {name!r} leads out of {folder} through a link; rcnn writes no output through links")
    return path


@dataclass
class Object:
    """One annotated object. ``box`` is (x1, y1, x2, y2) in pixels."""

    label: str
    box: list[float]
    difficult: bool = False
    truncated: bool = False


@dataclass
class Annotation:
    """One image and its objects."""

    id: str  # the annotation file's stem, as in ImageSets split files (COCO, YOLO: the image file's stem)
    path: str  # absolute path of the image
    width: int
    height: int
    split: str  # "train" or "test"
    objects: list[Object] = field(default_factory=list)
    annotation: str = ""  # absolute path of the VOC XML, COCO JSON or YOLO txt file ("" for a YOLO image without one)

    def boxes(self, include_difficult: bool = True) -> np.ndarray:
        """ndarray[N, 4] float32 of the object boxes."""
        objs = [o for o in self.objects if include_difficult or not o.difficult]
        return np.array([o.box for o in objs], dtype=np.float32).reshape(-1, 4)

    def labels(self, include_difficult: bool = True) -> list[str]:
        return [o.label for o in self.objects if include_difficult or not o.difficult]


@dataclass
class Problem:
    """Something wrong in one file: ``level`` is "error" (file skipped) or "warning"."""

    file: str
    message: str
    level: str = "warning"

    def __str__(self) -> str:
        return f"{self.level}: {self.file}: {self.message}"


@dataclass
class Dataset:
    """The parsed dataset: records, class names and the problems met on the way."""

    images: list[Annotation]
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    root: str = ""

    def split(self, name: str | None) -> list[Annotation]:
        """The images of one split (all of them for ``None`` or "all")."""
        if name in (None, "all"):
            return list(self.images)
        if name not in SPLITS:
            raise ValueError(f"'split={name}' is invalid; valid splits are {', '.join(SPLITS)} and all")
        return [a for a in self.images if a.split == name]

    def summary(self) -> dict[str, Any]:
        per_class: dict[str, dict[str, int]] = {c: {s: 0 for s in SPLITS} for c in self.classes}
        for a in self.images:
            for o in a.objects:
                per_class[o.label][a.split] += 1
        return {
            "images": len(self.images),
            "images_per_split": {s: sum(a.split == s for a in self.images) for s in SPLITS},
            "objects": sum(len(a.objects) for a in self.images),
            "objects_per_class": per_class,
            "images_without_objects": sum(not a.objects for a in self.images),
            "files_skipped": sum(p.level == "error" for p in self.problems),
            "warnings": sum(p.level == "warning" for p in self.problems),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "root": self.root,
            "classes": self.classes,
            "summary": self.summary(),
            "images": [asdict(a) for a in self.images],
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a file written by :meth:`save` (``rcnn parse --out``).

        Raises:
            DataError: naming the file, when it is missing, unreadable, not JSON or its records are malformed
                (wrong types, boxes that are not 4 finite ordered numbers, reserved or unknown class names).
        """
        name = display_path(path)
        try:
            raw = read_regular(path)
        except FileNotFoundError:
            raise DataError(f"parsed dataset not found: {name}") from None
        except OSError as e:
            raise DataError(f"cannot read parsed dataset {name}: {reason(e)}") from None
        try:
            d = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"parsed dataset {name} is not valid JSON: {one_line(e)}") from None
        if not isinstance(d, dict) or "images" not in d:
            raise DataError(f"{name} is not a parsed dataset (run `rcnn parse` first)")
        return dataset_from_json(d, name)


def format_summary(ds: Dataset) -> str:
    """A short human-readable summary table."""
    s = ds.summary()
    per_split = s["images_per_split"]
    lines = [
        f"{s['images']} images ({per_split['train']} train / {per_split['test']} test), "
        f"{s['objects']} objects in {len(ds.classes)} classes, {s['images_without_objects']} images without objects",
        f"{'class':<20}{'train':>8}{'test':>8}",
    ]
    for c, counts in s["objects_per_class"].items():
        lines.append(f"{c:<20}{counts['train']:>8}{counts['test']:>8}")
    reasons = Counter(p.level for p in ds.problems)
    lines.append(f"{s['files_skipped']} files skipped, {reasons.get('warning', 0)} warnings")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the JSON schema check


class FieldChecker:
    """The checks of single values of a parsed-dataset JSON object, each raising one :class:`DataError` line
    that names the file, the record (``images[3].objects[0].box``) and the value."""

    def __init__(self, name: str) -> None:
        self.name = name  # the file, as shown in messages

    def malformed(self, where: str, what: str, value: Any = None, show: bool = True) -> DataError:
        got = f", got {quote(value)}" if show else ""
        return DataError(f"{self.name} has malformed records: {where} {what}{got} (re-run `rcnn parse`)")

    def unsafe(self, where: str, value: str) -> DataError:
        """A name that would leave the folder it becomes a path in, shown whole (:func:`escaping_name`)."""
        return DataError(f"{self.name} has malformed records: {where} {value!r} would leave its output folder "
                         "(an absolute path, a '..' part or a NUL); rename it")

    def text(self, where: str, value: Any, empty_ok: bool = False) -> str:
        if not isinstance(value, str) or not is_utf8(value) or (not empty_ok and not value):
            raise self.malformed(where, "must be a non-empty string" if not empty_ok else "must be a string", value)
        return value

    def count(self, where: str, value: Any) -> int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.malformed(where, "must be a positive integer", value)
        return value

    def flag(self, where: str, value: Any) -> bool:
        if value in (0, 1) and isinstance(value, (bool, int)):
            return bool(value)
        raise self.malformed(where, "must be true or false", value)

    def record(self, where: str, value: Any, known: set[str], required: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.malformed(where, "must be an object", value)
        for key in value:
            if key not in known:
                raise self.malformed(where, f"has an unknown field {quote(key)}", show=False)
        for key in required:
            if key not in value:
                raise self.malformed(where, f"has no {key!r}", show=False)
        return value

    def checked_list(self, where: str, value: Any, what: str = "must be a list") -> list[Any]:
        if not isinstance(value, list):
            raise self.malformed(where, what, value)
        return value


def dataset_from_json(d: dict[str, Any], name: str) -> Dataset:
    """Check every field of a parsed-dataset JSON object (read from the file ``name``) and build the :class:`Dataset`.

    Raises:
        DataError: one line naming the first malformed record (see :class:`FieldChecker`).
    """
    check = FieldChecker(name)
    images = _images_from_json(check, check.checked_list("'images'", d["images"]))
    classes = _classes_from_json(check, d.get("classes"), {o.label for a in images for o in a.objects})
    problems = _problems_from_json(check, d.get("problems", []))
    root = check.text("'root'", d.get("root", ""), empty_ok=True)
    return Dataset(images=images, classes=list(classes), problems=problems, root=root)


def _images_from_json(check: FieldChecker, raw_images: list[Any]) -> list[Annotation]:
    ann_fields = {f.name for f in fields(Annotation)}
    images: list[Annotation] = []
    seen: set[str] = set()
    for i, a in enumerate(raw_images):
        where = f"images[{i}]"
        a = check.record(where, a, ann_fields, ("id", "path", "width", "height", "split"))
        image_id = check.text(f"{where}.id", a["id"])
        if escaping_name(image_id):
            raise check.unsafe(f"{where}.id", image_id)
        if image_id in seen:
            raise check.malformed(f"{where}.id", "is a duplicate image id", image_id)
        seen.add(image_id)
        split = a["split"]
        if split not in SPLITS:
            raise check.malformed(f"{where}.split", f"must be one of {', '.join(SPLITS)}", split)
        raw_objects = check.checked_list(f"{where}.objects", a.get("objects", []))
        objects = [_object_from_json(check, f"{where}.objects[{k}]", o) for k, o in enumerate(raw_objects)]
        images.append(Annotation(
            id=image_id,
            path=check.text(f"{where}.path", a["path"]),
            width=check.count(f"{where}.width", a["width"]),
            height=check.count(f"{where}.height", a["height"]),
            split=split,
            objects=objects,
            annotation=check.text(f"{where}.annotation", a.get("annotation", ""), empty_ok=True),
        ))
    return images


def _object_from_json(check: FieldChecker, where: str, o: Any) -> Object:
    o = check.record(where, o, {f.name for f in fields(Object)}, ("label", "box"))
    box = o["box"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)
    ):
        raise check.malformed(f"{where}.box", "must be 4 finite numbers [x1, y1, x2, y2]", box)
    if not (box[0] < box[2] and box[1] < box[3]):
        raise check.malformed(f"{where}.box", "must have x1 < x2 and y1 < y2", box)
    return Object(
        label=check.text(f"{where}.label", o["label"]),
        box=[float(v) for v in box],
        difficult=check.flag(f"{where}.difficult", o.get("difficult", False)),
        truncated=check.flag(f"{where}.truncated", o.get("truncated", False)),
    )


def _classes_from_json(check: FieldChecker, classes: Any, labels: set[str]) -> list[str]:
    """The class list (the sorted labels when it is missing or empty): unique, not reserved, naming every label."""
    if classes is None or classes == []:
        classes = sorted(labels)
    else:
        check.checked_list("'classes'", classes, "must be a list of class names")
    for k, c in enumerate(classes):
        check.text(f"classes[{k}]", c)
        if escaping_name(c):
            raise check.unsafe(f"classes[{k}]", c)
        if is_reserved_class(c):
            raise check.malformed(f"classes[{k}]", "is reserved for the implicit background class", c)
    if len(set(classes)) != len(classes):
        raise check.malformed("'classes'", "has duplicate names", classes)
    missing = sorted(labels - set(classes))
    if missing:
        raise check.malformed("'classes'", f"lacks the object label {missing[0]!r}", classes)
    return classes


def _problems_from_json(check: FieldChecker, raw_problems: Any) -> list[Problem]:
    problems = []
    for k, pr in enumerate(check.checked_list("'problems'", raw_problems)):
        pr = check.record(f"problems[{k}]", pr, {f.name for f in fields(Problem)}, ("file", "message"))
        problems.append(Problem(
            file=check.text(f"problems[{k}].file", pr["file"], empty_ok=True),
            message=check.text(f"problems[{k}].message", pr["message"], empty_ok=True),
            level=check.text(f"problems[{k}].level", pr.get("level", "warning")),
        ))
    return problems
