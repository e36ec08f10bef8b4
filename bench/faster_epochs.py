"""Faster R-CNN's mAP after every epoch on the dev suite: how long to train and how to pick the epoch.

For each dataset, trains ``--arch faster`` on dev-train (the train split cut by :func:`common.dev_split`; never a
test split) for ``--epochs`` epochs with any ``--set`` settings, and after every epoch prints the validation mAP@0.5
training picks its best epoch by (its held-out share of dev-train) and the mAP@0.5 / mAP@[.5:.95] on dev-test.

    python bench/faster_epochs.py [--datasets raccoon,bccd] [--epochs 12] [--set lr=0.004 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import DATASETS, dev_split
from quality import parse_settings

from rcnn.arch.faster.config import FasterConfig
from rcnn.arch.faster.train import NoProposals, StepLosses, build_net, steps, val_map
from rcnn.arch.fast.train import optimiser, prepare
from rcnn.detect import DetectConfig
from rcnn.distributed import Dist
from rcnn.engine import train_one_epoch
from rcnn.evaluate import coco_map, voc_map50
from rcnn.io import load_rgb
from rcnn.postprocess import select_detections


def dev_test_map(net, images, classes) -> tuple[float, float]:
    """(mAP@0.5, COCO mAP@[.5:.95]) of ``net`` on annotated ``images``, detected as `rcnn detect` does by default."""
    net.eval()
    config = DetectConfig().resolved("faster")
    names = ["background", *classes]
    dets, truths, coco = [], [], []
    for a in images:
        image = load_rgb(a.path)
        boxes, probs, deltas = net.detect(image, config.score_proposals)
        found = select_detections(boxes, probs, names, config, deltas, (image.shape[1], image.shape[0]))
        dets.append((np.array([d.box for d in found], np.float32).reshape(-1, 4), np.array([d.score for d in found]),
                     np.array([names.index(d.label) for d in found], np.int64)))
        truths.append((a.boxes(), np.array([names.index(o.label) for o in a.objects], np.int64)))
        coco += [{"_image": a.id, "category": d.label, "score": d.score,
                  "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]} for d in found]
    net.train()
    return voc_map50(dets, truths, len(names)), coco_map(coco, images, classes)["map50_95"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="raccoon,bccd")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    for name in args.datasets.split(","):
        ds = dev_split(DATASETS / name)
        config = FasterConfig(**{**parse_settings(args.set), "epochs": args.epochs})
        run = prepare(ds.split("train"), list(ds.classes), NoProposals(), config, False, print,
                      Dist(device=torch.device("cpu")), build=build_net)
        opt, sched, per_epoch = optimiser(run)
        step = StepLosses(run.net, run.weight, run.device, config.bg_iou_low)
        run.net.train()
        t0 = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            train_one_epoch(opt, *steps(run, step, epoch, per_epoch), epoch, sched, None, name_batches=False)
            val = val_map(run.net, run.val, run.n_classes, run.device)
            m50, m95 = dev_test_map(run.net, ds.split("test"), list(ds.classes))
            print(f"{name} epoch={epoch} val_map50={val:.4f} dev_map50={m50:.4f} dev_map50_95={m95:.4f} "
                  f"s={time.perf_counter() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
