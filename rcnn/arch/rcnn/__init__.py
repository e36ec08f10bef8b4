"""The classic R-CNN (Girshick et al., CVPR 2014): ``--arch rcnn``.

Selective-search regions are warped to crops (``rcnn crop``), a backbone + small head classifies each
crop, and a ridge regressor refines its box. Trains from a region-set folder; torch-free to import.
"""

from __future__ import annotations

from ..spec import ArchSpec

SPEC = ArchSpec(
    name="rcnn",
    summary="the region classifier on CROPS (`rcnn crop`)",
    title="crops and a region classifier",
    input="regions",
    proposals=False,
    resumable=True,
    input_error="--arch rcnn trains from a region-set folder (`rcnn crop`); --proposals is for --arch fast",
    stages=("propose", "crop"),
    settings="rcnn.arch.rcnn.config:TrainConfig",
    pipeline_key="train",
    trainer="rcnn.arch.rcnn.train:fit",
    network="rcnn.arch.rcnn.network:build",
    check_config="rcnn.arch.rcnn.config:check_model_config",
    scorer="rcnn.arch.rcnn.network:score_boxes",
    graph="rcnn.arch.rcnn.export:ClassicGraph",
    channels_last=True,
    # 0.3: measured when the classic path was the only one (a backbone pass per region).
    score_threshold=0.3,
    # One backbone pass per region: on raccoon 500 gave mAP@0.5 0.64 where 300 gave 0.44.
    scored_proposals=500,
)
