"""``python -m analysis.bench.against_revision [REV]``: the toy kernels now and at a git revision.

Extracts ``siflow/`` as it was at ``REV`` (default ``main``) into a temporary directory
(``git archive``, nothing in the checkout changes) and times the same ``simulate`` calls
as :mod:`analysis.bench.fastmath_experiment` (Rayleigh and logistic toys, SGD + weight
decay) with that package and with the working tree's, in separate processes. The two
are run alternately, three times each, and each case keeps the best of its medians of
CPU time per step, so a change of the machine's load during the run hits both alike.
Prints the time per step of each, the speed-up, and how far the two trajectories are
apart after 200 steps.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from analysis.bench.fastmath_experiment import ROOT, _run


def _extract(rev: str, dest: Path) -> Path:
    """``siflow/`` of revision ``rev`` under ``dest`` (raises ``ValueError`` for a bad rev)."""
    try:
        blob = subprocess.run(
            ["git", "archive", "--format=tar", rev, "siflow"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except subprocess.CalledProcessError as exc:
        msg = exc.stderr.decode(errors="replace").strip()
        raise ValueError(
            f"cannot read siflow/ at revision {rev!r} ({msg}); pass a commit"
        ) from None
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _best(runs: list[list[dict]]) -> list[dict]:
    """Per case, the run with the smaller median time per step."""
    out = []
    for cases in zip(*runs, strict=True):
        out.append(min(cases, key=lambda c: c["per_step"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rev", nargs="?", default="main", help="git revision to compare with")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old_path = _extract(args.rev, Path(tmp))
        old_runs, new_runs = [], []
        for _ in range(3):
            old_runs.append(_run(old_path, args.quick))
            new_runs.append(_run(ROOT, args.quick))
    old, new = _best(old_runs), _best(new_runs)
    print(f"\n| case | {args.rev}/step | now/step | speed-up | max rel. diff, 200 steps |")
    print("|---|---|---|---|---|")
    for a, b in zip(old, new, strict=True):
        diff = max(
            float(np.max(np.abs(np.subtract(a[k], b[k])) / np.maximum(np.abs(a[k]), 1e-300)))
            for k in ("loss", "rho")
        )
        print(
            f"| {a['case']} | {a['per_step'] * 1e6:.3f} us | {b['per_step'] * 1e6:.3f} us | "
            f"{a['per_step'] / b['per_step']:.1f}x | {diff:.0e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
