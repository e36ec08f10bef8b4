"""Helpers shared by the benchmarks: where the real datasets are, their dev splits, and timing."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"  # beside the checkout, never copied into it
RACCOON = DATASETS / "raccoon"
sys.path.insert(0, str(ROOT))


def raccoon_dataset(split: str | None = "train", limit: int = 0):
    """The parsed raccoon dataset restricted to ``split`` (and the first ``limit`` images)."""
    from rcnn.parse import Dataset, parse_dataset

    if not RACCOON.is_dir():
        sys.exit(f"benchmark needs {RACCOON}")
    ds = parse_dataset(RACCOON)
    images = ds.split(split)
    if limit:
        images = images[:limit]
    return Dataset(images=images, classes=ds.classes, problems=[], root=ds.root)


def dev_split(folder: Path, test_limit: int = 0):
    """The dataset in ``folder``, its *train* images only, split into dev-train and dev-test (the test split is never
    read). Dev-test is the dataset's ``ImageSets/Main/val.txt`` where it has one (bccd: 205 / 87), else every 4th
    train image in id order (raccoon: 120 / 40); at most ``test_limit`` of them, spread over it (0: all).

    Returns:
        A :class:`rcnn.parse.Dataset` whose "train" split is dev-train and whose "test" split is dev-test.
    """
    from rcnn.parse import Dataset, parse_dataset

    ds = parse_dataset(folder)
    train_images = sorted(ds.split("train"), key=lambda a: a.id)
    val_file = Path(folder) / "ImageSets" / "Main" / "val.txt"
    if val_file.is_file():
        val = set(val_file.read_text().split())
        test = {a.id for a in train_images if a.id in val}
    else:
        test = {a.id for a in train_images[3::4]}
    dev_test = [a for a in train_images if a.id in test]
    keep_test = {a.id for a in dev_test[:: max(1, len(dev_test) // test_limit)][:test_limit]} if test_limit else test
    images = [replace(a, split="test" if a.id in test else "train") for a in train_images if a.id not in test or a.id in keep_test]
    return Dataset(images=images, classes=ds.classes, problems=[], root=ds.root)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
