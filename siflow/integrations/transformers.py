"""Hugging Face ``Trainer`` callback: SI metrics logged through the trainer's reporters.

::

    from siflow.integrations.transformers import SIRecorderCallback

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[SIRecorderCallback(every=10)])
    trainer.train()   # TensorBoard / W&B / ... get train/siflow/total/norm, ...

The callback attaches a :class:`siflow.torch_probe.SIRecorder` to the optimizer
when training begins (the torch optimizer inside accelerate's wrapper). At the
end of each optimizer step that recorded a row it hands the row's metrics
(:func:`siflow.integrations.logger_metrics`) to the trainer's reporting
callbacks (``report_to``: TensorBoard, W&B, MLflow, ...) as a log event of their
own, and appends them to ``trainer.state.log_history`` (saved in
``trainer_state.json``). The step is the trainer's ``global_step``, which counts
steps from 1: the row of the recorder's step ``t`` (weights before the
``t+1``-th update) is logged at step ``t + 1``, the step at which the trainer
logs that update's loss (a step the AMP grad scaler skipped is counted). The
reporters add their own prefix (TensorBoard: ``train/siflow/total/norm``).
The trainer averages its own ``loss`` over ``logging_steps`` (500 by default), too
coarse to show a destabilization's spike; the callback takes the loss of each
recorded step from the model's output (a forward hook reading ``loss``) and logs it
as ``siflow/loss`` (under gradient accumulation the last micro-batch's; a model that
takes ``num_items_in_batch`` scales it by its share of the accumulated batch).
Reporters write on the main process only, and so does ``path=``.

The callback never stops training: when it cannot record (no SI weights found, an
optimizer without a numeric lr) it says so in one warning and records nothing. The
batch it draws to find the groups of an untraceable model leaves the run's random
state unchanged; from a one-pass stream (an ``IterableDataset``) it draws none and
uses the first batch the trainer feeds the model instead. The trainer tells its
callbacks nothing when training raises: pass ``flush_every=`` to keep the rows of an
interrupted run in ``path=``.

Needs ``pip install "siflow[transformers]"``.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from siflow._fileio import require
from siflow.integrations._common import (
    BadGroupName,
    cast_floats,
    check_forecast,
    check_options,
    disabled,
    forecast_metrics,
    logger_metrics,
    make_forecaster,
    make_recorder,
    param_dtype,
    rng_kept,
    save_fit_log,
    unusable_lr,
    unwrap_optimizer,
)

require("torch", "torch", '"torch==2.13.0"')
_tc = require("transformers.trainer_callback", "transformers", "transformers")

__all__ = ["SIRecorderCallback"]

#: Callbacks of the trainer that are not reporters (progress bars, flow control).
_NOT_REPORTERS = (
    "DefaultFlowCallback",
    "ProgressCallback",
    "PrinterCallback",
    "NotebookProgressCallback",
)


def _find_handler(callback: Any) -> Any:
    """The trainer's ``CallbackHandler`` that is calling ``callback`` (a few frames up)."""
    frame = inspect.currentframe()
    try:
        for _ in range(8):
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if any(cb is callback for cb in getattr(owner, "callbacks", None) or ()):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


#: Largest relative loss change under rescaling for a hook-found group to be kept
#: (BatchNorm's eps adds about eps / variance; float32 rounding about 1e-7).
_SI_CHECK_TOL = 1e-4


def _groups_from_first_batch(model: Any, loader: Any) -> tuple[Any, dict[str, Any]]:
    """SI groups of a model ``torch.fx`` cannot trace (most Hugging Face models), from the
    trainer's first training batch: the graph of one forward pass on it
    (``find_si_groups(method="run")``), or the forward-hook heuristic where that pass
    cannot be recorded or proves nothing; each group is kept only if rescaling it leaves
    that batch's loss unchanged (:func:`check_scale_invariance`).

    The traced groups when the model traces (``None`` if it has none: the recorder's
    default detection then says so); ``(None, {})`` when no batch is at hand;
    ``ValueError`` when no group passes.
    """
    from siflow.torch_probe import find_si_groups

    try:
        return find_si_groups(model, method="fx") or None, {}  # traced once, groups kept
    except ValueError:
        pass
    if loader is None or _one_pass(loader):
        return None, {}
    try:
        with rng_kept(model):  # a shuffling sampler draws its seed from torch's generator
            batch = next(iter(loader))
    except (StopIteration, TypeError):
        return None, {}
    if not isinstance(batch, Mapping):
        return None, {}
    device = next(model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    return _groups_from_batch(model, batch)


def _one_pass(loader: Any) -> bool:
    """Whether iterating ``loader`` would take batches out of a stream the trainer reads
    (an ``IterableDataset``, a generator): such batches would be lost to training."""
    import torch

    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    return iter(loader) is loader if not hasattr(loader, "__len__") else False


def _groups_from_batch(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """SI groups of an untraceable model from one batch of model inputs (see
    :func:`_groups_from_first_batch`)."""
    from siflow.torch_probe import check_scale_invariance, find_si_groups

    how = "the graph of a forward pass on the first training batch"
    try:
        found = find_si_groups(model, example_input=batch, method="run")
    except ValueError:
        found = {}
    if not found:
        how = "forward hooks on the first training batch"
        found = find_si_groups(model, example_input=batch, method="hooks")

    def loss_fn() -> Any:
        with rng_kept(model):
            out = model(**batch)
        return out["loss"] if isinstance(out, Mapping) else out[0]

    kept, dropped = {}, []
    for name, params in found.items():
        if check_scale_invariance(loss_fn, params, model=model) < _SI_CHECK_TOL:
            kept[name] = params
        else:
            dropped.append(name)
    if not kept:
        raise ValueError(
            f"no scale-invariant weights found in {type(model).__name__} ({how}, as "
            f"torch.fx cannot trace it"
            + (f"; {', '.join(dropped)} failed the rescaling check" if dropped else "")
            + "); pass groups= (each weight matrix as its own group is the rotational monitor)"
        )
    note = (
        f"SI groups found by {how} (torch.fx cannot trace the model), each confirmed by "
        f"rescaling it on that batch"
    )
    if dropped:
        note += f"; not scale-invariant there, left out: {', '.join(dropped)}"
    return kept, {"notes": [note]}


def _no_loss_in_output(rec: Any) -> None:
    """Say once, in a warning and in the log's notes, that the model's output holds no
    loss, so that no ``siflow/loss`` is logged."""
    note = (
        "the model's output holds no 'loss' (the trainer computes it: label smoothing, a "
        "compute_loss_func, or a tuple output), so siflow/loss is not logged; the "
        "trainer's own loss is a mean over logging_steps: set logging_steps to the "
        "callback's every to have a loss at each row"
    )
    rec.meta["notes"] = [*rec.meta.get("notes", []), note]
    warnings.warn(f"siflow: {note}", RuntimeWarning, stacklevel=3)


class SIRecorderCallback(_tc.TrainerCallback):
    """Record SI metrics every ``every`` optimizer steps and report them.

    Parameters
    ----------
    every : int
        Record optimizer steps ``0, every, 2 every, ...`` of this ``train`` call.
    sharpness : bool or int
        Also measure the unit-sphere sharpness (``True``: every row; an int ``k``:
        every ``k``-th row) on ``sharpness_batch``. Costly.
    path : str or PathLike, optional
        Also write a siflow log (``.csv`` or ``.npz``) there at the end of training.
    groups : mapping or sequence of parameter names, optional
        SI groups (default: :func:`siflow.torch_probe.find_si_groups` on the model;
        when ``torch.fx`` cannot trace it, as with most Hugging Face models, the
        forward-hook detection on the first training batch, keeping the groups whose
        rescaling leaves that batch's loss unchanged, with a note in the log; with a
        one-pass ``IterableDataset`` the batch of the trainer's first forward pass).
    example_input : Tensor or mapping, optional
        For the forward-hook detection when ``torch.fx`` cannot trace the model.
    sharpness_batch : dict, optional
        Model inputs (with labels) of the fixed batch for the sharpness: the loss
        is ``model(**sharpness_batch)["loss"]``. Required with ``sharpness``.
    forecast : bool or int
        Also forecast the next destabilization (:func:`siflow.forecast.forecast_next_event`
        on the log so far) and report it as ``siflow/next_event_step``,
        ``siflow/next_event_lo`` and ``siflow/next_event_hi``, in trainer steps:
        ``True`` at every recorded row, an int ``k`` at every ``k``-th row (each costs one
        pass over the log so far). ``path=`` gets the same columns. The trainer's
        default optimizer, AdamW, is not forecast (a note in the log says so).
    forecast_options : mapping, optional
        Keyword arguments of :func:`~siflow.forecast.forecast_next_event` (``lr``,
        ``wd``, ``optimizer``, detector parameters...).
    **options
        Passed to :class:`~siflow.torch_probe.SIRecorder` (``window``,
        ``sharpness_iters``, ``sharpness_tol``, ``process_group``).

    Attributes
    ----------
    recorder : SIRecorder or None
        The recorder of the current ``train`` call.
    """

    def __init__(
        self,
        every: int = 10,
        sharpness: bool | int = False,
        path: str | os.PathLike[str] | None = None,
        groups: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
        example_input: Any = None,
        sharpness_batch: Mapping[str, Any] | None = None,
        forecast: bool | int = False,
        forecast_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.every, self._sharp_every = check_options(every, sharpness, path, options)
        self._forecast_every = check_forecast(forecast, self.every, forecast_options)
        self.forecast_options = dict(forecast_options or {})
        self.forecaster: Any = None
        if self._sharp_every and sharpness_batch is None:
            raise ValueError(
                "sharpness needs sharpness_batch=<dict of model inputs with labels> (a fixed "
                "batch for the power iteration)"
            )
        self.path = path
        self.groups = groups
        self.example_input = example_input
        self.sharpness_batch = sharpness_batch
        self.options = dict(options)
        self.recorder: Any = None
        self._handler: Any = None
        self._offset = 0
        self._pending: Any = None
        self._loss_hook: Any = None
        self._step_loss: Any = None  # the loss of the latest training forward pass
        self._steps_without_loss = 0  # optimizer steps whose forward passes gave no loss
        self._probing = False  # the callback's own forward passes (sharpness) run
        self._shift = 0  # trainer step - recorder step count at the latest optimizer step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder = self.forecaster = None
        self._detach_pending()
        self._detach_loss_hook()
        self._step_loss, self._steps_without_loss = None, 0
        try:
            self._begin(state, kwargs)
        except BadGroupName:
            raise  # a wrong groups= argument of the callback itself
        except Exception as exc:  # noqa: BLE001 - the user's training goes on without siflow
            disabled(exc)

    def _begin(self, state: Any, kwargs: Mapping[str, Any]) -> None:
        """Attach the recorder now, or on the first training forward pass (a one-pass
        stream of batches, which the callback must not read itself)."""
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            disabled("the trainer passed no model or optimizer to the callback")
            return
        optimizer = unwrap_optimizer(optimizer)
        why = unusable_lr(optimizer)
        if why is not None:
            disabled(why)
            return
        self._handler = _find_handler(self)
        self._offset = int(state.global_step)
        self._shift = self._offset
        groups, meta = self.groups, {}
        if groups is None and self.example_input is None:
            loader = kwargs.get("train_dataloader")
            groups, meta = _groups_from_first_batch(model, loader)
            if groups is None and loader is not None and _one_pass(loader):
                from siflow.torch_probe import find_si_groups

                try:
                    find_si_groups(model, method="fx")
                except ValueError:
                    # untraceable, and the batches are a stream: detect on the first
                    # batch the trainer itself feeds the model
                    self._pending = model.register_forward_pre_hook(
                        self._on_first_forward(model, optimizer), with_kwargs=True
                    )
                    return
        self._attach(model, optimizer, groups, meta)

    def _on_first_forward(self, model: Any, optimizer: Any) -> Any:
        def hook(module: Any, args: Any, kwargs: Any) -> None:
            if not module.training:
                return
            self._detach_pending()
            try:
                groups, meta = _groups_from_batch(model, dict(kwargs))
                self._attach(model, optimizer, groups, meta)
            except BadGroupName:
                raise
            except Exception as exc:  # noqa: BLE001 - training goes on without siflow
                disabled(exc)

        return hook

    def _detach_pending(self) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            pending.remove()

    def _detach_loss_hook(self) -> None:
        hook, self._loss_hook = getattr(self, "_loss_hook", None), None
        if hook is not None:
            hook.remove()

    def _take_loss(self, module: Any, args: Any, output: Any) -> None:
        """Forward hook: keep the loss of a training forward pass (the trainer shows its
        callbacks no per-step loss) for :meth:`on_step_end`, which hands the last one
        before the optimizer step to the recorder. Evaluation passes and the callback's
        own (sharpness) are left out; so is an output without a scalar ``loss``."""
        if self._probing or not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if loss is not None and hasattr(loss, "detach") and loss.numel() == 1:
            self._step_loss = loss.detach()  # read (a device sync) on recorded steps only

    def _attach(self, model: Any, optimizer: Any, groups: Any, meta: dict[str, Any]) -> None:
        """Make the recorder on ``optimizer`` with ``groups``."""
        loss_fn = None
        if self._sharp_every:
            batch = dict(self.sharpness_batch or {})

            def loss_fn() -> Any:
                self._probing = True  # not the training loss of the step
                try:
                    with rng_kept(model):  # dropout masks of the run left unchanged
                        out = model(**batch)
                finally:
                    self._probing = False
                return out["loss"] if isinstance(out, Mapping) else out[0]

        example, dtype = self.example_input, param_dtype(model)
        if example is not None and dtype is not None:
            example = cast_floats(example, dtype)  # a float32 example for a bf16 model
        self.recorder = make_recorder(
            model,
            optimizer,
            self.every,
            self._sharp_every,
            loss_fn,
            self.path,
            {"groups": groups, "example_input": example, **self.options},
            {
                "source": "siflow.integrations.transformers",
                "step_offset": self._offset,
                **meta,
            },
        )
        self._loss_hook = model.register_forward_hook(self._take_loss)
        self.forecaster = make_forecaster(
            self.recorder, self._forecast_every, self.forecast_options
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None:
            return
        loss, self._step_loss = self._step_loss, None
        if loss is not None:
            rec.log_loss(loss)  # the step has run: fills its row if it recorded one
            self._steps_without_loss = -1  # a loss was seen: never note its absence
        elif self._steps_without_loss >= 0:
            self._steps_without_loss += 1
            if self._steps_without_loss == 2:
                _no_loss_in_output(rec)
        groups = list(rec.groups)
        if rec.step_count:
            # a step the AMP grad scaler skipped advances global_step, not the recorder
            self._shift = int(state.global_step) - rec.step_count
        reporters = [
            cb
            for cb in (self._handler.callbacks if self._handler is not None else ())
            if cb is not self and type(cb).__name__ not in _NOT_REPORTERS
        ]
        for row in rec.take_rows():
            metrics = logger_metrics(row, groups)
            metrics.update(forecast_metrics(self.forecaster, row, self._shift + 1))
            step = self._shift + int(row["step"]) + 1
            state.log_history.append({**metrics, "step": step})
            if step != state.global_step:
                continue  # reporters log at the current step only
            for cb in reporters:
                cb.on_log(args, state, control, logs=dict(metrics), **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._detach_pending()
        self._detach_loss_hook()
        rec = self.recorder
        if rec is None:
            return
        rec.close()
        save_fit_log(rec, self._offset, self.forecaster)
