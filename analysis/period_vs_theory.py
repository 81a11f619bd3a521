"""Measured vs predicted period of the periodic behavior on the toy losses.

For each toy (Rayleigh quotient and SI logistic regression, with a small isotropic
noise floor) and momentum 0 and 0.9, sweep ``lr*wd`` over a decade, simulate with
:func:`siflow.simulate.simulate`, measure the destabilizations with
:func:`siflow.periods.find_events` and compare the median period and the effective LR
at destabilization with :func:`siflow.predict.predict_period`:

* *landscape, loss profile*: the reduced (norm, deviation) model on the toy's loss
  profile along its sharpest great circle (knows the toy and the noise level, nothing
  measured);
* *landscape, S + family only*: the same with the analytic profile of the toy's family
  (quadratic for Rayleigh, the two-point logistic model) and its sharpness at the minimum;
* *calibrated*: one run at ``lr*wd`` in the middle of the range (at another learning
  rate: the scale symmetry) calibrates the reduced-map prediction (ratio), or the cycle
  model of :mod:`siflow.predict`, predicting the others.

Prints a markdown table with the relative errors and writes the figures to
``runs/period_vs_theory/`` (``--out`` to choose); the committed README figures
``figures/period_vs_theory*.png`` are rewritten only with ``--update-figures``.

    python analysis/period_vs_theory.py            # full sweep (~1-2 min on 2 cores)
    python analysis/period_vs_theory.py --quick    # two points per case (seconds)
    python analysis/period_vs_theory.py --update-figures   # regenerate the README figures
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from siflow._cli import ArgumentParser, run_main  # noqa: E402
from siflow._fileio import atomic_path, ensure_dir  # noqa: E402
from siflow.losses import make_loss  # noqa: E402
from siflow.periods import find_events  # noqa: E402
from siflow.predict import predict_period, threshold_elr  # noqa: E402
from siflow.simulate import simulate  # noqa: E402

SKIP = 3  # transient destabilizations dropped from every measurement
#: Loss family of the reduced model for the "S + family only" landscape prediction.
FAMILY = {"rayleigh": "quadratic", "logistic": "logistic"}
LR = 0.1
#: Calibration runs use another lr. All runs start from the same direction with
#: rho0 = sqrt(lr/LR) (rho0 = 1 at LR), i.e. the same initial effective LR: under the scale
#: symmetry (docs/theory.md §0) such a run is an exact copy of the run at LR with the same
#: lr*wd. (With rho0 = 1 at both learning rates the Rayleigh toy at lr*wd = 3e-3 settles
#: on a different periodic orbit: 81 instead of 74 steps.)
CAL_LR = 0.05

#: (label, loss name, loss options, noise, momentum, lr*wd grid, calibration lr*wd)
CASES = [
    ("Rayleigh", "rayleigh", {}, 1e-6, 0.0, [1e-3, 2e-3, 5e-3, 1e-2], 3e-3),
    ("Rayleigh", "rayleigh", {}, 1e-6, 0.9, [1e-4, 2e-4, 5e-4, 1e-3], 3e-4),
    ("logistic A", "logistic", {"seed": 0}, 1e-6, 0.0, [1e-3, 2e-3, 5e-3, 1e-2], 3e-3),
    ("logistic A", "logistic", {"seed": 0}, 1e-6, 0.9, [1e-4, 2e-4, 5e-4, 1e-3], 3e-4),
    ("logistic B", "logistic", {"seed": 1}, 1e-6, 0.0, [1e-3, 2e-3, 5e-3, 1e-2], 3e-3),
    ("logistic B", "logistic", {"seed": 1}, 1e-6, 0.9, [1e-4, 2e-4, 5e-4, 1e-3], 3e-4),
]


def measure(traj):
    """Median period, ELR before and norm jump over the events after the transient."""
    ev = find_events(traj)
    if len(ev) < SKIP + 3:
        return math.nan, math.nan, math.nan, len(ev)
    sl = slice(SKIP, None)
    return (
        float(np.median(np.diff(ev.steps[sl]))),
        float(np.median(ev.elr_before[sl])),
        float(np.median(ev.rho_after[sl] / ev.rho_before[sl])),
        len(ev) - SKIP,
    )


def run(loss_name, options, noise, momentum, lr, elw, periods, seed=1):
    wd = elw / lr
    rho0 = math.sqrt(lr / LR)
    # ~`periods` periods: T * lr wd / (1 - mu) is O(1) in these toys
    steps = int(periods / elw * (1.0 - momentum) * 1.5) + 2000
    return simulate(
        loss_name,
        lr=lr,
        wd=wd,
        steps=steps,
        noise=noise,
        momentum=momentum,
        seed=seed,
        rho0=rho0,
        loss_options=options,
    )


def rel(pred, meas):
    return (pred - meas) / meas if math.isfinite(pred) and math.isfinite(meas) else math.nan


def fmt_err(e):
    return "n/a" if not math.isfinite(e) else f"{100 * e:+.0f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="period_vs_theory", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two points per case, short runs")
    parser.add_argument(
        "--out",
        default=None,
        help="figure path (PNG/SVG/PDF); default runs/period_vs_theory/period_vs_theory.png",
    )
    parser.add_argument(
        "--update-figures",
        action="store_true",
        help="write the committed README figure figures/period_vs_theory.png instead",
    )
    args = parser.parse_args(argv)
    if args.out is not None and args.update_figures:
        parser.error("--out and --update-figures are exclusive: pick one destination")
    if args.update_figures:
        out = Path(__file__).resolve().parents[1] / "figures" / "period_vs_theory.png"
    else:
        out = Path(args.out or "runs/period_vs_theory/period_vs_theory.png")
    ensure_dir(out.parent if str(out.parent) else ".")
    periods = 25 if args.quick else 100
    n_model = 20 if args.quick else 60  # destabilizations averaged in the reduced model
    rows = []
    for label, loss_name, options, noise, mu, grid, cal_elw in CASES:
        if args.quick:
            grid = [grid[0], grid[-1]]
        toy = make_loss(loss_name, **options)
        family = FAMILY[loss_name]
        cal = run(loss_name, options, noise, mu, CAL_LR, cal_elw, periods)
        for elw in grid:
            wd = elw / LR
            traj = run(loss_name, options, noise, mu, LR, elw, periods)
            S = float(traj.meta["sharpness_min"])
            t_m, elr_m, q_m, n_m = measure(traj)
            land = predict_period(LR, wd, mu, loss=toy, noise=noise, min_events=n_model)
            fam = predict_period(LR, wd, mu, sharpness=S, family=family, noise=noise, dim=toy.dim)
            calp = predict_period(
                LR, wd, mu, calibration=cal, loss=toy, noise=noise, min_events=n_model
            )
            cyc = predict_period(LR, wd, mu, calibration=cal, calibration_model="cycle")
            row = dict(label=label, mu=mu, elw=elw, cal_elw=cal_elw, n=n_m, T=t_m, elr=elr_m, q=q_m)
            row["thr"] = threshold_elr(LR, wd, S, mu)
            for key, pred in (("land", land), ("fam", fam), ("cal", calp), ("cyc", cyc)):
                row[f"T_{key}"] = pred.period
                row[f"elr_{key}"] = pred.elr_destabilization
                row[f"q_{key}"] = pred.norm_jump
            rows.append(row)
            print(
                f"{label} mu={mu} lr*wd={elw:g}: T={t_m:.0f} profile={land.period:.0f} "
                f"family={fam.period:.0f} calibrated={calp.period:.0f} cycle={cyc.period:.0f}",
                file=sys.stderr,
                flush=True,
            )
    print_table(rows)
    out_parity = out.with_name(out.stem + "_parity" + out.suffix)
    draw_periods(rows, out)
    draw_parity(rows, out_parity)
    print(f"\nwrote {out} and {out_parity}", file=sys.stderr)
    return 0


METHODS = (
    ("land", "landscape: loss profile", "s--", "C0"),
    ("fam", "landscape: S + family only", "D:", "C9"),
    ("cal", "calibrated: reduced-map ratio", "^-", "C3"),
    ("cyc", "calibrated: cycle model", "v:", "C2"),
)


def print_table(rows):
    head = ["toy", "momentum", "lr*wd", "periods", "T simulated"]
    head += [f"T {name.split(': ')[1]} (err)" for _, name, _, _ in METHODS]
    head += ["ELR/thr simulated", "ELR err profile", "ELR err calibrated", "jump sim/profile"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["label"], f"{r['mu']:g}", f"{r['elw']:g}", str(r["n"]), f"{r['T']:.0f}"]
        cells += [f"{r['T_' + k]:.0f} ({fmt_err(rel(r['T_' + k], r['T']))})" for k, *_ in METHODS]
        cells += [
            f"{r['elr'] / r['thr']:.3f}",
            fmt_err(rel(r["elr_land"], r["elr"])),
            fmt_err(rel(r["elr_cal"], r["elr"])),
            f"{r['q']:.2f} / {r['q_land']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for key, name, *_ in METHODS:
        errs_t = [abs(rel(r["T_" + key], r["T"])) for r in rows]
        errs_e = [abs(rel(r["elr_" + key], r["elr"])) for r in rows]
        errs_t = [e for e in errs_t if math.isfinite(e)]
        errs_e = [e for e in errs_e if math.isfinite(e)]
        print(
            f"- {name}: worst |period error| {100 * max(errs_t):.0f}% "
            f"(median {100 * float(np.median(errs_t)):.0f}%), worst |ELR error| "
            f"{100 * max(errs_e):.0f}%"
        )


def _cases(rows):
    keys = []
    for r in rows:
        if (r["label"], r["mu"]) not in keys:
            keys.append((r["label"], r["mu"]))
    return keys


def draw_periods(rows, path):
    keys = _cases(rows)
    ncol = 3
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.5 * nrow), squeeze=False)
    for j, key in enumerate(keys):
        ax = axes[j // ncol, j % ncol]
        sub = [r for r in rows if (r["label"], r["mu"]) == key]
        x = np.array([r["elw"] for r in sub])
        ax.loglog(x, [r["T"] for r in sub], "ko", ms=8, label="simulated (median)", zorder=5)
        for k, name, style, color in METHODS:
            ax.loglog(x, [r["T_" + k] for r in sub], style, color=color, ms=5, label=name)
        ax.axvline(sub[0]["cal_elw"], color="C3", lw=0.8, ls=":", label="calibration run")
        ax.set_title(f"{key[0]}, momentum {key[1]:g}", fontsize=10)
        ax.set_xlabel(r"$\eta\lambda$ = lr $\times$ wd")
        ax.set_ylabel("period (steps)")
        ax.grid(True, which="both", alpha=0.3)
    for j in range(len(keys), nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Period of the periodic behavior on toy losses: simulation vs prediction")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def draw_parity(rows, path):
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.6))
    for ax, what, band, title in (
        (axes[0], "T", (0.10, 0.25), "median period (steps)"),
        (axes[1], "elr", (0.20,), "effective LR at destabilization"),
    ):
        meas = np.array([r[what] for r in rows])
        lo, hi = np.nanmin(meas) / 1.6, np.nanmax(meas) * 1.6
        xs = np.geomspace(lo, hi, 50)
        ax.loglog(xs, xs, "k-", lw=0.8)
        for b, ls in zip(band, (":", "--"), strict=False):
            ax.fill_between(xs, xs * (1 - b), xs * (1 + b), color="0.5", alpha=0.12, lw=0)
            ax.loglog(xs, xs * (1 + b), "k", ls=ls, lw=0.6, label=f"\u00b1{100 * b:.0f}%")
            ax.loglog(xs, xs * (1 - b), "k", ls=ls, lw=0.6)
        for k, name, style, color in METHODS:
            pred = np.array([r[f"{what}_{k}"] for r in rows])
            ax.loglog(meas, pred, style[0], color=color, ms=5, alpha=0.85, label=name)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"simulated {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Predicted vs simulated, all toys, momentum 0 and 0.9")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="period_vs_theory"))
