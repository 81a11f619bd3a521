"""Every ``python -m siflow.X`` command has one shape: a hook that calls ``siflow._X_cli.main``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["simulate", "theory", "derive", "overlay", "sweep", "forecast"]


@pytest.mark.parametrize("name", COMMANDS)
def test_module_ends_in_the_one_hook_shape(name: str) -> None:
    text = (ROOT / "siflow" / f"{name}.py").read_text(encoding="utf-8").rstrip().splitlines()
    assert text[-4].startswith('if __name__ == "__main__":')
    assert text[-3].strip() == f"from siflow._{name}_cli import main as _main"
    assert text[-1].strip() == "raise SystemExit(_main())"
    assert (ROOT / "siflow" / f"_{name}_cli.py").is_file()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_0_and_bad_flag_is_one_line_exit_2(name: str) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", f"siflow.{name}", "--help"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "usage" in ok.stdout.lower()
    bad = subprocess.run(
        [sys.executable, "-m", f"siflow.{name}", "--no-such-flag"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
