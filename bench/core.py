"""rcnn.core Conv2D, forward + backward on a (32, 28, 28, 8) batch with 16 3x3 filters.

Compared in one run with (a) the straightforward loop implementation (a Python loop
over every sample and output position, as the original framework) and (b) PyTorch's
``conv2d`` on the CPU (forward + autograd backward), all in the same dtype:
float32 by default, the dtype networks train in (``--dtype float64`` for the other).
Ends with one line: ``speedup_vs_loop=<x> ratio_vs_torch=<y>`` (ratio = ours / torch time).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rcnn.core import Conv2D  # noqa: E402
from rcnn.core.naive import conv2d_backward_naive, conv2d_forward_naive  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    dtype = ap.parse_args().dtype
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 28, 28, 8)).astype(dtype)
    layer = Conv2D(8, 16, 3, padding=1, seed=0, dtype=dtype)
    g = rng.standard_normal((32, 28, 28, 16)).astype(dtype)

    def ours() -> None:
        layer.forward(x)
        layer.backward(g)

    def loop() -> None:
        conv2d_forward_naive(x, layer.params["W"], layer.params["b"], (1, 1), 1)
        conv2d_backward_naive(x, layer.params["W"], g, (1, 1), 1)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(layer.params["W"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    gt = torch.tensor(g.transpose(0, 3, 1, 2))

    def reference() -> None:
        xt.grad = wt.grad = bt.grad = None
        F.conv2d(xt, wt, bt, padding=1).backward(gt)

    # the results agree before anything is timed
    ours()
    reference()
    assert np.allclose(layer.grads["W"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-3, atol=1e-3)

    t_ours = best_of(ours, 15)
    t_torch = best_of(reference, 15)
    t_loop = best_of(loop, 2)
    print(f"torch threads: {torch.get_num_threads()}, {dtype}")
    print(f"loop implementation      {t_loop * 1e3:9.1f} ms")
    print(f"rcnn.core Conv2D         {t_ours * 1e3:9.1f} ms")
    print(f"torch.nn.functional      {t_torch * 1e3:9.1f} ms")
    print(f"speedup_vs_loop={t_loop / t_ours:.1f} ratio_vs_torch={t_ours / t_torch:.2f}")


if __name__ == "__main__":
    main()
