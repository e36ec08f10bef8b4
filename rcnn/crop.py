"""Stage 3: label every proposal by IoU with the ground truth and build the region training set.

Each image's kept regions are warped to ``size`` x ``size`` with ``context`` pixels
of surround (R-CNN used 16) by :func:`torchvision.ops.roi_align`, encoded (JPEG by
default) and stored in one shard per image (``shards/<id>.npz``: the encoded bytes
with their offsets, boxes, labels, IoUs and regression targets; numeric arrays
only, no pickle). ``index.csv`` lists every region, ``meta.json`` holds the class
names, counts and inverse-frequency class weights that ``rcnn train`` uses.
"""

from __future__ import annotations

import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align

from .boxes import box_iou, clip_boxes, encode, expand_for_context
from .errors import DataError
from .io import digest, load_rgb, output_dir, output_subdir, print_err, write_atomic, write_csv, write_json
from .parse import Annotation, Dataset
from .records import check_names, safe_child
from .propose import ProposalSet, check_proposals
from .runner import Outcome, Stage
from .scale import Shard, import_ray, shard_name, shard_of

BACKGROUND = "background"
# Regions are warped from a copy whose long side is at most this: crops are a few hundred pixels,
# and it caps the float copy of a huge image at 4096 * 4096 * 12 bytes (201 MB).
MAX_WARP_SIDE = 4096
CODECS = ("jpeg", "png")
IGNORE = -1


@dataclass
class CropConfig:
    """How regions are labelled, sampled and stored."""

    pos_iou: float = 0.5  # object when IoU with a ground-truth box >= this (the reference pipeline's 0.5)
    neg_iou: float = 0.5  # background when the best IoU < this; in between: ignored
    neg_per_image: int = 64  # background regions sampled per image (every positive is kept); -1 keeps all
    # Share of those drawn from the backgrounds that overlap an object at IoU >= hard_iou (a head, two
    # animals at once), as R-CNN's negatives did; the rest at random. 0 = all at random (the reference's way).
    hard_fraction: float = 0.5
    hard_iou: float = 0.1
    # Backgrounds per image kept aside, beyond neg_per_image, for hard-negative mining (R-CNN §2.3,
    # ``rcnn train --mining-rounds``): drawn at random from those with IoU < mine_iou (R-CNN's negatives:
    # < 0.3), never trained on until the classifier scores them among the highest of their image. 0 = none.
    mine_pool: int = 0
    mine_iou: float = 0.3
    size: int = 224  # warped crop side in pixels
    context: int = 16  # pixels of surrounding image kept around the box at that size (R-CNN: 16)
    codec: str = "jpeg"  # "jpeg" (small, quality 95) or "png" (lossless)
    quality: int = 95  # JPEG quality
    include_gt: bool = True  # ground-truth boxes themselves are positives too
    seed: int = 0  # background sampling seed

    def __post_init__(self) -> None:
        if self.mine_pool < 0 or not 0.0 <= self.mine_iou <= self.neg_iou:
            raise ValueError(f"need mine_pool >= 0 and 0 <= mine_iou <= neg_iou, got mine_pool={self.mine_pool}, mine_iou={self.mine_iou}")
        if not 0.0 <= self.hard_fraction <= 1.0 or not 0.0 <= self.hard_iou <= 1.0:
            raise ValueError(f"need hard_fraction and hard_iou in [0, 1], got {self.hard_fraction}, {self.hard_iou}")
        if not 0.0 < self.pos_iou <= 1.0 or not 0.0 <= self.neg_iou <= self.pos_iou:
            raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={self.neg_iou}, pos_iou={self.pos_iou}")
        if self.codec not in CODECS:
            raise ValueError(f"'codec={self.codec}' is invalid; valid codecs are {', '.join(CODECS)}")
        if self.size < 8 or not 0 <= 2 * self.context < self.size:
            raise ValueError(f"'size={self.size}', 'context={self.context}' are invalid; need size >= 8 and 0 <= context < size / 2")


def label_regions(
    proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, pos_iou: float, neg_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label each proposal by its best-overlapping ground-truth box.

    Args:
        proposals (ndarray[N, 4]), gt_boxes (ndarray[G, 4]): (x1, y1, x2, y2) in pixels.
        gt_labels (ndarray[G] int): class ids, 1-based (0 is background).

    Returns:
        labels (ndarray[N] int64): the matched class id when IoU >= ``pos_iou``, 0 (background)
        when IoU < ``neg_iou``, -1 (ignore) in between; ious (ndarray[N] float32): the best IoU;
        matched (ndarray[N] int64): index of the best ground-truth box, -1 when there is none.
    """
    n = len(proposals)
    if n == 0 or len(gt_boxes) == 0:
        return np.zeros(n, np.int64), np.zeros(n, np.float32), np.full(n, -1, np.int64)
    iou = box_iou(proposals, gt_boxes)  # (N, G)
    matched = iou.argmax(axis=1)
    best = iou[np.arange(n), matched]
    labels = np.where(best >= pos_iou, np.asarray(gt_labels, np.int64)[matched], IGNORE)
    labels[best < neg_iou] = 0
    return labels.astype(np.int64), best.astype(np.float32), np.where(best > 0, matched, -1).astype(np.int64)


def select_regions(labels: np.ndarray, neg_per_image: int, rng: np.random.Generator, ious: np.ndarray | None = None,
                   hard_fraction: float = 0.0, hard_iou: float = 0.1) -> np.ndarray:
    """Indices to keep, in order: every positive and up to ``neg_per_image`` backgrounds (-1: all).

    Up to ``hard_fraction`` of the backgrounds are drawn from those whose IoU (``ious``) with an
    object is at least ``hard_iou`` (partial overlaps), the rest from all the others, at random.
    """
    pos = np.flatnonzero(labels > 0)
    neg = np.flatnonzero(labels == 0)
    if 0 <= neg_per_image < len(neg):
        hard = neg[ious[neg] >= hard_iou] if ious is not None and hard_fraction > 0 else neg[:0]
        hard = rng.choice(hard, size=min(len(hard), round(hard_fraction * neg_per_image)), replace=False)
        rest = np.setdiff1d(neg, hard)
        neg = np.concatenate([hard, rng.choice(rest, size=neg_per_image - len(hard), replace=False)])
    return np.sort(np.concatenate([pos, neg]))


def select_pool(labels: np.ndarray, ious: np.ndarray, keep: np.ndarray, n: int, max_iou: float,
                rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` backgrounds not in ``keep`` whose IoU is below ``max_iou``, at random, sorted (the mining pool)."""
    free = np.flatnonzero((labels == 0) & (ious < max_iou))
    free = free[~np.isin(free, keep)]
    return np.sort(rng.choice(free, size=min(n, len(free)), replace=False)) if n > 0 else free[:0]


def warp_regions(image: np.ndarray, boxes: np.ndarray, size: int, context: int, chunk: int = 64) -> np.ndarray:
    """Warp each box (grown by ``context``, clipped to the image) to ``size`` x ``size``.

    Uses :func:`torchvision.ops.roi_align` with adaptive sampling, so large boxes are
    area-averaged rather than aliased. Images larger than :data:`MAX_WARP_SIDE` are
    area-downscaled first, which bounds memory and changes crops by rounding only. The same function prepares crops at test time.

    Args:
        image (ndarray[H, W, 3] uint8): RGB.
        boxes (ndarray[N, 4]): (x1, y1, x2, y2) in pixels.

    Returns:
        ndarray[N, size, size, 3] uint8.
    """
    if len(boxes) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    h, w = image.shape[:2]
    scale = min(1.0, MAX_WARP_SIDE / max(h, w))
    if scale < 1.0:  # bound memory: the float copy below would be 12 bytes a pixel of a huge image
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        boxes = np.asarray(boxes, np.float32) * np.float32(scale)
    grown = clip_boxes(expand_for_context(boxes, size, context), w, h)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # once per image, not per chunk
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for s in range(0, len(boxes), chunk):
        b = torch.from_numpy(grown[s : s + chunk])
        rois = torch.cat([torch.zeros(len(b), 1), b], dim=1)
        crops = roi_align(img, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        out[s : s + chunk] = crops.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def encode_crops(crops: np.ndarray, codec: str = "jpeg", quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    """Encode RGB crops; returns (all bytes as uint8[B], offsets int64[N + 1])."""
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if codec == "jpeg" else (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3])
    chunks = []
    for c in crops:
        ok, buf = cv2.imencode(ext, c[:, :, ::-1], params)
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 HxWx3
            raise RuntimeError("OpenCV failed to encode a crop")
        chunks.append(buf.ravel())
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return data, offsets


def decode_crop(data: np.ndarray) -> np.ndarray:
    """Decode one encoded crop to RGB uint8[H, W, 3]."""
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError("a stored crop could not be decoded (corrupt shard)")
    return img[:, :, ::-1]


def class_weights(counts: dict[str, int]) -> dict[str, float]:
    """Inverse-frequency weights n_samples / (n_classes * count_c), as scikit-learn's "balanced".

    Classes with no sample get weight 0 (nothing to weigh).
    """
    total = sum(counts.values())
    present = [c for c, n in counts.items() if n > 0]
    return {c: (round(total / (len(present) * n), 6) if n > 0 else 0.0) for c, n in counts.items()}


# --------------------------------------------------------------------------- dataset


def crop_image(ann: Annotation, proposals: np.ndarray, classes: list[str], config: CropConfig) -> dict[str, np.ndarray]:
    """Label, sample, warp and encode the regions of one image.

    Returns:
        Arrays of one shard: ``data``, ``offsets``, ``boxes``, ``labels`` (class ids, 0 background),
        ``ious``, ``targets`` (dx, dy, dw, dh; zeros for background), ``pool`` (bool: kept aside for
        hard-negative mining, ``config.mine_pool`` of them, last) and ``n_ignored``.
    """
    gt = ann.boxes()
    gt_labels = np.array([classes.index(l) for l in ann.labels()], np.int64)  # classes[0] is background
    boxes = np.concatenate([gt, proposals]) if config.include_gt and len(gt) else proposals
    labels, ious, matched = label_regions(boxes, gt, gt_labels, config.pos_iou, config.neg_iou)
    rng = np.random.default_rng([config.seed, zlib.crc32(ann.id.encode())])
    keep = select_regions(labels, config.neg_per_image, rng, ious, config.hard_fraction, config.hard_iou)
    pool = select_pool(labels, ious, keep, config.mine_pool, config.mine_iou, rng)
    n_ignored = int((labels == IGNORE).sum())
    n_unsampled = int((labels == 0).sum()) - int((labels[keep] == 0).sum()) - len(pool)
    in_pool = np.r_[np.zeros(len(keep), bool), np.ones(len(pool), bool)]
    keep = np.concatenate([keep, pool])
    boxes, labels, ious, matched = boxes[keep], labels[keep], ious[keep], matched[keep]
    targets = np.zeros((len(keep), 4), np.float32)
    pos = labels > 0
    if pos.any():
        targets[pos] = encode(boxes[pos], gt[matched[pos]])
    crops = warp_regions(load_rgb(ann.path), boxes, config.size, config.context)
    data, offsets = encode_crops(crops, config.codec, config.quality)
    return {
        "data": data,
        "offsets": offsets,
        "boxes": boxes.astype(np.float32),
        "labels": labels,
        "ious": ious,
        "targets": targets,
        "pool": in_pool,
        "n_ignored": np.array(n_ignored),  # proposals between neg_iou and pos_iou, not kept
        "n_unsampled": np.array(n_unsampled),  # background proposals left out by sampling
    }


@dataclass
class CropItem:
    """One image to crop: its annotation, its proposals and the key its shard is stored under."""

    ann: Annotation
    proposals: np.ndarray  # [N, 4] float32, (x1, y1, x2, y2) in pixels
    key: str  # :func:`_shard_key`


def _crop_task(shared: tuple[list[str], CropConfig], item: CropItem) -> Outcome[dict[str, np.ndarray]]:
    """One image's shard arrays (:func:`crop_image`), or the error of an image that cannot be read."""
    classes, config = shared
    try:
        return Outcome(crop_image(item.ann, item.proposals, classes, config))
    except DataError as e:
        return Outcome(None, str(e))


def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomic(path, writer)


def load_shard(path: str | Path) -> dict[str, np.ndarray]:
    """Read one shard written by :func:`crop_dataset` (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"crop shard {path} is missing (re-run `rcnn crop`)") from None
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"crop shard {path} is corrupt: {e}") from None


def _shard_key(ann: Annotation, image_sha: str, pset: ProposalSet, classes: list[str], config: CropConfig) -> str:
    """Everything a shard is computed from: the annotation, the image bytes, the proposals and the settings."""
    record = {"path": ann.path, "width": ann.width, "height": ann.height, "objects": [asdict(o) for o in ann.objects]}
    return digest("rcnn-crops-v2", record, image_sha, pset.digest(ann.id), asdict(config), classes)


def _stored_key(path: Path) -> str | None:
    """The key a shard was written with (read alone, without the crops), or None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["key"]) if "key" in z.files else None
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile):
        return None


def crop_dataset(
    dataset: Dataset,
    proposals_dir: str | Path,
    out: str | Path,
    config: CropConfig | None = None,
    split: str = "train",
    imagefolder: bool = False,
    progress: bool = True,
    warn: Callable[[str], Any] = print_err,
    shard: Shard | None = None,
    ray: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Build the region training set of ``split`` into ``out``; resumable.

    A shard is reused only when its key (annotation, image bytes, proposals, settings and
    class list) is unchanged; an image that cannot be read is reported through ``warn`` and left out.

    Args:
        shard: (k, n): crop only shard k of n of the images (:func:`rcnn.scale.shard_of`, by path) and write
            ``report-shard-k-of-n.json``, not the index: shards may run at once into one ``out``. A run without
            ``shard`` crops what no shard did and writes ``index.csv``, ``meta.json`` and ``report.json``.
        ray: crop the images as Ray tasks on this cluster (``auto``, an address, or ``local``).
        workers: processes without Ray (1: in this process).

    Returns:
        The report (also ``out/report.json``): kept regions per class, class weights, sizes, seconds.

    Raises:
        DataError: ``out`` holds files rcnn did not write, proposals are missing, or no image could be used.
    """
    config = config or CropConfig()
    if ray is not None:
        import_ray()  # fail early, with the fix, when Ray is missing
    pset = ProposalSet.load(proposals_dir)
    images = shard_of(dataset.split(split), shard, key=lambda a: a.path)
    if not images:
        raise DataError(f"no images in split '{split}'" + (f" for shard {shard[0]}/{shard[1]}" if shard else ""))
    check_names([a.id for a in images], "image id")  # before any write (a Dataset built in memory was never checked)
    image_sha = check_proposals(pset, images, split)
    classes = [BACKGROUND] + check_names(list(dataset.classes), "class name")
    out = output_dir(out, "crops")
    (out / "meta.json").unlink(missing_ok=True)  # ours; until rewritten below, train refuses a half-rebuilt set

    start = time.perf_counter()
    run = _CropRun(output_subdir(out, "shards"), warn)
    todo = run.stage().plan(run.items(images, lambda a: _shard_key(a, image_sha[a.id], pset, classes, config), pset)).todo
    reused = len(run.stored)
    run.stage().run((classes, config), todo, len(images) - len(todo), workers, ray, progress)
    used = [a for a in images if a.id in run.stored]  # in split order, whatever order the tasks finished in
    if not used:
        raise DataError(f"no region could be cropped from any of the {len(images)} {split} images (first error: {run.failures[0]})")
    if shard is not None:
        report = {"format": "rcnn-crops-shard-report-v1", "shard": list(shard), "images": len(used),
                  "computed": len(used) - reused, "reused_images": reused, "failed": run.failures,
                  "seconds": round(time.perf_counter() - start, 2), "config": asdict(config)}
        write_json(out / f"report-{shard_name(shard)}.json", report)
        return report
    return _assemble(out, used, [run.stored[a.id] for a in used], classes, split, config, pset, imagefolder,
                     {"start": start, "reused_images": reused, "failed": run.failures})


@dataclass
class _CropRun:
    """The bookkeeping of one crop run: the key of each image's stored shard, and the failures."""

    shards: Path  # the folder of shards/<id>.npz
    warn: Callable[[str], Any]
    stored: dict[str, str] = field(default_factory=dict)  # image id -> the key of its shard, written or reused
    failures: list[str] = field(default_factory=list)

    def stage(self) -> Stage[CropItem]:
        return Stage("crop", _crop_task, self.collect, lambda item, e: self.failed(item.ann, e), self.valid)

    def items(self, images: list[Annotation], key: Callable[[Annotation], str], pset: ProposalSet) -> list[CropItem]:
        """The images with their keys, and their proposals where the stored shard is not valid (those to crop);
        an image whose key or proposals cannot be read is a failure (reported here, in image order)."""
        items = []
        for a in images:
            try:
                k = key(a)
                items.append(CropItem(a, np.zeros((0, 4), np.float32), k) if self.valid_key(a, k)
                             else CropItem(a, pset.boxes(a.id), k))
            except DataError as e:
                self.failed(a, str(e))
        return items

    def valid_key(self, a: Annotation, key: str) -> bool:
        """Whether ``shards/<id>.npz`` was stored under ``key``; if so it is recorded as reused."""
        if _stored_key(self.shards / f"{a.id}.npz") != key:
            return False
        self.stored[a.id] = key
        return True

    def valid(self, item: CropItem) -> bool:  # checked by valid_key as the item was made
        return self.stored.get(item.ann.id) == item.key

    def collect(self, item: CropItem, result: Outcome[dict[str, np.ndarray]]) -> None:
        if result.value is None:
            self.failed(item.ann, result.error)
            return
        _write_shard(safe_child(self.shards, item.ann.id, ".npz", "image id"), {**result.value, "key": np.array(item.key)})
        self.stored[item.ann.id] = item.key

    def failed(self, a: Annotation, err: str) -> None:
        self.failures.append(err)
        self.warn(f"error: {a.id}: {err}; skipped")


def _assemble(out: Path, used: list[Annotation], keys: list[str], classes: list[str], split: str, config: CropConfig,
              pset: ProposalSet, imagefolder: bool, run_info: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.csv``, ``meta.json`` (and the image folder) from the shards of ``used``; returns the report.

    ``run_info`` holds the run's ``start`` (:func:`time.perf_counter`) and the report's ``reused_images`` and ``failed``.
    """
    rows, kept, counts, shard_bytes = _index_rows(out, used, classes)
    weights = class_weights(kept)
    write_csv(out / "index.csv", ["image", "k", "x1", "y1", "x2", "y2", "label", "class_id", "iou", "dx", "dy", "dw", "dh", "pool"], rows)
    if imagefolder:
        _write_imagefolder(out, used, classes, config.codec)
    meta = {
        "format": "rcnn-crops-v1",
        "classes": classes,
        "counts": kept,
        "class_weights": weights,
        "mining_pool": counts["pool"],  # backgrounds kept aside for hard-negative mining (not in counts)
        "images": [a.id for a in used],
        "split": split,
        "config": asdict(config),
        "propose": pset.config.to_json(),
        "shard_keys": keys,  # each shard's key, checked when the set is loaded
        "content_key": digest(keys),  # changes whenever any shard does: the key of caches built on this set
    }
    write_json(out / "meta.json", meta)
    report = {
        "format": "rcnn-crops-report-v1",
        "images": len(used),
        "regions": len(rows),
        "kept": kept,
        "mining_pool": counts["pool"],
        "ignored": counts["ignored"],
        "background_not_sampled": counts["unsampled"],
        "class_weights": weights,
        "bytes": shard_bytes,
        "seconds": round(time.perf_counter() - run_info["start"], 2),
        "reused_images": run_info["reused_images"],
        "failed": run_info["failed"],
        "config": asdict(config),
    }
    write_json(out / "report.json", report)
    return report


def _index_rows(out: Path, used: list[Annotation], classes: list[str]) -> tuple[list[list[Any]], dict[str, int], dict[str, int], int]:
    """The rows of ``index.csv``, the kept regions per class, the ignored / unsampled / pooled counts and the shards' bytes."""
    rows = []
    kept = {c: 0 for c in classes}
    counts = {"ignored": 0, "unsampled": 0, "pool": 0}
    shard_bytes = 0
    for a in used:
        path = out / "shards" / f"{a.id}.npz"
        s = load_shard(path)
        shard_bytes += path.stat().st_size
        counts["ignored"] += int(s["n_ignored"])
        counts["unsampled"] += int(s["n_unsampled"])
        pool = s["pool"] if "pool" in s else np.zeros(len(s["labels"]), bool)
        counts["pool"] += int(pool.sum())
        for k in range(len(s["labels"])):
            label = classes[int(s["labels"][k])]
            kept[label] += int(not pool[k])  # the mining pool is not part of the training set's counts
            rows.append([a.id, k, *np.round(s["boxes"][k], 2).tolist(), label, int(s["labels"][k]),
                         round(float(s["ious"][k]), 4), *np.round(s["targets"][k], 5).tolist(), int(pool[k])])
    return rows, kept, counts, shard_bytes


def _write_imagefolder(out: Path, images: list[Annotation], classes: list[str], codec: str) -> None:
    ext = ".jpg" if codec == "jpeg" else ".png"
    root = output_subdir(out, "imagefolder")
    for old in root.glob("*/*_[0-9][0-9][0-9][0-9][0-9].*"):  # a previous run's files (this folder is ours)
        old.unlink()
    folders = [safe_child(root, c, "", "class name") for c in classes]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for a in images:
        s = load_shard(out / "shards" / f"{a.id}.npz")
        pool = s["pool"] if "pool" in s else np.zeros(len(s["labels"]), bool)
        for k, label in enumerate(s["labels"]):
            if pool[k]:
                continue  # the mining pool is not part of the training set
            blob = s["data"][s["offsets"][k] : s["offsets"][k + 1]].tobytes()
            safe_child(folders[int(label)], f"{a.id}_{k:05d}", ext, "image id").write_bytes(blob)


def format_report(report: dict[str, Any]) -> str:
    if "shard" in report:
        k, n = report["shard"]
        return (f"shard {k}/{n}: {report['images']} images ({report['computed']} cropped, {report['reused_images']} reused, "
                f"{len(report['failed'])} failed), {report['seconds']} s; a run without --shard writes the index")
    lines = [
        f"{report['regions']} regions from {report['images']} images ({report['ignored']} ignored between the IoU thresholds, {report['background_not_sampled']} background not sampled), "
        f"{report['bytes'] / 1e6:.1f} MB, {report['seconds']} s",
        f"{'class':<20}{'kept':>8}{'weight':>10}",
    ]
    for c, n in report["kept"].items():
        lines.append(f"{c:<20}{n:>8}{report['class_weights'][c]:>10.3f}")
    return "\n".join(lines)
