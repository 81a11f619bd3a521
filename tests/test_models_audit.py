"""The ODE and discrete-map models at their edges: output times, the time origin, drivers
that return NaN, argument checks, the norm range of norm_map and seeds.

Reference values come from sympy solutions derived here (not from siflow's closed forms)
or from exact iterations of the documented maps.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

from siflow import maps, ode


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Fail (instead of hanging) when the body runs longer than ``seconds`` (SIGALRM)."""

    def _expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------- sympy references
_T = sp.symbols("t", nonnegative=True)


def _oscillator_reference(gamma, omega2, x0, v0, forcing):
    """``x(t)`` of ``x'' + 2 gamma x' + omega2 x = forcing`` with ``x(0) = x0``,
    ``x'(0) = v0`` (sympy ``dsolve``; all arguments rationals or sympy expressions)."""
    x = sp.Function("x")
    eq = sp.Eq(x(_T).diff(_T, 2) + 2 * gamma * x(_T).diff(_T) + omega2 * x(_T), forcing)
    sol = sp.dsolve(eq, x(_T), ics={x(0): x0, x(_T).diff(_T).subs(_T, 0): v0})
    return sp.lambdify(_T, sol.rhs, "mpmath")


def _norm_flow_reference(lr, wd, rho0, g2):
    """``rho(t)`` of the modified norm flow ``y' = -2 kappa y + 2 lr g2(t)``, ``y = rho^4``,
    ``kappa = 2 wd + lr wd^2``, ``y(0) = rho0^4`` (sympy ``dsolve``)."""
    kappa = 2 * wd + lr * wd**2
    y = sp.Function("y")
    eq = sp.Eq(y(_T).diff(_T), -2 * kappa * y(_T) + 2 * lr * g2)
    sol = sp.dsolve(eq, y(_T), ics={y(0): rho0**4})
    f = sp.lambdify(_T, sol.rhs, "mpmath")
    return lambda t: float(f(t)) ** 0.25


# An under-damped oscillator: lr = 1, wd = 1/2, mu = 0 -> gamma = 1, omega^2 = 2.
_OSC = {"lr": 1.0, "wd": 0.5, "momentum": 0.0}
_X_OSC = _oscillator_reference(sp.Integer(1), sp.Integer(2), sp.Integer(2), sp.Rational(3, 10), 0)
_X_OSC_F = _oscillator_reference(
    sp.Integer(1), sp.Integer(2), sp.Integer(2), sp.Rational(3, 10), sp.Rational(7, 10)
)
# norm flow driven by g~(t) = sqrt(1 + t/10): lr = 1/10, wd = 1/1000, rho0 = 3/2
_RHO_NF = _norm_flow_reference(
    sp.Rational(1, 10), sp.Rational(1, 1000), sp.Rational(3, 2), 1 + _T / 10
)


def _g_nf(t: float) -> float:
    return math.sqrt(1.0 + t / 10.0)


# --------------------------------------------------------- a single output time
def test_gradient_and_modified_flow_return_the_state_at_a_single_time():
    w0 = np.array([3.0, 4.0])  # |w0| = 5
    zero = lambda w: np.zeros_like(w)  # noqa: E731
    sol = ode.gradient_flow(zero, w0, 0.0, wd=0.1)
    np.testing.assert_array_equal(sol.y, w0[:, None])
    assert sol.rho.tolist() == [5.0]
    # w' = -wd w: w(t) = e^{-wd t} w0
    sol = ode.gradient_flow(zero, w0, [2.0], wd=0.1)
    np.testing.assert_allclose(sol.y[:, 0], math.exp(-0.2) * w0, rtol=1e-9)
    assert sol.rho[0] == pytest.approx(5.0 * math.exp(-0.2), rel=1e-9)
    # modified flow with L = 0: w' = -(wd + lr wd^2/2) w
    sol = ode.modified_flow(zero, lambda w, v: np.zeros_like(w), w0, [2.0], lr=0.5, wd=0.1)
    assert sol.rho[0] == pytest.approx(5.0 * math.exp(-(0.1 + 0.5 * 0.01 / 2) * 2.0), rel=1e-9)


def test_ivp_solvers_accept_a_scalar_time():
    assert ode.momentum_oscillator_ivp(0.0, 2.0, 0.3, **_OSC).tolist() == [2.0]
    got = ode.momentum_oscillator_ivp(1.5, 2.0, 0.3, **_OSC)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(float(_X_OSC(1.5)), abs=1e-9)
    got = ode.norm_flow(5.0, 1.5, lr=0.1, wd=1e-3, grad_norm=_g_nf)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(_RHO_NF(5.0), rel=1e-9)
    assert ode.norm_flow(0.0, 1.5, lr=0.1, wd=1e-3, grad_norm=_g_nf).tolist() == [1.5]


# -------------------------------------------------------------- the time origin
def test_ivp_twins_put_the_initial_state_at_t_zero_like_the_closed_forms():
    t = [1.0, 2.0, 3.0]
    want = [float(_X_OSC_F(s)) for s in t]
    ivp = ode.momentum_oscillator_ivp(t, 2.0, 0.3, forcing=0.7, **_OSC)
    closed = ode.momentum_oscillator(t, 2.0, 0.3, forcing=0.7, **_OSC)
    np.testing.assert_allclose(ivp, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(closed, want, rtol=0, atol=1e-12)
    # a callable forcing sees absolute times: F(t) = 0.7 for t >= 0 is the same model
    ivp_c = ode.momentum_oscillator_ivp(t, 2.0, 0.3, forcing=lambda s: 0.7, **_OSC)
    np.testing.assert_allclose(ivp_c, want, rtol=0, atol=1e-9)

    t = [100.0, 200.0]
    got = ode.norm_flow(t, 1.5, lr=0.1, wd=1e-3, grad_norm=_g_nf)
    np.testing.assert_allclose(got, [_RHO_NF(s) for s in t], rtol=1e-9)
    const = _norm_flow_reference(sp.Rational(1, 10), sp.Rational(1, 1000), sp.Rational(3, 2), 0.64)
    np.testing.assert_allclose(
        ode.norm_flow(t, 1.5, lr=0.1, wd=1e-3, grad_norm=lambda s: 0.8),
        [const(s) for s in t],
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        ode.norm_flow(t, 1.5, lr=0.1, wd=1e-3, grad_norm=0.8), [const(s) for s in t], rtol=1e-12
    )

    sol = ode.gradient_flow(lambda w: np.zeros_like(w), [3.0, 4.0], [2.0, 5.0], wd=0.1)
    np.testing.assert_allclose(sol.rho, 5.0 * np.exp(-0.1 * np.array([2.0, 5.0])), rtol=1e-9)


def test_ivp_solvers_accept_times_in_any_order():
    t = [3.0, 1.0, 2.0, 1.0]
    with _time_limit(20):
        got = ode.momentum_oscillator_ivp(t, 2.0, 0.3, **_OSC)
    np.testing.assert_allclose(got, [float(_X_OSC(s)) for s in t], rtol=0, atol=1e-9)
    sol = ode.gradient_flow(lambda w: np.zeros_like(w), [3.0, 4.0], t, wd=0.1)
    assert sol.t.tolist() == t
    np.testing.assert_allclose(sol.rho, 5.0 * np.exp(-0.1 * np.array(t)), rtol=1e-9)


# ------------------------------- drivers that return NaN or inf, and tolerances
_HANG_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from siflow import ode
    calls = {
        "norm_flow": lambda: ode.norm_flow(
            [0.0, 10.0], 1.5, lr=0.1, wd=1e-3, grad_norm=lambda t: np.nan),
        "oscillator": lambda: ode.momentum_oscillator_ivp(
            [0.0, 1.0], 1.0, lr=1, wd=0.5, momentum=0.0, forcing=lambda t: np.inf),
        "gradient": lambda: ode.gradient_flow(
            lambda w: w * np.nan, [1.0, 0.0], [0.0, 1.0], wd=1e-3),
        "modified": lambda: ode.modified_flow(
            lambda w: 0 * w, lambda w, v: v * np.nan, [1.0, 0.0], [0.0, 1.0], lr=0.1, wd=1e-3),
        "atol": lambda: ode.momentum_oscillator_ivp(
            [0.0, 1.0], 1.0, lr=1, wd=0.5, momentum=0.0, atol=np.nan),
    }
    for name, call in calls.items():
        try:
            call()
            print(name, "|", "returned")
        except ValueError as exc:
            print(name, "|", exc)
    """
)


def test_non_finite_drivers_and_tolerances_raise_instead_of_hanging():
    try:
        res = subprocess.run(
            [sys.executable, "-c", _HANG_SCRIPT], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("an ODE solver did not return within 60 s (non-finite driver or atol)")
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" | ", 1) for line in res.stdout.strip().splitlines())
    assert lines["norm_flow"].startswith("norm_flow: grad_norm(t) returned nan at t = 0")
    assert lines["oscillator"].startswith("momentum_oscillator_ivp: forcing(t) returned inf")
    assert lines["gradient"].startswith("gradient_flow: grad(w) returned nan")
    assert lines["modified"].startswith("modified_flow: hvp(w, v) returned nan")
    assert lines["atol"].startswith("atol must be finite")


# --------------------------------------------- momentum_oscillator_ivp's checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": -1.0}, "^rtol must be > 0"),
        ({"atol": 0.0}, "^atol must be > 0"),
        ({"x0": math.nan}, "^x0 must be finite"),
        ({"xdot0": math.inf}, "^xdot0 must be finite"),
        ({"forcing": math.nan}, "^forcing must be finite"),
    ],
)
def test_momentum_oscillator_ivp_validates_like_its_siblings(kwargs, match):
    args = {"t": [0.0, 1.0], "x0": 1.0, **_OSC, **kwargs}
    with _time_limit(20), pytest.raises(ValueError, match=match):
        ode.momentum_oscillator_ivp(**args)


# ------------------------------------------------------------- norm_map's range
@pytest.mark.parametrize("rho0", [1e-200, 9e-151, 2e150, 1e300])
def test_norm_map_refuses_rho0_outside_the_simulate_range(rho0):
    with pytest.raises(ValueError, match=r"^rho0 = .* is outside \[1e-150, 1e\+150\]"):
        maps.norm_map(0.1, 1e-3, 3, rho0=rho0, grad_norm=1.0)


def test_norm_map_stops_with_underflow_when_the_norm_leaves_the_range():
    # g~ = 0: rho_t = 0.95^t exactly; rho_t^2 >= 1e-300 iff t <= 6733 (log10 margin 0.02)
    assert 2 * 6733 * math.log10(0.95) > -300 > 2 * 6734 * math.log10(0.95)
    tr = maps.norm_map(0.1, 0.5, 20_000, rho0=1.0, grad_norm=0.0)
    assert tr.status == "underflow"
    assert tr.step[0] == 0 and tr.step[-1] == 6733 and len(tr.step) == 6734
    np.testing.assert_allclose(tr.rho, 0.95 ** tr.step.astype(float), rtol=1e-12)
    assert tr.meta["rho_final"] == pytest.approx(0.95**6734, rel=1e-12)
    assert "step 6733" in tr.meta["note"]
    thin = maps.norm_map(0.1, 0.5, 20_000, rho0=1.0, grad_norm=0.0, record_every=5000)
    assert thin.status == "underflow" and thin.step.tolist() == [0, 5000]


def test_norm_map_stops_with_diverged_on_overflow():
    tr = maps.norm_map(0.1, 1e-3, 5, rho0=1e150, grad_norm=1e300)
    assert tr.status == "diverged"
    assert tr.rho.tolist() == [1e150]
    assert tr.meta["rho_final"] == math.inf


def test_momentum_norm_map_stops_with_underflow_and_matches_the_moment_map():
    lr, wd, mu = 0.1, 0.5, 0.5
    tr = maps.norm_map(lr, wd, 20_000, rho0=1.0, grad_norm=0.0, momentum=mu)
    # the documented moment map with |g|^2 = 0, iterated until a = |w|^2 < 1e-300
    a, b, c, d, rows = 1.0, 0.0, 0.0, 1.0 - lr * wd, []
    while a >= 1e-300:
        rows.append(a)
        a, b, c = (
            d * d * a + lr * lr * mu * mu * c - 2.0 * d * lr * mu * b,
            mu * (1.0 - 2.0 * lr * wd) * b + wd * d * a - lr * mu * mu * c,
            mu * mu * c + wd * wd * a + 2.0 * mu * wd * b,
        )
    assert tr.status == "underflow"
    assert len(tr.rho) == len(rows) < 20_000
    np.testing.assert_allclose(tr.rho, np.sqrt(rows), rtol=1e-12)
    assert math.isnan(tr.angular_update[-1]) and np.all(np.isfinite(tr.angular_update[:-1]))


def test_norm_map_in_range_is_ok_and_exact():
    tr = maps.norm_map(0.1, 1e-3, 3, rho0=2.0, grad_norm=[0.5, 1.0, 2.0])
    x = [4.0]
    for g in (0.5, 1.0, 2.0):
        x.append((1 - 1e-4) ** 2 * x[-1] + 0.01 * g * g / x[-1])
    assert tr.meta["status"] == "ok"
    np.testing.assert_array_equal(tr.rho, np.sqrt(x[:3]))
    assert tr.meta["rho_final"] == math.sqrt(x[3])


# ---------------------------------------------------- the maps' argument checks
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, grad_norm="1"), "^grad_norm must be a number"),
        (
            lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, grad_norm=True),
            "^grad_norm must be a number",
        ),
        (
            lambda: maps.norm_map(0.1, 1e-3, rho0=1, grad_norm=np.array([True, False])),
            "^grad_norm must be a number",
        ),
        (lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, grad_norm=["1", "2", "3"]), "^grad_norm"),
        (lambda: maps.norm_map("0.1", 1e-3, 3, rho0=1), "^lr must be a number"),
        (lambda: maps.norm_map(0.1, 1e-3, 3, rho0=True), "^rho0 must be a number"),
        (lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, momentum="0.9"), "^momentum must be a number"),
        (
            lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, grad_norm=lambda s: np.full(s.size, "1")),
            r"^grad_norm\(steps\) must be a number",
        ),
        (
            lambda: maps.norm_map(0.1, 1e-3, 3, rho0=1, grad_norm=lambda s: np.ones(5)),
            r"^grad_norm\(steps\) returned shape \(5,\) for 3 steps",
        ),
        (
            lambda: maps.norm_map(0.1, 1e-3, rho0=1, grad_norm=np.ones((3, 1))),
            r"^grad_norm must be a 1-D array .* got shape \(3, 1\)",
        ),
        (lambda: maps.norm_map(0.1, 1e-3, rho0=1, grad_norm=0.5), "^steps is required for a"),
        (lambda: maps.reduced_map(0.1, 1e-3, 5, sharpness="50"), "^sharpness must be a number"),
        (lambda: maps.reduced_map(0.1, 1e-3, 5, sharpness=50.0, noise=True), "^noise must be"),
    ],
)
def test_maps_refuse_text_and_bools_and_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ seeds
def test_reduced_map_keeps_a_numpy_integer_seed():
    kw = {"sharpness": 50.0, "noise": 1e-3, "dim": 5}
    a = maps.reduced_map(0.1, 1e-3, 50, seed=7, **kw)
    b = maps.reduced_map(0.1, 1e-3, 50, seed=np.int64(7), **kw)
    np.testing.assert_array_equal(a.rho, b.rho)
    assert b.meta["seed"] == 7 and type(b.meta["seed"]) is int
    assert maps.reduced_map(0.1, 1e-3, 5, seed=np.random.default_rng(7), **kw).meta["seed"] is None
