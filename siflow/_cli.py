"""Command-line plumbing shared by every ``python -m siflow.*`` entry point.

Contract: bad input gives one line on stderr naming the problem and the fix, and
exit status 2, never a traceback. Use :class:`ArgumentParser` for parsing and wrap
the body of ``main`` with :func:`run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["ArgumentParser", "CLIError", "run_main", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(ValueError):
    """An error a CLI reports as one line with exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line and exit status 2.

    argparse's own ``error`` prints the usage block first; researchers running a
    sweep script want one greppable line instead.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return " ".join(text.split())


def run_main(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    prog: str = "siflow",
) -> int:
    """Run a CLI body, turning expected failures into one line and exit status 2.

    ``ValueError`` (bad arguments, bad data) and ``OSError`` (unreadable or
    unwritable paths) become ``"<prog>: error: <message>"`` with status 2.
    ``KeyboardInterrupt`` returns 130 after the body has had the chance to save
    what it has (bodies handle their own partial output).
    """
    try:
        code = main(argv)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except ImportError as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    return int(code or 0)


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
