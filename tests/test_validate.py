"""The shared argument checks: scalars and arrays give the same answers and messages."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from siflow import maps, theory
from siflow._validate import (
    check_finite,
    check_lr_wd,
    check_momentum,
    check_nonnegative,
    check_positive,
    check_steps,
)
from siflow.forecast import forecast_next_event
from siflow.periods import find_events
from siflow.simulate import simulate
from siflow.sweep import sweep

#: a periodic norm log (bursts of the gradient every 500 steps) for the forecast and detector
_LOG = maps.norm_map(0.1, 0.01, 3000, rho0=1.0, grad_norm=lambda s: 25.0 * (s % 500 < 5) + 0.01)

CHECKS = {
    "finite": lambda v: check_finite("x", v),
    "positive": lambda v: check_positive("x", v),
    "nonnegative": lambda v: check_nonnegative("x", v),
    "momentum": lambda v: check_momentum(v, name="x"),
    "lr": lambda v: check_lr_wd(v, 0.5),
    "wd": lambda v: check_lr_wd(0.5, v, wd_positive=False),
}
VALUES = [0.3, 0.0, -0.25, 1.0, 1.5, 3, 0, -2, math.nan, math.inf, -math.inf, 1e308, 5e-324]


def _outcome(call, value):
    try:
        out = call(value)
    except ValueError as exc:
        return "error", str(exc)
    arrays = out if isinstance(out, tuple) else (out,)
    return "ok", [(a.dtype, a.shape, float(a)) for a in arrays]


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_plain_number_and_a_numpy_scalar_get_the_same_answer(check, value):
    # plain floats and ints take a path without numpy reductions; a 0-d array does not
    call = CHECKS[check]
    assert _outcome(call, value) == _outcome(call, np.asarray(value, dtype=np.float64))


def test_the_answers_of_the_checks_themselves():
    assert float(check_positive("x", 2)) == 2.0 and check_positive("x", 2).dtype == np.float64
    with pytest.raises(ValueError, match=re.escape("x must be finite, got nan; pass a finite")):
        check_finite("x", math.nan)
    with pytest.raises(ValueError, match=re.escape("x must be > 0, got 0.0; pass a positive")):
        check_positive("x", 0)
    with pytest.raises(ValueError, match=re.escape("momentum must be in [0, 1), got 1.0")):
        check_momentum(1)
    with pytest.raises(ValueError, match=re.escape("lr*wd must be < 1")):
        check_lr_wd(2.0, 0.5)
    lr, wd = check_lr_wd(0.1, 0, wd_positive=False)  # wd may be 0 where allowed
    assert float(lr) == 0.1
    with pytest.raises(ValueError, match="wd must be > 0"):
        check_lr_wd(0.1, 0)
    # text and booleans are not numbers (numpy would read "0.1" as 0.1 and True as 1.0)
    for bad in (True, np.bool_(False), "0.1", b"1", ["0.1", 2], np.array([True])):
        with pytest.raises(ValueError, match="x must be a number or an array of numbers"):
            check_finite("x", bad)
    assert float(check_finite("x", np.float32(0.5))) == 0.5
    assert check_finite("x", [1, 2.5]).tolist() == [1.0, 2.5]


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_finite("lr", 10**400),
        lambda: check_positive("lr", np.array(10**400, dtype=object)),
        lambda: theory.decay_rate(10**400, 1e-3),
        lambda: theory.equilibrium(0.1, 1e-3, 10**400),
    ],
)
def test_an_integer_beyond_the_float_range_is_one_clear_error(call):
    # numpy raises OverflowError converting it; the checks name the parameter instead
    with pytest.raises(ValueError, match=r"beyond the float64 range; pass a finite number"):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_steps("steps", 2**53), None),
        (lambda: check_steps("steps", 2**53 + 1), r"steps must be at most 2\*\*53"),
        (lambda: check_steps("record_every", 10**400), r"got 1\.000e\+400; pass a smaller record"),
    ],
)
def test_step_counts_have_an_upper_bound(call, message):
    if message is None:
        assert call() == 2**53
    else:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize(
    "call",
    [
        # each of these raised OverflowError from numpy or int64 arithmetic
        lambda: simulate(lr=0.1, wd=1e-3, steps=10**30),
        lambda: simulate(lr=0.1, wd=1e-3, steps=10, record_every=10**400),
        lambda: simulate(lr=10**400, wd=1e-3, steps=10),
        lambda: sweep("logistic", lr=[0.1], wd=[1e-3], steps=10**30),
        lambda: maps.norm_map(0.1, 0.01, 10**30, rho0=1.0, grad_norm=0.5, record_every=10**29),
        lambda: maps.norm_map(0.1, 0.01, 10, rho0=1.0, grad_norm=0.5, start_step=10**400),
        lambda: maps.norm_map(0.1, 0.01, 10, rho0=1.0, grad_norm=0.5, record_every=10**400),
        lambda: find_events(_LOG, lr=10**400, wd=0.01),
        lambda: forecast_next_event(_LOG, lr=10**400, wd=0.01),
        lambda: forecast_next_event(_LOG, lr=0.1, wd=0.01, blend=10**400),
        lambda: theory.sgd_norm_trajectory(0.1, 0.01, 1.0, 10**400),
    ],
)
def test_counts_and_numbers_beyond_the_ranges_are_one_clear_error(call):
    with pytest.raises(ValueError, match=r"at most 2\*\*53|beyond (the float64 range|it)"):
        call()


def test_a_norm_map_at_the_last_int64_steps_no_longer_misplaces_its_rows():
    # 2**63 + 5 steps kept every 2**62: np.arange overflowed int64 and the columns came out
    # longer than the step column
    with pytest.raises(ValueError, match=r"must be at most 2\*\*53"):
        maps.norm_map(0.1, 0.01, 2**63 + 5, rho0=1.0, grad_norm=0.5, record_every=2**62)


# ------------------------------------------------- parameters that take one number
def _toy():
    from siflow.losses import rayleigh

    return rayleigh(3)


ONE_NUMBER = {
    # public function with a one-number parameter given as a list -> the parameter named
    "simulate(momentum=)": (
        lambda v: simulate(_toy(), lr=0.1, wd=1e-3, steps=5, momentum=v, progress=False),
        "momentum",
    ),
    "norm_map(rho0=)": (lambda v: maps.norm_map(0.1, 1e-3, 5, rho0=v), "rho0"),
    "reduced_map(sharpness=)": (lambda v: maps.reduced_map(1.0, 0.01, 5, sharpness=v), "sharpness"),
    "predict_period(lr)": (
        lambda v: __import__("siflow.predict").predict.predict_period(v, 0.01, sharpness=1.0),
        "lr",
    ),
    "find_events(min_rise=)": (lambda v: find_events(_LOG, min_rise=v), "min_rise"),
    "forecast_next_event(momentum=)": (lambda v: forecast_next_event(_LOG, momentum=v), "momentum"),
    "overlay.analyze(momentum=)": (
        lambda v: __import__("siflow.overlay").overlay.analyze(_LOG, momentum=v),
        "momentum",
    ),
    "overlay.analyze(predict_momentum=)": (
        lambda v: __import__("siflow.overlay").overlay.analyze(_LOG, predict_momentum=v),
        "predict_momentum",
    ),
    "theory.equilibrium_instability_lr_wd(sharpness=)": (
        lambda v: theory.equilibrium_instability_lr_wd(1.0, v),
        "sharpness",
    ),
    "ode.norm_flow(rho0=)": (
        lambda v: __import__("siflow.ode").ode.norm_flow([0.0, 1.0], v, lr=0.1, wd=1e-3),
        "rho0",
    ),
}


@pytest.mark.parametrize("case", sorted(ONE_NUMBER))
@pytest.mark.parametrize("value", [[0.5], np.array([0.5, 0.6])])
def test_a_list_for_one_number_names_the_parameter(case, value):
    call, name = ONE_NUMBER[case]
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be one number, got an array"):
        call(value)
    call(0.5)  # the same parameter as one number runs


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: theory.effective_lr(1 + 1j, 2.0), r"^lr must be a number or an array of numbers"),
        (lambda: theory.log_effective_lr(0.1, "abc"), r"^rho must be a number"),
        (lambda: theory.sphere_grad_norm(10**400, 1.0), r"^rho = 1\.000e\+400 is beyond"),
        (lambda: theory.sgd_step_angle(0.1, 1e-3, 0.1, 10**400), r"^grad_norm = 1\.000e\+400"),
        (lambda: theory.sgd_norm_step(1.0, 0.1, "x", 1.0), r"^wd must be a number"),
        (lambda: theory.total_angular_update([[0.1], [0.2]], "x"), r"^norms must be a number"),
        (
            lambda: __import__("siflow.predict").predict.threshold_elr([0.1], 1e-3, 1.0),
            r"^lr must be one number",
        ),
        (
            lambda: __import__("siflow.predict").predict.escape_integral("abc", 0.1, 1e-3),
            r"^y must be a number",
        ),
        (
            lambda: __import__("siflow.overlay").overlay.predict_period_at(
                [300.0], 0.1, 1e-3, 0.2, 1e-3
            ),
            r"^period must be one number",
        ),
    ],
)
def test_exact_formulas_name_a_value_that_is_not_a_number(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_exact_formulas_still_take_log_values_unchecked():
    # logs carry NaN rows and zeros: these formulas pass them through (not validated)
    with np.errstate(divide="ignore"):
        out = theory.effective_lr(0.1, np.array([0.0, np.nan, 2.0]))
    assert out[0] == math.inf and math.isnan(out[1]) and out[2] == 0.025
    assert math.isnan(theory.sphere_grad_norm(math.nan, 1.0))


def _predict():
    return __import__("siflow.predict").predict


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: maps.reduced_map(1.0, 0.01, 5, sharpness=1.0, record_every=10**400),
            "^record_every",
        ),
        (
            lambda: _predict().predict_period(0.1, 0.01, sharpness=1.0, seed=np.array([[1]])),
            "^seed",
        ),
        (
            lambda: _predict().predict_period(0.1, 0.01, sharpness=1.0, min_events=None),
            "^min_events",
        ),
        (
            lambda: _predict().predict_period(0.1, 0.01, sharpness=1.0, max_steps=1 + 1j),
            "^max_steps",
        ),
        (lambda: _predict().cycle_constants(_LOG, sharpness=1.0, skip=-1), "^skip must be >= 0"),
        (
            lambda: _predict().cycle_constants(_LOG, sharpness=1.0, skip=None),
            "^skip must be an integer",
        ),
    ],
)
def test_counts_and_seeds_of_the_wrong_kind_are_named(call, message):
    # before: OverflowError, or TypeError from int(), a slice or a cache key
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: __import__("siflow.losses").losses.rayleigh(3, sharpness=[2.0]), "^sharpness"),
        (lambda: __import__("siflow.losses").losses.logistic(seed=1.5), "^seed must be a whole"),
        (lambda: __import__("siflow.losses").losses.logistic(seed="abc"), "^seed must be a whole"),
        (lambda: __import__("siflow.ode").ode.damping_regime(0.1, 1e-3, 0.9, rtol="x"), "^rtol"),
    ],
)
def test_toy_and_oscillator_arguments_of_the_wrong_kind_are_named(call, message):
    # before: TypeError from float(), numpy's SeedSequence, or an arithmetic operator
    with pytest.raises(ValueError, match=message):
        call()


def test_a_seed_sequence_of_whole_numbers_still_seeds_the_logistic_toy():
    from siflow.losses import logistic

    a, b = logistic(dim=3, n_samples=8, seed=[1, 2]), logistic(dim=3, n_samples=8, seed=[1, 2])
    np.testing.assert_array_equal(a.data, b.data)


def _ode():
    return __import__("siflow.ode").ode


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _ode().norm_flow([0.0, 1.0], 1.0, lr=0.1, wd=1e-3, rtol="x"), "^rtol"),
        (lambda: _ode().norm_flow([0.0, 1.0], 1.0, lr=0.1, wd=1e-3, atol=None), "^atol"),
        (
            lambda: _ode().norm_flow([[0.0, 1.0]], 1.0, lr=0.1, wd=1e-3),
            "^t must be a time or a 1-D",
        ),
        (
            lambda: _ode().sde_norm([0.0, 1.0], 1.0, lr=0.1, wd=1e-3, noise=0.1, dim=10**30),
            "^dim must be at most 2",
        ),
    ],
)
def test_ode_tolerances_times_and_sizes_of_the_wrong_kind_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
