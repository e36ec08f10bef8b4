"""Fast R-CNN's network, built from torchvision's detection parts (``GeneralizedRCNNTransform``,
``MultiScaleRoIAlign``, ``RoIHeads`` with its matcher, sampler and ``BoxCoder``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...backbones import build_backbone
from .config import BACKBONE_STAGES, FastConfig

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's BoxCoder weights of Fast/Faster R-CNN


def backbone_stages(name: str, weights: str) -> tuple[list[nn.Module], int, tuple[float, ...], tuple[float, ...]]:
    """The backbone cut into five stages ending at strides 2, 4, 8, 16, 16, and the channels of the last.

    Returns:
        (stages, channels, mean, std).
    """
    bb = build_backbone(name, weights)
    if name == "efficientnet_lite0":
        m = bb.module
        stages = [nn.Sequential(m.conv_stem, m.bn1, m.blocks[0]), m.blocks[1], m.blocks[2], m.blocks[3], m.blocks[4]]
        channels = m.blocks[4][-1].bn3.num_features
    elif name == "mobilenet_v2":
        f = bb.module[0]
        stages = [f[0:2], f[2:4], f[4:7], f[7:11], f[11:14]]
        channels = f[13].out_channels
    else:
        raise ValueError(f"'backbone={name}' is invalid for --arch fast; valid backbones are {', '.join(BACKBONE_STAGES)}")
    return stages, channels, bb.mean, bb.std


class FastRCNN(nn.Module):
    """Resize + normalise (``transform``), frozen stages, trained stages, RoIAlign, head.

    Boxes given to and returned by :meth:`predict` are in original-image pixels.
    """

    def __init__(self, backbone: str, weights: str, n_classes: int, image_size: int, max_image_size: int,
                 frozen_stages: int, roi_size: int, hidden: int, fine_features: bool = True, fg_iou: float = 0.5,
                 rois_per_image: int = 128, fg_fraction: float = 0.25) -> None:
        super().__init__()
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.transform import GeneralizedRCNNTransform
        from torchvision.ops import MultiScaleRoIAlign

        if fine_features and frozen_stages > 3:
            raise ValueError(f"'frozen_stages={frozen_stages}' leaves no stride-8 map for fine_features; use at most 3")
        stages, channels, mean, std = backbone_stages(backbone, weights)
        self.transform = GeneralizedRCNNTransform(image_size, max_image_size, list(mean), list(std), size_divisible=16)
        self.stages = nn.ModuleList(stages)
        self.frozen_stages = frozen_stages
        self.fine_features = fine_features
        for p in self.stages[:frozen_stages].parameters():
            p.requires_grad_(False)
        for m in self.stages[frozen_stages:].modules():  # one image per step: batch statistics would be noise
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)
        fine = out_channels(stages[2]) if fine_features else 0
        self.fine_pool = MultiScaleRoIAlign(["0"], roi_size, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0"], roi_size, sampling_ratio=2), TwoMLPHead((channels + fine) * roi_size**2, hidden),
            FastRCNNPredictor(hidden, n_classes), fg_iou_thresh=fg_iou, bg_iou_thresh=fg_iou,
            batch_size_per_image=rois_per_image, positive_fraction=fg_fraction, bbox_reg_weights=BOX_WEIGHTS,
            score_thresh=0.0, nms_thresh=0.5, detections_per_img=100,
        )

    def train(self, mode: bool = True) -> FastRCNN:
        """Train the head and trunk; the frozen stages and every BatchNorm keep their ImageNet statistics."""
        super().train(mode)
        self.stages[: self.frozen_stages].eval()
        for m in self.stages[self.frozen_stages :].modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 RGB ``[H, W, 3]`` → the resized, normalised, padded batch ``[1, 3, H', W']`` and (h, w) unpadded."""
        device = next(self.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)
        images, _ = self.transform([x])
        return images.tensors, tuple(images.image_sizes[0])

    def early(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the frozen stages (what training caches)."""
        with torch.no_grad():
            for stage in self.stages[: self.frozen_stages]:
                x = stage(x)
        return x

    def late(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trained stages on the frozen stages' output: the stride-16 map, and the stride-8 one."""
        maps = {"fine": x} if self.frozen_stages == 3 else {}
        for i in range(self.frozen_stages, len(self.stages)):
            x = self.stages[i](x)
            if i == 2:
                maps["fine"] = x
        return {**maps, "coarse": x}

    def roi_outputs(self, maps: dict[str, torch.Tensor], boxes: list[torch.Tensor], sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits ``[N, C]``, box regression ``[N, 4C]``) of ``boxes`` (resized-image pixels).

        Each box is pooled from the stride-16 map and, with ``fine_features``, from the stride-8 map
        too (small objects such as platelets span two cells at stride 16); the two are stacked.
        """
        h = self.roi_heads
        pooled = h.box_roi_pool({"0": maps["coarse"]}, boxes, sizes)
        if self.fine_features:
            pooled = torch.cat([pooled, self.fine_pool({"0": maps["fine"].to(pooled.dtype)}, boxes, sizes)], dim=1)
        return h.box_predictor(h.box_head(pooled))

    @torch.inference_mode()
    def predict(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` (R-CNN's, unit weights) of ``boxes``."""
        n = len(boxes)
        if n == 0:
            c = self.roi_heads.box_predictor.cls_score.out_features
            return np.zeros((0, c), np.float32), np.zeros((0, c, 4), np.float32)
        x, size = self.prepare(image)
        maps = self.late(self.early(x))
        scale = scale_factors(image.shape[:2], size)
        b = torch.from_numpy(boxes).to(x.device).float() * scale
        logits, regression = self.roi_outputs(maps, [b], [size])
        deltas = regression.view(n, -1, 4) / torch.tensor(BOX_WEIGHTS, device=x.device)
        return torch.softmax(logits, 1).float().cpu().numpy(), deltas.float().cpu().numpy()


def out_channels(stage: nn.Module) -> int:
    """Channels a backbone stage outputs (its last BatchNorm's)."""
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def scale_factors(original: tuple[int, int], resized: tuple[int, int]) -> torch.Tensor:
    """Multipliers ``[4]`` taking (x1, y1, x2, y2) from original to resized pixels."""
    sy, sx = resized[0] / original[0], resized[1] / original[1]
    return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


def build_net(config: FastConfig, n_classes: int, weights: str | None = None) -> FastRCNN:
    return FastRCNN(config.backbone, weights or config.weights, n_classes, config.image_size, config.max_image_size,
                    config.frozen_stages, config.roi_size, config.hidden, config.fine_features, config.fg_iou,
                    config.rois_per_image, config.fg_fraction)



_scale = scale_factors  # its name before rcnn.arch


def build(config: Any) -> FastRCNN:
    """The untrained network a :class:`rcnn.model.ModelConfig` of this architecture describes."""
    return FastRCNN(config.backbone, "none", len(config.classes), config.input_size, config.max_size, config.frozen_stages,
                    config.roi_size, config.hidden, config.fine_features)


def score_boxes(model: Any, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of ``boxes`` in an RGB image, pooled from one pass
    over the image (``model``: a :class:`rcnn.model.LoadedModel`; ``batch_size`` is not used)."""
    return model.net.predict(image, boxes)
