"""Stage 2: selective-search region proposals, reproducible, parallel and cached.

OpenCV ranks the regions of selective search with C ``rand()``, so the same image
gives the same set of boxes in a different order on every run, and any cap on
their number changes from run to run. ``cv2.setRNGSeed`` does not reach that
generator; seeding libc's ``srand`` right before each call does.

Proposals are stored one ``.npy`` per image (float32[N, 4], original image
pixels, SS rank order), never one file per region; a re-run reuses them. A trained
model's proposals (:mod:`rcnn.proposer`) are stored the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import DataError, MissingDependencyError
from .io import file_digest, load_rgb, output_dir, output_subdir, print_err, read_json, save_npy, write_json
from .parse import Annotation, Dataset
from .records import check_names, safe_child
from .runner import Outcome, Stage
from .scale import Shard, import_ray, shard_name, shard_of

# --mode: OpenCV's selective-search strategy of each mode (fast: one colour space and two similarity
# mixes; quality: more of both, several times slower)
STRATEGIES = {"fast": "switchToSelectiveSearchFast", "quality": "switchToSelectiveSearchQuality"}
MODES = tuple(STRATEGIES)


@dataclass
class ProposeConfig:
    """Where proposals come from: selective search and its settings, or (``model``) a trained model's proposer
    (:mod:`rcnn.proposer`); saved with the proposals and in the model folder of a model trained on them.
    """

    mode: str = "fast"  # "fast" or "quality"; on raccoon both find every object at IoU 0.5
    # Run SS on a copy whose long side is at most this (0 = full size). Measured on 40 raccoon
    # images: fast/300 px takes 0.17 s/image against 2.9 s for quality/full size, with the same
    # recall@0.5 (1.0) and a higher recall@0.7 (0.93 vs 0.88): big segments are found better small.
    max_side: int = 300
    # Keep at most this many boxes per image, in rank order (a proposer model: rcnn propose --model's own
    # default is its architecture's ArchSpec.proposer_max)
    max_proposals: int = 2000
    min_size: int = 10  # drop boxes narrower or shorter than this, in original-image pixels
    seed: int = 0  # seeds libc's rand(), which OpenCV uses to rank regions: same seed, same order
    # Graph segmentation (Felzenszwalb) of each strategy: k of the first, the step between them, and
    # the Gaussian sigma; OpenCV's defaults are 150, 150, 0.8. A smaller k gives finer base segments,
    # which the 300 px copy needs: measured on 20 train images each (bench/proposal_settings.py),
    # k 150 -> 50 raises bccd recall@0.5 0.82 -> 0.93 (RBC 0.80 -> 0.93) and keeps raccoon at 1.00/0.95.
    base_k: int = 50
    inc_k: int = 50
    sigma: float = 0.8
    # The folder of a model whose proposer (ArchSpec.proposer) made the proposals, instead of selective search
    # (whose settings above then do not apply, max_proposals aside); "": selective search
    model: str = ""
    model_key: str = ""  # that model's identity when it proposed (rcnn.runs.model_key): detection checks it

    def __post_init__(self) -> None:
        if bool(self.model) != bool(self.model_key):
            raise ValueError(f"'model={self.model}' and 'model_key={self.model_key}' go together: give both or neither")
        if self.mode not in MODES:
            raise ValueError(f"'mode={self.mode}' is invalid; valid modes are {', '.join(MODES)}")
        if self.max_side < 0 or self.max_proposals < 1 or self.min_size < 0 or self.base_k < 1 or self.inc_k < 1 or not self.sigma > 0:
            raise ValueError(
                f"invalid proposal settings max_side={self.max_side} (>= 0), "
                f"max_proposals={self.max_proposals} (>= 1), min_size={self.min_size} (>= 0), "
                f"base_k={self.base_k} (>= 1), inc_k={self.inc_k} (>= 1), sigma={self.sigma} (> 0)"
            )

    def to_json(self) -> dict[str, Any]:
        """The settings as saved; selective search's leave out the empty model fields (as before they existed)."""
        d = asdict(self)
        return d if self.model else {k: v for k, v in d.items() if k not in ("model", "model_key")}

    def key(self) -> str:
        return hashlib.sha1(repr(sorted(self.to_json().items())).encode()).hexdigest()[:12]


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
    ss = xip.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    getattr(ss, STRATEGIES[config.mode])(config.base_k, config.inc_k, config.sigma)
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
    """Proposals of a dataset's images, read from a proposals folder.

    ``boxes/<id>.npy`` holds an image's boxes and ``boxes/<id>.json`` what they were computed
    from (the image path, the SHA-1 of its bytes and the settings key); a file is reused or
    matched to an image only when that record fits.
    """

    folder: Path
    config: ProposeConfig
    ids: list[str] = field(default_factory=list)
    _by_digest: dict[str, str] | None = field(default=None, repr=False)

    def boxes(self, image_id: str) -> np.ndarray:
        """ndarray[N, 4] float32 of one image; raises DataError when it was not computed or is corrupt."""
        path = self.folder / "boxes" / f"{image_id}.npy"
        try:
            boxes = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"no proposals for image '{image_id}' in {self.folder} (run `rcnn propose` on its split)") from None
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"proposal file {path} is corrupt: {e}") from None
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.floating) or not np.isfinite(boxes).all():
            raise DataError(f"proposal file {path} is corrupt: expected finite float boxes [N, 4], got {boxes.dtype} {boxes.shape}")
        return boxes.astype(np.float32, copy=False)

    def record(self, image_id: str) -> dict[str, Any] | None:
        """What ``boxes/<id>.npy`` was computed from, or None when unknown."""
        return _stored_source(self.folder / "boxes", image_id)

    def seconds(self, image_id: str) -> float | None:
        """Seconds its proposals took to compute (one image, one process), or None when not recorded."""
        rec = self.record(image_id) or {}
        return rec["seconds"] if isinstance(rec.get("seconds"), (int, float)) else None

    def digest(self, image_id: str) -> str:
        """SHA-1 of the stored boxes: part of the key of anything built from them."""
        return file_digest(self.folder / "boxes" / f"{image_id}.npy")

    def find(self, image_path: str | Path) -> np.ndarray | None:
        """The boxes computed from this image's bytes (whatever its name or folder), or None."""
        if self._by_digest is None:
            self._by_digest = {}
            for i in self.ids:
                rec = self.record(i)
                if rec and rec.get("config") == self.config.key():
                    self._by_digest.setdefault(rec["image_sha1"], i)
        image_id = self._by_digest.get(file_digest(image_path))
        return self.boxes(image_id) if image_id is not None else None

    @classmethod
    def load(cls, folder: str | Path) -> ProposalSet:
        folder = Path(folder)
        settings_path = folder / "settings.json"
        settings = read_json(settings_path, "proposal settings")
        if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
            raise DataError(f"{settings_path} is not a proposal settings file written by `rcnn propose`")
        try:
            config = ProposeConfig(**settings["config"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{settings_path} is malformed: {e}") from None
        ids = sorted(p.stem for p in (folder / "boxes").glob("*.npy"))
        return cls(folder, config, ids)


def check_proposals(pset: ProposalSet, images: list[Annotation], split: str) -> dict[str, str]:
    """Check that ``pset`` holds proposals computed from each of ``images``; returns id -> image SHA-1.

    Raises:
        DataError: an image has no proposals, or they were computed from other bytes.
    """
    ids = set(pset.ids)
    missing = [a.id for a in images if a.id not in ids]
    if missing:
        raise DataError(f"{len(missing)} {split} images have no proposals in {pset.folder} (first: {missing[0]}); "
                        f"run `rcnn propose --split {split}`")
    image_sha = {a.id: file_digest(a.path) for a in images}
    for a in images:
        rec = pset.record(a.id)
        if rec is None or rec.get("image_sha1") != image_sha[a.id]:
            raise DataError(f"the proposals of '{a.id}' in {pset.folder} were not computed from {a.path} "
                            "(another dataset, a changed image or an older rcnn); run `rcnn propose` for this dataset")
    return image_sha


Proposer = Callable[[np.ndarray], np.ndarray]  # RGB image [H, W, 3] -> boxes [N, 4] float32, original pixels, best first


def _propose_worker(path: str, config: ProposeConfig, proposer: Proposer | None = None) -> Outcome[np.ndarray]:
    """Proposals of one image (ndarray[N, 4] float32, by ``proposer`` or else selective search) and the seconds
    they took, or the error of an image that cannot be read."""
    t = time.perf_counter()
    try:
        image = load_rgb(path)
        t = time.perf_counter()  # the proposals' own time, without reading the file
        boxes = proposer(image) if proposer is not None else selective_search(image, config)
    except DataError as e:
        return Outcome(None, str(e), time.perf_counter() - t)
    return Outcome(boxes, "", time.perf_counter() - t)


def _propose_task(shared: tuple[ProposeConfig, Proposer | None], image: Annotation) -> Outcome[np.ndarray]:
    return _propose_worker(image.path, *shared)


def recall(gt: list[np.ndarray], proposals: list[np.ndarray], threshold: float, top_k: int | None = None) -> tuple[int, int]:
    """Ground-truth boxes covered by some proposal at IoU >= ``threshold``.

    Args:
        gt: per image, ndarray[G, 4] ground-truth boxes.
        proposals: per image, ndarray[N, 4] proposals in rank order.
        top_k: look only at the first ``top_k`` proposals of each image.

    Returns:
        (covered, total) counts.
    """
    # imported here, not above: rcnn.boxes imports torch, whose import starts a thread, and the processes that
    # run selective search (pool and Ray children) must have no thread that could call libc rand() meanwhile
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
    echo: Callable[[str], Any] = print,
    warn: Callable[[str], Any] = print_err,
    shard: Shard | None = None,
    ray: str | None = None,
    proposer: Proposer | None = None,
) -> dict[str, Any]:
    """Compute (or reuse) proposals for the images of ``split`` and write ``out/report.json``.

    Args:
        workers: processes; 0 means one per CPU core; they die with this process. 1: this process, whose region
            order holds only while no other thread calls libc rand() (a Ray driver's threads do).
        echo, warn: where progress lines and per-image errors go (stdout and stderr by default).
        shard: (k, n): only the images of shard k of n (:func:`rcnn.scale.shard_of`, by path), and only
            ``report-shard-k-of-n.json``; shards may run at once into one ``out``. A run without ``shard``
            computes what no shard did and writes ``report.json`` over every image.
        ray: run the images as Ray tasks on this cluster (``auto``, an address, or ``local``) instead of
            ``workers`` processes.
        proposer: computes each image's boxes instead of selective search, in this process (``workers`` unused;
            no ``ray``): the model ``config.model`` names (:func:`rcnn.proposer.propose_with_model`).

    Raises:
        DataError: ``out`` holds files rcnn did not write, or no image could be processed.
        ValueError: ``proposer`` with ``ray``, or without a ``config.model`` that names it (or the other way round).

    Returns:
        The report: ``recall50``, ``recall70``, ``proposals_per_image``, ``seconds`` and more.
    """
    config = config or ProposeConfig()
    _check_source(config, proposer, ray)
    images = shard_of(dataset.split(split), shard, key=lambda a: a.path)
    if not images:
        raise DataError(f"no images in split '{split}'" + (f" for shard {shard[0]}/{shard[1]}" if shard else ""))
    check_names([a.id for a in images], "image id")  # before any write (a Dataset built in memory was never checked)
    out = output_dir(out, "proposals")
    _check_settings(out, config, shard is None, echo, warn)

    start = time.perf_counter()
    run = _ProposeRun(out / "boxes", {a.id: _source(a, config) for a in images}, warn)
    todo = run.stage().plan(images).todo
    workers = 1 if proposer is not None else workers or os.cpu_count() or 1
    run.stage().run((config, proposer), todo, len(images) - len(todo), workers, ray, progress)

    report = _report(dataset, ProposalSet(out, config), images, run, split)
    report.update({"computed": len(todo) - len(run.failures), "reused": len(images) - len(todo),
                   "failed": run.failures, "seconds": round(time.perf_counter() - start, 2),
                   "seconds_per_image_median": round(float(np.median(run.seconds)), 3) if run.seconds else None,
                   "workers": workers})
    if ray is not None:
        report["ray"] = ray
    if shard is not None:
        report["shard"] = list(shard)
    write_json(out / (f"report-{shard_name(shard)}.json" if shard else "report.json"), report)
    return report


def _check_source(config: ProposeConfig, proposer: Proposer | None, ray: str | None) -> None:
    """Fail early, with the fix, when what computes the proposals is missing or does not fit ``config``."""
    if (proposer is None) != (not config.model):
        raise ValueError(f"'model={config.model}' needs its proposer, and a proposer its model (give both or neither)")
    if proposer is not None:
        if ray is not None:
            raise ValueError(f"--ray runs selective search; the proposer of {config.model} runs in this process")
        return
    _ximgproc()  # the contrib build
    if ray is not None:
        import_ray()


def _report(dataset: Dataset, pset: ProposalSet, images: list[Annotation], run: _ProposeRun, split: str | None) -> dict[str, Any]:
    """The report of the images whose boxes are stored (:func:`proposal_report`), its first keys set.

    Raises:
        DataError: no image has boxes.
    """
    done = [a for a in images if run.valid(a)]
    if not done:
        raise DataError(f"no proposals could be computed for any of the {len(images)} images "
                        f"(first error: {run.failures[0] if run.failures else '?'})")
    report = proposal_report(done, [pset.boxes(a.id) for a in done], dataset.classes)
    report.update({"format": "rcnn-proposals-report-v1", "split": split or "all", "config": pset.config.to_json()})
    return report


def _check_settings(out: Path, config: ProposeConfig, whole: bool, echo: Callable[[str], Any],
                    warn: Callable[[str], Any]) -> None:
    """Write ``out/settings.json``; a whole run (not a shard) first deletes the boxes of other settings.

    A shard leaves other shards' files alone: stale ones are recomputed by key.
    """
    boxes_dir = output_subdir(out, "boxes")  # refused when a link: its files could lie anywhere
    settings_path = out / "settings.json"
    if settings_path.exists() and whole:
        try:
            old = read_json(settings_path, "proposal settings")
        except DataError as e:
            old = str(e)
        if not isinstance(old, dict):
            warn(f"warning: {settings_path} is unreadable ({str(old)[:100]}); recomputing every image")
        old = old.get("config") if isinstance(old, dict) else None
        if old != config.to_json():
            echo(f"proposal settings changed ({old} -> {config.to_json()}); recomputing")
            for f in list(boxes_dir.glob("*.npy")) + list(boxes_dir.glob("*.json")):
                f.unlink()  # ours: the folder carries our marker
    write_json(settings_path, {"format": "rcnn-proposals-v1", "config": config.to_json()})


@dataclass
class _ProposeRun:
    """The bookkeeping of one propose run: what each image's boxes must come from, failures, task times."""

    boxes_dir: Path
    sources: dict[str, dict[str, str]]  # image id -> :func:`_source`
    warn: Callable[[str], Any]
    failures: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # selective-search seconds of each computed image

    def stage(self) -> Stage[Annotation]:
        return Stage("propose", _propose_task, self.collect, lambda a, e: self.failed(f"{a.path}: {e}"), self.valid)

    def valid(self, a: Annotation) -> bool:
        """Whether the stored boxes of ``a`` were computed from its bytes with these settings."""
        stored = _stored_source(self.boxes_dir, a.id) or {}
        return all(stored.get(k) == v for k, v in self.sources[a.id].items())

    def collect(self, a: Annotation, result: Outcome[np.ndarray]) -> None:
        if result.value is None:
            self.failed(result.error)
            return
        npy, record = (safe_child(self.boxes_dir, a.id, ext, "image id") for ext in (".npy", ".json"))
        record.unlink(missing_ok=True)  # no record may describe other boxes, even for a moment
        save_npy(npy, result.value.astype(np.float32))
        write_json(record, {**self.sources[a.id], "seconds": round(result.seconds, 4)})  # ProposalSet.seconds
        self.seconds.append(result.seconds)

    def failed(self, err: str) -> None:
        self.failures.append(err)
        self.warn(f"error: {err}; skipped")


def _source(a: Annotation, config: ProposeConfig) -> dict[str, str]:
    """What one image's proposals are computed from: reuse them only while this is unchanged."""
    try:
        sha = file_digest(a.path)
    except DataError:
        sha = ""  # unreadable: computed (and reported) as a failure
    return {"image": a.path, "image_sha1": sha, "config": config.key()}


def _stored_source(boxes_dir: Path, image_id: str) -> dict[str, Any] | None:
    """The record beside ``boxes/<id>.npy``, or None when either is missing or unreadable."""
    if not (boxes_dir / f"{image_id}.npy").is_file():
        return None
    try:
        d = json.loads((boxes_dir / f"{image_id}.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("image_sha1") else None


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
