"""``python -m siflow.forecast LOG --lr LR --wd WD``: step of the next destabilization.

Reads a training log so far (possibly still being written) with :func:`siflow.io.read`,
runs :func:`siflow.forecast.forecast_next_event` and prints the forecast (or one JSON
object with ``--json``: ``next_event_step``, ``next_event_interval``, ...). Nothing is
written. Bad input gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from siflow._cli import ArgumentParser, CLIError, add_log_arguments, read_log, run_main

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
    p.add_argument("--momentum", type=float, help="heavy-ball momentum (default: metadata, else 0)")
    p.add_argument(
        "--optimizer",
        default="sgd",
        help="optimizer family: sgd (SGD and heavy ball; the only one supported)",
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
    g.add_argument("--signal", default="auto", help="auto, rho, elr or loss (default auto)")
    g.add_argument("--min-rise", type=float, default=0.02, help="smallest ln-rho swing (0.02)")
    g.add_argument("--min-spike", type=float, default=math.log(3.0), help="loss-signal floor")
    g.add_argument("--noise-k", type=float, default=8.0, help="swings below k noise levels (8)")
    g.add_argument("--smooth", type=int, default=None, help="running-median window (auto)")
    g.add_argument("--min-jump-fraction", type=float, default=0.0, help="(0: off)")
    g.add_argument("--min-peak-fraction", type=float, default=0.0, help="(0: off)")
    g.add_argument("--merge-fraction", type=float, default=0.25, help="multi-stage merge (0.25)")
    g.add_argument("--min-rise-speed", type=float, default=4.0, help="fast-onset factor (4)")
    g.add_argument("--min-loss-spike", type=float, default=math.log(2.0), help="ln (ln 2)")
    g.add_argument("--fitted-fraction", type=float, default=0.5, help="pre-fit test (0.5)")
    g.add_argument(
        "--quiet-rise-factor", type=float, default=5.0, help="rise without a spike, in h (5)"
    )
    g.add_argument("--spike-noise-k", type=float, default=4.0, help="spike in loss-noise units (4)")
    g.add_argument(
        "--include-start", action="store_true", help="count a rise that starts at the first row"
    )
    return p


def _detector_kwargs(args: Any) -> dict[str, Any]:
    return {
        "signal": args.signal,
        "min_rise": args.min_rise,
        "min_spike": args.min_spike,
        "noise_k": args.noise_k,
        "smooth": args.smooth,
        "min_jump_fraction": args.min_jump_fraction,
        "min_peak_fraction": args.min_peak_fraction,
        "merge_fraction": args.merge_fraction,
        "min_rise_speed": args.min_rise_speed,
        "min_loss_spike": args.min_loss_spike,
        "fitted_fraction": args.fitted_fraction,
        "quiet_rise_factor": args.quiet_rise_factor,
        "spike_noise_k": args.spike_noise_k,
        "include_start": args.include_start,
    }


def _fmt(v: float) -> str:
    return f"{v:.0f}" if math.isfinite(v) else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with one line on stderr on bad input)."""
    return run_main(_body, argv, prog=PROG)


def _live_options(args: Any, log: Path) -> dict[str, Any]:
    """``live=True`` for the line-appended formats (CSV, JSON lines): a log still being
    written may end in a line cut mid-write, which is then left out with a note. The
    format is detected here once and kept in ``args.fmt`` for :func:`read_log`."""
    from siflow import io

    args.fmt = args.fmt or io.detect_format(log)
    return {"live": True} if args.fmt in ("csv", "jsonl") else {}


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from siflow.forecast import forecast_next_event
    from siflow.io._text import STILL_WRITTEN

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
    if args.json:
        sys.stdout.write(json.dumps(d, sort_keys=True) + "\n")
        return 0
    lo, hi = fc.next_event_interval
    print(f"log: {log}  last step: {fc.last_step}  destabilizations so far: {fc.n_events}")
    for note in traj.meta.get("notes", []):
        if STILL_WRITTEN in note:
            print(f"note: {note}")
    if fc.method == "none":
        print(f"no forecast: {fc.details.get('note', '')}")
    else:
        print(
            f"next destabilization at step {_fmt(fc.next_event_step)} "
            f"(interval {_fmt(lo)}..{_fmt(hi)}; method: {fc.method})"
        )
    return 0
