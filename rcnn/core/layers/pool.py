"""2-D pooling on NHWC batches (max or average), vectorised with ``sliding_window_view``."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Layer
from .conv import _pair, _positive_pair

__all__ = ["MaxPool2D"]

MODES = ("max", "average")


class MaxPool2D(Layer):
    """Pooling over ``kernel_size`` windows every ``stride`` pixels (default: the kernel size), no padding.

    ``mode`` is ``max`` (gradient to the first maximum of each window, as PyTorch) or ``average``.
    """

    def __init__(self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None, mode: str = "max") -> None:
        super().__init__()
        self.param_shapes(kernel_size, stride, mode)
        self.kernel = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, "stride")
        self.mode = mode

    @classmethod
    def param_shapes(cls, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
                     mode: str = "max") -> dict[str, tuple[int, ...]]:
        """Check the constructor arguments; pooling has no parameters, so the shapes are ``{}``.

        Raises:
            ValueError: ``mode`` is unknown, or the kernel or stride is not a positive int or pair.
        """
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"'mode={mode}' is unknown; valid pooling modes are {', '.join(MODES)}")
        _positive_pair(kernel_size, "kernel_size")
        if stride is not None:
            _positive_pair(stride, "stride")
        return {}

    def _index(self, n: int, ho: int, wo: int, c: int) -> tuple[np.ndarray, ...]:
        """Broadcastable (n, row, col, channel) indices of every window element, shaped (N, Ho, Wo, C, kh, kw)."""
        kh, kw = self.kernel
        rows = (np.arange(ho) * self.stride[0])[:, None] + np.arange(kh)[None, :]  # (Ho, kh)
        cols = (np.arange(wo) * self.stride[1])[:, None] + np.arange(kw)[None, :]  # (Wo, kw)
        return (np.arange(n)[:, None, None, None, None, None], rows[None, :, None, None, :, None],
                cols[None, None, :, None, None, :], np.arange(c)[None, None, None, :, None, None])

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"MaxPool2D expects NHWC input, got shape {x.shape}")
        if x.shape[1] < self.kernel[0] or x.shape[2] < self.kernel[1]:
            raise ValueError(f"pooling kernel {self.kernel} is larger than the input {x.shape[1:3]}")
        win = sliding_window_view(x, self.kernel, axis=(1, 2))[:, :: self.stride[0], :: self.stride[1]]  # (N, Ho, Wo, C, kh, kw)
        self.x_shape, self.win_shape = x.shape, win.shape
        if self.mode == "average":
            return win.mean(axis=(-2, -1))
        flat = win.reshape(*win.shape[:4], -1)
        self.argmax = flat.argmax(axis=-1)  # first maximum of each window
        return np.take_along_axis(flat, self.argmax[..., None], axis=-1)[..., 0]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        n, ho, wo, c, kh, kw = self.win_shape
        if self.mode == "average":
            dwin = np.broadcast_to((dout / (kh * kw))[..., None, None], self.win_shape)
        else:
            dwin = np.zeros((n, ho, wo, c, kh * kw), dout.dtype)
            np.put_along_axis(dwin, self.argmax[..., None], dout[..., None], axis=-1)
            dwin = dwin.reshape(self.win_shape)
        dx = np.zeros(self.x_shape, dout.dtype)
        np.add.at(dx, self._index(n, ho, wo, c), dwin)  # overlapping windows add up
        return dx

    def config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel), "stride": list(self.stride), "mode": self.mode}
