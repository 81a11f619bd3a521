"""Trajectory: construction checks, derived columns, round trips, downsampling."""

import numpy as np
import pytest

from siflow.trajectory import Trajectory


def _traj(n=50):
    step = np.arange(n) * 3
    rho = 2.0 * 0.99 ** np.arange(n)
    return Trajectory(
        step=step,
        loss=np.linspace(1, 0, n),
        rho=rho,
        angular_update=np.full(n, 0.01),
        extra={"acc": np.linspace(0, 1, n)},
        meta={"lr": 0.1, "wd": 1e-3, "source": "test"},
    )


def test_elr_is_lr_over_norm_squared():
    t = _traj().fill_derived()
    # hand value at row 1: 0.1 / (2 * 0.99)^2
    assert t.elr[1] == pytest.approx(0.1 / 3.9204, rel=1e-15)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_round_trip_is_exact(tmp_path, suffix):
    t = _traj()
    back = Trajectory.load(t.save(tmp_path / f"t{suffix}"))
    assert back.columns() == t.columns()
    for name in t.columns():
        np.testing.assert_array_equal(back.column(name), t.column(name))
    assert back.meta == t.meta


def test_rejects_decreasing_steps():
    with pytest.raises(ValueError, match="strictly increasing"):
        Trajectory(step=[0, 2, 1])


def test_rejects_length_mismatch():
    with pytest.raises(ValueError, match="shape"):
        Trajectory(step=[0, 1, 2], rho=[1.0, 2.0])


def test_missing_column_error_names_it():
    with pytest.raises(ValueError, match="no 'sharpness_sphere' column"):
        _traj().column("sharpness_sphere")


def test_downsample_keeps_every_row_near_events():
    t = Trajectory(step=np.arange(10_000), rho=np.ones(10_000))
    d = t.downsample(200, keep_steps=[5000], window=20)
    assert set(range(4980, 5021)) <= set(d.step.tolist())
    assert d.step[0] == 0 and d.step[-1] == 9999
    assert 150 <= len(d) <= 260


def test_corrupt_csv_is_a_value_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("step,rho\n1,2\n")
    with pytest.raises(ValueError, match="not a siflow trajectory"):
        Trajectory.load(p)


def test_truncated_npz_is_a_value_error(tmp_path):
    p = _traj().save(tmp_path / "t.npz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        Trajectory.load(p)


def test_concatenate_joins_parts():
    t = _traj(10)
    joined = Trajectory.concatenate([t[:4], t[4:]])
    np.testing.assert_array_equal(joined.rho, t.rho)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        p = _traj().save(tmp_path / "t.npz")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_csv_refuses_a_column_name_it_cannot_write(tmp_path):
    t = Trajectory(step=[0, 1], extra={"norm/a,b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="cannot be written to CSV"):
        t.save(tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
    back = Trajectory.load(t.save(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.extra["norm/a,b"], [1.0, 2.0])


def test_exact_means_from_running_sums_by_hand():
    # steps 0..9 with angle a_t = t/100, g_t = 1 + t, rho_t = 2, elr_t = 0.5; rows kept: 0, 4, 9
    t = np.arange(10.0)
    sums = {
        "sum_angular_update_sq": np.cumsum((t / 100) ** 2),
        "sum_grad_norm_sphere_sq": np.cumsum((1 + t) ** 2),
        "sum_grad_norm_sphere": np.cumsum(1 + t),
        "sum_rho": np.cumsum(np.full(10, 2.0)),
        "sum_elr": np.cumsum(np.full(10, 0.5)),
    }
    keep = [0, 4, 9]
    traj = Trajectory(step=keep, extra={k: v[keep] for k, v in sums.items()})
    got = traj.exact_means(4, 9)  # steps 5..9
    assert got["steps"] == 5
    assert got["angular_update_rms"] == pytest.approx(np.sqrt((25 + 36 + 49 + 64 + 81) / 5) / 100)
    assert got["grad_norm_sphere_rms"] == pytest.approx(np.sqrt((36 + 49 + 64 + 81 + 100) / 5))
    assert got["grad_norm_sphere_mean"] == pytest.approx(8.0)
    assert got["norm_mean"] == 2.0 and got["elr_mean"] == 0.5
    assert traj.exact_means()["steps"] == 9
    assert traj.exact_means(9, 9) is None
    assert Trajectory(step=keep, rho=[1.0, 1.0, 1.0]).exact_means() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": np.ones(3) * (1 + 1j)}, r"^column 'rho' holds complex numbers"),
        ({"loss": [1.0, 10**400, 2.0]}, r"^column 'loss' holds an integer beyond the float64"),
        ({"step": [0, 1 + 1j, 2]}, r"^step holds complex numbers"),
        (
            {"step": np.array([0, 1, 2**63], dtype=np.uint64)},
            r"^step holds numbers beyond the int64",
        ),
        ({"step": [0, 1, 2**64]}, r"^step holds numbers beyond the int64"),
        ({"step": [0.0, 1.0, 1e19]}, r"^step holds numbers beyond the int64"),
        ({"meta": [("lr", 0.1)]}, r"^meta must be a mapping"),
        ({"extra": 3}, r"^extra must be a mapping"),
    ],
)
def test_values_of_the_wrong_kind_are_named(kwargs, message):
    # before: numpy's ComplexWarning and a silently real column, OverflowError, TypeError,
    # or a uint64 step wrapped to a negative int64
    base = {"step": np.arange(3), "rho": np.ones(3)}
    with pytest.raises(ValueError, match=message):
        Trajectory(**{**base, **kwargs})


def test_rows_by_number_or_columns_by_name_say_how(tmp_path):
    t = Trajectory(step=np.arange(3), rho=np.ones(3))
    with pytest.raises(TypeError, match=r"traj\.column\('rho'\)"):
        t["rho"]
    with pytest.raises(TypeError, match="slice, a mask or an index array"):
        t[1.5]
    with pytest.raises(ValueError, match="^path must be a file name ending in .npz or .csv"):
        t.save(3)
    assert t.column("rho").tolist() == [1.0, 1.0, 1.0] and len(t[1:]) == 2


def test_csv_round_trip_keeps_steps_beyond_2_to_the_53(tmp_path):
    steps = np.array([2**62, 2**62 + 1, 2**62 + 7], dtype=np.int64)
    traj = Trajectory(step=steps, rho=np.array([1.0, 2.0, 3.0]))
    back = Trajectory.load(traj.save(tmp_path / "big.csv"))
    assert back.step.tolist() == steps.tolist()
