"""``python -m siflow.simulate``: refusals before anything is written, the theory of the
optimizer that ran, summarised lists, schedules, numbers at the edges."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import _simulate_cli as C
from siflow import theory
from siflow._simulate_cli import main
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


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "siflow.simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--steps", "1000000000000", "--record-every", "1"], "--record-every"),
        (["--dim", "1000000000"], "--dim"),
        (["--loss", "rayleigh", "--dim", "100000", "--sharpness"], "sharpness"),
        (["--wd", "1e-400"], "1e-400 is below the smallest positive double"),
    ],
)
def test_runs_that_cannot_fit_are_refused_in_one_line_and_write_nothing(tmp_path, args, needle):
    base = ["--lr", "0.1"] + ([] if "--wd" in args else ["--wd", "1e-3"])
    out = tmp_path / "out"
    proc = _run(*base, *args, "--out", str(out), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_library_parameters_are_translated_to_flags(tmp_path):
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--steps", "5000", "--record-every", "1",
                "--max-rows", "100", "--out", str(tmp_path / "o"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "--max-rows" in proc.stderr and "--record-every 50" in proc.stderr
    assert "max_rows=" not in proc.stderr and "record_every=" not in proc.stderr


def test_long_runs_are_announced(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(C, "ANNOUNCE_SECONDS", 0.0)
    args = ["--lr", "0.1", "--wd", "1e-3", "--steps", "3000", "--quiet", "--no-figure"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "should take about" in err and "pass fewer --steps" in err


def test_adamw_run_is_never_compared_with_sgd_forms(tmp_path, capsys):
    args = ["--lr", "0.01", "--wd", "0.1", "--optimizer", "adamw", "--steps", "20000"]
    assert main([*args, "--quiet", "--no-figure", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    eq = summary["equilibrium"]
    assert eq["norm"] == pytest.approx(float(theory.adamw_equilibrium_norm(0.01, 0.1, 10)))
    assert eq["angular_update"] == pytest.approx(float(theory.adamw_equilibrium_angle(0.01, 0.1)))
    assert "elr" not in eq and "elr" in summary["not_applicable"]
    # rho^2 relaxes by (1 - lr wd)^2 per step under decoupled decay: tau = -1/(2 ln 0.999)
    assert eq["relaxation_time"] == pytest.approx(-1.0 / (2.0 * math.log(0.999)), rel=1e-12)
    assert summary["threshold"]["value"] is None and summary["elr_threshold"] is None
    ov = summary["overlay"]
    assert ov["norm_predicted"] == pytest.approx(eq["norm"])
    assert ov["predicted_period"] is None and ov["critical_norm"] is None
    assert "(1 - lr wd)/S" not in text and "SGD/heavy-ball closed forms" not in text
    assert "AdamW" in text


def test_momentum_threshold_prints_the_formula_used(tmp_path, capsys):
    args = ["--lr", "0.1", "--wd", "1e-3", "--momentum", "0.9", "--steps", "60000"]
    assert main([*args, "--quiet", "--no-figure", "--out", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    s = summary["sharpness_min"]
    assert summary["threshold"]["formula"] == "2(1 + mu - lr wd)/S"
    assert summary["threshold"]["value"] == pytest.approx(2 * (1 + 0.9 - 1e-4) / s, rel=1e-12)
    if summary["elr_at_events_summary"]["count"]:
        assert "2(1 + mu - lr wd)/S =" in text


def test_long_lists_are_summarised_on_screen_and_kept_whole_in_json(tmp_path, capsys):
    args = ["--lr", "0.1", "--wd", "1e-3", "--steps", "200000", "--quiet", "--no-figure"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    periods = summary["periods"]
    assert len(periods) > 20
    line = next(ln for ln in text.splitlines() if ln.startswith("periods:"))
    assert f"count {len(periods)}" in line and len(line) < 160
    q1, med, q3 = np.percentile(periods, [25, 50, 75])
    assert f"median {med:.6g}" in line and f"{q1:.6g} to {q3:.6g}" in line
    assert summary["period_summary"]["count"] == len(periods)
    assert max(len(ln) for ln in text.splitlines()) < 400


def test_schedule_flags_reach_the_run(tmp_path, capsys):
    spec = "cosine:warmup=100,min=0.01,steps=4000"
    args = ["--lr", "0.2", "--wd", "1e-3", "--steps", "4000", "--schedule", spec]
    assert main([*args, "--quiet", "--no-figure", "--out", str(tmp_path / "s")]) == 0
    traj = Trajectory.load(tmp_path / "s" / "trajectory.npz")
    from siflow.schedules import parse_schedule

    want = parse_schedule(spec, base=0.2).values(4000)
    assert np.array_equal(traj.extra["lr"], want)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["config"]["lr_schedule"].startswith("cosine:peak=0.2")
    assert "last step's lr" in capsys.readouterr().out


def test_tiny_lr_wd_prints_no_negative_infinity(tmp_path):
    proc = _run("--lr", "1e-300", "--wd", "1e-300", "--steps", "500", "--no-figure",
                "--quiet", "--out", str(tmp_path / "t"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "-inf" not in proc.stdout and "Warning" not in proc.stderr
    assert "lr*wd underflows to 0" in proc.stdout


def test_table_helpers_keep_columns_apart_and_translate_parameters():
    from siflow._cli import format_list_summary, format_rows, translate_params

    text = format_rows(["q", "a", "b"], [["x", 1e300, -2.5e-300], ["longer name", None, np.inf]])
    rows = [ln.split() for ln in text.splitlines()]
    assert rows[1] == ["x", "1e+300", "-2.5e-300"]
    assert rows[2] == ["longer", "name", "n/a", "inf"]
    msg = translate_params(
        "pass record_every=50 or more, or a larger max_rows=; dim=3 is fine",
        {"record_every": "--record-every", "max_rows": "--max-rows", "dim": "--dim"},
    )
    assert msg == "pass --record-every 50 or more, or a larger --max-rows; --dim 3 is fine"
    assert format_list_summary([4.0, 1.0, 3.0, 2.0, 100.0], "steps") == (
        "count 5, median 3 steps, quartiles 2 to 4, range 1 to 100"
    )
    assert format_list_summary([]) == "none"
