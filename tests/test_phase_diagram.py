"""analysis/phase_diagram.py: the period check runs in parallel with the same lines."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "phase_diagram", ROOT / "analysis" / "phase_diagram.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["phase_diagram"] = module
    spec.loader.exec_module(module)
    return module


def test_period_check_in_processes_gives_the_same_lines_in_order():
    pd = _script()
    serial = pd.period_check([1e-2, 3e-3], 6000, workers=1)
    parallel = pd.period_check([1e-2, 3e-3], 6000, workers=2)
    assert parallel == serial  # same seed, same bits, whatever process ran it
    assert len(serial) == 1 + 2 * 2
    assert [re.search(r"momentum (\S+), lr\*wd (\S+):", line).groups() for line in serial[1:]] == [
        ("0", "1e-02"), ("0", "3e-03"), ("0.9", "1e-02"), ("0.9", "3e-03")
    ]  # fmt: skip
    # at lr*wd = 1e-2 the default toy is periodic: a measured period and a prediction
    assert "T " in serial[1] and "predicted" in serial[1]
