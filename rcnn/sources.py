"""Where detection reads from: image files, folders and globs, video files, cameras and streams.

Every input is a :class:`Source` with its output name; each one is read as a stream of :class:`Frame`
(an image is a stream of one frame), so that one loop scores images and videos alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError
from .io import IMAGE_EXTENSIONS, find_images, load_rgb


# Files recognised as videos by their extension; OpenCV's VideoCapture (FFmpeg) reads them.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".ogv", ".asf")
DEFAULT_FPS = 30.0  # for a source that does not say (most cameras)


def is_video(path: Path) -> bool:
    """Whether ``path`` is read as a video (by its extension, :data:`VIDEO_EXTENSIONS`)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def camera_source(source: str) -> int | str:
    """``--source``: a camera index ("0") as an int, anything else (a stream URL, a file) as is."""
    return int(source) if source.strip().isdigit() else source


def open_video(source: Path | int | str) -> tuple[cv2.VideoCapture, float, int]:
    """Open a video file, camera index or stream: (capture, frames per second, frame count or 0 if unknown).

    Raises:
        DataError: it does not exist or OpenCV cannot open it.
    """
    if isinstance(source, Path) and not source.is_file():
        raise DataError(f"video not found: {source}")
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        cap.release()
        if isinstance(source, int):
            raise DataError(f"cannot open camera {source}: there is no such device, or OpenCV cannot read it")
        raise DataError(f"cannot read video {source}: OpenCV cannot open it (not a video, or a codec this OpenCV lacks)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    return cap, fps, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)


def output_names(paths: list[Path], streams: int = 0) -> list[str]:
    """A distinct output name (no extension) for every input: its stem, or ``stem_2``, ``stem_3``, ...
    when several inputs share a stem (``a/x.jpg``, ``a/x.png``, ``b/x.jpg``).

    The frames of a video (and of the last ``streams`` inputs: a camera or stream) are written as ``<name>_<frame>``;
    a video whose frames could take an image's name (``clip.mp4`` beside ``clip_0.jpg``) is named ``clip_2``, ... too.
    """
    stems = {p.stem for p in paths}
    framed = [is_video(p) or k >= len(paths) - streams for k, p in enumerate(paths)]
    image_stems = {p.stem for p, f in zip(paths, framed) if not f}
    names: list[str] = []
    for p, f in zip(paths, framed):
        name, k = p.stem, 1
        while (name in names or (k > 1 and name in stems) or (f and _frames_clash(name, image_stems))
               or (not f and any(_frames_clash(n, {name}) for n, g in zip(names, framed) if g))):
            k += 1
            name = f"{p.stem}_{k}"
        names.append(name)
        image_stems |= set() if f else {name}
    return names


def _frames_clash(name: str, image_stems: set[str]) -> bool:
    """Whether a frame name ``<name>_<n>`` is also an image's stem (or the name of one renamed ``<stem>_<k>``)."""
    prefix = name + "_"
    return any(s.startswith(prefix) and s[len(prefix):].isascii() and s[len(prefix):].isdigit() for s in image_stems)


def find_inputs(inputs: list[str]) -> list[Path]:
    """Images and videos of ``inputs`` (files, folders searched recursively, globs), in order.

    Raises:
        DataError: an input matches nothing.
    """
    return find_images(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


@dataclass
class Frame:
    """One picture of a source: an image, or a frame of a video, camera or stream."""

    rgb: np.ndarray  # [H, W, 3] uint8
    index: int | None = None  # a video frame: its 0-based index in the video; None: an image
    time: float | None = None  # a video frame: its time in seconds (index / fps)


@dataclass
class Source:
    """One input of a run: an image or video file (a Path), a camera index (an int) or a stream URL."""

    target: Path | int | str
    name: str  # output name (no extension), distinct within a run (:func:`output_names`)

    @property
    def is_image(self) -> bool:
        return isinstance(self.target, Path) and not is_video(self.target)

    @property
    def label(self) -> str:
        """How lines and errors name it: the path, ``camera N`` or the URL."""
        return f"camera {self.target}" if isinstance(self.target, int) else str(self.target)

    @property
    def path(self) -> str:
        """What results name as their ``path``: a file resolved, else :attr:`label`."""
        return str(self.target.resolve()) if isinstance(self.target, Path) else self.label


def load_sources(paths: list[Path], stream: int | str | None) -> list[Source]:
    """Every input of a run, in order, each with its output name: the files, then the camera or stream."""
    targets: list[Path | int | str] = [*paths, *([stream] if stream is not None else [])]
    names = output_names([*paths, *([Path(f"camera{stream}" if isinstance(stream, int) else "stream")] if stream is not None else [])],
                         int(stream is not None))
    return [Source(t, n) for t, n in zip(targets, names)]


class VideoStream:
    """The frames of a video file, camera or stream, read one at a time (a context manager that releases it).

    Raises:
        DataError: the source does not exist or OpenCV cannot open it.
    """

    def __init__(self, source: Path | int | str) -> None:
        self.cap, self.fps, self.total = open_video(source)  # frames per second; frame count (0: unknown)

    def frames(self, limit: int | None = None) -> Iterator[Frame]:
        """Frames 0, 1, 2, ... until the end of the source or ``limit`` frames."""
        n = 0
        while limit is None or n < limit:
            ok, bgr = self.cap.read()
            if not ok:
                return
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), n, round(n / self.fps, 4))
            n += 1

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cap.release()


def image_frames(path: Path) -> Iterator[Frame]:
    """An image as a stream of one frame.

    Raises:
        DataError: the image cannot be read.
    """
    yield Frame(load_rgb(path))
