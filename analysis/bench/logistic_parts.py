"""``python -m analysis.bench.logistic_parts``: where a logistic toy step spends its time.

Times, in compiled loops (one thread, CPU time of this process, best of five), the parts
of the full-batch logistic step of :mod:`siflow.losses` on the bench's toys:

- d=1024, n=256 (row-blocked kernel): the margin pass ``X u`` and the gradient pass
  ``X' c`` alone, with the data (2 MiB) streamed from L3, and with one 4-row block
  (32 KiB) or one 64-row block (512 KiB) reused from L1 or L2 for the same number of
  FMAs; single-threaded BLAS ``gemv`` (numba's ``np.dot``) for each pass; the kernel.
- d=16, n=256 and n=32 (column kernel): the margins (``losses._column_margins``), the
  gradient, the weights (``losses._softplus_weights``: one exponential and one division
  per sample, and the sum of the loss terms' ``log1p`` from a product,
  ``losses._sum_log1p``) and the kernel ``losses._logistic_columns``, with LLVM's default
  vector width and with 512-bit vectors where the CPU has them
  (``siflow._vector_width``); then the loop's step (``losses._si_value_grad_step``) and a
  ``simulate`` step (whose loop picks the width, ``simulate._wide_vectors_pay``).

Alternatives timed beside the kernels they would replace or replaced: margins four rows
per pass over ``u`` (``5/4`` loads per FMA instead of 2) at d=1024; the weights with one
vectorised ``log1p`` per sample (the kernel before ``losses._sum_log1p``); and, at d=16,
one loop over the samples doing margins, weights and gradient (every column held in
registers, no pass over a scratch vector).

The other parts are copies of the kernels' loops (same unrolling, same fastmath flags),
so that each can be timed alone; the package's kernels are inlined into the timing loops,
which are compiled with the kernels' flags; the arrays lie at cache-line boundaries, as
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
from siflow._vector_width import prefer_wide_vectors

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
def _rows_margins4(x, u, buf):  # pragma: no cover - numba
    n, d = x.shape  # n a multiple of 4
    for i in range(0, n, 4):
        a0 = a1 = a2 = a3 = 0.0
        for j in range(d):
            uj = u[j]
            a0 += x[i, j] * uj
            a1 += x[i + 1, j] * uj
            a2 += x[i + 2, j] * uj
            a3 += x[i + 3, j] * uj
        buf[i], buf[i + 1], buf[i + 2], buf[i + 3] = a0, a1, a2, a3


# The per-sample log1p of the kernel before ``losses._sum_log1p`` (within 2 ulp of
# numpy.log1p on [0, 1]: tests/test_bench_logistic_parts.py).
_LN2 = 0.6931471805599453
_SQRT2_M1 = 0.41421356237309503
# (atanh(r)/r - 1)/r^2 as a polynomial in w = r^2, |r| <= 0.1716 (Chebyshev, degree 6;
# its error enters log1p as < 5e-18 relative)
_L0 = 0.3333333333333335
_L1 = 0.19999999999949752
_L2 = 0.14285714312987743
_L3 = 0.1111110556739754
_L4 = 0.09091444562630861
_L5 = 0.07665860800278021
_L6 = 0.07308224842521703


@njit(error_model="numpy", fastmath={"contract"})
def _log1p_unit(e):  # pragma: no cover - numba
    """``log(1 + e)`` for ``0 <= e <= 1`` in branch-free arithmetic (vectorisable).

    ``log(1 + e) = 2 atanh(r)`` with ``r = e/(2 + e)``, or, for ``e > sqrt2 - 1``,
    ``ln2 + 2 atanh((e - 1)/(3 + e))`` (``|r| <= 0.1716`` either way; ``e - 1`` is
    exact); ``2 atanh(r) = 2r (1 + r^2 P(r^2))``.
    """
    big = e > _SQRT2_M1
    two_r = (2.0 * (e - 1.0) if big else 2.0 * e) / ((3.0 if big else 2.0) + e)
    w = 0.25 * (two_r * two_r)
    q = _L6
    q = q * w + _L5
    q = q * w + _L4
    q = q * w + _L3
    q = q * w + _L2
    q = q * w + _L1
    q = q * w + _L0
    return (_LN2 if big else 0.0) + (two_r + two_r * (w * q))


@njit(fastmath=FAST, error_model="numpy")
def _weights_per_sample_log1p(s, buf, m):  # pragma: no cover - numba
    """``losses._softplus_weights`` with one vectorised ``log1p`` per sample (the kernel
    before the product of ``losses._sum_log1p``)."""
    for q in range(m):
        buf[m + q] = L._exp_nonpos(-abs(s * buf[q]))
    total = 0.0
    for q in range(m):
        z = s * buf[q]
        e = buf[m + q]
        total += max(-z, 0.0) + _log1p_unit(e)
        buf[q] = -s * ((e if z > 0.0 else 1.0) / (1.0 + e))
    return total


@njit(fastmath=FAST, error_model="numpy")
def _fused16(s, xt, u, g):  # pragma: no cover - numba
    """The d=16 full-batch step in one loop over the samples (vectorised over samples):
    the margin from the 16 columns, the weight, and 16 gradient sums."""
    n = xt.shape[1]
    u0, u1, u2, u3, u4, u5, u6, u7 = u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]
    u8, u9, u10, u11, u12, u13, u14, u15 = u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = 0.0
    total = 0.0
    for i in range(n):
        x0, x1, x2, x3 = xt[0, i], xt[1, i], xt[2, i], xt[3, i]
        x4, x5, x6, x7 = xt[4, i], xt[5, i], xt[6, i], xt[7, i]
        x8, x9, x10, x11 = xt[8, i], xt[9, i], xt[10, i], xt[11, i]
        x12, x13, x14, x15 = xt[12, i], xt[13, i], xt[14, i], xt[15, i]
        z = s * (
            (
                ((x0 * u0 + x1 * u1) + (x2 * u2 + x3 * u3))
                + ((x4 * u4 + x5 * u5) + (x6 * u6 + x7 * u7))
            )
            + (
                ((x8 * u8 + x9 * u9) + (x10 * u10 + x11 * u11))
                + ((x12 * u12 + x13 * u13) + (x14 * u14 + x15 * u15))
            )
        )
        e = L._exp_nonpos(-abs(z))
        total += max(-z, 0.0) + _log1p_unit(e)
        c = -s * ((e if z > 0.0 else 1.0) / (1.0 + e))
        a0 += c * x0
        a1 += c * x1
        a2 += c * x2
        a3 += c * x3
        a4 += c * x4
        a5 += c * x5
        a6 += c * x6
        a7 += c * x7
        a8 += c * x8
        a9 += c * x9
        a10 += c * x10
        a11 += c * x11
        a12 += c * x12
        a13 += c * x13
        a14 += c * x14
        a15 += c * x15
    inv = 1.0 / n
    g[0], g[1], g[2], g[3] = a0 * inv, a1 * inv, a2 * inv, a3 * inv
    g[4], g[5], g[6], g[7] = a4 * inv, a5 * inv, a6 * inv, a7 * inv
    g[8], g[9], g[10], g[11] = a8 * inv, a9 * inv, a10 * inv, a11 * inv
    g[12], g[13], g[14], g[15] = a12 * inv, a13 * inv, a14 * inv, a15 * inv
    return total * inv


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
def _repeat_margins4(k, x, u, buf, reuse):  # pragma: no cover - numba
    for _ in range(k * reuse):
        _rows_margins4(x, u, buf)


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


@njit(fastmath=FAST, error_model="numpy")  # the kernels are inlined with these flags
def _repeat_rows_kernel(k, params, u, x, g):  # pragma: no cover - numba
    t = 0.0
    buf = np.empty(2 * L._BLOCK)
    for _ in range(k):
        t += L._logistic_rows(params[0], u, x, L._NO_IDX, 0, g, buf)
    return t


@njit(fastmath=FAST, error_model="numpy")  # the kernels are inlined with these flags
def _repeat_cols_margins(k, xt, u, buf):  # pragma: no cover - numba
    for _ in range(k):
        L._column_margins(xt, u, buf)


@njit
def _repeat_cols_gradient(k, xt, c, g):  # pragma: no cover - numba
    for _ in range(k):
        _cols_gradient(xt, c, g)


@njit(fastmath=FAST, error_model="numpy")  # the kernels are inlined with these flags
def _repeat_weights(k, s, margins, buf):  # pragma: no cover - numba
    n = margins.size
    t = 0.0
    for _ in range(k):
        for i in range(n):
            buf[i] = margins[i]
        t += L._softplus_weights(s, buf, n)
    return t


@njit
def _repeat_weights_per_sample_log1p(k, s, margins, buf):  # pragma: no cover - numba
    n = margins.size
    t = 0.0
    for _ in range(k):
        for i in range(n):
            buf[i] = margins[i]
        t += _weights_per_sample_log1p(s, buf, n)
    return t


@njit
def _repeat_fused16(k, s, xt, u, g):  # pragma: no cover - numba
    t = 0.0
    for _ in range(k):
        t += _fused16(s, xt, u, g)
    return t


@njit
def _repeat_copy(k, margins, buf):  # pragma: no cover - numba
    n = margins.size
    for _ in range(k):
        for i in range(n):
            buf[i] = margins[i]


@njit(fastmath=FAST, error_model="numpy", inline="always")  # the kernels' flags
def _repeat_cols_kernel(k, s, xt, u, g):  # pragma: no cover - numba
    t = 0.0
    buf = np.empty(2 * xt.shape[1])
    for _ in range(k):
        t += L._logistic_columns(s, xt, u, g, buf)
    return t


@njit(fastmath=FAST, error_model="numpy")
def _repeat_cols_kernel_wide(k, s, xt, u, g):  # pragma: no cover - numba
    """:func:`_repeat_cols_kernel` inlined into a function marked for 512-bit vectors, as
    ``simulate._run_chunk_wide`` inlines ``simulate._run_chunk``."""
    prefer_wide_vectors()
    return _repeat_cols_kernel(k, s, xt, u, g)


@njit(fastmath=FAST, error_model="numpy")  # the kernels are inlined with these flags
def _repeat_step(k, kind, w, r2, params, data, u, g):  # pragma: no cover - numba
    t = 0.0
    rho = math.sqrt(r2)
    xt, buf = L._step_scratch(kind, params, data)
    for _ in range(k):
        t += L._si_value_grad_step(kind, w, r2, rho, params, data, L._NO_IDX, 0, u, g, xt, buf)
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


def _agree(what: str, a: Any, b: Any, rtol: float = 1e-12) -> None:
    """Raise if a variant timed here does not compute what the kernel computes."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not np.allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b)))):
        raise AssertionError(f"{what}: the variant differs from the kernel")


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
    x8, b8 = _cache_aligned(x[:8].copy()), np.empty(8)
    b4, b64, c4, c64 = np.empty(4), np.empty(64), c[:4].copy(), c[:64].copy()
    params = np.array([4.0])
    _rows_margins4(x, u, buf)
    _agree("margins 4 rows per pass", buf, x @ u)
    return [
        ("margins X u, data from L3 (2 MiB)", _best(lambda m: _repeat_margins(m, x, u, buf, 1), k)),
        ("margins, 64-row block from L2", _best(lambda m: _repeat_margins(m, x64, u, b64, 4), k)),
        ("margins, 4-row block from L1", _best(lambda m: _repeat_margins(m, x4, u, b4, 64), k)),
        ("margins 4 rows per pass, from L3", _best(lambda m: _repeat_margins4(m, x, u, buf, 1), k)),
        (
            "margins 4 rows per pass, 64-row block from L2",
            _best(lambda m: _repeat_margins4(m, x64, u, b64, 4), k),
        ),
        (
            "margins 4 rows per pass, 8-row block (64 KiB) from L2",
            _best(lambda m: _repeat_margins4(m, x8, u, b8, 32), k),
        ),
        (
            "margins 4 rows per pass, 4-row block (32 KiB) from L1",
            _best(lambda m: _repeat_margins4(m, x4, u, b4, 64), k),
        ),
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
    ref, alt = buf.copy(), buf.copy()
    ref[:n], alt[:n] = margins, margins
    _agree("weights, loss", _weights_per_sample_log1p(s, alt, n), L._softplus_weights(s, ref, n))
    _agree("weights", alt[:n], ref[:n])
    g_alt = np.empty(d)
    f_alt = _fused16(s, xt, u, g_alt)
    _agree("fused loop, loss", f_alt, L._logistic_columns(s, xt, u, g, np.empty(2 * n)))
    _agree("fused loop, gradient", g_alt, g)
    rows = [
        ("margins (columns)", _best(lambda m: _repeat_cols_margins(m, xt, u, buf), k)),
        ("gradient (columns)", _best(lambda m: _repeat_cols_gradient(m, xt, c, g), k)),
        (
            "weights: losses._softplus_weights",
            _best(lambda m: _repeat_weights(m, s, margins, buf), k) - copy,
        ),
        (
            "weights with one log1p per sample (the kernel before)",
            _best(lambda m: _repeat_weights_per_sample_log1p(m, s, margins, buf), k) - copy,
        ),
        (
            "kernel losses._logistic_columns",
            _best(lambda m: _repeat_cols_kernel(m, s, xt, u, g), k),
        ),
        (
            "kernel losses._logistic_columns, 512-bit vectors where the CPU has them",
            _best(lambda m: _repeat_cols_kernel_wide(m, s, xt, u, g), k),
        ),
        (
            "one loop over samples, 16 columns in registers (not adopted)",
            _best(lambda m: _repeat_fused16(m, s, xt, u, g), k),
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
