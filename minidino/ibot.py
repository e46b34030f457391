"""iBOT: the student also predicts the teacher's patch tokens where its own patches were masked.

Why: DINO's loss only looks at the CLS token, so nothing asks the patch tokens to mean anything
on their own. iBOT ("Image BERT pre-training with Online Tokenizer", Zhou et al. 2022) adds a
masked-image-modelling loss whose targets come from the teacher itself, the "online tokenizer":
the student sees each global crop with some patches replaced by a learned mask token, the
teacher sees the same crop intact, and at every masked position the student must predict the
teacher's distribution over K prototypes. Dense features (segmentation, attention maps) improve.

How, for the G global crops of B images with N patches each (iBOT, Eq. 2 and Algorithm 1):

    masks: (G * B, N) bool, blocks of patches, drawn per image      `block_masks`
    p_t = softmax((teacher_patch - center_patch) / teacher_temp)    no gradient, unmasked view
    log p_s = log_softmax(student_patch / student_temp)             masked view
    per image: mean over its masked tokens of -sum_k p_t[k] log p_s[k]   (0 if none masked)
    loss = mean over the G * B images

`center_patch` is a running mean of the teacher's patch logits, separate from the CLS center.
Only the masked tokens go through the head (as DINOv2 does): the others add nothing to the loss,
and the center follows the masked tokens' mean. The total loss is the DINO CLS loss plus
`ibot_loss_weight` times this one. See https://arxiv.org/abs/2111.07832 (iBOT, Sec. 3) and
https://arxiv.org/abs/2304.07193 (DINOv2, Sec. 4).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from minidino.head import MultiCropWrapper
from minidino.sinkhorn import sinkhorn_knopp


@torch.no_grad()
def block_masks(n: int, grid: int | tuple[int, int], mask_ratio: tuple[float, float] = (0.1, 0.5),
                mask_prob: float = 0.5, min_patches: float = 4,
                aspect: tuple[float, float] = (0.3, 1 / 0.3), max_attempts: int = 10,
                max_blocks: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Random block-wise masks for n images of grid = (h, w) patches: (n, h, w) bool, True = masked.

    Why blocks: a lone masked patch is easy to fill in from its neighbours; whole blocks make the
    model use the context of the image (BEiT, iBOT). int(n * mask_prob) of the images (chosen at
    random) get a mask; their target ratios are spread evenly over `mask_ratio` (one draw per
    equal slice, as DINOv2). Per image, as BEiT's generator: while fewer than ratio * h * w
    patches are masked, draw a block of area U(min_patches, still missing) and aspect ratio
    (height / width) log-uniform in `aspect`, at a random place; keep it if it masks at least one
    new patch and no more than are still missing. Stop after `max_attempts` failed draws in a row
    (or `max_blocks` kept blocks), so a mask may end slightly below its target, never above it.
    All images are drawn at once, one block each per round, on the CPU.
    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    lo, hi = mask_ratio
    if not (n >= 0 and h >= 1 and w >= 1 and 0 <= lo <= hi <= 1 and 0 <= mask_prob <= 1
            and 0 < aspect[0] <= aspect[1] and max_attempts >= 1):
        raise ValueError(f"block_masks: n={n}, grid={grid}, mask_ratio={mask_ratio}, "
                         f"mask_prob={mask_prob}, aspect={aspect}, max_attempts={max_attempts}: "
                         "need n >= 0, a grid of >= 1 patch, 0 <= low <= high <= 1, a "
                         "probability in [0, 1], 0 < aspect low <= high, max_attempts >= 1")

    def rand(size: int) -> Tensor:
        return torch.rand(size, generator=generator, dtype=torch.float64)

    n_masked = int(n * mask_prob)
    slices = (torch.arange(n_masked, dtype=torch.float64) + rand(n_masked)) / max(n_masked, 1)
    target = torch.zeros(n, dtype=torch.float64)  # patches to mask per image
    chosen = torch.randperm(n, generator=generator)[:n_masked]  # (n_masked,)
    target[chosen] = (lo + (hi - lo) * slices) * (h * w)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    count = torch.zeros(n, dtype=torch.float64)  # patches masked so far
    fails = torch.zeros(n, dtype=torch.long)  # failed draws in a row
    blocks = torch.zeros(n, dtype=torch.long)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    while True:
        active = (count < target) & (fails < max_attempts)  # (n,)
        if max_blocks is not None:
            active &= blocks < max_blocks
        if not active.any():
            return mask
        missing = target - count  # (n,)
        area = min_patches + (missing - min_patches) * rand(n)  # (n,)
        ratio = torch.exp(log_lo + (log_hi - log_lo) * rand(n))  # (n,) height / width
        bh = torch.sqrt(area * ratio).round().long()  # (n,) block height in patches
        bw = torch.sqrt(area / ratio).round().long()  # (n,)
        fits = (bh < h) & (bw < w)  # as BEiT: a block never spans the whole grid
        top = (rand(n) * (h - bh + 1).clamp(min=1)).long().view(n, 1, 1)  # (n, 1, 1)
        left = (rand(n) * (w - bw + 1).clamp(min=1)).long().view(n, 1, 1)
        block = (rows >= top) & (rows < top + bh.view(n, 1, 1)) \
            & (cols >= left) & (cols < left + bw.view(n, 1, 1))  # (n, h, w)
        new = (block & ~mask).sum(dim=(1, 2))  # (n,) patches this block would add
        keep = active & fits & (new > 0) & (new <= missing)  # (n,)
        mask |= block & keep.view(n, 1, 1)
        count += new * keep
        blocks += keep.long()
        fails = torch.where(keep, 0, fails + active.long())


class IBOTOutput(NamedTuple):
    """What `IBOTWrapper` returns for G global crops of B images and M masked tokens."""

    cls: Tensor  # (n_crops * B, K) head logits of every crop's CLS token, in crop order
    features: Tensor  # (G * B, D) backbone CLS features of the global crops (for KoLeo)
    patches: Tensor | None  # (M, K_patch) head logits of the masked patch tokens, or None


class IBOTWrapper(MultiCropWrapper):
    """`MultiCropWrapper` that also returns the global crops' CLS features and, given masks,
    the patch head's logits at the masked positions.

    The global crops go through the backbone once, together (with the mask token at the masked
    patches, unless hide_masked=False: the teacher sees them intact but is scored at the same
    places); the local crops as in `MultiCropWrapper`. `patch_head=None` shares the CLS head.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, patch_head: nn.Module | None = None,
                 n_global_crops: int = 2) -> None:
        super().__init__(backbone, head)
        self.patch_head = patch_head
        self.n_global_crops = n_global_crops

    def forward(self, crops: list[Tensor], masks: Tensor | None = None,
                hide_masked: bool = True) -> IBOTOutput:
        """crops: list of (B, 3, S_i, S_i), global crops first; masks: (G * B, N) bool or None."""
        G = self.n_global_crops
        if len(crops) < G:
            raise ValueError(f"got {len(crops)} crops; the first n_global_crops={G} are global")
        tokens = self.backbone.forward_features(torch.cat(crops[:G]),
                                                masks if hide_masked else None)  # (G*B, T, D)
        features = [tokens[:, 0]]  # (G*B, D)
        start = G
        while start < len(crops):  # local crops: one backbone call per run of equal sizes
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))  # (n_same*B, D)
            start = end
        cls = self.head(torch.cat(features))  # (n_crops*B, K)
        patches = None
        if masks is not None:
            patch_tokens = tokens[:, self.backbone.num_prefix_tokens:]  # (G*B, N, D)
            chosen = patch_tokens[masks.reshape(patch_tokens.shape[:2])]  # (M, D)
            head = self.head if self.patch_head is None else self.patch_head
            patches = head(chosen)  # (M, K_patch)
        return IBOTOutput(cls, tokens[:, 0], patches)


def ibot_patch_loss(student_patches: Tensor, teacher_probs: Tensor, masks: Tensor,
                    student_temp: float) -> Tensor:
    """The iBOT cross-entropy over masked tokens, given the teacher's target probabilities.

    student_patches: (M, K) student logits at the masked positions, in the order of masks[masks];
    teacher_probs: (M, K) targets, rows sum to 1; masks: (G * B, N) bool. Each image's masked
    tokens are averaged, then the G * B images (an image without a mask adds 0). float32 scalar.
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp={student_temp!r} must be > 0")
    M = int(masks.sum())
    if student_patches.shape != teacher_probs.shape or student_patches.shape[0] != M:
        raise ValueError(f"student_patches {tuple(student_patches.shape)} and teacher_probs "
                         f"{tuple(teacher_probs.shape)} must both be (M, K) with M={M} masked "
                         "tokens (masks.sum())")
    with torch.autocast(device_type=student_patches.device.type, enabled=False):
        log_p_s = F.log_softmax(student_patches.float() / student_temp, dim=-1)  # (M, K)
        ce = -(teacher_probs.detach().float() * log_p_s).sum(dim=-1)  # (M,)
        per_image = masks.sum(dim=1, keepdim=True).clamp(min=1).float()  # (G*B, 1)
        weight = (1.0 / per_image).expand(masks.shape)[masks]  # (M,) 1 / masked tokens of its image
        return (ce * weight).sum() / masks.shape[0]


class IBOTLoss(nn.Module):
    """`ibot_patch_loss` plus its own teacher `center` (1, K), updated after every call.

    centering: "center" (iBOT: subtract the running mean, then a sharpened softmax) or
    "sinkhorn" (DINOv2: Sinkhorn-Knopp over the batch's masked tokens; the center is kept for
    diagnostics). Under torch.distributed the center averages every process's masked tokens.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "center") -> None:
        super().__init__()
        if out_dim < 2 or not student_temp > 0 or not 0 <= center_momentum <= 1 \
                or centering not in ("center", "sinkhorn"):
            raise ValueError(f"IBOTLoss: out_dim={out_dim} (>= 2), student_temp={student_temp} "
                             f"(> 0), center_momentum={center_momentum} (in [0, 1]), "
                             f"centering={centering!r} ('center' or 'sinkhorn')")
        self.out_dim, self.student_temp = out_dim, student_temp
        self.center_momentum, self.centering = center_momentum, centering
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K)

    def forward(self, student_patches: Tensor, teacher_patches: Tensor, masks: Tensor,
                teacher_temp: float) -> Tensor:
        """(M, K) student and teacher logits at the masked tokens, masks (G * B, N) -> scalar.

        The loss uses the current center; the center is then updated with these tokens.
        """
        if not teacher_temp > 0:
            raise ValueError(f"teacher_temp={teacher_temp!r} must be > 0")
        teacher = teacher_patches.detach().float()  # (M, K)
        if teacher.shape[0] == 0:  # no masked token in this batch: nothing to predict
            loss = student_patches.float().sum() * 0.0
        else:
            if self.centering == "sinkhorn":
                probs = sinkhorn_knopp(teacher, teacher_temp)  # (M, K)
            else:
                probs = F.softmax((teacher - self.center) / teacher_temp, dim=-1)  # (M, K)
            loss = ibot_patch_loss(student_patches, probs, masks, self.student_temp)
        self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_patches: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the rows of teacher_patches (M, K)."""
        total = torch.cat([teacher_patches.float().sum(dim=0),
                           teacher_patches.new_full((1,), teacher_patches.shape[0])])  # (K + 1,)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        batch_center = total[None, :-1] / total[-1].clamp(min=1)  # (1, K)
        m = self.center_momentum
        moved = m * self.center + (1.0 - m) * batch_center  # (1, K)
        self.center.copy_(torch.where(total[-1] > 0, moved, self.center))  # no tokens: stays
