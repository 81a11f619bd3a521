"""The peer readers (REQ, ideal gas, neural mechanics, the seed paper's npz and console table)
on damaged or odd copies of the genuine files under tests/data/peer-logs: a value of an
unexpected type, a file cut short or garbled, a console table cut inside its last cell.

Each case is built here, in ``tmp_path``, from the genuine files. Bad input gives one
``ValueError`` line naming the file, the problem and the fix (the overlay CLI then prints
that line and exits 2); what is read is compared with the genuine file.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import siflow.io as sio
from siflow._overlay_cli import main as overlay_main
from siflow.io._safe_pickle import load_pickles, load_torch_file

DATA = Path(__file__).parent / "data" / "peer-logs"
REQ_SGD = DATA / "req" / "sgd"
IDEAL = (
    DATA
    / "idealgas"
    / "experiments"
    / "convnet4_cifar10_500obj_ce"
    / "fixed_lr"
    / "lr1.00e+00_wd1.00e-02_seed0"
)
NM = DATA / "neural-mechanics" / "results" / "digits" / "fcbn_lr0.5_wd0.01"
MODEL_DIR = "ConvNetSI_CIFAR10_noninvlr_0.0"
SEED = DATA / "seed" / "Experiments" / MODEL_DIR
EXP = "c4_d3_ds500_lr1.0_wd0.01_mom0.0_corr0.0_epoch300_noschinitscale10.0_noaug_fbgd"
TRAIN = SEED / "info" / EXP / "train-tm.npz"
OUT = SEED / "logs" / f"{EXP}.out"


def _one_line(exc: pytest.ExceptionInfo[ValueError], *parts: str) -> str:
    """The message, checked to be one line holding every part."""
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


# ------------------------------------------------------------------------------ REQ
def _req_copy(tmp_path: Path) -> Path:
    run = tmp_path / "req_run"
    shutil.copytree(REQ_SGD, run)
    return run


def _dump_ends(raw: bytes) -> list[int]:
    """Byte offsets where each appended pickle dump ends (after its STOP), by opcode walk."""
    fh = io.BytesIO(raw)
    ends = []
    while fh.tell() < len(raw):
        for _op in pickletools.genops(fh):
            pass
        ends.append(fh.tell())
    return ends


def _rewrite_dumps(run: Path, edit: Callable[[dict], Any], protocol: int = 4) -> None:
    """dynamics.pkl with ``edit(dump)`` applied to each dump, re-pickled (numpy arrays)."""
    dumps = list(load_pickles(run / "dynamics.pkl"))
    with open(run / "dynamics.pkl", "wb") as fh:
        for dump in dumps:
            pickle.dump(edit(dump), fh, protocol=protocol)


def test_req_tensor_valued_extra_stat_is_a_column(tmp_path):
    # the control: a modified logger's extra per-layer stat of tensors is read as a column
    run = _req_copy(tmp_path)
    _rewrite_dumps(
        run, lambda d: {**d, "layer_weight_rms": {p: v / 10 for p, v in d["layer_norm"].items()}}
    )
    t = sio.read(run)
    rho = sio.read(REQ_SGD).extra["rho/0.weight"]  # float32 values of the genuine file
    want = (rho.astype(np.float32) / np.float32(10)).astype(np.float64)
    assert np.isfinite(want).sum() == 30
    np.testing.assert_array_equal(t.extra["weight_rms/0.weight"], want)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (lambda v: {"mean": v}, "is a dict, not a tensor"),
        (lambda v: {1.0, 2.0}, "is a set, not a tensor"),
        (lambda v: None, "is a NoneType, not a tensor"),
        (lambda v: "0.5", "is a str, not a tensor"),
        (lambda v: np.array(["a", "b"]), "holds <U1 values, not numbers"),
        (lambda v: np.zeros((3, 0)), "has shape (3, 0)"),
    ],
)
def test_req_stat_of_another_type_is_one_line_naming_it(tmp_path, value, kind):
    run = _req_copy(tmp_path)
    _rewrite_dumps(
        run, lambda d: {**d, "layer_custom": {p: value(v) for p, v in d["layer_norm"].items()}}
    )
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(
        exc,
        repr(str(run / "dynamics.pkl")),
        f"dump 1, layer_custom/0.weight {kind}",
        "re-save the dumps without stat 'layer_custom'",
    )


def test_req_protocol_2_set_is_data_not_code(tmp_path):
    # protocol 2 names Python 2's __builtin__.set: mapped as pickle maps it, then the stat
    # is refused for its type, not as code
    run = _req_copy(tmp_path)
    _rewrite_dumps(
        run,
        lambda d: {**d, "layer_tags": {p: {1.0} for p in d["layer_norm"]}},
        protocol=2,
    )
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, "dump 1, layer_tags/0.weight is a set, not a tensor")


def test_req_dump_that_is_not_a_dict_of_dicts(tmp_path):
    run = _req_copy(tmp_path)
    _rewrite_dumps(run, lambda d: {**d, "layer_norm": [1.0, 2.0]})
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, "dump 1, stat 'layer_norm' is a list, not a dict of tensors")


def test_req_truncated_dump_names_the_byte_to_cut_at_and_that_cut_reads(tmp_path):
    run = _req_copy(tmp_path)
    raw = (REQ_SGD / "dynamics.pkl").read_bytes()
    ends = _dump_ends(raw)
    assert len(ends) == 30 and ends[-1] == len(raw)
    (run / "dynamics.pkl").write_bytes(raw[:-7])  # the run killed during its last dump
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    path = run / "dynamics.pkl"
    _one_line(
        exc,
        f"{str(path)!r} is truncated",
        f"dump 30 (from byte {ends[-2]}) is the first bad one",
        f"keep the 29 complete dumps before it (head -c {ends[-2]} {str(path)!r}",
    )
    # the fix the message gives: the first 29 dumps, read as the genuine file's first rows
    cut = run / "dynamics_cut.pkl"
    cut.write_bytes(raw[: ends[-2]])
    t, full = sio.read(cut), sio.read(REQ_SGD)
    rows = np.isfinite(t.extra["rho/0.weight"])
    assert rows.sum() == 29
    at = np.searchsorted(full.step, t.step[rows])
    np.testing.assert_array_equal(t.step[rows], full.step[at])
    np.testing.assert_array_equal(t.rho[rows], full.rho[at])
    assert np.isfinite(full.extra["rho/0.weight"]).sum() == 30


def test_req_garbled_byte_names_the_damaged_dump(tmp_path):
    run = _req_copy(tmp_path)
    raw = bytearray((REQ_SGD / "dynamics.pkl").read_bytes())
    first_end = _dump_ends(bytes(raw))[0]
    raw[first_end + 40] = 0xFF  # an unknown opcode inside dump 2
    (run / "dynamics.pkl").write_bytes(bytes(raw))
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(
        exc,
        f"{str(run / 'dynamics.pkl')!r} is damaged",
        "opcode b'\\xff' unknown",
        f"dump 2 (from byte {first_end}) is the first bad one",
        "keep the 1 complete dump before it",
    )


def test_req_first_dump_cut_says_use_an_intact_copy(tmp_path):
    run = _req_copy(tmp_path)
    raw = (REQ_SGD / "dynamics.pkl").read_bytes()
    (run / "dynamics.pkl").write_bytes(raw[: _dump_ends(raw)[0] // 2])
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, "is truncated", "its first dump is damaged: use an intact copy")


def test_req_summary_with_a_blank_iter_is_refused_naming_the_row(tmp_path):
    run = _req_copy(tmp_path)
    lines = (REQ_SGD / "summary.csv").read_text().splitlines()
    lines[3] = "," + lines[3].split(",", 1)[1]  # data row 3 loses its iteration
    (run / "summary.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, repr(str(run / "summary.csv")), "'iter' of data row 3 is blank", "fix or delete")


# ------------------------------------------------------------------- ideal gas
def _ideal_copy(tmp_path: Path, **settings: Any) -> Path:
    run = tmp_path / "ideal_run"
    shutil.copytree(IDEAL, run)
    cfg = json.loads((IDEAL / "config.json").read_text())
    cfg.update(settings)
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize(
    ("settings", "parts"),
    [
        (
            {"log_iters": None},
            ["'log_iters' must be a list of iterations, got None", "or delete the key"],
        ),
        (
            {"log_iters": [200, "x"]},
            ["'log_iters' entry 1 is 'x', not a whole iteration number"],
        ),
        (
            {"num_iters": "1e3"},
            [
                "'num_iters' must be a positive whole number of iterations, got '1e3'",
                "write it as the number 1e3 (no quotes)",
            ],
        ),
        ({"num_iters": [1000]}, ["'num_iters' must be a positive whole number"]),
        ({"lr": [1.0]}, ["'lr' must be a number, got [1.0]"]),
        ({"wd": "0.01"}, ["'wd' must be a number, got '0.01'", "the number 0.01 (no quotes)"]),
        ({"running_log_freq": "50"}, ["'running_log_freq' must be a positive whole number"]),
        (
            {"opt_mode": "fixed_elr", "lr": -1},
            ["'lr' must be a positive number, got -1"],
        ),
    ],
)
def test_idealgas_config_value_of_another_type_names_the_key(tmp_path, settings, parts):
    run = _ideal_copy(tmp_path, **settings)
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, repr(str(run / "config.json")), *parts)


def test_idealgas_num_iters_as_a_json_number_in_e_notation_reads_as_the_genuine(tmp_path):
    t = sio.read(_ideal_copy(tmp_path, num_iters=1e3))  # json: 1000.0
    ref = sio.read(IDEAL)
    np.testing.assert_array_equal(t.step, ref.step)
    np.testing.assert_array_equal(t.extra["test_loss (eval)"], ref.extra["test_loss (eval)"])


def test_idealgas_run_directory_with_a_cut_trace_says_truncated(tmp_path):
    run = _ideal_copy(tmp_path)
    raw = (IDEAL / "trace.pt").read_bytes()
    (run / "trace.pt").write_bytes(raw[: len(raw) // 2])
    assert sio.detect_format(run) == "idealgas"
    for kwargs in ({}, {"fmt": "idealgas"}):
        with pytest.raises(ValueError) as exc:
            sio.read(run, **kwargs)
        _one_line(
            exc,
            repr(str(run / "trace.pt")),
            "has no readable zip directory (truncated, or still being written)",
            "use an intact copy",
        )
    (run / "trace.pt").write_bytes(b"")  # stopped as the save began
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, repr(str(run / "trace.pt")), "is empty")


def test_torch_file_with_a_cut_pickle_names_the_file(tmp_path):
    # a zip whose data.pkl is cut short: the pickle's own error, with the file and the fix
    import zipfile

    path = tmp_path / "trace.pt"
    with zipfile.ZipFile(IDEAL / "trace.pt") as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[: len(data) // 2] if name.endswith("data.pkl") else data)
    with pytest.raises(ValueError) as exc:
        load_torch_file(path)
    _one_line(exc, f"{str(path)!r} is truncated", "re-save it from the run (torch.save)")


# ----------------------------------------------------------- neural mechanics
def _nm_copy(tmp_path: Path) -> Path:
    run = tmp_path / "nm_run"
    shutil.copytree(NM, run)
    return run


def _edit_h5(path: Path, edit: Callable[[Any], Any]) -> None:
    import h5py

    with h5py.File(path, "a") as h:
        edit(h)


@pytest.mark.parametrize(
    ("edit", "part"),
    [
        (
            lambda h: h["params"].create_group("extra").create_dataset("x", data=[1.0]),
            "params/extra is a group, not a dataset",
        ),
        (
            lambda h: h["params"].create_dataset("odd", data="text"),
            "params/odd holds |S4 values, not numbers",
        ),
        (
            lambda h: (h.__delitem__("buffers"), h.create_dataset("buffers", data=[1.0])),
            "buffers is a dataset, not a group",
        ),
        (lambda h: h.__delitem__("params"), "has no 'params' group"),
        (
            lambda h: h["metrics"].create_group("nested"),
            "metrics/nested is a group, not a dataset",
        ),
    ],
)
def test_nm_step_file_of_another_layout_is_one_line(tmp_path, edit, part):
    run = _nm_copy(tmp_path)
    step = run / "feats" / "step200.h5"
    _edit_h5(step, edit)
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, repr(str(step)), part, "re-run extract.py on the checkpoint")


def test_nm_text_metric_is_missing_with_a_note(tmp_path):
    run = _nm_copy(tmp_path)

    def text_loss(h):
        del h["metrics"]["train_loss"]
        h["metrics"]["train_loss"] = "nan"

    _edit_h5(run / "feats" / "step200.h5", text_loss)
    t, ref = sio.read(run), sio.read(NM)
    np.testing.assert_array_equal(t.step, ref.step)
    assert ref.loss[-1] > 0 and np.all(np.isnan(t.loss))
    np.testing.assert_array_equal(t.rho, ref.rho)
    assert "metric 'train_loss' in step200.h5 is not one number" in " ".join(t.meta["notes"])


@pytest.mark.parametrize(
    ("key", "value"), [("lr", [0.5]), ("lr", "0.5"), ("wd", {"value": 0.01}), ("momentum", True)]
)
def test_nm_hyperparameter_of_another_type_names_the_key(tmp_path, key, value):
    run = _nm_copy(tmp_path)
    hp = json.loads((NM / "hyperparameters.json").read_text())
    hp[key] = value
    (run / "hyperparameters.json").write_text(json.dumps(hp))
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(
        exc,
        repr(str(run / "hyperparameters.json")),
        f"{key!r} must be a number, got {value!r}",
        "as a JSON number",
    )


def test_nm_hyperparameters_not_an_object(tmp_path):
    run = _nm_copy(tmp_path)
    (run / "hyperparameters.json").write_text("[0.5, 0.01]")
    with pytest.raises(ValueError) as exc:
        sio.read(run)
    _one_line(exc, "holds a JSON list, not the object of settings")


# ------------------------------------------------------------------ seed paper
def _seed_tree(tmp_path: Path, model_dir: str = MODEL_DIR) -> Path:
    """``Experiments/<model_dir>`` holding the genuine run's command.sh."""
    base = tmp_path / "Experiments" / model_dir
    trial = base / "checkpoints" / EXP / "trial_0"
    trial.mkdir(parents=True)
    shutil.copy(SEED / "checkpoints" / EXP / "trial_0" / "command.sh", trial / "command.sh")
    return base


def _hand_table(text: str) -> dict[int, float]:
    """``{ep: tr_loss}`` of the console table, by a regex on each row."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s", line)
        if m:
            rows[int(m.group(1))] = float(m.group(3))
    return rows


def test_seed_out_last_line_cut_inside_a_cell_is_left_out_with_a_note(tmp_path):
    text = OUT.read_text()
    i = text.index("\n 150 ")
    cut = text[: i + 1] + " 150    1.0000     0"  # tr_loss 0.6826 cut to "0" by the kill
    logs = _seed_tree(tmp_path) / "logs"
    logs.mkdir()
    (logs / OUT.name).write_text(cut)
    t = sio.read(logs / OUT.name)
    hand = _hand_table(text)
    assert hand[150] == 0.6826
    # full batch: epoch e's tr_loss at step e (epoch 149 has no te_* for step 150)
    np.testing.assert_array_equal(t.step, np.arange(150))
    np.testing.assert_array_equal(t.loss, [hand[e] for e in range(150)])
    note = next(n for n in t.meta["notes"] if "has no line end" in n)
    assert "'150    1.0000     0'" in note and "left out" in note
    assert "end the file with a line break to read it" in note
    # the way back for a whole row that lost only its line break: add the line break
    (logs / OUT.name).write_text(text[: text.index("\n", i + 1) + 1])
    back = sio.read(logs / OUT.name)
    np.testing.assert_array_equal(back.loss[:151], [hand[e] for e in range(151)])
    assert not any("has no line end" in n for n in back.meta["notes"])
    # the genuine table ends with a line end: all its rows, no such note
    full = sio.read(OUT)
    assert full.loss[150] == 0.6826
    assert not any("has no line end" in n for n in full.meta["notes"])


def test_seed_out_cut_after_the_table_loses_no_row(tmp_path):
    text = OUT.read_text()
    assert text.endswith("model  0  done\n")
    logs = _seed_tree(tmp_path) / "logs"
    logs.mkdir()
    (logs / OUT.name).write_text(text[: -len("  done\n")])  # "model  0", no line end
    t, full = sio.read(logs / OUT.name), sio.read(OUT)
    np.testing.assert_array_equal(t.loss, full.loss)
    assert t.meta["notes"] == full.meta["notes"]


def _renamed_npz(info: Path) -> list[str]:
    """The genuine train-tm.npz with its layers renamed features.* / classifier.*."""
    info.mkdir(parents=True)
    with np.load(TRAIN) as raw:
        arrays = {
            k.replace("conv_layers", "features").replace("linear_layers", "classifier"): raw[k]
            for k in raw.files
        }
    np.savez(info / "train-tm.npz", **arrays)
    return sorted(k for k in arrays if k.endswith("_norm") and k != "params_norm")


def test_seed_npz_tensors_outside_the_model_rule_are_named_in_the_note(tmp_path):
    info = _seed_tree(tmp_path) / "info" / EXP
    found = _renamed_npz(info)
    t = sio.read(info / "train-tm.npz")
    assert t.rho is None and t.meta["si_tensors"] == []
    note = t.meta["notes"][-1]
    assert "no per-tensor norms" not in note
    shown = re.search(r"per-tensor norms \(([^)]*)\)", note).group(1)
    assert shown.startswith("features.0.weight_norm, features.3.weight_norm")
    assert all(name in found for name in re.findall(r"[\w.]+_norm", shown))
    assert f"({len(found)} in all)" in note
    assert "--model ConvNetSI: conv_layers.{0,3,7,11}" in note
    assert "correct --model in its command.sh" in note


def test_seed_npz_renamed_layers_of_an_unknown_model_use_the_generic_rule(tmp_path):
    # the control: no model rule (no command.sh, folder MyNet_...): features.* are SI
    info = tmp_path / "Experiments" / "MyNet_CIFAR10" / "info" / EXP
    _renamed_npz(info)
    t = sio.read(info / "train-tm.npz")
    si = [f"features.{i}.weight" for i in (0, 3, 7, 11)]
    assert t.meta["groups"] == si
    with np.load(TRAIN) as raw:
        hand = np.sqrt(sum(raw[f"conv_layers.{i}.weight_norm"] ** 2 for i in (0, 3, 7, 11)))
    np.testing.assert_allclose(t.rho, hand, rtol=1e-12)


def test_seed_npz_si_norm_one_entry_short_is_refused(tmp_path):
    info = _seed_tree(tmp_path) / "info" / EXP
    info.mkdir(parents=True)
    with np.load(TRAIN) as raw:
        arrays = {k: raw[k] for k in raw.files}
    arrays["conv_layers.3.weight_norm"] = arrays["conv_layers.3.weight_norm"][:-1]
    np.savez(info / "train-tm.npz", **arrays)
    with pytest.raises(ValueError) as exc:
        sio.read(info / "train-tm.npz")
    n = arrays["report_epochs"].size
    _one_line(
        exc,
        f"'conv_layers.3.weight_norm' has {n - 1} entries but 'report_epochs' {n}",
        "run get_info.py again",
    )


def test_seed_npz_text_norm_key_is_not_a_tensor(tmp_path):
    info = tmp_path / "Experiments" / "MyNet_CIFAR10" / "info" / EXP
    info.mkdir(parents=True)
    with np.load(TRAIN) as raw:
        arrays = {k: raw[k] for k in raw.files}
    arrays["notes_norm"] = np.array(["l2"] * arrays["report_epochs"].size)
    np.savez(info / "train-tm.npz", **arrays)
    t = sio.read(info / "train-tm.npz")
    assert "notes" not in t.meta["groups"] + t.meta["not_si"]
    assert t.meta["groups"] == [f"conv_layers.{i}.weight" for i in (0, 3, 7, 11)]


# --------------------------------------------------------------- overlay CLI
def _damaged_inputs(tmp_path: Path) -> dict[str, Path]:
    req = _req_copy(tmp_path / "a")
    _rewrite_dumps(
        req, lambda d: {**d, "layer_custom": {p: {"m": v} for p, v in d["layer_norm"].items()}}
    )
    cut = _req_copy(tmp_path / "b")
    (cut / "dynamics.pkl").write_bytes((REQ_SGD / "dynamics.pkl").read_bytes()[:-7])
    ideal = _ideal_copy(tmp_path / "c", log_iters=None)
    trace = _ideal_copy(tmp_path / "d")
    (trace / "trace.pt").write_bytes((IDEAL / "trace.pt").read_bytes()[:5000])
    nm = _nm_copy(tmp_path / "e")
    _edit_h5(nm / "feats" / "step200.h5", lambda h: h["params"].create_group("extra"))
    return {"req": req, "cut": cut, "ideal": ideal, "trace": trace, "nm": nm}


@pytest.mark.parametrize(
    ("case", "part"),
    [
        ("req", "layer_custom/0.weight is a dict, not a tensor"),
        ("cut", "dynamics.pkl' is truncated"),
        ("ideal", "'log_iters' must be a list of iterations"),
        ("trace", "trace.pt' begins as a zip-format torch.save file"),
        ("nm", "params/extra is a group, not a dataset"),
    ],
)
def test_overlay_cli_prints_one_line_and_exits_2(tmp_path, capsys, case, part):
    path = _damaged_inputs(tmp_path)[case]
    code = overlay_main([str(path), "--wd", "0.01", "--out", str(tmp_path / "o"), "--no-figure"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and part in lines[0]
    assert not (tmp_path / "o").exists()


def test_seed_npz_key_of_another_length_is_noted(tmp_path):
    # one entry short: not read, and the overlay's reader lines say so
    info = _seed_tree(tmp_path) / "info" / EXP
    info.mkdir(parents=True)
    npz = info / "train-tm.npz"
    with np.load(SEED / "info" / EXP / "train-tm.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["loss"] = arrays["loss"][:-1]
    np.savez(npz, **arrays)
    t = sio.read(npz)
    assert t.loss is None and t.meta["skipped_keys"] == ["loss"]
    n = arrays["report_epochs"].size
    assert (
        f"1 key(s) not read (loss): not one number per checkpoint ({n} checkpoints)"
        in (t.meta["notes"])
    )
