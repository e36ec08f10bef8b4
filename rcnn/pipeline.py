"""The whole R-CNN pipeline in one call: parse → propose → crop → train → detect → evaluate.

Trains on the train split, evaluates on the test split, and writes ``<out>/metrics.json``
with mAP, proposal recall, the number of test images and the seconds of each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .arch import ARCHS, DEFAULT_ARCH, ArchSpec, get_arch
from .arch.fast.config import FastConfig
from .arch.faster.config import FasterConfig
from .arch.rcnn.config import TrainConfig
from .crop import CropConfig, crop_dataset
from .detect import DetectConfig, detect
from .engine import format_report as format_train
from .errors import DataError
from .evaluate import evaluate, format_report as format_eval, load_detections
from .io import load_rgb, output_dir, print_err, write_json
from .model import WEIGHTS, LoadedModel, ModelConfig, load_model
from .parse import Annotation, Dataset, format_summary, parse_dataset
from .postprocess import PostProcess
from .propose import ProposalSet, ProposeConfig, propose_dataset, recall
from .proposer import model_proposals
from .report import make_report
from .results import ImageResult
from .scale import RAY_TIMEOUT, ray_cluster
from .synth import make_dataset
from .tune import fit_model_folder

METRICS_FORMAT = "rcnn-metrics-v1"
__all__ = ["ARCHS", "METRICS_FORMAT", "PipelineConfig", "PipelineReport", "Prepared", "ProposalRecall", "StageTimer",
           "demo_config", "prepare_stages", "run_demo", "run_pipeline"]


@dataclass
class PipelineConfig:
    """Settings of every stage; the defaults are the measured ones (see bench/)."""

    classes: list[str] | None = None  # keep only these classes (None: all)
    test_fraction: float = 0.2  # test share of the seeded split, used when the dataset has no ImageSets split files
    seed: int = 0  # seed of that split
    workers: int = 0  # selective-search processes; 0 = one per core
    # Run propose, crop and detect as Ray tasks on this cluster ("auto", an address, or "local": one started
    # here) instead of local processes; None: no Ray (rcnn.scale)
    ray: str | None = None
    ray_timeout: float = RAY_TIMEOUT  # seconds to reach that cluster before giving up with one line (rcnn.scale)
    arch: str = DEFAULT_ARCH  # a name in rcnn.arch.ARCHS (its default is chosen and measured there)
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    crop: CropConfig = field(default_factory=CropConfig)  # architectures with a crop stage
    # Each architecture's training settings, in the field its registry entry names (ArchSpec.pipeline_key)
    train: TrainConfig = field(default_factory=TrainConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    faster: FasterConfig = field(default_factory=FasterConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    report: bool = True  # write the error-analysis page <out>/report/index.html (rcnn.report) after evaluating

    def __post_init__(self) -> None:
        get_arch(self.arch)  # raises ValueError naming the registered ones

    @property
    def spec(self) -> ArchSpec:
        """The registry entry of ``arch``."""
        return get_arch(self.arch)

    @property
    def training(self) -> Any:
        """The training settings of ``arch`` (a :class:`TrainConfig`, :class:`FastConfig`, ...)."""
        return getattr(self, self.spec.pipeline_key)

    def with_settings(self, **settings: Any) -> PipelineConfig:
        """A copy with each setting given by field name, wherever that field is.

        A name goes to this config's own field and to every stage config with a field of that
        name (``device`` sets both ``train.device`` and ``detect.device``); None leaves a field as it is.

        Raises:
            ValueError: a name no config has, or a value a config refuses.
        """
        given = {k: v for k, v in settings.items() if v is not None}
        stages = {f.name: getattr(self, f.name) for f in fields(self) if is_dataclass(getattr(self, f.name))}
        names = {f.name for f in fields(self)} - set(stages)
        updated = {name: _replace(cfg, given) for name, cfg in stages.items()}
        unknown = set(given) - names - {f.name for cfg in stages.values() for f in fields(cfg)}
        if unknown:
            raise ValueError(f"unknown pipeline setting(s) {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in given.items() if k in names}, **updated)

    def to_json(self, fitted: PostProcess | None = None) -> dict[str, Any]:
        """The settings of the stages this architecture runs, as metrics.json records them (detection's proposals
        come from the propose stage; its NMS and voting, where not set, are the model's ``fitted`` ones)."""
        stages = {"crop": asdict(self.crop)} if "crop" in self.spec.stages else {}
        stages["train"] = asdict(self.training)
        return {"arch": self.arch, "propose": self.propose.to_json(), **stages,
                "detect": {k: v for k, v in asdict(self.detect.resolved(self.arch, fitted)).items() if k != "propose"}}


def _replace(config: Any, given: dict[str, Any]) -> Any:
    """``config`` with the fields named in ``given`` replaced (and validated again)."""
    mine = {f.name for f in fields(config)}
    return replace(config, **{k: v for k, v in given.items() if k in mine})


@dataclass
class ProposalRecall:
    """Proposal recall on the test split: of every stored proposal, and of the ones detection scores."""

    recall50: float | None  # share of ground-truth boxes some proposal covers at IoU >= 0.5 (None: no boxes)
    recall70: float | None
    scored_recall50: float | None  # the same within the first DetectConfig.score_proposals of each image


@dataclass
class PipelineReport:
    """What a run measured; :meth:`to_json` is ``metrics.json``."""

    map50: float  # VOC mAP at IoU 0.5 on the test split
    map50_95: float  # COCO mAP@[.5:.95] (pycocotools)
    ap50: dict[str, float | None]  # per class; None: no ground truth
    proposal_recall50: float | None
    proposal_recall70: float | None
    scored_proposal_recall50: float | None
    n_test_images: int
    n_train_images: int
    val_recall: dict[str, float]  # the classifier on held-out training images
    val_precision: dict[str, float]
    detect_seconds_per_image: float  # scoring only: the proposals come from the propose stage
    # ... and with the proposals: the propose stage's per-image seconds on the test images added (an architecture
    # that proposes its own: as scored); None when the propose stage did not record them (an older rcnn)
    detect_seconds_per_image_with_proposals: float | None
    model_mb: float  # model.pt, in MB (10^6 bytes)
    seconds: dict[str, float]  # stage -> seconds, and "total"
    arch: str  # a name in rcnn.arch.ARCHS
    backbone: str
    config: dict[str, Any]  # PipelineConfig.to_json()

    def to_json(self) -> dict[str, Any]:
        return {"format": METRICS_FORMAT, **asdict(self)}


class StageTimer:
    """Announces each stage through ``echo`` and records its seconds.

    ``spent``: seconds of stages run before, for this run (a family's shared parse and proposals): recorded as
    they are, and counted in the total.
    """

    def __init__(self, echo: Callable[[str], Any], spent: dict[str, float] | None = None) -> None:
        self.echo = echo
        self.seconds: dict[str, float] = dict(spent or {})
        self.spent = sum(self.seconds.values())
        self.start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.echo(f"\n== {name} ==")
        t = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t, 2)

    def total(self) -> dict[str, float]:
        """Seconds per stage, plus the whole run's as ``total``."""
        return {**self.seconds, "total": round(time.perf_counter() - self.start + self.spent, 2)}


@dataclass
class Prepared:
    """What the stages before training hand the rest: the parsed dataset and its selective-search proposals."""

    dataset: Dataset
    proposals: Path | None  # the propose stage's folder; None: the architecture has none (it proposes its own)
    seconds: dict[str, float] = field(default_factory=dict)  # what those stages took, when run for several runs


def on_cluster(config: PipelineConfig) -> AbstractContextManager[Any]:
    """The --ray cluster every stage of a run uses, reached once (nothing without --ray)."""
    return nullcontext() if config.ray is None else ray_cluster(config.ray, timeout=config.ray_timeout)


def run_pipeline(data: str | Path | Dataset, out: str | Path, config: PipelineConfig | None = None,
                 echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err,
                 prepared: Prepared | None = None) -> PipelineReport:
    """Run every stage on the dataset ``data`` into ``out``; writes and returns the metrics.

    Args:
        data: a dataset (VOC, COCO or YOLO) to parse, or a :class:`Dataset` already parsed, used with its own
            splits (a dev split made of a train split, as ``bench/quality.py`` does).
        echo: called with every progress line and report; warn: with every problem (a skipped file).
        prepared: the parse of ``data`` and its proposals, made once for several architectures
            (:func:`rcnn.compare.run_family`); None: parse (and propose) here.

    Raises:
        DataError: the dataset has no usable image in one of its splits, or a stage fails on its input.
    """
    config = config or PipelineConfig()
    with on_cluster(config):  # one cluster (or connection) for every stage
        out = output_dir(out, "pipeline")
        timer = StageTimer(echo, prepared.seconds if prepared else None)
        if prepared is None:
            prepared = prepare_stages(data, out, config, timer, echo, warn)
        else:
            prepared.dataset.save(out / "parsed.json")  # each run folder holds what `rcnn evaluate`/`report` read
        return _train_and_measure(prepared, out, config, timer, echo, warn)


def prepare_stages(data: str | Path | Dataset, out: Path, config: PipelineConfig, timer: StageTimer,
                   echo: Callable[[str], Any], warn: Callable[[str], Any], propose: bool | None = None) -> Prepared:
    """Parse ``data`` into ``out/parsed.json`` and, when ``propose`` (None: when the architecture's stages include
    it), run selective search on every image into ``out/proposals``."""
    with timer.stage("parse"):
        ds = parse_stage(data, out / "parsed.json", config, echo, warn)
    if not ("propose" in config.spec.stages if propose is None else propose):
        return Prepared(ds, None)
    with timer.stage("propose"):
        propose_dataset(ds, out / "proposals", config.propose, split="all", workers=config.workers, echo=echo,
                        warn=warn, ray=config.ray)
    return Prepared(ds, out / "proposals")


def _train_and_measure(prepared: Prepared, out: Path, config: PipelineConfig, timer: StageTimer,
                       echo: Callable[[str], Any], warn: Callable[[str], Any]) -> PipelineReport:
    """(crop →) train → detect → evaluate into ``out``; writes metrics.json (and the report page)."""
    ds, proposals_dir = prepared.dataset, prepared.proposals
    if "crop" in config.spec.stages:
        with timer.stage("crop"):
            crops = crop_dataset(ds, proposals_dir, out / "crops", config.crop, split="train", warn=warn, ray=config.ray)
            echo(f"{crops['regions']} regions: " + ", ".join(f"{c} {n}" for c, n in crops["kept"].items()))
    with timer.stage("train"):
        trained = train_stage(ds, out, config, echo, proposals_dir)
    with timer.stage("detect"):
        model = load_model(out / "model", config.detect.device)
        results = detect(model, [a.path for a in ds.split("test")], out / "detect", config.detect,
                         proposals=proposals_dir, echo=echo, warn=warn, ray=config.ray)
    with timer.stage("evaluate"):
        evaluation = evaluate(load_detections(out / "detect" / "detections.json"), ds, "test", plot=out / "pr_curve.png",
                              confusion_plot=out / "confusion_matrix.png")
        write_json(out / "evaluation.json", evaluation)
        echo(format_eval(evaluation))
    scored = config.detect.proposals_for(config.arch)
    recalls = (recall_on_test_split(ds, proposals_dir, scored, echo) if proposals_dir is not None
               else own_proposal_recall(model, ds, scored, echo))
    report = PipelineReport(
        map50=evaluation["map50"], map50_95=evaluation["map50_95"], ap50=evaluation["ap50"],
        proposal_recall50=recalls.recall50, proposal_recall70=recalls.recall70,
        scored_proposal_recall50=recalls.scored_recall50,
        n_test_images=len(ds.split("test")), n_train_images=len(ds.split("train")),
        val_recall=trained["val_recall"], val_precision=trained["val_precision"],
        **detect_seconds(results, ds, proposals_dir), model_mb=model_mb(out / "model"), seconds=timer.total(),
        arch=config.arch, backbone=config.training.backbone, config=config.to_json(model.config.post),
    )
    write_json(out / "metrics.json", report.to_json())
    if config.report:  # after metrics.json, which the page reads for the model's settings
        page = make_report(out / "detect" / "detections.json", ds, out / "report", workers=config.workers, echo=echo, warn=warn)
        echo(f"report: {page.index}")
    return report


def detect_seconds(results: list[ImageResult], ds: Dataset, proposals_dir: Path | None) -> dict[str, float | None]:
    """Seconds per test image of detection: scoring only, and with the proposals (the propose stage's of the same
    images, or those detection made itself); None where an image's propose seconds were not recorded."""
    n = max(len(results), 1)
    score = sum(r.seconds["score"] for r in results) / n
    own = sum(r.seconds.get("propose", 0.0) for r in results) / n  # proposals made during detection
    stored: float | None = 0.0
    if proposals_dir is not None:
        pset = ProposalSet.load(proposals_dir)
        seconds = [pset.seconds(a.id) for a in ds.split("test")]
        stored = None if None in seconds or not seconds else sum(s for s in seconds if s is not None) / len(seconds)
    return {"detect_seconds_per_image": round(score, 3),
            "detect_seconds_per_image_with_proposals": None if stored is None else round(score + own + stored, 3)}


def model_mb(folder: Path) -> float:
    """Size of a model folder's weights (``model.pt``), in MB (10^6 bytes)."""
    return round((folder / WEIGHTS).stat().st_size / 1e6, 2)


def train_stage(ds: Dataset, out: Path, config: PipelineConfig, echo: Callable[[str], Any],
                proposals: Path | None = None) -> dict[str, Any]:
    """Train the architecture's model into ``out/model`` from what it trains on (the region set, or the parsed
    records and their ``proposals``, by default ``out/proposals``); returns its report."""
    spec = config.spec
    source: Any = out / "crops" if spec.input == "regions" else ds
    trained = spec.part("trainer")(source, out / "model", config.training,
                                   proposals=(proposals or out / "proposals") if spec.proposals else None, echo=echo)
    echo(format_train(trained))
    if not ModelConfig.load(out / "model").postprocess and trained.get("val_images"):
        # a trainer without the images (the classic path's region set) names the ones it held out: fit on them here
        fit_model_folder(out / "model", ds, proposals or out / "proposals", trained["val_images"], config.detect.device, echo)
    return trained


def parse_stage(data: str | Path | Dataset, out: Path, config: PipelineConfig, echo: Callable[[str], Any],
                warn: Callable[[str], Any]) -> Dataset:
    """Parse ``data`` (or take it, a Dataset), report its problems, check both splits have images, save the records
    to ``out``."""
    if isinstance(data, Dataset) and config.classes is not None:
        raise ValueError("'classes' selects classes while parsing; give a dataset to parse, or a Dataset of those classes")
    ds = data if isinstance(data, Dataset) else parse_dataset(data, classes=config.classes,
                                                              test_fraction=config.test_fraction, seed=config.seed)
    for p in ds.problems:
        (warn if p.level == "error" else echo)(str(p))
    n_train, n_test = len(ds.split("train")), len(ds.split("test"))
    if not n_train or not n_test:
        where = "the dataset" if isinstance(data, Dataset) else data
        raise DataError(f"{where} needs images in both splits (train: {n_train}, test: {n_test})")
    ds.save(out)
    echo(format_summary(ds))
    return ds


def recall_on_test_split(ds: Dataset, proposals_dir: Path, score_proposals: int, echo: Callable[[str], Any]) -> ProposalRecall:
    """Recall of the stored proposals of the test images, and of the first ``score_proposals`` of each."""
    images = ds.split("test")
    pset = ProposalSet.load(proposals_dir)
    boxes = [pset.boxes(a.id) for a in images]
    return _recall(images, boxes, boxes, score_proposals, echo)


def own_proposal_recall(model: LoadedModel, ds: Dataset, score_proposals: int, echo: Callable[[str], Any]) -> ProposalRecall:
    """Recall on the test images of the proposals of a model that proposes its own: the first
    :attr:`rcnn.arch.ArchSpec.proposer_max` of each (as `rcnn propose --model` keeps), and the first ``score_proposals``.
    All None when its architecture has no proposer."""
    spec = model.spec
    if not spec.proposer:
        return ProposalRecall(None, None, None)
    images = ds.split("test")
    boxes = [model_proposals(model, load_rgb(a.path), max(spec.proposer_max, score_proposals)) for a in images]
    return _recall(images, [b[: spec.proposer_max] for b in boxes], boxes, score_proposals, echo)


def _recall(images: list[Annotation], boxes: list[np.ndarray], scored: list[np.ndarray], score_proposals: int,
            echo: Callable[[str], Any]) -> ProposalRecall:
    """Recall@0.5 and @0.7 of ``boxes`` (per image, best first), and recall@0.5 of the first ``score_proposals``
    of ``scored``."""
    gt = [a.boxes() for a in images]

    def ratio(counts: tuple[int, int]) -> float | None:
        return round(counts[0] / counts[1], 4) if counts[1] else None

    result = ProposalRecall(ratio(recall(gt, boxes, 0.5)), ratio(recall(gt, boxes, 0.7)),
                            ratio(recall(gt, scored, 0.5, score_proposals)))
    echo(f"test-split proposal recall@0.5 {result.recall50} (first {score_proposals}: "
         f"{result.scored_recall50}), recall@0.7 {result.recall70}")
    return result



def demo_config() -> PipelineConfig:
    """The demo's settings: the defaults, with 128 px crops and 32 backgrounds per image for its small images."""
    return PipelineConfig(crop=CropConfig(size=128, neg_per_image=32))


def run_demo(out: str | Path, images: int = 60, echo: Callable[[str], Any] = print,
             warn: Callable[[str], Any] = print_err) -> PipelineReport:
    """The built-in demo: a synthetic VOC dataset of ``images`` images in ``out/data``, then the pipeline on it (offline)."""
    out = output_dir(out, "pipeline")  # claim the folder before writing the dataset into it
    data = out / "data"
    if not (data / "Annotations").is_dir():
        make_dataset(data, images=images, seed=0)
        echo(f"synthetic dataset: {images} images of discs and squares in {data}")
    return run_pipeline(data, out, demo_config(), echo, warn)
