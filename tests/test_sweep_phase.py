"""Phase-diagram data (siflow.sweep.phase_diagram_data) and its drawing (siflow.plot).

The numbers the figure shows are computed in siflow.sweep from siflow.theory; the
drawing in siflow.plot only draws them. Checked against hand computations and
against siflow.theory called directly.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import plot, theory
from siflow import sweep as S

ROOT = Path(__file__).resolve().parents[1]


def _result(regimes: dict, grad: dict | None = None, noise: float = 0.01) -> S.SweepResult:
    """A sweep over lr (1e-2, 1e-1, 1), wd (1e-4, 1e-2), seeds 0..2 with given regimes."""
    cfg = S.SweepConfig("rayleigh", lr=(1e-2, 1e-1, 1.0), wd=(1e-4, 1e-2), seeds=(0, 1, 2),
                        steps=1000, options={"noise": noise})  # fmt: skip
    rows = []
    for c in cfg.cells():
        row = {k: math.nan for k in S.ROW_FIELDS}
        regime = regimes.get((c["lr"], c["wd"], c["seed"]), "converged")
        g = (grad or {}).get((c["lr"], c["wd"], c["seed"]), math.nan)
        period = 100.0 * (c["seed"] + 1) if regime == "periodic" else math.nan
        row.update(c, regime=regime, status="ok", n_events=0, grad_norm_rms=g, period=period)
        rows.append(row)
    return S.SweepResult(cfg, rows)


def test_log_edges_by_hand():
    e = S._log_edges(np.array([1e-3, 1e-2, 1e-1]))
    np.testing.assert_allclose(np.log10(e), [-3.5, -2.5, -1.5, -0.5], rtol=1e-14)
    np.testing.assert_allclose(S._log_edges(np.array([2.0])), [2 / 1.5, 3.0], rtol=1e-15)


def test_panel_grids_lines_and_theory_values():
    eq = {(1.0, 1e-4, s): "equilibrium" for s in (0, 1, 2)}
    per = {(1e-1, 1e-2, 0): "periodic", (1e-1, 1e-2, 1): "periodic", (1e-1, 1e-2, 2): "diverged"}
    grad = {(1.0, 1e-4, 0): 0.02, (1.0, 1e-4, 1): 0.03, (1.0, 1e-4, 2): 0.05}
    data = S.phase_diagram_data(_result({**eq, **per}, grad))
    (panel,) = data.panels
    # majority over seeds; the periodic cell shows the median period of its seeds with one
    # (seeds 0 and 1: 100 and 200; seed 2 diverged, no period)
    assert panel.regimes.tolist() == [["converged", "converged", "equilibrium"],
                                      ["converged", "periodic", "converged"]]  # fmt: skip
    assert panel.period[1, 1] == 150.0 and np.isnan(panel.period[0, 0])
    # the plane spans lr*wd from 10^-2.5 * 10^-5 to 10^0.5 * 10^-1: decades -7 .. -1 inside
    assert data.lr_wd_lines == tuple(10.0**k for k in range(-7, 0))
    # rayleigh: S = 1, dim 10; model G = sigma sqrt(dim - 1) = 0.03; measured G = median 0.03
    assert data.sharpness == 1.0 and data.grad_norm == pytest.approx(0.03, rel=1e-15)
    assert data.grad_norm_label == "σ√(d−1)"
    x_star = theory.equilibrium_instability_lr_wd(0.03, 1.0, 0.0)
    assert panel.instability_model == pytest.approx(x_star, rel=1e-15)
    assert panel.grad_norm_measured == 0.03
    assert panel.instability_measured == pytest.approx(x_star, rel=1e-15)
    glr, gwd = np.meshgrid(data.fine_lr, data.fine_wd)
    t1 = theory.decay_end_step(glr, gwd, 1.0, 1.0, 0.0, 0.03)
    if panel.decay_end is not None:
        np.testing.assert_array_equal(panel.decay_end, t1)
    else:
        finite = t1[np.isfinite(t1)]
        assert not finite.min() < 1000 < finite.max()
    assert not data.has_missing and data.regimes == S.REGIMES


def test_missing_cells_and_no_noise():
    res = _result({}, noise=0.0)
    res.rows = res.rows[:-3]  # the last (lr, wd) cell not run
    data = S.phase_diagram_data(res, lr_wd_lines=[1e-3, 5.0])
    assert data.has_missing and data.panels[0].regimes[1, 2] == ""
    assert data.grad_norm is None and data.panels[0].instability_model is None
    assert data.lr_wd_lines == (1e-3,)  # 5 lies outside the plane


def test_plot_draws_the_given_lines(tmp_path):
    import matplotlib.pyplot as plt

    eq = {(1.0, 1e-4, s): "equilibrium" for s in (0, 1, 2)}
    grad = {(1.0, 1e-4, s): 0.03 for s in (0, 1, 2)}
    data = S.phase_diagram_data(_result(eq, grad))
    fig = plot.phase_diagram(data, tmp_path / "pd.png")
    try:
        assert (tmp_path / "pd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (ax,) = [a for a in fig.axes if a.get_xscale() == "log"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        (line,) = dashed
        x, y = line.get_data()
        np.testing.assert_allclose(x * y, data.panels[0].instability_measured, rtol=1e-12)
        dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert len(dotted) == len(data.lr_wd_lines)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"\.png"):
        plot.phase_diagram(data, tmp_path / "pd.txt")


def test_the_sweep_module_does_not_import_matplotlib():
    code = "import sys, siflow.sweep; assert 'matplotlib' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
