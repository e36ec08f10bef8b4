"""Stage 6: how good is the detector, in the numbers the field uses.

* VOC AP at IoU 0.5 per class (all-point interpolation, as VOC 2010+), and their mean.
  Difficult objects are neither required nor penalised.
* COCO mAP@[.5:.95] computed by pycocotools (difficult objects left out of the ground truth).
"""

from __future__ import annotations

import contextlib
import io as _io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import box_iou
from .errors import DataError
from .io import print_err, read_json, write_atomic, write_json
from .parse import Annotation, Dataset

REPORT_FORMAT = "rcnn-evaluation-v1"  # the format tag of an evaluation report

def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under a precision-recall curve, VOC all-point: the area under the monotone precision envelope.

    Args:
        recall, precision (ndarray[K]): cumulative values over detections sorted by descending score.
    """
    if len(recall) == 0:
        return 0.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def match_detections(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy VOC matching of one image's detections of one class.

    Each detection, best score first, takes the ground-truth box it overlaps most; it is
    a true positive if that IoU >= ``iou_threshold`` and the box was not taken yet, a false
    positive otherwise (a duplicate), and ignored when the box is difficult.

    Returns:
        ndarray[N] int8 in the input order: 1 true positive, 0 false positive, -1 ignored.
    """
    n = len(det_boxes)
    out = np.zeros(n, np.int8)
    if n == 0 or len(gt_boxes) == 0:
        return out
    iou = box_iou(det_boxes, gt_boxes)  # (N, G)
    best, arg = iou.max(axis=1), iou.argmax(axis=1)
    taken = np.zeros(len(gt_boxes), bool)
    for d in np.argsort(-det_scores, kind="stable"):
        if best[d] < iou_threshold:
            continue
        g = arg[d]
        if gt_difficult[g]:
            out[d] = -1
        elif not taken[g]:
            taken[g], out[d] = True, 1
    return out


def class_pr(dets: dict[str, tuple[np.ndarray, np.ndarray]], gts: dict[str, tuple[np.ndarray, np.ndarray]],
             iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Precision and recall of one class over all images.

    Args:
        dets: image id -> (boxes [N, 4], scores [N]); gts: image id -> (boxes [G, 4], difficult [G] bool).

    Returns:
        (recall [K], precision [K], number of non-difficult ground-truth boxes).
    """
    n_pos = int(sum((~d).sum() for _, d in gts.values()))
    scores, flags = [], []
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, bool))
    for image_id, (boxes, s) in dets.items():
        g, diff = gts.get(image_id, empty)
        flags.append(match_detections(boxes, s, g, diff, iou_threshold))
        scores.append(s)
    if not scores or n_pos == 0:
        return np.zeros(0), np.zeros(0), n_pos
    s, f = np.concatenate(scores), np.concatenate(flags)
    order = np.argsort(-s, kind="stable")
    f = f[order][f[order] >= 0]  # ignored (difficult) detections leave the ranking
    tp, fp = np.cumsum(f == 1), np.cumsum(f == 0)
    return tp / n_pos, tp / np.maximum(tp + fp, np.finfo(float).eps), n_pos


def voc_map50(detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]], truths: list[tuple[np.ndarray, np.ndarray]],
              n_classes: int) -> float:
    """VOC mAP@0.5 of in-memory detections (no files, no names): what training validates with.

    Args:
        detections: per image (boxes [N, 4], scores [N], 1-based class ids [N]).
        truths: per image, in the same order (boxes [G, 4], 1-based class ids [G]); none is difficult.
        n_classes: object classes plus background (ids 1 .. n_classes - 1 are scored).

    Returns:
        The mean AP over the classes with ground truth (0.0 when none has).
    """
    aps = []
    for c in range(1, n_classes):
        dets = {i: (b[l == c], s[l == c]) for i, (b, s, l) in enumerate(detections)}
        gts = {i: (b[l == c], np.zeros(int((l == c).sum()), bool)) for i, (b, l) in enumerate(truths)}
        rec, prec, n_pos = class_pr(dets, gts, 0.5)
        if n_pos:
            aps.append(average_precision(rec, prec))
    return float(np.mean(aps)) if aps else 0.0


def _group(detections: list[dict[str, Any]], images: list[Annotation], cls: str):
    ids = {a.id for a in images}
    dets: dict[str, tuple[list, list]] = {}
    for d in detections:
        if d["category"] == cls and d["_image"] in ids:
            x, y, w, h = d["bbox"]
            dets.setdefault(d["_image"], ([], []))
            dets[d["_image"]][0].append([x, y, x + w, y + h])
            dets[d["_image"]][1].append(d["score"])
    dets_np = {k: (np.array(b, np.float32).reshape(-1, 4), np.array(s, np.float64)) for k, (b, s) in dets.items()}
    gts = {}
    for a in images:
        objs = [o for o in a.objects if o.label == cls]
        gts[a.id] = (np.array([o.box for o in objs], np.float32).reshape(-1, 4), np.array([o.difficult for o in objs], bool))
    return dets_np, gts


def coco_map(detections: list[dict[str, Any]], images: list[Annotation], classes: list[str]) -> dict[str, float]:
    """COCO metrics by pycocotools: mAP@[.5:.95], @.5, @.75 (difficult objects left out)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    index = {a.id: i for i, a in enumerate(images, start=1)}
    gt: dict[str, Any] = {
        "images": [{"id": index[a.id], "width": a.width, "height": a.height} for a in images],
        "categories": [{"id": k, "name": c} for k, c in enumerate(classes, start=1)],
        "annotations": [],
    }
    for a in images:
        for o in a.objects:
            if o.difficult or o.label not in classes:
                continue
            x1, y1, x2, y2 = o.box
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": index[a.id], "category_id": classes.index(o.label) + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    res = [{"image_id": index[d["_image"]], "category_id": classes.index(d["category"]) + 1, "bbox": d["bbox"], "score": d["score"]}
           for d in detections if d["_image"] in index and d["category"] in classes]
    if not res or not gt["annotations"]:
        return {"map50_95": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(_io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50_95": round(float(ev.stats[0]), 4), "map50": round(float(ev.stats[1]), 4), "map75": round(float(ev.stats[2]), 4)}


def confusion_matrix(detections: list[dict[str, Any]], images: list[Annotation], classes: list[str], conf: float = 0.25,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """Counts of ground truth against detections, with a background row and column (as Ultralytics draws it).

    Per image, detections scoring >= ``conf`` are matched to ground-truth boxes of any class at IoU >= ``iou_threshold``,
    greedily by IoU (each box and each detection at most once). A matched pair counts at (true class, detected
    class); an unmatched ground-truth box at (its class, background): missed; an unmatched detection at
    (background, its class): a false alarm. Difficult objects and the detections matched to them are not counted.

    Args:
        detections: dicts with ``_image`` (the image id), ``category``, ``bbox`` [x, y, w, h] and ``score``.

    Returns:
        ndarray[C + 1, C + 1] int64: rows the ground truth, columns the detections, in ``classes`` order, then background.
    """
    n = len(classes)
    index = {c: k for k, c in enumerate(classes)}
    matrix = np.zeros((n + 1, n + 1), np.int64)
    by_image: dict[str, list[dict[str, Any]]] = {}
    for d in detections:
        if d["score"] >= conf and d["category"] in index:
            by_image.setdefault(d["_image"], []).append(d)
    for a in images:
        objs = [o for o in a.objects if o.label in index]
        dets = by_image.get(a.id, [])
        gt_cls = np.array([index[o.label] for o in objs], np.int64)
        difficult = np.array([o.difficult for o in objs], bool)
        det_cls = np.array([index[d["category"]] for d in dets], np.int64)
        det_boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], np.float32).reshape(-1, 4)
        gt_boxes = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
        iou = box_iou(gt_boxes, det_boxes) if len(objs) and len(dets) else np.zeros((len(objs), len(dets)), np.float32)
        g_idx, d_idx = np.nonzero(iou >= iou_threshold)
        order = np.argsort(-iou[g_idx, d_idx], kind="stable")
        gt_free, det_free = np.ones(len(objs), bool), np.ones(len(dets), bool)
        for g, d in zip(g_idx[order], d_idx[order]):  # greedy: the best-overlapping pair first
            if gt_free[g] and det_free[d]:
                gt_free[g] = det_free[d] = False
                if not difficult[g]:
                    matrix[gt_cls[g], det_cls[d]] += 1
        np.add.at(matrix, (gt_cls[gt_free & ~difficult], n), 1)
        np.add.at(matrix, (n, det_cls[det_free]), 1)
    return matrix


def _attach_images(detections: list[dict[str, Any]], images: list[Annotation]) -> list[dict[str, Any]]:
    """Find each detection's annotated image by path, then by file stem."""
    by_path = {str(Path(a.path).resolve()): a.id for a in images}
    by_stem = {Path(a.path).stem: a.id for a in images}
    out = []
    for d in detections:
        name = str(d.get("file_name") or d.get("image_id", ""))
        image = by_path.get(str(Path(name).resolve())) if name else None
        image = image or by_stem.get(Path(name).stem)
        if image is not None:
            out.append({**d, "_image": image})
    return out


attach_images = _attach_images  # public: rcnn.report finds each detection's image the same way


def evaluate(detections: list[dict[str, Any]], dataset: Dataset, split: str = "test", plot: str | Path | None = None,
             confusion_plot: str | Path | None = None, confusion_conf: float = 0.25) -> dict[str, Any]:
    """VOC AP@0.5 per class, mAP@0.5, COCO mAP@[.5:.95] and the confusion matrix of ``detections`` on ``split``.

    Args:
        detections: COCO-results-style dicts with ``file_name`` (or ``image_id`` = file stem),
            ``category`` (class name), ``bbox`` [x, y, w, h] and ``score``.
        plot: where to save the precision-recall curves (PNG: one per class and their mean), or None.
        confusion_plot: where to save the confusion matrix (PNG), or None.
        confusion_conf: the confusion matrix counts detections scoring at least this (Ultralytics' 0.25; AP uses all).
    """
    if not 0.0 <= confusion_conf <= 1.0:
        raise ValueError(f"'confusion_conf={confusion_conf}' is invalid; it must lie in [0, 1]")
    images = dataset.split(split)
    if not images:
        raise DataError(f"no images in split '{split}'")
    classes = list(dataset.classes)
    named = []
    for d in detections:
        if "category" not in d and isinstance(d.get("category_id"), int) and 1 <= d["category_id"] <= len(classes):
            d = {**d, "category": classes[d["category_id"] - 1]}  # plain COCO results: 1-based class ids
        if not {"bbox", "score", "category"} <= set(d):
            raise DataError("each detection needs 'bbox', 'score' and 'category' (or a 1-based 'category_id'), "
                            "as `rcnn detect` writes them")
        named.append(d)
    dets = _attach_images(named, images)
    ap50: dict[str, float | None] = {}
    curves = {}
    for c in classes:
        d, g = _group(dets, images, c)
        rec, prec, n_pos = class_pr(d, g, 0.5)
        ap50[c] = round(average_precision(rec, prec), 4) if n_pos else None  # no ground truth: AP undefined
        curves[c] = (rec, prec)
    valid = [v for v in ap50.values() if v is not None]
    coco = coco_map(dets, images, classes)
    report = {
        "format": REPORT_FORMAT,
        "map50": round(float(np.mean(valid)), 4) if valid else 0.0,
        "map50_95": coco["map50_95"],
        "ap50": ap50,
        "coco": coco,
        "split": split,
        "n_images": len(images),
        "n_images_with_detections": len({d["_image"] for d in dets}),
        "n_detections": len(dets),
        "n_unmatched_detections": len(detections) - len(dets),
        "gt_per_class": {c: sum(o.label == c and not o.difficult for a in images for o in a.objects) for c in classes},
    }
    matrix = confusion_matrix(dets, images, classes, confusion_conf, 0.5)
    report["confusion_matrix"] = {"labels": [*classes, "background"], "rows": "ground truth", "columns": "detections",
                                  "conf": confusion_conf, "iou": 0.5, "matrix": matrix.tolist()}
    if plot:
        _plot_pr(curves, ap50, plot)
    if confusion_plot:
        _plot_confusion(matrix, [*classes, "background"], confusion_conf, confusion_plot)
    return report


def _plot_confusion(matrix: np.ndarray, labels: list[str], conf: float, path: str | Path) -> None:
    """The confusion matrix as a PNG: counts written in the cells, colour = share of the row (of each true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("detected")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion matrix (score >= {conf}, IoU >= 0.5)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the ground-truth row")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"rcnn": "evaluate"}))
    plt.close(fig)


def _plot_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], ap: dict[str, float | None], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    grid = np.linspace(0, 1, 101)
    envelopes = []
    for c, (rec, prec) in curves.items():
        if len(rec):
            ax.plot(rec, prec, linewidth=1, label=f"{c} (AP50 {ap[c]:.3f})")
        if ap[c] is not None:  # the precision envelope on a recall grid (0 past the last recall), for the mean
            env = np.maximum.accumulate(prec[::-1])[::-1] if len(rec) else np.zeros(0)
            k = np.searchsorted(rec, grid, side="left")
            envelopes.append(np.where(k < len(rec), env[np.minimum(k, max(len(rec) - 1, 0))] if len(rec) else 0.0, 0.0))
    if len(envelopes) > 1:
        valid = [v for v in ap.values() if v is not None]
        ax.plot(grid, np.mean(envelopes, axis=0), color="black", linewidth=2.5, label=f"all classes (mAP50 {np.mean(valid):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall at IoU 0.5")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"rcnn": "evaluate"}))
    plt.close(fig)


def load_detections(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a detections file (COCO results, as ``rcnn detect`` writes them).

    Raises:
        DataError: naming the file and the first bad record.
    """
    data = read_json(path, "detections file")
    if isinstance(data, dict) and "detections" in data:
        data = data["detections"]
    if not isinstance(data, list):
        raise DataError(f"{path} is not a list of detections (COCO results format)")
    for k, d in enumerate(data):
        problem = _check_detection(d)
        if problem:
            raise DataError(f"{path}: detection {k} {problem}")
    return data


def _check_detection(d: Any) -> str | None:
    """Why one detection record is unusable, or None."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    if not isinstance(d, dict):
        return f"is a {type(d).__name__}, not an object"
    bbox = d.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(number(v) for v in bbox):
        return f"has bbox {bbox!r}; it must be 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"has a negative width or height in bbox {bbox!r}"
    if not number(d.get("score")):
        return f"has score {d.get('score')!r}; it must be a finite number"
    if "category" in d and not isinstance(d["category"], str):
        return f"has category {d['category']!r}; it must be a class name"
    if "category_id" in d and (not isinstance(d["category_id"], int) or isinstance(d["category_id"], bool)):
        return f"has category_id {d['category_id']!r}; it must be an integer"
    for key in ("file_name", "image_id"):
        if key in d and not isinstance(d[key], (str, int)):
            return f"has {key} {d[key]!r}; it must be a string or an integer"
    return None


def evaluate_model(model_dir: str | Path, dataset: Dataset, split: str, run: str | Path, device: str = "auto",
                   echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err, **detect_settings: Any) -> Path:
    """Run the model in ``model_dir`` on the images of ``split`` into the run folder ``run``.

    Args:
        detect_settings: :class:`rcnn.detect.DetectConfig` fields.

    Returns:
        The path of the detections file to evaluate.
    """
    from .detect import DetectConfig, detect
    from .model import load_model

    model = load_model(model_dir, device)
    images = dataset.split(split)
    if not images:
        raise DataError(f"no images in split '{split}'")
    detect(model, [a.path for a in images], run, DetectConfig(**detect_settings), save_images=True, echo=echo, warn=warn)
    return Path(run) / "detections.json"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'class':<20}{'AP50':>8}{'objects':>9}"]
    for c, v in report["ap50"].items():
        lines.append(f"{c:<20}{'-' if v is None else f'{v:.4f}':>8}{report['gt_per_class'][c]:>9}")
    lines.append(f"mAP@0.5 {report['map50']:.4f}   COCO mAP@[.5:.95] {report['map50_95']:.4f}   "
                 f"({report['n_images']} {report['split']} images, {report['n_detections']} detections)")
    return "\n".join(lines)


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    return write_json(path, report)
