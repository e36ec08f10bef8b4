"""Detection settings judged on the dev suite without training again: each model `bench/quality.py` trained
detects its dev-test images once per setting, on the same stored proposals, in one run.

Usage: python bench/redetect.py OUT [OUT ...] [--variant NAME:SETTING=VALUE,...] ...

OUT is a `bench/quality.py --out` folder (``OUT/NAME/seed-S`` pipeline folders). Each ``--variant`` is a name and
DetectConfig settings (``old:nms_iou=0.3,vote_iou=0.5``; ``tta:hflip_tta=true``), or attributes of the network
prefixed ``net.`` (``refine:net.refine_steps=1``, ``nms8:net.rpn.nms_thresh=0.8``); ``model`` (no settings: what each
model recorded, its fitted post-processing) is always run first. Prints, per variant, one line per dataset
``VARIANT DATASET map50=... map50_95=... s_per_image=...`` (means over seeds) and ``VARIANT suite mean map50=...``,
with the time per image as a ratio to ``model``'s, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from quality import parse_value

from rcnn.detect import DetectConfig, detect
from rcnn.evaluate import evaluate, load_detections
from rcnn.model import load_model
from rcnn.parse import Dataset


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:a=1,b=x"`` -> ("name", {"a": 1, "b": "x"})."""
    name, _, rest = text.partition(":")
    settings = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, {k: parse_value(v) for k, v in settings.items()}


def run_variant(folder: Path, settings: dict[str, Any], out: Path) -> tuple[float, float, float]:
    """(mAP@0.5, mAP@[.5:.95], seconds per image) of the pipeline folder's model on its test split with ``settings``."""
    ds = Dataset.load(folder / "parsed.json")
    model = load_model(folder / "model", "cpu")
    for key in [k for k in settings if k.startswith("net.")]:  # an attribute of the network (net.rpn.nms_thresh=0.8)
        *path, name = key.split(".")[1:]
        owner = model.net
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, settings[key])
    settings = {k: v for k, v in settings.items() if not k.startswith("net.")}
    images = [a.path for a in ds.split("test")]
    t = time.perf_counter()
    detect(model, images, out, replace(DetectConfig(), **settings), save_images=False,
           proposals=folder / "proposals" if (folder / "proposals").is_dir() else None, echo=lambda _: None)
    seconds = (time.perf_counter() - t) / len(images)
    ev = evaluate(load_detections(out / "detections.json"), ds, "test")
    return ev["map50"], ev["map50_95"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="+", help="bench/quality.py --out folders (their runs are pooled)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:SETTING=VALUE,... (DetectConfig fields)")
    args = ap.parse_args()
    variants = [("model", {}), *map(parse_variant, args.variant)]
    runs = sorted((p for out in args.out for p in out.glob("*/seed-*") if (p / "metrics.json").is_file()), key=lambda p: p.parts[-2:])
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {name: {} for name, _ in variants}
    for folder in runs:  # every variant of one model before the next: they see the same machine
        for name, settings in variants:
            r = run_variant(folder, settings, args.out[0] / "redetect" / name / folder.parent.name / folder.name)
            results[name].setdefault(folder.parent.name, []).append(r)
            print(f"  {name} {folder.parent.name}/{folder.name}: map50={r[0]:.4f} map50_95={r[1]:.4f} s={r[2]:.3f}", flush=True)
    base = {d: statistics.mean(x[2] for x in v) for d, v in results["model"].items()}
    for name, per_dataset in results.items():
        means = []
        for dataset, rs in sorted(per_dataset.items()):
            m50, m95, s = (statistics.mean(x[i] for x in rs) for i in range(3))
            means.append((m50, m95))
            print(f"{name} {dataset} map50={m50:.4f} map50_95={m95:.4f} s_per_image={s:.3f} time_vs_model={s / base[dataset]:.2f}x "
                  f"seeds={len(rs)}")
        print(f"{name} suite mean map50={statistics.mean(m[0] for m in means):.4f} "
              f"map50_95={statistics.mean(m[1] for m in means):.4f}")


if __name__ == "__main__":
    main()
