"""forecast: the next destabilization from a log so far.

Ground truth: the exact norm recursion of docs/theory.md section 1 with a threshold
burst model (the generator of tests/test_periods.py), whose event steps are known, and
the committed labelled logs read as files.
"""

import json
import math
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from siflow.forecast import Forecast, forecast_next_event
from siflow.periods import find_events
from siflow.trajectory import Trajectory

LR, WD = 0.1, 5e-3


def jump_map(n=6000, x=2e-3, factor=2.0, sharp=None):
    """rho^2 decays by (1-x)^2 per step and jumps by ``factor`` once below 1."""
    r2 = np.empty(n)
    loss = np.full(n, 1e-3)
    v, events = factor * 0.999, []
    for t in range(n):
        if v < 1.0:
            events.append(t - 1)
            v *= factor
            loss[t : t + 3] = 1.0
        r2[t] = v
        v *= (1 - x) ** 2
    traj = Trajectory(step=np.arange(n), rho=np.sqrt(r2), loss=loss, meta={"lr": 1.0, "wd": x})
    return traj, np.asarray(events)


def test_forecast_of_an_exact_cycle_is_the_true_event():
    traj, ev = jump_map()
    # the period is ln(2) / (-2 ln(1 - x)) = 173.1 steps
    assert np.all(np.diff(ev)[1:] >= 172) and np.all(np.diff(ev)[1:] <= 174)
    for k in range(2, len(ev) - 1):
        cut = (ev[k] + ev[k + 1]) // 2
        for kw, method in (({"blend": 1.0}, "threshold"), ({}, "blend")):
            fc = forecast_next_event(traj[: cut + 1], **kw)
            assert fc.method == method and fc.n_events == k + 1
            assert abs(fc.next_event_step - ev[k + 1]) <= 1.5
            lo, hi = fc.next_event_interval
            assert lo <= fc.next_event_step <= hi
            assert fc.last_step == cut


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_forecast_is_invariant_to_the_scale_of_the_norm(scale):
    # only ln rho differences enter; rho^2 under- or overflows at these scales (the
    # effective LR was computed as lr/rho^2: a warning, an OverflowError, or NaN)
    traj, ev = jump_map()
    scaled = Trajectory(step=traj.step, rho=traj.rho * scale, loss=traj.loss, meta=traj.meta)
    cut = (ev[3] + ev[4]) // 2
    for kind in ("elr", "loss"):
        ref = forecast_next_event(traj[: cut + 1], threshold=kind)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = forecast_next_event(scaled[: cut + 1], threshold=kind)
        assert got.method == ref.method
        assert got.next_event_step == pytest.approx(ref.next_event_step, rel=1e-12)
        assert got.next_event_interval == pytest.approx(ref.next_event_interval, rel=1e-12)


def test_forecast_from_a_norm_logged_on_some_rows_only():
    # the norm every 10th row, the other rows NaN (the loss logged more often): the
    # extrapolation starts from the last logged norm (it started from the NaN of the
    # last row and gave NaN)
    traj, ev = jump_map()
    sparse_rho = np.where(traj.step % 10 == 0, traj.rho, np.nan)
    sparse = Trajectory(step=traj.step, rho=sparse_rho, loss=traj.loss, meta=traj.meta)
    cut = (ev[3] + ev[4]) // 2 + 5  # the last norm is 5 rows back
    fc = forecast_next_event(sparse[: cut + 1], threshold="elr", blend=1.0)
    assert fc.method == "threshold"
    # events are seen at the logged rows (at most 9 steps late): within 10 steps
    assert abs(fc.next_event_step - ev[4]) <= 10


def test_next_in_sequence_by_hand():
    from siflow.forecast import next_in_sequence

    alternating = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0]
    # mean 2, deviations -1, 1, ...: lag-1 autocorrelation -5/6, next 2 - 5/6
    assert next_in_sequence(alternating, "ar1") == pytest.approx(2.0 - 5.0 / 6.0, rel=1e-15)
    assert next_in_sequence(alternating) == 2.0  # the median
    assert next_in_sequence(alternating[:4], "ar1") == 2.0  # too few: the median
    assert next_in_sequence([2.0] * 6, "ar1") == 2.0  # no spread
    # a trend: positive autocorrelation, the next value above the mean
    assert next_in_sequence([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "ar1") > 3.5


def test_autoregressive_history_follows_alternating_cycles():
    # jumps alternately x2 and x4 in rho^2: periods alternate 173 / 347 steps; the median
    # of the earlier periods lies between them, the autoregression picks the next one
    x, n = 2e-3, 4000
    r2, v, events, k = np.empty(n), 1.9, [], 0
    for t in range(n):
        if v < 1.0:
            events.append(t - 1)
            v *= (2.0, 4.0)[k % 2]
            k += 1
        r2[t] = v
        v *= (1 - x) ** 2
    traj = Trajectory(step=np.arange(n), rho=np.sqrt(r2), meta={"lr": 1.0, "wd": x})
    ev = np.asarray(events)
    for j in range(5, len(ev) - 1):
        cut = (ev[j] + ev[j + 1]) // 2
        ar1 = forecast_next_event(traj[: cut + 1], blend=0.0, history="ar1")
        med = forecast_next_event(traj[: cut + 1], blend=0.0)
        cycle = ev[j + 1] - ev[j]
        err_ar1, err_med = (abs(f.next_event_step - ev[j + 1]) / cycle for f in (ar1, med))
        assert err_med > 0.2 and err_ar1 < err_med / 2
        if j >= 9:  # the fitted coefficient nears -1 as cycles accumulate
            assert err_ar1 < 0.1
    with pytest.raises(ValueError, match="history"):
        forecast_next_event(traj, history="mean")


def test_forecast_hand_value():
    # decay 1e-3 per step in ln rho from the peak; earlier thresholds rho = 1, 1.02, 0.98:
    # median threshold rho* = 1, so from rho_now the event is ln(rho_now)/1e-3 steps away
    x = []
    events = []
    start = 0.3
    for thr in [1.0, 1.02, 0.98]:
        n = int(round((start - math.log(thr)) / 1e-3))
        x += list(start - 1e-3 * np.arange(n + 1))
        events.append(len(x) - 1)
        start = math.log(thr) + 0.3
    x += list(start - 1e-3 * np.arange(120))
    x = np.array(x)
    loss = np.full(x.size, 1e-3)
    for e in events:
        loss[e + 1 : e + 3] = 1.0
    traj = Trajectory(
        step=np.arange(x.size), rho=np.exp(x), loss=loss, meta={"lr": 0.1, "wd": 0.01}
    )
    fc = forecast_next_event(traj, threshold="elr", blend=1.0)
    assert fc.n_events == 3
    # median threshold elr* = lr / 1**2; speed fitted on the phase: exactly 1e-3
    assert fc.details["decay_speed"] == pytest.approx(1e-3, rel=1e-9)
    thr = x[events]  # ln rho at the event rows: 0, ~ln 1.02, ~ln 0.98 (whole steps)
    assert fc.next_event_step == pytest.approx(x.size - 1 + (x[-1] - thr[0]) / 1e-3, abs=1e-6)
    lo, hi = fc.next_event_interval
    # the lowest threshold elr (the highest norm, ~1.02) is reached first
    assert lo == pytest.approx(x.size - 1 + (x[-1] - thr[1]) / 1e-3, abs=1e-6)
    assert hi == pytest.approx(x.size - 1 + (x[-1] - thr[2]) / 1e-3, abs=1e-6)


def test_forecast_uses_sharpness_when_logged():
    traj, ev = jump_map()
    k = 3
    cut = (ev[k] + ev[k + 1]) // 2
    part = traj[: cut + 1]
    # the sharpness halved in the current phase: the threshold elr doubles, the norm
    # must fall by a further ln(2)/2 in ln rho: (ln 2 / 2) / rate more steps
    s = np.ones(len(part))
    s[int(ev[k]) + 5 :] = 0.5
    with_s = Trajectory(
        step=part.step, rho=part.rho, loss=part.loss, sharpness_sphere=s, meta=part.meta
    )
    base = forecast_next_event(part, threshold="elr", blend=1.0).next_event_step
    fc = forecast_next_event(with_s, blend=1.0)
    assert fc.details["threshold_kind"] == "elr*S"
    no_s = forecast_next_event(with_s, use_sharpness=False, threshold="elr", blend=1.0)
    assert no_s.next_event_step == base
    rate = -math.log(1 - 2e-3)
    assert fc.next_event_step - base == pytest.approx(0.5 * math.log(2.0) / rate, rel=1e-6)


def loss_proxy_log(beta=0.5, gamma=1e-3, speed=1e-3):
    """Cycles of ln rho falling by ``speed`` per step and ln L by ``gamma`` per step.

    Each cycle ends where ``ln elr + beta ln L`` (the loss one row before the event)
    reaches the same level ``C``: with the loss at the events spread over a decade, the
    events satisfy ``S ~ L^beta`` exactly. Returns the log, the event rows, ``C`` and the
    rows of the current (fourth) phase.
    """
    lr, c = 0.1, 0.0
    ln_rho, ln_loss, events = [], [], []
    starts = [(0.30, -2.0), (0.50, -3.5), (0.20, -2.5)]  # (ln rho, ln L) after each jump
    for r0, l0 in starts:
        # ln elr(j) + beta ln L(j - 1) = C at the event row j of the phase
        # ln lr - 2 (r0 - speed j) + beta (l0 - gamma (j - 1)) = C
        j = int(
            np.ceil((c - math.log(lr) + 2 * r0 - beta * (l0 + gamma)) / (2 * speed - beta * gamma))
        )
        ln_rho += list(r0 - speed * np.arange(j + 1))
        ln_loss += list(l0 - gamma * np.arange(j + 1))
        events.append(len(ln_rho) - 1)
    cur = len(ln_rho)
    ln_rho += list(0.4 - speed * np.arange(300))
    ln_loss += list(-3.0 - gamma * np.arange(300))
    loss = np.exp(np.array(ln_loss))
    for e in events:
        loss[e + 1 : e + 3] = 1.0
    traj = Trajectory(
        step=np.arange(len(ln_rho)),
        rho=np.exp(np.array(ln_rho)),
        loss=loss,
        meta={"lr": lr, "wd": 0.01},
    )
    return traj, np.array(events), cur


def test_loss_exponent_is_the_least_squares_slope():
    from siflow.forecast import loss_exponent

    rng = np.random.default_rng(3)
    ln_l = rng.uniform(-6, -2, 8)
    ln_e = 0.3 - 0.6 * ln_l + rng.normal(0, 0.05, 8)
    assert loss_exponent(ln_e, ln_l) == pytest.approx(-np.polyfit(ln_l, ln_e, 1)[0], rel=1e-12)
    # clipped to [0, 1]; 1 (separable limit) with fewer than 3 events or no spread
    assert loss_exponent(-2.0 * ln_l, ln_l) == 1.0
    assert loss_exponent(0.5 * ln_l, ln_l) == 0.0
    assert loss_exponent(ln_e[:2], ln_l[:2]) == 1.0
    assert loss_exponent(ln_e, np.full(8, -3.0)) == 1.0


def test_forecast_loss_proxy_hand_value():
    traj, events, cur = loss_proxy_log()
    part = traj[: cur + 250]
    ev_rows = events.tolist()
    # the log's own events, and beta by an independent fit of the hand-built events
    lr = 0.1
    ln_elr_k = np.log(lr / part.rho[ev_rows] ** 2)
    ln_l_k = np.log(part.loss[np.array(ev_rows) - 1])
    beta = -np.polyfit(ln_l_k, ln_elr_k, 1)[0]
    assert beta == pytest.approx(0.5, abs=0.01)  # whole-step events: close to the design
    fc = forecast_next_event(part, blend=1.0, fit_fraction=0.5)
    assert fc.details["threshold_kind"] == "elr*L^beta"
    assert fc.n_events == 3
    assert fc.details["loss_exponent"] == pytest.approx(beta, rel=1e-9)
    # y = ln elr + beta ln L rises by 2 speed - beta gamma per step in the current phase
    y_k = ln_elr_k + beta * ln_l_k
    slope = 2e-3 - beta * 1e-3
    now = part.step[-1]
    y_now = math.log(lr) - 2 * math.log(part.rho[-1]) + beta * math.log(part.loss[-1])
    thr_step = now + (np.median(y_k) - y_now) / slope
    assert fc.details["trend"] == pytest.approx(slope, rel=1e-6)
    assert fc.next_event_step == pytest.approx(thr_step, rel=1e-9)
    lo, hi = fc.next_event_interval
    assert lo == pytest.approx(now + (y_k.min() - y_now) / slope, rel=1e-9)
    assert hi == pytest.approx(now + (y_k.max() - y_now) / slope, rel=1e-9)
    # the default blends it half and half with last event + median period
    period = ev_rows[-1] + np.median(np.diff(ev_rows))
    both = forecast_next_event(part)
    assert both.method == "blend"
    assert both.next_event_step == pytest.approx(0.5 * thr_step + 0.5 * period, rel=1e-9)
    assert both.next_event_interval[0] == pytest.approx(
        min(lo, ev_rows[-1] + np.min(np.diff(ev_rows))), rel=1e-9
    )


def test_loss_proxy_with_a_sparsely_logged_loss():
    # the loss on every 5th row only: the last logged loss before each event, the line
    # through the logged rows of the current phase
    traj, events, cur = loss_proxy_log()
    loss = np.full(len(traj), np.nan)
    loss[::5] = traj.loss[::5]
    sparse = Trajectory(step=traj.step, rho=traj.rho, loss=loss, meta=traj.meta)[: cur + 252]
    # the events of the fully logged run (the detector's own handling of sparse losses
    # is tested in test_periods)
    fc = forecast_next_event(sparse, events=find_events(traj[: cur + 252]), blend=1.0)
    before = (events - 1) // 5 * 5
    ln_elr_k = np.log(0.1 / traj.rho[events] ** 2)
    ln_l_k = np.log(traj.loss[before])
    beta = -np.polyfit(ln_l_k, ln_elr_k, 1)[0]
    assert fc.details["loss_exponent"] == pytest.approx(beta, rel=1e-9)
    y_k = ln_elr_k + beta * ln_l_k
    t_last = (cur + 251) // 5 * 5
    y_last = math.log(0.1) - 2 * math.log(traj.rho[t_last]) + beta * math.log(traj.loss[t_last])
    slope = 2e-3 - beta * 1e-3
    assert fc.next_event_step == pytest.approx(t_last + (np.median(y_k) - y_last) / slope, rel=1e-9)


def test_loss_proxy_leaves_an_overflowed_loss_row_out():
    # a held-out log whose loss exponent comes out 0 (beta * ln L = 0 * inf was NaN
    # with a RuntimeWarning): an inf loss in the current phase (a step that overflowed)
    # has no level, and the forecast is the one with that row blank
    path = Path(__file__).parent.parent / "analysis/data/heldout/cancer_bnaffine_gd_cosine.npz"
    part = Trajectory.load(path)[:2700]
    blank, overflow = part.loss.copy(), part.loss.copy()
    blank[-3], overflow[-3] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = forecast_next_event(replace(part, loss=overflow))
        same = forecast_next_event(replace(part, loss=blank))
    assert fc.details["loss_exponent"] == 0.0
    assert fc.next_event_step == same.next_event_step
    assert fc.next_event_interval == same.next_event_interval


def test_loss_proxy_waits_while_the_loss_falls_fastest():
    # ln L falling faster than ln elr rises: y falls, the threshold gives no estimate
    traj, events, cur = loss_proxy_log(gamma=1e-3)
    fast = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss.copy(), meta=traj.meta)
    fast.loss[cur + 5 :] = np.exp(-3.0 - 5e-3 * np.arange(len(traj) - cur - 5))
    fc = forecast_next_event(fast[: cur + 200])
    assert fc.method == "period"
    period = events[-1] + np.median(np.diff(events))
    assert fc.next_event_step == pytest.approx(period)


def test_loss_proxy_too_flat_falls_back_to_the_period():
    # y rises by 2e-3 - 0.5 * 3.99e-3 = 5e-6 per step: it would reach y* only after
    # thousands of steps, beyond twice the longest cycle so far
    traj, events, cur = loss_proxy_log()
    flat = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss.copy(), meta=traj.meta)
    flat.loss[cur + 5 :] = np.exp(-3.0 - 3.99e-3 * np.arange(len(traj) - cur - 5))
    fc = forecast_next_event(flat[: cur + 250])
    assert fc.method == "period" and "too flat" in fc.details["note"]
    assert fc.next_event_step == pytest.approx(events[-1] + np.median(np.diff(events)))


def test_forecast_from_an_effective_lr_column_alone():
    # a log with elr = lr / rho^2 and no rho gives the forecast of the rho log
    traj, ev = jump_map()
    part = traj[: (ev[3] + ev[4]) // 2 + 1]
    elr_only = Trajectory(step=part.step, elr=1.0 / part.rho**2, loss=part.loss, meta=part.meta)
    a, b = forecast_next_event(part), forecast_next_event(elr_only)
    assert b.next_event_step == pytest.approx(a.next_event_step, rel=1e-12)
    assert b.next_event_interval == pytest.approx(a.next_event_interval, rel=1e-12)


def test_no_event_yet_gives_no_forecast():
    t = np.arange(500)
    traj = Trajectory(step=t, rho=np.exp(-1e-3 * t), meta={"lr": 0.1, "wd": 0.01})
    fc = forecast_next_event(traj)
    assert fc.method == "none" and math.isnan(fc.next_event_step)
    d = fc.to_dict()
    assert d["next_event_step"] is None and d["next_event_interval"] == [None, None]


def test_validation():
    traj, _ = jump_map(n=1000)
    with pytest.raises(ValueError, match="optimizer"):
        forecast_next_event(traj, optimizer="adamw")
    with pytest.raises(ValueError, match="lr= and wd="):
        forecast_next_event(Trajectory(step=traj.step, rho=traj.rho))
    with pytest.raises(ValueError, match="Trajectory"):
        forecast_next_event({"rho": [1, 2]})
    with pytest.raises(ValueError, match="min_fit_rows"):
        forecast_next_event(traj, min_fit_rows=0)
    for bad in ({"blend": 1.5}, {"blend": "x"}, {"fit_fraction": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            forecast_next_event(traj, **bad)
    with pytest.raises(ValueError, match="threshold="):
        forecast_next_event(traj, threshold="curvature")
    with pytest.raises(ValueError, match="sharpness_sphere column"):
        forecast_next_event(traj, threshold="sharpness")
    assert isinstance(forecast_next_event(traj), Forecast)


def test_cli_json_and_errors(tmp_path):
    traj, ev = jump_map()
    cut = (ev[3] + ev[4]) // 2
    path = tmp_path / "log.npz"
    traj[: cut + 1].save(path)
    proc = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert abs(d["next_event_step"] - ev[4]) <= 1.5
    assert len(d["next_event_interval"]) == 2
    text = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path), "--lr", "1", "--wd", "0.002"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert text.returncode == 0 and "next destabilization at step" in text.stdout
    ar1 = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path), "--history", "ar1", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ar1.returncode == 0, ar1.stderr  # four events: too few to fit, the median
    assert json.loads(ar1.stdout)["next_event_step"] == d["next_event_step"]
    for args in (
        [str(tmp_path / "missing.npz")],
        [str(path), "--optimizer", "lion"],
        [str(path), "--min-rise", "-1"],
        [str(path), "--blend", "2"],
        [str(path), "--threshold", "curvature"],
        [str(path), "--fit-fraction", "0"],
        [str(path), "--history", "mean"],
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "siflow.forecast", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.returncode == 2
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_cli_has_a_flag_for_every_detector_parameter(tmp_path, monkeypatch):
    import inspect

    import siflow.forecast as fc_module
    from siflow._forecast_cli import build_parser, main
    from siflow.periods import find_events

    names = set(inspect.signature(find_events).parameters) - {"traj", "lr", "wd", "momentum"}
    flags = {a.dest for a in build_parser()._actions}
    assert names <= flags
    # a flag given reaches find_events; one left out keeps find_events' own default
    seen = {}

    def spy(traj, **kw):
        seen.update(kw)
        return find_events(traj, **kw)

    monkeypatch.setattr(fc_module, "find_events", spy)
    traj, _ = jump_map()
    path = tmp_path / "log.npz"
    traj.save(path)
    argv = [str(path), "--json", "--threshold-confirms", "0.5", "--sharpness", "3"]
    assert main([*argv, "--include-start", "--smooth", "1"]) == 0
    assert seen["threshold_confirms"] == 0.5 and seen["sharpness"] == 3.0
    assert seen["include_start"] is True and seen["smooth"] == 1
    assert not {"min_rise", "min_threshold_fraction", "signal"} & set(seen)


def test_cli_errors_name_its_flags_not_python_parameters(tmp_path, capsys):
    from siflow._forecast_cli import main

    traj, _ = jump_map()
    path = tmp_path / "log.npz"
    Trajectory(step=traj.step, rho=traj.rho).save(path)  # no lr or wd in the metadata
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --lr and --wd" in err and "lr=" not in err
    assert main([str(path), "--lr", "0.1", "--wd", "0.01", "--min-fit-rows", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--min-fit-rows must be a positive integer" in err
    assert "min_fit_rows" not in err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_reads_a_log_whose_last_line_is_still_being_written(tmp_path, suffix):
    # a run appending rows: the file ends in a row cut mid-write (no line end). The
    # forecast leaves that row out and says so; the same cut at a line end gives the
    # same forecast; the overlay (not a live tool) refuses it as a truncated file
    traj, ev = jump_map()
    cut = (ev[3] + ev[4]) // 2
    steps, rho, loss = traj.step[: cut + 1], traj.rho[: cut + 1], traj.loss[: cut + 1]
    if suffix == ".csv":
        rows = [
            f"{s},{float(r)!r},{float(lo)!r}" for s, r, lo in zip(steps, rho, loss, strict=True)
        ]
        whole = "step,rho,loss\n" + "\n".join(rows) + "\n"
        partial = f"{cut + 1},{float(traj.rho[cut + 1])!r}"[:-3]
    else:
        rows = [
            json.dumps({"step": int(s), "rho": float(r), "loss": float(lo)})
            for s, r, lo in zip(steps, rho, loss, strict=True)
        ]
        whole = "\n".join(rows) + "\n"
        partial = json.dumps({"step": int(cut) + 1, "rho": float(traj.rho[cut + 1])})[:-5]
    done, live = tmp_path / f"done{suffix}", tmp_path / f"live{suffix}"
    done.write_text(whole)
    live.write_text(whole + partial)
    cmd = [sys.executable, "-m", "siflow.forecast", "--lr", "1", "--wd", "0.002"]
    a = subprocess.run([*cmd, str(done), "--json"], capture_output=True, text=True, check=False)
    b = subprocess.run([*cmd, str(live), "--json"], capture_output=True, text=True, check=False)
    assert a.returncode == b.returncode == 0, b.stderr
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert da.pop("notes") == [] and len(db.pop("notes")) == 1
    assert da == db
    assert abs(db["next_event_step"] - ev[4]) <= 1.5
    text = subprocess.run([*cmd, str(live)], capture_output=True, text=True, check=False)
    assert "note: the last line" in text.stdout and "still being written" in text.stdout
    over = subprocess.run(
        [sys.executable, "-m", "siflow.overlay", str(live), "--lr", "1", "--wd", "0.002",
         "--no-figure", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert over.returncode == 2 and "truncated" in over.stderr


class _FakeOptimizer:
    def __init__(self):
        self.hooks = []

    def register_step_post_hook(self, fn):
        self.hooks.append(fn)

        class Handle:
            def remove(inner):
                self.hooks.remove(fn)

        return Handle()

    def step(self):
        for fn in list(self.hooks):
            fn(self, (), {})


class _FakeRecorder:
    """Replays a trajectory row by row, like SIRecorder during training."""

    def __init__(self, traj):
        self.full, self.optimizer, self.step_count = traj, _FakeOptimizer(), 0
        self.optimizer.register_step_post_hook(self._count)

    def _count(self, *_):
        self.step_count += 1

    def trajectory(self):
        return self.full[: self.step_count]


def test_recorder_forecast_writes_the_estimate_every_k_steps():
    from siflow.forecast import RecorderForecast

    traj, ev = jump_map(n=1200)
    rec = _FakeRecorder(traj)
    fc = RecorderForecast(rec, every=100)
    for _ in range(1200):
        rec.optimizer.step()
    out = fc.trajectory()
    rows = np.flatnonzero(np.isfinite(out.extra["next_event_step"]))
    # every 100th step once two events are in the log, each equal to a direct forecast
    assert set(out.step[rows]) <= set(range(99, 1200, 100))
    assert rows.size >= 5
    for i in rows:
        direct = forecast_next_event(traj[: i + 1])
        assert out.extra["next_event_step"][i] == direct.next_event_step
        assert out.extra["next_event_lo"][i] == direct.next_event_interval[0]
    fc.close()
    assert len(rec.optimizer.hooks) == 1


def _warmup_column(n, peak, start, rows=50):
    """An lr column rising linearly from ``start`` to ``peak`` over ``rows`` rows."""
    return np.where(np.arange(n) < rows, start + (peak - start) * np.arange(n) / rows, peak)


@pytest.mark.parametrize("start", [0.0, 0.01])
def test_forecast_takes_the_decay_rate_from_the_lr_column_not_a_warmup_metadata_lr(start):
    # the recorder under a warmup wrote meta lr = the warmup's first value (0, or
    # 0.01 x the peak) and a per-row lr column; the forecast must use the column: the
    # same forecast as the log with the peak lr in its metadata (the old code refused
    # lr 0, and with 0.01 used a free-decay rate 100x too small)
    traj, ev = jump_map()  # lr 1.0, wd 2e-3 in the metadata, no lr column
    cut = (ev[3] + ev[4]) // 2
    peak = traj[: cut + 1]
    warm = Trajectory(
        step=peak.step,
        rho=peak.rho,
        loss=peak.loss,
        meta={"lr": start, "wd": 2e-3},
        extra={"lr": _warmup_column(cut + 1, 1.0, start)},
    )
    a = forecast_next_event(peak, threshold="elr")
    b = forecast_next_event(warm, threshold="elr")
    # by hand: the free decay at the current rows' lr 1.0: -ln(1 - lr wd) = -ln(0.998)
    assert b.details["free_decay_rate"] == pytest.approx(-math.log(1 - 1.0 * 2e-3), rel=1e-12)
    assert (b.details["lr"], b.details["wd"]) == (1.0, 2e-3)
    assert b.n_events == a.n_events == 4
    assert b.next_event_step == pytest.approx(a.next_event_step, rel=1e-12)
    assert b.next_event_interval == pytest.approx(a.next_event_interval, rel=1e-12)
    assert abs(b.next_event_step - ev[4]) <= 1.5


def test_forecast_lr_column_sets_the_rate_at_the_current_rows():
    # a step decay of the lr to 0.5 at row 100: the rate is the one of the last rows,
    # -ln(1 - 0.5 * 2e-3), not the metadata's peak
    traj, ev = jump_map(n=1000)
    col = np.where(np.arange(1000) < 100, 1.0, 0.5)
    t = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss, meta=traj.meta, extra={"lr": col})
    fc = forecast_next_event(t, threshold="elr")
    assert fc.details["free_decay_rate"] == pytest.approx(-math.log(1 - 0.5 * 2e-3), rel=1e-12)
    assert fc.details["lr"] == 0.5


def _heavy_ball_log_factor(lr, wd, mu):
    """ln of the largest root modulus of a^2 - (1 + mu - lr wd) a + mu (numpy.roots: the
    companion matrix's eigenvalues, not the quadratic formula)."""
    return math.log(max(abs(np.roots([1.0, -(1.0 + mu - lr * wd), mu]))))


def test_forecast_momentum_column_sets_the_rate_at_the_current_rows():
    # one-cycle style: the momentum falls from 0.95 to 0.85 and is 0.88 on the last rows;
    # the rate is heavy ball's at 0.88, not at the metadata's configured 0.95
    traj, ev = jump_map(n=1000)
    col = np.where(np.arange(1000) < 500, 0.95, 0.88)
    meta = {**traj.meta, "momentum": 0.95}
    t = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss, meta=meta, extra={"momentum": col})
    fc = forecast_next_event(t, threshold="elr")
    hand = -_heavy_ball_log_factor(1.0, 2e-3, 0.88)
    assert fc.details["free_decay_rate"] == pytest.approx(hand, rel=1e-9)
    const = forecast_next_event(Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss, meta=meta))
    assert const.details["free_decay_rate"] == pytest.approx(
        -_heavy_ball_log_factor(1.0, 2e-3, 0.95), rel=1e-9
    )


def test_forecast_reads_an_lr_column_recorded_under_another_name():
    # Lightning's LearningRateMonitor column lr-SGD, mapped to lr by siflow.io.read (the
    # metadata then has no lr): the forecast uses it as it uses a column named lr
    traj, ev = jump_map(n=1000)
    col = np.where(np.arange(1000) < 100, 1.0, 0.5)
    meta = {k: v for k, v in traj.meta.items() if k != "lr"}
    meta["columns"] = {"lr": "lr-SGD"}
    t = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss, meta=meta, extra={"lr-SGD": col})
    fc = forecast_next_event(t, threshold="elr")
    assert fc.details["free_decay_rate"] == pytest.approx(-math.log(1 - 0.5 * 2e-3), rel=1e-12)
    assert fc.details["lr"] == 0.5


def test_cli_zero_metadata_lr_names_the_log_and_the_lr_flag(tmp_path):
    # a warmup-from-0 log without an lr column: one line naming the log and --lr
    traj, _ = jump_map()
    path = tmp_path / "warm.csv"
    Trajectory(step=traj.step, rho=traj.rho, meta={"lr": 0.0, "wd": 2e-3}).save(path)
    r = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(path) in r.stderr and "--lr" in r.stderr and "positive learning rate" in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path), "--lr", "1", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout)["details"]["lr"] == 1.0


@pytest.mark.parametrize("name", ["AdamW", "adamw", "Lion", "Adam"])
def test_forecast_refuses_the_optimizer_named_by_the_log(tmp_path, name):
    # an AdamW log ran through the SGD law with exit 0 and no note: the optimizer comes
    # from the metadata unless --optimizer is given, and one the forecast has no theory
    # for is refused in one line naming the fix
    traj, _ = jump_map()
    meta = {**traj.meta, "optimizer": name}
    t = Trajectory(step=traj.step, rho=traj.rho, loss=traj.loss, meta=meta)
    with pytest.raises(ValueError, match=f"names optimizer '{name.lower()}'"):
        forecast_next_event(t)
    path = tmp_path / "log.csv"
    t.save(path)
    r = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == ""
    assert str(path) in r.stderr and "--optimizer sgd" in r.stderr
    # the SGD class name of SIRecorder (heavy ball) is the SGD law
    sgd = Trajectory(
        step=traj.step, rho=traj.rho, loss=traj.loss, meta={**traj.meta, "optimizer": "SGD"}
    )
    assert forecast_next_event(sgd).next_event_step == forecast_next_event(traj).next_event_step


def test_recorder_forecast_never_stops_training_under_a_warmup_from_zero():
    # a real model, SGD and a LambdaLR warmup starting at lr 0, built before the
    # recorder: the forecast hook ran inside optimizer.step() and its ValueError (lr 0)
    # killed the training at step 4
    torch = pytest.importorskip("torch")
    from siflow.forecast import RecorderForecast
    from siflow.torch_probe import SIRecorder

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 5, 1.0))
    rec = SIRecorder(net, opt, every=1)
    fc = RecorderForecast(rec, every=5)
    bad = RecorderForecast(rec, every=5, threshold="sharpness")  # raises on every row
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        rec.log_loss(loss)
    out = fc.trajectory()
    assert len(out) == 20 and out.meta["lr"] == 0.1  # the configured lr, not 0
    assert out.extra["lr"][:6].tolist() == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.1])
    assert np.all(np.isnan(out.extra["next_event_step"]))  # no event yet: no forecast
    assert not any("RecorderForecast" in n for n in out.meta.get("notes", []))
    # the failing forecast: NaN on its rows, one note (not one per forecast), training ran
    failed = bad.trajectory()
    assert np.all(np.isnan(failed.extra["next_event_step"])) and bad.estimates == {}
    notes = [n for n in failed.meta["notes"] if n.startswith("RecorderForecast")]
    assert len(notes) == 1
    assert "ValueError at step 5" in notes[0] and "sharpness_sphere column" in notes[0]


def test_one_event_interval_is_the_free_decay_factor_two_not_a_point():
    # with one event the lowest and highest earlier thresholds are the same value: the
    # interval was [x, x], so the true event was never inside it
    traj, ev = jump_map()
    cut = ev[0] + 100
    fc = forecast_next_event(traj[: cut + 1], threshold="elr")
    assert fc.n_events == 1 and fc.method == "threshold"
    assert abs(fc.next_event_step - ev[1]) <= 1.5
    # by hand: ln 2 / (2 r) steps either side, r = -ln(1 - lr wd) = -ln(1 - 1 * 2e-3);
    # the low end is clipped to the step after the last logged one
    half = math.log(2.0) / (-2.0 * math.log(1 - 2e-3))
    assert half == pytest.approx(173.11, abs=0.01)  # one period of the map: jumps by 2
    lo, hi = fc.next_event_interval
    assert hi == pytest.approx(fc.next_event_step + half, rel=1e-12)
    assert lo == max(fc.next_event_step - half, cut + 1.0) == cut + 1.0
    assert lo <= ev[1] <= hi and "factor 2" in fc.details["interval"]


def test_cli_prints_and_returns_the_note_of_a_last_cell_cut_mid_write(tmp_path):
    # a last line with every cell but its last one cut short ('0.533' of
    # '0.53312...'): the reader left it out with a note that neither the text output
    # (it printed only "still being written" notes) nor --json showed
    traj, ev = jump_map()
    cut = (ev[3] + ev[4]) // 2
    rows = [
        f"{s},{float(r)!r},{float(lo)!r}"
        for s, r, lo in zip(traj.step[:cut], traj.rho[:cut], traj.loss[:cut], strict=True)
    ]
    path = tmp_path / "live.csv"
    path.write_text("step,rho,loss\n" + "\n".join(rows) + f"\n{cut},{float(traj.rho[cut])!r},0")
    cmd = [sys.executable, "-m", "siflow.forecast", str(path), "--lr", "1", "--wd", "0.002"]
    js = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    assert js.returncode == 0, js.stderr
    d = json.loads(js.stdout)
    assert d["last_step"] == cut - 1  # the cut row left out
    assert len(d["notes"]) == 1 and "cut while it was written, left out" in d["notes"][0]
    text = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    assert f"note: {d['notes'][0]}" in text.splitlines()


def test_cli_prints_and_returns_the_note_of_a_tensorboard_record_cut_short(tmp_path):
    # an event file whose last record is cut (the writer still writing): the reader
    # left the record out with a note the forecast did not show
    tb = pytest.importorskip("torch.utils.tensorboard")
    traj, ev = jump_map()
    cut = (ev[3] + ev[4]) // 2
    writer = tb.SummaryWriter(log_dir=str(tmp_path / "tb"))
    for s in range(0, cut + 1, 2):
        writer.add_scalar("loss", float(traj.loss[s]), s)
        writer.add_scalar("siflow/total/norm", float(traj.rho[s]), s)
    writer.close()
    (event,) = (tmp_path / "tb").iterdir()
    with open(event, "r+b") as fh:
        fh.truncate(event.stat().st_size - 7)  # the last record (step cut//2*2) cut
    cmd = [sys.executable, "-m", "siflow.forecast", str(tmp_path / "tb"), "--lr", "1"]
    cmd += ["--wd", "0.002"]
    js = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    assert js.returncode == 0, js.stderr
    (note,) = json.loads(js.stdout)["notes"]
    assert "record cut short" in note and note.endswith("left out")
    text = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    assert f"note: {note}" in text.splitlines()


def test_overdue_cycle_has_no_upper_bound(tmp_path):
    # the sixth jump of the exact cycle does not come: the norm keeps decaying past the
    # earlier thresholds and past the longest period. The forecast is the next step, and
    # the interval has no upper bound (it was [last + 1, last + 1]: a certainty)
    traj, ev = jump_map(n=1200)
    periods = np.diff(ev[:5])
    x = traj.meta["wd"]
    rho = traj.rho.copy()
    t = np.arange(ev[5], len(rho))
    rho[t] = rho[ev[5]] * (1 - x) ** (t - ev[5])  # free decay, no jump
    late = Trajectory(step=traj.step, rho=rho, loss=np.full(len(rho), 1e-3), meta=traj.meta)
    last = int(ev[5] + 100)  # the event was due at ev[5]; the longest cycle ended there
    fc = forecast_next_event(late[: last + 1])
    assert fc.n_events == 5
    assert fc.next_event_step == last + 1
    assert fc.next_event_interval == (last + 1, math.inf)
    assert "no upper bound" in fc.details["overdue"]
    assert fc.details["period_estimate"] == pytest.approx(np.median(periods))
    assert fc.to_dict()["next_event_interval"] == [last + 1, None]
    # before the bounds have passed, the interval closes
    early = int(ev[5] - 20)
    fc = forecast_next_event(late[: early + 1])
    assert early < fc.next_event_interval[1] < math.inf and "overdue" not in fc.details
    path = tmp_path / "log.npz"
    late[: last + 1].save(path)
    out = subprocess.run(
        [sys.executable, "-m", "siflow.forecast", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert f"interval {last + 1}..no upper bound" in out.stdout


def test_one_period_interval_is_half_to_twice_that_period_not_a_point():
    # with two events the shortest and longest earlier periods are the same value: the
    # period's interval was [x, x] (22 of the labelled set's 566 half-way cuts)
    traj, ev = jump_map()
    period = float(ev[1] - ev[0])
    cut = int(ev[1] + 0.4 * period)  # before the interval's low end
    fc = forecast_next_event(traj[: cut + 1])
    assert fc.n_events == 2 and fc.method == "blend"
    assert abs(fc.next_event_step - ev[2]) <= 1.5
    # the thresholds agree (an exact cycle), so the interval is the period's by hand
    assert fc.next_event_interval == (ev[1] + 0.5 * period, ev[1] + 2.0 * period)
    assert "half to twice" in fc.details["period_interval"]
    # the norm decays on past the earlier threshold and period without a jump: both
    # estimates have passed, and the interval still reaches twice the period
    x = traj.meta["wd"]
    rho = traj.rho.copy()
    t = np.arange(ev[2], len(rho))
    rho[t] = rho[ev[2]] * (1 - x) ** (t - ev[2])
    late = Trajectory(step=traj.step, rho=rho, loss=traj.loss, meta=traj.meta)
    cut = int(ev[2] + 20)
    fc = forecast_next_event(late[: cut + 1])
    assert fc.n_events == 2
    assert fc.next_event_step == cut + 1  # the estimates have passed
    assert fc.next_event_interval == (cut + 1, ev[1] + 2.0 * period)
    # with three events the periods' own spread is the interval, as before
    cut = int(ev[2] + 0.75 * period)
    fc = forecast_next_event(traj[: cut + 1])
    assert fc.n_events == 3 and "period_interval" not in fc.details


def test_forecast_says_when_the_lr_changed_since_the_earlier_cycles(capsys, tmp_path):
    # a sawtooth on the exact zero-gradient map (rho^2 x4 with a loss spike once below 1)
    # under lr 0.1 and then 0.04 from step 1200: cut after the drop, the free decay per
    # step is 0.4 times its mean over the earlier cycles (summed by hand) and the forecast
    # says that its period estimate counts their steps; at a constant lr it says nothing
    n, drop, wd = 2000, 1200, 5e-2
    lr = np.where(np.arange(n) < drop, 0.1, 0.04)
    r2, loss, x = np.empty(n), np.full(n, 1e-2), 4.0
    for t in range(n):
        if x < 1.0:
            x *= 4.0
            loss[t : t + 20] = 1.0
        r2[t] = x
        x *= (1 - lr[t] * wd) ** 2
    traj = Trajectory(
        step=np.arange(n), rho=np.sqrt(r2), loss=loss, extra={"lr": lr}, meta={"wd": wd}
    )
    fc = forecast_next_event(traj)
    ev = find_events(traj)
    past = -sum(math.log(1 - lr[t] * wd) for t in range(ev.steps[0], ev.steps[-1]))
    past /= ev.steps[-1] - ev.steps[0]
    ratio = -math.log(1 - 0.04 * wd) / past
    assert 0.3 < ratio < 0.8
    assert f"is {ratio:.3g} times its mean over the earlier cycles" in fc.details["schedule_note"]
    const = Trajectory(step=np.arange(n), rho=np.sqrt(r2), loss=loss, meta={"lr": 0.1, "wd": wd})
    assert "schedule_note" not in forecast_next_event(const[:drop]).details
    # the command line prints it
    path = tmp_path / "log.npz"
    traj.save(path)
    from siflow.forecast import main

    assert main([str(path)]) == 0
    assert "times its mean over the earlier cycles" in capsys.readouterr().out
