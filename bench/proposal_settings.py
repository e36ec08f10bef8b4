"""Selective-search settings on several datasets: recall@0.5/0.7 per class, proposals and seconds per image.

Usage: python bench/proposal_settings.py [--limit N] [--datasets raccoon,bccd]
Uses the *train* split of each dataset (never the test split: defaults are chosen here), the
first N images of it in id order, one process, so the seconds compare settings side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT

from rcnn.parse import Dataset, parse_dataset
from rcnn.propose import ProposeConfig, propose_dataset

SETTINGS = {
    "fast/300": ProposeConfig(mode="fast", max_side=300),
    "fast/500": ProposeConfig(mode="fast", max_side=500),
    "fast/full": ProposeConfig(mode="fast", max_side=0),
    "quality/300": ProposeConfig(mode="quality", max_side=300),
    "quality/500": ProposeConfig(mode="quality", max_side=500),
    "fast/300/k50": ProposeConfig(mode="fast", max_side=300, base_k=50, inc_k=50),
    "fast/500/k50": ProposeConfig(mode="fast", max_side=500, base_k=50, inc_k=50),
    "fast/500/k100": ProposeConfig(mode="fast", max_side=500, base_k=100, inc_k=100),
    "fast/full/k100": ProposeConfig(mode="fast", max_side=0, base_k=100, inc_k=100),
    "quality/300/k50": ProposeConfig(mode="quality", max_side=300, base_k=50, inc_k=50),
    "quality/400/k100": ProposeConfig(mode="quality", max_side=400, base_k=100, inc_k=100),
}


def sample(name: str, limit: int) -> Dataset:
    ds = parse_dataset(ROOT.parent / "shared" / "datasets" / name)
    images = ds.split("train")
    step = max(1, len(images) // limit) if limit else 1
    images = images[::step][:limit] if limit else images
    return Dataset(images=images, classes=ds.classes, problems=[], root=ds.root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=30, help="images per dataset, spread over the train split (0 = all)")
    ap.add_argument("--datasets", default="raccoon,bccd", help="comma-separated names under ../shared/datasets")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of: " + ", ".join(SETTINGS))
    args = ap.parse_args()
    for name in args.datasets.split(","):
        ds = sample(name, args.limit)
        print(f"\n{name}: {len(ds.images)} train images, classes {ds.classes}", flush=True)
        for label in args.settings.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                r = propose_dataset(ds, Path(tmp) / "p", SETTINGS[label], workers=1, progress=False, echo=lambda _: None)
                secs = (time.perf_counter() - t) / len(ds.images)
            per_class = "  ".join(f"{c} {v['recall50']}/{v['recall70']}" for c, v in r["per_class"].items())
            print(f"  {label:<12} recall50 {r['recall50']:.3f}  recall70 {r['recall70']:.3f}  "
                  f"proposals/img {r['proposals_per_image']:6.0f}  s/img {secs:5.2f}  per class (0.5/0.7): {per_class}", flush=True)


if __name__ == "__main__":
    main()
