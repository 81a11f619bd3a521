"""python -m siflow.overlay: table, JSON, outputs under runs/ (never next to the log), one-line
errors, optimizer and schedule flags, library messages translated to flags."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow._overlay_cli import main
from siflow.trajectory import Trajectory

LR, WD = 0.1, 5e-3
ROOT = Path(__file__).resolve().parents[1]
#: subprocesses run elsewhere than the checkout must still import this checkout's siflow
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _burst_map(n=20000):
    """Exact SGD+WD norm recursion with 20-step gradient bursts below rho^2 = 1."""
    q2 = (1 - LR * WD) ** 2
    r2 = np.empty(n)
    x, left, ev = 4.0, 0, []
    for t in range(n):
        r2[t] = x
        if left == 0 and x < 1.0:
            ev.append(t)
            left = 20
        g = 3.0 if left else 0.0
        left = max(left - 1, 0)
        x = q2 * x + LR**2 * g**2 / x
    loss = np.where(np.isin(np.arange(n) % 10**9, ev), 1.0, 0.01)
    return np.sqrt(r2), loss, np.asarray(ev)


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch):
    """Default outputs go under ./runs: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def logs(tmp_path):
    rho, loss, ev = _burst_map()
    step = np.arange(rho.size)
    siflow_log = Trajectory(step=step, rho=rho, loss=loss, meta={"lr": LR, "wd": WD}).save(
        tmp_path / "run.csv"
    )
    plain = tmp_path / "plain.csv"
    with open(plain, "w") as fh:
        fh.write("iteration,L,wn\n")
        for s, a, b in zip(step, loss, rho, strict=True):
            fh.write(f"{s},{float(a)!r},{float(b)!r}\n")
    return siflow_log, plain, ev


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_and_default_outputs_under_runs(logs, capsys, tmp_path, monkeypatch):
    log, _, ev = logs
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in log.parent.iterdir())
    code, out, err = _run([log], capsys)
    assert code == 0, err
    assert "regime: periodic" in out
    period = float(np.median(np.diff(ev)))
    assert f"{period:.6g}" in out.split("period median (steps)")[1].split("\n")[0]
    # nothing next to the log; figure and summary under runs/overlay/<log stem>/
    assert sorted(p.name for p in log.parent.iterdir()) == before
    fig = Path("runs/overlay/run/overlay.png")
    assert (work / fig).read_bytes()[:4] == b"\x89PNG"
    assert f"figure: {fig}" in out
    summary = json.loads((work / "runs/overlay/run/summary.json").read_text())
    assert summary["periods"] == np.diff(ev).astype(float).tolist()  # whole list in the file
    assert "summary: runs/overlay/run/summary.json" in out
    # the formulas of the optimizer's theory are printed
    assert "2(1 - lr wd)/S" in out or "cos Delta* = 1 - lr wd" in out


def test_json_output(logs, capsys, tmp_path):
    log, _, ev = logs
    out_fig = tmp_path / "f.svg"
    code, out, err = _run([log, "--json", "--out", out_fig, "--predict-wd", 2.5e-3], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["n_events"] == len(ev)
    assert d["periods"] == np.diff(ev).astype(float).tolist()
    assert d["decay_rate_predicted"] == pytest.approx(-math.log1p(-LR * WD), rel=1e-14)
    want = d["period_median"] * math.log1p(-LR * WD) / math.log1p(-LR * 2.5e-3)
    assert d["predicted_period_at"] == pytest.approx(want, rel=1e-12)
    assert d["figure"] == str(out_fig) and out_fig.read_bytes().startswith(b"<?xml")


def test_plain_csv_needs_lr_wd(logs, capsys, tmp_path):
    _, plain, ev = logs
    maps = ["--map", "step=iteration", "--map", "rho=wn", "--map", "loss=L"]
    code, out, err = _run([plain, "--map", "step=iteration"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--map rho=" in err
    code, out, err = _run([plain, *maps, "--wd", WD], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--lr" in err and "--wd" not in err
    assert not (tmp_path / "plain_overlay.png").exists()
    code, out, err = _run([plain, *maps, "--lr", LR, "--wd", WD, "--no-figure", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_events"] == len(ev)
    assert not (tmp_path / "plain_overlay.png").exists()


def test_missing_columns_name_the_map(tmp_path, capsys):
    log = tmp_path / "acc.csv"
    log.write_text("step,acc\n" + "".join(f"{i},0.5\n" for i in range(50)))
    code, out, err = _run([log, "--lr", LR, "--wd", WD], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--map" in err
    assert [p.name for p in tmp_path.iterdir()] == ["acc.csv"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--out", "fig.jpg"], ".png"),
        (["--out", "no/such/dir/f.png"], "does not exist"),
        (["--lr", "-1"], "lr"),
        (["--momentum", "1.5"], "momentum"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_arguments_one_line_exit_2(logs, capsys, tmp_path, monkeypatch, extra, needle):
    log, _, _ = logs
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) if extra == ["--bogus"] else _nullctx():
        code, out, err = _run([log, *extra], capsys)
        assert code == 2
        assert err.count("\n") == 1 and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_log(tmp_path, capsys):
    code, _, err = _run([tmp_path / "nope.csv"], capsys)
    assert code == 2 and "no such log" in err


def test_module_entry_point(logs, tmp_path):
    log, _, ev = logs
    proc = subprocess.run(
        [sys.executable, "-m", "siflow.overlay", str(log), "--json", "--no-figure"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_events"] == len(ev)
    assert "summary: runs/overlay/run/summary.json" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "siflow.overlay", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=ENV,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_group_picks_one_layer_of_a_per_layer_log(tmp_path, capsys):
    rho, loss, ev = _burst_map()
    log = tmp_path / "layers.csv"
    with open(log, "w") as fh:
        fh.write("step,loss,norm/conv1,norm/conv2\n")
        for s, (a, b) in enumerate(zip(loss, rho, strict=True)):
            # conv2 carries the periodic norm; conv1 is a constant group
            fh.write(f"{s},{float(a)!r},1.0,{float(b)!r}\n")
    code, out, err = _run(
        [log, "--lr", LR, "--wd", WD, "--group", "conv2", "--json", "--no-figure"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["n_events"] == len(ev)
    assert result["period_median"] == pytest.approx(float(np.median(np.diff(ev))), rel=0.02)
    code, out, err = _run([log, "--lr", LR, "--wd", WD, "--no-figure"], capsys)
    assert code == 2 and "group" in err and len(err.strip().splitlines()) == 1
