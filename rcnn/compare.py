"""The family side by side: ``rcnn pipeline DATA --arch rcnn,fast,... --out RUN``.

One parse and, for the architectures whose stages include it, one selective-search propose stage, at
``RUN/parsed.json`` and ``RUN/proposals/``; then each architecture's pipeline run into ``RUN/<arch>/`` (a full
run folder: its ``parsed.json``, model, detections, ``metrics.json`` and report page) on that same split and
those same proposals; then ``RUN/compare.json`` and ``RUN/compare.md``, one row per architecture, each value
read from that architecture's ``metrics.json``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .arch import get_arch
from .io import output_dir, print_err, write_json, write_text
from .pipeline import PipelineConfig, PipelineReport, Prepared, StageTimer, on_cluster, prepare_stages, run_pipeline

COMPARE_FORMAT = "rcnn-compare-v1"
__all__ = ["COMPARE_FORMAT", "Comparison", "check_family", "compare_row", "format_table", "run_family"]


@dataclass
class Comparison:
    """What :func:`run_family` measured; :meth:`to_json` is ``compare.json``."""

    dataset: str  # the DATA given
    classes: list[str]
    test_images: int
    train_images: int
    archs: list[dict[str, Any]]  # compare_row of each architecture, in the order given
    seconds: dict[str, float]  # the shared stages (parse, propose) and the whole comparison ("total")

    def to_json(self) -> dict[str, Any]:
        return {"format": COMPARE_FORMAT, "dataset": self.dataset, "classes": self.classes,
                "test_images": self.test_images, "train_images": self.train_images, "archs": self.archs,
                "seconds": self.seconds}


def check_family(archs: list[str]) -> list[str]:
    """``archs`` if each is a registered architecture, named once, and there are at least two.

    Raises:
        ValueError: one line naming the value.
    """
    for name in archs:
        get_arch(name)  # names the registered ones
    twice = next((name for name in archs if archs.count(name) > 1), None)
    if twice is not None:
        raise ValueError(f"'arch={','.join(archs)}' names {twice} twice; name each architecture once")
    if len(archs) < 2:
        raise ValueError(f"'arch={','.join(archs)}' is one architecture; compare at least two (rcnn,fast)")
    return list(archs)


def run_family(data: str | Path, out: str | Path, config: PipelineConfig, archs: list[str],
               echo: Callable[[str], Any] = print, warn: Callable[[str], Any] = print_err) -> Comparison:
    """Run the pipeline of each architecture of ``archs`` on one parse (and one propose stage) of ``data`` into
    ``out/<arch>/``, then write ``out/compare.json`` and ``out/compare.md``.

    Args:
        config: the settings of every run (its ``arch`` is replaced by each of ``archs``).

    Raises:
        ValueError: ``archs`` names an unknown architecture or one twice, or fewer than two.
        DataError: ``out`` holds other files, or a stage fails (as :func:`rcnn.pipeline.run_pipeline`).
    """
    archs = check_family(archs)
    with on_cluster(config):  # one cluster (or connection) for every run
        out = output_dir(out, "compare")
        timer = StageTimer(echo)
        selective = any("propose" in get_arch(name).stages for name in archs)
        shared = prepare_stages(data, out, config, timer, echo, warn, propose=selective)
        reports = []
        for name in archs:
            echo(f"\n===== {name}: {get_arch(name).title} =====")
            reports.append(run_pipeline(data, out / name, replace(config, arch=name), echo, warn,
                                        prepared=_share(shared, name, timer.seconds)))
    ds = shared.dataset
    result = Comparison(str(data), list(ds.classes), len(ds.split("test")), len(ds.split("train")),
                        [compare_row(r) for r in reports], timer.total())
    write_json(out / "compare.json", result.to_json())
    write_text(out / "compare.md", format_table(result, archs))
    return result


def _share(shared: Prepared, arch: str, seconds: dict[str, float]) -> Prepared:
    """What one architecture's run gets of the shared stages: the parse, and the proposals if it has that stage."""
    proposals = shared.proposals if "propose" in get_arch(arch).stages else None
    spent = {stage: s for stage, s in seconds.items() if stage == "parse" or (proposals is not None and stage == "propose")}
    return Prepared(shared.dataset, proposals, spent)


def compare_row(report: PipelineReport) -> dict[str, Any]:
    """One architecture's row of ``compare.json``: values of its ``metrics.json`` (``detect_seconds_per_image``
    includes the proposals: metrics' ``detect_seconds_per_image_with_proposals``)."""
    return {
        "arch": report.arch,
        "map50": report.map50,
        "map50_95": report.map50_95,
        "ap50": report.ap50,
        "proposal_recall50": report.proposal_recall50,
        "scored_proposal_recall50": report.scored_proposal_recall50,
        "train_seconds": report.seconds.get("train"),
        "detect_seconds_per_image": report.detect_seconds_per_image_with_proposals,
        "score_seconds_per_image": report.detect_seconds_per_image,  # without the proposals
        "model_mb": report.model_mb,
        "backbone": report.backbone,
        "seconds": report.seconds,
    }


def format_table(result: Comparison, archs: list[str]) -> str:
    """``compare.md``: the rows of ``compare.json`` as a markdown table, with the command and the date."""
    scores = [("mAP@0.5", "map50"), ("mAP@[.5:.95]", "map50_95"), *[(f"AP50 {c}", f"ap50.{c}") for c in result.classes],
              ("proposal recall@0.5", "proposal_recall50")]
    measures = [("train s", "train_seconds"), ("detect s/image (with proposals)", "detect_seconds_per_image"),
                ("model MB", "model_mb")]
    lines = [f"# The family on {result.dataset}", "",
             f"`rcnn pipeline {result.dataset} --arch {','.join(archs)}`, {datetime.date.today().isoformat()}: "
             f"{result.train_images} training and {result.test_images} test images; every setting of a run is in its "
             "`<arch>/metrics.json`.", "",
             "| arch | " + " | ".join(title for title, _ in scores + measures) + " |",
             "|---|" + "---:|" * len(scores + measures)]
    for row in result.archs:
        cells = [_cell(row, key, "{:.3f}") for _, key in scores] + [_cell(row, key, "{}") for _, key in measures]
        lines.append(f"| {row['arch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], key: str, form: str) -> str:
    """A table cell: the row's value at ``key`` (``ap50.<class>``: one class's AP) in ``form``; "-" for none."""
    value: Any = row
    for part in key.split(".", 1):
        value = value.get(part) if isinstance(value, dict) else None
    return "-" if value is None else form.format(value)
