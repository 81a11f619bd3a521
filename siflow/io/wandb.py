"""Reader for Weights & Biases CSV exports (``"<run> - <metric>"`` columns)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow.io._build import build_trajectory
from siflow.io._columns import Table
from siflow.io._text import check_path, parse_csv_table
from siflow.trajectory import Trajectory

__all__ = ["read_wandb", "wandb_runs", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_SEP = " - "
_SUFFIXES = ("__MIN", "__MAX")


def _split(column: str) -> tuple[str, str, str] | None:
    """``(run, metric, suffix)`` of a ``"<run> - <metric>[__MIN|__MAX]"`` column."""
    if _SEP not in column:
        return None
    run, metric = column.split(_SEP, 1)
    suffix = ""
    for s in _SUFFIXES:
        if metric.endswith(s):
            metric, suffix = metric[: -len(s)], s
    run, metric = run.strip(), metric.strip()
    if not run or not metric:
        return None
    return run, metric, suffix


def wandb_runs(header: Sequence[str]) -> list[str]:
    """Run names found in a W&B export header, in column order."""
    runs: list[str] = []
    for c in header:
        parts = _split(c)
        if parts is not None and parts[0] not in runs:
            runs.append(parts[0])
    return runs


def _choose_run(
    runs: list[str], run: str | None, group: str | None, label: str
) -> tuple[str, bool]:
    """The selected run and whether ``group`` was used to select it."""
    listed = ", ".join(runs)
    if run is not None:
        if run in runs:
            return run, False
        hits = [r for r in runs if run.lower() in r.lower()]
        if len(hits) == 1:
            return hits[0], False
        raise ValueError(f"{label} has no run {run!r} (runs: {listed}); pass one of them as run=")
    if group is not None:
        hits = [r for r in runs if r == group] or [r for r in runs if group.lower() in r.lower()]
        if len(hits) == 1:
            return hits[0], True
    if len(runs) == 1:
        return runs[0], False
    raise ValueError(
        f"{label} holds several runs ({listed}); pick one with run='<name>' or group='<name>'"
    )


def read_wandb(
    path: str | os.PathLike[str],
    *,
    run: str | None = None,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
) -> Trajectory:
    """Read a Weights & Biases chart/table CSV export.

    A W&B export has an x-axis column (``Step``, or the chart's x-axis such as
    ``epoch`` or ``trainer/global_step``) and, for each run and metric, a column
    ``"<run> - <metric>"`` plus ``"<run> - <metric>__MIN"`` and ``__MAX`` (the
    range within a bucket when W&B sampled the history). Cells are blank where a
    run did not log.

    Parameters
    ----------
    path : path-like
        The exported CSV.
    run : str, optional
        Run name (exact, or a unique case-insensitive substring). Needed when the
        export has several runs; ``group`` naming a run also selects it (then it is
        not used as an SI group).
    mapping, steps_per_epoch, group
        As in :func:`siflow.io.read_csv`; the metric names (without the run prefix)
        are the columns.

    Notes
    -----
    The selected run's ``<metric>`` columns become the table; its ``__MIN`` and
    ``__MAX`` columns are kept in ``extra`` as ``<metric>__MIN`` / ``__MAX``. Rows
    where the run logged nothing (other runs' rows) are removed first and counted
    in ``meta["rows_of_other_runs"]``. ``meta["run"]`` names the run and
    ``meta["runs"]`` all runs of the file.
    """
    if run is not None and not isinstance(run, str):
        raise ValueError(f"run must be a run name (str), got {run!r}")
    p = check_path(path)
    label = repr(str(p))
    parsed = parse_csv_table(p, label)
    header, table = parsed.header, parsed.table
    runs = wandb_runs(header)
    if not runs:
        raise ValueError(
            f"{label} has no '<run> - <metric>' columns, so it is not a W&B export; pass fmt='csv'"
        )
    chosen, used_group = _choose_run(runs, run, group, label)
    sub: Table = {}
    metric_cols: list[str] = []
    for name, values in table.items():
        parts = _split(name)
        if parts is None:
            sub[name] = values
            continue
        r, metric, suffix = parts
        if r != chosen:
            continue
        key = metric + suffix
        if key in sub:
            raise ValueError(f"{label} has two columns for {chosen} - {key}; rename one")
        sub[key] = values
        if not suffix:
            metric_cols.append(key)
    if not metric_cols:
        raise ValueError(f"{label}: run {chosen!r} has no numeric metric columns")
    logged = np.zeros(len(next(iter(sub.values()))), dtype=bool)
    for c in metric_cols:
        logged |= np.isfinite(sub[c])
    n_other = int((~logged).sum())
    sub = {k: v[logged] for k, v in sub.items()}
    meta: dict[str, Any] = {"run": chosen, "runs": runs, "rows_of_other_runs": n_other}
    meta.update(parsed.meta())
    if not logged.any():
        raise ValueError(f"{label}: run {chosen!r} has no logged values")
    return build_trajectory(
        sub,
        path=p,
        fmt="wandb",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=None if used_group else group,
        meta=meta,
    )


def detect(path: Path, head: bytes) -> bool:
    """A CSV whose header has ``"<run> - <metric>"`` columns, with ``__MIN``/``__MAX``
    columns or a first ``Step`` column and no other columns (a chart export).

    A plain log with one column that happens to contain ``" - "`` (``loss - ema``) is
    not an export: read as one, its rows without that column would be taken for
    other runs' rows."""
    if path.is_dir() or b"\x00" in head:
        return False
    lines = [
        ln
        for ln in head.decode("utf-8-sig", errors="ignore").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        return False
    cells = [c.strip().strip('"').lower() for c in lines[0].split(",")]
    runs = [c for c in cells if _split(c) is not None]
    if not runs:
        return False
    if any(c.endswith(("__min", "__max")) for c in runs):
        return True
    return cells[0] == "step" and len(runs) == len(cells) - 1
