"""``python -m analysis.bench.memory``: peak memory of the default simulation against its length.

Runs ``python -m siflow.simulate --lr 0.1 --wd 1e-3 --steps N`` (the default toy: SI
logistic regression, dimension 10, 100 points; the command line's default recording:
about 500,000 regular rows, rows near norm jumps, at most 1,000,000 rows kept) for each
``N``, each in a fresh process, and prints a Markdown table of the peak resident set
size (``ru_maxrss`` of that process), the rows kept, the wall time, and the summary's
``angular_update_rms``. Memory is bounded by design, so the peak should be flat in
``N``. Outputs go under ``runs/bench-memory/`` (or ``--out``).

    python -m analysis.bench.memory                     # 10^6, 10^7 and 10^8 steps
    python -m analysis.bench.memory --steps 1e6 1e7     # a shorter check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import json, resource, sys
from siflow._simulate_cli import main
code = main(sys.argv[1:])
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "peak_kb": peak_kb}))
"""


def measure(steps: int, out: Path, figure: bool) -> dict[str, float | int | None]:
    """Peak RSS (MB), rows kept, wall time and the summary statistics of one run."""
    run_dir = out / f"steps{steps}"
    args = ["--lr", "0.1", "--wd", "1e-3", "--steps", str(steps), "--quiet", "--json"]
    args += ["--out", str(run_dir)] + ([] if figure else ["--no-figure"])
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run of {steps} steps failed: {proc.stderr.strip()[-500:]}")
    lines = proc.stdout.strip().splitlines()
    child = json.loads(lines[-1])
    summary = json.loads(lines[-2])
    return {
        "steps": steps,
        "peak_mb": child["peak_kb"] / 1024,
        "rows": summary["rows_kept"],
        "wall_s": wall,
        "angular_update_rms": summary["angular_update_rms"],
        "grad_norm_sphere_rms": summary["grad_norm_sphere_rms"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.memory", description=__doc__)
    p.add_argument("--steps", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    p.add_argument("--out", default="runs/bench-memory", help="output directory")
    p.add_argument("--figure", action="store_true", help="also draw figure.png (as by default)")
    args = p.parse_args(argv)
    out = Path(args.out)
    print("| steps | rows kept | peak RSS (MB) | wall (s) | angular_update_rms | g~ RMS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.steps:
        r = measure(int(n), out, args.figure)
        print(
            f"| {r['steps']:.0e} | {r['rows']} | {r['peak_mb']:.0f} | {r['wall_s']:.0f} | "
            f"{r['angular_update_rms']:.5f} | {r['grad_norm_sphere_rms']:.5f} |",
            flush=True,
        )
    print(f"outputs under {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
