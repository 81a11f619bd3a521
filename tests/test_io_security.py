"""Reading a pickle or a torch file never runs code from it: payloads that would call
os.system (or any other callable) through __reduce__ raise ValueError, and nothing runs."""

from __future__ import annotations

import io
import os
import pickle
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import siflow.io as sio
from siflow.io._safe_pickle import RestrictedUnpickler, load_torch_file


class _Payload:
    """Unpickling this calls os.system(command): what an attacker's file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _PayloadEval:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def _marker_command(marker: Path) -> str:
    return f"touch {marker}"


def _req_dir(tmp_path: Path, payload_bytes: bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "logger_cfg.yaml").write_text("interval: 10\ndisk_downsample: 10\n")
    (run / "dynamics.pkl").write_bytes(payload_bytes)
    return run


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_with_os_system_payload_raises_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(
        {"layer_norm": {"0.weight": _Payload(_marker_command(marker))}}, protocol=protocol
    )
    run = _req_dir(tmp_path, evil)
    assert sio.detect_format(run) == "req"
    with pytest.raises(ValueError, match=r"posix\.system|os\.system|nt\.system"):
        sio.read(run)
    with pytest.raises(ValueError, match="refused"):
        sio.read_req(run / "dynamics.pkl")
    assert not marker.exists()


def test_second_appended_dump_with_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    good = pickle.dumps({"layer_norm": {"0.weight": [[1.0]]}})
    evil = pickle.dumps(_PayloadEval(f"open({str(marker)!r}, 'w')"))
    run = _req_dir(tmp_path, good + evil)
    with pytest.raises(ValueError, match="builtins.eval"):
        sio.read(run)
    assert not marker.exists()


def _torch_zip(path: Path, data_pkl: bytes, prefix: str = "trace") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        zf.writestr(f"{prefix}/version", "3\n")


def test_torch_file_with_payload_raises_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "idealgas_run"
    run.mkdir()
    (run / "config.json").write_text('{"running_log_freq": 50, "lr": 1.0, "wd": 0.01}')
    evil = pickle.dumps(
        {"trace": {"running_radius": [_Payload(_marker_command(marker))]}}, protocol=2
    )
    _torch_zip(run / "trace.pt", evil)
    assert sio.detect_format(run) == "idealgas"
    with pytest.raises(ValueError, match="refused"):
        sio.read(run)
    with pytest.raises(ValueError, match="refused"):
        load_torch_file(run / "trace.pt")
    assert not marker.exists()


def _global(module: str, name: str) -> bytes:
    """Pickle opcode GLOBAL: names ``module.name`` without importing it here."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def test_payload_inside_an_embedded_legacy_torch_payload_is_refused(tmp_path):
    # torch.storage._load_from_bytes is allowed (REQ's tensors use it); what it wraps is
    # read with the same restrictions
    marker = tmp_path / "pwned"
    inner = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(
        _Payload(_marker_command(marker)), protocol=2
    )
    evil = (
        b"\x80\x03"
        + _global("torch.storage", "_load_from_bytes")
        + b"B"
        + len(inner).to_bytes(4, "little")
        + inner
        + b"\x85R."  # TUPLE1, REDUCE, STOP
    )
    run = _req_dir(tmp_path, evil)
    with pytest.raises(ValueError, match="refused"):
        sio.read(run)
    assert not marker.exists()


def test_out_of_bounds_tensor_view_is_refused(tmp_path):
    # a tensor that claims 10**6 elements of a one-element storage: reading it would walk
    # off the buffer (or allocate a bomb); it is refused
    pid = b"(" + _text("storage") + _global("torch", "FloatStorage") + _text("0") + _text("cpu")
    pid += b"K\x01tQ"  # numel 1, TUPLE, BINPERSID
    data = (
        b"\x80\x02"
        + _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + b"K\x00"  # storage offset
        + b"(M\xe8\x03M\xe8\x03t"  # size (1000, 1000)
        + b"(M\xe8\x03K\x01t"  # stride (1000, 1)
        + b"\x89N"  # requires_grad False, backward hooks None
        + b"tR."
    )
    path = tmp_path / "trace.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trace/data.pkl", data)
        zf.writestr("trace/data/0", np.float32(1.0).tobytes())
    with pytest.raises(ValueError, match="reaches past its storage"):
        load_torch_file(path)
    # the same tensor of a matching storage is rebuilt as a numpy array
    small = data.replace(b"(M\xe8\x03M\xe8\x03t", b"(K\x01K\x01t").replace(
        b"(M\xe8\x03K\x01t", b"(K\x01K\x01t"
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trace/data.pkl", small)
        zf.writestr("trace/data/0", np.float32(2.5).tobytes())
    np.testing.assert_array_equal(load_torch_file(path), np.full((1, 1), 2.5, np.float32))


def test_allowed_names_only_build_data():
    # numpy arrays pickled by numpy itself are rebuilt; the allowlist is the only way in
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": arr}, protocol=2)), "test").load()
    np.testing.assert_array_equal(out["a"], arr)
    with pytest.raises(ValueError, match="refused"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(Path("x"))), "test").load()


def test_memo_index_bomb_is_refused_before_unpickling(tmp_path):
    # LONG_BINPUT 2**31 - 1 would make CPython grow its memo table to 2**31 entries
    evil = b"\x80\x02K\x01r\xff\xff\xff\x7f."
    run = _req_dir(tmp_path, evil)
    tracemalloc.start()
    with pytest.raises(ValueError, match="memo index"):
        sio.read(run)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def test_seed_npz_object_array_is_skipped_not_unpickled(tmp_path):
    # np.savez pickles an object array (get_info.py's np.array of ragged eigenvalue lists
    # would be one): the payload must not run; the numeric arrays are still read
    marker = tmp_path / "pwned"
    info = tmp_path / "info" / "c4_d3_ds500_lr1.0_wd0.01_fbgd"
    info.mkdir(parents=True)
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _Payload(_marker_command(marker)), [1.0, 2.0, 3.0]
    np.savez(
        info / "train-tm.npz",
        report_epochs=np.array([0, 1]),
        loss=np.array([0.5, 0.4]),
        hess_evals=evil,
        **{"conv.weight_norm": np.array([2.0, 1.9]), "conv.weight_numel": np.array([9, 9])},
    )
    t = sio.read(info / "train-tm.npz")
    assert not marker.exists()
    assert "hess_evals" in t.meta["skipped_keys"]
    np.testing.assert_array_equal(t.loss, [0.5, 0.4])
    np.testing.assert_array_equal(t.rho, [2.0, 1.9])
