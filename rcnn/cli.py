"""The ``rcnn`` command line: a thin layer over the library.

Each command validates its options, calls one library function and prints.
Library errors (:class:`rcnn.errors.RcnnError`) become one line and exit 1;
invalid option values become a usage error and exit 2. No tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import RcnnError
from .io import check_output_file, output_dir, print_err as warn

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to Click's exit codes: RcnnError -> 1, ValueError -> 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RcnnError as e:
            raise click.ClickException(one_line(str(e))) from None
        except ValueError as e:
            raise click.UsageError(one_line(str(e))) from None
        except OSError as e:  # permissions, a full disk, a path that is a folder, ...
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(one_line(f"{where}{e.strerror or e}")) from None
        except (KeyboardInterrupt, EOFError):
            click.echo("interrupted; finished outputs are kept and a re-run resumes", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as e:  # a bug, not bad input: still one line, the traceback with RCNN_DEBUG=1
            if os.environ.get("RCNN_DEBUG"):
                raise
            raise click.ClickException(one_line(f"unexpected error ({type(e).__name__}: {e}); "
                                                "re-run with RCNN_DEBUG=1 for the traceback and please report it")) from None

    return wrapper


def one_line(message: str) -> str:
    """The first line of ``message`` (library messages can embed multi-line library text)."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    return lines[0] if lines else message


def split_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="rcnn")
def main() -> None:
    """R-CNN object detection for Pascal VOC datasets: parse → propose → crop → train → detect → evaluate."""


# --------------------------------------------------------------------------- parse


@main.command()
@click.argument("data", type=EXISTING_DIR, required=False)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the parsed records (JSON).")
@click.option("--annotations", type=EXISTING_DIR, help="Folder of VOC XML files (overrides the layout of DATA).")
@click.option("--images", type=EXISTING_DIR, help="Folder of images (overrides the layout of DATA).")
@click.option("--classes", help="Comma-separated class names to keep, e.g. cat,dog (default: all).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, help="Test share of the deterministic split, used when the dataset has no ImageSets/Main split files.")
@click.option("--seed", type=int, default=0, help="Seed of the deterministic split.")
@click.option("--strict", is_flag=True, help="Stop at the first file that must be skipped.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary, not each warning.")
@handle_errors
def parse(data: Path | None, out: Path, annotations: Path | None, images: Path | None, classes: str | None,
          test_fraction: float, seed: int, strict: bool, quiet: bool) -> None:
    """Read a Pascal VOC dataset DATA into clean records (one JSON file)."""
    from .parse import format_summary, parse_dataset

    if data is None and (annotations is None or images is None):
        raise click.UsageError("give DATA, or both --annotations and --images")
    check_output_file(out)
    ds = parse_dataset(data, annotations_dir=annotations, images_dir=images, classes=split_csv(classes),
                       test_fraction=test_fraction, seed=seed, strict=strict, progress=True)
    for p in ds.problems:
        if p.level == "error" or not quiet:
            click.echo(str(p), err=True)
    if not ds.images:
        first = next((p for p in ds.problems if p.level == "error"), None)
        raise click.ClickException(f"no usable images in {data or annotations}"
                                   + (f" (first problem: {first.file}: {first.message})" if first else ""))
    ds.save(check_output_file(out, tuple(a.annotation for a in ds.images) + tuple(a.path for a in ds.images)))
    click.echo(format_summary(ds))
    click.echo(f"records saved to {out}")


# --------------------------------------------------------------------------- synth


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", "n_images", type=click.IntRange(1), default=40, help="Number of images.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--width", type=click.IntRange(64), default=320, help="Image width in pixels.")
@click.option("--height", type=click.IntRange(64), default=240, help="Image height in pixels.")
@handle_errors
def synth(out: Path, n_images: int, seed: int, width: int, height: int) -> None:
    """Write a small synthetic VOC dataset (discs and squares) to OUT."""
    from .synth import make_dataset

    make_dataset(out, images=n_images, seed=seed, width=width, height=height)
    click.echo(f"{n_images} images written to {out}")


# --------------------------------------------------------------------------- propose


def propose_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Selective-search options shared by `propose`, `detect` and `pipeline`."""
    for opt in reversed([
        click.option("--mode", type=click.Choice(["fast", "quality"]), default=None, help="Selective-search strategy [default: fast]."),
        click.option("--max-side", type=click.IntRange(0), default=None, help="Run selective search on a copy whose long side is at most N pixels; 0 = full size [default: 300]."),
        click.option("--max-proposals", type=click.IntRange(1), default=None, help="Keep at most N proposals per image [default: 2000]."),
        click.option("--min-size", type=click.IntRange(0), default=None, help="Drop proposals narrower or shorter than N pixels [default: 10]."),
    ]):
        fn = opt(fn)
    return fn


def propose_config(base: Any = None, **overrides: Any) -> Any:
    from dataclasses import replace

    from .propose import ProposeConfig

    base = base or ProposeConfig()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@main.command()
@click.argument("parsed", type=EXISTING_FILE)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Proposals folder (re-runs reuse what it holds).")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", help="Which images to process.")
@propose_options
@click.option("--seed", type=int, default=0, help="Seed of the proposal order (libc rand, used by OpenCV).")
@click.option("--workers", type=click.IntRange(0), default=0, help="Processes; 0 = one per CPU core.")
@handle_errors
def propose(parsed: Path, out: Path, split: str, mode: str | None, max_side: int | None, max_proposals: int | None,
            min_size: int | None, seed: int, workers: int) -> None:
    """Selective-search region proposals for the images of PARSED (from `rcnn parse`)."""
    from .parse import Dataset
    from .propose import format_report, propose_dataset

    config = propose_config(mode=mode, max_side=max_side, max_proposals=max_proposals, min_size=min_size, seed=seed)
    report = propose_dataset(Dataset.load(parsed), out, config, split=split, workers=workers, echo=click.echo, warn=warn)
    click.echo(format_report(report))
    click.echo(f"proposals saved to {out}")


# --------------------------------------------------------------------------- crop


@main.command()
@click.argument("parsed", type=EXISTING_FILE)
@click.argument("proposals", type=EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Region-set folder (re-runs reuse finished images).")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="train", help="Which images to use.")
@click.option("--pos-iou", type=click.FloatRange(0, 1, min_open=True), default=0.5, help="A region is an object at IoU >= this with a ground-truth box.")
@click.option("--neg-iou", type=click.FloatRange(0, 1), default=0.5, help="A region is background below this IoU; regions in between are ignored.")
@click.option("--neg-per-image", type=click.IntRange(-1), default=64, help="Background regions sampled per image (every positive is kept); -1 keeps all.")
@click.option("--size", type=click.IntRange(8), default=224, help="Side of the warped crops in pixels.")
@click.option("--context", type=click.IntRange(0), default=16, help="Pixels of surrounding image kept around each region at that size (R-CNN: 16).")
@click.option("--codec", type=click.Choice(["jpeg", "png"]), default="jpeg", help="How crops are stored: jpeg (quality 95, small) or png (lossless).")
@click.option("--format", "fmt", type=click.Choice(["shards", "imagefolder"]), default="shards", help="imagefolder also writes a torchvision ImageFolder tree of files.")
@click.option("--no-gt", is_flag=True, help="Do not add the ground-truth boxes themselves as positives.")
@click.option("--seed", type=int, default=0, help="Background sampling seed.")
@handle_errors
def crop(parsed: Path, proposals: Path, out: Path, split: str, pos_iou: float, neg_iou: float, neg_per_image: int,
         size: int, context: int, codec: str, fmt: str, no_gt: bool, seed: int) -> None:
    """Label the proposals of PARSED by IoU and store the region training set."""
    from .crop import CropConfig, crop_dataset, format_report
    from .parse import Dataset

    config = CropConfig(pos_iou=pos_iou, neg_iou=neg_iou, neg_per_image=neg_per_image, size=size, context=context,
                        codec=codec, include_gt=not no_gt, seed=seed)
    report = crop_dataset(Dataset.load(parsed), proposals, out, config, split=split, imagefolder=fmt == "imagefolder", warn=warn)
    click.echo(format_report(report))
    click.echo(f"region set saved to {out}")


# --------------------------------------------------------------------------- train


@main.command("train")
@click.argument("crops", type=EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder to write.")
@click.option("--backbone", type=click.Choice(["mobilenet_v2", "efficientnet_lite0"]), default="mobilenet_v2", help="Feature extractor (efficientnet_lite0 has ImageNet weights that work offline).")
@click.option("--weights", default="imagenet", help="imagenet, none (random), or a path to a state dict.")
@click.option("--freeze-backbone/--fine-tune", default=True, help="Train only the head on cached features (default), or the whole network.")
@click.option("--epochs", type=click.IntRange(1), default=10, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(2), default=128, help="Regions per batch.")
@click.option("--fg-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, help="Share of object regions in each batch (R-CNN used 32 of 128 = 0.25).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", help="SGD with momentum 0.9, or Adam.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="Learning rate.")
@click.option("--class-weights", default="auto", help="auto (inverse frequency from the crop metadata), none, or one number per class: w_background,w_1,...")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, help="Share of images held out for validation.")
@click.option("--hflip", is_flag=True, help="Horizontal-flip augmentation (cached too when the backbone is frozen).")
@click.option("--input-size", type=click.IntRange(0, 1024), default=0, help="Network input side in pixels; 0 = the crop size.")
@click.option("--seed", type=int, default=0, help="Random seed (split, batches, initialisation).")
@click.option("--device", default="auto", help="auto (GPU when there is one), cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/checkpoint.pt.")
@handle_errors
def train_cmd(crops: Path, out: Path, backbone: str, weights: str, freeze_backbone: bool, epochs: int, batch_size: int,
              fg_fraction: float, optimizer: str, lr: float, class_weights: str, val_fraction: float, hflip: bool,
              input_size: int, seed: int, device: str, resume: bool) -> None:
    """Train the region classifier on the region set CROPS (from `rcnn crop`)."""
    from .train import TrainConfig, format_report, train

    config = TrainConfig(backbone=backbone, weights=weights, freeze_backbone=freeze_backbone, epochs=epochs,
                         batch_size=batch_size, fg_fraction=fg_fraction, optimizer=optimizer, lr=lr,
                         class_weights=class_weights, val_fraction=val_fraction, hflip=hflip, input_size=input_size,
                         seed=seed, device=device)
    report = train(crops, out, config, resume=resume)
    click.echo(format_report(report))
    click.echo(f"model saved to {out}")


# --------------------------------------------------------------------------- detect


def detect_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Detection options shared by `detect`, `evaluate` and `pipeline`."""
    for opt in reversed([
        click.option("--threshold", type=click.FloatRange(0, 1), default=0.3, help="Keep class scores at or above this (the reference pipeline used 0.8)."),
        click.option("--nms-iou", type=click.FloatRange(0, 1, min_open=True), default=0.3, help="Class-wise NMS IoU (R-CNN: 0.3)."),
        click.option("--vote-iou", type=click.FloatRange(0, 1), default=0.5, help="Box voting after NMS: average each kept box with same-class boxes overlapping it at this IoU, by score; 0 = off."),
        click.option("--no-box-regression", is_flag=True, help="Do not refine boxes with the model's box regressor."),
        click.option("--max-detections", type=click.IntRange(1), default=100, help="At most N boxes per image, best first."),
        click.option("--detect-proposals", "detect_proposals", type=click.IntRange(1), default=500, help="Score the first N proposals of each image."),
        click.option("--batch-size", type=click.IntRange(0), default=0, help="Crops per forward pass; 0 = auto (4 on a CPU, measured fastest on 2 cores; 64 on a GPU)."),
        click.option("--device", default="auto", help="auto (GPU when there is one), cpu or cuda."),
    ]):
        fn = opt(fn)
    return fn


def make_detect_config(model: Any, threshold: float, nms_iou: float, vote_iou: float, no_box_regression: bool,
                       max_detections: int, detect_proposals: int, batch_size: int, draw_threshold: float = 0.5,
                       **propose: Any) -> Any:
    from .detect import DetectConfig, model_propose_config

    return DetectConfig(threshold=threshold, nms_iou=nms_iou, vote_iou=vote_iou, box_regression=not no_box_regression,
                        max_detections=max_detections, max_proposals=detect_proposals, batch_size=batch_size,
                        draw_threshold=draw_threshold, propose=propose_config(model_propose_config(model), **propose))


@main.command("detect")
@click.argument("model_dir", type=EXISTING_DIR)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/detect/predict, auto-numbered].")
@click.option("--name", default="predict", help="Run name under runs/detect when --out is not given.")
@detect_options
@propose_options
@click.option("--proposals", type=EXISTING_DIR, help="Reuse this folder of `rcnn propose` instead of running selective search.")
@click.option("--draw-threshold", type=click.FloatRange(0, 1), default=0.5, help="Annotated images show only detections scoring at least this; the JSON/CSV keep all.")
@click.option("--save-xml", is_flag=True, help="Also write VOC XML per image (for annotation tools).")
@click.option("--no-images", is_flag=True, help="Do not write annotated images.")
@handle_errors
def detect_cmd(model_dir: Path, inputs: tuple[str, ...], out: Path | None, name: str, threshold: float, nms_iou: float,
               vote_iou: float, no_box_regression: bool, max_detections: int, detect_proposals: int, batch_size: int, device: str, mode: str | None,
               max_side: int | None, max_proposals: int | None, min_size: int | None, proposals: Path | None,
               draw_threshold: float, save_xml: bool, no_images: bool) -> None:
    """Detect objects in INPUTS (image files, folders or globs) with the model in MODEL_DIR."""
    from .detect import detect, next_run_dir
    from .model import load_model

    model = load_model(model_dir, device)
    config = make_detect_config(model, threshold, nms_iou, vote_iou, no_box_regression, max_detections, detect_proposals,
                                batch_size, draw_threshold, mode=mode,
                                max_side=max_side, max_proposals=max_proposals, min_size=min_size)
    run = out or next_run_dir("runs/detect", name)
    detect(model, list(inputs), run, config, save_images=not no_images, save_xml=save_xml, proposals=proposals,
           echo=click.echo, warn=warn)


# --------------------------------------------------------------------------- evaluate


@main.command("evaluate")
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.argument("parsed", type=EXISTING_FILE)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", help="Which annotated images to compare against.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Report file [default: beside DETECTIONS, evaluation.json].")
@detect_options
@handle_errors
def evaluate_cmd(detections: Path, parsed: Path, split: str, out: Path | None, threshold: float, nms_iou: float,
                 vote_iou: float, no_box_regression: bool, max_detections: int, detect_proposals: int, batch_size: int, device: str) -> None:
    """Score DETECTIONS (detections.json, or a model folder to run) against the annotations in PARSED."""
    import json

    from .evaluate import evaluate, evaluate_model, format_report, load_detections, save_report
    from .parse import Dataset

    dataset = Dataset.load(parsed)
    if out is not None:
        check_output_file(out, (detections, parsed))
    if detections.is_dir():  # a model folder: detect on the split first, into a folder of its own
        run = out.with_name(out.stem + "_detect") if out else detections / "eval"
        detections = evaluate_model(detections, dataset, split, run, device, threshold=threshold, nms_iou=nms_iou,
                                    vote_iou=vote_iou, box_regression=not no_box_regression, max_detections=max_detections,
                                    max_proposals=detect_proposals, batch_size=batch_size, echo=click.echo, warn=warn)
    out = check_output_file(out or detections.parent / "evaluation.json", (detections, parsed))
    plot = check_output_file(out.with_suffix(".pr.png"), (detections, parsed), "the precision-recall plot")
    report = evaluate(load_detections(detections), dataset, split, plot=plot)
    save_report(report, out)
    click.echo(format_report(report))
    click.echo(json.dumps({"map50": report["map50"], "map50_95": report["map50_95"]}))
    click.echo(f"report saved to {out}")


# --------------------------------------------------------------------------- pipeline


@main.command("pipeline")
@click.argument("data", type=EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for every stage's output and metrics.json.")
@click.option("--classes", help="Comma-separated class names to keep (default: all).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, help="Test share when the dataset has no ImageSets split files.")
@click.option("--backbone", type=click.Choice(["mobilenet_v2", "efficientnet_lite0"]), default="efficientnet_lite0", help="Feature extractor (efficientnet_lite0 works offline).")
@click.option("--weights", default="imagenet", help="imagenet, none, or a path to a state dict.")
@click.option("--epochs", type=click.IntRange(1), default=10, help="Training epochs.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", help="Training optimiser.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="Learning rate.")
@click.option("--hflip", is_flag=True, help="Horizontal-flip augmentation.")
@click.option("--size", type=click.IntRange(8), default=224, help="Crop side in pixels (also the network input).")
@click.option("--neg-per-image", type=click.IntRange(-1), default=64, help="Background regions sampled per training image.")
@click.option("--workers", type=click.IntRange(0), default=0, help="Selective-search processes; 0 = one per core.")
@propose_options
@detect_options
@handle_errors
def pipeline_cmd(data: Path, out: Path, classes: str | None, test_fraction: float, backbone: str, weights: str, epochs: int,
                 optimizer: str, lr: float, hflip: bool, size: int, neg_per_image: int, workers: int, mode: str | None,
                 max_side: int | None, max_proposals: int | None, min_size: int | None, threshold: float, nms_iou: float,
                 vote_iou: float, no_box_regression: bool, max_detections: int, detect_proposals: int, batch_size: int,
                 device: str) -> None:
    """Run parse → propose → crop → train → detect → evaluate on the VOC dataset DATA."""
    from .crop import CropConfig
    from .detect import DetectConfig
    from .pipeline import PipelineConfig, run_pipeline
    from .train import TrainConfig

    config = PipelineConfig(
        classes=split_csv(classes), test_fraction=test_fraction, workers=workers,
        propose=propose_config(mode=mode, max_side=max_side, max_proposals=max_proposals, min_size=min_size),
        crop=CropConfig(size=size, neg_per_image=neg_per_image),
        train=TrainConfig(backbone=backbone, weights=weights, epochs=epochs, optimizer=optimizer, lr=lr, hflip=hflip, device=device),
        detect=DetectConfig(threshold=threshold, nms_iou=nms_iou, vote_iou=vote_iou, box_regression=not no_box_regression,
                            max_detections=max_detections, max_proposals=detect_proposals, batch_size=batch_size),
    )
    metrics = run_pipeline(data, out, config, echo=click.echo)
    click.echo(f"\nmAP@0.5 {metrics['map50']}  mAP@[.5:.95] {metrics['map50_95']}  on {metrics['n_test_images']} test images")
    click.echo(f"annotated images: {out / 'detect'}   metrics: {out / 'metrics.json'}")


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), help="Where the demo writes everything.")
@click.option("--images", "n_images", type=click.IntRange(10), default=60, help="Synthetic images to generate.")
@handle_errors
def demo_cmd(out: Path, n_images: int) -> None:
    """The built-in demo: a synthetic VOC dataset, then the whole pipeline on it (offline)."""
    from .crop import CropConfig
    from .pipeline import PipelineConfig, run_pipeline
    from .synth import make_dataset
    from .train import TrainConfig

    output_dir(out, "pipeline")  # claim the folder before writing the dataset into it
    data = out / "data"
    if not (data / "Annotations").is_dir():
        make_dataset(data, images=n_images, seed=0)
        click.echo(f"synthetic dataset: {n_images} images of discs and squares in {data}")
    config = PipelineConfig(crop=CropConfig(size=128, neg_per_image=32),
                            train=TrainConfig(backbone="efficientnet_lite0", epochs=10))
    metrics = run_pipeline(data, out, config, echo=click.echo)
    click.echo(f"\nmAP@0.5 {metrics['map50']}  mAP@[.5:.95] {metrics['map50_95']}  on {metrics['n_test_images']} test images")
    click.echo(f"annotated images: {out / 'detect'}   metrics: {out / 'metrics.json'}")


if __name__ == "__main__":  # pragma: no cover
    main()
