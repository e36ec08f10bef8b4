"""AP and recall by object size: are the misses the small objects?

The bins are COCO's (small: area < 32², medium: < 96², large: the rest, in pixels of the
image as annotated), or the tertiles of this split's object areas when most objects fall in
one COCO bin (a dataset of large animals would otherwise get one bin and two empty ones).
Within a bin, as pycocotools does it, objects of the other sizes are neither required nor
penalised, and so are the unmatched detections whose own size is outside the bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .tide import ImageBoxes, classify_image, collect_points, mean_ap

COCO_AREAS = (32.0**2, 96.0**2)  # COCO's small / medium / large boundaries, in square pixels
MOST = 0.5  # more than this share of the objects in one COCO bin: use this split's tertiles instead


@dataclass
class SizeBin:
    """One size bin: its bounds, its objects, and how the detector does on them."""

    name: str  # "small", "medium", "large"
    low: float  # area >= low (square pixels)
    high: float | None  # area < high; None: no upper bound
    n_objects: int  # objects in the bin that count (not difficult)
    map50: float | None  # mAP@0.5 over the classes with objects in the bin; None: no objects
    recall: float | None  # share of its objects some detection (any score) found at IoU >= 0.5
    recall_at_conf: float | None  # the same, by detections scoring at least the report's score threshold


def areas(boxes: np.ndarray) -> np.ndarray:
    """[N] float64 areas of (x1, y1, x2, y2) boxes, in square pixels."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def size_bins(object_areas: np.ndarray) -> tuple[str, list[tuple[str, float, float | None]]]:
    """The scheme ("coco" or "tertiles") and its bins (name, low, high) for these object areas."""
    coco = [("small", 0.0, COCO_AREAS[0]), ("medium", COCO_AREAS[0], COCO_AREAS[1]), ("large", COCO_AREAS[1], None)]
    if len(object_areas) < 3:
        return "coco", coco
    share = np.bincount(np.searchsorted(COCO_AREAS, object_areas, side="right"), minlength=3) / len(object_areas)
    if share.max() <= MOST:
        return "coco", coco
    t1, t2 = (float(v) for v in np.quantile(object_areas, [1 / 3, 2 / 3]))
    if not 0 < t1 < t2:  # too many equal areas to cut in three
        return "coco", coco
    return "tertiles", [("small", 0.0, t1), ("medium", t1, t2), ("large", t2, None)]


def _inside(a: np.ndarray, low: float, high: float | None) -> np.ndarray:
    return (a >= low) & (a < high) if high is not None else a >= low


def size_report(images: Sequence[ImageBoxes], n_classes: int, conf: float = 0.25,
                matching: str = "voc") -> tuple[str, list[SizeBin]]:
    """mAP@0.5 and recall per size bin of the objects in ``images``.

    Returns:
        (the scheme, "coco" or "tertiles"; the bins, small to large).
    """
    counted = [areas(b.gt_boxes)[~b.gt_ignore] for b in images]
    scheme, bins = size_bins(np.concatenate(counted) if counted else np.zeros(0))
    out = []
    for name, low, high in bins:
        sub, verdicts, found, found_conf, n = [], [], 0, 0, 0
        for b in images:
            keep = _inside(areas(b.gt_boxes), low, high)
            s = replace(b, gt_ignore=b.gt_ignore | ~keep)
            v = classify_image(s, matching=matching)
            elsewhere = ~_inside(areas(b.det_boxes), low, high) & (v.det_kind != "tp")
            v.det_kind[elsewhere] = "ignored"
            real = ~s.gt_ignore
            hit = real & (v.gt_match >= 0)
            found += int(hit.sum())
            found_conf += int((b.det_scores[v.gt_match[hit]] >= conf).sum())
            n += int(real.sum())
            sub.append(s)
            verdicts.append(v)
        m, _ = mean_ap(collect_points(sub, verdicts, n_classes, None))
        out.append(SizeBin(name, round(low, 1), None if high is None else round(high, 1), n,
                           round(m, 4) if n else None, round(found / n, 4) if n else None,
                           round(found_conf / n, 4) if n else None))
    return scheme, out
