"""Checkpoints that survive interruption.

A checkpoint is written to a temporary file in the same folder and then renamed over the old one.
A rename is atomic on POSIX file systems, so a run killed while writing leaves either the previous
checkpoint or the new one on disk, never half a file. A training run also keeps the checkpoint
before the newest (`checkpoint-previous.pt`): if the newest is damaged later (a full disk, a copy
cut short), `--resume auto` reports it and continues from the previous one. On a GPU, training
writes each epoch's checkpoint in the background (`CheckpointWriter`), from a copy in host memory.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minidino.distributed import broadcast_object, is_main


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
    """Restore `rng_state()`. The generator states are byte tensors that must be on the CPU; a
    checkpoint loaded with `map_location` a GPU has moved them there, so they come back."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


TRAINING_KEYS = ("student", "teacher", "optimizer", "loss", "batches", "rng", "step", "config")


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before `path` is kept: checkpoint.pt -> checkpoint-previous.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}-previous{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename).

    With `keep_previous`, the checkpoint already at `path` is first renamed to
    `previous_path(path)`, so the last two checkpoints stay on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointWriter:
    """Writes checkpoints with `save_checkpoint`, one at a time, in the background if asked.

    In the background, `save` copies the state to host memory at once (training may go on
    changing the live tensors) and a thread writes the copy while the next steps run: on a GPU a
    checkpoint of ViT-Tiny and its head (about 180 MB) would otherwise stop training for the
    time the disk takes. A save first waits for the write before it; `wait` (and the end of a
    `with` block) returns when the last write is on disk and raises its error if it failed. The
    file stays atomic either way."""

    def __init__(self, background: bool = False) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
        self.wait()
        if not self.background:
            save_checkpoint(state, path, keep_previous)
            return
        snapshot = _to_host(state)

        def write() -> None:
            try:
                save_checkpoint(snapshot, path, keep_previous)
            except BaseException as err:  # handed to the training thread by `wait`
                self._error = err

        self._thread = threading.Thread(target=write, name="minidino-checkpoint")
        self._thread.start()  # not a daemon: the interpreter lets it finish before exiting

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wait()  # however the run ends, its last checkpoint is on disk

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def _to_host(obj: Any) -> Any:
    """A copy of `obj` (nested dicts, lists, tuples) whose tensors are new copies in host memory,
    so that later in-place updates of the originals do not reach it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):  # the generators' states: lists and plain tuples
        return type(obj)(_to_host(v) for v in obj)
    return copy.deepcopy(obj)


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


def find_resume_checkpoint(run_dir: str | Path,
                           map_location: str | torch.device = "cpu") -> tuple[Path | None,
                                                                             dict[str, Any]]:
    """`--resume auto`: the newest valid training checkpoint in `run_dir`, and its state.

    Tries checkpoint.pt, then checkpoint-previous.pt; each one that is truncated, corrupt or not
    a training checkpoint is reported on stderr and renamed to `<name>.damaged` (kept for a look,
    and so the next save does not rotate it over the good one). Returns (None, {}) when the folder
    holds no checkpoint yet (a fresh start); raises ValueError when every checkpoint is damaged
    (starting afresh would throw the run away, so that is left to the user).
    """
    newest = Path(run_dir) / "checkpoint.pt"
    for tmp in Path(run_dir).glob("checkpoint*.pt.*.tmp"):  # left by a kill during a write
        tmp.unlink(missing_ok=True)
    damaged: list[str] = []
    for path in (newest, previous_path(newest)):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path, map_location=map_location)
            missing = [k for k in TRAINING_KEYS if k not in state]
            if missing:
                raise ValueError(f"checkpoint {str(path)!r} is not a training checkpoint "
                                 f"(no {missing})")
        except ValueError as err:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            damaged.append(f"{err} (moved to {aside.name})")
            print(f"minidino: warning: {damaged[-1]}; skipped", file=sys.stderr)
            continue
        return path, state
    damaged += [f"{p.name} from an earlier attempt" for p in Path(run_dir).glob("*.damaged")
                if not any(p.name in d for d in damaged)]
    if damaged:
        raise ValueError(f"no usable checkpoint in {str(run_dir)!r}: {'; '.join(damaged)}. "
                         "Delete the *.damaged files to start the run afresh")
    return None, {}


def resume_state(resume: str | Path | None, run_dir: Path,
                 device: torch.device) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint `train(resume=...)` continues from, and its state ((None, {}): none).

    `resume`: None, a checkpoint file (it must load), "auto" (`find_resume_checkpoint` in
    `run_dir`) or a run folder. Under torchrun rank 0 chooses and every rank loads that file.
    """
    if resume is None:
        return None, {}
    chosen: Path | None = None
    state: dict[str, Any] = {}
    error = None
    if is_main():
        try:
            if str(resume) == "auto" or Path(resume).is_dir():
                folder = run_dir if str(resume) == "auto" else Path(resume)
                chosen, state = find_resume_checkpoint(folder, map_location=device)
                if chosen is None:
                    print(f"minidino: no checkpoint in {folder} yet; starting a fresh run")
            else:
                chosen, state = Path(resume), load_checkpoint(resume, map_location=device)
        except (ValueError, FileNotFoundError) as err:
            error = err
    name, message = broadcast_object((None if chosen is None else str(chosen),
                                      None if error is None else str(error)))
    if message is not None:
        raise error if error is not None else ValueError(message)
    if name is not None and not is_main():
        chosen, state = Path(name), load_checkpoint(name, map_location=device)
    return chosen, state


def load_backbone_weights(backbone: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load backbone weights, listing mismatched keys and shapes in words when they differ."""
    state_dict = {k.removeprefix("module.").removeprefix("backbone."): v
                  for k, v in state_dict.items()
                  if not k.removeprefix("module.").startswith(("head.", "patch_head."))}
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
