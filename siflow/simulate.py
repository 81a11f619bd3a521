"""Simulate a toy SI loss under an optimizer: one front door, one :class:`Trajectory`.

:func:`simulate` plays the role of ``scipy.integrate.solve_ivp``: losses and
optimizers are looked up by name in registries (:data:`siflow.losses.LOSSES`,
:data:`siflow.optim.OPTIMIZERS`), arguments are validated up front (``ValueError``
naming the bad one), and the result has fixed fields.

The loop runs in a numba kernel over chunks of :data:`CHUNK` steps; between
chunks Python thins the record, writes checkpoints, updates the progress display
and can be interrupted (Ctrl-C returns what was simulated, status
``"interrupted"``). Random numbers (minibatch indices, isotropic noise, the
starting point) are drawn outside the kernel from independent streams spawned
from ``numpy.random.SeedSequence(seed)``: the same seed gives the same numbers,
bit for bit.

Recorded quantities, for the row of step ``t`` (the state *before* update ``t``):
``loss`` (of the minibatch used when ``batch`` is set), ``rho = |w_t|``,
``grad_norm_sphere = |w_t| |g_t|`` with ``g_t`` the gradient actually used (noise
included), ``elr = lr/|w_t|^2`` (``lr`` is the step size used, so for ``fixed_elr``
the ELR itself), ``angular_update`` = angle between ``w_t`` and ``w_{t+1}``
(plain SGD: ``atan2(lr |g_perp|, (1 - lr wd)|w_t| - lr g_r)`` from the gradient's
radial and tangent parts, exact; other optimizers: ``2 atan2(|a - b|, |a + b|)`` for
the unit vectors ``a, b``; both accurate for tiny angles) and, when asked,
``sharpness_sphere`` of ``w_t``.

Long runs: every step is simulated and measured; a row is kept when ``step`` is a
multiple of ``record_every`` and, in addition, every row within ``event_window``
(``W``) steps of a *norm jump* is kept, so the destabilizations keep full
resolution while the slow decay phases are thinned. A norm jump is a step ``t``
where the norm rose by more than ``jump_tol`` (default 2%) over the last ``W``
steps: ``rho_{t+1} > (1 + jump_tol) min(rho_{t+1-W}, ..., rho_t)``. Weight decay
alone never does that, and equilibrium fluctuations rarely do for small
``lr*wd``; with strong gradient noise at large ``lr*wd`` raise ``jump_tol``.
``max_points`` chooses ``record_every`` from the number of steps; by default
(``record_every=None``) every step is kept up to ``max_rows/2`` steps and longer
runs are thinned to fit. The last step simulated is always kept (one row): the
final state, with the running sums over the whole run.

Bounded memory: at most ``max_rows`` rows are kept (default
:data:`DEFAULT_MAX_ROWS`). A run whose regular rows (``steps/record_every``) exceed
it is refused up front; when rows near norm jumps push the count over it, the
stride of the regular rows and that of the rows near jumps (1 at first) both
double and the rows already kept are thinned to the new strides, until at most
half the cap remains (``meta["record_every"]``, ``meta["record_every_near_jumps"]``
and ``meta["thinning_doublings"]`` give the final strides). Nothing that the
summary needs is lost: the kernel accumulates, over every step simulated, the sums
of ``Delta^2``, ``g~^2``, ``g~``, ``rho`` and ``elr``, and each kept row carries
their running value (:data:`SUM_COLUMNS`), so the mean over any step range is
exact whatever the thinning (:meth:`siflow.trajectory.Trajectory.exact_means`).
:func:`estimate` gives a run's memory and time before it starts; a run that
cannot fit in the available memory is refused with a ``ValueError`` naming the
parameter to change.

Schedules: ``lr`` and ``wd`` may be schedule specs or
:class:`siflow.schedules.Schedule` objects; the per-step values are computed per
chunk and fed to the kernel (constant runs take the same path as before, with no
per-step arrays).

Run ``python -m siflow.simulate --help`` for the command line.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

from siflow import losses as _losses
from siflow import optim as _optim
from siflow._borrowed import borrowed
from siflow._fileio import signals_deferred
from siflow._memory import available_memory, format_bytes
from siflow._validate import (
    check_finite,
    check_steps,
    check_whole,
    finite_number,
    nonnegative_number,
    positive_number,
)
from siflow._vector_width import prefer_wide_vectors
from siflow.losses import (
    LOGISTIC,
    RAYLEIGH,
    SILoss,
    _add_tangent_noise_at,
    _si_value_grad_step,
    _step_scratch,
    check_options,
    make_loss,
)
from siflow.optim import _FAST, HP_LR, HP_MU, HP_WD, SGD, Optimizer, make_optimizer, update
from siflow.schedules import Schedule, parse_schedule
from siflow.trajectory import Trajectory

__all__ = [
    "simulate",
    "estimate",
    "check_budget",
    "DEFAULT_LOSS",
    "DEFAULT_MAX_ROWS",
    "CHUNK",
    "LOSSES",
    "OPTIMIZERS",
    "RHO_MIN",
    "RHO_MAX",
    "SUM_COLUMNS",
]

#: Registries (re-exported): toy losses and optimizers by name.
LOSSES = _losses.LOSSES
OPTIMIZERS = _optim.OPTIMIZERS

#: Steps per numba call (granularity of Ctrl-C, checkpoints and progress).
CHUNK = 1 << 14

#: The embedded default toy of the command line (see :mod:`siflow._simulate_cli`).
DEFAULT_LOSS = "logistic"

_OK, _DIVERGED, _UNDERFLOW = 0, 1, 2
_STATUS = {_OK: "ok", _DIVERGED: "diverged", _UNDERFLOW: "underflow"}
#: Norm bounds outside which a run stops (``rho**2`` and ``lr/rho**2`` stay finite).
RHO_MAX = 1e150
RHO_MIN = 1e-150


# --------------------------------------------------------------------------- the kernel
# rows of the chunk output ``out`` (one contiguous row per recorded quantity)
_O_LOSS, _O_RHO, _O_GNS, _O_ANG, _O_ELR, _O_SA2, _O_SG2, _O_SG, _O_SRHO, _O_SELR = range(10)
_N_OUT = 10
# entries of the carried state ``carry`` (kept between chunks)
_C_R2, _C_SA2, _C_SG2, _C_SG, _C_SRHO, _C_SELR = range(6)
_N_CARRY = 6
# columns of the trajectory written by the kernel, and their rows in ``out``
_KERNEL_ROWS = (
    ("loss", _O_LOSS),
    ("rho", _O_RHO),
    ("grad_norm_sphere", _O_GNS),
    ("angular_update", _O_ANG),
    ("elr", _O_ELR),
    ("sum_angular_update_sq", _O_SA2),
    ("sum_grad_norm_sphere_sq", _O_SG2),
    ("sum_grad_norm_sphere", _O_SG),
    ("sum_rho", _O_SRHO),
    ("sum_elr", _O_SELR),
)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _run_chunk_wide(toy, draws, opt, sched, state, scratch, ctl, out, snap):  # pragma: no cover
    """:func:`_run_chunk` vectorised with the widest vectors of the CPU.

    :func:`siflow._vector_width.prefer_wide_vectors`: 512-bit vectors where the CPU has
    AVX-512, the same code as :func:`_run_chunk` elsewhere. Chosen by
    :func:`_wide_vectors_pay`.
    """
    prefer_wide_vectors()
    return _run_chunk(toy, draws, opt, sched, state, scratch, ctl, out, snap)


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _run_chunk(toy, draws, opt, sched, state, scratch, ctl, out, snap):  # pragma: no cover
    """Run ``ctl[1]`` steps in place; returns ``(rows done, status code)``.

    Called from Python it is compiled on its own, with LLVM's default vector width;
    :func:`_run_chunk_wide` inlines it.

    Arguments are packed by role (tuples of arrays and scalars):

    * ``toy = (kind, params, data)``: the loss (:class:`~siflow.losses.SILoss`);
    * ``draws = (batch_idx, nb, xi, sigma)``: the chunk's minibatch rows and noise;
    * ``opt = (okind, nesterov, project, hp)``: the optimizer (:func:`siflow.optim.update`);
    * ``sched = (lr_t, wd_t)``: per-step ``lr`` and ``wd`` of the chunk, or two empty
      arrays for constant ones (then ``hp`` holds them);
    * ``state = (w, s1, s2, carry)``: weights, optimizer state and the carried
      scalars (``|w|^2`` and the running sums, see below);
    * ``scratch = (u, g, wprev, xt, buf)``: work arrays (``u``, ``g``, ``wprev`` of the
      toy's dimension; ``xt``, ``buf`` from :func:`siflow.losses._step_scratch`);
    * ``ctl = (step0, n, sharp_every, rho_min, rho_max, o0)``;
    * ``out``: ``(_N_OUT, m)`` rows, step ``t`` of the chunk written to column ``o0 + t``
      (a chunk buffer with ``o0 = 0``, or the whole run's columns with ``o0 = step0``);
    * ``snap``: a copy of ``w`` at each step that is a multiple of ``sharp_every > 0``
      (in order; the sharpness is computed from it outside, keeping this kernel free
      of eigenvalue code).

    The caller owns every array for the whole call; the loop works on borrowed views of
    them (:func:`siflow._borrowed.borrowed`), so that its calls count no references.

    Stops before recording a row whose loss is not finite or whose norm leaves
    ``[rho_min, rho_max]``, or whose update overflows (or lands on 0); that row and
    later ones are not counted and add nothing to the sums.

    ``carry[_C_R2]`` holds ``|w|^2`` between chunks (0 on the first call): each step's
    ``|w_{t+1}|^2`` is summed while ``w_{t+1}`` is written and reused by the next step,
    so the chunk size does not change a bit of the result. The other entries are
    running sums over every step simulated (``Delta^2``, ``g~^2``, ``g~``, ``rho``, ``elr``);
    their value after each step is written to ``out`` so that any step range's
    exact mean follows from two kept rows, whatever the thinning. The effective LR
    ``lr_t/rho_t^2`` (:func:`siflow.theory.effective_lr`, the same operations) and its
    running sum ``carry[_C_SELR]`` are written too.

    Plain SGD (no momentum, no projection) runs fused: ``w <- (1 - lr wd) w - lr g`` and
    ``|w|^2`` in one pass, and the angle between ``w_t`` and ``w_{t+1}`` from scalars,
    exact for any ``g`` (``g_r = g.w/|w|`` its radial part)::

        Delta = atan2(lr sqrt(|g|^2 - g_r^2), (1 - lr wd) |w| - lr g_r)

    The other optimizers keep ``w_t`` and take ``2 atan2(|a - b|, |a + b|)`` of the
    unit vectors ``a, b`` (accurate for tiny angles).
    """
    kind, params, data = toy
    batch_idx, nb, xi, sigma = draws
    okind, nesterov, project, hp = opt
    lr_t, wd_t = sched
    w, s1, s2, carry = state
    u, g, wprev, xt, buf = scratch
    step0, n, sharp_every, rho_min, rho_max, o0 = ctl
    params, data, batch_idx, xi = (
        borrowed(params),
        borrowed(data),
        borrowed(batch_idx),
        borrowed(xi),
    )
    hp, lr_t, wd_t = borrowed(hp), borrowed(lr_t), borrowed(wd_t)
    w, s1, s2, carry = borrowed(w), borrowed(s1), borrowed(s2), borrowed(carry)
    u, g, wprev, xt, buf = borrowed(u), borrowed(g), borrowed(wprev), borrowed(xt), borrowed(buf)
    out, snap = borrowed(out), borrowed(snap)
    d = w.size
    scheduled = lr_t.size > 0
    lr = hp[HP_LR]
    q = 1.0 - lr * hp[HP_WD]
    fused = okind == SGD and hp[HP_MU] == 0.0 and not project
    one_pass = fused and not sigma > 0.0  # gradient -> update in one pass over w
    plain_rayleigh = kind == RAYLEIGH and params[d] == 0.0
    r2 = carry[_C_R2]
    if not r2 > 0.0:
        r2 = 0.0
        for i in range(d):
            r2 += w[i] * w[i]
    sa2 = carry[_C_SA2]
    sg2 = carry[_C_SG2]
    sg = carry[_C_SG]
    srho = carry[_C_SRHO]
    selr = carry[_C_SELR]
    n_snap = 0
    stop, code = n, _OK
    for t in range(n):
        step = step0 + t
        rho = math.sqrt(r2)
        if not (rho <= rho_max):
            stop, code = t, _DIVERGED
            break
        if rho < rho_min:
            stop, code = t, _UNDERFLOW
            break
        if scheduled:
            lr = lr_t[t]
            hp[HP_LR] = lr
            hp[HP_WD] = wd_t[t]
            q = 1.0 - lr * wd_t[t]
        if sharp_every > 0 and step % sharp_every == 0:
            for i in range(d):
                snap[n_snap, i] = w[i]
            n_snap += 1
        g2 = 0.0
        gw = 0.0
        r2n = 0.0
        if one_pass and plain_rayleigh:
            # grad L = (a_i - 2L) w_i / |w|^2 (losses._si_value_grad_step), fused with the
            # SGD step and the sums of |g|^2, g.w and |w'|^2
            sa = 0.0
            for i in range(d):
                sa += params[i] * w[i] * w[i]
            # 1/|w|^2 used twice: with a single use, LLVM's reassociation turns the loop's
            # product by it back into a division per element (vdivpd, ~1.5x slower at
            # d = 1024)
            inv2 = 1.0 / r2
            k = sa * inv2
            f = 0.5 * k
            if not math.isfinite(f):
                stop, code = t, _DIVERGED
                break
            for i in range(d):
                wi = w[i]
                gi = (params[i] - k) * wi * inv2
                g2 += gi * gi
                gw += gi * wi
                wi = q * wi - lr * gi
                w[i] = wi
                r2n += wi * wi
        else:
            f = _si_value_grad_step(kind, w, r2, rho, params, data, batch_idx[t], nb, u, g, xt, buf)
            if not math.isfinite(f):
                stop, code = t, _DIVERGED
                break
            if one_pass:
                for i in range(d):
                    wi = w[i]
                    gi = g[i]
                    g2 += gi * gi
                    gw += gi * wi
                    wi = q * wi - lr * gi
                    w[i] = wi
                    r2n += wi * wi
            else:
                if sigma > 0.0:
                    _add_tangent_noise_at(w, r2, g, xi[t], sigma)
                for i in range(d):
                    g2 += g[i] * g[i]
                    gw += g[i] * w[i]
        gns = rho * math.sqrt(g2)
        if not math.isfinite(gns):
            stop, code = t, _DIVERGED
            break
        if not one_pass:
            if fused:
                for i in range(d):
                    wi = q * w[i] - lr * g[i]
                    w[i] = wi
                    r2n += wi * wi
            else:
                for i in range(d):
                    wprev[i] = w[i]
                update(okind, nesterov, project, hp, w, g, s1, s2, step + 1)
                for i in range(d):
                    r2n += w[i] * w[i]
        if not math.isfinite(r2n):  # the step overflowed: row t has no angle
            stop, code = t, _DIVERGED
            break
        if r2n == 0.0:
            stop, code = t, _UNDERFLOW
            break
        if fused:
            gr = gw / rho
            perp2 = g2 - gr * gr
            perp = math.sqrt(perp2) if perp2 > 0.0 else 0.0
            ang = math.atan2(lr * perp, q * rho - lr * gr)
        else:
            rhon = math.sqrt(r2n)
            dm = 0.0
            dp = 0.0
            for i in range(d):
                a = wprev[i] / rho
                b = w[i] / rhon
                dm += (a - b) * (a - b)
                dp += (a + b) * (a + b)
            ang = 2.0 * math.atan2(math.sqrt(dm), math.sqrt(dp))
        elr = lr / (rho * rho)
        sa2 += ang * ang
        sg2 += gns * gns
        sg += gns
        srho += rho
        selr += elr
        out[_O_LOSS, o0 + t] = f
        out[_O_RHO, o0 + t] = rho
        out[_O_GNS, o0 + t] = gns
        out[_O_ANG, o0 + t] = ang
        out[_O_ELR, o0 + t] = elr
        out[_O_SA2, o0 + t] = sa2
        out[_O_SG2, o0 + t] = sg2
        out[_O_SG, o0 + t] = sg
        out[_O_SRHO, o0 + t] = srho
        out[_O_SELR, o0 + t] = selr
        r2 = r2n
    # the state after the last step done (a stop leaves the stopped step out)
    carry[_C_R2] = r2
    carry[_C_SA2] = sa2
    carry[_C_SG2] = sg2
    carry[_C_SG] = sg
    carry[_C_SRHO] = srho
    carry[_C_SELR] = selr
    return stop, code


#: Toy arrays up to this size are given to the kernels in cache-line-aligned copies.
_ALIGN_MAX_BYTES = 256 * 2**20
_CACHE_LINE = 64


def _cache_aligned(a: NDArray[np.float64], first: int = 0) -> NDArray[np.float64]:
    """``a`` with element ``first`` at the start of a cache line (a copy where needed).

    The loop kernels load 64-byte vectors; misaligned ones straddle two cache lines
    (measured: the logistic step 10-16% slower with the data at an offset of 8-24 bytes).
    The values and the order of every sum are unchanged. Arrays that are not
    C-contiguous float64, or larger than :data:`_ALIGN_MAX_BYTES`, are returned as they
    are.
    """
    if a.size == 0 or a.dtype != np.float64 or not a.flags.c_contiguous:
        return a
    if a.nbytes > _ALIGN_MAX_BYTES or (a.ctypes.data + 8 * first) % _CACHE_LINE == 0:
        return a
    raw = np.empty(a.size + _CACHE_LINE // 8, dtype=np.float64)
    off = (-(raw.ctypes.data + 8 * first) % _CACHE_LINE) // 8
    out = raw[off : off + a.size].reshape(a.shape)
    out[...] = a
    return out


def _sharpness_rows(
    toy: SILoss, step: NDArray[np.int64], snap: NDArray[np.float64], every: int
) -> NDArray[np.float64]:
    """Full-batch sphere sharpness at the snapshot rows (``step % every == 0``), NaN elsewhere."""
    out = np.full(step.size, np.nan)
    for k, t in enumerate(np.flatnonzero(step % every == 0)):
        out[t] = _losses.sharpness(toy.kind, snap[k], toy.params, toy.data, _losses._NO_IDX, 0)
    return out


# --------------------------------------------------------------------------- recording
#: Running sums recorded per kept row (value after the row's step, over every step
#: simulated): exact means over any step range, whatever the thinning.
SUM_COLUMNS: tuple[str, ...] = (
    "sum_angular_update_sq",
    "sum_grad_norm_sphere_sq",
    "sum_grad_norm_sphere",
    "sum_rho",
    "sum_elr",
)
_BASE = ("step", "loss", "rho", "grad_norm_sphere", "elr", "angular_update")


class _Recorder:
    """Keeps the thinned rows of a run, at most ``max_rows`` of them.

    A chunk is decided once the next one is known, so that the window around a
    norm jump reaches across chunk boundaries both ways. Rows are kept at steps
    that are multiples of ``every`` and, near norm jumps, of ``jump_every`` (1 at
    first). When more than ``max_rows`` rows are kept both strides double and the
    kept rows are thinned to the new strides (module docstring). The last step
    simulated is always kept (one row, whatever the strides): the final state, and
    the running sums over every step of the run.
    """

    def __init__(
        self,
        record_every: int,
        window: int,
        jump_tol: float,
        names: tuple[str, ...],
        max_rows: int,
        watch_jumps: bool,
    ) -> None:
        self.every = record_every
        self.jump_every = 1
        self.doublings = 0
        self.window = window if watch_jumps else 0
        self.log_tol = math.log1p(jump_tol)
        self.tail = np.zeros(0)  # log rho of the last window-1 rows before the chunk
        self.names = names
        self.max_rows = max_rows
        self.rows = 0
        self.parts: list[dict[str, NDArray]] = []
        self.pending: dict[str, NDArray] | None = None
        self.pending_jumps = np.zeros(0, dtype=np.int64)
        self.before_jumps = np.zeros(0, dtype=np.int64)
        #: set by :meth:`flush`: the last row kept is the run's last step, kept whatever
        #: the strides (also when thinning doubles them)
        self.closed = False
        #: with ``record_every == 1`` and no more steps than ``max_rows``: full-length
        #: columns the chunks are written into (row = step), with no concatenation
        self.full: dict[str, NDArray] | None = None

    def _jumps(self, cols: dict[str, NDArray], rho_next: float) -> NDArray[np.int64]:
        """Steps where the norm rose by > ``tol`` over the trailing window."""
        if not self.window or not len(cols["step"]):
            return np.zeros(0, dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(cols["rho"])
            r_next = np.append(r[1:], np.log(rho_next))
        m = self.tail.size
        ext = np.concatenate([np.full(self.window - 1, np.inf), self.tail, r])
        trailing_min = sliding_window_view(ext, self.window).min(axis=1)[m:]
        self.tail = ext[-min(self.window - 1, ext.size) :] if self.window > 1 else np.zeros(0)
        with np.errstate(invalid="ignore"):
            rise = r_next - trailing_min
        return cols["step"][rise > self.log_tol]

    def _keep(self, step: NDArray[np.int64], near: NDArray[np.bool_]) -> NDArray[np.bool_]:
        return (step % self.every == 0) | (near & (step % self.jump_every == 0))

    def _select(
        self, cols: dict[str, NDArray], jumps: NDArray[np.int64], keep_last: bool = False
    ) -> dict[str, NDArray]:
        """The rows of a chunk to keep (``keep_last``: its last row whatever the strides)."""
        step = cols["step"]
        near = np.zeros(step.size, dtype=bool)
        if self.window and jumps.size:
            lo = np.searchsorted(step, jumps - self.window, side="left")
            hi = np.searchsorted(step, jumps + self.window, side="right")
            for i, j in zip(lo, hi, strict=True):
                near[i:j] = True
        if self.every == 1:  # both strides are 1: every row is kept, no modulo per row
            part = dict(cols)
        else:
            keep = self._keep(step, near)
            if keep_last and keep.size:
                keep[-1] = True
            part = dict(cols) if keep.all() else {k: v[keep] for k, v in cols.items()}
            near = near[keep]
        part["_near"] = near
        return part

    def _append(self, part: dict[str, NDArray]) -> None:
        # guard: a Ctrl-C between two statements of add() must not duplicate rows
        if self.parts and part["step"].size and self.parts[-1]["step"].size:
            if part["step"][0] <= self.parts[-1]["step"][-1]:
                return
        self.parts.append(part)
        self.rows += int(part["step"].size)
        if self.rows > self.max_rows:
            self._thin()

    def _thin(self) -> None:
        """Double both strides until the kept rows fit in half of ``max_rows``."""
        merged = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []
        while True:
            self.every *= 2
            self.jump_every *= 2
            self.doublings += 1
            keep = self._keep(merged["step"], merged["_near"])
            if self.closed and keep.size:
                keep[-1] = True  # the run's last step (with step 0: 2 rows, <= max_rows)
            if int(keep.sum()) <= max(self.max_rows // 2, 2 if self.closed else 1):
                break
        self.full = None  # rows are no longer one per step
        merged = {k: v[keep] for k, v in merged.items()}
        self.parts = [merged]
        self.rows = int(merged["step"].size)

    def add(self, cols: dict[str, NDArray], rho_next: float) -> None:
        """Add a chunk's full-resolution columns (``rho_next`` = norm after the chunk)."""
        if not cols["step"].size:
            return  # a run stopped at a chunk's first step: the chunk before stays pending
        jumps = self._jumps(cols, rho_next)
        if self.pending is not None:
            near = np.concatenate([self.before_jumps, self.pending_jumps, jumps])
            self._append(self._select(self.pending, near))
        self.pending, self.before_jumps, self.pending_jumps = cols, self.pending_jumps, jumps

    def _decided_pending(self, final: bool = False) -> dict[str, NDArray] | None:
        """The rows kept of the last chunk so far (``final``: with the run's last step).

        A checkpoint leaves the latest step out unless it is on the strides, so that
        the rows of every checkpoint are the first rows of the next one.
        """
        if self.pending is None:
            return None
        jumps = np.concatenate([self.before_jumps, self.pending_jumps])
        return self._select(self.pending, jumps, keep_last=final)

    def flush(self) -> None:
        """Decide the last chunk (end of the run), keeping the run's last step."""
        self.closed = True
        last = self._decided_pending(final=True)
        if last is not None:
            self._append(last)
        self.pending = None

    def trajectory(self, meta: dict[str, Any], include_pending: bool = False) -> Trajectory:
        parts = list(self.parts)
        if include_pending:
            last = self._decided_pending()
            if last is not None:
                parts.append(last)
        meta = dict(meta, record_every=self.every, record_every_near_jumps=self.jump_every)
        meta["thinning_doublings"] = self.doublings
        cols: dict[str, NDArray] = {}
        count = sum(p["step"].size for p in parts)
        last = next((int(p["step"][-1]) for p in reversed(parts) if p["step"].size), -1)
        if self.full is not None and last == count - 1:
            # every row kept, in order: the columns are the first rows of the full ones
            size = self.full["step"].size
            for name in self.names:
                col = self.full[name][:count]
                cols[name] = col.copy() if count < size and not include_pending else col
            return Trajectory.from_columns(cols, meta)
        for name in self.names:
            arrs = [p[name] for p in parts]
            if len(arrs) == 1:
                cols[name] = arrs[0]
            else:
                cols[name] = np.concatenate(arrs) if arrs else np.zeros(0)
        cols["step"] = cols["step"].astype(np.int64, copy=False)
        return Trajectory.from_columns(cols, meta)


# --------------------------------------------------------------------------- budgets
#: Default hard cap on the rows a run keeps in memory (about 400 MB of columns).
DEFAULT_MAX_ROWS = 1 << 22
#: Bytes of the per-step chunk buffers (noise draws, snapshots) aimed at.
_CHUNK_BYTES = 64 << 20
#: Rough cost model of one step, measured on a 2-core machine (seconds): a fixed
#: part plus a part per element of work (``dim`` times the data rows a step reads).
_SEC_PER_STEP = 5e-7
_SEC_PER_ELEMENT = 5e-9
_SEC_PER_EIGEN_FLOP = 5e-10
#: Building a data toy (logistic: the minimizer by Newton steps on the dense ``dim x
#: dim`` Hessian), seconds per ``dim^3``: measured 4e-10 on 2 idle cores and 6.5e-10
#: on one (dim 1000 to 2000), rounded up.
_SEC_PER_SETUP_FLOP = 7e-10
#: Doubles of a data toy's setup per ``dim^2`` (the Hessian, its factorization and
#: their temporaries): peak RSS measured 5.4 dim^2 doubles at dim 2000, 4.8 at dim 8000.
_SETUP_DOUBLES_PER_DIM2 = 6


def _toy_size(loss: str | SILoss, dim: int | None, options: Mapping[str, Any]) -> tuple[int, int]:
    """``(dim, data rows)`` of a toy, without building it."""
    if isinstance(loss, SILoss):
        return loss.dim, loss.n_samples
    ctor = LOSSES.get(str(loss))
    if ctor is None:
        return (int(dim or 2), 0)
    if "spectrum" in options:
        return len(np.atleast_1d(np.asarray(options["spectrum"], dtype=object))), 0
    default = inspect.signature(ctor).parameters.get("dim")
    d = int(dim) if dim is not None else int(default.default if default else 2)
    if str(loss) == "logistic":
        n = inspect.signature(ctor).parameters["n_samples"].default
        return d, int(options.get("n_samples", n))
    return d, 0


def _human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.3g} days"


def _row_bytes(sharpness: bool, scheduled: int) -> int:
    return 8 * (len(_BASE) + len(SUM_COLUMNS) + scheduled + int(sharpness)) + 1


def estimate(
    loss: str | SILoss = DEFAULT_LOSS,
    *,
    steps: int,
    dim: int | None = None,
    record_every: int = 1,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch: int | None = None,
    noise: float = 0.0,
    sharpness: bool = False,
    loss_options: Mapping[str, Any] | None = None,
    scheduled: int = 0,
) -> dict[str, Any]:
    """Memory and time a run will need, estimated before anything is allocated.

    Memory counts the toy (logistic: its data and the dense Hessian used to find
    its minimizer, ``6 dim^2`` doubles), the optimizer state (a few vectors of
    ``dim``), the chunk buffers, the kept rows (at most ``max_rows``, twice while
    the last trajectory is assembled) and, with ``sharpness``, the dense
    ``dim x dim`` Hessian of each sharpness evaluation. Time is a rough model
    measured on a 2-core machine: ``steps (5e-7 + 5e-9 dim m)`` seconds, ``m`` the
    data rows read per step (1 for data-free toys), plus ``7e-10 dim^3`` to build a
    data toy (its minimizer; conservative: measured 4e-10 to 6.5e-10) and
    ``5e-10 dim^3`` per sharpness row.

    Returns
    -------
    dict
        ``bytes``, ``seconds`` (``setup_seconds`` of them to build the toy,
        ``sharpness_seconds`` for the sharpness rows), ``rows`` (kept rows before any
        doubling of the stride), ``dim``, ``available_bytes`` (``None`` when unknown).
    """
    dim = None if dim is None else check_whole("dim", dim, 1)
    d, n_data = _toy_size(loss, dim, dict(loss_options or {}))
    per_step_data = n_data if not batch or batch >= n_data else batch
    toy_bytes = 8 * (5 * n_data * d + _SETUP_DOUBLES_PER_DIM2 * d * d if n_data else 4 * d)
    state_bytes = 8 * 8 * d
    sharp_bytes = 8 * 3 * d * d if sharpness else 0
    rows = -(-steps // record_every)
    kept = min(rows, max_rows)
    rows_bytes = 2 * kept * _row_bytes(sharpness, scheduled)
    per_step_buf = 8 * (_N_OUT + 8 + per_step_data) + (8 * d if noise > 0 else 0)
    chunk = _chunk_size(d, noise > 0, sharpness)
    chunk_bytes = chunk * per_step_buf + (chunk * 8 * d if sharpness else 0)
    total = toy_bytes + state_bytes + sharp_bytes + rows_bytes + chunk_bytes
    seconds = steps * (_SEC_PER_STEP + _SEC_PER_ELEMENT * d * max(per_step_data, 1))
    sharp_seconds = min(rows, max_rows) * _SEC_PER_EIGEN_FLOP * float(d) ** 3 if sharpness else 0.0
    setup_seconds = _SEC_PER_SETUP_FLOP * float(d) ** 3 if n_data else 0.0
    seconds += sharp_seconds + setup_seconds
    return {
        "bytes": int(total),
        "seconds": float(seconds),
        "setup_seconds": float(setup_seconds),
        "sharpness_seconds": float(sharp_seconds),
        "rows": int(rows),
        "dim": d,
        "available_bytes": available_memory(),
        "sharpness": bool(sharpness),
    }


#: Dimension, and logistic samples per step, from which the simulation loop runs with
#: the widest vectors (:func:`_wide_vectors_pay`).
_WIDE_DIM = 32
_WIDE_SAMPLES = 128


def _wide_vectors_pay(toy: SILoss, nb: int) -> bool:
    """Whether :func:`_run_chunk_wide` is the faster loop for ``toy`` with batch ``nb``.

    With 512-bit vectors a loop over fewer than about 32 entries runs mostly in its
    scalar remainder. Measured on an Intel Xeon with AVX-512 (``simulate`` CPU time per
    step, both loops alternated, ``analysis/BENCHMARKS.md``): Rayleigh d=16 and 24 0.8x,
    d=32 1.3x; logistic d=10 n=100 0.7x, d=16 n=32 to 64 0.8-1.0x, n=128 1.05x, n=256
    1.2x, d=64 n=32 1.15x, d=128 and 1024 1.1-1.2x; minibatches of 8 and 32 rows 0.9x.
    Where the CPU has no wider vectors than LLVM's default, both loops are the same code.
    """
    samples = (nb or toy.n_samples) if toy.kind == LOGISTIC else 0
    return toy.dim >= _WIDE_DIM or samples >= _WIDE_SAMPLES


def _chunk_size(dim: int, noise: bool, sharpness: bool) -> int:
    """Steps per kernel call: :data:`CHUNK`, fewer when per-step buffers hold ``w``."""
    if not (noise or sharpness):
        return CHUNK
    fit = _CHUNK_BYTES // (8 * max(dim, 1))
    return int(min(CHUNK, max(2, 1 << max(int(fit).bit_length() - 1, 1))))


def check_budget(est: dict[str, Any], steps: int, record_every: int, max_rows: int) -> None:
    """Refuse a run that cannot fit: ``ValueError`` naming the parameter to change.

    ``est`` is the result of :func:`estimate`. Refused: more regular rows
    (``ceil(steps/record_every)``) than ``max_rows``, or more memory than the system
    has available.
    """
    max_rows = check_whole("max_rows", max_rows, 2)
    if est["rows"] > max_rows:
        need = -(-steps // max_rows)
        raise ValueError(
            f"record_every={record_every} keeps {est['rows']:.4g} rows over {steps} steps, more "
            f"than max_rows={max_rows} "
            f"(~{format_bytes(est['rows'] * _row_bytes(False, 0))}); pass record_every={need} "
            f"or more, or max_points=, or a larger max_rows="
        )
    avail = est["available_bytes"]
    if avail is not None and est["bytes"] > avail:
        raise ValueError(
            f"this run needs about {format_bytes(est['bytes'])} of memory (dim={est['dim']}) "
            f"but {format_bytes(avail)} is available; pass a smaller dim="
            + (" or sharpness=False" if est.get("sharpness") else "")
        )


# --------------------------------------------------------------------------- schedules
def _split_schedule(name: str, value: Any) -> tuple[float | None, Schedule | None]:
    """``(constant value, None)`` or ``(None, Schedule)`` from a number, spec or Schedule."""
    if isinstance(value, (str, Schedule)):
        sched = parse_schedule(value)
        if sched.is_constant:
            return float(sched(0)), None
        return None, sched
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"{name} must be a number, a schedule spec string or a siflow.schedules.Schedule; "
            f"got {type(value).__name__}"
        )
    return finite_number(name, value), None


def _schedule_range(
    lr_s: Schedule | None, wd_s: Schedule | None, lr: float, wd: float, steps: int
) -> tuple[float, float, float]:
    """``(max lr, max wd, max lr*wd)`` over the run; ``ValueError`` on a bad value."""
    top_lr, top_wd, top_x = 0.0, 0.0, 0.0
    block = 1 << 20
    for start in range(0, steps, block):
        t = np.arange(start, min(start + block, steps))
        lr_t = lr_s(t) if lr_s is not None else np.full(t.size, lr)
        wd_t = wd_s(t) if wd_s is not None else np.full(t.size, wd)
        for name, v in (("lr", lr_t), ("wd", wd_t)):
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError(
                    f"the {name} schedule gives a negative or non-finite value; use "
                    f"parameters that keep it finite and >= 0"
                )
        top_lr = max(top_lr, float(lr_t.max()))
        top_wd = max(top_wd, float(wd_t.max()))
        top_x = max(top_x, float((lr_t * wd_t).max()))
    if not top_lr > 0:
        raise ValueError("the lr schedule is 0 at every step; give it a positive peak")
    if not top_x < 1:
        raise ValueError(
            f"lr*wd reaches {top_x:g} under the schedule; lower the peak lr or wd so that "
            f"it stays below 1 at every step"
        )
    return top_lr, top_wd, top_x


class _Progress:
    """tqdm bar when installed, else a plain stderr line; nothing when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.bar = None
        self.enabled = enabled
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", unit_scale=True, desc="simulate")
            except ImportError:
                self.bar = None

    def update(self, done: int, n: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last > 0.5:
            self.last = time.monotonic()
            sys.stderr.write(f"\rsimulate: {done}/{self.total} steps ({100 * done // self.total}%)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------- front door
def simulate(
    loss: str | SILoss = DEFAULT_LOSS,
    optimizer: str = "sgd",
    *,
    lr: float | str | Schedule,
    wd: float | str | Schedule,
    steps: int,
    dim: int | None = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    batch: int | None = None,
    noise: float = 0.0,
    seed: int = 0,
    record_every: int | None = None,
    max_points: int | None = None,
    max_rows: int | None = None,
    event_window: int = 100,
    jump_tol: float = 0.02,
    w0: ArrayLike | None = None,
    rho0: float | None = None,
    sharpness: bool = False,
    loss_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 5.0,
) -> Trajectory:
    """Simulate ``steps`` optimizer steps on a toy SI loss; return the :class:`Trajectory`.

    Parameters
    ----------
    loss : str or SILoss
        A name of :data:`LOSSES` (``"rayleigh"``, ``"logistic"``, ``"spiral"``,
        ``"flat"``) or a built :class:`~siflow.losses.SILoss`.
    optimizer : str
        A name of :data:`OPTIMIZERS` (``"sgd"``, ``"nesterov"``, ``"adamw"``,
        ``"fixed_norm"``, ``"fixed_elr"``); see :mod:`siflow.optim` for the exact
        update rules.
    lr, wd : float, str or Schedule
        Learning rate (effective LR for ``fixed_elr``) and weight decay,
        ``lr > 0``, ``wd >= 0``, ``lr*wd < 1``; or a schedule: a spec string such as
        ``"cosine:peak=0.5,warmup=500,min=0.005,steps=20000"`` or a
        :class:`siflow.schedules.Schedule`, giving the value at each step (then
        ``lr_t wd_t < 1`` at every step). Scheduled runs record the per-step value in
        an ``lr`` (``wd``) column; ``meta["lr"]`` (``meta["wd"]``) holds the largest
        value and ``meta["lr_schedule"]`` (``meta["wd_schedule"]``) the spec.
    steps : int
        Number of steps (>= 1).
    dim : int, optional
        Dimension of the toy (its default when omitted).
    momentum, nesterov, betas, eps
        Optimizer coefficients (:func:`siflow.optim.make_optimizer`).
    batch : int, optional
        Minibatch size for data toys (``logistic``): each step uses ``batch`` rows
        drawn uniformly with replacement. ``None`` (or ``batch >= n_samples``): full
        batch.
    noise : float
        ``sigma`` of the isotropic tangent noise ``P eps``,
        ``eps ~ N(0, sigma^2 I/|w|^2)`` added to the gradient (docs/theory.md §6).
    seed : int
        Seed of the run's randomness: starting direction, minibatches, noise. The
        toy itself is a fixed problem (``logistic`` draws its data from its own
        ``seed`` option, default 0, passed through ``loss_options``).
    record_every, max_points, max_rows, event_window, jump_tol
        Thinning of the record (module docstring). ``record_every`` keeps every
        k-th step (rows near norm jumps are kept too, and the last step simulated,
        whatever the strides); by default every step while
        ``steps <= max_rows/2``, else the smallest stride that fits in half the cap
        (``ceil(steps / (max_rows // 2))``). ``max_points`` raises
        ``record_every`` to ``ceil(steps/max_points)``. ``max_rows`` (default
        :data:`DEFAULT_MAX_ROWS`) is a hard cap on the rows kept: a run asking for
        more regular rows than that is refused up front, and when rows near norm
        jumps push the count over it both strides double (see the module
        docstring). The summary statistics do not depend on any of these: every
        row carries running sums over every step (:data:`SUM_COLUMNS`).
    w0 : array_like, optional
        Starting weights; default a random unit direction times ``rho0``.
    rho0 : float, optional
        Starting norm (rescales ``w0`` when both are given). Default 1 (or
        ``|w0|``).
    sharpness : bool
        Also record ``sharpness_sphere`` (dense eigenvalue problem: ``O(dim^3)``
        per recorded row; NaN on extra rows kept around norm jumps, and on the
        last step's row when it is off the stride).
    loss_options : mapping, optional
        Keyword arguments of the toy's constructor (e.g. ``spectrum``,
        ``temperature``, ``n_samples``, ``grad_norm``).
    progress : bool, optional
        Progress display on stderr (tqdm when installed, else a plain line);
        default: when stderr is a terminal and ``steps * dim >= 2e7``.
    checkpoint : path, optional
        ``.npz``/``.csv`` file the trajectory so far is written to (atomically)
        every ``checkpoint_every`` seconds (or 20 times the last write's duration,
        whichever is longer; ``0``: after every chunk), and at the end. The
        intermediate writes carry ``status="interrupted"`` (what a reader sees if
        the process is killed); the final write carries the run's status. Ctrl-C or
        SIGTERM during the final write is held until the file is complete, then acted
        on (``KeyboardInterrupt``; :func:`siflow._fileio.signals_deferred`): a
        simulated run is not lost to it.

    Returns
    -------
    Trajectory
        Columns ``loss, rho, grad_norm_sphere, elr, angular_update`` (and
        ``sharpness_sphere``), the running sums :data:`SUM_COLUMNS` and, for
        schedules, ``lr``/``wd``; ``meta`` has ``lr, wd, momentum, optimizer, loss,
        dim, seed, steps, steps_done, status, sharpness_min, record_every,
        record_every_near_jumps, thinning_doublings, max_rows,
        source="siflow.simulate"`` and the other options. ``status`` is ``"ok"``,
        ``"diverged"`` (non-finite loss, ``|w| > 1e150`` or an update that
        overflows), ``"underflow"`` (``|w| < 1e-150``) or ``"interrupted"``
        (Ctrl-C); the rows before the stop are kept.

    Raises
    ------
    ValueError
        A bad argument, or a run whose rows or memory cannot fit (:func:`estimate`);
        the message names the parameter to change.

    Examples
    --------
    >>> traj = simulate("spiral", lr=0.1, wd=0.1, steps=2000)
    >>> round(float(traj.rho[-1]), 6)  # (lr G^2/(wd (2 - lr wd)))**0.25 with G = 1
    0.841951
    """
    steps = check_steps("steps", check_whole("steps", steps, 1), "pass fewer steps")
    seed = check_whole("seed", seed, 0)
    dim = None if dim is None else check_whole("dim", dim, 1)
    record_every, max_rows = _strides(steps, record_every, max_points, max_rows)
    event_window = check_whole("event_window", event_window, 0)
    sigma = nonnegative_number("noise", noise)
    lr_c, lr_s = _split_schedule("lr", lr)
    wd_c, wd_s = _split_schedule("wd", wd)
    if lr_s is not None or wd_s is not None:
        lr_c, wd_c, _ = _schedule_range(lr_s, wd_s, lr_c or 0.0, wd_c or 0.0, steps)
    assert lr_c is not None and wd_c is not None
    opt: Optimizer = make_optimizer(
        optimizer, lr=lr_c, wd=wd_c, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps
    )
    if opt.lr_is_elr and wd_s is not None:
        raise ValueError(f"{optimizer!r} applies no weight decay; drop the wd schedule")
    tol = positive_number("jump_tol", jump_tol)
    if loss_options is not None and not isinstance(loss_options, Mapping):
        raise ValueError(
            f"loss_options must be a mapping, got {type(loss_options).__name__}; pass a dict"
        )
    loss_options = check_options(loss, loss_options, dim)  # before any estimate of its size
    scheduled = int(lr_s is not None) + int(wd_s is not None)
    est = estimate(
        loss,
        steps=steps,
        dim=dim,
        record_every=record_every,
        max_rows=max_rows,
        batch=batch,
        noise=sigma,
        sharpness=sharpness,
        loss_options=loss_options,
        scheduled=scheduled,
    )
    check_budget(est, steps, record_every, max_rows)
    toy = make_loss(loss, dim=dim, **dict(loss_options or {}))

    nb = _batch_rows(toy, batch)

    seeds = np.random.SeedSequence(seed).spawn(3)
    rng_init, rng_batch, rng_noise = (np.random.default_rng(s) for s in seeds)
    w = _starting_point(toy, w0, rho0, rng_init)
    radius = float(np.linalg.norm(w))
    hp = opt.hp(radius)
    lr_step = float(hp[_optim.HP_LR])
    lr_scale = lr_step / opt.lr  # radius**2 for fixed_elr, else 1

    meta = _run_meta(toy, opt, lr_s, wd_s, radius, lr_step)
    meta.update(
        seed=seed,
        steps=steps,
        noise=sigma,
        batch=batch,
        record_every_requested=record_every,
        max_rows=max_rows,
        event_window=event_window,
        jump_tol=tol,
    )

    names = _BASE + SUM_COLUMNS + (("lr",) if lr_s is not None else ())
    names += ("wd",) if wd_s is not None else ()
    names += ("sharpness_sphere",) if sharpness else ()
    chunk = min(_chunk_size(toy.dim, sigma > 0, sharpness), steps)
    snap_rows = min(chunk, chunk // record_every + 2) if sharpness else 0
    snap = np.zeros((snap_rows, toy.dim if sharpness else 0))
    s1 = np.zeros(toy.dim)
    s2 = np.zeros(toy.dim)
    no_idx = np.zeros((chunk, 0), dtype=np.int64)
    no_xi = np.zeros((chunk, 0))
    no_sched = np.zeros(0)
    carry = np.zeros(_N_CARRY)  # |w|^2 and the running sums, carried across chunks
    buf = np.empty((_N_OUT, chunk))
    watch = record_every > 1 or steps > max_rows
    rec = _Recorder(record_every, event_window, tol, names, max_rows, watch)
    full2d = None  # every row kept: the kernel writes straight into the run's columns
    if record_every == 1 and not sharpness and steps <= max_rows:
        # every float column in one allocation (the kernel's rows first): one mapping
        # to fault in instead of one per column (measured: 10^4-2x10^4 steps of a small
        # toy spent about 1 ms per call faulting in separately allocated columns)
        others = [k for k in names if k not in dict(_KERNEL_ROWS) and k != "step"]
        block = np.empty((_N_OUT + len(others), steps))
        full2d = block[:_N_OUT]
        rec.full = {name: full2d[row] for name, row in _KERNEL_ROWS}
        rec.full.update({k: block[_N_OUT + i] for i, k in enumerate(others)})
        rec.full["step"] = np.arange(steps, dtype=np.int64)
    if progress is None:
        progress = sys.stderr.isatty() and steps * max(toy.dim, 1) >= 20_000_000
    bar = _Progress(steps, bool(progress))
    status = "ok"
    done = 0
    last_save = time.monotonic()
    save_cost = 0.0
    toy_args = (toy.kind, _cache_aligned(toy.params, first=1), _cache_aligned(toy.data))
    opt_args = (opt.kind, opt.nesterov, opt.project, hp)
    w, s1, s2 = _cache_aligned(w), _cache_aligned(s1), _cache_aligned(s2)
    state = (w, s1, s2, carry)
    scratch = tuple(_cache_aligned(np.zeros(toy.dim)) for _ in range(3))
    xt, step_buf = _step_scratch(toy.kind, toy_args[1], toy_args[2])
    scratch += (xt, _cache_aligned(step_buf))

    kernel = _run_chunk_wide if _wide_vectors_pay(toy, nb) else _run_chunk

    def _meta() -> dict[str, Any]:
        return dict(meta, status=status, steps_done=done)

    try:
        while done < steps:
            n = min(chunk, steps - done)
            t = np.arange(done, done + n, dtype=np.int64)
            idx = rng_batch.integers(0, toy.n_samples, size=(n, nb)) if nb else no_idx
            xi = rng_noise.standard_normal((n, toy.dim)) if sigma > 0 else no_xi
            lr_t = lr_s(t) * lr_scale if lr_s is not None else None
            wd_t = wd_s(t) if wd_s is not None else None
            sched = (no_sched, no_sched)
            if lr_t is not None or wd_t is not None:
                sched = (
                    lr_t if lr_t is not None else np.full(n, lr_step),
                    wd_t if wd_t is not None else np.full(n, float(hp[_optim.HP_WD])),
                )
            sharp_every = rec.every if sharpness else 0
            into, o0 = (full2d, done) if full2d is not None else (buf, 0)
            ctl = (done, n, sharp_every, RHO_MIN, RHO_MAX, o0)
            draws = (idx, nb, xi, sigma)
            n_ok, code = kernel(toy_args, draws, opt_args, sched, state, scratch, ctl, into, snap)
            cols = _chunk_columns(buf, t, n_ok, rec, done)
            _fill_schedule(cols, n_ok, lr_t, wd_t)
            if sharpness:
                cols["sharpness_sphere"] = _sharpness_rows(toy, cols["step"], snap, sharp_every)
            rho_next = float(np.sqrt(w @ w)) if code == _OK else math.inf
            rec.add(cols, rho_next)
            done += n_ok
            bar.update(done, n_ok)
            if code != _OK:
                status = _STATUS[int(code)]
                break
            wait = max(checkpoint_every, 20 * save_cost) if checkpoint_every > 0 else 0.0
            if checkpoint is not None and time.monotonic() - last_save >= wait:
                # a file left by a killed process must not claim a finished run
                partial = dict(_meta(), status="interrupted")
                t0 = time.monotonic()
                rec.trajectory(partial, include_pending=True).save(checkpoint)
                last_save = time.monotonic()
                save_cost = last_save - t0
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    # a Ctrl-C (or SIGTERM) during the final write is acted on once the file is complete:
    # it must not discard a run that has been simulated
    with signals_deferred():
        rec.flush()
        traj = rec.trajectory(_meta())
        if checkpoint is not None:
            traj.save(checkpoint)
    return traj


def _strides(
    steps: int, record_every: int | None, max_points: int | None, max_rows: int | None
) -> tuple[int, int]:
    """``(record_every, max_rows)`` from the recording arguments (module docstring)."""
    max_rows = DEFAULT_MAX_ROWS if max_rows is None else check_whole("max_rows", max_rows, 2)
    if record_every is None:  # every step while it fits in half the cap, else thinned
        record_every = max(1, -(-steps // (max_rows // 2)))
    record_every = check_steps("record_every", record_every)
    if max_points is not None:
        max_points = check_whole("max_points", max_points, 2)
        record_every = max(record_every, math.ceil(steps / max_points))
    return record_every, max_rows


def _batch_rows(toy: SILoss, batch: int | None) -> int:
    """Rows per minibatch for the kernel (0: full batch)."""
    if batch is None:
        return 0
    nb = check_whole("batch", batch, 1)
    if toy.n_samples == 0:
        raise ValueError(
            f"batch applies to data toys (logistic), not {toy.name!r}; "
            f"drop batch= or use noise= for gradient noise"
        )
    return 0 if nb >= toy.n_samples else nb


def _run_meta(
    toy: SILoss,
    opt: Optimizer,
    lr_s: Schedule | None,
    wd_s: Schedule | None,
    radius: float,
    lr_step: float,
) -> dict[str, Any]:
    """The trajectory's metadata that depends on the toy and the optimizer."""
    meta: dict[str, Any] = {
        "source": "siflow.simulate",
        "loss": toy.name,
        "lr": lr_step,
        "wd": opt.wd,
        "dim": toy.dim,
        "rho0": radius,
        "sharpness_min": toy.sharpness_min,
        "loss_options": {k: v for k, v in toy.options.items()},
        **opt.meta(),
    }
    if lr_s is not None:
        meta["lr_schedule"] = lr_s.spec
    if wd_s is not None:
        meta["wd_schedule"] = wd_s.spec
    if opt.lr_is_elr:
        meta["elr"] = opt.lr
    if opt.project:
        meta["fixed_norm"] = radius
    return meta


def _fill_schedule(
    cols: dict[str, NDArray],
    n_ok: int,
    lr_t: NDArray[np.float64] | None,
    wd_t: NDArray[np.float64] | None,
) -> None:
    """Fill the scheduled ``lr``/``wd`` columns of a chunk (the kernel writes the rest)."""
    if lr_t is not None:
        cols["lr"][:] = lr_t[:n_ok]
    if wd_t is not None:
        cols["wd"][:] = wd_t[:n_ok]


def _chunk_columns(
    buf: NDArray[np.float64], t: NDArray[np.int64], n_ok: int, rec: _Recorder, done: int
) -> dict[str, NDArray]:
    """The chunk's columns: views into the full-length ones, or fresh arrays."""
    if rec.full is not None:  # the kernel wrote straight into the trajectory's columns
        return {k: v[done : done + n_ok] for k, v in rec.full.items()}
    cols = {k: np.empty(n_ok) for k in rec.names if k != "step"}
    cols["step"] = t[:n_ok].copy()
    for name, row in _KERNEL_ROWS:
        cols[name][:] = buf[row, :n_ok]
    return cols


def _scaled_norm(w: NDArray[np.float64]) -> float:
    """``|w|`` without overflow or underflow of the squares (``inf`` only when ``|w|``
    itself is beyond the float range)."""
    with np.errstate(over="ignore", under="ignore"):
        norm = float(np.linalg.norm(w))
    if 0.0 < norm < math.inf:
        return norm  # the plain value where the squares stay in range (same bits as before)
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    if not (0.0 < scale < math.inf):
        return scale
    with np.errstate(over="ignore"):
        return scale * float(np.linalg.norm(w / scale))


def _starting_point(
    toy: SILoss, w0: ArrayLike | None, rho0: float | None, rng: np.random.Generator
) -> NDArray[np.float64]:
    """The validated starting weights (contiguous float64, norm inside the float range)."""
    if w0 is None:
        w = toy.default_w0(rng) * (1.0 if rho0 is None else positive_number("rho0", rho0))
    else:
        w = check_finite("w0", w0).astype(np.float64, copy=True).ravel()
        if w.shape != (toy.dim,):
            raise ValueError(
                f"w0 must have {toy.dim} entries (dim of {toy.name!r}), got {w.size}; "
                f"pass an array of that length or set dim"
            )
        norm = _scaled_norm(w)
        if not norm > 0:
            raise ValueError(
                "w0 must be nonzero (an SI loss is undefined at the origin); pass another w0"
            )
        if rho0 is not None:
            w *= positive_number("rho0", rho0) / norm
    w = np.ascontiguousarray(w)
    radius = _scaled_norm(w)
    if not (RHO_MIN <= radius <= RHO_MAX):
        if rho0 is not None:
            raise ValueError(
                f"rho0={rho0:g} is outside [{RHO_MIN:g}, {RHO_MAX:g}]; pass a rho0= inside "
                f"that range"
            )
        raise ValueError(
            f"|w0| = {radius:g} is outside [{RHO_MIN:g}, {RHO_MAX:g}]; pass a w0 inside "
            f"that range, or rho0= to rescale it"
        )
    return w


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    from siflow._simulate_cli import main as _main

    raise SystemExit(_main())
