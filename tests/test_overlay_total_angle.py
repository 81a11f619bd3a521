"""The whole SI vector's angular update from its groups' angles and norms
(:func:`siflow.theory.total_angular_update`), against explicit multi-group SGD and
AdamW steps computed with numpy, and the overlay's total derived from the groups."""

import math

import numpy as np
import pytest

from siflow import theory
from siflow.overlay import analyze
from siflow.trajectory import Trajectory

SIZES = (300, 1200, 50)
SCALES = (1.0, 3.0, 0.5)


def _angle(a, b):
    """Angle between two vectors from the chord of their directions (accurate near 0)."""
    d = a / np.linalg.norm(a) - b / np.linalg.norm(b)
    return 2.0 * math.asin(min(1.0, np.linalg.norm(d) / 2.0))


def _step(eps, opt, seed=0):
    """One explicit step of three SI groups; per-group angles of order ``eps``.

    SGD: ``w' = (1 - lr wd) w - lr g`` with ``g`` orthogonal to ``w`` (SI loss).
    AdamW at its first step: ``w' = (1 - lr wd) w - lr sign(g)`` (``m/sqrt(v)`` is the
    sign of the gradient), whose update has a radial part.
    """
    rng = np.random.default_rng(seed)
    before, after = [], []
    for c, s in zip(SIZES, SCALES, strict=True):
        w = rng.standard_normal(c) * s
        rho = np.linalg.norm(w)
        z = rng.standard_normal(c)
        z -= (z @ w) / (rho * rho) * w
        k = rng.uniform(0.5, 2.0)
        if opt == "sgd":
            lr, wd = 1.0, eps**2 / 2
            step = z / np.linalg.norm(z) * eps * k * rho
        else:
            lr, wd = eps * k * rho / math.sqrt(c), eps**2
            step = lr * np.sign(z)
        before.append(w)
        after.append((1 - lr * wd) * w - step)
    angles = [_angle(w, n) for w, n in zip(before, after, strict=True)]
    norms = [np.linalg.norm(w) for w in before]
    norms_after = [np.linalg.norm(n) for n in after]
    true = _angle(np.concatenate(before), np.concatenate(after))
    return true, angles, norms, norms_after


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_total_angle_is_exact_with_the_norms_after(opt):
    for eps in (0.3, 1e-2, 1e-4):
        true, angles, norms, after = _step(eps, opt)
        got = theory.total_angular_update(angles, norms, norms_after=after)
        assert got == pytest.approx(true, rel=1e-9), eps


def test_total_angle_first_order_error_shrinks_with_the_angle_sgd():
    errors = []
    for eps in (1e-1, 1e-2, 1e-3):
        true, angles, norms, _ = _step(eps, "sgd")
        errors.append(abs(theory.total_angular_update(angles, norms) / true - 1))
        # the stated first-order form agrees with the function to first order too
        plain = math.sqrt(
            sum(r * r * a * a for r, a in zip(norms, angles, strict=True))
            / sum(r * r for r in norms)
        )
        assert plain == pytest.approx(true, rel=10 * eps**2)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6
    assert errors[0] < 1e-2


def test_total_angle_first_order_adamw_step():
    """AdamW's update has a radial part of relative size ~1/sqrt(C) per group: unequal
    norm changes rotate the concatenation too, so the first-order total has a floor of
    order 1/C that does not shrink with the angle (5e-5 here, C down to 50)."""
    errors = []
    for eps in (1e-1, 1e-2, 1e-3, 1e-4):
        true, angles, norms, _ = _step(eps, "adamw")
        errors.append(abs(theory.total_angular_update(angles, norms) / true - 1))
    assert errors[0] > errors[1] > errors[2]
    assert max(errors[1:]) < 1e-4 and errors[0] < 1e-3
    assert errors[3] == pytest.approx(errors[2], rel=0.1)  # the floor, not an angle effect


def test_total_angle_hand_values_and_broadcast():
    # two groups of equal norm: sin^2(D/2) is the mean of the groups' sin^2
    got = theory.total_angular_update([0.1, 0.0], [2.0, 2.0])
    assert got == pytest.approx(2 * math.asin(math.sqrt(math.sin(0.05) ** 2 / 2)), rel=1e-14)
    # one group is itself; a common scaling of all norms rotates nothing
    assert theory.total_angular_update([0.2], [3.0]) == pytest.approx(0.2, rel=1e-14)
    assert theory.total_angular_update([0.0, 0.0], [1.0, 2.0], [0.5, 1.0]) == 0.0
    rows = theory.total_angular_update(np.full((2, 5), 0.01), np.ones((2, 5)))
    assert rows.shape == (5,) and np.allclose(rows, 0.01, rtol=1e-14)
    with pytest.raises(ValueError, match="same shape"):
        theory.total_angular_update([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="norms_after"):
        theory.total_angular_update([0.1, 0.2], [1.0, 1.0], [1.0])


def test_overlay_total_from_groups_against_a_hand_computation():
    """A log with per-group angles and norms and no total angle: the total angle RMS
    is derived from the groups, the frozen group left out, with source and note."""
    rng = np.random.default_rng(3)
    n = 300
    extra = {
        "rho/a": 2.0 + 0.1 * rng.random(n),
        "rho/b": 5.0 + 0.1 * rng.random(n),
        "angular_update/a": 0.01 + 0.002 * rng.random(n),
        "angular_update/b": 0.004 + 0.002 * rng.random(n),
        "rho/frozen": np.full(n, 10.0),
        "angular_update/frozen": np.zeros(n),
    }
    rho = np.sqrt(extra["rho/a"] ** 2 + extra["rho/b"] ** 2)
    traj = Trajectory(step=np.arange(n), rho=rho, extra=extra)
    res = analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1)
    assert res.angular_update_source == "derived from groups"
    rows = (traj.step >= res.stationary_start) & (traj.step <= res.stationary_stop)
    s2 = sum(
        extra[f"rho/{g}"][rows] ** 2 * np.sin(extra[f"angular_update/{g}"][rows] / 2) ** 2
        for g in "ab"
    ) / (rho[rows] ** 2)
    want = math.sqrt(np.mean((2 * np.arcsin(np.sqrt(s2))) ** 2))
    assert res.angular_update_rms == pytest.approx(want, rel=1e-12)
    note = next(x for x in res.notes if "derived from the angles and norms" in x)
    assert "a, b" in note and "frozen group(s) frozen left out" in note
    # a logged total angle wins
    traj.angular_update = np.full(n, 0.5)
    assert analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1).angular_update_source == "log"
    # a group without an angle column: no total from groups
    del extra["angular_update/b"]
    traj = Trajectory(step=np.arange(n), rho=rho, extra=extra)
    res = analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1)
    assert res.angular_update_rms is None
