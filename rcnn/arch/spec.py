"""What an architecture is to the rest of rcnn: :class:`ArchSpec`, one per folder of ``rcnn/arch/``.

Torch-free: the heavy parts (network, trainer, scorer, export graph) are named as ``"module:attr"``
strings and imported on first use (:func:`load`), so ``import rcnn.arch`` and ``rcnn --help`` stay fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

INPUTS = ("regions", "parsed")  # a region-set folder of `rcnn crop`; a parsed dataset file of `rcnn parse`


def load(ref: str) -> Any:
    """The object a ``"module:attr"`` reference names, imported now (``"rcnn.arch.fast.train:fit"``)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: what it trains from, where its parts live, and its detection defaults.

    The detection defaults are what ``rcnn detect`` uses when the option is not given (as torchvision's
    Faster R-CNN takes ``box_score_thresh`` as a constructor parameter): they belong to the architecture.
    """

    name: str  # the registry key, ``--arch NAME`` and ``config.json``'s "arch"
    summary: str  # what `rcnn train --arch NAME` trains on, for its help
    title: str  # what it is, for `rcnn pipeline --arch`'s help
    input: str  # "regions": trains from a region-set folder (`rcnn crop`); "parsed": from a parsed file (`rcnn parse`)
    proposals: bool  # trains (and detects) on stored region proposals (`rcnn train --proposals`)
    resumable: bool  # `rcnn train --resume` continues an interrupted run
    input_error: str  # the usage error when the input or --proposals/--resume do not fit
    stages: tuple[str, ...]  # the pipeline's stages before training (of "propose", "crop")
    settings: str  # "module:Class": the training settings dataclass (torch-free module)
    pipeline_key: str  # rcnn.pipeline.PipelineConfig's field holding those settings
    trainer: str  # "module:fn": fit(source, out, settings, proposals=, resume=, echo=, progress=) -> report
    network: str  # "module:fn": build(ModelConfig) -> the untrained nn.Module a model folder describes
    check_config: str  # "module:fn": validate the arch's fields of a ModelConfig; raises ValueError
    scorer: str  # "module:fn": score(model, image, boxes, batch_size) -> (probs [N, C], deltas [N, C, 4])
    # "module:Class": the ONNX export graph, an nn.Module wrapping the network, with INPUTS (names), DYNAMIC
    # (axes), inputs(model, image, boxes) -> {name: array} and run(session, feeds, batch) -> (scores, deltas)
    graph: str
    channels_last: bool  # the loaded network runs in channels-last memory
    # Detection defaults (rcnn.detect.DetectConfig: threshold None and score_proposals 0 mean these):
    score_threshold: float  # keep class scores at or above this
    scored_proposals: int  # score the first N stored proposals of each image
    forward_batch: int = 0  # regions per forward pass; 0 = auto (rcnn.model.auto_batch_size: 4 on a CPU, 64 on a GPU)
    # "module:fn" for an architecture that proposes its own regions (no selective search at detection):
    # detector(model, image, n) -> (boxes [N, 4] original pixels, probs [N, C], deltas [N, C, 4]) of its first n
    # proposals, from one pass over the image. "": detection runs selective search, then ``scorer``.
    detector: str = ""
    # "module:fn" for an architecture whose model can propose regions for the others (`rcnn propose --model`):
    # proposer(model, image, n) -> boxes [N, 4] (original pixels, best first). "": it cannot.
    proposer: str = ""
    # How many proposals per image `rcnn propose --model` keeps by default: 1000, torchvision's Faster R-CNN's
    # test-time RPN (rpn_post_nms_top_n_test), half of selective search's 2000 since learned ones are ranked by objectness
    proposer_max: int = 1000

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"'input={self.input}' is invalid; valid inputs are {', '.join(INPUTS)}")

    @property
    def own_proposals(self) -> bool:
        """Whether its models find their own regions at detection (no selective search)."""
        return bool(self.detector)

    def settings_class(self) -> type:
        """The training settings dataclass (no torch import)."""
        return load(self.settings)

    def part(self, name: str) -> Any:
        """One of the heavy parts (``"trainer"``, ``"network"``, ``"scorer"``, ...), imported now."""
        return load(getattr(self, name))
