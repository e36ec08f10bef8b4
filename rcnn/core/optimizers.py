"""Optimisers: update parameter arrays in place from their gradients."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Optimizer", "GD", "Adam", "OPTIMIZERS"]


class Optimizer:
    name = "optimizer"

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}


class GD(Optimizer):
    """Plain gradient descent: p -= lr * g."""

    name = "gd"

    def __init__(self, lr: float = 0.01) -> None:
        if lr <= 0:
            raise ValueError(f"'lr={lr}' is invalid; the learning rate must be positive")
        self.lr = lr

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        for p, g in zip(params, grads):
            p -= self.lr * g

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba, 2015), as ``torch.optim.Adam``."""

    name = "adam"

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        if lr <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ValueError(f"invalid Adam settings lr={lr} (> 0), beta1={beta1}, beta2={beta2} (in [0, 1))")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if not self.m:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {cls.name: cls for cls in (GD, Adam)}
