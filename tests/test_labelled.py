"""The event tools on the labelled set of real training runs (analysis/data/labelled).

The logs were recorded with siflow.torch_probe.SIRecorder from small scale-invariant
networks (MLP, ConvNet, residual network) on digits and mnist1d, and every event list in
labels.json was checked by eye against the plotted norm and loss curves. The targets are
the project's acceptance bounds; a missed target is an expected failure whose reason
gives the measured number (``python analysis/labelled_runs.py evaluate``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow.periods import find_events
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "analysis" / "data" / "labelled"


def _script():
    spec = importlib.util.spec_from_file_location(
        "labelled_runs", ROOT / "analysis/labelled_runs.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def labelled():
    mod = _script()
    return mod, mod.load_logs(DATA), mod.load_labels(DATA / "labels.json")


def test_labelled_set_covers_the_grid(labelled):
    mod, trajs, labels = labelled
    runs = {r.name: r for r in mod.make_runs()}
    assert set(labels) == set(trajs) == set(runs)
    assert {r.data for r in runs.values()} == {"digits", "mnist1d"}
    assert {r.net for r in runs.values()} == {"mlp", "convnet", "resnet"}
    assert {r.batch for r in runs.values()} == {0, 128}
    assert {r.momentum for r in runs.values()} == {0.0, 0.9}
    lrwd = [r.lr * r.wd for r in runs.values()]
    assert min(lrwd) == pytest.approx(1e-3) and max(lrwd) == pytest.approx(1e-2)
    size = sum(p.stat().st_size for p in DATA.iterdir())
    assert size < 8e6  # small logs


def test_labels_are_norm_jumps_with_loss_spikes_in_the_raw_logs(labelled):
    _, trajs, labels = labelled
    n = 0
    for name, steps in labels.items():
        traj = Trajectory.load(DATA / f"{name}.npz")
        for s in steps:
            i = int(np.searchsorted(traj.step, s))
            assert traj.step[i] == s  # a logged row
            # the norm rises within 20 rows and the loss spikes over its level before
            assert np.max(traj.rho[i + 1 : i + 20]) > 1.02 * traj.rho[i]
            before = np.median(traj.loss[max(0, i - 20) : i + 1])
            assert np.max(traj.loss[i : i + 20]) > 2 * before  # the rule: about 2x or more
            n += 1
    assert n > 100


def test_detector_on_every_kth_row_of_the_labelled_logs(labelled):
    mod, trajs, labels = labelled
    name = "digits_mlp_gd_lr1_wd0.01"
    raw = np.load(DATA / f"{name}.npz", allow_pickle=False)
    thin = mod.every_kth_row(trajs[name], 5)
    np.testing.assert_array_equal(thin.step, raw["col_step"][::5])
    np.testing.assert_array_equal(thin.rho, raw["col_rho"][::5])
    # rows per cycle: < 10, 10-20, 20-40, >= 40
    assert [mod._rows_per_cycle_bin(v) for v in (9.9, 10, 19.9, 20, 39.9, 40, 1e9)] == [
        "< 10", "10-20", "10-20", "20-40", "20-40", ">= 40", ">= 40"
    ]  # fmt: skip
    rows = mod.detector_on_sparse_logs(trajs, labels, mod.load_labels(key="ambiguous"), [1, 2])
    full = mod.evaluate_detector(trajs, labels)
    assert {k: rows[0][k] for k in ("tp", "fp", "fn")} == {k: full[k] for k in ("tp", "fp", "fn")}
    one_label = [n for n, v in labels.items() if len(v) < 2]
    for row in rows:  # the bins hold every run with a period
        binned = {c: sum(b[c] for b in row["bins"].values()) for c in ("tp", "fp", "fn")}
        left = mod.detector_on_sparse_logs(
            {n: trajs[n] for n in one_label}, labels, mod.load_labels(key="ambiguous"),
            [row["every"]],
        )[0]  # fmt: skip
        assert {c: binned[c] + left[c] for c in binned} == {c: row[c] for c in binned}
    # at every other row the cycles keep 10 or more rows and nearly every event is found
    assert rows[1]["tp"] >= 0.95 * (rows[1]["tp"] + rows[1]["fn"])


def test_detector_recall_and_precision_on_the_labelled_set(labelled):
    mod, trajs, labels = labelled
    res = mod.evaluate_detector(trajs, labels)
    assert res["recall"] >= 0.95
    assert res["precision"] >= 0.95


@pytest.mark.parametrize("k", [3, 16])
def test_labelled_events_do_not_depend_on_the_time_unit(labelled, k):
    _, trajs, _ = labelled
    for name in ("digits_convnet_sgd_lr1_wd0.01", "mnist1d_resnet_gd_lr1_wd0.01"):
        t = trajs[name]
        base = find_events(t)
        scaled = Trajectory(step=t.step * k, rho=t.rho, loss=t.loss, meta=t.meta)
        e = find_events(scaled)
        np.testing.assert_array_equal(e.index, base.index)
        np.testing.assert_array_equal(e.steps, k * base.steps)


def test_results_table_matches_a_fresh_evaluation(labelled, tmp_path):
    mod, trajs, labels = labelled
    pred = mod.evaluate_prediction(trajs, labels)
    for row in pred["runs"]:
        # every error is the prediction against the median labelled period of the run
        steps = labels[row["run"]]
        assert row["measured"] == float(np.median(np.diff(steps)))
        assert row["error"] == pytest.approx(row["predicted"] / row["measured"] - 1, rel=1e-12)
    json.dumps(pred)


@pytest.mark.parametrize("position", [0.25, 0.9])
def test_forecast_cuts_at_a_position_of_the_cycle(labelled, position):
    mod, trajs, labels = labelled
    name = "digits_mlp_gd_lr1_wd0.01"
    truth, steps = labels[name], trajs[name].step
    cuts = mod.forecast_cuts(trajs[name], truth, position=position)
    assert len(cuts) == len(truth) - 2
    for k, c in enumerate(cuts, start=1):
        a, b = truth[k], truth[k + 1]
        # the log ends at its last row at or before the cut point of the cycle
        assert c["cut"] == steps[steps <= a + int(position * (b - a))][-1]
        assert (c["true"], c["cycle"]) == (b, b - a)
    with pytest.raises(ValueError, match="position"):
        mod.forecast_cuts(trajs[name], truth, position=1.0)


# ----------------------------------------------------------------- targets
# The acceptance bounds, measured on the labelled set. A bound the tools miss today is an
# expected failure (strict: it fails loudly once the bound is met, so the mark goes).
PREDICTION_MISS = {"GD", "momentum"}  # measured: python analysis/labelled_runs.py evaluate
FORECAST_MISSES = True


@pytest.fixture(scope="module")
def prediction(labelled):
    mod, trajs, labels = labelled
    return mod.evaluate_prediction(trajs, labels)["summary"]


@pytest.mark.parametrize(
    ("kind", "median_bound", "worst_bound"),
    [
        pytest.param(
            kind,
            median,
            worst,
            marks=pytest.mark.xfail(
                kind in PREDICTION_MISS,
                strict=True,
                reason="period transfer misses this bound on the labelled set",
            ),
        )
        for kind, median, worst in (
            ("GD", 0.10, 0.15),
            ("SGD", 0.20, None),
            ("momentum", 0.20, None),
        )
    ],
)
def test_period_prediction_bounds(prediction, kind, median_bound, worst_bound):
    s = prediction[kind]
    assert s["median_abs"] <= median_bound
    if worst_bound is not None:
        assert s["worst_abs"] <= worst_bound


def test_labelled_events_by_hand():
    mod = _script()
    rho = np.array([4.0, 2.0, 1.0, 3.0, 2.0, 1.0, 5.0, 2.0, 1.0, 1.0])
    traj = Trajectory(step=np.arange(10) * 10, rho=rho)
    ev = mod.labelled_events(traj, [20, 50])
    np.testing.assert_array_equal(ev.index, [2, 5])
    np.testing.assert_array_equal(ev.periods, [30.0])
    np.testing.assert_array_equal(ev.peak_index, [3, 6])  # largest rho up to the next event
    np.testing.assert_array_equal(ev.rho_after / ev.rho_before, [3.0, 5.0])


def test_calibration_on_the_labels_uses_the_labelled_periods(labelled):
    # the residual network's calibration run: the detector counts three high-loss bursts
    # as events (median period 244 steps); its labels give 329. Calibrated on the labels,
    # every prediction from that run scales by the ratio of the calibrated periods, up to
    # the decay speed measured between the events
    from siflow.periods import find_events
    from siflow.predict import transfer_period

    mod, trajs, labels = labelled
    cal_name = "digits_resnet_gd_lr0.5_wd0.01"
    cal, truth = trajs[cal_name], labels[cal_name]
    on_labels = transfer_period(cal, 1.0, 0.01, events=mod.labelled_events(cal, truth))
    detected = transfer_period(cal, 1.0, 0.01, events=find_events(cal))
    assert on_labels.details["calibration_period"] == np.median(np.diff(truth))
    assert detected.details["calibration_period"] < 0.8 * np.median(np.diff(truth))
    rows = mod.evaluate_prediction(trajs, labels, "labels")["runs"]
    row = next(r for r in rows if r["run"] == "digits_resnet_gd_lr1_wd0.01")
    assert row["predicted"] == pytest.approx(on_labels.period, rel=1e-12)
    with pytest.raises(ValueError, match="calibrate_on"):
        mod.evaluate_prediction(trajs, labels, "oracle")


@pytest.mark.xfail(FORECAST_MISSES, strict=True, reason="forecast misses the 80% bound")
def test_forecast_within_15pct_of_the_cycle_in_80pct_of_cuts(labelled):
    mod, trajs, labels = labelled
    res = mod.evaluate_forecast(trajs, labels, variants=False)
    assert res["n_cuts"] >= 50
    assert res["fraction"] >= 0.80


def test_loss_scaled_threshold_spreads_less_than_the_effective_lr(labelled):
    # raw values of the committed logs at the labelled events: elr*L varies less from
    # cycle to cycle than elr (S ~ L^beta for cross-entropy near a fitted minimum)
    mod, trajs, labels = labelled
    thr = mod.threshold_spread(trajs, labels)
    assert len(thr["runs"]) >= 30
    assert thr["median_sd_ln_elr_loss"] < 0.6 * thr["median_sd_ln_elr"]
    # and the logged sharpness falls with the loss within the decay phases, more slowly
    # than the separable limit S ~ L (docs/theory.md, "Forecast"): 0 < beta < 1
    slopes = np.array(thr["sharpness_loss_slopes"])
    assert slopes.size >= 10 and np.all((slopes > 0.0) & (slopes < 1.0))
    assert 0.3 < np.median(slopes) < 0.9
    name = next(iter(thr["runs"]))["run"]
    tr, steps = trajs[name], labels[name]
    idx = np.searchsorted(tr.step, steps)[1:]
    by_hand = np.std(np.log(tr.meta["lr"] / tr.rho[idx] ** 2) + np.log(tr.loss[idx - 1]))
    assert thr["runs"][0]["sd_ln_elr_loss"] == pytest.approx(by_hand, rel=1e-12)


def test_thresholds_alternate_from_cycle_to_cycle(labelled):
    # docs/theory.md, "Forecast": the effective LR at successive labelled events is
    # anti-correlated (a sequence without memory gives about -1/n +- 1/sqrt(n))
    mod, trajs, labels = labelled
    thr = mod.threshold_spread(trajs, labels)
    negative, counted = thr["negative_lag1_ln_elr"]
    assert counted >= 20 and negative >= 0.8 * counted
    assert thr["median_lag1_ln_elr"] < -0.3
    row = next(r for r in thr["runs"] if np.isfinite(r["lag1_ln_elr"]))
    tr, steps = trajs[row["run"]], labels[row["run"]]
    idx = np.searchsorted(tr.step, steps)[1:]
    d = np.log(tr.meta["lr"] / tr.rho[idx] ** 2)
    d = d - d.mean()
    assert row["lag1_ln_elr"] == pytest.approx(np.sum(d[:-1] * d[1:]) / np.sum(d * d), rel=1e-12)


def test_loss_scaled_forecast_beats_the_effective_lr_alone(labelled):
    mod, trajs, labels = labelled
    default = mod.evaluate_forecast(trajs, labels, variants=False)
    elr_only = mod.evaluate_forecast(trajs, labels, variants=False, threshold="elr", blend=1.0)
    assert default["n_cuts"] == elr_only["n_cuts"] >= 50
    assert default["fraction"] >= elr_only["fraction"] + 0.10


def test_decay_extrapolation_to_the_true_threshold_is_accurate(labelled):
    # the forecast's miss is the threshold level: with the true effective LR of the
    # coming event, the fitted decay of ln elr lands within 15% of the cycle in most cuts
    mod, trajs, labels = labelled
    orc = mod.oracle_threshold_forecast(trajs, labels)
    assert orc["n_cuts"] >= 50
    assert orc["fraction"] >= 0.75 and orc["median_abs_error"] <= 0.05


def test_hindsight_period_forecast_by_hand():
    mod = _script()
    # periods 100, 200, 100 (median 100). Cut 1: a=100, b=300, cut 200, a + 100 = 200 has
    # passed, so step 201: error -99/200. Cut 2: a=300, b=400, 300 + 100 = 400: error 0.
    res = mod.hindsight_period_forecast({"x": [0, 100, 300, 400], "too short": [0, 50]})
    assert res["n_cuts"] == 2 and res["within_15pct"] == 1
    assert res["fraction"] == 0.5
    assert res["median_abs_error"] == pytest.approx((99 / 200 + 0.0) / 2, rel=1e-12)


def test_periods_of_real_runs_scatter_too_much_for_a_period_forecast(labelled):
    # even the run's own median period, known in hindsight, lands within 15% of the
    # cycle in under half of the half-cycle cuts: a forecast that places the event one
    # typical period after the last cannot reach the 80% bound on these runs
    mod, trajs, labels = labelled
    res = mod.hindsight_period_forecast(labels)
    fc = mod.evaluate_forecast(trajs, labels, variants=False)
    assert res["n_cuts"] == fc["n_cuts"] >= 500
    assert res["fraction"] < 0.5


def test_committed_results_are_strict_json():
    # no NaN or Infinity tokens: any JSON parser reads the file (undefined values are null)
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    text = (ROOT / "analysis" / "data" / "labelled" / "results.json").read_text()
    res = json.loads(text, parse_constant=refuse)
    assert res["forecast"]["n_cuts"] >= 500


def test_interval_scores_by_hand():
    mod = _script()
    cuts = [
        {"interval": [90.0, 130.0], "true": 100, "cycle": 100},  # holds it, width 0.4
        {"interval": [110.0, 130.0], "true": 100, "cycle": 50},  # misses, width 0.4
        {"interval": [float("nan"), float("nan")], "true": 100, "cycle": 100},  # none
        {"interval": [0.0, 100.0], "true": 100, "cycle": 50},  # holds (closed), width 2
    ]
    cover, width = mod._interval_scores(cuts)
    assert cover == 0.5
    assert width == pytest.approx(0.4)
    # an open interval (a cycle already longer than its latest bound) holds what is later
    # than its earliest bound; its width is infinite
    cuts += [
        {"interval": [95.0, math.inf], "true": 100, "cycle": 100},  # holds
        {"interval": [105.0, math.inf], "true": 100, "cycle": 100},  # misses
    ]
    cover, width = mod._interval_scores(cuts)
    assert cover == pytest.approx(3 / 6)
    assert width == pytest.approx(2.0)  # median of 0.4, 0.4, 2, inf, inf


def test_sharpness_hovers_below_the_threshold_mid_cycle(labelled):
    # docs/theory.md, "Forecast": in the runs that log S, elr*S over the middle half of a
    # cycle sits below the threshold and S falls about as fast as elr rises
    mod, trajs, labels = labelled
    thr = mod.threshold_spread(trajs, labels)
    values, ratios = thr["mid_cycle_elr_s"], thr["mid_cycle_s_fall_over_elr_rise"]
    assert len(values) == len(ratios) >= 40
    assert 0.5 < np.median(values) < 1.0
    assert 0.8 < np.median(ratios) < 1.5
    # the first cycle of the first run that logs S, from the raw columns
    name = next(n for n in labels if trajs[n].sharpness_sphere is not None)
    tr, (a, b) = trajs[name], labels[name][:2]
    m = (tr.step >= a + 0.25 * (b - a)) & (tr.step <= a + 0.75 * (b - a))
    m &= np.isfinite(tr.sharpness_sphere)
    lr, wd = tr.meta["lr"], tr.meta["wd"]
    by_hand = np.median(lr / tr.rho[m] ** 2 * tr.sharpness_sphere[m]) / (2 * (1 - lr * wd))
    assert values[0] == pytest.approx(by_hand, rel=1e-12)


def test_seed_runs_repeat_the_cycling_gd_configurations():
    mod = _script()
    runs = mod.seed_runs([1, 3])
    base = {r.name: r for r in mod.make_runs()}
    assert {r.seed for r in runs} == {1, 3}
    for r in runs:
        b = base[mod._base_name(r.name)]
        assert r.name == f"{b.name}_seed{r.seed}"
        assert (r.lr, r.wd, r.steps, r.every, r.batch, r.momentum) == (
            b.lr,
            b.wd,
            b.steps,
            b.every,
            0,
            0.0,
        )
        assert b.family in ("digits_mlp", "digits_convnet", "digits_resnet", "mnist1d_mlp")
    assert len(runs) == 2 * (5 + 3 + 3 + 5)
    with pytest.raises(ValueError, match="seed 0 is the labelled set"):
        mod._seed_list("0,1")
    with pytest.raises(ValueError, match="comma-separated integers"):
        mod._seed_list("1,x")


def test_seed_evaluation_of_identical_logs_has_no_spread(tmp_path):
    # the digits MLP's seed-0 logs stored again as "seed 1": every configuration's period
    # is the same at both seeds, and the transfer from either calibration is the same
    import shutil

    mod = _script()
    for run in mod.seed_runs([1]):
        if run.family == "digits_mlp":
            shutil.copy(DATA / f"{mod._base_name(run.name)}.npz", tmp_path / f"{run.name}.npz")
    res = mod.evaluate_seeds(tmp_path, [1])
    mlp = {k: v for k, v in res["configs"].items() if k.startswith("digits_mlp")}
    assert len(mlp) == 5
    for name, row in mlp.items():
        p0, p1 = row["periods"][0], row["periods"][1]
        if np.isfinite(p0):
            assert p0 == p1 and row["spread"] == 0.0
            events = find_events(Trajectory.load(DATA / f"{name}.npz"))
            assert p0 == float(np.median(events.periods))
    by_seed = {
        s: sorted((r["target"], r["target_seed"], r["error"]) for r in rows)
        for s, rows in res["transfer"].items()
    }
    mlp_rows = {
        s: [r for r in rows if r[0].startswith("digits_mlp")] for s, rows in by_seed.items()
    }
    assert mlp_rows["0"] == mlp_rows["1"] and len(mlp_rows["0"]) >= 6


def test_rescaled_start_is_the_twin_run_until_the_cycles_diverge(labelled):
    # analysis/data/seeds: GD at lr=1, wd=0.01 from sqrt(2) w0 is, by scale invariance,
    # GD at lr=0.5, wd=0.02 from w0 in the weights w*sqrt(2) (and the reverse from w0/sqrt(2)).
    # The raw logs follow that until the runs part; then the periods of the exactly
    # equivalent runs differ by more than the 15% bound of the period prediction
    mod, trajs, labels = labelled
    seeds_data = ROOT / "analysis" / "data" / "seeds"
    pairs = 0
    other = {"lr1_wd0.01": "lr0.5_wd0.02", "lr0.5_wd0.02": "lr1_wd0.01"}
    for run in mod.init_scaled_runs():
        family, _, config = run.name.rpartition("_init")[0].partition("_gd_")
        twin_name = f"{family}_gd_{other[config]}"
        rescaled, twin = Trajectory.load(seeds_data / f"{run.name}.npz"), trajs[twin_name]
        assert rescaled.rho[0] / twin.rho[0] == pytest.approx(run.init_scale, rel=1e-6)
        assert rescaled.loss[0] == pytest.approx(twin.loss[0], rel=1e-3)
        if run.family == "digits_mlp":
            # from sqrt(2) w0 the MLP keeps to its twin for its first 200 steps; from
            # w0/sqrt(2) it departs by 0.1% in rho within five steps, then holds
            ratio = rescaled.rho[:201] / twin.rho[:201]
            up = run.init_scale > 1.0
            assert np.allclose(ratio, run.init_scale, rtol=1e-4 if up else 2e-3)
            if up:
                assert np.allclose(rescaled.loss[:201], twin.loss[:201], rtol=1e-2)
            assert not np.allclose(rescaled.rho[1000:], run.init_scale * twin.rho[1000:], rtol=0.1)
        if run.family == "digits_resnet":
            mine = np.median(find_events(rescaled).periods)
            theirs = np.median(np.diff(labels[twin_name]))
            assert abs(mine / theirs - 1.0) > 0.15
        pairs += 1
    assert pairs == 8


def test_exact_si_runs_differ_from_the_grid_only_in_eps_and_seed():
    mod = _script()
    grid = {r.name: r for r in mod.make_runs()}
    runs = mod.exact_si_runs([1, 2])
    assert len(runs) == 6
    for r in runs:
        base = grid[r.name.rpartition("_seed")[0]]
        assert r.bn_eps == mod.EXACT_SI_EPS and base.bn_eps == 1e-5
        assert r.lr * r.wd == pytest.approx(1e-2) and r.seed in (0, 1, 2)
        assert {**mod.asdict(r), "name": base.name, "seed": 0, "bn_eps": 1e-5} == mod.asdict(base)


def test_bn_eps_reaches_every_batchnorm():
    import torch

    mod = _script()
    for net in ("mlp", "convnet", "resnet"):
        model = mod.build(net, "digits", torch, bn_eps=1e-30)
        eps = [
            m.eps for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert len(eps) >= 3 and set(eps) == {1e-30}
        default = mod.build(net, "digits", torch)
        assert {m.eps for m in default.modules() if hasattr(m, "eps")} == {1e-5}


@pytest.mark.parametrize(("bn_eps", "departs"), [(1e-5, True), (1e-30, False)])
def test_rescaled_start_follows_its_twin_exactly_only_without_bn_eps(tmp_path, bn_eps, departs):
    # docs/theory.md, "How far a period reproduces": GD at lr=0.5, wd=0.02 from w0/sqrt(2)
    # is GD at lr=1, wd=0.01 from w0 in the weights w*sqrt(2). BatchNorm's default eps
    # breaks the equivalence within a few steps (0.07% in rho); an eps of 1e-30 keeps it
    from dataclasses import replace

    mod = _script()
    grid = {r.name: r for r in mod.make_runs()}
    a = replace(grid["digits_mlp_gd_lr1_wd0.01"], steps=6, bn_eps=bn_eps)
    b = replace(
        grid["digits_mlp_gd_lr0.5_wd0.02"],
        name="rescaled",
        steps=6,
        bn_eps=bn_eps,
        init_scale=np.sqrt(0.5),
    )
    mod.train(a, tmp_path)
    mod.train(b, tmp_path)
    ta, tb = Trajectory.load(tmp_path / f"{a.name}.npz"), Trajectory.load(tmp_path / "rescaled.npz")
    gap = np.max(np.abs(tb.rho / ta.rho / np.sqrt(0.5) - 1.0))
    if departs:
        assert gap > 3e-4
    else:
        assert gap < 1e-5


def test_seed_figure_from_the_committed_tables(tmp_path):
    mod = _script()
    res = json.loads((ROOT / "analysis" / "data" / "seeds" / "seeds.json").read_text())
    assert res["floor"]["n_pairs"] == 92
    path = tmp_path / "period_seeds.png"
    mod.draw_seeds(res, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["period_seeds.png"]


def test_median_jump_by_hand():
    mod = _script()
    rho = np.array([4.0, 2.0, 1.0, 3.0, 2.0, 1.0, 5.0, 2.0, 1.0, 1.0])
    traj = Trajectory(step=np.arange(10) * 10, rho=rho)
    # events at steps 30, 60, 90: cycles [30, 60) and [60, 90); the first is left out
    assert mod.median_jump(traj, [30, 60, 90]) == pytest.approx(np.log(5.0 / 1.0), rel=1e-12)
    # two events: the one cycle, max rho 3 over rho 1 before the event
    assert mod.median_jump(traj, [30, 60]) == pytest.approx(np.log(3.0), rel=1e-12)
    assert np.isnan(mod.median_jump(traj, [30]))


def test_transfer_errors_follow_the_norm_jump(labelled):
    # the transfer holds the calibration's fall of ln rho per cycle; runs whose norm jumps
    # differently per event (SGD noise, momentum) are missed by as much
    mod, trajs, labels = labelled
    pred = mod.evaluate_prediction(trajs, labels)
    assert pred["jumps"]["n"] >= 25
    assert pred["jumps"]["correlation"] > 0.8
    row = next(r for r in pred["runs"] if r["run"] == "digits_convnet_sgdmom_lr0.1_wd0.01")
    tr, steps = trajs[row["run"]], labels[row["run"]]
    rows = np.searchsorted(tr.step, steps)
    by_hand = [
        np.log(tr.rho[a:b].max() / tr.rho[a - 1]) for a, b in zip(rows[:-1], rows[1:], strict=True)
    ]
    assert row["jump"] == pytest.approx(np.median(by_hand[1:]), rel=1e-12)
    assert row["jump"] > 2.0 * row["jump_calibration"]


def test_a_log_with_too_few_rows_per_cycle_is_told_how_often_to_record(labelled):
    # the mnist1d MLP's labelled periods: median 170 steps, in a log with a row per step
    from siflow.forecast import forecast_next_event
    from siflow.overlay import analyze
    from siflow.periods import ROWS_PER_CYCLE, resolution_note

    mod, trajs, labels = labelled
    name = "mnist1d_mlp_gd_lr1_wd0.01"
    assert np.median(np.diff(labels[name])) == 170
    full = trajs[name]
    assert np.all(np.diff(full.step) == 1)
    assert resolution_note(full, 170.0) is None
    thin = mod.every_kth_row(full, 10)  # a row every 10 steps: 17 rows per cycle
    note = resolution_note(thin, 170.0)
    assert ROWS_PER_CYCLE == 20
    assert "a row every 10 steps" in note and "17 rows per cycle" in note
    assert "record every 8 steps or more often" in note  # floor(170 / 20)
    assert resolution_note(mod.every_kth_row(full, 8), 170.0) is None  # 21.25 rows
    assert resolution_note(full, 15.0) is None  # a row at every step: no finer recording
    by_epoch = Trajectory(step=full.step[:40], rho=full.rho[:40], meta={"time_unit": "epoch"})
    assert "several times per epoch" in resolution_note(by_epoch, 12.0)
    assert "record every 2 epochs" in resolution_note(by_epoch[::4], 40.0)  # 10 rows
    # the overlay and the forecast say it on the thinned log, not on the full one
    lr, wd = 1.0, 0.01
    assert not any("rows per cycle" in n for n in analyze(full, lr=lr, wd=wd).notes)
    assert any("rows per cycle" in n for n in analyze(thin, lr=lr, wd=wd).notes)
    cut = thin[: len(thin) * 3 // 4]
    assert "rows per cycle" in forecast_next_event(cut, lr=lr, wd=wd).details["resolution_note"]
    whole = forecast_next_event(full[: len(full) * 3 // 4], lr=lr, wd=wd)
    assert "resolution_note" not in whole.details
