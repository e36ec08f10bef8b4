"""The rules every format's reader shares: one box check, one split rule, one way to collect problems.

* :func:`checked_box`: a box in pixels is clipped to its image (a warning beyond :data:`CLIP_TOLERANCE`) and
  skipped when degenerate; VOC, COCO and YOLO boxes all go through it.
* :func:`split_name` / :func:`assign_splits`: named id lists (VOC split files, COCO files, YOLO folders) become
  train/test; :func:`random_split` is the seeded split of a dataset that names none.
* :func:`collect`: one file's record and problems into the run's lists (``strict`` stops at the first error).
* :func:`finish_dataset`: one record per id, the split, the reserved-name check and the class list.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..records import Annotation, Dataset, Problem, check_name, is_reserved_class
from ..safe_read import display_path, is_dir, is_utf8, reason, resolve_path

# Boxes may stick out of the image by this much (the 0- vs 1-based ambiguity of
# real annotation tools) before a clipping warning is worth printing.
CLIP_TOLERANCE = 1.0

# What every reader returns: (records, id -> "train"/"test" or None when the dataset names no split,
# problems, the dataset's resolved root).
ReadResult = tuple[list[Annotation], dict[str, str] | None, list[Problem], str]


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
    if not is_dir(d):
        raise DataError(f"folder not found: {display_path(d)}")
    try:
        with os.scandir(d):
            pass
        resolved = resolve_path(d)
    except OSError as e:
        raise DataError(f"cannot read folder {display_path(d)}: {reason(e)}") from None
    if not is_utf8(resolved):
        raise DataError(f"the path of folder {display_path(resolved)} is not valid UTF-8; rename it")
    return resolved


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


def random_split(ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """A deterministic split: the same ids, fraction and seed give the same split."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"'test_fraction={test_fraction}' is invalid; it must be in [0, 1)")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    n_test = int(round(test_fraction * len(order)))
    test = {order[i] for i in perm[:n_test]}
    return {i: ("test" if i in test else "train") for i in order}


def finish_dataset(images: list[Annotation], splits: dict[str, str] | None, problems: list[Problem],
                   classes: list[str] | None, root: str, test_fraction: float, seed: int) -> Dataset:
    """The steps every format shares: one record per id, the split, the reserved-name check and the class list.

    Raises:
        DataError: a kept object uses a reserved class name, or an image id or class name would leave the folder
            it becomes a path in (an absolute path or a ``..`` part, :func:`rcnn.records.check_name`).
    """
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
        check_name(a.id, f"the image id in {display_path(a.annotation or a.path)}:")
        for o in a.objects:
            check_name(o.label, f"the class name in {display_path(a.annotation)}:")
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
