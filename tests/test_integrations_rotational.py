"""Rotational monitor: measured per-layer rotation against the optimizer's equilibrium.

An exactly scale-invariant weight fed pure-noise tangent gradients must sit at the
closed-form equilibrium of its optimizer (docs/theory.md sections 1, 3, 5); the
monitor's measured RMS angle and relative update are checked against it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siflow import theory

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- theory
def test_relative_update_is_the_chord_of_the_angle():
    import mpmath

    mpmath.mp.dps = 50
    angles = np.array([0.0, 1e-9, 0.03, 1.0, math.pi])
    # sqrt(2 (1 - cos a)) in 50 digits (1 - cos cancels in float64 at small angles)
    by_hand = [float(mpmath.sqrt(2 * (1 - mpmath.cos(mpmath.mpf(a))))) for a in angles]
    np.testing.assert_allclose(theory.equilibrium_relative_update(angles), by_hand, rtol=1e-14)
    assert theory.equilibrium_relative_update(1e-9) == pytest.approx(1e-9, rel=1e-12)
    with pytest.raises(ValueError, match="angle"):
        theory.equilibrium_relative_update(4.0)


def test_sgd_rotational_equilibrium_by_hand():
    # cos Delta* = 1 - lr wd (exact for SGD): |dw|/|w| = sqrt(2 lr wd) exactly
    angle, rel = theory.rotational_equilibrium("SGD", 0.1, 1e-2)
    assert angle == pytest.approx(math.acos(1 - 1e-3), rel=1e-12)
    assert rel == pytest.approx(math.sqrt(2e-3), rel=1e-14)
    angle, _ = theory.rotational_equilibrium("sgd", 0.1, 1e-2, momentum=0.9)
    assert angle == theory.sgdm_equilibrium_angle(0.1, 1e-2, 0.9)
    angle, _ = theory.rotational_equilibrium("AdamW", 1e-3, 0.1, betas=(0.8, 0.99))
    assert angle == theory.adamw_equilibrium_angle(1e-3, 0.1, 0.8)
    with pytest.raises(ValueError, match="optimizer="):
        theory.rotational_equilibrium("Adam", 1e-3, 0.1)


# ---------------------------------------------------------------- measurement
torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")

from siflow.torch_probe import SIRecorder, rotational_equilibrium_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _noise_run(make_opt, steps=2000, dim=256, seed=0):
    """An SI weight whose loss gradient is isotropic tangent noise of size 1/|w|."""
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(dim, dtype=torch.float64))
    holder = torch.nn.Module()
    holder.w = w
    opt = make_opt([w])
    rec = SIRecorder(holder, opt, groups={"w": [w]})
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        g = torch.randn(dim, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            u = w / w.norm()
            w.grad = (g - (g @ u) * u) / w.norm()
        opt.step()
    t = rec.trajectory()
    tail = slice(steps // 2, steps)
    ang = float(np.sqrt(np.mean(t.angular_update[tail] ** 2)))
    rel = float(np.sqrt(np.mean(t.extra["relative_update/w"][tail] ** 2)))
    return ang, rel, rotational_equilibrium_of(opt, w)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98)),
        lambda ps: torch.optim.SGD(ps, lr=0.5, weight_decay=1e-2),
        lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=1e-1, momentum=0.9),
    ],
    ids=["adamw", "sgd", "sgd-momentum"],
)
def test_si_weight_on_noise_sits_at_the_predicted_rotation(make_opt):
    ang, rel, (ang_eq, rel_eq) = _noise_run(make_opt)
    assert ang == pytest.approx(ang_eq, rel=0.01)
    assert rel == pytest.approx(rel_eq, rel=0.01)


def test_equilibrium_of_reads_the_parameter_group():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW(
        [{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.8, 0.95),
    )
    ang, rel = rotational_equilibrium_of(opt, a)
    assert ang == pytest.approx(float(theory.adamw_equilibrium_angle(1e-3, 0.1, 0.8)), rel=1e-15)
    assert rel == pytest.approx(2 * math.sin(ang / 2), rel=1e-15)
    assert all(math.isnan(v) for v in rotational_equilibrium_of(opt, b))
    with pytest.raises(ValueError, match="not updated"):
        rotational_equilibrium_of(opt, torch.nn.Parameter(torch.ones(2)))
    with pytest.raises(ValueError, match="AdamW"):
        rotational_equilibrium_of(torch.optim.Adam([a], lr=1e-3, weight_decay=0.1), a)


@pytest.mark.slow
def test_rotational_monitor_script_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "rotational_monitor.py"),
            "--steps",
            "120",
            "--out",
            str(tmp_path / "rot"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), **__import__("os").environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "rot" / "results.json").read_text())
    assert len(res["layers"]) == 11
    for s in res["layers"].values():
        assert s["angle_eq"] == pytest.approx(float(theory.adamw_equilibrium_angle(1e-2, 1.0, 0.9)))
        assert s["angle_rms"] > 0
    assert (tmp_path / "rot" / "rotational_monitor.png").stat().st_size > 10_000
