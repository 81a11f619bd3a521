"""overlay: measured vs predicted on exact-map trajectories and on siflow.simulate runs.

Ground truth: the exact SGD+WD norm recursion (docs/theory.md section 1) iterated in
numpy, the scale symmetry (section 0) and hand-computed closed forms.
"""

import json
import math

import numpy as np
import pytest

from siflow import io
from siflow.overlay import OverlayResult, analyze, draw, predict_period_at, theory_lines
from siflow.periods import find_events
from siflow.plot import HLine, Segment
from siflow.trajectory import Trajectory

REQUIRED = {
    "n_events",
    "periods",
    "period_median",
    "elr_at_events_median",
    "angular_update_rms",
    "angular_update_predicted",
    "norm_mean",
    "norm_predicted",
    "decay_rate_measured",
    "decay_rate_predicted",
    "predicted_period",
    "regime",
    "notes",
}


def jump_map(n, lr, wd, rho2_crit, factor, rho2_0):
    """Norm decays by (1-lr wd)^2 per step in rho^2; multiplied by ``factor`` below rho2_crit."""
    q2 = (1 - lr * wd) ** 2
    r2 = np.empty(n)
    x, ev = rho2_0, []
    for t in range(n):
        if x < rho2_crit:
            ev.append(t - 1)  # the last row before the jump
            x *= factor
        r2[t] = x
        x *= q2
    traj = Trajectory(
        step=np.arange(n), rho=np.sqrt(r2), loss=np.full(n, 0.1), meta={"lr": lr, "wd": wd}
    )
    return traj, np.asarray(ev)


def burst_map(n, lr, wd, rho2_crit=1.0, G=3.0, burst=20, rho2_0=4.0):
    """Exact recursion rho2 <- q^2 rho2 + lr^2 g^2 / rho2 with g = G for ``burst`` steps."""
    q2 = (1 - lr * wd) ** 2
    r2 = np.empty(n)
    x, left, ev = rho2_0, 0, []
    for t in range(n):
        r2[t] = x
        if left == 0 and x < rho2_crit:
            ev.append(t)
            left = burst
        g = G if left else 0.0
        left = max(left - 1, 0)
        x = q2 * x + lr**2 * g**2 / x
    return Trajectory(step=np.arange(n), rho=np.sqrt(r2), meta={"lr": lr, "wd": wd}), np.array(ev)


def equilibrium_map(n=40000, lr=0.1, wd=1e-3, G=1.0, noise=0.3, seed=3):
    """Exact recursion with noisy steady g~ and the exact angle tan D = elr g~ / (1 - lr wd)."""
    rng = np.random.default_rng(seed)
    g = G * np.abs(1 + noise * rng.standard_normal(n))
    r2 = np.empty(n)
    x = 0.5
    for t in range(n):
        r2[t] = x
        x = (1 - lr * wd) ** 2 * x + lr**2 * g[t] ** 2 / x
    elr = lr / r2
    return Trajectory(
        step=np.arange(n),
        loss=0.3 + 0.01 * rng.standard_normal(n),
        rho=np.sqrt(r2),
        grad_norm_sphere=g,
        elr=elr,
        angular_update=np.arctan(elr * g / (1 - lr * wd)),
        meta={"lr": lr, "wd": wd, "source": "equilibrium map"},
    )


# ------------------------------------------------------------- exact-map checks
def test_decay_rate_and_period_from_norm_ratio_on_exact_map():
    traj, ev = burst_map(30000, 0.1, 5e-3)
    r = analyze(traj)
    assert r.regime == "periodic"
    assert r.event_steps == ev.tolist()
    assert r.decay_rate_predicted == pytest.approx(-math.log(1 - 5e-4), rel=1e-12)
    assert r.decay_rate_measured == pytest.approx(-math.log(1 - 5e-4), rel=1e-9)
    # between bursts the map is pure decay, so period = burst + decay time from the
    # peak to the next event row; the decay law gives it up to the integer step
    true_period = float(np.median(np.diff(ev)))
    assert r.period_median == true_period
    assert r.rise_steps_median == 20
    assert abs(r.predicted_period - true_period) <= 1.0


def test_equilibrium_angle_and_norm_on_exact_map():
    traj = equilibrium_map()
    r = analyze(traj)
    assert r.regime == "equilibrium" and r.n_events == 0
    # hand values: cos D* = 1 - lr wd -> D* = arccos(0.9999)
    assert r.angular_update_predicted == pytest.approx(math.acos(0.9999), rel=1e-10)
    assert r.angular_update_rms == pytest.approx(r.angular_update_predicted, rel=0.03)
    g_rms = float(np.sqrt(np.mean(traj.grad_norm_sphere[12500:] ** 2)))
    assert r.grad_norm_sphere_rms == pytest.approx(g_rms, rel=1e-12)
    rho_star = (0.1 * g_rms**2 / (1e-3 * (2 - 1e-4))) ** 0.25
    assert r.norm_predicted == pytest.approx(rho_star, rel=1e-12)
    assert r.norm_mean == pytest.approx(rho_star, rel=0.01)
    assert r.decay_rate_measured is None
    assert r.period_median is None and r.predicted_period is None
    assert any("no period" in n for n in r.notes)


def test_angle_is_derived_when_not_logged():
    traj = equilibrium_map()
    bare = Trajectory(
        step=traj.step,
        rho=traj.rho,
        grad_norm_sphere=traj.grad_norm_sphere,
        meta=traj.meta,
    )
    r_full, r_bare = analyze(traj), analyze(bare)
    assert r_bare.angular_update_source.startswith("derived")
    assert r_bare.angular_update_rms == pytest.approx(r_full.angular_update_rms, rel=1e-12)


def test_sharpness_gives_threshold_and_critical_norm():
    traj, _ = burst_map(5000, 0.1, 5e-3)
    r = analyze(traj, sharpness=100.0)
    assert r.elr_threshold == pytest.approx(2 * (1 - 5e-4) / 100.0, rel=1e-14)
    assert r.critical_norm == pytest.approx(math.sqrt(0.1 * 100 / (2 * (1 - 5e-4))), rel=1e-14)


def test_predict_period_at_hand_values():
    # equal lr*wd: the scale symmetry gives the same period exactly
    assert predict_period_at(779.0, 0.1, 5e-3, 0.2, 2.5e-3) == 779.0
    # otherwise T2 = T1 ln(1 - x1) / ln(1 - x2)
    want = 779.0 * math.log1p(-5e-4) / math.log1p(-2.5e-4)
    assert predict_period_at(779.0, 0.1, 5e-3, 0.05, 5e-3) == pytest.approx(want, rel=1e-14)
    with pytest.raises(ValueError, match="predict_lr|lr"):
        predict_period_at(779.0, 0.1, 5e-3, -0.05, 5e-3)


def test_scale_symmetry_on_the_exact_map():
    # (lr, wd, rho^2) -> (c lr, wd / c, c rho^2) is the same run: same period
    a, _ = burst_map(20000, 0.1, 5e-3)
    b, _ = burst_map(20000, 0.3, 5e-3 / 3, rho2_crit=3.0, rho2_0=12.0)
    ra = analyze(a, predict_lr=0.3, predict_wd=5e-3 / 3)
    rb = analyze(b)
    assert rb.period_median == ra.period_median == ra.predicted_period_at


def test_predicted_period_at_other_lr_wd_matches_a_rerun():
    # with a fixed jump factor the decay law is the whole story: rerun at half lr*wd
    a, ev_a = jump_map(40000, 0.1, 5e-3, 1.0, 4.0, 4.0)
    b, ev_b = jump_map(80000, 0.05, 5e-3, 1.0, 4.0, 4.0)
    r = analyze(a, predict_lr=0.05)
    assert r.predict_wd == 5e-3
    true_b = float(np.median(np.diff(ev_b)))
    assert abs(r.predicted_period_at - true_b) <= 2.0
    assert r.predicted_period_method.startswith(("scale symmetry", "siflow.predict"))


def _heavy_ball_decay(lr, wd, mu):
    """Zero-gradient norm factor per step: the larger root of a^2 - (1 + mu - lr wd) a + mu."""
    c = 1.0 + mu - lr * wd
    return (c + math.sqrt(c * c - 4.0 * mu)) / 2.0


def threshold_map(n, lr, wd, mu, sharpness=2.0, peak=50.0):
    """The norm decays at the free rate; when the effective LR lr/rho^2 reaches the
    heavy-ball stability threshold 2 (1 + mu - lr wd)/S it jumps back to rho^2 = peak * lr
    (the scale symmetry: rho^2 scales with lr)."""
    a2 = _heavy_ball_decay(lr, wd, mu) ** 2
    thr = 2.0 * (1.0 + mu - lr * wd) / sharpness
    r2, x, ev = np.empty(n), peak * lr, []
    for t in range(n):
        if lr / x >= thr:
            ev.append(t - 1)
            x = peak * lr
        r2[t] = x
        x *= a2
    meta = {"lr": lr, "wd": wd, "momentum": mu}
    return Trajectory(step=np.arange(n), rho=np.sqrt(r2), loss=np.full(n, 0.1), meta=meta), ev


def test_predict_momentum_matches_a_rerun_at_that_momentum():
    # a plain run predicts a heavy-ball one: the norm falls at the heavy-ball rate to the
    # heavy-ball threshold (higher effective LR, so a lower norm: a longer fall)
    plain, _ = threshold_map(40000, 0.5, 0.01, 0.0)
    heavy, ev = threshold_map(20000, 0.1, 0.01, 0.9)
    r = analyze(plain, predict_lr=0.1, predict_wd=0.01, predict_momentum=0.9)
    assert r.predict_momentum == 0.9
    assert r.predicted_period_method.startswith("siflow.predict.transfer_period")
    true_t = float(np.median(np.diff(ev)))
    assert abs(r.predicted_period_at - true_t) <= 1.0  # steps are whole numbers
    # hand value: (T0 delta0 + ln(thr(0.9)/thr(0))/2) / delta(0.9)
    d0 = -math.log(1 - 0.005)
    d9 = -math.log(_heavy_ball_decay(0.1, 0.01, 0.9))
    want = (r.period_median * d0 + 0.5 * math.log((1.9 - 1e-3) / (1 - 5e-3))) / d9
    assert r.predicted_period_at == pytest.approx(want, rel=1e-9)
    # the decay law alone, without the threshold shift, would be 16% short
    assert r.period_median * d0 / d9 < 0.9 * true_t


def test_predict_momentum_of_the_log_itself_keeps_the_calibrated_path():
    traj, _ = threshold_map(40000, 0.5, 0.01, 0.0)
    a = analyze(traj, predict_lr=0.25)
    b = analyze(traj, predict_lr=0.25, predict_momentum=0.0)
    assert b.predicted_period_at == a.predicted_period_at
    assert b.predicted_period_method == a.predicted_period_method


def test_predict_momentum_needs_the_sgd_family_and_a_valid_value():
    traj, _ = threshold_map(40000, 0.5, 0.01, 0.0)
    with pytest.raises(ValueError, match=r"predict_momentum must be in \[0, 1\)"):
        analyze(traj, predict_momentum=1.5)
    r = analyze(traj, optimizer="adamw", predict_momentum=0.9)
    assert r.predicted_period_at is None
    assert any("predict_momentum: n/a for adamw" in n for n in r.notes)
    few = traj[:900]  # two events: too few to measure the decay between them
    r = analyze(few, predict_momentum=0.9)
    assert r.predicted_period_at is None
    assert any(
        n.startswith("predict_momentum: n/a (the calibration run has 2 destabilizations")
        and "need at least 3; run it longer)" in n
        for n in r.notes
    )


def test_to_dict_has_required_fields_and_is_json():
    traj, _ = burst_map(10000, 0.1, 5e-3)
    d = analyze(traj).to_dict()
    assert REQUIRED <= set(d)
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["n_events"] == len(back["periods"]) + 1
    assert back["norm_predicted"] is None  # no grad_norm_sphere in this log
    assert any("grad_norm_sphere" in n for n in back["notes"])


def test_missing_hyperparameters_are_notes_not_errors():
    traj, _ = burst_map(10000, 0.1, 5e-3)
    bare = Trajectory(step=traj.step, rho=traj.rho)
    r = analyze(bare)
    assert r.n_events == len(find_events(traj))
    assert r.decay_rate_predicted is None and r.angular_update_predicted is None
    assert any("lr and wd" in n for n in r.notes)
    # explicit arguments override the metadata
    r2 = analyze(bare, lr=0.1, wd=5e-3)
    assert r2.decay_rate_predicted == pytest.approx(-math.log1p(-5e-4))


def test_argument_errors():
    traj, _ = burst_map(1000, 0.1, 5e-3)
    with pytest.raises(ValueError, match="momentum"):
        analyze(traj, momentum=1.5)
    with pytest.raises(ValueError, match="lr\\*wd"):
        analyze(traj, lr=10.0, wd=0.5)
    with pytest.raises(ValueError, match="sharpness"):
        analyze(traj, sharpness=-1.0)
    with pytest.raises(ValueError, match="Trajectory"):
        analyze([1, 2, 3])
    with pytest.raises(ValueError, match="OverlayResult"):
        draw(traj, {"n_events": 0}, None)


def test_draw_puts_predictions_on_the_figure(tmp_path):
    traj, _ = burst_map(30000, 0.1, 5e-3)
    r = analyze(traj, sharpness=10.0)
    lines = theory_lines(r, traj)
    segs = [ln for ln in lines if isinstance(ln, Segment)]
    assert len(segs) == r.n_events
    assert all(s.slope == -r.decay_rate_predicted for s in segs)
    assert any(isinstance(ln, HLine) and ln.y == r.elr_threshold for ln in lines)
    fig = draw(traj, r, tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    # only rho (and elr = lr/rho^2 from it) in this log: two panels; more than six
    # events: a close-up column of the last three periods
    assert len(fig.get_axes()) == 4
    assert fig.get_axes()[0].get_ylabel().startswith("weight norm")
    assert fig.get_axes()[2].get_ylabel().startswith("effective LR")
    assert isinstance(r, OverlayResult)


# ------------------------------------------------------ siflow.simulate acceptance
@pytest.fixture(scope="module")
def periodic_sim():
    from siflow.simulate import simulate

    return simulate("logistic", lr=0.1, wd=1e-3, steps=60000, seed=0)


@pytest.fixture(scope="module")
def equilibrium_sim():
    from siflow.simulate import simulate

    return simulate("logistic", lr=0.1, wd=1e-3, steps=60000, seed=0, batch=16)


def _plain_csv(traj, path):
    """A generic training-log CSV (not siflow's format) with common column names."""
    names = {
        "loss": "train_loss",
        "rho": "weight_norm",
        "grad_norm_sphere": "grad_norm_sphere",
        "angular_update": "angular_update",
    }
    cols = [c for c in names if traj.has(c)]
    with open(path, "w") as fh:
        fh.write("step," + ",".join(names[c] for c in cols) + "\n")
        for i, s in enumerate(traj.step):
            fh.write(f"{s}," + ",".join(repr(float(traj.column(c)[i])) for c in cols) + "\n")
    return path


def test_periodic_simulation_overlay_agrees_with_periods(periodic_sim, tmp_path):
    traj = periodic_sim
    ev = find_events(traj)
    r = analyze(traj)
    assert r.regime == "periodic" and r.n_events >= 8
    np.testing.assert_array_equal(r.event_steps, ev.steps)
    np.testing.assert_array_equal(r.periods, ev.periods)
    # round trips: siflow CSV via io.read, and a generic CSV with lr/wd passed
    back = io.read(traj.save(tmp_path / "sim.csv"))
    r_back = analyze(back)
    assert r_back.periods == r.periods
    plain = io.read(_plain_csv(traj, tmp_path / "plain.csv"))
    r_plain = analyze(plain, lr=0.1, wd=1e-3)
    assert r_plain.periods == r.periods
    # the decay between events is the weight-decay law
    assert r.decay_rate_measured == pytest.approx(r.decay_rate_predicted, rel=0.01)
    # the decay law with the measured norm ratio and rise reproduces the period
    assert r.predicted_period == pytest.approx(r.period_median, rel=0.03)


def test_equilibrium_simulation_angle_within_3_percent(equilibrium_sim, tmp_path):
    traj = equilibrium_sim
    r = analyze(traj)
    assert r.regime == "equilibrium"
    assert r.angular_update_rms == pytest.approx(r.angular_update_predicted, rel=0.03)
    assert r.norm_mean == pytest.approx(r.norm_predicted, rel=0.03)
    back = analyze(io.read(traj.save(tmp_path / "eq.csv")))
    assert back.angular_update_rms == r.angular_update_rms
    assert back.n_events == r.n_events == len(find_events(traj))


def test_log_spaced_record_of_a_simulation_gives_the_same_periods(periodic_sim):
    # keep only rows at log-spaced steps, as the seed paper's code saves them
    traj = periodic_sim
    rows = np.unique(np.geomspace(1, len(traj) - 1, 2000).astype(np.int64))
    sparse = traj[rows]
    dense = find_events(traj)
    r = analyze(sparse)
    assert r.n_events == len(dense)
    gaps = np.diff(rows)
    for s_sparse, s_dense, s_peak in zip(r.event_steps, dense.steps, dense.peak_steps, strict=True):
        k = np.searchsorted(rows, s_dense, side="right") - 1
        gap = int(gaps[min(k, gaps.size - 1)])
        # no earlier than one logging interval before the dense onset, and still on the rise:
        # a sparse log may first see the jump at a row inside the ~20-step rise, never after
        # the peak (where it would mark the wrong end of the burst)
        assert s_dense - gap <= s_sparse < s_peak
    assert r.period_median == pytest.approx(dense.period_median, rel=0.05)
    assert r.decay_rate_measured == pytest.approx(r.decay_rate_predicted, rel=0.02)


def test_momentum_equilibrium_angle_and_no_false_events():
    # heavy ball mu = 0.9 with minibatch noise: the norm wanders by more than 5%, but
    # none of it is a destabilization; Delta* from cos D = 1 - lr wd / (1 + mu)
    from siflow.simulate import simulate

    traj = simulate("logistic", lr=0.1, wd=1e-3, steps=60000, seed=0, momentum=0.9, batch=16)
    r = analyze(traj)
    assert r.momentum == 0.9
    assert r.n_events == 0 and r.regime == "equilibrium"
    assert r.angular_update_predicted == pytest.approx(math.acos(1 - 1e-4 / 1.9), rel=1e-9)
    assert r.angular_update_rms == pytest.approx(r.angular_update_predicted, rel=0.03)
    # zero-gradient decay of heavy ball: larger root of a^2 - (1.9 - 1e-4) a + 0.9
    alpha = ((1.9 - 1e-4) + math.sqrt((1.9 - 1e-4) ** 2 - 3.6)) / 2
    assert r.decay_rate_predicted == pytest.approx(-math.log(alpha), rel=1e-9)


def test_threshold_and_calibrated_prediction_from_sharpness_min(periodic_sim):
    traj = periodic_sim
    s_min = traj.meta["sharpness_min"]
    r = analyze(traj, predict_lr=0.2, predict_wd=5e-4)
    assert r.sharpness == s_min
    assert r.elr_threshold == pytest.approx(2 * (1 - 1e-4) / s_min, rel=1e-14)
    assert r.critical_norm == pytest.approx(math.sqrt(0.1 / r.elr_threshold), rel=1e-14)
    # the minimum loses stability past the threshold: the ELR at each event exceeds it
    assert min(r.elr_at_events) > r.elr_threshold
    assert r.predicted_period_method.startswith("siflow.predict")
    # same lr*wd: the scale symmetry returns the calibration run's period
    assert r.predicted_period_at == pytest.approx(r.period_median, rel=0.05)


def test_sparse_sharpness_uses_the_last_measurement_before_each_event():
    from siflow.overlay import _sharpness_at_events
    from siflow.periods import Events

    n = 100
    sharp = np.full(n, np.nan)
    sharp[[10, 40, 70]] = [5.0, 7.0, 9.0]  # measured every 30 rows; events fall between
    traj = Trajectory(step=np.arange(n), sharpness_sphere=sharp)
    index = np.array([45, 75])
    empty = np.zeros(2)
    events = Events(
        steps=index,
        index=index,
        periods=np.diff(index).astype(float),
        rho_before=empty,
        rho_after=empty,
        elr_before=empty,
        elr_after=empty,
        peak_index=index,
        peak_steps=index,
        signal="rho",
        threshold=0.1,
    )
    # last values before rows 45 and 75 are 7 and 9: median 8 (the run-wide median is 7)
    assert _sharpness_at_events(traj, events) == 8.0


def test_an_empty_trajectory_is_named():
    # numpy's "zero-size array to reduction operation maximum" surfaced instead
    empty = Trajectory(
        step=np.zeros(0, dtype=np.int64), rho=np.zeros(0), meta={"lr": 0.1, "wd": 1e-3}
    )
    with pytest.raises(ValueError, match="no rows"):
        analyze(empty)
