"""Body of ``python -m siflow.sweep`` (see :mod:`siflow.sweep`).

Flags shared with ``python -m siflow.simulate`` have the same names and defaults
(``--loss`` default: the default toy, ``--batch``, ``--noise``, ``--dim``,
``--optimizer``, ``--record-every``, ``--steps``).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siflow._cli import (
    ArgumentParser,
    CLIError,
    describe_os_error,
    flag_subjects,
    run_main,
    terminate_as_interrupt,
)
from siflow._validate import check_positive, check_positive_int
from siflow.sweep import (
    DEFAULT_MAX_ROWS,
    REGIMES,
    SweepResult,
    load,
    log_grid,
    phase_diagram,
    sweep,
)

PROG = "python -m siflow.sweep"

_LETTER = {"converged": "c", "equilibrium": "e", "periodic": "P", "diverged": "D", "": "."}

#: Library parameters named in messages, and the flags that set them.
_FLAGS = {
    "lr": "--lr",
    "wd": "--wd",
    "momentum": "--momentum",
    "seeds": "--seeds",
    "steps": "--steps",
    "out": "--out",
    "workers": "--workers",
    "restart": "--restart",
    "max_rows": "--max-rows",
    "max_hours": "--max-hours",
    "simulator": "--simulator",
    "schedule": "--schedule",
    "optimizer": "--optimizer",
    "dim": "--dim",
    "noise": "--noise",
    "batch": "--batch",
    "record_every": "--record-every",
}
#: Library parameters this command has no flag for: named as plain words.
_WORDS = ("betas",)
#: ``name=value`` where a message names a parameter: at the start, after a space or
#: ``(``, so that the keys inside a schedule spec (``'cosine:warmup=9,steps=50'``) stay.
_PARAM = re.compile(
    r"(?:^|(?<=[\s(]))("
    + "|".join(sorted(map(re.escape, [*_FLAGS, *_WORDS]), key=len, reverse=True))
    + r")=(\([^)]*\)|[^\s,;)]*)"
)

DEFAULT_MAX_HOURS = 24.0


def build_parser() -> ArgumentParser:
    from siflow.simulate import DEFAULT_LOSS

    p = ArgumentParser(
        prog=PROG,
        description=(
            "Sweep lr x wd (log-spaced) x momentum x seeds for one toy loss, classify each run "
            "(converged / equilibrium / periodic / diverged), measure periods and effective LR, "
            "and draw the phase diagram. Results are written cell by cell into --out; rerun the "
            "same command to resume an interrupted sweep."
        ),
    )
    p.add_argument("--loss", default=DEFAULT_LOSS, help="toy loss (default: %(default)s)")
    p.add_argument(
        "--lr",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        default=[1e-2, 1.0],
        help="learning-rate range, log-spaced (default: 1e-2 1)",
    )
    p.add_argument("--n-lr", type=int, default=7, help="number of lr values (default: 7)")
    p.add_argument(
        "--wd",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        default=[1e-4, 1e-2],
        help="weight-decay range, log-spaced (default: 1e-4 1e-2)",
    )
    p.add_argument("--n-wd", type=int, default=5, help="number of wd values (default: 5)")
    p.add_argument(
        "--momentum", nargs="+", type=float, default=[0.0], help="momentum values (default: 0)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    p.add_argument("--steps", type=int, default=20_000, help="steps per run (default: 20000)")
    p.add_argument("--optimizer", default=None, help="optimizer name passed to simulate")
    p.add_argument("--dim", type=int, default=None, help="dimension of the toy")
    p.add_argument("--noise", type=float, default=None, help="isotropic gradient noise sigma")
    p.add_argument("--batch", type=int, default=None, help="minibatch size (data toys)")
    p.add_argument("--batch-size", dest="batch", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--record-every",
        type=int,
        default=None,
        help="keep every k-th step (default: thinned to at most --max-rows rows)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        metavar="SPEC",
        help="learning-rate schedule of every cell, e.g. cosine:warmup=500,min=0.005,"
        "steps=20000 (see siflow.schedules); it peaks at the cell's lr (no peak= of its "
        "own) and must stay above 0 over --steps",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help="rows each simulation keeps at most, which bounds memory (default: %(default)s)",
    )
    p.add_argument(
        "--max-hours",
        type=float,
        default=DEFAULT_MAX_HOURS,
        help="refuse a sweep estimated to take longer (default: %(default)s)",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/sweep_<loss>)")
    p.add_argument(
        "--figure", default=None, help="phase-diagram file (default: OUT/phase_diagram.png)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: all cores)"
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="run on the Dask scheduler at ADDRESS (needs siflow[dask])",
    )
    p.add_argument("--task-size", type=int, default=1, help="cells per task (default: 1)")
    p.add_argument(
        "--restart", action="store_true", help="discard a previous, different sweep in --out"
    )
    p.add_argument(
        "--simulator",
        default="siflow.simulate:simulate",
        metavar="MODULE:FUNC",
        help="simulation function with simulate()'s signature (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON lines")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _print_grid(result: SweepResult) -> None:
    cfg = result.config
    print(
        "regimes: c=converged e=equilibrium P=periodic D=diverged .=not run; "
        "number = median period in steps"
    )
    for mom in cfg.momentum:
        grid = result.regime_grid(mom)
        period = result.value_grid("period", mom)
        print(f"\nmomentum = {mom:g}   (rows: wd, columns: lr)")
        print("wd \\ lr   " + "".join(f"{x:>10.3g}" for x in cfg.lr))
        for i, w in enumerate(cfg.wd):
            cells = []
            for j in range(len(cfg.lr)):
                label = _LETTER.get(grid[i, j], "?")
                if grid[i, j] == "periodic" and math.isfinite(period[i, j]):
                    label = f"P{period[i, j]:.0f}"
                cells.append(f"{label:>10}")
            print(f"{w:<10.3g}" + "".join(cells))
    counts = {r: int((result.column("regime") == r).sum()) for r in REGIMES}
    print("\ncells: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


#: The most values of one grid axis (a larger grid is refused before it is built; the
#: sweep's time and memory estimate refuses far smaller ones on most machines).
_MAX_AXIS = 1_000_000


def _grid(name: str, bounds: list[float], num: int) -> np.ndarray:
    """``log_grid`` with errors naming the command-line options."""
    lo, hi = check_positive(f"--{name}", np.asarray(bounds, dtype=np.float64))
    n = check_positive_int(f"--n-{name}", num)
    if n > _MAX_AXIS:
        raise ValueError(
            f"--n-{name} {n} is more values than a sweep axis takes (at most {_MAX_AXIS:,}); "
            f"pass a smaller --n-{name}"
        )
    if hi < lo:
        raise ValueError(f"--{name} LO HI needs LO <= HI, got {lo:g} {hi:g}; swap them")
    if n == 1 and lo != hi:
        raise ValueError(
            f"--n-{name} 1 needs LO == HI, got {lo:g} {hi:g}; pass --n-{name} 2 or more"
        )
    return log_grid(lo, hi, n)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m siflow.sweep``: run or resume a sweep, print and draw it.

    SIGTERM is handled like Ctrl-C while it runs (the finished cells are kept;
    :func:`siflow._cli.terminate_as_interrupt`).
    """
    with terminate_as_interrupt():
        return run_main(cli, argv, prog=PROG)


def flags_in(message: str) -> str:
    """A library message with its parameters named as this command's flags.

    ``seeds=(0, 1)`` becomes ``--seeds 0 1``, ``momentum=0.9`` ``--momentum 0.9``,
    ``restart=True`` ``--restart``, a bare ``max_hours=`` ``--max-hours``; a parameter
    without a flag here (``betas=(b1, b2)``) is named as a word (``betas (b1, b2)``).
    """

    def repl(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name in _WORDS:
            return f"{name} {value}" if value else name
        flag = _FLAGS[name]
        if not value or (value == "True" and name == "restart"):
            return flag
        if value.startswith("("):
            value = " ".join(v.strip() for v in value[1:-1].split(",") if v.strip())
        return f"{flag} {value}"

    return flag_subjects(_PARAM.sub(repl, message), _FLAGS)


def _note(message: str) -> None:
    sys.stderr.write(f"{PROG}: {flags_in(message)}\n")
    sys.stderr.flush()


def cli(argv: Sequence[str] | None) -> int:
    """Body of :func:`main` (library messages name parameters; here they name flags)."""
    try:
        return _cli(argv)
    except CLIError:
        raise  # worded for this command already
    except (ValueError, OSError) as exc:
        msg = flags_in(str(exc))
        if msg == str(exc):
            raise
        raise type(exc)(msg) from None


def _check_numbers(args: argparse.Namespace) -> None:
    """The flags the library would name as parameters, checked with their flags."""
    check_positive_int("--task-size", args.task_size)
    if args.workers is not None:
        check_positive_int("--workers", args.workers)
    if not (math.isfinite(args.max_hours) and args.max_hours > 0):
        raise CLIError(
            f"--max-hours must be a positive number of hours, got {args.max_hours:g}; pass "
            f"e.g. --max-hours {DEFAULT_MAX_HOURS:g}"
        )
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise CLIError(
            f"--seeds must be distinct whole numbers >= 0, got "
            f"{' '.join(map(str, args.seeds))}; pass e.g. --seeds 0 1"
        )


def _check_schedule(spec: str, lr: np.ndarray, steps: int) -> None:
    """``--schedule``, refused in one line before any cell runs
    (:func:`siflow.sweep.check_schedule`)."""
    from siflow.sweep import check_schedule

    try:
        check_schedule(spec, lr.tolist(), steps, flag="--schedule", steps_flag="--steps")
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _check_figure(figure: str | None, out: Path, restart: bool) -> None:
    """Where the phase diagram goes, checked before any cell runs.

    An explicit ``--figure`` needs its folder (unless it is ``--out``, which the sweep
    makes); the default one in ``--out`` must not overwrite a figure of something
    that is not a sweep (a folder without ``sweep.json``).
    """
    from siflow.plot import _check_suffix

    if figure is None:
        default = out / "phase_diagram.png"
        if not restart and default.exists() and not (out / "sweep.json").is_file():
            raise CLIError(
                f"{str(out)!r} holds a phase_diagram.png but no sweep.json, so it is not a "
                f"sweep folder and the figure would be overwritten; pass another --out, or "
                f"--restart to overwrite it"
            )
        return
    path = _check_suffix(figure)
    parent = path.parent if str(path.parent) else Path(".")
    if os.path.abspath(parent) == os.path.abspath(out):
        return  # the sweep makes --out
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise CLIError(
            f"--figure {figure!r}: its folder {str(parent)!r} {what}; create it or pass "
            f"another --figure"
        )
    if path.is_dir():
        raise CLIError(f"--figure {figure!r} is a directory; pass a file name")


def _cli(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    lr = _grid("lr", args.lr, args.n_lr)
    wd = _grid("wd", args.wd, args.n_wd)
    out = Path(args.out) if args.out else Path("runs") / f"sweep_{args.loss}"
    _check_figure(args.figure, out, args.restart)  # before any cell runs
    if args.schedule is not None:
        _check_schedule(args.schedule, lr, args.steps)
    options = {
        "optimizer": args.optimizer,
        "dim": args.dim,
        "noise": args.noise,
        "sim_batch": args.batch,
        "record_every": args.record_every,
    }
    options = {k: v for k, v in options.items() if v is not None}
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            sys.stderr.write(f"\r{done}/{total} cells")
            sys.stderr.flush()

    try:
        result = sweep(
            args.loss,
            lr=lr,
            wd=wd,
            momentum=args.momentum,
            seeds=args.seeds,
            steps=args.steps,
            out=out,
            workers=args.workers,
            dask=args.dask,
            batch=args.task_size,
            restart=args.restart,
            progress=progress,
            simulator=args.simulator,
            max_rows=args.max_rows,
            max_hours=args.max_hours,
            notes=_note,
            schedule=args.schedule,
            **options,
        )
    except KeyboardInterrupt:
        if show:
            sys.stderr.write("\n")
        saved = _cells_saved(out)
        if saved:
            sys.stderr.write(f"{saved}; rerun the same command to resume\n")
        raise
    except OSError as exc:
        described = describe_os_error(exc, "--out")
        if described is None:
            raise
        saved = _cells_saved(out)
        kept = f"; {saved}, and a rerun resumes from them" if saved else ""
        raise CLIError(f"{described}{kept}") from None
    if show:
        sys.stderr.write("\n")
    figure = Path(args.figure) if args.figure else out / "phase_diagram.png"
    drawn = _draw(result, figure, args.figure is not None)
    if args.json:
        for row in result.rows:
            clean = {
                k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()
            }
            print(json.dumps(clean, sort_keys=True))
    else:
        _print_grid(result)
        print(f"\ntable: {out / 'table.csv'}\nfigure: {drawn}")
    return 0


def _cells_saved(out: Path) -> str | None:
    """``"N of M cells saved in OUT"``, or None when ``out`` holds no sweep to read."""
    try:
        partial = load(out)
    except (OSError, ValueError):
        return None
    return f"{len(partial.rows)} of {len(partial.config)} cells saved in {out}"


def _draw(result: SweepResult, figure: Path, chosen: bool) -> str:
    """Draw the phase diagram into ``figure``; what the ``figure:`` line says.

    A finished sweep rerun from a read-only copy keeps the figure it has (said so on
    that line); other file-system errors are one line naming the path and the fix.
    """
    import matplotlib.pyplot as plt

    try:
        fig = phase_diagram(result, figure)
    except OSError as exc:
        read_only = isinstance(exc, PermissionError) or exc.errno == errno.EROFS
        if read_only and figure.is_file() and result.complete:
            reason = exc.strerror or "not writable"
            return f"{figure} (kept as it was: {reason})"
        described = describe_os_error(exc, "--figure" if chosen else "--out")
        if described is None:
            raise
        raise CLIError(described) from None
    plt.close(fig)
    return str(figure)
