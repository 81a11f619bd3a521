"""Fuzzing the log readers: on any input they return a Trajectory or raise ValueError.

A researcher points siflow at whatever file a training script left behind: half
written, binary, from another tool, with NaN or duplicate rows. The contract
(issue 8) is that a reader either returns a valid :class:`~siflow.trajectory.Trajectory`
or raises :class:`ValueError` (``FileNotFoundError`` for a missing path), never
``KeyError``, ``IndexError``, ``TypeError``, ``OverflowError``, ``RecursionError``,
``zipfile.BadZipFile``... which the CLIs would turn into a traceback.

Inputs are generated with hypothesis (derandomized, no example database, so CI
sees the same inputs every run): random bytes and text, CSV tables and JSON-lines
built from the column spellings the readers look for with hostile cells, npz
archives with the seed paper's keys holding arrays of any dtype and shape, and
byte-level mutations (truncation, flips, deletions, duplications, insertions) of
valid files (CSV, JSON-lines, siflow trajectories, the seed paper's npz, TensorBoard
event files written by TensorBoard's own writer). The quick tests run about 1900
inputs in all; the ``slow`` one about 9700, over a minute or so.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from siflow.trajectory import Trajectory

QUICK = 25  # examples per strategy and reader in the default run
SLOW = 250  # under -m slow: about 9700 generated inputs in all


def _settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # no shrinking: a failure reports its input bytes; shrinking a reader crash costs minutes
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )


# --------------------------------------------------------------------------------------------
# readers under test (looked up lazily so that a missing module fails the test, not collection)
# --------------------------------------------------------------------------------------------
def _reader(name: str):
    if name == "Trajectory.load":
        return Trajectory.load
    import siflow.io

    return getattr(siflow.io, name)


#: (reader, suffix of the files it is fed)
TEXT_READERS = [
    ("read_csv", ".csv"),
    ("read_jsonl", ".jsonl"),
    ("read_lightning", ".csv"),
    ("read_wandb", ".csv"),
    ("read", ".csv"),
    ("read", ".jsonl"),
    ("read", ".log"),
    ("Trajectory.load", ".csv"),
]
NPZ_READERS = [("read_seed_npz", ".npz"), ("read", ".npz"), ("Trajectory.load", ".npz")]
#: TensorBoard event files (the name must contain "tfevents" to be recognised)
TB_READERS = [("read_tensorboard", ".tfevents"), ("read", ".tfevents")]


def _check(reader_name: str, path: Path) -> None:
    """Call the reader; only a Trajectory or a ValueError with a message is acceptable."""
    reader = _reader(reader_name)
    try:
        out = reader(path)
    except ValueError as exc:
        assert str(exc).strip(), f"{reader_name}: ValueError without a message on {path.name}"
        return
    except FileNotFoundError:
        raise AssertionError(f"{reader_name}: FileNotFoundError for an existing file") from None
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        head = path.read_bytes()[:200]
        raise AssertionError(
            f"{reader_name} raised {type(exc).__name__}: {exc} on {path.name} "
            f"(first bytes {head!r}); readers must raise ValueError on bad input"
        ) from exc
    assert isinstance(out, Trajectory), f"{reader_name} returned {type(out).__name__}"
    if len(out) > 1:
        assert np.all(np.diff(out.step) > 0)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


class _Files:
    """Unique file names inside one directory (hypothesis reuses the module fixture)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def write(self, data: bytes, suffix: str, parent: str | None = None) -> Path:
        self.n += 1
        d = self.root / parent if parent else self.root
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"f{self.n}{suffix}"
        path.write_bytes(data)
        return path


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------
NAMES = [
    "step", "iter", "iteration", "epoch", "Step", " step", "step.1", "loss", "train_loss",
    "norm", "si_norm", "weight_norm", "params_norm", "w_norm", "grad_norm", "gnorm",
    "angular_update", "angle", "elr", "effective_lr", "lr", "acc", "", "norm/layer1",
    "rho/conv2", "conv2_norm", "run - loss", "run - loss__MIN", "run - loss__MAX",
    "run - si_norm", "trainer/global_step", '"quoted"', "x y", "é",
]  # fmt: skip
BAD_CELLS = [
    "", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "-0", "abc",
    " 1", "1 ", "0x10", "1_000", "True", "None", "null", '"1"', "1;2", "\x00", "é", "1e-400",
    "9" * 400, "--", "1.5.2",
]  # fmt: skip
CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from(BAD_CELLS),
    st.text(max_size=4),
)
NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def csv_tables(draw) -> bytes:
    """A header from the spellings readers detect, then rows that are mostly well formed."""
    header = draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=6))
    n_rows = draw(st.integers(0, 12))
    well_formed = draw(st.booleans())
    steps = sorted(draw(st.sets(st.integers(-3, 10**6), min_size=n_rows, max_size=n_rows)))
    rows = []
    for i in range(n_rows):
        if well_formed and draw(st.integers(0, 9)) > 0:
            cells = [str(steps[i])] + [
                repr(draw(st.floats(1e-6, 1e6))) for _ in range(max(len(header) - 1, 0))
            ]
            if draw(st.integers(0, 5)) == 0 and cells:
                j = draw(st.integers(0, len(cells) - 1))
                cells[j] = draw(CELL)
        else:
            width = max(len(header) + draw(st.integers(-2, 2)), 0)
            cells = [draw(CELL) for _ in range(width)]
        rows.append(",".join(cells))
    nl = draw(NEWLINE)
    lines = [",".join(header)] + rows
    if draw(st.integers(0, 7)) == 0:
        meta = draw(st.one_of(st.just("{}"), st.text(max_size=20), st.just('{"lr": 0.1}')))
        lines.insert(0, "# siflow-trajectory " + meta)
    text = nl.join(lines) + draw(st.sampled_from(["", nl]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.text(max_size=5),
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def jsonl_logs(draw) -> bytes:
    """JSON-lines: dicts keyed by detected spellings holding any JSON value, and junk lines."""
    n = draw(st.integers(0, 12))
    step = draw(st.integers(-2, 100))
    lines = []
    for _ in range(n):
        kind = draw(st.integers(0, 9))
        if kind <= 6:
            keys = draw(st.lists(st.sampled_from(NAMES), max_size=6))
            obj = {}
            for k in keys:
                obj[k] = draw(st.floats(1e-6, 1e3)) if draw(st.booleans()) else draw(JSON_VALUE)
            if draw(st.integers(0, 3)) > 0:
                step += draw(st.integers(-1, 5))
                obj[draw(st.sampled_from(["step", "iter", "epoch", "step"]))] = step
            line = json.dumps(obj)
        elif kind == 7:
            line = json.dumps(draw(JSON_VALUE))
        elif kind == 8:
            line = draw(
                st.sampled_from(["", " ", "{", "}", "[1,", '{"step": 1,', "nan", "[" * 5000])
            )
        else:
            line = draw(st.text(max_size=30))
        lines.append(line)
    nl = draw(NEWLINE)
    return (nl.join(lines) + draw(st.sampled_from(["", nl]))).encode("utf-8", "surrogatepass")


SEED_KEYS = [
    "report_epochs", "params_norm", "loss", "acc", "gnorm_m", "gm_norm", "gs_norm",
    "hess_evals", "fisher_evals", "conv1_norm", "layer2_norm", "lr", "meta", "col_step",
    "col_rho", "col_loss", "step", "epoch",
]  # fmt: skip
NPZ_DTYPES = st.sampled_from(
    [np.float64, np.float32, np.int64, np.int8, np.bool_, np.complex128, np.uint16, "<U4", "S3"]
)


@st.composite
def npz_archives(draw) -> tuple[bytes, str | None]:
    """An npz with seed-paper keys, arrays of any dtype and shape, in a ``..._lr.._wd..`` dir."""
    n = draw(st.integers(0, 8))
    keys = draw(st.lists(st.sampled_from(SEED_KEYS), max_size=7, unique=True))
    arrays = {}
    for k in keys:
        if draw(st.integers(0, 2)) > 0:
            # the common case: a 1-D float array of the shared length, log-spaced epochs
            if k in ("report_epochs", "step", "epoch", "col_step"):
                a = np.unique(np.round(np.logspace(0, 3, n))).astype(np.float64)
            else:
                a = np.abs(draw(hnp.arrays(np.float64, n))) + 1e-3
        else:
            shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5))
            a = draw(hnp.arrays(draw(NPZ_DTYPES), shape))
        arrays[k] = a
    if "meta" in arrays and draw(st.booleans()):
        arrays["meta"] = np.array(draw(st.sampled_from(['{"lr": 0.1}', "{", "[]", '"x"', "1"])))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    parent = draw(
        st.sampled_from(
            [None, "conv_lr0.01_wd0.001_seed0", "x_lr_wd_", "r_lr1e999_wdnan_", "a_lr-1_wd0_b",
             "lr0.1wd", "c_lr0.01_wd0.001_lr0.02_wd1"]
        )
    )  # fmt: skip
    return buf.getvalue(), parent


def _valid_csv() -> bytes:
    steps = np.arange(0, 400, 7)
    rho = 2.0 * 0.999**steps
    loss = 0.3 + 0.1 * np.cos(steps / 30.0)
    rows = "\n".join(f"{s},{a!r},{b!r},0.1" for s, a, b in zip(steps, loss, rho, strict=True))
    return ("step,loss,si_norm,lr\n" + rows + "\n").encode()


def _valid_jsonl() -> bytes:
    lines = [
        json.dumps({"step": int(s), "loss": 0.5 / (1 + s), "weight_norm": 2.0 * 0.99**s, "lr": 0.1})
        for s in range(0, 300, 3)
    ]
    return ("\n".join(lines) + "\n").encode()


def _valid_seed_npz() -> bytes:
    epochs = np.unique(np.round(np.logspace(0, 3, 40)))
    buf = io.BytesIO()
    np.savez(
        buf,
        report_epochs=epochs,
        params_norm=2.0 * 0.99**epochs,
        conv1_norm=1.0 * 0.99**epochs,
        loss=0.5 / epochs,
        acc=1 - 0.5 / epochs,
        gnorm_m=0.1 / epochs,
    )
    return buf.getvalue()


def _valid_trajectory_npz(tmp: Path) -> bytes:
    t = Trajectory(
        step=np.arange(50), rho=np.linspace(2, 1, 50), loss=np.ones(50), meta={"lr": 0.1}
    )
    p = t.save(tmp / "valid_traj.npz")
    return p.read_bytes()


def _valid_trajectory_csv(tmp: Path) -> bytes:
    t = Trajectory(
        step=np.arange(50), rho=np.linspace(2, 1, 50), loss=np.ones(50), meta={"lr": 0.1}
    )
    p = t.save(tmp / "valid_traj.csv")
    return p.read_bytes()


def _valid_tensorboard(tmp: Path) -> bytes:
    """An event file written by TensorBoard's own writer: scalars loss and si_norm."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    d = Path(tempfile.mkdtemp(prefix="tb_valid", dir=tmp))
    writer = EventFileWriter(str(d))
    for step in range(0, 200, 5):
        values = [
            summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1)),
            summary_pb2.Summary.Value(tag="si_norm", simple_value=2.0 * 0.999**step),
        ]
        event = event_pb2.Event(step=step, wall_time=1.0, summary=summary_pb2.Summary(value=values))
        writer.add_event(event)
    writer.close()
    (path,) = list(d.iterdir())
    return path.read_bytes()


@st.composite
def mutations(draw, base: bytes) -> bytes:
    """Apply 1-4 byte-level edits to a valid file: the half-written and bit-rotted logs."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "delete", "duplicate", "insert", "zero"]))
        n = len(data)
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 64)) :]
        elif op == "duplicate":
            j = min(n, i + draw(st.integers(1, 200)))
            data = data[:j] + data[i:j] + data[j:]
        elif op == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
        elif op == "zero" and n:
            j = min(n, i + draw(st.integers(1, 64)))
            data[i:j] = bytes(j - i)
    return bytes(data)


# --------------------------------------------------------------------------------------------
# the properties, quick and slow
# --------------------------------------------------------------------------------------------
def _fuzz_bytes(fuzz_dir, reader, suffix, strategy, n):
    files = _Files(fuzz_dir / f"{reader}{suffix}".replace(".", "_"))

    @_settings(n)
    @given(strategy)
    def run(data):
        path = files.write(data, suffix)
        try:
            _check(reader, path)
        finally:
            path.unlink()

    run()


def _fuzz_npz(fuzz_dir, reader, suffix, n):
    files = _Files(fuzz_dir / f"npz_{reader}".replace(".", "_"))

    @_settings(n)
    @given(npz_archives())
    def run(arg):
        data, parent = arg
        path = files.write(data, suffix, parent)
        try:
            _check(reader, path)
        finally:
            path.unlink()

    run()


def _text_strategies(fuzz_dir):
    return {
        "random_bytes": st.binary(max_size=300),
        "random_text": st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        "csv_tables": csv_tables(),
        "jsonl_logs": jsonl_logs(),
        "mutated_csv": mutations(_valid_csv()),
        "mutated_jsonl": mutations(_valid_jsonl()),
        "mutated_trajectory_csv": mutations(_valid_trajectory_csv(fuzz_dir)),
    }


def _npz_byte_strategies(fuzz_dir):
    return {
        "random_bytes": st.binary(max_size=300),
        "mutated_seed_npz": mutations(_valid_seed_npz()),
        "mutated_trajectory_npz": mutations(_valid_trajectory_npz(fuzz_dir)),
        "zip_of_junk": st.lists(
            st.tuples(
                st.sampled_from(["loss.npy", "a", "params_norm.npy", "x/y.npy"]), st.binary()
            ),
            max_size=3,
        ).map(_zip_bytes),
    }


def _zip_bytes(members) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate member names are wanted here
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _tb_strategies(fuzz_dir):
    return {
        "random_bytes": st.binary(max_size=300),
        "mutated_events": mutations(_valid_tensorboard(fuzz_dir)),
    }


TB_KINDS = ["random_bytes", "mutated_events"]
TEXT_KINDS = [
    "random_bytes",
    "random_text",
    "csv_tables",
    "jsonl_logs",
    "mutated_csv",
    "mutated_jsonl",
    "mutated_trajectory_csv",
]
NPZ_KINDS = ["random_bytes", "mutated_seed_npz", "mutated_trajectory_npz", "zip_of_junk"]


@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("reader,suffix", TEXT_READERS, ids=[f"{r}{s}" for r, s in TEXT_READERS])
def test_text_readers_raise_only_valueerror(fuzz_dir, reader, suffix, kind):
    _fuzz_bytes(fuzz_dir, reader, suffix, _text_strategies(fuzz_dir)[kind], QUICK)


@pytest.mark.parametrize("kind", NPZ_KINDS)
@pytest.mark.parametrize("reader,suffix", NPZ_READERS, ids=[f"{r}{s}" for r, s in NPZ_READERS])
def test_npz_readers_raise_only_valueerror_on_bytes(fuzz_dir, reader, suffix, kind):
    _fuzz_bytes(fuzz_dir, reader, suffix, _npz_byte_strategies(fuzz_dir)[kind], QUICK)


@pytest.mark.parametrize("kind", TB_KINDS)
@pytest.mark.parametrize("reader,suffix", TB_READERS, ids=[f"{r}{s}" for r, s in TB_READERS])
def test_tensorboard_readers_raise_only_valueerror(fuzz_dir, reader, suffix, kind):
    _fuzz_bytes(fuzz_dir, reader, suffix, _tb_strategies(fuzz_dir)[kind], QUICK)


@pytest.mark.parametrize("reader,suffix", NPZ_READERS, ids=[f"{r}{s}" for r, s in NPZ_READERS])
def test_npz_readers_raise_only_valueerror_on_archives(fuzz_dir, reader, suffix):
    _fuzz_npz(fuzz_dir, reader, suffix, QUICK)


@pytest.mark.slow
def test_fuzz_all_readers_thousands_of_inputs(fuzz_dir):
    """The long run: SLOW examples per (reader, strategy); several thousand inputs in all."""
    texts = _text_strategies(fuzz_dir)
    for reader, suffix in TEXT_READERS:
        for kind in TEXT_KINDS:
            _fuzz_bytes(fuzz_dir, reader, suffix, texts[kind], SLOW // 2)
    npzs = _npz_byte_strategies(fuzz_dir)
    for reader, suffix in NPZ_READERS:
        for kind in NPZ_KINDS:
            _fuzz_bytes(fuzz_dir, reader, suffix, npzs[kind], SLOW // 2)
        _fuzz_npz(fuzz_dir, reader, suffix, SLOW)
    try:
        import tensorboard  # noqa: F401 - optional extra; its readers are fuzzed when present
    except ImportError:
        return
    tbs = _tb_strategies(fuzz_dir)
    for reader, suffix in TB_READERS:
        for kind in TB_KINDS:
            _fuzz_bytes(fuzz_dir, reader, suffix, tbs[kind], SLOW // 2)


# --------------------------------------------------------------------------------------------
# hand-picked hostile inputs (fast, always run)
# --------------------------------------------------------------------------------------------
HOSTILE = {
    "empty.csv": b"",
    "only_header.csv": b"step,loss,si_norm\n",
    "nul.csv": b"\x00" * 64,
    "utf16.csv": "step,loss\n1,0.5\n".encode("utf-16"),
    "latin1.csv": "step,loss,n\xe9\n1,0.5,1\n".encode("latin-1"),
    "deep.jsonl": b"[" * 100000 + b"]" * 100000 + b"\n",
    "deep_obj.jsonl": b'{"a":' * 50000 + b"1" + b"}" * 50000 + b"\n",
    "huge_int.jsonl": b'{"step": 1, "loss": ' + b"9" * 500 + b', "si_norm": 1}\n',
    "huge_step.jsonl": b'{"step": ' + b"9" * 40 + b', "loss": 1.0, "si_norm": 1}\n',
    "huge_step.csv": b"step,loss,si_norm\n" + b"9" * 40 + b",1.0,1.0\n",
    "float_step.csv": b"step,loss,si_norm\n0.5,1.0,1.0\n1.5,1.0,1.0\n",
    "inf_step.csv": b"step,loss,si_norm\ninf,1.0,1.0\n",
    "neg_zero.csv": b"step,loss,si_norm\n-0,1,1\n0,1,1\n",
    "dup_header.csv": b"step,step,loss\n1,2,3\n",
    "list_values.jsonl": b'{"step": [1, 2], "loss": {"a": 1}, "si_norm": "x"}\n',
    "bool_values.jsonl": b'{"step": true, "loss": false, "si_norm": null}\n',
    "not_dict.jsonl": b'[1, 2, 3]\n42\n"s"\n',
    "bom.jsonl": b'\xef\xbb\xbf{"step": 1, "loss": 1.0}\n',
    "meta_int.csv": b"# siflow-trajectory 1\nstep,loss\n1,0.5\n",
    "meta_list.csv": b"# siflow-trajectory [[1, 2]]\nstep,loss\n1,0.5\n",
    "meta_null.csv": b"# siflow-trajectory null\nstep,loss\n1,0.5\n",
    "meta_only.csv": b"# siflow-trajectory {}\n",
    "traj_no_rows.csv": b"# siflow-trajectory {}\nstep,loss\n",
    "traj_1e400.csv": b"# siflow-trajectory {}\nstep,loss\n1e400,0.5\n",
    "empty.npz": b"",
    "not_zip.npz": b"PK\x03\x04" + b"\x00" * 40,
    "pickle_obj.npz": None,  # filled below: an object array (pickled) in an npz
    "empty_zip.npz": None,
    "scalar_arrays.npz": None,
    "2d_arrays.npz": None,
    "traj_meta_int.npz": None,
    "traj_meta_bytes.npz": None,
    "traj_no_step.npz": None,
    "traj_2d_step.npz": None,
    "traj_bad_deflate.npz": None,
    "seed_bad_deflate.npz": None,
}


def _break_deflate(data: bytes, member: str) -> bytes:
    """Overwrite the start of a compressed member's deflate stream (zlib fails before CRC)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    return data[:start] + b"\xff" * 4 + data[start + 4 :]


def _special_npz(name: str) -> bytes:
    buf = io.BytesIO()
    if name == "traj_bad_deflate.npz":
        np.savez_compressed(buf, meta=np.array("{}"), col_step=np.arange(500),
                            col_rho=np.linspace(1, 2, 500))  # fmt: skip
        return _break_deflate(buf.getvalue(), "col_rho.npy")
    if name == "seed_bad_deflate.npz":
        epochs = np.unique(np.round(np.logspace(0, 3, 60)))
        np.savez_compressed(buf, report_epochs=epochs, params_norm=0.99**epochs, loss=1 / epochs)
        return _break_deflate(buf.getvalue(), "params_norm.npy")
    if name == "pickle_obj.npz":
        np.savez(buf, report_epochs=np.array([1, 2], dtype=object), params_norm=np.ones(2))
    elif name == "empty_zip.npz":
        return _zip_bytes([])
    elif name == "scalar_arrays.npz":
        np.savez(buf, report_epochs=np.float64(3.0), params_norm=np.float64(1.0), loss=1.0)
    elif name == "traj_meta_int.npz":
        np.savez(buf, meta=np.array("1"), col_step=np.arange(3), col_rho=np.ones(3))
    elif name == "traj_meta_bytes.npz":
        np.savez(buf, meta=np.array(b"\xff{"), col_step=np.arange(3))
    elif name == "traj_no_step.npz":
        np.savez(buf, meta=np.array("{}"), col_rho=np.ones(3))
    elif name == "traj_2d_step.npz":
        np.savez(buf, meta=np.array("{}"), col_step=np.ones((2, 2)), col_rho=np.ones(2))
    elif name == "2d_arrays.npz":
        np.savez(buf, report_epochs=np.ones((3, 2)), params_norm=np.ones((3, 2)), loss=np.ones(3))
    return buf.getvalue()


def _hostile_readers(name: str) -> list[str]:
    suffix = os.path.splitext(name)[1]
    table = {
        ".csv": ["read_csv", "read", "Trajectory.load"],
        ".jsonl": ["read_jsonl", "read"],
        ".npz": ["read_seed_npz", "read", "Trajectory.load"],
    }
    return table[suffix]


HOSTILE_CASES = [(name, r) for name in HOSTILE for r in _hostile_readers(name)]


@pytest.mark.parametrize("name,reader", HOSTILE_CASES, ids=[f"{r}-{n}" for n, r in HOSTILE_CASES])
def test_hostile_files(tmp_path, name, reader):
    data = HOSTILE[name]
    if data is None:
        data = _special_npz(name)
    path = tmp_path / name
    path.write_bytes(data)
    _check(reader, path)


@pytest.mark.parametrize(
    "reader",
    ["read", "read_csv", "read_jsonl", "read_seed_npz", "read_lightning", "read_wandb",
     "read_tensorboard", "Trajectory.load"],
)  # fmt: skip
def test_missing_path_raises_filenotfounderror(tmp_path, reader):
    missing = tmp_path / "no_such_dir" / "log.csv"
    with pytest.raises(FileNotFoundError):
        _reader(reader)(missing)


@pytest.mark.parametrize(
    "reader", ["read", "read_csv", "read_jsonl", "read_seed_npz", "read_lightning", "read_wandb"]
)
def test_directory_in_place_of_a_file_raises_valueerror(tmp_path, reader):
    """A directory named like a log (not a TensorBoard run): ValueError, not IsADirectoryError."""
    d = tmp_path / "log.csv"
    d.mkdir()
    with pytest.raises(ValueError):
        _reader(reader)(d)


# --------------------------------------------------------------- pickles and torch files
PEER = Path(__file__).parent / "data" / "peer-logs"


def _valid_req_dump() -> bytes:
    """The first appended dump of REQ's genuine dynamics.pkl (tensors inside)."""
    from siflow.io._safe_pickle import RestrictedUnpickler

    path = PEER / "req" / "sgd" / "dynamics.pkl"
    with open(path, "rb") as fh:
        RestrictedUnpickler(fh, "dump").load()
        end = fh.tell()
    return path.read_bytes()[:end]


def _valid_trace_members() -> dict[str, bytes]:
    trace = next((PEER / "idealgas").rglob("trace.pt"))
    with zipfile.ZipFile(trace) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _only_valueerror(fn, label: str) -> None:
    try:
        fn()
    except ValueError as exc:
        assert str(exc).strip(), f"{label}: ValueError without a message"
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(
            f"{label} raised {type(exc).__name__}: {exc}; readers must raise ValueError"
        ) from exc


def test_req_pickle_mutations_raise_only_valueerror(fuzz_dir):
    import siflow.io as sio

    run_dir = fuzz_dir / "req_run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "logger_cfg.yaml").write_text("interval: 10\ndisk_downsample: 10\n")

    @_settings(QUICK * 4)
    @given(mutations(_valid_req_dump()))
    def run(data):
        (run_dir / "dynamics.pkl").write_bytes(data)
        _only_valueerror(lambda: sio.read_req(run_dir), "read_req")

    run()


def test_torch_file_mutations_raise_only_valueerror(fuzz_dir):
    from siflow.io._safe_pickle import load_torch_file

    members = _valid_trace_members()
    pkl = next(n for n in members if n.endswith("data.pkl"))
    path = fuzz_dir / "trace_fuzz.pt"

    @_settings(QUICK * 4)
    @given(mutations(members[pkl]))
    def run(data):
        with zipfile.ZipFile(path, "w") as zf:
            for name, content in members.items():
                zf.writestr(name, data if name == pkl else content)
        _only_valueerror(lambda: load_torch_file(path), "load_torch_file")

    run()
