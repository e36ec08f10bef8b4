"""The model folder, for every architecture: its config, its atomic commit, and loading it to run.

A model folder holds everything ``rcnn detect`` needs: ``model.pt`` (a plain state
dict, loaded with ``weights_only=True``) and ``config.json`` (a :class:`ModelConfig`:
classes, input size, normalisation, backbone, the proposal/crop settings used in
training, and the digests that make the folder's replacement atomic).
"""

from __future__ import annotations

import hashlib
import io as _io
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .arch import ARCHS, LEGACY_ARCH, ArchSpec, get_arch
from .arch.rcnn.config import MAX_INPUT_SIZE
from .arch.rcnn.network import RegionClassifier, make_head, preprocess
from .backbones import BACKBONES
from .crop import CropConfig
from .devices import pick_device
from .errors import DataError
from .io import file_digest, read_json, write_atomic, write_json
from .postprocess import DEFAULT_POSTPROCESS, PostProcess
from .propose import ProposeConfig

__all__ = ["MAX_INPUT_SIZE", "MODEL_FORMAT", "WEIGHTS", "LoadedModel", "ModelConfig", "RegionClassifier", "auto_batch_size",
           "build_network", "commit_model", "finish_commit", "load_model", "load_state", "make_head", "pick_device",
           "preprocess", "read_committed"]


def auto_batch_size(device: torch.device | str) -> int:
    """Crops per forward pass when none is given: small batches are fastest on a CPU.

    Measured with EfficientNet-Lite0 at 224 px on 2 cores: 115 crops/s at batch 1, 184 at 4,
    134 at 8, 113 at 16 and 63 at 32 (larger batches fall out of the caches).
    """
    return 64 if torch.device(device).type == "cuda" else 4


@dataclass
class LoadedModel:
    """A model folder, loaded: the network in eval mode and its typed settings."""

    net: nn.Module  # the network of its architecture (rcnn.arch: ArchSpec.network builds it)
    config: ModelConfig
    device: torch.device = torch.device("cpu")
    folder: Path | None = None  # the model folder it was loaded from (None: built in memory)

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.config.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.config.std

    @torch.inference_mode()
    def predict(self, crops: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of uint8 crops ``[N, H, W, 3]``.

        ``batch_size`` 0 picks :func:`auto_batch_size` for the device.
        """
        batch_size = batch_size or auto_batch_size(self.device)
        probs = np.zeros((len(crops), len(self.classes)), np.float32)
        deltas = np.zeros((len(crops), len(self.classes), 4), np.float32)
        for s in range(0, len(crops), batch_size):
            x = preprocess(crops[s : s + batch_size], self.mean, self.std, self.input_size, self.device)
            p, d = self.net.predict(x)
            probs[s : s + batch_size], deltas[s : s + batch_size] = p.float().cpu().numpy(), d.float().cpu().numpy()
        return probs, deltas

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def spec(self) -> ArchSpec:
        """Its architecture's registry entry."""
        return get_arch(self.config.arch)

    def score_boxes(self, image: np.ndarray, boxes: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[N, C]`` and box deltas ``[N, C, 4]`` of ``boxes`` (original pixels) in an RGB image,
        as its architecture scores them (:attr:`rcnn.arch.ArchSpec.scorer`): a Fast R-CNN model pools them from one
        pass over the image; an R-CNN model warps each region as in training and classifies the crops in batches.
        """
        return self.spec.part("scorer")(self, image, boxes, batch_size)

    def scores(self, crops: np.ndarray, batch_size: int = 0) -> np.ndarray:
        """Softmax class probabilities ``[N, n_classes]`` of uint8 crops ``[N, H, W, 3]``."""
        return self.predict(crops, batch_size)[0]


# --------------------------------------------------------------------------- the model folder

MODEL_FORMAT = "rcnn-model-v1"
WEIGHTS = "model.pt"


@dataclass
class ModelConfig:
    """Everything ``config.json`` of a model folder says, typed and validated in one place.

    ``files`` is the commit record: the SHA-1 of every file the training run wrote. A folder
    whose ``model.pt`` does not match it is half-written and is refused (see :func:`commit_model`).
    """

    classes: list[str]  # classes[0] is the implicit background
    backbone: str  # a name registered in rcnn.backbones.BACKBONES
    # rcnn: the network's input side (crops are warped to it); fast: the short side images are resized to
    # (see crop_side / short_side, which say which)
    input_size: int
    mean: tuple[float, float, float]  # input normalisation
    std: tuple[float, float, float]
    hidden: int = 128  # head width
    dropout: float = 0.2  # head dropout
    # A name in rcnn.arch.ARCHS; folders written before the field existed hold classic models
    arch: str = LEGACY_ARCH
    # Fast R-CNN only (input_size is then the short side images are resized to):
    max_size: int = 0  # long side limit of the resized image
    frozen_stages: int = 0  # backbone stages before the trained ones
    roi_size: int = 0  # RoIAlign output side
    fine_features: bool = False  # regions pooled from the stride-8 map too
    crop: CropConfig = field(default_factory=CropConfig)  # crop geometry used in training (size, context)
    propose: ProposeConfig = field(default_factory=ProposeConfig)  # selective search used in training
    train: dict[str, Any] = field(default_factory=dict)  # the TrainConfig, for the record
    # Class-wise NMS and box voting that `rcnn detect` uses unless told otherwise: fitted on the training run's
    # hold-out images (rcnn.tune); a folder written before they were fitted has the old fixed ones (PostProcess)
    nms_iou: float = DEFAULT_POSTPROCESS.nms_iou
    vote: bool = DEFAULT_POSTPROCESS.vote
    vote_iou: float = DEFAULT_POSTPROCESS.vote_iou
    # How they were fitted (rcnn.tune.PostProcessFit.record: hold-out images, mAP of the chosen and the default
    # setting); empty: not fitted
    postprocess: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-1, written at commit
    format: str = MODEL_FORMAT

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        from .parse import is_reserved_class

        c = self.classes
        if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) and x for x in c):
            raise ValueError(f"'classes' must be a list of names, background first, then at least one class; got {c!r}")
        if c[0] != "background" or any(is_reserved_class(x) for x in c[1:]) or len(set(c)) != len(c):
            raise ValueError(f"'classes' must start with 'background' and name each other class once; got {c!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"'backbone={self.backbone!r}' is unknown; valid backbones are {', '.join(BACKBONES)}")
        if not _is_int(self.input_size) or not 16 <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError(f"'input_size={self.input_size!r}' is invalid; it must be an integer in [16, {MAX_INPUT_SIZE}]")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if (not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v)
                    or (name == "std" and min(v) <= 0)):
                raise ValueError(f"'{name}={v!r}' is invalid; it must be 3 finite numbers (std > 0)")
            setattr(self, name, tuple(float(x) for x in v))
        if not _is_int(self.hidden) or not 1 <= self.hidden <= 65536 or not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"'hidden={self.hidden!r}', 'dropout={self.dropout!r}' are invalid")
        if self.arch not in ARCHS:
            raise ValueError(f"'arch={self.arch!r}' is unknown; this version reads {', '.join(ARCHS)} models")
        get_arch(self.arch).part("check_config")(self)
        if not (_is_number(self.nms_iou) and isinstance(self.vote, bool) and _is_number(self.vote_iou)):
            raise ValueError(f"'nms_iou={self.nms_iou!r}', 'vote={self.vote!r}', 'vote_iou={self.vote_iou!r}' must be "
                             "a number, true or false, and a number")
        PostProcess(self.nms_iou, self.vote, self.vote_iou)  # raises ValueError naming a value out of its range
        if not isinstance(self.postprocess, dict):
            raise ValueError("'postprocess' must be an object")
        if not isinstance(self.files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.files.items()):
            raise ValueError("'files' must map file names to SHA-1 digests")

    @classmethod
    def from_json(cls, d: Any) -> ModelConfig:
        """Build from the JSON of ``config.json``; raises ValueError naming the bad key or value."""
        if not isinstance(d, dict):
            raise ValueError(f"it holds a {type(d).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys are {', '.join(sorted(known))}")
        missing = [k for k in ("classes", "backbone", "input_size", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
        try:
            crop = CropConfig(**d["crop"]) if "crop" in d else CropConfig(size=d["input_size"], context=0)
            propose = ProposeConfig(**d["propose"]) if "propose" in d else ProposeConfig()
        except TypeError as e:
            raise ValueError(f"'crop' or 'propose' is malformed: {e}") from None
        if "train" in d and not isinstance(d["train"], dict):
            raise ValueError("'train' must be an object")
        return cls(**{**d, "crop": crop, "propose": propose})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "propose": self.propose.to_json()}  # selective search's as before the model fields

    @property
    def post(self) -> PostProcess:
        """The class-wise NMS and box voting this model detects with (fitted, or the defaults of an older folder)."""
        return PostProcess(self.nms_iou, self.vote, self.vote_iou)

    @property
    def crop_side(self) -> int | None:
        """The side region crops are warped to (a classic model's ``input_size``); None for a whole-image model."""
        return self.input_size if get_arch(self.arch).input == "regions" else None

    @property
    def short_side(self) -> int | None:
        """The short side whole images are resized to (``input_size`` of a whole-image model); None for a crop model."""
        return self.input_size if get_arch(self.arch).input != "regions" else None

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        """Read and validate ``folder/config.json``; raises DataError naming the file."""
        path = Path(folder) / "config.json"
        if not path.exists():
            raise DataError(f"{folder} is not a model folder: it has no config.json "
                            "(written by `rcnn train` when training finishes)")
        try:
            return cls.from_json(read_json(path, "model config"))
        except (ValueError, TypeError) as e:
            raise DataError(f"model config {path} is invalid: {e}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def commit_model(folder: str | Path, config: ModelConfig, files: dict[str, Callable[[Path], Any]]) -> None:
    """Replace the model in ``folder`` so that it is always either the old or the new complete model.

    1. every file is staged as ``NAME.next`` (atomically);
    2. ``config.json``, with the SHA-1 of each staged file, replaces the old one: the commit;
    3. each ``NAME.next`` is renamed over ``NAME`` (:func:`finish_commit`).

    A crash before 2 leaves the old config, which does not match the staged files; a crash
    after 2 leaves the new config, which :func:`load_model` and the next ``rcnn train`` resolve
    to the staged files.

    Args:
        files: file name -> a writer called with the path to write (``model.pt`` among them).
    """
    folder = Path(folder)
    staged = {}
    for name, writer in files.items():
        write_atomic(folder / f"{name}.next", writer)
        staged[name] = file_digest(folder / f"{name}.next")
    config.files = staged
    write_json(folder / "config.json", config.to_json())
    finish_commit(folder, config)


def finish_commit(folder: str | Path, config: ModelConfig | None) -> None:
    """Move committed ``*.next`` files into place and remove staged files no commit refers to (ours)."""
    folder = Path(folder)
    files = config.files if config is not None else {}
    for staged in folder.glob("*.next"):
        name = staged.name[: -len(".next")]
        if name in files and file_digest(staged) == files[name]:
            os.replace(staged, folder / name)
        else:
            staged.unlink()


def read_committed(folder: Path, name: str, config: ModelConfig) -> tuple[bytes, Path]:
    """The bytes of the committed ``name`` (from ``NAME``, or ``NAME.next`` while a commit is being finished),
    read once and checked against the commit record, so a concurrent commit can never mix two models.

    Raises:
        DataError: neither file matches the record (a half-written or altered folder).
    """
    expected = config.files.get(name)
    for path in (folder / name, folder / f"{name}.next"):
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        if expected is None or hashlib.sha1(data).hexdigest() == expected:  # None: written before commit records
            return data, path
    if expected is None:
        raise DataError(f"{folder} has no {name} (is it a model folder written by `rcnn train`?)")
    raise DataError(f"model folder {folder} is inconsistent: {name} does not match config.json (changed after "
                    "training, or an interrupted `rcnn train`); re-run `rcnn train` into it, with --resume to continue")


def load_model(folder: str | Path, device: str = "auto") -> LoadedModel:
    """Load a model folder written by ``rcnn train``.

    Raises:
        DataError: the folder, its config or its weights are missing, malformed, unsafe or inconsistent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"model folder not found: {folder}")
    cfg = ModelConfig.load(folder)
    data, weights = read_committed(folder, WEIGHTS, cfg)
    state = load_state(weights, "model weights", data)
    net = build_network(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise DataError(f"model folder {folder} is inconsistent: {weights.name} does not fit its config.json "
                        f"({str(e).splitlines()[0][:200]})") from None
    dev = pick_device(device)
    net = net.to(dev).eval()
    if get_arch(cfg.arch).channels_last:
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net, cfg, dev, folder)


def build_network(cfg: ModelConfig) -> nn.Module:
    """The untrained network a model config describes (its weights come from ``model.pt``)."""
    return get_arch(cfg.arch).part("network")(cfg)


def load_state(path: str | Path, what: str, data: bytes | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` of ``path`` (or of its bytes ``data``, already read),
    every failure a DataError naming the file."""
    path = Path(path)
    if data is None and not path.is_file():
        raise DataError(f"{what} {path} is missing or not a regular file")
    try:
        return torch.load(_io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(f"{what} {path} was refused: it holds objects other than tensors "
                        f"(unsafe or not written by rcnn): {str(e).splitlines()[0][:200]}") from None
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, AttributeError, ImportError, TypeError,
            IndexError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is corrupt or truncated: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
