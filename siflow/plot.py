"""Figures of a trajectory with theory overlays (matplotlib only, Agg backend).

This module draws what it is given and computes nothing: the caller (e.g.
:mod:`siflow.overlay`) supplies the trajectory, the events and the theory lines
as the small objects below. Four panels share the step axis:

=================  ==========================================  ======
panel              column                                      y axis
=================  ==========================================  ======
``"loss"``         ``loss``                                    log (linear if a value <= 0)
``"rho"``          ``rho`` (weight norm ``|w|``)               log
``"elr"``          ``elr`` (effective LR ``lr/|w|^2``)         log
``"angle"``        ``angular_update`` (radians per step)       log
=================  ==========================================  ======

A panel whose column is absent says "not in log". Figures are written as PNG,
SVG or PDF chosen by the suffix of ``path``, atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from siflow._fileio import atomic_path
from siflow._validate import check_positive_int
from siflow.trajectory import Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from siflow.periods import Events

__all__ = [
    "PANELS",
    "HLine",
    "Band",
    "Segment",
    "Marker",
    "Curve",
    "plot_trajectory",
    "save_figure",
]

#: Panel names, their trajectory column and y-axis label.
PANELS: dict[str, tuple[str, str]] = {
    "loss": ("loss", "training loss"),
    "rho": ("rho", r"weight norm $\rho = |w|$"),
    "elr": ("elr", r"effective LR $\tilde\eta = \eta/\rho^2$"),
    "angle": ("angular_update", r"angular update $\Delta$ (rad/step)"),
}

_SUFFIXES = (".png", ".svg", ".pdf")


def _check_panel(panel: str) -> None:
    if panel not in PANELS:
        raise ValueError(f"panel must be one of {', '.join(PANELS)}, got {panel!r}")


@dataclass(frozen=True)
class HLine:
    """Horizontal line ``y`` on ``panel``, optionally only over ``[xmin, xmax]`` (steps)."""

    panel: str
    y: float
    label: str | None = None
    xmin: float | None = None
    xmax: float | None = None
    color: str = "C3"
    style: str = "--"

    def __post_init__(self) -> None:
        _check_panel(self.panel)


@dataclass(frozen=True)
class Band:
    """Shaded horizontal band ``lo <= y <= hi`` on ``panel`` (optionally over ``[xmin, xmax]``)."""

    panel: str
    lo: float
    hi: float
    label: str | None = None
    xmin: float | None = None
    xmax: float | None = None
    color: str = "C3"
    alpha: float = 0.15

    def __post_init__(self) -> None:
        _check_panel(self.panel)


@dataclass(frozen=True)
class Segment:
    """Line from ``(x0, y0)`` to ``x1`` with constant log-slope ``d ln y / dx = slope``.

    On a log y axis it is straight: the norm decay ``rho_0 (1 - lr wd)^(x - x0)``
    is ``Segment("rho", x0, rho_0, x1, log(1 - lr wd))``.
    """

    panel: str
    x0: float
    y0: float
    x1: float
    slope: float
    label: str | None = None
    color: str = "C2"
    style: str = "-"

    def __post_init__(self) -> None:
        _check_panel(self.panel)

    def points(self, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points along the segment (exponential in x)."""
        x = np.linspace(self.x0, self.x1, n)
        return x, self.y0 * np.exp(self.slope * (x - self.x0))


@dataclass(frozen=True)
class Marker:
    """Point markers at ``x`` (steps) and ``y`` on ``panel``."""

    panel: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    label: str | None = None
    color: str = "C1"
    marker: str = "o"


@dataclass(frozen=True)
class Curve:
    """A line through the points ``(x, y)`` on ``panel`` (e.g. an equilibrium ``rho*(t)``
    under a schedule); non-finite points are left out."""

    panel: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    label: str | None = None
    color: str = "C3"
    style: str = "--"

    def __post_init__(self) -> None:
        _check_panel(self.panel)
        if np.shape(self.x) != np.shape(self.y) or np.ndim(self.x) != 1:
            raise ValueError(
                f"Curve x and y must be 1-d of the same length, got shapes "
                f"{np.shape(self.x)} and {np.shape(self.y)}"
            )


Line = HLine | Band | Segment | Marker | Curve


def _positive(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 0 and bool(np.all(finite > 0))


@np.errstate(over="ignore", under="ignore")  # see save_figure
def plot_trajectory(
    traj: Trajectory,
    *,
    events: Events | None = None,
    lines: Sequence[Line] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    panels: Sequence[str] = ("loss", "rho", "elr", "angle"),
    xlog: bool = False,
    zoom: tuple[float, float] | None = None,
    max_points: int = 20000,
    xlabel: str = "optimizer step",
) -> Figure:
    """Draw the SI metrics of a trajectory with event markers and theory lines.

    Parameters
    ----------
    traj : Trajectory
        What to draw; columns used as they are (call ``traj.fill_derived()`` first
        to get ``elr`` from ``rho`` and ``meta["lr"]``).
    events : Events, optional
        Destabilizations from :func:`siflow.periods.find_events`: a dotted
        vertical line at each event step on every panel (only on the norm panel
        when there are more than 150), the norm peaks and the effective LR at each
        event marked.
    lines : sequence of HLine, Band, Segment, Marker, Curve, optional
        Theory overlays, each naming its panel. Overlays on a panel whose column
        is absent are not drawn.
    path : path-like, optional
        Where to save (``.png``, ``.svg`` or ``.pdf``), atomically.
    title : str, optional
        Figure title (default: ``meta["source"]`` when present).
    panels : sequence of str
        Panels to draw, from :data:`PANELS`, top to bottom.
    xlog : bool
        Log-scaled step axis (for logs saved at log-spaced steps).
    zoom : (float, float), optional
        Step range of a second column of panels showing the same content close up
        (e.g. the last few periods).
    max_points : int
        Longer trajectories are thinned for drawing with
        :meth:`Trajectory.downsample`, keeping all rows near events.
    xlabel : str
        Label of the time axis (``"epoch"`` for a log timed in epochs).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(f"traj must be a siflow Trajectory, got {type(traj).__name__}")
    if not panels:
        raise ValueError("panels must name at least one panel, e.g. ('rho', 'elr')")
    for p in panels:
        if p not in PANELS:
            raise ValueError(f"panels must be taken from {', '.join(PANELS)}, got {p!r}")
    if path is not None:
        _check_suffix(path)
    max_points = check_positive_int("max_points", max_points)
    if zoom is not None:
        if len(zoom) != 2 or not all(math.isfinite(float(z)) for z in zoom) or zoom[0] >= zoom[1]:
            raise ValueError(f"zoom must be (start, stop) steps with start < stop, got {zoom!r}")
    if lines is not None and not isinstance(lines, Iterable):
        raise ValueError(
            f"lines must be a list of HLine, Band, Segment, Marker or Curve objects, got "
            f"{type(lines).__name__}; pass e.g. lines=[HLine('rho', 1.0)]"
        )
    lines = list(lines or [])
    for ln in lines:
        if not isinstance(ln, (HLine, Band, Segment, Marker, Curve)):
            raise ValueError(
                f"lines must hold HLine, Band, Segment, Marker or Curve objects, got "
                f"{type(ln).__name__}"
            )

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    full = traj
    if len(traj) > max_points:
        ev = np.asarray(events.steps if events is not None else [], dtype=np.int64)
        span = float(traj.step[-1] - traj.step[0])
        window = int(span / max_points * 20)
        traj = traj.downsample(max_points, keep_steps=ev, window=window)

    n = len(panels)
    ncols = 2 if zoom is not None else 1
    fig = Figure(figsize=(10.0 if ncols == 1 else 13.0, 1.2 + 2.0 * n), layout="constrained")
    grid = fig.subplots(
        n,
        ncols,
        sharex="col",
        squeeze=False,
        gridspec_kw={"width_ratios": [2.2, 1.0]} if ncols == 2 else None,
    )
    x_range = (float(traj.step[0]), float(traj.step[-1])) if len(traj) else (0.0, 1.0)
    for i, panel in enumerate(panels):
        _draw_panel(grid[i, 0], panel, traj, events, lines, x_range, first=(i == 0))
        grid[i, 0].set_ylabel(PANELS[panel][1])
        if zoom is not None:
            part = full.between(int(math.floor(zoom[0])), int(math.ceil(zoom[1])) + 1)
            if len(part) > max_points:
                part = part.downsample(max_points)
            _draw_panel(grid[i, 1], panel, part, events, lines, x_range, first=False)
            grid[i, 1].set_xlim(zoom[0], zoom[1])
    legend_col = grid[:, -1]
    for i in range(n):
        handles: list[Any] = []
        labels: list[str] = []
        for ax in grid[i, :]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if labels:
            legend_col[i].legend(
                handles,
                labels,
                fontsize="small",
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                borderaxespad=0.0,
                frameon=False,
            )
    if xlog:
        grid[-1, 0].set_xscale("log")
    grid[-1, 0].set_xlabel(xlabel)
    if zoom is not None:
        grid[-1, 1].set_xlabel(f"{xlabel} (close-up)")
    head = title if title is not None else traj.meta.get("source")
    if head:
        fig.suptitle(str(head))
    if path is not None:
        save_figure(fig, path)
    return fig


def _g_formatter(value: float, _pos: int) -> str:
    return f"{value:g}"


def _draw_panel(
    ax: Any,
    panel: str,
    traj: Trajectory,
    events: Events | None,
    lines: Sequence[Line],
    x_range: tuple[float, float],
    first: bool,
) -> None:
    """Draw one panel: data, event markers and overlays (labels set once per axes)."""
    from matplotlib.ticker import FuncFormatter

    column = PANELS[panel][0]
    ax.grid(True, which="major", alpha=0.3)
    values = traj.column(column) if traj.has(column) else None
    if values is None or not np.any(np.isfinite(values)):
        ax.text(
            0.5,
            0.5,
            f"{column}: not in log",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
        ax.set_yticks([])
        return
    step = traj.step.astype(np.float64)
    ok = np.isfinite(values)
    ax.plot(step[ok], values[ok], color="C0", lw=0.9, label="measured")
    finite = values[ok]
    positive = finite[finite > 0]
    log_y = bool(positive.size >= 0.9 * finite.size and positive.size)
    if log_y:
        ax.set_yscale("log")
    if events is not None and len(events):
        lo_s, hi_s = float(step[0]), float(step[-1])
        in_view = (events.steps >= lo_s) & (events.steps <= hi_s)
        if panel == "rho":
            sel = in_view & np.isfinite(events.rho_after)
            if np.any(sel):
                ax.plot(
                    events.peak_steps[sel],
                    events.rho_after[sel],
                    "v",
                    color="C1",
                    ms=4,
                    label="peak after jump",
                )
        if panel == "elr":
            sel = in_view & np.isfinite(events.elr_before)
            if np.any(sel):
                ax.plot(
                    events.steps[sel],
                    events.elr_before[sel],
                    "^",
                    color="C1",
                    ms=4,
                    label=r"$\tilde\eta$ at destabilization",
                )
        ev_steps = events.steps[in_view]
        if ev_steps.size and (ev_steps.size <= 150 or panel == "rho"):
            # one collection for all events: a line artist per event costs ~25 kB each
            ax.vlines(
                ev_steps.astype(np.float64),
                0.0,
                1.0,
                transform=ax.get_xaxis_transform(),
                colors="0.5",
                lw=0.6,
                linestyles=":",
                label="destabilization" if first else None,
            )
    for ln in lines:
        if ln.panel != panel:
            continue
        if isinstance(ln, HLine):
            if not math.isfinite(ln.y):
                continue
            a = x_range[0] if ln.xmin is None else ln.xmin
            b = x_range[1] if ln.xmax is None else ln.xmax
            ax.plot([a, b], [ln.y, ln.y], ls=ln.style, color=ln.color, lw=1.4, label=ln.label)
        elif isinstance(ln, Band):
            if not (math.isfinite(ln.lo) and math.isfinite(ln.hi)):
                continue
            a = x_range[0] if ln.xmin is None else ln.xmin
            b = x_range[1] if ln.xmax is None else ln.xmax
            ax.fill_between(
                [a, b], ln.lo, ln.hi, color=ln.color, alpha=ln.alpha, label=ln.label, lw=0
            )
        elif isinstance(ln, Segment):
            xs, ys = ln.points()
            ax.plot(xs, ys, ls=ln.style, color=ln.color, lw=1.4, label=ln.label)
        elif isinstance(ln, Curve):
            xs, ys = np.asarray(ln.x, dtype=float), np.asarray(ln.y, dtype=float)
            ok = np.isfinite(xs) & np.isfinite(ys)
            ax.plot(xs[ok], ys[ok], ls=ln.style, color=ln.color, lw=1.4, label=ln.label)
        else:
            ax.plot(
                np.asarray(ln.x, dtype=float),
                np.asarray(ln.y, dtype=float),
                ln.marker,
                color=ln.color,
                ms=5,
                ls="none",
                label=ln.label,
            )
    if log_y:
        lo, hi = ax.get_ylim()
        if lo > 0 and hi / lo < 3.0:
            # under half a decade: plain numbers on every tick instead of 2x10^-1
            ax.yaxis.set_major_formatter(FuncFormatter(_g_formatter))
            ax.yaxis.set_minor_formatter(FuncFormatter(_g_formatter))
            ax.tick_params(axis="y", which="minor", labelsize="small")


def _check_suffix(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(
            f"figure path must be a file name ending in {', '.join(_SUFFIXES)}, got {path!r}"
        )
    p = Path(path)
    if p.suffix.lower() not in _SUFFIXES:
        raise ValueError(
            f"figure path {str(p)!r} must end in {', '.join(_SUFFIXES)} (the format is chosen "
            f"by the suffix)"
        )
    return p


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 130) -> Path:
    """Save ``fig`` as PNG, SVG or PDF (by suffix), atomically; return the path."""
    p = _check_suffix(path)
    with atomic_path(p) as tmp:
        # log axes spanning a huge range (an underflowing run's effective LR) make
        # matplotlib's transforms overflow harmlessly; do not print that to the user
        with np.errstate(over="ignore", under="ignore"):
            fig.savefig(tmp, dpi=dpi, format=p.suffix.lower()[1:])
    return p


# ------------------------------------------------------------ phase diagram
__all__ += ["phase_diagram"]

#: Colours of the sweep regimes (``siflow.sweep.REGIMES``) and of cells not run.
_REGIME_COLORS = {
    "converged": "#4c72b0",
    "equilibrium": "#55a868",
    "periodic": "#dd8452",
    "diverged": "#c44e52",
}
_NOT_RUN = "#eeeeee"


def _regime_codes(regimes: np.ndarray, order: Sequence[str]) -> np.ndarray:
    rank = {name: k for k, name in enumerate(order)}
    return np.array([[rank.get(g, len(order)) for g in row] for row in regimes], dtype=float)


def _annotate_periods(ax: Any, data: Any, panel: Any) -> None:
    for i, w in enumerate(data.wd):
        for j, lr in enumerate(data.lr):
            if panel.regimes[i, j] == "periodic" and np.isfinite(panel.period[i, j]):
                ax.text(lr, w, f"{panel.period[i, j]:.0f}", ha="center", va="center",
                        fontsize=6.5, color="black")  # fmt: skip


def _draw_lr_wd_lines(ax: Any, data: Any, xs: np.ndarray) -> None:
    lr_e, wd_e = data.lr_edges, data.wd_edges
    for c in data.lr_wd_lines:
        ax.plot(xs, c / xs, ls=":", color="0.35", lw=0.8)
        # label at the left edge, or at the bottom edge for lines that leave there
        x_lab = max(lr_e[0], c / wd_e[-1]) * 1.06
        if lr_e[0] < x_lab < lr_e[-1] and wd_e[0] < c / x_lab <= wd_e[-1]:
            ax.text(x_lab, c / x_lab / 1.04, f"ηλ={c:g}", fontsize=6.5, color="0.2",
                    ha="left", va="top")  # fmt: skip


def _draw_phase_panel(ax: Any, data: Any, panel: Any, annotate: bool) -> None:
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([_REGIME_COLORS[r] for r in data.regimes] + [_NOT_RUN])
    codes = _regime_codes(panel.regimes, data.regimes)
    ax.pcolormesh(data.lr_edges, data.wd_edges, codes, cmap=cmap, vmin=-0.5,
                  vmax=len(data.regimes) + 0.5)  # fmt: skip
    if annotate and data.lr.size * data.wd.size <= 144:
        _annotate_periods(ax, data, panel)
    xs = data.fine_lr
    _draw_lr_wd_lines(ax, data, xs)
    if panel.decay_end is not None:
        ax.contour(data.fine_lr, data.fine_wd, panel.decay_end, levels=[data.steps],
                   colors="black", linewidths=1.6)  # fmt: skip
    if panel.instability_model is not None:
        ax.plot(xs, panel.instability_model / xs, ls="-.", color="0.15", lw=1.0)
    if panel.instability_measured is not None:
        ax.plot(xs, panel.instability_measured / xs, ls="--", color="black", lw=1.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(data.lr_edges[0], data.lr_edges[-1])
    ax.set_ylim(data.wd_edges[0], data.wd_edges[-1])
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("weight decay λ")
    mom = panel.momentum
    ax.set_title(f"momentum μ = {mom:g}" if mom else "SGD (μ = 0)", fontsize=10)


def _phase_legend(data: Any) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=_REGIME_COLORS[r], label=r) for r in data.regimes]
    if data.has_missing:
        handles.append(Patch(color=_NOT_RUN, label="not run"))
    handles.append(Line2D([], [], ls=":", color="0.35", label="constant ηλ"))
    if data.sharpness is not None:
        label = (f"weight-decay phase from ρ₀={data.rho0:g}\nends at step {data.steps} "
                 f"(S={data.sharpness:g})")  # fmt: skip
        handles.append(Line2D([], [], color="black", lw=1.6, label=label))
    if any(p.instability_measured is not None for p in data.panels):
        label = "equilibrium ELR = threshold,\nG = measured rms g~ of the\nequilibrium cells"
        handles.append(Line2D([], [], ls="--", color="black", lw=1.6, label=label))
    if data.grad_norm is not None and data.sharpness is not None:
        what = f"{data.grad_norm_label} = " if data.grad_norm_label else ""
        label = f"same, G = {what}{data.grad_norm:.3g}"
        handles.append(Line2D([], [], ls="-.", color="0.15", lw=1.0, label=label))
    return handles


def phase_diagram(
    data: Any, path: str | os.PathLike[str] | None = None, *, annotate: bool = True
) -> Figure:
    """Draw a sweep's phase diagram, one panel per momentum value.

    ``data`` is a :class:`siflow.sweep.PhaseDiagramData` (from
    :func:`siflow.sweep.phase_diagram_data`), which holds every number drawn.
    Cells are coloured by regime (majority over seeds); periodic cells show their
    median period ``T`` in steps (``annotate``, grids of at most 144 cells).
    Lines:

    - solid: where the initial weight-decay phase ends at the last step,
      :func:`siflow.theory.decay_end_step` ``= steps``; below/left of it runs are
      still decaying ("converged");
    - dashed: ``lr*wd =`` :func:`siflow.theory.equilibrium_instability_lr_wd`, above
      which the equilibrium is unstable, with ``G`` the measured rms sphere
      gradient norm of the panel's equilibrium cells;
    - dash-dotted: the same with the model ``G`` (isotropic noise ``sigma``:
      ``G = sigma sqrt(dim - 1)``, docs/theory.md section 6);
    - dotted: lines of constant ``lr*wd``, along which only the initial effective
      LR changes (docs/theory.md section 0).

    Returns the figure; writes it (PNG/SVG/PDF by suffix, atomically) when
    ``path`` is given.
    """
    import matplotlib

    if path is not None:
        _check_suffix(path)
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(data.panels)
    fig, axes = plt.subplots(
        1, n, figsize=(4.6 * n + 2.4, 4.4), squeeze=False, constrained_layout=True
    )
    for k, panel in enumerate(data.panels):
        _draw_phase_panel(axes[0, k], data, panel, annotate)
    fig.legend(handles=_phase_legend(data), loc="outside right center", fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(data.title, fontsize=10)
    if path is not None:
        save_figure(fig, path, dpi=150)
    return fig
