"""Compiled swing (zigzag) filter of :mod:`siflow.periods`.

The loop of :func:`siflow.periods._zigzag` over every row of a log, compiled with
numba (``cache=True``): the same comparisons of the same float64 values in the same
order, so the same pivots (tests/test_periods_fast.py checks it against the loop in
Python). Kept in its own module so that importing :mod:`siflow.periods` does not
import numba; the kernel has no callees (numba's cache checks only this file).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(cache=True, error_model="numpy")
def zigzag_kernel(
    x: NDArray[np.float64], h: float
) -> tuple[NDArray[np.int64], int, NDArray[np.int64], int, int, int]:  # pragma: no cover - numba
    """Swing pivots of ``x`` with reversal threshold ``h``.

    Returns ``(troughs, n_troughs, peaks, n_peaks, trend, last)``: the first
    ``n_troughs`` entries of ``troughs`` and ``n_peaks`` of ``peaks`` are the
    confirmed pivots (alternating), ``trend`` the trend at the end (+1 up, -1 down,
    0 undecided) and ``last`` the position of the running extreme of the unfinished
    last swing. A swing reverses once ``x`` moves ``h`` or more against it
    (docs/theory.md, "Destabilization events": the detector's first stage).
    """
    n = x.size
    troughs = np.empty(n, dtype=np.int64)
    peaks = np.empty(n, dtype=np.int64)
    nt = 0
    npk = 0
    trend = 0
    hi = 0
    lo = 0
    ext = 0
    for i in range(1, n):
        xi = x[i]
        if trend == 0:
            if xi > x[hi]:
                hi = i
            if xi < x[lo]:
                lo = i
            if xi - x[lo] >= h and lo < i:
                troughs[nt] = lo
                nt += 1
                trend = 1
                ext = i
            elif x[hi] - xi >= h and hi < i:
                peaks[npk] = hi
                npk += 1
                trend = -1
                ext = i
        elif trend == 1:
            if xi > x[ext]:
                ext = i
            elif x[ext] - xi >= h:
                peaks[npk] = ext
                npk += 1
                trend = -1
                ext = i
        else:
            if xi < x[ext]:
                ext = i
            elif xi - x[ext] >= h:
                troughs[nt] = ext
                nt += 1
                trend = 1
                ext = i
    return troughs, nt, peaks, npk, trend, ext
