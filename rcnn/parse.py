"""Stage 1: read a Pascal VOC, COCO or YOLO dataset into clean, validated records.

VOC boxes are 1-based and inclusive; they are converted here, once, to the
project's convention ``(x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax)`` in
pixels, clipped to the image. Every problem is reported with the file it is in;
a bad file is skipped (or, with ``strict``, raises) and never stops the run.
COCO and YOLO are read by :mod:`rcnn.formats` with the same box and image checks
(:func:`checked_box`, :func:`image_size`) and the same split rule (:func:`assign_splits`);
:func:`parse_dataset` tells the format from the layout (:func:`detect_format`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import numpy as np
from lxml import etree
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from . import io
from .io import IMAGE_EXTENSIONS, write_json

SPLITS = ("train", "test")
FORMAT = "rcnn-parsed-v1"  # the format tag of a parsed dataset file
# Boxes may stick out of the image by this much (the 0- vs 1-based ambiguity of
# real annotation tools) before a clipping warning is worth printing.
CLIP_TOLERANCE = 1.0
# Class names taken by the implicit background class (index 0 in later stages). A VOC class with one
# of these names (compared case-insensitively, ignoring surrounding underscores) would merge with it.
RESERVED_CLASSES = ("background", "__background__")
# An annotation larger than this is not a VOC annotation (they are a few KiB).
MAX_XML_BYTES = 64 * 1024 * 1024


def is_reserved_class(name: str) -> bool:
    """Whether ``name`` is taken by the implicit background class (see :data:`RESERVED_CLASSES`)."""
    return name.strip().strip("_").lower() in {c.strip("_") for c in RESERVED_CLASSES}


# Control characters (a newline in a file name would split a message line) shown as U+FFFD.
_CONTROL = {c: "\ufffd" for c in [*range(32), 127]}


def display_path(path: str | os.PathLike) -> str:
    """``path`` as one line of printable UTF-8 text: bytes of a file name that are not UTF-8 (and
    control characters) become U+FFFD. For messages only; records keep the real path."""
    text = os.fsdecode(path)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.translate(_CONTROL)


def _resolve(path: Path) -> str:
    """The absolute path, symlinks resolved where possible (never raising on a loop)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _quote(value: object, limit: int = 40) -> str:
    """A short, one-line ``repr`` of a value for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory; it is never opened for reading."""

    def __init__(self, path: str | os.PathLike, kind: str) -> None:
        super().__init__(f"{display_path(path)} is {kind}, not a regular file")
        self.kind = kind


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


@contextmanager
def _open_regular(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a regular file for binary reading; raise :class:`NotRegularFileError` for anything else.

    The type is checked before opening (a FIFO is never opened, so it cannot block) and again on the
    open descriptor, in case the path was swapped in between.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, _kind(st.st_mode))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, _kind(mode))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`_open_regular`); ``limit`` caps the size."""
    with _open_regular(path) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(f"larger than {limit} bytes")
    return data


def _file_kind(path: Path) -> str | None:
    """None when ``path`` does not exist, "file" for a regular file, else what it is or why it cannot be read."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError as e:  # an embedded NUL byte
        return f"unusable ({e})"
    return "file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _reason(e: OSError) -> str:
    """An OSError's reason, without the (possibly undecodable) file name it carries."""
    if isinstance(e, NotRegularFileError):
        return f"{e.kind}, not a regular file"
    return _one_line(e.strerror or e)


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
            raw = _read_regular(path)
        except FileNotFoundError:
            raise DataError(f"parsed dataset not found: {name}") from None
        except OSError as e:
            raise DataError(f"cannot read parsed dataset {name}: {_reason(e)}") from None
        try:
            d = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"parsed dataset {name} is not valid JSON: {_one_line(e)}") from None
        if not isinstance(d, dict) or "images" not in d:
            raise DataError(f"{name} is not a parsed dataset (run `rcnn parse` first)")
        return _dataset_from_json(d, name)


def _dataset_from_json(d: dict[str, Any], name: str) -> Dataset:
    """Check every field of a parsed-dataset JSON object and build the :class:`Dataset`."""

    def malformed(where: str, what: str, value: Any = None, show: bool = True) -> DataError:
        got = f", got {_quote(value)}" if show else ""
        return DataError(f"{name} has malformed records: {where} {what}{got} (re-run `rcnn parse`)")

    def text(where: str, value: Any, empty_ok: bool = False) -> str:
        if not isinstance(value, str) or not _is_utf8(value) or (not empty_ok and not value):
            raise malformed(where, "must be a non-empty string" if not empty_ok else "must be a string", value)
        return value

    def count(where: str, value: Any) -> int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise malformed(where, "must be a positive integer", value)
        return value

    def flag(where: str, value: Any) -> bool:
        if value in (0, 1) and isinstance(value, (bool, int)):
            return bool(value)
        raise malformed(where, "must be true or false", value)

    def record(where: str, value: Any, known: set[str], required: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise malformed(where, "must be an object", value)
        for key in value:
            if key not in known:
                raise malformed(where, f"has an unknown field {_quote(key)}", show=False)
        for key in required:
            if key not in value:
                raise malformed(where, f"has no {key!r}", show=False)
        return value

    ann_fields = {f.name for f in fields(Annotation)}
    obj_fields = {f.name for f in fields(Object)}
    if not isinstance(d["images"], list):
        raise malformed("'images'", "must be a list", d["images"])
    images: list[Annotation] = []
    seen: set[str] = set()
    for i, a in enumerate(d["images"]):
        where = f"images[{i}]"
        a = record(where, a, ann_fields, ("id", "path", "width", "height", "split"))
        image_id = text(f"{where}.id", a["id"])
        if image_id in seen:
            raise malformed(f"{where}.id", "is a duplicate image id", image_id)
        seen.add(image_id)
        split = a["split"]
        if split not in SPLITS:
            raise malformed(f"{where}.split", f"must be one of {', '.join(SPLITS)}", split)
        raw_objects = a.get("objects", [])
        if not isinstance(raw_objects, list):
            raise malformed(f"{where}.objects", "must be a list", raw_objects)
        objects = []
        for k, o in enumerate(raw_objects):
            owhere = f"{where}.objects[{k}]"
            o = record(owhere, o, obj_fields, ("label", "box"))
            box = o["box"]
            if (
                not isinstance(box, list)
                or len(box) != 4
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)
            ):
                raise malformed(f"{owhere}.box", "must be 4 finite numbers [x1, y1, x2, y2]", box)
            if not (box[0] < box[2] and box[1] < box[3]):
                raise malformed(f"{owhere}.box", "must have x1 < x2 and y1 < y2", box)
            objects.append(Object(
                label=text(f"{owhere}.label", o["label"]),
                box=[float(v) for v in box],
                difficult=flag(f"{owhere}.difficult", o.get("difficult", False)),
                truncated=flag(f"{owhere}.truncated", o.get("truncated", False)),
            ))
        images.append(Annotation(
            id=image_id,
            path=text(f"{where}.path", a["path"]),
            width=count(f"{where}.width", a["width"]),
            height=count(f"{where}.height", a["height"]),
            split=split,
            objects=objects,
            annotation=text(f"{where}.annotation", a.get("annotation", ""), empty_ok=True),
        ))

    labels = {o.label for a in images for o in a.objects}
    classes = d.get("classes")
    if classes is None or classes == []:
        classes = sorted(labels)
    elif not isinstance(classes, list):
        raise malformed("'classes'", "must be a list of class names", classes)
    for k, c in enumerate(classes):
        text(f"classes[{k}]", c)
        if is_reserved_class(c):
            raise malformed(f"classes[{k}]", "is reserved for the implicit background class", c)
    if len(set(classes)) != len(classes):
        raise malformed("'classes'", "has duplicate names", classes)
    missing = sorted(labels - set(classes))
    if missing:
        raise malformed("'classes'", f"lacks the object label {missing[0]!r}", classes)

    raw_problems = d.get("problems", [])
    if not isinstance(raw_problems, list):
        raise malformed("'problems'", "must be a list", raw_problems)
    problems = []
    for k, pr in enumerate(raw_problems):
        pr = record(f"problems[{k}]", pr, {f.name for f in fields(Problem)}, ("file", "message"))
        problems.append(Problem(
            file=text(f"problems[{k}].file", pr["file"], empty_ok=True),
            message=text(f"problems[{k}].message", pr["message"], empty_ok=True),
            level=text(f"problems[{k}].level", pr.get("level", "warning")),
        ))
    root = text("'root'", d.get("root", ""), empty_ok=True)
    return Dataset(images=images, classes=list(classes), problems=problems, root=root)


# --------------------------------------------------------------------------- layout


def find_layout(root: str | Path) -> tuple[Path, Path]:
    """Find ``(annotations_dir, images_dir)`` of a VOC dataset root.

    Accepts ``Annotations/`` + ``JPEGImages/`` (VOC) or ``annotations/`` + ``images/``.
    """
    root = Path(root)
    if not _is_dir(root):
        raise DataError(f"dataset folder not found: {display_path(root)}")
    for ann, img in (("Annotations", "JPEGImages"), ("annotations", "images")):
        if _is_dir(root / ann) and _is_dir(root / img):
            return root / ann, root / img
    raise DataError(
        f"{display_path(root)} has no VOC layout: expected Annotations/ + JPEGImages/ or annotations/ + images/ "
        "(or pass --annotations DIR --images DIR)"
    )


def _read_split_file(path: Path) -> list[str] | None:
    """The image ids listed in one ImageSets split file; None when there is no such file."""
    name = display_path(path)
    try:
        data = _read_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DataError(f"cannot read split file {name}: {_reason(e)}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text: {e}") from None
    return [line.split()[0] for line in text.split("\n") if line.strip()]


def split_name(name: str) -> str | None:
    """The kind of split a file or folder name stands for: "train", "val", "test" or None (unknown).

    ``train``, ``trainval``, ``train2017`` -> "train"; ``val``, ``valid``, ``validation``, ``val2017`` -> "val";
    ``test``, ``test-dev``, ``test2017`` -> "test" (case-insensitive; trailing digits and separators ignored).
    """
    key = name.lower().rstrip("0123456789_-. ")
    if key in ("train", "trainval", "training"):
        return "train"
    if key in ("val", "valid", "validation"):
        return "val"
    if key in ("test", "test-dev", "testdev", "testing"):
        return "test"
    return None


def assign_splits(listed: dict[str, list[str]]) -> dict[str, str]:
    """Map image id -> "train"/"test" from named id lists (split files, COCO files, YOLO folders), one rule for all formats.

    Train lists are train; test lists are test; val lists are train when a test list exists (VOC 2007's
    trainval/test, bccd's train/val/test), else test (the train/val of VOC 2012 and of most YOLO datasets).
    An id in several lists takes the test side (test over val over train).

    Args:
        listed: a name :func:`split_name` knows (``train.txt``'s stem, ``instances_val2017``'s split, ...) -> ids.
    """
    kinds = {split_name(n) for n in listed}
    val_to = "train" if "test" in kinds else "test"
    ids: dict[str, str] = {}
    for kind in ("train", "val", "test"):  # later kinds win
        for name, members in listed.items():
            if split_name(name) == kind:
                for image_id in members:
                    ids[image_id] = "test" if kind == "test" else val_to if kind == "val" else "train"
    return ids


def read_split_files(root: Path) -> dict[str, str] | None:
    """Map image id -> "train"/"test" from ``ImageSets/Main/{train,trainval,val,test}.txt`` (see
    :func:`assign_splits`); None when there are none.

    Raises:
        DataError: a split file exists but is not a readable UTF-8 text file.
    """
    main = Path(root) / "ImageSets" / "Main"
    found = {f: _read_split_file(main / f"{f}.txt") for f in ("train", "trainval", "val", "test")}
    if all(v is None for v in found.values()):
        return None
    return assign_splits({f: ids for f, ids in found.items() if ids is not None})


def random_split(ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """A deterministic split: the same ids, fraction and seed give the same split."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"'test_fraction={test_fraction}' is invalid; it must be in [0, 1)")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    n_test = int(round(test_fraction * len(order)))
    test = {order[i] for i in perm[:n_test]}
    return {i: ("test" if i in test else "train") for i in order}


# --------------------------------------------------------------------------- XML


def _safe_parser() -> etree.XMLParser:
    # A VOC file is untrusted: no external entities, no DTD loading, no network, no huge trees.
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False, dtd_validation=False)


def _text(node: etree._Element | None, tag: str) -> str | None:
    if node is None:
        return None
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _float(text: str | None) -> float | None:
    """``text`` as a finite float; None when it is missing, not a number, infinite or NaN."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(node: etree._Element, tag: str, where: str, name: str, problems: list[Problem]) -> bool:
    raw = _text(node, tag)
    if not raw:
        return False
    value = _float(raw)
    if value is None:
        problems.append(Problem(name, f"{where} has an invalid <{tag}> {_quote(raw)} (expected 0 or 1); treated as 0"))
        return False
    return value != 0


def _check_image(path: Path) -> tuple[int, int]:
    """Decode the image (cheaply, at reduced scale for JPEG) to prove it is readable; return (w, h)."""
    with _open_regular(path) as f, Image.open(f) as im:
        size = im.size
        if size[0] * size[1] > io.MAX_IMAGE_PIXELS:
            raise DataError(f"image is {size[0]}x{size[1]}, larger than {io.MAX_IMAGE_PIXELS} pixels")
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


def image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """``((width, height), "")`` of a readable image, or ``(None, why not)``: the check every format's reader uses."""
    try:
        return _check_image(path), ""
    except UnidentifiedImageError:
        return None, f"corrupt or unreadable image {display_path(path.name)}: not a recognised image file"
    except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as e:
        reason = _reason(e) if isinstance(e, OSError) and e.strerror else _one_line(e)
        return None, f"corrupt or unreadable image {display_path(path.name)}: {reason}"


def checked_box(box: tuple[float, float, float, float], width: int, height: int, where: str, shown: object,
                name: str, problems: list[Problem]) -> list[float] | None:
    """``box`` (x1, y1, x2, y2) in pixels clipped to the image, or None for a degenerate one; the rule of every format.

    A box sticking out by more than :data:`CLIP_TOLERANCE` is clipped with a warning; one narrower or shorter than
    a pixel after clipping is skipped with a warning. ``shown`` is the box as written in the file (for messages).
    """
    x1, y1, x2, y2 = box
    outside = x1 < -CLIP_TOLERANCE or y1 < -CLIP_TOLERANCE or x2 > width + CLIP_TOLERANCE or y2 > height + CLIP_TOLERANCE
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        problems.append(Problem(name, f"{where} has a degenerate box {shown} in the {width}x{height} image; skipped"))
        return None
    if outside:
        problems.append(Problem(name, f"{where} box {shown} lies outside the {width}x{height} image; clipped"))
    return [x1, y1, x2, y2]


def _resolve_image(
    xml_path: Path, filename: str | None, images_dir: Path, problems: list[Problem]
) -> tuple[Path | None, str]:
    """Find the image of an annotation: ``<filename>``, else the XML's stem with an image extension.

    Returns:
        (the image, "") or (None, why none was found). Paths that are not regular files are never used.
    """
    candidates = []
    if filename and Path(filename).name not in ("", ".", ".."):
        candidates.append(images_dir / Path(filename).name)
    candidates += [images_dir / (xml_path.stem + ext) for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)]
    unusable = ""
    for candidate in candidates:
        kind = _file_kind(candidate)
        if kind == "file":
            if filename and candidate.name != Path(filename).name:
                problems.append(Problem(display_path(xml_path), f"<filename> {filename!r} not found; using {display_path(candidate.name)}"))
            return candidate, ""
        if kind is not None and not unusable:
            unreadable = kind.startswith(("unreadable", "unusable"))
            unusable = f"image {display_path(candidate)} is {kind}" + ("" if unreadable else ", not a regular file")
    return None, unusable or f"image not found in {display_path(images_dir)} (<filename> is {filename!r})"


def parse_annotation(
    xml_path: str | Path, images_dir: str | Path, classes: list[str] | None = None
) -> tuple[Annotation | None, list[Problem]]:
    """Parse one VOC XML file into an :class:`Annotation` (split left empty).

    Every problem is reported, never raised: a file that is not a regular file (a FIFO, a folder) is
    skipped with a warning without being opened; an unreadable, malformed or undecodably named file, or
    one whose image is missing or unreadable, is skipped with an error; bad values inside are warnings.

    Returns:
        (annotation or None when the file must be skipped, problems found in it).
    """
    xml_path, images_dir = Path(xml_path), Path(images_dir)
    problems: list[Problem] = []
    name = display_path(xml_path)

    def fail(msg: str) -> tuple[None, list[Problem]]:
        problems.append(Problem(name, msg, "error"))
        return None, problems

    if not _is_utf8(str(xml_path)):
        return fail("the file name is not valid UTF-8; rename it (skipped)")
    try:
        data = _read_regular(xml_path, MAX_XML_BYTES)
    except NotRegularFileError as e:
        problems.append(Problem(name, f"{e.kind}, not a regular file; skipped"))
        return None, problems
    except OSError as e:
        return fail(f"cannot read: {_reason(e)}")
    try:
        tree = etree.parse(BytesIO(data), _safe_parser())
    except etree.LxmlError as e:
        return fail(f"broken XML: {_one_line(e.msg if hasattr(e, 'msg') else e)}")
    if tree.docinfo.internalDTD is not None and len(list(tree.docinfo.internalDTD.iterentities())) > 0:
        return fail("XML declares entities, which are refused in annotations (possible entity attack)")
    root = tree.getroot()
    if root.tag != "annotation":
        return fail(f"root element is <{_one_line(root.tag, 60)}>, not <annotation>")

    filename = _text(root, "filename")
    image_path, why = _resolve_image(xml_path, filename, images_dir, problems)
    if image_path is None:
        return fail(why)
    size, why = image_size(image_path)
    if size is None:
        return fail(why)
    width, height = size

    size = root.find("size")
    raw_size = {t: _text(size, t) for t in ("width", "height")}
    if size is None or not raw_size["width"] or not raw_size["height"]:
        problems.append(Problem(name, "missing <size>; read it from the image"))
    else:
        xml_size = {t: _float(v) for t, v in raw_size.items()}
        bad = [f"<{t}> {_quote(raw_size[t])}" for t, v in xml_size.items() if v is None or not 0 < v <= io.MAX_IMAGE_PIXELS]
        if bad:
            problems.append(Problem(name, f"<size> has an invalid {' and '.join(bad)} (not a positive finite number); "
                                          f"using the image's {width}x{height}"))
        elif (int(xml_size["width"]), int(xml_size["height"])) != (width, height):
            problems.append(Problem(name, f"<size> {int(xml_size['width'])}x{int(xml_size['height'])} differs from the image's {width}x{height}; using the image's"))

    objects: list[Object] = []
    for k, obj in enumerate(root.iter("object")):
        label = _text(obj, "name")
        where = f"object {k} ({_one_line(label, 60) if label else 'unnamed'})"
        if not label:
            problems.append(Problem(name, f"{where} has no <name>; skipped"))
            continue
        if classes is not None and label not in classes:
            continue
        bb = obj.find("bndbox")
        if bb is None:
            problems.append(Problem(name, f"{where} has no <bndbox>; skipped"))
            continue
        raw = {t: _text(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")}
        values = {t: _float(v) for t, v in raw.items()}
        bad = [f"<{t}> {_quote(raw[t])}" for t, v in values.items() if v is None]
        if bad:
            problems.append(Problem(name, f"{where} has a missing, non-numeric or non-finite <bndbox> value: {', '.join(bad)}; skipped"))
            continue
        coords = [values[t] for t in ("xmin", "ymin", "xmax", "ymax")]
        xmin, ymin, xmax, ymax = coords
        box = checked_box((xmin - 1.0, ymin - 1.0, xmax, ymax), width, height, where, coords, name, problems)  # 1-based inclusive -> pixel edges
        if box is None:
            continue
        objects.append(Object(label, box, _flag(obj, "difficult", where, name, problems),
                              _flag(obj, "truncated", where, name, problems)))

    ann = Annotation(
        id=xml_path.stem,
        path=_resolve(image_path),
        width=int(width),
        height=int(height),
        split="",
        objects=objects,
        annotation=_resolve(xml_path),
    )
    if not (_is_utf8(ann.path) and _is_utf8(ann.annotation)):
        return fail(f"the path of the file or of its image ({display_path(ann.path)}) is not valid UTF-8; rename it (skipped)")
    return ann, problems


FORMATS = ("auto", "voc", "coco", "yolo")  # values of parse_dataset's ``format`` (--format); auto: see detect_format


def detect_format(data: str | Path) -> str:
    """Which format the dataset ``data`` is in: "voc", "coco" or "yolo".

    The rule, in order of evidence:

    * COCO: ``data`` is a ``.json`` file, or holds ``annotations/instances_*.json``, or a ``.json`` (in ``data`` or
      ``data/annotations``) whose first MiB has an ``"images"`` key;
    * YOLO: ``data`` is a ``.yaml`` file, or holds ``data.yaml``, or ``labels/`` with ``*.txt`` files;
    * VOC: ``data`` holds ``Annotations/`` or ``annotations/`` with ``*.xml`` files, or (when nothing else
      matches) the VOC folder pair ``Annotations/`` + ``JPEGImages/`` or ``annotations/`` + ``images/``.

    Raises:
        DataError: one line naming what was looked for, when no format or more than one matches.
    """
    from .formats import coco, yolo

    data = Path(data)
    name = display_path(data)
    if _file_kind(data) == "file":
        if data.suffix.lower() == ".json":
            return "coco"
        if data.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise DataError(f"{name} is a file, not a dataset folder, a COCO .json file or a YOLO data .yaml file")
    if not _is_dir(data):
        raise DataError(f"dataset folder not found: {name}")
    found = [fmt for fmt, matches in (("voc", _has_voc_xml(data)), ("coco", bool(coco.find_json_files(data))),
                                      ("yolo", yolo.looks_like_yolo(data))) if matches]
    if not found and any(_is_dir(data / a) and _is_dir(data / i) for a, i in (("Annotations", "JPEGImages"), ("annotations", "images"))):
        found = ["voc"]  # an empty VOC layout: its reader says what is missing
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{name} looks like {' and '.join(found)} at once; choose one with --format")
    raise DataError(f"{name} has no VOC layout (Annotations/ or annotations/ with *.xml), no COCO file (a .json file, "
                    "annotations/instances_*.json) and no YOLO layout (data.yaml, or labels/ with *.txt and classes.txt)")


def _has_voc_xml(data: Path) -> bool:
    for ann in ("Annotations", "annotations"):
        try:
            with os.scandir(data / ann) as entries:
                if any(e.name.endswith(".xml") for e in entries):
                    return True
        except OSError:
            continue
    return False


def collect(ann: Annotation | None, probs: list[Problem], images: list[Annotation], problems: list[Problem],
            strict: bool) -> None:
    """Add one file's record and problems to the run's lists (every reader's loop); with ``strict``, raise on an error.

    Raises:
        DataError: ``strict`` and ``probs`` holds an error (the file is skipped).
    """
    problems += probs
    if strict and any(p.level == "error" for p in probs):
        first = next(p for p in probs if p.level == "error")
        raise DataError(f"{first.file}: {first.message}")
    if ann is not None:
        images.append(ann)


def checked_classes(classes: list[str] | None) -> list[str] | None:
    """``classes`` stripped of blanks.

    Raises:
        ValueError: ``classes`` is empty or names a reserved class.
    """
    if classes is None:
        return None
    classes = [c.strip() for c in classes if c.strip()]
    if not classes:
        raise ValueError("'classes' is empty; give at least one class name")
    for c in classes:
        if is_reserved_class(c):
            raise ValueError(f"'classes' names {c!r}, which is reserved for the implicit background class")
    return classes


def checked_folder(d: Path) -> str:
    """The resolved path of the readable folder ``d``.

    Raises:
        DataError: ``d`` is not a folder, cannot be read, or its path is not valid UTF-8.
    """
    if not _is_dir(d):
        raise DataError(f"folder not found: {display_path(d)}")
    try:
        with os.scandir(d):
            pass
        resolved = _resolve(d)
    except OSError as e:
        raise DataError(f"cannot read folder {display_path(d)}: {_reason(e)}") from None
    if not _is_utf8(resolved):
        raise DataError(f"the path of folder {display_path(resolved)} is not valid UTF-8; rename it")
    return resolved


def parse_dataset(
    root: str | Path | None = None,
    *,
    annotations_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    classes: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    progress: bool = False,
    format: str = "auto",
) -> Dataset:
    """Parse a Pascal VOC, COCO or YOLO dataset into the same records.

    Args:
        root: the dataset: a folder (any of the three layouts, see :func:`detect_format`), a COCO ``.json`` file
            or a YOLO data ``.yaml`` file.
        annotations_dir, images_dir: explicit VOC folders, overriding the layout of ``root``; for COCO,
            ``images_dir`` is the folder the ``file_name`` of each image is relative to.
        classes: keep only these class names (None keeps all).
        test_fraction, seed: the deterministic split used when the dataset names no splits.
        strict: raise :class:`DataError` on the first file that must be skipped.
        format: auto (detected), voc, coco or yolo.

    Returns:
        The :class:`Dataset`, images sorted by id.

    Raises:
        DataError: the dataset, a folder or split file is missing or unreadable, or a kept object uses a class name
            of :data:`RESERVED_CLASSES`. Problems of single files are reported in ``Dataset.problems``.
        ValueError: ``classes`` is empty or names a reserved class, or ``format`` is unknown.
    """
    if format not in FORMATS:
        raise ValueError(f"'format={format}' is invalid; valid formats are {', '.join(FORMATS)}")
    classes = checked_classes(classes)
    fmt = format
    if fmt == "auto":
        fmt = "voc" if annotations_dir is not None or root is None else detect_format(root)
    if fmt != "voc" and root is None:
        raise DataError(f"give the {fmt} dataset as DATA")
    if (fmt == "coco" and annotations_dir is not None) or (fmt == "yolo" and (annotations_dir or images_dir) is not None):
        raise ValueError(f"--annotations is for VOC datasets and --images for VOC and COCO; {display_path(root)} is {fmt}")
    if fmt == "coco":
        from .formats.coco import read_coco

        images, splits, problems, where = read_coco(Path(root), images_dir, classes, strict, progress)
    elif fmt == "yolo":
        from .formats.yolo import read_yolo

        images, splits, problems, where = read_yolo(Path(root), classes, strict, progress)
    else:
        images, splits, problems, where = _read_voc(root, annotations_dir, images_dir, classes, strict, progress)
    return _finish(images, splits, problems, classes, where, test_fraction, seed)


def _read_voc(root: str | Path | None, annotations_dir: str | Path | None, images_dir: str | Path | None,
              classes: list[str] | None, strict: bool, progress: bool
              ) -> tuple[list[Annotation], dict[str, str] | None, list[Problem], str]:
    """Every ``*.xml`` of a VOC dataset: (records, id -> split from ImageSets/Main or None, problems, resolved root)."""
    from tqdm import tqdm

    if annotations_dir is None or images_dir is None:
        if root is None:
            raise DataError("give a dataset folder, or both --annotations and --images")
        found_ann, found_img = find_layout(root)
        annotations_dir = annotations_dir or found_ann
        images_dir = images_dir or found_img
    annotations_dir, images_dir = Path(annotations_dir), Path(images_dir)
    for d in (annotations_dir, images_dir):
        checked_folder(d)
    split_root = Path(root) if root is not None else annotations_dir.parent
    split_root_text = _resolve(split_root)
    if not _is_utf8(split_root_text):
        raise DataError(f"the path of folder {display_path(split_root_text)} is not valid UTF-8; rename it")
    split_ids = read_split_files(split_root)  # before the long parse: a bad split file fails fast

    try:
        with os.scandir(annotations_dir) as entries:
            xml_files = sorted(annotations_dir / e.name for e in entries if e.name.endswith(".xml"))
    except OSError as e:
        raise DataError(f"cannot read annotations folder {display_path(annotations_dir)}: {_reason(e)}") from None
    if not xml_files:
        raise DataError(f"no .xml annotation files in {display_path(annotations_dir)}")
    images: list[Annotation] = []
    problems: list[Problem] = []
    for xml in tqdm(xml_files, desc="parse", unit="file", disable=None if progress else True, leave=False):
        collect(*parse_annotation(xml, images_dir, classes), images, problems, strict)
    if split_ids is not None:
        for a in images:
            if a.id not in split_ids:
                problems.append(Problem(a.annotation, "not listed in any ImageSets/Main split file; left out"))
    return images, split_ids, problems, split_root_text


def _finish(images: list[Annotation], splits: dict[str, str] | None, problems: list[Problem], classes: list[str] | None,
            root: str, test_fraction: float, seed: int) -> Dataset:
    """The steps every format shares: one record per id, the split, the reserved-name check and the class list."""
    unique: dict[str, Annotation] = {}
    for a in images:
        if a.id in unique:
            problems.append(Problem(display_path(a.path), f"another image has the id {a.id!r} ({display_path(unique[a.id].path)}); "
                                                           "skipped", "error"))
        else:
            unique[a.id] = a
    images = sorted(unique.values(), key=lambda a: a.id)  # the same order whatever the format
    if splits is None:
        splits = random_split([a.id for a in images], test_fraction, seed)
    kept = []
    for a in images:
        if a.id in splits:  # VOC names the images its split files leave out
            a.split = splits[a.id]
            kept.append(a)
    for a in kept:
        for o in a.objects:
            if is_reserved_class(o.label):
                raise DataError(
                    f"class name {o.label!r} in {display_path(a.annotation)} is reserved for the implicit background "
                    "class; rename it in the annotations, or keep only the other classes with --classes"
                )
    found_classes = sorted({o.label for a in kept for o in a.objects})
    out_classes = [c for c in classes if c in found_classes] if classes is not None else found_classes
    if classes is not None:
        for c in classes:
            if c not in found_classes:
                problems.append(Problem(display_path(root), f"class '{c}' asked for but not found in any file"))
    return Dataset(images=kept, classes=out_classes, problems=problems, root=root)


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
