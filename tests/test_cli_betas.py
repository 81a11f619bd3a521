"""``--betas``: one form for every CLI (``B1,B2``, or ``B1 B2``), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from siflow import theory
from siflow._cli import CLIError, parse_betas
from siflow.trajectory import Trajectory


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("given", "want"),
    [("0.8,0.95", (0.8, 0.95)), (["0.8,0.95"], (0.8, 0.95)), (["0.8", "0.95"], (0.8, 0.95))],
)
def test_parse_betas_forms(given, want):
    assert parse_betas(given) == want


@pytest.mark.parametrize(
    "given", ["0.9", ["0.9", "0.99", "0.9"], ["0.9,0.99", "0.9"], "a,b", "0.9,,0.99", ["0.9,"]]
)
def test_parse_betas_rejects(given):
    with pytest.raises(CLIError, match="--betas 0.9,0.999"):
        parse_betas(given)


def test_theory_cli_reads_both_forms_as_the_library():
    want = theory.lion_equilibrium_norm(1e-3, 0.1, 64, 0.8, 0.95)
    base = ["siflow.theory", "--lr", "1e-3", "--wd", "0.1", "--optimizer", "lion"]
    base += ["--n-params", "64", "--json"]
    for form in (["0.8,0.95"], ["0.8", "0.95"]):
        proc = _run(*base, "--betas", *form)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["norm"] == pytest.approx(want, rel=1e-12)
    default = json.loads(_run(*base).stdout)["norm"]
    assert default == pytest.approx(theory.lion_equilibrium_norm(1e-3, 0.1, 64, 0.9, 0.99))


def test_overlay_cli_reads_both_forms(tmp_path):
    t = np.arange(400)
    traj = Trajectory(
        step=t,
        rho=1 + 0.1 * np.exp(-t / 50),
        angular_update=np.full(t.size, 0.01),
        meta={"lr": 1e-3, "wd": 0.1, "optimizer": "Lion"},
    )
    log = tmp_path / "log.npz"
    traj.save(log)
    for i, form in enumerate((["0.8,0.95"], ["0.8", "0.95"])):
        proc = _run(
            "siflow.overlay", str(log), "--json", "--out", str(tmp_path / f"o{i}"), "--betas", *form
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["betas"] == [0.8, 0.95]


@pytest.mark.parametrize(
    "cmd",
    [
        ["siflow.theory", "--lr", "1e-3", "--wd", "0.1", "--optimizer", "adamw"],
        [
            "siflow.simulate",
            "--lr",
            "0.1",
            "--wd",
            "1e-3",
            "--optimizer",
            "adamw",
            "--steps",
            "10",
            "OUT",
        ],
        ["siflow.overlay", "LOG"],
    ],
)
@pytest.mark.parametrize("bad", [["0.9"], ["0.9", "0.99", "0.9"], ["x,0.9"]])
def test_bad_betas_one_line_exit_2(cmd, bad, tmp_path):
    if "OUT" in cmd:
        cmd = [c for c in cmd if c != "OUT"] + ["--out", str(tmp_path / "o")]
    if "LOG" in cmd:
        log = tmp_path / "log.npz"
        Trajectory(step=np.arange(10), rho=np.ones(10), meta={"lr": 0.1, "wd": 0.1}).save(log)
        cmd = [str(log) if c == "LOG" else c for c in cmd] + ["--out", str(tmp_path / "o")]
    proc = _run(*cmd, "--betas", *bad)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--betas 0.9,0.999" in proc.stderr
    assert not (tmp_path / "o").exists()
