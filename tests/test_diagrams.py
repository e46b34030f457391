"""Tests for the diagrams of minidino.diagrams: every box is there, named and labelled."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from minidino.diagrams import (
    DINO_BOXES,
    DISTILLATION_BOXES,
    HIGHLIGHT,
    IBOT_BOXES,
    diagram_boxes,
    plot_dino_diagram,
    plot_distillation_diagram,
    plot_ibot_diagram,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _edge(fig: Figure, name: str) -> tuple[str, float]:
    patch = next(p for ax in fig.axes for p in ax.patches if p.get_gid() == name)
    return to_hex(patch.get_edgecolor()), patch.get_linewidth()


@pytest.mark.parametrize("draw, names", [(plot_dino_diagram, DINO_BOXES),
                                         (plot_distillation_diagram, DISTILLATION_BOXES),
                                         (plot_ibot_diagram, IBOT_BOXES)])
def test_every_box_is_drawn_once_with_a_label(draw, names) -> None:
    fig = draw()
    assert isinstance(fig, Figure)
    boxes = diagram_boxes(fig)
    assert set(boxes) == set(names)
    named = [p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()]
    assert len(named) == len(set(named)), "each box name is used once"
    assert all(text.strip() for text in boxes.values()), "every box carries a label"


def test_dino_diagram_shows_each_part_of_the_method() -> None:
    boxes = diagram_boxes(plot_dino_diagram())
    assert "student" in boxes["student"] and "teacher" in boxes["teacher"]
    assert "centering" in boxes["center"] and "− c" in boxes["center"]
    assert "sharpening" in boxes["sharpen"] and "τt" in boxes["sharpen"]
    assert "τs" in boxes["student_softmax"]
    assert "stop-gradient" in boxes["stop_gradient"]
    assert "EMA" in boxes["ema"] and "θt" in boxes["ema"]
    assert "cross-entropy" in boxes["loss"]
    assert {"view x₁", "view x₂"} == {boxes["view_student"].split("\n")[0],
                                      boxes["view_teacher"].split("\n")[0]}


def test_distillation_diagram_contrasts_a_frozen_teacher_with_an_ema_teacher() -> None:
    fig = plot_distillation_diagram()
    boxes = diagram_boxes(fig)
    assert len(fig.axes) == 2
    assert "frozen" in boxes["kd_teacher"] and "EMA" in boxes["sd_ema"]
    assert "no labels" in boxes["sd_loss"]


def test_ibot_diagram_puts_the_cls_loss_across_views_and_the_patch_loss_within_one() -> None:
    boxes = diagram_boxes(plot_ibot_diagram())
    assert "across views" in boxes["cls_loss"]
    assert "within one view" in boxes["patch_loss"] and "masked" in boxes["patch_loss"]
    assert "intact" in boxes["view_u"] and "masked" in boxes["view_u_masked"]


def test_highlight_marks_only_the_named_boxes() -> None:
    fig = plot_dino_diagram(highlight=["ema", "teacher"])
    for name in DINO_BOXES:
        colour, width = _edge(fig, name)
        lit = name in ("ema", "teacher")
        assert (colour == HIGHLIGHT) == lit, name
        assert (width > 2) == lit, name
    fig = plot_ibot_diagram(highlight=["patch_loss"])
    assert _edge(fig, "patch_loss")[0] == HIGHLIGHT
    assert _edge(fig, "cls_loss")[0] != HIGHLIGHT


def test_an_unknown_box_name_is_an_error_that_lists_the_names() -> None:
    with pytest.raises(ValueError, match="centre"):
        plot_dino_diagram(highlight=["centre"])
    with pytest.raises(ValueError, match="patch_loss"):
        plot_ibot_diagram(highlight=["mask"])
