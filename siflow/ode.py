"""Continuous-time models of scale-invariant (SI) training with weight decay.

All models use the flow time ``t = lr * step`` (docs/theory.md §4, Kunin et al. 2021); use
:func:`time_from_steps` / :func:`steps_from_time` to convert. Numerical solutions use
:func:`scipy.integrate.solve_ivp`; closed forms are given where they exist and the tests
check one against the other.

**Time origin.** Every function puts the initial state (``w0``, ``rho0``, ``x0``,
``xdot0``) at flow time ``t = 0`` and returns the state at the requested times ``t >= 0``:
a scalar or any 1-D list of times, in any order, repeats allowed (one output per entry, in
the given order; ``t = 0`` gives the initial state). The numerical solvers integrate from
0 to ``max(t)`` and only *evaluate* at ``t``, so a closed form and its ``solve_ivp`` twin
give the same numbers for the same arguments, and a callable driver (``grad``,
``grad_norm(t)``, ``forcing(t)``) sees absolute flow times. A driver that returns NaN or
inf raises a :class:`ValueError` naming it (``solve_ivp`` would otherwise shrink its step
for ever).

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


class _BadDriver(Exception):
    """A user callable gave a non-finite (or malformed) value inside a right-hand side.

    Raised from the ``rhs`` functions and caught around :func:`solve_ivp` (see
    :func:`_integrate`), which turns it into a one-line :class:`ValueError`.
    """


def _driver_values(name: str, value: Any, tt: float, shape: tuple[int, ...] | None = None) -> Any:
    """``value`` (what the callable ``name`` returned at time ``tt``) as finite float64.

    ``shape`` is the required shape (``()`` for one number; None: any). Raises
    :class:`_BadDriver` otherwise, so that ``solve_ivp`` stops instead of shrinking its step.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _BadDriver(
            f"{name} returned {value!r:.60} at t = {tt:g}, not a number; return float values"
        ) from None
    if shape is not None and arr.shape != shape:
        want = "one number" if shape == () else f"shape {shape}"
        raise _BadDriver(f"{name} returned shape {arr.shape} at t = {tt:g}; return {want}")
    if not np.all(np.isfinite(arr)):
        bad = float(arr[~np.isfinite(arr)].ravel()[0]) if arr.ndim else float(arr)
        raise _BadDriver(
            f"{name} returned {bad!r} at t = {tt:g}; pass a {name} that is finite at every "
            f"time in [0, max(t)]"
        )
    return arr


def _integrate(
    who: str,
    rhs: Callable[[float, NDArray[np.float64]], NDArray[np.float64]],
    y0: ArrayLike,
    times: NDArray[np.float64],
    tol: tuple[float, float],
    method: str,
) -> Any:
    """Integrate ``y' = rhs(t, y)`` from ``y(0) = y0`` and evaluate at ``times``.

    ``times`` (validated by :func:`_times`) may be in any order and hold repeats or only
    ``0``: the solver runs over ``[0, max(times)]`` with the sorted distinct times as
    ``t_eval``, and the result's ``.t``/``.y`` are put back in the order of ``times``
    (``.y`` has shape ``(len(y0), len(times))``). A :class:`_BadDriver` raised by ``rhs``
    becomes a :class:`ValueError` naming ``who``.
    """
    y_init = np.asarray(y0, dtype=np.float64)
    grid, inverse = np.unique(times, return_inverse=True)
    t_end = float(grid[-1]) if grid.size else 0.0
    try:
        sol = solve_ivp(
            rhs, (0.0, t_end), y_init, t_eval=grid, rtol=tol[0], atol=tol[1], method=method
        )
    except _BadDriver as exc:
        raise ValueError(f"{who}: {exc}") from None
    if not sol.success:
        raise ValueError(f"{who} failed: {sol.message}")
    if t_end == 0.0:  # a zero span: solve_ivp evaluates nothing; the state is y0
        ys = np.repeat(y_init[:, None], grid.size, axis=1)
    else:
        ys = np.asarray(sol.y, dtype=np.float64)
    sol.t = times.copy()
    sol.y = ys[:, inverse.ravel()]
    return sol


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
    term; see the module docstring).

    Parameters
    ----------
    grad : callable
        ``grad(w)``: Euclidean gradient of ``L`` (finite; NaN or inf raises ValueError).
    w0 : array_like
        Initial point, at flow time ``t = 0``.
    t : float or array_like
        Output times ``>= 0`` (flow time ``lr * step``), any order; the flow is integrated
        from 0 to ``max(t)`` and evaluated at each entry (module docstring).
    wd : float
        Weight decay ``>= 0``.
    rtol, atol : float
        Positive solver tolerances.
    method : str
        A :func:`scipy.integrate.solve_ivp` method.

    Returns
    -------
    scipy.integrate OdeResult
        ``.t`` (the given times), ``.y`` (shape ``(dim, len(t))``), plus ``.rho``
        (``|w|`` at ``.t``).
    """
    wd_f = nonnegative_number("wd", wd)
    w_init = _w0(w0)
    times = _times(t)
    shape = w_init.shape

    def rhs(tt: float, w: NDArray[np.float64]) -> NDArray[np.float64]:
        return -_driver_values("grad(w)", grad(w), tt, shape) - wd_f * w

    sol = _integrate("gradient_flow", rhs, w_init, times, _tolerances(rtol, atol), method)
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
    w0 : array_like
        Initial point, at flow time ``t = 0``.
    t : float or array_like
        Output times ``>= 0`` (flow time ``lr * step``), any order; integrated from 0 to
        ``max(t)`` and evaluated at each entry (module docstring).
    lr, wd : float
        Hyperparameters.
    rtol, atol : float
        Positive solver tolerances.
    method : str
        A :func:`scipy.integrate.solve_ivp` method.

    Returns
    -------
    scipy.integrate OdeResult
        ``.t`` (the given times), ``.y``, ``.rho`` and ``.grad_norm2`` (``|grad L|^2`` at
        ``.t``).
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd, wd_positive=False)
    w_init = _w0(w0)
    times = _times(t)
    shape = w_init.shape

    def rhs(tt: float, w: NDArray[np.float64]) -> NDArray[np.float64]:
        gf = _driver_values("grad(w)", grad(w), tt, shape) + wd_f * w
        hgf = _driver_values("hvp(w, v)", hvp(w, gf), tt, shape) + wd_f * gf
        return -gf - 0.5 * lr_f * hgf

    sol = _integrate("modified_flow", rhs, w_init, times, _tolerances(rtol, atol), method)
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
    A callable ``grad_norm(t)`` is integrated with ``solve_ivp`` (in ``y = rho^4``) from
    ``t = 0``; ``grad_norm(t)`` equal to a constant ``G`` gives the closed form's numbers.

    Parameters
    ----------
    t : float or array_like
        Output times ``>= 0`` (flow time ``lr * step``), any order; ``rho0`` is the norm
        at ``t = 0`` (module docstring).
    rho0 : float
        Initial norm, at ``t = 0``.
    lr, wd : float
        Hyperparameters (``wd >= 0``).
    grad_norm : float or callable
        Constant ``g~ >= 0``, or ``grad_norm(t)`` returning one finite number.
    model : {"modified", "gradient", "first_order"}
        See above.
    rtol, atol : float
        Positive solver tolerances (callable ``grad_norm`` only).

    Returns
    -------
    numpy.ndarray
        ``rho`` at each entry of ``t``.
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
        g = float(_driver_values("grad_norm(t)", grad_norm(tt), tt, ()))
        return np.array([-2.0 * kappa * y[0] + 2.0 * c * lr_f * g * g])

    sol = _integrate("norm_flow", rhs, [y0], times, tol, "RK45")
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
    ``x0`` and ``xdot0`` are the state at ``t = 0``; ``t`` is a time ``>= 0`` or a 1-D list
    of them in any order (module docstring), and the result has one value per entry.
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
    """Numerical solution (``solve_ivp``) of ``x'' + 2 gamma x' + omega^2 x = F(t)``.

    The same model, arguments and time origin as :func:`momentum_oscillator`: ``x0`` and
    ``xdot0`` are the state at ``t = 0``; the equation is integrated from 0 to ``max(t)``
    and evaluated at each entry of ``t`` (any order; module docstring), so a constant
    ``forcing`` reproduces the closed form.

    Parameters
    ----------
    t : float or array_like
        Output times ``>= 0`` (flow time ``lr * step``).
    x0, xdot0 : float
        ``x`` and ``x'`` at ``t = 0``.
    lr, wd, momentum : float
        Hyperparameters giving ``gamma`` and ``omega`` (:func:`oscillator_coefficients`).
    forcing : float or callable
        Constant ``F``, or ``F(t)`` returning one finite number (e.g. ``2|w'(t)|^2`` from a
        recorded run, at absolute flow time ``t``).
    gamma, omega : float, optional
        Override the coefficients as in :func:`momentum_oscillator`.
    rtol, atol : float
        Positive solver tolerances.
    method : str
        A :func:`scipy.integrate.solve_ivp` method.

    Returns
    -------
    numpy.ndarray
        ``x`` at each entry of ``t``.
    """
    g0, w0 = oscillator_coefficients(lr, wd, momentum)
    gam = g0 if gamma is None else nonnegative_number("gamma", gamma)
    om = w0 if omega is None else positive_number("omega", omega)
    state0 = [finite_number("x0", x0), finite_number("xdot0", xdot0)]
    times = _times(t)
    tol = _tolerances(rtol, atol)
    if callable(forcing):

        def force(tt: float) -> float:
            return float(_driver_values("forcing(t)", forcing(tt), tt, ()))

    else:
        big_f = finite_number("forcing", forcing)

        def force(tt: float) -> float:
            return big_f

    def rhs(tt: float, y: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([y[1], force(tt) - 2.0 * gam * y[1] - om * om * y[0]])

    sol = _integrate("momentum_oscillator_ivp", rhs, state0, times, tol, method)
    return sol.y[0]
