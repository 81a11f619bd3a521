"""siflow.sweep: grids, resume after a kill, local vs Dask equality, CLI errors, figure."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siflow import sweep as S

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR = "siflow.simulate:simulate"
LOSS = "rayleigh"

# A small grid whose cells take a few tens of milliseconds each.
GRID = dict(
    lr=S.log_grid(0.03, 0.3, 3),
    wd=S.log_grid(1e-3, 1e-2, 2),
    momentum=(0.0, 0.9),
    seeds=(0, 1),
    steps=3000,
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            va, vb = ra[k], rb[k]
            if isinstance(va, float) and math.isnan(va):
                assert isinstance(vb, float) and math.isnan(vb), (k, va, vb)
            else:
                assert va == vb, (ra["index"], k, va, vb)


# ------------------------------------------------------------------ grids
def test_log_grid_values_by_hand():
    np.testing.assert_allclose(S.log_grid(1e-3, 1e-1, 3), [1e-3, 1e-2, 1e-1], rtol=1e-15)
    np.testing.assert_allclose(S.log_grid(1.0, 16.0, 5), [1, 2, 4, 8, 16], rtol=1e-14)
    assert S.log_grid(0.5, 0.5, 1).tolist() == [0.5]


@pytest.mark.parametrize(
    "args, word",
    [
        ((-1.0, 1.0, 3), "low"),
        ((1.0, 0.1, 3), "high"),
        ((0.1, 1.0, 0), "num"),
        ((0.1, 1.0, 1), "num"),
    ],
)
def test_log_grid_rejects_bad_arguments(args, word):
    with pytest.raises(ValueError, match=word):
        S.log_grid(*args)


def test_cells_enumerate_the_product_seed_fastest():
    cfg = S.SweepConfig(LOSS, lr=(0.1, 0.2), wd=(1e-3,), momentum=(0.0, 0.5), seeds=(3, 4))
    cells = cfg.cells()
    assert len(cells) == len(cfg) == 8 and cfg.shape == (2, 1, 2, 2)
    assert [c["index"] for c in cells] == list(range(8))
    assert [(c["momentum"], c["lr"], c["seed"]) for c in cells[:4]] == [
        (0.0, 0.1, 3),
        (0.0, 0.1, 4),
        (0.0, 0.2, 3),
        (0.0, 0.2, 4),
    ]
    assert cells[4]["momentum"] == 0.5
    assert S.SweepConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(lr=(0.1, 2.0), wd=(0.6,)), "lr\\*wd"),
        (dict(lr=(-0.1,), wd=(1e-3,)), "lr"),
        (dict(lr=(0.1,), wd=(1e-3,), momentum=(1.0,)), "momentum"),
        (dict(lr=(0.1,), wd=(1e-3,), seeds=(1, 1)), "seeds"),
        (dict(lr=(0.1, 0.1), wd=(1e-3,)), "repeated"),
        (dict(lr=(0.1,), wd=(1e-3,), steps=0), "steps"),
        (dict(lr=(0.1,), wd=(1e-3,), options={"colour": 1}), "colour"),
        # not numbers, or not whole seeds: named, not numpy's TypeError/OverflowError
        (dict(lr=(1 + 1j,), wd=(1e-3,)), "^lr must be a number"),
        (dict(lr=(0.1, 10**400), wd=(1e-3,)), "^lr holds 1.000e\\+400, beyond the float64"),
        (dict(lr=(0.1,), wd=("x",)), "^wd must be a number"),
        (dict(lr=((0.1,),), wd=(1e-3,)), "^lr must be a number or a non-empty 1-D list"),
        (dict(lr=(0.1,), wd=(1e-3,), seeds=1.5), "^seeds must be distinct whole numbers"),
        (dict(lr=(0.1,), wd=(1e-3,), seeds=[[0]]), "^seeds must be distinct whole numbers"),
        (dict(lr=(0.1,), wd=(1e-3,), seeds=True), "^seeds must be distinct whole numbers"),
    ],
)
def test_config_rejects_bad_grids_naming_the_parameter(kwargs, word):
    with pytest.raises(ValueError, match=word):
        S.SweepConfig(LOSS, **kwargs)


# ------------------------------------------------------ grids of hand-made rows
def _row(index, lr, wd, seed, regime, period=math.nan, momentum=0.0):
    row = {k: math.nan for k in S.ROW_FIELDS}
    row.update(
        index=index,
        lr=lr,
        wd=wd,
        momentum=momentum,
        seed=seed,
        regime=regime,
        status="ok",
        n_events=0,
        steps_run=10,
        period=period,
    )
    return row


def test_regime_grid_majority_and_tie_rule_and_value_median():
    cfg = S.SweepConfig(LOSS, lr=(0.1, 0.2), wd=(1e-3,), seeds=(0, 1, 2))
    rows = [
        _row(0, 0.1, 1e-3, 0, "periodic", 100.0),
        _row(1, 0.1, 1e-3, 1, "periodic", 300.0),
        _row(2, 0.1, 1e-3, 2, "converged"),
        _row(3, 0.2, 1e-3, 0, "equilibrium"),
        _row(4, 0.2, 1e-3, 1, "diverged"),
    ]
    res = S.SweepResult(cfg, rows)
    assert not res.complete and res.missing() == [5]
    grid = res.regime_grid()
    assert grid.shape == (1, 2)
    assert grid[0, 0] == "periodic"  # 2 votes of 3
    assert grid[0, 1] == "diverged"  # tie 1:1 goes to the less stable regime
    per = res.value_grid("period")
    assert per[0, 0] == 200.0 and math.isnan(per[0, 1])
    with pytest.raises(ValueError, match="momentum"):
        res.regime_grid(0.5)


# ------------------------------------------------------------ theory lines
@pytest.mark.parametrize("g, s", [(0.03, 1.0), (0.5, 2.0), (1e-4, 10.0)])
def test_equilibrium_instability_of_sgd_is_the_closed_form(g, s):
    # elr* = sqrt(x(2-x))/G equals 2(1-x)/S  <=>  x^2 - 2x + 4G^2/(S^2+4G^2) = 0
    x_star = 1.0 - s / math.sqrt(s * s + 4.0 * g * g)
    assert S.equilibrium_instability_lr_wd(g, s) == pytest.approx(x_star, rel=1e-9)


def test_equilibrium_instability_with_momentum_matches_first_order():
    g, s, mu = 0.003, 1.0, 0.9
    # first order: sqrt(2 x (1-mu))/G = 2 (1+mu)/S
    first = 2 * g**2 * (1 + mu) ** 2 / (s**2 * (1 - mu))
    assert S.equilibrium_instability_lr_wd(g, s, mu) == pytest.approx(first, rel=0.01)


def test_decay_end_step_counts_the_steps_of_the_zero_gradient_map():
    lr, wd, sharp = 0.1, 1e-3, 1.0
    rho_crit = math.sqrt(lr * sharp / (2 * (1 - lr * wd)))
    rho, k = 1.0, 0
    while rho > rho_crit:
        rho *= 1 - lr * wd
        k += 1
    t = float(S.decay_end_step(lr, wd, sharp))
    assert k - 1 < t <= k
    # an equilibrium norm above rho0 (G = 1: rho*^4 = 50) ends the decay at once
    assert float(S.decay_end_step(lr, wd, sharp, grad_norm=1.0)) == 0.0
    # vectorised over a grid
    assert S.decay_end_step(np.array([0.1, 0.2]), np.array([1e-3, 1e-3]), sharp).shape == (2,)


def test_a_cell_deep_in_the_periodic_region_has_period_of_order_one_over_lr_wd():
    cfg = S.SweepConfig(LOSS, lr=(0.3,), wd=(0.03,), steps=3000)
    row = S.run_cell(cfg, {"index": 0, "lr": 0.3, "wd": 0.03, "momentum": 0.0, "seed": 0})
    assert row["regime"] == "periodic" and row["n_events"] >= 5
    # T = ln(rho_max^2/rho_crit^2)/(-2 ln(1 - lr wd)) + T_escape: T*lr*wd of order one
    assert 0.2 < row["period_lr_wd"] < 5
    # a destabilization starts only above the stability threshold 2(1 - lr wd)/S, S = 1
    assert row["elr_at_events"] > 2 * (1 - 0.3 * 0.03)


def test_a_noisy_cell_below_the_instability_is_an_equilibrium_at_the_theory_elr():
    from siflow import theory

    cfg = S.SweepConfig(LOSS, lr=(0.1,), wd=(0.01,), steps=5000, options={"noise": 0.01})
    row = S.run_cell(cfg, {"index": 0, "lr": 0.1, "wd": 0.01, "momentum": 0.0, "seed": 0})
    assert row["regime"] == "equilibrium"
    # exact equilibrium of the norm map: elr* = sqrt(lr wd (2 - lr wd)) / G
    predicted = math.sqrt(1e-3 * (2 - 1e-3)) / row["grad_norm_rms"]
    assert row["elr_mean"] == pytest.approx(predicted, rel=0.05)
    assert predicted == pytest.approx(
        float(theory.sgd_equilibrium_elr(0.1, 0.01, row["grad_norm_rms"])), rel=1e-12
    )


def _interrupted_simulation(loss, *, lr, wd, steps, seed=0, **kw):
    """A stand-in for simulate() hit by Ctrl-C half-way: a partial trajectory."""
    from siflow.trajectory import Trajectory

    n = steps // 2
    return Trajectory(step=np.arange(n), rho=np.ones(n), loss=np.ones(n),
                      meta={"lr": lr, "wd": wd, "status": "interrupted"})  # fmt: skip


def test_an_interrupted_simulation_is_never_saved_as_a_finished_cell(tmp_path):
    sim = f"{__name__}:_interrupted_simulation"
    with pytest.raises(KeyboardInterrupt):
        S.sweep(LOSS, lr=(0.1,), wd=(1e-3,), steps=10, out=tmp_path, workers=1, simulator=sim)
    assert not list((tmp_path / "cells").glob("*.json"))
    assert not (tmp_path / "table.csv").exists()


# ------------------------------------------------------------ real sweeps
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small grid run in this process (workers=1): the reference table."""
    out = tmp_path_factory.mktemp("ref")
    return S.sweep(LOSS, out=out, workers=1, simulator=SIMULATOR, **GRID)


def test_sweep_writes_one_file_per_cell_and_a_table(reference):
    out = reference.out
    assert reference.complete and len(reference.rows) == 24
    assert len(list((out / "cells").glob("cell_*.json"))) == 24
    lines = (out / "table.csv").read_text().splitlines()
    assert lines[0].split(",") == list(S.ROW_FIELDS) and len(lines) == 25
    assert set(reference.column("regime")) <= set(S.REGIMES)
    again = S.load(out)
    _same_rows(again.rows, reference.rows)


def test_rows_follow_from_their_own_cell(reference):
    for row in reference.rows:
        assert row["lr_wd"] == row["lr"] * row["wd"]
        if row["n_events"] >= 2:
            assert math.isfinite(row["period"]) and row["period"] > 0
            assert row["period_lr_wd"] == pytest.approx(row["period"] * row["lr_wd"], rel=1e-15)


def test_parallel_local_run_gives_the_same_table(reference, tmp_path):
    two = S.sweep(LOSS, out=tmp_path, workers=2, simulator=SIMULATOR, **GRID)
    _same_rows(two.rows, reference.rows)


def test_an_interrupt_in_a_pooled_sweep_leaves_no_pool_thread_running(tmp_path):
    # Ctrl-C arrives in the parent while workers compute; the pool's manager thread
    # must be finished before the interrupt leaves sweep(): one still closing its
    # wakeup pipe at interpreter exit races with concurrent.futures' exit hook and
    # prints "OSError: Bad file descriptor" after the sweep's "interrupted"
    import concurrent.futures.process as cfp

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.sweep(LOSS, out=tmp_path, workers=2, simulator=SIMULATOR, progress=interrupt, **GRID)
    running = [t.name for t in list(cfp._threads_wakeups) if t.is_alive()]
    assert running == []
    assert 1 <= len(list((tmp_path / "cells").glob("cell_*.json"))) < 16


def test_rerun_reads_cells_back_instead_of_recomputing(reference, tmp_path):
    small = dict(GRID, momentum=(0.0,), seeds=(0,))
    first = S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, **small)
    cells = sorted((tmp_path / "cells").glob("cell_*.json"))
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in cells}
    second = S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, **small)
    # atomic rewrites would give new inodes: every cell file is the one written first
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in cells} == before
    _same_rows(second.rows, first.rows)
    assert second.discarded == []


def test_an_edited_cell_is_recomputed_not_trusted(tmp_path):
    small = dict(GRID, momentum=(0.0,), seeds=(0,))
    first = S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, **small)
    path = tmp_path / "cells" / "cell_000002.json"
    original = path.read_bytes()
    other = next(r for r in S.REGIMES if r != first.rows[2]["regime"])
    # a valid-looking edit: another regime label, every field still well-formed
    path.write_text(path.read_text().replace(first.rows[2]["regime"], other))
    notes = []
    second = S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, notes=notes.append,
                     **small)  # fmt: skip
    assert second.discarded == [2] and len(notes) == 1 and "recomputing it" in notes[0]
    _same_rows(second.rows, first.rows)
    assert path.read_bytes() == original


def test_a_different_sweep_in_the_same_directory_is_refused(tmp_path):
    small = dict(GRID, momentum=(0.0,), seeds=(0,))
    S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, **small)
    other = dict(small, steps=2000)
    with pytest.raises(ValueError, match="different sweep"):
        S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, **other)
    res = S.sweep(LOSS, out=tmp_path, workers=1, simulator=SIMULATOR, restart=True, **other)
    assert res.complete and res.config.steps == 2000


def _cli_args(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "siflow.sweep",
        "--loss",
        LOSS,
        "--lr",
        "0.03",
        "0.3",
        "--n-lr",
        "3",
        "--wd",
        "1e-3",
        "1e-2",
        "--n-wd",
        "2",
        "--momentum",
        "0",
        "0.9",
        "--seeds",
        "0",
        "1",
        "--steps",
        "3000",
        "--simulator",
        SIMULATOR,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _kill_midway(args: list[str], out: Path, sig: int, min_cells: int = 4) -> int:
    proc = subprocess.Popen(
        args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if len(list((out / "cells").glob("cell_*.json"))) >= min_cells:
                break
            if proc.poll() is not None:
                pytest.fail(f"sweep ended before it could be killed: {proc.stderr.read()!r}")
            time.sleep(0.02)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sweep_killed_with_sigkill_resumes_to_the_same_table(reference, tmp_path, workers):
    out = tmp_path / "s"
    code = _kill_midway(_cli_args(out, "--workers", workers), out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    partial = S.load(out)
    assert 0 < len(partial.rows) < 24
    done = subprocess.run(
        _cli_args(out, "--workers", workers),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _same_rows(S.load(out).rows, reference.rows)
    assert (out / "table.csv").read_text() == (reference.out / "table.csv").read_text()


def test_sweep_interrupted_with_sigint_exits_130_and_resumes(reference, tmp_path):
    out = tmp_path / "s"
    code = _kill_midway(_cli_args(out, "--workers", "1"), out, signal.SIGINT)
    assert code == 130
    assert 0 < len(S.load(out).rows) < 24
    done = subprocess.run(
        _cli_args(out, "--workers", "1", "--json"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 24
    _same_rows(S.load(out).rows, reference.rows)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_table(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        res = S.sweep(
            LOSS,
            out=tmp_path / "api",
            dask=cluster.scheduler_address,
            simulator=SIMULATOR,
            batch=2,
            **GRID,
        )
        _same_rows(res.rows, reference.rows)
        cli = subprocess.run(
            _cli_args(tmp_path / "cli", "--dask", cluster.scheduler_address),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert cli.returncode == 0, cli.stderr
    _same_rows(S.load(tmp_path / "cli").rows, reference.rows)


def test_a_script_with_threads_uses_forkserver_workers_and_gets_the_same_rows(tmp_path):
    small = dict(lr=(0.1, 0.3), wd=(1e-2,), steps=2000)
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, threading\n"
        "from siflow import sweep as S\n"
        "if __name__ == '__main__':\n"
        "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "    assert S._start_method() == 'forkserver'\n"
        f"    r = S.sweep({LOSS!r}, workers=2, simulator={SIMULATOR!r}, **{small!r})\n"
        "    print(json.dumps([[x['regime'], x['n_events'], x['rho_final']] for x in r.rows]))\n"
    )
    res = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    here = S.sweep(LOSS, workers=1, simulator=SIMULATOR, **small)
    assert json.loads(res.stdout) == [
        [x["regime"], x["n_events"], x["rho_final"]] for x in here.rows
    ]


@pytest.mark.slow
def test_unreachable_dask_scheduler_is_one_line_and_writes_nothing(tmp_path):
    pytest.importorskip("distributed")
    args = [sys.executable, "-m", "siflow.sweep", "--n-lr", "2", "--n-wd", "2", "--steps", "50",
            "--dask", "tcp://127.0.0.1:9", "--out", str(tmp_path / "s"), "--quiet"]  # fmt: skip
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Dask scheduler" in lines[0] and "pass" in lines[0]
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize(
    "extra, word",
    [
        (["--n-lr", "0"], "--n-lr"),
        (["--lr", "-1", "1"], "--lr"),
        (["--lr", "1", "0.1"], "swap"),
        (["--momentum", "1.5"], "momentum"),
        (["--steps", "-5"], "steps"),
        (["--workers", "0"], "workers"),
        (["--lr", "1", "10", "--wd", "0.5", "0.9"], "lr\\*wd"),
        (["--simulator", "nosuchmodule:f"], "simulator"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_cli_bad_options_give_one_line_and_exit_2(tmp_path, extra, word):
    import re

    out = tmp_path / "s"
    args = [sys.executable, "-m", "siflow.sweep", "--out", str(out), "--quiet", *extra]
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(word, lines[0]), res.stderr
    assert "Traceback" not in res.stderr


def test_cli_unknown_loss_is_one_line(tmp_path):
    args = [
        sys.executable,
        "-m",
        "siflow.sweep",
        "--loss",
        "nosuchloss",
        "--out",
        str(tmp_path / "s"),
        "--quiet",
    ]
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "nosuchloss" in res.stderr


# --------------------------------------------------------------------- figure
def test_phase_diagram_writes_a_png_with_one_panel_per_momentum(reference, tmp_path):
    import matplotlib.pyplot as plt

    fig = S.phase_diagram(reference, tmp_path / "pd.png")
    try:
        data = (tmp_path / "pd.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
        assert len(panels) == 2
        assert all(ax.get_yscale() == "log" for ax in panels)
    finally:
        plt.close(fig)


def _phase_diagram_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "phase_diagram", ROOT / "analysis" / "phase_diagram.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("wd", "sharpness", "momentum", "rho0", "by_hand"),
    [(0.0, 2.0, 0.0, 1.0, 1.0), (0.5, 1.0, 0.9, 1.0, 1.9), (0.0, 4.0, 0.0, 2.0, 2.0)],
)
def test_start_threshold_lr_by_hand_and_against_the_threshold(
    wd, sharpness, momentum, rho0, by_hand
):
    # lr = 2 (1 + mu) rho0^2 / (S + 2 wd rho0^2); e.g. S=1, wd=0.5, mu=0.9: 3.8/2 = 1.9
    pd = _phase_diagram_script()
    lr = float(pd.start_threshold_lr(wd, sharpness, momentum, rho0))
    assert lr == pytest.approx(by_hand, rel=1e-15)
    # the starting effective LR lr/rho0^2 sits exactly on the threshold of siflow.theory
    from siflow import theory

    thr = float(theory.stability_threshold_elr(lr, wd, sharpness, momentum))
    assert lr / rho0**2 == pytest.approx(thr, rel=1e-14)


def test_short_cells_need_three_full_periods():
    pd = _phase_diagram_script()
    cfg = S.SweepConfig("rayleigh", lr=(0.1, 0.2), wd=(0.01,), seeds=(0, 1, 2), steps=100)
    # (lr, seed) -> (regime, n_events): 4 events bound 3 periods, 3 events only 2
    spec = {
        (0.1, 0): ("periodic", 3),
        (0.1, 1): ("periodic", 3),
        (0.1, 2): ("periodic", 9),
        (0.2, 0): ("periodic", 4),
        (0.2, 1): ("periodic", 4),
        (0.2, 2): ("converged", 0),
    }
    rows = []
    for c in cfg.cells():
        regime, n = spec[(c["lr"], c["seed"])]
        row = {k: math.nan for k in S.ROW_FIELDS}
        row.update(c, regime=regime, n_events=n, status="ok")
        rows.append(row)
    short = pd.short_cells(S.SweepResult(cfg, rows), 0.0)
    assert short.tolist() == [[True, False]]


@pytest.mark.slow
def test_the_phase_diagram_script_runs_in_quick_mode(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "phase_diagram.py"), "--quick", "--out",
         str(tmp_path / "fig"), "--runs", str(tmp_path / "runs")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for name in ("phase_diagram_quick.png", "phase_diagram_noisy_quick.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 10_000
    assert "decay-end line:" in res.stdout
    noisy = S.load(tmp_path / "runs" / "phase_diagram_rayleigh_noisy_quick")
    assert noisy.complete and len(noisy.rows) == 4 * 3 * 2
    toy = S.load(tmp_path / "runs" / "phase_diagram_logistic_quick")
    assert toy.complete and toy.config.loss == "logistic" and toy.config.steps == 20_000
    # one periodic cell of the default toy against a second method: the median gap between
    # the starts of norm jumps (log-norm rising by > 1% in a step) of a fresh simulation
    from siflow.simulate import simulate

    row = next(r for r in toy.rows if r["lr"] == 1.0 and r["momentum"] == 0.0
               and math.isclose(r["wd"], 10**-2.5, rel_tol=1e-12))  # fmt: skip
    assert row["regime"] == "periodic"
    traj = simulate("logistic", lr=1.0, wd=10**-2.5, steps=20_000, seed=0)
    up = np.flatnonzero(np.diff(np.log(traj.rho)) > 0.01)
    starts = up[np.r_[True, np.diff(up) > 10]]
    assert row["period"] == pytest.approx(np.median(np.diff(starts)), rel=0.02)


# ------------------------------------------------------------------ the CLI's refusals
_ONE_CELL = ["--lr", "0.1", "0.1", "--n-lr", "1", "--wd", "1e-3", "1e-3", "--n-wd", "1",
             "--steps", "50", "--workers", "1", "--quiet"]  # fmt: skip
#: A library parameter written as in Python (``momentum=0``): a flag should be named.
_PYTHON_NAME = r"(?<![-\w])(momentum|seeds|dim|batch|noise|max_hours|out|restart|betas|steps)="


def _sweep_cli(tmp_path, monkeypatch, capsys, *extra: str) -> tuple[int, str, list[str]]:
    """Run the sweep CLI in ``tmp_path``; return its status, stderr and the files there."""
    from siflow._sweep_cli import main

    monkeypatch.chdir(tmp_path)
    code = main([*_ONE_CELL, "--out", "o", *extra])
    err = capsys.readouterr().err
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    return code, err, files


@pytest.mark.parametrize(
    "extra, fix",
    [
        (["--optimizer", "adamw", "--momentum", "0.9"], "pass --momentum 0"),
        (["--optimizer", "nesterov"], "pass e.g. --momentum 0.9"),
        (["--seeds", "0", "0"], "pass e.g. --seeds 0 1"),
        (["--dim", "1"], "pass --dim 2 or more"),
        (["--loss", "rayleigh", "--batch", "5"], "drop --batch or use --noise"),
        (["--max-hours", "0"], "--max-hours must be a positive number of hours"),
    ],
)
def test_cli_errors_name_flags_not_python_parameters(tmp_path, monkeypatch, capsys, extra, fix):
    import re

    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys, *extra)
    assert code == 2 and files == []
    assert len(err.strip().splitlines()) == 1 and fix in err, err
    assert not re.search(_PYTHON_NAME, err), err


def test_cli_refuses_a_foreign_out_before_making_its_lock(tmp_path, monkeypatch, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "sweep.json").write_text('{"loss": "another"}')
    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys)
    assert code == 2 and "holds a different sweep; pass another --out, or --restart" in err
    assert files == ["o/sweep.json"]  # no .lock left in someone else's folder


@pytest.mark.parametrize("name", ["table.csv", "phase_diagram.png"])
def test_cli_does_not_overwrite_a_table_or_figure_that_is_not_a_sweeps(
    tmp_path, monkeypatch, capsys, name
):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / name).write_text("mine")
    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys)
    assert code == 2 and f"holds a {name} but no sweep.json" in err and "--restart" in err
    assert files == [f"o/{name}"] and (tmp_path / "o" / name).read_text() == "mine"


def test_cli_checks_the_figure_folder_before_any_cell_runs(tmp_path, monkeypatch, capsys):
    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys, "--figure", "nodir/x.png")
    assert code == 2 and files == []
    assert "--figure 'nodir/x.png': its folder 'nodir' does not exist" in err
    # a figure inside --out is fine: the sweep makes that folder
    code, _, files = _sweep_cli(tmp_path, monkeypatch, capsys, "--figure", "o/x.png")
    assert code == 0 and "o/x.png" in files


def test_a_schedule_with_its_own_peak_is_refused(tmp_path, monkeypatch, capsys):
    spec = "cosine:peak=0.5,steps=50"
    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys, "--schedule", spec)
    assert code == 2 and files == []
    assert "sets peak=0.5" in err and "drop peak=0.5 from --schedule" in err
    with pytest.raises(ValueError, match=r"sets peak=0\.5.*drop peak=0\.5"):
        S.SweepConfig(LOSS, lr=(0.01, 1.0), wd=(1e-3,), steps=50, schedule=spec)


def test_a_schedule_that_reaches_zero_within_the_steps_is_refused(tmp_path, monkeypatch, capsys):
    # cosine:steps=49 holds min=0 from step 49: the last step of a 50-step cell has lr = 0
    code, err, files = _sweep_cli(tmp_path, monkeypatch, capsys, "--schedule", "cosine:steps=49")
    assert code == 2 and files == []
    assert "reaches lr = 0 at step 49, within --steps 50" in err
    assert "write steps=50 or more, or a min above 0, into it, or pass --steps 49" in err
    with pytest.raises(ValueError, match="reaches lr = 0 at step 49"):
        S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), steps=50, schedule="cosine:steps=49")
    # one step longer it stays positive over the cell (lr at step 49: 0.05 (1 + cos(49 pi/50)))
    cfg = S.SweepConfig(LOSS, lr=(0.1,), wd=(1e-3,), steps=50, schedule="cosine:steps=50")
    assert cfg.schedule == "cosine:steps=50"


def test_a_thinned_cell_reports_the_final_values_of_its_run():
    from siflow.simulate import simulate

    steps, max_rows = 60_000, 1000
    cfg = S.SweepConfig("logistic", lr=(0.1,), wd=(1e-3,), seeds=(3,), steps=steps,
                        max_rows=max_rows)  # fmt: skip
    row = S.run_cell(cfg, cfg.cell(0))
    full = simulate("logistic", lr=0.1, wd=1e-3, steps=steps, seed=3, record_every=1,
                    max_rows=steps + 10)  # fmt: skip
    assert row["steps_run"] == steps
    assert row["rho_final"] == float(full.rho[-1])  # the run's last step, bit for bit
    assert row["loss_final"] == float(full.loss[-1])
