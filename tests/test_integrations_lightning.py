"""The Lightning callback on a real ``Trainer`` run: values in the loggers' own files."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")
import lightning.pytorch as pl  # noqa: E402  (declared in the test extra: no skip)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from siflow.integrations.lightning import SIRecorderCallback  # noqa: E402
from siflow.trajectory import Trajectory  # noqa: E402

nn = torch.nn
LR, WD, STEPS = 0.2, 5e-3, 240


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed: int = 0, n: int = 256):
    """Ten Gaussian blobs in 16 dimensions."""
    gen = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(10, 16, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = centers[y] + torch.randn(n, 16, generator=gen)
    return x, y


class BNNet(pl.LightningModule):
    """Two SI layers (Linear without bias -> BatchNorm without affine), frozen head."""

    def __init__(self, momentum: float = 0.0, n_in: int = 16, seed_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(n_in, 32, bias=False),
            nn.BatchNorm1d(32, affine=False),
            nn.ReLU(),
            nn.Linear(32, 32, bias=False),
            nn.BatchNorm1d(32, affine=False),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
        if seed_head:  # the seed paper's last layer: norm 10, bias 0, frozen
            from siflow.torch_probe import freeze_classifier

            freeze_classifier(self.net[6])
        else:
            self.net[6].requires_grad_(False)
        self.momentum = momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=LR, weight_decay=WD, momentum=self.momentum)


def _fit(logger, callback, steps=STEPS, model=None, log_every_n_steps=1):
    x, y = _data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    model = model or BNNet()
    trainer = pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny loader's worker/num_batches advice
        trainer.fit(model, loader)
    return trainer, model


def _read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` merged by step with the csv module (last non-blank cell wins)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    steps = sorted({int(r["step"]) for r in rows})
    index = {s: i for i, s in enumerate(steps)}
    cols: dict[str, np.ndarray] = {"step": np.array(steps, dtype=float)}
    for r in rows:
        for k, v in r.items():
            if k == "step" or v == "":
                continue
            cols.setdefault(k, np.full(len(steps), np.nan))[index[int(r["step"])]] = float(v)
    return cols


def _check_norm_recursion(rho, gtilde, lr, wd, tol=1e-3):
    """rho_{t+1}^2 = (1 - lr wd)^2 rho_t^2 + lr^2 gtilde_t^2 / rho_t^2 (docs/theory.md s. 1)."""
    pred = (1 - lr[:-1] * wd[:-1]) ** 2 * rho[:-1] ** 2 + lr[:-1] ** 2 * gtilde[:-1] ** 2 / rho[
        :-1
    ] ** 2
    rel = np.abs(rho[1:] ** 2 / pred - 1)
    assert rel.max() < tol, rel.max()
    return rel.max()


def _si_norm(model) -> float:
    return math.sqrt(sum(float((model.net[i].weight.detach().double() ** 2).sum()) for i in (0, 3)))


def test_csv_logger_gets_every_step_and_the_exact_norm_recursion(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    cb = SIRecorderCallback(every=1, path=tmp_path / "si.csv")
    trainer, model = _fit(logger, cb)
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    rho = cols["siflow/total/norm"]
    ok = np.isfinite(rho)
    steps = cols["step"][ok]
    np.testing.assert_array_equal(steps, np.arange(STEPS))
    g = cols["siflow/total/grad_norm_sphere"][ok]
    lr, wd = cols["siflow/lr"][ok], cols["siflow/wd"][ok]
    assert np.all(lr == LR) and np.all(wd == WD)
    _check_norm_recursion(rho[ok], g, lr, wd)
    # the last row's weights propagate to the trained model's final weights
    pred_final = math.sqrt(
        (1 - LR * WD) ** 2 * rho[ok][-1] ** 2 + LR**2 * g[-1] ** 2 / rho[ok][-1] ** 2
    )
    assert _si_norm(model) == pytest.approx(pred_final, rel=1e-3)
    # per-group columns: the total norm is the root sum of squares of the groups'
    groups = ["net.0.weight", "net.3.weight"]
    per = [cols[f"siflow/{name}/norm"][ok] for name in groups]
    np.testing.assert_allclose(np.sqrt(per[0] ** 2 + per[1] ** 2), rho[ok], rtol=1e-6)
    # elr = lr / rho^2, relative update and angle consistent with the step geometry
    np.testing.assert_allclose(cols["siflow/total/elr"][ok], LR / rho[ok] ** 2, rtol=1e-6)
    ang = cols["siflow/total/angular_update"][ok]
    np.testing.assert_allclose(cols["siflow/total/angular_update_rms"][ok], ang, rtol=1e-12)
    # SGD on an SI loss: tan(Delta) = elr g~ / (1 - lr wd) up to the BatchNorm-eps radial part
    np.testing.assert_allclose(np.tan(ang), LR / rho[ok] ** 2 * g / (1 - LR * WD), rtol=2e-3)
    assert np.nanmax(np.abs(cols["siflow/total/radial"][ok])) < 1e-3
    # the training loss Lightning logged is there too, and the siflow log was written
    assert np.isfinite(cols["train_loss"]).sum() == STEPS
    back = Trajectory.load(tmp_path / "si.csv")
    np.testing.assert_allclose(back.rho, rho[ok], rtol=1e-12)
    np.testing.assert_array_equal(back.step, np.arange(STEPS))
    np.testing.assert_allclose(
        back.loss, cols["train_loss"][np.isfinite(cols["train_loss"])], rtol=1e-6
    )


def test_csv_logger_log_read_back_by_siflow_io(tmp_path):
    # acceptance through the reader of siflow.io (naming scheme siflow/<group>/<metric>)
    import siflow.io

    logger = CSVLogger(tmp_path, name="run")
    _fit(logger, SIRecorderCallback(every=1), steps=120)
    traj = siflow.io.read(logger.log_dir)
    assert traj.step.tolist() == list(range(120))
    lr, wd = np.full(len(traj), LR), np.full(len(traj), WD)
    _check_norm_recursion(traj.rho, traj.grad_norm_sphere, lr, wd)


def test_every_recorded_row_carries_the_loss_lightning_logged_for_that_step(tmp_path):
    # Lightning writes the module's own train_loss every log_every_n_steps (50 by
    # default); the callback logs siflow/loss at each of its rows, the same number
    logger = CSVLogger(tmp_path, name="run")
    _fit(logger, SIRecorderCallback(every=1), steps=60)
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    assert np.isfinite(cols["siflow/loss"]).sum() == 60
    np.testing.assert_array_equal(cols["siflow/loss"], cols["train_loss"])  # float32 both
    # at every 10th step with Lightning's loss every 30th: siflow.io reads siflow/loss
    import siflow.io

    logger = CSVLogger(tmp_path, name="sparse")
    _fit(logger, SIRecorderCallback(every=10), steps=60, log_every_n_steps=30)
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    mine = np.isfinite(cols["siflow/loss"])
    assert cols["step"][mine].tolist() == [0, 10, 20, 30, 40, 50]
    assert cols["step"][np.isfinite(cols["train_loss"])].tolist() == [29, 59]
    traj = siflow.io.read(logger.log_dir)
    ok = np.isfinite(traj.loss)
    assert traj.step[ok].tolist() == [0, 10, 20, 30, 40, 50]
    np.testing.assert_array_equal(traj.loss[ok], cols["siflow/loss"][mine])


class DigitsNet(BNNet):
    """The digits (standardised) through two SI layers of 32 and the seed paper's frozen
    last layer at norm 10: under full-batch GD at lr 1, wd 0.02 it destabilizes every
    40-70 steps."""

    def __init__(self) -> None:
        super().__init__(n_in=64, seed_head=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=1.0, weight_decay=0.02)


def _digits_loader(n: int = 512):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    data = torch.utils.data.TensorDataset(
        torch.tensor(x[:n], dtype=torch.float32), torch.tensor(y[:n])
    )
    return torch.utils.data.DataLoader(data, batch_size=n)  # full batch


def test_the_forecast_reaches_the_logger_and_equals_a_forecast_of_the_log_so_far(tmp_path):
    from siflow.forecast import forecast_next_event
    from siflow.periods import find_events

    logger = CSVLogger(tmp_path, name="run")
    cb = SIRecorderCallback(every=1, path=tmp_path / "si.npz", forecast=5)
    trainer = _trainer(800, [cb], logger=logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsNet(), _digits_loader())
    log = Trajectory.load(tmp_path / "si.npz")
    assert len(find_events(log)) >= 8  # a periodic run
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    have = np.isfinite(cols["siflow/next_event_step"])
    steps = cols["step"][have].astype(int)
    assert steps.size >= 100 and np.all(steps % 5 == 0)
    np.testing.assert_array_equal(
        log.extra["next_event_step"][steps], cols["siflow/next_event_step"][have]
    )
    for step in steps[::10]:
        direct = forecast_next_event(log[: step + 1])
        assert cols["siflow/next_event_step"][have][steps == step][0] == direct.next_event_step
        lo, hi = direct.next_event_interval
        row = np.flatnonzero(cols["step"] == step)[0]
        assert cols["siflow/next_event_lo"][row] == lo
        # an overdue cycle has no latest step: nothing is logged for it
        np.testing.assert_equal(cols["siflow/next_event_hi"][row], hi if hi < np.inf else np.nan)
    # no forecast between the 5th rows, nor before the first destabilization
    assert np.all(np.isnan(log.extra["next_event_step"][np.arange(len(log)) % 5 != 0]))
    with pytest.raises(ValueError, match="forecast must be True, False or a positive int"):
        SIRecorderCallback(forecast=0.5)
    with pytest.raises(ValueError, match="unknown forecast option.*forecast_next_event"):
        SIRecorderCallback(forecast=True, forecast_options={"lrr": 1.0})


def _tb_scalars(log_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        ev = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in ev]), np.array([e.value for e in ev], dtype=float))
    return out


def test_tensorboard_logger_gets_the_same_values(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = SIRecorderCallback(every=1)
    _fit(logger, cb, steps=150)
    sc = _tb_scalars(logger.log_dir)
    steps, rho = sc["siflow/total/norm"]
    np.testing.assert_array_equal(steps, np.arange(150))
    g_steps, g = sc["siflow/total/grad_norm_sphere"]
    np.testing.assert_array_equal(g_steps, steps)
    _check_norm_recursion(rho, g, np.full(150, LR), np.full(150, WD))
    # event files hold float32: equal to the recorder's float64 rows to float32 rounding
    t = cb.recorder.trajectory()
    np.testing.assert_allclose(rho, t.rho, rtol=1e-7)
    assert set(sc) >= {"siflow/net.0.weight/elr", "siflow/net.3.weight/angular_update", "siflow/lr"}


def test_tensorboard_log_read_back_by_siflow_io(tmp_path):
    import siflow.io

    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit(logger, SIRecorderCallback(every=1), steps=100)
    traj = siflow.io.read(logger.log_dir)
    assert traj.step.tolist() == list(range(100))
    _check_norm_recursion(traj.rho, traj.grad_norm_sphere, np.full(100, LR), np.full(100, WD))


def test_every_ten_logs_rows_and_window_rms(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    cb = SIRecorderCallback(every=10)
    _fit(logger, cb, steps=45, model=BNNet(momentum=0.9))
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    ok = np.isfinite(cols["siflow/total/norm"])
    np.testing.assert_array_equal(cols["step"][ok], [0, 10, 20, 30, 40])
    # the trailing RMS at row t covers steps t-9..t: check it against an every=1 run
    logger1 = CSVLogger(tmp_path, name="run1")
    _fit(logger1, SIRecorderCallback(every=1), steps=45, model=BNNet(momentum=0.9))
    c1 = _read_metrics_csv(Path(logger1.log_dir) / "metrics.csv")
    ang = c1["siflow/total/angular_update"][np.isfinite(c1["siflow/total/angular_update"])]
    rms = cols["siflow/total/angular_update_rms"][ok]
    assert rms[0] == pytest.approx(ang[0], rel=1e-9)
    for k, t in enumerate([10, 20, 30, 40]):
        assert rms[k + 1] == pytest.approx(np.sqrt(np.mean(ang[t - 9 : t + 1] ** 2)), rel=1e-6)
    np.testing.assert_allclose(
        cols["siflow/total/norm"][ok], c1["siflow/total/norm"][[0, 10, 20, 30, 40]], rtol=1e-12
    )


def test_sharpness_on_request_and_bad_arguments(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    cb = SIRecorderCallback(every=5, sharpness=2, sharpness_iters=5)
    _fit(logger, cb, steps=12)
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    s = cols["siflow/total/sharpness_sphere"]
    rows = cols["step"][np.isfinite(s)]
    np.testing.assert_array_equal(rows, [0, 10])
    assert np.all(s[np.isfinite(s)] > 0)
    # training_step's own logging was muted during the sharpness evaluations
    assert np.isfinite(cols["train_loss"]).sum() == 12
    with pytest.raises(ValueError, match="every"):
        SIRecorderCallback(every=0)
    with pytest.raises(ValueError, match="sharpness"):
        SIRecorderCallback(sharpness="yes")
    with pytest.raises(ValueError, match=r"\.csv or \.npz"):
        SIRecorderCallback(path="log.txt")
    with pytest.raises(ValueError, match=r"\.csv or \.npz, got 3"):
        SIRecorderCallback(path=3)
    # a misspelt recorder option is named when the callback is made, not at train start
    with pytest.raises(ValueError, match=r"unknown recorder option\(s\) flush_evry;.*flush_every="):
        SIRecorderCallback(flush_evry=5)
    with pytest.raises(ValueError, match="total"):
        _fit(
            CSVLogger(tmp_path, name="bad"),
            SIRecorderCallback(groups={"total": ["net.0.weight"]}),
            steps=2,
        )


class NoForwardNet(BNNet):
    """The common style without ``forward``: ``training_step`` calls ``self.net``."""

    forward = pl.LightningModule.forward

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss


def test_a_module_without_forward_gets_the_groups_of_its_network(tmp_path):
    # its forward cannot be traced (Lightning's placeholder): the callback raised
    # "torch.fx could not trace the model"; the network inside is traced instead
    cb = SIRecorderCallback(every=1)
    _fit(False, cb, steps=40, model=NoForwardNet())
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]
    traj = cb.recorder.trajectory()
    np.testing.assert_array_equal(traj.step, np.arange(40))
    lr, wd = np.full(40, LR), np.full(40, WD)
    _check_norm_recursion(traj.rho, traj.grad_norm_sphere, lr, wd)


class BranchyNet(BNNet):
    """BNNet whose forward branches on a value (torch.fx cannot trace it), with an example
    batch set the Lightning way, and a layer whose output bypasses its BatchNorm too."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Linear(16, 10, bias=False)
        self.side_bn = nn.BatchNorm1d(10, affine=False)
        self.example_input_array = torch.randn(8, 16)

    def forward(self, x):
        if x.abs().sum() < 0:  # data-dependent control flow
            x = -x
        s = self.side(x)
        return self.net(x) + self.side_bn(s) + s


def test_untraceable_module_groups_from_its_example_input_array(tmp_path):
    from siflow.torch_probe import find_si_groups

    with pytest.raises(ValueError, match="torch.fx could not trace"):
        find_si_groups(BranchyNet())
    cb = SIRecorderCallback(every=10)
    _fit(CSVLogger(tmp_path, name="r"), cb, steps=20, model=BranchyNet())
    # the graph of one forward pass on example_input_array: the two pre-BatchNorm weights,
    # not side.weight, whose output also reaches the output directly
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]


def _trainer(steps: int, callbacks=(), logger=False, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=list(callbacks),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **{"enable_checkpointing": False, **kwargs},
    )


def _loader(batch_size: int = 64):
    x, y = _data()
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )


class DropNet(BNNet):
    """BNNet with dropout after each SI layer: every forward draws from torch's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net.insert(3, nn.Dropout(0.3))
        self.net.insert(7, nn.Dropout(0.3))
        self.net[8].requires_grad_(False)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=LR, weight_decay=WD)


def test_sharpness_leaves_a_dropout_run_bit_identical():
    runs = []
    for cbs in ([], [SIRecorderCallback(every=1, sharpness=True, sharpness_iters=3)]):
        torch.manual_seed(5)
        model = DropNet()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(4, cbs).fit(model, _loader())
        runs.append(([p.detach().clone() for p in model.parameters()], torch.get_rng_state()))
    (plain, plain_rng), (watched, watched_rng) = runs
    for a, b in zip(plain, watched, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain_rng, watched_rng)
    assert np.isfinite(cbs[0].recorder.trajectory().sharpness_sphere).all()


class LossNet(BNNet):
    """BNNet that keeps the loss of each micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(float(loss))
        return loss


def test_loss_under_gradient_accumulation_is_the_micro_batch_loss():
    cb, model = SIRecorderCallback(every=1), LossNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(3, [cb], accumulate_grad_batches=2).fit(model, _loader(32))
    # the row of step t carries the loss of the last micro-batch back-propagated into it,
    # the cross-entropy itself, not that over accumulate_grad_batches
    np.testing.assert_allclose(cb.recorder.trajectory().loss, model.losses[1::2], rtol=1e-6)


class AdamWNet(BNNet):
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))


def test_logger_gets_the_optimizer_for_siflow_io(tmp_path):
    import siflow.io

    logger = CSVLogger(tmp_path, name="adamw")
    _fit(logger, SIRecorderCallback(every=1), steps=3, model=AdamWNet())
    meta = siflow.io.read(logger.log_dir).meta
    assert (meta["lr"], meta["wd"]) == (0.01, 0.1)
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "siflow/optimizer: adamw" in hparams and "siflow/betas: 0.8,0.99" in hparams
    assert "momentum" not in meta  # no SGD momentum for AdamW
    logger = CSVLogger(tmp_path, name="sgdm")
    _fit(logger, SIRecorderCallback(every=1), steps=3, model=BNNet(momentum=0.9))
    meta = siflow.io.read(logger.log_dir).meta
    assert (meta["lr"], meta["wd"], meta["momentum"]) == (LR, WD, 0.9)


class FrozenNet(BNNet):
    """Its SI layers frozen: no scale-invariant weight is trained."""

    def __init__(self) -> None:
        super().__init__()
        self.net[0].requires_grad_(False)
        self.net[3].requires_grad_(False)
        self.net[6].requires_grad_(True)


class NoLrOpt(torch.optim.Optimizer):
    """Adafactor-style: ``lr=None`` (a relative step computed inside)."""

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": None, "weight_decay": 0.0})

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-0.01)
        return loss


class NoLrNet(BNNet):
    def configure_optimizers(self):
        return NoLrOpt([p for p in self.parameters() if p.requires_grad])


class TwoOptNet(BNNet):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        for opt in self.optimizers():
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()

    def configure_optimizers(self):
        return [torch.optim.SGD([self.net[i].weight], lr=LR) for i in (0, 3)]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (FrozenNet, "no scale-invariant weights"),
        (NoLrNet, "lr=None, not a number"),
        (TwoOptNet, "records one optimizer, the module has 2"),
    ],
)
def test_a_module_the_callback_cannot_record_trains_with_one_warning(make, why):
    cb, model = SIRecorderCallback(every=1), make()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(3, [cb])
    with pytest.warns(RuntimeWarning, match=f"records nothing in this run.*{why}"):
        trainer.fit(model, _loader())
    assert cb.recorder is None
    assert trainer.global_step >= 3  # fit ran to max_steps
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


class FailingNet(BNNet):
    def training_step(self, batch, batch_idx):
        if batch_idx == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_a_failing_fit_writes_the_log_and_detaches(tmp_path):
    cb, model = SIRecorderCallback(every=1, path=tmp_path / "run.csv"), FailingNet()
    norm0 = _si_norm(model)
    trainer = _trainer(10, [cb])
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader())
    back = Trajectory.load(tmp_path / "run.csv")
    assert back.step.tolist() == [0, 1, 2]
    assert back.rho[0] == pytest.approx(norm0, rel=1e-6)  # float32 weights
    steps = cb.recorder.step_count  # the recorder's hooks are gone: a step goes unseen
    trainer.optimizers[0].step()
    assert cb.recorder.step_count == steps == 3


def test_bf16_module_with_a_float32_example_input_prints_no_traceback(capfd):
    model = BNNet()
    model.example_input_array = torch.randn(8, 16)
    cb = SIRecorderCallback(every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(2, [cb], precision="bf16-true").fit(model, _loader())
    assert "Traceback" not in capfd.readouterr().err
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]


class OverflowNet(BNNet):
    """An fp16 overflow (infinite loss) at trainer steps 1 and 2: the grad scaler skips
    them; the optimizer steps that ran are noted with their trainer step."""

    def __init__(self) -> None:
        super().__init__()
        self.updated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if self.global_step in (1, 2) else loss

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        opt.register_step_post_hook(lambda *a: self.updated_at.append(self.trainer.global_step))
        return opt


def test_rows_after_a_skipped_amp_step_keep_the_trainer_step(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    logger, cb, model = CSVLogger(tmp_path, name="amp"), SIRecorderCallback(every=1), OverflowNet()
    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(6, [cb], logger=logger, plugins=[amp]).fit(model, _loader(32))
    assert model.updated_at == [0, 3, 4, 5]
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    has = np.isfinite(cols["siflow/total/norm"])
    assert cols["step"][has].tolist() == [0, 3, 4, 5]
    # each row's norm is that of the weights the optimizer step at that trainer step updated
    np.testing.assert_allclose(cols["siflow/total/norm"][has], cb.recorder.trajectory().rho)


def _fit_with_checkpoint(tmp_path, steps, path, ckpt_path=None, quiet=True):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=20, save_top_k=-1)
    cb = SIRecorderCallback(every=1, path=path)
    trainer = _trainer(steps, [cb, ckpt], enable_checkpointing=True)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        trainer.fit(BNNet(), _loader(), ckpt_path=ckpt_path)
    return trainer


def test_a_resumed_fit_continues_the_log_of_the_earlier_fit(tmp_path):
    # the first fit runs to step 30 but its last checkpoint is at step 20: the resumed
    # fit redoes steps 20-29, so the log keeps the first fit's rows 0-19 and then its own
    path = tmp_path / "run.csv"
    _fit_with_checkpoint(tmp_path, 30, path)
    first = Trajectory.load(path)
    assert first.step.tolist() == list(range(30))
    ckpt = next((tmp_path / "ckpt").glob("*step=20.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    norm20 = math.sqrt(sum(float((state[f"net.{i}.weight"].double() ** 2).sum()) for i in (0, 3)))
    _fit_with_checkpoint(tmp_path, 45, path, ckpt_path=ckpt)
    log = Trajectory.load(path)
    assert log.step.tolist() == list(range(45))  # the trainer's steps, as uninterrupted
    np.testing.assert_array_equal(log.rho[:20], first.rho[:20])
    assert log.rho[20] == pytest.approx(norm20, rel=1e-6)  # the checkpoint's weights
    assert log.meta["step_offset"] == 20
    _check_norm_recursion(log.rho[20:], log.grad_norm_sphere[20:], np.full(25, LR), np.full(25, WD))


def test_a_resumed_fit_never_replaces_a_file_that_is_not_its_log(tmp_path):
    path = tmp_path / "run.csv"
    _fit_with_checkpoint(tmp_path, 20, tmp_path / "first.csv")
    path.write_text("epoch,accuracy\n1,0.5\n", encoding="utf-8")
    ckpt = next((tmp_path / "ckpt").glob("*step=20.ckpt"))
    with pytest.warns(UserWarning, match="not a log of the earlier fit.*run-from20.csv"):
        _fit_with_checkpoint(tmp_path, 25, path, ckpt_path=ckpt, quiet=False)
    assert path.read_text(encoding="utf-8") == "epoch,accuracy\n1,0.5\n"
    assert Trajectory.load(tmp_path / "run-from20.csv").step.tolist() == list(range(20, 25))


class OneCycleAdamW(BNNet):
    """AdamW under OneCycleLR (cycle_momentum=True: betas[0] cycles); the beta1 each step
    runs with is read in training_step, before the step."""

    def __init__(self) -> None:
        super().__init__()
        self.beta1_used: list[float] = []

    def training_step(self, batch, batch_idx):
        self.beta1_used.append(float(self.optimizers().optimizer.param_groups[0]["betas"][0]))
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_one_cycle_beta1_and_group_sizes_reach_the_logger_and_the_overlay(tmp_path):
    import siflow.io
    from siflow.overlay import analyze

    logger = CSVLogger(tmp_path, name="onecycle")
    model = OneCycleAdamW()
    _fit(logger, SIRecorderCallback(every=1), steps=40, model=model)
    used = np.array(model.beta1_used)
    assert len(used) == 40 and used.min() < 0.86 and used.max() == 0.95
    cols = _read_metrics_csv(Path(logger.log_dir) / "metrics.csv")
    np.testing.assert_allclose(cols["siflow/beta1"], used, rtol=1e-12)
    sizes = {"net.0.weight": 16 * 32, "net.3.weight": 32 * 32}
    assert sizes == {f"net.{i}.weight": model.net[i].weight.numel() for i in (0, 3)}
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "siflow/group_sizes/net.0.weight: 512" in hparams and "siflow/n_params: 1536" in hparams
    assert "siflow/betas: 0.95,0.999" in hparams and "lr: 0.05" in hparams  # the peak
    traj = siflow.io.read(logger.log_dir)
    assert traj.meta["group_sizes"] == sizes and traj.meta["n_params"] == 1536
    np.testing.assert_allclose(traj.extra["beta1"], used, rtol=1e-12)
    res = analyze(traj, optimizer="adamw")
    # the AdamW equilibrium norm needs the SI size C: no longer n/a on the callback's log
    assert res.predictions.n_params == 1536 and res.predictions.norm_predicted is not None
