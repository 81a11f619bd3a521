"""siflow.io on genuine files written by the field's own code (tests/data/peer-logs, see its
README): the seed paper's npz and console table, REQ's dynamics.pkl, the ideal-gas trace and
neural-mechanics HDF5 folders. Expected values are computed here from the raw files with
numpy, h5py, csv or pickle, independently of the readers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import siflow.io as sio

DATA = Path(__file__).parent / "data" / "peer-logs"
SEED = DATA / "seed" / "Experiments" / "ConvNetSI_CIFAR10_noninvlr_0.0"
EXP = "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch300_noschinitscale10.0_noaug_fbgd"
TRAIN = SEED / "info" / EXP / "train-tm.npz"
TEST = SEED / "info" / EXP / "test-em.npz"
OUT = SEED / "logs" / f"{EXP}.out"
SI = [f"conv_layers.{i}.weight" for i in (0, 3, 7, 11)]
IDEAL = (
    DATA
    / "idealgas"
    / "experiments"
    / "convnet4_cifar10_500obj_ce"
    / "fixed_lr"
    / "lr1.00e+00_wd1.00e-02_seed0"
)
NM = DATA / "neural-mechanics" / "results" / "digits" / "fcbn_lr0.5_wd0.01"


# ------------------------------------------------------------------ seed paper
def _hand_si_norm(path: Path) -> np.ndarray:
    with np.load(path) as raw:
        return np.sqrt(sum(raw[f"{name}_norm"] ** 2 for name in SI))


def test_seed_train_npz_uses_the_si_norm_and_epochs_plus_one():
    assert sio.detect_format(TRAIN) == "seed-npz"
    t = sio.read(TRAIN)
    with np.load(TRAIN) as raw:
        epochs = raw["report_epochs"]
        params_norm = raw["params_norm"]
        loss = raw["loss"]
        rest = raw["linear_layers.2.weight_norm"] ** 2 + raw["linear_layers.2.bias_norm"] ** 2
    rho = _hand_si_norm(TRAIN)
    np.testing.assert_allclose(t.rho, rho, rtol=1e-9, atol=0)
    # params_norm also carries the frozen last layer (norm 10) and its bias
    np.testing.assert_allclose(params_norm**2 - t.rho**2, rest, rtol=1e-5)  # float32 sums
    # _fbgd: full batch, one step per epoch; checkpoint e is after e + 1 epochs
    assert t.step[0] == (epochs[0] + 1) * 1
    np.testing.assert_array_equal(t.step, epochs + 1)
    assert t.meta["time_unit"] == "step" and t.meta["steps_per_epoch"] == 1
    assert t.meta["lr"] == 1.0 and t.meta["wd"] == 0.01
    # the files name no optimizer; the repository's train.py builds torch.optim.SGD only,
    # with the momentum of the run name (mom0.0 here)
    assert t.meta["optimizer"] == "sgd" and "torch.optim.SGD" in t.meta["optimizer_source"]
    assert t.meta["momentum"] == 0.0
    assert t.meta["groups"] == SI
    assert t.meta["not_si"] == ["linear_layers.2.weight", "linear_layers.2.bias"]
    np.testing.assert_array_equal(t.loss, loss)
    np.testing.assert_allclose(t.elr, 1.0 / rho**2, rtol=1e-12)
    assert t.grad_norm_sphere is None and any("gnorm_m" in n for n in t.meta["notes"])


def test_seed_groups_are_si_tensors_only():
    g = sio.read(TRAIN, group="conv_layers.7.weight")
    with np.load(TRAIN) as raw:
        np.testing.assert_array_equal(g.rho, raw["conv_layers.7.weight_norm"])
    np.testing.assert_allclose(sio.read(TRAIN, group="sum").rho, _hand_si_norm(TRAIN), rtol=1e-12)
    for name in ("linear_layers.2.weight", "linear_layers.2.bias"):
        with pytest.raises(ValueError, match="not a scale-invariant tensor.*group="):
            sio.read(TRAIN, group=name)


def test_seed_explicit_steps_per_epoch_is_used_and_the_conflict_noted():
    t = sio.read(TRAIN, steps_per_epoch=4)
    with np.load(TRAIN) as raw:
        np.testing.assert_array_equal(t.step, (raw["report_epochs"] + 1) * 4)
    assert any("files say 1" in n for n in t.meta["notes"])


def test_seed_events_and_effective_lr_at_events_by_hand():
    from siflow import periods

    t = sio.read(TRAIN)
    rho = _hand_si_norm(TRAIN)
    ev = periods.find_events(t)
    assert len(ev.steps) >= 3
    # each event is followed by a norm jump of the SI weights (a destabilization)
    for i in ev.index:
        assert rho[i + 1 : i + 12].max() > 1.03 * rho[i]
    np.testing.assert_allclose(ev.elr_before, 1.0 / rho[ev.index] ** 2, rtol=1e-12)
    # the SI norm puts the effective LR at events near 0.0088 (params_norm gave 0.0047)
    assert 0.0080 < float(np.median(ev.elr_before[1:])) < 0.0095


def test_seed_test_em_is_flagged_as_evaluation():
    with pytest.raises(ValueError, match="evaluation log.*evaluation=True"):
        sio.read(TEST)
    t = sio.read(TEST, evaluation=True)
    assert t.meta["log_kind"] == "evaluation"
    assert any("evaluation log" in n for n in t.meta["notes"])
    # test-em.npz stores only params_norm; the SI norm of the same checkpoints is the
    # training file's
    with np.load(TEST) as raw:
        assert "conv_layers.0.weight_norm" not in raw.files
        np.testing.assert_array_equal(t.loss, raw["loss"])
    np.testing.assert_allclose(t.rho, _hand_si_norm(TRAIN), rtol=1e-9)
    assert any("from train-tm.npz" in n for n in t.meta["notes"])


def _out_rows(path: Path) -> dict[int, list[str]]:
    rows = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and len(parts) in (5, 7):
            rows[int(parts[0])] = parts
    return rows


def test_seed_out_table_read_with_blank_test_cells():
    assert sio.detect_format(OUT) == "seed-out"
    t = sio.read(OUT)
    rows = _out_rows(OUT)
    assert len(rows) == 300
    # full batch: epoch ep's training loss is taken at the weights after ep steps (the one
    # update follows the batch), its test loss after the update: steps 0 .. 300
    np.testing.assert_array_equal(t.step, np.arange(301))
    np.testing.assert_array_equal(t.loss[:300], [float(rows[e][2]) for e in sorted(rows)])
    assert np.isnan(t.loss[300])
    full = [e for e in sorted(rows) if len(rows[e]) == 7]  # rows with test metrics
    assert full == [0, 299]
    te = t.extra["te_loss"]
    assert te[1] == float(rows[0][4]) and te[300] == float(rows[299][4])
    assert np.all(np.isnan(np.delete(te, [1, 300])))
    assert t.meta["lr"] == 1.0 and t.meta["wd"] == 0.01
    assert t.meta["optimizer"] == "sgd" and "torch.optim.SGD" in t.meta["optimizer_source"]


def test_seed_out_full_batch_loss_sits_where_the_checkpoint_loss_agrees():
    # the second method: get_info.py's loss of checkpoint e (weights after e + 1 steps,
    # train.npz at step e + 1) against the console's tr_loss placed at the same step
    out, npz = sio.read(OUT), sio.read(TRAIN)
    common, i, j = np.intersect1d(out.step[:-1], npz.step, return_indices=True)
    assert common.size == 299  # steps 1 .. 299 (the console has no row after the last step)
    gap = np.abs(np.log(out.loss[i]) - np.log(npz.loss[j]))
    assert np.median(gap) < 0.01  # 0.2 %: BatchNorm statistics of batches of 128 vs 500
    shifted = np.abs(np.log(out.loss[i - 1]) - np.log(npz.loss[j]))
    assert np.median(shifted) > 0.05  # epoch s - 1 at step s (the previous placement): 9 %


def test_seed_checkpoint_is_not_a_log(tmp_path):
    import pickle
    import zipfile

    ckpt = tmp_path / "checkpoint-10.pt"
    with zipfile.ZipFile(ckpt, "w") as zf:  # torch.save's zip layout
        zf.writestr("checkpoint-10/data.pkl", pickle.dumps({"epoch": 10}, protocol=2))
        zf.writestr("checkpoint-10/version", "3\n")
    with pytest.raises(ValueError, match="checkpoint, not a training log.*get_info.py"):
        sio.read(ckpt)


# ------------------------------------------------------------------------ REQ
def _req_reference(run: Path) -> dict:
    import pickle

    import torch  # the second method for the rows

    rows: dict = {}
    with open(run / "dynamics.pkl", "rb") as fh:
        size = (run / "dynamics.pkl").stat().st_size
        while fh.tell() < size:
            for stat, per in pickle.load(fh).items():  # genuine test data, loaded with torch
                for param, tensor in per.items():
                    rows.setdefault(stat, {}).setdefault(param, []).append(tensor)
    return {
        s: {p: torch.cat(v).numpy().astype(np.float64) for p, v in per.items()}
        for s, per in rows.items()
    }


@pytest.mark.parametrize(("opt", "lr"), [("sgd", 1.0), ("adamw", 0.01)])
def test_req_dynamics_norms_by_hand(opt, lr):
    run = DATA / "req" / opt
    assert sio.detect_format(run) == "req" and sio.detect_format(run / "dynamics.pkl") == "req"
    t = sio.read(run)
    assert t.meta["groups"] == ["0.weight", "3.weight"] and t.meta["not_si"] == ["6.weight"]
    assert np.all(np.diff(t.step) > 0)
    ref = _req_reference(run)
    norm = ref["layer_norm"]
    n_rows = norm["0.weight"].shape[0]
    # row r reduces the samples at iterations 100 r, 100 r + 10, ..., 100 r + 90 (interval 10,
    # downsample 10), each taken before its step: placed at its last, 100 (r + 1) - 10
    at = np.searchsorted(t.step, (np.arange(n_rows) + 1) * 100 - 10)
    np.testing.assert_array_equal(t.step[at], (np.arange(n_rows) + 1) * 100 - 10)
    rho = np.sqrt(norm["0.weight"][:, 0] ** 2 + norm["3.weight"][:, 0] ** 2)
    np.testing.assert_allclose(t.rho[at], rho, rtol=1e-12)
    grad = ref["layer_grad_norm"]
    g = np.sqrt(grad["0.weight"][:, 0] ** 2 + grad["3.weight"][:, 0] ** 2)
    np.testing.assert_allclose(t.grad_norm_sphere[at], rho * g, rtol=1e-12)
    np.testing.assert_array_equal(
        t.extra["angular_update/3.weight"][at], ref["layer_angular_update"]["3.weight"][:, 0]
    )
    with open(run / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    idx = np.searchsorted(t.step, [int(r["iter"]) for r in summary])
    np.testing.assert_array_equal(t.loss[idx], [float(r["train_loss"]) for r in summary])
    assert t.meta["lr"] == lr
    one = sio.read(run, group="3.weight")
    np.testing.assert_allclose(one.rho[at], norm["3.weight"][:, 0], rtol=1e-12)


def test_req_logger_config_as_the_repository_writes_it(tmp_path):
    # REQ's own logger configs (shared/utils/base_logger_cfg.yaml) carry comments after the
    # values and a flow-style stats list; read the same as the dumped config of the run
    import shutil

    run = tmp_path / "sgd"
    shutil.copytree(DATA / "req" / "sgd", run)
    (run / "logger_cfg.yaml").write_text(
        "interval: 10\n"
        "stats: [\n"
        '    "layer_norm", "neuron_norm",\n'
        '    "layer_grad_norm", "neuron_grad_norm",\n'
        "]\n\n"
        "disk_save_interval: 10  # Save f\n"
        "disk_stats: all\n"
        "disk_max_channels: 16  # Max channels per layer saved\n"
        "disk_downsample: 10  # \n"
        "disk_reducer: rms\n"
    )
    a, b = sio.read(run), sio.read(DATA / "req" / "sgd")
    np.testing.assert_array_equal(a.step, b.step)
    np.testing.assert_array_equal(a.rho, b.rho)


def test_req_without_torch_matches_stored_float32_values():
    # values of the first rows of layer_norm/0.weight in the genuine sgd file (float32)
    t = sio.read(DATA / "req" / "sgd")
    first = t.extra["rho/0.weight"][~np.isnan(t.extra["rho/0.weight"])][:3]
    np.testing.assert_allclose(first, [5.6863, 3.5580, 3.8165], atol=6e-5)
    assert first.dtype == np.float64 and np.all(first == first.astype(np.float32))


# ------------------------------------------------------------------- ideal gas
def test_idealgas_trace_and_config():
    assert sio.detect_format(IDEAL) == "idealgas"
    assert sio.detect_format(IDEAL / "trace.pt") == "idealgas"
    assert sio.detect_format(IDEAL / "config.json") == "idealgas"
    t = sio.read(IDEAL)
    cfg = json.loads((IDEAL / "config.json").read_text())
    assert t.meta["lr"] == cfg["lr"] == 1.0 and t.meta["wd"] == cfg["wd"] == 0.01
    # config.json names no optimizer; the repository's pretrain builds plain torch.optim.SGD
    assert "optimizer" not in cfg and "momentum" not in cfg
    assert t.meta["optimizer"] == "sgd" and t.meta["momentum"] == 0.0
    assert "torch.optim.SGD" in t.meta["optimizer_source"]
    np.testing.assert_array_equal(t.step, np.arange(1, 21) * 50)
    # the last running radius is the SI norm of the saved model: check it by hand, from the
    # raw float32 storages of the conv weights in the zip (keys from torch's own reader)
    import torch  # the second method for the trace
    from torch.serialization import safe_globals

    with safe_globals([np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]):
        ref = torch.load(IDEAL / "trace.pt", weights_only=True)
    model = ref["model"]
    si = [k for k in model if k.startswith("conv_layers.") and k.endswith(".weight")]
    hand = math.sqrt(sum(float((model[k].double() ** 2).sum()) for k in si))
    assert t.rho[-1] == pytest.approx(hand, rel=1e-7)
    np.testing.assert_array_equal(t.rho, np.array(ref["trace"]["running_radius"], dtype=float))
    np.testing.assert_array_equal(t.loss, ref["trace"]["running_loss"])
    g = np.array(ref["trace"]["stoch_grad_norm"], dtype=float)
    np.testing.assert_allclose(t.grad_norm_sphere, t.rho * g, rtol=1e-12)
    evals = [i for i in cfg["log_iters"] if i <= cfg["num_iters"]]
    idx = np.searchsorted(t.step, evals)
    np.testing.assert_array_equal(t.extra["test_loss (eval)"][idx], ref["trace"]["test_loss"])


def _idealgas_variant(tmp_path, **settings):
    """The genuine run with other settings in its config.json (the trace unchanged)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(IDEAL, run)
    cfg = json.loads((IDEAL / "config.json").read_text())
    cfg.update(settings)
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_idealgas_fixed_elr_and_sphere_modes_read_lr_as_their_loop_does(tmp_path):
    radius = np.array(sio.read(IDEAL).rho)
    # fixed_elr: config lr is the effective LR; the loop sets lr = elr * rho**2 each step
    t = sio.read(_idealgas_variant(tmp_path / "a", opt_mode="fixed_elr", lr=0.02))
    np.testing.assert_array_equal(t.rho, radius)
    np.testing.assert_allclose(t.elr, 0.02, rtol=1e-15)
    np.testing.assert_allclose(t.extra["lr"], 0.02 * radius**2, rtol=1e-15)
    assert "lr" not in t.meta and t.meta["elr"] == 0.02 and t.meta["wd"] == 0.01
    # fixed_sphere: SGD on the sphere of radius si_pnorm_0 at step lr = elr * r0**2
    t = sio.read(_idealgas_variant(tmp_path / "b", opt_mode="fixed_sphere", lr=0.02, wd=None))
    np.testing.assert_allclose(t.elr, 0.02, rtol=1e-15)
    assert t.meta["lr"] == pytest.approx(0.02 * 1.0**2) and t.meta["wd"] == 0.0
    assert t.meta["projected"] and any("sphere of radius 1" in n for n in t.meta["notes"])
    with pytest.raises(ValueError, match="unknown opt_mode 'fixed_moon'"):
        sio.read(_idealgas_variant(tmp_path / "c", opt_mode="fixed_moon"))


# ------------------------------------------------------------ neural mechanics
def test_neural_mechanics_norms_by_hand():
    import h5py  # the test extra installs it

    assert sio.detect_format(NM) == "neural-mechanics"
    t = sio.read(NM)
    # their custom_sgd saves grad_buffer = d_p = g + wd w_{N-1} (the step's direction) and
    # steps w_N = w_{N-1} - lr d_p: the weights and gradient before step 200 sit at 199
    np.testing.assert_array_equal(t.step, [0, 199, 200])
    si = [f"{i}.weight" for i in (1, 4, 7, 10, 13)]
    assert t.meta["groups"] == si
    lr, wd = 0.5, 0.01
    with h5py.File(NM / "feats" / "step0.h5", "r") as h:
        rho0 = math.sqrt(sum(float(np.sum(h["params"][k][()].astype(float) ** 2)) for k in si))
    with h5py.File(NM / "feats" / "step200.h5", "r") as h:
        w = {k: h["params"][k][()].astype(float) for k in si}
        d_p = {k: h["buffers"][f"{k}.grad_buffer"][()].astype(float) for k in si}
        loss = float(h["metrics"]["train_loss"][()][0])
    w_prev = {k: w[k] + lr * d_p[k] for k in si}
    g = {k: d_p[k] - wd * w_prev[k] for k in si}
    rho199 = math.sqrt(sum(float(np.sum(w_prev[k] ** 2)) for k in si))
    rho200 = math.sqrt(sum(float(np.sum(w[k] ** 2)) for k in si))
    gnorm = math.sqrt(sum(float(np.sum(g[k] ** 2)) for k in si))
    np.testing.assert_allclose(t.rho, [rho0, rho199, rho200], rtol=1e-12)
    np.testing.assert_allclose(t.grad_norm_sphere[1], rho199 * gnorm, rtol=1e-12)
    # the recovered gradient is tangent (scale invariance), the saved direction is not
    for k in si:
        cos_g = float(np.sum(g[k] * w_prev[k])) / (np.linalg.norm(g[k]) * np.linalg.norm(w_prev[k]))
        cos_d = float(np.sum(d_p[k] * w_prev[k])) / (
            np.linalg.norm(d_p[k]) * np.linalg.norm(w_prev[k])
        )
        assert abs(cos_g) < 1e-3 and cos_d > 0.2  # (7e-4 for 13.weight, 2e-6 or less else)
    # and the exact norm map of an SI group under SGD holds between the two rows
    # (docs/theory.md: rho'^2 = (1 - lr wd)^2 rho^2 + lr^2 g~^2 / rho^2)
    g_sph = t.grad_norm_sphere[1]
    rho_next = math.sqrt((1 - lr * wd) ** 2 * rho199**2 + lr**2 * g_sph**2 / rho199**2)
    # (to 2e-6: 13.weight's radial gradient, cosine 7e-4, adds -2 lr (1 - lr wd) w.g)
    assert rho_next == pytest.approx(rho200, rel=1e-5)
    assert np.all(np.isnan(t.grad_norm_sphere[[0, 2]]))
    assert math.isnan(t.loss[0]) and t.loss[2] == loss  # step 0's train_loss is a 0 stub
    assert t.meta["lr"] == 0.5 and t.meta["wd"] == 0.01 and t.meta["momentum"] == 0.0


def test_neural_mechanics_momentum_run_keeps_no_gradient(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(NM, run)
    hp = json.loads((NM / "hyperparameters.json").read_text())
    hp.update(momentum=0.9)  # grad_buffer would hold the momentum buffer
    (run / "hyperparameters.json").write_text(json.dumps(hp))
    t = sio.read(run)
    plain = sio.read(NM)
    np.testing.assert_array_equal(t.step, plain.step)
    np.testing.assert_allclose(t.rho, plain.rho, rtol=1e-12)  # w_{N-1} = w_N + lr d_p still
    assert t.grad_norm_sphere is None or np.all(np.isnan(t.grad_norm_sphere))
    assert any("momentum run" in n for n in t.meta["notes"])


def test_neural_mechanics_sgd_names_are_siflow_optimizers(tmp_path):
    # their load.optimizer: "custom_sgd" and "sgd" are SGD with the decay in the gradient;
    # momentum and nesterov come from the settings. Other names are kept as written.
    import shutil

    from siflow.forecast import forecast_next_event

    hp0 = json.loads((NM / "hyperparameters.json").read_text())
    assert hp0["optimizer"] == "custom_sgd" and hp0["momentum"] == 0.0
    t = sio.read(NM)
    assert t.meta["optimizer"] == "sgd"
    assert t.meta["optimizer_source"] == "hyperparameters.json optimizer='custom_sgd'"
    forecast_next_event(t)  # an SGD log: no refusal (no event yet to forecast from)
    cases = [
        ({"momentum": 0.9, "nesterov": True}, "nesterov"),
        ({"momentum": 0.9}, "sgd"),
        ({"optimizer": "sgd"}, "sgd"),
        ({"optimizer": "adam"}, "adam"),
        ({"optimizer": "momentum"}, "momentum"),
        ({"decouple_wd": True}, "custom_sgd"),
        ({"dampening": 0.5}, "custom_sgd"),
    ]
    for i, (change, expected) in enumerate(cases):
        run = tmp_path / f"run{i}"
        shutil.copytree(NM, run)
        (run / "hyperparameters.json").write_text(json.dumps({**hp0, **change}))
        meta = sio.read(run).meta
        assert meta["optimizer"] == expected, change
        assert ("optimizer_source" in meta) == (expected in ("sgd", "nesterov")), change
    with pytest.raises(ValueError, match="names optimizer 'adam'"):
        forecast_next_event(sio.read(tmp_path / "run3"))


def test_neural_mechanics_lr_drops_are_noted(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(NM, run)
    hp = json.loads((NM / "hyperparameters.json").read_text())
    hp.update(lr_drops=[10, 20], lr_drop_rate=0.1)
    (run / "hyperparameters.json").write_text(json.dumps(hp))
    t = sio.read(run)
    assert t.meta["lr_drops"] == [10, 20] and t.meta["lr_drop_rate"] == 0.1
    assert t.meta["lr"] == 0.5  # the initial learning rate, with the note
    note = next(n for n in t.meta["notes"] if "drops the learning rate" in n)
    assert "--schedule step:gamma=0.1" in note
    # the step's lr is unknown: the saved direction is kept as it is, nothing derived
    np.testing.assert_array_equal(t.step, [0, 200])
    import h5py  # the test extra installs it

    si = [f"{i}.weight" for i in (1, 4, 7, 10, 13)]
    assert t.meta["groups"] == si  # the direction's norms are not weight-norm groups
    rho, d_p = [], []
    for f in ("step0.h5", "step200.h5"):
        with h5py.File(NM / "feats" / f, "r") as h:
            rho.append(math.sqrt(sum(np.sum(h["params"][k][()].astype(float) ** 2) for k in si)))
            if "1.weight.grad_buffer" in h["buffers"]:
                d_p.append(np.linalg.norm(h["buffers"]["1.weight.grad_buffer"][()].astype(float)))
    np.testing.assert_allclose(t.rho, rho, rtol=1e-12)
    np.testing.assert_allclose(t.extra["1.weight d_p norm (step direction)"][1], d_p, rtol=1e-12)
    assert not any("drops the learning rate" in n for n in sio.read(NM).meta.get("notes", []))


def test_seed_out_scheduled_run_keeps_its_lr_column(tmp_path):
    # the genuine table with the lr halved from epoch 150 on (a scheduled run): the lr
    # column is kept per row and the name's lr becomes lr_init
    import re

    lines = []
    for line in OUT.read_text().splitlines():
        m = re.match(r"^(\s+)(\d+)(\s+)1\.0000(.*)$", line)
        if m and int(m.group(2)) >= 150:
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}0.5000{m.group(4)}"
        lines.append(line)
    logs = tmp_path / "Experiments" / "ConvNetSI_CIFAR10_noninvlr_0.0" / "logs"
    logs.mkdir(parents=True)
    (logs / OUT.name).write_text("\n".join(lines) + "\n")
    t = sio.read(logs / OUT.name)
    epochs = t.step[:-1]  # full batch: epoch e's lr drives the step from step e
    np.testing.assert_array_equal(t.extra["lr"][:-1], np.where(epochs >= 150, 0.5, 1.0))
    assert t.meta["lr_init"] == 1.0 and "lr" not in t.meta
    assert sio.read(OUT).meta["lr"] == 1.0  # the genuine, unscheduled table


# REQ logs written by REQ's own logger with other configs (tests/data/peer-logs/req/
# make_schedules.py), each with the SI norm before every step computed by a second method
def test_req_first_reducer_rows_sit_at_the_sample_they_keep():
    run = DATA / "req" / "first"  # interval 3, downsample 5, reducer "first"
    ref = np.load(run / "reference.npz")
    t = sio.read(run)
    # row r keeps the sample at iteration 15 r: the parameters after 15 r steps
    np.testing.assert_array_equal(t.step, np.arange(20) * 15)
    np.testing.assert_allclose(t.rho, ref["si_norm"][t.step], rtol=1e-6)
    # one row later or earlier is a different norm (the rows move by 2-9 % per 15 steps)
    assert np.max(np.abs(t.rho[1:] / ref["si_norm"][t.step[1:] - 15] - 1)) > 1e-2


def test_req_piecewise_interval_replays_the_loggers_schedule():
    run = DATA / "req" / "piecewise"  # interval [[0, 2], [30, 5], [103, 10]], T=4, D=2, rms
    ref = np.load(run / "reference.npz")["si_norm"]
    t = sio.read(run)
    # by hand from the logger's rules (a dump after sample i when (i + I) % (4 I) == 0, holding
    # the last 4 samples): every 2 iterations, dumps at 6, 14, 22; sample 24 is then lost, as
    # the dump at 35 (interval 5 from 30) holds 26, 28, 30, 35; dumps at 55, 75, 95; 103 is not
    # a multiple of 10, and the dump at 110 holds 90, 95, 100, 110: row (90, 95) again, left out
    first = [0, 4, 8, 12, 16, 20, 26, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160]
    last = [2, 6, 10, 14, 18, 22, 28, 35, 45, 55, 65, 75, 85, 95, 110, 130, 150, 170]
    np.testing.assert_array_equal(t.step[: len(last)], last)
    expect = np.sqrt((ref[first] ** 2 + ref[last] ** 2) / 2)
    np.testing.assert_allclose(t.rho[: len(last)], expect, rtol=1e-6)
    assert any("repeat samples" in n for n in t.meta["notes"])
    assert t.meta["steps_per_row"] is None


def test_req_replay_of_a_constant_interval_is_the_closed_form():
    from siflow.io.req import replay_samples

    first, last = replay_samples(7, 6, 3, 50)
    np.testing.assert_array_equal(first, np.arange(50) * 21)
    np.testing.assert_array_equal(last, np.arange(50) * 21 + 14)


@pytest.mark.parametrize(
    ("interval", "match"),
    [
        ("interval: [[0, 10], [50]]", "not a list of pairs"),
        ("interval: [[100, 10], [50, 5]]", "increasing iterations"),
        ("interval: [[0, 0]]", "positive intervals"),
        ("interval: every ten", "no usable 'interval'"),
    ],
)
def test_req_bad_interval_is_one_line(tmp_path, interval, match):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(DATA / "req" / "piecewise", run)
    (run / "logger_cfg.yaml").write_text(f"{interval}\ndisk_downsample: 2\ndisk_save_interval: 4\n")
    with pytest.raises(ValueError, match=match):
        sio.read(run)


# ------------------------------------------- seed checkpoints inside epochs (--save_freq_int)
def _seed_intra_epoch_copy(tmp_path, exp_new, batch, report):
    """The genuine run's tree renamed to ``exp_new``, its command.sh's batch size set and
    ``report_epochs`` replaced by ``report`` (rows kept in order), as get_info.py writes a
    --save_freq_int run: checkpoint-e-k.pt as e + k/F and checkpoint-e.pt as e + 1."""
    import re
    import shutil

    exp_old = next((SEED / "info").iterdir()).name
    root = tmp_path / SEED.name
    shutil.copytree(SEED, root)
    for sub in ("info", "checkpoints"):
        (root / sub / exp_old).rename(root / sub / exp_new)
    cmd = root / "checkpoints" / exp_new / "trial_0" / "command.sh"
    text = re.sub(r"--batch_size \d+", f"--batch_size {batch}", cmd.read_text())
    cmd.write_text(text.replace(" --fbgd", "") if "fbgd" not in exp_new else text)
    path = root / "info" / exp_new / "train-tm.npz"
    arrays = dict(np.load(path))
    n = len(report)
    arrays = {
        k: (v[:n] if v.ndim and len(v) == len(arrays["report_epochs"]) else v)
        for k, v in arrays.items()
    }
    arrays["report_epochs"] = np.asarray(report, dtype=np.float64)
    np.savez(path, **arrays)
    return path, arrays


def test_seed_intra_epoch_checkpoints_minibatch(tmp_path):
    # ds500, batch 128: K = 4 steps per epoch; F = 3: train.py saves checkpoint-e-1 after
    # batch 2 (3 * 2 / 4 >= 1) and checkpoint-e-2 after batch 3 (3 * 3 / 4 >= 2)
    exp = "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch300_noschinitscale10.0_noaug"
    report = [1 / 3, 2 / 3, 1.0, 1 + 1 / 3, 1 + 2 / 3, 2.0, 2 + 1 / 3]
    path, arrays = _seed_intra_epoch_copy(tmp_path, exp, 128, report)
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [2, 3, 4, 6, 7, 8, 10])
    np.testing.assert_array_equal(t.loss, arrays["loss"])
    assert t.meta["steps_per_epoch"] == 4
    assert any("inside epochs" in note for note in t.meta["notes"])


def test_seed_intra_epoch_checkpoints_full_batch_repeat_the_epoch_start(tmp_path):
    # full batch: the one update of epoch e comes after its batch, so checkpoint-e-1
    # (reported e + 1/2) holds the weights of checkpoint-(e-1) (reported e): left out
    exp = next((SEED / "info").iterdir()).name
    path, arrays = _seed_intra_epoch_copy(tmp_path, exp, 500, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 1, 2, 3])
    np.testing.assert_array_equal(t.loss, arrays["loss"][[0, 1, 3, 5]])
    assert any("left out" in note for note in t.meta["notes"])


def test_seed_intra_epoch_checkpoints_need_the_steps_per_epoch(tmp_path):
    exp = "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch300_noschinitscale10.0_noaug"
    path, _ = _seed_intra_epoch_copy(tmp_path, exp, 128, [0.5, 1.0, 1.5])
    (path.parents[2] / "checkpoints" / exp / "trial_0" / "command.sh").unlink()
    with pytest.raises(ValueError, match="inside epochs.*steps_per_epoch"):
        sio.read(path)
    t = sio.read(path, steps_per_epoch=6)  # F = 2: after batch 3 of 6
    np.testing.assert_array_equal(t.step, [3, 6, 9])


def test_idealgas_trace_saved_at_a_checkpoint_before_the_end(tmp_path):
    # their loop rewrites trace.pt at every ckpt iteration with the lists so far: cut the
    # genuine trace as a save at iteration 620 holds it (running entries 50 .. 600, the
    # evaluations at log_iters 200, 400, 600), config.json unchanged (num_iters 1000)
    import shutil

    import torch  # writes the trace as their loop does

    run = tmp_path / "run"
    shutil.copytree(IDEAL, run)
    full = torch.load(IDEAL / "trace.pt", weights_only=False)  # genuine test data
    cfg = json.loads((IDEAL / "config.json").read_text())
    logged = [i for i in cfg["log_iters"] if i <= 620]
    assert logged == [200, 400, 600]
    cut = {}
    for key, values in full["trace"].items():
        if key in ("running_radius", "running_loss", "stoch_grad_norm"):
            cut[key] = values[:12]
        elif len(values) == len([i for i in cfg["log_iters"] if i <= 1000]):
            cut[key] = values[: len(logged)]
        else:
            cut[key] = values
    torch.save({"model": full["model"], "trace": cut}, run / "trace.pt")
    t = sio.read(run)
    at = np.searchsorted(t.step, logged)
    np.testing.assert_array_equal(t.step[at], logged)
    np.testing.assert_array_equal(
        t.extra["train_loss (eval)"][at], [float(v) for v in full["trace"]["train_loss"][:3]]
    )
    assert t.step[-1] == 600 and np.isnan(t.extra["train_loss (eval)"]).sum() == t.step.size - 3


# ------------------------------------------------- neural-mechanics: SI tensors of their models
def test_nm_si_tensors_of_their_resnet_and_vgg_names():
    # parameter names and shapes of the repository's models/tinyimagenet_resnet.py (a
    # BasicBlock with a projection shortcut) and models/tinyimagenet_vgg.py (VGG with
    # BatchNorm), written out by hand from their module definitions
    from siflow.io.neural_mechanics import nm_si_tensors

    resnet = {
        "conv1.0.weight": (64, 3, 3, 3),
        "conv1.1.weight": (64,),
        "conv1.1.bias": (64,),
        "conv3_x.0.residual_function.0.weight": (128, 64, 3, 3),
        "conv3_x.0.residual_function.1.weight": (128,),
        "conv3_x.0.residual_function.1.bias": (128,),
        "conv3_x.0.residual_function.3.weight": (128, 128, 3, 3),
        "conv3_x.0.residual_function.4.weight": (128,),
        "conv3_x.0.residual_function.4.bias": (128,),
        "conv3_x.0.shortcut.0.weight": (128, 64, 1, 1),
        "conv3_x.0.shortcut.1.weight": (128,),
        "conv3_x.0.shortcut.1.bias": (128,),
        "fc.weight": (200, 128),
        "fc.bias": (200,),
    }
    si, other = nm_si_tensors(resnet)
    assert sorted(si) == sorted(
        [
            "conv1.0.weight",
            "conv3_x.0.residual_function.0.weight",
            "conv3_x.0.residual_function.3.weight",
            "conv3_x.0.shortcut.0.weight",
        ]
    )
    assert "fc.weight" in other and "conv1.1.weight" in other
    vgg = {
        "features.0.weight": (64, 3, 3, 3),  # conv with bias: the bias cancels in BatchNorm
        "features.0.bias": (64,),
        "features.1.weight": (64,),
        "features.1.bias": (64,),
        "features.4.weight": (128, 64, 3, 3),
        "features.4.bias": (128,),
        "features.5.weight": (128,),
        "features.5.bias": (128,),
        "classifier.0.weight": (256, 512),
        "classifier.0.bias": (256,),
        "classifier.3.weight": (256, 256),
        "classifier.3.bias": (256,),
        "classifier.6.weight": (10, 256),
        "classifier.6.bias": (10,),
    }
    si, _ = nm_si_tensors(vgg)
    assert sorted(si) == ["features.0.weight", "features.4.weight"]
    # torchvision's naming (conv1 -> bn1, downsample.0 -> downsample.1)
    tv = {
        "layer1.0.conv1.weight": (8, 8, 3, 3),
        "layer1.0.bn1.weight": (8,),
        "layer1.0.downsample.0.weight": (8, 4, 1, 1),
        "layer1.0.downsample.1.weight": (8,),
        "fc.weight": (10, 8),
    }
    assert sorted(nm_si_tensors(tv)[0]) == ["layer1.0.conv1.weight", "layer1.0.downsample.0.weight"]
