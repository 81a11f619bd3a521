"""siflow.symbolic: derivations from the update rules, checked against siflow.theory.

The symbolic results are compared (a) with hand-typed expressions of the theory
reference, as sympy identities, and (b) numerically with siflow.theory over a grid
of hyperparameters through ``numpy_function`` (``sympy.lambdify``).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import siflow.symbolic as Y
import siflow.theory as T
from siflow.symbolic import G, S, eta, lam, mu

# grid over lr*wd from 1e-6 to 0.9 with assorted lr, and several G, momentum, beta1
X = np.array([1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.9])
LR = np.array([0.1, 1.0, 0.01, 0.3, 2.0, 0.5, 1.5, 0.9])
WD = X / LR
GN = np.array([1.0, 0.5, 3.0, 1.0, 0.2, 2.0, 1.0, 0.7])
MU = np.array([0.0, 0.9, 0.5, 0.99, 0.3, 0.1, 0.2, 0.05])
B1 = np.array([0.9, 0.0, 0.5, 0.99, 0.95, 0.8, 0.3, 0.6])


def _f(expr, *names):
    return Y.numpy_function(expr, names)


def _same(a, b) -> bool:
    return sp.simplify(a - b) == 0


# --------------------------------------------------------------------------- identities


def test_sgd_derivation_matches_reference_formulas() -> None:
    d = Y.sgd_equilibrium()
    assert _same(d["rho4"], eta * G**2 / (lam * (2 - eta * lam)))
    assert _same(d["rho4_first_order"], eta * G**2 / (2 * lam))
    assert _same(d["cos_angle"], 1 - eta * lam)
    assert _same(d["elr_first_order"], sp.sqrt(2 * eta * lam) / G)
    assert _same(d["angle_first_order"], sp.sqrt(2 * eta * lam))
    assert _same(d["nullcline"], sp.sqrt(eta * lam * (2 - eta * lam)) / Y.elr)
    r = Y.sgd_relaxation()
    assert _same(r["factor"], 1 - 4 * eta * lam + 2 * eta**2 * lam**2)
    assert _same(r["time_first_order"], 1 / (4 * eta * lam))


def test_threshold_and_decay_derivations() -> None:
    t = Y.direction_threshold()
    assert _same(t["elr_threshold"], 2 * (1 - eta * lam) / S)
    assert _same(t["critical_rho2"], eta * S / (2 * (1 - eta * lam)))
    assert _same(t["sgdm_elr_threshold"], 2 * (1 + mu - eta * lam) / S)
    z = Y.zero_grad_decay()
    zs = sp.Symbol("z")
    assert _same(z["characteristic"], zs**2 - (1 + mu - eta * lam) * zs + mu)
    assert _same(z["momentum_first_order"], 1 - eta * lam / (1 - mu))


def test_momentum_derivations_match_reference_formulas() -> None:
    d = Y.sgdm_equilibrium()
    ref = eta * G**2 / (lam * (1 - mu) * (2 - eta * lam / (1 + mu)))  # theory reference sec. 3
    assert _same(d["rho4"], ref)
    assert _same(d["one_minus_cos"], eta * lam / (1 + mu))
    assert _same(d["angle_first_order"] ** 2, 2 * eta * lam / (1 + mu))
    r = Y.sgdm_relaxation()
    assert _same(r["factor_first_order"], 1 - 4 * eta * lam / (1 - mu))
    zs = sp.Symbol("z")
    y = 4 * eta * lam - 2 * eta**2 * lam**2 / (1 + mu)
    assert _same(r["quadratic"], zs**2 - (1 + mu - y) * zs + mu)


def test_adamw_derivation_first_order_matches_reference() -> None:
    d = Y.adamw_equilibrium()
    b1 = Y.beta1
    assert _same(d["rho2_first_order"], eta * Y.C / (2 * lam))
    assert _same(d["angle_first_order"] ** 2, 2 * eta * lam * (1 - b1) / (1 + b1))


# --------------------------------------------------------------------------- numeric, over a grid


def test_sgd_lambdified_equals_theory() -> None:
    d = Y.sgd_equilibrium()
    np.testing.assert_allclose(
        _f(d["rho"], "lr", "wd", "grad_norm")(LR, WD, GN),
        T.sgd_equilibrium_norm(LR, WD, GN),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["rho4_first_order"], "lr", "wd", "grad_norm")(LR, WD, GN) ** 0.25,
        T.sgd_equilibrium_norm(LR, WD, GN, exact=False),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["elr"], "lr", "wd", "grad_norm")(LR, WD, GN),
        T.sgd_equilibrium_elr(LR, WD, GN),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["elr_first_order"], "lr", "wd", "grad_norm")(LR, WD, GN),
        T.sgd_equilibrium_elr(LR, WD, GN, exact=False),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["angle"], "lr", "wd")(LR, WD), T.sgd_equilibrium_angle(LR, WD), rtol=1e-12
    )
    np.testing.assert_allclose(
        _f(d["angle_first_order"], "lr", "wd")(LR, WD),
        T.sgd_equilibrium_angle(LR, WD, exact=False),
        rtol=1e-12,
    )
    elr = np.linspace(0.01, 2.0, X.size)
    np.testing.assert_allclose(
        _f(d["nullcline"], "lr", "wd", "elr")(LR, WD, elr),
        T.nullcline_grad_norm(LR, WD, elr),
        rtol=1e-12,
    )
    r = Y.sgd_relaxation()
    np.testing.assert_allclose(
        _f(r["factor"], "lr", "wd")(LR, WD), T.sgd_relaxation_factor(LR, WD), rtol=1e-9
    )
    np.testing.assert_allclose(
        _f(r["time_first_order"], "lr", "wd")(LR, WD),
        T.sgd_relaxation_time(LR, WD, exact=False),
        rtol=1e-12,
    )
    # the naive -1/log(factor) loses digits at small lr*wd: compare where it is accurate
    ok = X >= 1e-3
    np.testing.assert_allclose(
        _f(sp.Abs(r["time"]), "lr", "wd")(LR[ok], WD[ok]),
        T.sgd_relaxation_time(LR[ok], WD[ok]),
        rtol=1e-9,
    )


def test_threshold_and_decay_lambdified_equal_theory() -> None:
    t = Y.direction_threshold()
    s = np.linspace(1.0, 300.0, X.size)
    np.testing.assert_allclose(
        _f(t["elr_threshold"], "lr", "wd", "sharpness")(LR, WD, s),
        T.stability_threshold_elr(LR, WD, s),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        np.sqrt(_f(t["critical_rho2"], "lr", "wd", "sharpness")(LR, WD, s)),
        T.critical_norm(LR, WD, s),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(t["sgdm_elr_threshold"], "lr", "wd", "momentum", "sharpness")(LR, WD, MU, s),
        T.stability_threshold_elr(LR, WD, s, MU),
        rtol=1e-12,
    )
    z = Y.zero_grad_decay()
    real = X <= (1 - np.sqrt(MU)) ** 2
    assert real.sum() >= 4
    np.testing.assert_allclose(
        _f(z["momentum"], "lr", "wd", "momentum")(LR[real], WD[real], MU[real]),
        T.decay_factor(LR[real], WD[real], MU[real]),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        _f(z["momentum"], "lr", "wd", "momentum")(LR[real], WD[real], MU[real]),
        T.exponential_lr_alpha(LR[real], WD[real], MU[real]),
        rtol=1e-9,
    )


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdm_lambdified_equals_theory(nesterov: bool) -> None:
    d = Y.sgdm_equilibrium(nesterov)
    np.testing.assert_allclose(
        _f(d["rho4"], "lr", "wd", "grad_norm", "momentum")(LR, WD, GN, MU) ** 0.25,
        T.sgdm_equilibrium_norm(LR, WD, GN, MU, nesterov=nesterov),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["rho4_first_order"], "lr", "wd", "grad_norm", "momentum")(LR, WD, GN, MU) ** 0.25,
        T.sgdm_equilibrium_norm(LR, WD, GN, MU, exact=False, nesterov=nesterov),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["angle"], "lr", "wd", "momentum")(LR, WD, MU),
        T.sgdm_equilibrium_angle(LR, WD, MU, nesterov=nesterov),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["angle_first_order"], "lr", "wd", "momentum")(LR, WD, MU),
        T.sgdm_equilibrium_angle(LR, WD, MU, exact=False, nesterov=nesterov),
        rtol=1e-12,
    )


def test_sgdm_relaxation_roots_equal_theory() -> None:
    r = Y.sgdm_relaxation()
    zs = sp.Symbol("z")
    coeffs = [sp.lambdify((eta, lam, mu), c) for c in sp.Poly(r["quadratic"], zs).all_coeffs()]
    radius = []
    for lr, wd, m in zip(LR, WD, MU, strict=True):
        poly = [float(np.broadcast_to(c(lr, wd, m), ())) for c in coeffs]
        radius.append(np.max(np.abs(np.roots(poly))))
    np.testing.assert_allclose(T.sgdm_relaxation_factor(LR, WD, MU), radius, rtol=1e-9)
    np.testing.assert_allclose(
        _f(r["factor_first_order"], "lr", "wd", "momentum")(LR, WD, MU),
        1 - 4 * X / (1 - MU),
        rtol=1e-12,
    )


def test_adamw_lambdified_equals_theory() -> None:
    d = Y.adamw_equilibrium()
    c = np.linspace(10.0, 1e5, X.size)
    np.testing.assert_allclose(
        np.sqrt(_f(d["rho2"], "lr", "wd", "n_params", "beta1")(LR, WD, c, B1)),
        T.adamw_equilibrium_norm(LR, WD, c, B1),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        np.sqrt(_f(d["rho2_first_order"], "lr", "wd", "n_params")(LR, WD, c)),
        T.adamw_equilibrium_norm(LR, WD, c, B1, exact=False),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["angle"], "lr", "wd", "beta1")(LR, WD, B1),
        T.adamw_equilibrium_angle(LR, WD, B1),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _f(d["angle_first_order"], "lr", "wd", "beta1")(LR, WD, B1),
        T.adamw_equilibrium_angle(LR, WD, B1, exact=False),
        rtol=1e-12,
    )


def test_lion_lambdified_with_direct_sum_equals_theory() -> None:
    d = Y.lion_equilibrium()
    b1s = np.array([0.9, 0.5, 0.0, 0.95, 0.9999])
    b2s = np.array([0.99, 0.9, 0.99, 0.5, 0.999])  # the last: c_1 close to 1
    lr, wd, c = 1e-3, 0.1, 1000.0
    q = 1 - lr * wd
    for b1, b2 in zip(b1s, b2s, strict=True):
        var = (1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2)
        c1 = b1 * (1 - b2) * ((1 - b1) + b1 * b2 / (1 + b2)) / var
        k = np.arange(1, 200_001)
        s_k = (2 / np.pi) * np.arcsin(c1 * b2 ** (k - 1.0))
        sigma, sigma1 = np.sum(q**k * s_k), np.sum(s_k)
        assert _f(d["angle"], "lr", "wd", "lion_sum")(lr, wd, sigma) == pytest.approx(
            T.lion_equilibrium_angle(lr, wd, b1, b2), rel=1e-10
        )
        assert np.sqrt(_f(d["rho2"], "lr", "wd", "n_params", "lion_sum")(lr, wd, c, sigma)) == (
            pytest.approx(T.lion_equilibrium_norm(lr, wd, c, b1, b2), rel=1e-10)
        )
        assert _f(d["angle_first_order"], "lr", "wd", "lion_sum")(lr, wd, sigma1) == (
            pytest.approx(T.lion_equilibrium_angle(lr, wd, b1, b2, exact=False), rel=1e-10)
        )
        f_rho = _f(d["rho2_first_order"], "lr", "wd", "n_params", "lion_sum")
        assert np.sqrt(f_rho(lr, wd, c, sigma1)) == pytest.approx(
            T.lion_equilibrium_norm(lr, wd, c, b1, b2, exact=False), rel=1e-10
        )


# --------------------------------------------------------------------------- API


def test_derive_lists_and_latex() -> None:
    for what, optimizers in Y.DERIVATIONS.items():
        for opt in optimizers:
            results = Y.derive(what, opt)
            assert results
            for label, expr in results:
                assert isinstance(label, str) and label
                assert Y.latex(expr)
    with pytest.raises(ValueError, match="optimizer"):
        Y.derive("threshold", "adamw")
    with pytest.raises(ValueError, match="what"):
        Y.derive("period")


def test_numpy_function_argument_checks() -> None:
    d = Y.sgd_equilibrium()
    with pytest.raises(ValueError, match="unknown"):
        Y.numpy_function(d["rho"], ["lr", "wd", "speed"])
    with pytest.raises(ValueError, match="not listed"):
        Y.numpy_function(d["rho"], ["lr", "wd"])
    f = Y.numpy_function(d["rho"])  # default: free symbols in SYMBOLS order
    assert f(0.1, 1e-3, 1.0) == pytest.approx(2.6591811889, abs=1e-10)


def test_zero_gradient_doubling_and_period_lambdified_equal_theory() -> None:
    z = Y.zero_grad_decay()
    t = 250.0
    np.testing.assert_allclose(
        3.0 * Y.numpy_function(z["sgd"], ["lr", "wd"])(LR, WD) ** t,
        T.zero_grad_norm(t, 3.0, LR, WD),
        rtol=1e-11,
    )
    dbl = Y.zero_grad_elr_doubling()
    ok = X >= 1e-4  # the naive log(1 - x) form loses digits below
    np.testing.assert_allclose(
        _f(dbl["sgd"], "lr", "wd")(LR[ok], WD[ok]), T.elr_doubling_time(LR[ok], WD[ok]), rtol=1e-9
    )
    d_sym = sp.Symbol("d", positive=True)
    f_gen = sp.lambdify(d_sym, dbl["generic"])
    real = X <= (1 - np.sqrt(MU)) ** 2
    np.testing.assert_allclose(
        f_gen(T.decay_factor(LR[real], WD[real], MU[real])),
        T.elr_doubling_time(LR[real], WD[real], MU[real]),
        rtol=1e-9,  # log(d) of a rounded d = 1 - 1e-6 keeps ~10 digits
    )
    per = Y.period_model()
    syms = sp.symbols("rho_max rho_crit T_escape", positive=True)
    f_per = sp.lambdify((eta, lam, *syms), per["sgd"])
    np.testing.assert_allclose(
        f_per(LR[ok], WD[ok], 5.0, 2.0, 7.0), T.period(LR[ok], WD[ok], 5.0, 2.0, 7.0), rtol=1e-9
    )


def test_exponential_lr_derivation_equals_theory() -> None:
    e = Y.exponential_lr_equivalence()
    alpha = sp.Symbol("alpha", positive=True)
    zs = sp.Symbol("z")
    # the polynomial for alpha is the zero-gradient characteristic polynomial
    assert _same(e["alpha_polynomial"], Y.zero_grad_decay()["characteristic"].subs(zs, alpha))
    real = (X <= (1 - np.sqrt(MU)) ** 2) & (MU > 0)
    a = T.exponential_lr_alpha(LR[real], WD[real], MU[real])
    t = sp.Symbol("t", integer=True, nonnegative=True)
    f_lr = sp.lambdify((eta, alpha, t), e["lr_t"])
    np.testing.assert_allclose(
        f_lr(LR[real], a, 37),
        T.exponential_lr_schedule(37, LR[real], WD[real], MU[real]),
        rtol=1e-12,
    )
    f_buf = sp.lambdify((eta, lam, mu, alpha), e["initial_buffer_coef"])
    for lr, wd, m, al in zip(LR[real], WD[real], MU[real], a, strict=True):
        w0 = np.array([1.0, -2.0])
        np.testing.assert_allclose(
            T.exponential_lr_initial_buffer(w0, lr, wd, m), f_buf(lr, wd, m, al) * w0, rtol=1e-12
        )


def test_relaxation_law_rsolve_agrees_with_theory_to_first_order() -> None:
    d = Y.sgd_relaxation_law()
    t_sym = sp.Symbol("t", integer=True, nonnegative=True)
    y0_sym = sp.Symbol("y0", positive=True)
    f = sp.lambdify((t_sym, y0_sym, eta, lam, G), d["solution"])
    # the dropped c^2/y term makes the solved law differ from theory's by O(lr*wd) (relative)
    errs = []
    for x in (4e-3, 2e-3, 1e-3):
        lr, g = 0.2, 1.5
        wd = x / lr
        rho_star = T.sgd_equilibrium_norm(lr, wd, g)
        t = np.arange(0, int(3 / x), 7, dtype=float)
        y0 = (1.4 * rho_star) ** 4
        law = T.sgd_relaxation_norm(t, 1.4 * rho_star, lr, wd, g) ** 4
        errs.append(np.max(np.abs(f(t, y0, lr, wd, g) - law)) / rho_star**4)
    errs = np.array(errs)
    np.testing.assert_allclose(errs[:-1] / errs[1:], 2.0, rtol=0.05)
    assert _same(d["fixed_point_first_order"], eta * G**2 / (2 * lam))


def test_nesterov_decay_and_threshold_derivations_equal_theory() -> None:
    """Nesterov: the decay polynomial and the angle recursion's boundary, derived from
    PyTorch's update, against hand-typed forms and siflow.theory over the grid."""
    z = Y.zero_grad_decay()
    zs = sp.Symbol("z")
    x = eta * lam
    assert _same(z["nesterov_characteristic"], zs**2 - (1 + mu) * (1 - x) * zs + mu * (1 - x))
    assert _same(z["nesterov_first_order"], 1 - x / (1 - mu))
    real = X <= ((1 - MU) / (1 + MU)) ** 2
    assert real.sum() >= 4
    alpha = _f(z["nesterov"], "lr", "wd", "momentum")(LR[real], WD[real], MU[real])
    np.testing.assert_allclose(
        alpha, T.decay_factor(LR[real], WD[real], MU[real], nesterov=True), rtol=1e-9
    )
    t = Y.direction_threshold()
    a = sp.Symbol("alpha", positive=True)
    by_hand = (1 - x + a**2 / ((1 + mu) * a + mu)) / S
    assert _same(t["nesterov_elr_threshold"], by_hand)
    # mu = 0: SGD's 2 (1 - eta lam)/S with alpha = 1 - eta lam
    assert _same(t["nesterov_elr_threshold"].subs(mu, 0).subs(a, 1 - x), 2 * (1 - x) / S)
    s = np.linspace(1.0, 300.0, X.size)[real]
    thr = sp.lambdify((a, eta, lam, mu, S), t["nesterov_elr_threshold"], "numpy")
    np.testing.assert_allclose(
        thr(alpha, LR[real], WD[real], MU[real], s),
        T.stability_threshold_elr(LR[real], WD[real], s, MU[real], nesterov=True),
        rtol=1e-12,
    )
