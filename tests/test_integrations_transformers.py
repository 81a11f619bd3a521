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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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

    def __init__(self, n_in: int = 16, seed_head: bool = False) -> None:
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

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _train(
    tmp_path: Path,
    callback,
    steps: int = STEPS,
    report_to=("tensorboard",),
    model=None,
    logging_steps: int = 10,
):
    model = model or TinyNet()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=64,
        lr_scheduler_type="constant",
        logging_steps=logging_steps,
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

    trainer, _ = _train(tmp_path, SIRecorderCallback(every=1), steps=60)
    (event,) = (tmp_path / "out").rglob("*tfevents*")
    traj = siflow.io.read(event.parent)
    assert traj.step.tolist() == list(range(1, 61))
    _check_norm_recursion(traj.rho, traj.grad_norm_sphere, LR, WD)
    # the Trainer was given torch.optim.SGD (optimizers=) while its args still say AdamW:
    # the callback's siflow/momentum column names the optimizer that ran, in both files
    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    for t in (traj, siflow.io.read(tmp_path / "trainer_state.json")):
        assert t.meta["optimizer"] == "sgd" and "optimizer_assumed" not in t.meta
        assert "siflow/momentum" in t.meta["optimizer_source"]
        assert not any(n.startswith("optimizer taken as adamw") for n in t.meta["notes"])


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


def test_the_loss_of_each_recorded_step_is_the_one_the_trainer_logs_for_it(tmp_path):
    # the trainer's own loss is a mean over logging_steps; at logging_steps=1 it is the
    # step's loss, which siflow/loss must equal at every recorded step, with a sharpness
    # batch of other samples measured at those steps (its forward passes are not the loss)
    data = Blobs(seed=5)
    batch = {"x": data.x[:64], "labels": data.y[:64]}
    cb = SIRecorderCallback(every=4, sharpness=True, sharpness_batch=batch, sharpness_iters=3)
    trainer, _ = _train(tmp_path, cb, steps=21, report_to=(), logging_steps=1)
    own = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    mine = {h["step"]: h["siflow/loss"] for h in trainer.state.log_history if "siflow/loss" in h}
    assert sorted(mine) == [1, 5, 9, 13, 17, 21]
    assert len(set(own.values())) == 21  # a loss that changes from step to step
    for step, loss in mine.items():
        assert loss == pytest.approx(own[step], rel=1e-6, abs=1e-4), step  # HF may round


def test_siflow_loss_is_read_before_the_trainers_windowed_loss(tmp_path):
    import siflow.io

    trainer, _ = _train(tmp_path, SIRecorderCallback(every=1), steps=40)
    (event,) = (tmp_path / "out").rglob("*tfevents*")
    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    sc = _tb_scalars(tmp_path / "out")
    steps, loss = sc["train/siflow/loss"]
    assert steps.tolist() == list(range(1, 41))
    assert sc["train/loss"][0].tolist() == [10, 20, 30, 40]  # a mean over 10 steps
    for traj in (siflow.io.read(event.parent), siflow.io.read(tmp_path / "trainer_state.json")):
        assert np.isfinite(traj.loss).all() and traj.step.tolist() == list(range(1, 41))
        np.testing.assert_allclose(traj.loss, loss, rtol=1e-6)  # event files hold float32


class DigitsDicts(torch.utils.data.Dataset):
    """The first 512 digits (standardised) as model-input dicts."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        self.x = torch.tensor(x[:512], dtype=torch.float32)
        self.y = torch.tensor(y[:512])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


def _digits_net() -> TinyNet:
    """Two SI layers of 32 on the digits, the seed paper's frozen last layer at norm 10."""
    return TinyNet(n_in=64, seed_head=True)


def _train_digits(tmp_path: Path, callback, steps: int, optimizer=None):
    model = _digits_net()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer else None
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=512,
        lr_scheduler_type="constant", learning_rate=1e-3, weight_decay=0.1, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=DigitsDicts(), callbacks=[callback],
        optimizers=(opt, None),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer


def test_the_forecast_is_reported_at_the_trainers_steps(tmp_path):
    from siflow.forecast import forecast_next_event

    cb = SIRecorderCallback(every=1, path=tmp_path / "si.npz", forecast=5)
    sgd = lambda params: torch.optim.SGD(params, lr=1.0, weight_decay=0.02)  # noqa: E731
    trainer = _train_digits(tmp_path, cb, 500, sgd)
    log = Trajectory.load(tmp_path / "si.npz")  # recorder steps 0, 1, ...
    fc = [h for h in trainer.state.log_history if "siflow/next_event_step" in h]
    assert len(fc) >= 50
    for h in fc[::7]:
        row = h["step"] - 1  # the trainer counts its steps from 1
        assert row % 5 == 0
        direct = forecast_next_event(log[: row + 1])
        assert h["siflow/next_event_step"] == direct.next_event_step + 1
        assert h["siflow/next_event_lo"] == direct.next_event_interval[0] + 1
        assert log.extra["next_event_step"][row] == direct.next_event_step
    # under the trainer's own AdamW no forecast is made, and the log says why, once
    cb = SIRecorderCallback(every=1, path=tmp_path / "adamw.npz", forecast=True)
    trainer = _train_digits(tmp_path, cb, 40)
    assert not any("siflow/next_event_step" in h for h in trainer.state.log_history)
    notes = [n for n in Trajectory.load(tmp_path / "adamw.npz").meta["notes"]
             if n.startswith("RecorderForecast")]  # fmt: skip
    assert len(notes) == 1 and "adamw" in notes[0].lower()


class SmoothingTrainer(transformers.Trainer):
    """A Trainer that computes a label-smoothed loss itself (the labels never reach the
    model, whose output then has no loss), as custom-loss trainers do."""

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        labels = inputs.pop("labels")
        out = model(**inputs)
        loss = nn.functional.cross_entropy(out["logits"], labels, label_smoothing=0.1)
        return (loss, out) if return_outputs else loss


def test_a_loss_the_trainer_computes_itself_is_said_to_be_missing_once(tmp_path):
    cb = SIRecorderCallback(every=1, path=tmp_path / "si.npz")
    model = TinyNet()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=64,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = SmoothingTrainer(
        model=model, args=args, train_dataset=Blobs(), optimizers=(opt, None), callbacks=[cb]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    said = [w for w in caught if "holds no 'loss'" in str(w.message)]
    assert len(said) == 1
    log = Trajectory.load(tmp_path / "si.npz")
    assert len(log) == 6 and (log.loss is None or not np.isfinite(log.loss).any())
    assert any("holds no 'loss'" in n for n in log.meta["notes"])
    assert not any("siflow/loss" in h for h in trainer.state.log_history)
    assert any("train_loss" in h for h in trainer.state.log_history)  # the trainer's own


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


class UnrecordableNet(UntraceableNet):
    """UntraceableNet computing part of its forward with torch functions hidden from modes:
    one forward pass cannot be recorded completely, and the forward hooks stand in."""

    def forward(self, x, labels=None):
        if x.abs().sum() < 0:
            x = -x
        s = self.side(x)
        logits = self.net(x) + self.mix(self.side_bn(s) + s)
        with torch._C.DisableTorchFunction():
            logits = logits * 1.0
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
    _train(tmp_path, cb, steps=10, report_to=(), model=model)
    # the two pre-BatchNorm weights of the network; side.weight also reaches a BatchNorm,
    # but its output is used a second time: the graph of the first batch's forward pass
    # proves it is not SI
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]
    (note,) = cb.recorder.trajectory().meta["notes"]
    assert "the graph of a forward pass on the first training batch" in note
    assert "left out" not in note


def test_unrecordable_model_falls_back_to_forward_hooks_confirmed_by_rescaling(tmp_path):
    from siflow.torch_probe import find_si_groups

    model = UnrecordableNet()
    batch = {"x": Blobs().x[:64]}
    with pytest.raises(ValueError, match="could not be recorded"):
        find_si_groups(model, example_input=batch, method="run")
    cb = SIRecorderCallback(every=5)
    _train(tmp_path, cb, steps=10, report_to=(), model=model)
    # the hooks see side.weight reach its BatchNorm; the rescaling check leaves it out
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]
    (note,) = cb.recorder.trajectory().meta["notes"]
    assert "forward hooks on the first training batch" in note and "side.weight" in note


def test_untraceable_model_without_si_weights_trains_with_one_warning(tmp_path):
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
        callbacks=[cb := SIRecorderCallback(every=1)],
    )  # fmt: skip
    # the callback does not stop training: one warning, nothing recorded
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="records nothing.*no scale-invariant weights found"):
        trainer.train()
    assert cb.recorder is None
    assert trainer.state.global_step == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def _tiny_bert():
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-14,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 40, (6, 10), generator=gen),
        "labels": torch.randint(0, 3, (6,), generator=gen),
    }
    embeddings = ["word_embeddings", "position_embeddings", "token_type_embeddings"]
    # the three tables are summed into a LayerNorm: SI together, none alone
    return transformers.BertForSequenceClassification(config), batch, [], embeddings


def _tiny_convnext():
    config = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3,
        patch_size=2, layer_scale_init_value=0.5,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(6, 3, 8, 8, generator=gen),
        "labels": torch.randint(0, 3, (6,), generator=gen),
    }
    # a patchify stem and the depthwise convolutions, each with its bias, into a LayerNorm
    pairs = [
        "convnext.embeddings.patch_embeddings.weight+bias",
        "convnext.encoder.stages.0.layers.0.dwconv.weight+bias",
        "convnext.encoder.stages.1.layers.0.dwconv.weight+bias",
    ]
    return transformers.ConvNextForImageClassification(config), batch, pairs, []


def _tokens(vocab, labels=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (6, 10), generator=gen)
    return {"input_ids": ids, "labels": ids if labels is None else labels(gen)}


def _images(size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(6, 3, size, size, generator=gen),
        "labels": torch.randint(0, 3, (6,), generator=gen),
    }


def _tiny_roberta():
    config = transformers.RobertaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=20, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    batch = _tokens(40, lambda gen: torch.randint(0, 3, (6,), generator=gen))
    embeddings = ["word_embeddings", "position_embeddings", "token_type_embeddings"]
    return transformers.RobertaForSequenceClassification(config), batch, [], embeddings


def _tiny_swin():
    config = transformers.SwinConfig(
        image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
        window_size=4, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
    )  # fmt: skip
    pairs = ["swin.embeddings.patch_embeddings.projection.weight+bias"]
    return transformers.SwinForImageClassification(config), _images(16), pairs, []


def _tiny_gpt2():
    # pre-LayerNorm residual stream, embedding tied to the output layer: nothing is SI
    config = transformers.GPT2Config(
        vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config), _tokens(40), [], []


def _tiny_vit():
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config), _images(16), [], []


def _tiny_qwen3():
    # RMSNorm (hand-written, with an epsilon) of each head's queries and keys: the query
    # and key projections are SI
    config = transformers.Qwen3Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=16,
    )  # fmt: skip
    alone = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in ("q", "k")]
    return transformers.Qwen3ForCausalLM(config), _tokens(40), alone, []


def _tiny_olmo2():
    # each sublayer's output RMS-normalized before it joins the residual stream: every
    # projection is SI but the gate's (SiLU is not homogeneous); values through attention
    config = transformers.Olmo2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    attn = [f"model.layers.0.self_attn.{p}_proj.weight" for p in ("q", "k", "v", "o")]
    mlp = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    return transformers.Olmo2ForCausalLM(config), _tokens(40), attn + mlp, []


def _tiny_resnet():
    # every convolution feeds a BatchNorm (the shortcut's too): each is SI alone
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
    )
    model = transformers.ResNetForImageClassification(config)
    convs = [n for n, _ in model.named_parameters() if n.endswith("convolution.weight")]
    return model, _images(16), convs, []


@pytest.mark.parametrize(
    "make",
    [
        _tiny_resnet,
        _tiny_bert,
        _tiny_convnext,
        _tiny_roberta,
        _tiny_swin,
        _tiny_gpt2,
        _tiny_vit,
        _tiny_qwen3,
        _tiny_olmo2,
    ],
    ids=["resnet", "bert", "convnext", "roberta", "swin", "gpt2", "vit", "qwen3", "olmo2"],
)
def test_hugging_face_models_si_groups_proved_on_one_forward_pass(make):
    # torch.fx cannot trace these models; the graph of one forward pass is analysed
    # instead, and every claim, and every weight matrix left out, is checked by rescaling
    from siflow.torch_probe import JOINT_GROUP, check_scale_invariance, find_si_groups

    torch.manual_seed(0)
    model, batch, alone, joint = make()
    model = model.double().train()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    for mod in model.modules():
        for eps in ("eps", "variance_epsilon"):  # LayerNorm, hand-written RMSNorm
            if isinstance(getattr(mod, eps, None), float):
                setattr(mod, eps, 1e-14)  # the only source of non-invariance
    with torch.no_grad():  # weights off their small initial scale: every one matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))

    def loss_fn():
        return model(**batch).loss

    with pytest.raises(ValueError, match="torch.fx could not trace"):
        find_si_groups(model, method="fx")
    groups = find_si_groups(model, example_input=batch)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(g for g in groups if g != JOINT_GROUP) == sorted(alone)
    together = [names[id(p)].rsplit(".", 2)[-2] for p in groups.get(JOINT_GROUP, [])]
    assert sorted(together) == sorted(joint)
    # OLMo2's norms compute in float32: rescaling leaves its rounding, about 1e-7
    tol = 1e-6 if make is _tiny_olmo2 else 1e-9
    for tensors in groups.values():
        assert check_scale_invariance(loss_fn, tensors, model=model) < tol
    for name, p in model.named_parameters():
        if p.ndim >= 2 and name not in alone:
            assert check_scale_invariance(loss_fn, [p], model=model) > 1e-4, name


class _TokenBatches(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 40, (64, 10), generator=gen)
        self.y = torch.randint(0, 3, (64,), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def test_trainer_on_bert_with_dropout_records_its_embeddings(tmp_path):
    # BERT as configured by default (dropout 0.1, the trainer's AdamW): the embedding tables
    # are SI together, and the rescaling check sees the same dropout masks at every scale
    from siflow.torch_probe import JOINT_GROUP

    model, _, _, _ = _tiny_bert()
    model.config.hidden_dropout_prob = 0.1
    for mod in model.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.1
    cb = SIRecorderCallback(every=1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, weight_decay=0.01,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_TokenBatches(), callbacks=[cb]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert list(cb.recorder.groups) == [JOINT_GROUP]
    assert len(cb.recorder.groups[JOINT_GROUP]) == 3
    assert len(cb.recorder.trajectory()) == 4


class DropUntraceableNet(UntraceableNet):
    """UntraceableNet with dropout after the first SI layer's norm: every forward draws."""

    def __init__(self) -> None:
        super().__init__()
        self.net.insert(3, nn.Dropout(0.3))


def test_group_detection_leaves_a_dropout_run_bit_identical(tmp_path):
    runs = []
    for cb in (None, SIRecorderCallback(every=1)):
        model = DropUntraceableNet()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=64,
            report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        )  # fmt: skip
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Blobs(), optimizers=(opt, None),
            callbacks=[cb] if cb else [],
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    assert list(cb.recorder.groups) == ["net.0.weight", "net.4.weight"]


class Stream(torch.utils.data.IterableDataset):
    """A one-pass stream (a generator, a socket): iterating it again continues it."""

    def __init__(self) -> None:
        data = Blobs(n=256)
        self._it = (
            {"x": data.x[i], "labels": data.y[i], "idx": torch.tensor(i)} for i in range(256)
        )

    def __iter__(self):
        return self._it


class SeenNet(UntraceableNet):
    """UntraceableNet that notes the first sample index of each training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x, labels=None, idx=None):
        if self.training and idx is not None:
            self.seen.append(int(idx[0]))
        return super().forward(x, labels)


def test_one_pass_stream_loses_no_batch_to_group_detection(tmp_path):
    seen = []
    for cb in (None, SIRecorderCallback(every=1)):
        model = SeenNet()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=16,
            report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
            remove_unused_columns=False,
        )  # fmt: skip
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Stream(), optimizers=(opt, None),
            callbacks=[cb] if cb else [],
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        seen.append(list(dict.fromkeys(model.seen)))  # the detection re-runs batch 0
    assert seen[0] == seen[1] == [0, 16, 32]
    # groups found on the first batch the trainer fed, the three steps recorded
    assert list(cb.recorder.groups) == ["net.0.weight", "net.3.weight"]
    assert cb.recorder.trajectory().step.tolist() == [0, 1, 2]


def _train_saving(tmp_path: Path, path: Path, steps: int, resume: str | None = None):
    model = TinyNet()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=64,
        lr_scheduler_type="constant", report_to=[], save_strategy="steps", save_steps=20,
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Blobs(), optimizers=(opt, None),
        callbacks=[SIRecorderCallback(every=1, path=path)],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)


def test_a_resumed_training_continues_the_log_of_the_earlier_one(tmp_path):
    # saved at step 20, trained on to 30; the resumed run redoes 20-29 and goes on to 45
    path = tmp_path / "si.npz"
    _train_saving(tmp_path, path, 30)
    first = Trajectory.load(path)
    assert first.step.tolist() == list(range(30))
    ckpt = tmp_path / "out" / "checkpoint-20"
    from safetensors.torch import load_file

    state = load_file(str(ckpt / "model.safetensors"))
    norm20 = math.sqrt(sum(float((state[f"net.{i}.weight"].double() ** 2).sum()) for i in (0, 3)))
    _train_saving(tmp_path, path, 45, resume=str(ckpt))
    log = Trajectory.load(path)
    assert log.step.tolist() == list(range(45))
    np.testing.assert_array_equal(log.rho[:20], first.rho[:20])
    assert log.rho[20] == pytest.approx(norm20, rel=1e-6)
    assert log.meta["step_offset"] == 20
    _check_norm_recursion(log.rho[20:], log.grad_norm_sphere[20:], LR, WD)


def _one_cycle(opt, steps):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)


def test_one_cycle_momentum_reaches_the_log_history_per_step(tmp_path):
    steps = 30
    # the momentum torch's OneCycleLR sets for each step, on an optimizer of its own
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    sched = _one_cycle(probe, steps)
    want = []
    for _ in range(steps):
        want.append(probe.param_groups[0]["momentum"])
        probe.step()
        sched.step()
    model = TinyNet()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD, momentum=0.9
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=64,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )  # fmt: skip
    cb = SIRecorderCallback(every=1)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Blobs(), optimizers=(opt, _one_cycle(opt, steps)),
        callbacks=[cb],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    hist = [h for h in trainer.state.log_history if "siflow/total/norm" in h]
    assert len(hist) == steps and min(want) < 0.86 and max(want) == 0.95
    np.testing.assert_allclose([h["siflow/momentum"] for h in hist], want, rtol=1e-12)
    assert all("siflow/beta1" not in h for h in hist)
    t = cb.recorder.trajectory()
    assert t.meta["momentum"] == 0.95 and t.meta["group_sizes"] == {
        "net.0.weight": model.net[0].weight.numel(),
        "net.3.weight": model.net[3].weight.numel(),
    }
    np.testing.assert_allclose(t.extra["momentum"], want, rtol=1e-12)
