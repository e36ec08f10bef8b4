"""Stage 1: read a Pascal VOC, COCO or YOLO dataset into clean, validated records.

This module tells the format from the layout (:func:`detect_format`) and hands the dataset to its reader, one
module per format over the same records and rules:

* :mod:`rcnn.formats.voc`, :mod:`rcnn.formats.coco`, :mod:`rcnn.formats.yolo`: the readers;
* :mod:`rcnn.formats.common`: what they share (the box check, the split rule, collecting problems);
* :mod:`rcnn.records`: the records (:class:`Dataset`, :class:`Annotation`, ...) and their JSON file;
* :mod:`rcnn.safe_read`: reading untrusted files, and naming them in messages.

Boxes become (x1, y1, x2, y2) in pixels, clipped to the image. Every problem is reported with the file it is
in; a bad file is skipped (or, with ``strict``, raises) and never stops the run. The names below that live in
those modules are importable from here too, as before they moved.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .formats import coco, voc, yolo
from .formats.common import (
    CLIP_TOLERANCE,
    assign_splits,
    checked_box,
    checked_classes,
    checked_folder,
    collect,
    finish_dataset,
    random_split,
    split_name,
)
from .formats.voc import MAX_XML_BYTES, find_layout, parse_annotation, read_split_files
from .records import (
    FORMAT,
    RESERVED_CLASSES,
    SPLITS,
    Annotation,
    Dataset,
    Object,
    Problem,
    format_summary,
    is_reserved_class,
)
from .safe_read import NotRegularFileError, display_path, file_kind, image_size, is_dir

__all__ = [
    "FORMATS", "detect_format", "parse_dataset",
    # re-exported from rcnn.records, rcnn.safe_read and rcnn.formats, where they live now
    "FORMAT", "RESERVED_CLASSES", "SPLITS", "Annotation", "Dataset", "Object", "Problem", "format_summary",
    "is_reserved_class", "NotRegularFileError", "display_path", "image_size", "CLIP_TOLERANCE", "assign_splits",
    "checked_box", "checked_classes", "checked_folder", "collect", "random_split", "split_name", "MAX_XML_BYTES",
    "find_layout", "parse_annotation", "read_split_files",
]

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
    data = Path(data)
    name = display_path(data)
    if file_kind(data) == "file":
        if data.suffix.lower() == ".json":
            return "coco"
        if data.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise DataError(f"{name} is a file, not a dataset folder, a COCO .json file or a YOLO data .yaml file")
    if not is_dir(data):
        raise DataError(f"dataset folder not found: {name}")
    found = [fmt for fmt, matches in (("voc", voc.looks_like_voc(data)), ("coco", bool(coco.find_json_files(data))),
                                      ("yolo", yolo.looks_like_yolo(data))) if matches]
    if not found and voc.has_voc_folders(data):
        found = ["voc"]  # an empty VOC layout: its reader says what is missing
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{name} looks like {' and '.join(found)} at once; choose one with --format")
    raise DataError(f"{name} has no VOC layout (Annotations/ or annotations/ with *.xml), no COCO file (a .json file, "
                    "annotations/instances_*.json) and no YOLO layout (data.yaml, or labels/ with *.txt and classes.txt)")


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
        images, splits, problems, where = coco.read_coco(Path(root), images_dir, classes, strict, progress)
    elif fmt == "yolo":
        images, splits, problems, where = yolo.read_yolo(Path(root), classes, strict, progress)
    else:
        images, splits, problems, where = voc.read_voc(root, annotations_dir, images_dir, classes, strict, progress)
    return finish_dataset(images, splits, problems, classes, where, test_fraction, seed)
