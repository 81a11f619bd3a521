"""Opening log files: transparent decompression with a bomb guard, and streaming CSV parsing.

- :func:`open_binary` reads ``.gz``, ``.bz2``, ``.xz`` and single-member ``.zip``
  files as their content (detected by magic bytes, not by name). A member whose
  declared size exceeds :data:`MAX_RATIO` times its compressed size (and
  :data:`MIN_BOMB_BYTES`) is refused before inflating; streams without a
  declared size are counted while inflating and refused at the same bound.
- :func:`parse_csv_table` reads a CSV in chunks of :data:`CHUNK_ROWS` rows with
  numpy's C parser (``np.loadtxt``), so memory stays near the size of the float
  columns kept; a chunk the fast parser refuses is parsed cell by cell, where
  blank cells are NaN, ``"1,200"`` (thousands separators), decimal commas (in
  ``;``- or tab-separated files), ``0x1f`` (hex integers) and ``true``/``false``
  are read as numbers, and any other text in a numeric column is a *bad cell*:
  NaN, reported by column and data row. A column that is mostly text is a text
  column and is named in the result, never dropped silently.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import json
import lzma
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from siflow.io._columns import Table, relevant_anchors, relevant_column_pattern

__all__ = [
    "check_path",
    "read_text",
    "read_head",
    "open_binary",
    "compression_of",
    "check_zip_members",
    "check_declared_size",
    "parse_csv_table",
    "CsvTable",
    "to_float",
    "MAX_RATIO",
]

#: Largest accepted ratio of inflated to compressed size.
MAX_RATIO = 200
#: Inflated sizes below this are always accepted (small files compress well).
MIN_BOMB_BYTES = 16 * 2**20
#: Rows parsed per chunk (at most), and characters per chunk (at most, after one line).
CHUNK_ROWS = 65536
CHUNK_CHARS = 8 * 2**20
#: Bad cells listed per column in ``meta["bad_cells"]`` (all are counted).
MAX_LISTED_BAD = 20

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


def check_path(path: str | os.PathLike[str], *, allow_dir: bool = False) -> Path:
    """``Path(path)``; ``FileNotFoundError`` when missing, ``ValueError`` for a directory
    (unless ``allow_dir``) or anything else that is not a regular file (a pipe, socket or
    device would block the reader or never end)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file name, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {str(p)!r}")
    if p.is_dir():
        if not allow_dir:
            raise ValueError(f"{str(p)!r} is a directory; pass the log file inside it")
    elif not p.is_file():
        raise ValueError(
            f"{str(p)!r} is not a regular file (a pipe, socket or device); write the log "
            f"to a file and pass that"
        )
    return p


def _bomb_limit(compressed: int) -> int:
    return max(MIN_BOMB_BYTES, MAX_RATIO * max(compressed, 1))


def _bomb_message(label: str, inflated: int, compressed: int) -> str:
    return (
        f"{label} inflates to more than {inflated:,} bytes from {compressed:,} compressed "
        f"(ratio above {MAX_RATIO}): refused as a decompression bomb; decompress it yourself "
        f"if you trust it"
    )


def check_declared_size(label: str, declared: int, compressed: int) -> None:
    """Refuse a decompression bomb from its declared inflated size, before inflating."""
    if declared > _bomb_limit(compressed):
        raise ValueError(_bomb_message(label, declared, compressed))


def check_zip_members(zf: zipfile.ZipFile, label: str, compressed: int) -> None:
    """Refuse a zip whose declared inflated size is a bomb, before inflating anything.

    ``zipfile`` stops inflating a member at its declared size (and then fails its
    CRC check), so the declared sizes bound what is inflated.
    """
    check_declared_size(label, sum(max(i.file_size, 0) for i in zf.infolist()), compressed)


def _gzip_declared_size(path: Path, size: int) -> int:
    """The inflated size a gzip file declares in its trailer (ISIZE, modulo 2**32)."""
    if size < 18:
        return 0
    with open(path, "rb") as fh:
        fh.seek(size - 4)
        return int.from_bytes(fh.read(4), "little")


def _gzip_cut_short(path: Path, limit: int) -> bool:
    """Whether a gzip file's deflate stream ends before its end marker, found by
    inflating at most ``limit`` bytes into nothing (bounded time, no memory kept).

    A cut file's last four bytes are not its trailer: they read as a huge declared
    size, which alone would look like a decompression bomb.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as fh:
        while not inflater.eof:
            block = fh.read(1 << 16)
            if not block:
                return True  # the stream ran out before its end marker
            try:
                total += len(inflater.decompress(block, min(1 << 20, limit + 1 - total)))
                while inflater.unconsumed_tail and total <= limit:
                    tail = inflater.unconsumed_tail
                    total += len(inflater.decompress(tail, min(1 << 20, limit + 1 - total)))
            except zlib.error:
                return False  # damaged, not cut: the reader says so
            if total > limit:
                return False  # inflates beyond the limit: a bomb
    return False


def compression_of(path: Path) -> str | None:
    """``"gzip"``, ``"bz2"``, ``"xz"``, ``"zip"`` (one text member) or ``None``, by magic bytes."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError:
        return None
    for prefix, name in _MAGIC:
        if magic.startswith(prefix):
            return name
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return None
        if len(names) == 1 and not names[0].endswith((".npy", ".pkl", "data.pkl")):
            return "zip"
    return None


class _Guarded(io.RawIOBase):
    """A readable stream that raises ``ValueError`` once more than ``limit`` bytes came out."""

    def __init__(self, raw: IO[bytes], limit: int, label: str, compressed: int) -> None:
        self._raw, self._limit, self._label, self._compressed = raw, limit, label, compressed
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except (EOFError, OSError, lzma.LZMAError, zlib.error, zipfile.BadZipFile) as exc:
            raise _decompression_error(self._label, "compressed", exc) from None
        n = len(data)
        self._count += n
        if self._count > self._limit:
            raise ValueError(_bomb_message(self._label, self._count, self._compressed))
        buffer[:n] = data
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _decompression_error(label: str, kind: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"{label} is a corrupt or truncated {kind} file ({type(exc).__name__}: {exc}); "
        f"use an intact copy"
    )


def open_binary(path: Path) -> IO[bytes]:
    """The file's content as a binary stream, decompressed if compressed (bomb-guarded)."""
    label = repr(str(path))
    kind = compression_of(path)
    size = path.stat().st_size
    try:
        if kind is None:
            return open(path, "rb")
        if kind == "zip":
            zf = zipfile.ZipFile(path)
            check_zip_members(zf, label, size)
            raw: IO[bytes] = zf.open(zf.namelist()[0])
        elif kind == "gzip":
            declared = _gzip_declared_size(path, size)
            if declared > _bomb_limit(size) and _gzip_cut_short(path, _bomb_limit(size)):
                raise ValueError(
                    f"{label} is a truncated gzip file (its compressed stream ends before its "
                    f"end marker): the copy was cut short; copy or compress it again"
                )
            check_declared_size(label, declared, size)
            raw = gzip.open(path, "rb")
        elif kind == "bz2":
            raw = bz2.open(path, "rb")
        else:
            raw = lzma.open(path, "rb")
    except OSError as exc:
        raise ValueError(f"{label} cannot be read ({exc.strerror or exc})") from None
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise _decompression_error(label, kind or "zip", exc) from None
    return io.BufferedReader(_Guarded(raw, _bomb_limit(size), label, size), 1 << 20)


def _read_all(path: Path, n: int | None = None) -> bytes:
    label = repr(str(path))
    try:
        with open_binary(path) as fh:
            return fh.read() if n is None else fh.read(n)
    except IsADirectoryError:
        raise ValueError(f"{label} is a directory; pass the log file inside it") from None
    except OSError as exc:
        if isinstance(exc, (gzip.BadGzipFile,)):
            raise _decompression_error(label, "gzip", exc) from None
        raise ValueError(f"{label} cannot be read ({exc.strerror or exc})") from None
    except (EOFError, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise _decompression_error(label, "compressed", exc) from None


def read_head(path: Path, n: int = 65536) -> bytes:
    """The first ``n`` bytes of the (decompressed) content."""
    return _read_all(path, n)


def read_text(path: Path) -> str:
    """The file as text; ``ValueError`` naming the file if empty, binary or not UTF-8."""
    data = _read_all(path)
    if not data.strip():
        raise ValueError(f"{str(path)!r} is empty; was the run logged to another file?")
    if b"\x00" in data[:65536]:
        raise ValueError(
            f"{str(path)!r} is a binary file, not a text log; pass fmt='tensorboard' for event "
            f"files or fmt='seed-npz' / 'siflow' for .npz"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text (byte {exc.start}); is it a binary file?"
        ) from None


def parse_json(text: str, label: str) -> Any:
    """``text`` as a JSON document; ``ValueError`` naming ``label`` when it is not one."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{label} is not valid JSON ({exc}); is it truncated?") from None


def read_json(path: Path) -> Any:
    """The JSON document in ``path`` (:func:`read_text`, then :func:`parse_json`)."""
    return parse_json(read_text(path), repr(str(path)))


# ------------------------------------------------------------------------------ cells
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?([eE][+-]?\d+)?$")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d{1,3}(\.\d{3})*,\d+([eE][+-]?\d+)?$|^[+-]?\d+,\d+$")
_HEX = re.compile(r"^[+-]?0[xX][0-9a-fA-F]+$")


#: Cells that spell a missing value (Python's ``None`` written by an f-string, JSON's
#: ``null``): read as blank, with a note.
MISSING_WORDS = ("none", "null")


def bad_cells_note(name: str, n_bad: int, n_rows: int, bad: list[tuple[int, str]]) -> str:
    """The note on a numeric column's non-numeric cells (first three shown)."""
    where = ", ".join(f"row {r}: {t!r}" for r, t in bad[:3])
    return (
        f"column {name!r}: {n_bad} non-numeric cell(s) of {n_rows} read as missing "
        f"({where}{', ...' if n_bad > 3 else ''})"
    )


def to_float(cell: str, delimiter: str = ",") -> tuple[float, str | None]:
    """One cell as a number and the convention used (``None`` for plain numbers).

    Blank, ``None`` and ``null`` -> NaN; ``true``/``false`` -> 1/0; ``"1,200"`` -> 1200 (thousands);
    ``"0,5"`` -> 0.5 (decimal comma, or ``"1.200,5"``); ``0x1f`` -> 31.
    Raises ``ValueError`` for anything else.
    """
    s = cell.strip()
    if not s:
        return math.nan, None
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if "_" in s or not s.isascii():  # Python reads "1_000" and full-width digits too
            return value, "'_' digit separators or non-ASCII digits"
        return value, None
    low = s.lower()
    if low in ("true", "false"):
        return (1.0 if low == "true" else 0.0), None
    if low in MISSING_WORDS:
        return math.nan, "'None'/'null' cells as missing"
    if _HEX.match(s):
        return float(int(s, 16)), "hexadecimal integers"
    if _THOUSANDS.match(s) and delimiter == ",":
        return float(s.replace(",", "")), "thousands separators"
    if _DECIMAL_COMMA.match(s):
        return float(s.replace(".", "").replace(",", ".")), "decimal commas"
    if _THOUSANDS.match(s):
        return float(s.replace(",", "")), "thousands separators"
    raise ValueError(f"not a number: {cell!r}")


@dataclass
class _Column:
    """Parse state of one CSV column across chunks."""

    chunks: list[NDArray[Any]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    n_bad: int = 0
    n_values: int = 0
    conventions: set[str] = field(default_factory=set)
    exact_int: bool = True
    text: bool = False


@dataclass
class CsvTable:
    """A parsed CSV: header, numeric columns, text columns, bad cells and notes."""

    header: list[str]
    table: Table
    text_cols: list[str]
    bad_cells: dict[str, list[tuple[int, str]]]
    notes: list[str]
    unread: int = 0

    def meta(self) -> dict[str, Any]:
        """``meta`` entries for a Trajectory built from this table."""
        out: dict[str, Any] = {}
        if self.text_cols:
            out["ignored_text_columns"] = list(self.text_cols)
        if self.bad_cells:
            out["bad_cells"] = {k: [[r, t] for r, t in v] for k, v in self.bad_cells.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        if self.unread:
            out["unread_columns"] = self.unread
        return out


def _parse_slow(cells: tuple[str, ...], first_row: int, col: _Column, delim: str) -> NDArray:
    """Cell by cell: conventions recognised, other text recorded as a bad cell (NaN)."""
    out = np.empty(len(cells), dtype=np.float64)
    ints: list[int] | None = [] if col.exact_int else None
    for i, cell in enumerate(cells):
        try:
            value, convention = to_float(cell, delim)
        except (ValueError, OverflowError):
            out[i] = math.nan
            col.n_bad += 1
            if len(col.bad) < MAX_LISTED_BAD:
                col.bad.append((first_row + i, cell))
            ints = None
            continue
        if convention:
            col.conventions.add(convention)
        out[i] = value
        if ints is not None:
            s = cell.strip()
            if s.isdigit() or (s[:1] in "+-" and s[1:].isdigit()):
                ints.append(int(s))
            elif _HEX.match(s):
                ints.append(int(s, 16))
            else:
                ints = None
    col.n_values += int(np.isfinite(out).sum())
    if ints is not None and len(ints) == len(cells) and max(map(abs, ints), default=0) >= 2**53:
        if max(map(abs, ints)) < 2**63:
            return np.array(ints, dtype=np.int64)
    col.exact_int = col.exact_int and ints is not None and len(ints) == len(cells)
    return out


def _split_rows(lines: list[str], delim: str, n_cols: int, first_row: int, label: str):
    try:
        rows = list(csv.reader(lines, delimiter=delim, strict=True))
    except csv.Error as exc:
        raise ValueError(f"{label} is not valid CSV ({exc}); is the file corrupt?") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    for i, r in enumerate(rows):
        if len(r) != n_cols:
            raise ValueError(
                f"{label} data row {first_row + i} has {len(r)} cells, expected {n_cols}; "
                f"fix or delete that row (a truncated file: was the run still writing?)"
            )
    return rows


#: End of the note a reader adds for a last line left out with ``live=True``
#: (``python -m siflow.forecast`` prints those notes).
STILL_WRITTEN = "still being written, left out"


def _is_partial_last_line(line: str, header: _Header) -> bool:
    """A file's last line cut short while the run appends to it: no line end and fewer
    cells than the header (only the file's last line can lack a line end)."""
    if line.endswith(("\n", "\r")):
        return False
    try:
        cells = next(csv.reader([line], delimiter=header.delim, strict=True), [])
    except csv.Error:
        return True  # an unterminated quote
    return len(cells) < header.n_cols


def _last_cell_cut(line: str, before: list[str], header: _Header) -> bool:
    """A last line without a line end whose last cell is empty or shorter than that
    column's cell in every row before it (of its chunk): a number cut while the run was
    writing it (``12.0`` written as ``1``, or not written after the last comma). Only the
    file's last line can lack a line end."""
    if line.endswith(("\n", "\r")) or not before:
        return False
    try:
        rows = list(csv.reader([*before[-200:], line], delimiter=header.delim, strict=True))
    except csv.Error:
        return False
    if len(rows[-1]) != header.n_cols:
        return False  # too few cells: refused, or left out while the log is written (live)
    last = rows[-1][-1].strip()
    earlier = [r[-1].strip() for r in rows[:-1] if len(r) == header.n_cols and r[-1].strip()]
    if not earlier:
        return False
    # cut right after the last delimiter, or inside the last number
    return not last or len(last) < min(len(c) for c in earlier)


def _parse_chunk(
    lines: list[str], first_row: int, header: _Header, state: dict[int, _Column], label: str
) -> int:
    """Parse one chunk into ``state``; returns the number of data rows in it."""
    width, delim, use = header.n_cols - 1, header.delim, list(state)
    try:
        if any(line.count(delim) != width for line in lines):
            raise ValueError("ragged or quoted rows: parse cell by cell")
        block = np.loadtxt(
            lines, delimiter=delim, quotechar='"', dtype=np.float64, usecols=use, ndmin=2
        )
        if block.shape[0] == len(lines) and not np.any(np.abs(block) >= 2.0**53):
            for j, idx in enumerate(use):
                col = state[idx]
                if not col.text:
                    col.chunks.append(block[:, j])
                    col.n_values += block.shape[0]
            return block.shape[0]
    except (ValueError, IndexError):
        pass
    rows = _split_rows(lines, delim, header.n_cols, first_row, label)
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True))
    for idx in use:
        col = state[idx]
        if col.text:
            continue
        col.chunks.append(_parse_slow(columns[idx], first_row, col, delim))
        if col.n_bad > max(MAX_LISTED_BAD, col.n_values):
            col.text, col.chunks = True, []
    return len(rows)


#: Files with more columns than this read only the columns a convention can use
#: (:func:`siflow.io._columns.relevant_column_pattern`) and those named in ``keep``.
WIDE_COLUMNS = 10_000


@dataclass
class _Header:
    """The header: selected column names by index, the column count and the delimiter."""

    names: dict[int, str]
    n_cols: int
    delim: str
    wide: bool = False
    #: cells separated by runs of whitespace (each line normalised to single spaces)
    whitespace: bool = False
    notes: list[str] = field(default_factory=list)


def _first_lines(stream: Iterator[str], label: str) -> tuple[list[str], str]:
    """The ``#`` comment lines before the first other non-blank line, and that line."""
    comments: list[str] = []
    for line in stream:
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            comments.append(line)
            continue
        return comments, line
    raise ValueError(f"{label} has no header row (only comments or blank lines)")


def _delimiter(line: str) -> str | None:
    """A comma, else a tab, else a semicolon; None when the line has none of them."""
    return next((d for d in (",", "\t", ";") if d in line), None)


def _cells(line: str, delim: str | None) -> list[str]:
    """A line's cells: split at ``delim``, or at runs of whitespace when it is None."""
    return line.split(delim) if delim is not None else line.split()


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip().strip('"'))
    except ValueError:
        return False
    return True


def _all_numbers(line: str, delim: str | None) -> bool:
    """Whether every cell of ``line`` is a number (a data row, not a header)."""
    first = line.split(delim, 1)[0] if delim is not None else (line.split(None, 1) or [""])[0]
    if not _is_number(first):  # a header: its (maybe millions of) cells are not split
        return False
    cells = _cells(line, delim)
    return bool(cells) and all(_is_number(c) for c in cells)


def _commented_header(comments: list[str], data: str, delim: str | None) -> str | None:
    """``numpy.savetxt``'s header: the last comment line before the first data row, once
    its ``#`` is removed, when it names as many columns as the row has and none is a number."""
    if not comments:
        return None
    text = comments[-1].lstrip().lstrip("#").strip()
    names = _cells(text, delim)
    if len(names) != len(_cells(data, delim)) or any(_is_number(n) for n in names):
        return None
    return text + "\n"


def _next_data_line(stream: Iterator[str]) -> str | None:
    return next((line for line in stream if line.strip()), None)


def _header(stream: Iterator[str], label: str, keep: set[str]) -> tuple[_Header, Iterator[str]]:
    """Header cells and delimiter (a very wide header keeps only the useful names), and the
    stream of data lines (a line looked at to decide the header is put back in front)."""
    comments, line = _first_lines(stream, label)
    delim = _delimiter(line)
    notes: list[str] = []
    if _all_numbers(line, delim):
        named = _commented_header(comments, line, delim)
        if named is None:
            raise ValueError(
                f"{label} has no header row: its first line ({line.strip()[:40]!r}) is all "
                f"numbers; add a first line naming the columns (e.g. step,loss,weight_norm)"
            )
        notes.append(
            f"header read from the commented line {named.strip()[:60]!r} (numpy.savetxt "
            f"writes its header after '# ')"
        )
        stream, line = itertools.chain([line], stream), named
    whitespace = False
    if delim is None:
        peek = _next_data_line(stream)
        if peek is not None:
            stream = itertools.chain([peek], stream)
            n = len(line.split())
            whitespace = n > 1 and len(peek.split()) == n and _all_numbers(peek, None)
        if whitespace:
            notes.append("columns separated by whitespace (numpy.savetxt's default)")
            line = " ".join(line.split()) + "\n"
    delim = delim or (" " if whitespace else ",")
    if line.count(delim) >= WIDE_COLUMNS and '"' not in line:
        names, n_cols = _wide_names(line, delim, keep)
        return _Header(names, n_cols, delim, wide=True, notes=notes), stream
    header = [h.strip() for h in next(csv.reader([line], delimiter=delim))]
    if not any(header):
        raise ValueError(f"{label} has an empty header row")
    header = [h if h else f"column{j}" for j, h in enumerate(header)]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})[:10]
        raise ValueError(f"{label} has duplicate column names {dup}; rename them")
    head = _Header(dict(enumerate(header)), len(header), delim, whitespace=whitespace)
    head.notes = notes
    return head, stream


def _wide_names(line: str, delim: str, keep: set[str]) -> tuple[dict[int, str], int]:
    """Selected names of a very wide header, without splitting it into millions of strings.

    Cells are located by the delimiter positions (numpy over the line's bytes);
    only cells holding an anchor word (:func:`siflow.io._columns.relevant_anchors`,
    found by literal search) or a ``keep`` name are cut out and matched.
    """
    line = line.rstrip("\r\n")
    if not line.isascii():
        return _wide_names_slow(line, delim, keep)
    cuts = _delimiter_positions(line, delim)
    words = [*relevant_anchors(), *(k.lower() for k in keep if k)]
    finder = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
    overlap = max(map(len, words))
    candidates: set[int] = set()
    block = 1 << 20
    for offset in range(0, len(line), block):
        segment = line[offset : offset + block + overlap].lower()  # one block copied at a time
        hits = [m.start() + offset for m in finder.finditer(segment)]
        candidates.update(np.searchsorted(cuts, hits).tolist())
    pattern = relevant_column_pattern()
    names: dict[int, str] = {}
    for j in sorted(candidates):
        start = int(cuts[j - 1]) + 1 if j else 0
        end = int(cuts[j]) if j < cuts.size else len(line)
        cell = line[start:end].strip()
        if cell in keep or pattern.fullmatch(cell):
            names[j] = cell
    return names, int(cuts.size) + 1


def _delimiter_positions(line: str, delim: str, block: int = 1 << 20) -> np.ndarray:
    """Indices of ``delim`` in an ASCII line, found block by block (int32 when they fit)."""
    dtype = np.int32 if len(line) < 2**31 else np.int64
    parts = []
    for offset in range(0, len(line), block):
        chunk = np.frombuffer(line[offset : offset + block].encode("ascii"), dtype=np.uint8)
        parts.append((np.flatnonzero(chunk == ord(delim)) + offset).astype(dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _wide_names_slow(line: str, delim: str, keep: set[str]) -> tuple[dict[int, str], int]:
    pattern = relevant_column_pattern()
    names: dict[int, str] = {}
    start, j = 0, 0
    while True:
        stop = line.find(delim, start)
        cell = line[start : stop if stop >= 0 else len(line)].strip()
        if cell in keep or pattern.fullmatch(cell):
            names[j] = cell
        j += 1
        if stop < 0:
            return names, j
        start = stop + 1


def _finish(header: _Header, state: dict[int, _Column], n_rows: int):
    table: Table = {}
    text_cols: list[str] = []
    bad: dict[str, list[tuple[int, str]]] = {}
    notes: list[str] = list(header.notes)
    if header.wide:
        notes.append(
            f"{header.n_cols} columns: only the {len(header.names)} whose names a convention "
            f"uses were read; name another with mapping= to read it"
        )
    for idx, col in state.items():
        name = header.names[idx]
        if col.text or (col.n_values == 0 and col.n_bad > 0):
            text_cols.append(name)
            continue
        parts = col.chunks or [np.empty(0)]
        if any(p.dtype.kind == "i" for p in parts) and not all(p.dtype.kind == "i" for p in parts):
            parts = [p.astype(np.float64) for p in parts]
        table[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        col.chunks = []  # free the chunks before the next column is joined
        if col.n_bad:
            bad[name] = col.bad
            notes.append(bad_cells_note(name, col.n_bad, n_rows, col.bad))
        for convention in sorted(col.conventions):
            notes.append(f"column {name!r}: read with {convention}")
    return table, text_cols, bad, notes


def parse_csv_table(
    path: Path,
    label: str,
    *,
    keep: set[str] | None = None,
    live: bool = False,
) -> CsvTable:
    """Stream a CSV (any compression) into numeric columns, chunk by chunk.

    Lines starting with ``#`` before the header are skipped. The delimiter is a
    comma, or a tab / semicolon when the header has those and no comma. Every
    column is read, except in files of more than :data:`WIDE_COLUMNS` columns,
    where only the columns a convention can use and those named in ``keep`` are
    read (a note says how many). With ``live`` (a log still being written), a last
    line cut mid-write (no line end and too few cells) is left out with a note;
    otherwise it is refused like any truncated file. A last line with no line end
    whose last cell is shorter than that column's cell in every earlier row (of its
    chunk) is a number cut mid-write (``12.0`` as ``1``): it is left out with a note.
    """
    with open_binary(path) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
        try:
            return _parse_stream(stream, label, set(keep or ()), live)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{label} is not UTF-8 text (byte {exc.start} of a chunk); save it as UTF-8 (is "
                f"it in another encoding, or a binary file?)"
            ) from None
        except csv.Error as exc:
            raise ValueError(f"{label} is not valid CSV ({exc}); is the file corrupt?") from None


def _next_chunk(stream: Iterator[str]) -> list[str]:
    """Up to :data:`CHUNK_ROWS` non-blank lines, or fewer once :data:`CHUNK_CHARS` are read."""
    lines: list[str] = []
    chars = 0
    for line in stream:
        if line.strip():
            lines.append(line)
            chars += len(line)
            if len(lines) >= CHUNK_ROWS or chars >= CHUNK_CHARS:
                break
    return lines


def _single_spaced(line: str) -> str:
    """A whitespace-separated line with single spaces between cells, its line end kept."""
    body = line.rstrip("\r\n")
    return " ".join(body.split()) + line[len(body) :]


def _parse_stream(stream: Iterator[str], label: str, keep: set[str], live: bool) -> CsvTable:
    header, data = _header(stream, label, keep)
    state = {i: _Column() for i in header.names}
    n_rows = 0
    partial = cut = None
    while True:
        lines = _next_chunk(data)
        if not lines:
            break
        if header.whitespace:
            lines = [_single_spaced(line) for line in lines]
        if "\x00" in lines[0]:
            raise ValueError(f"{label} is a binary file, not a text log")
        if live and _is_partial_last_line(lines[-1], header):
            partial = lines.pop()
            if not lines:
                break
        elif _last_cell_cut(lines[-1], lines[:-1], header):
            cut = lines.pop()
        n_rows += _parse_chunk(lines, n_rows + 1, header, state, label)
    if n_rows == 0:
        raise ValueError(f"{label} has a header but no data rows")
    table, text_cols, bad, notes = _finish(header, state, n_rows)
    if partial is not None:
        notes.append(
            f"the last line ({partial.strip()[:40]!r}) has no line end and too few cells: "
            f"a row {STILL_WRITTEN}"
        )
    if cut is not None:
        notes.append(
            f"the last line ({cut.strip()[:40]!r}) has no line end and its last cell is "
            f"shorter than every other in its column: a row cut while it was written, left "
            f"out (end the file with a line break to read it)"
        )
    names = list(header.names.values())
    return CsvTable(names, table, text_cols, bad, notes, header.n_cols - len(names))
