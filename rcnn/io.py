"""Small I/O helpers: atomic writes and image loading with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Refuse decompression bombs explicitly rather than through PIL's warning.
MAX_IMAGE_PIXELS = 16_000 * 16_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves any earlier file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs should get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_atomic(path, lambda p: p.write_text(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, raising :class:`DataError` naming the file on any problem."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is not valid JSON: {e}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(width, height)`` of an image from its header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Load an image as RGB uint8, whatever its mode (grayscale, RGBA, palette, 16-bit).

    Returns:
        ndarray[H, W, 3] uint8.

    Raises:
        DataError: the file is missing, not an image, truncated or too large.
    """
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"image {path} is {im.size[0]}x{im.size[1]}, larger than {MAX_IMAGE_PIXELS} pixels")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (255.0 * (arr - arr.min()) / max(float(np.ptp(arr)), 1.0)).astype(np.uint8)
                im = Image.fromarray(arr)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Image.DecompressionBombError:
        raise DataError(f"image {path} is larger than {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def find_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of images.

    Raises:
        DataError: an input matches nothing.
    """
    import glob

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"no such file, folder or pattern: {item}")
            found += [Path(m) for m in matches if Path(m).is_file()]
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique
