"""Box maths on NumPy arrays, delegating to :mod:`torchvision.ops` where it has the op.

Convention: boxes are ``ndarray[N, 4]`` of ``(x1, y1, x2, y2)`` in pixels with
``x1 < x2`` and ``y1 < y2``. Every function returns new arrays and never mutates
its inputs; empty inputs give empty outputs of the right dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import ops


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1, 4))


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU.

    Args:
        boxes1 (ndarray[N, 4]): (x1, y1, x2, y2) in pixels.
        boxes2 (ndarray[M, 4]): (x1, y1, x2, y2) in pixels.

    Returns:
        ndarray[N, M] float32: the IoU of every pair.
    """
    return ops.box_iou(_t(boxes1), _t(boxes2)).numpy()


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Returns:
        ndarray[K] int64: indices of the kept boxes, by descending score.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    return ops.nms(_t(boxes), torch.as_tensor(scores, dtype=torch.float32), iou_threshold).numpy()


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-wise NMS: boxes of different ``labels`` never suppress each other.

    Returns:
        ndarray[K] int64: indices of the kept boxes, by descending score.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = ops.batched_nms(
        _t(boxes), torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64), iou_threshold
    )
    return keep.numpy()


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to the image ``[0, width] x [0, height]``; returns float32[N, 4]."""
    out = ops.clip_boxes_to_image(_t(boxes), (int(height), int(width)))
    return out.numpy()


def remove_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """Indices (int64, in order) of the boxes whose width and height are both at least ``min_size`` pixels."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    return ops.remove_small_boxes(_t(boxes), min_size).numpy()


def encode(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R-CNN regression targets from proposals to their matched ground-truth boxes.

    Args:
        proposals (ndarray[N, 4]), targets (ndarray[N, 4]): (x1, y1, x2, y2) in pixels.

    Returns:
        ndarray[N, 4] float32: (dx, dy, dw, dh) with dx = (gx - px) / pw and
        dw = log(gw / pw), centres and sizes in pixels.
    """
    p = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    dx = ((g[:, 0] + 0.5 * gw) - (p[:, 0] + 0.5 * pw)) / pw
    dy = ((g[:, 1] + 0.5 * gh) - (p[:, 1] + 0.5 * ph)) / ph
    return np.stack([dx, dy, np.log(gw / pw), np.log(gh / ph)], axis=1).astype(np.float32)


def decode(proposals: np.ndarray, deltas: np.ndarray, clamp: float = np.log(1000.0 / 16)) -> np.ndarray:
    """Inverse of :func:`encode`: apply (dx, dy, dw, dh) to proposals; returns float32[N, 4]."""
    p = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    d = np.asarray(deltas, dtype=np.float64).reshape(-1, 4)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    cx, cy = p[:, 0] + 0.5 * pw + d[:, 0] * pw, p[:, 1] + 0.5 * ph + d[:, 1] * ph
    w, h = pw * np.exp(np.minimum(d[:, 2], clamp)), ph * np.exp(np.minimum(d[:, 3], clamp))
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1).astype(np.float32)


def expand_for_context(boxes: np.ndarray, size: int, context: int) -> np.ndarray:
    """Grow boxes so that, once warped to ``size`` pixels, ``context`` pixels of surround remain.

    R-CNN's "padding p = 16": a box of width w becomes w * size / (size - 2 * context), about its centre.

    Returns:
        ndarray[N, 4] float32 (not clipped to the image).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if context <= 0:
        return b.copy()
    if 2 * context >= size:
        raise ValueError(f"context={context} must be less than half of size={size}")
    scale = size / (size - 2.0 * context)
    c = 0.5 * (b[:, :2] + b[:, 2:])
    half = 0.5 * (b[:, 2:] - b[:, :2]) * scale
    return np.concatenate([c - half, c + half], axis=1).astype(np.float32)
