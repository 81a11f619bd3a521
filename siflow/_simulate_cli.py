"""``python -m siflow.simulate``: simulate a toy SI loss and compare it with theory.

Runs :func:`siflow.simulate.simulate`, analyses the trajectory with
:func:`siflow.overlay.analyze` (the same measurements as ``python -m siflow.overlay``),
prints a summary table (or one JSON object with ``--json``) and writes
``trajectory.npz``, ``figure.png`` and ``summary.json`` (the ``--json`` object) into
``--out`` (default ``runs/<name>`` with a name built from the options, or
``<name>-2``, ``-3``, ... when that folder holds a run of other options: see
:func:`claim_default_out`). A run that diverges or underflows is a result, not an
error: it is reported with its status and exit status 0.

The trajectory file is rewritten atomically every few seconds during the run, so
an interrupted run (Ctrl-C, or SIGTERM) leaves a readable file with ``status``
``"interrupted"`` holding everything simulated so far; the command then says what
it wrote and exits with status 130 (143 after SIGTERM). A signal during the final
write is held until the file is complete. Bad options give one line on stderr and
exit status 2; so does a file system that cannot take the output (full, read-only),
naming the path, the fix and what became of the run.

The default toy is SI logistic regression (``--loss logistic``: dimension 10, 100
separable points drawn from seed 0, temperature 10), which at ``--lr 0.1 --wd 1e-3``
destabilizes about every 4000 steps (norm jumps by ~1.5x) after a transient of
~10000 steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._cli import (
    ArgumentParser,
    CLIError,
    add_betas_argument,
    describe_os_error,
    flag_subjects,
    fmt_value,
    format_list_summary,
    format_rows,
    interrupted_status,
    parse_betas,
    refuse_zero_schedule,
    run_main,
    summarize_list,
    terminate_as_interrupt,
    terminated,
    translate_params,
)
from siflow._fileio import atomic_write, claim_folder, ensure_dir, json_ready
from siflow._validate import check_steps

PROG = "python -m siflow.simulate"
DEFAULT_STEPS = 50_000
#: Above this many steps the record is thinned (``max_points``), keeping events.
DEFAULT_MAX_POINTS = 500_000
#: Hard cap on kept rows when ``--record-every`` is not given (rows near norm jumps
#: included; the strides double when it is hit, see :mod:`siflow.simulate`).
DEFAULT_MAX_ROWS = 2 * DEFAULT_MAX_POINTS
#: Runs expected to take longer than this many seconds are announced on stderr.
ANNOUNCE_SECONDS = 60.0
#: Library parameters -> the flags that set them (for one-line error messages).
FLAGS = {
    "lr": "--lr",
    "wd": "--wd",
    "steps": "--steps",
    "dim": "--dim",
    "momentum": "--momentum",
    "batch": "--batch",
    "noise": "--noise",
    "seed": "--seed",
    "rho0": "--rho0",
    "record_every": "--record-every",
    "max_rows": "--max-rows",
    "sharpness": "--sharpness",
    "betas": "--betas",
}
#: File in a default output folder recording the options of the run it holds, so that
#: a run whose options differ is not written over it (:func:`claim_default_out`).
RUN_FILE = ".siflow-run.json"
#: Options that change where or how the result is shown, not the run itself.
_PRESENTATION = ("out", "quiet", "json", "no_figure")


def build_parser() -> ArgumentParser:
    """The argument parser of ``python -m siflow.simulate``."""
    from siflow.losses import LOSSES
    from siflow.optim import OPTIMIZERS
    from siflow.simulate import DEFAULT_LOSS

    p = ArgumentParser(
        prog=PROG,
        description=(
            "Simulate a toy scale-invariant loss under SGD + weight decay (or another "
            "optimizer), measure destabilization events, periods, decay rate and "
            "equilibrium statistics, and compare them with siflow.theory. Writes "
            "trajectory.npz and figure.png into --out."
        ),
    )
    p.add_argument("--lr", type=float, required=True, help="learning rate (ELR for fixed_elr)")
    p.add_argument("--wd", type=float, required=True, help="weight decay")
    p.add_argument(
        "--loss",
        default=DEFAULT_LOSS,
        help=f"toy loss: {', '.join(sorted(LOSSES))} (default: %(default)s)",
    )
    p.add_argument("--dim", type=int, default=None, help="dimension of the toy (its default)")
    p.add_argument(
        "--loss-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the toy's constructor, e.g. temperature=20, quartic=2, "
        "spectrum=[0,1,4] (repeatable; see siflow.losses)",
    )
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (default: %(default)s)"
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        help=f"optimizer: {', '.join(OPTIMIZERS)} (default: %(default)s)",
    )
    p.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum (default 0)")
    p.add_argument("--batch", type=int, default=None, help="minibatch size (data toys)")
    p.add_argument(
        "--noise", type=float, default=0.0, help="isotropic tangent gradient noise sigma"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    p.add_argument("--rho0", type=float, default=None, help="initial weight norm (default 1)")
    p.add_argument(
        "--record-every",
        type=int,
        default=None,
        help=f"keep every k-th step (default 1, or thinned to ~{DEFAULT_MAX_POINTS} rows); "
        f"rows around norm jumps are always kept",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help=f"hard cap on kept rows (default {DEFAULT_MAX_ROWS}, or "
        "siflow.simulate.DEFAULT_MAX_ROWS with --record-every); when rows near norm jumps "
        "reach it, the strides double (summary statistics stay exact)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        metavar="SPEC",
        help="learning-rate schedule, e.g. cosine:warmup=500,min=0.005,steps=20000 (peak "
        "defaults to --lr; it must stay above 0 over --steps; see siflow.schedules)",
    )
    p.add_argument(
        "--wd-schedule",
        default=None,
        metavar="SPEC",
        help="weight-decay schedule (peak defaults to --wd; it must stay above 0 over --steps)",
    )
    add_betas_argument(p, default="0.9,0.999", help="AdamW betas (default: %(default)s)")
    p.add_argument(
        "--sharpness",
        action="store_true",
        help="also record the sphere sharpness at each kept row (O(dim^3) each)",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/<name>)")
    p.add_argument("--no-figure", action="store_true", help="do not draw figure.png")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _short(x: float) -> str:
    """``x`` as ``:g`` writes it where that is exact, else in full (``0.1000001``)."""
    text = f"{x:g}"
    return text if float(text) == x else repr(float(x))


def run_name(args: Any) -> str:
    """Directory name built from the options, e.g. ``logistic-sgd-lr0.1-wd0.001-s0``.

    Numbers are written in full where six digits would round them, and
    ``--record-every``, ``--max-rows`` and ``--sharpness`` are named when given.
    """
    parts = [str(args.loss), str(args.optimizer), f"lr{_short(args.lr)}", f"wd{_short(args.wd)}"]
    if args.momentum:
        parts.append(f"mom{_short(args.momentum)}")
    if args.batch:
        parts.append(f"b{args.batch}")
    if args.noise:
        parts.append(f"noise{_short(args.noise)}")
    if args.dim is not None:
        parts.append(f"d{args.dim}")
    for item in getattr(args, "loss_option", []) or []:
        key, _, value = item.partition("=")
        parts.append(f"{key.strip()}{value.strip()}".replace("/", "_").replace(" ", ""))
    if args.rho0 is not None:
        parts.append(f"rho{_short(args.rho0)}")
    for flag, attr in (("sched", "schedule"), ("wdsched", "wd_schedule")):
        spec = getattr(args, attr, None)
        if spec:
            parts.append(flag + "".join(c if c.isalnum() or c in ".=" else "_" for c in spec))
    if args.steps != DEFAULT_STEPS:
        parts.append(f"n{args.steps}")
    for flag, attr in (("every", "record_every"), ("maxrows", "max_rows")):
        value = getattr(args, attr, None)
        if value is not None:
            parts.append(f"{flag}{value}")
    if getattr(args, "sharpness", False):
        parts.append("sharpness")
    parts.append(f"s{args.seed}")
    return "-".join(parts)


def run_options(args: Any) -> dict[str, Any]:
    """The options that decide a run's output (all but ``--out``, ``--quiet``,
    ``--json`` and ``--no-figure``), as JSON reads them back."""
    options = {k: v for k, v in vars(args).items() if k not in _PRESENTATION}
    if options.get("betas") is not None:
        options["betas"] = list(parse_betas(options["betas"]))  # "0.9,0.999" or "0.9 0.999"
    return json.loads(json.dumps(options, sort_keys=True))


def _holds_run(folder: Path, options: dict[str, Any]) -> bool:
    """Whether ``folder``'s :data:`RUN_FILE` records a run of exactly ``options``."""
    try:
        recorded = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return recorded == options


def claim_default_out(args: Any) -> tuple[Path, bool]:
    """The default output folder of a run: ``runs/<name>``, or ``<name>-2``, ``-3``, ...

    A folder is claimed by creating it (``os.mkdir``, which fails when it exists, so
    two runs started together never share one) and recording the run's options in it
    (:data:`RUN_FILE`). An existing folder is used only when it records the same
    options: a rerun of the same command replaces its own output; a run of other
    options (another ``--lr``, even past six digits, ``--record-every``,
    ``--max-rows``, ...), or a folder of unknown content, moves on to the next name.

    Returns
    -------
    tuple
        ``(folder, created)``: ``created`` is False for a folder of the same run.
    """
    options = run_options(args)
    out, created = claim_folder(Path("runs"), run_name(args), lambda d: _holds_run(d, options))
    if created:
        with atomic_write(out / RUN_FILE) as fh:
            json.dump(options, fh, sort_keys=True, indent=1)
    return out, created


def parse_loss_options(items: Sequence[str]) -> dict[str, Any]:
    """``["temperature=20", "spectrum=[0,1]"]`` -> ``{"temperature": 20, "spectrum": [0, 1]}``.

    Values are read as JSON (numbers, lists, ``true``), else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"--loss-option {item!r} is not KEY=VALUE; pass e.g. temperature=20")
        if key == "dim":  # every toy's constructor takes it, so it is the key users try
            raise CLIError(f"dim is not a --loss-option; use --dim {value.strip() or 'N'}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value.strip()
    return out


def loss_option_flags(message: str) -> str:
    """A :mod:`siflow.losses` message with its options named as this command sets them.

    ``temperature=`` becomes ``--loss-option temperature=`` and ``dim=5`` becomes
    ``--dim 5`` (one pass, so that a loss option named like a flag of the run, such as
    the data ``seed``, is not mistaken for it).
    """
    from siflow.losses import OPTIONS

    names = {k for keys in OPTIONS.values() for k in keys} | {"dim"}
    pattern = "|".join(sorted((re.escape(k) for k in names), key=len, reverse=True))

    def repl(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name == "dim":
            return f"--dim {value}" if value else "--dim"
        return f"--loss-option {name}={value}"

    return re.sub(rf"(?<![\w-])({pattern})=([^\s,;:)]*)", repl, message)


def _check_loss_options(args: Any, loss_options: dict[str, Any]) -> None:
    """The toy's options checked (and against ``--dim``) before any estimate or file."""
    from siflow.losses import check_options

    try:
        check_options(args.loss, loss_options, dim=args.dim)
    except ValueError as exc:
        raise CLIError(loss_option_flags(str(exc))) from None


def _check_schedules(args: Any, lr: Any, wd: Any) -> None:
    """A schedule that reaches 0 within ``--steps`` is refused before the run (the
    equilibrium at its last step would be undefined, after all the work)."""
    from siflow.schedules import Schedule

    for flag, quantity, sched, spec in (
        ("--schedule", "lr", lr, args.schedule),
        ("--wd-schedule", "wd", wd, args.wd_schedule),
    ):
        if isinstance(sched, Schedule) and not sched.is_constant:
            refuse_zero_schedule(flag, spec, sched, quantity, args.steps)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with one line on stderr on bad input).

    SIGTERM is handled like Ctrl-C while it runs (:func:`siflow._cli.terminate_as_interrupt`).
    """
    with terminate_as_interrupt():
        return run_main(_translated_body, argv, prog=PROG)


def _translated_body(argv: Sequence[str] | None) -> int:
    """:func:`_body` with library messages (``record_every=``) naming the CLI flags."""
    try:
        return _body(argv)
    except CLIError:
        raise
    except ValueError as exc:
        raise CLIError(flag_subjects(translate_params(str(exc), FLAGS), FLAGS)) from None


# --------------------------------------------------------------------------- theory
#: Equilibrium quantities shown, in order: key, label, unit.
QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("norm", "equilibrium norm rho*", ""),
    ("elr", "effective LR lr/rho*^2", ""),
    ("angular_update", "angular update per step", "rad"),
    ("relaxation_time", "relaxation time constant", "steps"),
    ("elr_doubling_time", "ELR doubling time (zero grad)", "steps"),
    ("decay_factor", "norm factor per step (zero grad)", ""),
    ("decay_rate", "norm decay rate (zero grad)", "1/step"),
)

#: Optimizer of the simulation -> the theory of :func:`siflow.theory.equilibrium`.
THEORY_OF = {"sgd": "sgd", "nesterov": "nesterov", "adamw": "adamw"}


def _missing_reason(theory_name: str | None, key: str, have_g: bool) -> str:
    """Why ``key`` has no prediction for this optimizer."""
    if theory_name is None:
        return "the norm is fixed by projection: no equilibrium"
    if theory_name == "adamw":
        if key == "norm":
            return "AdamW norm needs the group size"
        return "siflow.theory has no AdamW form for it"
    if theory_name == "nesterov" and key in ("relaxation_time", "elr_doubling_time", "decay_rate"):
        return "siflow.theory has no Nesterov form for it"
    if theory_name == "nesterov" and key == "decay_factor":
        return "siflow.theory has no Nesterov form for it"
    if not have_g and key in ("norm", "elr"):
        return "needs a measured sphere gradient norm"
    return "not defined for this optimizer"


def equilibrium_for_run(
    optimizer: str,
    lr: float,
    wd: float,
    momentum: float,
    betas: tuple[float, float],
    grad_norm: float | None,
    dim: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Predictions of :func:`siflow.theory.equilibrium` for the optimizer that ran.

    Returns ``(values, not_applicable)``: the quantities of :data:`QUANTITIES` that
    the optimizer's theory defines, and a reason for each of the others.
    """
    from siflow import theory

    name = THEORY_OF.get(optimizer)
    values: dict[str, Any] = {}
    if name is not None and wd > 0:
        g = grad_norm if name != "adamw" and grad_norm and grad_norm > 0 else None
        with np.errstate(over="ignore", divide="ignore", under="ignore", invalid="ignore"):
            eq = theory.equilibrium(
                lr,
                wd,
                g,
                momentum if name != "adamw" else 0.0,
                optimizer=name,
                betas=betas,
                n_params=dim,
            )
        values = {k: eq[k] + 0.0 for k, _, _ in QUANTITIES if k in eq}  # no -0
        infinite = [k for k, v in values.items() if not math.isfinite(v)]
        for k in infinite:
            del values[k]
        if infinite and lr * wd == 0.0:
            reason = "infinite: lr*wd underflows to 0 in double precision"
        else:
            reason = "not finite at these hyperparameters"
        if g is not None:
            values["grad_norm"] = g
        values["theory"] = theory.OPTIMIZERS[name]
    have_g = bool(grad_norm and grad_norm > 0)
    missing = {
        k: ("no weight decay: no equilibrium" if wd == 0 else _missing_reason(name, k, have_g))
        for k, _, _ in QUANTITIES
        if k not in values
    }
    if name is not None and wd > 0:
        missing.update({k: reason for k in infinite})
    return values, missing


def threshold_for_run(
    optimizer: str, lr: float, wd: float, momentum: float, sharpness: float | None
) -> dict[str, Any]:
    """The ELR stability threshold the run's optimizer has, with the formula used."""
    from siflow import theory

    if THEORY_OF.get(optimizer) != "sgd":
        return {"value": None, "formula": None, "reason": f"no ELR threshold for {optimizer}"}
    if not sharpness or sharpness <= 0:
        return {"value": None, "formula": None, "reason": "needs the sharpness at the minimum"}
    formula = "2(1 - lr wd)/S" if momentum == 0 else "2(1 + mu - lr wd)/S"
    value = float(theory.stability_threshold_elr(lr, wd, sharpness, momentum))
    return {"value": value, "formula": formula, "sharpness": sharpness}


# --------------------------------------------------------------------------- summary
def _ratio(m: Any, p: Any) -> str:
    if m is None or p is None or not p:
        return ""
    return f"{m / p:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The text report: run line, theory for the optimizer that ran, events, table."""
    cfg = summary["config"]
    eq = summary["equilibrium"]
    at = summary.get("equilibrium_at")
    lines = [
        f"run: {cfg['loss']} x {cfg['optimizer']}, {summary['steps_done']} of {cfg['steps']} "
        f"steps, status {summary['status']}, regime {summary['regime'] or 'n/a'}",
        f"theory: {eq.get('theory') or 'none'}",
        "",
        "equilibrium predicted by siflow.theory"
        + (" (for the measured RMS sphere gradient norm)" if "grad_norm" in eq else "")
        + (f" at the last step's lr={fmt_value(at['lr'])}, wd={fmt_value(at['wd'])}" if at else "")
        + ":",
    ]
    rows = []
    for key, label, unit in QUANTITIES:
        if key in eq:
            rows.append([label, eq[key], unit])
        else:
            rows.append([label, "n/a", summary["not_applicable"].get(key, "")])
    lines.append(format_rows(["quantity", "value", "unit / why n/a"], rows, align="lrl"))
    lines.append("")
    periods = summary["periods"]
    word = "periods" if summary["regime"] == "periodic" else "intervals between events"
    lines.append(f"{word}: {format_list_summary(periods, 'steps')}")
    if periods and len(periods) <= 8:
        lines.append("  " + ", ".join(fmt_value(p) for p in periods))
    thr = summary["threshold"]
    elr = summary["elr_at_events_summary"]
    if elr["count"]:
        if thr["value"]:
            lines.append(
                f"effective LR at events: median {fmt_value(elr['median'])} vs "
                f"{thr['formula']} = {fmt_value(thr['value'])} "
                f"({elr['median'] / thr['value']:.4f} x threshold)"
            )
        else:
            lines.append(
                f"effective LR at events: median {fmt_value(elr['median'])}; threshold n/a "
                f"({thr['reason']})"
            )
    dr = summary["decay_rate"]
    lines.append(
        f"norm decay rate: measured {fmt_value(dr['measured'])} vs predicted "
        f"{fmt_value(dr['predicted'])} per step"
    )
    st = summary["statistics"]
    pred = summary.get("predicted") or eq
    if st:
        lines.append("")
        per_row = " vs lr(t), wd(t) per row (the schedule note)" if at else ""
        lines.append(
            f"equilibrium statistics over steps {st['start']}..{st['stop']} ({st['steps']} steps, "
            f"exact sums over every step){per_row}:"
        )
        rows = [
            ["angular update RMS (rad/step)", st["angular_update_rms"], pred.get("angular_update")],
            ["norm mean", st["norm_mean"], pred.get("norm")],
            ["effective LR mean", st["elr_mean"], pred.get("elr")],
            ["sphere grad norm g~ RMS", st["grad_norm_sphere_rms"], None],
        ]
        lines.append(
            format_rows(
                ["quantity", "measured", "predicted", "ratio"],
                [r + [_ratio(r[1], r[2])] for r in rows],
            )
        )
    for note in summary.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- body
def _hyperparameters(args: Any) -> tuple[Any, Any]:
    """``lr`` and ``wd`` for :func:`siflow.simulate.simulate`: numbers or schedules."""
    from siflow.schedules import parse_schedule

    lr: Any = args.lr
    wd: Any = args.wd
    if args.schedule:
        lr = parse_schedule(args.schedule, base=args.lr)
    if args.wd_schedule:
        wd = parse_schedule(args.wd_schedule, base=args.wd)
    return lr, wd


def _check_numbers(args: Any) -> None:
    """One-line errors for numbers argparse accepts but the run cannot use."""
    for flag, value in (("--lr", args.lr), ("--wd", args.wd)):
        if not math.isfinite(value):
            raise CLIError(f"{flag} must be finite, got {value}; pass a finite number")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}; pass a positive number")
    if args.record_every is not None and args.record_every < 1:
        raise CLIError(
            f"--record-every must be >= 1, got {args.record_every}; pass a positive number"
        )
    for flag, value in (("--steps", args.steps), ("--record-every", args.record_every)):
        if value is not None:
            check_steps(flag, value)  # before the run's time estimate is printed
    if args.dim is not None and args.dim < 2:
        raise CLIError(
            f"--dim must be >= 2 (the toys live on a sphere), got {args.dim}; pass --dim 2 or more"
        )
    if args.batch is not None and args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}; pass a positive batch size")
    if args.max_rows is not None and args.max_rows < 2:
        raise CLIError(f"--max-rows must be >= 2, got {args.max_rows}; pass e.g. --max-rows 100000")
    if args.noise < 0 or not math.isfinite(args.noise):
        raise CLIError(f"--noise must be >= 0, got {args.noise}; pass a finite value >= 0")


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from siflow import losses as _losses
    from siflow import simulate as _sim
    from siflow.optim import make_optimizer

    # validate everything cheap before touching the file system (numbers that underflow
    # to 0, like --wd 1e-400, are refused by the shared parser, siflow._cli.float_arg)
    _check_numbers(args)
    betas = parse_betas(args.betas)
    lr, wd = _hyperparameters(args)
    loss_options = parse_loss_options(args.loss_option)
    _check_loss_options(args, loss_options)
    _check_schedules(args, lr, wd)
    record_every = args.record_every or 1
    max_points = DEFAULT_MAX_POINTS if args.record_every is None else None
    if max_points is not None:
        record_every = max(record_every, math.ceil(args.steps / max_points))
    max_rows = args.max_rows
    if max_rows is None:
        max_rows = DEFAULT_MAX_ROWS if args.record_every is None else _sim.DEFAULT_MAX_ROWS
    _check_rows(args, record_every, max_rows)
    est = _sim.estimate(
        args.loss,
        steps=args.steps,
        dim=args.dim,
        record_every=record_every,
        max_rows=max_rows,
        batch=args.batch,
        noise=args.noise,
        sharpness=args.sharpness,
        loss_options=loss_options,
        scheduled=int(bool(args.schedule)) + int(bool(args.wd_schedule)),
    )
    _sim.check_budget(est, args.steps, record_every, max_rows)
    make_optimizer(
        args.optimizer,
        lr=args.lr,
        wd=args.wd,
        momentum=args.momentum,
        betas=betas,
    )
    try:
        toy = _losses.make_loss(args.loss, dim=args.dim, **loss_options)
    except ValueError as exc:
        raise CLIError(loss_option_flags(str(exc))) from None
    if args.batch is not None and toy.n_samples == 0:
        raise CLIError(f"--batch applies to data toys (logistic), not {toy.name!r}; use --noise")
    out, created = _output_folder(args)
    traj_path = out / "trajectory.npz"
    if est["seconds"] > ANNOUNCE_SECONDS:
        sys.stderr.write(f"{PROG}: {_announcement(args, toy, est)}\n")
        sys.stderr.flush()

    try:
        traj = _sim.simulate(
            toy,
            args.optimizer,
            lr=lr,
            wd=wd,
            steps=args.steps,
            momentum=args.momentum,
            betas=betas,
            batch=args.batch,
            noise=args.noise,
            seed=args.seed,
            rho0=args.rho0,
            record_every=args.record_every,
            max_points=max_points,
            max_rows=max_rows,
            sharpness=args.sharpness,
            progress=False if args.quiet else None,
            checkpoint=traj_path,
            checkpoint_every=2.0,
        )
    except ValueError:
        _remove_if_unused(out, created)  # refused before anything was written
        raise
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: {_interrupted_line(traj_path, out, created)}\n")
        return interrupted_status()
    except OSError as exc:
        raise CLIError(_unsaved_line(exc, traj_path, out, created)) from None
    if traj.status == "interrupted":
        sys.stderr.write(
            f"{PROG}: {'terminated' if terminated() else 'interrupted'} after "
            f"{traj.meta['steps_done']} steps; wrote {traj_path}\n"
        )
        return interrupted_status()
    try:
        return _report(traj, args, toy, betas, out)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"{PROG}: interrupted after the run finished; wrote {traj_path} (status "
            f"{traj.status!r}, {traj.meta['steps_done']} steps), not its summary\n"
        )
        return interrupted_status()


def _report(traj: Any, args: Any, toy: Any, betas: tuple[float, float], out: Path) -> int:
    """Analyse a finished run, write ``summary.json`` (and the figure), print the summary."""
    traj_path = out / "trajectory.npz"
    fig_path = out / "figure.png"
    summary, result = _analyse(traj, args, toy, betas, traj_path)
    draw_figure = not args.no_figure and result is not None
    if draw_figure:
        from siflow.overlay import draw

        draw(traj, result, fig_path)
        summary["figure"] = str(fig_path)
    elif fig_path.is_file():
        fig_path.unlink()  # an earlier run's figure: not of this trajectory
    summary = json_ready(summary)
    with atomic_write(out / "summary.json") as fh:
        json.dump(summary, fh, sort_keys=True, indent=1)
    if args.json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_summary(summary) + "\n")
        files = [str(traj_path), str(out / "summary.json")]
        files += [str(fig_path)] if draw_figure else []
        sys.stdout.write("wrote: " + ", ".join(files) + "\n")
    return 0


def _output_folder(args: Any) -> tuple[Path, bool]:
    """``--out``, or the default folder claimed for this run; ``(folder, created)``.

    File-system errors become one line naming the folder and the fix.
    """
    try:
        if args.out:
            out = Path(args.out)
            existed = out.exists()
            ensure_dir(out)
            return out, not existed
        out, created = claim_default_out(args)
    except OSError as exc:
        if "--out" in str(exc):
            raise
        where = args.out or str(Path("runs") / run_name(args))
        reason = exc.strerror or str(exc)
        raise CLIError(
            f"cannot create the output directory {where!r} ({reason}); pass another --out"
        ) from None
    default = Path("runs") / run_name(args)
    if out != default:
        sys.stderr.write(
            f"{PROG}: note: {str(default)!r} holds a run of other options; writing to "
            f"{str(out)!r}\n"
        )
    return out, created


def _remove_if_unused(out: Path, created: bool) -> None:
    """Remove the output folder this run created when nothing but its record is in it."""
    if not created:
        return
    with contextlib.suppress(OSError):
        (out / RUN_FILE).unlink(missing_ok=True)
        out.rmdir()


def _saved_run(traj_path: Path) -> dict[str, Any] | None:
    """The metadata of the trajectory file (``None`` when there is none to read)."""
    try:
        with np.load(traj_path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError, EOFError):
        return None
    return meta if isinstance(meta, dict) else None


def _what_was_saved(traj_path: Path, out: Path, created: bool) -> str:
    """What ``traj_path`` holds, for a message about a run that stopped early (an
    output folder this run created and left empty is removed)."""
    meta = _saved_run(traj_path)
    if meta is None:
        _remove_if_unused(out, created)
        return f"nothing was written to {str(out)!r}"
    return (
        f"{str(traj_path)!r} holds {meta.get('steps_done')} of {meta.get('steps')} steps "
        f"(status {meta.get('status')!r})"
    )


def _interrupted_line(traj_path: Path, out: Path, created: bool) -> str:
    """The line for a signal that stopped the run while its file was being written."""
    what = "terminated" if terminated() else "interrupted"
    return f"{what} while writing the run; {_what_was_saved(traj_path, out, created)}"


def _unsaved_line(exc: OSError, traj_path: Path, out: Path, created: bool) -> str:
    """The line for a trajectory the file system would not take: path, fix, what is kept."""
    problem = describe_os_error(exc, "--out") or " ".join(str(exc).split())
    return (
        f"{problem}; the run was simulated up to that write but not saved "
        f"({_what_was_saved(traj_path, out, created)})"
    )


def _check_rows(args: Any, record_every: int, max_rows: int) -> None:
    """Refuse, naming flags, a stride that keeps more regular rows than ``--max-rows``.

    The fixes offered are ones the run then takes: a ``--record-every`` that fits, and a
    larger ``--max-rows`` only where that many rows fit in the available memory.
    """
    from siflow._memory import available_memory
    from siflow.simulate import _row_bytes

    rows = -(-args.steps // record_every)
    if rows <= max_rows:
        return
    need = -(-args.steps // max_rows)
    stride = (
        f"--record-every {args.record_every}"
        if args.record_every is not None
        else f"the default stride ({record_every})"
    )
    cap = f"--max-rows {max_rows}" + (" (the default)" if args.max_rows is None else "")
    fixes = f"pass --record-every {need} or more"
    avail = available_memory()
    if avail is None or 2 * rows * _row_bytes(args.sharpness, 2) < avail / 2:
        fixes += f", or --max-rows {rows} or more"
    raise CLIError(
        f"{stride} keeps {rows} rows over --steps {args.steps}, more than {cap}; {fixes}"
    )


def _announcement(args: Any, toy: Any, est: dict[str, Any]) -> str:
    """The line announcing a long run, naming what makes it long and how to shorten it."""
    from siflow import simulate as _sim

    took = (
        f"{args.steps} steps of {toy.name} (dim {toy.dim}) should take about "
        f"{_sim._human_seconds(est['seconds'])} on 2 cores"
    )
    if est.get("sharpness_seconds", 0.0) > 0.5 * est["seconds"]:
        return (
            f"{took}, mostly the sharpness (O(dim^3) at each kept row); drop --sharpness, "
            f"pass a larger --record-every or a smaller --dim for a shorter run (Ctrl-C "
            f"keeps what was simulated)"
        )
    if est.get("setup_seconds", 0.0) > 0.5 * est["seconds"]:
        return (
            f"{took}, mostly building the toy (its minimizer, O(dim^3)); pass a smaller --dim "
            f"for a shorter run"
        )
    return f"{took}; pass fewer --steps for a shorter run (Ctrl-C keeps what was simulated)"


#: Predictions compared with the measured statistics (``<key>_predicted`` in the overlay).
_COMPARED = ("angular_update", "norm", "elr", "decay_rate")

#: Overlay fields replaced by the exact statistics and the run's own theory.
_OVERRIDDEN = (
    "angular_update_rms",
    "grad_norm_sphere_rms",
    "grad_norm_sphere_mean",
    "norm_mean",
    "elr_mean",
    "angular_update_source",
    "angular_update_predicted",
    "norm_predicted",
    "elr_predicted",
    "decay_rate_predicted",
    "elr_threshold",
    "critical_norm",
    "predicted_period",
)


def _window_words(traj: Any, start: int, stop: int) -> str:
    """The statistics' window in words: the steps its exact sums cover."""
    return (
        f"steps {start + 1}..{stop}: the difference of the running sums at the kept rows "
        f"of steps {start} and {stop}, exact over every step between them"
    )


def _window_note(traj: Any, start: int, stop: int) -> str | None:
    """A note when the thinning placed the statistics' window, else None.

    The running sums are known at kept rows only, and the stationary part is found
    from the kept rows, so each end of the window is a kept row chosen among them. At
    a stride ``k > 1`` an end on a regular row (a multiple of ``k``, not the first or
    last step) was placed by the stride: another ``--record-every`` can give another
    window, and other statistics (each exact over its own window). Ends on rows kept
    near norm jumps (periodic runs) do not depend on the stride.
    """
    every = int(traj.meta.get("record_every") or 1)
    if every <= 1 or not len(traj):
        return None
    first, last = int(traj.step[0]), int(traj.step[-1])
    placed = [e for e in (start, stop) if e % every == 0 and e not in (first, last)]
    if not placed:
        return None
    return (
        f"the equilibrium statistics are exact over steps {start + 1}..{stop}, a window "
        f"whose ends are kept rows (every {every}th step here) chosen from the kept rows: "
        f"another --record-every can place it elsewhere and change the statistics; "
        f"--record-every 1 places it on every step"
    )


def _analyse(
    traj: Any, args: Any, toy: Any, betas: tuple[float, float], traj_path: Path
) -> tuple[dict, Any]:
    """Measure (overlay), replace the statistics by exact ones, predict with the run's theory."""
    from siflow.overlay import analyze

    s_min = traj.meta.get("sharpness_min")
    notes: list[str] = []
    result = None
    d: dict[str, Any] = {}
    scheduled = traj.has("lr") or traj.has("wd")
    lr_end = float(traj.extra["lr"][-1]) if traj.has("lr") and len(traj) else traj.meta["lr"]
    wd_end = float(traj.extra["wd"][-1]) if traj.has("wd") and len(traj) else traj.meta["wd"]
    sgd_family = THEORY_OF.get(args.optimizer) == "sgd"
    if len(traj) < 3:
        notes.append(f"only {len(traj)} rows before the run stopped: nothing to analyse")
    else:
        work = traj[:]
        work.meta.update(lr=lr_end, wd=wd_end)
        if wd_end == 0:
            work.meta["wd"] = None  # the closed forms need weight decay; measure only
            notes.append("wd = 0: no weight decay, so no theory predictions")
        with np.errstate(over="ignore", divide="ignore", under="ignore", invalid="ignore"):
            result = analyze(work, sharpness=s_min if s_min and wd_end > 0 and sgd_family else None)
        d = result.to_dict()
        d["notes"] = [n for n in d["notes"] if "adaptive optimizers" not in n]
        if wd_end == 0:  # said once above: no notes asking for the wd the run has not
            d["notes"] = [n for n in d["notes"] if "lr and wd" not in n]
    stats: dict[str, Any] = {}
    if d.get("stationary_start") is not None:
        exact = traj.exact_means(d["stationary_start"], d["stationary_stop"])
        if exact is not None:
            stats = dict(exact, start=d["stationary_start"], stop=d["stationary_stop"])
            stats["window"] = _window_words(traj, stats["start"], stats["stop"])
            moved = _window_note(traj, stats["start"], stats["stop"])
            if moved:
                notes.append(moved)
            for key in (
                "angular_update_rms",
                "grad_norm_sphere_rms",
                "grad_norm_sphere_mean",
                "norm_mean",
                "elr_mean",
            ):
                d[key] = exact[key]
            d["angular_update_source"] = "exact running sums over every step"
    g = stats.get("grad_norm_sphere_rms")
    if g is None:
        whole = traj.exact_means()
        g = whole["grad_norm_sphere_rms"] if whole else None
    momentum = float(traj.meta.get("momentum") or 0.0)
    eq, missing = equilibrium_for_run(
        args.optimizer, lr_end, wd_end or 0.0, momentum, betas, g, toy.dim
    )
    thr = threshold_for_run(args.optimizer, lr_end, wd_end or 0.0, momentum, s_min)
    # what the measured statistics are compared with: the run's theory at its constant lr
    # and wd, or under a schedule the overlay's per-row lr(t), wd(t) predictions averaged
    # over the stationary rows (the decay rate over the measured slope's own rows); never
    # the last step's equilibrium, which the rows before it did not see
    compared = {key: eq.get(key) for key in _COMPARED}
    if scheduled:
        compared = {key: d.get(f"{key}_predicted") for key in _COMPARED}
    if d:
        for key in _COMPARED:
            d[f"{key}_predicted"] = compared[key]
        d["elr_threshold"] = thr["value"]
        if thr["value"]:
            from siflow import theory

            d["critical_norm"] = float(theory.critical_norm(lr_end, wd_end, s_min, momentum))
        else:
            d["critical_norm"] = None
        if THEORY_OF.get(args.optimizer) != "sgd":
            d["predicted_period"] = None
            notes.append(
                f"{args.optimizer}: the decay-law period and the ELR threshold are SGD forms; "
                f"not compared"
            )
    if result is not None:  # the figure draws what the summary says
        for key in _OVERRIDDEN:
            if key in d:
                setattr(result, key, d[key])
    periods = d.get("periods", [])
    summary: dict[str, Any] = {
        "config": {
            "loss": toy.name,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "wd": args.wd,
            "lr_schedule": traj.meta.get("lr_schedule"),
            "wd_schedule": traj.meta.get("wd_schedule"),
            "momentum": args.momentum,
            "betas": list(betas) if args.optimizer == "adamw" else None,
            "dim": toy.dim,
            "steps": args.steps,
            "batch": args.batch,
            "noise": args.noise,
            "seed": args.seed,
            "loss_options": toy.options,
            "record_every": traj.meta.get("record_every"),
            "record_every_near_jumps": traj.meta.get("record_every_near_jumps"),
            "max_rows": traj.meta.get("max_rows"),
        },
        "status": traj.status,
        "steps_done": traj.meta.get("steps_done"),
        "rows_kept": len(traj),
        "periods": periods,
        "period_summary": summarize_list(periods),
        "period_median": d.get("period_median"),
        "events": result.events.to_dict() if result is not None else None,
        "equilibrium": eq,
        "equilibrium_at": {"lr": lr_end, "wd": wd_end} if scheduled else None,
        "predicted": compared,
        "not_applicable": missing,
        "threshold": thr,
        "elr_at_events": d.get("elr_at_events", []),
        "elr_at_events_summary": summarize_list(d.get("elr_at_events", [])),
        "elr_threshold": thr["value"],
        "sharpness_min": s_min,
        "decay_rate": {
            "measured": d.get("decay_rate_measured"),
            "predicted": compared["decay_rate"],
        },
        "statistics": stats,
        "angular_update_rms": stats.get("angular_update_rms"),
        "grad_norm_sphere_rms": stats.get("grad_norm_sphere_rms"),
        "regime": d.get("regime", "diverged" if traj.status == "diverged" else ""),
        "overlay": d or None,
        "notes": notes + d.get("notes", []),
        "trajectory": str(traj_path),
    }
    return summary, result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
