"""Bad-input matrix for every command-line entry point.

Each case runs ``python -m siflow.<cli> ...`` in a subprocess, in its own fresh
working directory (so default output locations such as ``runs/`` land there and
cases can run side by side), and checks the CLI contract of issue 8:

* exit status 2;
* exactly one line on stderr, naming the problem (a per-case pattern) and
  pointing at the fix (an instruction such as "pass ...", "use --map ...", or
  argparse's "see --help");
* no traceback on stdout or stderr;
* no output file left behind (no new file anywhere in the working directory, and
  files that existed before are unchanged).

Root can write anywhere, so "not writable" is a path whose parent is a regular
file. The cases run concurrently (a few subprocesses at a time) to keep the file
fast; each gets its own directory.

A second test calls each CLI's ``main(argv)`` in process on random command lines
(hypothesis, derandomized) built from valid and hostile option values: the exit
status is 0 or 2, never an exception; status 2 comes with one line on stderr; and
``--json`` output is strict JSON (no ``NaN``/``Infinity``, which most JSON readers
reject).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from siflow.trajectory import Trajectory

#: An instruction in the message: what to do about the problem.
FIX = re.compile(
    r"\b(pass|use|lower|raise|increase|decrease|reduce|choose|create|give|set|remove|drop|sort|"
    r"add|rename|convert|install|rerun|provide|specify|one of|valid (values|choices) are|"
    r"available|try|fix|delete|split|check)\b|e\.g\.|--help|--map|\?",
    re.IGNORECASE,
)

LR_WD = ["--lr", "0.1", "--wd", "1e-3"]

#: ``name=`` as a Python call writes it (not a flag, not ``name=value`` of a mapping)
PYTHON_PARAMETER = re.compile(r"(?<![\w-])[a-z][a-z0-9_]*=(?=[\s;,.)]|$)")
SIM_FAST = ["--steps", "50", "--quiet"]
SWEEP_FAST = ["--n-lr", "2", "--n-wd", "2", "--steps", "50", "--workers", "1", "--quiet"]


@dataclass
class Case:
    id: str
    module: str
    args: list[str]
    problem: str  # regex (case-insensitive) the error line must match
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# input files
# --------------------------------------------------------------------------------------------
def _good_rows(n: int = 1200, lr: float = 0.1, wd: float = 1e-3) -> list[tuple[int, float, float]]:
    """A periodic log from the exact zero-gradient decay with norm jumps every 300 steps."""
    rows, rho = [], 3.0
    for s in range(n):
        if s and s % 300 == 0:
            rho *= 4.0
        loss = 0.05 + (0.5 if s % 300 < 5 and s >= 300 else 0.0)
        rows.append((s, loss, rho))
        rho *= 1.0 - lr * wd * 10
    return rows


def _csv(rows, header="step,loss,si_norm") -> str:
    return header + "\n" + "".join(",".join(repr(v) for v in r) + "\n" for r in rows)


def good_log(path: Path) -> None:
    path.write_text(_csv(_good_rows()))


def _writer(text: str | bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)

    return write


def _truncated_npz(path: Path) -> None:
    rows = np.array(_good_rows())
    t = Trajectory(step=rows[:, 0], loss=rows[:, 1], rho=rows[:, 2], meta={"lr": 0.1, "wd": 1e-3})
    buf = path.with_name("full.npz")
    t.save(buf)
    data = buf.read_bytes()
    buf.unlink()
    path.write_bytes(data[: len(data) // 2])


def _truncated_csv_text() -> str:
    text = _csv(_good_rows())
    cut = text.rindex("\n", 0, len(text) - 1)  # start of the last row
    return text[: cut + 5]  # the last row cut after a few characters (no newline)


def _truncated_jsonl_text() -> str:
    lines = [json.dumps({"step": s, "loss": lo, "si_norm": r}) for s, lo, r in _good_rows()]
    text = "\n".join(lines)
    return text[: len(text) - len(lines[-1]) // 2]


def _nan_rows_text() -> str:
    rows = [(s, float("nan"), float("nan")) for s, _, _ in _good_rows()]
    return _csv(rows).replace("nan", "NaN")


def _dup_steps_text() -> str:
    """Step 599 logged twice with different values (not a harmless repeated row)."""
    rows = _good_rows()
    s, loss, rho = rows[599]
    rows.insert(600, (s, loss * 2.0, rho * 1.5))
    return _csv(rows)


def _decreasing_steps_text() -> str:
    rows = _good_rows()
    rows[600], rows[601] = rows[601], rows[600]
    return _csv(rows)


def _binary() -> bytes:
    rng = np.random.default_rng(0)
    return bytes(rng.integers(0, 256, 4096, dtype=np.uint8))


def _mkdir(path: Path) -> None:
    path.mkdir()


def _plain_file(path: Path) -> None:
    path.write_text("not a directory\n")


def _foreign_sweep(path: Path) -> None:
    """A folder holding another sweep's configuration."""
    path.mkdir()
    (path / "sweep.json").write_text('{"loss": "another"}\n')


def _not_a_sweep(path: Path) -> None:
    """A folder holding a table.csv and a phase_diagram.png of something else."""
    path.mkdir()
    (path / "table.csv").write_text("mine\n")
    (path / "phase_diagram.png").write_text("mine\n")


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------
def _theory(id_, args, problem):
    return Case(f"theory-{id_}", "theory", args, problem)


def _sim(id_, args, problem, files=None):
    return Case(f"simulate-{id_}", "simulate", SIM_FAST + args, problem, files or {})


def _overlay(id_, args, problem, files=None):
    return Case(f"overlay-{id_}", "overlay", args, problem, files or {})


def _sweep(id_, args, problem, files=None):
    return Case(f"sweep-{id_}", "sweep", SWEEP_FAST + args, problem, files or {})


def _forecast(id_, args, problem, files=None):
    return Case(f"forecast-{id_}", "forecast", args, problem, files if files is not None else LOG)


#: the forecast reads the norm from the log's si_norm column
FC = ["log.csv", "--map", "rho=si_norm"]


G1 = ["--grad-norm", "1"]
LOG = {"log.csv": good_log}

CASES: list[Case] = [
    # ---- python -m siflow.theory
    _theory("lr-negative", ["--lr", "-1", "--wd", "1e-3", *G1], r"\blr\b"),
    _theory("lr-zero", ["--lr", "0", "--wd", "1e-3", *G1], r"\blr\b"),
    _theory("lr-nan", ["--lr", "nan", "--wd", "1e-3", *G1], r"\blr\b"),
    _theory("lr-inf", ["--lr", "inf", "--wd", "1e-3", *G1], r"\blr\b"),
    _theory("lr-not-a-number", ["--lr", "abc", "--wd", "1e-3", *G1], r"lr"),
    _theory("lr-missing", ["--wd", "1e-3", *G1], r"lr"),
    _theory("wd-negative", ["--lr", "0.1", "--wd", "-1e-3", *G1], r"\bwd\b"),
    _theory("wd-zero", ["--lr", "0.1", "--wd", "0", *G1], r"\bwd\b"),
    _theory("wd-nan", ["--lr", "0.1", "--wd", "nan", *G1], r"\bwd\b"),
    _theory("lrwd-equal-1", ["--lr", "10", "--wd", "0.1", *G1], r"lr\s*\*\s*wd"),
    _theory("lrwd-above-1", ["--lr", "50", "--wd", "0.1", *G1], r"lr\s*\*\s*wd"),
    _theory("grad-norm-negative", [*LR_WD, "--grad-norm", "-1"], r"grad.norm"),
    _theory("grad-norm-inf", [*LR_WD, "--grad-norm", "inf"], r"grad.norm"),
    _theory("momentum-1", [*LR_WD, *G1, "--momentum", "1"], r"momentum"),
    _theory("momentum-negative", [*LR_WD, *G1, "--momentum", "-0.5"], r"momentum"),
    _theory(
        "wd-underflows", ["--lr", "0.1", "--wd", "1e-400"], r"--wd: 1e-400 .*would be read as 0"
    ),
    _theory("schedule-without-wd", ["--schedule", "cosine:peak=0.1,steps=100"], r"--wd"),
    _theory("schedule-unknown", ["--schedule", "bogus", "--wd", "1e-3"], r"schedule kind"),
    # flags that only a schedule uses were ignored without one (a NaN norm printed a table)
    _theory("rho0-nan-without-schedule", [*LR_WD, *G1, "--rho0", "nan"], r"--rho0.*--schedule"),
    _theory("steps-without-schedule", [*LR_WD, *G1, "--steps", "-5"], r"--steps.*--schedule"),
    _theory(
        "steps-negative-with-schedule",
        ["--schedule", "cosine:peak=0.1,steps=100", "--wd", "1e-3", "--steps", "-5"],
        r"--steps must be >= 1",
    ),
    # ---- python -m siflow.derive
    Case("derive-unknown-result", "derive", ["nosuchthing"], r"nosuchthing|choice"),
    Case(
        "derive-unknown-optimizer",
        "derive",
        ["equilibrium", "--optimizer", "rmsprop"],
        r"rmsprop|optimizer",
    ),
    Case("derive-no-result", "derive", [], r"required|argument|choose|result"),
    # ---- python -m siflow.simulate
    _sim("lr-negative", ["--lr", "-0.1", "--wd", "1e-3"], r"\blr\b"),
    _sim("lr-zero", ["--lr", "0", "--wd", "1e-3"], r"\blr\b"),
    _sim("lr-nan", ["--lr", "nan", "--wd", "1e-3"], r"\blr\b"),
    _sim("lr-inf", ["--lr", "inf", "--wd", "1e-3"], r"\blr\b"),
    _sim("wd-negative", ["--lr", "0.1", "--wd", "-1e-3"], r"\bwd\b"),
    _sim("wd-nan", ["--lr", "0.1", "--wd", "nan"], r"\bwd\b"),
    _sim("lrwd-equal-1", ["--lr", "10", "--wd", "0.1"], r"lr\s*\*\s*wd"),
    _sim("lrwd-above-1", ["--lr", "100", "--wd", "0.1"], r"lr\s*\*\s*wd"),
    _sim("lrwd-overflows", ["--lr", "1e300", "--wd", "1e300"], r"lr\s*\*\s*wd"),
    _sim("momentum-1", [*LR_WD, "--momentum", "1"], r"momentum"),
    _sim("momentum-negative", [*LR_WD, "--momentum", "-0.5"], r"momentum"),
    _sim("steps-zero", [*LR_WD, "--steps", "0"], r"steps"),
    _sim("steps-negative", [*LR_WD, "--steps", "-5"], r"steps"),
    _sim("steps-not-int", [*LR_WD, "--steps", "1.5"], r"steps"),
    _sim("dim-zero", [*LR_WD, "--dim", "0"], r"\bdim"),
    _sim("dim-negative", [*LR_WD, "--dim", "-3"], r"\bdim"),
    _sim("loss-unknown", [*LR_WD, "--loss", "nosuchloss"], r"nosuchloss|loss"),
    _sim("optimizer-unknown", [*LR_WD, "--optimizer", "nosuchopt"], r"nosuchopt|optimizer"),
    _sim("noise-negative", [*LR_WD, "--noise", "-1"], r"noise"),
    _sim("noise-nan", [*LR_WD, "--noise", "nan"], r"noise"),
    _sim("batch-zero", [*LR_WD, "--batch", "0"], r"batch"),
    _sim("seed-negative", [*LR_WD, "--seed", "-1"], r"seed"),
    _sim("max-rows-zero", [*LR_WD, "--max-rows", "0"], r"--max-rows"),  # ZeroDivisionError
    # a time estimate line, then the error; and an OverflowError traceback
    _sim("steps-beyond-2-53", [*LR_WD, "--steps", str(10**30)], r"--steps must be at most 2\*\*53"),
    _sim(
        "record-every-beyond", [*LR_WD, "--record-every", str(10**33)], r"--record-every .*2\*\*53"
    ),
    # numpy's overflow warning printed two more lines before the error
    _sim("rho0-overflows", [*LR_WD, "--rho0", "1e308"], r"--rho0 1e\+308 is outside"),
    _sim("out-is-a-file", [*LR_WD, "--out", "taken"], r"director|taken", {"taken": _plain_file}),
    _sim(
        "steps-1e12-every-row",
        [*LR_WD, "--steps", "1000000000000", "--record-every", "1"],
        r"--record-every",
    ),
    _sim("dim-1e9", [*LR_WD, "--dim", "1000000000"], r"memory.*--dim"),
    _sim(
        "sharpness-dim-1e5",
        [*LR_WD, "--loss", "rayleigh", "--dim", "100000", "--sharpness"],
        r"memory.*sharpness",
    ),
    _sim("wd-underflows", ["--lr", "0.1", "--wd", "1e-400"], r"--wd: 1e-400 .*would be read as 0"),
    _sim("schedule-unknown", [*LR_WD, "--schedule", "bogus"], r"schedule kind"),
    _sim("schedule-lrwd-1", [*LR_WD, "--schedule", "cosine:peak=5000,steps=50"], r"lr\*wd"),
    _sim(
        "out-parent-is-a-file",
        [*LR_WD, "--out", "afile/run"],
        r"director|afile|exist|writ",
        {"afile": _plain_file},
    ),
    # loss options (a traceback, a silent override, numpy's words)
    _sim("loss-option-dim", [*LR_WD, "--loss-option", "dim=5"], r"not a --loss-option.*--dim 5"),
    _sim(
        "loss-option-seed-negative",
        [*LR_WD, "--loss-option", "seed=-1"],
        r"--loss-option seed=-1 .*>= 0.*--loss-option seed=0",
    ),
    _sim(
        "loss-option-temperature-huge",
        [*LR_WD, "--loss-option", "temperature=1e300"],
        r"--loss-option temperature=1e\+300 .*<= 1e\+50",
    ),
    _sim(
        "dim-against-spectrum",
        [*LR_WD, "--loss", "rayleigh", "--dim", "5", "--loss-option", "spectrum=[0,1,4]"],
        r"--dim 5 does not match the spectrum's 3 eigenvalues.*--dim 3",
    ),
    _sim(
        "sharpness-with-spectrum",
        [*LR_WD, "--loss", "rayleigh", *("--loss-option", "spectrum=[0,1,4]")]
        + ["--loss-option", "sharpness=3"],
        r"--loss-option sharpness=3 has no effect with a spectrum",
    ),
    # a schedule one step short holds lr = 0 at the run's last step
    _sim(
        "schedule-ends-before-the-run",
        [*LR_WD, "--schedule", "cosine:steps=49"],
        r"--schedule 'cosine:steps=49' reaches lr = 0 at step 49.*steps=50",
    ),
    _sim(
        "wd-schedule-ends-before-the-run",
        [*LR_WD, "--wd-schedule", "linear:steps=25"],
        r"--wd-schedule 'linear:steps=25' reaches wd = 0 at step 25",
    ),
    # ---- python -m siflow.overlay
    _overlay("log-missing", ["nope.csv", *LR_WD], r"nope\.csv|no such|not found|exist"),
    # a named pipe would block the reader until some process writes to it
    _overlay("log-is-a-pipe", ["log.csv", *LR_WD], r"not a regular file", {"log.csv": os.mkfifo}),
    _overlay(
        "log-is-a-pipe-with-format",
        ["log.csv", "--fmt", "csv", *LR_WD],
        r"not a regular file",
        {"log.csv": os.mkfifo},
    ),
    _overlay(
        "log-empty",
        ["log.csv", *LR_WD],
        r"empty|no (data|rows|header|step)",
        {"log.csv": _writer("")},
    ),
    _overlay(
        "log-binary",
        ["log.csv", *LR_WD],
        r"binary|text|decode|format|not a|recogn",
        {"log.csv": _writer(_binary())},
    ),
    _overlay(
        "log-truncated-csv",
        ["log.csv", *LR_WD],
        r"truncat|corrupt|row|cells|incomplete",
        {"log.csv": _writer(_truncated_csv_text())},
    ),
    _overlay(
        "log-truncated-jsonl",
        ["log.jsonl", *LR_WD],
        r"truncat|corrupt|line|json",
        {"log.jsonl": _writer(_truncated_jsonl_text())},
    ),
    _overlay(
        "log-truncated-npz",
        ["log.npz", *LR_WD],
        r"truncat|corrupt|zip|npz|not a",
        {"log.npz": _truncated_npz},
    ),
    # a zip signature followed by text: read as a CSV ("has a header but no data rows")
    _overlay(
        "log-zip-signature-only",
        ["log.npz", *LR_WD],
        r"no readable zip directory",
        {"log.npz": _writer(b"PK\x03\x04not the rest of a zip file\n")},
    ),
    # text under an .npz name (no zip signature): named as a damaged archive, not read as a
    # table ("has a header but no data rows")
    _overlay(
        "log-npz-name-text-bytes",
        ["log.npz", *LR_WD],
        r"not a valid \.npz \(no zip header\)",
        {"log.npz": _writer("garbage\n")},
    ),
    _forecast(
        "log-npz-name-text-bytes",
        ["log.npz", *LR_WD],
        r"not a valid \.npz \(no zip header\)",
        {"log.npz": _writer("step,rho\n0,1\n1,0.9\n2,0.8\n")},
    ),
    _overlay(
        "log-is-a-directory", ["log.csv", *LR_WD], r"director|event|no .*file", {"log.csv": _mkdir}
    ),
    _overlay(
        "log-parent-is-a-file",
        ["afile/log.csv", *LR_WD],
        r"afile|director|no such|not found|exist",
        {"afile": _plain_file},
    ),
    _overlay(
        "log-all-nan",
        ["log.csv", *LR_WD],
        r"nan|finite|no (valid|usable)",
        {"log.csv": _writer(_nan_rows_text())},
    ),
    _overlay(
        "log-duplicate-steps",
        ["log.csv", *LR_WD],
        r"duplicate|increasing",
        {"log.csv": _writer(_dup_steps_text())},
    ),
    _overlay(
        "log-decreasing-steps",
        ["log.csv", *LR_WD],
        r"increasing|decreas|sort|order|back",
        {"log.csv": _writer(_decreasing_steps_text())},
    ),
    _overlay(
        "log-no-usable-column",
        ["log.csv", *LR_WD],
        r"--map|column|missing",
        {"log.csv": _writer("step,accuracy\n" + "".join(f"{i},0.5\n" for i in range(50)))},
    ),
    _overlay(
        "log-no-step-column",
        ["log.csv", *LR_WD],
        r"step",
        {
            "log.csv": _writer(
                "when,si_norm,loss\n" + "".join(f"{i * 0.1},{2 - i / 100},0.3\n" for i in range(50))
            )
        },
    ),
    _overlay("map-no-equals", ["log.csv", *LR_WD, "--map", "rho"], r"field=column|=|--map", LOG),
    _overlay("map-missing-column", ["log.csv", *LR_WD, "--map", "rho=nope"], r"nope", LOG),
    _overlay("map-unknown-field", ["log.csv", *LR_WD, "--map", "bogus=si_norm"], r"bogus", LOG),
    _overlay("lr-negative", ["log.csv", "--lr", "-1", "--wd", "1e-3"], r"\blr\b", LOG),
    _overlay("wd-nan", ["log.csv", "--lr", "0.1", "--wd", "nan"], r"\bwd\b", LOG),
    _overlay("lrwd-above-1", ["log.csv", "--lr", "20", "--wd", "0.1"], r"lr\s*\*\s*wd", LOG),
    _overlay("momentum-1", ["log.csv", *LR_WD, "--momentum", "1"], r"momentum", LOG),
    _overlay(
        "steps-per-epoch-zero",
        ["log.csv", *LR_WD, "--steps-per-epoch", "0"],
        r"steps.per.epoch",
        LOG,
    ),
    _overlay(
        "out-is-a-directory",
        ["log.csv", *LR_WD, "--out", "fig.png"],
        r"director|fig",
        {**LOG, "fig.png": _mkdir},
    ),
    _overlay(
        "out-parent-is-a-file",
        ["log.csv", *LR_WD, "--out", "afile/fig.png"],
        r"director|afile|exist|writ",
        {**LOG, "afile": _plain_file},
    ),
    _overlay(
        "predict-lr-negative",
        ["log.csv", *LR_WD, "--predict-lr", "-1", "--predict-wd", "1e-3"],
        r"predict.lr|\blr\b",
        LOG,
    ),
    # ---- python -m siflow.sweep
    _sweep("lr-zero", ["--lr", "0", "1", "--wd", "1e-4", "1e-3"], r"\blr\b"),
    _sweep("lr-nan", ["--lr", "nan", "1", "--wd", "1e-4", "1e-3"], r"\blr\b"),
    _sweep("wd-negative", ["--lr", "0.01", "1", "--wd", "-1e-4", "1e-3"], r"\bwd\b"),
    _sweep("lrwd-above-1", ["--lr", "10", "20", "--wd", "0.1", "0.2"], r"lr\s*\*\s*wd"),
    _sweep("momentum-1", ["--momentum", "1"], r"momentum"),
    _sweep("steps-zero", ["--steps", "0"], r"steps"),
    _sweep("n-lr-zero", ["--n-lr", "0"], r"n.lr"),
    _sweep("seed-negative", ["--seeds", "-1"], r"seed"),
    _sweep("loss-unknown", ["--loss", "nosuchloss"], r"nosuchloss|loss"),
    _sweep("workers-zero", ["--workers", "0"], r"workers"),
    _sweep("record-every-zero", ["--record-every", "0"], r"record.every"),  # ZeroDivisionError
    _sweep("max-rows-zero", ["--max-rows", "0"], r"max.rows"),
    # numpy's "Maximum allowed size exceeded" while building the axis
    _sweep("n-lr-beyond", ["--n-lr", str(10**29)], r"--n-lr .*at most 1,000,000"),
    _sweep("out-is-a-file", ["--out", "taken"], r"director|taken", {"taken": _plain_file}),
    _sweep(
        "out-parent-is-a-file",
        ["--out", "afile/sweep"],
        r"director|afile|exist|writ",
        {"afile": _plain_file},
    ),
    # sweep: refused before any cell runs, and nothing made in --out
    _sweep(
        "schedule-with-its-own-peak",
        ["--schedule", "cosine:peak=0.5,steps=50"],
        r"sets peak=0\.5.*drop peak=0\.5 from --schedule",
    ),
    _sweep(
        "schedule-ends-before-the-cells",
        ["--schedule", "linear:steps=40"],
        r"--schedule 'linear:steps=40' reaches lr = 0 at step 40",
    ),
    _sweep("figure-folder-missing", ["--figure", "nodir/x.png"], r"--figure .*does not exist"),
    _sweep("out-of-another-sweep", ["--out", "o"], r"different sweep", {"o": _foreign_sweep}),
    _sweep("out-not-a-sweep", ["--out", "o"], r"no sweep\.json", {"o": _not_a_sweep}),
    _sweep("max-hours-zero", ["--max-hours", "0"], r"--max-hours"),
    # ---- python -m siflow.forecast
    _forecast("log-missing", ["nope.csv", *LR_WD], r"no such log", {}),
    _forecast("log-binary", ["log.csv", *LR_WD], r"binary", {"log.csv": _writer(_binary())}),
    _forecast("log-is-a-directory", ["log.csv", *LR_WD], r"directory", {"log.csv": _mkdir}),
    _forecast(
        "log-empty", ["log.csv", *LR_WD], r"empty|no (data|rows|header)", {"log.csv": _writer("")}
    ),
    _forecast("no-lr-wd", FC, r"--lr and --wd"),
    _forecast("lr-negative", [*FC, "--lr", "-1", "--wd", "1e-3"], r"\blr\b"),
    _forecast("lrwd-above-1", [*FC, "--lr", "20", "--wd", "0.1"], r"lr\s*\*\s*wd"),
    _forecast("momentum-1", [*FC, *LR_WD, "--momentum", "1"], r"momentum"),
    _forecast(
        "momentum-column-above-1",
        [*FC, *LR_WD],
        r"the log's momentum column holds 1\.5 at step 0: .*fix that column",
        {"log.csv": _writer(_csv([(*r, 1.5) for r in _good_rows()], "step,loss,si_norm,momentum"))},
    ),
    _forecast("optimizer-lion", [*FC, *LR_WD, "--optimizer", "lion"], r"lion"),
    _forecast("blend-above-1", [*FC, *LR_WD, "--blend", "2"], r"blend"),
    _forecast("fit-fraction-zero", [*FC, *LR_WD, "--fit-fraction", "0"], r"fit.fraction"),
    _forecast("min-fit-rows-zero", [*FC, *LR_WD, "--min-fit-rows", "0"], r"min.fit.rows"),
    _forecast("threshold-unknown", [*FC, *LR_WD, "--threshold", "curvature"], r"curvature"),
    _forecast("threshold-no-sharpness", [*FC, *LR_WD, "--threshold", "sharpness"], r"sharpness"),
    _forecast("history-unknown", [*FC, *LR_WD, "--history", "mean"], r"mean"),
    _forecast("signal-unknown", [*FC, *LR_WD, "--signal", "bogus"], r"bogus"),
    _forecast("smooth-zero", [*FC, *LR_WD, "--smooth", "0"], r"smooth"),
    _forecast("sharpness-negative", [*FC, *LR_WD, "--sharpness", "-1"], r"sharpness"),
    _forecast("min-rise-nan", [*FC, *LR_WD, "--min-rise", "nan"], r"min.rise"),
    _forecast("map-missing-column", ["log.csv", *LR_WD, "--map", "rho=nope"], r"nope"),
]

assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    new_files: list[str]
    changed_files: list[str]
    seconds: float


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
    env.pop("PYTHONWARNINGS", None)
    # the commands run in a temporary directory: import this checkout's siflow
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def run_case(case: Case, cwd: Path) -> Outcome:
    for name, make in case.files.items():
        make(cwd / name)
    before = _snapshot(cwd)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"siflow.{case.module}", *case.args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = _snapshot(cwd)
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    seconds = time.perf_counter() - start
    return Outcome(proc.returncode, proc.stdout, proc.stderr, new, changed, seconds)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every selected case once, a few at a time, each in its own directory."""
    wanted = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if item.module is request.module and spec is not None and "case" in spec.params:
            wanted.append(spec.params["case"])
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(run_case, c, tmp_path_factory.mktemp(c.id)) for c in wanted}
        return {k: f.result() for k, f in futures.items()}


def _describe(case: Case, out: Outcome) -> str:
    cmd = " ".join(["python -m siflow." + case.module, *case.args])
    return (
        f"\n$ {cmd}\nexit {out.returncode}\n--- stderr\n{out.stderr}--- stdout\n{out.stdout[:2000]}"
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_output(case: Case, outcomes):
    out = outcomes[case.id]
    info = _describe(case, out)
    assert "Traceback" not in out.stderr + out.stdout, "traceback printed" + info
    assert out.returncode == 2, "exit status is not 2" + info
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr has {len(lines)} lines, expected one" + info
    line = lines[0]
    assert re.search(case.problem, line, re.IGNORECASE), (
        f"the error line does not name the problem (/{case.problem}/)" + info
    )
    assert FIX.search(line), "the error line gives no fix" + info
    # a library parameter is named by its flag (--lr), not as Python writes it (lr=)
    assert not PYTHON_PARAMETER.search(line), "the error line names a Python parameter" + info
    assert not out.new_files, f"files left behind: {out.new_files}" + info
    assert not out.changed_files, f"existing files modified: {out.changed_files}" + info


def test_the_matrix_covers_every_cli_with_at_least_40_cases():
    modules = {c.module for c in CASES}
    assert modules == {"theory", "derive", "simulate", "overlay", "sweep", "forecast"}
    assert len(CASES) >= 40


def test_input_files_are_what_their_case_says(tmp_path):
    """The hand-made bad logs really are bad in the stated way (guards the matrix itself)."""
    rows = np.array(_good_rows())
    assert np.all(np.diff(rows[:, 0]) > 0) and np.all(np.isfinite(rows))
    text = _truncated_csv_text()
    assert not text.endswith("\n") and text.count("\n") == len(rows)
    last = text.rsplit("\n", 1)[1]
    assert len(last.split(",")) < 3
    with pytest.raises(json.JSONDecodeError):
        json.loads(_truncated_jsonl_text().rsplit("\n", 1)[1])
    _truncated_npz(tmp_path / "t.npz")
    with pytest.raises(ValueError):
        Trajectory.load(tmp_path / "t.npz")
    dup = np.loadtxt(io.StringIO(_dup_steps_text()), delimiter=",", skiprows=1)
    assert np.any(np.diff(dup[:, 0]) == 0)
    dec = np.loadtxt(io.StringIO(_decreasing_steps_text()), delimiter=",", skiprows=1)
    assert np.any(np.diff(dec[:, 0]) < 0)
    nan = np.genfromtxt(io.StringIO(_nan_rows_text()), delimiter=",", skip_header=1)
    assert np.all(np.isnan(nan[:, 1:]))


# --------------------------------------------------------------------------------------------
# in-process fuzzing of the command lines: any argv gives exit 0 or 2, never an exception
# --------------------------------------------------------------------------------------------
FLOATS = ["0", "-1", "1e-12", "0.1", "0.5", "1", "10", "1e308", "inf", "-inf", "nan", "1e-320",
          "abc", "", "0x10", "1_0", "-0"]  # fmt: skip
INTS = ["0", "-1", "1", "2", "7", "1.5", "abc", "", "nan"]


def _opt(name: str, pool: list[str]):
    return st.tuples(st.just(name), st.sampled_from(pool))


def _argv(options, positional=None, fixed=()):
    """argv = positional + fixed options + random options (each maybe repeated)."""

    @st.composite
    def build(draw):
        argv = [draw(positional)] if positional is not None else []
        argv += list(fixed)  # first, so that a drawn option overrides a fixed one
        for name, value in draw(st.lists(st.one_of(*options), max_size=6)):
            argv += [name, *(value.split(" ") if " " in value else [value])]
        return argv

    return build()


def _strict_json(text: str):
    def bad(token):
        raise AssertionError(f"non-standard JSON constant {token} in the output")

    return json.loads(text, parse_constant=bad)


def _main(module: str):
    import importlib

    return importlib.import_module(module).main


def _call(main, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


FUZZ_CLIS = {
    "theory": (
        "siflow._theory_cli",
        _argv(
            [_opt("--lr", FLOATS), _opt("--wd", FLOATS), _opt("--grad-norm", FLOATS),
             _opt("--momentum", FLOATS + ["0.9", "0.999999"])],
            fixed=["--lr", "0.1", "--wd", "1e-3", "--json"],
        ),
        120,
    ),
    "derive": (
        "siflow.derive",
        _argv([_opt("--optimizer", ["sgd", "sgdm", "adamw", "lion", "x", ""])],
              positional=st.sampled_from(["equilibrium", "angle", "relaxation", "threshold",
                                          "decay", "nope", "--latex"])),
        25,
    ),
    "simulate": (
        "siflow._simulate_cli",
        _argv(
            [_opt("--lr", FLOATS), _opt("--wd", FLOATS), _opt("--momentum", FLOATS + ["0.9"]),
             _opt("--steps", INTS), _opt("--dim", INTS + ["64"]), _opt("--noise", FLOATS),
             _opt("--batch", INTS + ["1000000"]), _opt("--seed", INTS),
             _opt("--rho0", FLOATS), _opt("--record-every", INTS),
             _opt("--loss", ["rayleigh", "logistic", "spiral", "flat", "nope", ""]),
             _opt("--optimizer", ["sgd", "nesterov", "adamw", "fixed_norm", "fixed_elr", "x"])],
            fixed=["--lr", "0.1", "--wd", "1e-3", "--steps", "5", "--no-figure", "--quiet",
                   "--json", "--out", "sim"],
        ),
        80,
    ),
    "overlay": (
        "siflow._overlay_cli",
        _argv(
            [_opt("--lr", FLOATS), _opt("--wd", FLOATS), _opt("--momentum", FLOATS),
             _opt("--steps-per-epoch", INTS), _opt("--map", ["rho=si_norm", "rho", "=", "x=y",
                                                             "loss=nope", "step=loss"]),
             _opt("--fmt", ["csv", "jsonl", "seed-npz", "tensorboard", "nope"]),
             _opt("--predict-lr", FLOATS), _opt("--predict-wd", FLOATS)],
            positional=st.sampled_from(["log.csv", "bad.csv", "nope.csv", "."]),
            fixed=["--lr", "0.1", "--wd", "1e-3", "--no-figure", "--json"],
        ),
        60,
    ),
    "forecast": (
        "siflow._forecast_cli",
        _argv(
            [_opt("--lr", FLOATS), _opt("--wd", FLOATS), _opt("--momentum", FLOATS + ["0.9"]),
             _opt("--blend", FLOATS), _opt("--fit-fraction", FLOATS),
             _opt("--min-fit-rows", INTS), _opt("--history", ["median", "ar1", "x"]),
             _opt("--threshold", ["auto", "elr", "loss", "sharpness", "x"]),
             _opt("--min-rise", FLOATS), _opt("--smooth", INTS), _opt("--sharpness", FLOATS),
             _opt("--threshold-confirms", FLOATS), _opt("--signal", ["auto", "rho", "loss", "x"]),
             _opt("--map", ["rho=si_norm", "rho", "loss=nope"]),
             _opt("--fmt", ["csv", "jsonl", "nope"])],
            positional=st.sampled_from(["log.csv", "bad.csv", "nope.csv", "."]),
            fixed=["--map", "rho=si_norm", "--lr", "0.1", "--wd", "1e-3", "--json"],
        ),
        60,
    ),
    "sweep": (
        "siflow.sweep",
        _argv(
            [st.tuples(st.just("--lr"), st.sampled_from(["0.1 1", "0 1", "1 0.1", "nan 1",
                                                          "1e308 1e308", "0.1", "a b"])),
             st.tuples(st.just("--wd"), st.sampled_from(["1e-3 1e-2", "-1 1", "1e-3 10",
                                                          "inf 1", "1e-300 1e-300"])),
             _opt("--n-lr", INTS), _opt("--n-wd", INTS), _opt("--steps", INTS),
             _opt("--momentum", FLOATS + ["0.9"]), _opt("--seeds", INTS),
             _opt("--loss", ["rayleigh", "flat", "nope"]), _opt("--noise", FLOATS)],
            fixed=["--n-lr", "2", "--n-wd", "1", "--steps", "50", "--workers", "1", "--quiet",
                   "--json", "--out", "sw", "--restart"],
        ),
        25,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FUZZ_CLIS))
def test_random_command_lines_exit_0_or_2_without_exceptions(name, tmp_path_factory):
    module, argv_strategy, n = FUZZ_CLIS[name]
    main = _main(module)
    root = tmp_path_factory.mktemp(f"argv_{name}")
    good_log(root / "log.csv")
    (root / "bad.csv").write_bytes(_binary())
    here = os.getcwd()
    os.chdir(root)
    try:

        @settings(max_examples=n, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
        @given(argv=argv_strategy)
        def check(argv):
            try:
                code, out, err = _call(main, argv)
            except BaseException as exc:  # noqa: BLE001 - the point of the test
                raise AssertionError(
                    f"python -m siflow.{name} {' '.join(argv)} raised {type(exc).__name__}: {exc}"
                ) from exc
            codes.append(code)
            assert code in (0, 2), f"{argv}: exit {code}\n{err}"
            if code == 0 and "--json" in argv:
                for line in out.splitlines() if name == "sweep" else [out]:
                    _strict_json(line)  # NaN and Infinity are not JSON
            if code == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1, f"{argv}: {len(lines)} lines on stderr:\n{err}"
                assert "Traceback" not in err

        codes: list[int] = []
        check()
        # both outcomes were exercised: the generator reaches valid and invalid command lines
        assert {0, 2} <= set(codes), sorted(set(codes))
    finally:
        os.chdir(here)


@pytest.mark.parametrize(
    "args",
    [["theory", *LR_WD, *G1], ["derive", "equilibrium"]],
    ids=["theory", "derive"],
)
def test_a_closed_output_pipe_ends_the_command_quietly(args, tmp_path):
    # `python -m siflow.theory ... | head -1`: the reader is gone before the table is
    # written; the command printed "error: [Errno 32] Broken pipe" and exited 2
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"siflow.{args[0]}", *args[1:]],
        cwd=tmp_path,
        env=_env(),
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    os.close(read_end)  # long before the interpreter has imported siflow
    _, err = proc.communicate(timeout=300)
    assert err == ""
    assert proc.returncode == 141
