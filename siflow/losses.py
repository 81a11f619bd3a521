"""Toy scale-invariant (SI) losses on the sphere, as numba kernels.

Every toy is a function ``f`` of the direction only: ``L(w) = f(w/|w|)``, so
``L(cw) = L(w)`` for ``c > 0`` exactly (docs/theory.md §0). Each kernel evaluates the
toy's formula ``f`` at the unit vector ``u = w/|w|`` and turns it into the SI
quantities with the exact identities below (all exact, no expansion in ``lr*wd``):

* gradient ``grad L(w) = P g / rho`` with ``g = grad f(u)`` (ambient gradient of the
  formula), ``P = I - u u'`` and ``rho = |w|``; hence ``<grad L(w), w> = 0``;
* Hessian-vector product (derived by differentiating the gradient once more)::

      H(w) v = ( P Hf P v - (u.v) P g - (u.g) P v - (g.P v) u ) / rho**2

  with ``Hf = Hessian of f`` at ``u``; it satisfies ``H(w) w = -grad L(w)``;
* Riemannian Hessian of ``L`` restricted to the unit sphere at ``u``::

      Hess(u) = P Hf P - (u.g) P        (on the tangent space u-perp)

  the second term is the curvature correction of the sphere. It equals ``P H(u) P``
  for the SI extension, because the SI extension's ambient gradient is tangent;
  note that ``P Hf P`` alone (dropping ``(u.g)``) is wrong whenever the *formula*
  ``f`` has a radial gradient (Rayleigh: ``u.g = u'Au``);
* sharpness on the sphere ``S(w)`` = top eigenvalue of ``Hess(w/|w|)`` on the tangent
  space (the radial eigenvector, eigenvalue 0, is excluded).

Toys (``kind`` codes, kernels dispatch on them):

``rayleigh`` (:data:`RAYLEIGH`)
    ``L(w) = w'Aw / (2 w'w)`` with ``A = diag(spectrum)``; ``f(u) = u'Au/2``, ``g = Au``,
    ``Hf = A``. Minimum at the eigenvector of the smallest eigenvalue, where
    ``S = lam_max - lam_min`` (eigenvalues of ``P (A - lam_min) P``). Optional quartic
    term ``(c/4) p^2``, ``p = u'(A - lam_min)u`` (:func:`rayleigh`): same minimum and
    ``S``, curvature growing away from the minimum. A quadratic on the sphere
    destabilizes gently (its curvature drops with the amplitude, so a small 2-cycle
    settles at the edge of stability); periodic norm jumps need a very small noise
    floor (~1e-12) and stay small (~7%).
``logistic`` (:data:`LOGISTIC`)
    SI logistic regression with temperature ``s`` on separable data ``(x_i, y_i)``:
    ``L(w) = mean_i log(1 + exp(-s y_i x_i.w/|w|))``; data are stored as rows
    ``z_i = y_i x_i``. ``g = -(s/n) sum sigma(-m_i) z_i`` and
    ``Hf = (s^2/n) sum sigma(m_i) sigma(-m_i) z_i z_i'`` with margins ``m_i = s z_i.u``.
    Loss and sharpness shrink as the margin grows (like a network's cross-entropy).
    The minimizer (L-BFGS, then Riemannian Newton on the numpy twins) and its
    sharpness are computed at construction. With the defaults (dim 10, 100 points,
    ``s = 10``, data seed 0) SGD at ``lr=0.1, wd=1e-3`` destabilizes every ~4000
    steps with ~1.5x norm jumps: the default toy of ``python -m siflow.simulate``.
    Minibatches: ``idx[:nb]`` selects the rows of a step (``nb = 0``: all rows).
``spiral`` (:data:`SPIRAL`)
    Constant-gradient-norm SI loss in 2-D: ``L(w) = G atan2(w_2, w_1)`` (angle of ``w``,
    wrapped to ``(-pi, pi]``). Its gradient ``G (-w_2, w_1)/|w|^2`` is smooth and
    tangent, with ``g~ = |w| |grad L| = G`` at every step, so the norm recursion of
    SGD+WD is exactly ``rho^2 <- (1-lr wd)^2 rho^2 + lr^2 G^2/rho^2`` (docs/theory.md §1).
    Zero Riemannian Hessian (``S = 0``): the direction rotates at a constant rate.
``flat`` (:data:`FLAT`)
    ``L = 0``; with isotropic noise (below) it is the ideal-gas model of docs/theory.md §6.

Noise (the noisy variant, docs/theory.md §6): :func:`add_tangent_noise` adds ``P eps`` with
``eps = sigma xi / |w|``, ``xi ~ N(0, I)`` drawn outside the kernel, to any toy's
gradient; minibatch noise of ``logistic`` comes from ``idx``.

Each numba kernel has a plain-numpy twin (suffix ``_numpy``) used by the tests.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numpy.typing import ArrayLike, NDArray

from siflow._validate import (
    check_finite,
    check_positive_int,
    check_whole,
    nonnegative_number,
    positive_number,
)

__all__ = [
    "RAYLEIGH",
    "LOGISTIC",
    "SPIRAL",
    "FLAT",
    "KINDS",
    "SILoss",
    "LOSSES",
    "make_loss",
    "check_options",
    "OPTIONS",
    "MAX_TEMPERATURE",
    "rayleigh",
    "logistic",
    "spiral",
    "flat",
    "value_and_grad",
    "hvp",
    "riemannian_hessian",
    "sharpness",
    "add_tangent_noise",
    "value_and_grad_numpy",
    "hvp_numpy",
    "riemannian_hessian_numpy",
    "sharpness_numpy",
    "add_tangent_noise_numpy",
]

RAYLEIGH = 0
LOGISTIC = 1
SPIRAL = 2
FLAT = 3

#: Kind codes by name.
KINDS: dict[str, int] = {"rayleigh": RAYLEIGH, "logistic": LOGISTIC, "spiral": SPIRAL, "flat": FLAT}

#: LLVM flags of the simulation loop's kernels (``_*_step``, ``_*_fast``, ``_*_at``): sums
#: may be reordered and vectorised and multiply-adds fused; results move by float64
#: round-off only. Not ``nnan``/``ninf``: the loop tests ``isfinite``. The public kernels
#: (:func:`value_and_grad`, :func:`hvp`, :func:`add_tangent_noise`) keep strict IEEE order,
#: so that e.g. ``grad L(c w) = grad L(w)/c`` holds to the last bits of a tiny gradient.
_FAST = {"reassoc", "contract", "nsz"}

_NO_IDX = np.zeros(0, dtype=np.int64)
_NO_DATA = np.zeros((0, 0), dtype=np.float64)


# --------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def _formula_value_grad(kind, u, params, data, idx, nb, g):  # pragma: no cover - numba
    """Value ``f(u)`` of the toy's formula and its ambient gradient into ``g``."""
    d = u.size
    if kind == RAYLEIGH:
        c = params[d]
        lmin = params[d + 1]
        q = 0.0
        p = 0.0
        for i in range(d):
            a = params[i] * u[i]
            g[i] = a
            q += a * u[i]
            p += (params[i] - lmin) * u[i] * u[i]
        if c != 0.0:
            for i in range(d):
                g[i] += c * p * (params[i] - lmin) * u[i]
        return 0.5 * q + 0.25 * c * p * p
    elif kind == LOGISTIC:
        s = params[0]
        for j in range(d):
            g[j] = 0.0
        m = nb if nb > 0 else data.shape[0]
        total = 0.0
        for k in range(m):
            i = idx[k] if nb > 0 else k
            z = 0.0
            for j in range(d):
                z += data[i, j] * u[j]
            z *= s
            if z > 0.0:
                e = math.exp(-z)
                total += math.log1p(e)
                sm = e / (1.0 + e)
            else:
                e = math.exp(z)
                total += -z + math.log1p(e)
                sm = 1.0 / (1.0 + e)
            c = -s * sm
            for j in range(d):
                g[j] += c * data[i, j]
        inv = 1.0 / m
        for j in range(d):
            g[j] *= inv
        return total * inv
    elif kind == SPIRAL:
        big_g = params[0]
        r2 = u[0] * u[0] + u[1] * u[1]
        for j in range(d):
            g[j] = 0.0
        g[0] = -big_g * u[1] / r2
        g[1] = big_g * u[0] / r2
        return big_g * math.atan2(u[1], u[0])
    else:
        for j in range(d):
            g[j] = 0.0
        return 0.0


@njit(cache=True, error_model="numpy")
def _formula_hvp(kind, u, v, params, data, idx, nb, out):  # pragma: no cover - numba
    """Ambient Hessian of the toy's formula at ``u`` times ``v`` into ``out``."""
    d = u.size
    if kind == RAYLEIGH:
        c = params[d]
        lmin = params[d + 1]
        p = 0.0
        bv = 0.0
        for i in range(d):
            b = params[i] - lmin
            p += b * u[i] * u[i]
            bv += b * u[i] * v[i]
        for i in range(d):
            b = params[i] - lmin
            out[i] = params[i] * v[i] + c * (p * b * v[i] + 2.0 * bv * b * u[i])
    elif kind == LOGISTIC:
        s = params[0]
        for j in range(d):
            out[j] = 0.0
        m = nb if nb > 0 else data.shape[0]
        for k in range(m):
            i = idx[k] if nb > 0 else k
            z = 0.0
            zv = 0.0
            for j in range(d):
                z += data[i, j] * u[j]
                zv += data[i, j] * v[j]
            z *= s
            e = math.exp(-abs(z))
            c = s * s * e / ((1.0 + e) * (1.0 + e)) * zv
            for j in range(d):
                out[j] += c * data[i, j]
        inv = 1.0 / m
        for j in range(d):
            out[j] *= inv
    elif kind == SPIRAL:
        big_g = params[0]
        for j in range(d):
            out[j] = 0.0
        r2 = u[0] * u[0] + u[1] * u[1]
        c = big_g / (r2 * r2)
        a = 2.0 * u[0] * u[1]
        b = u[1] * u[1] - u[0] * u[0]
        out[0] = c * (a * v[0] + b * v[1])
        out[1] = c * (b * v[0] - a * v[1])
    else:
        for j in range(d):
            out[j] = 0.0


@njit(cache=True, error_model="numpy")
def _si_value_grad_at(kind, w, rho, params, data, idx, nb, u, out):  # pragma: no cover - numba
    """:func:`_si_value_grad` with ``rho = |w|`` already known."""
    d = w.size
    for i in range(d):
        u[i] = w[i] / rho
    f = _formula_value_grad(kind, u, params, data, idx, nb, out)
    ug = 0.0
    for i in range(d):
        ug += u[i] * out[i]
    for i in range(d):
        out[i] = (out[i] - ug * u[i]) / rho
    return f


# ------------------------------------------------ vectorisable exp and log1p (logistic)
# The simulation's logistic kernel needs exp(-|m|) for every sample and the sum of
# log1p of those. numba's math.exp/math.log1p are scalar libm calls (no SVML in this
# numba build), so a loop over samples calling them is not vectorised. ``_exp_nonpos``
# is plain arithmetic that LLVM vectorises across samples, compiled with ``contract``
# only (no reassociation), because its range reduction relies on exact floating-point
# steps; LLVM inlines it into the vectorised loop keeping its own flags. Its error
# bound (tests/test_losses.py checks it against numpy on 10^6 points): within 1 ulp of
# numpy.exp on x <= 0 (subnormal results included). The sum of log1p needs one libm
# log1p per 512 samples (``_sum_log1p``).


@intrinsic
def _f64_to_bits(typingctx, x):  # pragma: no cover - compiled
    """The IEEE bits of a float64 as an int64 (a no-op for the CPU)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_to_f64(typingctx, k):  # pragma: no cover - compiled
    """The float64 whose IEEE bits are the int64 ``k``."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


_INV_LN2 = 1.4426950408889634
#: ln 2 split so that ``k * _LN2_HI`` is exact for |k| < 2^11 (fdlibm's split)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits
_SHIFT = 6755399441055744.0
_SHIFT_BITS = 0x4338000000000000
# Polynomial coefficients: Chebyshev interpolants (degree + 1 Chebyshev nodes, solved in
# 60-digit arithmetic with mpmath, rounded to float64).
# exp(r) on |r| <= ln2/2: degree 11 (error 4e-18 before rounding)
_E2 = 0.5000000000000019
_E3 = 0.1666666666666668
_E4 = 0.0416666666664881
_E5 = 0.008333333333319601
_E6 = 0.0013888888952314775
_E7 = 0.00019841269890047113
_E8 = 2.4801485482328494e-05
_E9 = 2.755724091857897e-06
_E10 = 2.763263963904103e-07
_E11 = 2.5110037605963777e-08


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _exp_nonpos(x):  # pragma: no cover - numba
    """``exp(x)`` for ``x <= 0`` in branch-free arithmetic (vectorisable), within 1 ulp.

    ``x = k ln2 + r`` with ``|r| <= ln2/2`` (Cody-Waite), ``exp(r)`` by a polynomial,
    times ``2^k`` built from its bits in two factors (so subnormal results round once).
    """
    xc = -746.0 if x < -746.0 else x  # (NaN stays NaN)
    t = xc * _INV_LN2 + _SHIFT
    k = _f64_to_bits(t) - _SHIFT_BITS
    kf = t - _SHIFT
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = _E11
    p = p * r + _E10
    p = p * r + _E9
    p = p * r + _E8
    p = p * r + _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + 1.0
    p = p * r + 1.0
    k1 = k >> 1
    # for x < -745.133 (ln of half the smallest subnormal) the product rounds to 0:
    # p < 2 and 2^k <= 2^-1076 there
    return p * _bits_to_f64((k1 + 1023) << 52) * _bits_to_f64((k - k1 + 1023) << 52)


#: Halving levels of :func:`_sum_log1p`: each product covers at most ``2^9`` entries,
#: so ``prod(1 + e_i) <= 2^512`` stays finite.
_PRODUCT_LEVELS = 9


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _sum_log1p(v):  # pragma: no cover - numba
    """``sum_i log(1 + v[i])`` for ``0 <= v <= 1``; overwrites ``v``.

    One logarithm per 512 entries instead of one per entry: ``sum log(1 + e_i) =
    log1p(P)`` with ``P = prod(1 + e_i) - 1``, built by halving the entries pairwise,
    each pair by ``(1 + a)(1 + b) - 1 = a + b (1 + a)`` (vectorised over the pairs), for
    at most :data:`_PRODUCT_LEVELS` levels; ``math.log1p`` of each of the
    ``ceil(m / 512)`` products left. Every term is positive, so each level adds at most
    about two roundings to a product's relative error: with ``l`` levels it stays below
    about ``2 l`` ulp, and ``log1p`` does not enlarge a relative error (its condition
    number ``P/((1 + P) log1p(P))`` is at most 1). Tested against ``math.fsum`` of
    numpy's ``log1p`` (``tests/test_losses.py -k sum_log1p``).

    Compiled on its own, not inlined into its four callers (inlined, it added 2.4 s to
    the first compilation of the simulation loop), and with ``contract`` only: without
    reassociation its sums come out the same wherever it is compiled. It takes the
    whole array (callers pass a view) so that every index is provably non-negative:
    with an offset argument numba's negative-index handling kept LLVM from
    vectorising the halving (4x slower at 256 entries).
    """
    k = v.size
    levels = 0
    while k > 1 and levels < _PRODUCT_LEVELS:
        h = k >> 1
        for q in range(h):
            a = v[q]
            v[q] = a + v[q + h] * (1.0 + a)
        if k & 1:
            v[h] = v[k - 1]
        k -= h
        levels += 1
    total = 0.0
    for q in range(k):
        total += math.log1p(v[q])
    return total


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _softplus_weights(s, buf, m):  # pragma: no cover - numba
    """``buf[:m]`` margins ``z_i.u`` -> gradient weights ``-s sigma(-s z_i.u)``, in place.

    Returns the sum of the loss terms ``log(1 + exp(-m_i))``, ``m_i = s z_i.u``, from one
    exponential per sample, ``e = exp(-|m_i|)``: the term is ``max(-m_i, 0) + log1p(e)``
    and ``sigma(-m_i)`` is ``e/(1 + e)`` for ``m_i > 0``, else ``1/(1 + e)``. Three
    vectorised passes over the samples: the exponentials into ``buf[m:2m]``; the weights
    and ``sum max(-m_i, 0)``; the sum of ``log1p(e)`` from a product
    (:func:`_sum_log1p`, which overwrites the exponentials). ``buf`` holds at least
    ``2m`` entries.

    Inlined into its callers: called as a compiled function of its own, the loss sum
    came out 1 ulp apart between a process that had just compiled the simulation loop
    and one that loaded it from numba's cache
    (``tests/test_simulate.py -k fresh_compile``).
    """
    for q in range(m):
        buf[m + q] = _exp_nonpos(-abs(s * buf[q]))
    total = 0.0
    for q in range(m):
        z = s * buf[q]
        e = buf[m + q]
        total += max(-z, 0.0)
        buf[q] = -s * ((e if z > 0.0 else 1.0) / (1.0 + e))
    return total + _sum_log1p(buf[m : 2 * m])


#: Rows per block of the row-wise logistic kernel: margins, then the block's weights
#: (vectorised), then its gradient terms, while the rows are still in cache.
_BLOCK = 64


#: Dimension from which the row-wise logistic kernel works four rows at a time
#: (:func:`_logistic_rows_l1`): four rows of 512 doubles or more fill half of a 32 KiB L1
#: cache, and a block of :data:`_BLOCK` rows would be read again from L2.
_L1_DIM = 512


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _logistic_rows_l1(s, u, data, idx, nb, g, buf):  # pragma: no cover - numba
    """:func:`_logistic_rows` four rows at a time, for long rows (``d >=`` :data:`_L1_DIM`).

    Per four samples: their margins in one pass over ``u`` (each load of ``u[j]`` used
    by the four rows), their weights, then their gradient terms in one pass over ``g``
    while the four rows are still in L1; the rows are read once from beyond L1 (a block
    of :data:`_BLOCK` rows is read a second time from L2). ``buf``: at least 8 entries.
    """
    d = u.size
    for j in range(d):
        g[j] = 0.0
    m = nb if nb > 0 else data.shape[0]
    total = 0.0
    for k in range(0, m - m % 4, 4):
        i0 = idx[k] if nb > 0 else k
        i1 = idx[k + 1] if nb > 0 else k + 1
        i2 = idx[k + 2] if nb > 0 else k + 2
        i3 = idx[k + 3] if nb > 0 else k + 3
        a0 = a1 = a2 = a3 = 0.0
        for j in range(d):
            uj = u[j]
            a0 += data[i0, j] * uj
            a1 += data[i1, j] * uj
            a2 += data[i2, j] * uj
            a3 += data[i3, j] * uj
        buf[0], buf[1], buf[2], buf[3] = a0, a1, a2, a3
        total += _softplus_weights(s, buf, 4)
        c0, c1, c2, c3 = buf[0], buf[1], buf[2], buf[3]
        for j in range(d):
            g[j] += (c0 * data[i0, j] + c1 * data[i1, j]) + (c2 * data[i2, j] + c3 * data[i3, j])
    for k in range(m - m % 4, m):
        i = idx[k] if nb > 0 else k
        a = 0.0
        for j in range(d):
            a += data[i, j] * u[j]
        buf[0] = a
        total += _softplus_weights(s, buf, 1)
        c = buf[0]
        for j in range(d):
            g[j] += c * data[i, j]
    inv = 1.0 / m
    for j in range(d):
        g[j] *= inv
    return total * inv


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _logistic_rows(s, u, data, idx, nb, g, buf):  # pragma: no cover - numba
    """Logistic loss and formula gradient, rows of ``data`` in blocks (any batch).

    Per block of :data:`_BLOCK` samples: their margins (one dot product per row), their
    weights (vectorised), then their gradient terms four rows per pass over ``g``, while
    the rows are still in cache. Rows of :data:`_L1_DIM` entries or more go four at a
    time (:func:`_logistic_rows_l1`). ``buf``: scratch of at least ``2 B`` entries.
    """
    d = u.size
    if d >= _L1_DIM:
        return _logistic_rows_l1(s, u, data, idx, nb, g, buf)
    for j in range(d):
        g[j] = 0.0
    m = nb if nb > 0 else data.shape[0]
    total = 0.0
    for k0 in range(0, m, _BLOCK):
        kb = min(_BLOCK, m - k0)
        for q in range(kb):
            i = idx[k0 + q] if nb > 0 else k0 + q
            a = 0.0
            for j in range(d):
                a += data[i, j] * u[j]
            buf[q] = a
        total += _softplus_weights(s, buf, kb)
        for q in range(0, kb - kb % 4, 4):
            k = k0 + q
            i0 = idx[k] if nb > 0 else k
            i1 = idx[k + 1] if nb > 0 else k + 1
            i2 = idx[k + 2] if nb > 0 else k + 2
            i3 = idx[k + 3] if nb > 0 else k + 3
            c0, c1, c2, c3 = buf[q], buf[q + 1], buf[q + 2], buf[q + 3]
            for j in range(d):
                g[j] += (c0 * data[i0, j] + c1 * data[i1, j]) + (
                    c2 * data[i2, j] + c3 * data[i3, j]
                )
        for q in range(kb - kb % 4, kb):
            i = idx[k0 + q] if nb > 0 else k0 + q
            c = buf[q]
            for j in range(d):
                g[j] += c * data[i, j]
    inv = 1.0 / m
    for j in range(d):
        g[j] *= inv
    return total * inv


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _column_margins(xt, u, buf):  # pragma: no cover - numba
    """``buf[:n] = X u`` from the column-major data ``xt`` (``d x n``), vectorised over samples.

    The first 16 (or 8) columns set the margins, then eight columns are added per pass
    over the samples: the same sums, in the same order, as adding every block to zeros,
    without the pass that zeroes them.
    """
    d, n = xt.shape
    j = 0
    if d >= 16:
        u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
        u4, u5, u6, u7 = u[4], u[5], u[6], u[7]
        u8, u9, u10, u11 = u[8], u[9], u[10], u[11]
        u12, u13, u14, u15 = u[12], u[13], u[14], u[15]
        for i in range(n):
            buf[i] = (
                ((xt[0, i] * u0 + xt[1, i] * u1) + (xt[2, i] * u2 + xt[3, i] * u3))
                + ((xt[4, i] * u4 + xt[5, i] * u5) + (xt[6, i] * u6 + xt[7, i] * u7))
            ) + (
                ((xt[8, i] * u8 + xt[9, i] * u9) + (xt[10, i] * u10 + xt[11, i] * u11))
                + ((xt[12, i] * u12 + xt[13, i] * u13) + (xt[14, i] * u14 + xt[15, i] * u15))
            )
        j = 16
    elif d >= 8:
        u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
        u4, u5, u6, u7 = u[4], u[5], u[6], u[7]
        for i in range(n):
            buf[i] = ((xt[0, i] * u0 + xt[1, i] * u1) + (xt[2, i] * u2 + xt[3, i] * u3)) + (
                (xt[4, i] * u4 + xt[5, i] * u5) + (xt[6, i] * u6 + xt[7, i] * u7)
            )
        j = 8
    else:
        for i in range(n):
            buf[i] = 0.0
    while j + 8 <= d:
        u0, u1, u2, u3 = u[j], u[j + 1], u[j + 2], u[j + 3]
        u4, u5, u6, u7 = u[j + 4], u[j + 5], u[j + 6], u[j + 7]
        for i in range(n):
            buf[i] += (
                (xt[j, i] * u0 + xt[j + 1, i] * u1) + (xt[j + 2, i] * u2 + xt[j + 3, i] * u3)
            ) + ((xt[j + 4, i] * u4 + xt[j + 5, i] * u5) + (xt[j + 6, i] * u6 + xt[j + 7, i] * u7))
        j += 8
    while j < d:
        uj = u[j]
        for i in range(n):
            buf[i] += xt[j, i] * uj
        j += 1


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _logistic_columns(s, xt, u, g, buf):  # pragma: no cover - numba
    """Full-batch logistic loss and formula gradient from the column-major data ``xt``.

    ``xt[j, i] = z_i[j]`` (``d x n``): the margins ``X u`` by :func:`_column_margins`,
    the weights vectorised over samples, and the gradient entries ``g_j = c . xt[j] / n``
    as contiguous dot products, four columns per pass over the weights ``c``. The data
    are read twice per step (from cache: only small data are stored this way). ``buf``:
    scratch of at least ``2 n`` entries.
    """
    d, n = xt.shape
    _column_margins(xt, u, buf)
    total = _softplus_weights(s, buf, n)
    inv = 1.0 / n
    j = 0
    while j + 4 <= d:
        a0 = a1 = a2 = a3 = 0.0
        for i in range(n):
            ci = buf[i]
            a0 += ci * xt[j, i]
            a1 += ci * xt[j + 1, i]
            a2 += ci * xt[j + 2, i]
            a3 += ci * xt[j + 3, i]
        g[j] = a0 * inv
        g[j + 1] = a1 * inv
        g[j + 2] = a2 * inv
        g[j + 3] = a3 * inv
        j += 4
    while j < d:
        a = 0.0
        for i in range(n):
            a += buf[i] * xt[j, i]
        g[j] = a * inv
        j += 1
    return total * inv


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _logistic_value_grad_fast(params, u, data, idx, nb, g, xt, buf):  # pragma: no cover - numba
    """The ``logistic`` branch of :func:`_formula_value_grad` for the simulation loop.

    One exponential per sample (``e = exp(-|m|)`` gives both the loss term and the
    gradient weight), evaluated by vectorisable arithmetic (:func:`_softplus_weights`);
    sums reordered. Full batch with the column-major copy of the data in
    ``params[1:]`` (small data, see :class:`SILoss`; ``xt`` from :func:`_step_scratch`):
    :func:`_logistic_columns`; otherwise :func:`_logistic_rows`. No allocation: ``buf``
    is the scratch vector of :func:`_step_scratch`.
    """
    if nb == 0 and xt.size > 0:
        return _logistic_columns(params[0], xt, u, g, buf)
    return _logistic_rows(params[0], u, data, idx, nb, g, buf)


@njit(cache=True, error_model="numpy")
def _step_scratch(kind, params, data):  # pragma: no cover - numba
    """The arrays :func:`_si_value_grad_step` takes besides the toy's, made once per run.

    ``xt``: the column-major copy of the data that a small logistic toy keeps in
    ``params[1:]`` (see :class:`SILoss`), as a ``d x n`` view, or an empty array when
    there is none; ``buf``: a scratch vector for the logistic kernels (``2 max(n, B)``
    entries, ``B`` = :data:`_BLOCK`). Made once, not per step: a per-step view and
    allocation cost more than the whole step's arithmetic at ``n = 32``.
    """
    n, d = data.shape
    buf = np.empty(2 * max(n, _BLOCK))
    if kind == LOGISTIC and params.size == 1 + n * d:
        return params[1:].reshape((d, n)), buf
    return params[:0].reshape((0, 0)), buf


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _si_value_grad_step(
    kind, w, r2, rho, params, data, idx, nb, u, out, xt, buf
):  # pragma: no cover
    """Loss and SI gradient for the simulation loop (``r2 = |w|^2``, ``rho = |w|`` known).

    ``xt`` and ``buf`` come from :func:`_step_scratch`. Inlined into the loop (``inline=
    "always"``, as are the logistic kernels it calls): a compiled call takes a
    reference to each of its array arguments and releases it on return, two atomic
    operations per array, which took a sixth of a step at ``n = 32`` (``perf``). Inlined
    code is compiled with the caller's flags: call it from functions compiled with
    ``fastmath=_FAST, error_model="numpy"``, as the loop is.

    The same formulas as :func:`_si_value_grad_at` with ``1/rho`` multiplied instead of
    divided (round-off only). The Rayleigh toy without quartic term takes two passes
    over ``w``, from the exact identity ``grad L(w) = (a_i - q) w_i / |w|^2`` with
    ``q = sum_i a_i w_i^2 / |w|^2 = 2 L(w)``.
    """
    d = w.size
    if kind == RAYLEIGH and params[d] == 0.0:
        s = 0.0
        for i in range(d):
            s += params[i] * w[i] * w[i]
        q = s / r2
        inv2 = 1.0 / r2
        for i in range(d):
            out[i] = (params[i] - q) * w[i] * inv2
        return 0.5 * q
    inv = 1.0 / rho
    for i in range(d):
        u[i] = w[i] * inv
    if kind == LOGISTIC:
        f = _logistic_value_grad_fast(params, u, data, idx, nb, out, xt, buf)
    else:
        f = _formula_value_grad(kind, u, params, data, idx, nb, out)
    ug = 0.0
    for i in range(d):
        ug += u[i] * out[i]
    for i in range(d):
        out[i] = (out[i] - ug * u[i]) * inv
    return f


@njit(cache=True, error_model="numpy")
def _si_value_grad(kind, w, params, data, idx, nb, u, out):  # pragma: no cover - numba
    """Loss at ``w`` and its SI gradient ``P g / rho`` into ``out`` (``u`` is scratch)."""
    r2 = 0.0
    for i in range(w.size):
        r2 += w[i] * w[i]
    return _si_value_grad_at(kind, w, math.sqrt(r2), params, data, idx, nb, u, out)


@njit(cache=True, error_model="numpy")
def value_and_grad(
    kind: int, w: NDArray, params: NDArray, data: NDArray, idx: NDArray, nb: int, out: NDArray
) -> float:  # pragma: no cover - numba
    """Loss value at ``w``; writes the SI gradient ``grad L(w)`` into ``out``.

    Exact: ``grad L(w) = (I - u u') grad f(u) / |w|`` with ``u = w/|w|``.
    """
    u = np.empty_like(w)
    return _si_value_grad(kind, w, params, data, idx, nb, u, out)


@njit(cache=True, error_model="numpy")
def hvp(
    kind: int,
    w: NDArray,
    v: NDArray,
    params: NDArray,
    data: NDArray,
    idx: NDArray,
    nb: int,
    out: NDArray,
) -> None:  # pragma: no cover - numba
    """Euclidean Hessian of the SI loss at ``w`` times ``v`` into ``out`` (exact formula)."""
    d = w.size
    r2 = 0.0
    for i in range(d):
        r2 += w[i] * w[i]
    rho = math.sqrt(r2)
    u = w / rho
    g = np.empty(d)
    _formula_value_grad(kind, u, params, data, idx, nb, g)
    uv = 0.0
    ug = 0.0
    for i in range(d):
        uv += u[i] * v[i]
        ug += u[i] * g[i]
    pv = v - uv * u
    hpv = np.empty(d)
    _formula_hvp(kind, u, pv, params, data, idx, nb, hpv)
    uh = 0.0
    gpv = 0.0
    for i in range(d):
        uh += u[i] * hpv[i]
        gpv += g[i] * pv[i]
    for i in range(d):
        phpv = hpv[i] - uh * u[i]
        pg = g[i] - ug * u[i]
        out[i] = (phpv - uv * pg - ug * pv[i] - gpv * u[i]) / r2


@njit(cache=True, error_model="numpy")
def riemannian_hessian(
    kind: int, w: NDArray, params: NDArray, data: NDArray, idx: NDArray, nb: int
) -> NDArray:  # pragma: no cover - numba
    """Dense Riemannian Hessian ``P Hf P - (u.g) P`` on the unit sphere at ``w/|w|``.

    Built from ``dim`` Hessian-vector products of the formula, with ``a = Hf u`` and
    ``s = u.a``: ``P Hf P = Hf - u a' - a u' + s u u'`` (loops only, no BLAS).
    """
    d = w.size
    r2 = 0.0
    for i in range(d):
        r2 += w[i] * w[i]
    rho = math.sqrt(r2)
    u = np.empty(d)
    for i in range(d):
        u[i] = w[i] / rho
    g = np.empty(d)
    _formula_value_grad(kind, u, params, data, idx, nb, g)
    ug = 0.0
    for i in range(d):
        ug += u[i] * g[i]
    hf = np.empty((d, d))
    e = np.zeros(d)
    col = np.empty(d)
    for j in range(d):
        e[j] = 1.0
        _formula_hvp(kind, u, e, params, data, idx, nb, col)
        e[j] = 0.0
        for i in range(d):
            hf[i, j] = col[i]
    a = np.zeros(d)
    for i in range(d):
        for j in range(d):
            a[i] += 0.5 * (hf[i, j] + hf[j, i]) * u[j]
    s = 0.0
    for i in range(d):
        s += u[i] * a[i]
    r = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            hij = 0.5 * (hf[i, j] + hf[j, i])
            pij = (1.0 if i == j else 0.0) - u[i] * u[j]
            r[i, j] = hij - u[i] * a[j] - a[i] * u[j] + s * u[i] * u[j] - ug * pij
    return r


@njit(cache=True, error_model="numpy")
def _jacobi_eigvalsh(a):  # pragma: no cover - numba
    """Eigenvalues (ascending) of the symmetric matrix ``a`` by cyclic Jacobi rotations.

    ``a`` is overwritten. Converges quadratically; stops when the off-diagonal
    Frobenius norm is below ``1e-18`` of the total (plain loops: compiles fast,
    no LAPACK).
    """
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += a[i, j] * a[i, j]
    for _sweep in range(100):
        off = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                off += a[i, j] * a[i, j]
        if off <= 1e-36 * total:
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(n):
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(n):
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
    ev = np.empty(n)
    for i in range(n):
        ev[i] = a[i, i]
    return np.sort(ev)


@njit(cache=True, error_model="numpy")
def sharpness(
    kind: int, w: NDArray, params: NDArray, data: NDArray, idx: NDArray, nb: int
) -> float:  # pragma: no cover - numba
    """Top eigenvalue of the Riemannian Hessian on the tangent space at ``w/|w|``.

    The radial direction (eigenvalue 0 of ``P (.) P``) is pushed below the tangent
    spectrum by subtracting ``c u u'`` with ``c = 1 + sum|R_ij|`` (above the
    spectral radius); the top eigenvalue of the rest is found by Jacobi rotations.
    """
    d = w.size
    r = riemannian_hessian(kind, w, params, data, idx, nb)
    r2 = 0.0
    for i in range(d):
        r2 += w[i] * w[i]
    c = 1.0
    for i in range(d):
        for j in range(d):
            c += abs(r[i, j])
    for i in range(d):
        for j in range(d):
            r[i, j] -= c * w[i] * w[j] / r2
    ev = _jacobi_eigvalsh(r)
    return ev[d - 1]


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _add_tangent_noise_at(w, r2, grad, xi, sigma):  # pragma: no cover - numba
    """:func:`add_tangent_noise` for the simulation loop (``r2 = |w|^2`` known, reordered sums,
    ``sigma/|w|`` multiplied: round-off only)."""
    d = w.size
    wx = 0.0
    for i in range(d):
        wx += w[i] * xi[i]
    c = wx / r2
    k = sigma / math.sqrt(r2)
    for i in range(d):
        grad[i] += k * (xi[i] - c * w[i])


@njit(cache=True, error_model="numpy")
def add_tangent_noise(
    w: NDArray, grad: NDArray, xi: NDArray, sigma: float
) -> None:  # pragma: no cover - numba
    """``grad += P eps`` with ``eps = sigma xi / |w|`` (docs/theory.md §6), in place."""
    d = w.size
    r2 = 0.0
    wx = 0.0
    for i in range(d):
        r2 += w[i] * w[i]
        wx += w[i] * xi[i]
    rho = math.sqrt(r2)
    c = wx / r2
    for i in range(d):
        grad[i] += sigma * (xi[i] - c * w[i]) / rho


# --------------------------------------------------------------------------- numpy twins
def _rows(data: NDArray[np.float64], idx: NDArray[np.int64], nb: int) -> NDArray[np.float64]:
    return data[idx[:nb]] if nb > 0 else data


def _formula_value_grad_numpy(
    kind: int, u: NDArray, params: NDArray, data: NDArray, idx: NDArray, nb: int
) -> tuple[float, NDArray[np.float64]]:
    if kind == RAYLEIGH:
        d = u.size
        lam, c, lmin = params[:d], params[d], params[d + 1]
        b = lam - lmin
        p = float(b @ (u * u))
        return 0.5 * float(u @ (lam * u)) + 0.25 * c * p * p, lam * u + c * p * b * u
    if kind == LOGISTIC:
        s = params[0]
        z = _rows(data, idx, nb)
        m = s * (z @ u)
        value = float(np.mean(np.logaddexp(0.0, -m)))
        e = np.exp(-np.abs(m))
        sm = np.where(m > 0.0, e, 1.0) / (1.0 + e)  # sigma(-m), accurate when tiny
        return value, -s * (sm @ z) / z.shape[0]
    if kind == SPIRAL:
        big_g = params[0]
        r2 = u[0] ** 2 + u[1] ** 2
        g = np.zeros_like(u)
        g[0], g[1] = -big_g * u[1] / r2, big_g * u[0] / r2
        return big_g * math.atan2(u[1], u[0]), g
    return 0.0, np.zeros_like(u)


def _formula_hessian_numpy(
    kind: int, u: NDArray, params: NDArray, data: NDArray, idx: NDArray, nb: int
) -> NDArray[np.float64]:
    d = u.size
    if kind == RAYLEIGH:
        lam, c, lmin = params[:d], params[d], params[d + 1]
        b = lam - lmin
        p = float(b @ (u * u))
        return np.diag(lam + c * p * b) + 2.0 * c * np.outer(b * u, b * u)
    if kind == LOGISTIC:
        s = params[0]
        z = _rows(data, idx, nb)
        p = 1.0 / (1.0 + np.exp(-s * (z @ u)))
        return (s * s) * (z.T * (p * (1.0 - p))) @ z / z.shape[0]
    h = np.zeros((d, d))
    if kind == SPIRAL:
        r2 = u[0] ** 2 + u[1] ** 2
        c = params[0] / r2**2
        a, b = 2.0 * u[0] * u[1], u[1] ** 2 - u[0] ** 2
        h[:2, :2] = c * np.array([[a, b], [b, -a]])
    return h


def _args(idx: ArrayLike | None, nb: int | None) -> tuple[NDArray[np.int64], int]:
    idx_arr = _NO_IDX if idx is None else np.asarray(idx, dtype=np.int64)
    return idx_arr, (idx_arr.size if nb is None else int(nb))


def value_and_grad_numpy(
    kind: int,
    w: NDArray,
    params: NDArray,
    data: NDArray,
    idx: ArrayLike | None = None,
    nb: int | None = None,
) -> tuple[float, NDArray[np.float64]]:
    """Plain-numpy twin of :func:`value_and_grad`: ``(L(w), grad L(w))``."""
    idx_arr, nb = _args(idx, nb)
    rho = float(np.linalg.norm(w))
    u = w / rho
    f, g = _formula_value_grad_numpy(kind, u, params, data, idx_arr, nb)
    return f, (g - (u @ g) * u) / rho


def hvp_numpy(
    kind: int,
    w: NDArray,
    v: NDArray,
    params: NDArray,
    data: NDArray,
    idx: ArrayLike | None = None,
    nb: int | None = None,
) -> NDArray[np.float64]:
    """Plain-numpy twin of :func:`hvp` (dense Hessian of the formula)."""
    idx_arr, nb = _args(idx, nb)
    r2 = float(w @ w)
    u = w / math.sqrt(r2)
    _, g = _formula_value_grad_numpy(kind, u, params, data, idx_arr, nb)
    hf = _formula_hessian_numpy(kind, u, params, data, idx_arr, nb)
    p = np.eye(u.size) - np.outer(u, u)
    pv = p @ v
    return (p @ hf @ pv - (u @ v) * (p @ g) - (u @ g) * pv - (g @ pv) * u) / r2


def riemannian_hessian_numpy(
    kind: int,
    w: NDArray,
    params: NDArray,
    data: NDArray,
    idx: ArrayLike | None = None,
    nb: int | None = None,
) -> NDArray[np.float64]:
    """Plain-numpy twin of :func:`riemannian_hessian`."""
    idx_arr, nb = _args(idx, nb)
    u = w / np.linalg.norm(w)
    _, g = _formula_value_grad_numpy(kind, u, params, data, idx_arr, nb)
    hf = _formula_hessian_numpy(kind, u, params, data, idx_arr, nb)
    p = np.eye(u.size) - np.outer(u, u)
    r = p @ hf @ p - (u @ g) * p
    return 0.5 * (r + r.T)


def sharpness_numpy(
    kind: int,
    w: NDArray,
    params: NDArray,
    data: NDArray,
    idx: ArrayLike | None = None,
    nb: int | None = None,
) -> float:
    """Plain-numpy twin of :func:`sharpness`."""
    r = riemannian_hessian_numpy(kind, w, params, data, idx, nb)
    u = w / np.linalg.norm(w)
    c = 1.0 + np.sum(np.abs(r))
    return float(np.linalg.eigvalsh(r - c * np.outer(u, u))[-1])


def add_tangent_noise_numpy(
    w: NDArray, grad: NDArray, xi: NDArray, sigma: float
) -> NDArray[np.float64]:
    """Plain-numpy twin of :func:`add_tangent_noise` (returns a new array)."""
    r2 = float(w @ w)
    return grad + sigma * (xi - (w @ xi) / r2 * w) / math.sqrt(r2)


# --------------------------------------------------------------------------- Python API
#: Largest logistic data (bytes) stored a second time column by column for the
#: full-batch kernel: it reads the data twice per step (margins, then gradient), which
#: is fast while they stay in the L2 cache; larger data use the row-blocked kernel.
COLUMNS_MAX_BYTES = 512 * 1024


def _logistic_params(s: float, data: NDArray[np.float64]) -> NDArray[np.float64]:
    """``[s]``, followed by ``data.T.ravel()`` when the data are small (see :class:`SILoss`)."""
    if data.ndim != 2 or data.size == 0 or data.nbytes > COLUMNS_MAX_BYTES:
        return np.array([s])
    return np.concatenate([[s], np.ascontiguousarray(data.T, dtype=np.float64).ravel()])


@dataclass
class SILoss:
    """A toy SI loss: kernel code plus its parameters and data.

    Attributes
    ----------
    name : str
        Registry name (``"rayleigh"``, ``"logistic"``, ``"spiral"``, ``"flat"``).
    kind : int
        Kernel code (:data:`KINDS`).
    dim : int
        Dimension of ``w``.
    params : ndarray
        Kernel parameters (Rayleigh: the spectrum then ``[quartic, lam_min]``;
        logistic: ``[s]``; spiral: ``[G]``). For ``logistic`` with data of at most
        :data:`COLUMNS_MAX_BYTES`, construction appends ``data.T.ravel()`` (the data
        column by column, the layout of the simulation's full-batch kernel); the
        data are then fixed: build a new loss to change them.
    data : ndarray, shape (n, dim)
        Logistic rows ``z_i = y_i x_i`` (empty for the other toys).
    sharpness_min : float or None
        Sphere sharpness at the minimum when known.
    minimizer : ndarray or None
        A unit minimizer when known.
    options : dict
        The constructor options (for metadata).
    """

    name: str
    kind: int
    dim: int
    params: NDArray[np.float64]
    data: NDArray[np.float64] = field(default_factory=lambda: _NO_DATA)
    sharpness_min: float | None = None
    minimizer: NDArray[np.float64] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == LOGISTIC and self.params.size >= 1:
            # rebuilt from the data also after dataclasses.replace(loss, data=...)
            self.params = _logistic_params(float(self.params[0]), self.data)

    @property
    def n_samples(self) -> int:
        """Number of data rows (0 for data-free toys)."""
        return int(self.data.shape[0])

    def _w(self, w: ArrayLike) -> NDArray[np.float64]:
        arr = check_finite("w", w).astype(np.float64, copy=True)
        if arr.shape != (self.dim,):
            raise ValueError(
                f"w must have shape ({self.dim},), got {arr.shape}; pass {self.dim} numbers"
            )
        if not np.any(arr):
            raise ValueError(
                "w must be nonzero (an SI loss is undefined at the origin); pass another w"
            )
        return np.ascontiguousarray(arr)

    def _batch(self, idx: ArrayLike | None) -> tuple[NDArray[np.int64], int]:
        if idx is None:
            return _NO_IDX, 0
        arr = np.ascontiguousarray(np.asarray(idx, dtype=np.int64).ravel())
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_samples):
            raise ValueError(
                f"idx must index rows 0..{self.n_samples - 1} of the data; pass valid row numbers"
            )
        return arr, arr.size

    def value(self, w: ArrayLike, idx: ArrayLike | None = None) -> float:
        """``L(w)`` (on the rows ``idx`` of the data when given)."""
        return self.value_and_grad(w, idx)[0]

    def grad(self, w: ArrayLike, idx: ArrayLike | None = None) -> NDArray[np.float64]:
        """``grad L(w)``; orthogonal to ``w`` and scaling as ``1/|w|``."""
        return self.value_and_grad(w, idx)[1]

    def value_and_grad(
        self, w: ArrayLike, idx: ArrayLike | None = None
    ) -> tuple[float, NDArray[np.float64]]:
        """``(L(w), grad L(w))`` from the numba kernel."""
        w_arr = self._w(w)
        idx_arr, nb = self._batch(idx)
        out = np.empty(self.dim)
        f = value_and_grad(self.kind, w_arr, self.params, self.data, idx_arr, nb, out)
        return float(f), out

    def hvp(self, w: ArrayLike, v: ArrayLike, idx: ArrayLike | None = None) -> NDArray:
        """Euclidean Hessian of ``L`` at ``w`` times ``v``."""
        w_arr = self._w(w)
        v_arr = np.ascontiguousarray(check_finite("v", v), dtype=np.float64)
        if v_arr.shape != (self.dim,):
            raise ValueError(
                f"v must have shape ({self.dim},), got {v_arr.shape}; pass {self.dim} numbers"
            )
        idx_arr, nb = self._batch(idx)
        out = np.empty(self.dim)
        hvp(self.kind, w_arr, v_arr, self.params, self.data, idx_arr, nb, out)
        return out

    def riemannian_hessian(self, w: ArrayLike, idx: ArrayLike | None = None) -> NDArray:
        """Dense Riemannian Hessian on the unit sphere at ``w/|w|`` (``dim x dim``)."""
        idx_arr, nb = self._batch(idx)
        return riemannian_hessian(self.kind, self._w(w), self.params, self.data, idx_arr, nb)

    def sharpness(self, w: ArrayLike, idx: ArrayLike | None = None) -> float:
        """Sphere sharpness ``S``: top tangent eigenvalue of the Riemannian Hessian."""
        if self.dim < 2:
            raise ValueError("sharpness on the sphere needs dim >= 2; use a toy with dim >= 2")
        idx_arr, nb = self._batch(idx)
        return float(sharpness(self.kind, self._w(w), self.params, self.data, idx_arr, nb))

    def default_w0(self, rng: np.random.Generator) -> NDArray[np.float64]:
        """A unit starting point: random direction from ``rng`` (toy-specific tweaks)."""
        w0 = rng.standard_normal(self.dim)
        return w0 / np.linalg.norm(w0)


def rayleigh(
    dim: int = 10,
    *,
    spectrum: ArrayLike | None = None,
    sharpness: float = 1.0,
    quartic: float = 0.0,
) -> SILoss:
    """Rayleigh quotient ``L(w) = w'Aw/(2 w'w)`` with ``A = diag(spectrum)``, plus an
    optional quartic term.

    With ``quartic = c``, ``L(w) = q/2 + (c/4) p^2`` where ``q = u'Au``,
    ``p = u'(A - lam_min I)u`` and ``u = w/|w|``. The quartic term vanishes to second
    order at the minimum, so the minimum and its sharpness are unchanged, but the
    curvature grows away from it. Along the sharpest great circle (angle ``theta``
    from the minimum) ``L = lam_min/2 + (S/2) theta^2 + (c S^2/4 - S/6) theta^4 + ...``:
    for ``c = 0`` the curvature *drops* with the amplitude and a destabilised
    minimum settles into a small stable 2-cycle at the edge of stability; for
    ``c > 2/(3 S)`` it grows, the instability runs away and the norm jumps
    (a catapult), which gives the periodic behavior.

    Parameters
    ----------
    dim : int
        Dimension (ignored when ``spectrum`` is given).
    spectrum : array_like, optional
        Eigenvalues of ``A``; default ``linspace(0, sharpness, dim)``.
    sharpness : float
        ``lam_max - lam_min`` of the default spectrum.
    quartic : float
        ``c >= 0``.

    Notes
    -----
    Exact: the minimum is ``e_k`` with ``k = argmin(spectrum)``, where the sphere
    sharpness is ``max(spectrum) - min(spectrum)`` (Riemannian Hessian
    ``P (A - lam_min I) P``, the quartic term contributing nothing there).
    """
    if spectrum is None:
        dim = check_positive_int("dim", dim)
        if dim < 2:
            raise ValueError("dim must be >= 2 for a loss on the sphere; pass dim=2 or more")
        lam = np.linspace(0.0, positive_number("sharpness", sharpness), dim)
    else:
        lam = _check_spectrum(spectrum)
        dim = lam.size
    c = nonnegative_number("quartic", quartic)
    k = int(np.argmin(lam))
    minimizer = np.zeros(dim)
    minimizer[k] = 1.0
    return SILoss(
        name="rayleigh",
        kind=RAYLEIGH,
        dim=dim,
        params=np.concatenate([lam, [c, lam.min()]]),
        sharpness_min=float(lam.max() - lam.min()),
        minimizer=minimizer,
        options={"spectrum": lam.tolist(), "quartic": c},
    )


def logistic(
    dim: int = 10,
    *,
    n_samples: int = 100,
    temperature: float = 10.0,
    margin: float = 0.1,
    seed: int = 0,
) -> SILoss:
    """SI logistic regression ``mean log(1 + exp(-s y x.w/|w|))`` on separable data.

    Data: ``x ~ N(0, I_dim)`` drawn from ``numpy.random.default_rng(seed)``, labels
    ``y = sign(x.w_star)`` for a random unit ``w_star``, points with
    ``|x.w_star| < margin`` redrawn (so the data are separable with margin >= ``margin``).

    Parameters
    ----------
    dim, n_samples : int
        Dimension and number of points.
    temperature : float
        ``s``, the logit scale (a network's last-layer norm plays this role).
    margin : float
        Minimum margin of ``w_star``.
    seed : int
        Seed of the data.
    """
    dim = check_positive_int("dim", dim)
    if dim < 2:
        raise ValueError("dim must be >= 2 for a loss on the sphere; pass dim=2 or more")
    n_samples = check_positive_int("n_samples", n_samples)
    s = _check_temperature(temperature)
    margin = nonnegative_number("margin", margin)
    if _is_real(seed):
        z, u_min, s_min = _logistic_problem(dim, n_samples, s, margin, _check_seed(seed))
    else:  # any other seed numpy accepts: not memoized
        try:
            z, u_min, s_min = _logistic_problem.__wrapped__(dim, n_samples, s, margin, seed)
        except TypeError:
            raise ValueError(
                f"seed must be a whole number >= 0 (or a seed numpy.random.default_rng "
                f"accepts), got {seed!r}; pass e.g. seed=0"
            ) from None
    return SILoss(
        name="logistic",
        kind=LOGISTIC,
        dim=dim,
        params=np.array([s]),
        data=z.copy(),
        sharpness_min=s_min,
        minimizer=u_min.copy(),
        options={"n_samples": n_samples, "temperature": s, "margin": margin, "seed": seed},
    )


#: Largest ``temperature`` of :func:`logistic`. The Hessian has terms in its square:
#: from about 1e105 on the sphere sharpness of a run's rows overflows to -inf, and from
#: 1.3e154 on the toy cannot be built (its minimizer's Hessian is inf * 0); 1e50 leaves
#: a wide margin for larger dimensions and data sets.
MAX_TEMPERATURE = 1e50


def _check_temperature(temperature: Any) -> float:
    s = positive_number("temperature", temperature)
    if s > MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be <= {MAX_TEMPERATURE:g}, got {s:g} (the loss's curvature "
            f"grows as its square, and beyond that leaves the float range); pass e.g. "
            f"temperature=100"
        )
    return s


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_seed(seed: Any) -> int:
    """An integer data seed: a whole number >= 0 (what numpy's generators take)."""
    try:
        return check_whole("seed", seed, 0)
    except ValueError:
        raise ValueError(
            f"seed must be a whole number >= 0, got {seed!r}; pass e.g. seed=0"
        ) from None


def _check_spectrum(spectrum: Any) -> NDArray[np.float64]:
    lam = np.ascontiguousarray(check_finite("spectrum", spectrum), dtype=np.float64).ravel()
    if lam.size < 2:
        raise ValueError("spectrum needs at least 2 eigenvalues; pass two or more")
    return lam


@functools.lru_cache(maxsize=16)
def _logistic_problem(
    dim: int, n_samples: int, s: float, margin: float, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Data, unit minimizer and sphere sharpness there of :func:`logistic` (validated args).

    Memoized: the minimizer search costs about as much as simulating the default toy for
    10^5 steps, and sweeps build the same toy for every cell. The arrays are read-only
    (:func:`logistic` hands out copies).
    """
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(dim)
    w_star /= np.linalg.norm(w_star)
    rows: list[NDArray[np.float64]] = []
    have = 0
    for _ in range(1000):
        x = rng.standard_normal((2 * n_samples, dim))
        m = x @ w_star
        x = x[np.abs(m) >= margin]
        rows.append(x * np.sign(x @ w_star)[:, None])
        have += x.shape[0]
        if have >= n_samples:
            break
    else:  # pragma: no cover - margin far above the data scale
        raise ValueError(f"margin={margin} is too large for unit-variance data; pass < 2")
    z = np.ascontiguousarray(np.concatenate(rows)[:n_samples])
    params = np.array([s])
    u_min = _logistic_minimizer(params, z, w_star)
    s_min = float(sharpness_numpy(LOGISTIC, u_min, params, z))
    z.flags.writeable = False
    u_min.flags.writeable = False
    return z, u_min, s_min


def _logistic_minimizer(
    params: NDArray[np.float64], z: NDArray[np.float64], start: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Unit minimizer of the SI logistic loss: L-BFGS, then Riemannian Newton steps.

    Uses the numpy twins (no compilation). Newton on the sphere solves
    ``(Hess + u u') eta = -grad`` (the ``u u'`` term makes the radial direction
    invertible; the solution is tangent) and retracts by normalization.
    """
    from scipy.optimize import minimize

    def fun(w: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        return value_and_grad_numpy(LOGISTIC, w, params, z)

    # limited-memory BFGS: O(dim) memory and work per iteration (dense BFGS keeps a
    # dim x dim inverse Hessian and took minutes at dim = 1024); Newton polishes below
    res = minimize(fun, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    u = res.x / np.linalg.norm(res.x)
    for _ in range(8):
        _, g = value_and_grad_numpy(LOGISTIC, u, params, z)
        if np.linalg.norm(g) < 1e-15:
            break
        r = riemannian_hessian_numpy(LOGISTIC, u, params, z)
        eta = np.linalg.solve(r + np.outer(u, u), -g)
        u = u + eta
        u /= np.linalg.norm(u)
    return u


def spiral(dim: int = 2, *, grad_norm: float = 1.0) -> SILoss:
    """Constant-gradient-norm SI loss ``G atan2(w_2, w_1)`` (``g~ = G`` exactly).

    Only ``dim = 2`` (on higher spheres no gradient field has constant norm
    without singular points).
    """
    if dim != 2:
        raise ValueError(f"the spiral loss lives in dim=2, got dim={dim}; pass dim=2")
    big_g = positive_number("grad_norm", grad_norm)
    return SILoss(
        name="spiral",
        kind=SPIRAL,
        dim=2,
        params=np.array([big_g]),
        sharpness_min=None,
        options={"grad_norm": big_g},
    )


def flat(dim: int = 10) -> SILoss:
    """Zero loss (pure weight decay; with isotropic noise the model of docs/theory.md §6)."""
    dim = check_positive_int("dim", dim)
    if dim < 2:
        raise ValueError("dim must be >= 2 for a loss on the sphere; pass dim=2 or more")
    return SILoss(name="flat", kind=FLAT, dim=dim, params=np.zeros(1), options={})


#: Constructors by name.
LOSSES = {"rayleigh": rayleigh, "logistic": logistic, "spiral": spiral, "flat": flat}


def make_loss(name: str | SILoss, dim: int | None = None, **options: Any) -> SILoss:
    """Build a registered toy by name (an :class:`SILoss` is returned unchanged).

    Raises ``ValueError`` naming the known toys for an unknown ``name``.
    """
    if isinstance(name, SILoss):
        if dim is not None and dim != name.dim:
            raise ValueError(
                f"dim={dim} does not match the given loss (dim={name.dim}); "
                f"drop dim or pass {name.dim}"
            )
        return name
    if name not in LOSSES:
        known = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {name!r}; choose one of: {known}")
    ctor = LOSSES[name]
    kwargs = dict(options)
    if dim is not None:
        kwargs["dim"] = dim
    try:
        return ctor(**kwargs)
    except TypeError as exc:
        raise ValueError(
            f"bad option for loss {name!r}: {exc}; see help(siflow.losses.{ctor.__name__}) for "
            f"the valid options"
        ) from None


#: The options of each toy's constructor (its keywords other than ``dim``).
OPTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(p for p in inspect.signature(ctor).parameters if p != "dim")
    for name, ctor in LOSSES.items()
}

#: How each option is checked (the constructors use the same checks).
_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "spectrum": _check_spectrum,
    "sharpness": lambda v: positive_number("sharpness", v),
    "quartic": lambda v: nonnegative_number("quartic", v),
    "n_samples": lambda v: check_positive_int("n_samples", v),
    "temperature": _check_temperature,
    "margin": lambda v: nonnegative_number("margin", v),
    "seed": lambda v: _check_seed(v) if _is_real(v) else v,  # others: numpy's to judge
    "grad_norm": lambda v: positive_number("grad_norm", v),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_options(
    name: str | SILoss, options: Mapping[str, Any] | None = None, dim: int | None = None
) -> dict[str, Any]:
    """Check the constructor options of toy ``name`` before anything is built.

    Cheap (nothing is allocated), so that a run or its memory estimate never meets a
    bad option: each option is checked as its constructor checks it, and options that
    contradict each other or ``dim`` are refused instead of one silently winning
    (``rayleigh``: ``spectrum`` sets the dimension and the sharpness).

    Parameters
    ----------
    name : str or SILoss
        A name of :data:`LOSSES` (a built loss, or an unknown name, is left to
        :func:`make_loss`).
    options : mapping, optional
        Keyword arguments for the constructor.
    dim : int, optional
        The dimension asked for alongside the options.

    Returns
    -------
    dict
        The options, unchanged.

    Raises
    ------
    ValueError
        Naming the option as ``key=value`` and the fix: ``dim`` among the options, an
        option the toy does not take, a bad value, or a contradiction.
    """
    opts = dict(options or {})
    if isinstance(name, SILoss) or name not in LOSSES:
        return opts
    if "dim" in opts:
        raise ValueError(
            f"dim={_shown(opts['dim'])} is among the loss options; pass it as the dim "
            f"argument instead (the dimension is an argument of its own)"
        )
    allowed = OPTIONS[name]
    for key, value in opts.items():
        if key not in allowed:
            takes = f"pass one of {', '.join(allowed)}" if allowed else "it takes none; drop it"
            raise ValueError(f"bad option for loss {name!r}: it has no option {key!r}; {takes}")
        try:
            _OPTION_CHECKS[key](value)
        except ValueError as exc:
            raise ValueError(f"{key}={_shown(value)} (option of the {name} toy): {exc}") from None
    if name == "rayleigh" and "spectrum" in opts:
        _check_spectrum_fixes(opts, dim)
    return opts


def _check_spectrum_fixes(opts: Mapping[str, Any], dim: int | None) -> None:
    """``rayleigh``'s spectrum sets the dimension and the sharpness: refuse other values."""
    lam = _check_spectrum(opts["spectrum"])
    if dim is not None and dim != lam.size:
        raise ValueError(
            f"dim={dim} does not match the spectrum's {lam.size} eigenvalues, which set the "
            f"dimension; pass dim={lam.size}, or no dim"
        )
    if "sharpness" in opts:
        shown = _shown(opts["sharpness"])
        raise ValueError(
            f"sharpness={shown} has no effect with a spectrum, whose max - min "
            f"({float(lam.max() - lam.min()):g}) is the sharpness; drop sharpness={shown} or "
            f"the spectrum"
        )
