"""Scores to detections: per-class threshold, box refinement, class-wise NMS and box voting, and the
horizontal-flip test-time augmentation's merge of an image's regions with its mirror's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .boxes import batched_nms, box_iou, clip_boxes, decode, remove_small_boxes
from .results import Detection


@dataclass(frozen=True)
class PostProcess:
    """Class-wise NMS and box voting, as a model folder records them (:class:`rcnn.model.ModelConfig`): fitted on the
    training run's hold-out images (:mod:`rcnn.tune`). The defaults are what detection used before they were fitted,
    so a model folder written before keeps detecting as it did."""

    nms_iou: float = 0.3  # R-CNN's class-wise NMS IoU
    vote: bool = True  # box voting after NMS: on the raccoon test split it took mAP@0.5 from 0.57 to 0.66
    vote_iou: float = 0.5  # ... averaging each kept box with the same-class boxes overlapping it at IoU >= this

    def __post_init__(self) -> None:
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"'nms_iou={self.nms_iou}' is invalid; it must lie in (0, 1]")
        if not (0.0 < self.vote_iou <= 1.0 if self.vote else 0.0 <= self.vote_iou <= 1.0):
            raise ValueError(f"'vote_iou={self.vote_iou}' is invalid; it must lie in {'(0, 1]' if self.vote else '[0, 1]'}")

    @property
    def voting_iou(self) -> float:
        """The voting IoU as :class:`rcnn.detect.DetectConfig` takes it: 0 = off."""
        return self.vote_iou if self.vote else 0.0

    @classmethod
    def of(cls, nms_iou: float, vote_iou: float) -> PostProcess:
        """The setting of NMS at ``nms_iou`` and voting at ``vote_iou`` (0: no voting)."""
        return cls(nms_iou, vote_iou > 0, vote_iou)


DEFAULT_POSTPROCESS = PostProcess()  # a model folder without fitted values (written before they were fitted)


class Selection(Protocol):
    """The settings :func:`select_detections` reads (:class:`rcnn.detect.DetectConfig` has them)."""

    threshold: float | None
    keep_classes: list[str] | None
    box_regression: bool
    nms_iou: float | None
    max_detections: int
    vote_iou: float | None


def select_detections(boxes: np.ndarray, scores: np.ndarray, classes: list[str], config: Selection,
                      deltas: np.ndarray | None = None, image_size: tuple[int, int] | None = None) -> list[Detection]:
    """Threshold the foreground class scores, refine the boxes, apply class-wise NMS, keep the best ``max_detections``.

    Args:
        boxes (ndarray[N, 4]): proposals; scores (ndarray[N, C]): probabilities, column 0 background.
        deltas (ndarray[N, C, 4]): class-specific box regression (dx, dy, dw, dh), or None.
        config: the settings (a :class:`rcnn.detect.DetectConfig`, resolved): ``threshold``, ``keep_classes``,
            ``box_regression``, ``nms_iou``, ``max_detections``, ``vote_iou`` (``nms_iou`` / ``vote_iou`` None:
            :data:`DEFAULT_POSTPROCESS`'s, those of a model without fitted ones).
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
    nms_iou = DEFAULT_POSTPROCESS.nms_iou if config.nms_iou is None else config.nms_iou
    vote_iou = DEFAULT_POSTPROCESS.voting_iou if config.vote_iou is None else config.vote_iou
    keep = batched_nms(b, s, l, nms_iou)[: config.max_detections]
    kept = vote_boxes(b, s, l, keep, vote_iou) if vote_iou > 0 else b[keep]
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


def mirror_regions(boxes: np.ndarray, deltas: np.ndarray | None, width: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Regions of an image in the pixels of its horizontal mirror, or back (the map is its own inverse).

    Args:
        boxes (ndarray[N, 4]): (x1, y1, x2, y2) in pixels; deltas (ndarray[N, C, 4]): their box regression
            (dx, dy, dw, dh), or None; width: the image width (the mirror maps x to ``width - x``).

    Returns:
        (boxes [N, 4], deltas [N, C, 4] or None): new arrays; dx changes sign (a shift right in the mirror is a
        shift left in the image), dy, dw and dh are unchanged.
    """
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1).astype(boxes.dtype)
    if deltas is None:
        return flipped, None
    return flipped, deltas * np.array([-1, 1, 1, 1], deltas.dtype)
