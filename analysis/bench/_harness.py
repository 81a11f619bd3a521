"""Timing, thread pinning, machine description and measured peaks.

Every ratio the benchmark prints comes from numbers measured in the same run,
so a busy machine slows the kernel and its reference alike. Times are medians
of repeated runs; each repeat runs long enough (``min_time``) that timer
resolution does not matter.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

__all__ = [
    "Timing",
    "measure",
    "pinned_threads",
    "machine_info",
    "matmul_flops",
    "copy_bandwidth",
    "read_bandwidth",
    "import_time",
]


@dataclass
class Timing:
    """Median time of ``fn`` over repeats, per call and per unit of work."""

    seconds: float
    units: int
    samples: list[float] = field(default_factory=list)

    @property
    def per_unit(self) -> float:
        """Median seconds per unit (per step, per simulation, ...)."""
        return self.seconds / self.units

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how noisy the machine was."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.seconds


def measure(
    fn: Callable[[], Any],
    units: int,
    *,
    repeat: int = 5,
    warmup: int = 1,
    min_time: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Median time of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    When one call is shorter than ``min_time`` seconds, each sample calls ``fn``
    several times and divides, so the sample is at least ``min_time`` long.
    ``clock`` is wall time by default; ``time.process_time`` (CPU time of this
    process) leaves out the time a single-threaded kernel waits for a core on a
    machine shared with other jobs.
    """
    for _ in range(warmup):
        fn()
    t0 = clock()
    fn()
    once = clock() - t0
    inner = max(1, int(np.ceil(min_time / max(once, 1e-9)))) if min_time > 0 else 1
    samples = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - t0) / inner)
    return Timing(statistics.median(samples), units, samples)


@contextlib.contextmanager
def pinned_threads(n: int = 1) -> Iterator[None]:
    """Limit BLAS/OpenMP (threadpoolctl), numba and torch to ``n`` threads."""
    import numba
    from threadpoolctl import threadpool_limits

    old_numba = numba.get_num_threads()
    torch = sys.modules.get("torch")
    old_torch = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            numba.set_num_threads(old_numba)
            if torch is not None and old_torch is not None:
                torch.set_num_threads(old_torch)


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """CPU model, core count, load, library versions and the date (UTC)."""
    import numba
    import scipy

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _lscpu_model(),
        "cores": str(os.cpu_count()),
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "not installed"
    try:
        import distributed

        info["distributed"] = distributed.__version__
    except ImportError:
        info["distributed"] = "not installed"
    return info


def matmul_flops(
    n: int = 1024, repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Peak FLOP/s of one core: a float64 ``n x n`` numpy matmul with BLAS on 1 thread.

    A matmul of this size is compute bound and reaches close to the FMA peak of
    the core (2 n^3 flops). ``clock`` as in :func:`measure`.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    c = np.empty((n, n))
    with pinned_threads(1):
        t = measure(lambda: np.matmul(a, b, out=c), 1, repeat=repeat, min_time=0.2, clock=clock)
    return 2.0 * n**3 / t.seconds


@njit(cache=True)
def _copy_back_and_forth(a: np.ndarray, b: np.ndarray, reps: int) -> None:  # pragma: no cover
    for _ in range(reps):
        b[:] = a
        a[:] = b


def copy_bandwidth(
    nbytes: int, repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Bytes/s of a memory copy of an ``nbytes`` buffer (read + write counted).

    Measured at the working-set size of the kernel it is compared with (two
    buffers of ``nbytes/2``), so a kernel whose data sit in L1/L2 is compared
    with the cache bandwidth and a large one with memory bandwidth. Small sizes
    copy back and forth inside one compiled loop so call overhead does not count.
    """
    n = max(int(nbytes) // 16, 64)
    a = np.random.default_rng(1).standard_normal(n)
    b = np.empty_like(a)
    reps = max(1, int(2e6 // n))
    _copy_back_and_forth(a, b, 1)
    t = measure(
        lambda: _copy_back_and_forth(a, b, reps), 1, repeat=repeat, min_time=0.05, clock=clock
    )
    return 2 * reps * 2.0 * 8 * n / t.seconds


@njit(cache=True, fastmath=True)
def _stream_sum(x: np.ndarray, reps: int) -> float:  # pragma: no cover - jitted
    s = 0.0
    for r in range(reps):
        scale = 1.0 + r * 1e-30  # a new value each pass, so passes cannot be merged
        for i in range(x.size):
            s += x[i] * scale
    return s


def read_bandwidth(
    nbytes: int, repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Bytes/s of a vectorised read-only stream (numba, fastmath sum) over ``nbytes``.

    Small sizes repeat the pass inside one compiled loop so call overhead does not count.
    """
    n = max(int(nbytes) // 8, 64)
    x = np.random.default_rng(2).standard_normal(n)
    reps = max(1, int(4e6 // n))
    _stream_sum(x, 1)
    t = measure(lambda: _stream_sum(x, reps), 1, repeat=repeat, min_time=0.05, clock=clock)
    return reps * 8.0 * n / t.seconds


def import_time(module: str = "siflow", repeat: int = 5) -> tuple[float, float]:
    """Median wall times of ``python -c "pass"`` and ``python -c "import <module>"``."""

    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    base = statistics.median(run("pass") for _ in range(repeat))
    full = statistics.median(run(f"import {module}") for _ in range(repeat))
    return base, full
