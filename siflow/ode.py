"""Continuous-time models of scale-invariant (SI) training with weight decay.

All models use the flow time ``t = lr * step`` (docs/theory.md §4, Kunin et al. 2021); use
:func:`time_from_steps` / :func:`steps_from_time` to convert. Numerical solutions use
:func:`scipy.integrate.solve_ivp`; closed forms are given where they exist and the tests
check one against the other.

How they differ from the discrete map (docs/theory.md §1), for SGD with coupled weight decay
``w <- (1 - lr wd) w - lr grad L(w)`` whose norm obeys exactly
``rho^2_{k+1} = (1 - lr wd)^2 rho^2_k + lr^2 g~_k^2 / rho^2_k``:

* **Gradient flow** ``dw/dt = -grad L(w) - wd w``. As ``<grad L(w), w> = 0`` for an SI
  loss, ``d|w|^2/dt = -2 wd |w|^2`` exactly: the norm only decays,
  ``|w(t)| = e^{-wd t} |w(0)|``. There is no centrifugal term, hence no equilibrium norm
  and no destabilization mechanism; it is the ``lr -> 0`` limit at fixed ``t``.
* **Modified flow** (second-order backward error analysis of the SGD map,
  ``dw/dt = -grad F - (lr/2) Hess F grad F`` with ``F = L + wd |w|^2/2``). Using
  ``Hess L(w) w = -grad L(w)`` (docs/theory.md §0) one finds exactly

  .. math:: \\frac{d|w|^2}{dt} = -\\kappa |w|^2 + lr\\, |\\nabla L(w)|^2,
            \\qquad \\kappa = 2\\,wd + lr\\,wd^2,

  i.e. ``|w(t)|^2 = e^{-kappa t}|w(0)|^2 + lr int_0^t e^{-kappa (t - tau)} |g(tau)|^2 dtau``.
  The centrifugal term ``lr |g|^2`` of the map is restored at first order in ``lr``.
  docs/theory.md §4 quotes Kunin et al. with ``kappa = 2 wd``: that drops the ``lr wd^2``
  term, which the second-order expansion produces and which matches the map's own
  exponential decay rate ``-2 ln(1 - lr wd)/lr = 2 wd + lr wd^2 + O(lr^2 wd^3)``.
  With a constant sphere gradient norm ``g~ = G`` (``|g|^2 = G^2/|w|^2``),
  ``rho^4`` relaxes exponentially (rate ``2 kappa``) to ``lr G^2 / (wd (2 + lr wd))``;
  the exact map's fixed point is ``lr G^2/(wd (2 - lr wd))``: they differ at relative
  order ``lr wd`` (first-order agreement, not exact).
* **SDE moment equation** (Li, Lyu & Arora 2020): isotropic noise ``P_perp eps``,
  ``eps ~ N(0, noise^2 I/|w|^2)`` in ``dim`` dimensions (docs/theory.md §6; trace
  ``noise^2 (dim - 1)`` on the unit sphere). By Ito's formula the squared norm of the SDE
  is deterministic: ``d|W|^2/dt = -2 wd |W|^2 + lr (G^2 + noise^2 (dim - 1))/|W|^2``, so
  ``|W|^4`` relaxes as ``e^{-4 wd t}`` to ``lr (G^2 + noise^2 (dim - 1)) / (2 wd)``.
  First order in ``lr wd`` against the discrete map (whose fixed point has ``2 - lr wd``).
* **Momentum oscillator** (heavy ball ``v <- mu v + grad F; w <- w - lr v``). The
  second-order continuous limit of ``w_{k+1} - w_k - mu (w_k - w_{k-1}) = -lr grad F(w_k)``
  is ``(lr (1+mu)/2) w'' + (1 - mu) w' = -grad F``; for ``x = |w|^2`` it gives the damped
  oscillator ``x'' + 2 gamma x' + omega^2 x = 2 |w'|^2`` with
  ``gamma = (1 - mu)/(lr (1 + mu))`` and ``omega^2 = 4 wd/(lr (1 + mu))`` (docs/theory.md §4).
  Under-damped iff ``lr wd > (1 - mu)^2 / (4 (1 + mu))``. Its slow root
  ``~ -2 wd/(1 - mu)`` is the first-order decay of the map with momentum,
  ``|w|^2 ~ (1 - lr wd/(1 - mu))^{2k}``; the map's exact zero-gradient factor per step is
  the larger root of ``a^2 - (1 + mu - lr wd) a + mu = 0`` (docs/theory.md §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.integrate import solve_ivp

from siflow._validate import (
    check_finite,
    check_nonnegative,
    check_positive_int,
    finite_number,
    lr_wd_numbers,
    momentum_number,
    nonnegative_number,
    positive_number,
)

__all__ = [
    "time_from_steps",
    "steps_from_time",
    "gradient_flow",
    "modified_flow",
    "norm_flow",
    "sde_norm",
    "oscillator_coefficients",
    "damping_regime",
    "momentum_oscillator",
    "momentum_oscillator_ivp",
]

_RTOL = 1e-11
_ATOL = 1e-13


def time_from_steps(steps: ArrayLike, lr: float) -> NDArray[np.float64]:
    """Flow time ``t = lr * step``."""
    return np.asarray(steps, dtype=np.float64) * positive_number("lr", lr)


def steps_from_time(t: ArrayLike, lr: float) -> NDArray[np.float64]:
    """Optimizer steps ``t / lr`` for a flow time ``t``."""
    return np.asarray(t, dtype=np.float64) / positive_number("lr", lr)


def _times(t: ArrayLike) -> NDArray[np.float64]:
    arr = check_nonnegative("t", t)
    if arr.ndim > 1:
        raise ValueError(f"t must be a time or a 1-D list of times, got shape {arr.shape}")
    return np.atleast_1d(arr).astype(np.float64)


def _tolerances(rtol: float, atol: float) -> tuple[float, float]:
    """The solver's relative and absolute tolerances, each one positive number."""
    return positive_number("rtol", rtol), positive_number("atol", atol)


def _w0(w0: ArrayLike) -> NDArray[np.float64]:
    arr = check_finite("w0", w0).astype(np.float64).ravel()
    if arr.size == 0 or not np.any(arr):
        raise ValueError("w0 must be a nonzero vector; an SI loss is undefined at the origin")
    return arr


def gradient_flow(
    grad: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    w0: ArrayLike,
    t: ArrayLike,
    *,
    wd: float,
    rtol: float = _RTOL,
    atol: float = _ATOL,
    method: str = "DOP853",
) -> Any:
    """Gradient flow with weight decay ``dw/dt = -grad L(w) - wd w`` (``t = lr * step``).

    For an SI loss the norm obeys ``|w(t)| = e^{-wd t}|w(0)|`` exactly (no centrifugal
    term; see the module docstring). ``t`` is the increasing array of output times
    starting at the initial time.

    Returns
    -------
    scipy.integrate OdeResult
        ``.t``, ``.y`` (shape ``(dim, len(t))``), plus ``.rho`` (``|w|`` at ``.t``).
    """
    wd_f = nonnegative_number("wd", wd)
    w_init = _w0(w0)
    times = _times(t)

    def rhs(_t: float, w: NDArray[np.float64]) -> NDArray[np.float64]:
        return -np.asarray(grad(w), dtype=np.float64) - wd_f * w

    tol = _tolerances(rtol, atol)
    sol = solve_ivp(
        rhs, (times[0], times[-1]), w_init, t_eval=times, rtol=tol[0], atol=tol[1], method=method
    )
    if not sol.success:
        raise ValueError(f"gradient_flow failed: {sol.message}")
    sol.rho = np.linalg.norm(sol.y, axis=0)
    return sol


def modified_flow(
    grad: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    hvp: Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]],
    w0: ArrayLike,
    t: ArrayLike,
    *,
    lr: float,
    wd: float,
    rtol: float = _RTOL,
    atol: float = _ATOL,
    method: str = "DOP853",
) -> Any:
    """Modified (second-order) flow of SGD with coupled weight decay.

    ``dw/dt = -grad F - (lr/2) Hess F grad F`` with ``F = L + wd |w|^2 / 2`` (backward
    error analysis of ``w <- w - lr grad F``: matches the map to ``O(lr^2)`` per step).
    For an SI loss the norm obeys exactly
    ``d|w|^2/dt = -(2 wd + lr wd^2)|w|^2 + lr |grad L(w)|^2`` (module docstring).

    Parameters
    ----------
    grad : callable
        ``grad(w)``: Euclidean gradient of ``L``.
    hvp : callable
        ``hvp(w, v)``: Euclidean Hessian of ``L`` at ``w`` times ``v``.
    w0, t, lr, wd
        Initial point, output times (flow time ``lr * step``), hyperparameters.

    Returns
    -------
    scipy.integrate OdeResult
        ``.t``, ``.y``, ``.rho`` and ``.grad_norm2`` (``|grad L|^2`` at ``.t``).
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd, wd_positive=False)
    w_init = _w0(w0)
    times = _times(t)

    def rhs(_t: float, w: NDArray[np.float64]) -> NDArray[np.float64]:
        gf = np.asarray(grad(w), dtype=np.float64) + wd_f * w
        hgf = np.asarray(hvp(w, gf), dtype=np.float64) + wd_f * gf
        return -gf - 0.5 * lr_f * hgf

    tol = _tolerances(rtol, atol)
    sol = solve_ivp(
        rhs, (times[0], times[-1]), w_init, t_eval=times, rtol=tol[0], atol=tol[1], method=method
    )
    if not sol.success:
        raise ValueError(f"modified_flow failed: {sol.message}")
    sol.rho = np.linalg.norm(sol.y, axis=0)
    sol.grad_norm2 = np.array([float(np.sum(np.square(grad(w)))) for w in sol.y.T])
    return sol


def norm_flow(
    t: ArrayLike,
    rho0: float,
    *,
    lr: float,
    wd: float,
    grad_norm: float | Callable[[float], float] = 0.0,
    model: str = "modified",
    rtol: float = _RTOL,
    atol: float = _ATOL,
) -> NDArray[np.float64]:
    """Norm ``rho(t)`` of a continuous-time model driven by the sphere gradient norm ``g~``.

    ``x = rho^2`` follows ``dx/dt = -kappa x + c lr g~(t)^2 / x`` with

    * ``model="gradient"``: ``kappa = 2 wd``, ``c = 0`` (gradient flow; exact for it);
    * ``model="modified"``: ``kappa = 2 wd + lr wd^2``, ``c = 1`` (modified flow; exact for
      it, first order in ``lr wd`` against the map);
    * ``model="first_order"``: ``kappa = 2 wd``, ``c = 1`` (docs/theory.md §4 as quoted).

    Closed form for constant ``g~ = G`` (``y = x^2`` is linear):
    ``rho^4(t) = y* + (rho0^4 - y*) e^{-2 kappa t}``, ``y* = c lr G^2 / kappa``.
    A callable ``grad_norm(t)`` is integrated with ``solve_ivp`` (in ``y = rho^4``).
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd, wd_positive=False)
    rho0_f = positive_number("rho0", rho0)
    times = _times(t)
    if model == "gradient":
        kappa, c = 2.0 * wd_f, 0.0
    elif model == "modified":
        kappa, c = 2.0 * wd_f + lr_f * wd_f * wd_f, 1.0
    elif model == "first_order":
        kappa, c = 2.0 * wd_f, 1.0
    else:
        raise ValueError(f"model must be 'gradient', 'modified' or 'first_order', got {model!r}")
    tol = _tolerances(rtol, atol)
    y0 = rho0_f**4
    if not callable(grad_norm):
        big_g = nonnegative_number("grad_norm", grad_norm)
        src = c * lr_f * big_g * big_g
        decay = np.exp(-2.0 * kappa * times)
        if kappa == 0.0:
            y = y0 + 2.0 * src * times
        else:
            y = y0 * decay - (src / kappa) * np.expm1(-2.0 * kappa * times)
        return np.sqrt(np.sqrt(y))

    def rhs(tt: float, y: NDArray[np.float64]) -> NDArray[np.float64]:
        g = float(grad_norm(tt))
        return np.array([-2.0 * kappa * y[0] + 2.0 * c * lr_f * g * g])

    sol = solve_ivp(rhs, (times[0], times[-1]), [y0], t_eval=times, rtol=tol[0], atol=tol[1])
    if not sol.success:
        raise ValueError(f"norm_flow failed: {sol.message}")
    return np.sqrt(np.sqrt(sol.y[0]))


def sde_norm(
    t: ArrayLike,
    rho0: float,
    *,
    lr: float,
    wd: float,
    noise: float,
    dim: int,
    grad_norm: float = 0.0,
) -> NDArray[np.float64]:
    """Norm of the SGD SDE with isotropic noise (Li, Lyu & Arora 2020), flow time ``t``.

    ``d|W|^2 = (-2 wd |W|^2 + lr (G^2 + noise^2 (dim - 1)) / |W|^2) dt`` (Ito; the noise
    is tangent so ``|W|^2`` has no martingale part):
    ``|W|^4(t) = y* + (rho0^4 - y*) e^{-4 wd t}``, ``y* = lr (G^2 + noise^2 (dim-1))/(2 wd)``.
    First order in ``lr wd`` against the discrete map (docs/theory.md §4, §6), whose stationary
    ``E|w|^4`` has ``2 - lr wd`` in place of 2.
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    sigma = nonnegative_number("noise", noise)
    d = check_positive_int("dim", dim)
    if d > 2**53:
        raise ValueError(
            f"dim must be at most 2**53, got a number of {len(str(d))} digits; pass a smaller dim"
        )
    if d < 2:
        raise ValueError(f"dim must be >= 2, got {d}")
    big_g = nonnegative_number("grad_norm", grad_norm)
    g_eff = math.sqrt(big_g * big_g + sigma * sigma * (d - 1))
    return norm_flow(t, rho0, lr=lr_f, wd=wd_f, grad_norm=g_eff, model="first_order")


# ---------------------------------------------------------------- momentum oscillator
def oscillator_coefficients(lr: float, wd: float, momentum: float) -> tuple[float, float]:
    """``(gamma, omega)`` of ``x'' + 2 gamma x' + omega^2 x = F``.

    ``gamma = (1 - mu)/(lr (1 + mu))``, ``omega^2 = 4 wd/(lr (1 + mu))`` (docs/theory.md §4,
    re-derived in the module docstring; flow time ``t = lr * step``).
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    mu = momentum_number(momentum)
    gamma = (1.0 - mu) / (lr_f * (1.0 + mu))
    omega = math.sqrt(4.0 * wd_f / (lr_f * (1.0 + mu)))
    return gamma, omega


def damping_regime(lr: float, wd: float, momentum: float, rtol: float = 1e-12) -> str:
    """``"underdamped"``, ``"critical"`` or ``"overdamped"`` (``gamma`` vs ``omega``)."""
    rtol = nonnegative_number("rtol", rtol)
    gamma, omega = oscillator_coefficients(lr, wd, momentum)
    diff = gamma * gamma - omega * omega
    if abs(diff) <= rtol * omega * omega:
        return "critical"
    return "overdamped" if diff > 0 else "underdamped"


def momentum_oscillator(
    t: ArrayLike,
    x0: float,
    xdot0: float = 0.0,
    *,
    lr: float,
    wd: float,
    momentum: float,
    forcing: float = 0.0,
    gamma: float | None = None,
    omega: float | None = None,
) -> NDArray[np.float64]:
    """Closed-form solution of ``x'' + 2 gamma x' + omega^2 x = F`` (``F`` constant).

    With ``x_p = F/omega^2``, ``A = x0 - x_p``, ``B = xdot0 + gamma A``:

    * under-damped (``gamma < omega``, ``W = sqrt(omega^2 - gamma^2)``):
      ``x = x_p + e^{-gamma t} (A cos W t + B sin(W t)/W)``
    * critical (``gamma = omega``): ``x = x_p + e^{-gamma t} (A + B t)``
    * over-damped (``W = sqrt(gamma^2 - omega^2)``):
      ``x = x_p + e^{-gamma t} (A cosh W t + B sinh(W t)/W)``, evaluated as
      ``e^{(W - gamma) t}`` times ``expm1`` forms so that it neither overflows nor
      cancels for small ``W``.

    ``gamma`` and ``omega`` default to :func:`oscillator_coefficients` of
    ``(lr, wd, momentum)``; pass them to use the formula for any damped oscillator.
    ``x`` is ``|w|^2`` and ``F = 2|w'|^2`` in the momentum model (docs/theory.md §4).
    """
    g0, w0 = oscillator_coefficients(lr, wd, momentum)
    gam = g0 if gamma is None else nonnegative_number("gamma", gamma)
    om = w0 if omega is None else positive_number("omega", omega)
    x0_f = finite_number("x0", x0)
    v0 = finite_number("xdot0", xdot0)
    big_f = finite_number("forcing", forcing)
    times = _times(t)
    xp = big_f / (om * om)
    a = x0_f - xp
    b = v0 + gam * a
    diff = gam * gam - om * om
    if abs(diff) <= 1e-12 * om * om:
        return xp + np.exp(-gam * times) * (a + b * times)
    if diff < 0:
        wq = math.sqrt(-diff)
        return xp + np.exp(-gam * times) * (a * np.cos(wq * times) + b * np.sin(wq * times) / wq)
    wq = math.sqrt(diff)
    slow = np.exp((wq - gam) * times)
    fast_ratio = np.exp(-2.0 * wq * times)
    cosh_part = 0.5 * slow * (1.0 + fast_ratio)
    sinh_part = slow * (-np.expm1(-2.0 * wq * times)) / (2.0 * wq)
    return xp + a * cosh_part + b * sinh_part


def momentum_oscillator_ivp(
    t: ArrayLike,
    x0: float,
    xdot0: float = 0.0,
    *,
    lr: float,
    wd: float,
    momentum: float,
    forcing: float | Callable[[float], float] = 0.0,
    gamma: float | None = None,
    omega: float | None = None,
    rtol: float = _RTOL,
    atol: float = _ATOL,
    method: str = "DOP853",
) -> NDArray[np.float64]:
    """Numerical solution (``solve_ivp``) of the momentum oscillator; ``forcing`` may be
    a callable ``F(t)`` (e.g. ``2|w'(t)|^2`` from a recorded run). ``gamma``/``omega``
    override the coefficients as in :func:`momentum_oscillator`."""
    g0, w0 = oscillator_coefficients(lr, wd, momentum)
    gamma = g0 if gamma is None else nonnegative_number("gamma", gamma)
    omega = w0 if omega is None else positive_number("omega", omega)
    times = _times(t)
    force = forcing if callable(forcing) else (lambda _t, f=float(forcing): f)

    def rhs(tt: float, y: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([y[1], float(force(tt)) - 2.0 * gamma * y[1] - omega * omega * y[0]])

    sol = solve_ivp(
        rhs,
        (times[0], times[-1]),
        [float(x0), float(xdot0)],
        t_eval=times,
        rtol=rtol,
        atol=atol,
        method=method,
    )
    if not sol.success:
        raise ValueError(f"momentum_oscillator_ivp failed: {sol.message}")
    return sol.y[0]
