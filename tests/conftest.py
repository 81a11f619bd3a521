"""Shared pytest configuration.

Every package the ``test`` extra declares must import: a missing one fails the run at
start-up with the install command, instead of letting tests skip without a word.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]

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
