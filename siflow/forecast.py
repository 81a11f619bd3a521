"""Forecast of the next destabilization from a training log so far.

Between destabilizations the weight norm of a scale-invariant network decays by the
free-decay factor per step, ``ln rho_{t+1} - ln rho_t = ln decay_factor(lr_t, wd_t, mu)``
(``docs/theory.md`` sections 1 and "Destabilization events"), so the effective LR
``lr/rho^2`` grows until the network destabilizes. The forecast extrapolates this decay
from the last logged row to the level at which the earlier cycles of the same log
destabilized:

1. the events so far (:func:`siflow.periods.find_events`), at least one;
2. the threshold: the effective LR at the earlier events, ``elr_k = lr/rho_k^2``; when
   the log carries the sphere sharpness ``S`` (``sharpness_sphere``), the product
   ``elr_k * S_k`` at the events and the latest ``S`` give the threshold of the current
   cycle, ``elr* = median(elr_k S_k) / S_now``; otherwise ``elr* = median(elr_k)``;
3. the decay speed of ``ln rho`` in the current phase: the least-squares slope over the
   decay phase so far (after the peak), falling back to the free decay
   ``-ln decay_factor(lr, wd, mu)`` when the phase is too short to fit or its slope is
   outside 0.5-1.5 times the free decay (a post-burst plateau);
4. ``next_event_step = step_now + ln(rho_now / rho*) / speed`` with
   ``rho* = sqrt(lr / elr*)``, and the interval from the spread (lowest and highest)
   of the earlier thresholds.

The periods seen so far give a second estimate, ``last event + median period``, used
when the current phase is still rising (a jump in progress) and when the norm is already
below the median threshold without having destabilized (this cycle's threshold is
higher); when that estimate has passed too, the event is due at the next step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow._validate import check_positive_int
from siflow.periods import Events, find_events
from siflow.theory import check_optimizer, decay_rate
from siflow.trajectory import Trajectory

__all__ = ["Forecast", "forecast_next_event", "RecorderForecast"]


@dataclass(frozen=True)
class Forecast:
    """The predicted step of the next destabilization.

    Attributes
    ----------
    next_event_step : float
        Predicted step of the next destabilization (NaN when no forecast is possible).
    next_event_interval : tuple of float
        ``(earliest, latest)``: the same extrapolation to the lowest and highest
        thresholds of the earlier cycles.
    last_step : int
        Last logged step (the forecast is made from there).
    method : str
        ``"threshold"`` (decay to the earlier thresholds), ``"period"`` (median period
        after the last event) or ``"none"``.
    n_events : int
        Destabilizations seen so far.
    details : dict
        Threshold, decay speed, norm at the last row.
    """

    next_event_step: float
    next_event_interval: tuple[float, float]
    last_step: int
    method: str
    n_events: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, (tuple, list)):
                return [clean(u) for u in v]
            if isinstance(v, dict):
                return {k: clean(u) for k, u in v.items()}
            if isinstance(v, np.generic):
                return clean(v.item())
            return v

        return {
            "next_event_step": clean(float(self.next_event_step)),
            "next_event_interval": clean(list(self.next_event_interval)),
            "last_step": int(self.last_step),
            "method": self.method,
            "n_events": int(self.n_events),
            "details": clean(self.details),
        }


def _none(traj: Trajectory, n: int, why: str) -> Forecast:
    last = int(traj.step[-1]) if len(traj) else 0
    return Forecast(math.nan, (math.nan, math.nan), last, "none", n, {"note": why})


def _lr_rows(traj: Trajectory, lr: float) -> NDArray[np.float64]:
    if "lr" in traj.extra:
        col = traj.extra["lr"].astype(np.float64)
        return np.where(np.isfinite(col), col, lr)
    return np.full(len(traj), float(lr))


def _sharpness_at(col: NDArray[np.float64], row: int) -> float:
    """Last finite value at or before ``row`` (NaN when none)."""
    vals = col[: row + 1]
    ok = np.flatnonzero(np.isfinite(vals) & (vals > 0))
    return float(vals[ok[-1]]) if ok.size else math.nan


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


def forecast_next_event(
    traj: Trajectory,
    *,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    optimizer: str = "sgd",
    events: Events | None = None,
    min_fit_rows: int = 10,
    use_sharpness: bool = True,
    **detector: Any,
) -> Forecast:
    """Predict the step of the next destabilization of a run from its log so far.

    Parameters
    ----------
    traj : Trajectory
        The log up to now (it may still be being written); needs ``rho`` (or ``elr``
        with a known ``lr``).
    lr, wd, momentum : float, optional
        Hyperparameters (default: the log's ``meta``; a per-row ``lr`` column is used
        where present).
    optimizer : {"sgd", "adamw", "lion"}
        Only SGD-family runs (SGD, heavy ball) have the decay law used here.
    events : Events, optional
        Events found before (default: ``find_events(traj, lr=..., wd=..., **detector)``).
    min_fit_rows : int
        Rows of the current decay phase needed to fit its speed (else the free decay).
    use_sharpness : bool
        Scale the thresholds by a logged ``sharpness_sphere`` column (step 2 of the
        module docstring); False uses the effective LR alone.
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
    opt = check_optimizer(optimizer)
    if opt != "sgd":
        raise ValueError(
            f"optimizer={optimizer!r}: the forecast uses the SGD decay law "
            f"(momentum allowed); AdamW and Lion are not supported"
        )
    lr = traj.lr if lr is None else lr
    wd = traj.wd if wd is None else wd
    if lr is None or wd is None:
        raise ValueError(
            "the forecast needs the learning rate and weight decay: pass lr= and wd= "
            "(or a log whose metadata has them)"
        )
    mu = float(traj.momentum if momentum is None else momentum)
    rate = float(decay_rate(float(lr), float(wd), mu))
    if traj.rho is None:
        if traj.elr is None:
            raise ValueError(
                "the forecast needs a weight-norm column (rho) or an effective-LR column "
                f"(elr); present: {', '.join(traj.columns())}"
            )
        traj = Trajectory(
            step=traj.step,
            rho=np.sqrt(_lr_rows(traj, float(lr)) / traj.elr),
            loss=traj.loss,
            sharpness_sphere=traj.sharpness_sphere,
            extra=dict(traj.extra),
            meta=dict(traj.meta),
        )
    if events is None:
        events = find_events(traj, lr=lr, wd=wd, momentum=mu, **detector)
    n = len(events)
    if n == 0:
        return _none(traj, 0, "no destabilization yet: no threshold to extrapolate to")
    lr_rows = _lr_rows(traj, float(lr))
    last_row = len(traj) - 1
    last_step = int(traj.step[-1])
    rho_now = float(traj.rho[last_row])
    lr_now = float(lr_rows[last_row])
    elr_k = lr_rows[events.index] / traj.rho[events.index] ** 2
    thr_kind = "elr"
    has_s = traj.sharpness_sphere is not None and np.any(np.isfinite(traj.sharpness_sphere))
    if use_sharpness and has_s:
        sharp = traj.sharpness_sphere
        assert sharp is not None
        s_k = np.array([_sharpness_at(sharp, int(i)) for i in events.index])
        s_now = _sharpness_at(sharp, last_row)
        if np.all(np.isfinite(s_k)) and math.isfinite(s_now):
            elr_k = elr_k * s_k / s_now
            thr_kind = "elr*S"
    elr_k = elr_k[np.isfinite(elr_k) & (elr_k > 0)]
    period_guess = float(events.steps[-1] + np.median(events.periods)) if n >= 2 else math.nan
    peak_row = int(events.peak_index[-1])
    if peak_row >= last_row or elr_k.size == 0:
        # a jump still in progress: the period is the only guide
        if not math.isfinite(period_guess):
            return _none(traj, n, "a jump is in progress and no period is known yet")
        lo = float(events.steps[-1] + np.min(events.periods))
        hi = float(events.steps[-1] + np.max(events.periods))
        return Forecast(period_guess, (lo, hi), last_step, "period", n, {})
    speed, how = _phase_speed(traj, peak_row, rate, min_fit_rows)

    def reach(elr_star: float) -> float:
        rho_star = math.sqrt(lr_now / elr_star)
        return last_step + max(math.log(rho_now / rho_star), 0.0) / speed

    elr_med = float(np.median(elr_k))
    step = reach(elr_med)
    # a lower threshold ELR is a higher norm: reached earlier
    lo, hi = reach(float(np.min(elr_k))), reach(float(np.max(elr_k)))
    method = "threshold"
    if step <= last_step and math.isfinite(period_guess) and period_guess > last_step:
        # already past the usual threshold without destabilizing: this cycle's threshold
        # is higher; the periods seen so far are the better guide
        step, method = period_guess, "period"
        hi = max(hi, float(events.steps[-1] + np.max(events.periods)))
    step = max(step, last_step + 1.0)
    lo, hi = max(lo, last_step + 1.0), max(hi, last_step + 1.0)
    return Forecast(
        step,
        (lo, hi),
        last_step,
        method,
        n,
        {
            "threshold_kind": thr_kind,
            "elr_threshold": elr_med,
            "elr_now": lr_now / rho_now**2,
            "decay_speed": speed,
            "decay_speed_source": how,
            "free_decay_rate": rate,
            "period_estimate": period_guess,
        },
    )


class RecorderForecast:
    """Forecast the next destabilization every ``every`` steps of a recorded run.

    Wraps a :class:`siflow.torch_probe.SIRecorder` (or any object with ``optimizer``,
    ``step_count`` and ``trajectory()``): after every ``every``-th optimizer step it runs
    :func:`forecast_next_event` on the log so far and keeps the estimate;
    :meth:`trajectory` returns the recorder's log with the columns ``next_event_step``,
    ``next_event_lo`` and ``next_event_hi`` (NaN on the other rows). Register it after
    the recorder so that the row of the current step exists.

    Parameters
    ----------
    recorder : SIRecorder
        The recorder of the run.
    every : int
        Steps between forecasts (each costs one pass over the log so far).
    **kwargs
        Keyword arguments of :func:`forecast_next_event` (``lr``, ``wd``, detector
        parameters...).
    """

    def __init__(self, recorder: Any, every: int, **kwargs: Any) -> None:
        self.recorder = recorder
        self.every = check_positive_int("every", every)
        self.kwargs = kwargs
        self.estimates: dict[int, tuple[float, float, float]] = {}
        self._handle = recorder.optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        if self.recorder.step_count % self.every:
            return
        traj = self.recorder.trajectory()
        if len(traj) < 3:
            return
        fc = forecast_next_event(traj, **self.kwargs)
        lo, hi = fc.next_event_interval
        self.estimates[int(traj.step[-1])] = (float(fc.next_event_step), float(lo), float(hi))

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
        extra = dict(traj.extra)
        extra.update(cols)
        return Trajectory(
            step=traj.step,
            loss=traj.loss,
            rho=traj.rho,
            grad_norm_sphere=traj.grad_norm_sphere,
            elr=traj.elr,
            angular_update=traj.angular_update,
            sharpness_sphere=traj.sharpness_sphere,
            extra=extra,
            meta=dict(traj.meta),
        )

    def close(self) -> None:
        """Remove the hook (the estimates stay available)."""
        self._handle.remove()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m siflow.forecast`` (see :mod:`siflow._forecast_cli`)."""
    from siflow._forecast_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    import sys

    sys.exit(main())
