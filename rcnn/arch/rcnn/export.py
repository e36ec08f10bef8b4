"""The classic R-CNN's ONNX graph: a batch of warped, normalised crops → (softmax scores, deltas)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .network import preprocess, warp_for


class ClassicGraph(nn.Module):
    """A :class:`RegionClassifier` as one graph: ``crops`` ``[B, 3, S, S]`` → ``scores`` ``[B, C]``, ``deltas`` ``[B, C, 4]``."""

    INPUTS = ("crops",)
    DYNAMIC = {"scores": {0: "batch"}, "deltas": {0: "batch"}, "crops": {0: "batch"}}  # B is dynamic

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.backbone(crops)
        return torch.softmax(self.net.head(f), dim=1), self.net.bbox(f).view(-1, self.net.head[-1].out_features, 4)

    @staticmethod
    def inputs(model: Any, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's input of ``boxes`` (original pixels) in an RGB image: the warped, normalised crops."""
        s = model.input_size
        return {"crops": preprocess(warp_for(model, image, boxes), model.mean, model.std, s).contiguous().numpy()}

    @staticmethod
    def run(sess: Any, feeds: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, deltas) of ``feeds`` by the onnxruntime session ``sess``, ``batch`` crops at a time."""
        crops = feeds["crops"]
        outs = [sess.run(None, {"crops": crops[s : s + batch]}) for s in range(0, len(crops), batch)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
