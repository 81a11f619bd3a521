"""Body of ``python -m siflow.derive``: print a symbolic derivation of :mod:`siflow.symbolic`.

Examples
--------
``python -m siflow.derive equilibrium``
``python -m siflow.derive angle --optimizer sgdm --latex``
"""

from __future__ import annotations

from collections.abc import Sequence

from siflow._cli import ArgumentParser, run_main

__all__ = ["main", "build_parser"]

PROG = "python -m siflow.derive"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Derive a closed form of siflow.theory with sympy from the update rule and print "
            "it (exact form, and the first-order form in lr*wd where one exists)."
        ),
    )
    parser.add_argument(
        "what",
        choices=["equilibrium", "angle", "relaxation", "threshold", "decay"],
        help="which result to derive",
    )
    parser.add_argument(
        "--optimizer",
        choices=["sgd", "sgdm", "adamw", "lion"],
        default="sgd",
        help="sgd (coupled weight decay), sgdm (PyTorch heavy ball), adamw, lion (default sgd)",
    )
    parser.add_argument("--latex", action="store_true", help="also print each result as LaTeX")
    return parser


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from siflow import symbolic

    results = symbolic.derive(args.what, args.optimizer)
    print(f"{args.what} ({args.optimizer})")
    for label, expr in results:
        print(f"  {label}:")
        print(f"    {expr}")
        if args.latex:
            print(f"    LaTeX: {symbolic.latex(expr)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for bad input)."""
    return run_main(_body, argv, prog=PROG)
