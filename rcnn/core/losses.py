"""Losses: each returns the mean loss and its gradient with respect to the model output."""

from __future__ import annotations

import numpy as np

from .activations import softmax

__all__ = ["Loss", "BinaryCrossEntropy", "MSE", "SoftmaxCrossEntropy", "LOSSES"]


class Loss:
    name = "loss"

    def __call__(self, output: np.ndarray, target: np.ndarray) -> float:
        return self.loss(output, target)

    def loss(self, output: np.ndarray, target: np.ndarray) -> float:
        raise NotImplementedError

    def grad(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, output: np.ndarray) -> np.ndarray:
        """Map the model output to predictions (probabilities for softmax cross-entropy)."""
        return output

    @staticmethod
    def _check(output: np.ndarray, target: np.ndarray) -> None:
        if output.shape != target.shape:
            raise ValueError(f"output shape {output.shape} and target shape {target.shape} differ")


class BinaryCrossEntropy(Loss):
    """Mean over all elements of -(y log p + (1 - y) log(1 - p)); ``output`` holds probabilities."""

    name = "binary_cross_entropy"

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps

    def loss(self, output: np.ndarray, target: np.ndarray) -> float:
        self._check(output, target)
        p = np.clip(output, self.eps, 1.0 - self.eps)
        return float(-np.mean(target * np.log(p) + (1.0 - target) * np.log(1.0 - p)))

    def grad(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        p = np.clip(output, self.eps, 1.0 - self.eps)
        return (p - target) / (p * (1.0 - p)) / output.size


class MSE(Loss):
    """Mean over all elements of (output - target)^2."""

    name = "mse"

    def loss(self, output: np.ndarray, target: np.ndarray) -> float:
        self._check(output, target)
        return float(np.mean((output - target) ** 2))

    def grad(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        return 2.0 * (output - target) / output.size


class SoftmaxCrossEntropy(Loss):
    """Softmax of logits ``(N, K)`` then cross-entropy, averaged over the batch.

    ``target`` is either integer class indices ``(N,)`` or one-hot/probabilities ``(N, K)``.
    """

    name = "softmax_cross_entropy"

    @staticmethod
    def _onehot(output: np.ndarray, target: np.ndarray) -> np.ndarray:
        if target.ndim == 1:
            if not np.issubdtype(target.dtype, np.integer) or target.min(initial=0) < 0 or target.max(initial=0) >= output.shape[1]:
                raise ValueError(f"class indices must be integers in [0, {output.shape[1]}), got {target[:5]}...")
            y = np.zeros_like(output)
            y[np.arange(len(target)), target] = 1.0
            return y
        Loss._check(output, target)
        return target

    def loss(self, output: np.ndarray, target: np.ndarray) -> float:
        y = self._onehot(output, target)
        z = output - output.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-(y * log_p).sum() / len(output))

    def grad(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        return (softmax(output) - self._onehot(output, target)) / len(output)

    def predict(self, output: np.ndarray) -> np.ndarray:
        return softmax(output)


LOSSES = {cls.name: cls for cls in (BinaryCrossEntropy, MSE, SoftmaxCrossEntropy)}
