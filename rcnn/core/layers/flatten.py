"""Flatten NHWC feature maps to (N, H * W * C) between convolutional and fully connected layers."""

from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.shape)
