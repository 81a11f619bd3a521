"""Theory on a trajectory: measured vs predicted equilibrium, decay and periods.

:func:`analyze` measures, on any :class:`~siflow.trajectory.Trajectory` (a
simulation or a real log read by :func:`siflow.io.read`):

- destabilization events and periods (:func:`siflow.periods.find_events`), the
  effective LR just before each destabilization;
- equilibrium statistics over the stationary part
  (:func:`siflow.periods.stationary_part`): RMS angular update, mean norm,
  RMS and mean sphere gradient norm ``g~ = rho |grad L(w)|``;
- the per-step norm decay rate between events
  (:func:`siflow.periods.measure_decay_rate`);

and predicts with :mod:`siflow.theory` for the same ``(lr, wd, momentum)``:

- the equilibrium angular update ``Delta*`` (SGD: ``cos Delta* = 1 - lr wd``, exact
  for the discrete map; heavy ball: ``cos Delta* = 1 - lr wd/(1+mu)``, exact under
  the second-moment model);
- the equilibrium norm and effective LR from the measured RMS of ``g~``
  (``rho*^4 = lr G^2 / (wd (2 - lr wd))`` for SGD, exact for constant ``G``);
- the zero-gradient decay rate ``-ln(decay_factor)`` (SGD: ``-ln(1 - lr wd)``,
  exact);
- the period from the measured norm ratio (decay law, docs/theory.md section 2), the
  stability threshold from a sharpness, and with ``predict_lr``/``predict_wd`` the
  period at another ``(lr, wd)`` calibrated on this log.

:func:`draw` puts the predictions on the four-panel figure of
:func:`siflow.plot.plot_trajectory`. ``python -m siflow.overlay LOG`` does both
from the command line.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siflow import theory
from siflow._validate import check_lr_wd, check_momentum, check_positive
from siflow.periods import (
    Events,
    classify,
    find_events,
    measure_decay_rate,
    stationary_part,
)
from siflow.trajectory import Trajectory

__all__ = ["OverlayResult", "analyze", "draw", "theory_lines", "predict_period_at", "main"]


@dataclass
class OverlayResult:
    """Measured and predicted quantities of one trajectory (see :func:`analyze`).

    Floats are ``None`` where the log lacks what the field needs; ``notes`` says
    why. Steps are optimizer steps; angles in radians per step; rates per step.
    """

    lr: float | None = None
    wd: float | None = None
    momentum: float = 0.0
    regime: str = ""
    # events and periods
    n_events: int = 0
    event_steps: list[int] = field(default_factory=list)
    periods: list[float] = field(default_factory=list)
    period_median: float | None = None
    elr_at_events: list[float | None] = field(default_factory=list)
    elr_at_events_median: float | None = None
    norm_ratio_median: float | None = None
    rise_steps_median: float | None = None
    detection_signal: str = ""
    # equilibrium statistics over the stationary part
    stationary_start: int | None = None
    stationary_stop: int | None = None
    angular_update_rms: float | None = None
    angular_update_source: str | None = None
    angular_update_predicted: float | None = None
    norm_mean: float | None = None
    norm_predicted: float | None = None
    elr_mean: float | None = None
    elr_predicted: float | None = None
    grad_norm_sphere_mean: float | None = None
    grad_norm_sphere_rms: float | None = None
    # decay between events
    decay_rate_measured: float | None = None
    decay_rate_predicted: float | None = None
    # periods and thresholds
    predicted_period: float | None = None
    sharpness: float | None = None
    elr_threshold: float | None = None
    critical_norm: float | None = None
    predict_lr: float | None = None
    predict_wd: float | None = None
    predicted_period_at: float | None = None
    predicted_period_method: str | None = None
    notes: list[str] = field(default_factory=list)
    events: Events = field(default_factory=Events, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field but ``events`` (NaN becomes ``None``)."""
        out = asdict(self)
        out.pop("events", None)

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, (np.floating, np.integer)):
                return clean(v.item())
            return v

        return {k: clean(v) for k, v in out.items()}


def _f(x: Any) -> float | None:
    """float, or None for NaN/inf/None."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _finite(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    a = a[np.isfinite(a)]
    return a if a.size else None


def _log_decay(lr: float, wd: float, momentum: float) -> float:
    """``ln decay_factor`` (negative): per-step log change of the norm at zero gradient."""
    return -float(theory.decay_rate(lr, wd, momentum))


def _with_elr(traj: Trajectory, lr: float | None) -> Trajectory:
    """A copy with ``elr = lr / rho**2`` filled in when it is missing and computable."""
    work = traj[slice(None)]
    if work.elr is None and work.rho is not None and lr is not None:
        work.elr = np.asarray(theory.effective_lr(lr, work.rho))
    return work


def predict_period_at(
    period: float,
    lr: float,
    wd: float,
    predict_lr: float,
    predict_wd: float,
    momentum: float = 0.0,
) -> float:
    """Period at ``(predict_lr, predict_wd)`` calibrated on a period measured at ``(lr, wd)``.

    Scale symmetry (docs/theory.md section 0, exact for SI losses): SGD+WD from
    ``(c lr, wd/c)`` follows the same directions step by step, so the period depends
    on ``lr*wd`` only, and equal products give equal periods. Between products the
    decay law of docs/theory.md section 2, ``T = ln(rho_max/rho_crit) / (-ln q)`` with
    ``q`` the per-step norm factor (:func:`siflow.theory.decay_factor`), is used
    with the norm ratio (and the escape time, in units of ``1/(-ln q)``) taken as
    unchanged::

        T2 = T1 * ln q(lr, wd) / ln q(predict_lr, predict_wd)

    Exact for equal ``lr*wd``; otherwise first order in the change of
    ``ln(rho_max/rho_crit)``, which the theory expects to vary only
    logarithmically with ``lr*wd``.
    """
    check_positive("period", period)
    lr_a, wd_a = check_lr_wd(lr, wd)
    lr_b, wd_b = check_lr_wd(predict_lr, predict_wd)
    mu = float(check_momentum(momentum))
    if float(lr_a * wd_a) == float(lr_b * wd_b):
        return float(period)
    return (
        float(period)
        * _log_decay(float(lr_a), float(wd_a), mu)
        / _log_decay(float(lr_b), float(wd_b), mu)
    )


def _sharpness_at_events(traj: Trajectory, events: Events) -> float | None:
    """Median over events of the last finite sharpness at or before each event row.

    Sharpness is often measured only every k steps, so the event row itself may be
    NaN; the last measurement before it is the one that describes the landscape the
    run destabilized in. Without events (or measurements before them), the median
    over the run.
    """
    if not traj.has("sharpness_sphere"):
        return None
    col = traj.sharpness_sphere
    assert col is not None
    finite_rows = np.flatnonzero(np.isfinite(col))
    if finite_rows.size == 0:
        return None
    before = np.searchsorted(finite_rows, events.index, side="right") - 1 if len(events) else []
    vals = [col[finite_rows[i]] for i in before if i >= 0]
    if not vals:
        vals = col[finite_rows]
    return float(np.median(vals))


def analyze(
    traj: Trajectory,
    *,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    sharpness: float | None = None,
    predict_lr: float | None = None,
    predict_wd: float | None = None,
    events: Events | None = None,
) -> OverlayResult:
    """Measure events, periods and equilibrium statistics; predict them from theory.

    Parameters
    ----------
    traj : Trajectory
        Any trajectory; which fields need which columns is listed below.
    lr, wd, momentum : float, optional
        Hyperparameters; default to ``traj.meta`` (momentum to 0).
    sharpness : float, optional
        Top Riemannian Hessian eigenvalue ``S`` on the unit sphere at the minimum,
        for the stability threshold ``elr < 2 (1 - lr wd) / S`` (SGD, exact for the
        linearised map; heavy ball: ``2 (1 + mu - lr wd) / S`` from
        :func:`siflow.predict.threshold_elr`) and the critical norm
        ``sqrt(lr / threshold)``. Default: ``meta["sharpness_min"]``, else the
        median ``sharpness_sphere`` at the events (or over the run).
    predict_lr, predict_wd : float, optional
        Another ``(lr, wd)`` at which to predict the period, calibrated on this log;
        either one alone keeps the other at this log's value. With a sharpness the
        cycle model of :func:`siflow.predict.predict_period` is used (calibrated on
        this trajectory); without one, or when it does not apply, the decay law of
        :func:`predict_period_at` (norm ratio held fixed). ``predicted_period_method``
        says which.
    events : Events, optional
        Reuse events found before (default: ``find_events(traj)``).

    Returns
    -------
    OverlayResult
        What each field needs:

        - ``n_events``, ``event_steps``, ``periods``, ``period_median``: rho, elr or loss.
        - ``elr_at_events*``: elr, or rho with lr.
        - ``angular_update_rms``: ``angular_update``; without it, for plain SGD, it is
          derived from ``tan Delta = elr g~ / (1 - lr wd)`` (exact for the discrete
          map; needs elr or rho, ``grad_norm_sphere``, lr, wd).
        - ``angular_update_predicted``: lr, wd.
        - ``norm_mean``: rho. ``norm_predicted``, ``elr_predicted``:
          ``grad_norm_sphere``, lr, wd. The RMS of ``g~`` is used because the
          stationary balance of ``rho^2`` involves the mean of ``g~^2``.
        - ``decay_rate_measured``: rho or elr and a decay phase (events, or a
          converging run). ``decay_rate_predicted``: lr, wd.
        - ``predicted_period``: two or more events with rho, and lr, wd:
          ``ln(rho_peak_k / rho_before_{k+1}) / (-ln q) + rise`` with the medians of
          the measured norm ratio and rise time (a consistency check of the decay
          law, not a prediction from first principles).
        - ``predicted_period_at``: a measured period, lr, wd, and predict_lr/wd.
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"traj must be a siflow Trajectory, got {type(traj).__name__}; "
            f"read a log with siflow.io.read(path)"
        )
    notes: list[str] = []
    lr = traj.lr if lr is None else lr
    wd = traj.wd if wd is None else wd
    if momentum is None:
        momentum = traj.momentum
    mu = float(check_momentum(momentum))
    have_hp = lr is not None and wd is not None
    if have_hp:
        lr_a, wd_a = check_lr_wd(lr, wd)
        lr, wd = float(lr_a), float(wd_a)
    else:
        lr = float(check_positive("lr", lr)) if lr is not None else None
        wd = float(check_positive("wd", wd)) if wd is not None else None
        notes.append(
            "lr and wd are needed for the predictions; pass --lr and --wd (the log's "
            "metadata has " + ("neither" if lr is None and wd is None else "only one") + ")"
        )
    if sharpness is not None:
        sharpness = float(check_positive("sharpness", sharpness))
    optimizer = str(traj.meta.get("optimizer") or "").lower()
    if any(name in optimizer for name in ("adam", "lion", "rmsprop")):
        notes.append(
            f"optimizer {optimizer!r}: predictions use the SGD/heavy-ball closed forms and "
            f"do not apply to adaptive optimizers"
        )

    work = _with_elr(traj, lr)
    res = OverlayResult(lr=lr, wd=wd, momentum=mu)
    if events is None:
        events = find_events(work, lr=lr, wd=wd, momentum=mu)
    res.events = events
    res.detection_signal = events.signal
    res.n_events = len(events)
    res.event_steps = [int(s) for s in events.steps]
    res.periods = [float(p) for p in events.periods]
    res.period_median = _f(events.period_median)
    res.elr_at_events = [_f(v) for v in events.elr_before]
    elr_ev = _finite(events.elr_before)
    res.elr_at_events_median = _f(np.median(elr_ev)) if elr_ev is not None else None
    if len(events) and elr_ev is None:
        notes.append("effective LR at events needs elr, or rho with lr")
    if len(events) < 2:
        notes.append(f"{len(events)} destabilization event(s): no period measured")
    res.regime = classify(work, events)
    if res.regime != "equilibrium":
        notes.append(
            f"regime is {res.regime}: the equilibrium predictions (angular update, norm, "
            f"effective LR) assume a stationary norm and are a reference, not a fit"
        )

    # ------------------------------------------------------------------ equilibrium
    st = stationary_part(work, events)
    if len(st):
        res.stationary_start = int(st.step[0])
        res.stationary_stop = int(st.step[-1])
    rho = _finite(st.rho)
    res.norm_mean = _f(np.mean(rho)) if rho is not None else None
    if rho is None:
        notes.append("norm statistics need a rho column (map one with --map rho=<column>)")
    elr_st = _finite(st.elr)
    res.elr_mean = _f(np.mean(elr_st)) if elr_st is not None else None
    g = _finite(st.grad_norm_sphere)
    if g is not None:
        res.grad_norm_sphere_mean = _f(np.mean(g))
        res.grad_norm_sphere_rms = _f(np.sqrt(np.mean(g**2)))
    else:
        notes.append(
            "equilibrium norm prediction needs grad_norm_sphere (g~ = |w| |grad L(w)|; "
            "map it with --map grad_norm_sphere=<column>)"
        )
    ang = _finite(st.angular_update)
    if ang is not None:
        res.angular_update_rms = _f(np.sqrt(np.mean(ang**2)))
        res.angular_update_source = "log"
    elif (
        have_hp
        and mu == 0.0
        and st.elr is not None
        and st.grad_norm_sphere is not None
        and lr is not None
        and wd is not None
    ):
        derived = _finite(np.asarray(theory.sgd_step_angle(lr, wd, st.elr, st.grad_norm_sphere)))
        if derived is not None:
            res.angular_update_rms = _f(np.sqrt(np.mean(derived**2)))
            res.angular_update_source = "derived: tan(Delta) = elr*g~/(1-lr*wd)"
            notes.append("angular update not in log: derived from elr and grad_norm_sphere")
    else:
        notes.append("angular update not in log (and not derivable: needs elr, g~, lr, wd, SGD)")

    if have_hp:
        assert lr is not None and wd is not None
        g = res.grad_norm_sphere_rms
        eq = theory.equilibrium(lr, wd, g if g is not None and g > 0 else None, mu)
        res.angular_update_predicted = _f(eq["angular_update"])
        res.norm_predicted = _f(eq.get("norm"))
        res.elr_predicted = _f(eq.get("elr"))
        res.decay_rate_predicted = _f(eq["decay_rate"])

    # ------------------------------------------------------------------ decay
    if len(events) or res.regime == "converged":
        try:
            res.decay_rate_measured = _f(measure_decay_rate(work, events))
        except ValueError as exc:
            notes.append(str(exc))
    else:
        notes.append("no decay phase (no events and the run does not converge)")

    # ------------------------------------------------------------------ periods
    if len(events) >= 2 and have_hp and work.rho is not None:
        assert lr is not None and wd is not None
        ratio = _finite(events.rho_after[:-1] / events.rho_before[1:])
        rise = (events.peak_steps - events.steps).astype(np.float64)
        if ratio is not None:
            res.norm_ratio_median = _f(np.median(ratio))
            res.rise_steps_median = _f(np.median(rise))
            if res.norm_ratio_median is not None and res.norm_ratio_median >= 1.0:
                res.predicted_period = _f(
                    theory.period_from_norm_ratio(
                        lr, wd, res.norm_ratio_median, float(np.median(rise)), mu
                    )
                )
            else:
                notes.append("norm ratio below 1: the decay law does not apply")
    elif len(events) >= 2:
        notes.append("predicted period needs rho, lr and wd")

    s_val = sharpness
    if s_val is None and work.meta.get("sharpness_min") is not None:
        s_val = float(work.meta["sharpness_min"])
    if s_val is None:
        s_val = _sharpness_at_events(work, events)
    if s_val is not None and s_val > 0 and have_hp:
        assert lr is not None and wd is not None
        res.sharpness = s_val
        if mu == 0.0:
            res.elr_threshold = _f(theory.stability_threshold_elr(lr, wd, s_val))
        else:
            from siflow.predict import threshold_elr

            res.elr_threshold = _f(threshold_elr(lr, wd, s_val, mu))
        if res.elr_threshold is not None:
            res.critical_norm = _f(math.sqrt(lr / res.elr_threshold))

    if predict_lr is not None or predict_wd is not None:
        p_lr = float(check_positive("predict_lr", predict_lr if predict_lr is not None else lr))
        p_wd = float(check_positive("predict_wd", predict_wd if predict_wd is not None else wd))
        res.predict_lr, res.predict_wd = p_lr, p_wd
        if not have_hp:
            notes.append("predict_lr/predict_wd need this log's lr and wd")
        elif res.period_median is None:
            notes.append("predict_lr/predict_wd need a measured period (two or more events)")
        else:
            assert lr is not None and wd is not None
            res.predicted_period_at, res.predicted_period_method = _predict_at(
                work, res.period_median, lr, wd, p_lr, p_wd, mu, res.sharpness, notes
            )
    res.notes = notes
    return res


def _predict_at(
    work: Trajectory,
    period: float,
    lr: float,
    wd: float,
    p_lr: float,
    p_wd: float,
    mu: float,
    sharpness: float | None,
    notes: list[str],
) -> tuple[float | None, str]:
    """Period at ``(p_lr, p_wd)``: the cycle model of :mod:`siflow.predict` calibrated on
    this log when the sphere sharpness at the minimum is known, else the decay law of
    :func:`predict_period_at`."""
    if sharpness is not None:
        try:
            from siflow.predict import predict_period
        except ImportError:  # pragma: no cover - siflow.predict ships with the package
            predict_period = None
        if predict_period is not None:
            calib = work[slice(None)]
            calib.meta.update(lr=lr, wd=wd, momentum=mu)
            try:
                pred = predict_period(
                    p_lr,
                    p_wd,
                    mu,
                    calibration=calib,
                    sharpness=sharpness,
                    calibration_model="cycle",
                )
                return _f(pred.period), "siflow.predict cycle model calibrated on this log"
            except ValueError as exc:
                notes.append(f"cycle model not applicable ({exc}); used the decay law")
    else:
        notes.append(
            "period at predict_lr/predict_wd from the decay law with the norm ratio held "
            "fixed (pass --sharpness for the calibrated cycle model of siflow.predict)"
        )
    return (
        _f(predict_period_at(period, lr, wd, p_lr, p_wd, mu)),
        "scale symmetry + decay law: T2 = T1 ln q1 / ln q2",
    )


# ---------------------------------------------------------------------- drawing
def theory_lines(result: OverlayResult, traj: Trajectory) -> list[Any]:
    """The overlay objects of :mod:`siflow.plot` for a result (no computation of theory)."""
    from siflow.plot import HLine, Segment

    lines: list[Any] = []
    x0, x1 = result.stationary_start, result.stationary_stop
    if result.norm_predicted is not None:
        lines.append(HLine("rho", result.norm_predicted, r"predicted $\rho^*$", x0, x1))
    if result.norm_mean is not None and result.regime != "periodic":
        lines.append(HLine("rho", result.norm_mean, "measured mean", x0, x1, color="k", style=":"))
    if result.critical_norm is not None:
        lines.append(HLine("rho", result.critical_norm, r"critical norm $\rho_{crit}$", color="C4"))
    if result.elr_threshold is not None:
        lines.append(
            HLine("elr", result.elr_threshold, r"threshold $2(1-\eta\lambda)/S$", color="C4")
        )
    if result.elr_predicted is not None and result.regime != "periodic":
        lines.append(HLine("elr", result.elr_predicted, r"predicted $\tilde\eta^*$", x0, x1))
    if result.elr_at_events_median is not None:
        lines.append(
            HLine(
                "elr",
                result.elr_at_events_median,
                r"median $\tilde\eta$ at events",
                color="C1",
                style=":",
            )
        )
    if result.angular_update_predicted is not None:
        label = r"predicted $\Delta^*$"
        lines.append(HLine("angle", result.angular_update_predicted, label, x0, x1))
    if result.angular_update_rms is not None:
        lines.append(
            HLine("angle", result.angular_update_rms, "measured RMS", x0, x1, color="k", style=":")
        )
    ev = result.events
    if (
        result.decay_rate_predicted is not None
        and len(ev)
        and np.any(np.isfinite(ev.rho_after))
        and len(traj)
    ):
        stops = list(ev.steps[1:]) + [traj.step[-1]]
        keep = np.linspace(0, len(ev) - 1, min(len(ev), 200)).astype(int)
        for k in np.unique(keep):
            if not math.isfinite(ev.rho_after[k]):
                continue
            lines.append(
                Segment(
                    "rho",
                    float(ev.peak_steps[k]),
                    float(ev.rho_after[k]),
                    float(stops[k]),
                    -result.decay_rate_predicted,
                    r"predicted decay $(1-\eta\lambda)^t$"
                    if result.momentum == 0
                    else "predicted decay (heavy ball)",
                    style="--",
                )
            )
    return lines


def _looks_log_spaced(step: np.ndarray) -> bool:
    if step.size < 20:
        return False
    gaps = np.diff(step).astype(np.float64)
    k = max(gaps.size // 10, 1)
    return bool(step[0] > 0 and gaps[-k:].mean() > 20 * gaps[:k].mean())


@np.errstate(over="ignore", under="ignore")  # huge log ranges overflow inside matplotlib
def draw(
    traj: Trajectory,
    result: OverlayResult,
    path: str | os.PathLike[str] | None,
    *,
    title: str | None = None,
    xlog: bool | None = None,
    zoom: tuple[float, float] | None = None,
) -> Any:
    """Draw the trajectory with the predictions of ``result`` (from :func:`analyze`).

    Panels, for the columns the log has (the others are left out): loss; norm
    (predicted equilibrium norm, decay segments from each peak with the predicted
    slope, critical norm); effective LR (threshold, predicted equilibrium, median
    at events); angular update (predicted ``Delta*`` and the measured RMS over the
    stationary part). ``xlog`` defaults to a log step axis for log-spaced logs;
    ``zoom`` (a step range) adds a close-up column, by default the last three
    periods when there are more than six events. Returns the matplotlib Figure and
    saves it when ``path`` is given (PNG/SVG/PDF by suffix, atomically).
    """
    from siflow.plot import PANELS, plot_trajectory

    if not isinstance(result, OverlayResult):
        raise ValueError("result must be the OverlayResult returned by siflow.overlay.analyze")
    work = _with_elr(traj, result.lr)
    if xlog is None:
        xlog = _looks_log_spaced(traj.step)
    if title is None:
        src = traj.meta.get("source") or traj.meta.get("path") or "trajectory"
        hp = ""
        if result.lr is not None and result.wd is not None:
            hp = f"  lr={result.lr:g}, wd={result.wd:g}"
            if result.momentum:
                hp += f", momentum={result.momentum:g}"
        title = f"{Path(str(src)).name}{hp}  [{result.regime}]"
    if zoom is None:
        zoom = _default_zoom(work, result)
    # panels of columns the log lacks are left out (analyze's notes say what is missing)
    panels = tuple(p for p, (col, _) in PANELS.items() if work.has(col)) or tuple(PANELS)
    return plot_trajectory(
        work,
        panels=panels,
        events=result.events,
        lines=theory_lines(result, work),
        path=path,
        title=title,
        xlog=xlog,
        zoom=zoom,
    )


def _default_zoom(traj: Trajectory, result: OverlayResult) -> tuple[float, float] | None:
    """The last three periods when there are more than six events, else no close-up."""
    ev = result.events
    if len(ev) <= 6 or not len(traj):
        return None
    start = float(ev.steps[-4])
    stop = float(traj.step[-1])
    start -= 0.05 * (stop - start)
    return (start, stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m siflow.overlay`` (see :mod:`siflow._overlay_cli`)."""
    from siflow._overlay_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    import sys

    sys.exit(main())
