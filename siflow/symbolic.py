"""Symbolic derivations (sympy) of the closed forms in :mod:`siflow.theory`.

Each derivation starts from the update rule itself, never from the answer:

* the update is written as a linear combination of a few vectors (weights ``w``,
  momentum buffer ``v``, gradient ``g``...);
* inner products are taken with a symbolic Gram matrix that encodes the
  assumptions (``<g, w> = 0`` by scale invariance, gradients uncorrelated with the
  past, ``|g|^2 = G^2/|w|^2``);
* the stationarity condition of the resulting second-moment recursion is solved,
  the angle is read off ``<w_t, w_{t+1}>``, the relaxation factor is the Jacobian
  of the recursion at its fixed point, and first-order forms are series in
  ``x = lr*wd``.

Every function returns a dict of sympy expressions in the symbols of
:data:`SYMBOLS`; :func:`numpy_function` turns any of them into a vectorised numpy
function of the hyperparameters by name (``lr``, ``wd``, ``momentum``, ...), which
is how the tests check :mod:`siflow.theory`. :func:`latex` renders an expression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import sympy as sp

__all__ = [
    "SYMBOLS",
    "eta",
    "lam",
    "mu",
    "G",
    "beta1",
    "C",
    "S",
    "x",
    "elr",
    "Sigma",
    "DERIVATIONS",
    "second_moment_map",
    "sgd_equilibrium",
    "sgd_relaxation",
    "zero_grad_decay",
    "sgd_relaxation_law",
    "direction_threshold",
    "zero_grad_elr_doubling",
    "period_model",
    "exponential_lr_equivalence",
    "sgdm_equilibrium",
    "sgdm_relaxation",
    "adamw_equilibrium",
    "lion_equilibrium",
    "first_order",
    "numpy_function",
    "latex",
    "derive",
]

eta = sp.Symbol("eta", positive=True)  # learning rate
lam = sp.Symbol("lambda", positive=True)  # weight decay
mu = sp.Symbol("mu", nonnegative=True)  # momentum
G = sp.Symbol("G", positive=True)  # gradient norm on the unit sphere
beta1 = sp.Symbol("beta_1", nonnegative=True)  # AdamW / Lion first-moment coefficient
C = sp.Symbol("C", positive=True)  # number of parameters in the SI group
S = sp.Symbol("S", positive=True)  # sharpness on the unit sphere
x = sp.Symbol("x", positive=True)  # lr*wd, the expansion parameter
elr = sp.Symbol("elr", positive=True)  # effective learning rate eta/rho^2
Sigma = sp.Symbol("Sigma", nonnegative=True)  # Lion: sum_k q^k s_k of update correlations

#: Symbol for each hyperparameter name used by :mod:`siflow.theory`.
SYMBOLS: dict[str, sp.Symbol] = {
    "lr": eta,
    "wd": lam,
    "momentum": mu,
    "grad_norm": G,
    "beta1": beta1,
    "n_params": C,
    "sharpness": S,
    "elr": elr,
    "lion_sum": Sigma,
}


# --------------------------------------------------------------------------- machinery


def _inner(u: Sequence[sp.Expr], v: Sequence[sp.Expr], gram: sp.Matrix) -> sp.Expr:
    return sp.expand((sp.Matrix([list(u)]) * gram * sp.Matrix(list(v)))[0, 0])


def second_moment_map(
    updates: dict[str, Sequence[sp.Expr]],
    gram: sp.Matrix,
    moments: dict[tuple[str, str], sp.Symbol],
) -> dict[sp.Symbol, sp.Expr]:
    """Second-moment recursion of a linear update rule.

    Parameters
    ----------
    updates : dict
        For each state vector name, its new value as coefficients over ``basis``
        (e.g. ``{"w": [1 - eta*lam, -eta*mu, -eta], ...}`` for ``w' = q w - eta mu v - eta g``).
    gram : sympy.Matrix
        Gram matrix of ``basis`` (the modelling assumptions live here).
    moments : dict
        ``{(u, v): symbol}`` for the moments to propagate, e.g. ``("w", "w"): a``.

    Returns
    -------
    dict
        ``{symbol: expression of the new moment}`` (``a -> E|w'|^2`` ...).
    """
    return {sym: _inner(updates[u], updates[v], gram) for (u, v), sym in moments.items()}


_p_mu = sp.Symbol("p", positive=True)  # mu = p/(1 + p): sympy then knows 0 < mu < 1
_p_b1 = sp.Symbol("p_1", positive=True)  # beta1 = p_1/(1 + p_1)

#: Sample point (all constraints satisfied) used to pick the physical root of a solve.
_SAMPLE = {
    eta: sp.Rational(1, 10),
    lam: sp.Rational(1, 1000),
    mu: sp.Rational(1, 2),
    G: 1,
    beta1: sp.Rational(9, 10),
    C: 100,
    S: 10,
    elr: sp.Rational(1, 100),
    Sigma: 2,
}


def _pick_positive(solutions: Sequence[sp.Expr], **sample: object) -> sp.Expr:
    """The solution that is real and positive at the sample point (the physical root)."""
    point = {**_SAMPLE, **{SYMBOLS.get(k, sp.Symbol(k)): v for k, v in sample.items()}}
    good = []
    for sol in solutions:
        val = complex(sp.N(sol.subs(point)))
        if abs(val.imag) < 1e-12 and val.real > 0:
            good.append((val.real, sol))
    if not good:  # pragma: no cover - a failed derivation
        raise ArithmeticError(f"no positive solution among {solutions}")
    return max(good, key=lambda t: t[0])[1]


def _leading_rational(e: sp.Expr) -> sp.Expr | None:
    """Leading term in ``x`` of a rational function of ``x`` (None if ``e`` is not one)."""
    num, den = sp.fraction(sp.cancel(sp.together(e)))
    try:
        pn, pd = sp.Poly(num, x), sp.Poly(den, x)
    except sp.PolynomialError:
        return None
    if not all(c.is_rational_function() for c in pn.coeffs() + pd.coeffs()):
        return None
    (kn,), cn = min(pn.terms(), key=lambda t: t[0])
    (kd,), cd = min(pd.terms(), key=lambda t: t[0])
    return sp.factor(cn / cd) * x ** (kn - kd)


def first_order(expr: sp.Expr, power: int = 1) -> sp.Expr:
    """Leading term of ``expr`` as ``lr*wd -> 0`` at fixed ``lr`` (``wd = x/lr``).

    ``power`` is the power to which ``expr`` is raised before expanding (use 2 for a
    square root such as an effective LR, whose square is rational in ``x``); the result
    is returned to the original power. The leading term is written back in ``eta, lam``.
    Rational functions are expanded exactly through their lowest-order numerator and
    denominator terms; anything else through ``sympy.series``, with ``mu = p/(1 + p)``
    and ``beta1 = p_1/(1 + p_1)`` (``p, p_1 > 0``) so that sympy knows ``0 < mu < 1``.
    """
    e = (expr**power).subs(lam, x / eta)
    lead = _leading_rational(e)
    if lead is None:
        back = {_p_mu: mu / (1 - mu), _p_b1: beta1 / (1 - beta1)}
        e = e.subs({mu: _p_mu / (1 + _p_mu), beta1: _p_b1 / (1 + _p_b1)})
        lead = sp.series(sp.simplify(e), x, 0, 2).removeO().as_leading_term(x)
        lead = sp.factor(sp.simplify(sp.powsimp(sp.simplify(lead), force=True))).subs(back)
    lead = sp.factor(sp.simplify(lead.subs(x, eta * lam)))
    return sp.simplify(lead ** sp.Rational(1, power)) if power != 1 else lead


def _angle_first_order(one_minus_cos: sp.Expr) -> sp.Expr:
    """``arccos(1 - y) = sqrt(2 y) (1 + O(y))``: first order from the leading term of ``y``."""
    return sp.sqrt(2 * first_order(one_minus_cos))


def _arccos_expr(one_minus_cos: sp.Expr) -> sp.Expr:
    """``arccos(1 - y)`` as ``2 asin(sqrt(y/2))`` (identical, numerically stable)."""
    return 2 * sp.asin(sp.sqrt(one_minus_cos / 2))


# --------------------------------------------------------------------------- SGD


@cache
def sgd_equilibrium() -> dict[str, sp.Expr]:
    r"""Equilibrium of SGD with coupled weight decay, from ``w' = (1 - eta lam) w - eta g``.

    Basis ``(w, g)`` with ``<g, w> = 0`` and ``|g|^2 = G^2/rho^2``; the norm map
    ``rho'^2 = f(rho^2)`` is solved for its positive fixed point. Keys: ``norm_map``
    (f in the symbol ``r2`` = rho^2), ``rho4``, ``rho4_first_order``, ``rho``,
    ``elr`` (eta/rho^2), ``elr_first_order``, ``cos_angle`` (at equilibrium),
    ``angle``, ``angle_first_order``, ``nullcline`` (the G at which elr is stationary,
    in the symbol ``elr``).
    """
    r2 = sp.Symbol("r2", positive=True)
    gram = sp.diag(r2, G**2 / r2)
    w_new = [1 - eta * lam, -eta]
    f = _inner(w_new, w_new, gram)
    r2_star = sp.simplify(_pick_positive(sp.solve(sp.Eq(f, r2), r2)))
    rho4 = sp.factor(sp.simplify(r2_star**2))
    # at the fixed point |w'| = |w|, so cos(angle) = <w, w'> / |w|^2
    cos_angle = sp.simplify(_inner([1, 0], w_new, gram) / r2)
    one_minus = sp.factor(sp.simplify(1 - cos_angle))
    elr_star = sp.simplify(eta / r2_star)
    # effective-LR map: elr' = eta / f(rho^2) with rho^2 = eta/elr; stationary in G
    elr_map = sp.simplify((eta / f).subs(r2, eta / elr))
    g_null = _pick_positive(sp.solve(sp.Eq(elr_map, elr), G))
    return {
        "norm_map": f,
        "rho4": rho4,
        "rho4_first_order": first_order(rho4),
        "rho": sp.sqrt(sp.sqrt(rho4)),
        "elr": elr_star,
        "elr_first_order": first_order(elr_star, power=2),
        "cos_angle": cos_angle,
        "angle": _arccos_expr(one_minus),
        "angle_first_order": _angle_first_order(one_minus),
        "nullcline": sp.simplify(g_null),
    }


@cache
def sgd_relaxation() -> dict[str, sp.Expr]:
    r"""Linearised relaxation of rho^2 towards equilibrium (SGD).

    ``factor = f'(rho*^2)`` of the norm map of :func:`sgd_equilibrium`, ``time =
    -1/log(factor)`` and its first-order form ``1/(4 eta lam)``.
    """
    eq = sgd_equilibrium()
    r2 = sp.Symbol("r2", positive=True)
    r2_star = sp.sqrt(eq["rho4"])
    factor = sp.expand(sp.simplify(sp.diff(eq["norm_map"], r2).subs(r2, r2_star)))
    time = -1 / sp.log(sp.Abs(factor))
    return {"factor": factor, "time": time, "time_first_order": first_order(-1 / sp.log(factor))}


@cache
def sgd_relaxation_law() -> dict[str, sp.Expr]:
    r"""First-order relaxation law of ``y = rho^4`` (SGD), solved with ``sympy.rsolve``.

    Squaring the norm map gives ``y' = q^4 y + 2 q^2 c + c^2/y`` with ``c = eta^2 G^2``;
    near equilibrium ``c^2/y`` is O(eta lam) relative to ``2 q^2 c``. Dropping it leaves
    an affine recursion, solved exactly: ``y_t = y~ + (y_0 - y~) q^(4t)`` with
    ``y~ = 2 q^2 c/(1 - q^4)``, which equals ``rho*^4`` to first order. (The law in
    :func:`siflow.theory.sgd_relaxation_norm` keeps the rate ``q^4`` and uses the
    exact ``rho*^4``.) Keys: ``recursion`` (exact, in ``y``), ``solution`` (in ``t``,
    ``y0``), ``fixed_point``, ``fixed_point_first_order``.
    """
    t = sp.Symbol("t", integer=True, nonnegative=True)
    yv, y0 = sp.Symbol("y", positive=True), sp.Symbol("y0", positive=True)
    yf = sp.Function("y")
    q = 1 - eta * lam
    r2 = sp.Symbol("r2", positive=True)
    f = sgd_equilibrium()["norm_map"]
    exact = sp.expand((f**2).subs(r2, sp.sqrt(yv)))  # y' as a function of y
    c = eta**2 * G**2
    dropped = sp.expand(c**2 / yv)
    truncated = sp.expand(exact - dropped)
    if sp.simplify(truncated - (q**4 * yv + 2 * q**2 * c)) != 0:  # pragma: no cover
        raise ArithmeticError("unexpected form of the squared norm map")
    rec = yf(t + 1) - truncated.subs(yv, yf(t))
    sol = sp.rsolve(rec, yf(t), {yf(0): y0})
    fixed = sp.factor(sp.solve(sp.Eq(truncated, yv), yv)[0])
    return {
        "recursion": exact,
        "solution": sp.simplify(sol),
        "fixed_point": fixed,
        "fixed_point_first_order": first_order(fixed),
    }


@cache
def zero_grad_decay() -> dict[str, sp.Expr]:
    r"""Per-step norm factor at zero gradient, SGD and heavy ball.

    SGD: ``w' = (1 - eta lam) w``. Heavy ball with g = 0: ``v' = mu v + lam w``,
    ``w' = w - eta v'`` gives the two-step recursion
    ``w_{t+1} = (1 + mu - eta lam) w_t - mu w_{t-1}``; its characteristic roots are
    solved and the larger one kept. Keys: ``sgd``, ``characteristic`` (polynomial in
    ``z``), ``momentum`` (larger root), ``momentum_first_order``.

    Nesterov (PyTorch ``nesterov=True``), from its update over ``(w, v)`` with g = 0
    (:func:`_heavy_ball_updates`): ``nesterov_characteristic``, ``nesterov`` (larger
    root), ``nesterov_first_order``.
    """
    z = sp.Symbol("z")
    # state (w_t, w_{t-1}); v_t = (w_{t-1} - w_t)/eta; w_{t+1} = w_t - eta (mu v_t + lam w_t)
    w_t, w_prev = sp.symbols("w_t w_prev")
    v_t = (w_prev - w_t) / eta
    w_next = sp.expand(w_t - eta * (mu * v_t + lam * w_t))
    # companion matrix of the recursion and its characteristic polynomial
    m = sp.Matrix([[w_next.coeff(w_t), w_next.coeff(w_prev)], [1, 0]])
    char = sp.expand(m.charpoly(z).as_expr())
    roots = sp.solve(char, z)
    alpha = sp.simplify(_pick_positive(roots))  # the larger (both are positive here)
    upd = _heavy_ball_updates(True)
    nest = sp.Matrix([upd["w"][:2], upd["v"][:2]])  # over (w, v); g = 0
    nest_char = sp.expand(nest.charpoly(z).as_expr())
    nest_alpha = sp.simplify(_pick_positive(sp.solve(nest_char, z)))
    return {
        "sgd": 1 - eta * lam,
        "characteristic": char,
        "momentum": alpha,
        "momentum_first_order": _root_first_order(char, z),
        "nesterov_characteristic": nest_char,
        "nesterov": nest_alpha,
        "nesterov_first_order": _root_first_order(nest_char, z),
    }


@cache
def zero_grad_elr_doubling() -> dict[str, sp.Expr]:
    r"""Steps for the effective LR to double at zero gradient.

    The norm shrinks by the factor ``d`` per step (``1 - eta lam`` for SGD, the
    larger root of :func:`zero_grad_decay` with momentum), so ``elr = eta/rho^2``
    grows by ``d^(-2)``: solve ``d^(-2T) = 2`` for T. Keys: ``generic`` (in the
    symbol ``d``), ``sgd``, ``sgd_first_order``.
    """
    d, t = sp.symbols("d T", positive=True)
    # take logs (real branch): -2 T ln d = ln 2
    sol = sp.solve(sp.Eq(sp.expand_log(sp.log(d ** (-2 * t)), force=True), sp.log(2)), t)
    generic = sp.simplify(sol[0])
    sgd = generic.subs(d, 1 - eta * lam)
    return {"generic": generic, "sgd": sgd, "sgd_first_order": first_order(sgd)}


@cache
def period_model() -> dict[str, sp.Expr]:
    r"""Period of docs/theory.md section 2: decay from ``rho_max`` to ``rho_crit`` plus escape.

    With the norm factor ``d`` per step at zero gradient, solve
    ``rho_max d^T = rho_crit`` for T and add ``T_escape``. Keys: ``generic`` (symbols
    ``rho_max``, ``rho_crit``, ``d``, ``T_escape``), ``sgd``, ``sgd_first_order``.
    """
    rmax, rcrit, d, t, esc = sp.symbols("rho_max rho_crit d T T_escape", positive=True)
    sol = sp.solve(sp.Eq(rmax * d**t, rcrit), t)
    generic = sp.simplify(sol[0]) + esc
    sgd = generic.subs(d, 1 - eta * lam)
    return {"generic": generic, "sgd": sgd, "sgd_first_order": first_order(sgd - esc) + esc}


@cache
def exponential_lr_equivalence() -> dict[str, sp.Expr]:
    r"""Li & Arora's exponential-LR equivalence, derived from the two update rules.

    Heavy ball with weight decay, with ``v_t = (w_{t-1} - w_t)/eta``:
    ``w_{t+1} = (1 + mu - eta lam) w_t - mu w_{t-1} - eta g(w_t)``. Heavy ball without
    decay and LR ``eta_t`` on ``u``: ``u_{t+1} = (1 + mu r) u_t - mu r u_{t-1} - eta_t g(u_t)``
    with ``r = eta_t/eta_{t-1}``. Put ``u_t = w_t/alpha^t`` and use scale invariance,
    ``g(w/alpha^t) = alpha^t g(w)``; matching the coefficient of ``g`` gives ``eta_t``,
    matching the coefficient of ``w_t`` gives the polynomial for ``alpha``, and matching
    the first step (``v_0`` the decay run's buffer) gives the no-decay run's initial
    buffer. Keys: ``lr_t``, ``alpha_polynomial`` (in ``alpha``), ``initial_buffer_coef``
    (``v^u_0 = v_0 + coef * w_0``).
    """
    t = sp.Symbol("t", integer=True, nonnegative=True)
    alpha = sp.Symbol("alpha", positive=True)
    w_t, w_prev, g_w, lr_t, lr_prev = sp.symbols("w_t w_prev g_w eta_t eta_prev")
    w_next = (1 + mu - eta * lam) * w_t - mu * w_prev - eta * g_w
    # no-decay run written for u = w / alpha^t, times alpha^(t+1) to compare with w_next
    r = lr_t / lr_prev
    u_next = (1 + mu * r) * w_t / alpha**t - mu * r * w_prev / alpha ** (t - 1)
    u_next = u_next - lr_t * alpha**t * g_w
    diff = sp.expand(u_next * alpha ** (t + 1) - w_next)  # must vanish identically
    lr_sol = sp.solve(diff.coeff(g_w), lr_t)[0]  # eta alpha^(-2t-1)
    lr_prev_sol = lr_sol.subs(t, t - 1)
    diff = sp.expand(sp.powsimp(diff.subs({lr_t: lr_sol, lr_prev: lr_prev_sol}), force=True))
    if sp.simplify(diff.coeff(w_prev)) != 0:  # pragma: no cover - a failed derivation
        raise ArithmeticError("the w_{t-1} coefficients do not match")
    poly = sp.expand(sp.simplify(diff.coeff(w_t)) * alpha)
    # first step: w_1 = w_0 - eta (mu v_0 + g + lam w_0) and
    # u_1 = u_0 - eta_0 (mu vu_0 + g) must equal w_1 / alpha (u_0 = w_0); per unit w_0
    v0, vu0 = sp.symbols("v_0 vu_0")
    w1 = 1 - eta * (mu * v0 + g_w + lam)
    u1 = 1 - lr_sol.subs(t, 0) * (mu * vu0 + g_w)
    vu0_sol = sp.solve(sp.Eq(u1, w1 / alpha), vu0)[0]
    coef = sp.simplify(sp.expand(vu0_sol - v0))
    return {
        "lr_t": sp.simplify(lr_sol),
        "alpha_polynomial": sp.collect(poly, alpha),
        "initial_buffer_coef": coef,
    }


@cache
def direction_threshold() -> dict[str, sp.Expr]:
    r"""Stability threshold of the linearised direction map at a minimum on the sphere.

    Two dimensions suffice: ``w = rho (cos th, sin th)`` on an SI loss with
    ``L = S th^2 / 2`` near the minimum ``th = 0``, so ``grad L(w) = (S th / rho) e_th``.
    SGD: ``w' = (1 - eta lam) w - eta grad L``, hence
    ``th' = th - atan(eta S th / ((1 - eta lam) rho^2))``; with ``elr = eta/rho^2`` the
    multiplier ``d th'/d th`` at 0 is ``1 - elr S/(1 - eta lam)`` and the map is
    stable iff it is > -1: ``elr < 2 (1 - eta lam)/S``.

    Heavy ball, in the equivalent no-decay picture of Li & Arora (``u_t = w_t/alpha^t``,
    LR ``eta alpha^(-2t-1)``) with the effective LR frozen over a few steps:
    ``th_{t+1} = th_t + (mu/alpha^2)(th_t - th_{t-1}) - (elr S/alpha) th_t``, stable
    iff ``elr S < 2 (alpha + mu/alpha) = 2 (1 + mu - eta lam)`` (quasi-static).

    Nesterov, the same way: along the curvature ``H = S/rho^2`` of the tangent
    direction its update (:func:`_heavy_ball_updates`) gives the recursion
    ``u_{t+1} = (1 + mu)(1 - k) u_t - mu (1 - k) u_{t-1}``, ``k = eta (H + lam)``;
    ``u_t = alpha^t th_t`` with its decay factor ``alpha`` and ``eta H = elr S`` give
    the angle's recursion, whose root ``-1`` is the boundary
    ``elr S = 1 - eta lam + alpha^2/((1 + mu) alpha + mu)`` (``nesterov_elr_threshold``,
    in ``alpha``).

    Keys: ``multiplier``, ``elr_threshold``, ``critical_rho2``, ``sgdm_elr_threshold``,
    ``sgdm_elr_threshold_alpha``, ``nesterov_elr_threshold``.
    """
    th, rho = sp.symbols("theta rho", positive=True)
    q = 1 - eta * lam
    th_new = th - sp.atan(eta * S * th / (q * rho**2))
    mult = sp.simplify(sp.diff(th_new, th).subs(th, 0).subs(rho, sp.sqrt(eta / elr)))
    elr_thr = sp.solve(sp.Eq(mult, -1), elr)[0]
    rho2 = sp.solve(
        sp.Eq(eta / sp.Symbol("r2", positive=True), elr_thr), sp.Symbol("r2", positive=True)
    )[0]
    # heavy ball: z^2 - B z + P, stable iff |B| < 1 + P; the binding boundary is B = -(1 + P)
    alpha = sp.Symbol("alpha", positive=True)
    p_coef = mu / alpha**2
    b_coef = 1 + p_coef - elr * S / alpha
    thr_alpha = sp.solve(sp.Eq(b_coef, -(1 + p_coef)), elr)[0]  # 2 (alpha + mu/alpha) / S
    # reduce with the decay polynomial alpha^2 - (1 + mu - eta lam) alpha + mu = 0
    decay_poly = sp.Poly(zero_grad_decay()["characteristic"].subs(sp.Symbol("z"), alpha), alpha)
    candidate = 2 * (1 + mu - eta * lam) / S
    num = sp.Poly(sp.numer(sp.together(thr_alpha - candidate)), alpha)
    if not num.rem(decay_poly).is_zero:  # pragma: no cover - a failed derivation
        raise ArithmeticError("heavy-ball threshold did not reduce to 2 (1 + mu - eta lam)/S")
    return {
        "multiplier": mult,
        "elr_threshold": sp.simplify(elr_thr),
        "critical_rho2": sp.simplify(rho2),
        "sgdm_elr_threshold_alpha": thr_alpha,
        "sgdm_elr_threshold": candidate,
        "nesterov_elr_threshold": _nesterov_threshold(alpha),
    }


def _nesterov_threshold(alpha: sp.Symbol) -> sp.Expr:
    """``elr`` at which the Nesterov angle recursion has the root ``-1`` (in ``alpha``)."""
    h, u0, u1, v1 = sp.symbols("H u0 u1 v1")
    upd = _heavy_ball_updates(True)

    # one tangent step from (u1, v1) with g = H u1, then eliminate the buffer with the
    # previous step: v1 = mu v0 + (H + lam) u0 and u1 = u0 - eta(...) give the recursion
    def step(u: sp.Expr, v: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
        g = h * u
        return (
            upd["w"][0] * u + upd["w"][1] * v + upd["w"][2] * g,
            upd["v"][0] * u + upd["v"][1] * v + upd["v"][2] * g,
        )

    u2, v2 = step(u1, v1)
    u3, _ = step(u2, v2)
    # u3 = B u2 - C u1 for all (u1, v1): solve for B, C
    b_, c_ = sp.symbols("B C")
    eqs = sp.Poly(sp.expand(u3 - (b_ * u2 - c_ * u1)), u1, v1).coeffs()
    sol = sp.solve(eqs, [b_, c_], dict=True)[0]
    # u_t = alpha^t th_t: th'' = (B/alpha) th' - (C/alpha^2) th, with eta H = elr S
    b_th = (sol[b_] / alpha).subs(h, elr * S / eta)
    c_th = (sol[c_] / alpha**2).subs(h, elr * S / eta)
    thr = sp.solve(sp.Eq(1 + b_th + c_th, 0), elr)[0]  # root -1: 1 + B + C = 0
    return sp.simplify(thr)


# --------------------------------------------------------------------------- momentum


_a, _b, _c, _s = sp.symbols("a b c s", positive=True)


def _heavy_ball_updates(nesterov: bool) -> dict[str, list[sp.Expr]]:
    """PyTorch SGD(momentum, weight_decay, nesterov) over the basis (w, v, g)."""
    v_new = [lam, mu, 1]  # v' = mu v + g + lam w
    if nesterov:  # w' = w - eta (g + lam w + mu v')
        w_new = [1 - eta * lam * (1 + mu), -eta * mu**2, -eta * (1 + mu)]
    else:  # w' = w - eta v'
        w_new = [1 - eta * lam, -eta * mu, -eta]
    return {"w": w_new, "v": v_new}


@cache
def sgdm_equilibrium(nesterov: bool = False) -> dict[str, sp.Expr]:
    r"""Equilibrium of PyTorch heavy-ball (or Nesterov) SGD with coupled weight decay.

    Basis ``(w, v, g)``; Gram matrix with ``a = E|w|^2``, ``b = E<w,v>``,
    ``c = E|v|^2``, ``E|g|^2 = s`` and ``g`` orthogonal to ``w`` and ``v`` (scale
    invariance plus gradients uncorrelated across steps). The stationary point of
    the linear recursion for ``(a, b, c)`` is solved with ``s`` free, then
    ``s = G^2/a`` closes it (``rho*^4 = a^2``). The angle is
    ``cos Delta = E<w, w'>/E|w|^2`` at the fixed point.

    Keys: ``moment_map`` (dict), ``rho4``, ``rho4_first_order``, ``one_minus_cos``,
    ``angle``, ``angle_first_order``.
    """
    gram = sp.Matrix([[_a, _b, 0], [_b, _c, 0], [0, 0, _s]])
    up = _heavy_ball_updates(nesterov)
    mm = second_moment_map(up, gram, {("w", "w"): _a, ("w", "v"): _b, ("v", "v"): _c})
    sol = sp.solve([sp.Eq(mm[k], k) for k in (_a, _b, _c)], [_a, _b, _c], dict=True)[0]
    sol = {k: sp.factor(v) for k, v in sol.items()}
    rho4 = sp.factor(sol[_a] / _s * G**2)
    one_minus = sp.factor(sp.cancel(1 - _inner([1, 0, 0], up["w"], gram).subs(sol) / sol[_a]))
    angle = _arccos_expr(one_minus)
    return {
        "moment_map": mm,
        "fixed_point": sol,
        "rho4": rho4,
        "rho4_first_order": first_order(rho4),
        "one_minus_cos": one_minus,
        "angle": angle,
        "angle_first_order": _angle_first_order(one_minus),
    }


@cache
def sgdm_relaxation() -> dict[str, sp.Expr]:
    r"""Linearised relaxation of the heavy-ball second-moment map (s = G^2/a).

    The Jacobian of ``(a, b, c) -> (a', b', c')`` at the fixed point; keys
    ``jacobian``, ``charpoly`` (factored, in ``z``) and ``quadratic`` (the factor
    whose larger root is the slow relaxation factor), ``factor_first_order``.
    """
    z = sp.Symbol("z")
    eq = sgdm_equilibrium()
    mm = {k: v.subs(_s, G**2 / _a) for k, v in eq["moment_map"].items()}
    jac = sp.Matrix([mm[_a], mm[_b], mm[_c]]).jacobian([_a, _b, _c])
    # at the fixed point G^2 = s a, and (a, b, c) are linear in s: s cancels out
    j0 = jac.subs(G, sp.sqrt(_s * _a)).subs(eq["fixed_point"]).applyfunc(sp.cancel)
    poly = sp.factor(j0.charpoly(z).as_expr())
    quad = [f for f in sp.Mul.make_args(poly) if sp.degree(f, z) == 2][0]
    quad = sp.expand(quad / sp.Poly(quad, z).LC())
    roots = sp.solve(quad, z)
    slow = _pick_positive(roots)
    return {
        "jacobian": j0,
        "charpoly": poly,
        "quadratic": quad,
        "factor": slow,
        "factor_first_order": _root_first_order(quad, z),
    }


def _root_first_order(poly: sp.Expr, z: sp.Symbol) -> sp.Expr:
    """First-order root ``1 + x dz/dx`` of ``poly(z) = 0`` near ``z = 1`` at ``x = lr*wd = 0``.

    Implicit differentiation, ``dz/dx = -(dP/dx)/(dP/dz)`` at ``(z, x) = (1, 0)``; avoids
    expanding nested radicals of the closed-form root.
    """
    p_x = sp.expand(poly.subs(lam, x / eta))
    slope = -sp.diff(p_x, x) / sp.diff(p_x, z)
    slope = sp.simplify(slope.subs({z: 1, x: 0}))
    return sp.factor(sp.simplify(1 + slope * eta * lam))


# --------------------------------------------------------------------------- AdamW and Lion


@cache
def adamw_equilibrium() -> dict[str, sp.Expr]:
    r"""Equilibrium of AdamW on an SI group of C parameters.

    ``m' = beta1 m + (1 - beta1) n``, ``w' = (1 - eta lam) w - eta m'`` with the
    normalised gradient ``n = g/sqrt(v)``: isotropic stationary ``v`` gives
    ``|n|^2 = C`` exactly, ``n`` orthogonal to ``w`` and uncorrelated with the past.
    Basis ``(w, m, n)``; stationary second moments give ``rho*^2 = a``.

    Keys: ``moment_map``, ``rho2``, ``rho2_first_order``, ``one_minus_cos``,
    ``angle``, ``angle_first_order``.
    """
    gram = sp.Matrix([[_a, _b, 0], [_b, _c, 0], [0, 0, C]])
    m_new = [0, beta1, 1 - beta1]
    w_new = [1 - eta * lam, -eta * beta1, -eta * (1 - beta1)]
    up = {"w": w_new, "m": m_new}
    mm = second_moment_map(up, gram, {("w", "w"): _a, ("w", "m"): _b, ("m", "m"): _c})
    sol = sp.solve([sp.Eq(mm[k], k) for k in (_a, _b, _c)], [_a, _b, _c], dict=True)[0]
    rho2 = sp.factor(sp.simplify(sol[_a]))
    one_minus = sp.factor(sp.simplify(1 - _inner([1, 0, 0], w_new, gram).subs(sol) / sol[_a]))
    angle = _arccos_expr(one_minus)
    return {
        "moment_map": mm,
        "rho2": rho2,
        "rho2_first_order": first_order(rho2),
        "one_minus_cos": one_minus,
        "angle": angle,
        "angle_first_order": _angle_first_order(one_minus),
    }


@cache
def lion_equilibrium() -> dict[str, sp.Expr]:
    r"""Equilibrium of Lion on an SI group of C parameters, given the update correlations.

    ``w' = q w - eta u`` with ``q = 1 - eta lam`` and sign updates ``|u|^2 = C``.
    Unrolling, ``w_t = -eta sum_j q^j u_{t-1-j}`` (plus a decayed initial state), so
    ``e = E<w_t, u_t> = -eta C Sigma / q`` with ``Sigma = sum_{k>=1} q^k s_k`` and
    ``s_k`` the correlation of updates k steps apart (for Lion,
    ``s_k = (2/pi) arcsin(c_k)``; see :func:`siflow.theory.lion_equilibrium_angle`).
    The stationary recursion ``a' = q^2 a - 2 q eta e + eta^2 C`` gives ``rho*^2 = a``
    and ``cos Delta = (q a - eta e)/a``. The expressions contain the symbol
    ``Sigma`` (name ``lion_sum`` in :func:`numpy_function`).

    Keys: ``rho2``, ``one_minus_cos``, ``angle``, and ``rho2_first_order``,
    ``angle_first_order`` (leading order in ``eta lam`` at fixed ``Sigma``; evaluate
    them with ``Sigma`` at ``q = 1``, i.e. ``sum_k s_k``).
    """
    q = 1 - eta * lam
    e = -eta * C * Sigma / q
    gram = sp.Matrix([[_a, e], [e, C]])
    w_new = [q, -eta]
    a_new = _inner(w_new, w_new, gram)
    rho2 = sp.factor(sp.solve(sp.Eq(a_new, _a), _a)[0])
    one_minus = sp.factor(sp.simplify(1 - _inner([1, 0], w_new, gram).subs(_a, rho2) / rho2))
    return {
        "rho2": rho2,
        "rho2_first_order": first_order(rho2),
        "one_minus_cos": one_minus,
        "angle": _arccos_expr(one_minus),
        "angle_first_order": _angle_first_order(one_minus),
    }


# --------------------------------------------------------------------------- output


def numpy_function(expr: sp.Expr, args: Sequence[str] | None = None) -> Callable[..., np.ndarray]:
    """Vectorised numpy function of ``expr`` with hyperparameter names as arguments.

    Parameters
    ----------
    expr : sympy.Expr
        An expression from this module.
    args : sequence of str, optional
        Argument names from :data:`SYMBOLS` (``lr``, ``wd``, ``momentum``, ...), in
        call order. By default the names of the free symbols, in the order of
        :data:`SYMBOLS`.

    Returns
    -------
    callable
        ``f(*arrays)`` evaluated with numpy (``sympy.lambdify``).
    """
    if args is None:
        free = expr.free_symbols
        args = [name for name, sym in SYMBOLS.items() if sym in free]
    unknown = [a for a in args if a not in SYMBOLS]
    if unknown:
        raise ValueError(f"args contains unknown names {unknown}; use names from {list(SYMBOLS)}")
    missing = expr.free_symbols - {SYMBOLS[a] for a in args}
    if missing:
        raise ValueError(f"expression has symbols {sorted(map(str, missing))} not listed in args")
    return sp.lambdify([SYMBOLS[a] for a in args], expr, modules="numpy")


def latex(expr: sp.Expr) -> str:
    """LaTeX of an expression (``sympy.latex``)."""
    return sp.latex(expr)


#: What :func:`derive` can show, per optimizer.
DERIVATIONS: dict[str, tuple[str, ...]] = {
    "equilibrium": ("sgd", "sgdm", "adamw", "lion"),
    "angle": ("sgd", "sgdm", "adamw", "lion"),
    "relaxation": ("sgd", "sgdm"),
    "threshold": ("sgd", "sgdm"),
    "decay": ("sgd", "sgdm"),
}


def derive(what: str, optimizer: str = "sgd") -> list[tuple[str, sp.Expr]]:
    """Named results of one derivation, as ``[(label, expression), ...]``.

    Parameters
    ----------
    what : {"equilibrium", "angle", "relaxation", "threshold", "decay"}
    optimizer : {"sgd", "sgdm", "adamw", "lion"}
        ``sgdm`` is PyTorch heavy ball; not every pair is derived (see
        :data:`DERIVATIONS`).
    """
    if what not in DERIVATIONS:
        raise ValueError(f"what must be one of {sorted(DERIVATIONS)}, got {what!r}")
    if optimizer not in DERIVATIONS[what]:
        raise ValueError(
            f"the {what} derivation exists for optimizer in {list(DERIVATIONS[what])}, "
            f"got {optimizer!r}; pick one of those"
        )
    if what == "equilibrium":
        if optimizer == "sgd":
            d = sgd_equilibrium()
            return [
                ("norm map rho'^2 = f(rho^2 = r2)", d["norm_map"]),
                ("rho*^4 (exact)", d["rho4"]),
                ("rho*^4 (first order)", d["rho4_first_order"]),
                ("effective LR eta/rho*^2 (exact)", d["elr"]),
                ("effective LR (first order)", d["elr_first_order"]),
                ("nullcline: G at which the effective LR is stationary", d["nullcline"]),
            ]
        if optimizer == "sgdm":
            d = sgdm_equilibrium()
            return [
                ("rho*^4 (exact, uncorrelated gradients)", d["rho4"]),
                ("rho*^4 (first order)", d["rho4_first_order"]),
            ]
        if optimizer == "adamw":
            d = adamw_equilibrium()
            return [
                ("rho*^2 (exact, uncorrelated gradients)", d["rho2"]),
                ("rho*^2 (first order)", d["rho2_first_order"]),
            ]
        d = lion_equilibrium()
        return [
            ("rho*^2 (Sigma = sum_k q^k s_k of update correlations)", d["rho2"]),
            ("rho*^2 (first order, Sigma at q = 1)", d["rho2_first_order"]),
        ]
    if what == "angle":
        if optimizer == "lion":
            d = lion_equilibrium()
            return [
                ("1 - cos Delta* (Sigma = sum_k q^k s_k)", d["one_minus_cos"]),
                ("Delta*", d["angle"]),
                ("Delta* (first order, Sigma at q = 1)", d["angle_first_order"]),
            ]
        d = {"sgd": sgd_equilibrium, "sgdm": sgdm_equilibrium, "adamw": adamw_equilibrium}[
            optimizer
        ]()
        one_minus = (1 - d["cos_angle"]) if optimizer == "sgd" else d["one_minus_cos"]
        return [
            ("1 - cos Delta* (exact)", sp.simplify(one_minus)),
            ("Delta* (exact)", d["angle"]),
            ("Delta* (first order)", d["angle_first_order"]),
        ]
    if what == "relaxation":
        if optimizer == "sgd":
            d = sgd_relaxation()
            return [
                ("contraction factor of rho^2 per step (exact, linearised)", d["factor"]),
                ("time constant (steps)", d["time"]),
                ("time constant (first order)", d["time_first_order"]),
            ]
        d = sgdm_relaxation()
        return [
            ("characteristic polynomial of the second-moment Jacobian", d["charpoly"]),
            ("slow factor: larger root of", sp.Eq(d["quadratic"], 0)),
            ("slow factor (first order)", d["factor_first_order"]),
        ]
    if what == "threshold":
        d = direction_threshold()
        if optimizer == "sgd":
            return [
                ("multiplier of the linearised direction map", d["multiplier"]),
                ("largest stable effective LR", d["elr_threshold"]),
                ("critical rho^2", d["critical_rho2"]),
            ]
        return [("largest stable effective LR (quasi-static)", d["sgdm_elr_threshold"])]
    d = zero_grad_decay()
    if optimizer == "sgd":
        return [("norm factor per step at zero gradient", d["sgd"])]
    return [
        ("characteristic polynomial", d["characteristic"]),
        ("norm factor per step (larger root)", d["momentum"]),
        ("norm factor (first order)", d["momentum_first_order"]),
    ]
