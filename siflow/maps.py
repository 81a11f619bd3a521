"""Discrete-map models of scale-invariant (SI) training under SGD and weight decay.

Two families of models, each a ``numba`` kernel (``cache=True``) behind a validating
numpy front door that returns a :class:`~siflow.trajectory.Trajectory`; every kernel
has a plain-numpy twin (``_*_numpy``) used by the tests.

1. **Norm recursion** (:func:`norm_map`), docs/theory.md §1 and §3. For SGD with coupled
   weight decay ``w <- (1 - lr wd) w - lr grad L(w)`` on an SI loss, the gradient is
   orthogonal to ``w`` and ``|grad L(w)| = g~/rho``, so

   .. math:: \\rho^2_{t+1} = (1 - \\eta\\lambda)^2 \\rho^2_t + \\eta^2 \\tilde g_t^2 / \\rho^2_t

   **exactly** for the discrete map, whatever drives ``g~_t``. The driver is a
   gradient-norm model: a constant, an array or callable of the step (e.g. a decaying
   ``g~``), or the ``grad_norm_sphere`` column of a measured :class:`Trajectory`
   (replaying a run's own ``g~`` reproduces its norm exactly). With PyTorch heavy-ball
   momentum the norm is not closed on its own; the map then follows the second moments
   ``a = |w|^2``, ``b = <w, v>``, ``c = |v|^2`` under the assumption that the gradient is
   orthogonal to both ``w_t`` and ``v_t`` (uncorrelated gradients), which is exact in
   expectation for isotropic noise and approximate for deterministic gradients.

2. **Reduced model of the periodic behavior** (:func:`reduced_map`). The SGD update in
   direction/norm form (docs/theory.md §1) is
   ``w^_{t+1} = normalize(w^_t - h_t grad L(w^_t))`` with ``h_t = elr_t / (1 - lr wd)``,
   ``elr_t = lr / rho_t^2``. Keep only the great circle through the minimum ``w^*`` and
   the sharpest direction ``u`` of the Riemannian Hessian there: ``w^ = cos(phi) w^* +
   sin(phi) u`` and ``L = f(phi)`` with ``f''(0) = S`` (sphere sharpness at the minimum).
   Because the Riemannian gradient ``f'(phi)`` is tangent to that circle, the
   normalisation retraction moves exactly along it:

   .. math:: \\varphi_{t+1} = \\varphi_t - \\arctan(h_t f'(\\varphi_t)), \\qquad
             \\tilde g_t = |f'(\\varphi_t)|,

   together with the exact norm recursion above. Linearised at ``phi = 0`` this is
   ``phi_{t+1} = (1 - h_t S) phi_t``: stable iff ``elr S < 2 (1 - lr wd)`` (docs/theory.md §2).
   The arctan (sphere geometry) and the shape of ``f`` supply the nonlinearity that
   saturates the instability; the centrifugal term ``lr^2 g~^2/rho^2`` then makes the norm
   jump, the effective LR drops below threshold and the deviation relaxes; weight decay
   shrinks the norm until the effective LR crosses the threshold again: one period.

   Loss shapes ``f`` (:func:`profile`):

   * ``"quadratic"``: ``f = (S/2) sin^2 phi`` -- the Rayleigh quotient
     ``w'Aw/(2 w'w)`` restricted to the plane of its smallest and largest eigenvectors,
     ``S = lam_max - lam_min``. For that loss the plane is invariant, so the reduced map
     is *exact* when the other components vanish.
   * ``"logistic"``: SI logistic regression on two symmetric unit points at angles
     ``+-alpha`` from the minimum, temperature ``s``:
     ``f = (softplus(-s cos(phi - alpha)) + softplus(-s cos(phi + alpha)))/2``.
     The margin at the minimum ``m = s cos(alpha)`` is the shape parameter; ``s`` follows
     from ``S`` and ``m``. As for cross-entropy, the curvature is largest on the side of
     the worst-classified point and decays exponentially with the margin.
   * ``"table"``: any loss, tabulated along its sharpest great circle by
     :func:`circle_profile` (cubic Hermite interpolation; the minimizer is a grid node so
     deviations down to the smallest floats are resolved).

   Noise floor: isotropic gradient noise ``P_perp eps``, ``eps ~ N(0, noise^2 I/rho^2)``
   in ``dim`` dimensions (docs/theory.md §6) adds ``xi ~ N(0, noise^2)`` along the circle and
   ``noise^2 chi^2_{dim-2}`` to ``g~^2`` off the circle. Random numbers are drawn outside
   the kernels from ``numpy.random.default_rng(seed)``.

   What is dropped: all directions except the sharpest one (their deviations are assumed
   relaxed; the off-circle noise is counted in the norm but its displacement is not
   followed), the change of the sharpest direction along the trajectory, and minibatch
   noise structure (replaced by the isotropic model). With momentum the in-plane motion is
   an exact 2-D heavy ball, and the off-circle noise adds the first-order norm gain
   ``lr^2 |xi_perp|^2 / ((1 - momentum)^2 rho^2)`` per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from siflow._memory import available_memory, format_bytes
from siflow._validate import (
    as_float_array,
    check_finite,
    check_nonnegative,
    check_positive_int,
    check_steps,
    finite_number,
    lr_wd_numbers,
    momentum_number,
    nonnegative_number,
    positive_number,
)
from siflow.simulate import RHO_MAX, RHO_MIN
from siflow.trajectory import Trajectory

__all__ = [
    "FAMILIES",
    "norm_map",
    "reduced_map",
    "profile",
    "logistic_temperature",
    "circle_profile",
    "grad_norm_from_trajectory",
]

#: Loss shapes of the reduced model (see :func:`profile`).
FAMILIES: tuple[str, ...] = ("quadratic", "logistic", "table")
_FAMILY_ID = {"quadratic": 0, "logistic": 1, "table": 2}

#: Default margin (in logits) at the minimum for the ``"logistic"`` family.
DEFAULT_MARGIN = 3.0


#: Range of ``rho^2`` inside which the norm maps run: ``simulate``'s norm bounds
#: ``[RHO_MIN, RHO_MAX] = [1e-150, 1e150]`` squared, so that ``rho^2``, ``lr/rho^2`` and
#: ``lr^2 g~^2/rho^2`` are normal doubles (no underflow to subnormals or 0, no overflow).
_X_MIN = RHO_MIN * RHO_MIN
_X_MAX = RHO_MAX * RHO_MAX


def _range_note(status: str, every: int, last_row: int, final_x: float) -> str:
    """``meta["note"]`` of a norm map stopped because ``rho`` left ``[RHO_MIN, RHO_MAX]``."""
    where = (
        f"at the update of step {last_row}"
        if every == 1
        else f"at the update of one of steps {last_row}..{last_row + every - 1}"
    )
    return (
        f"{status}: the norm left [{RHO_MIN:g}, {RHO_MAX:g}] {where} (rho^2 = {final_x:.3g}, "
        f"outside the normal double range the map keeps); the run stops there and later "
        f"rows are not returned"
    )


# ============================================================ gradient-norm models
def grad_norm_from_trajectory(traj: Trajectory, steps: NDArray[np.int64]) -> NDArray[np.float64]:
    """``g~`` of a trajectory at the given steps (linear interpolation in the step).

    Exact at recorded steps; outside the recorded range the end values are held.
    Needs the ``grad_norm_sphere`` column.
    """
    g = traj.column("grad_norm_sphere")
    return np.interp(np.asarray(steps, dtype=np.float64), traj.step.astype(np.float64), g)


def _check_memory(steps: int, every: int, need: float) -> None:
    """Refuse a norm map whose arrays (``need`` bytes) exceed the memory available."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise ValueError(
            f"norm_map over steps={steps} keeping every {every}-th row needs about "
            f"{format_bytes(need)} of memory but {format_bytes(avail)} is available; pass "
            f"fewer steps= or a larger record_every="
        )


def _driver(
    grad_norm: float | ArrayLike | Callable[[NDArray[np.int64]], ArrayLike] | Trajectory,
    steps_arr: NDArray[np.int64] | None,
    compact: bool = False,
) -> NDArray[np.float64]:
    """``g~`` per step; with ``compact``, a constant comes back as one value (then
    ``steps_arr`` may be None)."""
    if compact and not isinstance(grad_norm, Trajectory) and not callable(grad_norm):
        if np.ndim(grad_norm) == 0:
            g0 = check_nonnegative("grad_norm", grad_norm).reshape(1)
            return np.ascontiguousarray(g0)
    assert steps_arr is not None
    n = steps_arr.size
    if isinstance(grad_norm, Trajectory):
        g = grad_norm_from_trajectory(grad_norm, steps_arr)
    elif callable(grad_norm):
        g = as_float_array("grad_norm(steps)", grad_norm(steps_arr))
        if g.ndim == 0:
            g = np.full(n, float(g))
        elif g.shape != (n,):
            raise ValueError(
                f"grad_norm(steps) returned shape {g.shape} for {n} steps; return one value "
                f"per step (shape ({n},)) or a single number"
            )
    else:
        g = as_float_array("grad_norm", grad_norm)
        if g.ndim == 0:
            g = np.full(n, float(g))
        elif g.shape != (n,):
            raise ValueError(
                f"grad_norm has shape {g.shape} but steps={n}; pass one value per step, "
                f"a constant, a callable of the step or a Trajectory"
            )
    g = check_nonnegative("grad_norm", g)
    return np.ascontiguousarray(g, dtype=np.float64)


# ================================================================== norm kernels
@njit(cache=True)
def _norm_map_kernel(lr, wd, rho2_0, g2, every, rho2_out):  # pragma: no cover - numba
    c = (1.0 - lr * wd) ** 2
    x = rho2_0
    for t in range(g2.shape[0]):
        if t % every == 0:
            rho2_out[t // every] = x
        x = c * x + lr * lr * g2[t] / x
    return x


@njit(cache=True, error_model="numpy")
def _norm_map_columns_kernel(
    lr, wd, rho2_0, g, stride, steps, every, rho, elr, tan
):  # pragma: no cover - numba
    # _norm_map_kernel's chain (the same operations, so the same bits) driven by
    # g~_t = g[t*stride] (stride 0: a constant). The chain is a dependent divide per
    # step; it writes only rho^2 of the recorded rows (into rho). A second loop without
    # a dependency, vectorised for a constant driver or unit stride, then gives rho,
    # elr and tan(Delta) = elr g~ / (1 - lr wd): the same operations per row, so the
    # same bits, without three more divider operations per step beside the chain's
    # (measured: 6.0 against 7.7 ns per step at 10^7 steps).
    c = (1.0 - lr * wd) ** 2
    q = 1.0 - lr * wd
    x = rho2_0
    k = 0
    left = 0  # steps to the next recorded row
    for t in range(steps):
        gt = g[t * stride]
        if left == 0:
            rho[k] = x
            k += 1
            left = every
        left -= 1
        x = c * x + lr * lr * (gt * gt) / x
        if not (x >= _X_MIN and x <= _X_MAX):  # left the range (or NaN): stop here
            break
    rows = k
    for j in range(rows, rho.size):
        rho[j] = np.nan
        elr[j] = np.nan
        tan[j] = np.nan
    step_g = every * stride
    if step_g == 0:
        g0 = g[0]
        for k in range(rows):
            x2 = rho[k]
            e = lr / x2
            elr[k] = e
            tan[k] = e * g0 / q
            rho[k] = math.sqrt(x2)
    elif step_g == 1:
        for k in range(rows):
            x2 = rho[k]
            e = lr / x2
            elr[k] = e
            tan[k] = e * g[k] / q
            rho[k] = math.sqrt(x2)
    else:
        for k in range(rows):
            x2 = rho[k]
            e = lr / x2
            elr[k] = e
            tan[k] = e * g[k * step_g] / q
            rho[k] = math.sqrt(x2)
    return x


def _norm_map_columns_numpy(lr, wd, rho2_0, g, stride, steps, every, rho, elr, tan):
    c = (1.0 - lr * wd) ** 2
    q = 1.0 - lr * wd
    x = float(rho2_0)
    for t in range(steps):
        gt = float(g[t * stride])
        if t % every == 0:
            k = t // every
            e = lr / x
            rho[k] = math.sqrt(x)
            elr[k] = e
            tan[k] = e * gt / q
        x = c * x + lr * lr * (gt * gt) / x
        if not (x >= _X_MIN and x <= _X_MAX):
            rows = t // every + 1
            rho[rows:] = np.nan
            elr[rows:] = np.nan
            tan[rows:] = np.nan
            break
    return x


def _norm_map_numpy(lr, wd, rho2_0, g2, every, rho2_out):
    c = (1.0 - lr * wd) ** 2
    x = float(rho2_0)
    for t in range(g2.shape[0]):
        if t % every == 0:
            rho2_out[t // every] = x
        x = c * x + lr * lr * g2[t] / x
    return x


@njit(cache=True)
def _norm_map_momentum_kernel(lr, wd, mu, a0, b0, c0, g2, every, out):  # pragma: no cover
    # out[:, 0] = a = |w|^2, out[:, 1] = b = <w, v>, out[:, 2] = c = |v|^2, out[:, 3] = cos angle
    a = a0
    b = b0
    c = c0
    d = 1.0 - lr * wd
    for t in range(g2.shape[0]):
        gam = g2[t] / a
        a1 = d * d * a + lr * lr * mu * mu * c + lr * lr * gam - 2.0 * d * lr * mu * b
        b1 = mu * (1.0 - 2.0 * lr * wd) * b + wd * d * a - lr * mu * mu * c - lr * gam
        c1 = mu * mu * c + gam + wd * wd * a + 2.0 * mu * wd * b
        if t % every == 0:
            k = t // every
            out[k, 0] = a
            out[k, 1] = b
            out[k, 2] = c
            out[k, 3] = (d * a - lr * mu * b) / (math.sqrt(a) * math.sqrt(a1))
        if not (a1 >= _X_MIN and a1 <= _X_MAX):  # left the range (or NaN): stop here
            rows = t // every + 1
            if t % every == 0:
                out[rows - 1, 3] = np.nan
            out[rows:, :] = np.nan
            return a1
        a = a1
        b = b1
        c = c1
    return a


def _norm_map_momentum_numpy(lr, wd, mu, a0, b0, c0, g2, every, out):
    a, b, c = float(a0), float(b0), float(c0)
    d = 1.0 - lr * wd
    for t in range(g2.shape[0]):
        gam = g2[t] / a
        a1 = d * d * a + lr * lr * mu * mu * c + lr * lr * gam - 2.0 * d * lr * mu * b
        b1 = mu * (1.0 - 2.0 * lr * wd) * b + wd * d * a - lr * mu * mu * c - lr * gam
        c1 = mu * mu * c + gam + wd * wd * a + 2.0 * mu * wd * b
        if t % every == 0:
            k = t // every
            out[k, 0] = a
            out[k, 1] = b
            out[k, 2] = c
            out[k, 3] = (d * a - lr * mu * b) / (math.sqrt(a) * math.sqrt(a1))
        if not (a1 >= _X_MIN and a1 <= _X_MAX):
            rows = t // every + 1
            if t % every == 0:
                out[rows - 1, 3] = np.nan
            out[rows:, :] = np.nan
            return a1
        a, b, c = a1, b1, c1
    return a


def norm_map(
    lr: float,
    wd: float,
    steps: int | None = None,
    *,
    rho0: float | None = None,
    grad_norm: float | ArrayLike | Callable[[NDArray[np.int64]], ArrayLike] | Trajectory = 0.0,
    momentum: float = 0.0,
    start_step: int | None = None,
    record_every: int = 1,
) -> Trajectory:
    """Iterate the exact norm recursion driven by a gradient-norm model.

    SGD (``momentum=0``), exact for the discrete map (docs/theory.md §1):
    ``rho^2_{t+1} = (1 - lr wd)^2 rho^2_t + lr^2 g~_t^2 / rho^2_t`` and the angular update
    ``tan(Delta_t) = elr_t g~_t / (1 - lr wd)``.

    PyTorch heavy ball (``v <- mu v + grad + wd w; w <- w - lr v``, ``v_0 = 0``): second
    moments ``a = |w|^2, b = <w,v>, c = |v|^2`` with ``|grad|^2 = g~^2/a`` and the gradient
    orthogonal to ``w_t`` and ``v_t``:

    * ``a' = (1-lr wd)^2 a + lr^2 mu^2 c + lr^2 |g|^2 - 2 (1-lr wd) lr mu b``
    * ``b' = mu (1 - 2 lr wd) b + wd (1-lr wd) a - lr mu^2 c - lr |g|^2``
    * ``c' = mu^2 c + |g|^2 + wd^2 a + 2 mu wd b``

    and ``cos(Delta) = ((1-lr wd) a - lr mu b)/sqrt(a a')``. Exact for the expected moments
    when gradients are uncorrelated across steps (isotropic noise); only approximate for
    deterministic gradients, which are correlated with ``v``. Its fixed point for constant
    ``g~ = G`` is docs/theory.md §3's ``rho*^4 = lr G^2 / (wd (1-mu) (2 - lr wd/(1+mu)))``.

    Parameters
    ----------
    lr, wd : float
        Learning rate and weight decay, ``lr*wd < 1``.
    steps : int, optional
        Number of updates. Defaults to the span of ``grad_norm`` when it is a Trajectory
        or an array.
    rho0 : float, optional
        Initial norm in ``[1e-150, 1e150]`` (``simulate``'s range, so that ``rho0^2`` is a
        normal double); defaults to ``grad_norm.rho[0]`` for a Trajectory driver.
    grad_norm : float, array, callable or Trajectory
        ``g~_t`` (gradient norm on the unit sphere, numbers ``>= 0``; not text or bools):
        a constant, one value per step, a function of the integer step array returning
        one value per step or a single number, or a Trajectory whose
        ``grad_norm_sphere`` column is replayed (interpolated linearly between recorded
        steps).
    momentum : float
        Heavy-ball momentum in ``[0, 1)``.
    start_step : int, optional
        Step number of the first row; defaults to the Trajectory's first step or 0.
    record_every : int
        Keep every k-th row.

    Returns
    -------
    Trajectory
        Rows ``start_step + k*record_every`` with ``rho``, ``grad_norm_sphere``, ``elr``,
        ``angular_update`` (state before each update); ``meta["rho_final"]`` is the norm
        after the last update. With momentum, ``extra`` holds ``w_dot_v`` and ``v_norm2``.
        ``meta["status"]`` is ``"ok"``, or, as in :func:`siflow.simulate.simulate`,
        ``"underflow"`` / ``"diverged"`` when the norm leaves ``[1e-150, 1e150]`` (below /
        above or NaN: ``rho^2`` would no longer be a normal double and the recursion would
        silently stick at a subnormal, 0, inf or NaN). The run then stops: the rows up to
        the last in-range state are returned (with momentum the last one's
        ``angular_update`` is NaN when its update left the range), ``meta["rho_final"]``
        is the out-of-range norm and ``meta["note"]`` says where it stopped.
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    mu = momentum_number(momentum)
    every = check_steps("record_every", record_every)
    src = grad_norm if isinstance(grad_norm, Trajectory) else None
    if steps is None:
        if src is not None:
            steps = int(src.step[-1] - src.step[0]) + 1
        elif callable(grad_norm) or np.ndim(grad_norm) == 0:
            raise ValueError(
                "steps is required for a constant or callable grad_norm; pass steps= (a "
                "Trajectory or a 1-D array driver sets it)"
            )
        elif np.ndim(grad_norm) == 1:
            steps = int(np.shape(grad_norm)[0])
        else:
            raise ValueError(
                f"grad_norm must be a 1-D array (one value per step), got shape "
                f"{np.shape(grad_norm)}; pass a 1-D array"
            )
    steps = check_steps("steps", steps, "pass fewer steps")
    if start_step is None:
        start_step = int(src.step[0]) if src is not None else 0
    if isinstance(start_step, float) and start_step.is_integer():
        start_step = int(start_step)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)):
        raise ValueError(f"start_step must be a whole number, got {start_step!r}")
    start_step = int(start_step)
    check_steps("|start_step| + steps", abs(start_step) + steps, "pass a smaller start_step")
    if rho0 is None:
        if src is None or src.rho is None:
            raise ValueError("rho0 is required unless grad_norm is a Trajectory with a rho column")
        rho0 = float(np.interp(start_step, src.step, src.rho))
    rho0_f = positive_number("rho0", rho0)
    if not (RHO_MIN <= rho0_f <= RHO_MAX):
        raise ValueError(
            f"rho0 = {rho0_f:g} is outside [{RHO_MIN:g}, {RHO_MAX:g}] (rho0^2 must be a normal "
            f"double, as in simulate); pass a rho0 inside that range"
        )
    n_rows = (steps - 1) // every + 1
    # a constant driver needs no per-step array: only the kept rows are allocated
    per_step = mu != 0.0 or src is not None or callable(grad_norm) or np.ndim(grad_norm) != 0
    _check_memory(steps, every, 8.0 * (6 * n_rows + (3 * steps if per_step else 0)))
    step_arr = np.arange(start_step, start_step + steps, dtype=np.int64) if per_step else None
    rows = np.arange(start_step, start_step + steps, every, dtype=np.int64)
    meta: dict[str, Any] = {
        "lr": lr_f,
        "wd": wd_f,
        "momentum": mu,
        "source": "siflow.maps.norm_map",
    }
    if mu == 0.0:
        g = _driver(grad_norm, step_arr, compact=True)
        stride = 1 if g.size == steps else 0
        # the columns in one allocation: one mapping to fault in instead of three or
        # four (10^5-10^6 steps: 10-13 against 23-46 ns per step, measured)
        cols = np.empty((4 if not stride else 3, n_rows))
        rho, elr, ang = cols[0], cols[1], cols[2]
        final = _norm_map_columns_kernel(
            lr_f, wd_f, rho0_f**2, g, stride, steps, every, rho, elr, ang
        )
        np.arctan(ang, out=ang)  # tan(Delta) -> Delta, vectorised
        if not stride:
            cols[3] = g[0]
        keep = _stopped(final, rho, rows, every, meta)
        return Trajectory(
            step=rows[:keep],
            rho=rho[:keep],
            grad_norm_sphere=(g[::every] if stride else cols[3])[:keep],
            elr=elr[:keep],
            angular_update=ang[:keep],
            meta=meta,
        )
    g = _driver(grad_norm, step_arr)
    g2 = g * g
    out = np.empty((n_rows, 4))
    final = _norm_map_momentum_kernel(lr_f, wd_f, mu, rho0_f**2, 0.0, 0.0, g2, every, out)
    keep = _stopped(final, out[:, 0], rows, every, meta)
    out = out[:keep]
    return Trajectory(
        step=rows[:keep],
        rho=np.sqrt(out[:, 0]),
        grad_norm_sphere=g[::every][:keep],
        elr=lr_f / out[:, 0],
        angular_update=np.arccos(np.clip(out[:, 3], -1.0, 1.0)),
        extra={"w_dot_v": out[:, 1], "v_norm2": out[:, 2]},
        meta=meta,
    )


def _stopped(
    final: float, first_col: NDArray[np.float64], rows: NDArray[np.int64], every: int, meta: dict
) -> int:
    """Set ``meta["rho_final"]`` and ``meta["status"]``; the number of rows to keep.

    A kernel that left ``[_X_MIN, _X_MAX]`` returns the out-of-range ``rho^2`` and fills the
    rows after the stop with NaN (``first_col`` is a column that is never NaN before it):
    then ``status`` is ``"underflow"`` (``rho < RHO_MIN``) or ``"diverged"`` (``rho >
    RHO_MAX`` or NaN), as in :func:`siflow.simulate.simulate`, with a ``note``.
    """
    meta["rho_final"] = math.sqrt(final) if final >= 0.0 else math.nan
    if _X_MIN <= final <= _X_MAX:
        meta["status"] = "ok"
        return int(rows.size)
    nan = np.isnan(first_col)
    keep = int(np.argmax(nan)) if nan.any() else int(first_col.size)
    status = "underflow" if final < _X_MIN else "diverged"
    meta["status"] = status
    meta["note"] = _range_note(status, every, int(rows[keep - 1]), final)
    return keep


# =============================================================== loss profiles
@njit(cache=True)
def _sigmoid(z):  # pragma: no cover - numba
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(cache=True)
def _softplus(z):  # pragma: no cover - numba
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


@njit(cache=True)
def _table_lookup(p0, p1, table, phi):  # pragma: no cover - numba
    # symmetric uniform grid phi_k = (k - m) p1, m = (n-1)/2 (node m at phi = 0);
    # cubic Hermite for f (with f') and f' (with f''). The offset within the interval
    # is computed from phi/p1 directly so that tiny deviations keep full precision.
    n = table.shape[0]
    m = (n - 1) // 2
    y = phi / p1
    if y <= -m:
        return table[0, 0], table[0, 1], table[0, 2]
    if y >= m:
        return table[n - 1, 0], table[n - 1, 1], table[n - 1, 2]
    j = math.floor(y + 0.5)
    r = y - j
    if r >= 0.0:
        k = int(j) + m
        s = r
        t = 1.0 - r
    else:
        k = int(j) + m - 1
        s = 1.0 + r
        t = -r
    if k > n - 2:
        k = n - 2
    h00 = (1.0 + 2.0 * s) * t * t
    h10 = s * t * t
    h01 = s * s * (1.0 + 2.0 * t)
    h11 = -s * s * t
    f = h00 * table[k, 0] + h10 * p1 * table[k, 1] + h01 * table[k + 1, 0]
    f += h11 * p1 * table[k + 1, 1]
    fp = h00 * table[k, 1] + h10 * p1 * table[k, 2] + h01 * table[k + 1, 1]
    fp += h11 * p1 * table[k + 1, 2]
    fpp = t * table[k, 2] + s * table[k + 1, 2]
    return f, fp, fpp


@njit(cache=True)
def _profile_kernel(family, p0, p1, table, phi):  # pragma: no cover - numba
    """(f, f', f'') of the loss along the great circle at angle ``phi``."""
    if family == 2:
        return _table_lookup(p0, p1, table, phi)
    if family == 0:
        # p0 = S
        s2 = math.sin(2.0 * phi)
        sn = math.sin(phi)
        return 0.5 * p0 * sn * sn, 0.5 * p0 * s2, p0 * math.cos(2.0 * phi)
    # logistic: p0 = temperature s, p1 = alpha
    f = 0.0
    fp = 0.0
    fpp = 0.0
    for sgn in (-1.0, 1.0):
        u = phi + sgn * p1
        cu = math.cos(u)
        su = math.sin(u)
        z = -p0 * cu
        sg = _sigmoid(z)
        f += 0.5 * _softplus(z)
        fp += 0.5 * sg * p0 * su
        fpp += 0.5 * (sg * (1.0 - sg) * p0 * p0 * su * su + sg * p0 * cu)
    return f, fp, fpp


def _sigmoid_np(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _table_lookup_numpy(p0, p1, table, phi):
    n = table.shape[0]
    m = (n - 1) // 2
    y = phi / p1
    if y <= -m:
        return float(table[0, 0]), float(table[0, 1]), float(table[0, 2])
    if y >= m:
        return float(table[n - 1, 0]), float(table[n - 1, 1]), float(table[n - 1, 2])
    j = math.floor(y + 0.5)
    r = y - j
    if r >= 0.0:
        k, s, t = int(j) + m, r, 1.0 - r
    else:
        k, s, t = int(j) + m - 1, 1.0 + r, -r
    k = min(k, n - 2)
    h00 = (1.0 + 2.0 * s) * t * t
    h10 = s * t * t
    h01 = s * s * (1.0 + 2.0 * t)
    h11 = -s * s * t
    f = h00 * table[k, 0] + h10 * p1 * table[k, 1] + h01 * table[k + 1, 0]
    f += h11 * p1 * table[k + 1, 1]
    fp = h00 * table[k, 1] + h10 * p1 * table[k, 2] + h01 * table[k + 1, 1]
    fp += h11 * p1 * table[k + 1, 2]
    fpp = t * table[k, 2] + s * table[k + 1, 2]
    return float(f), float(fp), float(fpp)


def _profile_numpy(family, p0, p1, table, phi):
    if family == 2:
        return _table_lookup_numpy(p0, p1, table, phi)
    if family == 0:
        sn = math.sin(phi)
        return 0.5 * p0 * sn * sn, 0.5 * p0 * math.sin(2.0 * phi), p0 * math.cos(2.0 * phi)
    f = fp = fpp = 0.0
    for sgn in (-1.0, 1.0):
        u = phi + sgn * p1
        cu, su = math.cos(u), math.sin(u)
        z = -p0 * cu
        sg = _sigmoid_np(z)
        f += 0.5 * (max(z, 0.0) + math.log1p(math.exp(-abs(z))))
        fp += 0.5 * sg * p0 * su
        fpp += 0.5 * (sg * (1.0 - sg) * p0 * p0 * su * su + sg * p0 * cu)
    return f, fp, fpp


def logistic_temperature(sharpness: float, margin: float = DEFAULT_MARGIN) -> tuple[float, float]:
    """Temperature ``s`` and half-angle ``alpha`` of the ``"logistic"`` profile.

    With ``m = s cos(alpha)`` the margin at the minimum and ``p = sigmoid(-m)``, the
    curvature at the minimum is ``S = p (1-p) (s^2 - m^2) + p m`` (differentiate
    ``softplus(-s cos u)`` twice at ``u = alpha``), so
    ``s^2 = m^2 + (S - p m) / (p (1-p))``. Requires ``S > p m``.
    """
    S = positive_number("sharpness", sharpness)
    m = positive_number("margin", margin)
    p = _sigmoid_np(-m)
    if S <= p * m:
        raise ValueError(
            f"sharpness={S} is too small for margin={m} (needs sharpness > "
            f"{p * m:.4g}); pass a smaller margin"
        )
    s = math.sqrt(m * m + (S - p * m) / (p * (1.0 - p)))
    return s, math.acos(m / s)


_NO_TABLE = np.zeros((1, 3))


def _table_params(shape: dict[str, Any]) -> tuple[float, float, NDArray[np.float64]]:
    need = {"phi_max", "f", "fp", "fpp"}
    if set(shape) != need:
        raise ValueError(
            f"family 'table' takes shape={{'phi_max', 'f', 'fp', 'fpp'}} (values on "
            f"linspace(-phi_max, phi_max, n)), got {sorted(shape)}; see circle_profile"
        )
    phi_max = positive_number("shape['phi_max']", shape["phi_max"])
    cols = [check_finite(f"shape[{k!r}]", shape[k]).ravel() for k in ("f", "fp", "fpp")]
    n = cols[0].size
    if n < 3 or any(c.size != n for c in cols):
        raise ValueError("shape['f'], ['fp'], ['fpp'] must have the same length >= 3")
    if n % 2 == 0:
        raise ValueError(
            f"the table needs an odd number of points (a node at phi = 0), got {n}; "
            f"use circle_profile(..., n=odd)"
        )
    table = np.ascontiguousarray(np.column_stack(cols), dtype=np.float64)
    return -phi_max, 2.0 * phi_max / (n - 1), table


def _family_params(
    family: str, sharpness: float | None, shape: dict[str, Any] | None
) -> tuple[int, float, float, NDArray[np.float64]]:
    if family not in _FAMILY_ID:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    shape = dict(shape or {})
    fid = _FAMILY_ID[family]
    if fid == 2:
        p0, p1, table = _table_params(shape)
        return fid, p0, p1, table
    if sharpness is None:
        raise ValueError(f"sharpness is required for family {family!r}")
    if fid == 0:
        if shape:
            raise ValueError(f"family 'quadratic' takes no shape parameters, got {sorted(shape)}")
        return fid, float(sharpness), 0.0, _NO_TABLE
    unknown = set(shape) - {"margin"}
    if unknown:
        raise ValueError(f"family 'logistic' takes shape={{'margin': m}}, got {sorted(unknown)}")
    s, alpha = logistic_temperature(sharpness, shape.get("margin", DEFAULT_MARGIN))
    return fid, s, alpha, _NO_TABLE


def circle_profile(
    value_grad: Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]],
    hvp: Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]],
    minimizer: ArrayLike,
    direction: ArrayLike,
    *,
    phi_max: float = math.pi / 2,
    n: int = 4001,
) -> dict[str, Any]:
    """Tabulate a loss along the great circle ``cos(phi) u + sin(phi) v`` for ``"table"``.

    The grid is ``linspace(-phi_max, phi_max, n)`` with ``n`` odd, so that the minimizer
    is a node and deviations down to the smallest floats are resolved.

    ``u`` is a unit minimizer on the sphere and ``v`` a unit tangent direction at ``u``
    (the top eigenvector of the Riemannian Hessian for the reduced model). At the unit
    point ``w(phi)`` with tangent ``t(phi) = -sin(phi) u + cos(phi) v``:
    ``f = L(w)``, ``f' = <grad L(w), t>`` and ``f'' = t' Hess L(w) t`` (exact for an SI
    loss, whose gradient at ``w`` is orthogonal to ``w``). Returns the ``shape`` dict of
    ``reduced_map(..., family="table")``; ``f''(0)`` is the sharpness along ``v``.
    """
    u = check_finite("minimizer", minimizer).astype(np.float64).ravel()
    v = check_finite("direction", direction).astype(np.float64).ravel()
    if u.shape != v.shape:
        raise ValueError("minimizer and direction must have the same shape")
    u = u / np.linalg.norm(u)
    v = v - (v @ u) * u
    nv = np.linalg.norm(v)
    if nv == 0.0:
        raise ValueError("direction must not be parallel to the minimizer")
    v = v / nv
    n = check_positive_int("n", n)
    if n % 2 == 0:
        raise ValueError(f"n must be odd (a node at phi = 0, the minimizer), got {n}")
    phi = np.linspace(-float(phi_max), float(phi_max), n)
    f = np.empty(n)
    fp = np.empty(n)
    fpp = np.empty(n)
    for k, a in enumerate(phi):
        w = math.cos(a) * u + math.sin(a) * v
        t = -math.sin(a) * u + math.cos(a) * v
        val, g = value_grad(w)
        f[k] = val
        fp[k] = float(np.asarray(g) @ t)
        fpp[k] = float(t @ np.asarray(hvp(w, t)))
    return {"phi_max": float(phi_max), "f": f, "fp": fp, "fpp": fpp}


def profile(
    phi: ArrayLike,
    sharpness: float | None,
    family: str = "quadratic",
    shape: dict[str, Any] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Loss ``f``, slope ``f'`` and curvature ``f''`` along the reduced model's great circle.

    ``phi`` is the angle from the minimum towards the sharpest direction; ``f''(0)`` equals
    ``sharpness`` for the analytic families (pass ``sharpness=None`` for ``"table"``,
    whose curvature comes from the table). See the module docstring for the shapes.
    """
    S = None if sharpness is None else positive_number("sharpness", sharpness)
    fid, p0, p1, table = _family_params(family, S, shape)
    phi_arr = check_finite("phi", phi)
    flat = np.atleast_1d(phi_arr).ravel()
    out = np.array([_profile_numpy(fid, p0, p1, table, float(x)) for x in flat]).reshape(-1, 3)
    return tuple(out[:, j].reshape(phi_arr.shape) for j in range(3))  # type: ignore[return-value]


# ============================================================ reduced kernels
@njit(cache=True)
def _reduced_kernel(
    lr, wd, rho2_0, phi0, family, p0, p1, table, xi, perp2, floor, every, out
):  # pragma: no cover - numba
    # out columns: loss, rho, g~, elr, angular update, curvature, phi
    d = 1.0 - lr * wd
    x = rho2_0
    phi = phi0
    for t in range(xi.shape[0]):
        f, fp, fpp = _profile_kernel(family, p0, p1, table, phi)
        gt = fp + xi[t]
        g2 = gt * gt + perp2[t]
        elr = lr / x
        h = elr / d
        if t % every == 0:
            k = t // every
            out[k, 0] = f
            out[k, 1] = math.sqrt(x)
            out[k, 2] = math.sqrt(g2)
            out[k, 3] = elr
            out[k, 4] = math.atan(h * math.sqrt(g2))
            out[k, 5] = fpp
            out[k, 6] = phi
        phi = phi - math.atan(h * gt)
        if abs(phi) < floor:
            phi = floor if phi >= 0.0 else -floor
        x = d * d * x + lr * lr * g2 / x
        if not (x > 0.0 and x < 1e300):
            return t + 1, x, phi
    return xi.shape[0], x, phi


def _reduced_numpy(lr, wd, rho2_0, phi0, family, p0, p1, table, xi, perp2, floor, every, out):
    d = 1.0 - lr * wd
    x = float(rho2_0)
    phi = float(phi0)
    for t in range(xi.shape[0]):
        f, fp, fpp = _profile_numpy(family, p0, p1, table, phi)
        gt = fp + xi[t]
        g2 = gt * gt + perp2[t]
        elr = lr / x
        h = elr / d
        if t % every == 0:
            k = t // every
            out[k, :] = (
                f,
                math.sqrt(x),
                math.sqrt(g2),
                elr,
                math.atan(h * math.sqrt(g2)),
                fpp,
                phi,
            )
        phi = phi - math.atan(h * gt)
        if abs(phi) < floor:
            phi = floor if phi >= 0.0 else -floor
        x = d * d * x + lr * lr * g2 / x
        if not (x > 0.0 and x < 1e300):
            return t + 1, x, phi
    return xi.shape[0], x, phi


@njit(cache=True)
def _reduced_momentum_kernel(
    lr, wd, mu, rho0, phi0, family, p0, p1, table, xi, perp2, floor, every, out
):  # pragma: no cover - numba
    w0 = rho0 * math.cos(phi0)
    w1 = rho0 * math.sin(phi0)
    v0 = 0.0
    v1 = 0.0
    kp = lr * lr / ((1.0 - mu) * (1.0 - mu))
    for t in range(xi.shape[0]):
        r2 = w0 * w0 + w1 * w1
        phi = math.atan2(w1, w0)
        f, fp, fpp = _profile_kernel(family, p0, p1, table, phi)
        gt = fp + xi[t]
        g2 = gt * gt + perp2[t]
        gx = -gt * w1 / r2
        gy = gt * w0 / r2
        v0 = mu * v0 + gx + wd * w0
        v1 = mu * v1 + gy + wd * w1
        n0 = w0 - lr * v0
        n1 = w1 - lr * v1
        nr2 = n0 * n0 + n1 * n1
        sc = math.sqrt(1.0 + kp * perp2[t] / (r2 * nr2))
        n0 *= sc
        n1 *= sc
        if t % every == 0:
            k = t // every
            cosd = (w0 * n0 + w1 * n1) / math.sqrt(r2 * (n0 * n0 + n1 * n1))
            out[k, 0] = f
            out[k, 1] = math.sqrt(r2)
            out[k, 2] = math.sqrt(g2)
            out[k, 3] = lr / r2
            out[k, 4] = math.acos(min(1.0, max(-1.0, cosd)))
            out[k, 5] = fpp
            out[k, 6] = phi
        if floor > 0.0:
            nphi = math.atan2(n1, n0)
            if abs(nphi) < floor:
                nr = math.sqrt(n0 * n0 + n1 * n1)
                fl = floor if nphi >= 0.0 else -floor
                n0 = nr * math.cos(fl)
                n1 = nr * math.sin(fl)
        w0 = n0
        w1 = n1
        r2n = w0 * w0 + w1 * w1
        if not (r2n > 0.0 and r2n < 1e300):
            return t + 1, r2n, math.atan2(w1, w0)
    return xi.shape[0], w0 * w0 + w1 * w1, math.atan2(w1, w0)


def _reduced_momentum_numpy(
    lr, wd, mu, rho0, phi0, family, p0, p1, table, xi, perp2, floor, every, out
):
    w = np.array([rho0 * math.cos(phi0), rho0 * math.sin(phi0)])
    v = np.zeros(2)
    kp = lr * lr / ((1.0 - mu) * (1.0 - mu))
    for t in range(xi.shape[0]):
        r2 = float(w[0] * w[0] + w[1] * w[1])
        phi = math.atan2(w[1], w[0])
        f, fp, fpp = _profile_numpy(family, p0, p1, table, phi)
        gt = fp + xi[t]
        g2 = gt * gt + perp2[t]
        grad = np.array([-gt * w[1] / r2, gt * w[0] / r2])
        v = mu * v + grad + wd * w
        n = w - lr * v
        nr2 = float(n[0] * n[0] + n[1] * n[1])
        n = n * math.sqrt(1.0 + kp * perp2[t] / (r2 * nr2))
        if t % every == 0:
            k = t // every
            cosd = float(w[0] * n[0] + w[1] * n[1]) / math.sqrt(r2 * float(n[0] ** 2 + n[1] ** 2))
            ang = math.acos(min(1.0, max(-1.0, cosd)))
            out[k, :] = (f, math.sqrt(r2), math.sqrt(g2), lr / r2, ang, fpp, phi)
        if floor > 0.0:
            nphi = math.atan2(n[1], n[0])
            if abs(nphi) < floor:
                nr = math.sqrt(float(n[0] ** 2 + n[1] ** 2))
                fl = floor if nphi >= 0.0 else -floor
                n = np.array([nr * math.cos(fl), nr * math.sin(fl)])
        w = n
        r2n = float(w[0] * w[0] + w[1] * w[1])
        if not (r2n > 0.0 and r2n < 1e300):
            return t + 1, r2n, math.atan2(w[1], w[0])
    return xi.shape[0], float(w[0] ** 2 + w[1] ** 2), math.atan2(w[1], w[0])


def _seed_meta(seed: object) -> int | None:
    """``meta["seed"]``: an integer seed (Python or numpy) as an int, else None."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        return int(seed)
    return None


def _draw_noise(
    steps: int, noise: float, dim: int, seed: int | np.random.Generator | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if noise == 0.0:
        return np.zeros(steps), np.zeros(steps)
    rng = np.random.default_rng(seed)
    xi = noise * rng.standard_normal(steps)
    perp2 = noise * noise * rng.chisquare(dim - 2, steps) if dim > 2 else np.zeros(steps)
    return xi, perp2


def reduced_map(
    lr: float,
    wd: float,
    steps: int,
    *,
    sharpness: float | None = None,
    family: str = "quadratic",
    shape: dict[str, Any] | None = None,
    momentum: float = 0.0,
    rho0: float | None = None,
    phi0: float = 0.1,
    noise: float = 0.0,
    dim: int = 2,
    floor: float = 0.0,
    seed: int | np.random.Generator | None = 0,
    record_every: int = 1,
    engine: str = "numba",
) -> Trajectory:
    """Iterate the reduced (norm, deviation) model of the periodic behavior.

    The state is ``(rho, phi)``: the weight norm and the angle from the minimum along the
    sharpest great circle. SGD (``momentum=0``) update, derived in the module docstring
    from the exact direction/norm form of SGD on an SI loss (docs/theory.md §1):

    * ``g_t = f'(phi_t) + xi_t`` with ``xi_t ~ N(0, noise^2)``,
      ``g~_t^2 = g_t^2 + noise^2 chi^2_{dim-2}``
    * ``phi_{t+1} = phi_t - arctan(elr_t g_t / (1 - lr wd))``
    * ``rho^2_{t+1} = (1 - lr wd)^2 rho^2_t + lr^2 g~_t^2 / rho^2_t``

    Exact for a loss that depends only on the angle in one plane (the 2-D Rayleigh
    quotient for ``family="quadratic"``) without noise. With momentum the in-plane state is
    a 2-D PyTorch heavy ball on ``L(w) = f(atan2(w_1, w_0))`` (exact in 2-D), plus the
    first-order off-circle noise gain ``lr^2 |xi_perp|^2/((1 - mu)^2 rho^2)``.

    Parameters
    ----------
    lr, wd : float
        Learning rate and weight decay, ``lr*wd < 1``.
    steps : int
        Number of updates.
    sharpness : float
        Sphere sharpness ``S = f''(0)`` at the minimum (from the table for ``"table"``).
    family : {"quadratic", "logistic", "table"}
        Loss shape along the circle (:func:`profile`).
    shape : dict, optional
        ``{"margin": m}`` for ``"logistic"`` (default :data:`DEFAULT_MARGIN`); the
        output of :func:`circle_profile` for ``"table"``.
    momentum : float
        Heavy-ball momentum in ``[0, 1)``.
    rho0 : float, optional
        Initial norm; default twice the critical norm ``sqrt(lr S/(2(1 - lr wd)))``.
    phi0 : float
        Initial angle from the minimum (radians).
    noise : float
        Isotropic gradient-noise level ``sigma`` (per coordinate, at unit norm).
    dim : int
        Dimension of the weight vector the noise lives in (``>= 2``).
    floor : float
        Optional smallest ``|phi|`` (a deterministic stand-in for a noise floor; 0 = off).
    seed : int or Generator
        Seed for ``numpy.random.default_rng`` (noise only); an integer seed (Python or
        numpy) is kept in ``meta["seed"]``, a Generator is recorded as None.
    record_every : int
        Keep every k-th row.
    engine : {"numba", "numpy"}
        The compiled kernel or its plain-numpy twin (slow; for tests).

    Returns
    -------
    Trajectory
        Columns ``loss``, ``rho``, ``grad_norm_sphere``, ``elr``, ``angular_update``,
        ``sharpness_sphere`` (``f''(phi)``: curvature along the circle) and
        ``extra["phi"]``; ``meta`` has the hyperparameters, ``sharpness_min``, ``status``
        (``"diverged"`` when the norm leaves floating-point range).
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    mu = momentum_number(momentum)
    steps = check_steps("steps", steps, "pass fewer steps")
    every = check_steps("record_every", record_every)
    S = None if sharpness is None else positive_number("sharpness", sharpness)
    sigma = nonnegative_number("noise", noise)
    dim_i = check_positive_int("dim", dim)
    if dim_i < 2:
        raise ValueError(f"dim must be >= 2 (the reduced model is a plane), got {dim_i}")
    floor_f = nonnegative_number("floor", floor)
    phi0_f = finite_number("phi0", phi0)
    if engine not in ("numba", "numpy"):
        raise ValueError(f"engine must be 'numba' or 'numpy', got {engine!r}")
    fid, p0, p1, table = _family_params(family, S, shape)
    if S is None:
        S = float(_profile_numpy(fid, p0, p1, table, 0.0)[2])
    if rho0 is None:
        rho0 = 2.0 * math.sqrt(lr_f * S / (2.0 * (1.0 - lr_f * wd_f)))
    rho0_f = positive_number("rho0", rho0)
    xi, perp2 = _draw_noise(steps, sigma, dim_i, seed)
    n_rows = (steps - 1) // every + 1
    out = np.full((n_rows, 7), np.nan)
    if mu == 0.0:
        fn = _reduced_kernel if engine == "numba" else _reduced_numpy
        done, _, _ = fn(
            lr_f, wd_f, rho0_f**2, phi0_f, fid, p0, p1, table, xi, perp2, floor_f, every, out
        )
    else:
        fn = _reduced_momentum_kernel if engine == "numba" else _reduced_momentum_numpy
        done, _, _ = fn(
            lr_f, wd_f, mu, rho0_f, phi0_f, fid, p0, p1, table, xi, perp2, floor_f, every, out
        )
    status = "ok"
    if done < steps:
        status = "diverged"
        keep = (done - 1) // every + 1
        out = out[:keep]
    return Trajectory(
        step=np.arange(out.shape[0], dtype=np.int64) * every,
        loss=out[:, 0],
        rho=out[:, 1],
        grad_norm_sphere=out[:, 2],
        elr=out[:, 3],
        angular_update=out[:, 4],
        sharpness_sphere=out[:, 5],
        extra={"phi": out[:, 6]},
        meta={
            "lr": lr_f,
            "wd": wd_f,
            "momentum": mu,
            "source": "siflow.maps.reduced_map",
            "family": family,
            "shape": {} if family == "table" else dict(shape or {}),
            "sharpness_min": S,
            "noise": sigma,
            "dim": dim_i,
            "seed": _seed_meta(seed),
            "steps": steps,
            "status": status,
        },
    )
