"""Stage 2: selective-search region proposals, reproducible, parallel and cached.

OpenCV ranks the regions of selective search with C ``rand()``, so the same image
gives the same set of boxes in a different order on every run, and any cap on
their number changes from run to run. ``cv2.setRNGSeed`` does not reach that
generator; seeding libc's ``srand`` right before each call does.

Proposals are stored one ``.npy`` per image (float32[N, 4], original image
pixels, SS rank order), never one file per region; a re-run reuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import DataError, MissingDependencyError
from .io import atomic_path, load_rgb, read_json, write_json
from .parse import Annotation, Dataset

MODES = ("fast", "quality")


@dataclass
class ProposeConfig:
    """Selective-search settings; saved with the proposals and in the model folder."""

    mode: str = "fast"  # "fast" or "quality"; on raccoon both find every object at IoU 0.5
    # Run SS on a copy whose long side is at most this (0 = full size). Measured on 40 raccoon
    # images: fast/300 px takes 0.17 s/image against 2.9 s for quality/full size, with the same
    # recall@0.5 (1.0) and a higher recall@0.7 (0.93 vs 0.88): big segments are found better small.
    max_side: int = 300
    max_proposals: int = 2000  # keep at most this many boxes per image, in SS rank order
    min_size: int = 10  # drop boxes narrower or shorter than this, in original-image pixels
    seed: int = 0  # seeds libc's rand(), which OpenCV uses to rank regions: same seed, same order

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"'mode={self.mode}' is invalid; valid modes are {', '.join(MODES)}")
        if self.max_side < 0 or self.max_proposals < 1 or self.min_size < 0:
            raise ValueError(
                f"invalid proposal settings max_side={self.max_side} (>= 0), "
                f"max_proposals={self.max_proposals} (>= 1), min_size={self.min_size} (>= 0)"
            )

    def key(self) -> str:
        return hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


def _ximgproc() -> Any:
    if not hasattr(cv2, "ximgproc"):
        raise MissingDependencyError(
            "OpenCV's contrib module cv2.ximgproc (selective search) is missing: the plain opencv-python "
            "package is installed. Fix: pip uninstall -y opencv-python opencv-python-headless && "
            "pip install opencv-contrib-python-headless"
        )
    return cv2.ximgproc


_LIBC: Any = None


def _seed_libc(seed: int) -> None:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
    _LIBC.srand(ctypes.c_uint(seed))


def selective_search(image: np.ndarray, config: ProposeConfig | None = None) -> np.ndarray:
    """Selective-search proposals of one image.

    Args:
        image (ndarray[H, W, 3] uint8): RGB.
        config: the settings (defaults when None).

    Returns:
        ndarray[N, 4] float32: (x1, y1, x2, y2) in original-image pixels, unique,
        at least ``min_size`` wide and high, in SS rank order, N <= ``max_proposals``.
    """
    config = config or ProposeConfig()
    xip = _ximgproc()
    h, w = image.shape[:2]
    scale = 1.0
    if config.max_side and max(h, w) > config.max_side:
        scale = config.max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    cv2.setNumThreads(1)  # one core per image; parallelism comes from processing images in parallel
    ss = xip.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if config.mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    _seed_libc(config.seed)
    rects = ss.process()
    if rects is None or len(rects) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    r = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1) / scale  # (x, y, w, h) -> (x1, y1, x2, y2)
    boxes = np.clip(np.round(boxes), 0, [w, h, w, h]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= max(config.min_size, 1)) & ((boxes[:, 3] - boxes[:, 1]) >= max(config.min_size, 1))
    boxes = boxes[keep]
    # duplicates appear once boxes from a downscaled image are scaled back; keep the first (best-ranked)
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[: config.max_proposals])


# --------------------------------------------------------------------------- dataset


@dataclass
class ProposalSet:
    """Proposals of a dataset's images, read from a proposals folder."""

    folder: Path
    config: ProposeConfig
    ids: list[str] = field(default_factory=list)

    def boxes(self, image_id: str) -> np.ndarray:
        """ndarray[N, 4] float32 of one image; raises DataError when it was not computed."""
        path = self.folder / "boxes" / f"{image_id}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"no proposals for image '{image_id}' in {self.folder} (run `rcnn propose` on its split)") from None
        except ValueError as e:
            raise DataError(f"proposal file {path} is corrupt: {e}") from None

    @classmethod
    def load(cls, folder: str | Path) -> ProposalSet:
        folder = Path(folder)
        settings = read_json(folder / "settings.json", "proposal settings")
        try:
            config = ProposeConfig(**settings["config"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{folder / 'settings.json'} is malformed: {e}") from None
        ids = sorted(p.stem for p in (folder / "boxes").glob("*.npy"))
        return cls(folder, config, ids)


def _propose_worker(path: str, config: ProposeConfig) -> tuple[np.ndarray | None, float, str]:
    t = time.perf_counter()
    try:
        boxes = selective_search(load_rgb(path), config)
    except DataError as e:
        return None, time.perf_counter() - t, str(e)
    return boxes, time.perf_counter() - t, ""


def _save_boxes(path: Path, boxes: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, boxes.astype(np.float32))


def recall(gt: list[np.ndarray], proposals: list[np.ndarray], threshold: float, top_k: int | None = None) -> tuple[int, int]:
    """Ground-truth boxes covered by some proposal at IoU >= ``threshold``.

    Args:
        gt: per image, ndarray[G, 4] ground-truth boxes.
        proposals: per image, ndarray[N, 4] proposals in rank order.
        top_k: look only at the first ``top_k`` proposals of each image.

    Returns:
        (covered, total) counts.
    """
    from .boxes import box_iou

    covered = total = 0
    for g, p in zip(gt, proposals):
        total += len(g)
        p = p[:top_k] if top_k else p
        if len(g) and len(p):
            covered += int((box_iou(g, p).max(axis=1) >= threshold).sum())
    return covered, total


def proposal_report(images: list[Annotation], proposals: list[np.ndarray], classes: list[str]) -> dict[str, Any]:
    """Counts and recall at IoU 0.5/0.7, overall, per class and over the first k proposals."""
    counts = np.array([len(p) for p in proposals]) if proposals else np.zeros(0)
    gt = [a.boxes() for a in images]

    def ratio(c: int, t: int) -> float | None:
        return round(c / t, 4) if t else None

    report: dict[str, Any] = {
        "images": len(images),
        "proposals_per_image": round(float(counts.mean()), 1) if len(counts) else 0.0,
        "proposals_min": int(counts.min()) if len(counts) else 0,
        "proposals_median": float(np.median(counts)) if len(counts) else 0.0,
        "proposals_max": int(counts.max()) if len(counts) else 0,
        "gt_boxes": int(sum(len(g) for g in gt)),
        "recall50": ratio(*recall(gt, proposals, 0.5)),
        "recall70": ratio(*recall(gt, proposals, 0.7)),
        "recall50_at": {k: ratio(*recall(gt, proposals, 0.5, k)) for k in (100, 250, 500, 1000, 2000)},
        "per_class": {},
    }
    for c in classes:
        gt_c = [a.boxes()[np.array(a.labels(), dtype=object) == c] if a.objects else np.zeros((0, 4)) for a in images]
        report["per_class"][c] = {
            "objects": int(sum(len(g) for g in gt_c)),
            "recall50": ratio(*recall(gt_c, proposals, 0.5)),
            "recall70": ratio(*recall(gt_c, proposals, 0.7)),
        }
    return report


def propose_dataset(
    dataset: Dataset,
    out: str | Path,
    config: ProposeConfig | None = None,
    split: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute (or reuse) proposals for the images of ``split`` and write ``out/report.json``.

    Args:
        workers: processes; 0 means one per CPU core.

    Returns:
        The report: ``recall50``, ``recall70``, ``proposals_per_image``, ``seconds`` and more.
    """
    from tqdm import tqdm

    config = config or ProposeConfig()
    _ximgproc()  # fail early, with the fix, when the contrib build is missing
    out = Path(out)
    images = dataset.split(split)
    if not images:
        raise DataError(f"no images in split '{split}'")
    settings_path = out / "settings.json"
    if settings_path.exists():
        old = read_json(settings_path, "proposal settings").get("config")
        if old != asdict(config):
            print(f"proposal settings changed ({old} -> {asdict(config)}); recomputing", flush=True)
            shutil.rmtree(out / "boxes", ignore_errors=True)
    (out / "boxes").mkdir(parents=True, exist_ok=True)
    write_json(settings_path, {"config": asdict(config)})

    start = time.perf_counter()
    todo = [a for a in images if not (out / "boxes" / f"{a.id}.npy").exists()]
    failures: list[str] = []
    compute_seconds: list[float] = []
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="propose", unit="img", disable=None if progress else True)
    if workers == 1 or len(todo) <= 1:
        results = (( a, _propose_worker(a.path, config)) for a in todo)
        for a, (boxes, secs, err) in results:
            _collect(out, a, boxes, secs, err, failures, compute_seconds)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futures = {pool.submit(_propose_worker, a.path, config): a for a in todo}
            for fut in as_completed(futures):
                boxes, secs, err = fut.result()
                _collect(out, futures[fut], boxes, secs, err, failures, compute_seconds)
                bar.update()
    bar.close()

    done = [a for a in images if (out / "boxes" / f"{a.id}.npy").exists()]
    pset = ProposalSet(out, config)
    report = proposal_report(done, [pset.boxes(a.id) for a in done], dataset.classes)
    report.update(
        {
            "split": split or "all",
            "config": asdict(config),
            "computed": len(todo) - len(failures),
            "reused": len(images) - len(todo),
            "failed": failures,
            "seconds": round(time.perf_counter() - start, 2),
            "seconds_per_image_median": round(float(np.median(compute_seconds)), 3) if compute_seconds else None,
            "workers": workers,
        }
    )
    write_json(out / "report.json", report)
    return report


def _collect(out: Path, a: Annotation, boxes: np.ndarray | None, secs: float, err: str,
             failures: list[str], compute_seconds: list[float]) -> None:
    if boxes is None:
        failures.append(err)
        print(f"error: {err}; skipped", flush=True)
        return
    _save_boxes(out / "boxes" / f"{a.id}.npy", boxes)
    compute_seconds.append(secs)


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['images']} images, {report['proposals_per_image']} proposals per image "
        f"(min {report['proposals_min']}, max {report['proposals_max']}), {report['seconds']} s "
        f"({report['computed']} computed, {report['reused']} reused)",
        f"recall of {report['gt_boxes']} ground-truth boxes: IoU 0.5 {report['recall50']}, IoU 0.7 {report['recall70']}",
        "recall@0.5 within the first k: " + ", ".join(f"{k}: {v}" for k, v in report["recall50_at"].items()),
    ]
    for c, r in report["per_class"].items():
        lines.append(f"  {c:<20} {r['objects']:>5} objects  recall50 {r['recall50']}  recall70 {r['recall70']}")
    return "\n".join(lines)
