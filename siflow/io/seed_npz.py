"""Reader for the seed paper's ``train-tm.npz`` / ``test-em.npz`` metric files.

Lobacheva, Kodryan, Chirkova, Malinin & Vetrov, "On the periodic behavior of
neural network training with batch normalization and weight decay" (NeurIPS
2021), repository ``tipt0p/periodic_behavior_bn_wd``. Its ``get_info.py``
evaluates saved checkpoints and stores one entry per checkpoint:
``report_epochs`` (checkpoint ``e`` is written after epoch ``e``, i.e. after
``e + 1`` epochs of training), ``params_norm`` and ``params_numel`` (all
parameters, the frozen last layer and its bias included),
``<parameter>_norm`` / ``<parameter>_numel`` per tensor, ``loss`` and ``acc``
(a fraction, train mode), ``gnorm_m`` (mean of mini-batch gradient norms over
all parameters), optionally ``gm_norm`` / ``gs_norm``, ``hess_evals`` /
``fisher_evals`` (top eigenvalues per checkpoint) and traces. ``test-em.npz``
holds the same keys on the test set in eval mode. The file holds neither lr nor
wd: they are in the experiment name ``c4_d3_ds500_lr1.0_wd0.01_mom0.0_..._fbgd``.

Scale-invariant (SI) tensors, as in the paper's models (a conv or linear
weight followed by BatchNorm; the classifier is frozen at a fixed norm): every
``<name>.weight`` except biases, normalisation parameters, the last weight
(the classifier) and any tensor whose norm never changes (frozen, lr 0). For the
paper's ConvNet these are ``conv_layers.{0,3,7,11}.weight``. ``rho`` is the norm
of their concatenation, ``sqrt(sum_g |w_g|^2)``, the norm the paper analyses.

Steps: checkpoint ``e`` is at step ``(e + 1) K`` with ``K`` optimizer steps per
epoch: 1 for a full-batch run (``_fbgd`` in the name), otherwise
``ceil(data size / batch size)`` when the data size (``ds<N>`` in the name) and
the batch size (``--batch_size`` in the run's ``command.sh``) are known, or
``steps_per_epoch=`` when given. Without ``K`` the time axis is epochs
completed, ``meta["time_unit"] == "epoch"``. A run saved inside epochs
(``train.py --save_freq_int F``) is reported in epochs done: ``checkpoint-e-k``
as ``e + k/F``, ``checkpoint-e`` as ``e + 1``; its steps are ``e K`` plus the
batches ``train.py`` had run at the save (:func:`intra_epoch_denominator`), and
they need ``K``.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._validate import nonnegative_number, positive_number
from siflow.io._build import build_trajectory, root_sum_square
from siflow.io._columns import (
    Table,
    check_steps_per_epoch,
    named_not_si,
    normalize_mapping,
    si_weights,
)
from siflow.io._text import check_declared_size, check_path
from siflow.trajectory import Trajectory

__all__ = [
    "read_seed_npz",
    "parse_run_name",
    "seed_lr_factors",
    "seed_model",
    "seed_si_tensors",
    "seed_steps_per_epoch",
    "is_full_batch",
    "intra_epoch_denominator",
    "detect",
]

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
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError, ValueError) as exc:
        raise ValueError(
            f"{label} is a corrupt or truncated .npz ({exc}); use an intact copy"
        ) from None
    declared = sum(max(m.file_size, 0) for m in members)
    check_declared_size(label, declared, path.stat().st_size)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("not an .npz archive")
            out: dict[str, np.ndarray] = {}
            for k in data.files:
                try:
                    out[k] = np.asarray(data[k])
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    # an object array (np.array of ragged lists) is stored pickled:
                    # never unpickled here; the key is reported as skipped
                    out[k] = np.array(["<object array: not unpickled>"])
            return out
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError) as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(
            f"{label} is not a readable .npz ({type(exc).__name__}: {msg}); is it truncated?"
        ) from None
    except Exception as exc:  # zlib.error and friends from a damaged member
        raise ValueError(f"{label} is a corrupt .npz ({type(exc).__name__}: {exc})") from None


_EVAL_NOTE = (
    "evaluation log (test set, eval mode): its loss is not the training loss the dynamics "
    "follow; read train-tm.npz for training"
)
_GNORM_NOTE = (
    "gnorm_m is the mean mini-batch gradient norm over all parameters (the frozen last "
    "layer and biases included), not over the SI weights: kept in extra, not moved to the "
    "sphere; pass mapping={'grad_norm_raw': 'gnorm_m'} to use it anyway"
)


def _seed_model_rule(model: str | None) -> Callable[[str], bool] | None:
    """The seed repository's own test of a parameter name for scale invariance.

    Its ``get_info.py`` and notebooks decide by the model's name (``--model``):
    ``ResNet18SI`` (BatchNorm without affine): everything but the classifier
    ``linear``; ``ResNet18SIAf`` (affine BatchNorm): also not the BatchNorms
    (``bn``, and ``shortcut.0``, the BatchNorm of a downsampling shortcut);
    ``ResNet18``: the tensors it treats as SI for its ``--noninvlr`` experiments
    (``conv1``, ``1.bn1``, ``1.0.bn1``, and ``conv2`` or ``short`` outside ``layer4``);
    every ``ConvNet*``: the four convolutions ``conv_layers.{0,3,7,11}`` (their
    BatchNorms, affine or not, sit at 1, 4, 8, 12). ``None`` for other models, for
    which the repository names no SI tensors.
    """
    if model is None:
        return None
    if model == "ResNet18SI":
        return lambda n: "linear" not in n
    if model == "ResNet18SIAf":
        return lambda n: "linear" not in n and "bn" not in n and "shortcut.0" not in n
    if model == "ResNet18":
        return lambda n: (
            "conv1" in n
            or "1.bn1" in n
            or "1.0.bn1" in n
            or (("conv2" in n or "short" in n) and "4" not in n)
        )
    if "ConvNet" in model:
        return lambda n: any(f"conv_layers.{i}." in n for i in (0, 3, 7, 11))
    return None


def _seed_rule_text(model: str | None) -> str:
    """In words, which tensors :func:`_seed_model_rule` takes as SI for ``model``."""
    if model == "ResNet18SI":
        return f"the repository's rule for --model {model}: every tensor but 'linear'"
    if model == "ResNet18SIAf":
        return (
            f"the repository's rule for --model {model}: every tensor but 'linear', 'bn' and "
            f"'shortcut.0'"
        )
    if model == "ResNet18":
        return (
            f"the repository's rule for --model {model}: 'conv1', '1.bn1', '1.0.bn1', and "
            f"'conv2' or 'short' outside layer4"
        )
    if model is not None and "ConvNet" in model:
        return f"the repository's rule for --model {model}: conv_layers.{{0,3,7,11}}"
    return "the generic rule: every trained weight but normalisation scales and the last"


def seed_si_tensors(
    arrays: dict[str, np.ndarray], model: str | None = None
) -> tuple[list[str], list[str]]:
    """``(si, other)`` tensor names of a seed-paper metrics file.

    With the run's ``model`` known (``--model`` of its ``command.sh``, or the
    ``Experiments/<model>_<data>...`` folder), the repository's own rule
    (:func:`_seed_model_rule`), less any tensor whose norm never changes (frozen) and
    any bias or normalisation parameter (its ``ResNet18`` rule names some BatchNorms);
    otherwise the generic convention of :func:`si_weights`, which also reads the
    ``<name>_numel`` entries: a weight as large as the bias of the same module is
    an elementwise (normalisation) scale, not SI.
    """
    norms = {t: arrays[f"{t}_norm"].astype(np.float64) for t in _tensor_norm_names(arrays)}
    rule = _seed_model_rule(model)
    if rule is None:
        sizes = {t: size for t in norms if (size := _numel(arrays, t)) is not None}
        return si_weights(norms, sizes)
    si = [
        t
        for t, v in norms.items()
        if rule(t) and not (v.size > 1 and np.all(v == v[0])) and not named_not_si(t)
    ]
    return si, [t for t in norms if t not in si]


def _tensor_norm_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Tensors with a per-checkpoint norm ``<name>_norm`` (1-d, numeric) in a metrics file.

    ``params_norm`` (all parameters) and the gradient norms ``gm_norm``/``gs_norm`` are
    not tensors; a key of text (or an object array, never unpickled) is not a norm.
    """
    return [
        k[: -len("_norm")]
        for k, v in arrays.items()
        if k.endswith("_norm")
        and k not in ("params_norm", "gm_norm", "gs_norm")
        and v.ndim == 1
        and v.dtype.kind in "iuf"
    ]


def _numel(arrays: Mapping[str, np.ndarray], tensor: str) -> int | None:
    """``<tensor>_numel`` as an int; None when absent, empty, not a whole number or < 1."""
    value = arrays.get(f"{tensor}_numel")
    if value is None or value.size == 0 or value.dtype.kind not in "iuf":
        return None
    first = float(value.reshape(-1)[0])
    return int(first) if np.isfinite(first) and first >= 1 and first.is_integer() else None


def seed_model(path: Path) -> str | None:
    """The run's model name: ``--model`` of its ``command.sh``, else the folder name.

    The repository lays runs out as ``Experiments/<model>_<data>[_noninvlr_<x>]/``
    (``info``, ``logs``, ``checkpoints``); ``None`` when neither is found.
    """
    exp, model_dir = _experiment_dir_parts(path)
    if model_dir is None:
        return None
    model = _command_option(model_dir, exp, r"--model[= ]+([A-Za-z][A-Za-z0-9_]*)")
    if model is not None:
        return model
    m = re.match(r"([A-Za-z][A-Za-z0-9]*)_", model_dir.name)
    return m.group(1) if m else None


def _experiment_dir_parts(path: Path) -> tuple[str, Path | None]:
    """The experiment name and the ``Experiments/<model>`` folder of a seed-paper file."""
    resolved = path.resolve()
    exp = resolved.parent.name if resolved.suffix == ".npz" else resolved.stem
    model_dir = None
    for parent in resolved.parents:
        if parent.name in ("info", "logs", "checkpoints"):
            model_dir = parent.parent
            break
    return exp, model_dir


def _command_texts(model_dir: Path, exp: str) -> list[str]:
    """The run's ``checkpoints/<exp>/trial_*/command.sh`` files (the first 100 kB of each)."""
    texts = []
    for command in sorted((model_dir / "checkpoints" / exp).glob("trial_*/command.sh")):
        try:
            texts.append(command.read_text(encoding="utf-8", errors="replace")[:100_000])
        except OSError:
            continue
    return texts


def _command_option(model_dir: Path, exp: str, pattern: str) -> str | None:
    """First group of ``pattern`` in the run's ``command.sh``."""
    for text in _command_texts(model_dir, exp):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _lr_factor_default(t: np.ndarray) -> np.ndarray:
    """Their default ``schedule``: 1 to half the epochs, then linear to 0.01 at 90 %."""
    return np.where(t <= 0.5, 1.0, np.where(t <= 0.9, 1.0 - 0.99 * (t - 0.5) / 0.4, 0.01))


def seed_lr_factors(path: Path, epochs: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``lr / lr_init`` of the training epochs ``epochs`` (0-based) of a seed-paper run.

    Their ``train.py`` sets the learning rate once per epoch ``e`` of ``E``
    (``t = e/E``): constant with ``--no_schedule`` (``_nosch`` in the experiment
    name); ``--cosan_schedule``: ``(1 + cos(pi t))/2`` (``CosineAnnealingLR``);
    ``--d_schedule p``: divided by ``p`` after each quarter; ``--c_schedule p``:
    ``1/p + (1 - 1/p)(1 - t)/0.75`` after the first quarter; otherwise 1 up to
    ``t = 0.5``, linear to 0.01 at ``t = 0.9``, then 0.01. ``E`` is ``--epochs``, or
    ``epoch<E>`` in the name. ``(None, why)`` when the learning rate is constant or
    ``E`` unknown.
    """
    exp, model_dir = _experiment_dir_parts(path)
    texts = _command_texts(model_dir, exp) if model_dir is not None else []
    text = texts[0] if texts else ""

    def option(name: str) -> float | None:
        m = re.search(rf"--{name}[= ]+(-?[0-9.eE+-]+)", text)
        try:
            return float(m.group(1)) if m else None
        except ValueError:
            return None

    if "--no_schedule" in text or (not text and re.search(r"_nosch(?:_|$|[a-z])", exp)):
        return None, "constant learning rate (no schedule)"
    n = option("epochs")
    if n is None:
        m = re.search(r"(?:^|_)epoch([0-9]+)(?=_|$|[a-z])", exp)
        n = float(m.group(1)) if m else None
    if not n or n <= 0:
        return None, "learning-rate schedule unknown (no --epochs, no epoch<N> in the name)"
    t = np.asarray(epochs, dtype=np.float64) / n
    c, d = option("c_schedule") or 0.0, option("d_schedule") or 0.0
    if "--cosan_schedule" in text:
        return (1.0 + np.cos(np.pi * t)) / 2.0, "cosine annealing (--cosan_schedule)"
    if c > 0:
        return np.where(t <= 0.25, 1.0, 1.0 / c + (1.0 - 1.0 / c) * (1.0 - t) / 0.75), (
            f"--c_schedule {c:g}"
        )
    if d > 0:
        return np.where(t <= 0.25, 1.0, d ** -np.ceil(np.minimum(t, 1.0) / 0.25 - 1.0)), (
            f"--d_schedule {d:g}"
        )
    how = "the default schedule (1 to half the epochs, linear to 0.01 at 90 %)"
    if not text:
        how += "; assumed: without command.sh the name does not tell --c/--d/--cosan_schedule"
    return _lr_factor_default(t), how


def _batch_size_from_command(model_dir: Path | None, exp: str) -> int | None:
    if model_dir is None:
        return None
    batch = _command_option(model_dir, exp, r"--batch_size[= ]+([0-9]+)")
    return int(batch) if batch is not None and int(batch) > 0 else None


def is_full_batch(path: Path) -> bool:
    """``_fbgd`` (``train.py --fbgd``, full-batch GD) in the run's experiment name."""
    return re.search(r"(?:^|_)fbgd(?:_|$)", _experiment_dir_parts(path)[0]) is not None


def seed_steps_per_epoch(path: Path) -> tuple[int | None, str]:
    """Optimizer steps per epoch of a seed-paper run, and how it was found.

    ``_fbgd`` (full-batch GD) in the experiment name: 1. Otherwise
    ``ceil(data size / batch size)`` with ``ds<N>`` from the name and
    ``--batch_size`` from ``checkpoints/<exp>/trial_*/command.sh``. ``None``
    when either is unknown.
    """
    exp, model_dir = _experiment_dir_parts(path)
    if is_full_batch(path):
        return 1, "full-batch run (_fbgd in the experiment name): 1 step per epoch"
    data_size = parse_run_name(exp).get("data_size")
    batch = _batch_size_from_command(model_dir, exp)
    if data_size and batch:
        k = -(-int(data_size) // batch)
        return k, f"ceil(data size {data_size} / batch {batch}) = {k} steps per epoch (command.sh)"
    missing = "the data size (ds<N> in the name)" if not data_size else "the batch size"
    return None, f"steps per epoch unknown ({missing} not found); pass steps_per_epoch="


#: Where a seed log's optimizer comes from: the files do not name it, the code that
#: writes them builds one optimizer only.
SEED_OPTIMIZER_SOURCE = (
    "the seed repository's train.py, which always builds torch.optim.SGD (heavy ball, "
    "momentum from the run name's mom<x>)"
)


def _run_meta(p: Path, lr: float | None, wd: float | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for part in reversed(p.resolve().parts[:-1]):
        for key, value in parse_run_name(part).items():
            meta.setdefault(key, value)
    for key, value in parse_run_name(p.stem).items():
        meta.setdefault(key, value)
    if lr is not None:
        meta["lr"] = positive_number("lr", lr)
    if wd is not None:
        meta["wd"] = nonnegative_number("wd", wd)
    meta["optimizer"] = "sgd"
    meta["optimizer_source"] = SEED_OPTIMIZER_SOURCE
    return meta


def seed_time_axis(
    p: Path, epochs: np.ndarray, steps_per_epoch: int | None, meta: dict[str, Any]
) -> tuple[np.ndarray, str]:
    """Step ``(e + 1) K`` of checkpoint epoch ``e`` (epochs completed when ``K`` is unknown)."""
    found, how = seed_steps_per_epoch(p)
    k = check_steps_per_epoch(steps_per_epoch)
    if k is not None:
        if found is not None and found != k:
            meta.setdefault("notes", []).append(
                f"steps_per_epoch={k} given, but the run's own files say {found} ({how})"
            )
        how = f"steps_per_epoch={k} given"
    else:
        k = found
    meta["steps_per_epoch_source"] = how
    f = intra_epoch_denominator(epochs)
    if f is not None:
        if k is None:
            raise ValueError(
                f"{str(p)!r} holds checkpoints inside epochs (report_epochs e + k/{f}, "
                f"get_info.py --save_freq_int): their steps need the steps per epoch; {how}"
            )
        meta["steps_per_epoch"] = k
        meta.setdefault("notes", []).append(
            f"checkpoints inside epochs (--save_freq_int, report_epochs e + k/{f} = epochs "
            f"done): step e K plus the batches train.py had run when it saved them"
        )
        return _intra_epoch_steps(epochs, f, k, is_full_batch(p)), "step"
    completed = epochs.astype(np.int64) + 1
    if k is None:
        meta["time_note"] = (
            "time axis in epochs completed (checkpoint e = after e+1 epochs); " + how
        )
        return completed, "epoch"
    meta["steps_per_epoch"] = k
    return completed * k, "step"


def _numeric_table(arrays: dict[str, np.ndarray], n: int) -> tuple[Table, list[str]]:
    table: Table = {}
    skipped: list[str] = []
    for key, arr in arrays.items():
        if arr.dtype.kind not in "iufb":
            skipped.append(key)
        elif arr.ndim == 1 and arr.size == n:
            table[key] = arr.astype(np.float64)
        elif arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] > 0:
            with np.errstate(invalid="ignore"):
                table[f"{key}_max"] = np.max(arr.astype(np.float64), axis=1)
        else:
            skipped.append(key)
    return table, skipped


def _si_columns(table: Table, si: list[str], other: list[str]) -> Table:
    """``si_norm`` (the SI total), SI tensors as ``<name>_norm``, others renamed out of groups."""
    out: Table = {}
    if si:
        out["si_norm"] = root_sum_square([table[f"{t}_norm"] for t in si])
    for key, values in table.items():
        name = key[: -len("_norm")] if key.endswith("_norm") else None
        if name in other:
            out[f"{name} norm (not SI)"] = values
        elif key != "report_epochs":
            out[key] = values
    return out


def _is_evaluation(p: Path) -> bool:
    return p.name.startswith("test") or p.stem.endswith("-em")


def read_seed_npz(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    steps_per_epoch: int | None = None,
    group: str | None = None,
    lr: float | None = None,
    wd: float | None = None,
    evaluation: bool = False,
) -> Trajectory:
    """Read the seed paper's ``train-tm.npz`` (or, with ``evaluation=True``, ``test-em.npz``).

    Parameters
    ----------
    path : path-like
        The ``.npz`` file, or the ``info/<exp>`` directory holding ``train-tm.npz``.
    mapping : dict or list of ``"field=column"``, optional
        Overrides (columns are the npz keys, plus ``si_norm``).
    steps_per_epoch : int, optional
        Optimizer steps per epoch; by default found from the run's own files
        (module docstring). ``step = (report_epochs + 1) * steps_per_epoch``.
    group : str, optional
        One SI tensor (``"conv_layers.3.weight"``, or a unique part of the name
        such as ``"layers.3"``) whose norm becomes ``rho``, or ``"sum"`` (the
        default: all SI tensors). Biases, the classifier and frozen tensors are
        not SI and are refused.
    lr, wd : float, optional
        Learning rate and weight decay when the experiment name does not give them.
    evaluation : bool, optional
        ``test-em.npz`` (test set, eval mode) is refused unless this is True;
        then ``meta["log_kind"] == "evaluation"`` and a note says so.

    Returns
    -------
    Trajectory
        ``rho = sqrt(sum over SI tensors of |w|^2)``; ``loss`` the training loss;
        ``elr = lr / rho**2`` (:func:`siflow.theory.effective_lr`). ``gnorm_m``
        and ``hess_evals`` cover all parameters and stay in ``extra`` (a note
        says how to map them). ``meta["groups"]`` lists the SI tensors,
        ``meta["not_si"]`` the others; lr, wd, momentum and data size come from
        the experiment name.
    """
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"group must be a parameter name or 'sum', got {group!r}")
    p = _resolve_seed_path(check_path(path, allow_dir=True))
    label = repr(str(p))
    if _is_evaluation(p) and not evaluation:
        raise ValueError(
            f"{label} is the seed paper's evaluation log (test set, eval mode), not the "
            f"training log; read train-tm.npz next to it, or pass evaluation=True to read it "
            f"as evaluation metrics"
        )
    arrays = _load(p)
    epochs = _report_epochs(arrays, label)
    model = seed_model(p)
    si, other = seed_si_tensors(arrays, model)
    if not si and evaluation:
        arrays, si, other = _si_norms_from_training(p, arrays, epochs, model)
    _check_si_norms(arrays, si, epochs.size, label)
    table, skipped = _numeric_table(arrays, epochs.size)
    _check_seed_group(group, si, other, label)
    meta = _run_meta(p, lr, wd)
    step, unit = seed_time_axis(p, epochs, steps_per_epoch, meta)
    notes = meta.setdefault("notes", [])
    later = np.concatenate([[True], step[1:] > np.maximum.accumulate(step)[:-1]])
    if not later.all():
        # a full-batch run's checkpoints inside an epoch hold the weights of its start
        notes.append(
            f"{int((~later).sum())} checkpoints inside epochs repeat the step of an earlier "
            f"one (no update yet in that epoch) and are left out"
        )
        table = {name: values[later] for name, values in table.items()}
        step, epochs = step[later], epochs[later]
    if skipped:
        meta["skipped_keys"] = sorted(skipped)
        shown = ", ".join(sorted(skipped)[:4]) + (", ..." if len(skipped) > 4 else "")
        meta.setdefault("notes", []).append(
            f"{len(skipped)} key(s) not read ({shown}): not one number per checkpoint "
            f"({epochs.size} checkpoints)"
        )
    if "gnorm_m" in table:
        notes.append(_GNORM_NOTE)
    if evaluation:
        meta["log_kind"] = "evaluation"
        notes.append(_EVAL_NOTE)
        if si and f"{si[0]}_norm" not in _load_keys(p):
            notes.append("per-tensor norms of the same checkpoints taken from train-tm.npz")
    meta["si_tensors"], meta["not_si"] = si, other
    in_epoch = epochs if intra_epoch_denominator(epochs) is None else np.ceil(epochs - 1e-9) - 1
    factors, how = seed_lr_factors(p, in_epoch)
    if factors is not None and "lr" in meta:
        # the lr of the epoch each checkpoint closes; the effective LR follows it
        meta["lr_init"] = meta.pop("lr")
        table["lr"] = meta["lr_init"] * factors
        notes.append(f"learning rate per epoch from the run's schedule: {how}")
    fixed = re.search(r"_fix_si_pnorm(-?[0-9.]+)", _experiment_dir_parts(p)[0])
    if fixed:
        meta["projected"] = True
        notes.append(
            "fix_si_pnorm run (in the experiment name): the SI weights are rescaled to a fixed "
            "norm after every step, so the free norm dynamics (decay, jumps, equilibrium "
            "norm) do not apply; the effective LR is lr / rho**2 at that norm"
        )
    meta["si_rule"] = (
        f"the repository's rule for --model {model}"
        if _seed_model_rule(model) is not None
        else "every trained weight but normalisation scales and the last (classifier)"
    )
    if model is not None:
        meta.setdefault("model", model)
    defaults: dict[str, str | None] = {"grad_norm_raw": None, "sharpness_raw": None}
    if si and (group is None or group.strip().lower() == "sum"):
        defaults["rho"] = "si_norm"
    elif not si:
        defaults["rho"] = None
        notes.append(_no_si_note(arrays, model))
    if "loss" in table:
        defaults["loss"] = "loss"
    traj = build_trajectory(
        _si_columns(table, si, other),
        path=p,
        fmt="seed-npz",
        mapping={**defaults, **normalize_mapping(mapping)},
        group=None if group is None or group.strip().lower() == "sum" else group,
        meta=meta,
        step=step,
        time_unit=unit,
    )
    if si:
        traj.meta["groups"] = si
        traj.meta.setdefault("group", "sum" if "rho" in defaults else traj.meta.get("group"))
    return traj


def _no_si_note(arrays: Mapping[str, np.ndarray], model: str | None) -> str:
    """Why the file gives no SI norm: no per-tensor norms, or none that the rule takes."""
    tail = (
        "params_norm includes the frozen last layer: map it with "
        "mapping={'rho': 'params_norm'} only if that is what you want"
    )
    names = _tensor_norm_names(arrays)
    if not names:
        return f"no per-tensor norms (<name>_norm) in the file, so the SI norm is unknown; {tail}"
    shown = ", ".join(f"{n}_norm" for n in names[:4])
    more = f" ... ({len(names)} in all)" if len(names) > 4 else ""
    if _seed_model_rule(model) is None:
        fix = "if a tensor is SI, map its column with mapping={'rho': '<name> norm (not SI)'}"
    else:
        fix = (
            "if another model wrote the file, correct --model in its command.sh (or the "
            "Experiments/<model>_... folder name)"
        )
    return (
        f"the file has per-tensor norms ({shown}{more}), but none is of a scale-invariant "
        f"tensor under {_seed_rule_text(model)} (frozen tensors excluded), so the SI norm is "
        f"unknown; {fix}; {tail}"
    )


def _check_si_norms(arrays: Mapping[str, np.ndarray], si: list[str], n: int, label: str) -> None:
    """Every SI tensor's norm must have one entry per checkpoint: rho sums them all."""
    for t in si:
        size = arrays[f"{t}_norm"].size
        if size != n:
            raise ValueError(
                f"{label}: '{t}_norm' has {size} entries but 'report_epochs' {n}, so the SI "
                f"norm is unknown; the file is damaged: run get_info.py again, or use an "
                f"intact copy"
            )


def _si_norms_from_training(
    p: Path, arrays: dict[str, np.ndarray], epochs: np.ndarray, model: str | None
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Per-tensor norms of the same checkpoints from ``train-tm.npz`` next to an eval log.

    ``test-em.npz`` stores only ``params_norm``; the weights of a checkpoint are the
    same in both files, so their SI norms are taken from the training file, row by
    row at equal ``report_epochs``.
    """
    train = p.with_name("train-tm.npz")
    if not train.is_file():
        return arrays, [], []
    other_arrays = _load(train)
    si, other = seed_si_tensors(other_arrays, model)
    t_epochs = other_arrays.get("report_epochs")
    if (
        not si
        or t_epochs is None
        or t_epochs.ndim != 1
        or t_epochs.dtype.kind not in "iuf"
        or not np.all(np.isin(epochs, t_epochs))
        or any(other_arrays[f"{t}_norm"].size != t_epochs.size for t in si + other)
    ):
        return arrays, [], []
    index = {float(e): i for i, e in enumerate(t_epochs)}
    rows = np.array([index[float(e)] for e in epochs])
    out = dict(arrays)
    for t in si + other:
        out[f"{t}_norm"] = np.asarray(other_arrays[f"{t}_norm"])[rows]
    return out, si, other


def _load_keys(p: Path) -> set[str]:
    with zipfile.ZipFile(p) as zf:
        return {n.removesuffix(".npy") for n in zf.namelist()}


def _resolve_seed_path(p: Path) -> Path:
    if p.is_dir():
        if not (p / "train-tm.npz").is_file():
            raise ValueError(f"{str(p)!r} has no train-tm.npz; pass the .npz file itself")
        return p / "train-tm.npz"
    return p


def _report_epochs(arrays: dict[str, np.ndarray], label: str) -> np.ndarray:
    if "report_epochs" not in arrays:
        raise ValueError(
            f"{label} has no 'report_epochs' array (keys: {', '.join(sorted(arrays)) or 'none'}); "
            f"is it the seed paper's train-tm.npz? For siflow files pass fmt='siflow'"
        )
    epochs = arrays["report_epochs"]
    if epochs.ndim != 1 or epochs.size == 0 or epochs.dtype.kind not in "iuf":
        raise ValueError(f"{label}: 'report_epochs' must be a non-empty 1-d numeric array")
    finite = np.isfinite(epochs.astype(np.float64))
    if not np.all(finite) or np.any(epochs < 0):
        raise ValueError(f"{label}: 'report_epochs' must hold epochs >= 0")
    if np.any(np.abs(epochs.astype(np.float64)) > 2.0**40):
        raise ValueError(f"{label}: 'report_epochs' values are out of range for epochs")
    if np.any(np.diff(epochs.astype(np.float64)) <= 0):
        raise ValueError(f"{label}: 'report_epochs' must increase (get_info.py sorts them)")
    return epochs


def intra_epoch_denominator(epochs: np.ndarray, label: str = "report_epochs") -> int | None:
    """``F`` when checkpoints sit inside epochs (``report_epochs`` ``e + k/F``), else ``None``.

    Their ``get_info.py --save_freq_int F`` reports checkpoint ``checkpoint-e-k.pt``
    (saved during epoch ``e``, after ``k/F`` of its batches) as ``e + k/F`` and
    ``checkpoint-e.pt`` as ``e + 1``: epochs of training done. ``F`` here is the
    least denominator of the fractions seen.
    """
    e = np.asarray(epochs, dtype=np.float64)
    frac = e - np.floor(e)
    if not np.any(frac > 1e-9):
        return None
    for f in range(2, 100001):
        if np.all(np.abs(frac * f - np.round(frac * f)) < 1e-6):
            return f
    raise ValueError(
        f"{label}: 'report_epochs' holds fractions that are not e + k/F (F <= 100000), as "
        f"get_info.py --save_freq_int F writes them"
    )


def _intra_epoch_steps(epochs: np.ndarray, f: int, k: int, full_batch: bool) -> np.ndarray:
    """Steps of checkpoints reported as epochs done (``e + k/F`` or whole ``e``).

    Whole ``e``: ``e K``. ``e + j/F``: ``e K + b_j``, ``b_j`` the batches done when
    ``train.py`` saves it: the first batch ``i`` (from 1) with ``F i / K >= j`` after the
    previous save's batch (one save per batch); a full-batch run updates once per
    epoch, after its batch, so its checkpoints inside epoch ``e`` are at step ``e``.
    """
    e = np.asarray(epochs, dtype=np.float64)
    whole = np.floor(e + 1e-9)
    j = np.round((e - whole) * f).astype(np.int64)
    steps = whole.astype(np.int64) * k
    if full_batch:
        return steps
    done = np.zeros(f, dtype=np.int64)  # batches done at save j = 1 .. F-1
    for i in range(1, f):
        done[i] = max(-(-i * k // f), done[i - 1] + 1)
    return steps + np.where(j > 0, done[np.minimum(j, f - 1)], 0)


def _check_seed_group(group: str | None, si: list[str], other: list[str], label: str) -> None:
    if group is None or group.strip().lower() == "sum":
        return
    g = group.strip()
    if any(g == t or (g in t and not any(g in s for s in si)) for t in other):
        raise ValueError(
            f"{label}: {group!r} is not a scale-invariant tensor (a bias, the classifier or a "
            f"frozen layer); pass group= one of {', '.join(si) or 'none'} or group='sum'"
        )


def detect(path: Path, head: bytes) -> bool:
    """A directory holding ``train-tm.npz``, or an npz with ``report_epochs``."""
    if path.is_dir():
        return (path / "train-tm.npz").is_file()
    if not head.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return "report_epochs.npy" in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False
