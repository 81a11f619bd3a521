"""The simulation loop compiled for the CPU's widest vectors (``siflow._vector_width``)."""

from __future__ import annotations

import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

from siflow import losses as L
from siflow import simulate as S
from siflow._vector_width import PREFER_WIDE_ATTRIBUTE, prefer_wide_vectors


@njit(fastmath={"reassoc", "contract"})
def _wide_axpy(a, x, y):  # pragma: no cover - numba
    prefer_wide_vectors()
    s = 0.0
    for i in range(x.size):
        y[i] += a * x[i]
        s += y[i]
    return s


@njit(fastmath={"reassoc", "contract"})
def _plain_axpy(a, x, y):  # pragma: no cover - numba
    s = 0.0
    for i in range(x.size):
        y[i] += a * x[i]
        s += y[i]
    return s


def _host_has_avx512() -> bool:
    llvm.initialize_native_target()
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def test_marker_sets_the_attribute_on_its_function_only():
    x, y = np.arange(100.0), np.ones(100)
    assert _wide_axpy(2.0, x, y.copy()) == _plain_axpy(2.0, x, y.copy()) == 100.0 + 2.0 * 4950.0
    (wide_ir,) = _wide_axpy.inspect_llvm().values()
    (plain_ir,) = _plain_axpy.inspect_llvm().values()
    assert PREFER_WIDE_ATTRIBUTE in wide_ir
    assert PREFER_WIDE_ATTRIBUTE not in plain_ir
    if _host_has_avx512():  # where the CPU has 512-bit vectors, the marked loop uses them
        (asm,) = _wide_axpy.inspect_asm().values()
        assert re.search(r"%zmm\d+", asm)


@pytest.mark.parametrize(
    ("loss", "dim", "options", "batch", "wide"),
    [
        ("rayleigh", 16, {}, None, False),
        ("rayleigh", 31, {}, None, False),
        ("rayleigh", 32, {}, None, True),
        ("logistic", 10, {"n_samples": 100}, None, False),
        ("logistic", 16, {"n_samples": 127}, None, False),
        ("logistic", 16, {"n_samples": 128}, None, True),
        ("logistic", 16, {"n_samples": 256}, 32, False),
        ("logistic", 16, {"n_samples": 256}, 128, True),
        ("logistic", 64, {"n_samples": 32}, None, True),
    ],
)
def test_wide_loop_chosen_from_loop_lengths(loss, dim, options, batch, wide):
    toy = L.make_loss(loss, dim=dim, **options)
    assert S._wide_vectors_pay(toy, batch or 0) is wide


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_wide_and_default_loops_compute_the_same_run(monkeypatch, optimizer):
    """The two compilations differ only in the order of reassociated sums."""
    toy = L.make_loss("logistic", dim=16, n_samples=256, seed=3)
    runs = {}
    for wide in (False, True, True):
        monkeypatch.setattr(S, "_wide_vectors_pay", lambda toy, nb, wide=wide: wide)
        tr = S.simulate(toy, optimizer=optimizer, lr=0.1, wd=1e-2, steps=300, seed=1)
        if wide in runs:  # same loop, same seed: the same bits
            assert np.array_equal(tr.rho, runs[wide].rho)
            assert np.array_equal(tr.loss, runs[wide].loss)
        runs[wide] = tr
    np.testing.assert_allclose(runs[True].rho, runs[False].rho, rtol=1e-12)
    np.testing.assert_allclose(runs[True].loss, runs[False].loss, rtol=1e-12)
