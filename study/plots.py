"""Figures of a sweep study: the response surface with its boundary, the measures vs n_eff, and exports.

Everything here reads an :class:`optuna.Study` (see :func:`completed_trials` for what is read) and
never writes to it. The public entry points:

- :func:`boundary_level`: the level of the first objective at which the boundary is drawn;
- :func:`surface_figure`: the first objective over (n_real, dream_multiplier), log-log, with the
  boundary and the n_eff = 10/50/200 lines;
- :func:`measures_figure`: adoption, flip rate and mean margin vs n_eff with the hypothesis zones;
- :func:`export_plots`: writes those two, Optuna's contour/slice/importance plots (HTML, and PNG +
  SVG where a Chromium is available) and ``trials.csv`` to a folder.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from objectives.measures import BY_NAME as MEASURE_INFO
from objectives.measures import MINIMIZED
from objectives.measures import NAMES as MEASURE_NAMES

#: The per-trial user attributes a sweep records (the columns of ``trials.csv`` after "number").
TRIAL_FIELDS = ("n_real", "dream_multiplier", "lr", "batch_size", "epochs", "seed", "dream_strategy",
                "train_on", *(n for n in MEASURE_NAMES), "trial_dir")

#: The hypothesis zones (science.md): name, lower and upper n_eff (None: unbounded).
ZONES = (("sub-threshold", 0.0, 10.0), ("transition", 10.0, 50.0), ("post-threshold", 50.0, 200.0),
         ("consolidation", 200.0, None))
ZONE_COLORS = ("#9e9e9e", "#ffb74d", "#64b5f6", "#81c784")
NEFF_LINES = (10, 50, 200)
GRID_POINTS = 80
STATIC_WIDTH, STATIC_HEIGHT = 1000, 650  # static export size in px; a figure's own layout height wins
NO_BROWSER = ("static export (PNG, SVG) skipped: no Chromium/Chrome found; install Debian's chromium "
              "(make install does where apt is available)")


@dataclass
class ExportReport:
    """What :func:`export_plots` wrote, and (one line) what it did not write and why."""

    files: list[Path] = field(default_factory=list)
    skipped: str | None = None


# ---------------------------------------------------------------------------------------------
# Data


def objective_names(study: optuna.Study) -> list[str]:
    """The measure names of the study's values, in order (user attr "objective", else Optuna's)."""
    names = study.user_attrs.get("objective")
    if isinstance(names, str):
        names = [names]
    if not names:
        names = study.metric_names or ["value"] * len(study.directions)
    return [str(n) for n in names]


def completed_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per COMPLETE trial: "number", "value" (the first objective), "values", the user attrs.

    FAIL, PRUNED, RUNNING and WAITING trials are left out. Every figure and the CSV read this.
    """
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row: dict[str, Any] = dict(trial.user_attrs)
        values = list(trial.values or [])
        row["number"] = trial.number
        row["values"] = values
        row["value"] = values[0] if values else None
        if row.get("n_eff") is None and _num(row.get("n_real")) and _num(row.get("dream_multiplier")):
            row["n_eff"] = row["n_real"] * row["dream_multiplier"]
        rows.append(row)
    return rows


def behavior_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """The complete trials that trained on the behavior (``train_on`` chosen, or unset): the
    response surface and its boundary; the controls (placebo, rejected) are drawn beside
    them in :func:`measures_figure`, never averaged into them."""
    return [r for r in completed_trials(study) if r.get("train_on") in (None, "chosen")]


def _num(value: Any) -> bool:
    """True for a finite real number (not None, not NaN, not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if _num(r.get(key))]
    return float(np.mean(values)) if values else None


def _base_value(measure: str, rows: list[dict[str, Any]]) -> float:
    """The base model's value of a measure: the mean of its base measure (base_adoption for
    adoption, ...), else 0 (shift-like measures are differences from the base model)."""
    info = MEASURE_INFO.get(measure)
    base_key = info.base if info else None
    base = _mean(rows, base_key) if base_key else None
    return base if base is not None else 0.0


# ---------------------------------------------------------------------------------------------
# Boundary level


def boundary_level(study: optuna.Study, level: float | None = None,
                   fitted: list[float] | None = None) -> tuple[float, str]:
    """The level of the first objective at which to draw the boundary, and how it was chosen.

    A ``level`` argument wins, then the study's user attr "boundary_level" ("set by user").
    Otherwise half-way between the base model's value (the mean of the measure's ``base`` measure
    in the registry, e.g. base_adoption for adoption; 0 for differences such as shift) and the
    ceiling, the best observed value over the complete trials on the behavior (train_on chosen;
    for forgetting, a minimized measure: base 0 and the largest observed value). With
    ``fitted`` (a model's mean at the observed points, :mod:`study.analysis.boundary`) the
    ceiling is the best fitted value instead: the best noisy observation overshoots.
    Raises ValueError when no level is set and there is no complete trial to take a ceiling from.
    """
    if level is None:
        level = study.user_attrs.get("boundary_level")
    if level is not None:
        return float(level), "set by user"
    measure = objective_names(study)[0]
    rows = behavior_trials(study)
    values = [float(r["value"]) for r in rows if _num(r["value"])]
    if not values:
        raise ValueError(f"no complete trial with a value of {measure!r} to take a ceiling from; "
                         "set a boundary level")
    base = _base_value(measure, rows)
    seen = "observed"
    if fitted:
        values, seen = [float(v) for v in fitted], "fitted"
    if measure in MINIMIZED:
        base, ceiling, best = 0.0, max(values), "largest"
    elif study.directions[0] == optuna.study.StudyDirection.MINIMIZE:
        ceiling, best = min(values), "best"
    else:
        ceiling, best = max(values), "best"
    return (base + ceiling) / 2, f"half-way between base {base:.3g} and {best} {seen} {ceiling:.3g}"


# ---------------------------------------------------------------------------------------------
# Response surface


def _title(study: optuna.Study, what: str, n: int) -> str:
    behavior = study.user_attrs.get("behavior") or study.study_name
    model = study.user_attrs.get("model") or "?"
    return f"{behavior} on {model}: {what} ({n} complete trial{'s' if n != 1 else ''})"


def _log_range(values: np.ndarray, pad: float = 0.04) -> tuple[float, float]:
    """A log10 axis range around positive values, padded; a single value gets a factor-2 window."""
    lo, hi = float(np.log10(values.min())), float(np.log10(values.max()))
    if hi - lo < 1e-9:
        return lo - 0.3, hi + 0.3
    span = hi - lo
    return lo - pad * span, hi + pad * span


def _interpolate(lx: np.ndarray, ly: np.ndarray, z: np.ndarray, gx: np.ndarray, gy: np.ndarray
                 ) -> np.ndarray | None:
    """Linear interpolation on the grid (log coordinates), nearest-neighbour outside the hull.

    Values at duplicate points (e.g. repeated seeds) are averaged first. None when fewer than 3
    distinct points, or when they are collinear (no triangle to interpolate over).
    """
    from scipy.interpolate import griddata

    points: dict[tuple[float, float], list[float]] = {}
    for x, y, v in zip(lx, ly, z, strict=True):
        points.setdefault((round(float(x), 9), round(float(y), 9)), []).append(float(v))
    if len(points) < 3:
        return None
    xy = np.array(list(points))
    vals = np.array([np.mean(v) for v in points.values()])
    GX, GY = np.meshgrid(gx, gy)  # rows: y, columns: x (plotly's z layout)
    try:
        zi = griddata(xy, vals, (GX, GY), method="linear")
    except Exception:  # scipy's QhullError: all points on a line
        return None
    near = griddata(xy, vals, (GX, GY), method="nearest")
    return np.where(np.isnan(zi), near, zi)


def surface_figure(study: optuna.Study, level: float | None = None) -> go.Figure:
    """The first objective over (n_real, dream_multiplier), both axes log.

    The complete trials' values are interpolated linearly in (log10 n_real, log10 m) and drawn as a
    filled contour (trace "surface", x/y in real units on log axes); the boundary (trace
    "boundary") is a bold contour line of the GP model of :mod:`study.analysis.boundary` (the
    same model ``sampler: boundary`` and ``stop_when`` use; its mean averaged over the
    dimensions not drawn) at its level, with its 95% band as two dotted lines (trace "95% band
    ...", naming the share of the space still undecided); where no model can be fitted, the
    interpolated surface's contour at :func:`boundary_level`. Trials are markers (trace "trials"); the lines
    n_eff = 10, 50, 200 (m = n_eff / n_real) are traces named "n_eff=10" etc. With fewer than 3
    distinct (or only collinear) points, only the markers are drawn and the title says so.
    """
    return _surface_over(study, ("n_real", "real examples (n_real)"),
                         ("dream_multiplier", "dream multiplier (m)"), "real examples × dream multiplier",
                         level, diagonal_neff=True)


def lr_figure(study: optuna.Study, level: float | None = None) -> go.Figure:
    """The first objective over (n_eff, learning rate), both axes log (science.md figure 5):
    does the boundary follow n_eff × lr ≈ constant? The n_eff = 10, 50, 200 lines are vertical."""
    return _surface_over(study, ("n_eff", "effective examples (n_eff = n_real × m)"),
                         ("lr", "learning rate"), "effective examples × learning rate", level,
                         diagonal_neff=False)


def _boundary_estimate(study: optuna.Study, level: float | None) -> Any:
    """The study's boundary model (:func:`study.analysis.boundary.estimate`), or None when it
    cannot be fitted; a plot is drawn either way."""
    from study.analysis.boundary import estimate

    try:
        return estimate(study, level)
    except Exception as err:  # e.g. a degenerate design the GP cannot factor
        warnings.warn(f"boundary model not fitted ({type(err).__name__}: {err}); "
                      "drawing the interpolated boundary", stacklevel=2)
        return None


def _surface_over(study: optuna.Study, x_axis: tuple[str, str], y_axis: tuple[str, str],
                  what: str, level: float | None, diagonal_neff: bool) -> go.Figure:
    """A response surface of the first objective over two positive settings, both axes log."""
    (x_key, x_title), (y_key, y_title) = x_axis, y_axis
    measure = objective_names(study)[0]
    rows = [r for r in behavior_trials(study)
            if _num(r.get(x_key)) and _num(r.get(y_key)) and _num(r["value"])
            and r[x_key] > 0 and r[y_key] > 0]
    x = np.array([float(r[x_key]) for r in rows])
    y = np.array([float(r[y_key]) for r in rows])
    z = np.array([float(r["value"]) for r in rows])
    fig = go.Figure()
    title = _title(study, f"{measure} over {what}", len(rows))
    if not rows:
        fig.update_layout(title=title + " — nothing to draw")
        return fig

    xr, yr = _log_range(x), _log_range(y)
    gx, gy = np.linspace(*_log_range(x, 0), GRID_POINTS), np.linspace(*_log_range(y, 0), GRID_POINTS)
    grid = _interpolate(np.log10(x), np.log10(y), z, gx, gy)
    if grid is None:
        title += " — too few distinct points to interpolate (need 3 not on a line); markers only"
    else:
        gxs, gys = (10 ** gx).tolist(), (10 ** gy).tolist()
        fig.add_trace(go.Contour(
            x=gxs, y=gys, z=grid.tolist(), name="surface", colorscale="Viridis",
            reversescale=measure in MINIMIZED, ncontours=16, contours=dict(coloring="heatmap"),
            line=dict(width=0.5, color="rgba(255,255,255,0.35)"),
            colorbar=dict(title=dict(text=measure)),
            hovertemplate=(f"{x_key} %{{x:.3g}}<br>{y_key} %{{y:.3g}}<br>" + measure
                           + " %{z:.3g}<extra>interpolated</extra>")))
        found = _boundary_estimate(study, level)
        plane = found.plane(x_key, y_key, gx, gy) if found is not None else None
        if plane is not None:  # the model's boundary, as the sampler and the stop rule see it
            mean, sd = plane
            value, how, z_line = found.level, found.how, mean
        else:  # no model (a dimension of the plane is not swept): the interpolated surface
            (value, how), z_line = boundary_level(study, level), grid
        label = f"boundary: {measure} = {value:.3g} ({how})"
        if not z_line.min() < value < z_line.max():
            label += " — not crossed in the swept range"
        fig.add_trace(go.Contour(
            x=gxs, y=gys, z=z_line.tolist(), name=label, showlegend=True, showscale=False,
            autocontour=False, contours=dict(start=value, end=value, size=1.0, coloring="none"),
            line=dict(width=4, color="#d62728"), hoverinfo="skip"))
        if plane is not None:
            from study.analysis.boundary import BAND_Z

            band = (f"95% band of the boundary: {found.undecided:.0%} of the space undecided "
                    f"(GP over {found.n_trials} trials)")
            for k, edge in enumerate((mean - BAND_Z * sd, mean + BAND_Z * sd)):
                fig.add_trace(go.Contour(
                    x=gxs, y=gys, z=edge.tolist(), name=band, legendgroup="band",
                    showlegend=k == 0, showscale=False, autocontour=False,
                    contours=dict(start=value, end=value, size=1.0, coloring="none"),
                    line=dict(width=2, color="#d62728", dash="dot"), hoverinfo="skip"))

    x_lo, x_hi = 10 ** xr[0], 10 ** xr[1]
    for n in NEFF_LINES:
        if diagonal_neff:  # m = n_eff / n_real over the whole x range (clipped by the axes)
            xs = [x_lo, x_hi]
            ys = [n / v for v in xs]
            lo = max(xr[0], math.log10(n) - yr[1])
            hi = min(xr[1], math.log10(n) - yr[0])
            mid = (lo + hi) / 2 if lo < hi else None
            at = (mid, math.log10(n) - mid) if mid is not None else None
        else:  # a vertical line at n_eff = n
            xs, ys = [n, n], [10 ** yr[0], 10 ** yr[1]]
            at = (math.log10(n), yr[1] - 0.06 * (yr[1] - yr[0])) if xr[0] < math.log10(n) < xr[1] \
                else None
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"n_eff={n}",
                                 line=dict(color="white", width=2, dash="dash"), hoverinfo="name"))
        if at is not None:
            fig.add_annotation(x=at[0], y=at[1], text=f"n_eff={n}", showarrow=False,
                               font=dict(color="white", size=12), bgcolor="rgba(0,0,0,0.45)")

    custom = [[r.get("n_real"), r.get("dream_multiplier"), r.get("n_eff"), r.get("lr"),
               r.get("batch_size"), r["number"]] for r in rows]
    fig.add_trace(go.Scatter(
        x=x.tolist(), y=y.tolist(), mode="markers", name="trials", customdata=custom,
        marker=dict(size=9, color="white", line=dict(color="black", width=1.5)),
        hovertemplate=("trial %{customdata[5]}<br>n_real %{customdata[0]}<br>m %{customdata[1]}"
                       "<br>n_eff %{customdata[2]}<br>lr %{customdata[3]:.3g}<br>batch_size "
                       "%{customdata[4]}<br>" + measure + " %{text}<extra></extra>"),
        text=[f"{v:.4g}" for v in z]))
    fig.update_xaxes(type="log", range=list(xr), title_text=x_title)
    fig.update_yaxes(type="log", range=list(yr), title_text=y_title)
    fig.update_layout(title=title, legend=dict(orientation="h", y=-0.18), height=720, margin=dict(b=140))
    return fig


# ---------------------------------------------------------------------------------------------
# Measures vs n_eff


#: The panels of :func:`measures_figure`: each effect beside its contrast-probe counterpart, the
#: thresholded rates beside the continuous margin (Schaeffer et al. 2023).
MEASURE_PANELS = ("shift", "contrast_shift", "adoption", "contrast_adoption", "flip_rate", "margin")
#: Marker symbols of the controls (train_on): the behavior, the placebo, the old behavior.
TRAIN_ON_SYMBOLS = {"chosen": "circle", "placebo": "square", "rejected": "triangle-down"}


def measures_figure(study: optuna.Study) -> go.Figure:
    """The measures of :data:`MEASURE_PANELS` vs n_eff (log axis), one panel each, sharing x.

    Markers are coloured by log10(lr) (one colorbar, "lr"); a dashed line marks the base value
    (the mean of the measure's base measure, else 0); the hypothesis zones are shaded across all panels
    over the data's n_eff range and labelled above the top panel. Trials with a missing value
    (e.g. an undefined flip_rate) are left out of that panel only.
    """
    rows = [r for r in completed_trials(study) if _num(r.get("n_eff")) and r["n_eff"] > 0]
    fig = make_subplots(rows=len(MEASURE_PANELS), cols=1, shared_xaxes=True, vertical_spacing=0.03)
    lrs = [math.log10(r["lr"]) for r in rows if _num(r.get("lr")) and r["lr"] > 0]
    for i, key in enumerate(MEASURE_PANELS, start=1):
        label, base_key = MEASURE_INFO[key].label, MEASURE_INFO[key].base
        pts = [r for r in rows if _num(r.get(key))]
        colors = [math.log10(r["lr"]) if _num(r.get("lr")) and r["lr"] > 0 else None for r in pts]
        fig.add_trace(go.Scatter(
            x=[r["n_eff"] for r in pts], y=[r[key] for r in pts], mode="markers", name=label,
            showlegend=False,
            customdata=[[r["number"], r.get("lr"), r.get("train_on") or "chosen"] for r in pts],
            marker=dict(size=8, color=colors, coloraxis="coloraxis", line=dict(width=0.5, color="black"),
                        symbol=[TRAIN_ON_SYMBOLS.get(r.get("train_on") or "chosen", "circle")
                                for r in pts]),
            hovertemplate=("trial %{customdata[0]} (train_on %{customdata[2]})<br>n_eff %{x}<br>"
                           "lr %{customdata[1]:.3g}<br>" + label + " %{y:.3g}<extra></extra>")),
            row=i, col=1)
        base = _mean(rows, base_key) if base_key else 0.0
        if base is not None:
            fig.add_hline(y=base, line=dict(dash="dash", color="black", width=1.5), row=i, col=1,
                          annotation_text=f"base {base:.3g}", annotation_position="bottom right")
        fig.update_yaxes(title_text=label, row=i, col=1)

    if rows:
        lo, hi = min(r["n_eff"] for r in rows), max(r["n_eff"] for r in rows)
        for (name, z0, z1), color in zip(ZONES, ZONE_COLORS, strict=True):
            x0, x1 = max(z0, lo), hi if z1 is None else min(z1, hi)
            if x0 >= x1:
                continue
            fig.add_vrect(x0=x0, x1=x1, row="all", col=1, fillcolor=color, opacity=0.18,
                          layer="below", line_width=0, name=name)
            # annotations on log axes take log10 positions; shapes take data units
            fig.add_annotation(x=(math.log10(x0) + math.log10(x1)) / 2, xref="x", y=1.0,
                               yref="paper", yanchor="bottom", text=name, showarrow=False,
                               font=dict(size=11), name=f"zone {name}")
    if lrs:
        cmin, cmax = min(lrs), max(lrs) if max(lrs) > min(lrs) else min(lrs) + 1
        ticks = [(math.log10(k) + d, f"{k}e{d}") for d in range(math.floor(cmin), math.ceil(cmax) + 1)
                 for k in (1, 2, 5) if cmin - 1e-9 <= math.log10(k) + d <= cmax + 1e-9]
        fig.update_layout(coloraxis=dict(
            colorscale="Plasma", cmin=cmin, cmax=cmax,
            colorbar=dict(title=dict(text="lr"), tickvals=[t for t, _ in ticks],
                          ticktext=[text for _, text in ticks])))
    else:
        fig.update_layout(coloraxis=dict(colorscale="Plasma", colorbar=dict(title=dict(text="lr"))))
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="effective examples (n_eff = n_real × m)", row=len(MEASURE_PANELS), col=1)
    fig.update_layout(title=dict(text=_title(study, "measures vs effective examples", len(rows)), y=0.98),
                      height=1500, margin=dict(t=110))
    return fig


# ---------------------------------------------------------------------------------------------
# Export


def find_browser() -> str | None:
    """The Chromium/Chrome kaleido would use for static export, or None when there is none."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).is_file() else None
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
        if path:
            return str(path)
    except Exception:  # choreographer missing or changed: fall back to PATH
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    """One row per complete trial: "number" and :data:`TRIAL_FIELDS` (empty where missing)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", *TRIAL_FIELDS])
        for row in completed_trials(study):
            writer.writerow([row["number"], *("" if row.get(k) is None else row[k] for k in TRIAL_FIELDS)])
    return path


def _no_importance(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed (Optuna 5 then draws an empty plot), or None."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(trials) < 2:
        return f"needs at least 2 complete trials, has {len(trials)}"
    names = {name for t in trials for name in t.params}
    if not any(len({repr(t.params.get(name)) for t in trials}) > 1 for name in names):
        return "no swept parameter varies across the complete trials"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error.args[0] if error.args else error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def export_plots(study: optuna.Study, out_dir: Path, level: float | None = None,
                 static: bool = True) -> ExportReport:
    """Write the study's figures and ``trials.csv`` to ``out_dir``.

    HTML: surface, measures, and Optuna's contour, slice and importance plots of the first
    objective, all sharing one ``plotly.min.js`` in the folder (works offline). With ``static``,
    PNG and SVG of each figure too, through kaleido in one browser session; without a browser no
    static file is written. ``skipped`` is one line naming what was not written and why (a plot
    Optuna could not draw, the static export), or None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport()
    reasons: list[str] = []
    measure = objective_names(study)[0]

    minimize = study.directions[0] == optuna.study.StudyDirection.MINIMIZE

    def target(t: optuna.trial.FrozenTrial) -> float:
        return t.values[0]

    def low_is_good(t: optuna.trial.FrozenTrial) -> float:
        """PED-ANOVA (the importance default) ranks params by what reaches low target values."""
        return t.values[0] if minimize else -t.values[0]

    figures: dict[str, go.Figure] = {"surface": surface_figure(study, level),
                                     "lr": lr_figure(study, level),
                                     "measures": measures_figure(study)}
    optuna_plots = (("contour", optuna.visualization.plot_contour),
                    ("slice", optuna.visualization.plot_slice),
                    ("importance", optuna.visualization.plot_param_importances))
    for name, plot in optuna_plots:
        if name == "importance" and (why := _no_importance(study)):
            reasons.append(f"importance plot skipped ({why})")
            continue
        try:
            with warnings.catch_warnings():  # PED-ANOVA warns whenever a target is given
                warnings.filterwarnings("ignore", message=".*computes the importances of params")
                figures[name] = plot(study, target=low_is_good if name == "importance" else target,
                                     target_name=measure)
        except Exception as e:  # e.g. importance with < 2 trials or no swept param with spread
            reasons.append(f"{name} plot skipped ({_first_line(e)})")

    for name, fig in figures.items():
        path = out_dir / f"{name}.html"
        fig.write_html(path, include_plotlyjs="directory")
        report.files.append(path)
    report.files.append(write_trials_csv(study, out_dir / "trials.csv"))

    if static:
        static_paths = [out_dir / f"{name}.{ext}" for name in figures for ext in ("png", "svg")]
        if find_browser() is None:
            reasons.append(NO_BROWSER)
        else:
            import plotly.io as pio

            try:
                figs = [figures[p.stem] for p in static_paths]
                pio.write_images(figs, static_paths, width=STATIC_WIDTH,
                                 height=[f.layout.height or STATIC_HEIGHT for f in figs])
                report.files.extend(static_paths)
            except Exception as e:  # kaleido/choreographer: browser missing, failed to start, timed out
                for p in static_paths:
                    p.unlink(missing_ok=True)
                reasons.append("static export (PNG, SVG) skipped: Chromium/Chrome failed "
                               f"({_first_line(e)}); install Debian's chromium (make install does "
                               "where apt is available)")
    report.skipped = "; ".join(reasons) or None
    return report
