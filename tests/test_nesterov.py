"""PyTorch's Nesterov SGD (``nesterov=True``) end to end: its own zero-gradient decay law
and stability threshold (siflow.theory, derived in siflow.symbolic), measured on a
simulated periodic run and used by the detector, the overlay and the forecast.

The simulated toy is the default logistic SI loss, lr 0.1, wd 1e-3, momentum 0.9, with
a small noise floor: its sphere sharpness at the minimum is in ``meta``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import theory
from siflow.forecast import forecast_next_event
from siflow.overlay import analyze
from siflow.periods import find_events, measure_decay_rate, sharpness_before_events
from siflow.simulate import simulate
from siflow.trajectory import Trajectory

LR, WD, MU = 0.1, 1e-3, 0.9


@pytest.fixture(scope="module")
def run() -> Trajectory:
    return simulate(
        optimizer="nesterov",
        lr=LR,
        wd=WD,
        momentum=MU,
        nesterov=True,
        steps=40_000,
        noise=1e-6,
        seed=0,
    )


def _nesterov_alpha() -> float:
    """The larger root of z^2 - (1 + mu)(1 - x) z + mu (1 - x), x = lr wd, by numpy."""
    x = LR * WD
    return float(np.max(np.abs(np.roots([1.0, -(1 + MU) * (1 - x), MU * (1 - x)]))))


def test_the_norm_decays_by_nesterovs_law_not_heavy_balls(run):
    ev = find_events(run)
    assert len(ev) >= 20
    measured = measure_decay_rate(run, ev)
    nesterov = -math.log(_nesterov_alpha())
    heavy_ball = float(theory.decay_rate(LR, WD, MU))
    assert theory.decay_rate(LR, WD, MU, nesterov=True) == pytest.approx(nesterov, rel=1e-12)
    assert measured == pytest.approx(nesterov, rel=1e-4)
    assert abs(measured / heavy_ball - 1) > 5e-4  # the two laws differ by 9e-4 here


def test_it_destabilizes_at_nesterovs_threshold(run):
    """elr S at each event's onset sits just above Nesterov's threshold (the delayed
    escape overshoots it by some percent) and far below heavy ball's 2(1 + mu - lr wd)."""
    ev = find_events(run)
    s = float(run.meta["sharpness_min"])
    elr_s = LR / ev.rho_before**2 * s
    thr = float(theory.stability_threshold_elr(LR, WD, 1.0, MU, nesterov=True))
    x, a = LR * WD, _nesterov_alpha()
    assert thr == pytest.approx(1 - x + a**2 / ((1 + MU) * a + MU), rel=1e-12)
    assert np.all(elr_s > thr) and np.all(elr_s < 1.25 * thr)
    assert np.all(elr_s < 0.45 * 2 * (1 + MU - x))


def test_overlay_uses_nesterovs_laws(run):
    res = analyze(run)
    assert res.optimizer == "nesterov"
    assert res.decay_rate_predicted == pytest.approx(-math.log(_nesterov_alpha()), rel=1e-10)
    assert res.decay_rate_measured == pytest.approx(res.decay_rate_predicted, rel=1e-4)
    s = float(run.meta["sharpness_min"])
    assert res.elr_threshold == pytest.approx(
        float(theory.stability_threshold_elr(LR, WD, s, MU, nesterov=True)), rel=1e-12
    )
    # the decay law with the measured norm ratio and rise gives the measured period
    assert res.predictions.predicted_period == pytest.approx(res.period_median, rel=0.05)
    # period at 2 lr: scale symmetry and the Nesterov decay law
    at = analyze(run, predict_lr=2 * LR)
    ratio = float(theory.decay_rate(LR, WD, MU, nesterov=True)) / float(
        theory.decay_rate(2 * LR, WD, MU, nesterov=True)
    )
    assert at.predictions.predicted_period_at == pytest.approx(at.period_median * ratio, rel=1e-12)


def test_forecast_of_a_nesterov_run_within_15_percent_of_the_cycle(run):
    """Cut half-way through each cycle after the second event: the forecast of the next
    destabilization is within 15 % of that cycle's length (the acceptance criterion of
    the labelled real runs) at every cut of this clean toy."""
    ev = find_events(run)
    errors = []
    for k in range(2, len(ev) - 1):
        cut = (ev.steps[k] + ev.steps[k + 1]) // 2
        fc = forecast_next_event(run[: int(np.searchsorted(run.step, cut)) + 1])
        assert fc.details["optimizer"] == "nesterov" and "optimizer_note" not in fc.details
        errors.append((fc.next_event_step - ev.steps[k + 1]) / (ev.steps[k + 1] - ev.steps[k]))
    assert len(errors) >= 20
    assert np.max(np.abs(errors)) < 0.15


def test_forecast_names_an_assumed_optimizer_and_refuses_adaptive_ones(run):
    anonymous = Trajectory(step=run.step, rho=run.rho, loss=run.loss, meta={"lr": LR, "wd": WD})
    fc = forecast_next_event(anonymous)
    assert fc.details["optimizer"] == "sgd"
    assert "does not name its optimizer" in fc.details["optimizer_note"]
    given = forecast_next_event(anonymous, optimizer="nesterov", momentum=MU)
    assert given.details["optimizer"] == "nesterov" and "optimizer_note" not in given.details
    with pytest.raises(ValueError, match="AdamW and Lion are not supported"):
        forecast_next_event(anonymous, optimizer="adamw")


def test_a_recorder_style_nesterov_log_is_read_as_nesterov(run):
    """SIRecorder writes ``optimizer: "SGD"`` with ``nesterov: True``: the forecast and the
    detector take Nesterov's decay rate from it; ``optimizer="sgd"`` given overrides it."""
    meta = {"lr": LR, "wd": WD, "momentum": MU, "optimizer": "SGD", "nesterov": True}
    log = Trajectory(step=run.step, rho=run.rho, loss=run.loss, meta=meta)
    fc = forecast_next_event(log)
    nesterov = float(theory.decay_rate(LR, WD, MU, nesterov=True))
    assert fc.details["optimizer"] == "nesterov"
    assert fc.details["free_decay_rate"] == pytest.approx(nesterov, rel=1e-12)
    plain = forecast_next_event(log, optimizer="sgd")
    assert plain.details["optimizer"] == "sgd"
    assert plain.details["free_decay_rate"] == pytest.approx(
        float(theory.decay_rate(LR, WD, MU)), rel=1e-12
    )
    assert analyze(log).decay_rate_predicted == pytest.approx(nesterov, rel=1e-12)


# ------------------------------------------------------------------ real networks
ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "analysis" / "data" / "nesterov"


def _thresholds(lr: float, wd: float, mu: float) -> tuple[float, float]:
    """elr S at the boundary, by hand: heavy ball 2(1 + mu - x), Nesterov
    1 - x + a^2/((1 + mu) a + mu) with a the larger root by numpy."""
    x = lr * wd
    a = float(np.max(np.abs(np.roots([1.0, -(1 + mu) * (1 - x), mu * (1 - x)]))))
    return 2 * (1 + mu - x), 1 - x + a**2 / ((1 + mu) * a + mu)


@pytest.mark.parametrize("net", ["digits_convnet", "mnist1d_mlp"])
def test_real_runs_destabilize_at_their_own_optimizers_threshold(net):
    """GD, lr 0.1, wd 0.01, mu 0.9 on a network of the labelled set, S logged every 4 steps.
    elr at each event times the sharpness late in its decay phase is within 20 % of the
    run's own optimizer's threshold (median over the events after the first): heavy ball
    at 2(1 + mu - lr wd), Nesterov at its own, 0.36 of heavy ball's."""
    hb = Trajectory.load(REAL / f"{net}_gd_hb.npz")
    nes = Trajectory.load(REAL / f"{net}_gd_nes.npz")
    assert not hb.meta.get("nesterov") and nes.meta["nesterov"] is True
    assert (hb.lr, hb.wd, hb.momentum) == (LR, 1e-2, MU) == (nes.lr, nes.wd, nes.momentum)
    thr_hb, thr_nes = _thresholds(LR, 1e-2, MU)
    at = {}
    for name, tr in (("hb", hb), ("nes", nes)):
        ev = find_events(tr)
        assert len(ev) >= 8
        elr = LR / tr.rho[ev.index] ** 2  # the norm has not risen yet at the event row
        np.testing.assert_allclose(ev.elr_before, elr, rtol=1e-12)
        at[name] = (elr * sharpness_before_events(tr, ev))[1:]
    assert 0.8 < np.median(at["hb"]) / thr_hb < 1.2
    assert 0.8 < np.median(at["nes"]) / thr_nes < 1.2
    assert np.median(at["nes"]) / thr_hb < 0.45


def test_sharpness_at_the_event_row_is_the_bursts():
    """At the event row the loss has jumped and the measured sharpness with it: the
    sharpness before the events is read late in the decay phase, not there."""
    tr = Trajectory.load(REAL / "digits_convnet_gd_hb.npz")
    ev = find_events(tr)
    s = tr.sharpness_sphere
    at_row = s[ev.index]
    measured = np.isfinite(at_row)  # measured every 4 steps: some events fall on them
    assert np.count_nonzero(measured) >= 3
    before = sharpness_before_events(tr, ev)
    assert np.median(at_row[measured] / before[measured]) > 10
    assert np.all(tr.loss[ev.index] > 10 * tr.loss[ev.index - 5])


def test_nesterov_runs_script_regenerates_its_committed_table(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "nesterov_runs.py"),
            "analyze",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "results.md").read_text() == (REAL / "results.md").read_text()
    assert (tmp_path / "nesterov_threshold.png").stat().st_size > 10_000
