"""Region storage: one PNG per proposal (the reference pipeline's way) against our shards.

Usage: python bench/crop.py [--limit N]   (default: 20 raccoon train images)
Both store every region of the same proposals (our default settings); prints seconds
and bytes of both and their ratios.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
from common import Timer, raccoon_dataset

from rcnn.crop import CropConfig, crop_dataset
from rcnn.io import load_rgb
from rcnn.propose import ProposalSet, propose_dataset


def reference_png_per_proposal(ds, pset: ProposalSet, out: Path, size: int = 224) -> None:
    """What the reference pipeline did: crop every region, resize to 224, save it as its own PNG."""
    for a in ds.images:
        img = cv2.cvtColor(load_rgb(a.path), cv2.COLOR_RGB2BGR)
        for k, (x1, y1, x2, y2) in enumerate(pset.boxes(a.id).astype(int)):
            crop = cv2.resize(img[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / f"{a.id}_{k}.png"), crop)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=20, help="number of train images")
    args = ap.parse_args()
    ds = raccoon_dataset("train", args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        propose_dataset(ds, tmp / "props", progress=False)
        pset = ProposalSet.load(tmp / "props")
        n_regions = sum(len(pset.boxes(a.id)) for a in ds.images)
        (tmp / "png").mkdir()
        with Timer() as t_ref:
            reference_png_per_proposal(ds, pset, tmp / "png")
        with Timer() as t_ours:
            report = crop_dataset(ds, tmp / "props", tmp / "ours", CropConfig(), split="train", progress=False)
        b_ref, b_ours = folder_bytes(tmp / "png"), folder_bytes(tmp / "ours")
    print(f"reference: {n_regions} PNG files, {b_ref / 1e6:.1f} MB, {t_ref.seconds:.1f} s")
    print(f"ours:      {report['regions']} regions in {len(ds.images)} shards, {b_ours / 1e6:.1f} MB, {t_ours.seconds:.1f} s")
    print(f"images={len(ds.images)} bytes_ratio={b_ref / b_ours:.1f}x time_ratio={t_ref.seconds / t_ours.seconds:.1f}x")


if __name__ == "__main__":
    main()
