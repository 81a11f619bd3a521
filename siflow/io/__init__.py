"""Readers that turn real training logs into a :class:`~siflow.trajectory.Trajectory`.

One front door, :func:`read`, detects the format and dispatches through
:data:`FORMATS`, a registry like scipy's ``METHODS``: each entry is one reader
module's ``read`` function and its ``detect(path, head)`` rule, so a new format is
one module and one registry line.

======================  ==============================================================
``fmt``                 reader and source
======================  ==============================================================
``"siflow"``            :func:`read_siflow`: files written by ``Trajectory.save``
``"seed-npz"``          :func:`read_seed_npz`: ``train-tm.npz`` of Lobacheva et al. (2021)
``"seed-out"``          :func:`read_seed_out`: their ``logs/<exp>.out`` training table
``"req"``               :func:`read_req`: REQ's ``dynamics.pkl`` (Kosson et al. 2024)
``"idealgas"``          :func:`read_idealgas`: ``trace.pt`` + ``config.json`` (Sadrtdinov
                        et al. 2025)
``"neural-mechanics"``  :func:`read_neural_mechanics`: ``feats/step<N>.h5`` folders
                        (Kunin et al. 2021)
``"mlflow"``            :func:`read_mlflow`: an MLflow file store run
                        (``mlruns/<experiment>/<run>``)
``"tensorboard"``       :func:`read_tensorboard`: event files or a log directory
``"lightning"``         :func:`read_lightning`: PyTorch Lightning ``CSVLogger`` output
``"wandb"``             :func:`read_wandb`: Weights & Biases CSV export
``"jsonl"``             :func:`read_jsonl`: JSON lines, one object per logged step
``"csv"``               :func:`read_csv`: CSV/TSV with a step (or epoch) column
======================  ==============================================================

Columns are matched to fields by their common spellings (:data:`ALIASES`,
``norm/<g>``, ``norm_<g>``, ``<g>_norm``, ``grad_norm_<g>`` ...), by siflow's own
convention ``siflow/<group>/<metric>`` (:data:`SIFLOW_METRICS`), or by
``mapping``. Compressed files (gzip, bz2, xz, single-member zip) are read
transparently; decompression bombs are refused before inflating. Pickles and
torch files are read by a restricted unpickler that builds only arrays and plain
containers (:mod:`siflow.io._safe_pickle`): reading never runs code from a file.
What each reader decided is recorded in ``Trajectory.meta``; sentences the user
must see (bad cells, evaluation logs, unconverted quantities) are in
``meta["notes"]``. Bad input raises ``ValueError`` (``FileNotFoundError`` for a
missing path) with one line naming the file, the problem and the fix.
"""

from __future__ import annotations

import inspect
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siflow.io import (
    idealgas,
    lightning,
    mlflow,
    neural_mechanics,
    req,
    seed_npz,
    seed_out,
    siflow_files,
    tabular,
    tensorboard,
    wandb,
)
from siflow.io._columns import (
    ALIASES,
    MAPPING_KEYS,
    SIFLOW_METRICS,
    normalize_mapping,
    parse_mapping,
)
from siflow.io._safe_pickle import is_torch_zip
from siflow.io._text import check_path, read_head
from siflow.io.idealgas import read_idealgas
from siflow.io.lightning import read_lightning
from siflow.io.mlflow import read_mlflow
from siflow.io.neural_mechanics import read_neural_mechanics
from siflow.io.req import read_req
from siflow.io.seed_npz import read_seed_npz
from siflow.io.seed_out import read_seed_out
from siflow.io.siflow_files import read_siflow
from siflow.io.tabular import read_csv, read_jsonl
from siflow.io.tensorboard import read_tensorboard
from siflow.io.wandb import read_wandb
from siflow.trajectory import Trajectory

__all__ = [
    "FORMATS",
    "Format",
    "MAPPING_KEYS",
    "ALIASES",
    "SIFLOW_METRICS",
    "read",
    "detect_format",
    "parse_mapping",
    "read_siflow",
    "read_csv",
    "read_jsonl",
    "read_tensorboard",
    "read_seed_npz",
    "read_seed_out",
    "read_req",
    "read_idealgas",
    "read_neural_mechanics",
    "read_lightning",
    "read_wandb",
    "read_mlflow",
]


@dataclass(frozen=True)
class Format:
    """A registered log format: its reader and the rule that recognises its files.

    ``detect(path, head)`` gets the path (a file or a directory) and the first
    64 KiB of the file's (decompressed) content (empty for a directory).
    """

    read: Callable[..., Trajectory]
    detect: Callable[[Path, bytes], bool]


#: Registered formats, in detection order (the first whose rule matches wins).
FORMATS: dict[str, Format] = {
    "siflow": Format(read_siflow, siflow_files.detect),
    "seed-npz": Format(read_seed_npz, seed_npz.detect),
    "seed-out": Format(read_seed_out, seed_out.detect),
    "req": Format(read_req, req.detect),
    "idealgas": Format(read_idealgas, idealgas.detect),
    "neural-mechanics": Format(read_neural_mechanics, neural_mechanics.detect),
    "mlflow": Format(read_mlflow, mlflow.detect),
    "tensorboard": Format(read_tensorboard, tensorboard.detect),
    "lightning": Format(read_lightning, lightning.detect),
    "wandb": Format(read_wandb, wandb.detect),
    "jsonl": Format(read_jsonl, tabular.detect_jsonl),
    "csv": Format(read_csv, tabular.detect_csv),
}


def _refuse_non_logs(p: Path, head: bytes) -> None:
    """Model checkpoints and other torch files are not logs: say so, with the fix."""
    if p.is_dir() or not head.startswith(b"PK") or is_torch_zip(p) is None:
        return
    if p.name.startswith("checkpoint"):
        raise ValueError(
            f"{str(p)!r} is a model checkpoint, not a training log; run the seed repository's "
            f"get_info.py on the checkpoints to write info/<exp>/train-tm.npz and read that "
            f"(or pass the info/<exp> directory)"
        )
    raise ValueError(
        f"{str(p)!r} is a PyTorch file that is not a log siflow knows (a checkpoint?); read "
        f"the run's metrics log instead, or pass fmt= one of {', '.join(FORMATS)}"
    )


def detect_format(path: str | os.PathLike[str]) -> str:
    """The name of the first format in :data:`FORMATS` whose ``detect`` rule claims ``path``.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Empty, binary or unrecognised file, or a model checkpoint (the message
        lists ``fmt`` values or says which file to read instead).
    """
    p = check_path(path, allow_dir=True)
    choices = ", ".join(FORMATS)
    head = b"" if p.is_dir() else read_head(p)
    if not p.is_dir() and not head.strip():
        raise ValueError(f"{str(p)!r} is empty; was the run logged to another file?")
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(p):
        raise ValueError(
            f"{str(p)!r} begins as a zip/.npz but has no readable zip directory (truncated, "
            f"or still being written); pass it again once it is complete"
        )
    if not p.is_dir() and p.name.lower().endswith(".npz") and not head.startswith(b"PK"):
        # a text reader would take a damaged archive's bytes for a table
        raise ValueError(f"{str(p)!r} is not a valid .npz (no zip header); is it truncated?")
    for name, entry in FORMATS.items():
        if entry.detect(p, head):
            return name
    if p.is_dir():
        runs = sorted(
            (
                q
                for q in p.iterdir()
                if q.is_dir() and any(e.detect(q, b"") for e in FORMATS.values())
            ),
            key=lambda q: q.name,
        )
        if runs:
            names = ", ".join(q.name for q in runs[:6]) + (" ..." if len(runs) > 6 else "")
            raise ValueError(
                f"{str(p)!r} holds {len(runs)} run director{'y' if len(runs) == 1 else 'ies'} "
                f"({names}); pass one of them"
            )
        raise ValueError(
            f"{str(p)!r} is a directory without a log siflow knows (TensorBoard event files, "
            f"metrics.csv, train-tm.npz, dynamics.pkl, trace.pt, feats/step<N>.h5, an MLflow "
            f"run's meta.yaml and metrics/); pass the log file itself or fmt= one of {choices}"
        )
    _refuse_non_logs(p, head)
    if head.startswith(b"PK"):
        raise ValueError(
            f"{str(p)!r} is a zip/.npz of no known layout (no col_step for siflow, no "
            f"report_epochs for the seed paper); pass fmt= one of {choices}"
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(
            f"{str(p)!r} is UTF-16 text (Excel's 'Unicode text'); save it as UTF-8 CSV and read "
            f"that"
        )
    if b"\x00" not in head:
        try:
            head.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{str(p)!r} is not UTF-8 text (byte {exc.start}: another encoding, such as "
                f"Latin-1?); save it as UTF-8 and read that"
            ) from None
    raise ValueError(f"{str(p)!r} is a binary file of unknown format; pass fmt= one of {choices}")


def _check_fmt(fmt: Any) -> str:
    name = fmt.lower().replace("_", "-") if isinstance(fmt, str) else None
    if name not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return name


def _reader_kwargs(name: str, reader: Callable[..., Trajectory], given: dict[str, Any]) -> dict:
    """The options ``reader`` accepts; an option it does not take is a ``ValueError``."""
    params = inspect.signature(reader).parameters
    out = {}
    for key, value in given.items():
        if value is None or (key == "mapping" and not value):
            continue
        if key not in params:
            raise ValueError(f"{key}= does not apply to fmt={name!r} logs; drop it")
        out[key] = value
    return out


def read(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    mapping: Mapping[str, str | None] | Sequence[str] | None = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    **options: Any,
) -> Trajectory:
    """Read any supported training log into a :class:`Trajectory`.

    Parameters
    ----------
    path : path-like
        A log file, or a directory (TensorBoard log dir, Lightning version dir,
        the seed paper's ``info/<exp>`` dir, a REQ, ideal-gas or
        neural-mechanics run dir).
    fmt : str, optional
        A key of :data:`FORMATS`; detected by :func:`detect_format` when omitted.
    mapping : dict or list of ``"field=column"``, optional
        Column overrides (:func:`parse_mapping`); not allowed for siflow files.
    steps_per_epoch : int, optional
        Converts epochs to optimizer steps; without it a log that only has
        epochs uses them as the time axis and says so in ``meta["time_unit"]``.
    group : str, optional
        SI group (layer) when the log has per-group norms, or ``"sum"`` for the
        total ``sqrt(sum of squares)``. For a W&B export whose run names include
        ``group`` (and no ``run`` given), it selects the run.
    **options
        Format-specific options, passed on to the reader: ``run=`` (W&B),
        ``lr=``/``wd=`` (seed paper), ``evaluation=True`` (the seed paper's
        ``test-em.npz``). An option the format's reader does not take raises
        ``ValueError``; options set to ``None`` are ignored.

    Returns
    -------
    Trajectory
        ``meta["format"]`` and ``meta["source"]`` say where it came from.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Unknown ``fmt``, unrecognised, empty, corrupt or truncated file, or a log
        that lacks a needed column (the message names the ``mapping=`` that fixes
        it).
    """
    mapping = normalize_mapping(mapping)  # its type checked before a falsy one is dropped
    name = _check_fmt(detect_format(path) if fmt is None else fmt)
    reader = FORMATS[name].read
    if name == "siflow" and mapping:
        raise ValueError(
            f"{str(path)!r} is a siflow trajectory file, read as it is: drop mapping= "
            f"(use Trajectory methods to select columns)"
        )
    given = {"mapping": mapping, "steps_per_epoch": steps_per_epoch, "group": group, **options}
    return reader(path, **_reader_kwargs(name, reader, given))
