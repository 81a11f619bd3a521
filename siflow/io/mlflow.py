"""Reader for an MLflow file store run (``mlruns/<experiment>/<run>/``).

MLflow's file store keeps each metric of a run in its own text file,
``metrics/<key>`` (a key with ``/`` in subdirectories), one line per logged
value: ``<timestamp ms> <value> <step>`` (files written before steps existed
have no step: step 0). Parameters are ``params/<key>`` files holding the value
as text. Everything is read as plain text; no MLflow installation is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from siflow.io._build import build_trajectory
from siflow.io._columns import HPARAM_KEYS, OPTIMIZER_KEYS, config_meta
from siflow.io._series import Series, series_table
from siflow.io._text import check_path, read_text
from siflow.trajectory import Trajectory

__all__ = ["read_mlflow", "run_directory", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

#: The logging call that takes the step, for messages.
_HOW = "mlflow.log_metric(key, value, step=step)"
#: Parameter files longer than this are not a number or a name: not read.
_MAX_PARAM_BYTES = 4096


def _metric_line(path: Path) -> bool:
    """Whether a file's first line reads ``<timestamp> <value> [<step>]``."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200).decode("ascii").split()
        int(first[0])
        float(first[1])
        if len(first) == 3:
            int(first[2])
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        return False
    return len(first) in (2, 3)


def _is_run(candidate: Path) -> bool:
    """A directory with ``metrics/``, and MLflow's ``meta.yaml`` or a metric file in it."""
    metrics = candidate / "metrics"
    if not metrics.is_dir():
        return False
    if (candidate / "meta.yaml").is_file():
        return True
    first = next((f for f in metrics.rglob("*") if f.is_file()), None)
    return first is not None and _metric_line(first)


def run_directory(path: Path) -> Path | None:
    """The run directory (``meta.yaml`` and ``metrics/``) that ``path`` is, or lies in (its
    ``metrics/`` directory or a metric file); None when there is none."""
    if path.is_dir() and _is_run(path):
        return path
    for metrics in (path, *path.parents):
        if metrics.name == "metrics" and _is_run(metrics.parent):
            return metrics.parent
    return None


def _metric_points(path: Path, name: str, label: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric file, in file order."""
    points = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            int(parts[0])
            value = float(parts[1])
            step = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise ValueError(
                f"{label}: metric file {name!r} line {number} is not '<timestamp> <value> "
                f"<step>' ({line.strip()[:40]!r}); fix or delete that line"
            ) from None
        points.append((step, value))
    return points


def _metrics(run: Path, label: str) -> Series:
    """Every metric of the run, keyed as MLflow names it (``train/loss``)."""
    root = run / "metrics"
    series: Series = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        points = _metric_points(path, name, label)
        if points:
            series[name] = points
    return series


def _params(run: Path) -> dict[str, str]:
    """The run's parameters that name an lr, wd, momentum, batch size or optimizer."""
    wanted = set(HPARAM_KEYS) | set(OPTIMIZER_KEYS)
    out: dict[str, str] = {}
    root = run / "params"
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if path.name.lower() not in wanted or not path.is_file():
            continue
        if path.stat().st_size > _MAX_PARAM_BYTES:
            continue
        try:
            out[path.name] = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
    return out


def read_mlflow(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
) -> Trajectory:
    """Read an MLflow file store run into a :class:`Trajectory`.

    Parameters
    ----------
    path : path-like
        The run directory (``mlruns/<experiment>/<run>``), its ``metrics/``
        directory, or one metric file in it (the whole run is read).
    mapping, steps_per_epoch, group
        As in :func:`siflow.io.read_csv`; the columns are the metric keys, plus
        ``step``.

    Returns
    -------
    Trajectory
        Metrics merged on the union of their steps (blank where a metric was not
        logged); the run's ``lr``/``learning_rate``, ``wd``/``weight_decay``,
        ``momentum``, ``batch_size`` and optimizer (``optimizer``,
        ``optimizer_name``, Hugging Face's ``optim``) parameters in ``meta``.

    Raises
    ------
    ValueError
        Not inside a run directory, a malformed metric line, a metric with several
        different values at one step or all its values at one step (logged without
        ``step=``), or the columns' usual problems.
    """
    p = check_path(path, allow_dir=True)
    run = run_directory(p)
    if run is None:
        raise ValueError(
            f"{str(p)!r} is not in an MLflow run directory (one holding meta.yaml and "
            f"metrics/<key> files); pass mlruns/<experiment>/<run>"
        )
    label = repr(str(run))
    series = _metrics(run, label)
    if not series:
        raise ValueError(f"{label} has no logged metrics (metrics/ is empty)")
    meta: dict[str, Any] = {"metrics": sorted(series), "run_id": run.name}
    meta.update(config_meta(_params(run), "MLflow param"))
    if p != run and p != run / "metrics":
        meta["notes"] = [f"read the whole run {run.name!r}, not only {p.name!r}"]
    return build_trajectory(
        series_table(series, label, _HOW),
        path=run,
        fmt="mlflow",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=meta,
    )


def detect(path: Path, head: bytes) -> bool:
    """An MLflow run directory, its ``metrics/`` directory, or a metric file in it."""
    return run_directory(path) is not None
