"""``python -m siflow``: the command list, and ``python -m siflow COMMAND`` as a front door."""

from __future__ import annotations

import subprocess
import sys

from siflow.__main__ import COMMANDS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False, timeout=300
    )


def test_the_package_lists_every_command_module():
    out = _run("siflow")
    assert out.returncode == 0 and out.stderr == ""
    for name in COMMANDS:
        assert f"  {name} " in out.stdout
        assert _run(f"siflow.{name}", "--help").returncode == 0  # each is a real command


def test_a_command_through_the_package_is_the_command_itself():
    args = ["theory", "--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1", "--json"]
    front, direct = _run("siflow", *args), _run(f"siflow.{args[0]}", *args[1:])
    assert front.returncode == direct.returncode == 0
    assert front.stdout == direct.stdout
    bad = _run("siflow", "theory", "--lr", "-1", "--wd", "1e-3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "lr" in bad.stderr


def test_an_unknown_command_is_one_line_naming_the_commands():
    out = _run("siflow", "simulat")
    assert out.returncode == 2 and out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line and "'simulat'" in line and "simulate" in line
