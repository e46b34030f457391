"""Where training runs: the one place that chooses the device.

`pick_device("auto")` takes a CUDA GPU when there is one, then Apple's MPS, then the CPU; any
other name is used as it is ("cpu", "cuda", "cuda:1", "mps"). Under torchrun each process then
takes its own GPU (minidino/distributed.py).
"""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)
