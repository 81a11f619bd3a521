"""Grids over (lr, wd, momentum, seed): regimes, periods and the phase diagram.

A sweep runs :func:`siflow.simulate.simulate` once per cell of the grid
``lr x wd x momentum x seed`` for one toy loss, classifies each run with
:func:`siflow.periods.classify` (``"converged"``, ``"equilibrium"``,
``"periodic"``, ``"diverged"``) and measures its period
(:attr:`siflow.periods.Events.period_median`) and effective learning rate
(``elr = lr / rho^2``).

Resumable by construction: with ``out`` given, the sweep writes ``sweep.json``
(its configuration) first and then one small JSON file per finished cell,
``cells/cell_000123.json``, each written atomically
(:func:`siflow._fileio.atomic_write`). A sweep that is interrupted (Ctrl-C, a
killed process, a lost machine) is resumed by running the same call or
command again: cells already on disk are read back, not recomputed, and the
final table is the same as that of an uninterrupted run because each cell
depends only on its own ``(lr, wd, momentum, seed)``.

Parallel execution: locally on all cores by default (a process pool whose
workers pin BLAS/OpenMP and numba to one thread each, so small kernels do not
fight over the cores), or on a Dask cluster with ``dask="tcp://host:port"``
(optional extra ``siflow[dask]``). Each cell is a pure function of its
parameters, so the table is identical whichever way it was computed.

The theory drawn on the phase diagram (:func:`phase_diagram`):

- lines of constant ``lr*wd``: by the scale symmetry of SGD+WD on a
  scale-invariant loss (docs/theory.md section 0, exact), runs with the same
  ``lr*wd`` and the same initial effective LR follow the same directions, so
  regime boundaries of a sweep started at a fixed effective LR are lines of
  constant ``lr*wd`` in the (lr, wd) plane;
- the period scale ``1/(lr*wd)``: the weight-decay phase between two
  destabilizations lasts ``ln(rho_max^2/rho_crit^2) / (-2 ln(1 - lr wd))`` steps
  (docs/theory.md section 2; first order in ``lr*wd`` this is ``~ 1/(2 lr wd)`` per
  e-fold of the squared norm), so a run of ``steps`` steps can show periods
  only where ``1/(lr*wd)`` is well below ``steps``: the line
  ``lr*wd = 1/steps`` is drawn.

Command line: ``python -m siflow.sweep --help``.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow._fileio import atomic_path, atomic_write, ensure_dir, require
from siflow._validate import check_lr_wd, check_momentum, check_positive, check_positive_int
from siflow.theory import decay_end_step, equilibrium_instability_lr_wd

__all__ = [
    "REGIMES",
    "ROW_FIELDS",
    "SweepConfig",
    "SweepResult",
    "log_grid",
    "run_cell",
    "sweep",
    "load",
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

#: Keyword arguments forwarded to :func:`siflow.simulate.simulate` when given.
SIM_OPTIONS: tuple[str, ...] = ("optimizer", "dim", "noise", "batch", "record_every")

_CONFIG_FILE = "sweep.json"
_CELL_DIR = "cells"
_TABLE_FILE = "table.csv"
_FORMAT = "siflow-sweep-1"


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
    lo = float(check_positive("low", low))
    hi = float(check_positive("high", high))
    num = check_positive_int("num", num)
    if hi < lo:
        raise ValueError(f"high must be >= low, got low={lo!r}, high={hi!r}; swap them")
    if num == 1:
        if lo != hi:
            raise ValueError(f"num=1 needs low == high, got {lo!r} and {hi!r}; pass num >= 2")
        return np.array([lo])
    return np.logspace(math.log10(lo), math.log10(hi), num)


def _as_tuple(name: str, values: float | Iterable[float]) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty 1-D list of numbers")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} has repeated values {arr.tolist()}; pass each value once")
    return tuple(float(x) for x in arr)


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes: the toy, the grid and the simulation options.

    Cells are numbered in the order ``momentum, wd, lr, seed`` (seed fastest),
    see :meth:`cells`.
    """

    loss: str
    lr: tuple[float, ...]
    wd: tuple[float, ...]
    momentum: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)
    steps: int = 20_000
    options: dict[str, Any] = field(default_factory=dict)
    simulator: str = "siflow.simulate:simulate"

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"loss must be the name of a toy loss, got {self.loss!r}")
        lr = _as_tuple("lr", self.lr)
        wd = _as_tuple("wd", self.wd)
        check_lr_wd(max(lr), max(wd))
        check_lr_wd(min(lr), min(wd))
        mom = _as_tuple("momentum", self.momentum)
        check_momentum(np.array(mom))
        seeds = tuple(int(s) for s in np.atleast_1d(self.seeds))
        if len(set(seeds)) != len(seeds) or not seeds or min(seeds) < 0:
            raise ValueError(
                f"seeds must be distinct integers >= 0, got {list(seeds)}; pass e.g. 0 1 2"
            )
        unknown = sorted(set(self.options) - set(SIM_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown simulation option(s) {unknown}; allowed: {', '.join(SIM_OPTIONS)}"
            )
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "wd", wd)
        object.__setattr__(self, "momentum", mom)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        opts = {k: v for k, v in dict(self.options).items() if v is not None}
        object.__setattr__(self, "options", opts)
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
        return int(np.prod(self.shape))

    def cells(self) -> list[dict[str, Any]]:
        """Every cell as ``{"index", "lr", "wd", "momentum", "seed"}``, in index order."""
        out = []
        for i, (m, w, lr, s) in enumerate(
            itertools.product(self.momentum, self.wd, self.lr, self.seeds)
        ):
            out.append({"index": i, "lr": lr, "wd": w, "momentum": m, "seed": s})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (also the resume fingerprint)."""
        d = asdict(self)
        d["lr"], d["wd"] = list(self.lr), list(self.wd)
        d["momentum"], d["seeds"] = list(self.momentum), list(self.seeds)
        d["format"] = _FORMAT
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepConfig:
        """Inverse of :meth:`to_dict`."""
        keys = ("loss", "lr", "wd", "momentum", "seeds", "steps", "options")
        extra = {"simulator": d["simulator"]} if "simulator" in d else {}
        return cls(**{k: d[k] for k in keys}, **extra)


def _simulator(config: SweepConfig) -> Callable[..., Any]:
    module, _, name = config.simulator.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import simulator {config.simulator!r} ({exc})") from None


# ----------------------------------------------------------------------- cell
def _nan_if_none(x: Any) -> float:
    if x is None:
        return math.nan
    x = float(x)
    return x


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
        ``lr/rho^2`` and ``grad_norm_rms`` the root mean square of the sphere
        gradient norm ``g~`` over the stationary part
        (:func:`siflow.periods.stationary_part`; for an equilibrium
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
    kwargs = dict(config.options)
    if mom != 0.0:
        kwargs["momentum"] = mom
    traj = simulate(config.loss, lr=lr, wd=wd, steps=config.steps, seed=int(seed), **kwargs)
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
    elr_mean = grad_rms = math.nan
    if traj.rho is not None and n:
        part = None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            part = periods.stationary_part(traj, events)
        if part is None or len(part) == 0:
            part = traj[n // 2 :]
        with np.errstate(divide="ignore", invalid="ignore"):
            elr = lr / part.rho**2
        finite = elr[np.isfinite(elr)]
        elr_mean = float(np.mean(finite)) if finite.size else math.nan
        if part.grad_norm_sphere is not None:
            g = part.grad_norm_sphere[np.isfinite(part.grad_norm_sphere)]
            grad_rms = float(np.sqrt(np.mean(g * g))) if g.size else math.nan
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
        "steps_run": int(traj.step[-1]) + 1 if n else 0,
    }


def _run_batch(config: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cfg = SweepConfig.from_dict(config)
    return [run_cell(cfg, c) for c in cells]


def _init_local_worker() -> None:
    """Local pool worker: one thread each, and Ctrl-C is the parent's business."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


# --------------------------------------------------------------------- result
def _row_to_json(row: Mapping[str, Any]) -> str:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return json.dumps(clean, sort_keys=True)


def _row_from_json(text: str) -> dict[str, Any]:
    raw = json.loads(text)
    row = {}
    for k in ROW_FIELDS:
        v = raw.get(k)
        row[k] = math.nan if v is None else v
    return row


@dataclass
class SweepResult:
    """Rows of a (possibly partial) sweep, with grid views for plotting.

    ``rows`` holds one dict per finished cell (keys :data:`ROW_FIELDS`) sorted
    by ``index``; ``out`` is the directory the sweep was written to (or None).
    """

    config: SweepConfig
    rows: list[dict[str, Any]]
    out: Path | None = None

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

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table (one row per finished cell) atomically."""
        path = Path(path)
        with atomic_write(path) as fh:
            fh.write(",".join(ROW_FIELDS) + "\n")
            for r in self.rows:
                cells = []
                for k in ROW_FIELDS:
                    v = r[k]
                    cells.append(repr(float(v)) if isinstance(v, float) else str(v))
                fh.write(",".join(cells) + "\n")
        return path


def _regime_rank(name: str) -> int:
    return REGIMES.index(name) if name in REGIMES else len(REGIMES)


# ---------------------------------------------------------------- persistence
def _cell_path(out: Path, index: int) -> Path:
    return out / _CELL_DIR / f"cell_{index:06d}.json"


def _prepare_out(out: Path, config: SweepConfig, restart: bool) -> None:
    try:
        ensure_dir(out)
        ensure_dir(out / _CELL_DIR)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(
            f"cannot use {str(out)!r} as the sweep directory ({reason}); "
            f"pass another out directory (--out)"
        ) from None
    cfg_path = out / _CONFIG_FILE
    if cfg_path.exists() and not restart:
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{str(cfg_path)!r} is unreadable ({exc}); pass restart=True (--restart) "
                f"or another out directory"
            ) from None
        if old != json.loads(json.dumps(config.to_dict())):
            raise ValueError(
                f"{str(out)!r} holds a different sweep; pass another out directory, or "
                f"restart=True (--restart) to discard it"
            )
        return
    for p in (out / _CELL_DIR).glob("cell_*.json"):
        p.unlink()
    with atomic_write(cfg_path) as fh:
        json.dump(config.to_dict(), fh, indent=1, sort_keys=True)


def _read_cells(out: Path, config: SweepConfig) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    n = len(config)
    for p in sorted((out / _CELL_DIR).glob("cell_*.json")):
        try:
            row = _row_from_json(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue  # cannot happen with atomic writes; recompute the cell
        idx = row.get("index")
        if isinstance(idx, int) and 0 <= idx < n:
            done[idx] = row
    return done


def load(out: str | os.PathLike[str]) -> SweepResult:
    """Read a sweep directory written by :func:`sweep` (complete or not)."""
    out = Path(out)
    cfg_path = out / _CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(out)!r} is not a sweep directory (no {_CONFIG_FILE})")
    try:
        config = SweepConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(cfg_path)!r} is not a siflow sweep configuration ({exc})") from None
    done = _read_cells(out, config)
    return SweepResult(config, [done[i] for i in sorted(done)], out)


# ------------------------------------------------------------------ execution
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
    import threading

    methods = mp.get_all_start_methods()
    if "fork" in methods:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if threading.active_count() == 1 or not main_file or not os.path.isfile(main_file):
            return "fork"
    return "forkserver" if "forkserver" in methods else None


def _run_local(
    config: SweepConfig,
    todo: list[dict[str, Any]],
    workers: int,
    batch: int,
    on_rows: Callable[[list[dict[str, Any]]], None],
) -> None:
    if workers == 1 or len(todo) <= 1:
        # in this process too: one BLAS thread, else idle OpenBLAS threads spin on the
        # other core after every small BLAS call
        with _one_blas_thread():
            for c in todo:
                on_rows([run_cell(config, c)])
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    method = _start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        # workers fork from a server that has imported the simulation code once
        sim_module = config.simulator.partition(":")[0]
        ctx.set_forkserver_preload(["siflow.sweep", "siflow.periods", sim_module])
    cfg = config.to_dict()
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_local_worker
    )
    try:
        futures = [pool.submit(_run_batch, cfg, b) for b in _batches(todo, batch)]
        for fut in cf.as_completed(futures):
            on_rows(fut.result())
    except BaseException:
        # stop now: cancel queued cells and end the running ones (their results are lost,
        # the cells already written stay, and a rerun resumes from them)
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            with contextlib.suppress(OSError, AttributeError):
                proc.terminate()
        raise
    pool.shutdown(wait=True)


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
    **options: Any,
) -> SweepResult:
    """Run (or resume) a sweep over ``lr x wd x momentum x seeds`` for one toy loss.

    Parameters
    ----------
    loss : str
        A loss name of :func:`siflow.simulate.simulate`.
    lr, wd : float or sequence of float
        Grid values (use :func:`log_grid` for log spacing); ``lr*wd < 1`` everywhere.
    momentum : float or sequence of float
        Heavy-ball momentum values in ``[0, 1)``.
    seeds : int or sequence of int
        Seeds; each (lr, wd, momentum) is simulated once per seed.
    steps : int
        Optimizer steps per simulation.
    out : path, optional
        Directory for ``sweep.json``, one file per finished cell and
        ``table.csv``. An existing directory of the same sweep is resumed;
        one of a different sweep is an error unless ``restart``.
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
        ``f(loss, lr=, wd=, steps=, seed=, [momentum=,] **options)`` and returning a
        :class:`~siflow.trajectory.Trajectory` (default: siflow's own); lets a
        sweep drive another model with the same signature. It must be importable
        by the workers.
    **options
        Forwarded to ``simulate``: ``optimizer``, ``dim``, ``noise``, ``batch``
        (as ``sim_batch``, since ``batch`` here is the task size),
        ``record_every``.

    Returns
    -------
    SweepResult
        All rows, sorted by cell index.
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
    )
    workers = _default_workers() if workers is None else check_positive_int("workers", workers)
    batch = check_positive_int("batch", batch)
    _check_loss(config)

    client, own_client = _dask_client(dask) if dask is not None else (None, False)
    try:
        return _sweep(config, out, workers, batch, restart, progress, client)
    finally:
        if own_client:
            client.close()


def _sweep(
    config: SweepConfig,
    out: str | os.PathLike[str] | None,
    workers: int,
    batch: int,
    restart: bool,
    progress: Callable[[int, int], None] | None,
    client: Any,
) -> SweepResult:
    done: dict[int, dict[str, Any]] = {}
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _prepare_out(out_path, config, restart)
        done = _read_cells(out_path, config)
    todo = [c for c in config.cells() if c["index"] not in done]
    total = len(config)

    def on_rows(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if out_path is not None:
                with atomic_write(_cell_path(out_path, row["index"])) as fh:
                    fh.write(_row_to_json(row))
            done[row["index"]] = row
        if progress is not None:
            progress(len(done), total)

    if todo:
        if client is not None:
            _run_dask(config, todo, client, batch, on_rows)
        else:
            _run_local(config, todo, workers, batch, on_rows)
    result = SweepResult(config, [done[i] for i in sorted(done)], out_path)
    if out_path is not None:
        result.to_csv(out_path / _TABLE_FILE)
    return result


def _check_loss(config: SweepConfig) -> None:
    """Fail early (in this process) on a loss or option simulate rejects."""
    simulate = _simulator(config)
    kwargs = dict(config.options)
    if any(m != 0.0 for m in config.momentum):
        kwargs["momentum"] = max(config.momentum)
    simulate(config.loss, lr=config.lr[0], wd=config.wd[0], steps=2, seed=0, **kwargs)


# ---------------------------------------------------------------- theory lines
# decay_end_step and equilibrium_instability_lr_wd live in siflow.theory (re-exported here).


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


# ---------------------------------------------------------------- the figure
_COLORS = {
    "converged": "#4c72b0",
    "equilibrium": "#55a868",
    "periodic": "#dd8452",
    "diverged": "#c44e52",
}


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

    Cells are coloured by regime (majority over seeds); periodic cells show
    their median period ``T`` in steps. Theory overlaid:

    - solid: where the initial weight-decay phase ends at the last step,
      :func:`decay_end_step` ``= steps`` (needs the sphere sharpness ``S`` at the
      minimum; default: the toy's own); below/left of it runs are still
      decaying ("converged");
    - dashed: ``lr*wd =`` :func:`equilibrium_instability_lr_wd`, above which the
      equilibrium is unstable, with ``G`` the measured rms sphere gradient norm
      of the panel's equilibrium cells (median over cells);
    - dash-dotted: the same with the model ``G`` (``grad_norm``; default for
      isotropic noise ``sigma``: ``G = sigma sqrt(dim - 1)``, docs/theory.md section 6,
      which ignores the loss gradient itself);
    - dotted: lines of constant ``lr*wd`` (``lr_wd_lines``, default every
      decade), along which only the initial effective LR changes (docs/theory.md
      section 0).

    Returns the matplotlib figure; writes it (PNG/SVG/PDF by suffix,
    atomically) when ``path`` is given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cfg = result.config
    lr = np.asarray(cfg.lr)
    wd = np.asarray(cfg.wd)
    s_auto, dim = _toy_facts(cfg)
    if sharpness is None:
        sharpness = s_auto
    noise = float(cfg.options.get("noise") or 0.0)
    if grad_norm is None and noise > 0 and dim is not None and dim > 1:
        grad_norm = noise * math.sqrt(dim - 1)
    n_panels = len(cfg.momentum)
    measured_used: list[float] = []
    fig, axes = plt.subplots(
        1, n_panels, figsize=(4.6 * n_panels + 2.4, 4.4), squeeze=False, constrained_layout=True
    )

    def edges(v: NDArray[np.float64]) -> NDArray[np.float64]:
        if v.size == 1:
            return np.array([v[0] / 1.5, v[0] * 1.5])
        lv = np.log10(v)
        mid = (lv[1:] + lv[:-1]) / 2
        first, last = lv[0] - (mid[0] - lv[0]), lv[-1] + (lv[-1] - mid[-1])
        return 10 ** np.concatenate([[first], mid, [last]])

    lr_e, wd_e = edges(lr), edges(wd)
    cmap = ListedColormap([_COLORS[r] for r in REGIMES] + ["#eeeeee"])
    prod_lo, prod_hi = lr_e[0] * wd_e[0], lr_e[-1] * wd_e[-1]
    if lr_wd_lines is None:
        lr_wd_lines = [10.0**k for k in range(math.ceil(math.log10(prod_lo)), 1)]
    lr_wd_lines = [c for c in lr_wd_lines if prod_lo < c < prod_hi]
    xs = np.geomspace(lr_e[0], lr_e[-1], 200)
    fine_lr, fine_wd = np.meshgrid(xs, np.geomspace(wd_e[0], wd_e[-1], 200))
    for k, mom in enumerate(cfg.momentum):
        ax = axes[0, k]
        grid = result.regime_grid(mom)
        codes = np.array([[_regime_rank(g) for g in row] for row in grid], dtype=float)
        ax.pcolormesh(lr_e, wd_e, codes, cmap=cmap, vmin=-0.5, vmax=len(REGIMES) + 0.5)
        if annotate and len(lr) * len(wd) <= 144:
            period = result.value_grid("period", mom)
            for i in range(len(wd)):
                for j in range(len(lr)):
                    if grid[i, j] == "periodic" and np.isfinite(period[i, j]):
                        ax.text(
                            lr[j],
                            wd[i],
                            f"{period[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="black",
                        )
        for c in lr_wd_lines:
            ax.plot(xs, c / xs, ls=":", color="0.35", lw=0.8)
            # label at the left edge, or at the bottom edge for lines that leave there
            x_lab = max(lr_e[0], c / wd_e[-1]) * 1.06
            if lr_e[0] < x_lab < lr_e[-1] and wd_e[0] < c / x_lab <= wd_e[-1]:
                ax.text(
                    x_lab,
                    c / x_lab / 1.04,
                    f"ηλ={c:g}",
                    fontsize=6.5,
                    color="0.2",
                    ha="left",
                    va="top",
                )
        if sharpness is not None and np.all(fine_lr * fine_wd < 1):
            t1 = decay_end_step(fine_lr, fine_wd, sharpness, rho0, mom, grad_norm)
            if np.nanmin(t1) < cfg.steps < np.nanmax(t1):
                ax.contour(fine_lr, fine_wd, t1, levels=[cfg.steps], colors="black", linewidths=1.6)
        if grad_norm is not None and sharpness is not None:
            x_star = equilibrium_instability_lr_wd(grad_norm, sharpness, mom)
            if prod_lo < x_star < prod_hi:
                ax.plot(xs, x_star / xs, ls="-.", color="0.15", lw=1.0)
        g_meas = _measured_grad_norm(result, mom)
        if g_meas is not None and sharpness is not None:
            x_meas = equilibrium_instability_lr_wd(g_meas, sharpness, mom)
            if prod_lo < x_meas < prod_hi:
                ax.plot(xs, x_meas / xs, ls="--", color="black", lw=1.6)
                measured_used.append(g_meas)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lr_e[0], lr_e[-1])
        ax.set_ylim(wd_e[0], wd_e[-1])
        ax.set_xlabel("learning rate η")
        ax.set_ylabel("weight decay λ")
        ax.set_title(f"momentum μ = {mom:g}" if mom else "SGD (μ = 0)", fontsize=10)
    handles: list[Any] = [Patch(color=_COLORS[r], label=r) for r in REGIMES]
    if any(g == "" for m in cfg.momentum for g in result.regime_grid(m).ravel()):
        handles.append(Patch(color="#eeeeee", label="not run"))
    handles.append(Line2D([], [], ls=":", color="0.35", label="constant ηλ"))
    if sharpness is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                lw=1.6,
                label=f"weight-decay phase from ρ₀={rho0:g}\nends at step {cfg.steps} "
                f"(S={sharpness:g})",
            )
        )
    if measured_used:
        handles.append(
            Line2D(
                [],
                [],
                ls="--",
                color="black",
                lw=1.6,
                label="equilibrium ELR = threshold,\nG = measured rms g~ of the\nequilibrium cells",
            )  # fmt: skip
        )
    if grad_norm is not None and sharpness is not None:
        what = "σ√(d−1)" if noise > 0 and grad_norm == noise * math.sqrt((dim or 2) - 1) else ""
        handles.append(
            Line2D(
                [],
                [],
                ls="-.",
                color="0.15",
                lw=1.0,
                label=f"same, G = {what + ' = ' if what else ''}{grad_norm:.3g}",
            )  # fmt: skip
        )
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    opts = ", ".join(f"{k}={v}" for k, v in sorted(cfg.options.items()))
    seeds = f"{len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''}"
    fig.suptitle(
        title
        or f"Regimes of SGD + WD on '{cfg.loss}' ({cfg.steps} steps, {seeds}"
        + (f", {opts}" if opts else "")
        + "); numbers: period T in steps",
        fontsize=10,
    )
    if path is not None:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=path.suffix.lstrip(".") or "png")
    return fig


# ----------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m siflow.sweep``: run or resume a sweep, print and draw it."""
    from siflow._cli import run_main

    return run_main(_main, argv, prog="python -m siflow.sweep")


def _main(argv: Sequence[str] | None) -> int:
    from siflow._sweep_cli import cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
