"""Theory on a trajectory: measured vs predicted equilibrium, decay, periods and checks.

:func:`analyze` measures, on any :class:`~siflow.trajectory.Trajectory` (a
simulation or a real log read by :func:`siflow.io.read`):

- destabilization events and periods (:func:`siflow.periods.find_events`), the
  effective LR just before each destabilization;
- equilibrium statistics over the stationary part
  (:func:`siflow.periods.stationary_part`): RMS angular update, mean norm,
  RMS and mean sphere gradient norm ``g~ = rho |grad L(w)|``;
- the per-step norm decay rate between events
  (:func:`siflow.periods.measure_decay_rate`);
- the exact scale-invariance checks: the logged norm replayed from its first value
  with the logged ``lr``, ``wd`` and ``g~`` (:func:`siflow.theory.sgd_norm_trajectory`),
  the angle law (:func:`siflow.theory.sgd_step_angle`) and the one-step radial law
  (:func:`siflow.theory.sgd_radial_norm`, heavy ball
  :func:`siflow.theory.heavy_ball_radial_norm`): whether the theory applies to the
  log at all;
- the same statistics and checks per SI group (layer) when the log has per-group
  columns ``rho/<group>``, ``angular_update/<group>``, ``grad_norm_sphere/<group>``;

and predicts with the theory of the optimizer that ran (``optimizer=``: SGD, heavy
ball, Nesterov, AdamW, Lion; :func:`siflow.theory.equilibrium`) at every row's
``lr(t)``, ``wd(t)`` (from ``schedule=``, an ``lr``/``wd`` column of the log, or
constants): the equilibrium angular update ``Delta*(t)`` and norm ``rho*(t)`` (per
group of ``C`` elements for AdamW/Lion), the decay rate, the stability threshold
where the optimizer's theory defines one, and the period from the measured norm
ratio. Every formula lives in :mod:`siflow.theory`; this module only selects and
averages.

:func:`draw` puts the predictions on the four-panel figure of
:func:`siflow.plot.plot_trajectory`. ``python -m siflow.overlay LOG`` does both
from the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from siflow import theory
from siflow._fileio import json_ready
from siflow._validate import (
    beta_number,
    check_lr_wd,
    check_positive,
    lr_wd_numbers,
    momentum_number,
    positive_number,
)
from siflow.periods import (
    Events,
    _optimizer_name,
    classify,
    decay_phases,
    find_events,
    measure_decay_rate,
    phase_lock_note,
    resolution_note,
    sharpness_before_events,
    stationary_part,
)
from siflow.schedules import parse_schedule
from siflow.trajectory import Trajectory, forward_filled

__all__ = [
    "OverlayResult",
    "EventStats",
    "EquilibriumStats",
    "Predictions",
    "Checks",
    "GroupResult",
    "Curves",
    "analyze",
    "draw",
    "theory_lines",
    "predict_period_at",
    "main",
]


@dataclass
class EventStats:
    """Destabilization events and periods, in the log's time unit (``time_unit``)."""

    n_events: int = 0
    event_steps: list[int] = field(default_factory=list)
    periods: list[float] = field(default_factory=list)
    period_median: float | None = None
    elr_at_events: list[float | None] = field(default_factory=list)
    elr_at_events_median: float | None = None
    norm_ratio_median: float | None = None
    rise_steps_median: float | None = None
    detection_signal: str = ""


@dataclass
class EquilibriumStats:
    """Measured statistics over the stationary part, and the measured decay rate."""

    stationary_start: int | None = None
    stationary_stop: int | None = None
    angular_update_rms: float | None = None
    angular_update_source: str | None = None
    norm_mean: float | None = None
    elr_mean: float | None = None
    grad_norm_sphere_mean: float | None = None
    grad_norm_sphere_rms: float | None = None
    decay_rate_measured: float | None = None


@dataclass
class Predictions:
    """What the optimizer's theory predicts for this log (``None``: not defined or not
    computable; ``formulas`` names the closed form behind each value, or why none)."""

    angular_update_predicted: float | None = None
    norm_predicted: float | None = None
    elr_predicted: float | None = None
    decay_rate_predicted: float | None = None
    predicted_period: float | None = None
    sharpness: float | None = None
    elr_threshold: float | None = None
    critical_norm: float | None = None
    n_params: float | None = None
    predict_lr: float | None = None
    predict_wd: float | None = None
    predict_momentum: float | None = None
    predicted_period_at: float | None = None
    predicted_period_method: str | None = None
    formulas: dict[str, str] = field(default_factory=dict)


@dataclass
class Checks:
    """Exact scale-invariance checks (largest or median relative deviation).

    ``norm_replay_error_max``: the logged norm against the SGD norm recursion replayed
    from the first logged norm with the logged lr, wd and ``g~``;
    ``angle_law_error_median``: the logged angle against ``tan Delta = elr g~/(1 - lr wd)``;
    ``radial_law_error_max``: the logged norm against the one-step radial law
    (SGD: ``rho' cos Delta = (1 - lr wd) rho``; heavy ball: with the momentum term).
    ``scale_invariance``: ``"holds"`` (all below 1e-3), ``"fails"`` (one above 1e-2),
    ``"approximate"`` or ``"n/a"``; ``check_rows``: consecutive rows used.
    """

    norm_replay_error_max: float | None = None
    angle_law_error_median: float | None = None
    radial_law_error_max: float | None = None
    check_rows: int = 0
    scale_invariance: str = "n/a"
    check_notes: list[str] = field(default_factory=list)


@dataclass
class GroupResult:
    """One SI group (layer): measured against the equilibrium of its optimizer."""

    name: str
    n_params: float | None = None
    angular_update_rms: float | None = None
    angular_update_predicted: float | None = None
    norm_mean: float | None = None
    norm_predicted: float | None = None
    grad_norm_sphere_rms: float | None = None
    norm_replay_error_max: float | None = None
    angle_law_error_median: float | None = None
    radial_law_error_max: float | None = None
    note: str | None = None


@dataclass
class Curves:
    """Per-row predictions (NaN where undefined): ``lr(t)``, ``wd(t)``, ``Delta*(t)``,
    ``rho*(t)``, ``elr*(t)`` at the trajectory's steps, and the per-row heavy-ball
    momentum ``mu(t)`` the laws took (``None``: 0 or the result's constant one)."""

    step: np.ndarray
    lr: np.ndarray
    wd: np.ndarray
    angular_update: np.ndarray | None = None
    norm: np.ndarray | None = None
    elr: np.ndarray | None = None
    momentum: np.ndarray | None = None


_SECTIONS: dict[str, type] = {
    "event_stats": EventStats,
    "equilibrium": EquilibriumStats,
    "predictions": Predictions,
    "checks": Checks,
}
#: Flat field name -> the section of :class:`OverlayResult` that holds it.
_OWNER: dict[str, str] = {f.name: sec for sec, cls in _SECTIONS.items() for f in fields(cls)}


@dataclass
class OverlayResult:
    """Measured and predicted quantities of one trajectory (see :func:`analyze`).

    Grouped in ``event_stats`` (:class:`EventStats`), ``equilibrium``
    (:class:`EquilibriumStats`), ``predictions`` (:class:`Predictions`), ``checks``
    (:class:`Checks`) and ``groups`` (a :class:`GroupResult` per SI group); every
    field of a section is also readable and writable as an attribute of the result
    (``result.period_median``), and :meth:`as_flat_dict` gives the flat JSON keys.
    ``events`` is the :class:`~siflow.periods.Events` found, ``curves`` the per-row
    predictions. Floats are ``None`` where the log lacks what the field needs;
    ``notes`` says why. Times (event steps, periods, rise, stationary range, the
    measured decay rate) are in ``time_unit``: optimizer steps, or epochs when the
    log's time axis is epochs (``traj.meta["time_unit"] == "epoch"``, steps per epoch
    unknown; the per-step predictions are then n/a). Angles in radians per step.
    """

    lr: float | None = None
    wd: float | None = None
    momentum: float = 0.0
    optimizer: str = "sgd"
    betas: list[float] | None = None
    lr_schedule: bool = False
    wd_schedule: bool = False
    momentum_schedule: bool = False
    schedule: str | None = None
    regime: str = ""
    time_unit: str = "step"
    event_stats: EventStats = field(default_factory=EventStats)
    equilibrium: EquilibriumStats = field(default_factory=EquilibriumStats)
    predictions: Predictions = field(default_factory=Predictions)
    checks: Checks = field(default_factory=Checks)
    groups: list[GroupResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: Events = field(default_factory=Events, repr=False)
    curves: Curves | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:
        section = _OWNER.get(name)
        if section is None or section not in self.__dict__:
            raise AttributeError(f"OverlayResult has no attribute {name!r}")
        return getattr(self.__dict__[section], name)

    def __setattr__(self, name: str, value: Any) -> None:
        section = _OWNER.get(name)
        if section is not None and section in self.__dict__:
            setattr(self.__dict__[section], name, value)
        else:
            object.__setattr__(self, name, value)

    def as_flat_dict(self) -> dict[str, Any]:
        """JSON-ready flat dict (the documented keys; NaN becomes ``None``).

        Top-level fields, then every field of each section under its own name, then
        ``groups`` as a list of dicts; ``events`` and ``curves`` are left out.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _SECTIONS:
                out.update(asdict(getattr(self, f.name)))
            elif f.name == "groups":
                out["groups"] = [asdict(g) for g in self.groups]
            elif f.name not in ("events", "curves"):
                out[f.name] = getattr(self, f.name)
        return {k: json_ready(v) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """Same as :meth:`as_flat_dict`."""
        return self.as_flat_dict()

    def to_json(self) -> str:
        """:meth:`as_flat_dict` as strict JSON (sorted keys)."""
        return json.dumps(self.as_flat_dict(), sort_keys=True, allow_nan=False)


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


def _log_decay(lr: float, wd: float, momentum: float, nesterov: bool = False) -> float:
    """``ln decay_factor`` (negative): per-step log change of the norm at zero gradient."""
    return -float(theory.decay_rate(lr, wd, momentum, nesterov=nesterov))


def predict_period_at(
    period: float,
    lr: float,
    wd: float,
    predict_lr: float,
    predict_wd: float,
    momentum: float = 0.0,
    *,
    nesterov: bool = False,
) -> float:
    """Period at ``(predict_lr, predict_wd)`` calibrated on a period measured at ``(lr, wd)``.

    Scale symmetry (docs/theory.md section 0, exact for SI losses): SGD+WD from
    ``(c lr, wd/c)`` follows the same directions step by step, so the period depends
    on ``lr*wd`` only, and equal products give equal periods. Between products the
    decay law of docs/theory.md section 2, ``T = ln(rho_max/rho_crit) / (-ln q)`` with
    ``q`` the per-step norm factor (:func:`siflow.theory.decay_factor`; heavy ball's
    with ``momentum``, Nesterov's with ``nesterov=True``), is used
    with the norm ratio (and the escape time, in units of ``1/(-ln q)``) taken as
    unchanged::

        T2 = T1 * ln q(lr, wd) / ln q(predict_lr, predict_wd)

    Exact for equal ``lr*wd``; otherwise first order in the change of
    ``ln(rho_max/rho_crit)``, which the theory expects to vary only
    logarithmically with ``lr*wd``.
    """
    t1 = positive_number("period", period)
    lr_a, wd_a = lr_wd_numbers(lr, wd)
    lr_b = positive_number("predict_lr", predict_lr)
    wd_b = positive_number("predict_wd", predict_wd)
    check_lr_wd(lr_b, wd_b)
    mu = momentum_number(momentum)
    if lr_a * wd_a == lr_b * wd_b:
        return t1
    return t1 * _log_decay(lr_a, wd_a, mu, nesterov) / _log_decay(lr_b, wd_b, mu, nesterov)


def _sharpness_at_events(traj: Trajectory, events: Events) -> float | None:
    """Median over events of the sharpness each destabilized in
    (:func:`siflow.periods.sharpness_before_events`: late in its decay phase, before the
    burst). Without events (or measurements before them), the median over the run."""
    if not traj.has("sharpness_sphere"):
        return None
    col = traj.sharpness_sphere
    assert col is not None
    if not np.any(np.isfinite(col)):
        return None
    vals = sharpness_before_events(traj, events) if len(events) else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        vals = col[np.isfinite(col)]
    return float(np.median(vals))


_DEFAULT_BETAS = {"adamw": (0.9, 0.999), "lion": (0.9, 0.99)}
#: Relative errors of the exact checks: below HOLDS the theory applies, above FAILS not.
CHECK_HOLDS, CHECK_FAILS = 1e-3, 1e-2


@dataclass
class _Hyper:
    """Resolved hyperparameters: per-row ``lr``/``wd`` (None when unknown), the
    per-row heavy-ball momentum ``mu_rows`` (SGD family; None: ``momentum`` at every
    row) and where ``lr``/``wd`` came from (``lr_source``, for the notes)."""

    lr_rows: np.ndarray | None
    wd_rows: np.ndarray | None
    lr: float | None
    wd: float | None
    momentum: float
    optimizer: str
    betas: tuple[float, float] | None
    lr_varies: bool
    wd_varies: bool
    schedule: str | None
    mu_rows: np.ndarray | None = None
    lr_source: str = "the logged lr"
    wd_source: str = "the logged wd"

    @property
    def known(self) -> bool:
        return self.lr_rows is not None and self.wd_rows is not None

    @property
    def sgd_family(self) -> bool:
        return self.optimizer in ("sgd", "sgdm", "nesterov")

    @property
    def nesterov(self) -> bool:
        """PyTorch's Nesterov SGD: its own decay law and threshold (siflow.theory)."""
        return self.optimizer == "nesterov"

    @property
    def mu_varies(self) -> bool:
        return self.mu_rows is not None and bool(np.ptp(self.mu_rows) > 0)

    @property
    def varies(self) -> bool:
        """Whether any hyperparameter the laws take changes from row to row."""
        return self.lr_varies or self.wd_varies or self.mu_varies

    def mu(self, n: int) -> np.ndarray:
        """The heavy-ball momentum at each of the ``n`` rows (0 outside the SGD family)."""
        if self.optimizer not in ("sgd", "sgdm", "nesterov"):
            return np.zeros(n)
        return self.mu_rows if self.mu_rows is not None else np.full(n, self.momentum)


def _log_optimizer(traj: Trajectory, notes: list[str]) -> str:
    """The optimizer named by the log's metadata, as a :data:`siflow.theory.OPTIMIZERS` key.

    When a reader inferred it (``meta["optimizer_source"]``: Lightning's ``lr-AdamW``
    column, Hugging Face's default), a note says where it came from; a log that names
    none is taken as SGD, with a note.
    """
    raw = _optimizer_name(traj)
    if not raw:
        notes.append(
            "the log does not name its optimizer: the SGD (heavy-ball) laws are used; pass "
            "optimizer= (adamw, lion, ...) if another ran"
        )
        return "sgd"
    if raw == "sgd" and traj.meta.get("nesterov"):
        return "nesterov"
    if raw in theory.OPTIMIZERS:  # PyTorch class names lower-cased: sgd, adamw, lion
        source = traj.meta.get("optimizer_source")
        if source:
            notes.append(
                f"optimizer={raw} as the log says ({source}); pass optimizer= if another ran"
            )
        return raw
    notes.append(
        f"the log names optimizer {raw!r}, which siflow.theory has no closed forms for; "
        f"predictions use SGD (pass optimizer= one of {', '.join(theory.OPTIMIZERS)})"
    )
    return "sgd"


def _given_optimizer(traj: Trajectory, optimizer: str, notes: list[str]) -> str:
    """``optimizer=`` checked; a note when the log names another one."""
    name = theory.check_optimizer(optimizer)
    raw = _optimizer_name(traj)
    if raw and raw != name and not (raw == "sgd" and name in ("sgdm", "nesterov")):
        source = traj.meta.get("optimizer_source")
        where = f", {source}" if source else ""
        notes.append(f"the log's optimizer ({raw}{where}) is ignored: optimizer={name} was given")
    return name


def _per_row(
    traj: Trajectory, name: str, value: float | None, spec: str | None
) -> tuple[np.ndarray | None, str | None]:
    """Per-row values of ``lr`` or ``wd`` and the spec string of a schedule.

    Order: a schedule spec (evaluated at the logged steps, its peak defaulting to
    ``value`` or the log's metadata), an explicit ``value``, a column of the log
    named ``name`` (or the column :func:`siflow.io.read` recorded for it in
    ``meta["columns"]``; blank cells hold the metadata value, as
    :class:`siflow.torch_probe.SIRecorder` writes them, else the last value
    before), the metadata value.
    """
    meta_value = traj.meta.get(name)
    if spec is not None:
        base = value if value is not None else meta_value
        sched = parse_schedule(spec, base=None if base is None else float(base))
        return np.asarray(sched(traj.step), dtype=np.float64), sched.spec
    if value is not None:
        return np.full(len(traj), float(value)), None
    col = _column_rows(traj, name)
    if col is not None:
        return col, None
    if meta_value is not None:
        return np.full(len(traj), float(meta_value)), None
    return None, None


def _column_rows(traj: Trajectory, name: str) -> np.ndarray | None:
    """The log's per-row column ``name`` (``lr``, ``wd``, ``momentum``, ``beta1``) as
    :func:`_per_row` reads it without an explicit value, or None when there is none."""
    if traj.logged(name) is None:
        return None
    meta_value = traj.meta.get(name)
    if name == "beta1" and meta_value is None:
        raw = traj.meta.get("betas")
        meta_value = raw[0] if isinstance(raw, (list, tuple)) and len(raw) == 2 else None
    col = np.array(traj.logged(name), dtype=np.float64)
    if meta_value is not None:
        col[np.isnan(col)] = float(meta_value)
    first = np.flatnonzero(np.isfinite(col))
    return forward_filled(col, float(col[first[0]])) if first.size else None


def _given_against_column(
    traj: Trajectory, name: str, value: float | None, notes: list[str], replaced_by: str
) -> None:
    """Refuse a constant ``name=`` that contradicts a varying column of the log.

    One number cannot stand for a column that changes from row to row: the laws would
    be checked with hyperparameters the run did not use. A constant column equal to
    the value is fine; a constant column that differs is ignored, with a note.
    """
    col = None if value is None else _column_rows(traj, name)
    meta = traj.meta.get(name)
    if col is None and value is not None and isinstance(meta, (int, float)) and meta != value:
        notes.append(f"the log's {name} ({meta:.6g}) is ignored: {name}={value:.6g} was given")
    if col is None or value is None or np.allclose(col, value, rtol=1e-12, atol=0.0):
        return
    lo, hi = float(np.nanmin(col)), float(np.nanmax(col))
    if hi > lo:
        raise ValueError(
            f"{name}= was given ({value:.6g}) but the log's {name} column varies from "
            f"{lo:.6g} to {hi:.6g}; drop {name}= to use the column row by row"
            f"{replaced_by}"
        )
    notes.append(f"the log's {name} column ({lo:.6g}) is ignored: {name}={value:.6g} was given")


def _check_rows(name: str, rows: np.ndarray) -> np.ndarray:
    """Per-row ``lr``/``wd``: finite and ``>= 0`` (zero rows get no prediction)."""
    if not np.all(np.isfinite(rows)) or np.any(rows < 0):
        bad = rows[~np.isfinite(rows) | (rows < 0)][0]
        raise ValueError(
            f"{name} must be finite and >= 0 at every row, got {float(bad)!r}; "
            f"check the log's {name} column or the schedule"
        )
    return rows


def _resolve_hyper(
    traj: Trajectory,
    lr: float | None,
    wd: float | None,
    momentum: float | None,
    optimizer: str | None,
    betas: tuple[float, float] | None,
    schedule: str | None,
    wd_schedule: str | None,
    notes: list[str],
) -> _Hyper:
    """Hyperparameters from the arguments first, then the log (columns, metadata)."""
    if lr is not None:
        lr = positive_number("lr", lr)
    if wd is not None:
        wd = positive_number("wd", wd)
    name = (
        _given_optimizer(traj, optimizer, notes)
        if optimizer is not None
        else _log_optimizer(traj, notes)
    )
    mu, mu_rows = _resolve_momentum(traj, name, momentum, notes)
    if name in ("adamw", "lion") and mu:
        notes.append(f"momentum={mu:g} is not used by {name} (its betas are)")
        mu = 0.0
    if name == "sgdm" and mu == 0.0 and mu_rows is None:
        notes.append("optimizer='sgdm' with momentum 0 is plain SGD; pass momentum=")
    b: tuple[float, float] | None = None
    if name in _DEFAULT_BETAS:
        raw = betas if betas is not None else traj.meta.get("betas") or _DEFAULT_BETAS[name]
        if len(raw) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {raw!r}")
        b = (beta_number("beta1", raw[0]), beta_number("beta2", raw[1]))
        b = _resolve_beta1(traj, name, b, betas is not None, notes)
    if schedule is None:
        _given_against_column(traj, "lr", lr, notes, ", or pass schedule= to replace it")
    if wd_schedule is None:
        _given_against_column(traj, "wd", wd, notes, ", or pass wd_schedule= to replace it")
    lr_rows, lr_spec = _per_row(traj, "lr", lr, schedule)
    wd_rows, wd_spec = _per_row(traj, "wd", wd, wd_schedule)
    if lr_rows is not None:
        lr_rows = _check_rows("lr", lr_rows)
    if wd_rows is not None:
        wd_rows = _check_rows("wd", wd_rows)
    if lr_rows is not None and wd_rows is not None and np.any(lr_rows * wd_rows >= 1):
        raise ValueError("lr*wd must be < 1 at every row; check lr, wd and the schedule")
    lr_varies = lr_rows is not None and bool(np.ptp(lr_rows) > 0)
    wd_varies = wd_rows is not None and bool(np.ptp(wd_rows) > 0)
    lr_value = None if lr_rows is None else float(lr if lr is not None else np.max(lr_rows))
    wd_value = None if wd_rows is None else float(wd if wd is not None else np.max(wd_rows))
    if lr_rows is None or wd_rows is None:
        missing = " and ".join(n for n, r in (("lr", lr_rows), ("wd", wd_rows)) if r is None)
        notes.append(
            f"lr and wd are needed for the predictions; pass {missing}= "
            f"(the log records neither a value nor a column for {missing})"
        )
    spec = "; ".join(f"{n}: {s}" for n, s in (("lr", lr_spec), ("wd", wd_spec)) if s) or None
    return _Hyper(
        lr_rows, wd_rows, lr_value, wd_value, mu, name, b, lr_varies, wd_varies, spec, mu_rows,
        lr_source=_source("lr", lr, lr_spec, traj),
        wd_source=_source("wd", wd, wd_spec, traj),
    )  # fmt: skip


def _source(name: str, value: float | None, spec: str | None, traj: Trajectory) -> str:
    """Where the per-row ``lr`` (``wd``) came from, as the notes name it."""
    if spec is not None:
        return f"the {name} schedule {spec}"
    if value is not None:
        ignored = " (the log's column is ignored)" if traj.logged(name) is not None else ""
        return f"{name}={value:.6g}{ignored}"
    return f"the logged {name}"


def _resolve_momentum(
    traj: Trajectory, name: str, momentum: float | None, notes: list[str]
) -> tuple[float, np.ndarray | None]:
    """The heavy-ball momentum: one value and, when the log's ``momentum`` column
    varies (SGD family; e.g. PyTorch's OneCycleLR cycles it), the per-row values.

    Blank rows of the column hold ``meta["momentum"]``, as for ``lr``. An explicit
    ``momentum=`` that contradicts a varying column is refused. The single value is the
    metadata's (else the column's median) and is what the laws take when the column is
    constant; the per-row values go to every heavy-ball law that takes them.
    """
    if momentum is not None:
        momentum = momentum_number(momentum)
    if name not in ("sgd", "sgdm", "nesterov"):
        return momentum_number(traj.momentum) if momentum is None else momentum, None
    _given_against_column(traj, "momentum", momentum, notes, "")
    if momentum is not None:
        return momentum, None
    col = _column_rows(traj, "momentum")
    if col is None:
        return momentum_number(traj.momentum), None
    if not np.all(np.isfinite(col)) or np.any((col < 0) | (col >= 1)):
        bad = col[~np.isfinite(col) | (col < 0) | (col >= 1)][0]
        raise ValueError(
            f"momentum must be in [0, 1) at every row, got {float(bad)!r}; check the log's "
            f"momentum column"
        )
    if np.ptp(col) == 0:
        return float(col[0]), None
    meta = traj.meta.get("momentum")
    mu = momentum_number(meta) if meta else float(np.median(col))
    notes.append(
        f"momentum varies per row (the log's momentum column: {np.min(col):.4g} to "
        f"{np.max(col):.4g}, e.g. OneCycleLR's cycle_momentum): the radial law, the decay "
        f"rate and the equilibria take it per row; the period and the stability threshold "
        f"take its median over the stationary rows"
    )
    return mu, col


def _resolve_beta1(
    traj: Trajectory,
    name: str,
    betas: tuple[float, float],
    given: bool,
    notes: list[str],
) -> tuple[float, float]:
    """``(beta1, beta2)`` of AdamW/Lion with the log's ``beta1`` column taken into account.

    A constant column gives beta1 (unless ``betas=`` was given); a varying one
    (OneCycleLR cycles it) cannot be taken by the closed forms, which assume one
    beta1: the given one, else the median of the column, is used and a note says so.
    """
    col = _column_rows(traj, "beta1")
    if col is None:
        return betas
    if not np.all(np.isfinite(col)) or np.any((col < 0) | (col >= 1)):
        raise ValueError("beta1 must be in [0, 1) at every row; check the log's beta1 column")
    if np.ptp(col) == 0:
        return betas if given else (float(col[0]), betas[1])
    b1 = betas[0] if given else float(np.median(col))
    used = "the given betas=" if given else "its median"
    notes.append(
        f"beta1 varies per row (the log's beta1 column: {np.min(col):.4g} to {np.max(col):.4g}, "
        f"e.g. OneCycleLR's cycle_momentum): the {name} equilibrium forms assume a constant "
        f"beta1 and use {used} {b1:.4g}"
    )
    return (b1, betas[1])


def analyze(
    traj: Trajectory,
    *,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    optimizer: str | None = None,
    betas: tuple[float, float] | None = None,
    schedule: str | None = None,
    wd_schedule: str | None = None,
    n_params: float | None = None,
    group_sizes: Mapping[str, float] | None = None,
    sharpness: float | None = None,
    predict_lr: float | None = None,
    predict_wd: float | None = None,
    predict_momentum: float | None = None,
    events: Events | None = None,
    detector: Mapping[str, Any] | None = None,
) -> OverlayResult:
    """Measure events, periods, equilibrium statistics and exact checks; predict them.

    Parameters
    ----------
    traj : Trajectory
        Any trajectory; which fields need which columns is listed below.
    lr, wd : float, optional
        Constant hyperparameters; default: the log's ``lr``/``wd`` column (per row)
        or ``traj.meta``. A value given while the log's column varies is refused
        (``ValueError``: drop it, or pass ``schedule=``); one that differs from a
        constant column replaces it, with a note.
    momentum : float, optional
        Heavy-ball momentum (SGD family); default: the log's per-row ``momentum``
        column (blank rows hold ``meta["momentum"]``; e.g. OneCycleLR cycles it),
        else ``traj.meta`` (else 0). A value that contradicts a varying column is
        refused (``ValueError``).
    optimizer : {"sgd", "sgdm", "nesterov", "adamw", "lion"}, optional
        Whose theory predicts (:func:`siflow.theory.equilibrium`); default from
        ``meta["optimizer"]`` (PyTorch class names are understood), else ``"sgd"``.
    betas : (float, float), optional
        AdamW/Lion ``(beta1, beta2)``; default ``meta["betas"]``, else (0.9, 0.999)
        for AdamW and (0.9, 0.99) for Lion. A log's ``beta1`` column gives beta1;
        when it varies the closed forms (which assume one beta1) take its median and
        a note says so.
    schedule, wd_schedule : str, optional
        Spec of the lr (wd) schedule (:func:`siflow.schedules.parse_schedule`, e.g.
        ``"cosine:peak=0.5,warmup=500,min=0.005,steps=20000"``), evaluated at the
        logged steps; its peak defaults to ``lr`` (``wd``). Every prediction then
        uses the per-row ``lr(t)``, ``wd(t)``: the equilibrium curves
        ``Delta*(t)``, ``rho*(t)`` (in ``result.curves``), the decay between events
        ``prod(1 - lr_t wd_t)``, the checks.
    n_params : float, optional
        Elements ``C`` of the SI weights behind ``rho`` (AdamW/Lion norm);
        default ``meta["n_params"]`` or the sum of ``group_sizes``.
    group_sizes : mapping of str to float, optional
        Elements per SI group for the per-group AdamW/Lion norms; default
        ``meta["group_sizes"]`` or ``numel/<group>`` columns.
    sharpness : float, optional
        Top Riemannian Hessian eigenvalue ``S`` on the unit sphere at the minimum,
        for the stability threshold ``elr < 2 (1 + mu - lr wd) / S``
        (:func:`siflow.theory.stability_threshold_elr`; SGD and heavy ball only) and
        the critical norm (:func:`siflow.theory.critical_norm`). Default:
        ``meta["sharpness_min"]``, else the median ``sharpness_sphere`` at the
        events (or over the run).
    predict_lr, predict_wd : float, optional
        Another ``(lr, wd)`` at which to predict the period, calibrated on this log;
        either one alone keeps the other at this log's value. With a sharpness the
        cycle model of :func:`siflow.predict.predict_period` is used (SGD family);
        otherwise the decay law of :func:`predict_period_at`.
        ``predicted_period_method`` says which.
    predict_momentum : float, optional
        The heavy-ball momentum at which to predict the period (SGD family; default:
        this log's). A momentum other than the log's is predicted by
        :func:`siflow.predict.transfer_period` (the decay law with the residual
        gradient push measured on this log and the shift of the heavy-ball stability
        threshold ``2 (1 + mu - lr wd)/S``), from three or more events logged in steps.
    events : Events, optional
        Reuse events found before (default: ``find_events(traj)``).
    detector : mapping, optional
        Keyword arguments for :func:`siflow.periods.find_events` (e.g.
        ``{"min_rise": 0.05, "signal": "rho"}``); ``lr``, ``wd`` and ``momentum``
        are passed from above.

    Returns
    -------
    OverlayResult
        What each field needs:

        - ``n_events``, ``event_steps``, ``periods``, ``period_median``: rho, elr or loss.
        - ``elr_at_events*``: elr, or rho with lr.
        - ``angular_update_rms``: ``angular_update``; without it, from the angles and
          norms of every moving group (:func:`siflow.theory.total_angular_update`,
          first order in the angles; ``angular_update_source`` says "derived from
          groups"); else, for plain SGD, it is derived from
          ``tan Delta = elr g~ / (1 - lr wd)`` (exact for the discrete map; needs elr
          or rho, ``grad_norm_sphere``, lr, wd).
        - ``angular_update_predicted``: lr, wd (the RMS of ``Delta*(t)`` over the
          stationary rows under a schedule).
        - ``norm_mean``: rho. ``norm_predicted``, ``elr_predicted``: lr, wd and
          ``grad_norm_sphere`` (SGD family: the RMS of ``g~``, because the stationary
          balance of ``rho^2`` involves the mean of ``g~^2``) or ``n_params``
          (AdamW/Lion).
        - ``decay_rate_measured``: rho or elr and a decay phase.
          ``decay_rate_predicted``: lr, wd. Under a schedule (or a per-row momentum)
          it is the same least-squares slope as the measured one, over the same rows
          of each decay phase, of the zero-gradient law ``ln prod_s q(lr_s, wd_s, mu_s)``
          (:func:`siflow.theory.decay_rate` per row): the two compare like for like.
        - ``predicted_period``: two or more events with rho, and lr, wd:
          ``ln(rho_peak_k / rho_before_{k+1}) / (-ln q) + rise`` with the medians of
          the measured norm ratio and rise time (a consistency check of the decay law).
          Under a schedule (or a per-row momentum) cycle by cycle, like for like with
          the measured periods: each cycle's rise plus the steps the free decay at each
          row's ``q`` takes from its peak to fall by the median ``ln`` ratio
          (:func:`siflow.theory.free_decay_steps`), the median over the cycles.
        - ``predicted_period_at``: a measured period, lr, wd, and predict_lr/wd/momentum.
          Under a schedule the decay law is calibrated on the free decay per cycle
          (:attr:`siflow.periods.Events.decay_before`) rather than on the period in
          steps, which mixes cycles run at different lrs.
        - ``norm_replay_error_max``, ``angle_law_error_median``,
          ``radial_law_error_max``: consecutive rows with rho, ``g~`` and/or
          ``angular_update``, lr, wd (:class:`Checks`).
        - ``groups``: per-group columns ``rho/<g>`` (and ``angular_update/<g>``,
          ``grad_norm_sphere/<g>``; REQ's ``layer_norm/<p>``, ``layer_angular_update/<p>``,
          ``layer_grad_norm/<p>`` are understood too).
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"traj must be a siflow Trajectory, got {type(traj).__name__}; "
            f"read a log with siflow.io.read(path)"
        )
    if len(traj) == 0:
        raise ValueError("the trajectory has no rows; pass a log with at least one step")
    notes: list[str] = []
    hp = _resolve_hyper(traj, lr, wd, momentum, optimizer, betas, schedule, wd_schedule, notes)
    if sharpness is not None:
        sharpness = positive_number("sharpness", sharpness)
    sizes = _group_sizes(traj, group_sizes)
    total_c = _total_size(traj, n_params, sizes)

    work = _working_copy(traj, hp)
    res = OverlayResult(
        lr=hp.lr,
        wd=hp.wd,
        momentum=hp.momentum,
        optimizer=hp.optimizer,
        betas=None if hp.betas is None else list(hp.betas),
        lr_schedule=hp.lr_varies,
        wd_schedule=hp.wd_varies,
        momentum_schedule=hp.mu_varies,
        schedule=hp.schedule,
    )
    if hp.lr_varies or hp.wd_varies:
        notes.append(_schedule_note(hp))
    if events is None:
        scalar = not hp.varies
        events = _find_events(work, hp, scalar, detector)
    res.events = events
    _event_stats(res, work, events, notes)
    st = stationary_part(work, events)
    rows = _rows_of(work, st)
    _measure_equilibrium(res, work, st, hp, rows, notes)
    res.predictions.n_params = total_c
    res.curves = _predict_equilibrium(res, work, hp, rows, total_c, notes)
    _measure_decay(res, work, events, notes)
    if hp.varies and res.predictions.decay_rate_predicted is not None:
        res.predictions.decay_rate_predicted = _decay_rate_same_window(work, events, hp)
        res.predictions.formulas["decay_rate"] = _WINDOW_DECAY
    _period_predictions(res, work, events, hp, rows, sharpness, notes)
    _resolution(res, work, events, notes)
    lock = phase_lock_note(work, events)
    if lock is not None:
        notes.append(lock)
    if predict_lr is not None or predict_wd is not None or predict_momentum is not None:
        _period_at(res, work, hp, rows, (predict_lr, predict_wd, predict_momentum), notes)
    res.checks = _exact_checks(
        work.step, work.rho, work.grad_norm_sphere, work.angular_update, hp, _window_of(work)
    )
    res.groups = [
        _analyze_group(work, name, hp, rows, sizes.get(name)) for name in _group_names(work)
    ]
    if traj.meta.get("time_unit") == "epoch":
        _epochs_not_steps(res, notes)
    res.notes = _si_notes(res, hp) + notes
    return res


def _resolution(res: OverlayResult, work: Trajectory, events: Events, notes: list[str]) -> None:
    """A note when the log resolves a cycle in too few rows for the detector
    (:func:`siflow.periods.resolution_note`), from the shorter of the measured period and
    the decay law's (a detector that misses events measures too long a period)."""
    estimates = [events.period_median]
    if work.meta.get("time_unit") != "epoch":  # the decay law's period is in steps
        estimates.append(res.predictions.predicted_period)
    finite = [float(p) for p in estimates if p is not None and math.isfinite(p)]
    note = resolution_note(work, min(finite)) if finite else None
    if note is not None:
        notes.append(note)


def _epochs_not_steps(res: OverlayResult, notes: list[str]) -> None:
    """A log timed in epochs (steps per epoch unknown): the per-step laws of
    :mod:`siflow.theory` (decay rate, the period from the decay law, the exact
    checks, which take consecutive rows for consecutive steps) cannot be compared
    with it; they become n/a, with the per-step decay rate kept in the note."""
    res.time_unit = "epoch"
    pred = res.predictions
    rate = pred.decay_rate_predicted
    per_step = "" if rate is None else f" (predicted decay rate {rate:.6g} per step)"
    pred.decay_rate_predicted = pred.predicted_period = None
    res.checks = Checks()
    for g in res.groups:
        g.norm_replay_error_max = g.angle_law_error_median = g.radial_law_error_max = None
        if g.note == "exact scale-invariance check fails":
            g.note = None
    notes.append(
        "the log's time axis is epochs (steps per epoch unknown): event times, periods, "
        f"rise times and the measured decay rate are per epoch, while the decay law, the "
        f"period from it and the exact scale-invariance checks are per optimizer "
        f"step{per_step}: n/a here; pass steps_per_epoch= to compare"
    )


def _find_events(
    work: Trajectory, hp: _Hyper, scalar: bool, detector: Mapping[str, Any] | None
) -> Events:
    """:func:`siflow.periods.find_events` with this run's hyperparameters.

    Under a schedule the per-row ``lr``/``wd`` travel in ``work.extra`` and no single
    value is passed (one value would misjudge the decay before each rise); a momentum
    that varies (one-cycle) is passed row by row.
    """
    options = dict(detector or {})
    taken = {"lr", "wd", "momentum"} & set(options)
    if taken:
        raise ValueError(
            f"detector= must not set {', '.join(sorted(taken))}; pass "
            f"{' and '.join(k + '=' for k in sorted(taken))} instead"
        )
    try:
        return find_events(
            work,
            lr=hp.lr if scalar else None,
            wd=hp.wd if scalar else None,
            momentum=(hp.mu_rows if hp.mu_varies else hp.momentum) if hp.sgd_family else 0.0,
            **options,
        )
    except TypeError as exc:
        raise ValueError(
            f"detector= holds a key find_events does not take ({exc}); see "
            f"help(siflow.periods.find_events)"
        ) from None


def _working_copy(traj: Trajectory, hp: _Hyper) -> Trajectory:
    """A copy with per-row ``lr``/``wd`` in ``extra`` and ``elr = lr(t)/rho^2`` filled in.

    Under a schedule the constant ``meta`` values are removed so that nothing
    downstream mistakes one value for the whole run.
    """
    work = traj[slice(None)]
    # the detector takes Nesterov's decay law from these
    work.meta.update(optimizer=hp.optimizer, nesterov=hp.nesterov)
    if hp.lr_rows is not None:
        work.extra["lr"] = hp.lr_rows
    if hp.wd_rows is not None:
        work.extra["wd"] = hp.wd_rows
    if hp.lr_varies or hp.wd_varies:
        work.meta["lr"] = work.meta["wd"] = None
    if work.elr is None and work.rho is not None and hp.lr_rows is not None:
        work.elr = np.asarray(theory.effective_lr(hp.lr_rows, work.rho))
    return work


def _schedule_note(hp: _Hyper) -> str:
    parts = []
    for name, rows, varies in (("lr", hp.lr_rows, hp.lr_varies), ("wd", hp.wd_rows, hp.wd_varies)):
        if varies and rows is not None:
            parts.append(f"{name} from {np.min(rows):.4g} to {np.max(rows):.4g}")
    src = f" ({hp.schedule})" if hp.schedule else " (the log's columns)"
    return (
        f"schedule{src}: {', '.join(parts)}; predictions use lr(t), wd(t) per row and "
        f"are averaged over the stationary rows"
    )


def _rows_of(work: Trajectory, part: Trajectory) -> np.ndarray:
    """Boolean mask of the rows of ``work`` inside the (contiguous) ``part``."""
    if not len(part):
        return np.zeros(len(work), dtype=bool)
    return (work.step >= part.step[0]) & (work.step <= part.step[-1])


def _event_stats(res: OverlayResult, work: Trajectory, events: Events, notes: list[str]) -> None:
    ev = res.event_stats
    ev.detection_signal = events.signal
    ev.n_events = len(events)
    ev.event_steps = [int(s) for s in events.steps]
    ev.periods = [float(p) for p in events.periods]
    ev.period_median = _f(events.period_median)
    ev.elr_at_events = [_f(v) for v in events.elr_before]
    elr_ev = _finite(events.elr_before)
    ev.elr_at_events_median = _f(np.median(elr_ev)) if elr_ev is not None else None
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


def _measure_equilibrium(
    res: OverlayResult,
    work: Trajectory,
    st: Trajectory,
    hp: _Hyper,
    rows: np.ndarray,
    notes: list[str],
) -> None:
    eq = res.equilibrium
    if len(st):
        eq.stationary_start = int(st.step[0])
        eq.stationary_stop = int(st.step[-1])
    rho = _finite(st.rho)
    eq.norm_mean = _f(np.mean(rho)) if rho is not None else None
    if rho is None:
        notes.append('norm statistics need a rho column (name it with mapping={"rho": COLUMN})')
    elr_st = _finite(st.elr)
    eq.elr_mean = _f(np.mean(elr_st)) if elr_st is not None else None
    g = _finite(st.grad_norm_sphere)
    if g is not None:
        eq.grad_norm_sphere_mean = _f(np.mean(g))
        eq.grad_norm_sphere_rms = _f(np.sqrt(np.mean(g**2)))
    elif hp.sgd_family:
        notes.append(
            "equilibrium norm prediction needs grad_norm_sphere (g~ = |w| |grad L(w)|; "
            'name it with mapping={"grad_norm_sphere": COLUMN})'
        )
    ang = _finite(st.angular_update)
    if ang is not None:
        eq.angular_update_rms = _f(np.sqrt(np.mean(ang**2)))
        eq.angular_update_source = "log"
        return
    from_groups = _total_angle_from_groups(work, rows)
    if from_groups is not None:
        eq.angular_update_rms, used, frozen = from_groups
        eq.angular_update_source = "derived from groups"
        left_out = f"; frozen group(s) {', '.join(frozen)} left out" if frozen else ""
        notes.append(
            f"angular update not in log: derived from the angles and norms of group(s) "
            f"{', '.join(used)} (first order in the angles: Delta^2 = sum_g rho_g^2 "
            f"Delta_g^2 / sum_g rho_g^2, siflow.theory.total_angular_update){left_out}"
        )
        return
    plain_sgd = hp.optimizer in ("sgd", "sgdm") and hp.momentum == 0.0 and not hp.mu_varies
    if plain_sgd and hp.known and st.elr is not None and st.grad_norm_sphere is not None:
        assert hp.lr_rows is not None and hp.wd_rows is not None
        derived = _finite(
            np.asarray(
                theory.sgd_step_angle(
                    hp.lr_rows[rows], hp.wd_rows[rows], st.elr, st.grad_norm_sphere
                )
            )
        )
        if derived is not None:
            eq.angular_update_rms = _f(np.sqrt(np.mean(derived**2)))
            eq.angular_update_source = "derived: tan(Delta) = elr*g~/(1-lr*wd)"
            notes.append("angular update not in log: derived from elr and grad_norm_sphere")
            return
    notes.append("angular update not in log (and not derivable: needs elr, g~, lr, wd, SGD)")


def _total_angle_from_groups(
    work: Trajectory, rows: np.ndarray
) -> tuple[float | None, list[str], list[str]] | None:
    """RMS over ``rows`` of the whole SI vector's angle from its groups' angles and norms.

    Every group with a norm column must have an angle column; groups that never move
    (frozen, angle 0 at every row) are left out. Returns ``(rms, groups used,
    frozen groups)``, or ``None`` when the groups cannot give the total.
    """
    cols = _group_columns(work)
    if not cols or any("angular_update" not in c for c in cols.values()):
        return None
    sel = rows if np.any(rows) else np.ones(len(work), dtype=bool)
    used, frozen = [], []
    for name, c in cols.items():
        ang = c["angular_update"][sel]
        (used if np.any(ang[np.isfinite(ang)] > 0) else frozen).append(name)
    if not used:
        return None
    angles = np.stack([cols[n]["angular_update"][sel] for n in used])
    norms = np.stack([cols[n]["rho"][sel] for n in used])
    total = _finite(np.asarray(theory.total_angular_update(angles, norms)).reshape(-1))
    if total is None:
        return None
    return _f(np.sqrt(np.mean(total**2))), used, frozen


def _formulas(hp: _Hyper) -> dict[str, str]:
    """The closed form behind each prediction for this optimizer, or why there is none."""
    name, mu = hp.optimizer, hp.momentum
    adaptive = "n/a: no effective-LR stability threshold is defined for adaptive updates"
    if name in ("sgd", "sgdm") and mu == 0.0:
        return {
            "angular_update": "cos Delta* = 1 - lr wd (exact)",
            "norm": "rho*^4 = lr g~^2 / (wd (2 - lr wd)) (exact for constant g~)",
            "elr": "elr* = lr / rho*^2",
            "decay_rate": "-ln(1 - lr wd) (exact at zero gradient)",
            "threshold": "2(1 - lr wd)/S (exact for the linearised map)",
        }
    if name in ("sgd", "sgdm"):
        return {
            "angular_update": "cos Delta* = 1 - lr wd/(1 + mu) (second-moment model)",
            "norm": "rho*^4 = lr g~^2 (1+mu) / (wd (1-mu) (2(1+mu) - lr wd)) (second moments)",
            "elr": "elr* = lr / rho*^2",
            "decay_rate": "-ln|dominant root of z^2 - (1+mu-lr wd) z + mu| (heavy ball)",
            "threshold": "2(1 + mu - lr wd)/S (quasi-static)",
        }
    if name == "nesterov":
        return {
            "angular_update": "sgdm_equilibrium_angle(nesterov=True) (second-moment model)",
            "norm": "sgdm_equilibrium_norm(nesterov=True) (second-moment model)",
            "elr": "elr* = lr / rho*^2",
            "decay_rate": "-ln|dominant root of z^2 - (1+mu)(1-lr wd) z + mu(1-lr wd)| (Nesterov)",
            "threshold": "(1 - lr wd + a^2/((1+mu) a + mu))/S, a = Nesterov decay factor "
            "(quasi-static)",
        }
    if name == "adamw":
        return {
            "angular_update": "cos Delta* = 1 - lr wd (1-b1)/(1 + b1 (1 - lr wd)) (model)",
            "norm": "rho*^2 = lr C (1-b1)(1+b1 q) / (wd (2-lr wd)(1+b1)(1-b1 q)), q = 1-lr wd",
            "elr": "n/a: AdamW's step does not scale as lr/rho^2",
            "decay_rate": "-ln(1 - lr wd) (decoupled, at zero update)",
            "threshold": adaptive,
        }
    return {
        "angular_update": "1 - cos Delta* = lr wd (q - lr wd S)/(q (1 + 2S)) (model)",
        "norm": "rho*^2 = lr^2 C (1 + 2S) / (1 - q^2), q = 1 - lr wd",
        "elr": "n/a: Lion's step does not scale as lr/rho^2",
        "decay_rate": "-ln(1 - lr wd) (decoupled, at zero update)",
        "threshold": adaptive,
    }


def _equilibrium_rows(
    hp: _Hyper, g: float | None, n_params: float | None
) -> dict[str, np.ndarray] | None:
    """:func:`siflow.theory.equilibrium` at every row (NaN where lr or wd is 0)."""
    if not hp.known:
        return None
    assert hp.lr_rows is not None and hp.wd_rows is not None
    ok = (hp.lr_rows > 0) & (hp.wd_rows > 0)
    out: dict[str, np.ndarray] = {}
    if not np.any(ok):
        return out
    eq = theory.equilibrium(
        hp.lr_rows[ok],
        hp.wd_rows[ok],
        g if hp.sgd_family and g is not None and g > 0 else None,
        hp.mu(hp.lr_rows.size)[ok],
        optimizer=hp.optimizer,
        betas=hp.betas or (0.9, 0.999),
        n_params=n_params if not hp.sgd_family else None,
    )
    for key in ("angular_update", "norm", "elr", "decay_rate"):
        if key in eq:
            col = np.full(hp.lr_rows.size, np.nan)
            col[ok] = eq[key]
            out[key] = col
    return out


def _average(key: str, col: np.ndarray | None, rows: np.ndarray) -> float | None:
    """The scalar prediction over the stationary rows: RMS for angles, else the mean."""
    if col is None:
        return None
    vals = _finite(col[rows] if np.any(rows) else col)
    if vals is None:
        return None
    return _f(np.sqrt(np.mean(vals**2)) if key == "angular_update" else np.mean(vals))


def _predict_equilibrium(
    res: OverlayResult,
    work: Trajectory,
    hp: _Hyper,
    rows: np.ndarray,
    n_params: float | None,
    notes: list[str],
) -> Curves | None:
    pred = res.predictions
    pred.formulas = _formulas(hp)
    if not hp.known:
        return None
    assert hp.lr_rows is not None and hp.wd_rows is not None
    g = res.equilibrium.grad_norm_sphere_rms
    if not hp.sgd_family and n_params is None:
        notes.append(
            f"{hp.optimizer} equilibrium norm needs the SI group's size C (pass n_params=, "
            f"or group_sizes= for the groups): n/a"
        )
    curves = _equilibrium_rows(hp, g, n_params) or {}
    if hp.varies:
        pred.angular_update_predicted = _average(
            "angular_update", curves.get("angular_update"), rows
        )
        pred.norm_predicted = _average("norm", curves.get("norm"), rows)
        pred.elr_predicted = _average("elr", curves.get("elr"), rows)
        pred.decay_rate_predicted = _average("decay_rate", curves.get("decay_rate"), rows)
    elif hp.lr is not None and hp.wd is not None and hp.lr > 0 and hp.wd > 0:
        eq = theory.equilibrium(
            hp.lr,
            hp.wd,
            g if hp.sgd_family and g is not None and g > 0 else None,
            hp.momentum,
            optimizer=hp.optimizer,
            betas=hp.betas or (0.9, 0.999),
            n_params=n_params if not hp.sgd_family else None,
        )
        pred.angular_update_predicted = _f(eq["angular_update"])
        pred.norm_predicted = _f(eq.get("norm"))
        pred.elr_predicted = _f(eq.get("elr"))
        pred.decay_rate_predicted = _f(eq.get("decay_rate"))
    return Curves(
        step=work.step,
        lr=hp.lr_rows,
        wd=hp.wd_rows,
        angular_update=curves.get("angular_update"),
        norm=curves.get("norm"),
        elr=curves.get("elr"),
        momentum=hp.mu_rows if hp.mu_varies else None,
    )


#: ``formulas["decay_rate"]`` when the hyperparameters change from row to row.
_WINDOW_DECAY = (
    "least-squares slope of -ln prod_s q(lr_s, wd_s, mu_s) over the measured slope's own rows "
    "(q = decay_factor per row)"
)


def _free_decay_rows(hp: _Hyper, n: int) -> np.ndarray:
    """The zero-gradient decay rate ``decay_rate(lr_t, wd_t, mu_t)`` of each of the ``n``
    rows (:func:`siflow.theory.decay_rate`; 0 where the lr is 0, as in a warmup from 0 or a
    schedule annealed to 0). Needs ``hp.known``."""
    assert hp.lr_rows is not None and hp.wd_rows is not None
    lr, wd, mu = hp.lr_rows, hp.wd_rows, hp.mu(n)  # hp.mu: 0 outside the SGD family
    ok = lr > 0
    rate = np.zeros(n)
    if np.any(ok):
        rate[ok] = np.asarray(
            theory.decay_rate(lr[ok], wd[ok], mu[ok], nesterov=hp.nesterov), dtype=np.float64
        )
    return rate


def _decay_rate_same_window(work: Trajectory, events: Events, hp: _Hyper) -> float | None:
    """The predicted decay rate over the rows the measured one is fitted on.

    :func:`siflow.periods.measure_decay_rate` fits the slope of ``ln rho`` in each
    decay phase (skipping its first 10% of steps) and takes the median over phases.
    Under a schedule the zero-gradient law is ``ln rho_t = ln rho_0 - sum_{s<t}
    decay_rate(lr_s, wd_s, mu_s)`` (:func:`siflow.theory.decay_rate`; a row ``k``
    steps before the next stands for ``k`` steps, as in
    :func:`siflow.theory.decay_product`); the same fit on the same rows of that curve
    is the prediction. A log that follows the law exactly gives equal numbers.
    """
    if not hp.known or len(work) < 2:
        return None
    assert hp.lr_rows is not None
    lr = hp.lr_rows
    ok = lr > 0
    rate = _free_decay_rows(hp, len(work))
    gaps = np.diff(work.step).astype(np.float64)
    law = -np.concatenate(([0.0], np.cumsum(rate[:-1] * gaps)))  # ln rho_t - ln rho_0
    col = work.rho if work.rho is not None and np.sum(_positive(work.rho)) >= 2 else work.elr
    if col is None:
        return None
    if col is not work.rho:  # measured from -ln(elr)/2 = ln rho - ln(lr)/2, as periods does
        with np.errstate(divide="ignore"):
            law = law - 0.5 * np.log(np.where(ok, lr, np.nan))
    usable = _positive(col)
    slopes = []
    for start, stop in decay_phases(work, events):
        sel = np.flatnonzero(usable[start:stop]) + start
        s = work.step[sel].astype(np.float64)
        if s.size < 2:
            continue
        keep = s >= s[0] + 0.1 * (s[-1] - s[0])
        if np.count_nonzero(keep) >= 2:
            s, sel = s[keep], sel[keep]
        slope = np.polyfit(s - s.mean(), law[sel], 1)[0] if np.ptp(s) > 0 else math.nan
        if math.isfinite(slope):
            slopes.append(-slope)
    return _f(np.median(slopes)) if slopes else None


def _positive(col: np.ndarray) -> np.ndarray:
    return np.isfinite(col) & (col > 0)


def _measure_decay(res: OverlayResult, work: Trajectory, events: Events, notes: list[str]) -> None:
    if len(events) or res.regime == "converged":
        try:
            res.equilibrium.decay_rate_measured = _f(measure_decay_rate(work, events))
        except ValueError as exc:
            notes.append(str(exc))
    else:
        notes.append("no decay phase (no events and the run does not converge)")


def _representative(rows_values: np.ndarray, rows: np.ndarray) -> float:
    """One value for a per-row hyperparameter: the median over the stationary rows."""
    vals = rows_values[rows] if np.any(rows) else rows_values
    return float(np.median(vals))


def _momentum_at(hp: _Hyper, rows: np.ndarray) -> float:
    """The one momentum (heavy ball or Nesterov) of the laws that take one (period,
    threshold): the constant one, or the median of a per-row momentum over the
    stationary rows."""
    if not hp.sgd_family:
        return 0.0
    return _representative(hp.mu_rows, rows) if hp.mu_varies else hp.momentum  # type: ignore[arg-type]


def _period_predictions(
    res: OverlayResult,
    work: Trajectory,
    events: Events,
    hp: _Hyper,
    rows: np.ndarray,
    sharpness: float | None,
    notes: list[str],
) -> None:
    pred = res.predictions
    mu = _momentum_at(hp, rows)
    lr_r = wd_r = None
    if hp.known:
        assert hp.lr_rows is not None and hp.wd_rows is not None
        lr_r, wd_r = _representative(hp.lr_rows, rows), _representative(hp.wd_rows, rows)
        if lr_r <= 0 or wd_r <= 0:
            lr_r = wd_r = None
    if len(events) >= 2 and lr_r is not None and wd_r is not None and work.rho is not None:
        ratio = _finite(events.rho_after[:-1] / events.rho_before[1:])
        rise = (events.peak_steps - events.steps).astype(np.float64)
        if ratio is not None:
            res.event_stats.norm_ratio_median = _f(np.median(ratio))
            res.event_stats.rise_steps_median = _f(np.median(rise))
            if res.norm_ratio_median is not None and res.norm_ratio_median >= 1.0:
                if hp.varies:
                    pred.predicted_period = _scheduled_period(
                        work, events, hp, res.norm_ratio_median
                    )
                else:
                    pred.predicted_period = _f(
                        theory.period_from_norm_ratio(
                            lr_r,
                            wd_r,
                            res.norm_ratio_median,
                            float(np.median(rise)),
                            mu,
                            nesterov=hp.nesterov,
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
    if s_val is None or s_val <= 0 or lr_r is None or wd_r is None:
        return
    pred.sharpness = s_val
    if not hp.sgd_family:
        notes.append(f"stability threshold: {pred.formulas.get('threshold', 'n/a')}")
        return
    pred.elr_threshold = _f(
        theory.stability_threshold_elr(lr_r, wd_r, s_val, mu, nesterov=hp.nesterov)
    )
    pred.critical_norm = _f(theory.critical_norm(lr_r, wd_r, s_val, mu, nesterov=hp.nesterov))


def _period_at(
    res: OverlayResult,
    work: Trajectory,
    hp: _Hyper,
    rows: np.ndarray,
    target: tuple[float | None, float | None, float | None],
    notes: list[str],
) -> None:
    """The period at ``target = (predict_lr, predict_wd, predict_momentum)`` (``None``:
    this log's value), calibrated on this log."""
    predict_lr, predict_wd, predict_momentum = target
    pred = res.predictions
    p_lr = positive_number("predict_lr", predict_lr if predict_lr is not None else hp.lr)
    p_wd = positive_number("predict_wd", predict_wd if predict_wd is not None else hp.wd)
    pred.predict_lr, pred.predict_wd = p_lr, p_wd
    mu = _momentum_at(hp, rows)
    if predict_momentum is not None:
        pred.predict_momentum = momentum_number(predict_momentum, "predict_momentum")
        if not hp.sgd_family:
            notes.append(
                f"predict_momentum: n/a for {hp.optimizer} (the transfer across momentum "
                f"uses the decay law and stability threshold of SGD with momentum)"
            )
            return
    if not hp.known:
        notes.append("predict_lr/predict_wd need this log's lr and wd")
        return
    if res.period_median is None:
        notes.append("predict_lr/predict_wd need a measured period (two or more events)")
        return
    assert hp.lr_rows is not None and hp.wd_rows is not None
    lr_r, wd_r = _representative(hp.lr_rows, rows), _representative(hp.wd_rows, rows)
    p_mu = mu if pred.predict_momentum is None else pred.predict_momentum
    if p_mu != mu:
        pred.predicted_period_at, pred.predicted_period_method = _transfer_at(
            work, res.events, (lr_r, wd_r, mu), (p_lr, p_wd, p_mu), notes
        )
        return
    period = res.period_median
    if hp.varies and res.events is not None:
        period = _schedule_calibrated_period(
            res.events, lr_r, wd_r, mu, hp.nesterov, notes, fallback=period
        )
    if hp.nesterov:
        if pred.sharpness is not None:
            notes.append(
                "period at predict_lr/predict_wd from the decay law: the cycle model of "
                "siflow.predict is heavy ball's"
            )
        period = predict_period_at(period, lr_r, wd_r, p_lr, p_wd, mu, nesterov=True)
        pred.predicted_period_at = _f(period)
        pred.predicted_period_method = "scale symmetry + Nesterov decay law: T2 = T1 ln q1 / ln q2"
        return
    s_val = pred.sharpness if hp.sgd_family else None  # Nesterov returned above
    pred.predicted_period_at, pred.predicted_period_method = _predict_at(
        work, period, lr_r, wd_r, p_lr, p_wd, mu, s_val, notes
    )


def _scheduled_period(
    work: Trajectory, events: Events, hp: _Hyper, norm_ratio: float
) -> float | None:
    """The decay law's period under the log's schedule, cycle by cycle: for each measured
    cycle, its rise to the peak plus the steps the free decay from that peak, at each
    row's ``lr``, ``wd`` and momentum, takes to lower ``ln rho`` by ``ln(norm_ratio)``
    (:func:`siflow.theory.free_decay_steps`); the median over the cycles, to compare with
    the median measured period (at a constant schedule :func:`siflow.theory.period_from_norm_ratio`
    with the median rise)."""
    rate = _free_decay_rows(hp, len(work))
    if len(events) < 2 or not np.all(np.isfinite(rate)):
        return None
    peaks = events.peak_steps[:-1].astype(np.float64)
    try:
        fall = theory.free_decay_steps(work.step, rate, peaks, math.log(norm_ratio))
    except ValueError:  # the schedule reaches lr 0 before the fall: no period
        return None
    return _f(np.median(peaks - events.steps[:-1] + fall))


def _schedule_calibrated_period(
    events: Events,
    lr: float,
    wd: float,
    momentum: float,
    nesterov: bool,
    notes: list[str],
    *,
    fallback: float,
) -> float:
    """The period a schedule's cycles give at one ``(lr, wd, momentum)``.

    Under a schedule a cycle's length in steps depends on the lr it ran at; what the
    decay law keeps from cycle to cycle is the free decay of ``ln rho`` between events,
    ``D_k = -sum_t ln q_t`` (:attr:`siflow.periods.Events.decay_before`, ``q_t`` the
    per-step decay factor at that row's hyperparameters, :func:`siflow.theory.decay_rate`).
    The period at constant ``(lr, wd, momentum)`` is ``median_k(D_k) / (-ln q)``: at a
    constant schedule exactly the median period, and the decay law's
    ``T2 = T1 ln q1 / ln q2`` then gives ``median_k(D_k) / (-ln q2)`` whatever ``(lr, wd)``
    it is calibrated at (docs/theory.md, "Decay between events"). Without a measured
    free decay (no rates between the events) the median period ``fallback``, with a note.
    """
    free = -np.asarray(events.decay_before, dtype=np.float64)
    free = free[np.isfinite(free) & (free > 0)]
    if not free.size:
        notes.append(
            f"period at predict_lr/predict_wd calibrated at the median lr={lr:.4g}, "
            f"wd={wd:.4g} of the stationary rows (no free decay between the events)"
        )
        return fallback
    rate = float(theory.decay_rate(lr, wd, momentum, nesterov=nesterov))
    period = float(np.median(free)) / rate
    notes.append(
        f"period at predict_lr/predict_wd calibrated on the free decay per cycle under the "
        f"log's schedule (median {float(np.median(free)):.4g} in ln rho over {free.size} "
        f"cycles): {period:.4g} steps at the median lr={lr:.4g}, wd={wd:.4g} of the "
        f"stationary rows"
    )
    return period


def _longest_run(step: np.ndarray, ok: np.ndarray, gap: int = 1) -> slice:
    """The longest block of rows with ``ok`` true and steps ``gap`` apart."""
    if not np.any(ok):
        return slice(0, 0)
    breaks = np.ones(step.size, dtype=bool)
    breaks[1:] = np.diff(step) != gap
    prev_ok = np.r_[False, ok[:-1]]
    seg = np.cumsum(ok & (~prev_ok | breaks))
    seg[~ok] = 0
    best = int(np.argmax(np.bincount(seg)[1:])) + 1
    where = np.flatnonzero(seg == best)
    return slice(int(where[0]), int(where[-1]) + 1)


def _rel_error(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(pred / actual - 1.0)
    return err[np.isfinite(err)]


def _exact_checks(
    step: np.ndarray,
    rho: np.ndarray | None,
    g: np.ndarray | None,
    ang: np.ndarray | None,
    hp: _Hyper,
    window: tuple[np.ndarray, int] | None = None,
) -> Checks:
    """The exact scale-invariance checks of one norm column (see :class:`Checks`).

    ``window``: the mean of ``ln cos Delta`` over each row's steps and the number of
    steps between rows, for a log recorded every ``k`` steps
    (:func:`siflow.theory.sgd_radial_norm_window`).
    """
    out = Checks()
    lr_rows = hp.lr_rows
    if hp.optimizer not in ("sgd", "sgdm"):
        out.check_notes.append(
            f"{hp.optimizer}: no exact norm law from logged columns (the update's radial "
            f"component is not logged); scale-invariance checks n/a"
        )
        return out
    if rho is None or lr_rows is None or hp.wd_rows is None:
        out.check_notes.append("scale-invariance checks need rho, lr and wd")
        return out
    lr, wd, mu_rows = lr_rows, hp.wd_rows, hp.mu(rho.size)
    heavy = bool(np.any(mu_rows > 0))
    pos = np.isfinite(rho) & (rho > 0)
    used = 0
    if g is not None and not heavy:
        run = _longest_run(step, pos & np.isfinite(g))
        if run.stop - run.start >= 3:
            r, gg, ll, ww = rho[run], g[run], lr[run], wd[run]
            rep = theory.sgd_norm_trajectory(r[0], ll[:-1], ww[:-1], gg[:-1])
            out.norm_replay_error_max = _f(np.max(_rel_error(rep[1:], r[1:]), initial=0.0))
            used = max(used, r.size)
    if ang is not None:
        run = _longest_run(step, pos & np.isfinite(ang))
        n = run.stop - run.start
        if n >= 3:
            r, a, ll, ww, mm = rho[run], ang[run], lr[run], wd[run], mu_rows[run]
            if not heavy:
                pred = theory.sgd_radial_norm(r[:-1], a[:-1], ll[:-1], ww[:-1])
                actual = r[1:]
            else:  # row t holds the momentum of step t, like its lr
                pred = theory.heavy_ball_radial_norm(
                    r[:-2], a[:-2], r[1:-1], a[1:-1], ll[:-2], ll[1:-1], ww[1:-1], mm[1:-1]
                )
                actual = r[2:]
            err = _rel_error(np.asarray(pred), actual)
            out.radial_law_error_max = _f(np.max(err)) if err.size else None
            used = max(used, n)
            if g is not None and not heavy:
                moving = np.isfinite(g[run]) & (a > 0)
                law = theory.sgd_step_angle(
                    ll[moving],
                    ww[moving],
                    theory.effective_lr(ll[moving], r[moving]),
                    g[run][moving],
                )
                err = _rel_error(np.asarray(law), a[moving])
                out.angle_law_error_median = _f(np.median(err)) if err.size else None
    if used == 0 and window is not None and not heavy and not hp.varies:
        used = _window_check(out, step, rho, window, lr, wd, pos)
    if heavy:
        out.check_notes.append(
            "heavy ball: the norm replay and the angle law need the momentum buffer (not "
            "logged); the radial law is checked"
        )
    if used == 0:
        out.check_notes.append(
            "scale-invariance checks need three or more rows at consecutive steps with rho and "
            "grad_norm_sphere or angular_update"
        )
    out.check_rows = used
    errs = [
        e
        for e in (out.norm_replay_error_max, out.angle_law_error_median, out.radial_law_error_max)
        if e is not None
    ]
    if errs:
        worst = max(errs)
        out.scale_invariance = (
            "fails" if worst > CHECK_FAILS else "holds" if worst <= CHECK_HOLDS else "approximate"
        )
    return out


def _window_check(
    out: Checks,
    step: np.ndarray,
    rho: np.ndarray,
    window: tuple[np.ndarray, int],
    lr: np.ndarray,
    wd: np.ndarray,
    pos: np.ndarray,
) -> int:
    """The radial law over rows ``k`` steps apart from the window mean of ``ln cos Delta``."""
    log_cos, k = window
    run = _longest_run(step, pos & np.isfinite(log_cos), gap=k)
    n = run.stop - run.start
    if n < 3:
        return 0
    r = rho[run]
    pred = theory.sgd_radial_norm_window(r[:-1], log_cos[run][:-1], k, lr[run][:-1], wd[run][:-1])
    err = _rel_error(np.asarray(pred), r[1:])
    out.radial_law_error_max = _f(np.max(err)) if err.size else None
    out.check_notes.append(
        f"rows are {k} steps apart: the radial law is checked over each window with its mean "
        f"ln cos(angle) (log_cos_mean_window); the norm replay and the angle law need every step"
    )
    return n


def _window_of(traj: Trajectory) -> tuple[np.ndarray, int] | None:
    """``(log_cos_mean_window, every)`` of a :class:`siflow.torch_probe.SIRecorder` log."""
    col = traj.extra.get("log_cos_mean_window")
    every = traj.meta.get("every")
    if col is None or not isinstance(every, (int, float)) or int(every) != every or every < 2:
        return None
    return col, int(every)


def _si_notes(res: OverlayResult, hp: _Hyper) -> list[str]:
    """The verdict of the exact checks, first among the notes when they fail.

    The note names where the law's lr and wd came from (the log's columns, the
    arguments or a schedule). When the momentum varies from row to row the laws took
    it per row; a failure then points at that column first, not at the weights.
    """
    c = res.checks
    bad_groups = [g.name for g in res.groups if g.note and "check fails" in g.note]
    out = []
    if c.scale_invariance in ("fails", "approximate"):
        worst = max(
            e
            for e in (c.norm_replay_error_max, c.angle_law_error_median, c.radial_law_error_max)
            if e is not None
        )
        verdict = "fails" if c.scale_invariance == "fails" else "is off"
        heavy = bool(np.any(hp.mu(1) > 0))
        law = "heavy-ball" if heavy else "SGD"
        inputs = f"{hp.lr_source}, {hp.wd_source}"
        if hp.mu_varies:
            inputs += ", the logged per-row momentum"
        g_part = " and the logged g~" if c.norm_replay_error_max is not None else ""
        if hp.mu_varies:
            causes = (
                "The momentum changes from row to row in this log: check that its momentum "
                "column holds the value each step used (row t: the momentum of step t, like "
                "lr); the laws are exact for that"
            )
        else:
            causes = (
                "Usual causes: non-SI parameters folded into the norm (biases, a frozen or "
                "output layer), BatchNorm's eps, a wrong lr, wd, momentum or optimizer"
            )
        out.append(
            f"the exact scale-invariance check {verdict}"
            f" (relative error up to {worst:.3g}): the logged norm does not follow the "
            f"{law} norm law with {inputs}{g_part}. {causes}. The predictions may not apply "
            f"to this log; select the SI weights with group="
        )
    if bad_groups:
        out.append(f"the exact check fails for group(s) {', '.join(bad_groups)}")
    return out + c.check_notes


# ---------------------------------------------------------------------- groups
#: Per-group column prefixes in ``extra`` (siflow's ``<field>/<group>``, then REQ's
#: ``layer_<stat>/<param>``), per field.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "rho": ("rho/", "layer_norm/"),
    "angular_update": ("angular_update/", "layer_angular_update/"),
    "grad_norm_sphere": ("grad_norm_sphere/",),
    "grad_norm_raw": ("grad_norm_raw/", "layer_grad_norm/"),
    "elr": ("elr/",),
}


def _group_columns(traj: Trajectory) -> dict[str, dict[str, np.ndarray]]:
    """``{group: {field: column}}`` for the groups with a per-group norm column.

    A raw per-group gradient norm is put on the sphere with
    :func:`siflow.theory.sphere_grad_norm` when no sphere one is logged.
    """
    found: dict[str, dict[str, np.ndarray]] = {}
    for key, values in traj.extra.items():
        for fld, prefixes in GROUP_PREFIXES.items():
            pre = next((p for p in prefixes if key.startswith(p) and len(key) > len(p)), None)
            if pre is not None:
                found.setdefault(key[len(pre) :], {}).setdefault(fld, values)
                break
    listed = traj.meta.get("groups")
    for name in listed if isinstance(listed, list) else []:
        # the seed paper's <param>_norm / <param>_numel naming, for the groups a reader lists
        col = traj.extra.get(f"{name}_norm")
        if col is not None and "rho" not in found.get(str(name), {}):
            found.setdefault(str(name), {})["rho"] = col
    groups = {name: cols for name, cols in found.items() if "rho" in cols}
    for cols in groups.values():
        raw = cols.pop("grad_norm_raw", None)
        if "grad_norm_sphere" not in cols and raw is not None:
            cols["grad_norm_sphere"] = np.asarray(theory.sphere_grad_norm(cols["rho"], raw))
    return groups


def _group_names(traj: Trajectory) -> list[str]:
    """SI groups with a per-group norm column (see :data:`GROUP_PREFIXES`)."""
    return list(_group_columns(traj))


def _group_sizes(traj: Trajectory, given: Mapping[str, float] | None) -> dict[str, float]:
    """Elements per SI group: ``given``, ``meta["group_sizes"]``, ``numel/<group>`` or
    ``<group>_numel`` columns (the latter for the groups ``meta["groups"]`` lists)."""
    sizes: dict[str, float] = {}
    listed = traj.meta.get("groups")
    suffixed = {f"{g}_numel": str(g) for g in (listed if isinstance(listed, list) else [])}
    for k, v in traj.extra.items():
        name = k[len("numel/") :] if k.startswith("numel/") else suffixed.get(k)
        if name:
            finite = v[np.isfinite(v)]
            if finite.size:
                sizes[name] = float(finite[0])
    meta_sizes = traj.meta.get("group_sizes")
    if isinstance(meta_sizes, Mapping):
        sizes.update({str(k): float(v) for k, v in meta_sizes.items()})
    if given is not None:
        if not isinstance(given, Mapping):
            raise ValueError(f"group_sizes must map group names to sizes, got {given!r}")
        sizes.update({str(k): float(v) for k, v in given.items()})
    for k, v in sizes.items():
        check_positive(f"group_sizes[{k!r}]", v)
    return sizes


def _total_size(
    traj: Trajectory, n_params: float | None, sizes: Mapping[str, float]
) -> float | None:
    """Elements behind the total norm: ``n_params``, ``meta``, or the sum over groups."""
    if n_params is not None:
        return positive_number("n_params", n_params)
    for key in ("n_params", "numel"):
        if traj.meta.get(key) is not None:
            return positive_number(key, traj.meta[key])
    if traj.meta.get("source") == "siflow.simulate" and traj.meta.get("dim") is not None:
        return float(traj.meta["dim"])  # the toy's parameter vector is one SI group
    names = _group_names(traj)
    if names and all(n in sizes for n in names):
        return float(sum(sizes[n] for n in names))
    return None


def _analyze_group(
    work: Trajectory, name: str, hp: _Hyper, rows: np.ndarray, size: float | None
) -> GroupResult:
    """Measured angle and norm of one group over the stationary rows against its equilibrium."""
    col = _group_columns(work)[name].get
    rho, ang = col("rho"), col("angular_update")
    g, elr = col("grad_norm_sphere"), col("elr")
    out = GroupResult(name=name, n_params=size)
    sel = rows if np.any(rows) else np.ones(len(work), dtype=bool)
    rho_st, ang_st = _finite(rho[sel]) if rho is not None else None, None
    if ang is not None:
        ang_st = _finite(ang[sel])
    out.norm_mean = _f(np.mean(rho_st)) if rho_st is not None else None
    out.angular_update_rms = _f(np.sqrt(np.mean(ang_st**2))) if ang_st is not None else None
    g_st = _finite(g[sel]) if g is not None else None
    out.grad_norm_sphere_rms = _f(np.sqrt(np.mean(g_st**2))) if g_st is not None else None
    frozen = (ang_st is not None and not np.any(ang_st > 0)) or (
        elr is not None and np.all(elr[np.isfinite(elr)] == 0)
    )
    if frozen:
        out.note = "does not move (frozen, lr 0?): no prediction"
        return out
    eq = _equilibrium_rows(hp, out.grad_norm_sphere_rms, size)
    if eq:
        out.angular_update_predicted = _average("angular_update", eq.get("angular_update"), rows)
        out.norm_predicted = _average("norm", eq.get("norm"), rows)
    if not hp.sgd_family and size is None:
        out.note = "norm prediction needs the group's size (group_sizes=)"
    chk = _exact_checks(work.step, rho, g, ang, hp)
    out.norm_replay_error_max = chk.norm_replay_error_max
    out.angle_law_error_median = chk.angle_law_error_median
    out.radial_law_error_max = chk.radial_law_error_max
    if chk.scale_invariance == "fails":
        out.note = "exact scale-invariance check fails"
    return out


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
            try:
                pred = predict_period(
                    p_lr,
                    p_wd,
                    mu,
                    calibration=_calibration(work, lr, wd, mu),
                    sharpness=sharpness,
                    calibration_model="cycle",
                )
                return _f(pred.period), "siflow.predict cycle model calibrated on this log"
            except ValueError as exc:
                notes.append(f"cycle model not applicable ({exc}); used the decay law")
    else:
        notes.append(
            "period at predict_lr/predict_wd from the decay law with the norm ratio held "
            "fixed (pass sharpness= for the calibrated cycle model of siflow.predict)"
        )
    return (
        _f(predict_period_at(period, lr, wd, p_lr, p_wd, mu)),
        "scale symmetry + decay law: T2 = T1 ln q1 / ln q2",
    )


def _calibration(work: Trajectory, lr: float, wd: float, momentum: float) -> Trajectory:
    """A copy of this log whose metadata carry the hyperparameters it is calibrated at."""
    calib = work[slice(None)]
    calib.meta.update(lr=lr, wd=wd, momentum=momentum)
    return calib


def _transfer_at(
    work: Trajectory,
    events: Events | None,
    here: tuple[float, float, float],
    there: tuple[float, float, float],
    notes: list[str],
) -> tuple[float | None, str | None]:
    """Period at another momentum: :func:`siflow.predict.transfer_period` calibrated on
    this log at ``here = (lr, wd, momentum)``, predicted at ``there``."""
    from siflow.predict import transfer_period

    if work.meta.get("time_unit") == "epoch":
        notes.append(
            "predict_momentum: n/a for a log timed in epochs (the transfer compares the "
            "measured decay per step with the decay law); pass steps_per_epoch="
        )
        return None, None
    try:
        pred = transfer_period(_calibration(work, *here), *there, events=events)
    except ValueError as exc:
        notes.append(f"predict_momentum: n/a ({exc})")
        return None, None
    return _f(pred.period), (
        "siflow.predict.transfer_period: decay law with the residual push and the "
        "threshold shift, calibrated on this log"
    )


# ---------------------------------------------------------------------- drawing
def theory_lines(result: OverlayResult, traj: Trajectory) -> list[Any]:
    """The overlay objects of :mod:`siflow.plot` for a result.

    Constant hyperparameters give horizontal lines; under a schedule the
    equilibrium ``rho*(t)``, ``elr*(t)`` and ``Delta*(t)`` of ``result.curves`` are
    drawn as curves, and the decay from each peak follows ``prod(1 - lr_t wd_t)``
    (:func:`siflow.theory.decay_product`).
    """
    from siflow.plot import Curve, HLine

    lines: list[Any] = []
    x0, x1 = result.stationary_start, result.stationary_stop
    scheduled = result.lr_schedule or result.wd_schedule or result.momentum_schedule
    cv = result.curves
    if scheduled and cv is not None:
        for panel, col, label in (
            ("rho", cv.norm, r"equilibrium $\rho^*(t)$"),
            ("elr", cv.elr, r"equilibrium $\tilde\eta^*(t)$"),
            ("angle", cv.angular_update, r"equilibrium $\Delta^*(t)$"),
        ):
            if col is not None and np.any(np.isfinite(col)):
                lines.append(Curve(panel, cv.step, col, label))
    else:
        if result.norm_predicted is not None:
            lines.append(HLine("rho", result.norm_predicted, r"predicted $\rho^*$", x0, x1))
        if result.elr_predicted is not None and result.regime != "periodic":
            lines.append(HLine("elr", result.elr_predicted, r"predicted $\tilde\eta^*$", x0, x1))
        if result.angular_update_predicted is not None:
            label = r"predicted $\Delta^*$"
            lines.append(HLine("angle", result.angular_update_predicted, label, x0, x1))
    if result.norm_mean is not None and result.regime != "periodic":
        lines.append(HLine("rho", result.norm_mean, "measured mean", x0, x1, color="k", style=":"))
    if result.critical_norm is not None:
        lines.append(HLine("rho", result.critical_norm, r"critical norm $\rho_{crit}$", color="C4"))
    if result.elr_threshold is not None:
        label = (
            r"threshold $2(1-\eta\lambda)/S$"
            if result.momentum == 0
            else r"Nesterov threshold (quasi-static)"
            if result.optimizer == "nesterov"
            else r"threshold $2(1+\mu-\eta\lambda)/S$"
        )
        lines.append(HLine("elr", result.elr_threshold, label, color="C4"))
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
    if result.angular_update_rms is not None:
        lines.append(
            HLine("angle", result.angular_update_rms, "measured RMS", x0, x1, color="k", style=":")
        )
    lines.extend(_decay_lines(result, traj))
    return lines


def _decay_lines(result: OverlayResult, traj: Trajectory) -> list[Any]:
    """From each peak after a jump, the predicted zero-gradient decay to the next event."""
    from siflow.plot import Curve, Segment

    ev = result.events
    if (
        result.decay_rate_predicted is None
        or not len(ev)
        or not np.any(np.isfinite(ev.rho_after))
        or not len(traj)
    ):
        return []
    label = (
        r"predicted decay $\prod(1-\eta_t\lambda_t)$"
        if result.momentum == 0
        else "predicted decay (heavy ball)"
    )
    scheduled = result.lr_schedule or result.wd_schedule or result.momentum_schedule
    cv = result.curves
    stops = list(ev.steps[1:]) + [traj.step[-1]]
    keep = np.unique(np.linspace(0, len(ev) - 1, min(len(ev), 200)).astype(int))
    out: list[Any] = []
    for k in keep:
        if not math.isfinite(ev.rho_after[k]):
            continue
        if not scheduled or cv is None:
            slope = -result.decay_rate_predicted
            out.append(
                Segment(
                    "rho", float(ev.peak_steps[k]), float(ev.rho_after[k]), float(stops[k]),
                    slope, label, style="--",
                )
            )  # fmt: skip
            continue
        i, j = np.searchsorted(cv.step, [ev.peak_steps[k], stops[k]])
        if j - i < 2:
            continue
        gaps = np.diff(cv.step[i:j]).astype(np.float64)
        mu = result.momentum if cv.momentum is None else cv.momentum[i : j - 1]
        factor = theory.decay_product(cv.lr[i : j - 1], cv.wd[i : j - 1], mu, repeats=gaps)
        out.append(
            Curve("rho", cv.step[i:j], ev.rho_after[k] * factor, label, color="C2", style="--")
        )
    return out


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
    periods when there are more than six events. The time axis is labelled in
    ``result.time_unit`` (optimizer steps, or epochs). Returns the matplotlib Figure and
    saves it when ``path`` is given (PNG/SVG/PDF by suffix, atomically).
    """
    from siflow.plot import PANELS, plot_trajectory

    if not isinstance(result, OverlayResult):
        raise ValueError("result must be the OverlayResult returned by siflow.overlay.analyze")
    work = traj[slice(None)]
    if work.elr is None and work.rho is not None and result.curves is not None:
        work.elr = np.asarray(theory.effective_lr(result.curves.lr, work.rho))
    elif work.elr is None and work.rho is not None and result.lr is not None:
        work.elr = np.asarray(theory.effective_lr(result.lr, work.rho))
    if xlog is None:
        xlog = _looks_log_spaced(traj.step)
    if title is None:
        src = traj.meta.get("source") or traj.meta.get("path") or "trajectory"
        hp = ""
        if result.lr is not None and result.wd is not None:
            peak = " (peak)" if result.lr_schedule else ""
            hp = f"  {result.optimizer} lr={result.lr:g}{peak}, wd={result.wd:g}"
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
        xlabel="epoch" if result.time_unit == "epoch" else "optimizer step",
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
    from siflow._overlay_cli import main as _main

    raise SystemExit(_main())
