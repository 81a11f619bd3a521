"""Exact statistics whatever the recording, the row cap, up-front refusal, schedules.

References: the same run recorded at every step (numpy means over its columns), the
SGD norm recursion iterated in numpy, and the numpy twins of the optimizer kernels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from siflow import losses as L
from siflow import optim as O
from siflow import simulate as S
from siflow import theory
from siflow.schedules import parse_schedule
from siflow.simulate import simulate


def _numpy_means(full, a: int, b: int) -> dict[str, float]:
    """Means over steps a+1..b from a record-every-1 run's own columns."""
    sl = slice(a + 1, b + 1)
    return {
        "angular_update_rms": float(np.sqrt(np.mean(full.angular_update[sl] ** 2))),
        "grad_norm_sphere_rms": float(np.sqrt(np.mean(full.grad_norm_sphere[sl] ** 2))),
        "grad_norm_sphere_mean": float(np.mean(full.grad_norm_sphere[sl])),
        "norm_mean": float(np.mean(full.rho[sl])),
        "elr_mean": float(np.mean(full.elr[sl])),
    }


# ------------------------------------------------------------------ exact statistics
def test_thinned_run_gives_the_same_means_as_every_step():
    kw = {"lr": 0.1, "wd": 1e-3, "steps": 40_000, "seed": 1}
    full = simulate(**kw)
    thin = simulate(record_every=37, **kw)
    assert len(thin) < len(full) // 5
    a, b = int(thin.step[10]), int(thin.step[-3])
    got = thin.exact_means(a, b)
    ref = _numpy_means(full, a, b)
    assert got["steps"] == b - a
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    # the unweighted mean over the kept rows is what went wrong before: rows near the
    # norm jumps are over-represented, so it is far off
    rows = thin.between(a + 1, b + 1)
    naive = float(np.sqrt(np.mean(rows.angular_update**2)))
    assert abs(naive / ref["angular_update_rms"] - 1) > 0.05


def _assert_same_row(a, b, i: int, j: int) -> None:
    """Row ``i`` of ``a`` and row ``j`` of ``b`` hold the same bits in every column."""
    for name in a.columns():
        assert a.column(name)[i] == b.column(name)[j], name


@pytest.mark.parametrize("max_rows", [1000, 5000])
def test_a_thinned_run_keeps_its_last_step(max_rows):
    # thinned to ~max_rows/2 regular rows, which never land on step N - 1 here
    n = 60_000
    kw = {"lr": 0.1, "wd": 1e-3, "steps": n, "seed": 3}
    full = simulate(record_every=1, max_rows=n + 10, **kw)
    thin = simulate(max_rows=max_rows, **kw)
    assert len(thin) <= max_rows and thin.meta["record_every"] > 1
    assert full.step[-1] == thin.step[-1] == n - 1
    _assert_same_row(full, thin, -1, -1)  # the final state and the running sums, bit for bit
    # the whole-run means cover every step: the same sums, so the same bits
    assert thin.exact_means() == full.exact_means()
    assert thin.exact_means()["steps"] == n - 1
    # and they are the means over the run's own columns
    for key, value in _numpy_means(full, 0, n - 1).items():
        assert thin.exact_means()[key] == pytest.approx(value, rel=1e-9), key


def test_a_run_stopped_at_a_chunk_boundary_keeps_its_last_step():
    # pure decay rho_t = rho0 q^t: rho0 chosen so that the norm is last above RHO_MIN at
    # the last step of the first chunk; the second chunk stops at its first step (it
    # records nothing), and the last step simulated is in the chunk before
    q, last = 0.98, S.CHUNK - 1
    rho0 = S.RHO_MIN / q ** (last + 0.5)
    kw = {"lr": 0.02, "wd": 1.0, "steps": 3 * S.CHUNK, "dim": 3, "rho0": rho0}
    full = simulate("flat", record_every=1, **kw)
    thin = simulate("flat", record_every=100, **kw)
    assert full.status == thin.status == "underflow"
    assert full.step[-1] == thin.step[-1] == last
    _assert_same_row(full, thin, -1, -1)
    assert thin.exact_means() == full.exact_means()


def test_means_of_a_full_record_match_numpy():
    full = simulate("rayleigh", lr=0.2, wd=0.01, steps=3000, dim=5, noise=0.05, seed=4)
    got = full.exact_means(100, 2999)
    for key, value in _numpy_means(full, 100, 2999).items():
        assert got[key] == pytest.approx(value, rel=1e-11), key


def test_cli_statistics_agree_with_a_record_every_one_run(tmp_path):
    """The summary's statistics of a thinned run equal those of the full record."""
    import json

    from siflow._simulate_cli import main

    common = ["--lr", "0.1", "--wd", "1e-3", "--steps", "60000", "--json", "--no-figure"]
    assert main([*common, "--record-every", "16", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--record-every", "1", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["rows_kept"] < b["rows_kept"] / 3
    for key in ("angular_update_rms", "grad_norm_sphere_rms"):
        # the stationary window is found on each record; its ends may move by a few steps
        assert a[key] == pytest.approx(b[key], rel=1e-3), key
    assert b["angular_update_rms"] == pytest.approx(0.01394, rel=0.01)


# ------------------------------------------------------------------ bounded rows
def test_row_cap_doubles_the_strides_and_keeps_exact_sums():
    # lr*wd = 1e-2: norm jumps all the time, so rows near jumps alone exceed the cap
    kw = {"lr": 1.0, "wd": 1e-2, "steps": 30_000, "seed": 0}
    full = simulate(**kw)
    capped = simulate(record_every=40, max_rows=2000, **kw)
    assert len(capped) <= 2000
    assert capped.meta["thinning_doublings"] >= 1
    every, near = capped.meta["record_every"], capped.meta["record_every_near_jumps"]
    assert every == 40 * 2 ** capped.meta["thinning_doublings"]
    assert near == 2 ** capped.meta["thinning_doublings"]
    # every row on the strides, and the run's last step (kept whatever the strides)
    assert np.all((capped.step[:-1] % every == 0) | (capped.step[:-1] % near == 0))
    assert capped.step[-1] == kw["steps"] - 1
    assert np.array_equal(full.rho[capped.step], capped.rho)  # kept rows are the run's rows
    a, b = int(capped.step[0]), int(capped.step[-1])
    got = capped.exact_means(a, b)
    for key, value in _numpy_means(full, a, b).items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_record_every_one_above_the_cap_is_refused_up_front():
    with pytest.raises(ValueError, match=r"record_every=1 keeps 1e\+12 rows.*record_every="):
        simulate(lr=0.1, wd=1e-3, steps=10**12, record_every=1)
    with pytest.raises(ValueError, match="max_rows="):
        simulate(lr=0.1, wd=1e-3, steps=5000, max_rows=100, record_every=1)
    # without record_every the run is thinned to fit half the cap: ceil(5000 / 50)
    traj = simulate("flat", lr=0.1, wd=1e-3, steps=5000, dim=3, max_rows=100)
    assert traj.meta["record_every"] == 100 and len(traj) == 50 + 1  # and the last step
    assert traj.step[-1] == 4999


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"loss": "logistic", "dim": 10**9}, "dim="),
        ({"loss": "rayleigh", "dim": 100_000, "sharpness": True}, "sharpness=False"),
        ({"loss": "flat", "dim": 10**10, "noise": 0.1}, "dim="),
    ],
)
def test_runs_that_cannot_fit_in_memory_are_refused(kw, needle):
    loss = kw.pop("loss")
    with pytest.raises(ValueError, match="of memory") as info:
        simulate(loss, lr=0.1, wd=1e-3, steps=10, **kw)
    assert needle in str(info.value)


def test_estimate_scales_with_steps_not_rows():
    small = S.estimate(steps=10**6, record_every=2, max_rows=10**6)
    big = S.estimate(steps=10**8, record_every=200, max_rows=10**6)
    assert big["bytes"] == small["bytes"]  # same kept rows: same memory
    assert big["seconds"] == pytest.approx(100 * small["seconds"])


# ------------------------------------------------------------------ schedules
def test_lr_schedule_follows_the_exact_norm_recursion():
    """spiral: g~ = G exactly, so the norm is sgd_norm_trajectory's recursion, in numpy."""
    spec = "cosine:peak=0.3,warmup=50,min=0.01,steps=1500"
    lr_t = parse_schedule(spec).values(2000)
    wd, big_g = 0.02, 1.3
    traj = simulate(
        "spiral", lr=spec, wd=wd, steps=2000, rho0=2.0, loss_options={"grad_norm": big_g}
    )
    r2 = [4.0]
    for t in range(1999):
        r2.append((1 - lr_t[t] * wd) ** 2 * r2[-1] + (lr_t[t] * big_g) ** 2 / r2[-1])
    np.testing.assert_allclose(traj.rho, np.sqrt(r2), rtol=1e-12)
    assert np.array_equal(traj.extra["lr"], lr_t)
    np.testing.assert_allclose(traj.elr, lr_t / np.square(traj.rho), rtol=1e-15)
    assert traj.meta["lr"] == pytest.approx(0.3) and traj.meta["lr_schedule"].startswith("cosine")


def test_wd_schedule_with_momentum_matches_the_numpy_twin():
    toy = L.rayleigh(spectrum=[0.0, 0.5, 1.0, 2.0], quartic=1.0)
    w0 = np.array([0.4, -1.0, 0.3, 0.2])
    lr_spec, wd_spec = "step:peak=0.05,gamma=0.5,milestones=100/200", "linear:peak=0.03,steps=300"
    traj = simulate(toy, lr=lr_spec, wd=wd_spec, steps=300, w0=w0, momentum=0.9)
    lr_t = parse_schedule(lr_spec).values(300)
    wd_t = parse_schedule(wd_spec).values(300)
    w, s1, s2 = w0.copy(), np.zeros(4), np.zeros(4)
    rho = []
    for t in range(300):
        rho.append(np.linalg.norm(w))
        _, g = L.value_and_grad_numpy(toy.kind, w, toy.params, toy.data)
        hp = np.array([lr_t[t], wd_t[t], 0.9, 0.9, 0.999, 1e-8, 1.0])
        w, s1, s2 = O.update_numpy(O.SGD, False, False, hp, w, g, s1, s2, t + 1)
    np.testing.assert_allclose(traj.rho, rho, rtol=1e-10)
    assert np.array_equal(traj.extra["wd"], wd_t)


def test_constant_schedule_is_the_constant_run_bit_for_bit(monkeypatch):
    a = simulate(lr=0.1, wd=1e-3, steps=3000, batch=8)
    b = simulate(lr="constant:value=0.1", wd=1e-3, steps=3000, batch=8)
    assert np.array_equal(a.rho, b.rho) and "lr" not in b.extra
    spec = "exp:peak=0.1,gamma=0.9999"
    c = simulate(lr=spec, wd=1e-3, steps=3000, batch=8)
    monkeypatch.setattr(S, "CHUNK", 333)
    d = simulate(lr=spec, wd=1e-3, steps=3000, batch=8)
    assert np.array_equal(c.rho, d.rho) and np.array_equal(c.angular_update, d.angular_update)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"lr": "cosine:peak=50,steps=100", "wd": 0.1}, "lr*wd"),
        ({"lr": "cosine:steps=100", "wd": 0.1}, "peak"),
        ({"lr": [0.1], "wd": 0.1}, "lr must be a number"),
        (
            {"lr": 0.1, "wd": "linear:peak=0.1,steps=10", "optimizer": "fixed_elr"},
            "no weight decay",
        ),
    ],
)
def test_bad_schedules_name_the_parameter(kw, needle):
    opt = kw.pop("optimizer", "sgd")
    with pytest.raises(ValueError) as info:
        simulate("flat", opt, steps=100, dim=3, **kw)
    assert needle in str(info.value)


def test_elr_column_uses_the_theory_function():
    traj = simulate("flat", lr=0.3, wd=0.1, steps=50, dim=3)
    assert np.array_equal(traj.elr, theory.effective_lr(0.3, traj.rho))
    assert math.isclose(traj.extra["sum_elr"][-1], float(np.sum(traj.elr)), rel_tol=1e-13)


@pytest.mark.parametrize("lr", [0.1, "cosine:peak=0.2,warmup=100,min=0.01,steps=2500"])
def test_elr_and_its_running_sum_over_chunks(monkeypatch, lr):
    # the kernel's effective LR is theory.effective_lr of the row's lr and norm, and its
    # running sum is the plain sequential sum over every step, whatever the chunk size
    monkeypatch.setattr(S, "CHUNK", 333)
    traj = simulate("logistic", lr=lr, wd=1e-3, steps=2500, batch=8)
    lr_col = traj.extra["lr"] if "lr" in traj.extra else 0.1
    assert np.array_equal(traj.elr, theory.effective_lr(lr_col, traj.rho))
    assert np.array_equal(traj.extra["sum_elr"], np.cumsum(traj.elr))
    monkeypatch.setattr(S, "CHUNK", 1024)
    again = simulate("logistic", lr=lr, wd=1e-3, steps=2500, batch=8)
    assert np.array_equal(again.extra["sum_elr"], traj.extra["sum_elr"])


# ------------------------------------------------------------- loss options -----------
@pytest.mark.parametrize(
    ("loss", "options", "dim", "match"),
    [
        # a TypeError from make_loss ("got multiple values for keyword argument 'dim'")
        ("logistic", {"dim": 5}, None, r"dim=5 is among the loss options"),
        # numpy's "expected non-negative integer"
        ("logistic", {"seed": -1}, None, r"seed=-1 \(option of the logistic toy\).*>= 0"),
        # "Eigenvalues did not converge", after two RuntimeWarnings
        ("logistic", {"temperature": 1e300}, None, r"temperature must be <= 1e\+50"),
        # ran in dim 3 (dim=5 ignored), and sharpness=3 ignored
        ("rayleigh", {"spectrum": [0, 1, 4]}, 5, r"dim=5 does not match the spectrum's 3"),
        ("rayleigh", {"spectrum": [0, 1, 4], "sharpness": 3}, None, r"sharpness=3 has no"),
    ],
)
def test_bad_loss_options_are_refused_before_the_run(loss, options, dim, match):
    with pytest.raises(ValueError, match=match):
        simulate(loss, lr=0.1, wd=1e-3, steps=10, dim=dim, loss_options=options)
