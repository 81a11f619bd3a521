"""Reader for the ideal-gas runs of Sadrtdinov et al. (2025), ``isadrtdinov/neural-nets-ideal-gas``.

Their ``pretrain`` writes, in the run directory, ``trace.pt`` (``torch.save`` of
``{'model': state_dict, 'trace': dict of lists}``) and ``config.json`` (the run's
settings: ``lr``, ``wd``, ``num_iters``, ``running_log_freq``, ``log_iters``,
``batch_size``, ...). In the trace, ``running_radius`` (the norm of the SI
parameters), ``running_loss`` and ``stoch_grad_norm`` (stochastic gradient norm
of the SI parameters) are appended every ``running_log_freq`` iterations: entry
``i`` is at iteration ``(i + 1) * running_log_freq``. Evaluation metrics
(``train_loss``, ``test_loss``, ``train_acc``, ``full_grad_norm``, ...) are
appended at the ``log_iters`` up to ``num_iters``; ``weight``/``stoch_grad``
(flattened vectors at checkpoints) are not columns. Their loop rewrites
``trace.pt`` at every ``ckpt_iters`` iteration with the lists so far: such a
file (a run still going, or one stopped early) holds the metrics of the first
log iterations only, and is read as far as it goes.

``opt_mode`` in ``config.json`` says what ``lr`` means. ``fixed_lr``: the SGD
learning rate. ``fixed_elr``: the effective LR; before each step their loop sets
the learning rate to ``lr * rho**2`` with the SI norm after the previous step.
``fixed_sphere``: the effective LR of SGD on the sphere of radius ``si_pnorm_0``;
the step's learning rate is ``lr * si_pnorm_0**2`` and the SI weights are
rescaled back to ``si_pnorm_0`` after every step (``running_radius`` is taken
after the step, before the rescaling).

``trace.pt`` is read with :mod:`siflow.io._safe_pickle` (no code runs, torch is
not needed). The settings the reader computes with (``running_log_freq``,
``num_iters``, ``log_iters``, ``lr``, ``wd``) must be JSON numbers (``null`` for an
unknown ``num_iters``, ``lr`` or ``wd``): text such as ``"1e3"`` is refused in one line
naming the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow.io._build import build_trajectory
from siflow.io._columns import Table, normalize_mapping
from siflow.io._safe_pickle import load_torch_file
from siflow.io._text import check_path, read_json
from siflow.trajectory import Trajectory

__all__ = ["read_idealgas", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_RUNNING = ("running_radius", "running_loss", "stoch_grad_norm")
#: Where an ideal-gas run's optimizer comes from: its files do not name it, the code that
#: trains it builds one optimizer only.
IDEALGAS_OPTIMIZER_SOURCE = (
    "the repository's pretrain, which builds torch.optim.SGD(lr, weight_decay) without momentum"
)
_META_KEYS = ("lr", "wd", "batch_size", "num_iters", "running_log_freq", "opt_mode", "loss_fn")


def _paths(p: Path) -> tuple[Path, Path]:
    run = p if p.is_dir() else p.parent
    trace, config = run / "trace.pt", run / "config.json"
    for f in (trace, config):
        if not f.is_file():
            raise ValueError(
                f"{str(run)!r} has no {f.name}; an ideal-gas run directory holds trace.pt and "
                f"config.json (pass that directory)"
            )
    return trace, config


def _config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict, its settings that the reader uses checked for type."""
    label = repr(str(path))
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{label} must hold one JSON object of settings; use the run's own config.json"
        )
    freq = cfg.get("running_log_freq")
    if _whole(freq) is None or freq < 1:
        raise ValueError(
            f"{label}: 'running_log_freq' must be a positive whole number of iterations, got "
            f"{freq!r}; {_number_fix(freq, 'the run', whole=True)}"
        )
    for key in ("lr", "wd"):
        _check_number(cfg, key, label)
    num_iters = cfg.get("num_iters")
    if num_iters is not None and (_whole(num_iters) is None or num_iters < 1):
        raise ValueError(
            f"{label}: 'num_iters' must be a positive whole number of iterations, got "
            f"{num_iters!r}; {_number_fix(num_iters, 'the run', whole=True)}, or delete the "
            f"key (the last running entry then ends the run)"
        )
    _check_log_iters(cfg.get("log_iters", []), label)
    return cfg


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole JSON number (``200`` or ``200.0``), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def _number_fix(value: Any, whose: str, whole: bool = False) -> str:
    """The fix for a setting that is not a (``whole``) number: unquote it, or write
    ``whose`` own value."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        number = json.loads(text) if text else None
    except (json.JSONDecodeError, RecursionError):
        number = None
    if isinstance(number, int | float) and not isinstance(number, bool):
        if not whole or float(number).is_integer():
            return f"write it as the number {text} (no quotes)"
    return f"write {whose}'s own value as a JSON number"


def _check_number(cfg: Mapping[str, Any], key: str, label: str) -> None:
    """``cfg[key]``, when set, must be a finite JSON number (not text, a list, a bool)."""
    value = cfg.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(
            f"{label}: {key!r} must be a number, got {value!r}; {_number_fix(value, 'the run')}"
        )


def _check_log_iters(value: Any, label: str) -> None:
    """``log_iters``: a list of whole iteration numbers >= 0 (their evaluation iterations)."""
    fix = (
        "write the run's evaluation iterations as a list of numbers, or delete the key to "
        "read the running metrics without the evaluations"
    )
    if not isinstance(value, list):
        raise ValueError(f"{label}: 'log_iters' must be a list of iterations, got {value!r}; {fix}")
    for i, item in enumerate(value):
        if _whole(item) is None or item < 0:
            raise ValueError(
                f"{label}: 'log_iters' entry {i} is {item!r}, not a whole iteration number; {fix}"
            )


def _series(trace: Mapping[str, Any], key: str, label: str) -> np.ndarray:
    values = trace.get(key)
    if not isinstance(values, list):
        raise ValueError(
            f"{label}: trace[{key!r}] is missing or not a list; is it the run's own trace.pt?"
        )
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{label}: trace[{key!r}] holds non-numbers; is it the run's own trace.pt?"
        ) from None


def _lengths(series: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.size}" for k, v in series.items())


def _table(trace: Mapping[str, Any], cfg: dict[str, Any], label: str) -> tuple[np.ndarray, Table]:
    running = {k: _series(trace, k, label) for k in _RUNNING if k in trace}
    if "running_radius" not in running:
        raise ValueError(
            f"{label}: the trace has no 'running_radius' (the SI norm); is it the run's own "
            f"trace.pt?"
        )
    n = running["running_radius"].size
    if any(v.size != n for v in running.values()):
        raise ValueError(
            f"{label}: running series of different lengths ({_lengths(running)}); the trace "
            f"is damaged: use an intact copy"
        )
    freq = int(cfg["running_log_freq"])
    steps = (np.arange(n, dtype=np.int64) + 1) * freq
    num_iters = (_whole(cfg.get("num_iters")) or int(steps[-1])) if n else 0
    log_iters = sorted(int(i) for i in cfg.get("log_iters", []) if i <= num_iters)
    # an evaluation metric holds one entry per log iteration reached: all of them at the end
    # of the run, the first m of them in a trace saved at a checkpoint iteration before it
    evals: dict[str, np.ndarray] = {}
    for key, values in trace.items():
        if key in _RUNNING or not isinstance(values, list) or not 0 < len(values) <= len(log_iters):
            continue
        try:
            evals[key] = _series(trace, key, label)
        except ValueError:
            continue  # the weight and gradient vectors at checkpoints
    reached = log_iters[: max((v.size for v in evals.values()), default=0)]
    union = np.union1d(steps, np.array(reached, dtype=np.int64))
    table: Table = {}
    at_running = np.searchsorted(union, steps)
    for key, values in running.items():
        table[key] = np.full(union.size, np.nan)
        table[key][at_running] = values
    for key, values in evals.items():
        at_eval = np.searchsorted(union, np.array(log_iters[: values.size], dtype=np.int64))
        table[f"{key} (eval)"] = np.full(union.size, np.nan)
        table[f"{key} (eval)"][at_eval] = values
    return union, table


def _positive(cfg: Mapping[str, Any], key: str, label: str) -> float:
    value = cfg.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")
    ):
        raise ValueError(
            f"{label}: {key!r} must be a positive number, got {value!r}; "
            f"{_number_fix(value, 'the run')}"
        )
    return float(value)


def _learning_rates(cfg: Mapping[str, Any], table: Table, meta: dict[str, Any], label: str) -> None:
    """``lr``/``elr`` columns and metadata for the run's ``opt_mode`` (module docstring);
    ``label`` names ``config.json``."""
    mode = cfg.get("opt_mode", "fixed_lr")
    if mode == "fixed_lr":
        return
    elr = _positive(cfg, "lr", label)
    radius = table["running_radius"]
    at_rows = np.where(np.isfinite(radius), elr, np.nan)
    table["elr"] = at_rows
    meta["elr"] = elr
    if mode == "fixed_elr":
        table["lr"] = elr * radius**2
        del meta["lr"]
        meta["notes"].append(
            f"opt_mode fixed_elr: config lr {elr:g} is the effective LR; the lr column is "
            f"the next step's learning rate, lr * rho**2, set by their loop before each step"
        )
    elif mode == "fixed_sphere":
        r0 = _positive(cfg, "si_pnorm_0", label)
        meta["lr"] = elr * r0**2
        meta["wd"] = float(cfg.get("wd") or 0.0)
        meta["si_pnorm_0"] = r0
        meta["projected"] = True
        meta["notes"].append(
            f"opt_mode fixed_sphere: SGD on the sphere of radius {r0:g} (the SI weights are "
            f"rescaled to it after every step; running_radius is taken before that); "
            f"effective LR {elr:g}, step learning rate {elr * r0**2:g}; the free norm "
            f"dynamics (decay, jumps, equilibrium norm) do not apply"
        )
    else:
        raise ValueError(
            f"{label}: unknown opt_mode {mode!r}, so the meaning of its lr is not known; set "
            f"it to the mode the run used (fixed_lr, fixed_elr or fixed_sphere)"
        )


def read_idealgas(path: str | os.PathLike[str], *, mapping: MappingArg = None) -> Trajectory:
    """Read an ideal-gas run (``trace.pt`` + ``config.json``) into a Trajectory.

    Parameters
    ----------
    path : path-like
        The run directory, ``trace.pt`` or ``config.json``.
    mapping : dict or list of ``"field=column"``, optional
        Overrides (columns: ``running_radius``, ``running_loss``,
        ``stoch_grad_norm``, ``<metric> (eval)``).

    Returns
    -------
    Trajectory
        ``rho = running_radius``, ``loss = running_loss``,
        ``grad_norm_sphere = rho * stoch_grad_norm``
        (:func:`siflow.theory.sphere_grad_norm`), ``elr = lr / rho**2`` (the
        config's ``lr`` for ``fixed_elr`` and ``fixed_sphere`` runs, with a per-row
        ``lr`` column for ``fixed_elr``);
        evaluation metrics in ``extra`` as ``<name> (eval)`` at their ``log_iters``;
        lr, wd and the other settings of ``config.json`` in ``meta``.
    """
    p = check_path(path, allow_dir=True)
    trace_path, config_path = _paths(p)
    label = repr(str(trace_path))
    cfg = _config(config_path)
    obj = load_torch_file(trace_path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("trace"), Mapping):
        raise ValueError(f"{label} is not an ideal-gas trace (no 'trace' dict)")
    steps, table = _table(obj["trace"], cfg, label)
    meta: dict[str, Any] = {k: cfg[k] for k in _META_KEYS if k in cfg}
    meta["notes"] = [
        "running_radius, running_loss and stoch_grad_norm are logged every "
        f"{cfg['running_log_freq']} iterations; <metric> (eval) at the config's log_iters"
    ]
    _learning_rates(cfg, table, meta, repr(str(config_path)))
    meta.update(optimizer="sgd", momentum=0.0, optimizer_source=IDEALGAS_OPTIMIZER_SOURCE)
    defaults = {
        "rho": "running_radius",
        "loss": "running_loss",
        "grad_norm_raw": "stoch_grad_norm" if "stoch_grad_norm" in table else None,
    }
    return build_trajectory(
        table,
        path=trace_path,
        fmt="idealgas",
        mapping={**defaults, **normalize_mapping(mapping)},
        meta=meta,
        step=steps,
    )


def detect(path: Path, head: bytes) -> bool:
    """A run directory (or its ``trace.pt``/``config.json``) with both files.

    The pair of names is the format's signature: ``trace.pt`` need not be a readable
    zip, so that a trace cut short (a run stopped while saving it) reaches
    :func:`read_idealgas` and gets its own message, not an unknown-directory one.
    """
    run = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in ("trace.pt", "config.json"):
        return False
    return (run / "trace.pt").is_file() and (run / "config.json").is_file()
