"""Tests for the DINO loss, centering and the teacher temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidino.loss import DINOLoss, dino_loss
from minidino.schedules import teacher_temp_schedule

SETTINGS = settings(max_examples=20, deadline=None)


def paper_loss(student_out, teacher_out, center, student_temp, teacher_temp, n_global_crops):
    """Literal transcription of DINO's loss (paper, Algorithm 1 and Eq. 3), one term at a time.

    For each image b, each teacher global crop iq and each student crop v != iq:
        P_t = exp((t - c)_k / tau_t) / sum_j exp((t - c)_j / tau_t)
        P_s = exp(s_k / tau_s) / sum_j exp(s_j / tau_s)
        H   = - sum_k P_t[k] * log P_s[k]
    and the loss is the mean of H over images, then over the (iq, v) pairs.
    """
    s = student_out.double().tolist()
    t = teacher_out.double().tolist()
    c = center.double().reshape(-1).tolist()
    K = len(c)
    B = len(t) // n_global_crops
    n_crops = len(s) // B
    pair_losses = []
    for iq in range(n_global_crops):
        for v in range(n_crops):
            if v == iq:
                continue
            total = 0.0
            for b in range(B):
                t_row, s_row = t[iq * B + b], s[v * B + b]
                t_exp = [math.exp((t_row[k] - c[k]) / teacher_temp) for k in range(K)]
                s_exp = [math.exp(s_row[k] / student_temp) for k in range(K)]
                p_t = [e / sum(t_exp) for e in t_exp]
                log_p_s = [math.log(e / sum(s_exp)) for e in s_exp]
                total += -sum(p_t[k] * log_p_s[k] for k in range(K))
            pair_losses.append(total / B)
    return sum(pair_losses) / len(pair_losses)


@st.composite
def loss_inputs(draw):
    """Random small DINO batches: (student_out, teacher_out, center, temps, n_global_crops)."""
    n_global_crops = draw(st.integers(1, 3))
    n_crops = draw(st.integers(max(n_global_crops, 2), 5))
    B = draw(st.integers(1, 3))
    K = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, 3.0))
    student_out = torch.randn(n_crops * B, K, generator=gen) * scale
    teacher_out = torch.randn(n_global_crops * B, K, generator=gen) * scale
    center = torch.randn(1, K, generator=gen) * 0.5
    student_temp = draw(st.floats(0.05, 1.0))
    teacher_temp = draw(st.floats(0.03, 1.0))
    return student_out, teacher_out, center, student_temp, teacher_temp, n_global_crops


@SETTINGS
@given(loss_inputs())
def test_matches_literal_paper_formula(inputs) -> None:
    loss = dino_loss(*inputs)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(paper_loss(*inputs), rel=1e-4, abs=1e-5)


def test_single_pair_by_hand() -> None:
    # 1 global + 1 local crop, B = 1, K = 2: only the pair (teacher global, student local).
    # Teacher probs softmax([log 3, 0]) = [3/4, 1/4]; student probs of the local crop
    # softmax([0, log 3]) = [1/4, 3/4]. H = -(3/4 log 1/4 + 1/4 log 3/4).
    teacher_out = torch.tensor([[math.log(3.0), 0.0]])
    student_out = torch.tensor([[5.0, -5.0], [0.0, math.log(3.0)]])  # crop 0 is ignored
    loss = dino_loss(student_out, teacher_out, torch.zeros(1, 2), 1.0, 1.0, n_global_crops=1)
    expected = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@SETTINGS
@given(loss_inputs(), st.integers(0, 2**16))
def test_constant_shift_of_student_rows_changes_nothing(inputs, seed: int) -> None:
    student_out, *rest = inputs
    shift = torch.randn(student_out.shape[0], 1, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        dino_loss(student_out + 10 * shift, *rest),
        dino_loss(student_out, *rest),
        rtol=1e-5,
        atol=1e-5,
    )


@SETTINGS
@given(loss_inputs())
def test_teacher_gets_no_gradient(inputs) -> None:
    student_out, teacher_out, center, *rest = inputs
    student_out = student_out.clone().requires_grad_(True)
    teacher_out = teacher_out.clone().requires_grad_(True)
    center = center.clone().requires_grad_(True)
    dino_loss(student_out, teacher_out, center, *rest).backward()
    assert student_out.grad is not None and student_out.grad.abs().sum() > 0
    assert teacher_out.grad is None or torch.all(teacher_out.grad == 0)


def entropy(logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Shannon entropy of softmax(logits / temp) per row, from its definition."""
    p = torch.exp(logits.double() / temp)
    p = p / p.sum(dim=-1, keepdim=True)
    return -(p * torch.log(p)).sum(dim=-1)


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(2, 8),
    st.floats(0.05, 1.0),
    st.integers(0, 2**16),
)
def test_equal_distributions_give_teacher_entropy(G, n_local, B, K, temp, seed) -> None:
    # Every crop of image b has the same logits z_b for student and teacher, the temps are
    # equal and the center is zero: every compared pair has P_s = P_t, so H(P_t, P_s) = H(P_t).
    z = torch.randn(B, K, generator=torch.Generator().manual_seed(seed))  # (B, K)
    teacher_out = z.repeat(G, 1)  # (G * B, K), crop-major like the real batch
    student_out = z.repeat(G + n_local, 1)  # (n_crops * B, K)
    loss = dino_loss(student_out, teacher_out, torch.zeros(1, K), temp, temp, G)
    assert loss.item() == pytest.approx(entropy(z, temp).mean().item(), rel=1e-5, abs=1e-6)


@SETTINGS
@given(loss_inputs())
def test_loss_at_least_mean_teacher_entropy(inputs) -> None:
    # Gibbs' inequality: H(p, q) >= H(p); each teacher crop is in the same number of pairs.
    student_out, teacher_out, center, student_temp, teacher_temp, G = inputs
    loss = dino_loss(student_out, teacher_out, center, student_temp, teacher_temp, G)
    teacher_entropy = entropy(teacher_out - center, teacher_temp).mean().item()
    assert loss.item() >= teacher_entropy - 1e-5


def test_bf16_inputs_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    student_out = torch.randn(8, 16, generator=gen).bfloat16()
    teacher_out = torch.randn(4, 16, generator=gen).bfloat16()
    center = torch.zeros(1, 16)
    expected = paper_loss(student_out.float(), teacher_out.float(), center, 0.1, 0.04, 2)
    loss = dino_loss(student_out, teacher_out, center, 0.1, 0.04)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a mixed-precision training step
        loss = dino_loss(student_out, teacher_out, center, 0.1, 0.04)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---- DINOLoss: the loss with its running center ----------------------------------------------


def test_forward_uses_old_center_then_updates_it() -> None:
    gen = torch.Generator().manual_seed(1)
    criterion = DINOLoss(out_dim=3, n_crops=4, student_temp=0.1, center_momentum=0.9)
    criterion.center.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
    student_out = torch.randn(8, 3, generator=gen)  # 4 crops, B = 2
    teacher_out = torch.tensor(
        [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0], [2.0, 3.0, 4.0]]
    )  # row mean (2, 3, 4)
    loss = criterion(student_out, teacher_out, teacher_temp=0.04)
    expected = paper_loss(student_out, teacher_out, torch.ones(1, 3), 0.1, 0.04, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # EMA by hand: 0.9 * 1 + 0.1 * (2, 3, 4) = (1.1, 1.2, 1.3)
    torch.testing.assert_close(criterion.center, torch.tensor([[1.1, 1.2, 1.3]]))


@SETTINGS
@given(st.floats(0.0, 1.0), st.integers(1, 6), st.integers(0, 2**16))
def test_update_center_is_ema_of_batch_mean(momentum: float, rows: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    criterion = DINOLoss(out_dim=5, n_crops=2, center_momentum=momentum)
    old = torch.randn(1, 5, generator=gen)
    criterion.center.copy_(old)
    teacher_out = torch.randn(rows, 5, generator=gen)
    criterion.update_center(teacher_out)
    batch_mean = sum(teacher_out[r] for r in range(rows)) / rows  # (5,)
    expected = momentum * old + (1 - momentum) * batch_mean
    torch.testing.assert_close(criterion.center, expected, rtol=1e-5, atol=1e-6)


def test_momentum_zero_center_is_batch_mean_and_one_keeps_it() -> None:
    teacher_out = torch.tensor([[0.0, 4.0], [2.0, 0.0], [4.0, 2.0]])  # mean (2, 2)
    criterion = DINOLoss(out_dim=2, n_crops=2, center_momentum=0.0)
    criterion.center.fill_(7.0)
    criterion.update_center(teacher_out)
    torch.testing.assert_close(criterion.center, torch.tensor([[2.0, 2.0]]))

    criterion = DINOLoss(out_dim=2, n_crops=2, center_momentum=1.0)
    criterion.center.fill_(7.0)
    criterion.update_center(teacher_out)
    torch.testing.assert_close(criterion.center, torch.full((1, 2), 7.0))


def test_center_is_a_zero_buffer_in_state_dict() -> None:
    criterion = DINOLoss(out_dim=6, n_crops=8)
    assert "center" in criterion.state_dict()
    torch.testing.assert_close(criterion.center, torch.zeros(1, 6))
    assert not list(criterion.parameters())


# ---- teacher temperature schedule ------------------------------------------------------------


def test_teacher_temp_schedule_warmup_then_constant() -> None:
    schedule = teacher_temp_schedule(0.04, 0.07, warmup_steps=30, total_steps=100)
    assert schedule.shape == (100,)
    assert schedule[0].item() == pytest.approx(0.04)
    assert schedule[29].item() == pytest.approx(0.07)
    assert torch.all(schedule[30:] == 0.07)
    assert torch.all(torch.diff(schedule[:30]) > 0)  # strictly increasing warm-up
    steps = torch.diff(schedule[:30])
    torch.testing.assert_close(steps, torch.full_like(steps, 0.03 / 29))  # linear


def test_teacher_temp_schedule_without_warmup() -> None:
    schedule = teacher_temp_schedule(0.04, 0.07, warmup_steps=0, total_steps=5)
    assert torch.all(schedule == 0.07)
    assert teacher_temp_schedule(0.04, 0.07, 3, 3)[-1].item() == pytest.approx(0.07)


# ---- bad inputs ------------------------------------------------------------------------------


def good_inputs():
    return dict(
        student_out=torch.randn(12, 4),
        teacher_out=torch.randn(4, 4),
        center=torch.zeros(1, 4),
        student_temp=0.1,
        teacher_temp=0.04,
        n_global_crops=2,
    )


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(student_temp=0.0), "student_temp"),
        (dict(teacher_temp=-0.04), "teacher_temp"),
        (dict(n_global_crops=0), "n_global_crops"),
        (dict(center=torch.zeros(1, 5)), "center"),
        (dict(student_out=torch.randn(12, 5)), "student_out"),
        (dict(student_out=torch.randn(13, 4)), "student_out"),
        (dict(student_out=torch.randn(2, 4)), "n_crops"),  # fewer crops than the teacher's
        (
            dict(student_out=torch.randn(2, 4), teacher_out=torch.randn(2, 4), n_global_crops=1),
            "n_crops",
        ),  # a single crop: no pair of different crops
        (dict(teacher_out=torch.randn(5, 4)), "teacher_out"),
        (
            dict(
                teacher_out=torch.randn(4, 1),
                student_out=torch.randn(12, 1),
                center=torch.zeros(1, 1),
            ),
            "out_dim",
        ),
    ],
)
def test_dino_loss_bad_inputs(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        dino_loss(**{**good_inputs(), **change})


def test_shape_error_says_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"expected \(1, K\) = \(1, 4\)"):
        dino_loss(**{**good_inputs(), "center": torch.zeros(2, 4)})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(out_dim=1), "out_dim"),
        (dict(n_crops=1), "n_crops"),
        (dict(n_global_crops=0), "n_global_crops"),
        (dict(student_temp=0.0), "student_temp"),
        (dict(center_momentum=1.5), "center_momentum"),
        (dict(center_momentum=-0.1), "center_momentum"),
    ],
)
def test_dino_loss_module_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DINOLoss(**{**dict(out_dim=4, n_crops=6), **kwargs})


def test_dino_loss_module_wrong_crop_count() -> None:
    criterion = DINOLoss(out_dim=4, n_crops=6)
    with pytest.raises(ValueError, match="n_crops=6"):
        criterion(torch.randn(8, 4), torch.randn(4, 4), teacher_temp=0.04)  # 4 crops, not 6
    with pytest.raises(ValueError, match="out_dim"):
        criterion.update_center(torch.randn(4, 3))


@pytest.mark.parametrize(
    "args, name",
    [
        ((0.0, 0.07, 3, 10), "warmup_teacher_temp"),
        ((0.04, -1.0, 3, 10), "teacher_temp"),
        ((0.04, 0.07, 11, 10), "warmup_steps"),
        ((0.04, 0.07, -1, 10), "warmup_steps"),
        ((0.04, 0.07, 0, 0), "total_steps"),
    ],
)
def test_teacher_temp_schedule_bad_arguments(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        teacher_temp_schedule(*args)


# ---- centering across processes --------------------------------------------------------------


def test_center_uses_the_batch_of_every_process(monkeypatch) -> None:
    # Simulate 2 processes: this one holds 2 rows, the other process 2 more rows. A real
    # all_reduce(SUM) leaves the sum over both processes in the tensor. The center must move
    # towards the mean of all 4 rows: the all-reduced sum divided by world_size * batch.
    import torch.distributed as dist

    this_batch = torch.tensor([[0.0, 2.0, 4.0], [2.0, 2.0, 0.0]])
    other_batch = torch.tensor([[4.0, 6.0, 0.0], [2.0, 2.0, 4.0]])  # mean of all rows (2, 3, 2)

    def all_reduce(tensor, op=None, group=None, async_op=False):
        tensor += other_batch.sum(dim=0, keepdim=True)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    criterion = DINOLoss(out_dim=3, n_crops=2, center_momentum=0.5)
    criterion.update_center(this_batch)
    torch.testing.assert_close(criterion.center, torch.tensor([[1.0, 1.5, 1.0]]))  # 0.5 * mean
