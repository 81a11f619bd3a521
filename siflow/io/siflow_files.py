"""Reader for siflow's own trajectory files (written by ``Trajectory.save``)."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from siflow.io._columns import _norm_name, _pick_group
from siflow.io._text import check_path
from siflow.trajectory import FIELDS, Trajectory

__all__ = ["read_siflow", "select_group", "detect"]


def read_siflow(path: str | os.PathLike[str], group: str | None = None) -> Trajectory:
    """Read a ``.npz`` or ``.csv`` written by :meth:`Trajectory.save`, as it is.

    A thin wrapper over :meth:`Trajectory.load` that turns every failure on a bad
    file (corrupt zip, bad metadata, truncated rows, a CSV of another tool) into one
    ``ValueError`` naming the file. ``meta["source"]`` and ``meta["format"]`` are
    set only when absent, so a trajectory keeps its original provenance.

    ``group``: one SI group of a log with per-group columns (the recorder's
    ``rho/<group>``, ``grad_norm_sphere/<group>``, ``elr/<group>``,
    ``angular_update/<group>``), read as the trajectory's norm columns
    (:func:`select_group`).

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
    return traj if group is None else select_group(traj, group, repr(str(p)))


#: The recorder's per-group columns ``<field>/<group>`` that stand for a trajectory field.
_GROUP_FIELDS = ("rho", "grad_norm_sphere", "elr", "angular_update")


def _group_name(group: str, available: list[str], label: str) -> str:
    """``group`` among ``available``: the exact name, else the one name it picks out
    (case and separators aside, or as a part), else a ``ValueError`` listing them."""
    if group in available:
        return group
    by_norm = {_norm_name(a): a for a in available}
    return by_norm[_pick_group(group, list(by_norm), label)]


def select_group(traj: Trajectory, group: str, label: str = "the log") -> Trajectory:
    """The trajectory of one SI group of a recorder log.

    Its ``rho``, ``grad_norm_sphere``, ``elr`` and ``angular_update`` are the group's
    columns ``<field>/<group>`` (the totals, over the concatenated groups, stay in
    ``extra`` as ``<field>/total``); the loss, steps and other columns are kept. The
    group's own ``lr`` and ``wd`` (``meta["group_hyper"]``, recorded by
    :class:`~siflow.torch_probe.SIRecorder`) replace the log's, which are the first
    group's; a logged ``lr`` column then becomes the group's, ``elr ρ²`` (exact: the
    recorder's ``elr`` is ``lr/ρ²``). ``group="sum"`` is the log as it is (its totals
    are the norms of the concatenated groups). Unknown group: ``ValueError`` listing
    the groups.
    """
    if not isinstance(group, str):
        raise ValueError(f"group must be a group name, got {type(group).__name__}")
    available = [k.split("/", 1)[1] for k in traj.extra if k.startswith("rho/")]
    if not available:
        raise ValueError(f"{label} has no per-group columns (rho/<group>); drop group=")
    if _norm_name(group) == "sum":
        return traj
    name = _group_name(group, available, label)
    cols = traj.to_columns()
    extra = dict(traj.extra)
    for fld in _GROUP_FIELDS:
        per = extra.pop(f"{fld}/{name}", None)
        if cols.get(fld) is not None:
            extra[f"{fld}/total"] = cols[fld]
        cols[fld] = per
    meta = dict(traj.meta)
    hyper = (meta.get("group_hyper") or {}).get(name)
    notes = [f"group {name!r} of {', '.join(available)}: its norm, sphere gradient, elr, angle"]
    if isinstance(hyper, Mapping) and (hyper.get("lr"), hyper.get("wd")) != (
        meta.get("lr"),
        meta.get("wd"),
    ):
        meta["lr"], meta["wd"] = hyper.get("lr"), hyper.get("wd")
        if "lr" in extra and cols.get("elr") is not None and cols.get("rho") is not None:
            extra["lr"] = cols["elr"] * cols["rho"] ** 2
        if "wd" in extra:
            del extra["wd"]
            notes.append("the logged wd column (another group's) is left out")
    meta["group"] = name
    meta["notes"] = [*meta.get("notes", []), *notes]
    fields = {k: cols.get(k) for k in FIELDS}
    return Trajectory(step=traj.step, **fields, extra=extra, meta=meta)


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
