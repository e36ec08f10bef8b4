"""YOLO txt labels (Ultralytics layout) read into the records of :mod:`rcnn.records`.

* A label line is ``class cx cy w h``, normalised to the image's width and height; the box becomes
  ((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H) in pixels, clipped and checked by
  :func:`rcnn.formats.common.checked_box` as VOC boxes are. A polygon line (``class x1 y1 x2 y2 ...``, Ultralytics'
  segment labels) gives its bounding box. YOLO has no difficult flag.
* Class names: ``data.yaml``'s ``names`` (a list, or an ``{id: name}`` mapping), else ``classes.txt`` (one name a
  line, in ``DATA/`` or ``DATA/labels/``).
* Layout: ``data.yaml``'s ``train``/``val``/``test`` folders (relative to its ``path``, itself relative to the
  YAML file; only local folders inside that dataset folder, never URLs or ``../other``), else ``DATA/images/<split>/`` subfolders, else ``DATA/images/``
  (the seeded random split). The label of ``.../images/x/a.jpg`` is ``.../labels/x/a.txt`` (Ultralytics' rule;
  next to the image when its path has no ``images`` folder); an image without a label file has no objects.
  Splits: see :func:`rcnn.formats.common.assign_splits`.
* The YAML file is read with ``yaml.safe_load`` (no tags that build objects, nothing executed, ``download`` ignored).
* A bad label line (wrong field count, a class id out of range, a number that is not finite) is skipped with
  a warning naming the file and line; an unreadable label file or image skips the image with an error.
"""

from __future__ import annotations

import math
import os
import reprlib
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import IMAGE_EXTENSIONS
from ..records import Annotation, Object, Problem
from ..safe_read import (
    display_path,
    file_kind,
    image_size,
    is_dir,
    is_utf8,
    one_line,
    read_regular,
    reason,
    resolve_path,
)
from .common import ReadResult, assign_splits, checked_box, checked_folder, collect, split_name

MAX_YAML_BYTES = 1 << 20  # a data.yaml is a few hundred bytes
MAX_LABEL_BYTES = 16 << 20  # a label file is a few lines
YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
SPLIT_KEYS = ("train", "val", "test")
# YAML aliases can make a small file a huge nested value (a "billion laughs"): messages show it through reprlib,
# which stops at a few levels and items, never through repr.
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxstring, _BRIEF.maxother = 2, 4, 4, 40, 40


def _quote(value: Any) -> str:
    return _BRIEF.repr(value)


def _yaml_file(data: Path) -> Path | None:
    if file_kind(data) == "file":
        return data
    return next((data / n for n in YAML_NAMES if file_kind(data / n) == "file"), None)


def looks_like_yolo(data: Path) -> bool:
    """``data`` holds a data YAML, or ``labels/`` with ``*.txt`` label files (directly or one folder down)."""
    if _yaml_file(data) is not None:
        return True
    labels = data / "labels"
    if not is_dir(labels):
        return False
    return any(p.name != "classes.txt" for p in labels.glob("*.txt")) or any(labels.glob("*/*.txt"))


def load_yaml(path: Path) -> dict[str, Any]:
    """The mapping of a data YAML, read with ``yaml.safe_load``.

    Raises:
        DataError: one line: unreadable, not YAML, a tag ``safe_load`` refuses (``!!python/object``), or not a mapping.
    """
    import yaml

    name = display_path(path)
    try:
        raw = read_regular(path, MAX_YAML_BYTES)
        d = yaml.safe_load(raw.decode("utf-8-sig"))
    except OSError as e:
        raise DataError(f"cannot read {name}: {reason(e)}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text: {e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise DataError(f"{name} is not usable YAML: {one_line(e, 200)}") from None
    if not isinstance(d, dict):
        raise DataError(f"{name} is not a YOLO data file: expected a mapping with 'names' and 'train'/'val'/'test', "
                        f"got {_quote(d)}")
    return d


def class_names(value: Any, where: str) -> list[str | None]:
    """``names`` as a list indexed by class id (None where a mapping skips an id).

    Raises:
        DataError: ``value`` is neither a list of names nor an ``{id: name}`` mapping.
    """
    if isinstance(value, list):
        items = dict(enumerate(value))
    elif isinstance(value, dict) and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 100_000 for k in value):
        items = value
    else:
        raise DataError(f"{where}: 'names' must be a list of class names or a mapping of class id to name, got {_quote(value)}")
    names: list[str | None] = [None] * (max(items, default=-1) + 1)
    for k, v in items.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or not str(v).strip() or not is_utf8(str(v)):
            raise DataError(f"{where}: class {k} has the name {_quote(v)}; names must be non-empty text")
        names[k] = str(v).strip()
    return names


def _local(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where} must be a folder path, got {_quote(value)}")
    if "://" in value:
        raise DataError(f"{where} is {_quote(value)}: only local folders are read, never URLs")
    p = Path(os.path.expanduser(value.strip()))
    return p if p.is_absolute() else base / p


def _inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` (links and ``..`` resolved) is ``root`` or lies inside it."""
    real, real_root = os.path.realpath(folder), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _yaml_layout(path: Path) -> tuple[list[str | None], list[tuple[str, Path]]]:
    d = load_yaml(path)
    name = display_path(path)
    if "names" not in d:
        raise DataError(f"{name} has no 'names' (the class names)")
    names = class_names(d["names"], name)
    root = _local(d["path"], path.parent, f"{name}: 'path'") if d.get("path") not in (None, "") else path.parent
    splits = []
    for key in SPLIT_KEYS:
        value = d.get(key)
        if value in (None, ""):
            continue
        for v in value if isinstance(value, list) else [value]:
            folder = _local(v, root, f"{name}: {key!r}")
            if not _inside(folder, root):
                raise DataError(f"{name}: {key!r} is {v!r}, which leaves the dataset folder {display_path(root)}; "
                                "only folders inside it are read")
            if file_kind(folder) == "file":
                raise DataError(f"{name}: {key!r} is the file {display_path(folder)}; image list files are not "
                                "supported, point it at a folder of images")
            if not is_dir(folder):
                raise DataError(f"{name}: {key!r} folder not found: {display_path(folder)}")
            splits.append((key, folder))
    if not splits:
        raise DataError(f"{name} names no 'train', 'val' or 'test' folder")
    return names, splits


def _classes_txt(data: Path) -> list[str | None]:
    for p in (data / "classes.txt", data / "labels" / "classes.txt"):
        if file_kind(p) is None:
            continue
        try:
            text = read_regular(p, MAX_YAML_BYTES).decode("utf-8-sig")
        except OSError as e:
            raise DataError(f"cannot read {display_path(p)}: {reason(e)}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{display_path(p)} is not UTF-8 text: {e}") from None
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not names:
            raise DataError(f"{display_path(p)} lists no class names")
        return list(names)
    raise DataError(f"{display_path(data)} has no class names: expected data.yaml with 'names', or classes.txt")


def find_layout(data: Path) -> tuple[list[str | None], list[tuple[str | None, Path]], str]:
    """(class names by id, [(split name or None, image folder)], the dataset's resolved root).

    Raises:
        DataError: no class names, no image folder, or a YAML value that is unusable (a URL, a missing folder).
    """
    yaml_path = _yaml_file(data)
    if yaml_path is not None:
        names, splits = _yaml_layout(yaml_path)
        return names, list(splits), checked_folder(yaml_path.parent)
    root = checked_folder(data)
    names = _classes_txt(data)
    images = data / "images"
    if not is_dir(images):
        raise DataError(f"{display_path(data)} has no images/ folder (YOLO layout: images/ and labels/, or data.yaml)")
    subs = sorted(p for p in images.iterdir() if is_dir(p) and split_name(p.name) is not None)
    return names, [(p.name, p) for p in subs] or [(None, images)], root


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = image.parts
    if "images" in parts[:-1]:
        k = len(parts) - 1 - parts[::-1].index("images")
        return Path(*parts[:k], "labels", *parts[k + 1:]).with_suffix(".txt")
    return image.with_suffix(".txt")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and file_kind(p) == "file")


def _finite(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_label_line(fields: list[str], names: list[str | None]) -> tuple[str, tuple[float, float, float, float]] | str:
    """(class name, normalised (x1, y1, x2, y2)) of one label line, or why it is unusable."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return f"has {n} fields, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 ...)"
    cls = _finite(fields[0])
    if cls is None or not cls.is_integer() or not 0 <= cls < len(names) or names[int(cls)] is None:
        return f"has the class id {_quote(fields[0])}, not one of 0..{len(names) - 1} with a name"
    values = [_finite(v) for v in fields[1:]]
    if any(v is None for v in values):
        bad = next(f for f, v in zip(fields[1:], values) if v is None)
        return f"has {_quote(bad)}, not a finite number"
    if n == 5:
        cx, cy, w, h = values
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        xs, ys = values[0::2], values[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    return names[int(cls)], box


def read_label_file(image: Path, names: list[str | None], classes: list[str] | None
                    ) -> tuple[Annotation | None, list[Problem]]:
    """One image and its label file as an :class:`Annotation` (split left empty)."""
    problems: list[Problem] = []
    label = label_path(image)
    name = display_path(label)

    def fail(msg: str) -> tuple[None, list[Problem]]:
        problems.append(Problem(name if file_kind(label) is not None else display_path(image), msg, "error"))
        return None, problems

    size, why = image_size(image)
    if size is None:
        return fail(why)
    width, height = size
    lines: list[str] = []
    kind = file_kind(label)
    if kind is not None:
        try:
            lines = read_regular(label, MAX_LABEL_BYTES).decode("utf-8-sig").splitlines()
        except OSError as e:
            return fail(f"cannot read: {reason(e)}")
        except UnicodeDecodeError as e:
            return fail(f"not UTF-8 text: {e}")
    objects = []
    for k, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        parsed = parse_label_line(fields, names)
        if isinstance(parsed, str):
            problems.append(Problem(name, f"line {k} {parsed}; skipped"))
            continue
        cls, (x1, y1, x2, y2) = parsed
        if classes is not None and cls not in classes:
            continue
        where = f"line {k} ({one_line(cls, 60)})"
        box = checked_box((x1 * width, y1 * height, x2 * width, y2 * height), width, height, where,
                          " ".join(fields[1:]), name, problems)
        if box is not None:
            objects.append(Object(cls, box))
    ann = Annotation(id=image.stem, path=resolve_path(image), width=int(width), height=int(height), split="",
                     objects=objects, annotation=resolve_path(label) if kind == "file" else "")
    if not (is_utf8(ann.path) and is_utf8(ann.annotation)):
        return fail(f"the path of the image ({display_path(ann.path)}) or of its label is not valid UTF-8; rename it")
    return ann, problems


def read_yolo(data: Path, classes: list[str] | None, strict: bool, progress: bool
              ) -> ReadResult:
    """A YOLO dataset (see the module's docstring): (records, id -> split or None, problems, resolved root).

    Raises:
        DataError: the layout, the class names or the YAML file is unusable, or no image is found.
    """
    from tqdm import tqdm

    names, folders, root = find_layout(data)
    images: list[Annotation] = []
    problems: list[Problem] = []
    listed: dict[str, list[str]] = {}
    found = 0
    for split, folder in folders:
        files = _images_in(folder)
        found += len(files)
        start = len(images)
        for image in tqdm(files, desc=f"parse {folder.name}", unit="image", disable=None if progress else True, leave=False):
            collect(*read_label_file(image, names, classes), images, problems, strict)
        listed.setdefault(split or "", []).extend(a.id for a in images[start:])
    if not found:
        raise DataError(f"no images in {', '.join(display_path(f) for _, f in folders)}")
    unnamed = [s for s in listed if split_name(s) is None]
    if unnamed and len(unnamed) < len(listed):
        raise DataError(f"cannot tell the split of the folder {unnamed[0]!r} of {display_path(data)}: "
                        "name the folders train, val, test")
    return images, None if unnamed else assign_splits(listed), problems, root
