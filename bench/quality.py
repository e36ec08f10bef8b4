"""The dev suite: the default pipeline of one architecture on the dev split of every real dataset, in one table.

Usage: python bench/quality.py [--arch fast] [--datasets raccoon,bccd] [--seeds 0,1] [--set epochs=12 --set nms_iou=0.4]
                               [--out runs/quality] [--json PATH] [--data ../shared/datasets]

Every subfolder of the datasets folder that is a dataset (VOC, COCO or YOLO, as ``rcnn parse`` tells them) is run,
so a new one is picked up without a change here. Never on a test split: each dataset's *train* images are cut into
dev-train and dev-test by the fixed rule of :func:`common.dev_split` (``val.txt`` where there is one, else every
4th image), and ``rcnn.pipeline.run_pipeline`` trains on the first and evaluates on the second.

Prints one line per dataset, ``NAME map50=... map50_95=...`` then the spread over seeds (with several), the training
seconds and AP@0.5 per class, and last ``suite mean map50=... map50_95=...``: the mean over datasets. Everything
goes to ``OUT/quality.json`` too (``--json``); each run keeps its pipeline folder ``OUT/NAME/seed-S`` (metrics.json,
the model, detections) and its log beside it, ``OUT/NAME/seed-S.log``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import DATASETS, ROOT, dev_split

from rcnn.arch import DEFAULT_ARCH, get_arch
from rcnn.errors import DataError
from rcnn.parse import detect_format
from rcnn.pipeline import PipelineConfig, run_pipeline

FORMAT = "rcnn-quality-v1"
# Settings of the suite that differ from the pipeline's (a --set of the same name wins): the suite needs numbers,
# and the error-analysis page costs minutes per dataset.
SUITE_SETTINGS: dict[str, Any] = {"report": False}


def discover(root: Path) -> list[str]:
    """The names of the subfolders of ``root`` that are datasets (``rcnn.parse.detect_format`` finds one format), sorted."""
    names = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            detect_format(folder)
        except DataError:
            continue
        names.append(folder.name)
    return names


def parse_value(text: str) -> Any:
    """A ``--set`` value: true/false as a bool, then an int, then a float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["epochs=12", "nms_iou=0.4"]`` -> ``{"epochs": 12, "nms_iou": 0.4}``; raises ValueError on an item without ``=``."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"'--set {item}' is invalid; give NAME=VALUE, e.g. --set epochs=12")
        settings[name.strip()] = parse_value(value.strip())
    return settings


def parse_seeds(items: list[str] | None) -> list[int]:
    """``["0,1", "2"]`` -> ``[0, 1, 2]`` (repeats dropped); none given: the pipeline's own seed."""
    if not items:
        return [PipelineConfig().seed]
    try:
        seeds = [int(s) for item in items for s in item.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"'--seeds {','.join(items)}' is invalid; give integers, e.g. --seeds 0,1") from None
    return list(dict.fromkeys(seeds))


def pipeline_config(arch: str, settings: dict[str, Any], seed: int) -> PipelineConfig:
    """The pipeline's settings for one run: the defaults of ``arch``, the suite's, ``settings`` and ``seed``.

    Raises:
        ValueError: an unknown architecture or setting, or a value a stage refuses.
    """
    if "seed" in settings:
        raise ValueError("give the seed with --seeds, not --set seed=")
    return PipelineConfig(arch=arch).with_settings(**{**SUITE_SETTINGS, **settings, "seed": seed})


@dataclass
class Run:
    """One pipeline run: a dataset's dev split with one seed."""

    dataset: str
    seed: int
    map50: float  # VOC mAP@0.5 on dev-test
    map50_95: float  # COCO mAP@[.5:.95] on dev-test
    ap50: dict[str, float | None]  # per class; None: no object of that class in dev-test
    train_seconds: float
    seconds: float  # the whole run
    n_train: int  # dev-train images
    n_test: int  # dev-test images
    folder: str  # the pipeline's output folder


def spread(values: list[float]) -> float:
    """Sample standard deviation (0 for fewer than two values)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list[Run]]) -> dict[str, Any]:
    """Per dataset the mean and spread over its runs (seeds) and the mean AP per class; and the suite's means."""
    datasets = {}
    for name, rs in runs.items():
        classes = list(dict.fromkeys(c for r in rs for c in r.ap50))
        ap50 = {c: [r.ap50[c] for r in rs if r.ap50.get(c) is not None] for c in classes}
        datasets[name] = {
            "map50": statistics.fmean(r.map50 for r in rs), "map50_95": statistics.fmean(r.map50_95 for r in rs),
            "map50_sd": spread([r.map50 for r in rs]), "map50_95_sd": spread([r.map50_95 for r in rs]),
            "ap50": {c: statistics.fmean(v) if v else None for c, v in ap50.items()},
            "train_seconds": statistics.fmean(r.train_seconds for r in rs), "seeds": len(rs),
            "runs": [asdict(r) for r in rs],
        }
    means = list(datasets.values())
    suite = {"map50": statistics.fmean(d["map50"] for d in means) if means else 0.0,
             "map50_95": statistics.fmean(d["map50_95"] for d in means) if means else 0.0, "datasets": len(means)}
    return {"datasets": datasets, "suite": suite}


def dataset_line(name: str, d: dict[str, Any]) -> str:
    """``NAME map50=0.912 map50_95=0.456 [map50_sd=.. map50_95_sd=..] train_s=123 ap50[CLASS]=0.900 ...``."""
    sd = f" map50_sd={d['map50_sd']:.3f} map50_95_sd={d['map50_95_sd']:.3f} seeds={d['seeds']}" if d["seeds"] > 1 else ""
    ap = " ".join(f"ap50[{c}]=" + ("-" if v is None else f"{v:.3f}") for c, v in d["ap50"].items())
    return f"{name} map50={d['map50']:.3f} map50_95={d['map50_95']:.3f}{sd} train_s={d['train_seconds']:.0f} {ap}".rstrip()


def suite_line(suite: dict[str, Any]) -> str:
    """``suite mean map50=0.xxx map50_95=0.xxx datasets=N``."""
    return f"suite mean map50={suite['map50']:.3f} map50_95={suite['map50_95']:.3f} datasets={suite['datasets']}"


def run_one(name: str, folder: Path, out: Path, config: PipelineConfig) -> Run:
    """The pipeline on the dev split of the dataset in ``folder``, into ``out``; its log goes to ``out.log``."""
    ds = dev_split(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        def write(line: str) -> None:
            log.write(f"{line}\n")

        report = run_pipeline(ds, out, config, echo=write, warn=write)
    return Run(name, config.seed, report.map50, report.map50_95, report.ap50, report.seconds.get("train", 0.0),
               round(time.perf_counter() - t, 1), report.n_train_images, report.n_test_images, str(out))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=DEFAULT_ARCH, help="a registered architecture (default: the registry's, %(default)s)")
    ap.add_argument("--datasets", help="comma-separated names under --data (default: every dataset there)")
    ap.add_argument("--seed", "--seeds", dest="seeds", action="append",
                    help="seed of every stage; repeat or give a comma list to run each (default: the pipeline's)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                    help="a pipeline setting (rcnn.pipeline.PipelineConfig.with_settings), e.g. epochs=12; repeatable")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "quality", help="working folder (default: runs/quality)")
    ap.add_argument("--json", type=Path, help="where to write every number (default: OUT/quality.json)")
    ap.add_argument("--data", type=Path, default=DATASETS, help="the datasets folder (default: ../shared/datasets)")
    return ap.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[list[str], list[int], dict[str, Any]]:
    """(datasets, seeds, settings) of the command line, checked; raises ValueError or DataError with one line."""
    if not args.data.is_dir():
        raise DataError(f"no datasets folder {args.data} (give --data)")
    get_arch(args.arch)
    found = discover(args.data)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else found
    unknown = [n for n in names if n not in found]
    if unknown or not names:
        raise DataError(f"'--datasets {','.join(unknown or names)}' names no dataset in {args.data}; found {', '.join(found) or 'none'}")
    seeds, settings = parse_seeds(args.seeds), parse_settings(args.settings)
    pipeline_config(args.arch, settings, seeds[0])  # an unknown setting fails now, not after the first run
    return names, seeds, settings


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    try:
        names, seeds, settings = plan(args)
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs: dict[str, list[Run]] = {}
    failed: dict[str, str] = {}
    for i, name in enumerate(names, 1):
        for seed in seeds:
            print(f"[{i}/{len(names)}] {name} seed {seed} ...", flush=True)
            try:
                r = run_one(name, args.data / name, args.out / name / f"seed-{seed}", pipeline_config(args.arch, settings, seed))
            except (DataError, ValueError) as e:
                failed[name] = str(e).splitlines()[0]
                print(f"[{i}/{len(names)}] {name} seed {seed}: failed: {failed[name]}", flush=True)
                break
            runs.setdefault(name, []).append(r)
            print(f"[{i}/{len(names)}] {name} seed {seed}: mAP@0.5 {r.map50:.3f}, {r.seconds:.0f} s", flush=True)
    summary = summarise({n: rs for n, rs in runs.items() if n not in failed})
    print()
    for name, d in summary["datasets"].items():
        print(dataset_line(name, d))
    print(suite_line(summary["suite"]))
    out_json = args.json or args.out / "quality.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"format": FORMAT, "arch": args.arch, "seeds": seeds, "settings": settings,
                                    "data": str(args.data), **summary, "failed": failed}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
