"""Small helpers the lessons share: the device, the seed, how big each experiment is, and the
figures a learner plays with.

Lessons read their sizes from here instead of branching on fast mode themselves: with
`MINIDINO_FAST=1` (or `CI=true`) every experiment shrinks so that a notebook runs in well under
a minute and a half on a laptop CPU; otherwise it runs at the size the lesson was written for.

Every slider figure of the course goes through `live_figure`: its controls, then one figure of
fixed size below them, redrawn in place when a control moves. `log_slider` is the control for
scale-like values (temperatures, learning rates), and `annotate_heatmap` writes numbers on a
heatmap in a colour that can be read on every cell.
"""

from __future__ import annotations

import io
import math
import platform
import random
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from minidino.config import TrainConfig, fast_config, fast_mode
from minidino.device import pick_device
from minidino.presets import get_preset

if TYPE_CHECKING:
    from ipywidgets import FloatLogSlider, ValueWidget
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage
    from matplotlib.text import Text

FIGURE_DPI = 100  # pixels per inch of a live figure: a (9, 3) figure is 900 x 300 pixels
SLIDER_WIDTH = "440px"  # label + track + readout; the track keeps ~250 px beside a long label


def setup(seed: int = 0, verbose: bool = True) -> torch.device:
    """Seed every generator, pick cuda, then mps, then cpu, and say what was found."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = pick_device("auto")
    if device.type == "cpu" and fast_mode():
        torch.set_num_threads(1)  # fast-mode models are tiny: splitting each op only costs time
    if verbose:
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor()
        print(f"torch {torch.__version__} | device: {device} ({name or 'cpu'}) | "
              f"fast mode: {'on' if fast_mode() else 'off'}")
    return device


def budget(full: int, fast: int) -> int:
    """How many steps (or images, or epochs) an experiment uses: `fast` in fast mode."""
    if full < 1 or fast < 1:
        raise ValueError(f"budget(full={full}, fast={fast}): both must be >= 1")
    return fast if fast_mode() else full


def lesson_config(preset: str = "cpu-demo", **overrides: Any) -> TrainConfig:
    """A preset, shrunk in fast mode, with `overrides` applied last."""
    cfg = get_preset(preset)
    if fast_mode():
        cfg = fast_config(cfg)
    return replace(cfg, **overrides)


# --- figures a learner plays with -----------------------------------------------------------


def log_grid(value: float, low: float, high: float, steps: int = 40,
             tol: float = 2e-4) -> tuple[float, float, float]:
    """(min, max, step) exponents (base 10) of a slider grid from `low` to `high` on which
    `value` lies exactly.

    A slider snaps its value to `min + k * step`, so a grid that misses the default would turn
    DINO's 0.04 into 0.0398. The grid starts at exactly `low`, passes through `value`, has at
    least `steps` steps, and ends at most `tol` (in log10) below `high`: 1 shows as 1 at 3
    significant digits, and never more than `high`.
    """
    if not 0 < low < high or not low <= value <= high:
        raise ValueError(f"log slider value={value}, low={low}, high={high}: need "
                         "0 < low <= value <= high and low < high")
    if steps < 1:
        raise ValueError(f"log slider steps={steps}: need at least one step")
    lo, lv, hi = math.log10(low), math.log10(value), math.log10(high)
    even = (hi - lo) / steps
    below, above = lv - lo, hi - lv
    if below < 1e-12:  # the value is the low end: an even grid hits both ends
        return lo, hi, even
    for n_below in range(max(1, math.ceil(below / even - 1e-9)), 1000 * steps):
        step = below / n_below
        top = lv + math.floor(above / step + 1e-9) * step
        if hi - top < tol:
            return lo, top, step
    return lo, hi, even  # not reached for sensible arguments


def log_slider(value: float, low: float, high: float, steps: int = 40,
               description: str = "") -> FloatLogSlider:
    """A slider for a scale-like value (a temperature, a learning rate) from `low` to `high`.

    Each factor of 10 gets the same length of track, so 0.01-0.1 is as easy to set as 0.1-1;
    the readout shows 3 significant digits, and `value` sits exactly on the slider's grid
    (`log_grid`), which has at least `steps` steps.
    """
    from ipywidgets import FloatLogSlider

    lo, hi, step = log_grid(value, low, high, steps)
    return FloatLogSlider(value=value, base=10, min=lo, max=hi, step=step,
                          readout_format=".3g", description=description)


def figure_png(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """`fig` as PNG bytes of exactly its size in inches times `dpi` pixels.

    No tight bounding box (the notebook default): a live figure keeps its size when a title or a
    label changes length, so the page does not jump while a slider moves.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _draw_png(draw: Callable[..., Figure], values: dict[str, Any]) -> bytes:
    """Call draw(**values) and return its figure as PNG; close every figure it opened."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = set(plt.get_fignums())
    fig = None
    try:
        fig = draw(**values)
        if not isinstance(fig, Figure):
            name = getattr(draw, "__name__", "draw")
            raise TypeError(f"{name}() must build a matplotlib figure and return it (ending with "
                            f"`return fig`, not plt.show()); it returned {type(fig).__name__}")
        return figure_png(fig)
    finally:  # a figure left open would be shown again by the notebook after the next cell
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
        if isinstance(fig, Figure):
            plt.close(fig)


def _fit_label(control: ValueWidget, name: str) -> None:
    """Label `control` with `name` unless it has a label, and never cut the label."""
    if not control.description:
        control.description = name
    control.style.description_width = "initial"  # as wide as the label needs
    if "Slider" in type(control).__name__ and control.layout.width is None:
        control.layout.width = SLIDER_WIDTH


def live_figure(draw: Callable[..., Figure], /, **controls: ValueWidget) -> None:
    """Show `controls` (ipywidgets sliders and dropdowns) with one figure below them.

    `draw(**values)` gets one keyword argument per control, builds a matplotlib figure of fixed
    size and returns it (without `plt.show()`). The figure is drawn when the cell runs and
    redrawn in place, in the same `Output` widget, whenever a control moves, so the cell always
    holds exactly one figure. An error in the first drawing fails the cell like any other; an
    error after a move shows its traceback where the figure was. A control without a description
    is labelled with its argument name, and no label is cut.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    if not controls:
        raise ValueError("live_figure(draw, name=control, ...) needs at least one control")
    for name, control in controls.items():
        _fit_label(control, name)
    first: list[bool] = [True]
    first_error: list[Exception] = []

    def redraw(**values: Any) -> None:
        is_first, first[0] = first[0], False
        try:
            png = _draw_png(draw, values)
        except Exception as err:
            if is_first:  # raised again below, outside the Output widget, to fail the cell
                first_error.append(err)
                return
            raise  # the Output widget shows the traceback in place of the figure
        display(Image(data=png, format="png"))

    output = widgets.interactive_output(redraw, controls)  # draws once, inside `output`
    if first_error:
        raise first_error[0]
    panel = widgets.Box(list(controls.values()),
                        layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                              align_items="center"))
    display(widgets.VBox([panel, output]))


def text_colour(background: Any) -> str:
    """The text colour, "black" or "white", that reads better on `background` (any colour).

    By the relative luminance of the WCAG contrast rule: black text on light colours (the yellow
    end of viridis), white text on dark ones.
    """
    from matplotlib.colors import to_rgb

    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
              for c in to_rgb(background)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "white"


def annotate_heatmap(image: AxesImage, fmt: str = "{:.2f}", **text_kw: Any) -> list[Text]:
    """Write each cell's value on a heatmap drawn by `ax.imshow(values)`, in black or white,
    whichever reads better on that cell's colour. Returns the text objects."""
    values = np.ma.getdata(image.get_array())  # (rows, cols)
    colours = image.cmap(image.norm(values))  # (rows, cols, 4)
    text_kw = {"ha": "center", "va": "center", "fontsize": 8, **text_kw}
    return [image.axes.text(col, row, fmt.format(value), color=text_colour(colours[row, col]),
                            **text_kw)
            for (row, col), value in np.ndenumerate(values)]
