"""Checks for lesson 01, a ViT from scratch: patches, attention, the block, position embeddings.

Every check compares the learner's function with minidino's own code (`minidino.vit`) or with
PyTorch's fused attention, on seeded random inputs whose sizes are chosen so that the usual
mistakes (a transposed patch grid, softmax over the wrong axis, post-norm, no interpolation)
change the numbers and cannot pass by luck.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from minidino.checks._core import expect, expect_close, run_check
from minidino.vit import Attention, Block, PatchEmbed, VisionTransformer

__all__ = ["patchify", "attention", "block_forward", "interpolate_pos_embed"]


# ------------------------------------------------------------------ references


def reference_patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): patches row by row, each flattened as (C, p, p)."""
    patches = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (B, C*p*p, N)
    return patches.transpose(1, 2)  # (B, N, C*p*p)


def reference_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """q (B, h, Tq, d), k and v (B, h, Tk, d) -> out (B, h, Tq, d), weights (B, h, Tq, Tk)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, Tq, Tk)
    attn = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
    return attn @ v, attn  # (B, h, Tq, d), (B, h, Tq, Tk)


def reference_block_forward(x: Tensor, norm1: Callable, attn: Callable, norm2: Callable,
                            mlp: Callable) -> Tensor:
    """Pre-norm block: x + attn(norm1(x)), then + mlp(norm2(.)); (B, T, D) -> (B, T, D)."""
    x = x + attn(norm1(x))  # (B, T, D)
    return x + mlp(norm2(x))  # (B, T, D)


def reference_interpolate_pos_embed(pos_embed: Tensor, h: int, w: int) -> Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + h*w, D), as `VisionTransformer.interpolate_pos_embed` does."""
    g = int(round((pos_embed.shape[1] - 1) ** 0.5))
    vit = SimpleNamespace(patch_size=1, grid_size=g, pos_embed=pos_embed)  # one pixel per patch
    return VisionTransformer.interpolate_pos_embed(vit, h, w)  # type: ignore[arg-type]


# ------------------------------------------------------------------ Exercise 1.1


def patchify(fn: Callable[[Tensor, int], Tensor]) -> Callable[[Tensor, int], Tensor]:
    """Check `fn(images (B, C, H, W), patch_size) -> (B, N, C*p*p)`."""
    ex = "Exercise 1.1 (patchify)"

    def trials(fn: Callable[[Tensor, int], Tensor]) -> int:
        g = torch.Generator().manual_seed(11)
        cases = [(2, 3, 8, 8, 4), (1, 3, 12, 8, 4), (2, 2, 6, 9, 3), (1, 3, 8, 8, 8)]
        for B, C, H, W, p in cases:
            images = torch.randn(B, C, H, W, generator=g)  # (B, C, H, W)
            case = f"images {tuple(images.shape)}, patch_size={p}"
            expect_close(ex, case, fn(images, p), reference_patchify(images, p),
                         hint="N = (H/p)(W/p) patches in reading order (left to right, then top to "
                              "bottom); each patch flattened channel first, as (C, p, p), which is "
                              "the layout of PatchEmbed's conv weight. A transposed grid or a "
                              "(p, p, C) flattening changes the values, not the shape.")
        # the patches must feed PatchEmbed's own weights: conv == patches @ W^T + b
        embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=5)
        images = torch.randn(2, 3, 8, 12, generator=g)  # (B, C, H, W)
        weight = embed.proj.weight.flatten(1)  # (D, C*p*p)
        with torch.no_grad():
            tokens = fn(images, 4) @ weight.T + embed.proj.bias  # (B, N, D)
            expect_close(ex, "patches @ PatchEmbed.proj.weight.flatten(1).T + bias", tokens,
                         embed(images), hint="the flattening order must match the conv weight's "
                                             "(C, p, p) order and the patches must be row-major")
        return len(cases) + 1

    return run_check(ex, fn, reference_patchify, trials)


# ------------------------------------------------------------------ Exercise 1.2


def attention(fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
              ) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Check `fn(q, k, v) -> (out (B, h, Tq, d), attn (B, h, Tq, Tk))`."""
    ex = "Exercise 1.2 (attention)"
    axis_hint = ("the softmax runs over the keys (the last axis, dim=-1): each query's weights "
                 "must sum to 1 over the tokens it looks at")
    hint = ("out = softmax(q k^T / sqrt(d)) v, with d = q.shape[-1] (the head width), and "
            + axis_hint)

    def trials(fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> int:
        g = torch.Generator().manual_seed(12)
        n = 0
        for B, h, Tq, Tk, d in [(2, 3, 5, 5, 8), (1, 2, 4, 7, 16), (2, 1, 6, 6, 4)]:
            q = 2 * torch.randn(B, h, Tq, d, generator=g)  # (B, h, Tq, d)
            k = 2 * torch.randn(B, h, Tk, d, generator=g)  # (B, h, Tk, d)
            v = torch.randn(B, h, Tk, d, generator=g)  # (B, h, Tk, d)
            case = f"q {tuple(q.shape)}, k and v {tuple(k.shape)}"
            result = fn(q, k, v)
            expect(ex, case, isinstance(result, tuple) and len(result) == 2,
                   f"expected a pair (out, attn), got {type(result).__name__}",
                   "return both the output and the attention weights")
            out, attn = result
            expect_close(ex, case + ": attention weights", attn, reference_attention(q, k, v)[1],
                         hint=hint)
            expect_close(ex, case + ": rows of the weights sum to 1", attn.sum(-1),
                         torch.ones(B, h, Tq), hint=axis_hint)
            expect_close(ex, case + ": output vs F.scaled_dot_product_attention", out,
                         F.scaled_dot_product_attention(q, k, v), hint=hint)
            n += 1
        # the same heads as minidino's Attention module: its output and its weights
        torch.manual_seed(12)
        module = Attention(dim=12, num_heads=3).eval()
        x = torch.randn(2, 5, 12, generator=g)  # (B, T, D)
        with torch.no_grad():
            qkv = module.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)  # (3, B, h, T, d)
            out, attn = fn(*qkv.unbind(0))
            expected_out, expected_attn = module(x, return_attention=True)
            merged = module.proj(out.transpose(1, 2).reshape(2, 5, 12))  # (B, T, D)
        expect_close(ex, "minidino.vit.Attention(dim=12, num_heads=3): weights", attn,
                     expected_attn, hint=hint)
        expect_close(ex, "minidino.vit.Attention(dim=12, num_heads=3): output", merged,
                     expected_out, hint=hint)
        return n + 1

    return run_check(ex, fn, reference_attention, trials)


# ------------------------------------------------------------------ Exercise 1.3


def _random_block(dim: int, num_heads: int, seed: int) -> Block:
    """A Block in eval mode whose LayerNorms are not the identity (so norm mistakes show)."""
    torch.manual_seed(seed)
    block = Block(dim, num_heads, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.5)
        for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            linear.weight.normal_(0.0, 0.3)
    return block


def block_forward(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check `fn(x, norm1, attn, norm2, mlp) -> (B, T, D)` against `minidino.vit.Block`."""
    ex = "Exercise 1.3 (block_forward)"
    hint = ("pre-norm: x = x + attn(norm1(x)), then x = x + mlp(norm2(x)); the norm goes inside "
            "each residual branch (not after the sum), attention comes before the MLP, and the "
            "MLP reads the x that already includes the attention branch")

    def trials(fn: Callable[..., Tensor]) -> int:
        g = torch.Generator().manual_seed(13)
        cases = [(12, 3, 2, 5), (8, 2, 1, 9), (16, 4, 3, 4)]
        for D, h, B, T in cases:
            block = _random_block(D, h, seed=D)
            x = torch.randn(B, T, D, generator=g)  # (B, T, D)
            with torch.no_grad():
                actual = fn(x, block.norm1, block.attn, block.norm2, block.mlp)
                expected = block(x)  # (B, T, D)
            expect_close(ex, f"Block(dim={D}, num_heads={h}) on x {tuple(x.shape)}", actual,
                         expected, hint=hint)
        return len(cases)

    return run_check(ex, fn, reference_block_forward, trials)


# ------------------------------------------------------------------ Exercise 1.4


def interpolate_pos_embed(fn: Callable[[Tensor, int, int], Tensor]
                          ) -> Callable[[Tensor, int, int], Tensor]:
    """Check `fn(pos_embed (1, 1 + g*g, D), h, w) -> (1, 1 + h*w, D)`."""
    ex = "Exercise 1.4 (interpolate_pos_embed)"
    hint = ("keep the CLS row as it is; reshape the g*g patch rows to a (1, D, g, g) image "
            "(channels first), resize it with F.interpolate(..., size=(h, w), mode='bicubic', "
            "align_corners=False), and flatten back row by row to (1, h*w, D). Cutting rows off "
            "or padding is not a resize: a patch must keep the embedding of its place.")

    def trials(fn: Callable[[Tensor, int, int], Tensor]) -> int:
        g = torch.Generator().manual_seed(14)
        cases = [(4, 6, 2, 2), (4, 6, 6, 6), (5, 8, 3, 7), (3, 4, 3, 3), (4, 6, 4, 2)]
        for grid, D, h, w in cases:
            pos_embed = torch.randn(1, 1 + grid * grid, D, generator=g)  # (1, 1 + g*g, D)
            before = pos_embed.clone()
            case = f"pos_embed for a {grid}x{grid} grid, D={D}, to a {h}x{w} grid"
            actual = fn(pos_embed, h, w)
            expected = reference_interpolate_pos_embed(pos_embed, h, w)  # (1, 1 + h*w, D)
            expect(ex, case, isinstance(actual, Tensor) and actual.shape == expected.shape,
                   f"shape {tuple(getattr(actual, 'shape', ()))}, expected "
                   f"{tuple(expected.shape)} (1 CLS row + {h}*{w} patch rows)",
                   "the output needs one row per patch of the new grid: resize, do not copy")
            expect_close(ex, case + ": CLS row", actual[:, :1], pos_embed[:, :1],
                         hint="the CLS token has no place in the grid: keep its row unchanged")
            expect_close(ex, case, actual, expected, hint=hint)
            expect(ex, case, torch.equal(pos_embed, before), "pos_embed was changed in place",
                   "build a new tensor; the learned parameter must stay as it is")
        return len(cases)

    return run_check(ex, fn, reference_interpolate_pos_embed, trials)

