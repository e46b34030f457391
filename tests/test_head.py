"""Tests for the DINO head and the multi-crop wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from minidino.head import DINOHead, MultiCropWrapper

# The head parameters stored in the official DINO checkpoints (e.g. dino_deitsmall16 full
# checkpoint, under the "student." / "teacher." prefix plus "head.").
OFFICIAL_HEAD_KEYS = {
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.2.weight",
    "mlp.2.bias",
    "mlp.4.weight",
    "mlp.4.bias",
    "last_layer.weight_g",
    "last_layer.weight_v",
}


def small_head(**kwargs) -> DINOHead:
    defaults = dict(in_dim=12, out_dim=20, hidden_dim=16, bottleneck_dim=8)
    return DINOHead(**{**defaults, **kwargs})


def test_output_shape() -> None:
    head = small_head()
    assert head(torch.randn(5, 12)).shape == (5, 20)


def test_state_dict_keys_and_shapes_match_official_head() -> None:
    head = DINOHead(in_dim=384, out_dim=65536)  # DINO ViT-S/16 head with its defaults
    state = head.state_dict()
    assert set(state) == OFFICIAL_HEAD_KEYS
    assert state["mlp.0.weight"].shape == (2048, 384)
    assert state["mlp.2.weight"].shape == (2048, 2048)
    assert state["mlp.4.weight"].shape == (256, 2048)
    assert state["last_layer.weight_g"].shape == (65536, 1)
    assert state["last_layer.weight_v"].shape == (65536, 256)


def test_mlp_layout_and_init() -> None:
    head = small_head(n_layers=3)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    for layer in head.mlp[::2]:
        assert torch.all(layer.bias == 0)
        assert layer.weight.abs().max() <= 2.0  # truncated normal keeps values in [-2, 2]
    big = DINOHead(in_dim=256, out_dim=4, hidden_dim=512, bottleneck_dim=8)
    assert big.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert len(small_head(n_layers=1).mlp) == 1
    assert len(small_head(n_layers=4).mlp) == 7


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_weight_g_frozen_iff_norm_last_layer(norm_last_layer: bool) -> None:
    head = small_head(norm_last_layer=norm_last_layer)
    assert head.last_layer.weight_g.requires_grad is (not norm_last_layer)
    assert head.last_layer.weight_v.requires_grad
    assert torch.all(head.last_layer.weight_g == 1)
    trainable = {name for name, p in head.named_parameters() if p.requires_grad}
    assert ("last_layer.weight_g" in trainable) is (not norm_last_layer)


def test_last_layer_rows_have_norm_g() -> None:
    head = small_head(norm_last_layer=True)
    row_norms = head.last_layer.weight.norm(dim=1)  # (K,)
    torch.testing.assert_close(row_norms, torch.ones(20))

    head = small_head(norm_last_layer=False)
    g = torch.rand(20, 1) + 0.5
    with torch.no_grad():
        head.last_layer.weight_g.copy_(g)
        head.last_layer.weight_v.mul_(torch.rand(20, 1) * 3)  # lengths of v must not matter
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), g.squeeze(1))


def test_logits_are_cosine_similarities_when_normalised() -> None:
    head = small_head()
    x = torch.randn(6, 12)
    z = nn.functional.normalize(head.mlp(x), dim=-1)  # (6, 8) unit rows
    prototypes = nn.functional.normalize(head.last_layer.weight_v, dim=-1)  # (20, 8)
    torch.testing.assert_close(head(x), z @ prototypes.T)
    assert head(x).abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_matches_torch_weight_norm(norm_last_layer: bool) -> None:
    torch.manual_seed(0)
    head = small_head(norm_last_layer=norm_last_layer)
    with torch.no_grad():
        head.last_layer.weight_g.copy_(torch.rand(20, 1) + 0.5)
    reference = weight_norm(nn.Linear(8, 20, bias=False), name="weight", dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight_v)

    x = torch.randn(7, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = head.last_layer(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref)

    # Gradients agree as well (v always; g only matters when it is trained).
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    out_ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(
        head.last_layer.weight_v.grad, reference.parametrizations.weight.original1.grad
    )
    if not norm_last_layer:
        torch.testing.assert_close(
            head.last_layer.weight_g.grad, reference.parametrizations.weight.original0.grad
        )
    else:
        assert head.last_layer.weight_g.grad is None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(out_dim=1), "out_dim"),
        (dict(in_dim=0), "in_dim"),
        (dict(hidden_dim=0), "hidden_dim"),
        (dict(bottleneck_dim=0), "bottleneck_dim"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        small_head(**kwargs)


def test_wrong_input_width_raises() -> None:
    with pytest.raises(ValueError, match="in_dim=12"):
        small_head()(torch.randn(3, 11))


class CountingBackbone(nn.Module):
    """A stand-in backbone for any image size: mean-pool the pixels, then a Linear (B, D)."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.proj = nn.Linear(3, width)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: Tensor) -> Tensor:
        self.calls.append(tuple(images.shape))
        return self.proj(images.mean(dim=(2, 3)))  # (B, D)


@pytest.mark.parametrize(
    "sizes, n_calls",
    [
        ([16, 16, 8, 8, 8, 8], 2),  # 2 global + 4 local crops
        ([16], 1),
        ([16, 8, 8, 16], 3),  # only consecutive crops of one size are grouped
        ([8, 8, 8], 1),
    ],
)
def test_multicrop_matches_per_crop_forward(sizes: list[int], n_calls: int) -> None:
    torch.manual_seed(0)
    B = 3
    backbone = CountingBackbone()
    model = MultiCropWrapper(backbone, small_head())
    crops = [torch.randn(B, 3, s, s) for s in sizes]

    out = model(crops)
    assert out.shape == (len(sizes) * B, 20)
    assert len(backbone.calls) == n_calls

    expected = torch.cat([model.head(backbone(crop)) for crop in crops])  # one crop at a time
    torch.testing.assert_close(out, expected)


def test_multicrop_groups_the_right_crops() -> None:
    backbone = CountingBackbone()
    model = MultiCropWrapper(backbone, small_head())
    model([torch.randn(2, 3, s, s) for s in [16, 16, 8, 8, 8]])
    assert backbone.calls == [(4, 3, 16, 16), (6, 3, 8, 8)]


def test_multicrop_single_tensor_and_errors() -> None:
    model = MultiCropWrapper(CountingBackbone(), small_head())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), model([x]))
    with pytest.raises(ValueError, match="crops"):
        model([])
    with pytest.raises(ValueError, match=r"crops\[1\]"):
        model([x, torch.randn(3, 8, 8)])


def test_head_flops_match_torchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    head = DINOHead(96, 300, hidden_dim=64, bottleneck_dim=32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        head(torch.randn(1, 96))
    assert head.flops() == counter.get_total_flops()
