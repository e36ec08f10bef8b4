"""Fully connected layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer, initialise

__all__ = ["FC"]


class FC(Layer):
    """``y = x W + b`` with ``x`` (N, in_features), ``W`` (in_features, out_features), ``b`` (out_features,)."""

    def __init__(self, in_features: int, out_features: int, init: str = "he", seed: int | None = None,
                 dtype: str | type = "float64") -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"FC sizes must be positive, got in_features={in_features}, out_features={out_features}")
        self.in_features, self.out_features, self.init, self.seed = in_features, out_features, init, seed
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {"W": initialise((in_features, out_features), in_features, out_features, init, rng).astype(self.dtype),
                       "b": np.zeros(out_features, self.dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"FC expects input of shape (N, {self.in_features}), got {x.shape}")
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.grads["W"] = self.x.T @ dout
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"].T

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init, "seed": self.seed,
                "dtype": self.dtype.name}
