"""R-CNN's bounding-box regression: ridge regression from backbone features to box targets, per class."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .data import RegionSet
from .network import RegionClassifier

RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares with an L2 penalty ``lam`` on the weights (not the bias): returns (W [D, K], b [K])."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    xc, yc = (x - mu_x).double(), (y - mu_y).double()
    a = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, xc.T @ yc)
    return w.float(), (mu_y - mu_x @ w.float())


def fit_box_regressor(net: RegionClassifier, feats: torch.Tensor, regions: RegionSet, train_idx: np.ndarray,
                      val_idx: np.ndarray, min_iou: float = 0.6) -> dict[str, Any]:
    """R-CNN's bounding-box regression: per class, ridge regression from features to the targets
    of its regions with IoU >= ``min_iou``; the penalty is chosen on the validation regions.

    Writes the weights into ``net.bbox``; returns what was fitted and the validation error.
    """
    dim = feats.shape[1]
    weight = torch.zeros(len(regions.classes), 4, dim)
    bias = torch.zeros(len(regions.classes), 4)
    fitted: dict[str, Any] = {}
    for c in range(1, len(regions.classes)):
        tr = train_idx[(regions.labels[train_idx] == c) & (regions.ious[train_idx] >= min_iou)]
        va = val_idx[(regions.labels[val_idx] == c) & (regions.ious[val_idx] >= min_iou)]
        if len(tr) < 10:
            continue  # too few examples: leave this class's boxes as they are
        y_tr, y_va = torch.from_numpy(regions.targets[tr]), torch.from_numpy(regions.targets[va])
        best = (math.inf, RIDGE_LAMBDAS[-1])
        for lam in RIDGE_LAMBDAS if len(va) else (RIDGE_LAMBDAS[-1],):
            w, b = ridge(feats[tr], y_tr, lam)
            err = float(((feats[va] @ w + b - y_va) ** 2).mean()) if len(va) else 0.0
            best = min(best, (err, lam))
        w, b = ridge(feats[tr], y_tr, best[1])
        weight[c], bias[c] = w.T, b
        fitted[regions.classes[c]] = {"regions": int(len(tr)), "lambda": best[1],
                                      "val_mse": round(best[0], 5) if len(va) else None,
                                      "val_mse_without": round(float((y_va ** 2).mean()), 5) if len(va) else None}
    with torch.no_grad():
        net.bbox.weight.copy_(weight.reshape(-1, dim))
        net.bbox.bias.copy_(bias.reshape(-1))
    return fitted

