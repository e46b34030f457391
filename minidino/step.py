"""One DINO training step, and the parts it needs (student, teacher, loss, optimizer, schedules).

The step, in the order it happens:
1. the teacher sees the 2 global crops, the student sees every crop (one backbone forward per
   crop resolution); under bf16 autocast on CUDA;
2. the DINO loss compares them (teacher centred and sharpened, no gradient), and the center
   moves towards the mean teacher output;
3. AdamW updates the student, with the learning rate and weight decay of this step, gradients
   clipped, and the last layer left alone during the first epoch(s);
4. the teacher moves towards the student by EMA with this step's momentum.

With `cfg.ibot` the student sees its global crops with blocks of patches masked (the teacher sees
them intact) and the iBOT patch loss is added (see minidino/ibot.py); with `cfg.koleo_weight > 0`
DINOv2's KoLeo term on the student's CLS features of each global crop is added too.

The fast path (this is the one place that describes it). The step above is what every run does;
what makes it fast on a GPU is how it is run, not what it computes:
- always on: the step reads no value back from the device. The loss is returned as a 0-d
  tensor on the device and `minidino.train` reads the losses of many steps at once, at its log
  steps only, so the CPU can queue the next steps while the GPU works. The learning rate, weight
  decay, momentum and temperature come from schedules held on the CPU, the EMA pairs the
  teacher's and the student's parameters once (`TeacherEMA`), AdamW is fused on CUDA, and the
  iBOT masks go to the GPU from pinned memory without waiting. (iBOT picks the masked patch
  tokens, a number known only on the device, so with iBOT the CPU still waits there.) On a GPU
  `minidino.train` writes each epoch's checkpoint from a thread (`CheckpointWriter` in
  minidino/checkpoint.py), so the next epoch starts while the disk works.
- the switch: `--compile true` compiles the forward pass (`torch.compile`); `--compile-mode`
  picks how. `reduce-overhead` records the compiled forward and backward as CUDA graphs and
  replays each with one launch: meant for small models (ViT-Tiny at 32 px), whose steps are
  many small kernels; `max-autotune` adds a search for the fastest matmul kernels at the first
  step. Both need the same crop shapes every step (the device path drops the last partial
  batch, so they are). A CPU has no CUDA graphs: there `reduce-overhead` compiles as `default`.
  Compiled steps give the same losses as eager ones up to float rounding (tests/test_fast_path.py
  states the tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from minidino.config import TrainConfig
from minidino.config_checks import CUDA_GRAPH_MODES
from minidino.distributed import is_distributed, rank, rank_seed, wrap_ddp
from minidino.head import DINOHead, MultiCropWrapper, cancel_last_layer_gradients
from minidino.ibot import IBOTLoss, IBOTOutput, IBOTWrapper, block_masks
from minidino.koleo import koleo_loss
from minidino.loss import DINOLoss
from minidino.schedules import Schedules
from minidino.teacher import TeacherEMA, build_teacher
from minidino.vit import VIT_FACTORIES, VisionTransformer


def build_backbone(cfg: TrainConfig) -> VisionTransformer:
    sizes = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth),
                               ("num_heads", cfg.num_heads)) if v is not None}
    return VIT_FACTORIES[cfg.arch](patch_size=cfg.patch_size, img_size=cfg.global_size,
                                   drop_path_rate=cfg.drop_path, n_registers=cfg.n_registers,
                                   layerscale_init=cfg.layerscale, mask_token=cfg.ibot, **sizes)


def build_student(cfg: TrainConfig) -> MultiCropWrapper:
    """Backbone + head; an `IBOTWrapper` (with a patch head if separate) for iBOT or KoLeo."""
    backbone = build_backbone(cfg)

    def head(out_dim: int) -> DINOHead:
        return DINOHead(backbone.embed_dim, out_dim, hidden_dim=cfg.hidden_dim,
                        bottleneck_dim=cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer)

    cls_head = head(cfg.out_dim)
    if not (cfg.ibot or cfg.koleo_weight > 0):
        return MultiCropWrapper(backbone, cls_head)
    separate = cfg.ibot and cfg.ibot_separate_head
    return IBOTWrapper(backbone, cls_head, head(cfg.ibot_out_dim or cfg.out_dim) if separate
                       else None)  # None: the CLS head maps the patch tokens too


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and norm parameters (1-D) get none, as in DINO."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    ema: TeacherEMA = field(init=False, repr=False)  # the teacher's EMA, parameters paired once

    def __post_init__(self) -> None:
        self.ema = TeacherEMA(self.teacher, self.student)

    def forward(self, crops: list[Tensor], masks: Tensor | None = None) -> tuple[Any, Any]:
        """(student_out, teacher_out): (n_crops*B, K) and (2*B, K) logits, or for an
        `IBOTWrapper` two `IBOTOutput`s (masks: (2*B, N) bool for iBOT, else None)."""
        student = self.student if self.ddp is None else self.ddp
        if not isinstance(self.student, IBOTWrapper):
            teacher_out = self.teacher(crops[:2])  # (2*B, K): the teacher sees only global crops
            return student(crops), teacher_out  # (n_crops*B, K), (2*B, K)
        teacher_out = self.teacher(crops[:2], masks, hide_masked=False)  # intact global crops
        return student(crops, masks), teacher_out  # the student's global crops are masked


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
    if cfg.ibot:  # held by the DINO loss, so that checkpoints of loss_fn keep both centers
        loss_fn.ibot = IBOTLoss(cfg.ibot_out_dim or cfg.out_dim, cfg.student_temp,
                                cfg.ibot_center_momentum, cfg.centering)
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, fused=device.type == "cuda")
    parts = DINOParts(cfg, student, teacher, loss_fn.to(device), optimizer,
                      Schedules.build(cfg, steps_per_epoch), steps_per_epoch, device)
    if is_distributed():
        parts.ddp = wrap_ddp(student, device)
    if rank() > 0:
        torch.manual_seed(rank_seed(cfg.seed, rank()))
    if cfg.compile:  # the fast path's switch: see the module docstring
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        parts.forward = torch.compile(parts.forward, mode=mode)  # type: ignore[method-assign]
    return parts


def train_step(parts: DINOParts, crops: list[Tensor], step: int) -> dict[str, Any]:
    """Run step number `step` on `crops` (list of (B, 3, S, S)); return the loss (a 0-d tensor
    still on the device, so nothing waits for the GPU) and both outputs."""
    cfg, optimizer = parts.cfg, parts.optimizer
    now = parts.schedules.at(step)  # this step's lr, weight decay, momentum, temperatures
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = now.lr
        if i == 0:  # the group with weight decay
            group["weight_decay"] = now.weight_decay
    teacher_temp = now.teacher_temp
    masks = None
    cuda = parts.device.type == "cuda"
    if cfg.ibot:  # drawn on the CPU for the 2 global crops of every image
        h, w = (size // cfg.patch_size for size in crops[0].shape[-2:])
        masks = block_masks(2 * crops[0].shape[0], (h, w), cfg.mask_ratio, cfg.mask_prob)
        masks = masks.flatten(1)  # (2*B, N)
        masks = (masks.pin_memory() if cuda else masks).to(parts.device, non_blocking=True)
    if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and cuda:
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
    with torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=cuda):
        student_out, teacher_out = parts.forward(crops, masks)  # (n_crops*B, K), (2*B, K)
    terms: dict[str, Tensor] = {}
    if isinstance(student_out, IBOTOutput):
        loss, terms = extra_losses(parts, student_out, teacher_out, masks, step)
        student_out, teacher_out = student_out.cls, teacher_out.cls
    else:
        loss = parts.loss_fn(student_out.float(), teacher_out.float(), teacher_temp)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad > 0:
        nn.utils.clip_grad_norm_(parts.student.parameters(), cfg.clip_grad)
    cancel_last_layer_gradients(parts.student, step // parts.steps_per_epoch,
                                cfg.freeze_last_layer)
    optimizer.step()
    parts.ema.update_(now.teacher_momentum)  # = ema_update_(teacher, student, momentum)
    return {"loss": loss.detach(), "student_out": student_out.detach(),
            "teacher_out": teacher_out.detach(), "teacher_temp": teacher_temp, **terms}


def extra_losses(parts: DINOParts, student_out: IBOTOutput, teacher_out: IBOTOutput,
                 masks: Tensor | None, step: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The DINO loss on the CLS tokens, plus the iBOT patch loss and the KoLeo term when they
    are on; returns the total and each term (detached): dino_loss, ibot_loss, koleo_loss."""
    cfg, now = parts.cfg, parts.schedules.at(step)
    loss = parts.loss_fn(student_out.cls.float(), teacher_out.cls.float(), now.teacher_temp)
    terms = {"dino_loss": loss.detach()}
    if cfg.ibot:
        assert masks is not None and student_out.patches is not None
        patch = parts.loss_fn.ibot(student_out.patches, teacher_out.patches, masks,
                                   now.ibot_teacher_temp)
        loss = loss + cfg.ibot_loss_weight * patch
        terms["ibot_loss"] = patch.detach()
    if cfg.koleo_weight > 0:  # within each global crop's batch, averaged over the 2 crops
        koleo = sum(koleo_loss(f) for f in student_out.features.float().chunk(2)) / 2
        loss = loss + cfg.koleo_weight * koleo
        terms["koleo_loss"] = koleo.detach()
    return loss, terms
