"""Heavy-ball and Nesterov norms under a schedule: the second-moment map against the vectors."""

from __future__ import annotations

import numpy as np
import pytest

from siflow import schedules, theory


def _vector_run(rho0, lr, wd, mu, g, nesterov, dim=64, seed=0):
    """PyTorch's heavy ball / Nesterov on vectors, each gradient orthogonal to w and v
    with |grad| = g~/|w|: the case where the second-moment map is exact."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w *= rho0 / np.linalg.norm(w)
    v = np.zeros(dim)
    norms = [np.linalg.norm(w)]
    for t in range(lr.size):
        r = rng.standard_normal(dim)
        q = rng.standard_normal(dim) if not v.any() else v
        basis = np.linalg.qr(np.stack([w, q, r], axis=1))[0]
        grad = basis[:, 2] * (g / np.linalg.norm(w))  # orthogonal to w and v
        step_dir = grad + wd[t] * w
        v = mu * v + step_dir
        w = w - lr[t] * (step_dir + mu * v if nesterov else v)
        norms.append(np.linalg.norm(w))
    return np.array(norms)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_norm_under_a_step_schedule_follows_the_vectors(nesterov):
    steps, mu, g = 600, 0.9, 1.0
    lr = schedules.parse_schedule("step:peak=0.1,gamma=0.1,milestones=200/400")(np.arange(steps))
    wd = np.full(steps, 1e-2)
    ref = _vector_run(2.0, lr, wd, mu, g, nesterov)
    got = theory.momentum_norm_trajectory(2.0, lr, wd, mu, g, nesterov=nesterov)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_norm_reaches_the_closed_form_equilibrium(nesterov):
    lr, wd, mu, g = 0.1, 1e-2, 0.9, 1.3
    rho = theory.momentum_norm_trajectory(0.5, np.full(20_000, lr), wd, mu, g, nesterov=nesterov)
    star = theory.sgdm_equilibrium_norm(lr, wd, g, mu, nesterov=nesterov)
    assert rho[-1] == pytest.approx(star, rel=1e-12)


def test_without_momentum_it_is_the_sgd_norm_map_and_with_it_relaxes_faster():
    lr = np.linspace(0.2, 0.05, 300)
    sgd = theory.sgd_norm_trajectory(3.0, lr, 1e-2, 0.7)
    np.testing.assert_allclose(theory.momentum_norm_trajectory(3.0, lr, 1e-2, 0.0, 0.7), sgd,
                               rtol=1e-13)  # fmt: skip
    # from far above equilibrium, heavy ball at mu = 0.9 closes the gap at its own rate
    lr_c = np.full(400, 0.1)
    star = float(theory.sgdm_equilibrium_norm(0.1, 1e-2, 1.0, 0.9))
    hb = theory.momentum_norm_trajectory(1.2 * star, lr_c, 1e-2, 0.9, 1.0)
    tau = float(theory.sgdm_relaxation_time(0.1, 1e-2, 0.9))
    k = int(round(5 * tau))
    assert abs(hb[k] ** 2 / star**2 - 1) < 2 * np.exp(-5) * abs(hb[0] ** 2 / star**2 - 1)


def test_heavy_ball_lines_are_those_of_the_maps_kernel():
    from siflow import maps

    traj = maps.norm_map(0.1, 1e-3, 500, rho0=1.7, grad_norm=0.8, momentum=0.9)
    got = theory.momentum_norm_trajectory(1.7, np.full(500, 0.1), 1e-3, 0.9, 0.8)
    np.testing.assert_allclose(got[: len(traj)], traj.rho, rtol=1e-15)
