"""``MyResNet``: a small residual network for 32×32 colour images, one constructor argument per studied variant.

Layout (NCHW, float images in [0, 1]): ``input`` (identity, so a hook sees the image) → per-channel
normalisation → ``stem`` (3×3 convolution, norm, ELU) → ``block1`` … ``blockN`` (residual blocks; the first
block of each later stage halves the resolution and doubles the width) → ``pool`` (global average, flattened:
the last hidden layer) → ``fc`` (logits).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["NORMS", "SHORTCUTS", "PATHS", "MAX_STAGES", "MAX_BLOCKS", "STUDY_VARIANTS", "parse_variant", "ResNetConfig", "ResidualBlock", "MyResNet", "make_norm", "inner_width"]

NORMS = ("none", "batch", "group", "layer")
SHORTCUTS = ("identity", "conv1x1", "none")
PATHS = (1, 2, 4)
MAX_STAGES = 6  # a 32-pixel input halved at each later stage is 1 pixel at the sixth
MAX_BLOCKS = 100  # residual blocks in all (CIFAR's ResNet-110 has 54): more would train for hours, not a study
# The study: the default network, then one setting changed at a time.
STUDY_VARIANTS = ("batch-identity-p1", "none-identity-p1", "group-identity-p1", "layer-identity-p1",
                  "batch-conv1x1-p1", "batch-none-p1", "batch-identity-p2", "batch-identity-p4")


def _short(blocks: tuple[int, ...], limit: int = 12) -> str:
    """``blocks`` as a list, cut after ``limit`` entries and 60 characters (an error message stays one short line)."""
    text = ",".join(map(str, blocks[:limit])) + (",..." if len(blocks) > limit else "")
    return f"[{text[:60]}{'...' if len(text) > 60 else ''}]"


def parse_variant(name: str) -> dict[str, object]:
    """``"NORM-SHORTCUT-pPATHS"`` (as :attr:`ResNetConfig.variant` writes it) -> ``{"norm", "shortcut", "paths"}``.

    Raises:
        ValueError: naming the expected form and the allowed values.
    """
    parts = name.strip().split("-")
    if len(parts) != 3 or parts[0] not in NORMS or parts[1] not in SHORTCUTS or parts[2] not in {f"p{p}" for p in PATHS}:
        raise ValueError(f"'variant={name}' is invalid; write NORM-SHORTCUT-pPATHS with NORM in {', '.join(NORMS)}, "
                         f"SHORTCUT in {', '.join(SHORTCUTS)} and PATHS in {', '.join(map(str, PATHS))} (e.g. batch-identity-p1)")
    return {"norm": parts[0], "shortcut": parts[1], "paths": int(parts[2][1:])}


@dataclass(frozen=True)
class ResNetConfig:
    """The network's shape and the studied variant; saved in the run folder's ``config.json``."""

    norm: str = "batch"  # "none", "batch" (BatchNorm2d), "group" (GroupNorm), "layer" (GroupNorm with one group)
    shortcut: str = "identity"  # "identity" (1×1 projection only where the shape changes), "conv1x1" (on every block), "none" (plain)
    paths: int = 1  # parallel branches per block (ResNeXt-style grouped convolution), widened to keep the parameter count
    width: int = 16  # channels of the stem and the first stage; each later stage doubles it
    blocks: tuple[int, ...] = (2, 2, 2)  # residual blocks per stage (stages 2, 3, … start at half the resolution)
    group_norm_groups: int = 8  # groups of norm="group" (at most the channel count)
    classes: int = 10  # CIFAR-10

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"'norm={self.norm}' is invalid; valid norms are {', '.join(NORMS)}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"'shortcut={self.shortcut}' is invalid; valid shortcuts are {', '.join(SHORTCUTS)}")
        if self.paths not in PATHS:
            raise ValueError(f"'paths={self.paths}' is invalid; valid path counts are {', '.join(map(str, PATHS))}")
        if self.width < 4 or self.width % 4:
            raise ValueError(f"'width={self.width}' is invalid; it must be a multiple of 4 (paths=4 splits it), at least 4")
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))  # a JSON list becomes a tuple again
        if not self.blocks or any(b < 1 for b in self.blocks):
            raise ValueError(f"'blocks={list(self.blocks)}' is invalid; give at least one stage of at least one block")
        if len(self.blocks) > MAX_STAGES or sum(self.blocks) > MAX_BLOCKS:
            raise ValueError(f"'blocks={_short(self.blocks)}' is invalid; give at most {MAX_STAGES} stages "
                             f"(each later one halves the 32-pixel input) and at most {MAX_BLOCKS} blocks in all")
        if self.group_norm_groups < 1 or self.classes < 2:
            raise ValueError("'group_norm_groups' must be >= 1 and 'classes' >= 2")

    @property
    def variant(self) -> str:
        """A short name of the variant, e.g. ``batch-identity-p1``."""
        return f"{self.norm}-{self.shortcut}-p{self.paths}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """The normalisation layer of ``kind`` over ``channels`` feature maps.

    ``layer`` is ``GroupNorm(1, C)``: LayerNorm over C×H×W, with a per-channel affine.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"'norm={kind}' is invalid; valid norms are {', '.join(NORMS)}")


def inner_width(c_in: int, c_out: int, paths: int) -> int:
    """Channels between a block's two convolutions so that ``paths`` branches cost about what one does.

    The first 3×3 convolution is dense (``c_in → m``: ``paths`` first layers that each see the whole input),
    the second grouped (``m → c_out`` in ``paths`` groups). Equal weights, 9·(c_in·m + m·c_out/paths) =
    9·(c_in·c_out + c_out²), gives m = c_out·(c_in + c_out) / (c_in + c_out/paths), rounded to a multiple of ``paths``.
    """
    m = c_out * (c_in + c_out) / (c_in + c_out / paths)
    return max(paths, paths * round(m / paths))


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with norms and ELU, plus the shortcut: ``elu(body(x) + shortcut(x))``.

    Args:
        c_in, c_out: channels in and out; stride 2 halves the resolution (in the first convolution).
        shortcut: ``identity`` (a 1×1 projection + norm where the shape changes), ``conv1x1`` (always), ``none`` (no skip).
        paths: branches (``groups`` of the second convolution; the block is widened to keep the parameter count).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, shortcut: str, paths: int, groups: int = 8) -> None:
        super().__init__()
        mid = inner_width(c_in, c_out, paths)
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 3, stride, 1, bias=norm == "none"),
            make_norm(norm, mid, groups),
            nn.ELU(),
            nn.Conv2d(mid, c_out, 3, 1, 1, groups=paths, bias=norm == "none"),
            make_norm(norm, c_out, groups),
        )
        self.shortcut: nn.Module | None
        if shortcut == "none":
            self.shortcut = None
        elif shortcut == "conv1x1" or stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=norm == "none"), make_norm(norm, c_out, groups))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class MyResNet(nn.Module):
    """The study's network. ``forward(x[N, 3, 32, 32] in [0, 1]) -> logits[N, classes]``.

    ``mean``/``std`` (buffers, saved with the weights) normalise the input per channel; the trainer sets
    them from the training images.
    """

    def __init__(self, config: ResNetConfig = ResNetConfig()) -> None:
        super().__init__()
        self.config = config
        c, g = config.width, config.group_norm_groups
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))
        self.input = nn.Identity()  # the image itself, as a layer forward hooks can see
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=config.norm == "none"), make_norm(config.norm, c, g), nn.ELU())
        c_in, k = c, 0
        for stage, n in enumerate(config.blocks):
            c_out = c * 2 ** stage
            for i in range(n):
                k += 1
                stride = 2 if stage > 0 and i == 0 else 1
                self.add_module(f"block{k}", ResidualBlock(c_in, c_out, stride, config.norm, config.shortcut, config.paths, g))
                c_in = c_out
        self.n_blocks = k
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, config.classes)

    def layer_names(self) -> list[str]:
        """The layers the separability study looks at, input to logits: ``input``, ``stem``, ``block1``…, ``pool``, ``fc``."""
        return ["input", "stem", *(f"block{k}" for k in range(1, self.n_blocks + 1)), "pool", "fc"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input(x)
        x = self.stem((x - self.mean) / self.std)
        for k in range(1, self.n_blocks + 1):
            x = getattr(self, f"block{k}")(x)
        return self.fc(self.pool(x))
