"""Reader for neural-mechanics runs (Kunin et al. 2021, ``danielkunin/neural-mechanics``).

Their ``train.py`` saves checkpoints every ``save_freq`` steps; ``extract.py``
turns each into a deepdish HDF5 file ``feats/step<N>.h5`` with groups
``params`` (every parameter tensor by name, e.g. ``1.weight``), ``buffers``
(their optimizer's saved buffers, ``<param>.grad_buffer`` the direction ``d_p``
of the step that led to ``N``: ``g + wd w_{N-1}``, or the momentum buffer; empty at
step 0) and ``metrics`` (``train_loss``, ``test_loss``,
``accuracy1``, ``accuracy5``, one value each). ``hyperparameters.json`` in the
run directory holds ``lr``, ``wd``, ``momentum``, ``train_batch_size``, ``model``
and ``optimizer`` (``lr``, ``wd`` and ``momentum`` must be JSON numbers or ``null``).
``cache/*.h5`` are derived per-metric caches and are not read. A step file of another
layout (a group where a dataset belongs, text for a tensor) is refused in one line
naming the entry; a metric that is not one number is read as missing, with a note.

SI tensors: a weight of two or more dimensions whose next parameter module (in
the model's numbering: ``1.weight`` -> ``2.weight`` in an ``nn.Sequential``,
``features.0`` -> ``features.1`` or ``residual_function.3`` -> ``.4`` within one
parent module, ``conv1`` -> ``bn1``) is a 1-d normalisation weight of its output
width (a BatchNorm after the layer); the classifier and the BatchNorm parameters
are not SI. ``rho = sqrt(sum_g |w_g|^2)`` over SI tensors, computed from ``params``;
the raw gradient norm from ``grad_buffer`` as :func:`_gradient_rule` says. Needs
``h5py`` (the ``h5`` extra: ``pip install "siflow[h5]"``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow.io._build import build_trajectory
from siflow.io._columns import Table, normalize_mapping
from siflow.io._text import check_path, read_json
from siflow.trajectory import Trajectory

__all__ = ["read_neural_mechanics", "detect", "nm_si_tensors"]

MappingArg = Mapping[str, str | None] | Sequence[str] | None

_STEP_FILE = re.compile(r"^step(\d+)\.h5$")
_META_KEYS = ("lr", "wd", "momentum", "train_batch_size", "model", "optimizer", "save_freq")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ValueError(
            'reading neural-mechanics HDF5 files needs h5py: pip install "siflow[h5]"'
        ) from None
    return h5py


def _run_dir(p: Path) -> Path:
    if p.is_file():
        p = p.parent.parent if p.parent.name == "feats" else p.parent
    if not (p / "feats").is_dir():
        raise ValueError(
            f"{str(p)!r} has no feats/ folder of step<N>.h5 files; pass the run directory "
            f"(results/<experiment>/<expid>) after running their extract.py"
        )
    return p


def _step_files(run: Path) -> list[tuple[int, Path]]:
    files = []
    for f in (run / "feats").iterdir():
        m = _STEP_FILE.match(f.name)
        if m and f.is_file():
            files.append((int(m.group(1)), f))
    if not files:
        raise ValueError(f"{str(run / 'feats')!r} holds no step<N>.h5 files")
    return sorted(files)


def _module_index(name: str) -> tuple[int, ...] | None:
    head = name.rsplit(".", 1)[0]
    parts = head.split(".")
    if not all(x.isdigit() for x in parts):
        return None
    return tuple(int(x) for x in parts)


def _next_weights(names: list[str]) -> dict[str, str]:
    """Each weight's next parameter module, from the names alone.

    All-numeric module paths (an ``nn.Sequential``, ``1.weight``): the next weight in
    numeric order. Otherwise, within one parent module: the next numbered child
    (``layer.0.weight`` -> ``layer.1.weight``, or ``layer.3`` after a ReLU at 2), or
    ``bnK`` after ``convK`` (``conv1.weight`` -> ``bn1.weight``).
    """
    nxt: dict[str, str] = {}
    numeric = sorted((idx, n) for n in names if (idx := _module_index(n)) is not None)
    for (_, a), (_, b) in zip(numeric, numeric[1:], strict=False):
        nxt[a] = b
    children: dict[str, list[tuple[int, str]]] = {}
    present = set(names)
    for n in names:
        if n in nxt or _module_index(n) is not None:
            continue
        parent, _, last = n.rsplit(".", 1)[0].rpartition(".")
        if last.isdigit():
            children.setdefault(parent, []).append((int(last), n))
        elif m := re.fullmatch(r"conv(\d*)", last):
            bn = f"{parent}.bn{m.group(1)}.weight" if parent else f"bn{m.group(1)}.weight"
            if bn in present:
                nxt[n] = bn
    for kids in children.values():
        kids.sort()
        for (_, a), (_, b) in zip(kids, kids[1:], strict=False):
            nxt[a] = b
    return nxt


def nm_si_tensors(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """``(si, other)``: weights followed by a BatchNorm of their output width.

    A weight of two or more dimensions is SI when its next parameter module
    (:func:`_next_weights`) has a 1-d weight of its output width (a BatchNorm after
    the layer, possibly after a ReLU: ``BN(ReLU(c W x)) = BN(ReLU(W x))`` for ``c > 0``;
    a bias before the BatchNorm cancels in it).
    """
    weights = [n for n in shapes if n.endswith(".weight")]
    nxt = _next_weights(weights)
    si = [
        n
        for n in weights
        if len(shapes[n]) >= 2
        and n in nxt
        and len(shapes[nxt[n]]) == 1
        and shapes[nxt[n]][0] == shapes[n][0]
    ]
    si.sort(key=lambda n: (_module_index(n) or (), n))
    return si, [n for n in shapes if n not in si]


#: The layout of their ``extract.py`` output, named in the messages about another one.
_H5_LAYOUT = (
    "their extract.py writes one numeric dataset per name under params/, buffers/ and "
    "metrics/: is it a feats/step<N>.h5 of neural-mechanics? re-run extract.py on the "
    "checkpoint, or use an intact copy"
)


def _group(h5py: Any, h: Any, name: str, label: str, required: bool = False) -> Any:
    """The HDF5 group ``name`` of the open file ``h`` (None when absent and not required)."""
    item = h.get(name)
    if item is None and not required:
        return None
    if item is None:
        raise ValueError(f"{label} has no '{name}' group; {_H5_LAYOUT}")
    if not isinstance(item, h5py.Group):
        raise ValueError(
            f"{label}: {name} is a {type(item).__name__.lower()}, not a group; {_H5_LAYOUT}"
        )
    return item


def _datasets(h5py: Any, group: Any, label: str) -> dict[str, Any]:
    """``{name: value}`` of the datasets in ``group``; a subgroup or a link to nothing is a
    ``ValueError`` naming it."""
    out = {}
    for name in group:
        item = group.get(name)
        if not isinstance(item, h5py.Dataset):
            what = "a dangling link" if item is None else f"a {type(item).__name__.lower()}"
            raise ValueError(
                f"{label}: {group.name.lstrip('/')}/{name} is {what}, not a dataset; {_H5_LAYOUT}"
            )
        out[name] = item[()]
    return out


def _tensor(value: Any, where: str) -> np.ndarray:
    """A parameter or buffer dataset as float64, refused when it does not hold numbers."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} holds {arr.dtype} values, not numbers; {_H5_LAYOUT}")
    return arr.astype(np.float64)


def _metrics(values: dict[str, Any]) -> tuple[dict[str, tuple[float, str]], list[str]]:
    """One-number metrics as ``(value, dtype kind)``, and the names of the others."""
    metrics, skipped = {}, []
    for n, d in values.items():
        value = np.asarray(d)
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
            metrics[n] = (float(value.reshape(-1)[0]), value.dtype.kind)
        else:
            skipped.append(n)
    return metrics, skipped


def _read_step(
    h5py: Any, path: Path
) -> tuple[dict[str, tuple[float, str]], dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Params, grad buffers and one-number metrics of one step file (and the metrics that are
    not one number)."""
    label = repr(str(path))
    try:
        with h5py.File(path, "r") as h:
            params_group = _group(h5py, h, "params", label, required=True)
            params = {
                n: _tensor(v, f"{label}: params/{n}")
                for n, v in _datasets(h5py, params_group, label).items()
            }
            grads = {}
            buffers = _group(h5py, h, "buffers", label)
            for n, v in (_datasets(h5py, buffers, label) if buffers else {}).items():
                if n.endswith(".grad_buffer"):
                    grads[n[: -len(".grad_buffer")]] = _tensor(v, f"{label}: buffers/{n}")
            metrics_group = _group(h5py, h, "metrics", label)
            metrics, skipped = _metrics(
                _datasets(h5py, metrics_group, label) if metrics_group else {}
            )
    except OSError as exc:
        raise ValueError(f"{label} is not a readable HDF5 file ({exc}); is it truncated?") from None
    return metrics, params, grads, skipped


#: Column of a saved step direction kept as it is (its lr unknown). Not ``"<param> d_p
#: norm"``: a column ending in ``norm`` is read as a weight-norm group and summed into rho.
_D_P_NORM = "d_p norm (step direction)"


def _number(hp: Mapping[str, Any], key: str, default: float) -> float | None:
    value = hp.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _gradient_rule(hp: Mapping[str, Any]) -> tuple[float | None, float, bool, str]:
    """``(lr, wd, gradient recoverable, note)`` for their optimizer's ``grad_buffer``.

    Their ``custom_sgd`` saves ``d_p``, the step's direction: ``g + wd w`` (``w`` the weights
    before the step), or with momentum the momentum buffer; the step is
    ``w_N = w_{N-1} - lr d_p``. So ``w_{N-1} = w_N + lr d_p`` and, without momentum,
    ``g = d_p - wd w_{N-1}``: both need the step's ``lr``.
    """
    lr, wd = _number(hp, "lr", math.nan), _number(hp, "wd", 0.0)
    mom = _number(hp, "momentum", 0.0)
    if lr is None or not lr > 0 or wd is None or mom is None:
        return (
            None,
            0.0,
            False,
            (
                "hyperparameters.json gives no usable lr, wd and momentum: grad_buffer (their "
                f"step direction d_p, not the gradient) is kept as '<param> {_D_P_NORM}'"
            ),
        )
    if hp.get("lr_drops"):
        return (
            None,
            wd,
            False,
            (
                "the learning rate of a saved step is not known (lr drops, see the note on "
                "them): grad_buffer (their step direction d_p = g + wd w, or the momentum "
                f"buffer) is kept as '<param> {_D_P_NORM}', and neither the gradient nor the "
                "weights before the step are derived"
            ),
        )
    if mom != 0.0 or hp.get("nesterov"):
        return (
            lr,
            wd,
            False,
            (
                "momentum run: grad_buffer holds the step's direction d_p (the momentum buffer), "
                "so the gradient is not recoverable; the weights before each saved step, "
                "w_N + lr d_p, give rho at step N - 1"
            ),
        )
    return (
        lr,
        wd,
        True,
        (
            "grad_buffer holds their step direction d_p = g + wd w_{N-1}, not the gradient: "
            "w_{N-1} = w_N + lr d_p and g = d_p - wd w_{N-1} (at the weights before step N) "
            "are placed at step N - 1, with the norm of w_{N-1}"
        ),
    )


def _table(
    files: list[tuple[int, Path]], hp: Mapping[str, Any]
) -> tuple[np.ndarray, Table, dict[str, Any]]:
    h5py = _h5py()
    read = [_read_step(h5py, f) for _step, f in files]
    rows = [(metrics, params, grads) for metrics, params, grads, _ in read]
    shapes = {n: a.shape for n, a in rows[0][1].items()}
    si, other = nm_si_tensors(shapes)
    lr, wd, recover, how = _gradient_rule(hp)
    saved = {step for step, _ in files}
    entries: dict[int, dict[str, float]] = {}
    notes: list[str] = []

    def norm(a: np.ndarray) -> float:
        return float(np.sqrt(np.sum(a**2)))

    def rho_key(name: str) -> str:
        return f"rho/{name}" if name in si else f"{name} norm (not SI)"

    for (step, _), (metrics, params, grads) in zip(files, rows, strict=True):
        row = entries.setdefault(step, {})
        for name in si + other:
            if name in params:
                row[rho_key(name)] = norm(params[name])
        for m, (value, kind) in metrics.items():
            if m == "train_loss" and kind in "iu" and value == 0 and step == 0:
                notes.append("train_loss at step 0 is their placeholder 0 (no step yet): missing")
                value = math.nan
            row[m] = value
        if not grads:
            continue
        if how not in notes:
            notes.append(how)
        # the weights before the step need its lr: without it no row at step - 1
        prev = entries.setdefault(step - 1, {}) if lr is not None else {}
        for name in si + other:
            if name not in grads or name not in params:
                continue
            d_p = grads[name]
            if lr is None:
                row[f"{name} {_D_P_NORM}"] = norm(d_p)
                continue
            w_prev = params[name] + lr * d_p
            if step - 1 not in saved:
                prev[rho_key(name)] = norm(w_prev)
            if recover:
                key = f"grad_norm_raw/{name}" if name in si else f"{name} grad_norm (not SI)"
                prev[key] = norm(d_p - wd * w_prev)
    notes.extend(_skipped_metrics_notes(files, [skipped for *_, skipped in read]))
    steps = np.array(sorted(entries), dtype=np.int64)
    names = list(dict.fromkeys(k for step in steps for k in entries[int(step)]))
    table: Table = {
        k: np.array([entries[int(step)].get(k, math.nan) for step in steps]) for k in names
    }
    return steps, table, {"si_tensors": si, "not_si": other, "notes": notes}


def _skipped_metrics_notes(files: list[tuple[int, Path]], skipped: list[list[str]]) -> list[str]:
    """A note per metric left out of some step file for not being one number."""
    where: dict[str, list[str]] = {}
    for (_step, f), names in zip(files, skipped, strict=True):
        for name in names:
            where.setdefault(name, []).append(f.name)
    return [
        f"metric {name!r} in {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} is not "
        f"one number (text or an array): read as missing there"
        for name, found in where.items()
    ]


def read_neural_mechanics(
    path: str | os.PathLike[str],
    *,
    mapping: MappingArg = None,
    group: str | None = None,
) -> Trajectory:
    """Read a neural-mechanics run directory (``feats/step<N>.h5`` + ``hyperparameters.json``).

    Parameters
    ----------
    path : path-like
        The run directory, its ``feats/`` folder or one ``step<N>.h5`` in it.
    mapping : dict or list of ``"field=column"``, optional
        Overrides (columns: ``rho/<param>``, ``grad_norm_raw/<param>``,
        ``train_loss``, ``test_loss``, ``accuracy1``, ``accuracy5``).
    group : str, optional
        One SI tensor (``"4.weight"``) or ``"sum"`` (the default: all SI tensors).

    Returns
    -------
    Trajectory
        At each saved step ``N``: ``rho`` the SI norm, ``loss = train_loss``,
        ``elr = lr / rho**2``; at step ``N - 1``, from the saved step direction
        ``d_p`` (:func:`_gradient_rule`): ``rho`` of ``w_{N-1} = w_N + lr d_p`` and,
        without momentum, ``grad_norm_sphere = rho * |g|`` with
        ``g = d_p - wd w_{N-1}`` (:func:`siflow.theory.sphere_grad_norm`); lr, wd,
        momentum from ``hyperparameters.json``.
    """
    p = check_path(path, allow_dir=True)
    run = _run_dir(p)
    files = _step_files(run)
    hp = _hyperparameters(run / "hyperparameters.json")
    steps, table, meta = _table(files, hp)
    if hp:
        meta.update({k: hp[k] for k in _META_KEYS if k in hp and hp[k] is not None})
        meta.update(_optimizer_meta(hp))
        _note_lr_drops(hp, meta)
    si = meta["si_tensors"]
    use_sum = group is None or group.strip().lower() == "sum"
    traj = build_trajectory(
        table,
        path=run,
        fmt="neural-mechanics",
        mapping={
            **({"loss": "train_loss"} if "train_loss" in table else {}),
            **normalize_mapping(mapping),
        },
        group="sum" if use_sum and len(si) > 1 else (None if use_sum else group),
        meta=meta,
        step=steps,
    )
    return traj


def _hyperparameters(path: Path) -> dict[str, Any]:
    """``hyperparameters.json`` (``{}`` without it), its numeric settings checked for type.

    ``lr``, ``wd`` and ``momentum`` may be null (unknown) but not text or a list: the
    reader computes with them.
    """
    if not path.is_file():
        return {}
    label = repr(str(path))
    hp = read_json(path)
    if not isinstance(hp, dict):
        raise ValueError(
            f"{label} holds a JSON {type(hp).__name__}, not the object of settings their "
            f"train.py writes; use the run's own file (or delete it: lr and wd then unknown)"
        )
    for key in ("lr", "wd", "momentum"):
        value = hp.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(
                f"{label}: {key!r} must be a number, got {value!r}; write the run's own "
                f"value as a JSON number (no quotes)"
            )
    return hp


def _optimizer_meta(hp: Mapping[str, Any]) -> dict[str, Any]:
    """``meta["optimizer"]`` for their optimizer names that are SGD with coupled weight decay.

    Their ``load.optimizer`` maps ``custom_sgd`` (their SGD that saves its buffers) and
    ``sgd`` (``torch.optim.SGD``) to SGD with L2 weight decay in the gradient, momentum and
    Nesterov from the settings: siflow's ``sgd`` (heavy ball when ``momentum`` is set) or
    ``nesterov``. Other names (``momentum``, whose momentum depends on their version;
    ``adam``, ``rms``), decoupled decay (``decouple_wd``) or dampening stay as written.
    """
    name = hp.get("optimizer")
    if not isinstance(name, str) or name.strip().lower() not in ("custom_sgd", "sgd"):
        return {}
    if hp.get("decouple_wd") or (_number(hp, "dampening", 0.0) or 0.0) != 0.0:
        return {}
    mom = _number(hp, "momentum", 0.0)
    if mom is None:
        return {}
    return {
        "optimizer": "nesterov" if hp.get("nesterov") is True and mom > 0 else "sgd",
        "optimizer_source": f"hyperparameters.json optimizer={name.strip()!r}",
    }


def _note_lr_drops(hp: Mapping[str, Any], meta: dict[str, Any]) -> None:
    """Their ``MultiStepLR``: ``lr`` times ``lr_drop_rate`` at each epoch in ``lr_drops``.

    The step files do not say which epoch a step is in (the steps per epoch depend on the
    data set's size), so ``meta["lr"]`` stays the initial learning rate, with a note.
    """
    drops = hp.get("lr_drops")
    if not isinstance(drops, list) or not drops:
        return
    rate = hp.get("lr_drop_rate")
    meta["lr_drops"], meta["lr_drop_rate"] = drops, rate
    meta.setdefault("notes", []).append(
        f"hyperparameters.json drops the learning rate by {rate} at epochs {drops}: lr "
        f"{meta.get('lr')} and the effective LR hold before the first drop only (the step "
        f"files do not give the steps per epoch K); for the whole run pass the overlay "
        f"--schedule step:gamma={rate},milestones=<each drop epoch times K, joined by />"
    )


def detect(path: Path, head: bytes) -> bool:
    """A run directory with ``feats/step<N>.h5``, or a ``step<N>.h5`` file in ``feats/``."""
    if path.is_dir():
        feats = path / "feats" if (path / "feats").is_dir() else path
        return feats.name == "feats" and any(_STEP_FILE.match(f.name) for f in feats.iterdir())
    return bool(_STEP_FILE.match(path.name)) and head.startswith(b"\x89HDF")
