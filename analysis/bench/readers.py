"""Time and peak memory of ``siflow.io.read`` on large and hostile files.

``python -m analysis.bench.readers [--quick]`` (also the ``readers`` section of
``python -m analysis.bench``). Each case writes its file in a temporary folder,
then reads it in fresh Python processes and reports the wall time of
``siflow.io.read`` and the peak memory allocated during the read (Python
objects and numpy arrays, measured with ``tracemalloc`` in a second run), as a
multiple of the file size. Targets: a 100 MB CSV in under 15 s with a peak at most 3x the
file size; a 10^7-column CSV read; a 1.6 MB npz declaring 1.6 GB refused
without inflating.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys, time, tracemalloc
import siflow.io as sio
path, traced = sys.argv[1], sys.argv[2] == "1"
if traced:
    tracemalloc.start()
t0 = time.perf_counter()
try:
    t = sio.read(path)
    outcome = f"read {len(t)} rows"
except ValueError as exc:
    outcome = "ValueError: " + str(exc)[:160]
seconds = time.perf_counter() - t0
peak = tracemalloc.get_traced_memory()[1] if traced else 0
print(json.dumps({"seconds": seconds, "peak": peak, "outcome": outcome}))
"""


def _child(path: Path, traced: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "1" if traced else "0"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_in_child(path: Path) -> dict:
    """``siflow.io.read(path)`` in fresh processes: wall time (untraced) and the peak of
    memory allocated during the read (``tracemalloc``, which numpy reports to)."""
    timed = _child(path, traced=False)
    traced = _child(path, traced=True)
    return {**timed, "peak_growth": traced["peak"]}


def write_csv(path: Path, target_bytes: int, seed: int = 0) -> int:
    """A training-log CSV of about ``target_bytes``: step, loss, si_norm, grad_norm, lr, acc."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = 100_000
    step = 0
    with open(path, "w") as fh:
        fh.write("step,loss,si_norm,grad_norm,lr,acc\n")
        while fh.tell() < target_bytes:
            n = rows_per_chunk
            block = np.column_stack(
                [
                    np.arange(step, step + n),
                    rng.random(n),
                    1.0 + rng.random(n),
                    rng.random(n),
                    np.full(n, 0.1),
                    rng.random(n),
                ]
            )
            np.savetxt(fh, block, delimiter=",", fmt=["%d", "%.9g", "%.9g", "%.9g", "%g", "%.6g"])
            step += n
    return path.stat().st_size


def write_wide_csv(path: Path, n_columns: int, n_rows: int = 3) -> int:
    """A CSV of ``n_columns`` feature columns plus step and si_norm."""
    with open(path, "w") as fh:
        fh.write("step," + ",".join(f"f{j}" for j in range(n_columns)) + ",si_norm\n")
        cells = ",".join(["1"] * n_columns)
        for i in range(n_rows):
            fh.write(f"{i},{cells},{2.0 - 0.1 * i}\n")
    return path.stat().st_size


def write_npz_bomb(path: Path, inflated: int) -> int:
    """A seed-paper npz whose one member inflates to ``inflated`` bytes of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("report_epochs.npy", b"\x00")
        with zf.open("params_norm.npy", "w", force_zip64=True) as member:
            block = b"\x00" * (1 << 24)
            for _ in range(inflated // len(block)):
                member.write(block)
    return path.stat().st_size


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def run(quick: bool, target: Callable[[str, str, bool], str]) -> list[list[str]]:
    """Run every case; ``target(name, value, ok)`` records a target and returns ok/MISS."""
    rows = []
    csv_size = 20_000_000 if quick else 100_000_000
    wide = 1_000_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory(prefix="siflow-bench-") as tmp:
        d = Path(tmp)
        size = write_csv(d / "big.csv", csv_size)
        r = read_in_child(d / "big.csv")
        ratio = r["peak_growth"] / size
        limit = 15.0 * size / 100e6
        ok_t = target(f"CSV {_mb(size)} read time", f"{r['seconds']:.1f} s",
                      r["seconds"] < limit)  # fmt: skip
        ok_m = target(f"CSV {_mb(size)} peak memory", f"{ratio:.2f}x file", ratio <= 3.0)
        rows.append([f"CSV {_mb(size)}", f"{r['seconds']:.1f} s", f"{ratio:.2f}x",
                     f"{ok_t}/{ok_m}", r["outcome"]])  # fmt: skip
        subprocess.run(["gzip", "-k", "-1", str(d / "big.csv")], check=True)
        gz = d / "big.csv.gz"
        r = read_in_child(gz)
        rows.append([f"CSV.gz {_mb(gz.stat().st_size)} ({_mb(size)} inflated)",
                     f"{r['seconds']:.1f} s", f"{r['peak_growth'] / size:.2f}x inflated", "",
                     r["outcome"]])  # fmt: skip
        (d / "big.csv").unlink()
        gz.unlink()
        size = write_wide_csv(d / "wide.csv", wide)
        r = read_in_child(d / "wide.csv")
        ratio = r["peak_growth"] / size
        ok = target(f"CSV with {wide:.0e} columns", f"{r['seconds']:.1f} s, {ratio:.2f}x",
                    r["outcome"].startswith("read") and ratio <= 3.0)  # fmt: skip
        rows.append([f"CSV {wide:.0e} columns x 3 rows ({_mb(size)})", f"{r['seconds']:.1f} s",
                     f"{ratio:.2f}x", ok, r["outcome"]])  # fmt: skip
        (d / "wide.csv").unlink()
        bomb = d / "train-tm.npz"
        size = write_npz_bomb(bomb, 1_600_000_000 if not quick else 160_000_000)
        r = read_in_child(bomb)
        refused = "inflates to more than" in r["outcome"]
        ok = target("npz bomb refused before inflating",
                    f"{r['seconds']:.2f} s, +{_mb(r['peak_growth'])}",
                    refused and r["peak_growth"] < 50e6)  # fmt: skip
        rows.append([f"npz bomb {_mb(size)}", f"{r['seconds']:.2f} s",
                     f"+{_mb(r['peak_growth'])}", ok, r["outcome"]])  # fmt: skip
    return rows


def section(quick: bool, target: Callable[[str, str, bool], str]) -> None:
    """The ``readers`` section of ``python -m analysis.bench``: prints a Markdown table."""
    print("## Readers (siflow.io)\n")
    rows = run(quick, target)
    print("| file | read time | peak memory during the read | target | outcome |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.readers", description=__doc__)
    p.add_argument("--quick", action="store_true", help="20 MB CSV, 10^6 columns, 160 MB bomb")
    args = p.parse_args(argv)
    results: list[tuple[str, str, bool]] = []

    def target(name: str, value: str, ok: bool) -> str:
        results.append((name, value, ok))
        return "ok" if ok else "MISS"

    section(args.quick, target)
    for name, value, ok in results:
        print(f"- {name}: {value} ({'ok' if ok else 'MISS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
