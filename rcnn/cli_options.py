"""Option groups several ``rcnn`` commands share (selective search, scaling out, detection, the architecture),
the names of the settings they set, and the architecture checks of ``rcnn train``: everything
architecture-specific is read from the registry (:mod:`rcnn.arch`).

Importing it imports click and the registry, not torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .arch import ARCHS, ArchSpec, arch_for_input, get_arch
from .clitools import RegistryChoice, RegistryList, apply, option_for, resolve, split_csv
from .scale import RAY_TIMEOUT, ray_cluster

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)

PROPOSE = "propose:ProposeConfig"
CROP = "crop:CropConfig"
TRAIN = get_arch("rcnn").settings  # the classic R-CNN's settings: what most training options set
FAST = get_arch("fast").settings
FORMATS = ("auto", "voc", "coco", "yolo")  # rcnn.parse.FORMATS, written here too so that importing the CLI imports no reader
DETECT = "detect:DetectConfig"
PIPELINE = "pipeline:PipelineConfig"
ARCH_CHOICE = RegistryChoice("arch:ARCHS")  # --arch: the registered architectures
ARCH_LIST = RegistryList("arch:ARCHS")  # pipeline --arch: one or several (compared side by side)


def per_arch(attribute: str, only: Callable[[Any], bool] = lambda spec: True) -> str:
    """``"fast 0.05, rcnn 0.3"``: an attribute of every registered architecture (of those ``only`` keeps), for --help."""
    return ", ".join(f"{name} {getattr(spec, attribute)}" for name, spec in ARCHS.items() if only(spec))


def arch_help(attribute: str) -> str:
    """``"fast: ...; rcnn: ..."``: what each registered architecture is, for --arch's help."""
    return "; ".join(f"{name}: {getattr(spec, attribute)}" for name, spec in ARCHS.items()) + "."


def train_arch_default() -> str:
    """The default of `rcnn train --arch`, which follows the input (:func:`rcnn.arch.arch_for_input`)."""
    return (f"{arch_for_input(False).name} for a file, {arch_for_input(False, proposals=True).name} for a file with "
            f"--proposals, {arch_for_input(True).name} for a folder")


# --------------------------------------------------------------------------- scaling out (rcnn.scale)


def shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Click callback: "1/4" -> (1, 4); a bad value is a usage error."""
    from .scale import parse_shard

    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def ray_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: the Ray address, after checking that Ray is installed (one line saying how otherwise)."""
    if value is not None and importlib.util.find_spec("ray") is None:
        raise click.ClickException("--ray needs Ray, which is not installed: pip install 'rcnn[ray]'")
    return value


def scale_options(source: str, shard: bool = True) -> Callable[[Any], Any]:
    """``--shard K/N`` (unless ``shard`` is False), ``--ray [ADDRESS]`` (the ``ray`` setting of ``source``) and
    ``--ray-timeout`` (the pipeline's ``ray_timeout``; other commands reach the cluster with :func:`ray_session`)."""
    ray = option_for(
        source, "ray", "--ray", is_flag=False, flag_value="local", callback=ray_option, metavar="[ADDRESS]",
        default_text="no Ray",
        help="Run the per-image work as Ray tasks (pip install 'rcnn[ray]'): on the cluster at ADDRESS (auto, "
             "HOST:PORT, ray://HOST:10001), or on a local one started here (--ray alone, or --ray local).")
    timeout = option_for(
        PIPELINE, "ray_timeout", "--ray-timeout", type=click.FloatRange(0, min_open=True),
        help="Seconds to reach the --ray cluster (its name resolved, its port answering, ray.init returned) before "
             "giving up with one line.")
    ray = apply(ray, timeout)
    if not shard:
        return ray
    return apply(click.option(
        "--shard", "shard", callback=shard_option, metavar="K/N",
        help="Process only shard K of N: the images whose index, sorted by path, is K modulo N. Shards may run at "
             "once into one --out; a run without --shard then writes the report, computing only what is missing. "
             "From a scheduler: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT."), ray)


@contextmanager
def ray_session(ray: str | None, timeout: float | None) -> Iterator[None]:
    """The command's --ray cluster, reached once within --ray-timeout (``timeout``; None: :data:`rcnn.scale.RAY_TIMEOUT`);
    the stage's tasks then run in this open session. Without --ray, nothing."""
    if ray is None:
        yield
        return
    with ray_cluster(ray, timeout=RAY_TIMEOUT if timeout is None else timeout):
        yield


# --------------------------------------------------------------------------- propose

def propose_options(default_text: str | None = None, max_help: str = "") -> Callable[[Any], Any]:
    """Selective-search options of `propose`, `pipeline` and (``default_text``: the model's settings) `detect`;
    ``max_help`` ends --max-proposals' help."""
    return apply(
        option_for(PROPOSE, "mode", "--mode", type=RegistryChoice("propose:MODES"), default_text=default_text,
                   help="Selective-search strategy."),
        option_for(PROPOSE, "max_side", "--max-side", type=click.IntRange(0), default_text=default_text,
                   help="Run selective search on a copy whose long side is at most N pixels; 0 = full size."),
        option_for(PROPOSE, "max_proposals", "--max-proposals", type=click.IntRange(1), default_text=default_text,
                   help="Keep at most N proposals per image." + max_help),
        option_for(PROPOSE, "min_size", "--min-size", type=click.IntRange(0), default_text=default_text,
                   help="Drop proposals narrower or shorter than N pixels."),
    )


PROPOSER_FN = "proposer:propose_with_model"  # rcnn propose --model


def proposer_max_help() -> str:
    """What --max-proposals keeps with --model, from the registry (ArchSpec.proposer_max of each proposer)."""
    able = per_arch("proposer_max", only=lambda spec: bool(spec.proposer))
    default = next(f.default for f in dataclasses.fields(ArchSpec) if f.name == "proposer_max")
    return f" With --model: its architecture's default ({able or f'{default} unless it sets another'})."


# --------------------------------------------------------------------------- train

BACKBONE = option_for(TRAIN, "backbone", "--backbone", type=RegistryChoice("backbones:BACKBONES"),
                      help="Feature extractor, registered in rcnn/backbones.py (efficientnet_lite0's ImageNet weights work offline).")
# shared training options: where Fast and Faster R-CNN's default (the same settings) differs, --help says so
FAST_DEFAULT = ("--arch fast, faster", FAST)


def given_args(ctx: click.Context) -> list[str]:
    """Command-line arguments that give ``ctx``'s command the parameters the user gave (defaults left out)."""
    from click.core import ParameterSource

    options: list[str] = []
    arguments: list[str] = []
    for p in ctx.command.params:
        if p.name is None or ctx.get_parameter_source(p.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = ctx.params[p.name]
        if isinstance(p, click.Argument):
            arguments += [str(v) for v in value] if isinstance(value, (tuple, list)) else [str(value)]
        elif isinstance(p, click.Option) and p.is_flag:
            if p.secondary_opts:
                options.append(p.opts[0] if value else p.secondary_opts[0])
            else:  # a flag without an opposite is on the command line only when given
                options.append(p.opts[0])
        elif isinstance(p, click.Option):
            for v in value if p.multiple else [value]:
                options += [p.opts[0], repr(v) if isinstance(v, float) else str(v)]
    return [*options, "--", *arguments]



def check_train_arch(arch: str, source: Path, proposals: Path | None, resume: bool, options: dict[str, Any]) -> None:
    """Raise UsageError when the input or an option given does not fit the architecture (its registry entry)."""
    spec = get_arch(arch)
    fields = {f.name for f in dataclasses.fields(spec.settings_class())}
    foreign = sorted(set(options) - fields)
    if foreign:
        raise click.UsageError(f"--arch {arch} has no setting {', '.join(foreign)}")
    if (source.is_dir() != (spec.input == "regions") or (proposals is not None) != spec.proposals
            or (resume and not spec.resumable)):
        raise click.UsageError(spec.input_error)


def steps_split(arch: str, options: dict[str, Any], processes: int) -> None:
    """Raise UsageError when the architecture splits each step's images over the processes and they do not split."""
    if "images_per_step" not in {f.name for f in dataclasses.fields(get_arch(arch).settings_class())}:
        return
    per_step = options.get("images_per_step") or 1
    if per_step % processes:
        raise click.UsageError(f"--images-per-step {per_step} does not split over {processes} processes "
                               f"(each takes its share of a step's images); use a multiple of {processes}")


# --------------------------------------------------------------------------- detect

def fitted_default(attribute: str) -> Callable[[], str]:
    """--help's default of a post-processing option: the model's fitted value, or (an older model folder) the old
    fixed one, ``attribute`` of :data:`rcnn.postprocess.DEFAULT_POSTPROCESS` (read when --help is written)."""
    def text() -> str:
        old = getattr(resolve("postprocess:DEFAULT_POSTPROCESS"), attribute)
        return f"the model's, fitted on its hold-out images; {old} for older models"
    return text


detect_options = apply(
    option_for(DETECT, "threshold", "--threshold", type=click.FloatRange(0, 1), default_text=f"by architecture: {per_arch('score_threshold')}",
               help="Keep class scores at or above this (the reference pipeline used 0.8)."),
    option_for(DETECT, "nms_iou", "--nms-iou", type=click.FloatRange(0, 1, min_open=True), default_text=fitted_default("nms_iou"),
               help="Class-wise NMS IoU (R-CNN: 0.3)."),
    option_for(DETECT, "vote_iou", "--vote-iou", type=click.FloatRange(0, 1), default_text=fitted_default("voting_iou"),
               help="Box voting after NMS: average each kept box with same-class boxes overlapping it at this IoU, by score; 0 = off."),
    option_for(DETECT, "hflip_tta", "--tta", is_flag=True,
               help="Test-time augmentation: score the horizontally mirrored image too and merge its boxes before NMS (twice the scoring)."),
    option_for(DETECT, "box_regression", "--no-box-regression", is_flag=True, flag_value=False, help="Do not refine boxes with the model's box regressor."),
    option_for(DETECT, "max_detections", "--max-detections", type=click.IntRange(1), help="At most N boxes per image, best first."),
    option_for(DETECT, "score_proposals", "--detect-proposals", type=click.IntRange(0), help=f"Score the first N proposals of each image; 0 = by architecture ({per_arch('scored_proposals')})."),
    option_for(DETECT, "forward_batch", "--forward-batch", type=click.IntRange(0), help="Crops per forward pass; 0 = auto (4 on a CPU, measured fastest on 2 cores; 64 on a GPU)."),
    click.option("--batch-size", "batch_size", type=click.IntRange(0), hidden=True,
                 deprecated="--batch-size meant crops per forward pass here; use --forward-batch"),
    option_for(DETECT, "device", "--device", help="auto (GPU when there is one), cpu or cuda."),
)


def detect_settings(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the old ``--batch-size`` of detection moved to ``forward_batch`` (``--forward-batch`` wins)."""
    options = dict(options)
    old = options.pop("batch_size", None)
    if options.get("forward_batch") is None:
        options["forward_batch"] = old
    return options


def class_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | None) -> list[str] | None:
    """Click callback of a repeatable, comma-separated option: ("cat,dog", "bird") -> ["cat", "dog", "bird"]; none: None."""
    names = [n for v in value or () for n in split_csv(v) or []]
    return names or None


DETECT_FN = "detect:detect"
RUNTIMES = ("auto", "torch", "onnx")  # rcnn.detect.RUNTIMES (written here too: importing the CLI does not import torch)
detect_outputs = apply(
    click.option("--source", help="Read frames from a camera index (0, 1, ...) or a stream URL too; stops at --max-frames or Ctrl-C."),
    option_for(DETECT, "vid_stride", "--vid-stride", type=click.IntRange(1), help="Videos: score every Nth frame; the frames between are written with the latest boxes."),
    option_for(DETECT, "max_frames", "--max-frames", type=click.IntRange(0), help="Videos and cameras: read at most N frames; 0 = all."),
    option_for(DETECT, "keep_classes", "--classes", multiple=True, callback=class_names, default_text="all",
               help="Detect only these classes (comma-separated or repeated)."),
    option_for(DETECT, "runtime", "--runtime", type=click.Choice(RUNTIMES), help="Run the network in PyTorch, or export it to ONNX and run it in onnxruntime (CPU; needs rcnn[onnx])."),
    click.option("--save-xml", is_flag=True, help="Also write VOC XML per image (for annotation tools)."),
    option_for(DETECT_FN, "save_txt", "--save-txt", is_flag=True, help="Also write YOLO labels: labels/NAME.txt, `class cx cy w h` normalised, class 0-based."),
    option_for(DETECT_FN, "save_conf", "--save-conf", is_flag=True, help="With --save-txt: the score as a sixth column."),
    option_for(DETECT_FN, "save_crop", "--save-crop", is_flag=True, help="Also write each detection's pixels: crops/CLASS/NAME_K.jpg."),
    click.option("--no-images", is_flag=True, help="Do not write annotated images or videos."),
)

