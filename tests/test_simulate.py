"""simulate(): exact-map checks, theory, symmetry, reproducibility, thinning, extremes.

References are independent of the simulation kernel: the SGD+WD map iterated in
numpy with the numpy twin of the gradient, the scalar norm recursion of docs/theory.md
section 1, and the closed forms of siflow.theory.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import losses as L
from siflow import simulate as S
from siflow import theory
from siflow.simulate import simulate
from siflow.trajectory import Trajectory

REQUIRED_META = (
    "lr",
    "wd",
    "momentum",
    "optimizer",
    "loss",
    "dim",
    "seed",
    "steps",
    "source",
    "status",
    "sharpness_min",
)


# ------------------------------------------------------------------ the exact map
def test_columns_match_sgd_map_iterated_in_numpy():
    lr, wd, steps = 0.2, 0.01, 300
    toy = L.logistic(5, n_samples=40, temperature=3.0, seed=1)
    w0 = np.array([0.3, -1.0, 0.5, 2.0, -0.1])
    traj = simulate(toy, lr=lr, wd=wd, steps=steps, w0=w0)
    w = w0.copy()
    rows = []
    for _ in range(steps):
        f, g = L.value_and_grad_numpy(toy.kind, w, toy.params, toy.data)
        w_new = (1 - lr * wd) * w - lr * g
        rho = np.linalg.norm(w)
        cosang = (w @ w_new) / (rho * np.linalg.norm(w_new))
        rows.append((f, rho, rho * np.linalg.norm(g), lr / rho**2, math.acos(min(cosang, 1.0))))
        w = w_new
    ref = np.array(rows)
    assert list(traj.step) == list(range(steps))
    np.testing.assert_allclose(traj.loss, ref[:, 0], rtol=1e-10)
    np.testing.assert_allclose(traj.rho, ref[:, 1], rtol=1e-10)
    np.testing.assert_allclose(traj.grad_norm_sphere, ref[:, 2], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(traj.elr, ref[:, 3], rtol=1e-10)
    # arccos loses digits for tiny angles: compare to 1e-7 of the largest angle
    np.testing.assert_allclose(traj.angular_update, ref[:, 4], atol=1e-7 * ref[:, 4].max())
    assert traj.status == "ok"
    for key in REQUIRED_META:
        assert key in traj.meta, key
    assert traj.meta["source"] == "siflow.simulate"
    assert traj.meta["steps_done"] == steps


def test_angular_update_follows_exact_tangent_formula():
    """tan(Delta_t) = elr_t g~_t / (1 - lr wd) for SGD (docs/theory.md section 1, exact)."""
    lr, wd = 0.1, 0.05
    traj = simulate("rayleigh", lr=lr, wd=wd, steps=400, dim=6, seed=3, noise=0.01)
    expect = np.arctan(traj.elr * traj.grad_norm_sphere / (1 - lr * wd))
    np.testing.assert_allclose(traj.angular_update, expect, rtol=1e-11)


# ------------------------------------------------------------------ theory
def test_constant_gradient_norm_equilibrium_matches_theory():
    lr, wd, big_g = 0.1, 0.1, 1.7
    opts = {"grad_norm": big_g}
    traj = simulate("spiral", lr=lr, wd=wd, steps=4000, rho0=3.0, loss_options=opts)
    np.testing.assert_allclose(traj.grad_norm_sphere, big_g, rtol=1e-13)
    rho_star = float(theory.sgd_equilibrium_norm(lr, wd, big_g))
    # relaxation factor 1 - 4 lr wd + 2 lr^2 wd^2 per step: 4000 steps reach 1e-9 easily
    assert traj.rho[-1] == pytest.approx(rho_star, rel=1e-9)
    assert traj.elr[-1] == pytest.approx(float(theory.sgd_equilibrium_elr(lr, wd, big_g)), rel=1e-9)
    angle = float(theory.sgd_equilibrium_angle(lr, wd))
    assert traj.angular_update[-1] == pytest.approx(angle, rel=1e-9)
    # started exactly at equilibrium it stays there
    at_eq = simulate("spiral", lr=lr, wd=wd, steps=500, rho0=rho_star, loss_options=opts)
    np.testing.assert_allclose(at_eq.rho, rho_star, rtol=1e-12)


def test_norm_follows_scalar_recursion_with_constant_gradient_norm():
    lr, wd, big_g = 0.3, 0.02, 0.8
    traj = simulate("spiral", lr=lr, wd=wd, steps=1000, rho0=0.2, loss_options={"grad_norm": 0.8})
    x = 0.04
    ref = []
    for _ in range(1000):
        ref.append(math.sqrt(x))
        x = (1 - lr * wd) ** 2 * x + lr**2 * big_g**2 / x
    np.testing.assert_allclose(traj.rho, ref, rtol=1e-12)


def test_zero_gradient_decay_is_exact():
    lr, wd = 0.5, 0.01
    traj = simulate("flat", lr=lr, wd=wd, steps=2000, dim=3, rho0=2.0)
    t = traj.step.astype(float)
    np.testing.assert_allclose(traj.rho, 2.0 * (1 - lr * wd) ** t, rtol=1e-12)
    np.testing.assert_allclose(traj.rho, theory.zero_grad_norm(t, 2.0, lr, wd), rtol=1e-12)


def test_rayleigh_first_destabilization_just_above_threshold():
    """A small noise floor keeps the deviation from the minimum at ~1e-7 rad; the top
    mode grows once elr > 2(1 - lr wd)/S, and the loss leaves its floor shortly after."""
    for lr, wd in ((0.1, 1e-2), (0.1, 1e-3)):
        traj = simulate(
            "rayleigh", lr=lr, wd=wd, steps=int(3 / (lr * wd)), dim=10, seed=1, noise=1e-8
        )
        s = traj.meta["sharpness_min"]
        assert s == pytest.approx(1.0)
        thr = float(theory.stability_threshold_elr(lr, wd, s))
        cross = int(np.argmax(traj.elr > thr))
        assert cross > 0
        # the loss floor over the second half of the approach to the threshold
        half = cross // 2
        floor = float(np.median(traj.loss[half:cross]))
        assert floor < 1e-12 * traj.loss[0]
        # first destabilization: the loss rises 100x above that floor
        k = half + int(np.argmax(traj.loss[half:] > 100 * floor))
        assert k >= cross, "the loss grew before the threshold was crossed"
        assert thr < traj.elr[k] < 1.08 * thr


@pytest.mark.parametrize(
    ("optimizer", "momentum"), [("sgd", 0.0), ("sgd", 0.9), ("nesterov", 0.9), ("sgd", 0.5)]
)
def test_isotropic_noise_equilibrium_matches_theory(optimizer, momentum):
    """Flat loss + tangent noise (docs/theory.md section 6): gradients uncorrelated across
    steps with E g~^2 = sigma^2 (d - 1); the stationary norm and RMS angular update
    match the closed forms (SGD exact; heavy ball / Nesterov under the second-moment
    model) to the statistical accuracy of the time average."""
    lr, wd, d = 0.1, 1e-2, 500
    sigma = 1.0 / math.sqrt(d - 1)
    steps = int(12 * (1 - momentum) / (lr * wd)) + 4000
    traj = simulate(
        "flat", optimizer, lr=lr, wd=wd, momentum=momentum, steps=steps, dim=d, noise=sigma
    )
    late = traj.step >= 4000
    g_rms = float(np.sqrt(np.mean(traj.grad_norm_sphere[late] ** 2)))
    assert g_rms == pytest.approx(1.0, rel=0.01)
    nest = optimizer == "nesterov"
    if momentum == 0.0:
        rho = theory.sgd_equilibrium_norm(lr, wd, g_rms)
        ang = theory.sgd_equilibrium_angle(lr, wd)
    else:
        rho = theory.sgdm_equilibrium_norm(lr, wd, g_rms, momentum, nesterov=nest)
        ang = theory.sgdm_equilibrium_angle(lr, wd, momentum, nesterov=nest)
    assert np.mean(traj.rho[late]) == pytest.approx(float(rho), rel=3e-3)
    assert np.sqrt(np.mean(traj.angular_update[late] ** 2)) == pytest.approx(float(ang), rel=3e-3)


def test_adamw_isotropic_noise_equilibrium_matches_theory():
    """AdamW on a flat loss with tangent noise: norm sqrt(lr C/(2 wd)) and angle
    sqrt(2 lr wd (1 - b1)/(1 + b1)) (docs/theory.md section 5) for C = dim parameters."""
    lr, wd, d = 1e-3, 1.0, 1000
    traj = simulate("flat", "adamw", lr=lr, wd=wd, steps=16_000, dim=d, noise=1.0, seed=2)
    late = traj.step >= 6_000
    norm = float(theory.adamw_equilibrium_norm(lr, wd, d))
    assert np.mean(traj.rho[late]) == pytest.approx(norm, rel=3e-3)
    ang = float(theory.adamw_equilibrium_angle(lr, wd, 0.9))
    assert np.sqrt(np.mean(traj.angular_update[late] ** 2)) == pytest.approx(ang, rel=3e-3)


# ------------------------------------------------------------------ symmetry
def test_scale_symmetry_exact_with_power_of_two():
    """(lr, wd, w0) -> (4 lr, wd/4, 2 w0): every operation scales exactly in binary."""
    w0 = np.random.default_rng(5).standard_normal(10)
    a = simulate("logistic", lr=0.1, wd=1e-3, steps=20000, w0=w0)
    b = simulate("logistic", lr=0.4, wd=2.5e-4, steps=20000, w0=2.0 * w0)
    assert np.array_equal(a.loss, b.loss)
    assert np.array_equal(a.angular_update, b.angular_update)
    assert np.array_equal(a.elr, b.elr)
    assert np.array_equal(2.0 * a.rho, b.rho)


@pytest.mark.parametrize("c", [3.0, 0.3])
def test_scale_symmetry_general_factor(c):
    w0 = np.random.default_rng(6).standard_normal(8)
    kw = {"steps": 3000, "dim": 8, "noise": 0.02, "seed": 4}
    a = simulate("rayleigh", lr=0.1, wd=1e-2, w0=w0, **kw)
    b = simulate("rayleigh", lr=0.1 * c, wd=1e-2 / c, w0=math.sqrt(c) * w0, **kw)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-9)
    np.testing.assert_allclose(b.angular_update, a.angular_update, rtol=1e-9)
    np.testing.assert_allclose(b.elr, a.elr, rtol=1e-9)
    np.testing.assert_allclose(b.rho, math.sqrt(c) * a.rho, rtol=1e-9)


# ------------------------------------------------------------------ reproducibility
def test_same_seed_same_numbers_bit_for_bit(monkeypatch):
    kw = {"lr": 0.1, "wd": 1e-3, "steps": 5000, "batch": 16, "noise": 1e-3, "seed": 7}
    a = simulate("logistic", **kw)
    b = simulate("logistic", **kw)
    for col in ("loss", "rho", "grad_norm_sphere", "elr", "angular_update"):
        assert np.array_equal(a.column(col), b.column(col)), col
    # chunking is invisible: a different chunk size gives the same bits
    monkeypatch.setattr(S, "CHUNK", 777)
    c = simulate("logistic", **kw)
    for col in ("loss", "rho", "angular_update"):
        assert np.array_equal(a.column(col), c.column(col)), col
    d = simulate("logistic", **dict(kw, seed=8))
    assert not np.array_equal(a.loss, d.loss)


# ------------------------------------------------------------------ recording
def test_thinned_record_keeps_events_at_full_resolution():
    n, every, window = 30000, 100, 50
    full = simulate(lr=0.1, wd=1e-3, steps=n + 1)  # one more step: rho after the last row
    thin = simulate(lr=0.1, wd=1e-3, steps=n, record_every=every, event_window=window)
    assert len(thin) < n // 5
    # kept rows are the full run's rows, bit for bit
    assert np.array_equal(full.rho[thin.step], thin.rho)
    assert np.array_equal(full.loss[thin.step], thin.loss)
    # norm jumps: rho_{t+1} > (1 + tol) min(rho_{t+1-W} .. rho_t), by a plain loop
    tol = thin.meta["jump_tol"]
    assert tol == 0.02
    jumps = [
        t
        for t in range(n)
        if full.rho[t + 1] > (1 + tol) * full.rho[max(t + 1 - window, 0) : t + 1].min()
    ]
    assert len(jumps) > 10
    want = set(range(0, n, every)) | {n - 1}  # and the run's last step, always kept
    for j in jumps:
        want.update(range(max(j - window, 0), min(j + window + 1, n)))
    assert set(thin.step.tolist()) == want


def test_thinning_ignores_equilibrium_noise():
    """Minibatch noise at equilibrium moves the norm by far less than 2% per window."""
    traj = simulate(
        "logistic", lr=0.1, wd=1e-3, steps=200_000, batch=10, max_points=2000, event_window=100
    )
    assert traj.meta["record_every"] == 100
    assert len(traj) < 4000


def test_max_points_sets_record_every():
    traj = simulate("flat", lr=0.1, wd=0.01, steps=10000, dim=3, max_points=100)
    assert traj.meta["record_every"] == 100
    assert len(traj) == 100 + 1 and traj.step[-1] == 9999  # and the run's last step


def test_sharpness_column():
    w0 = np.array([1.0, 0.5, -0.2, 0.1])
    toy = L.rayleigh(spectrum=[0.0, 1.0, 2.0, 3.0], quartic=1.0)
    traj = simulate(toy, lr=0.1, wd=0.01, steps=50, w0=w0, sharpness=True)
    assert traj.sharpness_sphere[0] == pytest.approx(
        L.sharpness_numpy(toy.kind, w0, toy.params, toy.data), rel=1e-12
    )
    assert np.all(np.isfinite(traj.sharpness_sphere))
    thin = simulate(toy, lr=0.1, wd=0.01, steps=50, w0=w0, sharpness=True, record_every=10)
    assert np.array_equal(thin.sharpness_sphere[:-1], traj.sharpness_sphere[::10])
    # the run's last step is kept off the stride, without a sharpness (as rows near jumps)
    assert thin.step[-1] == 49 and np.isnan(thin.sharpness_sphere[-1])


def test_checkpoint_file(tmp_path):
    path = tmp_path / "t.npz"
    traj = simulate("rayleigh", lr=0.1, wd=0.01, steps=100, checkpoint=path)
    back = Trajectory.load(path)
    assert np.array_equal(back.rho, traj.rho)
    assert back.meta["status"] == "ok"


# ------------------------------------------------------------------ extremes
def test_underflow_stops_cleanly():
    traj = simulate("flat", lr=0.5, wd=1.0, steps=1000, dim=3, rho0=1e-140)
    assert traj.status == "underflow"
    # rho halves each step: 1e-140 * 2^-k < 1e-150 first at k = 34
    assert len(traj) == 34
    assert np.all(np.isfinite(traj.rho)) and traj.rho[-1] >= S.RHO_MIN


def test_divergence_stops_cleanly():
    # a tiny norm makes the step lr g~/rho huge: the norm leaves the float range
    traj = simulate("rayleigh", lr=1000.0, wd=0.0, steps=100, dim=4, rho0=1e-149)
    assert traj.status == "diverged"
    assert len(traj) == 1
    assert np.all(np.isfinite(traj.loss))


def test_overflowing_update_drops_the_row_without_an_angle():
    # lr g ~ 1e200 * 1e149: the new weights are inf, so row 0 has no angular update
    traj = simulate("rayleigh", lr=1e200, wd=0.0, steps=10, dim=4, rho0=1e-149)
    assert traj.status == "diverged"
    assert len(traj) == 0 and traj.meta["steps_done"] == 0


def test_interrupt_returns_what_was_simulated(monkeypatch, tmp_path):
    real = S._run_chunk
    calls = {"n": 0}

    path = tmp_path / "t.npz"
    seen = []

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] > 1:
            # the checkpoint written after the previous chunk
            mid = Trajectory.load(path)
            seen.append((mid.status, len(mid)))
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(S, "CHUNK", 1000)
    monkeypatch.setattr(S, "_run_chunk", interrupted)
    traj = simulate("rayleigh", lr=0.1, wd=0.01, steps=10000, checkpoint=path, checkpoint_every=0.0)
    assert seen == [("interrupted", 1000), ("interrupted", 2000)]
    assert traj.status == "interrupted"
    assert traj.meta["steps_done"] == 2000
    assert list(traj.step) == list(range(2000))
    back = Trajectory.load(path)
    assert back.status == "interrupted" and len(back) == 2000


def test_progress_line_without_tqdm(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    simulate("flat", lr=0.1, wd=0.01, steps=100, dim=3, progress=True)
    err = capsys.readouterr().err
    assert "simulate: 100/100 steps (100%)" in err
    simulate("flat", lr=0.1, wd=0.01, steps=100, dim=3, progress=False)
    assert capsys.readouterr().err == ""


def test_progress_bar_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    simulate("flat", lr=0.1, wd=0.01, steps=100, dim=3, progress=True)
    err = capsys.readouterr().err
    assert "simulate" in err and "100/100" in err


# ------------------------------------------------------------------ optimizers
def test_optimizers_run_and_record_meta():
    for name, kw in (
        ("sgd", {"momentum": 0.9}),
        ("nesterov", {"momentum": 0.9}),
        ("adamw", {}),
        ("fixed_norm", {}),
        ("fixed_elr", {}),
    ):
        traj = simulate("rayleigh", name, lr=0.05, wd=0.01, steps=200, rho0=2.0, **kw)
        assert traj.meta["optimizer"] == name
        assert traj.status == "ok"
        if name.startswith("fixed"):
            np.testing.assert_allclose(traj.rho, 2.0, rtol=1e-13)
    elr = simulate("rayleigh", "fixed_elr", lr=0.05, wd=0.0, steps=10, rho0=2.0)
    np.testing.assert_allclose(elr.elr, 0.05, rtol=1e-13)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -5}, "steps must be >= 1"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"loss": "nope"}, "unknown loss 'nope'"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"lr": 10.0, "wd": 0.1}, "lr\\*wd must be < 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"noise": -1.0}, "noise must be >= 0"),
        ({"loss": "rayleigh", "batch": 4}, "batch applies to data toys"),
        ({"batch": 0}, "batch must be >= 1"),
        ({"w0": [1.0, 2.0]}, "w0 must have 10 entries"),
        ({"w0": np.zeros(10)}, "w0 must be nonzero"),
        ({"rho0": -1.0}, "rho0 must be > 0"),
        ({"record_every": 0}, "record_every must be a positive integer"),
        ({"loss_options": {"bogus": 1}}, "bad option for loss 'logistic'"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    base = {"loss": "logistic", "lr": 0.1, "wd": 1e-3, "steps": 10}
    base.update(kwargs)
    loss = base.pop("loss")
    with pytest.raises(ValueError, match=match):
        simulate(loss, **base)


# ------------------------------------------------------------------ fused SGD paths
def _sgd_numpy(toy, lr, wd, w0, steps, sigma=0.0, xi=None):
    """SGD + coupled WD with the numpy twins; angle from the unit vectors (acos-free)."""
    w = np.array(w0, dtype=float)
    rows = []
    for t in range(steps):
        f, g = L.value_and_grad_numpy(toy.kind, w, toy.params, toy.data)
        if sigma > 0:
            g = L.add_tangent_noise_numpy(w, g, xi[t], sigma)
        w_new = (1 - lr * wd) * w - lr * g
        rho = np.linalg.norm(w)
        a, b = w / rho, w_new / np.linalg.norm(w_new)
        ang = 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))
        rows.append((f, rho, rho * np.linalg.norm(g), ang))
        w = w_new
    return np.array(rows)


@pytest.mark.parametrize("quartic", [0.0, 2.0])
def test_fused_rayleigh_path_matches_numpy_map(quartic):
    # plain Rayleigh (one fused pass) and with a quartic term (generic gradient)
    toy = L.rayleigh(7, spectrum=[0.5, 1.0, 3.0, 7.0, 9.0, 11.0, 19.0], quartic=quartic)
    w0 = np.random.default_rng(11).standard_normal(7)
    lr, wd, steps = 0.1, 0.02, 400
    traj = simulate(toy, lr=lr, wd=wd, steps=steps, w0=w0)
    ref = _sgd_numpy(toy, lr, wd, w0, steps)
    for col, k in (("loss", 0), ("rho", 1), ("grad_norm_sphere", 2), ("angular_update", 3)):
        np.testing.assert_allclose(traj.column(col), ref[:, k], rtol=1e-10, err_msg=col)


def test_fused_path_with_noise_matches_numpy_map():
    toy = L.rayleigh(5)
    w0 = np.random.default_rng(12).standard_normal(5)
    lr, wd, steps, sigma, seed = 0.2, 0.01, 300, 0.05, 9
    traj = simulate(toy, lr=lr, wd=wd, steps=steps, w0=w0, noise=sigma, seed=seed)
    # the noise stream of simulate: third child of SeedSequence(seed), one (steps, dim) draw
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    xi = rng.standard_normal((steps, 5))
    ref = _sgd_numpy(toy, lr, wd, w0, steps, sigma, xi)
    np.testing.assert_allclose(traj.rho, ref[:, 1], rtol=1e-10)
    np.testing.assert_allclose(traj.grad_norm_sphere, ref[:, 2], rtol=1e-10)
    np.testing.assert_allclose(traj.angular_update, ref[:, 3], rtol=1e-9)


@pytest.mark.parametrize("loss", ["rayleigh", "spiral"])
def test_fused_paths_are_chunk_invariant(monkeypatch, loss):
    kw = {"lr": 0.3, "wd": 0.01, "steps": 3000, "seed": 2}
    a = simulate(loss, **kw)
    monkeypatch.setattr(S, "CHUNK", 333)
    b = simulate(loss, **kw)
    for col in ("loss", "rho", "grad_norm_sphere", "angular_update"):
        assert np.array_equal(a.column(col), b.column(col)), col


def test_simulation_gradient_kernel_matches_twin():
    rng = np.random.default_rng(13)
    toys = [L.rayleigh(9), L.rayleigh(6, quartic=1.5), L.logistic(6, n_samples=30), L.spiral()]
    for toy in toys:
        for _ in range(5):
            w = rng.standard_normal(toy.dim) * rng.uniform(0.1, 10.0)
            r2 = float(w @ w)
            u, g = np.empty(toy.dim), np.empty(toy.dim)
            f = L._si_value_grad_step(
                toy.kind,
                w,
                r2,
                math.sqrt(r2),
                toy.params,
                toy.data,
                L._NO_IDX,
                0,
                u,
                g,
                *L._step_scratch(toy.kind, toy.params, toy.data),
            )
            f_ref, g_ref = L.value_and_grad_numpy(toy.kind, w, toy.params, toy.data)
            assert f == pytest.approx(f_ref, rel=1e-12, abs=1e-15)
            np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-15 * np.abs(g_ref).max())
            if toy.n_samples:  # a minibatch of rows (with repeats)
                idx = rng.integers(0, toy.n_samples, size=7)
                f = L._si_value_grad_step(
                    toy.kind,
                    w,
                    r2,
                    math.sqrt(r2),
                    toy.params,
                    toy.data,
                    idx,
                    7,
                    u,
                    g,
                    *L._step_scratch(toy.kind, toy.params, toy.data),
                )
                f_ref, g_ref = L.value_and_grad_numpy(toy.kind, w, toy.params, toy.data, idx)
                assert f == pytest.approx(f_ref, rel=1e-12)
                np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-15 * np.abs(g_ref).max())


def test_full_record_and_thinned_record_hold_the_same_rows():
    # record_every=1 writes straight into full-length columns; thinning takes the other path
    kw = {"lr": 0.2, "wd": 0.01, "steps": 40_000, "seed": 3, "batch": 8}
    a = simulate("logistic", **kw)
    b = simulate("logistic", record_every=3, event_window=0, **kw)
    assert len(a) == 40_000 and a.step.tolist() == list(range(40_000))
    assert b.step.tolist() == list(range(0, 40_000, 3))
    for col in ("loss", "rho", "grad_norm_sphere", "elr", "angular_update"):
        assert np.array_equal(a.column(col)[::3], b.column(col)), col
    np.testing.assert_allclose(a.elr, 0.2 / a.rho**2, rtol=1e-15)
    # a run that stops early keeps only its rows (an owned copy, not a view of the full buffer)
    c = simulate("rayleigh", lr=1e200, wd=0.0, steps=50_000, dim=4, rho0=1e-140)
    assert c.status == "diverged" and len(c) < 50_000
    assert c.rho.base is None or c.rho.base.size == len(c)


_SAME_BITS_CHILD = """
import hashlib
import numpy as np
from siflow import losses as L
from siflow.simulate import simulate
toy = L.logistic(64, n_samples=200, seed=3)
h = hashlib.sha1()
for kw in ({}, {"batch": 100}, {"momentum": 0.9}, {"noise": 0.01}, {"optimizer": "fixed_norm"}):
    tr = simulate(toy, lr=0.1, wd=1e-2, steps=300, seed=0, progress=False, **kw)
    h.update(np.ascontiguousarray(tr.loss).tobytes() + np.ascontiguousarray(tr.rho).tobytes())
tr = simulate("logistic", lr=0.1, wd=1e-2, steps=300, seed=0, progress=False)
h.update(np.ascontiguousarray(tr.loss).tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_same_bits_from_a_fresh_compile_and_from_numbas_cache(tmp_path):
    # the first process compiles the loop and writes numba's cache, the second loads it:
    # the loss sums must not depend on which (they were 1 ulp apart before the logistic
    # kernels were inlined into the loop)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = str(Path(L.__file__).resolve().parent.parent)
    runs = [
        subprocess.run(
            [sys.executable, "-c", _SAME_BITS_CHILD],
            env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert any((tmp_path / "cache").rglob("*.nbc"))  # the second run loaded a cache
    assert runs[0] == runs[1]
