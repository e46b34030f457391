"""A Vision Transformer (ViT), written from scratch, that DINO trains as its backbone.

A ViT cuts an image into patches, turns each patch into a token, and lets the tokens talk to
each other through self-attention. DINO reads the image's meaning off one extra token, CLS.

Parameter names and shapes follow timm's ``VisionTransformer`` (and the official DINO
checkpoints), so pretrained weights load with ``load_state_dict(..., strict=True)``.

Shapes: B batch, C channels, H x W pixels, p patch size, N = (H/p)(W/p) patch tokens,
R register tokens, T = 1 + R + N tokens, D width, h heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Cut an image into p x p patches and project each to D numbers: (B, C, H, W) -> (B, N, D).

    A Conv2d whose kernel and stride both equal p does exactly that: one output pixel per patch.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a 4-D floating tensor (B, C, H, W), got shape "
                             f"{tuple(x.shape)} and dtype {x.dtype}")
        C, H, W = x.shape[1:]
        if C != self.in_chans:
            raise ValueError(f"x has C={C} channels but in_chans={self.in_chans}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide the input, H={H} and W={W}")
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention: every token mixes in the values of the tokens it matches.

    One Linear makes q, k, v for all heads at once. Fast path: ``F.scaled_dot_product_attention``;
    the explicit softmax(q k^T / sqrt(d)) runs only to return the weights (DINO's attention maps).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, T, D) -> (B, T, D), plus the weights (B, h, T, T) if return_attention."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, D/h)
        if not return_attention:  # fused kernel, never materialises the T x T weights
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, D/h)
            return self.proj(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, T, T)
        out = attn @ v  # (B, h, T, D/h)
        return self.proj(out.transpose(1, 2).reshape(B, T, D)), attn  # (B, T, D), (B, h, T, T)


class Mlp(nn.Module):
    """Per-token two-layer MLP, D -> hidden -> D with GELU: where each token 'thinks' alone."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, D)


class DropPath(nn.Module):
    """Stochastic depth: in training, skip a residual branch for a random subset of samples.

    Each sample keeps the branch with probability 1 - drop_prob and kept branches are scaled
    by 1 / (1 - drop_prob), so the expected output is unchanged. Identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob={drop_prob} must be in [0, 1)")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, 1): one coin per sample
        mask = x.new_empty(shape).bernoulli_(keep)  # 1 = keep this sample's branch
        return x * (mask / keep)


class LayerScale(nn.Module):
    """Multiply a residual branch by a learned per-channel gain, started small (CaiT, DINOv2)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma  # (B, T, D)


class Block(nn.Module):
    """One transformer layer: attention, then MLP, each a pre-norm residual branch.

    Why pre-norm (x + f(norm(x)), not norm(x + f(x))): the residual stream stays a clean identity
    path, so gradients reach early layers undamped; deep stacks train stably at ViT learning rates.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, layerscale_init: float | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = nn.Identity() if layerscale_init is None else LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity() if layerscale_init is None else LayerScale(dim, layerscale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))  # (B, T, D)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))  # (B, T, D)


class VisionTransformer(nn.Module):
    """ViT backbone whose output is the CLS token's feature (B, D).

    Why a CLS token: a learned token that belongs to no patch attends to all of them, so after
    the last block it summarises the whole image; DINO's head reads only this token.
    Optional register tokens (DINOv2, "Vision Transformers Need Registers") give the model
    scratch space so it stops hijacking background patches; they are dropped at the output.
    With ``mask_token=True`` (iBOT, DINOv2) a learned vector can stand in for chosen patches:
    ``forward(x, masks)`` hides them from the model, which must still say what was there.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 n_registers: int = 0, layerscale_init: float | None = None,
                 mask_token: bool = False) -> None:
        super().__init__()
        for name, value in dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                mlp_ratio=mlp_ratio).items():
            if value <= 0:
                raise ValueError(f"{name}={value} must be positive")
        if img_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide img_size={img_size}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        if not (0.0 <= drop_path_rate < 1.0 and n_registers >= 0):
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1) and "
                             f"n_registers={n_registers} >= 0")
        self.img_size, self.patch_size, self.depth = img_size, patch_size, depth
        self.embed_dim, self.num_heads, self.n_registers = embed_dim, num_heads, n_registers
        self.num_prefix_tokens = 1 + n_registers  # tokens before the patches: CLS, registers
        self.grid_size = img_size // patch_size  # patches per side at the training size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Attention ignores order, so each position (CLS + every patch) gets a learned vector.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, embed_dim))
        if n_registers:
            self.reg_token = nn.Parameter(torch.zeros(1, n_registers, embed_dim))
        if mask_token:  # only then: checkpoints without it keep timm's keys
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # (1, D), starts at 0
        # Stochastic depth grows linearly with depth: early layers are dropped least (as DINO).
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r, layerscale_init) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def forward_flops(self, size: int) -> float:
        """Matrix-multiply FLOPs of one forward pass of a (size x size) image: the patch
        embedding, then per block and token 2 * 12 D^2 (qkv 3D^2, projection D^2, MLP 8D^2 at
        mlp_ratio 4) and attention's 4 T^2 D per block. Norms and GELUs are not counted."""
        patches = (size // self.patch_size) ** 2
        tokens = patches + self.num_prefix_tokens  # T
        mlp_ratio = self.blocks[0].mlp.fc1.out_features / self.embed_dim
        per_token = 2 * (4 + 2 * mlp_ratio) * self.embed_dim**2
        embed = 2 * patches * self.patch_embed.proj.in_channels * self.patch_size**2 * \
            self.embed_dim
        return embed + self.depth * (tokens * per_token + 4 * tokens**2 * self.embed_dim)

    def _init_weights(self) -> None:
        """DINO's init: truncated normal (std 0.02) for embeddings and Linear weights; biases 0."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.n_registers:
            nn.init.normal_(self.reg_token, std=1e-6)  # as DINOv2
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_embed(self, H: int, W: int) -> Tensor:
        """Position embeddings for an H x W input: (1, 1 + N, D).

        Why: they were learned for a g x g grid, but DINO also feeds smaller local crops (and
        evaluation may use larger images), so the grid is resized bicubically, CLS kept as is.
        """
        h, w, g = H // self.patch_size, W // self.patch_size, self.grid_size
        if h == g and w == g:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, D), (1, g*g, D)
        patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        patch_pos = F.interpolate(patch_pos.float(), size=(h, w), mode="bicubic",
                                  align_corners=False).to(self.pos_embed.dtype)  # (1, D, h, w)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)  # (1, N, D)
        return torch.cat([cls_pos, patch_pos], dim=1)  # (1, 1 + N, D)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + R + N, D): [CLS, registers, patches]. masks:
        None or (B, N) bool (or (B, H/p, W/p)), True where the mask token replaces the patch's
        embedding (iBOT); the position embedding is added to it all the same."""
        tokens = self.patch_embed(x)  # (B, N, D); also checks that x is a valid image batch
        (B, N, _), (H, W) = tokens.shape, x.shape[-2:]
        if masks is not None:
            if not hasattr(self, "mask_token") or masks.shape[0] != B or masks[0].numel() != N:
                raise ValueError(f"masks {tuple(masks.shape)} must be (B, N) = ({B}, {N}), for "
                                 "a model built with mask_token=True")
            token = self.mask_token.to(tokens.dtype)  # (1, D)
            tokens = torch.where(masks.reshape(B, N, 1), token, tokens)  # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, 1 + N, D)
        tokens = tokens + self.interpolate_pos_embed(H, W)  # (B, 1 + N, D)
        if self.n_registers:  # registers carry no position: they belong to no place in the image
            regs = self.reg_token.expand(B, -1, -1)  # (B, R, D)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)  # (B, 1 + R + N, D)
        return tokens

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> all tokens after the final norm, (B, 1 + R + N, D)."""
        x = self.prepare_tokens(x, masks)  # (B, T, D)
        for blk in self.blocks:
            x = blk(x)  # (B, T, D)
        return self.norm(x)

    def forward(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> the CLS feature (B, D); masks as in `prepare_tokens`."""
        return self.forward_features(x, masks)[:, 0]  # (B, D)

    def get_patch_tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the normed patch tokens (B, N, D), CLS and registers left out."""
        return self.forward_features(x)[:, self.num_prefix_tokens :]  # (B, N, D)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the last block's attention weights (B, h, T, T)."""
        x = self.prepare_tokens(x)  # (B, T, D)
        for blk in self.blocks[:-1]:
            x = blk(x)  # (B, T, D)
        last = self.blocks[-1]
        return last.attn(last.norm1(x), return_attention=True)[1]  # (B, h, T, T)

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """(B, C, H, W) -> the outputs of the last n blocks, each normed, each (B, T, D)."""
        if not 1 <= n <= self.depth:
            raise ValueError(f"n={n} must be between 1 and depth={self.depth}")
        x, outputs = self.prepare_tokens(x), []  # (B, T, D)
        for i, blk in enumerate(self.blocks):
            x = blk(x)  # (B, T, D)
            if i >= self.depth - n:
                outputs.append(self.norm(x))
        return outputs


# (embed_dim D, depth, num_heads) of each size; any of them can be overridden by keyword.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_nano": (96, 4, 3),  # CPU-sized
    "vit_tiny": (192, 12, 3),  # ViT-Ti, 5.5M parameters
    "vit_small": (384, 12, 6),  # ViT-S, 22M parameters (DINO's ViT-S/16 and ViT-S/8)
    "vit_base": (768, 12, 12),  # ViT-B, 86M parameters
}


def _make(name: str, patch_size: int, img_size: int, kwargs: dict) -> VisionTransformer:
    embed_dim, depth, num_heads = VIT_SIZES[name]
    defaults = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    return VisionTransformer(patch_size=patch_size, img_size=img_size, **{**defaults, **kwargs})


def vit_nano(patch_size: int = 8, img_size: int = 32, **kwargs) -> VisionTransformer:
    """CPU-sized ViT: D=96, depth 4, 3 heads (any argument can be overridden)."""
    return _make("vit_nano", patch_size, img_size, kwargs)


def vit_tiny(patch_size: int = 16, img_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-Ti: D=192, depth 12, 3 heads, 5.5M parameters."""
    return _make("vit_tiny", patch_size, img_size, kwargs)


def vit_small(patch_size: int = 16, img_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-S: D=384, depth 12, 6 heads, 22M parameters (DINO's ViT-S/16 and ViT-S/8)."""
    return _make("vit_small", patch_size, img_size, kwargs)


def vit_base(patch_size: int = 16, img_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-B: D=768, depth 12, 12 heads, 86M parameters."""
    return _make("vit_base", patch_size, img_size, kwargs)


VIT_FACTORIES: dict[str, Callable[..., VisionTransformer]] = {
    f.__name__: f for f in (vit_nano, vit_tiny, vit_small, vit_base)}
