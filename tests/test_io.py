"""siflow.io: CSV / JSON-lines / siflow files, column detection, mapping, errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import siflow.io as sio
from siflow.trajectory import Trajectory


# ------------------------------------------------------------------ a real SI run
def _rayleigh_run(n_steps: int = 60, lr: float = 0.1, wd: float = 0.01, seed: int = 0):
    """SGD+WD on the scale-invariant Rayleigh quotient L(w) = w'Aw / w'w.

    Returns per-step rho, raw |grad L(w)|, the sphere gradient norm computed
    directly at w/|w| (independent of the reader's conversion), loss and angle.
    """
    rng = np.random.default_rng(seed)
    d = 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = q @ np.diag(np.linspace(0.5, 3.0, d)) @ q.T
    w = rng.normal(size=d) * 3.0

    def grad(v):
        vv = v @ v
        return 2.0 * (a @ v * vv - (v @ a @ v) * v) / vv**2

    out = {k: [] for k in ("rho", "graw", "gsphere", "loss", "angle")}
    for _ in range(n_steps):
        rho = np.linalg.norm(w)
        g = grad(w)
        u = w / rho
        w_next = (1 - lr * wd) * w - lr * g
        out["rho"].append(rho)
        out["graw"].append(np.linalg.norm(g))
        out["gsphere"].append(np.linalg.norm(grad(u)))
        out["loss"].append(w @ a @ w / (w @ w))
        cosang = w @ w_next / (rho * np.linalg.norm(w_next))
        out["angle"].append(math.acos(min(1.0, cosang)))
        w = w_next
    return {k: np.array(v) for k, v in out.items()}


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------- CSV
def test_csv_common_spellings_and_raw_grad_conversion(tmp_path):
    run = _rayleigh_run()
    n = run["rho"].size
    path = tmp_path / "train_log.csv"
    _write_csv(
        path,
        ["iteration", "train_loss", "weight_norm", "gnorm", "angle", "lr", "acc"],
        [
            [i, run["loss"][i], run["rho"][i], run["graw"][i], run["angle"][i], 0.1, 0.5]
            for i in range(n)
        ],
    )
    t = sio.read(path)
    assert t.meta["format"] == "csv"
    np.testing.assert_array_equal(t.step, np.arange(n))
    np.testing.assert_allclose(t.rho, run["rho"], rtol=1e-12)
    np.testing.assert_allclose(t.loss, run["loss"], rtol=1e-12)
    # rho * |grad L(w)| must equal |grad L(w/|w|)| computed at the unit vector
    np.testing.assert_allclose(t.grad_norm_sphere, run["gsphere"], rtol=1e-9)
    assert "rho * |grad L(w)|" in t.meta["grad_norm"]
    np.testing.assert_allclose(t.angular_update, run["angle"], rtol=1e-12)
    # constant lr column -> meta; elr = lr / rho^2 derived
    assert t.meta["lr"] == 0.1
    np.testing.assert_allclose(t.elr, 0.1 / run["rho"] ** 2, rtol=1e-12)
    np.testing.assert_allclose(t.extra["acc"], 0.5)
    np.testing.assert_allclose(t.extra["gnorm"], run["graw"], rtol=1e-12)
    assert t.meta["columns"]["step"] == "iteration"
    assert t.meta["columns"]["grad_norm_raw"] == "gnorm"


def test_csv_angle_matches_exact_map_formula(tmp_path):
    """tan(angle) = elr * g~ / (1 - lr*wd) holds on the converted columns (theory sec. 1)."""
    lr, wd = 0.1, 0.01
    run = _rayleigh_run(lr=lr, wd=wd)
    path = tmp_path / "log.csv"
    _write_csv(
        path,
        ["step", "loss", "si_norm", "grad_norm"],
        [[i, run["loss"][i], run["rho"][i], run["graw"][i]] for i in range(run["rho"].size)],
    )
    t = sio.read_csv(path)
    t.meta["lr"] = lr
    t = t.fill_derived()
    np.testing.assert_allclose(
        np.arctan(t.elr * t.grad_norm_sphere / (1 - lr * wd)), run["angle"], rtol=1e-8
    )


def test_csv_grad_norm_sphere_column_is_not_converted(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "rho", "grad_norm_sphere"], [[0, 2.0, 0.5], [1, 3.0, 0.7]])
    t = sio.read(path)
    np.testing.assert_allclose(t.grad_norm_sphere, [0.5, 0.7])
    assert "sphere" in t.meta["grad_norm"]


def test_mapping_grad_norm_sphere_vs_raw(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["t", "my_norm", "g"], [[0, 2.0, 0.5], [5, 4.0, 0.25]])
    raw = sio.read(path, mapping=["step=t", "rho=my_norm", "grad_norm_raw=g"])
    np.testing.assert_allclose(raw.grad_norm_sphere, [1.0, 1.0])
    sph = sio.read(path, mapping={"step": "t", "rho": "my_norm", "grad_norm_sphere": "g"})
    np.testing.assert_allclose(sph.grad_norm_sphere, [0.5, 0.25])
    np.testing.assert_array_equal(raw.step, [0, 5])


def test_raw_grad_without_rho_stays_in_extra(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "loss", "grad_norm"], [[0, 1.0, 0.5], [1, 0.9, 0.4]])
    t = sio.read(path)
    assert t.grad_norm_sphere is None
    np.testing.assert_allclose(t.extra["grad_norm"], [0.5, 0.4])
    assert "no rho" in t.meta["grad_norm"]


def test_raw_sharpness_moves_to_sphere(tmp_path):
    # hess L(w) = hess L(w/|w|) / |w|^2, so S_sphere = rho^2 * lambda_max(raw)
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "rho", "sharpness"], [[0, 2.0, 5.0], [1, 3.0, 1.0]])
    t = sio.read(path)
    np.testing.assert_allclose(t.sharpness_sphere, [20.0, 9.0])


def test_raw_sharpness_at_a_minimum_equals_riemannian_closed_form(tmp_path):
    """Rayleigh quotient L = w'Aw/w'w at w = rho*v1 (its minimum on the sphere): the
    Riemannian Hessian has eigenvalues 2(a_i - a_1), so S = 2(a_max - a_min).
    The log holds lambda_max of the ambient Hessian by finite differences at |w| = rho."""
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    eig = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
    a = q @ np.diag(eig) @ q.T

    def grad(v):
        vv = v @ v
        return 2.0 * (a @ v * vv - (v @ a @ v) * v) / vv**2

    rows = []
    for i, rho in enumerate((0.5, 2.0, 7.0)):
        w = rho * q[:, 0]
        h = 1e-6 * rho
        hess = np.column_stack([(grad(w + h * e) - grad(w - h * e)) / (2 * h) for e in np.eye(5)])
        rows.append([i, rho, np.linalg.eigvalsh((hess + hess.T) / 2).max()])
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "rho", "lambda_max"], rows)
    t = sio.read(path)
    np.testing.assert_allclose(t.sharpness_sphere, 2 * (3.0 - 0.5), rtol=1e-6)
    assert "critical points" in t.meta["sharpness"]


def test_epoch_column_with_and_without_steps_per_epoch(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["epoch", "loss", "norm"], [[1, 1.0, 3.0], [2, 0.5, 2.9], [4, 0.4, 2.8]])
    t = sio.read(path, steps_per_epoch=391)
    np.testing.assert_array_equal(t.step, [391, 782, 1564])
    assert t.meta["steps_per_epoch"] == 391 and t.meta["time_unit"] == "step"
    e = sio.read(path)
    np.testing.assert_array_equal(e.step, [1, 2, 4])
    assert e.meta["time_unit"] == "epoch" and e.meta["steps_per_epoch"] is None
    assert "epochs are used as steps" in e.meta["time_note"]


def test_fractional_epochs_need_steps_per_epoch(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["epoch", "loss"], [[0.5, 1.0], [1.0, 0.5]])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        sio.read(path)
    t = sio.read(path, steps_per_epoch=100)
    np.testing.assert_array_equal(t.step, [50, 100])


def test_varying_lr_column_gives_per_row_elr(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "rho", "learning_rate"], [[0, 2.0, 0.4], [1, 2.0, 0.2]])
    t = sio.read(path)
    assert t.lr is None
    np.testing.assert_allclose(t.elr, [0.1, 0.05])
    np.testing.assert_allclose(t.extra["learning_rate"], [0.4, 0.2])
    assert "varies" in t.meta["lr_schedule"]


def test_tab_separated_and_comment_lines(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("# written by my script\nstep\tloss\tw_norm\n0\t1.5\t2.0\n3\t1.0\t2.5\n")
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 3])
    np.testing.assert_allclose(t.rho, [2.0, 2.5])


# -------------------------------------------------------------------- row policy
def test_rows_without_step_or_values_are_dropped_and_counted(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss,norm\n0,1.0,2.0\n,0.9,2.0\n2,,\n3,nan,1.5\n")
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 3])
    assert t.meta["dropped_rows"] == 2
    assert np.isnan(t.loss[1])  # a NaN value in a kept row stays (it may be a divergence)


def test_all_rows_blank_raises(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n,1.0\n,2.0\n")
    with pytest.raises(ValueError, match="no row has both a step and a value"):
        sio.read(path)


@pytest.mark.parametrize(
    ("body", "word"),
    [("0,1\n1,2\n1,3\n", "repeats"), ("0,1\n5,2\n3,3\n", "goes back")],
)
def test_duplicate_or_decreasing_steps_raise(tmp_path, body, word):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n" + body)
    with pytest.raises(ValueError, match=word) as info:
        sio.read(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------- per group
def test_groups_default_total_pick_and_sum(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(
        path,
        ["step", "norm/conv1", "norm/conv2", "grad_norm/conv1", "grad_norm/conv2", "params_norm"],
        [[0, 3.0, 4.0, 0.1, 0.2, 5.5], [1, 6.0, 8.0, 0.3, 0.4, 10.5]],
    )
    t = sio.read(path)  # the total column wins by default
    np.testing.assert_allclose(t.rho, [5.5, 10.5])
    assert set(t.meta["groups"]) == {"conv1", "conv2"}
    np.testing.assert_allclose(t.extra["norm/conv1"], [3.0, 6.0])
    c2 = sio.read(path, group="conv2")
    np.testing.assert_allclose(c2.rho, [4.0, 8.0])
    # the group's own raw gradient norm, times the group's rho
    np.testing.assert_allclose(c2.grad_norm_sphere, [0.8, 3.2])
    s = sio.read(path, group="sum")
    np.testing.assert_allclose(s.rho, [5.0, 10.0])
    np.testing.assert_allclose(s.grad_norm_sphere, [5.0 * math.hypot(0.1, 0.2), 10.0 * 0.5])
    assert s.meta["group"] == "sum"


def test_sum_ignores_per_group_gradients_missing_a_group(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(
        path,
        ["step", "norm/a", "norm/b", "grad_norm/a", "grad_norm"],
        [[0, 3.0, 4.0, 0.1, 0.25]],
    )
    s = sio.read(path, group="sum")
    # grad_norm/b is missing: the total column is used, not sqrt(0.1^2)
    np.testing.assert_allclose(s.grad_norm_sphere, [5.0 * 0.25])


def test_several_groups_without_total_ask_for_group(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "layer1_norm", "layer2_norm", "grad_norm"], [[0, 1.0, 2.0, 0.5]])
    with pytest.raises(ValueError, match="group='sum'"):
        sio.read(path)
    t = sio.read(path, group="layer2")
    np.testing.assert_allclose(t.rho, [2.0])
    # the total gradient norm is not paired with one layer's norm
    assert t.grad_norm_sphere is None
    s = sio.read(path, group="sum")
    np.testing.assert_allclose(s.rho, [math.sqrt(5.0)])
    np.testing.assert_allclose(s.grad_norm_sphere, [math.sqrt(5.0) * 0.5])
    with pytest.raises(ValueError, match="no SI group 'conv9'"):
        sio.read(path, group="conv9")


# ------------------------------------------------------------------------ mapping
def test_parse_mapping():
    assert sio.parse_mapping(["rho=model/si_norm", "grad_norm=gn", "sharpness="]) == {
        "rho": "model/si_norm",
        "grad_norm_raw": "gn",
        "sharpness_raw": None,
    }
    assert sio.parse_mapping("step=it,loss=l") == {"step": "it", "loss": "l"}
    with pytest.raises(ValueError, match="field=column"):
        sio.parse_mapping(["rho"])
    with pytest.raises(ValueError, match="unknown"):
        sio.parse_mapping(["bogus=x"])


def test_mapping_to_missing_column_names_the_fix(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "loss"], [[0, 1.0]])
    with pytest.raises(ValueError, match=r"mapping=\{.rho.: .<column>.\}"):
        sio.read(path, mapping={"rho": "nope"})


def test_mapping_empty_switches_detection_off(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["step", "loss", "norm"], [[0, 1.0, 2.0]])
    t = sio.read(path, mapping=["rho="])
    assert t.rho is None
    np.testing.assert_allclose(t.extra["norm"], [2.0])


def test_no_step_column_error_names_map(tmp_path):
    path = tmp_path / "log.csv"
    _write_csv(path, ["time", "loss"], [[0, 1.0]])
    with pytest.raises(ValueError, match=r"no step column.*mapping=\{.step.: .<column>.\}"):
        sio.read(path)


# -------------------------------------------------------------------------- JSONL
def test_jsonl_nested_and_sparse_records(tmp_path):
    run = _rayleigh_run(n_steps=20)
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as fh:
        for i in range(20):
            rec = {"step": i, "loss": run["loss"][i], "si": {"norm": run["rho"][i]}}
            rec["grad_norm"] = run["graw"][i]
            rec["phase"] = "train"
            if i % 5 == 0:
                rec["eval"] = {"acc": 0.1 * i}
            fh.write(json.dumps(rec) + "\n")
    t = sio.read(path, mapping={"rho": "si/norm"})
    assert t.meta["format"] == "jsonl"
    np.testing.assert_allclose(t.grad_norm_sphere, run["gsphere"], rtol=1e-9)
    acc = t.extra["eval/acc"]
    np.testing.assert_allclose(acc[::5], [0.0, 0.5, 1.0, 1.5])
    assert np.isnan(acc[1])
    assert t.meta["ignored_text_columns"] == ["phase"]


def test_json_list_file(tmp_path):
    path = tmp_path / "log.json"
    path.write_text(json.dumps([{"iter": 0, "loss": 2.0}, {"iter": 10, "loss": 1.0}]))
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 10])


def test_jsonl_train_and_eval_records_of_one_step_merge(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [
        {"step": 0, "loss": 2.0, "norm": 5.0},
        {"step": 10, "loss": 1.5, "norm": 4.9},
        {"step": 10, "val_loss": 1.7},
        {"step": 20, "loss": 1.2, "norm": 4.8},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 10, 20])
    np.testing.assert_allclose(t.loss, [2.0, 1.5, 1.2])
    np.testing.assert_allclose(t.extra["val_loss"], [np.nan, 1.7, np.nan])
    assert t.meta["merged_rows"] == 1
    # the same step with a different loss is a true duplicate
    lines.append({"step": 20, "loss": 9.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match=r"step 20 repeats with different 'loss' values.*rows 4-5"):
        sio.read(path)


def test_huggingface_trainer_state_log_history(tmp_path):
    """trainer_state.json as transformers.Trainer writes it (indent=2, log_history)."""
    history = []
    for step in range(100, 1600, 100):
        lr = 5e-5 * (1 - step / 1500)
        history.append(
            {
                "epoch": step / 500,
                "grad_norm": 1.0 + step / 1e4,
                "learning_rate": lr,
                "loss": 0.7 - step / 1e4,
                "step": step,
            }
        )
        if step % 500 == 0:
            history.append(
                {"epoch": step / 500, "eval_loss": 0.5, "eval_runtime": 1.2, "step": step}
            )
    history.append(
        {"epoch": 3.0, "step": 1500, "total_flos": 1e15, "train_loss": 0.6, "train_runtime": 100.0}
    )
    state = {
        "best_metric": None,
        "epoch": 3.0,
        "global_step": 1500,
        "log_history": history,
        "logging_steps": 100,
        "max_steps": 1500,
        "num_train_epochs": 3,
        "train_batch_size": 8,
        "trial_name": None,
    }
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state, indent=2, sort_keys=True))
    assert sio.detect_format(path) == "jsonl"
    t = sio.read(path)
    steps = np.arange(100, 1600, 100)
    np.testing.assert_array_equal(t.step, steps)
    np.testing.assert_allclose(t.loss, 0.7 - steps / 1e4)
    assert t.meta["merged_rows"] == 4 and t.meta["records_key"] == "log_history"
    assert t.meta["train_batch_size"] == 8 and t.meta["max_steps"] == 1500
    assert t.lr is None and "varies" in t.meta["lr_schedule"]
    np.testing.assert_allclose(t.extra["eval_loss"][[4, 9, 14]], 0.5)
    np.testing.assert_allclose(t.extra["train_loss"][-1], 0.6)


def test_jsonl_truncated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    with pytest.raises(ValueError, match="line 2.*truncated"):
        sio.read(path)


def test_jsonl_non_object_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n[1, 2]\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="line 2 is a JSON list"):
        sio.read(path)


# -------------------------------------------------------------------- siflow files
@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_siflow_files_read_as_they_are(tmp_path, suffix):
    t0 = Trajectory(
        step=np.array([0, 10, 20]),
        rho=[2.0, 1.9, 1.8],
        loss=[1.0, 0.5, 0.25],
        extra={"acc": [0.1, 0.2, 0.3]},
        meta={"lr": 0.1, "wd": 1e-3, "source": "simulate"},
    )
    path = t0.save(tmp_path / f"traj{suffix}")
    assert sio.detect_format(path) == "siflow"
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, t0.step)
    np.testing.assert_allclose(t.rho, t0.rho)
    np.testing.assert_allclose(t.extra["acc"], [0.1, 0.2, 0.3])
    assert t.meta["source"] == "simulate" and t.meta["lr"] == 0.1
    with pytest.raises(ValueError, match="read as it is"):
        sio.read(path, mapping={"rho": "loss"})


def test_siflow_npz_corrupt_is_value_error(tmp_path):
    t0 = Trajectory(step=np.arange(50), rho=np.linspace(1, 2, 50))
    path = t0.save(tmp_path / "traj.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path.name)):
        sio.read(path)


# ----------------------------------------------------------- detection and errors
def test_detect_format_rules(tmp_path):
    (tmp_path / "a.csv").write_text("step,loss\n0,1\n")
    (tmp_path / "a.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "noext").write_text('{"step": 0, "loss": 1}\n')
    (tmp_path / "wb.csv").write_text('"Step","run-a - loss","run-a - loss__MIN"\n0,1,1\n')
    (tmp_path / "pl.csv").write_text("epoch,step,train_loss,val_loss\n0,0,1.0,\n0,0,,2.0\n")
    assert sio.detect_format(tmp_path / "a.csv") == "csv"
    assert sio.detect_format(tmp_path / "a.jsonl") == "jsonl"
    assert sio.detect_format(tmp_path / "noext") == "jsonl"
    assert sio.detect_format(tmp_path / "wb.csv") == "wandb"
    assert sio.detect_format(tmp_path / "pl.csv") == "lightning"


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        sio.read(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError):
        sio.read_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"\x00\x01\x02binary\xff", "binary"),
        (b"step,loss\n", "no data rows"),
        (b"step,loss\n0,1\n1,2\n2", "truncated"),
        (b"\xff\xfe step,loss\n", "UTF-8"),
        (b"a,b\n1,2,3\n4,5\n", "cells"),
    ],
)
def test_bad_text_files_raise_value_error_naming_file(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        sio.read(path)
    assert "bad.csv" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        sio.read_csv(path)


def test_bad_fmt_and_unknown_npz(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("step,loss\n0,1\n")
    with pytest.raises(ValueError, match="fmt must be one of"):
        sio.read(path, fmt="parquet")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="report_epochs"):
        sio.read(other)


def test_directory_without_logs(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        sio.read(tmp_path)
    with pytest.raises(ValueError, match="directory"):
        sio.read_csv(tmp_path)


def test_a_new_format_is_one_registry_line(tmp_path, monkeypatch):
    from pathlib import Path

    def read_toy(path, *, mapping=None, scale=1.0):
        rows = Path(path).read_text().split()
        return Trajectory(step=np.arange(len(rows)), rho=[scale * float(r) for r in rows])

    def detect_toy(path, head):
        return Path(path).suffix == ".toy"

    # one line: a registry entry (first, so that its rule is tried first)
    monkeypatch.setattr(sio, "FORMATS", {"toy": sio.Format(read_toy, detect_toy), **sio.FORMATS})
    path = tmp_path / "run.toy"
    path.write_text("2.0 1.5 1.0")
    assert sio.detect_format(path) == "toy"
    np.testing.assert_array_equal(sio.read(path, scale=2.0).rho, [4.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="group= does not apply to fmt='toy'"):
        sio.read(path, group="conv1")
    assert all(callable(f.read) and callable(f.detect) for f in sio.FORMATS.values())
