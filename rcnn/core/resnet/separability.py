"""Separability indices of a network's layers: how well each layer's features already sort the classes.

- **SI** (separability index): the fraction of samples whose nearest *other* sample (Euclidean distance in
  the layer's features) has the same label.
- **CSI** (centre separability index): the fraction of samples whose nearest class centre (the mean of a
  class's features) is their own class's.

Both work through the rows in chunks with ``torch.cdist`` (at most ``chunk × N`` distances at a time, never
the N×N matrix), on a GPU when there is one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["LayerSeparability", "separability_index", "class_separability_index", "nearest_other",
           "balanced_subset", "layer_features", "layer_separability"]

DEFAULT_CHUNK = 1024  # rows of distances at a time: 1024 × 10,000 float32 distances = 41 MB


@dataclass(frozen=True)
class LayerSeparability:
    """One row of the per-layer table."""

    layer: str
    features: int  # D: the layer's output flattened
    si_train: float
    csi_train: float
    si_test: float
    csi_test: float


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(x)
    t = t.reshape(len(t), -1).float()
    return t.to(device) if device is not None else t


def nearest_other(features: np.ndarray | torch.Tensor, chunk: int = DEFAULT_CHUNK,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Index of each sample's nearest other sample (Euclidean; the lowest index on a tie).

    Args:
        features (ndarray or Tensor[N, ...]): flattened to [N, D], float32.
        chunk: rows of the distance matrix computed at a time (``chunk × N`` distances).

    Returns:
        Tensor[N] int64 on the CPU.
    """
    x = _as_tensor(features, device)
    n = len(x)
    if n < 2:
        raise ValueError(f"separability needs at least 2 samples, got {n}")
    if chunk < 1:
        raise ValueError(f"'chunk={chunk}' is invalid; it must be >= 1")
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    for start in range(0, n, chunk):
        rows = x[start:start + chunk]
        d = torch.cdist(rows, x)  # (c, N)
        r = torch.arange(len(rows), device=x.device)
        d[r, start + r] = float("inf")  # never a sample's own neighbour
        out[start:start + len(rows)] = d.argmin(1)
    return out.cpu()


def separability_index(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                       chunk: int = DEFAULT_CHUNK, device: torch.device | str | None = None) -> float:
    """SI: the fraction of samples whose nearest other sample has the same label.

    Args:
        features (ndarray or Tensor[N, ...]): one row per sample, flattened to [N, D].
        labels (ndarray or Tensor[N]): integer class labels.
    """
    y = torch.as_tensor(labels).long().cpu()
    if len(y) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(y)} labels")
    nn_idx = nearest_other(features, chunk, device)
    return float((y[nn_idx] == y).double().mean())


def class_separability_index(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                             chunk: int = DEFAULT_CHUNK, device: torch.device | str | None = None) -> float:
    """CSI: the fraction of samples whose nearest class centre (the mean feature of a class) is their own class's."""
    x = _as_tensor(features, device)
    y = torch.as_tensor(labels).long().to(x.device)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("separability needs at least 1 sample, got 0")
    classes, y_idx = torch.unique(y, return_inverse=True)  # centres of the classes present
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, y_idx, x.double())
    centres = (sums / torch.bincount(y_idx, minlength=len(classes)).unsqueeze(1)).float()  # (K, D)
    hits = 0
    for start in range(0, len(x), chunk):
        nearest = torch.cdist(x[start:start + chunk], centres).argmin(1)  # (c,)
        hits += int((nearest == y_idx[start:start + chunk]).sum())
    return hits / len(x)


def balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced random subset: ``fraction`` of the samples, the same number from each class.

    Returns:
        ndarray[M] int64, sorted; M = K · min(round(fraction · N / K), smallest class count), at least one per class.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"'fraction={fraction}' is invalid; it must be in (0, 1]")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    per_class = max(1, min(int(round(fraction * len(labels) / len(classes))), int(counts.min())))
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _groups(dims: dict[str, int], n: int, budget_bytes: int) -> Iterator[list[str]]:
    """Layers in groups whose features (n × ΣD float32) fit in ``budget_bytes``: one forward pass per group."""
    group: list[str] = []
    size = 0
    for name, d in dims.items():
        if group and size + n * d * 4 > budget_bytes:
            yield group
            group, size = [], 0
        group.append(name)
        size += n * d * 4
    if group:
        yield group


@torch.no_grad()
def layer_features(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 256,
                   device: torch.device | str = "cpu", budget_bytes: int = 2 << 30) -> Iterator[tuple[str, torch.Tensor]]:
    """Each layer's output on ``images``, collected by forward hooks and flattened.

    Args:
        model: in eval mode (the caller's choice); its submodules named by ``layers``.
        images (Tensor[N, 3, H, W]): float, as the model takes them.
        budget_bytes: features held at once; layers that do not fit together get their own forward pass.

    Yields:
        (layer name, Tensor[N, D] float32 on the CPU), in the order of ``layers``.
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"no layer named {', '.join(missing)}; layers are {', '.join(n for n in modules if n)}")
    dims: dict[str, int] = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: dims.__setitem__(n, o[0].numel())) for n in layers]
    try:
        model(images[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    for group in _groups({n: dims[n] for n in layers}, len(images), budget_bytes):
        store: dict[str, list[torch.Tensor]] = {n: [] for n in group}
        handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: store[n].append(o.reshape(len(o), -1).float().cpu()))
                   for n in group]
        try:
            for s in range(0, len(images), batch_size):
                model(images[s:s + batch_size].to(device))
        finally:
            for h in handles:
                h.remove()
        for n in group:
            yield n, torch.cat(store.pop(n))


def layer_separability(model: nn.Module, layers: Sequence[str], train: tuple[torch.Tensor, np.ndarray],
                       test: tuple[torch.Tensor, np.ndarray], chunk: int = DEFAULT_CHUNK,
                       device: torch.device | str = "cpu", progress: bool = False) -> list[LayerSeparability]:
    """SI and CSI of every layer in ``layers`` on a training and a test subset (``(images, labels)`` each)."""
    from tqdm import tqdm

    model.eval()
    scores: dict[str, dict[str, float]] = {n: {} for n in layers}
    dims: dict[str, int] = {}
    bar = tqdm(total=2 * len(layers), desc="separability", unit="layer", disable=None if progress else True)
    for split, (images, labels) in (("train", train), ("test", test)):
        for name, feats in layer_features(model, images, layers, device=device):
            dims[name] = feats.shape[1]
            scores[name][f"si_{split}"] = separability_index(feats, labels, chunk, device)
            scores[name][f"csi_{split}"] = class_separability_index(feats, labels, chunk, device)
            bar.update()
    bar.close()
    return [LayerSeparability(layer=n, features=dims[n], **scores[n]) for n in layers]
