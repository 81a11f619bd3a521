"""Phase diagram of the default toy: regimes of SGD + WD over (lr, wd), with theory lines.

Two resumable sweeps of :mod:`siflow.sweep`, momentum 0 and 0.9, 3 seeds each, drawn
into ``runs/phase_diagram/`` (``--out DIR``; ``--update-figures`` rewrites the README's
``figures/``):

- ``phase_diagram.png``: the default toy of ``python -m siflow.simulate``,
  SI logistic regression (``logistic``: dim 10, 100 separable points, temperature
  10, data seed 0, full batch, sphere sharpness at the minimum ``S = 3.545``),
  lr 1e-3..3 x wd 1e-5..0.3 (half-decade log grids, 8 x 10), 100000 steps;
- ``phase_diagram_noisy.png``: the Rayleigh quotient (``rayleigh``, dim 10,
  ``S = 1``) with isotropic gradient noise ``sigma = 0.01``, lr 1e-2..1 x wd
  1e-4..0.1 (9 x 7), 20000 steps. The noiseless logistic toy has no noise-driven
  equilibrium; this one does, and shows the line where that equilibrium becomes
  unstable (docs/theory.md sections 2 and 6).

Cells are coloured by regime (:func:`siflow.periods.classify`, majority over seeds);
numbers are the median period in steps of each periodic cell; hatched periodic
cells showed fewer than 3 full periods (median over seeds): too short to tell.
Theory overlaid (docs/theory.md):

- dotted: constant ``lr*wd`` (section 0: along them only the initial effective LR
  changes);
- solid black: the initial weight-decay phase from ``rho0 = 1`` ends at the last
  step (:func:`siflow.sweep.decay_end_step`; left/below: still decaying, "converged");
- solid purple: the starting point is already unstable, ``lr/rho0^2 =``
  :func:`siflow.theory.stability_threshold_elr` ``= 2 (1 + mu - lr wd)/S`` (section 2;
  :func:`start_threshold_lr`); right of it the run starts with a destabilization and
  the solid black line (which assumes a quiet decay from ``rho0``) does not apply;
- white dashed: the period scale, ``3/(lr wd) = steps`` (section 2: the period is
  ``~ ln(rho_max^2/rho_crit^2)/(2 lr wd)``), below which fewer than about three
  periods fit in the run;
- (noisy Rayleigh) dashed / dash-dotted: the noise-driven equilibrium becomes unstable
  (:func:`siflow.sweep.equilibrium_instability_lr_wd`, measured and model ``G``).

The script also prints, per panel, the periods grouped by ``lr*wd``, the effective LR just
before the destabilizations against the threshold, how many cells fall on the side of the
decay-end line it predicts, and (:func:`period_check`) the period model
``T = ln(rho_after/rho_before)/(-ln q)`` against the measured period on the default toy.
Periods of the cycles are sensitive to round-off (each destabilization amplifies it):
a change of the kernels' floating-point order moves them by ~1-2%.

Usage (from the repository root; about 40 s on 2 idle cores from a cold numba cache,
70 s of CPU time, 7.5 s of it the serial compilation before the cells run in parallel:
see analysis/BENCHMARKS.md)::

    python analysis/phase_diagram.py            # both figures, prints the measured numbers
    python analysis/phase_diagram.py --quick    # small grids, 1 seed: a smoke test

Cells are stored under ``runs/phase_diagram_*`` (``--runs`` to move them), so an
interrupted run resumes and a second run only redraws.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

ROOT = Path(__file__).resolve().parents[1]

#: Fewer full periods than this (median over seeds) marks a periodic cell "too short to tell".
MIN_PERIODS = 3


def _toys(quick: bool) -> list[dict[str, Any]]:
    """The two sweeps: name, figure suffix, sweep arguments."""
    from siflow import sweep as S

    if quick:
        return [
            dict(name="logistic", suffix="_quick", loss="logistic",
                 lr=S.log_grid(1e-2, 1, 4), wd=S.log_grid(1e-4, 1e-1, 3), seeds=(0,),
                 steps=20_000, options={}),
            dict(name="rayleigh_noisy", suffix="_noisy_quick", loss="rayleigh",
                 lr=S.log_grid(1e-2, 1, 4), wd=S.log_grid(1e-4, 1e-1, 3), seeds=(0,),
                 steps=5000, options={"noise": 0.01}),
        ]  # fmt: skip
    return [
        dict(name="logistic", suffix="", loss="logistic",
             lr=S.log_grid(1e-3, 3, 8), wd=S.log_grid(1e-5, 0.3, 10), seeds=(0, 1, 2),
             steps=100_000, options={}),
        dict(name="rayleigh_noisy", suffix="_noisy", loss="rayleigh",
             lr=S.log_grid(1e-2, 1, 9), wd=S.log_grid(1e-4, 1e-1, 7), seeds=(0, 1, 2),
             steps=20_000, options={"noise": 0.01}),
    ]  # fmt: skip


# ------------------------------------------------------------------ theory lines
def start_threshold_lr(
    wd: ArrayLike, sharpness: float, momentum: float = 0.0, rho0: float = 1.0
) -> NDArray[np.float64]:
    """Learning rate at which a run started at norm ``rho0`` sits on the stability threshold.

    The starting effective LR is ``lr/rho0^2``; the minimum of sphere sharpness ``S``
    is unstable when it exceeds :func:`siflow.theory.stability_threshold_elr`
    ``2 (1 + mu - lr wd)/S`` (exact for the linearised direction map for SGD,
    quasi-static with heavy-ball momentum; docs/theory.md section 2). Solving
    ``lr/rho0^2 = 2 (1 + mu - lr wd)/S`` for ``lr``::

        lr = 2 (1 + mu) rho0^2 / (S + 2 wd rho0^2)

    Runs with a larger ``lr`` start with a destabilization (their first norm jump is
    not predicted by the theory); those with a smaller one first decay quietly for
    :func:`siflow.sweep.decay_end_step` steps.
    """
    from siflow._validate import check_momentum, check_nonnegative, check_positive

    w = check_nonnegative("wd", wd)
    s = float(check_positive("sharpness", sharpness))
    mu = float(check_momentum(momentum))
    r2 = float(check_positive("rho0", rho0)) ** 2
    return 2.0 * (1.0 + mu) * r2 / (s + 2.0 * w * r2)


def _cell_edges(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cell edges of a log grid (the same as :func:`siflow.sweep.phase_diagram` draws)."""
    if v.size == 1:
        return np.array([v[0] / 1.5, v[0] * 1.5])
    lv = np.log10(v)
    mid = (lv[1:] + lv[:-1]) / 2
    return 10 ** np.concatenate([[2 * lv[0] - mid[0]], mid, [2 * lv[-1] - mid[-1]]])


def short_cells(result: Any, momentum: float) -> NDArray[np.bool_]:
    """Periodic cells (majority) whose median number of full periods is below ``MIN_PERIODS``.

    ``n_events`` destabilizations bound ``n_events - 1`` full periods.
    """
    regimes = result.regime_grid(momentum)
    n_events = result.value_grid("n_events", momentum)
    with np.errstate(invalid="ignore"):
        return (regimes == "periodic") & (n_events - 1 < MIN_PERIODS)


# ---------------------------------------------------------------------- figure
def draw(result: Any, path: Path, title: str) -> None:
    """:func:`siflow.sweep.phase_diagram` plus the start threshold, period scale and hatching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    from siflow import sweep as S
    from siflow._fileio import atomic_path
    from siflow.losses import make_loss

    cfg = result.config
    toy = make_loss(cfg.loss, dim=cfg.options.get("dim"))
    sharp = float(toy.sharpness_min)
    lr_e, wd_e = _cell_edges(np.asarray(cfg.lr)), _cell_edges(np.asarray(cfg.wd))
    lo, hi = math.ceil(math.log10(lr_e[0] * wd_e[0])), math.floor(math.log10(lr_e[-1] * wd_e[-1]))
    lines = [10.0**k for k in range(max(lo, -6), hi + 1)]
    shown = result
    if not cfg.options.get("noise"):
        # Without gradient noise an "equilibrium" cell is a chaotic or 2-cycle state, not the
        # noise-driven equilibrium whose instability line phase_diagram draws from the
        # measured rms gradient: hide that line.
        rows = [dict(r, grad_norm_rms=math.nan) for r in result.rows]
        shown = S.SweepResult(cfg, rows, result.out)
    fig = S.phase_diagram(shown, None, title=title, sharpness=sharp, lr_wd_lines=lines)
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    wd_fine = np.geomspace(wd_e[0], wd_e[-1], 200)
    lr_fine = np.geomspace(lr_e[0], lr_e[-1], 200)
    grid_lr, grid_wd = np.meshgrid(lr_fine, wd_fine)
    valid = grid_lr * grid_wd < 1
    scale = MIN_PERIODS / cfg.steps
    halo = [patheffects.withStroke(linewidth=3.2, foreground="0.15")]
    drew_thr = drew_scale = drew_short = False
    old = fig.legends[0]
    handles = list(old.legend_handles)
    labels = [t.get_text() for t in old.get_texts()]
    labels = ["constant ηλ (value at the edge)" if x == "constant ηλ" else x for x in labels]
    old.remove()
    periodic_color = handles[labels.index("periodic")].get_facecolor()
    for ax, mom in zip(panels, cfg.momentum, strict=True):
        for t in ax.texts:  # the period numbers: keep them legible over the lines
            if t.get_text().isdigit():
                t.set_bbox(dict(facecolor=periodic_color, edgecolor="none", pad=0.6))
                t.set_zorder(5)
        numbered = (result.regime_grid(mom) == "periodic") & np.isfinite(
            result.value_grid("period", mom)
        )
        _relabel_lr_wd_lines(ax, lines, lr_e, wd_e, numbered)
        if not np.all(valid):
            # phase_diagram leaves out the decay-end line when part of the plane has
            # lr*wd >= 1; draw it over the valid part
            t_end = np.full(grid_lr.shape, np.nan)
            t_end[valid] = S.decay_end_step(grid_lr[valid], grid_wd[valid], sharp, 1.0, mom)
            if np.nanmin(t_end) < cfg.steps < np.nanmax(t_end):
                ax.contour(grid_lr, grid_wd, t_end, levels=[cfg.steps], colors="black",
                           linewidths=1.6)  # fmt: skip
        thr = start_threshold_lr(wd_fine, sharp, mom)
        if np.any((thr > lr_e[0]) & (thr < lr_e[-1])):
            ax.plot(thr, wd_fine, color="#6a2c91", lw=1.8)
            drew_thr = True
        if lr_e[0] * wd_e[0] < scale < lr_e[-1] * wd_e[-1]:
            ax.plot(lr_fine, scale / lr_fine, color="white", ls="--", lw=1.6, path_effects=halo)
            drew_scale = True
        short = short_cells(result, mom)
        for i, j in zip(*np.nonzero(short), strict=True):
            ax.add_patch(
                Rectangle(
                    (lr_e[j], wd_e[i]),
                    lr_e[j + 1] - lr_e[j],
                    wd_e[i + 1] - wd_e[i],
                    fill=False,
                    hatch="////",
                    edgecolor="0.25",
                    lw=0,
                )  # fmt: skip
            )
            drew_short = True
        ax.set_xlim(lr_e[0], lr_e[-1])
        ax.set_ylim(wd_e[0], wd_e[-1])
    extra: list[tuple[Any, str]] = []
    if drew_short:
        extra.append(
            (Patch(facecolor="#dd8452", hatch="////", edgecolor="0.25", lw=0),
             f"periodic, < {MIN_PERIODS} periods seen\n(too short to tell)")
        )  # fmt: skip
    if drew_thr:
        extra.append(
            (Line2D([], [], color="#6a2c91", lw=1.8),
             f"start already unstable:\nη/ρ₀² = 2(1+μ−ηλ)/S (S={sharp:g})")
        )  # fmt: skip
    if drew_scale:
        extra.append(
            (Line2D([], [], color="white", ls="--", lw=1.6, path_effects=halo),
             f"period scale: {MIN_PERIODS}/(ηλ) = {cfg.steps} steps")
        )  # fmt: skip
    # keep regime patches first, then the hatch, then the lines
    n_patch = sum(isinstance(h, Patch) for h in handles)
    handles = handles[:n_patch] + [h for h, _ in extra[:1] if drew_short] + handles[n_patch:]
    labels = labels[:n_patch] + [lab for _, lab in extra[:1] if drew_short] + labels[n_patch:]
    for h, lab in extra[1 if drew_short else 0 :]:
        handles.append(h)
        labels.append(lab)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def _relabel_lr_wd_lines(
    ax: Any, lines: list[float], lr_e: NDArray, wd_e: NDArray, numbered: NDArray[np.bool_]
) -> None:
    """Move the constant-``lr*wd`` labels off the numbered cells.

    A label goes above the top edge or right of the right edge where its line crosses
    it; a line that crosses neither (it leaves through the bottom) is labelled inside at
    the left edge, unless one of the two cells the label would cover holds a number.
    """
    for t in list(ax.texts):
        if t.get_text().startswith("ηλ="):
            t.remove()
    for c in lines:
        kw = dict(fontsize=6.5, color="0.25", clip_on=False)
        if lr_e[0] < c / wd_e[-1] < lr_e[-1]:
            ax.text(c / wd_e[-1], wd_e[-1] * 1.03, f"{c:g}", ha="center", va="bottom", **kw)
        elif wd_e[0] < c / lr_e[-1] < wd_e[-1]:
            ax.text(lr_e[-1] * 1.04, c / lr_e[-1], f"{c:g}", ha="left", va="center", **kw)
        elif wd_e[0] < c / lr_e[0] < wd_e[-1]:
            x, y = lr_e[0] * 1.08, c / (lr_e[0] * 1.08) / 1.05
            i = min(max(int(np.searchsorted(wd_e, y)) - 1, 0), numbered.shape[0] - 1)
            if not np.any(numbered[i, :2]):
                ax.text(x, y, f"ηλ={c:g}", ha="left", va="top", **kw)
    ax.set_title(ax.get_title(), fontsize=10, pad=11)


def _title(spec: dict[str, Any], toy: Any) -> str:
    cfg_seeds = len(spec["seeds"])
    seeds = f"{cfg_seeds} seed{'s' if cfg_seeds > 1 else ''}"
    if spec["loss"] == "logistic":
        o = toy.options
        what = (
            f"default toy: SI logistic regression (dim {toy.dim}, {o['n_samples']} points, "
            f"temperature {o['temperature']:g}, full batch)"
        )
    else:
        what = f"Rayleigh quotient (dim {toy.dim}, S = {toy.sharpness_min:g}), noise σ = " + (
            f"{spec['options']['noise']:g}"
        )
    return (
        f"SGD + WD on the {what}\n{spec['steps']} steps, {seeds}; numbers: median period T in steps"
    )


# --------------------------------------------------------------------- summary
def summarize(result: Any) -> list[str]:
    """Lines of measured numbers: regime counts, periods vs lr*wd, threshold, decay line."""
    from siflow import sweep as S
    from siflow.losses import make_loss

    cfg = result.config
    toy = make_loss(cfg.loss, dim=cfg.options.get("dim"))
    sharp = float(toy.sharpness_min)
    out = []
    for mom in cfg.momentum:
        grid = result.regime_grid(mom)
        counts = {r: int(np.sum(grid == r)) for r in S.REGIMES}
        out.append(
            f"momentum {mom:g}: cells " + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f", too short {int(np.sum(short_cells(result, mom)))}"
        )  # fmt: skip
        lr = np.asarray(cfg.lr)[None, :]
        wd = np.asarray(cfg.wd)[:, None]
        x = lr * wd
        period = result.value_grid("period", mom)
        ok = (grid == "periodic") & ~short_cells(result, mom) & np.isfinite(period)
        by_x: dict[float, list[float]] = defaultdict(list)
        for i, j in zip(*np.nonzero(ok), strict=True):
            # cells on one diagonal of a log grid share lr*wd up to round-off
            by_x[10 ** round(math.log10(x[i, j]), 1)].append(float(period[i, j]))
        for xv in sorted(by_x):
            ts = np.asarray(by_x[xv])
            out.append(
                f"  lr*wd {xv:<8.2g} periodic cells {ts.size:2d}: median T {np.median(ts):8.1f} "
                f"(range {ts.min():.0f}-{ts.max():.0f}), T*lr*wd {np.median(ts) * xv:.3g}"
            )
        if cfg.options.get("noise"):
            g_eq = [
                r["grad_norm_rms"]
                for r in result.rows
                if r["momentum"] == mom
                and r["regime"] == "equilibrium"
                and grid[cfg.wd.index(r["wd"]), cfg.lr.index(r["lr"])] == "equilibrium"
                and math.isfinite(r["grad_norm_rms"])
            ]
            g_model = float(cfg.options["noise"]) * math.sqrt(toy.dim - 1)
            x_model = S.equilibrium_instability_lr_wd(g_model, sharp, mom)
            parts = [f"model G = {g_model:.3g}: lr*wd* = {x_model:.3g}"]
            if g_eq:
                g_med = float(np.median(g_eq))
                x_meas = S.equilibrium_instability_lr_wd(g_med, sharp, mom)
                parts.insert(0, f"measured G = {g_med:.3g}: lr*wd* = {x_meas:.3g}")
            out.append("  equilibrium unstable above " + "; ".join(parts))
            per = x[(grid == "periodic") & ~short_cells(result, mom)]
            if per.size:
                out.append(
                    f"  periodic cells (>= {MIN_PERIODS} periods) from lr*wd {per.min():.2g}"
                )
        for regime in ("equilibrium", "diverged"):
            sel = grid == regime
            if np.any(sel):
                out.append(
                    f"  {regime}: lr*wd from {x[sel].min():.2g} to {x[sel].max():.2g} "
                    f"({int(sel.sum())} cells)"
                )
        # effective LR just before the destabilizations vs the threshold 2(1+mu-lr wd)/S
        ratios = []
        for r in result.rows:
            if r["momentum"] == mom and r["regime"] == "periodic" and r["n_events"] > MIN_PERIODS:
                thr = 2.0 * (1.0 + mom - r["lr"] * r["wd"]) / sharp
                if math.isfinite(r["elr_at_events"]):
                    ratios.append((r["lr_wd"], r["elr_at_events"] / thr))
        if ratios:
            arr = np.array(ratios)
            for name, sel in (
                ("lr*wd <= 1e-3", arr[:, 0] <= 1.0001e-3),
                ("lr*wd > 1e-3", arr[:, 0] > 1.0001e-3),
            ):
                if np.any(sel):
                    q = np.percentile(arr[sel, 1], [10, 50, 90])
                    out.append(
                        f"  ELR before events / threshold ({name}, {int(sel.sum())} runs): "
                        f"median {q[1]:.3f} (10-90%: {q[0]:.3f}-{q[2]:.3f})"
                    )
        # the decay-end line: cells left of the start threshold, predicted vs measured
        t_end = S.decay_end_step(lr, wd, sharp, 1.0, mom)
        left = lr < start_threshold_lr(wd, sharp, mom)
        left = np.broadcast_to(left, grid.shape)
        pred_conv = t_end > cfg.steps
        meas_conv = grid == "converged"
        n = int(left.sum())
        agree = int(np.sum(left & (pred_conv == meas_conv)))
        out.append(
            f"  decay-end line: {agree} of {n} cells left of the start threshold on the "
            f"predicted side (converged iff t_end > {cfg.steps})"
        )
        right_conv = int(np.sum(~left & meas_conv))
        out.append(f"  cells right of the start threshold still decaying: {right_conv}")
    return out


def _period_line(lr: float, x: float, steps: int, mom: float) -> str:
    """One line of :func:`period_check`: a run at ``lr``, ``wd = x/lr``, momentum ``mom``."""
    from siflow import periods, theory
    from siflow.simulate import simulate

    traj = simulate("logistic", lr=lr, wd=x / lr, steps=steps, seed=0, momentum=mom)
    ev = periods.find_events(traj)
    if len(ev) < MIN_PERIODS + 1:
        return f"  momentum {mom:g}, lr*wd {x:.0e}: {len(ev)} events, too few"
    ratio = float(np.median(ev.rho_after / ev.rho_before))
    pred = float(theory.period_from_norm_ratio(lr, x / lr, ratio, 0.0, mom))
    t = float(ev.period_median)
    return (
        f"  momentum {mom:g}, lr*wd {x:.0e}: jump rho_after/rho_before {ratio:6.3f}, "
        f"T {t:7.0f}, predicted {pred:7.0f} ({100 * (pred / t - 1):+.1f}%), "
        f"T*lr*wd {t * x:.3f}"
    )


def period_check(
    lr_wd: list[float], steps: int, lr: float = 0.3, workers: int | None = None
) -> list[str]:
    """The period model on the default toy: measured period vs the measured norm jump.

    For each ``lr*wd`` (at ``lr = 0.3``, seed 0, momentum 0 and 0.9) one run of ``steps``
    steps; the median norm ratio across a destabilization ``rho_after/rho_before``
    (:class:`siflow.periods.Events`) gives the predicted period
    :func:`siflow.theory.period_from_norm_ratio` ``= ln(ratio)/(-ln q)`` (docs/theory.md
    section 2, exact for the decay phase given the ratio; ``q`` the zero-gradient decay
    factor, ``1 - lr wd`` for SGD, ``~1 - lr wd/(1 - mu)`` with momentum). The runs are
    independent: with ``workers > 1`` they run in forked processes (which inherit the
    compiled kernels), the lines in the same order.
    """
    out = [
        f"period model at lr = {lr:g} ({steps} steps): "
        f"T measured vs ln(rho_after/rho_before)/(-ln q)"
    ]
    jobs = [(lr, x, steps, mom) for mom in (0.0, 0.9) for x in lr_wd]
    if workers is None:
        affinity = getattr(os, "sched_getaffinity", None)
        workers = len(affinity(0)) if affinity else os.cpu_count() or 1
    n_proc = min(workers, len(jobs))
    if n_proc > 1 and "fork" in mp.get_all_start_methods():
        with cf.ProcessPoolExecutor(n_proc, mp_context=mp.get_context("fork")) as pool:
            out.extend(pool.map(_period_line, *zip(*jobs, strict=True)))
    else:
        out.extend(_period_line(*job) for job in jobs)
    return out


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    from siflow import sweep as S
    from siflow._cli import ArgumentParser, run_main
    from siflow.losses import make_loss

    def body(args_in: list[str] | None) -> int:
        p = ArgumentParser(prog="analysis/phase_diagram.py", description=__doc__.split("\n")[0])
        p.add_argument("--quick", action="store_true", help="small grids, 1 seed: a smoke test")
        p.add_argument("--workers", type=int, default=None, help="local processes (default: all)")
        p.add_argument(
            "--out",
            default=None,
            help="figure directory (default runs/phase_diagram/ of the checkout)",
        )
        p.add_argument(
            "--update-figures",
            action="store_true",
            help="write the committed README figures in figures/ instead",
        )
        p.add_argument("--runs", default=str(ROOT / "runs"), help="directory of the sweep cells")
        p.add_argument(
            "--only", choices=("logistic", "rayleigh_noisy"), default=None,
            help="run one of the two sweeps",
        )  # fmt: skip
        args = p.parse_args(args_in)
        from siflow._fileio import ensure_dir

        if args.out is not None and args.update_figures:
            raise ValueError("--out and --update-figures are exclusive: pick one destination")
        default = ROOT / ("figures" if args.update_figures else "runs/phase_diagram")
        out_dir = ensure_dir(args.out or default)
        for spec in _toys(args.quick):
            if args.only and spec["name"] != args.only:
                continue
            runs = Path(args.runs) / f"phase_diagram_{spec['name']}{'_quick' * args.quick}"
            res = S.sweep(
                spec["loss"], lr=spec["lr"], wd=spec["wd"], momentum=(0.0, 0.9),
                seeds=spec["seeds"], steps=spec["steps"], out=runs, workers=args.workers,
                batch=4, **spec["options"],
            )  # fmt: skip
            toy = make_loss(spec["loss"])
            fig_path = out_dir / f"phase_diagram{spec['suffix']}.png"
            draw(res, fig_path, _title(spec, toy))
            print(f"{fig_path}: {len(res.rows)} runs ({spec['name']})")
            for line in summarize(res):
                print(line)
        if args.only in (None, "logistic"):
            if args.quick:
                lines = period_check([1e-3, 1e-2], 20_000, workers=args.workers)
            else:
                lines = period_check(
                    [2e-5, 3e-5, 4e-5, 5e-5, 1e-4, 1e-3, 1e-2], 200_000, workers=args.workers
                )
            print("\n".join(lines))
        return 0

    return run_main(body, argv, prog="analysis/phase_diagram.py")


if __name__ == "__main__":
    sys.exit(main())
