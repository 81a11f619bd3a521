"""The :class:`Trajectory` type shared by simulations and real training logs.

A trajectory is a table indexed by optimizer step with the scale-invariant (SI)
metrics siflow reasons about, in the notation of the package:

========================  =====================================================
field                     meaning
========================  =====================================================
``step``                  optimizer step (int64, strictly increasing)
``loss``                  training loss
``rho``                   weight norm ``|w|`` of the SI group
``grad_norm_sphere``      gradient norm on the unit sphere ``g~ = |w| |grad L(w)|``
``elr``                   effective learning rate ``lr / |w|^2``
``angular_update``        ``angle(w_t, w_{t+1})`` in radians
``sharpness_sphere``      top eigenvalue of the Riemannian Hessian on the unit sphere
========================  =====================================================

Any field may be ``None`` when the source does not provide it. Further columns
(accuracy, per-layer norms, ...) live in ``extra``; simulations add the running
sums ``sum_angular_update_sq``, ``sum_grad_norm_sphere_sq``,
``sum_grad_norm_sphere``, ``sum_rho`` and ``sum_elr`` (over every step simulated, up
to the row's step: :meth:`Trajectory.exact_means` turns two rows into exact means
whatever the thinning) and, for scheduled runs, the per-step ``lr`` and ``wd``.
Hyperparameters and provenance (``lr``, ``wd``, ``momentum``, ``optimizer``, ``source``, ``seed``,
``status``, ``steps_per_epoch``) live in ``meta``.

Files: ``.npz`` (arrays plus a JSON ``meta`` entry) and ``.csv`` (a first line
``# siflow-trajectory {json meta}`` then a header row). Both are written
atomically.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siflow._fileio import atomic_path, atomic_write

__all__ = ["Trajectory", "FIELDS", "STATUSES"]

#: Float-valued metric fields, in file-column order.
FIELDS: tuple[str, ...] = (
    "loss",
    "rho",
    "grad_norm_sphere",
    "elr",
    "angular_update",
    "sharpness_sphere",
)

#: Values of ``meta["status"]``: how a simulation or log ended.
STATUSES: tuple[str, ...] = ("ok", "interrupted", "diverged", "underflow")

_CSV_MAGIC = "# siflow-trajectory "


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"meta value {obj!r} is not JSON-serialisable")


@dataclass
class Trajectory:
    """Per-step SI metrics of one training run, simulated or measured.

    Parameters
    ----------
    step : array_like of int
        Optimizer steps, strictly increasing.
    loss, rho, grad_norm_sphere, elr, angular_update, sharpness_sphere : array_like, optional
        Metric columns of the same length as ``step`` (see the module docstring).
    extra : dict of str to array_like, optional
        Further columns of the same length.
    meta : dict, optional
        Hyperparameters and provenance; JSON-serialisable values.

    Examples
    --------
    >>> import numpy as np
    >>> t = Trajectory(step=np.arange(3), rho=[2.0, 1.9, 1.8], meta={"lr": 0.1})
    >>> t.fill_derived().elr.round(4).tolist()
    [0.025, 0.0277, 0.0309]
    """

    step: NDArray[np.int64]
    loss: NDArray[np.float64] | None = None
    rho: NDArray[np.float64] | None = None
    grad_norm_sphere: NDArray[np.float64] | None = None
    elr: NDArray[np.float64] | None = None
    angular_update: NDArray[np.float64] | None = None
    sharpness_sphere: NDArray[np.float64] | None = None
    extra: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        step = self._step_array(self.step)
        if step.ndim != 1:
            raise ValueError(f"step must be one-dimensional, got shape {step.shape}")
        if step.dtype.kind not in "iu":  # integer steps are finite whole numbers already
            if step.size and not np.all(np.isfinite(step.astype(np.float64))):
                raise ValueError(
                    "step contains NaN or inf; drop those rows or pass a clean step column"
                )
            if step.size and np.any(step.astype(np.float64) != np.round(step.astype(np.float64))):
                raise ValueError(
                    "step must hold whole numbers; convert epochs with steps_per_epoch"
                )
        # the order is checked by one comparison of neighbours (no int64 difference), in
        # the given dtype; an increasing column then lies between its two ends
        if step.size > 1 and not np.all(step[1:] > step[:-1]):
            i = int(np.argmax(step[1:] <= step[:-1]))
            raise ValueError(
                f"step must be strictly increasing, but step {int(step[i + 1])} follows "
                f"{int(step[i])} (row {i + 1}); sort the log or drop duplicate rows"
            )
        if step.size and max(abs(float(step[0])), abs(float(step[-1]))) >= 2.0**63:
            raise ValueError(
                "step holds numbers beyond the int64 range of a step column; number the rows from 0"
            )
        # the trajectory owns its step column (a copy)
        self.step = step.astype(np.int64)
        step = self.step
        n = step.size
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, self._column(name, value, n))
        for name in ("extra", "meta"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(
                    f"{name} must be a mapping (a dict) of names to "
                    f"{'columns' if name == 'extra' else 'values'}, got "
                    f"{type(getattr(self, name)).__name__}; pass e.g. {name}={{'name': ...}}"
                )
        self.extra = {str(k): self._column(str(k), v, n) for k, v in dict(self.extra).items()}
        self.meta = dict(self.meta)

    @staticmethod
    def _step_array(value: ArrayLike) -> NDArray[Any]:
        """The step column as given (integer or float array), or a ValueError naming it."""
        if np.iscomplexobj(value):
            raise ValueError("step holds complex numbers; pass whole numbers")
        try:
            step = np.asarray(value)
            if step.dtype.kind not in "iuf":
                step = step.astype(np.float64)
        except OverflowError:
            raise ValueError(
                "step holds an integer beyond the float64 range; number the rows from 0"
            ) from None
        except (TypeError, ValueError):
            raise ValueError("step must hold whole numbers (one per row)") from None
        return step

    @staticmethod
    def _column(name: str, value: ArrayLike, n: int) -> NDArray[np.float64]:
        if np.iscomplexobj(value):
            raise ValueError(f"column {name!r} holds complex numbers; pass real numbers")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except OverflowError:
            raise ValueError(
                f"column {name!r} holds an integer beyond the float64 range; pass finite numbers"
            ) from None
        except (TypeError, ValueError):
            raise ValueError(f"column {name!r} must hold numbers") from None
        if arr.shape != (n,):
            raise ValueError(f"column {name!r} has shape {arr.shape}, expected ({n},) like step")
        return arr

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.step.size)

    def has(self, name: str) -> bool:
        """Whether the field or extra column ``name`` is present."""
        if name in FIELDS:
            return getattr(self, name) is not None
        return name == "step" or name in self.extra

    def logged(self, name: str) -> NDArray[np.float64] | None:
        """The extra column the log recorded for ``name`` (``"lr"``, ``"wd"``): the one of
        that name, else the one :func:`siflow.io.read` mapped to it in
        ``meta["columns"]`` (Lightning's ``lr-SGD``); None when there is none."""
        if name in self.extra:
            return self.extra[name]
        columns = self.meta.get("columns")
        source = columns.get(name) if isinstance(columns, Mapping) else None
        return self.extra.get(source) if isinstance(source, str) else None

    def column(self, name: str) -> NDArray[np.float64]:
        """A field or extra column by name; ``ValueError`` naming it when absent."""
        if name == "step":
            return self.step
        value = getattr(self, name) if name in FIELDS else self.extra.get(name)
        if value is None:
            present = ", ".join(self.columns()) or "none"
            raise ValueError(f"trajectory has no {name!r} column (present: {present})")
        return value

    def columns(self) -> list[str]:
        """Names of the present columns, ``step`` first."""
        names = ["step"] + [f for f in FIELDS if getattr(self, f) is not None]
        return names + list(self.extra)

    @property
    def lr(self) -> float | None:
        """Learning rate from ``meta`` (``None`` when unknown)."""
        return self.meta.get("lr")

    @property
    def wd(self) -> float | None:
        """Weight decay from ``meta`` (``None`` when unknown)."""
        return self.meta.get("wd")

    @property
    def momentum(self) -> float:
        """Momentum from ``meta`` (0 when unknown)."""
        return float(self.meta.get("momentum") or 0.0)

    @property
    def status(self) -> str:
        """How the run ended: one of :data:`STATUSES` (``"ok"`` when unknown)."""
        return str(self.meta.get("status", "ok"))

    # ------------------------------------------------------------- transforms
    def _replace_rows(self, index: NDArray[Any] | slice) -> Trajectory:
        cols = {f: (None if getattr(self, f) is None else getattr(self, f)[index]) for f in FIELDS}
        return Trajectory(
            step=self.step[index],
            extra={k: v[index] for k, v in self.extra.items()},
            meta=dict(self.meta),
            **cols,
        )

    def __getitem__(self, index: slice | NDArray[Any] | Sequence[int]) -> Trajectory:
        """Rows by slice, integer index array or boolean mask (a new Trajectory)."""
        if isinstance(index, (int, float, np.integer, np.floating)):
            raise TypeError("index a Trajectory with a slice, a mask or an index array")
        if isinstance(index, str):
            raise TypeError(
                f"index a Trajectory's rows with a slice, a mask or an index array; its "
                f"columns are attributes (traj.rho) or traj.column({index!r})"
            )
        if not isinstance(index, slice):
            index = np.asarray(index)
        return self._replace_rows(index)

    def between(self, start: int | None = None, stop: int | None = None) -> Trajectory:
        """Rows with ``start <= step < stop``."""
        lo = -np.inf if start is None else start
        hi = np.inf if stop is None else stop
        return self._replace_rows((self.step >= lo) & (self.step < hi))

    def fill_derived(self) -> Trajectory:
        """Return a copy with columns that follow from others filled in.

        ``elr = lr / rho**2`` when ``rho`` and ``meta["lr"]`` are known and ``elr``
        is missing (for momentum SGD this is still the per-step ``lr/rho^2``).
        """
        out = self._replace_rows(slice(None))
        if out.elr is None and out.rho is not None and out.lr is not None:
            from siflow.theory import effective_lr

            out.elr = np.asarray(effective_lr(float(out.lr), out.rho))
        return out

    def downsample(
        self,
        max_points: int,
        keep_steps: Iterable[int] = (),
        window: int = 0,
    ) -> Trajectory:
        """Thin a long trajectory, keeping every row near chosen steps.

        Rows with ``|step - s| <= window`` for some ``s`` in ``keep_steps`` (e.g.
        destabilization events) are all kept; the others are taken at a uniform
        stride so that about ``max_points`` rows remain. The first and last rows
        are always kept.
        """
        n = len(self)
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}; pass 2 or more")
        if n <= max_points:
            return self._replace_rows(slice(None))
        keep = np.zeros(n, dtype=bool)
        keep[[0, -1]] = True
        for s in keep_steps:
            lo = np.searchsorted(self.step, s - window, side="left")
            hi = np.searchsorted(self.step, s + window, side="right")
            keep[lo:hi] = True
        rest = np.flatnonzero(~keep)
        budget = max(max_points - int(keep.sum()), 1)
        stride = max(math.ceil(rest.size / budget), 1)
        keep[rest[::stride]] = True
        return self._replace_rows(keep)

    def exact_means(
        self, start: int | None = None, stop: int | None = None
    ) -> dict[str, float] | None:
        """Means over every step in ``(start, stop]`` from the running-sum columns.

        Simulations (:func:`siflow.simulate.simulate`) record, on every kept row, the
        running sums over every step simulated up to and including that row's
        step: ``sum_angular_update_sq``, ``sum_grad_norm_sphere_sq``,
        ``sum_grad_norm_sphere``, ``sum_rho``, ``sum_elr``. The difference between
        two kept rows is the exact sum over the steps between them, whatever the
        thinning, so the means do not depend on which rows were kept.

        Precision: a difference of running sums carries the rounding of the larger sum,
        about ``2**-52`` times the sum accumulated up to ``stop``. A window whose own
        sum is a tiny fraction of that (the quiet phase between bursts, where the
        sphere gradient is ``1e-8`` after sums of order 1) reads as 0 or a few units
        of that rounding; take such means from rows recorded every step instead.

        Parameters
        ----------
        start, stop : int, optional
            Steps of two kept rows (default: the first and last rows). The
            window is ``start < step <= stop``.

        Returns
        -------
        dict or None
            ``steps`` (the number of steps averaged), ``angular_update_rms``,
            ``grad_norm_sphere_rms``, ``grad_norm_sphere_mean``, ``norm_mean``,
            ``elr_mean``; ``None`` when the columns are absent or the window holds
            no step.
        """
        names = (
            "sum_angular_update_sq",
            "sum_grad_norm_sphere_sq",
            "sum_grad_norm_sphere",
            "sum_rho",
            "sum_elr",
        )
        if not all(n in self.extra for n in names) or len(self) < 2:
            return None
        a = 0 if start is None else int(np.searchsorted(self.step, start, side="left"))
        b = (
            len(self) - 1
            if stop is None
            else int(np.searchsorted(self.step, stop, side="right")) - 1
        )
        if not 0 <= a < b < len(self):
            return None
        count = float(self.step[b] - self.step[a])
        d = {n: float(self.extra[n][b] - self.extra[n][a]) / count for n in names}
        return {
            "steps": int(count),
            "angular_update_rms": math.sqrt(max(d["sum_angular_update_sq"], 0.0)),
            "grad_norm_sphere_rms": math.sqrt(max(d["sum_grad_norm_sphere_sq"], 0.0)),
            "grad_norm_sphere_mean": d["sum_grad_norm_sphere"],
            "norm_mean": d["sum_rho"],
            "elr_mean": d["sum_elr"],
        }

    @classmethod
    def concatenate(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """Join trajectories end to end (same columns; meta of the last part)."""
        if not parts:
            raise ValueError("concatenate needs at least one trajectory")
        first = parts[0]
        cols: dict[str, Any] = {}
        for f in FIELDS:
            present = [getattr(p, f) is not None for p in parts]
            if any(present) and not all(present):
                raise ValueError(f"cannot concatenate: column {f!r} is missing in some parts")
            cols[f] = np.concatenate([getattr(p, f) for p in parts]) if all(present) else None
        extra_keys = list(first.extra)
        return cls(
            step=np.concatenate([p.step for p in parts]),
            extra={k: np.concatenate([p.extra[k] for p in parts]) for k in extra_keys},
            meta=dict(parts[-1].meta),
            **cols,
        )

    # -------------------------------------------------------------------- I/O
    def to_columns(self) -> dict[str, NDArray[Any]]:
        """Present columns as an ordered dict of arrays, ``step`` first."""
        return {name: self.column(name) for name in self.columns()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``.npz`` or ``.csv`` (chosen by suffix), atomically.

        Returns the path written.
        """
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"path must be a file name ending in .npz or .csv, got {path!r}")
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".csv"):
            raise ValueError(f"unknown trajectory file type {path.suffix!r}; use .npz or .csv")
        meta_json = json.dumps(self.meta, default=_json_default, sort_keys=True)
        columns = self.to_columns()
        if suffix == ".npz":
            arrays = {f"col_{k}": v for k, v in columns.items()}
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(meta_json), **arrays)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            bad = [name for name in columns if any(ch in name for ch in ',\n\r"')]
            if bad:
                raise ValueError(
                    f"column name {bad[0]!r} cannot be written to CSV (it holds a comma, quote "
                    f"or line break); rename it or save as .npz"
                )
            with atomic_write(path) as fh:
                fh.write(_CSV_MAGIC + meta_json + "\n")
                fh.write(",".join(columns) + "\n")
                table = np.column_stack([v.astype(np.float64) for v in columns.values()])
                for row_step, row in zip(self.step, table, strict=True):
                    cells = [str(int(row_step))] + [repr(float(x)) for x in row[1:]]
                    fh.write(",".join(cells) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trajectory:
        """Read a file written by :meth:`save`.

        Raises ``ValueError`` with the reason for a file that is not a siflow
        trajectory (use :mod:`siflow.io` for logs of other tools).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
                    cols = {k[4:]: data[k] for k in data.files if k.startswith("col_")}
            except (
                OSError,
                KeyError,
                ValueError,
                EOFError,
                NotImplementedError,
                zipfile.BadZipFile,
                zlib.error,
            ) as exc:
                raise ValueError(
                    f"{str(path)!r} is not a readable siflow trajectory .npz ({exc}); "
                    f"use siflow.io.read for logs of other tools"
                ) from None
        elif suffix == ".csv":
            meta, cols = _read_csv(path)
        else:
            raise ValueError(f"unknown trajectory file type {path.suffix!r}; use .npz or .csv")
        if not isinstance(meta, dict):
            raise ValueError(
                f"{str(path)!r} has metadata that is not a JSON object; "
                f"re-save it with Trajectory.save"
            )
        return cls.from_columns(cols, meta)

    @classmethod
    def from_columns(cls, columns: Mapping[str, ArrayLike], meta: Mapping[str, Any]) -> Trajectory:
        """Build from a mapping of column name to array (``step`` required)."""
        if "step" not in columns:
            raise ValueError("no 'step' column; every trajectory needs one")
        fields = {k: v for k, v in columns.items() if k in FIELDS}
        extra = {k: v for k, v in columns.items() if k not in FIELDS and k != "step"}
        return cls(step=np.asarray(columns["step"]), extra=extra, meta=dict(meta), **fields)


def _read_csv(path: Path) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
            if not first.startswith(_CSV_MAGIC):
                raise ValueError(
                    f"{str(path)!r} is not a siflow trajectory CSV (no '{_CSV_MAGIC.strip()}' "
                    f"first line); use siflow.io.read for logs of other tools"
                )
            meta = json.loads(first[len(_CSV_MAGIC) :])
            header = fh.readline().strip().split(",")
            rows = [line.rstrip("\n").split(",") for line in fh if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not a text file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} has a corrupt metadata line ({exc})") from None
    if not header or header[0] != "step":
        raise ValueError(f"{str(path)!r} has no 'step' header column")
    bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ValueError(
            f"{str(path)!r} row {bad[0] + 3} has {len(rows[bad[0]])} cells, expected "
            f"{len(header)}; the file is truncated or corrupt"
        )
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as exc:
        raise ValueError(f"{str(path)!r} has a non-numeric cell ({exc})") from None
    cols: dict[str, NDArray[Any]] = {name: table[:, j] for j, name in enumerate(header)}
    try:  # steps are written as whole numbers: exact as integers beyond 2**53
        cols["step"] = np.array([int(r[0]) for r in rows], dtype=np.int64)
    except (ValueError, OverflowError):
        pass  # a step such as '3.0' or out of range: the float column, checked later
    return meta, cols


def forward_filled(values: NDArray[np.float64], first: float | None) -> NDArray[np.float64]:
    """``values`` with each blank (NaN) row holding the last value before it; blanks
    before the first value hold ``first`` (or stay NaN when ``first`` is None).

    A logger that writes the learning rate only when it is logged (Lightning's
    ``LearningRateMonitor`` every k steps, rows merged with other metrics) leaves the
    optimizer's value unchanged in between. Used by :func:`siflow.io.read` (the
    effective LR from an lr column) and the overlay (per-row lr and wd).
    """
    out = np.array(values, dtype=np.float64)
    idx = np.where(np.isfinite(out), np.arange(out.size), -1)
    np.maximum.accumulate(idx, out=idx)
    filled = np.where(idx >= 0, out[np.maximum(idx, 0)], np.nan if first is None else first)
    return filled
