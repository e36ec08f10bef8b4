"""The gallery's data: each image's verdicts at the report's score threshold, and its pictures.

Pictures are plain copies of the images, shrunk: ``thumbs/`` (long side THUMB_SIDE) and
``full/`` (long side at most FULL_SIDE). The page draws the boxes over them itself (SVG), so a
picture is written once per image, in parallel over images, and reused by a re-run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..io import load_rgb, write_atomic
from ..parse import Annotation
from .tide import ERROR_TYPES, ImageBoxes, ImageVerdicts, Points, class_ap

THUMB_SIDE = 320  # gallery thumbnails: long side in pixels
FULL_SIDE = 1600  # the click-through view: long side at most this many pixels (larger images are shrunk)
JPEG_QUALITY = 85


def picture_name(path: str) -> str:
    """A file name for an image's pictures, unique per source path and readable: ``<hash>_<stem>.jpg``."""
    stem = re.sub(r"[^\w\-.]", "_", Path(path).stem)[:60] or "image"
    return f"{hashlib.sha1(str(path).encode()).hexdigest()[:10]}_{stem}.jpg"


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    return copy


def _fresh(out: Path, source: Path) -> bool:
    try:
        return out.stat().st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def write_pictures(task: tuple[str, str, str]) -> str | None:
    """Write one image's thumbnail and full view (unless already newer than the image).

    Args:
        task: (image path, thumbnail path, full-view path).

    Returns:
        None, or why the image could not be read.
    """
    source, thumb, full = (Path(p) for p in task)
    if _fresh(thumb, source) and _fresh(full, source):
        return None
    try:
        image = Image.fromarray(load_rgb(source))
    except DataError as e:
        return str(e)
    for out, side in ((thumb, THUMB_SIDE), (full, FULL_SIDE)):
        small = _shrunk(image, side)
        write_atomic(out, lambda p, im=small: im.save(p, format="JPEG", quality=JPEG_QUALITY))
    return None


def write_gallery(images: Sequence[Annotation], out: Path, workers: int = 0,
                  warn: Callable[[str], Any] = print) -> dict[str, str]:
    """Write the pictures of ``images`` into ``out/thumbs`` and ``out/full``, in parallel, with a progress bar.

    Args:
        workers: processes; 0 = one per core, 1 = in this process.

    Returns:
        image id -> picture file name (in both folders); images that could not be read are left out (and warned about).
    """
    names = {a.id: picture_name(a.path) for a in images}
    tasks = [(a.path, str(out / "thumbs" / names[a.id]), str(out / "full" / names[a.id])) for a in images]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(tasks), desc="report pictures", unit="img", disable=None)
    if workers == 1 or len(tasks) < 2:
        problems = []
        for t in tasks:
            problems.append(write_pictures(t))
            bar.update()
    else:
        with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
            problems = []
            for p in pool.map(write_pictures, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
                problems.append(p)
                bar.update()
    bar.close()
    for a, problem in zip(images, problems):
        if problem:
            warn(f"report: no picture of {a.path}: {problem}")
            names.pop(a.id)
    return names


def gt_kinds(b: ImageBoxes, v: ImageVerdicts, conf: float) -> list[str]:
    """Per object at score threshold ``conf``: "tp" (found), "fn" (a cls/loc error points at it), "miss", "ignored"."""
    shown = b.det_scores >= conf
    pointed = {int(v.det_target[d]) for d in np.flatnonzero(shown & np.isin(v.det_kind, ("cls", "loc")))}
    kinds = []
    for j in range(len(b.gt_boxes)):
        d = int(v.gt_match[j])
        if b.gt_ignore[j]:
            kinds.append("ignored")
        elif d >= 0 and shown[d]:
            kinds.append("tp")
        else:
            kinds.append("fn" if j in pointed else "miss")
    return kinds


def image_ap(b: ImageBoxes, v: ImageVerdicts) -> float | None:
    """This image's AP@0.5 over all its detections, classes pooled; None: it has no objects that count."""
    kept = v.det_kind != "ignored"
    points = Points([b.det_scores[kept]], [v.det_kind[kept] == "tp"], [np.arange(int(kept.sum()))], int((~b.gt_ignore).sum()))
    ap = class_ap(points)
    return None if ap is None else round(ap, 4)


def image_record(a: Annotation, b: ImageBoxes, v: ImageVerdicts, classes: Sequence[str], conf: float) -> dict[str, Any]:
    """One gallery entry: counts at ``conf``, the image's AP, and its boxes (detections scoring at least ``conf``).

    ``dets`` rows: [x1, y1, x2, y2, class index, score, IoU with the best object, kind, object index or -1];
    ``gts`` rows: [x1, y1, x2, y2, class index, kind]. Coordinates in pixels of the image as annotated.
    """
    kinds = gt_kinds(b, v, conf)
    shown = np.flatnonzero(b.det_scores >= conf)
    shown = shown[np.argsort(-b.det_scores[shown], kind="stable")]
    det_kinds = [str(v.det_kind[d]) for d in shown]
    errors = {t: det_kinds.count(t) for t in ERROR_TYPES}
    errors["miss"] = kinds.count("miss")
    return {
        "id": a.id, "file_name": Path(a.path).name, "path": a.path, "width": a.width, "height": a.height,
        "tp": det_kinds.count("tp"), "fp": sum(errors[t] for t in ERROR_TYPES if t != "miss"),
        "fn": kinds.count("fn") + kinds.count("miss"), "ap": image_ap(b, v), "errors": errors,
        "classes": sorted({classes[c] for c in b.gt_labels} | {classes[b.det_labels[d]] for d in shown}),
        "dets": [[*(round(float(x), 1) for x in b.det_boxes[d]), int(b.det_labels[d]), round(float(b.det_scores[d]), 4),
                  round(float(v.det_iou[d]), 3), str(v.det_kind[d]), int(v.det_target[d])] for d in shown],
        "gts": [[*(round(float(x), 1) for x in box), int(c), k] for box, c, k in zip(b.gt_boxes, b.gt_labels, kinds)],
    }
