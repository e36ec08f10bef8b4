"""What hard-negative mining (R-CNN §2.3) buys the classic path, measured on dev splits of two datasets.

Usage: python bench/hard_negatives.py [--datasets raccoon,bccd] [--test-limit 40] [--work DIR]

Never on a test split: each dataset's *train* images are cut into a dev-train and a dev-test part
(raccoon: every 4th image of ``train.txt`` in id order is dev-test, 120 / 40; bccd: ``train.txt`` /
``val.txt``, 205 / 87). Both models train from one region set (``--mine-pool``; the pool is left out of
training until mined, so the baseline trains on exactly the regions it would without it) and one
feature cache, and detect with the same stored proposals, so the difference is the mining alone.
Prints mAP@0.5 and mAP@[.5:.95] of each, per class, and the training seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import DATASETS, dev_split

from rcnn.crop import CropConfig, crop_dataset
from rcnn.detect import DetectConfig, detect
from rcnn.evaluate import evaluate, load_detections
from rcnn.model import load_model
from rcnn.propose import ProposeConfig, propose_dataset
from rcnn.train import TrainConfig, train


def run(name: str, work: Path, test_limit: int, pool: int, per_image: int, reuse: bool) -> None:
    ds = dev_split(DATASETS / name, test_limit)
    print(f"\n{name}: dev-train {len(ds.split('train'))} images, dev-test {len(ds.split('test'))}, classes {ds.classes}", flush=True)
    props, crops = work / name / "proposals", work / name / "crops"
    propose_dataset(ds, props, ProposeConfig(), split="all", echo=lambda _: None)
    crop_dataset(ds, props, crops, CropConfig(mine_pool=pool), split="train")
    results = {}
    for label, rounds in (("no mining", 0), (f"mining (1 round, {per_image}/image of a pool of {pool})", 1)):
        model = work / name / f"model-{rounds}"
        if reuse and (work / name / f"detect-{rounds}" / "detections.json").is_file():  # finished by an earlier run
            report = json.loads((model / "report.json").read_text())
            ev = evaluate(load_detections(work / name / f"detect-{rounds}" / "detections.json"), ds, "test")
            results[label] = (ev, report["seconds"]["total"], report)
            continue
        if rounds:  # the same features: start from a copy of the first model folder, its feature cache included
            shutil.copytree(work / name / "model-0", model, dirs_exist_ok=True)
        t = time.perf_counter()
        report = train(crops, model, TrainConfig(mining_rounds=rounds, mine_per_image=per_image))
        seconds = time.perf_counter() - t
        detect(load_model(model), [a.path for a in ds.split("test")], work / name / f"detect-{rounds}", DetectConfig(),
               proposals=props, save_images=False, echo=lambda _: None)
        ev = evaluate(load_detections(work / name / f"detect-{rounds}" / "detections.json"), ds, "test")
        results[label] = (ev, seconds, report)
    for label, (ev, seconds, report) in results.items():
        per_class = ", ".join(f"{c} {v:.3f}" for c, v in ev["ap50"].items() if v is not None)
        print(f"  {label:<45} mAP@0.5 {ev['map50']:.3f}  mAP@[.5:.95] {ev['map50_95']:.3f}  ({per_class})  "
              f"train {seconds:.0f} s, added {report['mining']['added_per_round']}, "
              f"val precision {report['val_precision']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="raccoon,bccd", help="comma-separated names under ../shared/datasets")
    ap.add_argument("--test-limit", type=int, default=40, help="dev-test images per dataset, spread over it (0 = all)")
    ap.add_argument("--pool", type=int, default=48, help="mining pool per image (rcnn crop --mine-pool)")
    ap.add_argument("--per-image", type=int, default=16, help="backgrounds mined per image (rcnn train --mine-per-image)")
    ap.add_argument("--reuse", action="store_true", help="with --work: keep each finished run found there (its detections)")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            run(name, args.work or Path(tmp), args.test_limit, args.pool, args.per_image, args.reuse)


if __name__ == "__main__":
    main()
