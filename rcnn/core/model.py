"""``Model``: an ordered, named stack of layers with a loss and an optimiser.

Saved as one ``.npz`` of parameter arrays plus the architecture as JSON (stored as
bytes inside the archive). Loading never unpickles, so a model file cannot run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .activations import Linear, ReLU, Sigmoid, Softmax, Tanh
from .layers import FC, Conv2D, Flatten, Layer, MaxPool2D
from .losses import LOSSES, Loss
from .optimizers import OPTIMIZERS, Adam, Optimizer

__all__ = ["Model", "LAYERS"]

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
        """Write parameters and architecture to one ``.npz`` (atomically)."""
        path = Path(path)
        arrays = {f"{n}/{k}": v for n, layer in self.layers for k, v in layer.params.items()}
        arrays["__architecture__"] = np.frombuffer(json.dumps(self.architecture()).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a file written by :meth:`save`; never unpickles."""
        with np.load(path, allow_pickle=False) as z:
            if "__architecture__" not in z.files:
                raise ValueError(f"{path} is not a model file (no architecture)")
            arch = json.loads(z["__architecture__"].tobytes().decode())
            if arch.get("format") != FORMAT:
                raise ValueError(f"{path} has unknown format {arch.get('format')!r}")
            layers = []
            for spec in arch["layers"]:
                if spec["type"] not in LAYERS:
                    raise ValueError(f"unknown layer type {spec['type']!r} in {path}")
                cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
                layer = LAYERS[spec["type"]](**cfg)
                for k in layer.params:
                    arr = z[f"{spec['name']}/{k}"]
                    if arr.shape != layer.params[k].shape:
                        raise ValueError(f"{path}: {spec['name']}/{k} has shape {arr.shape}, expected {layer.params[k].shape}")
                    layer.params[k] = arr.copy()
                    layer.grads[k] = np.zeros_like(arr)
                layers.append((spec["name"], layer))
        opt = arch["optimizer"]
        if opt["type"] not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {opt['type']!r} in {path}")
        return cls(layers, arch["loss"], OPTIMIZERS[opt["type"]](**opt["config"]))

    def __repr__(self) -> str:
        lines = [f"  {n}: {layer!r}" for n, layer in self.layers]
        return "Model(\n" + "\n".join(lines) + f"\n  loss={self.loss.name}, optimizer={self.optimizer.name}\n)"
