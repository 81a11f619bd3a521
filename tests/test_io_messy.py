"""siflow.io on the messy CSVs of real runs: per-layer columns named norm_<g>, compressed
files, bad cells, thousands separators, decimal commas, hex steps, impossible norms, huge
JSON-lines steps, and decompression bombs."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import tracemalloc
import zipfile

import numpy as np
import pytest

import siflow.io as sio


def _plain_log(n: int = 50) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    step = np.arange(n) * 10
    rho = 2.0 - 0.01 * np.arange(n)
    loss = 1.0 / (1.0 + np.arange(n))
    lines = ["step,loss,si_norm,lr"] + [
        f"{s},{float(lo)!r},{float(r)!r},0.1" for s, lo, r in zip(step, loss, rho, strict=True)
    ]
    return "\n".join(lines) + "\n", step, loss, rho


def test_norm_underscore_group_columns(tmp_path):
    path = tmp_path / "layers.csv"
    rows = ["step,loss,norm_conv1,norm_conv2,grad_norm_conv1,grad_norm_conv2"]
    for i in range(5):
        rows.append(f"{i},{1.0 / (i + 1)},{2.0 + i},{3.0},{0.5},{0.25}")
    path.write_text("\n".join(rows) + "\n")
    t = sio.read(path, group="conv1")
    assert t.meta["groups"] == ["conv1", "conv2"]
    np.testing.assert_array_equal(t.rho, 2.0 + np.arange(5))
    np.testing.assert_allclose(t.grad_norm_sphere, 0.5 * (2.0 + np.arange(5)), rtol=1e-15)
    s = sio.read(path, group="sum")
    np.testing.assert_allclose(s.rho, np.hypot(2.0 + np.arange(5), 3.0), rtol=1e-15)
    np.testing.assert_allclose(s.grad_norm_sphere, s.rho * math.hypot(0.5, 0.25), rtol=1e-15)
    with pytest.raises(ValueError, match="group="):
        sio.read(path)  # two groups, no total: ask which


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zip"])
def test_compressed_csv_reads_like_the_plain_file(tmp_path, kind):
    text, step, loss, rho = _plain_log()
    data = text.encode()
    path = tmp_path / f"log.csv.{kind}"
    if kind == "gz":
        path.write_bytes(gzip.compress(data))
    elif kind == "bz2":
        path.write_bytes(bz2.compress(data))
    elif kind == "xz":
        path.write_bytes(lzma.compress(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("log.csv", data)
    assert sio.detect_format(path) == "csv"
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, step)
    np.testing.assert_array_equal(t.loss, loss)
    np.testing.assert_array_equal(t.rho, rho)
    assert t.meta["lr"] == 0.1


def test_compressed_jsonl(tmp_path):
    path = tmp_path / "log.jsonl.gz"
    recs = [{"step": i, "loss": 1.0 / (i + 1), "si_norm": 2.0 - 0.1 * i} for i in range(4)]
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in recs).encode()))
    assert sio.detect_format(path) == "jsonl"
    np.testing.assert_array_equal(sio.read(path).rho, [2.0 - 0.1 * i for i in range(4)])


def test_one_bad_cell_is_missing_with_row_and_column_reported(tmp_path):
    n = 1200
    step = range(n)
    rho = 3.0 - 1e-3 * np.arange(n)
    cells = [repr(float(r)) for r in rho]
    cells[517] = "n/a"
    path = tmp_path / "run.csv"
    path.write_text(
        "step,loss,si_norm\n"
        + "".join(f"{s},{1.0 / (s + 1)!r},{c}\n" for s, c in zip(step, cells, strict=True))
    )
    t = sio.read(path)
    assert t.meta["columns"]["rho"] == "si_norm"  # the column is kept, not dropped
    assert math.isnan(t.rho[517])
    np.testing.assert_array_equal(np.delete(t.rho, 517), np.delete(rho, 517))
    assert t.meta["bad_cells"] == {"si_norm": [[518, "n/a"]]}  # data row 518 = step 517
    assert any("'si_norm'" in n and "row 518" in n and "n/a" in n for n in t.meta["notes"])


def test_text_columns_are_named_not_dropped_silently(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step,phase,si_norm\n0,warmup,2.0\n1,train,1.9\n2,train,1.8\n")
    t = sio.read(path)
    assert t.meta["ignored_text_columns"] == ["phase"]
    np.testing.assert_array_equal(t.rho, [2.0, 1.9, 1.8])


def test_thousands_separators(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text('step,loss,si_norm\n"1,000",0.5,2.0\n"1,200",0.4,1.9\n"12,345",0.3,1.8\n')
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [1000, 1200, 12345])
    assert any("thousands separators" in n for n in t.meta["notes"])


def test_decimal_commas_in_semicolon_csv(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step;loss;si_norm\n0;0,5;2,25\n1;0,25;2,125\n2;1.000,5;2\n")
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 1, 2])
    np.testing.assert_array_equal(t.loss, [0.5, 0.25, 1000.5])
    np.testing.assert_array_equal(t.rho, [2.25, 2.125, 2.0])
    assert any("decimal commas" in n for n in t.meta["notes"])


def test_hex_steps(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step,loss,si_norm\n0x0,0.5,2.0\n0x10,0.4,1.9\n0xff,0.3,1.8\n")
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [0, 16, 255])
    assert any("hexadecimal" in n for n in t.meta["notes"])


def test_negative_norm_refused_with_row(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step,loss,si_norm\n0,0.5,2.0\n1,0.4,-1.9\n2,0.3,1.8\n")
    with pytest.raises(ValueError, match=r"'si_norm' is negative \(-1\.9\) at data row 2"):
        sio.read(path)


def test_all_zero_norms_refused(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step,loss,si_norm\n0,0.5,0\n1,0.4,0.0\n2,0.3,0\n")
    with pytest.raises(ValueError, match="'si_norm' is 0 at every row"):
        sio.read(path)


def test_jsonl_steps_above_2_53_are_exact(tmp_path):
    base = 2**53
    path = tmp_path / "run.jsonl"
    path.write_text(
        "".join(
            json.dumps({"step": base + k, "loss": 0.5, "si_norm": 2.0 - 0.1 * k}) + "\n"
            for k in range(1, 4)
        )
    )
    t = sio.read(path)
    assert t.step.dtype == np.int64
    assert t.step.tolist() == [base + 1, base + 2, base + 3]  # distinct, not duplicates


def test_csv_steps_above_2_53_are_exact(tmp_path):
    base = 2**53
    path = tmp_path / "run.csv"
    path.write_text("step,si_norm\n" + "".join(f"{base + k},{2.0 - 0.1 * k}\n" for k in (1, 2, 3)))
    assert sio.read(path).step.tolist() == [base + 1, base + 2, base + 3]


def test_gzip_bomb_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.csv.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"step,loss\n")
        block = b"0" * (1 << 20)
        for _ in range(80):  # 80 MiB of zeros: ~80 KiB compressed
            fh.write(block)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    with pytest.raises(ValueError, match="decompression bomb"):
        sio.read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20  # refused from the declared size, nothing inflated


def test_gzip_bomb_with_a_lying_trailer_refused_while_streaming(tmp_path):
    path = tmp_path / "bomb.csv.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"step,note\n")
        rows = (b"1," + b"x" * 1021 + b"\n") * 1024
        for _ in range(40):  # 40 MiB of rows
            fh.write(rows)
    data = bytearray(path.read_bytes())
    data[-4:] = (1000).to_bytes(4, "little")  # the trailer claims 1000 bytes
    path.write_bytes(bytes(data))
    tracemalloc.start()
    with pytest.raises(ValueError, match="decompression bomb"):
        sio.read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * 16 * 2**20  # stopped at the 16 MiB bound, not at 40 MiB


def test_npz_bomb_refused_before_inflating(tmp_path):
    path = tmp_path / "train-tm.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report_epochs.npy", b"\x00" * 10)
        with zf.open("params_norm.npy", "w", force_zip64=True) as member:
            block = b"\x00" * (1 << 20)
            for _ in range(100):  # declares 100 MiB
                member.write(block)
    assert path.stat().st_size < 300_000
    tracemalloc.start()
    with pytest.raises(ValueError, match="decompression bomb"):
        sio.read_seed_npz(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20  # nothing was inflated


def test_very_wide_csv_reads_only_the_useful_columns(tmp_path):
    n_junk = 20_000
    names = ["step"] + [f"feature{j}" for j in range(n_junk)] + ["si_norm", "norm/conv1"]
    path = tmp_path / "wide.csv"
    rows = [",".join(names)]
    for i in range(3):
        rows.append(",".join([str(i)] + ["7"] * n_junk + [str(2.0 - 0.1 * i), "1.5"]))
    path.write_text("\n".join(rows) + "\n")
    t = sio.read(path)
    np.testing.assert_allclose(t.rho, [2.0, 1.9, 1.8], rtol=1e-15)
    assert t.meta["unread_columns"] == n_junk
    assert any(f"{n_junk + 3} columns" in n for n in t.meta["notes"])
    assert "norm/conv1" in t.extra and "feature5" not in t.extra
    m = sio.read(path, mapping={"loss": "feature5"})  # a mapped column is read
    np.testing.assert_array_equal(m.loss, [7.0, 7.0, 7.0])


def test_library_messages_name_parameters_not_cli_flags(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,stage\n0,a\n")
    with pytest.raises(ValueError, match=r"mapping=\{'step': '<column>'\}") as info:
        sio.read_lightning(path)
    assert "--" not in str(info.value).replace(str(path), "")


@pytest.mark.parametrize("mapping", [0.0, 3, object()])
def test_a_mapping_of_the_wrong_type_is_named(tmp_path, mapping):
    # a falsy number was taken for "no mapping" and any other value failed deep inside
    path = tmp_path / "log.csv"
    path.write_text("step,rho\n0,1\n1,0.9\n2,0.8\n3,0.7\n")
    with pytest.raises(ValueError, match=r"mapping must be a dict"):
        sio.read(path, mapping=mapping)


def test_last_row_cut_inside_its_last_cell_is_left_out_with_a_note(tmp_path):
    # a killed run flushes at any byte: "12.0" of the last row written as "1"
    rows = [f"{s},{3.0 - s / 1000!r},{10.0 + s / 100:.1f}" for s in range(201)]
    whole = "step,weight_norm,loss\n" + "\n".join(rows) + "\n"
    cut = tmp_path / "cut.csv"
    cut.write_text(whole[: whole.rindex(",") + 2])  # the last line ends "...,1"
    t = sio.read(cut)
    np.testing.assert_array_equal(t.step, np.arange(200))
    np.testing.assert_allclose(t.loss, [float(f"{10.0 + s / 100:.1f}") for s in range(200)])
    assert any("has no line end" in n and "left out" in n for n in t.meta["notes"])
    # cut right after the last comma: the last cell was never written
    after_comma = tmp_path / "after_comma.csv"
    after_comma.write_text(whole[: whole.rindex(",") + 1])
    t = sio.read(after_comma)
    assert len(t) == 200 and any("left out" in n for n in t.meta["notes"])
    # a file that merely lacks its final line break keeps its last row
    whole_cell = tmp_path / "no_final_newline.csv"
    whole_cell.write_text(whole.rstrip("\n"))
    t = sio.read(whole_cell)
    assert len(t) == 201 and t.loss[-1] == 12.0 and not t.meta.get("notes")


def test_jsonl_non_numeric_value_is_a_missing_cell_as_in_csv(tmp_path):
    # one "n/a" among 300 numbers: the column stays, the cell is missing and reported
    path = tmp_path / "log.jsonl"
    recs = [{"step": s, "weight_norm": 3.0 - s / 1000, "loss": 1.0 / (s + 1)} for s in range(300)]
    recs[6]["loss"] = "n/a"
    recs[7]["phase"] = "warmup"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    t = sio.read(path)
    want = np.array([1.0 / (s + 1) for s in range(300)])
    want[6] = np.nan
    np.testing.assert_array_equal(t.loss, want)
    assert t.meta["bad_cells"] == {"loss": [[7, "n/a"]]}  # data row 7 = record 7
    assert any("'loss': 1 non-numeric cell(s) of 300" in n for n in t.meta["notes"])
    assert t.meta["ignored_text_columns"] == ["phase"]


def test_none_and_null_cells_are_missing_values(tmp_path):
    # an f-string of Python's None writes "None" where a metric was not logged
    path = tmp_path / "log.csv"
    rows = [f"{s},{3.0 - s / 100!r},{1.0 / (s + 1) if s % 4 == 0 else None}" for s in range(40)]
    path.write_text("step,weight_norm,loss\n" + "\n".join(rows) + "\n")
    t = sio.read(path)
    assert np.isfinite(t.loss).sum() == 10
    np.testing.assert_array_equal(t.loss[::4], [1.0 / (s + 1) for s in range(0, 40, 4)])
    assert any("'None'/'null' cells as missing" in n for n in t.meta["notes"])
    jl = tmp_path / "log.jsonl"
    jl.write_text(
        "".join(f'{{"step": {s}, "weight_norm": 2.0, "loss": "null"}}\n' for s in range(3))
    )
    assert np.isnan(sio.read(jl).loss).all()


def test_rows_with_values_but_no_step_are_noted(tmp_path):
    path = tmp_path / "log.csv"
    rows = [f"{'' if 10 <= s < 13 else s},{3.0 - s / 100!r}" for s in range(30)]
    path.write_text("step,weight_norm\n" + "\n".join(rows) + "\n")
    t = sio.read(path)
    assert len(t) == 27 and t.meta["dropped_rows"] == 3
    assert (
        "3 row(s) with values but a blank step left out (data rows 11, 12, 13)" in t.meta["notes"]
    )


def test_truncated_gzip_is_named_truncated_not_a_bomb(tmp_path):
    # a cut copy's last four bytes are not its trailer: they declare a huge size
    rows = "".join(f"{s},{3.0 - s / 1e4!r},{1.0 / (s + 1)!r}\n" for s in range(20000))
    data = gzip.compress(("step,weight_norm,loss\n" + rows).encode())
    for cut in (len(data) // 2, len(data) - 8):  # mid-stream; the trailer lost
        path = tmp_path / f"cut{cut}.csv.gz"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated") as info:
            sio.read(path)
        assert "bomb" not in str(info.value)


def test_units_in_square_brackets_do_not_hide_a_column(tmp_path):
    path = tmp_path / "log.csv"
    rows = [f"{s},{1.0 / (s + 1)!r},{3.0 - s / 100!r},0.5" for s in range(20)]
    path.write_text("step,loss [nats],weight_norm [-],grad_norm [1/rad]\n" + "\n".join(rows))
    t = sio.read(path)
    assert t.meta["columns"]["loss"] == "loss [nats]"
    assert t.meta["columns"]["rho"] == "weight_norm [-]"
    np.testing.assert_allclose(t.grad_norm_sphere, 0.5 * (3.0 - np.arange(20) / 100))
    assert "groups" not in t.meta


def test_underscores_and_full_width_digits_are_noted(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,weight_norm\n1_000,2.0\n1_001,\uff11.5\n1_002,1.25\n")
    t = sio.read(path)
    np.testing.assert_array_equal(t.step, [1000, 1001, 1002])
    np.testing.assert_array_equal(t.rho, [2.0, 1.5, 1.25])
    notes = t.meta["notes"]
    assert any("'step'" in n and "digit separators or non-ASCII" in n for n in notes)
    assert any("'weight_norm'" in n and "digit separators or non-ASCII" in n for n in notes)


@pytest.mark.parametrize(
    ("encoding", "needle"), [("utf-16", "is UTF-16 text"), ("latin-1", "such as Latin-1")]
)
def test_other_text_encodings_say_save_as_utf8(tmp_path, encoding, needle):
    path = tmp_path / "log.txt"
    path.write_bytes("step\tweight_norm\tnote\n0\t2.0\tré\n1\t1.9\tçà\n".encode(encoding))
    with pytest.raises(ValueError, match=needle) as info:
        sio.read(path)
    assert "save it as UTF-8" in str(info.value) and "fmt=" not in str(info.value)
