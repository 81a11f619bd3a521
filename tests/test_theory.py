"""siflow.theory against independent references.

References used here, none of them the code's own output:
- the worked numbers of the theory reference, typed in;
- the exact discrete maps iterated in float64 (or mpmath for tiny lr*wd);
- one step of the actual vector update in two dimensions;
- stochastic simulations of each optimizer with random gradient directions
  orthogonal to w (uncorrelated gradients), which decide the formulas recalled from the literature.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import siflow.theory as T

LR, WD, G = 0.1, 1e-3, 1.0


# --------------------------------------------------------------------------- worked numbers


def test_worked_numbers_sgd_exact() -> None:
    # eta = 0.1, lambda = 1e-3, G = 1 (lr*wd = 1e-4); numbers typed from the theory reference
    assert T.sgd_equilibrium_norm(LR, WD, G) ** 4 == pytest.approx(50.002500125, abs=1e-9)
    assert T.sgd_equilibrium_norm(LR, WD, G) == pytest.approx(2.6591811889, abs=1e-10)
    assert T.sgd_equilibrium_elr(LR, WD, G) == pytest.approx(0.0141417821, abs=1e-10)
    assert T.sgd_equilibrium_angle(LR, WD) == pytest.approx(0.0141422535, abs=1e-10)
    assert T.sgd_equilibrium_norm(LR, WD, G, exact=False) == pytest.approx(2.6591479485, abs=1e-10)
    assert T.sgd_relaxation_factor(LR, WD) == pytest.approx(0.99960002, abs=1e-12)
    assert T.elr_doubling_time(LR, WD) == pytest.approx(3465.6, abs=0.05)
    assert T.critical_norm(LR, WD, 100.0) ** 2 == pytest.approx(5.00050005, abs=1e-9)
    assert T.exponential_lr_schedule(1e4, LR, WD) == pytest.approx(0.73905341, abs=1e-8)


def test_worked_numbers_verify_items() -> None:
    # SGDM mu = 0.9 (exact form) and the first-order angle; AdamW first-order forms
    assert T.sgdm_equilibrium_norm(LR, WD, G, 0.9) == pytest.approx(4.7287392, abs=1e-7)
    assert T.sgdm_equilibrium_angle(LR, WD, 0.9, exact=False) == pytest.approx(
        0.0102597835, abs=1e-10
    )
    assert T.adamw_equilibrium_norm(1e-3, 0.1, 1000, exact=False) == pytest.approx(
        2.2360680, abs=1e-7
    )
    assert T.adamw_equilibrium_angle(1e-3, 0.1, 0.9, exact=False) == pytest.approx(
        0.0032444284, abs=1e-10
    )


# --------------------------------------------------------------------------- SGD vs exact map

X_GRID = np.array([1e-3, 3e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])


def _iterate_norm_map(lr: np.ndarray, wd: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Fixed point of rho'^2 = (1 - lr wd)^2 rho^2 + lr^2 g^2 / rho^2 by iteration."""
    r2 = lr * g / np.sqrt(wd)  # an arbitrary start, off equilibrium
    q2 = (1.0 - lr * wd) ** 2
    c = lr**2 * g**2
    # slowest case lr*wd = 0.99: the deviation shrinks by 0.9998 per step, e^-30 after 150k
    for _ in range(150_000):
        r2 = q2 * r2 + c / r2
    # near lr*wd = 1 the multiplier is ~ -1 and rounding sustains a 2-cycle of ~1e-12
    assert np.all(np.abs(q2 * r2 + c / r2 - r2) <= 1e-11 * r2)
    return r2


def test_sgd_equilibrium_matches_iterated_map() -> None:
    lr = np.array([0.5, 0.1, 2.0, 0.01, 1.0, 0.3, 0.05, 1.5, 0.9, 0.99])
    wd = X_GRID / lr
    g = np.array([1.0, 0.3, 2.0, 5.0, 1.0, 0.7, 1.0, 3.0, 1.0, 0.1])
    r2 = _iterate_norm_map(lr, wd, g)
    np.testing.assert_allclose(T.sgd_equilibrium_norm(lr, wd, g), np.sqrt(r2), rtol=1e-9)
    np.testing.assert_allclose(T.sgd_equilibrium_elr(lr, wd, g), lr / r2, rtol=1e-9)
    # angle from one step of the actual 2-D update w = (rho, 0), grad = (0, g/rho)
    rho = np.sqrt(r2)
    w_new = np.stack([(1 - lr * wd) * rho, -lr * g / rho])
    angle = np.arctan2(-w_new[1], w_new[0])
    np.testing.assert_allclose(T.sgd_equilibrium_angle(lr, wd), angle, rtol=1e-9)
    # the step keeps the norm (fixed point) to rounding
    np.testing.assert_allclose(np.hypot(*w_new), rho, rtol=1e-12)


@pytest.mark.parametrize("x", [1e-12, 1e-9, 1e-6, 1e-3, 0.3, 0.99])
def test_sgd_forms_stable_against_mpmath(x: float) -> None:
    """Naive formulas evaluated with 60 digits vs the float64 stable forms."""
    mp.mp.dps = 60
    lr = 0.2
    wd = x / lr
    X = mp.mpf(x)
    eta = mp.mpf(lr)
    lam = X / eta
    rho4 = eta / (lam * (2 - X))
    ref = {
        "norm": rho4 ** mp.mpf("0.25"),
        "elr": eta / mp.sqrt(rho4),
        "angle": mp.acos(1 - X),
        "factor": 1 - 4 * X + 2 * X**2,
        "time": -1 / mp.log(abs(1 - 4 * X + 2 * X**2)),
        "doubling": mp.log(2) / (-2 * mp.log(1 - X)),
        "zero_norm": (1 - X) ** 1000,
    }
    got = {
        "norm": T.sgd_equilibrium_norm(lr, wd, 1.0),
        "elr": T.sgd_equilibrium_elr(lr, wd, 1.0),
        "angle": T.sgd_equilibrium_angle(lr, wd),
        "factor": T.sgd_relaxation_factor(lr, wd),
        "time": T.sgd_relaxation_time(lr, wd),
        "doubling": T.elr_doubling_time(lr, wd),
        "zero_norm": T.zero_grad_norm(1000, 1.0, lr, wd),
    }
    for key, value in ref.items():
        assert float(got[key]) == pytest.approx(float(value), rel=1e-12), key


@pytest.mark.parametrize("x", [1e-4, 1e-2, 0.1, 0.5, 0.9])
def test_relaxation_factor_is_derivative_of_map(x: float) -> None:
    mp.mp.dps = 50
    eta, g = mp.mpf("0.3"), mp.mpf("1.7")
    lam = mp.mpf(x) / eta
    q = 1 - eta * lam

    def f(r2: mp.mpf) -> mp.mpf:
        return q**2 * r2 + eta**2 * g**2 / r2

    r2_star = mp.findroot(lambda r: f(r) - r, eta * g / mp.sqrt(lam))
    deriv = mp.diff(f, r2_star)
    assert float(T.sgd_relaxation_factor(0.3, x / 0.3)) == pytest.approx(float(deriv), rel=1e-12)


@pytest.mark.parametrize("x", [1e-2, 0.1, 0.5, 0.95])
def test_relaxation_time_from_iterated_map(x: float) -> None:
    """A 1e-25 deviation iterated n ~ tau steps with 60 digits shrinks by exp(-n/tau)."""
    mp.mp.dps = 60
    eta, g = mp.mpf("0.5"), mp.mpf(1)
    lam = mp.mpf(x) / eta
    q = 1 - eta * lam
    r2_star = mp.sqrt(eta**2 * g**2 / (1 - q**2))
    dev0 = mp.mpf("1e-25") * r2_star
    r2 = r2_star + dev0
    tau = float(T.sgd_relaxation_time(0.5, x / 0.5))
    n = max(1, round(tau))
    for _ in range(n):
        r2 = q**2 * r2 + eta**2 * g**2 / r2
    ratio = abs((r2 - r2_star) / dev0)
    assert float(ratio) == pytest.approx(math.exp(-n / tau), rel=1e-9)


def _rel_errors(fn_exact, fn_first, xs: np.ndarray) -> np.ndarray:
    return np.abs(fn_first(xs) / fn_exact(xs) - 1.0)


@pytest.mark.parametrize(
    ("name", "exact", "first", "coef"),
    [
        # coefficient c of the leading relative error c*x, derived by hand
        (
            "norm",
            lambda x: T.sgd_equilibrium_norm(0.1, x / 0.1, 1.0),
            lambda x: T.sgd_equilibrium_norm(0.1, x / 0.1, 1.0, exact=False),
            1 / 8,  # (1 - x/2)^(1/4) - 1
        ),
        (
            "elr",
            lambda x: T.sgd_equilibrium_elr(0.1, x / 0.1, 1.0),
            lambda x: T.sgd_equilibrium_elr(0.1, x / 0.1, 1.0, exact=False),
            1 / 4,  # (1 - x/2)^(-1/2) - 1
        ),
        (
            "angle",
            lambda x: T.sgd_equilibrium_angle(0.1, x / 0.1),
            lambda x: T.sgd_equilibrium_angle(0.1, x / 0.1, exact=False),
            1 / 12,  # arccos(1 - x) = sqrt(2x) (1 + x/12 + ...)
        ),
        (
            "time",
            lambda x: T.sgd_relaxation_time(0.1, x / 0.1),
            lambda x: T.sgd_relaxation_time(0.1, x / 0.1, exact=False),
            3 / 2,  # -ln(1 - 4x + 2x^2) = 4x + 6x^2 + ...
        ),
        (
            "sgdm norm",
            lambda x: T.sgdm_equilibrium_norm(0.1, x / 0.1, 1.0, 0.5),
            lambda x: T.sgdm_equilibrium_norm(0.1, x / 0.1, 1.0, 0.5, exact=False),
            1 / (8 * 1.5),  # (1 - x/(2(1+mu)))^(1/4) - 1
        ),
        (
            "adamw norm",
            lambda x: T.adamw_equilibrium_norm(0.1, x / 0.1, 100, 0.0),
            lambda x: T.adamw_equilibrium_norm(0.1, x / 0.1, 100, 0.0, exact=False),
            1 / 4,  # beta1 = 0: rho^2 = eta C/(lam (2 - x))
        ),
    ],
)
def test_first_order_error_is_linear_in_x(name, exact, first, coef) -> None:
    xs = np.array([4e-3, 2e-3, 1e-3, 5e-4])
    err = _rel_errors(exact, first, xs)
    ratios = err[:-1] / err[1:]
    np.testing.assert_allclose(ratios, 2.0, rtol=0.02, err_msg=name)
    np.testing.assert_allclose(err / xs, coef, rtol=0.02, err_msg=name)


def test_decay_factor_first_order_error_is_quadratic() -> None:
    mu = 0.5
    xs = np.array([4e-3, 2e-3, 1e-3, 5e-4])
    err = np.abs(T.decay_factor(1.0, xs, mu) - (1 - xs / (1 - mu)))
    np.testing.assert_allclose(err[:-1] / err[1:], 4.0, rtol=0.03)


def test_relaxation_law_error_is_first_order() -> None:
    """Max error of the relaxation law over 3/x steps, relative to the initial deviation."""
    lr, g = 0.1, 1.0
    errs = []
    for x in (4e-3, 2e-3, 1e-3):
        wd = x / lr
        rho_star = T.sgd_equilibrium_norm(lr, wd, g)
        rho0 = 1.5 * rho_star
        n = int(3 / x)
        r2 = rho0**2
        exact = np.empty(n + 1)
        exact[0] = r2**2
        for t in range(n):
            r2 = (1 - x) ** 2 * r2 + lr**2 * g**2 / r2
            exact[t + 1] = r2**2
        law = T.sgd_relaxation_norm(np.arange(n + 1), rho0, lr, wd, g) ** 4
        errs.append(np.max(np.abs(law - exact)) / (rho0**4 - rho_star**4))
    errs = np.array(errs)
    assert np.all(errs < 0.2)  # a law, not a coincidence: error well below the deviation
    np.testing.assert_allclose(errs[:-1] / errs[1:], 2.0, rtol=0.05)
    # and its limit is the exact equilibrium
    assert T.sgd_relaxation_norm(1e7, 3.0, lr, 1e-2, g) == pytest.approx(
        T.sgd_equilibrium_norm(lr, 1e-2, g), rel=1e-12
    )


# --------------------------------------------------------------------------- zero gradient, decay


def test_zero_gradient_exact() -> None:
    lr, wd, t = 0.3, 0.2, 137
    w = np.array([3.0, -4.0])
    for _ in range(t):
        w = w - lr * (wd * w)  # SGD with coupled weight decay, zero gradient
    rho = np.linalg.norm(w)
    assert T.zero_grad_norm(t, 5.0, lr, wd) == pytest.approx(rho, rel=1e-12)
    assert T.zero_grad_elr(t, lr / 25.0, lr, wd) == pytest.approx(lr / rho**2, rel=1e-12)
    assert T.decay_factor(lr, wd) == pytest.approx(1 - lr * wd, rel=1e-15)
    t2 = T.elr_doubling_time(lr, wd)
    assert T.zero_grad_elr(t2, 1.0, lr, wd) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize(("x", "mu"), [(1e-3, 0.9), (1e-2, 0.5), (1e-5, 0.99), (0.2, 0.0)])
def test_momentum_decay_factor_from_iteration(x: float, mu: float) -> None:
    """Heavy ball with zero gradient: v <- mu v + wd w; w <- w - lr v (PyTorch order)."""
    lr = 0.5
    wd = x / lr
    w, v = 1.0, 0.0
    ratios = []
    for _ in range(20000):
        v = mu * v + wd * w
        w_new = w - lr * v
        ratios.append(w_new / w)
        w = w_new
        if abs(w) < 1e-250:
            break
    assert T.decay_factor(lr, wd, mu) == pytest.approx(ratios[-1], rel=1e-12)


@pytest.mark.parametrize(("x", "mu"), [(1e-3, 0.9), (1e-2, 0.5), (1e-5, 0.99), (0.05, 0.3)])
def test_nesterov_decay_factor_from_torch(x: float, mu: float) -> None:
    """torch.optim.SGD(nesterov=True) on a loss of zero gradient: the norm's per-step
    ratio tends to decay_factor(..., nesterov=True), not to heavy ball's."""
    import torch

    lr = 0.5
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr, momentum=mu, weight_decay=x / lr, nesterov=True)
    ratios = []
    for _ in range(20000):
        before = float(w.detach().norm())
        opt.zero_grad()
        (0.0 * w.sum()).backward()
        opt.step()
        ratios.append(float(w.detach().norm()) / before)
        if float(w.detach().norm()) < 1e-100:  # before its square underflows
            break
    got = T.decay_factor(lr, x / lr, mu, nesterov=True)
    assert got == pytest.approx(ratios[-1], rel=1e-11)
    assert T.decay_rate(lr, x / lr, mu, nesterov=True) == pytest.approx(-math.log(got), rel=1e-12)
    hb = T.decay_factor(lr, x / lr, mu)
    assert abs(hb - ratios[-1]) > 1e-9  # a different law from heavy ball's


def test_nesterov_decay_factor_complex_roots() -> None:
    lr, wd, mu = 1.0, 0.1, 0.9  # lr*wd > ((1 - mu)/(1 + mu))^2: oscillating decay
    roots = np.roots([1.0, -(1 + mu) * (1 - lr * wd), mu * (1 - lr * wd)])
    assert np.iscomplexobj(roots)
    got = T.decay_factor(lr, wd, mu, nesterov=True)
    assert got == pytest.approx(np.max(np.abs(roots)), rel=1e-12)


def test_momentum_decay_factor_complex_roots() -> None:
    lr, wd, mu = 1.0, 0.1, 0.9  # lr*wd > (1 - sqrt(mu))^2: oscillating decay
    roots = np.roots([1.0, -(1 + mu - lr * wd), mu])
    assert np.iscomplexobj(roots)
    assert T.decay_factor(lr, wd, mu) == pytest.approx(np.max(np.abs(roots)), rel=1e-12)


# --------------------------------------------------------------------------- thresholds, nullcline


@pytest.mark.parametrize("x", [1e-4, 0.1, 0.6])
def test_stability_threshold_from_vector_map(x: float) -> None:
    """One SGD step on L(w) = S theta^2/2 (SI, theta = polar angle) from a tiny theta."""
    lr, s = 0.2, 30.0
    wd = x / lr
    rho = T.critical_norm(lr, wd, s)
    elr = lr / rho**2
    assert elr == pytest.approx(T.stability_threshold_elr(lr, wd, s), rel=1e-13)
    theta = 1e-7
    w = rho * np.array([np.cos(theta), np.sin(theta)])
    e_theta = np.array([-np.sin(theta), np.cos(theta)])
    grad = s * theta / rho * e_theta
    w_new = (1 - lr * wd) * w - lr * grad
    multiplier = np.arctan2(w_new[1], w_new[0]) / theta
    assert multiplier == pytest.approx(-1.0, abs=1e-9)  # the boundary of stability


def _si_quadratic_run(
    mu: float, nesterov: bool, factor: float, lr: float = 0.1, wd: float = 1e-7, s: float = 50.0
) -> tuple[float, float, float]:
    """PyTorch's heavy ball (Nesterov) on L = S theta^2/2 from theta = 1e-6, started at
    ``factor`` times the threshold ``stability_threshold_elr``: the largest angle, the
    largest over steps 500-600, and the final norm over the initial one."""
    thr = T.stability_threshold_elr(lr, wd, s, mu, nesterov=nesterov)
    rho0 = T.critical_norm(lr, wd, s, mu, nesterov=nesterov) / math.sqrt(factor)
    assert lr / rho0**2 == pytest.approx(factor * thr, rel=1e-12)
    w = rho0 * np.array([math.cos(1e-6), math.sin(1e-6)])
    v = np.zeros(2)
    peak, final = 0.0, 0.0
    for step in range(600):
        r = np.linalg.norm(w)
        th = math.atan2(w[1], w[0])
        g = s * th / r * np.array([-math.sin(th), math.cos(th)]) + wd * w
        v = mu * v + g
        w = w - lr * (g + mu * v if nesterov else v)
        amp = abs(math.atan2(w[1], w[0]))
        peak = max(peak, amp)
        if step >= 500:
            final = max(final, amp)
    return peak, final, float(np.linalg.norm(w) / rho0)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_heavy_ball_threshold_by_simulation(mu: float) -> None:
    """Heavy ball on L = S theta^2/2 from theta = 1e-6, 3 % below / above the threshold.

    Below: theta decays and the norm stays put. Above: theta oscillates with growing
    amplitude until the centrifugal push has raised the norm (the effective LR drops
    back under the threshold), so the norm ends clearly larger.
    """
    _, final_lo, ratio_lo = _si_quadratic_run(mu, False, 0.97)
    peak_hi, _, ratio_hi = _si_quadratic_run(mu, False, 1.03)
    assert final_lo < 1e-6 and ratio_lo == pytest.approx(1.0, abs=1e-3)
    assert peak_hi > 1e-3 and ratio_hi > 1.01


@pytest.mark.parametrize("mu", [0.5, 0.9])
def test_nesterov_threshold_by_simulation(mu: float) -> None:
    """PyTorch's Nesterov update, 3 % below / above stability_threshold_elr(...,
    nesterov=True): theta decays below and grows above (heavy ball's threshold, 2 to 2.8
    times higher, would call both stable)."""
    thr = T.stability_threshold_elr(0.1, 1e-7, 50.0, mu, nesterov=True)
    assert T.stability_threshold_elr(0.1, 1e-7, 50.0, mu) > 1.9 * thr
    _, final_lo, _ = _si_quadratic_run(mu, True, 0.97)
    peak_hi, _, _ = _si_quadratic_run(mu, True, 1.03)
    assert final_lo < 1e-6
    assert peak_hi > 1e-3


def test_nullcline_keeps_elr_fixed() -> None:
    lr = np.array([0.1, 1.0, 0.05])
    wd = np.array([1e-3, 0.5, 2.0])
    elr = np.array([0.02, 0.3, 1.5])
    g = T.nullcline_grad_norm(lr, wd, elr)
    elr_next = elr / ((1 - lr * wd) ** 2 + elr**2 * g**2)
    np.testing.assert_allclose(elr_next, elr, rtol=1e-14)


# --------------------------------------------------------------------------- period


def test_period_counts_decay_steps() -> None:
    lr, wd = 0.2, 0.05
    rho_max, rho_crit = 7.0, 2.0
    n, rho = 0, rho_max
    while rho > rho_crit:
        rho *= 1 - lr * wd
        n += 1
    p = T.period(lr, wd, rho_max, rho_crit)
    assert n - 1 < p <= n
    assert T.period_from_norm_ratio(lr, wd, rho_max / rho_crit, escape_steps=10) == pytest.approx(
        p + 10, rel=1e-14
    )
    # the squared-norm form of the theory reference
    assert p == pytest.approx(
        math.log(rho_max**2 / rho_crit**2) / (-2 * math.log(1 - lr * wd)), rel=1e-14
    )


def test_period_with_momentum_on_asymptotic_mode() -> None:
    lr, wd, mu = 0.1, 0.01, 0.9  # lr*wd below (1 - sqrt(mu))^2: real roots
    alpha = T.decay_factor(lr, wd, mu)
    # start on the slow mode: w_{-1} = w_0/alpha, i.e. v_0 = (w_{-1} - w_0)/lr
    w = 10.0
    v = (w / alpha - w) / lr
    n = 0
    while w > 1.0:
        v = mu * v + wd * w
        w = w - lr * v
        n += 1
    p = T.period_from_norm_ratio(lr, wd, 10.0, momentum=mu)
    assert n - 1 < p <= n


# --------------------------------------------------------------------------- exponential LR


def _rayleigh_grad(a: np.ndarray):
    def grad(w: np.ndarray) -> np.ndarray:
        r2 = w @ w
        return 2.0 * (a @ w - (w @ a @ w / r2) * w) / r2

    return grad


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_exponential_lr_equivalence(mu: float) -> None:
    rng = np.random.default_rng(0)
    d = 10
    a = rng.standard_normal((d, d))
    grad = _rayleigh_grad((a + a.T) / 2)
    lr, wd = 0.01, 0.01
    w = rng.standard_normal(d)
    u = w.copy()
    v = np.zeros(d)
    vu = T.exponential_lr_initial_buffer(w, lr, wd, mu)
    # (a smooth landscape over 2000 steps: near saddles any two float64 runs drift apart)
    err = 0.0
    for t in range(2000):
        v = mu * v + grad(w) + wd * w
        w = w - lr * v
        vu = mu * vu + grad(u)
        u = u - T.exponential_lr_schedule(t, lr, wd, mu) * vu
        err = max(err, np.linalg.norm(w / np.linalg.norm(w) - u / np.linalg.norm(u)))
    assert err < 1e-12
    # u_t = w_t / alpha^t, not only the direction
    alpha = T.exponential_lr_alpha(lr, wd, mu)
    np.testing.assert_allclose(u, w / alpha**2000, rtol=1e-9)


def test_exponential_lr_needs_the_initial_buffer() -> None:
    rng = np.random.default_rng(3)
    d, mu, lr, wd = 10, 0.9, 0.01, 0.01
    a = rng.standard_normal((d, d))
    grad = _rayleigh_grad((a + a.T) / 2)
    w = rng.standard_normal(d)
    u, v, vu = w.copy(), np.zeros(d), np.zeros(d)  # zero buffer for the no-decay run
    err = 0.0
    for t in range(200):
        v = mu * v + grad(w) + wd * w
        w = w - lr * v
        vu = mu * vu + grad(u)
        u = u - T.exponential_lr_schedule(t, lr, wd, mu) * vu
        err = max(err, np.linalg.norm(w / np.linalg.norm(w) - u / np.linalg.norm(u)))
    assert err > 1e-5


def test_exponential_lr_alpha_rejects_complex_roots() -> None:
    with pytest.raises(ValueError, match="lr\\*wd"):
        T.exponential_lr_alpha(1.0, 0.1, 0.9)


# --------------------------------------------------------------------------- momentum, AdamW, Lion:
# the deterministic second-moment recursions iterated in float64


def _iterate(step, state, n=200_000, tol=1e-15):
    for _ in range(n):
        new = step(state)
        if np.all(np.abs(np.array(new) - np.array(state)) <= tol * np.abs(np.array(new))):
            return new
        state = new
    raise AssertionError("moment recursion did not converge")


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("lr", "wd", "mu"), [(0.1, 1e-2, 0.9), (0.5, 0.1, 0.5), (1.0, 0.2, 0.3)])
def test_sgdm_moment_recursion(lr: float, wd: float, mu: float, nesterov: bool) -> None:
    g2 = 2.0  # G^2

    def step(s):
        a, b, c = s
        e_g2 = g2 / a
        # v' = mu v + g + wd w ; w' = w - lr v' (heavy ball) or w - lr (g + wd w + mu v')
        va, vb, vg = wd, mu, 1.0
        if nesterov:
            wa, wb, wg = 1 - lr * wd * (1 + mu), -lr * mu**2, -lr * (1 + mu)
        else:
            wa, wb, wg = 1 - lr * wd, -lr * mu, -lr
        a1 = wa * wa * a + 2 * wa * wb * b + wb * wb * c + wg * wg * e_g2
        b1 = wa * va * a + (wa * vb + wb * va) * b + wb * vb * c + wg * vg * e_g2
        c1 = va * va * a + 2 * va * vb * b + vb * vb * c + vg * vg * e_g2
        return (a1, b1, c1)

    a, b, _ = _iterate(step, (1.0, 0.0, 1.0))
    rho = T.sgdm_equilibrium_norm(lr, wd, math.sqrt(g2), mu, nesterov=nesterov)
    assert rho == pytest.approx(math.sqrt(a), rel=1e-9)
    wa, wb = (1 - lr * wd * (1 + mu), -lr * mu**2) if nesterov else (1 - lr * wd, -lr * mu)
    cos = (wa * a + wb * b) / a  # E<w, w'>/E|w|^2
    angle = T.sgdm_equilibrium_angle(lr, wd, mu, nesterov=nesterov)
    assert angle == pytest.approx(math.acos(cos), rel=1e-7)  # acos itself loses digits here
    assert 1 - math.cos(angle) == pytest.approx(1 - cos, rel=1e-9)


@pytest.mark.parametrize(("lr", "wd", "mu"), [(0.1, 1e-2, 0.9), (0.5, 0.1, 0.5), (0.2, 0.2, 0.0)])
def test_sgdm_relaxation_factor_from_jacobian(lr: float, wd: float, mu: float) -> None:
    g2 = 1.0

    def step(s):
        a, b, c = s
        e = g2 / a
        q = 1 - lr * wd
        return np.array(
            [
                q * q * a + lr * lr * mu * mu * c + lr * lr * e - 2 * q * lr * mu * b,
                wd * q * a + mu * (1 - 2 * lr * wd) * b - lr * mu * mu * c - lr * e,
                wd * wd * a + mu * mu * c + e + 2 * wd * mu * b,
            ]
        )

    s = np.array(_iterate(lambda z: tuple(step(np.array(z))), (1.0, 0.0, 1.0)))
    jac = np.empty((3, 3))
    for j in range(3):
        h = 1e-6 * max(abs(s[j]), 1e-3)
        e = np.zeros(3)
        e[j] = h
        jac[:, j] = (step(s + e) - step(s - e)) / (2 * h)
    radius = np.max(np.abs(np.linalg.eigvals(jac)))
    assert T.sgdm_relaxation_factor(lr, wd, mu) == pytest.approx(radius, rel=1e-7)
    if mu == 0.0:
        assert T.sgdm_relaxation_factor(lr, wd, mu) == pytest.approx(
            abs(T.sgd_relaxation_factor(lr, wd)), rel=1e-14
        )


@pytest.mark.parametrize(("lr", "wd", "b1"), [(1e-3, 0.1, 0.9), (0.05, 0.5, 0.5), (0.1, 1.0, 0.0)])
def test_adamw_moment_recursion(lr: float, wd: float, b1: float) -> None:
    c_par = 500.0
    q = 1 - lr * wd

    def step(s):
        a, b, c = s
        # m' = b1 m + (1-b1) n ; w' = q w - lr m' ; |n|^2 = C, n orthogonal to w, m
        a1 = q * q * a - 2 * q * lr * b1 * b + lr * lr * (b1 * b1 * c + (1 - b1) ** 2 * c_par)
        b1_ = q * b1 * b - lr * (b1 * b1 * c + (1 - b1) ** 2 * c_par)
        c1 = b1 * b1 * c + (1 - b1) ** 2 * c_par
        return (a1, b1_, c1)

    a, b, _ = _iterate(step, (1.0, 0.0, 1.0), n=2_000_000)
    assert T.adamw_equilibrium_norm(lr, wd, c_par, b1) == pytest.approx(math.sqrt(a), rel=1e-9)
    one_minus_cos = 1 - (q * a - lr * b1 * b) / a
    angle = T.adamw_equilibrium_angle(lr, wd, b1)
    assert 1 - math.cos(angle) == pytest.approx(one_minus_cos, rel=1e-7)


@pytest.mark.parametrize(
    ("lr", "wd", "b1", "b2"), [(1e-3, 0.1, 0.9, 0.99), (0.01, 1.0, 0.5, 0.9), (0.1, 0.1, 0.95, 0.0)]
)
def test_lion_series_against_direct_sum(lr: float, wd: float, b1: float, b2: float) -> None:
    """Direct sums of the arcsine correlations vs the Taylor-series evaluation."""
    x = lr * wd
    q = 1 - x
    var = (1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2)
    # lag-k covariance of y_t = (1-b1) g_t + b1 (1-b2) sum_{j>=1} b2^(j-1) g_{t-j}, by summing
    # the products of coefficients directly
    n = 6000
    coef = np.concatenate([[1 - b1], b1 * (1 - b2) * b2 ** np.arange(n)])
    ks = np.arange(1, 3000)
    cov = np.array([coef[: n - k] @ coef[k:n] for k in ks])
    assert coef @ coef == pytest.approx(var, rel=1e-12)
    s_k = (2 / np.pi) * np.arcsin(cov / var)
    big_s = np.sum(q**ks * s_k)
    big_s1 = np.sum(s_k)
    c = 1000.0
    one_minus = x * (q - x * big_s) / (q * (1 + 2 * big_s))
    assert 1 - math.cos(T.lion_equilibrium_angle(lr, wd, b1, b2)) == pytest.approx(
        one_minus, rel=1e-9
    )
    assert T.lion_equilibrium_norm(lr, wd, c, b1, b2) == pytest.approx(
        math.sqrt(lr**2 * c * (1 + 2 * big_s) / (1 - q**2)), rel=1e-9
    )
    assert T.lion_equilibrium_angle(lr, wd, b1, b2, exact=False) == pytest.approx(
        math.sqrt(2 * x / (1 + 2 * big_s1)), rel=1e-9
    )


# --------------------------------------------------------------------------- stochastic simulations


def _simulate(opt, lr, wd, d, steps, burn, seed, mu=0.9, b1=0.9, b2=0.99, nesterov=False):
    """Optimizer on gradients of sphere norm 1, random direction orthogonal to w each step."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    if opt == "sgdm":
        w *= T.sgdm_equilibrium_norm(lr, wd, 1.0, mu, nesterov=nesterov) / np.linalg.norm(w)
    elif opt == "adamw":
        w *= T.adamw_equilibrium_norm(lr, wd, d, b1) / np.linalg.norm(w)
    else:
        w *= T.lion_equilibrium_norm(lr, wd, d, b1, b2) / np.linalg.norm(w)
    v = np.zeros(d)
    m = np.zeros(d)
    sq = np.full(d, 1.0 / (w @ w * d))  # Adam's second moment at its stationary value
    r2_sum, ang_sum, count = 0.0, 0.0, 0
    for t in range(steps):
        rho = np.linalg.norm(w)
        z = rng.standard_normal(d)
        z -= (z @ w) / (rho * rho) * w
        g = z * (1.0 / (rho * np.linalg.norm(z)))
        if opt == "sgdm":
            v = mu * v + g + wd * w
            w_new = w - lr * ((g + wd * w + mu * v) if nesterov else v)
        elif opt == "adamw":
            m = b1 * m + (1 - b1) * g
            sq = 0.999 * sq + 0.001 * g * g
            w_new = (1 - lr * wd) * w - lr * m / np.sqrt(sq)
        else:
            u = np.sign(b1 * m + (1 - b1) * g)
            m = b2 * m + (1 - b2) * g
            w_new = (1 - lr * wd) * w - lr * u
        if t >= burn:
            rn = np.linalg.norm(w_new)
            r2_sum += rho * rho
            ang_sum += math.acos(min(1.0, (w @ w_new) / (rho * rn)))
            count += 1
        w = w_new
    return math.sqrt(r2_sum / count), ang_sum / count


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdm_simulation(nesterov: bool) -> None:
    lr, wd, mu = 0.1, 1e-2, 0.9
    rho, ang = _simulate("sgdm", lr, wd, 1000, 6000, 2000, 0, mu=mu, nesterov=nesterov)
    assert rho == pytest.approx(
        T.sgdm_equilibrium_norm(lr, wd, 1.0, mu, nesterov=nesterov), rel=4e-3
    )
    assert ang == pytest.approx(T.sgdm_equilibrium_angle(lr, wd, mu, nesterov=nesterov), rel=4e-3)


def test_adamw_simulation() -> None:
    lr, wd = 1e-2, 0.1
    rho, ang = _simulate("adamw", lr, wd, 1000, 6000, 3000, 1)
    assert rho == pytest.approx(T.adamw_equilibrium_norm(lr, wd, 1000), rel=1e-2)
    assert ang == pytest.approx(T.adamw_equilibrium_angle(lr, wd), rel=1e-2)


def test_lion_simulation_sides_with_arcsine_law() -> None:
    """beta1 = 0.5, beta2 = 0.9: the reference's sqrt(pi/2) form is 6 % off, ours is not."""
    lr, wd, b1, b2 = 1e-2, 0.1, 0.5, 0.9
    rho, ang = _simulate("lion", lr, wd, 1000, 5000, 1000, 2, b1=b1, b2=b2)
    ours = T.lion_equilibrium_angle(lr, wd, b1, b2)
    var = (1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2)
    reference = math.sqrt(math.pi / 2) * math.sqrt(2 * lr * wd) * math.sqrt(var)
    assert ang == pytest.approx(ours, rel=5e-3)
    assert abs(ang / reference - 1) > 0.05
    assert rho == pytest.approx(T.lion_equilibrium_norm(lr, wd, 1000, b1, b2), rel=5e-3)


@pytest.mark.slow
def test_verify_simulations_at_reference_hyperparameters() -> None:
    """The literature formulas at the reference's own hyperparameters, long runs, two seeds."""
    d, steps, burn = 2000, 40000, 20000
    sims = {
        "sgdm": [_simulate("sgdm", 0.1, 1e-3, d, steps, burn, s) for s in range(2)],
        "adamw": [_simulate("adamw", 1e-3, 0.1, d, steps, burn, s) for s in range(2)],
        "lion": [_simulate("lion", 1e-3, 0.1, d, steps, burn, s) for s in range(2)],
    }
    mean = {k: np.mean(v, axis=0) for k, v in sims.items()}
    assert mean["sgdm"][0] == pytest.approx(T.sgdm_equilibrium_norm(0.1, 1e-3, 1, 0.9), rel=1e-3)
    assert mean["sgdm"][1] == pytest.approx(T.sgdm_equilibrium_angle(0.1, 1e-3, 0.9), rel=1e-3)
    assert mean["adamw"][0] == pytest.approx(T.adamw_equilibrium_norm(1e-3, 0.1, d), rel=2e-3)
    assert mean["adamw"][1] == pytest.approx(T.adamw_equilibrium_angle(1e-3, 0.1), rel=2e-3)
    lion = T.lion_equilibrium_angle(1e-3, 0.1)
    reference = math.sqrt(math.pi / 2) * math.sqrt(2e-4) * math.sqrt(0.01 + 0.81 * 0.01 / 1.99)
    assert mean["lion"][1] == pytest.approx(lion, rel=1.5e-3)
    # the reference's form is 0.38 % above ours: the simulation must sit clearly closer to ours
    assert abs(mean["lion"][1] / lion - 1) < abs(mean["lion"][1] / reference - 1) / 3
    assert mean["lion"][0] == pytest.approx(T.lion_equilibrium_norm(1e-3, 0.1, d), rel=2e-3)


# --------------------------------------------------------------------------- API behaviour


def test_broadcasting_matches_scalar_calls() -> None:
    lr = np.array([0.01, 0.1, 1.0])[:, None]
    wd = np.array([1e-4, 1e-3, 1e-2, 0.5])[None, :]
    grid = T.sgd_equilibrium_norm(lr, wd, 2.0)
    assert grid.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert grid[i, j] == T.sgd_equilibrium_norm(float(lr[i, 0]), float(wd[0, j]), 2.0)
    eq = T.equilibrium(lr, wd, 1.0, 0.5)
    assert eq["norm"].shape == (3, 4)
    assert eq["momentum"].shape == (3, 4)


def test_equilibrium_dict() -> None:
    eq = T.equilibrium(LR, WD, G)
    assert tuple(eq) == T.EQUILIBRIUM_KEYS
    assert eq.pop("optimizer") == "sgd"
    assert all(isinstance(v, float) for v in eq.values())
    assert eq["norm"] == T.sgd_equilibrium_norm(LR, WD, G)
    assert eq["angular_update"] == T.sgd_equilibrium_angle(LR, WD)
    assert eq["relaxation_time"] == pytest.approx(T.sgd_relaxation_time(LR, WD), rel=1e-14)
    assert eq["decay_factor"] == pytest.approx(0.9999, rel=1e-15)
    eqm = T.equilibrium(LR, WD, G, 0.9)
    assert eqm["norm"] == T.sgdm_equilibrium_norm(LR, WD, G, 0.9)
    assert eqm["elr"] == pytest.approx(LR / eqm["norm"] ** 2, rel=1e-14)
    assert eqm["relaxation_time_first_order"] == pytest.approx(0.1 / (4 * LR * WD), rel=1e-14)


def test_zero_weight_decay_where_nothing_divides_by_it() -> None:
    # without weight decay: no rotation from decay, no shrinking, the plain GD threshold 2/S
    assert T.sgd_equilibrium_angle(0.1, 0.0) == 0.0
    assert T.lion_equilibrium_angle(0.1, 0.0) == 0.0
    assert T.decay_factor(0.1, 0.0, 0.9) == 1.0
    assert T.zero_grad_norm(100, 3.0, 0.1, 0.0) == 3.0
    assert T.stability_threshold_elr(0.1, 0.0, 4.0) == 0.5
    assert T.critical_norm(0.1, 0.0, 20.0) == pytest.approx(1.0, rel=1e-15)
    assert T.exponential_lr_schedule(7, 0.1, 0.0, 0.5) == pytest.approx(0.1, rel=1e-15)


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: T.sgd_equilibrium_norm(-1, 1e-3, 1), "lr"),
        (lambda: T.sgd_equilibrium_norm(0.1, 0.0, 1), "wd"),
        (lambda: T.sgd_equilibrium_norm(0.1, -1e-3, 1), "wd"),
        (lambda: T.sgd_equilibrium_norm(10, 0.1, 1), "lr\\*wd"),
        (lambda: T.sgd_equilibrium_norm(0.1, 1e-3, float("nan")), "grad_norm"),
        (lambda: T.sgd_equilibrium_angle(float("inf"), 1e-3), "lr"),
        (lambda: T.decay_factor(0.1, 1e-3, 1.0), "momentum"),
        (lambda: T.decay_factor(0.1, 1e-3, -0.1), "momentum"),
        (lambda: T.sgdm_equilibrium_norm(0.1, 1e-3, 1, 1.2), "momentum"),
        (lambda: T.adamw_equilibrium_angle(0.1, 1e-3, beta1=1.0), "beta1"),
        (lambda: T.adamw_equilibrium_norm(0.1, 1e-3, 0), "n_params"),
        (lambda: T.lion_equilibrium_angle(0.1, 1e-3, beta2=-0.5), "beta2"),
        (lambda: T.critical_norm(0.1, 1e-3, 0.0), "sharpness"),
        (lambda: T.period(0.1, 1e-3, 1.0, 2.0), "rho_max"),
        (lambda: T.period_from_norm_ratio(0.1, 1e-3, 0.5), "norm_ratio"),
        (lambda: T.period_from_norm_ratio(0.1, 1e-3, 2.0, escape_steps=-1), "escape_steps"),
        (lambda: T.equilibrium(0.1, 1e-3, 0.0), "grad_norm"),
        (lambda: T.equilibrium("a", 1e-3, 1.0), "lr"),
        (lambda: T.zero_grad_norm(10, -1.0, 0.1, 1e-3), "rho0"),
        (lambda: T.sgd_relaxation_time(0.1, 0.0), "wd"),
        (lambda: T.elr_doubling_time(0.1, 0.0), "wd"),
        (lambda: T.period(0.1, 0.0, 2.0, 1.0), "wd"),
        (lambda: T.adamw_equilibrium_norm(0.1, 0.0, 10), "wd"),
    ],
)
def test_invalid_arguments_name_the_parameter(call, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        call()


def test_theory_stays_numpy_only_and_has_no_back_edge_to_predict():
    import subprocess
    import sys

    code = (
        "import sys, siflow.theory as t; assert 'numba' not in sys.modules; "
        "assert 'siflow.predict' not in sys.modules; assert not hasattr(t, 'predict_period')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_log_effective_lr_by_hand_and_where_rho_squared_leaves_the_float_range():
    assert T.log_effective_lr(0.5, 2.0) == pytest.approx(math.log(0.125), rel=1e-15)
    rng = np.random.default_rng(3)
    lr, rho = 10.0 ** rng.uniform(-4, 1, 50), 10.0 ** rng.uniform(-3, 3, 50)
    np.testing.assert_allclose(T.log_effective_lr(lr, rho), np.log(lr / rho**2), rtol=1e-13)
    # rho^2 overflows (1e400) and underflows (1e-400): the log is exact all the same
    for r in (1e200, 1e-200):
        ref = mp.log(mp.mpf(0.1)) - 2 * mp.log(mp.mpf(r))
        assert T.log_effective_lr(0.1, r) == pytest.approx(float(ref), rel=1e-15)
    with np.errstate(all="raise"):
        assert T.log_effective_lr(0.1, 0.0) == math.inf


def test_label_smoothing_loss_floor_is_the_smallest_cross_entropy():
    # by hand: eps 0.1 over 10 classes, targets 0.91 and 0.01
    hand = -(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01))
    assert T.label_smoothing_loss_floor(0.1, 10) == pytest.approx(hand, rel=1e-15)
    assert hand == pytest.approx(0.50029, abs=1e-5)
    assert T.label_smoothing_loss_floor(0.0, 10) == 0.0  # one-hot targets: no floor
    assert T.label_smoothing_loss_floor(1.0, 4) == pytest.approx(math.log(4))  # uniform
    # the cross-entropy against the smoothed targets of any prediction is above it (Gibbs)
    rng = np.random.default_rng(0)
    q = np.full(10, 0.01)
    q[3] = 0.91
    for _ in range(200):
        p = rng.dirichlet(np.full(10, 0.3))
        assert -(q * np.log(p)).sum() >= T.label_smoothing_loss_floor(0.1, 10)
    pairs = ((0.9 + 0.1 / 3, 0.1 / 3), (0.8 + 0.2 / 3, 0.2 / 3))  # three classes
    np.testing.assert_allclose(
        T.label_smoothing_loss_floor([0.1, 0.2], 3),
        [-(a * math.log(a) + 2 * b * math.log(b)) for a, b in pairs],
        rtol=1e-14,
    )
    for bad in ((-0.1, 10), (1.5, 10), (0.1, 1), (0.1, 2.5), (0.1, True)):
        with pytest.raises(ValueError):
            T.label_smoothing_loss_floor(*bad)


def test_free_decay_steps_against_the_zero_gradient_map() -> None:
    # the norm multiplied by 1 - lr_t wd at every step (the exact map at zero gradient,
    # under a random step schedule): the first whole step at which ln rho has fallen by
    # `fall` is the ceiling of free_decay_steps, and at a constant rate it is
    # period_from_norm_ratio's decay time
    rng = np.random.default_rng(3)
    n, wd = 400, 1e-2
    lr = np.repeat(rng.uniform(0.05, 1.0, n // 40), 40)
    rate = -np.log1p(-lr * wd)
    ln_rho = np.concatenate([[0.0], np.cumsum(np.log1p(-lr * wd))])
    for start, fall in [(0, 0.3), (17, 0.05), (123, 1.1), (250, 0.0), (399, 0.4)]:
        got = float(T.free_decay_steps(np.arange(n), rate, start, fall))
        t = start
        while ln_rho[start] - ln_rho[min(t, n)] < fall - 1e-12 and t < n:
            t += 1
        if t < n or ln_rho[start] - ln_rho[n] >= fall - 1e-12:
            assert math.ceil(got - 1e-9) == t - start, (start, fall)
        else:  # past the log: the last rate holds
            left = fall - (ln_rho[start] - ln_rho[n])
            assert got == pytest.approx(n - start + left / rate[-1], rel=1e-12)
    const = T.free_decay_steps(np.arange(10.0), np.full(10, 0.02), 3, math.log(1.5))
    assert const == pytest.approx(
        T.period_from_norm_ratio(2.0, -math.expm1(-0.02) / 2.0, 1.5), rel=1e-12
    )
    # rows logged every 5th step: the rate holds from a row to the next
    assert T.free_decay_steps([0, 5, 10], [0.1, 0.02, 0.02], 0, 0.6) == pytest.approx(10)
    with pytest.raises(ValueError, match="last rate is 0"):
        T.free_decay_steps([0, 1, 2], [0.1, 0.0, 0.0], 0, 1.0)
    with pytest.raises(ValueError, match="increase"):
        T.free_decay_steps([0, 2, 1], [0.1, 0.1, 0.1], 0, 0.1)
