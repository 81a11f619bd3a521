"""Write REQ dynamics logs with REQ's own DynamicsLogger (epfml/REQ, shared/utils/logger.py).

usage: python make_schedules.py REQ_CHECKOUT OUT_DIR   (a checkout of epfml/REQ)

A BatchNorm MLP on scikit-learn's digits (64-32-32-10, BatchNorm without affine, last layer
frozen with lr 0), SGD lr 1, wd 0.01, batch 128, 300 iterations; two logger configs:
``piecewise/`` (interval [[0, 2], [30, 5], [103, 10]], disk_save_interval 4, downsample 2, rms)
and ``first/`` (interval 3, disk_save_interval 10, downsample 5, reducer first). Beside each
log, ``reference.npz``: the SI norm sqrt(|W0|^2 + |W3|^2) of the parameters before every
optimizer step (``step`` = steps taken), computed here in float64 as a second method.
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml

sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # disk logging only
sys.path.insert(0, str(Path(sys.argv[1]) / "shared" / "utils"))
from logger import DynamicsLogger  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

CFGS = {
    "piecewise": {
        "interval": [[0, 2], [30, 5], [103, 10]],
        "disk_save_interval": 4,
        "disk_downsample": 2,
        "disk_reducer": "rms",
    },
    "first": {
        "interval": 3,
        "disk_save_interval": 10,
        "disk_downsample": 5,
        "disk_reducer": "first",
    },
}


def run(name, out):
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32, bias=False),
        torch.nn.BatchNorm1d(32, affine=False),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32, bias=False),
        torch.nn.BatchNorm1d(32, affine=False),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    opt = torch.optim.SGD(
        [
            {"params": [model[0].weight, model[3].weight], "lr": 1.0, "weight_decay": 0.01},
            {"params": list(model[6].parameters()), "lr": 0.0, "weight_decay": 0.0},
        ]
    )
    cfg = {
        "stats": ["layer_norm", "neuron_norm", "layer_grad_norm", "layer_angular_update"],
        "disk_stats": "all",
        "disk_max_channels": 16,
        "wandb_interval": None,
        "wandb_stats": "all",
        "wandb_reducer": "rms",
        **CFGS[name],
    }
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logger_cfg.yaml").write_text(yaml.dump(cfg))
    DynamicsLogger(model, opt, cfg, run_dir)  # wraps opt.step
    g = torch.Generator().manual_seed(0)
    steps, norms = [], []
    it = 0
    while it < 300:
        perm = torch.randperm(len(x), generator=g)
        for k in range(0, len(x) - 127, 128):
            idx = perm[k : k + 128]
            w0 = model[0].weight.detach().double()
            w3 = model[3].weight.detach().double()
            steps.append(it)
            norms.append(float(torch.sqrt((w0**2).sum() + (w3**2).sum())))
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            it += 1
            if it == 300:
                break
    np.savez(run_dir / "reference.npz", step=np.array(steps), si_norm=np.array(norms))


if __name__ == "__main__":
    out = Path(sys.argv[2])
    for name in CFGS:
        run(name, out)
