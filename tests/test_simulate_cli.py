"""``python -m siflow.simulate``: the default run, JSON summary, bad options, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siflow import theory
from siflow._simulate_cli import main, run_name
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
# the subprocesses run from a temporary directory: import this checkout's siflow
ENV = dict(
    os.environ,
    MPLBACKEND="Agg",
    OMP_NUM_THREADS="1",
    OPENBLAS_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
)


def _run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "siflow.simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )


def test_default_command_reports_periods_and_writes_outputs(tmp_path):
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    summary = json.loads(proc.stdout)
    for key in ("periods", "period_median", "events", "equilibrium", "elr_at_events"):
        assert key in summary, key
    assert len(summary["periods"]) >= 3
    assert summary["period_median"] == pytest.approx(np.median(summary["periods"]))
    # default out directory is runs/<name> under the working directory
    out = tmp_path / "runs" / "logistic-sgd-lr0.1-wd0.001-s0"
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.status == "ok" and traj.meta["source"] == "siflow.simulate"
    assert (out / "figure.png").stat().st_size > 10_000
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # equilibrium from siflow.theory; the threshold from the toy's sharpness at its minimum
    assert summary["equilibrium"]["angular_update"] == pytest.approx(
        float(theory.sgd_equilibrium_angle(0.1, 1e-3)), rel=1e-12
    )
    thr = float(theory.stability_threshold_elr(0.1, 1e-3, summary["sharpness_min"]))
    assert summary["elr_threshold"] == pytest.approx(thr, rel=1e-12)
    elr = [e for e in summary["elr_at_events"] if e is not None]
    assert len(elr) >= 3 and all(1.0 < e / thr < 1.2 for e in elr)
    # the decay between events is the zero-gradient law -ln(1 - lr wd)
    assert summary["decay_rate"]["measured"] == pytest.approx(-np.log1p(-1e-4), rel=1e-3)


def test_table_output(tmp_path):
    proc = _run(
        "--lr", "0.1", "--wd", "0.01", "--loss", "rayleigh", "--steps", "3000", "--quiet",
        "--out", str(tmp_path / "o"), "--no-figure",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "equilibrium predicted by siflow.theory" in proc.stdout
    assert "norm decay rate" in proc.stdout
    assert (tmp_path / "o" / "trajectory.npz").exists()
    assert not (tmp_path / "o" / "figure.png").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--steps", "-5"], "--steps must be >= 1"),
        (["--loss", "nope"], "unknown loss 'nope'"),
        (["--optimizer", "adam"], "unknown optimizer 'adam'"),
        (["--lr", "10", "--wd", "0.2"], "lr*wd must be < 1"),
        (["--momentum", "1.5"], "momentum must be in"),
        (["--loss", "rayleigh", "--batch", "4"], "--batch applies to data toys"),
        (["--steps", "ten"], "'ten' is not a whole number"),
    ],
)
def test_bad_options_one_line_exit_2(args, match, tmp_path, capsys):
    argv = ["--lr", "0.1", "--wd", "1e-3", "--out", str(tmp_path / "x"), *args]
    # later flags win in argparse, so the bad value overrides the good default above
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists(), "bad options must not create the output directory"


def test_unwritable_out_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--steps", "10", "--out", str(blocker / "sub"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "error" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--steps", "10", "--out", str(blocker))
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_missing_lr_is_one_line():
    proc = _run("--wd", "1e-3")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--lr" in proc.stderr


def test_run_name_from_options():
    class A:
        loss, optimizer, lr, wd, momentum, batch, noise = "logistic", "sgd", 0.1, 1e-3, 0.9, 8, 0.0
        dim, rho0, steps, seed = 12, None, 1000, 3

    assert run_name(A()) == "logistic-sgd-lr0.1-wd0.001-mom0.9-b8-d12-n1000-s3"


def test_loss_options_reach_the_toy(tmp_path, capsys):
    out = tmp_path / "q"
    argv = [
        "--lr", "0.1", "--wd", "0.01", "--loss", "rayleigh", "--steps", "500", "--quiet",
        "--no-figure", "--out", str(out), "--loss-option", "quartic=2",
        "--loss-option", "spectrum=[0, 0.5, 2]",
    ]  # fmt: skip
    assert main(argv) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.meta["loss_options"] == {"spectrum": [0.0, 0.5, 2.0], "quartic": 2.0}
    assert traj.meta["sharpness_min"] == 2.0 and traj.meta["dim"] == 3
    capsys.readouterr()
    assert main(["--lr", "0.1", "--wd", "0.01", "--loss-option", "nokey"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_diverged_and_wd_zero_runs_are_reported_not_errors(tmp_path, capsys):
    out = tmp_path / "div"
    argv = ["--loss", "rayleigh", "--lr", "1e200", "--wd", "0", "--rho0", "1e-149", "--quiet"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "diverged" and summary["steps_done"] == 0
    assert summary["periods"] == [] and summary["regime"] == "diverged"
    assert Trajectory.load(out / "trajectory.npz").status == "diverged"
    assert not (out / "figure.png").exists()
    out = tmp_path / "wd0"
    argv = ["--loss", "rayleigh", "--lr", "0.1", "--wd", "0", "--steps", "500", "--quiet"]
    assert main([*argv, "--out", str(out), "--no-figure"]) == 0
    assert "no weight decay" in capsys.readouterr().out


def test_nesterov_equilibrium_uses_the_nesterov_closed_form(tmp_path, capsys):
    argv = ["--lr", "0.1", "--wd", "1e-3", "--optimizer", "nesterov", "--momentum", "0.9"]
    argv += ["--steps", "2000", "--quiet", "--no-figure", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    eq = json.loads(capsys.readouterr().out)["equilibrium"]
    expect = float(theory.sgdm_equilibrium_angle(0.1, 1e-3, 0.9, nesterov=True))
    assert eq["angular_update"] == pytest.approx(expect, rel=1e-12)
    assert eq["angular_update"] != pytest.approx(
        float(theory.sgdm_equilibrium_angle(0.1, 1e-3, 0.9)), rel=1e-3
    )


def test_sigint_leaves_readable_trajectory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "siflow.simulate", "--lr", "0.1", "--wd", "1e-3",
            "--steps", "200000000", "--quiet", "--out", str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )  # fmt: skip
    path = out / "trajectory.npz"
    try:
        deadline = time.monotonic() + 240
        while not path.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    traj = Trajectory.load(path)
    assert traj.status == "interrupted"
    assert 0 < traj.meta["steps_done"] < 200_000_000
    # the record is thinned to every k-th step for such a long run
    k = traj.meta["record_every"]
    assert k == 400
    assert traj.meta["steps_done"] - k <= traj.step[-1] < traj.meta["steps_done"]


# ------------------------------------------------------------------ simulate's CLI refusals
def test_wd_zero_notes_do_not_ask_for_the_wd_the_run_lacks(tmp_path, capsys):
    argv = ["--loss", "rayleigh", "--lr", "0.1", "--wd", "0", "--steps", "500", "--quiet"]
    assert main([*argv, "--out", str(tmp_path), "--no-figure", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert "wd = 0: no weight decay, so no theory predictions" in notes
    # the overlay's notes asked for a wd (as Python writes it: "pass wd=")
    assert not [n for n in notes if "wd=" in n or "lr and wd" in n], notes


def test_a_rerun_without_figure_removes_the_earlier_runs_figure(tmp_path, capsys):
    argv = ["--lr", "0.1", "--wd", "1e-3", "--steps", "3000", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0 and (tmp_path / "figure.png").is_file()
    assert main([*argv, "--no-figure", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert not (tmp_path / "figure.png").exists() and "figure" not in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "trajectory.npz"]


def test_a_long_run_for_its_sharpness_says_so():
    from types import SimpleNamespace

    from siflow import simulate as S
    from siflow._simulate_cli import _announcement
    from siflow.losses import make_loss

    est = S.estimate("rayleigh", steps=10, dim=3000, sharpness=True)
    # 10 kept rows, each a dense eigenproblem costed at 5e-10 dim^3 seconds
    assert est["sharpness_seconds"] == pytest.approx(10 * 5e-10 * 3000.0**3, rel=1e-12)
    args = SimpleNamespace(steps=10)
    line = _announcement(args, make_loss("rayleigh", dim=3000), est)
    assert "mostly the sharpness" in line and "drop --sharpness" in line
    assert "pass fewer --steps" not in line


def test_a_spectrum_sets_the_dim_and_a_different_dim_is_refused(tmp_path, capsys):
    argv = ["--lr", "0.1", "--wd", "1e-3", "--loss", "rayleigh", "--steps", "200"]
    argv += ["--loss-option", "spectrum=[0,1,4]", "--quiet", "--no-figure", "--json"]
    assert main([*argv, "--dim", "3", "--out", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["dim"] == 3 and summary["sharpness_min"] == 4.0
    # --dim 5 ran in dim 3 under a directory named d5, and sharpness=3 was ignored
    assert main([*argv, "--dim", "5", "--out", str(tmp_path / "b")]) == 2
    assert "--dim 5 does not match the spectrum's 3 eigenvalues" in capsys.readouterr().err
    assert main([*argv, "--loss-option", "sharpness=3", "--out", str(tmp_path / "c")]) == 2
    assert "--loss-option sharpness=3 has no effect" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_schedule_that_ends_with_the_run_is_run_and_compared_at_its_last_lr(tmp_path, capsys):
    # cosine:steps=200 over 200 steps: lr at step 199 is 0.05 (1 + cos(199 pi / 200)) > 0
    argv = ["--lr", "0.1", "--wd", "1e-3", "--steps", "200", "--schedule", "cosine:steps=200"]
    assert main([*argv, "--quiet", "--no-figure", "--json", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    lr_end = 0.05 * (1 + np.cos(199 * np.pi / 200))
    traj = Trajectory.load(tmp_path / "trajectory.npz")
    assert traj.extra["lr"][-1] == pytest.approx(lr_end, rel=1e-12)
    assert summary["equilibrium"]["decay_factor"] == pytest.approx(1 - lr_end * 1e-3, rel=1e-12)
    # one step shorter, the schedule holds lr = 0 at the last step: refused before the run
    assert main([*argv[:-1], "cosine:steps=199", "--quiet", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "reaches lr = 0 at step 199" in err and not (tmp_path / "b").exists()
