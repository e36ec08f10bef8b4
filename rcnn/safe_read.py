"""Reading untrusted dataset files safely, and naming them in one-line messages.

A dataset is input from anywhere: a file name may not be UTF-8, a path may be a FIFO (opening it would block),
a folder or a device, a file may be huge or an image a decompression bomb. Every reader (:mod:`rcnn.formats`)
and the parsed-records loader (:mod:`rcnn.records`) open files only through :func:`open_regular` /
:func:`read_regular`, tell what a path is with :func:`file_kind`, check images with :func:`image_size`, and
word their messages with :func:`display_path`, :func:`reason`, :func:`one_line` and :func:`quote`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from . import io
from .errors import DataError

# Control characters (a newline in a file name would split a message line) shown as U+FFFD.
_CONTROL = {c: "\ufffd" for c in [*range(32), 127]}


def display_path(path: str | os.PathLike) -> str:
    """``path`` as one line of printable UTF-8 text: bytes of a file name that are not UTF-8 (and
    control characters) become U+FFFD. For messages only; records keep the real path."""
    text = os.fsdecode(path)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.translate(_CONTROL)


def resolve_path(path: Path) -> str:
    """The absolute path, symlinks resolved where possible (never raising on a loop)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (a file name with undecodable bytes cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (runs of white space become one space), at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def quote(value: object, limit: int = 40) -> str:
    """A short, one-line ``repr`` of a value for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or directory; it is never opened for reading."""

    def __init__(self, path: str | os.PathLike, kind: str) -> None:
        super().__init__(f"{display_path(path)} is {kind}, not a regular file")
        self.kind = kind


def mode_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words: "a directory", "a FIFO", ..."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


@contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a regular file for binary reading; raise :class:`NotRegularFileError` for anything else.

    The type is checked before opening (a FIFO is never opened, so it cannot block) and again on the
    open descriptor, in case the path was swapped in between.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, mode_kind(st.st_mode))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode_kind(mode))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`); ``limit`` caps the size."""
    with open_regular(path) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(f"larger than {limit} bytes")
    return data


def file_kind(path: Path) -> str | None:
    """None when ``path`` does not exist, "file" for a regular file, else what it is or why it cannot be read."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError as e:  # an embedded NUL byte
        return f"unusable ({e})"
    return "file" if stat.S_ISREG(st.st_mode) else mode_kind(st.st_mode)


def is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder (False, never an error, for a path that cannot be looked at)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def reason(e: OSError) -> str:
    """An OSError's reason, without the (possibly undecodable) file name it carries."""
    if isinstance(e, NotRegularFileError):
        return f"{e.kind}, not a regular file"
    return one_line(e.strerror or e)


def check_image(path: Path) -> tuple[int, int]:
    """Decode the image (cheaply, at reduced scale for JPEG) to prove it is readable; return (w, h).

    Raises:
        DataError: the image has more than ``rcnn.io.MAX_IMAGE_PIXELS`` pixels.
        OSError, SyntaxError, ValueError, PIL errors: it cannot be read or decoded.
    """
    with open_regular(path) as f, Image.open(f) as im:
        size = im.size
        if size[0] * size[1] > io.MAX_IMAGE_PIXELS:
            raise DataError(f"image is {size[0]}x{size[1]}, larger than {io.MAX_IMAGE_PIXELS} pixels")
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


def image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """``((width, height), "")`` of a readable image, or ``(None, why not)``: the check every format's reader uses."""
    try:
        return check_image(path), ""
    except UnidentifiedImageError:
        return None, f"corrupt or unreadable image {display_path(path.name)}: not a recognised image file"
    except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as e:
        why = reason(e) if isinstance(e, OSError) and e.strerror else one_line(e)
        return None, f"corrupt or unreadable image {display_path(path.name)}: {why}"
