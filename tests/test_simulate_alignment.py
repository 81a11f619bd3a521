"""simulate hands the toy's arrays to the kernels at cache-line boundaries; results do not move."""

from __future__ import annotations

import numpy as np
import pytest

import siflow.simulate as S
from siflow.losses import make_loss


def _at_offset(a: np.ndarray, first: int, k: int) -> np.ndarray:
    """A copy of ``a`` whose element ``first`` sits ``8 k`` bytes past a cache line."""
    raw = np.empty(a.size + 16)
    off = (-(raw.ctypes.data + 8 * first) % 64) // 8 + k
    out = raw[off : off + a.size].reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_cache_aligned_copy(first, k):
    a = _at_offset(np.arange(40.0).reshape(5, 8), first, k)
    b = S._cache_aligned(a, first=first)
    assert (b.ctypes.data + 8 * first) % 64 == 0
    assert b.shape == a.shape and b.flags.c_contiguous and np.array_equal(a, b)
    assert (b is a) == (k == 0)


def test_cache_aligned_leaves_other_arrays_alone():
    for a in (np.empty(0), np.arange(10, dtype=np.int64), np.ones((4, 6))[:, ::2]):
        assert S._cache_aligned(a) is a


def test_simulation_bits_do_not_depend_on_where_the_toy_lies(monkeypatch):
    toy = make_loss("logistic", dim=10)
    w0 = np.random.default_rng(3).standard_normal(10)
    ref = S.simulate(toy, lr=0.3, wd=3e-3, steps=300, seed=0, w0=w0, progress=False)
    for k in (1, 3):
        monkeypatch.setattr(S, "_cache_aligned", lambda a, first=0, k=k: _at_offset(a, first, k))
        got = S.simulate(toy, lr=0.3, wd=3e-3, steps=300, seed=0, w0=w0, progress=False)
        for name in ("loss", "rho", "grad_norm_sphere", "angular_update"):
            assert np.array_equal(got.column(name), ref.column(name)), name
