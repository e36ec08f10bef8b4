"""The ``rcnn`` command line: a thin layer over the library.

Each command validates its options, calls one library function and prints.
Library errors (:class:`rcnn.errors.RcnnError`) become one line and exit 1;
invalid option values become a usage error and exit 2. No tracebacks.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import RcnnError

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to Click's exit codes: RcnnError -> 1, ValueError -> 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RcnnError as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; finished outputs are kept and a re-run resumes", err=True)
            sys.exit(130)

    return wrapper


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
    ds = parse_dataset(data, annotations_dir=annotations, images_dir=images, classes=split_csv(classes),
                       test_fraction=test_fraction, seed=seed, strict=strict, progress=True)
    for p in ds.problems:
        if p.level == "error" or not quiet:
            click.echo(str(p), err=True)
    if not ds.images:
        raise click.ClickException("no usable images were found")
    ds.save(out)
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


if __name__ == "__main__":  # pragma: no cover
    main()
