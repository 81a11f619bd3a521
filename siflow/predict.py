"""Period prediction for the periodic behavior of SI training with weight decay.

:func:`predict_period` is the public function. It predicts, for given ``lr``, ``wd`` and momentum,
the median period in steps, the effective LR at destabilization and the norm jump
``rho_after / rho_before``, by one of two procedures.

**Landscape** (``sharpness`` + ``family``, or ``loss``): iterate the reduced
(norm, deviation) model of :func:`siflow.maps.reduced_map` with the given sphere
sharpness at the minimum and loss shape (or the profile of a toy loss along its
sharpest great circle, :func:`landscape_from_loss`), detect its destabilizations with
:func:`siflow.periods.find_events` and take medians over the stationary part.

**Calibrated** (``calibration=traj``): one Trajectory of the same model at
``(lr0, wd0)`` fixes the two landscape constants of the cycle model below; the scale
symmetry (docs/theory.md §0: only ``lr*wd`` matters) and the decay law give the period at
other ``(lr, wd)``. At ``lr*wd = lr0*wd0`` it returns the measured period.

Cycle model (derived here; checked against simulations in ``analysis/period_vs_theory.py``)
---------------------------------------------------------------------------------------
Write the effective LR relative to the stability threshold,
``o = elr / elr_thr`` with ``elr_thr = 2 (1 + mu - lr wd)/S``
(:func:`siflow.theory.stability_threshold_elr`: the linearised direction map of heavy
ball, ``alpha r^2 - (1 + mu - lr wd - elr S) r + mu/alpha = 0`` with the norm decay
factor ``alpha`` of :func:`siflow.theory.decay_factor`, loses stability at ``r = -1``;
``mu = 0`` gives docs/theory.md §2's ``2(1 - lr wd)/S``). Between bursts the
gradient is negligible, so ``ln o`` grows by ``delta = -2 ln(alpha)`` per step
(decay law, exact for the map at zero gradient).

1. *Escape (overshoot).* Past the threshold the deviation grows by ``|r(s)|`` per step,
   ``s = ln o``, from a floor (noise, or floating-point resolution) to the burst, a
   factor ``e^Lambda``. Summing ``ln|r|`` over steps,
   ``Phi(ln o*) = delta * Lambda`` with ``Phi(y) = int_0^y ln|r(s)| ds``. For SGD
   ``|r| = 2e^s - 1`` and ``Phi(y) ~ y^2``: ``ln o* ~ sqrt(2 lr wd Lambda)`` (a delayed
   bifurcation). ``Lambda`` depends on the noise floor, only logarithmically.
2. *Burst.* The burst is fast (a few steps); empirically it leaves the effective LR at
   ``a = C / o*`` of the threshold, with a landscape constant ``C`` (the burst
   throws the ELR as far below the threshold as the overshoot was above it, times
   ``C``). Hence the squared-norm jump ``q^2 = o*/a = o*^2/C``.
3. *Period.* ``T = ln(o*/a)/delta = ln(o*^2/C)/delta`` steps (burst duration
   neglected).

The cycle-model calibration measures ``o0`` (median ``elr_before/elr_thr``) and ``C``
(median of ``o * elr_after/elr_thr`` over the events) on the calibration run, sets
``Lambda = Phi(ln o0)/delta0`` and applies 1-3 at the new ``(lr, wd)``. It needs the
sphere sharpness at the minimum (``sharpness=``, or ``meta["sharpness_min"]``).
Step 1 follows from the linearised map; step 2 is an empirical law: it holds for
cross-entropy-like (subcritical) bursts and fails for a quadratic loss with momentum,
whose burst grows with the overshoot (``C`` changes tenfold over a decade of ``lr*wd``).
With a landscape, the default calibration is therefore the reduced-map ratio
(``calibration_model="reduced"``).

Accuracy and limits (``analysis/period_vs_theory.py``): on the Rayleigh and logistic
toys with a small noise floor, momentum 0 and 0.9, ``lr*wd`` over a decade, the
landscape prediction from the loss profile is within 18% (median 2%), the
reduced-map calibration within 10% except one point (-14%), the ELR at destabilization
within 3%. The 1-D reduction underestimates the norm jump when the burst spreads over
several directions (logistic data whose second Hessian eigenvalue is 0.90 of the first:
-18% at ``lr*wd = 1e-3``; simulations restricted to the top-k Hessian directions show
that the missing part needs all of them). The analytic two-point logistic family
(``sharpness`` + ``family`` only) is a crude stand-in for a real cross-entropy profile
(errors up to 58%); prefer the loss profile when the loss is known. Without noise the
escape starts from the floating-point floor of the direction, which depends on the
implementation; prefer runs with a noise floor.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq

from siflow import maps, theory
from siflow._validate import (
    check_positive_int,
    check_steps,
    check_whole,
    finite_number,
    lr_wd_numbers,
    momentum_number,
    nonnegative_number,
    positive_number,
)
from siflow.trajectory import Trajectory

__all__ = [
    "PeriodPrediction",
    "predict_period",
    "threshold_elr",
    "escape_integral",
    "landscape_from_loss",
    "cycle_constants",
    "transfer_period",
]

#: Floor of the deviation (radians) used without noise: the resolution of a float64
#: direction, which is what stops the decay of the deviation in a noiseless simulation.
FLOAT_FLOOR = 2.0**-52


@dataclass(frozen=True)
class PeriodPrediction:
    """Predicted periodic behavior at one ``(lr, wd, momentum)``.

    Attributes
    ----------
    period : float
        Median period in steps.
    elr_destabilization : float
        Effective LR ``lr/rho^2`` just before a destabilization.
    norm_jump : float
        ``rho_after / rho_before`` of a destabilization.
    threshold_elr : float
        ``2 (1 + momentum - lr wd)/S`` (NaN when ``S`` is unknown).
    overshoot : float
        ``elr_destabilization / threshold_elr``.
    method : str
        ``"landscape"`` or ``"calibrated"``.
    details : dict
        Procedure-specific numbers (events counted, constants, calibration values).
    """

    lr: float
    wd: float
    momentum: float
    period: float
    elr_destabilization: float
    norm_jump: float
    threshold_elr: float
    overshoot: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        out = asdict(self)
        for k, v in list(out.items()):
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


# ------------------------------------------------------------------ cycle model
def _alpha(lr: float, wd: float, mu: float) -> float:
    """Per-step norm decay factor at zero gradient (larger root for heavy ball)."""
    return float(theory.decay_factor(lr, wd, mu))


def threshold_elr(lr: float, wd: float, sharpness: float, momentum: float = 0.0) -> float:
    """Stability threshold of the effective LR, ``2 (1 + mu - lr wd)/S``
    (:func:`siflow.theory.stability_threshold_elr`, as a float)."""
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    s_f = positive_number("sharpness", sharpness)
    return float(theory.stability_threshold_elr(lr_f, wd_f, s_f, momentum_number(momentum)))


def _growth(s: float, lr: float, wd: float, mu: float) -> float:
    """``ln |r|`` of the dominant root of the linearised direction map at ``o = e^s``."""
    alpha = _alpha(lr, wd, mu)
    c = 1.0 + mu - lr * wd
    b = c * (1.0 - 2.0 * math.exp(s))
    disc = b * b - 4.0 * mu
    if disc >= 0.0:
        r = (abs(b) + math.sqrt(disc)) / (2.0 * alpha)
    else:
        r = math.sqrt(mu) / alpha
    return math.log(r)


def escape_integral(y: float, lr: float, wd: float, momentum: float = 0.0) -> float:
    """``Phi(y) = int_0^y ln|r(s)| ds``: log-growth of the deviation while ``ln o`` runs
    from 0 to ``y`` (divide by ``delta = -2 ln(alpha)`` for the per-step sum).

    SGD: ``ln|r| = ln(2 e^s - 1)``, ``Phi(y) = y^2 + O(y^3)``.
    """
    y = finite_number("y", y)
    lr, wd = lr_wd_numbers(lr, wd)
    momentum = momentum_number(momentum)
    if y <= 0.0:
        return 0.0
    val, _ = quad(_growth, 0.0, y, args=(lr, wd, momentum), limit=200)
    return float(val)


def _overshoot_from_lambda(lam: float, lr: float, wd: float, mu: float) -> float:
    delta = -2.0 * math.log(_alpha(lr, wd, mu))
    target = delta * lam
    hi = 1.0
    while escape_integral(hi, lr, wd, mu) < target:
        hi *= 2.0
        if hi > 64:
            return math.exp(hi)
    return math.exp(brentq(lambda y: escape_integral(y, lr, wd, mu) - target, 0.0, hi))


def cycle_constants(
    traj: Trajectory,
    *,
    sharpness: float | None = None,
    events: Any = None,
    skip: int = 2,
) -> dict[str, float]:
    """Measure the cycle-model constants ``o0``, ``C``, ``Lambda`` on one trajectory.

    Returns a dict with ``lr, wd, momentum, period, overshoot (o0), burst_constant (C),
    escape_log (Lambda), norm_jump, elr_destabilization, threshold_elr, n_events``.
    ``skip`` events at the start (the transient) are dropped. The run's lr, wd and
    momentum must be constant (a logged column that varies is a ValueError).
    """
    from siflow.periods import find_events

    if not isinstance(traj, Trajectory):
        raise ValueError(f"calibration must be a Trajectory, got {type(traj).__name__}")
    lr, wd = traj.lr, traj.wd
    if lr is None or wd is None:
        raise ValueError("the calibration trajectory needs meta['lr'] and meta['wd']")
    _check_constant_hyperparameters(traj)
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    mu = momentum_number(traj.momentum)
    S = sharpness if sharpness is not None else traj.meta.get("sharpness_min")
    if S is None:
        raise ValueError(
            "the calibrated prediction needs the sphere sharpness at the minimum: pass "
            "sharpness= or use a trajectory with meta['sharpness_min']"
        )
    S = positive_number("sharpness", S)
    skip = check_whole("skip", skip, 0)
    ev = events if events is not None else find_events(traj)
    if len(ev) < skip + 3:
        raise ValueError(
            f"the calibration trajectory has {len(ev)} destabilizations; need at least "
            f"{skip + 3} (run it longer or at another lr*wd)"
        )
    sl = slice(skip, None)
    thr = threshold_elr(lr_f, wd_f, S, mu)
    o = ev.elr_before[sl] / thr
    a = ev.elr_after[sl] / thr
    o0 = float(np.median(o))
    burst = float(np.median(o * a))
    delta0 = -2.0 * math.log(_alpha(lr_f, wd_f, mu))
    lam = escape_integral(math.log(o0), lr_f, wd_f, mu) / delta0 if o0 > 1 else 0.0
    return {
        "lr": lr_f,
        "wd": wd_f,
        "momentum": mu,
        "period": float(np.median(np.diff(ev.steps[sl]))),
        "overshoot": o0,
        "burst_constant": burst,
        "escape_log": lam,
        "norm_jump": float(np.median(ev.rho_after[sl] / ev.rho_before[sl])),
        "elr_destabilization": float(np.median(ev.elr_before[sl])),
        "threshold_elr": thr,
        "sharpness": S,
        "n_events": int(len(ev) - skip),
    }


# ------------------------------------------------------------------ landscape
def landscape_from_loss(loss: Any, *, n: int = 4001) -> dict[str, Any]:
    """Reduced-model landscape of a toy loss (a :class:`siflow.losses.SILoss`).

    Takes the toy's unit minimizer ``u``, the top eigenvector ``v`` of its Riemannian
    Hessian there and tabulates the loss along the great circle through ``u`` and ``v``
    (:func:`siflow.maps.circle_profile`). Returns ``{"family": "table", "shape": ...,
    "sharpness": S, "dim": d}`` for :func:`predict_period`.
    """
    u = getattr(loss, "minimizer", None)
    if u is None:
        raise ValueError("the loss has no known minimizer; pass sharpness= and family= instead")
    u = np.asarray(u, dtype=np.float64)
    hess = np.asarray(loss.riemannian_hessian(u), dtype=np.float64)
    vals, vecs = np.linalg.eigh(0.5 * (hess + hess.T))
    v = vecs[:, -1]
    shape = maps.circle_profile(loss.value_and_grad, loss.hvp, u, v, n=n)
    return {"family": "table", "shape": shape, "sharpness": float(vals[-1]), "dim": int(u.size)}


def _landscape_predict(
    lr: float,
    wd: float,
    mu: float,
    *,
    sharpness: float | None,
    family: str,
    shape: dict[str, Any] | None,
    noise: float,
    dim: int,
    floor: float | None,
    seed: int,
    min_events: int,
    max_steps: int,
) -> PeriodPrediction:
    from siflow.periods import find_events

    if floor is None:
        floor = FLOAT_FLOOR if noise == 0.0 else 0.0
    if sharpness is None:
        sharpness = float(maps.profile(0.0, None, family, shape)[2])
    S = float(sharpness)
    delta = -2.0 * math.log(_alpha(lr, wd, mu))
    # first guess of the period: overshoot ~ sqrt(2 lr wd * 35), C ~ 0.3
    guess = (2.0 * math.sqrt(delta * 35.0) + math.log(1.0 / 0.3)) / delta
    skip = 3
    steps = int(min(max_steps, max(2000, (min_events + skip + 2) * guess * 1.5)))
    thr = threshold_elr(lr, wd, S, mu)
    while True:
        # scale symmetry (docs/theory.md §0): the model depends on lr*wd only, so it is run at
        # lr = 1 with wd = lr*wd (rounded to 15 digits so that equal products that differ
        # in the last bit give identical runs); ELR, periods and jumps are unchanged.
        tr = maps.reduced_map(
            1.0,
            float(f"{lr * wd:.15g}"),
            steps,
            sharpness=S if family != "table" else None,
            family=family,
            shape=shape,
            momentum=mu,
            noise=noise,
            dim=dim,
            floor=floor,
            seed=seed,
        )
        ev = find_events(tr)
        if len(ev) >= min_events + skip or steps >= max_steps or tr.status != "ok":
            break
        steps = min(max_steps, steps * 3)
    if len(ev) < skip + 3:
        return PeriodPrediction(
            lr=lr,
            wd=wd,
            momentum=mu,
            period=math.nan,
            elr_destabilization=math.nan,
            norm_jump=math.nan,
            threshold_elr=thr,
            overshoot=math.nan,
            method="landscape",
            details={
                "n_events": len(ev),
                "steps": steps,
                "note": "the reduced model shows no periodic behavior here "
                "(equilibrium at the edge of stability, or too few periods in max_steps)",
            },
        )
    sl = slice(skip, None)
    elr_b = float(np.median(ev.elr_before[sl]))
    return PeriodPrediction(
        lr=lr,
        wd=wd,
        momentum=mu,
        period=float(np.median(np.diff(ev.steps[sl]))),
        elr_destabilization=elr_b,
        norm_jump=float(np.median(ev.rho_after[sl] / ev.rho_before[sl])),
        threshold_elr=thr,
        overshoot=elr_b / thr,
        method="landscape",
        details={
            "n_events": int(len(ev) - skip),
            "steps": steps,
            "family": family,
            "sharpness": S,
            "noise": noise,
            "dim": dim,
            "floor": floor,
        },
    )


def _calibrated_predict(
    lr: float, wd: float, mu: float, consts: dict[str, float]
) -> PeriodPrediction:
    S = consts["sharpness"]
    thr = threshold_elr(lr, wd, S, mu)
    same = math.isclose(lr * wd, consts["lr"] * consts["wd"], rel_tol=1e-12) and math.isclose(
        mu, consts["momentum"], abs_tol=0.0
    )
    if same:
        # scale symmetry: identical directions, ELR and periods (docs/theory.md §0)
        return PeriodPrediction(
            lr=lr,
            wd=wd,
            momentum=mu,
            period=consts["period"],
            elr_destabilization=consts["elr_destabilization"],
            norm_jump=consts["norm_jump"],
            threshold_elr=thr,
            overshoot=consts["elr_destabilization"] / thr,
            method="calibrated",
            details=dict(consts, rule="scale symmetry"),
        )
    o = _overshoot_from_lambda(consts["escape_log"], lr, wd, mu)
    C = consts["burst_constant"]
    delta = -2.0 * math.log(_alpha(lr, wd, mu))
    period = math.log(o * o / C) / delta
    return PeriodPrediction(
        lr=lr,
        wd=wd,
        momentum=mu,
        period=period,
        elr_destabilization=o * thr,
        norm_jump=o / math.sqrt(C),
        threshold_elr=thr,
        overshoot=o,
        method="calibrated",
        details=dict(consts, rule="cycle model"),
    )


def predict_period(
    lr: float,
    wd: float,
    momentum: float | None = None,
    *,
    sharpness: float | None = None,
    family: str | None = None,
    shape: dict[str, Any] | None = None,
    loss: Any = None,
    noise: float = 0.0,
    dim: int | None = None,
    floor: float | None = None,
    calibration: Trajectory | None = None,
    calibration_model: str = "auto",
    seed: int = 0,
    min_events: int = 30,
    max_steps: int = 3_000_000,
) -> PeriodPrediction:
    """Predict the period of the periodic behavior at ``(lr, wd, momentum)``.

    Parameters
    ----------
    lr, wd : float
        Learning rate and weight decay (``lr*wd < 1``).
    momentum : float, optional
        Heavy-ball momentum (PyTorch convention) in ``[0, 1)``; default 0, or the
        calibration run's momentum (a calibration must share the momentum: the burst
        constant differs by orders of magnitude between SGD and heavy ball).
    sharpness : float, optional
        Sphere sharpness ``S`` at the minimum (landscape procedure; for the calibrated
        one it overrides ``meta["sharpness_min"]`` of the calibration run).
    family : {"quadratic", "logistic", "table"}, optional
        Loss shape along the sharpest great circle (:func:`siflow.maps.profile`);
        default ``"quadratic"``.
    shape : dict, optional
        Shape parameters of ``family``.
    loss : SILoss, optional
        A toy loss; its landscape (:func:`landscape_from_loss`) replaces
        ``sharpness``/``family``/``shape`` and gives ``dim``.
    noise : float
        Isotropic gradient-noise level of the run (per coordinate at unit norm).
    dim : int, optional
        Number of weights the noise acts on (default 2, or the loss's).
    floor : float, optional
        Deviation floor of the reduced model; default the float64 direction resolution
        ``2**-52`` without noise, none with noise.
    calibration : Trajectory, optional
        A run of the same model (same loss, noise and momentum) at another ``(lr, wd)``:
        switches to the calibrated procedure (module docstring).
    calibration_model : {"auto", "reduced", "cycle"}
        With ``calibration``: ``"reduced"`` rescales the landscape prediction by the
        calibration run, ``T = T0 * T_model(lr, wd) / T_model(lr0, wd0)`` (and likewise
        the ELR at destabilization and the jump), so the reduced model supplies only the
        dependence on ``lr*wd``; needs a landscape (``loss=`` or ``family=``).
        ``"cycle"`` uses the cycle model of the module docstring and needs only ``S``.
        ``"auto"``: ``"reduced"`` when a landscape is given, else ``"cycle"``.
    seed : int
        Seed of the reduced model's noise.
    min_events, max_steps : int
        Destabilizations to average over and the longest reduced-model run.

    Returns
    -------
    PeriodPrediction
    """
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    sigma = nonnegative_number("noise", noise)
    if calibration_model not in ("auto", "reduced", "cycle"):
        raise ValueError(
            f"calibration_model must be 'auto', 'reduced' or 'cycle', got {calibration_model!r}"
        )
    has_landscape = loss is not None or family is not None
    consts = None
    if calibration is not None:
        if not isinstance(calibration, Trajectory):
            raise ValueError(f"calibration must be a Trajectory, got {type(calibration).__name__}")
        mu_cal = momentum_number(calibration.momentum)
        mu = mu_cal if momentum is None else momentum_number(momentum)
        if mu != mu_cal:
            raise ValueError(
                f"momentum={mu} differs from the calibration run's {mu_cal}; "
                f"calibrate with a run at the same momentum"
            )
        consts = cycle_constants(calibration, sharpness=sharpness)
        use = calibration_model
        if use == "auto":
            use = "reduced" if has_landscape else "cycle"
        if use == "cycle":
            return _calibrated_predict(lr_f, wd_f, mu, consts)
        if not has_landscape:
            raise ValueError(
                "calibration_model='reduced' needs a landscape: pass loss= or family= "
                "(and sharpness=)"
            )
    else:
        mu = 0.0 if momentum is None else momentum_number(momentum)
    family = "quadratic" if family is None else family
    if loss is not None:
        land = landscape_from_loss(loss)
        family, shape = land["family"], land["shape"]
        sharpness = land["sharpness"] if sharpness is None else sharpness
        dim = land["dim"] if dim is None else dim
    elif sharpness is None and family != "table":
        raise ValueError(
            "the landscape prediction needs sharpness= (sphere sharpness at the minimum), "
            "loss= (a toy loss), or calibration= (a trajectory)"
        )
    if sharpness is not None:
        sharpness = positive_number("sharpness", sharpness)
    kw = dict(
        sharpness=sharpness,
        family=family,
        shape=shape,
        noise=sigma,
        dim=2 if dim is None else check_positive_int("dim", dim),
        floor=floor,
        seed=check_whole("seed", seed, 0),
        min_events=check_steps("min_events", min_events),
        max_steps=check_steps("max_steps", max_steps),
    )
    land = _landscape_cached(lr_f, wd_f, mu, **kw)
    if sigma > NOISE_VALIDATED:
        land = _outside_validated_noise(land, sigma)
    if consts is None:
        return land
    land0 = _landscape_cached(consts["lr"], consts["wd"], mu, **kw)
    if not (math.isfinite(land.period) and math.isfinite(land0.period)):
        raise ValueError(
            "the reduced model shows no periodic behavior at the calibration or the target "
            "lr*wd; use calibration_model='cycle'"
        )
    S = consts["sharpness"]
    thr = threshold_elr(lr_f, wd_f, S, mu)
    same = math.isclose(lr_f * wd_f, consts["lr"] * consts["wd"], rel_tol=1e-12)
    ratio_t = 1.0 if same else land.period / land0.period
    ratio_o = 1.0 if same else land.overshoot / land0.overshoot
    ratio_q = 1.0 if same else land.norm_jump / land0.norm_jump
    o = consts["elr_destabilization"] / consts["threshold_elr"] * ratio_o
    return PeriodPrediction(
        lr=lr_f,
        wd=wd_f,
        momentum=mu,
        period=consts["period"] * ratio_t,
        elr_destabilization=o * thr,
        norm_jump=consts["norm_jump"] * ratio_q,
        threshold_elr=thr,
        overshoot=o,
        method="calibrated",
        details=dict(
            consts,
            rule="scale symmetry" if same else "reduced model ratio",
            model_period=land.period,
            model_period_calibration=land0.period,
        ),
    )


#: Largest noise level at which the landscape prediction was checked against simulation
#: (``analysis/period_vs_theory.py``: within 18% at ``noise = 1e-6``).
NOISE_VALIDATED = 1e-6


def _outside_validated_noise(pred: PeriodPrediction, noise: float) -> PeriodPrediction:
    """``pred`` with a note (and a warning) that ``noise`` is above :data:`NOISE_VALIDATED`.

    On the default logistic toy at lr 0.1, wd 2e-3 the simulated period is 676 steps at
    noise 1e-5 and 293 at 1e-4 against about 2000 predicted: the noise sets off small
    bursts early (norm jumps of 4-14%), which the one-dimensional reduced map does not
    have; the ELR at destabilization is still predicted within 1%.
    """
    note = (
        f"noise={noise:g} is above {NOISE_VALIDATED:g}, the largest level checked against "
        f"simulation: with more noise the toys burst earlier and by less than the reduced "
        f"map (periods 3-6x shorter on the default logistic toy at 1e-5 and 1e-4); the ELR "
        f"at destabilization still holds"
    )
    warnings.warn(f"siflow.predict: {note}", stacklevel=3)
    return replace(pred, details={**pred.details, "note": note})


_CACHE: dict[Any, PeriodPrediction] = {}


def _shape_key(shape: dict[str, Any] | None) -> Any:
    if not shape:
        return None
    return tuple(
        (k, np.asarray(v).tobytes() if np.ndim(v) else v) for k, v in sorted(shape.items())
    )


def _landscape_cached(lr: float, wd: float, mu: float, **kw: Any) -> PeriodPrediction:
    # keyed on lr*wd: the reduced model depends on the product only (scale symmetry)
    key = (f"{lr * wd:.15g}", mu, _shape_key(kw.get("shape"))) + tuple(
        (k, v) for k, v in sorted(kw.items()) if k != "shape"
    )
    if key not in _CACHE:
        if len(_CACHE) > 256:
            _CACHE.clear()
        _CACHE[key] = _landscape_predict(lr, wd, mu, **kw)
    return replace(_CACHE[key], lr=lr, wd=wd)


# ------------------------------------------------------------ run-to-run transfer
def _cycle_drop(events: Any, skip: int) -> float:
    """Median ``ln(rho_after/rho_before)`` of the jumps after the first ``skip``."""
    jumps = np.log(events.rho_after[skip:] / events.rho_before[skip:])
    jumps = jumps[np.isfinite(jumps)]
    return float(np.median(jumps)) if jumps.size else math.nan


def _check_constant_hyperparameters(calibration: Trajectory) -> None:
    """A ValueError when the calibration log's lr, wd or momentum column varies: its period
    in steps and decay speed per step then mix cycles run at different rates, and the
    transfer's ``T0``, ``r0`` and ``lr0 wd0`` have no one value."""
    for name in ("lr", "wd", "momentum"):
        col = calibration.logged(name)
        if col is None:
            continue
        vals = np.asarray(col, dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size and np.ptp(vals) > 0:
            raise ValueError(
                f"the calibration run's {name} column varies ({vals.min():.4g} to "
                f"{vals.max():.4g}): the transfer needs a run at constant lr, wd and momentum; "
                f"calibrate on one (siflow.overlay's predict_lr/predict_wd carry a scheduled "
                f"run's free decay per cycle to another lr and wd)"
            )


def transfer_period(
    calibration: Trajectory,
    lr: float,
    wd: float,
    momentum: float | None = None,
    *,
    events: Any = None,
    skip: int = 0,
    push: str = "linear",
) -> PeriodPrediction:
    """Period at ``(lr, wd, momentum)`` from one run of the same network.

    The calibration run gives its median period ``T0``, its decay speed between
    events ``r0`` (:func:`siflow.periods.measure_decay_rate`) and hence the residual
    gradient push ``p0 = 1 - r0/delta0`` against the free decay
    ``delta0 = -ln decay_factor(lr0, wd0, mu0)`` (``docs/theory.md``, section
    "Destabilization events"). In the stationary cycle the norm falls between events
    by as much as it jumps, ``T r = D``; ``D = T0 r0`` is kept (scale symmetry makes it
    a function of ``lr*wd`` only; over a decade it changes little on the labelled
    runs), so

    ``T = (T0 r0 + Delta) / (delta (1 - p))``,

    with ``delta = -ln decay_factor(lr, wd, mu)`` (:func:`siflow.theory.decay_rate`),
    the push ``p = p0 (lr wd)/(lr0 wd0)`` (``push="linear"``: the gradient between
    bursts grows with ``lr wd``) or ``p = p0`` (``push="constant"``), and, when the
    momentum differs from the calibration's, ``Delta = ln(thr(mu)/thr(mu0))/2``:
    the extra fall of ``ln rho`` needed to reach the heavy-ball stability threshold
    ``2(1 + mu - lr wd)/S`` instead of ``2(1 + mu0 - lr0 wd0)/S``
    (:func:`siflow.theory.stability_threshold_elr`; ``S`` cancels).

    A calibration run whose ``meta["optimizer"]`` is ``"nesterov"`` uses Nesterov's
    decay law and threshold (:func:`siflow.theory.decay_rate`,
    :func:`siflow.theory.stability_threshold_elr` with ``nesterov=True``) on both sides.

    The step column of ``calibration`` must count optimizer steps (a run timed in
    epochs, or whose measured decay is faster than the free decay, is refused), its lr,
    wd and momentum must be constant (a logged column that varies is refused), and a
    push that reaches the free decay (``p >= 1``) is refused: no period follows from the
    decay law there.

    Accuracy: across momentum the transfer is poor. The norm jump grows with the
    momentum more than the threshold shift accounts for: on the digits networks of the
    labelled set the fall of ``ln rho`` per cycle at ``mu = 0.9`` is 1.8-2.5 times the
    plain one at the same decay rate, the decay between events follows the law within
    12%, and the median error is 43% (README, "Destabilizations on a labelled set");
    on the default logistic toy, plain SGD at lr 0.1, wd 1e-3 transferred to
    ``mu = 0.9`` gives 730 steps where the simulation cycles in 2884. Calibrate on a
    run at the target momentum where one exists.

    Parameters
    ----------
    calibration : Trajectory
        A periodic run of the same network and data (``meta`` lr, wd, momentum), its
        step column in optimizer steps.
    lr, wd : float
        Target hyperparameters.
    momentum : float, optional
        Target heavy-ball momentum (default: the calibration's).
    events : Events, optional
        The calibration's events (default: :func:`siflow.periods.find_events`).
    skip : int
        Events at the start of the calibration run left out (transient).
    push : {"linear", "constant"}
        How the residual push scales with ``lr*wd``.
    """
    from siflow.periods import _nesterov, find_events, measure_decay_rate

    if not isinstance(calibration, Trajectory):
        raise ValueError(f"calibration must be a Trajectory, got {type(calibration).__name__}")
    if push not in ("linear", "constant"):
        raise ValueError(f"push must be 'linear' or 'constant', got {push!r}")
    lr0, wd0 = calibration.lr, calibration.wd
    if lr0 is None or wd0 is None:
        raise ValueError("the calibration trajectory needs meta['lr'] and meta['wd']")
    _check_constant_hyperparameters(calibration)
    lr0_f, wd0_f = lr_wd_numbers(lr0, wd0)
    lr_f, wd_f = lr_wd_numbers(lr, wd)
    mu0 = momentum_number(calibration.momentum)
    mu = mu0 if momentum is None else momentum_number(momentum)
    skip = check_whole("skip", skip, 0)
    ev = events if events is not None else find_events(calibration)
    if len(ev) < skip + 3:
        raise ValueError(
            f"the calibration run has {len(ev)} destabilizations; need at least {skip + 3}; "
            f"run it longer{', or lower skip=' if skip else ''}"
        )
    sub = ev.periods[skip:]
    t0 = float(np.median(sub))
    r0 = float(measure_decay_rate(calibration, ev))
    nesterov = _nesterov(calibration)
    delta0 = float(theory.decay_rate(lr0_f, wd0_f, mu0, nesterov=nesterov))
    delta = float(theory.decay_rate(lr_f, wd_f, mu, nesterov=nesterov))
    p0 = 1.0 - r0 / delta0
    if calibration.meta.get("time_unit") == "epoch" or not p0 > -0.25:
        raise ValueError(
            f"the calibration run's norm falls by {r0:.4g} per unit of its step column "
            f"between events, faster than the free decay {delta0:.4g} per optimizer step: "
            f"its step column does not count optimizer steps (epochs?); give the run its "
            f"optimizer steps (e.g. multiply epochs by steps_per_epoch)"
        )
    p = p0 * (lr_f * wd_f) / (lr0_f * wd0_f) if push == "linear" else p0
    if not p < 1.0:
        raise ValueError(
            f"the residual gradient push of the calibration run ({p0:.3g} of the free decay "
            f"at lr*wd = {lr0_f * wd0_f:.3g}) scaled to lr*wd = {lr_f * wd_f:.3g} reaches "
            f"{p:.3g}: the gradient would hold the norm up between bursts and the decay law "
            f"gives no period; transfer to a smaller lr*wd, use push='constant', or check "
            f"that the calibration's step column counts optimizer steps"
        )
    shift = 0.0
    if mu != mu0:
        thr = float(theory.stability_threshold_elr(lr_f, wd_f, 1.0, mu, nesterov=nesterov))
        thr0 = float(theory.stability_threshold_elr(lr0_f, wd0_f, 1.0, mu0, nesterov=nesterov))
        shift = 0.5 * math.log(thr / thr0)
    drop = t0 * r0
    period = (drop + shift) / (delta * (1.0 - p))
    return PeriodPrediction(
        lr=lr_f,
        wd=wd_f,
        momentum=mu,
        period=period,
        elr_destabilization=math.nan,
        norm_jump=math.exp(_cycle_drop(ev, skip) + shift),
        threshold_elr=math.nan,
        overshoot=math.nan,
        method="transfer",
        details={
            "calibration_period": t0,
            "calibration_decay_speed": r0,
            "calibration_free_decay": delta0,
            "push_calibration": p0,
            "push": p,
            "cycle_drop": drop,
            "threshold_shift": shift,
            "free_decay": delta,
        },
    )
