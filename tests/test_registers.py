"""Register tokens never show up where a map of the image is drawn.

DINOv2's registers are extra tokens with no place in the image. Everything that draws a picture
of the patches (patch features for PCA and label propagation, CLS attention maps) must leave them
out. Each test builds a case whose answer is known without minidino's slicing code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minidino.attention import cls_attention_maps
from minidino.augment_batched import normalize
from minidino.propagation import patch_features
from minidino.vit import VisionTransformer

SMALL = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3)


def _blocks_off(model: VisionTransformer) -> VisionTransformer:
    """Zero each block's output projections: every residual block becomes the identity."""
    with torch.no_grad():
        for blk in model.blocks:
            for layer in (blk.attn.proj, blk.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    return model


@pytest.mark.parametrize("n_registers", [1, 4])
def test_patch_tokens_are_the_patches_alone(n_registers):
    # With identity blocks, patch token i is norm(W * patch_i + b + pos_i), computed here by
    # cutting the image into patches by hand; registers set huge would show if they leaked in.
    torch.manual_seed(0)
    model = _blocks_off(VisionTransformer(**SMALL, n_registers=n_registers)).eval()
    with torch.no_grad():
        model.reg_token.fill_(100.0)
        model.pos_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    p, D = 8, SMALL["embed_dim"]
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, 3, 4, 4, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 16, 3 * p * p)  # (B, N, 3 p p), rows
    weight = model.patch_embed.proj.weight.reshape(D, -1)  # (D, 3 p p)
    embedded = patches @ weight.T + model.patch_embed.proj.bias  # (B, N, D)
    expected = F.layer_norm(embedded + model.pos_embed[:, 1:], (D,), model.norm.weight,
                            model.norm.bias, eps=1e-6)  # (B, N, D)
    with torch.no_grad():
        got = model.get_patch_tokens(x)  # (B, N, D)
    assert got.shape == (2, 16, D)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_patch_features_grid_has_no_register_cells():
    # patch_features lays the tokens out on the (h, w) grid; with registers a leak would shift
    # every cell by R positions. Compare with the model without registers and the same weights.
    torch.manual_seed(0)
    plain = _blocks_off(VisionTransformer(**SMALL)).eval()
    with_regs = VisionTransformer(**SMALL, n_registers=3).eval()
    with_regs.load_state_dict(plain.state_dict(), strict=False)  # all but reg_token
    with torch.no_grad():
        with_regs.reg_token.fill_(50.0)  # blocks are identity: registers cannot reach patches
    frames = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    got = patch_features(with_regs, frames)  # (T, h, w, D)
    expected = patch_features(plain, frames)  # (T, h, w, D)
    assert got.shape == (3, 4, 4, SMALL["embed_dim"])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("n_registers", [0, 2])
def test_cls_attention_map_is_uniform_when_keys_are_equal(n_registers):
    # Zero query/key weights give every token the same score, so CLS attends 1 / T to each of
    # the T tokens; left out the registers and renormalised, each of the N patches gets 1 / N.
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, n_registers=n_registers).eval()
    with torch.no_grad():
        D = SMALL["embed_dim"]
        model.blocks[-1].attn.qkv.weight[: 2 * D].zero_()
        model.blocks[-1].attn.qkv.bias[: 2 * D].zero_()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps = cls_attention_maps(model, images)  # (B, h, 4, 4)
    assert maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(maps, torch.full_like(maps, 1 / 16))


def test_cls_attention_map_drops_the_registers_attention():
    # Registers made huge draw most of CLS's attention; the map must show only what is left on
    # the patches, renormalised: attention row 0 written out by hand from q and k.
    torch.manual_seed(0)
    R = 2
    model = VisionTransformer(**SMALL, n_registers=R).eval()
    with torch.no_grad():
        model.reg_token.normal_(std=5.0)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images)  # (1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.prepare_tokens(x)  # (1, 1 + R + 16, D)
        for blk in model.blocks[:-1]:
            tokens = blk(tokens)
        last = model.blocks[-1]
        h, D = last.attn.num_heads, SMALL["embed_dim"]
        q, k, _ = last.attn.qkv(last.norm1(tokens)).split(D, dim=-1)  # each (1, T, D)
        q = q.reshape(1, -1, h, D // h).transpose(1, 2)  # (1, h, T, d)
        k = k.reshape(1, -1, h, D // h).transpose(1, 2)  # (1, h, T, d)
        row = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) / (D // h) ** 0.5, -1)  # (1,h,1,T)
    on_patches = row[0, :, 0, 1 + R:]  # (h, 16)
    assert (row[0, :, 0, 1:1 + R].sum(-1) > 0).all()  # the registers do take some attention
    expected = (on_patches / on_patches.sum(-1, keepdim=True)).reshape(h, 4, 4)  # (h, 4, 4)
    torch.testing.assert_close(cls_attention_maps(model, images)[0], expected, atol=1e-5,
                               rtol=1e-4)
