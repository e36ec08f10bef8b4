"""Stage 5: detect objects in new images.

For each image: selective search (the settings the model was trained with, unless
overridden) → the first ``score_proposals`` regions warped exactly as in training →
class probabilities in batches → per-class threshold and NMS → at most
``max_detections`` boxes. Results go into a run folder: annotated images,
``detections.json`` (COCO results format), ``detections.csv`` and optional VOC XML, YOLO
labels and crops. A video (or camera) is read frame by frame: every ``vid_stride``-th frame is
scored as an image is, and the annotated video keeps every frame (see :func:`detect_video`).

The jobs live in their own modules: :mod:`rcnn.sources` (inputs and frames), :mod:`rcnn.postprocess`
(scores to detections), :mod:`rcnn.writers` (the files), :mod:`rcnn.runs` (the run folder's plan and
parts) and :mod:`rcnn.runner` (resume, shards, Ray); their names are importable from here as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import model as models
from .arch import get_arch
from .errors import DataError
from .export import with_runtime
from .io import folder_kind, output_dir, print_err
from .model import LoadedModel
from .postprocess import PostProcess, mirror_regions, select_detections, vote_boxes
from .propose import ProposalSet, ProposeConfig
from .proposer import propose_image
from .results import Detection, ImageResult, VideoSummary, describe
from .runner import Stage
from .runs import PART_FORMAT, PLAN_FORMAT, Part, RunPlan, check_outputs, image_sha, model_key, part_files_exist, read_part, write_part
from .scale import Shard, import_ray
from .sources import (DEFAULT_FPS, VIDEO_EXTENSIONS, Frame, Source, VideoStream, camera_source, find_inputs, image_frames,
                      is_video, load_sources, open_video, output_names)
from .writers import (PALETTE, VIDEO_CODECS, RunFiles, VideoSink, coco_results, crop_detections, draw_detections, folder_name,
                      next_run_dir, voc_xml, write_jpeg, write_outputs, yolo_labels)

__all__ = [  # the detection API, as importable from here before it was split by job
    "DEFAULT_FPS", "PALETTE", "PART_FORMAT", "PLAN_FORMAT", "RUNTIMES",
    "VIDEO_CODECS", "VIDEO_EXTENSIONS", "DetectConfig", "Detection", "ImageResult", "RunFiles", "RunPlan", "VideoSink",
    "VideoSummary", "camera_source", "check_classes", "check_outputs", "coco_results", "crop_detections", "describe",
    "detect", "detect_image", "detect_video", "draw_detections", "find_inputs", "folder_name", "merge_detections",
    "model_key", "model_propose_config", "next_run_dir", "open_video", "output_names", "is_video", "score_image",
    "score_image_tta", "score_regions",
    "select_detections", "voc_xml", "vote_boxes", "write_jpeg", "write_outputs", "yolo_labels",
]


@dataclass
class DetectConfig:
    """Detection settings."""

    # Keep class scores >= this (the reference pipeline used 0.8); None = the architecture's own
    # (rcnn.arch: ArchSpec.score_threshold, with how it was measured). Images draw only >= draw_threshold.
    threshold: float | None = None
    # Class-wise NMS IoU; None = the model's: fitted on its training run's hold-out images (ModelConfig.nms_iou,
    # rcnn.tune), R-CNN's 0.3 for a model folder written before that.
    nms_iou: float | None = None
    max_detections: int = 100  # per image, best first
    # Score the first N proposals of each image (SS rank order); 0 = the architecture's own
    # (rcnn.arch: ArchSpec.scored_proposals). (ProposeConfig.max_proposals is how many are stored.)
    score_proposals: int = 0
    # Crops per forward pass; 0 = the architecture's own (ArchSpec.forward_batch), whose 0 is auto: 4 on a CPU
    # (measured fastest on 2 cores), 64 on a GPU.
    forward_batch: int = 0
    box_regression: bool = True  # refine boxes with the model's R-CNN box regressor
    # After NMS, average each kept box with the same-class boxes overlapping it at IoU >= this, weighted by score
    # (0 = off); None = the model's, fitted with nms_iou (ModelConfig.vote, vote_iou; 0.5 for older model folders).
    vote_iou: float | None = None
    # Test-time augmentation: score the image and its horizontal mirror, merge their regions before NMS. Off: on the
    # dev suite (fast, README) it gained 0.003 of the mean mAP@0.5 at 1.7-2.0x the detection time.
    hflip_tta: bool = False
    draw_threshold: float = 0.5  # annotated images show only detections scoring at least this (the files keep all)
    device: str = "auto"  # where a model folder is loaded to run: "auto" (GPU when there is one), "cpu" or "cuda"
    propose: ProposeConfig | None = None  # None: the settings the model was trained with
    keep_classes: list[str] | None = None  # detect only these of the model's classes (None: all); `--classes`
    # Videos: score every Nth frame (1 = every frame). Every frame is still written to the annotated video,
    # carrying the latest scored frame's boxes (as Ultralytics does), so the video keeps its length and speed.
    vid_stride: int = 1
    max_frames: int = 0  # videos and cameras: read at most this many frames (0 = all; a camera runs until interrupted)
    # Where the network runs: "torch"; "onnx": onnxruntime on the CPU (`pip install 'rcnn[onnx]'`), with the graph
    # `rcnn export MODEL` left in the model folder, else one exported now (about 5 s); selective search, warping and
    # NMS are the same. "auto": onnx where that graph exists (and matches the model), the model runs on the CPU and
    # onnxruntime is installed, else torch. bench/detect.py part 4, raccoon, 1 thread each: onnxruntime scores an
    # image 1.45x faster than PyTorch for fast (0.88 against 1.28 s, 1,284 regions; rcnn: not measured yet); the
    # export is not done by default because it costs as much as scoring about 12 images.
    runtime: str = "auto"

    def __post_init__(self) -> None:
        for name in ("threshold", "vote_iou", "draw_threshold"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"'{name}={getattr(self, name)}' is invalid; it must lie in [0, 1]")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"'nms_iou={self.nms_iou}' is invalid; it must lie in (0, 1]")
        if self.vid_stride < 1 or self.max_frames < 0:
            raise ValueError(f"need vid_stride >= 1 and max_frames >= 0; got {self.vid_stride}, {self.max_frames}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"'runtime={self.runtime}' is invalid; valid runtimes are {', '.join(RUNTIMES)}")
        if self.max_detections < 1 or self.score_proposals < 0 or self.forward_batch < 0:
            raise ValueError(f"need max_detections >= 1, score_proposals >= 0 and forward_batch >= 0; got "
                             f"{self.max_detections}, {self.score_proposals}, {self.forward_batch}")

    def proposals_for(self, arch: str) -> int:
        """How many proposals of each image a model of ``arch`` scores (0: its registry entry's ``scored_proposals``)."""
        return self.score_proposals or get_arch(arch).scored_proposals

    def resolved(self, arch: str, fitted: PostProcess | None = None) -> DetectConfig:
        """This config with the per-architecture settings (threshold, score_proposals, forward_batch) taken from the
        architecture's registry entry (:class:`rcnn.arch.ArchSpec`) where they are not given, and the model's
        post-processing (``fitted``: ``ModelConfig.post``) where ``nms_iou`` / ``vote_iou`` are not."""
        spec = get_arch(arch)
        config = self.with_postprocess(fitted) if fitted is not None else self
        return replace(config, threshold=spec.score_threshold if self.threshold is None else self.threshold,
                       score_proposals=self.proposals_for(arch), forward_batch=self.forward_batch or spec.forward_batch)

    def with_postprocess(self, fitted: PostProcess) -> DetectConfig:
        """This config with ``nms_iou`` and ``vote_iou`` taken from the model's ``fitted`` ones where not given."""
        return replace(self, nms_iou=fitted.nms_iou if self.nms_iou is None else self.nms_iou,
                       vote_iou=fitted.voting_iou if self.vote_iou is None else self.vote_iou)


RUNTIMES = ("auto", "torch", "onnx")


def check_classes(names: list[str] | None, classes: list[str]) -> list[str] | None:
    """``names`` (of ``--classes``) if each is one of the model's object classes; raises ValueError listing them otherwise."""
    if names is None:
        return None
    unknown = [n for n in names if n not in classes[1:]]
    if unknown or not names:
        raise ValueError(f"'--classes {','.join(unknown or names)}' names no class of this model; "
                         f"its classes are {', '.join(classes[1:])}")
    return list(names)


def model_propose_config(model: LoadedModel) -> ProposeConfig:
    """The selective-search settings the model was trained with."""
    return model.config.propose


def score_regions(model: LoadedModel, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of ``boxes`` in ``image``, as the model was trained."""
    return model.score_boxes(image, boxes, batch_size)


def score_image(model: LoadedModel, image: np.ndarray, config: DetectConfig, proposals: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """The scored regions of one RGB image before post-processing: (boxes ``[N, 4]``, probabilities ``[N, C]``,
    deltas ``[N, C, 4]``, seconds of ``propose`` and ``score``). ``config`` must be resolved for the model's arch.

    Regions are the first ``config.score_proposals`` of ``proposals`` (given), of selective search (the model's
    settings unless ``config.propose``), or, for an architecture that proposes its own (:attr:`ArchSpec.detector`),
    of the model's (then ``proposals`` are ignored and ``propose`` is 0: one pass does both).
    """
    t0 = time.perf_counter()
    if model.spec.own_proposals:
        boxes, scores, deltas = model.spec.part("detector")(model, image, config.score_proposals)
        return boxes, scores, deltas, {"propose": 0.0, "score": round(time.perf_counter() - t0, 3)}
    if proposals is None:  # selective search, or the proposer model its training proposals came from
        proposals = propose_image(image, config.propose or model_propose_config(model), config.device)
    boxes = proposals[: config.score_proposals]
    t1 = time.perf_counter()
    scores, deltas = score_regions(model, image, boxes, config.forward_batch)
    return boxes, scores, deltas, {"propose": round(t1 - t0, 3), "score": round(time.perf_counter() - t1, 3)}


def score_image_tta(model: LoadedModel, image: np.ndarray, config: DetectConfig, proposals: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """:func:`score_image` of the image and, with ``config.hflip_tta``, of its horizontal mirror (the same regions,
    mirrored, where they are not the model's own), the mirror's regions mapped back and appended: (boxes ``[N, 4]``,
    probabilities ``[N, C]``, deltas ``[N, C, 4]``, seconds of ``propose`` and ``score``, both passes)."""
    boxes, scores, deltas, secs = score_image(model, image, config, proposals)
    if not config.hflip_tta:
        return boxes, scores, deltas, secs
    width = image.shape[1]
    mirror = np.ascontiguousarray(image[:, ::-1])
    m_boxes, m_scores, m_deltas, m_secs = score_image(model, mirror, config, mirror_regions(boxes, None, width)[0])
    m_boxes, m_deltas = mirror_regions(m_boxes, m_deltas, width)
    return (np.concatenate([boxes, m_boxes]), np.concatenate([scores, m_scores]), np.concatenate([deltas, m_deltas]),
            {k: round(secs[k] + m_secs[k], 3) for k in secs})


def detect_image(model: LoadedModel, image: np.ndarray, config: DetectConfig, proposals: np.ndarray | None = None) -> tuple[list[Detection], dict[str, float], int]:
    """Detect objects in one RGB image; returns (detections, seconds per step, regions scored).

    ``nms_iou`` and ``vote_iou`` not given are the model's (fitted on its hold-out images, ``ModelConfig.post``).
    """
    t0 = time.perf_counter()
    config = config.resolved(model.arch, model.config.post)
    boxes, scores, deltas, secs = score_image_tta(model, image, config, proposals)
    dets = select_detections(boxes, scores, model.classes, config, deltas, (image.shape[1], image.shape[0]))
    return dets, {**secs, "total": round(time.perf_counter() - t0, 3)}, len(boxes)


def plan_config(config: dict[str, Any]) -> DetectConfig:
    """The settings a run plan records (``asdict`` of a DetectConfig) as a DetectConfig.

    Raises:
        TypeError, ValueError: they are not the fields of one, or invalid.
    """
    c = dict(config)
    return DetectConfig(**{**c, "propose": ProposeConfig(**c["propose"]) if c.get("propose") else None})


def summary_settings(config: DetectConfig, arch: str) -> dict[str, Any]:
    """The settings that ran, as ``summary.json`` records them (per-architecture defaults made concrete)."""
    return {**asdict(replace(config.resolved(arch), propose=None)), "propose": config.propose.to_json()}


def score_frame(model: LoadedModel, frame: Frame, config: DetectConfig, files: RunFiles, path: str, name: str,
                proposals: np.ndarray | None = None) -> ImageResult:
    """Detect the objects of one image or video frame and write its files (labels, crops; not the picture)."""
    dets, secs, n = detect_image(model, frame.rgb, config, proposals)
    r = ImageResult(path, frame.rgb.shape[1], frame.rgb.shape[0], dets, secs, n, name, frame.index, frame.time)
    files.write(r, frame.rgb)
    return r


def annotate(model: LoadedModel, rgb: np.ndarray, dets: list[Detection], config: DetectConfig) -> np.ndarray:
    """``rgb`` with the detections scoring at least ``draw_threshold`` drawn."""
    return draw_detections(rgb, [d for d in dets if d.score >= config.draw_threshold], model.classes)


def detect(model: LoadedModel, inputs: list[str] | list[Path], run: str | Path, config: DetectConfig | None = None,
           save_images: bool = True, save_xml: bool = False, proposals: str | Path | None = None,
           echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err, save_txt: bool = False,
           save_conf: bool = False, save_crop: bool = False, source: str | None = None,
           shard: Shard | None = None, ray: str | None = None) -> list[ImageResult]:
    """Detect objects in every image and video of ``inputs`` (files, folders, globs) and write the run folder.

    Every input gets its own outputs (``<name>.jpg``, or ``<name>.mp4`` for a video; ``labels/<name>.xml``,
    named by :func:`output_names`); no output may be one of the inputs, and ``run`` must be new, empty or an
    earlier detection run. Each image's result is also kept in ``parts/<name>.json``; a re-run with the same
    model, settings and inputs reuses those of unchanged images (their files are there) and computes the rest.

    Args:
        save_images: annotated images and videos; save_xml: ``labels/<name>.xml`` (VOC);
        save_txt: ``labels/<name>.txt`` (YOLO: ``class cx cy w h``, normalised); save_conf: with it, the score as a
            sixth column; save_crop: ``crops/<class>/<name>_<k>.jpg``, the pixels of each detection.
            A video's scored frames are named ``<name>_<frame>``.
        proposals: a proposals folder from ``rcnn propose`` to reuse instead of running selective search;
            an image's proposals are found by the image's bytes, not its name (video frames run selective search).
        source: a camera index ("0") or a stream URL to read frames from, as well as ``inputs``.
        echo: called with one line per image or video and for the summary; warn: with one line per skipped input.
        shard: (k, n): only the images of shard k of n (:func:`rcnn.scale.shard_of`, by path), their files and
            parts, not ``detections.json``: shards may run at once into one ``run``; :func:`merge_detections`
            (``rcnn detect --merge RUN``) then writes the merged outputs. Images only.
        ray: run the images as Ray tasks on this cluster (``auto``, an address, or ``local``), on CPUs. Images only.

    Returns:
        The results of the images (and scored video frames) in input order; with ``shard``, of the shard's images.

    Raises:
        DataError: no input, an output would replace an input, ``run`` is not ours, or no input could be read.
        ValueError: ``config.keep_classes`` names a class the model does not have, or ``shard`` / ``ray`` with a video.
    """
    config = config or DetectConfig()
    config = replace(config, keep_classes=check_classes(config.keep_classes, model.classes))
    if ray is not None:
        import_ray()  # fail early, with the fix, when Ray is missing
    paths = find_inputs([str(p) for p in inputs]) if inputs else []
    if not paths and source is None:
        raise DataError(f"no images or videos found in {', '.join(map(str, inputs))}" if inputs else "no input given")
    if (shard is not None or ray is not None) and (source is not None or any(map(is_video, paths))):
        raise ValueError("--shard and --ray take images; detect videos and cameras without them")
    if proposals:
        ProposalSet.load(proposals)  # fail early on a folder that is not one
    # selective search as the model was trained unless set: written down, so that shards and --merge agree
    config = replace(config, propose=config.propose or model_propose_config(model))
    config = config.with_postprocess(model.config.post)  # the model's NMS and voting unless set, written down too
    run = output_dir(run, "detect")
    stream = camera_source(source) if source is not None else None
    names = [s.name for s in load_sources(paths, stream)]
    files = RunFiles(run, model.classes, save_xml, save_txt, save_conf, save_crop)
    check_outputs(run, paths, names, save_images, files)
    plan = RunPlan(model_key(model), str(model.folder.resolve()) if model.folder else None,
                   [str(p.resolve()) for p in paths], names, {**asdict(config), "propose": config.propose.to_json()}, save_images, save_xml, save_txt, save_conf,
                   save_crop, str(Path(proposals).resolve()) if proposals else None, model.classes, model.arch)
    if source is None and not any(map(is_video, paths)):
        plan.save(run, replace_other=shard is None, check=plan_config)
    return _run_plan(plan, run, lambda: model, echo, warn, shard, ray, stream)


def merge_detections(run: str | Path, echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err,
                     ray: str | None = None) -> list[ImageResult]:
    """Write the merged outputs (``detections.json``, ``.csv``, ``summary.json``) of the shards run into ``run``.

    The images no shard finished are detected first, with the model, settings and inputs the shards
    recorded in ``run/parts/plan.json`` (the model is loaded only then).

    Raises:
        DataError: ``run`` holds no shard plan, or its model cannot be loaded when images are missing.
    """
    run = Path(run)
    if folder_kind(run) != "detect":
        raise DataError(f"--merge {run} is not a detection run folder")
    plan = RunPlan.load(run, plan_config)

    def load() -> LoadedModel:
        if plan.model is None:
            raise DataError(f"images of {run} are missing and its model was built in memory; run `rcnn detect` again")
        model = models.load_model(plan.model, plan.config["device"])
        if model_key(model) != plan.model_key:
            raise DataError(f"the model in {plan.model} changed since the shards of {run} ran; run them again")
        return model

    return _run_plan(plan, run, load, echo, warn, None, ray, None)


def _run_plan(plan: RunPlan, run: Path, get_model: Callable[[], LoadedModel], echo: Callable[[str], Any],
              warn: Callable[[str], Any], shard: Shard | None, ray: str | None, stream: int | str | None) -> list[ImageResult]:
    """Detect what ``run`` lacks of ``plan`` (shard ``shard`` of its images, or all) and, without a shard, write the outputs."""
    config = plan_config(plan.config)
    targets: list[Path | int | str] = [*map(Path, plan.inputs), *([stream] if stream is not None else [])]
    sources = [Source(t, n) for t, n in zip(targets, plan.names)]
    job = _ImageParts(plan, run, echo, warn)
    todo = job.stage().plan([ImageTask(i, s.target, s.name) for i, s in enumerate(sources) if s.is_image],
                            shard, key=lambda t: str(t.path)).todo
    if todo:
        echo(f"{len(todo)} images to detect" + (f" ({len(job.parts)} done earlier)" if job.parts else ""))
    model = get_model() if todo or not all(s.is_image for s in sources) else None
    if model is not None and config.runtime != "torch":
        model, runtime = with_runtime(model, config.runtime)
        config = replace(config, runtime=runtime)  # the summary records the one that ran
    t_start = time.perf_counter()
    if todo:
        assert model is not None
        job.run(model, config, todo, ray)
    if shard is not None:
        return job.shard_summary(shard)
    results, failures, videos = job.results(sources, lambda s: detect_video(model, s.target, s.name, run, config,
                                                                          plan.files(run), plan.save_images))
    if not results and not videos:
        raise DataError(f"none of the {len(sources)} inputs could be read (first error: {failures[0]})")
    write_outputs(run, results, plan.model_classes, summary_settings(config, plan.arch), failures, videos)
    total = time.perf_counter() - t_start
    n_det = sum(len(r.detections) for r in results)
    echo(f"{len(results)} images{' and video frames' if videos else ''}, {n_det} detections, "
         f"{total / max(len(results), 1):.2f} s per image" + (f", {len(failures)} inputs skipped" if failures else ""))
    echo(f"results saved to {run}")
    return results


@dataclass
class ImageTask:
    """One image of a run to detect: its index among the run's inputs, its file and its output name."""

    index: int
    path: Path
    name: str


@dataclass
class _ImageParts:
    """The images of one run as a :class:`rcnn.runner.Stage`: a part per image, reused while its key holds."""

    plan: RunPlan
    folder: Path  # the run folder
    echo: Callable[[str], Any]
    warn: Callable[[str], Any]
    parts: dict[int, Part] = field(default_factory=dict)  # input index -> its part, reused or made now

    def stage(self) -> Stage[ImageTask]:
        return Stage("detect", _detect_task, self.collect, self.lost, self.valid)

    def valid(self, t: ImageTask) -> bool:
        """Whether ``parts/<name>.json`` holds this image's result under the plan's key, its files still there."""
        part = read_part(self.folder, t.name)
        if part is None or part.key != self.plan.key(t.index, t.name, image_sha(t.path)) or not part_files_exist(self.folder, self.plan, part):
            return False
        self.parts[t.index] = part
        return True

    def run(self, model: LoadedModel, config: DetectConfig, todo: list[ImageTask], ray: str | None) -> None:
        pset = ProposalSet.load(self.plan.proposals) if self.plan.proposals else None
        if ray is not None and model.device.type != "cpu":
            model = replace(model, net=model.net.cpu(), device=torch.device("cpu"))  # Ray tasks ask for CPUs
        shared = (model, config, pset, self.plan.files(self.folder), self.plan.save_images)
        self.stage().run(shared, todo, ray=ray, progress=ray is not None)  # without Ray: a line per image instead

    def collect(self, t: ImageTask, part: Part) -> None:
        part.key = self.plan.key(t.index, t.name, part.image_sha1)
        write_part(self.folder, t.name, part)  # last: a part means the image's files are written
        self.parts[t.index] = part
        if part.error or part.result is None:
            self.warn(f"error: {part.error}; skipped")
        else:
            r = part.result
            self.echo(f"{t.path.name}: {describe(r.detections)} ({r.n_proposals} proposals, {r.seconds['total']:.2f} s)")

    def lost(self, t: ImageTask, err: str) -> None:  # a Ray task that kept failing
        self.collect(t, Part(t.index, "", None, f"{t.path}: {err}"))

    def shard_summary(self, shard: Shard) -> list[ImageResult]:
        """The results of this shard's images (a line says so); the outputs are ``--merge``'s to write."""
        mine = [self.parts[i] for i in sorted(self.parts)]
        ok = [p.result for p in mine if not p.error and p.result is not None]
        self.echo(f"shard {shard[0]}/{shard[1]}: {len(mine)} images, {sum(len(r.detections) for r in ok)} detections, "
                  f"{len(mine) - len(ok)} skipped; `rcnn detect --merge {self.folder}` writes detections.json once every shard is done")
        return ok

    def results(self, sources: list[Source], video: Callable[[Source], tuple[list[ImageResult], VideoSummary]]
                ) -> tuple[list[ImageResult], list[str], list[VideoSummary]]:
        """Every input in order: the parts of images, the videos detected now by ``video``; and the failures."""
        results: list[ImageResult] = []
        failures: list[str] = []
        videos: list[VideoSummary] = []
        for i, src in enumerate(sources):
            if src.is_image:
                part = self.parts[i]
                results += [part.result] if part.result is not None and not part.error else []
                failures += [part.error] if part.error else []
                continue
            try:
                frames, info = video(src)
            except DataError as e:
                failures.append(str(e))
                self.warn(f"error: {e}; skipped")
                continue
            results += frames
            videos.append(info)
            self.echo(f"{Path(str(src.target)).name}: {info.frames} frames, {info.scored} scored, "
                      f"{describe(d for r in frames for d in r.detections)} ({info.seconds:.1f} s)")
        return results, failures, videos


def _detect_task(shared: tuple[LoadedModel, DetectConfig, ProposalSet | None, RunFiles, bool], task: ImageTask) -> Part:
    """Detect one image and write its files (annotated image, labels, crops); returns its part (without key)."""
    model, config, pset, files, save_images = shared
    part = Part(task.index, image_sha(task.path))
    try:
        frame = next(image_frames(task.path))
        boxes = pset.find(task.path) if pset is not None else None
    except DataError as e:
        part.error = str(e)
        return part
    part.result = score_frame(model, frame, config, files, str(task.path.resolve()), task.name, boxes)
    if save_images:
        write_jpeg(files.run / f"{task.name}.jpg", annotate(model, frame.rgb, part.result.detections, config))
    return part


def detect_video(model: LoadedModel, source: Path | int | str, name: str, run: Path, config: DetectConfig,
                 files: RunFiles, save_images: bool = True) -> tuple[list[ImageResult], VideoSummary]:
    """Detect objects in the frames of a video file, camera or stream; write ``RUN/<name>.mp4`` and each
    scored frame's files (named ``<name>_<frame>``).

    Frames 0, ``vid_stride``, 2 ``vid_stride``, ... are scored (selective search with the model's settings,
    then the network); every frame read is written to the annotated video, with the latest scored frame's
    detections drawn. A camera stops at ``max_frames`` or on Ctrl-C, and keeps what it recorded.

    Returns:
        (one ImageResult per scored frame, the video's summary: source, output, frames, scored, fps, seconds).

    Raises:
        DataError: the source cannot be opened or has no readable frame.
    """
    src, t0 = Source(source, name), time.perf_counter()
    results: list[ImageResult] = []
    sinks: list[VideoSink] = []  # the annotated video, opened at the first frame (its size)
    dets: list[Detection] = []
    n = 0
    with VideoStream(source) as video:
        limit = config.max_frames or None
        bar = tqdm(total=min(video.total, limit or video.total) or None, desc=Path(src.label).name, unit="frame", disable=None)
        try:
            try:
                for frame in video.frames(limit):
                    if n % config.vid_stride == 0:
                        results.append(score_frame(model, frame, config, files, src.path, f"{name}_{n}"))
                        dets = results[-1].detections
                    if save_images:
                        sinks = sinks or [VideoSink(run, name, video.fps, (frame.rgb.shape[1], frame.rgb.shape[0]))]
                        sinks[0].write(annotate(model, frame.rgb, dets, config))
                    n += 1
                    bar.update(1)
            except KeyboardInterrupt:  # a camera: Ctrl-C ends the recording, which is kept
                if not isinstance(source, int):
                    raise
            if n == 0:
                raise DataError(f"video {src.label} has no readable frames")
        except BaseException:
            for sink in sinks:
                sink.close(keep=False)
            raise
        finally:
            bar.close()
    out = sinks[0].close(keep=True) if sinks else None
    return results, VideoSummary(src.path, out.name if out else None, n, len(results), config.vid_stride,
                                 round(video.fps, 3), round(time.perf_counter() - t0, 2))
