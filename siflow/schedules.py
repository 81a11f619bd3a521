"""Per-step hyperparameter schedules: one spec string, one :class:`Schedule`, values per step.

A schedule gives the value of a hyperparameter (the learning rate, or the weight
decay) at each optimizer step ``t = 0, 1, ...``. Specs are strings, the same in
Python and on every command line::

    constant                                  # the base value at every step
    constant:value=0.1
    cosine:peak=0.5,warmup=500,min=0.005,steps=20000
    linear:peak=0.5,warmup=500,min=0,steps=20000
    step:peak=0.1,gamma=0.1,milestones=5000/8000
    exp:peak=0.1,gamma=0.9999

``peak`` (or ``value`` for ``constant``) defaults to the base value passed to
:func:`parse_schedule` (the run's ``lr``), so ``cosine:warmup=500,steps=20000``
with ``lr=0.5`` peaks at 0.5. The decay shapes are those of PyTorch's schedulers, stepped
once per optimizer step:

* ``cosine``: linear warmup ``peak (t + 1) / warmup`` for ``t < warmup`` (no step
  at zero learning rate; it reaches ``peak`` at ``t = warmup - 1``), then
  ``min + (peak - min) (1 + cos(pi s / S)) / 2`` with ``s = t - warmup`` and
  ``S = steps - warmup`` (``CosineAnnealingLR``), held at ``min`` after ``steps``.
* ``linear``: the same warmup, then a straight line from ``peak`` to ``min`` at
  ``steps``, held after.
* ``step``: ``peak * gamma**k`` with ``k`` the number of ``milestones`` (``/``-
  separated steps) at or below ``t`` (``MultiStepLR``).
* ``exp``: ``peak * gamma**t`` (``ExponentialLR``).

The schedule only describes the values; the formulas that use them (the norm
recursion under ``lr(t), wd(t)``, ``kappa_t = sum eta_s lam_s``, the time
constants) live in :mod:`siflow.theory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Schedule", "parse_schedule", "KINDS", "explicit_level", "first_zero_step", "why_zero"]

#: Schedule kinds and the keys each one takes.
KINDS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "cosine": ("peak", "warmup", "min", "steps"),
    "linear": ("peak", "warmup", "min", "steps"),
    "step": ("peak", "gamma", "milestones"),
    "exp": ("peak", "gamma"),
}

_EXAMPLE = "e.g. 'cosine:peak=0.5,warmup=500,min=0.005,steps=20000'"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` plus its numeric parameters.

    Call it with step indices to get the values: ``sched(np.arange(n))``, or use
    :meth:`values`. ``spec`` is the canonical spec string (all parameters
    explicit), which round-trips through :func:`parse_schedule`.
    """

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    milestones: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        """Canonical spec string with every parameter written out."""
        items = [
            f"{k}={_number_text(self.params[k])}" for k in KINDS[self.kind] if k in self.params
        ]
        if self.kind == "step":
            items.append("milestones=" + "/".join(str(m) for m in self.milestones))
        return f"{self.kind}:" + ",".join(items)

    @property
    def is_constant(self) -> bool:
        """True when the value is the same at every step."""
        if self.kind == "constant":
            return True
        if self.kind == "exp":
            return self.params["gamma"] == 1.0
        if self.kind == "step":
            return not self.milestones or self.params["gamma"] == 1.0
        p = self.params
        return p["warmup"] <= 1 and p["min"] == p["peak"]

    def values(self, steps: int) -> NDArray[np.float64]:
        """The value at each step ``0 .. steps-1``."""
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a whole number >= 0; got {steps!r}")
        return self(np.arange(int(steps)))

    def __call__(self, t: ArrayLike) -> NDArray[np.float64]:
        t = np.asarray(t, dtype=np.float64)
        p = self.params
        if self.kind == "constant":
            return np.full(t.shape, p["value"])
        if self.kind == "exp":
            return p["peak"] * np.power(p["gamma"], t)
        if self.kind == "step":
            k = np.searchsorted(np.asarray(self.milestones, dtype=np.float64), t, side="right")
            return p["peak"] * np.power(p["gamma"], k)
        return _warmup_then_decay(self.kind, t, p)


def _number_text(value: float) -> str:
    """``500`` for whole numbers, the shortest round-tripping form otherwise."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _warmup_then_decay(kind: str, t: NDArray[np.float64], p: dict[str, float]) -> NDArray:
    peak, warmup, low, steps = p["peak"], p["warmup"], p["min"], p["steps"]
    out = np.empty(t.shape)
    warm = t < warmup
    out[warm] = peak * (t[warm] + 1.0) / warmup
    span = max(steps - warmup, 1.0)
    s = np.clip(t[~warm] - warmup, 0.0, span) / span
    if kind == "cosine":
        out[~warm] = low + (peak - low) * 0.5 * (1.0 + np.cos(math.pi * s))
    else:
        out[~warm] = peak + (low - peak) * s
    return out


#: An example value of each schedule key, for messages.
_EXAMPLE = {"milestones": "5000/8000", "steps": "20000", "warmup": "500", "gamma": "0.1"}


def _number(kind: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        example = _EXAMPLE.get(key, "0.1")
        raise ValueError(
            f"schedule {kind!r}: {key}={text!r} is not a number; write it as {key}={example}"
        ) from None
    if not math.isfinite(value):
        if text.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
            raise ValueError(f"schedule {kind!r}: {key} must be finite; got {text!r}")
        raise ValueError(
            f"schedule {kind!r}: {key}={text.strip()} is beyond the largest double (1.8e308); "
            f"pass a value between -1.8e308 and 1.8e308"
        )
    if value == 0.0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        raise ValueError(
            f"schedule {kind!r}: {key}={text.strip()} is below the smallest positive double "
            f"(5e-324) and would be read as 0; pass a value of at least 5e-324"
        )
    return value


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(
            f"unknown schedule kind {kind!r}: use one of {', '.join(KINDS)} ({_EXAMPLE})"
        )
    raw: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise ValueError(f"schedule {kind!r}: write {item!r} as key=value ({_EXAMPLE})")
        if key not in KINDS[kind]:
            raise ValueError(
                f"schedule {kind!r} takes {', '.join(KINDS[kind])}; got {key!r} ({_EXAMPLE})"
            )
        if key in raw:
            raise ValueError(f"schedule {kind!r}: {key} is given twice; keep one {key}=...")
        raw[key] = value.strip()
    return kind, raw


def _check_params(kind: str, p: dict[str, float], milestones: tuple[int, ...]) -> None:
    level = p.get("value", p.get("peak"))
    if level is None or level < 0:
        name = "value" if kind == "constant" else "peak"
        raise ValueError(
            f"schedule {kind!r} needs {name} >= 0: write {name}=... or pass the base value"
        )
    if kind in ("cosine", "linear"):
        if p["min"] < 0 or p["warmup"] < 0:
            raise ValueError(f"schedule {kind!r}: min and warmup must be >= 0")
        if p["min"] > level:
            raise ValueError(
                f"schedule {kind!r}: min={_number_text(p['min'])} is above the peak "
                f"{_number_text(level)}, so it would rise, not decay; write a min below the peak"
            )
        if p["steps"] <= p["warmup"] or p["steps"] != int(p["steps"]):
            raise ValueError(
                f"schedule {kind!r}: steps must be a whole number above warmup "
                f"(got steps={p['steps']!r}, warmup={p['warmup']!r})"
            )
    if kind in ("step", "exp") and p["gamma"] <= 0:
        raise ValueError(f"schedule {kind!r}: gamma must be > 0; got {p['gamma']!r}")
    if list(milestones) != sorted(set(milestones)) or any(m < 0 for m in milestones):
        raise ValueError(
            f"schedule {kind!r}: milestones must be increasing steps >= 0 written as 1000/2000"
        )


def parse_schedule(spec: str | Schedule, base: float | None = None) -> Schedule:
    """Parse a schedule spec (see the module docstring) into a :class:`Schedule`.

    Parameters
    ----------
    spec : str or Schedule
        ``"kind:key=value,..."``; a :class:`Schedule` is returned unchanged.
    base : float, optional
        Default for ``peak`` (``value`` for ``constant``): the run's base ``lr`` or
        ``wd``.

    Raises
    ------
    ValueError
        Unknown kind or key, a value that is not a number, a missing peak, or
        inconsistent steps; the message names the fix.
    """
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"schedule must be a spec string ({_EXAMPLE}); got {spec!r}")
    kind, raw = _split_spec(spec)
    milestones: tuple[int, ...] = ()
    if "milestones" in raw:
        parts = [m for m in raw.pop("milestones").split("/") if m.strip()]
        values = [_number(kind, "milestones", m) for m in parts]
        if any(v != int(v) for v in values):
            raise ValueError(f"schedule {kind!r}: milestones must be whole steps like 1000/2000")
        milestones = tuple(int(v) for v in values)
    p = {k: _number(kind, k, v) for k, v in raw.items()}
    level = "value" if kind == "constant" else "peak"
    if level not in p and base is not None:
        p[level] = float(base)
    if kind in ("cosine", "linear"):
        p.setdefault("warmup", 0.0)
        p.setdefault("min", 0.0)
        if "steps" not in p:
            raise ValueError(f"schedule {kind!r} needs steps=<last step of the decay>")
    if kind in ("step", "exp") and "gamma" not in p:
        raise ValueError(f"schedule {kind!r} needs gamma=<factor>")
    _check_params(kind, p, milestones)
    return Schedule(kind, p, milestones)


def explicit_level(spec: str | Schedule) -> tuple[str, str] | None:
    """``(key, value)`` of a ``peak=`` (``value=`` for ``constant``) written in ``spec``.

    None when the spec leaves it to the base value (a :class:`Schedule` always has
    it: ``("peak", ...)``). Used where the base value must win: a sweep's cells each
    peak at their own ``lr``.
    """
    if isinstance(spec, Schedule):
        key = "value" if spec.kind == "constant" else "peak"
        return key, _number_text(spec.params[key])
    kind, raw = _split_spec(spec)
    key = "value" if kind == "constant" else "peak"
    return (key, raw[key]) if key in raw else None


def first_zero_step(sched: Schedule, steps: int) -> int | None:
    """The first step of ``0 .. steps-1`` where ``sched`` is 0 (or below), else None.

    Every kind is monotone after its warmup, which rises from ``peak/warmup``, so the
    smallest value over the steps is at the first or the last one, and once the value
    reaches 0 it stays there: the first zero is found by bisection (``O(log steps)``
    evaluations, whatever the run's length).
    """
    if steps < 1:
        return None
    first, last = (float(v) for v in sched(np.array([0, steps - 1])))
    if not first > 0:
        return 0
    if last > 0:
        return None
    lo, hi = 0, steps - 1  # value > 0 at lo, <= 0 at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if float(sched(np.array([mid]))[0]) > 0:
            lo = mid
        else:
            hi = mid
    return hi


def why_zero(sched: Schedule, step: int, steps: int) -> tuple[str, str]:
    """Why ``sched`` is 0 at ``step`` (:func:`first_zero_step`) and how to change its spec.

    Returns ``(reason, fix)``, both in the spec's own keys, e.g. ``("it holds min=0
    from step 199 on", "write steps=200 or more, or a min above 0, into it")`` for
    ``cosine:steps=199`` in a 200-step run.
    """
    p = sched.params
    level = p.get("value", p.get("peak", 0.0))
    if step == 0 and not level > 0:
        key = "value" if sched.kind == "constant" else "peak"
        return f"its {key} is {_number_text(level)}", f"write a positive {key}= into it"
    if sched.kind in ("cosine", "linear") and p["min"] == 0:
        if step >= p["steps"]:
            return (
                f"it holds min=0 from step {int(p['steps'])} on",
                f"write steps={steps} or more, or a min above 0, into it",
            )
        return (
            f"it decays to min=0, which its {sched.kind} form reaches in double precision "
            f"by step {step}",
            "write a min above 0 into it",
        )
    if sched.kind in ("exp", "step"):
        return (
            "peak * gamma**k falls below the smallest double",
            "write a gamma closer to 1, or a larger peak, into it",
        )
    return "its value falls below the smallest double", "write a larger peak or min into it"
