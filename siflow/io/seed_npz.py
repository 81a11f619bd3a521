"""Reader for the seed paper's ``train-tm.npz`` metric files.

Lobacheva, Kodryan, Chirkova, Malinin & Vetrov, "On the periodic behavior of
neural network training with batch normalization and weight decay" (NeurIPS
2021). Its ``get_info.py`` evaluates saved checkpoints and stores one entry per
checkpoint epoch: ``report_epochs``, ``params_norm`` (norm of all SI
parameters), ``params_numel``, ``<parameter>_norm`` / ``<parameter>_numel`` per
parameter tensor, ``loss`` and ``acc`` (a fraction) on the training set,
``gnorm_m`` (mean over mini-batches of the mini-batch gradient norm),
``gm_norm`` / ``gs_norm`` (norms of the mean and of the std of the mini-batch
gradients), ``hess_evals`` / ``fisher_evals`` (top eigenvalues, one row per
checkpoint), ``hess_trace`` / ``fisher_trace``. The file holds neither lr nor
wd: they are in the experiment directory name
``c32_d3_ds50000_lr0.01_wd0.001_mom0.0_..._epoch1001...``.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._validate import check_nonnegative, check_positive
from siflow.io._build import build_trajectory
from siflow.io._columns import Table, normalize_mapping
from siflow.io._text import check_path
from siflow.trajectory import Trajectory

__all__ = ["read_seed_npz", "parse_run_name"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_NAME_PATTERNS = {
    "lr": re.compile(r"(?:^|_)lr" + _NUM + r"(?=_|$|[a-z])"),
    "wd": re.compile(r"(?:^|_)wd" + _NUM + r"(?=_|$|[a-z])"),
    "momentum": re.compile(r"(?:^|_)mom" + _NUM + r"(?=_|$|[a-z])"),
    "data_size": re.compile(r"(?:^|_)ds([0-9]+)(?=_|$)"),
}


def parse_run_name(name: str) -> dict[str, float]:
    """Hyperparameters in a seed-paper experiment name (``..._lr{lr}_wd{wd}_mom{m}_...``).

    Examples
    --------
    >>> parse_run_name("c32_d3_ds50000_lr0.01_wd0.001_mom0.0_corr0.0_epoch1001_nosch")
    {'lr': 0.01, 'wd': 0.001, 'momentum': 0.0, 'data_size': 50000}
    """
    out: dict[str, Any] = {}
    for key, pattern in _NAME_PATTERNS.items():
        m = pattern.search(name)
        if m:
            value = float(m.group(1))
            out[key] = int(value) if key == "data_size" else value
    return out


def _load(path: Path) -> dict[str, np.ndarray]:
    label = repr(str(path))
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ValueError(f"{label} cannot be read ({exc.strerror or exc})") from None
    if not magic.startswith(b"PK"):
        raise ValueError(
            f"{label} is not an .npz (zip) file; is it truncated, or another format (fmt=)?"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("not an .npz archive")
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError) as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(
            f"{label} is not a readable .npz ({type(exc).__name__}: {msg}); is it truncated?"
        ) from None
    except Exception as exc:  # zlib.error and friends from a damaged member
        raise ValueError(f"{label} is a corrupt .npz ({type(exc).__name__}: {exc})") from None


def read_seed_npz(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    lr: float | None = None,
    wd: float | None = None,
) -> Trajectory:
    """Read the seed paper's ``train-tm.npz`` (or ``test-em.npz``).

    Parameters
    ----------
    path : path-like
        The ``.npz`` file, or the experiment directory holding ``train-tm.npz``.
    mapping : dict or list of ``"field=column"``, optional
        Overrides (columns are the npz keys).
    steps_per_epoch : int, optional
        Optimizer steps per epoch (``ceil(data_size / batch_size)``, 391 for
        CIFAR-10 with the paper's batch 128). Checkpoint epochs are converted with
        ``step = round(epoch * steps_per_epoch)``. Without it epochs are used as
        steps and ``meta["time_unit"] == "epoch"``.
    group : str, optional
        A parameter tensor (``"conv_layers.3.weight"``, or a unique part of the
        name such as ``"layers.3"``) whose ``<name>_norm`` becomes ``rho``, or
        ``"sum"``; default ``params_norm``.
    lr, wd : float, optional
        Learning rate and weight decay when the directory names do not give them.

    Returns
    -------
    Trajectory
        ``step`` from ``report_epochs``; ``rho = params_norm``; ``loss``;
        ``grad_norm_sphere = params_norm * gnorm_m`` (exact for the SI
        parameters, theory section 0; ``gnorm_m`` is the mean mini-batch gradient
        norm, the quantity that drives the norm recursion; ``gm_norm`` is used
        when ``gnorm_m`` is absent); ``sharpness_sphere = params_norm**2 *
        max(hess_evals)`` (top Hessian eigenvalue moved to the unit sphere: the
        Riemannian value at critical points, an upper bound elsewhere, see
        :func:`~siflow.io._columns.build_trajectory`); ``elr = lr /
        params_norm**2`` as in the paper's code, exact by definition. Other 1-d
        entries (``acc``, per-tensor norms, traces, ``gm_norm``, ``gs_norm``) go
        to ``extra``; the top of ``fisher_evals`` to ``extra["fisher_evals_max"]``.
        ``meta`` holds lr, wd, momentum and data_size parsed from the path.
    """
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"group must be a parameter name or 'sum', got {group!r}")
    p = check_path(path, allow_dir=True)
    if p.is_dir():
        if not (p / "train-tm.npz").is_file():
            raise ValueError(f"{str(p)!r} has no train-tm.npz; pass the .npz file itself")
        p = p / "train-tm.npz"
    label = repr(str(p))
    arrays = _load(p)
    if "report_epochs" not in arrays:
        raise ValueError(
            f"{label} has no 'report_epochs' array (keys: {', '.join(sorted(arrays)) or 'none'}); "
            f"is it the seed paper's train-tm.npz? For siflow files pass fmt='siflow'"
        )
    epochs = arrays["report_epochs"]
    if epochs.ndim != 1 or epochs.size == 0 or not np.issubdtype(epochs.dtype, np.number):
        raise ValueError(f"{label}: 'report_epochs' must be a non-empty 1-d numeric array")
    n = epochs.size
    table: Table = {}
    skipped: list[str] = []
    for key, arr in arrays.items():
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            skipped.append(key)
            continue
        if arr.ndim == 1 and arr.size == n:
            table[key] = arr.astype(np.float64)
        elif arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] > 0:
            with np.errstate(invalid="ignore"):
                table[f"{key}_max"] = np.max(arr.astype(np.float64), axis=1)
        else:
            skipped.append(key)
    user = normalize_mapping(mapping)
    defaults: dict[str, str | None] = {"epoch": "report_epochs"}
    if "params_norm" in table:
        defaults["rho"] = "params_norm"
    if "gnorm_m" in table:
        defaults["grad_norm_raw"] = "gnorm_m"
    elif "gm_norm" in table:
        defaults["grad_norm_raw"] = "gm_norm"
    if "hess_evals_max" in table:
        defaults["sharpness_raw"] = "hess_evals_max"
    if "loss" in table:
        defaults["loss"] = "loss"
    if group is not None:
        defaults.pop("rho", None)
        if group.strip().lower() != "sum":
            defaults.pop("grad_norm_raw", None)
            defaults.pop("sharpness_raw", None)
    merged = {**defaults, **user}
    meta: dict[str, Any] = {}
    for part in reversed(p.resolve().parts[:-1]):
        for key, value in parse_run_name(part).items():
            meta.setdefault(key, value)
    if lr is not None:
        meta["lr"] = float(check_positive("lr", lr))
    if wd is not None:
        meta["wd"] = float(check_nonnegative("wd", wd))
    if skipped:
        meta["skipped_keys"] = sorted(skipped)
    if "report_epochs" in table and steps_per_epoch is None and "data_size" in meta:
        meta["steps_per_epoch_hint"] = (
            f"ceil({meta['data_size']} / batch_size), e.g. "
            f"{-(-int(meta['data_size']) // 128)} for the paper's batch 128"
        )
    traj = build_trajectory(
        table,
        path=p,
        fmt="seed-npz",
        mapping=merged,
        steps_per_epoch=steps_per_epoch,
        group=group,
        meta=meta,
    )
    return traj
