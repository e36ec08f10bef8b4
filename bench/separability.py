"""SI + CSI of N samples × D features: the chunked ``torch.cdist`` version against a naive pairwise loop.

The loop (a Python loop over every pair, one NumPy distance each, as the original study's first version) runs on
a subset of ``--subset`` samples and is scaled up by (N / subset)² for SI and N / subset for CSI; on that subset
both versions must give the same SI and CSI. Defaults: the issue's 10,000 × 4,096. Times are wall clock and
this process's CPU time (the fair measure on a shared machine; run with OMP_NUM_THREADS=1 for them to agree
on an idle one). Ends with one line: ``chunked_s=<s> loop_estimate_s=<s> speedup=<x>`` (CPU seconds).

    OMP_NUM_THREADS=2 python bench/separability.py [--n 10000 --d 4096 --subset 150 --chunk 1024]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rcnn.core.resnet import class_separability_index, separability_index  # noqa: E402


def si_loop(x: np.ndarray, y: np.ndarray) -> float:
    hits = 0
    for i in range(len(x)):
        best, best_j = math.inf, -1
        for j in range(len(x)):
            if j != i:
                d = float(np.sqrt(((x[i] - x[j]) ** 2).sum()))
                if d < best:
                    best, best_j = d, j
        hits += int(y[best_j] == y[i])
    return hits / len(x)


def csi_loop(x: np.ndarray, y: np.ndarray, centres: np.ndarray) -> float:
    hits = 0
    for i in range(len(x)):
        dists = [float(np.sqrt(((x[i] - c) ** 2).sum())) for c in centres]
        hits += int(int(np.argmin(dists)) == y[i])
    return hits / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="samples")
    ap.add_argument("--d", type=int, default=4096, help="features per sample")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--subset", type=int, default=150, help="samples the loop runs on")
    ap.add_argument("--chunk", type=int, default=1024, help="rows of distances at a time")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.n)
    x = (rng.standard_normal((args.n, args.d)) + 0.05 * rng.standard_normal((args.classes, args.d))[y]).astype(np.float32)
    print(f"{args.n} samples x {args.d} features, {args.classes} classes, torch threads {torch.get_num_threads()}", flush=True)

    t, c = time.perf_counter(), time.process_time()
    si, csi = separability_index(x, y, args.chunk), class_separability_index(x, y, args.chunk)
    wall, chunked = time.perf_counter() - t, time.process_time() - c
    print(f"chunked cdist: SI {si:.4f} CSI {csi:.4f} in {chunked:.2f} CPU s ({wall:.2f} s wall)", flush=True)

    m = args.subset
    xs, ys = x[:m], y[:m]
    centres = np.stack([x[y == c].mean(0) for c in range(args.classes)])
    t, c = time.perf_counter(), time.process_time()
    si_m = si_loop(xs, ys)
    t_si, wall_si = time.process_time() - c, time.perf_counter() - t
    c = time.process_time()
    csi_m = csi_loop(xs, ys, centres)
    t_csi = time.process_time() - c
    assert si_m == separability_index(xs, ys), (si_m, separability_index(xs, ys))
    full_csi_hits = [int(np.argmin(np.linalg.norm(centres - x[i], axis=1)) == y[i]) for i in range(m)]
    assert csi_m == float(np.mean(full_csi_hits))
    estimate = t_si * (args.n / m) ** 2 + t_csi * (args.n / m)
    print(f"loop on {m} samples: SI {t_si:.2f} CPU s ({wall_si:.2f} s wall), CSI {t_csi:.3f} CPU s (same values as the chunked version); "
          f"scaled to {args.n}: {estimate:.0f} s", flush=True)
    print(f"chunked_s={chunked:.2f} loop_estimate_s={estimate:.0f} speedup={estimate / chunked:.0f}")


if __name__ == "__main__":
    main()
