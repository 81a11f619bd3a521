"""Regenerate ``si_cosine.npz`` and ``si_cosine_folded.npz`` (a few seconds on a CPU).

A network whose trained weights are exactly scale-invariant (SI): each layer uses
its weight normalized to a fixed norm, ``y = x W^T g/|W|``, so ``L(c W) = L(W)``
for every ``c > 0`` with no BatchNorm ``eps``. In front of it sits a frozen random
projection (learning rate 0: a non-SI layer, since scaling it scales the logits).
Trained on scikit-learn's digits with plain SGD + coupled weight decay under a
linear-warmup + cosine schedule, recorded every step by two
:class:`siflow.torch_probe.SIRecorder` on the same run:

- ``si_cosine.npz``: the SI weights ``fc1``, ``fc2`` (total = both);
- ``si_cosine_folded.npz``: the same plus the frozen projection, whose norm is
  then folded into the total (the exact SGD norm law no longer holds for it).

Run from the repository root: ``python tests/data/overlay/make_si_cosine.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from siflow.torch_probe import SIRecorder

HERE = Path(__file__).resolve().parent
STEPS, WARMUP, PEAK, LR_MIN, WD, BATCH, SEED = 600, 60, 0.4, 0.004, 0.02, 64, 0


class SILinear(torch.nn.Module):
    """Linear map with its weight rescaled to the fixed norm ``gain`` (exactly SI)."""

    def __init__(self, n_in: int, n_out: int, gain: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in, dtype=torch.float64))
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight * (self.gain / self.weight.norm()))


def main() -> None:
    torch.manual_seed(SEED)
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor((x_np - x_np.mean(0)) / (x_np.std(0) + 1.0), dtype=torch.float64)
    y = torch.tensor(y_np, dtype=torch.int64)
    proj = torch.nn.Linear(64, 64, bias=False, dtype=torch.float64)
    fc1 = SILinear(64, 32, gain=8.0)
    fc2 = SILinear(32, 10, gain=6.0)
    model = torch.nn.Sequential(proj, fc1, torch.nn.ReLU(), fc2)
    opt = torch.optim.SGD(
        [
            {"params": [fc1.weight, fc2.weight], "lr": PEAK, "weight_decay": WD},
            {"params": [proj.weight], "lr": 0.0, "weight_decay": 0.0},  # frozen
        ]
    )

    def factor(t: int) -> float:  # siflow spec cosine:peak=PEAK,warmup=WARMUP,min=LR_MIN,...
        if t < WARMUP:
            return (t + 1) / WARMUP
        s = min(t - WARMUP, STEPS - WARMUP) / (STEPS - WARMUP)
        return (LR_MIN + (PEAK - LR_MIN) * 0.5 * (1 + math.cos(math.pi * s))) / PEAK

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    spec = f"cosine:peak={PEAK},warmup={WARMUP},min={LR_MIN},steps={STEPS}"
    meta = {"seed": SEED, "dataset": "sklearn digits", "schedule": spec, "batch": BATCH}
    si = SIRecorder(model, opt, groups={"fc1": [fc1.weight], "fc2": [fc2.weight]}, meta=meta)
    folded = SIRecorder(
        model,
        opt,
        groups={"fc1": [fc1.weight], "fc2": [fc2.weight], "frozen": [proj.weight]},
        meta=meta,
    )
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(STEPS):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        si.log_loss(loss)
        folded.log_loss(loss)
        opt.step()
        sched.step()
    si.save(HERE / "si_cosine.npz")
    folded.save(HERE / "si_cosine_folded.npz")
    print(f"final loss {loss.item():.4f}; wrote {HERE / 'si_cosine.npz'} and the folded log")


if __name__ == "__main__":
    main()
