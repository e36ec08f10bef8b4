"""Scores to detections: per-class threshold, box refinement, class-wise NMS and box voting."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .boxes import batched_nms, box_iou, clip_boxes, decode, remove_small_boxes
from .results import Detection


class Selection(Protocol):
    """The settings :func:`select_detections` reads (:class:`rcnn.detect.DetectConfig` has them)."""

    threshold: float | None
    keep_classes: list[str] | None
    box_regression: bool
    nms_iou: float
    max_detections: int
    vote_iou: float


def select_detections(boxes: np.ndarray, scores: np.ndarray, classes: list[str], config: Selection,
                      deltas: np.ndarray | None = None, image_size: tuple[int, int] | None = None) -> list[Detection]:
    """Threshold the foreground class scores, refine the boxes, apply class-wise NMS, keep the best ``max_detections``.

    Args:
        boxes (ndarray[N, 4]): proposals; scores (ndarray[N, C]): probabilities, column 0 background.
        deltas (ndarray[N, C, 4]): class-specific box regression (dx, dy, dw, dh), or None.
        config: the settings (a :class:`rcnn.detect.DetectConfig`, resolved): ``threshold``, ``keep_classes``,
            ``box_regression``, ``nms_iou``, ``max_detections``, ``vote_iou``.
        image_size: (width, height) to clip refined boxes to.

    Returns:
        At most ``max_detections`` detections, best first.
    """
    if config.threshold is None:
        raise ValueError("select_detections needs a threshold: pass DetectConfig.resolved(arch)")
    fg = scores[:, 1:]
    wanted = np.ones(fg.shape[1], bool) if config.keep_classes is None else np.isin(classes[1:], config.keep_classes)
    rows, cols = np.nonzero((fg >= config.threshold) & wanted[None, :])
    if len(rows) == 0:
        return []
    b, s, l = boxes[rows], fg[rows, cols], cols
    if deltas is not None and config.box_regression:
        b = decode(b, deltas[rows, cols + 1])
        if image_size is not None:
            b = clip_boxes(b, *image_size)
        ok = remove_small_boxes(b, 1.0)
        b, s, l = b[ok], s[ok], l[ok]
    keep = batched_nms(b, s, l, config.nms_iou)[: config.max_detections]
    kept = vote_boxes(b, s, l, keep, config.vote_iou) if config.vote_iou > 0 else b[keep]
    return [Detection(classes[int(l[k]) + 1], round(float(s[k]), 5), [round(float(v), 2) for v in kept[i]])
            for i, k in enumerate(keep)]


def vote_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, keep: np.ndarray, vote_iou: float) -> np.ndarray:
    """Box voting (Gidaris & Komodakis, 2015): each kept box becomes the score-weighted mean of
    the same-class candidates that overlap it at IoU >= ``vote_iou`` (itself included).

    Returns:
        ndarray[len(keep), 4] float32: the refined kept boxes.
    """
    if len(keep) == 0:
        return np.zeros((0, 4), np.float32)
    iou = box_iou(boxes[keep], boxes)  # (K, M)
    w = ((iou >= vote_iou) & (labels[keep][:, None] == labels[None, :])) * scores[None, :]  # (K, M)
    return ((w @ boxes) / w.sum(axis=1, keepdims=True)).astype(np.float32)
