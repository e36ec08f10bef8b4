"""Fast R-CNN's losses, its validation, and the trained part of a step as one module (what DDP wraps)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSample, sample_targets
from .network import FastRCNN


def roi_loss(logits: torch.Tensor, regression: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
             weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's loss: cross-entropy (optionally class-weighted) + smooth L1 of the true class's deltas
    over the object regions, divided by all regions (torchvision's ``fastrcnn_loss``)."""
    cls = F.cross_entropy(logits, labels, weight=weight)
    pos = torch.where(labels > 0)[0]
    reg = regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    box = F.smooth_l1_loss(reg, targets[pos], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
    return cls, box


def step_loss(net: FastRCNN, sample: ImageSample, flip: bool, weight: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample regions of one image (RoIHeads' matcher and sampler; ground truth added) and return the losses."""
    f, props, gt = sample_targets(sample, flip)
    targets = [{"boxes": gt.to(device), "labels": sample.labels.to(device)}]
    rois, _, labels, reg_targets = net.roi_heads.select_training_samples([props.to(device)], targets)
    logits, regression = net.roi_outputs(net.late(f.to(device).float()), rois, [sample.size])
    return roi_loss(logits, regression, labels[0], reg_targets[0], weight)


@torch.inference_mode()
def validate(net: FastRCNN, samples: list[ImageSample], n_classes: int, fg_iou: float, device: torch.device) -> tuple[float, np.ndarray]:
    """Loss over *every* candidate region of the validation images (deterministic), and the confusion matrix."""
    from torchvision.ops import box_iou

    net.eval()
    total, count = 0.0, 0
    cm = np.zeros((n_classes, n_classes), np.int64)
    for s in samples:
        rois = torch.cat([s.proposals, s.gt]) if len(s.gt) else s.proposals
        if len(rois) == 0:
            continue
        labels = torch.zeros(len(rois), dtype=torch.long)
        targets = torch.zeros(len(rois), 4)
        if len(s.gt):
            iou, idx = box_iou(rois, s.gt).max(dim=1)
            fg = iou >= fg_iou
            labels[fg] = s.labels[idx[fg]]
            targets = net.roi_heads.box_coder.encode_single(s.gt[idx], rois)
        logits, regression = net.roi_outputs(net.late(s.features[0].to(device).float()), [rois.to(device)], [s.size])
        cls, box = roi_loss(logits.cpu(), regression.cpu(), labels, targets, None)
        total += float(cls + box) * len(rois)
        count += len(rois)
        np.add.at(cm, (labels.numpy(), logits.argmax(1).cpu().numpy()), 1)
    net.train()
    return total / max(count, 1), cm


def class_weight_tensor(spec: str, labels: list[torch.Tensor], n_classes: int) -> torch.Tensor | None:
    """None, or inverse-frequency weights of the object classes (mean 1 over them) with background 1."""
    if spec == "none":
        return None
    counts = torch.bincount(torch.cat(labels), minlength=n_classes)[1:].float().clamp(min=1)
    w = 1.0 / counts
    return torch.cat([torch.ones(1), w / w.mean()])


# --------------------------------------------------------------------------- training


def roi_loss_sums(logits: torch.Tensor, regression: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                  weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`roi_loss` as sums, so that a step's regions may be spread over processes.

    Returns:
        (class-weighted cross-entropy summed, smooth L1 summed, ``[2]`` (sum of the regions' class
        weights, number of regions)): the first over the total weight plus the second over the total
        regions of a step is :func:`roi_loss` of all of the step's regions together.
    """
    cls = F.cross_entropy(logits, labels, weight=weight, reduction="sum")
    pos = torch.where(labels > 0)[0]
    reg = regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    box = F.smooth_l1_loss(reg, targets[pos], beta=1 / 9, reduction="sum")
    n = torch.tensor(float(len(labels)), device=logits.device)
    return cls, box, torch.stack([weight[labels].sum() if weight is not None else n, n]).detach()


class StepNet(nn.Module):
    """The trained part of an SGD step as one ``forward``, what DistributedDataParallel wraps: the trained
    stages, RoIAlign and the head on each image's cached frozen-stage output and sampled regions."""

    def __init__(self, net: FastRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, feats: list[torch.Tensor], rois: list[torch.Tensor],
                sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits ``[N, C]``, box regression ``[N, 4C]``) of every image's regions, concatenated."""
        outs = [self.net.roi_outputs(self.net.late(f), [r], [size]) for f, r, size in zip(feats, rois, sizes)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

