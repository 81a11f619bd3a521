"""``python -m siflow.forecast LOG --lr LR --wd WD``: step of the next destabilization.

Reads a training log so far (possibly still being written) with :func:`siflow.io.read`,
runs :func:`siflow.forecast.forecast_next_event` and prints the forecast (or one JSON
object with ``--json``: ``next_event_step``, ``next_event_interval``, ..., and
``notes``, the reader's notes on lines it left out, also printed as ``note:`` lines).
The optimizer, lr, wd and momentum default to the log's metadata (a per-row lr, wd or
momentum column is used where the log has one). Nothing is written. Bad input gives one
line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from siflow._cli import (
    ArgumentParser,
    CLIError,
    add_log_arguments,
    flag_subjects,
    parser_flags,
    read_log,
    run_main,
    translate_params,
)

PROG = "python -m siflow.forecast"


def build_parser() -> ArgumentParser:
    """The argument parser of ``python -m siflow.forecast``."""
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Forecast the step of the next destabilization of a run from its log so far: "
            "the norm decay extrapolated to the thresholds of the earlier cycles."
        ),
    )
    p.add_argument("log", help="log file or directory (any format siflow.io.read accepts)")
    p.add_argument("--lr", type=float, help="learning rate (default: the log's metadata)")
    p.add_argument("--wd", type=float, help="weight decay (default: the log's metadata)")
    p.add_argument(
        "--momentum",
        type=float,
        help="momentum (heavy ball or Nesterov) on rows without a logged momentum column "
        "(default: metadata, else 0)",
    )
    p.add_argument(
        "--optimizer",
        default=None,
        help="sgd (SGD and heavy ball) or nesterov (PyTorch's nesterov=True), the optimizers "
        "with a zero-gradient decay law; default: the log's metadata, else sgd, with a note "
        "(a log of another optimizer is refused)",
    )
    add_log_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--no-sharpness",
        action="store_true",
        help="ignore a logged sharpness_sphere column (thresholds from the effective LR only)",
    )
    p.add_argument(
        "--threshold",
        default="auto",
        choices=("auto", "sharpness", "loss", "elr"),
        help="threshold variable: elr*S (sharpness), elr*L^beta (loss), elr; auto: the "
        "sharpness where logged, else the loss (default auto)",
    )
    p.add_argument(
        "--blend",
        type=float,
        default=0.5,
        help="weight of the threshold estimate against last event + median period (0.5)",
    )
    p.add_argument(
        "--fit-fraction",
        type=float,
        default=0.5,
        help="last fraction of the decay phase fitted by the loss-proxy trend (0.5)",
    )
    p.add_argument(
        "--min-fit-rows", type=int, default=10, help="rows to fit the current decay trend (10)"
    )
    p.add_argument(
        "--history",
        choices=("median", "ar1"),
        default="median",
        help="this cycle's threshold and period from the earlier ones: their median, or a "
        "first-order autoregression fitted on them (median)",
    )
    g = p.add_argument_group("event detection (siflow.periods.find_events)")
    for name, default in _detector_defaults().items():
        flag = "--" + name.replace("_", "-")
        text = _DETECTOR_HELP[name]
        if isinstance(default, bool):
            g.add_argument(flag, action="store_true", default=None, help=text)
        else:
            kind = _DETECTOR_TYPES.get(name, type(default))
            if default is None:
                shown = "from the log" if name == "sharpness" else "auto"
            else:
                shown = default if isinstance(default, str) else f"{default:.4g}"
            g.add_argument(flag, type=kind, default=None, help=f"{text}; default {shown}")
    return p


#: One line per parameter of :func:`siflow.periods.find_events` (its docstring has the
#: full text); the defaults are read from its signature, so they cannot drift.
_DETECTOR_HELP = {
    "signal": "column to detect on: auto, rho, elr or loss",
    "min_rise": "smallest ln-rho swing",
    "min_spike": "the same floor for a loss signal, in ln loss",
    "noise_k": "swings below this many noise levels are noise",
    "smooth": "running-median window on the signal",
    "include_start": "count a rise that starts at the first row",
    "min_jump_fraction": "drop rises below this fraction of the typical jump (0: off)",
    "min_peak_fraction": "drop secondary bursts whose loss peak is below this fraction (0: off)",
    "merge_fraction": "a dip below this fraction of the rises around it merges them",
    "min_rise_speed": "a rise without a loss spike counts this many times faster than the decay",
    "min_loss_spike": "smallest ln(loss peak / decay-phase band) that confirms a rise",
    "fitted_fraction": "drop rises before the network has fitted the data (0: off)",
    "quiet_rise_factor": "a fast rise without a spike counts at this many swing thresholds",
    "loud_spike": "a large, very fast rise counts with a loss peak this far (ln) over its band "
    "(0: off)",
    "loud_rise_speed": "a rise this many times faster than the decay is very fast",
    "spike_noise_k": "the loss peak stands this many loss-noise levels above its band",
    "sharpness": "sphere sharpness S at the minimum, for the threshold tests below",
    "min_threshold_fraction": "with S: drop rises below this fraction of the threshold ELR",
    "threshold_confirms": "with S: a rise at this fraction of the threshold ELR counts",
    "loss_floor": "the floor the loss settles above (label smoothing: the smoothed targets' "
    "entropy); 0: none",
}

#: Types of the parameters whose default is None.
_DETECTOR_TYPES: dict[str, type] = {"smooth": int, "sharpness": float, "loss_floor": float}

#: The flag of the forecast's optimizer= parameter, for its notes.
_OPTIMIZER_FLAG = {"optimizer": "--optimizer"}

#: Parameters of find_events set by the command's own flags, not the detection group.
_NOT_DETECTOR = ("traj", "lr", "wd", "momentum")


def _detector_defaults() -> dict[str, Any]:
    """The keyword parameters of :func:`siflow.periods.find_events` and their defaults."""
    import inspect

    from siflow.periods import find_events

    params = inspect.signature(find_events).parameters
    return {k: p.default for k, p in params.items() if k not in _NOT_DETECTOR}


def _detector_kwargs(args: Any) -> dict[str, Any]:
    """The detection flags given on the command line (the others keep their defaults)."""
    return {k: getattr(args, k) for k in _detector_defaults() if getattr(args, k) is not None}


def _fmt(v: float) -> str:
    return f"{v:.0f}" if math.isfinite(v) else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with one line on stderr on bad input)."""
    return run_main(_body, argv, prog=PROG)


def _live_options(args: Any, log: Path) -> dict[str, Any]:
    """``live=True`` for the line-appended formats (CSV, JSON lines, Lightning's
    ``metrics.csv``): a log still being
    written may end in a line cut mid-write, which is then left out with a note. The
    format is detected here once and kept in ``args.fmt`` for :func:`read_log`."""
    from siflow import io

    args.fmt = args.fmt or io.detect_format(log)
    return {"live": True} if args.fmt in ("csv", "jsonl", "lightning") else {}


def _left_out_notes(notes: Sequence[str]) -> list[str]:
    """The reader's notes on what it left out of the log: a last line still being
    written, a last line whose last cell was cut, a TensorBoard record cut short, rows
    without a step (each says ``left out``). Printed as ``note:`` lines, and the
    ``"notes"`` list of ``--json``."""
    return [str(n) for n in notes if "left out" in str(n)]


def _body(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _forecast(args)
    except ValueError as exc:  # a library message: its parameters named as this command's flags
        flags = parser_flags(parser)
        message = flag_subjects(translate_params(str(exc), flags), flags)
        if "the log" in message:  # say which log
            message = f"{str(args.log)!r}: {message}"
        raise CLIError(message) from None


def _forecast(args: Any) -> int:
    from siflow.forecast import forecast_next_event

    log = Path(args.log)
    if not log.exists():
        raise CLIError(f"no such log: {str(log)!r}; check the path")
    traj = read_log(args, log, **_live_options(args, log))
    fc = forecast_next_event(
        traj,
        lr=args.lr,
        wd=args.wd,
        momentum=args.momentum,
        optimizer=args.optimizer,
        use_sharpness=not args.no_sharpness,
        threshold=args.threshold,
        blend=args.blend,
        fit_fraction=args.fit_fraction,
        min_fit_rows=args.min_fit_rows,
        history=args.history,
        **_detector_kwargs(args),
    )
    d = fc.to_dict()
    notes = _left_out_notes(traj.meta.get("notes", []))
    if args.json:
        d["notes"] = notes
        sys.stdout.write(json.dumps(d, sort_keys=True) + "\n")
        return 0
    lo, hi = fc.next_event_interval
    print(f"log: {log}  last step: {fc.last_step}  destabilizations so far: {fc.n_events}")
    for note in notes:
        print(f"note: {note}")
    if "optimizer_note" in fc.details:
        print(f"note: {translate_params(fc.details['optimizer_note'], _OPTIMIZER_FLAG)}")
    if fc.method == "none":
        print(f"no forecast: {fc.details.get('note', '')}")
    else:
        upper = "no upper bound" if hi == math.inf else _fmt(hi)
        print(
            f"next destabilization at step {_fmt(fc.next_event_step)} "
            f"(interval {_fmt(lo)}..{upper}; method: {fc.method})"
        )
        if "overdue" in fc.details:
            print(f"note: {fc.details['overdue']}")
        for key in ("schedule_note", "resolution_note", "phase_lock_note"):
            if key in fc.details:
                print(f"note: {fc.details[key]}")
    return 0
