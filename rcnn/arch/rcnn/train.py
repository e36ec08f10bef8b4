"""Training the classic R-CNN's region classifier on the region set written by ``rcnn crop``.

With a frozen backbone (the reference pipeline's way, and the default) the backbone
features of every crop are computed once and cached, as R-CNN did, and only the
head trains: ten epochs then take seconds instead of hours on a CPU. Horizontal-flip
augmentation with a frozen backbone caches the features of the flipped crops too.

Batches hold a fixed share of object regions (R-CNN: 32 of 128), the loss is
class-weighted cross-entropy, the validation split is by image (regions of one image
never straddle it), stratified by each image's main class, and seeded. The steps, the
best epoch, the metrics, the checkpoint and the commit are :mod:`rcnn.engine`'s.

Under torchrun (:mod:`rcnn.distributed`) the frozen backbone's feature extraction is split over
the processes and rank 0 trains the head; a fine-tuned backbone trains on all of them, each
taking its block of every batch (DistributedDataParallel). Rank 0 alone writes the model folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import build_backbone
from ...crop import CropConfig
from ...distributed import Dist, all_reduce_sum, broadcast_object, pick_device, session
from ...engine import (REPORT_FORMAT, Best, StepResult, commit_trained, confusion, finish_interrupted, read_checkpoint,
                       save_checkpoint as save_checkpoint_file, train_one_epoch as engine_epoch, val_metrics)
from ...errors import DataError, TrainingError
from ...io import folder_lock, output_dir
from ...model import ModelConfig
from ...propose import ProposeConfig
from .boxreg import fit_box_regressor
from .config import MAX_INPUT_SIZE, TrainConfig
from .data import RegionSet, resolve_class_weights, split_by_image, balanced_batches
from .features import CachedFeatures, FeatureSource, LiveFeatures, Preprocess
from .network import RegionClassifier


@dataclass
class TrainRun:
    """Everything one training run works with, built by :func:`build_run`."""

    config: TrainConfig
    out: Path
    regions: RegionSet
    net: RegionClassifier
    features: FeatureSource
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    train_idx: np.ndarray
    val_idx: np.ndarray
    device: torch.device
    model_config: ModelConfig
    weights: torch.Tensor | None
    rng: np.random.Generator
    pool_idx: np.ndarray  # the mining pool's regions (of training and validation images), not yet added
    feature_seconds: float = 0.0
    dist: Dist = field(default_factory=Dist)  # this process's rank under torchrun

    @property
    def shared(self) -> bool:
        """Whether every process takes part in each step (torchrun, fine-tuning); else rank 0 trains alone."""
        return self.dist.distributed and not self.config.freeze_backbone


@dataclass
class TrainState(Best):
    """Where training stands (the best epoch so far, :class:`rcnn.engine.Best`, and the rest): saved in
    ``checkpoint.pt`` after every epoch (a plain dict of tensors and numbers)."""

    epoch: int = 0  # last finished epoch
    history: list[dict[str, float]] = field(default_factory=list)
    round: int = 0  # hard-negative mining rounds done
    round_start: int = 0  # the last epoch before this round
    mined: list[int] = field(default_factory=list)  # regions added by mining, in the order mined
    mined_per_round: list[int] = field(default_factory=list)


def build_run(crops_dir: str | Path, out: str | Path, config: TrainConfig, progress: bool, dist: Dist | None = None) -> TrainRun:
    """Read the region set, split it by image, build the network, its feature source and optimiser.

    Under torchrun (``dist``) only rank 0 claims ``out``; the frozen backbone's feature extraction is split
    over the processes, a fine-tuned network is wrapped in DistributedDataParallel.
    """
    torch.manual_seed(config.seed)
    dist = dist or Dist(device=pick_device(config.device))
    device = dist.device
    regions = RegionSet.load(crops_dir)
    size = config.input_size or regions.crop_size
    if size > MAX_INPUT_SIZE:
        raise ValueError(f"'input_size={size}' is too large; it must be at most {MAX_INPUT_SIZE} (the crops are {regions.crop_size} px)")
    weights = resolve_class_weights(config.class_weights, regions)
    train_idx, val_idx = split_by_image(regions.labels, regions.groups, config.val_fraction, config.seed)
    pool_idx = np.flatnonzero(regions.pool)
    train_idx, val_idx = train_idx[~regions.pool[train_idx]], val_idx[~regions.pool[val_idx]]
    if config.mining_rounds and not len(pool_idx):
        raise DataError(f"region set {crops_dir} has no mining pool for --mining-rounds: re-run `rcnn crop` with --mine-pool N")
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"region set {crops_dir} has too few images ({int(regions.groups.max()) + 1}) for a validation split")
    if not (regions.labels[train_idx] > 0).any():
        raise DataError(f"region set {crops_dir} has no object regions to learn from")
    out = output_dir(out, "model") if dist.is_main else Path(out)

    backbone = build_backbone(config.backbone, config.weights)
    net = RegionClassifier(backbone, len(regions.classes), config.hidden, config.dropout)
    if dist.distributed and not config.freeze_backbone and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # batch statistics over the global batch (GPUs only)
    net = net.to(device).to(memory_format=torch.channels_last)
    if config.freeze_backbone:
        for p in net.backbone.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    model_config = ModelConfig(
        classes=regions.classes, backbone=config.backbone, input_size=size, mean=backbone.mean, std=backbone.std,
        hidden=config.hidden, dropout=config.dropout, crop=CropConfig(**regions.meta["config"]),
        propose=ProposeConfig(**regions.meta["propose"]), train=asdict(config),
    )
    prep = Preprocess(backbone.mean, backbone.std, size, device)
    t = time.perf_counter()
    features: FeatureSource = (CachedFeatures(net, regions, config, prep, out / "cache", progress, dist) if config.freeze_backbone
                               else LiveFeatures(net, regions, config, prep, progress, dist))
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    return TrainRun(config, out, regions, net, features, opt, criterion, train_idx, val_idx, device, model_config, weights,
                    np.random.default_rng(config.seed), pool_idx, time.perf_counter() - t, dist)


def load_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any]:
    """Read ``checkpoint.pt`` and check it was written with these settings (cheap: before any network is built).

    Raises:
        DataError: no checkpoint, an unreadable or unsafe one, or other settings.
    """
    return read_checkpoint(out / "checkpoint.pt", config, free=("epochs", "patience"))


def resume_state(run: TrainRun, ckpt: dict[str, Any]) -> TrainState:
    """Restore the network, optimiser, history and best weights from a checked checkpoint.

    Raises:
        DataError: it was trained on another region set, or holds another network.
    """
    path = run.out / "checkpoint.pt"
    if ckpt.get("regions") != run.regions.meta.get("content_key"):
        raise DataError(f"cannot resume from {path}: it was trained on another region set than {run.regions.folder}")
    try:
        run.net.load_state_dict(ckpt["net"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        epoch = int(ckpt["epoch"])
        state = TrainState(best_val_loss=float(ckpt["best_val_loss"]), best_epoch=int(ckpt["best_epoch"]),
                           best_net=ckpt.get("best_net") or ckpt["net"], epoch=epoch, history=list(ckpt["history"]),
                           round=int(ckpt.get("round", 0)), round_start=int(ckpt.get("round_start", 0)),
                           mined=[int(i) for i in ckpt.get("mined", [])],
                           mined_per_round=[int(n) for n in ckpt.get("mined_per_round", [])])
        add_regions(run, np.asarray(state.mined, np.int64))
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DataError(f"checkpoint {path} does not fit this network ({len(run.regions.classes)} classes, "
                        f"{run.config.backbone}): {str(e).splitlines()[0][:200]}") from None
    run.rng = np.random.default_rng([run.config.seed, epoch + 1])
    torch.manual_seed(run.config.seed + epoch + 1)
    return state


def train_one_epoch(run: TrainRun, epoch: int) -> tuple[float, float]:
    """One pass over class-balanced batches of the training regions (:func:`rcnn.engine.train_one_epoch`);
    returns (mean loss, accuracy)."""
    config, net = run.config, run.net
    net.train()
    if config.freeze_backbone:
        net.backbone.eval()  # frozen BatchNorm statistics
    y_all = torch.from_numpy(run.regions.labels)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rel in balanced_batches(run.regions.labels[run.train_idx], config.batch_size, config.fg_fraction, run.rng):
            idx = run.train_idx[rel]
            yield idx, (run.rng.random(len(idx)) < 0.5 if config.hflip else np.zeros(len(idx), bool))

    def loss_of(batch: tuple[np.ndarray, np.ndarray]) -> StepResult:
        idx, flip = batch
        y = y_all[idx].to(run.device)
        if run.shared:
            loss, correct = shared_step(run, idx, flip, y)
        else:
            z = run.features.train_inputs(idx, flip)
            loss = run.criterion(z, y)
            correct = float((z.argmax(1) == y).sum())
        return loss, loss, (loss.item() * len(idx), correct, len(idx))

    tot_loss, tot_correct, tot_n = (float(v) for v in engine_epoch(run.optimizer, batches(), loss_of, epoch))
    return tot_loss / tot_n, tot_correct / tot_n


def shared_step(run: TrainRun, idx: np.ndarray, flip: np.ndarray, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A step of the global batch ``idx`` of which this process takes its block (DistributedDataParallel).

    Returns:
        (the loss to call ``backward`` on, whose value is the whole batch's mean loss and whose
        gradient, averaged over the processes, is that of the batch's mean loss; the correct
        predictions of the whole batch).
    """
    dist = run.dist
    mine = dist.block(len(idx))
    z = run.features.train_inputs(idx[mine], flip[mine])
    # the class-weighted mean over the whole batch: this block's weighted sum over the batch's total weight
    weight = run.criterion.weight
    total = weight[y].sum() if weight is not None else torch.tensor(float(len(idx)), device=y.device)
    part = F.cross_entropy(z, y[mine], weight=weight, reduction="sum") / total
    sums = all_reduce_sum(dist, torch.stack([part.detach(), (z.argmax(1) == y[mine]).sum().float()]))
    # the value shown is the batch's loss; the gradient is this block's share, times world_size (DDP averages)
    loss = part * dist.world_size + (sums[0] - part * dist.world_size).detach()
    return loss, float(sums[1])


@torch.inference_mode()
def evaluate(run: TrainRun, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, predicted class ids) of regions ``idx``, unflipped, in eval mode."""
    run.net.eval()
    no_flip = np.zeros(512, bool)
    z = torch.cat([run.features.inputs(idx[s : s + 512], no_flip[: len(idx[s : s + 512])]) for s in range(0, len(idx), 512)])
    return float(run.criterion(z, torch.from_numpy(run.regions.labels[idx]).to(run.device))), z.argmax(1).cpu().numpy()


def save_checkpoint(run: TrainRun, state: TrainState) -> None:
    """``checkpoint.pt`` (atomically): the network, optimiser, best weights and history, for ``--resume``."""
    ckpt = {"net": run.net.state_dict(), "optimizer": run.optimizer.state_dict(), "epoch": state.epoch,
            "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "best_net": state.best_net,
            "history": state.history, "config": asdict(run.config), "regions": run.regions.meta.get("content_key"),
            "round": state.round, "round_start": state.round_start, "mined": state.mined, "mined_per_round": state.mined_per_round}
    save_checkpoint_file(run.out / "checkpoint.pt", ckpt)


def train(crops_dir: str | Path, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train the region classifier and write the model folder ``out``.

    The folder's model is replaced only at the end, in one commit (:func:`rcnn.model.commit_model`):
    an interrupted run leaves the earlier model complete, and ``resume`` continues from ``checkpoint.pt``.

    Under torchrun (:mod:`rcnn.distributed`) rank 0 alone writes ``out`` (the model, report, cache and
    checkpoints). With a frozen backbone the feature extraction is split over the processes and rank 0
    trains the head alone, as one process would; a fine-tuned network trains on every process
    (DistributedDataParallel, each taking its block of every batch), and on resume all of them start
    from rank 0's checkpoint.

    Returns:
        The report (also ``out/report.json``) with ``val_precision`` and ``val_recall`` per class;
        None on the ranks other than 0.
    """
    config = config or TrainConfig()
    t_start = time.perf_counter()
    with session(config.device) as dist:
        if not dist.is_main:
            return _train(crops_dir, out, config, resume, progress, t_start, dist)
        with folder_lock(output_dir(out, "model"), "rcnn train"):
            return _train(crops_dir, out, config, resume, progress, t_start, dist)


def _train(crops_dir: str | Path, out: str | Path, config: TrainConfig, resume: bool, progress: bool, t_start: float,
           dist: Dist) -> dict[str, Any] | None:
    shared = dist.distributed and not config.freeze_backbone
    if shared and config.mining_rounds:
        raise ValueError("hard-negative mining (--mining-rounds) with a fine-tuned backbone runs on one process only; "
                         "drop --mining-rounds or train without torchrun")
    ckpt = load_checkpoint(Path(out), config) if resume and dist.is_main else None
    if resume and shared:
        ckpt = broadcast_object(dist, ckpt)  # every process resumes from rank 0's checkpoint
    run = build_run(crops_dir, out, config, progress and dist.is_main, dist)
    if not dist.is_main and not shared:
        return None  # its share of the features is with rank 0, which trains the head
    if dist.is_main:
        finish_interrupted(run.out)
    state = resume_state(run, ckpt) if ckpt is not None else TrainState()
    epoch_seconds: list[float] = []
    while True:
        train_round(run, state, epoch_seconds, progress and dist.is_main)
        if state.round >= config.mining_rounds:
            break
        state.mined_per_round.append(mine_hard_negatives(run, state))
        state.round, state.round_start = state.round + 1, state.epoch
        save_checkpoint(run, state)
    if not dist.is_main:
        return None
    return write_model(run, state, sum(epoch_seconds), t_start)


def train_round(run: TrainRun, state: TrainState, epoch_seconds: list[float], progress: bool) -> None:
    """Epochs until ``config.epochs`` of this round have run or validation has not improved for ``config.patience``."""
    from tqdm import tqdm

    config = run.config
    def patience_spent() -> bool:
        return bool(config.patience) and state.epoch - max(state.best_epoch, state.round_start) >= config.patience

    last = state.round_start + config.epochs
    if patience_spent():
        return  # a resumed run that had already stopped this round
    for epoch in tqdm(range(state.epoch + 1, last + 1), desc="epochs" + (f" (mining round {state.round})" if state.round else ""),
                      unit="epoch", disable=None if progress else True, initial=state.epoch - state.round_start, total=config.epochs):
        t = time.perf_counter()
        train_loss, train_acc = train_one_epoch(run, epoch)
        if not run.dist.is_main:  # rank 0 validates and tells the others whether to go on
            state.epoch = epoch
            if broadcast_object(run.dist, None):
                break
            continue
        val_loss, val_pred = evaluate(run, run.val_idx)
        if not math.isfinite(val_loss):
            raise TrainingError(f"the validation loss became {val_loss} at epoch {epoch}; training stopped")
        epoch_seconds.append(time.perf_counter() - t)
        state.epoch = epoch
        state.history.append({"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
                              "val_loss": round(val_loss, 5), "val_acc": round(float((val_pred == run.regions.labels[run.val_idx]).mean()), 5),
                              "seconds": round(epoch_seconds[-1], 3), "round": state.round})
        state.offer(val_loss, epoch, run.net)
        save_checkpoint(run, state)
        if broadcast_object(run.dist, patience_spent()) if run.shared else patience_spent():
            break  # validation has stopped improving: the best epoch is kept


def top_k_per_group(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores`` within each group (ties by position), sorted."""
    order = np.lexsort((-scores, groups))  # by group, then by descending score
    g = groups[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return np.sort(order[rank < k])


def add_regions(run: TrainRun, idx: np.ndarray) -> None:
    """Move mined regions ``idx`` from the pool into the training or validation regions (by their image)."""
    if not len(idx):
        return
    is_val = np.isin(run.regions.groups[idx], np.unique(run.regions.groups[run.val_idx]))
    run.train_idx = np.union1d(run.train_idx, idx[~is_val])
    run.val_idx = np.union1d(run.val_idx, idx[is_val])
    run.pool_idx = np.setdiff1d(run.pool_idx, idx)


@torch.inference_mode()
def mine_hard_negatives(run: TrainRun, state: TrainState) -> int:
    """R-CNN's hard-negative mining over the pool: with the best weights so far, add each image's
    ``mine_per_image`` pool backgrounds of highest object score to its training or validation regions,
    and start the next round's choice of best epoch afresh. Returns how many regions were added."""
    if state.best_net is not None:
        run.net.load_state_dict(state.best_net)
    pool = run.pool_idx
    if not len(pool):
        return 0
    run.net.eval()
    no_flip = np.zeros(512, bool)
    z = torch.cat([run.features.inputs(pool[s : s + 512], no_flip[: len(pool[s : s + 512])]) for s in range(0, len(pool), 512)])
    fg_score = (1.0 - torch.softmax(z.float(), 1)[:, 0]).cpu().numpy()
    chosen = pool[top_k_per_group(fg_score, run.regions.groups[pool], run.config.mine_per_image)]
    add_regions(run, chosen)
    state.mined += chosen.tolist()
    # R-CNN trains again with the mined negatives: the model is this round's best epoch. (Judged against the
    # last round's on the enlarged validation regions, mean loss over mostly easy backgrounds, the last
    # round's was kept on raccoon's dev split, and mining then changed nothing.)
    state.best_val_loss = math.inf
    return int(len(chosen))


def write_model(run: TrainRun, state: TrainState, epoch_seconds: float, t_start: float) -> dict[str, Any]:
    """Take the best epoch's weights, fit the box regressor, and commit the model folder with its report."""
    if state.best_net is None:
        raise TrainingError("no epoch finished; nothing to save")
    run.net.load_state_dict(state.best_net)
    run.net.to(run.device)
    box_regression = fit_box_regressor(run.net, run.features.box_features().cpu(), run.regions, run.train_idx, run.val_idx)
    run.net.to(run.device)
    val_loss, val_pred = evaluate(run, run.val_idx)
    classes = run.regions.classes
    cm = confusion(run.regions.labels[run.val_idx], val_pred, len(classes))
    report = {
        "format": REPORT_FORMAT,
        **val_metrics(cm, classes),
        "val_loss": round(val_loss, 5),
        "val_accuracy": round(float((val_pred == run.regions.labels[run.val_idx]).mean()), 4),
        "best_epoch": state.best_epoch,
        "epochs": run.config.epochs,
        "epochs_run": state.epoch,
        "mining": {"rounds": state.round, "added_per_round": state.mined_per_round, "pool_left": int(len(run.pool_idx))},
        "confusion": {"classes": classes, "matrix": cm.tolist()},
        "regions": {"train": int(len(run.train_idx)), "val": int(len(run.val_idx))},
        # the images whose regions were held out: the region set has no images or proposals to fit post-processing
        # on, so `rcnn pipeline` fits it on these after the commit (rcnn.tune.fit_model_folder)
        "val_images": [run.regions.meta["images"][g] for g in np.unique(run.regions.groups[run.val_idx])],
        "class_weights": run.weights.tolist() if run.weights is not None else None,
        "box_regression": box_regression,
        "device": str(run.device),
        "seconds": {
            "features": round(run.feature_seconds, 2),
            "epochs": round(epoch_seconds, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "config": asdict(run.config),
    }
    commit_trained(run.out, run.model_config, run.net.state_dict(), report, state.history)
    return report




def fit(source: str | Path, out: str | Path, config: TrainConfig | None = None, proposals: str | Path | None = None,
        resume: bool = False, echo: Callable[[str], Any] = print, progress: bool = True) -> dict[str, Any] | None:
    """The registry's trainer (:attr:`rcnn.arch.ArchSpec.trainer`): :func:`train` on the region set ``source``
    (``proposals`` is not used: the region set holds its regions)."""
    return train(source, out, config, resume=resume, progress=progress)
