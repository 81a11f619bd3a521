"""siflow's column convention ``siflow/<group>/<metric>`` read back from the loggers that
training-loop callbacks write through: a Lightning CSVLogger version directory and a
TensorBoard log directory."""

from __future__ import annotations

import numpy as np
import pytest

import siflow.io as sio

N = 40
EVERY = 10


def _metrics(i: int) -> dict[str, float]:
    """What a callback logs at step ``i`` (SI metrics every EVERY steps, the loss always)."""
    out = {"train_loss": 1.0 / (i + 1)}
    if i % EVERY == 0:
        out.update(
            {
                "siflow/total/norm": 2.0 - 0.01 * i,
                "siflow/total/grad_norm_sphere": 0.3 + 0.001 * i,
                "siflow/total/angular_update": 0.05,
                "siflow/total/angular_update_rms": 0.04,
                "siflow/total/radial": -0.001,
                "siflow/total/relative_update": 0.02,
                "siflow/conv1/norm": 1.5 - 0.005 * i,
                "siflow/conv1/grad_norm_sphere": 0.2,
                "siflow/conv2/norm": 1.2,
                "siflow/conv2/grad_norm_sphere": 0.1,
                "siflow/lr": 0.1,
                "siflow/wd": 1e-3,
            }
        )
    return out


def _check(t) -> None:
    logged = np.arange(0, N, EVERY)
    np.testing.assert_array_equal(t.step, np.arange(N))
    np.testing.assert_allclose(t.loss, 1.0 / (np.arange(N) + 1), rtol=1e-6)
    np.testing.assert_allclose(t.rho[logged], 2.0 - 0.01 * logged, rtol=1e-6)
    np.testing.assert_allclose(t.grad_norm_sphere[logged], 0.3 + 0.001 * logged, rtol=1e-6)
    np.testing.assert_allclose(t.angular_update[logged], 0.05, rtol=1e-6)
    assert np.all(np.isnan(np.delete(t.rho, logged)))
    assert t.meta["lr"] == pytest.approx(0.1) and t.meta["wd"] == pytest.approx(1e-3)
    assert t.meta["columns"]["rho"] == "siflow/total/norm"
    assert set(t.meta["groups"]) == {"conv1", "conv2"}
    for metric in ("angular_update_rms", "radial", "relative_update"):
        assert f"siflow/total/{metric}" in t.extra
    np.testing.assert_allclose(t.elr[logged], 0.1 / (2.0 - 0.01 * logged) ** 2, rtol=1e-6)


def _check_group(t) -> None:
    logged = np.arange(0, N, EVERY)
    np.testing.assert_allclose(t.rho[logged], 1.5 - 0.005 * logged, rtol=1e-6)
    np.testing.assert_allclose(t.grad_norm_sphere[logged], 0.2, rtol=1e-6)
    assert t.angular_update is None  # the total's angle does not describe conv1


def _write_csvlogger_layout(version_dir) -> None:
    """metrics.csv exactly as Lightning's CSVLogger writes it: sorted keys, sparse rows."""
    version_dir.mkdir(parents=True)
    rows = [{**_metrics(i), "step": i} for i in range(N)]
    keys = sorted({k for r in rows for k in r})
    lines = [",".join(keys)]
    for r in rows:
        lines.append(",".join(repr(r[k]) if k in r else "" for k in keys))
    (version_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (version_dir / "hparams.yaml").write_text("lr: 0.1\nweight_decay: 0.001\n")


def test_csvlogger_layout_with_siflow_columns(tmp_path):
    vdir = tmp_path / "lightning_logs" / "version_0"
    _write_csvlogger_layout(vdir)
    assert sio.detect_format(vdir) == "lightning"
    _check(sio.read(vdir))
    _check_group(sio.read(vdir, group="conv1"))
    s = sio.read(vdir, group="sum")
    logged = np.arange(0, N, EVERY)
    np.testing.assert_allclose(s.rho[logged], np.hypot(1.5 - 0.005 * logged, 1.2), rtol=1e-12)


@pytest.mark.slow
def test_genuine_lightning_csvlogger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger  # the test extra installs lightning

    logger = CSVLogger(str(tmp_path), name="run")
    logger.log_hyperparams({"lr": 0.1, "weight_decay": 1e-3})
    for i in range(N):
        logger.log_metrics(_metrics(i), step=i)
    logger.save()
    logger.finalize("success")
    t = sio.read(logger.log_dir)
    assert t.meta["format"] == "lightning"
    _check(t)
    _check_group(sio.read(logger.log_dir, group="conv1"))


def test_tensorboard_summarywriter_with_siflow_tags(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for i in range(N):
        for tag, value in _metrics(i).items():
            writer.add_scalar(tag, value, i)
    writer.close()
    assert sio.detect_format(tmp_path / "tb") == "tensorboard"
    _check(sio.read(tmp_path / "tb"))
    _check_group(sio.read(tmp_path / "tb", group="conv1"))
