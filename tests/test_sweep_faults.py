"""Sweeps under faults: a locked output folder, foreign and damaged cells, dead processes,
sweeps too large to fit, numbers at the edge of the float range.

The kill tests are real: subprocesses signalled with SIGKILL, each bounded to a few
seconds of waiting.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siflow import sweep as S
from siflow._sweep_cli import main as sweep_main
from siflow.simulate import simulate as _real_simulate

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
LOSS = "rayleigh"
SMALL = dict(lr=(0.05, 0.2), wd=(1e-3, 1e-2), steps=400, workers=1)
LINUX = sys.platform.startswith("linux")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")  # fmt: skip
    return env


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = sweep_main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [S._row_to_json(r) for r in a] == [S._row_to_json(r) for r in b]


# --------------------------------------------------------------------------------- lock
def test_a_second_sweep_into_a_locked_folder_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    with S._locked(out):
        with pytest.raises(S.SweepLockedError, match=r"another sweep \(pid \d+\) is writing"):
            S.sweep(LOSS, out=out, **SMALL)
        with pytest.raises(S.SweepLockedError):
            S.sweep(LOSS, out=out, restart=True, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    res = S.sweep(LOSS, out=out, **SMALL)  # released: the same folder is usable again
    assert res.complete


LONG = ["--loss", "rayleigh", "--noise", "0.05", "--lr", "0.1", "0.1", "--n-lr", "1",
        "--wd", "1e-3", "1e-3", "--n-wd", "1", "--seeds", "0", "1", "--steps", "50000000",
        "--workers", "1", "--quiet", "--max-hours", "1000"]  # fmt: skip


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "siflow.sweep", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _wait_until(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def test_a_command_into_a_folder_another_sweep_holds_gets_one_line(tmp_path):
    holder = _start([*LONG, "--out", "sw"], tmp_path)
    try:
        config = tmp_path / "sw" / "sweep.json"
        _wait_until(config.exists, holder, 120, "the first sweep to start")
        before = config.read_bytes()
        for extra in (["--steps", "1000"], ["--restart"]):
            other = subprocess.run(
                [sys.executable, "-m", "siflow.sweep", *LONG, "--out", "sw", *extra],
                cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            lines = other.stderr.strip().splitlines()
            assert other.returncode == 2, other.stderr
            assert len(lines) == 1 and f"another sweep (pid {holder.pid}) is writing" in lines[0]
            assert "--out" in lines[0]
        assert config.read_bytes() == before
        assert holder.poll() is None
    finally:
        _killpg(holder)
    # kill -9 released the lock: the same command resumes at once
    assert not list((tmp_path / "sw" / "cells").glob("*.json"))
    code, _, err = _cli(["--n-lr", "1", "--lr", "0.1", "0.1", "--n-wd", "1", "--wd", "1e-3",
                         "1e-3", "--steps", "300", "--out", str(tmp_path / "sw"), "--restart",
                         "--workers", "1", "--quiet", "--json"])  # fmt: skip
    assert code == 0, err


# ------------------------------------------------------------------------------ cells
def test_cells_of_another_configuration_are_never_used(tmp_path):
    a = S.sweep(LOSS, out=tmp_path / "a", **SMALL)
    b_kw = dict(SMALL, steps=300)
    b_clean = S.sweep(LOSS, out=tmp_path / "b_clean", **b_kw)
    # the same grid, another step count: copy a's finished cells into b's folder
    S.sweep(LOSS, out=tmp_path / "b", **dict(b_kw, lr=(0.05,), wd=(1e-3,)))  # something else
    (tmp_path / "b" / "sweep.json").unlink()
    S.sweep(LOSS, out=tmp_path / "b", restart=True, **b_kw)
    for p in (tmp_path / "a" / "cells").iterdir():
        (tmp_path / "b" / "cells" / p.name).write_bytes(p.read_bytes())
    notes: list[str] = []
    b = S.sweep(LOSS, out=tmp_path / "b", notes=notes.append, **b_kw)
    assert b.discarded == [0, 1, 2, 3] and len(notes) == 1 and "4 cell files" in notes[0]
    _same_rows(b.rows, b_clean.rows)
    assert [r["steps_run"] for r in a.rows] != [r["steps_run"] for r in b.rows]


def _valid_cell(tmp_path: Path) -> tuple[S.SweepResult, Path]:
    res = S.sweep(LOSS, out=tmp_path, **SMALL)
    return res, tmp_path / "cells" / "cell_000001.json"


def _forged(res: S.SweepResult, **changes) -> str:
    """A cell file with a correct checksum whose fields do not match its cell."""
    row = dict(res.rows[1], **changes)
    return S._cell_to_json(row, res.config.fingerprint())


@pytest.mark.parametrize(
    "content",
    ["[]", "null", "{}", '"cell"', "1e999", "{\"index\": 1}", "", "\x00\xff", "[" * 100_000],
    ids=["list", "null", "empty-object", "string", "number", "partial", "empty", "binary",
         "deep"],
)  # fmt: skip
def test_a_malformed_cell_is_recomputed(tmp_path, content):
    res, path = _valid_cell(tmp_path)
    original = path.read_bytes()
    path.write_bytes(content.encode("latin-1"))
    assert S.load(tmp_path).discarded == [1]
    again = S.sweep(LOSS, out=tmp_path, notes=lambda _: None, **SMALL)
    assert again.discarded == [1]
    _same_rows(again.rows, res.rows)
    assert path.read_bytes() == original


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.1), ("seed", 3), ("index", 2), ("n_events", -1), ("n_events", "3"),
     ("regime", "chaotic"), ("status", "interrupted"), ("steps_run", 10**9),
     ("period", 7), ("lr_wd", 1.0), ("elr_mean", "0.1")],
)  # fmt: skip
def test_a_cell_whose_fields_do_not_validate_is_recomputed_even_with_a_good_checksum(
    tmp_path, field, value
):
    res, path = _valid_cell(tmp_path)
    original = path.read_bytes()
    path.write_text(_forged(res, **{field: value}))
    again = S.sweep(LOSS, out=tmp_path, notes=lambda _: None, **SMALL)
    assert again.discarded == [1]
    _same_rows(again.rows, res.rows)
    assert path.read_bytes() == original


def test_a_cell_file_under_another_index_is_not_used_for_it(tmp_path):
    res, path = _valid_cell(tmp_path)
    other = tmp_path / "cells" / "cell_000002.json"
    original = other.read_bytes()
    other.write_bytes(path.read_bytes())
    assert S.load(tmp_path).discarded == [2]
    again = S.sweep(LOSS, out=tmp_path, notes=lambda _: None, **SMALL)
    _same_rows(again.rows, res.rows)
    assert other.read_bytes() == original


def test_the_fingerprint_changes_with_every_field_of_the_configuration():
    base = S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,))
    variants = [
        S.SweepConfig("logistic", lr=(0.1,), wd=(1e-3,)),
        S.SweepConfig(LOSS, lr=(0.1, 0.2), wd=(1e-3,)),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(2e-3,)),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), momentum=(0.9,)),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), seeds=(1,)),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), steps=20_001),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), options={"noise": 0.1}),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), simulator="x:y"),
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), max_rows=10),
    ]
    prints = {v.fingerprint() for v in variants}
    assert len(prints) == len(variants) and base.fingerprint() not in prints
    assert S.SweepConfig(LOSS, lr=[0.1], wd=1e-3).fingerprint() == base.fingerprint()


def test_cell_index_arithmetic_matches_the_enumeration():
    cfg = S.SweepConfig(LOSS, lr=(0.1, 0.2, 0.3), wd=(1e-3, 1e-2), momentum=(0.0, 0.9),
                        seeds=(0, 5))  # fmt: skip
    assert [cfg.cell(i) for i in range(len(cfg))] == cfg.cells()


# ------------------------------------------------------------------- dead processes
def _children(pid: int) -> set[int]:
    """All descendants of ``pid`` (from /proc/*/stat)."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent_of[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


PARALLEL = ["--loss", "rayleigh", "--noise", "0.05", "--lr", "0.1", "0.2", "--n-lr", "2",
            "--wd", "1e-3", "1e-3", "--n-wd", "1", "--workers", "2", "--quiet",
            "--json"]  # fmt: skip


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
def test_kill_9_of_the_sweep_leaves_no_worker_and_frees_the_callers_pipes(tmp_path):
    proc = _start([*PARALLEL, "--steps", "50000000", "--max-hours", "1000", "--out", "sw"],
                  tmp_path)  # fmt: skip
    try:
        _wait_until(lambda: len(_children(proc.pid)) >= 2, proc, 120, "two workers")
        time.sleep(0.3)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the sweep alone, as the OOM killer would
        t0 = time.monotonic()
        # the workers held copies of stdout/stderr: communicate() returns once they are gone
        proc.communicate(timeout=10)
        waited = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], "workers outlived the sweep"
        assert waited < 5, f"the caller's pipes stayed open {waited:.1f} s"
        with S._locked(tmp_path / "sw"):  # no worker kept the sweep's lock
            pass
    finally:
        _killpg(proc)


_THREADED_SCRIPT = """
import sys, threading
from siflow import sweep as S
if __name__ == "__main__":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    assert S._start_method() == "forkserver"
    S.sweep("rayleigh", lr=(0.1, 0.2), wd=(1e-3,), steps=50_000_000, noise=0.05, workers=2,
            max_hours=1000, notes=lambda _: None)
"""


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
def test_kill_9_of_a_script_with_forkserver_workers_leaves_no_worker(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_THREADED_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        # the forkserver and its two workers
        _wait_until(lambda: len(_children(proc.pid)) >= 3, proc, 120, "forkserver workers")
        time.sleep(0.3)
        spawned = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in spawned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in spawned if _alive(p)], "processes outlived the script"
    finally:
        _killpg(proc)


_ORPHAN = """
import os, sys, time
from siflow import sweep as S
if sys.argv[1] == "poll":
    del os.pidfd_open  # the portable polling watch
sweep = os.getpid()
pid = os.fork()
if pid == 0:
    S._watch_sweep(sweep)
    time.sleep(30)
    os._exit(0)
print(pid, flush=True)
os._exit(0)  # the sweep dies; the worker must follow
"""


@pytest.mark.skipif(not LINUX, reason="reads the process table from /proc")
@pytest.mark.parametrize("how", ["pidfd", "poll"])
def test_the_watch_ends_a_worker_whose_sweep_died(how):
    res = subprocess.run([sys.executable, "-c", _ORPHAN, how], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    child = int(res.stdout.split()[0])
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the orphan kept running"


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
def test_a_killed_worker_is_one_line_and_its_cell_is_retried(tmp_path):
    args = [*PARALLEL, "--steps", "1000000", "--out", "sw"]
    proc = _start(args, tmp_path)
    try:
        _wait_until(lambda: len(_children(proc.pid)) >= 2, proc, 120, "two workers")
        os.kill(min(_children(proc.pid)), signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        _killpg(proc)
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "worker process died" in lines[0] and "retrying" in lines[0]
    assert "Traceback" not in err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    # the retried cells are those of an undisturbed computation
    config = S.load(tmp_path / "sw").config
    for r in rows:
        expected = json.loads(S._row_to_json(S.run_cell(config, config.cell(r["index"]))))
        assert r == expected


def _suicidal_simulation(loss, *, lr, wd, steps, seed, **kw):
    """simulate(), except that the cell with lr = 0.2 kills its own process.

    It first waits (up to a minute) until the other cell's row is written in ``sw/cells``
    (the sweep's output, relative to the test's working directory), so that the other
    cell is finished, not lost with the broken pool, whichever worker starts first.
    """
    import time

    from siflow.simulate import simulate

    if lr == 0.2:
        deadline = time.monotonic() + 60.0
        while not any(Path("sw/cells").glob("cell_*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return simulate(loss, lr=lr, wd=wd, steps=steps, seed=seed, **kw)


def test_a_cell_that_kills_its_worker_twice_stops_the_sweep_in_one_line(tmp_path):
    args = [*PARALLEL, "--steps", "2000", "--out", "sw", "--simulator",
            "test_sweep_faults:_suicidal_simulation"]  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "siflow.sweep", *args], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    assert "retrying" in lines[0]
    assert "died again" in lines[1] and "1 cell (1)" in lines[1] and "--workers" in lines[1]
    kept = S.load(tmp_path / "sw")
    assert [r["index"] for r in kept.rows] == [0]  # the finished cell is saved
    assert not (tmp_path / "sw" / "table.csv").exists()


# ------------------------------------------------------------- too large, edges
@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "1000000000000"], ["would take about", "--steps", "--max-hours"]),
        (["--n-lr", "100000", "--n-wd", "100000"], ["10000000000 cells", "memory", "--lr"]),
        (["--simulator", "os:getcwd"], ["os:getcwd", "signature"]),
        (["--simulator", "os:sep"], ["not a function"]),
        (["--simulator", "siflow.sweep:SweepResult"], ["SweepResult"]),
        (["--lr", "1e-300", "1e-300", "--n-lr", "1", "--wd", "1e-300", "1e-300", "--n-wd", "1"],
         ["underflows", "--lr", "--wd"]),
        (["--max-rows", "0"], ["--max-rows"]),
        (["--max-hours", "0"], ["--max-hours"]),
        (["--task-size", "0"], ["--task-size"]),
        (["--figure", "pd.txt"], ["pd.txt", ".png"]),
    ],
)  # fmt: skip
def test_what_cannot_run_is_refused_in_one_line_before_anything_is_written(tmp_path, args, words):
    code, out, err = _cli(["--out", str(tmp_path / "sw"), "--quiet", "--workers", "1", *args])
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "sw").exists()


def test_memory_refusal_names_max_rows_when_rows_are_the_problem():
    cfg = S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), steps=10**12, max_rows=None)
    est = S.estimate(cfg, 1)
    assert est.rows_per_cell == 10**12
    assert est.memory_bytes == S._WORKER_BASE_BYTES + 10**12 * S._BYTES_PER_ROW + 4096
    with pytest.raises(ValueError, match="max_rows="):
        S._refuse_what_cannot_fit(est, cfg)
    thinned = S.estimate(dataclasses_replace(cfg, max_rows=1000), 1)
    assert thinned.rows_per_cell == 1000
    S._refuse_what_cannot_fit(thinned, cfg)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_tiny_lr_wd_sweeps_and_draws_without_math_errors(tmp_path):
    """lr*wd = 1e-300: inside the float range, the sweep, table and figure all complete."""
    code, out, err = _cli(["--loss", "rayleigh", "--lr", "1e-150", "1e-150", "--n-lr", "1",
                           "--wd", "1e-150", "1e-150", "--n-wd", "1", "--steps", "50",
                           "--workers", "1", "--quiet", "--out", str(tmp_path / "sw")])  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "sw" / "phase_diagram.png").stat().st_size > 1000
    row = S.load(tmp_path / "sw").rows[0]
    assert row["lr_wd"] == 1e-150 * 1e-150 and row["regime"] in S.REGIMES


# ---------------------------------------------------------------------- thinning
_SPY: list = []


def _spy(simulate):
    """``simulate`` with its own signature, recording the thinning asked of each call."""

    @functools.wraps(simulate)
    def spy(loss, **kw):
        traj = simulate(loss, **kw)
        asked = {k: kw[k] for k in ("max_rows", "max_points", "record_every") if k in kw}
        _SPY.append((asked, len(traj)))
        return traj

    return spy


_spy_simulation = _spy(_real_simulate)


def test_cells_are_thinned_to_max_rows(tmp_path):
    _SPY.clear()
    S.sweep(LOSS, lr=(0.1,), wd=(1e-3,), steps=40_000, max_rows=2000, workers=1, noise=0.05,
            simulator=f"{__name__}:_spy_simulation")  # fmt: skip
    asked, n = _SPY[-1]
    # regular rows fill half the cap, rows near jumps the other half (max_rows= when taken)
    assert asked in ({"max_points": 1000}, {"max_points": 1000, "max_rows": 2000})
    assert n < 40_000 / 10  # thinned (rows near jumps may add a few)


def test_time_weighted_mean_by_hand():
    # rows at steps 0, 1, 2, 10: they stand for 1, 1, 8 and (median gap) 1 steps
    v = np.array([1.0, 2.0, 3.0, 4.0])
    assert S._time_weighted_mean(v, np.array([0, 1, 2, 10])) == pytest.approx(
        (1 * 1 + 2 * 1 + 3 * 8 + 4 * 1) / 11, rel=1e-15
    )
    assert S._time_weighted_mean(v, np.arange(4) * 3) == np.mean(v)
    assert S._time_weighted_mean(np.array([np.nan, 2.0]), np.array([0, 5])) == 2.0
    assert math.isnan(S._time_weighted_mean(np.array([np.nan]), np.array([0])))


# ---------------------------------------------------------------------- schedules
_SCHEDULED: list = []


def _scheduled_simulation(loss, *, lr, wd, steps, seed, **kw):
    """A simulator whose lr= takes a Schedule: it runs siflow's at the schedule's values
    averaged (a stand-in) and records the per-step values it was given."""
    from siflow.schedules import Schedule

    assert isinstance(lr, Schedule)
    values = lr.values(steps)
    _SCHEDULED.append((lr.spec, values[0], values.max(), values[-1]))
    return _real_simulate(loss, lr=float(values.mean()), wd=wd, steps=steps, seed=seed)


def test_a_schedule_reaches_every_cell_peaking_at_its_lr():
    _SCHEDULED.clear()
    spec = "cosine:warmup=10,min=0.001,steps=200"
    res = S.sweep(LOSS, lr=(0.05, 0.2), wd=(1e-3,), steps=200, workers=1, schedule=spec,
                  simulator=f"{__name__}:_scheduled_simulation")  # fmt: skip
    assert res.complete and res.config.schedule == spec
    cells = {round(peak, 12): (first, last) for _, first, peak, last in _SCHEDULED[-2:]}
    # warmup: peak (t+1)/warmup at t = 0; the cosine ends at min at step 200
    for peak in (0.05, 0.2):
        first, last = cells[peak]
        assert first == pytest.approx(peak / 10, rel=1e-15)
        assert last == pytest.approx(
            0.001 + (peak - 0.001) * (1 + math.cos(math.pi * 189 / 190)) / 2, rel=1e-12
        )
    plain = S.SweepConfig(LOSS, lr=(0.05, 0.2), wd=(1e-3,), steps=200)
    assert res.config.fingerprint() != plain.fingerprint()


def test_a_bad_schedule_or_a_simulator_without_schedules_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="cosine"):
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), schedule="cosine:warmup=10")
    sim = "test_sweep_faults:_constant_only"
    code, _, err = _cli(["--loss", "rayleigh", "--n-lr", "2", "--n-wd", "1", "--wd", "1e-3",
                         "1e-3", "--steps", "50", "--schedule", "cosine:steps=50", "--simulator",
                         sim, "--out", str(tmp_path / "sw")])  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "does not run the schedule" in err and "or no --schedule" in err
    assert not (tmp_path / "sw").exists()


def _constant_only(loss, *, lr, wd, steps, seed, **kw):
    return _real_simulate(loss, lr=float(lr), wd=wd, steps=steps, seed=seed)


# --------------------------------------------------------------------- vocabulary
def test_sweep_and_simulate_share_flag_names_and_defaults():
    from siflow._simulate_cli import build_parser as simulate_parser
    from siflow._sweep_cli import build_parser as sweep_parser

    sim = simulate_parser().parse_args(["--lr", "0.1", "--wd", "1e-3"])
    swp = sweep_parser().parse_args([])
    assert swp.loss == sim.loss == "logistic"
    for flag in ("--batch", "--noise", "--dim", "--optimizer", "--record-every", "--steps",
                 "--loss", "--momentum", "--out", "--json", "--quiet"):  # fmt: skip
        for parser in (sim, swp):
            assert flag.lstrip("-").replace("-", "_") in vars(parser), (flag, parser)
    assert sweep_parser().parse_args(["--batch", "32"]).batch == 32
    assert sweep_parser().parse_args(["--batch-size", "32"]).batch == 32  # the old spelling
    assert "--batch-size" not in sweep_parser().format_help()


def test_a_thinned_cell_reports_the_steps_it_ran():
    res = S.sweep(LOSS, lr=(0.1,), wd=(1e-3,), steps=20_000, max_rows=100, workers=1,
                  noise=0.05)  # fmt: skip
    assert res.rows[0]["steps_run"] == 20_000


def test_a_noisy_trial_never_estimates_a_long_sweep_as_free(monkeypatch):
    """The longer trial running faster (a busy machine) must not make steps cost nothing."""
    delays = iter([0.05, 0.01])
    monkeypatch.setattr(S, "_compute_cell", lambda cfg, cell: time.sleep(next(delays)))
    cfg = S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), steps=10**12)
    # the floor: a quarter of the longer trial's time per step (>= 0.01 s / 2000 steps)
    assert S._seconds_per_cell(cfg) >= 0.25 * 0.01 / 2000 * 10**12
