"""The detector's fast paths give the same numbers as the plain numpy/Python computations.

``periods._zigzag`` runs compiled (``siflow._swing``), ``_Loss.spike`` summarises short
windows in Python floats and the candidates are measured on Python lists; all must
reproduce the straightforward versions exactly, so that the events found do not change.
The references here are the plain loop and the numpy calls (``numpy.median``,
``numpy.percentile``, ``searchsorted``, ``flatnonzero``, ``argmax``), not the code under
test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from siflow import periods
from siflow.simulate import simulate
from siflow.trajectory import Trajectory


def _zigzag_reference(x: np.ndarray, h: float) -> tuple[list[int], list[int], int, int]:
    """The swing filter as a plain Python loop over the rows."""
    n = x.size
    troughs: list[int] = []
    peaks: list[int] = []
    if n == 0:
        return troughs, peaks, 0, 0
    trend = 0
    hi = lo = ext = 0
    for i in range(1, n):
        xi = float(x[i])
        if trend == 0:
            if xi > x[hi]:
                hi = i
            if xi < x[lo]:
                lo = i
            if xi - x[lo] >= h and lo < i:
                troughs.append(lo)
                trend, ext = 1, i
            elif x[hi] - xi >= h and hi < i:
                peaks.append(hi)
                trend, ext = -1, i
        elif trend == 1:
            if xi > x[ext]:
                ext = i
            elif x[ext] - xi >= h:
                peaks.append(ext)
                trend, ext = -1, i
        else:
            if xi < x[ext]:
                ext = i
            elif xi - x[ext] >= h:
                troughs.append(ext)
                trend, ext = 1, i
    return troughs, peaks, trend, ext


def _candidates_reference(x, h, noise, include_start):
    """Candidates with numpy's searchsorted and flatnonzero on the array ``x``."""
    troughs, peaks, trend, ext = _zigzag_reference(x, h)
    peaks_arr = np.asarray(peaks, dtype=np.int64)
    out = []
    for tr in troughs:
        j = int(np.searchsorted(peaks_arr, tr, side="right"))
        if j < peaks_arr.size:
            pk = int(peaks_arr[j])
        elif trend == 1:
            pk = ext
        else:
            continue
        tol = x[tr] + min(6.0 * noise, 0.25 * (x[pk] - x[tr]))
        onset = tr + int(np.flatnonzero(x[tr : pk + 1] <= tol)[-1])
        if onset == 0 and not include_start:
            continue
        fall_start = int(peaks_arr[j - 1]) if j > 0 else 0
        out.append(periods._Cand(onset, pk, fall_start))
    return out, x.tolist()


def _merge_stages_reference(xs, cands, merge_fraction):
    x = np.asarray(xs)
    out = []
    for c in cands:
        if out:
            prev = out[-1]
            rise = min(x[prev.peak] - x[prev.onset], x[c.peak] - x[c.onset])
            dip = x[prev.peak] - float(np.min(x[prev.peak : c.onset + 1]))
            if dip < merge_fraction * rise:
                top = c.peak if x[c.peak] >= x[prev.peak] else prev.peak
                out[-1] = periods._Cand(prev.onset, top, prev.fall_start)
                continue
        out.append(c)
    return out


def _half_rise_row_reference(xs, c):
    x = np.asarray(xs[c.onset : c.peak + 1])
    target = xs[c.onset] + 0.5 * (xs[c.peak] - xs[c.onset])
    return c.onset + int(np.argmax(x >= target))


def _half_rise_time_reference(xs, clock, c):
    k = _half_rise_row_reference(xs, c)
    dt = clock[k] - clock[c.onset]
    if dt <= 0:
        dt = clock[min(c.onset + 1, len(clock) - 1)] - clock[c.onset]
    return float(dt)


def _fastest_half_time_reference(xs, clock, c):
    need = 0.5 * (xs[c.peak] - xs[c.onset])
    best = min(
        (
            clock[j] - clock[i]
            for i in range(c.onset, c.peak + 1)
            for j in range(i, c.peak + 1)
            if xs[j] - xs[i] >= need
        ),
        default=math.inf,
    )
    if not best > 0:
        best = clock[min(c.onset + 1, len(clock) - 1)] - clock[c.onset]
    return float(best)


def test_fastest_half_time_equals_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(400):
        n = int(rng.integers(2, 60))
        xs = np.cumsum(rng.normal(0.1 * (trial % 3), 1.0, n))
        if trial % 4 == 0:
            xs = np.round(xs)  # ties
        clock = np.cumsum(rng.uniform(0.1, 2.0, n))
        lo = int(rng.integers(0, n - 1))
        hi = lo + int(np.argmax(xs[lo:]))
        if hi == lo:
            continue
        c = periods._Cand(lo, hi, 0)
        got = periods._fastest_half_time(xs.tolist(), clock, c)
        assert got == pytest.approx(_fastest_half_time_reference(xs.tolist(), clock, c), rel=1e-12)


def _noise_level_numpy(x: np.ndarray) -> float:
    if x.size < 5:
        return 0.0
    d2 = np.diff(x, 2)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def _samples(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:
        return rng.normal(size=n)
    if kind == 1:  # many ties
        return np.round(rng.normal(size=n), 1)
    return np.cumsum(rng.normal(size=n)) * 1e-3 - 5.0  # a slow drift, like ln loss


def test_small_window_statistics_equal_numpy():
    rng = np.random.default_rng(7)
    for trial in range(3000):
        n = int(rng.integers(1, 2 * periods._SMALL))
        x = _samples(rng, n, trial % 3)
        v = x.tolist()
        assert periods._median_list(v) == np.median(x)
        assert periods._percentile90_sorted(sorted(v)) == np.percentile(x, 90)
        assert periods._noise_level_list(v) == _noise_level_numpy(x)


def test_percentile_interpolation_branches():
    # n = 11: virtual index 9.0 (no interpolation); n = 6: 4.5 (upper branch, gamma 0.5);
    # n = 2: 0.9 (upper); n = 4: 2.7 (upper); n = 9: 7.2 (lower branch)
    for n in (1, 2, 4, 6, 9, 11):
        x = np.linspace(-3.0, 7.0, n) ** 3
        assert periods._percentile90_sorted(sorted(x.tolist())) == np.percentile(x, 90)


@pytest.mark.parametrize("h", [0.02, 0.3, 1.0])
def test_compiled_zigzag_equals_the_loop(h):
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(0, 3000))
        x = _samples(rng, n, trial % 3) * (100.0 if trial % 3 == 2 else 0.3)
        if n > 10 and trial % 4 == 0:
            x[n // 2 :] += 2.0  # a jump
        assert periods._zigzag(x, h) == _zigzag_reference(x, h)


def _runs() -> list[Trajectory]:
    """Runs with many short periods, few long ones, momentum, noise, and a loss-only log."""
    runs = [
        simulate("logistic", lr=0.3, wd=0.1 / 0.3, steps=3000, seed=0),
        simulate("logistic", lr=0.3, wd=1e-3 / 0.3, steps=20_000, seed=1),
        simulate("logistic", lr=0.1, wd=1e-3, steps=20_000, seed=2, momentum=0.9),
        simulate("rayleigh", lr=0.3, wd=0.02, steps=5000, seed=0, noise=0.01),
        simulate("rayleigh", lr=0.1, wd=0.01, steps=5000, seed=1, noise=0.01, momentum=0.9),
    ]
    t = runs[1]
    runs.append(Trajectory(step=t.step, loss=t.loss))
    sparse = t.loss.copy()
    sparse[np.arange(sparse.size) % 7 != 0] = np.nan  # the loss logged every 7th row
    runs.append(Trajectory(step=t.step, rho=t.rho, loss=sparse, meta=dict(t.meta)))
    runs.append(Trajectory(step=t.step, loss=sparse))  # detection on the loss's rows only
    return runs


def _position_reference(loss: periods._Loss, row: int, side: str) -> int:
    return int(np.searchsorted(loss.rows, row, side))


def _rows_between_reference(loss: periods._Loss, first: int, last: int) -> int:
    return int(np.count_nonzero((loss.rows >= first) & (loss.rows <= last)))


def _same_events(a: periods.Events, b: periods.Events) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key in da:
        np.testing.assert_array_equal(np.asarray(da[key]), np.asarray(db[key]), err_msg=key)


def test_find_events_unchanged_by_the_fast_paths(monkeypatch):
    runs = _runs()
    fast = [periods.find_events(t) for t in runs]
    assert sum(len(e) for e in fast) > 100  # the runs do have events
    with monkeypatch.context() as m:
        m.setattr(periods, "_SMALL", 0)  # every window through numpy
        m.setattr(periods, "_zigzag", _zigzag_reference)
        m.setattr(periods, "_candidates", _candidates_reference)
        m.setattr(periods, "_merge_stages", _merge_stages_reference)
        m.setattr(periods, "_half_rise_row", _half_rise_row_reference)
        m.setattr(periods, "_half_rise_time", _half_rise_time_reference)
        m.setattr(periods, "_fastest_half_time", _fastest_half_time_reference)
        m.setattr(periods._Loss, "position", _position_reference)
        m.setattr(periods._Loss, "rows_between", _rows_between_reference)
        plain = [periods.find_events(t) for t in runs]
    for a, b in zip(fast, plain, strict=True):
        _same_events(a, b)


def test_decay_clock_of_a_constant_rate_uses_its_value_as_the_median():
    step = np.arange(0, 5000, 3)
    traj = Trajectory(step=step, rho=np.ones(step.size))
    for rate in (np.full(step.size, 2.5e-4), np.linspace(1e-4, 3e-4, step.size)):
        rel = rate / np.median(rate)
        expected = np.concatenate([[0.0], np.cumsum(rel[:-1] * np.diff(step.astype(float)))])
        np.testing.assert_array_equal(periods._decay_clock(traj, rate), expected)
