"""Numerical extremes: closed forms at the edges of lr*wd, simulations that blow up.

Closed forms are compared with references evaluated independently in mpmath at
50 significant digits, for ``lr*wd`` from 1e-12 up to 0.99. The tolerance of each
comparison is ``1e-12`` relative, widened only by the condition number of the
function with respect to ``lr*wd`` (times a few float64 ulps): a formula cannot be
more accurate than its input ``lr*wd``, which is itself a rounded product.

Simulations driven past the representable range (a norm that underflows at an
exact minimum, a norm so small that its gradient overflows) must stop cleanly
with ``meta["status"]`` set and keep the finite rows before the stop.
"""

from __future__ import annotations

import json
import math
import re

import mpmath
import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from siflow.trajectory import FIELDS, STATUSES, Trajectory

mp = mpmath.mp
mp.dps = 50
EPS = 2.0**-52

# lr*wd values from the tiny to the nearly-unit edge; each is realised with two learning rates
X_GRID = (1e-12, 1e-9, 1e-6, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99)
LR_GRID = (1e-3, 0.1, 10.0)
EDGE_POINTS = [(lr, x / lr) for x in X_GRID for lr in LR_GRID]


def _ids(points):
    return [f"lr{lr:g}-wd{wd:.3g}" for lr, wd in points]


def _x(lr: float, wd: float) -> mpmath.mpf:
    """lr*wd exactly, from the float64 inputs."""
    return mp.mpf(lr) * mp.mpf(wd)


def _cond(ref_of_x, x: mpmath.mpf) -> float:
    """Relative condition number |x f'(x) / f(x)| of a reference as a function of lr*wd."""
    f = ref_of_x(x)
    if f == 0:
        return 1.0
    d = mp.diff(ref_of_x, x)
    return float(abs(x * d / f))


def _assert_close(got, ref: mpmath.mpf, cond: float = 1.0, what: str = "") -> None:
    got = float(np.asarray(got))
    assert math.isfinite(got), f"{what}: got {got!r}, expected {mpmath.nstr(ref, 17)}"
    tol = max(1e-12, 8 * EPS * cond)
    err = abs(mp.mpf(got) - ref) / abs(ref) if ref != 0 else abs(mp.mpf(got))
    assert err <= tol, (
        f"{what}: got {got!r}, mpmath reference {mpmath.nstr(ref, 20)}, "
        f"relative error {float(err):.3g} > tol {tol:.3g} (condition number {cond:.3g})"
    )


def _theory():
    from siflow import theory

    return theory


# --------------------------------------------------------------------------------------------
# closed forms of siflow.theory against mpmath at 50 digits
# --------------------------------------------------------------------------------------------
G = 0.37  # an arbitrary gradient norm on the sphere, not 1 so that G enters every formula
S = 123.0  # an arbitrary sphere sharpness


def _cases():
    """(name, call(theory, lr, wd), reference(lr, wd, x)) triples."""

    def eq_norm_exact(lr, wd, x):
        return (mp.mpf(lr) * mp.mpf(G) ** 2 / (mp.mpf(wd) * (2 - x))) ** mp.mpf(0.25)

    def eq_norm_fo(lr, wd, x):
        return (mp.mpf(lr) * mp.mpf(G) ** 2 / (2 * mp.mpf(wd))) ** mp.mpf(0.25)

    return [
        (
            "sgd_equilibrium_norm(exact=True)",
            lambda th, lr, wd: th.sgd_equilibrium_norm(lr, wd, G, exact=True),
            eq_norm_exact,
        ),
        (
            "sgd_equilibrium_norm(exact=False)",
            lambda th, lr, wd: th.sgd_equilibrium_norm(lr, wd, G, exact=False),
            eq_norm_fo,
        ),
        (
            "sgd_equilibrium_elr(exact=True)",
            lambda th, lr, wd: th.sgd_equilibrium_elr(lr, wd, G, exact=True),
            lambda lr, wd, x: mp.sqrt(x * (2 - x)) / mp.mpf(G),
        ),
        (
            "sgd_equilibrium_elr(exact=False)",
            lambda th, lr, wd: th.sgd_equilibrium_elr(lr, wd, G, exact=False),
            lambda lr, wd, x: mp.sqrt(2 * x) / mp.mpf(G),
        ),
        (
            "sgd_equilibrium_angle(exact=True)",
            lambda th, lr, wd: th.sgd_equilibrium_angle(lr, wd, exact=True),
            lambda lr, wd, x: mp.acos(1 - x),
        ),
        (
            "sgd_equilibrium_angle(exact=False)",
            lambda th, lr, wd: th.sgd_equilibrium_angle(lr, wd, exact=False),
            lambda lr, wd, x: mp.sqrt(2 * x),
        ),
        (
            "sgd_relaxation_factor",
            lambda th, lr, wd: th.sgd_relaxation_factor(lr, wd),
            lambda lr, wd, x: 1 - 4 * x + 2 * x**2,
        ),
        (
            # e-folding time of |deviation|: the factor turns negative (oscillating
            # approach) for lr*wd > 1 - 1/sqrt(2); the time constant uses its modulus
            "sgd_relaxation_time(exact=True)",
            lambda th, lr, wd: th.sgd_relaxation_time(lr, wd, exact=True),
            lambda lr, wd, x: -1 / mp.log(abs(1 - 4 * x + 2 * x**2)),
        ),
        (
            "sgd_relaxation_time(exact=False)",
            lambda th, lr, wd: th.sgd_relaxation_time(lr, wd, exact=False),
            lambda lr, wd, x: 1 / (4 * x),
        ),
        (
            "decay_factor(momentum=0)",
            lambda th, lr, wd: th.decay_factor(lr, wd, 0.0),
            lambda lr, wd, x: 1 - x,
        ),
        (
            "elr_doubling_time",
            lambda th, lr, wd: th.elr_doubling_time(lr, wd),
            lambda lr, wd, x: mp.log(2) / (-2 * mp.log(1 - x)),
        ),
        (
            "stability_threshold_elr",
            lambda th, lr, wd: th.stability_threshold_elr(lr, wd, S),
            lambda lr, wd, x: 2 * (1 - x) / mp.mpf(S),
        ),
        (
            "critical_norm",
            lambda th, lr, wd: th.critical_norm(lr, wd, S),
            lambda lr, wd, x: mp.sqrt(mp.mpf(lr) * mp.mpf(S) / (2 * (1 - x))),
        ),
        (
            "nullcline_grad_norm",
            lambda th, lr, wd: th.nullcline_grad_norm(lr, wd, 0.0123),
            lambda lr, wd, x: mp.sqrt(x * (2 - x)) / mp.mpf(0.0123),
        ),
        (
            "exponential_lr_alpha(momentum=0)",
            lambda th, lr, wd: th.exponential_lr_alpha(lr, wd, 0.0),
            lambda lr, wd, x: 1 - x,
        ),
        (
            "period_from_norm_ratio",
            lambda th, lr, wd: th.period_from_norm_ratio(lr, wd, 7.5),
            lambda lr, wd, x: mp.log(mp.mpf(7.5)) / (-mp.log(1 - x)),
        ),
        (
            "sgdm_equilibrium_norm(momentum=0) == SGD exact",
            lambda th, lr, wd: th.sgdm_equilibrium_norm(lr, wd, G, 0.0),
            eq_norm_exact,
        ),
    ]


CASES = _cases()


@pytest.mark.parametrize("lr,wd", EDGE_POINTS, ids=_ids(EDGE_POINTS))
@pytest.mark.parametrize("name,call,ref", CASES, ids=[c[0] for c in CASES])
def test_closed_form_matches_mpmath_at_edges(name, call, ref, lr, wd):
    th = _theory()
    x = _x(lr, wd)
    expected = ref(lr, wd, x)
    cond = _cond(lambda xx: ref(lr, wd, xx), x)
    _assert_close(call(th, lr, wd), expected, cond, f"{name} at lr={lr!r}, wd={wd!r}")


def _t_values(x: float) -> list[int]:
    return [0, 1, 10, min(int(round(1 / x)), 10**12), min(int(round(5 / x)), 10**13)]


@pytest.mark.parametrize("lr,wd", EDGE_POINTS, ids=_ids(EDGE_POINTS))
def test_zero_gradient_laws_match_mpmath_over_long_times(lr, wd):
    """rho0 (1-lr wd)^t and elr0 (1-lr wd)^(-2t) for t up to ~5/(lr wd) steps.

    A naive ``(1 - x)**t`` loses ~t*eps relative accuracy (1e-4 at x=1e-12,
    t=1e12); the stable form ``exp(t*log1p(-x))`` keeps ~1e-15.
    """
    th = _theory()
    x = _x(lr, wd)
    rho0, elr0 = 2.5, 0.02
    for t in _t_values(float(x)):
        ref_rho = mp.mpf(rho0) * (1 - x) ** t
        ref_elr = mp.mpf(elr0) * (1 - x) ** (-2 * t)
        # d log f / d log x = t x / (1 - x): the input rounding of x is amplified by it
        cond = max(1.0, float(t * x / (1 - x)))
        if ref_rho > mp.mpf("1e-300"):
            _assert_close(
                th.zero_grad_norm(t, rho0, lr, wd), ref_rho, cond, f"zero_grad_norm t={t}"
            )
        if ref_elr < mp.mpf("1e300"):
            _assert_close(
                th.zero_grad_elr(t, elr0, lr, wd), ref_elr, 2 * cond, f"zero_grad_elr t={t}"
            )
        ref_sched = mp.mpf(lr) * (1 - x) ** (-2 * t - 1)
        if ref_sched < mp.mpf("1e300"):
            _assert_close(
                th.exponential_lr_schedule(t, lr, wd, 0.0),
                ref_sched,
                2 * cond + 1,
                f"exponential_lr_schedule t={t}",
            )


MOMENTUM_POINTS = [
    (0.1, 1e-11, 0.9),
    (0.1, 1e-5, 0.9),
    (0.1, 1e-2, 0.9),  # lr*wd = 1e-3: still real roots for mu = 0.9
    (1.0, 0.05, 0.5),
    (1e-3, 1e-9, 0.99),
]


@pytest.mark.parametrize("lr,wd,mu", MOMENTUM_POINTS)
def test_heavy_ball_decay_factor_matches_mpmath(lr, wd, mu):
    """Larger root of a^2 - (1 + mu - lr wd) a + mu = 0 (real-root region)."""
    th = _theory()
    x = _x(lr, wd)
    m = mp.mpf(mu)
    b = 1 + m - x
    disc = b**2 - 4 * m
    assert disc > 0  # the points are chosen in the real-root region
    ref = (b + mp.sqrt(disc)) / 2
    _assert_close(th.decay_factor(lr, wd, mu), ref, 1e3, f"decay_factor mu={mu}")
    _assert_close(th.exponential_lr_alpha(lr, wd, mu), ref, 1e3, f"exponential_lr_alpha mu={mu}")


NESTEROV_POINTS = [
    (0.1, 1e-11, 0.9),
    (0.1, 1e-5, 0.9),
    (0.1, 2e-2, 0.9),  # lr*wd = 2e-3 < ((1 - mu)/(1 + mu))^2 = 2.8e-3: real roots
    (1.0, 0.05, 0.5),
    (1e-3, 1e-9, 0.99),
]


@pytest.mark.parametrize("lr,wd,mu", NESTEROV_POINTS)
def test_nesterov_decay_factor_and_rate_match_mpmath(lr, wd, mu):
    """Larger root of a^2 - (1 + mu)(1 - lr wd) a + mu (1 - lr wd) = 0, and -ln of it to
    full relative precision down to lr*wd = 1e-12 (where 1 - a ~ 1e-11)."""
    th = _theory()
    x = _x(lr, wd)
    m = mp.mpf(mu)
    b = (1 + m) * (1 - x)
    disc = b**2 - 4 * m * (1 - x)
    assert disc > 0  # the points are chosen in the real-root region
    ref = (b + mp.sqrt(disc)) / 2
    _assert_close(th.decay_factor(lr, wd, mu, nesterov=True), ref, 1e3, f"nesterov mu={mu}")
    _assert_close(th.decay_rate(lr, wd, mu, nesterov=True), -mp.log(ref), 1e3, f"rate mu={mu}")


@pytest.mark.parametrize("lr,wd", EDGE_POINTS, ids=_ids(EDGE_POINTS))
def test_every_closed_form_is_finite_on_valid_edges(lr, wd):
    """Every public closed form returns finite values on valid inputs at the edges."""
    th = _theory()
    values = {
        "sgdm_equilibrium_norm": th.sgdm_equilibrium_norm(lr, wd, G, 0.9),
        "sgdm_equilibrium_angle": th.sgdm_equilibrium_angle(lr, wd, 0.9),
        "adamw_equilibrium_angle": th.adamw_equilibrium_angle(lr, wd),
        "adamw_equilibrium_norm": th.adamw_equilibrium_norm(lr, wd, 1000),
        "lion_equilibrium_angle": th.lion_equilibrium_angle(lr, wd),
        "decay_factor(momentum=0.9)": th.decay_factor(lr, wd, 0.9),
    }
    eq = th.equilibrium(lr, wd, G, 0.0)
    values.update({f"equilibrium[{k}]": v for k, v in eq.items() if k != "optimizer"})
    bad = {k: v for k, v in values.items() if not np.all(np.isfinite(np.asarray(v, dtype=float)))}
    assert not bad, f"non-finite closed forms at lr={lr}, wd={wd}: {bad}"
    f = float(np.asarray(values["decay_factor(momentum=0.9)"]))
    assert 0.0 < f < 1.0, f"decay_factor(momentum=0.9) = {f} is not a contraction factor"


def test_closed_forms_vectorise_like_scalar_calls_over_the_edge_grid():
    """One broadcast call over every edge point equals the scalar calls, element by element."""
    th = _theory()
    lr = np.array([p[0] for p in EDGE_POINTS])
    wd = np.array([p[1] for p in EDGE_POINTS])
    for name, call, _ in CASES:
        vec = np.asarray(call(th, lr, wd), dtype=float)
        assert vec.shape == lr.shape, f"{name}: shape {vec.shape}, expected {lr.shape}"
        scal = np.array([float(np.asarray(call(th, a, b))) for a, b in zip(lr, wd, strict=True)])
        np.testing.assert_allclose(vec, scal, rtol=1e-14, atol=0, err_msg=name)


# --------------------------------------------------------------------------------------------
# simulations driven over the edge
# --------------------------------------------------------------------------------------------
def _finite_rows(traj) -> np.ndarray:
    cols = [getattr(traj, f) for f in FIELDS if getattr(traj, f) is not None]
    ok = np.ones(len(traj), dtype=bool)
    for c in cols:
        ok &= np.isfinite(c)
    return ok


def _simulate(*args, **kw):
    from siflow.simulate import simulate

    return simulate(*args, **kw)


def _check_clean_stop(traj, steps: int, status: str) -> None:
    assert traj.status == status, f"status {traj.status!r}, expected {status!r}"
    assert 0 < len(traj) < steps, f"{len(traj)} rows kept of {steps}"
    assert traj.meta["steps_done"] == len(traj)
    np.testing.assert_array_equal(traj.step, np.arange(len(traj)))
    bad = np.flatnonzero(~_finite_rows(traj))
    assert bad.size == 0, f"non-finite values kept at rows {bad[:5]}"


@pytest.mark.parametrize("loss", ["flat", "rayleigh-at-minimum"])
def test_norm_underflow_stops_cleanly_and_keeps_the_exact_decay(loss):
    """Zero gradient and lr*wd = 0.5: rho halves every step until it underflows."""
    lr, wd, steps = 0.5, 1.0, 5000
    if loss == "flat":
        traj = _simulate("flat", lr=lr, wd=wd, steps=steps, rho0=1.0, seed=1)
    else:  # the exact minimizer e_0 of the default Rayleigh spectrum: the gradient is 0
        traj = _simulate("rayleigh", lr=lr, wd=wd, steps=steps, w0=np.eye(10)[0], seed=1)
    _check_clean_stop(traj, steps, "underflow")
    # every kept row is the exact zero-gradient law rho0 (1 - lr wd)^t
    expected = traj.rho[0] * 0.5 ** traj.step.astype(float)
    np.testing.assert_allclose(traj.rho, expected, rtol=1e-14)
    assert traj.rho[-1] < 1e-100


def test_norm_overflow_stops_cleanly_as_diverged():
    """A tiny norm under a large step: |w_1| ~ lr G / |w_0| = 1e151 overflows rho^2 soon."""
    traj = _simulate("spiral", lr=100.0, wd=1e-4, steps=50, rho0=1e-149, seed=0)
    _check_clean_stop(traj, 50, "diverged")
    assert traj.rho[0] == pytest.approx(1e-149, rel=1e-12)


@pytest.mark.parametrize(
    ("w0", "norm"),
    [([1e-200, 1e-200, 1e-200], "1.73205e-200"), ([1e300, 1e300, 0.0], "1.41421e+300")],
    ids=["squares-underflow", "squares-overflow"],
)
def test_a_starting_point_outside_the_range_is_named_by_its_true_norm(w0, norm):
    # the squares of w0 underflow (or overflow) although |w0| itself is a float: the
    # plain norm gave 0 ("w0 must be nonzero") and inf
    with pytest.raises(ValueError, match=rf"^\|w0\| = {re.escape(norm)} is outside"):
        _simulate("rayleigh", lr=0.1, wd=1e-3, steps=5, w0=w0, dim=3)


def test_loss_overflow_stops_cleanly_as_diverged():
    """A huge quartic term: the loss overflows to inf a few steps in."""
    traj = _simulate(
        "rayleigh",
        lr=1.0,
        wd=1e-3,
        steps=1000,
        w0=[1.0, 1e-60],
        loss_options={"spectrum": [0.0, 1e100], "quartic": 1e100},
    )
    _check_clean_stop(traj, 1000, "diverged")


def test_underflow_from_the_cli_writes_the_rows_before_the_stop(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "siflow.simulate", "--loss", "flat", "--lr", "0.5", "--wd", "1",
         "--steps", "3000", "--out", "run", "--json", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, f"a clean run printed warnings:\n{proc.stderr}"
    summary = _strict_json(proc.stdout)
    assert summary["status"] == "underflow"
    traj = Trajectory.load(tmp_path / "run" / "trajectory.npz")
    _check_clean_stop(traj, 3000, "underflow")
    assert summary["steps_done"] == len(traj)
    # the overlay reads that file (lr and wd from its metadata) and reports in strict JSON
    over = subprocess.run(
        [sys.executable, "-m", "siflow.overlay", "run/trajectory.npz", "--json",
         "--out", "run/overlay.png"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert "Traceback" not in over.stderr, over.stderr
    assert over.returncode == 0, over.stderr
    assert "Warning" not in over.stderr, f"a clean run printed warnings:\n{over.stderr}"
    result = _strict_json(over.stdout)
    assert result["lr"] == 0.5 and result["wd"] == 1.0
    assert (tmp_path / "run" / "overlay.png").is_file()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: failures print their inputs
)
@example("rayleigh", "fixed_elr", 1.0, 0.1, 1e104, 0.0, 0.0)  # found: NaN angle kept in row 0
@example("rayleigh", "fixed_elr", 1.0, 0.1, 1e52, 0.0, 0.0)  # found: ZeroDivisionError
@given(
    loss=st.sampled_from(["rayleigh", "logistic", "spiral", "flat"]),
    optimizer=st.sampled_from(["sgd", "sgd", "nesterov", "adamw", "fixed_norm", "fixed_elr"]),
    lr=st.floats(-3, 3).map(lambda e: 10.0**e),
    x=st.floats(-12, math.log10(0.99)).map(lambda e: 10.0**e),
    rho0=st.floats(-140, 140).map(lambda e: 10.0**e),
    noise=st.sampled_from([0.0, 1.0, 1e100]),
    momentum=st.sampled_from([0.0, 0.9, 0.999]),
)
def test_any_valid_extreme_run_ends_with_a_status_and_finite_rows(
    loss, optimizer, lr, x, rho0, noise, momentum
):
    """Whatever the (valid) extreme, simulate returns; ``ok`` means every row is finite."""
    if optimizer in ("adamw", "fixed_norm", "fixed_elr"):
        momentum = 0.0 if optimizer != "adamw" else momentum
    kw = dict(lr=lr, wd=x / lr, steps=300, rho0=rho0, noise=noise, seed=0)
    if optimizer != "adamw":
        kw["momentum"] = momentum
    if optimizer == "nesterov":
        kw["momentum"] = momentum or 0.9
    traj = _simulate(loss, optimizer, **kw)
    assert traj.status in STATUSES
    ok = _finite_rows(traj)
    assert ok.all(), f"status {traj.status!r} with non-finite rows {np.flatnonzero(~ok)[:5]}"
    if traj.status == "ok":
        assert len(traj) == 300
    else:
        assert len(traj) < 300 and traj.meta["steps_done"] == len(traj)


# --------------------------------------------------------------------------------------------
# command lines at the edges: finite numbers, strict JSON
# --------------------------------------------------------------------------------------------
def _strict_json(text: str):
    """json.loads that rejects NaN and Infinity (not JSON; most other parsers refuse them)."""

    def bad(token):
        raise AssertionError(f"non-standard JSON constant {token} in CLI output")

    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("lr,wd", [(1e-6, 1e-6), (0.1, 9.9), (1.0, 0.5)])
@pytest.mark.parametrize("momentum", ["0", "0.9"])
def test_theory_cli_json_at_the_edges_matches_the_library(lr, wd, momentum):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "siflow.theory", "--lr", repr(lr), "--wd", repr(wd),
         "--grad-norm", "0.37", "--momentum", momentum, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = _strict_json(proc.stdout)
    ref = _theory().equilibrium(lr, wd, 0.37, float(momentum))
    assert set(got) == set(ref)
    for key, value in ref.items():
        if value is None or isinstance(value, str):
            assert got[key] == value, key
        else:
            assert got[key] == float(value), (key, got[key], value)  # same bits through JSON


def test_a_sweep_across_the_edges_completes_with_a_row_per_cell(tmp_path):
    """lr*wd from 1e-12 to 0.9 and huge effective LRs: every cell gets a row, none crashes."""
    from siflow.sweep import REGIMES, load, sweep

    res = sweep(
        "rayleigh",
        lr=[1e-6, 1.0, 300.0],
        wd=[1e-6, 3e-3],
        momentum=[0.0, 0.9],
        seeds=[0],
        steps=3000,
        out=tmp_path / "sw",
        workers=1,
        noise=0.01,
    )
    assert len(res.rows) == 12
    for row in res.rows:
        assert row["status"] in STATUSES, row
        assert row["regime"] in REGIMES, row
        assert 0 < row["steps_run"] <= 3000
    again = load(tmp_path / "sw")
    assert json.dumps(again.rows, sort_keys=True) == json.dumps(res.rows, sort_keys=True)
    text = (tmp_path / "sw" / "table.csv").read_text()
    assert text.count("\n") == 13
    # pure weight decay at lr*wd = 0.9: the norm underflows; the cell records it
    flat = sweep("flat", lr=[1.0, 300.0], wd=[1e-6, 3e-3], steps=3000, workers=1)
    by_x = {round(r["lr"] * r["wd"], 12): r for r in flat.rows}
    assert by_x[0.9]["status"] == "underflow" and by_x[0.9]["steps_run"] < 3000
    assert by_x[1e-06]["status"] == "ok" and by_x[1e-06]["steps_run"] == 3000


@pytest.mark.parametrize("dim", [math.inf, 2.5, "3"])
def test_a_dimension_that_is_not_a_whole_number_is_named(dim):
    # dim=inf raised OverflowError from the memory estimate
    for call in (_simulate, estimate_run):
        with pytest.raises(ValueError, match=r"^dim must be an integer"):
            call("rayleigh", lr=0.1, wd=1e-3, steps=5, dim=dim)


def estimate_run(loss, *, lr, wd, steps, dim):
    from siflow.simulate import estimate

    return estimate(loss, steps=steps, dim=dim)
