"""Reader for REQ's dynamics logger (Kosson, Messmer & Jaggi, "Rotational equilibrium", ICML 2024).

Repository ``epfml/REQ``. Its logger appends pickle dumps to ``dynamics.pkl``,
each ``{stat: {param: tensor}}`` with ``stat`` in ``layer_norm``,
``layer_grad_norm``, ``layer_angular_update``, ``layer_relative_update``, ...
(shape ``(rows, 1)``) and their ``neuron_*`` twins (shape ``(rows, neurons)``).
Each row reduces ``disk_downsample`` samples taken every ``interval`` iterations
(``logger_cfg.yaml``, reducer ``disk_reducer``, RMS by default); no step, lr or
wd is stored. The logger samples at the optimizer step it wraps, before the
update: a sample taken at iteration ``i`` (from 0) holds the parameters after
``i`` steps, and ``i`` is its step here. A row is placed at its last sample
(reducers ``rms`` and ``mean``) or at the sample it keeps (``first``). With a
constant ``interval`` ``I`` and ``disk_downsample`` ``D``, row ``r`` (from 0)
holds the samples at ``(r D + k) I``, ``k = 0 .. D - 1``. A piecewise
``interval`` (``[[iter0, I0], [iter1, I1], ...]``, ``I_k`` from iteration
``iter_k`` on) is replayed sample by sample with the logger's own rules,
``disk_save_interval`` ``T`` included: a dump is written at a sample ``i``
with ``(i + I) % (T I) == 0`` and holds the last ``T`` samples, so samples
between dumps can be dropped, or repeated after the interval grows (a row
whose samples were already read is left out, with a note).

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

import bisect
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

__all__ = ["read_req", "detect", "req_rows", "replay_samples"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

# REQ stat name -> siflow per-group column prefix (a group column "<prefix>/<param>")
_LAYER_STATS = {
    "layer_norm": "rho",
    "layer_grad_norm": "grad_norm_raw",
    "layer_angular_update": "angular_update",
}


#: The layout the reader takes, named in its messages about a dump of another shape.
_LAYOUT = "siflow reads REQ's dumps {stat: {param: tensor of shape (rows,) or (rows, k)}}"


def _layout_fix(stat: Any = None) -> str:
    """The fix for a dump of another layout: drop the odd stat, or read REQ's own file."""
    if stat is None:
        return f"{_LAYOUT}: is it the dynamics.pkl of REQ's logger?"
    return f"{_LAYOUT}: re-save the dumps without stat {str(stat)!r}"


def _stat_rows(value: Any, where: str, stat: Any) -> np.ndarray:
    """One ``{param: tensor}`` entry as a float array ``(rows, k)``, its type checked first.

    ``where`` names the file, dump, stat and parameter in the message; ``stat`` is the
    stat to drop in its fix.
    """
    fix = _layout_fix(stat)
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, list | tuple | int | float | np.number) and not isinstance(value, bool):
        try:
            arr = np.asarray(value)
        except ValueError:  # a ragged list
            raise ValueError(f"{where} is a ragged list, not a tensor; {fix}") from None
    else:
        raise ValueError(f"{where} is a {type(value).__name__}, not a tensor; {fix}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} holds {arr.dtype} values, not numbers; {fix}")
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{where} has shape {arr.shape}; {fix}")
    return arr


def req_rows(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{stat: {param: array (rows, k)}}``: the appended dumps concatenated along rows.

    Raises
    ------
    ValueError
        A dump that is not ``{stat: {param: tensor}}`` (the message names the dump, stat
        and parameter), a damaged file, or a tensor that changes width between dumps.
    """
    label = repr(str(path))
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    for i, dump in enumerate(load_pickles(path)):
        if not isinstance(dump, Mapping):
            raise ValueError(
                f"{label}: dump {i + 1} is a {type(dump).__name__}, not a {{stat: {{param: "
                f"tensor}}}} dict; {_layout_fix()}"
            )
        for stat, per in dump.items():
            if not isinstance(per, Mapping):
                raise ValueError(
                    f"{label}: dump {i + 1}, stat {stat!r} is a {type(per).__name__}, not a "
                    f"dict of tensors; {_layout_fix(stat)}"
                )
            for param, value in per.items():
                arr = _stat_rows(value, f"{label}: dump {i + 1}, {stat}/{param}", stat)
                parts.setdefault(str(stat), {}).setdefault(str(param), []).append(arr)
    if not parts:
        raise ValueError(f"{label} holds no dumps; did the logger run?")
    out: dict[str, dict[str, np.ndarray]] = {}
    for stat, per in parts.items():
        out[stat] = {}
        for param, arrays in per.items():
            widths = sorted({a.shape[1] for a in arrays})
            if len(widths) != 1:
                raise ValueError(
                    f"{label}: {stat}/{param} changes width between dumps ({widths}); the "
                    f"dumps are of different runs or models: keep one run's dumps in the file"
                )
            out[stat][param] = np.concatenate(arrays)
    return out


def _cfg_values(path: Path) -> dict[str, str]:
    """``key: value`` text of REQ's logger config; a block value (``key:`` followed by
    indented or ``-`` lines) is joined into one string; comments are dropped."""
    values: dict[str, str] = {}
    key = None
    for line in read_text(path).splitlines():
        text = line.split("#", 1)[0].rstrip()
        m = re.match(r"^([A-Za-z_]+)\s*:(.*)$", text)
        if m:
            key = m.group(1)
            values[key] = m.group(2).strip()
        elif key is not None and text.strip():
            values[key] = f"{values[key]} {text.strip()}".strip()
    return values


def _interval_table(text: str | None, label: str) -> list[tuple[int, int]]:
    """``interval`` as ``[(first iteration, interval), ...]``: an integer is ``[(0, I)]``;
    a list of ``[iter, interval]`` pairs (flow or block YAML, tuples tagged or not) in
    increasing ``iter``."""
    fix = (
        "REQ's logger config gives the iterations between samples as an integer or as "
        "[[iter0, interval0], [iter1, interval1], ...]"
    )
    text = (text or "").replace("!!python/tuple", "")
    if re.fullmatch(r"\s*\d+\s*", text):
        table = [(0, int(text))]
    elif re.fullmatch(r"[\s\[\]()\-,\d]*", text) and re.search(r"\d", text):
        numbers = [int(v) for v in re.findall(r"-?\d+", text)]
        if len(numbers) % 2:
            raise ValueError(f"{label}: 'interval' {text.strip()!r} is not a list of pairs; {fix}")
        table = list(zip(numbers[0::2], numbers[1::2], strict=True))
    else:
        raise ValueError(f"{label} has no usable 'interval' ({text.strip()!r}); {fix}")
    starts = [s for s, _ in table]
    if any(i < 1 for _, i in table) or any(s < 0 for s in starts):
        raise ValueError(f"{label}: 'interval' {text.strip()!r} must hold positive intervals")
    if starts != sorted(set(starts)):
        raise ValueError(f"{label}: 'interval' pairs {table} must start at increasing iterations")
    return table


def _positive_int(values: dict[str, str], key: str, label: str, why: str) -> int | None:
    text = values.get(key, "").strip()
    if text in ("", "null", "None", "~"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{label}: {key!r} must be a positive integer, got {text!r}; {why}")
    return value


def _logger_cfg(path: Path) -> dict[str, Any]:
    label = repr(str(path))
    values = _cfg_values(path)
    out: dict[str, Any] = {"interval": _interval_table(values.get("interval"), label)}
    downsample = _positive_int(values, "disk_downsample", label, "it is the samples per row")
    if downsample is None:
        raise ValueError(
            f"{label} has no positive integer 'disk_downsample'; REQ's logger config gives "
            f"the samples per row"
        )
    out["disk_downsample"] = downsample
    out["disk_save_interval"] = _positive_int(
        values, "disk_save_interval", label, "it is the samples per dump"
    )
    reducer = values.get("disk_reducer", "").strip().strip("'\"") or "rms"
    if reducer not in ("rms", "mean", "first"):
        raise ValueError(
            f"{label}: disk_reducer {reducer!r} is not one REQ's logger writes (rms, mean, first)"
        )
    out["disk_reducer"] = reducer
    return out


def _interval_at(table: list[tuple[int, int]], it: int) -> int:
    """REQ's rule: the interval of the last pair starting at or before ``it`` (before the
    first pair's iteration, Python's index -1 picks the last pair)."""
    idx = bisect.bisect_right([s for s, _ in table], it)
    return table[idx - 1][1]


def replay_samples(
    interval: int | Sequence[tuple[int, int]], save_every: int, downsample: int, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Iterations of the first and last sample of each of the first ``n_rows`` rows.

    Replays REQ's ``DynamicsLogger``: at iteration ``i`` (optimizer steps taken) with
    interval ``I`` it samples when ``i % I == 0``, and after a sample writes a dump when
    ``(i + I) % (save_every * I) == 0``, holding the last ``save_every`` samples in rows
    of ``downsample``.

    Raises
    ------
    ValueError
        If the schedule cannot write ``n_rows`` rows (a dump with fewer than
        ``save_every`` samples ends REQ's run when ``downsample > 1``).
    """
    table = [(0, int(interval))] if isinstance(interval, (int, np.integer)) else list(interval)
    starts = sorted(s for s, _ in table)
    samples: list[int] = []
    first: list[int] = []
    last: list[int] = []
    it = 0
    budget = 1000 + 100 * (n_rows * downsample + save_every)
    while len(first) < n_rows:
        budget -= 1
        if budget < 0:
            raise ValueError("the logger config writes no dump in a long run of samples")
        step = _interval_at(table, it)
        if it % step == 0:
            samples.append(it)
            del samples[:-save_every]
            if (it + step) % (save_every * step) == 0:
                if len(samples) < save_every and downsample > 1:
                    raise ValueError(
                        f"a dump at iteration {it} holds {len(samples)} samples, fewer than "
                        f"disk_save_interval = {save_every}; REQ's logger stops there"
                    )
                for k in range(0, len(samples) - downsample + 1, downsample):
                    first.append(samples[k])
                    last.append(samples[k + downsample - 1])
        after = [s for s in starts if s > it]
        it = min([(it // step + 1) * step, *after[:1]])
    return np.asarray(first[:n_rows], np.int64), np.asarray(last[:n_rows], np.int64)


def _row_steps(cfg: dict[str, Any], n_rows: int, label: str) -> tuple[np.ndarray, list[str]]:
    """The step of each row (see the module docstring) and notes on dropped rows."""
    table, d = cfg["interval"], cfg["disk_downsample"]
    if len(table) == 1 and table[0][0] == 0:
        per_row = table[0][1] * d
        first = np.arange(n_rows, dtype=np.int64) * per_row
        last = first + (d - 1) * table[0][1]
    else:
        if cfg["disk_save_interval"] is None:
            raise ValueError(
                f"{label}: a piecewise 'interval' needs 'disk_save_interval' (samples per "
                f"dump) in logger_cfg.yaml to place the rows"
            )
        try:
            first, last = replay_samples(table, cfg["disk_save_interval"], d, n_rows)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}; is logger_cfg.yaml the run's own?") from None
    steps = first if cfg["disk_reducer"] == "first" else last
    return steps, []


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


def _first_reads(steps: np.ndarray) -> np.ndarray:
    """Rows whose step exceeds every earlier row's (a re-dumped row does not)."""
    before = np.maximum.accumulate(np.concatenate([[-1], steps[:-1]]))
    return steps > before


def _summary(path: Path) -> tuple[np.ndarray, Table] | None:
    """``summary.csv``'s iterations and columns; None without the file or its ``iter``."""
    if not path.is_file():
        return None
    label = repr(str(path))
    parsed = parse_csv_table(path, label)
    table = dict(parsed.table)
    if "iter" not in table:
        return None
    iters = table.pop("iter")
    bad = np.flatnonzero(
        ~np.isfinite(iters) | (iters < 0) | (iters > 2.0**53) | (iters != np.round(iters))
    )
    if bad.size:
        value = float(iters[bad[0]])
        shown = "blank (or not a number)" if np.isnan(value) else f"{value:g}"
        raise ValueError(
            f"{label}: 'iter' of data row {bad[0] + 1} is {shown}, not a whole iteration "
            f">= 0; fix or delete that row"
        )
    return iters.astype(np.int64), table


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
    steps, notes = _row_steps(cfg, n_rows, label)
    keep = _first_reads(steps)
    if not keep.all():
        notes.append(
            f"{int((~keep).sum())} dynamics rows repeat samples of earlier rows (the logger "
            f"re-dumps samples after its interval grows) and are left out"
        )
        table = {k: v[keep] for k, v in table.items()}
        steps = steps[keep]
    steps, table = _merge(steps, table, _summary(p.parent / "summary.csv"))
    intervals = cfg["interval"]
    constant = len(intervals) == 1 and intervals[0][0] == 0
    meta.update(
        {
            "logger": cfg,
            "steps_per_row": intervals[0][1] * cfg["disk_downsample"] if constant else None,
        }
    )
    every = f"every {intervals[0][1]}" if constant else f"at the intervals {intervals}"
    where = "the sample it keeps" if cfg["disk_reducer"] == "first" else "its last sample"
    meta["notes"] = [
        f"each dynamics row reduces ({cfg['disk_reducer']}) {cfg['disk_downsample']} samples "
        f"taken {every} iterations, each before its optimizer step; the row's step is that "
        f"of {where}",
        *notes,
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
