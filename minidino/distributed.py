"""Training on several processes (GPUs, nodes) with torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 4 -m minidino train --preset cifar10              # one machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST \\
        --master_port 29500 -m minidino train --preset imagenette              # on each node

torchrun starts one process (a "rank") per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. Every rank then:
- builds the same student (same seed); DistributedDataParallel (DDP) averages the gradients
  over the ranks during `backward`, so every rank applies the same AdamW update and the EMA
  teachers stay equal without ever being sent;
- trains on its own slice of every global batch: `cfg.batch_size` is the *global* batch (so the
  learning-rate scaling, the schedules and the steps per epoch do not depend on the number of
  processes) and each rank gets `batch_size / world_size` images of it;
- draws its own augmentations (`rank_seed`);
- centres with the mean teacher output over *all* ranks (`DINOLoss.update_center` all-reduces).
Only rank 0 prints, logs and writes checkpoints; the run folder must be on a file system that
every node sees when resuming a multi-node run.

Without torchrun (WORLD_SIZE unset or 1) none of this is active and a run is unchanged.

No rank waits forever: every collective gives up after TIMEOUT_S (env MINIDINO_DIST_TIMEOUT, in
seconds; torch's defaults are 10 to 30 minutes), and a rank that fails aborts the process group
on its way out instead of waiting for the others in a clean goodbye. Its sockets close, the
others' collectives fail, and torchrun stops the remaining ranks within seconds.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

TIMEOUT_S = float(os.environ.get("MINIDINO_DIST_TIMEOUT", "300"))  # bound of every collective


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, logs and writes checkpoints."""
    return rank() == 0


def init_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes in the environment, if any.

    Returns the device this rank trains on (cuda:LOCAL_RANK on GPUs) and whether this call
    created the process group (then the caller should `shutdown()` it at the end).
    Backend: NCCL for CUDA tensors (with gloo for the few CPU ones), gloo on CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"device={device.type!r}: multi-process training runs on CUDA or CPU")
    if dist.is_initialized():
        return device, False
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=TIMEOUT_S))
    return device, True


def shutdown() -> None:
    """Leave the process group. Called in a `finally:` while an error (not a Ctrl-C or SIGTERM,
    where every rank stops together) is on its way out, it aborts the group instead: a clean
    destroy could wait on collectives that the other ranks will now never finish."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    error = sys.exc_info()[1]
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)  # experimental API
    if error is not None and not isinstance(error, KeyboardInterrupt) and abort is not None:
        abort()
    else:
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def per_rank_batch(batch_size: int, n_processes: int) -> int:
    """Each rank's share of the global batch; refuses a split that leaves ranks unequal."""
    if batch_size < n_processes:
        raise ValueError(f"batch_size={batch_size} is smaller than the number of processes "
                         f"({n_processes}): every process needs at least one image per step")
    if batch_size % n_processes:
        lower = batch_size // n_processes * n_processes
        raise ValueError(f"batch_size={batch_size} is the global batch and must split evenly "
                         f"over {n_processes} processes; try {lower} or {lower + n_processes}")
    return batch_size // n_processes


def rank_seed(seed: int, rank_: int) -> int:
    """Augmentation seed of a rank. Rank 0 keeps `seed`, so one process draws as before."""
    return seed + 1_000_003 * rank_


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around `model` (gradients averaged over ranks); `model` itself keeps its weights."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of `t` over the ranks (a new tensor; `t` itself when there is one process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (a CPU all-reduce, no GPU sync)."""
    if not is_distributed():
        return flag
    on_gpu = dist.get_backend() == "nccl"  # a group made by the caller with NCCL alone
    t = torch.tensor([int(flag)], device="cuda" if on_gpu else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` with one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
