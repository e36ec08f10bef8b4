"""``python -m rcnn.core.resnet``: make-data, train, separability. A thin layer over the library, as ``rcnn/cli.py``.

Every default lives in the settings dataclasses (``ResNetConfig``, ``StudyTrainConfig``, ``SeparabilityConfig``)
or the library function, and ``--help`` shows it from there. Bad input is one line and a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ...clitools import RegistryChoice, configured, given, handle_errors, option_for

__all__ = ["main"]

MODEL = "core.resnet.model:ResNetConfig"
TRAIN = "core.resnet.train:StudyTrainConfig"
SEPARABILITY = "core.resnet.study:SeparabilityConfig"
DIGITS = "core.resnet.data:make_digits"


def blocks_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Click callback: "2,2,2" -> (2, 2, 2)."""
    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):  # int() would take "２", "2_0", "+2"
        raise click.BadParameter(f"{value[:60]!r} is not a comma-separated list of block counts, e.g. 2,2,2")
    return tuple(int(v) for v in parts)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """The residual-network study: train variants of MyResNet on 32x32 images, then measure each layer's separability."""


@main.command("make-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@option_for(DIGITS, "limit", "--limit", type=click.IntRange(0), help="Write at most N images; 0 = all 1,797 digits.")
@option_for(DIGITS, "test_fraction", "--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of the images in test/.")
@option_for(DIGITS, "seed", "--seed", type=int, help="Seed of the colours, positions and split.")
@handle_errors
def make_data(out: Path, **options: Any) -> None:
    """Write scikit-learn's digits on coloured 32x32 canvases to OUT as an ImageFolder tree (train/ and test/)."""
    from .data import make_digits

    make_digits(out, **given(options))
    n = sum(1 for _ in out.rglob("*.png"))
    click.echo(f"{n} images written to {out} (train/ and test/, one folder per digit)")


@main.command("train")
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), required=True, help="A cifar-10-batches-bin folder, or an ImageFolder tree of 32x32 images (train/ and test/, or one tree).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder to write.")
@click.option("--variant", help="NORM-SHORTCUT-pPATHS, e.g. layer-none-p4 (NORM: none|batch|group|layer, SHORTCUT: identity|conv1x1|none, PATHS: 1|2|4) [default: batch-identity-p1, ResNetConfig's]")
@option_for(MODEL, "width", "--width", type=click.IntRange(4), help="Channels of the first stage (each later stage doubles them); a multiple of 4.")
@option_for(MODEL, "blocks", "--blocks", callback=blocks_list, help="Residual blocks per stage, comma-separated.")
@option_for(TRAIN, "epochs", "--epochs", type=click.IntRange(1), help="Training epochs; the best validation epoch is kept.")
@option_for(TRAIN, "batch_size", "--batch-size", type=click.IntRange(1), help="Images per step.")
@option_for(TRAIN, "optimizer", "--optimizer", type=RegistryChoice("core.resnet.train:OPTIMIZERS"), help="Optimiser.")
@option_for(TRAIN, "lr", "--lr", type=click.FloatRange(0, min_open=True), help="Learning rate.")
@option_for(TRAIN, "momentum", "--momentum", type=click.FloatRange(0, 1, max_open=True), help="SGD momentum.")
@option_for(TRAIN, "weight_decay", "--weight-decay", type=click.FloatRange(0), help="L2 penalty.")
@option_for(TRAIN, "val_fraction", "--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of the training images held out for validation.")
@option_for(TRAIN, "augment", "--augment/--no-augment", help="Random crops (padding 4) and horizontal flips.")
@option_for(TRAIN, "train_limit", "--train-limit", type=click.IntRange(0), help="Train on at most N training images; 0 = all.")
@option_for(TRAIN, "seed", "--seed", type=int, help="Seed of the split, batch order and initialisation.")
@option_for(TRAIN, "device", "--device", help="auto (GPU when there is one), cpu or cuda.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@handle_errors
def train_cmd(data: Path, out: Path, variant: str | None, quiet: bool, **options: Any) -> None:
    """Train one variant of MyResNet on --data and write the run folder --out."""
    from .model import ResNetConfig, parse_variant
    from .train import StudyTrainConfig, train_study

    model_config = configured(ResNetConfig(**(parse_variant(variant) if variant is not None else {})), options)
    report = train_study(data, out, model_config, configured(StudyTrainConfig(), options), progress=not quiet)
    click.echo(f"{report.variant}: test accuracy {report.test_accuracy:.4f} (best epoch {report.best_epoch}, "
               f"val {report.best_val_accuracy:.4f}, {report.parameters} parameters, "
               f"{report.train_images_per_second:.0f} img/s on {report.device}); run saved to {out}")


@main.command("separability")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), help="The images; default: the folder each run was trained on.")
@option_for(SEPARABILITY, "fraction", "--fraction", type=click.FloatRange(0, 1, min_open=True), help="Share of each split in the class-balanced subset.")
@option_for(SEPARABILITY, "chunk", "--chunk", type=click.IntRange(1), help="Rows of the distance matrix computed at a time.")
@option_for(SEPARABILITY, "seed", "--seed", type=int, help="Seed of the subsets.")
@option_for(SEPARABILITY, "device", "--device", help="auto (GPU when there is one), cpu or cuda.")
@click.option("--compare", "compare", type=click.Path(dir_okay=False, path_type=Path), help="Also write one PNG comparing every run's curves.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@handle_errors
def separability_cmd(runs: tuple[Path, ...], data: Path | None, compare: Path | None, quiet: bool, **options: Any) -> None:
    """SI and CSI of every layer of each trained RUN: writes RUN/separability.json, .csv and .png."""
    from ...io import check_output_file
    from .study import COMPARE_TAG, SeparabilityConfig, format_table, plot_comparison, run_separability

    config = configured(SeparabilityConfig(), options)
    if compare is not None:  # refuse a path it may not write before the work (a run's own files among them), not after
        own = tuple(Path(r) / f"separability{ext}" for r in runs for ext in (".json", ".csv", ".png"))
        check_output_file(compare, COMPARE_TAG, inputs=own, what="--compare", folders=("resnet",))
        compare.parent.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails here, not after the work
    for run in runs:
        rows = run_separability(run, data, config, progress=not quiet)
        click.echo(f"{run}:\n{format_table(rows)}")
    if compare is not None:
        plot_comparison(list(runs), compare)
        click.echo(f"comparison plot saved to {compare}")

