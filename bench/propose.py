"""Proposals: the naive setting (quality mode, full resolution, one process) against the defaults.

Usage: python bench/propose.py [--limit N]   (default: the whole raccoon train split)
Prints images/s and recall of both, their ratio, and whether the defaults are reproducible.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import Timer, raccoon_dataset

from rcnn.propose import ProposeConfig, propose_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N train images (0 = all)")
    args = ap.parse_args()
    ds = raccoon_dataset("train", args.limit)
    n = len(ds.images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Timer() as t_naive:
            naive = propose_dataset(ds, tmp / "naive", ProposeConfig(mode="quality", max_side=0), workers=1, progress=False)
        with Timer() as t_def:
            default = propose_dataset(ds, tmp / "default", ProposeConfig(), workers=0, progress=False)
        first = {p.name: np.load(p) for p in (tmp / "default" / "boxes").glob("*.npy")}
        propose_dataset(ds, tmp / "again", ProposeConfig(), workers=0, progress=False)
        same = all(np.array_equal(np.load(tmp / "again" / "boxes" / k), v) for k, v in first.items())
    for name, r, t in (("naive (quality, full size, 1 process)", naive, t_naive), ("defaults", default, t_def)):
        print(f"{name:<40} {n / t.seconds:6.2f} img/s  recall50 {r['recall50']:.3f}  recall70 {r['recall70']:.3f}  "
              f"proposals/img {r['proposals_per_image']:.0f}")
    print(f"images={n} speedup={t_naive.seconds / t_def.seconds:.1f}x "
          f"recall70_drop={naive['recall70'] - default['recall70']:+.3f} reproducible={same}")


if __name__ == "__main__":
    main()
