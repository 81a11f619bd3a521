"""Optimizer update rules as small composable numba kernels (optax style).

An optimizer is a chain of in-place transforms of an update vector ``u`` that
starts as the gradient ``g``; the chain ends with ``w += u``. The transforms
(each exact, no approximation):

==========================  ===============================================================
``add_decayed_weights``     ``u <- u + wd w``                      (coupled weight decay)
``trace``                   ``buf <- mu buf + u``; ``u <- buf`` (heavy ball) or
                            ``u <- u + mu buf`` (Nesterov)          (PyTorch ``SGD``, dampening 0)
``scale_by_adam``           ``m <- b1 m + (1-b1) u``; ``v <- b2 v + (1-b2) u^2``;
                            ``u <- m_hat / (sqrt(v_hat) + eps)`` with bias corrections
                            ``m_hat = m/(1-b1^t)``, ``v_hat = v/(1-b2^t)`` (PyTorch ``Adam``)
``scale``                   ``u <- c u``
``apply_updates``           ``w <- w + u``
``project_norm``            ``w <- r w/|w|``                        (fixed-norm training)
==========================  ===============================================================

The optimizers of :data:`OPTIMIZERS` are chains of these, composed once in
:func:`update` (the simulation loop calls only that):

``sgd``        ``add_decayed_weights(wd) -> trace(momentum) -> scale(-lr)``, i.e. PyTorch
               ``SGD(lr, momentum, weight_decay=wd)``: ``v <- mu v + g + wd w; w <- w - lr v``;
               with ``momentum=0`` exactly ``w <- (1 - lr wd) w - lr g`` (docs/theory.md §1).
``nesterov``   the same with ``trace(nesterov=True)`` (PyTorch ``nesterov=True``).
``adamw``      ``scale_by_adam -> add_decayed_weights(wd) -> scale(-lr)``, i.e. PyTorch
               ``AdamW``: ``w <- (1 - lr wd) w - lr m_hat/(sqrt(v_hat)+eps)`` (decoupled WD).
``fixed_norm`` ``sgd`` followed by ``project_norm(|w0|)``: training on a fixed sphere with
               effective LR ``lr/|w0|^2`` (the seed paper's "fixed SI norm" variant). With
               ``wd > 0`` the decay only shortens the radius that the projection restores,
               so the tangent step is ``lr/(1 - lr wd)`` in units of ``1/|w0|^2``.
``fixed_elr``  projected SGD on the sphere of radius ``|w0|`` where ``lr`` is read as the
               effective LR ``elr``: ``trace(momentum) -> scale(-elr |w0|^2) ->
               project_norm(|w0|)``, so the ELR is ``elr`` whatever ``w0`` (Kodryan et
               al. 2022, training on the sphere at a fixed ELR). Weight decay is not
               applied: on a fixed sphere its only effect would be to rescale the step
               by ``1/(1 - lr_t wd)``, and ``lr_t wd`` can exceed 1 for large ``|w0|``.

Every kernel has a plain-numpy twin (suffix ``_numpy``) for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from siflow._validate import (
    check_beta,
    check_lr_wd,
    check_nonnegative,
    momentum_number,
)
from siflow.losses import _FAST

__all__ = [
    "SGD",
    "ADAMW",
    "OPTIMIZERS",
    "Optimizer",
    "make_optimizer",
    "add_decayed_weights",
    "trace",
    "scale_by_adam",
    "scale",
    "apply_updates",
    "project_norm",
    "update",
    "add_decayed_weights_numpy",
    "trace_numpy",
    "scale_by_adam_numpy",
    "project_norm_numpy",
    "update_numpy",
]

SGD = 0
ADAMW = 1


# indices into the hyperparameter vector ``hp`` of :func:`update`
HP_LR, HP_WD, HP_MU, HP_B1, HP_B2, HP_EPS, HP_RADIUS = range(7)


# --------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy", fastmath=_FAST)
def add_decayed_weights(u: NDArray, w: NDArray, wd: float) -> None:  # pragma: no cover - numba
    """``u += wd * w`` in place."""
    for i in range(u.size):
        u[i] += wd * w[i]


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def trace(
    u: NDArray, buf: NDArray, decay: float, nesterov: bool
) -> None:  # pragma: no cover - numba
    """Momentum: ``buf = decay*buf + u``; ``u = buf`` or, Nesterov, ``u += decay*buf``."""
    for i in range(u.size):
        b = decay * buf[i] + u[i]
        buf[i] = b
        if nesterov:
            u[i] += decay * b
        else:
            u[i] = b


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def scale_by_adam(
    u: NDArray, m: NDArray, v: NDArray, b1: float, b2: float, eps: float, count: int
) -> None:  # pragma: no cover - numba
    """Adam direction with bias correction; ``count`` is the 1-based step number."""
    c1 = 1.0 - b1**count
    c2 = 1.0 - b2**count
    for i in range(u.size):
        mi = b1 * m[i] + (1.0 - b1) * u[i]
        vi = b2 * v[i] + (1.0 - b2) * u[i] * u[i]
        m[i] = mi
        v[i] = vi
        u[i] = (mi / c1) / (math.sqrt(vi / c2) + eps)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def scale(u: NDArray, c: float) -> None:  # pragma: no cover - numba
    """``u *= c`` in place."""
    for i in range(u.size):
        u[i] *= c


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def apply_updates(w: NDArray, u: NDArray) -> None:  # pragma: no cover - numba
    """``w += u`` in place."""
    for i in range(w.size):
        w[i] += u[i]


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def project_norm(w: NDArray, radius: float) -> None:  # pragma: no cover - numba
    """``w = radius * w/|w|`` in place."""
    r2 = 0.0
    for i in range(w.size):
        r2 += w[i] * w[i]
    c = radius / math.sqrt(r2)
    for i in range(w.size):
        w[i] *= c


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def update(
    kind: int,
    nesterov: bool,
    project: bool,
    hp: NDArray,
    w: NDArray,
    u: NDArray,
    s1: NDArray,
    s2: NDArray,
    count: int,
) -> None:  # pragma: no cover - numba
    """One optimizer step in place: ``u`` holds the gradient on entry.

    Parameters
    ----------
    kind : int
        :data:`SGD` or :data:`ADAMW`.
    nesterov : bool
        Nesterov momentum (SGD only).
    project : bool
        Rescale ``w`` to ``hp[HP_RADIUS]`` after the step.
    hp : ndarray
        ``[lr, wd, momentum, beta1, beta2, eps, radius]``; ``lr`` is the step actually
        used (``fixed_elr`` passes ``elr * radius**2``).
    w, u, s1, s2 : ndarray
        Weights, update (gradient on entry), optimizer state (SGD: momentum buffer
        in ``s1``; AdamW: ``m``, ``v``).
    count : int
        1-based step number (Adam bias correction).
    """
    lr = hp[HP_LR]
    wd = hp[HP_WD]
    if kind == SGD:
        add_decayed_weights(u, w, wd)
        mu = hp[HP_MU]
        if mu > 0.0:
            trace(u, s1, mu, nesterov)
        scale(u, -lr)
    else:
        scale_by_adam(u, s1, s2, hp[HP_B1], hp[HP_B2], hp[HP_EPS], count)
        add_decayed_weights(u, w, wd)
        scale(u, -lr)
    apply_updates(w, u)
    if project:
        project_norm(w, hp[HP_RADIUS])


# --------------------------------------------------------------------------- numpy twins
def add_decayed_weights_numpy(u: NDArray, w: NDArray, wd: float) -> NDArray[np.float64]:
    """Twin of :func:`add_decayed_weights` (returns a new array)."""
    return u + wd * w


def trace_numpy(
    u: NDArray, buf: NDArray, decay: float, nesterov: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Twin of :func:`trace`: returns ``(u, buf)``."""
    b = decay * buf + u
    return (u + decay * b if nesterov else b.copy()), b


def scale_by_adam_numpy(
    u: NDArray, m: NDArray, v: NDArray, b1: float, b2: float, eps: float, count: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Twin of :func:`scale_by_adam`: returns ``(u, m, v)``."""
    m = b1 * m + (1.0 - b1) * u
    v = b2 * v + (1.0 - b2) * u * u
    out = (m / (1.0 - b1**count)) / (np.sqrt(v / (1.0 - b2**count)) + eps)
    return out, m, v


def project_norm_numpy(w: NDArray, radius: float) -> NDArray[np.float64]:
    """Twin of :func:`project_norm` (returns a new array)."""
    return w * (radius / math.sqrt(float(w @ w)))


def update_numpy(
    kind: int,
    nesterov: bool,
    project: bool,
    hp: NDArray,
    w: NDArray,
    g: NDArray,
    s1: NDArray,
    s2: NDArray,
    count: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Twin of :func:`update`: returns the new ``(w, s1, s2)``."""
    lr, wd, mu, b1, b2, eps, radius = (float(x) for x in hp[:7])
    u = np.array(g, dtype=np.float64)
    if kind == SGD:
        u = add_decayed_weights_numpy(u, w, wd)
        if mu > 0.0:
            u, s1 = trace_numpy(u, s1, mu, nesterov)
        u = -lr * u
    else:
        u, s1, s2 = scale_by_adam_numpy(u, s1, s2, b1, b2, eps, count)
        u = -lr * add_decayed_weights_numpy(u, w, wd)
    w = w + u
    if project:
        w = project_norm_numpy(w, radius)
    return w, s1, s2


# --------------------------------------------------------------------------- Python API
#: Registered optimizers: name -> (kernel kind, nesterov, project, lr is an ELR).
OPTIMIZERS: dict[str, tuple[int, bool, bool, bool]] = {
    "sgd": (SGD, False, False, False),
    "nesterov": (SGD, True, False, False),
    "adamw": (ADAMW, False, False, False),
    "fixed_norm": (SGD, False, True, False),
    "fixed_elr": (SGD, False, True, True),
}


@dataclass(frozen=True)
class Optimizer:
    """A validated optimizer configuration for :func:`update`.

    Use :func:`make_optimizer`. ``hp(radius)`` gives the kernel's hyperparameter
    vector once the starting norm (fixed-norm variants) is known.
    """

    name: str
    kind: int
    nesterov: bool
    project: bool
    lr_is_elr: bool
    lr: float
    wd: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def hp(self, radius: float = 1.0) -> NDArray[np.float64]:
        """``[lr_step, wd_step, momentum, beta1, beta2, eps, radius]`` for :func:`update`.

        ``fixed_elr``: ``lr_step = elr * radius**2`` and ``wd_step = 0``.
        """
        lr = self.lr * radius**2 if self.lr_is_elr else self.lr
        wd = 0.0 if self.lr_is_elr else self.wd  # no weight decay on a fixed-ELR sphere
        return np.array(
            [lr, wd, self.momentum, self.beta1, self.beta2, self.eps, radius],
            dtype=np.float64,
        )

    def meta(self) -> dict[str, Any]:
        """Hyperparameters for a trajectory's metadata."""
        out: dict[str, Any] = {"optimizer": self.name, "momentum": self.momentum}
        if self.kind == ADAMW:
            out.update(beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        if self.nesterov:
            out["nesterov"] = True
        return out


def make_optimizer(
    name: str,
    *,
    lr: float,
    wd: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """Validate and build a registered optimizer.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    lr, wd : float
        Learning rate (the effective LR for ``fixed_elr``) and weight decay;
        ``lr > 0``, ``wd >= 0``, ``lr*wd < 1``.
    momentum : float
        Heavy-ball momentum in ``[0, 1)`` (SGD variants).
    nesterov : bool
        Nesterov momentum for ``sgd`` (same as ``name="nesterov"``).
    betas, eps : AdamW coefficients.
    """
    if name not in OPTIMIZERS:
        known = ", ".join(OPTIMIZERS)
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {known}")
    kind, nest, project, lr_is_elr = OPTIMIZERS[name]
    check_lr_wd(lr, wd, wd_positive=False)
    mu = momentum_number(momentum)
    nest = bool(nest or nesterov)
    if nest and kind != SGD:
        raise ValueError(f"nesterov applies to SGD variants, not {name!r}; drop nesterov")
    if nest and mu == 0.0:
        raise ValueError("nesterov needs momentum > 0; pass e.g. momentum=0.9")
    if kind == ADAMW and mu != 0.0:
        raise ValueError("adamw takes betas=(beta1, beta2), not momentum; pass momentum=0")
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(
            f"betas must be two numbers (beta1, beta2), got {betas!r}; pass e.g. (0.9, 0.999)"
        ) from None
    check_beta("beta1", b1)
    check_beta("beta2", b2)
    check_nonnegative("eps", eps)
    return Optimizer(
        name=name,
        kind=kind,
        nesterov=nest,
        project=project,
        lr_is_elr=lr_is_elr,
        lr=float(lr),
        wd=float(wd),
        momentum=mu,
        beta1=b1,
        beta2=b2,
        eps=float(eps),
    )
