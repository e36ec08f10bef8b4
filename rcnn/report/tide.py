"""Why detections fail, in the sense of TIDE (Bolya et al., ECCV 2020; the ``tidecv`` package).

Every detection that is not a true positive gets one error type, tried in this order
(IoU bounds: foreground ``pos_iou`` 0.5, background ``bg_iou`` 0.1):

* ``loc``:  its best same-class IoU lies in [bg_iou, pos_iou]: the right class, badly placed;
* ``cls``:  IoU >= pos_iou with an object of another class: a good box, the wrong class;
* ``dupe``: IoU >= pos_iou with a same-class object another detection already took;
* ``bkg``:  IoU <= bg_iou with every object (or the image has none): a box on nothing;
* ``both``: anything else (the wrong class and badly placed).

An object no detection matched, and that no ``cls`` or ``loc`` error points at, is ``miss``.
The dAP of a type is the mAP@0.5 with every error of that type fixed minus the mAP@0.5 as is,
fixed as tidecv fixes them: a ``cls`` / ``loc`` error becomes a true positive of the object's
class (only the best-scoring error per object, only if no detection took it; the others leave
the ranking), ``both``, ``dupe`` and ``bkg`` errors leave the ranking, a ``miss`` leaves the count
of objects. Matching is VOC's by default (a detection takes the object it overlaps most; if that
one is taken it is a false positive), so the mAP as is equals ``rcnn evaluate``'s ``map50``;
``matching="coco"`` takes the best object not yet taken (pycocotools, tidecv).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..boxes import box_iou
from ..evaluate import average_precision

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")  # tidecv's order of the main errors
DET_KINDS = ("tp", "cls", "loc", "both", "dupe", "bkg", "ignored")  # what a detection can be
POS_IOU = 0.5  # foreground: a match, as in mAP@0.5 (TIDE's pos_threshold)
BG_IOU = 0.1  # background: below this IoU with every object a detection is on nothing (TIDE's background_threshold)
MATCHINGS = ("voc", "coco")
INTERPOLATIONS = ("voc", "coco101")


@dataclass
class ImageBoxes:
    """One image's detections and ground truth, classes as indices into the class list.

    ``det_rank`` orders ties of equal scores across images (lower first), as the detections file does.
    """

    det_boxes: np.ndarray  # [N, 4] float32 (x1, y1, x2, y2) pixels
    det_labels: np.ndarray  # [N] int64
    det_scores: np.ndarray  # [N] float64
    gt_boxes: np.ndarray  # [G, 4] float32
    gt_labels: np.ndarray  # [G] int64
    gt_ignore: np.ndarray  # [G] bool: difficult (or outside the size bin): neither required nor penalised
    det_rank: np.ndarray | None = None  # [N] int64; None: the order given


@dataclass
class ImageVerdicts:
    """What each detection and object of one image turned out to be (all detections, every score)."""

    det_kind: np.ndarray  # [N] str, one of DET_KINDS
    det_target: np.ndarray  # [N] int64: the object a verdict is about (taken, or the one the error points at); -1: none
    det_iou: np.ndarray  # [N] float32: IoU with the best-overlapping object of any class (0 without objects)
    gt_match: np.ndarray  # [G] int64: the detection that took the object; -1: none
    gt_miss: np.ndarray  # [G] bool: TIDE's missed object (not taken, no cls/loc error points at it, not ignored)


def _check(pos_iou: float, bg_iou: float, matching: str) -> None:
    if not 0.0 <= bg_iou <= pos_iou <= 1.0:
        raise ValueError(f"'bg_iou={bg_iou}, pos_iou={pos_iou}' are invalid; they need 0 <= bg_iou <= pos_iou <= 1")
    if matching not in MATCHINGS:
        raise ValueError(f"'matching={matching}' is invalid; valid matchings are {', '.join(MATCHINGS)}")


def _match(b: ImageBoxes, iou: np.ndarray, order: np.ndarray, pos_iou: float, matching: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching by descending score: (kind [N] with "tp"/"ignored"/"", target [N], gt_match [G])."""
    n, g = len(b.det_boxes), len(b.gt_boxes)
    kind, target, gt_match = np.full(n, "", "<U7"), np.full(n, -1, np.int64), np.full(g, -1, np.int64)
    if g == 0:
        return kind, target, gt_match
    same = iou * (b.det_labels[:, None] == b.gt_labels[None, :])  # (N, G) IoU with same-class objects only
    taken = np.zeros(g, bool)
    for d in order:
        row = np.where(taken, 0.0, same[d]) if matching == "coco" else same[d]
        j = int(row.argmax())
        if row[j] < pos_iou:
            continue
        if b.gt_ignore[j]:
            kind[d] = "ignored"
        elif not taken[j]:
            taken[j], kind[d], target[d], gt_match[j] = True, "tp", j, d
    return kind, target, gt_match


def classify_image(b: ImageBoxes, pos_iou: float = POS_IOU, bg_iou: float = BG_IOU, matching: str = "voc") -> ImageVerdicts:
    """The TIDE verdict of every detection and object of one image (see the module docstring)."""
    _check(pos_iou, bg_iou, matching)
    n = len(b.det_boxes)
    order = np.argsort(-b.det_scores, kind="stable")
    iou = box_iou(b.det_boxes, b.gt_boxes) if n and len(b.gt_boxes) else np.zeros((n, len(b.gt_boxes)), np.float32)
    kind, target, gt_match = _match(b, iou, order, pos_iou, matching)
    real = ~b.gt_ignore  # errors are judged against the objects that count
    iou_r = iou * real[None, :]
    same = b.det_labels[:, None] == b.gt_labels[None, :]
    used = gt_match >= 0
    tests = (  # (type, IoU matrix, does it hold) in TIDE's order
        ("loc", iou_r * same, lambda m: (bg_iou <= m) & (m <= pos_iou)),
        ("cls", iou_r * ~same, lambda m: m >= pos_iou),
        ("dupe", iou_r * same * used[None, :], lambda m: m >= pos_iou),
    )
    has_objects = bool(real.any())
    for d in np.flatnonzero(kind == ""):
        if not has_objects:
            kind[d] = "bkg"
            continue
        for name, matrix, holds in tests:
            j = int(matrix[d].argmax())
            if holds(matrix[d, j]):
                kind[d], target[d] = name, j
                break
        else:
            kind[d] = "bkg" if iou_r[d].max() <= bg_iou else "both"
    pointed = np.zeros(len(b.gt_boxes), bool)
    fixable = np.isin(kind, ("cls", "loc"))
    pointed[target[fixable]] = True
    det_iou = iou.max(axis=1) if iou.size else np.zeros(n, np.float32)
    return ImageVerdicts(kind, target, det_iou.astype(np.float32), gt_match, real & ~used & ~pointed)


def _best_fixers(b: ImageBoxes, v: ImageVerdicts) -> np.ndarray:
    """[N] bool: the cls/loc errors a fix turns into true positives: per object not taken, the best-scoring one."""
    best = np.zeros(len(v.det_kind), bool)
    seen: set[int] = set()
    for d in np.argsort(-b.det_scores, kind="stable"):
        j = int(v.det_target[d])
        if v.det_kind[d] in ("cls", "loc") and v.gt_match[j] < 0 and j not in seen:
            seen.add(j)
            best[d] = True
    return best


@dataclass
class Points:
    """The ranking of one class: every counted detection's score, whether it is a true positive, its tie rank."""

    scores: list[np.ndarray] = field(default_factory=list)
    flags: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)
    n_pos: int = 0

    def add(self, scores: np.ndarray, flags: np.ndarray, ranks: np.ndarray) -> None:
        self.scores.append(scores)
        self.flags.append(flags)
        self.ranks.append(ranks)


def image_points(b: ImageBoxes, v: ImageVerdicts, fix: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's AP data points with the errors of type ``fix`` fixed (None: as is).

    Returns:
        (labels [K], scores [K], is_tp [K] bool, kept [N] bool: which detections the K points are),
        and the number of objects counted per class comes from :func:`image_positives`.
    """
    labels, flags = b.det_labels.copy(), v.det_kind == "tp"
    kept = v.det_kind != "ignored"
    if fix in ("cls", "loc"):
        errors = v.det_kind == fix
        fixed = errors & _best_fixers(b, v)
        labels[fixed] = b.gt_labels[v.det_target[fixed]]
        flags = flags | fixed
        kept &= ~(errors & ~fixed)
    elif fix in ("both", "dupe", "bkg"):
        kept &= v.det_kind != fix
    return labels[kept], b.det_scores[kept], flags[kept], kept


def image_positives(b: ImageBoxes, v: ImageVerdicts, n_classes: int, fix: str | None) -> np.ndarray:
    """[C] int64: the objects of each class that count (fixing ``miss`` takes the missed ones out)."""
    counted = ~b.gt_ignore & ~v.gt_miss if fix == "miss" else ~b.gt_ignore
    return np.bincount(b.gt_labels[counted], minlength=n_classes).astype(np.int64)


def coco101_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under a precision-recall curve sampled at recall 0, 0.01, ..., 1, as tidecv does it.

    The points are ``k / 100`` as in tidecv (pycocotools' ``np.linspace`` differs in the last bit, which moves a
    point past a recall like 0.7 exactly).
    """
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    k = np.searchsorted(recall, np.arange(101) / 100, side="left")
    return float(np.where(k < len(recall), envelope[np.minimum(k, len(recall) - 1)], 0.0).mean())


def class_ap(points: Points, interpolation: str = "voc") -> float | None:
    """AP of one class from its data points; None when it has no objects (as ``rcnn evaluate``)."""
    if points.n_pos <= 0:
        return None
    if not points.scores:
        return 0.0
    s, f, r = (np.concatenate(x) for x in (points.scores, points.flags, points.ranks))
    order = np.lexsort((r, -s))  # by descending score, ties in file order
    tp = np.cumsum(f[order])
    recall, precision = tp / points.n_pos, tp / np.arange(1, len(tp) + 1)
    return coco101_ap(recall, precision) if interpolation == "coco101" else average_precision(recall, precision)


def collect_points(images: Sequence[ImageBoxes], verdicts: Sequence[ImageVerdicts], n_classes: int,
                   fix: str | None) -> list[Points]:
    """Per class, the data points of every image with errors of type ``fix`` fixed (None: as is)."""
    points = [Points() for _ in range(n_classes)]
    start = 0
    for b, v in zip(images, verdicts):
        labels, scores, flags, kept = image_points(b, v, fix)
        ranks = (b.det_rank if b.det_rank is not None else start + np.arange(len(b.det_scores)))[kept]
        start += len(b.det_scores)
        for c in np.unique(labels):
            sel = labels == c
            points[c].add(scores[sel], flags[sel], ranks[sel])
        for c, n in enumerate(image_positives(b, v, n_classes, fix)):
            points[c].n_pos += int(n)
    return points


@dataclass
class TideReport:
    """The error breakdown of one detections file on one split."""

    map50: float  # mAP@0.5 as is (mean of the rounded APs of the classes with objects, as rcnn evaluate; 0.0: none)
    ap50: dict[str, float | None]  # per class; None: no objects
    errors: dict[str, float]  # error type -> dAP@0.5 overall (mAP gained by fixing them; >= 0)
    per_class: dict[str, dict[str, float | None]]  # class -> error type -> dAP@0.5 of that class's AP
    counts: dict[str, int]  # error type -> how many (every detection, every score)
    class_counts: dict[str, dict[str, int]]  # class -> error type -> how many (a detection's class; a missed object's)
    verdicts: list[ImageVerdicts]  # per image, in the order given


def mean_ap(points: list[Points], interpolation: str = "voc") -> tuple[float, list[float | None]]:
    """(mAP over the classes with objects, the AP of every class; None: no objects)."""
    aps = [class_ap(p, interpolation) for p in points]
    valid = [a for a in aps if a is not None]
    return (float(np.mean(valid)) if valid else 0.0), aps


def tide_errors(images: Sequence[ImageBoxes], classes: Sequence[str], pos_iou: float = POS_IOU, bg_iou: float = BG_IOU,
                matching: str = "voc", interpolation: str = "voc") -> TideReport:
    """Classify every detection and object of ``images`` and find each error type's dAP by re-evaluating with it fixed.

    Args:
        images: per image, its boxes (class indices into ``classes``).
        matching: "voc" (``rcnn evaluate``) or "coco" (pycocotools, tidecv); see the module docstring.
        interpolation: "voc" all-point AP (``rcnn evaluate``) or "coco101" (pycocotools, tidecv).

    Returns:
        The mAP as is, the dAP of each type overall and per class, and the counts of each type.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"'interpolation={interpolation}' is invalid; valid ones are {', '.join(INTERPOLATIONS)}")
    n = len(classes)
    verdicts = [classify_image(b, pos_iou, bg_iou, matching) for b in images]
    base, base_aps = mean_ap(collect_points(images, verdicts, n, None), interpolation)
    errors: dict[str, float] = {}
    per_class: dict[str, dict[str, float | None]] = {c: {} for c in classes}
    for t in ERROR_TYPES:
        fixed, aps = mean_ap(collect_points(images, verdicts, n, t), interpolation)
        errors[t] = round(max(fixed - base, 0.0), 4)  # as tidecv: a negative is 101-point binning noise
        for c, before, after in zip(classes, base_aps, aps):
            per_class[c][t] = None if before is None or after is None else round(max(after - before, 0.0), 4)
    class_counts = {c: dict.fromkeys(ERROR_TYPES, 0) for c in classes}
    for b, v in zip(images, verdicts):
        for label, kind in zip(b.det_labels, v.det_kind):
            if kind in ERROR_TYPES:
                class_counts[classes[label]][kind] += 1
        for label in b.gt_labels[v.gt_miss]:
            class_counts[classes[label]]["miss"] += 1
    counts = {t: sum(cc[t] for cc in class_counts.values()) for t in ERROR_TYPES}
    ap50 = {c: None if a is None else round(a, 4) for c, a in zip(classes, base_aps)}
    valid = [a for a in ap50.values() if a is not None]  # the mean of the rounded APs, as rcnn evaluate's map50
    return TideReport(round(float(np.mean(valid)), 4) if valid else 0.0, ap50, errors, per_class, counts, class_counts,
                      verdicts)
