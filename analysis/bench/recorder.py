"""Overhead of :class:`siflow.torch_probe.SIRecorder` on the digits ConvNet.

``python -m analysis.bench.recorder [--quick] [--baseline FILE]`` times training
steps of the digits ConvNet of ``analysis/nn_periodic.py`` (three 3x3 conv layers
8/16/32 channels, BatchNorm without affine, max pooling, frozen linear head;
scikit-learn's ``load_digits``, mini-batches of 128, SGD lr 0.1, wd 5e-4, torch on
one thread) without a recorder and with one at ``every=1`` and ``every=10``
(window statistics on and off; sharpness excluded). A step is the whole loop
body: ``zero_grad``, forward, loss, backward, ``optimizer.step`` and
``log_loss``.

Blocks of steps of each configuration alternate (plain, recorder, plain, ...),
so a change of the machine's load hits both; the overhead of a configuration
is the median over repeats of (recorder block time / the mean of the two plain
blocks around it) - 1; and, more robust on a busy machine, the CPU time spent
inside the recorder's own hooks (optimizer pre/post-step hooks, backward hook,
``log_loss``; the timer's own cost, measured in the run, is subtracted) over
the plain step time, each the best of the repeats, which the targets use. Times are the
process's CPU time (``time.process_time``,
one thread): on a shared machine the wall time also counts the moments another
process held the core, which is noise for both arms. ``--baseline FILE`` times another version of
``torch_probe.py`` (for example the previous commit's) in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.bench import _harness as H

#: (label, every, window, target overhead or None)
CONFIGS: list[tuple[str, int, bool, float | None]] = [
    ("every=1", 1, True, 0.25),
    ("every=10", 10, True, 0.05),
    ("every=10, window=False", 10, False, None),
    ("every=100", 100, True, None),
]


def _load_probe(path: str | None) -> Any:
    if path is None:
        from siflow import torch_probe

        return torch_probe
    spec = importlib.util.spec_from_file_location("_baseline_torch_probe", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"baseline={path!r} is not a Python file; pass a torch_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bench:
    """The ConvNet, its optimizer and a stream of mini-batches."""

    def __init__(self, batch: int = 128, seed: int = 0) -> None:
        import torch

        from analysis.nn_periodic import build, load_data

        self.torch = torch
        xtr, ytr, _, _ = load_data()
        self.x, self.y = torch.from_numpy(xtr), torch.from_numpy(ytr)
        torch.manual_seed(seed)
        self.model = build("convnet", torch)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.1, weight_decay=5e-4)
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)
        self.loss_hook: Callable[[Any], None] | None = None

    def steps(self, n: int) -> None:
        torch, nn = self.torch, self.torch.nn
        for _ in range(n):
            idx = torch.randint(0, len(self.y), (self.batch,), generator=self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
            if self.loss_hook is not None:
                self.loss_hook(loss)


_TIMER = [0.0]  # CPU seconds per timed call spent in the timer (measured in the run)


class _Clock:
    """CPU time spent inside wrapped callables."""

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.process_time() - t0
                self.calls += 1

        return timed


def timer_cost(calls: int = 20000) -> float:
    """CPU seconds the timing wrapper itself adds to one call (best of 5), subtracted."""
    best = math.inf
    for _ in range(5):
        clock = _Clock()
        nop = clock.wrap(lambda: None)
        for _ in range(calls):
            nop()
        best = min(best, clock.total / calls)
    return best


def _recorder(probe: Any, bench: Bench, every: int, window: bool, clock: _Clock) -> Any:
    """A recorder whose hooks (optimizer pre/post step, backward, log_loss) are timed."""
    cls = probe.SIRecorder
    timed = type(
        "TimedRecorder",
        (cls,),
        {
            name: clock.wrap(getattr(cls, name))
            for name in ("_pre_hook", "_post_hook", "_on_backward", "log_loss")
        },
    )
    kw = {"window": window} if "window" in cls.__init__.__code__.co_varnames else {}
    return timed(bench.model, bench.opt, every=every, **kw)


def _block(
    bench: Bench, probe: Any, steps: int, every: int | None, window: bool
) -> tuple[float, float]:
    """CPU seconds per step of one block, and of that the recorder's own hooks."""
    rec, clock = None, _Clock()
    if every is not None:
        rec = _recorder(probe, bench, every, window, clock)
        bench.loss_hook = rec.log_loss
    t0 = time.process_time()
    bench.steps(steps)
    dt = (time.process_time() - t0) / steps
    if rec is not None:
        rec.close()
        bench.loss_hook = None
    return dt, max(clock.total - clock.calls * _TIMER[0], 0.0) / steps


def measure_overheads(
    quick: bool, baseline: str | None = None
) -> list[tuple[str, float, float, float, float | None]]:
    """``(label, plain s/step, in-hook share, A/B overhead, target)`` per configuration.

    The in-hook share is the recorder's CPU time per step inside its hooks over the
    plain step's, each the best (smallest) of the repeats: load on a shared machine
    only adds time, so the minimum is the least disturbed estimate of either. The
    A/B overhead is the median over repeats of (recorder block / neighbouring plain
    blocks) - 1.
    """
    probes = [("", _load_probe(None))]
    if baseline is not None:
        probes.append(("baseline ", _load_probe(baseline)))
    steps, repeat = (100, 7) if quick else (100, 25)
    out = []
    with H.pinned_threads(1):
        _TIMER[0] = timer_cost()
        bench = Bench()
        bench.steps(30)  # warm-up
        for tag, probe in probes:
            for label, every, window, target in CONFIGS:
                if not window and tag:
                    continue
                ratios, hooks, plains = [], [], []
                before, _ = _block(bench, probe, steps, None, True)
                for _ in range(repeat):
                    rec, hook = _block(bench, probe, steps, every, window)
                    after, _ = _block(bench, probe, steps, None, True)
                    plain = 0.5 * (before + after)
                    ratios.append(rec / plain - 1.0)
                    hooks.append(hook)
                    plains.append(plain)
                    before = after
                out.append(
                    (
                        tag + label,
                        min(plains),
                        min(hooks) / min(plains),
                        statistics.median(ratios),
                        target,
                    )
                )
    return out


HEADER = (
    "| recorder | plain step (CPU, best) | recorder hooks / plain step (best) "
    "| A/B overhead (median) | target |\n"
    "|---|---|---|---|---|"
)


def _row(label: str, plain: float, share: float, over: float, mark: str) -> str:
    return f"| {label} | {plain * 1e3:.3f} ms | {share:.1%} | {over:+.1%} | {mark} |"


def section_recorder(quick: bool, target: Callable[[str, str, bool], str]) -> None:
    """Print the overhead table; ``target(name, value, ok)`` registers each target."""
    print("## SIRecorder overhead, digits ConvNet (batch 128, 1 thread)\n")
    print(HEADER)
    for label, plain, share, over, goal in measure_overheads(quick):
        mark = ""
        if goal is not None:
            mark = target(f"recorder {label} <= {goal:.0%}", f"{share:.1%}", share <= goal)
        print(_row(label, plain, share, over, mark))
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.recorder", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--baseline", help="another torch_probe.py to time in the same run")
    args = p.parse_args(argv)
    if args.baseline is not None and not Path(args.baseline).is_file():
        print(f"error: --baseline {args.baseline!r} is not a file", file=sys.stderr)
        return 2
    print(HEADER)
    for label, plain, share, over, goal in measure_overheads(args.quick, args.baseline):
        ok = "" if goal is None else ("ok" if share <= goal else "MISS")
        print(_row(label, plain, share, over, ok))
    return 0


if __name__ == "__main__":
    sys.exit(main())
