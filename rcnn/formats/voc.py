"""Pascal VOC XML (``Annotations/*.xml``) read into the records of :mod:`rcnn.records`.

* Boxes: VOC's are 1-based and inclusive; they become the project's convention ``(x1, y1, x2, y2) =
  (xmin - 1, ymin - 1, xmax, ymax)`` in pixels, clipped and checked by :func:`rcnn.formats.common.checked_box`
  as COCO and YOLO boxes are. ``<difficult>`` and ``<truncated>`` are kept.
* Layout: ``Annotations/`` + ``JPEGImages/`` (VOC) or ``annotations/`` + ``images/`` (:func:`find_layout`), or
  the two folders given explicitly. An annotation's image is its ``<filename>`` in the image folder, else its
  stem with an image extension; the image's own size wins over ``<size>`` (a warning when they differ).
* Splits: ``ImageSets/Main/{train,trainval,val,test}.txt`` when any exists (:func:`read_split_files`, the rule
  of :func:`rcnn.formats.common.assign_splits`; an image no split file lists is left out with a warning), else
  the seeded random split.
* The XML is untrusted: no entities, no DTD, no network, no huge trees, at most :data:`MAX_XML_BYTES`. A file
  that cannot be read or parsed, or whose image is missing or unreadable, is skipped with one error line; a
  bad value inside (a box, a flag, ``<size>``) is a warning.
"""

from __future__ import annotations

import math
import os
from io import BytesIO
from pathlib import Path

from lxml import etree

from .. import io
from ..errors import DataError
from ..io import IMAGE_EXTENSIONS
from ..records import Annotation, Object, Problem
from ..safe_read import (
    NotRegularFileError,
    display_path,
    file_kind,
    image_size,
    is_dir,
    is_utf8,
    one_line,
    quote,
    read_regular,
    reason,
    resolve_path,
)
from .common import ReadResult, assign_splits, checked_box, checked_folder, collect

# An annotation larger than this is not a VOC annotation (they are a few KiB).
MAX_XML_BYTES = 64 * 1024 * 1024
LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"))  # (annotations folder, images folder)


# --------------------------------------------------------------------------- layout


def looks_like_voc(data: Path) -> bool:
    """``data`` holds ``Annotations/`` or ``annotations/`` with ``*.xml`` files."""
    for ann in ("Annotations", "annotations"):
        try:
            with os.scandir(data / ann) as entries:
                if any(e.name.endswith(".xml") for e in entries):
                    return True
        except OSError:
            continue
    return False


def has_voc_folders(data: Path) -> bool:
    """``data`` holds one of the VOC folder pairs of :data:`LAYOUTS` (an empty VOC layout looks like this)."""
    return any(is_dir(data / a) and is_dir(data / i) for a, i in LAYOUTS)


def find_layout(root: str | Path) -> tuple[Path, Path]:
    """Find ``(annotations_dir, images_dir)`` of a VOC dataset root.

    Accepts ``Annotations/`` + ``JPEGImages/`` (VOC) or ``annotations/`` + ``images/``.
    """
    root = Path(root)
    if not is_dir(root):
        raise DataError(f"dataset folder not found: {display_path(root)}")
    for ann, img in LAYOUTS:
        if is_dir(root / ann) and is_dir(root / img):
            return root / ann, root / img
    raise DataError(
        f"{display_path(root)} has no VOC layout: expected Annotations/ + JPEGImages/ or annotations/ + images/ "
        "(or pass --annotations DIR --images DIR)"
    )


def _read_split_file(path: Path, known: frozenset[str] = frozenset()) -> list[str] | None:
    """The image ids listed in one ImageSets split file; None when there is no such file.

    A line is ``id`` or ``id flag``; a line that is (or, but its last word, is) one of the ``known`` ids (the
    annotations' stems) is that id, spaces and all; any other line's id is its first word.
    """
    name = display_path(path)
    try:
        data = read_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DataError(f"cannot read split file {name}: {reason(e)}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text: {e}") from None
    return [_line_id(line, known) for line in text.split("\n") if line.strip()]


def _line_id(line: str, known: frozenset[str]) -> str:
    """The id one split-file line names (see :func:`_read_split_file`)."""
    for candidate in (line.rstrip("\r"), line.strip(), line.strip().rsplit(None, 1)[0]):
        if candidate in known:
            return candidate
    return line.split()[0]


def read_split_files(root: Path, known: frozenset[str] = frozenset()) -> dict[str, str] | None:
    """Map image id -> "train"/"test" from ``ImageSets/Main/{train,trainval,val,test}.txt`` (see
    :func:`rcnn.formats.common.assign_splits`); None when there are none. ``known``: the annotations' ids, which
    may hold spaces (:func:`_read_split_file`).

    Raises:
        DataError: a split file exists but is not a readable UTF-8 text file.
    """
    main = Path(root) / "ImageSets" / "Main"
    found = {f: _read_split_file(main / f"{f}.txt", known) for f in ("train", "trainval", "val", "test")}
    if all(v is None for v in found.values()):
        return None
    return assign_splits({f: ids for f, ids in found.items() if ids is not None})


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
        problems.append(Problem(name, f"{where} has an invalid <{tag}> {quote(raw)} (expected 0 or 1); treated as 0"))
        return False
    return value != 0


def _read_xml(xml_path: Path, name: str) -> tuple[etree._Element | None, Problem | None]:
    """The ``<annotation>`` element of a VOC file, or (None, why it is skipped: an error, or a warning for a
    path that is not a regular file, which is never opened)."""
    if not is_utf8(str(xml_path)):
        return None, Problem(name, "the file name is not valid UTF-8; rename it (skipped)", "error")
    try:
        data = read_regular(xml_path, MAX_XML_BYTES)
    except NotRegularFileError as e:
        return None, Problem(name, f"{e.kind}, not a regular file; skipped")
    except OSError as e:
        return None, Problem(name, f"cannot read: {reason(e)}", "error")
    try:
        tree = etree.parse(BytesIO(data), _safe_parser())
    except etree.LxmlError as e:
        return None, Problem(name, f"broken XML: {one_line(e.msg if hasattr(e, 'msg') else e)}", "error")
    if tree.docinfo.internalDTD is not None and len(list(tree.docinfo.internalDTD.iterentities())) > 0:
        return None, Problem(name, "XML declares entities, which are refused in annotations (possible entity attack)", "error")
    root = tree.getroot()
    if root.tag != "annotation":
        return None, Problem(name, f"root element is <{one_line(root.tag, 60)}>, not <annotation>", "error")
    return root, None


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
        kind = file_kind(candidate)
        if kind == "file":
            if filename and candidate.name != Path(filename).name:
                problems.append(Problem(display_path(xml_path), f"<filename> {filename!r} not found; using {display_path(candidate.name)}"))
            return candidate, ""
        if kind is not None and not unusable:
            unreadable = kind.startswith(("unreadable", "unusable"))
            unusable = f"image {display_path(candidate)} is {kind}" + ("" if unreadable else ", not a regular file")
    return None, unusable or f"image not found in {display_path(images_dir)} (<filename> is {filename!r})"


def _check_size(root: etree._Element, width: int, height: int, name: str, problems: list[Problem]) -> None:
    """Warn when ``<size>`` is missing, invalid or differs from the image's ``width`` x ``height`` (which wins)."""
    size = root.find("size")
    raw_size = {t: _text(size, t) for t in ("width", "height")}
    if size is None or not raw_size["width"] or not raw_size["height"]:
        problems.append(Problem(name, "missing <size>; read it from the image"))
        return
    xml_size = {t: _float(v) for t, v in raw_size.items()}
    bad = [f"<{t}> {quote(raw_size[t])}" for t, v in xml_size.items() if v is None or not 0 < v <= io.MAX_IMAGE_PIXELS]
    if bad:
        problems.append(Problem(name, f"<size> has an invalid {' and '.join(bad)} (not a positive finite number); "
                                      f"using the image's {width}x{height}"))
    elif (int(xml_size["width"]), int(xml_size["height"])) != (width, height):
        problems.append(Problem(name, f"<size> {int(xml_size['width'])}x{int(xml_size['height'])} differs from the image's {width}x{height}; using the image's"))


def _object(obj: etree._Element, k: int, width: int, height: int, classes: list[str] | None, name: str,
            problems: list[Problem]) -> Object | None:
    """The ``<object>`` number ``k`` as an :class:`Object`; None when it is skipped (with a warning) or not kept."""
    label = _text(obj, "name")
    where = f"object {k} ({one_line(label, 60) if label else 'unnamed'})"
    if not label:
        problems.append(Problem(name, f"{where} has no <name>; skipped"))
        return None
    if classes is not None and label not in classes:
        return None
    bb = obj.find("bndbox")
    if bb is None:
        problems.append(Problem(name, f"{where} has no <bndbox>; skipped"))
        return None
    raw = {t: _text(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")}
    values = {t: _float(v) for t, v in raw.items()}
    bad = [f"<{t}> {quote(raw[t])}" for t, v in values.items() if v is None]
    if bad:
        problems.append(Problem(name, f"{where} has a missing, non-numeric or non-finite <bndbox> value: {', '.join(bad)}; skipped"))
        return None
    coords = [values[t] for t in ("xmin", "ymin", "xmax", "ymax")]
    xmin, ymin, xmax, ymax = coords
    box = checked_box((xmin - 1.0, ymin - 1.0, xmax, ymax), width, height, where, coords, name, problems)  # 1-based inclusive -> pixel edges
    if box is None:
        return None
    return Object(label, box, _flag(obj, "difficult", where, name, problems), _flag(obj, "truncated", where, name, problems))


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

    root, skipped = _read_xml(xml_path, name)
    if root is None:
        return None, [skipped]
    image_path, why = _resolve_image(xml_path, _text(root, "filename"), images_dir, problems)
    if image_path is None:
        return fail(why)
    size, why = image_size(image_path)
    if size is None:
        return fail(why)
    width, height = size
    _check_size(root, width, height, name, problems)
    objects = [o for k, obj in enumerate(root.iter("object"))
               if (o := _object(obj, k, width, height, classes, name, problems)) is not None]
    ann = Annotation(id=xml_path.stem, path=resolve_path(image_path), width=int(width), height=int(height), split="",
                     objects=objects, annotation=resolve_path(xml_path))
    if not (is_utf8(ann.path) and is_utf8(ann.annotation)):
        return fail(f"the path of the file or of its image ({display_path(ann.path)}) is not valid UTF-8; rename it (skipped)")
    return ann, problems


# --------------------------------------------------------------------------- the dataset


def _folders(root: str | Path | None, annotations_dir: str | Path | None, images_dir: str | Path | None
             ) -> tuple[Path, Path, Path, str]:
    """(annotations folder, images folder, the folder holding ImageSets/, its resolved path), all checked."""
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
    split_root_text = resolve_path(split_root)
    if not is_utf8(split_root_text):
        raise DataError(f"the path of folder {display_path(split_root_text)} is not valid UTF-8; rename it")
    return annotations_dir, images_dir, split_root, split_root_text


def _xml_files(annotations_dir: Path) -> list[Path]:
    try:
        with os.scandir(annotations_dir) as entries:
            xml_files = sorted(annotations_dir / e.name for e in entries if e.name.endswith(".xml"))
    except OSError as e:
        raise DataError(f"cannot read annotations folder {display_path(annotations_dir)}: {reason(e)}") from None
    if not xml_files:
        raise DataError(f"no .xml annotation files in {display_path(annotations_dir)}")
    return xml_files


def read_voc(root: str | Path | None, annotations_dir: str | Path | None, images_dir: str | Path | None,
             classes: list[str] | None, strict: bool, progress: bool) -> ReadResult:
    """Every ``*.xml`` of a VOC dataset: (records, id -> split from ImageSets/Main or None, problems, resolved root).

    Raises:
        DataError: no layout, a folder or split file that cannot be read, no ``*.xml`` file, or (``strict``) a
            file that must be skipped.
    """
    from tqdm import tqdm

    annotations_dir, images_dir, split_root, split_root_text = _folders(root, annotations_dir, images_dir)
    xml_files = _xml_files(annotations_dir)
    split_ids = read_split_files(split_root, frozenset(x.stem for x in xml_files))  # before the long parse: fails fast
    images: list[Annotation] = []
    problems: list[Problem] = []
    for xml in tqdm(xml_files, desc="parse", unit="file", disable=None if progress else True, leave=False):
        collect(*parse_annotation(xml, images_dir, classes), images, problems, strict)
    if split_ids is not None:
        for a in images:
            if a.id not in split_ids:
                problems.append(Problem(a.annotation, "not listed in any ImageSets/Main split file; left out"))
    return images, split_ids, problems, split_root_text
