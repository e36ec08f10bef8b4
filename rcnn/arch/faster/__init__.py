"""Faster R-CNN (Ren et al., NIPS 2015): ``--arch faster``.

Fast R-CNN (:mod:`rcnn.arch.fast`) with its regions proposed by a region proposal network on the
same stride-16 feature map, trained jointly (torchvision's approximate joint training: the RPN's
objectness and box losses plus the head's, one step). Detection needs only the image: no selective
search. Trains from a parsed dataset file; torch-free to import.
"""

from __future__ import annotations

from ..spec import ArchSpec

SPEC = ArchSpec(
    name="faster",
    summary="Faster R-CNN on PARSED (`rcnn parse`); it learns its own proposals",
    title="Faster R-CNN (learned proposals, no selective search)",
    input="parsed",
    proposals=False,
    resumable=False,
    input_error="--arch faster trains from a parsed dataset file (`rcnn parse`), without --proposals or --resume",
    stages=(),
    settings="rcnn.arch.faster.config:FasterConfig",
    pipeline_key="faster",
    trainer="rcnn.arch.faster.train:fit",
    network="rcnn.arch.faster.network:build",
    check_config="rcnn.arch.faster.config:check_model_config",
    scorer="rcnn.arch.fast.network:score_boxes",  # given regions, the head scores them as Fast R-CNN's does
    graph="rcnn.arch.fast.export:FastGraph",  # the network over given regions (detection runs the RPN in torch)
    channels_last=False,
    score_threshold=0.05,  # Fast R-CNN's, measured on the dev splits (rcnn.arch.fast)
    # The first 1000 of the RPN's proposals (all it keeps after NMS at detection)
    scored_proposals=1000,
    detector="rcnn.arch.faster.network:detect_regions",
    proposer="rcnn.arch.faster.network:propose_regions",
)
