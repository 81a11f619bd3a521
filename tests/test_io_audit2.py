"""siflow.io on logs written by the real writers: TensorBoard's SummaryWriter without a
step or with several values per step, Keras' layouts, optimizers named by the log
(Lightning's lr-AdamW, Hugging Face's trainer_state.json), partial and renamed columns,
numpy.savetxt, add_hparams, resumed runs and MLflow's file store."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import siflow.io as sio
from siflow._overlay_cli import main as overlay_main
from siflow.overlay import analyze

pytest.importorskip("tensorboard")


def _writer(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


def _f32(values) -> np.ndarray:
    """Values as an event file stores them (float32)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _cli_error(argv: list[str], capsys) -> str:
    """The one stderr line of a refused ``python -m siflow.overlay`` (exit 2)."""
    assert overlay_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# ------------------------------------------------------------------ 1, 2: one value per step
def test_tensorboard_values_without_global_step_are_refused(tmp_path, capsys):
    with _writer(tmp_path / "run") as w:
        for s in range(20):
            w.add_scalar("loss", 1.0 / (1 + s))  # no global_step: PyTorch writes step 0
            w.add_scalar("weight_norm", 2.0 + 0.01 * s)
    with pytest.raises(ValueError, match=r"all 20 values of 'loss' are at step 0.*global_step"):
        sio.read(tmp_path / "run")
    err = _cli_error([str(tmp_path / "run"), "--lr", "0.1", "--wd", "1e-3"], capsys)
    assert "global_step=step" in err
    with _writer(tmp_path / "constant") as w:  # equal values: still one step for the log
        for _ in range(5):
            w.add_scalar("weight_norm", 2.0)
    with pytest.raises(ValueError, match=r"all 5 values of 'weight_norm' .* at step 0"):
        sio.read(tmp_path / "constant")


def test_tensorboard_several_values_at_one_step_are_refused(tmp_path):
    with _writer(tmp_path / "run") as w:
        for epoch in range(5):
            for batch in range(4):  # per-batch values logged at the epoch's step
                w.add_scalar("loss", 1.0 / (1 + 4 * epoch + batch), epoch)
    with pytest.raises(ValueError, match=r"'loss' has 4 different values at step 0 \(5 step"):
        sio.read(tmp_path / "run")


def test_tensorboard_repeated_equal_values_and_purge_step_still_read(tmp_path):
    with _writer(tmp_path / "same") as w:
        for s in range(6):
            w.add_scalar("loss", 1.0 / (1 + s), s)
            w.add_scalar("epoch", s // 3, s)
            w.add_scalar("epoch", s // 3, s)  # a second logging call of the same step
    t = sio.read(tmp_path / "same")
    np.testing.assert_array_equal(t.extra["epoch"], [0, 0, 0, 1, 1, 1])
    # a restart with purge_step: the purged points are gone, as TensorBoard shows them
    run = tmp_path / "purged"
    with _writer(run) as w:
        for s in range(30):
            w.add_scalar("weight_norm", 2.0 + 0.01 * s, s)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run), purge_step=20) as w:
        for s in range(20, 40):
            w.add_scalar("weight_norm", 3.0 + 0.01 * s, s)
    t = sio.read(run)
    np.testing.assert_array_equal(t.step, np.arange(40))
    expected = np.r_[2.0 + 0.01 * np.arange(20), 3.0 + 0.01 * np.arange(20, 40)]
    np.testing.assert_array_equal(t.rho, _f32(expected))


# ------------------------------------------------------------------------ 3, 11: epochs
def _keras_tensorboard(root: Path, epochs: int, batches: int = 0) -> None:
    """Keras' TensorBoard callback layout: train/ and validation/, epoch_* tags at the
    epoch index (and, with update_freq='batch', batch_* tags at the iteration)."""
    with _writer(root / "train") as tr, _writer(root / "validation") as va:
        for e in range(epochs):
            for b in range(batches):
                tr.add_scalar("batch_loss", 2.0 / (1 + e * batches + b), e * batches + b)
            tr.add_scalar("epoch_loss", 1.0 / (1 + e), e)
            tr.add_scalar("epoch_learning_rate", 0.1 * 0.9**e, e)
            va.add_scalar("epoch_loss", 1.1 / (1 + e), e)


def test_keras_tensorboard_epochs_are_an_epoch_axis(tmp_path):
    _keras_tensorboard(tmp_path, 10)
    t = sio.read(tmp_path)
    assert t.meta["time_unit"] == "epoch" and "epoch indices" in t.meta["time_note"]
    np.testing.assert_array_equal(t.step, np.arange(10))
    assert t.meta["columns"]["lr"] == "train/epoch_learning_rate"
    np.testing.assert_array_equal(
        t.extra["train/epoch_learning_rate"], _f32(0.1 * 0.9 ** np.arange(10))
    )
    np.testing.assert_array_equal(t.loss, _f32(1.0 / (1 + np.arange(10))))
    np.testing.assert_array_equal(t.extra["validation/epoch_loss"], _f32(1.1 / (1 + np.arange(10))))
    # epoch e is logged at its end: step (e+1)*N
    s = sio.read(tmp_path, steps_per_epoch=50)
    assert s.meta["time_unit"] == "step"
    np.testing.assert_array_equal(s.step, (np.arange(10) + 1) * 50)
    assert "(e+1)*50" in s.meta["time_note"]


def test_keras_tensorboard_batch_tags_are_left_out_of_the_epoch_axis(tmp_path):
    _keras_tensorboard(tmp_path, 3, batches=4)
    t = sio.read(tmp_path)
    assert t.meta["time_unit"] == "epoch" and "train/batch_loss" not in t.extra
    assert any("left out" in n and "train/batch_loss" in n for n in t.meta["notes"])
    # asked for, every tag is on the event steps
    e = sio.read(tmp_path, mapping=["step=step"])
    np.testing.assert_array_equal(e.step, np.arange(12))


def _keras_csvlogger(path: Path, epochs) -> None:
    """keras.callbacks.CSVLogger: csv.DictWriter, 'epoch' first, then sorted keys, a row
    at the end of each epoch."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "learning_rate", "loss"], lineterminator="\n")
        w.writeheader()
        for e in epochs:
            w.writerow({"epoch": e, "learning_rate": 0.1 * 0.9**e, "loss": 1.0 / (1 + e)})


def test_csvlogger_epochs_are_placed_at_their_end(tmp_path):
    path = tmp_path / "training.log"
    _keras_csvlogger(path, range(5))
    t = sio.read(path, steps_per_epoch=100)
    np.testing.assert_array_equal(t.step, [100, 200, 300, 400, 500])
    np.testing.assert_allclose(t.loss, 1.0 / (1 + np.arange(5)), rtol=1e-15)
    assert "count from 0" in t.meta["time_note"] and "(e+1)*100" in t.meta["time_note"]
    # epochs counted from 1: epoch e ends at step e*N
    one = tmp_path / "one.log"
    _keras_csvlogger(one, range(1, 4))
    np.testing.assert_array_equal(sio.read(one, steps_per_epoch=10).step, [10, 20, 30])
    assert "count from 1" in sio.read(one, steps_per_epoch=10).meta["time_note"]


# -------------------------------------------------------------------- 4: the optimizer
def test_optimizer_named_by_lr_monitor_column(tmp_path):
    with _writer(tmp_path / "run") as w:
        for s in range(50):
            w.add_scalar("train_loss", 1.0 / (1 + s), s)
            w.add_scalar("lr-AdamW", 1e-3, s)
            w.add_scalar("weight_norm", 2.0 + 0.01 * s, s)
    t = sio.read(tmp_path / "run")
    assert t.meta["optimizer"] == "adamw" and t.meta["lr"] == pytest.approx(1e-3)
    assert "'lr-AdamW'" in t.meta["optimizer_source"]
    assert any("optimizer taken as adamw" in n for n in t.meta["notes"])
    res = analyze(t, wd=0.05)
    assert res.optimizer == "adamw"
    assert any("optimizer=adamw as the log says" in n for n in res.notes)
    given = analyze(t, wd=0.05, optimizer="sgd")
    assert given.optimizer == "sgd"
    assert any("log's optimizer (adamw" in n and "optimizer=sgd" in n for n in given.notes)


def test_optimizer_named_by_lightning_csv_column(tmp_path):
    run = tmp_path / "version_0"
    run.mkdir()
    with open(run / "metrics.csv", "w", newline="") as f:  # CSVLogger: epoch, step, sorted keys
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["epoch", "step", "lr-SGD", "train_loss", "weight_norm"])
        for s in range(10):
            w.writerow([0, s, 0.1, 1.0 / (1 + s), ""])
            w.writerow([0, s, "", "", 2.0 + 0.01 * s])
    t = sio.read(run)
    assert t.meta["format"] == "lightning" and t.meta["optimizer"] == "sgd"
    assert analyze(t, wd=1e-3).optimizer == "sgd"


def _trainer_state(path: Path, history: list[dict], global_step: int) -> None:
    """trainer_state.json written by transformers' own TrainerState.save_to_json."""
    from transformers.trainer_callback import TrainerState

    state = TrainerState(
        epoch=history[-1].get("epoch"),
        global_step=global_step,
        max_steps=global_step,
        logging_steps=3,
        train_batch_size=8,
        num_train_epochs=1,
    )
    state.log_history = history
    state.save_to_json(str(path))


def _hf_history(steps: int = 12, logging_steps: int = 3) -> list[dict]:
    """Records as Trainer.log appends them: warmup over 4 updates to 0.1, then linear
    decay; the lr of update s (after optimizer.step(), before lr_scheduler.step())."""
    out = []
    for s in range(logging_steps, steps + 1, logging_steps):
        lr = 0.1 * (s - 1) / 4 if s - 1 < 4 else 0.1 * (steps - (s - 1)) / (steps - 4)
        out.append(
            {"loss": 1.0 / s, "grad_norm": 0.5 + s / 100, "learning_rate": lr,
             "epoch": s / steps, "step": s}
        )  # fmt: skip
        if s % 6 == 0:
            out.append({"eval_loss": 2.0 / s, "epoch": s / steps, "step": s})
    out.append({"train_runtime": 1.0, "train_loss": 0.3, "epoch": 1.0, "step": steps})
    return out


def test_trainer_state_notes_its_conventions_and_optimizer(tmp_path):
    path = tmp_path / "trainer_state.json"
    history = _hf_history()
    _trainer_state(path, history, 12)
    assert json.loads(path.read_text())["log_history"] == history
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [3, 6, 9, 12])
    lr = [h["learning_rate"] for h in history if "learning_rate" in h]
    np.testing.assert_array_equal(t.extra["learning_rate"], lr)
    np.testing.assert_array_equal(t.loss, [1 / 3, 1 / 6, 1 / 9, 1 / 12])
    np.testing.assert_array_equal(t.extra["eval_loss"][[1, 3]], [2 / 6, 2 / 12])
    # the run's mean loss, written once at the end, stays apart from the window means
    np.testing.assert_array_equal(t.extra["train_loss"], [np.nan] * 3 + [0.3])
    notes = " ".join(t.meta["notes"])
    assert "learning_rate is the lr that moved the weights of step s-1" in notes
    assert "before clipping" in notes and "mean over the updates" in notes
    assert t.meta["optimizer"] == "adamw" and "optimizers=" in notes
    assert analyze(t, wd=0.01).optimizer == "adamw"


def test_trainer_tensorboard_args_name_the_optimizer(tmp_path):
    # what transformers' TensorBoardCallback writes: the args as text, then train/* scalars
    args = {"optim": "adamw_torch_fused", "learning_rate": 0.1, "weight_decay": 0.01}
    run = tmp_path / "runs" / "Dec02_18-12-39_host"
    with _writer(run) as w:
        w.add_text("args", json.dumps(args, indent=2))
        for h in _hf_history():
            for k in ("loss", "learning_rate"):
                if k in h:
                    w.add_scalar(f"train/{k}", h[k], h["step"])
    t = sio.read(tmp_path / "runs")
    assert t.meta["optimizer"] == "adamw" and "adamw_torch_fused" in t.meta["optimizer_source"]
    assert t.meta["wd"] == 0.01 and t.meta["lr_init"] == 0.1
    assert any("describes update s" in n for n in t.meta["notes"])


# ----------------------------------------------------------- 5, 8: partial and renamed keys
def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_lr_logged_from_part_way_gives_no_elr_before_it(tmp_path):
    recs = []
    for s in range(0, 100, 10):
        rec = {"step": s, "train": {"loss": 1.0 / (1 + s)}, "weight_norm": 2.0 + 0.001 * s}
        if s >= 50:
            rec["lr"] = 0.05
        recs.append(rec)
    t = sio.read(_jsonl(tmp_path / "log.jsonl", recs))
    rho = 2.0 + 0.001 * np.arange(0, 100, 10)
    assert np.all(np.isnan(t.elr[:5]))
    np.testing.assert_allclose(t.elr[5:], 0.05 / rho[5:] ** 2, rtol=1e-15)
    assert any("lr is logged from step 50 on" in n for n in t.meta["notes"])
    # a sparse lr (every other row, from the first) is forward-filled without a note
    sparse = [{k: v for k, v in r.items() if k != "lr"} for r in recs]
    for r in sparse[::2]:
        r["lr"] = 0.05
    s = sio.read(_jsonl(tmp_path / "sparse.jsonl", sparse))
    assert np.all(np.isfinite(s.elr)) and not s.meta.get("notes")


def test_loss_key_renamed_mid_run_is_joined_with_a_note(tmp_path):
    recs = [
        {"step": s, ("loss" if s < 50 else "train_loss"): 1.0 / (1 + s), "weight_norm": 2.0}
        for s in range(0, 100, 10)
    ]
    t = sio.read(_jsonl(tmp_path / "log.jsonl", recs))
    np.testing.assert_array_equal(t.loss, 1.0 / (1 + np.arange(0, 100, 10)))
    assert "train_loss" not in t.extra
    assert any("'loss' stops where 'train_loss' starts" in n for n in t.meta["notes"])
    # both logged on the same rows: two quantities, kept apart
    both = [{**r, "loss": 1.0, "train_loss": 2.0} for r in recs]
    b = sio.read(_jsonl(tmp_path / "both.jsonl", both))
    assert np.all(b.loss == 1.0) and np.all(b.extra["train_loss"] == 2.0)


# ----------------------------------------------------------------------- 7: numpy.savetxt
def test_numpy_savetxt_header_and_whitespace(tmp_path, capsys):
    steps = np.arange(10) * 10.0
    table = np.c_[steps, 1.0 / (1 + steps), 2.0 + 0.001 * steps]
    comma = tmp_path / "comma.csv"
    np.savetxt(comma, table, delimiter=",", header="step,loss,weight_norm")
    space = tmp_path / "space.txt"
    np.savetxt(space, table, header="step loss weight_norm")
    for path in (comma, space):
        t = sio.read(path)
        np.testing.assert_array_equal(t.step, steps.astype(int))
        np.testing.assert_array_equal(t.loss, table[:, 1])
        np.testing.assert_array_equal(t.rho, table[:, 2])
        assert any("commented line" in n for n in t.meta["notes"])
    assert any("whitespace" in n for n in sio.read(space).meta["notes"])
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, table, delimiter=",")  # no header at all
    with pytest.raises(ValueError, match=r"no header row: its first line .* is all numbers"):
        sio.read(bare)
    assert "add a first line naming the columns" in _cli_error(
        [str(bare), "--lr", "0.1", "--wd", "1e-3"], capsys
    )


# ------------------------------------------------------------ 9: TensorBoard group names
def test_add_scalars_under_train_are_group_norms(tmp_path, capsys):
    with _writer(tmp_path / "run") as w:
        for s in range(20):
            w.add_scalar("loss", 1.0 / (1 + s), s)
            w.add_scalars("train/norm", {"conv1": 1 + 0.01 * s, "conv2": 2 + 0.01 * s}, s)
            w.add_scalar("lr-SGD/pg1", 0.1, s)
            w.add_scalar("lr-SGD/pg2", 0.01, s)
    t = sio.read(tmp_path / "run", group="sum")
    assert set(t.meta["groups"]) == {"conv1", "conv2"}
    s = np.arange(20)
    np.testing.assert_allclose(t.rho, np.hypot(_f32(1 + 0.01 * s), _f32(2 + 0.01 * s)))
    assert t.meta["optimizer"] == "sgd" and t.meta.get("lr") is None
    assert t.meta["lr_columns"] == ["lr-SGD/pg1", "lr-SGD/pg2"]
    assert any("one lr per param group" in n and "lr-SGD/pg1" in n for n in t.meta["notes"])
    g = sio.read(tmp_path / "run", group="conv1", mapping={"lr": "lr-SGD/pg1"})
    assert g.meta["lr"] == pytest.approx(0.1)
    err = _cli_error([str(tmp_path / "run"), "--group", "conv1", "--wd", "1e-3"], capsys)
    assert "does not record lr" in err and "--map lr=lr-SGD/pg1" in err


def test_param_groups_sharing_one_lr_give_the_lr(tmp_path):
    with _writer(tmp_path / "run") as w:
        for s in range(10):
            w.add_scalar("weight_norm", 2.0, s)
            w.add_scalar("lr-AdamW/pg1", 1e-3, s)
            w.add_scalar("lr-AdamW/pg2", 1e-3, s)
    t = sio.read(tmp_path / "run")
    assert t.meta["lr"] == pytest.approx(1e-3) and t.meta["columns"]["lr"] == "lr-AdamW/pg1"
    assert t.meta["optimizer"] == "adamw"


# ------------------------------------------------------------ 10: add_hparams, resumed runs
def test_add_hparams_subfolder_is_not_a_second_run(tmp_path):
    with _writer(tmp_path / "run") as w:
        for s in range(20):
            w.add_scalar("loss", 1.0 / (1 + s), s)
            w.add_scalar("weight_norm", 2.0 + 0.01 * s, s)
        w.add_hparams({"lr": 0.1, "weight_decay": 5e-4, "optimizer": "SGD"}, {"loss": 0.05})
    assert len([d for d in (tmp_path / "run").iterdir() if d.is_dir()]) == 1
    t = sio.read(tmp_path / "run")
    np.testing.assert_array_equal(t.step, np.arange(20))
    np.testing.assert_array_equal(t.loss, _f32(1.0 / (1 + np.arange(20))))
    assert t.meta["lr"] == 0.1 and t.meta["wd"] == 5e-4 and t.meta["optimizer"] == "sgd"
    assert any("add_hparams" in n for n in t.meta["notes"])


def test_run_resumed_into_a_new_directory_is_joined(tmp_path):
    runs = tmp_path / "out" / "runs"
    for name, steps in (
        ("Dec02_18-12-56_host", range(21, 31)),
        ("Dec02_18-12-39_host", range(3, 21)),
    ):
        with _writer(runs / name) as w:
            for s in steps:
                w.add_scalar("train/loss", 1.0 / s, s)
    t = sio.read(runs)
    np.testing.assert_array_equal(t.step, np.arange(3, 31))
    np.testing.assert_array_equal(t.loss, _f32(1.0 / np.arange(3, 31)))
    assert any("steps 3-20" in n and "steps 21-30" in n for n in t.meta["notes"])
    # overlapping steps are two runs: refused, naming the whole-run log when there is one
    with _writer(runs / "Dec03_09-00-00_host") as w:
        w.add_scalar("train/loss", 0.5, 12)
    _trainer_state(tmp_path / "out" / "trainer_state.json", _hf_history(30), 30)
    with pytest.raises(ValueError, match=r"overlapping steps.*trainer_state\.json"):
        sio.read(runs)


# ------------------------------------------------------------------------- 12: MLflow
def _mlflow_run(root: Path, metrics: dict[str, list[tuple[int, float, int]]]) -> Path:
    """mlruns/<experiment>/<run> as MLflow's FileStore writes it: meta.yaml, one
    'timestamp value step' line per logged value in metrics/<key>, params/<key>."""
    run = root / "mlruns" / "0" / "4f1c0de"
    (run / "params").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: 4f1c0de\nexperiment_id: '0'\nstatus: 3\n")
    for key, lines in metrics.items():
        f = run / "metrics" / key
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(f"{ts} {v!r} {s}\n" for ts, v, s in lines))
    (run / "params" / "learning_rate").write_text("0.1")
    (run / "params" / "optimizer_name").write_text("SGD")
    return run


def test_mlflow_file_store_run(tmp_path, capsys):
    steps = range(0, 100, 10)
    run = _mlflow_run(
        tmp_path,
        {
            "loss": [(1796235247000 + s, 1.0 / (1 + s), s) for s in steps],
            "train/weight_norm": [(1796235247000 + s, 2.0 + 0.001 * s, s) for s in steps],
        },
    )
    assert sio.detect_format(run) == "mlflow"
    for path in (run, run / "metrics", run / "metrics" / "loss"):
        t = sio.read(path)
        np.testing.assert_array_equal(t.step, list(steps))
        np.testing.assert_array_equal(t.loss, [1.0 / (1 + s) for s in steps])
        np.testing.assert_array_equal(t.rho, [2.0 + 0.001 * s for s in steps])
        assert t.meta["lr"] == 0.1 and t.meta["optimizer"] == "sgd"
    with pytest.raises(ValueError, match=r"holds 1 run directory \(4f1c0de\); pass one"):
        sio.read(run.parent)
    # log_metric without step= writes step 0 every time: refused, naming the fix
    (run / "metrics" / "loss").write_text("".join(f"{17 + s} {1.0 / (1 + s)} 0\n" for s in steps))
    err = _cli_error([str(run), "--wd", "1e-3"], capsys)
    assert "all 10 values of 'loss' are at step 0" in err and "step=step" in err
    (run / "metrics" / "loss").write_text("17 0.5 0\nnot a line\n")
    with pytest.raises(ValueError, match=r"metric file 'loss' line 2 is not"):
        sio.read(run)


def test_mlflow_values_are_not_rounded(tmp_path):
    value = math.pi / 7
    run = _mlflow_run(tmp_path, {"weight_norm": [(1, value, 0), (2, 2 * value, 5)]})
    np.testing.assert_array_equal(sio.read(run).rho, [value, 2 * value])


def test_siflow_callback_momentum_column_names_an_sgd_type_optimizer(tmp_path):
    # siflow's callbacks log siflow/momentum for SGD-type optimizers only (beta1 for
    # Adam-type and Lion): the column names the optimizer; beta1 alone names none
    for extra, optimizer in (("siflow/momentum", "sgd"), ("siflow/beta1", None)):
        path = tmp_path / f"{extra.split('/')[-1]}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "siflow/total/norm", "siflow/lr", "siflow/wd", extra])
            for s in range(10):
                w.writerow([s, 2.0 * 0.99**s, 0.1, 1e-3, 0.9])
        t = sio.read(path)
        assert t.meta.get("optimizer") == optimizer
        if optimizer:
            assert t.meta["optimizer_source"] == f"column {extra!r}"
            assert any("SGD-type" in n for n in t.meta["notes"])
