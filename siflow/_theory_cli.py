"""Body of ``python -m siflow.theory``: equilibrium quantities, or a schedule's trajectory.

Two modes:

* constant hyperparameters (``--lr``, ``--wd``): the equilibrium of
  :func:`siflow.theory.equilibrium` for ``--optimizer`` as a table (exact and first
  order) or JSON; quantities the optimizer's theory does not define print as n/a
  with the reason.
* ``--schedule SPEC``: the norm, effective LR and angle under the schedule
  (:func:`siflow.theory.sgd_norm_trajectory` for plain SGD, exact for the map with a
  constant sphere gradient norm; :func:`siflow.theory.quasi_static_norm_trajectory`
  for momentum, AdamW and Lion), the accumulated decay ``kappa_t``
  (:func:`siflow.theory.weight_decay_integral`), the timescales ``tau_iter`` and
  ``tau_epoch`` (:func:`siflow.theory.weight_decay_timescale`), and how far the norm
  lags its equilibrium: the relaxation time against the steps left in the schedule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from siflow._cli import (
    ArgumentParser,
    CLIError,
    add_betas_argument,
    flag_subjects,
    fmt_value,
    format_rows,
    parse_betas,
    parser_flags,
    refuse_ignored_flags,
    run_main,
)
from siflow._fileio import json_ready

__all__ = ["main", "build_parser", "format_table", "schedule_report"]

PROG = "python -m siflow.theory"

_ROWS = (
    ("equilibrium norm rho*", "norm", "norm_first_order", ""),
    ("effective LR lr/rho*^2", "elr", "elr_first_order", ""),
    ("angular update per step", "angular_update", "angular_update_first_order", "rad"),
    ("relaxation time constant", "relaxation_time", "relaxation_time_first_order", "steps"),
    ("ELR doubling time (zero grad)", "elr_doubling_time", None, "steps"),
    ("norm factor per step (zero grad)", "decay_factor", None, ""),
)
_TIMES = ("relaxation_time", "relaxation_time_first_order", "elr_doubling_time")
_THEORY = {"sgd": "sgd", "sgdm": "sgdm", "nesterov": "nesterov", "adamw": "adamw", "lion": "lion"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Equilibrium of a scale-invariant weight group under SGD (or heavy-ball SGD, "
            "Nesterov, AdamW, Lion) with weight decay; with --schedule, the norm, effective "
            "LR and angle under a learning-rate schedule."
        ),
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate (> 0)")
    parser.add_argument("--wd", type=float, default=None, help="weight decay (> 0, lr*wd < 1)")
    parser.add_argument(
        "--grad-norm",
        type=float,
        default=1.0,
        help="gradient norm on the unit sphere, |w| |grad L(w)| (default 1)",
    )
    parser.add_argument(
        "--momentum", type=float, default=0.0, help="heavy-ball momentum in [0, 1) (default 0)"
    )
    parser.add_argument(
        "--optimizer",
        default="sgd",
        choices=sorted(_THEORY),
        help="whose theory to use (default: %(default)s)",
    )
    add_betas_argument(parser, default=None, help="AdamW/Lion betas (default 0.9,0.999)")
    parser.add_argument(
        "--n-params", type=int, default=None, help="size C of the SI group (AdamW/Lion norm)"
    )
    parser.add_argument(
        "--schedule", default=None, metavar="SPEC", help="learning-rate schedule (siflow.schedules)"
    )
    parser.add_argument("--wd-schedule", default=None, metavar="SPEC", help="weight-decay schedule")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="optimizer steps per epoch (tau_epoch)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps to follow (default: the schedule's steps)"
    )
    parser.add_argument(
        "--rho0", type=float, default=None, help="starting norm (default 1; with --schedule)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def _betas(text: list[str] | None, optimizer: str) -> tuple[float, float]:
    if text is None:
        return (0.9, 0.99) if optimizer == "lion" else (0.9, 0.999)
    return parse_betas(text)


def _infinite_times(values: dict[str, Any]) -> list[str]:
    """Times that are infinite because ``lr*wd`` underflows print as ``inf``, never ``-inf``."""
    notes = []
    x = values["lr"] * values["wd"]
    for key in _TIMES:
        v = values.get(key)
        if isinstance(v, float) and (math.isinf(v) or (x == 0.0 and v != v)):
            values[key] = math.inf
    if x == 0.0:
        notes.append(
            f"lr*wd = {values['lr']:g} x {values['wd']:g} underflows to 0 in double precision: "
            f"no decay, the times are infinite"
        )
    return notes


def format_table(values: dict[str, Any], missing: dict[str, str] | None = None) -> str:
    """Readable table of :func:`siflow.theory.equilibrium` output (n/a with the reason)."""
    missing = missing or {}
    head = (
        f"optimizer = {values.get('optimizer', 'sgd')}, lr = {values['lr']:g}, "
        f"wd = {values['wd']:g}, lr*wd = {values['lr'] * values['wd']:g}, "
        f"momentum = {values['momentum']:g}"
        + (f", grad_norm = {values['grad_norm']:g}" if "grad_norm" in values else "")
    )
    rows = []
    for label, key, key_fo, unit in _ROWS:
        if key not in values:
            rows.append([label, "n/a", "", missing.get(key, "not defined for this optimizer")])
            continue
        fo = fmt_value(values[key_fo], 10) if key_fo and key_fo in values else ""
        rows.append([label, fmt_value(values[key], 10), fo, unit])
    lines = [head, format_rows(["quantity", "exact", "first order", "unit"], rows, align="lrrl")]
    if values["momentum"] > 0:
        lines.append("(momentum: exact under uncorrelated gradients, second-moment model)")
    return "\n".join(lines)


def _missing(optimizer: str, have_n: bool) -> dict[str, str]:
    if optimizer in ("adamw", "lion"):
        out = {k: f"siflow.theory has no {optimizer} form" for _, k, _, _ in _ROWS}
        out["norm"] = "pass --n-params (the group size C)"
        if have_n:
            out.pop("norm")
        return out
    if optimizer == "nesterov":
        return {k: "siflow.theory has no Nesterov form" for _, k, _, _ in _ROWS}
    return {}


# --------------------------------------------------------------------------- schedules
def _safe(fn: Any, lr: float, wd: float, *args: Any) -> float:
    """``fn(lr, wd, ...)`` as a float; ``inf`` where ``lr*wd`` is 0 (no decay: no time scale)."""
    if not (lr > 0 and wd > 0) or lr * wd == 0.0:
        return math.inf
    with np.errstate(divide="ignore", over="ignore"):
        return float(fn(lr, wd, *args))


def _equilibrium_norms(
    optimizer: str, lr: np.ndarray, wd: np.ndarray, g: float, mu: float, betas: tuple, n: int | None
) -> np.ndarray | None:
    """``rho*`` at each step's ``(lr, wd)`` (NaN where ``lr*wd = 0``), or None when undefined."""
    from siflow import theory

    ok = (lr > 0) & (wd > 0) & (lr * wd > 0)
    out = np.full(lr.size, np.nan)
    if not ok.any():
        return out
    a, b = lr[ok], wd[ok]
    if optimizer in ("adamw", "lion"):
        if n is None:
            return None
        if optimizer == "adamw":
            out[ok] = theory.adamw_equilibrium_norm(a, b, n, betas[0])
        else:
            out[ok] = theory.lion_equilibrium_norm(a, b, n, betas[0], betas[1])
        return out
    out[ok] = theory.sgdm_equilibrium_norm(a, b, g, mu, nesterov=optimizer == "nesterov")
    return out


def _equilibrium_angle(optimizer: str, lr: float, wd: float, mu: float, betas: tuple) -> float:
    from siflow import theory

    if not (lr > 0 and wd > 0) or lr * wd == 0.0:
        return 0.0
    if optimizer == "adamw":
        return float(theory.adamw_equilibrium_angle(lr, wd, betas[0]))
    if optimizer == "lion":
        return float(theory.lion_equilibrium_angle(lr, wd, betas[0], betas[1]))
    return float(theory.sgdm_equilibrium_angle(lr, wd, mu, nesterov=optimizer == "nesterov"))


def _relaxation(optimizer: str, lr: float, wd: float, mu: float) -> float:
    from siflow import theory

    if optimizer in ("adamw", "lion"):
        return _safe(theory.decoupled_relaxation_time, lr, wd)
    if optimizer == "nesterov":
        return math.nan
    return _safe(theory.sgdm_relaxation_time, lr, wd, mu)


def schedule_report(
    optimizer: str,
    lr_t: np.ndarray,
    wd_t: np.ndarray,
    *,
    grad_norm: float = 1.0,
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    n_params: int | None = None,
    steps_per_epoch: int | None = None,
    rho0: float = 1.0,
) -> dict[str, Any]:
    """Norm, ELR, angle, ``kappa``, timescales and lag under per-step ``lr_t``, ``wd_t``.

    Every number comes from :mod:`siflow.theory`; this function picks the points
    to show (start, the step of the largest lr, the quarters, the last step).
    """
    from siflow import theory

    steps = lr_t.size
    mu = momentum if optimizer in ("sgd", "sgdm", "nesterov") else 0.0
    kappa = theory.weight_decay_integral(lr_t, wd_t)
    rho_star = _equilibrium_norms(optimizer, lr_t, wd_t, grad_norm, mu, betas, n_params)
    rho: np.ndarray | None = None
    how = "n/a: " + ("pass --n-params" if rho_star is None else "")
    if optimizer == "sgd" and mu == 0.0:
        rho = theory.sgd_norm_trajectory(rho0, lr_t, wd_t, grad_norm)
        how = "exact SGD norm map with constant g~ (theory.sgd_norm_trajectory)"
    elif optimizer in ("sgd", "sgdm", "nesterov"):
        nesterov = optimizer == "nesterov"
        rho = theory.momentum_norm_trajectory(rho0, lr_t, wd_t, mu, grad_norm, nesterov=nesterov)
        how = "second-moment map of heavy ball with constant g~ (theory.momentum_norm_trajectory)"
        if nesterov:
            how = how.replace("heavy ball", "Nesterov")
    elif rho_star is not None:
        coupled = optimizer not in ("adamw", "lion")
        rs = np.where(np.isfinite(rho_star), rho_star, 0.0)
        if not coupled or not np.all(rs > 0):
            rs = np.where(rs > 0, rs, rho0)
        rho = theory.quasi_static_norm_trajectory(rho0, lr_t, wd_t, rs, coupled=coupled)
        how = "quasi-static norm map (theory.quasi_static_norm_trajectory)"
    points = sorted({0, int(np.argmax(lr_t)), steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    rows = []
    for t in points:
        lr, wd = float(lr_t[t]), float(wd_t[t])
        tau = _relaxation(optimizer, lr, wd, mu)
        tau_iter = _safe(lambda a, b: theory.weight_decay_timescale(a, b)["tau_iter"], lr, wd)
        row: dict[str, Any] = {
            "step": t,
            "lr": lr,
            "wd": wd,
            "kappa": float(kappa[t]),
            "tau_iter": tau_iter,
            "tau_epoch": tau_iter / steps_per_epoch if steps_per_epoch else None,
            "norm": float(rho[t]) if rho is not None else None,
            "norm_equilibrium": float(rho_star[t]) if rho_star is not None else None,
            "angle_equilibrium": _equilibrium_angle(optimizer, lr, wd, mu, betas),
            "relaxation_time": tau,
            "steps_left": steps - t,
        }
        if rho is not None and optimizer not in ("adamw", "lion"):  # no ELR law for them
            row["elr"] = float(theory.effective_lr(lr, rho[t]))
            if optimizer == "sgd" and mu == 0.0 and lr * wd < 1:
                row["angle"] = float(theory.sgd_step_angle(lr, wd, row["elr"], grad_norm))
        if row["norm"] is not None and row["norm_equilibrium"]:
            row["norm_lag"] = row["norm"] / row["norm_equilibrium"] - 1.0
        # unknown (None) where the optimizer has no relaxation law
        row["relaxes_before_end"] = None if math.isnan(tau) else bool(tau < steps - t)
        rows.append(row)
    return {
        "optimizer": optimizer,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "kappa_total": float(kappa[-1]),
        "norm_method": how.rstrip(": "),
        "final_norm": float(rho[-1]) if rho is not None else None,
        "points": rows,
    }


def format_schedule(rep: dict[str, Any], spec: str) -> str:
    head = [
        f"schedule: {spec}",
        f"optimizer {rep['optimizer']}, {rep['steps']} steps"
        + (f", {rep['steps_per_epoch']} steps per epoch" if rep["steps_per_epoch"] else ""),
        f"accumulated decay kappa_T = sum lr_t wd_t = {fmt_value(rep['kappa_total'])}",
        f"norm: {rep['norm_method']}",
        "",
    ]
    cols = [
        ("step", "step"),
        ("lr", "lr"),
        ("wd", "wd"),
        ("kappa", "kappa"),
        ("tau_iter", "tau_iter"),
        ("tau_epoch", "tau_epoch"),
        ("norm", "norm"),
        ("norm*", "norm_equilibrium"),
        ("lag", "norm_lag"),
        ("elr", "elr"),
        ("angle", "angle"),
        ("angle*", "angle_equilibrium"),
        ("relax", "relaxation_time"),
        ("left", "steps_left"),
    ]
    rows = [[fmt_value(p.get(k), 4) for _, k in cols] for p in rep["points"]]
    lines = head + [format_rows([c for c, _ in cols], rows)]
    last = rep["points"][-1]
    tail = _lagging_tail(rep["points"])
    if tail is not None:
        lines.append(
            f"from step {tail['step']} on, the relaxation time "
            f"({fmt_value(tail['relaxation_time'], 4)} steps) exceeds the steps left "
            f"({tail['steps_left']}): the norm cannot reach its equilibrium before the end"
        )
    lag = last.get("norm_lag")
    if lag is not None and math.isfinite(lag):
        lines.append(
            f"at the last step the norm is {fmt_value(last['norm'], 4)} against an equilibrium of "
            f"{fmt_value(last['norm_equilibrium'], 4)} ({100 * lag:+.1f}%)"
        )
    elif lag is not None:  # no equilibrium at the last step's lr and wd (lr = 0 there)
        lines.append(
            f"at the last step the norm is {fmt_value(last['norm'], 4)}; there is no "
            f"equilibrium to compare it with at that step's lr = {fmt_value(last['lr'], 4)} "
            f"and wd = {fmt_value(last['wd'], 4)}"
        )
    lines.append(
        "(norm* and angle*: equilibrium at that step's lr and wd; lag = norm/norm* - 1; "
        "relax: relaxation time of the norm, steps)"
    )
    return "\n".join(lines)


def _lagging_tail(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first point from which every later point has a relaxation time above the steps
    left, when that says something: not when the norm ends within 1% of its equilibrium,
    nor, where the lag is unknown, the last point alone (one step is left there whatever
    the schedule)."""
    if any(p["relaxes_before_end"] is None for p in points):
        return None
    first = None
    for p in points:
        if p["relaxes_before_end"]:
            first = None
        elif first is None:
            first = p
    lag = points[-1].get("norm_lag")
    if (lag is None and first is points[-1]) or (lag is not None and abs(lag) < 0.01):
        return None
    return first


#: The most steps ``--schedule`` follows (one array entry per step).
_MAX_FOLLOWED_STEPS = 50_000_000


def _too_many_steps(args: Any, steps: int) -> str:
    """The refusal of a schedule followed over too many steps, naming where they came from:
    ``--steps``, or the ``steps=`` of ``--schedule`` when ``--steps`` was not passed."""
    if args.steps is not None:
        return (
            f"--steps {steps} is above {_MAX_FOLLOWED_STEPS}; pass --steps "
            f"{_MAX_FOLLOWED_STEPS} or fewer"
        )
    return (
        f"--schedule {args.schedule!r} has steps={steps}, above the {_MAX_FOLLOWED_STEPS} "
        f"steps this follows; pass --steps {_MAX_FOLLOWED_STEPS} or fewer to follow its "
        f"start, or a schedule with fewer steps="
    )


def _schedule_body(args: Any) -> int:
    from siflow.schedules import parse_schedule

    lr_s = parse_schedule(args.schedule, base=args.lr)
    if args.wd_schedule:
        wd_s = parse_schedule(args.wd_schedule, base=args.wd)
    elif args.wd is None:
        raise CLIError("--schedule needs --wd (or --wd-schedule); pass e.g. --wd 5e-4")
    else:
        wd_s = parse_schedule(f"constant:value={args.wd!r}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}; pass e.g. --steps 20000")
    steps = args.steps or int(lr_s.params.get("steps", 0))
    if steps < 1:
        raise CLIError("pass --steps (the schedule has no steps=); e.g. --steps 20000")
    if steps > _MAX_FOLLOWED_STEPS:
        raise CLIError(_too_many_steps(args, steps))
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise CLIError(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    lr_t, wd_t = lr_s.values(steps), wd_s.values(steps)
    if np.any(lr_t * wd_t >= 1):
        raise CLIError("lr*wd reaches 1 under the schedule; lower the peak lr or wd")
    from siflow._validate import check_momentum, check_positive

    check_positive("grad_norm", args.grad_norm)
    rho0 = 1.0 if args.rho0 is None else args.rho0
    check_positive("rho0", rho0)
    check_momentum(args.momentum)
    rep = schedule_report(
        args.optimizer,
        lr_t,
        wd_t,
        grad_norm=args.grad_norm,
        momentum=args.momentum,
        betas=_betas(args.betas, args.optimizer),
        n_params=args.n_params,
        steps_per_epoch=args.steps_per_epoch,
        rho0=rho0,
    )
    rep["schedule"] = lr_s.spec
    rep["wd_schedule"] = wd_s.spec
    if args.json:
        print(json.dumps(json_ready(rep), allow_nan=False))
    else:
        print(format_schedule(rep, lr_s.spec))
    return 0


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from siflow.theory import equilibrium

    refuse_ignored_flags(args)
    if args.schedule:
        return _schedule_body(args)
    schedule_only = [
        flag
        for flag, value in (
            ("--wd-schedule", args.wd_schedule),
            ("--steps", args.steps),
            ("--steps-per-epoch", args.steps_per_epoch),
            ("--rho0", args.rho0),
        )
        if value is not None
    ]
    if schedule_only:
        raise CLIError(
            f"{', '.join(schedule_only)} follow{'s' * (len(schedule_only) == 1)} a learning-rate "
            f"schedule; add --schedule SPEC (e.g. cosine:peak=0.1,steps=20000) or drop "
            f"{'it' if len(schedule_only) == 1 else 'them'}"
        )
    if args.lr is None:
        raise CLIError("--lr is required (or --schedule SPEC); pass e.g. --lr 0.1")
    if args.wd is None:
        raise CLIError("--wd is required; pass e.g. --wd 5e-4")
    betas = _betas(args.betas, args.optimizer)
    with np.errstate(over="ignore", divide="ignore", under="ignore", invalid="ignore"):
        values = equilibrium(
            args.lr,
            args.wd,
            args.grad_norm if args.optimizer not in ("adamw", "lion") else None,
            args.momentum if args.optimizer not in ("adamw", "lion") else 0.0,
            optimizer=args.optimizer,
            betas=betas,
            n_params=args.n_params,
        )
    notes = _infinite_times(values)
    if args.json:
        # strict JSON: a value that overflowed float range (e.g. lr=1e-320) becomes null
        print(json.dumps(json_ready(values), allow_nan=False))
    else:
        print(format_table(values, _missing(args.optimizer, args.n_params is not None)))
        for note in notes:
            print(f"note: {note}")
    return 0


def _flagged_body(argv: Sequence[str] | None) -> int:
    """:func:`_body` with a library message's subject named as its flag
    (``"n_params must be > 0"`` -> ``"--n-params must be > 0"``): every value of this
    command comes from a flag."""
    try:
        return _body(argv)
    except CLIError:
        raise
    except ValueError as exc:
        raise CLIError(flag_subjects(str(exc), parser_flags(build_parser()))) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for bad input)."""
    return run_main(_flagged_body, argv, prog=PROG)
