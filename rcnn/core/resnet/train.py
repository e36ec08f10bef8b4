"""Train one variant of :class:`MyResNet` and write its run folder.

A run folder (``.rcnn.json`` kind ``resnet``) holds ``model.pt`` (the best validation epoch's state dict,
loaded with ``weights_only=True``), ``config.json`` (network, training settings, data), ``history.json`` /
``history.csv`` (one row per epoch) and ``report.json`` (test accuracy, the best epoch, throughput).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...devices import pick_device
from ...errors import DataError, TrainingError
from ...io import file_digest, output_dir, read_json, write_atomic, write_csv, write_json
from .data import ImageSplit, StudyData, load_data
from .model import MyResNet, ResNetConfig

__all__ = ["OPTIMIZERS", "RUN_KIND", "StudyTrainConfig", "StudyReport", "train_study", "load_run", "to_float",
           "evaluate_accuracy", "augment_batch"]

OPTIMIZERS = ("sgd", "adam")
RUN_KIND = "resnet"  # the .rcnn.json kind of a run folder
CONFIG_FORMAT = "rcnn-resnet-run-v1"
REPORT_FORMAT = "rcnn-resnet-report-v1"
HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second")


@dataclass(frozen=True)
class StudyTrainConfig:
    """Training settings of the study; saved in the run's ``config.json``."""

    epochs: int = 10  # passes over the training images; the best validation epoch's weights are kept
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # "adam" or "sgd" (with momentum); Adam trains every variant, even without normalisation
    lr: float = 1e-3  # learning rate (Adam's usual; SGD on CIFAR-10 usually takes 0.05-0.1)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty in the optimiser; 0 = none
    val_fraction: float = 0.1  # share of the training images held out for validation (chooses the best epoch)
    augment: bool = False  # random 32×32 crops of the image padded by 4 and horizontal flips (CIFAR-10's usual; flips change digits)
    train_limit: int = 0  # train on at most this many training images (a random subset; 0 = all)
    seed: int = 0  # validation split, batch order and initialisation
    device: str = "auto"  # "auto" (GPU when there is one), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"'optimizer={self.optimizer}' is invalid; valid optimizers are {', '.join(OPTIMIZERS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"'val_fraction={self.val_fraction}' is invalid; it must be in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.train_limit < 0:
            raise ValueError("'epochs' and 'batch_size' must be >= 1, 'train_limit' >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"'lr={self.lr}' must be > 0, 'weight_decay' >= 0 and 'momentum' in [0, 1)")


@dataclass
class StudyReport:
    """What ``report.json`` holds."""

    variant: str
    test_accuracy: float
    best_epoch: int
    best_val_accuracy: float
    parameters: int
    train_images_per_second: float  # mean over epochs, training steps only
    seconds: float
    device: str
    n_train: int
    n_val: int
    n_test: int

    def to_json(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, **asdict(self)}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crops of ``x`` zero-padded by 4 and random horizontal flips, one draw per image.

    Args:
        x (Tensor[N, C, H, W]).
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # (N, W)
    rows = torch.arange(h, device=x.device)[None] + dy[:, None]  # (N, H)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate_accuracy(model: MyResNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on uint8 ``images`` [N, 3, H, W] and ``labels`` [N]."""
    model.eval()
    loss, hits = 0.0, 0
    for s in range(0, len(images), batch_size):
        logits = model(to_float(images[s:s + batch_size]))
        y = labels[s:s + batch_size]
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        hits += int((logits.argmax(1) == y).sum())
    return loss / max(len(images), 1), hits / max(len(images), 1)


def _split(train: ImageSplit, config: StudyTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(train))
    if config.train_limit:
        order = order[:config.train_limit]
    n_val = max(1, int(round(config.val_fraction * len(order))))
    if len(order) - n_val < 1:
        raise TrainingError(f"{len(order)} training images leave none to train on after the validation split")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _optimizer(model: MyResNet, config: StudyTrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _epoch(model: MyResNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, config: StudyTrainConfig,
           generator: torch.Generator, bar: Any) -> tuple[float, float]:
    """One pass over (x, y) in shuffled batches; returns (mean loss, accuracy) of the training steps."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    loss_sum, hits = 0.0, 0
    for s in range(0, len(x), config.batch_size):
        idx = order[s:s + config.batch_size]
        xb, yb = to_float(x[idx]), y[idx]
        if config.augment:
            xb = augment_batch(xb, generator)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            raise TrainingError(f"the training loss became {float(loss)}; lower --lr (now {config.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
        hits += int((logits.argmax(1) == yb).sum())
        bar.update(len(idx))
    return loss_sum / len(x), hits / len(x)


def train_study(data: str | os.PathLike | StudyData, out: str | os.PathLike, model_config: ResNetConfig = ResNetConfig(),
                config: StudyTrainConfig = StudyTrainConfig(), progress: bool = False) -> StudyReport:
    """Train ``model_config``'s variant on ``data`` (a folder :func:`load_data` reads, or loaded data) into run folder ``out``.

    Raises:
        DataError: bad data or an output folder that is not free; TrainingError: a non-finite loss.
    """
    from tqdm import tqdm


    device = pick_device(config.device)
    data_path = None if isinstance(data, StudyData) else str(Path(data).resolve())
    study = data if isinstance(data, StudyData) else load_data(data)
    out = output_dir(out, RUN_KIND)
    model_config = replace(model_config, classes=len(study.classes))
    torch.manual_seed(config.seed)
    model = MyResNet(model_config).to(device)
    tr, va = _split(study.train, config)
    x = torch.from_numpy(study.train.images[tr]).to(device)
    y = torch.from_numpy(study.train.labels[tr]).to(device)
    xv = torch.from_numpy(study.train.images[va]).to(device)
    yv = torch.from_numpy(study.train.labels[va]).to(device)
    pixels = to_float(x).transpose(0, 1).reshape(3, -1).double()  # per-channel statistics of the training part
    model.mean.copy_(pixels.mean(1).view(1, 3, 1, 1))
    model.std.copy_(pixels.std(1).clamp_min(1e-3).view(1, 3, 1, 1))
    opt, generator = _optimizer(model, config), torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        with tqdm(total=len(x), desc=f"epoch {epoch}/{config.epochs}", unit="img", leave=False,
                  disable=None if progress else True) as bar:
            t = time.perf_counter()
            train_loss, train_acc = _epoch(model, opt, x, y, config, generator, bar)
            seconds = time.perf_counter() - t
        val_loss, val_acc = evaluate_accuracy(model, xv, yv)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                            val_accuracy=val_acc, seconds=seconds, images_per_second=len(x) / seconds))
        if progress:
            print(f"epoch {epoch}: loss {train_loss:.4f} acc {train_acc:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}", flush=True)
        if val_acc > best[0]:
            best = (val_acc, epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    xt = torch.from_numpy(study.test.images).to(device)
    _, test_acc = evaluate_accuracy(model, xt, torch.from_numpy(study.test.labels).to(device))
    report = StudyReport(variant=model_config.variant, test_accuracy=test_acc, best_epoch=best[1], best_val_accuracy=best[0],
                         parameters=sum(p.numel() for p in model.parameters()),
                         train_images_per_second=float(np.mean([h["images_per_second"] for h in history])),
                         seconds=time.perf_counter() - start, device=str(device), n_train=len(tr), n_val=len(va),
                         n_test=len(study.test))
    _write_run(out, best[2], model_config, config, study, data_path, history, report)
    return report


def _write_run(out: Path, state: dict[str, torch.Tensor], model_config: ResNetConfig, config: StudyTrainConfig,
               study: StudyData, data_path: str | None, history: list[dict[str, float]], report: StudyReport) -> None:
    write_atomic(out / "model.pt", lambda tmp: torch.save(state, tmp))
    write_json(out / "config.json", {
        "format": CONFIG_FORMAT, "model": model_config.to_json(), "train": asdict(config),
        "data": {"path": data_path, "source": study.source, "classes": study.classes},
        "model_sha1": file_digest(out / "model.pt")})
    write_json(out / "history.json", history)
    write_csv(out / "history.csv", list(HISTORY_FIELDS), [[h[k] for k in HISTORY_FIELDS] for h in history])
    write_json(out / "report.json", report.to_json())


def load_run(run: str | os.PathLike) -> tuple[MyResNet, dict[str, Any]]:
    """The trained network of run folder ``run`` (on the CPU, eval mode) and its ``config.json``.

    Raises:
        DataError: not a run folder, a config that does not parse, or weights that do not match it.
    """
    run = Path(run)
    cfg = read_json(run / "config.json", "run config")
    if not isinstance(cfg, dict) or cfg.get("format") != CONFIG_FORMAT or not isinstance(cfg.get("model"), dict):
        raise DataError(f"{run} is not a resnet run folder (its config.json is not {CONFIG_FORMAT})")
    try:
        model = MyResNet(ResNetConfig(**cfg["model"]))
    except (TypeError, ValueError) as e:
        raise DataError(f"{run}/config.json: bad network settings ({e})") from None
    weights = run / "model.pt"
    if not weights.is_file() or file_digest(weights) != cfg.get("model_sha1"):
        raise DataError(f"{weights} is missing or does not match {run}/config.json (its SHA-1 differs)")
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"cannot load {weights}: {str(e).splitlines()[0]}") from None
    if not all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters()):
        raise DataError(f"{weights} holds non-finite weights")
    return model.eval(), cfg
