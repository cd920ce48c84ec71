"""Figures of a search and its result: the architecture drawn like FNA's Figure 4, the
architecture parameters' softmax over the search, and training curves.

Figures are built as bare :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas:
they never touch pyplot's global figure registry, so nothing leaks in long runs and no display
is needed. Every file is written atomically (a reader never sees a half-written PNG).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from .arch import Arch, Op
from .atomic import atomic_write
from .families import get_family
from .nas.report import DECISIVE_PROBABILITY

PathLike = str | os.PathLike

KERNEL_COLORS = {3: "#4C9BE8", 5: "#F2A541", 7: "#E4572E"}
OTHER_KERNEL_COLOR = "#9B59B6"
STEM_COLOR = "#B0B0B0"
SKIP_COLOR = "#8C8C8C"
BOX_WIDTH = 0.8
SKIP_WIDTH = 0.32
SKIP_FILL = "#EFEFEF"
ROW_HEIGHT = 2.0  # data units between the baselines of the seed and adapted rows


# --------------------------------------------------------------------------- shared helpers
def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps titles, labels and "outside" legends from overlapping.
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # attach an Agg canvas: rendering needs no pyplot backend
    return figure


def _save_figure(figure: Figure, path: PathLike, dpi: int = 120) -> Path:
    """Saves ``figure`` as PNG atomically, then releases it."""
    try:
        # The temporary name ends in .tmp, so the format cannot be guessed from it.
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi,
                                                             bbox_inches="tight"))
    finally:
        figure.clear()  # drop the artists now rather than waiting for the garbage collector


# --------------------------------------------------------------------------- architecture
def _box_height(expansion: int) -> float:
    """Grows with expansion (e1 < e3 < e6) so wide blocks stand out, as in the paper."""
    return 0.35 + 0.65 * min(expansion, 6) / 6


def _kernel_color(kernel: int) -> str:
    return KERNEL_COLORS.get(kernel, OTHER_KERNEL_COLOR)


def _stage_slots(archs: Sequence[Arch]) -> list[int]:
    """Columns per stage: the deepest of the rows, so stage boundaries line up between rows."""
    depth = max(len(arch.stages) for arch in archs)
    return [max((len(a.stages[i].ops) for a in archs if i < len(a.stages)), default=0)
            for i in range(depth)]


def _draw_box(ax, x: float, y: float, width: float, height: float, label: str, *,
              color: str, dashed: bool = False, fontsize: float = 7, rotation: float = 0) -> None:
    ax.add_patch(Rectangle((x - width / 2, y), width, height, facecolor=color,
                           edgecolor=SKIP_COLOR if dashed else "black",
                           linestyle="--" if dashed else "-", linewidth=0.8))
    ax.text(x, y + height / 2, label, ha="center", va="center", fontsize=fontsize,
            rotation=rotation, color="#555555" if dashed else "black")


def _draw_layer(ax, x: float, y: float, op: Op, stride: int) -> None:
    if op.is_skip:
        _draw_box(ax, x, y, SKIP_WIDTH, 0.5, "skip", color=SKIP_FILL, dashed=True,
                  fontsize=7, rotation=90)
    else:
        # families without an expansion (ResNet's blocks) draw at full height, labelled by op
        expansion = getattr(op, "expansion", None)
        label = f"K{op.kernel}\nE{expansion:g}" if expansion is not None else f"{op.name[:5]}\nK{op.kernel}"
        # a NAS seed's extras, one short line: SE and the activation (ReLU6, MobileNetV2's, unmarked)
        extras = [tag for tag in (getattr(op, "se", "").upper(), getattr(op, "act", "").upper()) if tag]
        if extras:
            label += "\n" + " ".join(extras)
        _draw_box(ax, x, y, BOX_WIDTH, _box_height(expansion or 6), label, color=_kernel_color(op.kernel))
    if stride == 2:
        ax.text(x, y - 0.08, "↓2", ha="center", va="top", fontsize=7, color="#C0392B",
                fontweight="bold")


def _draw_arch_row(ax, arch: Arch, y: float, slots: Sequence[int], label: str | None) -> None:
    """One row: the stem at x=0, then each stage in its slot, dotted lines between stages."""
    family = get_family(arch.family)
    _draw_box(ax, 0, y, BOX_WIDTH, 0.5, f"stem\n{family.stem_label}", color=STEM_COLOR)
    ax.text(0, y - 0.08, f"↓{family.stem_stride}", ha="center", va="top", fontsize=7, color="#C0392B",
            fontweight="bold")
    ax.text(0, y + 1.08, str(arch.stem_channels), ha="center", va="bottom", fontsize=7)
    start = 1
    for stage, slot in zip(arch.stages, slots):
        for i, (_, _, stride, op) in enumerate(stage.layers(arch.family)):
            _draw_layer(ax, start + i, y, op, stride)
        # The output channels name the stage, centred over this row's layers of it.
        ax.text(start + (len(stage.ops) - 1) / 2, y + 1.08, str(stage.out_channels), ha="center",
                va="bottom", fontsize=8, fontweight="bold")
        ax.plot([start - 0.5] * 2, [y - 0.3, y + 1.25], color="#999999", linestyle=":",
                linewidth=0.8)
        start += slot
    if label:
        ax.text(-0.7, y + 0.5, label, ha="right", va="center", fontsize=10, fontweight="bold")


def _arch_legend_handles(archs: Sequence[Arch]) -> list:
    kernels = sorted({op.kernel for a in archs for s in a.stages for op in s.layer_ops(a.family)
                      if not op.is_skip})
    handles = [Patch(facecolor=_kernel_color(k), edgecolor="black", label=f"{k}x{k} kernel")
               for k in kernels]
    handles += [Patch(facecolor=SKIP_FILL, edgecolor=SKIP_COLOR, linestyle="--", label="skip"),
                Patch(facecolor=STEM_COLOR, edgecolor="black", label="stem"),
                Line2D([], [], color="none", label="height ∝ expansion, ↓2 = stride 2")]
    return handles


def plot_arch(arch: Arch, path: PathLike, *, title: str | None = None,
              seed_arch: Arch | None = None) -> Path:
    """Draws ``arch`` as one box per layer (stem and fixed first block included) and writes a PNG.

    With ``seed_arch``, the seed is drawn above for comparison, stages aligned column by column.
    """
    rows = [(seed_arch, "seed"), (arch, "adapted")] if seed_arch is not None else [(arch, None)]
    archs = [a for a, _ in rows]
    slots = _stage_slots(archs)
    columns = 1 + sum(slots)
    figure = _new_figure(max(6.0, 0.5 * columns + 1.5), 0.6 + 1.3 * len(rows))
    ax = figure.add_subplot()
    for index, (row_arch, label) in enumerate(rows):
        _draw_arch_row(ax, row_arch, (len(rows) - 1 - index) * ROW_HEIGHT, slots, label)
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-0.45, (len(rows) - 1) * ROW_HEIGHT + 1.35)
    ax.axis("off")
    ax.legend(handles=_arch_legend_handles(archs), loc="upper center", fontsize=7, frameon=False,
              bbox_to_anchor=(0.5, 0.0), ncol=6, handlelength=1.2, columnspacing=1.2)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(figure, path)


# --------------------------------------------------------------------------- alphas
def _validate_history(history, layer_names: Sequence[str],
                      candidate_names: Sequence[Sequence[str]]) -> None:
    if not history:
        raise ValueError("plot_alphas needs at least one (step, probs) entry in history; "
                         "got an empty history (has the search logged any step yet?)")
    if len(layer_names) != len(candidate_names):
        raise ValueError(f"{len(layer_names)} layer names but {len(candidate_names)} "
                         "candidate lists")
    for step, probs in history:
        if len(probs) != len(layer_names):
            raise ValueError(f"step {step}: probabilities for {len(probs)} layers, expected "
                             f"{len(layer_names)}")
        for name, p, ops in zip(layer_names, probs, candidate_names):
            if len(p) != len(ops):
                raise ValueError(f"step {step}, layer {name}: {len(p)} probabilities for "
                                 f"{len(ops)} candidates {list(ops)}")


def _op_colors(candidate_names: Sequence[Sequence[str]]) -> dict[str, tuple]:
    """One colour per op name (in order of first appearance), the same in every subplot."""
    ops = list(dict.fromkeys(op for names in candidate_names for op in names))
    palette = colormaps["tab10"].colors
    return {op: palette[i % len(palette)] for i, op in enumerate(ops)}


def _plot_layer_alphas(ax, steps: list[int], series: list[list[float]], ops: Sequence[str],
                       colors: dict[str, tuple], name: str) -> None:
    marker = "o" if len(steps) == 1 else None  # a single point draws no line
    final = series[-1]
    winner = max(range(len(ops)), key=lambda j: final[j])
    for j, op in enumerate(ops):  # the winner drawn thick and on top, the others faded
        ax.plot(steps, [p[j] for p in series], color=colors[op], marker=marker, markersize=4,
                linewidth=2.6 if j == winner else 0.9, alpha=1.0 if j == winner else 0.45,
                zorder=3 if j == winner else 2, linestyle="--" if op == "skip" else "-")
    ax.axhline(DECISIVE_PROBABILITY, color="0.5", linewidth=0.6, linestyle=":")
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 1, steps[0] + 1)  # matplotlib's default span is under one step
    decided = final[winner] >= DECISIVE_PROBABILITY
    ax.set_title(f"{name}: {ops[winner]} {final[winner]:.2f}", fontsize=7,
                 fontweight="bold" if decided else "normal")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # steps are whole numbers
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def _hide_unused_axes(axes, used: int) -> None:
    """Hides the grid's empty cells; the cell above each gets the step axis, which sharex would
    otherwise leave unlabelled."""
    rows, columns = axes.shape
    for index in range(used, rows * columns):
        axes.flat[index].set_visible(False)
    for column in range(min(columns, used)):
        bottom = max(r for r in range(rows) if r * columns + column < used)
        axes[bottom, column].xaxis.set_tick_params(labelbottom=True)
        axes[bottom, column].set_xlabel("step", fontsize=8)


def plot_alphas(history: Sequence[tuple[int, Sequence[Sequence[float]]]],
                layer_names: Sequence[str], candidate_names: Sequence[Sequence[str]],
                path: PathLike, *, title: str | None = None, columns: int = 4) -> Path:
    """Plots softmax(alpha) of every searched layer against the search step, one subplot per layer.

    ``history`` holds ``(step, probs)`` with ``probs[l][j]`` the probability of candidate
    ``candidate_names[l][j]`` of layer ``layer_names[l]``. Each subplot draws the final winner
    thick and names it with its probability (bold where it reaches ``DECISIVE_PROBABILITY``,
    the dotted line).
    """
    _validate_history(history, layer_names, candidate_names)
    steps = [step for step, _ in history]
    columns = max(1, min(columns, len(layer_names)))
    rows = math.ceil(len(layer_names) / columns)
    figure = _new_figure(2.3 * columns, 1.6 * rows + 0.9)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    colors = _op_colors(candidate_names)
    for index, (name, ops) in enumerate(zip(layer_names, candidate_names)):
        series = [probs[index] for _, probs in history]
        _plot_layer_alphas(axes.flat[index], steps, series, ops, colors, name)
    _hide_unused_axes(axes, len(layer_names))
    handles = [Line2D([], [], color=c, linestyle="--" if op == "skip" else "-", label=op)
               for op, c in colors.items()]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
                  fontsize=7, frameon=False)
    figure.supylabel("softmax(α)", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save_figure(figure, path)


# --------------------------------------------------------------------------- training curves
def _plot_loss(ax, records: Sequence[dict]) -> None:
    points = [(r["iter"], r["loss"]) for r in records if r.get("loss") is not None]
    if points:
        ax.plot(*zip(*points), linewidth=1.0, marker="o" if len(points) == 1 else None)
    else:
        _say(ax, "no training loss yet")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training loss", fontsize=9)
    ax.grid(alpha=0.3)


def _plot_eval(ax, records: Sequence[dict]) -> None:
    evals = [(r["iter"], r["eval"]) for r in records if isinstance(r.get("eval"), dict)]
    drawn = False
    for stat in ("AP", "AP50"):
        points = [(it, ev[stat]) for it, ev in evals if ev.get(stat) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.0, label=stat)
            drawn = True
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        _say(ax, "no evaluation yet")
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP")
    ax.set_title("evaluation", fontsize=9)
    ax.grid(alpha=0.3)


def _say(ax, message: str) -> None:
    """Writes ``message`` in an empty panel, whose 0-1 ticks would mean nothing."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="#666666")


def plot_training_curves(records: Iterable[dict], path: PathLike, *,
                         title: str | None = None) -> Path:
    """Plots the loss, and AP/AP50 of the records that carry ``"eval"``, against ``"iter"``
    (the records of a Trainer's ``metrics.jsonl``)."""
    records = [r for r in records if isinstance(r, dict) and "iter" in r]
    figure = _new_figure(9.0, 3.2)
    loss_ax, eval_ax = figure.subplots(1, 2)
    _plot_loss(loss_ax, records)
    _plot_eval(eval_ax, records)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save_figure(figure, path)
