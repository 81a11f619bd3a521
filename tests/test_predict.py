"""Acceptance tests of siflow.predict on small toy simulations.

The bounds are the project's acceptance bounds: landscape-based period within 25%,
calibrated within 10%, effective LR at destabilization within 20%. The simulated
periods come from siflow.simulate + siflow.periods (independent of the prediction).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from siflow import maps
from siflow.losses import make_loss
from siflow.periods import find_events
from siflow.predict import (
    cycle_constants,
    escape_integral,
    predict_period,
    threshold_elr,
)
from siflow.simulate import simulate
from siflow.trajectory import Trajectory

NOISE = 1e-6


def run(loss, lr, elw, momentum=0.0, periods=40, T_guess=100, **options):
    # rho0 = sqrt(lr/0.1): the same initial effective LR for every lr, so runs at equal
    # lr*wd are exact copies under the scale symmetry (the toys can settle on different
    # periodic orbits from different initial effective LRs)
    steps = int(periods * T_guess) + 3000
    return simulate(
        loss,
        lr=lr,
        wd=elw / lr,
        steps=steps,
        noise=NOISE,
        momentum=momentum,
        seed=1,
        rho0=math.sqrt(lr / 0.1),
        loss_options=options or None,
    )


def measured(traj, skip=3):
    ev = find_events(traj)
    assert len(ev) >= skip + 10, f"only {len(ev)} destabilizations"
    sl = slice(skip, None)
    return float(np.median(np.diff(ev.steps[sl]))), float(np.median(ev.elr_before[sl]))


@pytest.fixture(scope="module")
def rayleigh_runs():
    return {
        (0.1, 1e-2): run("rayleigh", 0.1, 1e-2, T_guess=45),
        (0.05, 5e-3): run("rayleigh", 0.05, 5e-3, T_guess=60),
    }


def test_landscape_prediction_rayleigh(rayleigh_runs):
    traj = rayleigh_runs[(0.1, 1e-2)]
    T, elr = measured(traj)
    toy = make_loss("rayleigh")
    pred = predict_period(0.1, 0.1, loss=toy, noise=NOISE)
    assert pred.method == "landscape"
    assert pred.period == pytest.approx(T, rel=0.25)
    assert pred.elr_destabilization == pytest.approx(elr, rel=0.20)
    # the analytic quadratic family with the toy's sharpness is the same circle profile
    quad = predict_period(0.1, 0.1, sharpness=toy.sharpness_min, family="quadratic", noise=NOISE)
    assert quad.period == pytest.approx(T, rel=0.25)
    assert quad.elr_destabilization == pytest.approx(elr, rel=0.20)


def test_calibrated_prediction_rayleigh(rayleigh_runs):
    T, elr = measured(rayleigh_runs[(0.1, 1e-2)])
    cal = rayleigh_runs[(0.05, 5e-3)]
    toy = make_loss("rayleigh")
    pred = predict_period(0.1, 0.1, calibration=cal, loss=toy, noise=NOISE)
    assert pred.method == "calibrated"
    assert pred.period == pytest.approx(T, rel=0.10)
    assert pred.elr_destabilization == pytest.approx(elr, rel=0.20)


def test_calibrated_prediction_rayleigh_momentum():
    traj = run("rayleigh", 0.1, 1e-3, momentum=0.9, T_guess=230)
    cal = run("rayleigh", 0.05, 5e-4, momentum=0.9, T_guess=350)
    T, elr = measured(traj)
    pred = predict_period(0.1, 0.01, calibration=cal, loss=make_loss("rayleigh"), noise=NOISE)
    assert pred.momentum == 0.9
    assert pred.period == pytest.approx(T, rel=0.10)
    assert pred.elr_destabilization == pytest.approx(elr, rel=0.20)


def test_logistic_predictions():
    traj = run("logistic", 0.1, 1e-2, T_guess=95, seed=0)
    cal = run("logistic", 0.05, 5e-3, T_guess=165, seed=0)
    T, elr = measured(traj)
    toy = make_loss("logistic", seed=0)
    land = predict_period(0.1, 0.1, loss=toy, noise=NOISE)
    assert land.period == pytest.approx(T, rel=0.25)
    assert land.elr_destabilization == pytest.approx(elr, rel=0.20)
    calp = predict_period(0.1, 0.1, calibration=cal, loss=toy, noise=NOISE)
    assert calp.period == pytest.approx(T, rel=0.10)
    # the cycle model needs no landscape, only the sharpness in the run's metadata
    cyc = predict_period(0.1, 0.1, calibration=cal)
    assert cyc.details["rule"] == "cycle model"
    assert cyc.period == pytest.approx(T, rel=0.10)
    assert cyc.elr_destabilization == pytest.approx(elr, rel=0.20)


def test_calibration_at_same_product_returns_the_run(rayleigh_runs):
    # scale symmetry: only lr*wd matters; (0.05, 0.1) has the product of the run (0.05, 0.1)
    cal = rayleigh_runs[(0.05, 5e-3)]
    T, elr = measured(cal, skip=2)
    pred = predict_period(0.025, 0.2, calibration=cal, calibration_model="cycle")
    assert pred.details["rule"] == "scale symmetry"
    assert pred.period == T
    assert pred.elr_destabilization == elr


def test_reduced_map_predictions_obey_scale_symmetry():
    a = predict_period(0.1, 0.05, sharpness=3.0, family="logistic", noise=NOISE, dim=10)
    b = predict_period(0.2, 0.025, sharpness=3.0, family="logistic", noise=NOISE, dim=10)
    assert a.period == b.period
    assert a.elr_destabilization == pytest.approx(b.elr_destabilization, rel=1e-9)


def test_momentum_threshold_matches_exact_heavy_ball():
    # 2-D heavy ball on the Rayleigh plane (reduced_map is exact there) with negligible
    # wd: the deviation grows iff elr > 2 (1 + mu - lr wd)/S.
    lr, wd, mu, S = 0.1, 1e-9, 0.9, 10.0
    thr = threshold_elr(lr, wd, S, mu)
    assert thr == pytest.approx(2 * (1.9 - 1e-10) / S)
    for scale, grows in ((1.03, True), (0.97, False)):
        rho0 = math.sqrt(lr / (scale * thr))
        tr = maps.reduced_map(lr, wd, 400, sharpness=S, momentum=mu, rho0=rho0, phi0=1e-9)
        peak = np.max(np.abs(tr.extra["phi"]))
        # unstable: grows by orders of magnitude (then the burst raises the norm)
        assert (peak > 1e-6) == grows
        assert (peak < 1e-8) == (not grows)


def test_escape_integral_sgd():
    lr, wd = 0.1, 1e-3
    for y in (0.05, 0.3, 1.0):
        ref = mpmath.quad(lambda s: mpmath.log(2 * mpmath.e**s - 1), [0, y])
        assert escape_integral(y, lr, wd) == pytest.approx(float(ref), rel=1e-9)
    # small overshoot: Phi(y) = y^2 + O(y^3)
    assert escape_integral(1e-3, lr, wd) == pytest.approx(1e-6, rel=2e-3)


def test_cycle_constants_fields(rayleigh_runs):
    c = cycle_constants(rayleigh_runs[(0.05, 5e-3)])
    assert c["threshold_elr"] == pytest.approx(2 * (1 - 5e-3) / c["sharpness"])
    assert c["overshoot"] > 1.0
    assert 0.0 < c["burst_constant"] < 2.0
    assert c["escape_log"] > 0.0


def test_validation():
    with pytest.raises(ValueError, match="sharpness"):
        predict_period(0.1, 0.01)
    with pytest.raises(ValueError, match="lr"):
        predict_period(-0.1, 0.01, sharpness=1.0)
    with pytest.raises(ValueError, match="calibration_model"):
        predict_period(0.1, 0.01, sharpness=1.0, calibration_model="magic")
    bare = Trajectory(step=np.arange(10), rho=np.ones(10))
    with pytest.raises(ValueError, match="lr"):
        predict_period(0.1, 0.01, calibration=bare)
    flat = Trajectory(
        step=np.arange(10), rho=np.ones(10), meta={"lr": 0.1, "wd": 0.01, "sharpness_min": 1.0}
    )
    with pytest.raises(ValueError, match="destabilizations"):
        predict_period(0.1, 0.01, calibration=flat)
    flat.meta["momentum"] = 0.9
    with pytest.raises(ValueError, match="momentum"):
        predict_period(0.1, 0.01, 0.0, calibration=flat)


# ------------------------------------------------------------ run-to-run transfer
def _jump_map_run(lr, wd, factor=2.0, momentum=0.0, n_periods=8):
    """rho^2 falls by the free-decay factor squared per step and is multiplied by ``factor``
    once below 1: the period is ln(factor) / (2 delta) steps, delta = -ln decay_factor."""
    from siflow import theory

    alpha = float(theory.decay_factor(lr, wd, momentum))
    period = math.log(factor) / (-2 * math.log(alpha))
    n = int(n_periods * period) + 10
    r2 = np.empty(n)
    loss = np.full(n, 1e-3)
    v = factor * 0.999
    for t in range(n):
        if v < 1.0:
            v *= factor
            loss[t : t + 2] = 1.0
        r2[t] = v
        v *= alpha**2
    meta = {"lr": lr, "wd": wd, "momentum": momentum}
    return Trajectory(step=np.arange(n), rho=np.sqrt(r2), loss=loss, meta=meta), period


def test_transfer_period_exact_for_the_jump_map():
    from siflow.predict import transfer_period

    cal, _ = _jump_map_run(0.5, 0.01)
    for lr, wd in ((1.0, 0.01), (0.5, 0.004), (0.2, 0.05)):
        _, true_period = _jump_map_run(lr, wd)
        pred = transfer_period(cal, lr, wd)
        # whole-step events: the calibration period (69.3 steps) is measured to one step
        assert pred.period == pytest.approx(true_period, rel=1.0 / 69)
        assert pred.details["push_calibration"] == pytest.approx(0.0, abs=1e-3)


def test_transfer_period_hand_formula_with_push_and_momentum():
    from siflow import theory
    from siflow.periods import find_events, measure_decay_rate
    from siflow.predict import transfer_period

    cal, _ = _jump_map_run(0.5, 0.01)
    ev = find_events(cal)
    t0 = float(np.median(ev.periods))
    r0 = measure_decay_rate(cal, ev)
    d0 = -math.log(1 - 0.005)
    pred = transfer_period(cal, 0.1, 0.01, momentum=0.9, events=ev)
    # heavy-ball threshold shift: 1/2 ln((1 + 0.9 - 1e-3) / (1 - 5e-3))
    shift = 0.5 * math.log((1.9 - 1e-3) / (1 - 5e-3))
    delta = float(theory.decay_rate(0.1, 0.01, 0.9))
    p = (1 - r0 / d0) * 1e-3 / 5e-3
    assert pred.period == pytest.approx((t0 * r0 + shift) / (delta * (1 - p)), rel=1e-12)
    assert pred.details["threshold_shift"] == pytest.approx(shift, rel=1e-12)
    const = transfer_period(cal, 0.1, 0.01, momentum=0.9, events=ev, push="constant")
    assert const.period == pytest.approx((t0 * r0 + shift) / (delta * (r0 / d0)), rel=1e-12)


def test_transfer_period_validation():
    from siflow.predict import transfer_period

    cal, _ = _jump_map_run(0.5, 0.01, n_periods=2)
    with pytest.raises(ValueError, match="destabilizations"):
        transfer_period(cal, 1.0, 0.01)
    cal, _ = _jump_map_run(0.5, 0.01)
    with pytest.raises(ValueError, match="push"):
        transfer_period(cal, 1.0, 0.01, push="quadratic")
    with pytest.raises(ValueError, match="lr"):
        transfer_period(Trajectory(step=cal.step, rho=cal.rho), 1.0, 0.01)
    # skip=-1 calibrated on the last period alone
    with pytest.raises(ValueError, match="skip must be >= 0"):
        transfer_period(cal, 1.0, 0.01, skip=-1)
    for bad in (1.5, True, "1"):
        with pytest.raises(ValueError, match="skip must be an integer"):
            transfer_period(cal, 1.0, 0.01, skip=bad)
    # a whole float is taken, as cycle_constants takes it
    assert transfer_period(cal, 1.0, 0.01, skip=2.0) == transfer_period(cal, 1.0, 0.01, skip=2)


def test_transfer_period_refuses_a_calibration_under_a_schedule():
    # a logged lr (or wd, momentum) column that varies: the calibration's period in steps
    # and decay per step mix cycles run at different rates (so do the cycle model's
    # constants); a constant column is accepted
    from siflow.predict import cycle_constants, transfer_period

    cal, _ = _jump_map_run(0.5, 0.01)
    n = len(cal)
    flat = Trajectory(
        step=cal.step,
        rho=cal.rho,
        loss=cal.loss,
        meta=cal.meta,
        extra={"lr": np.full(n, 0.5), "momentum": np.zeros(n)},
    )
    assert transfer_period(flat, 1.0, 0.01).period == transfer_period(cal, 1.0, 0.01).period
    for name, col in (
        ("lr", np.where(np.arange(n) < n // 2, 0.5, 0.25)),
        ("wd", np.linspace(0.01, 0.02, n)),
        ("momentum", np.linspace(0.85, 0.95, n)),
    ):
        varied = Trajectory(
            step=cal.step, rho=cal.rho, loss=cal.loss, meta=cal.meta, extra={name: col}
        )
        with pytest.raises(ValueError, match=f"calibration run's {name} column varies"):
            transfer_period(varied, 1.0, 0.01)
        with pytest.raises(ValueError, match=f"calibration run's {name} column varies"):
            cycle_constants(varied, sharpness=1.0)
    # a column siflow.io.read maps to lr (Lightning's lr-SGD) counts as well
    mapped = Trajectory(
        step=cal.step,
        rho=cal.rho,
        loss=cal.loss,
        meta={**cal.meta, "columns": {"lr": "lr-SGD"}},
        extra={"lr-SGD": np.linspace(0.5, 0.1, n)},
    )
    with pytest.raises(ValueError, match="lr column varies"):
        transfer_period(mapped, 1.0, 0.01)


def test_transfer_period_refuses_a_step_column_that_is_not_optimizer_steps():
    from siflow.predict import transfer_period

    cal, period = _jump_map_run(0.5, 0.01)
    # every 10th row numbered 0, 1, 2, ... (a unit of 10 steps, as epochs are): its norm
    # falls 10x faster per unit than the free decay per step
    coarse = cal[::10]
    coarse = Trajectory(step=coarse.step // 10, rho=coarse.rho, loss=coarse.loss, meta=cal.meta)
    with pytest.raises(ValueError, match="does not count optimizer steps"):
        transfer_period(coarse, 1.0, 0.01)
    epochs = Trajectory(step=cal.step, rho=cal.rho, loss=cal.loss,
                        meta={**cal.meta, "time_unit": "epoch"})  # fmt: skip
    with pytest.raises(ValueError, match="does not count optimizer steps"):
        transfer_period(epochs, 1.0, 0.01)
    # steps counted 3x (rows 0, 3, 6, ...): the decay per unit looks 3x slower, a push of
    # 2/3 that doubles at twice the lr*wd: refused, never a negative period
    stretched = Trajectory(step=cal.step * 3, rho=cal.rho, loss=cal.loss, meta=cal.meta)
    with pytest.raises(ValueError, match="gives no period"):
        transfer_period(stretched, 1.0, 0.01)
    assert transfer_period(stretched, 0.5, 0.01).period == pytest.approx(3 * period, rel=0.03)


def test_a_noise_above_the_checked_range_is_flagged():
    with pytest.warns(UserWarning, match="noise=1e-05 is above 1e-06"):
        pred = predict_period(0.1, 0.05, sharpness=3.0, family="logistic", noise=1e-5, dim=10)
    assert "largest level checked" in pred.details["note"]
    quiet = predict_period(0.1, 0.05, sharpness=3.0, family="logistic", noise=1e-6, dim=10)
    assert "note" not in quiet.details
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        predict_period(0.1, 0.05, sharpness=3.0, family="logistic", noise=1e-6, dim=2.7)
