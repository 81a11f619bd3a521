"""The analysis scripts run end to end in their quick modes and their results hold.

These retrain small networks and re-simulate the toys, so they are marked slow.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, timeout=600):
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_period_vs_theory_quick(tmp_path):
    committed = sorted((ROOT / "figures").glob("period_vs_theory*.png"))
    before = {p.name: _digest(p) for p in committed}
    out = _run([ROOT / "analysis" / "period_vs_theory.py", "--quick"], cwd=tmp_path)
    # by default the figures go under runs/ of the working directory, never over the
    # committed README figures
    assert {p.name: _digest(p) for p in committed} == before
    fig = tmp_path / "runs" / "period_vs_theory" / "period_vs_theory.png"
    assert fig.stat().st_size > 10_000
    assert fig.with_name("period_vs_theory_parity.png").stat().st_size > 10_000
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("| Rayleigh") or line.startswith("| logistic")
    ]
    assert len(rows) >= 8
    # the effective LR at destabilization is predicted within 20% (issue acceptance)
    for line in out.splitlines():
        if "worst |ELR error|" in line:
            worst = float(line.split("worst |ELR error|")[1].split("%")[0])
            assert worst <= 20


@pytest.mark.slow
def test_nn_periodic_quick(tmp_path):
    pytest.importorskip("torch", reason="the network experiments need torch (pip install torch)")
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")
    _run(
        [
            ROOT / "analysis" / "nn_periodic.py",
            "--quick",
            "--out",
            tmp_path / "nn",
            "--figures",
            tmp_path / "fig",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    results = json.loads((tmp_path / "nn" / "results.json").read_text())
    runs = {k: v for k, v in results.items() if not k.startswith("_")}
    assert runs
    for name, r in runs.items():
        assert r["status"] == "ok", name
        if r["momentum"] == 0:
            # exact for SGD on an SI loss: mean -ln cos(Delta) = -ln(1 - lr wd) + boundary term
            delta_star = math.acos(1 - r["lr"] * r["wd"])
            assert r["cycle_angle_corrected"] == pytest.approx(delta_star, rel=0.01), name
        if "_gd_" in name and r["momentum"] == 0:
            assert r["n_events"] >= 3, name
            # weight decay alone sets the norm decay between destabilizations
            assert r["decay_rate_measured"] == pytest.approx(r["decay_rate_predicted"], rel=0.05)
    for fig in ("nn_periods.png", "nn_threshold.png", "nn_mlp_overlay.png"):
        assert (tmp_path / "fig" / fig).stat().st_size > 10_000


@pytest.mark.slow
def test_heldout_runs_train_and_detect(tmp_path):
    script = ROOT / "analysis" / "heldout_runs.py"
    logs, figs = tmp_path / "logs", tmp_path / "figs"
    _run([script, "train", "--only", "iris_wide_gd", "--out", logs], cwd=tmp_path)
    out = _run([script, "detect", "--logs", logs, "--out", figs], cwd=tmp_path)
    line = next(s for s in out.splitlines() if s.startswith("iris_wide_gd:"))
    # the run's five labelled jumps (25-110 %) are found on a retrained log too (its events
    # are scored against the labels, which another CPU's rounding may shift)
    assert int(line.split(":")[1].split()[0]) >= 5
    assert "iris_wide_gd: " in out and "labelled runs: recall" in out
    assert (figs / "heldout.png").stat().st_size > 10_000


def _heldout_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("heldout_runs", ROOT / "analysis/heldout_runs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def test_heldout_detector_scores_on_the_committed_logs():
    # seven runs of kinds the labelled set does not contain (LayerNorm, affine BatchNorm,
    # AdamW, heavy ball; wine, iris, digits), labelled by eye: the bounds hold
    import numpy as np

    from siflow.periods import score_detector
    from siflow.trajectory import Trajectory

    mod = _heldout_script()
    labels, ambiguous = mod.load_labels()
    batches = mod.load_batches()
    assert [len(batches[str(b)]) for b in range(1, 14)] == [7, 8, 8, 8, 8, 7, 4, 6, 6, 6, 6, 6, 6]
    assert sorted(labels) == sorted(sum(batches.values(), []))
    trajs = {name: Trajectory.load(mod.DATA / f"{name}.npz") for name in labels}

    def score(names):
        return score_detector(trajs, {k: labels[k] for k in names}, ambiguous)

    first = batches["1"]
    assert sum(len(labels[k]) for k in first) == 123
    res = score(first)
    assert res["recall"] >= 0.95 and res["precision"] >= 0.95
    # batch 2 (GroupNorm, residual MLP, deep MLP at batch 32, Nesterov, step schedule,
    # AdamW): every labelled event found, none false
    second = score(batches["2"])
    assert second["tp"] == sum(len(labels[k]) for k in batches["2"]) == 95
    assert second["fp"] == 0
    # batch 3, labelled blind: the six runs whose jumps can be called are all found; the
    # false events there are small bursts (2-5 % norm jumps with a loss spike) inside decay
    # phases; the two noise-held norms (batch 16, Nesterov at batch 128) score far worse
    noisy = {"wine_wide_sgd16", "digits_wide_nesterov_sgd128"}
    clear = score([k for k in batches["3"] if k not in noisy])
    assert clear["fn"] == 0 and clear["tp"] == 42 and clear["precision"] >= 0.9
    rough = score(sorted(noisy))
    assert rough["precision"] < 0.5
    # batch 4, labelled blind: a LayerNorm ConvNet, a residual ConvNet, squared error and a
    # cosine schedule to zero cycle clearly and every event is found (the cosine run's four
    # middle ones only since the fitted test compares the loss at a comparable lr) ...
    clear = score(
        ["digits_lnconv_gd", "digits_resconv_gd", "iris_deepmlp_gd_cosine", "cancer_deepmlp_gd_mse"]
    )
    assert clear["fn"] == 0 and clear["tp"] == 17 + 13 + 12 + 7 and clear["fp"] <= 4
    # ... and with label smoothing, whose loss never falls below the smoothed targets'
    # entropy (0.50 for 10 classes at 0.1), once spikes are read on the excess over that
    # floor (32 of 69 were found while they were read on the loss itself); squared error
    # that never fits holds the norm oscillating by 3-7 % at its equilibrium, and each
    # oscillation is taken for an event (no labelled event there)
    t = trajs["digits_mlp_gd_smooth"]
    floor = -(0.91 * np.log(0.91) + 9 * 0.01 * np.log(0.01))
    assert floor == pytest.approx(0.50, abs=0.01) and t.loss.min() > floor
    smooth = score(["digits_mlp_gd_smooth", "wine_bnaffine_sgd64_smooth"])
    assert smooth["tp"] >= 0.95 * (smooth["tp"] + smooth["fn"]) and smooth["fp"] <= 2
    off = score_detector(
        {k: trajs[k] for k in ("digits_mlp_gd_smooth", "wine_bnaffine_sgd64_smooth")},
        {k: labels[k] for k in ("digits_mlp_gd_smooth", "wine_bnaffine_sgd64_smooth")},
        ambiguous,
        loss_floor=0,
    )
    assert off["recall"] < 0.5
    mse = score(["cancer_wide_gd_mse"])
    assert mse["tp"] == 0 and mse["fp"] >= 30
    # batch 5, labelled blind: weight-standardised convolutions (no normalization layer),
    # dropout, shifted digits, lr*wd = 1e-3 at batch 128 and a linear lr decay cycle clearly
    # and every event is found ...
    clear = score(
        [
            "digits_wsconv_gd",
            "wine_dropmlp_gd",
            "digits_bnconv_gd_augment",
            "digits_bnconv_sgd128_lowwd",
            "digits_resmlp_sgd128_linear",
        ]
    )
    assert clear["fn"] == 0 and clear["tp"] == 1 + 14 + 48 + 8 + 10 and clear["fp"] <= 5
    # ... and at lr*wd = 5e-2, where events come 5-60 steps apart, those after a decay
    # phase of under ten rows too (a band of fewer than 5 rows is read by its spike alone)
    t = trajs["cancer_mlp_gd_wd5e-2"]
    i = int(np.searchsorted(t.step, 1337))
    assert t.rho[i + 4] / t.rho[i] > 3.5 and t.loss[i + 3] / t.loss[i - 3] > 30
    fast = score(["cancer_mlp_gd_wd5e-2"])
    assert fast["recall"] >= 0.95 and fast["fp"] == 0
    # a log written every 5th step whose bursts last a row misses most events; so does a
    # noise-held norm with a trained last layer (both reported, not fixed)
    t = trajs["iris_lnmlp_gd_every5"]
    assert set(np.diff(t.step)) == {5}
    assert score(["iris_lnmlp_gd_every5"])["recall"] < 0.5
    assert score(["digits_mlp_sgd64_trained"])["recall"] < 0.5
    # batch 6, labelled blind after that change: clipping, random labels, a log every 3rd
    # step with the mean loss of the 3 and lr = 3 are (nearly) all found; once per epoch
    # with the epoch's mean loss (about 20 rows per cycle) misses rises that creep
    sixth = score([k for k in batches["6"] if k != "digits_mlp_sgd128_epochs"])
    assert sixth["tp"] >= 0.95 * (sixth["tp"] + sixth["fn"]) and sixth["precision"] >= 0.9
    epochs = trajs["digits_mlp_sgd128_epochs"]
    assert set(np.diff(epochs.step)) == {14}
    assert 0.75 < score(["digits_mlp_sgd128_epochs"])["recall"] < 0.9
    # batch 7, labelled blind: momentum 0.9 at a small lr*wd (a residual ConvNet at lr 0.1,
    # wd 5e-4; Nesterov at lr 0.05, wd 1e-3): every event found; a norm that decays to a
    # floor without a jump has none, and a noise-held norm at batch 32 some wanders
    recipe = score(["digits_resconv_sgd128mom_recipe", "digits_mlp_sgd64_nesterov_recipe"])
    assert recipe["tp"] == 14 and recipe["fn"] == 0 and recipe["fp"] <= 1
    assert score(["wine_lnmlp_gdmom_lowlr"])["fp"] == 0
    # batch 8, labelled blind: a transformer block with QK-norm (GD and batch 64), RMSNorm,
    # one-cycle, bfloat16 autocast, no weight decay on the norms' scales and biases: the
    # issue's bounds hold on the batch, and on each of the transformer runs
    eighth = score(batches["8"])
    assert eighth["recall"] >= 0.95 and eighth["precision"] >= 0.95
    for name in ("digits_qkformer_gd", "digits_qkformer_sgd64"):
        one = score([name])
        assert one["recall"] >= 0.95 and one["precision"] >= 0.9
    # batch 9, labelled blind: generated data (two moons; 4000 points in 4 classes), a
    # four-layer BatchNorm ConvNet, a pre-LayerNorm transformer block: the clear cycles are
    # found in full, an equilibrium at batch 256 has no event, and the runs that never fit
    # (bursts every 20-40 steps) keep the recall bound
    clear = score(["digits_deepconv_sgd128", "moons_mlp_gd", "synth_bnaffine_sgd256"])
    assert clear["tp"] == 10 + 25 and clear["fn"] == 0 and clear["fp"] == 0
    never_fit = score(["digits_prelnformer_gd", "synth_deepmlp_gd"])
    assert never_fit["recall"] >= 0.95 and never_fit["precision"] >= 0.9
    # batch 10, labelled blind: weight normalization, a cosine classifier, PyTorch's Adam
    # with coupled L2 decay (full batch and batch 32) and ReduceLROnPlateau have every
    # labelled event found (rises of 3-300 % in ln rho, two of them under 4 %) and none
    # false; gradient accumulation, whose log holds the loss of one micro-batch of 64,
    # keeps the bounds over the batch
    smooth = [
        "digits_wnmlp_gd",
        "digits_cosmlp_gd",
        "digits_bnaffine_gd_adam",
        "wine_lnmlp_sgd32_adam",
        "digits_mlp_gd_plateau",
    ]
    clear = score(smooth)
    assert clear["tp"] == 9 + 7 + 14 + 3 + 8 and clear["fn"] == 0 and clear["fp"] == 0
    tenth = score(batches["10"])
    assert tenth["recall"] >= 0.9 and tenth["precision"] >= 0.95
    assert trajs["digits_bnaffine_gd_adam"].meta["optimizer"] == "Adam"
    # ReduceLROnPlateau halves the lr from 1 down to its floor of 1/8, and the log says when
    lr = trajs["digits_mlp_gd_plateau"].extra["lr"]
    assert sorted(set(lr.tolist())) == [0.125, 0.25, 0.5, 1.0] and np.all(np.diff(lr) <= 0)
    # batch 11, labelled blind: GELU, a six-layer MLP of width 128 and depthwise-separable
    # convolutions at batch 128 have every event found (one false); every labelled event of
    # the batch is found, but the two regression runs, which never fit (their squared error
    # stays above the standardised target's variance of 1, worse than predicting the mean:
    # the frozen last layer at norm 10 makes the one output several times the target's
    # scale), hold a norm at the edge of stability or held by the noise, and the detector
    # counts 33 of its 3-10 % teeth as events
    clear = score(["digits_gelumlp_gd", "digits_widemlp_gd", "digits_dwconv_sgd128"])
    assert clear["tp"] == 7 + 3 + 6 and clear["fn"] == 0 and clear["fp"] <= 1
    assert score(batches["11"])["recall"] == 1.0
    for name in ("friedman_mlp_gd", "diabetes_mlp_sgd64"):
        loss = trajs[name].loss
        assert np.median(loss[loss.size // 2 :]) > 1.0
    assert score(["friedman_mlp_gd", "diabetes_mlp_sgd64"])["fp"] >= 30
    # batch 12, labelled blind: the hinge loss (exactly zero between bursts), SiLU with heavy
    # ball and a recurrent cell with LayerNorm have every labelled event found; batch 8 holds
    # its norm by the noise (no event, none found); the false events of the recurrent cell
    # are 2.6-2.9 % rises its rules left out (under 3 %)
    hinge = trajs["digits_mlp_gd_hinge"]
    assert np.count_nonzero(hinge.loss == 0.0) > 1000  # the loss sits at exactly zero
    clear = score(["digits_mlp_gd_hinge", "digits_silumlp_gdmom", "digits_mlp_sgd8"])
    assert clear["tp"] == 6 + 5 and clear["fn"] == 0 and clear["fp"] == 0
    rnn = score(["digits_rnnln_gd"])
    assert rnn["tp"] == 56 and rnn["fn"] == 0 and rnn["fp"] <= 4
    # the two runs whose loss moves one and two decades from batch to batch miss more
    # (multi-stage rises the labels join at their first stage): reported, not fixed
    twelfth = score(batches["12"])
    assert twelfth["recall"] >= 0.9 and twelfth["precision"] >= 0.85
    # batch 13, labelled blind, on mnist1d: five runs at an equilibrium or a noise-held norm
    # (one at the edge of stability) have no event and none is found; the residual MLP under
    # heavy ball misses 11 of its 25 (its loss turns up before its norm): reported, not fixed
    settled = [k for k in batches["13"] if k != "mnist1d_resmlp_gdmom"]
    assert len(settled) == 5 and all(labels[k] == [] for k in settled)
    assert score(settled)["fp"] == 0
    heavy = score(["mnist1d_resmlp_gdmom"])
    assert heavy["tp"] == 14 and heavy["fn"] == 11 and heavy["fp"] == 0
    # the one-cycle log carries the momentum each step ran with; the no-decay run records
    # the weight decay of its scale-invariant weights, not the first group's 0
    cycled = trajs["digits_rmsmlp_sgd128_onecycle"].extra["momentum"]
    assert cycled.min() == pytest.approx(0.85) and cycled.max() == pytest.approx(0.95)
    assert trajs["cancer_bnaffine_sgd64_nodecay"].meta["wd"] == 1e-2
    # the misses are heavy ball's: the loss spikes (raw, 2.4-4.9x the row before the
    # onset), the norm then turns up by 11-30 % within 30 rows
    row = next(r for r in res["runs"] if r["run"] == "iris_lnmlp_gdmom")
    assert row["fn"] == 4 and row["fp"] == 0
    t = trajs["iris_lnmlp_gdmom"]
    for step in (973, 1177, 1447, 2473):
        i = int(np.searchsorted(t.step, step))
        assert t.loss[i - 5 : i + 5].max() > 2.0 * t.loss[i - 6]
        assert 1.10 < t.rho[i : i + 30].max() / t.rho[i] < 1.30


def test_heldout_weight_standardised_convolutions_and_shifted_digits():
    # batch 5's network without a normalization layer is scale-invariant in its conv
    # weights; the augmentation moves each image by at most one pixel, zero-filled
    import torch

    mod = _heldout_script()
    torch.manual_seed(0)
    net = mod.build("wsconv", 64, 10, torch).eval()
    x = torch.randn(5, 64)
    before = net(x)
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[4].weight.mul_(0.2)
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    img = torch.zeros(40, 64)
    img[:, 3 * 8 + 4] = 1.0  # one lit pixel at row 3, column 4
    out = mod.shift_digits(img, torch.Generator().manual_seed(0), torch).reshape(40, 8, 8)
    lit = out.nonzero()[:, 1:]
    assert out.sum().item() == 40 and (lit - torch.tensor([3, 4])).abs().max() == 1
    moves = {tuple(v) for v in (lit - torch.tensor([3, 4])).tolist()}
    assert len(moves) == 9  # every shift of -1, 0, +1 in both directions is drawn
    assert mod.build("mlp", 64, 10, torch, frozen=False)[-1].weight.requires_grad
    # random labels: 150 of 1000 redrawn uniformly over 10 classes (about a tenth of them
    # come out unchanged), the same ones for the same generator seed
    y = torch.arange(1000) % 10
    noisy = mod.noisy_labels(y, 0.15, torch.Generator().manual_seed(3), torch)
    again = mod.noisy_labels(y, 0.15, torch.Generator().manual_seed(3), torch)
    assert torch.equal(noisy, again) and torch.equal(y, torch.arange(1000) % 10)
    assert 110 <= int((noisy != y).sum()) <= 150 and int(noisy.max()) == 9


@pytest.mark.parametrize(
    ("net", "n_in", "invariant", "not_invariant"),
    [
        ("qkformer", 64, ("embed", "q", "k", "fc1"), ("v", "fc2")),
        ("rmsmlp", 13, ("0", "3"), ()),
    ],
)
def test_heldout_batch8_networks_are_scale_invariant_where_normalized(
    net, n_in, invariant, not_invariant
):
    # batch 8's transformer block is scale-invariant in the weights that feed a LayerNorm
    # without affine terms (token embedding, query and key under QK-norm, the MLP's first
    # layer), not in the value projection or the MLP's output layer; RMSNorm makes each
    # weight matrix before it scale-invariant. Checked by rescaling each weight by 3 and
    # comparing the outputs (in float64, the LayerNorms' eps of 1e-5 set to 0: it breaks
    # the invariance by about 1e-5), and against the groups the recorder finds by tracing.
    import torch

    from siflow.torch_probe import find_si_groups

    mod = _heldout_script()
    torch.manual_seed(0)
    model = mod.build(net, n_in, 10, torch).eval().double()
    body = model[0] if net == "qkformer" else model
    x = torch.randn(7, n_in, dtype=torch.float64)
    groups = find_si_groups(model, example_input=x)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 0.0
    with torch.no_grad():
        before = model(x)

    def rescaled(name):
        layer = getattr(body, name) if net == "qkformer" else body[int(name)]
        with torch.no_grad():
            layer.weight.mul_(3.0)
            out = model(x)
            layer.weight.div_(3.0)
        return out

    for name in invariant:
        torch.testing.assert_close(rescaled(name), before, rtol=1e-9, atol=1e-9)
    for name in not_invariant:
        assert (rescaled(name) - before).abs().max() > 1e-3
    prefix = "0." if net == "qkformer" else ""
    assert sorted(groups) == sorted(f"{prefix}{n}.weight" for n in invariant)


@pytest.mark.parametrize(
    ("net", "invariant", "not_invariant"),
    [
        (
            "wnmlp",
            ("0.parametrizations.weight.original1", "2.parametrizations.weight.original1"),
            ("0.parametrizations.weight.original0",),
        ),
        ("cosmlp", ("0.weight", "3.weight", "6.weight"), ()),
        ("dwconv", ("1.weight", "4.weight", "7.weight"), ()),
        ("gelumlp", ("0.weight", "3.weight"), ()),
    ],
)
def test_heldout_batch10_11_networks_are_scale_invariant_where_the_recorder_says(
    net, invariant, not_invariant
):
    # weight normalization makes each layer's direction parameter v (W = g v/|v| row by
    # row) scale-invariant without a normalization layer, the cosine classifier's weight
    # rows are normalized before use, and a depthwise convolution (one 3x3 filter per
    # channel) before a BatchNorm is as invariant as a full one: rescaling by 3 leaves the output
    # unchanged (float64; BatchNorm on the batch's statistics with an eps of 1e-30, as
    # PyTorch's 1e-5 breaks the invariance by about 1e-5), rescaling the magnitudes g does
    # not, and the recorder's tracing finds exactly the invariant weights
    import torch

    from siflow.torch_probe import find_si_groups

    mod = _heldout_script()
    torch.manual_seed(0)
    x = torch.randn(9, 64, dtype=torch.float64)
    model = mod.build(net, 64, 10, torch, frozen=False).train().double()
    assert sorted(find_si_groups(model, example_input=x)) == sorted(invariant)
    _assert_rescaling_by_3(model, x, invariant, not_invariant)


def _assert_rescaling_by_3(model, x, invariant, not_invariant):
    """Each parameter of ``invariant`` scaled by 3 leaves ``model(x)`` unchanged (every norm's
    eps set to 1e-30: PyTorch's 1e-5 breaks the invariance by about 1e-5); each of
    ``not_invariant`` changes it."""
    import torch

    params = dict(model.named_parameters())
    for m in model.modules():
        if hasattr(m, "eps"):
            m.eps = 1e-30
    with torch.no_grad():
        before = model(x)

    def rescaled(name):
        with torch.no_grad():
            params[name].mul_(3.0)
            out = model(x)
            params[name].div_(3.0)
        return out

    for name in invariant:
        torch.testing.assert_close(rescaled(name), before, rtol=1e-9, atol=1e-9)
    for name in not_invariant:
        assert (rescaled(name) - before).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("net", "data", "invariant", "not_invariant"),
    [
        ("postbn", "digits", ("0.weight", "3.weight"), ("5.weight",)),
        ("silumlp", "digits", ("0.weight", "3.weight"), ()),
        ("embln", "tokens", ("0.weight", "3.weight"), ()),
        ("rnnln", "digits", ("0.w.weight",), ()),
        ("gnconv1d", None, ("1.weight", "5.weight"), ()),  # mnist1d's 40-point signals
    ],
)
def test_heldout_batch12_13_networks_are_scale_invariant_where_the_recorder_says(
    net, data, invariant, not_invariant
):
    # BatchNorm after a ReLU (relu(c z) = c relu(z) for c > 0), an embedding bag whose rows
    # are averaged into a LayerNorm, and a recurrent cell whose one weight feeds a LayerNorm
    # at every step: rescaling those weights by 3 leaves the output unchanged (float64,
    # norms' eps 1e-30), and the recorder's tracing finds them (the recurrent weight, read
    # eight times, as its joint group); the last BatchNorm's scale, which sets the logits'
    # scale, is not invariant
    import torch

    from siflow.torch_probe import find_si_groups

    mod = _heldout_script()
    torch.manual_seed(0)
    # mnist1d (the analysis extra, not the test extra): inputs of its shape
    x = mod.load_data(data, torch)[0][:9] if data else torch.randn(9, 40)
    if x.is_floating_point():
        x = x.double()
    model = mod.build(net, x.shape[1], 10, torch, frozen=False).train().double()
    params = dict(model.named_parameters())
    groups = find_si_groups(model, example_input=x)
    if net == "rnnln":
        assert list(groups) == ["jointly_si"] and groups["jointly_si"] == [params[invariant[0]]]
    else:
        assert sorted(groups) == sorted(invariant)
    _assert_rescaling_by_3(model, x, invariant, not_invariant)


def test_heldout_token_bags_and_hinge_loss_by_hand():
    # batch 12's generated data: 3000 bags of 16 token ids from a vocabulary of 64 in 4
    # classes, the same on every call, each class drawing from its own distribution (the
    # counts tell the class: the nearest class mean of the count vectors is right far
    # above chance); the multi-class hinge loss is sum_j max(0, 1 - x_y + x_j) / C over
    # j != y, averaged over samples
    import torch

    mod = _heldout_script()
    x, y = mod.load_data("tokens", torch)
    assert x.shape == (3000, 16) and x.dtype == torch.int64 and y.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < 64 and sorted(set(y.tolist())) == [0, 1, 2, 3]
    again = mod.load_data("tokens", torch)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    counts = torch.zeros(3000, 64).scatter_add_(1, x, torch.ones(3000, 16))
    means = torch.stack([counts[y == c].mean(0) for c in range(4)])
    nearest = torch.cdist(counts, means).argmin(1)
    assert float((nearest == y).float().mean()) > 0.8
    logits = torch.tensor([[2.0, 0.5, 1.5], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 2])
    hinge = mod.Run("h", "digits", "mlp", 0.1, 0.01, 10, loss="hinge")
    hand = ((0 + max(0, 1 - 2.0 + 1.5)) / 3 + (max(0, 1 + 1 + 0) + max(0, 1 + 1 + 3)) / 3) / 2
    assert float(mod.loss_of(hinge, logits, labels, torch)) == pytest.approx(hand)


def test_heldout_regression_and_one_vs_rest_losses_by_hand():
    # batch 11's losses: on regression data the squared error of the one output against
    # the standardised target; one-vs-rest cross-entropy averaged over classes and samples
    import torch

    mod = _heldout_script()
    x, y = mod.load_data("diabetes", torch)
    assert y.dtype == torch.float32 and x.shape == (442, 10)
    assert abs(float(y.mean())) < 1e-6 and float(y.std(unbiased=False)) == pytest.approx(1.0)
    out = torch.tensor([[0.5], [-1.0], [2.0]])
    target = torch.tensor([1.0, -1.0, 0.0])
    reg = mod.Run("r", "diabetes", "mlp", 0.1, 0.01, 10)
    assert float(mod.loss_of(reg, out, target, torch)) == pytest.approx((0.25 + 0 + 4) / 3)
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0])
    bce = mod.Run("b", "digits", "mlp", 0.1, 0.01, 10, loss="bce")

    def softplus(z):  # -ln sigmoid(-z)
        return math.log1p(math.exp(z))

    hand = (softplus(-2.0) + softplus(-1.0) + softplus(-0.0) + softplus(3.0)) / 4
    assert float(mod.loss_of(bce, logits, labels, torch)) == pytest.approx(hand, rel=1e-6)


def test_heldout_step_schedule_run_predicts_its_own_cycles_after_the_drop():
    # the held-out run under StepLR (lr 1, then 0.3 from step 1500): calibrated on the
    # whole log, the overlay's period at lr 0.3 falls between the labelled cycles that ran
    # wholly at lr 0.3 (390 and 657 steps); the median period in steps taken as the period
    # at the median lr said 136
    import numpy as np

    from siflow.overlay import analyze
    from siflow.trajectory import Trajectory

    mod = _heldout_script()
    labels, _ = mod.load_labels()
    traj = Trajectory.load(mod.DATA / "digits_mlp_gd_step.npz")
    lr = traj.extra["lr"]
    drop = int(traj.step[np.argmax(lr < 1.0)])
    assert drop == 1500 and lr[-1] == pytest.approx(0.3)
    after = [s for s in labels["digits_mlp_gd_step"] if s >= drop]
    cycles = np.diff(after)
    assert list(cycles) == [390, 657]
    res = analyze(traj, predict_lr=0.3, predict_wd=traj.meta["wd"])
    assert cycles.min() < res.predictions.predicted_period_at < cycles.max()


def test_heldout_period_transfer_on_three_networks():
    # the transfer calibrated at lr 0.5, wd 0.01 on networks the labelled set never saw
    # (digits, GD): where every trained weight is scale-invariant (GELU MLP with the frozen
    # last layer; BatchNorm MLP with a cosine classifier) each of the three other runs is
    # within 15 % of its measured median period; the weight-normalised MLP cycles at
    # lr*wd = 1e-2 in under 0.4 of its calibration's period, where the decay law with the
    # calibration's fall per cycle says 1/2 (its norm jumps less at the larger lr*wd), and
    # is missed by +37-66 %
    import numpy as np

    from siflow.periods import find_events
    from siflow.trajectory import Trajectory

    mod = _heldout_script()
    rows = mod.transfer_table()
    assert [(r["net"], r["lr"], r["wd"]) for r in rows] == [
        (net, lr, wd) for net in mod.TRANSFER_NETS for lr, wd in mod.TRANSFER_GRID[1:]
    ]
    for r in rows:
        if r["net"] != "wnmlp":
            assert abs(r["error"]) < 0.15, r
    wn = [r for r in rows if r["net"] == "wnmlp"]
    cal = [r for r in mod.transfer_runs() if r.net == "wnmlp"][0]
    t0 = float(
        np.median(find_events(Trajectory.load(mod.TRANSFER_DATA / f"{cal.name}.npz")).periods)
    )
    fast = [r for r in wn if r["lr"] * r["wd"] == pytest.approx(1e-2)]
    assert len(fast) == 2 and all(r["measured"] < 0.4 * t0 for r in fast)
    assert all(r["error"] > 0.3 for r in fast)


def test_a_smaller_last_batch_locks_the_destabilizations_to_the_epoch():
    # the digits MLP at batch 64 in shuffled epochs: 1797 = 28 x 64 + 5, each epoch's
    # 29th update takes 5 samples through BatchNorm; with drop_last it never comes
    import numpy as np
    import torch

    from siflow.forecast import forecast_next_event
    from siflow.overlay import analyze
    from siflow.periods import find_events, phase_lock
    from siflow.trajectory import Trajectory

    mod = _heldout_script()
    gen = torch.Generator().manual_seed(0)
    epochs = mod.epoch_batches(1797, mod.Run("x", "digits", "mlp", 1, 0, 1, batch=64,
                                             loader="epochs"), gen, torch)  # fmt: skip
    sizes = [len(next(epochs)) for _ in range(58)]
    assert sizes == ([64] * 28 + [5]) * 2
    first = torch.cat([next(epochs) for _ in range(29)])
    assert sorted(first.tolist()) == list(range(1797))  # an epoch is a permutation
    drop = mod.epoch_batches(1797, mod.Run("x", "digits", "mlp", 1, 0, 1, batch=64,
                                           loader="drop_last"), gen, torch)  # fmt: skip
    assert {len(next(drop)) for _ in range(60)} == {64}

    log = Trajectory.load(mod.LASTBATCH_DATA / "digits_mlp_sgd64_epochs.npz")
    ev = find_events(log)
    lock = phase_lock(log, ev)
    at_end = int(np.sum(ev.steps % 29 == 28))
    assert (lock.period, lock.phase, lock.count, lock.n) == (29, 28, at_end, len(ev))
    assert at_end >= 0.9 * len(ev)
    # chance of so many at one phase: the binomial tail by hand, times the 29 phases and
    # the cycles tried, of 2 rows up to the median period (58 rows: 57 cycles)
    n, c, m = len(ev), at_end, 29
    tail = sum(math.comb(n, k) * (1 / m) ** k * (1 - 1 / m) ** (n - k) for k in range(c, n + 1))
    tried = int(np.median(np.diff(ev.steps))) - 1
    assert lock.p_value == pytest.approx(min(tail * m * tried, 1.0), rel=1e-9)
    d = np.diff(np.log(log.rho))  # the kick of the 5-sample update, from the raw norm
    assert lock.kick == pytest.approx(d[28::29].mean(), rel=1e-12) and lock.kick > 0.1
    assert lock.typical == pytest.approx(np.median(d), rel=1e-12) and lock.typical < 0
    note = "start at step 28 of a 29-step cycle"
    assert any(note in x for x in analyze(log).notes)
    assert note in forecast_next_event(log[:2000]).details["phase_lock_note"]
    # without the small batch: no lock, no kick, and the norm sits at half the level
    other = Trajectory.load(mod.LASTBATCH_DATA / "digits_mlp_sgd64_drop_last.npz")
    assert phase_lock(other, find_events(other)) is None
    assert np.diff(np.log(other.rho))[27::28].mean() < 0.01
    assert np.median(other.rho) < 0.6 * np.median(log.rho)
    # the map of docs/theory.md s. 1 holds either way: rho*^4 = lr g~^2 / (wd (2 - lr wd))
    # with the RMS sphere gradient (the small batches' in it) is the mean norm within 2 %
    for t in (log, other):
        part = t[int(find_events(t).steps[0]) :]
        g2 = np.mean(part.grad_norm_sphere**2)
        star = (0.5 * g2 / (1e-2 * (2 - 0.5e-2))) ** 0.25
        assert np.mean(part.rho) == pytest.approx(star, rel=0.02)
    # nor is any labelled run at batch 128 (whole batches) locked
    for path in sorted((ROOT / "analysis/data/labelled").glob("*_sgd_*.npz")):
        t = Trajectory.load(path)
        assert phase_lock(t, find_events(t)) is None, path.name
