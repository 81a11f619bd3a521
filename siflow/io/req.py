"""Reader for REQ's dynamics logger (Kosson, Messmer & Jaggi, "Rotational equilibrium", ICML 2024).

Repository ``epfml/REQ``. Its logger appends pickle dumps to ``dynamics.pkl``,
each ``{stat: {param: tensor}}`` with ``stat`` in ``layer_norm``,
``layer_grad_norm``, ``layer_angular_update``, ``layer_relative_update``, ...
(shape ``(rows, 1)``) and their ``neuron_*`` twins (shape ``(rows, neurons)``).
Each row reduces ``disk_downsample`` samples taken every ``interval`` iterations
(``logger_cfg.yaml``, reducer ``disk_reducer``, RMS by default); no step, lr or
wd is stored. Row ``r`` (from 0) ends at iteration
``(r + 1) * interval * disk_downsample``, its step here.

The pickles are read with :mod:`siflow.io._safe_pickle` (no code runs, torch is
not needed). SI tensors follow :func:`siflow.io._columns.si_weights` (pre-BN
weights; the frozen classifier is not SI). ``rho = sqrt(sum_g layer_norm_g^2)``
over SI tensors: with RMS rows this is exactly the RMS over the row's samples of
the total SI norm (``sum_g mean_s rho_gs^2 = mean_s sum_g rho_gs^2``); likewise
the raw gradient norm. ``summary.csv`` next to the file (``iter``, ``epoch``,
``train_loss``, ``lr``, ...) gives the loss and lr at its own iterations; the
two are merged on the union of their steps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow.io._build import build_trajectory, root_sum_square
from siflow.io._columns import Table, normalize_mapping, si_weights
from siflow.io._safe_pickle import load_pickles
from siflow.io._text import check_path, parse_csv_table, read_text
from siflow.trajectory import Trajectory

__all__ = ["read_req", "detect", "req_rows"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

# REQ stat name -> siflow per-group column prefix (a group column "<prefix>/<param>")
_LAYER_STATS = {
    "layer_norm": "rho",
    "layer_grad_norm": "grad_norm_raw",
    "layer_angular_update": "angular_update",
}


def req_rows(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{stat: {param: array (rows, k)}}``: the appended dumps concatenated along rows."""
    label = repr(str(path))
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    for i, dump in enumerate(load_pickles(path)):
        if not isinstance(dump, Mapping):
            raise ValueError(f"{label}: dump {i + 1} is not a {{stat: {{param: tensor}}}} dict")
        for stat, per in dump.items():
            if not isinstance(per, Mapping):
                raise ValueError(f"{label}: dump {i + 1}, stat {stat!r} is not a dict of tensors")
            for param, value in per.items():
                arr = np.asarray(value, dtype=np.float64)
                if arr.ndim == 1:
                    arr = arr[:, None]
                if arr.ndim != 2:
                    raise ValueError(f"{label}: {stat}/{param} has shape {arr.shape}")
                parts.setdefault(str(stat), {}).setdefault(str(param), []).append(arr)
    if not parts:
        raise ValueError(f"{label} holds no dumps; did the logger run?")
    out: dict[str, dict[str, np.ndarray]] = {}
    for stat, per in parts.items():
        out[stat] = {}
        for param, arrays in per.items():
            if len({a.shape[1] for a in arrays}) != 1:
                raise ValueError(f"{label}: {stat}/{param} changes width between dumps")
            out[stat][param] = np.concatenate(arrays)
    return out


def _logger_cfg(path: Path) -> dict[str, Any]:
    label = repr(str(path))
    cfg: dict[str, Any] = {}
    for line in read_text(path).splitlines():
        m = re.match(r"^([A-Za-z_]+)\s*:\s*([^#]*?)\s*(?:#.*)?$", line)
        if m:
            cfg[m.group(1)] = m.group(2)
    out: dict[str, Any] = {}
    for key in ("interval", "disk_downsample"):
        try:
            value = int(cfg[key])
        except (KeyError, ValueError):
            raise ValueError(
                f"{label} has no positive integer {key!r}; REQ's logger config gives the "
                f"iterations between rows"
            ) from None
        if value < 1:
            raise ValueError(f"{label}: {key!r} must be a positive integer, got {value}")
        out[key] = value
    out["disk_reducer"] = cfg.get("disk_reducer", "rms") or "rms"
    return out


def _row_table(rows: dict[str, dict[str, np.ndarray]], label: str) -> tuple[Table, dict]:
    """Per-layer columns, SI totals and per-neuron columns of the dynamics rows."""
    if "layer_norm" not in rows:
        raise ValueError(f"{label} has no 'layer_norm' stat; the logger config must log norms")
    norms = {p: v[:, 0] for p, v in rows["layer_norm"].items()}
    n = {v.shape[0] for per in rows.values() for v in per.values()}
    if len(n) != 1:
        raise ValueError(f"{label}: stats have different numbers of rows {sorted(n)}")
    si, other = si_weights(norms)
    table: Table = {}
    if si:
        table["si_norm"] = root_sum_square([norms[p] for p in si])
        grads = rows.get("layer_grad_norm", {})
        if all(p in grads for p in si):
            table["si_grad_norm"] = root_sum_square([grads[p][:, 0] for p in si])
    for stat, per in rows.items():
        for param, values in per.items():
            if stat.startswith("layer_"):
                prefix = _LAYER_STATS.get(stat, stat[len("layer_") :])
                name = f"{prefix}/{param}" if param in si else f"{stat} (not SI)/{param}"
                table[name] = values[:, 0]
            else:
                for k in range(values.shape[1]):
                    table[f"{stat}/{param}[{k}]"] = values[:, k]
    return table, {"si_tensors": si, "not_si": other}


def _summary(path: Path) -> tuple[np.ndarray, Table] | None:
    if not path.is_file():
        return None
    parsed = parse_csv_table(path, repr(str(path)))
    table = dict(parsed.table)
    if "iter" not in table:
        return None
    return table.pop("iter").astype(np.int64), table


def _merge(
    steps: np.ndarray, table: Table, other: tuple[np.ndarray, Table] | None
) -> tuple[np.ndarray, Table]:
    """Union of the two step axes; each table's columns blank at the other's steps."""
    if other is None:
        return steps, table
    o_steps, o_table = other
    union = np.union1d(steps, o_steps)
    out: Table = {}
    for src_steps, src in ((steps, table), (o_steps, o_table)):
        idx = np.searchsorted(union, src_steps)
        for name, values in src.items():
            col = np.full(union.size, np.nan)
            col[idx] = values
            out[name if name not in out else f"summary/{name}"] = col
    return union, out


def read_req(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    group: str | None = None,
) -> Trajectory:
    """Read REQ's ``dynamics.pkl`` (+ ``logger_cfg.yaml`` and ``summary.csv`` next to it).

    Parameters
    ----------
    path : path-like
        ``dynamics.pkl`` or the run directory holding it.
    mapping : dict or list of ``"field=column"``, optional
        Overrides; columns are ``rho/<param>``, ``grad_norm_raw/<param>``,
        ``angular_update/<param>``, ``<stat>/<param>[<neuron>]``, ``si_norm``,
        ``si_grad_norm`` and the ``summary.csv`` columns.
    group : str, optional
        One SI tensor (``"3.weight"``), or ``"sum"`` (default: all SI tensors).

    Returns
    -------
    Trajectory
        ``rho`` the SI norm, ``grad_norm_sphere = rho * |grad|``
        (:func:`siflow.theory.sphere_grad_norm`, applied to the row RMS values),
        ``loss`` from ``summary.csv``, ``lr`` from its lr column; per-layer
        angular updates and relative updates in ``extra`` with the per-neuron
        stats. wd is not stored by REQ: pass it to the analysis.
    """
    p = check_path(path, allow_dir=True)
    if p.is_dir():
        p = p / "dynamics.pkl"
        if not p.is_file():
            raise ValueError(f"{str(p.parent)!r} has no dynamics.pkl; pass the file itself")
    label = repr(str(p))
    cfg_path = p.parent / "logger_cfg.yaml"
    if not cfg_path.is_file():
        raise ValueError(
            f"{label}: logger_cfg.yaml (interval, disk_downsample) is not next to it, so the "
            f"step of each row is unknown; copy the run's logger config next to the file"
        )
    cfg = _logger_cfg(cfg_path)
    table, meta = _row_table(req_rows(p), label)
    n_rows = len(next(iter(table.values())))
    per_row = cfg["interval"] * cfg["disk_downsample"]
    steps = (np.arange(n_rows, dtype=np.int64) + 1) * per_row
    steps, table = _merge(steps, table, _summary(p.parent / "summary.csv"))
    meta.update({"logger": cfg, "steps_per_row": per_row})
    meta["notes"] = [
        f"each dynamics row reduces ({cfg['disk_reducer']}) {cfg['disk_downsample']} samples "
        f"taken every {cfg['interval']} iterations; its step is the row's last iteration"
    ]
    defaults: dict[str, str | None] = {"rho": "si_norm", "grad_norm_raw": "si_grad_norm"}
    if group is not None and group.strip().lower() != "sum":
        defaults = {}
    if "train_loss" in table:
        defaults["loss"] = "train_loss"
    defaults = {k: v for k, v in defaults.items() if v is None or v in table}
    traj = build_trajectory(
        table,
        path=p,
        fmt="req",
        mapping={**defaults, **normalize_mapping(mapping)},
        group=None if group is None or group.strip().lower() == "sum" else group,
        meta=meta,
        step=steps,
    )
    traj.meta["groups"] = meta["si_tensors"]
    return traj


def detect(path: Path, head: bytes) -> bool:
    """``dynamics.pkl`` (a pickle), or a directory holding one."""
    if path.is_dir():
        return (path / "dynamics.pkl").is_file()
    return path.name.endswith(".pkl") and head[:1] == b"\x80"
