"""overlay under schedules and the exact scale-invariance checks.

Ground truth: a genuine log of an exactly scale-invariant network trained with SGD
under warmup + cosine (tests/data/overlay/make_si_cosine.py, recorded by
siflow.torch_probe), the same run with a frozen non-SI layer folded into the norm,
the exact SGD and heavy-ball maps iterated in numpy, and hand-written closed forms.
"""

import math
from pathlib import Path

import numpy as np
import pytest

from siflow import io
from siflow.overlay import analyze, draw, theory_lines
from siflow.plot import Curve
from siflow.schedules import parse_schedule
from siflow.trajectory import Trajectory

DATA = Path(__file__).parent / "data" / "overlay"


@pytest.fixture(scope="module")
def si_log():
    return io.read(DATA / "si_cosine.npz")


@pytest.fixture(scope="module")
def folded_log():
    return io.read(DATA / "si_cosine_folded.npz")


def _hand_replay_error(traj, lr):
    """max |rho_replay/rho - 1| with the recursion written out in plain Python."""
    wd = traj.meta["wd"]
    r2 = float(traj.rho[0]) ** 2
    worst = 0.0
    for t in range(1, len(traj)):
        eta, g = float(lr[t - 1]), float(traj.grad_norm_sphere[t - 1])
        r2 = (1 - eta * wd) ** 2 * r2 + eta**2 * g**2 / r2
        worst = max(worst, abs(math.sqrt(r2) / float(traj.rho[t]) - 1))
    return worst


def test_si_network_under_warmup_cosine_passes_the_exact_check(si_log):
    res = analyze(si_log)
    assert res.optimizer == "sgd" and res.lr_schedule is True
    # the lr the overlay used at each row is the schedule the run was trained with
    sched = parse_schedule(si_log.meta["schedule"])
    np.testing.assert_allclose(res.curves.lr, sched(si_log.step), rtol=1e-12)
    assert res.check_rows == len(si_log) == 600
    assert res.norm_replay_error_max <= 1e-3
    assert res.angle_law_error_median <= 1e-3
    assert res.radial_law_error_max <= 1e-3
    assert res.scale_invariance == "holds"
    assert res.norm_replay_error_max == pytest.approx(
        _hand_replay_error(si_log, res.curves.lr), rel=1e-6, abs=1e-15
    )
    assert not any("scale-invariance check fails" in n for n in res.notes)
    d = res.as_flat_dict()
    assert d["optimizer"] == "sgd" and d["lr_schedule"] is True
    assert {g["name"] for g in d["groups"]} == {"fc1", "fc2"}
    for g in d["groups"]:
        assert g["norm_replay_error_max"] <= 1e-3
        for key in ("name", "angular_update_rms", "angular_update_predicted", "norm_mean"):
            assert key in g
        assert "norm_predicted" in g


def test_folded_frozen_layer_fails_the_check_with_a_note(folded_log):
    res = analyze(folded_log)
    assert res.norm_replay_error_max > 1e-2
    assert res.scale_invariance == "fails"
    lr = res.curves.lr
    assert res.norm_replay_error_max == pytest.approx(_hand_replay_error(folded_log, lr), rel=1e-9)
    assert "scale-invariance check fails" in res.notes[0]
    assert "non-SI parameters folded into the norm" in res.notes[0]
    by_name = {g.name: g for g in res.groups}
    # the SI layers of the same log still pass; the frozen one is named as such
    assert by_name["fc1"].norm_replay_error_max <= 1e-3
    assert by_name["fc2"].norm_replay_error_max <= 1e-3
    assert "frozen" in by_name["frozen"].note and by_name["frozen"].angular_update_predicted is None


def _exact_sgd_schedule(spec, steps, wd, g, rho0=3.0):
    lr = parse_schedule(spec).values(steps)
    r2 = np.empty(steps)
    x = rho0**2
    for t in range(steps):
        r2[t] = x
        x = (1 - lr[t] * wd) ** 2 * x + lr[t] ** 2 * g**2 / x
    rho = np.sqrt(r2)
    ang = np.arctan(lr / r2 * g / (1 - lr * wd))
    return lr, rho, ang


SPEC = "cosine:peak=0.2,warmup=100,min=0.01,steps=4000"


def test_schedule_spec_gives_curves_from_the_closed_forms():
    wd, g = 0.05, 0.7
    lr, rho, ang = _exact_sgd_schedule(SPEC, 4000, wd, g)
    traj = Trajectory(
        step=np.arange(4000),
        rho=rho,
        angular_update=ang,
        grad_norm_sphere=np.full(4000, g),
        meta={"lr": 0.2, "wd": wd},
    )
    res = analyze(traj, schedule=SPEC)
    assert res.lr_schedule and not res.wd_schedule and res.schedule.startswith("lr: cosine:")
    want_angle = np.arccos(1 - lr * wd)
    want_norm = (lr * g**2 / (wd * (2 - lr * wd))) ** 0.25
    np.testing.assert_allclose(res.curves.angular_update, want_angle, rtol=1e-12)
    np.testing.assert_allclose(res.curves.norm, want_norm, rtol=1e-12)
    rows = (traj.step >= res.stationary_start) & (traj.step <= res.stationary_stop)
    assert res.angular_update_predicted == pytest.approx(
        math.sqrt(np.mean(want_angle[rows] ** 2)), rel=1e-12
    )
    assert res.norm_predicted == pytest.approx(np.mean(want_norm[rows]), rel=1e-12)
    assert res.norm_replay_error_max < 1e-12 and res.angle_law_error_median < 1e-12
    # an lr column holding the same values gives the same result
    col = Trajectory(
        step=traj.step,
        rho=rho,
        angular_update=ang,
        grad_norm_sphere=traj.grad_norm_sphere,
        extra={"lr": lr},
        meta={"wd": wd},
    )
    res2 = analyze(col)
    assert res2.lr_schedule and res2.schedule is None
    np.testing.assert_allclose(res2.curves.norm, want_norm, rtol=1e-12)
    assert res2.norm_replay_error_max < 1e-12
    # taken as constant, the same log fails the exact check
    const = analyze(traj, lr=0.2)
    assert const.norm_replay_error_max > 1e-2 and "check fails" in const.notes[0]


def test_schedule_curves_are_drawn(tmp_path):
    wd, g = 0.05, 0.7
    lr, rho, ang = _exact_sgd_schedule(SPEC, 4000, wd, g)
    traj = Trajectory(
        step=np.arange(4000),
        rho=rho,
        angular_update=ang,
        grad_norm_sphere=np.full(4000, g),
        meta={"lr": 0.2, "wd": wd},
    )
    res = analyze(traj, schedule=SPEC)
    curves = [ln for ln in theory_lines(res, traj) if isinstance(ln, Curve)]
    assert {c.panel for c in curves} == {"rho", "elr", "angle"}
    by_panel = {c.panel: c for c in curves}
    np.testing.assert_array_equal(by_panel["rho"].y, res.curves.norm)
    fig = draw(traj, res, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    labels = {ln.get_label() for ax in fig.axes for ln in ax.get_lines()}
    assert any("rho^*(t)" in lab for lab in labels)


def _heavy_ball_log(mu, steps=400, seed=3):
    """PyTorch heavy ball on the Rayleigh quotient (an SI loss), every step recorded."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((10, 10))
    a = a + a.T
    w = rng.standard_normal(10) * 2
    v = np.zeros(10)
    lr = parse_schedule("cosine:peak=0.05,warmup=30,min=0.005,steps=400").values(steps)
    wd = 0.01
    rho, ang = [], []
    for t in range(steps):
        r2 = w @ w
        g = 2.0 * (a @ w - (w @ a @ w) / r2 * w) / r2
        v = mu * v + g + wd * w if t else g + wd * w
        w_new = w - lr[t] * v
        u, b = w / np.linalg.norm(w), w_new / np.linalg.norm(w_new)
        rho.append(np.linalg.norm(w))
        ang.append(2 * math.atan2(np.linalg.norm(u - b), np.linalg.norm(u + b)))
        w = w_new
    return Trajectory(
        step=np.arange(steps),
        rho=rho,
        angular_update=ang,
        extra={"lr": lr},
        meta={"wd": wd, "momentum": mu, "optimizer": "SGD"},
    )


def test_heavy_ball_radial_law_holds_and_plain_sgd_law_does_not():
    traj = _heavy_ball_log(0.9)
    res = analyze(traj)
    assert res.optimizer == "sgd" and res.momentum == 0.9
    assert res.radial_law_error_max < 1e-10
    assert res.norm_replay_error_max is None and res.angle_law_error_median is None
    assert any("momentum buffer" in n for n in res.notes)
    wrong = analyze(traj, momentum=0.0)
    assert wrong.radial_law_error_max > 1e-2 and wrong.scale_invariance == "fails"


def test_sparse_rows_make_the_checks_not_applicable():
    wd, g = 0.05, 0.7
    lr, rho, ang = _exact_sgd_schedule(SPEC, 4000, wd, g)
    keep = np.arange(0, 4000, 2)
    traj = Trajectory(
        step=keep, rho=rho[keep], grad_norm_sphere=np.full(keep.size, g), meta={"wd": wd}
    )
    res = analyze(traj, schedule=SPEC, lr=0.2)
    assert res.norm_replay_error_max is None and res.scale_invariance == "n/a"
    assert any("consecutive steps" in n for n in res.notes)


def test_bad_schedule_names_the_parameter():
    traj = Trajectory(step=np.arange(10), rho=np.linspace(2, 1, 10), meta={"wd": 0.1})
    with pytest.raises(ValueError, match="schedule"):
        analyze(traj, schedule="wiggle:peak=1")
    with pytest.raises(ValueError, match="lr"):
        analyze(traj.fill_derived(), lr=-1.0)


def test_log_recorded_every_k_steps_checks_the_windowed_radial_law():
    """analysis/data/nn/convnet_gd_3.npz: a BatchNorm ConvNet recorded every 2 steps."""
    path = Path(__file__).parents[1] / "analysis" / "data" / "nn" / "convnet_gd_3.npz"
    traj = io.read(path)
    assert traj.meta["every"] == 2 and np.all(np.diff(traj.step) == 2)
    res = analyze(traj)
    lc, rho = traj.extra["log_cos_mean_window"], traj.rho
    lr, wd = traj.meta["lr"], traj.meta["wd"]
    # by hand: rho_{t+2} = rho_t (1 - lr wd)^2 / exp(2 mean ln cos)
    hand = max(
        abs(rho[i] * (1 - lr * wd) ** 2 / math.exp(2 * lc[i]) / rho[i + 1] - 1)
        for i in range(len(traj) - 1)
    )
    assert res.radial_law_error_max == pytest.approx(hand, rel=1e-9)
    assert res.radial_law_error_max <= 1e-3 and res.scale_invariance == "holds"
    assert res.norm_replay_error_max is None
    assert any("2 steps apart" in n for n in res.notes)


def test_lr_column_of_a_plain_csv_is_used_per_row(tmp_path):
    wd, g = 0.05, 0.7
    lr, rho, ang = _exact_sgd_schedule(SPEC, 4000, wd, g)
    path = tmp_path / "run.csv"
    with open(path, "w") as fh:
        fh.write("iteration,learning_rate,weight_norm,grad_norm_sphere\n")
        for t in range(4000):
            fh.write(f"{t},{float(lr[t])!r},{float(rho[t])!r},{g!r}\n")
    traj = io.read(path)
    res = analyze(traj, wd=wd)
    assert res.lr_schedule and res.lr == pytest.approx(0.2, rel=1e-12)
    np.testing.assert_array_equal(res.curves.lr, lr)
    assert res.norm_replay_error_max < 1e-12 and res.scale_invariance == "holds"


def test_lr_annealed_to_zero_before_the_log_ends_is_analysed():
    # cosine to 0 at step 8000 of a 12000-step log (a schedule annealed to 0 before the
    # run ends): the rows at lr = 0 have no threshold and no prediction; the analysis runs
    from siflow.simulate import simulate

    traj = simulate("logistic", lr=0.1, wd=1e-3, steps=12000, seed=0, sharpness=True)
    spec = "cosine:peak=0.1,steps=8000"
    lr = parse_schedule(spec)(traj.step)
    assert lr[-1] == 0.0 and np.sum(lr == 0.0) > 3000
    res = analyze(traj, schedule=spec, wd=1e-3)
    assert res.lr_schedule and res.events is not None and len(res.events) >= 1
