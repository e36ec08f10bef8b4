"""The layer interface shared by every layer and activation.

Data layout, everywhere: batch first. Dense data is ``(N, features)``; images are
NHWC ``(N, height, width, channels)``. Parameters are float64 unless a layer is built
with ``dtype="float32"`` (half the memory traffic, twice the BLAS speed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Layer", "initialise"]

INITIALISERS = ("random", "xavier", "he")


def initialise(shape: tuple[int, ...], fan_in: int, fan_out: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Weights of ``shape``: ``random`` (randn x 0.01), ``xavier`` (std sqrt(2 / (in + out))) or ``he`` (std sqrt(2 / in))."""
    if method == "random":
        std = 0.01
    elif method == "xavier":
        std = np.sqrt(2.0 / (fan_in + fan_out))
    elif method == "he":
        std = np.sqrt(2.0 / fan_in)
    else:
        raise ValueError(f"'init={method}' is unknown; valid initialisers are {', '.join(INITIALISERS)}")
    return rng.standard_normal(shape) * std


class Layer:
    """A differentiable step: ``forward`` caches what ``backward`` needs.

    ``params`` and ``grads`` map names ("W", "b") to arrays of the same shapes;
    layers without parameters leave them empty.
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Given dL/d(output), store dL/d(params) in ``grads`` and return dL/d(input)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (used by ``Model.save``)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
