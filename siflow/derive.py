"""``python -m siflow.derive``: symbolic derivations of siflow's closed forms.

The derivations themselves live in :mod:`siflow.symbolic`; the command-line body in
``siflow._derive_cli``.

Examples
--------
``python -m siflow.derive equilibrium``
``python -m siflow.derive angle --optimizer sgdm --latex``
"""

from siflow._derive_cli import build_parser, main

__all__ = ["main", "build_parser"]

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    from siflow._derive_cli import main as _main

    raise SystemExit(_main())
