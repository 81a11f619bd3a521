"""``python -m siflow.overlay LOG``: theory overlaid on a training log.

Reads the log with :func:`siflow.io.read`, runs :func:`siflow.overlay.analyze` with
the theory of the optimizer that ran, prints a table (or one JSON object with
``--json``) and writes ``summary.json`` (every field, long lists whole) and the
figure under ``runs/overlay/<log name>/`` (or the directory ``--out``), never next
to the log; ``--out FIGURE.png`` writes that figure only. It prints where its
outputs went. What the reader says a user must see (bad cells, an evaluation log,
gradient norms left unconverted, a time axis in epochs) follows the table as
``reader:`` lines and is kept in ``summary.json`` as ``reader_notes``; a log timed
in epochs is reported in epochs. ``--evaluation`` reads an evaluation log (the seed
paper's ``test-em.npz``), which is refused without it. Bad input gives one line on
stderr and exit status 2; files are written atomically, so nothing is left
half-written.
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
    add_log_arguments,
    os_error_fix,
    parse_betas,
    read_log,
    refuse_ignored_flags,
    run_main,
)

PROG = "python -m siflow.overlay"
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: Lists longer than this are summarised on screen (count, median, quartiles).
SCREEN_LIST = 8


def build_parser() -> ArgumentParser:
    """The argument parser of ``python -m siflow.overlay``."""
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Measure destabilization events, periods, equilibrium statistics and the exact "
            "scale-invariance checks of a training log or simulation, and compare them with "
            "the closed forms of siflow.theory for the optimizer that ran; print a table, "
            "write summary.json and a figure."
        ),
    )
    p.add_argument("log", help="log file or directory (any format siflow.io.read accepts)")
    p.add_argument("--lr", type=float, help="learning rate (default: the log's lr column/metadata)")
    p.add_argument("--wd", type=float, help="weight decay (default: the log's wd column/metadata)")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "sgdm", "nesterov", "adamw", "lion"),
        help="whose theory predicts (default: the log's metadata, else sgd)",
    )
    p.add_argument("--momentum", type=float, help="heavy-ball momentum (default: metadata, else 0)")
    add_betas_argument(
        p,
        default=None,
        help="AdamW/Lion betas (default: metadata, else 0.9,0.999 for AdamW, 0.9,0.99 for Lion)",
    )
    p.add_argument(
        "--schedule",
        metavar="SPEC",
        help="lr schedule, e.g. cosine:peak=0.5,warmup=500,min=0.005,steps=20000 (peak "
        "defaults to --lr); overrides the log's lr column",
    )
    p.add_argument("--wd-schedule", metavar="SPEC", help="weight-decay schedule (same syntax)")
    p.add_argument(
        "--group-size",
        action="append",
        default=[],
        metavar="NAME=C",
        help="elements of an SI group, for the AdamW/Lion norms (repeatable)",
    )
    p.add_argument(
        "--n-params", type=float, help="elements behind the total norm (AdamW/Lion norm)"
    )
    p.add_argument(
        "--sharpness",
        type=float,
        help="top Hessian eigenvalue on the unit sphere, for the stability threshold",
    )
    add_log_arguments(p)
    p.add_argument(
        "--evaluation",
        action="store_true",
        help="read an evaluation log (the seed paper's test-em.npz: test set, eval mode) "
        "as evaluation metrics; without it such a log is refused",
    )
    p.add_argument(
        "--out",
        help="output directory (default runs/overlay/<log name>), or a figure path ending in "
        ".png/.svg/.pdf (then only that figure is written)",
    )
    p.add_argument("--no-figure", action="store_true", help="do not draw a figure")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--detect",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the event detector siflow.periods.find_events, e.g. "
        "--detect min_rise=0.05 or --detect signal=loss (repeatable)",
    )
    p.add_argument("--predict-lr", type=float, help="predict the period at this learning rate")
    p.add_argument("--predict-wd", type=float, help="predict the period at this weight decay")
    p.add_argument(
        "--predict-momentum",
        type=float,
        help="predict the period at this heavy-ball momentum (SGD family; e.g. a momentum-0.9 "
        "run from a plain one)",
    )
    return p


# -------------------------------------------------------------- messages
_PARAM_FLAGS = {
    "mapping": "--map",
    "group_sizes": "--group-size NAME=C",
    "n_params": "--n-params",
    "wd_schedule": "--wd-schedule",
    "predict_lr": "--predict-lr",
    "predict_wd": "--predict-wd",
    "predict_momentum": "--predict-momentum",
    "steps_per_epoch": "--steps-per-epoch",
    "detector": "--detect KEY=VALUE",
}


#: Library parameters that are switches here: ``name=True`` becomes the bare flag.
_SWITCHES = {"evaluation": "--evaluation"}


def _map_flag(m: re.Match[str]) -> str:
    column = m.group(2)
    return f"--map {m.group(1)}={'<column>' if column == 'COLUMN' else column}"


def to_flags(text: str) -> str:
    """A library message with Python parameters (``lr=``, ``mapping={"rho": COLUMN}``,
    ``evaluation=True``, ``predict_lr must be > 0``) rewritten with this command's flags
    (``--lr``, ``--map rho=<column>``, ``--evaluation``, ``--predict-lr must be > 0``)."""
    text = re.sub(r"""mapping=\{['"](\w+)['"]: ['"]?([^'"{}]+?)['"]?\}""", _map_flag, text)
    switches = "|".join(sorted(_SWITCHES, key=len, reverse=True))
    text = re.sub(rf"\b({switches})=True\b", lambda m: _SWITCHES[m.group(1)], text)

    def flag(m: re.Match[str]) -> str:
        name = m.group(1)
        return _PARAM_FLAGS.get(name, "--" + name.replace("_", "-"))

    names = "|".join(
        sorted(
            [
                "lr", "wd", "momentum", "optimizer", "betas", "schedule", "group", "sharpness",
                "fmt", "run", *_PARAM_FLAGS, *_SWITCHES,
            ],
            key=len,
            reverse=True,
        )
    )  # fmt: skip
    text = re.sub(rf"\b({names})=(?=[\s,;:.)]|$)", flag, text)
    # a parameter that only a flag sets, named by a check of its value ("predict_lr must
    # be > 0"); lr and wd stay as they are: their value may come from the log
    only_flags = "|".join(sorted((n for n in _PARAM_FLAGS if "_" in n), key=len, reverse=True))
    return re.sub(rf"(?:^|(?<=[\s;(]))({only_flags})(?= (?:must|is|has)\b)", flag, text)


# ----------------------------------------------------------------- table
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        text = f"{v:.6g}"
    else:
        text = str(v)
    return f"{text} {unit}".rstrip()


def _ratio(measured: float | None, predicted: float | None) -> str:
    if measured is None or predicted is None or predicted == 0:
        return ""
    return f"{measured / predicted:.4f}"


def summarize_list(values: Sequence[float | None]) -> str:
    """A list on one line: whole when short, else count, median and quartiles."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(values) <= SCREEN_LIST:
        return "[" + ", ".join(_fmt(v) for v in values) + "]"
    if not finite:
        return f"{len(values)} values, none finite"
    q1, med, q3 = np.percentile(finite, [25, 50, 75])
    return (
        f"{len(values)} values: median {med:.6g}, quartiles {q1:.6g} .. {q3:.6g}, "
        f"range {min(finite):.6g} .. {max(finite):.6g}"
    )


def _check_line(d: dict[str, Any]) -> str:
    parts = [
        f"{label} {d[key]:.2g}"
        for key, label in (
            ("norm_replay_error_max", "norm replay max"),
            ("angle_law_error_median", "angle law median"),
            ("radial_law_error_max", "radial law max"),
        )
        if d.get(key) is not None
    ]
    detail = f" ({'; '.join(parts)} relative error over {d['check_rows']} rows)" if parts else ""
    return f"scale-invariance check: {d['scale_invariance']}{detail}"


def _hyper_line(d: dict[str, Any]) -> str:
    hp = f"optimizer={d.get('optimizer', 'sgd')}  lr={_fmt(d['lr'])}"
    if d.get("lr_schedule"):
        hp += " (peak of a schedule)"
    hp += f"  wd={_fmt(d['wd'])}"
    if d.get("wd_schedule"):
        hp += " (peak of a schedule)"
    if d.get("optimizer", "sgd") in ("sgd", "sgdm", "nesterov"):
        hp += f"  momentum={_fmt(d['momentum'])}"
        if d.get("momentum_schedule"):
            hp += " (varies per row: the log's momentum column)"
    if d.get("betas"):
        hp += f"  betas={d['betas'][0]:g},{d['betas'][1]:g}"
    return f"regime: {d['regime']}    {hp}"


def format_table(d: dict[str, Any]) -> str:
    """Readable table of an :meth:`OverlayResult.as_flat_dict` (measured, predicted, ratio)."""
    forms = d.get("formulas") or {}
    unit = "epoch" if d.get("time_unit") == "epoch" else "step"
    units = f"{unit}s"
    lines = [_hyper_line(d)]
    if "scale_invariance" in d:
        lines.append(_check_line(d))
    lines.append(
        f"events: {d['n_events']} (detected on {d['detection_signal'] or 'n/a'})"
        + (f"; stationary part: {units} {d['stationary_start']}..{d['stationary_stop']}")
    )
    if d.get("periods"):
        lines.append(f"periods ({units}): {summarize_list(d['periods'])}")
    lines.append("")
    lines.append(f"{'quantity':<36}{'measured':>14}{'predicted':>14}{'ratio':>9}")
    rows = [
        (f"period median ({units})", d["period_median"], d["predicted_period"]),
        ("effective LR at events (median)", d["elr_at_events_median"], d["elr_threshold"]),
        ("angular update RMS (rad/step)", d["angular_update_rms"], d["angular_update_predicted"]),
        ("norm mean", d["norm_mean"], d["norm_predicted"]),
        ("effective LR mean", d["elr_mean"], d["elr_predicted"]),
        (f"norm decay rate (1/{unit})", d["decay_rate_measured"], d["decay_rate_predicted"]),
    ]
    for name, m, p in rows:
        lines.append(f"{name:<36}{_fmt(m):>14}{_fmt(p):>14}{_ratio(m, p):>9}")
    extra = [
        ("sphere grad norm g~ RMS", d["grad_norm_sphere_rms"]),
        ("norm ratio rho_peak/rho_next (median)", d["norm_ratio_median"]),
        (f"rise to peak ({units}, median)", d["rise_steps_median"]),
        ("sharpness S", d["sharpness"]),
        ("critical norm", d["critical_norm"]),
    ]
    for name, v in extra:
        if v is not None:
            lines.append(f"{name:<36}{_fmt(v):>14}")
    if d["predict_lr"] is not None:
        mom = "" if d["predict_momentum"] is None else f", momentum={_fmt(d['predict_momentum'])}"
        lines.append(
            f"period at lr={_fmt(d['predict_lr'])}, wd={_fmt(d['predict_wd'])}{mom}: "
            f"{_fmt(d['predicted_period_at'], units)} ({d['predicted_period_method'] or 'n/a'})"
        )
    if d["elr_at_events_median"] is not None and d["elr_threshold"] is not None:
        lines.append("(the 'predicted' effective LR at events is the stability threshold)")
    if d.get("groups"):
        lines.extend(_group_table(d["groups"]))
    if forms:
        lines.append("")
        lines.append("formulas:")
        for key in ("angular_update", "norm", "elr", "decay_rate", "threshold"):
            if key in forms:
                lines.append(f"  {key:<15}{forms[key]}")
    for note in d["notes"]:
        lines.append(f"note: {to_flags(note)}")
    for note in d.get("reader_notes") or []:
        lines.append(f"reader: {to_flags(note)}")
    return "\n".join(lines)


def reader_notes(meta: dict[str, Any]) -> list[str]:
    """What the reader says a user must see: ``meta["notes"]`` (bad cells, evaluation
    logs, gradient-norm conversions, ...), then ``meta["time_note"]`` (time axis)."""
    raw = meta.get("notes")
    notes = [str(n) for n in raw] if isinstance(raw, (list, tuple)) else []
    if raw is not None and not isinstance(raw, (list, tuple)):
        notes.append(str(raw))
    time_note = meta.get("time_note")
    if time_note and str(time_note) not in notes:
        notes.append(str(time_note))
    return notes


def _group_table(groups: list[dict[str, Any]]) -> list[str]:
    width = min(max(len("SI group"), *(len(g["name"]) for g in groups)) + 2, 42)
    out = ["", f"{'SI group':<{width}}{'angle RMS':>11}{'Delta*':>11}{'ratio':>8}"
           f"{'norm mean':>11}{'rho*':>11}{'replay err':>11}  note"]  # fmt: skip
    for g in groups:
        err = g.get("norm_replay_error_max")
        if err is None:
            err = g.get("radial_law_error_max")
        out.append(
            f"{g['name'][: width - 1]:<{width}}{_fmt(g['angular_update_rms']):>11}"
            f"{_fmt(g['angular_update_predicted']):>11}"
            f"{_ratio(g['angular_update_rms'], g['angular_update_predicted']):>8}"
            f"{_fmt(g['norm_mean']):>11}{_fmt(g['norm_predicted']):>11}"
            f"{('n/a' if err is None else f'{err:.2g}'):>11}  {to_flags(g.get('note') or '')}"
        )
    return out


# ----------------------------------------------------------------- outputs
def _log_id(log: Path) -> str:
    """The log an output directory belongs to, as ``summary.json`` records it."""
    return str(log.resolve())


def _default_name(log: Path) -> str:
    """The default output folder's name: the log's stem (a file) or name (a folder)."""
    return (log.stem if log.is_file() else log.name) or "log"


def _owner(out: Path) -> str | None:
    """The log whose output ``out`` holds (its ``summary.json``), None if unknown."""
    try:
        owner = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("log")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, str) else None


def claim_default_out(log: Path) -> Path:
    """``runs/overlay/<log name>``, or ``<log name>-2``, ``-3``, ... when that directory
    holds the output of another log: peers' logs have fixed names (``train-tm.npz``,
    ``metrics.csv``, ``dynamics.pkl``), and one run's output must not replace
    another's.

    A new folder is claimed by creating it (``os.mkdir``, which fails when it exists),
    so two overlays started together on different logs never share one; an existing
    folder is used again only when its ``summary.json`` is of the same log. The folder
    is created here: call this just before writing into it.
    """
    from siflow._fileio import claim_folder

    owner = _log_id(log)
    out, _ = claim_folder(
        Path("runs") / "overlay", _default_name(log), lambda d: _owner(d) == owner
    )
    return out


def _release_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds nothing (a default folder claimed by a run whose
    writes then failed), so that the next run of another log does not pass it over."""
    with contextlib.suppress(OSError):  # not empty (an earlier run's output), or gone
        folder.rmdir()


def _outputs(args: Any, log: Path) -> tuple[Path | None, Path | None]:
    """(figure path or None, summary path or None) from ``--out``; nothing next to the log.

    Without ``--out`` both are None here: the default folder is claimed when the outputs
    are written (:func:`claim_default_out`), so that a refused log claims nothing.
    """
    if args.no_figure and args.out and Path(args.out).suffix.lower() in FIGURE_SUFFIXES:
        raise CLIError("--out names a figure but --no-figure is set; drop one")
    if args.out and Path(args.out).suffix.lower() in FIGURE_SUFFIXES:
        fig = Path(args.out)
        if not fig.parent.is_dir():
            raise CLIError(f"--out directory {str(fig.parent)!r} does not exist; create it first")
        return fig, None
    if args.out and Path(args.out).suffix and not Path(args.out).is_dir():
        raise CLIError(
            f"--out {args.out!r} must be a directory or a figure ending in .png, .svg or .pdf"
        )
    if not args.out:
        return None, None
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out {str(out_dir)!r} is a file; pass a directory")
    return (None if args.no_figure else out_dir / "overlay.png"), out_dir / "summary.json"


def _output_paths(args: Any, log: Path) -> tuple[Path | None, Path | None]:
    """The figure and summary paths, with their folder made (the default one claimed).

    File-system errors become one line naming the folder and the fix.
    """
    from siflow._fileio import ensure_dir

    fig, summary = _outputs(args, log)
    try:
        if fig is None and summary is None:
            out_dir = claim_default_out(log)
            fig = None if args.no_figure else out_dir / "overlay.png"
            summary = out_dir / "summary.json"
        elif summary is not None:
            ensure_dir(summary.parent)
    except OSError as exc:
        if "--out" in str(exc) or "output directory" in str(exc):
            raise
        where = args.out or str(Path("runs") / "overlay" / _default_name(log))
        raise CLIError(_cannot_write(exc, where, "cannot create the output directory")) from None
    return fig, summary


def _cannot_write(exc: OSError, where: str, what: str) -> str:
    """One line for a file-system error: what could not be done where, why, and the fix."""
    reason = exc.strerror or " ".join(str(exc).split())
    fix = os_error_fix(exc, "--out") or "pass another --out"
    return f"{what} {where!r} ({reason}); {fix}"


def _group_sizes(items: Sequence[str]) -> dict[str, float] | None:
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--group-size {item!r}: write NAME=C with C a number") from None
        if not eq or not name.strip():
            raise CLIError(f"--group-size {item!r}: write NAME=C, e.g. --group-size conv1=864")
    return out


def _detector(items: Sequence[str]) -> dict[str, Any] | None:
    """``--detect KEY=VALUE`` items as keyword arguments (numbers, true/false, none, text)."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not eq or not key or not text:
            raise CLIError(f"--detect {item!r}: write KEY=VALUE, e.g. --detect min_rise=0.05")
        low = text.lower()
        value: Any
        if low in ("true", "false"):
            value = low == "true"
        elif low == "none":
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with one line on stderr on bad input)."""
    return run_main(_body, argv, prog=PROG)


def _records(traj: Any, name: str) -> bool:
    """Whether the log gives ``lr`` or ``wd``: in its metadata, or as a column
    (:meth:`siflow.trajectory.Trajectory.logged`)."""
    return traj.meta.get(name) is not None or traj.logged(name) is not None


def _read(args: Any, log: Path) -> Any:
    traj = read_log(args, log, evaluation=True if args.evaluation else None)
    if not any(traj.has(c) for c in ("rho", "elr", "loss")):
        raise CLIError(
            f"{str(log)!r} has no weight-norm, effective-LR or loss column (present: "
            f"{', '.join(traj.columns())}); name one with --map rho=<column> or "
            f"--map loss=<column>"
        )
    has = {n: _records(traj, n) for n in ("lr", "wd")}
    given = {"lr": args.lr is not None or args.schedule, "wd": args.wd is not None}
    given["wd"] = given["wd"] or bool(args.wd_schedule)
    missing = [n for n in ("lr", "wd") if not has[n] and not given[n]]
    if missing:
        raise CLIError(
            f"{str(log)!r} does not record {' and '.join(missing)}; pass "
            + " and ".join(f"--{n} VALUE" for n in missing)
            + _per_group_lr_hint(traj, missing)
        )
    return traj


def _per_group_lr_hint(traj: Any, missing: list[str]) -> str:
    """The per-parameter-group lr columns a log has when no single lr was read from them
    (``lr-SGD/pg1``, ``lr-SGD/pg2`` that differ; ``meta["lr_columns"]``), as a fix."""
    cols = traj.meta.get("lr_columns") if "lr" in missing else None
    if not cols:
        return ""
    return (
        f" (the log has one lr per parameter group: {', '.join(map(str, cols))}; pass "
        f"--map lr={cols[0]} for the scale-invariant group's)"
    )


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from siflow._fileio import atomic_write
    from siflow.overlay import analyze, draw

    if not args.log.strip():
        raise CLIError("the log path is empty; pass a log file or a run directory")
    log = Path(args.log)
    if not log.exists():
        raise CLIError(
            f"no such log: {str(log)!r}; check the path "
            f"(a log file, or a TensorBoard/Lightning run directory)"
        )
    refuse_ignored_flags(args)
    _outputs(args, log)  # --out checked before the log is read
    sizes = _group_sizes(args.group_size)
    detector = _detector(args.detect)
    try:
        traj = _read(args, log)
        result = analyze(
            traj,
            lr=args.lr,
            wd=args.wd,
            momentum=args.momentum,
            optimizer=args.optimizer,
            betas=parse_betas(args.betas) if args.betas else None,
            schedule=args.schedule,
            wd_schedule=args.wd_schedule,
            n_params=args.n_params,
            group_sizes=sizes,
            sharpness=args.sharpness,
            predict_lr=args.predict_lr,
            predict_wd=args.predict_wd,
            predict_momentum=args.predict_momentum,
            detector=detector,
        )
    except ValueError as exc:
        raise CLIError(to_flags(str(exc))) from None
    d = result.as_flat_dict()
    d["reader_notes"] = reader_notes(traj.meta)
    d["log"] = _log_id(log)
    # per event: start, peak, norm and effective LR before and after, the loss spike
    d["events"] = result.events.to_dict() if result.events is not None else None
    fig, summary = _output_paths(args, log)
    wrote = []
    if summary is not None:
        d["summary"] = str(summary)
    try:
        if fig is not None:
            draw(traj, result, fig)
            d["figure"] = str(fig)
            wrote.append(f"figure: {fig}")
        if summary is not None:
            with atomic_write(summary) as fh:
                fh.write(json.dumps(d, sort_keys=True, indent=1, allow_nan=False) + "\n")
            wrote.append(f"summary: {summary}")
    except BaseException as exc:
        if not args.out:  # a default folder this run claimed and left empty is given back
            _release_if_empty((summary or fig).parent)  # type: ignore[union-attr]
        if not isinstance(exc, OSError) or exc.errno is None:
            raise
        path = exc.filename if exc.filename is not None else (summary or fig)
        raise CLIError(_cannot_write(exc, str(path), "cannot write")) from None
    if args.json:
        sys.stdout.write(json.dumps(d, sort_keys=True, allow_nan=False) + "\n")
        sys.stderr.write("".join(line + "\n" for line in wrote))
    else:
        sys.stdout.write(format_table(d) + "\n")
        sys.stdout.write("".join(line + "\n" for line in wrote))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
