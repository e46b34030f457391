"""Checkpoints that survive interruption.

A checkpoint is written to a temporary file in the same folder and then renamed over the old one.
A rename is atomic on POSIX file systems, so a run killed while writing leaves either the previous
checkpoint or the new one on disk, never half a file.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every random number generator a CPU run draws from (and CUDA's, when present)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, with a clear error when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, pickle error, ...
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a dict (got {type(state)})")
    return state


def load_backbone_weights(backbone: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load backbone weights, listing mismatched keys and shapes in words when they differ."""
    state_dict = {k.removeprefix("module.").removeprefix("backbone."): v
                  for k, v in state_dict.items()
                  if not k.removeprefix("module.").startswith("head.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        raise ValueError("checkpoint does not match this architecture: "
                         f"{len(missing)} missing keys {missing[:8]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:8]}, "
                         f"{len(shapes)} shape mismatches {shapes[:8]}")
    backbone.load_state_dict(state_dict, strict=True)


class GracefulStop:
    """Turn Ctrl-C (SIGINT) and SIGTERM into a request to stop at the next step boundary.

    The training loop checks `requested` after each complete step, so the checkpoint it writes
    never holds a half-applied update. A second Ctrl-C stops at once.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
