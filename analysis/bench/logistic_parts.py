"""``python -m analysis.bench.logistic_parts``: where a logistic toy step spends its time.

Times, in compiled loops (one thread, CPU time of this process, best of five), the parts
of the full-batch logistic step of :mod:`siflow.losses` on the bench's toys:

- d=1024, n=256 (row-blocked kernel): the margin pass ``X u`` and the gradient pass
  ``X' c`` alone, with the data (2 MiB) streamed from L3, and with one 4-row block
  (32 KiB) or one 64-row block (512 KiB) reused from L1 or L2 for the same number of
  FMAs; single-threaded BLAS ``gemv`` (numba's ``np.dot``) for each pass; the kernel.
- d=16, n=256 and n=32 (column kernel): the margins, the gradient, the weights
  (``losses._softplus_weights``: one exponential, one log1p and one division per sample)
  and the kernel ``losses._logistic_columns``; then the loop's step
  (``losses._si_value_grad_step``) and a ``simulate`` step.

The loops are copies of the kernels' loops (same unrolling, same fastmath flags), so
that each part can be timed alone; the arrays lie at cache-line boundaries, as
``simulate`` hands them to the kernels. ``analysis/BENCHMARKS.md`` reads the numbers.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from siflow import losses as L

FAST = L._FAST


@njit(fastmath=FAST)
def _rows_margins(x, u, buf):  # pragma: no cover - numba
    n, d = x.shape
    for i in range(n):
        a = 0.0
        for j in range(d):
            a += x[i, j] * u[j]
        buf[i] = a


@njit(fastmath=FAST)
def _rows_gradient(x, c, g):  # pragma: no cover - numba
    n, d = x.shape
    for j in range(d):
        g[j] = 0.0
    for i in range(0, n - n % 4, 4):
        c0, c1, c2, c3 = c[i], c[i + 1], c[i + 2], c[i + 3]
        for j in range(d):
            g[j] += (c0 * x[i, j] + c1 * x[i + 1, j]) + (c2 * x[i + 2, j] + c3 * x[i + 3, j])


@njit(fastmath=FAST)
def _cols_margins(xt, u, buf):  # pragma: no cover - numba
    d, n = xt.shape  # d a multiple of 8, as in the bench's toys
    for i in range(n):
        buf[i] = 0.0
    for j in range(0, d, 8):
        u0, u1, u2, u3 = u[j], u[j + 1], u[j + 2], u[j + 3]
        u4, u5, u6, u7 = u[j + 4], u[j + 5], u[j + 6], u[j + 7]
        for i in range(n):
            buf[i] += (
                (xt[j, i] * u0 + xt[j + 1, i] * u1) + (xt[j + 2, i] * u2 + xt[j + 3, i] * u3)
            ) + ((xt[j + 4, i] * u4 + xt[j + 5, i] * u5) + (xt[j + 6, i] * u6 + xt[j + 7, i] * u7))


@njit(fastmath=FAST)
def _cols_gradient(xt, c, g):  # pragma: no cover - numba
    d, n = xt.shape  # d a multiple of 4
    for j in range(0, d, 4):
        a0 = a1 = a2 = a3 = 0.0
        for i in range(n):
            ci = c[i]
            a0 += ci * xt[j, i]
            a1 += ci * xt[j + 1, i]
            a2 += ci * xt[j + 2, i]
            a3 += ci * xt[j + 3, i]
        g[j] = a0
        g[j + 1] = a1
        g[j + 2] = a2
        g[j + 3] = a3


@njit
def _repeat_margins(k, x, u, buf, reuse):  # pragma: no cover - numba
    for _ in range(k * reuse):
        _rows_margins(x, u, buf)


@njit
def _repeat_gradient(k, x, c, g, reuse):  # pragma: no cover - numba
    for _ in range(k * reuse):
        _rows_gradient(x, c, g)


@njit
def _repeat_gemv(k, x, u, c):  # pragma: no cover - numba
    s = 0.0
    for _ in range(k):
        s += np.dot(x, u)[0]
    return s


@njit
def _repeat_gemv_t(k, x, c):  # pragma: no cover - numba
    s = 0.0
    for _ in range(k):
        s += np.dot(c, x)[0]
    return s


@njit
def _repeat_rows_kernel(k, params, u, x, g):  # pragma: no cover - numba
    t = 0.0
    for _ in range(k):
        t += L._logistic_rows(params[0], u, x, L._NO_IDX, 0, g)
    return t


@njit
def _repeat_cols_margins(k, xt, u, buf):  # pragma: no cover - numba
    for _ in range(k):
        _cols_margins(xt, u, buf)


@njit
def _repeat_cols_gradient(k, xt, c, g):  # pragma: no cover - numba
    for _ in range(k):
        _cols_gradient(xt, c, g)


@njit
def _repeat_weights(k, s, margins, buf):  # pragma: no cover - numba
    n = margins.size
    t = 0.0
    for _ in range(k):
        for i in range(n):
            buf[i] = margins[i]
        t += L._softplus_weights(s, buf, n)
    return t


@njit
def _repeat_copy(k, margins, buf):  # pragma: no cover - numba
    n = margins.size
    for _ in range(k):
        for i in range(n):
            buf[i] = margins[i]


@njit
def _repeat_cols_kernel(k, s, xt, u, g):  # pragma: no cover - numba
    t = 0.0
    for _ in range(k):
        t += L._logistic_columns(s, xt, u, g)
    return t


@njit
def _repeat_step(k, kind, w, r2, params, data, u, g):  # pragma: no cover - numba
    t = 0.0
    rho = math.sqrt(r2)
    for _ in range(k):
        t += L._si_value_grad_step(kind, w, r2, rho, params, data, L._NO_IDX, 0, u, g)
    return t


def _best(fn: Callable[[int], Any], k: int, per: int = 1) -> float:
    """Best of five CPU times of ``fn(k)``, per call (divided by ``k * per``)."""
    fn(2)
    best = math.inf
    for _ in range(5):
        t0 = time.process_time()
        fn(k)
        best = min(best, (time.process_time() - t0) / (k * per))
    return best


def _toy(d: int, n: int, rng: np.random.Generator) -> Any:
    from analysis.bench._adapters import _logistic_toy

    return _logistic_toy(d, n, rng)


def large_d(rng: np.random.Generator, k: int) -> list[tuple[str, float]]:
    """The two passes of the d=1024, n=256 step, from L3, L2 and L1, and by BLAS."""
    from siflow.simulate import _cache_aligned

    d, n = 1024, 256
    x = _cache_aligned(rng.standard_normal((n, d)))
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    c, buf, g = rng.standard_normal(n), np.empty(n), np.empty(d)
    x4, x64 = _cache_aligned(x[:4].copy()), _cache_aligned(x[:64].copy())
    b4, b64, c4, c64 = np.empty(4), np.empty(64), c[:4].copy(), c[:64].copy()
    params = np.array([4.0])
    return [
        ("margins X u, data from L3 (2 MiB)", _best(lambda m: _repeat_margins(m, x, u, buf, 1), k)),
        ("margins, 64-row block from L2", _best(lambda m: _repeat_margins(m, x64, u, b64, 4), k)),
        ("margins, 4-row block from L1", _best(lambda m: _repeat_margins(m, x4, u, b4, 64), k)),
        ("gradient X' c, data from L3", _best(lambda m: _repeat_gradient(m, x, c, g, 1), k)),
        ("gradient, 64-row block from L2", _best(lambda m: _repeat_gradient(m, x64, c64, g, 4), k)),
        ("gradient, 4-row block from L1", _best(lambda m: _repeat_gradient(m, x4, c4, g, 64), k)),
        ("BLAS gemv X u", _best(lambda m: _repeat_gemv(m, x, u, c), k)),
        ("BLAS gemv X' c", _best(lambda m: _repeat_gemv_t(m, x, c), k)),
        (
            "kernel losses._logistic_rows",
            _best(lambda m: _repeat_rows_kernel(m, params, u, x, g), k),
        ),
    ]


def small_d(rng: np.random.Generator, n: int, k: int) -> list[tuple[str, float]]:
    """The parts of the d=16 column kernel and of the loop's step at ``n`` samples."""
    from siflow.simulate import _cache_aligned, simulate

    toy = _toy(16, n, rng)
    d = toy.dim
    s = float(toy.params[0])
    xt = _cache_aligned(np.ascontiguousarray(toy.data.T))
    params, data = _cache_aligned(toy.params, first=1), _cache_aligned(toy.data)
    w = rng.standard_normal(d)
    u = w / np.linalg.norm(w)
    margins = toy.data @ u
    c, buf, g, ws = rng.standard_normal(n), np.empty(2 * n), np.empty(d), np.empty(d)
    copy = _best(lambda m: _repeat_copy(m, margins, buf), k)
    rows = [
        ("margins (columns)", _best(lambda m: _repeat_cols_margins(m, xt, u, buf), k)),
        ("gradient (columns)", _best(lambda m: _repeat_cols_gradient(m, xt, c, g), k)),
        (
            "weights: losses._softplus_weights",
            _best(lambda m: _repeat_weights(m, s, margins, buf), k) - copy,
        ),
        (
            "kernel losses._logistic_columns",
            _best(lambda m: _repeat_cols_kernel(m, s, xt, u, g), k),
        ),
        (
            "losses._si_value_grad_step",
            _best(
                lambda m: _repeat_step(m, toy.kind, w, float(w @ w), params, data, ws, g),
                k,
            ),
        ),
    ]
    steps = 20 * k
    simulate(toy, lr=0.1, wd=1e-3, steps=100, seed=0, w0=w, progress=False)
    best = math.inf
    for _ in range(3):
        t0 = time.process_time()
        simulate(toy, lr=0.1, wd=1e-3, steps=steps, seed=0, w0=w, progress=False)
        best = min(best, (time.process_time() - t0) / steps)
    rows.append(("simulate, one step", best))
    return rows


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} us" if seconds >= 1e-6 else f"{seconds * 1e9:.0f} ns"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.logistic_parts")
    p.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    scale = 5 if args.quick else 1
    with threadpool_limits(1):
        sections = [
            ("d=1024, n=256 (per step)", large_d(rng, 2000 // scale)),
            ("d=16, n=256 (per step)", small_d(rng, 256, 20000 // scale)),
            ("d=16, n=32 (per step)", small_d(rng, 32, 100000 // scale)),
        ]
    for title, rows in sections:
        print(f"\n{title}\n")
        print("| part | time |\n|---|---|")
        for name, t in rows:
            print(f"| {name} | {_fmt(t)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
