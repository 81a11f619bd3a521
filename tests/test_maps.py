"""Tests of siflow.maps: kernels vs numpy twins, closed forms, and full SGD runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from siflow import maps
from siflow.trajectory import Trajectory


# ----------------------------------------------------------------- references
def rayleigh_grad(w: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Gradient of L(w) = w'Aw/(2w'w), A = diag(lam) (derived by hand)."""
    r2 = w @ w
    loss = 0.5 * (w * lam) @ w / r2
    return (lam * w - 2.0 * loss * w) / r2


def sgd_rayleigh(lr, wd, steps, w0, lam, mu=0.0):
    """Plain PyTorch-convention SGD(+heavy ball) on the Rayleigh quotient."""
    w = np.array(w0, dtype=float)
    v = np.zeros_like(w)
    rho, gt, phi = [], [], []
    for _ in range(steps):
        g = rayleigh_grad(w, lam)
        rho.append(np.linalg.norm(w))
        gt.append(np.linalg.norm(w) * np.linalg.norm(g))
        phi.append(math.atan2(w[-1], w[0]))
        v = mu * v + g + wd * w
        w = w - lr * v
    return np.array(rho), np.array(gt), np.array(phi), w


def first_jump(rho: np.ndarray, size: float = 1e-3) -> int:
    """Index of the first norm increase larger than ``size`` in log (a destabilization)."""
    up = np.flatnonzero(np.diff(np.log(rho)) > size)
    return int(up[0]) if up.size else rho.size


# ---------------------------------------------------------------- norm map
def test_norm_map_equilibrium_matches_worked_number():
    # docs/theory.md worked numbers (exact): lr=0.1, wd=1e-3, G=1 -> rho* = 2.6591811889
    tr = maps.norm_map(0.1, 1e-3, 200_000, rho0=1.0, grad_norm=1.0, record_every=1000)
    assert tr.meta["rho_final"] == pytest.approx(2.6591811889, rel=1e-9)
    # angle: arccos(1 - lr wd) = 0.0141422535 at equilibrium
    assert tr.angular_update[-1] == pytest.approx(0.0141422535, rel=1e-8)


def test_norm_map_zero_gradient_is_pure_decay():
    tr = maps.norm_map(0.05, 0.02, 500, rho0=3.0, grad_norm=0.0)
    k = tr.step.astype(float)
    np.testing.assert_allclose(tr.rho, 3.0 * (1 - 0.05 * 0.02) ** k, rtol=1e-12)
    assert tr.meta["rho_final"] == pytest.approx(3.0 * 0.999**500, rel=1e-12)


def test_norm_map_hand_iteration_and_callable_driver():
    g = lambda s: 0.5 * np.exp(-s / 10.0)  # noqa: E731 - a decaying gradient-norm model
    tr = maps.norm_map(0.2, 0.1, 3, rho0=1.5, grad_norm=g)
    x = 1.5**2
    expect = []
    for s in range(3):
        expect.append(math.sqrt(x))
        x = 0.98**2 * x + 0.04 * (0.5 * math.exp(-s / 10.0)) ** 2 / x
    np.testing.assert_allclose(tr.rho, expect, rtol=1e-14)
    assert tr.meta["rho_final"] == pytest.approx(math.sqrt(x), rel=1e-14)


def test_norm_map_replays_full_sgd_run_exactly():
    lam = np.linspace(0.0, 20.0, 6)
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(6) * 2.0
    rho, gt, _, w_end = sgd_rayleigh(0.1, 0.01, 3000, w0, lam)
    run = Trajectory(step=np.arange(3000), rho=rho, grad_norm_sphere=gt, meta={"lr": 0.1})
    tr = maps.norm_map(0.1, 0.01, grad_norm=run)
    np.testing.assert_allclose(tr.rho, rho, rtol=1e-10)
    assert tr.meta["rho_final"] == pytest.approx(np.linalg.norm(w_end), rel=1e-10)


def test_norm_map_kernel_matches_numpy_twin():
    rng = np.random.default_rng(0)
    g2 = rng.uniform(0.0, 2.0, 1000)
    a = np.empty(334)
    b = np.empty(334)
    fa = maps._norm_map_kernel(0.1, 0.01, 2.0, g2, 3, a)
    fb = maps._norm_map_numpy(0.1, 0.01, 2.0, g2, 3, b)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert fa == pytest.approx(fb, rel=1e-12)
    a = np.empty((1000, 4))
    b = np.empty((1000, 4))
    maps._norm_map_momentum_kernel(0.1, 0.01, 0.9, 2.0, 0.0, 0.0, g2, 1, a)
    maps._norm_map_momentum_numpy(0.1, 0.01, 0.9, 2.0, 0.0, 0.0, g2, 1, b)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_momentum_moment_map_fixed_point_is_theory_formula():
    # docs/theory.md §3: rho*^4 = lr G^2 / (wd (1-mu)(2 - lr wd/(1+mu))); sympy solves
    # the stationary moment equations to exactly this; here the iterated map agrees.
    lr, wd, mu = 0.1, 1e-3, 0.9
    tr = maps.norm_map(lr, wd, 300_000, rho0=2.0, grad_norm=1.0, momentum=mu, record_every=1000)
    expect = (lr / (wd * (1 - mu) * (2 - lr * wd / (1 + mu)))) ** 0.25
    assert tr.meta["rho_final"] == pytest.approx(expect, rel=1e-9)
    # worked number of docs/theory.md §3
    assert tr.meta["rho_final"] == pytest.approx(4.7287392, rel=1e-7)
    # first-order angle sqrt(2 lr wd/(1+mu)) to O(lr wd)
    assert tr.angular_update[-1] == pytest.approx(math.sqrt(2 * lr * wd / (1 + mu)), rel=1e-4)


def test_momentum_moment_map_against_random_orthogonal_gradients():
    # Heavy ball driven by random gradients orthogonal to w and (nearly) to v, norm G/|w|:
    # the mean of |w|^2 follows the moment map.
    lr, wd, mu, dim, steps = 0.1, 0.01, 0.5, 4000, 1500
    rng = np.random.default_rng(1)
    w = np.zeros(dim)
    w[0] = 1.0
    v = np.zeros(dim)
    rho2 = []
    for _ in range(steps):
        rho2.append(w @ w)
        e = rng.standard_normal(dim)
        e -= (e @ w) / (w @ w) * w
        g = e / np.linalg.norm(e) / np.linalg.norm(w)
        v = mu * v + g + wd * w
        w = w - lr * v
    tr = maps.norm_map(lr, wd, steps, rho0=1.0, grad_norm=1.0, momentum=mu)
    np.testing.assert_allclose(tr.rho**2, rho2, rtol=0.03)


# ---------------------------------------------------------------- profiles
@pytest.mark.parametrize("family,shape", [("quadratic", None), ("logistic", {"margin": 2.0})])
def test_profile_derivatives(family, shape):
    S = 37.0
    phi = np.linspace(-1.0, 1.0, 41)
    f, fp, fpp = maps.profile(phi, S, family, shape)
    h = 1e-5
    fph = maps.profile(phi + h, S, family, shape)[0]
    fmh = maps.profile(phi - h, S, family, shape)[0]
    np.testing.assert_allclose(fp, (fph - fmh) / (2 * h), rtol=1e-6, atol=1e-8)
    d1p = maps.profile(phi + h, S, family, shape)[1]
    d1m = maps.profile(phi - h, S, family, shape)[1]
    np.testing.assert_allclose(fpp, (d1p - d1m) / (2 * h), rtol=1e-6, atol=1e-6)
    f0, fp0, fpp0 = maps.profile(0.0, S, family, shape)
    assert fp0 == pytest.approx(0.0, abs=1e-12)
    assert fpp0 == pytest.approx(S, rel=1e-12)


def test_logistic_profile_is_two_point_logistic_regression():
    s, alpha = maps.logistic_temperature(10.0, margin=3.0)
    assert s * math.cos(alpha) == pytest.approx(3.0, rel=1e-12)
    phi = 0.3
    expect = 0.5 * (
        math.log1p(math.exp(-s * math.cos(phi - alpha)))
        + math.log1p(math.exp(-s * math.cos(phi + alpha)))
    )
    assert maps.profile(phi, 10.0, "logistic", {"margin": 3.0})[0] == pytest.approx(expect)


# ---------------------------------------------------------------- reduced map
def test_reduced_map_is_exact_for_rayleigh_plane():
    # Rayleigh quotient with w in the plane of the smallest and largest eigenvectors:
    # the plane is invariant and the reduced (rho, phi) map is exact.
    lam = np.array([0.0, 3.0, 7.0, 20.0])
    lr, wd, steps = 0.1, 0.005, 4000
    w0 = np.array([1.2 * math.cos(0.2), 0, 0, 1.2 * math.sin(0.2)])
    rho, gt, phi, _ = sgd_rayleigh(lr, wd, steps, w0, lam)
    tr = maps.reduced_map(lr, wd, steps, sharpness=20.0, rho0=1.2, phi0=0.2)
    # the run contains destabilizations (norm jumps), which amplify round-off: 1e-6
    assert np.sum(np.diff(np.log(rho)) > 0.05) >= 2
    np.testing.assert_allclose(tr.rho, rho, rtol=1e-6)
    np.testing.assert_allclose(tr.extra["phi"], phi, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(tr.grad_norm_sphere, gt, rtol=1e-5, atol=1e-9)
    k = first_jump(rho)
    np.testing.assert_allclose(tr.rho[:k], rho[:k], rtol=1e-11)


def test_reduced_momentum_map_is_exact_heavy_ball_for_rayleigh_plane():
    lam = np.array([0.0, 5.0, 20.0])
    lr, wd, mu, steps = 0.05, 0.01, 0.9, 3000
    w0 = np.array([1.0 * math.cos(0.3), 0, 1.0 * math.sin(0.3)])
    rho, gt, phi, _ = sgd_rayleigh(lr, wd, steps, w0, lam, mu=mu)
    tr = maps.reduced_map(lr, wd, steps, sharpness=20.0, momentum=mu, rho0=1.0, phi0=0.3)
    # several destabilizations (norm jumps) happen; each amplifies round-off a little
    assert np.sum(np.diff(np.log(rho)) > 0.05) >= 5
    np.testing.assert_allclose(tr.rho[:1500], rho[:1500], rtol=1e-10)
    np.testing.assert_allclose(tr.extra["phi"][:1500], phi[:1500], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(tr.rho, rho, rtol=1e-6)


def test_reduced_momentum_kernel_at_zero_momentum_equals_sgd_kernel():
    kw = dict(sharpness=50.0, family="logistic", noise=1e-3, dim=20, seed=4, phi0=0.05)
    a = maps.reduced_map(0.1, 0.01, 5000, **kw)
    out = np.empty((5000, 7))
    xi, perp2 = maps._draw_noise(5000, 1e-3, 20, 4)
    fid, p0, p1, table = maps._family_params("logistic", 50.0, None)
    rho0 = 2.0 * math.sqrt(0.1 * 50.0 / (2 * (1 - 0.001)))
    maps._reduced_momentum_kernel(
        0.1, 0.01, 0.0, rho0, 0.05, fid, p0, p1, table, xi, perp2, 0.0, 1, out
    )
    k = first_jump(a.rho)
    assert k > 500
    np.testing.assert_allclose(out[:k, 1], a.rho[:k], rtol=1e-10)
    np.testing.assert_allclose(out[:k, 6], a.extra["phi"][:k], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("family", ["quadratic", "logistic"])
@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_reduced_kernels_match_numpy_twins(family, momentum):
    kw = dict(sharpness=30.0, family=family, momentum=momentum, noise=1e-4, dim=8, seed=2)
    a = maps.reduced_map(0.1, 0.003, 3000, record_every=2, **kw)
    b = maps.reduced_map(0.1, 0.003, 3000, record_every=2, engine="numpy", **kw)
    for name in ("loss", "rho", "grad_norm_sphere", "elr", "angular_update", "sharpness_sphere"):
        np.testing.assert_allclose(a.column(name), b.column(name), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(a.extra["phi"], b.extra["phi"], rtol=1e-12, atol=1e-300)


def test_reduced_map_linear_stability_threshold():
    # Linearised direction map: phi_{t+1} = (1 - elr S/(1 - lr wd)) phi_t; with a tiny phi the
    # first ratio is that factor; unstable iff elr S > 2 (1 - lr wd) (docs/theory.md §2).
    lr, wd, S = 0.1, 1e-3, 40.0
    rho_crit = math.sqrt(lr * S / (2 * (1 - lr * wd)))
    for scale in (0.98, 1.02):
        tr = maps.reduced_map(lr, wd, 2, sharpness=S, rho0=scale * rho_crit, phi0=1e-9)
        factor = 1 - (lr / (scale * rho_crit) ** 2) * S / (1 - lr * wd)
        assert tr.extra["phi"][1] / tr.extra["phi"][0] == pytest.approx(factor, rel=1e-9)
        assert (abs(factor) > 1) == (scale < 1)


def test_reduced_map_destabilizes_just_above_threshold():
    # Start stable; the first large norm jump happens with elr just above 2(1 - lr wd)/S.
    lr, wd, S = 0.1, 0.01, 100.0
    tr = maps.reduced_map(lr, wd, 3000, sharpness=S, phi0=1e-3, floor=1e-12)
    jump = np.flatnonzero(np.diff(np.log(tr.rho)) > 1e-3)[0]
    thr = 2 * (1 - lr * wd) / S
    assert 1.0 < tr.elr[jump] / thr < 1.5
    assert np.all(tr.elr[: jump - 200] < thr)


def test_reduced_map_noise_equilibrium_on_flat_direction():
    # Far below threshold with only off-circle noise the norm follows the noisy norm map,
    # whose mean fixed point is rho^4 = lr noise^2 (dim-2)/(wd (2 - lr wd)) (+ in-plane part).
    lr, wd, sigma, dim = 0.1, 0.01, 0.05, 402
    tr = maps.reduced_map(lr, wd, 20000, sharpness=1e-3, noise=sigma, dim=dim, seed=0)
    expect = (lr * sigma**2 * (dim - 1) / (wd * (2 - lr * wd))) ** 0.25
    assert np.mean(tr.rho[10000:]) == pytest.approx(expect, rel=0.01)


def test_reduced_map_deterministic_with_seed():
    kw = dict(sharpness=10.0, noise=1e-3, dim=5, seed=7)
    a = maps.reduced_map(0.1, 0.01, 1000, **kw)
    b = maps.reduced_map(0.1, 0.01, 1000, **kw)
    assert np.array_equal(a.rho, b.rho)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(lr=-0.1, wd=0.01, steps=10, sharpness=1.0), "lr"),
        (dict(lr=0.1, wd=20.0, steps=10, sharpness=1.0), "lr\\*wd"),
        (dict(lr=0.1, wd=0.01, steps=0, sharpness=1.0), "steps"),
        (dict(lr=0.1, wd=0.01, steps=10, sharpness=-1.0), "sharpness"),
        (dict(lr=0.1, wd=0.01, steps=10, sharpness=1.0, family="cubic"), "family"),
        (dict(lr=0.1, wd=0.01, steps=10, sharpness=1.0, momentum=1.0), "momentum"),
        (dict(lr=0.1, wd=0.01, steps=10, sharpness=1.0, dim=1), "dim"),
        (dict(lr=0.1, wd=0.01, steps=10, sharpness=1.0, noise=-1.0), "noise"),
    ],
)
def test_reduced_map_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        maps.reduced_map(**kwargs)


def test_norm_map_validation():
    with pytest.raises(ValueError, match="rho0"):
        maps.norm_map(0.1, 0.01, 10, grad_norm=1.0)
    with pytest.raises(ValueError, match="grad_norm"):
        maps.norm_map(0.1, 0.01, 10, rho0=1.0, grad_norm=np.ones(5))
    with pytest.raises(ValueError, match="grad_norm"):
        maps.norm_map(0.1, 0.01, 10, rho0=1.0, grad_norm=-1.0)
    with pytest.raises(ValueError, match="steps"):
        maps.norm_map(0.1, 0.01, rho0=1.0, grad_norm=1.0)


# ---------------------------------------------------------------- tabulated profiles
def rayleigh_value_grad(w: np.ndarray, lam: np.ndarray):
    r2 = w @ w
    return 0.5 * (w * lam) @ w / r2, rayleigh_grad(w, lam)


def test_circle_profile_of_rayleigh_is_the_quadratic_family():
    lam = np.array([0.0, 2.0, 5.0, 9.0])
    u, v = np.eye(4)[0], np.eye(4)[3]

    def hvp(w, x, h=1e-6):
        return (rayleigh_grad(w + h * x, lam) - rayleigh_grad(w - h * x, lam)) / (2 * h)

    shape = maps.circle_profile(lambda w: rayleigh_value_grad(w, lam), hvp, u, v, n=2001)
    phi = np.linspace(-1.2, 1.2, 97)  # nodes and points between nodes
    f, fp, fpp = maps.profile(phi, None, "table", shape)
    # by hand: f = (9/2) sin^2 phi, f' = (9/2) sin 2 phi, f'' = 9 cos 2 phi
    np.testing.assert_allclose(f, 4.5 * np.sin(phi) ** 2, atol=1e-9)
    np.testing.assert_allclose(fp, 4.5 * np.sin(2 * phi), atol=1e-8)
    np.testing.assert_allclose(fpp, 9.0 * np.cos(2 * phi), atol=1e-4)


def test_reduced_map_table_family_matches_analytic_family():
    S = 9.0
    phi = np.linspace(-np.pi / 2, np.pi / 2, 4001)
    shape = {
        "phi_max": np.pi / 2,
        "f": 0.5 * S * np.sin(phi) ** 2,
        "fp": 0.5 * S * np.sin(2 * phi),
        "fpp": S * np.cos(2 * phi),
    }
    kw = dict(rho0=1.0, phi0=0.3)
    a = maps.reduced_map(0.1, 0.01, 1500, sharpness=S, **kw)
    b = maps.reduced_map(0.1, 0.01, 1500, family="table", shape=shape, **kw)
    assert b.meta["sharpness_min"] == pytest.approx(S)
    # the run decays to a tiny deviation (~1e-300) and destabilizes near step 1080: the
    # table resolves deviations at any scale
    assert np.min(np.abs(a.extra["phi"])) < 1e-200
    assert np.any(np.diff(np.log(a.rho[1000:])) > 0.01)
    np.testing.assert_allclose(b.rho, a.rho, rtol=1e-9)
    c = maps.reduced_map(0.1, 0.01, 1500, family="table", shape=shape, engine="numpy", **kw)
    np.testing.assert_allclose(b.rho, c.rho, rtol=1e-12)


def test_table_family_validation():
    with pytest.raises(ValueError, match="table"):
        maps.reduced_map(0.1, 0.01, 10, family="table", shape={"f": [1, 2, 3]})
    bad = {"phi_max": 1.0, "f": np.zeros(5), "fp": np.zeros(4), "fpp": np.zeros(5)}
    with pytest.raises(ValueError, match="same length"):
        maps.reduced_map(0.1, 0.01, 10, family="table", shape=bad)
    with pytest.raises(ValueError, match="sharpness"):
        maps.reduced_map(0.1, 0.01, 10, family="quadratic")


# ------------------------------------------------- Trajectory with integer steps
def test_trajectory_integer_steps_keep_their_checks():
    # integer step columns skip the float round trip but keep every other check
    t = Trajectory(step=np.array([0, 5, 7], dtype=np.uint32), rho=[1.0, 2.0, 3.0])
    assert t.step.dtype == np.int64 and t.step.tolist() == [0, 5, 7]
    src = np.arange(4, dtype=np.int64)
    t = Trajectory(step=src, rho=np.ones(4))
    src[0] = 99  # the trajectory owns its step column
    assert t.step.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="strictly increasing"):
        Trajectory(step=np.array([0, 2, 2], dtype=np.int32))
    with pytest.raises(ValueError, match="whole numbers"):
        Trajectory(step=np.array([0.0, 1.5]))
    with pytest.raises(ValueError, match="NaN or inf"):
        Trajectory(step=np.array([0.0, np.nan]))
    assert Trajectory(step=np.array([0.0, 3.0])).step.tolist() == [0, 3]


def test_norm_map_columns_kernel_matches_twin_and_the_plain_chain():
    rng = np.random.default_rng(4)
    g = rng.uniform(0.0, 2.0, 1000)
    # every recorded row (unit stride of the driver), every third row, a constant driver
    for drv, stride, every in ((g, 1, 1), (g, 1, 3), (np.array([0.7]), 0, 3)):
        rows = (1000 - 1) // every + 1
        cols_a = [np.empty(rows) for _ in range(3)]
        cols_b = [np.empty(rows) for _ in range(3)]
        fa = maps._norm_map_columns_kernel(0.1, 0.01, 2.0, drv, stride, 1000, every, *cols_a)
        fb = maps._norm_map_columns_numpy(0.1, 0.01, 2.0, drv, stride, 1000, every, *cols_b)
        for a, b in zip(cols_a, cols_b, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        assert fa == pytest.approx(fb, rel=1e-12)
        # the same chain, operation for operation, as the rho^2-only kernel
        g2 = (drv if stride else np.full(1000, drv[0])) ** 2
        x = np.empty(rows)
        assert maps._norm_map_kernel(0.1, 0.01, 2.0, g2, every, x) == fa
        assert np.array_equal(np.sqrt(x), cols_a[0])
        np.testing.assert_allclose(cols_a[1], 0.1 / x, rtol=1e-15)
        # tan(Delta) = elr g~ / (1 - lr wd) at each recorded step
        g_rows = drv[::every] if stride else np.full(rows, drv[0])
        np.testing.assert_allclose(cols_a[2], 0.1 / x * g_rows / (1 - 0.1 * 0.01), rtol=1e-15)


def test_norm_map_constant_and_array_drivers_agree():
    # a constant driver is not materialised; it must give the same rows as the array
    a = maps.norm_map(0.3, 0.02, 5000, rho0=0.5, grad_norm=1.3, record_every=7)
    b = maps.norm_map(0.3, 0.02, 5000, rho0=0.5, grad_norm=np.full(5000, 1.3), record_every=7)
    assert a.step.tolist() == list(range(0, 5000, 7))
    for col in ("rho", "grad_norm_sphere", "elr", "angular_update"):
        assert np.array_equal(a.column(col), b.column(col)), col
    assert a.meta["rho_final"] == b.meta["rho_final"]
    # tan(Delta) = elr g~ / (1 - lr wd), docs/theory.md §1
    np.testing.assert_allclose(np.tan(a.angular_update), a.elr * 1.3 / (1 - 0.3 * 0.02), rtol=1e-14)


def test_a_constant_driver_allocates_only_the_kept_rows():
    # 10^7 steps keeping every 10^4-th row: the rows (8 kB each column), not a step array
    # of 80 MB per column as before
    import tracemalloc

    maps.norm_map(0.1, 0.01, 100, rho0=1.0, grad_norm=0.5, record_every=10)  # compiled
    tracemalloc.start()
    try:
        t = maps.norm_map(0.1, 0.01, 10**7, rho0=1.0, grad_norm=0.5, record_every=10**4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20
    assert t.step.tolist() == list(range(0, 10**7, 10**4))
    # the kept rows are those of the full run
    full = maps.norm_map(0.1, 0.01, 10**5, rho0=1.0, grad_norm=0.5)
    part = maps.norm_map(0.1, 0.01, 10**5, rho0=1.0, grad_norm=0.5, record_every=1000)
    assert np.array_equal(full.rho[::1000], part.rho)


def test_a_norm_map_beyond_the_memory_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"needs about .* of memory .* record_every="):
        maps.norm_map(0.1, 0.01, 10**15, rho0=1.0, grad_norm=0.5)
    with pytest.raises(ValueError, match=r"needs about .* of memory"):
        maps.norm_map(0.1, 0.01, 10**13, rho0=1.0, grad_norm=lambda s: 0.5 + 0 * s)


def test_a_grad_norm_beyond_the_float_range_is_named():
    with pytest.raises(ValueError, match=r"grad_norm = .* beyond the float64 range"):
        maps.norm_map(0.1, 0.01, 10, rho0=1.0, grad_norm=10**400)
    # in a list: the number named, not the whole list's 400 digits
    with pytest.raises(ValueError, match=r"grad_norm holds 1\.000e\+400, beyond the float64 range"):
        maps.norm_map(0.1, 0.01, 2, rho0=1.0, grad_norm=[1.0, 10**400])
