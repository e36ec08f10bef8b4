"""Where a network runs: one rule for the toolkit and for ``rcnn.core.resnet``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; raises ValueError otherwise."""
    import torch  # here, not above: the CLI imports this module (through rcnn.distributed) without torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"'device={name}' is invalid; valid devices are auto, cpu and cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"'device={name}' is not available: this machine has no CUDA GPU; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"'device={name}' is invalid; valid devices are auto, cpu and cuda")
    return device
