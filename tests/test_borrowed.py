"""Borrowed array views (siflow._borrowed): the same memory, shape and strides."""

import numpy as np
from numba import njit

from siflow._borrowed import borrowed


@njit
def _scale_rows_through_borrowed(a, k):  # pragma: no cover - numba
    v = borrowed(a)
    total = 0.0
    for t in range(v.shape[0]):
        row = v[t]  # a view of a borrowed view
        for j in range(row.size):
            row[j] *= k
            total += row[j]
    return total, v.shape[0], v.shape[1], v.strides[0], v.strides[1]


def test_borrowed_view_reads_and_writes_the_callers_memory():
    a = np.arange(12.0).reshape(3, 4)
    total, n0, n1, s0, s1 = _scale_rows_through_borrowed(a, 2.0)
    np.testing.assert_array_equal(a, 2.0 * np.arange(12.0).reshape(3, 4))
    assert total == 2.0 * sum(range(12))
    assert (n0, n1, s0, s1) == (3, 4, 32, 8)


def test_borrowed_view_of_a_strided_array_keeps_its_strides():
    base = np.arange(40.0).reshape(5, 8)
    a = base[::2, 1::3]  # 3 x 3, not contiguous
    expect = 3.0 * a
    total, n0, n1, s0, s1 = _scale_rows_through_borrowed(a, 3.0)
    np.testing.assert_array_equal(base[::2, 1::3], expect)
    assert total == expect.sum()
    assert (n0, n1, s0, s1) == (3, 3, 128, 24)
    assert base[1, 0] == 8.0  # rows outside the view untouched
