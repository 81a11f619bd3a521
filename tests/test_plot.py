"""plot: panels, overlays, formats by suffix, atomic saving, argument checks."""

import math

import matplotlib
import numpy as np
import pytest

from siflow.periods import find_events
from siflow.plot import (
    PANELS,
    Band,
    Curve,
    HLine,
    Marker,
    Segment,
    plot_trajectory,
    save_figure,
)
from siflow.trajectory import Trajectory

matplotlib.use("Agg")

MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def _traj(with_angle=True):
    t = np.arange(3000)
    rho = np.exp(-1e-3 * (t % 1000))
    cols = {
        "loss": 0.01 + 0.5 * (t % 1000 < 20),
        "rho": rho,
        "elr": 0.1 / rho**2,
    }
    if with_angle:
        cols["angular_update"] = np.full(t.size, 0.014)
    return Trajectory(step=t, meta={"lr": 0.1, "wd": 1e-2, "source": "toy"}, **cols)


def _lines_of(ax):
    return [ln for ln in ax.get_lines() if ln.get_label() != "measured"]


def test_four_panels_log_axes_and_labels():
    traj = _traj()
    fig = plot_trajectory(traj, events=find_events(traj))
    axes = fig.get_axes()
    assert len(axes) == 4
    assert [ax.get_ylabel() for ax in axes] == [PANELS[p][1] for p in PANELS]
    assert all(ax.get_yscale() == "log" for ax in axes)
    assert axes[-1].get_xlabel() == "optimizer step"
    assert fig._suptitle.get_text() == "toy"
    # two events (steps 999 and 1999) -> two dotted vertical lines per panel, drawn as one
    # collection (one artist per event costs memory at 10^4 events)
    from matplotlib.collections import LineCollection

    (events,) = [c for c in axes[1].collections if isinstance(c, LineCollection)]
    assert sorted(seg[0][0] for seg in events.get_segments()) == [999, 1999]


def test_absent_column_says_not_in_log():
    fig = plot_trajectory(_traj(with_angle=False))
    texts = [t.get_text() for t in fig.get_axes()[3].texts]
    assert texts == ["angular_update: not in log"]


def test_overlays_are_drawn_where_asked():
    traj = _traj()
    lines = [
        HLine("rho", 0.5, "level"),
        Segment("rho", 100.0, 0.9, 600.0, -1e-3, "decay"),
        Band("elr", 0.1, 0.2, "band"),
        Marker("loss", [10, 20], [0.3, 0.4], "marks"),
        HLine("angle", 0.0141, "pred", xmin=500, xmax=900),
    ]
    fig = plot_trajectory(traj, lines=lines)
    ax_loss, ax_rho, ax_elr, ax_angle = fig.get_axes()
    by_label = {ln.get_label(): ln for ln in _lines_of(ax_rho)}
    assert list(by_label["level"].get_ydata()) == [0.5, 0.5]
    seg = by_label["decay"]
    # hand value at the far end: 0.9 * exp(-1e-3 * 500)
    assert seg.get_ydata()[-1] == pytest.approx(0.9 * math.exp(-0.5), rel=1e-12)
    assert seg.get_xdata()[0] == 100.0 and seg.get_xdata()[-1] == 600.0
    pred = {ln.get_label(): ln for ln in _lines_of(ax_angle)}["pred"]
    assert list(pred.get_xdata()) == [500, 900]
    assert len(ax_elr.collections) == 1  # the band
    marks = {ln.get_label(): ln for ln in _lines_of(ax_loss)}["marks"]
    assert list(marks.get_ydata()) == [0.3, 0.4]
    # legends sit outside the axes, one per panel with labels
    assert ax_rho.get_legend() is not None


def test_curve_is_drawn_through_its_finite_points():
    x = np.arange(0.0, 3000.0, 100.0)
    y = 0.5 + 1e-4 * x
    y[3] = np.nan
    fig = plot_trajectory(_traj(), lines=[Curve("rho", x, y, "rho*(t)")])
    curve = {ln.get_label(): ln for ln in _lines_of(fig.get_axes()[1])}["rho*(t)"]
    keep = np.isfinite(y)
    np.testing.assert_array_equal(curve.get_xdata(), x[keep])
    np.testing.assert_array_equal(curve.get_ydata(), y[keep])
    with pytest.raises(ValueError, match="same length"):
        Curve("rho", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="panel"):
        Curve("nope", [1.0], [1.0])


def test_segment_points_follow_the_log_slope():
    seg = Segment("rho", 0.0, 2.0, 10.0, math.log(0.5) / 10.0)
    x, y = seg.points(11)
    np.testing.assert_allclose(y, 2.0 * 0.5 ** (x / 10.0), rtol=1e-14)


def test_zoom_adds_a_close_up_column():
    traj = _traj()
    fig = plot_trajectory(traj, zoom=(1900.0, 2200.0))
    axes = fig.get_axes()
    assert len(axes) == 8
    assert axes[1].get_xlim() == (1900.0, 2200.0)
    with pytest.raises(ValueError, match="zoom"):
        plot_trajectory(traj, zoom=(5.0, 1.0))


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_saves_by_suffix(tmp_path, suffix):
    path = tmp_path / f"fig{suffix}"
    plot_trajectory(_traj(), path=path)
    assert path.read_bytes()[:5].startswith(MAGIC[suffix])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_bad_suffix_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plot_trajectory(_traj(), path=tmp_path / "fig.jpg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_points": 0}, r"^max_points must be a positive integer"),  # was ZeroDivisionError
        ({"max_points": "x"}, r"^max_points must be a positive integer"),
        ({"path": 3}, r"^figure path must be a file name ending in \.png"),
        ({"lines": 3}, r"^lines must be a list of HLine"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_trajectory(_traj(), **kwargs)


def test_failed_save_leaves_no_file(tmp_path):
    class Boom:
        def savefig(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Boom(), tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_long_trajectory_is_thinned_but_keeps_events():
    t = np.arange(200_000)
    rho = np.exp(-1e-4 * (t % 50_000))
    traj = Trajectory(step=t, rho=rho)
    ev = find_events(traj)
    fig = plot_trajectory(traj, events=ev, panels=("rho",), max_points=5000)
    data = fig.get_axes()[0].get_lines()[0]
    assert len(data.get_xdata()) < 10_000
    # the rows at each event are kept, so the drawn minimum is the true trough
    assert min(data.get_ydata()) == pytest.approx(rho.min())


def test_xlog_and_panel_selection():
    traj = _traj()[np.arange(1, 3000)]
    fig = plot_trajectory(traj, panels=("rho", "elr"), xlog=True)
    axes = fig.get_axes()
    assert len(axes) == 2 and axes[-1].get_xscale() == "log"


def test_argument_errors():
    traj = _traj()
    with pytest.raises(ValueError, match="panel"):
        HLine("norm", 1.0)
    with pytest.raises(ValueError, match="panels"):
        plot_trajectory(traj, panels=("loss", "weights"))
    with pytest.raises(ValueError, match="HLine"):
        plot_trajectory(traj, lines=[(1, 2)])
    with pytest.raises(ValueError, match="Trajectory"):
        plot_trajectory({"rho": [1.0]})
