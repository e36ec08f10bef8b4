"""Stage 4 of the classic path, kept at its old import path: the classic R-CNN's trainer now lives in
:mod:`rcnn.arch.rcnn` (its settings, data, features, box regression and training), the loop every
architecture shares in :mod:`rcnn.engine`. ``from rcnn.train import TrainConfig, train`` keeps working.
"""

from __future__ import annotations

from .arch.rcnn.boxreg import RIDGE_LAMBDAS, fit_box_regressor, ridge
from .arch.rcnn.config import OPTIMIZERS, TrainConfig
from .arch.rcnn.data import RegionSet, balanced_batches, resolve_class_weights, split_by_image
from .arch.rcnn.features import CachedFeatures, FeatureSource, LiveFeatures, Preprocess, extract_features
from .arch.rcnn.train import (TrainRun, TrainState, add_regions, build_run, evaluate, load_checkpoint, mine_hard_negatives,
                              resume_state, save_checkpoint, top_k_per_group, train, train_one_epoch, train_round,
                              write_model)
from .engine import confusion, format_report, precision_recall

__all__ = ["OPTIMIZERS", "RIDGE_LAMBDAS", "CachedFeatures", "FeatureSource", "LiveFeatures", "Preprocess", "RegionSet",
           "TrainConfig", "TrainRun", "TrainState", "add_regions", "balanced_batches", "build_run", "confusion", "evaluate",
           "extract_features", "fit_box_regressor", "format_report", "load_checkpoint", "mine_hard_negatives",
           "precision_recall", "resolve_class_weights", "resume_state", "ridge", "save_checkpoint", "split_by_image",
           "top_k_per_group", "train", "train_one_epoch", "train_round", "write_model"]
