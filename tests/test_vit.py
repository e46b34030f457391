"""Tests for minidino.vit against trusted references: timm's ViT, F.scaled_dot_product_attention,
and attention weights computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

from minidino.vit import (
    VIT_FACTORIES,
    Attention,
    Block,
    DropPath,
    LayerScale,
    PatchEmbed,
    VisionTransformer,
    vit_tiny,
)

SMALL = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


def make_pair(**overrides):
    """A timm ViT (random weights, eval mode) and a minidino ViT of the same configuration."""
    cfg = {**SMALL, **overrides}
    timm_kwargs = {k: v for k, v in cfg.items() if k not in ("layerscale_init", "n_registers")}
    if "layerscale_init" in cfg:
        timm_kwargs["init_values"] = cfg["layerscale_init"]
    torch.manual_seed(0)
    ref = TimmViT(num_classes=0, global_pool="token", **timm_kwargs).eval()
    ours = VisionTransformer(**cfg).eval()
    return ref, ours


def hand_attention(tokens: torch.Tensor, attn: Attention) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) from the module's qkv weights, written out step by step."""
    B, T, D = tokens.shape
    h = attn.num_heads
    qkv = tokens @ attn.qkv.weight.T + attn.qkv.bias  # (B, T, 3D)
    q, k, _ = qkv.split(D, dim=-1)  # each (B, T, D)
    q = q.reshape(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
    k = k.reshape(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
    return torch.softmax(q @ k.transpose(-2, -1) / (D // h) ** 0.5, dim=-1)  # (B, h, T, T)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(VIT_FACTORIES))
def test_factory_shapes_small_images(name):
    model = VIT_FACTORIES[name](patch_size=4, img_size=32, depth=1).eval()
    for size in (32, 16):  # CIFAR-sized global and local crops
        D, h, N = model.embed_dim, model.num_heads, (size // 4) ** 2
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert model(x).shape == (2, D)
            assert model.forward_features(x).shape == (2, 1 + N, D)
            assert model.get_patch_tokens(x).shape == (2, N, D)
            assert model.get_last_selfattention(x).shape == (2, h, 1 + N, 1 + N)
            assert [t.shape for t in model.get_intermediate_layers(x, n=1)] == [(2, 1 + N, D)]


@pytest.mark.parametrize(
    "name, D, depth, h, p, size",
    [("vit_nano", 96, 4, 3, 8, 32), ("vit_tiny", 192, 12, 3, 16, 224),
     ("vit_small", 384, 12, 6, 16, 224), ("vit_base", 768, 12, 12, 16, 224)],
)
def test_factory_defaults(name, D, depth, h, p, size):
    # The standard ViT-Ti/S/B sizes, and the CPU-sized nano model.
    with torch.device("meta"):  # build without allocating or initialising weights: fast
        model = VIT_FACTORIES[name]()
    assert (model.embed_dim, model.depth, model.num_heads) == (D, depth, h)
    assert (model.patch_size, model.img_size, len(model.blocks)) == (p, size, depth)
    assert VIT_FACTORIES[name](depth=2, num_heads=2).num_heads == 2  # kwargs override


@pytest.mark.parametrize("size", [224, 96])
def test_tiny_at_imagenet_sizes(size):
    model = vit_tiny(patch_size=16, img_size=224, depth=2).eval()
    N = (size // 16) ** 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 192)
        assert model.get_patch_tokens(torch.randn(1, 3, size, size)).shape == (1, N, 192)


# ---------------------------------------------------------------- attention


def test_attention_matches_hand_written_sdpa():
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=4)
    x = torch.randn(3, 7, 24)  # (B, T, D)
    B, T, D, h = 3, 7, 24, 4
    qkv = attn.qkv(x).reshape(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)  # (3, B, h, T, D/h)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, T, D/h)
    expected = attn.proj(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
    torch.testing.assert_close(attn(x), expected)


def test_attention_explicit_path_equals_sdpa_path():
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=4)
    x = torch.randn(3, 7, 24)
    out_explicit, weights = attn(x, return_attention=True)
    torch.testing.assert_close(out_explicit, attn(x), atol=1e-5, rtol=1e-5)
    assert weights.shape == (3, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 7))
    torch.testing.assert_close(weights, hand_attention(x, attn))


# ---------------------------------------------------------------- timm equivalence


def test_state_dict_keys_and_shapes_match_timm():
    ref, ours = make_pair()
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_cls_feature_matches_timm_at_training_size():
    ref, ours = make_pair()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x),
                                   atol=1e-5, rtol=1e-5)


# timm's own `dynamic_img_size=True` path resizes the position embeddings with
# `antialias=True`, which for bicubic switches PyTorch to a different cubic kernel (a=-0.5, as
# PIL) than DINO's plain bicubic (a=-0.75), even when upsampling. So its forward at a new size
# is not honestly comparable. What is comparable: timm's resizing function
# `resample_abs_pos_embed` (what timm uses when it loads a checkpoint at a new image size) with
# antialias=False, and a timm model built at the new size with the embeddings it returns.


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12))
def test_pos_embed_interpolation_matches_timm_resample(h, w):
    torch.manual_seed(0)
    ours = VisionTransformer(**SMALL)  # training grid 8 x 8
    expected = resample_abs_pos_embed(
        ours.pos_embed.detach(), new_size=[h, w], old_size=[8, 8], num_prefix_tokens=1,
        interpolation="bicubic", antialias=False, align_corners=False,
    )
    got = ours.interpolate_pos_embed(h * 4, w * 4).detach()
    torch.testing.assert_close(got, expected)
    if (h, w) == (8, 8):
        assert ours.interpolate_pos_embed(32, 32) is ours.pos_embed  # training size: as is


@pytest.mark.parametrize("H, W", [(48, 32), (16, 16)])
def test_cls_feature_matches_timm_at_other_sizes(H, W):
    ref, ours = make_pair()
    ours.load_state_dict(ref.state_dict(), strict=True)
    state = ref.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=[H // 4, W // 4], old_size=[8, 8], num_prefix_tokens=1,
        interpolation="bicubic", antialias=False, align_corners=False,
    )
    ref_resized = TimmViT(
        num_classes=0, **{**SMALL, "img_size": (H, W)}
    ).eval()
    ref_resized.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref_resized(x), atol=1e-5, rtol=1e-5)


def test_layerscale_matches_timm_init_values():
    ref, ours = make_pair(layerscale_init=0.1)
    assert torch.all(ours.blocks[0].ls1.gamma == 0.1)  # same init as timm's init_values
    with torch.no_grad():  # random gains so that a missing or misplaced scale would show
        for blk in ref.blocks:
            blk.ls1.gamma.uniform_(-1, 1)
            blk.ls2.gamma.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_registers_match_timm_with_dinov2_conversion():
    # Like DINOv2, minidino adds pos_embed to CLS and patches and inserts registers without any.
    # timm stores such models with no_embed_class=True: the CLS position is folded into
    # cls_token and pos_embed covers only patches (timm's own DINOv2 checkpoint conversion).
    R = 3
    torch.manual_seed(0)
    ours = VisionTransformer(**SMALL, n_registers=R).eval()
    with torch.no_grad():
        ours.reg_token.normal_()  # big enough that a misplaced register would show
    ref = TimmViT(num_classes=0, reg_tokens=R, no_embed_class=True, **SMALL)
    state = dict(ours.state_dict())
    state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
    state["pos_embed"] = state["pos_embed"][:, 1:]
    ref.load_state_dict(state, strict=True)
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x),
                                   atol=1e-5, rtol=1e-5)
        assert ours.num_prefix_tokens == 1 + R
        torch.testing.assert_close(ours.get_patch_tokens(x), ref.forward_features(x)[:, 1 + R:],
                                   atol=1e-5, rtol=1e-5)
        tokens = ours.prepare_tokens(x)  # registers sit after CLS, untouched by positions
        assert tokens.shape == (2, 1 + R + 64, 48)
        assert torch.equal(tokens[:, 1 : 1 + R], ours.reg_token.expand(2, -1, -1))


def test_intermediate_layers_match_timm():
    ref, ours = make_pair(depth=3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = ours.get_intermediate_layers(x, n=2)
        expected = ref.get_intermediate_layers(x, n=2, norm=True)  # patch tokens only
        assert len(got) == 2
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g[:, 1:], e, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[-1], ours.forward_features(x))


# ---------------------------------------------------------------- last self-attention


def test_last_selfattention_equals_hand_computation():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, n_registers=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        attn = model.get_last_selfattention(x)
        T = 1 + 2 + 64
        assert attn.shape == (2, 3, T, T)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, T))
        tokens = model.prepare_tokens(x)
        for blk in model.blocks[:-1]:
            tokens = blk(tokens)
        last = model.blocks[-1]
        torch.testing.assert_close(attn, hand_attention(last.norm1(tokens), last.attn))


# ---------------------------------------------------------------- drop path and layerscale


def test_drop_path_is_identity_in_eval():
    x = torch.randn(8, 5, 4)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    torch.manual_seed(0)
    block = Block(16, 4, drop_path=0.9).eval()
    plain = Block(16, 4, drop_path=0.0).eval()
    plain.load_state_dict(block.state_dict())
    tokens = torch.randn(4, 5, 16)
    torch.testing.assert_close(block(tokens), plain(tokens))


def test_drop_path_drops_whole_samples_in_train():
    torch.manual_seed(0)
    x = torch.randn(64, 5, 4) + 3.0  # no zeros of its own
    out = DropPath(0.5).train()(x)
    dropped = (out == 0).flatten(1).all(1)  # (B,)
    kept = torch.isclose(out, x / 0.5).flatten(1).all(1)  # (B,)
    assert torch.all(dropped ^ kept)  # each sample is either dropped whole or kept and rescaled
    assert 0 < dropped.sum() < 64  # per sample: some dropped, some kept


def test_drop_path_rate_grows_with_depth():
    model = VisionTransformer(**{**SMALL, "depth": 4}, drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for blk in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)


def test_layerscale_scales_per_channel():
    ls = LayerScale(3, init_value=0.5)
    x = torch.ones(2, 4, 3)
    assert torch.equal(ls(x), torch.full((2, 4, 3), 0.5))
    assert list(dict(ls.named_parameters())) == ["gamma"]


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(embed_dim=50, num_heads=3), "num_heads"),
        (dict(img_size=30, patch_size=4), "patch_size"),
        (dict(patch_size=0), "patch_size"),
        (dict(img_size=-32), "img_size"),
        (dict(embed_dim=0), "embed_dim"),
        (dict(depth=0), "depth"),
        (dict(num_heads=0), "num_heads"),
        (dict(in_chans=0), "in_chans"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(drop_path_rate=-0.1), "drop_path_rate"),
        (dict(n_registers=-1), "n_registers"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VisionTransformer(**{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "x, pattern",
    [
        (torch.randn(3, 32, 32), "x must be a 4-D"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "x must be a 4-D floating"),
        (torch.randn(1, 1, 32, 32), "in_chans=3"),
        (torch.randn(1, 3, 30, 32), "patch_size=4 .*H=30 and W=32"),
        (torch.randn(1, 3, 32, 18), "patch_size=4 .*H=32 and W=18"),
    ],
)
def test_bad_inputs_raise(x, pattern):
    model = VisionTransformer(**SMALL)
    for fn in (model, model.get_last_selfattention, model.get_patch_tokens):
        with pytest.raises(ValueError, match=pattern):
            fn(x)
    with pytest.raises(ValueError, match=pattern):
        PatchEmbed(4, 3, 8)(x)


def test_bad_intermediate_layer_count_raises():
    model = VisionTransformer(**SMALL)
    with pytest.raises(ValueError, match="n=3"):
        model.get_intermediate_layers(torch.randn(1, 3, 32, 32), n=3)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="num_heads=5"):
        Attention(dim=24, num_heads=5)


def test_qkv_without_bias_builds_and_has_no_bias_parameters():
    model = VIT_FACTORIES["vit_nano"](depth=1, qkv_bias=False)
    keys = model.state_dict().keys()
    assert "blocks.0.attn.qkv.weight" in keys and "blocks.0.attn.qkv.bias" not in keys
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.embed_dim)


@pytest.mark.parametrize(("size", "n_registers"), [(32, 0), (16, 4)])
def test_forward_flops_match_torchs_flop_counter(size, n_registers, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    def attention_by_hand(q, k, v, **kwargs):  # the counter sees these two matmuls
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", attention_by_hand)
    model = VIT_FACTORIES["vit_nano"](patch_size=8, depth=2, n_registers=n_registers).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert model.forward_flops(size) == counter.get_total_flops()
