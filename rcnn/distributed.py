"""Training on several processes: torchrun's environment, the process group of DistributedDataParallel,
and the launcher behind ``rcnn train --device cuda:0,1``.

When is a run distributed? Only when torchrun (``torchrun`` or ``python -m torch.distributed.run``)
started this process, and started more than one: ``TORCHELASTIC_RUN_ID`` is set (torchrun sets it
in every worker's environment; nothing else does) and ``WORLD_SIZE`` > 1. Then the process group is
initialised from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``: gloo on a CPU, NCCL on GPUs, each process on ``cuda:LOCAL_RANK``. ``RANK`` and
``WORLD_SIZE`` on their own (left by SLURM, a Kubernetes Job or a shell) are not read: a process
waiting for a rendezvous nobody else joins would hang instead of training.

The launcher turns ``--device cuda:0,1`` (or ``--device cpu,cpu``: N gloo processes on the CPU, for
trying the distributed path on a machine without GPUs) into ``python -m torch.distributed.run
--standalone --nproc_per_node N -m rcnn.cli train ... --device cuda`` with only those GPUs visible.

Importing this module does not import torch (the CLI imports it to launch).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .devices import pick_device

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank ``rank`` of ``world_size``, training on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = field(default=None)  # torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints progress and writes the model folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def block(self, n: int) -> np.ndarray:
        """This rank's contiguous share of ``range(n)`` (``numpy.array_split``: sizes differ by at most one)."""
        import numpy as np

        return np.array_split(np.arange(n), self.world_size)[self.rank]


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun started this process as one of several (see the module docstring for the rule)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return bool(env.get("TORCHELASTIC_RUN_ID")) and world > 1


def worker_device(spec: str, local_rank: int, cuda_available: bool) -> str:
    """The device of worker ``local_rank`` for a ``--device`` of ``spec``: ``cuda``/``auto`` → ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: a device index (each worker takes its own GPU), a list, or CUDA without GPUs.
    """
    if spec == "cpu" or (spec == "auto" and not cuda_available):
        return "cpu"
    if spec in ("cuda", "auto"):
        if not cuda_available:
            raise ValueError("'device=cuda' is not available: this machine has no CUDA GPU; use cpu")
        return f"cuda:{local_rank}"
    raise ValueError(f"'device={spec}' is invalid under torchrun; give cpu, cuda or auto (each worker takes cuda:LOCAL_RANK)")


def current_rank() -> int:
    """This process's rank: torchrun's ``RANK`` when it launched several, else 0."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@contextmanager
def session(device: str) -> Iterator[Dist]:
    """This process's :class:`Dist` for a ``--device`` of ``device``; under torchrun, with the process group up.

    A process group that the caller initialised already is used and left up.
    """
    import torch
    import torch.distributed as tdist

    if not launched_by_torchrun():
        yield Dist(device=pick_device(device))
        return
    env = os.environ
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    dev = torch.device(worker_device(device, local, torch.cuda.is_available()))
    own = not tdist.is_initialized()
    if own:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    try:
        yield Dist(rank, world, local, dev)
    finally:
        if own and tdist.is_initialized():
            tdist.destroy_process_group()


# --------------------------------------------------------------------------- collectives (no-ops on one process)


def broadcast_object(dist: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.distributed:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0, device=dist.device if dist.device.type == "cuda" else None)
    return box[0]


def all_gather_objects(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.distributed:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_sum(dist: Dist, x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks (a new tensor; ``x`` itself when there is one process)."""
    if not dist.distributed:
        return x
    import torch.distributed as tdist

    y = x.detach().clone()
    tdist.all_reduce(y)
    return y


def gather_blocks(dist: Dist, rows: torch.Tensor, n: int) -> torch.Tensor | None:
    """Rank 0 gets the rows ``[n, ...]`` whose :meth:`Dist.block` each rank computed (``rows``); others get None."""
    if not dist.distributed:
        return rows
    import torch
    import torch.distributed as tdist

    sizes = [len(Dist(r, dist.world_size).block(n)) for r in range(dist.world_size)]
    # gather needs equal shapes: pad each block to the largest
    padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=rows.dtype, device=dist.device)
    padded[: len(rows)] = rows.to(dist.device)
    parts = [torch.empty_like(padded) for _ in sizes] if dist.is_main else None
    tdist.gather(padded, parts, dst=0)
    if not dist.is_main:
        return None
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()


# --------------------------------------------------------------------------- the launcher


@dataclass(frozen=True)
class DeviceList:
    """A ``--device`` naming several devices: ``kind`` "cuda" with GPU ``ids``, or "cpu" ``len(ids)`` times."""

    kind: str
    ids: tuple[int, ...]

    @property
    def nproc(self) -> int:
        return len(self.ids)


def parse_device_list(spec: str | None) -> DeviceList | None:
    """``cuda:0,1`` / ``0,1`` / ``cuda:0,cuda:1`` → GPUs 0 and 1; ``cpu,cpu`` → two CPU processes; one device → None.

    Raises:
        ValueError: a malformed list, cpu mixed with GPUs, or a GPU named twice.
    """
    if spec is None or "," not in spec:
        return None
    items = [s.strip() for s in spec.split(",")]
    allowed = "a comma list such as cuda:0,1 (GPUs 0 and 1) or cpu,cpu (two CPU processes)"
    if all(s == "cpu" for s in items):
        return DeviceList("cpu", tuple(range(len(items))))
    ids = [s[len("cuda:"):] if s.startswith("cuda:") else s for s in items]
    if not all(s.isdigit() for s in ids):
        raise ValueError(f"'device={spec}' is invalid; use {allowed}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"'device={spec}' names a GPU twice; each process takes one GPU")
    return DeviceList("cuda", tuple(int(s) for s in ids))


def replace_option(args: Sequence[str], name: str, value: str) -> list[str]:
    """``args`` with every value of option ``name`` (``--name V`` or ``--name=V``) set to ``value``."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a == name:
            out += [a, value]
            next(it, None)
        elif a.startswith(name + "="):
            out.append(f"{name}={value}")
        else:
            out.append(a)
    return out


def torchrun_command(train_args: Sequence[str], devices: DeviceList, python: str = sys.executable) -> list[str]:
    """The command that runs ``rcnn train TRAIN_ARGS`` on ``devices``: torchrun, one process per device,
    each with ``--device cuda`` (it takes ``cuda:LOCAL_RANK``) or ``--device cpu``."""
    args = replace_option(train_args, "--device", devices.kind)
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(devices.nproc),
            "-m", "rcnn.cli", "train", *args]


def visible_devices(ids: Sequence[int], current: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for GPUs ``ids`` (numbered as this process sees them, within ``current``)."""
    if current:
        seen = [d.strip() for d in current.split(",") if d.strip()]
        return ",".join(seen[i] for i in ids)
    return ",".join(str(i) for i in ids)


def check_launch(devices: DeviceList) -> None:
    """Raise ValueError when ``devices`` cannot be launched here (no torch.distributed, no such GPUs, under torchrun)."""
    if launched_by_torchrun():
        raise ValueError("a --device list launches torchrun; under torchrun give --device cuda or cpu")
    if importlib.util.find_spec("torch.distributed.run") is None:
        raise ValueError("torchrun (torch.distributed.run) is not found in this Python; install a torch build with distributed support")
    import torch

    if not torch.distributed.is_available():
        raise ValueError("this torch build has no torch.distributed; install one that has it to train on several devices")
    if devices.kind == "cuda":
        if not torch.cuda.is_available():
            ids = ",".join(map(str, devices.ids))
            raise ValueError(f"'device=cuda:{ids}' is not available: this machine has no CUDA GPU; use cpu (or cpu,cpu)")
        if max(devices.ids) >= torch.cuda.device_count():
            raise ValueError(f"'device=cuda:{max(devices.ids)}' is not available: this machine has "
                             f"{torch.cuda.device_count()} GPU(s), numbered from 0")


def launch(train_args: Sequence[str], devices: DeviceList) -> int:
    """Run ``rcnn train TRAIN_ARGS`` under torchrun on ``devices``; returns torchrun's exit status."""
    check_launch(devices)
    env = dict(os.environ)
    if devices.kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices.ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    # the workers import this very rcnn, wherever it was imported from
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(torchrun_command(train_args, devices), env=env).returncode
