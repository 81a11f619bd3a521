"""Grids over (lr, wd, momentum, seed): regimes, periods and the data of a phase diagram.

A sweep runs :func:`siflow.simulate.simulate` once per cell of the grid
``lr x wd x momentum x seed`` for one toy loss, classifies each run with
:func:`siflow.periods.classify` (``"converged"``, ``"equilibrium"``,
``"periodic"``, ``"diverged"``) and measures its period
(:attr:`siflow.periods.Events.period_median`) and effective learning rate
(:func:`siflow.theory.effective_lr`).

This module keeps the sweep's configuration, its cells, their persistence and
their execution. The closed forms it draws on live in :mod:`siflow.theory`
(:func:`~siflow.theory.decay_end_step`,
:func:`~siflow.theory.equilibrium_instability_lr_wd`) and the figure in
:func:`siflow.plot.phase_diagram`; :func:`phase_diagram_data` computes what that
figure shows and :func:`phase_diagram` joins the two.

Persistence. With ``out`` given, the sweep holds a lock on ``out`` for as long
as it runs (a second sweep into the same folder is refused with one line), writes
``sweep.json`` (its configuration) and one small JSON file per finished cell,
``cells/cell_000123.json``, each written atomically
(:func:`siflow._fileio.atomic_write`). Every cell file carries the fingerprint of
the configuration it was computed for and a checksum of its own content: a cell
of another configuration, a damaged one (``[]``, ``null``, truncated) or one edited
by hand is recomputed, never used. A sweep that is interrupted (Ctrl-C, a killed
process, a lost machine) is resumed by running the same call or command again:
the valid cells on disk are read back, and the final table is the same as that of
an uninterrupted run because each cell depends only on its own
``(lr, wd, momentum, seed)``.

Execution. Locally on all cores by default (a process pool whose workers pin
BLAS/OpenMP and numba to one thread each, and exit when the sweep's process dies,
even by ``kill -9``), or on a Dask cluster with ``dask="tcp://host:port"``
(optional extra ``siflow[dask]``). A worker that dies (killed, out of memory) has
its cells retried once in a fresh pool; a second death stops the sweep with one
line, the finished cells kept. Before any cell runs, the sweep estimates its
memory, disk and time and refuses what cannot fit, naming the parameter to change.
Each simulation keeps at most ``max_rows`` rows (:func:`siflow.simulate.simulate`
thins the rest), so memory per cell is bounded whatever ``steps``.

Command line: ``python -m siflow.sweep --help``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import shutil
import stat
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow._fileio import atomic_write, ensure_dir, require
from siflow._memory import available_memory, format_bytes
from siflow._validate import (
    as_float_array,
    check_lr_wd,
    check_momentum,
    check_positive_int,
    check_steps,
    check_whole,
    positive_number,
)
from siflow.theory import decay_end_step, effective_lr, equilibrium_instability_lr_wd

__all__ = [
    "REGIMES",
    "ROW_FIELDS",
    "DEFAULT_MAX_ROWS",
    "SweepConfig",
    "SweepResult",
    "SweepEstimate",
    "SweepLockedError",
    "PhaseDiagramData",
    "log_grid",
    "run_cell",
    "estimate",
    "sweep",
    "load",
    "phase_diagram_data",
    "phase_diagram",
    "decay_end_step",
    "equilibrium_instability_lr_wd",
    "main",
]

#: Regime labels, in the order used for colours and to break ties between seeds.
REGIMES: tuple[str, ...] = ("converged", "equilibrium", "periodic", "diverged")

#: Columns of a sweep table, in order.
ROW_FIELDS: tuple[str, ...] = (
    "index",
    "lr",
    "wd",
    "momentum",
    "seed",
    "lr_wd",
    "regime",
    "status",
    "n_events",
    "period",
    "period_lr_wd",
    "elr_mean",
    "grad_norm_rms",
    "elr_at_events",
    "loss_final",
    "rho_final",
    "steps_run",
)
_FLOAT_FIELDS = ("period", "period_lr_wd", "elr_mean", "grad_norm_rms", "elr_at_events",
                 "loss_final", "rho_final")  # fmt: skip
_STATUSES = ("ok", "diverged", "underflow")

#: Keyword arguments forwarded to :func:`siflow.simulate.simulate` when given.
SIM_OPTIONS: tuple[str, ...] = ("optimizer", "dim", "noise", "batch", "record_every")

#: Rows a cell's simulation keeps at most (``max_rows=``); runs of up to half as many
#: steps keep every step.
DEFAULT_MAX_ROWS = 1 << 18

_CONFIG_FILE = "sweep.json"
_CELL_DIR = "cells"
_TABLE_FILE = "table.csv"
_LOCK_FILE = ".lock"
_FORMAT = "siflow-sweep-2"
#: Smallest lr*wd a sweep accepts: below the smallest normal double, products underflow.
_MIN_LR_WD = sys.float_info.min


# --------------------------------------------------------------------- config
def log_grid(low: float, high: float, num: int) -> NDArray[np.float64]:
    """``num`` log-spaced values from ``low`` to ``high`` inclusive.

    Parameters
    ----------
    low, high : float
        Positive end points (``low <= high``); ``num == 1`` requires ``low == high``.
    num : int
        Number of values.
    """
    lo = positive_number("low", low)
    hi = positive_number("high", high)
    num = check_positive_int("num", num)
    if hi < lo:
        raise ValueError(f"high must be >= low, got low={lo!r}, high={hi!r}; swap them")
    if num == 1:
        if lo != hi:
            raise ValueError(f"num=1 needs low == high, got {lo!r} and {hi!r}; pass num >= 2")
        return np.array([lo])
    return np.logspace(math.log10(lo), math.log10(hi), num)


def _as_tuple(name: str, values: float | Iterable[float]) -> tuple[float, ...]:
    arr = np.atleast_1d(as_float_array(name, values))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a number or a non-empty 1-D list of numbers; pass e.g. "
            f"{name}=[0.01, 0.1]"
        )
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} has repeated values {arr.tolist()}; pass each value once")
    return tuple(float(x) for x in arr)


def _as_seeds(values: int | Iterable[int]) -> tuple[int, ...]:
    """Distinct whole numbers >= 0 (one, or a flat list)."""
    arr = np.atleast_1d(np.asarray(values, dtype=object))
    try:
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError
        seeds = tuple(check_whole("seeds", v, 0) for v in arr)
        if len(set(seeds)) != len(seeds):
            raise ValueError
    except ValueError:
        shown = values.tolist() if isinstance(values, np.ndarray) else values
        raise ValueError(
            f"seeds must be distinct whole numbers >= 0, got {shown!r}; pass e.g. seeds=(0, 1)"
        ) from None
    return seeds


def _check_lr_wd_grid(lr: tuple[float, ...], wd: tuple[float, ...]) -> None:
    """``lr*wd < 1`` at the largest corner, and no product below the float range."""
    check_lr_wd(max(lr), max(wd))
    check_lr_wd(min(lr), min(wd))
    smallest = min(lr) * min(wd)
    if smallest < _MIN_LR_WD:
        raise ValueError(
            f"lr*wd = {min(lr):g}*{min(wd):g} is below {_MIN_LR_WD:.3g}, the smallest normal "
            f"double (it underflows, and such a run shows no weight-decay dynamics in any "
            f"number of steps); pass larger lr= or wd= values"
        )


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes: the toy, the grid and the simulation options.

    Cells are numbered in the order ``momentum, wd, lr, seed`` (seed fastest),
    see :meth:`cells`. ``max_rows`` bounds the rows each simulation keeps (None:
    the simulator's default). ``schedule`` is a learning-rate schedule spec of
    :mod:`siflow.schedules` applied in every cell, peaking at the cell's ``lr`` (so
    ``lr`` is the peak learning rate of the cell, and a ``peak=`` in the spec is
    refused); it must stay above 0 over the ``steps`` of a cell.
    :meth:`fingerprint` identifies the configuration.
    """

    loss: str
    lr: tuple[float, ...]
    wd: tuple[float, ...]
    momentum: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)
    steps: int = 20_000
    options: dict[str, Any] = field(default_factory=dict)
    simulator: str = "siflow.simulate:simulate"
    max_rows: int | None = DEFAULT_MAX_ROWS
    schedule: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"loss must be the name of a toy loss, got {self.loss!r}")
        lr = _as_tuple("lr", self.lr)
        wd = _as_tuple("wd", self.wd)
        _check_lr_wd_grid(lr, wd)
        mom = _as_tuple("momentum", self.momentum)
        check_momentum(np.array(mom))
        seeds = _as_seeds(self.seeds)
        unknown = sorted(set(self.options) - set(SIM_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown simulation option(s) {unknown}; allowed: {', '.join(SIM_OPTIONS)}"
            )
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "wd", wd)
        object.__setattr__(self, "momentum", mom)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "steps", check_steps("steps", self.steps, "pass fewer steps"))
        if self.max_rows is not None:
            rows = check_positive_int("max_rows", self.max_rows)
            if rows < 4:
                raise ValueError(f"max_rows must be >= 4, got {rows}; pass e.g. max_rows=10000")
            object.__setattr__(self, "max_rows", rows)
        opts = {k: v for k, v in dict(self.options).items() if v is not None}
        if "record_every" in opts:
            opts["record_every"] = check_steps("record_every", opts["record_every"])
        object.__setattr__(self, "options", opts)
        if self.schedule is not None:
            check_schedule(self.schedule, lr, self.steps)
        if not isinstance(self.simulator, str) or ":" not in self.simulator:
            raise ValueError(
                f"simulator must be 'module:function', got {self.simulator!r}; "
                f"e.g. 'siflow.simulate:simulate'"
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Grid shape ``(n_momentum, n_wd, n_lr, n_seeds)``."""
        return (len(self.momentum), len(self.wd), len(self.lr), len(self.seeds))

    def __len__(self) -> int:
        return math.prod(self.shape)

    def cell(self, index: int) -> dict[str, Any]:
        """Cell ``index`` as ``{"index", "lr", "wd", "momentum", "seed"}``."""
        n_m, n_w, n_l, n_s = self.shape
        if not 0 <= index < len(self):
            raise ValueError(f"index must be in [0, {len(self)}), got {index}")
        rest, s = divmod(index, n_s)
        rest, j = divmod(rest, n_l)
        m, i = divmod(rest, n_w)
        return {"index": index, "lr": self.lr[j], "wd": self.wd[i],
                "momentum": self.momentum[m], "seed": self.seeds[s]}  # fmt: skip

    def iter_cells(self) -> Iterator[dict[str, Any]]:
        """The cells in index order, one at a time."""
        product = itertools.product(self.momentum, self.wd, self.lr, self.seeds)
        for i, (m, w, lr, s) in enumerate(product):
            yield {"index": i, "lr": lr, "wd": w, "momentum": m, "seed": s}

    def cells(self) -> list[dict[str, Any]]:
        """Every cell as ``{"index", "lr", "wd", "momentum", "seed"}``, in index order."""
        return list(self.iter_cells())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (written to ``sweep.json``)."""
        d = asdict(self)
        d["lr"], d["wd"] = list(self.lr), list(self.wd)
        d["momentum"], d["seeds"] = list(self.momentum), list(self.seeds)
        d["format"] = _FORMAT
        return d

    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 digits) of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepConfig:
        """Inverse of :meth:`to_dict`."""
        keys = ("loss", "lr", "wd", "momentum", "seeds", "steps", "options")
        extra = {k: d[k] for k in ("simulator", "max_rows", "schedule") if k in d}
        return cls(**{k: d[k] for k in keys}, **extra)


def check_schedule(
    spec: Any, lr: Sequence[float], steps: int, *, flag: str = "schedule", steps_flag: str = ""
) -> None:
    """Refuse, in one line, a schedule spec not every cell can use: unreadable at the
    smallest or largest peak, writing a peak of its own (each cell's schedule peaks at
    the cell's lr, which labels it in the table and the figure), or reaching lr = 0
    within the ``steps`` of a cell.

    ``flag`` and ``steps_flag`` name the spec and the step count in the messages:
    ``"schedule"`` and ``""`` from Python, ``"--schedule"`` and ``"--steps"`` from the
    command line (which then also names the ``--steps`` that would fit).
    """
    from siflow.schedules import explicit_level, first_zero_step, parse_schedule, why_zero

    if not isinstance(spec, str):
        raise ValueError(f"{flag} must be a spec string such as 'cosine:steps=20000', got {spec!r}")
    try:
        for base in (min(lr), max(lr)):
            parse_schedule(spec, base=float(base))
    except ValueError as exc:
        raise ValueError(f"{flag} {spec!r}: {exc}") from None
    level = explicit_level(spec)
    if level is not None:
        key, value = level
        raise ValueError(
            f"{flag} {spec!r} sets {key}={value}, but each cell's schedule peaks at the "
            f"cell's lr, which labels it in the table and the figure; drop {key}={value} "
            f"from {flag}" + (" (the --lr range gives the peaks)" if steps_flag else "")
        )
    sched = parse_schedule(spec, base=float(min(lr)))  # the smallest peak underflows first
    step = first_zero_step(sched, steps) if not sched.is_constant else None
    if step is not None:
        why, fix = why_zero(sched, step, steps)
        where = f"within {steps_flag} {steps}" if steps_flag else f"within a cell's {steps} steps"
        fewer = f", or pass {steps_flag} {step}" if steps_flag and step > 0 else ""
        raise ValueError(
            f"{flag} {spec!r} reaches lr = 0 at step {step}, {where} ({why}); {fix}{fewer}"
        )


def _lr_argument(config: SweepConfig, lr: float) -> Any:
    """What the simulator gets as ``lr=``: the cell's lr, or its schedule peaking there."""
    if config.schedule is None:
        return lr
    from siflow.schedules import parse_schedule

    return parse_schedule(config.schedule, base=lr)


def _simulator(config: SweepConfig) -> Callable[..., Any]:
    module, _, name = config.simulator.partition(":")
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import simulator {config.simulator!r} ({exc})") from None
    if not callable(func):
        raise ValueError(
            f"simulator {config.simulator!r} is not a function; pass 'module:function' of one "
            f"with the signature of siflow.simulate.simulate"
        )
    return func


def _thinning_kwargs(simulate: Callable[..., Any], max_rows: int | None) -> dict[str, int]:
    """How to ask ``simulate`` to keep at most ``max_rows`` rows.

    Regular rows every ``ceil(steps / (max_rows/2))`` steps (``max_points=``),
    leaving half the cap to the rows kept near norm jumps, and the hard cap
    itself (``max_rows=``): each when ``simulate`` accepts it.
    """
    if max_rows is None:
        return {}
    try:
        params = inspect.signature(simulate).parameters
    except (TypeError, ValueError):
        return {}
    wanted = {"max_points": max_rows // 2, "max_rows": max_rows}
    return {k: v for k, v in wanted.items() if k in params}


def _simulation_kwargs(config: SweepConfig, simulate: Callable[..., Any], momentum: float) -> dict:
    kwargs = dict(config.options)
    if momentum != 0.0:
        kwargs["momentum"] = momentum
    if "record_every" not in kwargs:
        kwargs.update(_thinning_kwargs(simulate, config.max_rows))
    return kwargs


# ----------------------------------------------------------------------- cell
def _nan_if_none(x: Any) -> float:
    return math.nan if x is None else float(x)


def _time_weighted_mean(values: NDArray[np.float64], step: NDArray[Any]) -> float:
    """Mean of ``values`` over the steps the rows stand for.

    A kept row stands for the steps up to the next kept row (the last for the
    median gap), so rows kept densely around norm jumps do not outweigh the
    thinned rest. Evenly spaced rows give the plain mean.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    step = np.asarray(step, dtype=np.float64)
    gaps = np.diff(step)
    if gaps.size == 0 or np.all(gaps == gaps[0]):
        return float(np.mean(values[ok]))
    weights = np.append(gaps, np.median(gaps))
    return float(np.average(values[ok], weights=weights[ok]))


def run_cell(config: SweepConfig | Mapping[str, Any], cell: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate one cell and summarise it as a table row (see :data:`ROW_FIELDS`).

    Parameters
    ----------
    config : SweepConfig or dict
        The sweep (a dict from :meth:`SweepConfig.to_dict` is accepted, for
        shipping to remote workers).
    cell : dict
        ``{"index", "lr", "wd", "momentum", "seed"}`` from :meth:`SweepConfig.cells`.

    Returns
    -------
    dict
        ``regime`` from :func:`siflow.periods.classify`; ``period`` the median
        distance in steps between destabilizations (NaN with fewer than two);
        ``period_lr_wd = period * lr * wd`` (varies only logarithmically with
        ``lr*wd`` by docs/theory.md section 2); ``elr_mean`` the mean effective LR
        ``lr/rho^2`` (:func:`siflow.theory.effective_lr`) and ``grad_norm_rms`` the
        root mean square of the sphere gradient norm ``g~`` over the stationary
        part (:func:`siflow.periods.stationary_part`), each row weighted by the
        steps it stands for (:func:`_time_weighted_mean`; for an equilibrium
        :func:`siflow.theory.sgd_equilibrium_elr` of ``grad_norm_rms`` predicts
        ``elr_mean``); ``elr_at_events`` the median effective LR just before the
        destabilizations (NaN without events; theory: just above
        :func:`siflow.theory.stability_threshold_elr`).
    """
    from siflow import periods

    if not isinstance(config, SweepConfig):
        config = SweepConfig.from_dict(config)
    simulate = _simulator(config)
    lr, wd, mom, seed = float(cell["lr"]), float(cell["wd"]), float(cell["momentum"]), cell["seed"]
    kwargs = _simulation_kwargs(config, simulate, mom)
    lr_arg = _lr_argument(config, lr)
    traj = simulate(config.loss, lr=lr_arg, wd=wd, steps=config.steps, seed=int(seed), **kwargs)
    status = traj.status
    if status == "interrupted":
        # simulate() turns Ctrl-C into a partial trajectory; a partial cell must not be saved
        raise KeyboardInterrupt
    n = len(traj)
    events = None
    with contextlib.suppress(ValueError):
        events = periods.find_events(traj)
    try:
        regime = periods.classify(traj, events)
    except ValueError:
        regime = "diverged" if status == "diverged" else "converged"
    if status in ("diverged", "underflow") and regime != "diverged":
        regime = "diverged"
    period = _nan_if_none(events.period_median) if events is not None else math.nan
    n_events = len(events) if events is not None else 0
    elr_events = math.nan
    if events is not None and n_events:
        elr_events = float(np.median(np.asarray(events.elr_before, dtype=np.float64)))
    elr_mean, grad_rms = _stationary_means(traj, events, lr, n, config.schedule is not None)
    return {
        "index": int(cell["index"]),
        "lr": lr,
        "wd": wd,
        "momentum": mom,
        "seed": int(seed),
        "lr_wd": lr * wd,
        "regime": str(regime),
        "status": str(status),
        "n_events": int(n_events),
        "period": period,
        "period_lr_wd": period * lr * wd,
        "elr_mean": elr_mean,
        "grad_norm_rms": grad_rms,
        "elr_at_events": elr_events,
        "loss_final": float(traj.loss[-1]) if traj.loss is not None and n else math.nan,
        "rho_final": float(traj.rho[-1]) if traj.rho is not None and n else math.nan,
        "steps_run": _steps_run(traj, n),
    }


def _steps_run(traj: Any, n: int) -> int:
    """Steps simulated: one past the last row, or the simulation's count when thinned."""
    if not n:
        return 0
    last = int(traj.step[-1]) + 1
    done = traj.meta.get("steps_done") if isinstance(traj.meta, Mapping) else None
    if n < last and isinstance(done, (int, np.integer)) and done >= last:
        return int(done)
    return last


def _stationary_means(
    traj: Any, events: Any, lr: float, n: int, scheduled: bool = False
) -> tuple[float, float]:
    """(mean effective LR, rms sphere gradient norm) over the stationary part.

    Evenly spaced rows: the plain means over the rows. Thinned rows (or a
    schedule): the exact means over every step from the simulation's running
    sums (``Trajectory.exact_means``) when it has them, else the means with each
    row weighted by the steps it stands for.
    """
    from siflow import periods

    if traj.rho is None or not n:
        return math.nan, math.nan
    part = None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        part = periods.stationary_part(traj, events)
    if part is None or len(part) == 0:
        part = traj[n // 2 :]
    gaps = np.diff(np.asarray(part.step))
    if (scheduled or np.any(gaps != gaps[:1])) and hasattr(traj, "exact_means"):
        exact = traj.exact_means(int(part.step[0]), int(part.step[-1]))
        if exact is not None:
            return float(exact["elr_mean"]), float(exact["grad_norm_sphere_rms"])
    if scheduled:
        return math.nan, math.nan  # the rows do not say which lr each step had
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        elr = np.asarray(effective_lr(lr, part.rho), dtype=np.float64)
    elr_mean = _time_weighted_mean(elr, part.step)
    grad_rms = math.nan
    if part.grad_norm_sphere is not None:
        g = np.asarray(part.grad_norm_sphere, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean_sq = _time_weighted_mean(g * g, part.step)
        grad_rms = math.sqrt(mean_sq) if math.isfinite(mean_sq) else math.nan
    return elr_mean, grad_rms


# --------------------------------------------------------------------- result
def _row_to_json(row: Mapping[str, Any]) -> str:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return json.dumps(clean, sort_keys=True)


@dataclass
class SweepResult:
    """Rows of a (possibly partial) sweep, with grid views for plotting.

    ``rows`` holds one dict per finished cell (keys :data:`ROW_FIELDS`) sorted
    by ``index``; ``out`` is the directory the sweep was written to (or None);
    ``discarded`` the indices of cell files found in ``out`` that were not used
    (another configuration's, damaged or edited) and so were recomputed.
    """

    config: SweepConfig
    rows: list[dict[str, Any]]
    out: Path | None = None
    discarded: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every cell of the grid has a row."""
        return len(self.rows) == len(self.config)

    def missing(self) -> list[int]:
        """Indices of cells without a row."""
        done = {r["index"] for r in self.rows}
        return [i for i in range(len(self.config)) if i not in done]

    def column(self, name: str) -> NDArray[Any]:
        """One column over the rows (float64, or str for ``regime``/``status``)."""
        if name not in ROW_FIELDS:
            raise ValueError(f"unknown column {name!r}; choose from {', '.join(ROW_FIELDS)}")
        values = [r[name] for r in self.rows]
        if name in ("regime", "status"):
            return np.array(values, dtype=str)
        return np.array(values, dtype=np.float64)

    def _grid(self, momentum: float | None) -> tuple[float, list[dict[str, Any]]]:
        moms = self.config.momentum
        if momentum is None:
            momentum = moms[0]
        if float(momentum) not in moms:
            raise ValueError(f"momentum {momentum!r} is not in the sweep (values: {list(moms)})")
        return float(momentum), [r for r in self.rows if r["momentum"] == float(momentum)]

    def regime_grid(self, momentum: float | None = None) -> NDArray[np.str_]:
        """Regime per (wd, lr) cell: the most frequent over seeds (``""`` if not run).

        Ties go to the later label of :data:`REGIMES` (the less stable regime).
        """
        _, rows = self._grid(momentum)
        cfg = self.config
        grid = np.full((len(cfg.wd), len(cfg.lr)), "", dtype=object)
        votes: dict[tuple[int, int], Counter[str]] = {}
        for r in rows:
            key = (cfg.wd.index(r["wd"]), cfg.lr.index(r["lr"]))
            votes.setdefault(key, Counter())[r["regime"]] += 1
        for (i, j), c in votes.items():
            best = max(c.values())
            grid[i, j] = max((k for k, v in c.items() if v == best), key=_regime_rank)
        return grid.astype(str)

    def value_grid(self, name: str, momentum: float | None = None) -> NDArray[np.float64]:
        """Median over seeds of a numeric column per (wd, lr) cell (NaN if none)."""
        _, rows = self._grid(momentum)
        cfg = self.config
        acc: dict[tuple[int, int], list[float]] = {}
        for r in rows:
            key = (cfg.wd.index(r["wd"]), cfg.lr.index(r["lr"]))
            acc.setdefault(key, []).append(float(r[name]))
        grid = np.full((len(cfg.wd), len(cfg.lr)), np.nan)
        for (i, j), vals in acc.items():
            v = np.asarray(vals)
            v = v[np.isfinite(v)]
            if v.size:
                grid[i, j] = float(np.median(v))
        return grid

    def csv_text(self) -> str:
        """The table as :meth:`to_csv` writes it (one row per finished cell)."""
        lines = [",".join(ROW_FIELDS)]
        for r in self.rows:
            cells = []
            for k in ROW_FIELDS:
                v = r[k]
                cells.append(repr(float(v)) if isinstance(v, float) else str(v))
            lines.append(",".join(cells))
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table (one row per finished cell) atomically."""
        path = Path(path)
        with atomic_write(path) as fh:
            fh.write(self.csv_text())
        return path


def _regime_rank(name: str) -> int:
    return REGIMES.index(name) if name in REGIMES else len(REGIMES)


# ---------------------------------------------------------------- persistence
class SweepLockedError(BlockingIOError):
    """Another sweep holds the lock on the output directory."""


#: Lock files this process holds (closed in forked workers, which must not keep them).
_HELD_LOCKS: list[Any] = []


def _try_lock(fh: Any) -> bool:
    """Take an exclusive, non-blocking lock on an open file (False if another holds it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


#: Flags that open the lock file itself, never what a symbolic link there points to
#: (``O_NOFOLLOW``), without blocking on a FIFO planted there (``O_NONBLOCK``).
_LOCK_OPEN_FLAGS = (
    os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _open_lock_file(path: Path, create: bool = True) -> Any:
    """Open the lock file ``path`` for reading and writing, as a regular file only.

    A symbolic link (which could point at any file the user may write, and whose
    target the pid written into the lock would replace) or anything else that is not
    a regular file is refused with ``OSError`` naming it and the fix.
    """
    flags = _LOCK_OPEN_FLAGS if create else _LOCK_OPEN_FLAGS & ~os.O_CREAT
    refusal = (
        f"{str(path)!r} is not a regular file (a symbolic link or other special file), so "
        f"it cannot serve as the sweep's lock; remove it, or pass another out="
    )
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise OSError(refusal) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(refusal)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "r+", encoding="utf-8")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (file ``out/.lock``) for the block.

    The operating system releases the lock when the holder exits, however it
    exits (``kill -9`` included), so a stale lock never blocks a resume. The lock
    file is never followed through a symbolic link (:func:`_open_lock_file`).
    """
    path = out / _LOCK_FILE
    fh = _open_lock_file(path)
    try:
        if not _try_lock(fh):
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise SweepLockedError(
                f"another sweep ({holder}) is writing into {str(out)!r}; wait for it to "
                f"finish, or pass another out="
            )
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        _HELD_LOCKS.append(fh)
        try:
            yield
        finally:
            _HELD_LOCKS.remove(fh)
    finally:
        fh.close()


def _cell_path(out: Path, index: int) -> Path:
    return out / _CELL_DIR / f"cell_{index:06d}.json"


def _checksum(fingerprint: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256((fingerprint + _row_to_json(row)).encode()).hexdigest()[:16]


def _cell_to_json(row: Mapping[str, Any], fingerprint: str) -> str:
    """A cell file: the row, the configuration's fingerprint and a checksum of both."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    clean["fingerprint"] = fingerprint
    clean["checksum"] = _checksum(fingerprint, row)
    return json.dumps(clean, sort_keys=True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _row_is_consistent(row: Mapping[str, Any], config: SweepConfig) -> bool:
    """The checks a row passes whoever wrote it: its cell, its types, its identities."""
    idx = row["index"]
    if not _is_int(idx) or not 0 <= idx < len(config):
        return False
    if any(row[k] != v for k, v in config.cell(idx).items()):
        return False
    if row["regime"] not in REGIMES or row["status"] not in _STATUSES:
        return False
    if not _is_int(row["n_events"]) or row["n_events"] < 0:
        return False
    if not _is_int(row["steps_run"]) or not 0 <= row["steps_run"] <= config.steps:
        return False
    if not all(isinstance(row[k], float) for k in _FLOAT_FIELDS):
        return False
    return row["lr_wd"] == row["lr"] * row["wd"]


def _row_from_cell_file(text: str, config: SweepConfig, fingerprint: str) -> dict | None:
    """The row of a cell file, or None when it is not a valid cell of ``config``."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict) or raw.get("fingerprint") != fingerprint:
        return None
    if set(raw) != {*ROW_FIELDS, "fingerprint", "checksum"}:
        return None
    row = {}
    for k in ROW_FIELDS:
        v = raw[k]
        row[k] = math.nan if v is None and k in _FLOAT_FIELDS else v
        if k in _FLOAT_FIELDS and _is_int(row[k]):
            return None  # written by json.dumps from a float: never an int
    if raw["checksum"] != _checksum(fingerprint, row):
        return None
    return row if _row_is_consistent(row, config) else None


def _read_cells(out: Path, config: SweepConfig) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Valid cells of ``config`` in ``out``, and the indices of cell files not used."""
    done: dict[int, dict[str, Any]] = {}
    discarded: list[int] = []
    fingerprint = config.fingerprint()
    n = len(config)
    for p in sorted((out / _CELL_DIR).glob("cell_*.json")):
        try:
            index = int(p.stem.removeprefix("cell_"))
        except ValueError:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        row = _row_from_cell_file(text, config, fingerprint)
        if row is not None and row["index"] == index:
            done[index] = row
        elif 0 <= index < n:
            discarded.append(index)
    return done, discarded


def _prepare_out(out: Path, config: SweepConfig, restart: bool) -> None:
    """Check ``out`` holds this sweep (or nothing); write ``sweep.json``. Under the lock."""
    cfg_path = out / _CONFIG_FILE
    if cfg_path.exists() and not restart:
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{str(cfg_path)!r} is unreadable ({exc}); pass restart=True or another out="
            ) from None
        if old != json.loads(json.dumps(config.to_dict())):
            raise ValueError(_different_sweep(out))
        return
    for p in (out / _CELL_DIR).glob("cell_*.json"):
        p.unlink()
    with contextlib.suppress(FileNotFoundError):
        (out / _TABLE_FILE).unlink()
    with atomic_write(cfg_path) as fh:
        json.dump(config.to_dict(), fh, indent=1, sort_keys=True)


def _different_sweep(out: Path) -> str:
    return f"{str(out)!r} holds a different sweep; pass another out=, or restart=True to discard it"


def _held_elsewhere(out: Path) -> bool:
    """Whether another process holds the lock on ``out`` (nothing is created to tell)."""
    try:
        fh = _open_lock_file(out / _LOCK_FILE, create=False)
    except OSError:
        return False  # no lock file (nobody holds it), or one _locked refuses with its reason
    try:
        return not _try_lock(fh)
    finally:
        fh.close()  # releases the lock this look may have taken


def _refuse_foreign_out(out: Path | None, config: SweepConfig, restart: bool) -> None:
    """Refuse, before anything is created in it, an ``out`` this sweep must not write into.

    That is a folder holding another sweep's ``sweep.json``, or a ``table.csv`` without
    a ``sweep.json`` (not a sweep folder: the table would be overwritten). A look
    without the lock; :func:`_prepare_out` checks again under it.
    """
    if out is None or restart or not out.is_dir() or _held_elsewhere(out):
        return  # a busy folder is refused by the lock, with the holder's pid
    cfg_path = out / _CONFIG_FILE
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # reported, with its reason, by _prepare_out
        if old != json.loads(json.dumps(config.to_dict())):
            raise ValueError(_different_sweep(out))
    elif (out / _TABLE_FILE).exists():
        raise ValueError(
            f"{str(out)!r} holds a {_TABLE_FILE} but no {_CONFIG_FILE}, so it is not a sweep "
            f"folder and its table would be overwritten; pass another out=, or "
            f"restart=True to overwrite it"
        )


def _refuse_misplaced_files(out: Path | None) -> None:
    """Refuse, before anything is made, an ``out`` whose table or cell folder the sweep
    could not write: a folder named ``table.csv``, a file named ``cells``."""
    if out is None or not out.is_dir():
        return
    table = out / _TABLE_FILE
    if table.is_dir():
        raise ValueError(
            f"{str(table)!r} is a directory, where the sweep writes its table; remove it, or "
            f"pass another out="
        )
    cells = out / _CELL_DIR
    if cells.exists() and not cells.is_dir():
        raise ValueError(
            f"{str(cells)!r} is a file, where the sweep keeps its cells; remove it, or pass "
            f"another out="
        )


def _finished_sweep(out: Path | None, config: SweepConfig, restart: bool) -> SweepResult | None:
    """The result of ``config`` when ``out`` holds it finished, with its table written.

    Then a rerun has nothing to compute or write, so it takes no lock and writes
    nothing (the folder may be on a read-only medium). None when anything is left to
    do: a missing, damaged or foreign cell, a table missing or not of these cells, a
    folder another sweep is writing into, or ``restart``.
    """
    if out is None or restart or not (out / _CONFIG_FILE).is_file():
        return None
    try:
        old = json.loads((out / _CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if old != json.loads(json.dumps(config.to_dict())) or _held_elsewhere(out):
        return None
    done, discarded = _read_cells(out, config)
    if discarded or len(done) != len(config):
        return None
    result = SweepResult(config, [done[i] for i in sorted(done)], out, [])
    table = out / _TABLE_FILE
    try:
        if not table.is_file() or table.read_text(encoding="utf-8") != result.csv_text():
            return None
    except (OSError, UnicodeDecodeError):
        return None
    return result


def _make_out(out: Path) -> None:
    try:
        ensure_dir(out)
        ensure_dir(out / _CELL_DIR)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(
            f"cannot use {str(out)!r} as the sweep directory ({reason}); pass another out="
        ) from None


def load(out: str | os.PathLike[str]) -> SweepResult:
    """Read a sweep directory written by :func:`sweep` (complete or not).

    Only the valid cells of the directory's configuration are read
    (``discarded`` lists the others).
    """
    out = Path(out)
    cfg_path = out / _CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(out)!r} is not a sweep directory (no {_CONFIG_FILE})")
    try:
        config = SweepConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(cfg_path)!r} is not a siflow sweep configuration ({exc})") from None
    done, discarded = _read_cells(out, config)
    return SweepResult(config, [done[i] for i in sorted(done)], out, discarded)


# ------------------------------------------------------------------- estimate
#: Memory of one worker process before its first cell (interpreter, numpy, numba, siflow).
_WORKER_BASE_BYTES = 160 * 2**20
#: Memory per kept row of one cell: the trajectory's columns and the analysis' copies.
_BYTES_PER_ROW = 400
#: Memory per cell in the sweep's own process (its row and its task).
_BYTES_PER_CELL_IN_MEMORY = 4096
#: Disk per cell file (one file-system block).
_BYTES_PER_CELL_ON_DISK = 4096
#: Steps of the timed trial run that estimates the time per cell.
_PROBE_STEPS = 2000


@dataclass(frozen=True)
class SweepEstimate:
    """What a sweep needs, estimated before it starts (see :func:`estimate`).

    Memory and disk are upper estimates; ``seconds`` extrapolates a timed trial
    run of one cell linearly in ``steps`` (None when not measured).
    """

    cells: int
    workers: int
    rows_per_cell: int
    memory_bytes: int
    memory_available: int | None
    disk_bytes: int
    disk_free: int | None
    seconds: float | None = None

    def describe(self) -> str:
        """One line, e.g. ``"12 cells on 2 workers: about 3 s, 0.4 GB of memory"``."""
        when = f"about {_duration(self.seconds)}, " if self.seconds is not None else ""
        return (
            f"{self.cells} cells on {self.workers} worker{'s' * (self.workers > 1)}: {when}"
            f"{format_bytes(self.memory_bytes)} of memory, {format_bytes(self.disk_bytes)} on disk"
        )


def _duration(seconds: float) -> str:
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.2g} s"


def _free_disk(out: Path | None) -> int | None:
    if out is None:
        return None
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _rows_per_cell(config: SweepConfig) -> int:
    every = config.options.get("record_every")
    if every is not None:
        return -(-config.steps // int(every))
    if config.max_rows is not None and config.simulator == "siflow.simulate:simulate":
        return min(config.steps, config.max_rows)
    if config.max_rows is not None:
        with contextlib.suppress(ValueError):
            if _thinning_kwargs(_simulator(config), config.max_rows):
                return min(config.steps, config.max_rows)
    return config.steps


def estimate(
    config: SweepConfig,
    workers: int,
    *,
    cells: int | None = None,
    out: str | os.PathLike[str] | None = None,
    seconds_per_cell: float | None = None,
) -> SweepEstimate:
    """Estimate the memory, disk and time a sweep of ``config`` needs.

    Parameters
    ----------
    config : SweepConfig
        The sweep.
    workers : int
        Processes computing cells at once.
    cells : int, optional
        Cells still to compute (default: all).
    out : path, optional
        Output directory (for the free disk space; None: nothing written).
    seconds_per_cell : float, optional
        Measured time of one cell (see :func:`sweep`); None leaves the time out.
    """
    n_cells = len(config) if cells is None else int(cells)
    rows = _rows_per_cell(config)
    busy = max(1, min(workers, n_cells))
    per_worker = _WORKER_BASE_BYTES + rows * _BYTES_PER_ROW
    memory = busy * per_worker + len(config) * _BYTES_PER_CELL_IN_MEMORY
    out_path = Path(out) if out is not None else None
    disk = n_cells * _BYTES_PER_CELL_ON_DISK if out_path is not None else 0
    seconds = None
    if seconds_per_cell is not None:
        seconds = math.ceil(n_cells / busy) * seconds_per_cell
    return SweepEstimate(n_cells, busy, rows, memory, available_memory(), disk,
                         _free_disk(out_path), seconds)  # fmt: skip


def _refuse_what_cannot_fit(est: SweepEstimate, config: SweepConfig) -> None:
    """Raise ``ValueError`` naming the fix when memory or disk cannot hold the sweep."""
    grid = " x ".join(str(n) for n in config.shape)
    table = len(config) * _BYTES_PER_CELL_IN_MEMORY
    if est.memory_available is not None and est.memory_bytes > est.memory_available:
        if table > est.memory_available / 2:
            fix = "pass fewer lr=, wd=, momentum= or seeds= values"
        elif est.workers > 1:
            fix = "pass fewer workers=, or max_rows= (rows kept per cell)"
        else:
            fix = "pass max_rows= (rows kept per cell) or fewer steps="
        raise ValueError(
            f"the sweep ({grid} = {len(config)} cells, {est.rows_per_cell} rows per cell) "
            f"needs about {format_bytes(est.memory_bytes)} of memory, "
            f"{format_bytes(est.memory_available)} are available; {fix}"
        )
    if est.disk_free is not None and est.disk_bytes > est.disk_free:
        raise ValueError(
            f"the sweep's {est.cells} cell files need about {format_bytes(est.disk_bytes)} on "
            f"disk, {format_bytes(est.disk_free)} are free; pass fewer lr=, wd=, momentum= or "
            f"seeds= values, or another out="
        )


def _seconds_per_cell(config: SweepConfig) -> float:
    """Time one cell: trial runs of ``n`` and ``4n`` steps, extrapolated linearly.

    ``n = min(steps, 500)``; the fixed cost per cell (start-up, analysis) is the
    intercept, the cost per step the slope. Where the rows are thinned the
    analysis costs less than this, so the estimate errs long.
    """
    short = min(config.steps, _PROBE_STEPS // 4)
    times = []
    for n in (short, min(config.steps, 4 * short)):
        probe = dataclasses.replace(config, steps=n)
        t0 = time.perf_counter()
        with _one_blas_thread():
            _compute_cell(probe, config.cell(0))
        times.append((n, time.perf_counter() - t0))
    (n1, t1), (n2, t2) = times
    if n2 == n1:
        return max(t1, t2)
    # timings on a busy machine are noisy: the cost per step is at least a quarter of
    # the longer trial's average, whatever the difference of the two says
    per_step = max((t2 - t1) / (n2 - n1), 0.25 * t2 / n2)
    return max(t1 - per_step * n1, 0.0) + per_step * config.steps


def _refuse_what_takes_too_long(est: SweepEstimate, max_hours: float | None) -> None:
    if max_hours is None or est.seconds is None or est.seconds <= max_hours * 3600:
        return
    raise ValueError(
        f"the sweep would take about {_duration(est.seconds)} ({est.cells} cells on "
        f"{est.workers} worker{'s' * (est.workers > 1)}), more than the limit of {max_hours:g} h; "
        f"pass fewer steps= or cells, more workers=, or a larger max_hours="
    )


# ------------------------------------------------------------------ execution
def _compute_cell(config: SweepConfig, cell: Mapping[str, Any]) -> dict[str, Any]:
    """Compute one cell's row: the one place every execution path goes through."""
    return run_cell(config, cell)


def _run_batch(config: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cfg = SweepConfig.from_dict(config)
    return [_compute_cell(cfg, c) for c in cells]


def _batches(cells: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [cells[i : i + size] for i in range(0, len(cells), size)]


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _start_method() -> str | None:
    """How local workers start.

    ``fork`` when this process runs no other Python thread (fast, no ``__main__``
    guard needed, works from stdin and notebooks), or when ``__main__`` has no
    file that a fresh worker could re-import (stdin, ``-c``); otherwise
    ``forkserver``, which is safe with threads but re-imports ``__main__`` in the
    workers, so scripts need an ``if __name__ == "__main__":`` guard.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "fork" in methods:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if threading.active_count() == 1 or not main_file or not os.path.isfile(main_file):
            return "fork"
    return "forkserver" if "forkserver" in methods else None


_PR_SET_PDEATHSIG = 1


def _process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    return False


def _watch_sweep(sweep_pid: int) -> None:
    """Exit this process as soon as the sweep's process exits (a daemon thread).

    Waits on a pidfd where the platform has them (Linux >= 5.3; readable once the
    process has exited, reaped or not); elsewhere polls every 0.2 s.
    """
    import select

    fd = None
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(sweep_pid)
    if fd is None and _process_gone(sweep_pid):
        os._exit(1)

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
            os._exit(1)
        while not _process_gone(sweep_pid):
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="siflow-sweep-watch", daemon=True).start()


def _exit_with_sweep(sweep_pid: int) -> None:
    """End this worker when the sweep's process dies, however it dies (``kill -9`` too).

    A worker forked by the sweep itself on Linux gets
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills it with its parent. Every
    worker also runs :func:`_watch_sweep`, which covers the other platforms and
    workers forked by a forkserver (whose server lives as long as its workers do).
    """
    import signal

    if sys.platform.startswith("linux") and os.getppid() == sweep_pid:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != sweep_pid:  # died before the request took effect
                os._exit(1)
    _watch_sweep(sweep_pid)


def _init_local_worker(sweep_pid: int) -> None:
    """Local pool worker: dies with the sweep, one thread, Ctrl-C is the parent's business.

    SIGTERM gets its default action back (a forked worker inherits the handler the
    command line installs, which would turn the pool's own ``terminate()`` into an
    exception the worker reports and survives).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fh in _HELD_LOCKS:  # a forked copy of the sweep's lock must not outlive the sweep
        with contextlib.suppress(OSError):
            fh.close()
    _HELD_LOCKS.clear()
    _exit_with_sweep(sweep_pid)
    _pin_worker_threads()


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """``threadpoolctl.threadpool_limits(1)`` when threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _pin_worker_threads() -> None:
    """Pin BLAS/OpenMP and numba to one thread in this (worker) process."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    with contextlib.suppress(ImportError, ValueError, RuntimeError):
        import numba

        numba.set_num_threads(1)


def _cells_summary(batches: list[list[dict[str, Any]]]) -> str:
    idx = sorted(c["index"] for b in batches for c in b)
    shown = ", ".join(str(i) for i in idx[:5]) + (", ..." if len(idx) > 5 else "")
    return f"{len(idx)} cell{'s' * (len(idx) > 1)} ({shown})"


def _run_local(
    config: SweepConfig,
    todo: list[dict[str, Any]],
    workers: int,
    batch: int,
    on_rows: Callable[[list[dict[str, Any]]], None],
    note: Callable[[str], None],
) -> None:
    """Compute ``todo`` here (one worker) or in a process pool.

    A pool whose worker dies is replaced once and the unfinished cells retried;
    a second death raises ``ChildProcessError`` (the finished cells are kept).
    """
    if workers == 1 or len(todo) <= 1:
        # in this process too: one BLAS thread, else idle OpenBLAS threads spin on the
        # other core after every small BLAS call
        with _one_blas_thread():
            for c in todo:
                on_rows([_compute_cell(config, c)])
        return
    lost = _run_pool(config, _batches(todo, batch), workers, on_rows)
    if lost:
        note(
            f"a worker process died (killed, or out of memory); retrying its unfinished "
            f"{_cells_summary(lost)} once in new workers"
        )
        lost = _run_pool(config, lost, workers, on_rows)
    if lost:
        raise ChildProcessError(
            f"a worker process died again (killed, or out of memory) with "
            f"{_cells_summary(lost)} unfinished; the finished cells are kept (with out=, a "
            f"rerun resumes); if a cell needs more memory than is free, pass fewer workers=, "
            f"max_rows= or steps="
        )


def _run_pool(
    config: SweepConfig,
    batches: list[list[dict[str, Any]]],
    workers: int,
    on_rows: Callable[[list[dict[str, Any]]], None],
) -> list[list[dict[str, Any]]]:
    """Run ``batches`` in a fresh process pool; return those lost to a dead worker."""
    import concurrent.futures as cf
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    method = _start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        # workers fork from a server that has imported the simulation code once
        sim_module = config.simulator.partition(":")[0]
        ctx.set_forkserver_preload(["siflow.sweep", "siflow.periods", sim_module])
    cfg = config.to_dict()
    pool = cf.ProcessPoolExecutor(
        max_workers=min(workers, len(batches)),
        mp_context=ctx,
        initializer=_init_local_worker,
        initargs=(os.getpid(),),
    )
    lost: list[list[dict[str, Any]]] = []
    try:
        futures = {pool.submit(_run_batch, cfg, b): b for b in batches}
        for fut in cf.as_completed(futures):
            try:
                rows = fut.result()
            except BrokenProcessPool:
                lost.append(futures[fut])
                continue
            on_rows(rows)
    except BaseException:
        # stop now: cancel queued cells and end the running ones (their results are lost,
        # the cells already written stay, and a rerun resumes from them)
        procs = list(getattr(pool, "_processes", {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            with contextlib.suppress(OSError, AttributeError):
                proc.terminate()
        _join_pool_manager(manager)
        raise
    pool.shutdown(wait=True)
    return lost


def _join_pool_manager(thread: threading.Thread | None, timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` s) for a shut-down pool's manager thread to finish.

    Its last act closes the pipe that ``concurrent.futures`` writes to at
    interpreter exit; an exit that races with the close prints a traceback
    ("Bad file descriptor") after an interrupted sweep (CPython 3.11).
    """
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _dask_client(address: Any) -> tuple[Any, bool]:
    """A connected ``distributed.Client`` and whether this module owns (must close) it."""
    distributed = require("distributed", "dask")
    if isinstance(address, distributed.Client):
        return address, False
    if not isinstance(address, str) or not address.strip():
        raise ValueError(
            f"dask must be a scheduler address such as 'tcp://host:8786' or a Client, "
            f"got {address!r}; pass the address of a running scheduler"
        )
    try:
        return distributed.Client(address, timeout=10), True
    except (OSError, ValueError, TypeError) as exc:
        raise OSError(
            f"cannot reach the Dask scheduler at {address!r} ({exc}); pass the address of a "
            f"running scheduler (start one with 'dask scheduler')"
        ) from None


def _run_dask(
    config: SweepConfig,
    todo: list[dict[str, Any]],
    client: Any,
    batch: int,
    on_rows: Callable[[list[dict[str, Any]]], None],
) -> None:
    distributed = require("distributed", "dask")
    client.run(_pin_worker_threads)
    cfg = config.to_dict()
    futures = [client.submit(_run_batch, cfg, b, pure=False) for b in _batches(todo, batch)]
    try:
        for fut in distributed.as_completed(futures):
            on_rows(fut.result())
    except BaseException:
        client.cancel(futures)
        raise


# ---------------------------------------------------------------------- sweep
def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def sweep(
    loss: str,
    *,
    lr: float | Sequence[float],
    wd: float | Sequence[float],
    momentum: float | Sequence[float] = 0.0,
    seeds: int | Sequence[int] = 0,
    steps: int = 20_000,
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    dask: Any = None,
    batch: int = 1,
    restart: bool = False,
    progress: Callable[[int, int], None] | None = None,
    simulator: str = "siflow.simulate:simulate",
    max_rows: int | None = DEFAULT_MAX_ROWS,
    max_hours: float | None = None,
    notes: Callable[[str], None] | None = None,
    schedule: str | None = None,
    **options: Any,
) -> SweepResult:
    """Run (or resume) a sweep over ``lr x wd x momentum x seeds`` for one toy loss.

    Parameters
    ----------
    loss : str
        A loss name of :func:`siflow.simulate.simulate`.
    lr, wd : float or sequence of float
        Grid values (use :func:`log_grid` for log spacing); ``lr*wd < 1`` everywhere
        and above the float range (``>= 2.2e-308``).
    momentum : float or sequence of float
        Heavy-ball momentum values in ``[0, 1)``.
    seeds : int or sequence of int
        Seeds; each (lr, wd, momentum) is simulated once per seed.
    steps : int
        Optimizer steps per simulation.
    out : path, optional
        Directory for ``sweep.json``, one file per finished cell and
        ``table.csv``, locked while the sweep runs. An existing directory of the
        same sweep is resumed; one of a different sweep is an error unless
        ``restart``. A finished sweep whose table is written is read back with no
        lock and no write (a copy on a read-only medium reruns too).
    workers : int, optional
        Local worker processes (default: all cores available to this
        process). ``1`` runs in this process.
    dask : str or distributed.Client, optional
        A Dask scheduler address (or client): run the cells on that cluster
        instead of locally. Needs ``pip install "siflow[dask]"``.
    batch : int
        Cells per task (raise it when single simulations take milliseconds).
    restart : bool
        Discard the cells of a previous sweep in ``out``.
    progress : callable, optional
        Called as ``progress(done, total)`` after each finished task.
    simulator : str
        ``"module:function"`` of the simulation function, called as
        ``f(loss, lr=, wd=, steps=, seed=, [momentum=,] [max_rows= or max_points=,]
        **options)`` and returning a :class:`~siflow.trajectory.Trajectory`
        (default: siflow's own); lets a sweep drive another model with the same
        signature. It must be importable by the workers.
    max_rows : int or None
        Rows each simulation keeps at most (passed as ``max_rows=``, or
        ``max_points=``, to a simulator that accepts it), which bounds the memory
        of a cell whatever ``steps``; None: the simulator's default.
    max_hours : float, optional
        Refuse a sweep estimated to take longer (the estimate times a trial run
        of one cell); None: no limit.
    notes : callable, optional
        Called with one-line notes: the estimate of a sweep over a minute,
        cells found damaged or of another configuration, a worker that died.
        Default: :func:`warnings.warn`.
    schedule : str, optional
        Learning-rate schedule of every cell, a spec of :mod:`siflow.schedules`
        (e.g. ``"cosine:warmup=500,min=0.005,steps=20000"``) that peaks at the
        cell's ``lr``: a spec that sets its own ``peak`` (``value`` for
        ``constant``), or that reaches 0 within ``steps``, is refused. The
        simulator must accept a :class:`~siflow.schedules.Schedule` as ``lr=``.
    **options
        Forwarded to ``simulate``: ``optimizer``, ``dim``, ``noise``, ``batch``
        (as ``sim_batch``, since ``batch`` here is the task size),
        ``record_every``.

    Returns
    -------
    SweepResult
        All rows, sorted by cell index.

    Raises
    ------
    ValueError
        Bad parameters, or a sweep that cannot fit in memory, on disk or in
        ``max_hours`` (the message names the parameter to change).
    SweepLockedError
        Another sweep is writing into ``out``.
    ChildProcessError
        A local worker died twice (the finished cells are kept).
    """
    if "sim_batch" in options:
        options["batch"] = options.pop("sim_batch")
    config = SweepConfig(
        loss=loss,
        lr=lr,  # type: ignore[arg-type]
        wd=wd,  # type: ignore[arg-type]
        momentum=momentum,  # type: ignore[arg-type]
        seeds=seeds,  # type: ignore[arg-type]
        steps=steps,
        options=options,
        simulator=simulator,
        max_rows=max_rows,
        schedule=schedule,
    )
    workers = _default_workers() if workers is None else check_positive_int("workers", workers)
    batch = check_positive_int("batch", batch)
    if max_hours is not None:
        max_hours = positive_number("max_hours", max_hours)
    out_path = Path(out) if out is not None else None
    _refuse_foreign_out(out_path, config, restart)  # before its lock file is made
    _refuse_misplaced_files(out_path)
    finished = _finished_sweep(out_path, config, restart)
    if finished is not None:
        return finished  # nothing to compute or write: no lock (a read-only copy is fine)
    _refuse_what_cannot_fit(estimate(config, workers, out=out_path), config)
    _check_loss(config)
    client, own_client = _dask_client(dask) if dask is not None else (None, False)
    try:
        if client is not None:
            workers = max(1, sum(client.nthreads().values()))
        with contextlib.ExitStack() as held:
            locked = out_path is not None and out_path.is_dir()
            if locked:  # refuse a busy folder before anything else
                held.enter_context(_locked(out_path))
            _announce_or_refuse(config, out_path, restart, workers, max_hours, notes or _warn)
            if out_path is None:
                return _sweep(config, None, workers, batch, progress, client, notes or _warn)
            _make_out(out_path)
            if not locked:
                held.enter_context(_locked(out_path))
            _prepare_out(out_path, config, restart)
            return _sweep(config, out_path, workers, batch, progress, client, notes or _warn)
    finally:
        if own_client:
            client.close()


def _announce_or_refuse(
    config: SweepConfig,
    out: Path | None,
    restart: bool,
    workers: int,
    max_hours: float | None,
    note: Callable[[str], None],
) -> None:
    """Time a trial cell; refuse a sweep over ``max_hours``, announce one over a minute."""
    n_todo = _cells_to_do(config, out, restart)
    if not n_todo:
        return
    est = estimate(config, workers, cells=n_todo, out=out,
                   seconds_per_cell=_seconds_per_cell(config))  # fmt: skip
    _refuse_what_takes_too_long(est, max_hours)
    if est.seconds is not None and est.seconds > 60:
        note(f"estimated: {est.describe()}")


def _cells_to_do(config: SweepConfig, out: Path | None, restart: bool) -> int:
    """How many cells a run would compute (a look at ``out`` without the lock)."""
    if out is None or restart or not (out / _CONFIG_FILE).is_file():
        return len(config)
    try:
        old = json.loads((out / _CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return len(config)
    if old != json.loads(json.dumps(config.to_dict())):
        return len(config)
    done, _ = _read_cells(out, config)
    return len(config) - len(done)


def _sweep(
    config: SweepConfig,
    out_path: Path | None,
    workers: int,
    batch: int,
    progress: Callable[[int, int], None] | None,
    client: Any,
    note: Callable[[str], None],
) -> SweepResult:
    done: dict[int, dict[str, Any]] = {}
    discarded: list[int] = []
    fingerprint = config.fingerprint()
    if out_path is not None:
        done, discarded = _read_cells(out_path, config)
        if discarded:
            note(
                f"{len(discarded)} cell file{'s' * (len(discarded) > 1)} in {str(out_path)!r} "
                f"{'were' if len(discarded) > 1 else 'was'} damaged or not of this sweep; "
                f"recomputing {'them' if len(discarded) > 1 else 'it'}"
            )
    todo = [c for c in config.iter_cells() if c["index"] not in done]
    total = len(config)

    def on_rows(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if out_path is not None:
                with atomic_write(_cell_path(out_path, row["index"])) as fh:
                    fh.write(_cell_to_json(row, fingerprint))
            done[row["index"]] = row
        if progress is not None:
            progress(len(done), total)

    if todo:
        if client is not None:
            _run_dask(config, todo, client, batch, on_rows)
        else:
            _run_local(config, todo, workers, batch, on_rows, note)
    result = SweepResult(config, [done[i] for i in sorted(done)], out_path, discarded)
    if out_path is not None:
        result.to_csv(out_path / _TABLE_FILE)
    return result


def _check_loss(config: SweepConfig) -> None:
    """Fail early (in this process) on a loss, option or simulator that cannot run."""
    from siflow.trajectory import Trajectory

    simulate = _simulator(config)
    kwargs = _simulation_kwargs(config, simulate, max(config.momentum))
    lr = _lr_argument(config, config.lr[0])
    try:
        traj = simulate(config.loss, lr=lr, wd=config.wd[0], steps=2, seed=0, **kwargs)
    except (TypeError, ValueError) as exc:
        if config.schedule is not None:
            raise ValueError(
                f"simulator {config.simulator!r} does not run the schedule {config.schedule!r} "
                f"({exc}); pass a simulator that takes a siflow.schedules.Schedule as its "
                f"learning rate, or no schedule="
            ) from None
        if isinstance(exc, ValueError):
            raise
        raise ValueError(
            f"simulator {config.simulator!r} cannot be called like siflow.simulate.simulate "
            f"(the loss, then the keywords lr, wd, steps and seed) ({exc}); pass a function "
            f"with that signature"
        ) from None
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"simulator {config.simulator!r} returned {type(traj).__name__}, not a "
            f"siflow.trajectory.Trajectory; pass a function that returns one"
        )


# -------------------------------------------------------- phase-diagram data
def _measured_grad_norm(result: SweepResult, momentum: float) -> float | None:
    """Median ``grad_norm_rms`` of the runs in equilibrium cells (majority over seeds).

    None when no cell of this momentum is an equilibrium.
    """
    cfg = result.config
    grid = result.regime_grid(momentum)
    vals = []
    for r in result.rows:
        if r["momentum"] != momentum or r["regime"] != "equilibrium":
            continue
        if grid[cfg.wd.index(r["wd"]), cfg.lr.index(r["lr"])] != "equilibrium":
            continue
        v = float(r["grad_norm_rms"])
        if math.isfinite(v) and v > 0:
            vals.append(v)
    return float(np.median(vals)) if vals else None


def _toy_facts(config: SweepConfig) -> tuple[float | None, int | None]:
    """Sphere sharpness at the minimum and dimension of the sweep's toy (None if unknown)."""
    try:
        from siflow.losses import make_loss

        toy = make_loss(config.loss, dim=config.options.get("dim"))
    except (ImportError, ValueError, TypeError):
        return None, None
    s_ = toy.sharpness_min
    return (float(s_) if s_ else None), int(toy.dim)


def _log_edges(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cell edges of a log grid: midpoints in log10, the ends mirrored."""
    if v.size == 1:
        return np.array([v[0] / 1.5, v[0] * 1.5])
    lv = np.log10(v)
    mid = (lv[1:] + lv[:-1]) / 2
    first, last = lv[0] - (mid[0] - lv[0]), lv[-1] + (lv[-1] - mid[-1])
    return 10 ** np.concatenate([[first], mid, [last]])


@dataclass(frozen=True)
class PhasePanel:
    """What one momentum panel of the phase diagram shows.

    ``regimes``/``period``: majority regime (``""`` not run) and median period per
    ``(wd, lr)`` cell; ``decay_end``: :func:`siflow.theory.decay_end_step` on the
    fine grid of :class:`PhaseDiagramData` (None when it does not cross ``steps``
    there); ``instability_measured``/``instability_model``: the ``lr*wd`` of
    :func:`siflow.theory.equilibrium_instability_lr_wd` with the measured and the
    model ``G`` (None when unknown or outside the plane).
    """

    momentum: float
    regimes: NDArray[np.str_]
    period: NDArray[np.float64]
    decay_end: NDArray[np.float64] | None
    instability_measured: float | None
    instability_model: float | None
    grad_norm_measured: float | None


@dataclass(frozen=True)
class PhaseDiagramData:
    """What :func:`siflow.plot.phase_diagram` draws (from :func:`phase_diagram_data`)."""

    lr: NDArray[np.float64]
    wd: NDArray[np.float64]
    lr_edges: NDArray[np.float64]
    wd_edges: NDArray[np.float64]
    fine_lr: NDArray[np.float64]
    fine_wd: NDArray[np.float64]
    steps: int
    regimes: tuple[str, ...]
    panels: tuple[PhasePanel, ...]
    lr_wd_lines: tuple[float, ...]
    sharpness: float | None
    rho0: float
    grad_norm: float | None
    grad_norm_label: str
    has_missing: bool
    title: str


def _instability_in_plane(g: float | None, s: float | None, mom: float, lo: float, hi: float):
    if g is None or s is None:
        return None
    x = float(equilibrium_instability_lr_wd(g, s, mom))
    return x if lo < x < hi else None


def _decay_end_grid(cfg: SweepConfig, fine_lr, fine_wd, sharpness, rho0, mom, grad_norm):
    if sharpness is None:
        return None
    glr, gwd = np.meshgrid(fine_lr, fine_wd)
    if not np.all(glr * gwd < 1):
        return None
    t1 = np.asarray(decay_end_step(glr, gwd, sharpness, rho0, mom, grad_norm), dtype=float)
    finite = t1[np.isfinite(t1)]
    if finite.size == 0 or not finite.min() < cfg.steps < finite.max():
        return None
    return t1


def _default_title(cfg: SweepConfig) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in sorted(cfg.options.items()))
    seeds = f"{len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''}"
    return (
        f"Regimes of SGD + WD on '{cfg.loss}' ({cfg.steps} steps, {seeds}"
        + (f", {opts}" if opts else "")
        + "); numbers: period T in steps"
    )


def phase_diagram_data(
    result: SweepResult,
    *,
    title: str | None = None,
    sharpness: float | None = None,
    rho0: float = 1.0,
    grad_norm: float | None = None,
    lr_wd_lines: Sequence[float] | None = None,
) -> PhaseDiagramData:
    """Compute what the phase diagram of ``result`` shows (see :func:`phase_diagram`).

    ``sharpness`` defaults to the toy's sphere sharpness at the minimum;
    ``grad_norm`` (the model ``G``) for isotropic noise ``sigma`` to
    ``G = sigma sqrt(dim - 1)`` (docs/theory.md section 6); ``lr_wd_lines`` to
    every decade of ``lr*wd`` inside the plane.
    """
    cfg = result.config
    lr, wd = np.asarray(cfg.lr), np.asarray(cfg.wd)
    s_auto, dim = _toy_facts(cfg)
    sharpness = s_auto if sharpness is None else float(sharpness)
    noise = float(cfg.options.get("noise") or 0.0)
    label = ""
    if grad_norm is None and noise > 0 and dim is not None and dim > 1:
        grad_norm, label = noise * math.sqrt(dim - 1), "σ√(d−1)"
    lr_e, wd_e = _log_edges(lr), _log_edges(wd)
    lo, hi = lr_e[0] * wd_e[0], lr_e[-1] * wd_e[-1]
    if lr_wd_lines is None:
        lr_wd_lines = [10.0**k for k in range(math.ceil(math.log10(lo)), 1)]
    lines = tuple(float(c) for c in lr_wd_lines if lo < c < hi)
    fine_lr, fine_wd = np.geomspace(lr_e[0], lr_e[-1], 200), np.geomspace(wd_e[0], wd_e[-1], 200)
    panels = []
    for mom in cfg.momentum:
        g_meas = _measured_grad_norm(result, mom)
        panels.append(PhasePanel(
            momentum=mom,
            regimes=result.regime_grid(mom),
            period=result.value_grid("period", mom),
            decay_end=_decay_end_grid(cfg, fine_lr, fine_wd, sharpness, rho0, mom, grad_norm),
            instability_measured=_instability_in_plane(g_meas, sharpness, mom, lo, hi),
            instability_model=_instability_in_plane(grad_norm, sharpness, mom, lo, hi),
            grad_norm_measured=g_meas,
        ))  # fmt: skip
    missing = any((p.regimes == "").any() for p in panels)
    return PhaseDiagramData(lr, wd, lr_e, wd_e, fine_lr, fine_wd, cfg.steps, REGIMES,
                            tuple(panels), lines, sharpness, float(rho0), grad_norm, label,
                            bool(missing), title or _default_title(cfg))  # fmt: skip


def phase_diagram(
    result: SweepResult,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    sharpness: float | None = None,
    rho0: float = 1.0,
    grad_norm: float | None = None,
    lr_wd_lines: Sequence[float] | None = None,
    annotate: bool = True,
) -> Any:
    """Draw the regime of each (lr, wd) cell, one panel per momentum value.

    :func:`phase_diagram_data` computes the panels and theory lines and
    :func:`siflow.plot.phase_diagram` draws them (see there for what each line
    means). Returns the matplotlib figure; writes it (PNG/SVG/PDF by suffix,
    atomically) when ``path`` is given.
    """
    from siflow import plot

    data = phase_diagram_data(result, title=title, sharpness=sharpness, rho0=rho0,
                              grad_norm=grad_norm, lr_wd_lines=lr_wd_lines)  # fmt: skip
    return plot.phase_diagram(data, path, annotate=annotate)


# ----------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m siflow.sweep``: run or resume a sweep, print and draw it."""
    from siflow._sweep_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    from siflow._sweep_cli import main as _main

    raise SystemExit(_main())
