"""The classic R-CNN's network: a backbone and a small head classifying warped region crops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone, build_backbone
from ...crop import warp_regions


def make_head(dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.2) -> nn.Sequential:
    """The reference pipeline's head: Dropout → Linear(hidden) → ReLU → Dropout → Linear(classes)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class RegionClassifier(nn.Module):
    """Backbone features → head logits over ``classes`` (index 0 is background).

    ``bbox`` is R-CNN's class-specific box regressor: a linear map from the same
    features to (dx, dy, dw, dh) per class, fitted by ridge regression after training.
    """

    def __init__(self, backbone: Backbone, n_classes: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.head = make_head(backbone.dim, n_classes, hidden, dropout)
        self.bbox = nn.Linear(backbone.dim, 4 * n_classes)
        nn.init.zeros_(self.bbox.weight)  # until fitted: no correction
        nn.init.zeros_(self.bbox.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities [N, C], box deltas [N, C, 4])."""
        f = self.backbone(x)
        return torch.softmax(self.head(f), dim=1), self.bbox(f).view(len(f), -1, 4)


def preprocess(crops: np.ndarray | torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], size: int | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 crops ``[N, H, W, 3]`` → normalised float ``[N, 3, size, size]`` in channels-last memory."""
    x = torch.as_tensor(crops).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def build(config: Any) -> RegionClassifier:
    """The untrained network a :class:`rcnn.model.ModelConfig` of this architecture describes."""
    return RegionClassifier(build_backbone(config.backbone, "none"), len(config.classes), config.hidden, config.dropout)


def warp_for(model: Any, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """uint8 crops ``[N, S, S, 3]`` of ``boxes`` (original pixels), warped as in training (same share of context)."""
    crop, size = model.config.crop, model.input_size
    return warp_regions(image, boxes, size, int(round(crop.context * size / crop.size)))


def score_boxes(model: Any, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of ``boxes`` in an RGB image: each region
    warped and the crops classified in batches (``model``: a :class:`rcnn.model.LoadedModel`)."""
    return model.predict(warp_for(model, image, boxes), batch_size)
