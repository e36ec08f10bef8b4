"""Training the head: cached backbone features against the frozen backbone run on every crop every epoch.

Usage: python bench/train.py [--crops DIR] [--batches N] [--backbone efficientnet_lite0]
Without --crops it builds the raccoon train region set first (default settings).
The uncached epoch is timed on its first N batches (default 10; 0 = the whole epoch)
and scaled to the epoch's batch count; both paths use the same batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import raccoon_dataset

from rcnn.backbones import build_backbone
from rcnn.crop import crop_dataset
from rcnn.model import RegionClassifier, auto_batch_size
from rcnn.propose import propose_dataset
from rcnn.train import Preprocess, RegionSet, balanced_batches, extract_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--crops", type=Path, help="a region set from `rcnn crop` (default: build the raccoon one)")
    ap.add_argument("--batches", type=int, default=10, help="uncached batches to time (0 = the whole epoch)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        crops = args.crops
        if crops is None:
            ds = raccoon_dataset("train")
            propose_dataset(ds, Path(tmp) / "props", progress=False)
            crop_dataset(ds, Path(tmp) / "props", Path(tmp) / "crops", progress=False)
            crops = Path(tmp) / "crops"
        regions = RegionSet.load(crops)
        size = int(regions.meta["config"]["size"])
        backbone = build_backbone(args.backbone, "imagenet")
        net = RegionClassifier(backbone, len(regions.classes)).to(memory_format=torch.channels_last)
        for p in net.backbone.parameters():
            p.requires_grad_(False)
        net.backbone.eval()
        opt = torch.optim.SGD(net.head.parameters(), lr=1e-3, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        y = torch.from_numpy(regions.labels)
        batches = balanced_batches(regions.labels, 128, 0.25, np.random.default_rng(0))

        def step(x: torch.Tensor, idx: np.ndarray) -> None:
            loss = loss_fn(net.head(x), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = time.perf_counter()
        chunk = auto_batch_size("cpu")  # forward passes in the measured-fastest batch size, for both paths
        prep = Preprocess(backbone.mean, backbone.std, size, torch.device("cpu"))
        feats = torch.from_numpy(extract_features(net.backbone, regions, np.arange(len(regions.labels)), prep, chunk,
                                                  progress=False))
        t_extract = time.perf_counter() - t
        cached = []
        for _ in range(3):
            t = time.perf_counter()
            for idx in batches:
                step(feats[idx], idx)
            cached.append(time.perf_counter() - t)
        t_cached = float(np.median(cached))

        n = len(batches) if args.batches <= 0 else min(args.batches, len(batches))
        t = time.perf_counter()
        for idx in batches[:n]:
            with torch.no_grad():
                x = torch.cat([net.backbone(prep(regions.crops(idx[s : s + chunk])))
                               for s in range(0, len(idx), chunk)])
            step(x, idx)
        t_uncached = (time.perf_counter() - t) / n * len(batches)
    print(f"{len(regions.labels)} regions of {size} px, {len(batches)} batches of 128 per epoch, backbone {args.backbone}")
    print(f"feature extraction, once:          {t_extract:8.1f} s")
    print(f"epoch on cached features:          {t_cached:8.3f} s")
    print(f"epoch through the frozen backbone: {t_uncached:8.1f} s (timed on {n} of {len(batches)} batches)")
    print(f"cached_epoch_s={t_cached:.3f} uncached_epoch_s={t_uncached:.1f} ratio={t_uncached / t_cached:.0f}x")


if __name__ == "__main__":
    main()
