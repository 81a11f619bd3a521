"""The overlay under learning-rate and momentum schedules: decay rates over the same rows,
--lr against a logged lr column, per-row momentum, and simulate's per-row predictions.

Every expected value is an exact map iterated here with numpy, or a hand formula.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import io
from siflow.overlay import analyze
from siflow.schedules import parse_schedule
from siflow.trajectory import Trajectory


def _run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# -------------------------------------------- the decay rate over the same rows
def test_scheduled_decay_rate_compares_the_same_rows() -> None:
    """A log on the exact zero-gradient map under a cosine lr: measured == predicted."""
    steps, wd = 3000, 1e-2
    lr = parse_schedule("cosine:peak=0.1,min=0.001,steps=3000").values(steps)
    rho = 5.0 * np.concatenate(([1.0], np.cumprod(1.0 - lr * wd)))[:steps]
    step = np.arange(steps)
    traj = Trajectory(step=step, rho=rho, loss=1e-3 * np.exp(-step / 500), extra={"lr": lr})
    res = analyze(traj, wd=wd)
    assert res.lr_schedule and res.regime == "converged" and res.n_events == 0
    # the slope measure_decay_rate fits: ln rho over the last 90% of the steps
    keep = step >= 0.1 * (steps - 1)
    slope = -np.polyfit(step[keep], np.log(rho[keep]), 1)[0]
    assert res.decay_rate_measured == pytest.approx(slope, rel=1e-9)
    # the law's own slope over the same rows (before: the mean rate over the second half)
    assert res.decay_rate_predicted == pytest.approx(slope, rel=1e-9)
    assert res.decay_rate_measured / res.decay_rate_predicted == pytest.approx(1.0, abs=1e-9)
    assert "own rows" in res.predictions.formulas["decay_rate"]


# ---------------------------------------------- --lr against a logged lr column
def _sgd_log(path: Path, lr: np.ndarray, wd: float) -> np.ndarray:
    """The exact SGD+WD norm map with g~ = 0.5 at every step, written as a CSV."""
    g = 0.5
    rho = np.empty(lr.size)
    rho[0] = 3.0
    for t in range(lr.size - 1):
        rho[t + 1] = np.sqrt((1 - lr[t] * wd) ** 2 * rho[t] ** 2 + lr[t] ** 2 * g**2 / rho[t] ** 2)
    lines = ["step,loss,lr,weight_norm,grad_norm_sphere"]
    lines += [
        f"{t},{1.0 / (1 + t)!r},{float(lr[t])!r},{float(rho[t])!r},{g!r}" for t in range(lr.size)
    ]
    path.write_text("\n".join(lines) + "\n")
    return rho


def test_lr_against_a_varying_lr_column_is_refused(tmp_path: Path) -> None:
    wd = 1e-2
    lr = parse_schedule("cosine:peak=0.1,warmup=100,min=0.001,steps=600").values(600)
    log = tmp_path / "cos.csv"
    _sgd_log(log, lr, wd)
    traj = io.read(log)
    with pytest.raises(ValueError, match=r"lr= was given \(0\.1\).*lr column varies"):
        analyze(traj, lr=0.1, wd=wd)
    out = _run_cli("-m", "siflow.overlay", str(log), "--lr", "0.1", "--wd", str(wd), cwd=tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr
    assert "--lr was given (0.1)" in err[0] and "lr column varies from 0.001 to 0.1" in err[0]
    assert "drop --lr" in err[0]
    # without --lr the column is used and the exact replay holds
    res = analyze(traj, wd=wd)
    assert res.scale_invariance == "holds" and res.norm_replay_error_max < 1e-12

    # a constant column equal to --lr still works; one that differs is named, not "logged"
    const = tmp_path / "const.csv"
    _sgd_log(const, np.full(400, 0.05), wd)
    same = _run_cli(
        "-m", "siflow.overlay", str(const), "--lr", "0.05", "--wd", str(wd), "--json",
        "--no-figure", cwd=tmp_path,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["scale_invariance"] == "holds"
    res = analyze(io.read(const), lr=0.1, wd=wd)
    assert res.scale_invariance == "fails"
    failure = next(n for n in res.notes if n.startswith("the exact scale-invariance check"))
    assert "logged lr" not in failure and "with lr=0.1, wd=0.01" in failure
    assert "the log's lr (0.05) is ignored: lr=0.1 was given" in res.notes


# ---------------------------------------------------- a per-row momentum column
def _heavy_ball_log(momentum: np.ndarray, lr: float = 0.05, wd: float = 1e-2) -> Trajectory:
    """PyTorch's heavy ball (dampening 0, coupled WD) on an SI loss, mu cycled per step.

    ``v_{t+1} = mu_t v_t + g_t + wd w_t`` (``v_1 = g_0 + wd w_0``), ``w_{t+1} = w_t - lr
    v_{t+1}``, with ``g_t`` a random gradient orthogonal to ``w_t`` of norm ``1/|w_t|``.
    """
    rng = np.random.default_rng(3)
    steps, dim = momentum.size, 40
    w = rng.standard_normal(dim)
    v = np.zeros(dim)
    rho, ang = np.empty(steps), np.empty(steps)
    for t in range(steps):
        z = rng.standard_normal(dim)
        g = z - (z @ w) / (w @ w) * w
        g *= 1.0 / (np.linalg.norm(g) * np.linalg.norm(w))
        v = g + wd * w if t == 0 else momentum[t] * v + g + wd * w
        w_new = w - lr * v
        rho[t] = np.linalg.norm(w)
        cos = (w @ w_new) / (np.linalg.norm(w) * np.linalg.norm(w_new))
        ang[t] = np.arccos(np.clip(cos, -1.0, 1.0))
        w = w_new
    return Trajectory(
        step=np.arange(steps),
        rho=rho,
        angular_update=ang,
        loss=np.full(steps, 1.0),
        extra={"lr": np.full(steps, lr), "momentum": momentum},
        meta={"optimizer": "SGD", "momentum": 0.95, "wd": wd},
    )


def _one_cycle_momentum(steps: int) -> np.ndarray:
    """OneCycleLR's cycle: 0.95 down to 0.85 and back (cosine), the log's per-row column."""
    x = np.arange(steps) / (steps - 1)
    return 0.9 + 0.05 * np.cos(2 * np.pi * x)


def test_per_row_momentum_is_used_by_the_heavy_ball_laws() -> None:
    lr, wd = 0.05, 1e-2
    mu = _one_cycle_momentum(400)
    res = analyze(_heavy_ball_log(mu, lr, wd))
    assert res.momentum_schedule and res.momentum == 0.95
    # the exact radial law with mu_t per row (before: mu = 0.95 at every row)
    assert res.scale_invariance == "holds"
    assert res.radial_law_error_max < 1e-10
    assert any("momentum varies per row" in n for n in res.notes)
    # the equilibrium angle per row: cos Delta* = 1 - lr wd / (1 + mu_t)
    assert res.curves is not None and res.curves.angular_update is not None
    np.testing.assert_allclose(
        res.curves.angular_update, np.arccos(1.0 - lr * wd / (1.0 + mu)), rtol=1e-12
    )


def test_failure_under_varying_momentum_does_not_blame_the_weights() -> None:
    traj = _heavy_ball_log(_one_cycle_momentum(400))
    assert traj.rho is not None
    traj.rho = traj.rho * (1.0 + 0.05 * np.sin(np.arange(400.0)))
    res = analyze(traj)
    assert res.scale_invariance == "fails"
    failure = next(n for n in res.notes if n.startswith("the exact scale-invariance check"))
    assert "non-SI" not in failure and "momentum column" in failure
    with pytest.raises(
        ValueError, match=r"momentum= was given \(0\.9\) but the log's momentum column varies"
    ):
        analyze(traj, momentum=0.9)


def _sawtooth(lr: np.ndarray, wd: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(rho^2, loss, events)``: rho^2 falls by ``(1 - lr_t wd)^2`` per step (the exact
    map at zero gradient) and is multiplied by 4 with a 100x loss spike of 20 rows once it
    is below 1; the events are the rows before each jump."""
    n = lr.size
    r2, loss, events = np.empty(n), np.full(n, 1e-2), []
    x = 4.0
    for t in range(n):
        if x < 1.0:
            events.append(t - 1)
            x *= 4.0
            loss[t : t + 20] = 1.0
        r2[t] = x
        x *= (1 - lr[t] * wd) ** 2
    return r2, loss, events


def test_overlay_events_take_the_free_decay_at_each_rows_momentum() -> None:
    # a sawtooth norm (rho^2 x4 with a 100x loss spike once it decays below 1) under a
    # one-cycle momentum column: the free decay between events is heavy ball's at each
    # row's momentum, not at the configured 0.95 of the metadata
    n, lr, wd = 6000, 0.1, 5e-3
    r2, loss, events = _sawtooth(np.full(n, lr), wd)
    mu = _one_cycle_momentum(n)
    traj = Trajectory(
        step=np.arange(n),
        rho=np.sqrt(r2),
        loss=loss,
        extra={"lr": np.full(n, lr), "momentum": mu},
        meta={"optimizer": "SGD", "momentum": 0.95, "wd": wd},
    )
    res = analyze(traj)
    assert res.events is not None
    np.testing.assert_array_equal(res.events.steps, events)

    def log_factor(m: float) -> float:  # largest root of a^2 - (1 + m - lr wd) a + m
        return math.log(max(abs(np.roots([1.0, -(1.0 + m - lr * wd), m]))))

    hand = [
        sum(log_factor(mu[t]) for t in range(a, b))
        for a, b in zip(events[:-1], events[1:], strict=True)
    ]
    np.testing.assert_allclose(res.events.decay_before, hand, rtol=1e-9)


def test_varying_beta1_is_said_to_be_taken_as_one_value() -> None:
    steps = 200
    beta1 = _one_cycle_momentum(steps)
    traj = Trajectory(
        step=np.arange(steps),
        rho=np.full(steps, 2.0),
        loss=np.full(steps, 1.0),
        extra={"lr": np.full(steps, 1e-3), "beta1": beta1},
        meta={"optimizer": "AdamW", "betas": [0.95, 0.999], "wd": 0.1, "n_params": 100},
    )
    res = analyze(traj)
    assert res.betas == [pytest.approx(float(np.median(beta1))), 0.999]
    assert any("beta1 varies per row" in n and "constant beta1" in n for n in res.notes)


# ---------------------------------------------------- simulate under a schedule
def test_simulate_under_a_schedule_compares_with_the_per_row_predictions(
    tmp_path: Path,
) -> None:
    out = _run_cli(
        "-m", "siflow.simulate", "--loss", "spiral", "--lr", "0.1", "--wd", "1e-3",
        "--steps", "4000", "--schedule", "cosine:warmup=200,min=0.005,steps=4000",
        "--out", str(tmp_path / "sim"), "--no-figure",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    ov = summary["overlay"]
    traj = io.read(tmp_path / "sim" / "trajectory.npz")
    rows = (traj.step >= ov["stationary_start"]) & (traj.step <= ov["stationary_stop"])
    lr = traj.extra["lr"][rows]
    # SGD's exact equilibrium angle per row, RMS over the stationary rows (by hand)
    angle = float(np.sqrt(np.mean(np.arccos(1.0 - lr * 1e-3) ** 2)))
    assert ov["angular_update_predicted"] == pytest.approx(angle, rel=1e-12)
    assert summary["predicted"]["angular_update"] == ov["angular_update_predicted"]
    assert summary["decay_rate"]["predicted"] == ov["decay_rate_predicted"]
    # the last step's equilibrium (lr 0.005) is the table's header, not the comparison
    assert summary["equilibrium"]["angular_update"] != pytest.approx(angle, rel=1e-3)
    measured = summary["statistics"]["angular_update_rms"]
    line = next(x for x in out.stdout.splitlines() if x.startswith("angular update RMS"))
    assert line.split()[-1] == f"{measured / angle:.4f}"
    notes = "\n".join(summary["notes"])
    assert "last step's lr" not in notes and notes.count("per row") == 1


# ------------------------------------------------ the period under an lr schedule
def _step_schedule_sawtooth(n: int, drop: int, wd: float) -> tuple[Trajectory, list[int]]:
    """rho^2 x4 with a 100x loss spike once the free decay (lr 0.1, then 0.04 from step
    ``drop``) takes it below 1: every cycle falls by ln 2 in ln rho at zero gradient."""
    lr = np.where(np.arange(n) < drop, 0.1, 0.04)
    r2, loss, events = _sawtooth(lr, wd)
    traj = Trajectory(
        step=np.arange(n), rho=np.sqrt(r2), loss=loss, extra={"lr": lr}, meta={"wd": wd}
    )
    return traj, events


def test_period_under_a_step_schedule_is_the_decay_law_cycle_by_cycle() -> None:
    # cycles of 138 steps at lr*wd = 5e-3 and 346 after the lr drops to 0.04: the decay
    # law's period is taken at each cycle's own lr (the fall of ln rho from each peak to
    # the next onset, at each step's lr), not at the median lr of the rows, which gave
    # 346 steps against a measured median of 138
    n, drop, wd = 3000, 1200, 5e-2
    traj, events = _step_schedule_sawtooth(n, drop, wd)
    res = analyze(traj)
    assert res.events is not None
    np.testing.assert_array_equal(res.events.steps, events)
    periods = np.diff(events)
    assert res.period_median == float(np.median(periods))
    assert np.median(periods) < 150 and periods.max() > 300
    # each cycle by hand: its rise to the peak plus the steps the free decay needs from
    # the peak to lower ln rho by ln(median norm ratio), summed step by step
    ev = res.events
    fall = math.log(res.norm_ratio_median)
    lr = traj.extra["lr"]
    hand = []
    for k in range(len(events) - 1):
        t, total = int(ev.peak_steps[k]), 0.0
        while total - math.log(1 - lr[t] * wd) < fall:
            total -= math.log(1 - lr[t] * wd)
            t += 1
        rest = (fall - total) / -math.log(1 - lr[t] * wd)  # the last step's part
        hand.append(t + rest - ev.steps[k])
    assert res.predictions.predicted_period == pytest.approx(np.median(hand), rel=1e-9)
    assert res.period_median / res.predictions.predicted_period == pytest.approx(1.0, abs=0.02)


def test_predict_lr_under_a_step_schedule_keeps_the_free_decay_per_cycle() -> None:
    # --predict-lr on a scheduled log: the period at lr 0.2 is the median free decay per
    # cycle, sum_t -ln(1 - lr_t wd) between events, over -ln(1 - 0.2 wd), whatever lr the
    # log is calibrated at (before: the median period in steps, 138, taken as the period
    # at the median lr of the rows, 0.04, gave 28 steps where lr 0.2 cycles in 69)
    n, drop, wd = 3000, 1200, 5e-2
    traj, events = _step_schedule_sawtooth(n, drop, wd)
    res = analyze(traj, predict_lr=0.2, predict_wd=wd)
    lr = traj.extra["lr"]
    free = [
        -sum(math.log(1 - lr[t] * wd) for t in range(a, b))
        for a, b in zip(events[:-1], events[1:], strict=True)
    ]
    expected = np.median(free) / -math.log(1 - 0.2 * wd)
    assert res.predictions.predicted_period_at == pytest.approx(expected, rel=1e-9)
    # the sawtooth at a constant lr of 0.2 cycles in about that many steps
    assert expected == pytest.approx(math.log(2) / -math.log(1 - 0.2 * wd), rel=0.02)


def test_period_under_a_schedule_with_lr_zero_rows() -> None:
    # a warmup from lr 0 (the first rows do not decay): the cycle-by-cycle period takes a
    # zero rate there instead of refusing the lr, and equals the hand sum of the cycles
    n, wd = 3000, 5e-2
    lr = np.where(np.arange(n) < 1200, 0.1, 0.04)
    lr[:10] = 0.0
    r2, loss, events = _sawtooth(lr, wd)
    traj = Trajectory(
        step=np.arange(n), rho=np.sqrt(r2), loss=loss, extra={"lr": lr}, meta={"wd": wd}
    )
    res = analyze(traj)
    assert res.events is not None
    np.testing.assert_array_equal(res.events.steps, events)
    fall = math.log(res.norm_ratio_median)
    hand = []
    for k in range(len(events) - 1):
        t, total = int(res.events.peak_steps[k]), 0.0
        while total - math.log(1 - lr[t] * wd) < fall:
            total -= math.log(1 - lr[t] * wd)
            t += 1
        hand.append(t + (fall - total) / -math.log(1 - lr[t] * wd) - events[k])
    assert res.predictions.predicted_period == pytest.approx(np.median(hand), rel=1e-9)
