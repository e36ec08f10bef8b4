"""Fast R-CNN (Girshick, ICCV 2015) on selective-search proposals: ``--arch fast``.

The backbone runs once per image (resized so its short side is ``image_size``); every
proposal is pooled from its stride-16 feature map with RoIAlign and a small head gives
class scores and class-specific box deltas. It is built from torchvision's detection parts
(``GeneralizedRCNNTransform``, ``MultiScaleRoIAlign``, ``RoIHeads`` with its matcher,
sampler and ``BoxCoder``); selective search stays the proposal source.

Training reads ``rcnn parse`` + ``rcnn propose`` output. The first ``frozen_stages`` stages
of the backbone stay frozen and their output is computed once per image (and once per
flipped image), so an SGD step runs only the remaining stages, RoIAlign and the head on
``rois_per_image`` regions: about a quarter with IoU >= 0.5, the rest with IoU in
[0.1, 0.5), the hard negatives R-CNN mined with an SVM.

Under torchrun (:mod:`rcnn.distributed`) each process runs the frozen stages of its block of the
images and all of them get every image's output back (a step may draw any image); the trained part
is wrapped in DistributedDataParallel and each step's ``images_per_step`` images are split over the
processes, with the loss normalised over the whole step, so N processes train the weights one does.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .distributed import Dist, all_reduce_sum as dist_sum
from .errors import DataError, TrainingError
from .io import load_rgb

BACKBONE_STAGES = ("efficientnet_lite0", "mobilenet_v2")
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's BoxCoder weights of Fast/Faster R-CNN


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


# --------------------------------------------------------------------------- the network


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
        fine = _out_channels(stages[2]) if fine_features else 0
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
        scale = _scale(image.shape[:2], size)
        b = torch.from_numpy(boxes).to(x.device).float() * scale
        logits, regression = self.roi_outputs(maps, [b], [size])
        deltas = regression.view(n, -1, 4) / torch.tensor(BOX_WEIGHTS, device=x.device)
        return torch.softmax(logits, 1).float().cpu().numpy(), deltas.float().cpu().numpy()


def _out_channels(stage: nn.Module) -> int:
    """Channels a backbone stage outputs (its last BatchNorm's)."""
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def _scale(original: tuple[int, int], resized: tuple[int, int]) -> torch.Tensor:
    """Multipliers ``[4]`` taking (x1, y1, x2, y2) from original to resized pixels."""
    sy, sx = resized[0] / original[0], resized[1] / original[1]
    return torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


def build_net(config: FastConfig, n_classes: int, weights: str | None = None) -> FastRCNN:
    return FastRCNN(config.backbone, weights or config.weights, n_classes, config.image_size, config.max_image_size,
                    config.frozen_stages, config.roi_size, config.hidden, config.fine_features, config.fg_iou,
                    config.rois_per_image, config.fg_fraction)


# --------------------------------------------------------------------------- training data


@dataclass
class ImageSample:
    """One training image, ready for steps: cached frozen-stage output and boxes in resized pixels."""

    image_id: str
    features: list[torch.Tensor]  # [1, C, h, w] float16 of the image and (with hflip) its mirror
    size: tuple[int, int]  # resized (h, w)
    proposals: torch.Tensor  # [P, 4] proposals with IoU >= bg_iou_low, resized pixels
    gt: torch.Tensor  # [G, 4]
    labels: torch.Tensor  # [G] int64, 1-based class ids


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes of the horizontally mirrored image."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def hard_negative_pool(proposals: torch.Tensor, gt: torch.Tensor, bg_iou_low: float) -> torch.Tensor:
    """The proposals that overlap some ground-truth box at IoU >= ``bg_iou_low`` (all of them when none does)."""
    from torchvision.ops import box_iou

    if len(gt) == 0 or len(proposals) == 0:
        return proposals
    keep = box_iou(proposals, gt).max(dim=1).values >= bg_iou_low
    return proposals[keep] if keep.any() else proposals


def cache_image(net: FastRCNN, image: np.ndarray, image_id: str, proposals: np.ndarray, gt: np.ndarray,
                labels: np.ndarray, config: FastConfig) -> ImageSample:
    """Run the frozen stages on the image (and its mirror) and scale its boxes to the resized image."""
    x, size = net.prepare(image)
    feats = [net.early(x).half().cpu()]
    if config.hflip:
        # mirror the unpadded image, then pad again: padding stays on the right
        feats.append(net.early(net.prepare(np.ascontiguousarray(image[:, ::-1]))[0]).half().cpu())
    scale = _scale(image.shape[:2], size)
    p = torch.from_numpy(proposals).float() * scale
    g = torch.from_numpy(gt).float().reshape(-1, 4) * scale
    return ImageSample(image_id, feats, size, hard_negative_pool(p, g, config.bg_iou_low), g,
                       torch.from_numpy(labels).long())


def sample_targets(sample: ImageSample, flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, proposals, gt) of the image or its mirror."""
    if not flip:
        return sample.features[0], sample.proposals, sample.gt
    w = float(sample.size[1])
    return sample.features[1], flip_boxes(sample.proposals, w), flip_boxes(sample.gt, w)


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


def optimiser_step(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor, reported: torch.Tensor, epoch: int) -> None:
    """One SGD step on ``loss``, refused with a clear error when the step's ``reported`` loss is not finite."""
    if not torch.isfinite(reported):
        raise TrainingError(f"the training loss became {float(reported.detach())} at epoch {epoch}; lower --lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def image_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of the region sampling of one image of one step: the same whichever process samples it."""
    return int(np.random.SeedSequence([seed, epoch, step, position]).generate_state(1)[0])


def sample_regions(net: FastRCNN, samples: list[ImageSample], flips: list[bool], seeds: list[int],
                   device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """RoIHeads' sampling of each image's regions (torch's generator seeded with the image's ``seeds``).

    Returns:
        (frozen-stage outputs, regions ``[R_i, 4]`` per image, labels ``[R]``, box targets ``[R, 4]``).
    """
    feats, rois, labels, targets = [], [], [], []
    for sample, flip, seed in zip(samples, flips, seeds):
        torch.manual_seed(seed)
        f, props, gt = sample_targets(sample, flip)
        r, _, lab, tgt = net.roi_heads.select_training_samples(
            [props.to(device)], [{"boxes": gt.to(device), "labels": sample.labels.to(device)}])
        feats.append(f.to(device).float())
        rois += r
        labels += lab
        targets += tgt
    return feats, rois, torch.cat(labels), torch.cat(targets)


def cache_samples(net: FastRCNN, usable: list[Any], classes: list[str], proposals: Any, config: FastConfig,
                  progress: bool, echo: Callable[[str], Any], dist: Dist) -> list[ImageSample]:
    """The frozen stages' output of every image. Under torchrun each process runs its block of the
    images and every process gets all of them back, in order (a step may take any image); rank 0
    prints the warnings of unreadable images."""
    from tqdm import tqdm

    from .distributed import all_gather_objects

    samples: list[ImageSample] = []
    warnings: list[str] = []
    warn = warnings.append if dist.distributed else echo
    mine = dist.block(len(usable)) if dist.distributed else range(len(usable))
    for i in tqdm(mine, desc="frozen stages", unit="img", disable=None if progress else True):
        a = usable[i]
        try:
            image = load_rgb(a.path)
        except DataError as e:
            warn(f"warning: {e}; skipped")
            continue
        gt = a.boxes()
        labels = np.array([classes.index(o.label) + 1 for o in a.objects], np.int64)
        samples.append(cache_image(net, image, a.id, proposals.boxes(a.id), gt, labels, config))
    if not dist.distributed:
        return samples
    parts = all_gather_objects(dist, (samples, warnings))
    for line in (w for _, ws in parts for w in ws) if dist.is_main else ():
        echo(line)
    return [s for ss, _ in parts for s in ss]


def train_fast(images: list[Any], classes: list[str], proposals: Any, config: FastConfig,
               progress: bool = True, echo: Callable[[str], Any] = print,
               dist: Dist | None = None) -> tuple[FastRCNN, dict[str, Any]] | None:
    """Train a Fast R-CNN on annotated ``images`` (``rcnn.parse.Annotation``) and their stored ``proposals``
    (a :class:`rcnn.propose.ProposalSet`); returns the network (best validation epoch) and the report.

    Under torchrun (``dist`` of :func:`rcnn.distributed.session`) the frozen stages of the images are
    split over the processes, the trained part is wrapped in DistributedDataParallel and every step's
    ``images_per_step`` images are split over the processes (the global batch is one process's);
    rank 0 validates and returns the network and report, the other ranks return None.

    Args:
        classes: the object classes (background excluded), in the dataset's order.

    Raises:
        DataError: too few usable images, or no image could be read.
        ValueError: ``images_per_step`` is not a multiple of the processes, or exceeds the training images.
    """
    from tqdm import tqdm

    from .model import pick_device

    dist = dist or Dist(device=pick_device(config.device))
    if config.images_per_step % dist.world_size:
        raise ValueError(f"'images_per_step={config.images_per_step}' must be a multiple of the {dist.world_size} "
                         f"processes (each takes its share of a step's images); use --images-per-step {dist.world_size}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = dist.device
    n_classes = len(classes) + 1
    # train(): the frozen stages (and every BatchNorm) in eval mode already while their output is cached, so the
    # cache holds what predict() computes and the saved ImageNet statistics are not moved by the training images
    net = build_net(config, n_classes).to(device).train()
    usable = [a for a in images if len(a.objects)]
    if len(usable) < 2:
        raise DataError(f"Fast R-CNN needs at least 2 training images with objects; got {len(usable)}")
    progress = progress and dist.is_main
    t0 = time.perf_counter()
    samples = cache_samples(net, usable, classes, proposals, config, progress, echo, dist)
    if len(samples) < 2:
        raise DataError(f"Fast R-CNN needs at least 2 readable training images; got {len(samples)}")
    cache_seconds = time.perf_counter() - t0
    order = rng.permutation(len(samples))
    n_val = min(max(1, round(config.val_fraction * len(samples))), len(samples) - 1)
    val = [samples[i] for i in sorted(order[:n_val])]
    train = [samples[i] for i in sorted(order[n_val:])]
    per_step = config.images_per_step
    if per_step > len(train):
        raise ValueError(f"'images_per_step={per_step}' exceeds the {len(train)} training images")
    weight = class_weight_tensor(config.class_weights, [s.labels for s in train], n_classes)
    weight = weight.to(device) if weight is not None else None

    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=config.lr, momentum=0.9)
    steps_per_epoch = len(train) // per_step
    total_steps = config.epochs * steps_per_epoch
    warmup = min(200, total_steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warmup if i < warmup
                                              else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, total_steps - warmup))))
    step_net: nn.Module | None = None
    if per_step > 1 or dist.distributed:
        step_net = StepNet(net)
        if dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # every BatchNorm keeps its ImageNet statistics (FastRCNN.train): no buffers to sync at each step
            sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                    else "broadcast_buffers")
            step_net = DistributedDataParallel(step_net, device_ids=[device] if device.type == "cuda" else None, **{sync: False})
    net.train()
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (math.inf, 0, None)
    t1 = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=None if progress else True)
    for epoch in range(1, config.epochs + 1):
        sums = np.zeros(2)
        if step_net is None:  # one image per step on one process
            for i in rng.permutation(len(train)):
                flip = config.hflip and bool(rng.integers(2))
                cls, box = step_loss(net, train[i], flip, weight, device)
                optimiser_step(opt, sched, cls + box, cls + box, epoch)
                sums += (cls.item(), box.item())
                bar.update(1)
        else:
            perm = rng.permutation(len(train))  # the same on every process: they share the seed
            for step in range(steps_per_epoch):
                images = perm[step * per_step : (step + 1) * per_step]
                flips = [config.hflip and bool(rng.integers(2)) for _ in images]
                mine = dist.block(per_step)  # this process's share of the step's images
                feats, rois, labels, targets = sample_regions(net, [train[images[j]] for j in mine], [flips[j] for j in mine],
                                                              [image_seed(config.seed, epoch, step, int(j)) for j in mine], device)
                logits, regression = step_net(feats, rois, [train[images[j]].size for j in mine])
                cls_sum, box_sum, counts = roi_loss_sums(logits, regression, labels, targets, weight)
                # one all-reduce: the step's total weight and regions, and its loss (to check and report)
                totals = dist_sum(dist, torch.cat([counts, torch.stack([cls_sum, box_sum]).detach()]))
                cls, box = totals[2] / totals[0], totals[3] / totals[1]
                # DistributedDataParallel averages the processes' gradients: times world_size is their sum
                loss = (cls_sum / totals[0] + box_sum / totals[1]) * dist.world_size
                optimiser_step(opt, sched, loss, cls + box, epoch)
                sums += (cls.item(), box.item())
                bar.update(1)
        if not dist.is_main:
            continue  # rank 0 alone validates and keeps the best epoch
        val_loss, cm = validate(net, val, n_classes, config.fg_iou, device)
        history.append({"epoch": epoch, "train_cls_loss": round(sums[0] / steps_per_epoch, 5),
                        "train_box_loss": round(sums[1] / steps_per_epoch, 5), "val_loss": round(val_loss, 5),
                        "seconds": round(time.perf_counter() - t1, 2)})
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
    bar.close()
    if not dist.is_main:
        return None
    net.load_state_dict(best[2])
    val_loss, cm = validate(net, val, n_classes, config.fg_iou, device)
    names = ["background", *classes]
    precision = {c: round(float(cm[k, k] / cm[:, k].sum()), 4) if cm[:, k].sum() else 0.0 for k, c in enumerate(names)}
    recall = {c: round(float(cm[k, k] / cm[k].sum()), 4) if cm[k].sum() else 0.0 for k, c in enumerate(names)}
    report = {
        "format": "rcnn-train-report-v1", "arch": "fast",
        "val_precision": precision, "val_recall": recall, "val_loss": round(val_loss, 5),
        "val_accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 4),
        "best_epoch": best[1], "epochs": config.epochs, "epochs_run": config.epochs,
        "confusion": {"classes": names, "matrix": cm.tolist()},
        "images": {"train": len(train), "val": len(val)},
        "class_weights": weight.tolist() if weight is not None else None,
        "history": history, "device": str(device),
        "seconds": {"features": round(cache_seconds, 2), "epochs": round(time.perf_counter() - t1, 2)},
        "config": asdict(config),
    }
    if dist.distributed:
        report["processes"] = dist.world_size
    return net.eval(), report


# --------------------------------------------------------------------------- the model folder


def model_config(config: FastConfig, classes: list[str], propose: Any, net: FastRCNN) -> Any:
    """The :class:`rcnn.model.ModelConfig` of a trained Fast R-CNN."""
    from .model import ModelConfig

    t = net.transform
    return ModelConfig(classes=["background", *classes], backbone=config.backbone, input_size=config.image_size,
                       mean=tuple(t.image_mean), std=tuple(t.image_std), hidden=config.hidden, dropout=0.0, arch="fast",
                       max_size=config.max_image_size, frozen_stages=config.frozen_stages, roi_size=config.roi_size,
                       fine_features=config.fine_features, propose=propose, train=asdict(config))


def train_fast_model(parsed: str | Path | Any, proposals: str | Path, out: str | Path, config: FastConfig | None = None,
                     progress: bool = True, echo: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """Train a Fast R-CNN on the train split of ``parsed`` (a ``rcnn parse`` file or a Dataset) with the
    proposals of ``rcnn propose`` in ``proposals``, and commit the model folder ``out``.

    Under torchrun (:mod:`rcnn.distributed`) every process trains and rank 0 alone writes ``out``.

    Returns:
        The report (also ``out/report.json``); None on the ranks other than 0.
    """
    import json

    from .distributed import session
    from .io import folder_lock, output_dir
    from .model import WEIGHTS, ModelConfig, commit_model, finish_commit
    from .parse import Dataset
    from .propose import ProposalSet, check_proposals

    config = config or FastConfig()
    t_start = time.perf_counter()
    with session(config.device) as dist:
        ds = parsed if isinstance(parsed, Dataset) else Dataset.load(parsed)
        pset = ProposalSet.load(proposals)
        images = ds.split("train")
        if not images:
            raise DataError(f"{parsed} has no training images")
        check_proposals(pset, images, "train")
        if not dist.is_main:
            train_fast(images, list(ds.classes), pset, config, False, echo, dist)
            return None
        out = output_dir(out, "model")
        with folder_lock(out, "rcnn train"):
            try:  # an interrupted commit is finished (or its staged files dropped) before a new one
                finish_commit(out, ModelConfig.load(out))
            except DataError:
                finish_commit(out, None)
            trained = train_fast(images, list(ds.classes), pset, config, progress, echo, dist)
            assert trained is not None  # rank 0 always gets the network
            net, report = trained
            report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
            state = {k: v.cpu() for k, v in net.state_dict().items()}
            commit_model(out, model_config(config, list(ds.classes), pset.config, net), {
                WEIGHTS: lambda p: torch.save(state, p),
                "report.json": lambda p: p.write_text(json.dumps(report, indent=2) + "\n"),
            })
    return report
