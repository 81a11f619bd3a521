"""Interrupted work: Ctrl-C or a kill leaves readable results, and a sweep resumes.

Real subprocesses are interrupted with real signals: SIGINT (Ctrl-C) and SIGKILL
(an out-of-memory kill, a lost job slot) sent to the process group we started.
What must hold (issue 8):

* ``python -m siflow.simulate``: after SIGINT, exit status 130 and a trajectory
  file with ``status == "interrupted"`` holding the steps simulated so far; after
  SIGKILL, the last checkpoint still loads (files are replaced atomically) and
  does not claim to be a finished run;
* ``python -m siflow.sweep``: after SIGINT or SIGKILL every cell file on disk is
  complete, and rerunning the same command finishes the sweep without redoing
  those cells, giving the same table as an uninterrupted run;
* an exception or Ctrl-C in the middle of a save leaves the previous file intact
  and no temporary file behind;
* files written atomically get the permissions a plain ``open()`` would give.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siflow.trajectory import Trajectory


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
    return env


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: signals reach its workers too
    )


def _signal_and_wait(proc: subprocess.Popen, sig: int, timeout: float = 120.0):
    os.killpg(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"no exit within {timeout} s of signal {sig}:\n{err}") from None
    return proc.returncode, out, err


def _temp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------------
# isotropic noise keeps the gradient from vanishing: the run neither converges nor underflows
LONG_SIM = ["siflow.simulate", "--loss", "rayleigh", "--lr", "0.1", "--wd", "1e-3", "--noise",
            "0.05", "--steps", "2000000000", "--out", "run", "--quiet", "--no-figure"]  # fmt: skip


def _check_partial_trajectory(traj: Trajectory) -> None:
    assert 0 < traj.meta["steps_done"] < 2_000_000_000
    assert len(traj) > 0 and np.all(np.diff(traj.step) > 0)
    assert traj.step[-1] < traj.meta["steps_done"]
    for name in ("loss", "rho", "grad_norm_sphere", "elr", "angular_update"):
        assert np.all(np.isfinite(traj.column(name))), name


def test_simulate_sigint_leaves_an_interrupted_trajectory(tmp_path, wait_for):
    proc = _start(LONG_SIM, tmp_path)
    traj_path = tmp_path / "run" / "trajectory.npz"
    wait_for(traj_path.exists, proc, what="the first checkpoint")
    first = Trajectory.load(traj_path)
    time.sleep(0.5)
    code, out, err = _signal_and_wait(proc, signal.SIGINT)
    assert "Traceback" not in err, err
    assert code == 130, f"exit {code}:\n{err}"
    assert "interrupted" in err
    traj = Trajectory.load(traj_path)
    assert traj.status == "interrupted"
    _check_partial_trajectory(traj)
    assert traj.meta["steps_done"] >= first.meta["steps_done"]
    # the rows already checkpointed are kept unchanged
    n = len(first)
    np.testing.assert_array_equal(traj.step[:n], first.step)
    np.testing.assert_array_equal(traj.rho[:n], first.rho)
    assert not _temp_files(tmp_path), _temp_files(tmp_path)


def test_simulate_sigkill_leaves_a_readable_checkpoint_not_marked_ok(tmp_path, wait_for):
    proc = _start(LONG_SIM, tmp_path)
    traj_path = tmp_path / "run" / "trajectory.npz"
    wait_for(traj_path.exists, proc, what="the first checkpoint")
    mtime = traj_path.stat().st_mtime_ns
    wait_for(lambda: traj_path.stat().st_mtime_ns != mtime, proc, what="a second checkpoint")
    code, _, _ = _signal_and_wait(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    traj = Trajectory.load(traj_path)  # atomic replacement: never half a file
    _check_partial_trajectory(traj)
    # a checkpoint of an unfinished run must not read as a finished one
    assert traj.status != "ok", (
        f"checkpoint of a killed run says status 'ok' after "
        f"{traj.meta['steps_done']} of {traj.meta['steps']} steps"
    )


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------
SWEEP = ["siflow.sweep", "--loss", "rayleigh", "--lr", "0.05", "1", "--n-lr", "4",
         "--wd", "1e-3", "1e-2", "--n-wd", "3", "--steps", "200000", "--out", "sw", "--quiet",
         "--json"]  # fmt: skip
N_CELLS = 12


def _cells(d: Path) -> dict[str, bytes]:
    cells = d / "sw" / "cells"
    if not cells.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(cells.glob("cell_*.json"))}


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory) -> bytes:
    """table.csv of the uninterrupted sweep."""
    d = tmp_path_factory.mktemp("sweep_ref")
    proc = subprocess.run([sys.executable, "-m", *SWEEP, "--workers", "2"], cwd=d, env=_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = (d / "sw" / "table.csv").read_bytes()
    assert table.count(b"\n") == N_CELLS + 1
    return table


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_interrupted_then_rerun_resumes_to_the_same_table(
    tmp_path, sweep_reference, sig, workers, wait_for
):
    args = [*SWEEP, "--workers", str(workers)]
    proc = _start(args, tmp_path)
    wait_for(lambda: len(_cells(tmp_path)) >= 3, proc, what="three finished cells")
    code, out, err = _signal_and_wait(proc, sig)
    assert "Traceback" not in err, err
    if sig == signal.SIGINT:
        assert code == 130, f"exit {code}:\n{err}"
    saved = _cells(tmp_path)
    assert 3 <= len(saved) < N_CELLS, f"{len(saved)} cells saved: kill came too late"
    for data in saved.values():
        json.loads(data)  # every cell file on disk is complete
    assert not (tmp_path / "sw" / "table.csv").exists()

    rerun = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    after = _cells(tmp_path)
    assert len(after) == N_CELLS
    # cells finished before the interruption were read back, not recomputed
    assert {k: after[k] for k in saved} == saved
    assert (tmp_path / "sw" / "table.csv").read_bytes() == sweep_reference
    assert not _temp_files(tmp_path), _temp_files(tmp_path)


# --------------------------------------------------------------------------------------------
# atomic saves
# --------------------------------------------------------------------------------------------
class _Boom(BaseException):
    pass


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, _Boom, OSError])
def test_a_save_interrupted_midway_keeps_the_old_file(tmp_path, monkeypatch, suffix, exc):
    old = Trajectory(step=np.arange(5), rho=np.ones(5), meta={"lr": 0.1})
    path = old.save(tmp_path / f"traj{suffix}")
    before = path.read_bytes()
    new = Trajectory(step=np.arange(1000), rho=np.linspace(1, 2, 1000), meta={"lr": 0.2})

    def flaky_savez(fh, *args, **kw):
        fh.write(b"PK\x03\x04 partial")
        raise exc("interrupted while writing")

    def flaky_fsync(fd):  # the CSV writer syncs the whole temporary file before the rename
        raise exc("interrupted before the rename")

    if suffix == ".npz":
        monkeypatch.setattr(np, "savez", flaky_savez)
        monkeypatch.setattr(np, "savez_compressed", flaky_savez)
    else:
        monkeypatch.setattr(os, "fsync", flaky_fsync)
    with pytest.raises(exc):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert Trajectory.load(path).meta == {"lr": 0.1}


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; an output must be readable like any other (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    traj = Trajectory(step=np.arange(3), rho=np.ones(3))
    for suffix in (".npz", ".csv"):
        p = traj.save(tmp_path / f"t{suffix}")
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == expected, f"{p.name}: mode {oct(mode)}, a plain open() gives {oct(expected)}"


def test_sweep_resume_recomputes_damaged_or_missing_cells(tmp_path):
    """A cell file damaged outside siflow (a partial copy) or deleted is recomputed on resume."""
    from siflow.sweep import sweep

    kw = dict(lr=[0.1, 1.0], wd=[1e-3, 1e-2], seeds=[0, 1], steps=3000, out=tmp_path / "sw",
              workers=1, noise=0.01)  # fmt: skip
    first = sweep("rayleigh", **kw)
    table = (tmp_path / "sw" / "table.csv").read_bytes()
    cells = sorted((tmp_path / "sw" / "cells").glob("cell_*.json"))
    assert len(cells) == len(first.rows) == 8
    cells[1].write_bytes(cells[1].read_bytes()[:20])  # truncated JSON
    cells[5].unlink()
    (tmp_path / "sw" / "table.csv").unlink()
    with pytest.warns(RuntimeWarning, match="1 cell file .* damaged or not of this sweep"):
        again = sweep("rayleigh", **kw)
    assert len(again.rows) == 8
    assert (tmp_path / "sw" / "table.csv").read_bytes() == table
    json.loads(cells[1].read_text())  # rewritten whole
