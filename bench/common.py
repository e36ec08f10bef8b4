"""Helpers shared by the benchmarks: where the raccoon data is, and timing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RACCOON = ROOT.parent / "shared" / "datasets" / "raccoon"
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


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
