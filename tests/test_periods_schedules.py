"""Events and regimes under learning-rate schedules (warmup, step and cosine decay).

A rise of the norm driven by a rising lr (the quasi-static equilibrium ``rho*(t)`` moving
up, and the norm relaxing towards it) is not a destabilization, and a norm that follows
the schedule's equilibrium is in equilibrium, not converging (docs/theory.md,
"Destabilization events").
"""

from __future__ import annotations

import pytest

from siflow.periods import classify, find_events
from siflow.simulate import simulate
from siflow.trajectory import Trajectory


def _per_row_only(traj: Trajectory) -> Trajectory:
    """The run with lr and wd as per-row columns only (no single value in ``meta``)."""
    cols = traj.to_columns()
    cols["wd"] = cols["lr"] * 0 + float(traj.meta["wd"])
    meta = {k: v for k, v in traj.meta.items() if k not in ("lr", "wd")}
    return Trajectory.from_columns(cols, meta)


WARMUPS = (
    "cosine:peak=0.1,warmup=500,min=0.005,steps=20000",
    "cosine:peak=0.1,warmup=2000,min=0.005,steps=20000",
    "linear:peak=0.1,warmup=3000,steps=20000",
    "linear:peak=0.1,warmup=3000,min=0.1,steps=20000",
)


@pytest.mark.parametrize("schedule", WARMUPS)
def test_warmup_on_the_spiral_is_not_an_event(schedule: str) -> None:
    # constant sphere gradient: the spiral cannot destabilize; the warmup lifts rho*
    traj = simulate("spiral", lr=schedule, wd=1e-3, steps=20000)
    events = find_events(traj)
    assert len(events) == 0
    assert classify(traj, events) == "equilibrium"


def test_warmup_event_test_does_not_depend_on_the_time_unit() -> None:
    traj = simulate("spiral", lr=WARMUPS[0], wd=1e-3, steps=20000)
    cols = traj.to_columns()
    cols["step"] = cols["step"] * 7  # epochs vs steps: the same run on another clock
    assert len(find_events(Trajectory.from_columns(cols, traj.meta))) == 0


def test_genuine_destabilizations_after_a_warmup_are_kept() -> None:
    constant = find_events(simulate("logistic", lr=0.1, wd=1e-3, steps=20000))
    warm = find_events(
        simulate(
            "logistic", lr="linear:peak=0.1,warmup=500,min=0.1,steps=20000", wd=1e-3, steps=20000
        )
    )
    assert len(constant) == 3
    assert len(warm) == 3
    # the same period as at constant lr, and each jump well above the swing threshold
    assert warm.periods.tolist() == pytest.approx(constant.periods.tolist(), rel=0.05)
    assert (warm.norm_ratio > 2.0).all()


@pytest.mark.parametrize(
    "schedule",
    ["step:peak=0.1,gamma=0.5,milestones=10000", "step:peak=0.1,gamma=0.1,milestones=15000"],
)
def test_noise_held_norm_after_a_step_decay_is_equilibrium(schedule: str) -> None:
    # pure noise on a flat loss: nothing to converge to; the norm relaxes to the lower rho*
    traj = simulate("flat", lr=schedule, wd=1e-3, steps=20000, noise=0.01)
    assert classify(traj) == "equilibrium"
    assert classify(_per_row_only(traj)) == "equilibrium"  # as siflow.overlay passes it


def test_converging_run_under_a_step_decay_is_still_converged() -> None:
    traj = simulate("logistic", lr="step:peak=0.1,gamma=0.5,milestones=10000", wd=1e-4, steps=20000)
    events = find_events(traj)
    assert len(events) == 0
    assert classify(traj, events) == "converged"
    assert classify(_per_row_only(traj)) == "converged"
