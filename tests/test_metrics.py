"""Collapse diagnostics against constructed cases and a literal transcription of the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidino.collapse import collapse_metrics, collapse_mode, entropy


def _softmax_list(row: list[float]) -> list[float]:
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def _literal(teacher_out, student_out, center, teacher_temp, student_temp, n_global_crops):
    """The definitions written out element by element in plain Python."""
    rows = len(teacher_out)
    p_t = [_softmax_list([(v - c) / teacher_temp for v, c in zip(r, center, strict=True)])
           for r in teacher_out]
    p_s = [_softmax_list([v / student_temp for v in r]) for r in student_out[:rows]]
    h = [-sum(p * math.log(p) for p in row if p > 0) for row in p_t]
    kl = [sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True) if p > 0)
          for pt, ps in zip(p_t, p_s, strict=True)]
    mean_p = [sum(row[j] for row in p_t) / rows for j in range(len(center))]
    return {
        "teacher_entropy": sum(h) / rows,
        "kl_teacher_student": sum(kl) / rows,
        "mean_entropy": -sum(p * math.log(p) for p in mean_p if p > 0),
    }


def test_entropy_uniform_one_hot_and_zeros():
    assert entropy(torch.full((7,), 1 / 7)).item() == pytest.approx(math.log(7), rel=1e-6)
    h = entropy(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))  # (2,)
    assert not torch.isnan(h).any()
    assert h.tolist() == pytest.approx([0.0, math.log(2)], abs=1e-6)
    assert entropy(torch.tensor([[0.25, 0.75]]).T, dim=0).item() == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6
    )


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 50), st.integers(0, 10_000))
def test_entropy_between_zero_and_log_k(K, seed):
    p = torch.rand(4, K, generator=torch.Generator().manual_seed(seed)).softmax(-1)  # (4, K)
    h = entropy(p)
    assert (h >= -1e-6).all() and (h <= math.log(K) + 1e-5).all()


def test_uniform_logits_give_max_entropy():
    K, B = 16, 5
    out = collapse_metrics(torch.zeros(2 * B, K), torch.zeros(8 * B, K), torch.zeros(K),
                           teacher_temp=0.04, student_temp=0.1)
    assert out["teacher_entropy"] == pytest.approx(math.log(K), rel=1e-6)
    assert out["mean_entropy"] == pytest.approx(math.log(K), rel=1e-6)
    assert out["max_entropy"] == pytest.approx(math.log(K))
    assert out["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert collapse_mode(out["teacher_entropy"], K) == "uniform"


def test_one_prototype_dominating():
    K, B = 16, 5
    teacher_out = torch.randn(2 * B, K)
    teacher_out[:, 3] += 1000.0  # every sample sends everything to prototype 3
    out = collapse_metrics(teacher_out, torch.randn(6 * B, K), torch.zeros(1, K), 0.04, 0.1)
    assert out["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert out["mean_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert out["prototypes_used"] == 1
    assert collapse_mode(out["teacher_entropy"], K) == "one-prototype"


def test_center_removes_the_dominant_prototype():
    K, B = 8, 4
    teacher_out = torch.randn(2 * B, K)
    teacher_out[:, 3] += 1000.0
    center = torch.zeros(K)
    center[3] = 1000.0  # the center has learned the offset
    out = collapse_metrics(teacher_out, torch.randn(2 * B, K), center, 1.0, 0.1)
    assert out["teacher_entropy"] > 0.5


def test_prototypes_used_counts_distinct_argmax():
    K = 10
    teacher_out = torch.zeros(6, K)
    for row, proto in enumerate([0, 0, 4, 7, 4, 9]):  # 4 distinct winners
        teacher_out[row, proto] = 5.0
    out = collapse_metrics(teacher_out, torch.zeros(6, K), torch.zeros(K), 0.1, 0.1)
    assert out["prototypes_used"] == 4


def test_kl_zero_when_student_equals_teacher():
    K, B = 32, 3
    teacher_out = torch.randn(2 * B, K)
    student_out = torch.cat([teacher_out, torch.randn(4 * B, K)])  # local crops differ
    out = collapse_metrics(teacher_out, student_out, torch.zeros(K), 0.1, 0.1)
    assert out["kl_teacher_student"] == pytest.approx(0.0, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(2, 12),
    st.integers(1, 4),
    st.sampled_from([1, 2]),
    st.floats(0.02, 1.0),
    st.floats(0.05, 1.0),
    st.integers(0, 10_000),
)
def test_matches_literal_transcription(K, B, n_global_crops, teacher_temp, student_temp, seed):
    g = torch.Generator().manual_seed(seed)
    teacher_out = torch.randn(n_global_crops * B, K, generator=g, dtype=torch.float64)
    student_out = torch.randn((n_global_crops + 2) * B, K, generator=g, dtype=torch.float64)
    center = 0.5 * torch.randn(K, generator=g, dtype=torch.float64)
    out = collapse_metrics(teacher_out, student_out, center, teacher_temp, student_temp,
                           n_global_crops=n_global_crops)
    expected = _literal(teacher_out.tolist(), student_out.tolist(), center.tolist(),
                        teacher_temp, student_temp, n_global_crops)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert out["kl_teacher_student"] >= -1e-6


def test_collapse_mode_healthy_and_edges():
    K = 1024
    assert collapse_mode(0.5 * math.log(K), K) is None
    assert collapse_mode(0.0, K) == "one-prototype"
    assert collapse_mode(math.log(K), K) == "uniform"
    assert collapse_mode(0.2 * math.log(K), K, tol=0.25) == "one-prototype"
    assert collapse_mode(0.2 * math.log(K), K, tol=0.1) is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"teacher_out": torch.zeros(4)}, "teacher_out"),
        ({"student_out": torch.zeros(12, 5)}, "student_out"),
        ({"student_out": torch.zeros(2, 8)}, "student_out"),
        ({"student_out": torch.zeros(13, 8)}, "student_out"),
        ({"center": torch.zeros(7)}, "center"),
        ({"teacher_out": torch.zeros(5, 8)}, "n_global_crops"),
        ({"n_global_crops": 0}, "n_global_crops"),
        ({"teacher_temp": 0.0}, "teacher_temp"),
        ({"student_temp": -0.1}, "student_temp"),
    ],
)
def test_collapse_metrics_bad_inputs(kwargs, name):
    args = {"teacher_out": torch.zeros(4, 8), "student_out": torch.zeros(12, 8),
            "center": torch.zeros(8), "teacher_temp": 0.04, "student_temp": 0.1,
            "n_global_crops": 2} | kwargs
    with pytest.raises(ValueError, match=name):
        collapse_metrics(**args)


@pytest.mark.parametrize(("kwargs", "name"), [({"out_dim": 1}, "out_dim"), ({"tol": 0.5}, "tol"),
                                              ({"tol": 0.0}, "tol")])
def test_collapse_mode_bad_inputs(kwargs, name):
    with pytest.raises(ValueError, match=name):
        collapse_mode(**({"teacher_entropy": 1.0, "out_dim": 16} | kwargs))
