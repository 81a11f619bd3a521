"""The README's two set-up commands and CI stay in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_starts_with_install_and_test_commands():
    run_cmd, test_cmd = _readme_commands()[:2]
    assert "python -m siflow.simulate" in run_cmd
    assert test_cmd.startswith("pip install") and "pytest" in test_cmd


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_ci_installs_nothing_but_the_torch_pin_and_the_readme_command():
    test_cmd = _readme_commands()[1]
    installs = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "pip install" in line and not line.strip().startswith("#")
    ]
    assert installs == ['python -m pip install -q "torch==2.13.0"', test_cmd]


def test_every_declared_test_dependency_is_checked_at_start_up():
    from conftest import declared_test_modules

    modules = declared_test_modules()
    for name in ("torch", "tensorboard", "distributed", "tqdm", "sklearn", "hypothesis"):
        assert name in modules
