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
