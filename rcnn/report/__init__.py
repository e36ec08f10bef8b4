"""``rcnn report``: see why a detector fails, on one static page.

:func:`make_report` writes ``index.html`` (open it from disk, no server, no network) and
``report.json`` into a folder: the headline numbers, the PR curves and confusion matrix of
``rcnn evaluate``, the error breakdown in the sense of TIDE (:mod:`rcnn.report.tide`), AP and
recall by object size (:mod:`rcnn.report.sizes`) and a gallery of every image
(:mod:`rcnn.report.gallery`, drawn by :mod:`rcnn.report.page`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..evaluate import attach_images, evaluate, evaluate_model, load_detections
from ..io import output_dir, print_err, read_json, write_json, write_text
from ..parse import Annotation, Dataset
from .gallery import image_record, write_gallery
from .page import render_page
from .sizes import SizeBin, size_report
from .tide import BG_IOU, ERROR_TYPES, POS_IOU, ImageBoxes, TideReport, tide_errors

__all__ = ["ERROR_TYPES", "REPORT_FORMAT", "Report", "format_report", "image_boxes", "make_report"]

REPORT_FORMAT = "rcnn-report-v1"  # the format tag of report.json
CONF = 0.25  # the gallery and its counts show detections scoring at least this (Ultralytics' plots: 0.25)


@dataclass
class Report:
    """What :func:`make_report` wrote and the numbers it found."""

    folder: Path
    index: Path  # index.html
    json: Path  # report.json
    map50: float  # VOC mAP@0.5, as rcnn evaluate
    map50_95: float  # COCO mAP@[.5:.95]
    errors: dict[str, float]  # error type -> dAP@0.5
    n_images: int


def _named(detections: list[dict[str, Any]], classes: list[str]) -> list[dict[str, Any]]:
    """Each detection with its class name (plain COCO results give a 1-based ``category_id``); unknown classes dropped."""
    out = []
    for d in detections:
        name = d.get("category")
        if name is None and isinstance(d.get("category_id"), int) and 1 <= d["category_id"] <= len(classes):
            name = classes[d["category_id"] - 1]
        if name in classes:
            out.append({**d, "category": name})
    return out


def image_boxes(detections: list[dict[str, Any]], images: list[Annotation], classes: list[str]) -> list[ImageBoxes]:
    """Per image of ``images``, its detections (attached by path or file stem) and its objects, classes as indices.

    Ties of equal scores are ranked as ``rcnn evaluate`` ranks them (per class: images in order of first
    appearance, then file order), so the mAP as is equals its ``map50``.
    """
    dets = attach_images(_named(detections, classes), images)
    index = {c: k for k, c in enumerate(classes)}
    first: dict[tuple[str, str], int] = {}
    per_image: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for k, d in enumerate(dets):
        first.setdefault((d["_image"], d["category"]), k)
        per_image.setdefault(d["_image"], []).append((k, d))
    out = []
    for a in images:
        mine = per_image.get(a.id, [])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for _, d in mine)], np.float32).reshape(-1, 4)
        ranks = np.array([first[(a.id, d["category"])] * (len(dets) + 1) + k for k, d in mine], np.int64)
        objs = [o for o in a.objects if o.label in index]
        out.append(ImageBoxes(
            boxes, np.array([index[d["category"]] for _, d in mine], np.int64), np.array([d["score"] for _, d in mine], np.float64),
            np.array([o.box for o in objs], np.float32).reshape(-1, 4), np.array([index[o.label] for o in objs], np.int64),
            np.array([o.difficult for o in objs], bool), ranks))
    return out


def _read(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except DataError:
        return None


def model_info(detections: Path, model_dir: Path | None = None) -> dict[str, Any]:
    """The architecture and settings behind a detections file, from what lies around it (empty when nothing does).

    Looks at the model folder (``config.json``), a pipeline run's ``metrics.json`` two levels up, and the
    detect run's ``summary.json`` beside the file.
    """
    info: dict[str, Any] = {}
    run = detections.parent
    metrics = _read(run.parent / "metrics.json")
    if isinstance(metrics, dict):
        info.update({k: metrics[k] for k in ("arch", "backbone", "config") if k in metrics})
    model = _read((model_dir or run.parent / "model") / "config.json")
    if isinstance(model, dict):
        info.update({k: v for k, v in model.items() if k not in ("files", "format", "train", "crop", "propose", "mean", "std")})
    summary = _read(run / "summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
        info["detect"] = summary["config"]
    return info


def find_detections(detections: str | Path, dataset: Dataset, split: str, out: Path, echo: Callable[[str], Any],
                    warn: Callable[[str], Any], detect_settings: dict[str, Any] | None) -> tuple[Path, Path | None]:
    """(the detections file, the model folder when one was run): a file, a detect run folder, or a model folder
    (detected on ``split`` first, into ``out/detect``, with ``detect_settings``: DetectConfig fields)."""
    path = Path(detections)
    if path.is_dir() and (path / "detections.json").is_file():
        path = path / "detections.json"
    if path.is_dir():
        return evaluate_model(path, dataset, split, out / "detect", echo=echo, warn=warn, **(detect_settings or {})), path
    if detect_settings:
        raise ValueError(f"detection settings ({', '.join(sorted(detect_settings))}) apply only when DETECTIONS is a "
                         f"model folder; {detections} holds detections already")
    if not path.is_file():
        raise DataError(f"detections not found: {detections}")
    return path, None


def _summary(evaluation: dict[str, Any], tide: TideReport, sizes: tuple[str, list[SizeBin]], images: list[dict[str, Any]],
             classes: list[str], conf: float, pos_iou: float, bg_iou: float) -> dict[str, Any]:
    """report.json's numbers (without its ``images``)."""
    return {
        "format": REPORT_FORMAT, "split": evaluation["split"], "classes": classes,
        "map50": evaluation["map50"], "map50_95": evaluation["map50_95"], "ap50": evaluation["ap50"],
        "errors": {**tide.errors, "per_class": tide.per_class},
        "error_counts": {**tide.counts, "per_class": tide.class_counts},
        "pos_iou": pos_iou, "bg_iou": bg_iou, "conf": conf,
        "sizes": {"scheme": sizes[0], "bins": [asdict(b) for b in sizes[1]]},
        "n_images": evaluation["n_images"], "n_objects": sum(evaluation["gt_per_class"].values()),
        "objects_per_class": evaluation["gt_per_class"], "n_detections": evaluation["n_detections"],
        "n_shown": sum(i["tp"] + i["fp"] for i in images),
        "confusion_matrix": evaluation["confusion_matrix"],
    }


def make_report(detections: str | Path, parsed: str | Path | Dataset, out: str | Path, split: str = "test",
                conf: float = CONF, workers: int = 0, pos_iou: float = POS_IOU, bg_iou: float = BG_IOU,
                echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err,
                detect_settings: dict[str, Any] | None = None) -> Report:
    """Write the error-analysis page of ``detections`` on ``split`` of ``parsed`` into the folder ``out``.

    Args:
        detections: a detections file (``rcnn detect``'s detections.json, or COCO results), a detect run folder,
            or a model folder (detected on ``split`` first, into ``out/detect``, as ``rcnn evaluate`` does).
        parsed: the dataset (``rcnn parse``'s file, or a :class:`Dataset`).
        conf: the gallery and its per-image counts show detections scoring at least this (AP and dAP use all).
        workers: processes writing the pictures; 0 = one per core.
        pos_iou, bg_iou: TIDE's foreground and background IoU.
        detect_settings: :class:`rcnn.detect.DetectConfig` fields, for a model folder only.

    Returns:
        Where the page and report.json are, and the headline numbers.

    Raises:
        DataError: unreadable detections or dataset, an empty split, ``out`` not ours to write.
        ValueError: an invalid setting.
    """
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"'conf={conf}' is invalid; it must lie in [0, 1]")
    dataset = parsed if isinstance(parsed, Dataset) else Dataset.load(parsed)
    folder = output_dir(out, "report")
    path, model_dir = find_detections(detections, dataset, split, folder, echo, warn, detect_settings)
    dets = load_detections(path)
    evaluation = evaluate(dets, dataset, split, plot=folder / "pr_curve.png", confusion_plot=folder / "confusion_matrix.png",
                          confusion_conf=conf)
    images, classes = dataset.split(split), list(dataset.classes)
    boxes = image_boxes(dets, images, classes)
    tide = tide_errors(boxes, classes, pos_iou, bg_iou)
    sizes = size_report(boxes, len(classes), conf)
    pictures = write_gallery(images, folder, workers, warn)
    records = [{**image_record(a, b, v, classes, conf), "picture": pictures.get(a.id)}
               for a, b, v in zip(images, boxes, tide.verdicts)]
    summary = _summary(evaluation, tide, sizes, records, classes, conf, pos_iou, bg_iou)
    keys = ("id", "file_name", "path", "tp", "fp", "fn", "ap", "errors", "picture")
    json_path = write_json(folder / "report.json", {**summary, "detections": str(path), "model": model_info(path, model_dir),
                                                    "images": [{k: r[k] for k in keys} for r in records]})
    page = {**summary, "source": f"detections: {path}", "model": model_info(path, model_dir),
            "plots": ["pr_curve.png", "confusion_matrix.png"]}
    index = write_text(folder / "index.html", render_page(page, records))
    return Report(folder, index, json_path, evaluation["map50"], evaluation["map50_95"], tide.errors, len(images))


def format_report(report: Report) -> str:
    """The lines `rcnn report` prints."""
    errors = "  ".join(f"{t} {report.errors[t]:.4f}" for t in ERROR_TYPES)
    return (f"mAP@0.5 {report.map50:.4f}  mAP@[.5:.95] {report.map50_95:.4f}  on {report.n_images} images\n"
            f"dAP@0.5 if fixed: {errors}\nreport: {report.index}")
