"""The Lightning callback under ``strategy="ddp_spawn"``: 2 CPU processes (gloo).

The logged metrics of the 2-process run (per-rank batch 32) equal those of one
process with the global batch of 64, and only rank 0 writes ``metrics.csv`` and
the siflow log.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")
import lightning.pytorch as pl  # noqa: E402  (declared in the test extra: no skip)
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from siflow.integrations.lightning import SIRecorderCallback  # noqa: E402
from siflow.trajectory import Trajectory  # noqa: E402

nn = torch.nn
STEPS, GLOBAL_BATCH = 16, 64


class LNNet(pl.LightningModule):
    """LayerNorm normalizes each sample: a split batch averages to the global gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(16, 32, bias=False),
            nn.LayerNorm(32, elementwise_affine=False),
            nn.ReLU(),
            nn.Linear(32, 10),
        ).double()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3, weight_decay=1e-2, momentum=0.9)

    def train_dataloader(self):
        """Rank r of w takes samples r, r + w, ...: its batch k is half of global batch k."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(STEPS * GLOBAL_BATCH, 16, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (STEPS * GLOBAL_BATCH,), generator=gen)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        data = torch.utils.data.TensorDataset(x[rank::world], y[rank::world])
        return torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // world)


def _fit(root: Path, devices: int, path: Path) -> Path:
    logger = CSVLogger(root, name="run")
    trainer = pl.Trainer(
        max_steps=STEPS,
        logger=logger,
        callbacks=[SIRecorderCallback(every=1, path=path, groups=["net.0.weight"])],
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(LNNet())
        except torch.multiprocessing.ProcessExitedException as exc:
            # gloo's teardown race: a spawned rank that has finished can abort while the
            # interpreter exits ("terminate called without an active exception"), after
            # its files are written. Any other failure is raised; the files are then
            # checked in full by the caller, so an abort before they are complete fails.
            if exc.signal_name != "SIGABRT":
                raise
    # the spawned rank 0 chose the version directory: find the one file it wrote
    (found,) = (root / "run").rglob("metrics.csv")
    return found


def _column(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(name)]
    return np.array([int(r["step"]) for r in rows]), np.array([float(r[name]) for r in rows])


@pytest.mark.slow
def test_lightning_ddp_spawn_equals_single_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _fit(tmp_path / "single", 1, tmp_path / "single.csv")
        ddp = _fit(tmp_path / "ddp", 2, tmp_path / "ddp.csv")
    finally:
        torch.set_num_threads(threads)
    assert len(list((tmp_path / "ddp").rglob("*.csv"))) == 1  # rank 0 only
    for name in ("siflow/total/norm", "siflow/total/grad_norm_sphere", "siflow/total/elr"):
        s_steps, s_vals = _column(single, name)
        d_steps, d_vals = _column(ddp, name)
        np.testing.assert_array_equal(s_steps, np.arange(STEPS))
        np.testing.assert_array_equal(d_steps, s_steps)
        np.testing.assert_allclose(d_vals, s_vals, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(
        Trajectory.load(tmp_path / "ddp.csv").rho,
        Trajectory.load(tmp_path / "single.csv").rho,
        rtol=1e-6,
    )
