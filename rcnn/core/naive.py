"""Straightforward loop implementations, kept only as test oracles and benchmark baselines.

They loop over every sample and output position in Python, as the original framework did.
"""

from __future__ import annotations

import numpy as np

from .layers.conv import resolve_padding

__all__ = ["conv2d_forward_naive", "conv2d_backward_naive"]


def conv2d_forward_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride=(1, 1), padding=0) -> np.ndarray:
    kh, kw, _, cout = w.shape
    pad = resolve_padding(padding, x.shape[1:3], (kh, kw), stride)
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    n, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    out = np.zeros((n, ho, wo, cout), x.dtype)
    for i in range(n):
        for r in range(ho):
            for c in range(wo):
                patch = xp[i, r * stride[0] : r * stride[0] + kh, c * stride[1] : c * stride[1] + kw, :]
                out[i, r, c] = np.tensordot(patch, w, axes=3) + b
    return out


def conv2d_backward_naive(x: np.ndarray, w: np.ndarray, dout: np.ndarray, stride=(1, 1), padding=0):
    """Returns (dx, dw, db)."""
    kh, kw, _, _ = w.shape
    pad = resolve_padding(padding, x.shape[1:3], (kh, kw), stride)
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    n, ho, wo, _ = dout.shape
    for i in range(n):
        for r in range(ho):
            for c in range(wo):
                rs, cs = r * stride[0], c * stride[1]
                patch = xp[i, rs : rs + kh, cs : cs + kw, :]
                dw += patch[..., None] * dout[i, r, c]
                dxp[i, rs : rs + kh, cs : cs + kw, :] += w @ dout[i, r, c]
    h, wd = x.shape[1:3]
    return dxp[:, pad[0][0] : pad[0][0] + h, pad[1][0] : pad[1][0] + wd], dw, dout.sum(axis=(0, 1, 2))
