"""Stage 1: read a Pascal VOC dataset into clean, validated records.

VOC boxes are 1-based and inclusive; they are converted here, once, to the
project's convention ``(x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax)`` in
pixels, clipped to the image. Every problem is reported with the file it is in;
a bad file is skipped (or, with ``strict``, raises) and never stops the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree
from PIL import Image

from .errors import DataError
from . import io
from .io import IMAGE_EXTENSIONS, read_json, write_json

SPLITS = ("train", "test")
# Boxes may stick out of the image by this much (the 0- vs 1-based ambiguity of
# real annotation tools) before a clipping warning is worth printing.
CLIP_TOLERANCE = 1.0


@dataclass
class Object:
    """One annotated object. ``box`` is (x1, y1, x2, y2) in pixels."""

    label: str
    box: list[float]
    difficult: bool = False
    truncated: bool = False


@dataclass
class Annotation:
    """One image and its objects."""

    id: str  # the annotation file's stem, as in ImageSets split files
    path: str  # absolute path of the image
    width: int
    height: int
    split: str  # "train" or "test"
    objects: list[Object] = field(default_factory=list)
    annotation: str = ""  # absolute path of the XML file

    def boxes(self, include_difficult: bool = True) -> np.ndarray:
        """ndarray[N, 4] float32 of the object boxes."""
        objs = [o for o in self.objects if include_difficult or not o.difficult]
        return np.array([o.box for o in objs], dtype=np.float32).reshape(-1, 4)

    def labels(self, include_difficult: bool = True) -> list[str]:
        return [o.label for o in self.objects if include_difficult or not o.difficult]


@dataclass
class Problem:
    """Something wrong in one file: ``level`` is "error" (file skipped) or "warning"."""

    file: str
    message: str
    level: str = "warning"

    def __str__(self) -> str:
        return f"{self.level}: {self.file}: {self.message}"


@dataclass
class Dataset:
    """The parsed dataset: records, class names and the problems met on the way."""

    images: list[Annotation]
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    root: str = ""

    def split(self, name: str | None) -> list[Annotation]:
        """The images of one split (all of them for ``None`` or "all")."""
        if name in (None, "all"):
            return list(self.images)
        if name not in SPLITS:
            raise ValueError(f"'split={name}' is invalid; valid splits are {', '.join(SPLITS)} and all")
        return [a for a in self.images if a.split == name]

    def summary(self) -> dict[str, Any]:
        per_class: dict[str, dict[str, int]] = {c: {s: 0 for s in SPLITS} for c in self.classes}
        for a in self.images:
            for o in a.objects:
                per_class[o.label][a.split] += 1
        return {
            "images": len(self.images),
            "images_per_split": {s: sum(a.split == s for a in self.images) for s in SPLITS},
            "objects": sum(len(a.objects) for a in self.images),
            "objects_per_class": per_class,
            "images_without_objects": sum(not a.objects for a in self.images),
            "files_skipped": sum(p.level == "error" for p in self.problems),
            "warnings": sum(p.level == "warning" for p in self.problems),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "rcnn-parsed-v1",
            "root": self.root,
            "classes": self.classes,
            "summary": self.summary(),
            "images": [asdict(a) for a in self.images],
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a file written by :meth:`save` (``rcnn parse --out``)."""
        d = read_json(path, "parsed dataset")
        if not isinstance(d, dict) or "images" not in d:
            raise DataError(f"{path} is not a parsed dataset (run `rcnn parse` first)")
        try:
            images = [
                Annotation(**{**a, "objects": [Object(**o) for o in a.get("objects", [])]}) for a in d["images"]
            ]
            problems = [Problem(**p) for p in d.get("problems", [])]
        except TypeError as e:
            raise DataError(f"{path} has malformed records: {e}") from None
        classes = d.get("classes") or sorted({o.label for a in images for o in a.objects})
        return cls(images=images, classes=classes, problems=problems, root=d.get("root", ""))


# --------------------------------------------------------------------------- layout


def find_layout(root: str | Path) -> tuple[Path, Path]:
    """Find ``(annotations_dir, images_dir)`` of a VOC dataset root.

    Accepts ``Annotations/`` + ``JPEGImages/`` (VOC) or ``annotations/`` + ``images/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    for ann, img in (("Annotations", "JPEGImages"), ("annotations", "images")):
        if (root / ann).is_dir() and (root / img).is_dir():
            return root / ann, root / img
    raise DataError(
        f"{root} has no VOC layout: expected Annotations/ + JPEGImages/ or annotations/ + images/ "
        "(or pass --annotations DIR --images DIR)"
    )


def read_split_files(root: Path) -> dict[str, str] | None:
    """Map image id -> "train"/"test" from ``ImageSets/Main/*.txt``; None when there are none."""
    main = root / "ImageSets" / "Main"
    test = main / "test.txt"
    trains = [main / f for f in ("train.txt", "trainval.txt", "val.txt") if (main / f).is_file()]
    if not test.is_file() and not trains:
        return None
    ids: dict[str, str] = {}
    for f in trains:
        for line in f.read_text().split("\n"):
            if line.strip():
                ids[line.split()[0]] = "train"
    if test.is_file():
        for line in test.read_text().split("\n"):
            if line.strip():
                ids[line.split()[0]] = "test"
    return ids


def random_split(ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """A deterministic split: the same ids, fraction and seed give the same split."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"'test_fraction={test_fraction}' is invalid; it must be in [0, 1)")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    n_test = int(round(test_fraction * len(order)))
    test = {order[i] for i in perm[:n_test]}
    return {i: ("test" if i in test else "train") for i in order}


# --------------------------------------------------------------------------- XML


def _safe_parser() -> etree.XMLParser:
    # A VOC file is untrusted: no external entities, no DTD loading, no network, no huge trees.
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False, dtd_validation=False)


def _text(node: etree._Element | None, tag: str) -> str | None:
    if node is None:
        return None
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _number(node: etree._Element | None, tag: str) -> float | None:
    value = _text(node, tag)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _flag(node: etree._Element, tag: str) -> bool:
    value = _number(node, tag)
    return bool(value) if value is not None else False


def _check_image(path: Path) -> tuple[int, int]:
    """Decode the image (cheaply, at reduced scale for JPEG) to prove it is readable; return (w, h)."""
    with Image.open(path) as im:
        size = im.size
        if size[0] * size[1] > io.MAX_IMAGE_PIXELS:
            raise DataError(f"image is {size[0]}x{size[1]}, larger than {io.MAX_IMAGE_PIXELS} pixels")
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


def _resolve_image(xml_path: Path, filename: str | None, images_dir: Path, problems: list[Problem]) -> Path | None:
    if filename:
        candidate = images_dir / Path(filename).name
        if candidate.is_file():
            return candidate
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = images_dir / (xml_path.stem + ext)
        if candidate.is_file():
            if filename:
                problems.append(Problem(str(xml_path), f"<filename> '{filename}' not found; using {candidate.name}"))
            return candidate
    return None


def parse_annotation(
    xml_path: str | Path, images_dir: str | Path, classes: list[str] | None = None
) -> tuple[Annotation | None, list[Problem]]:
    """Parse one VOC XML file into an :class:`Annotation` (split left empty).

    Returns:
        (annotation or None when the file must be skipped, problems found in it).
    """
    xml_path, images_dir = Path(xml_path), Path(images_dir)
    problems: list[Problem] = []
    name = str(xml_path)

    def fail(msg: str) -> tuple[None, list[Problem]]:
        problems.append(Problem(name, msg, "error"))
        return None, problems

    try:
        tree = etree.parse(str(xml_path), _safe_parser())
    except etree.XMLSyntaxError as e:
        return fail(f"broken XML: {e.msg if hasattr(e, 'msg') else e}")
    except OSError as e:
        return fail(f"cannot read: {e}")
    if tree.docinfo.internalDTD is not None and len(list(tree.docinfo.internalDTD.iterentities())) > 0:
        return fail("XML declares entities, which are refused in annotations (possible entity attack)")
    root = tree.getroot()
    if root.tag != "annotation":
        return fail(f"root element is <{root.tag}>, not <annotation>")

    filename = _text(root, "filename")
    image_path = _resolve_image(xml_path, filename, images_dir, problems)
    if image_path is None:
        return fail(f"image not found in {images_dir} (<filename> is {filename!r})")
    try:
        width, height = _check_image(image_path)
    except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as e:
        return fail(f"corrupt or unreadable image {image_path.name}: {e}")

    size = root.find("size")
    xml_w, xml_h = _number(size, "width"), _number(size, "height")
    if size is None or not xml_w or not xml_h:
        problems.append(Problem(name, "missing <size>; read it from the image"))
    elif (int(xml_w), int(xml_h)) != (width, height):
        problems.append(Problem(name, f"<size> {int(xml_w)}x{int(xml_h)} differs from the image's {width}x{height}; using the image's"))

    objects: list[Object] = []
    for k, obj in enumerate(root.iter("object")):
        label = _text(obj, "name")
        where = f"object {k} ({label or 'unnamed'})"
        if not label:
            problems.append(Problem(name, f"{where} has no <name>; skipped"))
            continue
        if classes is not None and label not in classes:
            continue
        bb = obj.find("bndbox")
        coords = [_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if bb is None or any(c is None or not np.isfinite(c) for c in coords):
            problems.append(Problem(name, f"{where} has a missing or non-numeric <bndbox>; skipped"))
            continue
        xmin, ymin, xmax, ymax = coords  # type narrowing: all floats here
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax  # 1-based inclusive -> pixel edges
        outside = x1 < -CLIP_TOLERANCE or y1 < -CLIP_TOLERANCE or x2 > width + CLIP_TOLERANCE or y2 > height + CLIP_TOLERANCE
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 - x1 < 1.0 or y2 - y1 < 1.0:
            problems.append(Problem(name, f"{where} has a degenerate box {coords} in the {width}x{height} image; skipped"))
            continue
        if outside:
            problems.append(Problem(name, f"{where} box {coords} lies outside the {width}x{height} image; clipped"))
        objects.append(Object(label, [x1, y1, x2, y2], _flag(obj, "difficult"), _flag(obj, "truncated")))

    ann = Annotation(
        id=xml_path.stem,
        path=str(image_path.resolve()),
        width=int(width),
        height=int(height),
        split="",
        objects=objects,
        annotation=str(xml_path.resolve()),
    )
    return ann, problems


def parse_dataset(
    root: str | Path | None = None,
    *,
    annotations_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    classes: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    progress: bool = False,
) -> Dataset:
    """Parse every ``*.xml`` of a VOC dataset.

    Args:
        root: dataset folder with a standard layout (and optionally ``ImageSets/Main``).
        annotations_dir, images_dir: explicit folders, overriding the layout of ``root``.
        classes: keep only these class names (None keeps all).
        test_fraction, seed: the deterministic split used when there are no split files.
        strict: raise :class:`DataError` on the first file that must be skipped.

    Returns:
        The :class:`Dataset`, images sorted by id.
    """
    from tqdm import tqdm

    if annotations_dir is None or images_dir is None:
        if root is None:
            raise DataError("give a dataset folder, or both --annotations and --images")
        found_ann, found_img = find_layout(root)
        annotations_dir = annotations_dir or found_ann
        images_dir = images_dir or found_img
    annotations_dir, images_dir = Path(annotations_dir), Path(images_dir)
    for d in (annotations_dir, images_dir):
        if not d.is_dir():
            raise DataError(f"folder not found: {d}")
    if classes is not None:
        classes = [c.strip() for c in classes if c.strip()]
        if not classes:
            raise ValueError("'classes' is empty; give at least one class name")
    split_root = Path(root) if root is not None else annotations_dir.parent

    xml_files = sorted(annotations_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(f"no .xml annotation files in {annotations_dir}")
    images: list[Annotation] = []
    problems: list[Problem] = []
    for xml in tqdm(xml_files, desc="parse", unit="file", disable=None if progress else True, leave=False):
        ann, probs = parse_annotation(xml, images_dir, classes)
        problems += probs
        if strict and any(p.level == "error" for p in probs):
            raise DataError(str(next(p for p in probs if p.level == "error")))
        if ann is not None:
            images.append(ann)

    split_ids = read_split_files(split_root)
    if split_ids is None:
        split_ids = random_split([a.id for a in images], test_fraction, seed)
    kept = []
    for a in images:
        if a.id in split_ids:
            a.split = split_ids[a.id]
            kept.append(a)
        else:
            problems.append(Problem(a.annotation, "not listed in any ImageSets/Main split file; left out"))
    found_classes = sorted({o.label for a in kept for o in a.objects})
    out_classes = [c for c in classes if c in found_classes] if classes is not None else found_classes
    if classes is not None:
        for c in classes:
            if c not in found_classes:
                problems.append(Problem(str(annotations_dir), f"class '{c}' asked for but not found in any file"))
    return Dataset(images=kept, classes=out_classes, problems=problems, root=str(split_root.resolve()))


def format_summary(ds: Dataset) -> str:
    """A short human-readable summary table."""
    s = ds.summary()
    per_split = s["images_per_split"]
    lines = [
        f"{s['images']} images ({per_split['train']} train / {per_split['test']} test), "
        f"{s['objects']} objects in {len(ds.classes)} classes, {s['images_without_objects']} images without objects",
        f"{'class':<20}{'train':>8}{'test':>8}",
    ]
    for c, counts in s["objects_per_class"].items():
        lines.append(f"{c:<20}{counts['train']:>8}{counts['test']:>8}")
    reasons = Counter(p.level for p in ds.problems)
    lines.append(f"{s['files_skipped']} files skipped, {reasons.get('warning', 0)} warnings")
    return "\n".join(lines)
