"""The exact scale-invariance laws of siflow.theory against the maps iterated in float64.

Ground truth: SGD + coupled WD and PyTorch's heavy ball iterated in numpy on an SI
loss (the Rayleigh quotient ``w^T A w / w^T w``, whose gradient is orthogonal to
``w``) under a warmup + cosine schedule; angles from the iterates themselves.
"""

import math

import numpy as np
import pytest

from siflow import theory
from siflow.schedules import parse_schedule


def _rayleigh(n=12, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a = a + a.T

    def grad(w):
        r2 = w @ w
        return 2.0 * (a @ w - (w @ a @ w) / r2 * w) / r2

    return grad, rng.standard_normal(n) * 3.0


def _angle(u, v):
    a, b = u / np.linalg.norm(u), v / np.linalg.norm(v)
    return 2.0 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _run(steps, lr, wd, momentum):
    """Iterates of PyTorch's SGD (heavy ball when momentum > 0) with per-step lr and wd."""
    grad, w = _rayleigh()
    v = np.zeros_like(w)
    ws = [w.copy()]
    for t in range(steps):
        g = grad(w) + wd[t] * w
        v = momentum * v + g if t else g
        w = w - lr[t] * v
        ws.append(w.copy())
    ws = np.array(ws)
    rho = np.linalg.norm(ws, axis=1)
    ang = np.array([_angle(ws[t], ws[t + 1]) for t in range(steps)])
    return rho, ang


SCHED = "cosine:peak=0.3,warmup=20,min=0.01,steps=200"


def test_sgd_radial_norm_is_exact_under_a_schedule():
    lr = parse_schedule(SCHED).values(200)
    wd = np.linspace(0.05, 0.01, 200)
    rho, ang = _run(200, lr, wd, 0.0)
    pred = theory.sgd_radial_norm(rho[:-1], ang, lr, wd)
    assert np.max(np.abs(pred / rho[1:] - 1)) < 1e-12


def test_sgd_radial_norm_window_is_exact_for_a_sparse_log():
    k, steps = 5, 200
    lr, wd = np.full(steps, 0.2), np.full(steps, 0.03)
    rho, ang = _run(steps, lr, wd, 0.0)
    rows = np.arange(0, steps, k)
    log_cos = np.log(np.cos(ang)).reshape(-1, k).mean(axis=1)
    pred = theory.sgd_radial_norm_window(rho[rows], log_cos, k, 0.2, 0.03)
    assert np.max(np.abs(pred / rho[rows + k] - 1)) < 1e-12


def test_heavy_ball_radial_norm_is_exact_under_a_schedule():
    lr = parse_schedule(SCHED).values(200)
    wd = np.full(200, 0.02)
    rho, ang = _run(200, lr, wd, 0.9)
    t = np.arange(1, 200)
    pred = theory.heavy_ball_radial_norm(
        rho[t - 1], ang[t - 1], rho[t], ang[t], lr[t - 1], lr[t], wd[t], 0.9
    )
    assert np.max(np.abs(pred / rho[t + 1] - 1)) < 1e-12
    # the SGD law does not hold for heavy ball: the check can fail
    wrong = theory.sgd_radial_norm(rho[t], ang[t], lr[t], wd[t])
    assert np.max(np.abs(wrong / rho[t + 1] - 1)) > 1e-3


def test_heavy_ball_law_reduces_to_sgd_at_zero_momentum():
    args = (2.0, 0.1, 1.5, 0.05, 0.2, 0.3, 0.01)
    hb = theory.heavy_ball_radial_norm(*args, 0.0)
    assert hb == pytest.approx(theory.sgd_radial_norm(1.5, 0.05, 0.3, 0.01), rel=1e-15)


def test_sgd_norm_trajectory_replays_the_map():
    lr = parse_schedule(SCHED).values(200)
    wd = np.full(200, 0.03)
    grad, w = _rayleigh()
    rho, g = [], []
    for t in range(200):
        gr = grad(w)
        rho.append(np.linalg.norm(w))
        g.append(np.linalg.norm(w) * np.linalg.norm(gr))
        w = (1 - lr[t] * wd[t]) * w - lr[t] * gr
    rho.append(np.linalg.norm(w))
    rep = theory.sgd_norm_trajectory(rho[0], lr, wd, g)
    assert np.max(np.abs(rep / np.array(rho) - 1)) < 1e-12


def test_decay_product_is_the_zero_gradient_map():
    lr = parse_schedule(SCHED).values(200)
    wd = np.full(200, 0.04)
    w, out = 1.7, [1.7]
    for t in range(200):
        w *= 1 - lr[t] * wd[t]
        out.append(w)
    assert np.max(np.abs(1.7 * theory.decay_product(lr, wd) / np.array(out) - 1)) < 1e-12
    # rows k steps apart with the value held over the gap
    reps = np.array([3, 1, 4, 2])
    held = np.repeat(lr[:4], reps)
    full = theory.decay_product(held, 0.04)[np.cumsum(np.r_[0, reps])]
    assert np.max(np.abs(theory.decay_product(lr[:4], 0.04, repeats=reps) / full - 1)) < 1e-12


def test_decay_product_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        theory.decay_product([0.1, 0.1], 0.01, repeats=[1])
