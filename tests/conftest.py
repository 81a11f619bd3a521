"""Shared pytest configuration.

Every package the ``test`` extra declares must import: a missing one fails the run at
start-up with the install command, instead of letting tests skip without a word.

numba's on-disk cache checks only a kernel's own file, so a kernel calling an edited
kernel of another module could keep running the old code. The tests therefore compile
into a cache folder named by a digest of the package's sources (set before numba is
imported, inherited by subprocesses): edited sources never meet stale kernels.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_digest() -> str:
    sources = sorted((ROOT / "siflow").rglob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]


os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache" / _source_digest()))

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

#: Distribution name -> the module a test imports, where the two differ.
_MODULE_OF = {
    "scikit-learn": "sklearn",
    "dask": "dask",
    "lightning": "lightning",
    "h5py": "h5py",
}


def declared_test_modules() -> list[str]:
    """Modules of the packages the ``test`` extra of pyproject.toml declares."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = []
    for req in meta["project"]["optional-dependencies"]["test"]:
        dist = req.split(";")[0]
        for sep in "<>=!~[ ":
            dist = dist.split(sep)[0]
        if dist.startswith("siflow"):
            continue
        names.append(_MODULE_OF.get(dist.lower(), dist.lower().replace("-", "_")))
        if "[distributed]" in req:
            names.append("distributed")
    return names


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = []
    for module in declared_test_modules():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise pytest.UsageError(
            f"declared test dependencies missing: {', '.join(missing)}; "
            'install them with: pip install ".[test]"'
        )


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny networks: more threads only spin on a
    shared machine); modules of small torch runs use it for every test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wait_for_process(
    predicate: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 300.0
) -> None:
    """Poll ``predicate`` every 50 ms while ``proc`` runs; fail if it ends or time runs out
    first (the process group is then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}:\n{err}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(predicate, proc, what, timeout=300.0)``: wait, in a test that signals a
    command line, until ``predicate()`` holds (a checkpoint written, a cell saved)."""
    return _wait_for_process
