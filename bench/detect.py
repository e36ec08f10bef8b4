"""Detection speed on raccoon test images, in one run.

1. Same model, same proposals: one forward pass per region (the reference pipeline)
   against the batched path. The scores must agree (max abs difference < 1e-4).
2. The reference pipeline's settings (quality-mode selective search at full size,
   up to 2000 proposals, 224 px crops, one pass per region) against our defaults
   (``rcnn detect`` with a model trained by the default pipeline), seconds per image.
3. Fast R-CNN (``--arch fast``, every proposal pooled from one backbone pass) against the
   classic path (``--arch rcnn``), both at their defaults, on the same images and the same
   stored proposals: seconds per image of scoring + NMS, and the ratio.
4. The network in PyTorch against onnxruntime (``rcnn detect --runtime onnx``: CPU, as many threads
   as torch uses), for each architecture at its default number of proposals, on the same images and
   proposals, one image in each runtime in turn: seconds per image of scoring, the ratio, the
   one-off export and the largest score difference.
5. Whole-image detection (decoded image -> boxes, no stored proposals): Fast R-CNN with selective search
   (the model's settings) against Faster R-CNN (``--arch faster``, proposals from its own RPN), both at their
   defaults, on the same images, one image of each in turn: seconds per image and the ratio.

Usage: python bench/detect.py [--model DIR] [--fast-model DIR] [--faster-model DIR] [--images 10] [--regions 200]
       [--parts 1,2,3,4,5]
Without --model, an untrained EfficientNet-Lite0 classifier at 224 px is used (random head
weights are fine for timing); without --fast-model, a Fast R-CNN with ImageNet backbone
weights and a random head; without --faster-model, the same for Faster R-CNN. Part 1 compares the first ``--regions`` proposals of each image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import raccoon_dataset

from rcnn.backbones import build_backbone
from rcnn.crop import CropConfig
from rcnn.detect import DetectConfig, detect_image, model_propose_config, score_regions
from rcnn.io import load_rgb
from rcnn.fast import FastConfig, build_net, model_config
from rcnn.model import LoadedModel, ModelConfig, RegionClassifier, auto_batch_size, load_model
from rcnn.propose import ProposeConfig, selective_search


def untrained(size: int = 224) -> LoadedModel:
    b = build_backbone("efficientnet_lite0", "imagenet")
    net = RegionClassifier(b, 2).eval().to(memory_format=torch.channels_last)
    cfg = ModelConfig(classes=["background", "raccoon"], backbone=b.name, input_size=size, mean=b.mean, std=b.std,
                      crop=CropConfig(size=size, context=16))
    return LoadedModel(net, cfg)


def untrained_fast() -> LoadedModel:
    config = FastConfig()
    net = build_net(config, 2).eval()
    return LoadedModel(net, model_config(config, ["raccoon"], ProposeConfig(), net))


def seconds_per_image(model: LoadedModel, images: list[np.ndarray], proposals: list[np.ndarray]) -> tuple[float, int]:
    """Mean seconds per image of detection from stored proposals, and the mean number of regions scored."""
    t = time.perf_counter()
    n = sum(detect_image(model, img, DetectConfig(), boxes)[2] for img, boxes in zip(images, proposals))
    return (time.perf_counter() - t) / len(images), n // len(images)


def fast_against_classic(classic: LoadedModel, fast: LoadedModel, images: list[np.ndarray]) -> None:
    """Part 3: same images, same proposals (the default selective search, computed once), each at its defaults."""
    proposals = [selective_search(img, ProposeConfig()) for img in images]
    detect_image(fast, images[0], DetectConfig(), proposals[0])  # warm-up of both
    detect_image(classic, images[0], DetectConfig(), proposals[0][:50])
    t_fast, n_fast = seconds_per_image(fast, images, proposals)
    t_classic, n_classic = seconds_per_image(classic, images, proposals)
    print(f"same images and proposals: classic R-CNN {t_classic:.2f} s/image ({n_classic} regions, one backbone pass each), "
          f"Fast R-CNN {t_fast:.3f} s/image ({n_fast} regions, one backbone pass per image)")
    print(f"images={len(images)} fast_vs_classic_speedup={t_classic / t_fast:.1f}x")


def untrained_faster() -> LoadedModel:
    from dataclasses import replace

    from rcnn.arch.faster.config import FasterConfig
    from rcnn.arch.faster.network import FasterRCNN

    config = FasterConfig()
    net = FasterRCNN(config, 2).eval()
    return LoadedModel(net, replace(model_config(config, ["raccoon"], ProposeConfig(), net), arch="faster"))


def faster_against_fast(fast: LoadedModel, faster: LoadedModel, images: list[np.ndarray]) -> None:
    """Part 5: whole-image detection (no stored proposals), Fast R-CNN + selective search against Faster R-CNN."""
    for model in (fast, faster):
        detect_image(model, images[0], DetectConfig())  # warm-up
    t = {fast.arch: 0.0, faster.arch: 0.0}
    steps = {fast.arch: np.zeros(2), faster.arch: np.zeros(2)}
    for img in images:  # in turn, so that both see the same machine
        for model in (fast, faster):
            t0 = time.perf_counter()
            _, secs, _ = detect_image(model, img, DetectConfig())
            t[model.arch] += time.perf_counter() - t0
            steps[model.arch] += (secs["propose"], secs["score"])
    k = len(images)
    for arch in t:
        print(f"{arch}: {t[arch] / k:.3f} s/image whole-image detection (proposals {steps[arch][0] / k:.3f} s, "
              f"network {steps[arch][1] / k:.3f} s)")
    print(f"images={k} faster_s_per_image={t[faster.arch] / k:.3f} fast_with_selective_search_s_per_image="
          f"{t[fast.arch] / k:.3f} faster_vs_fast_speedup={t[fast.arch] / t[faster.arch]:.2f}x")


def onnx_against_torch(classic: LoadedModel, fast: LoadedModel, images: list[np.ndarray]) -> None:
    """Part 4: the same network in PyTorch and in onnxruntime, on the same images and proposals."""
    from rcnn.export import onnx_model

    proposals = [selective_search(img, ProposeConfig()) for img in images]
    print(f"torch threads: {torch.get_num_threads()} (onnxruntime gets as many)")
    for model in (fast, classic):
        n = DetectConfig().proposals_for(model.arch)
        t = time.perf_counter()
        onnx = onnx_model(model)
        t_export = time.perf_counter() - t
        score_regions(model, images[0], proposals[0][:20])  # warm-up of both
        score_regions(onnx, images[0], proposals[0][:20])
        t_torch = t_onnx = diff = 0.0
        regions = 0
        for img, boxes in zip(images, proposals):  # in turn, image by image: load changes hit both alike
            b = boxes[:n]
            regions += len(b)
            t = time.perf_counter()
            ref, _ = score_regions(model, img, b)
            t_torch += time.perf_counter() - t
            t = time.perf_counter()
            got, _ = score_regions(onnx, img, b)
            t_onnx += time.perf_counter() - t
            diff = max(diff, float(np.abs(got - ref).max()))
        k = len(images)
        print(f"{model.arch}: {regions // k} regions an image, PyTorch {t_torch / k:.3f} s/image, onnxruntime "
              f"{t_onnx / k:.3f} s/image, export {t_export:.1f} s once per run, max |score difference| {diff:.1e}")
        print(f"images={k} {model.arch}_onnx_vs_torch_speedup={t_torch / t_onnx:.2f}x export_s={t_export:.1f} "
              f"break_even_images={t_export / max(t_torch / k - t_onnx / k, 1e-9):.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, help="a model folder from `rcnn train` (our defaults)")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--regions", type=int, default=200, help="regions per image for the score-agreement check")
    ap.add_argument("--fast-model", type=Path, help="a model folder from `rcnn train --arch fast`")
    ap.add_argument("--faster-model", type=Path, help="a model folder from `rcnn train --arch faster`")
    ap.add_argument("--parts", default="1,2,3,4,5", help="which comparisons to run (comma-separated)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    ds = raccoon_dataset("test", args.images)
    images = [load_rgb(a.path) for a in ds.images]
    ours = load_model(args.model) if args.model else untrained()
    fast = (load_model(args.fast_model) if args.fast_model else untrained_fast()) if parts & {"3", "4", "5"} else None
    if "5" in parts:
        faster_against_fast(fast, load_model(args.faster_model) if args.faster_model else untrained_faster(), images)
    if "3" in parts:
        fast_against_classic(ours, fast, images)
    if "4" in parts:
        onnx_against_torch(ours, fast, images)
    if "1" in parts:
        same_model(ours, images, args.regions)
    if "2" in parts:
        against_reference(ours, images)


def same_model(ours: LoadedModel, images: list[np.ndarray], regions: int) -> None:

    # 1. one pass per region against batches, same model and proposals
    t_single = t_batch = 0.0
    max_diff = 0.0
    n_regions = 0
    for img in images:
        boxes = selective_search(img, model_propose_config(ours))[:regions]
        n_regions += len(boxes)
        t = time.perf_counter()
        single, _ = score_regions(ours, img, boxes, batch_size=1)
        t_single += time.perf_counter() - t
        t = time.perf_counter()
        batched, _ = score_regions(ours, img, boxes)  # the default (auto) batch size
        t_batch += time.perf_counter() - t
        max_diff = max(max_diff, float(np.abs(single - batched).max()))
    print(f"same model and proposals, {n_regions} regions: one pass per region {t_single:.1f} s, "
          f"batched {t_batch:.1f} s, ratio {t_single / t_batch:.2f}x, max |score difference| {max_diff:.2e}")
    assert max_diff < 1e-4, max_diff
    print(f"images={len(images)} batched_vs_single={t_single / t_batch:.2f}x max_score_diff={max_diff:.1e}")


def against_reference(ours: LoadedModel, images: list[np.ndarray]) -> None:
    """Part 2: the reference pipeline's settings against our classic defaults, whole images."""
    reference_model = untrained(224)
    ref_cfg = DetectConfig(threshold=0.8, score_proposals=2000, forward_batch=1,
                           propose=ProposeConfig(mode="quality", max_side=0, max_proposals=2000))
    t = time.perf_counter()
    for img in images:
        detect_image(reference_model, img, ref_cfg)
    t_ref = (time.perf_counter() - t) / len(images)
    t = time.perf_counter()
    for img in images:
        detect_image(ours, img, DetectConfig())
    t_ours = (time.perf_counter() - t) / len(images)
    print(f"reference settings: {t_ref:.2f} s/image; our classic defaults ({ours.input_size} px, "
          f"{DetectConfig().proposals_for('rcnn')} proposals, batch {auto_batch_size(ours.device)}): {t_ours:.2f} s/image")
    print(f"images={len(images)} speedup_vs_reference={t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
