"""2-D convolution on NHWC batches, by im2col (``sliding_window_view``) and one matrix product.

The backward pass for the input is itself a convolution (of the stride-dilated,
padded output gradient with the spatially flipped kernel), so neither pass has a
Python loop over pixels, positions or channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Layer, adopt_params, check_init, check_seed, float_dtype, initialise, positive_int

__all__ = ["Conv2D", "conv_output_size", "resolve_padding"]

Pair = tuple[int, int]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(v: int | tuple[int, int] | list[int], name: str) -> Pair:
    if _is_int(v):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(i) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"'{name}={v!r}' is invalid; give an int or a pair of ints")


def _positive_pair(v: int | tuple[int, int] | list[int], name: str) -> Pair:
    pair = _pair(v, name)
    if min(pair) < 1:
        raise ValueError(f"'{name}={v!r}' is invalid; give a positive int or a pair of them")
    return pair


def _padding(padding: int | tuple[int, int] | list[int] | str) -> Pair | str:
    """``same``, ``valid`` or a pair of non-negative ints.

    Raises:
        ValueError: anything else.
    """
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"'padding={padding}' is invalid; use an int, a pair, 'same' or 'valid'")
        return padding
    pair = _pair(padding, "padding")
    if min(pair) < 0:
        raise ValueError(f"'padding={padding}' is invalid; padding cannot be negative")
    return pair


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
    """Convolution of NHWC input with kernels ``W`` (kh, kw, C_in, C_out) and one bias per filter.

    Args:
        in_channels: input channels, a positive integer.
        out_channels: filters, a positive integer.
        kernel_size: a positive int or a pair (kh, kw).
        stride: a positive int or a pair.
        padding: a non-negative int or pair, ``same`` (as TensorFlow) or ``valid``.
        init: ``random``, ``xavier`` or ``he`` (see :func:`initialise`).
        seed: seed of the initial weights.
        dtype: floating-point dtype of the parameters.
        params: ``{"W": ..., "b": ...}`` to use (not copied) instead of drawing initial weights.

    Raises:
        ValueError: an argument is invalid, or ``params`` has other names, shapes or dtypes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, init: str = "he", seed: int | None = None,
                 dtype: str | type = "float64", *, params: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        shapes = self.param_shapes(in_channels, out_channels, kernel_size, stride, padding, init, seed, dtype)
        self.kernel = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _padding(padding)
        self.in_channels, self.out_channels, self.init, self.seed = int(in_channels), int(out_channels), init, seed
        self.dtype = float_dtype(dtype)
        if params is None:
            kh, kw = self.kernel
            rng = np.random.default_rng(seed)
            w = initialise(shapes["W"], kh * kw * self.in_channels, kh * kw * self.out_channels, init, rng)
            params = {"W": w.astype(self.dtype, copy=False), "b": np.zeros(shapes["b"], self.dtype)}
        self.params = adopt_params("Conv2D", params, shapes, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @classmethod
    def param_shapes(cls, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] | str = 0, init: str = "he", seed: int | None = None,
                     dtype: str | type = "float64") -> dict[str, tuple[int, ...]]:
        """Check the constructor arguments; the shapes of ``W`` and ``b``, allocating nothing.

        Raises:
            ValueError: a channel count, kernel size or stride is not positive, the padding is negative or
                unknown, or ``init``, ``seed`` or ``dtype`` is invalid.
        """
        cin, cout = positive_int(in_channels, "in_channels"), positive_int(out_channels, "out_channels")
        kh, kw = _positive_pair(kernel_size, "kernel_size")
        _positive_pair(stride, "stride")
        _padding(padding)
        check_init(init)
        check_seed(seed)
        float_dtype(dtype)
        return {"W": (kh, kw, cin, cout), "b": (cout,)}

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
