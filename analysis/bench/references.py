"""Reference implementations written the obvious way, for the benchmark ratios.

Each reference computes the same update and records the same per-step
quantities as the siflow kernel it is compared with, so the ratio measures how
the code is written, not what it computes.

Scalar norm map (theory.md section 1, exact for SGD with coupled weight decay)::

    x_{t+1} = a x_t + b / x_t,   x = rho^2,  a = (1 - lr wd)^2,  b = lr^2 g~^2

- :func:`norm_map_python`: a pure-Python loop storing every ``x_t``.
- :func:`chain_latency`: a numba loop of only ``x = a*x + b/x`` (no store): the
  latency of the dependent multiply-add/divide chain, the floor for any
  implementation of the recursion on this core.

Toy losses with SGD + coupled WD, ``w <- (1 - lr wd) w - lr grad L(w)``:

- Rayleigh quotient with diagonal ``A = diag(a)``: ``L(w) = w'Aw / (2 w'w)``,
  ``grad L = (Aw - 2 L w) / w'w`` (exact; scale-invariant, so ``<grad L, w> = 0``).
- Scale-invariant logistic regression with temperature ``s``: margins
  ``m_i = s y_i x_i.w / |w|``, ``L = mean log(1 + exp(-m_i))``,
  ``grad L = (s/|w|) P_perp X'(y * c) / n`` with ``c_i = -sigmoid(-m_i)`` and
  ``P_perp = I - w w'/|w|^2`` (exact).

Each toy has a plain-numpy loop (``*_numpy``) and a PyTorch CPU loop (``*_torch``,
tensors without autograd: the fastest obvious torch code for a known gradient).
All record loss, rho, the gradient norm on the sphere and the angular update
per step.

:func:`rayleigh_fused` is not an "obvious" reference but a hand-fused numba
kernel of the same update (two passes over ``w`` per step, reductions
vectorised with ``fastmath={"reassoc", "contract", "arcp", "nsz"}``): what a
kernel written for the hardware reaches, to tell how far siflow's generic
kernel is from the attainable.

The angular update of SGD + coupled WD is computed exactly without a second
pass: ``w' = c w - lr g`` with ``c = 1 - lr wd``, so the component of ``w'`` along
``w^`` is ``c rho - lr (g.w^)`` and the orthogonal one has norm
``lr sqrt(|g|^2 - (g.w^)^2)``; ``Delta = atan2(orthogonal, along)`` (exact for any
``g``; theory.md section 1 gives ``tan Delta = elr g~ / (1 - lr wd)`` when
``g.w = 0``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "norm_map_python",
    "chain_latency",
    "norm_map_columns",
    "rayleigh_fused",
    "rayleigh_numpy",
    "rayleigh_torch",
    "logistic_numpy",
    "logistic_torch",
]


def norm_map_python(x0: float, a: float, b: float, steps: int) -> list[float]:
    """Pure-Python loop of the exact norm map, storing every ``x_t`` in a list."""
    out = [0.0] * steps
    x = x0
    for t in range(steps):
        x = a * x + b / x
        out[t] = x
    return out


@njit(cache=True)
def chain_latency(x0: float, a: float, b: float, steps: int) -> float:  # pragma: no cover
    """Numba loop of only the dependent chain ``x = a*x + b/x`` (returns the last x)."""
    x = x0
    for _ in range(steps):
        x = a * x + b / x
    return x


def _step_columns(steps: int) -> dict[str, np.ndarray]:
    """Empty per-step columns, in the order the compiled references write them."""
    return {k: np.empty(steps) for k in ("loss", "rho", "grad_norm_sphere", "angular_update")}


@njit(cache=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
def _rayleigh_fused_kernel(a, w, lr, wd, loss, rho, gns, ang):  # pragma: no cover - numba
    d = w.size
    c = 1.0 - lr * wd
    r2 = 0.0
    for i in range(d):
        r2 += w[i] * w[i]
    for t in range(loss.size):
        q = 0.0
        for i in range(d):
            q += a[i] * w[i] * w[i]
        inv_r2 = 1.0 / r2
        val = 0.5 * q * inv_r2
        k = 2.0 * val
        g2 = 0.0
        gw = 0.0
        r2n = 0.0
        for i in range(d):
            g = (a[i] - k) * w[i] * inv_r2
            g2 += g * g
            gw += g * w[i]
            wn = c * w[i] - lr * g
            r2n += wn * wn
            w[i] = wn
        r = math.sqrt(r2)
        gw_hat = gw / r
        loss[t] = val
        rho[t] = r
        gns[t] = r * math.sqrt(g2)
        perp = lr * math.sqrt(max(g2 - gw_hat * gw_hat, 0.0))
        ang[t] = math.atan2(perp, c * r - lr * gw_hat)
        r2 = r2n


def rayleigh_fused(
    a: np.ndarray, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """Hand-fused numba SGD+WD loop on the diagonal Rayleigh quotient (attainable speed)."""
    w = np.ascontiguousarray(w0, dtype=np.float64).copy()
    out = _step_columns(steps)
    _rayleigh_fused_kernel(np.ascontiguousarray(a, dtype=np.float64), w, lr, wd, *out.values())
    return out


@njit(cache=True)
def _norm_map_columns_kernel(x0, lr, wd, g, rho, elr, ang):  # pragma: no cover - numba
    c = (1.0 - lr * wd) ** 2
    b = lr * lr * g * g
    q = 1.0 - lr * wd
    x = x0
    for t in range(rho.size):
        r = math.sqrt(x)
        e = lr / x
        rho[t] = r
        elr[t] = e
        ang[t] = math.atan(e * g / q)
        x = c * x + b / x
    return x


def norm_map_columns(x0: float, lr: float, wd: float, g: float, steps: int) -> tuple:
    """The norm map with ``rho``, ``elr`` and the angular update written in the same loop.

    The extra work (a square root, a division and an arctangent per step) does not
    depend on the next ``x``, so it overlaps with the divide latency of the chain;
    this is what a front door computing its columns inside the kernel costs.
    """
    rho, elr, ang = np.empty(steps), np.empty(steps), np.empty(steps)
    _norm_map_columns_kernel(x0, lr, wd, g, rho, elr, ang)
    return rho, elr, ang


def _angle(w: np.ndarray, w_new: np.ndarray) -> float:
    c = float(w @ w_new) / math.sqrt(float(w @ w) * float(w_new @ w_new))
    return math.acos(min(1.0, max(-1.0, c)))


def rayleigh_numpy(
    a: np.ndarray, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """Plain-numpy SGD+WD loop on the diagonal Rayleigh quotient."""
    w = w0.astype(np.float64).copy()
    loss = np.empty(steps)
    rho = np.empty(steps)
    gns = np.empty(steps)
    ang = np.empty(steps)
    decay = 1.0 - lr * wd
    for t in range(steps):
        r2 = w @ w
        aw = a * w
        val = (w @ aw) / (2.0 * r2)
        g = (aw - 2.0 * val * w) / r2
        w_new = decay * w - lr * g
        loss[t] = val
        rho[t] = np.sqrt(r2)
        gns[t] = np.sqrt(r2) * np.linalg.norm(g)
        ang[t] = _angle(w, w_new)
        w = w_new
    return {"loss": loss, "rho": rho, "grad_norm_sphere": gns, "angular_update": ang}


def rayleigh_torch(
    a: np.ndarray, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """PyTorch CPU (float64, no autograd) SGD+WD loop on the diagonal Rayleigh quotient."""
    import torch

    at = torch.as_tensor(a, dtype=torch.float64)
    w = torch.as_tensor(w0, dtype=torch.float64).clone()
    loss = torch.empty(steps, dtype=torch.float64)
    rho = torch.empty(steps, dtype=torch.float64)
    gns = torch.empty(steps, dtype=torch.float64)
    ang = torch.empty(steps, dtype=torch.float64)
    decay = 1.0 - lr * wd
    with torch.no_grad():
        for t in range(steps):
            r2 = torch.dot(w, w)
            aw = at * w
            val = torch.dot(w, aw) / (2.0 * r2)
            g = (aw - 2.0 * val * w) / r2
            w_new = decay * w - lr * g
            loss[t] = val
            rho[t] = torch.sqrt(r2)
            gns[t] = torch.sqrt(r2) * torch.linalg.vector_norm(g)
            c = torch.dot(w, w_new) / torch.sqrt(r2 * torch.dot(w_new, w_new))
            ang[t] = torch.arccos(torch.clamp(c, -1.0, 1.0))
            w = w_new
    return {
        k: v.numpy()
        for k, v in dict(loss=loss, rho=rho, grad_norm_sphere=gns, angular_update=ang).items()
    }


def logistic_numpy(
    x: np.ndarray, y: np.ndarray, s: float, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """Plain-numpy SGD+WD loop on scale-invariant logistic regression (full batch)."""
    w = w0.astype(np.float64).copy()
    n = x.shape[0]
    loss = np.empty(steps)
    rho = np.empty(steps)
    gns = np.empty(steps)
    ang = np.empty(steps)
    decay = 1.0 - lr * wd
    for t in range(steps):
        r = np.sqrt(w @ w)
        m = s * y * (x @ w) / r
        val = np.mean(np.logaddexp(0.0, -m))
        c = -0.5 * (1.0 - np.tanh(0.5 * m))  # -sigmoid(-m), stable
        u = (s / (r * n)) * (x.T @ (y * c))
        g = u - (u @ w) / (r * r) * w
        w_new = decay * w - lr * g
        loss[t] = val
        rho[t] = r
        gns[t] = r * np.linalg.norm(g)
        ang[t] = _angle(w, w_new)
        w = w_new
    return {"loss": loss, "rho": rho, "grad_norm_sphere": gns, "angular_update": ang}


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def _logistic_blas_kernel(x, s, w, lr, wd, loss, rho, gns, ang):  # pragma: no cover - numba
    n = x.shape[0]
    d = w.size
    c = 1.0 - lr * wd
    coef = np.empty(n)
    for t in range(loss.size):
        r2 = 0.0
        for i in range(d):
            r2 += w[i] * w[i]
        r = math.sqrt(r2)
        m = np.dot(x, w)  # BLAS gemv: the margins
        k = s / r
        val = 0.0
        for i in range(n):
            mi = k * m[i]
            e = math.exp(-abs(mi))
            val += max(-mi, 0.0) + math.log1p(e)
            coef[i] = -((e if mi > 0.0 else 1.0) / (1.0 + e))
        u = np.dot(coef, x)  # BLAS gemv (transposed): the gradient
        kk = s / (r * n)
        uw = 0.0
        for i in range(d):
            uw += u[i] * w[i]
        uw *= kk / r2
        g2 = 0.0
        gw = 0.0
        r2n = 0.0
        for i in range(d):
            g = kk * u[i] - uw * w[i]
            g2 += g * g
            gw += g * w[i]
            wn = c * w[i] - lr * g
            r2n += wn * wn
            w[i] = wn
        gw_hat = gw / r
        loss[t] = val / n
        rho[t] = r
        gns[t] = r * math.sqrt(g2)
        ang[t] = math.atan2(lr * math.sqrt(max(g2 - gw_hat * gw_hat, 0.0)), c * r - lr * gw_hat)


def logistic_blas(
    x: np.ndarray, s: float, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """Numba SGD+WD loop on SI logistic regression whose two data passes are BLAS ``gemv``.

    The margins ``X w`` and the gradient ``X' c`` by the BLAS numba links (``np.dot``),
    the rest in compiled loops: what the library's matrix-vector kernels attain for the
    two passes over the data that each step needs (the gradient weights need every margin
    first). Full batch; ``x`` holds the label-signed samples.
    """
    w = np.ascontiguousarray(w0, dtype=np.float64).copy()
    out = _step_columns(steps)
    _logistic_blas_kernel(
        np.ascontiguousarray(x, dtype=np.float64), float(s), w, lr, wd, *out.values()
    )
    return out


def logistic_torch(
    x: np.ndarray, y: np.ndarray, s: float, w0: np.ndarray, lr: float, wd: float, steps: int
) -> dict[str, np.ndarray]:
    """PyTorch CPU (float64, no autograd) SGD+WD loop on SI logistic regression."""
    import torch

    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    w = torch.as_tensor(w0, dtype=torch.float64).clone()
    n = x.shape[0]
    loss = torch.empty(steps, dtype=torch.float64)
    rho = torch.empty(steps, dtype=torch.float64)
    gns = torch.empty(steps, dtype=torch.float64)
    ang = torch.empty(steps, dtype=torch.float64)
    decay = 1.0 - lr * wd
    with torch.no_grad():
        for t in range(steps):
            r = torch.sqrt(torch.dot(w, w))
            m = s * yt * (xt @ w) / r
            val = torch.nn.functional.softplus(-m).mean()
            c = -torch.sigmoid(-m)
            u = (s / (r * n)) * (xt.T @ (yt * c))
            g = u - torch.dot(u, w) / (r * r) * w
            w_new = decay * w - lr * g
            loss[t] = val
            rho[t] = r
            gns[t] = r * torch.linalg.vector_norm(g)
            cosang = torch.dot(w, w_new) / (r * torch.sqrt(torch.dot(w_new, w_new)))
            ang[t] = torch.arccos(torch.clamp(cosang, -1.0, 1.0))
            w = w_new
    return {
        k: v.numpy()
        for k, v in dict(loss=loss, rho=rho, grad_norm_sphere=gns, angular_update=ang).items()
    }
