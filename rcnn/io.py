"""Small I/O helpers: atomic writes and image loading with clear errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` to ``path``, atomically."""
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return write_atomic(path, writer)


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable[list[Any]]) -> Path:
    """Write a CSV file (header, then rows), atomically."""
    def writer(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return write_atomic(path, writer)


def print_err(message: str) -> None:
    """The default sink of per-file problems: one line on standard error."""
    print(message, file=sys.stderr, flush=True)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, raising :class:`DataError` naming the file on any problem."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DataError(f"{what} {path} is not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise DataError(f"{what} {path} is not valid JSON: {str(e).splitlines()[0][:200]}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# --------------------------------------------------------------------------- ownership
#
# A command writes only into folders it owns and over files it wrote. A folder is owned
# when it carries MARKER (written by the command that created it, naming its kind); a
# single output file is owned when it is JSON with an "rcnn-..." format tag (or a PNG
# with an "rcnn" text chunk). Anything else that is already there is the user's: refuse.

MARKER = ".rcnn.json"
FOLDER_FORMAT = "rcnn-folder-v1"


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in ``path``'s marker (``"detect"``, ``"proposals"``, ...), or None."""
    marker = Path(path) / MARKER
    try:
        d = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(d, dict) and d.get("format") == FOLDER_FORMAT and isinstance(d.get("kind"), str):
        return d["kind"]
    return None


def _mark(path: Path, kind: str) -> None:
    write_json(path / MARKER, {"format": FOLDER_FORMAT, "kind": kind})


def output_dir(path: str | os.PathLike, kind: str, what: str = "--out") -> Path:
    """Create ``path`` (or take it back) as an output folder of ``kind``.

    A new or empty folder is claimed; a folder marked with the same kind is reused (a re-run
    or resume); anything else already holds someone's files and is refused.

    Raises:
        DataError: ``path`` is a file, another kind's folder, or a folder of files rcnn did not write.
    """
    path = Path(path)
    _check_parents(path, what)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder")
    if path.is_dir():
        for _ in range(50):
            found = folder_kind(path)
            if found == kind:
                return path
            if found is not None:
                raise DataError(f"{what} {path} holds rcnn {found} output, not {kind}; choose another folder")
            entries = list(path.iterdir())
            if not entries or not all(e.name.startswith(f".{MARKER}.") for e in entries):
                break
            time.sleep(0.1)  # only a marker being written: another process (a shard) is claiming the folder now
        if entries:
            raise DataError(f"{what} {path} already holds files that rcnn did not write; choose a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    _mark(path, kind)  # shards claiming one new folder at once write the same marker, atomically
    return path


def output_subdir(folder: str | os.PathLike, name: str) -> Path:
    """Create ``folder/name`` (``boxes``, ``images``, ``shards``) as a real folder, or take back the one there.

    Raises:
        DataError: ``folder/name`` is a link (rcnn writes no output through links: it could lead anywhere) or a file.
    """
    path = Path(folder) / name
    if path.is_symlink():
        raise DataError(f"{path} is a link; rcnn writes no output through links (remove it)")
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} is a file, not a folder (remove it)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_output_dir(root: str | os.PathLike, name: str, kind: str) -> Path:
    """Create a fresh, auto-numbered folder ``root/name``, ``root/name2``, ... atomically.

    ``mkdir`` without ``exist_ok`` is the test-and-set: two runs started together never share a folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 100_000):
        path = root / (name if k == 1 else f"{name}{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _mark(path, kind)
        return path
    raise DataError(f"no free run folder name under {root}")  # pragma: no cover


@contextmanager
def folder_lock(folder: str | os.PathLike, who: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``folder/.lock``, flock) or fail at once when another process holds it."""
    import fcntl

    with open(Path(folder) / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(f"{folder} is in use by another {who}; wait for it to finish or choose another folder") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_own_file(path: str | os.PathLike, tag: str) -> bool:
    """Whether ``path`` is an output of this very kind: JSON whose ``format`` is ``tag``, or a PNG whose ``rcnn`` text is ``tag``."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as im:
                return getattr(im, "text", {}).get("rcnn") == tag
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            return False
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("format") == tag


def check_output_file(path: str | os.PathLike, tag: str, inputs: tuple[str | os.PathLike, ...] = (), what: str = "--out",
                      folders: tuple[str, ...] = ()) -> Path:
    """Refuse to write ``path`` unless it is new or an earlier output of the same kind (``tag``), and never one of ``inputs``.

    A path inside an rcnn output folder (marked with :data:`MARKER`) is refused too, unless its kind is in ``folders``.

    Raises:
        DataError: naming the path.
    """
    path = Path(path)
    _check_parents(path, what)
    if any(same_file(path, i) for i in inputs):
        raise DataError(f"{what} {path} is one of the inputs; choose another path")
    kind = folder_kind(path.parent)
    if kind is not None and kind not in folders:
        raise DataError(f"{what} {path} lies inside an rcnn {kind} folder; choose a path outside it")
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise DataError(f"{what} {path} is a folder; give a file path")
        if not is_own_file(path, tag):
            raise DataError(f"{what} {path} exists and was not written by this rcnn command; choose another path (or remove it yourself)")
    return path


def _check_parents(path: Path, what: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{what} {path}: {parent} is a file, not a folder")
            return


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (False when either does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def digest(*parts: Any) -> str:
    """SHA-1 (hex) of JSON-serialisable parts: a cache key that changes when any part does."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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


def find_images(inputs: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Expand files, folders (recursively: the files with one of ``extensions``) and glob patterns into a sorted list.

    Raises:
        DataError: an input matches nothing.
    """
    import glob

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in extensions)
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
