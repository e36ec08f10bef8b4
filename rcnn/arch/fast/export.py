"""Fast R-CNN's ONNX graph: backbone + RoIAlign + head on one resized, normalised, padded image and its regions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .network import BOX_WEIGHTS, scale_factors


class FastGraph(nn.Module):
    """A :class:`FastRCNN` after its resize transform: ``image`` ``[1, 3, H, W]`` and ``rois`` ``[R, 4]`` (that
    image's pixels) → ``scores`` ``[R, C]`` (softmax) and ``deltas`` ``[R, C, 4]`` (R-CNN's unit-weight deltas).

    RoIAlign is torchvision's, called with the strides of the two maps (16 and 8) and the sampling
    ratio ``MultiScaleRoIAlign`` uses in the PyTorch model.
    """

    INPUTS = ("image", "rois")
    # R, H and W are dynamic
    DYNAMIC = {"scores": {0: "regions"}, "deltas": {0: "regions"}, "image": {2: "height", 3: "width"}, "rois": {0: "regions"}}

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.ops import roi_align

        maps = self.net.late(self.net.early(image))
        size = self.net.roi_heads.box_roi_pool.output_size
        pooled = roi_align(maps["coarse"], [rois], size, 1 / 16, 2)
        if self.net.fine_features:
            pooled = torch.cat([pooled, roi_align(maps["fine"], [rois], size, 1 / 8, 2)], dim=1)
        h = self.net.roi_heads
        logits, regression = h.box_predictor(h.box_head(pooled))
        c = h.box_predictor.cls_score.out_features
        return torch.softmax(logits, dim=1), regression.view(-1, c, 4) / torch.tensor(BOX_WEIGHTS, device=regression.device)

    @staticmethod
    def inputs(model: Any, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs of ``boxes`` (original pixels) in an RGB image: the prepared image and the scaled rois."""
        x, size = model.net.prepare(image)
        rois = torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4) * scale_factors(image.shape[:2], size)
        return {"image": x.cpu().numpy(), "rois": rois.numpy()}

    @staticmethod
    def run(sess: Any, feeds: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, deltas) of ``feeds`` by the onnxruntime session ``sess`` (one pass; ``batch`` is not used)."""
        scores, deltas = sess.run(None, feeds)
        return scores, deltas
