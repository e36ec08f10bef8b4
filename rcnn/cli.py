"""The ``rcnn`` command line: a thin layer over the library.

Each command validates its options, calls one library function and prints.
Library errors (:class:`rcnn.errors.RcnnError`) become one line and exit 1;
invalid option values become a usage error and exit 2. No tracebacks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from . import __version__
from .arch import arch_for_input, get_arch
from .clitools import (LibraryOption, RegistryChoice, apply, configured, csv_list, given, handle_errors,  # noqa: F401
                       library_default, one_line, option_for, resolve, split_csv)
from .cli_options import (ARCH_CHOICE, ARCH_LIST, BACKBONE, CROP, DETECT, DETECT_FN, EXISTING_DIR, EXISTING_FILE, FAST,  # noqa: F401
                          FAST_DEFAULT, FORMATS, PIPELINE, PROPOSE, PROPOSER_FN, TRAIN, arch_help, check_train_arch,
                          detect_options, detect_outputs, detect_settings, given_args, propose_options, proposer_max_help,
                          ray_session, scale_options, steps_split, train_arch_default)
from .io import check_output_file, print_err as warn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="rcnn")
def main() -> None:
    """R-CNN object detection for Pascal VOC datasets: parse → propose → crop → train → detect → evaluate."""



# --------------------------------------------------------------------------- parse


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the parsed records (JSON).")
@option_for("parse:parse_dataset", "format", "--format", type=click.Choice(FORMATS), help="Dataset format; auto: VOC (Annotations/*.xml), COCO (a .json, annotations/instances_*.json) or YOLO (data.yaml, labels/*.txt), as found.")
@click.option("--annotations", type=EXISTING_DIR, help="Folder of VOC XML files (overrides the layout of DATA).")
@click.option("--images", type=EXISTING_DIR, help="Folder of images (overrides the layout of DATA; COCO: what file_name is relative to).")
@click.option("--classes", callback=csv_list, help="Comma-separated class names to keep, e.g. cat,dog (default: all).")
@option_for("parse:parse_dataset", "test_fraction", "--test-fraction", type=click.FloatRange(0, 1, max_open=True), help="Test share of the deterministic split, used when the dataset has no ImageSets/Main split files.")
@option_for("parse:parse_dataset", "seed", "--seed", type=int, help="Seed of the deterministic split.")
@click.option("--strict", is_flag=True, help="Stop at the first file that must be skipped.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary, not each warning.")
@handle_errors
def parse(data: Path | None, out: Path, annotations: Path | None, images: Path | None, classes: list[str] | None,
          strict: bool, quiet: bool, **options: Any) -> None:
    """Read a Pascal VOC, COCO or YOLO dataset DATA (a folder, a COCO .json or a YOLO .yaml) into clean records (one JSON file)."""
    from .parse import FORMAT, format_summary, parse_dataset

    if data is None and (annotations is None or images is None):
        raise click.UsageError("give DATA, or both --annotations and --images")
    check_output_file(out, FORMAT)
    ds = parse_dataset(data, annotations_dir=annotations, images_dir=images, classes=classes, strict=strict,
                       progress=True, **given(options))
    for p in ds.problems:
        if p.level == "error" or not quiet:
            click.echo(str(p), err=True)
    if not ds.images:
        first = next((p for p in ds.problems if p.level == "error"), None)
        raise click.ClickException(f"no usable images in {data or annotations}"
                                   + (f" (first problem: {first.file}: {first.message})" if first else ""))
    ds.save(check_output_file(out, FORMAT, tuple(a.annotation for a in ds.images) + tuple(a.path for a in ds.images)))
    click.echo(format_summary(ds))
    click.echo(f"records saved to {out}")


# --------------------------------------------------------------------------- show


@main.command("show")
@click.argument("source", metavar="DATA_OR_PARSED", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for images/, labels.png and summary.json.")
@option_for("show:show_dataset", "split", "--split", type=click.Choice(["train", "test", "all"]), help="Which images to draw and count.")
@option_for("show:show_dataset", "max_images", "--max-images", type=click.IntRange(0), help="Draw the first N images (by id); 0 = all. The summary counts every image.")
@option_for("parse:parse_dataset", "format", "--format", type=click.Choice(FORMATS), help="Format of DATA (see `rcnn parse --help`).")
@handle_errors
def show_cmd(source: Path, out: Path, **options: Any) -> None:
    """Draw the ground-truth boxes of DATA (a dataset, or a file of `rcnn parse`) and summarise its labels."""
    from .show import format_report, show_dataset

    report = show_dataset(source, out, echo=click.echo, warn=warn, **given(options))
    click.echo(format_report(report))


# --------------------------------------------------------------------------- synth


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@option_for("synth:make_dataset", "images", "--images", type=click.IntRange(1), help="Number of images.")
@option_for("synth:make_dataset", "seed", "--seed", type=int, help="Random seed.")
@option_for("synth:make_dataset", "width", "--width", type=click.IntRange(64), help="Image width in pixels.")
@option_for("synth:make_dataset", "height", "--height", type=click.IntRange(64), help="Image height in pixels.")
@handle_errors
def synth(out: Path, **options: Any) -> None:
    """Write a small synthetic VOC dataset (discs and squares) to OUT."""
    from .synth import make_dataset

    make_dataset(out, **given(options))
    n_images = options["images"] or library_default("synth:make_dataset", "images")
    click.echo(f"{n_images} images written to {out}")


@main.command()
@click.argument("parsed", type=EXISTING_FILE)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Proposals folder (re-runs reuse what it holds).")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", help="Which images to process.")
@propose_options(max_help=proposer_max_help())
@option_for(PROPOSE, "seed", "--seed", type=int, help="Seed of the proposal order (libc rand, used by OpenCV).")
@option_for("propose:propose_dataset", "workers", "--workers", type=click.IntRange(0), help="Processes; 0 = one per CPU core.")
@scale_options("propose:propose_dataset")
@click.option("--model", "model_dir", type=EXISTING_DIR, help="Proposals of this model folder (`rcnn train` of an architecture "
              "that proposes regions) instead of selective search, run in this process; its architecture sets --max-proposals.")
@option_for(PROPOSER_FN, "device", "--device", help="--model: where it runs: auto (GPU when there is one), cpu or cuda.")
@handle_errors
def propose(parsed: Path, out: Path, split: str, model_dir: Path | None, device: str | None, **options: Any) -> None:
    """Region proposals for the images of PARSED (from `rcnn parse`): selective search, or a model's (--model)."""
    from .parse import Dataset
    from .propose import ProposeConfig, format_report, propose_dataset

    timeout = options.pop("ray_timeout", None)
    if device is not None and model_dir is None:
        raise click.UsageError("--device is where the --model runs; selective search runs on the CPU")
    if model_dir is not None:
        report = learned_proposals(Dataset.load(parsed), out, model_dir, split, device, options)
    else:
        with ray_session(options.get("ray"), timeout):
            report = propose_dataset(Dataset.load(parsed), out, configured(ProposeConfig(), options), split=split,
                                     echo=click.echo, warn=warn, **given(options, "workers", "shard", "ray"))
    click.echo(format_report(report))
    click.echo(f"proposals saved to {out}")


def learned_proposals(ds: Any, out: Path, model_dir: Path, split: str, device: str | None, options: dict[str, Any]) -> Any:
    """`rcnn propose --model`: refuses the selective-search and scaling options it does not use, then proposes."""
    from .proposer import propose_with_model

    unused = [name for name in ("mode", "max_side", "min_size", "seed", "workers", "ray") if options.get(name) is not None]
    if unused:
        raise click.UsageError(f"--model proposes with the model; --{unused[0].replace('_', '-')} is for selective search")
    return propose_with_model(ds, out, model_dir, split=split, echo=click.echo, warn=warn,
                              **given({**options, "device": device}, "max_proposals", "device", "shard"))


# --------------------------------------------------------------------------- crop


@main.command()
@click.argument("parsed", type=EXISTING_FILE)
@click.argument("proposals", type=EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Region-set folder (re-runs reuse finished images).")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="train", help="Which images to use.")
@option_for(CROP, "pos_iou", "--pos-iou", type=click.FloatRange(0, 1, min_open=True), help="A region is an object at IoU >= this with a ground-truth box.")
@option_for(CROP, "neg_iou", "--neg-iou", type=click.FloatRange(0, 1), help="A region is background below this IoU; regions in between are ignored.")
@option_for(CROP, "neg_per_image", "--neg-per-image", type=click.IntRange(-1), help="Background regions sampled per image (every positive is kept); -1 keeps all.")
@option_for(CROP, "size", "--size", type=click.IntRange(8), help="Side of the warped crops in pixels.")
@option_for(CROP, "context", "--context", type=click.IntRange(0), help="Pixels of surrounding image kept around each region at that size (R-CNN: 16).")
@option_for(CROP, "codec", "--codec", type=RegistryChoice("crop:CODECS"), help="How crops are stored: jpeg (quality 95, small) or png (lossless).")
@click.option("--format", "fmt", type=click.Choice(["shards", "imagefolder"]), default="shards", help="imagefolder also writes a torchvision ImageFolder tree of files.")
@option_for(CROP, "mine_pool", "--mine-pool", type=click.IntRange(0), help="Backgrounds per image kept aside for hard-negative mining (rcnn train --mining-rounds); 0 = none.")
@option_for(CROP, "mine_iou", "--mine-iou", type=click.FloatRange(0, 1), help="The mining pool's backgrounds overlap every object below this IoU (R-CNN: 0.3).")
@option_for(CROP, "include_gt", "--no-gt", is_flag=True, flag_value=False, help="Do not add the ground-truth boxes themselves as positives.")
@option_for(CROP, "seed", "--seed", type=int, help="Background sampling seed.")
@scale_options("crop:crop_dataset")
@handle_errors
def crop(parsed: Path, proposals: Path, out: Path, split: str, fmt: str, **options: Any) -> None:
    """Label the proposals of PARSED by IoU and store the region training set."""
    from .crop import CropConfig, crop_dataset, format_report
    from .parse import Dataset

    with ray_session(options.get("ray"), options.pop("ray_timeout", None)):
        report = crop_dataset(Dataset.load(parsed), proposals, out, configured(CropConfig(), options), split=split,
                              imagefolder=fmt == "imagefolder", warn=warn, **given(options, "shard", "ray"))
    click.echo(format_report(report))
    click.echo(f"region set saved to {out}")


@main.command("train")
@click.argument("source", metavar="PARSED_OR_CROPS", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder to write.")
@click.option("--arch", type=ARCH_CHOICE, help=f"{arch_help('summary')}  [default: {train_arch_default()}]")
@click.option("--proposals", type=EXISTING_DIR, help="--arch fast (the default with this option): the `rcnn propose` folder of PARSED's training images.")
@BACKBONE
@option_for(TRAIN, "weights", "--weights", help="imagenet, none (random), or a path to a state dict.")
@option_for(TRAIN, "freeze_backbone", "--freeze-backbone/--fine-tune", help="--arch rcnn: train only the head on cached features, or the whole network.")
@option_for(TRAIN, "epochs", "--epochs", type=click.IntRange(1), also=FAST_DEFAULT, help="Training epochs (at most, with --patience).")
@option_for(TRAIN, "patience", "--patience", type=click.IntRange(0), help="--arch rcnn: stop once the validation loss has not improved for N epochs; 0 = run every epoch.")
@option_for(TRAIN, "batch_size", "--batch-size", type=click.IntRange(2), help="--arch rcnn: regions per training batch.")
@option_for(FAST, "rois_per_image", "--rois-per-image", type=click.IntRange(4), help="--arch fast: regions sampled per image and step.")
@option_for(FAST, "images_per_step", "--images-per-step", type=click.IntRange(1), help="--arch fast: images per SGD step (under torchrun: in all, a multiple of the processes).")
@option_for(TRAIN, "fg_fraction", "--fg-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), also=FAST_DEFAULT, help="Share of object regions in each batch (R-CNN used 32 of 128 = 0.25).")
@option_for(TRAIN, "optimizer", "--optimizer", type=RegistryChoice("train:OPTIMIZERS"), help="--arch rcnn: SGD with momentum 0.9, or Adam (fast: SGD).")
@option_for(TRAIN, "lr", "--lr", type=click.FloatRange(0, min_open=True), also=FAST_DEFAULT, help="Learning rate.")
@option_for(TRAIN, "class_weights", "--class-weights", also=FAST_DEFAULT, help="auto (inverse frequency), none, or (--arch rcnn) one number per class: w_background,w_1,...")
@option_for(TRAIN, "val_fraction", "--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), also=FAST_DEFAULT, help="Share of images held out for validation.")
@option_for(TRAIN, "hflip", "--hflip/--no-hflip", also=FAST_DEFAULT, help="Horizontal-flip augmentation (cached too when the backbone is frozen).")
@option_for(TRAIN, "input_size", "--input-size", type=click.IntRange(0, 1024), help="--arch rcnn: network input side in pixels; 0 = the crop size.")
@option_for(FAST, "image_size", "--image-size", type=click.IntRange(32, 2048), help="--arch fast: resize images so the short side is N pixels.")
@option_for(FAST, "max_image_size", "--max-image-size", type=click.IntRange(32, 2048), help="--arch fast: ... and the long side at most N.")
@option_for(FAST, "frozen_stages", "--frozen-stages", type=click.IntRange(0, 4), help="--arch fast: backbone stages kept frozen (their output is cached).")
@option_for(TRAIN, "mining_rounds", "--mining-rounds", type=click.IntRange(0), help="--arch rcnn: rounds of hard-negative mining over the region set's mining pool (rcnn crop --mine-pool); 0 = off.")
@option_for(TRAIN, "mine_per_image", "--mine-per-image", type=click.IntRange(1), help="--arch rcnn: highest-scoring pool backgrounds added per image and round.")
@option_for(TRAIN, "seed", "--seed", type=int, help="Random seed (split, batches, initialisation).")
@option_for(TRAIN, "device", "--device", help="auto (GPU when there is one), cpu or cuda; a list (cuda:0,1, or cpu,cpu) "
           "trains on one process per device under torchrun.")
@click.option("--resume", is_flag=True, help="--arch rcnn: continue an interrupted run from OUT/checkpoint.pt.")
@handle_errors
def train_cmd(source: Path, out: Path, arch: str | None, proposals: Path | None, resume: bool, **options: Any) -> None:
    """Train a detector: Faster R-CNN on PARSED, Fast R-CNN on PARSED + --proposals, or the R-CNN region
    classifier on CROPS (--arch picks another).

    Under torchrun (``torchrun --nproc_per_node N -m rcnn.cli train ...``) it trains on N processes.
    """
    from .distributed import current_rank, launch, parse_device_list

    spec = get_arch(arch) if arch else arch_for_input(source.is_dir(), proposals is not None)
    check_train_arch(spec.name, source, proposals, resume, given(options))
    devices = parse_device_list(options.get("device"))
    if devices is not None:  # one process per device, under torchrun
        steps_split(spec.name, options, devices.nproc)
        status = launch(given_args(click.get_current_context()), devices)
        if status:
            warn(f"Error: torchrun exited with status {status}")
            raise click.exceptions.Exit(status)
        return
    from .engine import format_report

    settings = configured(spec.settings_class()(), options)
    report = spec.part("trainer")(source, out, settings, proposals=proposals, resume=resume, echo=click.echo)
    if report is None or current_rank() != 0:
        return  # under torchrun rank 0 prints
    click.echo(format_report(report))
    click.echo(f"model saved to {out}")


@main.command("detect")
@click.argument("model_dir", type=EXISTING_DIR, required=False)
@click.argument("inputs", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/detect/predict, auto-numbered].")
@click.option("--name", default="predict", help="Run name under runs/detect when --out is not given.")
@detect_options
@propose_options(default_text="as the model was trained")
@click.option("--proposals", type=EXISTING_DIR, help="Reuse this folder of `rcnn propose` instead of running selective search.")
@option_for(DETECT, "draw_threshold", "--draw-threshold", type=click.FloatRange(0, 1), help="Annotated images show only detections scoring at least this; the JSON/CSV keep all.")
@detect_outputs
@scale_options(DETECT_FN)
@click.option("--merge", "merge", type=EXISTING_DIR, metavar="RUN",
              help="Write detections.json, .csv and summary.json of the --shard runs into RUN, detecting first the images "
                   "no shard finished (with the model and settings the shards recorded); takes no MODEL_DIR or INPUTS.")
@handle_errors
def detect_cmd(model_dir: Path | None, inputs: tuple[str, ...], out: Path | None, name: str, proposals: Path | None,
               save_xml: bool, no_images: bool, source: str | None, shard: tuple[int, int] | None, ray: str | None,
               merge: Path | None, **options: Any) -> None:
    """Detect objects in INPUTS (images, videos, folders or globs) with the model in MODEL_DIR."""
    from .detect import DetectConfig, detect, merge_detections, model_propose_config, next_run_dir
    from .model import load_model

    if merge is not None:
        if model_dir is not None or inputs or shard is not None or source is not None:
            raise click.UsageError("--merge RUN takes no MODEL_DIR, INPUTS, --shard or --source: the run folder records them")
        with ray_session(ray, options.get("ray_timeout")):
            merge_detections(merge, echo=click.echo, warn=warn, ray=ray)
        return
    if model_dir is None:
        raise click.UsageError("give MODEL_DIR (a folder of `rcnn train`), or --merge RUN")
    if not inputs and source is None:
        raise click.UsageError("give INPUTS (images, videos, folders or globs) or --source")
    if shard is not None and out is None:
        raise click.UsageError("--shard needs --out: every shard writes into the same run folder")
    config = configured(DetectConfig(), detect_settings(options))
    model = load_model(model_dir, config.device)
    refuse_search_options(model, proposals, options)
    # selective search as the model was trained, with the options given on top
    config = dataclasses.replace(config, propose=configured(model_propose_config(model), options))
    with ray_session(ray, options.get("ray_timeout")):
        detect(model, list(inputs), out or next_run_dir("runs/detect", name), config, save_images=not no_images,
               save_xml=save_xml, proposals=proposals, echo=click.echo, warn=warn, source=source, shard=shard, ray=ray,
               **given(options, "save_txt", "save_conf", "save_crop"))


SEARCH_OPTIONS = ("mode", "max_side", "max_proposals", "min_size")  # selective search's, which --arch faster does not run


def search_options_given(options: dict[str, Any], names: tuple[str, ...] = SEARCH_OPTIONS) -> list[str]:
    """The selective-search options among ``options`` that the user gave, as flags (``--max-side``)."""
    return [f"--{n.replace('_', '-')}" for n in names if options.get(n) is not None]


def refuse_search_options(model: Any, proposals: Path | None, options: dict[str, Any]) -> None:
    """A model that proposes its own regions (--arch faster) uses no selective search: its options are a mistake."""
    if not model.spec.own_proposals:
        return
    given_names = search_options_given(options)
    if proposals is not None:
        given_names.append("--proposals")
    if given_names:
        raise click.UsageError(f"{given_names[0]} is for selective search; a {model.spec.name} model proposes its own regions")


# --------------------------------------------------------------------------- export


@main.command("export")
@click.argument("model_dir", type=EXISTING_DIR)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", help="Export format.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write [default: MODEL_DIR/model.onnx].")
@option_for("export:export_onnx", "opset", "--opset", type=click.IntRange(16, 21), help="ONNX opset (roi_align needs 16 or later).")
@click.option("--check-image", "images", multiple=True, type=EXISTING_FILE, help="Images to check onnxruntime against PyTorch on [default: two synthetic scenes].")
@option_for("export:export_onnx", "regions", "--regions", type=click.IntRange(1), help="Proposals of each check image compared.")
@handle_errors
def export_cmd(model_dir: Path, fmt: str, out: Path | None, images: tuple[Path, ...], **options: Any) -> None:
    """Export the network of the model in MODEL_DIR (the classifier, or Fast R-CNN's backbone + RoIAlign + head) to ONNX."""
    from .export import export_onnx

    report = export_onnx(model_dir, out, images=list(images) or None, **given(options))
    click.echo(f"{report.arch} network -> {report.path} (opset {report.opset}, inputs {', '.join(report.inputs)})")
    click.echo(f"onnxruntime against PyTorch on {report.regions_checked} regions of {report.images_checked} images: "
               f"max |score difference| {report.max_score_diff:.1e}, max |delta difference| {report.max_delta_diff:.1e}")


# --------------------------------------------------------------------------- evaluate


@main.command("evaluate")
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.argument("parsed", type=EXISTING_FILE)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", help="Which annotated images to compare against.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Report file [default: beside DETECTIONS, evaluation.json].")
@option_for("evaluate:evaluate", "confusion_conf", "--confusion-conf", type=click.FloatRange(0, 1), help="The confusion matrix (REPORT.confusion.png) counts detections scoring at least this.")
@detect_options
@handle_errors
def evaluate_cmd(detections: Path, parsed: Path, split: str, out: Path | None, confusion_conf: float | None, **options: Any) -> None:
    """Score DETECTIONS (detections.json, or a model folder to run) against the annotations in PARSED."""
    import json

    from .evaluate import REPORT_FORMAT, evaluate, evaluate_model, format_report, load_detections, save_report
    from .parse import Dataset

    dataset = Dataset.load(parsed)
    if out is not None:
        check_output_file(out, REPORT_FORMAT, (detections, parsed), folders=("detect",))
    if detections.is_dir():  # a model folder: detect on the split first, into a folder of its own
        from .detect import DetectConfig

        run = out.with_name(out.stem + "_detect") if out else detections / "eval"
        config = configured(DetectConfig(), detect_settings(options))
        # every DetectConfig field by name: `device` loads the model, the rest configure detection
        detections = evaluate_model(detections, dataset, split, run, echo=click.echo, warn=warn, **vars(config))
    out = check_output_file(out or detections.parent / "evaluation.json", REPORT_FORMAT, (detections, parsed), folders=("detect",))
    plot = check_output_file(out.with_suffix(".pr.png"), "evaluate", (detections, parsed), "the precision-recall plot", ("detect",))
    matrix = check_output_file(out.with_suffix(".confusion.png"), "evaluate", (detections, parsed), "the confusion matrix", ("detect",))
    report = evaluate(load_detections(detections), dataset, split, plot=plot, confusion_plot=matrix,
                      **given({"confusion_conf": confusion_conf}))
    save_report(report, out)
    click.echo(format_report(report))
    click.echo(json.dumps({"map50": report["map50"], "map50_95": report["map50_95"]}))
    click.echo(f"report saved to {out}")


# --------------------------------------------------------------------------- pipeline


def echo_result(report: Any, out: Path) -> None:
    """The last lines of `rcnn pipeline` and `rcnn demo`."""
    click.echo(f"\nmAP@0.5 {report.map50}  mAP@[.5:.95] {report.map50_95}  on {report.n_test_images} test images")
    click.echo(f"annotated images: {out / 'detect'}   metrics: {out / 'metrics.json'}")


@main.command("pipeline")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for every stage's output and metrics.json.")
@click.option("--classes", callback=csv_list, help="Comma-separated class names to keep (default: all).")
@option_for(PIPELINE, "test_fraction", "--test-fraction", type=click.FloatRange(0, 1, max_open=True), help="Test share when the dataset has no ImageSets split files.")
@option_for(PIPELINE, "arch", "--arch", type=ARCH_LIST, help=arch_help("title") + " Several, comma-separated (rcnn,fast): "
           "each runs on the same split and proposals into OUT/NAME, compared in OUT/compare.json and compare.md.")
@BACKBONE
@option_for(TRAIN, "weights", "--weights", help="imagenet, none, or a path to a state dict.")
@option_for(TRAIN, "epochs", "--epochs", type=click.IntRange(1), also=FAST_DEFAULT, help="Training epochs (at most, with --patience).")
@option_for(TRAIN, "patience", "--patience", type=click.IntRange(0), help="--arch rcnn: stop once the validation loss has not improved for N epochs; 0 = run every epoch.")
@option_for(TRAIN, "optimizer", "--optimizer", type=RegistryChoice("train:OPTIMIZERS"), help="--arch rcnn: training optimiser.")
@option_for(TRAIN, "lr", "--lr", type=click.FloatRange(0, min_open=True), also=FAST_DEFAULT, help="Learning rate.")
@option_for(TRAIN, "hflip", "--hflip/--no-hflip", also=FAST_DEFAULT, help="Horizontal-flip augmentation.")
@option_for(FAST, "image_size", "--image-size", type=click.IntRange(32, 2048), help="--arch fast: resize images so the short side is N pixels.")
@option_for(CROP, "size", "--size", type=click.IntRange(8), help="--arch rcnn: crop side in pixels (also the network input).")
@option_for(CROP, "neg_per_image", "--neg-per-image", type=click.IntRange(-1), help="--arch rcnn: background regions sampled per training image.")
@option_for(CROP, "mine_pool", "--mine-pool", type=click.IntRange(0), help="--arch rcnn: backgrounds per training image kept aside for hard-negative mining.")
@option_for(TRAIN, "mining_rounds", "--mining-rounds", type=click.IntRange(0), help="--arch rcnn: rounds of hard-negative mining over that pool; 0 = off.")
@option_for(PIPELINE, "workers", "--workers", type=click.IntRange(0), help="Selective-search processes; 0 = one per core.")
@option_for(PIPELINE, "seed", "--seed", type=int, help="Seed of every stage: the split (without split files), the proposal order, sampling and training.")
@option_for(PIPELINE, "report", "--no-report", is_flag=True, flag_value=False, help="Do not write the error-analysis page OUT/report/index.html (`rcnn report`).")
@scale_options(PIPELINE, shard=False)
@propose_options()
@detect_options
@handle_errors
def pipeline_cmd(data: Path, out: Path, arch: list[str] | None, **options: Any) -> None:
    """Run parse → propose → (crop →) train → detect → evaluate on the dataset DATA (VOC, COCO or YOLO)."""
    from .pipeline import PipelineConfig, run_pipeline

    # each option goes to the stage settings with a field of its name (--device: training and detection)
    config = PipelineConfig().with_settings(**detect_settings(options))
    if arch is None or len(arch) == 1:
        config = config.with_settings(arch=arch[0] if arch else None)
        if get_arch(config.arch).own_proposals and (ignored := search_options_given(options)):  # --workers: the report's too
            warn(f"warning: {', '.join(ignored)} set selective search, which --arch {config.arch} does not run "
                 "(it proposes its own regions): ignored; --arch fast uses them")
        echo_result(run_pipeline(data, out, config, echo=click.echo, warn=warn), out)
        return
    from .compare import format_table, run_family

    result = run_family(data, out, config, arch, echo=click.echo, warn=warn)
    click.echo("\n" + format_table(result, arch))
    click.echo(f"runs: {', '.join(str(out / name) for name in arch)}   comparison: {out / 'compare.json'}, {out / 'compare.md'}")


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), help="Where the demo writes everything.")
@option_for("pipeline:run_demo", "images", "--images", type=click.IntRange(10), help="Synthetic images to generate.")
@handle_errors
def demo_cmd(out: Path, **options: Any) -> None:
    """The built-in demo: a synthetic VOC dataset, then the whole pipeline on it (offline)."""
    from .pipeline import run_demo

    echo_result(run_demo(out, echo=click.echo, warn=warn, **given(options)), out)


# --------------------------------------------------------------------------- report


@main.command("report")
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.argument("parsed", type=EXISTING_FILE)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", help="Which annotated images to report on.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for index.html, report.json and the pictures.")
@option_for("report:make_report", "conf", "--conf", type=click.FloatRange(0, 1), help="The gallery and its TP/FP/FN counts show detections scoring at least this (AP and dAP use all).")
@option_for("report:make_report", "workers", "--workers", type=click.IntRange(0), help="Processes writing the pictures; 0 = one per core.")
@detect_options
@handle_errors
def report_cmd(detections: Path, parsed: Path, split: str, out: Path, conf: float | None, workers: int | None,
               **options: Any) -> None:
    """Write an error-analysis page of DETECTIONS (detections.json, a detect run, or a model folder to run) against
    PARSED into OUT/index.html: mAP, TIDE error breakdown, AP by object size and a gallery. Open it in a browser."""
    from .report import format_report, make_report

    report = make_report(detections, parsed, out, split, echo=click.echo, warn=warn,
                         detect_settings=given(detect_settings(options)), **given({"conf": conf, "workers": workers}))
    click.echo(format_report(report))



if __name__ == "__main__":  # pragma: no cover
    main()
