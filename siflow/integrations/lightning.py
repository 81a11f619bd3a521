"""PyTorch Lightning callback: SI metrics logged through the trainer's own loggers.

::

    from siflow.integrations.lightning import SIRecorderCallback

    trainer = lightning.Trainer(callbacks=[SIRecorderCallback(every=10)], logger=CSVLogger("runs"))
    trainer.fit(model, data)
    # metrics.csv / TensorBoard / W&B get siflow/total/norm, siflow/<group>/elr, ...

The callback attaches a :class:`siflow.torch_probe.SIRecorder` to the optimizer
when training starts and, after every batch, passes the rows recorded during it
to every logger of the trainer (``trainer.loggers``) under the scheme of
:mod:`siflow.integrations` at the trainer step the row describes (steps the AMP
grad scaler skipped, which the optimizer never took, are counted). Lightning's loggers
write on rank 0 only, and so does ``path=``; under DDP every rank records the
same values (replicated weights, all-reduced gradients). The optimizer (name,
momentum or betas, each param group's lr and weight decay, as configured: a
scheduler's peak) goes to the loggers as hyperparameters
(:func:`siflow.integrations._common.optimizer_hparams`), and so do the SI groups'
sizes, ``siflow/group_sizes/<group>`` and ``siflow/n_params``
(:func:`~siflow.integrations._common.size_hparams`), which the AdamW and Lion
equilibrium norms of :mod:`siflow.overlay` need. The per-step lr, wd and momentum
term (``siflow/momentum`` for SGD-type optimizers, ``siflow/beta1`` for Adam-type and
Lion, which OneCycleLR cycles by default) are logged with the metrics.

The callback never stops a ``fit``: when it cannot record (no SI weights found, two
optimizers, an optimizer without a numeric lr) it says so in one warning and
records nothing. Its own forward passes (the sharpness) leave the random state of
the run unchanged.

Needs ``pip install "siflow[lightning]"``.
"""

from __future__ import annotations

import os
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
    optimizer_hparams,
    param_dtype,
    rng_kept,
    save_fit_log,
    size_hparams,
    unusable_lr,
    unwrap_optimizer,
)

require("torch", "torch", '"torch==2.13.0"')
_pl = require("lightning.pytorch", "lightning", "lightning")

__all__ = ["SIRecorderCallback"]


class SIRecorderCallback(_pl.Callback):
    """Record SI metrics every ``every`` optimizer steps and log them.

    Parameters
    ----------
    every : int
        Record steps ``0, every, 2 every, ...`` (counted from the start of ``fit``).
    sharpness : bool or int
        Also measure the unit-sphere sharpness (power iteration on the first
        training batch, :func:`siflow.torch_probe.sphere_sharpness`): ``True`` at
        every recorded row, an int ``k`` at every ``k``-th row. Costly.
    path : str or PathLike, optional
        Also write a siflow log (``.csv`` or ``.npz``) there at the end of
        training, or when ``fit`` is interrupted or raises (rank 0).
    groups : mapping or sequence of parameter names, optional
        SI groups of the LightningModule (default: found by
        :func:`siflow.torch_probe.find_si_groups`).
    example_input : Tensor, tuple or mapping, optional
        A batch for the detection when ``torch.fx`` cannot trace the module (the graph of
        one forward pass on it, or forward hooks where that pass cannot be recorded); a
        tuple holds positional inputs. Default: the module's ``example_input_array``, if
        it sets one.
    forecast : bool or int
        Also forecast the next destabilization (:func:`siflow.forecast.forecast_next_event`
        on the log so far) and log it as ``siflow/next_event_step``,
        ``siflow/next_event_lo`` and ``siflow/next_event_hi``, in trainer steps:
        ``True`` at every recorded row, an int ``k`` at every ``k``-th row (each costs one
        pass over the log so far). ``path=`` gets the same columns.
    forecast_options : mapping, optional
        Keyword arguments of :func:`~siflow.forecast.forecast_next_event` (``lr``,
        ``wd``, ``optimizer``, detector parameters...).
    **options
        Passed to :class:`~siflow.torch_probe.SIRecorder` (``window``,
        ``sharpness_iters``, ``sharpness_tol``, ``process_group``, ``flush_every``).

    Attributes
    ----------
    recorder : SIRecorder or None
        The recorder of the current ``fit`` (its :meth:`trajectory` has every row).
    """

    def __init__(
        self,
        every: int = 10,
        sharpness: bool | int = False,
        path: str | os.PathLike[str] | None = None,
        groups: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
        example_input: Any = None,
        forecast: bool | int = False,
        forecast_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.every, self._sharp_every = check_options(every, sharpness, path, options)
        self._forecast_every = check_forecast(forecast, self.every, forecast_options)
        self.forecast_options = dict(forecast_options or {})
        self.forecaster: Any = None
        self.path = path
        self.groups = groups
        self.example_input = example_input
        self.options = dict(options)
        self.recorder: Any = None
        self._offset = 0
        self._sharp_batch: Any = None
        self._closed: Any = None
        self._seen = 0  # recorder steps already given a trainer step
        self._shift = 0  # trainer step - recorder step of the latest optimizer step

    # ------------------------------------------------------------------ set-up
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder = self.forecaster = None
        try:
            self._start(trainer, pl_module)
        except BadGroupName:
            raise  # a wrong groups= argument of the callback itself
        except Exception as exc:  # noqa: BLE001 - the user's fit goes on without siflow
            disabled(exc)

    def _start(self, trainer: Any, pl_module: Any) -> None:
        """Attach the recorder and send the optimizer to the loggers as hyperparameters."""
        if len(trainer.optimizers) != 1:
            disabled(
                f"it records one optimizer, the module has {len(trainer.optimizers)}; "
                f"return a single optimizer from configure_optimizers"
            )
            return
        optimizer = unwrap_optimizer(trainer.optimizers[0])
        why = unusable_lr(optimizer)
        if why is not None:
            disabled(why)
            return
        self._offset = int(trainer.global_step)
        self._seen, self._shift = 0, self._offset
        meta = {"source": "siflow.integrations.lightning", "step_offset": self._offset}
        example = (
            self.example_input
            if self.example_input is not None
            else getattr(pl_module, "example_input_array", None)
        )
        dtype = param_dtype(pl_module)
        if example is not None and dtype is not None:
            example = cast_floats(example, dtype)  # a float32 example for a bf16 module
        self.recorder = make_recorder(
            pl_module,
            optimizer,
            self.every,
            self._sharp_every,
            self._sharpness_loss(pl_module) if self._sharp_every else None,
            self.path,
            {"groups": self.groups, "example_input": example, **self.options},
            meta,
        )
        self.forecaster = make_forecaster(
            self.recorder, self._forecast_every, self.forecast_options
        )
        hparams = {**optimizer_hparams(optimizer), **size_hparams(self.recorder.meta)}
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    def _sharpness_loss(self, pl_module: Any) -> Any:
        """Loss of the first training batch through ``training_step``, its logging muted."""

        def loss_fn() -> Any:
            if self._sharp_batch is None:
                raise ValueError("sharpness needs a training batch; none was seen yet")
            log, log_dict = pl_module.log, pl_module.log_dict
            pl_module.log = pl_module.log_dict = lambda *a, **k: None
            try:
                with rng_kept(pl_module):  # dropout masks of the run left unchanged
                    out = pl_module.training_step(self._sharp_batch, 0)
            finally:
                pl_module.log, pl_module.log_dict = log, log_dict
            return out["loss"] if isinstance(out, Mapping) else out

        return loss_fn

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._sharp_every and self._sharp_batch is None:
            self._sharp_batch = batch

    # ----------------------------------------------------------------- logging
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None and hasattr(loss, "detach"):
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            if accumulate > 1 and getattr(pl_module, "automatic_optimization", True):
                # Lightning hands over the loss it back-propagates, divided by
                # accumulate_grad_batches: the loss of the micro-batch is that times it
                loss = loss.detach() * accumulate
            rec.log_loss(loss)
        self._count_steps(trainer)
        self._flush(trainer)

    def _count_steps(self, trainer: Any) -> None:
        """Pair the optimizer steps the recorder saw during this batch with the trainer's
        step: a step the AMP grad scaler skipped advances ``global_step`` but not the
        recorder, and the rows after it belong to the later trainer steps."""
        n = self.recorder.step_count
        if n > self._seen:
            # the last optimizer step of the batch is trainer step global_step - 1
            self._shift = int(trainer.global_step) - n
            self._seen = n

    def _flush(self, trainer: Any) -> None:
        groups = list(self.recorder.groups)
        for row in self.recorder.take_rows():
            metrics = logger_metrics(row, groups)
            metrics.update(forecast_metrics(self.forecaster, row, self._shift))
            step = self._shift + int(row["step"])
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """An interrupted or failed fit: log and write what was recorded, detach the hooks."""
        try:
            self._finish(trainer)
        except Exception as exc:  # noqa: BLE001 - never mask the fit's own exception
            disabled(exc)

    def _finish(self, trainer: Any) -> None:
        """Flush the last rows to the loggers, detach the recorder and write ``path=``."""
        rec = self.recorder
        if rec is None or self._closed is rec:
            return
        self._closed = rec
        try:
            self._flush(trainer)
        finally:
            rec.close()
            save_fit_log(rec, self._offset, self.forecaster)
