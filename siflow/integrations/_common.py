"""The naming scheme of the trainer callbacks and the recorder set-up they share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PREFIX", "TOTAL", "METRIC_NAMES", "logger_metrics", "check_options", "make_recorder"]

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
    angle over the steps since the previous row, up to this one); ``siflow/lr`` and
    ``siflow/wd``. NaN values (a metric not measured at this row) are left out.

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
            raise ValueError(
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
