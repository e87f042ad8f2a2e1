"""The report of a study: verdicts with intervals, from the Optuna storage alone.

:func:`analyze` reads a study through the data contract (``study.analysis.data``) and returns
``summary`` (every fitted number with its interval, JSON-ready) and the figures;
:func:`write_report` writes ``report.html`` (self-contained: plotly.js inlined once),
every figure as PNG and SVG beside it where a Chromium is installed, and ``summary.json``;
:func:`to_dashboard` puts the summary and the figures on the study's optuna-dashboard page.

What is fitted, on the trials that trained on the behavior (``train_on`` chosen):

- the threshold: adoption (binomial) and shift (Gaussian) against n_eff, psychometric vs a
  saturating power law, linear-in-log and a broken power law by AIC/BIC; the psychometric
  bootstrapped over probes and seeds (90% intervals); per learning-rate band when the study
  has several learning rates (the band with the most trials gives the verdict);
- the metric-artifact check (margin distributions per n_eff level, Hartigan's dip, the flip
  rate a smooth shift would give);
- what a dream is worth (the exchange rate gamma per strategy), where the study has m = 1 and
  m > 1 trials;
- n50 against lr (slope, tested against -1 and against a steps x lr collapse), where the study
  has several learning rates;
- which variable the change follows (n_eff, steps, steps x lr);
- shift net of the placebo, where the study has placebo trials;
- forgetting against shift, and the seed-to-seed variance of adoption against n_eff;
- the in-context baseline, from an ICL study (``shiftsweep icl``) in the same storage.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from objectives.errors import UserError
from objectives.records import plain, write_json
from study.analysis import artifact, fits
from study.analysis.data import StudyData, Trial, load_study_data

ZONES = (("sub-threshold", 1.0, 10.0), ("transition", 10.0, 50.0), ("post-threshold", 50.0, 200.0),
         ("consolidation", 200.0, None))
ZONE_COLORS = ("#9e9e9e", "#ffb74d", "#64b5f6", "#81c784")
MIN_BAND_TRIALS = 8  # a learning-rate band with fewer trials is not fitted on its own


@dataclass
class Analysis:
    summary: dict[str, Any]
    figures: dict[str, go.Figure] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """JSON-ready (:func:`objectives.records.plain`), with Fit objects as dicts and bootstrap
    samples dropped."""
    if isinstance(value, fits.Fit):
        return _plain(value.as_dict())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k != "samples"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return plain(value)


def _progress(label: str) -> Callable[[int, int], None]:
    def show(i: int, n: int) -> None:
        if i == n or i % max(1, n // 10) == 0:
            print(f"\rshiftsweep: bootstrap {label}: {i}/{n}", end="\n" if i == n else "",
                  file=sys.stderr, flush=True)
    return show


def _lr_bands(trials: list[Trial]) -> list[list[Trial]]:
    """Trials grouped by learning rate: one band per distinct lr when there are few, else
    log-lr bands half a decade wide."""
    lrs = sorted({t.lr for t in trials})
    if len(lrs) <= 4:
        return [[t for t in trials if t.lr == lr] for lr in lrs]
    edges = np.arange(math.floor(math.log10(lrs[0]) * 2) / 2, math.log10(lrs[-1]) + 0.5, 0.5)
    bands = []
    for lo in edges:
        band = [t for t in trials if lo <= math.log10(t.lr) < lo + 0.5]
        if band:
            bands.append(band)
    return bands


def _band_name(band: list[Trial]) -> str:
    lo, hi = min(t.lr for t in band), max(t.lr for t in band)
    return f"lr {lo:.2g}" if lo == hi else f"lr {lo:.2g}-{hi:.2g}"


def _threshold(data: StudyData, trials: list[Trial], n_boot: int, seed: int, label: str
               ) -> dict[str, Any]:
    """Every model on adoption and shift vs n_eff, the psychometric bootstrapped, the
    metric-artifact check, the verdict and the zone boundaries against the hypothesis."""
    x = fits.dose_of(trials, "n_eff")
    k = np.asarray([data.adopted(t) for t in trials], float)
    n = np.full(len(trials), float(len(data.probe_ids)))
    y = np.asarray([t.shift for t in trials], float)
    out: dict[str, Any] = {"trials": [t.number for t in trials], "n_trials": len(trials),
                           "n_levels": len(set(x.tolist()))}
    adoption_fits = fits.fit_all("binomial", x, k, n)
    shift_fits = fits.fit_all("gaussian", x, y)
    out["adoption_models"] = fits.compare(adoption_fits)
    out["shift_models"] = fits.compare(shift_fits)
    boot_a = fits.bootstrap(data, trials, "adoption", "n_eff", "psychometric", n_boot, seed,
                            _progress(f"{label} adoption"))
    boot_s = fits.bootstrap(data, trials, "shift", "n_eff", "psychometric", n_boot, seed,
                            _progress(f"{label} shift"))
    check = artifact.check_metric_artifact(data, trials)
    label_a, rule_a = fits.verdict(adoption_fits, boot_a, artifact=bool(check["artifact"]))
    label_s, rule_s = fits.verdict(shift_fits, boot_s)
    out.update(adoption=boot_a, shift=boot_s, artifact=check,
               verdict={"adoption": {"label": label_a, "rule": rule_a},
                        "shift": {"label": label_s, "rule": rule_s}},
               against_hypothesis=fits.against_hypothesis(boot_a))
    return out


def analyze(study: Any, n_boot: int = 200, seed: int = 0, icl_study: Any | None = None
            ) -> Analysis:
    """Fit everything the study's trials allow; a part its trials cannot support is recorded
    with the reason (``skipped``) rather than guessed."""
    data = load_study_data(study)
    chosen = data.select(train_on="chosen")
    if not chosen:
        raise UserError(f"study {data.name!r}: no complete trial trained on the behavior "
                        f"(train_on chosen) to analyze")
    summary: dict[str, Any] = {
        "study": data.name, "behavior": data.attrs.get("behavior"), "model": data.attrs.get("model"),
        "n_probes": len(data.probe_ids), "n_trials": len(data.trials),
        "n_chosen": len(chosen), "seeds": sorted({t.seed for t in data.trials}),
        "trials": [t.number for t in data.trials],
        "base_adoption": float((data.base_margins > 0).mean()),
        "base_margin": float(data.base_margins.mean()),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": fits.LEVEL,
                      "resamples": "probes, and seeds within each point"},
        "skipped": {},
    }
    figures: dict[str, go.Figure] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except UserError as err:
            summary["skipped"][name] = str(err)
            return None

    # The threshold: on the main dream strategy's trials (and every m = 1 trial), since n_eff
    # counts a variation of another strategy differently (that is gamma's question); on the
    # whole set when lr is one value, else per band.
    counts = Counter(t.dream_strategy for t in chosen if t.dream_multiplier > 1)
    main_strategy = counts.most_common(1)[0][0] if counts else None
    on_curve = [t for t in chosen if t.dream_multiplier == 1 or t.dream_strategy == main_strategy]
    summary["threshold_trials"] = {"dream_strategy": main_strategy,
                                   "left_out": [t.number for t in chosen if t not in on_curve]}
    bands = [b for b in _lr_bands(on_curve) if len(b) >= MIN_BAND_TRIALS]
    groups = {"all trials": on_curve} if len({t.lr for t in on_curve}) == 1 else \
        {_band_name(b): b for b in bands}
    thresholds = {}
    for name, trials in groups.items():
        result = attempt(f"threshold ({name})", lambda t=trials, nm=name: _threshold(
            data, t, n_boot, seed, nm))
        if result is not None:
            thresholds[name] = result
    if not thresholds:
        sizes = ", ".join(f"{_band_name(b)}: {len(b)}" for b in _lr_bands(on_curve))
        summary["verdict"] = {"label": "inconclusive",
                              "rule": f"no learning-rate band has {MIN_BAND_TRIALS} or more "
                                      f"trials to fit a threshold on (bands: {sizes})"}
    else:
        main = max(thresholds, key=lambda nm: thresholds[nm]["n_trials"])
        summary["verdict"] = {"from": main, **thresholds[main]["verdict"]["adoption"],
                              "shift": thresholds[main]["verdict"]["shift"]}
    summary["threshold"] = thresholds

    if len({t.lr for t in chosen}) == 1:
        summary["exchange"] = attempt("exchange rate", lambda: fits.fit_exchange_rate(
            data, chosen, n_boot, seed, _progress("exchange rate")))
    else:  # one shared curve across learning rates would confound gamma with lr
        summary["exchange"] = None
        summary["skipped"]["exchange rate"] = ("needs trials at one learning rate "
                                               "(search_spaces/listening-exchange.yaml)")
    if len(on_curve) < MIN_BAND_TRIALS:
        summary["lr"] = summary["collapse"] = None
        for part in ("lr slope", "collapse"):
            summary["skipped"][part] = f"needs {MIN_BAND_TRIALS} or more trials, has {len(on_curve)}"
    else:
        if len({t.lr for t in on_curve}) >= 2:
            summary["lr"] = attempt("lr slope", lambda: fits.fit_lr_slope(
                data, on_curve, n_boot, seed, _progress("lr slope")))
        else:
            summary["skipped"]["lr slope"] = "the study has one learning rate"
        summary["collapse"] = attempt("collapse", lambda: fits.collapse(data, on_curve))
    summary["placebo"] = attempt("net of placebo", lambda: _net_of_placebo(data, chosen, n_boot,
                                                                            seed))
    summary["controls"] = _controls(data)
    summary["susceptibility"] = _susceptibility(data, chosen)
    summary["icl"] = attempt("icl", lambda: _icl(icl_study)) if icl_study is not None else None
    if icl_study is None:
        summary["skipped"]["icl"] = ("no in-context study in this storage (run `make icl`, or "
                                     "`shiftsweep analyze --icl-study NAME`)")

    summary = _plain(summary)  # the figures draw what summary.json says
    thresholds = summary["threshold"]
    figures["threshold"] = threshold_figure(data, on_curve, thresholds)
    for name, result in thresholds.items():
        figures[f"margins ({name})"] = artifact.ridge_figure(result["artifact"]["levels"])
        figures[f"flips ({name})"] = artifact.flip_figure(result["artifact"])
        break  # the largest band's distributions; the others are in summary.json
    if summary["exchange"]:
        figures["exchange"] = exchange_figure(data, chosen, summary["exchange"])
    if summary.get("lr"):
        figures["lr"] = lr_figure(data, on_curve, summary["lr"])
    if summary["collapse"]:
        figures["collapse"] = collapse_figure(data, on_curve, summary["collapse"])
    figures["controls"] = controls_figure(data, summary["placebo"])
    figures["pareto"] = pareto_figure(data)
    figures["susceptibility"] = susceptibility_figure(summary["susceptibility"])
    if summary.get("icl"):
        figures["icl"] = icl_figure(data, chosen, summary["icl"])
    return Analysis(summary=summary, figures=figures)


def _net_of_placebo(data: StudyData, chosen: list[Trial], n_boot: int, seed: int) -> dict:
    net = fits.net_of_placebo(data, chosen)
    boot = fits.bootstrap(data, chosen, "net_shift", "n_eff", "psychometric", n_boot, seed,
                          _progress("net of placebo"))
    return {"placebo_fit": net["placebo_fit"], "n_placebo": net["n_placebo"],
            "net": dict(zip(map(str, net["trial_numbers"]), net["net"].tolist(), strict=True)),
            "net_fit": boot,
            "used": "the threshold fits above use the shift as measured; this is the same fit "
                    "on shift net of the placebo's line"}


def _controls(data: StudyData) -> list[dict[str, Any]]:
    """Every trial's train_on beside its shift and contrast_shift: the controls table."""
    rows = []
    for t in data.trials:
        rows.append({"trial": t.number, "train_on": t.train_on, "n_eff": t.n_eff, "lr": t.lr,
                     "steps": t.steps, "seed": t.seed, "shift": t.shift,
                     "contrast_shift": t.attrs.get("contrast_shift"),
                     "adoption": float((t.margins > 0).mean()), "forgetting": t.forgetting,
                     "gen_adoption": t.attrs.get("gen_adoption")})
    return rows


def _susceptibility(data: StudyData, chosen: list[Trial]) -> list[dict[str, Any]]:
    """Seed-to-seed variance of adoption at every point with two or more seeds."""
    groups: dict[tuple, list[Trial]] = {}
    for t in chosen:
        groups.setdefault(fits.point_key(t), []).append(t)
    out = []
    for trials in groups.values():
        if len(trials) >= 2:
            a = np.asarray([(t.margins > 0).mean() for t in trials])
            out.append({"n_eff": trials[0].n_eff, "lr": trials[0].lr, "seeds": len(trials),
                        "adoption_mean": float(a.mean()), "adoption_var": float(a.var(ddof=1))})
    return sorted(out, key=lambda r: r["n_eff"])


def _icl(icl_study: Any) -> dict[str, Any]:
    icl = load_study_data(icl_study)
    rows = [{"k": int(t.attrs.get("k", t.n_real)), "seed": t.seed, "shift": t.shift,
             "adoption": float((t.margins > 0).mean())} for t in icl.trials]
    return {"study": icl.name, "rows": sorted(rows, key=lambda r: (r["k"], r["seed"]))}


# ---------------------------------------------------------------------------------------------
# Figures


def _zones(fig: go.Figure, lo: float, hi: float, rows: int = 1) -> None:
    for (name, z0, z1), color in zip(ZONES, ZONE_COLORS, strict=True):
        x0, x1 = max(z0, lo), hi if z1 is None else min(z1, hi)
        if x0 < x1:
            fig.add_vrect(x0=x0, x1=x1, fillcolor=color, opacity=0.15, layer="below",
                          line_width=0, row="all" if rows > 1 else None,
                          col=1 if rows > 1 else None)
            fig.add_annotation(x=(math.log10(x0) + math.log10(x1)) / 2, y=1.0, yref="paper",
                               yanchor="bottom", text=name, showarrow=False, font=dict(size=11))


def threshold_figure(data: StudyData, chosen: list[Trial], thresholds: dict[str, Any]) -> go.Figure:
    """Adoption and shift vs n_eff (log x): the trials coloured by lr, the psychometric fit of
    each band with its 90% band, n50 with its interval, the hypothesis zones shaded."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("adoption (fraction of probes with margin > 0)",
                                        "shift (mean margin change)"))
    x = [t.n_eff for t in chosen]
    lrs = [math.log10(t.lr) for t in chosen]
    for row, values in ((1, [(t.margins > 0).mean() for t in chosen]), (2, [t.shift for t in chosen])):
        fig.add_trace(go.Scatter(
            x=x, y=values, mode="markers", name="trials", showlegend=row == 1,
            marker=dict(size=9, color=lrs, colorscale="Plasma", line=dict(width=0.5, color="black"),
                        colorbar=dict(title=dict(text="log10 lr")) if row == 1 else None),
            customdata=[[t.number, t.lr, t.seed] for t in chosen],
            hovertemplate="trial %{customdata[0]} lr %{customdata[1]:.2g} seed %{customdata[2]}"
                          "<br>n_eff %{x}<br>%{y:.3f}<extra></extra>"), row=row, col=1)
    fig.add_hline(y=float((data.base_margins > 0).mean()), line=dict(dash="dash", color="black"),
                  row=1, col=1, annotation_text="base", annotation_position="bottom right")
    fig.add_hline(y=0.0, line=dict(dash="dash", color="black"), row=2, col=1)
    for name, result in thresholds.items():
        for row, key in ((1, "adoption"), (2, "shift")):
            band = result[key]["band"]
            fig.add_trace(go.Scatter(x=band["x"] + band["x"][::-1], y=band["hi"] + band["lo"][::-1],
                                     fill="toself", line=dict(width=0), opacity=0.25,
                                     name=f"90% band ({name})", showlegend=row == 1,
                                     hoverinfo="skip"), row=row, col=1)
            fig.add_trace(go.Scatter(x=band["x"], y=band["fit"], mode="lines",
                                     name=f"psychometric fit ({name})", showlegend=row == 1),
                          row=row, col=1)
            est, ci = result[key]["estimate"].get("n50"), result[key]["interval"].get("n50")
            if est and ci and all(c is not None and math.isfinite(c) for c in ci) and x:
                # an interval reaching beyond the trials is drawn to their edge (the numbers
                # are in the summary): the fit says nothing out there
                lo, hi = max(ci[0], min(x) / 1.3), min(ci[1], max(x) * 1.3)
                if lo < est < hi:
                    fig.add_vline(x=est, line=dict(color="#d62728", width=2), row=row, col=1)
                if lo < hi:
                    fig.add_vrect(x0=lo, x1=hi, fillcolor="#d62728", opacity=0.08, line_width=0,
                                  row=row, col=1)
    if x:
        _zones(fig, min(x), max(x), rows=2)
        fig.update_xaxes(range=[math.log10(min(x) / 1.3), math.log10(max(x) * 1.3)])
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="effective examples (n_eff = n_real × m)", row=2, col=1)
    fig.update_layout(title=dict(text=f"{data.name}: the threshold fit (red: n50 and its 90% "
                                      f"interval)", y=0.98), margin=dict(t=120),
                      height=850, legend=dict(orientation="h", y=-0.12))
    return fig


def exchange_figure(data: StudyData, chosen: list[Trial], exchange: dict) -> go.Figure:
    """Adoption against n_eff,gamma = n_real (1 + gamma (m - 1)) per strategy, with the shared
    curve: where the strategies collapse onto one curve, gamma is what a variation is worth."""
    fig = go.Figure()
    gammas = {s: v["estimate"] for s, v in exchange["gamma"].items()}
    for strategy in ["real only", *gammas]:
        pts = [t for t in chosen if (t.dream_multiplier == 1) == (strategy == "real only")
               and (strategy == "real only" or t.dream_strategy == strategy)]
        if not pts:
            continue
        g = gammas.get(strategy, 0.0)
        xs = [t.n_real * (1 + g * (t.dream_multiplier - 1)) for t in pts]
        label = strategy if strategy == "real only" else (
            f"{strategy}: γ = {g:.2g} [{exchange['gamma'][strategy]['interval'][0]:.2g}, "
            f"{exchange['gamma'][strategy]['interval'][1]:.2g}]")
        fig.add_trace(go.Scatter(x=xs, y=[(t.margins > 0).mean() for t in pts], mode="markers",
                                 name=label, marker=dict(size=9)))
    curve = exchange["curve"]
    if all(k in curve for k in ("lo", "hi", "ln_n50", "scale")):
        xs = [t.n_real * (1 + max(gammas.values() or [0]) * (t.dream_multiplier - 1)) for t in chosen]
        grid = np.geomspace(max(min(xs), 0.5), max(xs), 100)
        yy = curve["lo"] + (curve["hi"] - curve["lo"]) / (
            1 + np.exp(-(np.log(grid) - curve["ln_n50"]) / curve["scale"]))
        fig.add_trace(go.Scatter(x=grid.tolist(), y=yy.tolist(), mode="lines", name="shared curve"))
    fig.update_xaxes(type="log", title_text="n_eff,γ = n_real × (1 + γ (m − 1))")
    fig.update_yaxes(title_text="adoption")
    fig.update_layout(title=f"{data.name}: what a dream is worth (γ = 1: a variation is a real "
                            f"example; γ ≈ γ_repeat: it is a repetition)", height=600)
    return fig


def lr_figure(data: StudyData, chosen: list[Trial], lr: dict) -> go.Figure:
    """The trials in (lr, n_eff) coloured by adoption, with the fitted n50(lr) and the
    n_eff × lr = constant line through its middle."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[t.lr for t in chosen], y=[t.n_eff for t in chosen], mode="markers", name="trials",
        marker=dict(size=10, color=[(t.margins > 0).mean() for t in chosen], colorscale="Viridis",
                    colorbar=dict(title=dict(text="adoption")), line=dict(width=0.5, color="black"))))
    grid = np.geomspace(min(t.lr for t in chosen), max(t.lr for t in chosen), 50)
    n50 = np.exp(lr["a"] + lr["slope"] * (np.log(grid) - lr["mean_ln_lr"]))
    lo, hi = lr["interval"]
    fig.add_trace(go.Scatter(x=grid.tolist(), y=n50.tolist(), mode="lines",
                             name=f"fitted n50(lr): slope {lr['slope']:.2f} "
                                  f"[{_f(lo)}, {_f(hi)}]", line=dict(color="#d62728", width=3)))
    mid = math.exp(lr["mean_ln_lr"])
    ref = math.exp(lr["a"]) * mid / grid
    fig.add_trace(go.Scatter(x=grid.tolist(), y=ref.tolist(), mode="lines",
                             name="n_eff × lr = constant (slope −1)",
                             line=dict(color="black", dash="dash")))
    fig.update_xaxes(type="log", title_text="learning rate")
    fig.update_yaxes(type="log", title_text="n_eff")
    fig.update_layout(title=f"{data.name}: does n_eff × lr ≈ constant hold? (p of slope = −1: "
                            f"{_f(lr['test_minus_1']['p'])})", height=600)
    return fig


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}g}"


def collapse_figure(data: StudyData, chosen: list[Trial], collapse: dict) -> go.Figure:
    """Adoption against n_eff, steps and steps × lr, each with its psychometric fit and AIC."""
    doses = list(collapse["doses"])
    titles = [f"{d}: ΔAIC {collapse['doses'][d]['adoption_delta_aic']:.1f}, shift R² "
              f"{_f(collapse['doses'][d]['shift_r2'], 2)}" for d in doses]
    fig = make_subplots(rows=1, cols=len(doses), subplot_titles=titles, shared_yaxes=True)
    y = [(t.margins > 0).mean() for t in chosen]
    for i, dose in enumerate(doses, start=1):
        x = fits.dose_of(chosen, dose)
        fig.add_trace(go.Scatter(x=x.tolist(), y=y, mode="markers", showlegend=False,
                                 marker=dict(size=8)), row=1, col=i)
        fit = collapse["doses"][dose]["adoption_fit"]
        p = fit["params"]
        grid = np.geomspace(x.min(), x.max(), 80)
        yy = p["lo"] + (p["hi"] - p["lo"]) / (1 + np.exp(-(np.log(grid) - p["ln_n50"]) / p["scale"]))
        fig.add_trace(go.Scatter(x=grid.tolist(), y=yy.tolist(), mode="lines", showlegend=False),
                      row=1, col=i)
        fig.update_xaxes(type="log", title_text=dose, row=1, col=i)
    fig.update_yaxes(title_text="adoption", row=1, col=1)
    fig.update_layout(title=f"{data.name}: which variable does the change follow? "
                            f"({collapse['follows']})", height=500)
    return fig


SYMBOLS = {"chosen": "circle", "placebo": "square", "rejected": "triangle-down"}


def controls_figure(data: StudyData, placebo: dict | None) -> go.Figure:
    """shift and contrast_shift vs n_eff for each train_on, with the placebo's fitted line."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("shift", "contrast_shift"), shared_yaxes=True)
    for train_on in ("chosen", "placebo", "rejected"):
        pts = [t for t in data.trials if t.train_on == train_on]
        if not pts:
            continue
        for col, key in ((1, "shift"), (2, "contrast_shift")):
            ys = [t.shift if key == "shift" else t.attrs.get(key) for t in pts]
            fig.add_trace(go.Scatter(x=[t.n_eff for t in pts], y=ys, mode="markers",
                                     name=train_on, showlegend=col == 1, legendgroup=train_on,
                                     marker=dict(size=10, symbol=SYMBOLS[train_on])), row=1, col=col)
    if placebo:
        p = placebo["placebo_fit"]["params"]
        xs = [t.n_eff for t in data.trials]
        grid = np.geomspace(min(xs), max(xs), 50)
        fig.add_trace(go.Scatter(x=grid.tolist(), y=(p["a"] + p["b"] * np.log(grid)).tolist(),
                                 mode="lines", name="placebo fit", line=dict(dash="dot")),
                      row=1, col=1)
    for col in (1, 2):
        fig.add_hline(y=0.0, line=dict(color="black", width=1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="n_eff", row=1, col=col)
    fig.update_layout(title=f"{data.name}: the behavior beside its controls (placebo: any "
                            f"fine-tune of that size; rejected: must go negative)", height=550)
    return fig


def pareto_figure(data: StudyData) -> go.Figure:
    """Forgetting against shift, coloured by lr, with the Pareto front (more shift, less
    forgetting) drawn through the non-dominated trials."""
    pts = [t for t in data.trials if t.forgetting is not None and t.train_on == "chosen"]
    fig = go.Figure()
    if pts:
        fig.add_trace(go.Scatter(
            x=[t.forgetting for t in pts], y=[t.shift for t in pts], mode="markers", name="trials",
            marker=dict(size=10, color=[math.log10(t.lr) for t in pts], colorscale="Plasma",
                        colorbar=dict(title=dict(text="log10 lr"))),
            customdata=[[t.number, t.n_eff, t.lr] for t in pts],
            hovertemplate="trial %{customdata[0]} n_eff %{customdata[1]} lr %{customdata[2]:.2g}"
                          "<br>forgetting %{x:.4f}<br>shift %{y:.4f}<extra></extra>"))
        front, best = [], -math.inf
        for t in sorted(pts, key=lambda t: (t.forgetting, -t.shift)):
            if t.shift > best:
                front.append(t)
                best = t.shift
        fig.add_trace(go.Scatter(x=[t.forgetting for t in front], y=[t.shift for t in front],
                                 mode="lines", name="Pareto front", line=dict(color="black")))
    fig.update_xaxes(title_text="forgetting (KL on control texts, nats/token)")
    fig.update_yaxes(title_text="shift")
    fig.update_layout(title=f"{data.name}: shift against forgetting", height=550)
    return fig


def susceptibility_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    if rows:
        fig.add_trace(go.Scatter(x=[r["n_eff"] for r in rows], y=[r["adoption_var"] for r in rows],
                                 mode="markers+lines", name="seed variance",
                                 text=[f"{r['seeds']} seeds, lr {r['lr']:.2g}" for r in rows]))
    fig.update_xaxes(type="log", title_text="n_eff")
    fig.update_yaxes(title_text="variance of adoption across seeds")
    fig.update_layout(title="susceptibility: a peak near n50 is a further sign of a transition"
                            + ("" if rows else " (no point has two or more seeds)"), height=450)
    return fig


def icl_figure(data: StudyData, chosen: list[Trial], icl: dict) -> go.Figure:
    """In-context (x = k examples in the prompt) and fine-tuning (x = n_real) on one axis."""
    fig = go.Figure()
    rows = [r for r in icl["rows"] if r["k"] > 0]
    fig.add_trace(go.Scatter(x=[r["k"] for r in rows], y=[r["shift"] for r in rows],
                             mode="markers", name=f"in context ({icl['study']}), x = k",
                             marker=dict(size=10, symbol="diamond")))
    real = [t for t in chosen if t.dream_multiplier == 1] or chosen
    fig.add_trace(go.Scatter(x=[t.n_real for t in real], y=[t.shift for t in real], mode="markers",
                             name="fine-tuned, x = n_real" + (" (m = 1)" if real is not chosen else ""),
                             marker=dict(size=9)))
    fig.add_hline(y=0.0, line=dict(color="black", width=1))
    fig.update_xaxes(type="log", title_text="real examples (k in context, or n_real trained on)")
    fig.update_yaxes(title_text="shift")
    fig.update_layout(title="in-context learning vs fine-tuning, the same probes", height=500)
    return fig


# ---------------------------------------------------------------------------------------------
# Writing


def _summary_html(summary: dict[str, Any]) -> str:
    """The summary as HTML: the verdict and its rule, then every fitted number's table."""
    v = summary.get("verdict", {})
    parts = [f"<h1>{html.escape(str(summary['study']))}</h1>",
             f"<p>behavior {html.escape(str(summary.get('behavior')))}, model "
             f"{html.escape(str(summary.get('model')))}; {summary['n_trials']} complete trials "
             f"({summary['n_chosen']} on the behavior), seeds {summary['seeds']}, "
             f"{summary['n_probes']} probes; base adoption {summary['base_adoption']:.3f}. "
             f"Intervals: 90%, {summary['bootstrap']['n_boot']} bootstrap replicates "
             f"resampling {summary['bootstrap']['resamples']}.</p>",
             f"<h2>Verdict: {html.escape(str(v.get('label')))}</h2>",
             f"<p>{html.escape(str(v.get('rule', '')))}</p>"]
    for name, t in (summary.get("threshold") or {}).items():
        parts.append(f"<h3>Threshold fit, {html.escape(name)} ({t['n_trials']} trials, "
                     f"{t['n_levels']} n_eff levels)</h3>")
        for key in ("adoption", "shift"):
            est, ci = t[key]["estimate"], t[key]["interval"]
            cells = "".join(f"<tr><td>{k}</td><td>{_f(est.get(k))}</td><td>[{_f((ci.get(k) or [None])[0])}, "
                            f"{_f((ci.get(k) or [None, None])[1])}]</td></tr>"
                            for k in ("n10", "n50", "n90", "width", "lo", "hi"))
            parts.append(f"<p><b>{key}</b>: {html.escape(t['verdict'][key]['label'])} — "
                         f"{html.escape(t['verdict'][key]['rule'])}</p><table><tr><th>param</th>"
                         f"<th>estimate</th><th>90% interval</th></tr>{cells}</table>")
            models = t[f"{key}_models"]
            parts.append("<table><tr><th>model</th><th>AIC</th><th>ΔAIC</th><th>BIC</th></tr>"
                         + "".join(f"<tr><td>{m['model']}</td><td>{_f(m['aic'], 5)}</td>"
                                   f"<td>{_f(m['delta_aic'])}</td><td>{_f(m['bic'], 5)}</td></tr>"
                                   for m in models) + "</table>")
        parts.append(f"<p>metric-artifact check: {html.escape(str(t['artifact'].get('reason')))}</p>")
    for key, title in (("exchange", "What a dream is worth (γ)"), ("lr", "Learning rate"),
                       ("collapse", "Examples or steps?"), ("placebo", "Net of the placebo")):
        if summary.get(key):
            body = json.dumps(summary[key], indent=1)[:6000]
            parts.append(f"<h2>{title}</h2><pre>{html.escape(body)}</pre>")
    if summary.get("skipped"):
        parts.append("<h2>Not fitted</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in summary["skipped"].items())
            + "</ul>")
    return "\n".join(parts)


def write_report(analysis: Analysis, out_dir: Path, static: bool = True) -> list[Path]:
    """report.html (self-contained), summary.json, and each figure as PNG and SVG (skipped,
    with one line on stderr, where no Chromium works). A folder that cannot be written is a
    UserError."""
    try:
        return _write_report(analysis, out_dir, static)
    except OSError as err:
        raise UserError(f"--out {out_dir}: cannot write the report there "
                        f"({err.strerror or err})") from None


def _write_report(analysis: Analysis, out_dir: Path, static: bool) -> list[Path]:
    from study.plots import STATIC_HEIGHT, STATIC_WIDTH, find_browser

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    summary_path = out_dir / "summary.json"
    write_json(summary_path, analysis.summary)
    written.append(summary_path)
    blocks, first = [], True
    for fig in analysis.figures.values():
        blocks.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False))
        first = False
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>shiftsweep report: "
            f"{html.escape(str(analysis.summary['study']))}</title><style>body{{font-family:"
            "sans-serif;max-width:1200px;margin:auto}}table{{border-collapse:collapse}}"
            "td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head><body>"
            + _summary_html(analysis.summary) + "\n".join(blocks) + "</body></html>")
    report = out_dir / "report.html"
    report.write_text(page)
    written.append(report)
    if static and find_browser() is not None:
        import plotly.io as pio

        names = [_file_name(n) for n in analysis.figures]
        paths = [out_dir / f"{n}.{ext}" for n in names for ext in ("png", "svg")]
        figs = [analysis.figures[n] for n in analysis.figures for _ in ("png", "svg")]
        try:
            pio.write_images(figs, paths, width=STATIC_WIDTH,
                             height=[f.layout.height or STATIC_HEIGHT for f in figs])
            written += paths
        except Exception as err:  # kaleido/Chromium failed: the HTML and JSON still stand
            for path in paths:
                path.unlink(missing_ok=True)
            print(f"shiftsweep: static export (PNG, SVG) skipped: {type(err).__name__}: "
                  f"{str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
    elif static:
        print("shiftsweep: static export (PNG, SVG) skipped: no Chromium/Chrome found",
              file=sys.stderr)
    return written


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def to_dashboard(study: Any, analysis: Analysis) -> None:
    """The summary as the study's note, the figures as its custom plots (optuna-dashboard)."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    v = analysis.summary.get("verdict", {})
    note = []
    space = study.user_attrs.get("search_space")
    if isinstance(space, dict):  # keep what the sweep's note says about the space
        from search_spaces import SearchSpace

        note += [SearchSpace.from_dict(space, source=f"study {study.study_name}").describe(), ""]
    note += [f"## Verdict: {v.get('label')}", "", str(v.get("rule", "")), ""]
    for name, t in (analysis.summary.get("threshold") or {}).items():
        e, ci = t["adoption"]["estimate"], t["adoption"]["interval"]
        note.append(f"- {name}: n50 {_f(e.get('n50'))} [{_f((ci.get('n50') or [None])[0])}, "
                    f"{_f((ci.get('n50') or [None, None])[1])}], width {_f(e.get('width'))}")
    for key, val in (analysis.summary.get("skipped") or {}).items():
        note.append(f"- not fitted: {key} ({val})")
    note.append("\n`make report STUDY=" + str(analysis.summary["study"]) + "` rewrites this.")
    save_note(study, "\n".join(note))
    for name, fig in analysis.figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=f"report-{_file_name(name)}")
