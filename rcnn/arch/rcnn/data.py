"""The classic R-CNN's training data: the region set of ``rcnn crop``, its split by image and its batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...crop import CropConfig, decode_crop, load_shard
from ...errors import DataError
from ...io import read_json
from ...parse import is_reserved_class
from ...propose import ProposeConfig


@dataclass
class RegionSet:
    """The region set of ``rcnn crop``, held in memory as encoded crops."""

    folder: Path
    classes: list[str]
    counts: dict[str, int]
    class_weights: dict[str, float]
    labels: np.ndarray  # [N] int64 class ids, 0 = background
    groups: np.ndarray  # [N] int64 image index of each region
    ious: np.ndarray  # [N] float32 best IoU with a ground-truth box
    targets: np.ndarray  # [N, 4] float32 regression targets (dx, dy, dw, dh) to the matched box
    data: list[np.ndarray]  # encoded bytes of each region
    meta: dict[str, Any]
    pool: np.ndarray  # [N] bool: kept aside for hard-negative mining, not trained on until mined

    @classmethod
    def load(cls, folder: str | Path) -> RegionSet:
        """Read a region set; raises DataError naming the file for anything malformed or missing."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        meta = read_json(meta_path, "region-set metadata")
        if not isinstance(meta, dict) or meta.get("format") != "rcnn-crops-v1":
            raise DataError(f"{folder} is not a region set written by `rcnn crop` ({meta_path} has no rcnn-crops-v1 format tag)")
        _check_meta(meta, meta_path)
        n_classes = len(meta["classes"])
        labels, groups, data, ious, targets, pools = [], [], [], [], [], []
        keys = meta.get("shard_keys") or [None] * len(meta["images"])
        for g, (image_id, key) in enumerate(zip(meta["images"], keys)):
            path = folder / "shards" / f"{image_id}.npz"
            s = load_shard(path)
            if key is not None and str(s.get("key", "")) != key:
                raise DataError(f"crop shard {path} does not belong to {meta_path} (an interrupted or concurrent `rcnn crop`?); re-run `rcnn crop`")
            try:
                off, lab = s["offsets"].astype(np.int64), s["labels"].astype(np.int64)
                n = len(lab)
                pool = s["pool"].astype(bool) if "pool" in s else np.zeros(n, bool)
                ok = (len(pool) == n and len(off) == n + 1 and s["targets"].shape == (n, 4) and len(s["ious"]) == n
                      and (lab >= 0).all() and (lab < n_classes).all() and (np.diff(off) >= 0).all()
                      and off[0] == 0 and off[-1] <= len(s["data"]))
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise DataError(f"crop shard {path} is corrupt: {e}") from None
            if not ok:
                raise DataError(f"crop shard {path} is corrupt: its arrays do not fit together or labels exceed {n_classes} classes")
            labels.append(lab)
            ious.append(s["ious"])
            targets.append(s["targets"])
            pools.append(pool)
            groups.append(np.full(n, g))
            data += [s["data"][off[k] : off[k + 1]] for k in range(n)]
        if not data:
            raise DataError(f"region set {folder} is empty")
        return cls(folder, meta["classes"], meta["counts"], meta["class_weights"], np.concatenate(labels).astype(np.int64),
                   np.concatenate(groups).astype(np.int64), np.concatenate(ious).astype(np.float32),
                   np.concatenate(targets).astype(np.float32).reshape(-1, 4), data, meta, np.concatenate(pools))

    @property
    def crop_size(self) -> int:
        return int(self.meta["config"]["size"])

    def crops(self, idx: np.ndarray, flip: np.ndarray | None = None) -> np.ndarray:
        """Decoded RGB crops ``[len(idx), S, S, 3]`` uint8, mirrored where ``flip`` is true."""
        out = np.stack([decode_crop(self.data[i]) for i in idx])
        if flip is not None and flip.any():
            out[flip] = out[flip][:, :, ::-1]
        return out


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Validate the region set's ``meta.json`` (classes, counts, weights, images, settings)."""

    classes = meta.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or classes[0] != "background" or any(is_reserved_class(c) for c in classes[1:]) or len(set(classes)) != len(classes)):
        raise DataError(f"{path}: 'classes' must be a list of distinct names starting with 'background', got {classes!r}")
    for key in ("counts", "class_weights"):
        v = meta.get(key)
        if not isinstance(v, dict) or set(v) != set(classes) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v.values()):
            raise DataError(f"{path}: '{key}' must give a non-negative number for each class")
    images = meta.get("images")
    if not isinstance(images, list) or not all(isinstance(i, str) and i and "/" not in i and "\\" not in i and i not in (".", "..")
                                               for i in images):
        raise DataError(f"{path}: 'images' must be a list of image ids")
    try:
        CropConfig(**meta.get("config", {}))
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'config' is not a crop configuration: {e}") from None
    try:
        ProposeConfig(**meta["propose"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: 'propose' is not a proposal configuration: {e}") from None
    keys = meta.get("shard_keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) != len(images) or not all(isinstance(k, str) for k in keys)):
        raise DataError(f"{path}: 'shard_keys' must give one key per image")


def split_by_image(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``val_fraction`` of the images, stratified by each image's most frequent object class.

    Returns:
        (train indices, validation indices) into the regions, each sorted.
    """
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    n_classes = int(labels.max()) + 1 if len(labels) else 1
    counts = np.zeros((n_groups, n_classes), np.int64)
    np.add.at(counts, (groups, labels), 1)
    fg = counts[:, 1:]
    main = np.where(fg.sum(1) > 0, fg.argmax(1) + 1, 0)  # an image's main class; 0 when it has no objects
    rng = np.random.default_rng(seed)
    val_groups = []
    for c in np.unique(main):
        members = rng.permutation(np.flatnonzero(main == c))
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_groups += members[:n_val].tolist()
    is_val = np.isin(groups, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def balanced_batches(labels: np.ndarray, batch_size: int, fg_fraction: float, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches that each hold ``round(fg_fraction * batch_size)`` object regions.

    The epoch has ``ceil(len(labels) / batch_size)`` batches; object regions are
    cycled (reshuffled each pass) when there are fewer than the batches need.
    Returns indices into ``labels``.
    """
    fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    n_batches = max(1, math.ceil(len(labels) / batch_size))
    n_fg = round(fg_fraction * batch_size) if len(fg) and len(bg) else (batch_size if len(fg) else 0)
    n_bg = batch_size - n_fg

    def stream(pool: np.ndarray, n: int) -> np.ndarray:
        if n == 0 or len(pool) == 0:
            return np.zeros(0, np.int64)
        reps = math.ceil(n / len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]

    fg_all, bg_all = stream(fg, n_fg * n_batches), stream(bg, n_bg * n_batches)
    return [rng.permutation(np.concatenate([fg_all[b * n_fg : (b + 1) * n_fg], bg_all[b * n_bg : (b + 1) * n_bg]]))
            for b in range(n_batches)]


def resolve_class_weights(spec: str, regions: RegionSet) -> torch.Tensor | None:
    """``auto`` → the crop metadata's inverse frequencies, ``none`` → None, else comma-separated numbers."""
    if spec == "none":
        return None
    if spec == "auto":
        values = [regions.class_weights[c] for c in regions.classes]
    else:
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ValueError(f"'class_weights={spec}' is invalid; use auto, none, or one number per class") from None
        if len(values) != len(regions.classes):
            raise ValueError(f"'class_weights={spec}' gives {len(values)} weights for {len(regions.classes)} classes {regions.classes}")
    if any(v < 0 or not math.isfinite(v) for v in values) or not any(v > 0 for v in values):
        raise ValueError(f"class weights {values} must be finite, non-negative and not all zero")
    return torch.tensor(values, dtype=torch.float32)

