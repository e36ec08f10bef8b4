"""Where the classic R-CNN's head gets its input: cached features of a frozen backbone, or live crops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...distributed import Dist, broadcast_object, gather_blocks
from ...engine import ddp_wrap
from ...io import digest, file_digest, save_npy
from ...model import auto_batch_size
from .config import TrainConfig
from .data import RegionSet
from .network import RegionClassifier, preprocess


@dataclass
class Preprocess:
    """How crops become network input: normalisation, input side and device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    device: torch.device

    def __call__(self, crops: np.ndarray) -> torch.Tensor:
        return preprocess(crops, self.mean, self.std, self.size, self.device)


@torch.inference_mode()
def extract_features(backbone: nn.Module, regions: RegionSet, idx: np.ndarray, prep: Preprocess, batch: int,
                     flip: bool = False, progress: bool = True) -> np.ndarray:
    """Backbone features ``[len(idx), D]`` float32 of the given regions (mirrored when ``flip``)."""
    from tqdm import tqdm

    backbone.eval()
    out = []
    for s in tqdm(range(0, len(idx), batch), desc="features" + (" (flipped)" if flip else ""), unit="batch",
                  disable=None if progress else True, leave=False):
        b = idx[s : s + batch]
        out.append(backbone(prep(regions.crops(b, np.full(len(b), flip)))).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


class FeatureSource:
    """What the head is trained on: ``inputs(idx, flip)`` gives the head's input for regions ``idx``."""

    cached = False

    def inputs(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def train_inputs(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        """:meth:`inputs` in a training step (under torchrun, through DistributedDataParallel)."""
        return self.inputs(idx, flip)

    def box_features(self) -> torch.Tensor:  # pragma: no cover - interface
        """Features ``[N, D]`` of every region (zeros where not needed) for the box regressor."""
        raise NotImplementedError


class CachedFeatures(FeatureSource):
    """A frozen backbone: features of every crop (and of its mirror image) computed once, kept on disk.

    The cache file's name is a key of the backbone, its weights, the input side and the region
    set's content key, so a changed region set or backbone never reads stale features.

    Under torchrun each process extracts its block of the regions and rank 0 gathers them, keeps
    them and writes the cache; the other ranks keep nothing (``plain`` is None there).
    """

    cached = True

    def __init__(self, net: RegionClassifier, regions: RegionSet, config: TrainConfig, prep: Preprocess,
                 cache_dir: Path, progress: bool, dist: Dist | None = None) -> None:
        self.net, self.regions, self.config, self.prep = net, regions, config, prep
        self.cache_dir, self.progress = cache_dir, progress
        self.dist = dist or Dist(device=prep.device)
        self.plain = self._load(False)
        self.flipped = self._load(True) if config.hflip else None

    def _key(self, flip: bool) -> str:
        weights = self.config.weights
        if weights not in ("imagenet", "none"):
            weights = file_digest(weights)  # the bytes, not the path
        content = self.regions.meta.get("content_key") or [self.regions.meta["config"], self.regions.meta["images"]]
        return digest(self.config.backbone, weights, self.prep.size, flip, content, len(self.regions.labels))[:16]

    def _read(self, path: Path) -> torch.Tensor | None:
        """The cached features in ``path``, or None when there are none (or they are damaged: recomputed)."""
        if path.is_file():
            try:
                feats = np.load(path, allow_pickle=False)
                if feats.shape[0] == len(self.regions.labels) and feats.dtype == np.float32:
                    return torch.from_numpy(feats)
            except (OSError, ValueError, EOFError):
                pass
        return None

    def _load(self, flip: bool) -> torch.Tensor | None:
        path = self.cache_dir / f"features-{self._key(flip)}.npy"
        dist, n = self.dist, len(self.regions.labels)
        cached = self._read(path) if dist.is_main else None
        if not broadcast_object(dist, cached is None):  # rank 0 alone reads the model folder
            return cached
        idx = dist.block(n) if dist.distributed else np.arange(n)
        feats = (extract_features(self.net.backbone, self.regions, idx, self.prep,
                                  self.config.feature_batch or auto_batch_size(self.prep.device), flip,
                                  self.progress and dist.is_main)
                 if len(idx) else np.zeros((0, self.net.bbox.in_features), np.float32))  # more processes than regions
        if not dist.distributed:
            save_npy(path, feats)
            return torch.from_numpy(feats)
        gathered = gather_blocks(dist, torch.from_numpy(feats), n)
        if gathered is None:
            return None
        save_npy(path, gathered.numpy())
        return gathered

    def inputs(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        x = self.plain[idx].clone()
        if flip.any() and self.flipped is not None:
            x[flip] = self.flipped[idx[flip]]
        return self.net.head(x.to(self.prep.device))

    def box_features(self) -> torch.Tensor:
        return self.plain


class LiveFeatures(FeatureSource):
    """A backbone that trains too: every batch of crops goes through the whole network."""

    def __init__(self, net: RegionClassifier, regions: RegionSet, config: TrainConfig, prep: Preprocess, progress: bool,
                 dist: Dist | None = None) -> None:
        self.net, self.regions, self.config, self.prep, self.progress = net, regions, config, prep, progress
        self.step_net: nn.Module = net
        if dist is not None and dist.distributed:
            # backbone + head only: the box regressor is fitted afterwards, it has no gradient to share
            self.step_net = ddp_wrap(nn.Sequential(net.backbone, net.head), prep.device)

    def inputs(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        return self.net(self.prep(self.regions.crops(idx, flip)))

    def train_inputs(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        return self.step_net(self.prep(self.regions.crops(idx, flip)))

    def box_features(self) -> torch.Tensor:
        """The fine-tuned backbone's features of the object regions."""
        box_idx = np.flatnonzero(self.regions.labels > 0)
        feats = torch.zeros(len(self.regions.labels), self.net.bbox.in_features)
        feats[box_idx] = torch.from_numpy(extract_features(self.net.backbone, self.regions, box_idx, self.prep,
                                                           self.config.feature_batch or auto_batch_size(self.prep.device),
                                                           False, self.progress))
        return feats

