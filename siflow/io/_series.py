"""Logs kept as one ``(step, value)`` series per metric (TensorBoard tags, MLflow metrics).

:func:`series_table` merges the series on the union of their steps into the table
that :func:`siflow.io._build.build_trajectory` reads. Before it does, the checks
that a table of rows makes by construction are made here: a series whose points
all share one step (logged without a step: PyTorch's ``add_scalar`` writes step 0,
MLflow's ``log_metric`` step 0) and a step holding several different values of one
series (per-batch values logged at the epoch's step) are refused, each in one line
naming the series, the step and the fix, as the CSV reader refuses a step that
repeats with different values. Values repeated unchanged at one step are kept once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from siflow.io._columns import Table

__all__ = ["Series", "check_one_value_per_step", "series_table"]

#: ``{name: [(step, value), ...]}`` in the order the points were written.
Series = dict[str, list[tuple[int, float]]]


def _repeats(points: list[tuple[int, float]]) -> tuple[int, int, int] | None:
    """``(step, values at that step, steps holding different values)`` of the first step
    that holds different values, or None when every step holds one value."""
    by_step: dict[int, set[float | str]] = {}
    for s, v in points:
        by_step.setdefault(s, set()).add(v if v == v else "nan")
    bad = [s for s, vals in by_step.items() if len(vals) > 1]
    if not bad:
        return None
    first = min(bad)
    count = sum(1 for s, _ in points if s == first)
    return first, count, len(bad)


def check_one_value_per_step(
    series: Mapping[str, list[tuple[int, float]]], label: str, how: str
) -> None:
    """Refuse a series that holds several different values at one step.

    A trajectory holds one value per step; keeping the last would drop the others
    without a word. All points at one step: the metric was logged without a step.
    ``how`` is the logging call that takes the step, for the messages
    (``"add_scalar(tag, value, global_step=step)"``).
    """
    for name, points in series.items():
        found = _repeats(points)
        if found is None:
            continue
        step, count, n_bad = found
        if n_bad == 1 and len({s for s, _ in points}) == 1:
            raise ValueError(
                f"{label}: all {len(points)} values of {name!r} are at step {step}: logged "
                f"without a step; log each with the optimizer step: {how}"
            )
        raise ValueError(
            f"{label}: {name!r} has {count} different values at step {step} ({n_bad} step(s) "
            f"hold several): values logged per batch at their epoch's step? log each with its "
            f"own optimizer step: {how}"
        )


def series_table(series: Mapping[str, list[tuple[int, float]]], label: str, how: str) -> Table:
    """Columns ``step`` (the union of the series' steps) and one per series (NaN where a
    series has no point), after :func:`check_one_value_per_step`."""
    check_one_value_per_step(series, label, how)
    steps = np.unique(
        np.concatenate([np.array([s for s, _ in pts], dtype=np.int64) for pts in series.values()])
    )
    repeated = next((n for n, pts in series.items() if len(pts) > 1), None)
    if steps.size == 1 and repeated is not None:  # every value of the log at one step
        raise ValueError(
            f"{label}: all {len(series[repeated])} values of {repeated!r} (and of every other "
            f"series) are at step {int(steps[0])}: logged without a step; log each with the "
            f"optimizer step: {how}"
        )
    table: Table = {"step": steps.astype(np.float64)}
    for name, points in series.items():
        values = np.full(steps.size, np.nan)
        at = np.searchsorted(steps, np.array([s for s, _ in points], dtype=np.int64))
        values[at] = np.array([v for _, v in points], dtype=np.float64)
        table[name if name != "step" else "tag:step"] = values
    return table
