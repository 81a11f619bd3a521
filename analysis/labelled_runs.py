"""A labelled set of real scale-invariant training runs, and the event tools measured on it.

Trains small fully scale-invariant networks with PyTorch on two data sets that ship inside
packages (scikit-learn's ``load_digits`` and ``mnist1d``'s ``make_dataset()``, generated
locally, no download): an MLP, a ConvNet and a small residual network, each weight matrix
followed by BatchNorm without affine terms, the last layer rescaled to Frobenius norm 10
and frozen. Full-batch GD and minibatch SGD (batch 128), momentum 0 and 0.9, ``lr*wd``
from 1e-3 to 1e-2. Every run is recorded with :class:`siflow.torch_probe.SIRecorder`.

The destabilizations of every run were checked by eye against its plotted norm and loss
curves; the checked lists are ``analysis/data/labelled/labels.json``. The script measures

- the detector (:func:`siflow.periods.find_events`): recall and precision against the labels;
- the calibrated period prediction (:func:`siflow.predict.predict_period`), calibrated on
  one run per (data set, network) and predicting the others;
- the forecast of the next destabilization (:func:`siflow.forecast.forecast_next_event`)
  on every log cut half-way through a cycle after at least two events.

Usage::

    python analysis/labelled_runs.py train            # cached; --force retrains
    python analysis/labelled_runs.py evaluate         # tables to runs/labelled/
    python analysis/labelled_runs.py plot             # one PNG per run, for the by-eye check
    python analysis/labelled_runs.py evaluate --update-figures --update-data  # committed
                                                     # figures/forecast*.png and tables
    python analysis/labelled_runs.py seeds --seeds 1,2  # the GD runs at other seeds: how
                                                     # far the period moves with the seed
    python analysis/labelled_runs.py sparse          # the detector on every k-th row

Training writes logs to ``runs/labelled/logs`` unless ``--update-data`` (then to
``analysis/data/labelled``); evaluation reads ``analysis/data/labelled`` unless ``--logs``.
``seeds`` trains its runs into ``runs/labelled/seeds`` (about 20 minutes on one core) and
writes its tables to ``runs/labelled``; with ``--update-data`` the tables and the
rescaled-start logs go to ``analysis/data/seeds`` (committed).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siflow._cli import ArgumentParser, run_main
from siflow._fileio import atomic_write, ensure_dir, json_ready, require
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "analysis" / "data" / "labelled"
SEEDS_DATA = ROOT / "analysis" / "data" / "seeds"
N_TRAIN = 512
LAST_LAYER_NORM = 10.0


@dataclass(frozen=True)
class Run:
    """One training run of the labelled set."""

    name: str
    data: str  # "digits" or "mnist1d"
    net: str  # "mlp", "convnet" or "resnet"
    lr: float
    wd: float
    steps: int
    momentum: float = 0.0
    batch: int = 0  # 0 = full batch (GD)
    every: int = 1
    seed: int = 0
    sharpness_every: int = 0  # steps between sphere-sharpness measurements (0: none)
    init_scale: float = 1.0  # the trained weights' initial values times this
    bn_eps: float = 1e-5  # BatchNorm's eps (PyTorch's default)
    nesterov: bool = False  # PyTorch's SGD(nesterov=True) (analysis/nesterov_runs.py)

    @property
    def optimizer(self) -> str:
        kind = "gd" if self.batch == 0 else "sgd"
        return kind + ("_nes" if self.nesterov else "_mom" if self.momentum else "")

    @property
    def family(self) -> str:
        """Runs that share a landscape: same data set, network and optimizer kind."""
        return f"{self.data}_{self.net}"


#: Length of the plain GD runs in units of the free-decay time ``2/(lr wd)`` (the SGD and
#: momentum runs: 6). A run's median period is the measured truth of the period prediction; with
#: 3-4 periods of 16-33 % scatter it is itself uncertain by about 15 %, with 12-15 by
#: about 8 %.
GD_CYCLES = 15


def _steps(lrwd: float, mu: float, cycles: float) -> int:
    eff = lrwd / (1.0 - mu)
    return int(round(cycles * 2.0 / eff / 100.0) * 100)


def _sharpness_runs() -> list[Run]:
    """Digits GD runs with the unit-sphere sharpness logged every 4 steps (another seed)."""
    runs = []
    for net in ("mlp", "convnet", "resnet"):
        runs.append(
            Run(
                f"digits_{net}_gd_lr1_wd0.01_sharp",
                "digits",
                net,
                1.0,
                1e-2,
                _steps(1e-2, 0.0, GD_CYCLES),
                seed=1,
                sharpness_every=4,
            )
        )
    return runs


def make_runs() -> list[Run]:
    """The grid of the labelled set (about 30 minutes on one core)."""
    runs: list[Run] = []
    for data in ("digits", "mnist1d"):
        if data == "mnist1d":
            runs += _sharpness_runs()
        for net in ("mlp", "convnet", "resnet"):
            base = f"{data}_{net}"
            gd = [(1.0, 1e-2), (0.5, 2e-2), (0.5, 1e-2)]
            if net == "mlp":
                gd += [(0.5, 5e-3), (0.1, 1e-2)]
            for lr, wd in gd:
                lrwd = lr * wd
                every = 1 if lrwd >= 2e-3 else 2
                runs.append(
                    Run(
                        f"{base}_gd_lr{lr:g}_wd{wd:g}",
                        data,
                        net,
                        lr,
                        wd,
                        _steps(lrwd, 0.0, GD_CYCLES),
                        every=every,
                    )
                )
            for lr, wd in ((1.0, 1e-2), (0.5, 1e-2)):
                runs.append(
                    Run(
                        f"{base}_sgd_lr{lr:g}_wd{wd:g}",
                        data,
                        net,
                        lr,
                        wd,
                        _steps(lr * wd, 0.0, 6),
                        batch=128,
                    )
                )
            for batch in (0, 128) if net == "mlp" else (128,):
                kind = "gdmom" if batch == 0 else "sgdmom"
                runs.append(
                    Run(
                        f"{base}_{kind}_lr0.1_wd0.01",
                        data,
                        net,
                        0.1,
                        1e-2,
                        _steps(1e-3, 0.9, 6),
                        momentum=0.9,
                        batch=batch,
                    )
                )
    return runs


def seed_runs(seeds: Sequence[int]) -> list[Run]:
    """The plain GD runs of the grid whose networks cycle, retrained at other ``seeds``.

    Same configurations as :func:`make_runs` (names end in ``_seed<s>``); the
    networks whose GD runs hold three or more labelled events (the digits networks and
    the mnist1d MLP). They measure how far a run's median period moves with the seed
    alone, the reproducibility against which the period prediction is judged.
    """
    cycling = {"digits_mlp", "digits_convnet", "digits_resnet", "mnist1d_mlp"}
    return [
        Run(**{**asdict(run), "name": f"{run.name}_seed{s}", "seed": int(s)})
        for s in seeds
        for run in make_runs()
        if run.family in cycling and run.optimizer == "gd" and not run.sharpness_every
    ]


def init_scaled_runs() -> list[Run]:
    """The seed-0 GD runs at lr=1, wd=0.01 and lr=0.5, wd=0.02 of :func:`seed_runs`'
    networks, each started from its initial weights rescaled to the other's equivalent.

    Every trained weight of these networks is scale-invariant, so GD at ``(lr, wd)``
    from ``w0`` is GD at ``(lr/c^2, wd c^2)`` from ``w0/c`` in the rescaled weights
    ``w/c`` (``docs/theory.md`` §0): the run at lr=0.5, wd=0.02 from ``w0`` is the run
    at lr=1, wd=0.01 from ``sqrt(2) w0``. The two configurations share ``lr wd`` and
    differ only in where they start. Names end in ``_init<scale>``.
    """
    half = math.sqrt(0.5)
    scales = {(1.0, 1e-2): 1.0 / half, (0.5, 2e-2): half}
    out = []
    for run in seed_runs([0]):
        scale = scales.get((run.lr, run.wd))
        if scale is not None:
            name = f"{_base_name(run.name)}_init{scale:.4g}"
            out.append(Run(**{**asdict(run), "name": name, "init_scale": scale}))
    return out


#: BatchNorm eps of the exactly scale-invariant runs (:func:`exact_si_runs`).
EXACT_SI_EPS = 1e-30


def exact_si_runs(seeds: Sequence[int]) -> list[Run]:
    """The residual network's GD runs at lr=1, wd=0.01 and lr=0.5, wd=0.02 (one lr*wd) at
    seed 0 and ``seeds``, with BatchNorm's eps at :data:`EXACT_SI_EPS` (PyTorch's
    default 1e-5 breaks scale invariance where a variance is small against it).

    With an exactly scale-invariant network the two configurations differ only in the
    initial norm (``docs/theory.md`` §0); their periods measure how far the realizations
    of one configuration scatter. Names end in ``_seed<s>_exactsi``.
    """
    grid = {r.name: r for r in make_runs()}
    return [
        Run(
            **{
                **asdict(grid[f"digits_resnet_gd_{cfg}"]),
                "name": f"digits_resnet_gd_{cfg}_seed{s}_exactsi",
                "seed": int(s),
                "bn_eps": EXACT_SI_EPS,
            }
        )
        for cfg in ("lr1_wd0.01", "lr0.5_wd0.02")
        for s in (0, *seeds)
    ]


# ------------------------------------------------------------------------ training
@functools.lru_cache(maxsize=2)
def load_data(name: str) -> tuple[Any, Any]:
    """Training inputs and labels: the first ``N_TRAIN`` samples, float32 inputs, int64 labels."""
    if name == "digits":
        datasets = require("sklearn.datasets", "analysis", "scikit-learn")
        d = datasets.load_digits()
        order = np.random.default_rng(0).permutation(len(d.target))
        x = (d.data[order] / 16.0).astype(np.float32)
        y = d.target[order].astype(np.int64)
    elif name == "mnist1d":
        mdata = require("mnist1d.data", "analysis", "mnist1d")
        d = mdata.make_dataset()  # generated from its templates, no download
        x = np.asarray(d["x"], dtype=np.float32)
        y = np.asarray(d["y"], dtype=np.int64)
        x = (x - x.mean()) / x.std()
    else:
        raise ValueError(f"data must be 'digits' or 'mnist1d', got {name!r}")
    return x[:N_TRAIN], y[:N_TRAIN]


def build(net: str, data: str, torch: Any, bn_eps: float = 1e-5) -> Any:
    """A scale-invariant network: every trained weight is followed by an affine-free BN.

    BatchNorm divides by ``sqrt(var + bn_eps)``; PyTorch's default ``bn_eps = 1e-5`` makes
    the network scale-invariant only where the variance is large against it.
    """
    nn = torch.nn
    two_d = data == "digits"
    n_in = dim = 64 if two_d else 40
    conv = nn.Conv2d if two_d else nn.Conv1d
    bn = functools.partial(nn.BatchNorm2d if two_d else nn.BatchNorm1d, affine=False, eps=bn_eps)
    pool = nn.MaxPool2d if two_d else nn.MaxPool1d
    shape = (1, 8, 8) if two_d else (1, 40)
    if net == "mlp":
        layers: list[Any] = []
        for _ in range(3):
            layers += [
                nn.Linear(n_in, 64, bias=False),
                nn.BatchNorm1d(64, affine=False, eps=bn_eps),
                nn.ReLU(),
            ]
            n_in = 64
        layers += [nn.Linear(64, 10)]
        model = nn.Sequential(*layers)
    elif net == "convnet":
        layers = [nn.Unflatten(1, shape)]
        c_in = 1
        for c in (8, 16, 32):
            layers += [
                conv(c_in, c, 3, padding=1, bias=False),
                bn(c),
                nn.ReLU(),
                pool(2),
            ]
            c_in = c
        layers += [nn.Flatten(), nn.LazyLinear(10)]
        model = nn.Sequential(*layers)
    elif net == "resnet":

        class Block(nn.Module):
            def __init__(self, c: int) -> None:
                super().__init__()
                self.c1, self.b1 = conv(c, c, 3, padding=1, bias=False), bn(c)
                self.c2, self.b2 = conv(c, c, 3, padding=1, bias=False), bn(c)

            def forward(self, x: Any) -> Any:
                return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

        model = nn.Sequential(
            nn.Unflatten(1, shape),
            conv(1, 8, 3, padding=1, bias=False),
            bn(8),
            nn.ReLU(),
            Block(8),
            pool(2),
            Block(8),
            nn.Flatten(),
            nn.LazyLinear(10),
        )
    else:
        raise ValueError(f"net must be 'mlp', 'convnet' or 'resnet', got {net!r}")
    with torch.no_grad():
        model(torch.zeros(2, dim))  # materialise the lazy last layer
    from siflow.torch_probe import freeze_classifier

    freeze_classifier(model[-1], LAST_LAYER_NORM)  # seed paper: norm 10, frozen
    return model


def train(run: Run, out: Path) -> dict[str, Any]:
    """Train one run with one torch thread, record it, save ``out/<name>.npz``."""
    torch = require("torch", "torch", '"torch==2.13.0"')
    from siflow.torch_probe import SIRecorder

    torch.set_num_threads(1)
    nn = torch.nn
    xtr, ytr = load_data(run.data)
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    torch.manual_seed(run.seed)
    model = build(run.net, run.data, torch, run.bn_eps)
    params = [p for p in model.parameters() if p.requires_grad]
    if run.init_scale != 1.0:
        with torch.no_grad():
            for p in params:
                p.mul_(run.init_scale)
    opt = torch.optim.SGD(
        params, lr=run.lr, momentum=run.momentum, weight_decay=run.wd, nesterov=run.nesterov
    )
    path = out / f"{run.name}.npz"

    def full_loss() -> Any:
        return nn.functional.cross_entropy(model(X), Y)

    rec = SIRecorder(
        model,
        opt,
        every=run.every,
        sharpness_every=run.sharpness_every or None,
        sharpness_loss=full_loss if run.sharpness_every else None,
        sharpness_iters=12,
        sharpness_tol=1e-3,
        meta={
            "config": asdict(run),
            "dataset": f"{run.data}, {N_TRAIN} training samples",
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
    traj = rec.trajectory()
    keep = ("rho", "elr", "loss", "grad_norm", "angular_update", "sharpness_sphere")
    for key in [k for k in traj.extra if k not in keep]:
        del traj.extra[key]  # per-group and derivable columns: dropped to keep the logs small
    traj.meta.update({"status": status, "seconds": seconds})
    traj.save(path)
    return {"name": run.name, "seconds": round(seconds, 1), "rows": len(traj), "status": status}


def _cached(run: Run, out: Path) -> bool:
    path = out / f"{run.name}.npz"
    if not path.is_file():
        return False
    try:
        meta = Trajectory.load(path).meta
    except ValueError:
        return False
    stored = dict(meta.get("config") or {})
    stored.setdefault("sharpness_every", 0)  # logs written before the fields existed
    stored.setdefault("init_scale", 1.0)
    stored.setdefault("bn_eps", 1e-5)
    stored.setdefault("nesterov", False)
    return stored == json.loads(json.dumps(asdict(run)))


def _train_all(runs: Sequence[Run], out: Path, force: bool = False) -> None:
    for run in runs:
        if _cached(run, out) and not force:
            print(f"cached {run.name}")
            continue
        info = train(run, out)
        print(json.dumps(info), flush=True)


def cmd_train(args: Any) -> int:
    out = ensure_dir(DATA if args.update_data else Path(args.out or ROOT / "runs/labelled/logs"))
    runs = make_runs()
    if args.only:
        wanted = set(args.only.split(","))
        runs = [r for r in runs if r.name in wanted]
    _train_all(runs, out, args.force)
    print(f"logs in {out}")
    return 0


def load_logs(logs: Path) -> dict[str, Trajectory]:
    """Every log of the grid present in ``logs``, by run name (grid order)."""
    out = {}
    for run in make_runs():
        path = logs / f"{run.name}.npz"
        if path.is_file():
            out[run.name] = Trajectory.load(path)
    if not out:
        raise ValueError(f"no labelled logs in {logs}; train them first (train --update-data)")
    return out


def load_labels(path: Path = DATA / "labels.json", key: str = "events") -> dict[str, list[int]]:
    """The by-eye event lists: run name -> event steps (``key="ambiguous"``: the cases
    the eye cannot decide, counted neither as hits nor as false detections)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: [int(v) for v in vals] for k, vals in data.get(key, {}).items()}


def cmd_plot(args: Any) -> int:
    """One figure per group of runs: ln rho and loss with detected and labelled events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siflow.periods import find_events

    out = ensure_dir(Path(args.out or ROOT / "runs/labelled/plots"))
    trajs = load_logs(Path(args.logs))
    labels = load_labels()
    names = [n for n in trajs if not args.only or n in args.only.split(",")]
    per = 6
    for g in range(0, len(names), per):
        group = names[g : g + per]
        fig, axs = plt.subplots(len(group), 1, figsize=(14, 2.4 * len(group)), squeeze=False)
        for ax, name in zip(axs[:, 0], group, strict=True):
            t = trajs[name]
            ax.plot(t.step, np.log(t.rho), "b-", lw=0.8)
            ax.set_ylabel("ln rho", color="b")
            a2 = ax.twinx()
            a2.semilogy(t.step, t.loss, "r-", lw=0.4, alpha=0.6)
            loose = find_events(t, min_rise_speed=0, min_peak_fraction=0, fitted_fraction=0)
            for st in loose.steps:
                ax.axvline(st, color="orange", lw=1.0, ls=":")
            ev = find_events(t)
            for st in ev.steps:
                ax.axvline(st, color="g", lw=1.5, alpha=0.6)
            for st in labels.get(name, []):
                ax.axvline(st, color="k", lw=0.8, ls="--")
            ax.set_title(f"{name}: detected {ev.steps.tolist()}", fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"plots_{g // per:02d}.png"
        fig.savefig(path, dpi=65)
        plt.close(fig)
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- evaluation
def evaluate_detector(trajs: dict[str, Trajectory], labels: dict[str, list[int]]) -> dict[str, Any]:
    """Recall and precision of :func:`siflow.periods.find_events` against the labels
    (:func:`siflow.periods.score_detector`; the ambiguous labels are not scored)."""
    from siflow.periods import score_detector

    return score_detector(trajs, labels, load_labels(key="ambiguous"))


#: Logging intervals of :func:`detector_on_sparse_logs`: every k-th row kept.
SPARSE_EVERY = (1, 2, 5, 10)
#: Rows per cycle (median labelled period / k) that split its table.
ROWS_PER_CYCLE_EDGES = (10, 20, 40)


def every_kth_row(traj: Trajectory, k: int) -> Trajectory:
    """The log as if written every ``k`` steps: rows 0, k, 2k, ... (steps unchanged)."""
    return traj[np.arange(0, len(traj), k)]


def _rows_per_cycle_bin(rows: float) -> str:
    lo = 0
    for edge in ROWS_PER_CYCLE_EDGES:
        if rows < edge:
            return f"{lo}-{edge}" if lo else f"< {edge}"
        lo = edge
    return f">= {lo}"


def detector_on_sparse_logs(
    trajs: dict[str, Trajectory],
    labels: dict[str, list[int]],
    ambiguous: dict[str, list[int]] | None = None,
    every: Sequence[int] = SPARSE_EVERY,
) -> list[dict[str, Any]]:
    """Recall and precision of the detector on the logs thinned to every ``k``-th row.

    A log written every ``k`` steps resolves a cycle of ``T`` steps in ``T/k`` rows; a
    jump and its loss spike may then fall into a single row. Matching as in
    :func:`evaluate_detector` (its tolerance grows with the logging interval). Runs with
    fewer than two labelled events have no period and are left out of the per-bin counts.

    Returns
    -------
    list of dict
        Per ``k``: ``every``, ``tp``, ``fp``, ``fn``, and ``bins``: the same counts per
        range of rows per cycle (median labelled period / k, :data:`ROWS_PER_CYCLE_EDGES`).
    """
    from siflow.periods import score_detector

    out = []
    for k in every:
        thinned = {name: every_kth_row(t, k) for name, t in trajs.items()}
        res = score_detector(thinned, labels, ambiguous)
        bins: dict[str, dict[str, int]] = {}
        for row in res["runs"]:
            truth = labels[row["run"]]
            if len(truth) < 2:
                continue
            key = _rows_per_cycle_bin(float(np.median(np.diff(truth))) / k)
            counts = bins.setdefault(key, {"tp": 0, "fp": 0, "fn": 0})
            for c in counts:
                counts[c] += row[c]
        out.append({"every": k, **{c: res[c] for c in ("tp", "fp", "fn")}, "bins": bins})
    return out


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1%} ({a}/{b})" if b else "n/a"


def sparse_markdown(rows: list[dict[str, Any]], command: str) -> str:
    """The table of :func:`detector_on_sparse_logs`."""
    lines = [
        "# The detector on sparsely written logs",
        "",
        f"Written by `{command}`: the labelled logs thinned to every k-th row.",
        "",
        "| every k-th row | recall | precision |",
        "|---|---|---|",
    ]
    for r in rows:
        tp, fp, fn = r["tp"], r["fp"], r["fn"]
        lines.append(f"| {r['every']} | {_ratio(tp, tp + fn)} | {_ratio(tp, tp + fp)} |")
    order = [_rows_per_cycle_bin(v) for v in (0, *ROWS_PER_CYCLE_EDGES)]
    totals = {key: {"tp": 0, "fp": 0, "fn": 0} for key in order}
    for r in rows:
        for key, counts in r["bins"].items():
            for c in counts:
                totals[key][c] += counts[c]
    lines += [
        "",
        "By rows per cycle (median labelled period / k), over all k:",
        "",
        "| rows per cycle | recall | precision |",
        "|---|---|---|",
    ]
    for key in order:
        tp, fp, fn = (totals[key][c] for c in ("tp", "fp", "fn"))
        lines.append(f"| {key} | {_ratio(tp, tp + fn)} | {_ratio(tp, tp + fp)} |")
    return "\n".join(lines) + "\n"


def cmd_sparse(args: Any) -> int:
    trajs = load_logs(Path(args.logs))
    labels = load_labels()
    if not labels:
        raise ValueError("no labels: analysis/data/labelled/labels.json is missing")
    every = _every_list(args.every)
    rows = detector_on_sparse_logs(trajs, labels, load_labels(key="ambiguous"), every)
    out = ensure_dir(Path(args.out or ROOT / "runs/labelled"))
    md = sparse_markdown(rows, f"python analysis/labelled_runs.py sparse --every {args.every}")
    with atomic_write(out / "sparse.md", "w") as fh:
        fh.write(md)
    print(md)
    print(f"wrote {out / 'sparse.md'}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    """The comma-separated integers of a flag's value, in order (a ValueError naming the
    flag when one is not an integer)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _every_list(text: str) -> list[int]:
    every = _int_list(text, "--every")
    if not every or min(every) < 1:
        raise ValueError(f"--every must be comma-separated integers >= 1, got {text!r}")
    return every


def _kind(run: Run) -> str:
    if run.momentum:
        return "momentum"
    return "GD" if run.batch == 0 else "SGD"


def labelled_events(traj: Trajectory, steps: Sequence[int]) -> Any:
    """The labelled events of ``traj`` as :class:`siflow.periods.Events`: each at the row
    of its step, its peak the largest ``rho`` of its cycle (up to the next event), so
    that :func:`siflow.predict.transfer_period` can calibrate on the labels instead of
    the detector's events."""
    from siflow.periods import Events

    assert traj.rho is not None
    idx = np.searchsorted(traj.step, np.asarray(steps, dtype=np.int64))
    ends = [*idx[1:], len(traj)]
    peak = np.array([a + int(np.argmax(traj.rho[a:b])) for a, b in zip(idx, ends, strict=True)])
    return Events(
        steps=traj.step[idx].astype(np.int64),
        index=idx.astype(np.int64),
        periods=np.diff(traj.step[idx]).astype(np.float64),
        rho_before=traj.rho[idx],
        rho_after=traj.rho[peak],
        peak_index=peak.astype(np.int64),
        peak_steps=traj.step[peak].astype(np.int64),
        signal="rho",
    )


def evaluate_prediction(
    trajs: dict[str, Trajectory],
    labels: dict[str, list[int]],
    calibrate_on: str = "detector",
) -> dict[str, Any]:
    """Calibrate on one GD run per (data, network), predict the median period of the others.

    ``calibrate_on``: the calibration run's events from the detector
    (:func:`siflow.periods.find_events`, as a user would have them) or its ``"labels"``
    (:func:`labelled_events`: what the transfer gives with a perfect detector).
    """
    from siflow.periods import find_events
    from siflow.predict import transfer_period

    if calibrate_on not in ("detector", "labels"):
        raise ValueError(f"calibrate_on must be 'detector' or 'labels', got {calibrate_on!r}")

    runs = {r.name: r for r in make_runs()}
    rows = []
    for name, run in runs.items():
        cal_name = f"{run.family}_gd_lr0.5_wd0.01"
        if name == cal_name or name not in trajs or cal_name not in trajs:
            continue
        truth = labels.get(name, [])
        if len(truth) < 3:
            continue
        cal = trajs[cal_name]
        events = (
            find_events(cal)
            if calibrate_on == "detector"
            else labelled_events(cal, labels[cal_name])
        )
        pred = transfer_period(cal, run.lr, run.wd, run.momentum, events=events)
        measured = float(np.median(np.diff(truth)))
        periods = np.diff(truth).astype(float)
        rows.append(
            {
                "run": name,
                "calibration": cal_name,
                "kind": _kind(run),
                "lrwd": run.lr * run.wd,
                "measured": measured,
                "n_periods": int(periods.size),
                "period_cv": float(np.std(periods) / np.mean(periods)),
                "predicted": pred.period,
                "error": pred.period / measured - 1.0,
                "push_calibration": pred.details["push_calibration"],
                "jump": median_jump(trajs[name], truth),
                "jump_calibration": median_jump(cal, labels.get(cal_name, [])),
            }
        )
    summary: dict[str, Any] = {}
    for kind in ("GD", "SGD", "momentum"):
        errs = np.array([abs(r["error"]) for r in rows if r["kind"] == kind])
        if errs.size:
            summary[kind] = {
                "n": int(errs.size),
                "median_abs": float(np.median(errs)),
                "worst_abs": float(np.max(errs)),
            }
    err = np.log([r["predicted"] / r["measured"] for r in rows])
    ratio = np.log([r["jump_calibration"] / r["jump"] for r in rows])
    ok = np.isfinite(err) & np.isfinite(ratio)
    jumps = {
        "n": int(np.count_nonzero(ok)),
        "correlation": float(np.corrcoef(ratio[ok], err[ok])[0, 1]) if ok.sum() > 2 else math.nan,
        "slope": float(np.polyfit(ratio[ok], err[ok], 1)[0]) if ok.sum() > 2 else math.nan,
    }
    return {"runs": rows, "summary": summary, "jumps": jumps}


def median_jump(traj: Trajectory, events: Sequence[int]) -> float:
    """Median rise of ``ln rho`` per labelled event: ``ln(max rho over the cycle / rho
    one row before the event)``, over the cycles after the first (the first is the
    transient; all of them with fewer than two); NaN with fewer than two events.

    In the stationary cycle the norm falls between events by what it jumps, so with the
    decay speed held a period scales with its jump (``docs/theory.md``, "Transfer of the
    period").
    """
    if traj.rho is None or len(events) < 2:
        return math.nan
    rows = np.searchsorted(traj.step, events)
    jumps = np.array(
        [
            np.log(np.max(traj.rho[a:b]) / traj.rho[max(a - 1, 0)])
            for a, b in zip(rows[:-1], rows[1:], strict=True)
        ]
    )
    return float(np.median(jumps[1:] if jumps.size > 1 else jumps))


def _base_name(name: str) -> str:
    """A run's name without its ``_seed<s>`` suffix."""
    head, sep, tail = name.rpartition("_seed")
    return head if sep and tail.isdigit() else name


def _median_period(events: Any) -> float:
    """Median period of detected events, NaN with fewer than three events."""
    return float(np.median(events.periods)) if len(events) >= 3 else math.nan


def evaluate_seeds(
    logs: Path, seeds: Sequence[int], init_logs: Path | None = None
) -> dict[str, Any]:
    """How a run's median period and the transfer errors move with the seed alone.

    Every GD configuration of :func:`seed_runs` at seed 0 (the labelled log) and at
    ``seeds`` (``logs``): the median period from the detector's events
    (:func:`siflow.periods.find_events`, default parameters, the same on every seed;
    seed 0's labelled median beside it). Then

    - ``spread``: per configuration, the largest median period over the smallest, minus 1;
    - ``floor``: predicting a run by the same configuration at another seed (a perfect
      model of the configuration that knows nothing of the seed), the relative error over
      all ordered pairs;
    - ``transfer``: :func:`siflow.predict.transfer_period` calibrated on the GD run at
      lr=0.5, wd=0.01 of each network at each seed, predicting every other GD
      configuration at every seed, the errors grouped by calibration seed;
    - ``exact_si_resnet``: the median periods of :func:`exact_si_runs` found in ``logs``,
      by configuration and seed;
    - ``init_scaled``: the median period of each run of :func:`init_scaled_runs` found
      in ``init_logs`` (default ``logs``), beside those of its own configuration and of
      the configuration its start makes it equivalent to.
    """
    from siflow.periods import find_events

    all_seeds = [0, *[int(s) for s in seeds]]
    trajs = _seed_logs(logs, seeds)
    events = {key: find_events(t) for key, t in trajs.items()}
    configs = _seed_periods(events)
    floor = []
    for row in configs.values():
        t = {s: v for s, v in row["periods"].items() if math.isfinite(v)}
        row["spread"] = max(t.values()) / min(t.values()) - 1.0 if len(t) >= 2 else math.nan
        floor += [t[a] / t[b] - 1.0 for a in t for b in t if a != b]
    transfer = _transfer_by_calibration_seed(trajs, events, configs)
    summary = {
        s: {
            "n": len(rows),
            "median_abs": float(np.median([abs(r["error"]) for r in rows])),
            "worst_abs": float(max(abs(r["error"]) for r in rows)),
        }
        for s, rows in sorted(transfer.items())
    }
    exact: dict[str, dict[int, float]] = {}
    for run in exact_si_runs(seeds):
        path = logs / f"{run.name}.npz"
        if path.is_file():
            period = _median_period(find_events(Trajectory.load(path)))
            exact.setdefault(f"lr{run.lr:g}_wd{run.wd:g}", {})[run.seed] = period
    floor_abs = np.abs(np.asarray(floor))
    return {
        "exact_si_resnet": exact,
        "init_scaled": _init_scaled_rows(init_logs or logs, configs),
        "seeds": all_seeds,
        "configs": configs,
        "floor": {
            "n_pairs": int(floor_abs.size),
            "median_abs": float(np.median(floor_abs)) if floor_abs.size else math.nan,
            "worst_abs": float(np.max(floor_abs)) if floor_abs.size else math.nan,
        },
        "transfer": {str(s): rows for s, rows in transfer.items()},
        "transfer_summary": {str(s): v for s, v in summary.items()},
    }


def _seed_logs(logs: Path, seeds: Sequence[int]) -> dict[tuple[str, int], Trajectory]:
    """``(configuration, seed) -> log``: seed 0 from the labelled set, the others from
    ``logs`` (those present)."""
    grid = list({r.name: r for r in make_runs()})
    names = sorted({_base_name(r.name) for r in seed_runs(seeds)}, key=grid.index)
    trajs = {}
    for name in names:
        for s in (0, *seeds):
            path = DATA / f"{name}.npz" if s == 0 else logs / f"{name}_seed{s}.npz"
            if path.is_file():
                trajs[(name, int(s))] = Trajectory.load(path)
    return trajs


def _seed_periods(events: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """Per configuration: the median period and event count at each seed, and seed 0's
    labelled median period."""
    labels = load_labels()
    configs: dict[str, Any] = {}
    for (name, s), ev in events.items():
        row = configs.setdefault(name, {"periods": {}, "n": {}})
        row["periods"][s] = _median_period(ev)
        row["n"][s] = int(len(ev.periods))
        if s == 0 and len(labels.get(name, [])) >= 3:
            row["labelled"] = float(np.median(np.diff(labels[name])))
    return configs


def _transfer_by_calibration_seed(
    trajs: dict[tuple[str, int], Trajectory],
    events: dict[tuple[str, int], Any],
    configs: dict[str, Any],
) -> dict[int, list[dict[str, Any]]]:
    """:func:`siflow.predict.transfer_period` from each seed's lr=0.5, wd=0.01 run to
    every other configuration of its network at every seed."""
    from siflow.predict import transfer_period

    grid = {r.name: r for r in make_runs()}
    transfer: dict[int, list[dict[str, Any]]] = {}
    for (name, s), cal in trajs.items():
        if not name.endswith("_gd_lr0.5_wd0.01") or len(events[(name, s)]) < 3:
            continue
        for target, ts in trajs:
            run = grid[target]
            measured = configs[target]["periods"][ts]
            if run.family != grid[name].family or target == name or not math.isfinite(measured):
                continue
            pred = transfer_period(cal, run.lr, run.wd, run.momentum, events=events[(name, s)])
            transfer.setdefault(s, []).append(
                {
                    "target": target,
                    "target_seed": ts,
                    "measured": measured,
                    "predicted": pred.period,
                    "error": pred.period / measured - 1.0,
                }
            )
    return transfer


def _init_scaled_rows(logs: Path, configs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run of :func:`init_scaled_runs` present in ``logs``: its median period, and
    those of its own configuration and of the twin its start makes it equivalent to."""
    from siflow.periods import find_events

    grid = {r.name: r for r in make_runs()}
    rows = []
    for run in init_scaled_runs():
        path = logs / f"{run.name}.npz"
        if not path.is_file():
            continue
        start = run.name.rpartition("_init")[0]
        twin = next(  # the other configuration of the same network at the same lr*wd
            r.name
            for r in grid.values()
            if r.family == grid[start].family
            and math.isclose(r.lr * r.wd, run.lr * run.wd)
            and r.lr != run.lr
            and r.optimizer == "gd"
            and not r.sharpness_every
        )
        rows.append(
            {
                "run": run.name,
                "period": _median_period(find_events(Trajectory.load(path))),
                "own": configs[start]["periods"],
                "twin": twin,
                "twin_periods": configs[twin]["periods"],
            }
        )
    return rows


def _at_seed(by_seed: dict[Any, float], seed: Any) -> float:
    """``by_seed[seed]`` whether its keys are ints (as evaluated) or strings (as read back
    from JSON); NaN when absent."""
    return by_seed.get(int(seed), by_seed.get(str(seed), math.nan))


def seeds_markdown(res: dict[str, Any], command: str) -> str:
    """The tables of :func:`evaluate_seeds`."""
    seeds = res["seeds"]
    lines = [
        "# The labelled GD runs at other seeds: how much the period moves with the seed alone",
        "",
        f"Regenerate: `{command}` (trains the runs it lacks, then measures).",
        "",
        "Median period (steps) from the detector's events, default parameters, at each seed; "
        "seed 0 is the labelled log (its labelled median in brackets); spread = largest over "
        "smallest, minus 1.",
        "",
        "| configuration | " + " | ".join(f"seed {s}" for s in seeds) + " | spread |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name, row in res["configs"].items():
        cells = []
        for s in seeds:
            v = _at_seed(row["periods"], s)
            text = "n/a" if not math.isfinite(v) else f"{v:.0f}"
            if s == 0 and "labelled" in row:
                text += f" ({row['labelled']:.0f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(row['spread'])} |")
    fl = res["floor"]
    lines += [
        "",
        f"Reproducibility floor: a run's median period predicted by the same configuration at "
        f"another seed misses by a median {100 * fl['median_abs']:.0f}% and at worst "
        f"{100 * fl['worst_abs']:.0f}% ({fl['n_pairs']} ordered pairs).",
        "",
        "Period transfer (`siflow.predict.transfer_period`) calibrated on the GD run at lr=0.5, "
        "wd=0.01 of each network at one seed, predicting every other GD configuration of the "
        "network at every seed:",
        "",
        "| calibration seed | predictions | median abs error | worst abs error |",
        "|---|---|---|---|",
    ]
    for s, v in res["transfer_summary"].items():
        lines.append(
            f"| {s} | {v['n']} | {100 * v['median_abs']:.0f}% | {100 * v['worst_abs']:.0f}% |"
        )
    if res.get("init_scaled"):

        def periods(d: dict[Any, float]) -> str:
            vals = [v for v in d.values() if math.isfinite(v)]
            return ", ".join(f"{v:.0f}" for v in vals) or "n/a"

        lines += [
            "",
            "The same network at lr=1, wd=0.01 and at lr=0.5, wd=0.02 (one lr*wd) started from "
            "its seed-0 weights rescaled to the other configuration's equivalent start "
            "(`init_scaled_runs`: lr=0.5, wd=0.02 from w0 is lr=1, wd=0.01 from sqrt(2) w0, "
            "scale invariance): a period that follows the start, not (lr, wd), is a memory "
            "of the initial norm.",
            "",
            "| run | median period | its configuration from w0 (seeds) | the twin "
            "configuration from w0 (seeds) |",
            "|---|---|---|---|",
        ]
        for r in res["init_scaled"]:
            p = "n/a" if not math.isfinite(r["period"]) else f"{r['period']:.0f}"
            lines.append(
                f"| {r['run']} | {p} | {periods(r['own'])} | {r['twin']}: "
                f"{periods(r['twin_periods'])} |"
            )
    if res.get("exact_si_resnet"):
        lines += [
            "",
            f"The residual network made exactly scale-invariant (BatchNorm eps {EXACT_SI_EPS:g} "
            "instead of 1e-5; `exact_si_runs`), where the two configurations differ only in "
            "the initial norm: median periods by seed.",
            "",
            "| digits_resnet GD | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds),
        ]
        for config, by_seed in res["exact_si_resnet"].items():
            cells = [_at_seed(by_seed, s) for s in seeds]
            text = ["n/a" if not math.isfinite(v) else f"{v:.0f}" for v in cells]
            lines.append(f"| {config} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def forecast_cuts(
    traj: Trajectory, truth: list[int], *, position: float = 0.5, **kwargs: Any
) -> list[dict[str, Any]]:
    """Forecasts from the log cut inside each cycle after the second event.

    The cut lies ``position`` of the way through the cycle (0.5: half-way, the
    issue's protocol); ``kwargs`` go to :func:`siflow.forecast.forecast_next_event`.
    """
    from siflow.forecast import forecast_next_event

    if not 0.0 < position < 1.0:
        raise ValueError(f"position must lie in (0, 1), got {position!r}")
    out = []
    for k in range(1, len(truth) - 1):
        a, b = truth[k], truth[k + 1]
        cut = a + int(position * (b - a))  # position 0.5: (a + b) // 2
        rows = int(np.searchsorted(traj.step, cut, "right"))
        fc = forecast_next_event(traj[:rows], **kwargs)
        err = (fc.next_event_step - b) / (b - a) if math.isfinite(fc.next_event_step) else math.nan
        out.append(
            {
                "cut": int(traj.step[rows - 1]),
                "true": int(b),
                "cycle": int(b - a),
                "forecast": fc.next_event_step,
                "interval": list(fc.next_event_interval),
                "error_cycles": err,
                "method": fc.method,
            }
        )
    return out


#: The variant of FORECAST_VARIANTS that is the median period alone.
_PERIOD_ALONE = "median period alone"

#: Forecast settings compared in the results (keyword arguments of forecast_next_event).
FORECAST_VARIANTS: dict[str, dict[str, Any]] = {
    "effective LR alone": {"threshold": "elr", "blend": 1.0},
    "loss-scaled threshold alone": {"blend": 1.0},
    _PERIOD_ALONE: {"blend": 0.0},
    "autoregressive threshold and period (history='ar1')": {"history": "ar1"},
}


def _cut_score(errors: Sequence[float]) -> dict[str, Any]:
    """Score of forecasts at cuts from their errors in cycles (NaN: no forecast): cuts,
    cuts within 15% of the cycle, their fraction, the median absolute error."""
    arr = np.array(errors, dtype=float)
    ok = np.isfinite(arr) & (np.abs(arr) <= 0.15)
    return {
        "n_cuts": int(arr.size),
        "within_15pct": int(np.count_nonzero(ok)),
        "fraction": float(np.mean(ok)) if arr.size else math.nan,
        "median_abs_error": float(np.nanmedian(np.abs(arr))) if arr.size else math.nan,
    }


def evaluate_forecast(
    trajs: dict[str, Trajectory],
    labels: dict[str, list[int]],
    *,
    variants: bool = True,
    position: float = 0.5,
    **kwargs: Any,
) -> dict[str, Any]:
    """Fraction of cuts (half-way through a cycle by default) forecast within 15% of the
    cycle length.

    With ``variants``, the same score of each setting of :data:`FORECAST_VARIANTS`.
    """
    per_run = {}
    errs = []
    for name, truth in labels.items():
        if name in trajs and len(truth) >= 3:
            cuts = forecast_cuts(trajs[name], truth, position=position, **kwargs)
            per_run[name] = cuts
            errs += [c["error_cycles"] for c in cuts]
    cover, width = _interval_scores([c for cuts in per_run.values() for c in cuts])
    score = _cut_score(errs)
    return {
        "runs": per_run,
        "interval_coverage": cover,
        "interval_median_width": width,
        **score,
        "variants": {
            label: {
                k: v
                for k, v in evaluate_forecast(trajs, labels, variants=False, **kw).items()
                if k in score
            }
            for label, kw in (FORECAST_VARIANTS.items() if variants else ())
        },
    }


def _interval_scores(cuts: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """``(coverage, median width)`` of the forecast intervals of ``cuts``: the fraction
    whose ``interval`` holds the true event (a missing interval holds nothing; an open one,
    ``(lo, inf)`` for a cycle already longer than its latest bound, holds every later
    step), and the median of its width in cycles over the cuts that have one (an open
    interval's is infinite)."""
    if not cuts:
        return math.nan, math.nan
    lo = np.array([c["interval"][0] for c in cuts], dtype=float)
    hi = np.array([c["interval"][1] for c in cuts], dtype=float)
    true = np.array([c["true"] for c in cuts], dtype=float)
    cycle = np.array([c["cycle"] for c in cuts], dtype=float)
    has = np.isfinite(lo) & ~np.isnan(hi)
    cover = float(np.mean(has & (lo <= true) & (true <= hi)))
    width = float(np.median((hi - lo)[has] / cycle[has])) if np.any(has) else math.nan
    return cover, width


#: Cut positions (fractions of the cycle) of the forecast-by-position table.
CUT_POSITIONS = (0.25, 0.5, 0.75, 0.9)


def forecast_by_position(
    trajs: dict[str, Trajectory],
    labels: dict[str, list[int]],
    half: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The forecast score with the log cut at each of :data:`CUT_POSITIONS`.

    For the default forecast and the median period alone: does the forecast sharpen as
    the event comes closer (it should, if it follows the run's state)? ``half``: the
    result of :func:`evaluate_forecast` at the half-way cut, reused for that row.
    """
    keys = ("within_15pct", "n_cuts", "median_abs_error")
    rows = []
    for position in CUT_POSITIONS:
        row: dict[str, Any] = {"position": position}
        if position == 0.5 and half is not None:
            row["default"] = {k: half[k] for k in keys}
            row["period"] = {k: half["variants"][_PERIOD_ALONE][k] for k in keys}
        else:
            for label, kw in (("default", {}), ("period", FORECAST_VARIANTS[_PERIOD_ALONE])):
                res = evaluate_forecast(trajs, labels, variants=False, position=position, **kw)
                row[label] = {k: res[k] for k in keys}
        rows.append(row)
    return rows


def oracle_threshold_forecast(
    trajs: dict[str, Trajectory], labels: dict[str, list[int]], fit_fraction: float = 0.5
) -> dict[str, Any]:
    """The decay extrapolation given the true threshold of the coming event (a diagnostic).

    At each half-cycle cut of :func:`forecast_cuts`, a least-squares line of ``ln elr``
    over the last ``fit_fraction`` of the decay phase (after the norm's peak since the
    last labelled event) is extrapolated to ``ln elr`` at the true next event. Its score
    bounds what any forecast of the threshold level could reach with this extrapolation.
    """
    errs = []
    for name, truth in labels.items():
        tr = trajs.get(name)
        if tr is None or len(truth) < 3 or tr.rho is None:
            continue
        ln_elr = np.log(float(tr.lr) / tr.rho**2)
        for k in range(1, len(truth) - 1):
            a, b = truth[k], truth[k + 1]
            last = int(np.searchsorted(tr.step, (a + b) // 2, "right")) - 1
            first = int(np.searchsorted(tr.step, a))
            peak = first + int(np.argmax(tr.rho[first : last + 1]))
            rows = np.arange(int(peak + (1 - fit_fraction) * (last - peak)), last + 1)
            err = math.nan
            if rows.size >= 3:
                t = tr.step[rows].astype(np.float64) - tr.step[last]
                slope, icept = np.polyfit(t, ln_elr[rows], 1)
                target = ln_elr[int(np.searchsorted(tr.step, b))]
                if slope > 0:
                    step = tr.step[last] + max(target - icept, 0.0) / slope
                    err = (step - b) / (b - a)
            errs.append(err)
    return _cut_score(errs)


def hindsight_period_forecast(labels: dict[str, list[int]]) -> dict[str, Any]:
    """Last event plus the run's median period over all its cycles (a diagnostic).

    At each half-cycle cut of :func:`forecast_cuts`: ``a + median(all periods of the
    run)``, the later cycles included (known only in hindsight), moved to the step after
    the cut when it has passed. The periods of real runs scatter from cycle to cycle;
    this score bounds what any forecast that places the event one typical period after
    the last one can reach, whatever it learns from the history.
    """
    errs = []
    for truth in labels.values():
        if len(truth) < 3:
            continue
        median = float(np.median(np.diff(truth)))
        for k in range(1, len(truth) - 1):
            a, b = truth[k], truth[k + 1]
            step = max(a + median, (a + b) // 2 + 1.0)
            errs.append((step - b) / (b - a))
    return _cut_score(errs)


def _lag1(v: np.ndarray, min_values: int = 6) -> float:
    """:func:`siflow.forecast.lag1_autocorrelation`; NaN for fewer than ``min_values``
    values."""
    from siflow.forecast import lag1_autocorrelation

    return lag1_autocorrelation(v) if len(v) >= min_values else math.nan


def threshold_spread(trajs: dict[str, Trajectory], labels: dict[str, list[int]]) -> dict[str, Any]:
    """Spread of the forecast's threshold variables at the labelled events of each run.

    Per run (events after the first): the standard deviation of ``ln elr_k`` and of
    ``ln elr_k + ln L_k`` (the loss one row before the event: the separable limit
    ``beta = 1`` of the loss proxy of :mod:`siflow.forecast`) and their lag-1
    autocorrelations (:func:`_lag1`: negative when a high threshold tends to follow a
    low one), and the slope of ``ln S`` on ``ln L`` within the decay phases of the runs
    that log ``S``; for those runs also, over the middle half of each cycle (a quarter
    to three quarters of the way between two labelled events), the median of ``elr S``
    as a fraction of the stability threshold ``2(1 + mu - lr wd)``
    (:func:`siflow.theory.stability_threshold_elr` at ``S = 1``) and the speed at which
    ``ln S`` falls over the speed at which ``ln elr`` rises (least-squares slopes on the
    step).
    """
    from siflow.theory import stability_threshold_elr

    rows_out = []
    for name, truth in labels.items():
        tr = trajs.get(name)
        if tr is None or len(truth) < 3 or tr.rho is None or tr.loss is None:
            continue
        idx = np.searchsorted(tr.step, truth)[1:]
        ln_elr = np.log(float(tr.lr) / tr.rho[idx] ** 2)
        ln_l = np.log(tr.loss[np.maximum(idx - 1, 0)])
        rows_out.append(
            {
                "run": name,
                "sd_ln_elr": float(np.std(ln_elr)),
                "sd_ln_elr_loss": float(np.std(ln_elr + ln_l)),
                "lag1_ln_elr": _lag1(ln_elr),
                "lag1_ln_elr_loss": _lag1(ln_elr + ln_l),
            }
        )
    slopes, mid_cycle, speed_ratio = [], [], []
    for name, truth in labels.items():
        tr = trajs.get(name)
        if (
            tr is None
            or tr.sharpness_sphere is None
            or not np.any(np.isfinite(tr.sharpness_sphere))
        ):
            continue
        thr = float(stability_threshold_elr(float(tr.lr), float(tr.wd), 1.0, tr.momentum or 0.0))
        product = float(tr.lr) / tr.rho**2 * tr.sharpness_sphere / thr
        for a, b in zip(truth[:-1], truth[1:], strict=True):
            mid = (tr.step >= a + 0.25 * (b - a)) & (tr.step <= a + 0.75 * (b - a))
            mid &= np.isfinite(product)
            if np.count_nonzero(mid) >= 5:
                mid_cycle.append(float(np.median(product[mid])))
                t = tr.step[mid].astype(np.float64)
                rise = np.polyfit(t, np.log(float(tr.lr) / tr.rho[mid] ** 2), 1)[0]
                fall = -np.polyfit(t, np.log(tr.sharpness_sphere[mid]), 1)[0]
                speed_ratio.append(float(fall / rise))
        rows = np.searchsorted(tr.step, truth)
        for a, b in zip(rows[:-1], rows[1:], strict=True):
            peak = a + int(np.argmax(tr.rho[a:b]))
            m = np.zeros(len(tr), bool)
            m[peak + (b - peak) // 4 : b - 3] = True
            m &= np.isfinite(tr.sharpness_sphere)
            if m.sum() >= 5:
                slopes.append(
                    float(np.polyfit(np.log(tr.loss[m]), np.log(tr.sharpness_sphere[m]), 1)[0])
                )
    lag1 = [r["lag1_ln_elr"] for r in rows_out if math.isfinite(r["lag1_ln_elr"])]
    lag1_loss = [r["lag1_ln_elr_loss"] for r in rows_out if math.isfinite(r["lag1_ln_elr_loss"])]
    return {
        "runs": rows_out,
        "median_lag1_ln_elr": float(np.median(lag1)) if lag1 else math.nan,
        "negative_lag1_ln_elr": [sum(v < 0 for v in lag1), len(lag1)],
        "median_lag1_ln_elr_loss": float(np.median(lag1_loss)) if lag1_loss else math.nan,
        "median_sd_ln_elr": float(np.median([r["sd_ln_elr"] for r in rows_out])),
        "median_sd_ln_elr_loss": float(np.median([r["sd_ln_elr_loss"] for r in rows_out])),
        "sharpness_loss_slopes": slopes,
        "mid_cycle_elr_s": mid_cycle,
        "mid_cycle_s_fall_over_elr_rise": speed_ratio,
    }


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%" if math.isfinite(x) else "n/a"


def _mid_cycle_sentence(values: Sequence[float], ratios: Sequence[float]) -> str:
    """The edge-of-stability sentence of the forecast section."""
    if not values:
        return "No run of these logs records the sphere sharpness."
    q = np.quantile(values, [0.25, 0.5, 0.75])
    r = np.quantile(ratios, [0.25, 0.5, 0.75])
    above = sum(v > 1.0 for v in values)
    return (
        f"In the runs that log the sphere sharpness S, elr S over the middle half of a cycle "
        f"(a quarter to three quarters of the way) is already {q[1]:.2f} of the stability "
        f"threshold 2(1 + mu - lr wd) (median over {len(values)} cycles, quartiles "
        f"{q[0]:.2f}-{q[2]:.2f}; above it in {above}), and there ln S falls "
        f"{r[1]:.2f} times as fast as ln elr rises (quartiles {r[0]:.2f}-{r[2]:.2f}): the "
        f"product hovers below the threshold instead of rising to it, so the sharpness gives "
        f"no crossing to extrapolate half-way through a cycle."
    )


def _score_cells(score: dict[str, Any]) -> str:
    """``within/cuts (pct%) | median%``: two cells of a forecast-score table."""
    n, ok = score["n_cuts"], score["within_15pct"]
    return f"{ok}/{n} ({100 * ok / n:.0f}%) | {100 * score['median_abs_error']:.0f}%"


def write_markdown(res: dict[str, Any], command: str) -> str:
    det, pred, fc, thr = res["detector"], res["prediction"], res["forecast"], res["thresholds"]
    orc = res["oracle"]
    lines = [
        "# Labelled real runs: detector, period prediction, forecast",
        "",
        f"Regenerate: `{command}`.",
        "",
        "## Detector (`siflow.periods.find_events`, default parameters) against the labels",
        "",
        f"Recall {det['recall']:.3f} ({det['tp']}/{det['tp'] + det['fn']}), precision "
        f"{det['precision']:.3f} ({det['tp']}/{det['tp'] + det['fp']}) "
        f"over {len(det['runs'])} runs.",
        "",
        "| run | labelled | missed | false |",
        "|---|---|---|---|",
    ]
    for r in det["runs"]:
        lines.append(f"| {r['run']} | {len(r['labelled'])} | {r['fn']} | {r['fp']} |")
    lines += [
        "",
        "## Period prediction (`siflow.predict.transfer_period`), calibrated on the GD run "
        "at lr=0.5, wd=0.01 of each network",
        "",
        "T measured: median of the labelled periods (n of them, scatter = their coefficient "
        "of variation within the run).",
        "",
        "| run | kind | lr*wd | T measured (labels) | n | scatter | T predicted | error "
        "| ln rho jump (run / calibration) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in pred["runs"]:
        lines.append(
            f"| {r['run']} | {r['kind']} | {r['lrwd']:.3g} | {r['measured']:.0f} | "
            f"{r['n_periods']} | {r['period_cv']:.2f} | {r['predicted']:.0f} | {_pct(r['error'])} "
            f"| {r['jump']:.2f} / {r['jump_calibration']:.2f} |"
        )
    lines += ["", "| kind | runs | median abs error | worst abs error |", "|---|---|---|---|"]
    for kind, s in pred["summary"].items():
        lines.append(
            f"| {kind} | {s['n']} | {100 * s['median_abs']:.0f}% | {100 * s['worst_abs']:.0f}% |"
        )
    jp = pred["jumps"]
    lines += [
        "",
        f"The errors follow the norm jump per event, which the transfer takes from the "
        f"calibration run: over the {jp['n']} runs, ln(T predicted / T measured) against "
        f"ln(calibration jump / run jump) has correlation {jp['correlation']:.2f} and slope "
        f"{jp['slope']:.2f} (ln rho jump: median over the labelled cycles after the first of "
        f"ln(largest rho of the cycle / rho before its event)).",
        "",
        "Calibrated on the labelled events of the calibration runs instead of the detector's "
        "(a perfect detector): "
        + ", ".join(
            f"{kind} {100 * s['median_abs']:.0f}% median, {100 * s['worst_abs']:.0f}% worst"
            for kind, s in res["prediction_on_labels"].items()
        )
        + ".",
        "",
        "## Forecast of the next destabilization (`siflow.forecast.forecast_next_event`)",
        "",
        f"Logs cut half-way through each cycle after the second labelled event: "
        f"{fc['within_15pct']}/{fc['n_cuts']} = {100 * fc['fraction']:.0f}% of the cuts within "
        f"15% of the cycle length of the true event (median error "
        f"{100 * fc['median_abs_error']:.0f}% of a cycle). The forecast's interval holds "
        f"the true event in {100 * fc['interval_coverage']:.0f}% of the cuts; its median "
        f"width is {fc['interval_median_width']:.2f} of a cycle.",
        "",
        "| forecast | cuts within 15% | median abs error |",
        "|---|---|---|",
        f"| default (blend of the two below) | {fc['within_15pct']}/{fc['n_cuts']} "
        f"({100 * fc['fraction']:.0f}%) | {100 * fc['median_abs_error']:.0f}% |",
        *(
            f"| {label} | {v['within_15pct']}/{v['n_cuts']} ({100 * v['fraction']:.0f}%) | "
            f"{100 * v['median_abs_error']:.0f}% |"
            for label, v in fc["variants"].items()
        ),
        f"| (diagnostic) ln elr extrapolated to its true value at the coming event | "
        f"{orc['within_15pct']}/{orc['n_cuts']} ({100 * orc['fraction']:.0f}%) | "
        f"{100 * orc['median_abs_error']:.0f}% |",
        f"| (diagnostic) last event + the run's median period over all its cycles, known "
        f"in hindsight | {_score_cells(res['hindsight'])} |",
        "",
        "The same score with the log cut at other points of each cycle (the forecast should "
        "sharpen as the event comes closer; a forecast that has passed is moved to the step "
        "after the cut, which scores well at late cuts by itself):",
        "",
        "| cut at (fraction of the cycle) | default: within 15% | median abs error | "
        "median period alone: within 15% | median abs error |",
        "|---|---|---|---|---|",
        *(
            f"| {r['position']:.2f} | {_score_cells(r['default'])} | {_score_cells(r['period'])} |"
            for r in res.get("by_position", [])
        ),
        "",
        f"Threshold variables at the labelled events (events after the first, per run): "
        f"median standard deviation of ln elr {thr['median_sd_ln_elr']:.2f}, of "
        f"ln elr + ln L {thr['median_sd_ln_elr_loss']:.2f}; slope of ln S on ln L within the "
        f"decay phases of the runs that log S: "
        f"{min(thr['sharpness_loss_slopes'], default=math.nan):.2f}-"
        f"{max(thr['sharpness_loss_slopes'], default=math.nan):.2f} "
        f"({len(thr['sharpness_loss_slopes'])} phases). From one cycle to the next the "
        f"thresholds alternate: lag-1 autocorrelation of ln elr at the events, median "
        f"{thr['median_lag1_ln_elr']:+.2f} over the runs with 6 or more "
        f"({thr['negative_lag1_ln_elr'][0]} of {thr['negative_lag1_ln_elr'][1]} negative), "
        f"of ln elr + ln L {thr['median_lag1_ln_elr_loss']:+.2f}.",
        "",
        _mid_cycle_sentence(thr["mid_cycle_elr_s"], thr["mid_cycle_s_fall_over_elr_rise"]),
        "",
        "| run | cuts | errors (fraction of the cycle) |",
        "|---|---|---|",
    ]
    for name, cuts in fc["runs"].items():
        errs = ", ".join(_pct(c["error_cycles"]) for c in cuts)
        lines.append(f"| {name} | {len(cuts)} | {errs} |")
    return "\n".join(lines) + "\n"


def draw_forecasts(res: dict[str, Any], trajs: dict[str, Trajectory], path: Path) -> None:
    """Forecast vs true step of every cut, and one run's forecasts along its log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fc = res["forecast"]["runs"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"GD": "C0", "SGD": "C1", "momentum": "C2"}
    runs = {r.name: r for r in make_runs()}
    bins = np.linspace(-1.0, 2.0, 61)
    errs: dict[str, list[float]] = {k: [] for k in colors}
    for name, cuts in fc.items():
        errs[_kind(runs[name])] += [
            min(max(c["error_cycles"], -0.999), 1.999)
            for c in cuts
            if math.isfinite(c["error_cycles"])
        ]
    a1.hist(
        [errs[k] for k in colors],
        bins=bins,
        stacked=True,
        color=list(colors.values()),
        label=[f"{k} ({len(errs[k])} cuts)" for k in colors],
    )
    a1.axvspan(-0.15, 0.15, color="0.85", zorder=0, label="within 15% of the cycle")
    a1.set_xlabel("(forecast - true step) / cycle length (clipped to [-1, 2])")
    a1.set_ylabel("cuts")
    frac = res["forecast"]["fraction"]
    a1.set_title(f"half-cycle cuts of the labelled logs: {100 * frac:.0f}% within 15%")
    a1.legend(fontsize=8)
    name = "mnist1d_mlp_gd_lr0.5_wd0.01" if "mnist1d_mlp_gd_lr0.5_wd0.01" in fc else max(fc)
    traj = trajs[name]
    a2.plot(traj.step, np.log(traj.rho), "b-", lw=0.8, label="ln rho")
    for c in fc[name]:
        a2.axvline(c["true"], color="k", lw=0.8, ls="--")
        y = float(np.log(traj.rho[np.searchsorted(traj.step, c["cut"])]))
        lo, hi = c["interval"]
        hi = min(hi, float(traj.step[-1]))  # an open interval is drawn to the log's end
        a2.plot([c["cut"], c["forecast"]], [y, y], "-", color="C3", lw=0.8)
        a2.errorbar(
            c["forecast"],
            y,
            xerr=[[max(c["forecast"] - lo, 0)], [max(hi - c["forecast"], 0)]],
            fmt="o",
            color="C3",
            ms=4,
            capsize=3,
        )
        a2.plot(c["cut"], y, "kx", ms=6)
    a2.set_title(f"{name}: cut (x), forecast (o, interval), true event (--)", fontsize=8)
    a2.set_xlabel("step")
    fig.tight_layout()
    from siflow._fileio import atomic_write

    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


def draw_seeds(res: dict[str, Any], path: Path) -> None:
    """Median period against lr*wd for each network at every seed, with the transfer from
    each calibration seed (:func:`evaluate_seeds`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    grid = {r.name: r for r in make_runs()}
    families = list(dict.fromkeys(grid[n].family for n in res["configs"]))
    fig, axs = plt.subplots(1, len(families), figsize=(3.4 * len(families), 3.6), squeeze=False)
    seeds = [str(s) for s in res["seeds"]]
    for ax, family in zip(axs[0], families, strict=True):
        for name, row in res["configs"].items():
            run = grid[name]
            if run.family != family:
                continue
            for k, s in enumerate(seeds):
                v = _at_seed(row["periods"], s)
                if math.isfinite(v):
                    shift = 1.0 + 0.04 * (k - 1)  # seeds side by side
                    ax.plot(run.lr * run.wd * shift, v, "o", color=f"C{k}", ms=4)
        cal = f"{family}_gd_lr0.5_wd0.01"
        for k, s in enumerate(seeds):
            pred = {
                (grid[r["target"]].lr * grid[r["target"]].wd, r["predicted"])
                for r in res["transfer"].get(s, [])
                if grid[r["target"]].family == family
            }
            t0 = _at_seed(res["configs"][cal]["periods"], s) if cal in res["configs"] else math.nan
            if pred and math.isfinite(t0):  # from the calibration run to its predictions
                x, y = zip(*sorted({*pred, (5e-3, t0)}), strict=True)
                ax.plot(x, y, "-", color=f"C{k}", lw=1, alpha=0.7)
                ax.plot(x, y, "_", color=f"C{k}", ms=14, mew=1.5)
        if family == "digits_resnet":
            for by_seed in res.get("exact_si_resnet", {}).values():
                vals = [v for v in by_seed.values() if math.isfinite(v)]
                ax.plot([1e-2] * len(vals), vals, "kx", ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(7e-4, 1.4e-2)
        ax.set_xticks([1e-3, 2.5e-3, 5e-3, 1e-2], ["1e-3", "2.5e-3", "5e-3", "1e-2"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("lr * wd")
        ax.grid(alpha=0.3, which="both")
    axs[0, 0].set_ylabel("median period (steps)")
    handles = [
        plt.Line2D([], [], marker="o", ls="-", color=f"C{k}", label=f"seed {s}")
        for k, s in enumerate(seeds)
    ]
    if res.get("exact_si_resnet"):
        handles.append(plt.Line2D([], [], marker="x", ls="", color="k", label="BN eps 1e-30"))
    axs[0, -1].legend(handles=handles, fontsize=7)
    fig.suptitle(
        "GD median periods at three seeds (dots); bars and lines: the transfer calibrated "
        "on lr=0.5, wd=0.01 (lr*wd 5e-3) of that seed",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


def cmd_evaluate(args: Any) -> int:
    trajs = load_logs(Path(args.logs))
    labels = load_labels()
    if not labels:
        raise ValueError("no labels: analysis/data/labelled/labels.json is missing")
    res = {
        "detector": evaluate_detector(trajs, labels),
        "prediction": evaluate_prediction(trajs, labels),
        "prediction_on_labels": evaluate_prediction(trajs, labels, "labels")["summary"],
        "forecast": evaluate_forecast(trajs, labels),
        "thresholds": threshold_spread(trajs, labels),
        "oracle": oracle_threshold_forecast(trajs, labels),
        "hindsight": hindsight_period_forecast({k: v for k, v in labels.items() if k in trajs}),
    }
    res["by_position"] = forecast_by_position(trajs, labels, half=res["forecast"])
    out = ensure_dir(DATA if args.update_data else Path(args.out or ROOT / "runs/labelled"))
    command = "python analysis/labelled_runs.py evaluate"
    md = write_markdown(res, command)
    with atomic_write(out / "results.md", "w") as fh:
        fh.write(md)
    with atomic_write(out / "results.json", "w") as fh:
        json.dump(json_ready(res), fh, indent=1, allow_nan=False)
    # the committed data folder holds logs, labels and tables only: with --update-data the
    # figure goes to runs/labelled (or figures/ with --update-figures)
    if args.update_figures:
        fig_dir = ROOT / "figures"
    elif args.update_data:
        fig_dir = ensure_dir(Path(args.out or ROOT / "runs/labelled"))
    else:
        fig_dir = out
    draw_forecasts(res, trajs, fig_dir / "forecast_labelled.png")
    print(md)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}, {fig_dir / 'forecast_labelled.png'}"
    )
    return 0


def _seed_list(text: str) -> list[int]:
    seeds = sorted(set(_int_list(text, "--seeds")))
    if not seeds or min(seeds) < 1:
        raise ValueError(f"--seeds must name seeds >= 1 (seed 0 is the labelled set), got {text!r}")
    return seeds


def cmd_seeds(args: Any) -> int:
    seeds = _seed_list(args.seeds)
    logs = ensure_dir(Path(args.logs or ROOT / "runs/labelled/seeds"))
    # the rescaled-start logs are small and committed (--update-data): tests read them
    init_logs = ensure_dir(SEEDS_DATA) if args.update_data else logs
    _train_all(seed_runs(seeds), logs, args.force)
    _train_all(init_scaled_runs(), init_logs, args.force)
    _train_all(exact_si_runs(seeds), logs, args.force)
    res = evaluate_seeds(logs, seeds, init_logs=init_logs)
    out = SEEDS_DATA if args.update_data else ensure_dir(Path(args.out or ROOT / "runs/labelled"))
    md = seeds_markdown(res, f"python analysis/labelled_runs.py seeds --seeds {args.seeds}")
    with atomic_write(out / "seeds.md", "w") as fh:
        fh.write(md)
    with atomic_write(out / "seeds.json", "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    # the committed data folder holds logs and tables only: the figure goes to runs/
    fig_dir = (
        ROOT / "figures"
        if args.update_figures
        else ensure_dir(Path(args.out or ROOT / "runs/labelled"))
    )
    draw_seeds(res, fig_dir / "period_seeds.png")
    print(md)
    print(f"wrote {out / 'seeds.md'}, {out / 'seeds.json'}, {fig_dir / 'period_seeds.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="labelled_runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the runs (cached)")
    p.add_argument("--force", action="store_true", help="retrain even if a log exists")
    p.add_argument("--only", default=None, help="comma-separated run names")
    p.add_argument("--out", default=None, help="log directory (default runs/labelled/logs)")
    p.add_argument("--update-data", action="store_true", help="write to analysis/data/labelled")
    p = sub.add_parser("plot", help="curves with detected and labelled events")
    p.add_argument("--logs", default=str(DATA), help="log directory")
    p.add_argument("--out", default=None, help="figure directory (default runs/labelled/plots)")
    p.add_argument("--only", default=None, help="comma-separated run names")
    p = sub.add_parser("evaluate", help="detector, prediction and forecast against the labels")
    p.add_argument("--logs", default=str(DATA), help="log directory")
    p.add_argument("--out", default=None, help="table directory (default runs/labelled)")
    p.add_argument(
        "--update-figures", action="store_true", help="write the figure to figures/ (committed)"
    )
    p.add_argument(
        "--update-data",
        action="store_true",
        help="write results.md/json to analysis/data/labelled (committed)",
    )
    p = sub.add_parser("sparse", help="the detector on the labelled logs thinned to every k-th row")
    every = ",".join(map(str, SPARSE_EVERY))
    p.add_argument("--every", default=every, help=f"comma-separated k (default {every})")
    p.add_argument("--logs", default=str(DATA), help="log directory")
    p.add_argument("--out", default=None, help="table directory (default runs/labelled)")
    p = sub.add_parser(
        "seeds",
        help="retrain the cycling GD runs at other seeds (cached) and measure how their "
        "periods and the transfer errors move with the seed",
    )
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds (default 1,2)")
    p.add_argument("--logs", default=None, help="log directory (default runs/labelled/seeds)")
    p.add_argument("--out", default=None, help="table directory (default runs/labelled)")
    p.add_argument("--force", action="store_true", help="retrain even if a log exists")
    p.add_argument(
        "--update-data",
        action="store_true",
        help="write the tables and the rescaled-start logs to analysis/data/seeds (committed)",
    )
    p.add_argument(
        "--update-figures",
        action="store_true",
        help="write the figure to figures/period_seeds.png (committed)",
    )
    args = parser.parse_args(argv)
    if args.cmd == "seeds":
        return cmd_seeds(args)
    if args.cmd == "evaluate":
        return cmd_evaluate(args)
    if args.cmd == "train":
        return cmd_train(args)
    if args.cmd == "plot":
        return cmd_plot(args)
    if args.cmd == "sparse":
        return cmd_sparse(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="labelled_runs"))
