"""Reader for siflow's own trajectory files (written by ``Trajectory.save``)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from siflow.io._text import check_path
from siflow.trajectory import Trajectory

__all__ = ["read_siflow", "detect"]


def read_siflow(path: str | os.PathLike[str]) -> Trajectory:
    """Read a ``.npz`` or ``.csv`` written by :meth:`Trajectory.save`, as it is.

    A thin wrapper over :meth:`Trajectory.load` that turns every failure on a bad
    file (corrupt zip, bad metadata, truncated rows, a CSV of another tool) into one
    ``ValueError`` naming the file. ``meta["source"]`` and ``meta["format"]`` are
    set only when absent, so a trajectory keeps its original provenance.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file is not a readable siflow trajectory.
    """
    p = check_path(path)
    try:
        traj = Trajectory.load(p)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if str(p) not in msg:
            msg = f"{str(p)!r}: {msg}"
        raise ValueError(msg) from None
    except (
        OSError,
        KeyError,
        TypeError,
        AttributeError,
        EOFError,
        NotImplementedError,  # zipfile: a damaged header claims an unknown zip version
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise ValueError(
            f"{str(p)!r} is not a readable siflow trajectory ({type(exc).__name__}: {exc}); "
            f"re-save it with Trajectory.save or pass the right fmt"
        ) from None
    traj.meta.setdefault("source", str(p))
    traj.meta.setdefault("format", "siflow")
    return traj


def detect(path: Path, head: bytes) -> bool:
    """An ``.npz`` with ``col_step`` arrays, or text starting with ``# siflow-trajectory``."""
    if path.is_dir():
        return False
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return "col_step.npy" in zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return False
    return head.lstrip().startswith(b"# siflow-trajectory")
