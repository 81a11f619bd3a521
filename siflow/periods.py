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

Each up-swing is then checked against the definition of a destabilization
(``docs/theory.md``, section "Destabilization events"): it starts fast compared with
the decay phases of the same log, or the loss spikes with it above the band of the
decay phase before it; the network had fitted the data before it; a multi-stage rise is
one event. Durations are measured on the free-decay clock of the per-row ``lr``/``wd``
(or the step column), and only ratios of durations enter, so the events do not depend
on the time unit of the log, and a learning-rate schedule is not taken for an event.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siflow import theory
from siflow._fileio import json_ready
from siflow._validate import (
    as_float_array,
    check_positive_int,
    nonnegative_number,
    positive_number,
)
from siflow.theory import decay_rate, effective_lr, stability_threshold_elr
from siflow.trajectory import Trajectory

__all__ = [
    "Events",
    "find_events",
    "match_events",
    "match_tolerance",
    "resolution_note",
    "ROWS_PER_CYCLE",
    "PhaseLock",
    "phase_lock",
    "phase_lock_note",
    "score_detector",
    "measure_decay_rate",
    "sharpness_before_events",
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
    loss_before, loss_peak : ndarray of float64
        Median loss over the last quarter of the decay phase before each event, and
        the largest (3-row running median) loss during the rise (NaN without a loss).
    loss_spike : ndarray of float64
        ``loss_peak / loss_before`` (the spike factor; NaN for a loss with values
        <= 0, where a ratio is not defined).
    decay_before : ndarray of float64
        ``ln prod_t (1 - lr_t wd_t)`` over the steps from each event to the next
        (``len(events) - 1`` values; the free decay of ``ln rho`` in that period, with
        the momentum decay factor when ``momentum > 0``); NaN when lr/wd are unknown.
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
    loss_before: NDArray[np.float64] = field(default_factory=_empty_f)
    loss_peak: NDArray[np.float64] = field(default_factory=_empty_f)
    loss_spike: NDArray[np.float64] = field(default_factory=_empty_f)
    decay_before: NDArray[np.float64] = field(default_factory=_empty_f)
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
        """JSON-ready dict: lists of Python numbers, NaN replaced by ``None``
        (:func:`siflow._fileio.json_ready`)."""
        return json_ready(
            {
                "n_events": len(self),
                "steps": self.steps,
                "index": self.index,
                "periods": self.periods,
                "period_median": self.period_median,
                "rho_before": self.rho_before,
                "rho_after": self.rho_after,
                "elr_before": self.elr_before,
                "elr_after": self.elr_after,
                "peak_steps": self.peak_steps,
                "loss_before": self.loss_before,
                "loss_peak": self.loss_peak,
                "loss_spike": self.loss_spike,
                "decay_before": self.decay_before,
                "signal": self.signal,
                "threshold": self.threshold,
            }
        )


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


def _signal(
    traj: Trajectory, signal: str, loss_floor: float | None = None
) -> tuple[str, NDArray[np.int64], NDArray[np.float64]]:
    """Choose the detection signal; return (name, rows, x) over its usable rows (for the
    loss, ``ln(loss - loss_floor)``: :func:`_log_loss`)."""
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
            x = _log_loss(col[rows], loss_floor)[1]
        return name, rows.astype(np.int64), x
    short = [
        f"{name} {_usable_rows(traj.column(name), name != 'loss')}"
        + (" finite" if name == "loss" else " finite positive")
        for name in order
        if traj.has(name)
    ]
    if short:
        raise ValueError(
            f"too few usable rows to find destabilizations (3 needed; {', '.join(short)}); "
            f"log more steps, or check the log for inf/NaN"
        )
    raise ValueError(
        "the trajectory has none of the columns needed to find destabilizations "
        f"(rho, elr or loss; present: {', '.join(traj.columns())}); map the weight-norm "
        "or loss column when reading the log, e.g. mapping={'rho': COLUMN}"
    )


def _usable_rows(col: NDArray[np.float64], positive: bool) -> int:
    """How many values of a detection column are finite (and positive, for rho and elr)."""
    ok = np.isfinite(col) & (col > 0) if positive else np.isfinite(col)
    return int(np.count_nonzero(ok))


#: Windows up to this many rows are summarised in Python floats (:func:`_median_list` and
#: friends), which for a few rows is ~50x faster than a numpy call and gives the same value.
_SMALL = 256


def _median_list(v: list[float]) -> float:
    """``numpy.median`` of a short non-empty list of finite floats, the same value.

    The middle element of the sorted values, or the mean of the two middle ones
    computed as numpy does, ``(a + b) / 2``.
    """
    s = sorted(v)
    n = len(s)
    k = n // 2
    return s[k] if n % 2 else (s[k - 1] + s[k]) / 2.0


def _percentile90_sorted(s: list[float]) -> float:
    """``numpy.percentile(s, 90)`` (method ``"linear"``) of sorted finite floats, the same value.

    numpy's arithmetic step by step: virtual index ``v = (n - 1) * 0.9``, its floor
    ``i`` and fraction ``g = v - i``, then ``a + (b - a) g`` for ``g < 0.5`` and
    ``b - (b - a)(1 - g)`` otherwise (``a, b = s[i], s[i + 1]``); ``v >= n - 1`` gives
    the largest value.
    """
    n = len(s)
    v = (n - 1) * (90 / 100)
    if v >= n - 1:
        return s[-1]
    i = math.floor(v)
    g = v - i
    a, b = s[i], s[i + 1]
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def _noise_level_list(v: list[float]) -> float:
    """:func:`_noise_level` of a short list of finite floats (the same value)."""
    if len(v) < 5:
        return 0.0
    d1 = [b - a for a, b in zip(v[:-1], v[1:], strict=True)]
    d2 = [b - a for a, b in zip(d1[:-1], d1[1:], strict=True)]
    med = _median_list(d2)
    mad = _median_list([abs(d - med) for d in d2])
    return float(1.4826 * mad / math.sqrt(6.0))


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
    position of the running extreme of the unfinished last swing. The loop runs
    compiled (:func:`siflow._swing.zigzag_kernel`).
    """
    if x.size == 0:
        return [], [], 0, 0
    from siflow._swing import zigzag_kernel

    troughs, nt, peaks, npk, trend, ext = zigzag_kernel(
        np.ascontiguousarray(x, dtype=np.float64), float(h)
    )
    return troughs[:nt].tolist(), peaks[:npk].tolist(), int(trend), int(ext)


def _row_array(traj: Trajectory, name: str, value: ArrayLike | None) -> NDArray[np.float64] | None:
    """Per-row ``lr``, ``wd`` or ``momentum``: the argument (scalar or array), else the
    log's column (:meth:`~siflow.trajectory.Trajectory.logged`: the one of that name, or
    the one :func:`siflow.io.read` mapped to it, such as Lightning's ``siflow/lr`` or
    ``lr-SGD``), else meta."""
    n = len(traj)
    if value is None:
        logged = traj.logged(name)
        if logged is not None:
            col = np.asarray(logged, dtype=np.float64)
            known = np.isfinite(col)
            if not known.any():
                return None
            fill = traj.meta.get(name)
            if fill is None:  # forward-fill gaps of a sparse column
                idx = np.where(known, np.arange(n), 0)
                np.maximum.accumulate(idx, out=idx)
                col = col[idx]
                col[: int(np.argmax(known))] = col[int(np.argmax(known))]
            else:
                col = np.where(known, col, float(fill))
            return col
        meta = traj.meta.get(name)
        return None if meta is None else np.full(n, float(meta))
    arr = as_float_array(name, value)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(
            f"{name}= must be a number or an array with one value per row ({n}), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name}= must hold finite values >= 0")
    return arr


#: Optimizers whose weight decay is decoupled (``1 - lr wd`` per step, whatever the betas).
_DECOUPLED = ("adam", "adamw", "lion")


def _optimizer_name(traj: Trajectory) -> str:
    """``meta["optimizer"]`` lower-cased (``""`` when the log names none)."""
    return str(traj.meta.get("optimizer") or "").strip().lower()


def _nesterov(traj: Trajectory) -> bool:
    """Whether the log is of PyTorch's Nesterov SGD, whose decay factor and stability
    threshold differ from heavy ball's: ``meta["optimizer"]`` is ``"nesterov"``, or SGD
    (or unnamed) with ``meta["nesterov"]`` true, as ``SIRecorder`` writes it."""
    name = _optimizer_name(traj)
    return name == "nesterov" or (name in ("", "sgd", "sgdm") and bool(traj.meta.get("nesterov")))


def _momentum_rows(traj: Trajectory, momentum: ArrayLike | None) -> float | NDArray[np.float64]:
    """Heavy-ball momentum, one value or one per row: ``momentum``, else the log's
    ``momentum`` column (a schedule that cycles it, as PyTorch's ``OneCycleLR`` does by
    default; gaps filled as :func:`_row_array` fills them), else ``meta["momentum"]``
    (0 when absent); 0 for AdamW and Lion, whose decoupled decay ``1 - lr wd`` per step
    does not depend on their betas."""
    if momentum is not None:
        given = as_float_array("momentum", momentum)
        return float(given) if given.ndim == 0 else _row_array(traj, "momentum", given)
    if _optimizer_name(traj) in _DECOUPLED:
        return 0.0
    col = _row_array(traj, "momentum", None) if traj.logged("momentum") is not None else None
    if col is None:
        return traj.momentum
    _check_momentum_column(traj, col)
    return col


def _check_momentum_column(
    traj: Trajectory, col: NDArray[np.float64], fix: str = "fix that column or pass momentum="
) -> None:
    """A ValueError naming the first row of the log's momentum column outside ``[0, 1)``,
    and ``fix``."""
    bad = ~((col >= 0) & (col < 1))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"the log's momentum column holds {col[i]:g} at step {int(traj.step[i])}: a "
            f"heavy-ball momentum is in [0, 1); {fix}"
        )


class _HyperRows(NamedTuple):
    """The log's hyperparameters row by row (:func:`_schedule`)."""

    lr: NDArray[np.float64] | None
    wd: NDArray[np.float64] | None
    #: :func:`_momentum_rows`; resolved only when ``lr`` and ``wd`` are both known
    mu: float | NDArray[np.float64] | None
    #: free decay rate ``-ln decay_factor(lr_t, wd_t, mu_t)``; None unless ``lr wd > 0``
    rate: NDArray[np.float64] | None


def _schedule(
    traj: Trajectory, lr: ArrayLike | None, wd: ArrayLike | None, momentum: ArrayLike | None
) -> _HyperRows:
    """Per-row ``lr``, ``wd`` (:func:`_row_array`), momentum (:func:`_momentum_rows`) and
    free decay rate ``-ln decay_factor(lr_t, wd_t, mu_t)``, each None when unknown."""
    lr_row = _row_array(traj, "lr", lr)
    wd_row = _row_array(traj, "wd", wd)
    if lr_row is None or wd_row is None:
        return _HyperRows(lr_row, wd_row, None, None)
    mu = _momentum_rows(traj, momentum)
    if np.any(lr_row * wd_row >= 1.0):
        raise ValueError("lr*wd must be < 1 on every row; check lr= and wd=")
    if not np.all(lr_row * wd_row > 0):
        return _HyperRows(lr_row, wd_row, mu, None)
    rate = decay_rate(lr_row, wd_row, mu, nesterov=_nesterov(traj))
    return _HyperRows(lr_row, wd_row, mu, np.asarray(rate, dtype=np.float64))


def _decay_clock(traj: Trajectory, rate: NDArray[np.float64] | None) -> NDArray[np.float64]:
    """Monotone clock of the free decay: ``sum_t rate_t`` over steps, or the step itself.

    Only ratios of clock intervals enter the detector, so a constant rate, a constant
    factor on the step column (epochs times K) or on the rate all cancel; a schedule
    (warmup, decay) changes the clock's speed where the free decay changes its own.
    """
    s = traj.step.astype(np.float64)
    if rate is None:
        return s - s[0]
    # a constant rate is its own median (numpy.median's value, without the partition)
    med = float(rate[0]) if np.all(rate == rate[0]) else float(np.median(rate))
    rel = rate / med
    return np.concatenate([[0.0], np.cumsum(rel[:-1] * np.diff(s))])


def _log_equilibrium_norm(
    traj: Trajectory,
    lr_row: NDArray[np.float64],
    wd_row: NDArray[np.float64],
    mu: float | NDArray[np.float64],
) -> NDArray[np.float64]:
    """``ln rho*_t`` up to a constant: the quasi-static equilibrium norm at a fixed gradient.

    SGD and heavy ball: :func:`siflow.theory.sgdm_equilibrium_norm` at a unit sphere
    gradient (``rho*`` scales as ``sqrt(G)``, so a constant ``G`` only shifts the log);
    AdamW and Lion (``meta["optimizer"]``): :func:`siflow.theory.adamw_equilibrium_norm`
    / :func:`siflow.theory.lion_equilibrium_norm` of one element (``rho*`` scales as
    ``sqrt(C)``), with ``meta["betas"]``. Needs ``0 < lr * wd < 1`` on every row.
    """
    optimizer = _optimizer_name(traj)
    betas = traj.meta.get("betas")
    b1, b2 = (
        (float(betas[0]), float(betas[1])) if isinstance(betas, (list, tuple)) else (0.9, 0.999)
    )
    if optimizer in ("adam", "adamw"):
        rho = theory.adamw_equilibrium_norm(lr_row, wd_row, 1.0, b1)
    elif optimizer == "lion":
        rho = theory.lion_equilibrium_norm(lr_row, wd_row, 1.0, b1, b2)
    else:
        rho = theory.sgdm_equilibrium_norm(lr_row, wd_row, 1.0, mu, nesterov=_nesterov(traj))
    return np.log(np.asarray(rho, dtype=np.float64))


def _schedule_explained_rise(log_eq: NDArray[np.float64], onset_row: int, peak_row: int) -> float:
    """Largest rise of ``ln rho`` that the lr schedule alone explains from an onset.

    At the onset row (a trough of the norm) the norm is at the quasi-static equilibrium
    of the gradient it has there (the push balances the decay). With that gradient held,
    the schedule moves the equilibrium by ``ln rho*_t - ln rho*_onset`` and the norm
    relaxes towards it without overshooting, so up to the peak it cannot rise by more than
    the largest such change over the rows whose lr drives the rise (``[onset, peak)``).
    0 when the schedule does not raise the equilibrium (a constant lr, a decay).
    """
    stop = max(peak_row, onset_row + 1)
    top = float(np.max(log_eq[onset_row:stop]))
    return max(top - float(log_eq[onset_row]), 0.0)


def _elr_column(traj: Trajectory, lr_row: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
    if traj.elr is not None:
        return traj.elr
    if traj.rho is not None and lr_row is not None:
        return np.asarray(effective_lr(lr_row, traj.rho))
    return None


def estimate_loss_floor(loss: ArrayLike) -> float:
    """The floor a loss settles just above, when the log shows one (else 0).

    A loss with a floor ``L0 > 0`` (label smoothing: the entropy of the smoothed targets,
    :func:`siflow.theory.label_smoothing_loss_floor`, 0.50 for ``eps = 0.1`` and
    ``K = 10``; a model that cannot fit the data) spends most of a run
    just above it, and a destabilization multiplies its excess ``L - L0``, not ``L``. The
    floor is taken as ``max(0, q01 - 2 (q50 - q01))`` from the 1st and 50th percentiles of
    the positive finite values: positive only when half the log lies within 1.5 times its
    1st percentile (and above it: a loss that sits at one value has no spread to place a
    floor by), and only for a loss whose largest value is at least 1.5 times its 5th
    percentile (a loss that only fluctuates has no spikes to read above a floor). A
    cross-entropy that fits the data spans decades: no floor.

    Parameters
    ----------
    loss : array_like
        The loss column (NaN and non-positive values are left out).
    """
    v = as_float_array("loss", loss)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 20:
        return 0.0
    q01, q05, q50 = np.percentile(v, [1, 5, 50])
    if not q50 > q01 * (1.0 + 1e-9):
        return 0.0  # half the log at one value (a toy's plateau): no spread to place a floor
    if float(np.max(v)) < 1.5 * q05:
        return 0.0  # a loss within 1.5x of itself (noise, no spike): nothing rises above it
    return max(0.0, float(q01 - 2.0 * (q50 - q01)))


def _loss_above_floor(
    vals: NDArray[np.float64], floor: float | None
) -> tuple[float, NDArray[np.float64]]:
    """``(floor, vals - floor)``: the floor given, or estimated (:func:`estimate_loss_floor`);
    the few values at or below an estimated floor are held at half the 1st percentile's
    excess so that their logarithm stays finite."""
    if floor is None:
        floor = estimate_loss_floor(vals)
        if floor <= 0:
            return 0.0, vals
        q01 = float(np.percentile(vals, 1))
        return floor, np.maximum(vals - floor, 0.5 * (q01 - floor))
    if floor <= 0:
        return 0.0, vals
    smallest = float(np.min(vals))
    if floor >= smallest:
        raise ValueError(
            f"loss_floor={floor:g} is not below the log's smallest loss {smallest:g}; pass "
            "the floor the loss settles above (label smoothing: the smoothed targets' "
            "entropy), or 0 for none"
        )
    return floor, vals - floor


def _log_loss(
    vals: NDArray[np.float64], floor: float | None
) -> tuple[float, NDArray[np.float64], bool]:
    """``(floor, x, log)``: ``x = ln(vals - floor)`` (:func:`_loss_above_floor`) when every
    value is positive (``log`` True), else the values themselves and no floor."""
    if not np.all(vals > 0):
        return 0.0, vals.astype(np.float64), False
    floor, vals = _loss_above_floor(vals, floor)
    return floor, np.log(vals), True


class _Loss:
    """The log's loss on a log scale, smoothed, with its noise level (spike measurements)."""

    def __init__(self, traj: Trajectory, noise_k: float, floor: float | None = None) -> None:
        col = _finite_col(traj, "loss")
        self.ok = col is not None
        self.floor = 0.0
        if col is None:
            return
        rows = np.flatnonzero(np.isfinite(col))
        vals = col[rows]
        self.rows = rows
        # every row has a loss (simulations): a row's position is the row itself
        self.dense = rows.size == col.size
        self.floor, x, self.log = _log_loss(vals, floor)
        self.raw = x
        self.x = _rolling_median(x, 3) if x.size >= 12 else x
        self.noise = _noise_level(self.x)
        self.noise_k = noise_k
        self.top = float(np.max(self.x))
        self.unit = 1.0  # set by find_events: min_loss_spike / spike_noise_k
        self.low = self._low_end(self.x)
        span = self.top - self.low
        self.informative = span >= math.log(1.5) if self.log else span > 0

    def low_at_lr(self, lr_row: NDArray[np.float64] | None, row: int) -> float:
        """The low end of the loss range over the rows whose learning rate is at least
        half the one at ``row``: what the network fits at about this lr. Under a schedule
        that anneals the lr (cosine to zero), the loss keeps falling long after the
        cycles; against that final floor a mid-run event looked unfitted. With a constant
        lr (``lr_row`` None), it is :attr:`low`."""
        if lr_row is None:
            return self.low
        lr_on = float(lr_row[row])
        comparable = lr_row[self.rows] >= 0.5 * lr_on
        if not lr_on > 0 or bool(np.all(comparable)) or not bool(np.any(comparable)):
            return self.low
        return self._low_end(self.x[comparable])

    def _low_end(self, x: NDArray[np.float64]) -> float:
        """The low end of a loss range: the 5th percentile of ``x``, at most 4 decades
        below the top (a toy converging to 1e-70 is fitted long before its loss reaches
        the floor)."""
        low = float(np.percentile(x, 5))
        return max(low, self.top - math.log(1e4)) if self.log else low

    def spike(
        self, onset: int, peak: int, before: int, phase: int, stop: int | None = None
    ) -> tuple[float, float, float, float]:
        """``(baseline, maximum, band, ln ratio over the band)`` of the loss around a rise.

        Baseline: median of the loss rows in ``[before, onset]``; band: 90th percentile
        of the loss over ``[phase, onset]``, the second half of the decay phase (its
        fluctuations, and the tail of an earlier burst); maximum: largest smoothed loss in
        ``[onset, peak + (peak - onset) // 2 + 2]`` (trajectory rows), ending at ``stop``
        when given (the row before the next rise). A band of fewer than 5 rows (a short
        decay phase, or a log written a few times per cycle) is too short to measure its
        noise: the spike is then its ratio over the band alone.
        """
        a = self.position(before, "left")
        p = self.position(phase, "left")
        b = self.position(onset, "right")
        last = peak + (peak - onset) // 2 + 2
        if stop is not None:
            last = max(min(last, stop), peak)
        c = self.position(last, "right")
        base, band_rows = self.raw[a:b], self.raw[min(p, a) : b]
        during = self.x[max(b - 1, 0) : c]
        if base.size == 0 or during.size == 0:
            return math.nan, math.nan, math.nan, math.nan
        if band_rows.size <= _SMALL:  # the same numbers from Python floats, ~50x faster
            return self._spike_small(base.tolist(), band_rows.tolist(), during)
        lo, hi = float(np.median(base)), float(np.max(during))
        band = float(np.percentile(band_rows, 90))
        mid = float(np.median(band_rows))
        # noise of the band (second differences: a trend, like a loss decaying over the
        # phase, does not count as noise)
        if band_rows.size < 5:  # too short to measure its noise: the band alone
            return lo, hi, band, hi - band
        spread = _noise_level(band_rows)
        # the spike over the band, and in units of the band's own fluctuations
        return lo, hi, band, min(hi - band, (hi - mid) / max(spread, 1e-12) * self.unit)

    def position(self, row: int, side: str) -> int:
        """``numpy.searchsorted(self.rows, row, side)``; no call when every row has a loss."""
        if not self.dense:
            return int(np.searchsorted(self.rows, row, side))
        pos = row if side == "left" else row + 1
        return min(max(pos, 0), self.rows.size)

    def rows_between(self, first: int, last: int) -> int:
        """How many loss rows lie in ``[first, last]`` (trajectory rows)."""
        return max(self.position(last, "right") - self.position(first, "left"), 0)

    def _spike_small(
        self, base: list[float], band_rows: list[float], during: NDArray[np.float64]
    ) -> tuple[float, float, float, float]:
        """:meth:`spike` of short windows (finite values) in Python floats."""
        lo, hi = (
            _median_list(base),
            max(during.tolist()) if during.size <= _SMALL else float(np.max(during)),
        )
        s = sorted(band_rows)
        band = _percentile90_sorted(s)
        n, k = len(s), len(s) // 2
        mid = s[k] if n % 2 else (s[k - 1] + s[k]) / 2.0
        if n < 5:  # too short to measure its noise: the band alone
            return lo, hi, band, hi - band
        spread = _noise_level_list(band_rows)
        return lo, hi, band, min(hi - band, (hi - mid) / max(spread, 1e-12) * self.unit)

    def value(self, x: float) -> float:
        """The loss at ``x`` (its floor added back)."""
        return math.exp(x) + self.floor if self.log else x


@dataclass
class _Cand:
    onset: int  # position in the signal rows
    peak: int
    fall_start: int


def _last_at_most(xs: list[float], lo: int, hi: int, tol: float) -> int:
    """Last position in ``[lo, hi]`` whose value is ``<= tol`` (``lo`` when none is)."""
    k = hi
    while k > lo and not xs[k] <= tol:
        k -= 1
    return k


def _first_at_least(xs: list[float], lo: int, hi: int, target: float) -> int:
    """First position in ``[lo, hi]`` whose value is ``>= target`` (``lo`` when none is)."""
    for k in range(lo, hi + 1):
        if xs[k] >= target:
            return k
    return lo


def _candidates(
    x: NDArray[np.float64], h: float, noise: float, include_start: bool
) -> tuple[list[_Cand], list[float]]:
    """Up-swings of the zigzag filter with their onset and the decay phase before them.

    Also returns ``x.tolist()`` for measuring them (Python floats index faster than
    numpy scalars; empty when there is no up-swing).
    """
    troughs, peaks, trend, ext = _zigzag(x, h)
    out: list[_Cand] = []
    if not troughs:
        return out, []
    xs: list[float] = x.tolist()
    for tr in troughs:
        j = bisect.bisect_right(peaks, tr)
        if j < len(peaks):
            pk = peaks[j]
        elif trend == 1:
            pk = ext
        else:
            continue
        # Onset: the last row of the trough plateau, within 6 noise levels of the
        # trough value (on a flat, noisy plateau the minimum can be anywhere).
        tol = xs[tr] + min(6.0 * noise, 0.25 * (xs[pk] - xs[tr]))
        onset = _last_at_most(xs, tr, pk, tol)
        if onset == 0 and not include_start:
            continue
        fall_start = peaks[j - 1] if j > 0 else 0
        out.append(_Cand(onset, pk, fall_start))
    return out, xs


def _merge_stages(xs: list[float], cands: list[_Cand], merge_fraction: float) -> list[_Cand]:
    """Join a rise to the one before when the dip between them is shallow.

    A dip smaller than ``merge_fraction`` of the smaller of the two rises is a pause
    inside one multi-stage rise, not a decay phase: the two stages are one event.
    """
    out: list[_Cand] = []
    for c in cands:
        if out:
            prev = out[-1]
            rise = min(xs[prev.peak] - xs[prev.onset], xs[c.peak] - xs[c.onset])
            dip = xs[prev.peak] - min(xs[prev.peak : c.onset + 1])
            if dip < merge_fraction * rise:
                top = c.peak if xs[c.peak] >= xs[prev.peak] else prev.peak
                out[-1] = _Cand(prev.onset, top, prev.fall_start)
                continue
        out.append(c)
    return out


def _half_rise_row(xs: list[float], c: _Cand) -> int:
    """Position of the first row at half the rise."""
    target = xs[c.onset] + 0.5 * (xs[c.peak] - xs[c.onset])
    return _first_at_least(xs, c.onset, c.peak, target)


def _half_rise_time(xs: list[float], clock: NDArray[np.float64], c: _Cand) -> float:
    """Clock time from the onset to the first row at half the rise."""
    k = _half_rise_row(xs, c)
    dt = clock[k] - clock[c.onset]
    if dt <= 0:  # reached within one row
        dt = clock[min(c.onset + 1, len(clock) - 1)] - clock[c.onset]
    return float(dt)


def _fastest_half_time(xs: list[float], clock: NDArray[np.float64], c: _Cand) -> float:
    """Shortest clock time in which the rise gains half its amplitude.

    The smallest ``clock[j] - clock[i]`` over ``onset <= i < j <= peak`` with
    ``xs[j] - xs[i] >= (xs[peak] - xs[onset]) / 2`` (one row's time when that is
    within one row). A destabilization often starts slowly (the norm stalls, or creeps
    up while the oscillation grows) and then jumps; its speed is that of the jump.
    """
    need = 0.5 * (xs[c.peak] - xs[c.onset])
    # stack of positions i whose values increase with i: a later, lower value hides
    # an earlier one, so the last stacked value <= xs[j] - need is the latest such i
    pos: list[int] = []
    vals: list[float] = []
    best = math.inf
    for j in range(c.onset, c.peak + 1):
        v = xs[j]
        k = bisect.bisect_right(vals, v - need) - 1
        if k >= 0:
            best = min(best, float(clock[j] - clock[pos[k]]))
        while vals and vals[-1] >= v:
            vals.pop()
            pos.pop()
        pos.append(j)
        vals.append(v)
    if not best > 0:  # reached within one row
        best = float(clock[min(c.onset + 1, len(clock) - 1)] - clock[c.onset])
    return best


# ------------------------------------------------------------------ find_events
def _threshold_ratios(
    traj: Trajectory,
    rows: NDArray[np.int64],
    elr: NDArray[np.float64] | None,
    hyper: _HyperRows,
    sharpness: float | None,
    cands: list[_Cand],
) -> NDArray[np.float64] | None:
    """Effective LR at each candidate's onset over the threshold ``2 (1 + mu - lr wd) / S``
    (:func:`siflow.theory.stability_threshold_elr`; Nesterov's for a Nesterov log).

    None when ``S``, ``lr``, ``wd`` or the effective LR is unknown; NaN at an onset
    where the lr is 0 (a schedule annealed to 0: no threshold there).
    """
    lr_row, wd_row, mu = hyper.lr, hyper.wd, hyper.mu
    if not cands or not sharpness or elr is None or lr_row is None or wd_row is None or mu is None:
        return None
    on = rows[[c.onset for c in cands]]
    lr_on, wd_on = lr_row[on], wd_row[on]
    mu_on = np.broadcast_to(mu, lr_row.shape)[on]
    known = (lr_on > 0) & np.isfinite(lr_on) & (wd_on >= 0) & np.isfinite(wd_on)
    out = np.full(on.size, np.nan)
    if known.any():
        thr = stability_threshold_elr(
            lr_on[known], wd_on[known], float(sharpness), mu_on[known], nesterov=_nesterov(traj)
        )
        out[known] = elr[on][known] / np.asarray(thr)
    return out


def find_events(
    traj: Trajectory,
    *,
    signal: str = "auto",
    min_rise: float = 0.02,
    min_spike: float = math.log(3.0),
    noise_k: float = 8.0,
    smooth: int | None = None,
    include_start: bool = False,
    lr: ArrayLike | None = None,
    wd: ArrayLike | None = None,
    momentum: ArrayLike | None = None,
    min_jump_fraction: float = 0.0,
    min_peak_fraction: float = 0.0,
    merge_fraction: float = 0.25,
    min_rise_speed: float = 4.0,
    min_loss_spike: float = math.log(2.0),
    fitted_fraction: float = 0.5,
    quiet_rise_factor: float = 5.0,
    loud_spike: float = math.log(1.5),
    loud_rise_speed: float = 8.0,
    spike_noise_k: float = 4.0,
    sharpness: float | None = None,
    min_threshold_fraction: float = 0.1,
    threshold_confirms: float = 0.9,
    loss_floor: float | None = None,
) -> Events:
    """Find destabilizations (norm jumps with their loss spikes) in a trajectory.

    A destabilization (``docs/theory.md``, section "Destabilization events") is the
    start of a jump of the weight norm, together with the loss spike that comes
    with it. The rise may take any time and any number of stages; what makes it an
    event is that it breaks a decay phase: either it starts fast (its first half takes
    a small fraction of the time the log's decay phases take for the same change of
    ``ln rho``) or the loss spikes with it. Every threshold is taken from the log
    itself, and only ratios of durations enter, so the events do not depend on the
    unit of the step column.

    Parameters
    ----------
    traj : Trajectory
        Needs a ``rho`` column (weight norm), or ``elr`` (effective LR; ``ln rho`` is
        ``-ln(elr/lr)/2``), or ``loss``; tried in that order (``signal="auto"``).
        Rows with NaN or non-positive values in the detection column are skipped.
    signal : {"auto", "rho", "elr", "loss"}
        Column to detect on.
    min_rise : float
        Smallest swing of ``ln rho`` that can count (floor of the zigzag threshold
        ``h = max(min_rise, noise_k * noise)``).
    min_spike : float
        The same floor for the loss signal, in ``ln loss``.
    noise_k : float
        Multiple of the log's noise level (robust standard deviation of the second
        differences of the signal) below which swings are noise.
    smooth : int, optional
        Running-median window on the signal (default: none for the norm, the smallest
        window that brings the noise under the floor for the loss).
    include_start : bool
        Count a rise that starts at the first row.
    lr, wd : float or array, optional
        Learning rate and weight decay, one value or one per row. Default: an ``lr`` /
        ``wd`` column of the log (a schedule; a column :func:`siflow.io.read` mapped to
        ``lr``, such as Lightning's ``siflow/lr``, counts), else ``meta``. With both known,
        durations are measured on the free-decay clock
        ``tau_t = sum_s -ln decay_factor(lr_s, wd_s, mu)`` (relative to its median
        rate) instead of steps, so a schedule change is not taken for an event;
        with an ``elr`` signal the per-row ``lr`` converts it to ``ln rho``.
    momentum : float or array, optional
        Heavy-ball momentum for the decay factor, one value or one per row (default:
        the log's ``momentum`` column, written when a scheduler cycles it, else
        ``meta``).
    min_jump_fraction : float
        A rise smaller than this fraction of the log's typical jump (75th percentile of
        the candidate rises) is not an event (0: off; without a loss column this is
        the only size test).
    min_peak_fraction : float
        A rise whose loss peak stays below this fraction of the median loss peak of the
        log's spikes is a secondary burst (the network had not re-converged), not an
        event. 0 turns the test off.
    merge_fraction : float
        A dip smaller than this fraction of the smaller of the rises around it does not
        end the rise: both stages are one event.
    min_rise_speed : float
        A rise without a loss spike counts when its first half is at least this many
        times faster (in ``ln rho`` per clock unit) than the log's median decay speed.
    min_loss_spike : float
        Smallest loss spike, ``ln(max loss during the rise / band)``, that confirms a
        rise (during the rise: up to half its length past its peak, and not past the
        start of the next rise); the band is the 90th percentile of the loss over the
        second half of the decay phase before the rise, so minibatch noise and the tail
        of an earlier burst do not count as a spike.
    fitted_fraction : float
        A rise whose loss before the onset sits above this fraction of the log's loss
        range (on a log scale, from its 5th percentile, or 4 decades below the top if
        that is higher, to its largest 3-row running median) happens before the network
        has fitted, or re-fitted after a burst, the data: not an event. Under a learning
        rate schedule the low end is taken over the rows whose lr is at least half the
        onset's (an annealed lr lets the loss fall far below what the cycles reach). 0
        turns the test off; a loss whose range is under 1.5x says nothing about fitting and
        is not used.
    quiet_rise_factor : float
        When the log has a loss column, a fast rise without a loss spike counts only if
        it is at least this many times the swing threshold ``h`` and the loss cannot
        show its spike: fewer than 3 loss rows up to half the rise (sparse logging), or
        no spike anywhere in the log (an uninformative loss). A destabilization comes
        with its spike.
    loud_spike, loud_rise_speed : float
        A rise of at least ``quiet_rise_factor * h`` whose steepest half (the shortest
        time in which it gains half its amplitude; a destabilization may creep up before
        it jumps) is at least ``loud_rise_speed`` times faster than the log's median
        decay speed also counts
        when its loss peak stands at least ``loud_spike`` (``ln(peak / band)``) over the
        band of the decay phase, even if less than ``min_loss_spike`` or within
        ``spike_noise_k`` noise levels: a noisy minibatch loss hides the spike of a clear
        norm jump in its fluctuations, and a full-batch loss near its floor may rise by
        less than 2x. The norm then carries the evidence: larger and twice as fast as
        a rise needs to be otherwise (the momentum-smoothed wanderings of a noise-held
        norm rise at 2-5 times the decay speed). ``loud_spike = 0`` turns this off.
    spike_noise_k : float
        The loss peak must also stand this many noise levels of ``ln loss`` (robust
        standard deviation from its second differences over the band) above the median
        of that band (minibatch noise); 0 turns this off. A band of fewer than 5 rows has
        no noise level to measure, and the spike over the band decides alone.
    sharpness : float, optional
        Sphere sharpness ``S`` at the landscape's minimum (default
        ``meta["sharpness_min"]``, which simulations record; real logs rarely know it).
    min_threshold_fraction : float
        With ``S``, ``lr`` and ``wd`` known, a rise that starts at an effective LR below
        this fraction of the stability threshold ``2 (1 + mu - lr wd) / S``
        (:func:`siflow.theory.stability_threshold_elr`) is a fluctuation of a noise-held
        norm, not a destabilization (noise-triggered escapes start at 0.6-0.7 of the
        threshold; docs/theory.md, "Destabilization events"). 0 turns the test off.
    threshold_confirms : float
        With ``S`` known, a rise starting at an effective LR of at least this fraction
        of the threshold is a destabilization even when the loss barely moves (the slow,
        mild escapes at small ``lr*wd``, where the loss rises by 10-20 %). 0 turns it off.

    loss_floor : float, optional
        The floor the loss settles above: spikes, bands and the fitted test read the
        excess ``loss - loss_floor``, which a destabilization multiplies. Default: estimated
        from the log (:func:`estimate_loss_floor`; 0 for a loss that spans decades, as a
        cross-entropy that fits the data does). Label smoothing has the smoothed targets'
        entropy as its floor (:func:`siflow.theory.label_smoothing_loss_floor`); 0 turns
        the floor off. A loss signal (``signal="loss"``) is read above it too.

    Returns
    -------
    Events
        Per event: start (``steps``), peak, ``rho`` before and after, effective LR
        before and after, loss before, at the spike and the spike ratio.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(3000)
    >>> rho = np.exp(-1e-3 * (t % 1000))  # norm decays, jumps back every 1000 steps
    >>> find_events(Trajectory(step=t, rho=rho)).steps.tolist()
    [999, 1999]
    """
    traj = _check_traj(traj)
    min_rise = positive_number("min_rise", min_rise)
    min_spike = positive_number("min_spike", min_spike)
    noise_k = positive_number("noise_k", noise_k) if noise_k else 0.0
    if smooth is not None:
        smooth = check_positive_int("smooth", smooth)
    min_jump_fraction = nonnegative_number("min_jump_fraction", min_jump_fraction)
    min_peak_fraction = nonnegative_number("min_peak_fraction", min_peak_fraction)
    top_ref = math.nan
    merge_fraction = nonnegative_number("merge_fraction", merge_fraction)
    min_rise_speed = nonnegative_number("min_rise_speed", min_rise_speed)
    min_loss_spike = nonnegative_number("min_loss_spike", min_loss_spike)
    fitted_fraction = nonnegative_number("fitted_fraction", fitted_fraction)
    quiet_rise_factor = nonnegative_number("quiet_rise_factor", quiet_rise_factor)
    loud_spike = nonnegative_number("loud_spike", loud_spike)
    loud_rise_speed = nonnegative_number("loud_rise_speed", loud_rise_speed)
    spike_noise_k = nonnegative_number("spike_noise_k", spike_noise_k)
    min_threshold_fraction = nonnegative_number("min_threshold_fraction", min_threshold_fraction)
    threshold_confirms = nonnegative_number("threshold_confirms", threshold_confirms)
    if loss_floor is not None:
        loss_floor = nonnegative_number("loss_floor", loss_floor)
    if len(traj) < 3:
        return Events()
    hyper = _schedule(traj, lr, wd, momentum)
    lr_row, rate = hyper.lr, hyper.rate
    clock_all = _decay_clock(traj, rate)
    name, rows, x = _signal(traj, signal, loss_floor)
    if name == "elr" and lr_row is not None:
        x = x + 0.5 * np.log(lr_row[rows])  # ln rho = (ln lr - ln elr)/2
    floor = min_spike if name == "loss" else min_rise
    if smooth is None:
        smooth = _auto_window(x, noise_k, floor) if name == "loss" else 1
    raw_noise = _noise_level(x)
    x = _rolling_median(x, smooth)
    # second differences of a running median underrate its noise (the values are
    # correlated); the median of w samples has about 1.2533/sqrt(w) of the raw noise
    noise = raw_noise if smooth <= 1 else _noise_level(x)  # smooth <= 1: x is unchanged
    if smooth > 1 and x.size >= 4 * smooth:
        noise = max(noise, raw_noise * 1.2533 / math.sqrt(smooth))
    h = max(floor, noise_k * noise)
    clock = clock_all[rows]
    cands, xs = _candidates(x, h, noise, include_start)
    # the candidates are measured one by one: Python ints index faster than numpy's (the
    # rows are 0..n-1 when every row has the signal, the usual case)
    dense = rows.size == 0 or int(rows[-1]) == rows.size - 1
    rows_l = range(rows.size) if dense else rows.tolist()
    if cands and min_jump_fraction > 0:
        amps = np.array([xs[c.peak] - xs[c.onset] for c in cands])
        ref = float(np.percentile(amps, 75))
        cands = [c for c, a in zip(cands, amps, strict=True) if a >= min_jump_fraction * ref]
    cands = _merge_stages(xs, cands, merge_fraction)
    if cands and name != "loss" and rate is not None:
        cands = _beyond_schedule(traj, cands, xs, rows_l, hyper, h)
    s_min = traj.meta.get("sharpness_min") if sharpness is None else sharpness
    elr = _elr_column(traj, lr_row)
    ratios = _threshold_ratios(traj, rows, elr, hyper, s_min, cands)
    if ratios is not None and min_threshold_fraction > 0:
        keep = ~(ratios < min_threshold_fraction)
        cands = [c for c, k in zip(cands, keep, strict=True) if k]
        ratios = ratios[keep]
    at_threshold = (
        {id(c): r >= threshold_confirms for c, r in zip(cands, ratios, strict=True)}
        if ratios is not None and threshold_confirms > 0
        else {}
    )
    loss = _Loss(traj, noise_k, loss_floor) if name != "loss" else None
    # the fitted test compares rows at a comparable lr only when the lr varies
    lr_varies = lr_row if lr_row is not None and np.ptp(lr_row) > 0 else None
    # the log's decay speed: median over the decay phases before the candidates
    speeds = []
    for c in cands:
        dt = clock[c.onset] - clock[c.fall_start]
        if dt > 0 and xs[c.fall_start] > xs[c.onset]:
            speeds.append((xs[c.fall_start] - xs[c.onset]) / dt)
    v_fall = float(np.median(speeds)) if speeds else math.nan
    spike_h = min_loss_spike
    if loss is not None and loss.ok:
        # (hi - mid)/spread >= spike_noise_k  <=>  (hi - mid)/spread * unit >= spike_h
        loss.unit = spike_h / spike_noise_k if spike_noise_k > 0 else math.inf
    measured: list[tuple[_Cand, float, float, float, bool, bool]] = []
    for n, c in enumerate(cands):
        on_row, pk_row = rows_l[c.onset], rows_l[c.peak]
        # the loss window of a rise ends before the next rise starts
        stop_row = rows_l[cands[n + 1].onset] - 1 if n + 1 < len(cands) else None
        fall_rows = max(c.onset - c.fall_start, 4)
        before_row = rows_l[max(c.onset - max(fall_rows // 4, 3), 0)]
        phase_row = rows_l[min(c.fall_start + fall_rows // 2, c.onset)]
        base = top = band = spike = math.nan
        if loss is not None and loss.ok:
            base, top, band, spike = loss.spike(on_row, pk_row, before_row, phase_row, stop_row)
        spiked = (math.isfinite(spike) and spike >= spike_h) or at_threshold.get(id(c), False)
        if name == "loss":
            fast = True
        else:
            amp = xs[c.peak] - xs[c.onset]
            fast = (
                not math.isfinite(v_fall)
                or min_rise_speed == 0
                or c.peak - c.onset <= 2  # not resolved by the logging
                or 0.5 * amp / _half_rise_time(xs, clock, c) >= min_rise_speed * v_fall
            )
        # a large rise whose loss does rise over its band, very fast where it is steepest
        # (a destabilization may creep up, or stall, before it jumps)
        loud = (
            name != "loss"
            and not spiked
            and loss is not None
            and loss.ok
            and loud_spike > 0
            and top - band >= loud_spike
            and xs[c.peak] - xs[c.onset] >= quiet_rise_factor * h
            and 0.5 * (xs[c.peak] - xs[c.onset]) / _fastest_half_time(xs, clock, c)
            >= loud_rise_speed * v_fall
        )
        quiet = fast and not spiked and loss is not None and loss.ok and name != "loss"
        if quiet:
            # a loss is logged but did not spike: only a large jump counts, and only when
            # the loss rows are too sparse to resolve the rise or the log's loss never
            # spikes at all (checked below)
            half = rows_l[_half_rise_row(xs, c)]
            seen = loss.rows_between(on_row, half)
            fast = xs[c.peak] - xs[c.onset] >= quiet_rise_factor * h
            quiet = seen >= 3 and not loud
        elif loud:
            fast = True  # slow at first, then a loud jump
        if fast or spiked:
            measured.append((c, base, top, spike, spiked, quiet))
    # secondary bursts: a loss peak far below the log's typical spike
    tops = [m[2] for m in measured if m[4]]
    top_ref = float(np.median(tops)) if tops else math.nan
    kept: list[tuple[_Cand, float, float, float]] = []
    any_spike = any(m[4] for m in measured)
    for c, base, top, spike, _spiked, quiet in measured:
        if quiet and any_spike:
            continue  # the loss resolves this rise and shows spikes elsewhere, not here
        if (
            min_peak_fraction > 0
            and loss is not None
            and loss.ok
            and math.isfinite(top_ref)
            and math.isfinite(top)
        ):
            low = (
                top < top_ref + math.log(min_peak_fraction)
                if loss.log
                else top < min_peak_fraction * top_ref
            )
            if low:
                continue
        if (
            fitted_fraction > 0
            and loss is not None
            and loss.ok
            and loss.informative  # a flat loss (range under 1.5x) says nothing about fitting
            and math.isfinite(base)
        ):
            low = loss.low_at_lr(lr_varies, rows_l[c.onset])
            if base > low + fitted_fraction * (loss.top - low):
                continue
        kept.append((c, base, top, spike))

    return _events_from(traj, rows, kept, lr_row, rate, loss, name, h)


#: Rows per cycle the detector needs to find the events reliably: on the labelled logs
#: thinned to every k-th row it found 99.4 % of them at 40 or more rows per cycle, 94.7 %
#: at 20-40, 89.6 % at 10-20 and 30.7 % under 10 (docs/theory.md, "How often a log must
#: be written"; ``python analysis/labelled_runs.py sparse``).
ROWS_PER_CYCLE = 20


def resolution_note(traj: Trajectory, period: float) -> str | None:
    """A note when the log resolves a cycle of ``period`` steps in fewer than
    :data:`ROWS_PER_CYCLE` rows, saying how often to record instead; None otherwise.

    The rows are those with a norm (or, in a log without one, a loss); their spacing is
    the median step between them. The detector misses the events it cannot resolve, so
    a period measured from its events on such a log may be too long: pass the shortest
    estimate at hand (the decay law's, for one).

    Parameters
    ----------
    traj : Trajectory
        The log.
    period : float
        A period estimate in the log's time unit (steps, or epochs).
    """
    if not (math.isfinite(period) and period > 0):
        return None
    col = _finite_col(traj, "rho")
    if col is None:
        col = _finite_col(traj, "loss")
    if col is None:
        return None
    steps = np.asarray(traj.step, dtype=np.float64)[np.isfinite(col)]
    if steps.size < 3:
        return None
    gap = float(np.median(np.diff(steps)))
    if not gap > 0 or period / gap >= ROWS_PER_CYCLE:
        return None
    epochs = traj.meta.get("time_unit") == "epoch"
    unit = "epochs" if epochs else "steps"
    every = math.floor(period / ROWS_PER_CYCLE)
    if every >= 1:
        advice = f"record every {every} {unit} or more often"
    elif epochs:
        advice = "record several times per epoch"
    else:
        return None  # a row at every step already: the cycles are that short
    return (
        f"the log has a row every {gap:g} {unit} and a cycle takes about {period:.3g}: "
        f"{period / gap:.3g} rows per cycle, where the detector needs about "
        f"{ROWS_PER_CYCLE} to find the destabilizations (it misses those it cannot "
        f"resolve; docs/theory.md, 'How often a log must be written'); {advice}"
    )


@dataclass(frozen=True)
class PhaseLock:
    """Destabilizations that start at one phase of a fixed cycle of steps (:func:`phase_lock`).

    Attributes
    ----------
    period : int
        The cycle in steps (a multiple of the log's row spacing).
    phase : int
        ``step mod period`` of the onsets that share it.
    count, n : int
        Events at that phase, and events in all.
    p_value : float
        Chance of so many events at one phase of any cycle tried, were the onsets at
        random rows (binomial tail, times the phases and cycles tried).
    kick, typical : float
        Mean change of ``ln rho`` over the step after the phase (the row at ``phase`` to
        the next), and the median change of ``ln rho`` from row to row; NaN when the log
        has no norm.
    """

    period: int
    phase: int
    count: int
    n: int
    p_value: float
    kick: float
    typical: float


#: Fewest events, and the largest chance probability, for :func:`phase_lock` to speak.
PHASE_LOCK_MIN_EVENTS = 6
PHASE_LOCK_ALPHA = 1e-3


def phase_lock(traj: Trajectory, events: Events) -> PhaseLock | None:
    """The cycle of steps whose one phase holds most destabilization onsets, if any.

    Something that happens every ``P`` steps (the smaller last batch of each epoch that
    a data loader without ``drop_last`` yields, and BatchNorm over its few samples)
    kicks the norm and sets off destabilizations at that step of the cycle; genuine
    escapes fall at any phase. For each cycle ``P = m g`` (``g`` the log's row spacing,
    ``m`` from 2 to the median period over ``g``) the onsets' most common phase holds
    ``c`` of the ``n`` events; under onsets at random rows ``c`` is binomial with
    probability ``1/m`` per phase. The most significant cycle is returned when at least
    half of the events, and :data:`PHASE_LOCK_MIN_EVENTS`, share its phase, the chance of
    so many, times the phases and cycles tried, is under :data:`PHASE_LOCK_ALPHA`, and
    the events at that phase lie different numbers of cycles apart: events all exactly
    one cycle apart (an exactly periodic simulation) lock to their own period, which says
    nothing of an outside clock. None otherwise, and for a log whose rows are not evenly
    spaced in steps (a phase needs a regular clock).

    Parameters
    ----------
    traj : Trajectory
        The log the events were found in.
    events : Events
        Its events (:func:`find_events`).
    """
    from scipy.stats import binom

    n = len(events)
    if n < PHASE_LOCK_MIN_EVENTS:
        return None
    step = np.asarray(traj.step, dtype=np.int64)
    col = _finite_col(traj, "rho")
    if col is not None:  # the rows the events lie on (a loss may be logged at other steps)
        step = step[np.isfinite(col)]
    gaps = np.diff(step)
    if gaps.size == 0 or not np.all(gaps == gaps[0]) or gaps[0] <= 0:
        return None
    g = int(gaps[0])
    rel = (np.asarray(events.steps, dtype=np.int64) - int(step[0])) // g  # row numbers
    m_max = int(np.median(np.diff(rel)))
    tried = max(m_max - 1, 1)
    best: tuple[float, int, int, int] | None = None
    for m in range(2, m_max + 1):
        counts = np.bincount(rel % m, minlength=m)
        r = int(np.argmax(counts))
        c = int(counts[r])
        if c < max(PHASE_LOCK_MIN_EVENTS, math.ceil(n / 2)):
            continue
        if np.unique(np.diff(rel[rel % m == r]) // m).size < 2:
            continue  # all one cycle apart: the events' own period, not a clock's
        p = float(binom.sf(c - 1, n, 1.0 / m)) * m * tried
        if best is None or p < best[0]:
            best = (p, m, r, c)
    if best is None or not best[0] < PHASE_LOCK_ALPHA:
        return None
    p, m, r, c = best
    kick = typical = math.nan
    if col is not None:
        rho = col[np.isfinite(col)]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.diff(np.log(np.where(rho > 0, rho, np.nan)))
        at = np.arange(d.size)
        sel = d[(at % m == r) & np.isfinite(d)]
        kick = float(np.mean(sel)) if sel.size else math.nan
        typical = float(np.nanmedian(d)) if np.any(np.isfinite(d)) else math.nan
    phase = (int(step[0]) + r * g) % (m * g)
    return PhaseLock(m * g, phase, c, n, min(p, 1.0), kick, typical)


def phase_lock_note(traj: Trajectory, events: Events) -> str | None:
    """A note when the destabilizations are locked to one phase of a cycle of steps
    (:func:`phase_lock`); None otherwise."""
    lock = phase_lock(traj, events)
    if lock is None:
        return None
    kick = ""
    if math.isfinite(lock.kick) and math.isfinite(lock.typical):
        kick = (
            f"; ln rho changes by {lock.kick:+.3g} from the rows at that phase to the next, "
            f"against {lock.typical:+.3g} from a median row to the next"
        )
    return (
        f"{lock.count} of {lock.n} destabilizations start at step {lock.phase} of a "
        f"{lock.period}-step cycle (chance {lock.p_value:.1g}){kick}: something every "
        f"{lock.period} steps sets them off, such as the smaller last batch of each epoch "
        f"(a data loader without drop_last; BatchNorm over its few samples kicks the "
        f"norm), and the periods are multiples of it, not the decay law's"
    )


def match_tolerance(truth: ArrayLike, step: ArrayLike) -> float:
    """Steps within which a found event matches a labelled one: 5 % of the median labelled
    period, at least 3 and at most 20 logging intervals (the median step gap of the log).

    Parameters
    ----------
    truth : array_like
        Labelled event steps.
    step : array_like
        The log's step column.
    """
    steps = as_float_array("step", step)
    labels = as_float_array("truth", truth)
    gap = float(np.median(np.diff(steps))) if steps.size > 1 else 1.0
    per = float(np.median(np.diff(labels))) if labels.size > 1 else math.inf
    return max(3.0 * gap, min(0.05 * per, 20.0 * gap))


def match_events(found: ArrayLike, truth: ArrayLike, tol: float) -> tuple[int, int, int]:
    """Score found events against labelled ones: ``(true positives, false positives,
    misses)``.

    Greedy one-to-one matching in the order of ``found``: each found step takes the
    nearest unused labelled step within ``tol`` steps (:func:`match_tolerance`).
    Recall is ``tp / (tp + misses)``, precision ``tp / (tp + false positives)``.
    """
    tol = nonnegative_number("tol", tol)
    labels = as_float_array("truth", truth).tolist()
    used: set[int] = set()
    tp = 0
    found_l = as_float_array("found", found).tolist()
    for f in found_l:
        best = None
        for j, t in enumerate(labels):
            if (
                j not in used
                and abs(f - t) <= tol
                and (best is None or abs(f - t) < abs(f - labels[best]))
            ):
                best = j
        if best is not None:
            used.add(best)
            tp += 1
    return tp, len(found_l) - tp, len(labels) - tp


def score_detector(
    trajs: dict[str, Trajectory],
    labels: dict[str, ArrayLike],
    ambiguous: dict[str, ArrayLike] | None = None,
    **detector: Any,
) -> dict[str, Any]:
    """Recall and precision of :func:`find_events` on labelled runs.

    Each run's found events are matched to its labels (:func:`match_events` within
    :func:`match_tolerance`); a found event within the tolerance of an ``ambiguous``
    label is neither a hit nor a false event. Runs without a trajectory are skipped.

    Parameters
    ----------
    trajs : dict of str to Trajectory
        The runs' logs.
    labels : dict of str to array_like
        Labelled event steps per run.
    ambiguous : dict of str to array_like, optional
        Doubtful event steps per run, not scored.
    **detector
        Keyword arguments of :func:`find_events`.

    Returns
    -------
    dict
        ``runs`` (per run: ``run``, ``labelled``, ``found``, ``tp``, ``fp``, ``fn``),
        the totals ``tp``, ``fp``, ``fn``, and ``recall`` and ``precision`` (NaN when
        undefined).
    """
    ambiguous = ambiguous or {}
    rows = []
    tp = fp = fn = 0
    for name, truth in labels.items():
        if name not in trajs:
            continue
        traj = trajs[name]
        tol = match_tolerance(truth, traj.step)
        unsure = as_float_array("ambiguous", ambiguous.get(name, [])).tolist()
        found = [
            f
            for f in find_events(traj, **detector).steps.tolist()
            if not any(abs(f - u) <= tol for u in unsure)
        ]
        a, b, c = match_events(found, truth, tol)
        tp, fp, fn = tp + a, fp + b, fn + c
        rows.append({"run": name, "labelled": truth, "found": found, "tp": a, "fp": b, "fn": c})
    return {
        "runs": rows,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
    }


def _beyond_schedule(
    traj: Trajectory,
    cands: list[_Cand],
    xs: list[float],
    rows_l: range | list[int],
    hyper: _HyperRows,
    h: float,
) -> list[_Cand]:
    """The candidates whose rise exceeds what the lr schedule explains by a swing ``h``.

    A rise of the norm driven by a rising lr (the quasi-static equilibrium ``rho*(t)``
    moving up, and the norm relaxing towards it, with the gradient unchanged) is not a
    destabilization: that needs the gradient to grow. The part of a rise that the
    schedule explains (:func:`_schedule_explained_rise`) is taken off, and what is left
    must still be a swing of the zigzag filter. Only ratios of lr values enter, so the
    test does not depend on the time unit; under a constant or falling lr it keeps
    every candidate. Needs the free decay rate (``lr wd > 0`` on every row).
    """
    if hyper.rate is None or hyper.lr is None or hyper.wd is None or hyper.mu is None:
        return cands
    log_eq = _log_equilibrium_norm(traj, hyper.lr, hyper.wd, hyper.mu)
    if np.all(log_eq == log_eq[0]):
        return cands
    out = []
    for c in cands:
        explained = _schedule_explained_rise(log_eq, rows_l[c.onset], rows_l[c.peak])
        if explained > 0 and xs[c.peak] - xs[c.onset] - explained < h:
            continue
        out.append(c)
    return out


def _spike_factor(loss: _Loss | None, base: float, top: float) -> float:
    """``loss peak / loss before`` from their measured values (NaN when unknown)."""
    if not math.isfinite(top - base):
        return math.nan
    if loss is None or not loss.ok or loss.floor == 0:
        return math.exp(top - base)
    return loss.value(top) / loss.value(base)


def _events_from(
    traj: Trajectory,
    rows: NDArray[np.int64],
    kept: list[tuple[_Cand, float, float, float]],
    lr_row: NDArray[np.float64] | None,
    rate: NDArray[np.float64] | None,
    loss: _Loss | None,
    name: str,
    h: float,
) -> Events:
    """The :class:`Events` of the kept candidates ``(candidate, base, top, spike)``."""
    idx = rows[np.asarray([k[0].onset for k in kept], dtype=np.int64)] if kept else _empty_i()
    pidx = rows[np.asarray([k[0].peak for k in kept], dtype=np.int64)] if kept else _empty_i()
    steps = traj.step[idx].astype(np.int64)
    nan = np.full(idx.size, np.nan)
    rho = traj.rho
    elr = _elr_column(traj, lr_row)
    lossval = (lambda v: loss.value(v)) if loss is not None and loss.ok else (lambda v: math.nan)
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
        loss_before=np.array([lossval(k[1]) if math.isfinite(k[1]) else math.nan for k in kept]),
        loss_peak=np.array([lossval(k[2]) if math.isfinite(k[2]) else math.nan for k in kept]),
        loss_spike=np.array([_spike_factor(loss, k[1], k[2]) for k in kept]),
        decay_before=_free_decay_before(traj, idx, rate),
        signal=name,
        threshold=float(h),
    )


def _free_decay_before(
    traj: Trajectory, idx: NDArray[np.int64], rate: NDArray[np.float64] | None
) -> NDArray[np.float64]:
    """``ln prod (1 - lr_t wd_t)`` (free decay of ``ln rho``) from each event to the next.

    Sums the per-step rate over the steps between consecutive event rows (row ``i``'s
    rate holds until row ``i + 1``); NaN when ``lr``/``wd`` are unknown.
    """
    if rate is None or idx.size < 2:
        return np.full(max(idx.size - 1, 0), np.nan)
    s = traj.step.astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(rate[:-1] * np.diff(s))])
    return -(cum[idx[1:]] - cum[idx[:-1]])


# ---------------------------------------------------------------- decay rate
def _log_rho(traj: Trajectory) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rows and ``ln rho`` (up to a constant when only ``elr`` is logged)."""
    usable = {}
    for name in ("rho", "elr"):
        if not traj.has(name):
            continue
        col = traj.column(name)
        rows = np.flatnonzero(np.isfinite(col) & (col > 0))
        usable[name] = rows.size
        if rows.size >= 2:
            x = np.log(col[rows])
            return rows.astype(np.int64), (-0.5 * x if name == "elr" else x)
    if usable:
        counts = ", ".join(f"{n} {k}" for n, k in usable.items())
        raise ValueError(
            f"measuring the norm decay needs at least 2 rows with a finite positive "
            f"{' or '.join(usable)}; this log has {counts}: log more steps, or check the column"
        )
    raise ValueError(
        "measuring the norm decay needs a weight-norm column (rho) or an effective-LR "
        f"column (elr); present: {', '.join(traj.columns())}; map one when reading the "
        "log, e.g. mapping={'rho': COLUMN}"
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


def sharpness_before_events(
    traj: Trajectory, events: Events, fraction: float = 0.1
) -> NDArray[np.float64]:
    """The sphere sharpness each event destabilized in, from a logged ``sharpness_sphere``.

    For each event, the median of the finite sharpness values over the last ``fraction``
    of the decay phase before it: the rows from ``fraction`` of the way back from the
    event row to the previous event's peak (the first row for the first event), the
    event row left out. Without a measurement there, the last finite value before the
    event row. NaN where there is none.

    The event row is left out because the burst has begun there: the loss has jumped and
    the sharpness measured at that row is the burst's. On the digits ConvNet of
    ``analysis/nesterov_runs.py`` (heavy ball) it is 150-8000 times the value this
    returns at the four event rows that fall on a measurement. Times ``elr_before`` this
    gives the ``elr S`` at which each event left the stable region, to compare with
    :func:`siflow.theory.stability_threshold_elr`.

    Parameters
    ----------
    traj : Trajectory
        The log, with a ``sharpness_sphere`` column (often measured every k rows).
    events : Events
        Its events (:func:`find_events`).
    fraction : float
        Part of each decay phase, in (0, 1], whose measurements are taken.

    Returns
    -------
    ndarray
        One sharpness per event.
    """
    traj = _check_traj(traj)
    if not isinstance(events, Events):
        raise ValueError(
            f"events must be the Events of find_events(traj), got {type(events).__name__}"
        )
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    if len(events) and int(np.max(events.index)) >= len(traj):
        raise ValueError(
            f"events reach row {int(np.max(events.index))} of a log of {len(traj)} rows: "
            f"pass the events found in this log"
        )
    col = traj.sharpness_sphere
    out = np.full(len(events), np.nan)
    if col is None:
        return out
    finite = np.flatnonzero(np.isfinite(col))
    for k, row in enumerate(np.asarray(events.index, dtype=np.int64)):
        start = int(events.peak_index[k - 1]) if k else 0
        lo = max(start, int(math.ceil(row - fraction * (row - start))))
        window = col[lo:row]
        window = window[np.isfinite(window)]
        if window.size:
            out[k] = float(np.median(window))
        else:
            before = int(np.searchsorted(finite, row, side="left")) - 1
            if before >= 0:
                out[k] = float(col[finite[before]])
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


def _converged_under_schedule(
    traj: Trajectory, rows: NDArray[np.int64], x: NDArray[np.float64]
) -> bool | None:
    """Whether the norm decays freely under a varying lr (None: no varying per-row lr).

    Over the second half of the rows the norm is fitted by the first-order relaxation
    towards the schedule's quasi-static equilibrium at a constant gradient
    (``docs/theory.md`` section 1): with ``v = rho^p`` (``p = 4`` for SGD and heavy ball,
    2 for AdamW and Lion, :func:`_log_equilibrium_norm`),
    ``v_{t+1} = f_t v_t + (1 - f_t) K phi_t``, ``f_t = exp(-p delta_t)`` per step
    (``delta_t`` the free decay rate of ``ln rho``) and ``phi_t = rho*_t^p`` up to the
    constant ``K`` (the squared gradient). Its solution from the first row is
    ``v_t = a A_t + K B_t``; ``a`` and ``K >= 0`` are fitted by least squares on
    ``v_t / v_fit - 1``. The end of the window is ``v = A v_0 + (1 - A) K phi_bar``, with
    ``phi_bar = B / (1 - A)`` the equilibrium averaged with the weights the relaxation
    gives each step; the run has converged when that equilibrium holds less than half of
    the final ``v`` (``K phi_bar < v / 2``: the gradient push no longer balances the decay).
    At a constant lr this is the rule of :func:`classify` (decay at least half the free
    rate, ``d ln rho / dt = -delta (1 - v*/v)``); under a schedule a norm that follows a
    falling (or rising) ``rho*(t)`` is an equilibrium, not a convergence.
    """
    if traj.logged("lr") is None:
        return None
    lr_row, wd_row, mu, rate = _schedule(traj, None, None, None)
    if lr_row is None or wd_row is None or mu is None or rate is None:
        return None
    log_eq = _log_equilibrium_norm(traj, lr_row, wd_row, mu)
    if np.all(log_eq == log_eq[0]):
        return None
    if not (traj.has("rho") and _usable_rows(traj.column("rho"), True) >= 2):
        x = x + 0.5 * np.log(lr_row[rows])  # x came from elr: ln rho - ln(lr)/2
    win = rows[rows >= rows[rows.size // 2]]
    if win.size < 3:
        return None
    first, last = int(win[0]), int(win[-1])
    adaptive = _optimizer_name(traj) in _DECOUPLED
    power = 2.0 if adaptive else 4.0
    steps = np.diff(traj.step[first : last + 1].astype(np.float64))
    f = np.exp(-power * rate[first:last] * steps)
    phi = np.exp(power * (log_eq[first:last] - log_eq[first]))
    a_all = np.concatenate([[1.0], np.cumprod(f)])
    b_all = np.zeros(a_all.size)
    for k in range(f.size):
        b_all[k + 1] = f[k] * b_all[k] + (1.0 - f[k]) * phi[k]
    v = np.exp(power * (x[rows >= first] - x[rows == first][0]))
    a_w, b_w = a_all[win - first], b_all[win - first]
    if 1.0 - a_w[-1] <= 0.0:
        return None
    design = np.column_stack([a_w / v, b_w / v])
    (amp, k_hat), *_ = np.linalg.lstsq(design, np.ones(v.size), rcond=None)
    if not (math.isfinite(amp) and math.isfinite(k_hat)):
        return None
    if k_hat <= 0.0:
        return True
    held = k_hat * b_w[-1] / (1.0 - a_w[-1])
    return bool(held < 0.5 * (amp * a_w[-1] + k_hat * b_w[-1]))


def _free_rate(traj: Trajectory, lr: float, wd: float) -> float:
    """Zero-gradient decay rate of the log's optimizer (momentum only for the SGD family:
    AdamW's and Lion's decoupled decay is ``1 - lr wd`` per step whatever their betas)."""
    mu = 0.0 if _optimizer_name(traj) in _DECOUPLED else traj.momentum
    return float(decay_rate(lr, wd, mu, nesterov=_nesterov(traj)))


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
      least at half the zero-gradient rate :func:`siflow.theory.decay_rate` (when lr
      and wd are known: ``-ln(1 - lr*wd)`` without momentum, heavy ball's or
      Nesterov's with the log's momentum, the decoupled decay for AdamW and Lion), or
      by more than 10% over that half (when they are not); with only a loss column,
      the median loss of the last tenth is 10x below that of the middle of the run.
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
        scheduled = _converged_under_schedule(traj, rows, x)
        if scheduled is not None:
            return "converged" if scheduled else "equilibrium"
        second = rows >= rows[rows.size // 2]
        s = traj.step[rows[second]].astype(np.float64)
        xs = x[second]
        if s.size >= 2:
            rate = -_slope(s, xs)
            lr, wd = traj.lr, traj.wd
            if lr is not None and wd is not None and float(lr) * float(wd) < 1:
                free = _free_rate(traj, float(lr), float(wd))
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
