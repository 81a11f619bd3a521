"""``python -m analysis.bench.fastmath_experiment``: the toy kernels with and without reassociation.

siflow's simulation-loop kernels (``losses.py``, ``optim.py``, ``simulate.py``) are
compiled with ``fastmath={"reassoc", "contract", "nsz"}`` (not ``nnan``/``ninf``: the
kernels test ``isfinite`` to stop diverging runs, which those flags would let LLVM
delete; not ``arcp``: ``w/|w|`` stays a true division). Without ``reassoc`` IEEE
semantics forbid reordering a sum, so every dot product and norm is a serial chain of
dependent additions (4 cycles each) and no loop with a reduction is vectorised. This
experiment copies the package to a temporary directory, removes those flags there
(strict IEEE order everywhere), and times ``simulate`` on the same toys, in separate
processes, against the unmodified package. It also reports how far the two
trajectories drift apart (float64 round-off only) and, with ``--tests``, runs the
simulation test files against the strict copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ", fastmath=_FAST"
MODULES = ("losses.py", "optim.py", "simulate.py")

_CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1)
from siflow.simulate import simulate
from siflow.losses import LOGISTIC, SILoss, make_loss
quick = sys.argv[1] == "1"
rng = np.random.default_rng(0)
out = []
cases = [("rayleigh", d, 0) for d in (16, 128, 1024)]
cases += [("logistic", 16, 32), ("logistic", 16, 256), ("logistic", 128, 256),
          ("logistic", 1024, 256)]
for name, d, n in cases:
    if name == "rayleigh":
        toy = make_loss("rayleigh", dim=d)
        steps = max(2000, (2 * 10**5 if quick else 10**6) // d)
    else:
        w_star = rng.standard_normal(d); w_star /= np.linalg.norm(w_star)
        x = rng.standard_normal((n, d)); z = np.sign(x @ w_star)[:, None] * x
        toy = SILoss(name="logistic", kind=LOGISTIC, dim=d, params=np.array([4.0]), data=z)
        steps = max(300, (10**5 if quick else 5 * 10**5) * 256 // (d * n))
    w0 = rng.standard_normal(d)
    kw = dict(lr=0.1, wd=1e-3, seed=0, w0=w0, progress=False)
    simulate(toy, steps=10, **kw)
    times = []
    for _ in range(3 if quick else 5):
        t0 = time.process_time()  # CPU time: the machine may be shared
        simulate(toy, steps=steps, **kw)
        times.append((time.process_time() - t0) / steps)
    tr = simulate(toy, steps=200, **kw)
    out.append({"case": f"{name} d={d}" + (f" n={n}" if n else ""),
                "per_step": float(np.median(times)),
                "loss": tr.loss.tolist(), "rho": tr.rho.tolist()})
print(json.dumps(out))
"""


def _patched_copy(dest: Path) -> Path:
    pkg = dest / "siflow"
    shutil.copytree(ROOT / "siflow", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in MODULES:
        path = pkg / name
        text = path.read_text(encoding="utf-8")
        count = text.count(FLAGS)
        path.write_text(text.replace(FLAGS, ""), encoding="utf-8")
        print(f"{name}: {count} kernels recompiled in strict IEEE order")
    return dest


def _run(path: Path, quick: bool) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if quick else "0"],
        env=env, cwd=str(path), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tests", action="store_true", help="run the simulation tests on the copy")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        patched = _patched_copy(Path(tmp))
        base = _run(patched, args.quick)  # strict IEEE order
        fast = _run(ROOT, args.quick)  # siflow as it is
        print("\n| case | strict IEEE/step | siflow/step | speed-up | max rel. diff, 200 steps |")
        print("|---|---|---|---|---|")
        for a, b in zip(base, fast, strict=True):
            import numpy as np

            diff = max(
                float(np.max(np.abs(np.subtract(a[k], b[k])) / np.maximum(np.abs(a[k]), 1e-300)))
                for k in ("loss", "rho")
            )
            print(
                f"| {a['case']} | {a['per_step'] * 1e6:.2f} us | {b['per_step'] * 1e6:.2f} us | "
                f"{a['per_step'] / b['per_step']:.1f}x | {diff:.0e} |"
            )
        if args.tests:
            env = dict(os.environ, PYTHONPATH=str(patched))
            tests = [str(ROOT / "tests" / f) for f in
                     ("test_losses.py", "test_optim.py", "test_simulate.py")]  # fmt: skip
            res = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--rootdir", str(ROOT), *tests],
                env=env, cwd=str(patched), capture_output=True, text=True,
            )  # fmt: skip
            print("\ntests on the strict copy:", res.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
