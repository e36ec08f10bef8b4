"""Converters from parsed records (any dataset `rcnn parse` read) to COCO JSON and YOLO txt, for the format tests.

Written independently of the readers in ``rcnn/formats``: they follow the formats' own documentation.
Images are symlinked, not copied, so a converted dataset costs no disk and its records keep the same
(resolved) image paths as the original.

* COCO: ``annotations/instances_<split>.json``, ``bbox`` = [x1, y1, x2 - x1, y2 - y1] (0-based pixels),
  ``iscrowd`` = difficult, category ids from 1 in class order; images in ``images/``.
* YOLO: ``images/<split>/``, ``labels/<split>/<stem>.txt`` lines ``class cx cy w h`` normalised, written with
  :data:`YOLO_DIGITS` decimals, and ``data.yaml`` (``names`` as a list or a mapping) or ``classes.txt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rcnn.parse import Annotation, Dataset

YOLO_DIGITS = 6  # decimals of the normalised YOLO coordinates (Ultralytics' converters write 6 too)


def yolo_tolerance(a: Annotation) -> float:
    """How far (pixels) a box read back from YOLO txt may be from the original: each normalised value is rounded
    by at most 0.5e-6, and x1 = (cx - w/2) W adds the errors of cx and w/2: 0.75e-6 * W, below 1e-6 * the longer side."""
    return 10.0 ** -YOLO_DIGITS * max(a.width, a.height)


def _link(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def to_coco(ds: Dataset, out: Path) -> Path:
    """Write ``ds`` as a COCO dataset folder ``out`` (one instances file per split); returns ``out``."""
    cats = {c: k for k, c in enumerate(ds.classes, start=1)}
    (out / "annotations").mkdir(parents=True)
    for split in sorted({a.split for a in ds.images}):
        coco: dict[str, Any] = {"info": {"description": "converted by tests/convert.py"}, "images": [], "annotations": [],
                                "categories": [{"id": k, "name": c, "supercategory": "none"} for c, k in cats.items()]}
        for a in ds.split(split):
            name = Path(a.path).name
            _link(a.path, out / "images" / name)
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": name, "width": a.width, "height": a.height})
            for o in a.objects:
                x1, y1, x2, y2 = o.box
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": cats[o.label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                            "area": (x2 - x1) * (y2 - y1), "iscrowd": int(o.difficult)})
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return out


def to_yolo(ds: Dataset, out: Path, names: str = "list") -> Path:
    """Write ``ds`` as a YOLO dataset folder ``out`` (``images/<split>``, ``labels/<split>``); returns ``out``.

    ``names``: "list" or "dict" writes ``data.yaml`` with ``names`` in that form; "classes.txt" writes that file
    instead (the layout then says the splits by its folder names).
    """
    ids = {c: k for k, c in enumerate(ds.classes)}
    splits = sorted({a.split for a in ds.images})
    for a in ds.images:
        image = Path(a.path)
        _link(a.path, out / "images" / a.split / image.name)
        lines = []
        for o in a.objects:
            x1, y1, x2, y2 = o.box
            cx, cy, w, h = (x1 + x2) / 2 / a.width, (y1 + y2) / 2 / a.height, (x2 - x1) / a.width, (y2 - y1) / a.height
            lines.append(f"{ids[o.label]} " + " ".join(f"{v:.{YOLO_DIGITS}f}" for v in (cx, cy, w, h)))
        label = out / "labels" / a.split / f"{image.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(ln + "\n" for ln in lines))
    if names == "classes.txt":
        (out / "classes.txt").write_text("".join(c + "\n" for c in ds.classes))
    else:
        import yaml

        listed: Any = list(ds.classes) if names == "list" else {k: c for c, k in ids.items()}
        data = {"path": ".", **{s: f"images/{s}" for s in splits}, "nc": len(ds.classes), "names": listed}
        (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def record_differences(a: Dataset, b: Dataset, box_tolerance: Any = 1e-9) -> list[str]:
    """What differs between the records of two datasets (empty: the same records), one line each.

    Compared: classes, and per image id: path, width, height, split, and each object's label, difficult and
    box (to within ``box_tolerance(annotation)`` pixels, or a number). Not compared: ``annotation`` (the file
    the record came from) and ``truncated`` (VOC only).
    """
    tol = box_tolerance if callable(box_tolerance) else (lambda _a: box_tolerance)
    out = []
    if a.classes != b.classes:
        out.append(f"classes {a.classes} != {b.classes}")
    ra, rb = {x.id: x for x in a.images}, {x.id: x for x in b.images}
    if set(ra) != set(rb):
        out.append(f"ids only in one: {sorted(set(ra) ^ set(rb))[:5]}")
    for i in sorted(set(ra) & set(rb)):
        x, y = ra[i], rb[i]
        for f in ("path", "width", "height", "split"):
            if getattr(x, f) != getattr(y, f):
                out.append(f"{i}: {f} {getattr(x, f)!r} != {getattr(y, f)!r}")
        if [(o.label, o.difficult) for o in x.objects] != [(o.label, o.difficult) for o in y.objects]:
            out.append(f"{i}: objects {[(o.label, o.difficult) for o in x.objects]} != {[(o.label, o.difficult) for o in y.objects]}")
            continue
        for k, (p, q) in enumerate(zip(x.objects, y.objects)):
            if max(abs(u - v) for u, v in zip(p.box, q.box)) > tol(x):
                out.append(f"{i}: object {k} box {p.box} != {q.box}")
    return out
