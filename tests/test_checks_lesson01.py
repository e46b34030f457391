"""Lesson 01's checks accept minidino's code, fall back on stubs, reject the usual mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minidino import checks
from minidino.checks import CheckFailed
from minidino.checks import lesson01_vit as lesson
from minidino.vit import PatchEmbed


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 1.x: not done")


# ------------------------------------------------------------------ Exercise 1.1 patchify


def good_patchify(images: Tensor, patch_size: int) -> Tensor:
    """Through the reference module: a conv with identity filters is an exact patch copier."""
    C, p = images.shape[1], patch_size
    embed = PatchEmbed(patch_size=p, in_chans=C, embed_dim=C * p * p)
    with torch.no_grad():
        embed.proj.weight.copy_(torch.eye(C * p * p).view(C * p * p, C, p, p))
        embed.proj.bias.zero_()
        return embed(images)  # (B, N, C*p*p)


def good_patchify_einops(images: Tensor, patch_size: int) -> Tensor:
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)",
                     p1=patch_size, p2=patch_size)


def wrong_patch_order(images: Tensor, patch_size: int) -> Tensor:
    """Column by column instead of row by row."""
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gw gh) (c p1 p2)",
                     p1=patch_size, p2=patch_size)


def wrong_channels_last(images: Tensor, patch_size: int) -> Tensor:
    """Each patch flattened as (p, p, C), the layout of a Linear patch embedding, not the conv."""
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)",
                     p1=patch_size, p2=patch_size)


def wrong_plain_reshape(images: Tensor, patch_size: int) -> Tensor:
    """A reshape is not a patch cut: it takes consecutive pixels of a row."""
    B, C, H, W = images.shape
    return images.reshape(B, (H // patch_size) * (W // patch_size), C * patch_size**2)


def wrong_unfold_no_transpose(images: Tensor, patch_size: int) -> Tensor:
    """unfold gives (B, C*p*p, N): reshaping it to (B, N, C*p*p) scrambles the numbers."""
    B, C = images.shape[:2]
    return F.unfold(images, patch_size, stride=patch_size).reshape(B, -1, C * patch_size**2)


def test_patchify_accepts_correct_versions():
    assert checks.patchify(lesson.reference_patchify) is lesson.reference_patchify
    assert checks.patchify(good_patchify) is good_patchify
    assert checks.patchify(good_patchify_einops) is good_patchify_einops


@pytest.mark.parametrize("wrong", [wrong_patch_order, wrong_channels_last, wrong_plain_reshape,
                                   wrong_unfold_no_transpose])
def test_patchify_rejects(wrong):
    with pytest.raises(CheckFailed):
        checks.patchify(wrong)


# ------------------------------------------------------------------ Exercise 1.2 attention


def good_attention_sdpa(q, k, v):
    d = q.shape[-1]
    attn = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
    return F.scaled_dot_product_attention(q, k, v), attn


def wrong_softmax_axis(q, k, v):
    attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-2)
    return attn @ v, attn


def wrong_no_scale(q, k, v):
    attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return attn @ v, attn


def wrong_scale_by_d(q, k, v):
    attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1)
    return attn @ v, attn


def wrong_weights_before_softmax(q, k, v):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v, scores


def wrong_only_output(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def test_attention_accepts_correct_versions():
    assert checks.attention(lesson.reference_attention) is lesson.reference_attention
    assert checks.attention(good_attention_sdpa) is good_attention_sdpa


@pytest.mark.parametrize("wrong", [wrong_softmax_axis, wrong_no_scale, wrong_scale_by_d,
                                   wrong_weights_before_softmax, wrong_only_output])
def test_attention_rejects(wrong):
    with pytest.raises(CheckFailed):
        checks.attention(wrong)


def test_attention_wrong_axis_hint_names_the_axis():
    with pytest.raises(CheckFailed, match="dim=-1"):
        checks.attention(wrong_softmax_axis)


# ------------------------------------------------------------------ Exercise 1.3 block_forward


def wrong_post_norm(x, norm1, attn, norm2, mlp):
    x = norm1(x + attn(x))
    return norm2(x + mlp(x))


def wrong_no_residual(x, norm1, attn, norm2, mlp):
    x = attn(norm1(x))
    return mlp(norm2(x))


def wrong_parallel_branches(x, norm1, attn, norm2, mlp):
    """The MLP reads the block's input instead of the output of the attention branch."""
    return x + attn(norm1(x)) + mlp(norm2(x))


def wrong_same_norm_twice(x, norm1, attn, norm2, mlp):
    x = x + attn(norm1(x))
    return x + mlp(norm1(x))


def wrong_mlp_first(x, norm1, attn, norm2, mlp):
    x = x + mlp(norm2(x))
    return x + attn(norm1(x))


def test_block_forward_accepts_reference():
    ref = lesson.reference_block_forward
    assert checks.block_forward(ref) is ref


@pytest.mark.parametrize("wrong", [wrong_post_norm, wrong_no_residual, wrong_parallel_branches,
                                   wrong_same_norm_twice, wrong_mlp_first])
def test_block_forward_rejects(wrong):
    with pytest.raises(CheckFailed):
        checks.block_forward(wrong)


# ------------------------------------------------------------------ Exercise 1.4 pos embed


def _split(pos_embed: Tensor) -> tuple[Tensor, Tensor, int]:
    g = int(round((pos_embed.shape[1] - 1) ** 0.5))
    return pos_embed[:, :1], pos_embed[:, 1:], g


def _resize(pos_embed: Tensor, h: int, w: int, **kwargs) -> Tensor:
    cls_pos, patch_pos, g = _split(pos_embed)
    grid = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(h, w), **kwargs)  # (1, D, h, w)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def good_interpolate(pos_embed, h, w):
    return _resize(pos_embed, h, w, mode="bicubic", align_corners=False)


def wrong_not_interpolated(pos_embed, h, w):
    return pos_embed


def wrong_truncate_or_pad(pos_embed, h, w):
    cls_pos, patch_pos, _ = _split(pos_embed)
    n = h * w
    if n <= patch_pos.shape[1]:
        patch_pos = patch_pos[:, :n]
    else:
        patch_pos = F.pad(patch_pos, (0, 0, 0, n - patch_pos.shape[1]))
    return torch.cat([cls_pos, patch_pos], dim=1)


def wrong_repeat_rows(pos_embed, h, w):
    """Right shape, but it cycles the old rows instead of resizing the grid."""
    cls_pos, patch_pos, _ = _split(pos_embed)
    index = torch.arange(h * w) % patch_pos.shape[1]
    return torch.cat([cls_pos, patch_pos[:, index]], dim=1)


def wrong_bilinear(pos_embed, h, w):
    return _resize(pos_embed, h, w, mode="bilinear", align_corners=False)


def wrong_align_corners(pos_embed, h, w):
    return _resize(pos_embed, h, w, mode="bicubic", align_corners=True)


def wrong_reshape_without_permute(pos_embed, h, w):
    """Reshaping (1, N, D) straight to (1, D, g, g) mixes channels and positions."""
    cls_pos, patch_pos, g = _split(pos_embed)
    grid = F.interpolate(patch_pos.reshape(1, -1, g, g), size=(h, w), mode="bicubic")
    return torch.cat([cls_pos, grid.reshape(1, h * w, -1)], dim=1)


def wrong_cls_interpolated_too(pos_embed, h, w):
    """All 1 + N rows resized as a 1-D sequence, CLS included."""
    seq = pos_embed.transpose(1, 2)  # (1, D, 1 + N)
    out = F.interpolate(seq, size=1 + h * w, mode="linear", align_corners=False)
    return out.transpose(1, 2)


def test_interpolate_accepts_correct_versions():
    ref = lesson.reference_interpolate_pos_embed
    assert checks.interpolate_pos_embed(ref) is ref
    assert checks.interpolate_pos_embed(good_interpolate) is good_interpolate


@pytest.mark.parametrize("wrong", [wrong_not_interpolated, wrong_truncate_or_pad,
                                   wrong_repeat_rows, wrong_bilinear, wrong_align_corners,
                                   wrong_reshape_without_permute, wrong_cls_interpolated_too])
def test_interpolate_rejects(wrong):
    with pytest.raises(CheckFailed):
        checks.interpolate_pos_embed(wrong)


def test_reference_interpolation_is_minidinos():
    torch.manual_seed(0)
    from minidino.vit import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=12, depth=1, num_heads=3)
    expected = vit.interpolate_pos_embed(48, 16)  # a 6 x 2 grid
    actual = lesson.reference_interpolate_pos_embed(vit.pos_embed, 6, 2)
    torch.testing.assert_close(actual, expected)


# ------------------------------------------------------------------ stubs fall back


@pytest.mark.parametrize("check, reference", [
    (checks.patchify, lesson.reference_patchify),
    (checks.attention, lesson.reference_attention),
    (checks.block_forward, lesson.reference_block_forward),
    (checks.interpolate_pos_embed, lesson.reference_interpolate_pos_embed),
])
def test_stub_returns_the_reference(check, reference, capsys):
    assert check(stub) is reference
    assert "not done yet" in capsys.readouterr().out


def test_the_checks_package_knows_where_every_check_lives():
    import importlib

    from minidino import checks

    modules = sorted(set(checks.LESSON_OF.values()))
    exported = {name: module for module in modules
                for name in importlib.import_module(f"minidino.checks.{module}").__all__}
    assert exported == checks.LESSON_OF
    assert checks.dino_loss is importlib.import_module("minidino.checks.lesson03_loss").dino_loss
    with pytest.raises(AttributeError, match="no check 'dino_los'"):
        checks.dino_los  # noqa: B018
