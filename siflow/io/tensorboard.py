"""Reader for TensorBoard event files (PyTorch ``SummaryWriter``, Keras/TF2, tensorboard)."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._fileio import require
from siflow.io._build import build_trajectory
from siflow.io._columns import Table
from siflow.io._text import check_path
from siflow.trajectory import Trajectory

__all__ = ["read_tensorboard", "tensorboard_scalars", "detect"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

#: Keep every point: EventAccumulator samples 10,000 random points per tag otherwise.
SIZE_GUIDANCE = {"scalars": 0, "tensors": 0}


def _run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that hold event files, sorted."""
    runs = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        if any("tfevents" in f for f in files):
            runs.append(Path(dirpath))
    return runs


def check_event_file(path: Path) -> int:
    """Walk the TFRecord framing of an event file; return the bytes of a truncated tail.

    Each record is ``uint64 length, uint32 masked_crc32c(length), data[length],
    uint32 masked_crc32c(data)`` (little endian). The length CRC is checked, so a
    file that is not an event file, or a damaged record header, raises
    ``ValueError``; a last record cut short (the writer was interrupted) is
    reported by its size and left out, as TensorBoard does.
    """
    require("tensorboard", "tensorboard")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    label = repr(str(path))
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as exc:
        raise ValueError(f"{label} cannot be read ({exc.strerror or exc})") from None
    with fh:
        if size == 0:
            raise ValueError(f"{label} is an empty event file; was the writer ever flushed?")
        pos = 0
        n = 0
        while pos < size:
            fh.seek(pos)
            header = fh.read(12)
            if len(header) < 12:
                return size - pos
            (length,) = struct.unpack("<Q", header[:8])
            (crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != crc:
                where = "is not a TensorBoard event file" if n == 0 else "is corrupt"
                raise ValueError(
                    f"{label} {where} (bad record header at byte {pos}); "
                    f"remove it from the log directory"
                )
            end = pos + 12 + length + 4
            if end > size:
                return size - pos
            pos = end
            n += 1
    return 0


def _scalar_series(source: str, label: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` for scalar and scalar-tensor tags of one run."""
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    try:
        acc = event_accumulator.EventAccumulator(source, size_guidance=SIZE_GUIDANCE)
        acc.Reload()
        tags = acc.Tags()
    except Exception as exc:  # DataLossError, protobuf DecodeError, OSError...
        raise ValueError(
            f"{label}: TensorBoard could not read {source!r} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); is the event file corrupt or truncated?"
        ) from None
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in tags.get("scalars", []):
        out[tag] = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
    for tag in tags.get("tensors", []):
        try:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        except Exception:
            plugin = ""
        if plugin not in ("scalars", ""):
            continue
        points = []
        for e in acc.Tensors(tag):
            try:
                arr = tensor_util.make_ndarray(e.tensor_proto)
            except Exception:
                points = []
                break
            if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
                points = []
                break
            points.append((int(e.step), float(arr.reshape(-1)[0])))
        if points:
            out.setdefault(tag, points)
    return out


#: Subdirectories that split one run by data set (Keras writes ``train/`` and ``validation/``).
_SPLIT_DIRS = {"train", "training", "val", "valid", "validation", "eval", "evaluation", "test"}


def _run_root(run: Path, tags: Mapping[str, Any]) -> Path:
    """The run a directory of event files belongs to: its parent for a data-set split
    (``train/``, ``validation/``) or an ``add_scalars`` child (``<tag>_<key>`` holding
    the tag), else itself."""
    if run.name.lower() in _SPLIT_DIRS:
        return run.parent
    if any(run.name.startswith(tag.replace("/", "_") + "_") for tag in tags):
        return run.parent
    return run


def _check_one_run(p: Path, per_run: Mapping[Path, Mapping[str, Any]]) -> Path:
    """Refuse a directory holding several runs that log the same tags (their columns
    would be read as groups of one run); return the directory the columns are named
    from: the one run's own directory when ``p`` holds a single run below it
    (``SummaryWriter()``'s ``runs/<date>_<host>``), else ``p``."""
    roots: dict[Path, set[str]] = {}
    for run, tags in per_run.items():
        roots.setdefault(_run_root(run, tags), set()).update(tags)
    shared = [r for r in roots if any(roots[r] & roots[o] for o in roots if o != r)]
    if len(shared) > 1:
        names = ", ".join(r.relative_to(p).as_posix() for r in sorted(shared)[:6])
        more = f" and {len(shared) - 6} more" if len(shared) > 6 else ""
        raise ValueError(
            f"{str(p)!r} holds {len(shared)} runs that log the same tags ({names}{more}); "
            f"pass one run's directory"
        )
    return next(iter(roots)) if len(roots) == 1 else p


def _check_no_restart(run: Path, series: Mapping[str, list[tuple[int, float]]]) -> None:
    """Refuse a run directory whose series go back in step (in file order): a run
    restarted, or resumed from an earlier checkpoint, into the same directory. Its
    event files hold two runs; read as one, the later run's values would overwrite the
    earlier one's at the steps they share and leave the rest mixed in (TensorBoard
    purges nothing for files written by PyTorch's ``SummaryWriter``). A tabular log
    that goes back in step is refused the same way."""
    for tag, points in series.items():
        steps = np.array([s for s, _ in points], dtype=np.int64)
        if steps.size < 2:
            continue
        top = np.maximum.accumulate(steps)
        back = np.flatnonzero(steps[1:] < top[:-1])
        if back.size:
            k = int(back[0]) + 1
            files = sorted(f.name for f in run.iterdir() if "tfevents" in f.name)
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            raise ValueError(
                f"{str(run)!r}: tag {tag!r} goes back from step {int(top[k - 1])} to step "
                f"{int(steps[k])} (a run restarted or resumed into the same directory?); its "
                f"event files ({shown}) hold more than one run: pass one event file, or move "
                f"the other run's files to a directory of their own"
            )


def _collect(p: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, int]]:
    label = repr(str(p))
    if p.is_file():
        tail = check_event_file(p)
        series = _scalar_series(str(p), label)
        _check_no_restart(p.parent, series)
        return series, ({p.name: tail} if tail else {})
    runs = _run_dirs(p)
    if not runs:
        raise ValueError(
            f"{label} holds no TensorBoard event files (*tfevents*); pass the log directory "
            f"given to SummaryWriter(log_dir=...)"
        )
    truncated: dict[str, int] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    per_run = {run: _scalar_series(str(run), label) for run in runs}
    home = _check_one_run(p, per_run)
    for run in runs:
        for f in sorted(run.iterdir()):
            if "tfevents" in f.name and f.is_file():
                tail = check_event_file(f)
                if tail:
                    truncated[f.relative_to(p).as_posix()] = tail
        _check_no_restart(run, per_run[run])
        rel = run.relative_to(home).as_posix()
        for tag, points in per_run[run].items():
            if rel == ".":
                name = tag
            else:
                prefix = tag.replace("/", "_") + "_"
                leaf = run.name
                if leaf.startswith(prefix) and len(leaf) > len(prefix):
                    parent = run.parent.relative_to(home).as_posix()
                    name = f"{tag}/{leaf[len(prefix) :]}"
                    if parent != ".":
                        name = f"{parent}/{name}"
                else:
                    name = f"{rel}/{tag}"
            base, k = name, 2
            while name in series:
                name = f"{base}#{k}"
                k += 1
            series[name] = points
    return series, truncated


def tensorboard_scalars(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``path`` as ``{column: [(step, value), ...]}``.

    A directory of several runs that log the same tags (``runs/<date>_<host>``,
    ``lightning_logs/version_<k>``) is refused: pass one run's directory. Within one
    run, a subdirectory ``sub`` (Keras' ``train/`` and ``validation/``) contributes
    ``"<sub>/<tag>"``, except the
    subdirectories that ``torch.utils.tensorboard.SummaryWriter.add_scalars``
    creates (``<main_tag>_<key>`` holding the tag ``main_tag``), which become
    ``"<main_tag>/<key>"``: ``add_scalars("norm", {"conv1": x})`` gives the
    per-group column ``norm/conv1``. Points are in file order.
    """
    return _collect(check_path(path, allow_dir=True))[0]


def read_tensorboard(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
) -> Trajectory:
    """Read TensorBoard scalars into a :class:`Trajectory`.

    Uses TensorBoard's own ``EventAccumulator`` with
    ``size_guidance={"scalars": 0, "tensors": 0}`` (it keeps 10,000 random points
    per tag otherwise). Reads ``simple_value`` scalars (PyTorch ``add_scalar``)
    and scalars written as rank-0 tensors (Keras/TF2, ``tensorboard.summary``).

    Parameters
    ----------
    path : path-like
        An event file or a log directory (walked recursively; see
        :func:`tensorboard_scalars` for column names of subdirectory runs and
        ``add_scalars`` series).
    mapping, group
        As in :func:`siflow.io.read_csv`; the columns are the tags, plus ``step``
        (the event step).
    steps_per_epoch : int, optional
        Only used when the event steps count epochs and you say so with
        ``mapping={"epoch": "step"}``, or when a tag such as ``epoch`` is mapped
        as the epoch.

    Notes
    -----
    Tags are merged on the union of their steps (blank where a tag was not
    written); a step written twice keeps the last value, as TensorBoard shows.
    Every event file's record framing is checked first (:func:`check_event_file`):
    a file that is not an event file or has a damaged record raises
    ``ValueError``; a last record cut short (a run still writing, or killed) is
    left out and ``meta["truncated_files"]`` maps the file to the bytes dropped.
    Requires the ``tensorboard`` extra (``pip install "siflow[tensorboard]"``).
    """
    p = check_path(path, allow_dir=True)
    series, truncated = _collect(p)
    if not series:
        raise ValueError(
            f"{str(p)!r} holds no scalar summaries; log scalars with add_scalar or "
            f"tf.summary.scalar"
        )
    steps = np.unique(
        np.concatenate([np.array([s for s, _ in pts], dtype=np.int64) for pts in series.values()])
    )
    table: Table = {"step": steps.astype(np.float64)}
    for name, points in series.items():
        values = np.full(steps.size, np.nan)
        for s, v in points:  # in file order: a step written twice keeps the last value
            values[np.searchsorted(steps, s)] = v
        key = name if name != "step" else "tag:step"
        table[key] = values
    meta: dict[str, Any] = {"tags": sorted(series)}
    if truncated:
        meta["truncated_files"] = truncated
        meta["notes"] = [
            f"event file {name!r} ends with a record cut short ({size} bytes; the writer was "
            f"interrupted, or is still writing): left out"
            for name, size in truncated.items()
        ]
    return build_trajectory(
        table,
        path=p,
        fmt="tensorboard",
        mapping=mapping,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=meta,
    )


_MAX_SCAN = 2000


def detect(path: Path, head: bytes) -> bool:
    """A file named ``*tfevents*``, or a directory holding one (searched recursively)."""
    if not path.is_dir():
        return "tfevents" in path.name.lower()
    for count, (_root, _dirs, files) in enumerate(os.walk(path)):
        if any("tfevents" in f for f in files):
            return True
        if count > _MAX_SCAN:
            break
    return False
