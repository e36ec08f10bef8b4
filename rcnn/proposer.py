"""Learned region proposals: a trained model's proposer (:attr:`rcnn.arch.ArchSpec.proposer`) in place of
selective search.

``rcnn propose PARSED --model MODEL`` stores each image's proposals in the files selective search writes
(:func:`rcnn.propose.propose_dataset`), under a :class:`ProposeConfig` naming the model (its folder and key).
A model trained on them records that config, and its detection (:func:`propose_image`) asks the same model
for each image's regions, as it was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .arch import ARCHS
from .errors import DataError
from .io import print_err
from .model import LoadedModel, load_model
from .parse import Dataset
from .propose import ProposeConfig, propose_dataset, selective_search
from .runs import model_key
from .scale import Shard

__all__ = ["load_proposer", "model_proposals", "propose_image", "propose_with_model", "proposer_config"]


def load_proposer(folder: str | Path, device: str = "auto") -> LoadedModel:
    """The model in ``folder``, whose architecture can propose regions.

    Raises:
        DataError: not a model folder, or its architecture has no proposer.
    """
    model = load_model(folder, device)
    if not model.spec.proposer:
        able = [name for name, spec in ARCHS.items() if spec.proposer]
        raise DataError(f"model {folder} (arch {model.arch}) cannot propose regions: only a model of an architecture "
                        f"with a proposer can ({', '.join(able) if able else 'none is registered'})")
    return model


def proposer_config(model: LoadedModel, max_proposals: int | None = None) -> ProposeConfig:
    """The settings of proposals by ``model`` (a folder on disk): its folder and key, at most ``max_proposals``
    per image (None: its architecture's :attr:`rcnn.arch.ArchSpec.proposer_max`)."""
    if model.folder is None:
        raise ValueError("a proposer model must be loaded from its folder (its proposals name it)")
    return ProposeConfig(max_proposals=max_proposals or model.spec.proposer_max, model=str(model.folder.resolve()),
                         model_key=model_key(model))


def model_proposals(model: LoadedModel, image: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` proposals of ``model`` for an RGB image ``[H, W, 3]``: float32 ``[N, 4]``, (x1, y1, x2, y2) in
    original pixels, best first.

    Raises:
        DataError: the proposer returned something else.
    """
    boxes = np.asarray(model.spec.part("proposer")(model, image, n), dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise DataError(f"the proposer of model {model.folder} (arch {model.arch}) returned {boxes.shape} boxes, "
                        "not finite [N, 4]")
    return np.ascontiguousarray(boxes[:n])


def propose_with_model(dataset: Dataset, out: str | Path, model_dir: str | Path, max_proposals: int | None = None,
                       split: str | None = None, device: str = "auto", progress: bool = True,
                       echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err,
                       shard: Shard | None = None) -> dict[str, Any]:
    """``rcnn propose --model``: the proposals of the model in ``model_dir`` for the images of ``split``, written
    and reported as selective search's are (:func:`rcnn.propose.propose_dataset`: resume and shards too), in
    this process.

    Args:
        max_proposals: per image; None: the model architecture's default (:attr:`rcnn.arch.ArchSpec.proposer_max`).
        device: where the model runs: "auto" (GPU when there is one), "cpu" or "cuda".

    Raises:
        DataError: ``model_dir`` holds no model, or one whose architecture has no proposer; or as propose_dataset.
    """
    model = load_proposer(model_dir, device)
    config = proposer_config(model, max_proposals)
    return propose_dataset(dataset, out, config, split=split, progress=progress, echo=echo, warn=warn, shard=shard,
                           proposer=lambda image: model_proposals(model, image, config.max_proposals))


def propose_image(image: np.ndarray, config: ProposeConfig, device: str = "auto") -> np.ndarray:
    """One RGB image's proposals as ``config`` says: by its model (loaded once per process), or selective search.

    Raises:
        DataError: the model is missing, or it changed since the proposals a model was trained on were made.
    """
    if not config.model:
        return selective_search(image, config)
    return model_proposals(_proposer(config.model, config.model_key, device), image, config.max_proposals)


@lru_cache(maxsize=2)  # detection asks per image: the model is loaded once (and checked once)
def _proposer(folder: str, key: str, device: str) -> LoadedModel:
    model = load_proposer(folder, device)
    if model_key(model) != key:
        raise DataError(f"the proposer model {folder} changed since the proposals were made with it "
                        "(its weights or config differ); use that model, or propose and train again")
    return model
