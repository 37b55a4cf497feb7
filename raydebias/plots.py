"""Readable matplotlib figures at any value range (issue #15 item 5): shared by the evaluation report, the
benchmark report and the sweep's Pareto plot.

Tiny models give metric values such as 0.3451, 0.34512, 0.34515. Matplotlib's default ScalarFormatter then
writes an offset (``1e-5+3.45e-1``) and the labels of nearly equal points sit on top of each other. The
helpers here avoid both:

- :class:`PlainFormatter` / :func:`plain_axis`: tick labels written out in full, with just as many decimals
  as the tick step needs (never an offset or a multiplier: ``axis.get_offset_text()`` stays empty);
- :func:`fit_ticks`: fewer ticks (or rotated labels on a categorical axis) while tick labels overlap;
- :func:`label_points`: each label placed in the first free spot around its point (rings of growing
  radius, in pixels), never over another label or marker, with a leader line when it had to move away;
- :func:`tradeoff_figure`: the toxicity x faithfulness scatter (± std bars, Pareto front, labels, a
  footnote naming the points that could not be drawn);
- :func:`new_figure` / :func:`save` / :func:`png_bytes`: figures on the Agg canvas directly (no pyplot: no
  global backend switch, nothing to close).

Layout order matters: labels are placed in pixels, so call :func:`finish_layout` (tight layout + ticks)
before :func:`label_points`, and save without ``bbox_inches="tight"`` (it would move the axes).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, Formatter, MaxNLocator

DPI = 120
LABEL_PAD_PX = 3.0  # free pixels kept between two label boxes and between a label and a marker


def new_figure(width: float = 6.4, height: float = 4.8, dpi: int = DPI) -> tuple[Figure, Axes]:
    """A figure with one axes on an Agg canvas (so ``fig.canvas.draw()`` renders and text can be measured)."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def save(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as a PNG at its own dpi (the dpi the labels were placed at)."""
    path = Path(path)
    path.write_bytes(png_bytes(fig))
    return path


class PlainFormatter(Formatter):
    """Tick labels written out in full with the fewest decimals that keep every tick exact (0.34512,
    0.34514, ...); scientific per tick (``1.5e-07``) only for magnitudes below 1e-4 or from 1e6, so no
    label ever depends on a shared offset or multiplier."""

    def __init__(self) -> None:
        self._fmt = "{:.3g}"

    def set_locs(self, locs: Sequence[float]) -> None:
        self.locs = list(locs)
        vals = sorted(v for v in self.locs if math.isfinite(v))
        steps = [b - a for a, b in zip(vals, vals[1:], strict=False) if b > a]
        big = max((abs(v) for v in vals), default=0.0)
        step = min(steps) if steps else (big or 1.0)
        tol = step * 1e-3
        if big and (big < 1e-4 or big >= 1e6):
            sig = next((s for s in range(1, 16) if all(abs(float(f"{v:.{s}e}") - v) <= tol for v in vals)), 15)
            self._fmt = f"{{:.{sig}e}}"
        else:
            dec = next((d for d in range(0, 16) if all(abs(round(v, d) - v) <= tol for v in vals)), 15)
            self._fmt = f"{{:.{dec}f}}"

    def __call__(self, x: float, pos: int | None = None) -> str:
        s = self._fmt.format(x)
        return "0" + s[2:] if s.startswith("-0") and float(s) == 0 else s  # no "-0.000"


def plain_axis(ax: Axes, x: bool = True, y: bool = True, nbins: int = 6) -> None:
    """Numeric axes with :class:`PlainFormatter` and at most ``nbins`` intervals of nice steps."""
    for on, axis in ((x, ax.xaxis), (y, ax.yaxis)):
        if on:
            axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
            axis.set_major_formatter(PlainFormatter())


def _boxes_overlap(a: Any, b: Any, pad: float = 0.0) -> bool:
    """Bboxes (x0, y0, x1, y1 in pixels) closer than ``pad``."""
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def tick_labels_overlap(ax: Axes, which: str = "x") -> bool:
    """True when two visible major tick labels of ``ax``'s ``which`` axis overlap (after a draw)."""
    fig = ax.figure
    fig.canvas.draw()
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    boxes = [t.label1.get_window_extent() for t in axis.get_major_ticks()
             if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
    return any(_boxes_overlap(a, b, 1.0) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def fit_ticks(ax: Axes) -> None:
    """Fewer ticks on a numeric axis (down to 2 intervals) while its labels overlap; on a categorical axis
    (fixed ticks) rotate the labels 30°, then 90°."""
    for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        loc = axis.get_major_locator()
        if isinstance(loc, MaxNLocator):
            n = len(axis.get_majorticklocs())
            while n > 2 and tick_labels_overlap(ax, which):
                n -= 1
                axis.set_major_locator(MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]))
        elif isinstance(loc, FixedLocator) and which == "x":
            for angle in (30, 90):
                if not tick_labels_overlap(ax, "x"):
                    break
                for t in ax.get_xticklabels():
                    t.set_rotation(angle)
                    t.set_horizontalalignment("right" if angle < 90 else "center")


def finish_layout(fig: Figure, ax: Axes, footnote_lines: int = 0) -> None:
    """Tight layout, readable ticks, tight layout again (ticks may have changed), leaving room for a
    footnote of ``footnote_lines`` lines at the bottom."""
    bottom = min(0.4, footnote_lines * 0.035)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fit_ticks(ax)
    fig.tight_layout(rect=(0, bottom, 1, 1))


def footnote(fig: Figure, text: str, fontsize: float = 7) -> int:
    """Wrap ``text`` to the figure's width and write it at the bottom left; returns its number of lines."""
    if not text:
        return 0
    width_chars = max(20, int(fig.get_figwidth() * 72 / (fontsize * 0.6)))
    lines = textwrap.wrap(text, width_chars)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=fontsize, va="bottom", ha="left", color="0.3")
    return len(lines)


def label_points(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 fontsize: float = 7, marker_radius_px: float = 5.0) -> list[Any]:
    """Annotate each point (data coordinates) with its label so that no two label boxes overlap and no
    label covers a marker; labels stay inside the axes.

    Greedy placement in pixels: for each point, candidate boxes on rings of radius 6, 12, 18, ... px
    around it (16 directions per ring) are tried in order; the first box inside the axes that keeps
    :data:`LABEL_PAD_PX` from every placed label and every marker wins. A label that moved past the first
    ring gets a thin leader line to its point. Call after the layout is final (:func:`finish_layout`).
    """
    if not (len(xs) == len(ys) == len(labels)):
        raise ValueError(f"label_points: {len(xs)} xs, {len(ys)} ys and {len(labels)} labels must match")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = ax.transData.transform(list(zip(xs, ys, strict=True))) if len(xs) else []
    frame = ax.get_window_extent(renderer)
    sizes = []
    for lab in labels:
        t = ax.text(0, 0, lab, fontsize=fontsize)
        bb = t.get_window_extent(renderer)
        sizes.append((bb.width, bb.height))
        t.remove()
    r = marker_radius_px
    markers = [_Box(x - r, y - r, x + r, y + r) for x, y in px]
    placed: list[_Box] = []
    out = []
    angles = [k * math.pi / 8 for k in (2, 1, 3, 0, 4, 15, 9, 14, 10, 13, 11, 12, 5, 6, 7, 8)]  # up-right first
    for (x, y), (w, h), lab, xd, yd in zip(px, sizes, labels, xs, ys, strict=True):
        best, best_cost, moved = None, math.inf, False
        for ring in range(1, 80):
            radius = 6.0 * ring
            for a in angles:
                cx = x + math.cos(a) * (radius + w / 2)
                cy = y + math.sin(a) * (radius + h / 2)
                box = _Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                inside = (box.x0 >= frame.x0 + 2 and box.x1 <= frame.x1 - 2 and box.y0 >= frame.y0 + 2
                          and box.y1 <= frame.y1 - 2)
                cost = sum(_boxes_overlap(box, o, LABEL_PAD_PX) for o in (*placed, *markers)) + (not inside) * 100
                if cost < best_cost:
                    best, best_cost, moved = box, cost, ring > 1
                if cost == 0:
                    break
            if best_cost == 0:
                break
        placed.append(best)
        cx, cy = (best.x0 + best.x1) / 2, (best.y0 + best.y1) / 2
        to_pt = 72.0 / fig.dpi  # pixels -> points (offsets scale with the fonts at any dpi)
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.55", "shrinkA": 0, "shrinkB": 3} if moved else None
        out.append(ax.annotate(lab, (xd, yd), xytext=((cx - x) * to_pt, (cy - y) * to_pt),
                               textcoords="offset points", ha="center", va="center", fontsize=fontsize,
                               arrowprops=arrow, annotation_clip=False))
    return out


class _Box:
    __slots__ = ("x0", "x1", "y0", "y1")

    def __init__(self, x0: float, y0: float, x1: float, y1: float):
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1


def _finite(*vals: float | None) -> bool:
    return all(v is not None and isinstance(v, int | float) and math.isfinite(v) for v in vals)


def tradeoff_figure(names: Sequence[str], x: Sequence[float | None], y: Sequence[float | None],
                    x_std: Sequence[float | None] | None = None, y_std: Sequence[float | None] | None = None,
                    front: Sequence[str] = (), highlight: Sequence[str] = (), title: str = "",
                    xlabel: str = "toxicity (toxic-bert, 0-1; lower is better)",
                    ylabel: str = "faithfulness (NLI, 0-1; higher is better)", notes: Sequence[str] = (),
                    point_label: str = "method",
                    width: float = 7.0, height: float = 5.2) -> Figure:
    """A labelled scatter of ``names`` at (``x``, ``y``) with ± std bars, the Pareto front ``front`` (names,
    drawn in order of x) and ``highlight`` (e.g. the base model) as black squares.

    The view is fitted to the points (with room for the labels), not to the bars: a std far larger than the
    differences between points would otherwise squeeze every point into one spot. Bars running past the
    view are said so in the footnote, with the names that had no value (``None``/NaN) and ``notes``.
    """
    n = len(names)
    x_std = list(x_std) if x_std is not None else [None] * n
    y_std = list(y_std) if y_std is not None else [None] * n
    if not (len(x) == len(y) == len(x_std) == len(y_std) == n):
        raise ValueError(f"tradeoff_figure: {n} names but {len(x)} x, {len(y)} y, {len(x_std)} x_std and "
                         f"{len(y_std)} y_std values")
    fig, ax = new_figure(width, height)
    ok = [i for i in range(n) if _finite(x[i], y[i])]
    missing = [names[i] for i in range(n) if i not in ok]
    xs, ys = [float(x[i]) for i in ok], [float(y[i]) for i in ok]
    hi = set(highlight)
    regular = [k for k, i in enumerate(ok) if names[i] not in hi]
    special = [k for k, i in enumerate(ok) if names[i] in hi]
    ax.scatter([xs[k] for k in regular], [ys[k] for k in regular], s=30, c="C0", zorder=3, label=point_label)
    if special:
        ax.scatter([xs[k] for k in special], [ys[k] for k in special], s=40, c="k", marker="s", zorder=4,
                   label=", ".join(names[ok[k]] for k in special))
    on_front = [(xs[k], ys[k]) for k, i in enumerate(ok) if names[i] in set(front)]
    if on_front:
        fx, fy = zip(*sorted(on_front), strict=True)
        ax.plot(fx, fy, "-", c="C3", lw=1.2, zorder=2, label="Pareto front (min x, max y)")
        ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="C3", lw=1.2, zorder=5)
    ax.margins(0.12)
    ax.autoscale_view()
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    xe = [float(x_std[i]) if _finite(x_std[i]) else 0.0 for i in ok]
    ye = [float(y_std[i]) if _finite(y_std[i]) else 0.0 for i in ok]
    if ok and any(xe + ye):
        # translucent, so bars wider than the view are not taken for grid lines
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="none", ecolor="C0", alpha=0.25, elinewidth=0.8, capsize=2,
                    zorder=1)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    clipped = any(v - e < xlim[0] or v + e > xlim[1] for v, e in zip(xs, xe, strict=True)) or any(
        v - e < ylim[0] or v + e > ylim[1] for v, e in zip(ys, ye, strict=True))
    plain_axis(ax)
    fig.suptitle(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, lw=0.3, alpha=0.5)
    if ok:
        # above the axes, not inside: a legend inside could sit on the labels placed later
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    text = []
    if any(xe + ye):
        text.append("Bars: ± 1 std" + (" (some run past the view, which is fitted to the points)." if clipped else "."))
    same: dict[tuple[float, float], list[str]] = {}
    for k, i in enumerate(ok):
        same.setdefault((xs[k], ys[k]), []).append(names[i])
    if groups := [g for g in same.values() if len(g) > 1]:
        text.append("Same position: " + "; ".join(" = ".join(g) for g in groups) + ".")
    if missing:
        text.append("Not drawn (no value): " + ", ".join(missing) + ".")
    text += list(notes)
    if not ok:
        ax.text(0.5, 0.5, "no method has both values", ha="center", va="center", transform=ax.transAxes)
    lines = footnote(fig, " ".join(text))
    finish_layout(fig, ax, lines)
    label_points(ax, xs, ys, [names[i] for i in ok])
    return fig


__all__ = ["DPI", "PlainFormatter", "finish_layout", "fit_ticks", "footnote", "label_points", "new_figure",
           "plain_axis", "png_bytes", "save", "tick_labels_overlap", "tradeoff_figure"]
