"""``python -m siflow.theory``: table, JSON and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from siflow._theory_cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siflow.theory", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_output_has_equilibrium_keys_and_reference_values() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert list(values) == [
        "lr", "wd", "momentum", "grad_norm", "norm", "norm_first_order", "elr",
        "elr_first_order", "angular_update", "angular_update_first_order", "relaxation_time",
        "relaxation_time_first_order", "elr_doubling_time", "decay_factor", "decay_rate",
        "optimizer",
    ]  # fmt: skip
    # worked numbers of the theory reference (eta = 0.1, lambda = 1e-3, G = 1)
    assert values["norm"] == pytest.approx(2.6591811889, abs=1e-10)
    assert values["norm_first_order"] == pytest.approx(2.6591479485, abs=1e-10)
    assert values["elr"] == pytest.approx(0.0141417821, abs=1e-10)
    assert values["angular_update"] == pytest.approx(0.0141422535, abs=1e-10)
    assert values["elr_doubling_time"] == pytest.approx(3465.6, abs=0.05)
    assert values["relaxation_time_first_order"] == pytest.approx(2500.0, rel=1e-12)
    assert values["decay_factor"] == pytest.approx(0.9999, rel=1e-15)


def test_json_with_momentum() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--momentum", "0.9", "--json")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["momentum"] == 0.9
    assert values["norm"] == pytest.approx(4.7287392, abs=1e-7)
    assert values["angular_update_first_order"] == pytest.approx(0.0102597835, abs=1e-10)


def test_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1"]) == 0
    out = capsys.readouterr().out
    for label in (
        "equilibrium norm",
        "effective LR",
        "angular update",
        "relaxation time",
        "ELR doubling time",
    ):
        assert label in out
    assert "2.659181189" in out and "2.659147948" in out
    assert "exact" in out and "first order" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "-1", "--wd", "1e-3"], "lr"),
        (["--lr", "0.1", "--wd", "0"], "wd"),
        (["--lr", "10", "--wd", "0.5"], "lr*wd"),
        (["--lr", "0.1", "--wd", "1e-3", "--momentum", "1.5"], "momentum"),
        (["--lr", "0.1", "--wd", "1e-3", "--grad-norm", "nan"], "grad_norm"),
        (["--lr", "abc", "--wd", "1e-3"], "--lr"),
        (["--wd", "1e-3"], "--lr"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]
