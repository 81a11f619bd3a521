"""How the benchmark calls siflow, and the cases it runs.

Each :class:`ToyCase` bundles a siflow run and its two references (numpy and
PyTorch loops of the same update, :mod:`analysis.bench.references`) plus the
minimal flop and byte counts of one step, used for the roofline.

Flop and byte model per step (float64, ``d`` = dimension, ``n`` = samples):

- diagonal Rayleigh quotient: ``w.w``, ``a*w``, ``w.(a w)``, the gradient,
  the update, ``|g|`` and ``w.w_new``: 14 d flops; the vectors ``a``, ``w``
  read and ``w`` written: 24 d bytes.
- logistic regression: the forward ``X w`` and backward ``X' r`` products,
  4 n d flops; ``X`` read once (a fused kernel can use each row for both):
  8 n d bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.bench import references as R

LR, WD = 0.1, 1e-3


@dataclass
class ToyCase:
    name: str
    dim: int
    n: int
    steps: int
    ref_steps: int
    siflow: Callable[[], Callable[[], Any]]
    numpy_steps: Callable[[int], dict[str, Any]]
    torch_steps: Callable[[int], dict[str, Any]]
    flops_per_step: float
    bytes_per_step: float
    working_set: int
    toy: Any = None
    w0: Any = None
    fused_steps: Callable[[int], dict[str, Any]] | None = None

    def numpy(self) -> Any:
        return self.numpy_steps(self.ref_steps)

    def torch(self) -> Any:
        return self.torch_steps(self.ref_steps)

    @property
    def label(self) -> str:
        return f"{self.name} d={self.dim}" + (f" n={self.n}" if self.n else "")


def siflow_norm_map() -> Callable[[float, float, float, float, int], Any] | None:
    """``siflow.maps.norm_map`` (the public front door, returns a Trajectory), or None."""
    try:
        from siflow import maps
    except ImportError:
        return None
    return lambda x0, lr, wd, g, steps: maps.norm_map(lr, wd, steps, rho0=x0**0.5, grad_norm=g)


def siflow_norm_kernel() -> Callable[[float, float, float, float, int], Any] | None:
    """The numba kernel behind ``norm_map`` (``maps._norm_map_kernel``), or None."""
    try:
        from siflow import maps
    except ImportError:
        return None
    kernel = getattr(maps, "_norm_map_kernel", None)
    if kernel is None:
        return None
    cache: dict[int, Any] = {}

    def run(x0: float, lr: float, wd: float, g: float, steps: int) -> float:
        if steps not in cache:
            cache.clear()
            cache[steps] = (np.full(steps, g * g), np.empty(steps))
        g2, out = cache[steps]
        return kernel(lr, wd, x0, g2, 1, out)

    return run


def _siflow_sim(loss: Any, dim: int, steps: int, w0: np.ndarray) -> Callable[[], Callable[[], Any]]:
    """``simulate`` on a pre-built toy (construction is not timed), every row recorded."""

    def make() -> Callable[[], Any]:
        from siflow.simulate import simulate

        kw = dict(lr=LR, wd=WD, seed=0, w0=w0, progress=False)
        simulate(loss, steps=10, **kw)
        return lambda: simulate(loss, steps=steps, **kw)

    return make


def check_same_update(case: ToyCase, steps: int = 50) -> float:
    """Max relative difference of loss and rho between siflow and the numpy reference."""
    from siflow.simulate import simulate

    traj = simulate(case.toy, lr=LR, wd=WD, steps=steps, seed=0, w0=case.w0, progress=False)
    ref = case.numpy_steps(steps)
    err = 0.0
    for name in ("loss", "rho", "grad_norm_sphere"):
        a, b = traj.column(name), ref[name]
        err = max(err, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
    return err


def _logistic_toy(d: int, n: int, rng: np.random.Generator) -> Any:
    """The logistic toy on separable Gaussian data, built without its minimizer.

    ``siflow.losses.logistic`` also locates the minimizer and the sharpness there
    (about a second at d=1024); the kernel being timed is the same, and the data
    and temperature are kept as in the earlier runs so that the numbers compare.
    """
    from siflow.losses import LOGISTIC, SILoss

    w_star = rng.standard_normal(d)
    w_star /= np.linalg.norm(w_star)
    x = rng.standard_normal((n, d))
    z = np.sign(x @ w_star)[:, None] * x
    return SILoss(name="logistic", kind=LOGISTIC, dim=d, params=np.array([4.0]), data=z)


def toy_cases(dims: tuple[int, ...], quick: bool) -> list[ToyCase]:
    from siflow.losses import make_loss

    rng = np.random.default_rng(0)
    cases = []
    for d in dims:
        # at least 20000 steps: simulate's fixed cost per call (~0.2 ms) stays below 2% at d=1024
        steps = max(20_000, (2 * 10**6 if not quick else 2 * 10**5) // d)
        ref = max(200, steps // 20)
        toy = make_loss("rayleigh", dim=d)
        a = np.asarray(toy.params[:d], dtype=np.float64)  # spectrum (then quartic terms)
        w0 = rng.standard_normal(d)

        def np_steps(k: int, a: np.ndarray = a, w0: np.ndarray = w0) -> dict[str, Any]:
            return R.rayleigh_numpy(a, w0, LR, WD, k)

        def th_steps(k: int, a: np.ndarray = a, w0: np.ndarray = w0) -> dict[str, Any]:
            return R.rayleigh_torch(a, w0, LR, WD, k)

        cases.append(
            ToyCase(
                "rayleigh",
                d,
                0,
                steps,
                ref,
                _siflow_sim(toy, d, steps, w0),
                np_steps,
                th_steps,
                14.0 * d,
                24.0 * d,
                24 * d,
                toy,
                w0,
                lambda k, a=a, w0=w0: R.rayleigh_fused(a, w0, LR, WD, k),
            )
        )
    for d, n in [(dims[0], 32)] + [(d, 256) for d in dims]:
        steps = max(500, (10**6 if not quick else 10**5) * 256 // (d * n))
        ref = max(100, steps // 10)
        toy = _logistic_toy(d, n, rng)
        z = np.ascontiguousarray(toy.data, dtype=np.float64)
        s = float(toy.params[0])
        ones = np.ones(z.shape[0])
        w0 = rng.standard_normal(d)

        def np_steps(k: int, z=z, s=s, ones=ones, w0=w0) -> dict[str, Any]:
            return R.logistic_numpy(z, ones, s, w0, LR, WD, k)

        def th_steps(k: int, z=z, s=s, ones=ones, w0=w0) -> dict[str, Any]:
            return R.logistic_torch(z, ones, s, w0, LR, WD, k)

        cases.append(
            ToyCase(
                "logistic",
                d,
                n,
                steps,
                ref,
                _siflow_sim(toy, d, steps, w0),
                np_steps,
                th_steps,
                4.0 * n * d,
                8.0 * n * d,
                8 * n * d,
                toy,
                w0,
                lambda k, z=z, s=s, w0=w0: R.logistic_blas(z, s, w0, LR, WD, k),
            )
        )
    return cases


def sweep_spec(quick: bool) -> dict[str, Any]:
    """Independent simulations of the default toy: 16 (quick) or 32 cells of 10^5 steps."""
    n_lr, n_wd = (4, 4) if quick else (8, 4)
    return {
        "loss": "logistic",
        "lr": np.logspace(-1, 0, n_lr),
        "wd": np.logspace(-3, -2, n_wd),
        "steps": 50_000 if quick else 100_000,
        "cells": n_lr * n_wd,
    }


def run_sweep(spec: dict[str, Any], workers: int) -> Any:
    from siflow.sweep import sweep

    return sweep(spec["loss"], lr=spec["lr"], wd=spec["wd"], steps=spec["steps"], workers=workers)
