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

from siflow import theory
from siflow._overlay_cli import main, to_flags
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
    # a figure path in --out writes that figure only
    assert "summary" not in d and not (tmp_path / "f.json").exists()
    assert not (tmp_path / "runs").exists()


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


def test_summary_lists_every_event_with_the_logged_values(logs, capsys):
    log, _, ev = logs
    rho, loss, _ = _burst_map()
    code, out, err = _run([log, "--no-figure"], capsys)
    assert code == 0, err
    e = json.loads(Path("runs/overlay/run/summary.json").read_text())["events"]
    assert e["steps"] == ev.tolist()
    # the values at the event rows and at the peaks, as logged
    assert e["rho_before"] == rho[ev].tolist()
    assert e["rho_after"] == rho[e["peak_steps"]].tolist()
    assert all(
        rho[p] == rho[a:b].max()
        for a, b, p in zip(ev, [*ev[1:], rho.size], e["peak_steps"], strict=True)
    )
    assert e["elr_before"] == pytest.approx((LR / rho[ev] ** 2).tolist(), rel=1e-15)
    assert e["loss_before"] == pytest.approx([0.01] * len(ev), rel=1e-12)


def test_predict_momentum_line_and_summary(logs, capsys):
    log, _, _ = logs
    code, out, err = _run([log, "--no-figure", "--predict-momentum", 0.9], capsys)
    assert code == 0, err
    d = json.loads(Path("runs/overlay/run/summary.json").read_text())
    assert (d["predict_lr"], d["predict_wd"], d["predict_momentum"]) == (LR, WD, 0.9)
    # the stationary cycle falls by as much as it jumps, T r = D: at momentum 0.9 the same
    # fall plus the threshold shift, at the heavy-ball decay rate (no residual push here:
    # the gradient is zero between bursts)
    c = 1.9 - LR * WD
    delta = -math.log((c + math.sqrt(c * c - 3.6)) / 2)
    want = (d["period_median"] * d["decay_rate_measured"] + 0.5 * math.log(c / (1 - LR * WD))) / (
        delta * (1 - (1 - d["decay_rate_measured"] / d["decay_rate_predicted"]))
    )
    assert d["predicted_period_at"] == pytest.approx(want, rel=1e-9)
    assert f"period at lr={LR:g}, wd={WD:g}, momentum=0.9: " in out
    assert "transfer_period" in d["predicted_period_method"]


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
        (["--predict-momentum", "1"], "--predict-momentum must be in [0, 1)"),
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


def test_long_lists_are_summarised_on_screen_and_whole_in_json(logs, capsys):
    log, _, ev = logs
    assert len(ev) > 9
    code, out, err = _run([log, "--no-figure"], capsys)
    assert code == 0, err
    periods = np.diff(ev).astype(float)
    q1, med, q3 = np.percentile(periods, [25, 50, 75])
    line = next(ln for ln in out.splitlines() if ln.startswith("periods (steps):"))
    assert line == (
        f"periods (steps): {periods.size} values: median {med:.6g}, quartiles {q1:.6g} .. "
        f"{q3:.6g}, range {periods.min():.6g} .. {periods.max():.6g}"
    )
    summary = json.loads(Path("runs/overlay/run/summary.json").read_text())
    assert summary["periods"] == periods.tolist()


def _two_group_adamw_log(path, lr=1e-2, wd=0.1, steps=60):
    """Per-group columns in the torch_probe naming; values only need to be plausible."""
    rng = np.random.default_rng(0)
    extra = {}
    for name, c in (("a", 300), ("b", 1200)):
        extra[f"rho/{name}"] = np.full(steps, math.sqrt(lr * c / (2 * wd))) * (
            1 + 0.01 * rng.standard_normal(steps)
        )
        extra[f"angular_update/{name}"] = np.full(steps, 0.01) * (
            1 + 0.1 * rng.standard_normal(steps)
        )
    rho = np.sqrt(extra["rho/a"] ** 2 + extra["rho/b"] ** 2)
    meta = {"lr": lr, "wd": wd, "optimizer": "AdamW"}
    return Trajectory(step=np.arange(steps), rho=rho, extra=extra, meta=meta).save(path)


def test_optimizer_adamw_with_group_sizes(tmp_path, capsys):
    log = _two_group_adamw_log(tmp_path / "adamw.npz")
    args = [log, "--optimizer", "adamw", "--group-size", "a=300", "--group-size", "b=1200"]
    code, out, err = _run([*args, "--json", "--no-figure"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["optimizer"] == "adamw" and d["lr_schedule"] is False
    want = theory.adamw_equilibrium_angle(1e-2, 0.1, 0.9)
    assert d["angular_update_predicted"] == pytest.approx(want, rel=1e-12)
    groups = {g["name"]: g for g in d["groups"]}
    assert groups["b"]["norm_predicted"] == pytest.approx(
        theory.adamw_equilibrium_norm(1e-2, 0.1, 1200, 0.9), rel=1e-12
    )
    assert d["n_params"] == 1500
    assert d["norm_replay_error_max"] is None and d["elr_threshold"] is None
    code, out, err = _run([*args, "--sharpness", "10", "--no-figure"], capsys)
    assert code == 0, err
    assert "optimizer=adamw" in out and "SI group" in out
    assert "cos Delta* = 1 - lr wd (1-b1)/(1 + b1 (1 - lr wd))" in out
    assert "threshold      n/a: no effective-LR stability threshold" in out
    # without sizes the norm is n/a and the note names the flag
    code, out, err = _run([log, "--optimizer", "adamw", "--no-figure"], capsys)
    assert code == 0, err
    assert "--n-params" in out and "n_params=" not in out


def test_schedule_flag_replays_an_exact_log(tmp_path, capsys):
    spec = "cosine:peak=0.2,warmup=50,min=0.01,steps=1500"
    from siflow.schedules import parse_schedule

    lr = parse_schedule(spec).values(1500)
    wd, g = 0.05, 0.7
    r2 = np.empty(1500)
    x = 9.0
    for t in range(1500):
        r2[t] = x
        x = (1 - lr[t] * wd) ** 2 * x + lr[t] ** 2 * g**2 / x
    log = Trajectory(step=np.arange(1500), rho=np.sqrt(r2), grad_norm_sphere=np.full(1500, g)).save(
        tmp_path / "sched.csv"
    )
    code, out, err = _run(
        [log, "--schedule", spec, "--wd", wd, "--json", "--out", tmp_path / "o"], capsys
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["lr_schedule"] is True and d["lr"] == 0.2
    assert d["norm_replay_error_max"] < 1e-12 and d["scale_invariance"] == "holds"
    assert (tmp_path / "o" / "summary.json").is_file() and (
        tmp_path / "o" / "overlay.png"
    ).is_file()
    code, out, err = _run([log, "--schedule", "wiggle:peak=1", "--wd", wd], capsys)
    assert code == 2 and "schedule" in err and err.count("\n") == 1


def test_library_parameters_become_flags():
    assert (
        to_flags("pass lr= and wd= (the log has neither)")
        == "pass --lr and --wd (the log has neither)"
    )
    assert (
        to_flags('name it with mapping={"grad_norm_sphere": COLUMN})')
        == "name it with --map grad_norm_sphere=<column>)"
    )
    assert to_flags("pass n_params=, or group_sizes= for the groups") == (
        "pass --n-params, or --group-size NAME=C for the groups"
    )
    assert to_flags("select the SI weights with group=") == "select the SI weights with --group"
    assert to_flags("lr must be > 0") == "lr must be > 0"  # lr may come from the log
    assert to_flags("predict_lr must be > 0") == "--predict-lr must be > 0"


def test_detector_parameters_pass_through(logs, capsys):
    log, _, ev = logs
    code, out, err = _run([log, "--detect", "signal=loss", "--json", "--no-figure"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["detection_signal"] == "loss"
    # a jump floor above every jump of the log: no events
    code, out, err = _run([log, "--detect", "min_rise=5", "--json", "--no-figure"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_events"] == 0
    code, out, err = _run([log, "--detect", "bogus=1"], capsys)
    assert code == 2 and "--detect" in err and err.count("\n") == 1
    code, out, err = _run([log, "--detect", "lr=1"], capsys)
    assert code == 2 and "--detect" in err


def test_tiny_lr_wd_is_analysed_without_division_by_zero(tmp_path):
    # lr*wd = 1e-17: the free-decay clock and the decay rate stay finite (no ZeroDivisionError)
    import subprocess
    import sys
    from pathlib import Path

    log = Path(__file__).resolve().parents[1] / "analysis" / "data" / "nn" / "convnet_gd_3.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "siflow.overlay", str(log), "--lr", "1e-8", "--wd", "1e-9",
         "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out["decay_rate_predicted"] == pytest.approx(1e-17, rel=1e-9)


def test_logs_of_the_same_name_get_their_own_default_outputs(logs, capsys, tmp_path):
    # peers' logs have fixed names (metrics.csv, train-tm.npz): a second run's output
    # must not replace the first's; the same log again reuses its directory
    log, _, _ = logs
    for k in (1, 2):
        (tmp_path / f"exp{k}").mkdir()
    first = (tmp_path / "exp1" / "run.csv").write_bytes(log.read_bytes())
    assert first > 0
    second = tmp_path / "exp2" / "run.csv"
    rho, loss, _ = _burst_map(6000)
    Trajectory(step=np.arange(rho.size), rho=rho, loss=loss, meta={"lr": LR, "wd": WD}).save(second)
    for path, where in ((tmp_path / "exp1" / "run.csv", "run"), (second, "run-2")):
        code, out, err = _run([path, "--no-figure"], capsys)
        assert code == 0, err
        assert f"summary: runs/overlay/{where}/summary.json" in out
    one = json.loads(Path("runs/overlay/run/summary.json").read_text())
    two = json.loads(Path("runs/overlay/run-2/summary.json").read_text())
    assert one["log"] == str((tmp_path / "exp1" / "run.csv").resolve())
    assert two["log"] == str(second.resolve()) and two["n_events"] < one["n_events"]
    code, out, err = _run([second, "--no-figure"], capsys)
    assert code == 0 and "summary: runs/overlay/run-2/summary.json" in out
    assert not Path("runs/overlay/run-3").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--wd", "-1e-3"], "wd must be > 0, got -0.001"),  # not "expected one argument"
        (["--predict-lr", "-2.5e-1"], "--predict-lr must be > 0, got -0.25"),
        (["--steps-per-epoch", "0"], "--steps-per-epoch must be a positive integer"),
        (["--map", "rho=nope"], "fix it with --map rho=<column>"),
        (["--fmt", "wandb"], "pass --fmt csv"),
    ],
)
def test_messages_name_the_flags(tmp_path, capsys, extra, needle):
    rho, loss, _ = _burst_map(300)
    log = tmp_path / "log.csv"
    rows = (f"{s},{float(a)!r},{float(b)!r}\n" for s, (a, b) in enumerate(np.c_[loss, rho]))
    log.write_text("step,loss,weight_norm\n" + "".join(rows))
    code, out, err = _run([log, "--lr", LR, *(["--wd", WD] if extra[0] != "--wd" else []),
                           *extra], capsys)  # fmt: skip
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err, err


def test_numpy_warnings_do_not_reach_stderr(logs, tmp_path):
    # an exponential schedule overflowing: one line, not numpy's warnings first
    log, _, _ = logs
    argv = [str(log), "--wd", str(WD), "--schedule", "exp:peak=0.1,gamma=2"]
    proc = subprocess.run([sys.executable, "-m", "siflow.overlay", *argv], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "must be finite" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--optimizer", "lion", "--momentum", "0.9"], "lion takes --betas"),
        (["--optimizer", "adamw", "--momentum", "0.9"], "adamw takes --betas"),
        (["--optimizer", "sgd", "--betas", "0.9,0.99"], "--betas applies to adamw and lion"),
        (["--lr", "0.1", "--schedule", "cosine:peak=0.5,steps=1000"], "drop one of them"),
    ],
)
def test_flags_the_theory_would_ignore_are_refused(logs, capsys, extra, needle):
    log, _, _ = logs
    code, out, err = _run([log, "--no-figure", *extra], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err
    assert not Path("runs").exists()
