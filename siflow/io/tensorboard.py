"""Reader for TensorBoard event files (PyTorch ``SummaryWriter``, Keras/TF2, tensorboard)."""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siflow._fileio import require
from siflow.io._build import build_trajectory
from siflow.io._columns import Table, config_meta, normalize_mapping
from siflow.io._series import Series, series_table
from siflow.io._text import check_path
from siflow.io.tabular import HF_LOG_NOTE, HF_OPTIMIZER_NOTE
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


@dataclass
class _Run:
    """One directory's event files: scalar series, and the ``add_hparams`` session's
    hyperparameters (None when the directory holds no hparams session)."""

    series: Series
    hparams: dict[str, Any] | None = None
    #: the Hugging Face Trainer's arguments (its ``args`` text summary), None without one
    trainer_args: dict[str, Any] | None = None


def _load_run(source: str, label: str) -> _Run:
    """Scalar and scalar-tensor series of one run, and its hparams session if any."""
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    try:
        acc = event_accumulator.EventAccumulator(source, size_guidance=SIZE_GUIDANCE)
        acc.Reload()
        tags = acc.Tags()
    except Exception as exc:  # DataLossError, protobuf DecodeError, OSError...
        raise ValueError(
            f"{label}: TensorBoard could not read {source!r} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); is the event file corrupt or truncated?"
        ) from None
    out: Series = {}
    for tag in tags.get("scalars", []):
        out[tag] = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
    for tag in tags.get("tensors", []):
        points = _tensor_points(acc, tag)
        if points:
            out.setdefault(tag, points)
    return _Run(out, _session_hparams(acc), _trainer_args(acc))


#: Largest ``args`` text summary read (TrainingArguments as JSON are a few KiB).
_MAX_ARGS_CHARS = 1 << 20


def _trainer_args(acc: Any) -> dict[str, Any] | None:
    """The ``TrainingArguments`` a Hugging Face ``Trainer`` writes as the text summary
    ``args`` (JSON, read as data), or None."""
    from tensorboard.util import tensor_util

    try:
        if acc.SummaryMetadata("args/text_summary").plugin_data.plugin_name != "text":
            return None
        arr = tensor_util.make_ndarray(acc.Tensors("args/text_summary")[-1].tensor_proto)
        raw = arr.reshape(-1)[0]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        if len(text) > _MAX_ARGS_CHARS:
            return None
        args = json.loads(text)
    except Exception:  # no such tag, not text, not JSON: not a Trainer's arguments
        return None
    return args if isinstance(args, dict) and "optim" in args else None


def _tensor_points(acc: Any, tag: str) -> list[tuple[int, float]]:
    """Points of a tensor tag written as rank-0 scalars (Keras/TF2); [] for any other."""
    from tensorboard.util import tensor_util

    try:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
    except Exception:
        plugin = ""
    if plugin not in ("scalars", ""):
        return []
    points = []
    for e in acc.Tensors(tag):
        try:
            arr = tensor_util.make_ndarray(e.tensor_proto)
        except Exception:
            return []
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
            return []
        points.append((int(e.step), float(arr.reshape(-1)[0])))
    return points


def _session_hparams(acc: Any) -> dict[str, Any] | None:
    """The hyperparameters of the hparams session in a run (``SummaryWriter.add_hparams``,
    Lightning's ``log_hyperparams``): ``{name: number, text or bool}``; None without one."""
    try:
        content = acc.PluginTagToContent("hparams")
    except (KeyError, ValueError):
        return None
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict[str, Any] = {}
    raw = content.get("_hparams_/session_start_info")
    if raw is None:
        return out
    try:
        info = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
    except Exception:  # protobuf DecodeError: a damaged summary holds no usable hparams
        return out
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind in ("number_value", "string_value", "bool_value"):
            out[name] = getattr(value, kind)
    return out


def _trainer_meta(args: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` from a Hugging Face Trainer's arguments: lr, weight decay, the optimizer
    (its ``optim``) and the notes on the Trainer log's conventions."""
    meta = config_meta(args, "the Trainer's args:")
    notes = [HF_LOG_NOTE]
    if meta.get("optimizer") == "adamw":
        # optim names what the Trainer would build; a Trainer given optimizers= ran another
        meta["optimizer_assumed"] = True
        notes.append(HF_OPTIMIZER_NOTE.format(where=f"args optim={args.get('optim')!r}"))
    meta["notes"] = notes
    return meta


def _hparams_summaries(runs: Sequence[Path], loaded: Mapping[Path, _Run]) -> list[Path]:
    """Directories that ``SummaryWriter.add_hparams`` wrote below a run (``<run>/<time>/``):
    the hparams session and the final metrics again, not a run of their own."""
    return [
        run
        for run in runs
        if loaded[run].hparams is not None and any(o != run and o in run.parents for o in runs)
    ]


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


def _span(points: Mapping[str, list[tuple[int, float]]]) -> tuple[int, int] | None:
    steps = [s for pts in points.values() for s, _ in pts]
    return (min(steps), max(steps)) if steps else None


@dataclass
class _Homes:
    """Where the columns are named from: one directory, or the directories of the
    segments of one run resumed into new directories (in step order)."""

    roots: list[Path]
    root_of: dict[Path, Path]

    @property
    def segments(self) -> bool:
        return len(self.roots) > 1


def _homes(p: Path, per_run: Mapping[Path, Series]) -> _Homes:
    """Refuse a directory holding several runs that log the same tags (their columns
    would be read as groups of one run), unless their steps follow on (one run resumed
    into a new directory: Hugging Face's ``runs/<date>_<host>`` after
    ``resume_from_checkpoint``). One run below ``p`` (``SummaryWriter()``'s
    ``runs/<date>_<host>``) names the columns from its own directory."""
    root_of = {run: _run_root(run, series) for run, series in per_run.items()}
    tags: dict[Path, set[str]] = {}
    spans: dict[Path, tuple[int, int]] = {}
    for run, root in root_of.items():
        tags.setdefault(root, set()).update(per_run[run])
        span = _span(per_run[run])
        if span is not None:
            lo, hi = spans.get(root, span)
            spans[root] = (min(lo, span[0]), max(hi, span[1]))
    shared = [r for r in tags if any(tags[r] & tags[o] for o in tags if o != r)]
    if len(shared) <= 1:
        return _Homes([next(iter(tags))] if len(tags) == 1 else [p], root_of)
    order = sorted(shared, key=lambda r: spans.get(r, (0, 0)))
    follow_on = len(shared) == len(tags) and all(r in spans for r in shared)
    follow_on = follow_on and all(spans[a][1] < spans[b][0] for a, b in itertools.pairwise(order))
    if follow_on:
        return _Homes(order, root_of)
    names = ", ".join(r.relative_to(p).as_posix() for r in sorted(shared)[:6])
    more = f" and {len(shared) - 6} more" if len(shared) > 6 else ""
    raise ValueError(
        f"{str(p)!r} holds {len(shared)} runs that log the same tags at overlapping steps "
        f"({names}{more}); pass one run's directory{_whole_run_hint(p)}"
    )


def _checkpoint_number(state: Path) -> int:
    """N of ``checkpoint-N/trainer_state.json`` (-1 when the folder has no number)."""
    tail = state.parent.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _whole_run_hint(p: Path) -> str:
    """A pointer to the Hugging Face ``trainer_state.json`` of the output directory that
    holds ``p`` (its log history covers every resumed segment), or ''."""
    for base in (p, p.parent):
        latest = sorted(base.glob("checkpoint-*/trainer_state.json"), key=_checkpoint_number)
        for f in [base / "trainer_state.json", *latest[::-1]]:
            if f.is_file():
                return f", or read {str(f)!r}, which holds the whole run's log history"
    return ""


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


@dataclass
class _Collected:
    """Every scalar series of a path, named as columns, and what the reader noticed."""

    series: Series
    truncated: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: columns from a data-set split directory (Keras' ``train/``, ``validation/``)
    split_columns: set[str] = field(default_factory=set)


def _column_name(run: Path, home: Path, tag: str) -> str:
    """A tag's column: the tag in ``home``, ``<main_tag>/<key>`` for an ``add_scalars``
    child ``<main_tag>_<key>``, else ``<subdirectory>/<tag>``."""
    rel = run.relative_to(home).as_posix()
    if rel == ".":
        return tag
    prefix = tag.replace("/", "_") + "_"
    leaf = run.name
    if leaf.startswith(prefix) and len(leaf) > len(prefix):
        parent = run.parent.relative_to(home).as_posix()
        name = f"{tag}/{leaf[len(prefix) :]}"
        return name if parent == "." else f"{parent}/{name}"
    return f"{rel}/{tag}"


def _truncated_files(p: Path, runs: Sequence[Path]) -> dict[str, int]:
    truncated: dict[str, int] = {}
    for run in runs:
        for f in sorted(run.iterdir()):
            if "tfevents" in f.name and f.is_file():
                tail = check_event_file(f)
                if tail:
                    truncated[f.relative_to(p).as_posix()] = tail
    return truncated


def _collect(p: Path) -> _Collected:
    label = repr(str(p))
    if p.is_file():
        tail = check_event_file(p)
        run = _load_run(str(p), label)
        _check_no_restart(p.parent, run.series)
        meta = config_meta(run.hparams or {}, "the run's hparams")
        if run.trainer_args is not None:
            meta = {**_trainer_meta(run.trainer_args), **meta}
        return _Collected(run.series, {p.name: tail} if tail else {}, meta)
    runs = _run_dirs(p)
    if not runs:
        raise ValueError(
            f"{label} holds no TensorBoard event files (*tfevents*); pass the log directory "
            f"given to SummaryWriter(log_dir=...)"
        )
    loaded = {run: _load_run(str(run), label) for run in runs}
    out = _Collected({}, _truncated_files(p, runs))
    summaries = _hparams_summaries(runs, loaded)
    kept = [run for run in runs if run not in summaries]
    for run in kept + summaries:  # a run's own hparams first
        where = "add_hparams" if run in summaries else "the run's hparams"
        out.meta = {**config_meta(loaded[run].hparams or {}, where), **out.meta}
    trainer = next((loaded[r].trainer_args for r in kept if loaded[r].trainer_args), None)
    if trainer is not None:
        out.meta = {**_trainer_meta(trainer), **out.meta}
    for run in summaries:
        out.meta.setdefault("notes", []).append(
            f"{run.relative_to(p).as_posix()!r} holds what SummaryWriter.add_hparams wrote "
            f"(the hyperparameters and final metrics of the run above it): not read as a run"
        )
    homes = _homes(p, {run: loaded[run].series for run in kept})
    for run in kept:
        _check_no_restart(run, loaded[run].series)
        home = homes.root_of[run] if homes.segments else homes.roots[0]
        for tag, points in loaded[run].series.items():
            name = _column_name(run, home, tag)
            if run.name.lower() in _SPLIT_DIRS:
                out.split_columns.add(name)
            _add_series(out.series, name, points, join=homes.segments)
    if homes.segments:
        out.meta.setdefault("notes", []).append(_segments_note(p, homes, loaded))
    return out


def _add_series(series: Series, name: str, points: list[tuple[int, float]], join: bool) -> None:
    """Add a column; a name already taken gets ``#2``, ``#3`` ... or, for the segments of
    one resumed run (``join``), the points continue that column."""
    if join and name in series:
        series[name] = sorted(series[name] + points, key=lambda sv: sv[0])
        return
    base, k = name, 2
    while name in series:
        name = f"{base}#{k}"
        k += 1
    series[name] = points


def _segments_note(p: Path, homes: _Homes, loaded: Mapping[Path, _Run]) -> str:
    parts = []
    for root in homes.roots:
        span = _span({t: pts for run, r in homes.root_of.items() if r == root
                      for t, pts in loaded[run].series.items()})  # fmt: skip
        lo, hi = span if span is not None else (0, 0)
        parts.append(f"{root.relative_to(p).as_posix()} (steps {lo}-{hi})")
    return (
        f"{len(homes.roots)} run directories log the same tags at steps that follow on "
        f"({', '.join(parts)}): read as one run resumed into a new directory"
    )


def tensorboard_scalars(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``path`` as ``{column: [(step, value), ...]}``.

    A directory of several runs that log the same tags at overlapping steps
    (``runs/<date>_<host>``, ``lightning_logs/version_<k>``) is refused: pass one run's
    directory. Runs whose steps follow on (one run resumed into a new directory, as a
    Hugging Face ``Trainer`` does) are read as one, their columns joined. Within one
    run, a subdirectory ``sub`` (Keras' ``train/`` and ``validation/``) contributes
    ``"<sub>/<tag>"``, except the subdirectories that
    ``torch.utils.tensorboard.SummaryWriter.add_scalars`` creates (``<main_tag>_<key>``
    holding the tag ``main_tag``), which become ``"<main_tag>/<key>"``:
    ``add_scalars("norm", {"conv1": x})`` gives the per-group column ``norm/conv1``;
    and the ``<time>/`` subdirectory of ``SummaryWriter.add_hparams`` (its final
    metrics again), which is left out. Points are in file order.
    """
    return _collect(check_path(path, allow_dir=True)).series


#: The logging call that takes the step, for messages.
_HOW = "add_scalar(tag, value, global_step=step)"

#: Keras' TensorBoard callback names its per-epoch summaries ``epoch_<metric>``.
_EPOCH_TAG = "epoch_"


def _keras_epochs(collected: _Collected, mapping: MappingArg) -> list[str]:
    """The Keras per-epoch columns (``epoch_*`` tags in ``train/`` / ``validation/``),
    whose steps are epoch indices; [] when there are none or ``mapping`` sets the axis."""
    given = normalize_mapping(mapping)
    if "step" in given or "epoch" in given:
        return []
    return sorted(n for n in collected.split_columns if n.rsplit("/", 1)[-1].startswith(_EPOCH_TAG))


def _epoch_table(
    collected: _Collected, epoch_cols: list[str], label: str, meta: dict[str, Any]
) -> Table:
    """The table of the Keras per-epoch columns on their epoch axis (column ``epoch``);
    the other tags, at iteration steps, are left out with a note."""
    others = [n for n in collected.series if n not in epoch_cols]
    if others:
        shown = ", ".join(others[:4]) + (" ..." if len(others) > 4 else "")
        meta.setdefault("notes", []).append(
            f"Keras per-epoch summaries (epoch_*) set the time axis; {len(others)} tag(s) "
            f"logged at iteration steps ({shown}) are left out: pass mapping step=step to "
            f"read every tag on the event steps"
        )
    table = series_table({n: collected.series[n] for n in epoch_cols}, label, _HOW)
    table["epoch"] = table.pop("step")
    meta["time_note"] = (
        "Keras per-epoch summaries (epoch_* tags): their steps are epoch indices, used as "
        "steps; pass steps_per_epoch= to convert (epoch e ends at step (e+1)*N)"
    )
    return table


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
        Converts epochs to steps: Keras' per-epoch summaries, or event steps that
        count epochs when you say so with ``mapping={"epoch": "step"}`` (or a tag
        such as ``epoch`` mapped as the epoch). Epoch ``e`` (counted from 0) ends at
        step ``(e + 1) * steps_per_epoch``.

    Notes
    -----
    Tags are merged on the union of their steps (blank where a tag was not
    written). A tag holding several different values at one step (per-batch values
    logged at the epoch's step), or all its values at one step (logged without
    ``global_step``), raises ``ValueError``; a run restarted with ``purge_step`` is
    read as TensorBoard shows it (the purged points are gone). Keras' layout
    (``epoch_*`` tags in ``train/`` and ``validation/``, at epoch indices) is read on
    an epoch axis (``meta["time_unit"] == "epoch"``) unless ``steps_per_epoch`` is
    given; ``epoch_learning_rate`` is the lr. The hyperparameters of an hparams
    session (``SummaryWriter.add_hparams``, Lightning's ``log_hyperparams``):
    ``lr``/``learning_rate``, ``wd``/``weight_decay``, ``momentum``, ``batch_size``
    and the optimizer go to ``meta``.
    Every event file's record framing is checked first (:func:`check_event_file`):
    a file that is not an event file or has a damaged record raises
    ``ValueError``; a last record cut short (a run still writing, or killed) is
    left out and ``meta["truncated_files"]`` maps the file to the bytes dropped.
    Requires the ``tensorboard`` extra (``pip install "siflow[tensorboard]"``).
    """
    p = check_path(path, allow_dir=True)
    label = repr(str(p))
    collected = _collect(p)
    if not collected.series:
        raise ValueError(
            f"{label} holds no scalar summaries; log scalars with add_scalar or tf.summary.scalar"
        )
    meta: dict[str, Any] = {"tags": sorted(collected.series), **collected.meta}
    epoch_cols = _keras_epochs(collected, mapping)
    if epoch_cols:
        table = _epoch_table(collected, epoch_cols, label, meta)
        if steps_per_epoch is not None:
            meta.pop("time_note")
    else:
        table = series_table(collected.series, label, _HOW)
    if collected.truncated:
        meta["truncated_files"] = collected.truncated
        meta.setdefault("notes", []).extend(
            f"event file {name!r} ends with a record cut short ({size} bytes; the writer was "
            f"interrupted, or is still writing): left out"
            for name, size in collected.truncated.items()
        )
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
