"""Atomic replacement (``siflow._fileio``): mode, owner, refusal, stale temporaries.

What must hold: replacing a file keeps its permission bits (and, as root, its owner);
a file a plain ``open(path, "w")`` would refuse is refused, unchanged; a new file gets
``0o666 & ~umask``; temporaries left by a writer killed with SIGKILL are removed by the
next process that writes into that folder, and nothing else is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siflow import _fileio
from siflow._fileio import atomic_path, atomic_write, remove_stale_temporaries

NOBODY = 65534
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _plain_open_refuses(p: Path) -> bool:
    try:
        with open(p, "a"):
            pass
    except PermissionError:
        return True
    return False


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o755])
def test_replacing_a_file_keeps_its_mode(tmp_path, mode):
    p = tmp_path / "out.txt"
    p.write_text("old")
    os.chmod(p, mode)
    with atomic_write(p) as fh:
        fh.write("new")
    assert p.read_text() == "new"
    assert _mode(p) == mode


def test_a_new_file_gets_what_open_gives(tmp_path):
    umask = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == 0o640


@contextlib.contextmanager
def _as_unprivileged_user() -> Iterator[None]:
    """Run the block with the effective uid/gid of ``nobody`` when root, else as is."""
    if not ROOT:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter and write (pytest's own is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="siflow-fileio-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d)


def _attempts(p: Path) -> tuple[bool, str]:
    """(whether open(p, "a") is refused, what atomic_write(p) does)."""
    refused = _plain_open_refuses(p)
    try:
        with atomic_write(p) as fh:
            fh.write("new")
    except PermissionError as exc:
        return refused, f"refused: {exc}"
    return refused, "ok"


def test_a_read_only_file_is_refused_like_open_refuses_it(shared_dir):
    """As an unprivileged user (root may write anything, so root drops to nobody)."""
    p = shared_dir / "fig.png"
    p.write_text("old")
    os.chmod(p, 0o444)
    if ROOT:
        os.chown(p, NOBODY, NOBODY)
    with _as_unprivileged_user():
        open_refused, atomic = _attempts(p)
    assert open_refused
    assert atomic.startswith("refused") and "read-only" in atomic and "chmod u+w" in atomic
    assert p.read_text() == "old" and _mode(p) == 0o444
    assert sorted(x.name for x in shared_dir.iterdir()) == ["fig.png"]


def test_a_file_open_may_write_is_replaced(shared_dir):
    """A 0666 file of root written by nobody: open() may write it, so may atomic_write;
    as root, a 0444 file is writable by open() too, and so replaced (mode kept)."""
    p = shared_dir / "shared.txt"
    p.write_text("old")
    os.chmod(p, 0o666)
    with _as_unprivileged_user():
        open_refused, atomic = _attempts(p)
    assert not open_refused and atomic == "ok"
    assert p.read_text() == "new" and _mode(p) == 0o666
    if ROOT:
        q = shared_dir / "ro.txt"
        q.write_text("old")
        os.chmod(q, 0o444)
        assert _attempts(q) == (False, "ok") and _mode(q) == 0o444 and q.read_text() == "new"


def test_root_replacing_a_file_of_another_user_keeps_owner_and_mode(tmp_path):
    if not ROOT:
        pytest.skip("only root can give a file to another user")
    p = tmp_path / "theirs.json"
    p.write_text("old")
    os.chown(p, NOBODY, NOBODY)
    os.chmod(p, 0o600)
    with atomic_write(p) as fh:
        fh.write("new")
    st = p.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert p.read_text() == "new"


def test_owner_is_copied_only_when_running_as_root(tmp_path, monkeypatch):
    """The chown calls made for root and for another user (portable, no privileges needed)."""
    p = tmp_path / "x"
    p.write_text("")
    old = os.stat_result((0o100600, 0, 0, 1, 1234, 5678, 0, 0, 0, 0))
    calls = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: calls.append((uid, gid)))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _fileio._copy_mode_and_owner(p, old)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _fileio._copy_mode_and_owner(p, old)
    assert calls == [(1234, 5678), (-1, 5678)]
    assert _mode(p) == 0o600


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(p: Path, seconds: float = 3600.0) -> Path:
    t = time.time() - seconds
    os.utime(p, (t, t))
    return p


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".trajectory.{dead}-abcd_123.siflow.tmp.npz": True,  # killed writer, old
        f".table.{dead}-zzzzzzzz.siflow.tmp.csv": True,
        ".trajectory.k2j4_x9q.tmp.npz": True,  # earlier versions' name, old
        f".trajectory.{alive}-abcdefgh.siflow.tmp.npz": False,  # its writer still runs
        "trajectory.npz": False,
        ".hidden.tmp.npz": False,  # not a name siflow gives
        f"trajectory.{dead}-abcdefgh.siflow.tmp.npz": False,  # no leading dot
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        _age(tmp_path / name)
    fresh = tmp_path / f".fresh.{dead}-abcdefgh.siflow.tmp.npz"  # younger than this process
    fresh.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, stale in names.items() if stale)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, stale in names.items() if not stale} | {fresh.name}


_KILLED_WRITER = """
import sys, time
from siflow._fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"half a file")
    print(tmp.name, flush=True)
    time.sleep(60)
"""

_NEXT_WRITER = """
import sys
from siflow._fileio import atomic_write
with atomic_write(sys.argv[1]) as fh:
    fh.write("whole")
"""


def test_a_temporary_left_by_kill_9_is_removed_by_the_next_write(tmp_path):
    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "trajectory.npz"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=root,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        name = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert name.startswith(".trajectory.") and name.endswith(".siflow.tmp.npz")
    assert (tmp_path / name).exists() and not target.exists()
    time.sleep(0.05)  # the next process starts strictly later than the temporary was written
    nxt = subprocess.run([sys.executable, "-c", _NEXT_WRITER, str(tmp_path / "summary.json")],
                         cwd=root, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert nxt.returncode == 0, nxt.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("old")
    os.chmod(p, 0o600)
    with pytest.raises(RuntimeError), atomic_write(p) as fh:
        fh.write("new")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and _mode(p) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["a.csv"]


def test_a_directory_target_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"), atomic_path(tmp_path):
        pass


def test_json_ready_gives_strict_json():
    import json
    import math

    import numpy as np

    from siflow._fileio import json_ready

    value = {
        "a": np.float32(1.5),
        "b": [np.int64(3), math.nan, (math.inf, -math.inf)],
        "c": np.array([[1.0, np.nan], [2.0, 3.0]]),
        "d": {"e": "text", "f": None, "g": True},
    }
    out = json_ready(value)
    assert out == {
        "a": 1.5,
        "b": [3, None, [None, None]],
        "c": [[1.0, None], [2.0, 3.0]],
        "d": {"e": "text", "f": None, "g": True},
    }
    assert type(out["a"]) is float and type(out["b"][0]) is int
    assert json.loads(json.dumps(out, allow_nan=False)) == out
