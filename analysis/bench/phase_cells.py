"""``python -m analysis.bench.phase_cells``: where a default phase-diagram cell spends its time.

The default logistic sweep of ``analysis/phase_diagram.py`` (lr 1e-3..3 x wd 1e-5..0.3,
8 x 10, momentum 0 and 0.9, 3 seeds, 10^5 steps) has 480 cells; each is one
``simulate`` call and its summary in :func:`siflow.sweep.run_cell`
(:func:`siflow.periods.find_events`, then ``classify`` and the stationary means). This
times the parts on every ``--every``-th cell (CPU time of this process, one BLAS thread),
groups the detector's time by the number of events a cell has, and times the loop's
loss-and-gradient kernel alone (``losses._si_value_grad_step`` on the default toy, in a
compiled loop) against the whole simulation step, which bounds what batching cells into
one kernel call could save: only the per-step work outside the gradient is shared
between cells, the transcendentals per sample are not. ``--cold`` also times the first
``simulate`` of a fresh process with an empty numba cache (the serial compilation the
phase diagram starts with).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _config():
    from siflow import sweep as S

    return S.SweepConfig(
        loss="logistic", lr=tuple(S.log_grid(1e-3, 3, 8)), wd=tuple(S.log_grid(1e-5, 0.3, 10)),
        momentum=(0.0, 0.9), seeds=(0, 1, 2), steps=100_000,
    )  # fmt: skip


def _bucket(n_events: int) -> str:
    if n_events <= 0:
        return "no events"
    if n_events <= 50:
        return "1-50 events"
    return "51-1000 events" if n_events <= 1000 else "> 1000 events"


def time_cells(every: int) -> dict[str, object]:
    """CPU seconds per part over every ``every``-th cell of the default logistic sweep."""
    from siflow import periods
    from siflow import sweep as S

    cfg = _config()
    simulate = S._simulator(cfg)
    cells = cfg.cells()[::every]
    S.run_cell(cfg, cells[0])  # compile / load the kernels first
    parts = {"simulate": 0.0, "find_events": 0.0, "classify + means": 0.0}
    by_events: dict[str, list[float]] = {}
    for c in cells:
        kw = S._simulation_kwargs(cfg, simulate, c["momentum"])
        t0 = time.process_time()
        traj = simulate(cfg.loss, lr=c["lr"], wd=c["wd"], steps=cfg.steps, seed=c["seed"], **kw)
        t1 = time.process_time()
        events = None
        with contextlib.suppress(ValueError):
            events = periods.find_events(traj)
        t2 = time.process_time()
        with contextlib.suppress(ValueError):
            periods.classify(traj, events)
        S._stationary_means(traj, events, c["lr"], len(traj), False)
        t3 = time.process_time()
        parts["simulate"] += t1 - t0
        parts["find_events"] += t2 - t1
        parts["classify + means"] += t3 - t2
        by_events.setdefault(_bucket(len(events) if events is not None else 0), []).append(t2 - t1)
    return {"cells": len(cells), "parts": parts, "by_events": by_events}


def time_gradient_share(steps: int = 100_000) -> dict[str, float]:
    """Seconds per step: the default toy's loss and SI gradient alone, and whole steps."""
    from numba import njit

    from siflow import losses as L
    from siflow.simulate import simulate

    @njit(cache=False, error_model="numpy", fastmath=L._FAST)  # inlined kernel: its flags
    def grad_loop(kind, w, params, data, idx, u, g, n):  # pragma: no cover - numba
        r2 = 0.0
        for i in range(w.size):
            r2 += w[i] * w[i]
        rho = math.sqrt(r2)
        xt, buf = L._step_scratch(kind, params, data)
        total = 0.0
        for _ in range(n):
            total += L._si_value_grad_step(kind, w, r2, rho, params, data, idx, 0, u, g, xt, buf)
        return total

    toy = L.make_loss("logistic")
    w = np.random.default_rng(0).normal(size=toy.dim)
    u, g = np.empty(toy.dim), np.empty(toy.dim)
    idx = np.zeros(0, dtype=np.int64)
    args = (toy.kind, w, toy.params, toy.data, idx, u, g)
    grad_loop(*args, 10)
    out = {}
    best = math.inf
    for _ in range(3):
        t = time.process_time()
        grad_loop(*args, steps)
        best = min(best, time.process_time() - t)
    out["loss and gradient"] = best / steps
    simulate("logistic", lr=0.1, wd=1e-3, steps=100, seed=0)
    for mom in (0.0, 0.9):
        best = math.inf
        for _ in range(3):
            t = time.process_time()
            simulate("logistic", lr=0.1, wd=1e-3, steps=steps, seed=0, momentum=mom,
                     max_points=1 << 17, max_rows=1 << 18)  # fmt: skip
            best = min(best, time.process_time() - t)
        out[f"simulate step, momentum {mom:g}"] = best / steps
    return out


def time_cold_compile() -> float:
    """Wall seconds of the first ``simulate`` in a fresh process with an empty numba cache."""
    code = (
        "import time; from siflow.simulate import simulate; t = time.perf_counter(); "
        "simulate('logistic', lr=0.1, wd=1e-3, steps=100, seed=0); "
        "print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
    return float(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.phase_cells", description=__doc__)
    p.add_argument("--every", type=int, default=4, help="time every N-th cell (default 4)")
    p.add_argument("--cold", action="store_true", help="also time the cold-cache compilation")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be >= 1")
    from analysis.bench._harness import pinned_threads

    with pinned_threads(1):
        res = time_cells(args.every)
        share = time_gradient_share()
    n = res["cells"]
    print(f"default logistic sweep, {n} of 480 cells (every {args.every}-th), CPU ms per cell:")
    total = 0.0
    for name, sec in res["parts"].items():
        total += sec
        print(f"  {name:<18s} {1e3 * sec / n:7.1f}")
    print(f"  {'total':<18s} {1e3 * total / n:7.1f}")
    print("find_events by events per cell:")
    for name in ("no events", "1-50 events", "51-1000 events", "> 1000 events"):
        v = res["by_events"].get(name, [])
        if v:
            print(f"  {name:<15s} {len(v):3d} cells, {1e3 * float(np.mean(v)):7.1f} ms each")
    print("default toy, CPU ns per step:")
    for name, sec in share.items():
        print(f"  {name:<30s} {1e9 * sec:7.0f}")
    if args.cold:
        print(f"first simulate with an empty numba cache: {time_cold_compile():.2f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
