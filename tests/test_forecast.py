"""forecast: the next destabilization from a log so far.

Ground truth: the exact norm recursion of docs/theory.md section 1 with a threshold
burst model (the generator of tests/test_periods.py), whose event steps are known, and
the committed labelled logs read as files.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from siflow.forecast import Forecast, forecast_next_event
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
        fc = forecast_next_event(traj[: cut + 1])
        assert fc.method == "threshold" and fc.n_events == k + 1
        assert abs(fc.next_event_step - ev[k + 1]) <= 1.5
        lo, hi = fc.next_event_interval
        assert lo <= fc.next_event_step <= hi
        assert fc.last_step == cut


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
    fc = forecast_next_event(traj)
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
    base = forecast_next_event(part).next_event_step
    fc = forecast_next_event(with_s)
    assert fc.details["threshold_kind"] == "elr*S"
    assert forecast_next_event(with_s, use_sharpness=False).next_event_step == base
    rate = -math.log(1 - 2e-3)
    assert fc.next_event_step - base == pytest.approx(0.5 * math.log(2.0) / rate, rel=1e-6)


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
    for args in (
        [str(tmp_path / "missing.npz")],
        [str(path), "--optimizer", "lion"],
        [str(path), "--min-rise", "-1"],
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "siflow.forecast", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.returncode == 2
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


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
