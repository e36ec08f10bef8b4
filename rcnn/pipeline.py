"""The whole R-CNN pipeline in one call: parse → propose → crop → train → detect → evaluate.

Trains on the train split, evaluates on the test split, and writes ``<out>/metrics.json``
with mAP, proposal recall, the number of test images and the seconds of each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .crop import CropConfig, crop_dataset
from .detect import DetectConfig, detect
from .errors import DataError
from .evaluate import evaluate, format_report as format_eval, load_detections
from .io import output_dir, print_err, write_json
from .model import load_model
from .parse import format_summary, parse_dataset
from .propose import ProposalSet, ProposeConfig, proposal_report, propose_dataset
from .train import TrainConfig, format_report as format_train, train


@dataclass
class PipelineConfig:
    """Settings of every stage; the defaults are the measured ones (see bench/)."""

    classes: list[str] | None = None  # keep only these classes (None: all)
    test_fraction: float = 0.2  # used when the dataset has no ImageSets split files
    seed: int = 0
    workers: int = 0  # selective-search processes; 0 = one per core
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(backbone="efficientnet_lite0"))
    detect: DetectConfig = field(default_factory=DetectConfig)


def run_pipeline(data: str | Path, out: str | Path, config: PipelineConfig | None = None,
                 echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err) -> dict[str, Any]:
    """Run every stage on the VOC dataset ``data`` into ``out``; returns the metrics."""
    config = config or PipelineConfig()
    out = output_dir(out, "pipeline")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str) -> None:
        echo(f"\n== {name} ==")
        seconds[name] = time.perf_counter()

    def done(name: str) -> None:
        seconds[name] = round(time.perf_counter() - seconds[name], 2)

    stage("parse")
    ds = parse_dataset(data, classes=config.classes, test_fraction=config.test_fraction, seed=config.seed)
    for p in ds.problems:
        (warn if p.level == "error" else echo)(str(p))
    train_images, test_images = ds.split("train"), ds.split("test")
    if not train_images or not test_images:
        raise DataError(f"{data} needs images in both splits (train: {len(train_images)}, test: {len(test_images)})")
    ds.save(out / "parsed.json")
    echo(format_summary(ds))
    done("parse")

    stage("propose")
    propose_dataset(ds, out / "proposals", config.propose, split="all", workers=config.workers)
    pset = ProposalSet.load(out / "proposals")
    test_boxes = [pset.boxes(a.id) for a in test_images]
    test_recall = proposal_report(test_images, test_boxes, ds.classes)
    scored_recall = proposal_report(test_images, [b[: config.detect.max_proposals] for b in test_boxes], ds.classes)
    echo(f"test-split proposal recall@0.5 {test_recall['recall50']} (first {config.detect.max_proposals}: "
         f"{scored_recall['recall50']}), recall@0.7 {test_recall['recall70']}")
    done("propose")

    stage("crop")
    crop_report = crop_dataset(ds, out / "proposals", out / "crops", config.crop, split="train")
    echo(f"{crop_report['regions']} regions: " + ", ".join(f"{c} {n}" for c, n in crop_report["kept"].items()))
    done("crop")

    stage("train")
    train_report = train(out / "crops", out / "model", config.train)
    echo(format_train(train_report))
    done("train")

    stage("detect")
    model = load_model(out / "model", config.train.device)
    results = detect(model, [a.path for a in test_images], out / "detect", config.detect, proposals=out / "proposals", echo=echo)
    done("detect")

    stage("evaluate")
    evaluation = evaluate(load_detections(out / "detect" / "detections.json"), ds, "test", plot=out / "pr_curve.png")
    write_json(out / "evaluation.json", evaluation)
    echo(format_eval(evaluation))
    done("evaluate")

    seconds["total"] = round(time.perf_counter() - t_all, 2)
    det_seconds = [r.seconds["score"] for r in results]
    metrics = {
        "format": "rcnn-metrics-v1",
        "map50": evaluation["map50"],
        "map50_95": evaluation["map50_95"],
        "ap50": evaluation["ap50"],
        "proposal_recall50": test_recall["recall50"],
        "proposal_recall70": test_recall["recall70"],
        "scored_proposal_recall50": scored_recall["recall50"],
        "n_test_images": len(test_images),
        "n_train_images": len(train_images),
        "val_recall": train_report["val_recall"],
        "val_precision": train_report["val_precision"],
        "detect_seconds_per_image": round(sum(det_seconds) / max(len(det_seconds), 1), 3),
        "seconds": seconds,
        "backbone": config.train.backbone,
        "config": {
            "propose": asdict(config.propose),
            "crop": asdict(config.crop),
            "train": asdict(config.train),
            "detect": {k: v for k, v in asdict(config.detect).items() if k != "propose"},
        },
    }
    write_json(out / "metrics.json", metrics)
    return metrics
