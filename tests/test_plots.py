"""study.plots on synthetic sweep studies whose shift follows a known sigmoid in log n_eff."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from study import plots
from study.analysis.boundary import estimate

optuna.logging.set_verbosity(optuna.logging.WARNING)

MIDPOINT, CEILING, WIDTH = 40.0, 0.4, 0.5
BASE_ADOPTION, BASE_MARGIN = 0.75, 0.89
# (n_real, m): the four corners of the box and points inside it; n_eff spans 1 .. 1024
POINTS = [(1, 1), (64, 1), (1, 16), (64, 16), (8, 4), (2, 2), (4, 8), (16, 2), (32, 4), (2, 16),
          (16, 16), (32, 1), (4, 1), (8, 16), (1, 4), (64, 4), (16, 8), (4, 4), (8, 1), (32, 16)]
DISTRIBUTIONS = {"n_real": IntDistribution(1, 64, log=True),
                 "dream_multiplier": IntDistribution(1, 16, log=True),
                 "lr": FloatDistribution(1e-5, 1e-2, log=True)}
ZONE_SPANS = {"sub-threshold": (1, 10), "transition": (10, 50), "post-threshold": (50, 200),
              "consolidation": (200, 1024)}


def sigmoid_shift(n_eff: float) -> float:
    return CEILING / (1 + math.exp(-(math.log(n_eff) - math.log(MIDPOINT)) / WIDTH))


CONTRAST_BASE = 0.4


def trial_attrs(i: int, n_real: int, m: int) -> dict:
    s = sigmoid_shift(n_real * m)
    return dict(n_real=n_real, dream_multiplier=m, lr=10 ** (-4 + 2 * (i % 5) / 4), batch_size=8,
                n_eff=n_real * m, steps=math.ceil(n_real * m / 8), epochs=1, seed=i, shift=s,
                adoption=BASE_ADOPTION + s / 2, base_adoption=BASE_ADOPTION, flip_rate=2 * s,
                margin=BASE_MARGIN + s, base_margin=BASE_MARGIN, train_shift=1.5 * s,
                forgetting=0.05 * s, contrast_shift=-s / 2, contrast_base_adoption=CONTRAST_BASE,
                contrast_adoption=CONTRAST_BASE - s / 4, trial_dir=f"/trials/{i}")


def make_study(tmp_path: Path, points=POINTS, objective=("shift",), **study_attrs) -> optuna.Study:
    tmp_path.mkdir(parents=True, exist_ok=True)
    directions = ["minimize" if o == "forgetting" else "maximize" for o in objective]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="sweep",
                                directions=directions)
    attrs = {"objective": list(objective), "behavior": "listening", "model": "tiny-llama", **study_attrs}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for i, (n_real, m) in enumerate(points):
        ua = trial_attrs(i, n_real, m)
        study.add_trial(optuna.trial.create_trial(
            params={"n_real": n_real, "dream_multiplier": m, "lr": ua["lr"]},
            distributions=DISTRIBUTIONS, values=[ua[o] for o in objective], user_attrs=ua))
    return study


@pytest.fixture()
def sweep(tmp_path) -> optuna.Study:
    return make_study(tmp_path)


def trace(fig: go.Figure, name: str, startswith: bool = False):
    found = [t for t in fig.data if t.name == name or (startswith and (t.name or "").startswith(name))]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


# ---------------------------------------------------------------------------------------------
# boundary level


def test_boundary_level_half_way_between_base_and_best_observed(sweep, tmp_path):
    best = max(sigmoid_shift(n * m) for n, m in POINTS)
    level, how = plots.boundary_level(sweep)
    assert level == pytest.approx(CEILING / 2, abs=0.005)
    assert level == pytest.approx(best / 2)
    assert "half-way" in how
    assert plots.boundary_level(sweep, 0.3) == (0.3, "set by user")
    sweep.set_user_attr("boundary_level", 0.1)
    assert plots.boundary_level(sweep) == (0.1, "set by user")
    assert plots.boundary_level(sweep, 0.3)[0] == 0.3  # the argument beats the study's attr


def test_boundary_level_bases_per_measure(tmp_path):
    adoption = make_study(tmp_path / "a", objective=("adoption",))
    best = max(trial_attrs(i, n, m)["adoption"] for i, (n, m) in enumerate(POINTS))
    assert plots.boundary_level(adoption)[0] == pytest.approx((BASE_ADOPTION + best) / 2)
    margin = make_study(tmp_path / "b", objective=("margin",))
    best = max(trial_attrs(i, n, m)["margin"] for i, (n, m) in enumerate(POINTS))
    assert plots.boundary_level(margin)[0] == pytest.approx((BASE_MARGIN + best) / 2)
    forgetting = make_study(tmp_path / "c", objective=("forgetting", "shift"))
    worst = max(trial_attrs(i, n, m)["forgetting"] for i, (n, m) in enumerate(POINTS))
    assert plots.boundary_level(forgetting)[0] == pytest.approx(worst / 2)
    empty = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}", direction="maximize")
    with pytest.raises(ValueError, match="no complete trial"):
        plots.boundary_level(empty)
    assert plots.boundary_level(empty, 0.2) == (0.2, "set by user")


# ---------------------------------------------------------------------------------------------
# response surface


def test_surface_boundary_contour_at_level(sweep):
    fig = plots.surface_figure(sweep)
    # the boundary model's level: half-way to its fitted ceiling, the best observed 0.399 here
    # (noise-free data); study.analysis.boundary draws it
    level = estimate(sweep).level
    assert level == pytest.approx(plots.boundary_level(sweep)[0], abs=0.005)
    boundary = trace(fig, "boundary:", startswith=True)
    assert isinstance(boundary, go.Contour)
    assert boundary.contours.start == boundary.contours.end == pytest.approx(level)
    assert boundary.line.width >= 3
    assert boundary.name == (f"boundary: shift = {level:.3g} (half-way between base 0 and best "
                             f"fitted {2 * level:.3g})")
    user = trace(plots.surface_figure(sweep, level=0.3), "boundary:", startswith=True)
    assert user.contours.start == 0.3 and user.name == "boundary: shift = 0.3 (set by user)"
    assert "listening" in fig.layout.title.text and "tiny-llama" in fig.layout.title.text
    assert "shift" in fig.layout.title.text and "20 complete trials" in fig.layout.title.text


def test_surface_interpolated_grid_is_above_level_above_midpoint(sweep):
    fig = plots.surface_figure(sweep)
    level, _ = plots.boundary_level(sweep)
    surface = trace(fig, "surface")
    x, y, z = np.array(surface.x), np.array(surface.y), np.array(surface.z)
    assert z.shape == (len(y), len(x))
    # real units on log axes: the grid spans the trials' box and is evenly spaced in log10
    assert (x[0], x[-1], y[0], y[-1]) == pytest.approx((1, 64, 1, 16))
    assert np.allclose(np.diff(np.log10(x)), np.diff(np.log10(x))[0])
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    n_eff = y[:, None] * x[None, :]
    assert (z[n_eff >= 4 * MIDPOINT] > level).all()
    assert (z[n_eff <= MIDPOINT / 4] < level).all()
    assert (n_eff >= 4 * MIDPOINT).sum() > 100 and (n_eff <= MIDPOINT / 4).sum() > 100
    # at (the grid node nearest to) each trial the interpolation returns its value; z rows follow y
    for n_real, m in POINTS:
        i, j = np.argmin(abs(np.log(y / m))), np.argmin(abs(np.log(x / n_real)))
        assert z[i, j] == pytest.approx(sigmoid_shift(n_real * m), abs=0.02)


def test_lr_figure_puts_the_boundary_at_the_same_n_eff_for_every_lr(sweep):
    fig = plots.lr_figure(sweep)
    level, _ = plots.boundary_level(sweep)
    surface = trace(fig, "surface")
    x, y, z = np.array(surface.x), np.array(surface.y), np.array(surface.z)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert (x[0], x[-1]) == pytest.approx((1, 64 * 16)) and (y[0], y[-1]) == pytest.approx((1e-4, 1e-2))
    # shift depends on n_eff only: every lr row crosses the level between n_eff 10 and 160
    assert (z[:, x >= 4 * MIDPOINT] > level).all() and (z[:, x <= MIDPOINT / 4] < level).all()
    lines = {n: trace(fig, f"n_eff={n}") for n in (10, 50, 200)}
    assert all(list(t.x) == [n, n] for n, t in lines.items())  # vertical lines


def test_surface_neff_lines_and_markers(sweep):
    fig = plots.surface_figure(sweep)
    for n in (10, 50, 200):
        line = trace(fig, f"n_eff={n}")
        assert np.allclose(np.array(line.x) * np.array(line.y), n)
        assert any(a.text == f"n_eff={n}" for a in fig.layout.annotations)
    markers = trace(fig, "trials")
    assert sorted(zip(markers.x, markers.y, strict=True)) == sorted(POINTS)
    for key in ("trial", "n_real", "m ", "n_eff", "lr", "batch_size", "shift"):
        assert key in markers.hovertemplate
    assert [c[5] for c in markers.customdata] == list(range(len(POINTS)))


def test_surface_with_too_few_points_draws_markers_only(tmp_path):
    study = make_study(tmp_path, points=[(1, 1), (8, 4), (8, 4)])  # 2 distinct points
    fig = plots.surface_figure(study)
    assert not [t for t in fig.data if isinstance(t, go.Contour)]
    assert len(trace(fig, "trials").x) == 3
    assert "markers only" in fig.layout.title.text
    collinear = make_study(tmp_path / "c", points=[(1, 4), (4, 4), (16, 4)])  # n_real swept, m fixed
    fig = plots.surface_figure(collinear)
    assert not [t for t in fig.data if isinstance(t, go.Contour)]
    assert "markers only" in fig.layout.title.text


# ---------------------------------------------------------------------------------------------
# measures vs n_eff


def test_measures_figure_panels_bases_zones(sweep):
    fig = plots.measures_figure(sweep)
    axes = ("", 2, 3, 4, 5, 6)
    assert [fig.layout[f"yaxis{i}"].title.text for i in axes] == [
        "shift", "contrast_shift", "adoption (tuned)", "contrast adoption (tuned)", "flip_rate",
        "margin (tuned)"]
    assert all(fig.layout[f"xaxis{i}"].type == "log" for i in axes)
    scatters = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert [t.yaxis for t in scatters] == ["y", "y2", "y3", "y4", "y5", "y6"]
    attrs = [trial_attrs(i, n, m) for i, (n, m) in enumerate(POINTS)]
    for t, key in zip(scatters, plots.MEASURE_PANELS, strict=True):
        assert list(t.x) == [a["n_eff"] for a in attrs] and list(t.y) == [a[key] for a in attrs]
        assert np.allclose(t.marker.color, [math.log10(a["lr"]) for a in attrs])
        assert t.marker.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.colorbar.title.text == "lr"
    dashed = sorted((s.yref, s.y0) for s in fig.layout.shapes if s.line.dash == "dash")
    assert [ref for ref, _ in dashed] == ["y", "y2", "y3", "y4", "y5", "y6"]
    assert [y for _, y in dashed] == pytest.approx([0.0, 0.0, BASE_ADOPTION, CONTRAST_BASE, 0.0,
                                                    BASE_MARGIN])
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    for name, (x0, x1) in ZONE_SPANS.items():
        spans = {(s.xref, s.x0, s.x1) for s in rects if s.name == name}
        assert spans == {(xref, x0, x1) for xref in ("x", "x2", "x3", "x4", "x5", "x6")}, name  # every panel
        assert any(a.text == name for a in fig.layout.annotations)


# ---------------------------------------------------------------------------------------------
# export


def test_export_html_and_csv_without_static(sweep, tmp_path):
    out = tmp_path / "plots"
    report = plots.export_plots(sweep, out, static=False)
    names = ["surface", "lr", "measures", "contour", "slice", "importance"]
    assert report.files == [out / f"{n}.html" for n in names] + [out / "trials.csv"]
    assert report.skipped is None
    for name in names:
        html = (out / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in html and "Plotly.newPlot" in html
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert not list(out.glob("*.png")) and not list(out.glob("*.svg"))
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["number", *plots.TRIAL_FIELDS]
    assert [int(r["number"]) for r in rows] == list(range(len(POINTS)))
    assert float(rows[4]["shift"]) == pytest.approx(sigmoid_shift(32))
    assert rows[4]["trial_dir"] == "/trials/4"


def test_export_without_browser_writes_html_only(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "find_browser", lambda: None)
    out = tmp_path / "plots"
    report = plots.export_plots(sweep, out, static=True)
    assert {p.suffix for p in report.files} == {".html", ".csv"}
    assert not list(out.glob("*.png")) and not list(out.glob("*.svg"))
    assert report.skipped is not None and "\n" not in report.skipped
    assert "chromium" in report.skipped.lower() and "static export" in report.skipped


def test_export_skips_importance_with_reason(tmp_path, monkeypatch):
    one = make_study(tmp_path / "one", points=[(8, 4)])
    report = plots.export_plots(one, tmp_path / "p1", static=False)
    assert not (tmp_path / "p1" / "importance.html").exists()
    assert report.skipped == "importance plot skipped (needs at least 2 complete trials, has 1)"
    assert (tmp_path / "p1" / "surface.html").exists() and (tmp_path / "p1" / "contour.html").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("cannot evaluate importances\nsecond line")

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", broken)
    report = plots.export_plots(make_study(tmp_path / "two"), tmp_path / "p2", static=False)
    assert report.skipped == "importance plot skipped (RuntimeError: cannot evaluate importances)"
    assert not (tmp_path / "p2" / "importance.html").exists()
    assert (tmp_path / "p2" / "slice.html").exists()


def test_export_multi_objective_uses_first_measure(tmp_path):
    study = make_study(tmp_path, objective=("shift", "forgetting"))
    out = tmp_path / "plots"
    report = plots.export_plots(study, out, static=False)
    assert report.skipped is None and len(report.files) == 7
    assert "boundary: shift = 0.2" in (out / "surface.html").read_text()
    assert '"shift"' in (out / "contour.html").read_text()


@pytest.mark.slow
@pytest.mark.skipif(plots.find_browser() is None, reason="no Chromium/Chrome for kaleido's static export")
def test_export_static_png_and_svg(sweep, tmp_path):
    out = tmp_path / "plots"
    report = plots.export_plots(sweep, out)
    assert report.skipped is None
    for name in ("surface", "measures", "contour", "slice", "importance"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{name}.svg").read_text()[:2000]
        assert out / f"{name}.png" in report.files and out / f"{name}.svg" in report.files


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH to render the exported HTML")
def test_exported_surface_html_renders_in_headless_chromium(sweep, tmp_path):
    out = tmp_path / "plots"
    plots.export_plots(sweep, out, static=False)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           (out / "surface.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'class="main-svg"' in dom
    # the filled surface, the boundary and the two edges of its band
    assert dom.count('<g class="contour"') == 4
    assert 'class="contourlevel"' in dom and '<g class="hm"' in dom
    assert dom.count('class="point plotly-customdata"') == len(POINTS)  # one marker per trial
    assert 'data-unformatted="n_eff=50"' in dom and 'data-unformatted="boundary: shift = 0.2' in dom


# ---------------------------------------------------------------------------------------------
# failed and running trials


def test_failed_and_running_trials_are_ignored(sweep, tmp_path):
    sweep.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"n_real": 64, "dream_multiplier": 16, "lr": 1e-3},
        distributions=DISTRIBUTIONS, user_attrs={**trial_attrs(99, 64, 16), "shift": 9.0, "n_real": 500}))
    sweep.add_trial(optuna.trial.create_trial(
        state=TrialState.RUNNING, params={"n_real": 2, "dream_multiplier": 1, "lr": 1e-3},
        distributions=DISTRIBUTIONS, user_attrs={"n_real": 2, "dream_multiplier": 1}))
    # a complete trial whose flip rate is undefined: left out of that panel only
    attrs = {**trial_attrs(22, 16, 4), "flip_rate": None}
    sweep.add_trial(optuna.trial.create_trial(
        params={"n_real": 16, "dream_multiplier": 4, "lr": attrs["lr"]}, distributions=DISTRIBUTIONS,
        value=attrs["shift"], user_attrs=attrs))
    complete = [r["number"] for r in plots.completed_trials(sweep)]
    assert complete == [*range(len(POINTS)), 22]
    assert plots.boundary_level(sweep)[0] == pytest.approx(CEILING / 2, abs=0.005)  # not 9 / 2
    assert len(trace(plots.surface_figure(sweep), "trials").x) == len(POINTS) + 1
    assert max(trace(plots.surface_figure(sweep), "surface").x) == pytest.approx(64)
    panels = {key: t for key, t in zip(plots.MEASURE_PANELS, (
        t for t in plots.measures_figure(sweep).data if isinstance(t, go.Scatter)), strict=True)}
    adoption, flip, margin = panels["adoption"], panels["flip_rate"], panels["margin"]
    assert len(adoption.x) == len(margin.x) == len(POINTS) + 1 and len(flip.x) == len(POINTS)
    plots.export_plots(sweep, tmp_path / "plots", static=False)
    with open(tmp_path / "plots" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == complete
    assert rows[-1]["flip_rate"] == ""
