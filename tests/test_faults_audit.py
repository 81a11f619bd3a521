"""Faults found by the interrupt, concurrency, file-system and edge-input audit.

What must hold:

1. Ctrl-C while ``simulate`` writes its final trajectory keeps the finished run (the
   write completes, then the interrupt is acted on) and says what was written;
2. two overlays of different logs with the same default folder never write into one
   folder, even when they run at the same time;
3. the sweep's ``.lock`` is never followed through a symbolic link, and a finished
   sweep reruns without writing anything (a read-only copy works);
4. the time estimate counts the O(dim^3) setup of a data toy;
5. a default ``simulate`` folder holding a run of other options is not written over;
6. SIGTERM is handled like Ctrl-C by ``simulate`` and ``sweep`` (exit status 143);
7. a full, read-only or misplaced file system gives one line naming the path and a fix;
8. a statistics window placed by the thinning is said to be;
9. error messages name flags, not Python parameters, and offer fixes that are taken;
10. a legal file name of up to 255 bytes can be written atomically.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from siflow import _fileio
from siflow._fileio import atomic_path, atomic_write
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
LR, WD = 0.1, 5e-3
#: A short run of a data-free toy: quick, and its final save is the only save.
SHORT = ["--loss", "rayleigh", "--lr", "0.1", "--wd", "1e-3", "--steps", "3000", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _simulate_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from siflow._simulate_cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's refusals end the command there
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


def _sweep_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from siflow._sweep_cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _overlay_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from siflow._overlay_cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _temporaries(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".siflow.tmp" in p.name]


# --------------------------------------------------------------------------------- 1 and 6
def _signal_during_final_save(monkeypatch, signum: int) -> None:
    """Make the final save of a run send ``signum`` to this process as it starts."""
    original = Trajectory.save

    def save(self, path):
        if self.meta.get("status") != "interrupted":  # the final write, not a checkpoint
            os.kill(os.getpid(), signum)
        return original(self, path)

    monkeypatch.setattr(Trajectory, "save", save)


def test_ctrl_c_during_the_final_save_keeps_the_finished_run(tmp_path, monkeypatch):
    from siflow.simulate import simulate

    path = tmp_path / "trajectory.npz"
    _signal_during_final_save(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        simulate("rayleigh", lr=0.1, wd=1e-3, steps=3000, checkpoint=path, checkpoint_every=1e9)
    monkeypatch.undo()
    traj = Trajectory.load(path)
    assert traj.status == "ok"
    assert traj.meta["steps_done"] == 3000 and len(traj) == 3000
    assert not _temporaries(tmp_path)


def test_simulate_cli_says_what_it_wrote_when_ctrl_c_hits_the_final_save(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    _signal_during_final_save(monkeypatch, signal.SIGINT)
    code, stdout, err = _simulate_cli([*SHORT, "--no-figure", "--out", out], capsys)
    monkeypatch.undo()
    assert code == 130, err
    assert "interrupted while writing the run" in err
    assert f"'{out / 'trajectory.npz'}' holds 3000 of 3000 steps (status 'ok')" in err
    assert Trajectory.load(out / "trajectory.npz").status == "ok"
    assert not (out / "summary.json").exists()  # the analysis was stopped, as asked


_SIGNAL_IN_FINAL_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from siflow.trajectory import Trajectory
    from siflow._simulate_cli import main

    signum = getattr(signal, sys.argv[1])
    original = Trajectory.save

    def save(self, path):
        if self.meta.get("status") != "interrupted":
            os.kill(os.getpid(), signum)
        return original(self, path)

    Trajectory.save = save
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_the_final_save_of_the_command_keeps_the_run(tmp_path, name, code):
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_FINAL_SAVE, name, *SHORT, "--no-figure", "--out", "run"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    what = "terminated" if name == "SIGTERM" else "interrupted"
    assert f"{what} while writing the run" in proc.stderr
    assert "holds 3000 of 3000 steps (status 'ok')" in proc.stderr
    traj = Trajectory.load(tmp_path / "run" / "trajectory.npz")
    assert traj.status == "ok" and len(traj) == 3000
    assert not _temporaries(tmp_path)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _terminate(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)  # the process only, as `timeout` and `docker stop` do
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"no exit within {timeout} s of SIGTERM:\n{err}") from None
    return proc.returncode, err


def test_simulate_keeps_the_run_so_far_on_sigterm(tmp_path, wait_for):
    args = ["siflow.simulate", "--loss", "rayleigh", "--lr", "0.1", "--wd", "1e-3", "--noise",
            "0.05", "--steps", "2000000000", "--out", "run", "--quiet", "--no-figure"]  # fmt: skip
    proc = _start(args, tmp_path)
    path = tmp_path / "run" / "trajectory.npz"
    wait_for(path.exists, proc, "the first checkpoint")
    code, err = _terminate(proc)
    assert code == 143, f"exit {code}:\n{err}"
    assert "Traceback" not in err and "terminated after" in err and str(Path("run")) in err
    traj = Trajectory.load(path)
    assert traj.status == "interrupted"
    assert 0 < traj.meta["steps_done"] < 2_000_000_000 and len(traj) > 0
    assert not _temporaries(tmp_path)


SWEEP = ["siflow.sweep", "--loss", "rayleigh", "--lr", "0.05", "1", "--n-lr", "4", "--wd", "1e-3",
         "1e-2", "--n-wd", "3", "--steps", "200000", "--out", "sw", "--quiet", "--json",
         "--workers", "2"]  # fmt: skip


def test_sweep_keeps_its_cells_on_sigterm_and_resumes(tmp_path, wait_for):
    proc = _start(SWEEP, tmp_path)
    cells = tmp_path / "sw" / "cells"
    wait_for(lambda: cells.is_dir() and any(cells.glob("cell_*.json")), proc, "a finished cell")
    code, err = _terminate(proc)
    assert code == 143, f"exit {code}:\n{err}"
    assert "Traceback" not in err
    assert "cells saved in sw; rerun the same command to resume" in err
    assert "terminated (SIGTERM)" in err
    saved = {p.name: p.read_bytes() for p in cells.glob("cell_*.json")}
    assert 1 <= len(saved) < 12
    rerun = subprocess.run([sys.executable, "-m", *SWEEP], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    after = {p.name: p.read_bytes() for p in cells.glob("cell_*.json")}
    assert len(after) == 12 and {k: after[k] for k in saved} == saved
    assert not _temporaries(tmp_path)


def test_sigterm_handler_is_installed_for_the_command_only():
    from siflow._cli import terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with terminate_as_interrupt():
        inside = signal.getsignal(signal.SIGTERM)
    assert inside is not before and signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------- 2
def _burst_log(path: Path, n: int) -> Path:
    """A log following the exact SGD+WD norm recursion, with gradient bursts."""
    q2 = (1 - LR * WD) ** 2
    r2, x, left = np.empty(n), 4.0, 0
    for t in range(n):
        r2[t] = x
        if left == 0 and x < 1.0:
            left = 20
        g = 3.0 if left else 0.0
        left = max(left - 1, 0)
        x = q2 * x + LR**2 * g**2 / x
    path.parent.mkdir(parents=True, exist_ok=True)
    traj = Trajectory(step=np.arange(n), rho=np.sqrt(r2), loss=np.full(n, 0.01),
                      meta={"lr": LR, "wd": WD})  # fmt: skip
    return traj.save(path)


def test_two_overlays_at_once_with_the_same_default_folder_keep_both(tmp_path, monkeypatch, capsys):
    """Overlay b runs while overlay a is between reading its log and writing its output."""
    import siflow.overlay

    monkeypatch.chdir(tmp_path)
    a = _burst_log(tmp_path / "a" / "metrics.csv", 8000)
    b = _burst_log(tmp_path / "b" / "metrics.csv", 5000)
    analyze = siflow.overlay.analyze
    other: dict[str, object] = {}

    def analyze_while_b_runs(*args, **kwargs):
        monkeypatch.setattr(siflow.overlay, "analyze", analyze)
        other["code"] = _overlay_cli([b, "--no-figure"], capsys)
        return analyze(*args, **kwargs)

    monkeypatch.setattr(siflow.overlay, "analyze", analyze_while_b_runs)
    code, out, err = _overlay_cli([a, "--no-figure"], capsys)
    assert code == 0, err
    b_code, b_out, b_err = other["code"]
    assert b_code == 0, b_err
    a_summary = out.split("summary: ")[-1].strip()
    b_summary = b_out.split("summary: ")[-1].strip()
    assert a_summary != b_summary
    assert json.loads(Path(a_summary).read_text())["log"] == str(a.resolve())
    assert json.loads(Path(b_summary).read_text())["log"] == str(b.resolve())


def test_overlay_claims_its_default_folder_atomically(tmp_path, monkeypatch):
    from siflow._overlay_cli import claim_default_out

    monkeypatch.chdir(tmp_path)
    a = _burst_log(tmp_path / "a" / "metrics.csv", 100)
    b = _burst_log(tmp_path / "b" / "metrics.csv", 100)
    first, second = claim_default_out(a), claim_default_out(b)  # neither has written yet
    assert first == Path("runs/overlay/metrics") and second == Path("runs/overlay/metrics-2")
    assert first.is_dir() and second.is_dir()


# ---------------------------------------------------------------------------------------- 3
SMALL_SWEEP = ["--loss", "rayleigh", "--lr", "0.1", "1", "--n-lr", "2", "--wd", "1e-3", "1e-2",
               "--n-wd", "2", "--steps", "2000", "--workers", "1", "--quiet"]  # fmt: skip


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    code, _, err = _sweep_cli([*SMALL_SWEEP, "--out", out], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert ".lock" in line and "not a regular file" in line and "remove it" in line
    assert victim.read_text() == "precious data\n"
    assert (out / ".lock").is_symlink()


def test_a_lock_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    code, _, err = _sweep_cli([*SMALL_SWEEP, "--out", out], capsys)
    assert code == 2 and "not a regular file" in _one_error_line(err)


def _read_only(monkeypatch) -> None:
    """Every lock and write of the sweep and its figure fails as on a read-only medium."""
    import siflow.plot
    import siflow.sweep

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(siflow.sweep, "_locked", refuse)
    monkeypatch.setattr(siflow.sweep, "atomic_write", refuse)
    monkeypatch.setattr(siflow.plot, "atomic_path", refuse)
    monkeypatch.setattr(_fileio, "atomic_write", refuse)


def test_a_finished_sweep_reruns_from_a_read_only_copy(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    code, first, err = _sweep_cli([*SMALL_SWEEP, "--out", out], capsys)
    assert code == 0, err
    table = (out / "table.csv").read_bytes()
    figure = (out / "phase_diagram.png").read_bytes()
    _read_only(monkeypatch)
    code, again, err = _sweep_cli([*SMALL_SWEEP, "--out", out], capsys)
    assert code == 0, err
    assert again.split("\ntable:")[0] == first.split("\ntable:")[0]  # the same grid
    assert f"figure: {out / 'phase_diagram.png'} (kept as it was: Read-only file system)" in again
    assert (out / "table.csv").read_bytes() == table
    assert (out / "phase_diagram.png").read_bytes() == figure


def test_an_unfinished_sweep_still_takes_the_lock(tmp_path, monkeypatch):
    from siflow import sweep as sweep_module

    kw = dict(lr=[0.1, 1.0], wd=[1e-3], steps=2000, out=tmp_path / "sw", workers=1)
    sweep_module.sweep("rayleigh", **kw)
    (tmp_path / "sw" / "table.csv").unlink()  # the table is to be written again
    taken = []
    locked = sweep_module._locked

    def spy(out):
        taken.append(out)
        return locked(out)

    monkeypatch.setattr(sweep_module, "_locked", spy)
    sweep_module.sweep("rayleigh", **kw)
    assert taken == [tmp_path / "sw"] and (tmp_path / "sw" / "table.csv").is_file()


# ---------------------------------------------------------------------------------------- 4
def test_the_estimate_counts_the_setup_of_a_large_data_toy():
    from siflow.simulate import estimate

    est = estimate("logistic", steps=3000, dim=5000)
    # measured: 52.6 s on 2 cores, most of it building the toy (its minimizer)
    assert est["setup_seconds"] == pytest.approx(7e-10 * 5000**3)
    assert est["seconds"] > 60 and est["setup_seconds"] > 0.5 * est["seconds"]
    # measured peak RSS: 2.71 GB at dim 8000 (about 250 MB of it imports)
    assert estimate("logistic", steps=3000, dim=8000)["bytes"] > 2.71e9
    assert estimate("rayleigh", steps=3000, dim=5000)["setup_seconds"] == 0.0


def test_a_long_setup_is_announced_with_the_flag_that_shortens_it():
    from types import SimpleNamespace

    from siflow._simulate_cli import ANNOUNCE_SECONDS, _announcement
    from siflow.simulate import estimate

    est = estimate("logistic", steps=3000, dim=5000)
    assert est["seconds"] > ANNOUNCE_SECONDS
    toy = SimpleNamespace(name="logistic", dim=5000)
    line = _announcement(SimpleNamespace(steps=3000), toy, est)
    assert "should take about 95 s" in line and "building the toy" in line
    assert "smaller --dim" in line


# ---------------------------------------------------------------------------------------- 5
def _rows(folder: Path) -> int:
    return len(Trajectory.load(folder / "trajectory.npz"))


def test_default_folders_of_different_runs_do_not_replace_each_other(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["--loss", "rayleigh", "--wd", "1e-3", "--steps", "6000", "--quiet", "--no-figure"]
    runs = {
        "plain": ["--lr", "0.1"],
        "lr past six digits": ["--lr", "0.1000001"],
        "record-every": ["--lr", "0.1", "--record-every", "50"],
        "max-rows": ["--lr", "0.1", "--max-rows", "100000"],
        "betas": ["--lr", "0.1", "--optimizer", "adamw", "--betas", "0.9,0.99"],
        "betas default": ["--lr", "0.1", "--optimizer", "adamw"],
    }
    folders = {}
    for what, extra in runs.items():
        code, out, err = _simulate_cli([*base, *extra], capsys)
        assert code == 0, (what, err)
        folders[what] = Path(out.split("wrote: ")[-1].split("/trajectory.npz")[0])
    assert len(set(folders.values())) == len(runs), folders
    assert _rows(folders["plain"]) == 6000 and _rows(folders["record-every"]) == 121
    assert folders["plain"] == Path("runs/rayleigh-sgd-lr0.1-wd0.001-n6000-s0")
    assert folders["lr past six digits"] == Path("runs/rayleigh-sgd-lr0.1000001-wd0.001-n6000-s0")
    # the betas do not name the folder: the second AdamW run found the first one's there
    assert folders["betas default"] == Path(f"{folders['betas']}-2")
    assert "holds a run of other options" in err
    # the same command again replaces its own output, in its own folder
    code, out, err = _simulate_cli([*base, "--lr", "0.1"], capsys)
    assert code == 0 and f"wrote: {folders['plain']}/trajectory.npz" in out
    assert not Path(f"{folders['plain']}-2").exists()


def test_two_runs_claiming_the_same_default_folder_get_their_own(tmp_path, monkeypatch):
    from siflow._simulate_cli import build_parser, claim_default_out

    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    one = parse(["--lr", "0.1", "--wd", "1e-3", "--optimizer", "adamw"])
    two = parse(["--lr", "0.1", "--wd", "1e-3", "--optimizer", "adamw", "--betas", "0.8,0.9"])
    (a, created_a), (b, created_b) = claim_default_out(one), claim_default_out(two)
    assert created_a and created_b and a != b and b == Path(f"{a}-2")
    assert claim_default_out(one) == (a, False)  # the same run again: its own folder


# ---------------------------------------------------------------------------------------- 7
def _full_disk(monkeypatch) -> None:
    def save(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Trajectory, "save", save)


def test_simulate_on_a_full_disk_says_so_and_that_the_run_was_not_saved(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "small" / "run"
    _full_disk(monkeypatch)
    code, _, err = _simulate_cli([*SHORT, "--no-figure", "--out", out], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"cannot write '{out / 'trajectory.npz'}' (No space left on device)" in line
    assert "free space on that disk, or pass --out on another" in line
    assert "not saved" in line and "nothing was written" in line
    assert "[Errno" not in line
    assert not out.exists()  # no empty folder left behind


def test_overlay_out_under_a_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = _burst_log(tmp_path / "log.csv", 3000)
    Path("afile").write_text("x")
    code, _, err = _overlay_cli([log, "--no-figure", "--out", "afile/x"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "'afile/x'" in line and "Not a directory" in line and "pass another --out" in line
    assert "[Errno" not in line


def test_overlay_on_a_read_only_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = _burst_log(tmp_path / "log.csv", 3000)

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(_fileio, "atomic_write", refuse)
    code, _, err = _overlay_cli([log, "--no-figure", "--out", "ov"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "cannot write 'ov/summary.json' (Read-only file system)" in line
    assert "pass --out on a writable one" in line


def test_sweep_restart_over_a_table_that_is_a_directory_creates_nothing(tmp_path, capsys):
    out = tmp_path / "t"
    (out / "table.csv").mkdir(parents=True)
    code, _, err = _sweep_cli([*SMALL_SWEEP, "--out", out, "--restart"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "table.csv" in line and "is a directory" in line and "--out" in line
    assert sorted(p.name for p in out.iterdir()) == ["table.csv"]


def test_sweep_on_a_full_disk_names_the_file_the_fix_and_the_cells_kept(
    tmp_path, monkeypatch, capsys
):
    import siflow.sweep

    written = []

    def fill_up(path, *args, **kwargs):
        if Path(path).parent.name == "cells" and len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return atomic_write(path, *args, **kwargs)

    monkeypatch.setattr(siflow.sweep, "atomic_write", fill_up)
    out = tmp_path / "sw"
    code, _, err = _sweep_cli([*SMALL_SWEEP, "--out", out], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "(No space left on device); free space on that disk, or pass --out on another" in line
    assert f"1 of 4 cells saved in {out}, and a rerun resumes from them" in line
    assert "[Errno" not in line


def test_replacing_a_file_on_a_read_only_file_system_says_so(tmp_path, monkeypatch):
    target = tmp_path / "phase_diagram.png"
    target.write_bytes(b"old")

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(_fileio, "_writable", lambda path: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(OSError) as info, atomic_write(target) as fh:
        fh.write("new")
    assert info.value.errno == errno.EROFS and info.value.filename == str(target)
    assert "chmod" not in str(info.value) and target.read_bytes() == b"old"


# ---------------------------------------------------------------------------------------- 8
def test_a_window_placed_by_the_thinning_is_said_to_be(tmp_path, capsys):
    argv = ["--loss", "rayleigh", "--noise", "0.05", "--lr", "0.1", "--wd", "1e-2", "--steps",
            "20000", "--quiet", "--no-figure", "--json"]  # fmt: skip
    stats, notes = {}, {}
    for every in (1, 7):
        code, out, err = _simulate_cli(
            [*argv, "--record-every", every, "--out", tmp_path / f"r{every}"], capsys
        )
        assert code == 0, err
        summary = json.loads(out)
        stats[every], notes[every] = summary["statistics"], summary["notes"]
    assert stats[1]["start"] != stats[7]["start"]  # the kept rows place the window
    start, stop = stats[7]["start"], stats[7]["stop"]
    assert stats[7]["window"].startswith(f"steps {start + 1}..{stop}:")
    said = [n for n in notes[7] if "another --record-every can place it elsewhere" in n]
    assert len(said) == 1 and f"steps {start + 1}..{stop}" in said[0]
    assert not [n for n in notes[1] if "--record-every" in n]


# ---------------------------------------------------------------------------------------- 9
@pytest.mark.parametrize(
    ("extra", "said", "not_said"),
    [
        (["--lr", "1e309"], "1.8e308", "or inf"),
        (["--lr", "1e-400"], "at least 5e-324", "or 0"),
        (["--lr", "0.1", "--dim", "0"], "--dim must be >= 2", "value >= 1"),
        (["--lr", "0.1", "--dim", "1"], "pass --dim 2 or more", "dim must be >= 2 for"),
        (["--lr", "0.1", "--rho0", "1e-200"], "--rho0 1e-200 is outside", "w0"),
        (["--lr", "0.1", "--seed", "-1"], "error: --seed must be >= 0", "error: seed"),
        (["--lr", "-1"], "error: --lr must be > 0", "error: lr"),
        (["--lr", "0.1", "--momentum", "1"], "error: --momentum must be in [0, 1)", "error: mom"),
        (["--lr", "-inf"], "--lr must be finite", "expected one argument"),
        (["--lr", "-nan"], "--lr must be finite", "expected one argument"),
    ],
)
def test_simulate_messages_name_flags_and_fixes_that_work(tmp_path, capsys, extra, said, not_said):
    argv = ["--wd", "1e-3", "--steps", "2000", "--quiet", "--no-figure", "--out", tmp_path / "o"]
    code, _, err = _simulate_cli([*argv, *extra], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert said in line and not_said not in line, line
    assert not (tmp_path / "o").exists()


def test_a_max_rows_refusal_offers_fixes_that_are_taken(tmp_path, capsys):
    argv = ["--lr", "0.1", "--wd", "1e-3", "--steps", "2000", "--quiet", "--no-figure"]
    code, _, err = _simulate_cli([*argv, "--max-rows", "2", "--out", tmp_path / "a"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "keeps 2000 rows over --steps 2000, more than --max-rows 2" in line
    assert "pass --record-every 1000 or more, or --max-rows 2000 or more" in line
    assert "--record-every 1 " not in line and "or --record-every," not in line
    for fix in (["--max-rows", "2", "--record-every", "1000"], ["--max-rows", "2000"]):
        code, _, err = _simulate_cli([*argv, *fix, "--out", tmp_path / fix[-1]], capsys)
        assert code == 0, (fix, err)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--max-rows", "2"], "error: --max-rows must be >= 4"),
        (["--steps", "1e30"], "error: --steps must be at most 2**53"),
        (["--momentum", "1"], "error: --momentum must be in [0, 1)"),
    ],
)
def test_sweep_messages_name_flags(tmp_path, capsys, extra, said):
    code, _, err = _sweep_cli(["--out", tmp_path / "sw", "--quiet", *extra], capsys)
    assert code == 2 and said in _one_error_line(err)


def test_theory_names_the_schedule_steps_it_was_given(capsys):
    from siflow._theory_cli import main

    spec = "cosine:peak=0.5,steps=1e15"
    assert main(["--wd", "1e-3", "--schedule", spec]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--schedule '{spec}' has steps=1000000000000000" in line
    assert "--steps 1000000000000000" not in line
    assert main(["--wd", "1e-3", "--schedule", spec, "--steps", "1000"]) == 0  # the fix offered


def test_a_schedule_value_that_underflows_is_refused_as_such():
    from siflow.schedules import parse_schedule

    with pytest.raises(ValueError, match=r"gamma=1e-400 is below the smallest positive double"):
        parse_schedule("exp:peak=0.1,gamma=1e-400")
    with pytest.raises(ValueError, match=r"gamma=1e400 is beyond the largest double"):
        parse_schedule("exp:peak=0.1,gamma=1e400")


def test_overlay_refuses_an_empty_log_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _overlay_cli(["", "--lr", "0.1", "--wd", "1e-3"], capsys)
    assert code == 2
    assert "the log path is empty" in _one_error_line(err)
    assert not Path("runs").exists()


# --------------------------------------------------------------------------------------- 10
@pytest.mark.parametrize("length", [224, 240, 251])
def test_names_up_to_255_bytes_are_written_atomically(tmp_path, length):
    name = "f" * length + ".png"
    seen = []
    with atomic_path(tmp_path / name) as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"figure")
    assert (tmp_path / name).read_bytes() == b"figure"
    assert len(os.fsencode(seen[0])) <= 255 and seen[0].endswith(".siflow.tmp.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_long_temporary_left_by_a_killed_writer_is_still_recognised(tmp_path):
    stem, suffix = _fileio._temporary_stem_and_suffix("f" * 251 + ".npz")
    name = f".{stem}.{2**22 + 12345}-abcdefgh.siflow.tmp{suffix}"
    assert _fileio._TMP_RE.match(name) and len(name) <= 255


def test_a_failed_rename_names_the_output_not_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"

    def fail(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError) as info, atomic_write(target) as fh:
        fh.write("{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert not list(tmp_path.iterdir())


def test_a_default_overlay_folder_whose_writes_failed_is_given_back(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = _burst_log(tmp_path / "log.csv", 3000)

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_fileio, "atomic_write", full)
    code, _, err = _overlay_cli([log, "--no-figure"], capsys)
    assert code == 2 and "No space left on device" in _one_error_line(err)
    assert list((tmp_path / "runs" / "overlay").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    code, out, _ = _overlay_cli([log, "--no-figure"], capsys)
    assert code == 0 and "runs/overlay/log/summary.json" in out
