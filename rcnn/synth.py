"""A small synthetic VOC dataset: shapes on textured backgrounds, with exact boxes.

Used by the unit tests and by the built-in demo; it needs no download.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from lxml import etree

from .io import output_dir, write_atomic, write_text

CLASSES = ("disc", "square")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Smooth colour field plus blurred noise: textured enough that selective search
    # finds many regions, plain enough that the shapes stay the objects.
    small = rng.integers(40, 200, size=(4, 4, 3)).astype(np.uint8)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 40, size=(height, width, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, label: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    edge = tuple(255 - c for c in color)
    if label == "disc":
        centre = ((x1 + x2) // 2, (y1 + y2) // 2)
        axes = ((x2 - x1) // 2, (y2 - y1) // 2)
        cv2.ellipse(img, centre, axes, 0, 0, 360, color, -1, cv2.LINE_AA)
        cv2.ellipse(img, centre, (max(axes[0] // 2, 1), max(axes[1] // 2, 1)), 0, 0, 360, edge, 3, cv2.LINE_AA)
    else:
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, -1)
        for y in range(y1 + 4, y2 - 2, 8):
            cv2.line(img, (x1 + 2, y), (x2 - 3, y), edge, 2)


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """One synthetic RGB scene ``[height, width, 3]`` uint8 with a disc and a square (no annotation)."""
    rng = np.random.default_rng(seed)
    img = _background(rng, height, width)
    _draw(img, "disc", (width // 5, height // 5, width // 2, height // 2), rng)
    _draw(img, "square", (width // 2, height // 2, width - 10, height - 10), rng)
    return img


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    root = etree.Element("annotation")
    etree.SubElement(root, "filename").text = filename
    size = etree.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        etree.SubElement(size, tag).text = str(v)
    for label, (x1, y1, x2, y2) in objects:
        obj = etree.SubElement(root, "object")
        etree.SubElement(obj, "name").text = label
        etree.SubElement(obj, "difficult").text = "0"
        bb = etree.SubElement(obj, "bndbox")
        # VOC is 1-based inclusive: pixel edges (x1, x2) become (x1 + 1, x2).
        for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            etree.SubElement(bb, tag).text = str(v)
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def make_dataset(
    out: str | Path,
    images: int = 40,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    max_objects: int = 3,
    test_fraction: float = 0.25,
) -> Path:
    """Write a VOC dataset (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main``) to ``out``.

    Each image holds 0..``max_objects`` non-overlapping discs and squares of 28..110 px.

    Returns:
        The dataset folder.
    """
    if images < 1:
        raise ValueError(f"'images={images}' is invalid; it must be at least 1")
    out = Path(out)
    out = output_dir(out, "synth")
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(images):
        img = _background(rng, height, width)
        objects: list[tuple[str, tuple[int, int, int, int]]] = []
        # every image but one in ten has at least one object
        n = int(rng.integers(1, max_objects + 1)) if i % 10 else 0
        for _ in range(50 * n):
            if len(objects) == n:
                break
            s = int(rng.integers(28, min(110, height // 2)))
            w = int(s * rng.uniform(0.8, 1.25))
            x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - s))
            box = (x1, y1, x1 + w, y1 + s)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for _, b in objects):
                objects.append((CLASSES[int(rng.integers(0, len(CLASSES)))], box))
        for label, box in objects:
            _draw(img, label, box, rng)
        name = f"synth_{i:04d}"
        ids.append(name)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        write_atomic(out / "JPEGImages" / f"{name}.jpg", lambda p, b=buf: p.write_bytes(b.tobytes()))
        write_text(out / "Annotations" / f"{name}.xml", _voc_xml(f"{name}.jpg", width, height, objects))
    n_test = max(1, int(round(test_fraction * images))) if images > 1 else 0
    write_text(out / "ImageSets" / "Main" / "train.txt", "\n".join(ids[: images - n_test]) + "\n")
    write_text(out / "ImageSets" / "Main" / "test.txt", "\n".join(ids[images - n_test :]) + "\n")
    return out
