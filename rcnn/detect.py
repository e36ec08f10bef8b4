"""Stage 5: detect objects in new images.

For each image: selective search (the settings the model was trained with, unless
overridden) → the first ``score_proposals`` regions warped exactly as in training →
class probabilities in batches → per-class threshold and NMS → at most
``max_detections`` boxes. Results go into a run folder: annotated images,
``detections.json`` (COCO results format), ``detections.csv`` and optional VOC XML.
"""

from __future__ import annotations

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

from .boxes import batched_nms, box_iou, clip_boxes, decode, remove_small_boxes
from .errors import DataError
from .io import find_images, load_rgb, new_output_dir, output_dir, print_err, write_atomic, write_csv, write_json, write_text
from .model import LoadedModel
from .propose import ProposalSet, ProposeConfig, selective_search


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

    def __post_init__(self) -> None:
        for name in ("threshold", "vote_iou", "draw_threshold"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"'{name}={getattr(self, name)}' is invalid; it must lie in [0, 1]")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"'nms_iou={self.nms_iou}' is invalid; it must lie in (0, 1]")
        if self.max_detections < 1 or self.score_proposals < 0 or self.forward_batch < 0:
            raise ValueError(f"need max_detections >= 1, score_proposals >= 0 and forward_batch >= 0; got "
                             f"{self.max_detections}, {self.score_proposals}, {self.forward_batch}")


    def proposals_for(self, arch: str) -> int:
        """How many proposals of each image a model of ``arch`` scores."""
        return self.score_proposals or SCORED_PROPOSALS[arch]

    def resolved(self, arch: str) -> DetectConfig:
        """This config with the per-architecture settings (threshold, score_proposals) made concrete."""
        return replace(self, threshold=SCORE_THRESHOLDS[arch] if self.threshold is None else self.threshold,
                       score_proposals=self.proposals_for(arch))


SCORED_PROPOSALS = {"rcnn": 500, "fast": 2000}  # score_proposals=0: per architecture
SCORE_THRESHOLDS = {"rcnn": 0.3, "fast": 0.05}  # threshold=None: per architecture


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
    rows, cols = np.nonzero(fg >= config.threshold)
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

    ``image_id`` numbers the images in order; ``file_name`` names the image so that
    ``rcnn evaluate`` can match it to the annotations; ``category_id`` is the 1-based class index.
    """
    out = []
    for i, r in enumerate(results, start=1):
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            out.append({"image_id": i, "file_name": r.path, "category_id": classes.index(d.label), "category": d.label,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": d.score})
    return out


def write_outputs(run: Path, results: list[ImageResult], model: LoadedModel, config: DetectConfig, save_xml: bool,
                  failures: list[str]) -> None:
    write_json(run / "detections.json", coco_results(results, model.classes))
    write_csv(run / "detections.csv", ["image", "label", "score", "x1", "y1", "x2", "y2"],
              ([r.path, d.label, d.score, *d.box] for r in results for d in r.detections))
    if save_xml:
        for r in results:
            write_text(run / "labels" / f"{r.name}.xml", voc_xml(r))
    times = [r.seconds["total"] for r in results]
    write_json(run / "summary.json", {
        "format": "rcnn-detect-summary-v1",
        "images": len(results),
        "detections": sum(len(r.detections) for r in results),
        "seconds_per_image": round(float(np.mean(times)), 3) if times else None,
        "failed": failures,
        "config": {**asdict(replace(config.resolved(model.arch), propose=None)),
                   "propose": asdict(config.propose or model_propose_config(model))},
        "per_image": [{"image": r.path, "output": r.name, "detections": len(r.detections), "proposals": r.n_proposals, "seconds": r.seconds} for r in results],
    })


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


def detect(model: LoadedModel, inputs: list[str] | list[Path], run: str | Path, config: DetectConfig | None = None,
           save_images: bool = True, save_xml: bool = False, proposals: str | Path | None = None,
           echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err) -> list[ImageResult]:
    """Detect objects in every image of ``inputs`` (files, folders, globs) and write the run folder.

    Every input gets its own outputs (``<name>.jpg``, ``labels/<name>.xml``, named by :func:`output_names`);
    no output may be one of the inputs, and ``run`` must be new, empty or an earlier detection run.

    Args:
        proposals: a proposals folder from ``rcnn propose`` to reuse instead of running selective search;
            an image's proposals are found by the image's bytes, not its name.
        echo: called with one line per image and for the summary; warn: with one line per skipped image.

    Raises:
        DataError: no input image, an output would replace an input, ``run`` is not ours, or no image could be read.
    """
    config = config or DetectConfig()
    paths = find_images([str(p) for p in inputs])
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    pset = ProposalSet.load(proposals) if proposals else None
    run = output_dir(run, "detect")
    names = output_names(paths)
    planned = [run / n for n in ("detections.json", "detections.csv", "summary.json")]
    planned += [run / f"{n}.jpg" for n in names] if save_images else []
    planned += [run / "labels" / f"{n}.xml" for n in names] if save_xml else []
    inputs = {_file_id(p): p for p in paths}  # one stat per input and per output, not one per pair
    for out in planned:
        if out.exists() and _file_id(out) in inputs:
            raise DataError(f"output {out} would replace the input image {inputs[_file_id(out)]}; choose another --out")
    results: list[ImageResult] = []
    failures: list[str] = []
    t_start = time.perf_counter()
    for path, name in zip(paths, names):
        try:
            image = load_rgb(path)
            boxes = pset.find(path) if pset is not None else None
        except DataError as e:
            failures.append(str(e))
            warn(f"error: {e}; skipped")
            continue
        dets, secs, n = detect_image(model, image, config, boxes)
        r = ImageResult(str(path.resolve()), image.shape[1], image.shape[0], dets, secs, n, name)
        results.append(r)
        if save_images:
            drawn = draw_detections(image, [d for d in dets if d.score >= config.draw_threshold], model.classes)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            write_atomic(run / f"{name}.jpg", lambda p, b=buf: p.write_bytes(b.tobytes()))
        del image
        counts = Counter(d.label for d in dets)
        what = ", ".join(f"{k} {c}" for c, k in counts.items()) or "no detections"
        echo(f"{path.name}: {what} ({n} proposals, {secs['total']:.2f} s)")
    if not results:
        raise DataError(f"none of the {len(paths)} images could be read (first error: {failures[0]})")
    write_outputs(run, results, model, config, save_xml, failures)
    total = time.perf_counter() - t_start
    n_det = sum(len(r.detections) for r in results)
    echo(f"{len(results)} images, {n_det} detections, {total / max(len(results), 1):.2f} s per image"
         + (f", {len(failures)} images skipped" if failures else ""))
    echo(f"results saved to {run}")
    return results
