"""Command-line plumbing shared by every ``python -m siflow.*`` entry point.

Contract: bad input gives one line on stderr naming the problem and the fix, and
exit status 2, never a traceback. Use :class:`ArgumentParser` for parsing and wrap
the body of ``main`` with :func:`run_main`.

Numbers on every command line are read by :func:`float_arg` and :func:`int_arg`
(:class:`ArgumentParser` uses them for ``type=float`` and ``type=int``): plain ASCII
decimal or scientific notation only. Rejected, with a one-line error: surrounding
spaces (``' 0.1'``), digit separators (``1_000``), non-ASCII digits (full-width
``１``), hexadecimal, and a finite literal that double precision turns into 0 or
infinity (``1e-400``, ``1e400``). ``inf`` and ``nan`` are read as such, so the
library can name the parameter they are wrong for. Integers may use scientific
notation when the value is whole (``--steps 1e6``).
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ArgumentParser",
    "parse_betas",
    "add_log_arguments",
    "read_log",
    "CLIError",
    "run_main",
    "float_arg",
    "int_arg",
    "flag_names",
    "refuse_zero_schedule",
    "refuse_ignored_flags",
    "describe_os_error",
    "os_error_fix",
    "flag_subjects",
    "parser_flags",
    "Terminated",
    "terminate_as_interrupt",
    "terminated",
    "interrupted_status",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_BROKEN_PIPE",
]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Status of a CLI stopped by SIGTERM (``timeout``, Slurm, systemd, ``docker stop``)
#: once it has kept what it had, as a shell reports a process ended by that signal.
EXIT_TERMINATED = 128 + 15
#: Status of a CLI whose reader closed its standard output (``... | head``), as a shell
#: reports a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13


class CLIError(ValueError):
    """An error a CLI reports as one line with exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled like Ctrl-C (partial work kept), exit status 143."""


#: Whether SIGTERM arrived within the current :func:`terminate_as_interrupt` block.
_TERMINATED = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    _TERMINATED.set()
    raise Terminated(f"signal {signum}")


def terminated() -> bool:
    """Whether SIGTERM arrived within the current :func:`terminate_as_interrupt` block
    (also when the ``KeyboardInterrupt`` it raised was caught to keep partial work)."""
    return _TERMINATED.is_set()


def interrupted_status() -> int:
    """The exit status of a command that stopped on a signal and kept its work: 143
    after SIGTERM (:func:`terminated`), else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``.

    Commands that keep partial work on Ctrl-C (``simulate``, ``sweep``) then keep it on
    SIGTERM too, which is what ``timeout``, Slurm, systemd and ``docker stop`` send. The
    handler is installed only in the main thread, over the default one, and the one in
    place before is restored after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield  # someone else handles SIGTERM (an embedding program): leave it to them
        return
    _TERMINATED.clear()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)\Z", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


def _show(text: str) -> str:
    return ascii(text) if not text.isascii() or text != text.strip() or not text else repr(text)


def float_arg(text: str) -> float:
    """Read a command-line real number strictly (module docstring).

    Accepts ASCII ``[+-]digits[.digits][e[+-]digits]`` (also ``.5``), ``inf`` and
    ``nan``; raises ``argparse.ArgumentTypeError`` naming the fix otherwise.

    >>> float_arg("1e-3"), float_arg("-.5")
    (0.001, -0.5)
    """
    if _SPECIAL.match(text):
        return float(text)
    if not _DECIMAL.match(text):
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is not a number; write it with ASCII digits and no spaces or "
            f"underscores, e.g. 0.1 or 1e-3"
        )
    value = float(text)
    if value == 0.0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        raise argparse.ArgumentTypeError(
            f"{text} is below the smallest positive double (5e-324) and would be read as 0; "
            f"pass a value of at least 5e-324"
        )
    if value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(
            f"{text} is beyond the largest double (1.8e308); pass a value between -1.8e308 "
            f"and 1.8e308"
        )
    return value


def int_arg(text: str) -> int:
    """Read a command-line integer strictly (module docstring).

    Accepts ASCII ``[+-]digits``, or scientific notation of a whole number
    (``1e6``, ``2.5e3``); raises ``argparse.ArgumentTypeError`` otherwise.

    >>> int_arg("20000"), int_arg("1e6"), int_arg("2.5e3")
    (20000, 1000000, 2500)
    """
    if _INTEGER.match(text):
        return int(text)
    if _DECIMAL.match(text) and "e" in text.lower():
        mantissa, _, exponent = text.lower().partition("e")
        if len(exponent.lstrip("+-")) <= 4:
            value = decimal.Decimal(text)
            if value == value.to_integral_value():
                return int(value)
    raise argparse.ArgumentTypeError(
        f"{_show(text)} is not a whole number; write it with ASCII digits and no spaces, "
        f"underscores or decimals, e.g. 1000 or 1e3"
    )


_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|(?i:inf|infinity|nan))$")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line and exit status 2.

    argparse's own ``error`` prints the usage block first; researchers running a
    sweep script want one greppable line instead. ``type=float`` and ``type=int``
    arguments are read by :func:`float_arg` and :func:`int_arg`.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register("type", float, float_arg)
        self.register("type", int, int_arg)
        # "--wd -1e-3" and "--lr -inf" are values to check, not options: argparse's own
        # pattern knows -1 and -.5 but not exponents or -inf, and said "expected one argument"
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def flag_names(message: str, flags: Mapping[str, str]) -> str:
    """Replace the parameter names of a library message by the flags of a CLI.

    ``flags`` maps a parameter (``"max_hours"``) to its flag (``"--max-hours"``);
    ``name=`` in the message becomes the flag, e.g. ``"pass max_hours="`` becomes
    ``"pass --max-hours"``.
    """
    for param, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){re.escape(param)}=(?=[\s;,.)]|$)", flag, message)
    return message


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return " ".join(text.split())


def _silence_stdout() -> None:
    """Point standard output at the null device: the interpreter's final flush of a
    closed pipe would otherwise print an error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


#: What to do about a file-system error, by its number (:func:`describe_os_error`).
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that disk, or pass {flag} on another",
    errno.EDQUOT: "free space within your disk quota, or pass {flag} on another disk",
    errno.EROFS: "the file system is read-only; pass {flag} on a writable one",
    errno.ENOTDIR: "a part of that path is a file, not a folder; pass another {flag}",
    errno.EISDIR: "a folder is in the way of that file; remove it or pass another {flag}",
    errno.ENAMETOOLONG: "a name in that path is longer than the file system takes (255 bytes "
    "on most); pass a shorter {flag}",
    errno.EACCES: "this user may not write there; pass another {flag}",
    errno.EPERM: "this user may not write there; pass another {flag}",
    errno.EEXIST: "something else already has that name; pass another {flag}",
}


def describe_os_error(exc: OSError, flag: str = "--out") -> str | None:
    """One line for a file-system error: the path, the reason and the fix.

    Parameters
    ----------
    exc : OSError
        The error; its ``filename`` is the path named.
    flag : str
        The option that chose the path (``"--out"``), named in the fix.

    Returns
    -------
    str or None
        ``"cannot write 'runs/x/trajectory.npz' (No space left on device); free space on
        that disk, or pass --out on another"``, or None for an error this does not
        describe (no error number, or one of another kind, such as a missing file).
    """
    fix = os_error_fix(exc, flag)
    if fix is None:
        return None
    reason = exc.strerror or os.strerror(exc.errno or 0)
    where = f" {str(exc.filename)!r}" if exc.filename is not None else ""
    return f"cannot write{where} ({reason}); {fix}"


def os_error_fix(exc: OSError, flag: str = "--out") -> str | None:
    """What to do about a file-system error (:data:`_OS_ERROR_FIXES`), naming ``flag``;
    None for an error of another kind."""
    fix = _OS_ERROR_FIXES.get(exc.errno) if exc.errno is not None else None
    return None if fix is None else fix.format(flag=flag)


def run_main(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    prog: str = "siflow",
) -> int:
    """Run a CLI body, turning expected failures into one line and exit status 2.

    ``ValueError`` (bad arguments, bad data) and ``OSError`` (unreadable or
    unwritable paths) become ``"<prog>: error: <message>"`` with status 2; a full,
    read-only or otherwise unwritable file system is described by
    :func:`describe_os_error`. ``KeyboardInterrupt`` returns 130 (143 for
    :class:`Terminated`, SIGTERM) after the body has had the chance to save what it
    has (bodies handle their own partial output). A reader that stops
    reading the output (``| head``) ends the command quietly with status 141.
    numpy's floating-point warnings (overflow, invalid value) are not printed: the
    commands check their inputs and results and say what is wrong in one line.
    """
    import numpy as np

    try:
        with np.errstate(all="ignore"):
            code = main(argv)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        sys.stderr.write(f"{prog}: error: {_one_line_os_error(exc)}\n")
        return EXIT_USAGE
    except (ValueError, ImportError) as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            _TERMINATED.set()
        what = "terminated (SIGTERM)" if terminated() else "interrupted"
        sys.stderr.write(f"{prog}: {what}\n")
        return interrupted_status()
    return int(code or 0)


def _one_line_os_error(exc: OSError) -> str:
    """An ``OSError`` in one line: described with its fix where it is a file-system
    error the command's own message did not word (``[Errno 28] ...``)."""
    if exc.errno is not None and exc.strerror is not None and str(exc).startswith("[Errno"):
        described = describe_os_error(exc)
        if described is not None:
            return described
    return _one_line(exc)


# --------------------------------------------------------------------------- tables
def fmt_value(value: object, digits: int = 6) -> str:
    """A table cell: ``n/a`` for ``None``/NaN, ``inf``/``-inf``, else ``%.{digits}g``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or hasattr(value, "__float__"):
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return str(value)
        if v != v:
            return "n/a"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        if isinstance(value, int):
            return str(value)
        return f"{v:.{digits}g}"
    return str(value)


def format_rows(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """Aligned text table; ``align`` has one ``l``/``r`` per column (default ``lrr...r``).

    Column widths follow the widest cell plus two spaces, so columns never run
    together whatever the numbers (``1e+300`` included).
    """
    cells = [[str(c) for c in header]] + [
        [c if isinstance(c, str) else fmt_value(c) for c in row] for row in rows
    ]
    ncol = max(len(r) for r in cells)
    cells = [r + [""] * (ncol - len(r)) for r in cells]
    widths = [max(len(r[j]) for r in cells) for j in range(ncol)]
    align = (align or "l" + "r" * (ncol - 1)).ljust(ncol, "r")
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0]) if align[0] == "l" else r[0].rjust(widths[0])]
        for j in range(1, ncol):
            cell = r[j].ljust(widths[j]) if align[j] == "l" else r[j].rjust(widths[j])
            parts.append("  " + cell)
        lines.append("".join(parts).rstrip())
    return "\n".join(lines)


def summarize_list(values: Sequence[float]) -> dict[str, float | int | None]:
    """``count``, ``median``, ``q1``, ``q3``, ``min``, ``max`` of a list (``None`` when empty)."""
    import numpy as np

    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return {"count": 0, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    q1, med, q3 = (float(x) for x in np.percentile(arr, [25, 50, 75]))
    return {
        "count": int(arr.size),
        "median": med,
        "q1": q1,
        "q3": q3,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def format_list_summary(values: Sequence[float], unit: str = "") -> str:
    """One line for a long list: ``count 470, median 4012, quartiles 3990-4050, range ..``."""
    s = summarize_list(values)
    if not s["count"]:
        return "none"
    u = f" {unit}" if unit else ""
    return (
        f"count {s['count']}, median {fmt_value(s['median'])}{u}, quartiles "
        f"{fmt_value(s['q1'])} to {fmt_value(s['q3'])}, range {fmt_value(s['min'])} to "
        f"{fmt_value(s['max'])}"
    )


def translate_params(message: str, flags: dict[str, str]) -> str:
    """A library message with Python parameters (``record_every=``) named as CLI flags.

    ``flags`` maps parameter names to flags (``{"record_every": "--record-every"}``);
    ``name=value`` becomes ``--flag value`` and a bare ``name=`` becomes ``--flag``.
    """
    import re

    def repl(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        return f"{flags[name]} {value}" if value else flags[name]

    if not flags:
        return message
    names = "|".join(sorted((re.escape(k) for k in flags), key=len, reverse=True))
    return re.sub(rf"\b({names})=([^\s,;)]*)", repl, message)


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each library parameter a command's parser sets (``min_fit_rows``, its ``dest``)
    and the flag that sets it (``--min-fit-rows``), for :func:`translate_params` and
    :func:`flag_subjects`."""
    return {
        a.dest: a.option_strings[-1]
        for a in parser._actions
        if a.option_strings and a.option_strings[-1].startswith("--")
    }


def flag_subjects(message: str, flags: Mapping[str, str]) -> str:
    """A library message whose subject is a parameter (``"seed must be >= 0"``) with the
    subject named as the CLI flag (``"--seed must be >= 0"``).

    Only a parameter at the start of the message, or of a clause after ``;`` or ``:``,
    and followed by ``must``, ``is`` or ``has`` is renamed.
    """
    if not flags:
        return message
    names = "|".join(sorted((re.escape(k) for k in flags), key=len, reverse=True))
    return re.sub(
        rf"(?:^|(?<=[;:] ))({names})(?= (?:must|is|has)\b)", lambda m: flags[m[1]], message
    )


# ---------------------------------------------------------------- log-reading flags
def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pass a log's reading options to :func:`siflow.io.read`.

    ``--steps-per-epoch`` (``steps_per_epoch=``), ``--map FIELD=COLUMN`` (``mapping=``),
    ``--fmt`` (``fmt=``), ``--group`` (``group=``) and ``--run`` (``run=``): one spelling
    for every command that reads a log.
    """
    parser.add_argument(
        "--steps-per-epoch", type=int, help="optimizer steps per epoch, for logs indexed by epoch"
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map a log column to a trajectory field, e.g. --map rho=params_norm (repeatable)",
    )
    parser.add_argument("--fmt", help="log format, when detection from the file is not enough")
    parser.add_argument(
        "--group", help="SI group (layer) when the log has per-group norms, or 'sum' for the total"
    )
    parser.add_argument("--run", help="run name in a W&B export that holds several runs")


#: The parameters of :func:`siflow.io.read` and the flags of :func:`add_log_arguments`.
LOG_FLAGS = {
    "steps_per_epoch": "--steps-per-epoch",
    "fmt": "--fmt",
    "group": "--group",
    "run": "--run",
}


def log_flags(message: str) -> str:
    """A reader's message with its parameters named as the log-reading flags:
    ``mapping={'rho': '<column>'}`` becomes ``--map rho=<column>``, ``group='<name>'``
    becomes ``--group <name>`` (:data:`LOG_FLAGS`)."""
    import re

    message = re.sub(r"mapping=\{'(\w+)': '([^']*)'\}", lambda m: f"--map {m[1]}={m[2]}", message)
    message = re.sub(r"mapping=\{'(\w+)': <column>\}", lambda m: f"--map {m[1]}=<column>", message)
    names = "|".join(LOG_FLAGS)
    message = re.sub(
        rf"(?<![\w-])({names})='([^']*)'", lambda m: f"{LOG_FLAGS[m[1]]} {m[2]}", message
    )
    return translate_params(message, LOG_FLAGS)


def read_log(args: argparse.Namespace, path: object, min_rows: int = 3, **options: object) -> Any:
    """:func:`siflow.io.read` with the options of :func:`add_log_arguments` (plus ``options``).

    Raises :class:`CLIError` when the log has fewer than ``min_rows`` usable rows.
    """
    from siflow import io

    try:
        traj = io.read(
            path,
            fmt=args.fmt,
            mapping=io.parse_mapping(args.map) if args.map else None,
            steps_per_epoch=args.steps_per_epoch,
            group=args.group,
            run=args.run,
            **options,
        )
    except ValueError as exc:
        raise CLIError(log_flags(str(exc))) from None
    if len(traj) < min_rows:
        raise CLIError(f"{str(path)!r} has {len(traj)} usable rows; need at least {min_rows}")
    return traj


def refuse_zero_schedule(flag: str, spec: str, sched: Any, quantity: str, steps: int) -> None:
    """Refuse, in one line, a schedule that reaches 0 within a run of ``steps`` steps.

    An easy off-by-one (``cosine:steps=199`` with ``--steps 200``) holds ``min=0`` at the
    end, where the run's equilibrium is undefined; this says so before anything runs.
    ``sched`` is the parsed :class:`siflow.schedules.Schedule` of ``flag``'s ``spec``,
    ``quantity`` its name (``"lr"``, ``"wd"``).
    """
    from siflow.schedules import first_zero_step, why_zero

    step = first_zero_step(sched, steps)
    if step is None:
        return
    why, fix = why_zero(sched, step, steps)
    fewer = f", or pass --steps {step}" if step > 0 else ""
    raise CLIError(
        f"{flag} {spec!r} reaches {quantity} = 0 at step {step}, within --steps {steps} "
        f"({why}); {fix}{fewer}"
    )


def refuse_ignored_flags(args: argparse.Namespace) -> None:
    """Refuse, in one line, flags that the chosen optimizer's theory would ignore:
    ``--momentum`` with AdamW/Lion, ``--betas`` with SGD-type optimizers, ``--lr`` next to
    a schedule's ``peak=`` (``simulate`` refuses the same combinations). ``args`` holds
    ``optimizer``, ``momentum``, ``betas``, ``lr`` and ``schedule``."""
    if args.optimizer in ("adamw", "lion") and args.momentum:
        raise CLIError(
            f"{args.optimizer} takes --betas (beta1, beta2), not --momentum; drop --momentum"
        )
    if args.optimizer in ("sgd", "sgdm", "nesterov") and args.betas:
        raise CLIError(f"--betas applies to adamw and lion, not {args.optimizer}; drop --betas")
    if args.lr is not None and args.schedule and "peak=" in args.schedule.replace(" ", ""):
        raise CLIError("--lr and the peak= of --schedule both set the peak lr; drop one of them")


def add_betas_argument(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    """``--betas B1,B2`` (or ``--betas B1 B2``), read with :func:`parse_betas`."""
    parser.add_argument("--betas", nargs="+", default=default, metavar="B1,B2", help=help)


def parse_betas(text: str | Sequence[str]) -> tuple[float, float]:
    """``--betas 0.9,0.999`` (or ``0.9 0.999``) as ``(beta1, beta2)``.

    Raises :class:`CLIError` naming the form to use for anything but two numbers.
    """
    tokens = [text] if isinstance(text, str) else list(text)
    parts = tokens[0].split(",") if len(tokens) == 1 else tokens
    shown = " ".join(tokens)
    try:
        if len(parts) != 2 or any("," in t for t in tokens[1:]):
            raise ValueError
        b1, b2 = (float_arg(x) for x in parts)
    except (ValueError, argparse.ArgumentTypeError):
        raise CLIError(
            f"--betas {shown!r} is not two numbers; pass e.g. --betas 0.9,0.999"
        ) from None
    return b1, b2
