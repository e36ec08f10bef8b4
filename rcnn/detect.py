"""Stage 5: detect objects in new images.

For each image: selective search (the settings the model was trained with, unless
overridden) → the first ``score_proposals`` regions warped exactly as in training →
class probabilities in batches → per-class threshold and NMS → at most
``max_detections`` boxes. Results go into a run folder: annotated images,
``detections.json`` (COCO results format), ``detections.csv`` and optional VOC XML, YOLO
labels and crops. A video (or camera) is read frame by frame: every ``vid_stride``-th frame is
scored as an image is, and the annotated video keeps every frame (see :func:`detect_video`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lxml import etree

from .arch import get_arch
from .boxes import batched_nms, box_iou, clip_boxes, decode, remove_small_boxes
from .errors import DataError
from .io import (IMAGE_EXTENSIONS, digest, file_digest, find_images, folder_kind, load_rgb, new_output_dir, output_dir,
                 print_err, read_json, write_atomic, write_csv, write_json, write_text)
from .model import LoadedModel
from .propose import ProposalSet, ProposeConfig, selective_search
from .scale import Shard, import_ray, run_tasks, shard_of


@dataclass
class DetectConfig:
    """Detection settings."""

    # Keep class scores >= this (the reference pipeline used 0.8); None = by architecture (SCORE_THRESHOLDS):
    # 0.3 for rcnn (measured in its time), 0.05 for fast, which on the dev splits (raccoon train 120/40, bccd
    # train/val) gained 0.03 (raccoon) and 0.013 (bccd) mAP@0.5 over 0.3. Images draw only >= draw_threshold.
    threshold: float | None = None
    nms_iou: float = 0.3  # class-wise NMS IoU (R-CNN: 0.3)
    max_detections: int = 100  # per image, best first
    # Score the first N proposals of each image (SS rank order); 0 = by architecture: 500 for rcnn (one
    # backbone pass per region: on raccoon 500 gave mAP@0.5 0.64 where 300 gave 0.44), every stored one
    # for fast (they share one pass). (ProposeConfig.max_proposals is how many are stored.)
    score_proposals: int = 0
    forward_batch: int = 0  # crops per forward pass; 0 = auto: 4 on a CPU (measured fastest on 2 cores), 64 on a GPU
    box_regression: bool = True  # refine boxes with the model's R-CNN box regressor
    # After NMS, average each kept box with the same-class boxes overlapping it at IoU >= this,
    # weighted by score (0 = off). On the raccoon test split: mAP@0.5 0.57 -> 0.66.
    vote_iou: float = 0.5
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
        if not 0.0 < self.nms_iou <= 1.0:
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

    def resolved(self, arch: str) -> DetectConfig:
        """This config with the per-architecture settings (threshold, score_proposals, forward_batch) taken from the
        architecture's registry entry (:class:`rcnn.arch.ArchSpec`) where they are not given."""
        spec = get_arch(arch)
        return replace(self, threshold=spec.score_threshold if self.threshold is None else self.threshold,
                       score_proposals=self.proposals_for(arch), forward_batch=self.forward_batch or spec.forward_batch)


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


@dataclass
class Detection:
    """One detected object: ``box`` is (x1, y1, x2, y2) in pixels."""

    label: str
    score: float
    box: list[float]


@dataclass
class ImageResult:
    path: str
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    n_proposals: int = 0
    name: str = ""  # output name (no extension), distinct within a run
    frame: int | None = None  # a video frame: its 0-based index in the video ...
    time: float | None = None  # ... and its time in seconds (frame / fps)


def model_propose_config(model: LoadedModel) -> ProposeConfig:
    """The selective-search settings the model was trained with."""
    return model.config.propose


def score_regions(model: LoadedModel, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of ``boxes`` in ``image``, as the model was trained."""
    return model.score_boxes(image, boxes, batch_size)


def select_detections(boxes: np.ndarray, scores: np.ndarray, classes: list[str], config: DetectConfig,
                      deltas: np.ndarray | None = None, image_size: tuple[int, int] | None = None) -> list[Detection]:
    """Threshold the foreground class scores, refine the boxes, apply class-wise NMS, keep the best ``max_detections``.

    Args:
        boxes (ndarray[N, 4]): proposals; scores (ndarray[N, C]): probabilities, column 0 background.
        deltas (ndarray[N, C, 4]): class-specific box regression (dx, dy, dw, dh), or None.
        image_size: (width, height) to clip refined boxes to.
    """
    if config.threshold is None:
        raise ValueError("select_detections needs a threshold: pass DetectConfig.resolved(arch)")
    fg = scores[:, 1:]
    wanted = np.ones(fg.shape[1], bool) if config.keep_classes is None else np.isin(classes[1:], config.keep_classes)
    rows, cols = np.nonzero((fg >= config.threshold) & wanted[None, :])
    if len(rows) == 0:
        return []
    b, s, l = boxes[rows], fg[rows, cols], cols
    if deltas is not None and config.box_regression:
        b = decode(b, deltas[rows, cols + 1])
        if image_size is not None:
            b = clip_boxes(b, *image_size)
        ok = remove_small_boxes(b, 1.0)
        b, s, l = b[ok], s[ok], l[ok]
    keep = batched_nms(b, s, l, config.nms_iou)[: config.max_detections]
    kept = vote_boxes(b, s, l, keep, config.vote_iou) if config.vote_iou > 0 else b[keep]
    return [Detection(classes[int(l[k]) + 1], round(float(s[k]), 5), [round(float(v), 2) for v in kept[i]])
            for i, k in enumerate(keep)]


def vote_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, keep: np.ndarray, vote_iou: float) -> np.ndarray:
    """Box voting (Gidaris & Komodakis, 2015): each kept box becomes the score-weighted mean of
    the same-class candidates that overlap it at IoU >= ``vote_iou`` (itself included).

    Returns:
        ndarray[len(keep), 4] float32: the refined kept boxes.
    """
    if len(keep) == 0:
        return np.zeros((0, 4), np.float32)
    iou = box_iou(boxes[keep], boxes)  # (K, M)
    w = ((iou >= vote_iou) & (labels[keep][:, None] == labels[None, :])) * scores[None, :]  # (K, M)
    return ((w @ boxes) / w.sum(axis=1, keepdims=True)).astype(np.float32)


def detect_image(model: LoadedModel, image: np.ndarray, config: DetectConfig, proposals: np.ndarray | None = None) -> tuple[list[Detection], dict[str, float], int]:
    """Detect objects in one RGB image; returns (detections, seconds per step, proposals scored)."""
    t0 = time.perf_counter()
    config = config.resolved(model.arch)
    if proposals is None:
        proposals = selective_search(image, config.propose or model_propose_config(model))
    boxes = proposals[: config.score_proposals]
    t1 = time.perf_counter()
    scores, deltas = score_regions(model, image, boxes, config.forward_batch)
    t2 = time.perf_counter()
    dets = select_detections(boxes, scores, model.classes, config, deltas, (image.shape[1], image.shape[0]))
    return dets, {"propose": round(t1 - t0, 3), "score": round(t2 - t1, 3), "total": round(time.perf_counter() - t0, 3)}, len(boxes)


# --------------------------------------------------------------------------- outputs


def next_run_dir(root: str | Path = "runs/detect", name: str = "predict") -> Path:
    """Create and return a fresh Ultralytics-style run folder: predict, predict2, predict3, ...

    Creation is atomic, so runs started together never share a folder.
    """
    return new_output_dir(root, name, "detect")


# one fixed colour per class index (background is never drawn), cycled past seven classes
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def draw_detections(image: np.ndarray, dets: list[Detection], classes: list[str]) -> np.ndarray:
    """A copy of ``image`` (RGB, ``[H, W, 3]`` uint8) with each box and its "name 0.87" label drawn.

    Drawn by :func:`torchvision.utils.draw_bounding_boxes`: one colour per class, a line width
    that grows with the image (2 px up to 600 px), PIL's built-in font (it has one size).
    """
    if not dets:
        return image.copy()
    from torchvision.utils import draw_bounding_boxes

    boxes = torch.tensor([d.box for d in dets], dtype=torch.float32).reshape(-1, 4)
    colors = [PALETTE[(classes.index(d.label) if d.label in classes else 0) % len(PALETTE)] for d in dets]
    drawn = draw_bounding_boxes(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), boxes,
                                labels=[f"{d.label} {d.score:.2f}" for d in dets], colors=colors,
                                width=max(2, round(max(image.shape[:2]) / 300)), fill_labels=True, label_colors="white")
    return drawn.permute(1, 2, 0).numpy().copy()


def voc_xml(result: ImageResult) -> str:
    """VOC XML of one image's detections (1-based inclusive coordinates), for annotation tools."""
    root = etree.Element("annotation")
    etree.SubElement(root, "filename").text = Path(result.path).name
    etree.SubElement(root, "path").text = result.path
    size = etree.SubElement(root, "size")
    for tag, v in (("width", result.width), ("height", result.height), ("depth", 3)):
        etree.SubElement(size, tag).text = str(v)
    for d in result.detections:
        obj = etree.SubElement(root, "object")
        etree.SubElement(obj, "name").text = d.label
        etree.SubElement(obj, "score").text = f"{d.score:.4f}"
        etree.SubElement(obj, "difficult").text = "0"
        bb = etree.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = d.box
        for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            etree.SubElement(bb, tag).text = str(int(round(v)))
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def coco_results(results: list[ImageResult], classes: list[str]) -> list[dict[str, Any]]:
    """COCO results format: one entry per detection, ``bbox`` = [x, y, width, height].

    ``image_id`` numbers the images (and scored video frames) in order; ``file_name`` names the image
    (or video) so that ``rcnn evaluate`` can match it to the annotations; ``category_id`` is the 1-based
    class index. A video frame's entries also carry ``frame`` (0-based index) and ``time`` (seconds).
    """
    out = []
    for i, r in enumerate(results, start=1):
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            rec = {"image_id": i, "file_name": r.path, "category_id": classes.index(d.label), "category": d.label,
                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": d.score}
            if r.frame is not None:
                rec.update(frame=r.frame, time=r.time)
            out.append(rec)
    return out


def yolo_labels(result: ImageResult, classes: list[str], conf: bool = False) -> str:
    """YOLO label text of one image's detections: ``class cx cy w h`` a line, the box centre and size
    divided by the image's width and height, ``class`` 0-based over the object classes (background
    excluded); ``conf`` adds the score as a sixth column. No detections: empty text (as Ultralytics writes)."""
    lines = []
    for d in result.detections:
        x1, y1, x2, y2 = d.box
        w, h = result.width, result.height
        values = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        lines.append(f"{classes.index(d.label) - 1} " + " ".join(f"{v:.6f}" for v in values) + (f" {d.score:.5f}" if conf else ""))
    return "".join(line + "\n" for line in lines)


def crop_detections(image: np.ndarray, dets: list[Detection]) -> list[np.ndarray]:
    """The pixels of each detection's box (rounded outwards, clipped to the image, at least 1 px), RGB copies."""
    h, w = image.shape[:2]
    crops = []
    for d in dets:
        x1, y1 = (min(max(int(np.floor(v)), 0), m - 1) for v, m in zip(d.box[:2], (w, h)))
        x2, y2 = (min(max(int(np.ceil(v)), lo + 1), m) for v, lo, m in zip(d.box[2:], (x1, y1), (w, h)))
        crops.append(image[y1:y2, x1:x2].copy())
    return crops


def folder_name(label: str) -> str:
    """A class name as one safe folder name (path separators and control characters become ``_``)."""
    name = re.sub(r"[^\w\-. ]", "_", label).strip() or "_"
    return "_" if set(name) <= {"."} else name


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    """An RGB image as JPEG, atomically."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"cannot encode {path} as JPEG")
    write_atomic(path, lambda p: p.write_bytes(buf.tobytes()))


@dataclass
class RunFiles:
    """The files a run writes for each image (or scored video frame) besides its annotated picture:
    ``labels/<name>.xml`` (VOC), ``labels/<name>.txt`` (YOLO) and ``crops/<class>/<name>_<k>.jpg``."""

    run: Path
    classes: list[str]
    save_xml: bool = False
    save_txt: bool = False
    save_conf: bool = False  # with save_txt: the score as sixth column
    save_crop: bool = False

    def write(self, result: ImageResult, image: np.ndarray) -> None:
        if self.save_xml:
            write_text(self.run / "labels" / f"{result.name}.xml", voc_xml(result))
        if self.save_txt:
            write_text(self.run / "labels" / f"{result.name}.txt", yolo_labels(result, self.classes, self.save_conf))
        if self.save_crop:
            for k, (d, crop) in enumerate(zip(result.detections, crop_detections(image, result.detections)), start=1):
                write_jpeg(self.run / "crops" / folder_name(d.label) / f"{result.name}_{k}.jpg", crop)


def write_outputs(run: Path, results: list[ImageResult], classes: list[str], arch: str, config: DetectConfig,
                  failures: list[str], videos: list[dict[str, Any]]) -> None:
    """``detections.json``, ``detections.csv`` and ``summary.json`` of a run; ``config.propose`` is set."""
    write_json(run / "detections.json", coco_results(results, classes))
    write_csv(run / "detections.csv", ["image", "label", "score", "x1", "y1", "x2", "y2", "frame", "time"],
              ([r.path, d.label, d.score, *d.box, "" if r.frame is None else r.frame, "" if r.time is None else r.time]
               for r in results for d in r.detections))
    times = [r.seconds["total"] for r in results]
    write_json(run / "summary.json", {
        "format": "rcnn-detect-summary-v1",
        "images": len(results),
        "detections": sum(len(r.detections) for r in results),
        "seconds_per_image": round(float(np.mean(times)), 3) if times else None,
        "failed": failures,
        "config": {**asdict(replace(config.resolved(arch), propose=None)), "propose": asdict(config.propose)},
        "videos": videos,
        "per_image": [{"image": r.path, "output": r.name, "detections": len(r.detections), "proposals": r.n_proposals,
                       "seconds": r.seconds, **({"frame": r.frame, "time": r.time} if r.frame is not None else {})}
                      for r in results],
    })


# --------------------------------------------------------------------------- videos

# Files recognised as videos by their extension; OpenCV's VideoCapture (FFmpeg) reads them.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".ogv", ".asf")
VIDEO_CODECS = ((".mp4", "mp4v"), (".avi", "MJPG"))  # the annotated video: mp4v in .mp4, else MJPG in .avi
DEFAULT_FPS = 30.0  # for a source that does not say (most cameras)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def camera_source(source: str) -> int | str:
    """``--source``: a camera index ("0") as an int, anything else (a stream URL, a file) as is."""
    return int(source) if source.strip().isdigit() else source


def open_video(source: Path | int | str) -> tuple[cv2.VideoCapture, float, int]:
    """Open a video file, camera index or stream: (capture, frames per second, frame count or 0 if unknown).

    Raises:
        DataError: it does not exist or OpenCV cannot open it.
    """
    if isinstance(source, Path) and not source.is_file():
        raise DataError(f"video not found: {source}")
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        cap.release()
        if isinstance(source, int):
            raise DataError(f"cannot open camera {source}: there is no such device, or OpenCV cannot read it")
        raise DataError(f"cannot read video {source}: OpenCV cannot open it (not a video, or a codec this OpenCV lacks)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    return cap, fps, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)


class VideoSink:
    """Frames → ``RUN/<name>.mp4`` (mp4v), or ``.avi`` (MJPG) where OpenCV cannot write mp4, written under a
    temporary name in the run folder and renamed into place only when complete."""

    def __init__(self, run: Path, name: str, fps: float, size: tuple[int, int]) -> None:
        for ext, fourcc in VIDEO_CODECS:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp" + ext, dir=run)
            os.close(fd)
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if writer.isOpened():
                self.writer, self.tmp, self.path, self.size = writer, Path(tmp), run / f"{name}{ext}", size
                return
            writer.release()
            os.unlink(tmp)
        raise DataError(f"OpenCV cannot write a video into {run} (tried {', '.join(c for _, c in VIDEO_CODECS)})")

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:  # a stream that changes size: the video keeps its first
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool) -> Path | None:
        self.writer.release()
        if not keep:
            self.tmp.unlink(missing_ok=True)
            return None
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)
        return self.path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def detect_video(model: LoadedModel, source: Path | int | str, name: str, run: Path, config: DetectConfig,
                 files: RunFiles, save_images: bool = True) -> tuple[list[ImageResult], dict[str, Any]]:
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
    from tqdm import tqdm

    cap, fps, total = open_video(source)
    label = f"camera {source}" if isinstance(source, int) else str(source)
    path = str(source.resolve()) if isinstance(source, Path) else label
    limit = config.max_frames or None
    bar = tqdm(total=min(total, limit or total) or None, desc=Path(label).name, unit="frame", disable=None)
    results: list[ImageResult] = []
    sink: VideoSink | None = None
    dets: list[Detection] = []
    n, t0 = 0, time.perf_counter()
    try:
        while limit is None or n < limit:
            try:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if n % config.vid_stride == 0:
                    dets, secs, k = detect_image(model, rgb, config)
                    r = ImageResult(path, rgb.shape[1], rgb.shape[0], dets, secs, k, f"{name}_{n}", n, round(n / fps, 4))
                    results.append(r)
                    files.write(r, rgb)
                if save_images:
                    sink = sink or VideoSink(run, name, fps, (rgb.shape[1], rgb.shape[0]))
                    sink.write(draw_detections(rgb, [d for d in dets if d.score >= config.draw_threshold], model.classes))
            except KeyboardInterrupt:
                if not isinstance(source, int):
                    raise
                break  # a camera: Ctrl-C ends the recording, which is kept
            n += 1
            bar.update(1)
    except BaseException:
        if sink is not None:
            sink.close(keep=False)
        raise
    finally:
        cap.release()
        bar.close()
    if n == 0:
        if sink is not None:
            sink.close(keep=False)
        raise DataError(f"video {label} has no readable frames")
    out = sink.close(keep=True) if sink is not None else None
    return results, {"video": path, "output": out.name if out else None, "frames": n, "scored": len(results),
                     "vid_stride": config.vid_stride, "fps": round(fps, 3), "seconds": round(time.perf_counter() - t0, 2)}


# --------------------------------------------------------------------------- a run


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode): equal for two paths of one file, whatever links or spellings lead to it."""
    st = path.stat()
    return st.st_dev, st.st_ino


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name (no extension) for every input image: its stem, or ``stem_2``, ``stem_3``, ...
    when several inputs share a stem (``a/x.jpg``, ``a/x.png``, ``b/x.jpg``)."""
    stems = {p.stem for p in paths}
    names: list[str] = []
    for p in paths:
        name, k = p.stem, 1
        while name in names or (k > 1 and name in stems):
            k += 1
            name = f"{p.stem}_{k}"
        names.append(name)
    return names


def find_inputs(inputs: list[str]) -> list[Path]:
    """Images and videos of ``inputs`` (files, folders searched recursively, globs), in order.

    Raises:
        DataError: an input matches nothing.
    """
    return find_images(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def check_outputs(run: Path, paths: list[Path], names: list[str], save_images: bool, files: RunFiles) -> None:
    """Refuse a run whose outputs would replace one of its inputs (annotated images and videos, labels, crops).

    Raises:
        DataError: naming the output and the input.
    """
    planned = [run / n for n in ("detections.json", "detections.csv", "summary.json")]
    for p, n in zip(paths, names):
        if is_video(p):
            planned += [run / f"{n}{ext}" for ext, _ in VIDEO_CODECS] if save_images else []
        else:
            planned += [run / f"{n}.jpg"] if save_images else []
            planned += [run / "labels" / f"{n}.xml"] if files.save_xml else []
            planned += [run / "labels" / f"{n}.txt"] if files.save_txt else []
    inputs = {_file_id(p): p for p in paths}  # one stat per input and per output, not one per pair
    for out in planned:
        if out.exists() and _file_id(out) in inputs:
            raise DataError(f"output {out} would replace the input image {inputs[_file_id(out)]}; choose another --out")
    # frames' labels and every crop have names known only as they are written: no input may lie where they go
    written = [run / "crops"] if files.save_crop else []
    written += [run / "labels"] if (files.save_xml or files.save_txt) and any(map(is_video, paths)) else []
    for folder in (w.resolve() for w in written):
        for p in paths:
            if p.resolve().is_relative_to(folder):
                raise DataError(f"the input {p} lies in {folder}, where this run writes; choose another --out")


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
    run = output_dir(run, "detect")
    stream = camera_source(source) if source is not None else None
    names = output_names([*paths, *([Path(f"camera{stream}" if isinstance(stream, int) else "stream")] if source is not None else [])])
    files = RunFiles(run, model.classes, save_xml, save_txt, save_conf, save_crop)
    check_outputs(run, paths, names, save_images, files)
    plan = RunPlan(model_key(model), str(model.folder.resolve()) if model.folder else None,
                   [str(p.resolve()) for p in paths], names, asdict(config), save_images, save_xml, save_txt, save_conf,
                   save_crop, str(Path(proposals).resolve()) if proposals else None, model.classes, model.arch)
    if source is None and not any(map(is_video, paths)):
        plan.save(run, replace_other=shard is None)
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
    plan = RunPlan.load(run)

    def load() -> LoadedModel:
        from .model import load_model

        if plan.model is None:
            raise DataError(f"images of {run} are missing and its model was built in memory; run `rcnn detect` again")
        model = load_model(plan.model, plan.config["device"])
        if model_key(model) != plan.model_key:
            raise DataError(f"the model in {plan.model} changed since the shards of {run} ran; run them again")
        return model

    return _run_plan(plan, run, load, echo, warn, None, ray, None)


def _run_plan(plan: RunPlan, run: Path, get_model: Callable[[], LoadedModel], echo: Callable[[str], Any],
              warn: Callable[[str], Any], shard: Shard | None, ray: str | None, stream: int | str | None) -> list[ImageResult]:
    """Detect what ``run`` lacks of ``plan`` (shard ``shard`` of its images, or all) and, without a shard, write the outputs."""
    from tqdm import tqdm

    config = plan.detect_config()
    paths = [Path(p) for p in plan.inputs]
    images = [(i, p, n) for i, (p, n) in enumerate(zip(paths, plan.names)) if not is_video(p)]
    parts: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, Path, str]] = []
    for i, p, name in shard_of(images, shard, key=lambda x: str(x[1])):
        part = read_part(run, name)
        if part is not None and part.get("key") == plan.key(i, name, _image_sha(p)) and _part_files_exist(run, plan, part):
            parts[i] = part
        else:
            todo.append((i, p, name))
    if todo:
        echo(f"{len(todo)} images to detect" + (f" ({len(parts)} done earlier)" if parts else ""))
    model = get_model() if todo or len(images) < len(paths) or stream is not None else None
    if model is not None and config.runtime != "torch":
        from .export import with_runtime

        model, runtime = with_runtime(model, config.runtime)
        config = replace(config, runtime=runtime)  # the summary records the one that ran
    t_start = time.perf_counter()
    if todo:
        assert model is not None
        pset = ProposalSet.load(plan.proposals) if plan.proposals else None
        files = plan.files(run)
        if ray is not None and model.device.type != "cpu":
            model = replace(model, net=model.net.cpu(), device=torch.device("cpu"))  # Ray tasks ask for CPUs

        def collect(item: tuple[int, Path, str], part: dict[str, Any]) -> None:
            i, p, name = item
            part = {**part, "key": plan.key(i, name, part.pop("image_sha1"))}
            write_json(run / "parts" / f"{name}.json", part)  # last: a part means the image's files are written
            parts[i] = part
            if part["error"]:
                warn(f"error: {part['error']}; skipped")
            else:
                r = result_of(part)
                echo(f"{p.name}: {describe(r.detections)} ({r.n_proposals} proposals, {r.seconds['total']:.2f} s)")

        def lost(item: tuple[int, Path, str], err: str) -> None:  # a Ray task that kept failing
            collect(item, {"format": PART_FORMAT, "index": item[0], "image_sha1": "", "result": None,
                           "error": f"{item[1]}: {err}"})

        bar = tqdm(total=len(todo), desc="detect", unit="img", disable=None) if ray is not None else None
        try:
            run_tasks(_detect_task, (model, config, pset, files, plan.save_images), todo, collect, ray=ray,
                      on_error=lost, bar=bar)
        finally:
            if bar is not None:
                bar.close()
    if shard is not None:
        mine = [parts[i] for i in sorted(parts)]
        ok = [result_of(p) for p in mine if not p["error"]]
        echo(f"shard {shard[0]}/{shard[1]}: {len(mine)} images, {sum(len(r.detections) for r in ok)} detections, "
             f"{len(mine) - len(ok)} skipped; `rcnn detect --merge {run}` writes detections.json once every shard is done")
        return ok

    # every input in order: the parts of images, videos detected now
    results: list[ImageResult] = []
    failures: list[str] = []
    videos: list[dict[str, Any]] = []
    files = plan.files(run)
    sources: list[Path | int | str] = [*paths, *([stream] if stream is not None else [])]
    for i, (src, name) in enumerate(zip(sources, plan.names)):
        if isinstance(src, Path) and not is_video(src):
            part = parts[i]
            if part["error"]:
                failures.append(part["error"])
            else:
                results.append(result_of(part))
            continue
        assert model is not None
        try:
            frames, info = detect_video(model, src, name, run, config, files, plan.save_images)
        except DataError as e:
            failures.append(str(e))
            warn(f"error: {e}; skipped")
            continue
        results += frames
        videos.append(info)
        echo(f"{Path(str(src)).name}: {info['frames']} frames, {info['scored']} scored, "
             f"{describe(d for r in frames for d in r.detections)} ({info['seconds']:.1f} s)")
    if not results and not videos:
        raise DataError(f"none of the {len(sources)} inputs could be read (first error: {failures[0]})")
    write_outputs(run, results, plan.model_classes, plan.arch, config, failures, videos)
    total = time.perf_counter() - t_start
    n_det = sum(len(r.detections) for r in results)
    echo(f"{len(results)} images{' and video frames' if videos else ''}, {n_det} detections, "
         f"{total / max(len(results), 1):.2f} s per image" + (f", {len(failures)} inputs skipped" if failures else ""))
    echo(f"results saved to {run}")
    return results


# --------------------------------------------------------------------------- per-image parts of a run

PLAN_FORMAT = "rcnn-detect-plan-v1"
PART_FORMAT = "rcnn-detect-part-v1"


@dataclass
class RunPlan:
    """What a detection run is: its model, settings and inputs (``parts/plan.json``), so that shards can
    check they run the same thing and ``--merge`` can finish it. ``config`` is ``asdict(DetectConfig)``."""

    model_key: str
    model: str | None  # the model folder, resolved (None: built in memory)
    inputs: list[str]  # resolved paths, in input order
    names: list[str]  # output names, one per input
    config: dict[str, Any]
    save_images: bool
    save_xml: bool
    save_txt: bool
    save_conf: bool
    save_crop: bool
    proposals: str | None
    model_classes: list[str]
    arch: str

    def digest(self) -> str:
        """Everything an image's outputs depend on, but the image: a part is reused only under this key."""
        return digest(PLAN_FORMAT, {k: v for k, v in asdict(self).items() if k not in ("inputs", "names")})

    def key(self, index: int, name: str, image_sha1: str) -> str:
        return digest(self.digest(), self.inputs[index], index, name, image_sha1)

    def detect_config(self) -> DetectConfig:
        c = dict(self.config)
        return DetectConfig(**{**c, "propose": ProposeConfig(**c["propose"]) if c.get("propose") else None})

    def files(self, run: Path) -> RunFiles:
        return RunFiles(run, self.model_classes, self.save_xml, self.save_txt, self.save_conf, self.save_crop)

    def save(self, run: Path, replace_other: bool) -> None:
        """Write ``run/parts/plan.json``; unless ``replace_other``, refuse a run folder that holds another plan.

        Raises:
            DataError: ``run`` holds shards of another model, settings or inputs.
        """
        path = run / "parts" / "plan.json"
        if not replace_other and path.exists():
            try:
                old = RunPlan.load(run)
            except DataError:
                old = None
            if old is not None and (old.digest(), old.inputs, old.names) != (self.digest(), self.inputs, self.names):
                raise DataError(f"{run} holds detection shards of another model, settings or inputs; "
                                "choose another --out (or run without --shard to replace them)")
        write_json(path, {"format": PLAN_FORMAT, **asdict(self)})

    @classmethod
    def load(cls, run: Path) -> RunPlan:
        path = run / "parts" / "plan.json"
        if not path.is_file():
            raise DataError(f"{run} holds no detection shards (no {path}); run `rcnn detect --shard K/N --out {run}` first")
        d = read_json(path, "detection plan")
        try:
            if d.pop("format") != PLAN_FORMAT:
                raise ValueError("unknown format")
            plan = cls(**d)
            plan.detect_config()
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a detection plan written by this rcnn ({e})") from None
        return plan


def model_key(model: LoadedModel) -> str:
    """The identity of a model: its folder's config and weights, or (built in memory) this very object."""
    if model.folder is None:
        return f"memory-{id(model)}-{time.time()}"
    return digest([file_digest(f) for f in sorted(model.folder.glob("*")) if f.suffix in (".json", ".pt") and f.is_file()])


def _image_sha(path: Path) -> str:
    try:
        return file_digest(path)
    except DataError:
        return ""  # unreadable: detected (and reported) as a failure


def read_part(run: Path, name: str) -> dict[str, Any] | None:
    """``run/parts/<name>.json``, or None when missing or unreadable."""
    try:
        d = json.loads((run / "parts" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("format") == PART_FORMAT else None


def _part_files_exist(run: Path, plan: RunPlan, part: dict[str, Any]) -> bool:
    """Whether the per-image files of a finished part are still there (a part whose files were deleted is redone)."""
    if part.get("error"):
        return True
    r = result_of(part)
    wanted = [run / f"{r.name}.jpg"] if plan.save_images else []
    wanted += [run / "labels" / f"{r.name}.xml"] if plan.save_xml else []
    wanted += [run / "labels" / f"{r.name}.txt"] if plan.save_txt else []
    wanted += [run / "crops" / folder_name(d.label) / f"{r.name}_{k}.jpg" for k, d in enumerate(r.detections, 1)] if plan.save_crop else []
    return all(w.is_file() for w in wanted)


def result_of(part: dict[str, Any]) -> ImageResult:
    d = dict(part["result"])
    return ImageResult(**{**d, "detections": [Detection(**x) for x in d["detections"]]})


def _detect_task(shared: tuple[LoadedModel, DetectConfig, ProposalSet | None, RunFiles, bool],
                 item: tuple[int, Path, str]) -> dict[str, Any]:
    """Detect one image and write its files (annotated image, labels, crops); returns its part (without key)."""
    model, config, pset, files, save_images = shared
    index, src, name = item
    part: dict[str, Any] = {"format": PART_FORMAT, "index": index, "image_sha1": _image_sha(src), "result": None, "error": None}
    try:
        image = load_rgb(src)
        boxes = pset.find(src) if pset is not None else None
    except DataError as e:
        return {**part, "error": str(e)}
    dets, secs, n = detect_image(model, image, config, boxes)
    r = ImageResult(str(src.resolve()), image.shape[1], image.shape[0], dets, secs, n, name)
    if save_images:
        write_jpeg(files.run / f"{name}.jpg", draw_detections(image, [d for d in dets if d.score >= config.draw_threshold], model.classes))
    files.write(r, image)
    return {**part, "result": asdict(r)}


def describe(dets: Any) -> str:
    """"disc 2, square 1" (or "no detections") of some detections."""
    counts = Counter(d.label for d in dets)
    return ", ".join(f"{k} {c}" for k, c in counts.items()) or "no detections"
