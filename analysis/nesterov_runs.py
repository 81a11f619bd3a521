"""Heavy ball against Nesterov on real networks: where each one destabilizes.

The linearised direction map gives each optimizer its own stability threshold on the
unit sphere (``siflow.theory.stability_threshold_elr``, docs/theory.md section 3):
``elr S < 2 (1 + mu - lr wd)`` for heavy ball and ``elr S < 1 - lr wd + a^2/((1 + mu) a
+ mu)`` for PyTorch's Nesterov (``a`` its zero-gradient decay factor): 3.80 and 1.35 at
``mu = 0.9``, ``lr wd = 1e-3``. This script trains two networks of the labelled set
(``analysis/labelled_runs.py``: the digits ConvNet and the mnist1d MLP, BatchNorm without
affine terms, last layer frozen) with full-batch GD, lr 0.1, wd 0.01, momentum 0.9, once
with heavy ball and once with Nesterov, the sphere sharpness ``S`` logged every 4 steps,
and measures in every cycle after the first the largest ``elr S`` of its decay phase (from
the previous jump's peak to two steps before the event), against both thresholds; and the
measured decay rate between events against both decay laws.

Usage::

    python analysis/nesterov_runs.py analyze          # committed logs: table and figure
                                                      # to runs/nesterov
    python analysis/nesterov_runs.py analyze --update-data --update-figures
                                                      # the committed table and figure
    python analysis/nesterov_runs.py train            # retrain (about 4 minutes on one
                                                      # core) into runs/nesterov/logs
    python analysis/nesterov_runs.py train --update-data     # the committed logs
    python analysis/nesterov_runs.py analyze --logs runs/nesterov/logs

The committed logs (``analysis/data/nesterov``) keep the columns read here (step, rho,
loss, sharpness_sphere) in float32 precision.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow import theory
from siflow._cli import ArgumentParser, run_main
from siflow._fileio import atomic_write, ensure_dir, require
from siflow.periods import _nesterov, find_events, measure_decay_rate, sharpness_before_events
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "nesterov"
DATA = ROOT / "analysis" / "data" / "nesterov"
LR, WD, MU, STEPS = 0.1, 1e-2, 0.9, 3000
#: (data set, network) pairs of the labelled set trained here.
NETS = (("digits", "convnet"), ("mnist1d", "mlp"))


def _labelled() -> Any:
    """``analysis/labelled_runs.py`` as a module (its networks, data and training loop)."""
    spec = importlib.util.spec_from_file_location(
        "labelled_runs", ROOT / "analysis/labelled_runs.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("labelled_runs", mod)
    spec.loader.exec_module(mod)
    return mod


def run_names() -> list[str]:
    """``<data>_<net>_gd_<hb|nes>``, heavy ball first."""
    return [f"{d}_{n}_gd_{k}" for d, n in NETS for k in ("hb", "nes")]


def slim(traj: Trajectory) -> Trajectory:
    """The columns read here in float32 precision, with the run's settings."""

    def f32(a: Any) -> Any:
        return None if a is None else np.asarray(a, dtype=np.float32).astype(np.float64)

    keys = ("lr", "wd", "momentum", "optimizer", "nesterov", "dataset", "source", "config")
    return Trajectory(
        step=traj.step,
        rho=f32(traj.rho),
        loss=f32(traj.loss),
        sharpness_sphere=f32(traj.sharpness_sphere),
        meta={k: traj.meta[k] for k in keys if k in traj.meta},
    )


def cmd_train(args: Any) -> int:
    lab = _labelled()
    out = ensure_dir(DATA if args.update_data else Path(args.out) if args.out else OUT / "logs")
    for data, net in NETS:
        for kind in ("hb", "nes"):
            run = lab.Run(
                f"{data}_{net}_gd_{kind}",
                data,
                net,
                LR,
                WD,
                STEPS,
                momentum=MU,
                seed=1,
                sharpness_every=4,
                nesterov=kind == "nes",
            )
            print(lab.train(run, out))
            if args.update_data:
                path = out / f"{run.name}.npz"
                slim(Trajectory.load(path)).save(path)
    return 0


def cycle_maxima(traj: Trajectory) -> tuple[np.ndarray, Any]:
    """The largest ``elr S = lr S / rho^2`` over each decay phase after the first (rows from
    the previous event's peak to two rows before the event), and the events."""
    ev = find_events(traj)
    lr = float(traj.lr)  # type: ignore[arg-type]
    sharp = traj.sharpness_sphere
    assert sharp is not None and traj.rho is not None
    elr_s = lr / traj.rho**2 * sharp
    out = []
    for k in range(1, len(ev)):
        lo, hi = int(ev.peak_index[k - 1]), int(ev.index[k]) - 1
        window = elr_s[lo:hi]
        window = window[np.isfinite(window)]
        out.append(float(np.max(window)) if window.size else math.nan)
    return np.asarray(out), ev


def measure(traj: Trajectory) -> dict[str, Any]:
    """One run's row of the table."""
    lr, wd, mu = float(traj.lr), float(traj.wd), traj.momentum  # type: ignore[arg-type]
    nes = _nesterov(traj)
    own = float(theory.stability_threshold_elr(lr, wd, 1.0, mu, nesterov=nes))
    hb = float(theory.stability_threshold_elr(lr, wd, 1.0, mu))
    peaks, ev = cycle_maxima(traj)
    # elr at each event times the sharpness late in its decay phase, before the burst
    at_event = (ev.elr_before * sharpness_before_events(traj, ev))[1:]
    return {
        "optimizer": "Nesterov" if nes else "heavy ball",
        "events": len(ev),
        "period_median": float(np.median(ev.periods)) if len(ev) >= 2 else math.nan,
        "threshold_own": own,
        "threshold_heavy_ball": hb,
        "peak_over_own": peaks / own,
        "peak_over_heavy_ball": peaks / hb,
        "event_over_own": at_event / own,
        "event_over_heavy_ball": at_event / hb,
        "decay_measured": float(measure_decay_rate(traj, ev)),
        "decay_law_own": float(theory.decay_rate(lr, wd, mu, nesterov=nes)),
        "decay_law_heavy_ball": float(theory.decay_rate(lr, wd, mu)),
        "elr_s": lr / traj.rho**2 * traj.sharpness_sphere,  # type: ignore[operator]
    }


def _spread(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    return f"{np.median(x):.2f} ({np.min(x):.2f}-{np.max(x):.2f})" if x.size else "n/a"


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Heavy ball against Nesterov: where real networks destabilize",
        "",
        "Regenerate: `python analysis/nesterov_runs.py analyze`. GD, lr 0.1, wd 0.01, momentum "
        "0.9, sphere sharpness S every 4 steps. Thresholds of elr S "
        "(`siflow.theory.stability_threshold_elr` times S): heavy ball 2(1 + mu - lr wd) = "
        f"{next(iter(rows.values()))['threshold_heavy_ball']:.3f}, Nesterov "
        "1 - lr wd + a^2/((1 + mu) a + mu) = "
        f"{next(r for r in rows.values() if r['optimizer'] == 'Nesterov')['threshold_own']:.3f}.",
        "",
        "For the events after the first (median, range over them), over the run's own "
        "threshold and over heavy ball's: elr S at the event, the effective LR at the event "
        "times the sharpness over the last tenth of its decay phase "
        "(`siflow.periods.sharpness_before_events`; at the event row the burst has begun and "
        "S is the burst's); and the largest elr S of the decay phase before it (rows from the "
        "previous jump's peak to two rows before the event: single high measurements count). "
        "Decay rate of ln rho between events (`siflow.periods.measure_decay_rate`) against "
        "the two zero-gradient laws.",
        "",
        "| run | optimizer | events | median period | elr S at events / own threshold "
        "| / heavy ball's | max elr S before / own threshold | / heavy ball's "
        "| decay measured | own law | heavy ball's law |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['optimizer']} | {r['events']} | {r['period_median']:.0f} "
            f"| {_spread(r['event_over_own'])} | {_spread(r['event_over_heavy_ball'])} "
            f"| {_spread(r['peak_over_own'])} | {_spread(r['peak_over_heavy_ball'])} "
            f"| {r['decay_measured']:.5f} | {r['decay_law_own']:.5f} "
            f"| {r['decay_law_heavy_ball']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: dict[str, dict[str, Any]], logs: dict[str, Trajectory], path: Path) -> None:
    plt = require("matplotlib.pyplot", "analysis", "matplotlib")
    fig, axes = plt.subplots(1, len(NETS), figsize=(6 * len(NETS), 3.6), squeeze=False)
    for ax, (data, net) in zip(axes[0], NETS, strict=True):
        for kind, color in (("hb", "C0"), ("nes", "C3")):
            name = f"{data}_{net}_gd_{kind}"
            r, tr = rows[name], logs[name]
            ok = np.isfinite(r["elr_s"])
            ax.semilogy(tr.step[ok], r["elr_s"][ok], color=color, lw=0.6, label=r["optimizer"])
            ax.axhline(r["threshold_own"], color=color, ls="--", lw=1.0)
        ax.set_ylim(0.1, 30)
        ax.set_title(f"{data} {net}: elr S (dashed: each optimizer's threshold)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


def cmd_analyze(args: Any) -> int:
    logs_dir = Path(args.logs) if args.logs else DATA
    logs = {}
    for name in run_names():
        path = logs_dir / f"{name}.npz"
        if not path.is_file():
            raise ValueError(f"no log {str(path)!r}; run 'train' first (or pass --logs)")
        logs[name] = Trajectory.load(path)
    rows = {name: measure(tr) for name, tr in logs.items()}
    text = table(rows)
    print(text)
    out = ensure_dir(Path(args.out) if args.out else OUT)
    fig = (ROOT / "figures" if args.update_figures else out) / "nesterov_threshold.png"
    figure(rows, logs, fig)
    targets = [out / "results.md"] + ([DATA / "results.md"] if args.update_data else [])
    for target in targets:
        with atomic_write(target, "w") as fh:
            fh.write(text)
    print(f"wrote {', '.join(map(str, targets))}, {fig}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="nesterov_runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the four runs")
    p.add_argument("--out", default=None, help="log directory (default runs/nesterov/logs)")
    p.add_argument(
        "--update-data",
        action="store_true",
        help="write the committed logs (analysis/data/nesterov)",
    )
    p = sub.add_parser("analyze", help="table and figure from the logs")
    p.add_argument("--logs", default=None, help="log directory (default analysis/data/nesterov)")
    p.add_argument("--out", default=None, help="output directory (default runs/nesterov)")
    p.add_argument(
        "--update-data", action="store_true", help="also write analysis/data/nesterov/results.md"
    )
    p.add_argument(
        "--update-figures",
        action="store_true",
        help="draw the figure in figures/ (committed) instead of the output directory",
    )
    args = parser.parse_args(argv)
    return cmd_train(args) if args.cmd == "train" else cmd_analyze(args)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="nesterov_runs"))
