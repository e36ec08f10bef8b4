"""Settings of Fast R-CNN: :class:`FastConfig` (torch-free; saved in the model folder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKBONE_STAGES = ("efficientnet_lite0", "mobilenet_v2")  # backbones cut into stages (rcnn.arch.fast.network)


@dataclass
class FastConfig:
    """Fast R-CNN training settings; saved in the model folder."""

    backbone: str = "efficientnet_lite0"  # efficientnet_lite0 (ImageNet weights offline) or mobilenet_v2
    weights: str = "imagenet"  # "imagenet", "none" (random) or a path to a state dict
    image_size: int = 448  # resize each image so its short side is this many pixels ...
    max_image_size: int = 800  # ... and its long side at most this
    # The first N of the backbone's five stages (strides 2, 4, 8, 16, 16) stay frozen and their output is
    # cached per image; the rest train. 3: the stem and early stages, as the Fast R-CNN paper froze conv1-2.
    frozen_stages: int = 3
    roi_size: int = 7  # RoIAlign output side
    hidden: int = 256  # width of the two fully connected layers of the head
    fine_features: bool = True  # pool each region from the stride-8 map too (needs frozen_stages <= 3)
    epochs: int = 8  # passes over the training images; the best validation epoch is kept
    # Images per SGD step, their regions' losses averaged together (Fast R-CNN: 2). Under torchrun it is the
    # global batch, split evenly over the processes, so it must be a multiple of their number. Above 1, an
    # epoch's images left over after whole steps wait for the next epoch's shuffle.
    images_per_step: int = 1
    rois_per_image: int = 128  # regions sampled per step (Fast R-CNN: 64 per image, 2 images)
    fg_fraction: float = 0.25  # share of them with IoU >= fg_iou (Fast R-CNN: 0.25)
    fg_iou: float = 0.5  # a region is an object when its IoU with a ground-truth box is at least this
    bg_iou_low: float = 0.1  # backgrounds are sampled from IoU in [bg_iou_low, fg_iou): hard negatives
    # SGD learning rate (momentum 0.9), warmed up over 200 steps, then cosine-decayed to 0.
    # On raccoon 0.01 diverged (training loss 1e26 in the first epoch); 0.002 trains.
    lr: float = 0.002
    weight_decay: float = 1e-4
    class_weights: str = "none"  # "none" or "auto" (inverse frequency of the objects, background 1)
    hflip: bool = True  # horizontal-flip augmentation (flipped images are cached too)
    val_fraction: float = 0.1  # share of training images held out to pick the best epoch
    seed: int = 0
    device: str = "auto"  # "auto" (GPU when there is one), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_STAGES:
            raise ValueError(f"'backbone={self.backbone}' is invalid for --arch fast; valid backbones are {', '.join(BACKBONE_STAGES)}")
        if not 32 <= self.image_size <= self.max_image_size <= 2048:
            raise ValueError(f"need 32 <= image_size <= max_image_size <= 2048; got {self.image_size}, {self.max_image_size}")
        if not 0 <= self.frozen_stages <= (3 if self.fine_features else 4):
            raise ValueError(f"'frozen_stages={self.frozen_stages}' is invalid; it must be in [0, 4] (at most 3 with fine_features)")
        if not 0.0 < self.fg_fraction < 1.0 or not 0.0 <= self.bg_iou_low < self.fg_iou <= 1.0:
            raise ValueError(f"need 0 < fg_fraction < 1 and 0 <= bg_iou_low < fg_iou <= 1; got {self.fg_fraction}, "
                             f"{self.bg_iou_low}, {self.fg_iou}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"'val_fraction={self.val_fraction}' is invalid; it must be in (0, 1)")
        if self.class_weights not in ("none", "auto"):
            raise ValueError(f"'class_weights={self.class_weights}' is invalid for --arch fast; use none or auto")
        if self.images_per_step < 1:
            raise ValueError(f"'images_per_step={self.images_per_step}' is invalid; it must be >= 1")
        if self.epochs < 1 or self.rois_per_image < 4 or self.lr <= 0 or self.roi_size < 1 or self.hidden < 1:
            raise ValueError(f"need epochs >= 1, rois_per_image >= 4, lr > 0, roi_size >= 1, hidden >= 1; got "
                             f"{self.epochs}, {self.rois_per_image}, {self.lr}, {self.roi_size}, {self.hidden}")



def check_model_config(config: Any) -> None:
    """Fast R-CNN's fields of a :class:`rcnn.model.ModelConfig` (``input_size`` is then the short side images
    are resized to, ``max_size`` the long side's limit); raises ValueError naming them."""
    c = config
    if not (_is_int(c.max_size) and c.input_size <= c.max_size <= 2048 and _is_int(c.frozen_stages)
            and 0 <= c.frozen_stages <= 4 and _is_int(c.roi_size) and 1 <= c.roi_size <= 64
            and isinstance(c.fine_features, bool)):
        raise ValueError(f"'max_size={c.max_size!r}', 'frozen_stages={c.frozen_stages!r}', "
                         f"'roi_size={c.roi_size!r}' are invalid for a fast model")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
