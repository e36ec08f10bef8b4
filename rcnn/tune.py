"""Post-processing fitted on a training run's hold-out images: the class-wise NMS IoU and the box voting that
score best there (VOC mAP@0.5), recorded in the model folder for ``rcnn detect``.

The regions of each hold-out image are scored once (:func:`rcnn.detect.score_image`); each candidate setting
only re-runs the selection (:func:`rcnn.postprocess.select_detections`) and the evaluation
(:func:`rcnn.evaluate.evaluate`), so the grid costs little next to the scoring. Nothing here knows an
architecture: a trainer that holds its trained network, its :class:`rcnn.model.ModelConfig` and the images it
held out calls :func:`fit_model_config`; one that trains without the images (the classic path trains from a
region set) names them in its report, and :func:`fit_model_folder` fits the committed folder afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .detect import DetectConfig, score_image
from .errors import DataError
from .evaluate import evaluate
from .io import load_rgb, write_json
from .model import LoadedModel, ModelConfig, load_model
from .postprocess import DEFAULT_POSTPROCESS, PostProcess, select_detections
from .propose import ProposalSet
from .records import Annotation, Dataset

# The grid tried (16 settings). NMS from R-CNN's 0.3 (the old default) to 0.6: objects of one class that touch or
# overlap (blood cells, a row of signs) survive only a higher IoU, while duplicates of one object need a lower one;
# torchvision's Faster R-CNN uses 0.5. Voting off, at the old default 0.5, and stricter (fewer, closer boxes averaged).
NMS_IOUS = (0.3, 0.4, 0.5, 0.6)
VOTE_IOUS = (0.0, 0.5, 0.6, 0.7)  # 0: no voting


def candidates() -> list[PostProcess]:
    """The settings tried: every NMS IoU with every voting IoU, in that order (NMS ascending, voting off first)."""
    return [PostProcess.of(n, v) for n in NMS_IOUS for v in VOTE_IOUS]


@dataclass
class ScoredImage:
    """One hold-out image's scored regions (:func:`rcnn.detect.score_image`), before any post-processing."""

    image: Annotation  # its record: path, size and ground truth
    boxes: np.ndarray  # [N, 4] (x1, y1, x2, y2) pixels
    probs: np.ndarray  # [N, C] class probabilities, column 0 background
    deltas: np.ndarray | None  # [N, C, 4] box regression, or None


@dataclass
class Trial:
    """One setting's score on the hold-out images."""

    setting: PostProcess
    map50: float  # VOC mAP@0.5
    map50_95: float  # COCO mAP@[.5:.95]


@dataclass
class PostProcessFit:
    """What fitting found: the chosen setting, every trial, and on how many images."""

    chosen: Trial
    default: Trial  # the old fixed setting (DEFAULT_POSTPROCESS), for the record
    trials: list[Trial]
    images: int  # hold-out images scored
    seconds: float

    def record(self) -> dict[str, Any]:
        """``ModelConfig.postprocess``: how the fitted values were chosen."""
        return {"images": self.images, "val_map50_chosen": self.chosen.map50, "val_map50_95_chosen": self.chosen.map50_95,
                "val_map50_default": self.default.map50, "val_map50_95_default": self.default.map50_95,
                "default": asdict(self.default.setting), "candidates": len(self.trials), "seconds": round(self.seconds, 2)}

    def describe(self) -> str:
        """One line for the training log."""
        s = self.chosen.setting
        vote = f"voting at {s.vote_iou}" if s.vote else "no voting"
        return (f"post-processing fitted on {self.images} hold-out images: NMS IoU {s.nms_iou}, {vote} "
                f"(mAP@0.5 {self.chosen.map50:.3f}; the old default {self.default.map50:.3f})")


# A setting replaces the old default only when it beats it by this much mAP@0.5 on the hold-out images. On the dev
# suite (bench/quality.py + bench/redetect.py, fast, two seeds, README), taking the best hold-out setting outright
# (ties by mAP@[.5:.95]) lowered the mean mAP@0.5 by 0.004 (bccd -0.005, roadsigns -0.008, raccoon +0.001): on 12-20
# hold-out images most wins were ties or under 0.012, i.e. noise.
MIN_GAIN = 0.02


def best_trial(trials: list[Trial]) -> Trial:
    """The highest mAP@0.5 when it beats the old default by at least :data:`MIN_GAIN`, else the default (when it
    was tried); ties by mAP@[.5:.95], then the first tried."""
    best = max(trials, key=lambda t: (t.map50, t.map50_95, t.setting == DEFAULT_POSTPROCESS))
    default = next((t for t in trials if t.setting == DEFAULT_POSTPROCESS), None)
    return default if default is not None and best.map50 < default.map50 + MIN_GAIN else best


def detections_of(scored: list[ScoredImage], classes: list[str], config: DetectConfig, setting: PostProcess) -> list[dict[str, Any]]:
    """The detections of every image under ``setting``, as :func:`rcnn.evaluate.evaluate` reads them."""
    config = replace(config, nms_iou=setting.nms_iou, vote_iou=setting.voting_iou)
    out = []
    for s in scored:
        a = s.image
        for d in select_detections(s.boxes, s.probs, classes, config, s.deltas, (a.width, a.height)):
            x1, y1, x2, y2 = d.box
            out.append({"file_name": a.path, "category": d.label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d.score})
    return out


def fit_scored(scored: list[ScoredImage], classes: list[str], config: DetectConfig,
               settings: list[PostProcess] | None = None) -> PostProcessFit:
    """Try each of ``settings`` (default :func:`candidates`, plus the old default) on the scored images; keep the best.

    Args:
        classes: the model's classes, ``classes[0]`` the background; config: resolved (its threshold is used).

    Raises:
        DataError: no scored image.
    """
    if not scored:
        raise DataError("no hold-out image to fit post-processing on")
    t0 = time.perf_counter()
    settings = list(dict.fromkeys([*(settings or candidates()), DEFAULT_POSTPROCESS]))
    truth = Dataset(images=[replace(s.image, split="test") for s in scored], classes=list(classes[1:]))
    trials = []
    for setting in settings:
        report = evaluate(detections_of(scored, classes, config, setting), truth, "test")
        trials.append(Trial(setting, report["map50"], report["map50_95"]))
    default = next(t for t in trials if t.setting == DEFAULT_POSTPROCESS)
    return PostProcessFit(best_trial(trials), default, trials, len(scored), time.perf_counter() - t0)


def score_holdout(model: LoadedModel, images: list[Annotation], proposals: ProposalSet | None,
                  config: DetectConfig) -> list[ScoredImage]:
    """Score the regions of each image once (its stored ``proposals``, or the model's own); unreadable images are left out."""
    scored = []
    for a in images:
        try:
            rgb = load_rgb(a.path)
            boxes = proposals.boxes(a.id) if proposals is not None and not model.spec.own_proposals else None
        except DataError:
            continue  # training read it; a file gone since only shrinks the hold-out
        b, p, d, _ = score_image(model, rgb, config, boxes)
        scored.append(ScoredImage(a, b, p, d))
    return scored


def fit_postprocess(model: LoadedModel, images: list[Annotation], proposals: ProposalSet | None = None,
                    config: DetectConfig | None = None) -> PostProcessFit:
    """Fit class-wise NMS and box voting for ``model`` on the annotated ``images`` (the ones its training held out).

    Args:
        proposals: the stored proposals of ``images`` (ignored by an architecture that proposes its own).
        config: the detection settings besides NMS and voting (default: ``rcnn detect``'s).

    Raises:
        DataError: none of the images could be read.
    """
    config = (config or DetectConfig()).resolved(model.arch)
    return fit_scored(score_holdout(model, images, proposals, config), model.classes, config)


def with_fit(config: ModelConfig, fit: PostProcessFit) -> ModelConfig:
    """``config`` recording the fitted setting (``nms_iou``, ``vote``, ``vote_iou``) and how it was found."""
    s = fit.chosen.setting
    return replace(config, nms_iou=s.nms_iou, vote=s.vote, vote_iou=s.vote_iou, postprocess=fit.record())


def fit_model_config(model: LoadedModel, images: list[Annotation], proposals: ProposalSet | None,
                     echo: Callable[[str], Any] = print) -> ModelConfig:
    """A trainer's call, before it commits: ``model.config`` with post-processing fitted on its hold-out ``images``
    (unchanged, with a line saying so, when none could be scored)."""
    try:
        fit = fit_postprocess(model, images, proposals)
    except DataError as e:
        echo(f"post-processing not fitted ({e}); the defaults stay")
        return model.config
    echo(fit.describe())
    return with_fit(model.config, fit)


def fit_model_folder(folder: str | Path, dataset: Dataset, proposals: str | Path | None, image_ids: list[str],
                     device: str = "auto", echo: Callable[[str], Any] = print) -> ModelConfig:
    """Fit the committed model in ``folder`` on the images ``image_ids`` of ``dataset`` (those its training held out)
    and record the result in its ``config.json`` (the weights and their commit record are unchanged).

    Raises:
        DataError: the folder cannot be loaded, or ``proposals`` is not a proposals folder.
    """
    model = load_model(folder, device)
    wanted = set(image_ids)
    pset = ProposalSet.load(proposals) if proposals is not None else None
    config = fit_model_config(model, [a for a in dataset.images if a.id in wanted], pset, echo)
    write_json(Path(folder) / "config.json", config.to_json())
    return config
