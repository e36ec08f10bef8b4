"""Training throughput (images/s, forward + backward + Adam step) of each study variant of MyResNet on this CPU.

Random 32×32 images at the default network size (``ResNetConfig``: width 16, blocks 2,2,2) and batch 128
(``StudyTrainConfig``); one warm-up step, then the median of ``--steps`` timed steps, in this process's CPU time
(fair on a shared machine; with OMP_NUM_THREADS=1 it equals the wall time on an idle one). One line per variant,
then ``slowest/fastest=<x>``.

    OMP_NUM_THREADS=2 python bench/resnet.py [--steps 3 --batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rcnn.core.resnet import STUDY_VARIANTS, MyResNet, ResNetConfig, StudyTrainConfig, parse_variant  # noqa: E402


def throughput(variant: str, batch: int, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = MyResNet(ResNetConfig(**parse_variant(variant))).train()
    opt = torch.optim.Adam(model.parameters(), StudyTrainConfig().lr)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for k in range(steps + 1):
        t = time.process_time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:  # the first step warms up
            times.append(time.process_time() - t)
    return batch / statistics.median(times), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=StudyTrainConfig().batch_size)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, images per CPU second")
    rates = {}
    for v in STUDY_VARIANTS:
        rates[v], params = throughput(v, args.batch, args.steps)
        print(f"{v:20s} {rates[v]:7.0f} images/s  {params:7d} parameters", flush=True)
    print(f"slowest/fastest={max(rates.values()) / min(rates.values()):.2f}")


if __name__ == "__main__":
    main()
