"""The training loop every architecture uses (torchvision's ``references/detection/engine.py``).

An architecture supplies its batches and a function giving each batch's loss; the engine does the
rest, once for all of them: the one finite-loss check and the optimiser step (:func:`train_one_epoch`),
the DistributedDataParallel wrap (:func:`ddp_wrap`), keeping the best validation epoch (:class:`Best`),
precision/recall/confusion, the checkpoint for ``--resume``, and committing the model folder with its
report (:func:`commit_trained`).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .errors import DataError, TrainingError
from .io import write_atomic
from .model import WEIGHTS, ModelConfig, commit_model, finish_commit, load_state

REPORT_FORMAT = "rcnn-train-report-v1"  # report.json's "format" of every architecture
B = TypeVar("B")
# What a batch's loss function returns: (the loss to call backward on, the step's loss to check and report
# (under torchrun the whole step's; else the same tensor), numbers the epoch sums, e.g. loss terms and counts)
StepResult = tuple[torch.Tensor, torch.Tensor, Sequence[float]]


# --------------------------------------------------------------------------- the step and the epoch


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, reported: torch.Tensor | None = None, where: str = "",
                   sched: Any = None) -> None:
    """One step on ``loss``, refused with a clear error when the step's ``reported`` loss (default ``loss``) is not finite.

    Raises:
        TrainingError: naming the loss and ``where`` ("epoch 3, batch 7"): the one non-finite check of training.
    """
    reported = loss if reported is None else reported
    if not torch.isfinite(reported):
        raise TrainingError(f"the training loss became {float(reported.detach())} at {where}; lower --lr (training stopped)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()


def train_one_epoch(opt: torch.optim.Optimizer, batches: Iterable[B], loss_of: Callable[[B], StepResult], epoch: int,
                    sched: Any = None, bar: Any = None, name_batches: bool = True) -> np.ndarray:
    """One pass over ``batches``: each batch's loss (``loss_of``), checked and stepped; returns the sums of the
    numbers ``loss_of`` gave (the architecture turns them into its epoch's means).

    Args:
        bar: a progress bar advanced by one per step (tqdm), or None.
        name_batches: a non-finite loss is reported as "epoch E, batch B" (else "epoch E").
    """
    sums: np.ndarray | None = None
    for b, batch in enumerate(batches, 1):
        loss, reported, stats = loss_of(batch)
        optimiser_step(opt, loss, reported, f"epoch {epoch}, batch {b}" if name_batches else f"epoch {epoch}", sched)
        values = np.array([float(v) for v in stats])
        sums = values if sums is None else sums + values
        if bar is not None:
            bar.update(1)
    return sums if sums is not None else np.zeros(0)


def ddp_wrap(module: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """``module`` in DistributedDataParallel (one device per process; CPU processes: gloo), the one wrap of training.

    Args:
        sync_buffers: False where every BatchNorm keeps fixed statistics: no buffers to send at each step.
    """
    from torch.nn.parallel import DistributedDataParallel

    kwargs: dict[str, Any] = {}
    if not sync_buffers:
        sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        kwargs[sync] = False
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, **kwargs)


# --------------------------------------------------------------------------- the best epoch


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``net``'s weights on the CPU (kept while training goes on)."""
    return {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}


@dataclass
class Best:
    """The best validation epoch so far and its weights."""

    best_val_loss: float = math.inf
    best_epoch: int = 0  # 0: none yet
    best_net: dict[str, torch.Tensor] | None = None  # its weights (CPU)
    lowest: float = math.inf  # the lowest validation loss seen (best_val_loss may be a later epoch's, within tolerance)

    def offer(self, val_loss: float, epoch: int, net: nn.Module, ties_to_later: bool = False, tolerance: float = 0.0) -> bool:
        """Keep ``net``'s weights if ``val_loss`` is the lowest so far (or, ``ties_to_later``, at most ``tolerance`` above
        the lowest: a later epoch has seen more steps, and a coarse measure such as the mAP of a few images ties or
        wavers often); returns whether it was."""
        later_wins = ties_to_later and self.best_net is not None
        if not (val_loss <= self.lowest + tolerance if later_wins else val_loss < self.best_val_loss):
            return False
        self.lowest = min(self.lowest, val_loss)
        self.best_val_loss, self.best_epoch, self.best_net = val_loss, epoch, snapshot(net)
        return True


# --------------------------------------------------------------------------- metrics


def confusion(labels: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Confusion matrix ``[n, n]``: rows are true classes, columns predictions."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def precision_recall(cm: np.ndarray, classes: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class precision and recall from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    pred, true = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    return ({c: round(float(p), 4) for c, p in zip(classes, prec)}, {c: round(float(r), 4) for c, r in zip(classes, rec)})


def val_metrics(cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """``val_precision`` and ``val_recall`` per class of a validation confusion matrix (report.json's keys)."""
    precision, recall = precision_recall(cm, classes)
    return {"val_precision": precision, "val_recall": recall}


def format_report(report: dict[str, Any]) -> str:
    """The lines ``rcnn train`` prints of a training report (any architecture)."""
    lines = [
        f"best epoch {report['best_epoch']}/{report['epochs']}: validation loss {report['val_loss']}, "
        f"accuracy {report['val_accuracy']} on "
        + (f"{report['regions']['val']} regions" if "regions" in report else f"the regions of {report['images']['val']} images"),
        f"{'class':<20}{'precision':>10}{'recall':>10}",
    ]
    for c in report["val_precision"]:
        lines.append(f"{c:<20}{report['val_precision'][c]:>10.3f}{report['val_recall'][c]:>10.3f}")
    s = report["seconds"]
    lines.append(f"{s['total']} s in all: features {s['features']} s, epochs {s['epochs']} s ({report['device']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the model folder


def save_plot(history: list[dict[str, float]], path: Path) -> None:
    """``curves.png``: training and validation loss and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "acc")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if key == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("region classifier training")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png", metadata={"rcnn": "train"})
    plt.close(fig)


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """``history.csv``: one row per epoch."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for h in history for k in h)))  # older entries lack "round"
        w.writeheader()
        w.writerows(history)


def finish_interrupted(folder: Path) -> None:
    """Finish a commit an earlier run was interrupted in (or drop its staged files) before a new one."""
    try:
        config = ModelConfig.load(folder)
    except DataError:  # none, or unreadable: it will be replaced
        config = None
    finish_commit(folder, config)


def commit_trained(out: Path, config: ModelConfig, state: dict[str, torch.Tensor], report: dict[str, Any],
                   history: list[dict[str, float]] | None = None) -> None:
    """Commit the model folder ``out``: ``model.pt``, ``report.json`` and, given the epochs' ``history``,
    ``history.csv`` and ``curves.png`` (:func:`rcnn.model.commit_model`: all or nothing)."""
    files: dict[str, Callable[[Path], Any]] = {
        WEIGHTS: lambda p: torch.save(state, p),
        "report.json": lambda p: p.write_text(json.dumps(report, indent=2) + "\n"),
    }
    if history is not None:
        files["history.csv"] = lambda p: write_history(history, p)
        files["curves.png"] = lambda p: save_plot(history, p)
    commit_model(out, config, files)


# --------------------------------------------------------------------------- checkpoints (--resume)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (a plain dict of tensors, numbers and lists) to ``path``, atomically."""
    write_atomic(path, lambda p: torch.save(checkpoint, p))


def read_checkpoint(path: Path, settings: Any, free: tuple[str, ...] = ("epochs", "patience")) -> dict[str, Any]:
    """Read ``checkpoint.pt`` and check it was written with ``settings`` (a dataclass), the ``free`` ones aside
    (how long to go on may change between runs; nothing else).

    Raises:
        DataError: no checkpoint, an unreadable or unsafe one, or other settings.
    """
    if not path.exists():
        raise DataError(f"nothing to resume: {path} does not exist")
    ckpt = load_state(path, "checkpoint")
    keys = {"net", "optimizer", "epoch", "best_val_loss", "best_epoch", "history", "config"}
    if not isinstance(ckpt, dict) or not keys <= set(ckpt) or not isinstance(ckpt["config"], dict):
        raise DataError(f"checkpoint {path} is not a training checkpoint written by `rcnn train`")
    old = {k: v for k, v in ckpt["config"].items() if k not in free}
    if old != {k: v for k, v in asdict(settings).items() if k not in free}:
        raise DataError(f"cannot resume from {path}: its training settings differ from the ones given")
    return ckpt
