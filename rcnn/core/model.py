"""``Model``: an ordered, named stack of layers with a loss and an optimiser.

Saved as one ``.npz`` of parameter arrays plus the architecture as JSON (stored as
bytes inside the archive). Loading never unpickles, so a model file cannot run code, and
checks every array header against the declared layers before building any, so a small
file cannot make it allocate more than the arrays it holds.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import secrets
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .activations import Linear, ReLU, Sigmoid, Softmax, Tanh
from .layers import FC, Conv2D, Flatten, Layer, MaxPool2D
from .losses import LOSSES, Loss
from .optimizers import OPTIMIZERS, Adam, Optimizer

__all__ = ["Model", "ModelFileError", "LAYERS"]

LAYERS: dict[str, type[Layer]] = {c.__name__: c for c in (FC, Conv2D, MaxPool2D, Flatten, Sigmoid, ReLU, Tanh, Linear, Softmax)}
FORMAT = "rcnn-core-model-v1"


class Model:
    """A feed-forward network.

    Args:
        layers: ``[(name, layer), ...]``, a dict name -> layer, or bare layers (named ``layer0``, ...).
        loss: a :class:`Loss` or its name (``binary_cross_entropy``, ``mse``, ``softmax_cross_entropy``).
        optimizer: an :class:`Optimizer` (default: Adam).
    """

    def __init__(self, layers: Iterable[tuple[str, Layer]] | dict[str, Layer] | Iterable[Layer], loss: Loss | str,
                 optimizer: Optimizer | None = None) -> None:
        items = list(layers.items()) if isinstance(layers, dict) else list(layers)
        named = [(f"layer{i}", it) if isinstance(it, Layer) else it for i, it in enumerate(items)]
        names = [n for n, _ in named]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        for n, layer in named:
            if not isinstance(layer, Layer):
                raise ValueError(f"'{n}' is not a Layer: {layer!r}")
        self.layers: list[tuple[str, Layer]] = named
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"'loss={loss}' is unknown; valid losses are {', '.join(LOSSES)}")
            loss = LOSSES[loss]()
        self.loss = loss
        self.optimizer = optimizer or Adam()
        self.output: np.ndarray | None = None

    def __getitem__(self, name: str) -> Layer:
        return dict(self.layers)[name]

    # ------------------------------------------------------------------ passes

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        for _, layer in self.layers:
            x = layer.forward(x, training)
        self.output = x
        return x

    def backward(self, y: np.ndarray) -> float:
        """Back-propagate the loss of the last forward output against ``y``; returns that loss."""
        if self.output is None:
            raise ValueError("call forward before backward")
        loss = self.loss.loss(self.output, y)
        grad = self.loss.grad(self.output, y)
        for _, layer in reversed(self.layers):
            grad = layer.backward(grad)
        return loss

    def parameters(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        params, grads = [], []
        for _, layer in self.layers:
            for k in layer.params:
                params.append(layer.params[k])
                grads.append(layer.grads[k])
        return params, grads

    def update(self) -> None:
        """One optimiser step with the gradients of the last backward pass."""
        self.optimizer.step(*self.parameters())

    # ------------------------------------------------------------------ training

    def train(self, x: np.ndarray, y: np.ndarray, epochs: int = 10, batch_size: int = 32, shuffle: bool = True,
              validation: tuple[np.ndarray, np.ndarray] | None = None, verbose: bool = False, seed: int | None = 0) -> dict[str, list[float]]:
        """Mini-batch training.

        Returns:
            ``{"train": [mean loss per epoch], "validation": [loss per epoch]}`` (the latter empty without data).
        """
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be at least 1")
        rng = np.random.default_rng(seed)
        history: dict[str, list[float]] = {"train": [], "validation": []}
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            total = 0.0
            for s in range(0, len(x), batch_size):
                idx = order[s : s + batch_size]
                self.forward(x[idx], training=True)
                total += self.backward(y[idx]) * len(idx)
                self.update()
            history["train"].append(total / len(x))
            if validation is not None:
                history["validation"].append(self.evaluate(*validation))
            if verbose:
                val = f"  validation {history['validation'][-1]:.4f}" if validation is not None else ""
                print(f"epoch {epoch}/{epochs}  train {history['train'][-1]:.4f}{val}", flush=True)
        return history

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
        """Mean loss on ``(x, y)`` without training."""
        out = self._forward_batches(x, batch_size)
        return self.loss.loss(out, y)

    def _forward_batches(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self.forward(x[s : s + batch_size], training=False) for s in range(0, len(x), batch_size)])

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Predictions: the output, mapped by the loss (softmax probabilities for softmax cross-entropy)."""
        return self.loss.predict(self._forward_batches(x, batch_size))

    # ------------------------------------------------------------------ files

    def architecture(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "layers": [{"name": n, "type": type(layer).__name__, "config": layer.config()} for n, layer in self.layers],
            "loss": self.loss.name,
            "optimizer": {"type": self.optimizer.name, "config": self.optimizer.config()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write parameters and architecture to one ``.npz``, atomically.

        The archive is written to a uniquely named temporary file beside ``path`` and then
        renamed over it, so concurrent saves never mix their bytes and a failed save leaves
        ``path`` as it was (and no temporary file behind).

        Returns:
            ``path``, as a :class:`Path`.
        """
        path = Path(path)
        arrays = {f"{n}/{k}": v for n, layer in self.layers for k, v in layer.params.items()}
        arrays["__architecture__"] = np.frombuffer(json.dumps(self.architecture()).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a file written by :meth:`save`; never unpickles.

        Everything is checked before any layer is built: the archive, the architecture, and
        each array's header (shape and dtype) against the parameters each declared layer would
        have (:meth:`Layer.param_shapes`). So a small file declaring huge layers fails at once,
        and loading never allocates more than the arrays the file holds.

        Raises:
            ModelFileError: (a ``ValueError``) the file is not a valid model file; the message is
                one line and names the file (and the layer, where one is at fault).
            OSError: the file cannot be opened.
        """
        with open(path, "rb") as f:
            try:
                return _read_model(cls, f, f"'{path}'")
            except ModelFileError:
                raise
            except _UNREADABLE as e:
                raise ModelFileError(f"'{path}': not a readable model file ({type(e).__name__}: {_one_line(e)})") from e

    def __repr__(self) -> str:
        lines = [f"  {n}: {layer!r}" for n, layer in self.layers]
        return "Model(\n" + "\n".join(lines) + f"\n  loss={self.loss.name}, optimizer={self.optimizer.name}\n)"


# ---------------------------------------------------------------------------- files


class ModelFileError(ValueError):
    """A file that :meth:`Model.load` cannot load; the message is one line naming the file."""


# what reading a damaged archive can raise, besides our own checks: zip, zlib, .npy header and
# JSON errors, short reads, unsupported zip features (encryption: RuntimeError)
_UNREADABLE = (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
               OverflowError, struct.error)
_ARCHITECTURE = "__architecture__"
_ARCH_KEYS = ("format", "layers", "loss", "optimizer")
_SPEC_KEYS = ("name", "type", "config")
_OPT_KEYS = ("type", "config")
# deflate cannot expand data more than about 1032-fold: a bound on what a compressed member can hold
_MAX_DEFLATE_RATIO = 1100


@dataclass(frozen=True)
class _Member:
    """One ``.npy`` array of the archive, known from its header only."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class _LayerPlan:
    """A declared layer, checked but not built."""

    name: str
    cls: type[Layer]
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _create_temp_beside(path: Path, attempts: int = 100) -> tuple[int, Path]:
    """Create a new, uniquely named ``.{name}.{random}.tmp`` in ``path``'s folder.

    Unlike ``tempfile.mkstemp`` (mode 0600) the file gets the usual permissions (0666 less
    the umask), which the saved model keeps after the rename.

    Returns:
        (an open, write-only file descriptor, the temporary path).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(attempts):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _read_model(cls: type[Model], f: BinaryIO, where: str) -> Model:
    """Check everything, then read the arrays and build the model (see :meth:`Model.load`)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"{where}: not a model file (not a zip archive: {_one_line(e)})") from e
    with zf:
        members = _read_members(zf, size, where)
        arch = _read_architecture(zf, members, where)
        plans = [_plan_layer(spec, i, where) for i, spec in enumerate(arch["layers"])]
        _check_names(plans, where)
        _check_arrays(plans, members, where)
        loss = _check_loss(arch["loss"], where)
        optimizer = _build_optimizer(arch["optimizer"], where)
        layers = [(plan.name, _build_layer(plan, zf, members, where)) for plan in plans]
    return cls(layers, loss, optimizer)


def _read_members(zf: zipfile.ZipFile, size: int, where: str) -> dict[str, _Member]:
    """Every member's ``.npy`` header, checked to describe data the archive really holds."""
    duplicates = [n for n, count in Counter(zf.namelist()).items() if count > 1]
    if duplicates:
        raise ModelFileError(f"{where}: the archive holds '{duplicates[0]}' more than once")
    members = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise ModelFileError(f"{where}: the archive member '{info.filename}' is not a .npy array")
        key = info.filename[: -len(".npy")]
        _check_member_size(info, size, key, where)
        members[key] = _read_header(zf, info, key, where)
    return members


def _check_member_size(info: zipfile.ZipInfo, size: int, key: str, where: str) -> None:
    """Refuse a member whose stated sizes the archive cannot back (so reading it allocates no more than the file holds)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelFileError(f"{where}: array '{key}' uses an unsupported zip compression (method {info.compress_type})")
    if info.header_offset + info.compress_size > size:
        raise ModelFileError(f"{where}: array '{key}' is truncated (the archive ends before its data)")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * _MAX_DEFLATE_RATIO + 1024
    if info.file_size > limit:
        raise ModelFileError(f"{where}: array '{key}' states {info.file_size} bytes but holds at most {limit}")


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, where: str) -> _Member:
    """The shape and dtype of one ``.npy`` member, read from its header alone."""
    fmt = np.lib.format
    with zf.open(info) as m:
        try:
            version = fmt.read_magic(m)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(m)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(m)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise ModelFileError(f"{where}: array '{key}' has no valid .npy header ({_one_line(e)})") from e
        header_bytes = m.tell()
    if dtype.hasobject:
        raise ModelFileError(f"{where}: array '{key}' is a pickled object array, which is never loaded")
    if any(d < 0 for d in shape):
        raise ModelFileError(f"{where}: array '{key}' has a negative dimension in shape {shape}")
    needed = header_bytes + math.prod(shape) * dtype.itemsize
    if needed > info.file_size:
        raise ModelFileError(f"{where}: array '{key}' is truncated: shape {shape} of {dtype} needs {needed} bytes, "
                             f"the archive holds {info.file_size}")
    return _Member(info, tuple(shape), dtype)


def _read_array(zf: zipfile.ZipFile, member: _Member) -> np.ndarray:
    with zf.open(member.info) as m:
        return np.lib.format.read_array(m, allow_pickle=False)


def _read_architecture(zf: zipfile.ZipFile, members: dict[str, _Member], where: str) -> dict[str, Any]:
    """The architecture dict, with its top-level keys checked."""
    member = members.get(_ARCHITECTURE)
    if member is None:
        raise ModelFileError(f"{where}: not a model file (no {_ARCHITECTURE})")
    if member.dtype != np.uint8 or len(member.shape) != 1:
        raise ModelFileError(f"{where}: {_ARCHITECTURE} must be bytes (1-D uint8), got {member.dtype} of shape {member.shape}")
    raw = _read_array(zf, member).tobytes()
    try:
        arch = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{where}: the architecture is not valid UTF-8 ({_one_line(e)})") from e
    except RecursionError as e:
        raise ModelFileError(f"{where}: the architecture is nested too deeply") from e
    except ValueError as e:
        raise ModelFileError(f"{where}: the architecture is not valid JSON ({_one_line(e)})") from e
    if not isinstance(arch, dict):
        raise ModelFileError(f"{where}: the architecture must be a JSON object, got {type(arch).__name__}")
    if arch.get("format") != FORMAT:
        raise ModelFileError(f"{where}: unknown format {arch.get('format')!r} (expected {FORMAT!r})")
    _check_keys(arch, _ARCH_KEYS, "the architecture", where)
    if not isinstance(arch["layers"], list):
        raise ModelFileError(f"{where}: the architecture's 'layers' must be a list, got {type(arch['layers']).__name__}")
    return arch


def _check_keys(d: dict[str, Any], keys: tuple[str, ...], what: str, where: str) -> None:
    """Require exactly ``keys`` in ``d``."""
    missing, unknown = [k for k in keys if k not in d], sorted(set(d) - set(keys))
    if missing or unknown:
        problems = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"has unknown {', '.join(map(repr, unknown))}"] if unknown else [])
        raise ModelFileError(f"{where}: {what} {' and '.join(problems)}")


def _check_finite(value: Any, what: str, where: str) -> None:
    """Refuse NaN and infinities anywhere in a config value (JSON lets them through as NaN, Infinity, 1e999)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelFileError(f"{where}: {what} is not finite ({value})")
    if isinstance(value, list):
        for v in value:
            _check_finite(v, what, where)


def _bind_config(target: type, config: Any, what: str, where: str) -> dict[str, Any]:
    """``config`` checked against ``target``'s constructor: a dict of known keys, every required one
    present, finite values; lists become tuples (as the constructors take them).

    Returns:
        The config with the constructor's defaults filled in.
    """
    if not isinstance(config, dict):
        raise ModelFileError(f"{where}: {what} has a config that is not a JSON object but {type(config).__name__}")
    params = {n: p for n, p in inspect.signature(target).parameters.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ModelFileError(f"{where}: {what} has unknown config key(s) {', '.join(map(repr, unknown))}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in config]
    if missing:
        raise ModelFileError(f"{where}: {what} lacks config key(s) {', '.join(map(repr, missing))}")
    for k, v in config.items():
        _check_finite(v, f"{what} config '{k}'", where)
    full = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update({k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return full


def _plan_layer(spec: Any, index: int, where: str) -> _LayerPlan:
    """Check one layer spec and compute its parameter shapes, building nothing."""
    if not isinstance(spec, dict):
        raise ModelFileError(f"{where}: layer {index} is not a JSON object but {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ModelFileError(f"{where}: layer {index} has no name (a non-empty string)")
    _check_keys(spec, _SPEC_KEYS, f"layer '{name}'", where)
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in LAYERS:
        raise ModelFileError(f"{where}: layer '{name}' has unknown type {kind!r}; valid types are {', '.join(LAYERS)}")
    what = f"layer '{name}' ({kind})"
    config = _bind_config(LAYERS[kind], spec["config"], what, where)
    try:
        shapes = LAYERS[kind].param_shapes(**config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: {what} has an invalid config: {_one_line(e)}") from e
    return _LayerPlan(name, LAYERS[kind], config, shapes)


def _check_names(plans: list[_LayerPlan], where: str) -> None:
    seen: set[str] = set()
    for plan in plans:
        if plan.name in seen:
            raise ModelFileError(f"{where}: layer name '{plan.name}' is used twice")
        seen.add(plan.name)


def _check_arrays(plans: list[_LayerPlan], members: dict[str, _Member], where: str) -> None:
    """Every declared parameter has an array of its shape and dtype, and there is no other array."""
    expected: set[str] = {_ARCHITECTURE}
    for plan in plans:
        what = f"layer '{plan.name}' ({plan.cls.__name__})"
        dtype = np.dtype(plan.config.get("dtype", np.float64))
        for k, shape in plan.shapes.items():
            key = f"{plan.name}/{k}"
            expected.add(key)
            member = members.get(key)
            if member is None:
                raise ModelFileError(f"{where}: {what} declares {k} of shape {shape} but the file has none")
            if member.shape != shape:
                raise ModelFileError(f"{where}: {what} declares {k} of shape {shape} but the file has shape {member.shape}")
            if member.dtype != dtype:
                raise ModelFileError(f"{where}: {what} declares {k} as {dtype} but the file has {member.dtype}")
    extra = sorted(set(members) - expected)
    if extra:
        owner = next((p for p in plans if extra[0].startswith(f"{p.name}/")), None)
        whose = f"layer '{owner.name}' ({owner.cls.__name__}) has no parameter for" if owner else "no declared layer has"
        raise ModelFileError(f"{where}: {whose} the array '{extra[0]}'")


def _check_loss(loss: Any, where: str) -> str:
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ModelFileError(f"{where}: unknown loss {loss!r}; valid losses are {', '.join(LOSSES)}")
    return loss


def _build_optimizer(spec: Any, where: str) -> Optimizer:
    """The optimiser, from its checked spec (it allocates nothing until the first step)."""
    if not isinstance(spec, dict):
        raise ModelFileError(f"{where}: the optimizer must be a JSON object, got {type(spec).__name__}")
    _check_keys(spec, _OPT_KEYS, "the optimizer", where)
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in OPTIMIZERS:
        raise ModelFileError(f"{where}: unknown optimizer {kind!r}; valid optimizers are {', '.join(OPTIMIZERS)}")
    what = f"optimizer '{kind}'"
    config = _bind_config(OPTIMIZERS[kind], spec["config"], what, where)
    try:
        return OPTIMIZERS[kind](**config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: {what} has an invalid config: {_one_line(e)}") from e


def _build_layer(plan: _LayerPlan, zf: zipfile.ZipFile, members: dict[str, _Member], where: str) -> Layer:
    """Read a checked layer's arrays and build it around them (no initial weights are drawn)."""
    what = f"layer '{plan.name}' ({plan.cls.__name__})"
    params = {k: _read_array(zf, members[f"{plan.name}/{k}"]) for k in plan.shapes}
    try:
        return plan.cls(**plan.config, params=params) if plan.shapes else plan.cls(**plan.config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: {what} cannot be built: {_one_line(e)}") from e
