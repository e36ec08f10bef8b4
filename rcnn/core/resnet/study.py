"""The per-layer study of a trained run: SI/CSI tables and plots in the run folder, and a comparison across runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...devices import pick_device
from ...errors import DataError
from ...io import check_output_file, folder_kind, read_json, write_atomic, write_csv, write_json
from .data import StudyData, load_data
from .separability import DEFAULT_CHUNK, LayerSeparability, balanced_subset, layer_separability
from .train import RUN_KIND, load_run, to_float

__all__ = ["SeparabilityConfig", "run_separability", "load_separability", "plot_layers", "plot_comparison",
           "format_table", "COMPARE_TAG"]

TABLE_FORMAT = "rcnn-resnet-separability-v1"
COMPARE_TAG = "resnet-compare"  # the PNG text chunk of a comparison plot (so a re-run may replace it)
COLUMNS = [f.name for f in fields(LayerSeparability)]


@dataclass(frozen=True)
class SeparabilityConfig:
    """Settings of ``separability``."""

    fraction: float = 0.1  # share of each split in the class-balanced subset (the original study: 10%)
    chunk: int = DEFAULT_CHUNK  # rows of the distance matrix at a time (chunk × N distances in memory)
    seed: int = 0  # which samples the balanced subsets take
    device: str = "auto"  # "auto" (GPU when there is one), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"'fraction={self.fraction}' is invalid; it must be in (0, 1]")
        if self.chunk < 1:
            raise ValueError(f"'chunk={self.chunk}' is invalid; it must be >= 1")


def _subset(split: Any, fraction: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    idx = balanced_subset(split.labels, fraction, seed)
    return to_float(torch.from_numpy(split.images[idx])), split.labels[idx]


def run_separability(run: str | os.PathLike, data: str | os.PathLike | StudyData | None = None,
                     config: SeparabilityConfig = SeparabilityConfig(), progress: bool = False) -> list[LayerSeparability]:
    """SI and CSI of every layer of run folder ``run`` on balanced subsets of its data's train and test splits.

    Writes ``run/separability.json`` (with the subset sizes), ``separability.csv`` and ``separability.png``.

    Args:
        data: the images (a folder, or loaded); None = the folder recorded in the run's ``config.json``.
    """

    run = Path(run)
    if folder_kind(run) != RUN_KIND:
        raise DataError(f"{run} is not a resnet run folder (no .rcnn.json of kind {RUN_KIND}); train one first")
    model, cfg = load_run(run)
    if data is None:
        data = cfg["data"].get("path")
        if not data:
            raise DataError(f"{run}/config.json records no data folder; give --data")
    study = data if isinstance(data, StudyData) else load_data(data)
    if study.classes != cfg["data"]["classes"]:
        raise DataError(f"the data's classes {study.classes} are not the run's {cfg['data']['classes']}")
    device = pick_device(config.device)
    train, test = _subset(study.train, config.fraction, config.seed), _subset(study.test, config.fraction, config.seed)
    rows = layer_separability(model.to(device), model.layer_names(), train, test, config.chunk, device, progress)
    variant = model.config.variant
    write_json(run / "separability.json", {"format": TABLE_FORMAT, "variant": variant, "n_train": len(train[1]),
                                           "n_test": len(test[1]), "settings": asdict(config),
                                           "layers": [asdict(r) for r in rows]})
    write_csv(run / "separability.csv", COLUMNS, [[getattr(r, c) for c in COLUMNS] for r in rows])
    plot_layers({variant: rows}, run / "separability.png", f"separability by layer: {variant}", tag="resnet")
    return rows


def load_separability(run: str | os.PathLike) -> tuple[str, list[LayerSeparability]]:
    """(variant, rows) of the ``separability.json`` a run folder holds."""
    path = Path(run) / "separability.json"
    d = read_json(path, "separability table")
    try:
        if d["format"] != TABLE_FORMAT:
            raise KeyError("format")
        return str(d["variant"]), [LayerSeparability(**r) for r in d["layers"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"{path} is not a separability table ({e})") from None


def format_table(rows: list[LayerSeparability]) -> str:
    """A Markdown table of the rows (as the README shows it)."""
    lines = ["| layer | D | SI train | CSI train | SI test | CSI test |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.layer} | {r.features} | {r.si_train:.3f} | {r.csi_train:.3f} | {r.si_test:.3f} | {r.csi_test:.3f} |"
              for r in rows]
    return "\n".join(lines)


def plot_layers(curves: dict[str, list[LayerSeparability]], path: str | os.PathLike, title: str, tag: str) -> Path:
    """SI and CSI (test solid, train dashed) across layers, one colour per variant; a PNG whose ``rcnn`` text is ``tag``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for k, (variant, rows) in enumerate(curves.items()):
        colour = f"C{k % 10}"
        xs = np.arange(len(rows))
        for ax, metric in zip(axes, ("si", "csi")):
            ax.plot(xs, [getattr(r, f"{metric}_test") for r in rows], "-o", ms=3, color=colour, label=f"{variant} test")
            ax.plot(xs, [getattr(r, f"{metric}_train") for r in rows], "--", color=colour, alpha=0.6,
                    label=f"{variant} train" if len(curves) == 1 else None)
    longest = max(curves.values(), key=len)
    for ax, metric in zip(axes, ("SI (nearest sample)", "CSI (nearest class centre)")):
        ax.set_xticks(np.arange(len(longest)), [r.layer for r in longest], rotation=60, fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of samples")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png", metadata={"rcnn": tag}))
    plt.close(fig)
    return Path(path)


def plot_comparison(runs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One plot of every run's SI and CSI curves across layers (test solid, train dashed), one colour per run.

    Raises:
        DataError: a run has no separability table yet, or ``out`` is not a file this command may write.
    """
    curves: dict[str, list[LayerSeparability]] = {}
    for run in runs:
        variant, rows = load_separability(run)
        name = variant if variant not in curves else f"{variant} ({Path(run).name})"
        curves[name] = rows
    path = check_output_file(out, COMPARE_TAG, inputs=tuple(Path(r) / "separability.png" for r in runs),
                             what="--compare", folders=(RUN_KIND,))
    return plot_layers(curves, path, "separability by layer, per variant (solid: test, dashed: train)", tag=COMPARE_TAG)
