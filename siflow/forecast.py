"""Forecast of the next destabilization from a training log so far.

Between destabilizations the weight norm of a scale-invariant network decays by the
free-decay factor per step, ``ln rho_{t+1} - ln rho_t = ln decay_factor(lr_t, wd_t, mu)``
(``docs/theory.md`` sections 1, 3 and "Destabilization events"; heavy ball's factor with
momentum, PyTorch Nesterov's for a Nesterov run), so the effective LR
``lr/rho^2`` grows until the network destabilizes. The forecast extrapolates this decay
from the last logged norm to the level at which the earlier cycles of the same log
destabilized:

1. the events so far (:func:`siflow.periods.find_events`), at least one;
2. the threshold variable ``y = ln elr`` and its values ``y_k`` at the earlier events
   (``elr = lr/rho^2``). Destabilization happens at ``elr * S ~ 2(1 + mu - lr wd)``
   (:func:`siflow.theory.stability_threshold_elr`; Nesterov's is lower), and the sphere
   sharpness ``S`` moves
   within a cycle, so ``y`` includes it where the log allows (``threshold=``):

   - ``"sharpness"``: a logged ``sharpness_sphere`` column, ``y = ln(elr S)``, with the
     last ``S`` measured at or before each event row (inside the burst; with ``S`` from
     before the burst, :func:`siflow.periods.sharpness_before_events`, and ``S`` held at
     its current value, the forecasts of the labelled runs that log ``S`` come early,
     because ``S`` keeps falling after the cut, and score no better);
   - ``"loss"``: the loss as a proxy of the sharpness. For cross-entropy near a fitted
     minimum the Hessian is weighted by ``sigma'(margin) ~ loss``, so ``S ~ L^beta``
     (``beta = 1`` in the separable limit; 0.28-0.85 measured within the decay phases
     of the labelled real runs that log ``S``): ``y = ln elr + beta ln L``, with
     ``beta`` the least-squares slope of ``-ln elr_k`` on ``ln L_k`` over the earlier
     events (the last logged loss before each event), clipped to [0, 1]; ``beta = 1`` with
     fewer than three events or no spread of ``L_k``;
   - ``"elr"``: the effective LR alone.

   The threshold of the current cycle is ``y* = median(y_k)`` (``history="ar1"``: the
   first-order autoregression of the ``y_k``, :func:`next_in_sequence`);
3. the approach of ``y`` to ``y*``: for ``"elr"`` and ``"sharpness"``, the decay
   speed of ``ln rho`` in the current phase (the least-squares slope over the decay
   phase so far, after the peak), falling back to the free decay
   ``-ln decay_factor(lr, wd, mu)`` when the phase is too short to fit or its slope is
   outside 0.5-1.5 times the free decay (a post-burst plateau), with the current
   ``S`` held; for ``"loss"``, the least-squares line of ``y`` over the last
   ``fit_fraction`` of the phase (``y`` first falls while the loss drops faster than
   the effective LR grows; while its slope is not positive the threshold gives no
   estimate);
4. ``threshold estimate = step_now + (y* - y_now)/(dy/dt)`` and its interval from the
   lowest and highest earlier ``y_k``.

The periods seen so far give a second estimate, ``last event + median period``, and a
second interval, ``last event +`` their shortest to longest (half to twice the one period
when there is one). The forecast is
``blend * threshold estimate + (1 - blend) * period estimate`` (both estimates scatter
alike on real runs, by the irregularity of their cycles; their mean scatters less), the
interval spans both. The period estimate alone is used when the current phase is still
rising (a jump in progress), when the threshold gives no estimate, and when the norm is
already below the usual threshold without having destabilized (this cycle's threshold is
higher); when that estimate has passed too, the event is due at the next step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siflow._fileio import json_ready
from siflow._validate import check_lr_wd, check_positive, check_positive_int, momentum_number
from siflow.periods import (
    Events,
    _check_momentum_column,
    _nesterov,
    _optimizer_name,
    find_events,
    phase_lock_note,
    resolution_note,
)
from siflow.theory import check_optimizer, decay_rate, log_effective_lr
from siflow.trajectory import Trajectory

__all__ = [
    "Forecast",
    "forecast_next_event",
    "loss_exponent",
    "next_in_sequence",
    "lag1_autocorrelation",
    "RecorderForecast",
]


@dataclass(frozen=True)
class Forecast:
    """The predicted step of the next destabilization.

    Attributes
    ----------
    next_event_step : float
        Predicted step of the next destabilization (NaN when no forecast is possible).
    next_event_interval : tuple of float
        ``(earliest, latest)``: the same extrapolation to the lowest and highest
        thresholds of the earlier cycles (and the range of their periods). With a
        single earlier threshold (one event so far) there is no spread to take:
        the estimate plus and minus ``ln 2 / (2 r)`` steps, ``r`` the free-decay rate
        ``-ln decay_factor(lr, wd, mu)`` per step, the steps in which the free decay
        moves the effective LR by a factor 2 (``details["interval"]`` says so). With
        a single earlier period (two events so far) the periods' range is half to
        twice that period after the last event (``details["period_interval"]``).
        Both are moved to after the last logged step; when the latest bound has passed too
        (the cycle is already longer than every estimate), there is no upper bound:
        ``inf`` (``None`` in :meth:`to_dict`), and ``details["overdue"]`` says so.
    last_step : int
        Last logged step (the forecast is made from there).
    method : str
        ``"threshold"`` (decay to the earlier thresholds), ``"period"`` (median period
        after the last event) or ``"none"``.
    n_events : int
        Destabilizations seen so far.
    details : dict
        Threshold, decay speed, norm at the last row; ``period_estimate``, the period the
        history gives for the coming cycle (steps from the last event);
        ``schedule_note`` when the free decay per step now differs by more than a
        quarter from its mean over the earlier cycles (their periods are in their steps);
        ``resolution_note`` when the log resolves the median period in fewer rows than
        the detector needs (:func:`siflow.periods.resolution_note`); ``phase_lock_note``
        when the events so far start at one phase of a fixed cycle of steps, set off by
        something periodic such as an epoch's smaller last batch
        (:func:`siflow.periods.phase_lock_note`).
    """

    next_event_step: float
    next_event_interval: tuple[float, float]
    last_step: int
    method: str
    n_events: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN and infinities become ``None``: :func:`json_ready`)."""
        return json_ready(
            {
                "next_event_step": float(self.next_event_step),
                "next_event_interval": list(self.next_event_interval),
                "last_step": int(self.last_step),
                "method": self.method,
                "n_events": int(self.n_events),
                "details": self.details,
            }
        )


def _none(traj: Trajectory, n: int, why: str) -> Forecast:
    last = int(traj.step[-1]) if len(traj) else 0
    return Forecast(math.nan, (math.nan, math.nan), last, "none", n, {"note": why})


def _hyper_rows(traj: Trajectory, name: str, value: float | None) -> NDArray[np.float64]:
    """Per-row ``lr`` or ``wd``: the log's column for it
    (:meth:`~siflow.trajectory.Trajectory.logged`) where finite, else ``value`` (NaN
    when it is None)."""
    fill = math.nan if value is None else float(value)
    logged = traj.logged(name)
    if logged is not None:
        col = np.asarray(logged, dtype=np.float64)
        return np.where(np.isfinite(col), col, fill)
    return np.full(len(traj), fill)


#: The SGD family: the optimizers with a zero-gradient decay law (siflow.theory.decay_rate).
_SGD_FAMILY = ("sgd", "sgdm", "nesterov")

#: ``details["optimizer_note"]`` of a forecast whose log names no optimizer.
ASSUMED_SGD_NOTE = (
    "the log does not name its optimizer: SGD (heavy ball with the log's momentum) is "
    "assumed; pass optimizer= (nesterov, ...) if another ran"
)


def _resolve_optimizer(traj: Trajectory, optimizer: str | None) -> tuple[str, bool]:
    """``(name, assumed)``: ``optimizer`` checked, else the log's ``meta["optimizer"]``,
    else ``"sgd"`` (``assumed`` True); a ValueError for an optimizer without the SGD
    decay law (AdamW, Lion, ...)."""
    if optimizer is None:
        named = _optimizer_name(traj)
        if _nesterov(traj):
            return "nesterov", False
        if named and named not in _SGD_FAMILY:
            raise ValueError(
                f"the log's metadata names optimizer {named!r}: the forecast has only the "
                f"SGD decay laws (SGD, heavy ball, Nesterov); AdamW, Lion and other "
                f"optimizers are not supported; pass optimizer=sgd only if the run really "
                f"used SGD"
            )
        return named or "sgd", not named
    opt = check_optimizer(optimizer)
    if opt not in _SGD_FAMILY:
        raise ValueError(
            f"optimizer={optimizer!r}: the forecast uses the SGD decay laws (heavy-ball or "
            f"Nesterov momentum allowed); AdamW and Lion are not supported: use it on SGD, "
            f"heavy-ball or Nesterov runs (optimizer='sgd' or 'nesterov')"
        )
    return opt, False


def _current_rate(
    lr_rows: NDArray[np.float64],
    wd_rows: NDArray[np.float64],
    mu_rows: NDArray[np.float64],
    nesterov: bool,
) -> tuple[float, float, float]:
    """``(rate, lr, wd)``: the free-decay rate ``-ln decay_factor(lr, wd, mu)`` at the
    last row with a positive lr and a known wd (``1 - lr wd`` per step without momentum;
    Nesterov's factor for ``nesterov``), with that row's momentum.

    A ValueError names the fix when no row has a positive lr or a known wd.
    """
    ok = np.isfinite(lr_rows) & (lr_rows > 0) & np.isfinite(wd_rows)
    if not np.any(ok):
        no_lr = not np.any(np.isfinite(lr_rows) & (lr_rows > 0))
        no_wd = not np.any(np.isfinite(wd_rows))
        if no_lr and no_wd:
            raise ValueError(
                "the forecast needs the learning rate and weight decay: the log has no "
                "positive lr and no wd (neither a column nor metadata); pass lr= and wd="
            )
        if no_wd:
            raise ValueError(
                "the forecast needs the weight decay: the log has no wd column and no wd in "
                "its metadata; pass wd="
            )
        raise ValueError(
            "the forecast needs a positive learning rate: the log's lr column and metadata "
            "lr are 0 or missing on every row; pass lr= (the run's configured lr)"
        )
    row = int(np.flatnonzero(ok)[-1])
    lr, wd, mu = float(lr_rows[row]), float(wd_rows[row]), momentum_number(mu_rows[row])
    return float(decay_rate(*check_lr_wd(lr, wd), mu, nesterov=nesterov)), lr, wd


def _last_valid_at(col: NDArray[np.float64], rows: ArrayLike) -> NDArray[np.float64]:
    """The last finite value of ``col`` at or before each of ``rows`` (NaN when none, or
    for a row < 0)."""
    r = np.asarray(rows, dtype=np.int64)
    index = np.arange(col.size)
    last = np.maximum.accumulate(np.where(np.isfinite(col), index, -1))
    at = np.where(r >= 0, last[np.clip(r, 0, col.size - 1)], -1)
    return np.where(at >= 0, col[np.maximum(at, 0)], np.nan)


def _phase_speed(traj: Trajectory, start: int, rate: float, min_rows: int) -> tuple[float, str]:
    """Decay speed of ``ln rho`` per step over rows ``start..end`` (fit), else ``rate``.

    The fit is used when it lies within 0.5-1.5 times the free decay ``rate``.
    """
    rho = traj.rho
    assert rho is not None
    rows = np.arange(start, len(traj))
    rows = rows[np.isfinite(rho[rows]) & (rho[rows] > 0)]
    if rows.size >= min_rows:
        # skip the first fifth of the phase: the tail of the burst
        s = traj.step[rows].astype(np.float64)
        keep = s >= s[0] + 0.2 * (s[-1] - s[0])
        s, y = s[keep], np.log(rho[rows[keep]])
        if s.size >= 3 and s[-1] > s[0]:
            slope = float(np.polyfit(s - s[0], y, 1)[0])
            # a phase still on its post-burst plateau (or rising) is not decaying yet:
            # its slope says nothing about the decay to come
            if 0.5 * rate <= -slope <= 1.5 * rate:
                return -slope, "fit"
    return rate, "free decay"


def loss_exponent(ln_elr_k: ArrayLike, ln_loss_k: ArrayLike) -> float:
    """Exponent ``beta`` of the loss proxy ``S ~ L^beta`` from the earlier events.

    The least-squares slope of ``-ln elr_k`` on ``ln L_k`` (``elr_k * S_k`` constant at
    the events with ``S_k ~ L_k^beta``), clipped to [0, 1]; 1 (the separable
    cross-entropy limit) with fewer than three finite events or no spread of ``L_k``.
    Module docstring, step 2.
    """
    e = np.asarray(ln_elr_k, dtype=np.float64)
    ln_l = np.asarray(ln_loss_k, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(ln_l)
    e, ln_l = e[ok], ln_l[ok]
    if e.size < 3 or float(np.ptp(ln_l)) == 0.0:
        return 1.0
    dl = ln_l - ln_l.mean()
    slope = -float(np.dot(dl, e - e.mean()) / np.dot(dl, dl))
    return min(max(slope, 0.0), 1.0)


def _trend_reach(
    step: NDArray[np.float64],
    y: NDArray[np.float64],
    target: float,
    fit_fraction: float,
    min_rows: int,
) -> tuple[float, float]:
    """Step at which the least-squares line of ``y`` over its last rows reaches ``target``.

    Returns ``(step, slope)``; ``step`` is NaN when the line does not rise or there are
    fewer than ``min_rows`` finite rows in the fitted part.
    """
    ok = np.isfinite(y)
    step, y = step[ok], y[ok]
    if step.size < min_rows:
        return math.nan, math.nan
    keep = step >= step[-1] - fit_fraction * (step[-1] - step[0])
    s, v = step[keep], y[keep]
    if s.size < 3 or s[-1] <= s[0]:
        return math.nan, math.nan
    slope, icept = (float(c) for c in np.polyfit(s - s[-1], v, 1))
    if not slope > 0:
        return math.nan, slope
    return float(step[-1]) + max(target - icept, 0.0) / slope, slope


def _threshold_kind(traj: Trajectory, threshold: str, use_sharpness: bool) -> str:
    has_s = traj.sharpness_sphere is not None and bool(np.any(np.isfinite(traj.sharpness_sphere)))
    has_l = traj.loss is not None and bool(np.any(np.isfinite(traj.loss) & (traj.loss > 0)))
    if threshold not in ("auto", "elr", "sharpness", "loss"):
        raise ValueError(f"threshold={threshold!r}: use 'auto', 'elr', 'sharpness' or 'loss'")
    if threshold == "sharpness" and not has_s:
        raise ValueError(
            "threshold='sharpness' needs a sharpness_sphere column; use threshold='auto'"
        )
    if threshold == "loss" and not has_l:
        raise ValueError("threshold='loss' needs a loss column; use threshold='auto'")
    if threshold != "auto":
        return threshold
    if use_sharpness and has_s:
        return "sharpness"
    return "loss" if has_l else "elr"


def forecast_next_event(
    traj: Trajectory,
    *,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    optimizer: str | None = None,
    events: Events | None = None,
    min_fit_rows: int = 10,
    use_sharpness: bool = True,
    threshold: str = "auto",
    blend: float = 0.5,
    fit_fraction: float = 0.5,
    history: str = "median",
    **detector: Any,
) -> Forecast:
    """Predict the step of the next destabilization of a run from its log so far.

    Parameters
    ----------
    traj : Trajectory
        The log up to now (it may still be being written); needs ``rho`` (or ``elr``
        with a known ``lr``).
    lr, wd, momentum : float, optional
        Hyperparameters (default: the log's ``meta``). A per-row ``lr`` (``wd``,
        ``momentum``) column of the log is used where present, ``lr`` (``wd``,
        ``momentum``) only on its missing cells: the
        free-decay rate is ``-ln decay_factor(lr_t, wd_t, mu)`` at the last row with a
        positive lr (``-ln(1 - lr_t wd_t)`` without momentum), so a metadata lr taken
        at the start of a warmup does not set it.
    optimizer : {"sgd", "nesterov"}, optional
        Default: the log's ``meta["optimizer"]`` (PyTorch class names, lower-cased),
        else ``"sgd"`` (``details["optimizer_note"]`` says it was assumed). Only
        SGD-family runs (SGD, heavy ball, PyTorch's Nesterov) have the decay law used
        here; any other optimizer (``"adamw"``, ``"lion"``) is a ValueError.
    events : Events, optional
        Events found before (default: ``find_events(traj, lr=..., wd=..., **detector)``).
    min_fit_rows : int
        Rows of the current decay phase needed to fit its trend.
    use_sharpness : bool
        With ``threshold="auto"``, use a logged ``sharpness_sphere`` column; False
        falls back to the loss proxy (or the effective LR alone).
    threshold : {"auto", "sharpness", "loss", "elr"}
        The threshold variable (module docstring, step 2). ``"auto"``: the sharpness
        where logged, else the loss, else the effective LR.
    blend : float
        Weight of the threshold estimate against the period estimate, in [0, 1]
        (1: the threshold alone).
    fit_fraction : float
        Fraction of the current decay phase (its last part) fitted by the loss-proxy
        trend, in (0, 1].
    history : {"median", "ar1"}
        How the earlier cycles give this cycle's threshold and period: their median, or
        a first-order autoregression fitted on them (:func:`next_in_sequence`; the
        thresholds of real runs alternate from cycle to cycle, docs/theory.md
        "Forecast").
    **detector
        Further keyword arguments of :func:`siflow.periods.find_events`.

    Returns
    -------
    Forecast
        Method and formula: module docstring (``docs/theory.md``, section
        "Destabilization events").
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"traj must be a siflow Trajectory, got {type(traj).__name__}; "
            f"read the log with siflow.io.read(path)"
        )
    min_fit_rows = check_positive_int("min_fit_rows", min_fit_rows)
    blend = _check_unit("blend", blend, closed_low=True)
    fit_fraction = _check_unit("fit_fraction", fit_fraction, closed_low=False)
    if history not in ("median", "ar1"):
        raise ValueError(f"history must be 'median' or 'ar1', got {history!r}")
    opt, assumed = _resolve_optimizer(traj, optimizer)
    nesterov = opt == "nesterov"
    if _nesterov(traj) != nesterov:
        # the detector reads the optimizer from the log (Nesterov's decay law)
        traj = replace(traj, meta={**traj.meta, "optimizer": opt, "nesterov": nesterov})
    # values passed here are checked; the log's own (0 in a warmup) in _current_rate
    lr = traj.lr if lr is None else float(check_positive("lr", lr))
    wd = traj.wd if wd is None else float(check_positive("wd", wd))
    mu = momentum_number(traj.momentum if momentum is None else momentum)
    lr_rows = _hyper_rows(traj, "lr", lr)
    wd_rows = _hyper_rows(traj, "wd", wd)
    mu_rows = _hyper_rows(traj, "momentum", mu)
    # the given momentum is checked: a value outside [0, 1) is one of the log's column
    _check_momentum_column(traj, mu_rows, "fix that column of the log")
    rate, lr_now, wd_now = _current_rate(lr_rows, wd_rows, mu_rows, nesterov)
    if traj.rho is None:
        if traj.elr is None:
            raise ValueError(
                "the forecast needs a weight-norm column (rho) or an effective-LR column "
                f"(elr); present: {', '.join(traj.columns())}"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            traj = replace(traj, rho=np.sqrt(lr_rows / traj.elr))
    kind = _threshold_kind(traj, threshold, use_sharpness)
    if events is None:
        events = find_events(traj, lr=lr_rows, wd=wd_rows, momentum=mu_rows, **detector)
    fc = _forecast_from_events(
        traj,
        events,
        kind=kind,
        lr_rows=lr_rows,
        rate=rate,
        lr_now=lr_now,
        wd_now=wd_now,
        history=history,
        blend=blend,
        fit_fraction=fit_fraction,
        min_fit_rows=min_fit_rows,
    )
    fc.details["optimizer"] = opt
    if assumed:
        fc.details["optimizer_note"] = ASSUMED_SGD_NOTE
    return fc


def _forecast_from_events(
    traj: Trajectory,
    events: Events,
    *,
    kind: str,
    lr_rows: NDArray[np.float64],
    rate: float,
    lr_now: float,
    wd_now: float,
    history: str,
    blend: float,
    fit_fraction: float,
    min_fit_rows: int,
) -> Forecast:
    """The forecast from the events found so far (:func:`forecast_next_event`, whose
    checked arguments these are)."""
    n = len(events)
    if n == 0:
        return _none(traj, 0, "no destabilization yet: no threshold to extrapolate to")
    last_row = len(traj) - 1
    last_step = int(traj.step[-1])
    # the norm now: its last logged value (rows may log the loss alone)
    rho_ok = np.flatnonzero(np.isfinite(traj.rho) & (traj.rho > 0))
    norm_row = int(rho_ok[-1]) if rho_ok.size else last_row
    ln_elr_now = float(log_effective_lr(lr_rows[norm_row], traj.rho[norm_row]))
    y_k = log_effective_lr(lr_rows[events.index], traj.rho[events.index])
    beta = math.nan
    if kind == "sharpness":
        sharp = traj.sharpness_sphere
        assert sharp is not None
        positive = np.where(sharp > 0, sharp, np.nan)
        s_k = _last_valid_at(positive, events.index)
        s_now = float(_last_valid_at(positive, [last_row])[0])
        if np.all(np.isfinite(s_k)) and math.isfinite(s_now):
            y_k = y_k + np.log(s_k / s_now)
        else:
            kind = "elr"
    elif kind == "loss":
        assert traj.loss is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_loss = np.log(traj.loss.astype(np.float64))
        # the last logged loss before each event row (before its spike)
        ln_l_k = _last_valid_at(ln_loss, np.asarray(events.index) - 1)
        beta = loss_exponent(y_k, ln_l_k)
        y_k = y_k + beta * ln_l_k
    y_k = y_k[np.isfinite(y_k)]
    periods = np.asarray(events.periods, dtype=np.float64)
    period_guess = (
        float(events.steps[-1] + next_in_sequence(periods, history)) if n >= 2 else math.nan
    )
    period_lo = float(events.steps[-1] + np.min(periods)) if n >= 2 else math.nan
    period_hi = float(events.steps[-1] + np.max(periods)) if n >= 2 else math.nan
    peak_row = int(events.peak_index[-1])
    details: dict[str, Any] = {
        "threshold_kind": {"sharpness": "elr*S", "loss": "elr*L^beta", "elr": "elr"}[kind],
        "loss_exponent": beta,
        "period_estimate": period_guess - float(events.steps[-1]) if n >= 2 else math.nan,
        "free_decay_rate": rate,
        "lr": lr_now,
        "wd": wd_now,
    }
    if n >= 2:
        note = _schedule_note(events, rate)
        if note is not None:
            details["schedule_note"] = note
        note = resolution_note(traj, float(np.median(periods)))
        if note is not None:
            details["resolution_note"] = note
        note = phase_lock_note(traj, events)
        if note is not None:
            details["phase_lock_note"] = note
    if n == 2:
        # one period says nothing of their spread: the interval would be one point. It
        # is a factor 2 of that period either side (consecutive periods of the committed
        # real-network logs differ by less than a factor 2 in 82 % of 1052 pairs)
        last, one = float(events.steps[-1]), float(periods[0])
        period_lo, period_hi = last + 0.5 * one, last + 2.0 * one
        details["period_interval"] = (
            "one period so far: half to twice that period after the last event (an "
            "assumed, wide spread)"
        )

    def by_period(reason: str) -> Forecast:
        if not math.isfinite(period_guess):
            return _none(traj, n, f"{reason}, and no period is known yet")
        return _after_cut(
            Forecast(period_guess, (period_lo, period_hi), last_step, "period", n, details),
            reason,
        )

    if y_k.size == 0:
        return by_period("no finite threshold at the earlier events")
    if peak_row >= last_row:
        return by_period("a jump is in progress")
    y_star = next_in_sequence(y_k, history)
    if kind == "loss":
        assert traj.loss is not None
        rows = np.arange(peak_row, last_row + 1)
        rows = rows[np.isfinite(ln_loss[rows])]  # an overflowed (inf) loss has no level
        y = log_effective_lr(lr_rows[rows], traj.rho[rows]) + beta * ln_loss[rows]
        t = traj.step[rows].astype(np.float64)
        step, slope = _trend_reach(t, y, y_star, fit_fraction, min_fit_rows)
        if not math.isfinite(step):
            return by_period("the loss-scaled effective LR is not rising yet")
        if n >= 2 and step > events.steps[-1] + 2.0 * float(np.max(events.periods)):
            # a barely rising line reaches any level eventually: beyond twice the
            # longest cycle so far it says nothing
            return by_period("the loss-scaled trend is too flat to extrapolate")
        lo = _trend_reach(t, y, float(np.min(y_k)), fit_fraction, min_fit_rows)[0]
        hi = _trend_reach(t, y, float(np.max(y_k)), fit_fraction, min_fit_rows)[0]
        details.update({"threshold": y_star, "trend": slope})
    else:
        if not math.isfinite(ln_elr_now):
            return by_period("no finite positive norm is logged")
        speed, how = _phase_speed(traj, peak_row, rate, min_fit_rows)

        def reach(y_target: float) -> float:
            # ln rho falls by (y_target - ln elr_now)/2 from the last logged norm
            rows_left = max(0.5 * (y_target - ln_elr_now), 0.0) / speed
            return float(traj.step[norm_row]) + rows_left

        step = reach(y_star)
        # a lower threshold ELR is a higher norm: reached earlier
        lo, hi = reach(float(np.min(y_k))), reach(float(np.max(y_k)))
        details.update(
            {
                "threshold": y_star,
                "elr_threshold": _exp(y_star),
                "elr_now": _exp(ln_elr_now),
                "decay_speed": speed,
                "decay_speed_source": how,
            }
        )
    if y_k.size < 2:
        # one earlier threshold says nothing of their spread: the interval would be
        # one point. It is the steps the free decay needs to move the effective LR by a
        # factor 2 either side (ln elr grows by 2 rate per step): wide, and stated so
        half = math.log(2.0) / (2.0 * rate)
        lo, hi = step - half, step + half
        details["interval"] = (
            "one threshold so far: the free decay's steps to change the effective LR by "
            "a factor 2 either side of the estimate (an assumed, wide spread)"
        )
    if step <= last_step and math.isfinite(period_guess) and period_guess > last_step:
        # already past the usual threshold without destabilizing: this cycle's threshold
        # is higher; the periods seen so far are the better guide
        return by_period("past the usual threshold")
    method = "threshold"
    details["threshold_estimate"] = step
    if math.isfinite(period_guess) and blend < 1.0:
        step = blend * step + (1.0 - blend) * period_guess
        lo, hi = min(lo, period_lo), max(hi, period_hi)
        method = "blend"
    return _after_cut(Forecast(step, (lo, hi), last_step, method, n, details))


def _schedule_note(events: Events, rate: float) -> str | None:
    """A note when the free decay per step now differs by more than a quarter from its mean
    over the earlier cycles, ``-sum(decay_before) / (steps[-1] - steps[0])`` (an lr schedule
    that changed since): the period estimate counts those cycles' steps. None otherwise."""
    free = -np.asarray(events.decay_before, dtype=np.float64)
    span = float(events.steps[-1] - events.steps[0])
    if not (free.size and np.all(np.isfinite(free)) and span > 0 and free.sum() > 0):
        return None
    past = float(free.sum()) / span
    ratio = rate / past
    if 0.8 <= ratio <= 1.25:
        return None
    return (
        f"the free decay per step now ({rate:.3g}) is {ratio:.3g} times its mean over the earlier "
        f"cycles ({past:.3g}): the period estimate counts their steps, and the forecast "
        f"leans on it"
    )


def _after_cut(fc: Forecast, note: str | None = None) -> Forecast:
    """The forecast moved to after the last logged step: an estimate that has passed
    becomes the next step, and so does an earliest bound. A latest bound that has passed
    too (the cycle is already longer than the extrapolation to the highest earlier
    threshold and than every earlier cycle) leaves no upper bound: ``inf``, with a note.
    """
    after = fc.last_step + 1.0
    lo, hi = fc.next_event_interval
    details = dict(fc.details)
    if note is not None:
        details["note"] = note
    if hi < after:
        hi = math.inf
        details["overdue"] = (
            "the cycle is already longer than the forecast's latest bound: no upper bound"
        )
    return replace(
        fc,
        next_event_step=max(fc.next_event_step, after),
        next_event_interval=(max(lo, after), hi),
        details=details,
    )


def next_in_sequence(values: ArrayLike, how: str = "median", min_values: int = 5) -> float:
    """The next value of a sequence of per-cycle values (thresholds, periods).

    ``"median"``: their median. ``"ar1"``: the first-order autoregression
    ``m + phi (v_last - m)`` with ``m`` their mean and ``phi`` their lag-1
    autocorrelation (:func:`lag1_autocorrelation`), clipped to [-1, 1]; the median with
    fewer than ``min_values`` values or no spread.
    """
    v = np.asarray(values, dtype=np.float64)
    median = float(np.median(v))
    phi = lag1_autocorrelation(v) if how == "ar1" and v.size >= min_values else math.nan
    if not math.isfinite(phi):
        return median
    return float(v.mean() + min(max(phi, -1.0), 1.0) * (v[-1] - v.mean()))


def lag1_autocorrelation(values: ArrayLike) -> float:
    """Lag-1 autocorrelation ``sum d_k d_(k+1) / sum d_k^2`` of a sequence (``d`` its
    deviations from its mean); NaN with fewer than two values or no spread."""
    d = np.asarray(values, dtype=np.float64)
    d = d - d.mean() if d.size else d
    spread = float(np.dot(d, d))
    if d.size < 2 or spread == 0.0:
        return math.nan
    return float(np.dot(d[:-1], d[1:])) / spread


def _exp(x: float) -> float:
    """``exp(x)``, ``inf`` past the float range (no OverflowError)."""
    with np.errstate(over="ignore"):
        return float(np.exp(x))


def _check_unit(name: str, value: float, *, closed_low: bool) -> float:
    """``value`` as a float in [0, 1] (``closed_low``) or (0, 1]."""
    interval = "[0, 1]" if closed_low else "(0, 1]"
    fix = "pass e.g. 0.5"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}; {fix}") from None
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be in {interval}, got an integer beyond it; {fix}") from None
    low_ok = v >= 0.0 if closed_low else v > 0.0
    if not (math.isfinite(v) and low_ok and v <= 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value!r}; {fix}")
    return v


class RecorderForecast:
    """Forecast the next destabilization every ``every`` steps of a recorded run.

    Wraps a :class:`siflow.torch_probe.SIRecorder` (or any object with ``optimizer``,
    ``step_count`` and ``trajectory()``): after every ``every``-th optimizer step it runs
    :func:`forecast_next_event` on the log so far and keeps the estimate;
    :meth:`trajectory` returns the recorder's log with the columns ``next_event_step``,
    ``next_event_lo`` and ``next_event_hi`` (NaN on the other rows; ``inf`` in
    ``next_event_hi`` for an overdue cycle, see :class:`Forecast`). Register it after
    the recorder so that the row of the current step exists.

    The hook never raises into ``optimizer.step()``: a forecast that is not possible on
    the log so far (fewer than three rows, no positive lr yet in a warmup, any error of
    :func:`forecast_next_event`) leaves NaN in that row's forecast columns, and the first
    such error is noted once in the log's ``meta["notes"]``; training goes on.

    Parameters
    ----------
    recorder : SIRecorder
        The recorder of the run.
    every : int
        Steps between forecasts (each costs one pass over the log so far).
    attach : bool
        Register the optimizer hook (default). ``False``: no hook; the caller runs
        :meth:`forecast_now` where it wants a forecast (the trainer callbacks do, on the
        rows they hand to their loggers, once the row's loss is in).
    **kwargs
        Keyword arguments of :func:`forecast_next_event` (``lr``, ``wd``, detector
        parameters...).
    """

    def __init__(self, recorder: Any, every: int, *, attach: bool = True, **kwargs: Any) -> None:
        self.recorder = recorder
        self.every = check_positive_int("every", every)
        self.kwargs = kwargs
        self.estimates: dict[int, tuple[float, float, float]] = {}
        #: notes for the log's metadata: the first failed forecast of each kind
        self.notes: list[str] = []
        self._handle = (
            recorder.optimizer.register_step_post_hook(self._after_step) if attach else None
        )

    def _after_step(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        if self.recorder.step_count % self.every:
            return
        self.forecast_now()

    def forecast_now(self, upto: int | None = None) -> tuple[float, float, float] | None:
        """Forecast from the recorder's log so far (its rows up to step ``upto``, default
        all), keep the estimate under the last row's step and return it: ``(step, earliest,
        latest)``. None when the log has fewer than three rows or the forecast failed (the
        first failure of each kind is noted; never raises)."""
        try:
            traj = self.recorder.trajectory()
            if upto is not None:
                traj = traj[traj.step <= upto]
            if len(traj) < 3:
                return None
            step = int(traj.step[-1])
            fc = forecast_next_event(traj, **self.kwargs)
        except Exception as exc:  # a forecast must never stop the training  # noqa: BLE001
            self._note(exc)
            return None
        lo, hi = fc.next_event_interval
        self.estimates[step] = (float(fc.next_event_step), float(lo), float(hi))
        return self.estimates[step]

    def _note(self, exc: Exception) -> None:
        """Keep one note per kind of failure (its first message)."""
        kind = type(exc).__name__
        if any(n.startswith(f"RecorderForecast: {kind}") for n in self.notes):
            return
        self.notes.append(
            f"RecorderForecast: {kind} at step {self.recorder.step_count}, no forecast on "
            f"such rows (NaN), training went on: {exc}"
        )

    def trajectory(self) -> Trajectory:
        """The recorder's log with the forecast columns."""
        traj = self.recorder.trajectory()
        cols = {
            k: np.full(len(traj), np.nan)
            for k in ("next_event_step", "next_event_lo", "next_event_hi")
        }
        where = {int(s): i for i, s in enumerate(traj.step)}
        for step, values in self.estimates.items():
            i = where.get(step)
            if i is not None:
                for name, v in zip(cols, values, strict=True):
                    cols[name][i] = v
        meta = traj.meta
        if self.notes:
            meta = {**meta, "notes": [*meta.get("notes", []), *self.notes]}
        return replace(traj, extra={**traj.extra, **cols}, meta=meta)

    def close(self) -> None:
        """Remove the hook (the estimates stay available)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m siflow.forecast`` (see :mod:`siflow._forecast_cli`)."""
    from siflow._forecast_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    from siflow._forecast_cli import main as _main

    raise SystemExit(_main())
