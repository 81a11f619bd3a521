"""siflow.io readers on files in the real layouts of TensorBoard, Lightning, W&B and the
seed paper's train-tm.npz."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

import siflow.io as sio


# ------------------------------------------------------------------ TensorBoard
@pytest.fixture(scope="module")
def torch_tb_dir(tmp_path_factory):
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path_factory.mktemp("tb") / "run0"
    writer = SummaryWriter(log_dir=str(logdir))
    n = 10_050  # more than EventAccumulator's default reservoir of 10,000 points
    for i in range(n):
        writer.add_scalar("loss", 1.0 / (i + 1), i)
        if i % 50 == 0:
            writer.add_scalars("norm", {"conv1": 2.0 + i * 1e-3, "conv2": 3.0}, i)
            writer.add_scalar("grad_norm/conv1", 0.5, i)
    writer.close()
    return logdir, n


def test_tensorboard_torch_summarywriter_all_points(torch_tb_dir):
    logdir, n = torch_tb_dir
    assert sio.detect_format(logdir) == "tensorboard"
    t = sio.read(logdir, group="conv1")
    assert len(t) == n
    np.testing.assert_array_equal(t.step, np.arange(n))
    # event files store float32
    expected = (1.0 / (np.arange(n) + 1)).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(t.loss, expected)
    # add_scalars subdirectories become per-group columns norm/conv1, norm/conv2
    assert set(t.meta["groups"]) == {"conv1", "conv2"}
    logged = np.arange(0, n, 50)
    rho = t.rho[logged]
    np.testing.assert_allclose(rho, 2.0 + logged * 1e-3, rtol=1e-6)
    assert np.all(np.isnan(np.delete(t.rho, logged)))
    np.testing.assert_allclose(t.grad_norm_sphere[logged], 0.5 * rho, rtol=1e-12)
    s = sio.read(logdir, group="sum")
    np.testing.assert_allclose(s.rho[logged], np.hypot(2.0 + logged * 1e-3, 3.0), rtol=1e-6)


def test_tensorboard_single_event_file(torch_tb_dir):
    logdir, n = torch_tb_dir
    (event,) = [f for f in os.listdir(logdir) if "tfevents" in f]
    t = sio.read(logdir / event)  # root file only: loss and grad_norm/conv1
    assert len(t) == n
    assert "grad_norm/conv1" in t.extra


def test_tensorboard_tensor_scalars_keras_layout(tmp_path):
    from tensorboard.summary import Writer

    # Keras' TensorBoard callback: <logdir>/train and <logdir>/validation, scalars as tensors
    for sub, scale in (("train", 1.0), ("validation", 2.0)):
        w = Writer(str(tmp_path / sub))
        for epoch in range(5):
            w.add_scalar("epoch_loss", scale / (epoch + 1), step=epoch)
            w.add_scalar("epoch_weight_norm", 10.0 - epoch, step=epoch)
        w.close()
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
    acc.Reload()
    assert acc.Tags()["scalars"] == [] and "epoch_loss" in acc.Tags()["tensors"]
    t = sio.read(tmp_path, mapping={"rho": "train/epoch_weight_norm"}, steps_per_epoch=None)
    np.testing.assert_array_equal(t.step, np.arange(5))
    np.testing.assert_allclose(t.loss, 1.0 / np.arange(1, 6), rtol=1e-7)
    np.testing.assert_allclose(t.extra["validation/epoch_loss"], 2.0 / np.arange(1, 6), rtol=1e-7)
    np.testing.assert_allclose(t.rho, 10.0 - np.arange(5))
    # the event steps count epochs here: say so and convert (epoch e ends at step (e+1)*N)
    assert t.meta["time_unit"] == "epoch"
    e = sio.read(
        tmp_path, mapping={"epoch": "step", "rho": "train/epoch_weight_norm"}, steps_per_epoch=100
    )
    np.testing.assert_array_equal(e.step, (np.arange(5) + 1) * 100)


def test_tensorboard_directory_of_several_runs_is_refused(tmp_path):
    # SummaryWriter()'s runs/<date>_<host>, Lightning's lightning_logs/version_<k>: each
    # holds its own run; their columns are not groups of one run
    from torch.utils.tensorboard import SummaryWriter

    for run in ("version_0", "version_1"):
        with SummaryWriter(log_dir=str(tmp_path / "lightning_logs" / run)) as w:
            for i in range(5):
                w.add_scalar("rho", 2.0 - 0.1 * i, i)
                w.add_scalar("loss", 1.0 / (i + 1), i)
    with pytest.raises(ValueError, match=r"2 runs .*version_0, version_1.*one run's directory"):
        sio.read(tmp_path / "lightning_logs")
    t = sio.read(tmp_path / "lightning_logs" / "version_1")
    np.testing.assert_allclose(t.rho, 2.0 - 0.1 * np.arange(5), rtol=1e-7)


def _write_tb(logdir, rows):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(logdir)) as w:
        for step, tags in rows:
            for tag, value in tags.items():
                w.add_scalar(tag, value, step)


def test_tensorboard_default_layout_of_one_run_reads_its_tags(tmp_path):
    # SummaryWriter() writes runs/<date>_<host>/; the user passes runs/
    rows = [(s, {"train/loss": 1.0 / (s + 1), "train/weight_norm": 9.0 - s / 10, "lr-SGD": 0.1})
            for s in range(0, 50, 5)]  # fmt: skip
    _write_tb(tmp_path / "runs" / "Jan01_12-00-00_host", rows)
    t = sio.read(tmp_path / "runs")
    assert t.meta["columns"]["loss"] == "train/loss"
    assert t.meta["columns"]["rho"] == "train/weight_norm"
    assert t.meta["lr"] == pytest.approx(0.1)
    np.testing.assert_allclose(t.rho, [9.0 - s / 10 for s in range(0, 50, 5)], rtol=1e-7)
    np.testing.assert_allclose(t.loss, [1.0 / (s + 1) for s in range(0, 50, 5)], rtol=1e-7)


def test_tensorboard_run_restarted_into_its_directory_is_refused(tmp_path):
    # a second writer in the same log_dir starts again at step 0: two runs in one
    # directory, refused as a CSV that goes back in step is
    run = tmp_path / "run"
    _write_tb(run, [(s, {"weight_norm": 5.0 - s / 100}) for s in range(0, 400, 10)])
    _write_tb(tmp_path / "second", [(s, {"weight_norm": 6.0 - s / 100}) for s in range(0, 100, 10)])
    (second,) = (tmp_path / "second").iterdir()
    second.rename(run / "events.out.tfevents.9999999999.host.2.0")  # written later
    with pytest.raises(ValueError, match=r"goes back from step 390 to step 0 .*one event file"):
        sio.read(run)
    first = next(f for f in run.iterdir() if "9999999999" not in f.name)
    np.testing.assert_allclose(sio.read(first).rho, 5.0 - np.arange(0, 400, 10) / 100, rtol=1e-7)
    # a run resumed at a later step (no step written twice going back) is one run
    resumed = tmp_path / "resumed"
    _write_tb(resumed, [(s, {"weight_norm": 3.0}) for s in range(0, 50, 10)])
    _write_tb(tmp_path / "later", [(s, {"weight_norm": 2.0}) for s in range(50, 100, 10)])
    (later,) = (tmp_path / "later").iterdir()
    later.rename(resumed / "events.out.tfevents.9999999999.host.2.0")
    np.testing.assert_allclose(sio.read(resumed).rho, [3.0] * 5 + [2.0] * 5)


def test_tensorboard_bad_and_truncated_files(tmp_path, torch_tb_dir):
    logdir, n = torch_tb_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "events.out.tfevents.1.host").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError, match="not a TensorBoard event file"):
        sio.read(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.out.tfevents.2.host").write_bytes(b"")
    with pytest.raises(ValueError, match="empty event file"):
        sio.read(empty)
    (event,) = [f for f in os.listdir(logdir) if "tfevents" in f]
    data = (logdir / event).read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / event).write_bytes(data[: len(data) - 7])
    t = sio.read(cut)
    assert t.meta["truncated_files"][event] > 0
    assert any("cut short" in n and event in n for n in t.meta["notes"])
    assert len(t) == n - 1  # the last loss record is the one cut short
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("no events here")
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        sio.read_tensorboard(plain)


# -------------------------------------------------------------------- Lightning
def _write_csvlogger(version_dir, calls, hparams):
    """Write metrics.csv and hparams.yaml the way lightning's CSVLogger does.

    Each log_metrics call is one row ``{**metrics, "epoch": e, "step": s}``; the
    header is the sorted union of keys; absent keys are blank cells.
    """
    version_dir.mkdir(parents=True)
    keys = sorted(set().union(*calls))
    with open(version_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(calls)
    with open(version_dir / "hparams.yaml", "w") as fh:
        for k, v in hparams.items():
            fh.write(f"{k}: {v}\n")


def test_lightning_csvlogger_layout(tmp_path):
    steps_per_epoch, every = 20, 5
    rng = np.random.default_rng(1)
    calls, expect = [], {}
    for epoch in range(3):
        for s in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            if (s + 1) % every == 0:
                rec = {"train_loss_step": float(rng.uniform(0.5, 2)), "si_norm": 5.0 + s / 100}
                rec["grad_norm"] = 0.2
                rec["lr-SGD"] = 0.05
                expect[s] = rec
                calls.append({**rec, "epoch": epoch, "step": s})
        last = (epoch + 1) * steps_per_epoch - 1
        calls.append({"val_loss": 1.0 + epoch, "epoch": epoch, "step": last})
        calls.append({"train_loss_epoch": 0.9 - epoch / 10, "epoch": epoch, "step": last})
    vdir = tmp_path / "lightning_logs" / "version_0"
    _write_csvlogger(vdir, calls, {"lr": 0.05, "weight_decay": 0.0005, "batch_size": 128})
    header = (vdir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == sorted(header) and ",," in (vdir / "metrics.csv").read_text()
    assert sio.detect_format(vdir) == "lightning"
    assert sio.detect_format(vdir / "metrics.csv") == "lightning"
    t = sio.read(vdir)
    steps = sorted(expect)
    np.testing.assert_array_equal(t.step, steps)
    np.testing.assert_allclose(t.loss, [expect[s]["train_loss_step"] for s in steps])
    np.testing.assert_allclose(t.rho, [5.0 + s / 100 for s in steps])
    np.testing.assert_allclose(t.grad_norm_sphere, [0.2 * (5.0 + s / 100) for s in steps])
    np.testing.assert_allclose(t.elr, [0.05 / (5.0 + s / 100) ** 2 for s in steps])
    val = t.extra["val_loss"]
    ends = [steps.index(e * steps_per_epoch + steps_per_epoch - 1) for e in range(3)]
    np.testing.assert_allclose(val[ends], [1.0, 2.0, 3.0])
    assert np.isnan(val).sum() == len(steps) - 3
    np.testing.assert_allclose(t.extra["train_loss_epoch"][ends], [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(t.extra["epoch"][ends], [0, 1, 2])
    assert t.meta["lr"] == 0.05 and t.meta["wd"] == 0.0005 and t.meta["batch_size"] == 128
    assert t.meta["merged_rows"] == 6 and t.meta["merge_conflicts"] == 0
    assert t.meta["format"] == "lightning"


def test_lightning_logged_lr_schedule_wins_over_hparams(tmp_path):
    # save_hyperparameters() writes the initial lr; LearningRateMonitor logs what the
    # optimizer ran with (StepLR here), on some of the logged rows only
    calls, lr_at, rho_at = [], {}, {}
    for s in range(48):
        lr = 0.5 * 0.1 ** (s // 16)
        rho_at[s] = 3.0 - s / 50
        rec = {"weight_norm": rho_at[s], "train_loss_step": 1.0, "epoch": s // 8, "step": s}
        if s % 4 == 0:
            rec["lr-SGD"] = lr_at[s] = lr
        calls.append(rec)
    vdir = tmp_path / "version_0"
    _write_csvlogger(vdir, calls, {"lr": 0.5, "weight_decay": 0.01})
    t = sio.read(vdir)
    assert "lr" not in t.meta and t.meta["lr_init"] == 0.5 and t.meta["wd"] == 0.01
    ran = [0.5 * 0.1 ** (s // 16) if s % 4 == 0 else lr_at[s - s % 4] for s in range(48)]
    np.testing.assert_allclose(t.elr, [ran[s] / rho_at[s] ** 2 for s in range(48)], rtol=1e-15)
    np.testing.assert_array_equal(np.isfinite(t.extra["lr-SGD"]), [s % 4 == 0 for s in range(48)])
    # the overlay runs with the logged lr per row
    from siflow._overlay_cli import main

    out = tmp_path / "out"
    assert main([str(vdir), "--out", str(out), "--no-figure", "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lr_schedule"]


def test_lightning_hparams_of_the_siflow_callback_name_the_optimizer(tmp_path):
    # siflow's Lightning callback logs the optimizer, so that the overlay uses its theory
    calls = [{"weight_norm": 3.0 - s / 100, "epoch": 0, "step": s} for s in range(10)]
    vdir = tmp_path / "version_0"
    hp = {"siflow/optimizer": "adamw", "siflow/betas": "'0.9,0.99'", "lr": 0.001,
          "weight_decay": 0.1}  # fmt: skip
    _write_csvlogger(vdir, calls, hp)
    t = sio.read(vdir)
    assert t.meta["optimizer"] == "adamw" and t.meta["betas"] == (0.9, 0.99)
    assert t.meta["lr"] == 0.001 and t.meta["wd"] == 0.1
    vdir2 = tmp_path / "version_1"
    _write_csvlogger(vdir2, calls, {"siflow/optimizer": "sgd", "siflow/momentum": 0.9})
    assert sio.read(vdir2).meta["momentum"] == 0.9


def test_lightning_metrics_caught_mid_write_read_live(tmp_path):
    calls = [{"weight_norm": 3.0 - s / 100, "epoch": 0, "step": s} for s in range(10)]
    vdir = tmp_path / "version_0"
    _write_csvlogger(vdir, calls, {"lr": 0.1, "weight_decay": 0.01})
    csv_path = vdir / "metrics.csv"
    csv_path.write_text(csv_path.read_text() + "0,10")  # the next row, cut after two cells
    with pytest.raises(ValueError, match="has 2 cells"):
        sio.read_lightning(vdir)
    t = sio.read(vdir, live=True)
    np.testing.assert_array_equal(t.step, np.arange(10))
    assert any("still being written" in n for n in t.meta["notes"])


def test_lightning_restarted_run_raises(tmp_path):
    calls = [{"loss": 1.0, "epoch": 0, "step": s} for s in (0, 5, 10)]
    calls += [{"loss": 1.0, "epoch": 0, "step": s} for s in (5, 10)]
    vdir = tmp_path / "version_1"
    _write_csvlogger(vdir, calls, {})
    with pytest.raises(ValueError, match="goes back from 10 to 5"):
        sio.read_lightning(vdir)


def test_lightning_dir_without_metrics(tmp_path):
    with pytest.raises(ValueError, match="metrics.csv"):
        sio.read_lightning(tmp_path)


def test_lightning_logs_of_several_versions_names_them(tmp_path):
    # CSVLogger's lightning_logs/version_<k>/metrics.csv: the parent holds runs, not a log
    for k in (0, 1):
        run = tmp_path / "lightning_logs" / f"version_{k}"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("epoch,step,train_loss,rho\n0,0,1.0,2.0\n0,1,0.9,1.9\n")
    with pytest.raises(ValueError, match=r"holds 2 run directories \(version_0, version_1\)"):
        sio.read(tmp_path / "lightning_logs")
    assert len(sio.read(tmp_path / "lightning_logs" / "version_1")) == 2


# ------------------------------------------------------------------------- W&B
def _write_wandb_export(path, runs):
    """W&B chart export: "Step", then per run "<run> - <metric>" with __MIN/__MAX."""
    steps = sorted(set().union(*[set(r["steps"]) for r in runs.values()]))
    header = ["Step"]
    for name, r in runs.items():
        for metric in r["metrics"]:
            header += [f"{name} - {metric}", f"{name} - {metric}__MIN", f"{name} - {metric}__MAX"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(header)
        for s in steps:
            row = [s]
            for r in runs.values():
                for values in r["metrics"].values():
                    if s in r["steps"]:
                        v = values[r["steps"].index(s)]
                        row += [v, v, v]
                    else:
                        row += ["", "", ""]
            writer.writerow(row)


def test_wandb_export_pick_run(tmp_path):
    runs = {
        "sgd-lr0.1-wd1e-3": {
            "steps": list(range(0, 10)),
            "metrics": {"train/loss": list(np.linspace(2, 1, 10)), "si_norm": [3.0] * 10},
        },
        "sgd-lr0.2-wd1e-3": {
            "steps": list(range(0, 10, 2)),
            "metrics": {"train/loss": [5.0, 4.0, 3.0, 2.0, 1.0], "si_norm": [4.0] * 5},
        },
    }
    path = tmp_path / "wandb_export_2026.csv"
    _write_wandb_export(path, runs)
    assert sio.detect_format(path) == "wandb"
    with pytest.raises(ValueError, match="several runs"):
        sio.read(path)
    t = sio.read(path, run="sgd-lr0.2-wd1e-3")
    np.testing.assert_array_equal(t.step, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(t.loss, [5.0, 4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(t.rho, 4.0)
    assert t.meta["run"] == "sgd-lr0.2-wd1e-3" and t.meta["rows_of_other_runs"] == 5
    np.testing.assert_allclose(t.extra["train/loss__MIN"], t.loss)
    g = sio.read(path, group="lr0.1")  # group naming a run selects it
    np.testing.assert_array_equal(g.step, np.arange(10))
    np.testing.assert_allclose(g.loss, np.linspace(2, 1, 10))
    with pytest.raises(ValueError, match="no run 'adam'"):
        sio.read_wandb(path, run="adam")


def test_wandb_not_an_export(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("step,loss\n0,1\n")
    with pytest.raises(ValueError, match="not a W&B export"):
        sio.read(path, fmt="wandb")


def test_plain_csv_with_a_dash_in_a_column_name_is_not_an_export(tmp_path):
    # "loss - ema" looks like W&B's "<run> - <metric>"; the other columns do not
    path = tmp_path / "log.csv"
    lines = ["step,weight_norm,loss,loss - ema"]
    for s in range(40):
        ema = f"{1.0 / (s + 2):.6f}" if s % 10 == 0 else ""
        lines.append(f"{s},{3.0 - s / 100},{1.0 / (s + 1)},{ema}")
    path.write_text("\n".join(lines) + "\n")
    assert sio.detect_format(path) == "csv"
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, np.arange(40))
    np.testing.assert_allclose(t.rho, 3.0 - np.arange(40) / 100)
    assert np.isfinite(t.extra["loss - ema"]).sum() == 4


# ------------------------------------------------------ seed paper's train-tm.npz
SEED_DIR = (
    "Experiments/ConvNetSI_CIFAR10_noninvlr_0.0/info/"
    "c32_d3_ds50000_lr0.01_wd0.001_mom0.0_corr0.0_epoch1001_nosch_initscale10.0_noaug"
)


def _periodic_log_rho(epochs, spe, period_epochs, jump, noise, rng):
    """ln rho of a periodic run: decays linearly per step, jumps by ``jump`` at events.

    Events happen right after steps ``k * period_epochs * spe`` (k >= 1); checkpoint
    epoch ``e`` is written after ``e + 1`` epochs, at step ``(e + 1) * spe``.
    """
    steps = (epochs + 1) * spe
    t_event = period_epochs * spe
    k = np.floor(steps / t_event - 1e-12)  # jumps strictly after the event step
    x = 1.0 - jump / t_event * (steps - k * t_event)
    return x + noise * rng.normal(size=steps.size)


def _write_seed_npz(root, epochs, log_rho, rng):
    d = root / SEED_DIR
    d.mkdir(parents=True)
    n = epochs.size
    rho = np.exp(log_rho)
    # get_info.py: results[k] = np.array(list of per-checkpoint values); np.savez(path, **results)
    layer_frac = np.array([0.2, 0.3, 0.5])
    last = np.full(n, 10.0)  # the frozen classifier, at norm 10 as in the paper
    bias = np.full(n, 0.25)
    results = {
        "report_epochs": epochs,
        "params_norm": np.sqrt(rho**2 + last**2 + bias**2),
        "params_numel": np.full(n, 28_000),
        "loss": 0.5 + 0.1 * rng.random(n),
        "acc": 0.8 + 0.1 * rng.random(n),
        "gnorm_m": 0.3 / rho,
        "hess_evals": np.column_stack([40.0 / rho**2, 20.0 / rho**2, 10.0 / rho**2]),
    }
    for i, name in enumerate(
        ("conv_layers.0.weight", "conv_layers.3.weight", "conv_layers.7.weight")
    ):
        results[f"{name}_norm"] = rho * np.sqrt(layer_frac[i])
        results[f"{name}_numel"] = np.full(n, 864 * (i + 1))
    results["linear_layers.2.weight_norm"] = last
    results["linear_layers.2.bias_norm"] = bias
    np.savez(d / "train-tm.npz", **results)
    return d / "train-tm.npz", results


def test_seed_npz_layout_and_conversions(tmp_path):
    rng = np.random.default_rng(3)
    epochs = np.unique(np.rint(np.logspace(0, 3, 120))).astype(np.int64)
    log_rho = _periodic_log_rho(epochs, 391, 200, 0.5, 0.0, rng)
    path, res = _write_seed_npz(tmp_path, epochs, log_rho, rng)
    assert sio.detect_format(path) == "seed-npz"
    assert sio.detect_format(path.parent) == "seed-npz"
    t = sio.read(path, steps_per_epoch=391)
    np.testing.assert_array_equal(t.step, (epochs + 1) * 391)
    assert t.meta["lr"] == 0.01 and t.meta["wd"] == 0.001 and t.meta["momentum"] == 0.0
    assert t.meta["data_size"] == 50000
    # rho is the SI norm (the conv weights; the layer shares sum to 1), not params_norm
    rho = np.exp(log_rho)
    np.testing.assert_allclose(t.rho, rho, rtol=1e-12)
    np.testing.assert_allclose(res["params_norm"] ** 2 - t.rho**2, 100.0625, rtol=1e-12)
    assert t.meta["groups"] == [f"conv_layers.{i}.weight" for i in (0, 3, 7)]
    assert t.meta["not_si"] == ["linear_layers.2.weight", "linear_layers.2.bias"]
    np.testing.assert_allclose(t.elr, 0.01 / rho**2, rtol=1e-12)
    # gnorm_m and hess_evals cover all parameters: kept raw, with a note
    assert t.grad_norm_sphere is None and t.sharpness_sphere is None
    assert any("gnorm_m" in n for n in t.meta["notes"])
    np.testing.assert_allclose(t.extra["acc"], res["acc"])
    assert "conv_layers.3.weight_norm" in t.extra
    # mapped on request: gnorm_m = 0.3/rho gives g~ = rho * gnorm_m = 0.3 exactly, and
    # the top Hessian eigenvalue 40/rho^2 moves to the unit sphere as 40
    m = sio.read(
        path,
        steps_per_epoch=391,
        mapping={"grad_norm_raw": "gnorm_m", "sharpness_raw": "hess_evals_max"},
    )
    np.testing.assert_allclose(m.grad_norm_sphere, 0.3, rtol=1e-12)
    np.testing.assert_allclose(m.sharpness_sphere, 40.0, rtol=1e-12)
    g = sio.read(path, steps_per_epoch=391, group="layers.3")
    np.testing.assert_allclose(g.rho, rho * math.sqrt(0.3))
    assert g.grad_norm_sphere is None and g.sharpness_sphere is None
    np.testing.assert_allclose(g.elr, 0.01 / (0.3 * rho**2), rtol=1e-12)
    s = sio.read(path, steps_per_epoch=391, group="sum")
    np.testing.assert_allclose(s.rho, rho, rtol=1e-12)
    with pytest.raises(ValueError, match="not a scale-invariant tensor"):
        sio.read(path, group="linear_layers.2.weight")
    e = sio.read(path)  # no _fbgd, no command.sh: the time axis is epochs completed
    np.testing.assert_array_equal(e.step, epochs + 1)
    assert e.meta["time_unit"] == "epoch"
    assert "steps_per_epoch=" in e.meta["steps_per_epoch_source"]


def _write_named_seed_npz(root, model_dir, sizes, trained, command=None):
    """A train-tm.npz of the given tensors (name -> numel), the ``trained`` ones changing."""
    exp = "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch50_noschinitscale10.0_noaug_fbgd"
    d = root / "Experiments" / model_dir / "info" / exp
    d.mkdir(parents=True)
    epochs = np.arange(50)
    results = {"report_epochs": epochs, "loss": np.linspace(1.0, 0.1, 50)}
    for k, (name, numel) in enumerate(sizes.items()):
        change = np.linspace(1.0, 0.5 + 0.1 * k, 50) if name in trained else np.ones(50)
        results[f"{name}_norm"] = (1.0 + k) * change
        results[f"{name}_numel"] = np.full(50, numel)
    np.savez(d / "train-tm.npz", **results)
    if command is not None:
        c = root / "Experiments" / model_dir / "checkpoints" / exp / "trial_0"
        c.mkdir(parents=True)
        (c / "command.sh").write_text(command)
    return d / "train-tm.npz", results


def test_seed_npz_si_tensors_follow_the_repository_rule_for_its_model(tmp_path):
    # ResNet18SIAf (affine BatchNorm, BatchNorm first in a downsampling shortcut): the
    # repository counts every tensor but the classifier, the BatchNorms and shortcut.0
    sizes = {
        "conv1.weight": 1728,
        "layer1.0.bn1.weight": 64,
        "layer1.0.bn1.bias": 64,
        "layer1.0.conv1.weight": 36864,
        "layer2.0.shortcut.0.weight": 64,
        "layer2.0.shortcut.0.bias": 64,
        "layer2.0.shortcut.1.weight": 8192,
        "bn.weight": 512,
        "bn.bias": 512,
        "linear.weight": 5120,
    }
    path, res = _write_named_seed_npz(
        tmp_path / "a",
        "ResNet18SIAf_CIFAR10_noninvlr_0.1",
        sizes,
        trained=set(sizes) - {"linear.weight"},
        command="train.py --dataset CIFAR10 --model ResNet18SIAf --noninvlr 0.1 --fbgd",
    )
    t = sio.read(path)
    si = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.shortcut.1.weight"]
    assert t.meta["groups"] == si and t.meta["model"] == "ResNet18SIAf"
    np.testing.assert_allclose(t.rho, np.sqrt(sum(res[f"{n}_norm"] ** 2 for n in si)), rtol=1e-12)
    # ConvNetSIAf, model from the folder name only (no command.sh): trained affine
    # BatchNorm scales at conv_layers.1 and .4 are not SI; the convolutions are
    sizes = {
        "conv_layers.0.weight": 108,
        "conv_layers.1.weight": 4,
        "conv_layers.1.bias": 4,
        "conv_layers.3.weight": 288,
        "conv_layers.4.weight": 8,
        "conv_layers.4.bias": 8,
        "linear_layers.2.weight": 320,
    }
    path, res = _write_named_seed_npz(
        tmp_path / "b", "ConvNetSIAf_CIFAR10_noninvlr_0.1", sizes, trained=set(sizes)
    )
    t = sio.read(path)
    assert t.meta["groups"] == ["conv_layers.0.weight", "conv_layers.3.weight"]
    assert "projected" not in t.meta
    # ResNet18 (affine BatchNorm): the repository's rule also names layer1.0.bn1, a
    # BatchNorm, and the layer4 convolutions are outside it; biases and BatchNorms never count
    sizes = {
        "conv1.weight": 1728,
        "layer1.0.conv1.weight": 36864,
        "layer1.0.bn1.weight": 64,
        "layer1.0.bn1.bias": 64,
        "layer1.0.conv2.weight": 36864,
        "layer4.0.conv2.weight": 36864,
        "linear.weight": 5120,
    }
    path, _ = _write_named_seed_npz(
        tmp_path / "r", "ResNet18_CIFAR10_noninvlr_0.1", sizes, trained=set(sizes)
    )
    t = sio.read(path)
    assert t.meta["groups"] == ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"]
    # a model the repository does not name: the generic convention, where a weight as
    # large as its module's bias (an affine BatchNorm in a Sequential) is not SI
    sizes = {
        "features.0.weight": 108,
        "features.1.weight": 4,
        "features.1.bias": 4,
        "features.3.weight": 288,
        "classifier.weight": 320,
    }
    path, _ = _write_named_seed_npz(tmp_path / "c", "MyNet_DIGITS", sizes, trained=set(sizes))
    t = sio.read(path)
    assert t.meta["groups"] == ["features.0.weight", "features.3.weight"]
    assert t.meta["model"] == "MyNet"


def test_seed_npz_fixed_norm_run_is_marked_projected(tmp_path):
    sizes = {"conv_layers.0.weight": 108, "conv_layers.3.weight": 288, "linear.weight": 320}
    path, _ = _write_named_seed_npz(tmp_path, "ConvNetSI_CIFAR10_noninvlr_0.0", sizes, set(sizes))
    fixed = path.parent.with_name(path.parent.name + "_fix_si_pnorm-1")
    path.parent.rename(fixed)
    t = sio.read(fixed / "train-tm.npz")
    assert t.meta["projected"] is True
    assert any("fix_si_pnorm run" in n for n in t.meta["notes"])


def test_seed_npz_learning_rate_follows_the_runs_schedule(tmp_path):
    # train.py sets the lr once per epoch e of E: with no --no_schedule (no _nosch in the
    # name) it follows its schedule; each checkpoint row gets the lr of the epoch it closes
    import math as m

    exp = "c4_d3_ds500_lr0.5_wd0.01_mom0.0_corr0.0_epoch40_initscale10.0_noaug_fbgd"
    epochs = np.arange(40)
    e = epochs.astype(float)

    def default(x):  # 1 to E/2, linear to 0.01 at 0.9 E, then 0.01 (their schedule())
        t = x / 40
        return 1.0 if t <= 0.5 else (1 - 0.99 * (t - 0.5) / 0.4 if t <= 0.9 else 0.01)

    cases = {
        "": [default(x) for x in e],
        " --cosan_schedule": [(1 + m.cos(m.pi * x / 40)) / 2 for x in e],
        " --d_schedule 10": [10.0 ** -max(0, m.ceil(x / 10 - 1)) for x in e],
        " --c_schedule 100": [1 if x <= 10 else 0.01 + 0.99 * (1 - x / 40) / 0.75 for x in e],
    }
    for k, (flags, factor) in enumerate(cases.items()):
        d = tmp_path / str(k) / "Experiments" / "ConvNetSI_CIFAR10_noninvlr_0.0"
        info, trial = d / "info" / exp, d / "checkpoints" / exp / "trial_0"
        info.mkdir(parents=True)
        trial.mkdir(parents=True)
        (trial / "command.sh").write_text(f"train.py --model ConvNetSI --epochs 40{flags}\n")
        rho = np.linspace(3.0, 2.0, 40)
        tensors = {"conv_layers.0.weight_norm": rho, "conv_layers.0.weight_numel": np.full(40, 9)}
        np.savez(info / "train-tm.npz", report_epochs=epochs, loss=np.full(40, 0.1), **tensors)
        t = sio.read(info / "train-tm.npz")
        lr = 0.5 * np.array(factor)
        np.testing.assert_allclose(t.extra["lr"], lr, rtol=1e-12, err_msg=flags)
        np.testing.assert_allclose(t.elr, lr / rho**2, rtol=1e-12, err_msg=flags)
        assert t.meta["lr_init"] == 0.5 and "lr" not in t.meta
        assert any("schedule" in n for n in t.meta["notes"])


def test_seed_npz_log_spaced_epochs_give_correct_periods(tmp_path):
    from siflow import periods

    rng = np.random.default_rng(5)
    spe, period, jump = 391, 200, 0.5
    epochs = np.unique(np.rint(np.logspace(0, np.log10(1001), 150))).astype(np.int64)
    log_rho = _periodic_log_rho(epochs, spe, period, jump, 1e-3, rng)
    path, _ = _write_seed_npz(tmp_path, epochs, log_rho, rng)
    t = sio.read(path, steps_per_epoch=spe)
    ev = periods.find_events(t)
    steps = (epochs + 1) * spe
    true_events = np.arange(1, 6) * period * spe  # jumps right after these steps
    # the detector reports the last logged row before each jump
    expected = np.array([steps[steps <= s].max() for s in true_events])
    np.testing.assert_array_equal(ev.steps, expected)
    spacing = np.max(np.diff(steps))
    assert abs(np.median(ev.periods) - period * spe) <= spacing


def test_seed_npz_errors(tmp_path):
    np.savez(tmp_path / "no_epochs.npz", params_norm=np.ones(3))
    with pytest.raises(ValueError, match="report_epochs"):
        sio.read_seed_npz(tmp_path / "no_epochs.npz")
    path = tmp_path / "train-tm.npz"
    np.savez(path, report_epochs=np.arange(1, 50), params_norm=np.ones(49))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="train-tm.npz"):
        sio.read(path)
    with pytest.raises(ValueError, match="no train-tm.npz"):
        sio.read_seed_npz(tmp_path / "..")


# --------------------------------------------------------------- damaged files
def _seed_files(d):
    """One valid file per format, written by the real writers where there is one."""
    from siflow.trajectory import Trajectory

    (d / "log.csv").write_text(
        "step,loss,norm/a,norm/b,grad_norm,lr\n0,1,2,3,.5,.1\n1,.9,2,3,.4,.1\n"
    )
    (d / "log.jsonl").write_text(
        '{"step": 0, "loss": 1, "norm": {"a": 1}}\n{"step": 1, "loss": 0.5}\n'
    )
    Trajectory(step=np.arange(5), rho=np.ones(5), meta={"lr": 0.1}).save(d / "traj.npz")
    Trajectory(step=np.arange(5), rho=np.ones(5), meta={"lr": 0.1}).save(d / "traj.csv")
    np.savez(
        d / "train-tm.npz",
        report_epochs=np.arange(1, 6),
        params_norm=np.ones(5),
        hess_evals=np.ones((5, 2)),
    )
    (d / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n0,0,1.0,\n0,0,,2.0\n0,1,.5,\n")
    (d / "wandb.csv").write_text('"Step","r - loss","r - loss__MIN"\n"0","1","1"\n"1","",""\n')
    files = [d / n for n in ("log.csv", "log.jsonl", "traj.npz", "traj.csv", "train-tm.npz")]
    files += [d / "metrics.csv", d / "wandb.csv"]
    try:
        from tensorboard.summary import Writer
    except ImportError:
        return files
    w = Writer(str(d / "tb"))
    for i in range(10):
        w.add_scalar("loss", 1.0 / (i + 1), step=i)
    w.close()
    return files + sorted((d / "tb").iterdir())


def test_damaged_files_raise_only_value_error(tmp_path):
    """Truncated, bit-flipped, padded or random files: ValueError (one line) or a read."""
    rng = np.random.default_rng(2026)
    seeds = _seed_files(tmp_path)
    for case in range(200):
        src = seeds[case % len(seeds)]
        data = bytearray(src.read_bytes())
        op = case // len(seeds) % 4
        if op == 0:
            data = data[: rng.integers(len(data))]
        elif op == 1:
            for _ in range(rng.integers(1, 6)):
                data[rng.integers(len(data))] = rng.integers(256)
        elif op == 2:
            pos = rng.integers(len(data) + 1)
            data[pos:pos] = rng.bytes(int(rng.integers(1, 20)))
        else:
            data = bytearray(rng.bytes(int(rng.integers(0, 200))))
        d = tmp_path / f"case{case}"
        d.mkdir()
        path = d / src.name
        path.write_bytes(bytes(data))
        for fmt in (None, *sio.FORMATS):
            for target in (path, d):
                try:
                    sio.read(target, fmt=fmt)
                except ValueError as exc:
                    assert "\n" not in str(exc), (fmt, src.name, op)
