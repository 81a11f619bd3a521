"""The Hugging Face callback on a real ``Trainer`` run: values in the TensorBoard files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")
import transformers  # noqa: E402  (declared in the test extra: no skip)

from siflow.integrations.transformers import SIRecorderCallback  # noqa: E402
from siflow.trajectory import Trajectory  # noqa: E402

nn = torch.nn
LR, WD, STEPS = 0.2, 5e-3, 120


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Blobs(torch.utils.data.Dataset):
    """Ten Gaussian blobs in 16 dimensions, as model-input dicts."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        centers = 2.0 * torch.randn(10, 16, generator=gen)
        self.y = torch.randint(0, 10, (n,), generator=gen)
        self.x = centers[self.y] + torch.randn(n, 16, generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


class TinyNet(nn.Module):
    """Linear without bias -> BatchNorm without affine (SI), twice; frozen head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(16, 32, bias=False),
            nn.BatchNorm1d(32, affine=False),
            nn.ReLU(),
            nn.Linear(32, 32, bias=False),
            nn.BatchNorm1d(32, affine=False),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
        self.net[6].requires_grad_(False)

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _train(tmp_path: Path, callback, steps: int = STEPS, report_to=("tensorboard",)):
    model = TinyNet()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=64,
        lr_scheduler_type="constant",
        logging_steps=10,
        report_to=list(report_to),
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Blobs(),
        optimizers=(opt, None),
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer, model


def _tb_scalars(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event,) = root.rglob("*tfevents*")
    acc = EventAccumulator(str(event.parent), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        ev = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in ev]), np.array([e.value for e in ev], dtype=float))
    return out


def _check_norm_recursion(rho, gtilde, lr, wd, tol=1e-3):
    """rho_{t+1}^2 = (1 - lr wd)^2 rho_t^2 + lr^2 gtilde_t^2 / rho_t^2 (docs/theory.md s. 1)."""
    pred = (1 - lr * wd) ** 2 * rho[:-1] ** 2 + lr**2 * gtilde[:-1] ** 2 / rho[:-1] ** 2
    rel = np.abs(rho[1:] ** 2 / pred - 1)
    assert rel.max() < tol, rel.max()


def test_tensorboard_reporter_gets_every_step_and_the_norm_recursion(tmp_path):
    cb = SIRecorderCallback(every=1, path=tmp_path / "si.npz")
    trainer, model = _train(tmp_path, cb)
    sc = _tb_scalars(tmp_path / "out")
    steps, rho = sc["train/siflow/total/norm"]
    np.testing.assert_array_equal(steps, np.arange(1, STEPS + 1))  # the trainer counts from 1
    g_steps, g = sc["train/siflow/total/grad_norm_sphere"]
    np.testing.assert_array_equal(g_steps, steps)
    _, lr = sc["train/siflow/lr"]
    _, wd = sc["train/siflow/wd"]
    np.testing.assert_allclose(lr, LR, rtol=1e-7)
    np.testing.assert_allclose(wd, WD, rtol=1e-7)
    _check_norm_recursion(rho, g, LR, WD)
    # the last row propagates to the trained model's final SI weights
    final = math.sqrt(
        sum(float((model.net[i].weight.detach().double() ** 2).sum()) for i in (0, 3))
    )
    pred = math.sqrt((1 - LR * WD) ** 2 * rho[-1] ** 2 + LR**2 * g[-1] ** 2 / rho[-1] ** 2)
    assert final == pytest.approx(pred, rel=1e-3)
    # the trainer's own loss is still reported, at its logging steps
    loss_steps, _ = sc["train/loss"]
    np.testing.assert_array_equal(loss_steps, np.arange(10, STEPS + 1, 10))
    # log_history (trainer_state.json) and the siflow log hold the same rows
    hist = [h for h in trainer.state.log_history if "siflow/total/norm" in h]
    assert [h["step"] for h in hist] == list(range(1, STEPS + 1))
    t = Trajectory.load(tmp_path / "si.npz")
    np.testing.assert_allclose([h["siflow/total/norm"] for h in hist], t.rho, rtol=1e-15)
    np.testing.assert_allclose(rho, t.rho, rtol=1e-7)  # event files hold float32


def test_log_history_read_back_by_siflow_io(tmp_path):
    # acceptance through siflow.io: the TensorBoard directory of the run
    import siflow.io

    _train(tmp_path, SIRecorderCallback(every=1), steps=60)
    (event,) = (tmp_path / "out").rglob("*tfevents*")
    traj = siflow.io.read(event.parent)
    assert traj.step.tolist() == list(range(1, 61))
    _check_norm_recursion(traj.rho, traj.grad_norm_sphere, LR, WD)


def test_every_and_sharpness_batch(tmp_path):
    data = Blobs()
    batch = {"x": data.x[:64], "labels": data.y[:64]}
    cb = SIRecorderCallback(every=4, sharpness=True, sharpness_batch=batch, sharpness_iters=5)
    trainer, _ = _train(tmp_path, cb, steps=10, report_to=())
    hist = [h for h in trainer.state.log_history if "siflow/total/norm" in h]
    assert [h["step"] for h in hist] == [1, 5, 9]
    assert all(h["siflow/total/sharpness_sphere"] > 0 for h in hist)
    assert json.dumps(hist)  # plain floats
    with pytest.raises(ValueError, match="sharpness_batch"):
        SIRecorderCallback(sharpness=True)


class UntraceableNet(TinyNet):
    """TinyNet whose forward branches on a tensor value (torch.fx cannot trace it, as with
    most Hugging Face models), plus a layer that feeds a BatchNorm and, through a residual
    sum, the output: the forward hooks see it reach the norm, rescaling shows it is not SI."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Linear(16, 32, bias=False)
        self.side_bn = nn.BatchNorm1d(32, affine=False)
        self.mix = nn.Linear(32, 10, bias=False)
        self.mix.requires_grad_(False)

    def forward(self, x, labels=None):
        if x.abs().sum() < 0:  # data-dependent control flow
            x = -x
        s = self.side(x)
        logits = self.net(x) + self.mix(self.side_bn(s) + s)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def test_untraceable_model_groups_from_the_first_batch_confirmed_by_rescaling(tmp_path):
    from siflow.torch_probe import find_si_groups

    model = UntraceableNet()
    with pytest.raises(ValueError, match="torch.fx could not trace"):
        find_si_groups(model)
    cb = SIRecorderCallback(every=5)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=64,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Blobs(), optimizers=(opt, None), callbacks=[cb]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    # the two pre-BatchNorm weights of the network; side.weight also reaches a BatchNorm,
    # but its output is used a second time, and the rescaling check leaves it out
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]
    note = cb.recorder.trajectory().meta["notes"][0]
    assert "forward hooks on the first training batch" in note and "side.weight" in note


def test_untraceable_model_without_si_weights_is_one_clear_error(tmp_path):
    class NoNorm(UntraceableNet):
        def forward(self, x, labels=None):
            if x.abs().sum() < 0:
                x = -x
            logits = self.mix(self.side(x))
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=64,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    model = NoNorm()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Blobs(), optimizers=(opt, None),
        callbacks=[SIRecorderCallback(every=1)],
    )  # fmt: skip
    with pytest.raises(ValueError, match="no scale-invariant weights found in NoNorm.*groups="):
        trainer.train()
