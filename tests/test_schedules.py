"""Schedule specs against PyTorch's own schedulers and hand values; schedule theory vs the map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from siflow import theory
from siflow.schedules import parse_schedule


def test_cosine_after_warmup_matches_torch_cosine_annealing() -> None:
    torch = pytest.importorskip("torch")
    sched = parse_schedule("cosine:peak=0.5,warmup=10,min=0.005,steps=110")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=0.005)
    want = []
    for _ in range(100):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    np.testing.assert_allclose(sched(np.arange(10, 110)), want, rtol=1e-12)
    np.testing.assert_allclose(sched(np.arange(10)), 0.5 * np.arange(1, 11) / 10, rtol=1e-15)
    assert sched(np.array([110, 500])).tolist() == [0.005, 0.005]


def test_step_and_exp_match_torch() -> None:
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    for spec, make in [
        ("step:peak=0.1,gamma=0.1,milestones=30/70",
         lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [30, 70], 0.1)),
        ("exp:peak=0.1,gamma=0.97", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.97)),
    ]:  # fmt: skip
        opt = torch.optim.SGD([p], lr=0.1)
        ref = make(opt)
        want = []
        for _ in range(100):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            ref.step()
        np.testing.assert_allclose(parse_schedule(spec).values(100), want, rtol=1e-12)


def test_linear_and_constant_by_hand() -> None:
    lin = parse_schedule("linear:warmup=0,min=0,steps=4", base=0.8)
    np.testing.assert_allclose(lin.values(6), [0.8, 0.6, 0.4, 0.2, 0.0, 0.0], rtol=1e-15, atol=0)
    const = parse_schedule("constant", base=0.3)
    assert const.is_constant and const.values(3).tolist() == [0.3, 0.3, 0.3]
    assert parse_schedule(const.spec) == const
    assert not parse_schedule("cosine:peak=1,steps=10").is_constant


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("sawtooth:peak=1", "unknown schedule kind"),
        ("cosine:peak=1", "needs steps"),
        ("cosine:peak=x,steps=10", "not a number"),
        ("step:peak=1,gamma=0.1,milestones=a/b", "write it as milestones=5000/8000"),
        ("cosine:peak=1,steps=1e", "write it as steps=20000"),
        ("cosine:peak=1,steps=10,warmup=20", "above warmup"),
        ("step:peak=1,gamma=0.1,milestones=20/10", "increasing"),
        ("cosine:steps=10", "needs peak"),
        ("exp:peak=1,gama=0.1", "takes peak, gamma"),
        ("cosine:peak=1,peak=2,steps=10", "peak is given twice"),  # the last one won
    ],
)
def test_bad_specs_name_the_fix(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_schedule(spec)


def test_norm_trajectory_is_the_exact_map_of_explicit_sgd_on_an_si_loss() -> None:
    # SGD + WD on L(w) = f(w/|w|) with a rotating direction: only |grad| enters the norm
    rng = np.random.default_rng(1)
    steps = 300
    lr = parse_schedule("cosine:peak=0.5,warmup=30,min=0.01,steps=300").values(steps)
    wd = np.full(steps, 5e-3)
    w = rng.normal(size=20)
    rho0 = float(np.linalg.norm(w))
    g_sphere = np.empty(steps)
    norms = [rho0]
    for t in range(steps):
        u = rng.normal(size=20)
        u -= (u @ w) / (w @ w) * w  # tangent gradient, |grad| = g~/|w|
        grad = u / np.linalg.norm(u) * (0.3 + 0.1 * math.sin(t)) / np.linalg.norm(w)
        g_sphere[t] = np.linalg.norm(grad) * np.linalg.norm(w)
        w = (1 - lr[t] * wd[t]) * w - lr[t] * grad
        norms.append(float(np.linalg.norm(w)))
    replay = theory.sgd_norm_trajectory(rho0, lr, wd, g_sphere)
    np.testing.assert_allclose(replay, norms, rtol=1e-12)


def test_weight_decay_integral_and_timescales_by_hand() -> None:
    kappa = theory.weight_decay_integral([0.1, 0.2, 0.3], 0.01)
    np.testing.assert_allclose(kappa, [0.0, 0.001, 0.003, 0.006], rtol=1e-15)
    tau = theory.weight_decay_timescale(1e-3, 0.1, steps_per_epoch=50)
    assert tau["tau_iter"] == pytest.approx(1e4) and tau["tau_epoch"] == pytest.approx(200.0)
