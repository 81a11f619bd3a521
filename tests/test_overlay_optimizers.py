"""overlay with optimizer=: AdamW and Lion per SI group against simulation, the genuine
REQ AdamW log, and what each optimizer's theory does not define (n/a with a reason).

Ground truth: AdamW and Lion iterated in numpy on two SI groups of different sizes
(gradients of sphere norm 1, random directions orthogonal to w, as the equilibria
are tested in tests/test_theory.py), and numbers read by hand from REQ's own
``dynamics.pkl`` with a restricted unpickler.
"""

import collections
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from siflow import theory
from siflow.overlay import analyze
from siflow.trajectory import Trajectory

SIZES = {"a": 300, "b": 1200}


def _adaptive_log(opt, lr, wd, steps, seed=0, b1=0.9, b2=0.99):
    """Two SI groups under AdamW or Lion, started at the equilibrium norm; every step logged."""
    rng = np.random.default_rng(seed)
    ws, ms, sqs = {}, {}, {}
    for name, c in SIZES.items():
        w = rng.standard_normal(c)
        target = (
            theory.adamw_equilibrium_norm(lr, wd, c, b1)
            if opt == "adamw"
            else theory.lion_equilibrium_norm(lr, wd, c, b1, b2)
        )
        ws[name] = w * (target / np.linalg.norm(w))
        ms[name] = np.zeros(c)
        sqs[name] = np.full(c, 1.0 / (ws[name] @ ws[name] * c))
    cols = {f"{k}/{n}": np.empty(steps) for k in ("rho", "angular_update") for n in SIZES}
    rho_tot, ang_tot = np.empty(steps), np.empty(steps)
    for t in range(steps):
        w_all_old = np.concatenate(list(ws.values()))
        for name, w in ws.items():
            rho = np.linalg.norm(w)
            z = rng.standard_normal(w.size)
            z -= (z @ w) / (rho * rho) * w
            g = z / (rho * np.linalg.norm(z))
            if opt == "adamw":
                ms[name] = b1 * ms[name] + (1 - b1) * g
                sqs[name] = 0.999 * sqs[name] + 0.001 * g * g
                new = (1 - lr * wd) * w - lr * ms[name] / np.sqrt(sqs[name])
            else:
                u = np.sign(b1 * ms[name] + (1 - b1) * g)
                ms[name] = b2 * ms[name] + (1 - b2) * g
                new = (1 - lr * wd) * w - lr * u
            cols[f"rho/{name}"][t] = rho
            cos = (w @ new) / (rho * np.linalg.norm(new))
            cols[f"angular_update/{name}"][t] = math.acos(min(1.0, cos))
            ws[name] = new
        w_all = np.concatenate(list(ws.values()))
        rho_tot[t] = np.linalg.norm(w_all_old)
        cos = (w_all_old @ w_all) / (rho_tot[t] * np.linalg.norm(w_all))
        ang_tot[t] = math.acos(min(1.0, cos))
    for name, c in SIZES.items():
        cols[f"numel/{name}"] = np.full(steps, float(c))
    meta = {"lr": lr, "wd": wd, "optimizer": "AdamW" if opt == "adamw" else "Lion"}
    meta["betas"] = [b1, 0.999] if opt == "adamw" else [b1, b2]
    return Trajectory(
        step=np.arange(steps), rho=rho_tot, angular_update=ang_tot, extra=cols, meta=meta
    )


@pytest.mark.parametrize("opt", ["adamw", "lion"])
def test_adaptive_per_group_predictions_against_simulation(opt):
    lr, wd = 1e-2, 0.1
    traj = _adaptive_log(opt, lr, wd, 4000)
    res = analyze(traj)  # optimizer, betas and group sizes from the log
    assert res.optimizer == opt
    assert {g.name for g in res.groups} == set(SIZES)
    b1, b2 = res.betas
    for g in res.groups:
        c = SIZES[g.name]
        assert g.n_params == c
        if opt == "adamw":
            want_norm = theory.adamw_equilibrium_norm(lr, wd, c, b1)
            want_angle = theory.adamw_equilibrium_angle(lr, wd, b1)
        else:
            want_norm = theory.lion_equilibrium_norm(lr, wd, c, b1, b2)
            want_angle = theory.lion_equilibrium_angle(lr, wd, b1, b2)
        assert g.norm_predicted == pytest.approx(want_norm, rel=1e-12)
        assert g.angular_update_predicted == pytest.approx(want_angle, rel=1e-12)
        # the simulation agrees with the closed forms per group
        assert g.norm_mean == pytest.approx(g.norm_predicted, rel=0.02)
        assert g.angular_update_rms == pytest.approx(g.angular_update_predicted, rel=0.02)
    # total: C = the sum of the group sizes
    assert res.n_params == sum(SIZES.values())
    assert res.norm_mean == pytest.approx(res.norm_predicted, rel=0.02)
    assert res.angular_update_rms == pytest.approx(res.angular_update_predicted, rel=0.02)
    # what the adaptive theory does not define is n/a, with the reason
    assert res.elr_predicted is None
    assert res.formulas["threshold"].startswith("n/a")
    assert res.norm_replay_error_max is None and res.scale_invariance == "n/a"
    assert any(f"{opt}: no exact norm law" in n for n in res.notes)


def test_sgd_theory_on_an_adamw_log_is_far_off():
    """The bug this fixes: SGD closed forms on an AdamW run."""
    traj = _adaptive_log("adamw", 1e-2, 0.1, 1500)
    sgd = analyze(traj, optimizer="sgd")
    adamw = analyze(traj, optimizer="adamw")
    assert sgd.angular_update_predicted == pytest.approx(math.acos(1 - 1e-3), rel=1e-12)
    assert adamw.angular_update_predicted == pytest.approx(
        theory.adamw_equilibrium_angle(1e-2, 0.1, 0.9), rel=1e-12
    )
    assert sgd.angular_update_predicted / adamw.angular_update_predicted > 4


def test_group_sizes_parameter_and_missing_size():
    traj = _adaptive_log("adamw", 1e-2, 0.1, 300)
    for k in list(traj.extra):
        if k.startswith("numel/"):
            del traj.extra[k]
    res = analyze(traj)
    assert res.norm_predicted is None and res.n_params is None
    assert all(g.norm_predicted is None for g in res.groups)
    assert any("n_params=" in n for n in res.notes)
    res = analyze(traj, group_sizes={"a": 300, "b": 1200})
    assert res.n_params == 1500
    by = {g.name: g for g in res.groups}
    assert by["a"].norm_predicted == pytest.approx(
        theory.adamw_equilibrium_norm(1e-2, 0.1, 300, 0.9), rel=1e-12
    )
    with pytest.raises(ValueError, match="group_sizes"):
        analyze(traj, group_sizes={"a": -1})
    with pytest.raises(ValueError, match="optimizer"):
        analyze(traj, optimizer="adagrad")


def test_unknown_log_optimizer_is_a_note():
    traj = Trajectory(
        step=np.arange(50),
        rho=np.linspace(2, 1, 50),
        meta={"lr": 0.1, "wd": 0.01, "optimizer": "RMSprop"},
    )
    res = analyze(traj)
    assert res.optimizer == "sgd"
    assert any("'rmsprop'" in n and "optimizer=" in n for n in res.notes)


def test_a_log_that_names_no_optimizer_is_taken_as_sgd_with_a_note():
    def notes(meta):
        traj = Trajectory(step=np.arange(50), rho=np.linspace(2, 1, 50), meta=meta)
        res = analyze(traj)
        assert res.optimizer == "sgd"
        return [n for n in res.notes if "does not name its optimizer" in n]

    (note,) = notes({"lr": 0.1, "wd": 0.01})
    assert "SGD" in note and "optimizer=" in note
    assert notes({"lr": 0.1, "wd": 0.01, "optimizer": "sgd"}) == []


def test_flat_json_keys_and_sections():
    traj = _adaptive_log("adamw", 1e-2, 0.1, 300)
    res = analyze(traj)
    d = res.as_flat_dict()
    for key in ("optimizer", "lr_schedule", "norm_replay_error_max", "angle_law_error_median"):
        assert key in d
    assert d["angular_update_predicted"] == res.predictions.angular_update_predicted
    assert d["norm_mean"] == res.equilibrium.norm_mean
    assert d["n_events"] == res.event_stats.n_events
    assert d["groups"][0]["name"] == "a"
    # flat attributes read and write their section
    res.angular_update_rms = 1.5
    assert res.equilibrium.angular_update_rms == 1.5
    assert '"angular_update_rms": 1.5' in res.to_json()


# --------------------------------------------------------------------------- REQ's AdamW log
REQ = Path(__file__).parent / "data" / "overlay" / "req_adamw"
REQ_LAYERS = ("0.weight", "3.weight")  # the SI layers; 6.weight is frozen at norm 10, lr 0


def _req_dumps():
    """REQ's appended pickle dumps, read with an unpickler that builds only tensors."""
    import torch  # a declared test dependency

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return torch._utils._rebuild_tensor_v2
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return lambda b: torch.load(io.BytesIO(b), weights_only=True)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    dumps = []
    with open(REQ / "dynamics.pkl", "rb") as fh:
        while True:
            try:
                dumps.append(Restricted(fh).load())
            except EOFError:
                return dumps


def _req_column(dumps, stat, layer):
    return np.concatenate([d[stat][layer].double().numpy()[:, 0] for d in dumps])


def _req_by_hand():
    """Per-layer norms and angles by hand; one row per 100 iterations (logger interval 10,
    disk_save_interval 10), total norm = root-sum-square of the SI layers."""
    dumps = _req_dumps()
    extra = {}
    for layer in (*REQ_LAYERS, "6.weight"):
        extra[f"rho/{layer}"] = _req_column(dumps, "layer_norm", layer)
        extra[f"angular_update/{layer}"] = _req_column(dumps, "layer_angular_update", layer)
    rho = np.sqrt(sum(extra[f"rho/{p}"] ** 2 for p in REQ_LAYERS))
    return Trajectory(
        step=np.arange(1, len(rho) + 1) * 100,
        rho=rho,
        extra=extra,
        meta={"optimizer": "AdamW"},
    )


def _within_15_percent(res, layer_names):
    want = theory.adamw_equilibrium_angle(1e-2, 0.1, 0.9)
    assert res.optimizer == "adamw"
    by = {g.name: g for g in res.groups}
    for layer in REQ_LAYERS:
        name = next(n for n in layer_names if n.endswith(layer))
        g = by[name]
        assert g.angular_update_predicted == pytest.approx(want, rel=1e-12)
        assert g.angular_update_rms == pytest.approx(want, rel=0.15), layer
    return by


def test_req_adamw_per_layer_angle_within_15_percent_of_theory():
    traj = _req_by_hand()
    res = analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1)
    by = _within_15_percent(res, [g.name for g in res.groups])
    assert "frozen" in by["6.weight"].note and len(res.groups) == 3
    # the measured RMS is the RMS of the raw rows over the stationary part
    rows = (traj.step >= res.stationary_start) & (traj.step <= res.stationary_stop)
    for layer in REQ_LAYERS:
        raw = traj.extra[f"angular_update/{layer}"][rows]
        assert by[layer].angular_update_rms == pytest.approx(math.sqrt(np.mean(raw**2)), rel=1e-12)
    # in total: the RMS over both layers, weighted by their squared norms
    num = sum(
        traj.extra[f"rho/{p}"][rows] ** 2 * traj.extra[f"angular_update/{p}"][rows] ** 2
        for p in REQ_LAYERS
    )
    total = math.sqrt(np.mean(num / traj.rho[rows] ** 2))
    assert total == pytest.approx(res.angular_update_predicted, rel=0.15)
    # the overlay derives the same total from the groups (the frozen 6.weight left out);
    # it keeps sin^2(Delta/2) in the sum, equal to the above to first order in the angles
    assert res.angular_update_source == "derived from groups"
    assert res.angular_update_rms == pytest.approx(total, rel=1e-4)
    assert res.angular_update_rms == pytest.approx(res.angular_update_predicted, rel=0.15)


def test_req_adamw_log_through_siflow_io():
    """The same through the REQ reader of siflow.io (per-group columns rho/<layer>,
    angular_update/<layer>)."""
    from siflow import io as sio

    traj = sio.read(REQ / "dynamics.pkl")
    res = analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1)
    names = [g.name for g in res.groups]
    assert any(n.endswith(REQ_LAYERS[0]) for n in names), (
        f"per-layer columns rho/<layer> and angular_update/<layer> expected; got {names}"
    )
    _within_15_percent(res, names)
    # in total: derived from the per-layer angles and norms (the log has no total angle)
    assert res.angular_update_source == "derived from groups"
    assert res.angular_update_rms == pytest.approx(res.angular_update_predicted, rel=0.15)
    ref = analyze(_req_by_hand(), optimizer="adamw", lr=1e-2, wd=0.1)
    assert res.angular_update_rms == pytest.approx(ref.angular_update_rms, rel=1e-9)


def test_req_column_names_are_understood():
    """REQ's own ``layer_<stat>/<param>`` names give the same groups; its raw gradient
    norm is put on the sphere (rho |grad|)."""
    dumps = _req_dumps()
    ref = _req_by_hand()
    extra = {}
    for layer in REQ_LAYERS:
        for stat in ("layer_norm", "layer_angular_update", "layer_grad_norm"):
            extra[f"{stat}/{layer}"] = _req_column(dumps, stat, layer)
    traj = Trajectory(step=ref.step, rho=ref.rho, extra=extra, meta=ref.meta)
    a = analyze(ref, optimizer="adamw", lr=1e-2, wd=0.1)
    b = analyze(traj, optimizer="adamw", lr=1e-2, wd=0.1)
    ga = {g.name: g for g in a.groups}
    for g in b.groups:
        assert g.angular_update_rms == ga[g.name].angular_update_rms
        assert g.norm_mean == ga[g.name].norm_mean
    rows = (traj.step >= b.stationary_start) & (traj.step <= b.stationary_stop)
    layer = REQ_LAYERS[0]
    sphere = extra[f"layer_norm/{layer}"][rows] * extra[f"layer_grad_norm/{layer}"][rows]
    assert b.groups[0].grad_norm_sphere_rms == pytest.approx(
        math.sqrt(np.mean(sphere**2)), rel=1e-12
    )


def test_nesterov_has_its_own_decay_law_and_threshold():
    n = 400
    traj = Trajectory(
        step=np.arange(n),
        rho=np.full(n, 2.0) * (1 + 0.01 * np.sin(np.arange(n))),
        grad_norm_sphere=np.full(n, 0.5),
        angular_update=np.full(n, 0.01),
        meta={"lr": 0.1, "wd": 1e-3, "momentum": 0.9, "optimizer": "SGD", "nesterov": True},
    )
    res = analyze(traj, sharpness=10.0)
    assert res.optimizer == "nesterov"
    assert res.angular_update_predicted == pytest.approx(
        theory.sgdm_equilibrium_angle(0.1, 1e-3, 0.9, nesterov=True), rel=1e-12
    )
    assert res.norm_predicted == pytest.approx(
        theory.sgdm_equilibrium_norm(0.1, 1e-3, 0.5, 0.9, nesterov=True), rel=1e-12
    )
    # Nesterov's zero-gradient polynomial z^2 - (1 + mu)(1 - x) z + mu (1 - x), x = lr wd
    x, mu = 0.1 * 1e-3, 0.9
    alpha = float(np.max(np.abs(np.roots([1.0, -(1 + mu) * (1 - x), mu * (1 - x)]))))
    assert res.decay_rate_predicted == pytest.approx(-math.log(alpha), rel=1e-10)
    assert res.decay_rate_predicted != pytest.approx(theory.decay_rate(0.1, 1e-3, 0.9), rel=1e-4)
    # its angle recursion's boundary, (1 - x + a^2/((1 + mu) a + mu))/S
    thr = (1 - x + alpha**2 / ((1 + mu) * alpha + mu)) / 10.0
    assert res.elr_threshold == pytest.approx(thr, rel=1e-10)
    assert res.critical_norm == pytest.approx(math.sqrt(0.1 / thr), rel=1e-10)
    assert "Nesterov" in res.formulas["threshold"] and "Nesterov" in res.formulas["decay_rate"]
    assert res.scale_invariance == "n/a"
    # heavy ball on the same numbers has both, from siflow.theory
    hb = analyze(traj, optimizer="sgdm", sharpness=10.0)
    assert hb.elr_threshold == pytest.approx(
        theory.stability_threshold_elr(0.1, 1e-3, 10.0, 0.9), rel=1e-12
    )
    assert hb.critical_norm == pytest.approx(theory.critical_norm(0.1, 1e-3, 10.0, 0.9), rel=1e-12)
    assert hb.decay_rate_predicted == pytest.approx(theory.decay_rate(0.1, 1e-3, 0.9), rel=1e-12)
    assert hb.formulas["threshold"].startswith("2(1 + mu - lr wd)/S")


def test_seed_style_group_columns_and_sizes():
    """``<param>_norm`` / ``<param>_numel`` columns of the groups a reader lists in meta."""
    n = 200
    extra = {"conv.weight_norm": np.full(n, 3.0), "conv.weight_numel": np.full(n, 864.0)}
    traj = Trajectory(
        step=np.arange(n),
        rho=np.full(n, 3.0),
        extra=extra,
        meta={"lr": 1e-2, "wd": 0.1, "groups": ["conv.weight"]},
    )
    res = analyze(traj, optimizer="adamw")
    (g,) = res.groups
    assert g.name == "conv.weight" and g.n_params == 864 and g.norm_mean == 3.0
    assert g.norm_predicted == pytest.approx(
        theory.adamw_equilibrium_norm(1e-2, 0.1, 864, 0.9), rel=1e-12
    )
