"""Fast R-CNN's training data: each image's cached frozen-stage output, its boxes in resized pixels,
and the seeded sampling of a step's regions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...distributed import Dist, all_gather_objects
from ...errors import DataError
from ...io import load_rgb
from .config import FastConfig
from .network import FastRCNN, scale_factors


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
    scale = scale_factors(image.shape[:2], size)
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

