"""Callbacks that record SI metrics inside a trainer and log them through its logger.

One module per trainer, each an optional extra:

- :mod:`siflow.integrations.lightning`: ``SIRecorderCallback`` for PyTorch
  Lightning (``pip install "siflow[lightning]"``);
- :mod:`siflow.integrations.transformers`: ``SIRecorderCallback`` for the
  Hugging Face ``Trainer`` (``pip install "siflow[transformers]"``).

Both sit on :class:`siflow.torch_probe.SIRecorder` and log every recorded row
under one naming scheme (:data:`METRIC_NAMES`, :func:`logger_metrics`)::

    siflow/<group>/<metric>      <group> = "total" (all SI weights) or a group name
    siflow/lr, siflow/wd         the hyperparameters the step used

with the logger's own step equal to the optimizer step the row describes.
``siflow.io.read`` reads such logs back (``siflow/total/norm`` is ``rho``,
``siflow/total/grad_norm_sphere`` the sphere gradient norm).
"""

from __future__ import annotations

from siflow.integrations._common import METRIC_NAMES, PREFIX, logger_metrics

__all__ = ["METRIC_NAMES", "PREFIX", "logger_metrics"]
