"""The bench's reference kernels compute the update they stand for (analysis/bench/references.py).

Each compiled reference is compared with the plain-numpy loop of the same SGD + weight
decay update over 50 steps, so that the bench's ratios compare like with like. The numpy
loop takes the angle as ``acos`` of a cosine, which resolves angles near 1e-3 to about
1e-13 absolute; the compiled ones use ``atan2``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def refs():
    spec = importlib.util.spec_from_file_location(
        "analysis.bench.references", ROOT / "analysis" / "bench" / "references.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # numba's cache locates compiled functions by module
    spec.loader.exec_module(mod)
    return mod


def _close(got, want):
    for key in ("loss", "rho", "grad_norm_sphere"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-11, err_msg=key)
    np.testing.assert_allclose(got["angular_update"], want["angular_update"], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("d", "n"), [(16, 32), (130, 50)])
def test_logistic_blas_reference_is_the_numpy_update(refs, d, n):
    rng = np.random.default_rng(d + n)
    w_star = rng.standard_normal(d)
    x = rng.standard_normal((n, d))
    z = np.sign(x @ w_star)[:, None] * x
    w0 = rng.standard_normal(d)
    got = refs.logistic_blas(z, 4.0, w0, 0.1, 1e-3, 50)
    want = refs.logistic_numpy(z, np.ones(n), 4.0, w0, 0.1, 1e-3, 50)
    _close(got, want)


def test_rayleigh_fused_reference_is_the_numpy_update(refs):
    rng = np.random.default_rng(5)
    a = np.sort(rng.uniform(0.1, 1.0, 24))
    w0 = rng.standard_normal(24)
    got = refs.rayleigh_fused(a, w0, 0.1, 1e-3, 50)
    want = refs.rayleigh_numpy(a, w0, 0.1, 1e-3, 50)
    _close(got, want)
