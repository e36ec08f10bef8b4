"""Fast R-CNN, kept at its old import path: it now lives in :mod:`rcnn.arch.fast` (settings, network, data,
losses, training), the loop every architecture shares in :mod:`rcnn.engine`.
``from rcnn.fast import FastConfig, train_fast_model`` keeps working.
"""

from __future__ import annotations

from .arch.fast.config import BACKBONE_STAGES, FastConfig
from .arch.fast.data import (ImageSample, cache_image, cache_samples, flip_boxes, hard_negative_pool, image_seed,
                             sample_regions, sample_targets)
from .arch.fast.losses import StepNet, class_weight_tensor, roi_loss, roi_loss_sums, step_loss, validate
from .arch.fast.network import BOX_WEIGHTS, FastRCNN, _scale, backbone_stages, scale_factors
from .arch.fast.train import build_net, model_config, train_fast, train_fast_model
from .engine import optimiser_step

__all__ = ["BACKBONE_STAGES", "BOX_WEIGHTS", "FastConfig", "FastRCNN", "ImageSample", "StepNet", "backbone_stages",
           "build_net", "cache_image", "cache_samples", "class_weight_tensor", "flip_boxes", "hard_negative_pool",
           "image_seed", "model_config", "optimiser_step", "roi_loss", "roi_loss_sums", "sample_regions", "sample_targets",
           "scale_factors", "step_loss", "train_fast", "train_fast_model", "validate"]
