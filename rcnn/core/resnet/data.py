"""Images for the study: CIFAR-10's binary distribution, any ImageFolder tree of 32×32 images, or generated digits.

- **CIFAR-10 binary** (``cifar-10-batches-bin``, from https://www.cs.toronto.edu/~kriz/cifar.html, never the
  pickled Python version): ``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``, each a run of
  3073-byte records (1 label byte, then the red, green and blue 32×32 planes), and ``batches.meta.txt`` with
  the class names, read as plain bytes with NumPy.
- **ImageFolder**: ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png``, or one tree ``DIR/<class>/…``
  split into train and test by a seeded fraction.
- :func:`make_digits` writes such a tree from scikit-learn's 8×8 digits on coloured 32×32 canvases (offline).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError

__all__ = ["SIDE", "ImageSplit", "StudyData", "CIFAR_TRAIN", "CIFAR_TEST", "read_cifar_batch", "load_cifar10",
           "load_imagefolder", "load_data", "make_digits"]

SIDE = 32  # every image is SIDE × SIDE × 3
RECORD = 1 + 3 * SIDE * SIDE  # bytes of one CIFAR-10 binary record
CIFAR_TRAIN = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageSplit:
    """Images of one split."""

    images: np.ndarray  # [N, 3, 32, 32] uint8 (NCHW, RGB)
    labels: np.ndarray  # [N] int64, indices into StudyData.classes

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class StudyData:
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    source: str  # "cifar10-bin" or "imagefolder"


def read_cifar_batch(path: str | os.PathLike, n_classes: int = 10) -> ImageSplit:
    """One CIFAR-10 binary batch file.

    Raises:
        DataError: the file is missing, not a regular file (a FIFO would block), empty, not a whole number of 3073-byte records, or has a label >= ``n_classes``.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):  # a FIFO or device would block (or never end) the read
        raise DataError(f"CIFAR-10 batch {path} is not a regular file")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e.strerror or e}") from None
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(f"CIFAR-10 batch {path} has {raw.size} bytes, not a whole number of {RECORD}-byte records "
                        "(truncated, or not the binary version)")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= n_classes:
        bad = int(np.argmax(labels >= n_classes))
        raise DataError(f"CIFAR-10 batch {path}: record {bad} has label {labels[bad]}, not below {n_classes}")
    return ImageSplit(images=records[:, 1:].reshape(-1, 3, SIDE, SIDE).copy(), labels=labels)


def _cifar_folder(path: Path) -> Path | None:
    for p in (path, path / "cifar-10-batches-bin"):
        if (p / CIFAR_TEST).is_file() or (p / CIFAR_TRAIN[0]).is_file():
            return p
    return None


def load_cifar10(path: str | os.PathLike) -> StudyData:
    """The CIFAR-10 binary distribution in ``path`` (the ``cifar-10-batches-bin`` folder or its parent)."""
    root = _cifar_folder(Path(path))
    if root is None:
        raise DataError(f"{path} is not a cifar-10-batches-bin folder ({CIFAR_TRAIN[0]} … {CIFAR_TEST})")
    classes = list(CIFAR_CLASSES)
    meta = root / "batches.meta.txt"
    if meta.is_file():
        names = [ln.strip() for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]
        if len(names) != len(classes):
            raise DataError(f"{meta} names {len(names)} classes, CIFAR-10 has {len(classes)}")
        classes = names
    parts = [read_cifar_batch(root / f, len(classes)) for f in CIFAR_TRAIN]
    train = ImageSplit(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return StudyData(train=train, test=read_cifar_batch(root / CIFAR_TEST, len(classes)), classes=classes,
                     source="cifar10-bin")


def _is_image_tree(path: Path) -> bool:
    from ...io import IMAGE_EXTENSIONS

    return any(f.suffix.lower() in IMAGE_EXTENSIONS for d in path.iterdir() if d.is_dir() for f in d.iterdir())


def _read_tree(path: Path) -> tuple[list[str], ImageSplit]:
    from torchvision.datasets.folder import find_classes, make_dataset

    from ...io import IMAGE_EXTENSIONS, load_rgb

    try:
        classes, index = find_classes(str(path))
        samples = make_dataset(str(path), index, extensions=IMAGE_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as e:  # a tree without class folders, or a class folder without images
        raise DataError(f"{path} is not an ImageFolder tree: {e}") from None
    images = np.empty((len(samples), 3, SIDE, SIDE), dtype=np.uint8)
    for k, (file, _) in enumerate(samples):
        arr = load_rgb(file)
        if arr.shape[:2] != (SIDE, SIDE):
            raise DataError(f"image {file} is {arr.shape[1]}x{arr.shape[0]}, not {SIDE}x{SIDE}")
        images[k] = arr.transpose(2, 0, 1)
    return classes, ImageSplit(images, np.array([c for _, c in samples], dtype=np.int64))


def load_imagefolder(path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0) -> StudyData:
    """``path/train`` and ``path/test`` ImageFolder trees, or one tree split by ``test_fraction`` (seeded, per class)."""
    path = Path(path)
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes, train = _read_tree(path / "train")
        test_classes, test = _read_tree(path / "test")
        if test_classes != classes:
            raise DataError(f"{path}/test has classes {test_classes}, {path}/train has {classes}")
        return StudyData(train, test, classes, "imagefolder")
    classes, every = _read_tree(path)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(every), dtype=bool)
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(every.labels == c))
        is_test[idx[:int(round(test_fraction * len(idx)))]] = True
    pick = lambda m: ImageSplit(every.images[m], every.labels[m])  # noqa: E731
    return StudyData(pick(~is_test), pick(is_test), classes, "imagefolder")


def load_data(path: str | os.PathLike) -> StudyData:
    """CIFAR-10 binary or an ImageFolder tree, whichever ``path`` is.

    Raises:
        DataError: ``path`` is neither (one line naming both layouts), or a file in it is broken.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--data {path} is not a folder")
    if _cifar_folder(path) is not None:
        return load_cifar10(path)
    if (path / "train").is_dir() and (path / "test").is_dir() or _is_image_tree(path):
        return load_imagefolder(path)
    raise DataError(f"--data {path} is neither a cifar-10-batches-bin folder ({CIFAR_TRAIN[0]} … {CIFAR_TEST}) "
                    "nor an ImageFolder tree (class folders of 32x32 images, or train/ and test/ of them)")


def make_digits(out: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0, limit: int = 0) -> Path:
    """Write scikit-learn's 8×8 digits as an ImageFolder tree of 32×32 colour PNGs: ``out/{train,test}/<digit>/``.

    Each digit is scaled ×3 (nearest) to 24×24 and placed at a random offset on a canvas of a random dark
    colour, drawn in a random light colour, so that colour and position carry no label.

    Args:
        limit: write at most this many images (0: all 1,797).

    Returns:
        ``out``, claimed as an rcnn ``resnet-data`` folder.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    from ...io import output_dir, write_atomic

    out = output_dir(out, "resnet-data")
    digits = load_digits()
    x, y = digits.images / 16.0, digits.target
    if limit:
        x, y = x[:limit], y[:limit]
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):  # the same share of every digit in test/, so both trees have every class
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:max(1, int(round(test_fraction * len(idx))))]] = True
    for k in range(len(y)):
        glyph = np.kron(x[k], np.ones((3, 3)))[..., None]  # (24, 24, 1) in [0, 1]
        bg, fg = rng.integers(0, 100, 3), rng.integers(156, 256, 3)  # a light digit on a dark canvas, random hues
        canvas = np.broadcast_to(bg, (SIDE, SIDE, 3)).astype(np.float64)
        r, c = rng.integers(0, SIDE - 24 + 1, 2)
        canvas[r:r + 24, c:c + 24] = glyph * fg + (1 - glyph) * canvas[r:r + 24, c:c + 24]
        path = out / ("test" if test[k] else "train") / str(y[k]) / f"{k:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(np.round(canvas).astype(np.uint8))
        write_atomic(path, lambda tmp: im.save(tmp, format="PNG"))
    return out
