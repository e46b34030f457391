"""What the CLS token looks at: its attention maps per head, and how well they cover objects.

DINO's finding (paper, section 4.2.1 and Figure 3): in the last block, the CLS token's attention
of a self-distilled ViT falls on the objects of an image, each head on a part, without any
label or mask in training. To measure it, keep the patches that hold most of a head's attention
(`attention_mass_mask`, 60% of the mass as in the paper), compare that mask with the object
mask (`mask_iou`), and take the best head (`best_head_iou`); always next to the same network at
random initialisation and a trivial baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.augment import normalize
from minidino.vit import VisionTransformer


@torch.no_grad()
def cls_attention_maps(backbone: VisionTransformer, images: Tensor) -> Tensor:
    """Last-layer attention of the CLS token to every patch, per head.

    images: uint8 (B, 3, H, W) -> (B, h, H/p, W/p), each map summing to 1 over its patches
    (register tokens excluded, the rest renormalised).
    """
    was_training = backbone.training
    backbone.eval()
    x = normalize(images.to(next(backbone.parameters()).device))  # (B, 3, H, W)
    attn = backbone.get_last_selfattention(x).float()  # (B, h, T, T)
    backbone.train(was_training)
    p = backbone.patch_size
    gh, gw = images.shape[-2] // p, images.shape[-1] // p
    cls_to_patches = attn[:, :, 0, backbone.num_prefix_tokens:]  # (B, h, N)
    cls_to_patches = cls_to_patches / cls_to_patches.sum(-1, keepdim=True)
    return cls_to_patches.reshape(*cls_to_patches.shape[:2], gh, gw).cpu()  # (B, h, gh, gw)


def attention_mass_mask(attn: Tensor, keep: float = 0.6) -> Tensor:
    """The smallest set of patches that holds at least `keep` of the attention (DINO, Fig. 4).

    attn: non-negative weights (..., N), e.g. (h, N) or (B, h, N); they need not sum to 1
    -> bool (..., N). Patches are taken from the highest attention down until their share of the
    total reaches `keep`. Ties: patches with the same weight as the last one taken are kept too,
    so equal weights are never split (uniform attention keeps every patch).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must be in (0, 1]")
    values = attn.detach().double().sort(dim=-1, descending=True).values  # (..., N)
    share = values.cumsum(-1) / values.sum(-1, keepdim=True)  # (..., N), rises to 1
    n_before = (share < keep - 1e-9).sum(-1, keepdim=True)  # (..., 1) patches before the last
    cut = values.gather(-1, n_before.clamp(max=attn.shape[-1] - 1))  # (..., 1) least kept weight
    return attn.double() >= cut  # (..., N)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Intersection over union of boolean masks along the last dim: (..., N), (..., N) -> (...,).

    The shapes broadcast, e.g. pred (h, N) per head against target (N,). Two empty masks agree
    perfectly, so their IoU is defined as 1.
    """
    inter = (pred & target).sum(-1).float()  # (...,)
    union = (pred | target).sum(-1).float()  # (...,)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def patch_mask_iou(keep: Tensor, masks: Tensor) -> Tensor:
    """IoU of patch-grid masks with pixel masks: keep bool (N, k, gh, gw), k masks per image (one
    per head, say), each patch standing for its block of pixels; masks (N, H, W) -> (N, k)."""
    pixels = F.interpolate(keep.float(), size=masks.shape[-2:], mode="nearest").bool()
    return mask_iou(pixels.flatten(2), masks.flatten(1)[:, None, :].bool())  # (N, k)


def enlarge(images: Tensor, masks: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Images uint8 (N, 3, H, W) and masks (N, H, W) resized to size x size: the images
    bilinearly, the masks to their nearest pixel. A ViT reads a larger image on a finer grid of
    patches, so its attention maps are sharper; DINO draws its attention figures this way (the
    official `visualize_attention.py` resizes every image to 480 px)."""
    big = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    big_masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")
    return big.round().clamp(0, 255).to(torch.uint8), big_masks[:, 0].to(masks.dtype)


@torch.no_grad()
def best_head_iou(backbone: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
                  size: int | None = None) -> float:
    """Mean over images of the best head's IoU; images (N, 3, H, W) uint8, masks (N, H, W),
    both read at size x size when `size` is given (`enlarge`)."""
    if size is not None:
        images, masks = enlarge(images, masks, size)
    attn = cls_attention_maps(backbone, images)  # (N, h, gh, gw)
    N, h, gh, gw = attn.shape
    keep = attention_mass_mask(attn.reshape(N, h, gh * gw), 0.6).reshape(N, h, gh, gw)
    return float(patch_mask_iou(keep, masks).max(dim=1).values.mean())  # best of the h heads


def grid_iou_ceiling(masks: Tensor, patch_size: int) -> Tensor:
    """The best IoU any mask made of whole patches can reach against each pixel mask: the
    ceiling of a patch-level score such as `best_head_iou` (a head attending evenly to a set
    of patches has that set as its mass mask). masks (N, H, W), sides multiples of patch_size
    -> (N,).

    With a_i object pixels in patch i (of P = p^2) and A in the whole mask, a set S scores
    sum_S a_i / (A + sum_S (P - a_i)); the best S is always the patches whose object share
    a_i / P is at least some level, so trying every level, from the fullest patch down, finds it.
    """
    H, W = masks.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(f"masks of {H} x {W} px do not split into patches of {patch_size} px")
    P = patch_size ** 2
    a = F.avg_pool2d(masks.float()[:, None], patch_size).flatten(1) * P  # (N, n) object pixels
    a = a.sort(dim=1, descending=True).values  # (N, n), fullest patch first
    inter = a.cumsum(1)  # (N, n) the k fullest patches' object pixels
    union = a.sum(1, keepdim=True) + (P - a).cumsum(1)  # (N, n)
    best = (inter / union.clamp(min=1e-9)).amax(1)  # (N,)
    return torch.where(a.sum(1) > 0, best, torch.ones_like(best))  # no object: the empty mask
