"""Destabilization events, periods and regimes of any :class:`~siflow.trajectory.Trajectory`.

Under SGD with weight decay a scale-invariant (SI) network alternates between a
slow phase, where the loss converges, the gradient vanishes and the weight norm
decays as ``rho_{t+k} = (1 - lr*wd)^k rho_t`` (exact for the discrete map at zero
gradient, see ``docs/theory.md`` section 1), and a fast *destabilization*: once the
effective LR ``lr / rho^2`` passes the stability threshold the loss spikes and
the large gradients make the norm jump up. This module finds those jumps in a
simulation or a real training log, measures the periods between them and the
decay rate in between, and classifies the run.

Detection works on one signal, chosen in this order (``signal="auto"``):

1. ``rho`` (weight norm): ``x = ln rho``; an event is a fast rise of ``x``.
2. ``elr`` (effective LR): ``x = -ln(elr) / 2``, equal to ``ln rho`` up to the
   constant ``ln(lr) / 2``; the same rises.
3. ``loss``: ``x = ln loss`` (or the raw loss when it has values <= 0); an event
   is a loss spike.

Rises are found with a *zigzag* filter on ``x``: the signal is split into
alternating down- and up-swings whose amplitude is at least a threshold ``h``;
smaller wiggles (minibatch noise) never reverse a swing. ``h`` is the larger of a
fixed floor (``min_rise``, or ``min_spike`` for the loss) and ``noise_k`` times a
robust noise level of ``x`` (median absolute deviation of its second
differences). The filter works on rows, and amplitudes are differences of values,
so irregular or log-spaced steps need no resampling; only rates use the step
column.

Each up-swing is then checked against the physics of the cycle: the rise must be
fast compared with the decay before it; and when ``lr`` and ``wd`` are known
(from ``meta`` or as arguments), the norm must have been decaying at about the
weight-decay rate before the rise, and the rise must be several times faster than
that rate or come with a loss spike. These checks separate destabilizations from
the slow wandering of the norm in a noisy equilibrium (see :func:`find_events`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow._validate import check_nonnegative, check_positive, check_positive_int
from siflow.theory import decay_rate, effective_lr
from siflow.trajectory import Trajectory

__all__ = [
    "Events",
    "find_events",
    "measure_decay_rate",
    "stationary_part",
    "classify",
    "REGIMES",
]

#: Values returned by :func:`classify`.
REGIMES: tuple[str, ...] = ("converged", "equilibrium", "periodic", "diverged")

_SIGNALS = ("auto", "rho", "elr", "loss")


def _empty_f() -> NDArray[np.float64]:
    return np.zeros(0, dtype=np.float64)


def _empty_i() -> NDArray[np.int64]:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Events:
    """Destabilization events found in a trajectory.

    Attributes
    ----------
    steps : ndarray of int64
        Step of each destabilization: the last logged row before the rise (the
        trough of ``rho``, or the last low-loss row before a spike). With sparse
        logging the true onset lies between this step and the next logged one.
    index : ndarray of int64
        Row index of each event in the trajectory (``traj.step[index] == steps``).
    periods : ndarray of float64
        ``numpy.diff(steps)``: steps between consecutive destabilizations.
    rho_before, rho_after : ndarray of float64
        Weight norm at the event row and at the peak after the jump (NaN when the
        trajectory has no ``rho`` column).
    elr_before, elr_after : ndarray of float64
        Effective LR at the same two rows (from ``elr``, else ``lr / rho**2`` when
        ``meta["lr"]`` is known, else NaN).
    peak_index, peak_steps : ndarray of int64
        Row and step of the peak after each jump (norm maximum or loss maximum).
    signal : str
        Column the events were detected on: ``"rho"``, ``"elr"`` or ``"loss"``
        (``""`` when nothing could be analysed).
    threshold : float
        The swing amplitude ``h`` used, in units of the detection signal
        (``ln rho`` or ``ln loss``).
    """

    steps: NDArray[np.int64] = field(default_factory=_empty_i)
    index: NDArray[np.int64] = field(default_factory=_empty_i)
    periods: NDArray[np.float64] = field(default_factory=_empty_f)
    rho_before: NDArray[np.float64] = field(default_factory=_empty_f)
    rho_after: NDArray[np.float64] = field(default_factory=_empty_f)
    elr_before: NDArray[np.float64] = field(default_factory=_empty_f)
    elr_after: NDArray[np.float64] = field(default_factory=_empty_f)
    peak_index: NDArray[np.int64] = field(default_factory=_empty_i)
    peak_steps: NDArray[np.int64] = field(default_factory=_empty_i)
    signal: str = ""
    threshold: float = math.nan

    def __len__(self) -> int:
        return int(self.steps.size)

    @property
    def period_median(self) -> float:
        """Median period in steps (NaN with fewer than two events)."""
        return float(np.median(self.periods)) if self.periods.size else math.nan

    @property
    def norm_ratio(self) -> NDArray[np.float64]:
        """``rho_after**2 / rho_before**2`` of each jump (squared-norm jump factor)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.rho_after / self.rho_before) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: lists of Python numbers, NaN replaced by ``None``."""

        def clean(a: NDArray[Any]) -> list[Any]:
            if a.dtype.kind in "iu":
                return [int(v) for v in a]
            return [float(v) if math.isfinite(v) else None for v in a]

        med = self.period_median
        return {
            "n_events": len(self),
            "steps": clean(self.steps),
            "index": clean(self.index),
            "periods": clean(self.periods),
            "period_median": med if math.isfinite(med) else None,
            "rho_before": clean(self.rho_before),
            "rho_after": clean(self.rho_after),
            "elr_before": clean(self.elr_before),
            "elr_after": clean(self.elr_after),
            "peak_steps": clean(self.peak_steps),
            "signal": self.signal,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
        }


# ---------------------------------------------------------------------- helpers
def _check_traj(traj: object, name: str = "traj") -> Trajectory:
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"{name} must be a siflow Trajectory, got {type(traj).__name__}; "
            f"build one with siflow.io.read(path) or Trajectory(step=..., rho=...)"
        )
    return traj


def _finite_col(traj: Trajectory, name: str) -> NDArray[np.float64] | None:
    """The column when present with at least 3 finite values, else None."""
    if not traj.has(name):
        return None
    col = traj.column(name)
    return col if np.count_nonzero(np.isfinite(col)) >= 3 else None


def _signal(traj: Trajectory, signal: str) -> tuple[str, NDArray[np.int64], NDArray[np.float64]]:
    """Choose the detection signal; return (name, rows, x) over its usable rows."""
    if signal not in _SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(_SIGNALS)}, got {signal!r}")
    order = ("rho", "elr", "loss") if signal == "auto" else (signal,)
    for name in order:
        col = _finite_col(traj, name)
        if col is None:
            if signal != "auto":
                raise ValueError(
                    f"signal={signal!r} but the trajectory has no usable {signal!r} column "
                    f"(present: {', '.join(traj.columns())}); pass signal='auto' or map the "
                    f"column when reading the log"
                )
            continue
        if name in ("rho", "elr"):
            rows = np.flatnonzero(np.isfinite(col) & (col > 0))
            if rows.size < 3:
                continue
            x = np.log(col[rows])
            if name == "elr":
                x = -0.5 * x
        else:
            rows = np.flatnonzero(np.isfinite(col))
            vals = col[rows]
            x = np.log(vals) if np.all(vals > 0) else vals.copy()
        return name, rows.astype(np.int64), x
    raise ValueError(
        "the trajectory has none of the columns needed to find destabilizations "
        f"(rho, elr or loss; present: {', '.join(traj.columns())}); map the weight-norm "
        "or loss column when reading the log, e.g. --map rho=<column>"
    )


def _noise_level(x: NDArray[np.float64]) -> float:
    """Robust standard deviation of white noise on ``x`` from its second differences.

    For white noise of standard deviation ``s``, the second difference has standard
    deviation ``sqrt(6) s``; the median absolute deviation times 1.4826 estimates
    it and ignores the few large values at jumps.
    """
    if x.size < 5:
        return 0.0
    d2 = np.diff(x, 2)
    mad = np.median(np.abs(d2 - np.median(d2)))
    return float(1.4826 * mad / math.sqrt(6.0))


def _rolling_median(x: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    if window <= 1 or x.size < window:
        return x
    from scipy.ndimage import median_filter

    return median_filter(x, size=2 * (window // 2) + 1, mode="nearest")


def _auto_window(x: NDArray[np.float64], noise_k: float, floor: float) -> int:
    """Smallest running-median window that brings ``noise_k * noise`` under ``floor``.

    The noise of a running median of ``w`` white-noise samples is about
    ``1.2533 / sqrt(w)`` times the raw noise (asymptotic efficiency of the median).
    """
    raw = _noise_level(x)
    for w in (1, 3, 5, 9, 17, 33):
        eff = raw if w == 1 else raw * 1.2533 / math.sqrt(w)
        if noise_k * eff <= floor or w == 33:
            return w if x.size >= 4 * w else 1
    return 1


def _zigzag(x: NDArray[np.float64], h: float) -> tuple[list[int], list[int], int, int]:
    """Swing pivots of ``x`` with reversal threshold ``h``.

    Returns ``(troughs, peaks, trend, last)``: confirmed trough and peak positions
    (alternating), the trend at the end (+1 up, -1 down, 0 undecided) and the
    position of the running extreme of the unfinished last swing.
    """
    n = x.size
    troughs: list[int] = []
    peaks: list[int] = []
    if n == 0:
        return troughs, peaks, 0, 0
    trend = 0
    hi = lo = ext = 0
    for i in range(1, n):
        xi = x[i]
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


def _elr_column(traj: Trajectory) -> NDArray[np.float64] | None:
    if traj.elr is not None:
        return traj.elr
    if traj.rho is not None and traj.lr is not None:
        return np.asarray(effective_lr(float(traj.lr), traj.rho))
    return None


def _free_decay_rate(
    traj: Trajectory, lr: float | None, wd: float | None, momentum: float | None
) -> float | None:
    """``-ln decay_factor(lr, wd, momentum)`` from the arguments or ``meta`` (None if unknown)."""
    lr = traj.lr if lr is None else lr
    wd = traj.wd if wd is None else wd
    if lr is None or wd is None:
        return None
    mu = traj.momentum if momentum is None else momentum
    if float(wd) == 0.0:
        return None
    return float(decay_rate(float(lr), float(wd), float(mu)))


def _fall_rate(
    steps: NDArray[np.int64], x: NDArray[np.float64], start: int, stop: int, window: float
) -> float | None:
    """Decay rate ``-d x/d step`` over the last ``window`` steps of rows ``start..stop``."""
    if stop <= start:
        return None
    s = steps[start : stop + 1].astype(np.float64)
    xs = x[start : stop + 1]
    keep = s >= s[-1] - window
    if np.count_nonzero(keep) >= 2:
        s, xs = s[keep], xs[keep]
    else:
        s, xs = s[-2:], xs[-2:]
    if s[-1] <= s[0]:
        return None
    return -_slope(s, xs)


class _LossCheck:
    """Does the loss spike during a norm rise? (confirmation of slow rises)."""

    def __init__(self, steps: NDArray[np.float64], x: NDArray[np.float64], h: float) -> None:
        self.steps, self.x, self.h = steps, x, h

    @classmethod
    def build(cls, traj: Trajectory, noise_k: float, min_spike: float) -> _LossCheck | None:
        col = _finite_col(traj, "loss")
        if col is None:
            return None
        rows = np.flatnonzero(np.isfinite(col))
        vals = col[rows]
        if not np.all(vals > 0):
            return None
        x = np.log(vals)
        raw = _noise_level(x)
        w = _auto_window(x, noise_k, min_spike)
        xs = _rolling_median(x, w)
        noise = _noise_level(xs)
        if w > 1:
            noise = max(noise, raw * 1.2533 / math.sqrt(w))
        return cls(traj.step[rows].astype(np.float64), xs, max(noise_k * noise, 0.02))

    def spike(self, onset: float, peak: float) -> bool:
        """Loss rise from before ``onset`` to its maximum up to ``peak`` exceeds ``h``."""
        rise = max(peak - onset, 1.0)
        a, b, c = np.searchsorted(self.steps, [onset - 3.0 * rise, onset - rise, peak], "right")
        a = int(np.searchsorted(self.steps, onset - 3.0 * rise, "left"))
        before, during = self.x[a:b], self.x[b:c]
        if before.size < 2 or during.size < 2:
            return False
        return bool(np.max(during) - np.median(before) >= self.h)


# ------------------------------------------------------------------ find_events
def find_events(
    traj: Trajectory,
    *,
    signal: str = "auto",
    min_rise: float = 0.02,
    min_spike: float = math.log(3.0),
    noise_k: float = 8.0,
    max_rise_fraction: float = 0.5,
    smooth: int | None = None,
    include_start: bool = False,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    min_decay_fraction: float = 0.25,
    min_rise_speed: float = 5.0,
) -> Events:
    """Find destabilizations (norm jumps or loss spikes) in a trajectory.

    Parameters
    ----------
    traj : Trajectory
        Any trajectory. Needs a ``rho`` column (weight norm), or an ``elr`` column
        (effective LR; ``rho`` follows up to a constant), or a ``loss`` column;
        they are tried in that order. Rows with NaN or non-positive values in the
        chosen column are skipped (sparse logs). Steps may be irregular or
        log-spaced. ``rho_before/after`` need ``rho``; ``elr_before/after`` need
        ``elr`` or ``rho`` plus ``meta["lr"]``; missing ones are NaN.
    signal : {"auto", "rho", "elr", "loss"}
        Column to detect on; ``"auto"`` takes the first usable of rho, elr, loss.
    min_rise : float
        Smallest norm jump counted as an event, in ``ln rho`` (0.02 is a 2% jump
        of the norm, 4% of its square; a noiseless logistic toy at ``lr*wd =
        2.5e-5`` jumps by 5%). Used for ``rho`` and ``elr``.
    min_spike : float
        Smallest loss spike counted, in ``ln loss`` (default ``ln 3``: the loss at
        least triples). Used for ``loss``.
    noise_k : float
        The threshold is ``max(floor, noise_k * noise)``, where ``noise`` is the
        robust white-noise level of the signal; raise it for very noisy logs.
    max_rise_fraction : float
        A rise spanning more than two logged intervals and lasting longer than
        this fraction of the decay phase before it is a slow drift (e.g. the
        norm relaxing up to its equilibrium), not a destabilization.
    smooth : int, optional
        Window (rows) of a running median applied to the signal first; 1 = none.
        Default: none for ``rho``/``elr``; for the loss, the smallest window in
        1, 3, 5, 9, 17, 33 whose smoothed noise level times ``noise_k`` is below
        ``min_spike`` (minibatch loss logged every step is noisy; a spike shorter
        than half the window is removed, so pass ``smooth=1`` for sparse logs).
    include_start : bool
        Count a rise that starts at the first usable row. Off by default: a norm
        growing from a small initialisation is the initial transient.
    lr, wd, momentum : float, optional
        Hyperparameters (default: ``traj.meta``). When ``lr`` and ``wd`` are known
        and the signal is ``rho`` or ``elr``, a norm rise counts only if the norm
        was decaying before it at between ``min_decay_fraction`` and
        ``1/min_decay_fraction`` times the zero-gradient rate
        ``r = -ln decay_factor(lr, wd, momentum)`` (for SGD ``-ln(1 - lr wd)``,
        exact; with plain SGD the norm can never shrink faster, since
        ``rho_{t+1} >= (1 - lr wd) rho_t`` for a gradient orthogonal to ``w``),
        measured as the least-squares slope of
        ``ln rho`` over the last ``1/rate`` steps of the decay phase (the time the
        zero-gradient decay takes to shrink the norm by ``e``), or the whole phase
        when shorter. This rejects equilibrium fluctuations of the norm, which
        minibatch noise (especially with momentum) can make larger than
        ``min_rise``, but which are slower or faster than the weight-decay law.
        Also with ``lr`` and ``wd`` known, the rise itself must be fast: its mean
        rate ``d ln rho / d step`` at least ``min_rise_speed`` times ``r`` (unless it
        spans at most two logged intervals, which cannot resolve it), or else come
        with a loss spike (the smoothed ``ln loss`` rising by ``noise_k`` times its
        noise level, and at least 0.02, above its level before the rise). A norm
        that follows a slowly varying gradient noise up and down rises at most at a
        few times ``r`` (its relaxation rate is ``4 lr wd``, docs/theory.md section 1)
        and without a loss spike; the smaller destabilizations of a network
        trained with momentum rise slowly but with a loss spike.
    min_decay_fraction : float
        See ``lr, wd, momentum``; 0 switches the decay test off.
    min_rise_speed : float
        See ``lr, wd, momentum``; 0 switches the rise test off.

    Returns
    -------
    Events
        One entry per destabilization, in step order.

    Notes
    -----
    The zigzag filter (see the module docstring) splits the signal into swings of
    amplitude at least ``h``; each up-swing (trough to peak) that passes the
    speed test is one event. The event row is the last row between the trough and
    the peak whose value is within six noise levels (at most a quarter of the
    swing) above the trough, i.e. the last row before the rise; with dense logging
    this is the onset of the instability, with sparse logging it is at most one
    logging interval early. No rate or
    hyperparameter is used for detection, so the same call works for simulations
    and real logs.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(3000)
    >>> rho = np.exp(-1e-3 * (t % 1000))  # norm decays, jumps back every 1000 steps
    >>> find_events(Trajectory(step=t, rho=rho)).steps.tolist()
    [999, 1999]
    """
    traj = _check_traj(traj)
    min_rise = float(check_positive("min_rise", min_rise))
    min_spike = float(check_positive("min_spike", min_spike))
    noise_k = float(check_positive("noise_k", noise_k)) if noise_k else 0.0
    max_rise_fraction = float(check_positive("max_rise_fraction", max_rise_fraction))
    if smooth is not None:
        smooth = check_positive_int("smooth", smooth)
    min_decay_fraction = float(check_nonnegative("min_decay_fraction", min_decay_fraction))
    min_rise_speed = float(check_nonnegative("min_rise_speed", min_rise_speed))
    free_rate = _free_decay_rate(traj, lr, wd, momentum)

    if len(traj) < 3:
        return Events()
    name, rows, x = _signal(traj, signal)
    floor = min_spike if name == "loss" else min_rise
    if smooth is None:
        smooth = _auto_window(x, noise_k, floor) if name == "loss" else 1
    raw_noise = _noise_level(x)
    x = _rolling_median(x, smooth)
    # second differences of a running median underrate its noise (the values are
    # correlated); the median of w samples has about 1.2533/sqrt(w) of the raw noise
    noise = _noise_level(x)
    if smooth > 1 and x.size >= 4 * smooth:
        noise = max(noise, raw_noise * 1.2533 / math.sqrt(smooth))
    h = max(floor, noise_k * noise)
    troughs, peaks, trend, ext = _zigzag(x, h)
    steps_sig = traj.step[rows]
    loss_checks: list[_LossCheck | None] = []  # built on first need

    def loss_spike(onset_step: float, peak_step: float) -> bool:
        if name == "loss":
            return False
        if not loss_checks:
            loss_checks.append(_LossCheck.build(traj, noise_k, min_spike))
        check = loss_checks[0]
        return check is not None and check.spike(onset_step, peak_step)

    # Pair each confirmed trough with the peak that follows (or the running max).
    peaks_arr = np.asarray(peaks, dtype=np.int64)
    ev_t: list[int] = []
    ev_p: list[int] = []
    for tr in troughs:
        j = int(np.searchsorted(peaks_arr, tr, side="right"))
        if j < peaks_arr.size:
            pk = int(peaks_arr[j])
        elif trend == 1:
            pk = ext
        else:
            continue
        # Onset: the last row of the trough plateau, within 6 noise levels of the
        # trough value (on a flat, noisy plateau the minimum can be anywhere).
        tol = x[tr] + min(6.0 * noise, 0.25 * (x[pk] - x[tr]))
        onset = tr + int(np.flatnonzero(x[tr : pk + 1] <= tol)[-1])
        if onset == 0 and not include_start:
            continue
        # Speed test against the decay phase before the onset.
        fall_start = int(peaks_arr[j - 1]) if j > 0 else 0
        fall = float(steps_sig[onset] - steps_sig[fall_start])
        rise = float(steps_sig[pk] - steps_sig[onset])
        if fall > 0 and pk - onset > 2 and rise > max_rise_fraction * fall:
            continue
        if free_rate is not None and name != "loss" and min_rise_speed > 0 and pk - onset > 2:
            slow = (x[pk] - x[onset]) / rise < min_rise_speed * free_rate
            if slow and not loss_spike(float(steps_sig[onset]), float(steps_sig[pk])):
                continue
        if free_rate is not None and min_decay_fraction > 0 and name != "loss":
            rate = _fall_rate(steps_sig, x, fall_start, onset, 1.0 / free_rate)
            if rate is not None and not (
                min_decay_fraction * free_rate <= rate <= free_rate / min_decay_fraction
            ):
                continue
        ev_t.append(onset)
        ev_p.append(pk)

    idx = rows[np.asarray(ev_t, dtype=np.int64)] if ev_t else _empty_i()
    pidx = rows[np.asarray(ev_p, dtype=np.int64)] if ev_p else _empty_i()
    steps = traj.step[idx].astype(np.int64)
    nan = np.full(idx.size, np.nan)
    rho = traj.rho
    elr = _elr_column(traj)
    return Events(
        steps=steps,
        index=idx.astype(np.int64),
        periods=np.diff(steps).astype(np.float64),
        rho_before=rho[idx].copy() if rho is not None else nan.copy(),
        rho_after=rho[pidx].copy() if rho is not None else nan.copy(),
        elr_before=elr[idx].copy() if elr is not None else nan.copy(),
        elr_after=elr[pidx].copy() if elr is not None else nan.copy(),
        peak_index=pidx.astype(np.int64),
        peak_steps=traj.step[pidx].astype(np.int64),
        signal=name,
        threshold=float(h),
    )


# ---------------------------------------------------------------- decay rate
def _log_rho(traj: Trajectory) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rows and ``ln rho`` (up to a constant when only ``elr`` is logged)."""
    for name in ("rho", "elr"):
        col = _finite_col(traj, name)
        if col is None:
            continue
        rows = np.flatnonzero(np.isfinite(col) & (col > 0))
        if rows.size >= 2:
            x = np.log(col[rows])
            return rows.astype(np.int64), (-0.5 * x if name == "elr" else x)
    raise ValueError(
        "measuring the norm decay needs a weight-norm column (rho) or an effective-LR "
        f"column (elr); present: {', '.join(traj.columns())}; map one when reading the "
        "log, e.g. --map rho=<column>"
    )


def _slope(s: NDArray[np.float64], x: NDArray[np.float64]) -> float:
    """Least-squares slope of ``x`` against ``s``."""
    s = s - s.mean()
    den = float(np.dot(s, s))
    return float(np.dot(s, x - x.mean()) / den) if den > 0 else math.nan


def decay_phases(traj: Trajectory, events: Events | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the decay phases between events.

    Each phase runs from the peak after a jump to the next event row; the part
    after the last peak is included. Without events the whole run is one phase.
    """
    traj = _check_traj(traj)
    if events is None:
        events = find_events(traj)
    n = len(traj)
    if len(events) == 0:
        return [(0, n)]
    out = []
    for k, pk in enumerate(events.peak_index):
        stop = int(events.index[k + 1]) + 1 if k + 1 < len(events) else n
        out.append((int(pk), stop))
    return out


def measure_decay_rate(traj: Trajectory, events: Events | None = None) -> float:
    """Measured per-step decay rate of the norm, ``-d ln rho / d step``.

    The rate is the least-squares slope of ``ln rho`` against ``step`` in each decay
    phase (from the peak after a jump to the next event; the first 10% of each
    phase in steps is skipped, where the gradient of the spike has not died out),
    and the median over phases. Without events the whole run is one phase.

    For SGD with coupled weight decay at zero gradient the exact map gives
    ``-ln(1 - lr*wd)`` (``docs/theory.md`` section 1, exact); momentum ``mu`` changes it
    to about ``lr*wd/(1-mu)`` (first order). Needs ``rho`` or ``elr``.

    Returns
    -------
    float
        Decay rate per step (positive while the norm decays); NaN when no phase has
        two usable rows.
    """
    traj = _check_traj(traj)
    rows, x = _log_rho(traj)
    if events is None:
        events = find_events(traj)
    where = np.full(len(traj), -1, dtype=np.int64)
    where[rows] = np.arange(rows.size)
    rates = []
    for start, stop in decay_phases(traj, events):
        sel = (rows >= start) & (rows < stop)
        s = traj.step[rows[sel]].astype(np.float64)
        xs = x[sel]
        if s.size < 2:
            continue
        keep = s >= s[0] + 0.1 * (s[-1] - s[0])
        if np.count_nonzero(keep) >= 2:
            s, xs = s[keep], xs[keep]
        r = _slope(s, xs)
        if math.isfinite(r):
            rates.append(-r)
    return float(np.median(rates)) if rates else math.nan


# ------------------------------------------------------------ stationary part
def _transient_end(x: NDArray[np.float64], s: NDArray[np.float64]) -> int:
    """First position after which ``x`` stays in the band of its second half."""
    n = x.size
    half = x[n // 2 :]
    m = float(np.median(half))
    spread = float(1.4826 * np.median(np.abs(half - m)))
    tol = max(4.0 * spread, 0.02)
    outside = np.flatnonzero(np.abs(x - m) > tol)
    return int(outside[-1]) + 1 if outside.size else 0


def stationary_part(traj: Trajectory, events: Events | None = None) -> Trajectory:
    """Rows after the initial transient, for equilibrium statistics.

    - With two or more events (periodic run): the whole periods, from the first
      event row to the last one (inclusive).
    - Otherwise, when ``meta`` has ``lr`` and ``wd``: rows after ``5/(4 lr wd)``
      steps from the start, five time constants of the norm relaxation
      ``rho^4 - rho*^4 ~ (1 - lr wd)^{4t}`` (``docs/theory.md`` section 1, first order),
      when that leaves at least a fifth of the run.
    - Else: rows after the last one where ``ln rho`` (else ``ln loss``) is outside
      the band ``median +- max(4 MAD-sigma, 0.02)`` of the second half of the run.

    At least the last half of the rows is always returned when the rules above
    would leave fewer.
    """
    traj = _check_traj(traj)
    n = len(traj)
    if n < 4:
        return traj[slice(None)]
    if events is None:
        events = find_events(traj)
    if len(events) >= 2:
        return traj[int(events.index[0]) : int(events.index[-1]) + 1]
    min_rows = n // 2
    lr, wd = traj.lr, traj.wd
    start: int | None = None
    if lr is not None and wd is not None and float(lr) * float(wd) > 0:
        t0 = traj.step[0] + 5.0 / (4.0 * float(lr) * float(wd))
        cand = int(np.searchsorted(traj.step, t0))
        if n - cand >= max(n // 5, 2):
            start = cand
    if start is None:
        try:
            rows, x = _log_rho(traj)
        except ValueError:
            col = _finite_col(traj, "loss")
            if col is None:
                return traj[n - min_rows :]
            rows = np.flatnonzero(np.isfinite(col))
            vals = col[rows]
            x = np.log(vals) if np.all(vals > 0) else vals
            x = _rolling_median(x, 5)
        pos = _transient_end(x, traj.step[rows].astype(np.float64))
        start = int(rows[pos]) if pos < rows.size else n - min_rows
    start = min(start, n - min_rows)
    return traj[start:]


# ---------------------------------------------------------------- classify
def _blew_up(col: NDArray[np.float64]) -> bool:
    """An inf anywhere, or NaN filling the end of a column that was finite before."""
    if np.any(np.isinf(col)):
        return True
    nan = np.isnan(col)
    if not nan[-1] or nan.all():
        return False
    last_finite = int(np.flatnonzero(~nan)[-1])
    # NaN only after the last finite value (not the scattered blanks of a sparse log).
    return not nan[:last_finite].any()


def classify(traj: Trajectory, events: Events | None = None) -> str:
    """Regime of a run: ``"converged"``, ``"equilibrium"``, ``"periodic"`` or ``"diverged"``.

    Rules, in order:

    - ``"diverged"``: ``meta["status"] == "diverged"``, or a non-finite ``rho`` or
      ``loss`` value (inf anywhere, or NaN from some row to the end), or the median
      loss over the last tenth of the run above 1.5 times that over the first
      twentieth, above half the first logged loss and above a tenth of the largest
      (training undid itself; a loss rising from ~1e-11 at a minimum, or a noise floor
      growing with the effective LR, is not divergence).
    - ``"periodic"``: at least two destabilization events, and the run after the
      last one is shorter than 2.5 times the longest period (otherwise the spikes
      were a transient).
    - ``"converged"``: the norm still decays over the second half of the run at
      least at half the zero-gradient rate ``-ln(1 - lr*wd)`` (when lr and wd are
      known), or by more than 10% over that half (when they are not); with only a
      loss column, the median loss of the last tenth is 10x below that of the
      middle of the run.
    - ``"equilibrium"``: otherwise (the norm is stationary).
    """
    traj = _check_traj(traj)
    n = len(traj)
    if traj.status == "diverged":
        return "diverged"
    for name in ("rho", "loss"):
        if traj.has(name) and _blew_up(traj.column(name)):
            return "diverged"
    if n < 4:
        return "equilibrium"
    if events is None:
        events = find_events(traj)
    loss = _finite_col(traj, "loss")
    if loss is not None:
        good = loss[np.isfinite(loss)]
        head = float(np.median(good[: max(good.size // 20, 1)]))
        tail = float(np.median(good[-max(good.size // 10, 1) :]))
        # Growth alone is not divergence: a run converged to 1e-11 whose spikes lift the
        # median to 1e-7, or whose noise floor grows with the effective LR, is healthy.
        # Diverged means back near the loss it started from and not far below its largest.
        if (
            head > 0
            and tail > 1.5 * head
            and tail > 0.5 * float(good[0])
            and tail > 0.1 * float(np.max(np.abs(good)))
        ):
            return "diverged"
    if len(events) >= 2:
        since = float(traj.step[-1] - events.steps[-1])
        if since <= 2.5 * float(np.max(events.periods)):
            return "periodic"
    try:
        rows, x = _log_rho(traj)
    except ValueError:
        rows = None
    if rows is not None:
        second = rows >= rows[rows.size // 2]
        s = traj.step[rows[second]].astype(np.float64)
        xs = x[second]
        if s.size >= 2:
            rate = -_slope(s, xs)
            lr, wd = traj.lr, traj.wd
            if lr is not None and wd is not None and float(lr) * float(wd) < 1:
                free = float(decay_rate(float(lr), float(wd)))
                return "converged" if rate >= 0.5 * free else "equilibrium"
            drop = rate * float(s[-1] - s[0])
            return "converged" if drop > 0.1 else "equilibrium"
        return "equilibrium"
    assert loss is not None
    good = loss[np.isfinite(loss)]
    mid = good[good.size // 3 : 2 * good.size // 3]
    tail = good[-max(good.size // 10, 1) :]
    if good.size >= 10 and np.all(good > 0) and np.median(tail) < 0.1 * np.median(mid):
        return "converged"
    return "equilibrium"
