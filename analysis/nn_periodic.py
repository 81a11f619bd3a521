"""The periodic behavior in real scale-invariant networks, measured against theory.

Trains fully scale-invariant networks with PyTorch on scikit-learn's ``load_digits``
(1797 8x8 images, shipped with scikit-learn, no download) following the seed paper's
recipe: convolutions/linear layers without bias, each followed by BatchNorm without
affine terms, the last linear layer rescaled to Frobenius norm 10 and frozen, constant
LR, no augmentation. Two networks: a ConvNet of the seed paper's shape (three 3x3 conv
layers, widths 8/16/32, ReLU, 2x2 max-pooling) and an MLP (three hidden layers of 64).
Full-batch GD and minibatch SGD (batch 128), momentum 0 and 0.9, and (lr, wd) pairs with
``lr*wd`` from 1e-3 to 1e-2, including pairs with equal ``lr*wd``.

Every run is recorded with :class:`siflow.torch_probe.SIRecorder` (norm, sphere gradient
norm, effective LR, angular update, radial gradient component, and for full-batch runs
the unit-sphere sharpness by power iteration) and analysed with
:func:`siflow.overlay.analyze`. The script writes

- ``<out>/<run>.npz``: the logs (siflow trajectories, readable by ``siflow.io.read``);
- ``<out>/results.md``: the tables of measured vs predicted quantities;
- ``<out>/results.json``: every number in the tables;
- ``<figures>/nn_*.png``: the figures.

Usage::

    python analysis/nn_periodic.py            # full: tens of minutes on one core, to runs/
    python analysis/nn_periodic.py --quick    # CI-sized: under 3 minutes, to runs/nn_quick
    python analysis/nn_periodic.py --analyze-only   # tables and figures from the committed logs
    python analysis/nn_periodic.py --analyze-only --update-data --update-figures  # regenerate
                                              # the committed tables and figures

A log whose stored configuration equals the run's is reused unless ``--force``. Outputs go
to ``runs/nn_periodic`` unless ``--update-data`` (logs and tables in ``analysis/data/nn``)
or ``--update-figures`` (figures in ``figures/``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siflow._cli import ArgumentParser, run_main
from siflow._fileio import atomic_write, ensure_dir, require
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN = 1000  # of the 1797 digits; the other 797 are held out
LAST_LAYER_NORM = 10.0


@dataclass(frozen=True)
class Run:
    """One training run."""

    name: str
    net: str  # "convnet" or "mlp"
    lr: float
    wd: float
    momentum: float = 0.0
    batch: int = 0  # 0 = full batch (GD)
    steps: int = 1000
    every: int = 1
    sharpness_every: int = 0  # in steps; 0 = not measured
    seed: int = 0
    init_scale: float = 1.0  # multiplies the SI weights at init (symmetry check)

    @property
    def lrwd(self) -> float:
        return self.lr * self.wd

    @property
    def label(self) -> str:
        opt = "GD" if self.batch == 0 else f"SGD b{self.batch}"
        mom = f", mu={self.momentum:g}" if self.momentum else ""
        init = f", init x{self.init_scale:.3g}" if self.init_scale != 1.0 else ""
        return f"{self.net} {opt}{mom} lr={self.lr:g} wd={self.wd:g}{init}"


def _steps(lrwd_eff: float, cycles: float) -> int:
    """About ``cycles / lrwd_eff`` steps (the decay phase lasts a few ``1/lrwd_eff``)."""
    return int(round(cycles / lrwd_eff / 100.0) * 100)


def _every(lrwd_eff: float) -> int:
    """Log about 100 rows per ``1/lrwd_eff`` steps (keeps the committed logs small)."""
    return max(1, int(round(0.01 / lrwd_eff)))


def _sharp_every(lrwd_eff: float, every: int) -> int:
    """Sharpness every ~``0.1/lrwd_eff`` steps: the effective LR grows ~20% in between."""
    return every * max(1, int(round(0.1 / lrwd_eff / every)))


def _gd(name: str, net: str, lr: float, wd: float, cycles: float, mu: float = 0.0) -> Run:
    x = -math.log(1 - lr * wd / (1 - mu))  # per-step norm decay at zero gradient
    ev = _every(x)
    return Run(
        name,
        net,
        lr,
        wd,
        momentum=mu,
        steps=_steps(x, cycles),
        every=ev,
        sharpness_every=_sharp_every(x, ev) if mu == 0 else 0,
    )


def _sgd(name: str, net: str, lr: float, wd: float, cycles: float, mu: float = 0.0) -> Run:
    x = -math.log(1 - lr * wd / (1 - mu))
    return Run(name, net, lr, wd, momentum=mu, batch=128, steps=_steps(x, cycles), every=_every(x))


def make_runs(quick: bool) -> list[Run]:
    """The experiment grid (see the module docstring)."""
    if quick:
        return [
            _gd("mlp_gd_0", "mlp", 1.0, 1e-2, 12),
            _gd("mlp_gd_1", "mlp", 0.4, 2.5e-2, 12),
            Run("convnet_gd_0", "convnet", 1.0, 1e-2, steps=400, every=1, sharpness_every=20),
            _sgd("mlp_sgd_0", "mlp", 1.0, 1e-2, 10),
        ]
    runs: list[Run] = []
    # MLP, GD: lr*wd = 1e-3 (two pairs), 2e-3 (reference), 4e-3 (two pairs), 1e-2
    pairs = [(0.2, 5e-3), (0.5, 2e-3), (0.5, 4e-3), (1.0, 4e-3), (0.4, 1e-2), (1.0, 1e-2)]
    for i, (lr, wd) in enumerate(pairs):
        runs.append(_gd(f"mlp_gd_{i}", "mlp", lr, wd, 12))
    # ConvNet (30x the cost per step): lr*wd = 2e-3 (reference), 4e-3 (two pairs), 1e-2
    for i, (lr, wd) in enumerate(pairs):
        if i >= 2:
            runs.append(_gd(f"convnet_gd_{i}", "convnet", lr, wd, 10))
    for net, cycles in (("mlp", 12), ("convnet", 10)):
        # heavy ball: the norm decays by about lr*wd/(1-mu) per step; match lr*wd = 2e-3
        runs.append(_gd(f"{net}_gd_mom", net, 0.05, 4e-3, cycles, mu=0.9))
        runs.append(_sgd(f"{net}_sgd_0", net, 0.5, 4e-3, cycles))
        runs.append(_sgd(f"{net}_sgd_1", net, 1.0, 1e-2, cycles))
        runs.append(_sgd(f"{net}_sgd_mom", net, 0.05, 4e-3, cycles, mu=0.9))
    # exact scale symmetry: (c lr, wd/c) with the SI weights scaled by sqrt(c) at init
    # follows the directions of (lr, wd); c = 2.5 maps mlp_gd_0 onto this run
    base = runs[0]
    runs.append(
        Run(
            "mlp_gd_sym",
            "mlp",
            base.lr * 2.5,
            base.wd / 2.5,
            steps=base.steps,
            every=base.every,
            init_scale=math.sqrt(2.5),
        )
    )
    return runs


# ------------------------------------------------------------------------ training
def load_data() -> tuple[Any, ...]:
    """Digits scaled to [0, 1], shuffled with seed 0: 1000 training, 797 held-out images."""
    datasets = require("sklearn.datasets", "analysis", "scikit-learn")
    d = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = (d.data[order] / 16.0).astype(np.float32)
    y = d.target[order].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def build(net: str, torch: Any) -> Any:
    nn = torch.nn
    if net == "convnet":
        w = 8
        layers: list[Any] = [nn.Unflatten(1, (1, 8, 8))]
        c_in = 1
        for c in (w, 2 * w, 4 * w):
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c, affine=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c
        layers += [nn.Flatten(), nn.Linear(4 * w, 10)]
    elif net == "mlp":
        layers = []
        n_in = 64
        for _ in range(3):
            layers += [nn.Linear(n_in, 64, bias=False), nn.BatchNorm1d(64, affine=False), nn.ReLU()]
            n_in = 64
        layers += [nn.Linear(64, 10)]
    else:
        raise ValueError(f"net must be 'convnet' or 'mlp', got {net!r}")
    model = nn.Sequential(*layers)
    if net == "convnet":  # about 1.7x faster on CPU
        model = model.to(memory_format=torch.channels_last)
    from siflow.torch_probe import freeze_classifier

    freeze_classifier(model[-1], LAST_LAYER_NORM)  # seed paper: norm 10, frozen
    return model


def train(run: Run, out: Path, threads: int) -> dict[str, Any]:
    """Train one run, record it with SIRecorder, save ``out/<name>.npz``."""
    torch = require("torch", "torch", '"torch==2.13.0"')
    from siflow.torch_probe import SIRecorder

    torch.set_num_threads(threads)
    nn = torch.nn
    xtr, ytr, xte, yte = load_data()
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    torch.manual_seed(run.seed)
    model = build(run.net, torch)
    if run.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(run.init_scale)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.wd)

    def full_loss() -> Any:
        return nn.functional.cross_entropy(model(X), Y)

    path = out / f"{run.name}.npz"
    rec = SIRecorder(
        model,
        opt,
        every=run.every,
        sharpness_every=run.sharpness_every or None,
        sharpness_loss=full_loss if run.sharpness_every else None,
        sharpness_iters=12,
        sharpness_tol=1e-3,
        path=path,
        flush_every=500,
        meta={
            "config": asdict(run),
            "dataset": f"sklearn load_digits, {N_TRAIN} training images",
            "batch": run.batch or N_TRAIN,
            "steps_per_epoch": 1 if run.batch == 0 else math.ceil(N_TRAIN / run.batch),
            "seed": run.seed,
        },
    )
    gen = torch.Generator().manual_seed(run.seed + 1)
    perm, pos = torch.randperm(N_TRAIN, generator=gen), 0
    t0 = time.perf_counter()
    status = "ok"
    model.train()
    for _ in range(run.steps):
        if run.batch == 0:
            xb, yb = X, Y
        else:
            if pos + run.batch > N_TRAIN:
                perm, pos = torch.randperm(N_TRAIN, generator=gen), 0
            idx = perm[pos : pos + run.batch]
            pos += run.batch
            xb, yb = X[idx], Y[idx]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        rec.log_loss(loss)
        if not math.isfinite(float(loss.detach())):
            status = "diverged"
            break
    seconds = time.perf_counter() - t0
    rec.close()
    # accuracy in eval mode with BatchNorm statistics of the whole training set (the
    # running averages lag behind the weights right after a destabilization)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None  # cumulative average: one pass gives the exact stats
        model.train()
        model(X)
    model.eval()
    with torch.no_grad():
        acc_tr = float((model(X).argmax(1) == Y).float().mean())
        acc_te = float(
            (model(torch.from_numpy(xte)).argmax(1) == torch.from_numpy(yte)).float().mean()
        )
    traj = rec.trajectory()
    for key in [k for k in traj.extra if k.startswith("elr/")]:
        del traj.extra[key]  # lr / rho_g^2: derivable, dropped to keep the logs small
    traj.meta.update(
        {
            "status": status,
            "train_acc": acc_tr,
            "test_acc": acc_te,
            "acc_bn_stats": "training set",
            "seconds": seconds,
        }
    )
    traj.save(path)
    return {"name": run.name, "seconds": seconds, "rows": len(traj), "status": status}


def _cost(run: Run) -> float:
    """Rough relative cost of a run (for scheduling)."""
    per_step = (30.0 if run.net == "convnet" else 1.0) * (0.15 if run.batch else 1.0)
    return run.steps * per_step * (1.5 if run.sharpness_every else 1.0)


def _cached(run: Run, out: Path) -> bool:
    path = out / f"{run.name}.npz"
    if not path.is_file():
        return False
    try:
        meta = Trajectory.load(path).meta
    except ValueError:
        return False
    return meta.get("config") == json.loads(json.dumps(asdict(run))) and "seconds" in meta


# ------------------------------------------------------------------------ analysis
def _rel(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or predicted is None or predicted == 0:
        return None
    if not (math.isfinite(measured) and math.isfinite(predicted)):
        return None
    return measured / predicted - 1.0


def _before_events(traj: Trajectory, events: Any, column: Any, window: int) -> list[float]:
    """``column`` at the last sharpness measurement before each event (within ``window``)."""
    if traj.sharpness_sphere is None or traj.elr is None:
        return []
    ok = np.isfinite(traj.sharpness_sphere)
    steps, vals = traj.step[ok], np.asarray(column)[ok]
    out = []
    for s in events.steps:
        k = np.searchsorted(steps, s, side="right") - 1
        if k >= 0 and s - steps[k] <= window:
            out.append(float(vals[k]))
    return out


def _threshold_products(traj: Trajectory, events: Any, window: int) -> list[float]:
    """``elr * S`` at the last sharpness measurement before each event (within ``window``)."""
    if traj.sharpness_sphere is None or traj.elr is None:
        return []
    return _before_events(traj, events, traj.elr * traj.sharpness_sphere, window)


def _cycle_angle(traj: Trajectory, events: Any) -> tuple[float | None, float | None]:
    """Angle ``arccos(exp(mean ln cos Delta))`` over all steps from the first event on.

    Exact identity for plain SGD on an SI loss (docs/theory.md section 1):
    ``rho_{t+1} / rho_t = (1 - lr wd) / cos Delta_t``, hence over ``n`` steps
    ``mean(-ln cos Delta) = -ln(1 - lr wd) + ln(rho_end / rho_start) / n``: the
    time-averaged rotation is ``Delta* = arccos(1 - lr wd)`` even when the run is
    periodic rather than in equilibrium, up to the boundary term (returned second),
    which vanishes as the window grows. Uses the recorder's per-step window
    statistics (``log_cos_mean_window``) when the log has them, else the logged rows.
    """
    if traj.angular_update is None or traj.rho is None or len(events) < 1:
        return None, None
    lo = int(events.index[0])
    if "log_cos_mean_window" in traj.extra:
        vals = traj.extra["log_cos_mean_window"][lo:]
    else:
        vals = np.log(np.cos(traj.angular_update[lo:]))
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return None, None
    n = float(traj.step[-1] - traj.step[lo])
    boundary = math.log(traj.rho[-1] / traj.rho[lo]) / n if n > 0 else None
    return float(np.arccos(np.exp(np.mean(vals)))), boundary


def _angle_rms(traj: Trajectory, start: int | None) -> float | None:
    """RMS angular update over every step from ``start`` (window statistics if logged)."""
    if start is None or traj.angular_update is None:
        return None
    sel = traj.step >= start
    col = traj.extra.get("angular_update_rms_window", traj.angular_update)[sel]
    col = col[np.isfinite(col)]
    return float(np.sqrt(np.mean(col**2))) if col.size else None


def _angle_series(traj: Trajectory) -> Any:
    """Per-row angle to draw: the RMS over the row's window when logged."""
    return traj.extra.get("angular_update_rms_window", traj.angular_update)


def _crossing_leads(traj: Trajectory, events: Any, level: float) -> list[float]:
    """Steps from the last upward crossing of ``elr*S = level`` to each event.

    The crossing is interpolated in ``ln(elr*S)`` between sharpness measurements.
    """
    if traj.sharpness_sphere is None or traj.elr is None:
        return []
    ok = np.isfinite(traj.sharpness_sphere)
    st, pr = traj.step[ok].astype(float), np.log(traj.elr[ok] * traj.sharpness_sphere[ok])
    lv = math.log(level)
    leads, prev = [], -np.inf
    for s in events.steps:
        idx = np.flatnonzero((st[:-1] >= prev) & (st[1:] <= s) & (pr[:-1] < lv) & (pr[1:] >= lv))
        if idx.size:
            k = idx[-1]
            cross = st[k] + (lv - pr[k]) / (pr[k + 1] - pr[k]) * (st[k + 1] - st[k])
            leads.append(float(s - cross))
        prev = s
    return leads


def analyze_all(runs: Sequence[Run], out: Path, figures: Path) -> dict[str, Any]:
    from siflow import overlay, theory

    trajs: dict[str, Trajectory] = {}
    results: dict[str, Any] = {}
    for run in runs:
        path = out / f"{run.name}.npz"
        if not path.is_file():
            continue
        traj = Trajectory.load(path)
        trajs[run.name] = traj
        res = overlay.analyze(traj)
        window = 2 * max(run.sharpness_every, 1)
        s_ev = (
            _before_events(traj, res.events, traj.sharpness_sphere, window)
            if traj.sharpness_sphere is not None
            else []
        )
        if s_ev:  # the threshold line from the sharpness measured just before the events
            res = overlay.analyze(traj, sharpness=float(np.median(s_ev)), events=res.events)
        logged_rms = res.angular_update_rms
        res.angular_update_rms = _angle_rms(traj, res.stationary_start)  # every step
        d = res.to_dict()
        d["angular_update_rms_logged_rows"] = logged_rms
        d["sharpness_before_events"] = s_ev
        prods = _threshold_products(traj, res.events, window)
        d["elr_times_sharpness_at_events"] = prods
        d["elr_times_sharpness_median"] = float(np.median(prods)) if prods else None
        d["threshold_theory"] = 2.0 * (1.0 - run.lrwd) if run.momentum == 0 else None
        d["cycle_angle"], d["cycle_boundary_term"] = (
            _cycle_angle(traj, res.events) if run.momentum == 0 else (None, None)
        )
        d["cycle_angle_corrected"] = None
        if d["cycle_angle"] is not None and d["cycle_boundary_term"] is not None:
            # mean(-ln cos Delta) - ln(rho_end/rho_start)/n = -ln(1 - lr wd) exactly (SI, SGD)
            lc = math.log(math.cos(d["cycle_angle"])) + d["cycle_boundary_term"]
            d["cycle_angle_corrected"] = math.acos(math.exp(lc)) if lc < 0 else None
        level = 2.0 * (1.0 - run.lrwd)
        leads = _crossing_leads(traj, res.events, level) if run.momentum == 0 else []
        d["threshold_crossing_leads"] = leads
        d["threshold_crossing_lead_median"] = float(np.median(leads)) if leads else None
        radial = traj.extra.get("radial")
        d["radial_abs_max"] = float(np.nanmax(np.abs(radial))) if radial is not None else None
        # accuracies are shown only when measured with recomputed BatchNorm statistics
        exact_bn = traj.meta.get("acc_bn_stats") == "training set"
        d["train_acc"] = traj.meta.get("train_acc") if exact_bn else None
        d["test_acc"] = traj.meta.get("test_acc") if exact_bn else None
        d["seconds"] = traj.meta.get("seconds")
        d["status"] = traj.status
        d["lrwd"] = run.lrwd
        groups = traj.meta.get("groups", [])
        st = traj.step >= (res.stationary_start or 0)
        d["group_angle_rms"] = {
            g: float(np.sqrt(np.nanmean(traj.extra[f"angular_update/{g}"][st] ** 2)))
            for g in groups
            if f"angular_update/{g}" in traj.extra
        }
        d["config"] = asdict(run)
        d["label"] = run.label
        results[run.name] = {"res": res, "d": d}

    # period predictions calibrated on one reference run per network:
    # T = T_ref * ln q_ref / ln q with q = theory.decay_factor(lr, wd, momentum)
    for net in ("mlp", "convnet"):
        ref_name = f"{net}_gd_2"
        if ref_name not in results or results[ref_name]["d"]["period_median"] is None:
            ref_name = next(
                (
                    n
                    for n, r in results.items()
                    if r["d"]["config"]["net"] == net and r["d"]["period_median"] is not None
                ),
                "",
            )
        if not ref_name:
            continue
        ref = results[ref_name]["d"]
        lq_ref = math.log(float(theory.decay_factor(ref["lr"], ref["wd"], ref["momentum"])))
        for name, r in results.items():
            d = r["d"]
            if d["config"]["net"] != net:
                continue
            lq = math.log(float(theory.decay_factor(d["lr"], d["wd"], d["momentum"])))
            d["period_reference"] = ref_name
            d["period_calibrated"] = ref["period_median"] * lq_ref / lq
            d["period_error"] = (
                None if name == ref_name else _rel(d["period_median"], d["period_calibrated"])
            )
    summary = {n: r["d"] for n, r in results.items()}
    summary["_symmetry"] = _symmetry(trajs)
    summary["_pairs"] = _pairs(summary)
    _figures(runs, trajs, results, figures)
    return summary


def _symmetry(trajs: dict[str, Trajectory]) -> dict[str, Any] | None:
    a, b = trajs.get("mlp_gd_0"), trajs.get("mlp_gd_sym")
    if a is None or b is None or a.elr is None or b.elr is None:
        return None
    n = min(len(a), len(b))
    rel = np.abs(b.elr[:n] / a.elr[:n] - 1.0)
    ang = np.abs(b.angular_update[:n] / a.angular_update[:n] - 1.0)
    bad = np.flatnonzero(rel > 0.01)
    return {
        "max_rel_elr_first_1000_steps": float(rel[a.step[:n] < 1000].max()),
        "max_rel_angle_first_1000_steps": float(ang[a.step[:n] < 1000].max()),
        "first_step_elr_differs_1pct": int(a.step[bad[0]]) if bad.size else None,
        "steps": int(a.step[n - 1]),
    }


def _pairs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for net in ("mlp", "convnet"):
        for i, j in ((0, 1), (3, 4)):
            a, b = summary.get(f"{net}_gd_{i}"), summary.get(f"{net}_gd_{j}")
            if not a or not b:
                continue
            rows.append(
                {
                    "net": net,
                    "lrwd": a["lrwd"],
                    "a": f"lr={a['lr']:g}, wd={a['wd']:g}",
                    "b": f"lr={b['lr']:g}, wd={b['wd']:g}",
                    "period": (a["period_median"], b["period_median"]),
                    "angle_rms": (a["angular_update_rms"], b["angular_update_rms"]),
                    "elr_at_events": (a["elr_at_events_median"], b["elr_at_events_median"]),
                    "norm_ratio": (a["norm_ratio_median"], b["norm_ratio_median"]),
                    "n_events": (a["n_events"], b["n_events"]),
                }
            )
    return rows


# ------------------------------------------------------------------------ output
def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"


def _pct3(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def write_markdown(summary: dict[str, Any], path: Path, command: str) -> str:
    names = [n for n in summary if not n.startswith("_")]
    lines = [
        "# Periodic behavior of scale-invariant networks on digits: measured vs theory",
        "",
        f"Regenerate: `{command}`. Logs: `{path.parent.name}/<run>.npz` (siflow trajectories).",
        "",
        "## Periods, threshold, decay",
        "",
        "T: median steps between destabilizations (`siflow.periods.find_events`); predicted T "
        "calibrated on one run per network (marked *ref*) as `T = T_ref ln q_ref / ln q`, "
        "`q = theory.decay_factor(lr, wd, momentum)`. `elr*S`: effective LR times the measured "
        "unit-sphere sharpness at the last measurement before each event (median), theory "
        "`2(1-lr*wd)` for GD without momentum; crossing lead: median steps from the upward "
        "crossing of that level (interpolated) to the event. Decay: per-step `-d ln rho/dt` "
        "between events vs `-ln q`.",
        "",
        "| run | lr*wd | events | T measured | T predicted | err | elr*S at events | theory | "
        "crossing lead | decay measured | decay theory | err | regime |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        d = summary[n]
        ref = d.get("period_reference") == n
        lines.append(
            f"| {d['label']} | {_fmt(d['lrwd'])} | {d['n_events']} | "
            f"{_fmt(d['period_median'], '.0f')} | "
            f"{'*ref*' if ref else _fmt(d.get('period_calibrated'), '.0f')} | "
            f"{'' if ref else _pct(d.get('period_error'))} | "
            f"{_fmt(d['elr_times_sharpness_median'])} | {_fmt(d['threshold_theory'])} | "
            f"{_fmt(d['threshold_crossing_lead_median'], '.0f')} | "
            f"{_fmt(d['decay_rate_measured'])} | {_fmt(d['decay_rate_predicted'])} | "
            f"{_pct(_rel(d['decay_rate_measured'], d['decay_rate_predicted']))} | {d['regime']} |"
        )
    lines += [
        "",
        "## Angular update and norm over the stationary part",
        "",
        "Delta: RMS angular update per step over every step of the stationary part (the "
        "recorder's window statistics); Delta* = `theory.sgd_equilibrium_angle` "
        "(`cos Delta* = 1 - lr wd`, exact) or `sgdm_equilibrium_angle` "
        "(`cos Delta* = 1 - lr wd/(1+mu)`). Delta_cyc = `arccos(exp(mean ln cos Delta))` "
        "over every step from the first event to the end; corrected: the same with the "
        "boundary term `ln(rho_end/rho_start)/n` removed, which equals Delta* exactly for "
        "plain SGD on an SI loss, periodic or not (see `_cycle_angle`). "
        "rho*: `theory.equilibrium` with the measured RMS of the sphere gradient norm "
        "(a consistency check, not a prediction from first principles). "
        "|radial|: largest `<g,w>/(|g||w|)` (0 for exact scale invariance).",
        "",
        "| run | Delta | Delta* | err | Delta_cyc | err | corrected | err | rho mean | rho* | "
        "err | max abs radial | train/test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        d = summary[n]
        cyc = _rel(d["cycle_angle"], d["angular_update_predicted"])
        cyc_err = _pct(cyc) if d["momentum"] == 0 else "n/a"
        lines.append(
            f"| {d['label']} | {_fmt(d['angular_update_rms'])} | "
            f"{_fmt(d['angular_update_predicted'])} | "
            f"{_pct(_rel(d['angular_update_rms'], d['angular_update_predicted']))} | "
            f"{_fmt(d['cycle_angle'])} | "
            f"{cyc_err} | {_fmt(d['cycle_angle_corrected'], '.4g')} | "
            f"{_pct3(_rel(d['cycle_angle_corrected'], d['angular_update_predicted']))} | "
            f"{_fmt(d['norm_mean'])} | {_fmt(d['norm_predicted'])} | "
            f"{_pct(_rel(d['norm_mean'], d['norm_predicted']))} | "
            f"{_fmt(d['radial_abs_max'], '.1e')} | "
            f"{_fmt(d['train_acc'], '.3f')}/{_fmt(d['test_acc'], '.3f')} |"
        )
    pairs = summary.get("_pairs") or []
    if pairs:
        lines += [
            "",
            "## Pairs with equal lr*wd (GD, same initialization)",
            "",
            "| net | lr*wd | run a | run b | T a / b | Delta a / b | elr at events a / b | "
            "norm ratio a / b | events a / b |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pairs:

            def ab(key: str, spec: str = ".3g", p: dict[str, Any] = p) -> str:
                return f"{_fmt(p[key][0], spec)} / {_fmt(p[key][1], spec)}"

            lines.append(
                f"| {p['net']} | {_fmt(p['lrwd'])} | {p['a']} | {p['b']} | {ab('period', '.0f')} | "
                f"{ab('angle_rms')} | {ab('elr_at_events')} | {ab('norm_ratio')} | "
                f"{ab('n_events', 'd')} |"
            )
    sym = summary.get("_symmetry")
    if sym:
        first_bad = sym["first_step_elr_differs_1pct"]
        first_bad = "never" if first_bad is None else first_bad
        lines += [
            "",
            "## Exact scale symmetry",
            "",
            f"`mlp_gd_sym` runs (2.5 lr, wd/2.5) from the SI weights of `mlp_gd_0` scaled by "
            f"sqrt(2.5). Theory (section 0, exact for SI losses): identical directions, "
            f"effective LR and angular updates. Over the first 1000 steps the effective LR "
            f"differs by at most {sym['max_rel_elr_first_1000_steps']:.1e} (relative) and the "
            f"angular update by {sym['max_rel_angle_first_1000_steps']:.1e}; the effective LR "
            f"first differs by more than 1% at step "
            f"{first_bad}"
            f" of {sym['steps']} (float32 rounding and BatchNorm's eps, amplified at each "
            f"destabilization).",
        ]
    text = "\n".join(lines) + "\n"
    with atomic_write(path) as fh:
        fh.write(text)
    return text


def _figures(
    runs: Sequence[Run], trajs: dict[str, Trajectory], results: dict[str, Any], figures: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siflow import overlay
    from siflow.plot import save_figure

    ensure_dir(figures)
    by_name = {r.name: r for r in runs}
    # 1. one four-panel overlay per network (the reference GD run)
    for net in ("convnet", "mlp"):
        name = f"{net}_gd_2" if f"{net}_gd_2" in results else None
        if name is None:
            name = next((n for n in results if n.startswith(f"{net}_gd")), None)
        if name is None:
            continue
        fig = overlay.draw(
            trajs[name], results[name]["res"], None, title=f"{by_name[name].label} (digits)"
        )
        save_figure(fig, figures / f"nn_{net}_overlay.png")
        plt.close(fig)
    # 2. periods vs lr*wd with the calibrated prediction
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, net in zip(axes, ("convnet", "mlp"), strict=True):
        xs = np.geomspace(8e-4, 1.2e-2, 50)
        ref = next(
            (
                results[n]["d"]
                for n in results
                if results[n]["d"].get("period_reference") == n and n.startswith(net)
            ),
            None,
        )
        if ref is not None:
            ax.plot(
                xs,
                ref["period_median"] * ref["decay_rate_predicted"] / xs,
                "k-",
                lw=1,
                label="T ~ 1/(-ln q), calibrated on the ref run",
            )
        for name, r in results.items():
            d = r["d"]
            if d["config"]["net"] != net or d["period_median"] is None:
                continue
            x_eff = d["decay_rate_predicted"]
            style = {
                (0, 0.0): ("o", "C0", "GD"),
                (0, 0.9): ("s", "C1", "GD, momentum 0.9 (x = -ln q)"),
                (1, 0.0): ("^", "C2", "SGD b128"),
                (1, 0.9): ("v", "C3", "SGD b128, momentum 0.9 (x = -ln q)"),
            }[(int(d["config"]["batch"] > 0), d["momentum"])]
            pers = np.asarray(d["periods"], dtype=float)
            ax.plot(np.full(pers.size, x_eff), pers, style[0], color=style[1], alpha=0.25, ms=4)
            ax.plot(
                [x_eff],
                [d["period_median"]],
                style[0],
                color=style[1],
                ms=8,
                mec="k",
                label=style[2],
            )
            if d.get("period_reference") == name:
                ax.annotate(
                    "ref",
                    (x_eff, d["period_median"]),
                    xytext=(8, -12),
                    textcoords="offset points",
                    fontsize=8,
                )
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("per-step norm decay -ln q  (= -ln(1 - lr wd) without momentum)")
        ax.set_ylabel("period (steps)")
        ax.set_title(f"{net}: periods (small: each cycle, large: median)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, figures / "nn_periods.png")
    plt.close(fig)
    # 3. threshold: elr * S over time against 2(1 - lr wd)
    show = [n for n in ("convnet_gd_2", "mlp_gd_2", "convnet_gd_5", "mlp_gd_5") if n in trajs]
    if not show:
        show = [n for n in trajs if trajs[n].sharpness_sphere is not None][:2]
    if show:
        fig, axes = plt.subplots(len(show), 1, figsize=(10, 2.4 * len(show)), squeeze=False)
        for ax, n in zip(axes[:, 0], show, strict=True):
            t = trajs[n]
            ok = np.isfinite(t.sharpness_sphere)
            ax.plot(
                t.step[ok],
                (t.elr * t.sharpness_sphere)[ok],
                ".-",
                ms=3,
                lw=0.8,
                label="elr x S (measured)",
            )
            run = by_name[n]
            ax.axhline(2 * (1 - run.lrwd), color="r", ls="--", lw=1, label="2(1 - lr wd)")
            for s in results[n]["res"].events.steps:
                ax.axvline(s, color="0.6", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_ylabel("elr x S")
            ax.set_title(run.label, fontsize=9)
            ax.legend(fontsize=8, loc="upper left")
        axes[-1, 0].set_xlabel("step (dotted: detected destabilizations)")
        fig.tight_layout()
        save_figure(fig, figures / "nn_threshold.png")
        plt.close(fig)
    # 4. equal lr*wd pairs and the exact symmetry run
    sets = [
        ("mlp_gd_0", "mlp_gd_1", "mlp_gd_sym"),
        ("convnet_gd_0", "convnet_gd_1"),
        ("mlp_gd_3", "mlp_gd_4"),
        ("convnet_gd_3", "convnet_gd_4"),
    ]
    sets = [s for s in sets if all(n in trajs for n in s[:2])]
    if sets:
        fig, axes = plt.subplots(len(sets), 1, figsize=(10, 2.5 * len(sets)), squeeze=False)
        for ax, names in zip(axes[:, 0], sets, strict=True):
            for k, n in enumerate(names):
                if n not in trajs:
                    continue
                t = trajs[n]
                ax.plot(
                    t.step,
                    t.elr,
                    lw=1.6 if k < 2 else 0.8,
                    ls="-" if k < 2 else "--",
                    color=f"C{k}",
                    label=by_name[n].label
                    + (" (SI weights x sqrt(2.5) at init)" if k == 2 else ""),
                )
            ax.set_yscale("log")
            ax.set_ylabel("effective LR")
            ax.legend(fontsize=8, loc="upper left")
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(
            "Equal lr*wd, same initialization (they differ only in the initial effective LR); "
            "dashed: exact symmetry",
            fontsize=10,
        )
        fig.tight_layout()
        save_figure(fig, figures / "nn_equal_lrwd.png")
        plt.close(fig)
    # 5. where invariance breaks: BatchNorm's eps at small norms
    broken = [
        n
        for n in trajs
        if "radial" in trajs[n].extra and np.nanmax(np.abs(trajs[n].extra["radial"])) > 1e-2
    ]
    if broken:
        good = next((n for n in ("convnet_gd_2", "mlp_gd_2") if n in trajs), None)
        broken.sort(key=lambda n: -float(np.nanmax(np.abs(trajs[n].extra["radial"]))))
        names = broken[:3] + ([good] if good and good not in broken[:3] else [])
        fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
        for k, n in enumerate(names):
            t = trajs[n]
            lab = by_name[n].label
            axes[0].plot(t.step, t.rho, lw=1, color=f"C{k}", label=lab)
            axes[1].plot(t.step, np.abs(t.extra["radial"]), lw=0.8, color=f"C{k}", label=lab)
            axes[2].plot(t.step, _angle_series(t), lw=0.6, color=f"C{k}", label=lab)
            d = results[n]["d"]
            if d["angular_update_predicted"]:
                axes[2].axhline(d["angular_update_predicted"], color=f"C{k}", ls="--", lw=1)
        axes[0].set_ylabel("weight norm rho")
        axes[1].set_ylabel("|<g,w>| / (|g||w|)")
        axes[2].set_ylabel("angular update (dashed: Delta*)")
        for ax in axes:
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        axes[1].set_title(
            "radial gradient component: 0 for an exactly SI loss; BatchNorm's eps breaks "
            "invariance once the norm is small",
            fontsize=9,
        )
        axes[2].set_xlabel("step")
        fig.tight_layout()
        save_figure(fig, figures / "nn_eps.png")
        plt.close(fig)
    # 6. angular update vs theory: GD, SGD, momentum
    show = [
        n
        for n in (
            "convnet_gd_2",
            "convnet_sgd_0",
            "convnet_gd_mom",
            "convnet_sgd_mom",
            "mlp_gd_2",
            "mlp_sgd_0",
            "mlp_gd_mom",
            "mlp_sgd_mom",
        )
        if n in trajs
    ]
    if not show:
        show = list(trajs)[:4]
    ncol = 2
    nrow = math.ceil(len(show) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, 2.3 * nrow), squeeze=False)
    for ax, n in zip(axes.ravel(), show, strict=False):
        t, d = trajs[n], results[n]["d"]
        ax.plot(t.step, _angle_series(t), lw=0.5, color="C0", label="angular update (RMS per row)")
        if d["angular_update_predicted"]:
            ax.axhline(
                d["angular_update_predicted"],
                color="r",
                ls="--",
                lw=1.2,
                label=f"theory Delta* = {d['angular_update_predicted']:.3g}",
            )
        if d["angular_update_rms"]:
            ax.axhline(
                d["angular_update_rms"],
                color="k",
                ls=":",
                lw=1.2,
                label=f"measured RMS = {d['angular_update_rms']:.3g}",
            )
        ax.set_yscale("log")
        ax.set_title(by_name[n].label, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes.ravel()[len(show) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, figures / "nn_angular_update.png")
    plt.close(fig)


def check_sharpness(out: Path, threads: int) -> str:
    """Recorder sharpness (12 warm-started iterations) vs 300 cold iterations, ConvNet GD.

    Retrains the first ~1000 steps of ``convnet_gd_2`` and, every 50 steps from step
    700 (the first destabilization is near step 945), measures the unit-sphere
    sharpness with :func:`siflow.torch_probe.sphere_sharpness` (300 iterations, tol
    1e-7) next to the recorder's own value. Writes ``<out>/sharpness_check.md``.
    """
    torch = require("torch", "torch", '"torch==2.13.0"')
    from siflow.torch_probe import SIRecorder, sphere_sharpness

    torch.set_num_threads(threads)
    xtr, ytr, _, _ = load_data()
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    torch.manual_seed(0)
    model = build("convnet", torch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5, weight_decay=4e-3)

    def loss_fn() -> Any:
        return torch.nn.functional.cross_entropy(model(X), Y)

    rec = SIRecorder(
        model,
        opt,
        every=5,
        sharpness_every=50,
        sharpness_loss=loss_fn,
        sharpness_iters=12,
        sharpness_tol=1e-3,
    )
    accurate = {}
    for step in range(1000):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        if step >= 700 and step % 50 == 0:
            accurate[step] = sphere_sharpness(
                loss_fn, rec.groups, iters=300, tol=1e-7, model=model
            )[1]
        opt.step()
    t = rec.trajectory()
    lines = [
        "| step | S recorder | S 300 iterations | rel. diff | elr*S |",
        "|---|---|---|---|---|",
    ]
    for step, s_ref in accurate.items():
        k = int(np.flatnonzero(t.step == step)[0])
        s_rec = float(t.sharpness_sphere[k])
        lines.append(
            f"| {step} | {s_rec:.5g} | {s_ref:.5g} | {s_rec / s_ref - 1:+.1e} | "
            f"{float(t.elr[k]) * s_rec:.3g} |"
        )
    text = "\n".join(lines) + "\n"
    with atomic_write(out / "sharpness_check.md") as fh:
        fh.write(text)
    return text


# ------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="nn_periodic.py",
        description="Train SI networks on digits, record SI metrics, compare with theory.",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run (< 3 min)")
    parser.add_argument("--out", default=None, help="log and table directory")
    parser.add_argument("--figures", default=None, help="figure directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 or 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel")
    parser.add_argument("--force", action="store_true", help="retrain even if a log exists")
    parser.add_argument("--analyze-only", action="store_true", help="no training")
    parser.add_argument("--only", default=None, help="comma-separated run names to train")
    parser.add_argument(
        "--update-data",
        action="store_true",
        help="train into and write the tables to analysis/data/nn (the committed logs)",
    )
    parser.add_argument(
        "--update-figures", action="store_true", help="write the figures to figures/ (committed)"
    )
    parser.add_argument(
        "--check-sharpness",
        action="store_true",
        help="compare the recorder's sharpness with a 300-iteration power iteration",
    )
    args = parser.parse_args(argv)
    if args.threads not in (1, 2):
        raise ValueError(f"--threads must be 1 or 2 (the machine is shared), got {args.threads}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    committed = ROOT / "analysis" / "data" / "nn"
    if args.quick and (args.update_data or args.update_figures):
        raise ValueError(
            "--quick runs are not the committed ones; drop --update-data/--update-figures"
        )
    if args.update_data:
        out = ensure_dir(committed)
    else:
        out = ensure_dir(args.out or ("runs/nn_quick" if args.quick else "runs/nn_periodic"))
    # logs: the committed ones for --analyze-only (and --update-data), else the output directory
    logs = committed if (args.analyze_only or args.update_data) and not args.quick else out
    # figures: figures/ with --update-figures; never into the committed data folder (logs
    # and tables only), so --update-data alone draws them in runs/nn_periodic
    default_figures = ROOT / "runs" / "nn_periodic" if args.update_data else out
    figures = ensure_dir(
        args.figures or (ROOT / "figures" if args.update_figures else default_figures)
    )
    runs = make_runs(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r.name for r in runs}
        if unknown:
            raise ValueError(f"--only names unknown runs {sorted(unknown)}")
        todo = [r for r in runs if r.name in wanted]
    else:
        todo = runs
    if args.check_sharpness:
        print(check_sharpness(logs, args.threads))
        return 0
    if not args.analyze_only:
        todo = [r for r in todo if args.force or not _cached(r, logs)]
        todo.sort(key=_cost, reverse=True)  # longest first keeps parallel workers busy
        t0 = time.perf_counter()
        if args.jobs == 1:
            for r in todo:
                info = train(r, logs, args.threads)
                print(f"{info['name']}: {info['rows']} rows, {info['seconds']:.0f} s", flush=True)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
                futs = [pool.submit(train, r, logs, args.threads) for r in todo]
                for f in futs:
                    info = f.result()
                    print(
                        f"{info['name']}: {info['rows']} rows, {info['seconds']:.0f} s", flush=True
                    )
        print(f"trained {len(todo)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = analyze_all(runs, logs, figures)
    cmd = "python analysis/nn_periodic.py" + (" --quick" if args.quick else "")
    text = write_markdown(summary, out / "results.md", cmd)
    with atomic_write(out / "results.json") as fh:
        json.dump(summary, fh, indent=1, default=_json_default)
    print(text)
    print(f"logs in {logs}; tables in {out}; figures in {figures}")
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {obj!r}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(run_main(main, prog="nn_periodic.py"))
