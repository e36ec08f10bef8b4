"""Fast R-CNN (Girshick, ICCV 2015) on selective-search proposals: ``--arch fast``.

The backbone runs once per image (resized so its short side is ``image_size``); every
proposal is pooled from its stride-16 feature map with RoIAlign and a small head gives
class scores and class-specific box deltas. Trains from a parsed dataset file and the
stored proposals of its images; torch-free to import.
"""

from __future__ import annotations

from ..spec import ArchSpec

SPEC = ArchSpec(
    name="fast",
    summary="Fast R-CNN on PARSED (`rcnn parse`) and --proposals",
    title="Fast R-CNN (one backbone pass per image)",
    input="parsed",
    proposals=True,
    resumable=False,
    input_error="--arch fast trains from a parsed dataset file (`rcnn parse`) and --proposals (`rcnn propose`), "
                "without --resume",
    stages=("propose",),
    settings="rcnn.arch.fast.config:FastConfig",
    pipeline_key="fast",
    trainer="rcnn.arch.fast.train:fit",
    network="rcnn.arch.fast.network:build",
    check_config="rcnn.arch.fast.config:check_model_config",
    scorer="rcnn.arch.fast.network:score_boxes",
    graph="rcnn.arch.fast.export:FastGraph",
    channels_last=False,
    # On the dev splits (raccoon train 120/40, bccd train/val) 0.05 gained 0.03 (raccoon) and 0.013 (bccd)
    # mAP@0.5 over 0.3.
    score_threshold=0.05,
    # Every stored proposal (up to rcnn propose's 2000): they share one backbone pass.
    scored_proposals=2000,
)
