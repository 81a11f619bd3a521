"""``python -m analysis.bench [--quick]``: siflow's kernels against the obvious alternatives.

Prints, in one run, the time per step of each siflow kernel and its ratio to
reference implementations written the obvious way (:mod:`analysis.bench.references`):

1. the exact scalar norm map (``siflow.maps``) against a pure-Python loop and
   against the latency of its own dependent multiply/divide chain;
2. each toy loss with SGD + weight decay (``siflow.simulate``) at dimensions
   16, 128 and 1024 against a plain-numpy loop and a PyTorch CPU loop, with
   achieved FLOP/s and bytes/s against this machine's peaks measured in the
   same run (a one-thread numpy matmul; a memory copy of the kernel's working set);
3. a sweep of many independent simulations (``siflow.sweep``) on 1 worker
   against 2 workers;
4. ``import siflow`` time and the cost of the first (JIT) call in a fresh process;
5. ``siflow.io.read`` on large and hostile files (:mod:`analysis.bench.readers`).

Every target of the project is checked and printed as ``ok`` or ``MISS``.
All small kernels run with BLAS/numba/torch pinned to one thread
(threadpoolctl) so they do not fight over the cores.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

from analysis.bench import _harness as H
from analysis.bench import references as R

TARGETS: list[tuple[str, str, bool]] = []

#: Clock of the single-threaded kernel timings: CPU time of this process (on a machine
#: shared with other jobs, wall time also counts the time spent waiting for a core).
CPU = time.process_time


def _target(name: str, value: str, ok: bool) -> str:
    TARGETS.append((name, value, ok))
    return "ok" if ok else "MISS"


def _fmt_t(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.1f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


# ------------------------------------------------------------------ peaks
class Peaks:
    """Machine peaks measured once per run (bandwidth per working-set size, cached)."""

    def __init__(self) -> None:
        self.flops = H.matmul_flops(1024, clock=CPU)
        self._bw: dict[int, float] = {}

    def bandwidth(self, nbytes: int) -> float:
        key = int(2 ** math.ceil(math.log2(max(nbytes, 4096))))
        if key not in self._bw:
            self._bw[key] = max(H.copy_bandwidth(key, clock=CPU), H.read_bandwidth(key, clock=CPU))
        return self._bw[key]


def section_machine(quick: bool) -> Peaks:
    print("## Machine\n")
    info = H.machine_info()
    for k, v in info.items():
        print(f"- {k}: {v}")
    print()
    with H.pinned_threads(1):
        peaks = Peaks()
        rows = [["matmul 1024x1024 float64, 1 thread", f"{peaks.flops / 1e9:.1f} GFLOP/s"]]
        # bandwidth: the better of a copy and a read-only stream of that working set
        for size in (32 * 1024, 1 << 20, 16 << 20, 256 << 20):
            if quick and size > 16 << 20:
                continue
            rows.append(
                [f"copy / read stream, {size >> 10} KiB", f"{peaks.bandwidth(size) / 1e9:.1f} GB/s"]
            )
    print("## Measured peaks (same run)\n")
    _table(["kernel", "peak"], rows)
    return peaks


# ------------------------------------------------------------ import / JIT
def section_import(quick: bool) -> None:
    print("## Import and JIT start-up\n")
    t_base, t_full = H.import_time("siflow", repeat=3 if quick else 7)
    t_imp = max(t_full - t_base, 0.0)
    ok = _target("import siflow < 1 s", f"{t_full:.3f} s with interpreter start", t_full < 1.0)
    rows = [
        ["python -c 'import siflow' (interpreter start included)", _fmt_t(t_full), "< 1 s", ok],
        ["  of which import siflow", _fmt_t(t_imp) if t_imp > 2e-3 else "< 2 ms (noise)", "", ""],
    ]
    _, t_sim = H.import_time("siflow.simulate", repeat=3 if quick else 5)
    rows.append(["python -c 'import siflow.simulate' (numba, kernels)", _fmt_t(t_sim), "", ""])
    code = (
        "import time; t=time.perf_counter(); import siflow.simulate as s; "
        "s.simulate('rayleigh', lr=0.1, wd=1e-3, steps=10); print(time.perf_counter()-t)"
    )
    try:
        times = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            times.append(float(out.stdout.strip().splitlines()[-1]))
        rows.append(["first simulate() in a fresh process (cache warm)", _fmt_t(times[-1]), "", ""])
    except (subprocess.CalledProcessError, ValueError) as exc:
        rows.append(["first simulate() in a fresh process", f"failed: {str(exc)[:60]}", "", ""])
    _table(["what", "time", "target", ""], rows)


# --------------------------------------------------------------- scalar map
def section_scalar(quick: bool) -> None:
    from analysis.bench import _adapters as A

    print("## Scalar norm map\n")
    steps = 10**6 if quick else 10**7
    py_steps = 10**5 if quick else 10**6
    lr, wd, g = 0.1, 1e-3, 1.0
    a = (1 - lr * wd) ** 2
    b = (lr * g) ** 2
    x0 = 1.0
    rep = 3 if quick else 5
    with H.pinned_threads(1):
        R.chain_latency(x0, a, b, 10)
        t_chain = H.measure(lambda: R.chain_latency(x0, a, b, steps), steps, repeat=rep)
        t_py = H.measure(lambda: R.norm_map_python(x0, a, b, py_steps), py_steps, repeat=rep)
        rows = [
            ["pure-Python loop (list store)", _fmt_t(t_py.per_unit), "", ""],
            ["numba chain x = a*x + b/x (latency floor)", _fmt_t(t_chain.per_unit), "", ""],
        ]
        runs = [
            ("siflow.maps kernel (_norm_map_kernel)", A.siflow_norm_kernel(), True),
            ("siflow.maps.norm_map() front door -> Trajectory", A.siflow_norm_map(), True),
            (
                "reference: fused loop writing rho, elr, angle (references.py)",
                R.norm_map_columns,
                False,
            ),
        ]
        timed = []
        for label, run, _ in runs:
            if run is None:
                rows.append([label, "not available", "", ""])
                timed.append(None)
                continue
            run(x0, lr, wd, g, 10)
            timed.append(H.measure(lambda run=run: run(x0, lr, wd, g, steps), steps, repeat=rep))
    t_sf = None
    for (label, _, is_target), t in zip(runs, timed, strict=True):
        if t is None:
            continue
        r_py = t_py.per_unit / t.per_unit
        r_chain = t.per_unit / t_chain.per_unit
        mark = ""
        if is_target:
            t_sf = t_sf or t
            what = label.split(" (")[0].split(" ->")[0]
            ok_py = _target(f"{what} >= 10x Python", f"{r_py:.0f}x", r_py >= 10)
            ok_ch = _target(f"{what} <= 1.5x chain latency", f"{r_chain:.2f}x", r_chain <= 1.5)
            mark = f"{ok_py} / {ok_ch}"
        rows.append(
            [
                f"{label}, {steps:.0e} steps",
                _fmt_t(t.per_unit),
                f"{r_py:.0f}x faster than Python; {r_chain:.2f}x the chain latency",
                mark,
            ]
        )
    if t_sf is None:
        _table(["implementation", "time/step", "ratio", "target"], rows)
        return
    flops = 3.0 / t_sf.per_unit
    _table(["implementation", "time/step", "ratio", "target"], rows)
    print(
        f"achieved {flops / 1e9:.2f} GFLOP/s (3 flops/step: the map is a dependent chain, bound by "
        f"divide latency, not by throughput); spread of repeats {t_sf.spread:.0%}\n"
    )


# -------------------------------------------------------------------- toys
def section_toys(quick: bool, peaks: Peaks) -> None:
    from analysis.bench import _adapters as A

    print("## Toy losses, SGD + weight decay\n")
    dims = (16, 128, 1024)
    rows: list[list[str]] = []
    fused_rows: list[list[str]] = []
    rep = 3 if quick else 5
    for case in A.toy_cases(dims, quick):
        with H.pinned_threads(1):
            agree = A.check_same_update(case)
            sf = case.siflow()
            t_sf = H.measure(sf, case.steps, repeat=rep, min_time=0.1, clock=CPU)
            t_np = H.measure(case.numpy, case.ref_steps, repeat=rep, min_time=0.1, clock=CPU)
            t_th = H.measure(case.torch, case.ref_steps, repeat=rep, min_time=0.1, clock=CPU)
            if case.fused_steps is not None:
                fz = case.fused_steps
                fz(10)
                k = case.steps
                t_fz = H.measure(lambda fz=fz, k=k: fz(k), k, repeat=rep, min_time=0.1, clock=CPU)
                fz_flops = case.flops_per_step / t_fz.per_unit
        r_np = t_np.per_unit / t_sf.per_unit
        r_th = t_th.per_unit / t_sf.per_unit
        flops = case.flops_per_step / t_sf.per_unit
        bytes_s = case.bytes_per_step / t_sf.per_unit
        bw = peaks.bandwidth(case.working_set)
        roof = min(peaks.flops, bw * case.flops_per_step / case.bytes_per_step)
        frac = flops / roof
        if case.fused_steps is not None:
            fused_rows.append(
                [
                    case.label,
                    _fmt_t(t_fz.per_unit),
                    f"{t_sf.per_unit / t_fz.per_unit:.1f}x",
                    f"{fz_flops / 1e9:.2f} GF/s",
                    f"{fz_flops / roof:.0%}",
                ]
            )
        marks = []
        if case.dim == 16:
            label = case.label
            marks.append(_target(f"{label} >= 30x numpy", f"{r_np:.0f}x", r_np >= 30))
            marks.append(_target(f"{label} >= 10x torch", f"{r_th:.0f}x", r_th >= 10))
        if case.dim == 1024:
            marks.append(
                _target(
                    f"{case.name} d=1024 ahead of numpy and torch",
                    f"{min(r_np, r_th):.1f}x",
                    min(r_np, r_th) > 1,
                )
            )
            marks.append(_target(f"{case.name} d=1024 >= 60% roofline", f"{frac:.0%}", frac >= 0.6))
            marks.append(_target(f"{case.name} d=1024 >= 70% roofline", f"{frac:.0%}", frac >= 0.7))
        rows.append(
            [
                case.label,
                _fmt_t(t_sf.per_unit),
                _fmt_t(t_np.per_unit),
                _fmt_t(t_th.per_unit),
                f"{r_np:.1f}x",
                f"{r_th:.1f}x",
                f"{flops / 1e9:.2f} GF/s, {bytes_s / 1e9:.1f} GB/s",
                f"{frac:.0%} of {roof / 1e9:.1f} GF/s",
                f"{agree:.0e}",
                " ".join(marks),
            ]
        )
    _table(
        [
            "case",
            "siflow/step",
            "numpy/step",
            "torch/step",
            "vs numpy",
            "vs torch",
            "achieved",
            "roofline",
            "agrees with numpy (max rel. diff)",
            "target",
        ],
        rows,
    )
    if fused_rows:
        print(
            "References of the same update (references.py): a hand-fused numba loop "
            "(rayleigh); the two data passes by BLAS gemv (logistic)\n"
        )
        _table(
            ["case", "reference/step", "siflow / reference", "achieved", "of roofline"], fused_rows
        )
    print(
        "roofline = min(matmul peak, bandwidth at the working-set size x flops/byte of the "
        "kernel); flop and byte counts per step are the minimal ones of the update, see "
        "analysis/bench/_adapters.py\n"
    )


# ------------------------------------------------------------------- sweep
def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def section_sweep(quick: bool) -> None:
    from analysis.bench import _adapters as A

    print("## Sweep of independent simulations\n")
    spec = A.sweep_spec(quick)
    rep = 2 if quick else 5
    share: list[float] = []

    def run(workers: int) -> float:
        c0, t0 = _cpu_seconds(), time.perf_counter()
        A.run_sweep(spec, workers=workers)
        wall = time.perf_counter() - t0
        if workers == 1:
            share.append((_cpu_seconds() - c0) / wall)
        return wall

    run(1)
    run(2)  # warm-up
    # alternate 1 and 2 workers so that a change of the machine's load hits both alike
    t1s, t2s = [], []
    for _ in range(rep):
        t1s.append(run(1))
        t2s.append(run(2))
    ratios = [a / b for a, b in zip(t1s, t2s, strict=True)]
    speed = float(np.median(ratios))
    rows = [
        [f"{spec['cells']} cells x {spec['steps']} steps, 1 worker",
         _fmt_t(float(np.median(t1s))), "", ""],
        [
            "same, 2 workers (processes)",
            _fmt_t(float(np.median(t2s))),
            f"{speed:.2f}x",
            ", ".join(f"{r:.2f}" for r in ratios),
        ],
    ]  # fmt: skip
    ok = _target("sweep 2 workers >= 1.8x", f"{speed:.2f}x", speed >= 1.8)
    rows[1].append(ok)
    rows[0].append("")
    _table(["sweep", "median wall time", "speed-up (median of pairs)", "each pair", "target"],
           rows)  # fmt: skip
    print(
        f"the 1-worker runs got {np.median(share):.2f} of a core (CPU s / wall s, median); "
        f"below ~0.95 the machine was busy and 2 workers cannot get 2 cores either\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (about 80 s)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["import", "scalar", "toys", "sweep", "recorder", "readers"],
        help="run only these sections (the machine section always runs)",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    t0 = time.perf_counter()
    print(f"# siflow benchmarks{' (--quick)' if args.quick else ''}\n")
    peaks = section_machine(args.quick)
    only = set(args.only or ["import", "scalar", "toys", "sweep", "recorder", "readers"])
    if "import" in only:
        section_import(args.quick)
    if "scalar" in only:
        section_scalar(args.quick)
    if "toys" in only:
        section_toys(args.quick, peaks)
    if "sweep" in only:
        section_sweep(args.quick)
    if "recorder" in only:
        from analysis.bench.recorder import section_recorder

        section_recorder(args.quick, _target)
    if "readers" in only:
        from analysis.bench import readers

        readers.section(args.quick, _target)
    print("## Targets\n")
    _table(["target", "measured", ""], [[n, v, "ok" if ok else "MISS"] for n, v, ok in TARGETS])
    print(
        f"total bench time {time.perf_counter() - t0:.0f} s; load average now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
