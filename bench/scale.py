"""Proposals past one process, in one run: one process, 1 and 2 local Ray workers, 2 ``--shard`` processes.

Each setting runs selective search at the defaults over the same raccoon train images into a fresh
folder and is timed from the start of the command (or of the Ray tasks) to its last file. Prints
images/s, the speed-up over one process, and the share of coordination overhead at 2 workers:
1 - (2-worker throughput) / (2 x 1-process throughput). Ray's cluster start is timed apart (a real
cluster is started once, not per job). Every setting must give the same boxes as the one process.

Then projects the wall time for 1 M images on 10 and 100 machines of this size (2 cores): per-image
cost as measured here, each machine as fast as the 2-worker run here (so the overhead share measured
at 2 workers is assumed to hold at scale; the shared file system and the scheduler are assumed not to
be the bottleneck).

Usage: python bench/scale.py [--limit 40]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, Timer, raccoon_dataset

from rcnn.propose import ProposeConfig, propose_dataset
from rcnn.scale import ray_cluster


def boxes(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((folder / "boxes").glob("*.npy"))}


def equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def shards(parsed: Path, out: Path, n: int) -> float:
    """Wall seconds of ``n`` concurrent `rcnn propose --shard k/n` processes (one worker each), then the merge."""
    cmd = [sys.executable, "-m", "rcnn.cli", "propose", str(parsed), "--out", str(out), "--split", "train", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--shard", f"{k}/{n}"], env=env, stdout=subprocess.DEVNULL) for k in range(n)]
    if any(p.wait() for p in procs):
        sys.exit("a shard failed")
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)  # the reports, from what the shards wrote
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=40, help="first N raccoon train images (0 = all 160)")
    args = ap.parse_args()
    ds = raccoon_dataset("train", args.limit)
    n = len(ds.images)
    config = ProposeConfig()
    rows: dict[str, float] = {}
    same: dict[str, bool] = {}
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parsed = ds.save(tmp / "parsed.json")
        with Timer() as t:
            propose_dataset(ds, tmp / "one", config, split="train", workers=1, progress=False, echo=lambda _: None)
        rows["1 process"] = t.seconds
        reference = boxes(tmp / "one")
        # the shards are commands (a fresh interpreter each), so their baseline is the one-process command
        cmd = [sys.executable, "-m", "rcnn.cli", "propose", str(parsed), "--out", str(tmp / "cmd"), "--split", "train", "--workers", "1"]
        with Timer() as t:
            subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, check=True)
        rows["1 process, command"] = t.seconds
        rows["2 --shard processes"] = shards(parsed, tmp / "shards", 2)
        same["2 --shard processes"] = equal(boxes(tmp / "shards"), reference)
        for workers in (1, 2):
            name = f"Ray, {workers} worker{'s' * (workers > 1)}"
            t0 = time.perf_counter()
            with ray_cluster("local", num_cpus=workers):
                startup[name] = time.perf_counter() - t0
                with Timer() as t:
                    propose_dataset(ds, tmp / f"ray{workers}", config, split="train", progress=False, echo=lambda _: None,
                                    ray="local")
            rows[name] = t.seconds
            same[name] = equal(boxes(tmp / f"ray{workers}"), reference)
    base = {"2 --shard processes": "1 process, command"}  # Ray runs in this interpreter, like "1 process"
    print(f"selective search at the defaults ({config.mode} mode, {config.max_side} px copy), {n} raccoon train images, "
          f"{os.cpu_count()} cores")
    speedup = {}
    for name, seconds in rows.items():
        ref = base.get(name, "1 process")
        speedup[name] = rows[ref] / seconds
        notes = [f"same boxes: {same[name]}"] if name in same else []
        notes += [f"cluster start {startup[name]:.1f} s, not counted"] if name in startup else []
        notes += [f"against '{ref}'"] if name in same else []
        print(f"{name:<22} {n / seconds:6.2f} img/s  {seconds:6.1f} s  speed-up {speedup[name]:4.2f}x  " + "; ".join(notes))
    two = ("2 --shard processes", "Ray, 2 workers")
    print("coordination overhead at 2 workers (1 - speed-up / 2): " + ", ".join(f"{k} {1 - speedup[k] / 2:.0%}" for k in two))
    best = max(two, key=lambda k: speedup[k])
    per_machine = n / rows["1 process"] * speedup[best]  # images/s of one 2-core machine
    for machines in (10, 100):
        hours = 1e6 / (machines * per_machine) / 3600
        print(f"projection: 1 M images on {machines} machines of this size ({best}: {per_machine:.2f} img/s each): {hours:.1f} h")
    print(f"images={n} shard2_speedup={speedup[two[0]]:.2f}x ray1_speedup={speedup['Ray, 1 worker']:.2f}x "
          f"ray2_speedup={speedup['Ray, 2 workers']:.2f}x same_boxes={all(same.values())}")

if __name__ == "__main__":
    main()
