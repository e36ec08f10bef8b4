"""The records of detection: one detected object, and one image's (or video frame's) result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Detection:
    """One detected object: ``box`` is (x1, y1, x2, y2) in pixels."""

    label: str
    score: float
    box: list[float]


@dataclass
class ImageResult:
    """The detections of one image (or scored video frame) and how they were made; ``path`` is the image
    (or video) resolved, ``width`` and ``height`` its size in pixels."""

    path: str
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per step: propose, score, total
    n_proposals: int = 0  # proposals scored
    name: str = ""  # output name (no extension), distinct within a run
    frame: int | None = None  # a video frame: its 0-based index in the video ...
    time: float | None = None  # ... and its time in seconds (frame / fps)


def describe(dets: Iterable[Detection]) -> str:
    """"disc 2, square 1" (or "no detections") of some detections."""
    counts = Counter(d.label for d in dets)
    return ", ".join(f"{k} {c}" for k, c in counts.items()) or "no detections"


@dataclass
class VideoSummary:
    """One video's (or camera's) line of ``summary.json``: what was read, scored and written."""

    video: str  # the file, resolved, or "camera N" / the stream's URL
    output: str | None  # the annotated video's file name in the run folder (None: --no-images)
    frames: int  # frames read
    scored: int  # frames scored (every vid_stride-th)
    vid_stride: int
    fps: float  # frames per second, as the source says (DEFAULT_FPS when it does not)
    seconds: float  # wall time of the whole video
