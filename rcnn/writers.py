"""What a detection run writes: annotated images and videos, VOC XML, COCO results, YOLO labels, crops
and the run's ``detections.json`` / ``.csv`` / ``summary.json``."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lxml import etree
from torchvision.utils import draw_bounding_boxes

from .errors import DataError
from .io import new_output_dir, write_atomic, write_csv, write_json, write_text
from .results import Detection, ImageResult, VideoSummary


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
        """The chosen files of one image (RGB ``[H, W, 3]`` uint8) or scored frame and its detections."""
        if self.save_xml:
            write_text(self.run / "labels" / f"{result.name}.xml", voc_xml(result))
        if self.save_txt:
            write_text(self.run / "labels" / f"{result.name}.txt", yolo_labels(result, self.classes, self.save_conf))
        if self.save_crop:
            for k, (d, crop) in enumerate(zip(result.detections, crop_detections(image, result.detections)), start=1):
                write_jpeg(self.run / "crops" / folder_name(d.label) / f"{result.name}_{k}.jpg", crop)


def write_outputs(run: Path, results: list[ImageResult], classes: list[str], settings: dict[str, Any],
                  failures: list[str], videos: list[VideoSummary]) -> None:
    """``detections.json``, ``detections.csv`` and ``summary.json`` of a run.

    Args:
        settings: the detection settings that ran, as ``summary.json`` records them (its ``config``).
        failures: one line per input that could not be read; videos: one summary per video or camera.
    """
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
        "config": settings,
        "videos": [asdict(v) for v in videos],
        "per_image": [{"image": r.path, "output": r.name, "detections": len(r.detections), "proposals": r.n_proposals,
                       "seconds": r.seconds, **({"frame": r.frame, "time": r.time} if r.frame is not None else {})}
                      for r in results],
    })


VIDEO_CODECS = ((".mp4", "mp4v"), (".avi", "MJPG"))  # the annotated video: mp4v in .mp4, else MJPG in .avi


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
        """Append one RGB frame ``[H, W, 3]`` uint8."""
        if (rgb.shape[1], rgb.shape[0]) != self.size:  # a stream that changes size: the video keeps its first
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool) -> Path | None:
        """Finish the video: renamed into place when ``keep`` (its path is returned), else deleted (None)."""
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
