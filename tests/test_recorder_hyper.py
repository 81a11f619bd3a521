"""SIRecorder's per-step momentum / beta1 (schedulers that cycle them) and its group sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")

from siflow.integrations._common import logger_metrics, optimizer_hparams  # noqa: E402
from siflow.io.lightning import read_lightning  # noqa: E402
from siflow.torch_probe import SIRecorder  # noqa: E402
from siflow.trajectory import Trajectory  # noqa: E402

nn = torch.nn
F = nn.functional


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net() -> nn.Module:
    """Two SI layers (Linear without bias -> BatchNorm) of different sizes, and a head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16, affine=False),
        nn.ReLU(),
        nn.Linear(16, 12, bias=False),
        nn.BatchNorm1d(12, affine=False),
        nn.ReLU(),
        nn.Linear(12, 3),
    )


def _run(opt, sched, rec, steps: int, column: str) -> list[float]:
    """Train, reading by hand the momentum term each step runs with (before its step)."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    net = rec.model
    used = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        pg = opt.param_groups[0]
        used.append(float(pg["betas"][0] if column == "beta1" else pg["momentum"]))
        opt.step()
        if sched is not None:
            sched.step()
        rec.log_loss(loss)
    return used


def _sgd(net: nn.Module, **kw) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2, **kw)


@pytest.mark.parametrize("kind", ["sgd_onecycle", "nesterov_cyclic", "adamw_onecycle"])
@pytest.mark.parametrize("every", [1, 3])
def test_a_cycled_momentum_is_recorded_per_step(tmp_path, kind, every):
    net = _net()
    if kind == "sgd_onecycle":
        opt, column = _sgd(net, momentum=0.9), "momentum"
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=30)
        top = 0.95  # OneCycleLR's max_momentum, set at construction
    elif kind == "nesterov_cyclic":
        opt, column = _sgd(net, momentum=0.9, nesterov=True), "momentum"
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=0.01, max_lr=0.2, step_size_up=7, base_momentum=0.7, max_momentum=0.93
        )
        top = 0.93
    else:
        opt, column = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1), "beta1"
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30)
        top = 0.95
    rec = SIRecorder(net, opt, every=every, path=tmp_path / "log.npz")
    used = _run(opt, sched, rec, 30, column)
    rows = rec.take_rows()
    t = rec.trajectory()
    want = np.array(used[::every])
    assert len(set(used)) > 5 and min(used) < top  # the scheduler did cycle it
    # every row holds the value its step ran with, also the rows equal to the metadata's
    np.testing.assert_array_equal(t.extra[column], want)
    assert [r[column] for r in rows] == want.tolist()
    other = "beta1" if column == "momentum" else "momentum"
    assert other not in t.extra and all(other not in r for r in rows)
    # the metadata keeps the configured (peak) value, as for lr
    if column == "momentum":
        assert t.meta["momentum"] == top and "betas" not in t.meta
        assert t.meta.get("nesterov", False) == (kind == "nesterov_cyclic")
    else:
        assert t.meta["betas"] == [top, 0.999] and t.meta["momentum"] == 0.0
    notes = [n for n in t.meta["notes"] if n.startswith(f"{column} varied")]
    assert len(notes) == 1 and f"{want.min():.6g} to {want.max():.6g}" in notes[0]
    # live metrics and the saved log carry it
    metrics = [logger_metrics(r, list(rec.groups)) for r in rows]
    assert [m[f"siflow/{column}"] for m in metrics] == want.tolist()
    back = Trajectory.load(rec.save())
    np.testing.assert_array_equal(back.extra[column], want)


def test_a_constant_momentum_makes_no_column_and_no_note():
    net = _net()
    opt = _sgd(net, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.5, total_steps=20, cycle_momentum=False
    )
    rec = SIRecorder(net, opt)
    used = _run(opt, sched, rec, 20, "momentum")
    t = rec.trajectory()
    assert set(used) == {0.9} and t.meta["momentum"] == 0.9
    assert "momentum" not in t.extra and "lr" in t.extra
    assert not any("varied" in n for n in t.meta.get("notes", []))
    # the live rows give it at every row, as lr and wd
    assert [r["momentum"] for r in rec.take_rows()] == used


class _SignMomentum(torch.optim.Optimizer):
    """A plain SGD step that keeps a ``momentum`` key it does not read."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr, "momentum": 0.5, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-g["lr"])


def test_a_momentum_that_is_not_a_number_is_nan_with_a_note_never_an_error():
    net = _net()
    opt = _SignMomentum(net.parameters())
    rec = SIRecorder(net, opt)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    for t in range(6):
        opt.param_groups[0]["momentum"] = "fast" if t in (2, 3) else 0.5
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()  # the recorder's hook must not raise
    traj = rec.trajectory()
    col = traj.extra["momentum"]
    assert np.isnan(col[[2, 3]]).all() and col[[0, 1, 4, 5]].tolist() == [0.5] * 4
    assert any(
        "not a number at 2 recorded row(s) (first at step 2)" in n for n in traj.meta["notes"]
    )
    assert np.all(np.isfinite(traj.rho))


def test_group_sizes_and_n_params_are_in_the_metadata(tmp_path):
    from siflow.integrations._common import size_hparams

    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    rec = SIRecorder(net, opt, path=tmp_path / "log.csv")
    sizes = {name: sum(p.numel() for p in ps) for name, ps in rec.groups.items()}
    assert sizes == {"0.weight": 8 * 16, "3.weight": 16 * 12}
    assert rec.meta["group_sizes"] == sizes and rec.meta["n_params"] == 8 * 16 + 16 * 12
    _run(opt, None, rec, 3, "beta1")
    back = Trajectory.load(rec.save())
    assert back.meta["group_sizes"] == sizes and back.meta["n_params"] == 320
    assert size_hparams(back.meta) == {
        "siflow/group_sizes/0.weight": 128,
        "siflow/group_sizes/3.weight": 192,
        "siflow/n_params": 320,
    }


def test_group_sizes_of_shards_are_summed_over_the_process_group(tmp_path):
    # process_group= with plain tensors (local shards): the sizes are summed over the
    # group at the first recorded row (here one process: the tensors' own sizes)
    dist = torch.distributed
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        net = _net()
        opt = _sgd(net)
        rec = SIRecorder(net, opt, process_group=dist.group.WORLD)
        assert "group_sizes" not in rec.meta
        _run(opt, None, rec, 2, "momentum")
        assert rec.meta["group_sizes"] == {"0.weight": 128, "3.weight": 192}
        assert rec.trajectory().meta["n_params"] == 320
    finally:
        dist.destroy_process_group()


def test_optimizer_hparams_are_the_configured_values_under_one_cycle():
    net = _net()
    opt = _sgd(net, momentum=0.9)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 / 25)  # the cycle's start
    hp = optimizer_hparams(opt)
    assert (hp["lr"], hp["siflow/param_group0/lr"], hp["weight_decay"]) == (0.5, 0.5, 1e-2)
    assert hp["momentum"] == hp["siflow/momentum"] == 0.95 == SIRecorder(net, opt).meta["momentum"]
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, betas=(0.8, 0.99))
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20, max_momentum=0.9)
    hp = optimizer_hparams(opt)
    assert hp["siflow/betas"] == "0.9,0.99" and "momentum" not in hp


def test_lightning_reader_takes_the_sizes_and_the_momentum_column(tmp_path):
    (tmp_path / "hparams.yaml").write_text(
        "lr: 0.2\n"
        "siflow/group_sizes/net.0.weight: 512\n"
        "'siflow/group_sizes/Block A: weight': 96\n"
        "siflow/n_params: 608\n"
        "siflow/optimizer: sgd\n"
    )
    (tmp_path / "metrics.csv").write_text(
        "epoch,siflow/momentum,siflow/total/norm,step\n0,0.95,2.0,0\n0,0.93,2.1,1\n0,0.9,2.2,2\n"
    )
    t = read_lightning(tmp_path)
    assert t.meta["group_sizes"] == {"net.0.weight": 512, "block_a:_weight": 96}
    assert t.meta["n_params"] == 608
    assert t.extra["momentum"].tolist() == [0.95, 0.93, 0.9]
    assert t.logged("momentum") is t.extra["momentum"] and "siflow/momentum" not in t.extra


def test_logger_metrics_name_the_momentum_terms():
    row = {"rho": 2.0, "lr": 0.1, "wd": 0.0, "momentum": 0.9, "beta1": math.nan}
    out = logger_metrics(row, [])
    assert out["siflow/momentum"] == 0.9 and "siflow/beta1" not in out
    assert logger_metrics({"beta1": 0.85}, [])["siflow/beta1"] == 0.85
