"""Tests of siflow.torch_probe against hand computations, theory and dense Hessians."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest


def test_missing_torch_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "siflow.torch_probe", raising=False)
    with pytest.raises(ImportError, match=r"pip install .*torch"):
        importlib.import_module("siflow.torch_probe")
    monkeypatch.delitem(sys.modules, "siflow.torch_probe", raising=False)


torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")
nn = torch.nn
F = torch.nn.functional

from siflow.torch_probe import (  # noqa: E402
    PAIR_SUFFIX,
    SIRecorder,
    check_scale_invariance,
    find_si_groups,
    sphere_sharpness,
)
from siflow.trajectory import Trajectory  # noqa: E402


class ExactSI(nn.Module):
    """Linear map with weight W / |W|_F: exactly scale invariant in W (no eps)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, dtype=torch.float64))

    def forward(self, x):
        return x @ (self.weight / self.weight.norm()).T * 3.0


def _exact_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(ExactSI(4, 3))
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    return model, (lambda: nn.functional.cross_entropy(model(x), y))


def _bn_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False),
        nn.BatchNorm1d(4, affine=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
        nn.BatchNorm1d(3, affine=False),
        nn.Linear(3, 2),
    ).to(dtype)
    model[5].requires_grad_(False)
    x = torch.randn(12, 3, dtype=dtype)
    y = torch.randint(0, 2, (12,))
    return model, (lambda: nn.functional.cross_entropy(model(x), y))


# ----------------------------------------------------------------- hand computations
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_metrics_equal_hand_computation(momentum):
    model, loss_fn = _bn_model()
    lr, wd = 0.3, 1e-2
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum)
    rec = SIRecorder(model, opt)
    assert list(rec.groups) == ["0.weight", "3.weight"]
    hand = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        w0 = [model[i].weight.detach().numpy().ravel().copy() for i in (0, 3)]
        g0 = [model[i].weight.grad.numpy().ravel().copy() for i in (0, 3)]
        opt.step()
        rec.log_loss(loss)
        w1 = [model[i].weight.detach().numpy().ravel().copy() for i in (0, 3)]
        hand.append((float(loss.detach()), w0, g0, w1))
    t = rec.trajectory()
    assert t.step.tolist() == list(range(6))
    for k, (loss, w0, g0, w1) in enumerate(hand):
        assert t.loss[k] == pytest.approx(loss, rel=1e-15)
        for name, a, g, b in zip(["0.weight", "3.weight"], w0, g0, w1, strict=True):
            rho = math.sqrt(sum(v * v for v in a))
            cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
            assert t.extra[f"rho/{name}"][k] == pytest.approx(rho, rel=1e-13)
            assert t.extra[f"elr/{name}"][k] == pytest.approx(lr / rho**2, rel=1e-13)
            assert t.extra[f"grad_norm_sphere/{name}"][k] == pytest.approx(
                rho * np.linalg.norm(g), rel=1e-13
            )
            assert t.extra[f"angular_update/{name}"][k] == pytest.approx(math.acos(cos), rel=1e-7)
            assert t.extra[f"radial/{name}"][k] == pytest.approx(
                np.dot(a, g) / (rho * np.linalg.norm(g)), rel=1e-6, abs=1e-14
            )
        a, g, b = np.concatenate(w0), np.concatenate(g0), np.concatenate(w1)
        assert t.rho[k] == pytest.approx(np.linalg.norm(a), rel=1e-13)
        assert t.elr[k] == pytest.approx(lr / np.dot(a, a), rel=1e-13)
        assert t.grad_norm_sphere[k] == pytest.approx(
            np.linalg.norm(a) * np.linalg.norm(g), rel=1e-13
        )
        cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        assert t.angular_update[k] == pytest.approx(math.acos(cos), rel=1e-7)
    assert t.meta["lr"] == lr and t.meta["wd"] == wd and t.meta["momentum"] == momentum
    assert t.meta["optimizer"] == "SGD"


def test_a_scheduled_lr_is_in_every_row_and_drives_the_exact_norm_map():
    # StepLR halves the lr every 5 steps; the lr column held NaN on the rows where the
    # lr equalled the metadata's (the first five), so a saved log lost them
    model, loss_fn = _exact_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    rec = SIRecorder(model, opt, groups=["0.weight"])
    for _ in range(15):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
    traj = rec.trajectory()
    np.testing.assert_array_equal(traj.extra["lr"], np.repeat([0.4, 0.2, 0.1], 5))
    lr, rho, g = traj.extra["lr"][:-1], traj.rho[:-1], traj.grad_norm_sphere[:-1]
    pred = (1 - lr * 0.05) ** 2 * rho**2 + lr**2 * g**2 / rho**2
    np.testing.assert_allclose(traj.rho[1:] ** 2, pred, rtol=1e-12)
    assert "wd" not in traj.extra


def test_angular_update_matches_exact_sgd_relation():
    # docs/theory.md section 1, exact for the discrete map of an SI loss:
    # tan(Delta) = elr * g~ / (1 - lr*wd) and rho_{t+1}^2 = (1-lr wd)^2 rho^2 + lr^2 g~^2/rho^2.
    model, loss_fn = _exact_model()
    lr, wd = 0.5, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    rec = SIRecorder(model, opt, groups=["0.weight"])
    for _ in range(20):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    t = rec.trajectory()
    assert np.max(np.abs(t.extra["radial"])) < 1e-12
    np.testing.assert_allclose(
        np.tan(t.angular_update), t.elr * t.grad_norm_sphere / (1 - lr * wd), rtol=1e-10
    )
    rho2_next = (1 - lr * wd) ** 2 * t.rho[:-1] ** 2 + lr**2 * t.grad_norm_sphere[:-1] ** 2 / (
        t.rho[:-1] ** 2
    )
    np.testing.assert_allclose(t.rho[1:] ** 2, rho2_next, rtol=1e-12)


def test_tiny_angles_are_accurate():
    # A pure rotation by a known small angle: arccos would lose ~half the digits.
    w = nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))
    model = nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    rec = SIRecorder(model, opt, groups={"w": [w]})
    theta = 1e-9
    w.grad = torch.tensor([1.0 - math.cos(theta), -math.sin(theta)], dtype=torch.float64)
    opt.step()
    assert rec.trajectory().angular_update[0] == pytest.approx(theta, rel=1e-6)


def test_every_and_loss_attachment_before_or_after_step(tmp_path):
    model, loss_fn = _exact_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3, momentum=0.5)
    rec = SIRecorder(model, opt, every=3, groups=["0.weight"])
    losses = []
    for k in range(10):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        losses.append(float(loss.detach()))
        if k % 2:
            rec.log_loss(loss)  # before the step
            opt.step()
        else:
            opt.step()
            rec.log_loss(loss)  # after the step
    t = rec.trajectory()
    assert t.step.tolist() == [0, 3, 6, 9]
    np.testing.assert_array_equal(t.loss, [losses[s] for s in (0, 3, 6, 9)])
    path = rec.save(tmp_path / "log.csv")
    back = Trajectory.load(path)
    np.testing.assert_array_equal(back.rho, t.rho)
    assert back.meta["momentum"] == 0.5 and back.meta["every"] == 3


def test_window_statistics_cover_the_steps_between_rows():
    model, loss_fn = _bn_model(seed=6)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, weight_decay=0.01
    )
    rec1 = SIRecorder(model, opt, every=1)
    rec4 = SIRecorder(model, opt, every=4)
    for _ in range(10):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    t1, t4 = rec1.trajectory(), rec4.trajectory()
    assert t4.step.tolist() == [0, 4, 8]
    np.testing.assert_array_equal(t4.angular_update, t1.angular_update[[0, 4, 8]])
    ang = t1.angular_update
    for row, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10)]):  # the last window is partial
        np.testing.assert_allclose(
            t4.extra["angular_update_rms_window"][row],
            np.sqrt(np.mean(ang[lo:hi] ** 2)),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            t4.extra["log_cos_mean_window"][row], np.mean(np.log(np.cos(ang[lo:hi]))), rtol=1e-12
        )
    assert "angular_update_rms_window" not in t1.extra


def test_flush_every_writes_readable_partial_log(tmp_path):
    model, loss_fn = _exact_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    path = tmp_path / "run.npz"
    rec = SIRecorder(model, opt, groups=["0.weight"], path=path, flush_every=4)
    for k in range(10):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        if k == 4:
            assert len(Trajectory.load(path)) == 4
    assert len(Trajectory.load(path)) == 8
    rec.close()
    opt.step()  # no hooks any more
    assert len(rec.trajectory()) == 10


def test_bad_arguments_name_the_parameter():
    model, _ = _bn_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="every"):
        SIRecorder(model, opt, every=0)
    with pytest.raises(ValueError, match="nope"):
        SIRecorder(model, opt, groups=["nope"])
    with pytest.raises(ValueError, match="optimizer does not update"):
        SIRecorder(model, opt, groups=["5.weight"])
    with pytest.raises(ValueError, match="sharpness_loss"):
        SIRecorder(model, opt, sharpness_every=1)
    with pytest.raises(ValueError, match=r"\.csv or \.npz"):
        SIRecorder(model, opt, path="log.txt")
    with pytest.raises(ValueError, match="no scale-invariant"):
        plain = nn.Sequential(nn.Linear(2, 2))
        SIRecorder(plain, torch.optim.SGD(plain.parameters(), lr=0.1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": 3}, r"^groups must map group names to parameters"),
        ({"groups": {"g": 3}}, r"^group 'g' is int"),
        ({"groups": {"g": ["nope"]}}, r"^group 'g' names 'nope', which is not a parameter"),
        ({"groups": {"g": [1.5]}}, r"^group 'g' holds a float"),
        ({"groups": [0]}, r"^groups names 0, which is not a parameter"),
        ({"meta": 1.5}, r"^meta must be a mapping"),
        ({"meta": ["run"]}, r"^meta must be a mapping"),
        ({"path": 3}, r"^path must be a file name ending in \.csv or \.npz, got 3"),
        ({"every": "x"}, r"^every must be a positive integer, got 'x'; pass a whole number"),
    ],
)
def test_bad_recorder_arguments_are_named_not_type_errors(kwargs, message):
    model, _ = _bn_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match=message):
        SIRecorder(model, opt, **kwargs)


def test_a_group_of_one_tensor_or_one_name_needs_no_list():
    model, _ = _bn_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    w = model[0].weight
    # a bare tensor is one member, not its rows; a bare name is one parameter
    assert SIRecorder(model, opt, groups={"a": w}).groups == {"a": [w]}
    assert SIRecorder(model, opt, groups="0.weight").groups == {"0.weight": [w]}
    assert SIRecorder(model, opt, groups={"a": "0.weight"}).groups == {"a": [w]}


def test_sharpness_seed_must_be_a_whole_number():
    model, loss = _bn_model()
    groups = {"a": [model[0].weight]}
    for bad in (-1, 1.5, "x"):
        with pytest.raises(ValueError, match=r"^seed must be"):
            sphere_sharpness(loss, groups, iters=3, seed=bad)


# ----------------------------------------------------------------------- detection
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # SI: -> BN
        self.bn_a = nn.BatchNorm2d(4, affine=False)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=True)  # SI: BN cancels the bias
        self.pool = nn.MaxPool2d(2)
        self.bn_b = nn.BatchNorm2d(4, affine=True)  # affine after the norm: still SI
        self.conv_res = nn.Conv2d(4, 4, 1, bias=False)  # output also used by residual: not SI
        self.bn_res = nn.BatchNorm2d(4, affine=False)
        # LayerNorm does not cancel a bias: the weight is not SI, the weight with its bias is
        self.fc_ln = nn.Linear(64, 8, bias=True)
        self.ln = nn.LayerNorm(8, elementwise_affine=False)
        self.fc_ln2 = nn.Linear(8, 8, bias=False)  # SI through ReLU
        self.ln2 = nn.LayerNorm(8, elementwise_affine=False)
        self.head = nn.Linear(8, 3)  # no norm after it: not SI

    def forward(self, x):
        h = torch.relu(self.bn_a(self.conv_a(x)))
        h = torch.relu(self.bn_b(self.pool(self.conv_b(h))))
        r = self.conv_res(h)
        h = self.bn_res(r) + r
        h = self.ln(self.fc_ln(h.flatten(1)))
        h = self.ln2(torch.relu(self.fc_ln2(h)))
        return self.head(h)


def test_detection_finds_exactly_the_pre_norm_weights():
    torch.manual_seed(1)
    model = Block().double()
    expected = ["conv_a.weight", "conv_b.weight", "fc_ln2.weight", "fc_ln.weight+bias"]
    assert list(find_si_groups(model)) == expected
    pair = find_si_groups(model)["fc_ln.weight+bias"]
    assert [id(p) for p in pair] == [id(model.fc_ln.weight), id(model.fc_ln.bias)]
    # the graph recorded from one forward pass proves the same groups
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    assert list(find_si_groups(model, example_input=x, method="run")) == expected
    # the forward-hook heuristic sees direct connections only (not through pool/ReLU)
    # and cannot see a second use of the output (the residual): documented limits
    running = model.bn_a.running_mean.clone()
    found = list(find_si_groups(model, example_input=x, method="hooks"))
    assert found == ["conv_a.weight", "conv_res.weight"]
    assert torch.equal(model.bn_a.running_mean, running)


def test_detection_agrees_with_numerical_check():
    torch.manual_seed(2)
    model = Block().double()
    for mod in model.modules():
        if hasattr(mod, "eps"):
            mod.eps = 1e-12  # the norm layers' eps is the only source of non-invariance
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    params = dict(model.named_parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    before = {k: v.clone() for k, v in params.items()}
    for tensors in find_si_groups(model).values():
        assert check_scale_invariance(loss_fn, tensors, model=model) < 1e-9
    for name in ["conv_res.weight", "fc_ln.weight", "fc_ln.bias", "head.weight", "bn_b.weight"]:
        assert check_scale_invariance(loss_fn, [params[name]], model=model) > 1e-3
    assert all(torch.equal(before[k], v) for k, v in params.items())


def test_biased_weight_through_relu_into_batchnorm_is_not_si():
    # BatchNorm cancels a per-channel bias right before it (and after max pooling, which
    # commutes with adding a constant), but not after a ReLU: relu(c W x + b) is not
    # c relu(W x + b). Checked numerically both ways.
    torch.manual_seed(4)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    for between, si in ((nn.ReLU(), False), (nn.MaxPool2d(2), True)):
        conv = nn.Conv2d(1, 4, 3, padding=1, bias=True)
        bn = nn.BatchNorm2d(4, affine=False, eps=1e-12)
        n_out = 4 * (16 if si else 64)
        model = nn.Sequential(conv, between, bn, nn.Flatten(), nn.Linear(n_out, 3)).double()
        with torch.no_grad():
            conv.bias.fill_(0.5)
        assert ("0.weight" in find_si_groups(model)) is si

        def loss_fn(model=model):
            return nn.functional.cross_entropy(model(x), y)

        err = check_scale_invariance(loss_fn, [model[0].weight], model=model)
        assert (err < 1e-9) is si, err


class PreActBlock(nn.Module):
    """The seed paper's ResNet block: BN -> ReLU -> conv, twice, plus the shortcut."""

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, affine=False)
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, affine=False)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(c_in, affine=False), nn.Conv2d(c_in, c, 1, stride, bias=False)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(torch.relu(self.bn2(self.conv1(out)))) + short


class PreActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(4, 4, 1)
        self.layer2 = PreActBlock(4, 8, 2)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.linear = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        out = torch.relu(self.bn(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(out.view(out.size(0), -1))


def test_preactivation_resnet_convolutions_meeting_in_sums_are_one_joint_group():
    from siflow.torch_probe import JOINT_GROUP

    torch.manual_seed(3)
    model = PreActNet().double()
    for mod in model.modules():
        if hasattr(mod, "eps"):
            mod.eps = 1e-12
    groups = find_si_groups(model)
    # conv1 of each block feeds bn2 alone: SI by itself. The stem, each block's conv2 and
    # the downsampling shortcut's conv meet in residual sums before the next BatchNorm:
    # SI only together. The trainable classifier is neither.
    assert list(groups) == ["layer1.conv1.weight", "layer2.conv1.weight", JOINT_GROUP]
    params = dict(model.named_parameters())
    joint = ["conv1.weight", "layer1.conv2.weight", "layer2.conv2.weight"]
    joint.append("layer2.shortcut.1.weight")
    assert len(groups[JOINT_GROUP]) == len(joint)
    assert all(a is params[n] for a, n in zip(groups[JOINT_GROUP], joint, strict=True))
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    for name, tensors in groups.items():
        assert check_scale_invariance(loss_fn, tensors, model=model) < 1e-9, name
    for name in joint + ["linear.weight"]:  # none of them is SI alone
        assert check_scale_invariance(loss_fn, [params[name]], model=model) > 1e-3, name


def test_radial_component_reveals_eps_breaking_invariance():
    # BatchNorm(eps) normalizes by sqrt(var + eps): invariance fails once |w|^2 var(x)
    # is comparable to eps, and the gradient gains a radial part <g, w> != 0.
    model, loss_fn = _bn_model(seed=5)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    rec = SIRecorder(model, opt, groups=["0.weight"])
    radial = []
    for scale in [1.0, 1e-2, 1e-3]:
        with torch.no_grad():
            model[0].weight.mul_(scale)
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        radial.append(abs(rec.trajectory().extra["radial"][-1]))
        rel = check_scale_invariance(loss_fn, [model[0].weight], factors=[0.5], model=model)
        radial.append(rel)
    r1, c1, r2, c2, r3, c3 = radial
    assert r1 < 1e-4 and c1 < 1e-4
    assert r3 > 100 * r1 and c3 > 100 * c1
    assert r3 > 1e-2


def test_exact_si_check_is_rounding_level():
    model, loss_fn = _exact_model()
    assert check_scale_invariance(loss_fn, [model[0].weight]) < 1e-14
    with pytest.raises(ValueError, match="factors"):
        check_scale_invariance(loss_fn, [model[0].weight], factors=[-1.0])


# ----------------------------------------------------------------------- sharpness
def _dense_riemannian_top(model, names):
    """Top eigenvalue of P (H - r) P on the tangent space, from the dense Hessian.

    ``model(None)`` returns the loss; ``r`` is the per-group radial term
    ``<w_g, grad_g>/|w_g|^2`` (0 for an exactly SI loss).
    """
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    buffers = [b.clone() for b in model.buffers()]

    def loss_of(flat):
        parts = torch.split(flat, sizes)
        new = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return torch.func.functional_call(model, new, (None,))

    hess = torch.autograd.functional.hessian(loss_of, flat0).numpy()
    x = flat0.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss_of(x), x)[0].detach().numpy()
    w = flat0.numpy()
    # orthonormal basis of {v : <v_g, w_g> = 0 for each group}
    cons, start = [], 0
    for sz in sizes:
        c = np.zeros(w.size)
        c[start : start + sz] = w[start : start + sz]
        cons.append(c)
        start += sz
    _, _, vt = np.linalg.svd(np.array(cons))
    q = vt[len(sizes) :].T
    corr = np.zeros(w.size)
    start = 0
    for sz in sizes:
        sl = slice(start, start + sz)
        corr[sl] = np.dot(w[sl], grad[sl]) / np.dot(w[sl], w[sl])
        start += sz
    m = q.T @ (hess - np.diag(corr)) @ q
    with torch.no_grad():
        for buf, saved in zip(model.buffers(), buffers, strict=True):
            buf.copy_(saved)
    return float(np.linalg.eigvalsh((m + m.T) / 2)[-1]), float(np.dot(w, w))


def _wrapped_bn_model(seed):
    """A BN network whose forward returns the loss on a fixed batch (for functional_call)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(3, 3, bias=False),
        nn.BatchNorm1d(3, affine=False),
        nn.ReLU(),
        nn.Linear(3, 2, bias=False),
        nn.BatchNorm1d(2, affine=False),
        nn.Linear(2, 2),
    ).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (9,))

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, _unused):
            return nn.functional.cross_entropy(self.net(x), y)

    return WithLoss()


@pytest.mark.parametrize("seed", [0, 1, 3])  # seeds with an eigengap that converges fast
def test_sharpness_matches_dense_hessian(seed):
    model = _wrapped_bn_model(seed)
    names = ["net.0.weight", "net.3.weight"]
    params = dict(model.named_parameters())

    def loss_fn():
        return model(None)

    ref, rho2 = _dense_riemannian_top(model, names)
    groups = {n: [params[n]] for n in names}
    lam, s = sphere_sharpness(loss_fn, groups, iters=20000, tol=1e-14, model=model)
    assert lam == pytest.approx(ref, rel=1e-6)
    assert s == pytest.approx(rho2 * ref, rel=1e-6)


def test_sharpness_of_rayleigh_quotient_by_hand():
    # L(w) = w^T A w / w^T w is exactly SI. At w = 3 e1 with A = diag(0, 1, -2.5) the
    # Riemannian Hessian on the unit sphere is 2 (A - a_1 I) on the tangent space:
    # eigenvalues 2 and -5. The largest magnitude is negative, so the shifted power
    # iteration must find the top one: S = 2, and in raw coordinates 2/9.
    a = torch.tensor([0.0, 1.0, -2.5], dtype=torch.float64)
    w = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)

    def loss_fn():
        return (a * w * w).sum() / (w * w).sum()

    lam, s = sphere_sharpness(loss_fn, {"w": [w]}, iters=200, tol=1e-15)
    assert lam == pytest.approx(2.0 / 9.0, rel=1e-12)
    assert s == pytest.approx(2.0, rel=1e-12)


def test_sharpness_scales_as_unit_sphere_hessian():
    # For one exactly SI group, S = rho^2 * lam equals the top Riemannian Hessian
    # eigenvalue at the unit vector w/|w| (docs/theory.md section 0: H(cw) = H(w)/c^2).
    model, loss_fn = _exact_model(seed=3)
    w = model[0].weight
    with torch.no_grad():
        w.mul_(7.0 / w.norm())
    groups = {"w": [w]}
    lam, s = sphere_sharpness(loss_fn, groups, iters=20000, tol=1e-14)
    assert lam * 49.0 == pytest.approx(s, rel=1e-12)
    with torch.no_grad():
        w.div_(7.0)
    lam_unit, s_unit = sphere_sharpness(loss_fn, groups, iters=20000, tol=1e-14)
    assert s == pytest.approx(lam_unit, rel=1e-6)
    assert s_unit == pytest.approx(lam_unit, rel=1e-9)


def test_recorder_sharpness_column_and_buffers_untouched():
    model, loss_fn = _bn_model(seed=4)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    rec = SIRecorder(model, opt, every=2, sharpness_every=4, sharpness_loss=loss_fn)
    for _ in range(9):
        opt.zero_grad()
        loss_fn().backward()
        running = [b.clone() for b in model.buffers()]
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    t = rec.trajectory()
    assert t.step.tolist() == [0, 2, 4, 6, 8]
    assert np.isnan(t.sharpness_sphere[[1, 3]]).all()
    assert np.isfinite(t.sharpness_sphere[[0, 2, 4]]).all()
    np.testing.assert_allclose(
        t.sharpness_sphere, t.extra["sharpness_tangent"] * t.rho**2, rtol=1e-12
    )


# ------------------------------------------------------- gradient inside step(closure)
def test_closure_step_records_the_gradient_it_used():
    # Lightning and L-BFGS compute the gradient inside optimizer.step(closure): the
    # pre-step hook sees a stale gradient, the recorder must use the step's own.
    model, loss_fn = _bn_model(seed=7)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.3, weight_decay=1e-2, momentum=0.5)
    rec = SIRecorder(model, opt)
    hand = []
    grads: list = []
    for _ in range(5):
        w0 = [model[i].weight.detach().numpy().ravel().copy() for i in (0, 3)]

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            grads.append([model[i].weight.grad.numpy().ravel().copy() for i in (0, 3)])
            return loss

        opt.step(closure)
        w1 = [model[i].weight.detach().numpy().ravel().copy() for i in (0, 3)]
        hand.append((np.concatenate(w0), np.concatenate(grads[-1]), np.concatenate(w1)))
    t = rec.trajectory()
    for k, (a, g, b) in enumerate(hand):
        assert t.grad_norm_sphere[k] == pytest.approx(
            np.linalg.norm(a) * np.linalg.norm(g), rel=1e-13
        )
        assert t.extra["relative_update"][k] == pytest.approx(
            np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-12
        )
        cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        assert t.angular_update[k] == pytest.approx(math.acos(cos), rel=1e-7)


def test_float32_model_matches_float64_hand_computation():
    # norms and dot products are computed in the parameters' dtype (no float64 copy)
    model, loss_fn = _bn_model(seed=8, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.2, weight_decay=1e-2)
    rec = SIRecorder(model, opt)
    hand = []
    for _ in range(4):
        opt.zero_grad()
        loss_fn().backward()
        a = np.concatenate([model[i].weight.detach().double().numpy().ravel() for i in (0, 3)])
        g = np.concatenate([model[i].weight.grad.double().numpy().ravel() for i in (0, 3)])
        opt.step()
        b = np.concatenate([model[i].weight.detach().double().numpy().ravel() for i in (0, 3)])
        hand.append((a, g, b))
    t = rec.trajectory()
    for k, (a, g, b) in enumerate(hand):
        assert t.rho[k] == pytest.approx(np.linalg.norm(a), rel=1e-6)
        assert t.grad_norm_sphere[k] == pytest.approx(
            np.linalg.norm(a) * np.linalg.norm(g), rel=1e-6
        )
        d_perp = (b - a) - np.dot(b - a, a) / np.dot(a, a) * a
        angle = math.atan2(np.linalg.norm(d_perp), np.dot(b, a) / np.linalg.norm(a))
        assert t.angular_update[k] == pytest.approx(angle, rel=1e-5)


# ------------------------------------------------------------- live rows and window
def test_take_rows_and_trailing_rms_and_window_off():
    model, loss_fn = _bn_model(seed=9)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, weight_decay=0.01
    )
    rec1 = SIRecorder(model, opt, every=1)
    rec3 = SIRecorder(model, opt, every=3)
    off = SIRecorder(model, opt, every=3, window=False)
    taken = []
    for _ in range(8):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        taken.append(rec3.take_rows())
    assert [len(r) for r in taken] == [1, 0, 0, 1, 0, 0, 1, 0]
    assert rec3.take_rows() == []
    ang = rec1.trajectory().angular_update
    rows = [r[0] for r in taken if r]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert rows[0]["angular_update_rms"] == pytest.approx(ang[0], rel=1e-12)
    for row, (lo, hi) in zip(rows[1:], [(1, 4), (4, 7)], strict=True):
        # trailing window: the steps after the previous row up to this one
        assert row["angular_update_rms"] == pytest.approx(
            np.sqrt(np.mean(ang[lo:hi] ** 2)), rel=1e-12
        )
        assert row["lr"] == 0.5 and row["wd"] == 0.01
    t_off = off.trajectory()
    assert "angular_update_rms_window" not in t_off.extra
    np.testing.assert_array_equal(t_off.rho, rec3.trajectory().rho)
    assert all(math.isnan(r["angular_update_rms"]) for r in off.take_rows())


def test_freeze_classifier_rescales_zeroes_and_freezes():
    from siflow.torch_probe import freeze_classifier

    torch.manual_seed(5)
    layer = nn.Linear(6, 3).double()
    w0 = layer.weight.detach().clone()
    freeze_classifier(layer, 10.0)
    assert math.isclose(float(layer.weight.norm()), 10.0, rel_tol=1e-14)
    # the direction is kept: the weight is w0 times 10/|w0|, computed here by hand
    torch.testing.assert_close(layer.weight.detach(), w0 * (10.0 / math.sqrt(float((w0**2).sum()))))
    assert float(layer.bias.abs().max()) == 0.0
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    with pytest.raises(ValueError, match="norm"):
        freeze_classifier(nn.Linear(2, 2), -1.0)
    with pytest.raises(ValueError, match="weight"):
        freeze_classifier(nn.ReLU())


# ------------------------------------------------- detection on other architectures
class _Tied(nn.Module):
    """One layer applied twice before the BatchNorm: SI (degree 2), but not a single use."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 12, bias=False)
        self.bn = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.bn(self.lin(self.lin(x.flatten(1)[:, :12]))))


class _Encoder(nn.Module):
    """A transformer layer: torch.fx does not enter it, so nothing inside is provable."""

    def __init__(self, norm_first):
        super().__init__()
        self.emb = nn.Linear(1, 8)
        self.enc = nn.TransformerEncoderLayer(
            8, 2, 16, 0.0, batch_first=True, norm_first=norm_first
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(self.emb(x.flatten(2).transpose(1, 2))).mean(1))


class _Functional(nn.Module):
    """Normalizations called as functions (``F.layer_norm``, ``F.batch_norm``)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(64, 16, bias=kind != "layer_norm")
        self.head = nn.Linear(16, 3)
        self.register_buffer("mean", torch.zeros(16))
        self.register_buffer("var", torch.ones(16))

    def forward(self, x):
        h = self.lin(x.flatten(1))
        if self.kind == "layer_norm":
            h = nn.functional.layer_norm(h, (16,), eps=1e-12)
        elif self.kind == "batch_norm":  # batch statistics: cancels the bias too
            h = nn.functional.batch_norm(h, None, None, training=True, eps=1e-12)
        else:  # running statistics: not a normalization of this batch
            h = nn.functional.batch_norm(h, self.mean, self.var, training=False)
        return self.head(h)


def _flat(*layers):
    return nn.Sequential(nn.Flatten(), *layers)


def _biased_conv_then(norm):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    )


ARCHITECTURES = {
    # name: (model, weights SI alone, weights SI only jointly)
    "leaky_relu_into_bn": (
        lambda: _flat(
            nn.Linear(64, 16, bias=False), nn.LeakyReLU(0.1), nn.BatchNorm1d(16), nn.Linear(16, 3)
        ),
        ["1.weight"],
        [],
    ),
    "prelu_into_bn": (
        lambda: _flat(
            nn.Linear(64, 16, bias=False), nn.PReLU(), nn.BatchNorm1d(16), nn.Linear(16, 3)
        ),
        ["1.weight"],
        [],
    ),
    "biased_conv_into_instancenorm": (
        lambda: _biased_conv_then(nn.InstanceNorm2d(4)),
        ["0.weight"],
        [],
    ),
    "biased_conv_into_groupnorm_per_channel": (
        lambda: _biased_conv_then(nn.GroupNorm(4, 4)),
        ["0.weight"],
        [],
    ),
    "biased_conv_into_groupnorm_of_two_channels": (
        lambda: _biased_conv_then(nn.GroupNorm(2, 4)),
        [],
        [],
    ),
    "biased_linear_into_layernorm": (
        lambda: _flat(nn.Linear(64, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3)),
        [],
        [],
    ),
    "dropout2d_between": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.Dropout2d(0.0),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(256, 3),
        ),
        ["0.weight"],
        [],
    ),
    "tied_layer": (_Tied, [], ["lin.weight"]),
    "rmsnorm": (
        lambda: _flat(nn.Linear(64, 16, bias=False), nn.RMSNorm(16), nn.Linear(16, 3)),
        ["1.weight"],
        [],
    ),
    "biased_linear_into_rmsnorm": (
        lambda: _flat(nn.Linear(64, 16), nn.RMSNorm(16), nn.Linear(16, 3)),
        [],
        [],
    ),
    "functional_layer_norm": (lambda: _Functional("layer_norm"), ["lin.weight"], []),
    "functional_batch_norm": (lambda: _Functional("batch_norm"), ["lin.weight"], []),
    "functional_batch_norm_running_stats": (lambda: _Functional("running"), [], []),
    "post_norm_transformer": (lambda: _Encoder(False), [], []),
    "pre_norm_transformer": (lambda: _Encoder(True), [], []),
}


def _classification_problem(make, shape, classes, eps=1e-14):
    """``(model, x, loss_fn)``: ``make()`` in float64 training mode (:func:`_float64_training`),
    a random batch of ``shape`` and its cross-entropy on random labels (seed 0)."""
    torch.manual_seed(0)
    model = _float64_training(make(), eps)
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, classes, (shape[0],))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    return model, x, loss_fn


def _float64_training(model, eps):
    """``model`` in float64 and training mode, every normalization's ``eps`` set to ``eps``
    (invariance exact to rounding for small ``eps``)."""
    model = model.double().train()
    for mod in model.modules():
        if hasattr(mod, "eps"):
            mod.eps = eps
    return model


@pytest.mark.parametrize("method", ["fx", "run"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_detection_on_other_architectures_agrees_with_the_numerical_check(arch, method):
    from siflow.torch_probe import JOINT_GROUP

    make, alone, joint = ARCHITECTURES[arch]
    torch.manual_seed(3)
    model = _float64_training(make(), 1e-12)
    with torch.no_grad():  # no parameter sits at a special value (a zero bias, a unit scale)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    params = dict(model.named_parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    groups = find_si_groups(model, example_input=x, method=method)
    assert _group_names(groups, model) == (alone, joint)
    _assert_pairs_as_rescaling_says(model, groups, loss_fn)
    # the second method: rescale each weight matrix alone, and the joint group together
    for name, p in params.items():
        if p.ndim < 2:
            continue
        change = check_scale_invariance(loss_fn, [p], model=model)
        assert (change < 1e-9) == (name in alone or [name] == joint), (name, change)
    if joint:
        assert check_scale_invariance(loss_fn, groups[JOINT_GROUP], model=model) < 1e-9


class _Fn(nn.Module):
    """A model whose forward is ``body(self, x)`` (operations no Sequential holds)."""

    def __init__(self, body, **layers):
        super().__init__()
        self.body = body
        for name, layer in layers.items():
            setattr(self, name, layer)

    def forward(self, x):
        return self.body(self, x)


def _conv_then(*between, pool_out=6, channels=4, bias=True):
    """A 3x3 convolution (biased unless ``bias=False``) on (N, 3, 8, 8) to 4 channels,
    ``between``, BatchNorm over ``channels``, a linear head on ``channels`` maps of
    ``pool_out`` x ``pool_out``."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=bias),
        *between,
        nn.BatchNorm2d(channels),
        nn.Flatten(),
        nn.Linear(channels * pool_out**2, 2),
    )


def _linear_on_sequence(features):
    """A biased Linear on (N, 5, 4) into BatchNorm1d over the 5 positions."""
    return _Fn(
        lambda s, x: s.h(s.bn(s.lin(x)).flatten(1)),
        lin=nn.Linear(4, features),
        bn=nn.BatchNorm1d(5),
        h=nn.Linear(5 * features, 2),
    )


def _clamped(clamp, bias=False):
    """A Linear on (N, 5), ``clamp`` of its output, BatchNorm, a linear head."""
    return _Fn(
        lambda s, x: s.h(s.bn(clamp(s.lin(x)))),
        lin=nn.Linear(5, 6, bias=bias),
        bn=nn.BatchNorm1d(6),
        h=nn.Linear(6, 2),
    )


F_ = nn.functional
#: name: (model, input shape, weights SI alone, weights of the joint group). A bias
#: before a BatchNorm is cancelled only while it is a per-channel constant.
BIAS_PATHS = {
    # padding modules: a zero border is homogeneous but not biased; reflecting or
    # replicating the border keeps a per-channel constant; a border of 0.5 is neither
    "zero_pad_module": (
        lambda: _conv_then(nn.ZeroPad2d(1), pool_out=8, bias=False),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "zero_pad_module_biased": (
        lambda: _conv_then(nn.ZeroPad2d(1), pool_out=8),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "constant_pad_module": (
        lambda: _conv_then(nn.ConstantPad2d(1, 0.5), pool_out=8, bias=False),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "reflection_pad_module_biased": (
        lambda: _conv_then(nn.ReflectionPad2d(1), pool_out=8),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "replication_pad_module_biased": (
        lambda: _conv_then(nn.ReplicationPad2d(1), pool_out=8),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    # shuffles move entries: homogeneous; a pixel shuffle spreads a channel's bias over
    # another channel's positions (not a constant there), a channel shuffle only permutes
    "pixel_shuffle": (
        lambda: _conv_then(nn.PixelShuffle(2), pool_out=12, channels=1, bias=False),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "pixel_shuffle_biased": (
        lambda: _conv_then(nn.PixelShuffle(2), pool_out=12, channels=1),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "pixel_unshuffle": (
        lambda: _conv_then(nn.PixelUnshuffle(2), pool_out=3, channels=16, bias=False),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "channel_shuffle_biased": (
        lambda: _conv_then(nn.ChannelShuffle(2)),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    # the largest of a group of units (maxout): max(c a) = c max(a) for c > 0
    "maxout_amax": (
        lambda: _Fn(
            lambda s, x: s.h(s.bn(s.lin(x).view(-1, 6, 2).amax(-1))),
            lin=nn.Linear(5, 12, bias=False),
            bn=nn.BatchNorm1d(6),
            h=nn.Linear(6, 2),
        ),
        (16, 5),
        ["lin.weight"],
        [],
    ),
    "maxout_amax_biased": (
        lambda: _Fn(
            lambda s, x: s.h(s.bn(torch.amax(s.lin(x).view(-1, 6, 2), dim=-1))),
            lin=nn.Linear(5, 12),
            bn=nn.BatchNorm1d(6),
            h=nn.Linear(6, 2),
        ),
        (16, 5),
        [],
        [],
    ),
    # clamp(min=0) is a ReLU; with an upper bound it is not homogeneous
    "clamp_min_zero": (lambda: _clamped(lambda z: z.clamp(min=0)), (16, 5), ["lin.weight"], []),
    "torch_clamp_min_zero": (
        lambda: _clamped(lambda z: torch.clamp_min(z, 0.0)),
        (16, 5),
        ["lin.weight"],
        [],
    ),
    "clamp_min_zero_biased": (lambda: _clamped(lambda z: z.clamp(0), bias=True), (16, 5), [], []),
    "clamp_both_sides": (lambda: _clamped(lambda z: torch.clamp(z, 0.0, 1.0)), (16, 5), [], []),
    "clamp_min_positive": (lambda: _clamped(lambda z: z.clamp(min=0.1)), (16, 5), [], []),
    "dropout": (lambda: _conv_then(nn.Dropout(0.5)), (8, 3, 8, 8), [], []),
    "dropout2d": (lambda: _conv_then(nn.Dropout2d(0.5)), (8, 3, 8, 8), [], []),
    "linear_dropout": (
        lambda: nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.3), nn.BatchNorm1d(6), nn.Linear(6, 2)),
        (16, 5),
        [],
        [],
    ),
    "avg_pool_counting_padding": (
        lambda: _conv_then(nn.AvgPool2d(3, 1, padding=1)),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "avg_pool_not_counting_padding": (
        lambda: _conv_then(nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "avg_pool_ceil_mode_padding": (
        lambda: _conv_then(nn.AvgPool2d(4, 3, padding=1, ceil_mode=True), pool_out=3),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "max_pool_padding": (
        lambda: _conv_then(nn.MaxPool2d(3, 1, padding=1)),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "upsample": (
        lambda: _conv_then(nn.Upsample(scale_factor=2, mode="bilinear"), pool_out=12),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "zero_pad": (
        lambda: _Fn(
            lambda s, x: s.h(s.bn(F_.pad(s.c(x), (1, 1, 1, 1))).flatten(1)),
            c=nn.Conv2d(3, 4, 3),
            bn=nn.BatchNorm2d(4),
            h=nn.Linear(256, 2),
        ),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "pad_with_a_constant": (
        lambda: _Fn(
            lambda s, x: s.h(s.bn(F_.pad(s.c(x), (1, 1, 1, 1), value=1.0)).flatten(1)),
            c=nn.Conv2d(3, 4, 3, bias=False),
            bn=nn.BatchNorm2d(4),
            h=nn.Linear(256, 2),
        ),
        (8, 3, 8, 8),
        [],
        [],
    ),
    "linear_view_into_batchnorm": (
        lambda: _Fn(
            lambda s, x: s.h(s.bn(s.lin(x).view(-1, 2, 4)).flatten(1)),
            lin=nn.Linear(5, 8),
            bn=nn.BatchNorm1d(2),
            h=nn.Linear(8, 2),
        ),
        (16, 5),
        [],
        [],
    ),
    "linear_on_sequence_into_batchnorm": (lambda: _linear_on_sequence(3), (8, 5, 4), [], []),
    # 5 positions and 5 features: only the shapes of the example input tell it from 2-D
    "linear_on_square_sequence_into_batchnorm": (
        lambda: _linear_on_sequence(5),
        (8, 5, 4),
        [],
        [],
    ),
    "linear_into_batchnorm": (
        lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)),
        (16, 5),
        ["0.weight"],
        [],
    ),
    "conv_flatten_into_batchnorm1d": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(144), nn.Linear(144, 2)
        ),
        (8, 3, 8, 8),
        ["0.weight"],
        [],
    ),
    "two_linears_concatenated_into_layernorm": (
        lambda: _Fn(
            lambda s, x: s.h(s.ln(torch.cat([s.a(x), s.b(x)], 1))),
            a=nn.Linear(5, 3, bias=False),
            b=nn.Linear(5, 3, bias=False),
            ln=nn.LayerNorm(6),
            h=nn.Linear(6, 2),
        ),
        (16, 5),
        [],
        ["a.weight", "b.weight"],
    ),
}


@pytest.mark.parametrize("method", ["fx", "run", "hooks"])
@pytest.mark.parametrize("arch", list(BIAS_PATHS))
def test_biases_reach_the_norm_only_as_channel_constants(arch, method):
    make, shape, alone, joint = BIAS_PATHS[arch]
    torch.manual_seed(0)
    model = _float64_training(make(), 1e-14)
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, 2, (shape[0],))

    def loss_fn():
        torch.manual_seed(1)  # the same dropout masks at every evaluation
        return nn.functional.cross_entropy(model(x), y)

    groups = find_si_groups(model, example_input=x, method=method)
    params = dict(model.named_parameters())
    found = _group_names(groups, model)[0]
    if method != "hooks":
        _assert_pairs_as_rescaling_says(model, groups, loss_fn)
    if method != "hooks" or arch == "linear_into_batchnorm":
        assert found == alone
    else:  # the forward hooks see only an output entering a norm module directly
        assert set(found) <= set(alone)
    for name, p in params.items():  # the second method: rescale each weight alone
        if p.ndim >= 2:
            change = check_scale_invariance(loss_fn, [p], model=model)
            assert (change < 1e-9) == (name in alone), (name, change)
    if method != "hooks":
        names = {id(p): n for n, p in params.items()}
        assert [names[id(p)] for p in groups.get("jointly_si", [])] == joint
        if joint:
            together = check_scale_invariance(loss_fn, groups["jointly_si"], model=model)
            assert together < 1e-9


def _group_names(groups, model):
    """``(single groups in order, names of the joint group's tensors in order)``; the
    groups of a weight with its bias are left out (:func:`_assert_pairs_as_rescaling_says`)."""
    names = {id(p): n for n, p in model.named_parameters()}
    joint = [names[id(p)] for p in groups.get("jointly_si", [])]
    return [g for g in groups if g != "jointly_si" and not g.endswith(PAIR_SUFFIX)], joint


def _assert_pairs_as_rescaling_says(model, groups, loss_fn, tol=1e-9):
    """The second method for the ``<layer>.weight+bias`` groups: a Linear/Conv layer with a
    bias whose weight is in no other group has its pair claimed exactly when rescaling the
    weight and the bias together leaves the loss unchanged; returns the pairs claimed."""
    taken = {id(p) for g, ps in groups.items() if not g.endswith(PAIR_SUFFIX) for p in ps}
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear | nn.modules.conv._ConvNd) or mod.bias is None:
            continue
        if id(mod.weight) in taken:
            continue
        change = check_scale_invariance(loss_fn, [mod.weight, mod.bias], model=model)
        claimed = f"{name}{PAIR_SUFFIX}" in groups
        assert (change < tol) == claimed, (name, change)
        if claimed:
            assert [id(p) for p in groups[f"{name}{PAIR_SUFFIX}"]] == [id(mod.weight), id(mod.bias)]
            pairs.append(name)
    return pairs


def _param(*shape):
    return nn.Parameter(torch.randn(*shape))


def _raw(body, **layers):
    """A model reading parameters directly (``x @ self.W``), a linear head on top."""
    return lambda: _Fn(body, h=nn.Linear(6, 2), **layers)


#: model, SI alone, SI only together (the joint group), in graph order
RAW_PARAMETERS = {
    "matmul_into_batchnorm": (
        _raw(lambda s, x: s.h(s.bn(x @ s.W)), W=_param(5, 6), bn=nn.BatchNorm1d(6)),
        ["W"],
        [],
    ),
    "einsum_into_batchnorm": (
        _raw(
            lambda s, x: s.h(s.bn(torch.einsum("bi,io->bo", x, s.W))),
            W=_param(5, 6),
            bn=nn.BatchNorm1d(6),
        ),
        ["W"],
        [],
    ),
    "functional_linear_relu_layernorm": (
        _raw(lambda s, x: s.h(s.ln(F.relu(F.linear(x, s.W)))), W=_param(6, 5), ln=nn.LayerNorm(6)),
        ["W"],
        [],
    ),
    "weight_over_its_norm": (
        _raw(lambda s, x: s.h(torch.tanh(x @ (s.W / s.W.norm()))), W=_param(5, 6)),
        ["W"],
        [],
    ),
    "weight_over_its_column_norms": (
        _raw(
            lambda s, x: s.h(torch.tanh(x @ (s.W / s.W.norm(dim=0, keepdim=True)))), W=_param(5, 6)
        ),
        ["W"],
        [],
    ),
    "weight_times_rsqrt_of_its_squares": (
        _raw(lambda s, x: s.h(torch.tanh(x @ (s.W * (s.W**2).sum().rsqrt()))), W=_param(5, 6)),
        ["W"],
        [],
    ),
    "product_of_two_projections": (
        _raw(
            lambda s, x: s.h(s.bn((x @ s.W) * (x @ s.V))),
            W=_param(5, 6),
            V=_param(5, 6),
            bn=nn.BatchNorm1d(6),
        ),
        ["W", "V"],
        [],
    ),
    "gain_before_layernorm": (
        _raw(lambda s, x: s.h(s.ln(x[:, :1] * s.g)), g=_param(6), ln=nn.LayerNorm(6)),
        ["g"],
        [],
    ),
    "weight_and_raw_bias_into_layernorm": (
        _raw(
            lambda s, x: s.h(s.ln(x @ s.W + s.b)), W=_param(5, 6), b=_param(6), ln=nn.LayerNorm(6)
        ),
        [],
        ["W", "b"],
    ),
    "normalized_by_a_sum_with_another": (
        _raw(
            lambda s, x: s.h(torch.tanh(x @ (s.W / (s.W + s.V).norm()))),
            W=_param(5, 6),
            V=_param(5, 6),
        ),
        [],
        ["W", "V"],
    ),
    # not invariant: the checks below would fail on a claim
    "sigmoid_before_the_norm": (
        _raw(lambda s, x: s.h(s.bn(torch.sigmoid(x @ s.W))), W=_param(5, 6), bn=nn.BatchNorm1d(6)),
        [],
        [],
    ),
    "also_read_outside_the_norm": (
        _raw(
            lambda s, x: s.h(s.bn(x @ s.W)) + (x @ s.W)[:, :2],
            W=_param(5, 6),
            bn=nn.BatchNorm1d(6),
        ),
        [],
        [],
    ),
    "a_number_added_before_normalizing": (
        _raw(lambda s, x: s.h(torch.tanh(x @ ((s.W + 1.0) / s.W.norm()))), W=_param(5, 6)),
        [],
        [],
    ),
    "a_number_added_before_rmsnorm": (
        _raw(
            lambda s, x: s.h(s.rms(s.a(x) + 1.0)), a=nn.Linear(5, 6, bias=False), rms=nn.RMSNorm(6)
        ),
        [],
        [],
    ),
    # hand-written normalizations with a small epsilon (taken as 0, as a norm layer's is)
    "handwritten_rmsnorm": (
        _raw(
            lambda s, x: s.h(
                (z := (x @ s.W).to(torch.float64)) * torch.rsqrt(z.pow(2).mean(-1, True) + 1e-14)
            ),
            W=_param(5, 6),
        ),
        ["W"],
        [],
    ),
    "handwritten_layernorm": (
        _raw(
            lambda s, x: s.h(
                ((z := x @ s.W) - z.mean(-1, True)) / (z.var(-1, keepdim=True) + 1e-14).sqrt()
            ),
            W=_param(5, 6),
        ),
        ["W"],
        [],
    ),
    "handwritten_rmsnorm_with_a_large_constant": (
        _raw(
            lambda s, x: s.h((z := x @ s.W) * torch.rsqrt(z.pow(2).mean(-1, True) + 0.5)),
            W=_param(5, 6),
        ),
        [],
        [],
    ),
    # x.T moves the entries: W.T scales with W
    "transposed_parameter_into_layernorm": (
        _raw(lambda s, x: s.h(s.ln(x @ s.W.T)), W=_param(6, 5), ln=nn.LayerNorm(6)),
        ["W"],
        [],
    ),
    "transposed_parameter_without_a_norm": (
        _raw(lambda s, x: s.h(x @ s.W.T), W=_param(6, 5)),
        [],
        [],
    ),
    # attention is linear in its values: softmax(q k') (c v) = c softmax(q k') v
    "attention_values_into_layernorm": (
        _raw(
            lambda s, x: s.h(
                s.ln(F.scaled_dot_product_attention(s.q(x)[None], s.k(x)[None], s.v(x)[None])[0])
            ),
            q=nn.Linear(5, 6, bias=False),
            k=nn.Linear(5, 6, bias=False),
            v=nn.Linear(5, 6, bias=False),
            ln=nn.LayerNorm(6),
        ),
        ["v.weight"],
        [],
    ),
    # a concatenation's dimension is not a number added to it
    "two_linears_concatenated_into_normalize": (
        _raw(
            lambda s, x: s.h(F.normalize(torch.cat([s.a(x), s.b(x)], 1), dim=1)),
            a=nn.Linear(5, 3, bias=False),
            b=nn.Linear(5, 3, bias=False),
        ),
        [],
        ["a.weight", "b.weight"],
    ),
    # F.layer_norm's own gain and shift scale its output: only W is SI
    "functional_layernorm_with_affine_parameters": (
        _raw(
            lambda s, x: s.h(F.layer_norm(x @ s.W, (6,), s.g, s.b, 1e-14)),
            W=_param(5, 6),
            g=_param(6),
            b=_param(6),
        ),
        ["W"],
        [],
    ),
    "a_number_added_before_layernorm": (
        _raw(
            lambda s, x: s.h(s.ln(s.a(x) + 1.0)), a=nn.Linear(5, 6, bias=False), ln=nn.LayerNorm(6)
        ),
        ["a.weight"],  # LayerNorm subtracts the mean, and the 1 with it
        [],
    ),
}


@pytest.mark.parametrize("arch", list(RAW_PARAMETERS))
@pytest.mark.parametrize("method", ["fx", "run"])
def test_parameters_read_directly_are_found_and_agree_with_the_numerical_check(arch, method):
    # x @ self.W, einsum, F.linear, W / W.norm(): the graph's degrees of homogeneity
    # (products add them, quotients subtract them, norms keep them) decide; each
    # parameter and each group is rescaled numerically
    make, alone, joint = RAW_PARAMETERS[arch]
    model, x, loss_fn = _classification_problem(make, (16, 5), 2)

    groups = find_si_groups(model, example_input=x, method=method)
    params = dict(model.named_parameters())
    assert _group_names(groups, model) == (alone, joint)
    _assert_pairs_as_rescaling_says(model, groups, loss_fn)
    for name in alone:
        assert check_scale_invariance(loss_fn, [params[name]], model=model) < 1e-9, name
    if joint:
        assert check_scale_invariance(loss_fn, groups["jointly_si"], model=model) < 1e-9
    for name, p in params.items():
        if name not in alone and name not in joint and not name.startswith(("h.", "bn.", "ln.")):
            assert check_scale_invariance(loss_fn, [p], model=model) > 1e-6, name


class _Tokens(nn.Module):
    """Token embeddings (plus learned positions) into a LayerNorm, a head on top."""

    def __init__(self, positions=False, max_norm=None, tied=False):
        super().__init__()
        self.emb = nn.Embedding(20, 6, max_norm=max_norm)
        self.pos = nn.Parameter(torch.randn(5, 6)) if positions else None
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)
        self.tied = tied

    def forward(self, idx):
        z = self.emb(idx)
        if self.pos is not None:
            z = z + self.pos
        out = self.head(self.ln(z).mean(1))
        if self.tied:  # the embedding matrix read again, as an output layer would
            out = out + (z.mean(1) @ self.emb.weight.T)[:, :2]
        return out


@pytest.mark.parametrize(
    ("kwargs", "alone", "joint"),
    [
        ({}, ["emb.weight"], []),
        ({"positions": True}, [], ["emb.weight", "pos"]),
        # rows renormalized in the forward are not homogeneous in general (not claimed;
        # here the LayerNorm would undo a per-row scale anyway)
        ({"max_norm": 1.0}, [], []),
        ({"tied": True}, [], []),
    ],
    ids=["alone", "with-learned-positions", "max-norm", "read-again"],
)
def test_embeddings_into_a_layernorm(kwargs, alone, joint):
    torch.manual_seed(0)
    model = _float64_training(_Tokens(**kwargs), 1e-14)
    idx = torch.randint(0, 20, (8, 5))
    y = torch.randint(0, 2, (8,))

    def loss_fn():
        return nn.functional.cross_entropy(model(idx), y)

    groups = find_si_groups(model, example_input=idx)
    params = dict(model.named_parameters())
    assert _group_names(groups, model) == (alone, joint)
    claimed = [params[n] for n in alone + joint]
    if claimed:
        assert check_scale_invariance(loss_fn, claimed, model=model) < 1e-9
    if kwargs.get("tied"):
        assert check_scale_invariance(loss_fn, [params["emb.weight"]], model=model) > 1e-6


class _Bags(nn.Module):
    """Bags of tokens (an ``nn.EmbeddingBag``) into a LayerNorm, a head on top."""

    def __init__(self, mode="mean", max_norm=None):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 6, mode=mode, max_norm=max_norm)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, idx, weights=None):
        return self.head(self.ln(self.bag(idx, per_sample_weights=weights)))


@pytest.mark.parametrize(
    ("mode", "max_norm", "weighted", "alone"),
    [
        ("mean", None, False, ["bag.weight"]),
        ("sum", None, True, ["bag.weight"]),
        ("max", None, False, ["bag.weight"]),  # max(c a) = c max(a) for c > 0
        ("mean", 1.0, False, []),  # rows renormalized as they are read
    ],
    ids=["mean", "weighted-sum", "max", "max-norm"],
)
def test_embedding_bags_into_a_layernorm(mode, max_norm, weighted, alone):
    torch.manual_seed(0)
    model = _float64_training(_Bags(mode, max_norm), 1e-14)
    idx = torch.randint(0, 20, (8, 5))
    weights = torch.rand(8, 5, dtype=torch.float64) if weighted else None
    y = torch.randint(0, 2, (8,))

    def loss_fn():
        return nn.functional.cross_entropy(model(idx, weights), y)

    groups = find_si_groups(model, example_input=(idx, weights))
    assert _group_names(groups, model) == (alone, [])
    table = dict(model.named_parameters())["bag.weight"]
    # the loss under a rescaled table, against the claim
    error = check_scale_invariance(loss_fn, [table], model=model)
    assert (error < 1e-9) if alone else (error > 1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_model_is_recorded_in_float32(dtype):
    # a float16 Gram matrix overflows once |w|^2 > 65504 (here |w| is about 350), and a
    # bfloat16 one keeps three digits; the recorder's buffer is at least float32, where
    # the stored half-precision weights and their differences are exact
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10)
    ).to(dt)
    with torch.no_grad():
        model[0].weight.mul_(60.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    rec = SIRecorder(model, opt, every=1, groups=["0.weight"])
    x, y = torch.randn(32, 64, dtype=dt), torch.randint(0, 10, (32,))
    norms, angles = [], []
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        w0 = model[0].weight.detach().double().clone()
        opt.step()
        w1 = model[0].weight.detach().double()
        a, b = w0 / w0.norm(), w1 / w1.norm()
        norms.append(float(w0.norm()))
        angles.append(float(2 * torch.atan2((a - b).norm(), (a + b).norm())))
    t = rec.trajectory()
    assert norms[0] > 256
    np.testing.assert_allclose(t.rho, norms, rtol=1e-5)
    np.testing.assert_allclose(t.angular_update, angles, rtol=1e-5)


def test_groups_with_different_learning_rates_are_noted():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip
    w0, w3 = model[0].weight, model[3].weight
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "3.weight")]
    opt = torch.optim.SGD(
        [
            {"params": [w0], "lr": 0.1, "weight_decay": 1e-3},
            {"params": [w3], "lr": 0.05, "weight_decay": 1e-2},
            {"params": rest, "lr": 0.01},
        ]
    )
    rec = SIRecorder(model, opt, groups=["0.weight", "3.weight"], meta={"notes": ["mine"]})
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    r0, r3 = float(w0.detach().norm()), float(w3.detach().norm())
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    t = rec.trajectory()
    assert t.meta["notes"][0] == "mine" and "different lr" in t.meta["notes"][1]
    assert math.isnan(t.elr[0])
    assert t.extra["elr/0.weight"][0] == pytest.approx(0.1 / r0**2, rel=1e-6)
    assert t.extra["elr/3.weight"][0] == pytest.approx(0.05 / r3**2, rel=1e-6)


REPARAMETRIZED = {
    "weight_norm": (nn.utils.parametrizations.weight_norm, "0.parametrizations.weight.original1"),
    "spectral_norm": (
        nn.utils.parametrizations.spectral_norm,
        "0.parametrizations.weight.original",
    ),
    "weight_norm_hook": (nn.utils.weight_norm, "0.weight_v"),
    "spectral_norm_hook": (nn.utils.spectral_norm, "0.weight_orig"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", list(REPARAMETRIZED))
def test_weight_and_spectral_normalization_make_their_direction_si(kind):
    # W = g v/|v| or v/sigma(v): the loss is unchanged when v is rescaled, with no norm
    # layer after it (tanh is not homogeneous, so nothing else is SI)
    wrap, expected = REPARAMETRIZED[kind]
    torch.manual_seed(0)
    model = nn.Sequential(wrap(nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 2)).double().train()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    for method in ("auto", "hooks"):
        assert list(find_si_groups(model, example_input=x, method=method)) == [expected]
    params = dict(model.named_parameters())
    for name, p in params.items():  # the second method: rescale each tensor alone
        change = check_scale_invariance(loss_fn, [p], model=model)
        assert (change < 1e-12) == (name == expected), (name, change)


def test_weight_normalized_network_follows_the_exact_norm_map():
    # found automatically, the direction v of a weight-normalized layer obeys
    # rho_{t+1}^2 = (1 - lr wd)^2 rho_t^2 + lr^2 g~_t^2 / rho_t^2 (docs/theory.md section 1)
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 2)
    ).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (32,))
    lr, wd = 0.3, 0.02
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    rec = SIRecorder(model, opt)
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    t = rec.trajectory()
    assert t.meta["groups"] == ["0.parametrizations.weight.original1"]
    assert np.max(np.abs(t.extra["radial"])) < 1e-12
    rho2_next = (1 - lr * wd) ** 2 * t.rho[:-1] ** 2 + lr**2 * t.grad_norm_sphere[:-1] ** 2 / (
        t.rho[:-1] ** 2
    )
    np.testing.assert_allclose(t.rho[1:] ** 2, rho2_next, rtol=1e-12)


@pytest.mark.parametrize("method", ["auto", "hooks"])
def test_detection_with_an_example_input_leaves_the_random_state_alone(method):
    # the detection runs the model once on the example (dropout draws random numbers):
    # the training loop's random stream must be the one it would have been without it
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.BatchNorm1d(6), nn.Dropout(0.5))
    x = torch.randn(8, 5)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert list(find_si_groups(model, example_input=x, method=method)) == ["0.weight"]
    assert torch.equal(torch.rand(3), expected)


def test_a_compiled_model_is_recorded_like_the_module_it_compiled():
    # torch.compile wraps the module (OptimizedModule has no forward of its own to trace):
    # detection looks through the wrapper, and the recorded run equals the eager one
    def run(compile_it):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
        )
        x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        net = torch.compile(model, backend="eager") if compile_it else model
        opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2)
        rec = SIRecorder(net, opt)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return rec.trajectory()

    eager, compiled = run(False), run(True)
    assert compiled.meta["groups"] == eager.meta["groups"] == ["0.weight"]
    np.testing.assert_allclose(compiled.rho, eager.rho, rtol=1e-6)
    np.testing.assert_allclose(compiled.grad_norm_sphere, eager.grad_norm_sphere, rtol=1e-5)


def test_data_parallel_wrappers_are_looked_through(tmp_path):
    # DataParallel and DistributedDataParallel forward through code torch.fx cannot trace;
    # the groups are the wrapped module's (the same tensors)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.Linear(16, 3))
    expected = find_si_groups(model)
    assert list(expected) == ["0.weight"]
    dist = torch.distributed
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrappers = [nn.DataParallel(model), nn.parallel.DistributedDataParallel(model)]
        for wrapped in [*wrappers, torch.compile(wrappers[1], backend="eager")]:
            found = find_si_groups(wrapped)
            assert list(found) == ["0.weight"]
            assert found["0.weight"][0] is model[0].weight
    finally:
        dist.destroy_process_group()


def test_a_compiled_submodule_is_traced_through():
    # a backbone compiled inside a larger model is traced through the module it compiled
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            body = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU())
            self.backbone = torch.compile(body, backend="eager")
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.backbone(x))

    model = Net()
    found = find_si_groups(model)
    assert list(found) == ["backbone._orig_mod.0.weight"]
    assert (
        found["backbone._orig_mod.0.weight"][0]
        is dict(model.named_parameters())["backbone._orig_mod.0.weight"]
    )


class _Cosine(nn.Module):
    """A cosine classifier: normalized features against normalized class weights."""

    def __init__(self, bias: bool):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.proj = nn.Linear(16, 16, bias=bias)
        self.classes = nn.Parameter(torch.randn(3, 16))

    def forward(self, x):
        h = nn.functional.normalize(self.proj(torch.relu(self.body(x))), dim=1)
        return 10.0 * nn.functional.linear(h, nn.functional.normalize(self.classes, dim=1))


@pytest.mark.parametrize("bias", [False, True])
def test_cosine_classifier_weights_and_normalized_features_are_si(bias):
    # F.normalize(c W) = F.normalize(W): the class weights are SI by construction, and the
    # projection feeding F.normalize is SI unless a bias mixes in (normalize does not
    # subtract a mean)
    torch.manual_seed(0)
    model = _Cosine(bias).double()
    x = torch.randn(32, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    found = find_si_groups(model)
    expected = ["classes"] if bias else ["proj.weight", "classes"]
    assert _group_names(found, model)[0] == expected
    for name, p in model.named_parameters():  # the second method
        change = check_scale_invariance(loss_fn, [p], model=model)
        assert (change < 1e-12) == (name in expected), (name, change)
    # with a bias, the projection is SI together with it (normalize(c (W h + b))); without,
    # the first layer is (relu(c (W x + b)) = c relu(W x + b), and the projection is linear)
    pairs = _assert_pairs_as_rescaling_says(model, found, loss_fn, tol=1e-12)
    assert pairs == (["proj"] if bias else ["body"])


def test_a_module_without_forward_gets_its_childrens_groups():
    # a container whose computation lives elsewhere (a training_step): nothing to trace
    # at the top; each child is traced on its own and its groups keep the model's names
    class Container(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6))
            self.preact = _Fn(
                lambda s, x: s.bn(s.a(x) + s.b(x)),
                a=nn.Linear(6, 6, bias=False),
                b=nn.Linear(6, 6, bias=False),
                bn=nn.BatchNorm1d(6),
            )
            self.head = nn.Linear(6, 2)

    model = Container()
    groups = find_si_groups(model)
    assert list(groups) == ["encoder.0.weight", "jointly_si"]
    assert groups["encoder.0.weight"] == [model.encoder[0].weight]
    assert groups["jointly_si"] == [model.preact.a.weight, model.preact.b.weight]
    assert find_si_groups(nn.Module()) == {}


# ------------------------------------------------- the graph of one recorded forward pass
class _Branchy(nn.Module):
    """A model torch.fx cannot trace (it branches on a value), with a convolution SI only
    with its bias (into a LayerNorm over channels, through a permute), a weight SI alone
    and one whose output also feeds a residual sum (not SI; the hooks would claim it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.ln = nn.LayerNorm(4)
        self.a = nn.Linear(4, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.r = nn.Linear(4, 4, bias=False)
        self.bn2 = nn.BatchNorm1d(4)
        self.h = nn.Linear(4, 3)

    def forward(self, x):
        z = self.ln(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2))
        if z.abs().sum() >= 0:  # a value decides: torch.fx cannot trace this
            z = torch.relu(self.bn(self.a(z)))
        r = self.r(z)
        return self.h(self.bn2(r) + r)


def _branchy_setup():
    return _classification_problem(_Branchy, (8, 1, 6, 6), 3)


def test_an_untraceable_model_is_analysed_on_the_graph_of_one_forward_pass():
    model, x, loss_fn = _branchy_setup()
    with pytest.raises(ValueError, match="torch.fx could not trace"):
        find_si_groups(model, method="fx")
    running = model.bn.running_mean.clone()
    state = torch.random.get_rng_state()
    groups = find_si_groups(model, example_input=x)  # "auto": the recorded pass
    assert list(groups) == ["a.weight", "stem.weight+bias"]
    assert list(find_si_groups(model, example_input=x, method="run")) == list(groups)
    assert torch.equal(model.bn.running_mean, running)  # buffers restored
    assert torch.equal(torch.random.get_rng_state(), state)
    # the second method: each claim holds under rescaling, and what is left out does not
    for tensors in groups.values():
        assert check_scale_invariance(loss_fn, tensors, model=model) < 1e-9
    for p in (model.r.weight, model.stem.weight, model.h.weight):
        assert check_scale_invariance(loss_fn, [p], model=model) > 1e-3
    _assert_pairs_as_rescaling_says(model, groups, loss_fn)
    # the forward hooks see the residual layer's output enter a norm, and claim it
    assert "r.weight" in find_si_groups(model, example_input=x, method="hooks")


class _Hidden(_Branchy):
    """_Branchy computing its output with torch functions hidden from modes."""

    def forward(self, x):
        out = super().forward(x)
        with torch._C.DisableTorchFunction():
            return out * 1.0


class _WritesIntoView(_Branchy):
    """_Branchy adding a constant to a slice of a scaled value in place."""

    def forward(self, x):
        z = self.ln(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2))
        a = self.a(z)
        a[:, 0] += 1.0  # the view's base changes: the recording cannot follow it
        return self.h(self.bn(a))


@pytest.mark.parametrize("cls", [_Hidden, _WritesIntoView])
def test_a_forward_pass_the_recording_cannot_follow_is_refused(cls):
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"could not be recorded .*groups="):
        find_si_groups(model, example_input=x, method="run")
    # "auto" falls back to the forward hooks
    hooks = find_si_groups(model, example_input=x, method="hooks")
    assert list(find_si_groups(model, example_input=x)) == list(hooks)


class _Tied(nn.Module):
    """Two layers sharing one weight: one feeds a BatchNorm, the other the output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6, bias=False)
        self.bn = nn.BatchNorm1d(6)
        self.b = nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight
        self.h = nn.Linear(6, 2)

    def forward(self, x):
        return self.h(self.bn(self.a(x)) + self.b(x))


class _TiedDirect(nn.Module):
    """A parameter read directly into a LayerNorm, and also the weight of a layer whose
    output bypasses it."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 6))
        self.lin = nn.Linear(6, 6, bias=False)
        self.lin.weight = self.W
        self.ln = nn.LayerNorm(6)
        self.h = nn.Linear(6, 2)

    def forward(self, x):
        return self.h(self.ln(x @ self.W.T) + self.lin(x))


@pytest.mark.parametrize("cls", [_Tied, _TiedDirect])
@pytest.mark.parametrize("method", ["fx", "run"])
def test_a_weight_shared_with_another_layer_is_not_claimed(method, cls):
    model, x, loss_fn = _classification_problem(cls, (8, 6), 2)
    assert find_si_groups(model, example_input=x, method=method) == {}
    shared = model.a.weight if cls is _Tied else model.W
    assert check_scale_invariance(loss_fn, [shared], model=model) > 1e-3


def _pair_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3),
    )  # fmt: skip


def test_recorder_notes_a_group_whose_bias_has_no_weight_decay():
    # the usual split: no weight decay on biases; the weight+bias group mixes the two
    model = _pair_model()
    decay = [model[0].weight, model[3].weight, model[5].weight]
    rest = [model[3].bias, model[4].weight, model[4].bias, model[5].bias]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=0.1
    )
    rec = SIRecorder(model, opt)
    assert list(rec.groups) == ["0.weight", "3.weight+bias"]
    (note,) = rec.meta["notes"]
    assert "3.weight+bias" in note and "different lr or weight decay" in note
    assert "0.weight" not in note
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    w, b = model[3].weight.detach(), model[3].bias.detach()
    norm = math.sqrt(float((w.double() ** 2).sum() + (b.double() ** 2).sum()))
    opt.step()
    # the row holds the group's norm before the step: the weight and the bias together
    (rho,) = rec.trajectory().extra["rho/3.weight+bias"]
    assert rho == pytest.approx(norm, rel=1e-6)


def test_recorder_leaves_out_a_found_group_the_optimizer_does_not_fully_update():
    model = _pair_model()
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n != "3.bias"], lr=0.1)
    rec = SIRecorder(model, opt)
    assert list(rec.groups) == ["0.weight"]
    assert any("left out" in n and "3.weight+bias" in n for n in rec.meta["notes"])
    # a group named explicitly is the user's choice: an error, as before
    with pytest.raises(ValueError, match="does not update"):
        SIRecorder(model, opt, groups={"pair": [model[3].weight, model[3].bias]})


@pytest.mark.parametrize("method", ["auto", "run", "hooks"])
@pytest.mark.parametrize(
    "bad", [torch.randn(3, 5), "text", {"y": torch.randn(2, 1, 6, 6)}], ids=["shape", "str", "kw"]
)
def test_an_example_input_the_model_rejects_is_one_clear_error(method, bad):
    model, x, _ = _branchy_setup()
    running = model.bn.running_mean.clone()
    with pytest.raises(ValueError, match=r"^example_input does not run through the model \(") as e:
        find_si_groups(model, example_input=bad, method=method)
    assert "\n" not in str(e.value) and "pass a batch the model accepts" in str(e.value)
    assert torch.equal(model.bn.running_mean, running)


def _two_group_log(tmp_path, suffix, lrs=(0.2, 0.2), wds=(0.01, 0.01), steps=40):
    """A recorder log of :func:`_pair_model` trained by SGD, its two groups in optimizer
    param groups of the given lrs and wds."""
    model = _pair_model().double()
    first = [model[0].weight]
    rest = [p for n, p in model.named_parameters() if n != "0.weight"]
    opt = torch.optim.SGD(
        [
            {"params": first, "lr": lrs[0], "weight_decay": wds[0]},
            {"params": rest, "lr": lrs[1], "weight_decay": wds[1]},
        ]
    )
    rec = SIRecorder(model, opt)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        rec.log_loss(loss)
        opt.step()
    return rec.save(tmp_path / f"log{suffix}")


def _assert_sgd_norm_step(traj, lr, wd):
    """``rho_{t+1}^2 = q^2 rho^2 - 2 q lr r g~ + lr^2 g~^2 / rho^2`` (``q = 1 - lr wd``,
    ``r`` the logged radial cosine): ``|q w - lr g|^2`` expanded, exact."""
    rho, gs = traj.rho[:-1], traj.grad_norm_sphere[:-1]
    r = traj.extra[f"radial/{traj.meta['group']}"][:-1]
    q = 1 - lr * wd
    pred = q**2 * rho**2 - 2 * q * lr * r * gs + lr**2 * gs**2 / rho**2
    np.testing.assert_allclose(traj.rho[1:] ** 2, pred, rtol=1e-9)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_one_group_of_a_recorder_log_is_read_with_group(tmp_path, suffix):
    import siflow.io

    path = _two_group_log(tmp_path, suffix)
    whole = siflow.io.read(path)
    one = siflow.io.read(path, group="3.weight+bias")
    other = siflow.io.read(path, group="0.WEIGHT")  # case aside, as for other formats
    assert one.meta["group"] == "3.weight+bias" and other.meta["group"] == "0.weight"
    np.testing.assert_array_equal(one.rho, whole.extra["rho/3.weight+bias"])
    np.testing.assert_array_equal(one.elr, whole.extra["elr/3.weight+bias"])
    np.testing.assert_array_equal(one.loss, whole.loss)
    np.testing.assert_array_equal(one.extra["rho/total"], whole.rho)
    # the second method: the total is the norm of the two groups concatenated
    np.testing.assert_allclose(np.hypot(one.rho, other.rho), whole.rho, rtol=1e-6)
    # the group's norm obeys the exact SGD + coupled weight decay step (its weight and
    # bias share lr and wd): |q w - lr g|^2 with the radial part of g that LayerNorm's
    # eps leaves
    _assert_sgd_norm_step(one, 0.2, 0.01)
    assert siflow.io.read(path, group="sum").rho.tolist() == whole.rho.tolist()
    with pytest.raises(ValueError, match=r"no SI group 'conv9' \(groups: 0\.weight, 3\.weight"):
        siflow.io.read(path, group="conv9")


def test_a_group_in_its_own_optimizer_param_group_gets_its_lr_and_wd(tmp_path):
    import siflow.io

    path = _two_group_log(tmp_path, ".npz", lrs=(0.2, 0.05), wds=(0.01, 0.03))
    whole = siflow.io.read(path)
    assert (whole.meta["lr"], whole.meta["wd"]) == (0.2, 0.01)  # the first group's
    one = siflow.io.read(path, group="3.weight+bias")
    assert (one.meta["lr"], one.meta["wd"]) == (0.05, 0.03)
    np.testing.assert_allclose(one.elr * one.rho**2, 0.05, rtol=1e-12)
    _assert_sgd_norm_step(one, 0.05, 0.03)


def test_overlay_command_reads_one_group_of_a_recorder_log(tmp_path):
    import json
    import subprocess

    path = _two_group_log(tmp_path, ".csv")
    run = [sys.executable, "-m", "siflow.overlay", str(path), "--json", "--out"]
    done = subprocess.run([*run, str(tmp_path / "o"), "--group", "3.weight+bias"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lr"] == 0.2
    bad = subprocess.run([*run, str(tmp_path / "b"), "--group", "conv9"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "no SI group 'conv9'" in bad.stderr
    assert not (tmp_path / "b").exists()


def test_rescaling_check_draws_the_same_dropout_masks_and_keeps_the_random_state():
    torch.manual_seed(0)
    model = _float64_training(
        nn.Sequential(
            nn.Linear(5, 6, bias=False), nn.Dropout(0.5), nn.LayerNorm(6), nn.Linear(6, 2)
        ),
        1e-14,
    )
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    state = torch.random.get_rng_state()
    assert check_scale_invariance(loss_fn, [model[0].weight], model=model) < 1e-12
    assert torch.equal(torch.random.get_rng_state(), state)
    assert check_scale_invariance(loss_fn, [model[3].weight], model=model) > 1e-3


class _TwoInputs(nn.Module):
    """forward(x, scale): two positional inputs, and a branch on a value."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6, bias=False)
        self.bn = nn.BatchNorm1d(6)
        self.h = nn.Linear(6, 2)

    def forward(self, x, scale):
        if scale.sum() > 0:
            x = x * scale
        return self.h(self.bn(self.a(x)))


@pytest.mark.parametrize("method", ["auto", "run", "hooks"])
@pytest.mark.parametrize("container", [tuple, list])
def test_a_tuple_example_input_is_the_positional_inputs(method, container):
    # as Lightning runs example_input_array: model(*inputs)
    model = _TwoInputs()
    inputs = container([torch.randn(8, 4), torch.ones(4)])
    assert list(find_si_groups(model, example_input=inputs, method=method)) == ["a.weight"]


# ------------------------------------------------- groups without a gradient -----
class _SkippableNet(nn.Module):
    """Two SI blocks; the first (``c0``, residual) can be skipped, as stochastic depth does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp = nn.Linear(5, 8).double()
        self.c0 = nn.Linear(8, 8, bias=False).double()
        self.b0 = nn.BatchNorm1d(8, affine=False).double()
        self.c1 = nn.Linear(8, 8, bias=False).double()
        self.b1 = nn.BatchNorm1d(8, affine=False).double()
        self.out = nn.Linear(8, 3).double()
        self.skip = False

    def forward(self, x):
        h = self.inp(x)
        if not self.skip:
            h = h + F.relu(self.b0(self.c0(h)))
        return self.out(F.relu(self.b1(self.c1(h))))


def _train_by_hand(case: str, steps: int = 6):
    """Train with the recorder; return it and, per step, ``(w_t, g_t or None, w_{t+1},
    loss)`` of each group read from the parameters by hand."""
    net = _SkippableNet()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2)
    groups = {"c0": [net.c0.weight], "c1": [net.c1.weight]}
    rec = SIRecorder(net, opt, groups=groups)
    seen = []
    for t in range(steps):
        if case == "skip":
            net.skip = t in (2, 4)
        elif case == "freeze" and t == 3:
            net.c1.weight.requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        rec.log_loss(loss)
        before = {k: ps[0].detach().clone() for k, ps in groups.items()}
        grads = {
            k: None if ps[0].grad is None else ps[0].grad.detach().clone()
            for k, ps in groups.items()
        }
        opt.step()  # must not raise
        after = {k: ps[0].detach().clone() for k, ps in groups.items()}
        seen.append((before, grads, after, float(loss.detach())))
    return rec, seen


def _angle_by_hand(w, w_next):
    a, b = w / w.norm(), w_next / w_next.norm()
    return float(2 * torch.atan2((a - b).norm(), (a + b).norm()))


@pytest.mark.parametrize("case", ["skip", "freeze"])
def test_a_group_without_gradient_records_nan_gradient_and_the_true_norm(case):
    rec, seen = _train_by_hand(case)
    traj = rec.trajectory()
    assert len(traj) == len(seen)
    dropped = {"skip": {2: "c0", 4: "c0"}, "freeze": {3: "c1", 4: "c1", 5: "c1"}}[case]
    for t, (before, grads, after, loss) in enumerate(seen):
        assert traj.loss[t] == loss  # the loss of this step, even when c0 had no gradient
        for name in ("c0", "c1"):
            w, g, w_next = before[name], grads[name], after[name]
            col = traj.extra
            assert col[f"rho/{name}"][t] == pytest.approx(float(w.norm()), rel=1e-12)
            assert col[f"elr/{name}"][t] == pytest.approx(0.1 / float(w.norm()) ** 2, rel=1e-12)
            assert col[f"angular_update/{name}"][t] == pytest.approx(
                _angle_by_hand(w, w_next), abs=1e-12
            )
            if dropped.get(t) == name:
                assert g is None and torch.equal(w, w_next)  # SGD skipped the tensor
                assert math.isnan(col[f"grad_norm_sphere/{name}"][t])
                assert math.isnan(col[f"radial/{name}"][t])
                assert math.isnan(traj.grad_norm_sphere[t])  # the total needs every group
            else:
                want = float(w.norm() * g.norm())
                assert col[f"grad_norm_sphere/{name}"][t] == pytest.approx(want, rel=1e-12)
        if t not in dropped:  # the total: |w| |g| over the groups' concatenated tensors
            w_all = torch.cat([before[k].ravel() for k in before])
            g_all = torch.cat([grads[k].ravel() for k in before])
            assert traj.grad_norm_sphere[t] == pytest.approx(
                float(w_all.norm() * g_all.norm()), rel=1e-12
            )
    counts: dict[str, int] = {}
    for name in dropped.values():
        counts[name] = counts.get(name, 0) + 1
    assert traj.meta["rows_without_gradient"] == len(dropped)
    assert traj.meta["groups_without_gradient"] == counts
    notes = " ".join(traj.meta["notes"])
    assert f"{len(dropped)} recorded row(s) have SI groups without a gradient" in notes
    assert "loss.backward()" not in notes  # a backward ran at every step


def test_a_step_with_no_backward_at_all_is_recorded_with_a_note_not_an_exception():
    net = _SkippableNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2)
    rec = SIRecorder(net, opt, groups=["c0.weight", "c1.weight"])
    F.cross_entropy(net(torch.randn(4, 5, dtype=torch.float64)), torch.arange(4) % 3).backward()
    opt.step()
    assert "notes" not in rec.trajectory().meta  # every group had its gradient
    w0 = net.c0.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    opt.step()  # forgot loss.backward(): nothing to update, and no exception either
    traj = rec.trajectory()
    assert traj.extra["rho/c0.weight"][1] == pytest.approx(float(w0.norm()), rel=1e-12)
    assert traj.extra["angular_update/c0.weight"][1] == 0.0
    assert math.isnan(traj.grad_norm_sphere[1]) and math.isfinite(traj.grad_norm_sphere[0])
    assert traj.meta["groups_without_gradient"] == {"c0.weight": 1, "c1.weight": 1}
    assert any("call loss.backward() before optimizer.step()" in n for n in traj.meta["notes"])


@pytest.mark.parametrize("groups", [{}, []], ids=["empty-dict", "empty-list"])
def test_empty_groups_are_refused_in_one_line(groups):
    net = _SkippableNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"names no SI group; pass at least one"):
        SIRecorder(net, opt, groups=groups)


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )


def _train(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    rec: SIRecorder,
    steps: int,
) -> None:
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        rec.log_loss(loss)


@pytest.mark.parametrize("start", [0.0, 0.01])
def test_metadata_lr_is_the_configured_lr_under_a_warmup_built_first(start):
    # Lightning's configure_optimizers and HF's Trainer build the scheduler before the
    # recorder: the metadata lr was the warmup's first value (0, or 0.01 x 0.1 = 0.001)
    net = _bn_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: start + (1 - start) * min(s / 5, 1.0))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * start)
    rec = SIRecorder(net, opt, every=1)
    _train(net, opt, sched, rec, 8)
    t = rec.trajectory()
    assert t.meta["lr"] == 0.1 and t.meta["wd"] == 1e-3
    assert all(h["lr"] == 0.1 for h in t.meta["group_hyper"].values())
    # the rows keep the lr each step ran with: the warmup, then the peak
    want = [0.1 * (start + (1 - start) * min(s / 5, 1.0)) for s in range(8)]
    assert t.extra["lr"].tolist() == pytest.approx(want, rel=1e-12)


def test_metadata_lr_is_the_peak_of_a_one_cycle_schedule_and_the_lr_without_one():
    # OneCycleLR's initial_lr is the cycle's start (max_lr / div_factor); its max_lr is
    # the run's configured lr
    net = _bn_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3, weight_decay=1e-3)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=100, div_factor=25.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 / 25)
    assert SIRecorder(net, opt, every=1).meta["lr"] == 0.2
    net = _bn_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3, weight_decay=1e-3)
    assert SIRecorder(net, opt, every=1).meta["lr"] == 0.3  # no scheduler


def test_bf16_model_with_a_float32_example_input_prints_nothing(capfd):
    # the shape pass runs on the input cast to the parameters' dtype; were it to fail,
    # torch's own traceback of it is not shown (shapes are an optional refinement)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32, bias=True), nn.BatchNorm1d(32), nn.ReLU(),
                        nn.Linear(32, 4)).bfloat16()  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    rec = SIRecorder(net, opt, example_input=torch.randn(8, 16))
    out, err = capfd.readouterr()
    assert "Traceback" not in err and err == "", err
    assert list(rec.groups) == ["0.weight"]
