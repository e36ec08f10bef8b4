"""Settings of Faster R-CNN: :class:`FasterConfig` (torch-free; saved in the model folder)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..fast.config import FastConfig, check_model_config as check_fast_model_config

# Anchor sides (pixels of the resized image, short side image_size) at every stride-16 cell, each with every
# ratio (height / width): 16-512 px in half-octave steps. bench/anchors.py, train splits of the dev suite: the share of
# ground-truth boxes some anchor covers at IoU >= 0.7 (the RPN's object threshold) is 0.99 / 0.91 / 0.63 on raccoon /
# bccd / roadsigns, against 0.44 / 0.17 / 0.32 with octave steps (16, 32, ..., 512; torchvision's spacing).
ANCHOR_SIZES = (16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)


@dataclass
class FasterConfig(FastConfig):
    """Faster R-CNN training settings (Fast R-CNN's, plus the region proposal network's); saved in the model folder.

    The RPN's defaults are torchvision's (``fasterrcnn_resnet50_fpn``) unless a comment says otherwise.
    """

    # The head's backgrounds: RPN proposals with IoU in [bg_iou_low, fg_iou). 0 (torchvision's): any of them. Fast
    # R-CNN's 0.1 (hard negatives only) gave raccoon's dev split 0.873 against 0.864 mAP@0.5 after 12 epochs
    # (bench/faster_epochs.py), and 0.809 against 0.853 at the default 8 (bench/quality.py, seeds 0 and 1): not adopted.
    bg_iou_low: float = 0.0
    anchor_sizes: tuple[int, ...] = ANCHOR_SIZES
    anchor_ratios: tuple[float, ...] = ANCHOR_RATIOS
    rpn_fg_iou: float = 0.7  # an anchor is an object at IoU >= this with a ground-truth box ...
    rpn_bg_iou: float = 0.3  # ... and background below this
    rpn_batch: int = 256  # anchors sampled per image for the RPN's loss, half of them objects at most
    rpn_nms_iou: float = 0.7  # NMS among the proposals of an image
    rpn_pre_nms_train: int = 2000  # best anchors kept before that NMS, in training ...
    rpn_post_nms_train: int = 2000  # ... and proposals after it (RoIHeads samples rois_per_image of them)
    rpn_pre_nms_test: int = 1000  # the same at detection (the detector scores the first scored_proposals)
    rpn_post_nms_test: int = 1000
    # Training: this many jittered copies of each ground-truth box join the RPN's proposals among which the head
    # samples its regions (centre moved and sides scaled by up to gt_jitter_scale of the box): the head then sees
    # positives of every overlap, as Fast R-CNN does among selective search's regions. 0: torchvision's (none).
    # Dev suite (bench/quality.py, seeds 0 and 1): 16 copies gave raccoon 0.824 against 0.853 mAP@0.5, bccd (seed 0)
    # 0.883 against 0.880; with bg_iou_low 0.1 as well, raccoon 0.840. Off.
    gt_jitter: int = 0
    gt_jitter_scale: float = 0.25
    # Detection: move each proposal by the head's box deltas and score it again, this many times (0: once, as
    # Fast R-CNN scores its proposals). Measured on the dev suite in docs/faster.md.
    refine_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.anchor_ratios = tuple(float(r) for r in self.anchor_ratios)
        if not self.anchor_sizes or not self.anchor_ratios or min(self.anchor_sizes) < 1 or min(self.anchor_ratios) <= 0:
            raise ValueError(f"need anchor sizes >= 1 and ratios > 0; got {self.anchor_sizes}, {self.anchor_ratios}")
        if not 0.0 <= self.rpn_bg_iou <= self.rpn_fg_iou <= 1.0 or not 0.0 < self.rpn_nms_iou <= 1.0:
            raise ValueError(f"need 0 <= rpn_bg_iou <= rpn_fg_iou <= 1 and 0 < rpn_nms_iou <= 1; got {self.rpn_bg_iou}, "
                             f"{self.rpn_fg_iou}, {self.rpn_nms_iou}")
        counts = (self.rpn_batch, self.rpn_pre_nms_train, self.rpn_post_nms_train, self.rpn_pre_nms_test, self.rpn_post_nms_test)
        if self.gt_jitter < 0 or not 0.0 <= self.gt_jitter_scale < 1.0:
            raise ValueError(f"need gt_jitter >= 0 and 0 <= gt_jitter_scale < 1; got {self.gt_jitter}, {self.gt_jitter_scale}")
        if min(counts) < 1 or not 0 <= self.refine_steps <= 3:
            raise ValueError(f"the RPN's batch and proposal counts must be >= 1 and refine_steps in [0, 3]; got {counts}, "
                             f"{self.refine_steps}")


def from_record(train: dict[str, Any]) -> FasterConfig:
    """The :class:`FasterConfig` a model folder's ``config.json`` records under "train"; raises ValueError."""
    known = {f.name for f in fields(FasterConfig)}
    try:
        return FasterConfig(**{k: v for k, v in train.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f"'train' of a faster model is invalid: {e}") from None


def check_model_config(config: Any) -> None:
    """Faster R-CNN's fields of a :class:`rcnn.model.ModelConfig`: Fast R-CNN's, and the RPN's settings in "train"."""
    check_fast_model_config(config)
    if not isinstance(config.train, dict):
        raise ValueError("'train' of a faster model must be an object")
    from_record(config.train)
