"""The table -> :class:`~siflow.trajectory.Trajectory` step shared by every reader.

:func:`build_trajectory` runs five named steps, each a small function:

1. :func:`resolve_columns`: which column is which field (``mapping`` first, then
   the conventions of :mod:`siflow.io._columns`), and the per-group columns;
2. :func:`choose_group`: the SI group (``group=``), or ``"sum"`` over groups;
3. :func:`step_axis`: the step axis (a step column, an epoch column times
   ``steps_per_epoch``, or the reader's own axis), rows without a step or any
   value dropped, duplicate or decreasing steps rejected;
4. :func:`sphere_conversions`: raw gradient norm and sharpness moved to the
   unit sphere and ``elr`` derived, all through :mod:`siflow.theory`;
5. :func:`provenance`: ``meta`` records which column became which field, what was
   converted, dropped or noted, so a reader of the trajectory can check it.

Value checks: a negative weight norm, or a norm column that is zero at every row,
is not a weight norm and raises ``ValueError`` naming the column and the row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow import theory
from siflow.io._columns import (
    _GROUP_NORM_FIELDS,
    _PER_GROUP_ONLY,
    _TOTAL_GROUPS,
    MAPPING_KEYS,
    _find_alias,
    _label,
    _norm_name,
    _original_group_names,
    _pick_group,
    alias_columns,
    check_steps_per_epoch,
    detect_groups,
    lr_group_columns,
    normalize_mapping,
    optimizer_from_columns,
)
from siflow.trajectory import FIELDS, Trajectory, forward_filled

__all__ = ["build_trajectory", "resolve_columns", "choose_group", "step_axis", "root_sum_square"]

Columns = dict[str, NDArray[Any]]


@dataclass
class Resolved:
    """Result of :func:`resolve_columns`: field -> column, and per-group columns."""

    found: dict[str, str]
    groups: dict[str, dict[str, str]]


@dataclass
class GroupChoice:
    """Result of :func:`choose_group`: the chosen group and its field columns."""

    name: str | None = None
    columns: Columns = field(default_factory=dict)
    note: str | None = None


@dataclass
class Axis:
    """Result of :func:`step_axis`: steps of the kept rows and what was done to the rows."""

    step: NDArray[Any]
    keep: NDArray[np.bool_]
    rows: NDArray[np.int64]
    time_unit: str
    dropped: int
    merged: int | None = None
    #: data rows (1 = first after the header) with a value but no step, left out
    no_step: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: how epochs became steps (``meta["time_note"]``), None when the log has steps
    note: str | None = None


def root_sum_square(columns: Sequence[NDArray[Any]]) -> NDArray[np.float64]:
    """Norm of a concatenation from the norms of its parts: ``sqrt(sum_g rho_g**2)``."""
    stack = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(np.sum(stack**2, axis=1))


# ----------------------------------------------------------------------- 0. the table
def _as_columns(
    table: Mapping[str, NDArray[Any]], step: NDArray[Any] | None, label: str
) -> tuple[Columns, int]:
    """Columns as 1-d arrays of one length (int64 kept exact, anything else float64)."""
    cols: Columns = {}
    n_rows: int | None = None
    for name, values in table.items():
        arr = np.asarray(values).reshape(-1)
        if arr.dtype.kind not in "iu":
            arr = np.asarray(arr, dtype=np.float64)
        elif arr.dtype.kind == "u":
            arr = arr.astype(np.int64)
        if n_rows is None:
            n_rows = arr.size
        elif arr.size != n_rows:
            raise ValueError(f"{label}: column {name!r} has {arr.size} rows, expected {n_rows}")
        cols[str(name)] = arr
    if step is None and not cols:
        raise ValueError(f"{label} has no numeric columns; is it the right file and format?")
    return cols, n_rows if n_rows is not None else (0 if step is None else len(step))


def _blank(values: NDArray[Any]) -> NDArray[np.bool_]:
    if values.dtype.kind in "iu":
        return np.zeros(values.shape, dtype=bool)
    return ~np.isfinite(values)


# ------------------------------------------------------------------ 1. resolve columns
def resolve_columns(
    cols: Columns, mapping: dict[str, str | None], label: str, *, has_step: bool
) -> Resolved:
    """Find each field's column: ``mapping`` first, then aliases, then per-group columns."""
    available = ", ".join(cols) or "none"
    names = {c: _norm_name(c) for c in cols}
    found: dict[str, str] = {}
    taken: set[str] = set()
    for key, column in mapping.items():
        if column is None:
            continue
        if column not in cols:
            lowered = [c for c in cols if c.lower() == column.lower()]
            if len(lowered) != 1:
                raise ValueError(
                    f"{label}: mapping {key}={column!r} names no column of the log "
                    f"(columns: {available}); fix it with mapping={{'{key}': '<column>'}}"
                )
            column = lowered[0]
        found[key] = column
        taken.add(column)
    for key in MAPPING_KEYS:
        if key in mapping or (key == "step" and has_step):
            continue
        hit = _find_alias(key, names, taken)
        if hit is not None:
            found[key] = hit
            taken.add(hit)
    groups = detect_groups(names, taken)
    for fld, per in groups.items():
        for total in _TOTAL_GROUPS:
            if total in per and fld not in found and fld not in mapping:
                found[fld] = per.pop(total)
                taken.add(found[fld])
    return Resolved(found, groups)


def _finite_span(values: NDArray[Any]) -> tuple[int, int, int]:
    """``(first, last, count)`` of the rows holding a value (``count`` 0: none)."""
    idx = np.flatnonzero(~_blank(values))
    return (int(idx[0]), int(idx[-1]), int(idx.size)) if idx.size else (0, -1, 0)


def join_renamed(cols: Columns, resolved: Resolved, mapping: dict[str, str | None]) -> list[str]:
    """Join a field's column with another spelling of it that takes over part-way (a
    key renamed mid-run: ``loss`` up to some row, ``train_loss`` after it).

    The two columns must each hold two values or more and never share a row, one
    ending before the other begins; anything else (a run's mean loss written once at
    the end) stays apart. ``cols`` is changed in place; returns the notes.
    """
    names = {c: _norm_name(c) for c in cols}
    grouped = {c for per in resolved.groups.values() for c in per.values()}
    taken = set(resolved.found.values()) | grouped
    notes = []
    for fld, column in resolved.found.items():
        if fld in ("step", "epoch") or fld in mapping or cols[column].dtype.kind != "f":
            continue
        for other in alias_columns(fld, names):
            if other in taken or other not in cols or cols[other].dtype.kind != "f":
                continue
            a, b = _finite_span(cols[column]), _finite_span(cols[other])
            if min(a[2], b[2]) < 2 or not (a[1] < b[0] or b[1] < a[0]):
                continue
            cols[column] = np.where(_blank(cols[column]), cols[other], cols[column])
            del cols[other]
            taken.add(other)
            first, second = (column, other) if a[1] < b[0] else (other, column)
            notes.append(
                f"{fld}: column {first!r} stops where {second!r} starts (a key renamed "
                f"mid-run?): read as one {fld}; pass mapping={{'{fld}': '<column>'}} to "
                f"read one of them"
            )
    return notes


def param_group_lr(
    cols: Columns, resolved: Resolved, mapping: dict[str, str | None]
) -> tuple[list[str], list[str]]:
    """The lr from Lightning's per-param-group columns ``lr-<Optimizer>/pg<k>`` when the
    log has no lr column: read when the groups share one lr; otherwise named in a note
    (and returned) with the ``mapping`` that picks the SI group's. Returns ``(notes,
    columns)``."""
    if "lr" in resolved.found or "lr" in mapping:
        return [], []
    groups = [c for c in lr_group_columns(cols) if c not in resolved.found.values()]
    if not groups:
        return [], []
    first = cols[groups[0]].astype(np.float64)
    same = all(
        np.array_equal(first, cols[c].astype(np.float64), equal_nan=True) for c in groups[1:]
    )
    listed = ", ".join(groups)
    if same:
        resolved.found["lr"] = groups[0]
        if len(groups) == 1:
            return [], groups
        return [
            f"lr read from {groups[0]!r}: the param groups' lr columns agree ({listed})"
        ], groups
    return [
        f"lr not read: the log has one lr per param group ({listed}) and they differ; "
        f"pass mapping={{'lr': '{groups[0]}'}} (the SI group's column)"
    ], groups


#: The metric siflow's training-loop callbacks log for SGD-type optimizers only (the
#: momentum term of the first param group; Adam-type optimizers and Lion log
#: ``siflow/beta1`` instead): :func:`siflow.integrations._common.logger_metrics`.
_SGD_TYPE_METRIC = "siflow/momentum"


def _sgd_type_column(cols: Columns) -> str | None:
    """The column of :data:`_SGD_TYPE_METRIC`, under any reporter prefix (``train/``)."""
    for name in cols:
        if name.strip() == _SGD_TYPE_METRIC or name.strip().endswith("/" + _SGD_TYPE_METRIC):
            return name
    return None


#: How the note of an assumed optimizer starts: :data:`siflow.io.tabular.HF_OPTIMIZER_NOTE`
#: is built on it, and :func:`_drop_assumption` finds the note by it.
ASSUMED_OPTIMIZER_NOTE = "optimizer taken as adamw, the Trainer's optim"


def _drop_assumption(known: dict[str, Any]) -> None:
    """Forget an optimizer the reader assumed (``optimizer_assumed``: a Hugging Face log's
    default AdamW) and its note, once the log's own columns name the optimizer."""
    if known.pop("optimizer_assumed", False):
        notes = known.get("notes") or []
        known["notes"] = [n for n in notes if not str(n).startswith(ASSUMED_OPTIMIZER_NOTE)]


def infer_optimizer(cols: Columns, known: dict[str, Any]) -> list[str]:
    """``known["optimizer"]`` from the log's columns when its metadata names none, or
    only assumed one (``optimizer_assumed``, a Hugging Face log's default AdamW).

    The columns that name it: ``siflow/momentum``, which siflow's callbacks log for
    SGD-type optimizers only, and Lightning's ``lr-<Optimizer>``. ``optimizer_source``
    says which; returns the note.
    """
    if known.get("optimizer") and not known.get("optimizer_assumed"):
        return []
    sgd_column = _sgd_type_column(cols)
    if sgd_column is not None:
        _drop_assumption(known)
        known["optimizer"] = "sgd"
        known["optimizer_source"] = f"column {sgd_column!r}"
        return [
            f"optimizer taken as sgd (SGD-type: plain or heavy ball, with the logged "
            f"momentum) from column {sgd_column!r}, which siflow's training-loop callbacks "
            f"log for SGD-type optimizers only; pass optimizer= if another ran"
        ]
    hit = optimizer_from_columns(cols)
    if hit is None:
        return []
    name, columns = hit
    _drop_assumption(known)
    known["optimizer"] = name
    known["optimizer_source"] = f"column {columns[0]!r}"
    return [
        f"optimizer taken as {name} from column {columns[0]!r} (Lightning's "
        f"LearningRateMonitor names its lr columns lr-<optimizer class>); pass optimizer= if "
        f"another ran"
    ]


# --------------------------------------------------------------------- 2. choose group
def choose_group(
    group: str | None,
    resolved: Resolved,
    cols: Columns,
    mapping: dict[str, str | None],
    label: str,
) -> GroupChoice:
    """The SI group to read: ``group=`` a name, ``"sum"``, or the only group there is."""
    groups = resolved.groups
    if group is not None and _norm_name(group) == "sum":
        return _sum_over_groups(groups, cols, label)
    if group is not None:
        return _one_group(group, groups, cols, label)
    if "rho" in resolved.found or "rho" in mapping or not groups.get("rho"):
        return GroupChoice()
    per = groups["rho"]
    if len(per) > 1:
        raise ValueError(
            f"{label} has per-group norms ({', '.join(per)}) and no total norm column; "
            f"pass group='<name>', group='sum' for sqrt(sum of squares), "
            f"or mapping={{'rho': '<column>'}}"
        )
    only = next(iter(per))
    return GroupChoice(only, {f: cols[p[only]] for f, p in groups.items() if only in p})


def _sum_over_groups(groups: dict[str, dict[str, str]], cols: Columns, label: str) -> GroupChoice:
    if not groups.get("rho"):
        raise ValueError(
            f"{label}: group='sum' needs per-group norm columns (like norm/<layer>) but "
            f"the log has none (columns: {', '.join(cols) or 'none'}); drop group="
        )
    out: Columns = {}
    for fld in _GROUP_NORM_FIELDS:
        per = groups.get(fld)
        # a gradient total needs the gradient of every group whose norm is summed
        if per and set(per) >= set(groups["rho"]):
            out[fld] = root_sum_square([cols[per[g]] for g in groups["rho"]])
    note = "sum: sqrt of the sum of squares over groups " + ", ".join(groups["rho"])
    return GroupChoice("sum", out, note)


def _one_group(
    group: str, groups: dict[str, dict[str, str]], cols: Columns, label: str
) -> GroupChoice:
    names = _original_group_names(groups)
    if not names:
        raise ValueError(
            f"{label} has no per-group columns (like norm/<layer> or <layer>_norm), so "
            f"group={group!r} cannot be applied (columns: {', '.join(cols) or 'none'}); "
            f"drop group="
        )
    chosen = _pick_group(group, names, label)
    out = {f: cols[per[chosen]] for f, per in groups.items() if chosen in per}
    if "rho" not in out:
        raise ValueError(
            f"{label}: group {chosen!r} has no norm column; pass group= one of "
            f"{', '.join(groups.get('rho', {})) or 'none'} or mapping={{'rho': '<column>'}}"
        )
    return GroupChoice(chosen, out)


# ------------------------------------------------------------------------ 3. step axis
def _epoch_axis(found: dict[str, str], mapping: dict[str, str | None]) -> bool:
    """Whether the time axis comes from the epoch column (no step column, or an epoch
    column mapped without a step)."""
    return "step" not in found or ("epoch" in mapping and "step" not in mapping)


def _raw_step(
    cols: Columns,
    found: dict[str, str],
    mapping: dict[str, str | None],
    steps_per_epoch: int | None,
    label: str,
) -> tuple[NDArray[Any], str]:
    """The step column (or epochs times ``steps_per_epoch``) before any row is dropped."""
    if not _epoch_axis(found, mapping):
        return cols[found["step"]], "step"
    if "epoch" not in found:
        raise ValueError(
            f"{label} has no step column (looked for step, iter, iteration, epoch; "
            f"columns: {', '.join(cols) or 'none'}); pass mapping={{'step': '<column>'}} or "
            f"mapping={{'epoch': '<column>'}}"
        )
    epoch = cols[found["epoch"]]
    if steps_per_epoch is not None:
        return epoch_steps(epoch, steps_per_epoch), "step"
    finite = epoch[~_blank(epoch)]
    if np.any(finite != np.round(finite)):
        raise ValueError(
            f"{label}: epoch column {found['epoch']!r} has fractional epochs and no "
            f"step column; pass steps_per_epoch=N or mapping={{'step': '<column>'}}"
        )
    return epoch, "epoch"


def _epoch_offset(epoch: NDArray[Any]) -> float | None:
    """Epochs to add before converting to steps: 1 for whole epochs counted from 0, 0 for
    whole epochs counted from 1 (each row at its epoch's end), None for fractional
    epochs (progress through training, converted as they are)."""
    finite = epoch[~_blank(epoch)].astype(np.float64)
    if finite.size == 0 or np.any(finite != np.round(finite)):
        return None
    return 1.0 if finite.min() == 0 else 0.0


def epoch_steps(epoch: NDArray[Any], steps_per_epoch: int) -> NDArray[np.float64]:
    """Optimizer steps of an epoch column (:func:`epoch_note` says which convention).

    A row of whole epoch ``e`` holds the values at the end of that epoch (Keras'
    ``CSVLogger``, a ``for epoch in range(E)`` loop, the seed paper's table): step
    ``(e + 1) * N`` when the epochs count from 0, ``e * N`` when they count from 1.
    Fractional epochs (progress, as Hugging Face logs it) are ``round(e * N)``.
    """
    offset = _epoch_offset(epoch) or 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return np.rint((epoch.astype(np.float64) + offset) * steps_per_epoch)


def epoch_note(epoch: NDArray[Any], steps_per_epoch: int) -> str:
    """The sentence saying how :func:`epoch_steps` placed the epochs."""
    offset = _epoch_offset(epoch)
    n = steps_per_epoch
    if offset is None:
        return f"fractional epochs converted to steps as round(epoch * {n})"
    if offset:
        return (
            f"epochs count from 0 and each row holds its epoch's end: epoch e is step "
            f"(e+1)*{n} (Keras' CSVLogger convention)"
        )
    return f"epochs count from 1 and each row holds its epoch's end: epoch e is step e*{n}"


def step_axis(
    cols: Columns,
    found: dict[str, str],
    mapping: dict[str, str | None],
    *,
    step: NDArray[Any] | None,
    time_unit: str | None,
    steps_per_epoch: int | None,
    n_rows: int,
    label: str,
) -> Axis:
    """Steps of the rows kept: rows without a step or without any value are dropped.

    Raises ``ValueError`` for fractional, out-of-range or decreasing steps.
    """
    note = None
    if step is not None:
        raw = np.asarray(step).reshape(-1)
        if raw.size != n_rows:
            raise ValueError(f"{label}: step axis has {raw.size} rows, expected {n_rows}")
        unit = time_unit or "step"
    else:
        raw, unit = _raw_step(cols, found, mapping, steps_per_epoch, label)
        if steps_per_epoch is not None and _epoch_axis(found, mapping):
            note = epoch_note(cols[found["epoch"]], steps_per_epoch)
    has_step = ~_blank(raw)
    keep = has_step.copy()
    any_value = np.ones(n_rows, dtype=bool)
    value_cols = [c for c in cols if c not in (found.get("step"), found.get("epoch"))]
    if value_cols:
        any_value = np.zeros(n_rows, dtype=bool)
        for c in value_cols:
            any_value |= ~_blank(cols[c])
        keep &= any_value
    if not keep.any():
        raise ValueError(
            f"{label}: no row has both a step and a value ({n_rows} rows, all blank or NaN); "
            f"check the file or the mapping={{'step': '<column>'}} choice"
        )
    rows = np.flatnonzero(keep) + 1  # data-row numbers (1 = first row after the header)
    kept = raw[keep]
    _check_steps(kept, rows, found, label)
    no_step = np.flatnonzero(~has_step & any_value) + 1
    return Axis(kept, keep, rows, unit, int(n_rows - keep.sum()), no_step=no_step, note=note)


def _check_steps(
    steps: NDArray[Any], rows: NDArray[np.int64], found: dict[str, str], label: str
) -> None:
    if steps.dtype.kind == "f" and np.any(steps != np.round(steps)):
        raise ValueError(
            f"{label}: step column {found.get('step', 'step')!r} holds fractional values; "
            f"map an integer step column with mapping={{'step': '<column>'}}, or an epoch "
            f"column with mapping={{'epoch': '<column>'}} and steps_per_epoch="
        )
    if steps.dtype.kind == "f" and np.any(np.abs(steps) > 2.0**62):
        raise ValueError(
            f"{label}: step values up to {np.max(np.abs(steps)):.3g} are out of range for an "
            f"optimizer step; pass mapping={{'step': '<column>'}} for the right column"
        )
    if steps.size > 1 and np.any(steps[1:] < steps[:-1]):
        i = int(np.argmax(steps[1:] < steps[:-1]))
        raise ValueError(
            f"{label}: step goes back from {int(steps[i])} to {int(steps[i + 1])} at data "
            f"row {int(rows[i + 1])} (a restarted run or concatenated logs?); split the log "
            f"and read one segment, or pass mapping={{'step': '<column>'}} for a monotone column"
        )


def _merge_equal_steps(
    axis: Axis, cols: Columns, group_cols: Columns, label: str
) -> tuple[Columns, Columns]:
    """Merge consecutive rows of one step whose non-blank cells agree.

    Loggers often write a training record and an evaluation record for the same
    step (blank cells elsewhere); those rows are joined. Rows of one step that
    hold *different* values in a column are true duplicates (a restarted run, a
    log appended twice) and raise ``ValueError`` naming the step, column and rows.
    """
    step = axis.step
    starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])

    def merge(name: str, v: NDArray[Any]) -> NDArray[Any]:
        v = v.astype(np.float64)
        blank = np.isnan(v)
        lo = np.minimum.reduceat(np.where(blank, np.inf, v), starts)
        hi = np.maximum.reduceat(np.where(blank, -np.inf, v), starts)
        count = np.add.reduceat((~blank).astype(np.int64), starts)
        bad = (count > 1) & (lo != hi)
        if bad.any():
            g = int(np.argmax(bad))
            first = int(axis.rows[starts[g]])
            last = int(axis.rows[starts[g + 1] - 1]) if g + 1 < starts.size else int(axis.rows[-1])
            raise ValueError(
                f"{label}: step {int(step[starts[g]])} repeats with different {name!r} values "
                f"({lo[g]:.6g} and {hi[g]:.6g}; data rows {first}-{last}): duplicate rows of a "
                f"restarted run or merged logs? split the log and read one segment"
            )
        return np.where(count > 0, hi, np.nan)

    merged_cols = {k: merge(k, v) for k, v in cols.items()}
    merged_groups = {k: merge(k, v) for k, v in group_cols.items()}
    axis.merged = int(step.size - starts.size)
    axis.rows = axis.rows[starts]
    axis.step = step[starts]
    return merged_cols, merged_groups


# ------------------------------------------------------------------ value checks
def _check_norm(values: NDArray[Any] | None, column: str, rows: NDArray[np.int64], label: str):
    """A weight norm is positive: refuse negative values and an all-zero column."""
    if values is None:
        return
    v = values.astype(np.float64)
    neg = np.flatnonzero(v < 0)
    if neg.size:
        i = int(neg[0])
        raise ValueError(
            f"{label}: weight norm column {column!r} is negative ({v[i]:.6g}) at data row "
            f"{int(rows[i])} ({neg.size} negative rows); a norm is >= 0: is it a log-norm or "
            f"another quantity? pass mapping={{'rho': '<column>'}} for the weight norm"
        )
    finite = v[np.isfinite(v)]
    if finite.size and not np.any(finite != 0):
        raise ValueError(
            f"{label}: weight norm column {column!r} is 0 at every row: not a weight norm "
            f"(a placeholder or a norm of frozen zeros?); pass mapping={{'rho': '<column>'}}"
        )


# ------------------------------------------------------------ 4. sphere conversions
@dataclass
class Fields:
    """Trajectory fields plus what was converted or derived (for ``meta``)."""

    values: dict[str, NDArray[np.float64] | None]
    notes: dict[str, Any]
    derived: list[str]


def _field_getter(cols: Columns, found: dict[str, str], choice: GroupChoice):
    def col(fld: str) -> NDArray[np.float64] | None:
        if fld in choice.columns:
            return np.asarray(choice.columns[fld], dtype=np.float64)
        if choice.name not in (None, "sum") and fld in _PER_GROUP_ONLY:
            # never pair a group's norm with the total's gradient or angle
            return None
        return np.asarray(cols[found[fld]], dtype=np.float64) if fld in found else None

    return col


def sphere_conversions(
    cols: Columns, found: dict[str, str], choice: GroupChoice, known: dict[str, Any]
) -> Fields:
    """Fields of the trajectory, raw quantities moved to the unit sphere.

    With ``rho = |w|`` of the chosen SI group (formulas in :mod:`siflow.theory`,
    docs/theory.md section 0): ``grad_norm_sphere = rho * |grad L(w)|``
    (:func:`~siflow.theory.sphere_grad_norm`, exact for an SI loss),
    ``sharpness_sphere = rho**2 * lambda_max(hess L(w))``
    (:func:`~siflow.theory.sphere_sharpness`; the sphere's value at critical
    points, an upper bound elsewhere) and ``elr = lr / rho**2``
    (:func:`~siflow.theory.effective_lr`, per row for a varying ``lr`` column).
    """
    col = _field_getter(cols, found, choice)
    values: dict[str, NDArray[np.float64] | None] = {f: None for f in FIELDS}
    for fld in ("loss", "rho", "angular_update", "elr", "sharpness_sphere"):
        values[fld] = col(fld)
    rho = values["rho"]
    notes: dict[str, Any] = {}
    gsphere, graw = col("grad_norm_sphere"), col("grad_norm_raw")
    if gsphere is not None:
        values["grad_norm_sphere"] = gsphere
        notes["grad_norm"] = "read as on the sphere (|w| |grad L(w)|)"
    elif graw is not None and rho is not None:
        values["grad_norm_sphere"] = np.asarray(theory.sphere_grad_norm(rho, graw))
        notes["grad_norm"] = "converted from raw: grad_norm_sphere = rho * |grad L(w)|"
    elif graw is not None:
        notes["grad_norm"] = "raw |grad L(w)| kept in extra (no rho to convert)"
    sraw = col("sharpness_raw")
    if values["sharpness_sphere"] is None and sraw is not None:
        if rho is not None:
            values["sharpness_sphere"] = np.asarray(theory.sphere_sharpness(rho, sraw))
            notes["sharpness"] = (
                "converted from raw: sharpness_sphere = rho**2 * top eigenvalue of hess L(w) "
                "(the sphere's value at critical points, an upper bound elsewhere)"
            )
        else:
            notes["sharpness"] = "raw sharpness kept in extra (no rho to convert)"
    lr_values = _hyperparameters(cols, found, known, notes)
    derived: list[str] = []
    if values["elr"] is None and rho is not None:
        if known.get("lr") is not None:
            values["elr"] = np.asarray(theory.effective_lr(float(known["lr"]), rho))
            derived.append("elr = lr / rho**2")
        elif lr_values is not None:
            lr_rows = forward_filled(lr_values, known.get("lr_init"))
            values["elr"] = np.asarray(theory.effective_lr(lr_rows, rho))
            derived.append("elr = lr column / rho**2")
    return Fields(values, notes, derived)


def _constant(values: NDArray[Any]) -> float | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo)):
        return hi
    return None


def _hyperparameters(
    cols: Columns, found: dict[str, str], known: dict[str, Any], notes: dict[str, Any]
) -> NDArray[np.float64] | None:
    """A constant ``lr``/``wd`` column goes to ``known``; returns the lr column if any.

    A varying lr column is what the optimizer ran with: it wins over an ``lr`` of the
    log's metadata (e.g. the initial lr in Lightning's ``hparams.yaml``), which is kept
    as ``lr_init``, as the seed-paper readers keep the lr of the run's name.
    """
    lr_values = cols[found["lr"]].astype(np.float64) if "lr" in found else None
    if lr_values is not None:
        lr_const = _constant(lr_values)
        if lr_const is None and np.any(np.isfinite(lr_values)):
            notes["lr_schedule"] = f"lr varies: column {found['lr']!r} kept in extra"
            if known.get("lr") is not None:
                known["lr_init"] = known.pop("lr")
                notes["lr_schedule"] += (
                    f" and used per row (the metadata's lr={known['lr_init']:g} is kept as lr_init)"
                )
        elif lr_const is not None and known.get("lr") is None:
            known["lr"] = lr_const
    if "wd" in found and known.get("wd") is None:
        wd_const = _constant(cols[found["wd"]].astype(np.float64))
        if wd_const is not None:
            known["wd"] = wd_const
    return lr_values


def lr_coverage(
    fields: Fields, cols: Columns, found: dict[str, str], steps: NDArray[Any], meta_lr: bool
) -> list[str]:
    """Rows before an lr column's first value get no derived ``elr`` (a later lr is not
    spread back over them); returns the note. ``meta_lr``: the log's metadata gave an
    lr, which holds on every row."""
    if "lr" not in found or meta_lr:
        return []
    first, _last, count = _finite_span(cols[found["lr"]])
    if count == 0 or first == 0:
        return []
    what = "no lr"
    if fields.derived and fields.values["elr"] is not None:
        elr = np.array(fields.values["elr"], dtype=np.float64)
        elr[:first] = np.nan
        fields.values["elr"] = elr
        what = "no lr and no elr"
    note = (
        f"lr is logged from step {int(steps[first])} on (column {found['lr']!r}, {count} of "
        f"{steps.size} rows): the {first} row(s) before it have {what}"
    )
    if "lr_schedule" not in fields.notes:
        note += "; the lr in meta is the value logged after"
    return [note]


# ------------------------------------------------------------------------ 5. provenance
def _extra_columns(
    cols: Columns, found: dict[str, str], choice: GroupChoice, fields: Fields, known: dict
) -> dict[str, NDArray[np.float64]]:
    """Every column not consumed as a field (raw inputs of conversions stay)."""
    consumed = set()
    for fld in ("loss", "rho", "angular_update", "elr", "sharpness_sphere", "grad_norm_sphere"):
        if fld in found and fld not in choice.columns and fields.values[fld] is not None:
            consumed.add(found[fld])
    if "step" in found:
        consumed.add(found["step"])
    if "lr" in found and known.get("lr") is not None and "lr_schedule" not in fields.notes:
        consumed.add(found["lr"])
    extra: dict[str, NDArray[np.float64]] = {}
    for name, values in cols.items():
        if name in consumed:
            continue
        key = name if name not in FIELDS and name != "step" else f"column:{name}"
        extra[key] = np.asarray(values, dtype=np.float64)
    return extra


def provenance(
    *,
    path: str | os.PathLike[str] | None,
    fmt: str,
    resolved: Resolved,
    choice: GroupChoice,
    axis: Axis,
    fields: Fields,
    known: dict[str, Any],
    steps_per_epoch: int | None,
) -> dict[str, Any]:
    """``meta``: source, format, field -> column, groups, time unit, rows dropped, notes."""
    columns_used = dict(resolved.found)
    if choice.name is not None:
        for fld in choice.columns:
            columns_used[fld] = (
                "sum over groups" if choice.name == "sum" else resolved.groups[fld][choice.name]
            )
    meta: dict[str, Any] = dict(fields.notes)
    if axis.merged is not None:
        meta["merged_rows"] = axis.merged
    meta.update(
        {
            "source": str(path) if path is not None else None,
            "format": fmt,
            "columns": columns_used,
            "dropped_rows": axis.dropped,
            "time_unit": axis.time_unit,
            "steps_per_epoch": steps_per_epoch,
        }
    )
    if axis.note is not None and "time_note" not in known:
        meta["time_note"] = axis.note
    if axis.time_unit == "epoch" and "time_note" not in known:
        meta["time_note"] = (
            "no step column and no steps_per_epoch: epochs are used as steps; pass "
            "steps_per_epoch= to convert"
        )
    group_names = _original_group_names(resolved.groups)
    if group_names:
        meta["groups"] = group_names
    if choice.name is not None:
        meta["group"] = choice.name
        if choice.note:
            meta["group_note"] = choice.note
    if fields.derived:
        meta["derived"] = fields.derived
    for key, value in known.items():
        meta[key] = value
    return meta


def _add_note(meta: dict[str, Any], note: str) -> None:
    meta.setdefault("notes", [])
    if note not in meta["notes"]:
        meta["notes"].append(note)


# ----------------------------------------------------------------------------- build
def build_trajectory(
    table: Mapping[str, NDArray[Any]],
    *,
    path: str | os.PathLike[str] | None,
    fmt: str,
    mapping: Mapping[str, str | None] | Sequence[str] | None = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    meta: Mapping[str, Any] | None = None,
    step: NDArray[Any] | None = None,
    time_unit: str | None = None,
) -> Trajectory:
    """Build a :class:`Trajectory` from a table of named numeric columns.

    Parameters
    ----------
    table : mapping of str to 1-d array
        The log's numeric columns (float64 with NaN for blank cells, or int64),
        all of one length.
    path : path-like or None
        The file, for messages and ``meta["source"]``.
    fmt : str
        Format name recorded in ``meta["format"]``.
    mapping : dict or list of ``field=column``, optional
        Overrides the automatic column detection (see
        :func:`siflow.io.parse_mapping`).
    steps_per_epoch : int, optional
        Converts an epoch column to steps: ``step = round(epoch * steps_per_epoch)``.
    group : str, optional
        SI group to use when the log has per-group columns: a group name, or
        ``"sum"`` for the total ``rho = sqrt(sum_g rho_g**2)`` (and likewise for
        gradient norms with per-group columns). The default uses a total column
        when present. With one group chosen, total gradient-norm, angle, elr and
        sharpness columns are not used (they do not describe that group); with
        ``"sum"`` they are.
    meta : dict, optional
        Metadata the reader already knows (lr, wd, notes, ...); columns do not
        override it.
    step : array, optional
        The step axis when the reader has it outside the table.
    time_unit : str, optional
        Unit of ``step`` when given (``"step"`` or ``"epoch"``).

    Returns
    -------
    Trajectory
        ``meta`` records ``source``, ``format``, ``columns`` (field -> column),
        ``grad_norm`` (what was done with the gradient norm), ``dropped_rows``,
        ``time_unit`` (``"step"``, or ``"epoch"`` when epochs are the time axis),
        ``steps_per_epoch``, ``group``/``groups`` and ``notes`` (a list of
        sentences a user must see: bad cells, evaluation logs, ...).

    Notes
    -----
    Conversions: see :func:`sphere_conversions`. Row policy: rows without a
    finite step and rows where every value column is blank are dropped and
    counted in ``meta["dropped_rows"]``; a NaN in a value column of a kept row
    stays NaN. Decreasing steps raise ``ValueError``. Consecutive rows of one
    step are merged when their non-blank cells agree (``meta["merged_rows"]``)
    and raise ``ValueError`` when they disagree.
    """
    label = _label(path)
    mapping = normalize_mapping(mapping)
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"group must be a group name or 'sum', got {group!r}")
    cols, n_rows = _as_columns(table, step, label)
    resolved = resolve_columns(cols, mapping, label, has_step=step is not None)
    notes = join_renamed(cols, resolved, mapping)
    group_notes, lr_groups = param_group_lr(cols, resolved, mapping)
    notes += group_notes
    choice = choose_group(group, resolved, cols, mapping, label)
    axis = step_axis(
        cols,
        resolved.found,
        mapping,
        step=step,
        time_unit=time_unit,
        steps_per_epoch=steps_per_epoch,
        n_rows=n_rows,
        label=label,
    )
    if not axis.keep.all():
        cols = {k: v[axis.keep] for k, v in cols.items()}
        choice.columns = {k: v[axis.keep] for k, v in choice.columns.items()}
    if axis.step.size > 1 and np.any(axis.step[1:] == axis.step[:-1]):
        cols, choice.columns = _merge_equal_steps(axis, cols, choice.columns, label)
    known = dict(meta or {})
    notes += infer_optimizer(cols, known)
    if lr_groups and "lr" not in resolved.found:
        known["lr_columns"] = lr_groups
    meta_lr = known.get("lr") is not None
    fields = sphere_conversions(cols, resolved.found, choice, known)
    notes += lr_coverage(fields, cols, resolved.found, axis.step, meta_lr)
    rho_column = "sum over groups" if choice.name == "sum" else None
    if "rho" in choice.columns and choice.name != "sum":
        rho_column = resolved.groups["rho"][choice.name]
    _check_norm(
        fields.values["rho"], rho_column or resolved.found.get("rho", "rho"), axis.rows, label
    )
    extra = _extra_columns(cols, resolved.found, choice, fields, known)
    out_meta = provenance(
        path=path,
        fmt=fmt,
        resolved=resolved,
        choice=choice,
        axis=axis,
        fields=fields,
        known=known,
        steps_per_epoch=steps_per_epoch,
    )
    for note in notes:
        _add_note(out_meta, note)
    if axis.no_step.size:
        shown = ", ".join(str(int(r)) for r in axis.no_step[:3])
        more = ", ..." if axis.no_step.size > 3 else ""
        _add_note(
            out_meta,
            f"{axis.no_step.size} row(s) with values but a blank step left out (data rows "
            f"{shown}{more})",
        )
    return Trajectory(step=axis.step.astype(np.int64), extra=extra, meta=out_meta, **fields.values)
