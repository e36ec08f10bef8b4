"""Activation layers (element-wise, plus softmax over the last axis)."""

from __future__ import annotations

import numpy as np

from .layers.base import Layer

__all__ = ["Sigmoid", "ReLU", "Tanh", "Linear", "Softmax"]


class Sigmoid(Layer):
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        # split by sign so that exp never overflows
        e = np.exp(-np.abs(x))
        self.y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return self.y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.y * (1.0 - self.y)


class ReLU(Layer):
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self.mask = x > 0
        return np.where(self.mask, x, 0.0)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.mask


class Tanh(Layer):
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self.y = np.tanh(x)
        return self.y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * (1.0 - self.y**2)


class Linear(Layer):
    """The identity: for regression outputs."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Softmax(Layer):
    """Softmax over the last axis. For training, prefer ``SoftmaxCrossEntropy`` on logits (stable, fused)."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self.y = softmax(x)
        return self.y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return self.y * (dout - (dout * self.y).sum(axis=-1, keepdims=True))
