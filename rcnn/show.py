"""Look at a dataset before training: its ground-truth boxes drawn on the images, and a one-page summary.

``show_dataset(DATA_OR_PARSED, OUT)`` writes, into the claimed folder ``OUT`` (marker kind ``show``):

* ``images/<id>.jpg``: each image with its annotated boxes and class names, one colour per class (the colours of
  ``rcnn detect``'s images); difficult objects are drawn with a thin line and ``(difficult)`` after the name;
* ``labels.png``: objects per class, box width against height (normalised to the image), aspect ratios
  (width / height, log scale) and box centres: the histograms Ultralytics writes as ``labels.jpg``;
* ``summary.json``: counts per class and split, and the quartiles of box sizes and aspect ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .io import load_rgb, output_dir, output_subdir, print_err, write_atomic, write_json
from .parse import FORMAT as PARSED_FORMAT
from .parse import Annotation, Dataset, display_path, parse_dataset
from .records import check_names, safe_child

SUMMARY_FORMAT = "rcnn-show-v1"  # the format tag of summary.json


@dataclass
class ShowReport:
    """What ``show_dataset`` wrote."""

    out: str
    images_drawn: int
    summary: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # images that could not be read (one line each)


def is_parsed_file(path: str | Path) -> bool:
    """Whether ``path`` is a file ``rcnn parse`` wrote (its format tag is near the start), not a dataset's own JSON."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"format": "{PARSED_FORMAT}"'.encode() in head


def load_source(source: str | Path, format: str = "auto", warn: Callable[[str], Any] = print_err) -> Dataset:
    """A parsed file (``rcnn parse --out``) or a dataset in any format ``rcnn parse`` reads (its problems go to ``warn``)."""
    if is_parsed_file(source):
        return Dataset.load(source)
    ds = parse_dataset(source, format=format)
    for p in ds.problems:
        if p.level == "error":
            warn(str(p))
    return ds


def box_stats(images: list[Annotation]) -> dict[str, np.ndarray]:
    """Per object, normalised to its image: ``cx``, ``cy``, ``w``, ``h`` (ndarray[N] float64), and ``aspect`` = w / h in pixels."""
    rows = [(a.width, a.height, *o.box) for a in images for o in a.objects]
    arr = np.array(rows, np.float64).reshape(-1, 6)
    W, H, x1, y1, x2, y2 = arr.T
    return {"cx": (x1 + x2) / 2 / W, "cy": (y1 + y2) / 2 / H, "w": (x2 - x1) / W, "h": (y2 - y1) / H,
            "aspect": (x2 - x1) / np.maximum(y2 - y1, 1e-9)}


def _quartiles(v: np.ndarray) -> list[float] | None:
    return [round(float(q), 4) for q in np.percentile(v, [0, 25, 50, 75, 100])] if len(v) else None


def summarise(ds: Dataset, images: list[Annotation], split: str) -> dict[str, Any]:
    """The numbers of ``summary.json``: counts per class and split, and [min, q1, median, q3, max] of box statistics."""
    stats = box_stats(images)
    labels = [o.label for a in images for o in a.objects]
    return {
        "format": SUMMARY_FORMAT,
        "split": split,
        "images": len(images),
        "objects": len(labels),
        "objects_per_class": {c: labels.count(c) for c in ds.classes},
        "dataset": ds.summary(),  # every split: images per split, objects per class and split
        "box_width": _quartiles(stats["w"]),  # normalised to the image width
        "box_height": _quartiles(stats["h"]),
        "aspect_ratio": _quartiles(stats["aspect"]),  # width / height in pixels
    }


def class_colour(label: str, classes: list[str]) -> tuple[int, int, int]:
    from .detect import PALETTE  # rcnn detect's colours: a class looks the same in both

    return PALETTE[(classes.index(label) if label in classes else 0) % len(PALETTE)]


def draw_ground_truth(image: np.ndarray, a: Annotation, classes: list[str]) -> np.ndarray:
    """A copy of ``image`` (RGB ``[H, W, 3]`` uint8) with the boxes of ``a`` and their class names drawn."""
    if not a.objects:
        return image.copy()
    import torch
    from torchvision.utils import draw_bounding_boxes

    drawn = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    width = max(2, round(max(image.shape[:2]) / 300))
    for difficult in (False, True):  # one call per line width
        objs = [o for o in a.objects if o.difficult == difficult]
        if objs:
            drawn = draw_bounding_boxes(drawn, torch.tensor([o.box for o in objs], dtype=torch.float32).reshape(-1, 4),
                                        labels=[o.label + (" (difficult)" if difficult else "") for o in objs],
                                        colors=[class_colour(o.label, classes) for o in objs],
                                        width=1 if difficult else width, fill_labels=True, label_colors="white")
    return drawn.permute(1, 2, 0).numpy().copy()


def plot_labels(ds: Dataset, images: list[Annotation], path: str | Path, title: str) -> Path:
    """``labels.png``: objects per class, width against height, aspect ratios and centres of the boxes of ``images``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = box_stats(images)
    labels = [o.label for a in images for o in a.objects]
    colours = [np.array(class_colour(c, ds.classes)) / 255 for c in ds.classes]
    point_colours = [np.array(class_colour(c, ds.classes)) / 255 for c in labels]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    ax = axes[0, 0]
    ax.bar(range(len(ds.classes)), [labels.count(c) for c in ds.classes], color=colours)
    ax.set_xticks(range(len(ds.classes)), ds.classes, rotation=45 if len(ds.classes) > 6 else 0, ha="right" if len(ds.classes) > 6 else "center")
    ax.set_ylabel("objects")
    ax.set_title("objects per class")
    ax = axes[0, 1]
    ax.scatter(stats["w"], stats["h"], s=6, alpha=0.5, c=point_colours or None)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="box width / image width", ylabel="box height / image height", title="box sizes")
    ax = axes[1, 0]
    ratios = stats["aspect"][stats["aspect"] > 0]
    if len(ratios):
        ax.hist(ratios, bins=np.geomspace(max(ratios.min(), 1e-3), max(ratios.max(), 1e-3) * 1.001, 30), color="tab:blue")
        ax.set_xscale("log")
    ax.set(xlabel="aspect ratio (width / height)", ylabel="objects", title="aspect ratios")
    ax = axes[1, 1]
    ax.scatter(stats["cx"], stats["cy"], s=6, alpha=0.5, c=point_colours or None)
    ax.set(xlim=(0, 1), ylim=(1, 0), xlabel="centre x / image width", ylabel="centre y / image height", title="box centres")
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"rcnn": "show"}))
    plt.close(fig)
    return Path(path)


def show_dataset(source: str | Path, out: str | Path, split: str = "all", max_images: int = 50, format: str = "auto",
                 echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err) -> ShowReport:
    """Draw the ground truth of a dataset (or one split) into ``out`` with ``labels.png`` and ``summary.json``.

    Args:
        source: a dataset folder or file in any format ``rcnn parse`` reads, or a file it wrote.
        split: "train", "test" or "all".
        max_images: draw the first N images of the split (by id); 0 draws every one. The summary counts all.
        format: the dataset format of ``source`` (see :func:`rcnn.parse.parse_dataset`).

    Raises:
        DataError: ``source`` cannot be read, the split has no images, or ``out`` is not a folder rcnn may write.
        ValueError: ``max_images`` is negative or ``split`` is unknown.
    """
    from PIL import Image

    if max_images < 0:
        raise ValueError(f"'max_images={max_images}' is invalid; it must be >= 0 (0 = all)")
    ds = load_source(source, format, warn)
    images = ds.split(split)
    if not images:
        raise DataError(f"no images in split '{split}' of {display_path(source)}")
    check_names([a.id for a in images], "image id")  # before anything is written
    out = output_dir(out, "show")
    summary = summarise(ds, images, split)
    plot_labels(ds, images, out / "labels.png", f"{display_path(Path(source).name)}: {split} ({len(images)} images, "
                                                  f"{summary['objects']} objects)")
    drawn, failed = 0, []
    for a in images[: max_images or None]:
        try:
            image = draw_ground_truth(load_rgb(a.path), a, ds.classes)
        except DataError as e:
            failed.append(str(e))
            warn(f"error: {e}; skipped")
            continue
        write_atomic(safe_child(output_subdir(out, "images"), a.id, ".jpg", "image id"), lambda tmp, im=image: Image.fromarray(im).save(tmp, format="JPEG", quality=90))
        drawn += 1
    summary["images_drawn"] = drawn
    write_json(out / "summary.json", summary)
    echo(f"{drawn} images drawn in {out / 'images'}, summary in {out / 'labels.png'} and {out / 'summary.json'}")
    return ShowReport(str(out), drawn, summary, failed)


def format_report(report: ShowReport) -> str:
    s = report.summary
    lines = [f"{'class':<20}{'objects':>9}"]
    lines += [f"{c:<20}{n:>9}" for c, n in s["objects_per_class"].items()]
    lines.append(f"{s['images']} {s['split']} images, {s['objects']} objects; median box {s['box_width'][2] if s['box_width'] else '-'} x "
                 f"{s['box_height'][2] if s['box_height'] else '-'} of the image, median aspect ratio "
                 f"{s['aspect_ratio'][2] if s['aspect_ratio'] else '-'}")
    return "\n".join(lines)
