"""Fully connected layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Layer, adopt_params, check_init, check_seed, float_dtype, initialise, positive_int

__all__ = ["FC"]


class FC(Layer):
    """``y = x W + b`` with ``x`` (N, in_features), ``W`` (in_features, out_features), ``b`` (out_features,).

    Args:
        in_features: input size, a positive integer.
        out_features: output size, a positive integer.
        init: ``random``, ``xavier`` or ``he`` (see :func:`initialise`).
        seed: seed of the initial weights.
        dtype: floating-point dtype of the parameters.
        params: ``{"W": ..., "b": ...}`` to use (not copied) instead of drawing initial weights.

    Raises:
        ValueError: an argument is invalid, or ``params`` has other names, shapes or dtypes.
    """

    def __init__(self, in_features: int, out_features: int, init: str = "he", seed: int | None = None,
                 dtype: str | type = "float64", *, params: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        shapes = self.param_shapes(in_features, out_features, init, seed, dtype)
        self.in_features, self.out_features, self.init, self.seed = int(in_features), int(out_features), init, seed
        self.dtype = float_dtype(dtype)
        if params is None:
            rng = np.random.default_rng(seed)
            params = {"W": initialise(shapes["W"], self.in_features, self.out_features, init, rng).astype(self.dtype, copy=False),
                      "b": np.zeros(shapes["b"], self.dtype)}
        self.params = adopt_params("FC", params, shapes, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @classmethod
    def param_shapes(cls, in_features: int, out_features: int, init: str = "he", seed: int | None = None,
                     dtype: str | type = "float64") -> dict[str, tuple[int, ...]]:
        """Check the constructor arguments; the shapes of ``W`` and ``b``, allocating nothing.

        Raises:
            ValueError: a size is not a positive integer, or ``init``, ``seed`` or ``dtype`` is invalid.
        """
        n_in, n_out = positive_int(in_features, "in_features"), positive_int(out_features, "out_features")
        check_init(init)
        check_seed(seed)
        float_dtype(dtype)
        return {"W": (n_in, n_out), "b": (n_out,)}

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
