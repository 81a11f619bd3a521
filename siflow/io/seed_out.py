"""Reader for the seed paper's console log ``logs/<exp>.out``.

The training script of Lobacheva et al. (2021) prints one row per epoch in a
fixed-width table framed by dashed lines::

    ----  --------  ---------  --------  -----------  --------  --------
      ep        lr    tr_loss    tr_acc      te_loss    te_acc      time
    ----  --------  ---------  --------  -----------  --------  --------
       0    1.0000    14.9672   10.4000  271998.2180    9.2848    1.2454
       1    1.0000     9.3244    9.2000                         0.6516

``tr_loss`` / ``tr_acc`` are averages over the epoch's training batches (train
mode, accuracy in percent); ``te_*`` cells are blank except on evaluation
epochs. Cells are cut at the column spans of the dashed line, so blank cells
stay blank. Row ``ep`` ends after ``ep + 1`` epochs: step ``(ep + 1) K``, with
``K`` found as for ``train-tm.npz`` (:func:`siflow.io.seed_npz.seed_steps_per_epoch`).
A full-batch run (``_fbgd``) takes its one step after the epoch's batch: its
``tr_*`` and ``lr`` of row ``ep`` are at step ``ep``, its ``te_*`` (evaluated after
the step) at ``ep + 1``.
The table has no weight norm: the trajectory holds the loss (and lr, accuracy).
The script ends every line it prints, so a last row without a line end was cut
mid-write (a cell ``0.6826`` may read ``0``): it is left out, with a note.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from siflow.io._build import build_trajectory
from siflow.io._columns import Table, normalize_mapping
from siflow.io._text import STILL_WRITTEN, check_path, read_text, to_float
from siflow.io.seed_npz import _run_meta, is_full_batch, seed_time_axis
from siflow.trajectory import Trajectory

__all__ = ["read_seed_out", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_HEADER = re.compile(r"^\s*ep\s+lr\s+tr_loss\b", re.M)
_RULE = re.compile(r"^-{2,}(\s+-{2,})+\s*$")


def _spans(rule: str) -> list[tuple[int, int]]:
    """Column spans of a dashed rule; each span reaches back to the previous column's end."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    out = []
    prev_end = 0
    for _start, end in spans:
        out.append((prev_end, end))
        prev_end = end
    return out


def _rows(text: str, label: str) -> list[dict[str, str]]:
    """Cells of every table row, cut at the spans of the dashed rule above its header.

    The script reprints the header (with column widths that may change) every
    few dozen epochs; each block is cut with its own rule.
    """
    lines = text.splitlines()
    rows: list[dict[str, str]] = []
    spans: list[tuple[int, int]] | None = None
    header: list[str] = []
    for i, line in enumerate(lines):
        if _HEADER.match(line) and i > 0 and _RULE.match(lines[i - 1]):
            spans = _spans(lines[i - 1])
            header = [line[a:b].strip() for a, b in spans]
            continue
        if spans is None or _RULE.match(line) or not line.strip()[:1].isdigit():
            continue
        cells = [line[a:b] for a, b in spans[:-1]] + [line[spans[-1][0] :]]
        rows.append(dict(zip(header, cells, strict=True)))
    if spans is None:
        raise ValueError(
            f"{label} has no 'ep lr tr_loss ...' table framed by dashed lines; is it the seed "
            f"paper's logs/<exp>.out? pass fmt= another format"
        )
    return rows


def _cut_last_line(text: str) -> tuple[str, str | None]:
    """``text`` without a last line that has no line end, and that line (None when the text
    ends with a line end).

    The training script ends every line it prints, so a last line without one was cut
    mid-write (the run was killed, or is still printing): a cell in it may be cut short
    (``0.6826`` printed as ``0``), so it is not read.
    """
    if not text or text.endswith(("\n", "\r")):
        return text, None
    end = max(text.rfind("\n"), text.rfind("\r")) + 1
    return text[:end], text[end:]


def _parse(rows: list[dict[str, str]], label: str) -> Table:
    names = list(dict.fromkeys(h for row in rows for h in row))
    columns = {h: np.full(len(rows), np.nan) for h in names}
    for r, row in enumerate(rows):
        for h, cell in row.items():
            try:
                columns[h][r] = to_float(cell)[0]
            except (ValueError, OverflowError):
                raise ValueError(
                    f"{label} table row {r + 1}: cell {cell.strip()!r} in column {h!r} is not a "
                    f"number; fix or delete that row"
                ) from None
    return columns


def read_seed_out(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
) -> Trajectory:
    """Read the seed paper's ``logs/<exp>.out`` epoch table.

    Parameters
    ----------
    path : path-like
        The ``.out`` file.
    mapping : dict or list of ``"field=column"``, optional
        Overrides (columns: ``lr``, ``tr_loss``, ``tr_acc``, ``te_loss``, ``te_acc``,
        ``time``).
    steps_per_epoch : int, optional
        Steps per epoch, when the run's files do not give it (``_fbgd`` in the
        name, or ``ds<N>`` with ``command.sh``).

    Returns
    -------
    Trajectory
        ``loss = tr_loss`` (epoch average in train mode) at step ``(ep + 1) K``
        (a full-batch run: at step ``ep``, its ``te_*`` at ``ep + 1``);
        lr and wd from the experiment name (a learning rate that changes in the
        table's ``lr`` column is kept per row, the name's as ``lr_init``); other
        columns in ``extra``. A last row without a line end is left out, with a note
        in ``meta["notes"]``.
    """
    p = check_path(path)
    label = repr(str(p))
    text, cut = _cut_last_line(read_text(p))
    rows = _rows(text, label)
    if not rows or "ep" not in rows[0]:
        raise ValueError(f"{label}: the epoch table has no rows; did the run start?")
    table = _parse(rows, label)
    epochs = table.pop("ep")
    if np.any(~np.isfinite(epochs)) or np.any(epochs != np.round(epochs)) or np.any(epochs < 0):
        raise ValueError(f"{label}: the 'ep' column must hold whole epochs >= 0")
    meta = _run_meta(p, None, None)
    if cut is not None and cut.strip()[:1].isdigit():
        meta.setdefault("notes", []).append(
            f"the last line ({cut.strip()[:40]!r}) has no line end: a table row cut off when "
            f"the run stopped, or {STILL_WRITTEN} (if that row is whole, end the file with a "
            f"line break to read it)"
        )
    lr_col = table.get("lr")
    if (
        lr_col is not None
        and "lr" in meta
        and np.any(np.isfinite(lr_col))
        and np.nanmax(lr_col) > np.nanmin(lr_col)
    ):
        # a scheduled run: the table's per-epoch lr, not the name's initial one
        meta["lr_init"] = meta.pop("lr")
    step, unit = seed_time_axis(p, epochs, steps_per_epoch, meta)
    defaults = {"loss": "tr_loss"} if "tr_loss" in table else {}
    if unit == "step" and meta.get("steps_per_epoch") == 1 and is_full_batch(p):
        step, table = _full_batch_rows(epochs.astype(np.int64), table)
        meta.setdefault("notes", []).append(
            "full-batch run: the epoch's one update comes after its batch, so tr_loss, "
            "tr_acc and lr of epoch ep are at step ep (the weights after ep steps) and te_* "
            "(evaluated after the update) at step ep + 1"
        )
    else:
        meta.setdefault("notes", []).append(
            "tr_loss is the average over each epoch's training batches (train mode), logged "
            "at the epoch's end"
        )
    return build_trajectory(
        table,
        path=p,
        fmt="seed-out",
        mapping={**defaults, **normalize_mapping(mapping)},
        meta=meta,
        step=step,
        time_unit=unit,
    )


def _full_batch_rows(epochs: np.ndarray, table: Table) -> tuple[np.ndarray, Table]:
    """Rows at the steps each column belongs to in a full-batch run (see the note)."""
    steps = np.union1d(epochs, epochs + 1)
    out: Table = {}
    for name, values in table.items():
        at = np.searchsorted(steps, epochs + 1 if name.startswith("te_") else epochs)
        col = np.full(steps.size, np.nan)
        col[at] = values
        out[name] = col
    return steps, out


def detect(path: Path, head: bytes) -> bool:
    """A text file with the ``ep lr tr_loss`` table header."""
    if path.is_dir() or b"\x00" in head:
        return False
    return bool(_HEADER.search(head.decode("utf-8", errors="ignore")))
