"""Closed forms for scale-invariant (SI) training under SGD, SGD+momentum, AdamW and Lion.

Every function is pure numpy and vectorised: hyperparameters may be scalars or
arrays and broadcast against each other. Scalars in give 0-d results that behave
as floats; :func:`equilibrium` converts them to ``float``.

Notation (see ``docs/theory.md`` of the project): ``lr`` = eta, ``wd`` = lambda,
``x = lr*wd``, ``q = 1 - lr*wd``, ``momentum`` = mu, ``rho = |w|``, ``grad_norm``
= G, the gradient norm on the unit sphere (``G = |w| |grad L(w)|``), ``elr`` =
eta/rho^2 and the angular update Delta = angle(w_t, w_{t+1}).

Each docstring says whether a formula is

* **exact** for the discrete map (under the stated assumption, e.g. a constant
  sphere gradient norm orthogonal to ``w``), checked in the tests by iterating
  the map in float64, or
* **exact under the second-moment model**: the stationary point of the recursion
  for ``E|w|^2``, ``E<w,v>``, ``E|v|^2`` with gradients uncorrelated across steps
  (exact in the limit of many parameters; checked by simulation), or
* **first order** in ``lr*wd``.

Weight decay may be 0 where no formula divides by it (angles, decay factors,
thresholds); equilibrium norms, time constants and periods need ``wd > 0``.

All forms avoid cancellation (``log1p``, ``expm1``, ``arccos(1-y)`` written as
``2 arcsin(sqrt(y/2))``) so they stay accurate for ``lr*wd`` from 1e-12 to 0.99.

Run ``python -m siflow.theory --lr 0.1 --wd 1e-3 --grad-norm 1`` for a table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siflow._validate import (
    as_float_array,
    beta_number,
    check_beta,
    check_finite,
    check_lr_wd,
    check_momentum,
    check_nonnegative,
    check_positive,
    momentum_number,
    positive_number,
)

__all__ = [
    "sgd_equilibrium_norm",
    "sgd_equilibrium_elr",
    "sgd_equilibrium_angle",
    "sgd_relaxation_factor",
    "sgd_relaxation_time",
    "sgd_relaxation_norm",
    "decay_factor",
    "zero_grad_norm",
    "zero_grad_elr",
    "elr_doubling_time",
    "stability_threshold_elr",
    "critical_norm",
    "nullcline_grad_norm",
    "sgdm_equilibrium_norm",
    "sgdm_equilibrium_elr",
    "sgdm_equilibrium_angle",
    "sgdm_relaxation_factor",
    "sgdm_relaxation_time",
    "adamw_equilibrium_angle",
    "adamw_equilibrium_norm",
    "lion_equilibrium_angle",
    "lion_equilibrium_norm",
    "exponential_lr_alpha",
    "exponential_lr_schedule",
    "exponential_lr_initial_buffer",
    "period_from_norm_ratio",
    "free_decay_steps",
    "period",
    "equilibrium",
    "decay_rate",
    "effective_lr",
    "log_effective_lr",
    "sphere_grad_norm",
    "sphere_sharpness",
    "sgd_step_angle",
    "sgd_norm_step",
    "decay_end_step",
    "equilibrium_instability_lr_wd",
    "OPTIMIZERS",
    "sgd_norm_trajectory",
    "weight_decay_integral",
    "weight_decay_timescale",
    "sgd_radial_norm",
    "sgd_radial_norm_window",
    "heavy_ball_radial_norm",
    "decay_product",
    "total_angular_update",
]

Array = NDArray[np.float64]


# --------------------------------------------------------------------------- helpers


def _arccos_one_minus(y: Array) -> Array:
    """``arccos(1 - y)`` without cancellation: ``2 arcsin(sqrt(y/2))`` (valid for 0 <= y <= 2)."""
    return 2.0 * np.arcsin(np.sqrt(y / 2.0))


def _dominant_root(y: Array, mu: Array, nesterov: bool = False) -> tuple[Array, Array]:
    """Largest-modulus root ``z`` of the zero-gradient decay polynomial.

    Heavy ball: ``z^2 - (1 + mu - y) z + mu = 0``. Nesterov:
    ``z^2 - (1 + mu)(1 - y) z + mu (1 - y) = 0`` (docs/theory.md section 3). Both
    polynomials equal ``y`` at ``z = 1``, so the root is ``z = 1 - delta`` with
    ``delta = 2y / (c + sqrt(c^2 - 4y))`` (no cancellation as ``y -> 0``), ``c`` the
    slope ``1 - mu + y`` (heavy ball) or ``1 - mu + y (1 + mu)`` (Nesterov) of
    ``-p(1 - delta)`` at ``delta = 0``. Complex roots have modulus ``sqrt(mu)``
    (heavy ball) or ``sqrt(mu (1 - y))`` (Nesterov).

    Returns ``(modulus, log_modulus)``.
    """
    y, mu = np.broadcast_arrays(np.asarray(y, float), np.asarray(mu, float))
    if nesterov:
        c = 1.0 - mu + y * (1.0 + mu)
        disc = c**2 - 4.0 * y
        b = (1.0 + mu) * (1.0 - y)
        cplx = mu * (1.0 - y)
    else:
        c = 1.0 - mu + y
        # (1 + mu - y)^2 - 4 mu, written so that mu = 0 gives (1 - y)^2 without cancellation
        disc = (1.0 - mu - y) ** 2 - 4.0 * mu * y
        b = 1.0 + mu - y
        cplx = mu
    sq = np.sqrt(np.maximum(disc, 0.0))
    real = disc >= 0.0
    pos = real & (b > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = 2.0 * y / (c + sq)
        log_pos = np.log1p(-delta)
        neg_root = np.abs(b - sq) / 2.0  # b <= 0: the root of larger modulus is (b - sq)/2
        log_neg = np.log(neg_root)
        log_cplx = 0.5 * np.log(cplx)
    log_mod = np.where(pos, log_pos, np.where(real, log_neg, log_cplx))
    mod = np.where(pos, 1.0 - delta, np.where(real, neg_root, np.sqrt(cplx)))
    return mod, log_mod


def _float_arrays(**values: ArrayLike) -> list[NDArray[np.float64]]:
    """Each value as a float64 array (:func:`siflow._validate.as_float_array`: a value that
    is not a number is named), in the order given; nothing else is checked."""
    return [as_float_array(name, v) for name, v in values.items()]


def _out(value: Array) -> Array:
    """Return 0-d arrays as numpy float64 scalars, arrays unchanged."""
    value = np.asarray(value, dtype=np.float64)
    return value[()] if value.ndim == 0 else value


#: Smallest positive normal double: below it a quotient has lost digits (subnormal).
_NORMAL_MIN = np.finfo(np.float64).tiny


def _power(value: Array, power: float) -> Array:
    """``value ** power``, by ``np.sqrt`` for the square root (as the forms always took it)."""
    return np.sqrt(value) if power == 0.5 else value**power


def _ratio_power(
    power: float,
    num: Array,
    den: Array,
    num_parts: tuple[Array, ...],
    den_parts: tuple[Array, ...],
) -> Array:
    """``(num / den) ** power``, finite and nonzero whenever the result is.

    ``num`` and ``den`` are the products of ``num_parts`` and ``den_parts`` as the caller
    computed them. Where ``num``, ``den`` and ``num / den`` are normal doubles the result
    is the plain expression (the same bits as ever). Elsewhere the quotient (or a
    product) overflows or underflows although its root is well inside the float range
    (the equilibrium norm at ``lr = 1e300, wd = 1e-301``), and the power is taken of
    each part first: ``prod(num_parts**power) / prod(den_parts**power)``.
    """
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        ratio = num / den
        plain = _power(ratio, power)
        split = np.ones_like(plain)
        for part in num_parts:
            split = split * _power(part, power)
        for part in den_parts:
            split = split / _power(part, power)
    normal = np.ones(np.shape(plain), dtype=bool)
    for v in (num, den, ratio):
        normal &= (np.abs(v) >= _NORMAL_MIN) & np.isfinite(v)
    return np.where(normal, plain, split)


# --------------------------------------------------------------------------- SGD


def sgd_equilibrium_norm(
    lr: ArrayLike, wd: ArrayLike, grad_norm: ArrayLike, exact: bool = True
) -> Array:
    r"""Equilibrium weight norm rho* of SGD with coupled weight decay.

    Exact (fixed point of the discrete norm recursion
    ``rho_{t+1}^2 = (1 - eta lam)^2 rho_t^2 + eta^2 G^2 / rho_t^2`` with a constant
    sphere gradient norm G orthogonal to w)::

        rho*^4 = eta G^2 / (lam (2 - eta lam))

    First order in ``eta*lam``: ``rho*^4 = eta G^2 / (2 lam)`` (relative error
    ``eta*lam/4`` in ``rho*``).

    Source: docs/theory.md section 1 (Kosson et al. 2024; Li, Lyu & Arora 2020 for the
    first-order form), re-derived in :func:`siflow.symbolic.sgd_equilibrium`.

    Parameters
    ----------
    lr, wd : array_like
        Learning rate ``> 0`` and weight decay ``> 0`` with ``lr*wd < 1``.
    grad_norm : array_like
        Gradient norm on the unit sphere G ``>= 0``.
    exact : bool
        Exact discrete-map value (default) or the first-order form.

    Returns
    -------
    ndarray or float
        Equilibrium norm rho*. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    g = check_nonnegative("grad_norm", grad_norm)
    factor = 2.0 - lr * wd if exact else np.full_like(wd, 2.0)
    denom = wd * factor if exact else 2.0 * wd
    return _out(np.sqrt(g) * _ratio_power(0.25, lr, denom, (lr,), (wd, factor)))


def sgd_equilibrium_elr(
    lr: ArrayLike, wd: ArrayLike, grad_norm: ArrayLike, exact: bool = True
) -> Array:
    r"""Equilibrium effective learning rate ``eta / rho*^2`` of SGD + weight decay.

    Exact for the discrete map: ``eta/rho*^2 = sqrt(eta lam (2 - eta lam)) / G``;
    first order ``sqrt(2 eta lam) / G``. Source: docs/theory.md section 1.
    ``grad_norm`` must be ``> 0``.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    grad_norm : array_like
        Gradient norm on the unit sphere, ``G = |w| |grad L(w)|``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Equilibrium effective learning rate. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    g = check_positive("grad_norm", grad_norm)
    x = lr * wd
    return _out(np.sqrt(x * (2.0 - x if exact else 2.0)) / g)


def sgd_equilibrium_angle(lr: ArrayLike, wd: ArrayLike, exact: bool = True) -> Array:
    r"""Equilibrium angular update Delta* (radians) of SGD + weight decay.

    Exact for the discrete map: ``cos Delta* = 1 - eta lam``, evaluated as
    ``2 arcsin(sqrt(eta lam / 2))`` (no cancellation). Equivalently
    ``tan Delta* = elr* G / (1 - eta lam)``. First order ``sqrt(2 eta lam)``
    (relative error ``eta*lam/12``). Source: docs/theory.md section 1.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Angular update per step, radians. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    x = lr * wd
    return _out(_arccos_one_minus(x) if exact else np.sqrt(2.0 * x))


def sgd_relaxation_factor(lr: ArrayLike, wd: ArrayLike) -> Array:
    r"""Per-step contraction of a small deviation of rho^2 from equilibrium (SGD).

    Linearising ``f(x) = q^2 x + eta^2 G^2 / x`` (``x = rho^2``, ``q = 1 - eta lam``)
    at its fixed point ``x*^2 = eta^2 G^2 / (1 - q^2)`` gives
    ``f'(x*) = q^2 - (1 - q^2) = 2 q^2 - 1``, i.e.::

        1 - 4 eta lam + 2 eta^2 lam^2

    exact for the linearised discrete map and independent of G. Negative for
    ``eta lam > 1 - 1/sqrt(2)`` (the deviation alternates in sign).
    Source: docs/theory.md section 1, derived in :func:`siflow.symbolic.sgd_relaxation`.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.

    Returns
    -------
    ndarray or float
        Per-step factor, negative above ``lr*wd = 1 - 1/sqrt(2)``. Broadcast over the
        inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    x = lr * wd
    return _out(1.0 - x * (4.0 - 2.0 * x))


def sgd_relaxation_time(lr: ArrayLike, wd: ArrayLike, exact: bool = True) -> Array:
    r"""Relaxation time constant (steps) of the norm towards equilibrium (SGD).

    Exact for the linearised discrete map: ``tau = -1 / ln|1 - 4 eta lam + 2 eta^2 lam^2|``
    (a deviation decays as ``exp(-t/tau)``; ``tau = 0`` where the factor vanishes).
    First order: ``tau = 1 / (4 eta lam)``. Source: docs/theory.md section 1.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Time constant in steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    x = lr * wd
    if not exact:
        return _out(1.0 / (4.0 * x))
    return _out(-1.0 / _sgd_log_abs_factor(x))


def _sgd_log_abs_factor(x: Array) -> Array:
    """``ln|2 q^2 - 1|`` with ``q = 1 - x``, without cancellation on either side of zero."""
    y = x * (4.0 - 2.0 * x)  # 1 - factor, accurate for small x
    q = 1.0 - x
    with np.errstate(divide="ignore", invalid="ignore"):
        # factor > 0: ln(1 - y); factor < 0: |factor| = 1 - 2 q^2, accurate as x -> 1
        return np.where(y < 1.0, np.log1p(-np.minimum(y, 1.0)), np.log1p(-2.0 * q * q))


def sgd_relaxation_norm(
    t: ArrayLike, rho0: ArrayLike, lr: ArrayLike, wd: ArrayLike, grad_norm: ArrayLike
) -> Array:
    r"""Norm rho_t relaxing from rho_0 towards equilibrium (SGD), first-order law.

    ``rho_t^4 = rho*^4 + (rho_0^4 - rho*^4) (1 - eta lam)^(4 t)`` with the exact
    ``rho*^4 = eta G^2 / (lam (2 - eta lam))``, so the limit is exact. The law
    solves ``d rho^4/dt = -4 eta lam (rho^4 - rho*^4)``, the first-order
    continuous-time limit of the squared norm recursion; the error relative to
    ``|rho_0^4 - rho*^4|`` is O(eta lam) for ``rho_0`` of the order of ``rho*``.
    Source: docs/theory.md sections 1 and 4 (Li, Lyu & Arora 2020).

    Parameters
    ----------
    t : array_like
        Number of steps (may be fractional).
    rho0 : array_like
        Initial weight norm, ``> 0``.
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    grad_norm : array_like
        Gradient norm on the unit sphere, ``G = |w| |grad L(w)|``.

    Returns
    -------
    ndarray or float
        Norm rho_t. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    t = check_nonnegative("t", t)
    rho0 = check_positive("rho0", rho0)
    g = check_nonnegative("grad_norm", grad_norm)
    x = lr * wd
    r4 = g**2 * lr / (wd * (2.0 - x))
    return _out((r4 + (rho0**4 - r4) * np.exp(4.0 * t * np.log1p(-x))) ** 0.25)


def decay_factor(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0, *, nesterov: bool = False
) -> Array:
    r"""Per-step factor of the weight norm when the gradient vanishes.

    SGD (``momentum = 0``): ``1 - eta lam``, exact (``w_{t+1} = (1 - eta lam) w_t``).

    PyTorch heavy ball (``v <- mu v + g + lam w``, ``w <- w - eta v``) with g = 0:
    ``w_{t+1} = (1 + mu - eta lam) w_t - mu w_{t-1}``, so the norm eventually
    shrinks by the larger root ``alpha`` of ``a^2 - (1 + mu - eta lam) a + mu = 0``
    per step (asymptotically exact; the transient depends on the momentum buffer).
    First order: ``alpha = 1 - eta lam / (1 - mu)``. When the roots are complex
    (``eta lam > (1 - sqrt(mu))^2``) the norm oscillates and its envelope shrinks by
    ``|alpha| = sqrt(mu)``, which is returned. Source: docs/theory.md section 3.

    PyTorch Nesterov (``nesterov=True``: ``w <- w - eta (g + lam w + mu v)`` with the
    new ``v``) with g = 0: ``w_{t+1} = (1 + mu)(1 - eta lam) w_t - mu (1 - eta lam)
    w_{t-1}``, the larger root of ``a^2 - (1 + mu)(1 - eta lam) a + mu (1 - eta lam)
    = 0`` (same first order; complex roots, for ``eta lam > ((1 - mu)/(1 + mu))^2``,
    give the envelope ``sqrt(mu (1 - eta lam))``). Derived in
    :func:`siflow.symbolic.zero_grad_decay`.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        Per-step norm factor in ``(0, 1]``. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    mod, _ = _dominant_root(lr * wd, mu, bool(nesterov))
    return _out(mod)


def _log_decay(lr: Array, wd: Array, mu: Array, nesterov: bool = False) -> Array:
    if np.all(mu == 0):
        return np.log1p(-(lr * wd)) + 0.0 * mu
    return _dominant_root(lr * wd, mu, nesterov)[1]


def decay_rate(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0, *, nesterov: bool = False
) -> Array:
    r"""Per-step log decay rate of the weight norm at zero gradient: ``-ln decay_factor``.

    SGD: ``-ln(1 - eta lam)``, exact for the discrete map, computed as
    ``-log1p(-eta lam)`` so that it keeps full relative precision down to
    ``eta lam = 1e-300`` (``-math.log(1 - x)`` loses ``1e-16/x`` relative: 2e-5 at
    ``x = 1e-12``). Heavy ball and Nesterov: ``-ln |alpha|`` of :func:`decay_factor`
    (asymptotically exact). Source: docs/theory.md sections 1 and 3.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0``, ``lr*wd < 1``.
    momentum : array_like, default 0
        Heavy-ball momentum in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        ``-ln decay_factor`` in 1/step (``>= 0``). Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    return _out(-_log_decay(lr, wd, mu, bool(nesterov)))


def zero_grad_norm(t: ArrayLike, rho0: ArrayLike, lr: ArrayLike, wd: ArrayLike) -> Array:
    r"""Weight norm after ``t`` steps of SGD + WD with zero gradient: ``rho_0 (1 - eta lam)^t``.

    Exact for the discrete map (docs/theory.md section 1), computed as
    ``rho_0 exp(t log1p(-eta lam))``.

    Parameters
    ----------
    t : array_like
        Number of steps (may be fractional).
    rho0 : array_like
        Initial weight norm, ``> 0``.
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.

    Returns
    -------
    ndarray or float
        Norm after ``t`` steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    t = check_finite("t", t)
    rho0 = check_positive("rho0", rho0)
    return _out(rho0 * np.exp(t * np.log1p(-(lr * wd))))


def zero_grad_elr(t: ArrayLike, elr0: ArrayLike, lr: ArrayLike, wd: ArrayLike) -> Array:
    r"""Effective LR after ``t`` zero-gradient steps: ``elr_0 (1 - eta lam)^(-2 t)``.

    Exact for the discrete map (docs/theory.md section 1).

    Parameters
    ----------
    t : array_like
        Number of steps (may be fractional).
    elr0 : array_like
        Initial effective learning rate, ``> 0``.
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.

    Returns
    -------
    ndarray or float
        Effective learning rate after ``t`` steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    t = check_finite("t", t)
    elr0 = check_positive("elr0", elr0)
    return _out(elr0 * np.exp(-2.0 * t * np.log1p(-(lr * wd))))


def elr_doubling_time(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0, *, nesterov: bool = False
) -> Array:
    r"""Steps for the effective LR to double at zero gradient.

    SGD: ``ln 2 / (-2 ln(1 - eta lam))``, exact for the discrete map (docs/theory.md
    section 1); first order ``ln 2 / (2 eta lam)``. With momentum the norm factor
    is :func:`decay_factor` (asymptotically exact): ``ln 2 / (-2 ln alpha)``.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball (its :func:`decay_factor`).

    Returns
    -------
    ndarray or float
        Doubling time in steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    mu = check_momentum(momentum)
    # + 0.0: an underflowing lr*wd gives +inf, not -inf
    rate = -_log_decay(lr, wd, mu, bool(nesterov)) + 0.0
    with np.errstate(divide="ignore"):
        return _out(math.log(2.0) / (2.0 * rate))


def _threshold_times_sharpness(x: Array, mu: Array, nesterov: bool) -> Array:
    """``elr S`` at the stability boundary: ``2 (1 + mu - x)`` (SGD, heavy ball) or
    ``1 - x + alpha^2 / ((1 + mu) alpha + mu)`` (Nesterov, ``alpha`` its decay factor)."""
    if not nesterov:
        return 2.0 * (1.0 + mu - x)
    alpha = _dominant_root(x, mu, True)[0]
    return 1.0 - x + alpha**2 / ((1.0 + mu) * alpha + mu)


def stability_threshold_elr(
    lr: ArrayLike,
    wd: ArrayLike,
    sharpness: ArrayLike,
    momentum: ArrayLike = 0.0,
    *,
    nesterov: bool = False,
) -> Array:
    r"""Largest stable effective LR at a minimum on the sphere: ``2 (1 + mu - eta lam) / S``.

    SGD (``momentum = 0``): the direction map
    ``w^ <- normalize(w^ - (elr / (1 - eta lam)) grad L(w^))`` linearised at a minimum on
    the unit sphere is ``d <- (I - elr H / (1 - eta lam)) d`` with H the Riemannian
    Hessian; it is stable iff ``elr S < 2 (1 - eta lam)`` for the top eigenvalue S.
    Exact for the linearised map (docs/theory.md section 2).

    Heavy ball (PyTorch): in Li & Arora's no-decay picture the angle obeys
    ``th_{t+1} = th_t + (mu/alpha^2)(th_t - th_{t-1}) - (elr S/alpha) th_t``, stable iff
    ``elr S < 2 (alpha + mu/alpha) = 2 (1 + mu - eta lam)``
    (:func:`siflow.symbolic.direction_threshold`). Quasi-static: exact for the
    linearised map while the effective LR changes little over the oscillation's
    growth time (it drifts by ``eta lam/(1 - mu)`` per step); checked by simulating
    heavy ball on an SI quadratic just below and above the threshold.

    Nesterov (PyTorch ``nesterov=True``), same picture: ``th_{t+1} =
    ((1 + mu)(1 - eta lam - elr S)/alpha) th_t - (mu (1 - eta lam - elr S)/alpha^2)
    th_{t-1}``, stable iff ``elr S < 1 - eta lam + alpha^2/((1 + mu) alpha + mu)``
    with ``alpha`` the Nesterov :func:`decay_factor`; ``2 (1 + mu)/(1 + 2 mu)`` at
    ``eta lam -> 0``, far below heavy ball's ``2 (1 + mu)`` (1.36 against 3.8 at
    ``mu = 0.9``). Derived in :func:`siflow.symbolic.direction_threshold`. Where the
    decay roots are complex (``eta lam > ((1 - mu)/(1 + mu))^2``) ``alpha`` is their
    modulus, an approximation.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0``, ``lr*wd < 1``.
    sharpness : array_like
        Top eigenvalue S of the Riemannian Hessian on the unit sphere, ``> 0``.
    momentum : array_like, default 0
        Heavy-ball momentum in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        Largest stable effective learning rate. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    s = check_positive("sharpness", sharpness)
    mu = check_momentum(momentum)
    return _out(_threshold_times_sharpness(lr * wd, mu, bool(nesterov)) / s)


def critical_norm(
    lr: ArrayLike,
    wd: ArrayLike,
    sharpness: ArrayLike,
    momentum: ArrayLike = 0.0,
    *,
    nesterov: bool = False,
) -> Array:
    r"""Weight norm below which a minimum of sharpness S is unstable.

    ``rho_crit = sqrt(eta S / (2 (1 + mu - eta lam)))`` (a norm, not its square): the
    threshold of :func:`stability_threshold_elr` written with ``elr = eta / rho^2``.
    Exact for the linearised map for SGD (docs/theory.md section 2), quasi-static with
    momentum (Nesterov: ``sqrt(eta / stability_threshold_elr(..., nesterov=True))``).

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0``, ``lr*wd < 1``.
    sharpness : array_like
        Top eigenvalue S of the Riemannian Hessian on the unit sphere, ``> 0``.
    momentum : array_like, default 0
        Heavy-ball momentum in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        Critical weight norm rho_crit. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    s = check_positive("sharpness", sharpness)
    mu = check_momentum(momentum)
    return _out(np.sqrt(lr * s / _threshold_times_sharpness(lr * wd, mu, bool(nesterov))))


def nullcline_grad_norm(lr: ArrayLike, wd: ArrayLike, elr: ArrayLike) -> Array:
    r"""Sphere gradient norm at which the effective LR is stationary (SGD).

    From ``elr_{t+1} = elr_t / ((1 - eta lam)^2 + elr_t^2 G_t^2)``: stationary iff
    ``elr G = sqrt(eta lam (2 - eta lam))``, so ``G = sqrt(eta lam (2 - eta lam)) / elr``.
    Exact for the discrete map (docs/theory.md section 1).

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    elr : array_like
        Effective learning rate ``lr / rho^2``, ``> 0``.

    Returns
    -------
    ndarray or float
        Sphere gradient norm on the nullcline. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    e = check_positive("elr", elr)
    x = lr * wd
    return _out(np.sqrt(x * (2.0 - x)) / e)


# --------------------------------------------------------------------------- SGD + momentum


def sgdm_equilibrium_norm(
    lr: ArrayLike,
    wd: ArrayLike,
    grad_norm: ArrayLike,
    momentum: ArrayLike,
    exact: bool = True,
    nesterov: bool = False,
) -> Array:
    r"""Equilibrium weight norm of PyTorch heavy-ball SGD with coupled weight decay.

    Update ``v <- mu v + g + lam w``, ``w <- w - eta v`` with gradients of sphere
    norm G orthogonal to w and uncorrelated across steps. The stationary second
    moments ``a = E|w|^2``, ``b = E<w,v>``, ``c = E|v|^2`` of the (w, v) recursion
    with ``E|g|^2 = G^2/a`` give (derived in :func:`siflow.symbolic.sgdm_equilibrium`)::

        rho*^4 = eta G^2 (1 + mu) / (lam (1 - mu) (2 (1 + mu) - eta lam))
               = eta G^2 / (lam (1 - mu) (2 - eta lam / (1 + mu)))

    exact under this second-moment model; first order ``eta G^2 / (2 lam (1 - mu))``.
    This is the formula of docs/theory.md §3 (Wan et al. 2021): the symbolic derivation
    gives exactly it, and a simulation (random gradient directions orthogonal to w, 2000
    parameters, mu = 0.9, eta = 0.1, lam = 1e-3, 3 x 20000 steps) gives rho* within
    1e-5 of it (tests/test_theory.py).

    With ``nesterov=True`` (PyTorch ``nesterov=True``: ``w <- w - eta (g + lam w + mu v)``
    after the buffer update) the same derivation gives::

        rho*^4 = eta G^2 (1 + mu + x mu + 2 x mu^2)
                 / (lam (1 - mu + x mu) (2 (1 + mu) - x (1 + 2 mu)))

    with ``x = eta lam``; the first-order form is the heavy-ball one.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    grad_norm : array_like
        Gradient norm on the unit sphere, ``G = |w| |grad L(w)|``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        Equilibrium norm rho*. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    g = check_nonnegative("grad_norm", grad_norm)
    mu = check_momentum(momentum)
    x = lr * wd
    if not exact:
        denom = 2.0 * wd * (1.0 - mu)
        factor = 2.0 * (1.0 - mu)
    elif nesterov:
        num = 1.0 + mu + x * mu * (1.0 + 2.0 * mu)
        denom = wd * (1.0 - mu + x * mu) * (2.0 * (1.0 + mu) - x * (1.0 + 2.0 * mu)) / num
        factor = (1.0 - mu + x * mu) * (2.0 * (1.0 + mu) - x * (1.0 + 2.0 * mu)) / num
    else:
        denom = wd * (1.0 - mu) * (2.0 - x / (1.0 + mu))
        factor = (1.0 - mu) * (2.0 - x / (1.0 + mu))
    return _out(np.sqrt(g) * _ratio_power(0.25, lr, denom, (lr,), (wd, factor)))


def sgdm_equilibrium_elr(
    lr: ArrayLike,
    wd: ArrayLike,
    grad_norm: ArrayLike,
    momentum: ArrayLike,
    exact: bool = True,
) -> Array:
    r"""Equilibrium effective LR ``eta / rho*^2`` of heavy-ball SGD + WD.

    ``eta/rho*^2 = sqrt(eta lam (1 - mu) (2 - eta lam / (1 + mu))) / G`` under the
    second-moment model of :func:`sgdm_equilibrium_norm`; first order
    ``sqrt(2 eta lam (1 - mu)) / G``. ``grad_norm`` must be ``> 0``.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    grad_norm : array_like
        Gradient norm on the unit sphere, ``G = |w| |grad L(w)|``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Equilibrium effective learning rate. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    g = check_positive("grad_norm", grad_norm)
    mu = check_momentum(momentum)
    x = lr * wd
    k = (2.0 - x / (1.0 + mu)) if exact else 2.0
    return _out(np.sqrt(x * (1.0 - mu) * k) / g)


def sgdm_equilibrium_angle(
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike,
    exact: bool = True,
    nesterov: bool = False,
) -> Array:
    r"""Equilibrium angular update of heavy-ball SGD + WD (radians).

    Under the second-moment model of :func:`sgdm_equilibrium_norm`,
    ``cos Delta* = E<w_t, w_{t+1}> / E|w|^2 = 1 - eta lam / (1 + mu)`` (derived in
    :func:`siflow.symbolic.sgdm_equilibrium`), evaluated as
    ``2 arcsin(sqrt(eta lam / (2 (1 + mu))))``; first order
    ``sqrt(2 eta lam / (1 + mu))``, the form of docs/theory.md sections 3 and 5
    (Kosson et al. 2024) [confirmed, it is the first-order term of the
    exact expression; a simulation at mu = 0.9, eta lam = 1e-4 agrees to 1e-4].

    Nesterov (``nesterov=True``), same model, ``x = eta lam``::

        1 - cos Delta* = x (1 + 2 mu - 2 mu^3 + x mu (1 + 3 mu + 2 mu^2))
                         / (1 + mu + x mu (1 + 2 mu))

    first order ``sqrt(2 x (1 + 2 mu - 2 mu^3) / (1 + mu))``: Nesterov's extra
    look-ahead step makes the angular update larger than heavy ball's.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball.

    Returns
    -------
    ndarray or float
        Angular update per step, radians. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    x = lr * wd
    if nesterov:
        k0 = (1.0 + 2.0 * mu - 2.0 * mu**3) / (1.0 + mu)
        if not exact:
            return _out(np.sqrt(2.0 * x * k0))
        y = x * (1.0 + 2.0 * mu - 2.0 * mu**3 + x * mu * (1.0 + 3.0 * mu + 2.0 * mu**2))
        y = y / (1.0 + mu + x * mu * (1.0 + 2.0 * mu))
        return _out(_arccos_one_minus(y))
    y = x / (1.0 + mu)
    return _out(_arccos_one_minus(y) if exact else np.sqrt(2.0 * y))


def sgdm_relaxation_factor(lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike) -> Array:
    r"""Per-step contraction of a deviation from equilibrium for heavy-ball SGD + WD.

    The Jacobian of the second-moment map (a, b, c) at its fixed point (see
    :func:`sgdm_equilibrium_norm`) has characteristic polynomial
    ``(z - mu^2) (z^2 - (1 + mu - y) z + mu)`` with ``y = 4 eta lam - 2 (eta lam)^2/(1 + mu)``
    (:func:`siflow.symbolic.sgdm_relaxation`). The returned factor is the spectral
    radius, the modulus of the larger root of the quadratic (``sqrt(mu)`` when the
    roots are complex: the relaxation then oscillates). For ``mu = 0`` it is
    ``|1 - 4 eta lam + 2 eta^2 lam^2|``. First order ``1 - 4 eta lam / (1 - mu)``.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.

    Returns
    -------
    ndarray or float
        Per-step contraction factor (spectral radius). Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    x = lr * wd
    mod, _ = _dominant_root(x * (4.0 - 2.0 * x / (1.0 + mu)), mu)
    return _out(np.where(mu == 0.0, np.exp(_sgd_log_abs_factor(x)), mod))


def sgdm_relaxation_time(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike, exact: bool = True
) -> Array:
    r"""Relaxation time constant (steps) of heavy-ball SGD + WD towards equilibrium.

    ``-1 / ln(sgdm_relaxation_factor)`` (exact for the linearised second-moment map);
    first order ``(1 - mu) / (4 eta lam)``.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Time constant in steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    mu = check_momentum(momentum)
    x = lr * wd
    if not exact:
        return _out((1.0 - mu) / (4.0 * x))
    _, log_mod = _dominant_root(x * (4.0 - 2.0 * x / (1.0 + mu)), mu)
    log_mod = np.where(mu == 0.0, _sgd_log_abs_factor(x), log_mod)
    with np.errstate(divide="ignore"):
        return _out(-1.0 / log_mod)


# --------------------------------------------------------------------------- per-step laws


def effective_lr(lr: ArrayLike, rho: ArrayLike) -> Array:
    r"""Effective learning rate of an SI group: ``elr = eta / rho^2``.

    For ``L(c w) = L(w)`` the gradient scales as ``1/|w|``, so a step of size
    ``eta`` moves the direction ``w/|w|`` as a step of ``eta/|w|^2`` on the unit
    sphere (docs/theory.md section 0). Exact. Not validated (logs carry NaN rows
    and zeros); ``rho = 0`` gives ``inf`` without a warning.

    Parameters
    ----------
    lr : array_like
        Learning rate per row or constant.
    rho : array_like
        Weight norm ``|w|``.

    Returns
    -------
    ndarray or float
        ``lr / rho**2``, broadcast over the inputs.
    """
    lr = as_float_array("lr", lr)
    rho = as_float_array("rho", rho)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return _out(lr / np.square(rho))


def log_effective_lr(lr: ArrayLike, rho: ArrayLike) -> Array:
    r"""Logarithm of the effective learning rate, ``ln(eta/rho^2) = ln eta - 2 ln rho``.

    :func:`effective_lr` in log space: finite for every positive finite ``lr`` and
    ``rho``, where ``rho^2`` would overflow or underflow (docs/theory.md section 0).
    Not validated: ``rho = 0`` gives ``inf``, a negative or NaN input NaN, without a
    warning.

    Parameters
    ----------
    lr : array_like
        Learning rate per row or constant.
    rho : array_like
        Weight norm ``|w|``.

    Returns
    -------
    ndarray or float
        ``ln lr - 2 ln rho``, broadcast over the inputs.
    """
    lr = as_float_array("lr", lr)
    rho = as_float_array("rho", rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _out(np.log(lr) - 2.0 * np.log(rho))


def sphere_grad_norm(rho: ArrayLike, grad_norm_raw: ArrayLike) -> Array:
    r"""Gradient norm on the unit sphere from the raw one: ``g~ = |w| |grad L(w)|``.

    Exact for an SI loss (the gradient at ``w`` is ``1/|w|`` times the gradient at
    ``w/|w|``; docs/theory.md section 0).

    Parameters
    ----------
    rho : array_like
        Weight norm ``|w|``.
    grad_norm_raw : array_like
        ``|grad L(w)|`` as logged.

    Returns
    -------
    ndarray or float
        ``rho * grad_norm_raw``, broadcast over the inputs.
    """
    rho = as_float_array("rho", rho)
    g = as_float_array("grad_norm_raw", grad_norm_raw)
    with np.errstate(over="ignore", invalid="ignore"):
        return _out(rho * g)


def sphere_sharpness(rho: ArrayLike, sharpness_raw: ArrayLike) -> Array:
    r"""Sharpness on the unit sphere from the raw one: ``S = |w|^2 lambda_max(hess L(w))``.

    The Hessian of an SI loss scales as ``1/|w|^2`` (docs/theory.md section 0), so
    this is exact for the Euclidean Hessian; it equals the Riemannian sharpness at
    critical points and bounds it from above elsewhere.

    Parameters
    ----------
    rho : array_like
        Weight norm ``|w|``.
    sharpness_raw : array_like
        Top eigenvalue of ``hess L(w)`` as logged.

    Returns
    -------
    ndarray or float
        ``rho**2 * sharpness_raw``, broadcast over the inputs.
    """
    rho, s = _float_arrays(rho=rho, sharpness_raw=sharpness_raw)
    with np.errstate(over="ignore", invalid="ignore"):
        return _out(np.square(rho) * s)


def sgd_step_angle(lr: ArrayLike, wd: ArrayLike, elr: ArrayLike, grad_norm: ArrayLike) -> Array:
    r"""Angle of one SGD + WD step of an SI group: ``tan Delta = elr g~ / (1 - eta lam)``.

    ``w' = (1 - eta lam) w - eta grad L(w)`` with the gradient orthogonal to ``w``
    (exact for an SI loss) has radial part ``(1 - eta lam) |w|`` and tangential part
    ``eta |grad L| = elr g~ |w|``. Exact for the discrete map (docs/theory.md
    section 1). Not validated: per-row log columns may hold NaN.

    Parameters
    ----------
    lr, wd : array_like
        Learning rate and weight decay of the step (``lr*wd < 1``).
    elr : array_like
        Effective LR ``lr / rho^2`` before the step.
    grad_norm : array_like
        Sphere gradient norm ``g~`` of the step.

    Returns
    -------
    ndarray or float
        ``Delta`` in radians, broadcast over the inputs.
    """
    lr, wd, elr, g = _float_arrays(lr=lr, wd=wd, elr=elr, grad_norm=grad_norm)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _out(np.arctan(elr * g / (1.0 - lr * wd)))


def sgd_norm_step(rho: ArrayLike, lr: ArrayLike, wd: ArrayLike, grad_norm: ArrayLike) -> Array:
    r"""Weight norm after one SGD + WD step (the exact norm recursion).

    ``rho'^2 = (1 - eta lam)^2 rho^2 + eta^2 g~^2 / rho^2``.

    Exact for the discrete map of an SI group (the gradient is orthogonal to ``w``;
    docs/theory.md section 1). Not validated: per-row log columns may hold NaN.

    Parameters
    ----------
    rho : array_like
        Norm before the step.
    lr, wd : array_like
        Learning rate and weight decay of the step.
    grad_norm : array_like
        Sphere gradient norm ``g~ = |w| |grad L(w)|`` of the step.

    Returns
    -------
    ndarray or float
        The norm after the step, broadcast over the inputs.
    """
    rho, lr, wd, g = _float_arrays(rho=rho, lr=lr, wd=wd, grad_norm=grad_norm)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        r2 = np.square(rho)
        return _out(np.sqrt(np.square(1.0 - lr * wd) * r2 + np.square(lr * g) / r2))


def sgd_norm_trajectory(
    rho0: float, lr: ArrayLike, wd: ArrayLike, grad_norm: ArrayLike
) -> NDArray[np.float64]:
    r"""The norm of an SI group under SGD + WD with per-step ``lr_t``, ``wd_t``, ``g~_t``.

    Iterates the exact norm recursion (:func:`sgd_norm_step`, docs/theory.md
    section 1) ``rho^2_{t+1} = (1 - eta_t lam_t)^2 rho^2_t + eta_t^2 g~_t^2 / rho^2_t``
    from ``rho_0``. With ``grad_norm`` the measured sphere gradient norm of a log
    this is the replay of the log's norm (an exact check of scale invariance); with
    a model of ``g~`` it is the theory's norm under a schedule.

    Parameters
    ----------
    rho0 : float
        Norm before the first step, ``> 0``.
    lr, wd, grad_norm : array_like
        Per-step values for steps ``0 .. T-1`` (scalars broadcast; at least one
        must be an array of length ``T``). NaN in a step propagates.

    Returns
    -------
    ndarray
        ``rho_0 .. rho_T`` (length ``T + 1``).
    """
    r0 = positive_number("rho0", rho0)
    lr, wd, g = _per_step(lr=lr, wd=wd, grad_norm=grad_norm)
    return _iterate_norm_map(r0, np.square(1.0 - lr * wd), np.square(lr * g), coupled=True)


def momentum_moments_step(
    a: float, b: float, c: float, lr: float, wd: float, mu: float, g2: float, nesterov: bool = False
) -> tuple[float, float, float]:
    r"""One step of the second moments of PyTorch heavy ball (or Nesterov) with coupled WD.

    ``a = |w|^2``, ``b = <w, v>``, ``c = |v|^2`` before the step; the gradient has
    ``|g|^2 = g2 / a`` (``g2 = g~^2``, the sphere gradient norm squared), orthogonal to
    ``w`` and ``v`` (uncorrelated with the past: the model of
    :func:`sgdm_equilibrium_norm`). Heavy ball, ``v' = mu v + g + lam w``,
    ``w' = w - eta v'``, with ``d = 1 - eta lam``::

        a' = d^2 a + eta^2 mu^2 c + eta^2 |g|^2 - 2 d eta mu b
        b' = mu (1 - 2 eta lam) b + lam d a - eta mu^2 c - eta |g|^2
        c' = mu^2 c + |g|^2 + lam^2 a + 2 mu lam b

    Nesterov (``w' = w - eta (g + lam w + mu v')``), with ``e = 1 - eta lam (1 + mu)``::

        a' = e^2 a + eta^2 mu^4 c + eta^2 (1 + mu)^2 |g|^2 - 2 e eta mu^2 b
        b' = e (mu b + lam a) - eta mu^2 (mu c + lam b) - eta (1 + mu) |g|^2
        c' as for heavy ball

    Exact for those recursions when the gradient is orthogonal to ``w`` and ``v`` with
    that norm (``tests/test_theory_momentum_schedule.py`` iterates the vectors); the
    fixed point at constant ``eta, lam`` is :func:`sgdm_equilibrium_norm` (docs/theory.md
    section 3). The heavy-ball lines are those of :func:`siflow.maps.norm_map`.
    """
    gam = g2 / a
    if nesterov:
        e = 1.0 - lr * wd * (1.0 + mu)
        a1 = (
            e * e * a
            + lr * lr * mu**4 * c
            + lr * lr * (1.0 + mu) ** 2 * gam
            - 2.0 * e * lr * mu * mu * b
        )
        b1 = e * (mu * b + wd * a) - lr * mu * mu * (mu * c + wd * b) - lr * (1.0 + mu) * gam
    else:
        d = 1.0 - lr * wd
        a1 = d * d * a + lr * lr * mu * mu * c + lr * lr * gam - 2.0 * d * lr * mu * b
        b1 = mu * (1.0 - 2.0 * lr * wd) * b + wd * d * a - lr * mu * mu * c - lr * gam
    c1 = mu * mu * c + gam + wd * wd * a + 2.0 * mu * wd * b
    return a1, b1, c1


def momentum_norm_trajectory(
    rho0: float,
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: float,
    grad_norm: ArrayLike,
    nesterov: bool = False,
) -> NDArray[np.float64]:
    r"""Norm of an SI group under heavy-ball (or Nesterov) SGD + WD, per-step ``lr_t``, ``wd_t``.

    Iterates :func:`momentum_moments_step` from ``|w|^2 = rho0^2`` and an empty momentum
    buffer (``v = 0``, PyTorch's first step) with the sphere gradient norm ``g~_t``: the
    heavy-ball counterpart of :func:`sgd_norm_trajectory`, to which it reduces at
    ``momentum = 0``. Under a schedule the norm relaxes at the heavy-ball rate
    (:func:`sgdm_relaxation_time`, about ``(1 - mu)/(4 eta lam)`` steps), not at
    SGD's.

    Parameters
    ----------
    rho0 : float
        Norm before the first step, ``> 0``.
    lr, wd, grad_norm : array_like
        Per-step values for steps ``0 .. T-1`` (scalars broadcast; at least one an array
        of length ``T``).
    momentum : float
        ``mu`` in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True``.

    Returns
    -------
    ndarray
        ``rho_0 .. rho_T`` (length ``T + 1``).
    """
    r0 = positive_number("rho0", rho0)
    mu = float(check_momentum(momentum))
    lr, wd, g = _per_step(lr=lr, wd=wd, grad_norm=grad_norm)
    out = np.empty(lr.size + 1)
    a, b, c = r0 * r0, 0.0, 0.0
    out[0] = a
    g2 = np.square(g)
    for t in range(lr.size):
        a, b, c = momentum_moments_step(
            a, b, c, float(lr[t]), float(wd[t]), mu, float(g2[t]), nesterov
        )
        out[t + 1] = a
    return np.sqrt(out)


__all__ += ["momentum_moments_step", "momentum_norm_trajectory"]


def _per_step(**arrays: ArrayLike) -> list[NDArray[np.float64]]:
    """The named arrays as float64, broadcast to one 1-d per-step length, or ValueError."""
    out = np.broadcast_arrays(*(as_float_array(k, a) for k, a in arrays.items()))
    if out[0].ndim != 1:
        names = ", ".join(arrays)
        raise ValueError(f"{names} must be scalars or 1-d arrays of per-step values")
    return list(out)


def _iterate_norm_map(
    rho0: float, q2: NDArray[np.float64], push: NDArray[np.float64], coupled: bool
) -> NDArray[np.float64]:
    """``rho^2_{t+1} = q2_t rho^2_t + push_t / rho^2_t`` (coupled) or ``+ push_t`` (decoupled).

    Returns ``rho_0 .. rho_T``; the one loop behind the per-step norm trajectories.
    """
    out = np.empty(q2.size + 1)
    out[0] = r2 = rho0 * rho0
    for t in range(q2.size):
        r2 = q2[t] * r2 + (push[t] / r2 if coupled else push[t])
        out[t + 1] = r2
    return np.sqrt(out)


def weight_decay_integral(lr: ArrayLike, wd: ArrayLike) -> NDArray[np.float64]:
    r"""``kappa_t = sum_{s < t} eta_s lam_s``: the accumulated decay of a schedule.

    At zero gradient the norm after ``t`` steps is ``rho_0 prod_{s<t}(1 - eta_s lam_s)``
    ``~ rho_0 exp(-kappa_t)`` to first order in ``eta lam``; ``kappa`` is the clock on
    which schedules with the same product of ``lr`` and ``wd`` agree (docs/theory.md
    section 0). Returns ``kappa_0 = 0 .. kappa_T`` (length ``T + 1``).
    """
    lr, wd = _per_step(lr=lr, wd=wd)
    return np.concatenate(([0.0], np.cumsum(lr * wd)))


def weight_decay_timescale(
    lr: ArrayLike, wd: ArrayLike, steps_per_epoch: float | None = None
) -> dict[str, Array]:
    r"""Timescales of weight decay: ``tau_iter = 1/(eta lam)`` and ``tau_epoch``.

    With decoupled decay (AdamW) the weights are an exponential moving average of
    the updates with timescale ``tau_iter = 1/(eta lam)`` iterations, i.e.
    ``tau_epoch = tau_iter / steps_per_epoch`` epochs (Wang & Aitchison 2024, "How
    to set AdamW's weight decay as you scale model and dataset size"); for SGD with
    coupled decay ``tau_iter`` is the norm's zero-gradient e-folding time to first
    order (exactly ``1/decay_rate``). Per step for a schedule.

    Returns
    -------
    dict
        ``tau_iter`` and, with ``steps_per_epoch``, ``tau_epoch``.
    """
    lr, wd = check_lr_wd(lr, wd)
    out: dict[str, Array] = {"tau_iter": _out(1.0 / (lr * wd))}
    if steps_per_epoch is not None:
        k = check_positive("steps_per_epoch", steps_per_epoch)
        out["tau_epoch"] = _out(1.0 / (lr * wd) / k)
    return out


# --------------------------------------------------------------------------- AdamW and Lion


def _adamw_common(
    lr: ArrayLike, wd: ArrayLike, beta1: ArrayLike, wd_positive: bool = True
) -> tuple[Array, Array, Array]:
    lr, wd = check_lr_wd(lr, wd, wd_positive=wd_positive)
    b1 = check_beta("beta1", beta1)
    return lr, wd, b1


def adamw_equilibrium_angle(
    lr: ArrayLike, wd: ArrayLike, beta1: ArrayLike = 0.9, exact: bool = True
) -> Array:
    r"""Equilibrium angular update of AdamW on an SI group (radians).

    Model: decoupled decay ``w <- (1 - eta lam) w - eta m / sqrt(v)`` with
    ``m <- beta1 m + (1 - beta1) g``, gradients orthogonal to w, uncorrelated across
    steps and isotropic over coordinates, and ``v`` at its stationary value
    ``E g_i^2`` (so ``n = g / sqrt(v)`` has ``|n|^2 = C``). The stationary second
    moments give (:func:`siflow.symbolic.adamw_equilibrium`)::

        cos Delta* = 1 - eta lam (1 - beta1) / (1 + beta1 (1 - eta lam))

    exact under this model; first order ``sqrt(2 eta lam (1 - beta1) / (1 + beta1))``,
    which is the form of docs/theory.md section 5 (Kosson et al. 2024) [confirmed
    by the derivation; a simulation of AdamW (beta2 = 0.999, 2000 parameters,
    eta = 1e-3, lam = 0.1) agrees to 4e-5].
    Adam's bias correction and ``eps`` are ignored (equilibrium is reached long
    after the correction has died out).

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    beta1 : array_like, default 0.9
        First-moment (interpolation) coefficient in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Angular update per step, radians. Broadcast over the inputs.
    """
    lr, wd, b1 = _adamw_common(lr, wd, beta1, wd_positive=False)
    x = lr * wd
    y = x * (1.0 - b1) / (1.0 + b1 * (1.0 - x))
    return _out(_arccos_one_minus(y) if exact else np.sqrt(2.0 * x * (1.0 - b1) / (1.0 + b1)))


def adamw_equilibrium_norm(
    lr: ArrayLike,
    wd: ArrayLike,
    n_params: ArrayLike,
    beta1: ArrayLike = 0.9,
    exact: bool = True,
) -> Array:
    r"""Equilibrium norm of a C-element SI parameter group trained by AdamW.

    Under the model of :func:`adamw_equilibrium_angle` the stationary second moment
    is (:func:`siflow.symbolic.adamw_equilibrium`)::

        rho*^2 = eta C (1 - beta1) (1 + beta1 q) / (lam (2 - eta lam) (1 + beta1) (1 - beta1 q))

    with ``q = 1 - eta lam``, exact under the model. First order
    ``rho* = sqrt(eta C / (2 lam))``, independent of beta1 and of the gradient:
    docs/theory.md section 5 [confirmed; it holds because each gradient's total
    weight in all later momentum buffers is 1; a simulation agrees to 6e-4].

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    n_params : array_like
        Number of parameters C in the SI group, ``> 0``.
    beta1 : array_like, default 0.9
        First-moment (interpolation) coefficient in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Equilibrium norm rho*. Broadcast over the inputs.
    """
    lr, wd, b1 = _adamw_common(lr, wd, beta1)
    c = check_positive("n_params", n_params)
    x = lr * wd
    if not exact:
        with np.errstate(over="ignore", under="ignore"):
            num, den = lr * c, 2.0 * wd
        return _out(_ratio_power(0.5, num, den, (lr, c), (2.0 * wd,)))
    q = 1.0 - x
    top = (1.0 - b1) * (1.0 + b1 * q)
    bottom = (2.0 - x) * (1.0 + b1) * (1.0 - b1 * q)
    with np.errstate(over="ignore", under="ignore"):  # see _ratio_power
        num = lr * c * (1.0 - b1) * (1.0 + b1 * q)
        den = wd * (2.0 - x) * (1.0 + b1) * (1.0 - b1 * q)
    return _out(_ratio_power(0.5, num, den, (lr, c, top), (wd, bottom)))


_ARCSIN_TAYLOR = np.array(
    [math.exp(math.lgamma(2 * n + 1) - 2 * math.lgamma(n + 1) - n * math.log(4.0)) / (2 * n + 1)
     for n in range(40)]
)  # fmt: skip


def _lion_series(x: Array, b1: Array, b2: Array) -> tuple[Array, Array]:
    """``(S_q, S_1)``: ``sum_{k>=1} q^k s_k`` for ``q = 1 - x`` and for ``q = 1``.

    ``s_k = (2/pi) arcsin(c_1 beta2^(k-1))`` is the correlation of Lion's sign updates
    k steps apart (arcsine law for jointly Gaussian coordinates). The first K lags,
    up to where ``c_k <= 1/2``, are summed directly; the tail through the Taylor series
    of arcsin, ``sum_{k>K} q^k (c_1 beta2^(k-1))^(2n+1) =
    q^(K+1) (c_1 beta2^K)^(2n+1) / (1 - q beta2^(2n+1))`` (40 terms: ``4^-40``).
    """
    x, b1, b2 = np.broadcast_arrays(x, b1, b2)
    shape = x.shape
    x, b1, b2 = x.ravel(), b1.ravel(), b2.ravel()
    var = (1.0 - b1) ** 2 + b1**2 * (1.0 - b2) / (1.0 + b2)
    c1 = b1 * (1.0 - b2) * ((1.0 - b1) + b1 * b2 / (1.0 + b2)) / var
    with np.errstate(divide="ignore", invalid="ignore"):
        k_need = np.where(
            (c1 > 0.5) & (b2 > 0), np.ceil(np.log(0.5 / c1) / np.log(b2)), (c1 > 0) * 1.0
        )
    s_q = np.empty_like(x)
    s_1 = np.empty_like(x)
    n = np.arange(_ARCSIN_TAYLOR.size, dtype=np.float64)[:, None]
    # blocks keep the (elements x lags) work array below ~1e7 entries
    kmax_all = max(1, int(np.max(k_need, initial=1.0)))
    block = max(1, int(1e7 // kmax_all))
    for start in range(0, x.size, block):
        sl = slice(start, start + block)
        xs, c, bb = x[sl], c1[sl], b2[sl]
        kk = k_need[sl]
        kmax = max(1, int(np.max(kk, initial=1.0)))
        k = np.arange(1, kmax + 1, dtype=np.float64)[:, None]
        log_q = np.log1p(-xs)
        with np.errstate(divide="ignore", invalid="ignore"):
            logb = np.where(bb > 0, np.log(np.where(bb > 0, bb, 1.0)), -np.inf)
            c_k = c * np.exp(np.where(k > 1, (k - 1) * logb, 0.0))
        a_k = np.where(k <= kk, np.arcsin(np.minimum(c_k, 1.0)), 0.0)
        head_q = np.sum(np.exp(k * log_q) * a_k, axis=0)
        head_1 = np.sum(a_k, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            c_tail = c * np.exp(np.where(kk > 0, kk * logb, 0.0))  # c_1 beta2^K
            c_tail = np.where((bb == 0) & (kk > 0), 0.0, c_tail)
            pw = np.exp((2 * n + 1) * np.log(np.where(c_tail > 0, c_tail, 1.0)))
            pw = np.where(c_tail > 0, pw, 0.0)
            lb = (2 * n + 1) * logb  # log beta2^(2n+1), -inf for beta2 = 0
            tail_q = np.sum(
                _ARCSIN_TAYLOR[:, None] * pw * np.exp((kk + 1) * log_q) / -np.expm1(log_q + lb),
                axis=0,
            )
            tail_1 = np.sum(_ARCSIN_TAYLOR[:, None] * pw / -np.expm1(lb), axis=0)
        s_q[sl] = (2.0 / np.pi) * (head_q + tail_q)
        s_1[sl] = (2.0 / np.pi) * (head_1 + tail_1)
    return s_q.reshape(shape), s_1.reshape(shape)


def _lion_common(
    lr: ArrayLike, wd: ArrayLike, beta1: ArrayLike, beta2: ArrayLike, wd_positive: bool = True
) -> tuple[Array, Array, Array, Array]:
    lr, wd = check_lr_wd(lr, wd, wd_positive=wd_positive)
    b1 = check_beta("beta1", beta1)
    b2 = check_beta("beta2", beta2)
    lr, wd, b1, b2 = np.broadcast_arrays(lr, wd, b1, b2)
    return lr, wd, b1, b2


def lion_equilibrium_angle(
    lr: ArrayLike,
    wd: ArrayLike,
    beta1: ArrayLike = 0.9,
    beta2: ArrayLike = 0.99,
    exact: bool = True,
) -> Array:
    r"""Equilibrium angular update of Lion on an SI group (radians).

    Lion: ``u = sign(beta1 m + (1 - beta1) g)``, ``m <- beta2 m + (1 - beta2) g``,
    ``w <- (1 - eta lam) w - eta u`` (decoupled decay, |u|^2 = C). With gradients
    orthogonal to w, uncorrelated across steps and Gaussian per coordinate, the
    interpolation ``beta1 m + (1 - beta1) g`` has lag-k correlation
    ``c_k = c_1 beta2^(k-1)`` with
    ``c_1 = beta1 (1 - beta2) ((1 - beta1) + beta1 beta2/(1 + beta2)) / V``,
    ``V = (1 - beta1)^2 + beta1^2 (1 - beta2)/(1 + beta2)``, and the sign updates have
    correlation ``s_k = (2/pi) arcsin(c_k)``. Stationary second moments give, with
    ``S = sum_{k>=1} q^k s_k`` and ``q = 1 - eta lam``::

        1 - cos Delta* = eta lam (q - eta lam S) / (q (1 + 2 S))

    exact under this model (derivation: :func:`siflow.symbolic.lion_equilibrium`).
    First order: ``Delta* = sqrt(2 eta lam / (1 + 2 S_1))`` with ``S_1 = sum_k s_k``.

    docs/theory.md section 5 (Kosson et al. 2024) gives
    ``sqrt(pi/2) sqrt(2 eta lam) sqrt(V)``; that is what the formula above becomes
    when the arcsine law is linearised at every lag *including lag 0*
    (``1 + 2 S_1 ~ (2/pi)/V``), which undercounts ``E sign^2 = 1``. The question was decided
    by simulation (2000 parameters, eta = 1e-3, lam = 0.1, 3 x 20000 steps): at the
    default betas the simulated angle is 3e-5 from this formula and 0.38 % below
    docs/theory.md's (5 standard errors); at beta1 = 0.5, beta2 = 0.9 (eta = 1e-2) it is
    6e-5 from this formula and 6.5 % below docs/theory.md's.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    beta1 : array_like, default 0.9
        First-moment (interpolation) coefficient in ``[0, 1)``.
    beta2 : array_like, default 0.99
        Lion's momentum coefficient in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Angular update per step, radians. Broadcast over the inputs.
    """
    lr, wd, b1, b2 = _lion_common(lr, wd, beta1, beta2, wd_positive=False)
    x = lr * wd
    s_q, s_1 = _lion_series(x, b1, b2)
    if exact:
        q = 1.0 - x
        y = x * (q - x * s_q) / (q * (1.0 + 2.0 * s_q))
        return _out(_arccos_one_minus(y))
    return _out(np.sqrt(2.0 * x / (1.0 + 2.0 * s_1)))


def lion_equilibrium_norm(
    lr: ArrayLike,
    wd: ArrayLike,
    n_params: ArrayLike,
    beta1: ArrayLike = 0.9,
    beta2: ArrayLike = 0.99,
    exact: bool = True,
) -> Array:
    r"""Equilibrium norm of a C-element SI group trained by Lion.

    Under the model of :func:`lion_equilibrium_angle`::

        rho*^2 = eta^2 C (1 + 2 S) / (1 - q^2),   S = sum_{k>=1} q^k s_k

    exact under the model; first order ``rho* = sqrt(eta C (1 + 2 S_1) / (2 lam))``.
    Derived here (docs/theory.md gives no Lion norm).

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    n_params : array_like
        Number of parameters C in the SI group, ``> 0``.
    beta1 : array_like, default 0.9
        First-moment (interpolation) coefficient in ``[0, 1)``.
    beta2 : array_like, default 0.99
        Lion's momentum coefficient in ``[0, 1)``.
    exact : bool, default True
        Exact form (see above) or the first-order form in ``lr*wd``.

    Returns
    -------
    ndarray or float
        Equilibrium norm rho*. Broadcast over the inputs.
    """
    lr, wd, b1, b2 = _lion_common(lr, wd, beta1, beta2)
    c = check_positive("n_params", n_params)
    x = lr * wd
    s_q, s_1 = _lion_series(x, b1, b2)
    if exact:
        with np.errstate(over="ignore", under="ignore"):  # see _ratio_power
            num, den = lr**2 * c * (1.0 + 2.0 * s_q), x * (2.0 - x)
        return _out(_ratio_power(0.5, num, den, (lr, lr, c, 1.0 + 2.0 * s_q), (x, 2.0 - x)))
    with np.errstate(over="ignore", under="ignore"):
        num, den = lr * c * (1.0 + 2.0 * s_1), 2.0 * wd
    return _out(_ratio_power(0.5, num, den, (lr, c, 1.0 + 2.0 * s_1), (2.0 * wd,)))


# --------------------------------------------------------------------------- exponential LR


def exponential_lr_alpha(lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0) -> Array:
    r"""Growth base alpha of the equivalent exponential LR schedule (Li & Arora 2019).

    The larger root of ``alpha^2 - (1 + mu - eta lam) alpha + mu = 0``; ``1 - eta lam``
    for ``mu = 0``. Exact. Requires real roots, ``eta lam <= (1 - sqrt(mu))^2``.
    Source: docs/theory.md section 3 (Li & Arora 2019, "An exponential learning rate
    schedule for deep learning").

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.

    Returns
    -------
    ndarray or float
        The base alpha. Broadcast over the inputs.
    """
    return _out(_exponential_lr_root(lr, wd, momentum)[0])


def _exponential_lr_root(lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike) -> tuple[Array, Array]:
    """Validated ``(alpha, log alpha)``; ``log alpha`` keeps full relative accuracy."""
    lr, wd = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    x = lr * wd
    if np.any(x > (1.0 - np.sqrt(mu)) ** 2):
        raise ValueError(
            "lr*wd must be <= (1 - sqrt(momentum))^2 for a real exponential-LR base alpha; "
            "lower lr, wd or momentum"
        )
    return _dominant_root(x, mu)


def exponential_lr_schedule(
    t: ArrayLike, lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0
) -> Array:
    r"""Learning rate ``eta_t = eta alpha^(-2t-1)`` equivalent to SGD(M) with weight decay.

    On an SI loss, SGD(M) with weight decay lam and LR eta gives the same directions
    as SGD(M) with the same momentum, no weight decay and LR ``eta_t`` applied to
    ``u_t = w_t / alpha^t`` (Li & Arora 2019; docs/theory.md section 3). Exact, provided
    the no-decay run starts from :func:`exponential_lr_initial_buffer` when
    ``momentum > 0`` (for ``momentum = 0`` it holds from any start).

    Parameters
    ----------
    t : array_like
        Number of steps (may be fractional).
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.

    Returns
    -------
    ndarray or float
        Learning rate at step ``t``. Broadcast over the inputs.
    """
    lr_arr = check_positive("lr", lr)
    t = check_finite("t", t)
    _, log_alpha = _exponential_lr_root(lr, wd, momentum)
    return _out(lr_arr * np.exp(-(2.0 * t + 1.0) * log_alpha))


def exponential_lr_initial_buffer(
    w0: ArrayLike,
    lr: float,
    wd: float,
    momentum: float,
    buffer0: ArrayLike | None = None,
) -> Array:
    r"""Momentum buffer that makes the exponential-LR run match SGDM + WD from step 0.

    For t >= 1 both runs obey the same two-step recursion, but their first steps
    differ unless the no-decay run starts from the buffer::

        v^u_0 = v_0 + (alpha - 1 + eta lam) w_0 / (eta mu)

    (``v_0`` the weight-decay run's initial buffer, zero in PyTorch). Derived by
    equating ``u_1 = w_1/alpha``; exact. With ``mu = 0`` the buffer is unused and
    ``v_0`` is returned. Starting the no-decay run from a zero buffer instead gives
    directions that differ by a transient (1e-4..1e-2 in the tests), not 1e-12:
    docs/theory.md's statement of the equivalence omits this condition.

    Parameters
    ----------
    w0 : array_like
        Initial weights of both runs.
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    momentum : array_like
        Heavy-ball momentum mu in ``[0, 1)``.
    buffer0 : array_like, optional
        Initial momentum buffer of the weight-decay run (zero, as in PyTorch, if omitted).

    Returns
    -------
    ndarray or float
        Initial momentum buffer of the no-decay run, same shape as ``w0``.
    """
    w0 = check_finite("w0", w0)
    lr_a, wd_a = check_lr_wd(lr, wd, wd_positive=False)
    mu = check_momentum(momentum)
    if lr_a.ndim or wd_a.ndim or mu.ndim:
        raise ValueError("lr, wd and momentum must be scalars here; pass floats")
    v0 = np.zeros_like(w0) if buffer0 is None else check_finite("buffer0", buffer0)
    if float(mu) == 0.0:
        return v0
    alpha = float(exponential_lr_alpha(lr_a, wd_a, mu))
    x = float(lr_a * wd_a)
    return v0 + (alpha - 1.0 + x) * w0 / (float(lr_a) * float(mu))


# --------------------------------------------------------------------------- period


def period_from_norm_ratio(
    lr: ArrayLike,
    wd: ArrayLike,
    norm_ratio: ArrayLike,
    escape_steps: ArrayLike = 0.0,
    momentum: ArrayLike = 0.0,
    *,
    nesterov: bool = False,
) -> Array:
    r"""Period of the destabilization cycle from the norm ratio (docs/theory.md section 2).

    After a jump the norm is ``rho_max``; while the loss converges the gradient is
    negligible and the norm decays by :func:`decay_factor` per step until it reaches
    ``rho_crit``::

        T = ln(norm_ratio) / (-ln decay_factor) + escape_steps,  norm_ratio = rho_max / rho_crit

    (a ratio of norms, not squares; for SGD ``-ln decay_factor = -log1p(-eta lam)``,
    equivalently ``ln(rho_max^2/rho_crit^2) / (-2 ln(1 - eta lam))``). Exact for the
    decay phase of the discrete map given the ratio; the ratio and ``escape_steps``
    are model inputs.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    norm_ratio : array_like
        ``rho_max / rho_crit >= 1`` (norms, not squares).
    escape_steps : array_like, default 0
        Steps spent escaping after the norm reaches the threshold, ``>= 0``.
    momentum : array_like, default 0
        Heavy-ball momentum mu in ``[0, 1)``.
    nesterov : bool, default False
        PyTorch ``nesterov=True`` update instead of heavy ball (its :func:`decay_factor`).

    Returns
    -------
    ndarray or float
        Period in steps. Broadcast over the inputs.
    """
    lr, wd = check_lr_wd(lr, wd)
    ratio = check_positive("norm_ratio", norm_ratio)
    if np.any(ratio < 1.0):
        raise ValueError(
            "norm_ratio must be >= 1 (the norm after the jump must be at least the critical "
            "norm); pass rho_max / rho_crit"
        )
    esc = check_nonnegative("escape_steps", escape_steps)
    mu = check_momentum(momentum)
    return _out(np.log(ratio) / (-_log_decay(lr, wd, mu, bool(nesterov))) + esc)


def free_decay_steps(step: ArrayLike, rate: ArrayLike, start: ArrayLike, fall: ArrayLike) -> Array:
    r"""Steps from ``start`` until the zero-gradient decay under a schedule lowers ``ln rho``
    by ``fall``: the schedule form of the decay time in :func:`period_from_norm_ratio`.

    At zero gradient the exact map of docs/theory.md section 1 multiplies the norm by
    ``q_t`` at step ``t``, so from step ``s`` the norm has fallen by
    ``F(s, t) = sum_{u=s}^{t-1} r_u`` in ``ln rho``, ``r_u = -ln q_u``
    (:func:`decay_rate` at that step's ``lr``, ``wd`` and momentum). The result is ``t - s``
    with ``F(s, t) = fall``: ``fall / r`` at a constant rate, i.e.
    ``ln(norm_ratio) / (-ln decay_factor)`` with ``fall = ln(norm_ratio)``.

    Parameters
    ----------
    step : array_like
        Increasing steps of a log, one row each.
    rate : array_like
        ``r`` per row, ``>= 0``: it holds from that row's step to the next row's; after the
        last row the last rate holds (and must then be ``> 0`` if it is needed).
    start : array_like
        Steps to count from (broadcast with ``fall``), within or after the logged steps.
    fall : array_like
        Fall of ``ln rho``, ``>= 0``.

    Returns
    -------
    ndarray or float
        Steps (real-valued: the cumulative decay is linear between logged steps).
    """
    st = np.asarray(step, dtype=np.float64)
    r = check_nonnegative("rate", rate)
    if st.ndim != 1 or st.size < 1 or np.shape(r) != st.shape:
        raise ValueError("step and rate must be one value per row of the same 1-D log")
    if np.any(np.diff(st) <= 0):
        raise ValueError("step must increase from row to row")
    s0 = np.asarray(start, dtype=np.float64)
    if not np.all(np.isfinite(s0) & (s0 >= st[0])):
        raise ValueError(f"start must be finite steps from the first logged step {st[0]:g} on")
    f = check_nonnegative("fall", fall)
    # cumulative decay at each logged step, and beyond the last at the last rate
    cum = np.concatenate([[0.0], np.cumsum(r[:-1] * np.diff(st))])
    last = float(r[-1])

    def cum_at(t: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.where(t <= st[-1], np.interp(t, st, cum), cum[-1] + last * (t - st[-1]))

    target = cum_at(s0) + f
    inside = target <= cum[-1]
    # the first step where the cumulative decay reaches the target (it may stay flat
    # where the rate is 0: the earliest such step)
    idx = np.clip(np.searchsorted(cum, target, side="left"), 1, st.size - 1)
    lo, hi = cum[idx - 1], cum[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(hi > lo, (target - lo) / (hi - lo), 0.0)
    t_in = st[idx - 1] + frac * (st[idx] - st[idx - 1]) if st.size > 1 else np.full_like(f, st[0])
    if np.any(~inside) and not last > 0:
        raise ValueError(
            "the fall is not reached within the log and its last rate is 0; log further or "
            "pass a positive last rate"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        t_out = st[-1] + (target - cum[-1]) / last
    # a zero fall over rows of zero rate: the step itself, not an earlier flat one
    return _out(np.maximum(np.where(inside, t_in, t_out) - s0, 0.0))


def period(
    lr: ArrayLike,
    wd: ArrayLike,
    rho_max: ArrayLike,
    rho_crit: ArrayLike,
    escape_steps: ArrayLike = 0.0,
    momentum: ArrayLike = 0.0,
) -> Array:
    r"""Period ``ln(rho_max / rho_crit) / (-ln decay_factor) + escape_steps``.

    See :func:`period_from_norm_ratio`; ``rho_max`` and ``rho_crit`` are norms
    (e.g. ``rho_crit`` from :func:`critical_norm`).

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``>= 0`` (``> 0`` where the formula divides by it), ``lr*wd < 1``.
    rho_max : array_like
        Norm right after the destabilization jump.
    rho_crit : array_like
        Critical norm at which the minimum loses stability (:func:`critical_norm`).
    escape_steps : array_like, default 0
        Steps spent escaping after the norm reaches the threshold, ``>= 0``.
    momentum : array_like, default 0
        Heavy-ball momentum mu in ``[0, 1)``.

    Returns
    -------
    ndarray or float
        Period in steps. Broadcast over the inputs.
    """
    rmax = check_positive("rho_max", rho_max)
    rcrit = check_positive("rho_crit", rho_crit)
    if np.any(rmax < rcrit):
        raise ValueError("rho_max must be >= rho_crit; pass the norm after the jump as rho_max")
    return period_from_norm_ratio(lr, wd, rmax / rcrit, escape_steps, momentum)


# ------------------------------------------------------------ exact checks of scale invariance


def sgd_radial_norm(rho: ArrayLike, angle: ArrayLike, lr: ArrayLike, wd: ArrayLike) -> Array:
    r"""Norm after one SGD + WD step from its angle: ``rho' = (1 - eta lam) rho / cos Delta``.

    ``w' = (1 - eta lam) w - eta grad L(w)``; for an SI loss the gradient is orthogonal
    to ``w`` (docs/theory.md section 0), so the component of ``w'`` along ``w`` is the
    decay alone: ``rho' cos Delta = (1 - eta lam) rho``. Exact for the discrete map
    whatever the gradient (docs/theory.md section 1); it needs no gradient norm, so
    a log of norms and angles checks scale invariance directly. Not validated:
    per-row log columns may hold NaN.

    Parameters
    ----------
    rho : array_like
        Norm ``|w_t|`` before the step.
    angle : array_like
        Angle ``Delta_t = angle(w_t, w_{t+1})`` of the step, radians.
    lr, wd : array_like
        Learning rate and weight decay of the step.

    Returns
    -------
    ndarray or float
        The norm ``|w_{t+1}|`` the law predicts, broadcast over the inputs.
    """
    rho, angle, lr, wd = _float_arrays(rho=rho, angle=angle, lr=lr, wd=wd)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _out((1.0 - lr * wd) * rho / np.cos(angle))


def sgd_radial_norm_window(
    rho: ArrayLike, log_cos_mean: ArrayLike, steps: ArrayLike, lr: ArrayLike, wd: ArrayLike
) -> Array:
    r"""Norm after ``k`` SGD + WD steps from the mean of ``ln cos Delta`` over them.

    :func:`sgd_radial_norm` applied ``k`` times at constant ``eta lam``::

        rho_{t+k} = rho_t (1 - eta lam)^k / prod_s cos Delta_s
                  = rho_t exp(k (ln(1 - eta lam) - mean_s ln cos Delta_s))

    Exact for the discrete map of an SI group whatever the gradients
    (docs/theory.md sections 0-1), with ``lr`` and ``wd`` constant over the ``k``
    steps; it checks a log recorded every ``k`` steps that keeps the window mean of
    ``ln cos Delta`` (``log_cos_mean_window`` of :class:`siflow.torch_probe.SIRecorder`).
    Not validated: per-row log columns may hold NaN.

    Parameters
    ----------
    rho : array_like
        Norm at the first step of the window.
    log_cos_mean : array_like
        Mean of ``ln cos Delta_s`` over the window's steps.
    steps : array_like
        Steps ``k`` in the window.
    lr, wd : array_like
        Learning rate and weight decay over the window.

    Returns
    -------
    ndarray or float
        The norm ``k`` steps later, broadcast over the inputs.
    """
    rho, lc, k, lr, wd = _float_arrays(
        rho=rho, log_cos_mean=log_cos_mean, steps=steps, lr=lr, wd=wd
    )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _out(rho * np.exp(k * (np.log1p(-lr * wd) - lc)))


def heavy_ball_radial_norm(
    rho_prev: ArrayLike,
    angle_prev: ArrayLike,
    rho: ArrayLike,
    angle: ArrayLike,
    lr_prev: ArrayLike,
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike,
) -> Array:
    r"""Norm after one PyTorch heavy-ball step from the last two angles and norms.

    PyTorch's SGD with momentum ``mu`` (dampening 0) and coupled weight decay,
    ``v_{t+1} = mu v_t + g_t + lam_t w_t``, ``w_{t+1} = w_t - eta_t v_{t+1}``, has
    ``eta_{t-1} v_t = w_{t-1} - w_t``, hence

    ``w_{t+1} = (1 - eta_t lam_t) w_t + mu (eta_t/eta_{t-1}) (w_t - w_{t-1}) - eta_t g_t``.

    Projected on ``w_t`` (``<g_t, w_t> = 0`` for an SI loss, docs/theory.md section 0,
    and ``<w_{t-1}, w_t>/rho_t = rho_{t-1} cos Delta_{t-1}``)::

        rho_{t+1} cos Delta_t = (1 - eta_t lam_t) rho_t
                                + mu (eta_t/eta_{t-1}) (rho_t - rho_{t-1} cos Delta_{t-1})

    Exact for the discrete map for ``t >= 1`` whatever the gradients (derived here;
    the heavy-ball map is docs/theory.md section 3); at ``mu = 0`` it is
    :func:`sgd_radial_norm`. Needs consecutive steps. Not validated: per-row log
    columns may hold NaN.

    Parameters
    ----------
    rho_prev, angle_prev : array_like
        ``rho_{t-1}`` and ``Delta_{t-1}`` (radians).
    rho, angle : array_like
        ``rho_t`` and ``Delta_t``.
    lr_prev, lr : array_like
        ``eta_{t-1}`` and ``eta_t``.
    wd : array_like
        ``lam_t``.
    momentum : array_like
        ``mu`` in ``[0, 1)``.

    Returns
    -------
    ndarray or float
        The norm ``rho_{t+1}`` the law predicts, broadcast over the inputs.
    """
    r0, a0, r1, a1, l0, l1, lam, mu = _float_arrays(
        rho_prev=rho_prev,
        angle_prev=angle_prev,
        rho=rho,
        angle=angle,
        lr_prev=lr_prev,
        lr=lr,
        wd=wd,
        momentum=momentum,
    )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        radial = (1.0 - l1 * lam) * r1 + mu * (l1 / l0) * (r1 - r0 * np.cos(a0))
        return _out(radial / np.cos(a1))


def decay_product(
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike = 0.0,
    repeats: ArrayLike | None = None,
) -> NDArray[np.float64]:
    r"""Norm factor of a schedule at zero gradient: ``prod_{s<t} q(eta_s, lam_s, mu)``.

    With no gradient each step multiplies the norm by :func:`decay_factor`
    ``q = 1 - eta_s lam_s`` (SGD with coupled WD, and AdamW/Lion's decoupled WD:
    exact for the discrete map; heavy ball: the asymptotic factor, first order in a
    changing ``lr``), so between two destabilizations the norm follows this product
    (docs/theory.md section 1). Computed as ``exp(-cumsum(decay_rate))``
    (:func:`decay_rate` is accurate to 1e-12 relative even at ``lr*wd = 1e-12``).

    Parameters
    ----------
    lr, wd : array_like
        Per-entry learning rate and weight decay (scalars broadcast; 1-d).
    momentum : array_like, default 0
        Heavy-ball momentum.
    repeats : array_like of int, optional
        Steps each entry stands for (a log row ``k`` steps before the next row with
        the schedule held over those steps); default 1.

    Returns
    -------
    ndarray
        ``1, q_0^{n_0}, q_0^{n_0} q_1^{n_1}, ...`` (length ``T + 1``).
    """
    lr, wd, mu = _per_step(lr=lr, wd=wd, momentum=momentum)
    rate = np.asarray(decay_rate(lr, wd, mu), dtype=np.float64).reshape(lr.shape)
    if repeats is not None:
        n = as_float_array("repeats", repeats)
        if n.shape != lr.shape or np.any(~np.isfinite(n)) or np.any(n < 0):
            raise ValueError(f"repeats must hold one step count >= 0 per entry ({lr.size} entries)")
        rate = rate * n
    return np.exp(-np.concatenate(([0.0], np.cumsum(rate))))


def total_angular_update(
    angles: ArrayLike, norms: ArrayLike, norms_after: ArrayLike | None = None
) -> Array:
    r"""Angular update of the whole SI vector from its groups' angles and norms.

    The SI weights ``w`` are the concatenation of groups ``w_g`` (layers), so
    ``|w' - w|^2 = sum_g |w'_g - w_g|^2`` and ``<w, w'> = sum_g <w_g, w'_g>``
    exactly. When no group's norm changes over the step (the tangential part of the
    update), ``|w'_g - w_g| = 2 rho_g sin(Delta_g / 2)`` and the total is exactly::

        sin^2(Delta / 2) = sum_g rho_g^2 sin^2(Delta_g / 2) / sum_g rho_g^2

    which to first order in the angles is::

        Delta^2 = sum_g rho_g^2 Delta_g^2 / sum_g rho_g^2

    A change of the groups' norms by a common factor (weight decay) rotates nothing;
    unequal relative changes ``rho'_g / rho_g`` add
    ``sum_g rho_g^2 (rho'_g/rho_g - mean)^2`` to ``|w' - w|^2``, which is second order
    in the angles for SGD (gradients orthogonal to ``w_g``, docs/theory.md section 0)
    and of relative size ``1/C_g`` for AdamW/Lion, whose update has a radial part
    (docs/theory.md section 5). With ``norms_after`` the result is exact for any step::

        cos Delta = sum_g rho_g rho'_g cos Delta_g / sqrt(sum_g rho_g^2 sum_g rho'_g^2)

    Not validated for NaN: per-row log columns may hold it (it propagates).

    Parameters
    ----------
    angles : array_like, shape (G, ...)
        Angle ``Delta_g = angle(w_g, w'_g)`` of each group over the step, radians
        (axis 0 runs over the groups; the other axes, e.g. log rows, broadcast).
    norms : array_like, shape (G, ...)
        Norms ``rho_g = |w_g|`` before the step.
    norms_after : array_like, shape (G, ...), optional
        Norms ``|w'_g|`` after the step: the exact formula above.

    Returns
    -------
    ndarray or float
        ``Delta`` of the concatenated groups, radians, shape ``(...)``.
    """
    a, r = _float_arrays(angles=angles, norms=norms)
    if a.ndim == 0 or a.shape != r.shape:
        raise ValueError(
            f"angles and norms must have the same shape with the groups on axis 0, got "
            f"{a.shape} and {r.shape}; stack one row per group"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        if norms_after is None:
            s2 = np.sum(r**2 * np.sin(a / 2.0) ** 2, axis=0) / np.sum(r**2, axis=0)
            return _out(2.0 * np.arcsin(np.sqrt(np.clip(s2, 0.0, 1.0))))
        r1 = as_float_array("norms_after", norms_after)
        if r1.shape != r.shape:
            raise ValueError(f"norms_after must have the shape of norms {r.shape}, got {r1.shape}")
        # 1 - cos Delta without cancellation: sqrt(AB) - sum r r1 by Lagrange's identity,
        # AB - (sum r r1)^2 = 1/2 sum_ij (r_i r1_j - r_j r1_i)^2
        dot = np.sum(r * r1, axis=0)
        den = np.sqrt(np.sum(r**2, axis=0) * np.sum(r1**2, axis=0))
        cross = r[:, None] * r1[None, :] - r[None, :] * r1[:, None]
        gap = 0.5 * np.sum(cross**2, axis=(0, 1)) / (den + dot)
        one_minus_cos = (gap + 2.0 * np.sum(r * r1 * np.sin(a / 2.0) ** 2, axis=0)) / den
        half = np.sqrt(np.clip(one_minus_cos / 2.0, 0.0, 1.0))
        return _out(2.0 * np.arcsin(half))


# --------------------------------------------------------------------------- summary

EQUILIBRIUM_KEYS: tuple[str, ...] = (
    "lr",
    "wd",
    "momentum",
    "grad_norm",
    "norm",
    "norm_first_order",
    "elr",
    "elr_first_order",
    "angular_update",
    "angular_update_first_order",
    "relaxation_time",
    "relaxation_time_first_order",
    "elr_doubling_time",
    "decay_factor",
    "decay_rate",
    "optimizer",
)

#: Optimizers :func:`equilibrium` knows, with the formula family each one uses.
OPTIMIZERS: dict[str, str] = {
    "sgd": "SGD + coupled WD (heavy ball when momentum > 0): sgd_*/sgdm_* forms",
    "sgdm": "PyTorch heavy-ball SGD + coupled WD: sgdm_* forms",
    "nesterov": "PyTorch Nesterov SGD + coupled WD: sgdm_*(nesterov=True) forms",
    "adamw": "AdamW, decoupled WD: adamw_* forms (per group of n_params elements)",
    "lion": "Lion, decoupled WD: lion_* forms (per group of n_params elements)",
}


def label_smoothing_loss_floor(smoothing: ArrayLike, n_classes: int) -> Array:
    """The smallest cross-entropy against label-smoothed targets: their entropy.

    With smoothing ``eps`` over ``K`` classes (PyTorch's ``label_smoothing``: ``eps``
    spread uniformly over all classes), the target is ``q = 1 - eps + eps/K`` on the
    true class and ``eps/K`` on each other one, and ``CE(q, p) = H(q) + KL(q || p) >= H(q)``:

    ``L0 = -(1 - eps + eps/K) ln(1 - eps + eps/K) - (K - 1) (eps/K) ln(eps/K)``

    (0.50 at ``eps = 0.1``, ``K = 10``), reached only at ``p = q``. A destabilization
    multiplies the excess ``L - L0``; ``siflow.periods.find_events(loss_floor=...)``.
    Source: Szegedy et al., "Rethinking the Inception architecture" (CVPR 2016), section 7.

    Parameters
    ----------
    smoothing : array_like
        ``eps`` in [0, 1].
    n_classes : int
        ``K >= 2``.
    """
    eps = as_float_array("smoothing", smoothing)
    if np.any(~np.isfinite(eps)) or np.any(eps < 0) or np.any(eps > 1):
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    k = float(n_classes)
    true, other = 1.0 - eps + eps / k, eps / k
    with np.errstate(divide="ignore", invalid="ignore"):
        h_other = np.where(other > 0, other * np.log(np.where(other > 0, other, 1.0)), 0.0)
    return _out(-true * np.log(true) - (k - 1.0) * h_other)


__all__ += ["label_smoothing_loss_floor"]


def check_optimizer(optimizer: str) -> str:
    """The optimizer name, lower-cased, or ``ValueError`` naming the known ones."""
    name = str(optimizer).strip().lower()
    if name not in OPTIMIZERS:
        known = ", ".join(OPTIMIZERS)
        raise ValueError(f"optimizer must be one of {known}; got {optimizer!r}")
    return name


def _scalars(out: dict[str, Any], scalar: bool) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, str) else float(v) if scalar else np.asarray(v, dtype=np.float64))
        for k, v in out.items()
    }


def _sgd_family_equilibrium(
    lr: Array, wd: Array, g: Array | None, mu: Array, nesterov: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "angular_update": sgdm_equilibrium_angle(lr, wd, mu, nesterov=nesterov),
        "angular_update_first_order": sgdm_equilibrium_angle(
            lr, wd, mu, exact=False, nesterov=nesterov
        ),
    }
    if g is not None:
        out["grad_norm"] = g
        out["norm"] = sgdm_equilibrium_norm(lr, wd, g, mu, nesterov=nesterov)
        out["norm_first_order"] = sgdm_equilibrium_norm(
            lr, wd, g, mu, exact=False, nesterov=nesterov
        )
        out["elr"] = sgdm_equilibrium_elr(lr, wd, g, mu)
        out["elr_first_order"] = sgdm_equilibrium_elr(lr, wd, g, mu, exact=False)
        if nesterov:
            out["elr"] = effective_lr(lr, out["norm"])
            out["elr_first_order"] = effective_lr(lr, out["norm_first_order"])
    if not nesterov:
        out["relaxation_time"] = sgdm_relaxation_time(lr, wd, mu)
        out["relaxation_time_first_order"] = sgdm_relaxation_time(lr, wd, mu, exact=False)
    out["elr_doubling_time"] = elr_doubling_time(lr, wd, mu, nesterov=nesterov)
    out["decay_factor"] = decay_factor(lr, wd, mu, nesterov=nesterov)
    out["decay_rate"] = decay_rate(lr, wd, mu, nesterov=nesterov)
    return out


def _adaptive_equilibrium(
    name: str, lr: Array, wd: Array, betas: tuple[float, float], n_params: Array | None
) -> dict[str, Any]:
    b1, b2 = betas
    if name == "adamw":
        out: dict[str, Any] = {
            "angular_update": adamw_equilibrium_angle(lr, wd, b1),
            "angular_update_first_order": adamw_equilibrium_angle(lr, wd, b1, exact=False),
        }
        if n_params is not None:
            out["norm"] = adamw_equilibrium_norm(lr, wd, n_params, b1)
            out["norm_first_order"] = adamw_equilibrium_norm(lr, wd, n_params, b1, exact=False)
    else:
        out = {
            "angular_update": lion_equilibrium_angle(lr, wd, b1, b2),
            "angular_update_first_order": lion_equilibrium_angle(lr, wd, b1, b2, exact=False),
        }
        if n_params is not None:
            out["norm"] = lion_equilibrium_norm(lr, wd, n_params, b1, b2)
            out["norm_first_order"] = lion_equilibrium_norm(lr, wd, n_params, b1, b2, exact=False)
    # decoupled decay at zero update: w <- (1 - eta lam) w, exact
    out["decay_factor"] = decay_factor(lr, wd)
    out["decay_rate"] = decay_rate(lr, wd)
    # rho^2 <- q^2 rho^2 + c: deviations contract by q^2 per step (quasi-static)
    out["relaxation_time"] = decoupled_relaxation_time(lr, wd)
    out["relaxation_time_first_order"] = 0.5 / (lr * wd)
    return out


def equilibrium(
    lr: ArrayLike,
    wd: ArrayLike,
    grad_norm: ArrayLike | None = None,
    momentum: ArrayLike = 0.0,
    *,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.9, 0.999),
    n_params: ArrayLike | None = None,
) -> dict[str, Any]:
    r"""All equilibrium quantities of an SI group for the optimizer that ran.

    One front door for the per-optimizer closed forms (docs/theory.md sections 1-5):

    * ``"sgd"`` / ``"sgdm"``: SGD + coupled WD, heavy ball when ``momentum > 0``
      (the ``sgdm_*`` forms, which reduce exactly to the ``sgd_*`` ones at
      ``momentum = 0``; exact for the discrete map there, exact under the
      second-moment model with momentum). Keys: ``angular_update``,
      ``relaxation_time``, ``elr_doubling_time``, ``decay_factor``, ``decay_rate``
      (each with ``_first_order`` where one exists) and, given ``grad_norm``, the
      equilibrium ``norm`` and ``elr``.
    * ``"nesterov"``: the ``nesterov=True`` forms, with Nesterov's zero-gradient
      ``decay_factor``, ``decay_rate`` and ``elr_doubling_time``; no relaxation time.
    * ``"adamw"`` / ``"lion"``: decoupled WD; the angle needs only ``lr``, ``wd``
      and ``betas``; the norm needs the group size ``n_params`` (C) and is
      independent of the gradient scale; the zero-update ``decay_factor`` is
      ``1 - eta lam``; ``relaxation_time`` is :func:`decoupled_relaxation_time`
      (first order ``1/(2 eta lam)``). ``grad_norm`` and ``momentum`` are not used.

    Every result also carries ``lr``, ``wd``, ``momentum`` and ``optimizer``. A
    quantity the optimizer's theory does not define is absent from the dict (print
    it as n/a). Scalar inputs give ``float`` values; array inputs give broadcast
    arrays.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``> 0``, ``lr*wd < 1``.
    grad_norm : array_like, optional
        Gradient norm on the unit sphere, ``> 0`` (SGD family: needed for the norm
        and the effective LR).
    momentum : array_like, default 0
        Momentum in ``[0, 1)`` (SGD family).
    optimizer : {"sgd", "sgdm", "nesterov", "adamw", "lion"}, default "sgd"
        The update rule whose theory is used.
    betas : (float, float), default (0.9, 0.999)
        ``(beta1, beta2)`` of AdamW (beta2 unused by the model) or Lion.
    n_params : array_like, optional
        Number of elements C of the SI group (AdamW and Lion norms).
    """
    name = check_optimizer(optimizer)
    lr, wd = check_lr_wd(lr, wd)
    mu = check_momentum(momentum)
    g = None if grad_norm is None else check_positive("grad_norm", grad_norm)
    if name in ("adamw", "lion"):
        c = None if n_params is None else check_positive("n_params", n_params)
        b = (beta_number("beta1", betas[0]), beta_number("beta2", betas[1]))
        lr, wd = np.broadcast_arrays(lr, wd)
        out = _adaptive_equilibrium(name, lr, wd, b, c)
    else:
        arrays = [lr, wd, mu] + ([] if g is None else [g])
        lr, wd, mu, *rest = np.broadcast_arrays(*arrays)
        g = rest[0] if rest else None
        out = _sgd_family_equilibrium(lr, wd, g, mu, nesterov=name == "nesterov")
    out = {"lr": lr, "wd": wd, "momentum": mu, **out}
    result = _scalars(out, np.ndim(lr) == 0)
    result["optimizer"] = name
    order = [k for k in EQUILIBRIUM_KEYS if k in result]
    return {k: result[k] for k in order + [k for k in result if k not in order]}


# --------------------------------------------------------------------------- regime lines


def decay_end_step(
    lr: ArrayLike,
    wd: ArrayLike,
    sharpness: float,
    rho0: float = 1.0,
    momentum: float = 0.0,
    grad_norm: float | None = None,
) -> NDArray[np.float64]:
    """Step at which the initial weight-decay phase of a run started at norm ``rho0`` ends.

    While the loss sits in a minimum the gradient is negligible and the norm decays
    by :func:`decay_factor` ``q`` per step (``1 - lr wd`` for SGD, exact at zero
    gradient; asymptotic with momentum). The decay ends at the first instability,
    when the norm reaches :func:`critical_norm`
    ``rho_crit = sqrt(lr S / (2 (1 + mu - lr wd)))`` (exact for the linearised map
    for SGD, quasi-static with momentum), or, with gradient noise of sphere norm
    ``G``, at the equilibrium norm ``rho*`` (:func:`sgdm_equilibrium_norm`) if that
    is larger::

        t_end = max(ln(rho0 / max(rho_crit, rho*)), 0) / (-ln q)

    A run of ``steps`` steps shows periods or an equilibrium only where ``t_end``
    is well below ``steps``; elsewhere the norm is still decaying ("converged").
    The fixed ``rho0`` breaks the scale symmetry (docs/theory.md section 0):
    ``t_end ~ ln(2 rho0^2/(lr S)) / (2 lr wd)`` depends on ``lr`` as well as on
    ``lr*wd``, so this boundary is not a line of constant ``lr*wd``.
    """
    lr_a, wd_a = check_lr_wd(lr, wd)
    rho0 = check_positive("rho0", rho0)
    rho_end = critical_norm(lr_a, wd_a, sharpness, momentum)
    if grad_norm:
        rho_end = np.maximum(rho_end, sgdm_equilibrium_norm(lr_a, wd_a, grad_norm, momentum))
    rate = decay_rate(lr_a, wd_a, momentum)
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(rho0 / rho_end), 0.0) / rate


def equilibrium_instability_lr_wd(
    grad_norm: float, sharpness: float, momentum: float = 0.0
) -> float:
    """The ``lr*wd`` above which the noise-driven equilibrium is unstable.

    At equilibrium the effective LR is :func:`sgdm_equilibrium_elr` (which reduces
    to :func:`sgd_equilibrium_elr` at ``momentum = 0``), a function of ``x = lr*wd``
    and the sphere gradient norm ``G``; it exceeds the stability threshold
    :func:`stability_threshold_elr` ``2 (1 + mu - x) / S`` above the root ``x*``
    returned here (found by bisection). For SGD the root is, exactly for the
    discrete map under constant ``G``, ``x* = 1 - S / sqrt(S^2 + 4 G^2)`` (first
    order ``2 G^2 / S^2``): below it the run settles into an equilibrium, above it
    the periodic behavior appears. Both sides depend on ``x`` only, so the boundary
    is a line of constant ``lr*wd``.
    """
    g = positive_number("grad_norm", grad_norm)
    s_ = positive_number("sharpness", sharpness)
    mu = momentum_number(momentum)

    def gap(x: float) -> float:
        elr = sgdm_equilibrium_elr(x, 1.0, g, mu)
        return float(elr - stability_threshold_elr(x, 1.0, s_, mu))

    lo, hi = 1e-300, 1.0 - 1e-15
    if gap(hi) < 0:
        return math.inf
    for _ in range(200):
        mid = math.sqrt(lo * hi) if hi / lo > 4 else 0.5 * (lo + hi)
        if gap(mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------ schedules: quasi-static norm

__all__ += ["quasi_static_norm_trajectory", "decoupled_relaxation_time"]


def quasi_static_norm_trajectory(
    rho0: float, lr: ArrayLike, wd: ArrayLike, rho_star: ArrayLike, coupled: bool = True
) -> NDArray[np.float64]:
    r"""Norm of an SI group under per-step ``eta_t``, ``lam_t``, pulled towards ``rho*_t``.

    Each step is the exact norm map of a constant-hyperparameter run whose fixed
    point is ``rho*_t`` (the equilibrium norm at ``eta_t, lam_t``), with
    ``q_t = 1 - eta_t lam_t``:

    * coupled decay (SGD, heavy ball): the push ``eta^2 g~^2 / rho^2`` of the SGD norm
      recursion (docs/theory.md section 1), written through its fixed point::

          rho^2_{t+1} = q_t^2 rho^2_t + (1 - q_t^2) rho*_t^4 / rho^2_t

      For SGD with ``rho*_t`` = :func:`sgd_equilibrium_norm` ``(eta_t, lam_t, g~_t)`` this
      is exactly :func:`sgd_norm_trajectory` (``(1 - q^2) rho*^4 = eta^2 g~^2``).
    * decoupled decay (AdamW, Lion): the update has a size that does not depend on
      ``|w|`` (``w <- q w - eta u`` with ``u`` orthogonal to ``w``), so::

          rho^2_{t+1} = q_t^2 rho^2_t + (1 - q_t^2) rho*_t^2

      exact for that map with ``|eta_t u_t|^2 = (1 - q_t^2) rho*_t^2``, i.e. the update
      size of :func:`adamw_equilibrium_norm` / :func:`lion_equilibrium_norm` at step
      ``t`` (docs/theory.md section 5; quasi-static: the momentum's memory of earlier
      learning rates is ignored).

    At constant hyperparameters both have ``rho*`` as fixed point; under a schedule
    the norm lags ``rho*_t`` by about a relaxation time (:func:`sgd_relaxation_time`,
    :func:`decoupled_relaxation_time`).

    Parameters
    ----------
    rho0 : float
        Norm before the first step, ``> 0``.
    lr, wd, rho_star : array_like
        Per-step values for steps ``0 .. T-1`` (scalars broadcast).
    coupled : bool, default True
        Coupled (SGD family) or decoupled (AdamW, Lion) weight decay.

    Returns
    -------
    ndarray
        ``rho_0 .. rho_T`` (length ``T + 1``).
    """
    r0 = positive_number("rho0", rho0)
    lr, wd, rs = _per_step(lr=lr, wd=wd, rho_star=rho_star)
    q2 = np.square(1.0 - lr * wd)
    push = (1.0 - q2) * (np.square(np.square(rs)) if coupled else np.square(rs))
    return _iterate_norm_map(r0, q2, push, coupled)


def decoupled_relaxation_time(lr: ArrayLike, wd: ArrayLike) -> Array:
    r"""Relaxation time (steps) of ``rho^2`` towards equilibrium under decoupled decay.

    The decoupled map ``x <- q^2 x + c`` (``x = rho^2``, ``q = 1 - eta lam``, ``c`` the
    squared update size, independent of ``x``; :func:`quasi_static_norm_trajectory`)
    contracts a deviation by ``q^2`` per step, so ``tau = -1 / ln(q^2) =
    1 / (2 decay_rate)``; first order ``1 / (2 eta lam)`` (the EMA timescale of
    Wang & Aitchison 2024, halved because ``rho^2`` is squared). Exact for that map.

    Parameters
    ----------
    lr : array_like
        Learning rate, ``> 0``.
    wd : array_like
        Weight decay, ``> 0``, ``lr*wd < 1``.

    Returns
    -------
    ndarray or float
        Time constant in steps.
    """
    lr, wd = check_lr_wd(lr, wd)
    with np.errstate(divide="ignore", over="ignore"):
        return _out(-1.0 / (2.0 * np.log1p(-lr * wd)))


# --- rotational monitor

#: Optimizers with a rotational equilibrium in this module (``torch.optim`` class names,
#: lower case); Adam with coupled weight decay has none here.
ROTATIONAL_OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "lion")


def equilibrium_relative_update(angle: ArrayLike) -> Array:
    r"""RMS relative update ``|w_{t+1} - w_t| / |w|`` at rotational equilibrium.

    At equilibrium ``E|w_{t+1}|^2 = E|w_t|^2 = rho*^2`` and the angular update is
    defined by ``cos Delta* = E<w_t, w_{t+1}> / rho*^2`` (the ``*_equilibrium_angle``
    functions), so ``E|w_{t+1} - w_t|^2 = 2 rho*^2 (1 - cos Delta*)``: the relative
    update is the chord of the angle,::

        |dw| / |w| = sqrt(2 (1 - cos Delta*)) = 2 sin(Delta* / 2)

    exact under the same model as the angle (first order: ``Delta*``). Source: the
    equilibrium angles of docs/theory.md sections 1, 3 and 5 (Kosson et al. 2024 state
    the equilibrium as this relative update).

    Parameters
    ----------
    angle : array_like
        Equilibrium angular update ``Delta*`` in radians, in ``[0, pi]``.

    Returns
    -------
    ndarray or float
        Relative update per step. Broadcast over the input.
    """
    a = check_nonnegative("angle", angle)
    if np.any(a > math.pi):
        raise ValueError(f"angle must be in [0, pi] radians, got max {float(np.max(a))!r}")
    return _out(2.0 * np.sin(a / 2.0))


def rotational_equilibrium(
    optimizer: str,
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    nesterov: bool = False,
) -> tuple[Array, Array]:
    r"""Equilibrium angular update and relative update of a weight under ``optimizer``.

    Dispatches to the closed forms of this module for the optimizer in use
    (``torch.optim`` names): ``"sgd"`` -> :func:`sgd_equilibrium_angle` (``momentum = 0``)
    or :func:`sgdm_equilibrium_angle`; ``"adamw"`` -> :func:`adamw_equilibrium_angle`
    (``beta1 = betas[0]``); ``"lion"`` -> :func:`lion_equilibrium_angle`. The relative
    update is :func:`equilibrium_relative_update` of that angle. Both hold for a
    scale-invariant weight (gradient orthogonal to it); a layer that is not exactly
    SI and still shows them is in rotational equilibrium (docs/theory.md section 5).

    Parameters
    ----------
    optimizer : str
        ``"sgd"``, ``"adamw"`` or ``"lion"`` (case-insensitive).
    lr, wd : array_like
        The weight's learning rate and weight decay (PyTorch convention: decoupled
        decay ``lr * wd`` per step for AdamW and Lion), ``lr*wd < 1``.
    momentum : array_like
        SGD momentum in ``[0, 1)``.
    betas : tuple of float
        AdamW ``(beta1, beta2)`` (beta2 unused) or Lion ``(beta1, beta2)``.
    nesterov : bool
        SGD with Nesterov momentum.

    Returns
    -------
    (angle, relative_update) : tuple
        Radians per step and ``|dw|/|w|`` per step.
    """
    name = str(optimizer).lower()
    if name == "sgd":
        if nesterov or np.any(np.asarray(momentum) != 0):
            angle = sgdm_equilibrium_angle(lr, wd, momentum, nesterov=nesterov)
        else:
            angle = sgd_equilibrium_angle(lr, wd)
    elif name == "adamw":
        angle = adamw_equilibrium_angle(lr, wd, betas[0])
    elif name == "lion":
        angle = lion_equilibrium_angle(lr, wd, betas[0], betas[1])
    else:
        raise ValueError(
            f"optimizer={optimizer!r} has no rotational equilibrium here; use one of "
            f"{', '.join(ROTATIONAL_OPTIMIZERS)} (Adam with coupled weight decay: use AdamW)"
        )
    return angle, equilibrium_relative_update(angle)


__all__ += ["ROTATIONAL_OPTIMIZERS", "equilibrium_relative_update", "rotational_equilibrium"]


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    from siflow._theory_cli import main as _main

    raise SystemExit(_main())
