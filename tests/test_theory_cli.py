"""``python -m siflow.theory``: table, JSON and one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from siflow._theory_cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siflow.theory", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_output_has_equilibrium_keys_and_reference_values() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert list(values) == [
        "lr", "wd", "momentum", "grad_norm", "norm", "norm_first_order", "elr",
        "elr_first_order", "angular_update", "angular_update_first_order", "relaxation_time",
        "relaxation_time_first_order", "elr_doubling_time", "decay_factor", "decay_rate",
        "optimizer",
    ]  # fmt: skip
    # worked numbers of the theory reference (eta = 0.1, lambda = 1e-3, G = 1)
    assert values["norm"] == pytest.approx(2.6591811889, abs=1e-10)
    assert values["norm_first_order"] == pytest.approx(2.6591479485, abs=1e-10)
    assert values["elr"] == pytest.approx(0.0141417821, abs=1e-10)
    assert values["angular_update"] == pytest.approx(0.0141422535, abs=1e-10)
    assert values["elr_doubling_time"] == pytest.approx(3465.6, abs=0.05)
    assert values["relaxation_time_first_order"] == pytest.approx(2500.0, rel=1e-12)
    assert values["decay_factor"] == pytest.approx(0.9999, rel=1e-15)


def test_json_with_momentum() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--momentum", "0.9", "--json")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["momentum"] == 0.9
    assert values["norm"] == pytest.approx(4.7287392, abs=1e-7)
    assert values["angular_update_first_order"] == pytest.approx(0.0102597835, abs=1e-10)


def test_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1"]) == 0
    out = capsys.readouterr().out
    for label in (
        "equilibrium norm",
        "effective LR",
        "angular update",
        "relaxation time",
        "ELR doubling time",
    ):
        assert label in out
    assert "2.659181189" in out and "2.659147948" in out
    assert "exact" in out and "first order" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "-1", "--wd", "1e-3"], "lr"),
        (["--lr", "0.1", "--wd", "0"], "wd"),
        (["--lr", "10", "--wd", "0.5"], "lr*wd"),
        (["--lr", "0.1", "--wd", "1e-3", "--momentum", "1.5"], "momentum"),
        (["--lr", "0.1", "--wd", "1e-3", "--grad-norm", "nan"], "--grad-norm"),
        (["--lr", "abc", "--wd", "1e-3"], "--lr"),
        (["--wd", "1e-3"], "--lr"),
        # flags the chosen theory would ignore
        (["--lr", "0.1", "--wd", "1e-3", "--optimizer", "lion", "--momentum", "0.9"], "lion takes"),
        (["--lr", "0.1", "--wd", "1e-3", "--betas", "0.5,0.6"], "--betas applies to adamw"),
        (["--lr", "0.1", "--wd", "1e-3", "--schedule", "cosine:peak=0.5,steps=100"], "drop one"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]


# ------------------------------------------------------------------ optimizers, edges
def test_adamw_table_and_json_use_the_adamw_forms() -> None:
    from siflow import theory

    proc = _run(
        "--lr", "1e-3", "--wd", "0.1", "--optimizer", "adamw", "--n-params", "500", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["optimizer"] == "adamw"
    assert values["norm"] == float(theory.adamw_equilibrium_norm(1e-3, 0.1, 500))
    assert values["angular_update"] == float(theory.adamw_equilibrium_angle(1e-3, 0.1))
    assert "elr" not in values  # no ELR law for decoupled decay
    # the relaxation of rho^2 <- q^2 rho^2 + c, as the schedule table reports it
    tau = -1.0 / (2.0 * math.log1p(-1e-3 * 0.1))
    assert values["relaxation_time"] == pytest.approx(tau, rel=1e-12)
    sched = json.loads(
        _run("--lr", "1e-3", "--wd", "0.1", "--optimizer", "adamw", "--n-params", "500",
             "--schedule", "constant", "--steps", "100", "--json").stdout
    )  # fmt: skip
    assert sched["points"][0]["relaxation_time"] == values["relaxation_time"]
    text = _run("--lr", "1e-3", "--wd", "0.1", "--optimizer", "adamw").stdout
    norm_line = next(ln for ln in text.splitlines() if ln.startswith("equilibrium norm"))
    assert "n/a" in norm_line and "--n-params" in norm_line


def test_tiny_lr_wd_prints_inf_times_never_minus_inf() -> None:
    proc = _run("--lr", "1e-300", "--wd", "1e-300")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "-inf" not in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ELR doubling time"))
    assert line.split()[5] == "inf"
    assert "underflows to 0" in proc.stdout
    values = json.loads(_run("--lr", "1e-300", "--wd", "1e-300", "--json").stdout)
    assert values["elr_doubling_time"] is None and values["relaxation_time"] is None


def test_underflowing_input_is_named() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-400")
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        "--wd: 1e-400 is below the smallest positive double" in proc.stderr
        and len(proc.stderr.splitlines()) == 1
    )


def test_columns_never_run_together() -> None:
    proc = _run("--lr", "0.1", "--wd", "1e-3", "--grad-norm", "1e300")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    norm = next(ln for ln in lines if ln.startswith("equilibrium norm"))
    assert norm.split()[3:5] == ["2.659181189e+150", "2.659147948e+150"]
    header = lines[1]
    for ln in lines[2:8]:  # every numeric cell ends where its header ends
        assert len(ln) <= len(header) + 10


# ------------------------------------------------------------------ schedules
SPEC = "cosine:peak=0.5,warmup=200,min=0.005,steps=3000"


def test_schedule_json_matches_the_sgd_map_iterated_by_hand() -> None:
    from siflow.schedules import parse_schedule

    proc = _run("--schedule", SPEC, "--wd", "5e-4", "--steps-per-epoch", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    lr_t = parse_schedule(SPEC).values(3000)
    r2 = 1.0
    for lr in lr_t:  # rho'^2 = (1 - lr wd)^2 rho^2 + lr^2 G^2 / rho^2 with G = 1
        r2 = (1 - lr * 5e-4) ** 2 * r2 + lr**2 / r2
    assert rep["final_norm"] == pytest.approx(r2**0.5, rel=1e-12)
    assert rep["kappa_total"] == pytest.approx(float(np.sum(lr_t * 5e-4)), rel=1e-12)
    last = rep["points"][-1]
    assert last["step"] == 2999 and last["steps_left"] == 1
    assert last["tau_iter"] == pytest.approx(1 / (lr_t[-1] * 5e-4), rel=1e-12)
    assert last["tau_epoch"] == pytest.approx(last["tau_iter"] / 100, rel=1e-12)
    peak = next(p for p in rep["points"] if p["step"] == 199)
    assert peak["lr"] == 0.5


def test_schedule_table_says_where_the_norm_lags() -> None:
    proc = _run("--schedule", SPEC, "--wd", "5e-4", "--optimizer", "adamw", "--n-params", "100")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "kappa_T" in out and "quasi-static" in out
    assert "cannot reach its equilibrium before the end" in out
    assert "at the last step the norm is" in out


def test_a_schedule_ending_at_lr_zero_says_there_is_no_equilibrium(capsys) -> None:
    # lr = 0 from step 100 on: the last line printed "against an equilibrium of n/a (+nan%)"
    from siflow._cli import fmt_value
    from siflow.schedules import parse_schedule

    spec = "cosine:peak=0.5,steps=100"
    assert main(["--schedule", spec, "--wd", "1e-3", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    r2 = 1.0
    for lr in parse_schedule(spec).values(200):  # the SGD norm map with G = 1
        r2 = (1 - lr * 1e-3) ** 2 * r2 + lr**2 / r2
    want = (
        f"at the last step the norm is {fmt_value(r2**0.5, 4)}; there is no equilibrium to "
        f"compare it with at that step's lr = 0 and wd = 0.001"
    )
    assert want in out.splitlines()
    assert "nan" not in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--schedule", SPEC], "--wd"),
        (["--schedule", "cosine:peak=0.5", "--wd", "1e-3"], "steps"),
        (["--schedule", "bogus", "--wd", "1e-3"], "schedule kind"),
        (["--schedule", "exp:peak=0.1,gamma=0.9", "--wd", "1e-3"], "--steps"),
    ],
)
def test_schedule_errors_are_one_line(args: list[str], needle: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


# ------------------------------------------------------------------ theory: schedule laws
def _orthogonal_step(w: np.ndarray, rng: np.random.Generator, size: float) -> np.ndarray:
    """A random vector orthogonal to w with norm ``size``."""
    v = rng.standard_normal(w.size)
    v -= (v @ w) / (w @ w) * w
    return v * (size / np.linalg.norm(v))


def test_quasi_static_coupled_map_is_the_sgd_vector_map() -> None:
    """rho* = sgd_equilibrium_norm(lr_t, wd_t, G): the SI SGD map w <- q w - lr grad."""
    from siflow import theory
    from siflow.schedules import parse_schedule

    lr_t = parse_schedule("step:peak=0.2,gamma=0.3,milestones=100/250").values(400)
    wd_t = np.full(400, 0.01)
    big_g = 0.7
    rs = theory.sgd_equilibrium_norm(lr_t, wd_t, big_g)
    got = theory.quasi_static_norm_trajectory(1.5, lr_t, wd_t, rs, coupled=True)
    rng = np.random.default_rng(0)
    w = np.array([1.5, 0.0, 0.0])
    norms = [1.5]
    for lr, wd in zip(lr_t, wd_t, strict=True):  # |grad| = G/|w|, orthogonal to w (SI)
        w = (1 - lr * wd) * w - lr * _orthogonal_step(w, rng, big_g / np.linalg.norm(w))
        norms.append(np.linalg.norm(w))
    np.testing.assert_allclose(got, norms, rtol=1e-12)
    exact = theory.sgd_norm_trajectory(1.5, lr_t, wd_t, big_g)
    np.testing.assert_allclose(got, exact, rtol=1e-12)


def test_quasi_static_decoupled_map_is_the_vector_map() -> None:
    """w <- q w - u with u orthogonal to w and |u|^2 = (1 - q^2) rho*^2."""
    from siflow import theory

    lr_t = np.linspace(1e-3, 1e-2, 300)
    wd_t = np.full(300, 0.1)
    rs = theory.adamw_equilibrium_norm(lr_t, wd_t, 50)
    got = theory.quasi_static_norm_trajectory(0.3, lr_t, wd_t, rs, coupled=False)
    rng = np.random.default_rng(1)
    w = np.array([0.3, 0.0, 0.0, 0.0])
    norms = [0.3]
    for lr, wd, r in zip(lr_t, wd_t, rs, strict=True):
        q = 1 - lr * wd
        w = q * w - _orthogonal_step(w, rng, np.sqrt(1 - q * q) * r)
        norms.append(np.linalg.norm(w))
    np.testing.assert_allclose(got, norms, rtol=1e-12)
    # at constant hyperparameters rho* is the fixed point
    still = theory.quasi_static_norm_trajectory(
        rs[-1], lr_t[-1], wd_t[-1], np.full(50, rs[-1]), False
    )
    np.testing.assert_allclose(still, rs[-1], rtol=1e-13)


def test_decoupled_relaxation_time_is_the_contraction_of_the_map() -> None:
    from siflow import theory

    lr, wd, n = 0.01, 0.2, 500
    tau = float(theory.decoupled_relaxation_time(lr, wd))
    rs = 2.0
    traj = theory.quasi_static_norm_trajectory(rs * 1.1, np.full(n, lr), wd, rs, coupled=False)
    dev = traj**2 - rs**2
    assert dev[n] / dev[0] == pytest.approx(np.exp(-n / tau), rel=1e-10)
    assert tau == pytest.approx(1 / (2 * lr * wd), rel=2 * lr * wd)


def test_schedule_without_a_relaxation_law_makes_no_lag_claim() -> None:
    proc = _run("--schedule", SPEC, "--wd", "5e-4", "--optimizer", "nesterov", "--momentum", "0.9")
    assert proc.returncode == 0, proc.stderr
    assert "cannot reach its equilibrium" not in proc.stdout
    assert "at the last step the norm is" in proc.stdout


def test_heavy_ball_schedule_norm_relaxes_at_the_heavy_ball_rate() -> None:
    from siflow import schedules, theory

    spec = "step:peak=0.1,gamma=0.1,milestones=1000/2000"
    proc = _run("--schedule", spec, "--steps", "3000", "--wd", "1e-2", "--optimizer", "sgdm",
                "--momentum", "0.9", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    lr = schedules.parse_schedule(spec)(np.arange(3000))
    rho = theory.momentum_norm_trajectory(1.0, lr, 1e-2, 0.9, 1.0)  # vector-checked map
    by_step = {p["step"]: p for p in rep["points"]}
    assert by_step[1500]["norm"] == pytest.approx(rho[1500], rel=1e-12)
    assert by_step[2999]["norm_lag"] == pytest.approx(rho[2999] / by_step[2999]["norm_equilibrium"]
                                                      - 1, rel=1e-12)  # fmt: skip
    assert 0.6 < by_step[2999]["norm_lag"] < 0.8  # +69%, not the +186% of SGD's contraction


def test_a_schedule_at_equilibrium_is_not_said_to_lag() -> None:
    rho = "1.4955357582528483"  # sgd_equilibrium_norm(0.1, 1e-2, 1)
    proc = _run("--schedule", "constant", "--steps", "3000", "--lr", "0.1", "--wd", "1e-2",
                "--rho0", rho)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "cannot reach its equilibrium" not in proc.stdout
    late = _run("--schedule", "step:peak=0.1,gamma=0.1,milestones=2900", "--steps", "3000",
                "--wd", "1e-2")  # fmt: skip
    assert "cannot reach its equilibrium before the end" in late.stdout


def test_a_cosine_whose_min_is_above_its_peak_is_refused() -> None:
    proc = _run("--schedule", "cosine:peak=0.1,min=0.5,steps=100", "--wd", "1e-2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "min=0.5 is above the peak 0.1" in proc.stderr.strip()


@pytest.mark.parametrize(
    ("args", "flag", "param"),
    [
        (["--lr", "0.1", "--wd", "0.01", "--momentum", "1"], "--momentum", "momentum"),
        (["--lr", "0.1", "--wd", "0.01", "--optimizer", "adamw", "--n-params", "0"],
         "--n-params", "n_params"),
        (["--lr", "0.1", "--wd", "0.01", "--grad-norm", "-1"], "--grad-norm", "grad_norm"),
        (["--lr", "-1", "--wd", "0.01"], "--lr", "lr"),
    ],
)  # fmt: skip
def test_a_refused_value_is_named_by_its_flag(args, flag, param, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {flag} must be" in err
    assert f"error: {param} must" not in err
