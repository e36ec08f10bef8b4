"""How well Faster R-CNN's anchors fit the objects of each dataset's train split (no training, seconds).

For every ground-truth box of the train split (resized as `--arch faster` resizes its image), the best IoU
of any anchor of the stride-16 grid; prints the share covered at IoU >= 0.5 and >= 0.7 (the RPN's object
threshold: a box no anchor reaches 0.7 gets only its best anchor as a positive) per anchor set.

    python bench/anchors.py [--datasets raccoon,bccd] [--root ../shared/datasets]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rcnn.arch.faster.config import ANCHOR_RATIOS, ANCHOR_SIZES
from rcnn.arch.fast.config import FastConfig
from rcnn.parse import parse_dataset

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
CANDIDATES = {  # name -> anchor sides (pixels of the resized image)
    "default (half-octave 16-512)": ANCHOR_SIZES,
    "octave 16-512 (torchvision's spacing)": (16, 32, 64, 128, 256, 512),
    "octave 32-512": (32, 64, 128, 256, 512),
    "third-octave 16-512": tuple(int(round(16 * 2 ** (k / 3))) for k in range(16)),
}


def best_ious(images: list, sizes: tuple[int, ...], ratios: tuple[float, ...], short: int, long: int) -> torch.Tensor:
    """The best anchor IoU of every ground-truth box of ``images``."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    gen = AnchorGenerator((sizes,), (ratios,))
    best = [torch.zeros(0)]
    for a in images:
        s = min(short / min(a.height, a.width), long / max(a.height, a.width))
        h, w = int(round(a.height * s)), int(round(a.width * s))
        hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
        anchors = gen(ImageList(torch.zeros(1, 3, hp, wp), [(h, w)]), [torch.zeros(1, 1, hp // 16, wp // 16)])[0]
        gt = torch.tensor(a.boxes(), dtype=torch.float32).reshape(-1, 4) * s
        if len(gt):
            best.append(box_iou(gt, anchors).max(1).values)
    return torch.cat(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="folder of datasets")
    ap.add_argument("--datasets", help="comma-separated names (default: every folder under --root)")
    args = ap.parse_args()
    names = args.datasets.split(",") if args.datasets else sorted(p.name for p in args.root.iterdir() if p.is_dir())
    c = FastConfig()
    for name in names:
        images = parse_dataset(args.root / name).split("train")
        for label, sizes in CANDIDATES.items():
            b = best_ious(images, sizes, ANCHOR_RATIOS, c.image_size, c.max_image_size)
            print(f"{name:<12}{label:<40}boxes {len(b):>5}  covered@0.5 {(b >= 0.5).float().mean():.3f}  "
                  f"@0.7 {(b >= 0.7).float().mean():.3f}  mean best IoU {b.mean():.3f}")


if __name__ == "__main__":
    main()
