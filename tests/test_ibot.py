"""iBOT in minidino: block masks, the mask token, the patch loss against a transcription of the
paper's formula, the teacher's unmasked view, KoLeo's wiring, and training with --ibot."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidino.config import fast_config
from minidino.ibot import IBOTLoss, IBOTOutput, IBOTWrapper, block_masks, ibot_patch_loss
from minidino.presets import get_preset
from minidino.step import build_parts, build_student, extra_losses, train_step
from minidino.vit import VisionTransformer

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
SMALL = dict(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)


# ---------------------------------------------------------------- the patch loss


def paper_patch_loss(student, teacher, masks, center, student_temp, teacher_temp):
    """Literal transcription of iBOT's patch loss (paper, Eq. 2 and Algorithm 1).

    student, teacher: (G, B, N, K) logits; masks: (G, B, N). For each global crop g, image b and
    masked token n:
        P_t = exp((t - c)_k / tau_t) / sum_j exp((t - c)_j / tau_t)
        P_s = exp(s_k / tau_s) / sum_j exp(s_j / tau_s)
        H   = - sum_k P_t[k] * log P_s[k]
    averaged over the masked tokens of the image (0 if none), then over images, then over crops.
    """
    s, t, m = student.double().tolist(), teacher.double().tolist(), masks.tolist()
    c = center.double().reshape(-1).tolist()
    G, B, N, K = student.shape
    crop_losses = []
    for g in range(G):
        total = 0.0
        for b in range(B):
            token_losses = []
            for n in range(N):
                if not m[g][b][n]:
                    continue
                t_exp = [math.exp((t[g][b][n][k] - c[k]) / teacher_temp) for k in range(K)]
                s_exp = [math.exp(s[g][b][n][k] / student_temp) for k in range(K)]
                p_t = [e / sum(t_exp) for e in t_exp]
                log_p_s = [math.log(e / sum(s_exp)) for e in s_exp]
                token_losses.append(-sum(p_t[k] * log_p_s[k] for k in range(K)))
            total += sum(token_losses) / max(len(token_losses), 1)
        crop_losses.append(total / B)
    return sum(crop_losses) / G


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.integers(2, 5), st.integers(0, 2**16),
       st.floats(0.05, 1.0), st.floats(0.03, 1.0))
def test_patch_loss_matches_literal_ibot_formula(B, N, K, seed, student_temp, teacher_temp):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(2, B, N, K, generator=gen) * 2  # (G, B, N, K)
    teacher = torch.randn(2, B, N, K, generator=gen) * 2
    masks = torch.rand(2, B, N, generator=gen) < 0.5  # some images may have no masked token
    center = torch.randn(1, K, generator=gen)
    loss_fn = IBOTLoss(K, student_temp=student_temp, center_momentum=0.9)
    loss_fn.center.copy_(center)
    flat = masks.reshape(2 * B, N)  # (G*B, N), global crop 0's images first
    ours = loss_fn(student.reshape(2 * B, N, K)[flat], teacher.reshape(2 * B, N, K)[flat], flat,
                   teacher_temp)
    expected = paper_patch_loss(student, teacher, masks, center, student_temp, teacher_temp)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_patch_center_is_used_then_moves_to_the_masked_tokens_mean():
    K, gen = 4, torch.Generator().manual_seed(1)
    masks = torch.tensor([[True, False, True], [False, False, False]])  # (G*B, N), M = 2
    student, teacher = torch.randn(2, K, generator=gen), torch.randn(2, K, generator=gen)
    loss_fn = IBOTLoss(K, center_momentum=0.75)
    old = torch.randn(1, K, generator=gen)
    loss_fn.center.copy_(old)
    loss = loss_fn(student, teacher, masks, teacher_temp=0.1)
    probs = torch.softmax((teacher - old) / 0.1, dim=-1)  # with the old center
    assert loss.item() == pytest.approx(ibot_patch_loss(student, probs, masks, 0.1).item())
    for _ in range(2):  # the second call has no masked token: the center stays
        torch.testing.assert_close(loss_fn.center, 0.75 * old + 0.25 * teacher.mean(0, True))
        loss_fn(student[:0], teacher[:0], torch.zeros_like(masks), teacher_temp=0.1)


def test_only_the_student_gets_gradients_and_sinkhorn_targets_work():
    gen = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 6, generator=gen) < 0.5  # (G*B, N)
    student, teacher = (torch.randn(int(masks.sum()), 8, generator=gen, requires_grad=True)
                        for _ in range(2))
    for centering in ("center", "sinkhorn"):
        loss = IBOTLoss(8, centering=centering)(student, teacher, masks, teacher_temp=0.05)
        loss.backward()
        assert math.isfinite(loss.item()) and student.grad.abs().sum() > 0 and teacher.grad is None


# ---------------------------------------------------------------- block masks


@pytest.mark.parametrize("grid", [8, 14])
def test_mask_ratios_stay_in_the_requested_range(grid):
    N, n = grid * grid, 1000
    masks = block_masks(n, grid, (0.1, 0.5), 0.5, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (n, grid, grid) and masks.dtype == torch.bool
    ratios = masks.flatten(1).float().mean(1)  # (n,)
    masked = ratios[ratios > 0]
    assert len(masked) == n // 2  # exactly mask_prob of the images
    # never above the range; at most a few patches (less than one smallest block) below it
    assert masked.max() <= 0.5 and masked.min() >= 0.1 - 3 / N
    assert masked.mean().item() == pytest.approx(0.3, abs=0.02)  # spread evenly over the range
    assert (masked < 0.3).float().mean().item() == pytest.approx(0.5, abs=0.06)


@pytest.mark.parametrize("grid, ratio", [(8, 0.1), (8, 0.3), (8, 0.5), (14, 0.25)])
def test_each_mask_ends_within_one_block_below_its_target(grid, ratio):
    masks = block_masks(500, grid, (ratio, ratio), 1.0, generator=torch.Generator().manual_seed(1))
    count = masks.flatten(1).sum(1).double()  # (n,)
    target = ratio * grid * grid
    assert (count <= target).all() and (count > target - 4).all()


def test_a_single_block_is_a_rectangle_of_bounded_aspect():
    masks = block_masks(400, (8, 6), (0.1, 0.5), 1.0, max_blocks=1,
                        generator=torch.Generator().manual_seed(2))
    for mask in masks:
        rows, cols = mask.nonzero(as_tuple=True)
        assert len(rows) > 0
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert mask.sum() == h * w  # the bounding box is filled: one rectangle
        assert h < 8 and w < 6  # never the whole height or width
        # h and w are sqrt(area * r) and sqrt(area / r) rounded, with r in (0.3, 1 / 0.3) and
        # area >= 4 patches (targets here are >= 4.8): both hold within half a patch per side
        assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
        assert (h + 0.5) * (w + 0.5) >= 4


def test_masks_are_unions_of_rectangles():
    # The same seed gives the same draws, so max_blocks=k adds the k-th block to max_blocks=k-1.
    # What a block adds is a rectangle minus what was masked before: the bounding box of the
    # new patches must lie inside the new mask.
    masks = [block_masks(200, 8, (0.4, 0.5), 1.0, max_blocks=k,
                         generator=torch.Generator().manual_seed(3)) for k in range(1, 7)]
    for before, after in zip(masks, masks[1:], strict=False):
        assert (before <= after).all()
        for old, new in zip(before, after, strict=True):
            added = new & ~old
            if added.any():
                rows, cols = added.nonzero(as_tuple=True)
                assert new[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_mask_prob_zero_masks_nothing_and_a_seed_repeats_the_masks():
    assert not block_masks(16, 8, mask_prob=0.0).any()
    assert torch.equal(*(block_masks(16, 8, generator=torch.Generator().manual_seed(5))
                         for _ in range(2)))
    with pytest.raises(ValueError, match="mask_ratio"):
        block_masks(4, 8, (0.5, 0.1))


# ---------------------------------------------------------------- the mask token


def test_mask_token_exists_only_when_asked_for():
    plain, masked = VisionTransformer(**SMALL), VisionTransformer(**SMALL, mask_token=True)
    assert "mask_token" not in plain.state_dict()  # timm's keys, so pretrained weights load
    assert set(masked.state_dict()) - set(plain.state_dict()) == {"mask_token"}
    assert masked.mask_token.shape == (1, 24)
    with pytest.raises(ValueError, match="mask_token=True"):
        plain(torch.randn(2, 3, 32, 32), masks=torch.ones(2, 16, dtype=torch.bool))


@pytest.mark.parametrize("n_registers", [0, 2])
def test_mask_token_replaces_exactly_the_masked_patch_embeddings(n_registers):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, n_registers=n_registers, mask_token=True)
    torch.nn.init.normal_(model.mask_token)  # not zero, so a replaced patch is visible
    x = torch.randn(3, 3, 32, 32)
    masks = torch.rand(3, 16) < 0.4  # (B, N)
    plain = model.prepare_tokens(x)  # (B, T, D)
    hidden = model.prepare_tokens(x, masks)
    P = model.num_prefix_tokens
    torch.testing.assert_close(hidden[:, :P], plain[:, :P])  # CLS and registers untouched
    torch.testing.assert_close(hidden[:, P:][~masks], plain[:, P:][~masks])
    pos = model.pos_embed[0, 1:].expand(3, -1, -1)  # (B, N, D): positions are still added
    torch.testing.assert_close(hidden[:, P:][masks], (model.mask_token + pos)[masks])
    grid_masks = masks.reshape(3, 4, 4)  # (B, h, w) works too
    torch.testing.assert_close(model.prepare_tokens(x, grid_masks), hidden)
    nothing = torch.zeros_like(masks)
    torch.testing.assert_close(model(x, nothing), model(x))


# ---------------------------------------------------------------- wiring into a training step


def ibot_config(**changes):
    return replace(fast_config(get_preset("ibot-cifar10")), depth=1, batch_size=8, drop_path=0.0,
                   **changes)


def make_crops(cfg, B=8):
    g = torch.Generator().manual_seed(0)
    sizes = [cfg.global_size] * 2 + [cfg.local_size] * cfg.n_local_crops
    return [torch.randn(B, 3, size, size, generator=g) for size in sizes]


def test_the_teacher_never_sees_masks_and_the_student_does(monkeypatch):
    cfg = ibot_config()
    parts = build_parts(cfg, steps_per_epoch=4, device=torch.device("cpu"))
    seen = {"teacher": [], "student": []}
    for who in seen:
        backbone = getattr(parts, who).backbone
        original = backbone.prepare_tokens

        def spy(x, masks=None, who=who, original=original):
            seen[who].append(masks)
            return original(x, masks)

        monkeypatch.setattr(backbone, "prepare_tokens", spy)
    crops = make_crops(cfg)
    out = train_step(parts, crops, 0)
    assert seen["teacher"] and all(m is None for m in seen["teacher"])
    masks = seen["student"][0]  # (2B, N) for the global crops; the local crops get none
    assert masks.shape == (16, 16) and masks.any() and all(m is None for m in seen["student"][1:])
    assert {"loss", "dino_loss", "ibot_loss"} <= set(out)
    # the teacher's patch logits are those of the intact crops, at the masked places
    teacher_out = parts.teacher(crops[:2], masks, hide_masked=False)
    tokens = parts.teacher.backbone.forward_features(torch.cat(crops[:2]))  # (2B, T, D)
    expected = parts.teacher.head(tokens[:, 1:][masks])  # (M, K)
    torch.testing.assert_close(teacher_out.patches, expected)
    torch.testing.assert_close(teacher_out.cls, parts.teacher.head(tokens[:, 0]))


def test_ibot_steps_run_lower_the_loss_and_move_the_patch_center():
    # With a frozen teacher and frozen centers the loss only measures how well the student
    # predicts the teacher, so repeated steps on the same crops must lower it.
    cfg = ibot_config(teacher_momentum=1.0, center_momentum=1.0, ibot_center_momentum=1.0,
                      lr=2e-2, warmup_epochs=0, clip_grad=0.0)
    parts = build_parts(cfg, steps_per_epoch=12, device=torch.device("cpu"))
    crops = make_crops(cfg)
    losses = [train_step(parts, crops, step) for step in range(12)]
    total, patch = ([float(out[k]) for out in losses] for k in ("loss", "ibot_loss"))
    assert all(map(math.isfinite, total)) and patch[0] > 0
    assert sum(total[-3:]) < sum(total[:3]) - 0.1
    assert sum(patch[-3:]) < sum(patch[:3])
    assert torch.count_nonzero(parts.loss_fn.ibot.center) == 0  # momentum 1: frozen
    moving = build_parts(ibot_config(), steps_per_epoch=1, device=torch.device("cpu"))
    train_step(moving, crops, 0)
    assert torch.count_nonzero(moving.loss_fn.ibot.center) > 0  # the patch center updates
    assert "ibot.center" in moving.loss_fn.state_dict()  # so checkpoints keep it


def test_a_separate_patch_head_with_its_own_k():
    cfg = ibot_config(ibot_separate_head=True, ibot_out_dim=48)
    student = build_student(cfg)
    assert isinstance(student, IBOTWrapper) and student.patch_head is not None
    parts = build_parts(cfg, steps_per_epoch=1, device=torch.device("cpu"))
    masks = block_masks(16, 4, cfg.mask_ratio, 1.0).flatten(1)  # (2B, N)
    student_out, teacher_out = parts.forward(make_crops(cfg), masks)
    assert student_out.patches.shape == (int(masks.sum()), 48)
    assert student_out.cls.shape == (8 * cfg.n_crops, cfg.out_dim)
    assert float(train_step(parts, make_crops(cfg), 0)["ibot_loss"]) > 0


def test_koleo_is_added_on_the_student_backbone_cls_features_of_each_global_crop():
    koleo = pytest.importorskip("minidino.koleo", reason="minidino/koleo.py is not there yet")
    cfg = ibot_config(ibot=False, koleo_weight=0.5)
    parts = build_parts(cfg, steps_per_epoch=1, device=torch.device("cpu"))
    crops = make_crops(cfg)
    student_out, teacher_out = parts.forward(crops)
    assert isinstance(student_out, IBOTOutput) and student_out.patches is None
    features = parts.student.backbone(torch.cat(crops[:2]))  # (2B, D), before the head
    torch.testing.assert_close(student_out.features, features)
    dino = parts.loss_fn(student_out.cls, teacher_out.cls, 0.04)
    parts.loss_fn.center.zero_()  # the call above moved it
    loss, terms = extra_losses(parts, student_out, teacher_out, None, 0)
    expected = (koleo.koleo_loss(features[:8]) + koleo.koleo_loss(features[8:])) / 2
    torch.testing.assert_close(terms["koleo_loss"], expected.detach())
    torch.testing.assert_close(loss, dino + 0.5 * expected)
    assert "ibot_loss" not in terms


def test_dinov2_preset_trains_and_its_checkpoint_loads(tmp_path):
    from minidino.pretrained import backbone_from
    from minidino.train import train

    cfg = replace(fast_config(get_preset("dinov2-cifar10")), depth=1, out_dir=str(tmp_path),
                  max_steps=3, log_every=1)
    assert cfg.ibot and cfg.koleo_weight > 0 and cfg.centering == "sinkhorn" \
        and cfg.n_registers > 0 and cfg.layerscale is not None
    result = train(cfg, progress=False)
    assert result["steps"] == 3
    state = torch.load(result["run_dir"] / "checkpoint.pt", weights_only=False)
    assert torch.count_nonzero(state["loss"]["ibot.center"]) > 0
    backbone, _, _ = backbone_from(result["run_dir"] / "checkpoint.pt", "teacher")
    assert hasattr(backbone, "mask_token") and backbone.n_registers == cfg.n_registers
