"""``python -m siflow``: siflow's commands, and ``python -m siflow COMMAND ARGS...``.

``python -m siflow simulate --lr 0.1 --wd 1e-3`` runs the same command as
``python -m siflow.simulate --lr 0.1 --wd 1e-3``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from siflow._cli import EXIT_USAGE

#: Command name to what it does (each is ``python -m siflow.<name>``).
COMMANDS: dict[str, str] = {
    "simulate": "simulate a toy scale-invariant loss; theory against measurement, a figure",
    "sweep": "a grid of simulations over lr x wd x momentum x seeds, resumable",
    "theory": "closed forms at given hyperparameters (equilibrium, decay, schedules)",
    "derive": "the derivations behind the closed forms, with sympy",
    "overlay": "a training log against the theory: events, periods, equilibrium, a figure",
    "forecast": "the next destabilization of a log so far",
}

_USAGE = "usage: python -m siflow COMMAND [ARGS...]   (or python -m siflow.COMMAND)"


def _listing() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [_USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "python -m siflow COMMAND --help describes a command's arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """List the commands, or run one (its exit status)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_listing())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(
            f"python -m siflow: error: unknown command {name!r}; use one of "
            f"{', '.join(COMMANDS)} (python -m siflow lists them)\n"
        )
        return EXIT_USAGE
    return int(importlib.import_module(f"siflow._{name}_cli").main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    raise SystemExit(main())
