"""Readers for plain CSV and JSON-lines training logs."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from siflow.io._build import ASSUMED_OPTIMIZER_NOTE, build_trajectory
from siflow.io._columns import Table, normalize_mapping
from siflow.io._text import (
    MAX_LISTED_BAD,
    MISSING_WORDS,
    STILL_WRITTEN,
    bad_cells_note,
    check_path,
    open_binary,
    parse_csv_table,
    parse_json,
    read_head,
    read_text,
)
from siflow.trajectory import Trajectory

__all__ = ["read_csv", "read_jsonl", "detect_csv", "detect_jsonl"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None


def read_csv(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    live: bool = False,
) -> Trajectory:
    """Read a CSV (or TSV) training log with one row per logged step.

    Parameters
    ----------
    path : path-like
        The CSV file, plain or compressed (gzip, bz2, xz, single-member zip,
        detected by content). Lines starting with ``#`` before the header are
        skipped; comma, tab or semicolon delimited; blank cells read as NaN;
        ``"1,200"``, decimal commas and ``0x1f`` are read as numbers (noted in
        ``meta["notes"]``); any other text cell in a numeric column is read as
        missing and reported by column and data row in ``meta["bad_cells"]`` and
        ``meta["notes"]``; mostly-text columns (run names, phases) are named in
        ``meta["ignored_text_columns"]``. Read in chunks: memory stays near the
        size of the float columns.
    mapping : dict or list of ``"field=column"``, optional
        Column overrides, see :func:`siflow.io.parse_mapping`. Without it the
        columns are detected among common spellings (``step``/``iter``/``epoch``,
        ``si_norm``/``weight_norm``/``params_norm``/``norm``, ``loss``/``train_loss``,
        ``grad_norm``/``gnorm`` (raw), ``angular_update``/``angle``,
        ``elr``/``effective_lr``, ``lr``).
    steps_per_epoch : int, optional
        Converts an epoch column to steps when the log has no step column.
    group : str, optional
        SI group (layer) to use when the log has per-group norm columns, or
        ``"sum"``; see :func:`siflow.io._columns.build_trajectory`.
    live : bool
        The log may still be being written (``python -m siflow.forecast``): a last
        line cut mid-write (no line end, too few cells) is left out with a note
        instead of refused as a truncated file.

    Returns
    -------
    Trajectory
        With ``meta["format"] == "csv"``; see
        :func:`~siflow.io._columns.build_trajectory` for the conversions
        (``grad_norm_sphere = rho * |grad L(w)|``, exact for SI losses) and the
        row policy (rows without a step dropped and counted in
        ``meta["dropped_rows"]``; duplicate or decreasing steps raise).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Empty, binary, truncated or corrupt file, no step column, a bad mapping.
    """
    p = check_path(path)
    wanted = {c for c in normalize_mapping(mapping).values() if c}
    parsed = parse_csv_table(p, repr(str(p)), keep=wanted, live=bool(live))
    return build_trajectory(
        parsed.table,
        path=p,
        fmt="csv",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=parsed.meta(),
    )


def _flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + "/", out)
        else:
            out[name] = value


def _number(value: Any) -> float | None:
    """Float for numbers, booleans and numeric strings ("nan", "1e-3"); None otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float):
        return value
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan if value.strip().lower() in MISSING_WORDS else None
    if isinstance(value, list) and len(value) == 1:
        return _number(value[0])
    return None


@dataclass
class _Cells:
    """One key's values so far: how many are numbers, how many are not (first few kept)."""

    n_values: int = 0
    n_bad: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)


def records_to_table(
    records: Sequence[Mapping[str, Any]],
    cells: dict[str, _Cells] | None = None,
    first_row: int = 1,
) -> Table:
    """Column table from a list of flat-or-nested dicts (missing keys -> NaN).

    A value that is not a number (``"n/a"``) is a blank cell of its column, counted
    in ``cells`` (the key's :class:`_Cells`, kept across batches; ``first_row`` is
    the data row of ``records[0]``); :func:`text_columns` then decides which keys
    hold text. A column whose values are all integers and present in every record,
    with one beyond 2**53 (where float64 loses integers), is kept exact as int64.
    """
    cells = {} if cells is None else cells
    n = len(records)
    columns: dict[str, np.ndarray] = {}
    ints: dict[str, list[int] | None] = {}
    for i, rec in enumerate(records):
        row: dict[str, Any] = {}
        _flatten(rec, "", row)
        for name, value in row.items():
            v = _number(value)
            count = cells.setdefault(name, _Cells())
            if v is None:
                count.n_bad += 1
                if len(count.bad) < MAX_LISTED_BAD:
                    count.bad.append((first_row + i, _shown(value)))
                ints[name] = None
                continue
            count.n_values += int(math.isfinite(v))
            col = columns.get(name)
            if col is None:
                col = columns[name] = np.full(n, np.nan)
                ints[name] = [] if i == 0 and name not in ints else None
            col[i] = v
            exact = ints[name]
            if exact is not None:
                if isinstance(value, int) and not isinstance(value, bool) and len(exact) == i:
                    exact.append(value)
                else:
                    ints[name] = None
    table: Table = {}
    for name, col in columns.items():
        exact = ints[name]
        if exact is not None and len(exact) == n and _needs_int64(exact):
            table[name] = np.array(exact, dtype=np.int64)
        else:
            table[name] = col
    return table


def _shown(value: Any) -> str:
    """A non-numeric JSON value as a cell of a message (text as it is, others as JSON)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)[:40]
    except (TypeError, ValueError):
        return type(value).__name__


def text_columns(
    table: Table, cells: Mapping[str, _Cells], n_rows: int, meta: dict[str, Any]
) -> Table:
    """``table`` without its text keys, as the CSV reader decides them, with ``meta``
    told: a key is text when it holds no number, or more non-numeric values than
    numbers (beyond a few); its name goes to ``meta["ignored_text_columns"]``. A
    numeric key's non-numeric values are blank cells, listed in ``meta["bad_cells"]``
    and noted, as the CSV reader's are."""
    text = [
        name
        for name, c in cells.items()
        if (c.n_values == 0 and c.n_bad) or c.n_bad > max(MAX_LISTED_BAD, c.n_values)
    ]
    if text:
        meta["ignored_text_columns"] = text
    for name, c in cells.items():
        if c.n_bad and name not in text and name in table:
            meta.setdefault("bad_cells", {})[name] = [[r, t] for r, t in c.bad]
            meta.setdefault("notes", []).append(bad_cells_note(name, c.n_bad, n_rows, c.bad))
    return {k: v for k, v in table.items() if k not in text}


def _needs_int64(values: list[int]) -> bool:
    big = max(abs(v) for v in values)
    return 2**53 <= big < 2**63


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    live: bool = False,
) -> Trajectory:
    """Read a JSON-lines training log (one JSON object per line).

    Nested objects are flattened with ``/`` (``{"norm": {"conv1": 2.0}}`` becomes
    the column ``norm/conv1``); a key missing from a line is a blank cell; keys
    holding text are ignored (named in ``meta["ignored_text_columns"]``), and a
    non-numeric value of a numeric key is a missing cell reported as the CSV reader
    reports it (``meta["bad_cells"]``, ``meta["notes"]``). A ``.json`` file holding
    one list of such objects, or an object holding one list of them (such as the
    ``log_history`` of a Hugging Face ``trainer_state.json``, whose training and
    evaluation records share steps and are merged), is read the same way. Columns, conversions and
    the row policy are those of :func:`read_csv`; with ``live`` a last line cut
    mid-write (no line end, not complete JSON) is left out with a note.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Empty, binary or truncated file, a line that is not a JSON object, no
        step column, a bad mapping.
    """
    p = check_path(path)
    label = repr(str(p))
    meta: dict[str, Any] = {}
    cells: dict[str, _Cells] = {}
    if _is_json_lines(read_head(p)):
        table = _stream_json_lines(p, label, meta, bool(live), cells)
    else:
        records = _document_records(read_text(p), label, meta)
        table = records_to_table(records, cells)
    n_rows = len(next(iter(table.values()))) if table else 0
    table = text_columns(table, cells, n_rows, meta)
    return build_trajectory(
        table,
        path=p,
        fmt="jsonl",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=meta,
    )


def _is_json_lines(head: bytes) -> bool:
    """JSON lines: the first non-blank line is a complete JSON object on its own."""
    text = head.decode("utf-8-sig", errors="ignore")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first.lstrip().startswith("{"):
        return not first.lstrip().startswith("[")
    try:
        obj = json.loads(first)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return False
    # a one-line document holding a list of records (trainer_state.json) is not one record
    return isinstance(obj, Mapping) and not any(
        isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v) for v in obj.values()
    )


def _document_records(text: str, label: str, meta: dict[str, Any]) -> list[Mapping[str, Any]]:
    """Records of one JSON document: a list of objects, or an object holding one list."""
    whole = parse_json(text, label)
    if isinstance(whole, list):
        if not whole or not all(isinstance(r, Mapping) for r in whole):
            raise ValueError(f"{label} must hold a list of objects, one per logged step")
        return whole
    if not isinstance(whole, Mapping):
        raise ValueError(f"{label} holds a JSON {type(whole).__name__}, not logged records")
    lists = {
        k: v
        for k, v in whole.items()
        if isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v)
    }
    key = "log_history" if "log_history" in lists else None
    if key is None and len(lists) == 1:
        key = next(iter(lists))
    if key is None and lists:
        raise ValueError(
            f"{label} holds several lists of records ({', '.join(lists)}); extract one "
            f"into a .jsonl file"
        )
    if key is None:
        return [whole]
    meta["records_key"] = key
    for name in ("train_batch_size", "num_train_epochs", "max_steps"):
        value = whole.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            meta[name] = value
    if key == "log_history" and "global_step" in whole:
        _trainer_state_meta(meta)
    return lists[key]


#: What a Hugging Face ``Trainer`` log's values are (transformers' ``Trainer``: the
#: lr is read after ``optimizer.step()`` and before ``lr_scheduler.step()``, the
#: gradient norm is that of ``clip_grad_norm_(model.parameters())``, the loss is the
#: summed training loss over the updates since the last log divided by their number).
HF_LOG_NOTE = (
    "Hugging Face Trainer log: the row at step s (global_step, counted from 1) describes "
    "update s: learning_rate is the lr that moved the weights of step s-1 to step s, "
    "grad_norm the gradient of all parameters at those weights before clipping, loss the "
    "mean over the updates since the previous log; evaluation values (eval_*, eval/*) are "
    "of the weights after step s"
)
#: The optimizer a Trainer's log implies, and the caveat.
HF_OPTIMIZER_NOTE = (
    ASSUMED_OPTIMIZER_NOTE + " ({where}); a Trainer given its own optimizer (optimizers=) "
    "ran that one instead: pass optimizer= then"
)


def _trainer_state_meta(meta: dict[str, Any]) -> None:
    """What ``trainer_state.json`` does not say: its conventions, and the optimizer (not
    recorded: the Trainer's default, AdamW, is assumed, and ``optimizer_source`` says so)."""
    notes = meta.setdefault("notes", [])
    notes.append(HF_LOG_NOTE)
    meta["optimizer"] = "adamw"
    meta["optimizer_assumed"] = True
    where = "not in trainer_state.json: its default, adamw_torch(_fused)"
    meta["optimizer_source"] = f"the Trainer's optim, {where}"
    notes.append(HF_OPTIMIZER_NOTE.format(where=where))


#: JSON lines parsed per batch before the batch becomes columns.
_BATCH = 20_000


class _PartialLine(Exception):
    """The file's last line, without a line end and not valid JSON: still being written."""


def _json_line(
    line: str, number: int, rest: IO[str], label: str, live: bool = False
) -> Mapping[str, Any]:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        last = not any(more.strip() for more in rest)
        if live and last and not line.endswith(("\n", "\r")):
            raise _PartialLine(line) from None
        hint = (
            "; the file looks truncated (was the run still writing?)"
            if last
            else "; fix or delete that line"
        )
        raise ValueError(f"{label} line {number} is not valid JSON ({exc}){hint}") from None
    if not isinstance(rec, Mapping):
        raise ValueError(
            f"{label} line {number} is a JSON {type(rec).__name__}, not an object; "
            f'each line must be one {{"step": ..., ...}} record'
        )
    return rec


def _stream_json_lines(
    p: Path, label: str, meta: dict[str, Any], live: bool, cells: dict[str, _Cells]
) -> Table:
    """JSON lines read in batches: memory holds one batch of records, then columns. With
    ``live``, a last line still being written is left out with a note in ``meta``.
    ``cells`` counts each key's values (:func:`records_to_table`)."""
    batches: list[tuple[Table, int]] = []
    done = 0
    with open_binary(p) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict")
        records: list[Mapping[str, Any]] = []
        try:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    records.append(_json_line(line, number, stream, label, live))
                if len(records) >= _BATCH:
                    batches.append((records_to_table(records, cells, done + 1), len(records)))
                    done += len(records)
                    records = []
        except UnicodeDecodeError as exc:
            raise ValueError(f"{label} is not UTF-8 text (byte {exc.start})") from None
        except _PartialLine as cut:
            meta.setdefault("notes", []).append(
                f"the last line ({str(cut.args[0]).strip()[:40]!r}) has no line end and is not "
                f"complete JSON: a record {STILL_WRITTEN}"
            )
        if records:
            batches.append((records_to_table(records, cells, done + 1), len(records)))
    if not batches:
        raise ValueError(f"{label} holds no records")
    return _join_batches(batches)


def _join_batches(batches: list[tuple[Table, int]]) -> Table:
    """One table from batch tables: a key missing from a batch is blank there."""
    names = list(dict.fromkeys(k for t, _ in batches for k in t))
    out: Table = {}
    for name in names:
        parts = [t[name] if name in t else np.full(n, np.nan) for t, n in batches]
        if not all(part.dtype.kind == "i" for part in parts):
            parts = [part.astype(np.float64) for part in parts]
        out[name] = np.concatenate(parts)
    return out


def _text_head(head: bytes) -> str | None:
    if not head.strip() or b"\x00" in head:
        return None
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:
            return None
        return head[: exc.start].decode("utf-8-sig", errors="ignore")


def detect_jsonl(path: Path, head: bytes) -> bool:
    """Text starting with ``{`` or ``[``, or named ``.jsonl``/``.ndjson``/``.json``."""
    if path.is_dir():
        return False
    text = _text_head(head)
    if text is None:
        return False
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        name = name.removesuffix(suffix)
    return text.lstrip().startswith(("{", "[")) or name.endswith((".jsonl", ".ndjson", ".json"))


def detect_csv(path: Path, head: bytes) -> bool:
    """Any text file (the fallback format)."""
    return not path.is_dir() and _text_head(head) is not None
