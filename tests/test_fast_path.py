"""The fast path (described in minidino/step.py): the compiled step gives the plain
step's losses, the step computes what the plain DINO step computes, and the training loop reads
values back from the device only at its log steps, all at once, with the same logged numbers."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from minidino import train as train_module
from minidino.batches import make_batches
from minidino.config import TrainConfig, fast_config
from minidino.config_checks import ConfigError
from minidino.data import DatasetSplit, TensorImageDataset
from minidino.head import cancel_last_layer_gradients
from minidino.presets import get_preset
from minidino.shapes import SHAPE_CLASSES, make_shapes
from minidino.step import build_parts, train_step
from minidino.teacher import ema_update_
from minidino.train import train
from minidino.training_log import TrainingLog


@pytest.fixture(scope="module")
def split() -> DatasetSplit:
    images, labels, _ = make_shapes(128, 32, "easy", seed=0)  # (128, 3, 32, 32) uint8
    return DatasetSplit(images, labels, list(SHAPE_CLASSES), TensorImageDataset(images, labels))


def tiny(tmp_path: Path, **changes: Any) -> TrainConfig:
    """fast_config's nano ViT, one block, on 128 images: 4 steps per epoch, 8 in all."""
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, n_train=None,
                  out_dir=str(tmp_path))
    return replace(cfg, **changes)


def run(cfg: TrainConfig, split: DatasetSplit) -> list[dict[str, Any]]:
    """Train on `split`; the records of metrics.jsonl, one per step."""
    with contextlib.redirect_stdout(io.StringIO()):  # the config listing and epoch lines
        run_dir = train(cfg, progress=False, train_split=split)["run_dir"]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Ops after which a GPU run makes the CPU wait: a value read on the host (.item(), float(t),
# bool(t)), a tensor made from host data (torch.tensor(...) on CUDA copies and waits), an output
# whose shape depends on the values (boolean indexing, nonzero, unique). On the CPU nothing waits,
# but the same ops run, so counting them here counts the waits a GPU run would have.
WAITS = {"_local_scalar_dense", "lift_fresh", "nonzero", "_unique2", "unique_dim",
         "masked_select", "equal", "is_nonzero"}


class HostReads(TorchDispatchMode):
    """Counts WAITS ops (and Tensor.tolist, which is not dispatched) by name. torch.optim's own
    reads are left out: a non-fused optimizer keeps its step counters on the CPU on purpose, and
    on CUDA minidino's AdamW is fused, with no read at all. So are the schedules' reads
    (`Schedules.at`): their tensors are made on the CPU and stay there, so reading one never
    waits for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
        if (name in WAITS or bool_index) and not _called_from("torch/optim") \
                and not _called_from("minidino/schedules.py"):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _called_from(part: str) -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if part in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def counting(reads: HostReads) -> Iterator[HostReads]:
    original = torch.Tensor.tolist

    def tolist(t: torch.Tensor) -> Any:
        reads.counts["tolist"] += 1
        return original(t)

    torch.Tensor.tolist = tolist  # type: ignore[method-assign]
    try:
        with reads:
            yield reads
    finally:
        torch.Tensor.tolist = original  # type: ignore[method-assign]


@pytest.mark.filterwarnings("ignore")
def test_fast_path_gives_the_plain_paths_losses(tmp_path: Path, split) -> None:
    # Tolerance: rel 1e-4 (abs 1e-5 for losses near 0). The compiled step runs kernels of its
    # own (ops fused, float32 sums taken in another order), so its outputs differ from eager
    # ones in the last bits: about 1e-7 relative in these 4 steps here. Each step builds on the
    # last and AdamW divides by the root of small squared gradients, so such differences can
    # grow from step to step; the bound leaves them a thousandfold room. A real difference is
    # far larger: in this setup one skipped EMA update changes the next losses by about 1e-2
    # relative, a reset center by 6e-2 or more, and each step moves the loss by over 1e-2.
    # One crop size (no local crops) keeps the compiled graph, and the compile time, small.
    cfg = tiny(tmp_path, n_local_crops=0, log_every=1, max_steps=4)
    want = [r["loss"] for r in run(replace(cfg, run_name="plain"), split)]
    torch._dynamo.reset()
    try:
        got = [r["loss"] for r in run(replace(cfg, run_name="fast", compile=True,
                                              compile_mode="reduce-overhead"), split)]
    finally:
        torch._dynamo.reset()
    assert len(want) == 4 and abs(want[-1] - want[0]) > 1e-2 * abs(want[0])  # training moves it
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_the_step_computes_what_the_plain_step_computes() -> None:
    # The step reads its schedules with Schedules.at and updates the teacher with parameter
    # lists paired once (TeacherEMA): the arithmetic of the plain step below, equal to the bit.
    cfg = replace(tiny(Path(".")), epochs=2, freeze_last_layer=1, clip_grad=0.05)
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)] + \
        [torch.randn(8, 3, 16, 16, generator=g) for _ in range(cfg.n_local_crops)]
    with torch.random.fork_rng():
        fast, plain = (build_parts(cfg, steps_per_epoch=2, device=torch.device("cpu"))
                       for _ in range(2))
    for step in range(4):  # the last layer is frozen in epoch 0 (steps 0 and 1)
        got = train_step(fast, crops, step)["loss"]
        assert torch.equal(got, plain_step(plain, crops, step))
    for a, b in zip([*fast.student.parameters(), *fast.teacher.parameters()],
                    [*plain.student.parameters(), *plain.teacher.parameters()], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fast.loss_fn.center, plain.loss_fn.center)


def plain_step(parts: Any, crops: list[torch.Tensor], step: int) -> torch.Tensor:
    """The DINO step written plainly, as lesson 06 builds it."""
    cfg, sched, optimizer = parts.cfg, parts.schedules, parts.optimizer
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(sched.lr[step])
        if i == 0:
            group["weight_decay"] = float(sched.weight_decay[step])
    student_out, teacher_out = parts.student(crops), parts.teacher(crops[:2])
    loss = parts.loss_fn(student_out, teacher_out, float(sched.teacher_temp[step]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(parts.student.parameters(), cfg.clip_grad)
    cancel_last_layer_gradients(parts.student, step // parts.steps_per_epoch,
                                cfg.freeze_last_layer)
    optimizer.step()
    ema_update_(parts.teacher, parts.student, float(sched.teacher_momentum[step]))
    return loss.detach()


def test_batched_reads_log_the_values_read_at_every_step(tmp_path: Path, split) -> None:
    # log_every=1 reads the loss back after every step; log_every=3 keeps the losses on the
    # device and reads 3 at a time (and what is pending at the end of an epoch): same numbers.
    each = run(tiny(tmp_path, run_name="each", log_every=1), split)
    batched = run(tiny(tmp_path, run_name="batched", log_every=3), split)
    assert [r["step"] for r in batched] == [r["step"] for r in each] == list(range(8))
    for a, b in zip(each, batched, strict=True):
        for key in b.keys() - {"time", "images_per_s"}:  # the diagnostics at the log steps too
            assert a[key] == b[key], (b["step"], key)
    assert sum("teacher_entropy" in r for r in batched) == 3  # steps 2, 5 and the last, 7


def test_the_loop_reads_back_only_at_its_log_steps(tmp_path: Path, split,
                                                  monkeypatch) -> None:
    reads: dict[str, list[Counter[str]]] = {"step": [], "log": []}

    def step_counted(parts: Any, crops: list[torch.Tensor], step: int) -> dict[str, Any]:
        with counting(HostReads()) as counter:
            out = train_step(parts, crops, step)
        reads["step"].append(counter.counts)
        return out

    after_step = TrainingLog.after_step

    def after_step_counted(self: TrainingLog, step: int, out: Any, images: int) -> None:
        with counting(HostReads()) as counter:
            after_step(self, step, out, images)
        reads["log"].append(counter.counts)

    monkeypatch.setattr(train_module, "train_step", step_counted)
    monkeypatch.setattr(TrainingLog, "after_step", after_step_counted)
    run(tiny(tmp_path, log_every=3), split)
    assert reads["step"] == [Counter()] * 8  # no step waits for the device
    log_steps = {2, 5, 7}  # after steps 3, 6 and the last, 8
    for i, counts in enumerate(reads["log"]):
        assert (sum(counts.values()) > 0) == (i in log_steps), (i, counts)


@pytest.mark.parametrize("centering", ["center", "sinkhorn"])
def test_crops_and_step_make_no_tensor_from_host_data_after_the_first_step(
        split, centering: str) -> None:
    # The whole step of a run on the device path, the batched crops included: `cpu-demo`'s
    # crops (2 global, 4 local; blur, solarization) and model (one block here), over two epochs.
    # The crops' constants (probabilities of each crop, normalisation's mean and std, the hue
    # rotation's) are made from Python numbers once, at the first step, and reused; after it,
    # nothing is read back and no tensor is made from host data. Sinkhorn-Knopp centering too.
    cfg = replace(get_preset("cpu-demo"), depth=1, n_train=None, data_mode="device",
                  centering=centering)
    device = torch.device("cpu")
    batches = make_batches(cfg, split, device, progress=False)
    assert batches.steps_per_epoch == 2
    parts = build_parts(cfg, steps_per_epoch=2, device=device)
    steps = (crops for epoch in range(2) for crops in batches.epoch(epoch))
    counts = []
    for step in range(4):
        with counting(HostReads()) as counter:
            train_step(parts, next(steps), step)  # the crops are made here, then the step runs
        counts.append(counter.counts)
    assert set(counts[0]) <= {"lift_fresh"}, counts[0]  # the constants, made once
    assert counts[1:] == [Counter()] * 3, counts


def test_compile_mode_is_checked() -> None:
    cfg = fast_config(get_preset("cpu-demo"))
    with pytest.raises(ConfigError, match=r"compile_mode='fast'.*'reduce-overhead'"):
        replace(cfg, compile=True, compile_mode="fast")
    with pytest.raises(ConfigError, match=r"compile_mode='max-autotune'.*compile=true"):
        replace(cfg, compile_mode="max-autotune")
    assert replace(cfg, compile=True, compile_mode="max-autotune").compile_mode == "max-autotune"
