"""Diagrams of the methods the course builds: DINO, distillation, iBOT. Drawn with matplotlib.

Each function returns a figure of labelled boxes joined by arrows. Every box is a patch whose
`gid` names it (for example "teacher" or "loss"), so a lesson can highlight a part and a test can
find it: `diagram_boxes(fig)` maps each box's name to the text written in it.
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

__all__ = ["diagram_boxes", "plot_dino_diagram", "plot_distillation_diagram",
           "plot_ibot_diagram"]

# one colour per role, the same in every diagram
STUDENT, TEACHER, DATA, LOSS, NEUTRAL = "#cfe2f3", "#f9d9b8", "#e6e6e6", "#d9ead3", "#ffffff"
HIGHLIGHT = "#c0392b"


def _box(ax: Axes, name: str, x: float, y: float, w: float, h: float, text: str,
         colour: str, highlight: Iterable[str] = (), fontsize: float = 9.0) -> FancyBboxPatch:
    """A rounded box with its lower-left corner at (x, y) and `text` in its middle."""
    lit = name in highlight
    box = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                         facecolor=colour, edgecolor=HIGHLIGHT if lit else "#333333",
                         linewidth=3.0 if lit else 1.0, gid=name)
    ax.add_patch(box)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
            gid=f"{name}:label", fontweight="bold" if lit else "normal")
    return box


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], text: str = "",
           dashed: bool = False, text_offset: tuple[float, float] = (0.0, 0.15)) -> None:
    """An arrow from `start` to `end`, with an optional label near its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                 color="#333333", linestyle="--" if dashed else "-",
                                 linewidth=1.2, shrinkA=2, shrinkB=2))
    if text:
        mx, my = (start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=8, color="#333333")


def _canvas(ax: Axes, width: float, height: float, title: str) -> None:
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)


def _check_highlight(highlight: Iterable[str], names: Iterable[str]) -> tuple[str, ...]:
    highlight, names = tuple(highlight), set(names)
    unknown = [h for h in highlight if h not in names]
    if unknown:
        raise ValueError(f"unknown box(es) {unknown}; the diagram has {sorted(names)}")
    return highlight


DINO_BOXES = ("image", "view_student", "view_teacher", "student", "teacher", "ema",
              "student_softmax", "center", "sharpen", "stop_gradient", "loss")


def plot_dino_diagram(highlight: Iterable[str] = (), title: str | None = None) -> Figure:
    """DINO in one picture (the paper's Figure 2, redrawn with every operation as a box).

    Two views of one image go to the student and to the teacher. The teacher's output is
    centred and sharpened, and no gradient flows back through it; the cross-entropy compares
    the two distributions; the teacher's weights follow the student's by an EMA. `highlight`
    names boxes to draw in bold red (see `DINO_BOXES`).
    """
    highlight = _check_highlight(highlight, DINO_BOXES)
    fig, ax = plt.subplots(figsize=(11, 4.6))
    _canvas(ax, 15.5, 6.4, title or "DINO: self-distillation with no labels")
    top, bottom, h = 4.3, 0.9, 1.1
    _box(ax, "image", 0.1, 2.6, 1.5, h, "image x", DATA, highlight)
    _box(ax, "view_student", 2.2, top, 1.8, h, "view x₁\n(augmented crop)", DATA, highlight)
    _box(ax, "view_teacher", 2.2, bottom, 1.8, h, "view x₂\n(augmented crop)", DATA, highlight)
    _box(ax, "student", 4.7, top, 2.0, h, "student\nViT + head", STUDENT, highlight)
    _box(ax, "teacher", 4.7, bottom, 2.0, h, "teacher\nViT + head", TEACHER, highlight)
    _box(ax, "ema", 4.55, 2.65, 2.3, 1.0, "EMA of the weights\nθt ← m·θt + (1−m)·θs",
         NEUTRAL, highlight, fontsize=8)
    _box(ax, "student_softmax", 7.5, top, 2.2, h, "softmax(· / τs)\nτs = 0.1", STUDENT,
         highlight)
    _box(ax, "center", 7.5, bottom, 2.2, h, "centering\nscores − c", TEACHER, highlight)
    _box(ax, "sharpen", 10.3, bottom, 2.2, h, "sharpening\nsoftmax(· / τt)\nτt = 0.04 → 0.07",
         TEACHER, highlight, fontsize=8)
    _box(ax, "stop_gradient", 13.1, bottom, 2.2, h, "stop-gradient\n(no backward)", TEACHER,
         highlight)
    _box(ax, "loss", 13.1, top, 2.2, h, "cross-entropy\n−Σ p_t · log p_s", LOSS, highlight)

    mid = h / 2
    _arrow(ax, (1.6, 2.6 + mid), (2.2, top + mid))
    _arrow(ax, (1.6, 2.6 + mid), (2.2, bottom + mid))
    _arrow(ax, (4.0, top + mid), (4.7, top + mid))
    _arrow(ax, (4.0, bottom + mid), (4.7, bottom + mid))
    _arrow(ax, (6.7, top + mid), (7.5, top + mid))
    _arrow(ax, (6.7, bottom + mid), (7.5, bottom + mid))
    _arrow(ax, (9.7, top + mid), (13.1, top + mid), "p_s")
    _arrow(ax, (9.7, bottom + mid), (10.3, bottom + mid))
    _arrow(ax, (12.5, bottom + mid), (13.1, bottom + mid))
    _arrow(ax, (14.2, bottom + h), (14.2, top), "p_t", text_offset=(0.3, -0.1))
    _arrow(ax, (5.7, top), (5.7, 3.65), dashed=True)  # the student's weights feed the EMA
    _arrow(ax, (5.7, 2.65), (5.7, bottom + h), dashed=True)  # ... which sets the teacher's
    ax.text(8.6, bottom - 0.35, "c ← EMA of the teacher's batch means", ha="center", va="top",
            fontsize=8)
    ax.text(11.4, top + h + 0.2, "gradients flow back through the student only", ha="center",
            va="bottom", fontsize=8, color="#555555")
    fig.tight_layout()
    return fig


DISTILLATION_BOXES = ("kd_image", "kd_teacher", "kd_student", "kd_loss", "sd_image",
                      "sd_views", "sd_student", "sd_teacher", "sd_ema", "sd_loss")


def plot_distillation_diagram() -> Figure:
    """Knowledge distillation (left) next to DINO's self-distillation (right).

    Left: a large teacher, trained beforehand and frozen, gives soft targets that a smaller
    student learns to match on the same image. Right: no trained teacher exists; it is built
    from the student itself (an EMA of its weights, same architecture), and the two see
    different views of the image, with no label anywhere.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    _canvas(left, 9.0, 6.0, "Knowledge distillation (Hinton et al., 2015)")
    _canvas(right, 9.0, 6.0, "Self-distillation (DINO, Caron et al., 2021)")
    h = 1.1
    _box(left, "kd_image", 0.1, 2.45, 1.6, h, "image x", DATA)
    _box(left, "kd_teacher", 2.5, 4.2, 3.0, h, "teacher: large network\ntrained first, frozen",
         TEACHER, fontsize=8)
    _box(left, "kd_student", 2.5, 0.7, 3.0, h, "student: small network\nlearns", STUDENT,
         fontsize=8)
    _box(left, "kd_loss", 6.4, 2.45, 2.5, h, "cross-entropy\nof softened outputs", LOSS,
         fontsize=8)
    _arrow(left, (1.7, 3.0), (2.5, 4.75))
    _arrow(left, (1.7, 3.0), (2.5, 1.25))
    _arrow(left, (5.5, 4.75), (7.65, 3.55), "soft targets", text_offset=(0.5, 0.1))
    _arrow(left, (5.5, 1.25), (7.65, 2.45), "prediction", text_offset=(0.6, -0.45))
    left.text(4.5, 0.25, "same image for both; a smaller, faster copy of a known model",
              ha="center", fontsize=8, color="#555555")

    _box(right, "sd_image", 0.1, 2.45, 1.4, h, "image x", DATA)
    _box(right, "sd_views", 1.9, 2.45, 1.5, h, "two views\nx₁, x₂", DATA, fontsize=8)
    _box(right, "sd_student", 4.0, 4.2, 2.4, h, "student\nlearns", STUDENT)
    _box(right, "sd_teacher", 4.0, 0.7, 2.4, h, "teacher\nsame architecture", TEACHER,
         fontsize=8)
    _box(right, "sd_ema", 4.2, 2.55, 2.0, 0.9, "EMA of the\nstudent", NEUTRAL, fontsize=8)
    _box(right, "sd_loss", 7.0, 2.45, 1.9, h, "cross-entropy\n(no labels)", LOSS, fontsize=8)
    _arrow(right, (1.5, 3.0), (1.9, 3.0))
    _arrow(right, (3.4, 3.0), (4.0, 4.75), "x₁", text_offset=(-0.3, 0.0))
    _arrow(right, (3.4, 3.0), (4.0, 1.25), "x₂", text_offset=(-0.35, -0.3))
    _arrow(right, (5.2, 4.2), (5.2, 3.45), dashed=True)
    _arrow(right, (5.2, 2.55), (5.2, 1.8), dashed=True)
    _arrow(right, (6.4, 4.75), (7.95, 3.55))
    _arrow(right, (6.4, 1.25), (7.95, 2.45))
    right.text(4.5, 0.25, "the teacher is built from the student while it trains",
               ha="center", fontsize=8, color="#555555")
    fig.tight_layout()
    return fig


IBOT_BOXES = ("image", "view_v", "view_u", "view_u_masked", "teacher_v", "student",
              "teacher_u", "cls_target", "student_cls", "student_patches", "patch_targets",
              "cls_loss", "patch_loss")


def _mask_grid(ax: Axes, x: float, y: float, size: float, masked: set[tuple[int, int]]) -> None:
    """A 4 x 4 grid of patches drawn at (x, y); the `masked` (row, col) cells in grey."""
    cell = size / 4
    for r in range(4):
        for c in range(4):
            ax.add_patch(Rectangle((x + c * cell, y + (3 - r) * cell), cell, cell, linewidth=0.5,
                                   edgecolor="#555555",
                                   facecolor="#888888" if (r, c) in masked else "#ffffff"))


def plot_ibot_diagram(highlight: Iterable[str] = ()) -> Figure:
    """iBOT: DINO's CLS loss across views plus a patch loss within one view.

    The student sees view u with blocks of patches masked (û); the teacher sees u intact and
    gives a target at each masked patch (patch loss, same view). The student's CLS output on û
    is compared with the teacher's CLS output on the *other* view v (CLS loss, across views).
    Both teachers are one network, the EMA of the student. `highlight` names boxes to draw in
    bold red (see `IBOT_BOXES`).
    """
    highlight = _check_highlight(highlight, IBOT_BOXES)
    fig, ax = plt.subplots(figsize=(11, 5.0))
    _canvas(ax, 15.5, 7.2, "iBOT: masked patches predicted from an online teacher")
    h, mid = 1.1, 0.55
    ys = {"v": 5.6, "student": 3.1, "u": 0.6}
    _box(ax, "image", 0.1, ys["student"], 1.4, h, "image x", DATA, highlight)
    _box(ax, "view_v", 2.0, ys["v"], 1.9, h, "view v\n(intact)", DATA, highlight)
    _box(ax, "view_u_masked", 2.0, ys["student"], 1.9, h, "view û\n(u, blocks masked)", DATA,
         highlight, fontsize=8)
    _box(ax, "view_u", 2.0, ys["u"], 1.9, h, "view u\n(intact)", DATA, highlight)
    _mask_grid(ax, 2.3, 2.05, 0.8, masked={(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)})
    ax.text(2.7, 1.95, "grey: masked", ha="center", va="center", fontsize=7, color="#555555")
    _box(ax, "teacher_v", 4.6, ys["v"], 2.0, h, "teacher", TEACHER, highlight)
    _box(ax, "student", 4.6, ys["student"], 2.0, h, "student", STUDENT, highlight)
    _box(ax, "teacher_u", 4.6, ys["u"], 2.0, h, "teacher", TEACHER, highlight)
    _box(ax, "cls_target", 7.4, ys["v"], 2.3, h, "[CLS] target\n(no gradient)", TEACHER,
         highlight, fontsize=8)
    _box(ax, "student_cls", 7.4, ys["student"] + 0.65, 2.3, 0.9, "[CLS] prediction", STUDENT,
         highlight, fontsize=8)
    _box(ax, "student_patches", 7.4, ys["student"] - 0.45, 2.3, 0.9,
         "patch predictions\nat masked places", STUDENT, highlight, fontsize=8)
    _box(ax, "patch_targets", 7.4, ys["u"] - 0.2, 2.3, h, "patch targets\n(no gradient)",
         TEACHER, highlight, fontsize=8)
    _box(ax, "cls_loss", 11.2, 4.55, 4.0, h, "[CLS] loss: across views\nteacher on v, student on û",
         LOSS, highlight, fontsize=8)
    _box(ax, "patch_loss", 11.2, 1.45, 4.0, h,
         "patch loss: within one view\nteacher on u, student on û,\nmasked patches only", LOSS,
         highlight, fontsize=8)

    _arrow(ax, (1.5, ys["student"] + mid), (2.0, ys["v"] + mid))
    _arrow(ax, (1.5, ys["student"] + mid), (2.0, ys["student"] + mid))
    _arrow(ax, (1.5, ys["student"] + mid), (2.0, ys["u"] + mid))
    for row in ("v", "student", "u"):
        _arrow(ax, (3.9, ys[row] + mid), (4.6, ys[row] + mid))
    _arrow(ax, (6.6, ys["v"] + mid), (7.4, ys["v"] + mid))
    _arrow(ax, (6.6, ys["student"] + mid), (7.4, ys["student"] + 1.1))
    _arrow(ax, (6.6, ys["student"] + mid), (7.4, ys["student"]))
    _arrow(ax, (6.6, ys["u"] + mid), (7.4, ys["u"] + 0.35))
    _arrow(ax, (9.7, ys["v"] + mid), (11.2, 5.3))
    _arrow(ax, (9.7, ys["student"] + 1.1), (11.2, 4.8))
    _arrow(ax, (9.7, ys["student"]), (11.2, 2.35))
    _arrow(ax, (9.7, ys["u"] + 0.35), (11.2, 1.8))
    ax.text(5.6, 2.2, "teacher = EMA of the student", ha="center", va="center", fontsize=8,
            color="#555555")
    fig.tight_layout()
    return fig


def diagram_boxes(fig: Figure) -> dict[str, str]:
    """{box name: the text written in it} for every box of a diagram drawn by this module."""
    boxes: dict[str, str] = {}
    for ax in fig.axes:
        labels = {t.get_gid(): t.get_text() for t in ax.texts if t.get_gid()}
        for patch in ax.patches:
            name = patch.get_gid()
            if name:
                boxes[name] = labels.get(f"{name}:label", "")
    return boxes
