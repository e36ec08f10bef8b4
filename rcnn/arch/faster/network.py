"""Faster R-CNN's network: Fast R-CNN's (:class:`rcnn.arch.fast.network.FastRCNN`) with torchvision's region
proposal network (``AnchorGenerator``, ``RPNHead``, ``RegionProposalNetwork``) on the stride-16 map."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image

from ..fast.network import BOX_WEIGHTS, FastRCNN, out_channels, scale_factors
from .config import FasterConfig, from_record


class FasterRCNN(FastRCNN):
    """Resize + normalise, frozen stages, trained stages, then the RPN's proposals pooled and scored by the head.

    Boxes taken and returned by :meth:`detect` and :meth:`propose` are in original-image pixels.
    """

    def __init__(self, config: FasterConfig, n_classes: int, weights: str | None = None) -> None:
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

        c = config
        super().__init__(c.backbone, weights or c.weights, n_classes, c.image_size, c.max_image_size, c.frozen_stages,
                         c.roi_size, c.hidden, c.fine_features, c.fg_iou, c.rois_per_image, c.fg_fraction)
        anchors = AnchorGenerator((tuple(c.anchor_sizes),), (tuple(c.anchor_ratios),))
        channels = out_channels(self.stages[-1])
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]), c.rpn_fg_iou, c.rpn_bg_iou, c.rpn_batch,
            0.5, {"training": c.rpn_pre_nms_train, "testing": c.rpn_pre_nms_test},
            {"training": c.rpn_post_nms_train, "testing": c.rpn_post_nms_test}, c.rpn_nms_iou)
        self.refine_steps = c.refine_steps

    def proposals(self, maps: dict[str, torch.Tensor], size: tuple[int, int],
                  targets: list[dict[str, torch.Tensor]] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The RPN's proposals ``[P, 4]`` (resized pixels, best first) of one image's maps, and (given ``targets``, in
        training) its losses ``loss_objectness`` and ``loss_rpn_box_reg``."""
        from torchvision.models.detection.image_list import ImageList

        coarse = maps["coarse"]
        # the anchor generator reads the strides from the padded image's shape only: a view of one zero is enough
        padded = coarse.new_zeros(()).expand(1, 3, coarse.shape[-2] * 16, coarse.shape[-1] * 16)
        boxes, losses = self.rpn(ImageList(padded, [size]), {"0": coarse}, targets)
        return boxes[0], losses

    @torch.inference_mode()
    def detect(self, image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the first ``n`` proposals ``[N, 4]``, their class probabilities ``[N, C]``, box deltas ``[N, C, 4]``).

        With ``refine_steps``, each proposal is first moved by the head's deltas for its best class and pooled and
        scored again (iterative box regression, Gidaris & Komodakis 2015); the moved boxes are returned.
        """
        x, size = self.prepare(image)
        maps = self.late(self.early(x))
        boxes = self.proposals(maps, size)[0][:n]
        c = self.roi_heads.box_predictor.cls_score.out_features
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0, c), np.float32), np.zeros((0, c, 4), np.float32)
        logits, regression = self.roi_outputs(maps, [boxes], [size])
        for _ in range(self.refine_steps):
            best = logits[:, 1:].argmax(1) + 1
            moved = self.roi_heads.box_coder.decode_single(regression.view(len(boxes), -1, 4)[torch.arange(len(boxes)), best], boxes)
            boxes = clip_boxes_to_image(moved, size)
            logits, regression = self.roi_outputs(maps, [boxes], [size])
        deltas = regression.view(len(boxes), -1, 4) / torch.tensor(BOX_WEIGHTS, device=x.device)
        original = boxes / scale_factors(image.shape[:2], size).to(boxes.device)
        return (original.float().cpu().numpy(), torch.softmax(logits, 1).float().cpu().numpy(), deltas.float().cpu().numpy())

    @torch.inference_mode()
    def propose(self, image: np.ndarray, n: int) -> np.ndarray:
        """The first ``n`` proposals ``[N, 4]`` of the RPN, best first."""
        x, size = self.prepare(image)
        boxes = self.proposals(self.late(self.early(x)), size)[0][:n]
        return (boxes / scale_factors(image.shape[:2], size).to(boxes.device)).float().cpu().numpy()


def build(config: Any) -> FasterRCNN:
    """The untrained network a :class:`rcnn.model.ModelConfig` of this architecture describes."""
    settings = from_record(config.train)
    return FasterRCNN(settings, len(config.classes), "none")


def detect_regions(model: Any, image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The registry's detector (:attr:`rcnn.arch.ArchSpec.detector`): regions and scores of one pass over ``image``."""
    return model.net.detect(image, n)


def propose_regions(model: Any, image: np.ndarray, n: int) -> np.ndarray:
    """The registry's proposer (:attr:`rcnn.arch.ArchSpec.proposer`): the RPN's first ``n`` regions of ``image``."""
    return model.net.propose(image, n)
