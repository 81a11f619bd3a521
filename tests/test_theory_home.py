"""The per-step laws and the optimizer front door of siflow.theory, checked by a second method."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from siflow import theory


@pytest.mark.parametrize("x", [1e-300, 1e-16, 1e-12, 1e-6, 1e-2, 0.5, 0.99])
def test_decay_rate_matches_50_digit_log1p(x: float) -> None:
    mpmath.mp.dps = 50
    exact = -mpmath.log1p(-mpmath.mpf(x))
    got = theory.decay_rate(x, 1.0)
    assert abs(got - float(exact)) <= 1e-14 * float(exact)


def test_decay_rate_is_minus_log_of_the_decay_factor_with_momentum() -> None:
    lr, wd = np.array([0.1, 0.5, 1.0]), np.array([1e-3, 1e-2, 5e-4])
    for mu in (0.0, 0.5, 0.9):
        q = theory.decay_factor(lr, wd, mu)
        np.testing.assert_allclose(theory.decay_rate(lr, wd, mu), -np.log(q), rtol=1e-12)


def test_zero_gradient_heavy_ball_norm_decays_at_decay_rate() -> None:
    lr, wd, mu = 0.1, 1e-2, 0.9
    w, v = 1.0, 0.0
    for _ in range(4000):
        v = mu * v + wd * w
        w = w - lr * v
    w2, v2 = w, v
    for _ in range(1000):
        v2 = mu * v2 + wd * w2
        w2 = w2 - lr * v2
    measured = -math.log(w2 / w) / 1000
    assert measured == pytest.approx(theory.decay_rate(lr, wd, mu), rel=1e-9)


def _sgd_step(w: np.ndarray, grad: np.ndarray, lr: float, wd: float) -> np.ndarray:
    return (1 - lr * wd) * w - lr * grad


def test_step_laws_match_one_explicit_sgd_step() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=50) * 3.0
    raw = rng.normal(size=50)
    raw -= (raw @ w) / (w @ w) * w  # the gradient of an SI loss is orthogonal to w
    lr, wd = 0.3, 2e-2
    rho = float(np.linalg.norm(w))
    g_sphere = theory.sphere_grad_norm(rho, np.linalg.norm(raw))
    w_next = _sgd_step(w, raw, lr, wd)
    assert theory.sgd_norm_step(rho, lr, wd, g_sphere) == pytest.approx(
        np.linalg.norm(w_next), rel=1e-13
    )
    cos = (w @ w_next) / (rho * np.linalg.norm(w_next))
    angle = math.acos(cos)
    elr = theory.effective_lr(lr, rho)
    assert elr == pytest.approx(lr / rho**2, rel=1e-15)
    assert theory.sgd_step_angle(lr, wd, elr, g_sphere) == pytest.approx(angle, rel=1e-7)


def test_sphere_conversions_scale_as_an_si_loss_requires() -> None:
    # L(w) = f(w/|w|): grad scales as 1/|w|, hessian as 1/|w|^2
    a = np.diag([3.0, 1.0, 0.5])

    def grad(w: np.ndarray) -> np.ndarray:
        r2 = w @ w
        return (a @ w) / r2 - (w @ a @ w) * w / r2**2

    u = np.array([0.6, 0.8, 0.0])
    for c in (0.1, 4.0):
        g_raw = np.linalg.norm(grad(c * u))
        assert theory.sphere_grad_norm(c, g_raw) == pytest.approx(
            np.linalg.norm(grad(u)), rel=1e-12
        )
    assert theory.sphere_sharpness(2.0, 0.25) == 1.0


def test_equilibrium_front_door_dispatches_to_each_family() -> None:
    lr, wd, g = 0.1, 1e-3, 1.0
    sgd = theory.equilibrium(lr, wd, g)
    assert sgd["optimizer"] == "sgd"
    assert sgd["norm"] == pytest.approx(theory.sgd_equilibrium_norm(lr, wd, g), rel=1e-12)
    assert sgd["angular_update"] == pytest.approx(theory.sgd_equilibrium_angle(lr, wd), rel=1e-12)
    assert sgd["decay_rate"] == pytest.approx(-math.log1p(-lr * wd), rel=1e-14)
    hb = theory.equilibrium(lr, wd, g, 0.9, optimizer="sgdm")
    assert hb["norm"] == pytest.approx(theory.sgdm_equilibrium_norm(lr, wd, g, 0.9), rel=1e-12)
    nes = theory.equilibrium(lr, wd, g, 0.9, optimizer="nesterov")
    assert nes["angular_update"] == pytest.approx(
        theory.sgdm_equilibrium_angle(lr, wd, 0.9, nesterov=True), rel=1e-12
    )
    # Nesterov's own decay law: the larger root of z^2 - (1 + mu)(1 - x) z + mu (1 - x)
    x = lr * wd
    alpha = float(np.max(np.abs(np.roots([1.0, -1.9 * (1 - x), 0.9 * (1 - x)]))))
    assert nes["decay_factor"] == pytest.approx(alpha, rel=1e-12)
    assert nes["decay_rate"] == pytest.approx(-math.log(alpha), rel=1e-10)
    assert nes["elr_doubling_time"] == pytest.approx(
        math.log(2) / (-2 * math.log(alpha)), rel=1e-10
    )
    assert "relaxation_time" not in nes  # no relaxation law for Nesterov
    adam = theory.equilibrium(1e-2, 0.1, optimizer="adamw", n_params=1000)
    assert adam["angular_update"] == pytest.approx(theory.adamw_equilibrium_angle(1e-2, 0.1))
    assert adam["norm"] == pytest.approx(theory.adamw_equilibrium_norm(1e-2, 0.1, 1000))
    assert "elr" not in adam
    lion = theory.equilibrium(1e-3, 0.1, optimizer="lion", betas=(0.9, 0.99), n_params=64)
    assert lion["norm"] == pytest.approx(theory.lion_equilibrium_norm(1e-3, 0.1, 64, 0.9, 0.99))


def test_equilibrium_rejects_unknown_optimizer_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="adamw"):
        theory.equilibrium(0.1, 1e-3, 1.0, optimizer="rmsprop")


def test_theory_imports_no_other_siflow_module() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(theory))
    # the `if __name__ == "__main__":` hook that starts the CLI is not an import of the module
    body = [
        n for n in tree.body if not (isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    ]
    mods = set()
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("siflow"):
            mods.add(node.module)
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("siflow")}
    assert mods == {"siflow._validate"}
