"""The equilibrium norms stay finite wherever the true value is.

``(lr / denom) ** 0.25`` formed ``lr/wd`` before the root: at ``lr = 1e300, wd = 1e-301``
(``lr*wd = 0.1``) the quotient overflows although ``rho* ~ 1.5e150``. References: 60-digit
mpmath at the extremes, the exact norm map iterated at normal inputs, and the plain
expression (the old bits) in the normal range.
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest

from siflow import theory

#: (lr, wd) pairs whose quotient lr/wd leaves the float range (or comes near its edge)
#: while lr*wd is an ordinary 0.1, 0.5 or 0.01.
EXTREME = [(1e300, 1e-301), (1e154, 1e-155), (1e-300, 1e299), (5e-324, 2e307), (1e308, 5e-309)]


def _mp_sgd(lr: float, wd: float, g: float, exact: bool) -> mpmath.mpf:
    lr_, wd_ = mpmath.mpf(lr), mpmath.mpf(wd)
    denom = wd_ * (2 - lr_ * wd_) if exact else 2 * wd_
    return mpmath.sqrt(mpmath.mpf(g)) * (lr_ / denom) ** mpmath.mpf("0.25")


def _mp_sgdm(lr: float, wd: float, g: float, mu: float, nesterov: bool) -> mpmath.mpf:
    lr_, wd_, mu_ = mpmath.mpf(lr), mpmath.mpf(wd), mpmath.mpf(mu)
    x = lr_ * wd_
    if nesterov:
        num = 1 + mu_ + x * mu_ * (1 + 2 * mu_)
        denom = wd_ * (1 - mu_ + x * mu_) * (2 * (1 + mu_) - x * (1 + 2 * mu_)) / num
    else:
        denom = wd_ * (1 - mu_) * (2 - x / (1 + mu_))
    return mpmath.sqrt(mpmath.mpf(g)) * (lr_ / denom) ** mpmath.mpf("0.25")


def _mp_adamw(lr: float, wd: float, c: float, b1: float) -> mpmath.mpf:
    lr_, wd_, b1_ = mpmath.mpf(lr), mpmath.mpf(wd), mpmath.mpf(b1)
    x = lr_ * wd_
    q = 1 - x
    r2 = lr_ * c * (1 - b1_) * (1 + b1_ * q) / (wd_ * (2 - x) * (1 + b1_) * (1 - b1_ * q))
    return mpmath.sqrt(r2)


def _close(got: float, want: mpmath.mpf, rel: float = 4e-16) -> bool:
    return math.isfinite(got) and abs(mpmath.mpf(got) / want - 1) <= rel


@pytest.mark.parametrize(("lr", "wd"), EXTREME)
@pytest.mark.parametrize("exact", [True, False])
def test_sgd_norm_is_finite_and_right_where_lr_over_wd_leaves_the_float_range(lr, wd, exact):
    mpmath.mp.dps = 60
    for g in (1.0, 1e-200, 1e200):
        want = _mp_sgd(lr, wd, g, exact)
        got = float(theory.sgd_equilibrium_norm(lr, wd, g, exact=exact))
        assert _close(got, want), (lr, wd, g, got, want)


@pytest.mark.parametrize(("lr", "wd"), EXTREME)
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_norm_is_finite_and_right_at_the_extremes(lr, wd, nesterov):
    mpmath.mp.dps = 60
    for mu in (0.0, 0.9, 0.999):
        want = _mp_sgdm(lr, wd, 1.0, mu, nesterov)
        got = float(theory.sgdm_equilibrium_norm(lr, wd, 1.0, mu, nesterov=nesterov))
        assert _close(got, want), (lr, wd, mu, got, want)


@pytest.mark.parametrize(("lr", "wd"), EXTREME[:3])  # rho* ~ sqrt(lr/wd): in range for these
def test_adamw_norm_is_finite_and_right_at_the_extremes(lr, wd):
    mpmath.mp.dps = 60
    for c, b1 in ((1000.0, 0.9), (1.0, 0.0)):
        want = _mp_adamw(lr, wd, c, b1)
        got = float(theory.adamw_equilibrium_norm(lr, wd, c, b1))
        assert _close(got, want), (lr, wd, c, got, want)


def test_lion_norm_scales_with_lr_at_fixed_lr_wd():
    # rho*^2 = lr^2 C (1 + 2 S(lr wd)) / (x (2 - x)): at a fixed x = lr*wd the norm is
    # proportional to lr, so (1e300, 1e-301) is 1e300 times (1, 0.1)
    base = float(theory.lion_equilibrium_norm(1.0, 0.1, 1000.0))
    for k in (1e300, 1e-300, 1e150):
        got = float(theory.lion_equilibrium_norm(k, 0.1 / k, 1000.0))
        assert got == pytest.approx(base * k, rel=1e-14)


def test_the_command_line_prints_the_finite_norm(capsys):
    from siflow._theory_cli import main

    assert main(["--lr", "1e300", "--wd", "1e-301", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    mpmath.mp.dps = 60
    assert _close(d["norm"], _mp_sgd(1e300, 1e-301, 1.0, True))
    assert _close(d["norm_first_order"], _mp_sgd(1e300, 1e-301, 1.0, False))


def _norm_map_fixed_point(lr: float, wd: float, g: float) -> float:
    """Iterate ``rho^2 <- (1 - lr wd)^2 rho^2 + lr^2 g^2 / rho^2`` to its fixed point."""
    r2 = 1.0
    q2 = (1.0 - lr * wd) ** 2
    for _ in range(200_000):
        new = q2 * r2 + (lr * g) ** 2 / r2
        if new == r2:
            break
        r2 = new
    return math.sqrt(r2)


@pytest.mark.parametrize(("lr", "wd", "g"), [(0.1, 1e-3, 1.0), (0.5, 0.2, 3.0), (2.0, 0.05, 0.1)])
def test_sgd_norm_is_the_fixed_point_of_the_exact_norm_map(lr, wd, g):
    want = _norm_map_fixed_point(lr, wd, g)
    assert float(theory.sgd_equilibrium_norm(lr, wd, g)) == pytest.approx(want, rel=1e-12)


def test_normal_range_values_are_the_plain_expression_bit_for_bit():
    rng = np.random.default_rng(7)
    lr = 10 ** rng.uniform(-8, 2, 500)
    wd = 10 ** rng.uniform(-12, -0.01, 500) / lr
    mu = rng.uniform(0.0, 0.999, 500)
    plain = (lr / (wd * (2.0 - lr * wd))) ** 0.25
    assert np.array_equal(theory.sgd_equilibrium_norm(lr, wd, 1.0), plain)
    x = lr * wd
    plain_m = (lr / (wd * (1.0 - mu) * (2.0 - x / (1.0 + mu)))) ** 0.25
    assert np.array_equal(theory.sgdm_equilibrium_norm(lr, wd, 1.0, mu), plain_m)
    for a, b in zip(lr[:50], wd[:50], strict=True):  # scalar calls: the same values
        assert theory.sgd_equilibrium_norm(a, b, 1.0) == (a / (b * (2.0 - a * b))) ** 0.25
