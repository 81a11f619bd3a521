"""The naming scheme of the trainer callbacks and the recorder set-up they share."""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "PREFIX",
    "TOTAL",
    "METRIC_NAMES",
    "logger_metrics",
    "check_options",
    "make_recorder",
    "FORECAST_COLUMNS",
    "check_forecast",
    "make_forecaster",
    "forecast_metrics",
    "optimizer_hparams",
    "size_hparams",
]


class BadGroupName(ValueError):
    """A group name given in ``groups=`` that the logging scheme cannot carry."""


#: Prefix of every logged metric.
PREFIX = "siflow"
#: Group name of the whole SI set.
TOTAL = "total"
#: Recorder column -> logged metric name (``siflow/<group>/<metric>``).
METRIC_NAMES: dict[str, str] = {
    "rho": "norm",
    "grad_norm_sphere": "grad_norm_sphere",
    "elr": "elr",
    "angular_update": "angular_update",
    "radial": "radial",
    "relative_update": "relative_update",
    "sharpness_sphere": "sharpness_sphere",
}


def logger_metrics(record: Mapping[str, float], groups: list[str]) -> dict[str, float]:
    """Metrics of one recorded row under the logging scheme.

    ``siflow/total/<metric>`` from the row's total columns,
    ``siflow/<group>/<metric>`` from ``<column>/<group>``, for the metrics of
    :data:`METRIC_NAMES`; ``siflow/total/angular_update_rms`` (RMS of the total
    angle over the steps since the previous row, up to this one); ``siflow/lr``,
    ``siflow/wd`` and the first param group's momentum term at the row's step,
    ``siflow/momentum`` (SGD-type optimizers) or ``siflow/beta1`` (``betas[0]``:
    Adam-type, Lion), which a scheduler such as OneCycleLR may cycle; ``siflow/loss``,
    the training loss of the row's step (the batch the update used), so that a log
    has the loss at every row with a norm, whatever the trainer's own loss logging
    (Hugging Face's ``logging_steps`` averages it over 500 steps by default, Lightning
    writes it every 50). NaN values (a metric not measured at this row) are left out.

    Parameters
    ----------
    record : mapping
        A row from :meth:`siflow.torch_probe.SIRecorder.take_rows`.
    groups : list of str
        The recorder's group names.
    """
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if value is not None and not math.isnan(value):
            out[name] = float(value)

    for col, metric in METRIC_NAMES.items():
        put(f"{PREFIX}/{TOTAL}/{metric}", record.get(col))
        for g in groups:
            put(f"{PREFIX}/{g}/{metric}", record.get(f"{col}/{g}"))
    put(f"{PREFIX}/{TOTAL}/angular_update_rms", record.get("angular_update_rms"))
    put(f"{PREFIX}/lr", record.get("lr"))
    put(f"{PREFIX}/wd", record.get("wd"))
    put(f"{PREFIX}/momentum", record.get("momentum"))
    put(f"{PREFIX}/beta1", record.get("beta1"))
    put(f"{PREFIX}/loss", record.get("loss"))
    return out


#: Arguments of :class:`~siflow.torch_probe.SIRecorder` that a callback sets itself.
_SET_BY_CALLBACK = frozenset(
    {"model", "optimizer", "every", "sharpness_every", "sharpness_loss", "path", "meta"}
    | {"groups", "example_input"}
)


def check_options(
    every: int, sharpness: bool | int, path: Any, options: Mapping[str, Any] | None = None
) -> tuple[int, int | None]:
    """Validate the callbacks' arguments; return ``every`` and the sharpness period in steps.

    ``sharpness=True`` measures it at every recorded row; an int ``k`` at every
    ``k``-th row. ``options`` (passed on to the recorder) may hold only the
    :class:`~siflow.torch_probe.SIRecorder` arguments the callback does not set itself.
    """
    import inspect

    from siflow.torch_probe import SIRecorder, _recorder_path

    allowed = sorted(set(inspect.signature(SIRecorder).parameters) - _SET_BY_CALLBACK)
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown recorder option(s) {', '.join(unknown)}; the callback takes every=, "
            f"sharpness=, path=, groups=, example_input= and {', '.join(a + '=' for a in allowed)}"
        )
    from siflow._validate import check_positive_int

    every = check_positive_int("every", every)
    if isinstance(sharpness, bool) or sharpness is None:
        sharp_every = every if sharpness else None
    elif isinstance(sharpness, int):
        sharp_every = every * check_positive_int("sharpness", sharpness)
    else:
        raise ValueError(
            f"sharpness must be True, False or a positive int (every k-th row), got {sharpness!r}"
        )
    _recorder_path(path)
    return every, sharp_every


#: The forecast's columns in a log (:class:`siflow.forecast.RecorderForecast`), logged as
#: ``siflow/<column>``.
FORECAST_COLUMNS = ("next_event_step", "next_event_lo", "next_event_hi")


def check_forecast(
    forecast: bool | int, every: int, options: Mapping[str, Any] | None
) -> int | None:
    """Steps between the callbacks' forecasts (``forecast=True``: at every recorded row;
    an int ``k``: at every ``k``-th), None for none; ``options`` must be keyword
    arguments of :func:`siflow.forecast.forecast_next_event`."""
    import inspect

    from siflow._validate import check_positive_int
    from siflow.forecast import forecast_next_event

    if forecast is None or forecast is False:
        if options:
            raise ValueError("forecast_options= needs forecast=True or an int (every k-th row)")
        return None
    if forecast is True:
        steps = every
    elif isinstance(forecast, int):
        steps = every * check_positive_int("forecast", forecast)
    else:
        raise ValueError(
            f"forecast must be True, False or a positive int (every k-th row), got {forecast!r}"
        )
    allowed = sorted(set(inspect.signature(forecast_next_event).parameters) - {"traj"})
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown forecast option(s) {', '.join(unknown)}; forecast_options= takes the "
            f"keyword arguments of siflow.forecast.forecast_next_event: {', '.join(allowed)}"
        )
    return steps


def make_forecaster(rec: Any, steps: int | None, options: Mapping[str, Any] | None) -> Any:
    """A :class:`siflow.forecast.RecorderForecast` on ``rec`` without an optimizer hook
    (the callback forecasts at the rows it logs), or None when ``steps`` is None."""
    if steps is None:
        return None
    from siflow.forecast import RecorderForecast

    return RecorderForecast(rec, steps, attach=False, **dict(options or {}))


def forecast_metrics(forecaster: Any, row: Mapping[str, float], shift: int) -> dict[str, float]:
    """The forecast made at ``row`` when its step is a forecast step (a multiple of the
    forecaster's ``every``): ``siflow/next_event_step``, ``siflow/next_event_lo`` and
    ``siflow/next_event_hi`` in the trainer's step numbering (the recorder's steps plus
    ``shift``, as the row itself is logged). An unbounded latest step (an overdue
    cycle) and a forecast that is not possible (noted once in the log) are left out."""
    if forecaster is None or int(row["step"]) % forecaster.every:
        return {}
    est = forecaster.forecast_now(upto=int(row["step"]))
    if est is None:
        return {}
    return {
        f"{PREFIX}/{name}": value + shift
        for name, value in zip(FORECAST_COLUMNS, est, strict=True)
        if math.isfinite(value)
    }


def make_recorder(
    model: Any,
    optimizer: Any,
    every: int,
    sharp_every: int | None,
    sharpness_loss: Callable[[], Any] | None,
    path: str | os.PathLike[str] | None,
    options: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Any:
    """An :class:`~siflow.torch_probe.SIRecorder` on ``optimizer``, group names checked."""
    from siflow.torch_probe import SIRecorder

    rec = SIRecorder(
        model,
        optimizer,
        every=every,
        sharpness_every=sharp_every,
        sharpness_loss=sharpness_loss,
        path=path,
        meta=meta,
        **options,
    )
    for g in rec.groups:
        if g == TOTAL or "/" in g:
            rec.close()
            raise BadGroupName(
                f"group name {g!r} cannot be logged as {PREFIX}/<group>/<metric>: it is "
                f"{TOTAL!r} or contains '/'; rename it in groups="
            )
    return rec


def unwrap_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside wrappers (accelerate, Lightning) that hold one."""
    seen = 0
    while not hasattr(optimizer, "register_step_post_hook") or type(
        optimizer
    ).__module__.startswith("accelerate"):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 5:
            break
        optimizer, seen = inner, seen + 1
    return optimizer


@contextlib.contextmanager
def rng_kept(model: Any = None) -> Iterator[None]:
    """A context whose random draws leave the training loop's random state unchanged.

    The global generators of ``torch`` (CPU, and the CUDA devices holding
    ``model``'s parameters, or all visible ones without a model), ``numpy`` and
    ``random`` are restored on exit, so drawing a batch (a shuffling sampler's seed)
    or running a forward pass with dropout inside does not change the run.

    Parameters
    ----------
    model : torch.nn.Module, optional
        Its parameters' CUDA devices are the ones whose generators are kept.
    """
    import numpy as np
    import torch

    if model is not None:
        devices = sorted(
            {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
        )
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    else:
        devices = []
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 - the global one the user draws from
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def disabled(why: BaseException | str) -> None:
    """Warn, in one line, that the callback records nothing in this run (training goes on)."""
    msg = why if isinstance(why, str) else (str(why).splitlines() or [type(why).__name__])[0]
    if isinstance(why, BaseException) and not isinstance(why, ValueError):
        msg = f"{type(why).__name__}: {msg}"
    warnings.warn(
        f"siflow: SIRecorderCallback records nothing in this run ({msg})",
        RuntimeWarning,
        stacklevel=3,
    )


def unusable_lr(optimizer: Any) -> str | None:
    """Why ``optimizer``'s param groups give no numeric lr (Adafactor's default), or None."""
    for i, group in enumerate(getattr(optimizer, "param_groups", ())):
        lr = group.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float):
            try:
                float(lr)
            except (TypeError, ValueError):
                return (
                    f"{type(optimizer).__name__} param group {i} has lr={lr!r}, not a number "
                    f"(Adafactor with relative_step? pass an explicit lr)"
                )
    return None


def optimizer_hparams(optimizer: Any) -> dict[str, Any]:
    """The optimizer as logger hyperparameters: its name, momentum/betas, each group's lr/wd.

    ``siflow/optimizer`` (lower-case class name), ``siflow/momentum`` or
    ``siflow/betas``, ``siflow/param_group<i>/lr`` and ``/wd``; and, when every param
    group has the same value, the top-level ``lr``, ``weight_decay`` (and for
    SGD-type optimizers ``momentum``) that :func:`siflow.io.read` takes into
    ``meta`` from a Lightning ``hparams.yaml``. The values are the configured ones, as
    in the recorder's ``meta``: a scheduler's peak (``max_lr``, ``initial_lr``,
    ``max_momentum``) where it stored one, else the current value; the per-step values
    are the logged metrics ``siflow/lr``, ``siflow/momentum``, ``siflow/beta1``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The optimizer the recorder is attached to.
    """
    groups = list(getattr(optimizer, "param_groups", ()))
    out: dict[str, Any] = {f"{PREFIX}/optimizer": type(optimizer).__name__.lower()}
    if not groups:
        return out
    from siflow.torch_probe import _configured_lr_wd, _configured_momentum, _momentum_column

    first = groups[0]
    column = _momentum_column(first)
    momentum = _configured_momentum(first, column)
    if column == "beta1":
        try:
            betas = [momentum, *(float(b) for b in first["betas"][1:])]
        except (TypeError, ValueError, RuntimeError):
            betas = []
        if all(math.isfinite(b) for b in betas) and betas:
            out[f"{PREFIX}/betas"] = ",".join(str(b) for b in betas)
    elif column == "momentum" and math.isfinite(momentum):
        out[f"{PREFIX}/momentum"] = momentum
    lrs, wds = [], []
    for i, g in enumerate(groups):
        try:
            lr, wd = _configured_lr_wd(g)
        except (TypeError, ValueError, KeyError):
            return out
        out[f"{PREFIX}/param_group{i}/lr"], out[f"{PREFIX}/param_group{i}/wd"] = lr, wd
        lrs.append(lr)
        wds.append(wd)
    if len(set(lrs)) == 1:
        out["lr"] = lrs[0]
    if len(set(wds)) == 1:
        out["weight_decay"] = wds[0]
    if column == "momentum" and math.isfinite(momentum):
        out["momentum"] = momentum
    return out


def size_hparams(meta: Mapping[str, Any]) -> dict[str, int]:
    """The SI groups' sizes of a recorder's ``meta`` as logger hyperparameters.

    ``siflow/group_sizes/<group>`` (elements of each SI group) and ``siflow/n_params``
    (all SI elements), which :func:`siflow.io.read` takes from a Lightning
    ``hparams.yaml`` into ``meta["group_sizes"]`` and ``meta["n_params"]``: the AdamW
    and Lion equilibrium norms need them. Empty when ``meta`` has no sizes.

    Parameters
    ----------
    meta : mapping
        :attr:`siflow.torch_probe.SIRecorder.meta`.
    """
    sizes = meta.get("group_sizes")
    if not isinstance(sizes, Mapping):
        return {}
    out = {f"{PREFIX}/group_sizes/{name}": int(n) for name, n in sizes.items()}
    if meta.get("n_params") is not None:
        out[f"{PREFIX}/n_params"] = int(meta["n_params"])
    return out


def cast_floats(value: Any, dtype: Any) -> Any:
    """``value`` (a tensor, or a tuple/list/mapping of them) with floating tensors cast to
    ``dtype`` (an example input in float32 for a bf16 model)."""
    if hasattr(value, "is_floating_point") and hasattr(value, "to"):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, Mapping):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


def param_dtype(model: Any) -> Any:
    """The dtype of ``model``'s first floating parameter, or None."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def save_fit_log(rec: Any, offset: int, forecaster: Any = None) -> None:
    """Write the recorder's ``path=`` log of a fit that started at trainer step ``offset``.

    The rows' steps are the trainer's (``offset`` plus the optimizer steps of this fit),
    so a fit resumed from a checkpoint numbers its rows as an uninterrupted fit would.
    When such a fit finds the log of the earlier fit at ``path`` (written by the same
    callback), it keeps that log's rows before ``offset`` and appends its own: one log
    of the whole training, the steps redone after the checkpoint taken from the resumed
    fit. A file it cannot read as such a log is not replaced: the resumed fit's rows go
    to ``<name>-from<offset><suffix>`` beside it, with a warning. Only rank 0 writes.
    With a ``forecaster`` (:func:`make_forecaster`) the log has its forecast columns,
    in the same step numbering as the rows.
    """
    from pathlib import Path

    from siflow.torch_probe import is_rank_zero
    from siflow.trajectory import Trajectory

    new = rec.trajectory() if forecaster is None else forecaster.trajectory()
    if rec.path is None or not len(new) or not is_rank_zero():
        return
    target = Path(rec.path)
    if offset:
        cols = new.to_columns()
        for name in ("step", *FORECAST_COLUMNS):
            if name in cols:
                cols[name] = cols[name] + offset
        new = Trajectory.from_columns(cols, new.meta)
    if offset and target.exists():
        try:
            old = Trajectory.load(target)
        except (ValueError, OSError):
            old = None
        if old is None or old.meta.get("source") != new.meta.get("source"):
            target = target.with_name(f"{target.stem}-from{offset}{target.suffix}")
            warnings.warn(
                f"siflow: {str(rec.path)!r} is not a log of the earlier fit; the resumed "
                f"fit's log goes to {str(target)!r}",
                stacklevel=2,
            )
        else:
            new = _joined(old[old.step < offset], new)
    new.save(target)


def _joined(head: Any, tail: Any) -> Any:
    """``head``'s rows, then ``tail``'s: the columns of both (NaN where one lacks a
    column), the metadata of ``tail``."""
    import numpy as np

    from siflow.trajectory import Trajectory

    a, b = head.to_columns(), tail.to_columns()
    names = list(a) + [k for k in b if k not in a]
    cols = {
        k: np.concatenate(
            [
                a[k] if k in a else np.full(len(head), np.nan),
                b[k] if k in b else np.full(len(tail), np.nan),
            ]
        )
        for k in names
    }
    cols["step"] = cols["step"].astype(np.int64)
    return Trajectory.from_columns(cols, tail.meta)
