"""2-D convolution on NHWC batches, by im2col (``sliding_window_view``) and one matrix product.

The backward pass for the input is itself a convolution (of the stride-dilated,
padded output gradient with the spatially flipped kernel), so neither pass has a
Python loop over pixels, positions or channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Layer, initialise

__all__ = ["Conv2D", "conv_output_size", "resolve_padding"]

Pair = tuple[int, int]


def _pair(v: int | tuple[int, int] | list[int], name: str) -> Pair:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, (int, np.integer)) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"'{name}={v!r}' is invalid; give an int or a pair of ints")


def resolve_padding(padding: int | tuple[int, int] | str, size: Pair, kernel: Pair, stride: Pair) -> tuple[Pair, Pair]:
    """((top, bottom), (left, right)) padding; ``same`` pads like TensorFlow (output = ceil(size / stride))."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"'padding={padding}' is invalid; use an int, a pair, 'same' or 'valid'")
        out = []
        for n, k, s in zip(size, kernel, stride):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            out.append((total // 2, total - total // 2))
        return out[0], out[1]
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"'padding={padding}' is invalid; padding cannot be negative")
    return (ph, ph), (pw, pw)


def conv_output_size(n: int, k: int, s: int, pad: Pair) -> int:
    return (n + pad[0] + pad[1] - k) // s + 1


def _windows(xp: np.ndarray, kernel: Pair, stride: Pair) -> np.ndarray:
    """(N, Ho, Wo, kh, kw, C) view of every receptive field of the padded input."""
    w = sliding_window_view(xp, kernel, axis=(1, 2))[:, :: stride[0], :: stride[1]]  # (N, Ho, Wo, C, kh, kw)
    return w.transpose(0, 1, 2, 4, 5, 3)


def correlate(xp: np.ndarray, w: np.ndarray, stride: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlate a padded NHWC batch with kernels (kh, kw, C_in, C_out).

    Returns:
        (output (N, Ho, Wo, C_out), im2col matrix (N * Ho * Wo, kh * kw * C_in)).
    """
    kh, kw, cin, cout = w.shape
    win = _windows(xp, (kh, kw), stride)
    n, ho, wo = win.shape[:3]
    cols = win.reshape(n * ho * wo, kh * kw * cin)  # copies: one contiguous im2col matrix
    out = cols @ w.reshape(kh * kw * cin, cout)
    return out.reshape(n, ho, wo, cout), cols


class Conv2D(Layer):
    """Convolution of NHWC input with kernels ``W`` (kh, kw, C_in, C_out) and one bias per filter."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, init: str = "he", seed: int | None = None,
                 dtype: str | type = "float64") -> None:
        super().__init__()
        self.kernel = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if in_channels < 1 or out_channels < 1 or min(self.kernel) < 1 or min(self.stride) < 1:
            raise ValueError(f"Conv2D needs positive channels, kernel and stride; got in_channels={in_channels}, "
                             f"out_channels={out_channels}, kernel_size={kernel_size}, stride={stride}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"'padding={padding}' is invalid; use an int, a pair, 'same' or 'valid'")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.in_channels, self.out_channels, self.init, self.seed = in_channels, out_channels, init, seed
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel
        rng = np.random.default_rng(seed)
        w = initialise((kh, kw, in_channels, out_channels), kh * kw * in_channels, kh * kw * out_channels, init, rng)
        self.params = {"W": w.astype(self.dtype), "b": np.zeros(out_channels, self.dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(f"Conv2D expects NHWC input with {self.in_channels} channels, got shape {x.shape}")
        self.pad = resolve_padding(self.padding, x.shape[1:3], self.kernel, self.stride)
        if any(conv_output_size(n, k, s, p) < 1 for n, k, s, p in zip(x.shape[1:3], self.kernel, self.stride, self.pad)):
            raise ValueError(f"Conv2D kernel {self.kernel} does not fit input of shape {x.shape} with padding {self.pad}")
        xp = np.pad(x, ((0, 0), self.pad[0], self.pad[1], (0, 0)))
        out, self.cols = correlate(xp, self.params["W"], self.stride)
        self.x_shape, self.xp_shape = x.shape, xp.shape
        return out + self.params["b"]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        kh, kw, cin, cout = self.params["W"].shape
        n, ho, wo, _ = dout.shape
        d2 = dout.reshape(-1, cout)
        self.grads["W"] = (self.cols.T @ d2).reshape(kh, kw, cin, cout)
        self.grads["b"] = d2.sum(axis=0)
        # dL/d(padded input) = full correlation of the stride-dilated gradient with the flipped kernel
        sh, sw = self.stride
        hp, wp = self.xp_shape[1:3]
        # the gradient dilated by the stride and padded by kernel - 1, built in one buffer; rows and
        # columns of the padded input that no window reached (hp - extent) get zero gradient
        dpad = np.zeros((n, hp + kh - 1, wp + kw - 1, cout), dout.dtype)
        dpad[:, kh - 1 : kh - 1 + (ho - 1) * sh + 1 : sh, kw - 1 : kw - 1 + (wo - 1) * sw + 1 : sw] = dout
        w_flip = self.params["W"][::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, C_out, C_in)
        dxp, _ = correlate(dpad, w_flip, (1, 1))
        (pt, _), (pl, _) = self.pad
        h, w = self.x_shape[1:3]
        return dxp[:, pt : pt + h, pl : pl + w]

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": list(self.kernel),
                "stride": list(self.stride), "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "init": self.init, "seed": self.seed, "dtype": self.dtype.name}
