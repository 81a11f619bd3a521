"""Column conventions: which column of a log is which :class:`~siflow.trajectory.Trajectory` field.

Every reader turns its file into a *table*: an ordered mapping of column name to a
1-d array (float64 with NaN for a blank cell, or int64 for an exact integer
column), all of one length. This module finds, in such a table,

- the column of each field (:func:`resolve_columns`): from ``mapping`` first,
  otherwise among the common spellings (:data:`ALIASES`, compared
  case-insensitively, with ``-`` and spaces read as ``_`` and an optional
  ``train/``, ``train_`` or ``train.`` prefix);
- the per-group (per-layer) columns (:func:`detect_groups`): ``norm/conv2``,
  ``norm_conv2``, ``conv2_norm``, ``rho/conv2``, ``layer_norm/conv2``,
  ``grad_norm/conv2``, ``grad_norm_conv2`` ..., and siflow's own training-loop
  convention ``siflow/<group>/<metric>`` (:data:`SIFLOW_METRICS`; group
  ``total`` is the whole SI set, ``siflow/lr`` and ``siflow/wd`` the
  hyperparameters, ``siflow/loss`` the training loss of each recorded step, read
  before any other loss column).

:func:`siflow.io._build.build_trajectory` turns the table into a trajectory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAPPING_KEYS",
    "ALIASES",
    "SIFLOW_METRICS",
    "parse_mapping",
    "normalize_mapping",
    "check_steps_per_epoch",
    "detect_groups",
    "si_weights",
    "relevant_column_pattern",
    "relevant_anchors",
    "Table",
    "HPARAM_KEYS",
    "OPTIMIZER_KEYS",
    "optimizer_name",
    "optimizer_from_columns",
    "config_meta",
]

Table = dict[str, NDArray[Any]]

#: Keys accepted in ``mapping`` (``{key: column}``).
MAPPING_KEYS: tuple[str, ...] = (
    "step",
    "epoch",
    "lr",
    "wd",
    "loss",
    "rho",
    "grad_norm_raw",
    "grad_norm_sphere",
    "elr",
    "angular_update",
    "sharpness_raw",
    "sharpness_sphere",
)

#: Shorthands accepted as mapping keys.
_KEY_SYNONYMS = {
    "grad_norm": "grad_norm_raw",
    "sharpness": "sharpness_raw",
    "norm": "rho",
    "weight_norm": "rho",
    "iteration": "step",
    "effective_lr": "elr",
}

#: Common spellings of each field, in order of preference (normalised: lower case,
#: ``-`` and spaces as ``_``).
ALIASES: dict[str, tuple[str, ...]] = {
    "step": (
        "step",
        "steps",
        "global_step",
        "trainer/global_step",
        "_step",
        "iter",
        "iters",
        "iteration",
        "iterations",
        "it",
    ),
    "epoch": ("epoch", "epochs"),
    "lr": (
        "lr",
        "learning_rate",
        "lr_sgd",
        "lr_adamw",
        "lr_adam",
        "lr_lion",
        "siflow/lr",
        "epoch_learning_rate",
        "epoch_lr",
    ),
    "wd": ("wd", "weight_decay", "siflow/wd"),
    "loss": (
        "siflow/loss",  # siflow's callbacks: the loss at every row with a norm
        "loss",
        "train_loss",
        "training_loss",
        "loss/train",
        "train_loss_step",
        "batch_loss",
        "epoch_loss",
    ),
    "rho": (
        "rho",
        "si_norm",
        "weight_norm",
        "params_norm",
        "param_norm",
        "w_norm",
        "norm",
        "rho/total",
        "norm/total",
        "weight_norm/total",
        "si_norm/total",
        "siflow/total/norm",
    ),
    "grad_norm_raw": (
        "grad_norm_raw",
        "grad_norm",
        "gnorm",
        "gradient_norm",
        "grad_norm/total",
    ),
    "grad_norm_sphere": (
        "grad_norm_sphere",
        "gnorm_sphere",
        "g_tilde",
        "siflow/total/grad_norm_sphere",
    ),
    "elr": ("elr", "effective_lr", "eff_lr", "effective_learning_rate", "siflow/total/elr"),
    "angular_update": (
        "angular_update",
        "angle",
        "angular_update_rad",
        "siflow/total/angular_update",
    ),
    "sharpness_sphere": ("sharpness_sphere", "siflow/total/sharpness_sphere"),
    "sharpness_raw": ("sharpness_raw", "sharpness", "lambda_max", "hessian_top_eig"),
}

_PREFIXES = ("train/", "train_", "train.")

#: Numeric hyperparameters of a run's configuration (Lightning's ``hparams.yaml``,
#: ``SummaryWriter.add_hparams``, MLflow params) -> the ``meta`` key they fill.
HPARAM_KEYS: dict[str, str] = {
    "lr": "lr",
    "learning_rate": "lr",
    "lr_init": "lr",
    "wd": "wd",
    "weight_decay": "wd",
    "momentum": "momentum",
    "batch_size": "batch_size",
}
#: Text hyperparameters that name the optimizer (HF's ``optim``, MLflow autolog's
#: ``optimizer_name``).
OPTIMIZER_KEYS: tuple[str, ...] = ("optimizer", "optimizer_name", "optim")

#: Lightning's ``LearningRateMonitor`` column ``lr-<Optimizer class>`` (with
#: ``/pg<k>`` per param group, ``-momentum`` / ``-weight_decay`` for the other terms).
_LR_MONITOR = re.compile(
    r"(?:^|/)lr-(?P<opt>[A-Za-z][A-Za-z0-9_]*?)(?:-(?:momentum|weight_decay))?(?:/pg\d+)?$"
)

#: Fields that may come per group, with the column prefixes (``<prefix><sep><group>``)
#: and suffixes (``<group><sep><suffix>``) that mark a group column.
# Prefixes are tried longest first, so ``grad_norm_sphere_conv1`` is not read as the raw
# gradient norm of a group ``sphere_conv1``.
_GROUP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rho": (
        (
            "norm",
            "rho",
            "si_norm",
            "weight_norm",
            "w_norm",
            "param_norm",
            "params_norm",
            "layer_norm",
        ),
        ("norm", "rho", "weight_norm", "w_norm"),
    ),
    "grad_norm_raw": (("grad_norm", "gnorm", "grad_norm_raw"), ("grad_norm", "gnorm")),
    "grad_norm_sphere": (("grad_norm_sphere",), ("grad_norm_sphere",)),
    "angular_update": (("angular_update", "angle"), ("angular_update", "angle")),
    "elr": (("elr", "effective_lr"), ("elr", "effective_lr")),
    "sharpness_sphere": (("sharpness_sphere",), ("sharpness_sphere",)),
}

#: siflow's own column convention ``siflow/<group>/<metric>`` (written by the
#: training-loop callbacks): metric name -> Trajectory field (``None``: the column
#: is kept in ``extra``). Group ``total`` is the whole SI set; ``siflow/lr`` and
#: ``siflow/wd`` are the hyperparameters.
SIFLOW_METRICS: dict[str, str | None] = {
    "norm": "rho",
    "grad_norm_sphere": "grad_norm_sphere",
    "elr": "elr",
    "angular_update": "angular_update",
    "sharpness_sphere": "sharpness_sphere",
    "angular_update_rms": None,
    "radial": None,
    "relative_update": None,
}
_SIFLOW_COLUMN = re.compile(r"^siflow/(?P<group>.+)/(?P<metric>[a-z_]+)$")
_TOTAL_GROUPS = ("total", "all")
# Names that look like "<group>_norm" but are not the weight norm of a group.
_NOT_GROUPS = {
    "grad",
    "gradient",
    "g",
    "gm",
    "gs",
    "params",
    "param",
    "weight",
    "w",
    "si",
    "total",
    "all",
    "update",
    "clip",
    "train",
    "val",
    "test",
}

# "gnorm_m", "norm_mean": a statistic of a total, not a group.
_STAT_SUFFIXES = {"m", "s", "mean", "std", "max", "min", "avg", "sq"}

_GROUP_NORM_FIELDS = ("rho", "grad_norm_raw", "grad_norm_sphere")
# Fields that describe one SI group: with a group chosen, a total column is not used.
_PER_GROUP_ONLY = (
    "grad_norm_raw",
    "grad_norm_sphere",
    "angular_update",
    "elr",
    "sharpness_raw",
    "sharpness_sphere",
)


def _norm_name(name: str) -> str:
    """A column name as the conventions match it: lower case, runs of spaces and dashes
    as ``_``, a unit in square brackets after a space dropped (``loss [nats]``)."""
    name = re.sub(r"\s+\[[^\[\]]*\]$", "", name.strip())
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _label(path: str | os.PathLike[str] | None) -> str:
    return repr(str(path)) if path is not None else "the log"


def parse_mapping(items: Iterable[str] | str | None) -> dict[str, str | None]:
    """Parse ``["field=column", ...]`` entries (the CLI's ``--map``) into a mapping.

    Parameters
    ----------
    items : iterable of str, or str
        Entries ``field=column``; a single string may hold several separated by
        commas. ``field`` is one of :data:`MAPPING_KEYS` (or a shorthand:
        ``grad_norm`` means ``grad_norm_raw``, ``sharpness`` means
        ``sharpness_raw``, ``norm`` means ``rho``). An empty column
        (``sharpness_raw=``) switches automatic detection of that field off.

    Returns
    -------
    dict
        Field name to column name (or ``None``).

    Examples
    --------
    >>> parse_mapping(["rho=model/si_norm", "grad_norm=gn"])
    {'rho': 'model/si_norm', 'grad_norm_raw': 'gn'}
    """
    if items is None:
        return {}
    if isinstance(items, str):
        items = [p for p in items.split(",") if p.strip()]
    out: dict[str, str | None] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(
                f"mapping entry {item!r} must look like field=column, e.g. rho=weight_norm "
                f"(fields: {', '.join(MAPPING_KEYS)})"
            )
        key, _, column = item.partition("=")
        key = _canonical_key(key.strip())
        out[key] = column.strip() or None
    return out


def _canonical_key(key: str) -> str:
    k = _norm_name(key)
    k = _KEY_SYNONYMS.get(k, k)
    if k not in MAPPING_KEYS:
        raise ValueError(
            f"mapping field {key!r} is unknown; use one of {', '.join(MAPPING_KEYS)} "
            f"(e.g. mapping={{'rho': '<column>'}})"
        )
    return k


def normalize_mapping(mapping: Mapping[str, str | None] | Sequence[str] | None) -> dict:
    """Accept a dict or a list of ``field=column`` strings; check the field names."""
    if mapping is None:
        return {}
    if isinstance(mapping, (list, tuple, str)):
        return parse_mapping(mapping)
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"mapping must be a dict like {{'rho': 'weight_norm'}} or a list of "
            f"'field=column' strings, got {type(mapping).__name__}"
        )
    out: dict[str, str | None] = {}
    for key, column in mapping.items():
        if column is not None and not isinstance(column, str):
            raise ValueError(f"mapping[{key!r}] must be a column name, got {column!r}")
        out[_canonical_key(str(key))] = column or None
    return out


def check_steps_per_epoch(steps_per_epoch: Any) -> int | None:
    """Validate ``steps_per_epoch`` (``None`` or a positive integer)."""
    if steps_per_epoch is None:
        return None
    from siflow._validate import check_positive_int

    return check_positive_int("steps_per_epoch", steps_per_epoch)


_LR_GROUP = re.compile(r"(?:^|/)lr-[A-Za-z][A-Za-z0-9_]*/pg\d+$")


def optimizer_name(text: Any) -> str | None:
    """The optimizer a class or configuration name means, as ``meta["optimizer"]`` holds it
    (lower case): ``"AdamW"`` and HF's ``"adamw_torch_fused"`` -> ``"adamw"``,
    ``"torch.optim.SGD"`` -> ``"sgd"``, ``"lion_8bit"`` -> ``"lion"``, ``"RMSprop"`` ->
    ``"rmsprop"``; None for anything that is not a name."""
    if not isinstance(text, str):
        return None
    name = text.strip().strip("'\"").lower().rsplit(".", 1)[-1].removeprefix("paged_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return None
    for known in ("adamw", "lion", "sgd"):
        if name.startswith(known) and not name[len(known) :].isalpha():
            return known
    return name


def config_meta(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``meta`` entries from a run's configuration (``{name: value}``): numeric
    :data:`HPARAM_KEYS` (``lr``, ``weight_decay`` ...) and the optimizer named by an
    :data:`OPTIMIZER_KEYS` entry (with ``optimizer_source`` saying it came from
    ``where``). Names are compared in lower case; other entries are ignored."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = str(name).strip().lower()
        if key in OPTIMIZER_KEYS and "optimizer" not in out:
            opt = optimizer_name(value)
            if opt is not None:
                out["optimizer"] = opt
                out["optimizer_source"] = f"{where} {name}={str(value).strip()!r}"
            continue
        field = HPARAM_KEYS.get(key)
        number = _config_number(value)
        if field is None or number is None or field in out:
            continue
        if field != "batch_size":
            out[field] = number
        elif number.is_integer() and number > 0:
            out[field] = int(number)
    return out


def _config_number(value: Any) -> float | None:
    """A finite number from a configuration value (a number or numeric text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().strip("'\"")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def optimizer_from_columns(columns: Iterable[str]) -> tuple[str, list[str]] | None:
    """``(optimizer, columns)`` when the log's ``lr-<Optimizer>`` columns (Lightning's
    ``LearningRateMonitor``) all name one optimizer class; None otherwise."""
    hits: dict[str, list[str]] = {}
    for column in columns:
        m = _LR_MONITOR.search(column.strip())
        name = optimizer_name(m.group("opt")) if m else None
        if name is not None:
            hits.setdefault(name, []).append(column)
    if len(hits) != 1:
        return None
    return next(iter(hits.items()))


# --------------------------------------------------------------------------- detection
def _find_alias(field: str, names: dict[str, str], taken: set[str]) -> str | None:
    """First column whose normalised name is an alias of ``field``."""
    for alias in ALIASES[field]:
        for original, normed in names.items():
            if original not in taken and normed == alias:
                return original
    for alias in ALIASES[field]:
        for original, normed in names.items():
            if original in taken:
                continue
            for prefix in _PREFIXES:
                if normed.startswith(prefix) and normed[len(prefix) :] == alias:
                    return original
    return None


def alias_columns(field: str, names: dict[str, str]) -> list[str]:
    """Every column (``{original: normalised}``) whose name is a spelling of ``field``
    (:data:`ALIASES`, with or without a ``train/``-type prefix), in column order."""
    spellings = set(ALIASES[field])
    out = []
    for original, normed in names.items():
        rest = [normed[len(p) :] for p in _PREFIXES if normed.startswith(p)]
        if normed in spellings or any(r in spellings for r in rest):
            out.append(original)
    return out


def lr_group_columns(columns: Iterable[str]) -> list[str]:
    """Lightning's per-param-group lr columns ``lr-<Optimizer>/pg<k>``."""
    return [c for c in columns if _LR_GROUP.search(c.strip())]


def _split_group(field: str, normed: str) -> str | None:
    """Group name if the normalised column ``normed`` is a per-group column of ``field``."""
    prefixes, suffixes = _GROUP_FIELDS[field]
    m = _SIFLOW_COLUMN.match(normed)
    if m:
        return m.group("group") if SIFLOW_METRICS.get(m.group("metric")) == field else None
    if normed.startswith("siflow/"):
        return None
    # add_scalars("train/norm", {...}) writes train/norm/<g>, as aliases take train/
    body = normed.removeprefix("train/")
    for prefix in sorted(prefixes, key=len, reverse=True):
        for sep in ("/", ":", ".", "_"):
            head = prefix + sep
            if body.startswith(head) and len(body) > len(head):
                group = body[len(head) :]
                if sep == "_" and (
                    group in _NOT_GROUPS or group in _STAT_SUFFIXES or _is_other_field(group)
                ):
                    return None
                return group
    for suffix in suffixes:
        for sep in ("/", ":", ".", "_"):
            tail = sep + suffix
            if normed.endswith(tail) and len(normed) > len(tail):
                group = normed[: -len(tail)]
                last = re.split(r"[/:._]", group)[-1]
                if group in _NOT_GROUPS or last in {"grad", "gradient", "g", "gm", "gs"}:
                    return None
                if field == "rho" and (group.endswith("grad") or group.startswith("grad")):
                    return None
                return group
    return None


def _is_other_field(rest: str) -> bool:
    """Whether ``norm_<rest>`` names another quantity (``norm_grad``, ``norm_sphere``...)."""
    return rest.split("_")[0] in {"grad", "gradient", "sphere", "raw", "update", "ratio"}


def detect_groups(names: dict[str, str], taken: set[str]) -> dict[str, dict[str, str]]:
    """``{field: {group: column}}`` for the per-group columns of the table."""
    out: dict[str, dict[str, str]] = {}
    claimed: set[str] = set()
    # grad fields first so that "conv1_grad_norm" is not read as rho of "conv1_grad".
    for field in (
        "grad_norm_sphere",
        "sharpness_sphere",
        "grad_norm_raw",
        "angular_update",
        "elr",
        "rho",
    ):
        for original, normed in names.items():
            if original in taken or original in claimed:
                continue
            group = _split_group(field, normed)
            if group is None:
                continue
            out.setdefault(field, {})
            out[field].setdefault(group, original)
            claimed.add(original)
    return out


def _original_group_names(groups: dict[str, dict[str, str]]) -> list[str]:
    seen: list[str] = []
    for per in groups.values():
        for g in per:
            if g not in seen and g not in _TOTAL_GROUPS:
                seen.append(g)
    return seen


def _pick_group(group: str, available: list[str], label: str) -> str:
    g = _norm_name(group)
    if g in available:
        return g
    matches = [a for a in available if g in a]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(available) or "none"
    if not matches:
        raise ValueError(
            f"{label} has no SI group {group!r} (groups: {listed}); pass group= one of them or "
            f"group='sum'"
        )
    raise ValueError(
        f"{label}: group {group!r} matches several groups ({', '.join(matches)}); "
        f"pass the full name as group="
    )


# ------------------------------------------------------------------ SI tensors
_NOT_SI_WORDS = ("bias", "bn", "batchnorm", "norm.", "ln.", "layernorm", "running_")


def named_not_si(name: str) -> bool:
    """Whether a tensor's name marks it as a bias, a normalisation parameter or a buffer."""
    return any(w in name.lower() for w in _NOT_SI_WORDS)


def si_weights(
    norms: Mapping[str, NDArray[Any]], sizes: Mapping[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """``(si, other)``: which parameter tensors of a network are scale-invariant.

    The convention of the BatchNorm networks in the field's code (Lobacheva et
    al. 2021, Kunin et al. 2021, Kosson et al. 2024): a conv or linear weight
    followed by BatchNorm is SI; biases, normalisation parameters and the
    classifier are not. From names and per-row norms alone: every ``*.weight``
    except normalisation parameters, the last weight in parameter order (the
    classifier) and tensors whose norm is the same at every row (frozen, lr 0).
    With the tensors' element counts (``sizes``), a weight with as many elements
    as the bias of the same module is an elementwise scale (an affine BatchNorm or
    LayerNorm, whatever its name, e.g. ``conv_layers.1.weight`` in a Sequential),
    not SI.
    """
    sizes = sizes or {}
    weights = [t for t in norms if t.endswith(".weight")]
    classifier = weights[-1] if len(weights) > 1 else None
    si = []
    for t in weights:
        norm = np.asarray(norms[t], dtype=np.float64).reshape(-1)
        frozen = norm.size > 1 and bool(np.all(norm == norm[0]))
        bias = t[: -len("weight")] + "bias"
        elementwise = t in sizes and sizes.get(bias) == sizes[t]
        if t == classifier or frozen or elementwise or named_not_si(t):
            continue
        si.append(t)
    return si, [t for t in norms if t not in si]


def relevant_column_pattern(delimiter: str | None = None) -> re.Pattern[str]:
    """A regex matching every column name a convention of this module can use.

    Used to read only the useful columns of very wide files: aliases of the
    fields, per-group columns (``norm/<g>``, ``<g>_norm``, ...) and ``siflow/...``.
    With ``delimiter`` the pattern finds those names inside a whole header line
    (``finditer``): each match is one cell between delimiters.
    """
    aliases = sorted({a for names in ALIASES.values() for a in names}, key=len, reverse=True)
    prefixes = sorted({p for pre, _ in _GROUP_FIELDS.values() for p in pre}, key=len, reverse=True)
    suffixes = sorted({x for _, suf in _GROUP_FIELDS.values() for x in suf}, key=len, reverse=True)
    any_text = ".+" if delimiter is None else f"[^{re.escape(delimiter)}\\r\\n]+"

    def alt(words: list[str]) -> str:
        return "|".join(re.escape(w).replace("_", "[_ -]") for w in words)

    body = (
        rf"[ \t]*(?:(?:train[/_.])?(?:{alt(aliases)})"
        rf"|(?:train/)?(?:{alt(prefixes)})[/:._]{any_text}"
        rf"|{any_text}[/:._](?:{alt(suffixes)})|siflow/{any_text})[ \t]*"
    )
    if delimiter is not None:
        d = re.escape(delimiter)
        body = rf"(?<![^{d}\n])(?:{body})(?![^{d}\r\n])"
    return re.compile(body, re.IGNORECASE)


def relevant_anchors() -> list[str]:
    """Lower-case words one of which every name of :func:`relevant_column_pattern` contains.

    The longest word of each alias, prefix and suffix, keeping only words that
    contain no other (``iter`` is covered by ``it``). A cell of a wide header
    without any of them cannot match and is never looked at.
    """
    words = {a for names in ALIASES.values() for a in names}
    words |= {p for pre, suf in _GROUP_FIELDS.values() for p in (*pre, *suf)}
    words.add("siflow")
    longest = {max(re.split(r"[_/.\s-]+", w), key=len).lower() for w in words}
    longest.discard("")
    return sorted(w for w in longest if not any(o != w and o in w for o in longest))
