"""Toy SI losses: scale invariance, derivatives, sphere sharpness, numba vs numpy twins.

References are built independently of the kernels: hand-computed values, central
finite differences of the loss and of its gradient, and the sphere sharpness as the
top eigenvalue (numpy.linalg.eigvalsh) of a finite-difference Hessian restricted to
an orthonormal basis of the tangent space.

Derivation used for the sharpness reference: on the unit sphere the Riemannian
Hessian of ``L`` at ``u`` is ``P (grad^2 L(u)) P - <grad L(u), u> P`` on the tangent
space. For an SI loss ``<grad L(u), u> = 0`` (docs/theory.md section 0), so it is the
Euclidean Hessian of the SI loss projected on the tangent space; no correction term.
(The correction does matter for the toy's *formula* ``f``: Rayleigh's ``u'Au/2`` has
radial gradient ``u'Au``, and ``P A P`` alone would be off by ``u'Au``.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from siflow import losses as L

RNG = np.random.default_rng(20240607)


def _toys() -> list[tuple[str, L.SILoss]]:
    return [
        ("rayleigh", L.rayleigh(7)),
        ("rayleigh-spectrum", L.rayleigh(spectrum=[0.3, 2.0, -1.0, 0.7, 5.0])),
        ("rayleigh-quartic", L.rayleigh(6, quartic=2.5)),
        ("logistic", L.logistic(6, n_samples=40, temperature=3.0, seed=3)),
        ("logistic-hot", L.logistic(5, n_samples=30, temperature=30.0, seed=1)),
        ("spiral", L.spiral()),
        ("flat", L.flat(4)),
    ]


TOYS = _toys()
IDS = [name for name, _ in TOYS]


def _points(dim: int, n: int = 3) -> list[np.ndarray]:
    return [RNG.standard_normal(dim) * s for s in (1.0, 1e-3, 40.0)[:n]]


def _fd_grad(loss: L.SILoss, w: np.ndarray, h: float) -> np.ndarray:
    out = np.empty_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = h
        out[i] = (loss.value(w + e) - loss.value(w - e)) / (2 * h)
    return out


def _fd_hessian(loss: L.SILoss, w: np.ndarray, h: float) -> np.ndarray:
    cols = []
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = h
        cols.append((loss.grad(w + e) - loss.grad(w - e)) / (2 * h))
    hess = np.array(cols).T
    return 0.5 * (hess + hess.T)


def _tangent_basis(u: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the complement of u, from a QR decomposition."""
    q, _ = np.linalg.qr(np.column_stack([u, np.eye(u.size)]))
    return q[:, 1 : u.size]


# ------------------------------------------------------------------ scale invariance
@pytest.mark.parametrize(("name", "loss"), TOYS, ids=IDS)
def test_value_is_scale_invariant_and_gradient_orthogonal(name, loss):
    for w in _points(loss.dim):
        f, g = loss.value_and_grad(w)
        for c in (1e-6, 0.37, 3.0, 1e5):
            fc, gc = loss.value_and_grad(c * w)
            assert fc == pytest.approx(f, rel=1e-12, abs=1e-15)
            # grad L(cw) = grad L(w)/c  (docs/theory.md section 0)
            np.testing.assert_allclose(c * gc, g, rtol=1e-11, atol=1e-13 * np.linalg.norm(g))
        assert abs(g @ w) <= 1e-12 * max(np.linalg.norm(g) * np.linalg.norm(w), 1e-300)


@pytest.mark.parametrize(("name", "loss"), TOYS, ids=IDS)
def test_gradient_matches_finite_differences(name, loss):
    for w in _points(loss.dim):
        rho = np.linalg.norm(w)
        g = loss.grad(w)
        fd = _fd_grad(loss, w, 1e-6 * rho)
        scale = max(np.abs(fd).max(), 1e-8 / rho)
        np.testing.assert_allclose(g, fd, rtol=0, atol=2e-7 * scale)


@pytest.mark.parametrize(("name", "loss"), TOYS, ids=IDS)
def test_hvp_matches_finite_differences_and_euler_identity(name, loss):
    for w in _points(loss.dim):
        rho = np.linalg.norm(w)
        v = RNG.standard_normal(loss.dim)
        hv = loss.hvp(w, v)
        h = 1e-5 * rho
        fd = loss.grad(w + h * v / np.linalg.norm(v)) - loss.grad(w - h * v / np.linalg.norm(v))
        fd *= np.linalg.norm(v) / (2 * h)
        scale = max(np.abs(fd).max(), 1e-8 / rho**2)
        np.testing.assert_allclose(hv, fd, rtol=0, atol=1e-6 * scale)
        # differentiating <grad L(w), w> = 0:  H(w) w = -grad L(w)
        g = loss.grad(w)
        np.testing.assert_allclose(loss.hvp(w, w), -g, atol=1e-12 * max(np.abs(g).max(), 1e-300))


@pytest.mark.parametrize(("name", "loss"), [t for t in TOYS if t[0] != "flat"], ids=IDS[:-1])
def test_sharpness_matches_eigvalsh_of_projected_fd_hessian(name, loss):
    for w in _points(loss.dim, 2):
        u = w / np.linalg.norm(w)
        hess = _fd_hessian(loss, u, 1e-5)
        q = _tangent_basis(u)
        ref = np.linalg.eigvalsh(q.T @ hess @ q)[-1]
        s = loss.sharpness(w)
        assert s == pytest.approx(ref, abs=1e-6 * max(1.0, abs(ref)))
        # the dense Riemannian Hessian has the same tangent spectrum and kills u
        r = loss.riemannian_hessian(w)
        np.testing.assert_allclose(
            np.linalg.eigvalsh(q.T @ r @ q),
            np.linalg.eigvalsh(q.T @ hess @ q),
            atol=1e-6 * max(1.0, abs(ref)),
        )  # noqa: E501
        np.testing.assert_allclose(r @ u, 0.0, atol=1e-12 * max(1.0, np.abs(r).max()))


def test_sharpness_is_not_the_naive_projection_of_the_formula_hessian():
    """For Rayleigh, P A P would overstate S by u'Au: the -<g, u> P term matters."""
    loss = L.rayleigh(spectrum=[1.0, 2.0, 4.0])
    u = np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0)
    q = _tangent_basis(u)
    naive = np.linalg.eigvalsh(q.T @ np.diag([1.0, 2.0, 4.0]) @ q)[-1]
    # u'Au = 7/3 at this point
    assert loss.sharpness(u) == pytest.approx(naive - 7.0 / 3.0, rel=1e-12)


# ------------------------------------------------------------------ known values
def test_rayleigh_hand_values():
    loss = L.rayleigh(spectrum=[1.0, 2.0, 3.0])
    w = np.array([1.0, 1.0, 1.0])
    # w'Aw / (2 w'w) = 6 / 6
    assert loss.value(w) == pytest.approx(1.0, rel=1e-15)
    # grad = (Aw - 2 L w)/|w|^2 = ([1,2,3] - 2)/3
    np.testing.assert_allclose(loss.grad(w), np.array([-1.0, 0.0, 1.0]) / 3.0, atol=1e-15)
    assert loss.value(np.array([0.0, 0.0, -2.0])) == pytest.approx(1.5, rel=1e-15)


@pytest.mark.parametrize("quartic", [0.0, 0.4, 3.0])
def test_rayleigh_sharpness_at_minimum_is_spectral_gap(quartic):
    spectrum = np.array([0.9, 0.2, 3.1, 1.7, 2.2])
    loss = L.rayleigh(spectrum=spectrum, quartic=quartic)
    u = loss.minimizer
    assert u is not None and u[1] == 1.0
    assert np.linalg.norm(loss.grad(u)) == 0.0
    assert loss.sharpness(u) == pytest.approx(3.1 - 0.2, rel=1e-13)
    assert loss.sharpness_min == pytest.approx(2.9, rel=1e-15)


def test_rayleigh_quartic_hand_value():
    loss = L.rayleigh(spectrum=[0.0, 1.0, 2.0], quartic=2.0)
    w = np.array([1.0, 1.0, 1.0])
    # q = u'Au = 1, p = u'(A - 0)u = 1: L = 1/2 + (2/4) * 1
    assert loss.value(w) == pytest.approx(1.0, rel=1e-15)
    # along the sharpest great circle: L(theta) = S/2 sin^2 + c/4 S^2 sin^4 (S = 2)
    th = 0.3
    w = np.array([math.cos(th), 0.0, math.sin(th)])
    expect = math.sin(th) ** 2 + 0.5 * 4.0 * math.sin(th) ** 4
    assert loss.value(w) == pytest.approx(expect, rel=1e-14)


def test_logistic_hand_value_and_data():
    loss = L.logistic(3, n_samples=50, temperature=2.0, margin=0.2, seed=7)
    z = loss.data
    assert z.shape == (50, 3)
    # separable with margin >= 0.2 by construction: some unit direction classifies all rows
    u = loss.minimizer
    assert u is not None and np.all(z @ u > 0)
    w = np.array([0.3, -1.2, 2.0])
    m = 2.0 * (z @ w) / np.linalg.norm(w)
    expect = float(np.mean([math.log1p(math.exp(-x)) for x in m]))
    assert loss.value(w) == pytest.approx(expect, rel=1e-13)
    # minibatch rows
    idx = np.array([4, 4, 11])
    expect_b = float(np.mean([math.log1p(math.exp(-x)) for x in m[idx]]))
    assert loss.value(w, idx) == pytest.approx(expect_b, rel=1e-13)


def test_logistic_minimizer_and_sharpness_min():
    loss = L.logistic(8, n_samples=60, temperature=10.0, seed=2)
    u = loss.minimizer
    assert np.linalg.norm(loss.grad(u)) < 1e-12
    s = loss.sharpness(u)
    assert loss.sharpness_min == pytest.approx(s, rel=1e-10)
    # a minimum: the Riemannian Hessian is positive on the tangent space
    q = _tangent_basis(u)
    assert np.linalg.eigvalsh(q.T @ loss.riemannian_hessian(u) @ q)[0] > 0
    # and random nearby points on the sphere are higher
    for _ in range(20):
        v = u + 1e-3 * RNG.standard_normal(8)
        assert loss.value(v) > loss.value(u)


def test_logistic_loss_and_sharpness_shrink_with_temperature():
    """The network-like case: a larger logit scale (margin) gives a smaller loss and S."""
    vals = []
    for s in (5.0, 10.0, 20.0, 40.0):
        loss = L.logistic(6, n_samples=80, temperature=s, seed=0)
        vals.append((loss.value(loss.minimizer), loss.sharpness_min))
    losses, sharp = zip(*vals, strict=True)
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False))
    assert all(a > b for a, b in zip(sharp[1:], sharp[2:], strict=False))


def test_spiral_has_constant_sphere_gradient_norm():
    loss = L.spiral(grad_norm=1.7)
    for w in _points(2) + [np.array([-3.0, 1e-9]), np.array([0.0, 5.0])]:
        g = loss.grad(w)
        assert np.linalg.norm(w) * np.linalg.norm(g) == pytest.approx(1.7, rel=1e-14)
        assert loss.value(w) == pytest.approx(1.7 * math.atan2(w[1], w[0]), rel=1e-15)
        assert loss.sharpness(w) == pytest.approx(0.0, abs=1e-12)


def test_tangent_noise_is_tangent_and_scaled():
    w = RNG.standard_normal(6) * 3.0
    xi = RNG.standard_normal(6)
    g0 = np.zeros(6)
    out = g0.copy()
    L.add_tangent_noise(w, out, xi, 0.5)
    u = w / np.linalg.norm(w)
    expect = 0.5 * (xi - (u @ xi) * u) / np.linalg.norm(w)
    np.testing.assert_allclose(out, expect, rtol=1e-13)
    assert abs(out @ w) < 1e-13 * np.linalg.norm(out) * np.linalg.norm(w)


# ------------------------------------------------------------------ numba vs numpy twins
@pytest.mark.parametrize(("name", "loss"), TOYS, ids=IDS)
def test_kernels_match_numpy_twins(name, loss):
    for w in _points(loss.dim):
        v = RNG.standard_normal(loss.dim)
        args = (loss.params, loss.data)
        f_nb, g_nb = loss.value_and_grad(w)
        f_np, g_np = L.value_and_grad_numpy(loss.kind, w, *args)
        assert f_nb == pytest.approx(f_np, rel=1e-12, abs=1e-14)
        np.testing.assert_allclose(g_nb, g_np, rtol=0, atol=1e-12 * max(np.abs(g_np).max(), 1e-300))
        hv_np = L.hvp_numpy(loss.kind, w, v, *args)
        np.testing.assert_allclose(
            loss.hvp(w, v), hv_np, rtol=0, atol=1e-12 * max(np.abs(hv_np).max(), 1e-300)
        )  # noqa: E501
        r_np = L.riemannian_hessian_numpy(loss.kind, w, *args)
        np.testing.assert_allclose(
            loss.riemannian_hessian(w), r_np, rtol=0, atol=1e-12 * max(np.abs(r_np).max(), 1.0)
        )  # noqa: E501
        s_np = L.sharpness_numpy(loss.kind, w, *args)
        assert loss.sharpness(w) == pytest.approx(s_np, abs=1e-12 * max(1.0, np.abs(r_np).max()))
        xi = RNG.standard_normal(loss.dim)
        out = g_nb.copy()
        L.add_tangent_noise(w, out, xi, 0.3)
        np.testing.assert_allclose(out, L.add_tangent_noise_numpy(w, g_nb, xi, 0.3), rtol=1e-12)


def test_minibatch_kernel_matches_twin():
    loss = L.logistic(5, n_samples=30, seed=4)
    idx = np.array([0, 3, 3, 29, 7], dtype=np.int64)
    w = RNG.standard_normal(5)
    f, g = loss.value_and_grad(w, idx)
    f2, g2 = L.value_and_grad_numpy(loss.kind, w, loss.params, loss.data, idx)
    assert f == pytest.approx(f2, rel=1e-12)
    np.testing.assert_allclose(g, g2, atol=1e-12 * np.abs(g2).max())


def test_jacobi_eigenvalues_match_lapack():
    for n in (2, 5, 17):
        a = RNG.standard_normal((n, n))
        a = a + a.T
        a[0, 1] = a[1, 0] = 0.0  # a zero off-diagonal entry on the way
        ref = np.linalg.eigvalsh(a)
        got = L._jacobi_eigvalsh(a.copy())
        np.testing.assert_allclose(got, ref, atol=1e-12 * np.abs(ref).max())


# ------------------------------------------------------------------ validation
def test_make_loss_by_name_and_errors():
    assert L.make_loss("rayleigh", dim=4).dim == 4
    toy = L.spiral()
    assert L.make_loss(toy) is toy
    with pytest.raises(ValueError, match="unknown loss 'nope'.*logistic.*rayleigh"):
        L.make_loss("nope")
    with pytest.raises(ValueError, match="dim=2"):
        L.make_loss("spiral", dim=3)
    with pytest.raises(ValueError, match="dim"):
        L.rayleigh(1)
    with pytest.raises(ValueError, match="bad option for loss 'flat'"):
        L.make_loss("flat", temperature=3.0)
    with pytest.raises(ValueError, match="quartic"):
        L.rayleigh(3, quartic=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        L.logistic(3, temperature=0.0)
    loss = L.rayleigh(3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        loss.value(np.ones(4))
    with pytest.raises(ValueError, match="nonzero"):
        loss.grad(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        loss.value(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="idx"):
        L.logistic(3, n_samples=5).value(np.ones(3), idx=[5])


def test_logistic_minimizer_in_high_dimension():
    # dim > n_samples: the data are separable in many directions and the loss is tiny at
    # the minimum; the minimizer must still be a stationary point of the sphere
    loss = L.logistic(300, n_samples=120, temperature=10.0, seed=4)
    u = loss.minimizer
    assert abs(np.linalg.norm(u) - 1.0) < 1e-14
    g = L.value_and_grad_numpy(loss.kind, u, loss.params, loss.data)[1]
    assert np.linalg.norm(g) < 1e-12
    assert loss.sharpness_min == pytest.approx(
        L.sharpness_numpy(loss.kind, u, loss.params, loss.data), rel=1e-10
    )
    assert loss.sharpness_min > 0
    for _ in range(5):
        v = u + 1e-3 * RNG.standard_normal(300)
        assert loss.value(v) > loss.value(u)


# ------------------------------------------- vectorised transcendentals of the loop kernel
@njit(fastmath=L._FAST)
def _exp_all(x, out):  # pragma: no cover - numba
    for i in range(x.size):
        out[i] = L._exp_nonpos(x[i])


def _ulps(got, ref):
    return np.abs(got - ref) / np.where(ref != 0.0, np.spacing(np.abs(ref)), np.inf)


def test_vectorised_exp_within_one_ulp_of_numpy():
    rng = np.random.default_rng(21)
    x = np.concatenate(
        [
            -rng.uniform(0.0, 50.0, 200_000),
            -rng.exponential(1.0, 200_000),
            -rng.uniform(700.0, 746.5, 100_000),  # subnormal results and underflow to 0
            -np.logspace(-300, 3, 20_000),
            [0.0, -0.0, -745.13, -745.14, -708.4, -709.8, -1e-320, -746.0, -800.0, -np.inf],
        ]
    )
    got = np.empty_like(x)
    _exp_all(x, got)
    ref = np.exp(x)
    assert np.array_equal(got == 0.0, ref == 0.0)
    assert _ulps(got, ref)[ref != 0.0].max() <= 1.0
    _exp_all(np.array([np.nan]), got[:1])
    assert math.isnan(got[0])  # a NaN margin must not yield a finite loss


@njit(fastmath=L._FAST, error_model="numpy")
def _sum_log1p_of(e, lo):  # pragma: no cover - numba
    v = np.empty(lo + e.size)
    v[:lo] = -1.0  # a view from lo on, as the kernel passes it: entries before are not read
    v[lo:] = e
    return L._sum_log1p(v[lo:])


@pytest.mark.parametrize("m", [0, 1, 2, 3, 5, 31, 32, 100, 257, 512, 513, 1024, 1500, 5000])
def test_sum_log1p_matches_fsum_of_numpy_log1p(m):
    """Sum of log1p(e) from the product of (1 + e): against math.fsum of numpy's log1p.

    Exponentials of margins of every size, including subnormal and zero ones, and long
    runs of e = 1 (margins at 0): a product of more than 1023 such factors would overflow.
    """
    rng = np.random.default_rng(m)
    kinds = [
        rng.uniform(0.0, 1.0, m),
        np.exp(-rng.uniform(0.0, 800.0, m)),
        np.exp(-rng.exponential(30.0, m)),
        np.ones(m),
        np.where(rng.uniform(size=m) < 0.5, 1.0, 1e-300),
    ]
    for e in kinds:
        ref = math.fsum(np.log1p(e))
        for lo in (0, 3):
            got = _sum_log1p_of(e, lo)
            assert math.isfinite(got)
            # bound of the docstring: 2 ulp per halving level (at most 9) + the sum's
            # roundings over ceil(m/512) products
            assert got == pytest.approx(ref, rel=20 * 2.0**-52, abs=0.0), (m, lo)
    e = rng.uniform(0.0, 1.0, max(m, 1))
    e[-1] = np.nan
    assert math.isnan(_sum_log1p_of(e, 0))


@pytest.mark.parametrize(
    ("dim", "n"),
    # blocks of 64 rows below dim 512 (L._L1_DIM), four rows at a time from it, with
    # one, two, three or no rows left over
    [
        (2, 1),
        (3, 7),
        (10, 100),
        (16, 32),
        (9, 70),
        (40, 300),
        (130, 50),
        (511, 70),
        (512, 8),
        (600, 42),
        (1024, 37),
        (700, 3),
    ],  # fmt: skip
)
def test_loop_logistic_kernel_both_layouts_match_twin(dim, n):
    """Column kernel (small data, full batch) and row-blocked kernel (no column copy)."""
    rng = np.random.default_rng(dim * 1000 + n)
    z = rng.standard_normal((n, dim))
    with_cols = L.SILoss(name="logistic", kind=L.LOGISTIC, dim=dim, params=np.array([3.0]), data=z)
    assert with_cols.params.size == 1 + n * dim
    assert np.array_equal(with_cols.params[1:].reshape(dim, n), z.T)
    rows_only = L.SILoss(name="logistic", kind=L.LOGISTIC, dim=dim, params=np.array([3.0]), data=z)
    rows_only.params = np.array([3.0])
    for scale in (0.2, 1.0, 40.0):  # margins from ~0 to beyond exp underflow of some terms
        w = rng.standard_normal(dim)
        r2 = float(w @ w)
        toy_s = np.array([3.0 * scale])
        f_ref, g_ref = L.value_and_grad_numpy(L.LOGISTIC, w, toy_s, z)
        for toy in (with_cols, rows_only):
            params = toy.params.copy()
            params[0] = toy_s[0]
            u, g = np.empty(dim), np.empty(dim)
            f = L._si_value_grad_step(
                L.LOGISTIC,
                w,
                r2,
                math.sqrt(r2),
                params,
                z,
                L._NO_IDX,
                0,
                u,
                g,
                *L._step_scratch(L.LOGISTIC, params, z),
            )
            assert f == pytest.approx(f_ref, rel=1e-12, abs=1e-300)
            np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14 * np.abs(g_ref).max())
        idx = rng.integers(0, n, size=11)
        f_ref, g_ref = L.value_and_grad_numpy(L.LOGISTIC, w, toy_s, z, idx)
        f = L._si_value_grad_step(
            L.LOGISTIC,
            w,
            r2,
            math.sqrt(r2),
            params,
            z,
            idx,
            11,
            u,
            g,
            *L._step_scratch(L.LOGISTIC, params, z),
        )
        assert f == pytest.approx(f_ref, rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14 * np.abs(g_ref).max())


def test_step_scratch_views_the_column_copy_and_sizes_the_scratch():
    small = L.logistic(5, n_samples=37, seed=2)
    xt, buf = L._step_scratch(small.kind, small.params, small.data)
    assert np.array_equal(xt, small.data.T) and buf.size == 2 * max(37, L._BLOCK)
    xt[0, 0] = 7.5  # a view of params[1:], not a copy
    assert small.params[1] == 7.5
    big = L.logistic(4, n_samples=L.COLUMNS_MAX_BYTES // 32 + 1)
    xt, buf = L._step_scratch(big.kind, big.params, big.data)
    assert xt.size == 0 and buf.size == 2 * big.n_samples
    ray = L.rayleigh(6)
    xt, buf = L._step_scratch(ray.kind, ray.params, ray.data)
    assert xt.size == 0 and buf.size == 2 * L._BLOCK


def test_large_logistic_data_keep_only_the_temperature():
    big = L.logistic(4, n_samples=L.COLUMNS_MAX_BYTES // 32 + 1)
    assert big.params.size == 1
    small = L.logistic(4, n_samples=L.COLUMNS_MAX_BYTES // 32)
    assert small.params.size == 1 + small.data.size


def test_logistic_construction_is_memoized_but_objects_are_independent():
    a = L.logistic(5, n_samples=40, seed=3)
    b = L.logistic(5, n_samples=40, seed=3)
    assert a.data is not b.data and np.array_equal(a.data, b.data)
    assert a.sharpness_min == b.sharpness_min
    a.data[0, 0] += 1.0  # the caller's copy is writable and does not touch the cache
    assert np.array_equal(L.logistic(5, n_samples=40, seed=3).data, b.data)


def test_replacing_logistic_data_rebuilds_the_column_copy():
    import dataclasses

    a = L.logistic(4, n_samples=30, seed=1)
    z = np.random.default_rng(5).standard_normal(a.data.shape)
    b = dataclasses.replace(a, data=z)
    assert np.array_equal(b.params[1:].reshape(4, 30), z.T)
    w = np.array([0.3, -1.0, 0.5, 2.0])
    r2 = float(w @ w)
    u, g = np.empty(4), np.empty(4)
    f = L._si_value_grad_step(
        L.LOGISTIC,
        w,
        r2,
        math.sqrt(r2),
        b.params,
        z,
        L._NO_IDX,
        0,
        u,
        g,
        *L._step_scratch(L.LOGISTIC, b.params, z),
    )
    f_ref, g_ref = L.value_and_grad_numpy(L.LOGISTIC, w, b.params, z)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-15 * np.abs(g_ref).max())
