"""The variants that ``analysis/bench/logistic_parts.py`` times compute what the kernels do.

Each alternative that the bench times beside a kernel (and that BENCHMARKS.md compares
with it) is checked here against an independent computation: the margins against numpy's
``X @ u``, the weights and the one-loop d=16 step against the numpy twin of the logistic
loss and its formula gradient (``log1p(exp(-m))`` and ``-s sigma(-m)`` by numpy's own
transcendentals).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from scipy.special import expit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parts():
    spec = importlib.util.spec_from_file_location(
        "analysis.bench.logistic_parts", ROOT / "analysis" / "bench" / "logistic_parts.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _softplus_and_weights(s, margins):
    m = s * margins
    loss = np.logaddexp(0.0, -m)  # log(1 + exp(-m))
    weights = -s * expit(-m)  # -s sigma(-m)
    return loss.sum(), weights


def test_four_rows_per_pass_margins_equal_x_u(parts):
    rng = np.random.default_rng(0)
    x, u = rng.standard_normal((12, 37)), rng.standard_normal(37)
    buf = np.empty(12)
    parts._rows_margins4(x, u, buf)
    np.testing.assert_allclose(buf, x @ u, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n", [5, 32, 77])
def test_per_sample_log1p_weights_match_numpy(parts, n):
    rng = np.random.default_rng(n)
    s = 3.0
    margins = rng.standard_normal(n) * np.array([0.01, 1.0, 30.0, 300.0])[np.arange(n) % 4]
    buf = np.empty(2 * n)
    buf[:n] = margins
    total = parts._weights_per_sample_log1p(s, buf, n)
    ref_total, ref_w = _softplus_and_weights(s, margins)
    assert total == pytest.approx(ref_total, rel=1e-13)
    np.testing.assert_allclose(buf[:n], ref_w, rtol=1e-13, atol=0.0)


@njit(fastmath={"reassoc", "contract", "nsz"})
def _log1p_all(parts_log1p, x, out):  # pragma: no cover - numba
    for i in range(x.size):
        out[i] = parts_log1p(x[i])


def test_per_sample_log1p_within_two_ulp_of_numpy(parts):
    rng = np.random.default_rng(22)
    e = np.concatenate(
        [
            rng.uniform(0.0, 1.0, 300_000),
            np.exp(-rng.uniform(0.0, 800.0, 100_000)),
            [0.0, 1.0, 5e-324, parts._SQRT2_M1, np.nextafter(parts._SQRT2_M1, 1.0)],
        ]
    )
    got = np.empty_like(e)
    _log1p_all(parts._log1p_unit, e, got)
    ref = np.log1p(e)
    assert np.array_equal(got == 0.0, ref == 0.0)
    ulps = np.abs(got - ref) / np.where(ref != 0.0, np.spacing(np.abs(ref)), np.inf)
    assert ulps[ref != 0.0].max() <= 2.0


@pytest.mark.parametrize("n", [7, 256])
def test_one_loop_d16_step_matches_numpy(parts, n):
    rng = np.random.default_rng(n)
    s = 4.0
    x = rng.standard_normal((n, 16))
    u = rng.standard_normal(16)
    u /= np.linalg.norm(u)
    g = np.empty(16)
    f = parts._fused16(s, np.ascontiguousarray(x.T), u, g)
    ref_total, ref_w = _softplus_and_weights(s, x @ u)
    assert f == pytest.approx(ref_total / n, rel=1e-13)
    np.testing.assert_allclose(g, x.T @ ref_w / n, rtol=1e-12, atol=1e-15)
