"""Column detection and the table -> :class:`~siflow.trajectory.Trajectory` step shared by readers.

Every reader turns its file into a *table*: an ordered mapping of column name to a
float64 array (NaN for a blank cell), all of the same length, one entry per logged
row. :func:`build_trajectory` then

1. finds the column of each field, from ``mapping`` first and otherwise among the
   common spellings (:data:`ALIASES`, compared case-insensitively, with ``-`` and
   spaces read as ``_`` and an optional ``train/``, ``train_`` or ``train.`` prefix);
2. finds per-group (per-layer) columns (``norm/conv2``, ``rho/conv2``,
   ``conv2_norm``, ``grad_norm/conv2`` ...) and applies ``group``;
3. builds the step axis (a step column, or an epoch column times
   ``steps_per_epoch``), drops rows without a step or without any value, and
   rejects duplicate or decreasing steps;
4. converts a raw gradient norm to the sphere and a raw sharpness to the sphere
   when ``rho`` is known (see :func:`build_trajectory`), turns a constant ``lr``
   or ``wd`` column into ``meta``, derives ``elr`` when it is missing;
5. keeps every other numeric column in ``Trajectory.extra``.

Everything that was decided is written to ``meta`` so that a reader of the
trajectory can see which column became which field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from siflow import theory
from siflow.trajectory import FIELDS, Trajectory

__all__ = [
    "MAPPING_KEYS",
    "ALIASES",
    "parse_mapping",
    "normalize_mapping",
    "build_trajectory",
    "Table",
]

Table = dict[str, NDArray[np.float64]]

#: Keys accepted in ``mapping`` / ``--map key=column``.
MAPPING_KEYS: tuple[str, ...] = (
    "step",
    "epoch",
    "lr",
    "wd",
    "loss",
    "rho",
    "grad_norm_raw",
    "grad_norm_sphere",
    "elr",
    "angular_update",
    "sharpness_raw",
    "sharpness_sphere",
)

#: Shorthands accepted as mapping keys.
_KEY_SYNONYMS = {
    "grad_norm": "grad_norm_raw",
    "sharpness": "sharpness_raw",
    "norm": "rho",
    "weight_norm": "rho",
    "iteration": "step",
    "effective_lr": "elr",
}

#: Common spellings of each field, in order of preference (normalised: lower case,
#: ``-`` and spaces as ``_``).
ALIASES: dict[str, tuple[str, ...]] = {
    "step": (
        "step",
        "steps",
        "global_step",
        "trainer/global_step",
        "_step",
        "iter",
        "iters",
        "iteration",
        "iterations",
        "it",
    ),
    "epoch": ("epoch", "epochs"),
    "lr": ("lr", "learning_rate", "lr_sgd", "lr_adamw", "lr_adam", "lr_lion"),
    "wd": ("wd", "weight_decay"),
    "loss": (
        "loss",
        "train_loss",
        "training_loss",
        "loss/train",
        "train_loss_step",
        "batch_loss",
        "epoch_loss",
    ),
    "rho": (
        "rho",
        "si_norm",
        "weight_norm",
        "params_norm",
        "param_norm",
        "w_norm",
        "norm",
        "rho/total",
        "norm/total",
        "weight_norm/total",
        "si_norm/total",
    ),
    "grad_norm_raw": (
        "grad_norm_raw",
        "grad_norm",
        "gnorm",
        "gradient_norm",
        "grad_norm/total",
    ),
    "grad_norm_sphere": ("grad_norm_sphere", "gnorm_sphere", "g_tilde"),
    "elr": ("elr", "effective_lr", "eff_lr", "effective_learning_rate"),
    "angular_update": ("angular_update", "angle", "angular_update_rad"),
    "sharpness_sphere": ("sharpness_sphere",),
    "sharpness_raw": ("sharpness_raw", "sharpness", "lambda_max", "hessian_top_eig"),
}

_PREFIXES = ("train/", "train_", "train.")

#: Fields that may come per group, with the column prefixes (``<prefix><sep><group>``)
#: and suffixes (``<group><sep><suffix>``) that mark a group column.
_GROUP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rho": (
        ("norm", "rho", "si_norm", "weight_norm", "w_norm", "param_norm", "params_norm"),
        ("norm", "rho", "weight_norm", "w_norm"),
    ),
    "grad_norm_raw": (("grad_norm", "gnorm", "grad_norm_raw"), ("grad_norm", "gnorm")),
    "grad_norm_sphere": (("grad_norm_sphere",), ("grad_norm_sphere",)),
    "angular_update": (("angular_update", "angle"), ("angular_update", "angle")),
    "elr": (("elr", "effective_lr"), ("elr", "effective_lr")),
}
_TOTAL_GROUPS = ("total", "all")
# Names that look like "<group>_norm" but are not the weight norm of a group.
_NOT_GROUPS = {
    "grad",
    "gradient",
    "g",
    "gm",
    "gs",
    "params",
    "param",
    "weight",
    "w",
    "si",
    "total",
    "all",
    "update",
    "clip",
    "train",
    "val",
    "test",
}

_GROUP_NORM_FIELDS = ("rho", "grad_norm_raw", "grad_norm_sphere")
# Fields that describe one SI group: with a group chosen, a total column is not used.
_PER_GROUP_ONLY = (
    "grad_norm_raw",
    "grad_norm_sphere",
    "angular_update",
    "elr",
    "sharpness_raw",
    "sharpness_sphere",
)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _label(path: str | os.PathLike[str] | None) -> str:
    return repr(str(path)) if path is not None else "the log"


def parse_mapping(items: Iterable[str] | str | None) -> dict[str, str | None]:
    """Parse ``--map`` arguments ``["field=column", ...]`` into a mapping.

    Parameters
    ----------
    items : iterable of str, or str
        Entries ``field=column``; a single string may hold several separated by
        commas. ``field`` is one of :data:`MAPPING_KEYS` (or a shorthand:
        ``grad_norm`` means ``grad_norm_raw``, ``sharpness`` means
        ``sharpness_raw``, ``norm`` means ``rho``). An empty column
        (``sharpness_raw=``) switches automatic detection of that field off.

    Returns
    -------
    dict
        Field name to column name (or ``None``).

    Examples
    --------
    >>> parse_mapping(["rho=model/si_norm", "grad_norm=gn"])
    {'rho': 'model/si_norm', 'grad_norm_raw': 'gn'}
    """
    if items is None:
        return {}
    if isinstance(items, str):
        items = [p for p in items.split(",") if p.strip()]
    out: dict[str, str | None] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(
                f"mapping entry {item!r} must look like field=column, e.g. rho=weight_norm "
                f"(fields: {', '.join(MAPPING_KEYS)})"
            )
        key, _, column = item.partition("=")
        key = _canonical_key(key.strip())
        out[key] = column.strip() or None
    return out


def _canonical_key(key: str) -> str:
    k = _norm_name(key)
    k = _KEY_SYNONYMS.get(k, k)
    if k not in MAPPING_KEYS:
        raise ValueError(
            f"mapping field {key!r} is unknown; use one of {', '.join(MAPPING_KEYS)} "
            f"(e.g. --map rho=<column>)"
        )
    return k


def normalize_mapping(mapping: Mapping[str, str | None] | Sequence[str] | None) -> dict:
    """Accept a dict or a list of ``field=column`` strings; check the field names."""
    if mapping is None:
        return {}
    if isinstance(mapping, (list, tuple, str)):
        return parse_mapping(mapping)
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"mapping must be a dict like {{'rho': 'weight_norm'}} or a list of "
            f"'field=column' strings, got {type(mapping).__name__}"
        )
    out: dict[str, str | None] = {}
    for key, column in mapping.items():
        if column is not None and not isinstance(column, str):
            raise ValueError(f"mapping[{key!r}] must be a column name, got {column!r}")
        out[_canonical_key(str(key))] = column or None
    return out


def check_steps_per_epoch(steps_per_epoch: Any) -> int | None:
    """Validate ``steps_per_epoch`` (``None`` or a positive integer)."""
    if steps_per_epoch is None:
        return None
    from siflow._validate import check_positive_int

    return check_positive_int("steps_per_epoch", steps_per_epoch)


# --------------------------------------------------------------------------- detection
def _find_alias(field: str, names: dict[str, str], taken: set[str]) -> str | None:
    """First column whose normalised name is an alias of ``field``."""
    for alias in ALIASES[field]:
        for original, normed in names.items():
            if original not in taken and normed == alias:
                return original
    for alias in ALIASES[field]:
        for original, normed in names.items():
            if original in taken:
                continue
            for prefix in _PREFIXES:
                if normed.startswith(prefix) and normed[len(prefix) :] == alias:
                    return original
    return None


def _split_group(field: str, normed: str) -> str | None:
    """Group name if the normalised column ``normed`` is a per-group column of ``field``."""
    prefixes, suffixes = _GROUP_FIELDS[field]
    for prefix in prefixes:
        for sep in ("/", ":", "."):
            head = prefix + sep
            if normed.startswith(head) and len(normed) > len(head):
                return normed[len(head) :]
    for suffix in suffixes:
        for sep in ("/", ":", ".", "_"):
            tail = sep + suffix
            if normed.endswith(tail) and len(normed) > len(tail):
                group = normed[: -len(tail)]
                last = re.split(r"[/:._]", group)[-1]
                if group in _NOT_GROUPS or last in {"grad", "gradient", "g", "gm", "gs"}:
                    return None
                if field == "rho" and (group.endswith("grad") or group.startswith("grad")):
                    return None
                return group
    return None


def _detect_groups(names: dict[str, str], taken: set[str]) -> dict[str, dict[str, str]]:
    """``{field: {group: column}}`` for the per-group columns of the table."""
    out: dict[str, dict[str, str]] = {}
    claimed: set[str] = set()
    # grad fields first so that "conv1_grad_norm" is not read as rho of "conv1_grad".
    for field in ("grad_norm_sphere", "grad_norm_raw", "angular_update", "elr", "rho"):
        for original, normed in names.items():
            if original in taken or original in claimed:
                continue
            group = _split_group(field, normed)
            if group is None:
                continue
            out.setdefault(field, {})
            out[field].setdefault(group, original)
            claimed.add(original)
    return out


def _original_group_names(groups: dict[str, dict[str, str]]) -> list[str]:
    seen: list[str] = []
    for per in groups.values():
        for g in per:
            if g not in seen and g not in _TOTAL_GROUPS:
                seen.append(g)
    return seen


def _pick_group(group: str, available: list[str], label: str) -> str:
    g = _norm_name(group)
    if g in available:
        return g
    matches = [a for a in available if g in a]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(available) or "none"
    if not matches:
        raise ValueError(
            f"{label} has no SI group {group!r} (groups: {listed}); pass one of them or group='sum'"
        )
    raise ValueError(
        f"{label}: group {group!r} matches several groups ({', '.join(matches)}); "
        f"pass the full name"
    )


# ------------------------------------------------------------------------------ build
def _constant(values: NDArray[np.float64]) -> float | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo)):
        return hi
    return None


def _merge_equal_steps(
    step: NDArray[np.float64],
    cols: dict[str, NDArray[np.float64]],
    group_cols: dict[str, NDArray[np.float64]],
    orig: NDArray[np.int64],
    label: str,
) -> tuple[
    NDArray[np.float64], dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]], int
]:
    """Merge consecutive rows of one step whose non-blank cells agree.

    Loggers often write a training record and an evaluation record for the same
    step (blank cells elsewhere); those rows are joined. Rows of one step that
    hold *different* values in a column are true duplicates (a restarted run, a
    log appended twice) and raise ``ValueError`` naming the step, column and rows.
    """
    starts = np.flatnonzero(np.r_[True, np.diff(step) != 0])

    def merge(name: str, v: NDArray[np.float64]) -> NDArray[np.float64]:
        blank = np.isnan(v)
        lo = np.minimum.reduceat(np.where(blank, np.inf, v), starts)
        hi = np.maximum.reduceat(np.where(blank, -np.inf, v), starts)
        count = np.add.reduceat((~blank).astype(np.int64), starts)
        bad = (count > 1) & (lo != hi)
        if bad.any():
            g = int(np.argmax(bad))
            first = int(orig[starts[g]])
            last = int(orig[starts[g + 1] - 1]) if g + 1 < starts.size else int(orig[-1])
            raise ValueError(
                f"{label}: step {int(step[starts[g]])} repeats with different {name!r} values "
                f"({lo[g]:.6g} and {hi[g]:.6g}; data rows {first}-{last}): duplicate rows of a "
                f"restarted run or merged logs? split the log and read one segment"
            )
        return np.where(count > 0, hi, np.nan)

    merged_cols = {k: merge(k, v) for k, v in cols.items()}
    merged_groups = {k: merge(k, v) for k, v in group_cols.items()}
    return step[starts], merged_cols, merged_groups, int(step.size - starts.size)


def build_trajectory(
    table: Mapping[str, NDArray[np.float64]],
    *,
    path: str | os.PathLike[str] | None,
    fmt: str,
    mapping: Mapping[str, str | None] | Sequence[str] | None = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    meta: Mapping[str, Any] | None = None,
    step: NDArray[Any] | None = None,
) -> Trajectory:
    """Build a :class:`Trajectory` from a table of named float columns.

    Parameters
    ----------
    table : mapping of str to 1-d float array
        The log's numeric columns (NaN for blank cells), all of one length.
    path : path-like or None
        The file, for messages and ``meta["source"]``.
    fmt : str
        Format name recorded in ``meta["format"]``.
    mapping : dict or list of ``field=column``, optional
        Overrides the automatic column detection (see :func:`parse_mapping`).
    steps_per_epoch : int, optional
        Converts an epoch column to steps: ``step = round(epoch * steps_per_epoch)``.
    group : str, optional
        SI group to use when the log has per-group columns: a group name, or
        ``"sum"`` for the total ``rho = sqrt(sum_g rho_g**2)`` (and likewise for
        gradient norms with per-group columns). The default uses a total column
        when present. With one group chosen, total gradient-norm, angle, elr and
        sharpness columns are not used (they do not describe that group; ``elr``
        is derived from the group's ``rho``); with ``"sum"`` they are, since the
        total describes all groups together.
    meta : dict, optional
        Metadata the reader already knows (lr, wd, ...); columns do not override it.
    step : array, optional
        The step axis when the reader has it outside the table (TensorBoard).

    Returns
    -------
    Trajectory
        With ``meta`` recording ``source``, ``format``, ``columns`` (field ->
        column), ``grad_norm`` (what was done with the gradient norm),
        ``dropped_rows``, ``time_unit`` (``"step"``, or ``"epoch"`` when epochs
        were used as steps for lack of ``steps_per_epoch``), ``steps_per_epoch``
        and ``group``.

    Notes
    -----
    Conversions, with ``rho = |w|`` of the chosen SI group:

    * ``grad_norm_sphere = rho * grad_norm_raw``. Exact for a scale-invariant
      loss, since ``grad L(w) = grad L(w/|w|) / |w|`` (theory section 0). Logs
      usually hold the raw ``|grad L(w)|``; a column named like ``grad_norm``
      is read as raw, ``grad_norm_sphere`` as already on the sphere.
    * ``sharpness_sphere = rho**2 * sharpness_raw``, with ``sharpness_raw`` the
      top eigenvalue of the ambient Hessian ``hess L(w)``. Since
      ``hess L(w) = hess L(w/|w|) / |w|**2`` exactly, this is the top eigenvalue
      of ``hess L`` at the unit vector. The Riemannian Hessian on the sphere is
      ``P hess L P`` on the tangent space (``P = I - w w'/|w|^2``; the usual
      ``<w, grad L>`` term vanishes for SI losses), whose top eigenvalue is
      equal at a critical point (there ``hess L(w) w = -grad L(w) = 0``, so the
      other eigenvectors are tangent) and otherwise no larger: the radial
      direction couples through ``grad L``. Checked on a Rayleigh quotient:
      the two differ by 2.6e-4 at ``g~ = 0.08`` and by 1.9e-7 at
      ``g~ = 2.5e-3`` (second order in ``g~``), but by up to O(1) far from a
      minimum. The stability threshold (theory section 2) is a statement at a
      minimum, where they agree.
    * ``elr = lr / rho**2`` when no elr column is present (per row when the log
      has a varying ``lr`` column); exact by definition.

    Row policy: rows without a finite step (a blank or NaN step cell) and rows
    where every value column is blank are dropped and counted in
    ``meta["dropped_rows"]``; a NaN in a value column of a kept row stays NaN
    (a non-finite loss may be the divergence the user wants to see). Decreasing
    steps raise ``ValueError``. Consecutive rows of one step are merged when
    their non-blank cells agree (a training and an evaluation record of the same
    step; counted in ``meta["merged_rows"]``) and raise ``ValueError`` when they
    disagree (true duplicates).
    """
    label = _label(path)
    mapping = normalize_mapping(mapping)
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"group must be a group name or 'sum', got {group!r}")
    cols: dict[str, NDArray[np.float64]] = {}
    n_rows = None
    for name, values in table.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if n_rows is None:
            n_rows = arr.size
        elif arr.size != n_rows:
            raise ValueError(f"{label}: column {name!r} has {arr.size} rows, expected {n_rows}")
        cols[str(name)] = arr
    n_rows = n_rows or (0 if step is None else len(step))
    if step is None and not cols:
        raise ValueError(f"{label} has no numeric columns; is it the right file and format?")
    names = {c: _norm_name(c) for c in cols}
    available = ", ".join(cols) or "none"

    # 1. fields: mapping first, then aliases
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
                    f"(columns: {available}); fix --map {key}=<column>"
                )
            column = lowered[0]
        found[key] = column
        taken.add(column)
    for key in MAPPING_KEYS:
        if key in mapping or (key == "step" and step is not None):
            continue
        hit = _find_alias(key, names, taken)
        if hit is not None:
            found[key] = hit
            taken.add(hit)
    # a grad_norm_sphere column wins over a raw one for the same thing
    groups = _detect_groups(names, taken)
    for field, per in groups.items():
        for total in _TOTAL_GROUPS:
            if total in per and field not in found and field not in mapping:
                found[field] = per.pop(total)
                taken.add(found[field])

    # 2. groups
    group_names = _original_group_names(groups)
    chosen_group: str | None = None
    group_cols: dict[str, NDArray[np.float64]] = {}
    group_note: str | None = None
    if group is not None and _norm_name(group) == "sum":
        if "rho" not in groups or not groups["rho"]:
            raise ValueError(
                f"{label}: group='sum' needs per-group norm columns (like norm/<layer>) but "
                f"the log has none (columns: {available}); drop the group option"
            )
        chosen_group = "sum"
        for field in _GROUP_NORM_FIELDS:
            per = groups.get(field)
            # a gradient total needs the gradient of every group whose norm is summed
            if per and set(per) >= set(groups["rho"]):
                per = {g: per[g] for g in groups["rho"]}
                stack = np.column_stack([cols[c] for c in per.values()])
                with np.errstate(over="ignore", invalid="ignore"):
                    group_cols[field] = np.sqrt(np.sum(stack**2, axis=1))
        group_note = "sum: sqrt of the sum of squares over groups " + ", ".join(groups["rho"])
    elif group is not None:
        if not group_names:
            raise ValueError(
                f"{label} has no per-group columns (like norm/<layer> or <layer>_norm), so "
                f"group={group!r} cannot be applied (columns: {available}); drop the group option"
            )
        chosen_group = _pick_group(group, group_names, label)
        for field, per in groups.items():
            if chosen_group in per:
                group_cols[field] = cols[per[chosen_group]]
        if "rho" not in group_cols:
            raise ValueError(
                f"{label}: group {chosen_group!r} has no norm column; pick a group among "
                f"{', '.join(groups.get('rho', {})) or 'none'} or map one with --map rho=<column>"
            )
    elif "rho" not in found and "rho" not in mapping and groups.get("rho"):
        per = groups["rho"]
        if len(per) == 1:
            chosen_group = next(iter(per))
            for field, per_f in groups.items():
                if chosen_group in per_f:
                    group_cols[field] = cols[per_f[chosen_group]]
        else:
            raise ValueError(
                f"{label} has per-group norms ({', '.join(per)}) and no total norm column; "
                f"pass group='<name>' (--group <name>), group='sum' for sqrt(sum of squares), "
                f"or --map rho=<column>"
            )

    # 3. step axis
    meta_out: dict[str, Any] = {}
    time_unit = "step"
    if step is not None:
        step_f = np.asarray(step, dtype=np.float64).reshape(-1)
        if step_f.size != n_rows:
            raise ValueError(f"{label}: step axis has {step_f.size} rows, expected {n_rows}")
    elif "step" in found and not ("epoch" in mapping and "step" not in mapping):
        step_f = cols[found["step"]]
    elif "epoch" in found:
        epoch = cols[found["epoch"]]
        if steps_per_epoch is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                step_f = np.rint(epoch * steps_per_epoch)
        else:
            finite = epoch[np.isfinite(epoch)]
            if np.any(finite != np.round(finite)):
                raise ValueError(
                    f"{label}: epoch column {found['epoch']!r} has fractional epochs and no "
                    f"step column; pass steps_per_epoch (--steps-per-epoch N) or "
                    f"--map step=<column>"
                )
            step_f = epoch
            time_unit = "epoch"
    else:
        raise ValueError(
            f"{label} has no step column (looked for step, iter, iteration, epoch; "
            f"columns: {available}); pass --map step=<column> or --map epoch=<column>"
        )

    value_cols = [c for c in cols if c not in (found.get("step"), found.get("epoch"))]
    keep = np.isfinite(step_f)
    if value_cols:
        any_value = np.zeros(n_rows, dtype=bool)
        for c in value_cols:
            any_value |= np.isfinite(cols[c])
        keep &= any_value
    dropped = int(n_rows - keep.sum())
    if not keep.any():
        raise ValueError(
            f"{label}: no row has both a step and a value ({n_rows} rows, all blank or NaN); "
            f"check the file or the --map step=<column> choice"
        )
    orig = np.flatnonzero(keep) + 1  # data-row numbers (1 = first row after the header)
    step_f = step_f[keep]
    cols = {k: v[keep] for k, v in cols.items()}
    group_cols = {k: v[keep] for k, v in group_cols.items()}
    if np.any(step_f != np.round(step_f)):
        raise ValueError(
            f"{label}: step column {found.get('step', 'step')!r} holds fractional values; "
            f"map an integer step column with --map step=<column>, or an epoch column with "
            f"--map epoch=<column> and steps_per_epoch"
        )
    if np.any(np.abs(step_f) > 2.0**62):
        raise ValueError(
            f"{label}: step values up to {np.max(np.abs(step_f)):.3g} are out of range for an "
            f"optimizer step; pass --map step=<column> for the right column"
        )
    diffs = np.diff(step_f)
    if np.any(diffs < 0):
        i = int(np.argmax(diffs < 0))
        raise ValueError(
            f"{label}: step goes back from {int(step_f[i])} to {int(step_f[i + 1])} at data "
            f"row {int(orig[i + 1])} (a restarted run or concatenated logs?); split the log and "
            f"read one segment, or pass --map step=<column> for a monotone column"
        )
    if np.any(diffs == 0):
        step_f, cols, group_cols, n_merged = _merge_equal_steps(
            step_f, cols, group_cols, orig, label
        )
        meta_out["merged_rows"] = n_merged

    # 4. fields and conversions
    def col(field: str) -> NDArray[np.float64] | None:
        if field in group_cols:
            return group_cols[field]
        if chosen_group not in (None, "sum") and field in _PER_GROUP_ONLY:
            # never pair a group's norm with the total's gradient or angle
            return None
        return cols[found[field]] if field in found else None

    fields: dict[str, NDArray[np.float64] | None] = {f: None for f in FIELDS}
    fields["loss"] = col("loss")
    fields["rho"] = col("rho")
    fields["angular_update"] = col("angular_update")
    fields["elr"] = col("elr")
    fields["sharpness_sphere"] = col("sharpness_sphere")
    rho = fields["rho"]

    gsphere, graw = col("grad_norm_sphere"), col("grad_norm_raw")
    if gsphere is not None:
        fields["grad_norm_sphere"] = gsphere
        meta_out["grad_norm"] = "read as on the sphere (|w| |grad L(w)|)"
    elif graw is not None and rho is not None:
        fields["grad_norm_sphere"] = np.asarray(theory.sphere_grad_norm(rho, graw))
        meta_out["grad_norm"] = "converted from raw: grad_norm_sphere = rho * |grad L(w)|"
    elif graw is not None:
        meta_out["grad_norm"] = "raw |grad L(w)| kept in extra (no rho to convert)"

    sraw = col("sharpness_raw")
    if fields["sharpness_sphere"] is None and sraw is not None:
        if rho is not None:
            fields["sharpness_sphere"] = np.asarray(theory.sphere_sharpness(rho, sraw))
            meta_out["sharpness"] = (
                "converted from raw: sharpness_sphere = rho**2 * top eigenvalue of hess L(w) "
                "(the sphere's value at critical points, an upper bound elsewhere)"
            )
        else:
            meta_out["sharpness"] = "raw sharpness kept in extra (no rho to convert)"

    known = dict(meta or {})
    lr_values = cols[found["lr"]] if "lr" in found else None
    if lr_values is not None and known.get("lr") is None:
        lr_const = _constant(lr_values)
        if lr_const is not None:
            known["lr"] = lr_const
        elif np.any(np.isfinite(lr_values)):
            meta_out["lr_schedule"] = f"lr varies: column {found['lr']!r} kept in extra"
    if "wd" in found and known.get("wd") is None:
        wd_const = _constant(cols[found["wd"]])
        if wd_const is not None:
            known["wd"] = wd_const

    derived: list[str] = []
    if fields["elr"] is None and rho is not None:
        if known.get("lr") is not None:
            fields["elr"] = np.asarray(theory.effective_lr(float(known["lr"]), rho))
            derived.append("elr = lr / rho**2")
        elif lr_values is not None:
            fields["elr"] = np.asarray(theory.effective_lr(lr_values, rho))
            derived.append("elr = lr column / rho**2")

    # 5. extra: every column not consumed as a field (raw inputs of conversions stay)
    consumed = set()
    for field in ("loss", "rho", "angular_update", "elr", "sharpness_sphere", "grad_norm_sphere"):
        if field in found and field not in group_cols and fields[field] is not None:
            if fields[field] is cols[found[field]]:
                consumed.add(found[field])
    if "step" in found:
        consumed.add(found["step"])
    if lr_values is not None and known.get("lr") is not None and "lr_schedule" not in meta_out:
        consumed.add(found["lr"])
    extra: dict[str, NDArray[np.float64]] = {}
    for name, values in cols.items():
        if name in consumed:
            continue
        key = name if name not in FIELDS and name != "step" else f"column:{name}"
        extra[key] = values

    columns_used = {k: v for k, v in found.items()}
    if chosen_group is not None:
        for field in group_cols:
            columns_used[field] = (
                "sum over groups" if chosen_group == "sum" else groups[field][chosen_group]
            )
    meta_out.update(
        {
            "source": str(path) if path is not None else None,
            "format": fmt,
            "columns": columns_used,
            "dropped_rows": dropped,
            "time_unit": time_unit,
            "steps_per_epoch": steps_per_epoch,
        }
    )
    if time_unit == "epoch":
        meta_out["time_note"] = (
            "no step column and no steps_per_epoch: epochs are used as steps; pass "
            "steps_per_epoch to convert"
        )
    if group_names:
        meta_out["groups"] = group_names
    if chosen_group is not None:
        meta_out["group"] = chosen_group
        if group_note:
            meta_out["group_note"] = group_note
    if derived:
        meta_out["derived"] = derived
    for key, value in known.items():
        meta_out[key] = value
    return Trajectory(step=step_f.astype(np.int64), extra=extra, meta=meta_out, **fields)
