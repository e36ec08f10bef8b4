"""Training Fast R-CNN on ``rcnn parse`` + ``rcnn propose`` output.

The first ``frozen_stages`` stages of the backbone stay frozen and their output is computed once per
image (and once per flipped image), so an SGD step runs only the remaining stages, RoIAlign and the
head on ``rois_per_image`` regions: about a quarter with IoU >= 0.5, the rest with IoU in [0.1, 0.5),
the hard negatives R-CNN mined with an SVM. The steps, the best epoch, the metrics and the commit are
:mod:`rcnn.engine`'s.

Under torchrun (:mod:`rcnn.distributed`) each process runs the frozen stages of its block of the
images and all of them get every image's output back (a step may draw any image); the trained part
is wrapped in DistributedDataParallel and each step's ``images_per_step`` images are split over the
processes, with the loss normalised over the whole step, so N processes train the weights one does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...distributed import Dist, all_reduce_sum as dist_sum, pick_device, session
from ...engine import (REPORT_FORMAT, Best, StepResult, commit_trained, ddp_wrap, finish_interrupted, train_one_epoch,
                       val_metrics)
from ...errors import DataError
from ...io import folder_lock, output_dir
from ...model import LoadedModel, ModelConfig
from ...parse import Dataset
from ...propose import ProposalSet, check_proposals
from ...tune import fit_model_config
from . import SPEC
from .config import FastConfig
from .data import ImageSample, cache_samples, image_seed, sample_regions
from .losses import StepNet, class_weight_tensor, roi_loss_sums, step_loss, validate
from .network import FastRCNN


def build_net(config: FastConfig, n_classes: int, weights: str | None = None) -> FastRCNN:
    """The network ``config`` describes, with ``weights`` (default ``config.weights``) in its backbone."""
    return FastRCNN(config.backbone, weights or config.weights, n_classes, config.image_size, config.max_image_size,
                    config.frozen_stages, config.roi_size, config.hidden, config.fine_features, config.fg_iou,
                    config.rois_per_image, config.fg_fraction)


@dataclass
class FastRun:
    """What one training run works with, built by :func:`prepare`."""

    config: FastConfig
    net: FastRCNN
    train: list[ImageSample]
    val: list[ImageSample]
    weight: torch.Tensor | None  # class weights of the loss (None: unweighted)
    rng: np.random.Generator
    dist: Dist
    n_classes: int
    cache_seconds: float

    @property
    def device(self) -> torch.device:
        return self.dist.device


def prepare(images: list[Any], classes: list[str], proposals: Any, config: FastConfig, progress: bool,
            echo: Callable[[str], Any], dist: Dist, build: Callable[[Any, int], FastRCNN] = build_net) -> FastRun:
    """Build the network (``build(config, n_classes)``), cache the frozen stages' output of every image and split
    off the validation images."""
    if config.images_per_step % dist.world_size:
        raise ValueError(f"'images_per_step={config.images_per_step}' must be a multiple of the {dist.world_size} "
                         f"processes (each takes its share of a step's images); use --images-per-step {dist.world_size}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_classes = len(classes) + 1
    # train(): the frozen stages (and every BatchNorm) in eval mode already while their output is cached, so the
    # cache holds what predict() computes and the saved ImageNet statistics are not moved by the training images
    net = build(config, n_classes).to(dist.device).train()
    usable = [a for a in images if len(a.objects)]
    if len(usable) < 2:
        raise DataError(f"training needs at least 2 images with objects in the parsed file's train split; got {len(usable)}")
    t0 = time.perf_counter()
    samples = cache_samples(net, usable, classes, proposals, config, progress, echo, dist)
    if len(samples) < 2:
        raise DataError(f"training needs at least 2 readable training images with objects; got {len(samples)}")
    cache_seconds = time.perf_counter() - t0
    order = rng.permutation(len(samples))
    n_val = min(max(1, round(config.val_fraction * len(samples))), len(samples) - 1)
    val = [samples[i] for i in sorted(order[:n_val])]
    train = [samples[i] for i in sorted(order[n_val:])]
    if config.images_per_step > len(train):
        raise ValueError(f"'images_per_step={config.images_per_step}' exceeds the {len(train)} training images")
    weight = class_weight_tensor(config.class_weights, [s.labels for s in train], n_classes)
    weight = weight.to(dist.device) if weight is not None else None
    return FastRun(config, net, train, val, weight, rng, dist, n_classes, cache_seconds)


def optimiser(run: FastRun) -> tuple[torch.optim.Optimizer, Any, int]:
    """SGD (momentum 0.9, no decay on biases and norms), warmed up over 200 steps then cosine-decayed to 0;
    returns (optimiser, scheduler, steps per epoch)."""
    config = run.config
    params = [p for p in run.net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=config.lr, momentum=0.9)
    steps_per_epoch = len(run.train) // config.images_per_step
    total_steps = config.epochs * steps_per_epoch
    warmup = min(200, total_steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warmup if i < warmup
                                              else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, total_steps - warmup))))
    return opt, sched, steps_per_epoch


def one_image_steps(run: FastRun) -> tuple[Iterator[Any], Callable[[Any], StepResult]]:
    """An epoch of one image per step on one process: (batches, their loss)."""
    rng, config = run.rng, run.config

    def batches() -> Iterator[tuple[int, bool]]:
        for i in rng.permutation(len(run.train)):
            yield i, config.hflip and bool(rng.integers(2))

    def loss_of(batch: tuple[int, bool]) -> StepResult:
        cls, box = step_loss(run.net, run.train[batch[0]], batch[1], run.weight, run.device)
        return cls + box, cls + box, (cls.item(), box.item())

    return batches(), loss_of


def shared_steps(run: FastRun, step_net: nn.Module, epoch: int, steps_per_epoch: int) -> tuple[Iterator[Any], Callable[[Any], StepResult]]:
    """An epoch of ``images_per_step`` images per step, split over the processes: (batches, their loss)."""
    config, dist, per_step = run.config, run.dist, run.config.images_per_step

    def loss_of(batch: tuple[int, np.ndarray, list[bool]]) -> StepResult:
        step, images, flips = batch
        mine = dist.block(per_step)  # this process's share of the step's images
        feats, rois, labels, targets = sample_regions(run.net, [run.train[images[j]] for j in mine], [flips[j] for j in mine],
                                                      [image_seed(config.seed, epoch, step, int(j)) for j in mine], run.device)
        logits, regression = step_net(feats, rois, [run.train[images[j]].size for j in mine])
        cls_sum, box_sum, counts = roi_loss_sums(logits, regression, labels, targets, run.weight)
        # one all-reduce: the step's total weight and regions, and its loss (to check and report)
        totals = dist_sum(dist, torch.cat([counts, torch.stack([cls_sum, box_sum]).detach()]))
        cls, box = totals[2] / totals[0], totals[3] / totals[1]
        # DistributedDataParallel averages the processes' gradients: times world_size is their sum
        loss = (cls_sum / totals[0] + box_sum / totals[1]) * dist.world_size
        return loss, cls + box, (cls.item(), box.item())

    return step_batches(run, steps_per_epoch), loss_of


def step_batches(run: FastRun, steps_per_epoch: int) -> Iterator[tuple[int, np.ndarray, list[bool]]]:
    """An epoch's steps of ``images_per_step`` images each: (step, image indices, whether each is mirrored)."""
    rng, config, per_step = run.rng, run.config, run.config.images_per_step
    perm = rng.permutation(len(run.train))  # the same on every process: they share the seed
    for step in range(steps_per_epoch):
        images = perm[step * per_step : (step + 1) * per_step]
        yield step, images, [config.hflip and bool(rng.integers(2)) for _ in images]


def run_epochs(run: FastRun, progress: bool) -> tuple[Best, list[dict[str, float]], float]:
    """Every epoch (rank 0 validates each and keeps the best); returns (the best epoch, history, seconds)."""
    from tqdm import tqdm

    config, dist = run.config, run.dist
    opt, sched, steps_per_epoch = optimiser(run)
    step_net: nn.Module | None = None
    if config.images_per_step > 1 or dist.distributed:
        step_net = StepNet(run.net)
        if dist.distributed:  # every BatchNorm keeps its ImageNet statistics (FastRCNN.train): no buffers to sync
            step_net = ddp_wrap(step_net, run.device, sync_buffers=False)
    run.net.train()
    history: list[dict[str, float]] = []
    best = Best()
    t1 = time.perf_counter()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="train", unit="step", disable=None if progress else True)
    for epoch in range(1, config.epochs + 1):
        batches, loss_of = (one_image_steps(run) if step_net is None
                            else shared_steps(run, step_net, epoch, steps_per_epoch))
        sums = train_one_epoch(opt, batches, loss_of, epoch, sched, bar, name_batches=False)
        if not dist.is_main:
            continue  # rank 0 alone validates and keeps the best epoch
        val_loss, _ = validate(run.net, run.val, run.n_classes, config.fg_iou, run.device)
        history.append({"epoch": epoch, "train_cls_loss": round(sums[0] / steps_per_epoch, 5),
                        "train_box_loss": round(sums[1] / steps_per_epoch, 5), "val_loss": round(val_loss, 5),
                        "seconds": round(time.perf_counter() - t1, 2)})
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        best.offer(val_loss, epoch, run.net)
    bar.close()
    return best, history, time.perf_counter() - t1


def train_fast(images: list[Any], classes: list[str], proposals: Any, config: FastConfig,
               progress: bool = True, echo: Callable[[str], Any] = print,
               dist: Dist | None = None) -> tuple[FastRCNN, dict[str, Any]] | None:
    """Train a Fast R-CNN on annotated ``images`` (``rcnn.parse.Annotation``) and their stored ``proposals``
    (a :class:`rcnn.propose.ProposalSet`); returns the network (best validation epoch) and the report.

    Under torchrun (``dist`` of :func:`rcnn.distributed.session`) the frozen stages of the images are
    split over the processes, the trained part is wrapped in DistributedDataParallel and every step's
    ``images_per_step`` images are split over the processes (the global batch is one process's);
    rank 0 validates and returns the network and report, the other ranks return None.

    Args:
        classes: the object classes (background excluded), in the dataset's order.

    Raises:
        DataError: too few usable images, or no image could be read.
        ValueError: ``images_per_step`` is not a multiple of the processes, or exceeds the training images.
    """
    dist = dist or Dist(device=pick_device(config.device))
    progress = progress and dist.is_main
    run = prepare(images, classes, proposals, config, progress, echo, dist)
    best, history, epoch_seconds = run_epochs(run, progress)
    if not dist.is_main:
        return None
    run.net.load_state_dict(best.best_net)
    val_loss, cm = validate(run.net, run.val, run.n_classes, config.fg_iou, run.device)
    return run.net.eval(), run_report(run, SPEC.name, classes, best, history, epoch_seconds, val_loss, cm)


def run_report(run: FastRun, arch: str, classes: list[str], best: Best, history: list[dict[str, float]],
               epoch_seconds: float, val_loss: float, cm: np.ndarray, **extra: Any) -> dict[str, Any]:
    """report.json of a training run on cached frozen stages (Fast and Faster R-CNN), ``extra`` keys added."""
    names = ["background", *classes]
    report = {
        "format": REPORT_FORMAT, "arch": arch, **val_metrics(cm, names), "val_loss": round(val_loss, 5),
        "val_accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 4), **extra,
        "best_epoch": best.best_epoch, "epochs": run.config.epochs, "epochs_run": run.config.epochs,
        "confusion": {"classes": names, "matrix": cm.tolist()},
        "images": {"train": len(run.train), "val": len(run.val)},
        "val_images": [s.image_id for s in run.val],  # held out: post-processing is fitted on them (rcnn.tune)
        "class_weights": run.weight.tolist() if run.weight is not None else None,
        "history": history, "device": str(run.device),
        "seconds": {"features": round(run.cache_seconds, 2), "epochs": round(epoch_seconds, 2)},
        "config": asdict(run.config),
    }
    if run.dist.distributed:
        report["processes"] = run.dist.world_size
    return report


# --------------------------------------------------------------------------- the model folder


def model_config(config: FastConfig, classes: list[str], propose: Any, net: FastRCNN) -> ModelConfig:
    """The :class:`rcnn.model.ModelConfig` of a trained Fast R-CNN (``input_size``: the short side images are resized to)."""
    t = net.transform
    return ModelConfig(classes=["background", *classes], backbone=config.backbone, input_size=config.image_size,
                       mean=tuple(t.image_mean), std=tuple(t.image_std), hidden=config.hidden, dropout=0.0, arch=SPEC.name,
                       max_size=config.max_image_size, frozen_stages=config.frozen_stages, roi_size=config.roi_size,
                       fine_features=config.fine_features, propose=propose, train=asdict(config))


def train_fast_model(parsed: str | Path | Any, proposals: str | Path, out: str | Path, config: FastConfig | None = None,
                     progress: bool = True, echo: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """Train a Fast R-CNN on the train split of ``parsed`` (a ``rcnn parse`` file or a Dataset) with the
    proposals of ``rcnn propose`` in ``proposals``, and commit the model folder ``out``.

    Before the commit, the class-wise NMS and box voting are fitted on the validation images it held out
    (:mod:`rcnn.tune`) and recorded in ``config.json``. Under torchrun (:mod:`rcnn.distributed`) every process
    trains and rank 0 alone fits and writes ``out``.

    Returns:
        The report (also ``out/report.json``); None on the ranks other than 0.
    """
    config = config or FastConfig()
    t_start = time.perf_counter()
    with session(config.device) as dist:
        ds = parsed if isinstance(parsed, Dataset) else Dataset.load(parsed)
        pset = ProposalSet.load(proposals)
        images = ds.split("train")
        if not images:
            raise DataError(f"{parsed} has no training images")
        check_proposals(pset, images, "train")
        if not dist.is_main:
            train_fast(images, list(ds.classes), pset, config, False, echo, dist)
            return None
        out = output_dir(out, "model")
        with folder_lock(out, "rcnn train"):
            finish_interrupted(out)
            trained = train_fast(images, list(ds.classes), pset, config, progress, echo, dist)
            if trained is None:  # pragma: no cover - rank 0 always gets the network
                raise RuntimeError("rank 0 got no network")
            net, report = trained
            held_out = set(report["val_images"])
            loaded = LoadedModel(net, model_config(config, list(ds.classes), pset.config, net), dist.device)
            fitted = fit_model_config(loaded, [a for a in images if a.id in held_out], pset, echo)
            report["postprocess"] = fitted.postprocess
            report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
            state = {k: v.cpu() for k, v in net.state_dict().items()}
            commit_trained(out, fitted, state, report)
    return report


def fit(source: str | Path, out: str | Path, config: FastConfig | None = None, proposals: str | Path | None = None,
        resume: bool = False, echo: Callable[[str], Any] = print, progress: bool = True) -> dict[str, Any] | None:
    """The registry's trainer (:attr:`rcnn.arch.ArchSpec.trainer`): :func:`train_fast_model` (no ``resume``)."""
    if proposals is None:
        raise ValueError("Fast R-CNN trains on stored proposals; give the `rcnn propose` folder")
    return train_fast_model(source, proposals, out, config, progress, echo)
