"""python -m siflow.overlay on the seed paper's genuine files: the reader's notes under
the table, ``--evaluation`` for ``test-em.npz`` (refused in one line without it), and a
log timed in epochs labelled in epochs wherever a time is printed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import io as sio
from siflow._overlay_cli import to_flags
from siflow.overlay import analyze, draw

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
EXP = (
    ROOT / "tests" / "data" / "peer-logs" / "seed" / "Experiments"
    / "ConvNetSI_CIFAR10_noninvlr_0.0" / "info"
    / "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch300_noschinitscale10.0_noaug_fbgd"
)  # fmt: skip
REQ = ROOT / "tests" / "data" / "peer-logs" / "req" / "adamw" / "dynamics.pkl"


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "siflow.overlay", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=120,
    )


def test_evaluation_log_is_refused_in_one_line_naming_the_flag(tmp_path):
    out = _cli(EXP / "test-em.npz", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "evaluation log" in lines[0] and "--evaluation" in lines[0]
    assert "evaluation=True" not in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing written
    # --evaluation on a format without evaluation logs: one line too
    out = _cli(REQ, "--evaluation", "--lr", "1e-2", "--wd", "0.1", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--evaluation does not apply" in out.stderr


def test_evaluation_flag_reads_it_and_prints_the_reader_notes(tmp_path):
    out = _cli(EXP / "test-em.npz", "--evaluation", "--no-figure", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    want = sio.read(EXP / "test-em.npz", evaluation=True).meta["notes"]
    assert any("evaluation log (test set, eval mode)" in n for n in want)
    reader = [ln[len("reader: ") :] for ln in out.stdout.splitlines() if ln.startswith("reader: ")]
    assert reader == [to_flags(n) for n in want]
    summary = json.loads((tmp_path / "runs" / "overlay" / "test-em" / "summary.json").read_text())
    assert summary["reader_notes"] == want


def test_training_log_reader_notes_under_the_table_with_flags(tmp_path):
    out = _cli(EXP / "train-tm.npz", "--no-figure", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    reader = [i for i, ln in enumerate(lines) if ln.startswith("reader: ")]
    assert reader and reader[0] > max(i for i, ln in enumerate(lines) if ln.startswith("note: "))
    gnorm = lines[reader[0]]
    assert "gnorm_m" in gnorm and "--map grad_norm_raw=gnorm_m" in gnorm and "mapping=" not in gnorm


def test_library_parameters_of_the_readers_become_flags():
    assert to_flags("or pass evaluation=True to read it") == "or pass --evaluation to read it"
    assert to_flags("evaluation= does not apply to fmt='req' logs") == (
        "--evaluation does not apply to fmt='req' logs"
    )
    assert to_flags("pass the log file itself or fmt= one of siflow, csv") == (
        "pass the log file itself or --fmt one of siflow, csv"
    )
    assert to_flags("name the run with run=") == "name the run with --run"
    assert to_flags("pass mapping={'grad_norm_raw': 'gnorm_m'} to use it") == (
        "pass --map grad_norm_raw=gnorm_m to use it"
    )
    assert to_flags('name it with mapping={"rho": COLUMN})') == "name it with --map rho=<column>)"
    assert to_flags("pass steps_per_epoch= to convert") == "pass --steps-per-epoch to convert"


@pytest.fixture()
def seed_in_epochs(tmp_path):
    """The genuine train-tm.npz outside its experiment folder: steps per epoch unknown."""
    path = tmp_path / "log" / "train-tm.npz"
    path.parent.mkdir()
    shutil.copy(EXP / "train-tm.npz", path)
    return path


def test_seed_log_in_epochs_says_epochs_everywhere(seed_in_epochs, tmp_path):
    traj = sio.read(seed_in_epochs, lr=1.0, wd=0.01)
    assert traj.meta["time_unit"] == "epoch"
    # the time axis is epochs completed: report_epochs + 1, read from the file
    with np.load(seed_in_epochs) as raw:
        np.testing.assert_array_equal(traj.step, raw["report_epochs"] + 1)
    out = _cli(seed_in_epochs, "--lr", "1", "--wd", "0.01", "--no-figure", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for label in (
        "stationary part: epochs ",
        "periods (epochs): ",
        "period median (epochs)",
        "norm decay rate (1/epoch)",
        "rise to peak (epochs, median)",
    ):
        assert label in text, label
    table = text.split("\nformulas:")[0]
    assert "(steps" not in table and "1/step)" not in table and ": steps " not in table
    assert "the log's time axis is epochs" in text and "--steps-per-epoch" in text
    summary = json.loads((tmp_path / "runs" / "overlay" / "train-tm" / "summary.json").read_text())
    assert summary["time_unit"] == "epoch"
    # per-step laws are not compared with per-epoch measurements
    assert summary["decay_rate_predicted"] is None and summary["predicted_period"] is None
    assert summary["decay_rate_measured"] is not None
    # event times and periods are in epochs, as the file's own axis
    assert set(summary["event_steps"]) <= set(int(s) for s in traj.step)


def test_seed_log_in_epochs_figure_axis(seed_in_epochs):
    traj = sio.read(seed_in_epochs, lr=1.0, wd=0.01)
    res = analyze(traj)
    fig = draw(traj, res, None)
    assert fig.axes[len(fig.axes) - 1].get_xlabel() in ("epoch", "epoch (close-up)")
    assert "epoch" in [ax.get_xlabel() for ax in fig.axes]
    # the same file in its experiment folder (full batch: 1 step per epoch) is in steps
    steps = sio.read(EXP / "train-tm.npz")
    res_steps = analyze(steps)
    assert res_steps.time_unit == "step" and res_steps.decay_rate_predicted is not None
    fig = draw(steps, res_steps, None)
    assert "optimizer step" in [ax.get_xlabel() for ax in fig.axes]
