"""Same seed, same bits: across calls, processes, thread counts and worker counts.

A result in a paper must come back bit for bit when the command is rerun, on one
core or two. Arrays are compared through their uint64 bit patterns (so NaN, -0.0
and the last ulp all count), and CLI output directories file by file, byte for
byte. Thread counts are set in the subprocess environment (``NUMBA_NUM_THREADS``,
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow.trajectory import Trajectory


def _bits(a) -> list[int]:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).view(np.uint64).tolist()


def _assert_bit_identical(a: Trajectory, b: Trajectory) -> None:
    assert a.columns() == b.columns()
    assert a.step.tolist() == b.step.tolist()
    for name in a.columns()[1:]:
        assert _bits(a.column(name)) == _bits(b.column(name)), f"column {name} differs"
    assert a.meta == b.meta


CONFIGS = {
    "sgd-logistic-batch": dict(loss="logistic", lr=0.5, wd=1e-3, batch=16),
    "sgd-rayleigh-noise": dict(loss="rayleigh", lr=0.3, wd=1e-3, noise=0.05),
    "momentum-rayleigh": dict(loss="rayleigh", lr=0.1, wd=1e-3, momentum=0.9, noise=0.01),
    "nesterov-logistic": dict(loss="logistic", optimizer="nesterov", lr=0.1, wd=1e-3, momentum=0.9),
    "adamw-logistic": dict(loss="logistic", optimizer="adamw", lr=1e-2, wd=1e-2, batch=8),
    "fixed-elr-flat-noise": dict(loss="flat", optimizer="fixed_elr", lr=0.01, wd=0.0, noise=1.0),
}


def _simulate(seed: int, **cfg) -> Trajectory:
    from siflow.simulate import simulate

    cfg = dict(cfg)
    loss = cfg.pop("loss")
    optimizer = cfg.pop("optimizer", "sgd")
    return simulate(loss, optimizer, steps=3000, seed=seed, **cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_seed_same_bits_in_process(name):
    a = _simulate(7, **CONFIGS[name])
    b = _simulate(7, **CONFIGS[name])
    assert len(a) == 3000
    _assert_bit_identical(a, b)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_another_seed_gives_another_run(name):
    """The seed reaches the randomness (so the test above could fail)."""
    a = _simulate(7, **CONFIGS[name])
    b = _simulate(8, **CONFIGS[name])
    assert _bits(a.rho) != _bits(b.rho)


def test_saving_twice_gives_identical_files(tmp_path):
    t = _simulate(3, **CONFIGS["sgd-rayleigh-noise"])
    for suffix in (".npz", ".csv"):
        p1, p2 = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        t.save(p1)
        t.save(p2)
        assert p1.read_bytes() == p2.read_bytes(), suffix


# --------------------------------------------------------------------------------------------
# across processes and thread counts
# --------------------------------------------------------------------------------------------
def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    n = str(threads)
    env.update(
        NUMBA_NUM_THREADS=n,
        OMP_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        MPLBACKEND="Agg",
        # the commands run in a temporary directory: import this checkout's siflow
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
    )
    return env


def _run(
    args: list[str], cwd: Path, threads: int, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _compare_dirs(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"files differ between the runs: {differ}"


SIM_ARGS = ["siflow.simulate", "--lr", "0.1", "--wd", "1e-3", "--steps", "20000", "--seed", "11",
            "--batch", "16", "--out", "run", "--json", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_simulate_cli_same_bits_across_processes_and_threads(tmp_path):
    """1 thread vs 2 threads, two processes: every output file identical, byte for byte."""
    dirs = []
    for threads in (1, 2):
        d = tmp_path / f"threads{threads}"
        d.mkdir()
        proc = _run(SIM_ARGS, d, threads)
        (d / "stdout.json").write_text(proc.stdout)
        dirs.append(d)
    _compare_dirs(*dirs)
    traj = Trajectory.load(dirs[0] / "run" / "trajectory.npz")
    assert traj.status == "ok" and traj.meta["seed"] == 11


SWEEP_ARGS = ["siflow.sweep", "--loss", "rayleigh", "--lr", "0.05", "1", "--n-lr", "3", "--wd",
              "1e-3", "1e-2", "--n-wd", "2", "--seeds", "0", "1", "--steps", "4000", "--out", "sw",
              "--json", "--quiet"]  # fmt: skip


def _table(d: Path) -> bytes:
    return (d / "sw" / "table.csv").read_bytes()


@pytest.mark.slow
def test_sweep_same_table_with_1_or_2_workers_and_threads(tmp_path):
    outs = {}
    for workers, threads in ((1, 1), (2, 2), (2, 1)):
        d = tmp_path / f"w{workers}t{threads}"
        d.mkdir()
        proc = _run([*SWEEP_ARGS, "--workers", str(workers)], d, threads)
        outs[(workers, threads)] = (_table(d), proc.stdout)
    ref = outs[(1, 1)]
    assert ref[0].count(b"\n") >= 13  # header + 12 cells
    for key, val in outs.items():
        assert val[0] == ref[0], f"table.csv differs for workers, threads = {key}"
        assert val[1] == ref[1], f"JSON rows differ for workers, threads = {key}"


@pytest.mark.slow
def test_overlay_cli_same_bits_across_processes_and_threads(tmp_path):
    """The overlay of the same log: identical figure and JSON with 1 or 2 threads."""
    t = _simulate(5, **CONFIGS["sgd-logistic-batch"])
    t.save(tmp_path / "log.csv")
    outs = []
    for threads in (1, 2):
        d = tmp_path / f"overlay{threads}"
        d.mkdir()
        proc = _run(["siflow.overlay", "../log.csv", "--json", "--out", "fig.png"], d, threads)
        (d / "stdout.json").write_text(proc.stdout)
        outs.append(d)
    _compare_dirs(*outs)
