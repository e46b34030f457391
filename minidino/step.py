"""One DINO training step, and the parts it needs (student, teacher, loss, optimizer, schedules).

The step, in the order it happens:
1. the teacher sees the 2 global crops, the student sees every crop (one backbone forward per
   crop resolution); under bf16 autocast on CUDA;
2. the DINO loss compares them (teacher centred and sharpened, no gradient), and the center
   moves towards the mean teacher output;
3. AdamW updates the student, with the learning rate and weight decay of this step, gradients
   clipped, and the last layer left alone during the first epoch(s);
4. the teacher moves towards the student by EMA with this step's momentum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from minidino.config import TrainConfig
from minidino.distributed import is_distributed, rank, rank_seed, wrap_ddp
from minidino.head import DINOHead, MultiCropWrapper
from minidino.loss import DINOLoss, teacher_temp_schedule
from minidino.teacher import (
    build_teacher,
    cancel_last_layer_gradients,
    cosine_schedule,
    ema_update_,
)
from minidino.vit import VIT_FACTORIES, VisionTransformer


def build_backbone(cfg: TrainConfig) -> VisionTransformer:
    sizes = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth),
                               ("num_heads", cfg.num_heads)) if v is not None}
    return VIT_FACTORIES[cfg.arch](patch_size=cfg.patch_size, img_size=cfg.global_size,
                                   drop_path_rate=cfg.drop_path, n_registers=cfg.n_registers,
                                   **sizes)


def build_student(cfg: TrainConfig) -> MultiCropWrapper:
    backbone = build_backbone(cfg)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, hidden_dim=cfg.hidden_dim,
                    bottleneck_dim=cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer)
    return MultiCropWrapper(backbone, head)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and norm parameters (1-D) get none, as in DINO."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Schedules:
    """Per-step values of everything that changes during training."""

    lr: Tensor  # (total_steps,)
    weight_decay: Tensor
    teacher_momentum: Tensor
    teacher_temp: Tensor

    @classmethod
    def build(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedules:
        total = cfg.epochs * steps_per_epoch
        peak_lr = cfg.lr * cfg.batch_size / 256  # the linear scaling rule
        return cls(
            lr=cosine_schedule(peak_lr, cfg.min_lr, total, cfg.warmup_epochs * steps_per_epoch),
            weight_decay=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total),
            teacher_momentum=cosine_schedule(cfg.teacher_momentum, 1.0, total),
            teacher_temp=teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                               cfg.warmup_teacher_temp_epochs * steps_per_epoch,
                                               total),
        )


@dataclass
class DINOParts:
    """Everything a step reads or updates."""

    cfg: TrainConfig
    student: MultiCropWrapper
    teacher: MultiCropWrapper
    loss_fn: DINOLoss
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    steps_per_epoch: int
    device: torch.device
    ddp: nn.Module | None = None  # the student inside DistributedDataParallel, under torchrun

    def forward(self, crops: list[Tensor]) -> tuple[Tensor, Tensor]:
        teacher_out = self.teacher(crops[:2])  # (2*B, K): the teacher sees only global crops
        student = self.student if self.ddp is None else self.ddp
        student_out = student(crops)  # (n_crops*B, K)
        return student_out, teacher_out


def build_parts(cfg: TrainConfig, steps_per_epoch: int, device: torch.device) -> DINOParts:
    """Student (seeded with cfg.seed), its EMA teacher, the loss, AdamW and the schedules.

    Under torchrun the student is also wrapped in DDP (`parts.ddp`, gradients averaged over the
    ranks) and every rank but 0 reseeds torch's generator, so drop-path masks differ per rank.
    """
    torch.manual_seed(cfg.seed)
    student = build_student(cfg).to(device)
    teacher = build_teacher(student)
    loss_fn = DINOLoss(cfg.out_dim, cfg.n_crops, cfg.student_temp, cfg.center_momentum,
                       centering=cfg.centering)
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, fused=device.type == "cuda")
    parts = DINOParts(cfg, student, teacher, loss_fn.to(device), optimizer,
                      Schedules.build(cfg, steps_per_epoch), steps_per_epoch, device)
    if is_distributed():
        parts.ddp = wrap_ddp(student, device)
    if rank() > 0:
        torch.manual_seed(rank_seed(cfg.seed, rank()))
    if cfg.compile:
        parts.forward = torch.compile(parts.forward)  # type: ignore[method-assign]
    return parts


def train_step(parts: DINOParts, crops: list[Tensor], step: int) -> dict[str, Any]:
    """Run step number `step` on `crops` (list of (B, 3, S, S)); return the loss (a 0-d tensor
    still on the device, so nothing waits for the GPU) and both outputs."""
    cfg, sched, optimizer = parts.cfg, parts.schedules, parts.optimizer
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(sched.lr[step])
        if i == 0:  # the group with weight decay
            group["weight_decay"] = float(sched.weight_decay[step])
    teacher_temp = float(sched.teacher_temp[step])
    cuda = parts.device.type == "cuda"
    with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=cuda):
        student_out, teacher_out = parts.forward(crops)  # (n_crops*B, K), (2*B, K)
    loss = parts.loss_fn(student_out.float(), teacher_out.float(), teacher_temp)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad > 0:
        nn.utils.clip_grad_norm_(parts.student.parameters(), cfg.clip_grad)
    cancel_last_layer_gradients(parts.student, step // parts.steps_per_epoch,
                                cfg.freeze_last_layer)
    optimizer.step()
    ema_update_(parts.teacher, parts.student, float(sched.teacher_momentum[step]))
    return {"loss": loss.detach(), "student_out": student_out.detach(),
            "teacher_out": teacher_out.detach(), "teacher_temp": teacher_temp}
