"""Reader for PyTorch Lightning ``CSVLogger`` output (``metrics.csv`` + ``hparams.yaml``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow.io._build import build_trajectory
from siflow.io._columns import HPARAM_KEYS, Table, _norm_name
from siflow.io._text import check_path, parse_csv_table
from siflow.trajectory import Trajectory

__all__ = ["read_lightning", "merge_rows_by_step", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_HPARAM_KEYS = {
    **HPARAM_KEYS,
    # what siflow's Lightning callback logs (siflow.integrations._common.optimizer_hparams)
    "siflow/momentum": "momentum",
    "siflow/n_params": "n_params",
}
#: Text hyperparameters the callback logs: the optimizer's class name and its betas.
_HPARAM_TEXT = {"siflow/optimizer": "optimizer", "siflow/betas": "betas"}
#: The SI groups' sizes the callback logs (``siflow.integrations._common.size_hparams``):
#: ``siflow/group_sizes/<group>: <elements>``, the key quoted by YAML when the name needs it.
_GROUP_SIZE = re.compile(
    r"""^(['"]?)siflow/group_sizes/(?P<group>.+?)\1\s*:\s*(?P<n>[^#\s]+)\s*$"""
)
#: Per-step metrics of the callback read under the names siflow.overlay takes: the
#: momentum term of the first param group (OneCycleLR cycles it).
_METRIC_COLUMNS = {"siflow/momentum": "momentum", "siflow/beta1": "beta1"}


def merge_rows_by_step(table: Table, step_col: str, label: str) -> tuple[Table, int]:
    """Merge rows that share a step: each column takes its last non-blank value.

    ``CSVLogger`` writes one row per ``log_metrics`` call, with blank cells for the
    metrics of other calls, so a training-step row and a validation row of the
    same step are two rows. Rows must already be in non-decreasing step order
    (decreasing steps mean a restarted run and raise ``ValueError``). Rows with a
    blank step are dropped.

    Returns
    -------
    (table, conflicts)
        The merged table (one row per step, in step order) and the number of cells
        where two rows of one step held different values (the later one is kept).
    """
    step = table[step_col]
    ok = np.isfinite(step)
    s = step[ok]
    if s.size > 1 and np.any(np.diff(s) < 0):
        i = int(np.argmax(np.diff(s) < 0))
        raise ValueError(
            f"{label}: step goes back from {int(s[i])} to {int(s[i + 1])} (a resumed or "
            f"restarted run appended to the file?); keep one segment of the log"
        )
    uniq, inverse = np.unique(s, return_inverse=True)
    merged: Table = {}
    conflicts = 0
    for name, values in table.items():
        v = np.asarray(values, dtype=np.float64)[ok]
        present = ~np.isnan(v)
        group, vals = inverse[present], v[present]
        out = np.full(uniq.size, np.nan)
        if vals.size:
            # the last non-blank value of each step (stable sort keeps file order)
            order = np.argsort(group, kind="stable")
            group, vals = group[order], vals[order]
            last = np.r_[group[1:] != group[:-1], True]
            out[group[last]] = vals[last]
            if name != step_col:  # consecutive values of one step that differ
                conflicts += int(np.sum((group[1:] == group[:-1]) & (vals[1:] != vals[:-1])))
        merged[name] = out
    merged[step_col] = uniq.astype(np.float64)
    return merged, conflicts


def _read_hparams(path: Path) -> dict[str, Any]:
    """Top-level numeric ``key: value`` pairs of a Lightning ``hparams.yaml``, and the
    optimizer, betas and SI group sizes that siflow's callback logs (``siflow/optimizer``,
    ``siflow/betas``, ``siflow/momentum``, ``siflow/group_sizes/<group>`` into
    ``group_sizes``, ``siflow/n_params``)."""
    out: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return out
    for line in text.splitlines():
        if _group_size(out, line):
            continue
        m = re.match(r"^([A-Za-z_][\w./]*)\s*:\s*([^#]+?)\s*$", line)
        if not m:
            continue
        name = m.group(1).lower()
        if name in _HPARAM_TEXT:
            _text_hparam(out, _HPARAM_TEXT[name], m.group(2).strip("'\""))
            continue
        key = _HPARAM_KEYS.get(name)
        if key is None:
            continue
        try:
            value = float(m.group(2).strip("'\""))
        except ValueError:
            continue
        integer = key in ("batch_size", "n_params") and value.is_integer()
        out[key] = int(value) if integer else value
    return out


def _group_size(out: dict[str, Any], line: str) -> bool:
    """Whether ``line`` is a ``siflow/group_sizes/<group>`` entry; a positive whole number
    goes to ``out["group_sizes"]`` under the group's name as the reader spells it
    (lower case, like the ``siflow/<group>/<metric>`` columns)."""
    m = _GROUP_SIZE.match(line)
    if not m:
        return False
    try:
        n = float(m.group("n").strip("'\""))
    except ValueError:
        return True
    if n > 0 and n.is_integer():
        out.setdefault("group_sizes", {})[_norm_name(m.group("group"))] = int(n)
    return True


def _text_hparam(out: dict[str, Any], key: str, text: str) -> None:
    """``optimizer`` (a lower-case class name) or ``betas`` (``"0.9,0.999"``) into ``out``."""
    if key == "optimizer":
        if re.fullmatch(r"[a-z_][\w]*", text):
            out["optimizer"] = text
        return
    try:
        b1, b2 = (float(x) for x in text.strip("[]()").split(","))
    except ValueError:
        return
    out["betas"] = (b1, b2)


def read_lightning(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    live: bool = False,
) -> Trajectory:
    """Read a PyTorch Lightning ``CSVLogger`` log.

    Parameters
    ----------
    path : path-like
        ``metrics.csv``, or the version directory holding it
        (``lightning_logs/version_0``).
    mapping, steps_per_epoch, group, live
        As in :func:`siflow.io.read_csv` (``live``: the file is still being written;
        a last line cut mid-write is left out with a note).

    Notes
    -----
    ``CSVLogger`` writes the header ``epoch,step,<metrics>`` (keys in sorted
    order) and one row per logging call, with blank cells for metrics logged by
    other calls. Rows are merged by ``step`` (:func:`merge_rows_by_step`); metrics
    logged with ``on_step`` and ``on_epoch`` appear as ``<name>_step`` and
    ``<name>_epoch`` (``train_loss_step`` is read as the loss). A
    ``LearningRateMonitor`` column ``lr-<Optimizer>`` is read as ``lr``. Numeric
    ``lr``/``learning_rate``, ``weight_decay``/``wd``, ``momentum`` and
    ``batch_size`` at the top level of ``hparams.yaml`` next to the CSV go to
    ``meta``, and so do the optimizer, its betas and the SI groups' sizes that
    siflow's callback logs (``meta["group_sizes"]``, ``meta["n_params"]``). The
    callback's per-step ``siflow/momentum`` and ``siflow/beta1`` columns are read as
    ``momentum`` and ``beta1`` (in ``extra``). ``meta["merged_rows"]`` counts the rows
    merged away and ``meta["merge_conflicts"]`` the cells where two rows of one step
    disagreed (the later value is kept).
    """
    p = check_path(path, allow_dir=True)
    if p.is_dir():
        if not (p / "metrics.csv").is_file():
            raise ValueError(
                f"{str(p)!r} has no metrics.csv; pass the CSVLogger version directory "
                f"(lightning_logs/version_N) or the metrics.csv file"
            )
        p = p / "metrics.csv"
    label = repr(str(p))
    parsed = parse_csv_table(p, label, live=live)
    header, table = parsed.header, parsed.table
    step_col = next((h for h in header if h.strip().lower() == "step"), None)
    if mapping:
        from siflow.io._columns import normalize_mapping

        step_col = normalize_mapping(mapping).get("step", step_col)
    if step_col is None or step_col not in table:
        raise ValueError(
            f"{label} has no numeric 'step' column (header: {', '.join(header)}); "
            f"is it a Lightning CSVLogger metrics.csv? pass mapping={{'step': '<column>'}} "
            f"or fmt='csv'"
        )
    n_before = len(table[step_col])
    merged, conflicts = merge_rows_by_step(table, step_col, label)
    for column, name in _METRIC_COLUMNS.items():
        if column in merged and name not in merged:
            merged[name] = merged.pop(column)
    meta: dict[str, Any] = _read_hparams(p.parent / "hparams.yaml")
    meta["merged_rows"] = int(n_before - merged[step_col].size)
    meta["merge_conflicts"] = int(conflicts)
    meta.update(parsed.meta())
    return build_trajectory(
        merged,
        path=p,
        fmt="lightning",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=meta,
    )


def detect(path: Path, head: bytes) -> bool:
    """A directory holding ``metrics.csv``, or a CSV with ``epoch`` and ``step`` columns and
    blank cells (or named ``metrics.csv``)."""
    if path.is_dir():
        return (path / "metrics.csv").is_file()
    lines = _head_lines(head)
    if not lines:
        return False
    cells = [c.strip().strip('"').lower() for c in lines[0].split(",")]
    if "epoch" not in cells or "step" not in cells:
        return False
    body = lines[1:200]
    sparse = any(",," in ln or ln.rstrip().endswith(",") or ln.startswith(",") for ln in body)
    return sparse or path.name == "metrics.csv"


def _head_lines(head: bytes) -> list[str]:
    if b"\x00" in head:
        return []
    text = head.decode("utf-8-sig", errors="ignore")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
